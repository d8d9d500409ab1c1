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
//! busy-polls the ring and the inbox for a window chosen so that it pays
//! for itself ([`PollWindow`], at most `poll_us`): the worker spins only
//! as long as its recent waits show spinning costs less CPU than the
//! sleeps and wake-ups it avoids, so work that comes back within a few
//! microseconds is taken without a sleep, while a request/response flow
//! whose replies take longer than a sleep costs, or an idle worker,
//! sleeps at once.
//!
//! A full inbox is backpressure, never silent loss: the frame waits in the
//! sender's bounded backlog and the sender stops reading its TAP queue
//! until the backlog drains, so the kernel's queue fills and the guest's
//! TCP slows down as it would behind a busy NIC. Every such event is
//! counted (`ring_full`).
//!
//! One turn of [`Worker::run`], in order: take control commands
//! (`control`), drain completions, take frames (the frame port,
//! `ports::PortIn`, then the inbox), run the stack's end-of-batch work,
//! send out (frames to [`PortOut`], socket ops to the executor, foreign
//! frames to their owners' inboxes), answer stats requests, then wait
//! (busy, poll or sleep). Files: `control.rs` (commands from other
//! threads), `ports.rs` (frame port in and out, steering), `poll.rs`
//! ([`PollWindow`]), `stats.rs` (counters).
//!
//! With `--pcap`, every frame taken in (before `Stack::ingress`) and every
//! frame the stack makes for the guest (before it goes to the port) is
//! copied to [`Shared::pcap`], a bounded queue toward the writer thread
//! ([`crate::dataplane::pcap`]); a full queue leaves the frame out of the
//! file and counts it (`pcap_drops`), it never stalls the loop.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam::channel::Sender;

use crate::dataplane::io::{Completion, Io, IoEngine};
use crate::dataplane::tap::Tap;
use crate::rings::{Frame, FrameRing};
use crate::stack::{Actions, Instant, Stack};

mod control;
mod poll;
mod ports;
mod stats;

pub use control::{Command, PublishCmd, Shared, collect_stats};
pub use poll::PollWindow;
pub use ports::{FrameSink, PortOut};
use ports::{PortIn, Steering, capture};
pub use stats::{WorkerCounters, WorkerStats};

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
    /// is chosen below it so that polling pays for itself
    /// ([`PollWindow`]). 0: sleep at once.
    pub poll_us: u64,
    /// Steer frames read from `port_reader` by
    /// [`crate::stack::steer::frame_owner`] and forward foreign ones. Off
    /// for a multiqueue TAP: there the kernel steers, and the worker that
    /// reads a frame owns its flow. The daemon never sets it (its TAP
    /// queues are kernel-steered, its other ports feed the inboxes); the
    /// steering tests do, to drive the forwarding backlog.
    pub hash_steer: bool,
    /// The host I/O engine (resolved by [`crate::dataplane::io::select`];
    /// `Auto` here tries io_uring, then epoll).
    pub io: IoEngine,
}

/// The loop's state between turns.
struct Turn {
    /// What the stack asked for in this turn.
    out: Actions,
    stats: WorkerStats,
    /// Completions drained in this turn.
    events: Vec<Completion>,
    /// Frames for other workers whose inboxes were full, in order.
    backlog: VecDeque<(usize, Frame)>,
    poll: PollWindow,
    steering: Steering,
    /// Published ports this worker serves: listener id -> guest port.
    published: HashMap<u32, u16>,
    /// Stats requests to answer at the end of this turn.
    stats_replies: Vec<Sender<WorkerStats>>,
    /// The stack's clock starts here.
    start: std::time::Instant,
}

impl Turn {
    /// `at` on the stack's clock.
    fn stack_time(&self, at: std::time::Instant) -> Instant {
        let since = at.saturating_duration_since(self.start);
        Instant::from_micros(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
    }
}

/// Copy the I/O engine's own counters into the worker's.
fn set_io_counters(io: &Io, w: &mut WorkerCounters) {
    (
        w.udp_segmented_sends,
        w.udp_segmented_datagrams,
        w.udp_segment_fallbacks,
    ) = io.segmented();
}

impl Worker {
    fn inbox(&self) -> &FrameRing {
        &self.inboxes[self.index]
    }

    /// Spins up to `window` until there is work: a completion or task work
    /// on the ring, a frame in the inbox, or a stop. The ring's and the
    /// inbox's shared memory are read, and every 64 checks the CPU is
    /// offered to whatever else is runnable on it (`sched_yield`).
    ///
    /// The yield is what lets polling pay where CPUs are busy: the event a
    /// worker waits for comes from a peer (the guest's application, the
    /// host's server) that may be waiting for this very CPU. Measured on
    /// the 2-CPU VM with netperf TCP_RR (3 interleaved trios of 3 s runs,
    /// CPU of uipd and netperf, its child):
    /// - with a busy loop on one CPU, without the yield polling cost p99
    ///   109-129 us against 88-97 for not polling (`--poll-us 0`), at
    ///   19-20k transactions/s and 41-44 us of CPU per transaction; with
    ///   it, p99 61-63 us, 23.6-26.6k transactions/s and 27-36 us;
    /// - on the idle machine the two are alike (p50 41-51 us, p99 98-129
    ///   against 98-150, 52-62 us of CPU against 52-59), and not polling
    ///   is far worse there (9.2k transactions/s, p50 106 us, 76-79 us of
    ///   CPU: an idle CPU halts, and waking it is slow in this VM).
    ///
    /// When nothing else is runnable the yield returns at once.
    ///
    /// The window runs from `from`. Returns when work was seen, `None` when
    /// the window closed first.
    fn poll_for_work(
        &self,
        io: &mut Io,
        from: std::time::Instant,
        window: Duration,
    ) -> Option<std::time::Instant> {
        let end = from + window;
        loop {
            for _ in 0..64 {
                if io.work_pending()
                    || !self.inbox().is_empty()
                    || self.shared.stop.load(Ordering::Relaxed)
                {
                    return Some(std::time::Instant::now());
                }
                std::hint::spin_loop();
            }
            if std::time::Instant::now() >= end {
                return None;
            }
            std::thread::yield_now();
        }
    }

    /// Bytes of virtio-net header before each frame.
    fn vnet_hdr(&self) -> usize {
        if self.stack.config().offload.vnet_hdr {
            crate::stack::wire::vnet_hdr::HEADER_LEN
        } else {
            0
        }
    }

    /// Run until `shared.stop`; returns the final stats.
    pub fn run(mut self) -> std::io::Result<WorkerStats> {
        if let Some(cpu) = self.cpu {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                log::warn!("could not pin worker {} to CPU {cpu}", self.index);
            }
        }
        let mut io = Io::new(self.io)?;
        io.set_outbound(self.outbound.0, self.outbound.1);
        io.arm_wake(self.inbox().wake_fd());
        let vnet_hdr = self.vnet_hdr();
        let frame_max = if vnet_hdr > 0 {
            vnet_hdr + 14 + 65535
        } else {
            usize::from(self.stack.config().mtu) + 18
        };
        let mut port = PortIn::new(self.port_reader.take(), &mut io, frame_max, self.index);
        // The worker's own set-up is done: from here it is held to its
        // allow-list.
        crate::sandbox::confine(crate::sandbox::Role::Worker)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut st = Turn {
            out: Actions::default(),
            stats: WorkerStats {
                io: io.engine().name(),
                ..WorkerStats::default()
            },
            events: Vec::new(),
            backlog: VecDeque::new(),
            poll: PollWindow::new(Duration::from_micros(self.poll_us), poll::SLEEP_COST),
            steering: Steering {
                index: self.index,
                workers: self.inboxes.len(),
                hash: self.hash_steer,
                vnet_hdr,
            },
            published: HashMap::new(),
            stats_replies: Vec::new(),
            start: std::time::Instant::now(),
        };
        // The clock is read twice a turn, where it used to be five or six
        // times: when the turn's work ends, and when its wait ends, which
        // starts the next turn (a turn after no wait reads it at its
        // start). In a request/response flow each read is a few tens of
        // nanoseconds of a turn of a few microseconds.
        let mut woke = None;
        while !self.shared.stop.load(Ordering::Relaxed) {
            st.stats.worker.wakeups += 1;
            self.take_commands(&mut io, &mut st);
            io.drain(&mut |c| st.events.push(c));
            let batch_start = woke.take().unwrap_or_else(std::time::Instant::now);
            let t = st.stack_time(batch_start);
            self.dispatch(&mut io, &mut port, &mut st, t);
            let (frames_in, inbox_full) = self.take_frames(&mut io, &mut port, &mut st, t);
            if frames_in > 0 {
                st.stats.worker.batches += 1;
            }
            let deadline = self.stack.poll(t, &mut st.out);
            let sink_waiting = self.send_out(&mut io, &mut st);
            self.answer_stats(&io, &mut st);
            // Everything the batch caused is queued; the next io_uring_enter
            // submits it (before any wait).
            let batch_end = std::time::Instant::now();
            if frames_in > 0 {
                let ns = batch_end.saturating_duration_since(batch_start).as_nanos();
                let ns = u64::try_from(ns).unwrap_or(u64::MAX);
                let _ = st.stats.latency_ns.record_n(ns.max(1), frames_in);
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
            let busy = inbox_full
                || timeout == Some(Duration::ZERO)
                || !st.backlog.is_empty()
                || port.busy();
            woke = self.wait(&mut io, &mut st, busy, timeout, batch_end)?;
        }
        self.finish(&mut io, st)
    }

    /// Carry out the commands other threads queued ([`Shared`]), in the
    /// order the old mailboxes ran: resolvers, offloads, reset, published
    /// ports; stats requests wait for the end of the turn.
    fn take_commands(&mut self, io: &mut Io, st: &mut Turn) {
        let mut resolvers = None;
        let mut offload = None;
        let mut reset = false;
        let mut publish = Vec::new();
        for cmd in self.shared.take() {
            match cmd {
                Command::SetResolvers(list) => resolvers = Some(list),
                Command::SetOffload(off) => offload = Some(off),
                Command::Reset => reset = true,
                Command::Publish { cmds, done } => publish.push((cmds, done)),
                Command::Stats(reply) => st.stats_replies.push(reply),
            }
        }
        if let Some(list) = resolvers {
            log::info!("worker {}: resolvers now {list:?}", self.index);
            self.stack.set_resolvers(list);
        }
        if let Some(off) = offload {
            if off != self.stack.config().offload {
                log::info!("worker {}: offloads now {off:?}", self.index);
                self.stack.reset_all(&mut st.out);
                self.stack.set_offload(off);
            }
        }
        if reset {
            log::info!("worker {}: guest gone, resetting its flows", self.index);
            self.stack.reset_all(&mut st.out);
        }
        for (cmds, done) in publish {
            let n = cmds.len() as u64;
            for cmd in cmds {
                match cmd {
                    PublishCmd::Add {
                        id,
                        proto,
                        guest_port,
                        fd,
                    } => {
                        st.published.insert(id, guest_port);
                        io.add_listener(id, proto, fd);
                    }
                    PublishCmd::Remove { id } => {
                        st.published.remove(&id);
                        io.remove_listener(id);
                    }
                }
            }
            // The listener changes above are in effect: the sender may go on.
            let _ = done.send(n);
        }
    }

    /// Hand each drained completion to whom it concerns: the stack, the
    /// wake-up, the frame port, or the published ports.
    fn dispatch(&mut self, io: &mut Io, port: &mut PortIn, st: &mut Turn, t: Instant) {
        let wc = &mut st.stats.worker;
        for c in st.events.drain(..) {
            wc.completions += 1;
            match c {
                Completion::Host(ev) => self.stack.host_event(ev, t, &mut st.out),
                Completion::Wake => io.arm_wake(self.inboxes[self.index].wake_fd()),
                Completion::FrameWritten { result } => {
                    if result.is_err() {
                        wc.port_errors += 1;
                    }
                }
                Completion::Readable { result } => port.on_readable(result, self.index),
                Completion::Timeout => {}
                Completion::PortFrame { bid, len } => port.on_frame(bid, len),
                Completion::PortReadEnded { result } => port.on_read_ended(result, wc, self.index),
                Completion::Accepted { listener, fd, peer } => {
                    let Some(&gp) = st.published.get(&listener) else {
                        continue;
                    };
                    match self.stack.accept_tcp(peer, gp, t, &mut st.out) {
                        Some(id) => io.attach_tcp(id, fd),
                        None => crate::dataplane::uring::abort_socket(fd),
                    }
                }
                Completion::Datagram {
                    listener,
                    peer,
                    data,
                } => {
                    let Some(&gp) = st.published.get(&listener) else {
                        continue;
                    };
                    if let Some(id) = self.stack.inbound_udp(peer, gp, &data, t, &mut st.out) {
                        io.attach_udp(id, listener, peer);
                    }
                }
            }
        }
    }

    /// Take guest frames: the frame port's, then up to [`BATCH`] from the
    /// inbox. Returns the frames taken and whether the inbox batch was
    /// full (more may wait).
    fn take_frames(
        &mut self,
        io: &mut Io,
        port: &mut PortIn,
        st: &mut Turn,
        t: Instant,
    ) -> (u64, bool) {
        let pcap = self.shared.pcap.as_deref();
        let vnet_hdr = st.steering.vnet_hdr;
        let stack = &mut self.stack;
        let out = &mut st.out;
        let mut ingress = |frame: &[u8], wc: &mut WorkerCounters| {
            capture(pcap, wc, frame, vnet_hdr);
            stack.ingress(frame, t, out);
        };
        let wc = &mut st.stats.worker;
        let from_port = port.take(
            io,
            &st.steering,
            &self.inboxes,
            &mut st.backlog,
            wc,
            &mut ingress,
        );
        // Frames other threads handed us.
        let inbox = &self.inboxes[self.index];
        let mut n = 0;
        while n < BATCH {
            let Some(frame) = inbox.pop() else {
                break;
            };
            ingress(frame.bytes(), wc);
            inbox.put_buf(frame.buf);
            n += 1;
        }
        wc.inbox_frames += n as u64;
        (from_port + n as u64, n == BATCH)
    }

    /// Send what the turn made: frames toward the guest (captured first),
    /// socket ops to the executor, frames for other workers to their
    /// inboxes (a full inbox keeps the rest in `backlog`, in order).
    /// Returns whether a sink still holds frames.
    fn send_out(&mut self, io: &mut Io, st: &mut Turn) -> bool {
        let wc = &mut st.stats.worker;
        for f in &st.out.frames {
            capture(self.shared.pcap.as_deref(), wc, f, st.steering.vnet_hdr);
        }
        let sent = self.port_out.send(&mut st.out.frames, io, wc);
        if sent.closed {
            log::info!("worker {}: the guest went away", self.index);
            self.shared.stop.store(true, Ordering::Relaxed);
        }
        for op in st.out.ops.drain(..) {
            io.push(op);
        }
        let workers = self.inboxes.len();
        for (w, buf) in st.out.forward.drain(..) {
            let len = buf.len();
            st.backlog
                .push_back((w.min(workers - 1), Frame { buf, len }));
        }
        while let Some((w, frame)) = st.backlog.pop_front() {
            if let Err(f) = self.inboxes[w].push(frame) {
                wc.ring_full += 1;
                st.backlog.push_front((w, f));
                break;
            }
        }
        sent.waiting
    }

    /// Answer this turn's stats requests with a fresh snapshot.
    fn answer_stats(&mut self, io: &Io, st: &mut Turn) {
        if st.stats_replies.is_empty() {
            return;
        }
        set_io_counters(io, &mut st.stats.worker);
        st.stats.stack = self.stack.counters().clone();
        st.stats.flows = self.stack.flow_count() as u64;
        st.stats.memory = self.stack.memory().stats();
        for reply in st.stats_replies.drain(..) {
            let _ = reply.send(st.stats.clone());
        }
    }

    /// Submit what the turn queued, then: go on at once when `busy`;
    /// otherwise busy-poll for the [`PollWindow`], then sleep in one
    /// `io_uring_enter` until a completion, an inbox wake-up or `timeout`.
    /// `idle` is when the turn's work ended. Returns when the wait ended,
    /// where it read the clock.
    fn wait(
        &self,
        io: &mut Io,
        st: &mut Turn,
        busy: bool,
        timeout: Option<Duration>,
        idle: std::time::Instant,
    ) -> std::io::Result<Option<std::time::Instant>> {
        if busy {
            io.submit_and_wait(0, None)?;
            return Ok(None);
        }
        // Idle: poll a while (submitting first), then sleep.
        let window = st.poll.window().min(timeout.unwrap_or(IDLE_TICK));
        if !window.is_zero() {
            io.submit_and_wait(0, None)?;
            if let Some(at) = self.poll_for_work(io, idle, window) {
                st.stats.worker.poll_hits += 1;
                st.poll.waited(at.saturating_duration_since(idle));
                return Ok(Some(at));
            }
        }
        if self.inbox().prepare_sleep() {
            io.submit_and_wait(1, timeout)?;
            self.inbox().awake();
            st.stats.worker.sleeps += 1;
            let at = std::time::Instant::now();
            st.poll.waited(at.saturating_duration_since(idle));
            Ok(Some(at))
        } else {
            io.submit_and_wait(0, None)?;
            Ok(None)
        }
    }

    /// The loop ended: stop listening, reset every host connection, and
    /// answer stats requests still queued with the final stats.
    fn finish(&mut self, io: &mut Io, mut st: Turn) -> std::io::Result<WorkerStats> {
        // Published ports stop listening at once.
        for id in io.listener_ids() {
            io.remove_listener(id);
        }
        // The guest is gone: reset every host connection.
        self.stack.reset_all(&mut st.out);
        for op in st.out.ops.drain(..) {
            io.push(op);
        }
        io.submit_and_wait(0, None)?;
        io.close_all();
        let mut stats = st.stats;
        set_io_counters(io, &mut stats.worker);
        stats.stack = self.stack.counters().clone();
        stats.memory = self.stack.memory().stats();
        for cmd in self.shared.take() {
            if let Command::Stats(reply) = cmd {
                let _ = reply.send(stats.clone());
            }
        }
        Ok(stats)
    }
}
