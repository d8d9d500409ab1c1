//! `-net tap --tap NAME`: the VMM's virtio-net NIC on a host TAP device
//! instead of uipd's stack (bridged or routed set-ups; needs
//! `CAP_NET_ADMIN`, or a TAP created beforehand for the user).
//!
//! # Theory of operation
//!
//! ```text
//!  guest TX queue p ─ ioeventfd ─► uipd-vq{p}: tx_pass ─► inbox k (flow hash)
//!     ─► uipd-tap{k}: write(TAP queue k): the 12-byte header and the frame, as they are
//!  TAP queue k ─ read ─► uipd-tap{k}: rx_header_fits (what the driver accepted?)
//!     ─► QueueSink k ─► RX queue of pair k % active pairs ─► MSI-X, once per batch
//! ```
//!
//! The device model, its queues and the guest → inbox path are the ones
//! `-net user` uses ([`super::virtio_pci::NetCore`], [`super::queue_pair`]);
//! only what sits behind the inboxes and the sinks differs: one thread per
//! TAP queue instead of a stack worker. There is one TAP queue per virtio
//! queue pair (`IFF_MULTI_QUEUE` when there are several).
//!
//! The TAP is opened with `IFF_VNET_HDR` and `TUNSETVNETHDRSZ` 12, so every
//! frame read or written starts with a `virtio_net_hdr_v1`, the header the
//! guest's driver reads and writes: frames pass without conversion, and so
//! do the offloads.
//! - Guest → TAP: the kernel takes partial checksums and GSO super-frames
//!   on any TAP with a virtio-net header (`tun_get_user`); it checks the
//!   header and refuses a bad one (`EINVAL`): a counted drop
//!   (`tx_drops`), as is any other failed write. So the device offers
//!   `CSUM`, `HOST_TSO4/6` and `HOST_ECN`.
//! - TAP → guest: `TUNSETOFFLOAD` says what the kernel may hand us. It
//!   follows what the driver accepted: `GUEST_CSUM` → `TUN_F_CSUM`,
//!   `GUEST_TSO4/6` → `TUN_F_TSO4/6`, `GUEST_ECN` → `TUN_F_TSO_ECN`; none
//!   until the driver sets FEATURES_OK, none again after a reset (thread
//!   `uipd-tap0` applies it; the flags belong to the device, not a queue).
//!   A frame the kernel queued under older flags could still ask for more:
//!   each frame's header is checked against what the driver accepted
//!   ([`super::virtio_net::rx_header_fits`]) and dropped (`rx_drops`) if it
//!   asks for more.
//!
//! Back-pressure: TAP writes never block. Toward the guest, while a
//! queue's sink keeps frames (no RX buffers), its thread stops reading
//! that TAP queue: the TAP's own queue (txqueuelen) fills and the kernel
//! drops, as a NIC's ring would. The guest's next RX refill kicks the
//! thread (through its inbox's wake-up) and reading resumes.
//!
//! Everything is bounded: at most [`TX_BUDGET`] frames to the TAP and
//! [`RX_BATCH`] from it per turn, a poll of at most one second, and a
//! short pause after a read error so a broken TAP cannot spin a core.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::virtio_net::{Negotiated, feature, rx_header_fits};
use super::virtio_pci::NetCore;
use crate::dataplane::offload::{self, TunOffloads};
use crate::dataplane::tap::{Tap, TapError, TapFlags};
use crate::dataplane::worker::{FrameSink, WorkerCounters};
use crate::rings::FrameRing;
use crate::stack::wire::vnet_hdr::HEADER_LEN;
use crate::sys::eventfd::{self, EventFd, Wake};

/// Frames written to the TAP per turn before looking at the other way.
pub const TX_BUDGET: usize = 256;
/// Frames read from the TAP per turn (one notification decision each).
pub const RX_BATCH: usize = 64;
/// Read buffer: the header and the largest GSO frame the kernel builds
/// (64 KiB with its Ethernet header), plus room to see a longer one
/// (which would have been cut: dropped).
const READ_BUF: usize = HEADER_LEN + 65536 + 64;
/// Shortest frame worth passing: the header and an Ethernet header.
const MIN_FRAME: usize = HEADER_LEN + 14;

/// Set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `TUNSETIFF` said EPERM, or /dev/net/tun may not be opened.
    #[error(
        "-net tap: no permission to attach TAP {name:?}: that needs CAP_NET_ADMIN (run uipd as \
         root), or a TAP created beforehand for this user (ip tuntap add dev {name} mode tap \
         vnet_hdr user USER) and /dev/net/tun open to it"
    )]
    NoPermission {
        /// The TAP.
        name: String,
        /// What was refused.
        #[source]
        source: TapError,
    },
    /// An existing TAP made without `multi_queue` cannot have more queues.
    #[error(
        "-net tap: TAP {name:?} exists without multi_queue, so it cannot have {queues} queues \
         (--queues): recreate it with `ip tuntap add dev {name} mode tap vnet_hdr multi_queue`, \
         or use --queues 1"
    )]
    NotMultiQueue {
        /// The TAP.
        name: String,
        /// Queues asked for.
        queues: usize,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Opening the TAP failed otherwise.
    #[error("-net tap: opening TAP {name:?}")]
    Open {
        /// The TAP.
        name: String,
        /// The cause.
        #[source]
        source: TapError,
    },
    /// An ioctl or a thread.
    #[error("-net tap: {what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> Error {
    let what = what.to_string();
    move |source| Error::Io { what, source }
}

/// Opens (or creates) TAP `name` with `queues` queues and a 12-byte
/// virtio-net header, offloads off, every queue non-blocking.
///
/// An existing TAP is attached whatever its `vnet_hdr` flag (`TUNSETIFF`
/// sets it), but its `multi_queue` flag must match: with one queue, a TAP
/// made with `multi_queue` is attached as a one-queue multiqueue TAP.
pub fn open(name: &str, queues: usize) -> Result<Vec<Tap>, Error> {
    let flags = |multi_queue| TapFlags {
        multi_queue,
        vnet_hdr: true,
    };
    let kernel_says = |e: &TapError, errno| matches!(e, TapError::SetIff { source, .. } if source.raw_os_error() == Some(errno));
    let taps = match Tap::open_queues(name, queues, flags(queues > 1)) {
        Ok(t) => t,
        Err(e) if queues == 1 && kernel_says(&e, libc::EINVAL) => {
            // EINVAL from TUNSETIFF on a name that exists: its multi_queue
            // flag differs from ours (tun_set_iff).
            Tap::open_queues(name, 1, flags(true)).map_err(|e| classify(name, queues, e))?
        }
        Err(e) => return Err(classify(name, queues, e)),
    };
    let fd = taps[0].as_raw_fd();
    offload::enable_vnet_hdr(fd).map_err(io_err(&format!(
        "setting the virtio-net header of TAP {name:?} to 12 bytes (TUNSETVNETHDRSZ)"
    )))?;
    offload::set_tun_offloads(fd, TunOffloads::default())
        .map_err(io_err(&format!("clearing the offloads of TAP {name:?}")))?;
    for t in &taps {
        t.set_nonblocking(true)
            .map_err(io_err("making a TAP queue non-blocking"))?;
    }
    log::info!(
        "-net tap: attached to {} ({} queue{})",
        taps[0].name(),
        taps.len(),
        if taps.len() == 1 { "" } else { "s" }
    );
    Ok(taps)
}

fn classify(name: &str, queues: usize, e: TapError) -> Error {
    match e {
        TapError::SetIff { ref source, .. } if source.raw_os_error() == Some(libc::EPERM) => {
            Error::NoPermission {
                name: name.to_string(),
                source: e,
            }
        }
        TapError::TunPermission(_) => Error::NoPermission {
            name: name.to_string(),
            source: e,
        },
        TapError::SetIff { source, .. } if source.raw_os_error() == Some(libc::EINVAL) => {
            Error::NotMultiQueue {
                name: name.to_string(),
                queues,
                source,
            }
        }
        source => Error::Open {
            name: name.to_string(),
            source,
        },
    }
}

/// What `TUNSETOFFLOAD` should allow for a driver that accepted `neg`.
pub fn tun_offloads(neg: Negotiated) -> TunOffloads {
    TunOffloads {
        csum: neg.has(feature::GUEST_CSUM),
        tso4: neg.has(feature::GUEST_TSO4),
        tso6: neg.has(feature::GUEST_TSO6),
        ecn: neg.has(feature::GUEST_ECN),
    }
}

/// Counters of the TAP backend (all queues).
#[derive(Debug, Default)]
pub struct Counters {
    /// Guest frames written to the TAP.
    pub tx_frames: AtomicU64,
    /// Guest frames the TAP refused (a bad header, a frame too short).
    pub tx_drops: AtomicU64,
    /// TAP frames placed in the guest's RX queues.
    pub rx_frames: AtomicU64,
    /// TAP frames dropped: cut, too short, asking for offloads the driver
    /// did not accept, too big for the guest's buffers, or meant for a
    /// driver that has since reset.
    pub rx_drops: AtomicU64,
    /// Failed TAP reads (other than "nothing to read").
    pub read_errors: AtomicU64,
    /// `TUNSETOFFLOAD` changes.
    pub offload_changes: AtomicU64,
}

impl Counters {
    /// One line for the log and `--stats`.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "tx_frames {} tx_drops {} rx_frames {} rx_drops {} read_errors {} offload_changes {}",
            g(&self.tx_frames),
            g(&self.tx_drops),
            g(&self.rx_frames),
            g(&self.rx_drops),
            g(&self.read_errors),
            g(&self.offload_changes)
        )
    }
}

/// The running TAP backend: one thread per TAP queue.
pub struct TapNet {
    stop: Arc<AtomicBool>,
    stop_evt: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
    /// The counters.
    pub counters: Arc<Counters>,
}

/// What one queue's thread owns.
struct Queue {
    k: usize,
    core: Arc<NetCore>,
    tap: Tap,
    inbox: Arc<FrameRing>,
    stop: Arc<AtomicBool>,
    stop_evt: Arc<EventFd>,
    c: Arc<Counters>,
}

impl TapNet {
    /// Starts thread `uipd-tap{k}` for each TAP queue `k`, between `taps[k]`
    /// and the device: it drains `inboxes[k]` (where the device steers
    /// guest frames) and feeds the device's sink `k`. Takes ownership of
    /// the TAP queues.
    pub fn start(
        core: Arc<NetCore>,
        taps: Vec<Tap>,
        inboxes: &[Arc<FrameRing>],
    ) -> Result<TapNet, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_evt = Arc::new(eventfd::nonblocking().map_err(io_err("creating an eventfd"))?);
        let counters = Arc::new(Counters::default());
        let mut threads = Vec::new();
        for (k, (tap, inbox)) in taps.into_iter().zip(inboxes).enumerate() {
            let q = Queue {
                k,
                core: core.clone(),
                tap,
                inbox: inbox.clone(),
                stop: stop.clone(),
                stop_evt: stop_evt.clone(),
                c: counters.clone(),
            };
            let t = std::thread::Builder::new()
                .name(format!("uipd-tap{k}"))
                .spawn(move || {
                    if let Err(e) = crate::sandbox::confine(crate::sandbox::Role::TapNet) {
                        log::error!("{e}");
                        return;
                    }
                    q.run()
                })
                .map_err(io_err("starting a TAP queue thread"));
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    TapNet {
                        stop,
                        stop_evt,
                        threads,
                        counters,
                    }
                    .stop();
                    return Err(e);
                }
            }
        }
        Ok(TapNet {
            stop,
            stop_evt,
            threads,
            counters,
        })
    }

    /// Stops and joins the threads.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.stop_evt.signal();
        for t in self.threads {
            if t.join().is_err() {
                log::error!("-net tap: a queue thread panicked");
            }
        }
    }
}

impl Queue {
    fn run(self) {
        let mut sink = self.core.sink(self.k);
        let mut wc = WorkerCounters::default();
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(RX_BATCH);
        let mut buf = vec![0u8; READ_BUF];
        // The TUNSETOFFLOAD flags now (queue 0 keeps them).
        let mut applied = TunOffloads::default();
        while !self.stop.load(Ordering::SeqCst) {
            if self.k == 0 {
                self.sync_offloads(&mut applied);
            }
            let mut busy = self.write_tap();
            let waiting = sink.flush(&mut wc);
            if !waiting {
                match self.read_tap(&mut buf, &mut batch) {
                    Ok(n) => busy |= n > 0,
                    Err(()) => std::thread::sleep(Duration::from_millis(10)),
                }
                if !batch.is_empty() {
                    sink.send(&mut batch, &mut wc);
                }
            }
            self.take(&mut wc);
            if busy || !self.inbox.prepare_sleep() {
                continue;
            }
            self.sleep(!waiting);
            self.inbox.awake();
            self.inbox.clear_wake();
        }
        self.take(&mut wc);
    }

    /// Moves the sink's counts (frames placed, dropped) to the totals.
    fn take(&self, wc: &mut WorkerCounters) {
        let (w, d) = (
            std::mem::take(&mut wc.port_writes),
            std::mem::take(&mut wc.port_drops),
        );
        if w > 0 {
            self.c.rx_frames.fetch_add(w, Ordering::Relaxed);
        }
        if d > 0 {
            self.c.rx_drops.fetch_add(d, Ordering::Relaxed);
        }
    }

    /// `TUNSETOFFLOAD` to what the driver accepted, when that changed.
    fn sync_offloads(&self, applied: &mut TunOffloads) {
        let want = tun_offloads(self.core.negotiated());
        if want == *applied {
            return;
        }
        match offload::set_tun_offloads(self.tap.as_raw_fd(), want) {
            Ok(()) => {
                log::info!("-net tap: TAP offloads now {want:?}");
                self.c.offload_changes.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => log::warn!("-net tap: TUNSETOFFLOAD {want:?}: {e}"),
        }
        // Not retried on an error: the header check keeps the guest safe.
        *applied = want;
    }

    /// Guest → TAP: writes what waits in the inbox (at most a budget);
    /// returns whether there was anything.
    fn write_tap(&self) -> bool {
        let mut any = false;
        for _ in 0..TX_BUDGET {
            let Some(f) = self.inbox.pop() else { break };
            any = true;
            match self.tap.write_frame(f.bytes()) {
                Ok(_) => self.c.tx_frames.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    log::debug!("-net tap: a guest frame of {} bytes refused: {e}", f.len);
                    self.c.tx_drops.fetch_add(1, Ordering::Relaxed)
                }
            };
            self.inbox.put_buf(f.buf);
        }
        any
    }

    /// TAP → `batch`: at most [`RX_BATCH`] frames, each checked against
    /// what the driver accepted. Returns the frames read (dropped ones
    /// included); `Err` after a read error.
    fn read_tap(&self, buf: &mut [u8], batch: &mut Vec<Vec<u8>>) -> Result<usize, ()> {
        let neg = self.core.negotiated();
        let mut n = 0;
        while n < RX_BATCH {
            let len = match self.tap.read_frame(buf) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if self.c.read_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        log::warn!("-net tap: reading TAP queue {}: {e}", self.k);
                    }
                    return Err(());
                }
            };
            n += 1;
            let ok = (MIN_FRAME..buf.len()).contains(&len)
                && buf
                    .first_chunk_mut::<HEADER_LEN>()
                    .is_some_and(|h| rx_header_fits(neg, h));
            if ok {
                batch.push(buf[..len].to_vec());
            } else {
                self.c.rx_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(n)
    }

    /// Waits (at most a second) for a frame from the guest, a wake-up
    /// (the guest refilled its RX queue, reset, or accepted features), a
    /// stop, or, with `tap`, a frame from the TAP.
    fn sleep(&self, tap: bool) {
        let mut pfd = [
            (self.inbox.wake_fd(), true),
            (self.stop_evt.as_raw_fd(), true),
            (self.tap.as_raw_fd(), tap),
        ]
        .map(|(fd, on)| libc::pollfd {
            fd: if on { fd } else { -1 },
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `pfd` is a live array of three pollfds (a negative fd is
        // ignored by poll), and its length is what we pass.
        unsafe {
            libc::poll(pfd.as_mut_ptr(), 3, 1000);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tun_offloads_follow_the_guest_features() {
        use super::super::virtio_net::bit;
        assert_eq!(tun_offloads(Negotiated(0)), TunOffloads::default());
        assert_eq!(TunOffloads::default().flags(), 0);
        let all = [
            feature::GUEST_CSUM,
            feature::GUEST_TSO4,
            feature::GUEST_TSO6,
            feature::GUEST_ECN,
        ]
        .iter()
        .fold(0, |a, f| a | bit(*f));
        let o = tun_offloads(Negotiated(all));
        assert_eq!(
            o.flags(),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
        // TSO4 only; and TSO without the checksum is nothing at all.
        let o = tun_offloads(Negotiated(
            bit(feature::GUEST_CSUM) | bit(feature::GUEST_TSO4),
        ));
        assert_eq!(o.flags(), libc::TUN_F_CSUM | libc::TUN_F_TSO4);
        let o = tun_offloads(Negotiated(
            bit(feature::GUEST_TSO4) | bit(feature::GUEST_ECN),
        ));
        assert_eq!(o.flags(), 0);
    }

    #[test]
    fn opening_a_bad_name_says_which() {
        let e = open("a/b", 1).unwrap_err();
        assert!(e.to_string().contains("\"a/b\""), "{e}");
    }
}
