//! A stack worker: one thread, optionally pinned, that owns a [`Stack`]
//! (its shard of the guest's flows), a host I/O executor ([`Io`]: io_uring,
//! or epoll where io_uring is refused), its own TAP queue, and an inbox
//! [`FrameRing`] for frames other threads hand it.
//!
//! ```text
//!  TAP queue k ──io_uring reads──► worker k ──steer──► own flow? ─ yes ─► Stack::ingress
//!                                     │                     └─ no ──► inbox of the owner
//!  inbox k (frames from other workers or a frame port) ───────────────► Stack::ingress
//!  Stack ──► frames: io_uring writes to TAP queue k;  SockOps: io_uring;  forward: inboxes
//!  io_uring CQEs ──► HostEvent ──► Stack::host_event
//! ```
//!
//! On the epoll engine the same loop runs: "submit" tries the queued
//! socket ops with non-blocking syscalls, the one wait is an
//! `epoll_wait`, and the TAP is read with poll + read (there is no
//! multishot read); see [`crate::dataplane::epoll`].
//!
//! The loop: drain completions (host events, frames read), process the
//! inbox, run the stack's end-of-batch work ([`Stack::poll`]: delayed ACKs,
//! timers), queue the resulting writes and socket ops, then one
//! `io_uring_enter` submits everything and sleeps until a completion, an
//! inbox wake-up (the eventfd, written only when the worker announced it
//! sleeps), or the stack's next deadline. Before it sleeps, an idle worker
//! busy-polls the ring and the inbox for a window that adapts to how soon
//! work has been coming ([`PollWindow`], at most `poll_us`): a
//! request/response flow is answered without a sleep and a wake-up per
//! packet, while an idle worker's window closes and it sleeps at once.
//!
//! A full inbox is backpressure, never silent loss: the frame waits in the
//! sender's bounded backlog and the sender stops reading its TAP queue
//! until the backlog drains, so the kernel's queue fills and the guest's
//! TCP slows down as it would behind a busy NIC. Every such event is
//! counted (`ring_full`).
//!
//! With `--pcap`, every frame taken in (before `Stack::ingress`) and every
//! frame the stack makes for the guest (before it goes to the port) is
//! copied to [`Shared::pcap`], a bounded queue toward the writer thread
//! ([`crate::dataplane::pcap`]); a full queue leaves the frame out of the
//! file and counts it (`pcap_drops`), it never stalls the loop.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::dataplane::io::{Completion, Io, IoEngine};
use crate::dataplane::pcap::Capture;
use crate::dataplane::tap::Tap;
use crate::rings::{Frame, FrameRing};
use crate::stack::steer::{self, Steer};
use crate::stack::{Actions, Counters, Instant, Proto, Stack};

/// Frames taken from the inbox per batch.
const BATCH: usize = 256;
/// Longest sleep: how quickly a stop or stats request is noticed.
const IDLE_TICK: Duration = Duration::from_millis(100);
/// Most frames read from the TAP queue per batch.
const PORT_BATCH: usize = 128;
/// Longest sleep while a sink holds frames it could not deliver.
const SINK_RETRY: Duration = Duration::from_millis(1);
/// Most frames waiting for room in other workers' inboxes.
const BACKLOG_MAX: usize = 1024;

/// The smallest non-zero busy-poll window.
const POLL_START: Duration = Duration::from_micros(10);

/// How long an idle worker busy-polls before it sleeps: adaptive, the way
/// KVM sizes its halt polling. Sleeping and being woken costs a context
/// switch each way and, on a VM whose CPU went idle, an IPI and a halt
/// exit: tens of microseconds, a request/response transaction's worth.
/// Polling pays only when work comes soon, so the window follows how long
/// the worker's sleeps last: a sleep that polling up to `max` would have
/// caught doubles the window (from [`POLL_START`]); a longer one halves it
/// (below [`POLL_START`] it is off). A busy request/response flow keeps
/// the window open, an idle worker's sleeps (100 ms ticks) close it at
/// once, so an idle uipd does not spin. `max` zero: never poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollWindow {
    max: Duration,
    cur: Duration,
}

impl PollWindow {
    /// A window that grows up to `max` (closed at first).
    pub fn new(max: Duration) -> PollWindow {
        PollWindow {
            max,
            cur: Duration::ZERO,
        }
    }

    /// How long to poll before the next sleep.
    pub fn window(&self) -> Duration {
        self.cur
    }

    /// The worker slept `slept` (polling, if any, found nothing first).
    pub fn slept(&mut self, slept: Duration) {
        if self.max.is_zero() {
            return;
        }
        if slept <= self.max {
            self.cur = (self.cur * 2).max(POLL_START).min(self.max);
        } else {
            self.cur /= 2;
            if self.cur < POLL_START {
                self.cur = Duration::ZERO;
            }
        }
    }
}

/// Provided buffers for the TAP queue's multishot read: about 4 MiB of
/// frames, between 16 and 256 of them.
fn port_ring_entries(frame_max: usize) -> u16 {
    let n = ((4usize << 20) / frame_max.max(1)).clamp(16, 256);
    // Cannot truncate: at most 256. Round down to a power of two.
    1u16 << (usize::BITS - 1 - n.leading_zeros())
}

/// Counters of the worker itself (the stack keeps its own).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerCounters {
    /// Frames read from the worker's TAP queue.
    pub port_reads: u64,
    /// Frames written to the TAP queue or handed to the sink.
    pub port_writes: u64,
    /// Failed reads or writes on the TAP queue or the sink.
    pub port_errors: u64,
    /// Frames a sink could not deliver and dropped (its queue was full).
    pub port_drops: u64,
    /// Frames taken from the inbox.
    pub inbox_frames: u64,
    /// Frames handed to other workers (steering).
    pub forwarded: u64,
    /// Times another worker's inbox was full.
    pub ring_full: u64,
    /// Batches processed (loop iterations that had frames).
    pub batches: u64,
    /// Host completions processed.
    pub completions: u64,
    /// Loop wake-ups.
    pub wakeups: u64,
    /// Waits in `io_uring_enter` (the worker had nothing to do; a wait
    /// returns at once when completions are already there).
    pub sleeps: u64,
    /// Busy-polls that found work before their window ran out (each one
    /// a sleep and a wake-up saved).
    pub poll_hits: u64,
    /// Frames queued for the pcap file (`--pcap`), both directions.
    pub pcap_frames: u64,
    /// Frames left out of the pcap file because its writer fell behind.
    pub pcap_drops: u64,
}

/// A snapshot of one worker's metrics.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    /// The stack's counters.
    pub stack: Counters,
    /// The worker's own counters.
    pub worker: WorkerCounters,
    /// Live flows of the worker's stack (at the last publication).
    pub flows: u64,
    /// The I/O engine the worker runs on (`uring` or `epoll`; empty before
    /// it started).
    pub io: &'static str,
    /// The flows' memory budget (shared by all workers) at the last
    /// publication.
    pub memory: crate::stack::MemStats,
    /// Frame-in to socket-submit latency, in nanoseconds: from the moment a
    /// batch's frames were taken in to the `io_uring_enter` that submitted
    /// what they caused (recorded once per frame).
    pub latency_ns: Histogram<u64>,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            stack: Counters::default(),
            worker: WorkerCounters::default(),
            flows: 0,
            io: "",
            memory: crate::stack::MemStats::default(),
            // Cannot fail: 3 significant figures is within hdrhistogram's 0..=5.
            latency_ns: Histogram::new(3).unwrap_or_else(|_| unreachable!()),
        }
    }
}

/// Flags and data shared between a worker and the control thread.
#[derive(Default)]
pub struct Shared {
    /// Ask the worker to stop.
    pub stop: AtomicBool,
    /// Ask the worker to publish its stats.
    pub dump: AtomicBool,
    /// Stats published by the worker (on request and at exit).
    pub stats: Mutex<WorkerStats>,
    /// New resolvers to hand to the stack (resolv.conf changed).
    pub resolvers: Mutex<Option<Vec<std::net::SocketAddr>>>,
    /// This worker's queue to the pcap writer (`--pcap`), if capturing.
    pub pcap: Option<Arc<Capture>>,
    /// The guest went away (a VMM disconnected): reset every host
    /// connection and forget every flow, then go on for the next guest.
    pub reset: AtomicBool,
    /// New offloads toward the guest (a virtio guest negotiated its
    /// features): the worker resets its flows and applies them.
    pub offload: Mutex<Option<crate::stack::Offload>>,
    /// Published ports to start or stop serving ([`crate::publish`]); the
    /// sender kicks the worker's inbox after pushing.
    pub publish: Mutex<Vec<PublishCmd>>,
    /// Publish commands the worker has carried out so far (a sender waits
    /// for this to pass what it queued).
    pub publish_done: AtomicU64,
}

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

/// Hand `frame` (with its virtio-net header of `vnet_hdr` bytes, if any) to
/// the capture, counting it or its drop; never blocks.
fn capture(pcap: Option<&Capture>, wc: &mut WorkerCounters, frame: &[u8], vnet_hdr: usize) {
    let Some(c) = pcap else { return };
    let Some(eth) = frame.get(vnet_hdr..) else {
        return;
    };
    if c.record(eth) {
        wc.pcap_frames += 1;
    } else {
        wc.pcap_drops += 1;
    }
}

/// A frontend that takes the worker's frames toward the guest in batches
/// (a stream socket, a virtqueue), for frontends that are not a TAP queue.
///
/// Frames carry the 12-byte virtio-net header when the stack's
/// `offload.vnet_hdr` is on. A sink that cannot deliver at once (no RX
/// buffers yet, a full socket) keeps frames in a bounded queue and drops,
/// counted, beyond it: TCP toward the guest retransmits, and the guest's
/// window bounds how much is ever in flight. Whoever makes room again (the
/// guest refilling its RX queue) kicks the worker's inbox so `flush` runs.
pub trait FrameSink: Send {
    /// Deliver `frames` (drained), or keep them for `flush`.
    fn send(&mut self, frames: &mut Vec<Vec<u8>>, counters: &mut WorkerCounters);
    /// Retry kept frames; called once per worker loop iteration. Returns
    /// true while frames still wait.
    fn flush(&mut self, counters: &mut WorkerCounters) -> bool;
    /// The guest side went away for good: the worker should stop.
    fn closed(&self) -> bool {
        false
    }
}

/// Where a worker's frames toward the guest go.
pub enum PortOut {
    /// A TAP queue, written through io_uring.
    Tap(RawFd),
    /// A batching frontend.
    Sink(Box<dyn FrameSink>),
}

/// Everything a worker needs.
pub struct Worker {
    /// This worker's index.
    pub index: usize,
    /// The stack it drives (its `Config::worker`/`workers` match).
    pub stack: Stack,
    /// Inboxes of all workers, indexed by worker (this one's included).
    pub inboxes: Vec<Arc<FrameRing>>,
    /// Where frames to the guest go.
    pub port_out: PortOut,
    /// The same queue, non-blocking, to read guest frames from; `None` when
    /// frames come only through the inbox (a frame port thread feeds it).
    pub port_reader: Option<Tap>,
    /// Shared control state.
    pub shared: Arc<Shared>,
    /// CPU to pin to.
    pub cpu: Option<usize>,
    /// Source addresses for outbound sockets (IPv4, IPv6), if set.
    pub outbound: (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>),
    /// Longest busy-poll before sleeping, in microseconds; the window
    /// adapts below it ([`PollWindow`]). 0: sleep at once.
    pub poll_us: u64,
    /// Steer frames read from `port_reader` by [`steer::frame_owner`] and
    /// forward foreign ones. Off for a multiqueue TAP: there the kernel
    /// steers (see below), and the worker that reads a frame owns its flow.
    pub hash_steer: bool,
    /// The host I/O engine (resolved by [`crate::dataplane::io::select`];
    /// `Auto` here tries io_uring, then epoll).
    pub io: IoEngine,
}

impl Worker {
    fn inbox(&self) -> &FrameRing {
        &self.inboxes[self.index]
    }

    /// Spins up to `window` until there is work: a completion or task work
    /// on the ring, a frame in the inbox, or a stop. No system calls: the
    /// ring's and the inbox's shared memory are read.
    fn poll_for_work(&self, uring: &mut Io, window: Duration) -> bool {
        let end = std::time::Instant::now() + window;
        loop {
            for _ in 0..64 {
                if uring.work_pending()
                    || !self.inbox().is_empty()
                    || self.shared.stop.load(Ordering::Relaxed)
                {
                    return true;
                }
                std::hint::spin_loop();
            }
            if std::time::Instant::now() >= end {
                return false;
            }
        }
    }

    /// Run until `shared.stop`; returns the final stats.
    pub fn run(mut self) -> std::io::Result<WorkerStats> {
        if let Some(cpu) = self.cpu {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                log::warn!("could not pin worker {} to CPU {cpu}", self.index);
            }
        }
        let mut uring = Io::new(self.io)?;
        uring.set_outbound(self.outbound.0, self.outbound.1);
        uring.arm_wake(self.inbox().wake_fd());
        let vnet_hdr = if self.stack.config().offload.vnet_hdr {
            crate::stack::wire::vnet_hdr::HEADER_LEN
        } else {
            0
        };
        // The TAP queue is read by one multishot io_uring read into
        // provided buffers (a batch of frames per wake-up, no syscall per
        // frame); on kernels without it, dry reads after a one-shot poll.
        let mut multishot = false;
        if self.port_reader.is_some() && uring.engine() == IoEngine::Uring {
            let frame_max = if vnet_hdr > 0 {
                vnet_hdr + 14 + 65535
            } else {
                usize::from(self.stack.config().mtu) + 18
            };
            match uring.setup_port_ring(port_ring_entries(frame_max), frame_max) {
                Ok(()) => multishot = true,
                Err(e) => log::info!(
                    "worker {}: no provided-buffer ring ({e}); reading the TAP with poll + read",
                    self.index
                ),
            }
        }
        // The worker's own set-up is done: from here it is held to its
        // allow-list.
        crate::sandbox::confine(crate::sandbox::Role::Worker)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut port_ready = self.port_reader.is_some() && !multishot;
        let mut poll_armed = false;
        let mut read_armed = false;
        // Port frames completed and not yet processed (buffer id, length).
        let mut held: VecDeque<(u16, usize)> = VecDeque::new();
        let start = std::time::Instant::now();
        let now =
            || Instant::from_micros(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
        let mut out = Actions::default();
        let mut stats = WorkerStats {
            io: uring.engine().name(),
            ..WorkerStats::default()
        };
        let mut events = Vec::new();
        let mut backlog: VecDeque<(usize, Frame)> = VecDeque::new();
        let mut spare: Option<Vec<u8>> = None;
        let mut poll = PollWindow::new(Duration::from_micros(self.poll_us));
        let workers = self.inboxes.len();
        // Published ports this worker serves: listener id -> guest port.
        let mut published: HashMap<u32, u16> = HashMap::new();

        while !self.shared.stop.load(Ordering::Relaxed) {
            let wc = &mut stats.worker;
            wc.wakeups += 1;
            if let Ok(mut r) = self.shared.resolvers.try_lock() {
                if let Some(list) = r.take() {
                    log::info!("worker {}: resolvers now {list:?}", self.index);
                    self.stack.set_resolvers(list);
                }
            }
            if let Some(off) = self
                .shared
                .offload
                .try_lock()
                .ok()
                .and_then(|mut o| o.take())
            {
                if off != self.stack.config().offload {
                    log::info!("worker {}: offloads now {off:?}", self.index);
                    self.stack.reset_all(&mut out);
                    self.stack.set_offload(off);
                }
            }
            if self.shared.reset.swap(false, Ordering::Relaxed) {
                log::info!("worker {}: guest gone, resetting its flows", self.index);
                self.stack.reset_all(&mut out);
            }
            if let Ok(mut q) = self.shared.publish.try_lock() {
                let n = q.len() as u64;
                for cmd in q.drain(..) {
                    match cmd {
                        PublishCmd::Add {
                            id,
                            proto,
                            guest_port,
                            fd,
                        } => {
                            published.insert(id, guest_port);
                            uring.add_listener(id, proto, fd);
                        }
                        PublishCmd::Remove { id } => {
                            published.remove(&id);
                            uring.remove_listener(id);
                        }
                    }
                }
                // Release: pairs with the sender's Acquire load; the
                // listener changes above happen before it sees the count.
                self.shared.publish_done.fetch_add(n, Ordering::Release);
            }
            uring.drain(&mut |c| events.push(c));
            let batch_start = std::time::Instant::now();
            let t = now();
            let mut frames_in = 0u64;
            for c in events.drain(..) {
                wc.completions += 1;
                match c {
                    Completion::Host(ev) => self.stack.host_event(ev, t, &mut out),
                    Completion::Wake => uring.arm_wake(self.inboxes[self.index].wake_fd()),
                    Completion::FrameWritten { result } => {
                        if result.is_err() {
                            wc.port_errors += 1;
                        }
                    }
                    Completion::Readable { result } => {
                        poll_armed = false;
                        port_ready = true;
                        if let Err(e) = result {
                            log::debug!("worker {}: TAP poll: {e}", self.index);
                        }
                    }
                    Completion::Timeout => {}
                    Completion::PortFrame { bid, len } => held.push_back((bid, len)),
                    Completion::PortReadEnded { result } => {
                        read_armed = false;
                        match result {
                            // Out of buffers: frames are held; re-arm later.
                            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
                            res => {
                                // The queue is gone (the namespace ended) or broken.
                                wc.port_errors += 1;
                                log::debug!("worker {}: TAP queue closed ({res:?})", self.index);
                                self.port_reader = None;
                            }
                        }
                    }
                    Completion::Accepted { listener, fd, peer } => {
                        let Some(&gp) = published.get(&listener) else {
                            continue;
                        };
                        match self.stack.accept_tcp(peer, gp, t, &mut out) {
                            Some(id) => uring.attach_tcp(id, fd),
                            None => crate::dataplane::uring::abort_socket(fd),
                        }
                    }
                    Completion::Datagram {
                        listener,
                        peer,
                        data,
                    } => {
                        let Some(&gp) = published.get(&listener) else {
                            continue;
                        };
                        if let Some(id) = self.stack.inbound_udp(peer, gp, &data, t, &mut out) {
                            uring.attach_udp(id, listener, peer);
                        }
                    }
                }
            }
            // Frames the multishot read delivered: to the stack straight
            // from the provided buffer, or copied for their owner.
            let mut taken = 0u64;
            while backlog.len() < BACKLOG_MAX {
                let Some((bid, len)) = held.pop_front() else {
                    break;
                };
                let Some(frame) = uring.port_frame(bid, len) else {
                    wc.port_errors += 1;
                    continue;
                };
                taken += 1;
                let eth = frame.get(vnet_hdr..).unwrap_or_default();
                let owner = if self.hash_steer {
                    steer::frame_owner(eth, workers)
                } else {
                    Steer::Worker(self.index)
                };
                match owner {
                    Steer::Worker(w) if w != self.index => {
                        wc.forwarded += 1;
                        let mut buf = self.inboxes[w].get_buf();
                        if buf.len() < frame.len() {
                            buf.resize(frame.len(), 0);
                        }
                        buf[..frame.len()].copy_from_slice(frame);
                        backlog.push_back((w, Frame { buf, len }));
                    }
                    _ => {
                        capture(self.shared.pcap.as_deref(), wc, frame, vnet_hdr);
                        self.stack.ingress(frame, t, &mut out)
                    }
                }
                uring.port_recycle(bid);
            }
            wc.port_reads += taken;
            frames_in += taken;
            if multishot && !read_armed && held.is_empty() && backlog.len() < BACKLOG_MAX {
                if let Some(tap) = &self.port_reader {
                    uring.push_port_read(tap.as_raw_fd());
                    read_armed = true;
                }
            }
            // Frames from the guest, on our TAP queue.
            if port_ready && backlog.len() < BACKLOG_MAX {
                let mut read = 0;
                while read < PORT_BATCH {
                    let Some(tap) = self.port_reader.as_ref() else {
                        break;
                    };
                    let mut buf = spare
                        .take()
                        .unwrap_or_else(|| self.inboxes[self.index].get_buf());
                    match tap.read_frame(&mut buf) {
                        Ok(len) if len > 0 => {
                            read += 1;
                            let frame = Frame { buf, len };
                            let eth = frame.bytes().get(vnet_hdr..).unwrap_or_default();
                            let owner = if self.hash_steer {
                                steer::frame_owner(eth, workers)
                            } else {
                                Steer::Worker(self.index)
                            };
                            match owner {
                                Steer::Worker(w) if w != self.index => {
                                    wc.forwarded += 1;
                                    backlog.push_back((w, frame));
                                }
                                _ => {
                                    capture(
                                        self.shared.pcap.as_deref(),
                                        wc,
                                        frame.bytes(),
                                        vnet_hdr,
                                    );
                                    self.stack.ingress(frame.bytes(), t, &mut out);
                                    spare = Some(frame.buf);
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            spare = Some(buf);
                            port_ready = false;
                            break;
                        }
                        Ok(_) | Err(_) => {
                            // The queue is gone (the namespace ended) or broken.
                            wc.port_errors += 1;
                            log::debug!("worker {}: TAP queue closed", self.index);
                            self.port_reader = None;
                            port_ready = false;
                            break;
                        }
                    }
                }
                wc.port_reads += read as u64;
                frames_in += read as u64;
            }
            if !multishot && !port_ready && !poll_armed {
                if let Some(tap) = &self.port_reader {
                    uring.push_poll_in(tap.as_raw_fd());
                    poll_armed = true;
                }
            }
            // Frames other threads handed us.
            let mut n = 0;
            while n < BATCH {
                let Some(frame) = self.inboxes[self.index].pop() else {
                    break;
                };
                capture(self.shared.pcap.as_deref(), wc, frame.bytes(), vnet_hdr);
                self.stack.ingress(frame.bytes(), t, &mut out);
                self.inboxes[self.index].put_buf(frame.buf);
                n += 1;
            }
            wc.inbox_frames += n as u64;
            frames_in += n as u64;
            if frames_in > 0 {
                wc.batches += 1;
            }
            let deadline = self.stack.poll(t, &mut out);
            for f in &out.frames {
                capture(self.shared.pcap.as_deref(), wc, f, vnet_hdr);
            }
            let mut sink_waiting = false;
            match &mut self.port_out {
                PortOut::Tap(fd) => {
                    for frame in out.frames.drain(..) {
                        wc.port_writes += 1;
                        uring.push_frame_write(*fd, frame);
                    }
                }
                PortOut::Sink(sink) => {
                    if !out.frames.is_empty() {
                        sink.send(&mut out.frames, wc);
                    }
                    sink_waiting = sink.flush(wc);
                    if sink.closed() {
                        log::info!("worker {}: the guest went away", self.index);
                        self.shared.stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            for op in out.ops.drain(..) {
                uring.push(op);
            }
            for (w, buf) in out.forward.drain(..) {
                let len = buf.len();
                backlog.push_back((w.min(workers - 1), Frame { buf, len }));
            }
            // Hand foreign frames to their owners; a full inbox keeps the
            // rest here (in order) until the next iteration.
            while let Some((w, frame)) = backlog.pop_front() {
                if let Err(f) = self.inboxes[w].push(frame) {
                    wc.ring_full += 1;
                    backlog.push_front((w, f));
                    break;
                }
            }
            if self.shared.dump.swap(false, Ordering::Relaxed) {
                stats.stack = self.stack.counters().clone();
                stats.flows = self.stack.flow_count() as u64;
                stats.memory = self.stack.memory().stats();
                *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats.clone();
            }
            // Everything the batch caused is queued; the next io_uring_enter
            // submits it (before any wait).
            if frames_in > 0 {
                let ns = u64::try_from(batch_start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let _ = stats.latency_ns.record_n(ns.max(1), frames_in);
            }
            let timeout = match deadline {
                Some(d) if d <= t => Some(Duration::ZERO),
                Some(d) => Some(d.since(t).min(IDLE_TICK)),
                None => Some(IDLE_TICK),
            };
            // Frames waiting in a sink: whoever makes room kicks the inbox;
            // a short timeout covers a kick that raced with going to sleep.
            let timeout = if sink_waiting {
                timeout.map(|t| t.min(SINK_RETRY))
            } else {
                timeout
            };
            let busy = n == BATCH
                || timeout == Some(Duration::ZERO)
                || !backlog.is_empty()
                || (port_ready && self.port_reader.is_some())
                || !held.is_empty();
            if busy {
                uring.submit_and_wait(0, None)?;
                continue;
            }
            // Idle: poll a while (submitting first), then sleep.
            let window = poll.window().min(timeout.unwrap_or(IDLE_TICK));
            if !window.is_zero() {
                uring.submit_and_wait(0, None)?;
                if self.poll_for_work(&mut uring, window) {
                    stats.worker.poll_hits += 1;
                    continue;
                }
            }
            if self.inboxes[self.index].prepare_sleep() {
                let slept = std::time::Instant::now();
                uring.submit_and_wait(1, timeout)?;
                self.inboxes[self.index].awake();
                stats.worker.sleeps += 1;
                poll.slept(slept.elapsed());
            } else {
                uring.submit_and_wait(0, None)?;
            }
        }
        // Published ports stop listening at once.
        for id in uring.listener_ids() {
            uring.remove_listener(id);
        }
        // The guest is gone: reset every host connection.
        self.stack.reset_all(&mut out);
        for op in out.ops.drain(..) {
            uring.push(op);
        }
        uring.submit_and_wait(0, None)?;
        uring.close_all();
        stats.stack = self.stack.counters().clone();
        stats.memory = self.stack.memory().stats();
        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats.clone();
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn poll_window_opens_on_short_sleeps_up_to_its_max() {
        let mut p = PollWindow::new(50 * US);
        assert_eq!(p.window(), Duration::ZERO, "closed at first");
        let mut seen = Vec::new();
        for _ in 0..5 {
            p.slept(30 * US);
            seen.push(p.window());
        }
        assert_eq!(seen, [10 * US, 20 * US, 40 * US, 50 * US, 50 * US]);
        // A sleep of exactly the maximum would have been caught.
        p.slept(50 * US);
        assert_eq!(p.window(), 50 * US);
    }

    #[test]
    fn poll_window_halves_on_long_sleeps_and_closes_when_idle() {
        let mut p = PollWindow::new(80 * US);
        for _ in 0..4 {
            p.slept(5 * US);
        }
        assert_eq!(p.window(), 80 * US);
        p.slept(81 * US);
        assert_eq!(p.window(), 40 * US);
        p.slept(Duration::from_millis(100));
        assert_eq!(p.window(), 20 * US);
        p.slept(Duration::from_millis(100));
        assert_eq!(p.window(), 10 * US);
        // Below the smallest window it is off: an idle worker sleeps at once.
        p.slept(Duration::from_millis(100));
        assert_eq!(p.window(), Duration::ZERO);
        p.slept(Duration::from_millis(100));
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn poll_window_with_max_zero_never_polls() {
        let mut p = PollWindow::new(Duration::ZERO);
        for _ in 0..10 {
            p.slept(US);
        }
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn poll_window_below_the_smallest_step_is_its_max() {
        let mut p = PollWindow::new(3 * US);
        p.slept(US);
        assert_eq!(p.window(), 3 * US);
    }
}
