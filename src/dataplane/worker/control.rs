//! How other threads steer a running worker: typed [`Command`]s over a
//! bounded channel, read by the worker at the top of each loop turn.
//!
//! ```text
//!  control thread, VMM ──Shared::reset() / set_offload() / ...──► [channel] ─┐
//!        │                                                                  │
//!        └── inbox.kick() (eventfd) ─► worker wakes ─► take_commands ◄──────┘
//!  Stats / Publish carry a reply Sender: the caller blocks on its Receiver
//!  (bounded by a deadline), never on a sleep-and-poll.
//! ```
//!
//! The worker pays one atomic load per turn: a sender sets
//! `Shared::pending` after its message is in the channel, and the worker
//! drains the channel only when it finds the flag set. Within a turn the
//! commands apply as the old mailboxes did: the last resolver list and the
//! last offloads win, any number of resets is one reset, publish commands
//! run in order, and stats are answered after the turn's work (so they
//! include it). Senders kick the worker's inbox themselves, as before
//! (the worker's wake-up is the inbox's eventfd).
//!
//! `stop` stays an [`AtomicBool`]: the busy-poll spin checks it between
//! completions at no cost beyond a load, the worker sets it itself when its
//! sink closes, and a stop must never wait for room in a full channel.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};

use super::WorkerStats;
use crate::dataplane::pcap::Capture;
use crate::stack::{Offload, Proto};

/// Commands that may wait in a worker's channel; a sender finding it full
/// waits (at most [`SEND_WAIT`]) for the worker to take some.
const DEPTH: usize = 64;
/// Longest wait for room in a full channel.
const SEND_WAIT: Duration = Duration::from_secs(2);

/// A change to the published ports a worker serves.
#[derive(Debug)]
pub enum PublishCmd {
    /// Serve a bound socket: accept (TCP) or receive (UDP) on it and
    /// forward to the guest's `guest_port`.
    Add {
        /// Listener id, unique in the daemon.
        id: u32,
        /// Transport.
        proto: Proto,
        /// The guest port.
        guest_port: u16,
        /// The listening or bound socket.
        fd: OwnedFd,
    },
    /// Stop serving listener `id` (established flows stay).
    Remove {
        /// Listener id.
        id: u32,
    },
}

/// What another thread asks of a worker.
#[derive(Debug)]
pub enum Command {
    /// New resolvers for the stack (resolv.conf changed).
    SetResolvers(Vec<SocketAddr>),
    /// New offloads toward the guest (a virtio guest negotiated its
    /// features): the worker resets its flows and applies them.
    SetOffload(Offload),
    /// The guest went away (a VMM disconnected): reset every host
    /// connection and forget every flow, then go on for the next guest.
    Reset,
    /// Start or stop serving published ports; the worker sends how many
    /// commands it carried out on `done` once they are in effect.
    Publish {
        /// The changes, in order.
        cmds: Vec<PublishCmd>,
        /// Where the worker reports them done.
        done: Sender<u64>,
    },
    /// Send a snapshot of the worker's metrics on the given channel.
    Stats(Sender<WorkerStats>),
}

/// What a worker shares with the threads that steer it; see the
/// module docs (`worker::control`).
pub struct Shared {
    /// Ask the worker to stop (an atomic, not a [`Command`]: see the
    /// module docs).
    pub stop: AtomicBool,
    /// This worker's queue to the pcap writer (`--pcap`), if capturing.
    pub pcap: Option<Arc<Capture>>,
    tx: Sender<Command>,
    rx: Receiver<Command>,
    /// Set after a command is in the channel; cleared by the worker before
    /// it drains the channel.
    pending: AtomicBool,
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new(None)
    }
}

impl Shared {
    /// Control state for a worker that captures into `pcap`, if given.
    pub fn new(pcap: Option<Arc<Capture>>) -> Shared {
        let (tx, rx) = channel::bounded(DEPTH);
        Shared {
            stop: AtomicBool::new(false),
            pcap,
            tx,
            rx,
            pending: AtomicBool::new(false),
        }
    }

    /// Queue `cmd` for the worker (the caller kicks its inbox). False when
    /// the channel stayed full for `SEND_WAIT` (the worker is stuck or
    /// gone); the command is then dropped, with a warning.
    pub fn send(&self, cmd: Command) -> bool {
        if let Err(e) = self.tx.send_timeout(cmd, SEND_WAIT) {
            log::warn!("worker command not taken: {:?}", e.into_inner());
            return false;
        }
        // Release: pairs with the worker's Acquire swap in `take`; the
        // command is in the channel before the worker sees the flag.
        self.pending.store(true, Ordering::Release);
        true
    }

    /// Reset every flow of the worker ([`Command::Reset`]).
    pub fn reset(&self) {
        self.send(Command::Reset);
    }

    /// Apply new offloads ([`Command::SetOffload`]).
    pub fn set_offload(&self, off: Offload) {
        self.send(Command::SetOffload(off));
    }

    /// Hand new resolvers to the stack ([`Command::SetResolvers`]).
    pub fn set_resolvers(&self, list: Vec<SocketAddr>) {
        self.send(Command::SetResolvers(list));
    }

    /// Ask for a stats snapshot; it arrives on the returned channel once
    /// the worker is kicked and finishes its turn (`None`: not queued).
    pub fn request_stats(&self) -> Option<Receiver<WorkerStats>> {
        let (tx, rx) = channel::bounded(1);
        self.send(Command::Stats(tx)).then_some(rx)
    }

    /// The commands queued since the last call (worker side): empty, after
    /// one atomic load, when nothing was sent.
    pub(super) fn take(&self) -> impl Iterator<Item = Command> + '_ {
        // Acquire: pairs with the Release store in `send`.
        let any =
            self.pending.load(Ordering::Relaxed) && self.pending.swap(false, Ordering::Acquire);
        any.then(|| self.rx.try_iter()).into_iter().flatten()
    }
}

/// Wait until `deadline` for each of `replies` (requested from several
/// workers at once, then kicked); a worker that does not answer in time
/// gives default stats.
pub fn collect_stats(
    replies: Vec<Option<Receiver<WorkerStats>>>,
    deadline: Instant,
) -> Vec<WorkerStats> {
    replies
        .into_iter()
        .map(|r| {
            r.and_then(|r| r.recv_deadline(deadline).ok())
                .unwrap_or_default()
        })
        .collect()
}
