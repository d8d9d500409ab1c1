//! The worker's host I/O engine: io_uring ([`Uring`]) or, where io_uring
//! is refused, an epoll readiness loop ([`Epoll`]), behind one enum.
//!
//! Both executors keep the same contract (the [`crate::stack::ops`] rules
//! plus the published-port, TAP and wake-up calls) and report the same
//! [`Completion`]s, so the worker's loop is written once against [`Io`].
//! An enum rather than a trait object: two known engines, static dispatch,
//! and the generic `drain` callback stays generic.
//!
//! Choosing ([`select`]): `--io uring` insists on io_uring and fails at
//! start-up when `io_uring_setup` does; `--io epoll` never touches it;
//! `--io auto` (the default) probes once per daemon and, when the probe
//! fails (seccomp `EPERM` in Docker >= 25 and containerd 2.0,
//! `kernel.io_uring_disabled`, `ENOSYS`), logs one warning and runs every
//! worker on epoll.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::time::Duration;

pub use crate::dataplane::epoll::Epoll;
pub use crate::dataplane::uring::Uring;
use crate::stack::flow::FlowId;
use crate::stack::ops::{Errno, HostEvent, Proto, SockOp};

/// One thing an executor's `drain` reports ([`Uring::drain`],
/// [`Epoll::drain`]).
#[derive(Debug)]
pub enum Completion {
    /// A socket event for the stack.
    Host(HostEvent),
    /// The eventfd armed with [`Uring::arm_wake`] was read; arm it again.
    Wake,
    /// A frame write from [`Uring::push_frame_write`] finished; its buffer
    /// is now on the spare list.
    FrameWritten {
        /// Bytes written, or the error.
        result: io::Result<usize>,
    },
    /// The fd given to [`Uring::push_poll_in`] is readable (or has an
    /// error or hung up: `result` holds the poll mask, or the error).
    Readable {
        /// The poll mask, or the error.
        result: io::Result<u32>,
    },
    /// The timeout given to [`Uring::submit_and_wait`] expired and nothing
    /// else was reported by this drain.
    Timeout,
    /// The multishot read of [`Uring::push_port_read`] filled buffer `bid`
    /// with a `len`-byte frame: read it with [`Uring::port_frame`], then
    /// give it back with [`Uring::port_recycle`].
    PortFrame {
        /// Buffer id in the port's buffer ring.
        bid: u16,
        /// Frame length.
        len: usize,
    },
    /// The multishot read ended (out of buffers, an error, or the fd
    /// closed); arm it again to keep reading.
    PortReadEnded {
        /// Why: `Ok` when it ended without an error of its own.
        result: io::Result<()>,
    },
    /// A connection accepted on published TCP port `listener` (see
    /// [`Uring::add_listener`]); attach it to a flow with
    /// [`Uring::attach_tcp`] or drop it.
    Accepted {
        /// The listener's id.
        listener: u32,
        /// The connected socket (blocking, close-on-exec).
        fd: OwnedFd,
        /// The host client.
        peer: SocketAddr,
    },
    /// A datagram from `peer` on published UDP port `listener`.
    Datagram {
        /// The listener's id.
        listener: u32,
        /// The host sender.
        peer: SocketAddr,
        /// The datagram.
        data: Vec<u8>,
    },
}

/// Where a flow's host socket stands; the same in both executors.
pub(super) enum Phase {
    /// The connect is in flight; ops wait here in push order.
    Connecting {
        /// The ops pushed meanwhile.
        deferred: Vec<SockOp>,
    },
    /// Ops run at once.
    Connected,
    /// `socket()` or the connect failed with this errno.
    Failed(Errno),
}

/// The flow steps each executor implements; [`route`] decides which one a
/// [`SockOp`] takes, the same way for both (the [`crate::stack::ops`]
/// rules). Static dispatch: `route` is generic over the executor.
pub(super) trait FlowOps {
    /// The executor's name in log lines.
    const NAME: &'static str;
    /// The phase of live flow `id`, if it is open.
    fn phase_mut(&mut self, id: FlowId) -> Option<&mut Phase>;
    /// `Open`: create the socket and start the connect.
    fn open(&mut self, id: FlowId, proto: Proto, dst: SocketAddr);
    /// `Close`: forget the flow now; its socket closes when no op uses it.
    fn close(&mut self, id: FlowId, reset: bool);
    /// Issue a `Send`, `Recv` or `ShutdownWrite` on a connected flow.
    fn issue(&mut self, op: SockOp);
    /// Answer `op` on a failed flow with `errno`, without the kernel.
    fn fail_op(&mut self, op: SockOp, errno: Errno);
}

/// Queue one socket op on `ex` (takes ownership of its data); never
/// blocks. Ops of a connecting flow wait for the connect, ops of a failed
/// flow are answered with its errno, ops of a flow that is not open are
/// dropped with a debug log.
pub(super) fn route<X: FlowOps>(ex: &mut X, op: SockOp) {
    match op {
        SockOp::Open { flow, proto, dst } => ex.open(flow, proto, dst),
        SockOp::Close { flow, reset } => ex.close(flow, reset),
        op => {
            let Some(phase) = ex.phase_mut(op.flow()) else {
                log::debug!("{}: {op:?} for a flow that is not open; dropped", X::NAME);
                return;
            };
            match phase {
                Phase::Connecting { deferred } => deferred.push(op),
                Phase::Failed(e) => {
                    let e = *e;
                    ex.fail_op(op, e);
                }
                Phase::Connected => ex.issue(op),
            }
        }
    }
}

/// SQ entries of a worker's ring.
const RING_ENTRIES: u32 = 2048;

/// Which I/O engine the workers run on (`--io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IoEngine {
    /// io_uring when the host allows it, else epoll (said once, at start).
    #[default]
    Auto,
    /// io_uring only: start-up fails when it is refused.
    Uring,
    /// The epoll readiness loop, without trying io_uring.
    Epoll,
}

impl IoEngine {
    /// The name `--io` and the stats use.
    pub fn name(self) -> &'static str {
        match self {
            IoEngine::Auto => "auto",
            IoEngine::Uring => "uring",
            IoEngine::Epoll => "epoll",
        }
    }
}

/// Why io_uring is refused, for the log line.
fn why(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) => {
            " (a seccomp profile refuses io_uring_setup, as Docker >= 25 and containerd 2.0 do, \
             or kernel.io_uring_disabled is set)"
        }
        Some(libc::ENOSYS) => " (the kernel lacks io_uring, or a seccomp filter refuses it)",
        _ => "",
    }
}

/// Resolve `choice` to the engine the workers will run on, once per
/// daemon: `Auto` probes io_uring with a small ring and falls back to
/// `Epoll` with one warning; `Uring` returns the setup error, with a
/// message that names io_uring.
pub fn select(choice: IoEngine) -> io::Result<IoEngine> {
    match choice {
        IoEngine::Epoll => Ok(IoEngine::Epoll),
        IoEngine::Uring => match Uring::new(8) {
            Ok(_) => Ok(IoEngine::Uring),
            Err(e) => Err(io::Error::new(e.kind(), format!("{e}{}", why(&e)))),
        },
        IoEngine::Auto => match Uring::new(8) {
            Ok(_) => Ok(IoEngine::Uring),
            Err(e) => {
                log::warn!(
                    "io_uring is not available: {e}{}; running on epoll",
                    why(&e)
                );
                Ok(IoEngine::Epoll)
            }
        },
    }
}

/// One worker's executor; see the [module docs](self).
pub enum Io {
    /// io_uring (boxed: the two differ in size, and the worker holds one
    /// for its lifetime).
    Uring(Box<Uring>),
    /// epoll + non-blocking sockets.
    Epoll(Box<Epoll>),
}

/// Run `$e` on whichever executor `$io` holds, as `$x`.
macro_rules! on {
    ($io:expr, $x:ident => $e:expr) => {
        match $io {
            Io::Uring($x) => $e,
            Io::Epoll($x) => $e,
        }
    };
}

impl Io {
    /// A worker's executor for `engine` (`Auto`: io_uring, else epoll,
    /// saying why; [`select`] has normally resolved it already).
    pub fn new(engine: IoEngine) -> io::Result<Io> {
        match engine {
            IoEngine::Uring => Ok(Io::Uring(Box::new(Uring::new(RING_ENTRIES)?))),
            IoEngine::Epoll => Ok(Io::Epoll(Box::new(Epoll::new()?))),
            IoEngine::Auto => match Uring::new(RING_ENTRIES) {
                Ok(u) => Ok(Io::Uring(Box::new(u))),
                Err(e) => {
                    log::warn!(
                        "io_uring is not available: {e}{}; running on epoll",
                        why(&e)
                    );
                    Ok(Io::Epoll(Box::new(Epoll::new()?)))
                }
            },
        }
    }

    /// The engine this is.
    pub fn engine(&self) -> IoEngine {
        match self {
            Io::Uring(_) => IoEngine::Uring,
            Io::Epoll(_) => IoEngine::Epoll,
        }
    }

    /// See [`Uring::set_outbound`].
    pub fn set_outbound(&mut self, v4: Option<std::net::Ipv4Addr>, v6: Option<std::net::Ipv6Addr>) {
        on!(self, x => x.set_outbound(v4, v6))
    }

    /// See [`Uring::push`].
    pub fn push(&mut self, op: SockOp) {
        on!(self, x => x.push(op))
    }

    /// See [`Uring::push_frame_write`].
    pub fn push_frame_write(&mut self, fd: RawFd, frame: Vec<u8>) {
        on!(self, x => x.push_frame_write(fd, frame))
    }

    /// See [`Uring::push_poll_in`].
    pub fn push_poll_in(&mut self, fd: RawFd) {
        on!(self, x => x.push_poll_in(fd))
    }

    /// See [`Uring::setup_port_ring`]; `Unsupported` on epoll.
    pub fn setup_port_ring(&mut self, entries: u16, buf_size: usize) -> io::Result<()> {
        on!(self, x => x.setup_port_ring(entries, buf_size))
    }

    /// See [`Uring::push_port_read`] (io_uring only: epoll has no port
    /// ring, so the worker never arms it there).
    pub fn push_port_read(&mut self, fd: RawFd) {
        match self {
            Io::Uring(u) => u.push_port_read(fd),
            Io::Epoll(_) => log::warn!("epoll: push_port_read without a port ring"),
        }
    }

    /// See [`Uring::port_frame`].
    pub fn port_frame(&mut self, bid: u16, len: usize) -> Option<&[u8]> {
        match self {
            Io::Uring(u) => u.port_frame(bid, len),
            Io::Epoll(_) => None,
        }
    }

    /// See [`Uring::port_recycle`].
    pub fn port_recycle(&mut self, bid: u16) {
        if let Io::Uring(u) = self {
            u.port_recycle(bid);
        }
    }

    /// See [`Uring::take_spare_buffer`].
    pub fn take_spare_buffer(&mut self) -> Option<Vec<u8>> {
        on!(self, x => x.take_spare_buffer())
    }

    /// See [`Uring::arm_wake`].
    pub fn arm_wake(&mut self, eventfd: RawFd) {
        on!(self, x => x.arm_wake(eventfd))
    }

    /// See [`Uring::submit_and_wait`].
    pub fn submit_and_wait(
        &mut self,
        min_complete: usize,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        on!(self, x => x.submit_and_wait(min_complete, timeout))
    }

    /// See [`Uring::drain`].
    pub fn drain(&mut self, out: &mut impl FnMut(Completion)) {
        on!(self, x => x.drain(out))
    }

    /// See [`Uring::work_pending`] (one `epoll_wait(0)` on epoll).
    pub fn work_pending(&mut self) -> bool {
        on!(self, x => x.work_pending())
    }

    /// See [`Uring::short_sends`].
    pub fn short_sends(&self) -> u64 {
        on!(self, x => x.short_sends())
    }

    /// See [`Uring::segmented`]; the epoll engine does not segment.
    pub fn segmented(&self) -> (u64, u64, u64) {
        match self {
            Io::Uring(u) => u.segmented(),
            Io::Epoll(_) => (0, 0, 0),
        }
    }

    /// See [`Uring::open_flows`].
    pub fn open_flows(&self) -> usize {
        on!(self, x => x.open_flows())
    }

    /// See [`Uring::close_all`].
    pub fn close_all(&mut self) {
        on!(self, x => x.close_all())
    }

    /// See [`Uring::add_listener`].
    pub fn add_listener(&mut self, id: u32, proto: Proto, fd: OwnedFd) {
        on!(self, x => x.add_listener(id, proto, fd))
    }

    /// See [`Uring::remove_listener`].
    pub fn remove_listener(&mut self, id: u32) {
        on!(self, x => x.remove_listener(id))
    }

    /// See [`Uring::listener_ids`].
    pub fn listener_ids(&self) -> Vec<u32> {
        on!(self, x => x.listener_ids())
    }

    /// See [`Uring::attach_tcp`].
    pub fn attach_tcp(&mut self, id: FlowId, fd: OwnedFd) {
        on!(self, x => x.attach_tcp(id, fd))
    }

    /// See [`Uring::attach_udp`].
    pub fn attach_udp(&mut self, id: FlowId, listener: u32, peer: SocketAddr) {
        on!(self, x => x.attach_udp(id, listener, peer))
    }
}
