//! epoll executor: runs the stack's [`SockOp`]s on non-blocking host
//! sockets and an epoll readiness loop, for hosts where io_uring is refused
//! (container seccomp profiles, `kernel.io_uring_disabled`). Same contract
//! as [`crate::dataplane::uring::Uring`], same [`Completion`]s.
//!
//! This file is a little over 800 lines: the flow table and the try-op
//! state machine (open, issue, retry on edges, close) read as one piece;
//! published ports are in `ports.rs`, the per-flow syscalls in `flow_io.rs`
//! and `sys.rs`.
//!
//! # Theory of operation
//!
//! One [`Epoll`] belongs to one worker thread. Every socket is
//! non-blocking and registered once, **edge-triggered**
//! (`EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET`), with a `Token` naming
//! its flow (slot and generation) or listener as the event's user data:
//! interest never changes per op, so no `epoll_ctl` is paid per op.
//!
//! ```text
//!   stack ──SockOp──▶ push ──▶ flow queues ──▶ [dirty] ─┐
//!                                                       ├─ submit_and_wait: try every dirty flow,
//!   kernel ──readiness edge──▶ epoll_wait ──▶ [events] ─┘   then one epoll_wait;  drain: try the
//!   stack ◀──HostEvent── drain ◀── [ready] ◀── results of the non-blocking syscalls   flows with events
//! ```
//!
//! An op is *tried* (one non-blocking syscall) when it is pushed (at the
//! next [`Epoll::submit_and_wait`], so a batch of datagrams goes out in one
//! `sendmmsg`) and again on every readiness edge of its socket until it
//! completes; its result goes into the FIFO `ready` queue that
//! [`Epoll::drain`] delivers. Edge triggering is safe because nothing is
//! ever left waiting on a readiness that already happened: an op that got
//! `EAGAIN` is retried on the next edge, which the kernel raises for any
//! data or space that arrives after that `EAGAIN`, and a new op is tried
//! at once. A stale or spurious edge only costs a try that finds `EAGAIN`,
//! and edges carrying an old generation are dropped.
//!
//! Per flow, in push order: sends wait in a FIFO (`sends`), a stream
//! receive in `recv`, datagram receiving is a flag. A datagram flow reads
//! with `recvmmsg` (up to [`DGRAM_ROUNDS`] calls of `sys::MMSG_BATCH`
//! datagrams per turn; a flow with more left is tried again before the
//! next wait, so one busy flow cannot starve the others) and writes its
//! queue with `sendmmsg`. A stream send is one `send` of the bytes left;
//! `readv`/`writev` would not pay: the stack keeps at most one `Send` and
//! one `Recv` per TCP flow outstanding, each one buffer, and a TAP takes
//! one frame per `write`.
//!
//! # Semantics the stack relies on (see [`crate::stack::ops`])
//! The same as the io_uring executor's:
//! - `Open`: `socket()`, `setsockopt()` and a non-blocking `connect()` run
//!   at once; a stream connect that is in progress completes on the
//!   socket's first `EPOLLOUT`/`EPOLLERR` edge (`SO_ERROR` says how).
//!   `Send`/`Recv`/`ShutdownWrite` pushed before that wait in the flow and
//!   are issued after a successful connect. If the socket cannot be made
//!   or the connect fails, `Connected{Err}` is delivered and every op of
//!   that flow is answered with the same errno.
//! - A stream `Send` completes only once all its bytes are written (the
//!   rest of a short write waits for `EPOLLOUT`; each restart counts in
//!   [`Epoll::short_sends`]), or with the error that stopped it.
//! - `ShutdownWrite` is a direct `shutdown(SHUT_WR)`, delayed until the
//!   flow's queued sends have completed.
//! - `Close` forgets the flow at once: its queued ops are dropped and its
//!   fd closed (which also removes it from the epoll set); no further
//!   event for it is delivered, including results already in `ready`.
//! - Datagram flows receive continuously after their first `Recv`;
//!   `ECONNREFUSED` is reported and receiving goes on, any other error
//!   ends it.
//! - Ops for a flow that is not open are dropped with a debug log.
//!
//! # Published ports, TAP, wake-ups
//! Listeners are registered edge-triggered too: a TCP one is accepted dry
//! (`accept4`, non-blocking connections, at most [`ACCEPT_BATCH`] per
//! turn), a UDP one read dry with `recvmmsg` (at most [`DGRAM_ROUNDS`]
//! calls per turn); attached UDP flows send with a direct `sendto` on the
//! shared socket. [`Epoll::remove_listener`] shuts the socket down and
//! closes it at once. The TAP fd of [`Epoll::push_poll_in`] and the
//! eventfd of [`Epoll::arm_wake`] are registered on first use and kept;
//! arming is a flag, and an edge that came while disarmed is remembered,
//! so arming after it completes at once (at worst a spurious `Readable`,
//! which the worker's dry read absorbs). The frame port's multishot read
//! does not exist here ([`Epoll::setup_port_ring`] says so): the worker
//! reads the TAP with poll + non-blocking reads. A frame write is one
//! direct `write`.
//!
//! # Limits
//! - A `Recv` reads at most [`MAX_RECV`] bytes.
//! - Timed waits use `epoll_pwait2` (nanoseconds: the stack's sub-ms
//!   timers, delayed ACKs among them, fire on time); where it is missing
//!   (before 5.11) or refused, `epoll_wait`'s milliseconds, rounded up so
//!   that a wait never ends before its deadline.
//! - [`Epoll::work_pending`] costs one `epoll_wait(0)` when nothing is
//!   known to be ready: busy-polling is a syscall per check here.

mod flow_io;
mod ports;
mod sys;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use log::{debug, trace, warn};

use crate::dataplane::io::Completion;
use crate::dataplane::io::{FlowOps, Phase, route};
use crate::dataplane::sock::{new_socket, send_to, setsockopt};
use crate::dataplane::uring::{MAX_RECV, SPARE_MAX, SPARE_MAX_CAPACITY};
use crate::stack::flow::FlowId;
use crate::stack::ops::{Errno, HostEvent, Proto, SockOp};

/// The largest datagram a flow or published port receives.
const DGRAM_MAX: usize = 65535;
/// Most `recvmmsg` calls per datagram socket per turn.
pub const DGRAM_ROUNDS: usize = 4;
/// Most connections accepted per listener per turn.
pub const ACCEPT_BATCH: usize = 64;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// An `EPOLL*` flag as the event mask's `u32` (`EPOLLET` is bit 31).
const fn ev(flags: libc::c_int) -> u32 {
    u32::from_ne_bytes(flags.to_ne_bytes())
}
/// Interest of every socket: both directions, edge-triggered.
const SOCK_EVENTS: u32 = ev(libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET);
/// Interest of listeners, the TAP and the eventfd.
const IN_EVENTS: u32 = ev(libc::EPOLLIN | libc::EPOLLET);
const EV_OUT: u32 = ev(libc::EPOLLOUT);
const EV_ERR_HUP: u32 = ev(libc::EPOLLERR | libc::EPOLLHUP);

/// What an epoll event is about, packed into its user data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// The socket of flow slot `idx`, generation `gen_` (low 24 bits).
    Flow { idx: u32, gen_: u32 },
    /// Published port `id`.
    Listener { id: u32 },
    /// The eventfd of [`Epoll::arm_wake`].
    Wake,
    /// The fd of [`Epoll::push_poll_in`].
    PollIn,
}

impl Token {
    const GEN_MASK: u32 = 0x00ff_ffff;

    /// Tag in the top byte, generation in the next 24 bits, slot in the
    /// low 32. Tag 0 is never used.
    fn pack(self) -> u64 {
        let (tag, gen_, slot): (u64, u32, u32) = match self {
            Token::Flow { idx, gen_ } => (1, gen_ & Self::GEN_MASK, idx),
            Token::Listener { id } => (2, 0, id),
            Token::Wake => (3, 0, 0),
            Token::PollIn => (4, 0, 0),
        };
        (tag << 56) | (u64::from(gen_) << 32) | u64::from(slot)
    }

    fn unpack(v: u64) -> Option<Token> {
        let slot = u32::try_from(v & 0xffff_ffff).ok()?;
        let gen_ = u32::try_from((v >> 32) & u64::from(Self::GEN_MASK)).ok()?;
        Some(match v >> 56 {
            1 => Token::Flow { idx: slot, gen_ },
            2 => Token::Listener { id: slot },
            3 => Token::Wake,
            4 => Token::PollIn,
            _ => return None,
        })
    }
}

/// A live flow: opened by the stack and not yet closed.
struct Flow {
    id: FlowId,
    /// The flow's own socket (`None`: it failed, or the flow sends from a
    /// published UDP port's socket).
    fd: Option<OwnedFd>,
    /// A flow of published UDP port `.0`: sends go to peer `.1`.
    published: Option<(u32, SocketAddr)>,
    phase: Phase,
    /// UDP or ICMP.
    dgram: bool,
    /// Sends not yet completed, in push order.
    sends: VecDeque<Vec<u8>>,
    /// Bytes of `sends[0]` already written (streams).
    sent: usize,
    /// A stream `Recv` waiting for data: its `max`.
    recv: Option<usize>,
    /// A datagram flow receives continuously.
    receiving: bool,
    /// A `ShutdownWrite` that waits for `sends` to empty.
    shutdown_pending: bool,
    /// In `dirty` already.
    dirty: bool,
}

/// A published port's socket.
struct Listener {
    fd: OwnedFd,
    proto: Proto,
}

/// A caller's fd watched for readability (the TAP, the wake eventfd).
#[derive(Default)]
struct Watch {
    fd: Option<RawFd>,
    armed: bool,
    /// An edge came while disarmed.
    seen: bool,
}

/// Executes [`SockOp`]s on non-blocking sockets and epoll; see the
/// [module docs](self).
pub struct Epoll {
    ep: OwnedFd,
    /// Events from the last `epoll_wait`, not yet handled.
    events: Vec<libc::epoll_event>,
    flows: Vec<Option<Flow>>,
    live_flows: usize,
    /// Flows with an op to try at the next submit.
    dirty: Vec<FlowId>,
    /// Listeners with work left after a bounded turn.
    dirty_listeners: Vec<u32>,
    /// Results for the next drain, in the order they happened.
    ready: VecDeque<Completion>,
    spare: Vec<Vec<u8>>,
    /// `recvmmsg` buffers, each of [`DGRAM_MAX`] bytes (made on first use).
    dgram_bufs: Vec<Vec<u8>>,
    peers: Vec<Option<SocketAddr>>,
    listeners: HashMap<u32, Listener>,
    wake: Watch,
    poll_in: Watch,
    /// End of the last timed wait, for [`Completion::Timeout`].
    deadline: Option<Instant>,
    short_sends: u64,
    outbound: (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>),
    /// Timed waits use `epoll_pwait2` (nanoseconds) until it is refused.
    pwait2: bool,
}

impl Epoll {
    /// A new executor (one epoll instance).
    pub fn new() -> io::Result<Epoll> {
        Ok(Epoll {
            ep: sys::epoll_create()?,
            events: Vec::with_capacity(EVENTS),
            flows: Vec::new(),
            live_flows: 0,
            dirty: Vec::new(),
            dirty_listeners: Vec::new(),
            ready: VecDeque::new(),
            spare: Vec::new(),
            dgram_bufs: Vec::new(),
            peers: Vec::new(),
            listeners: HashMap::new(),
            wake: Watch::default(),
            poll_in: Watch::default(),
            deadline: None,
            short_sends: 0,
            outbound: (None, None),
            pwait2: true,
        })
    }

    /// Bind outbound sockets of each family to this source address
    /// (connections to loopback keep the kernel's choice).
    pub fn set_outbound(&mut self, v4: Option<std::net::Ipv4Addr>, v6: Option<std::net::Ipv6Addr>) {
        self.outbound = (v4, v6);
    }

    /// Queue one socket op (takes ownership of its data). Never blocks.
    pub fn push(&mut self, op: SockOp) {
        route(self, op);
    }

    /// Write `frame` to `fd` (a TAP queue) now, with one `write`; the
    /// result comes as [`Completion::FrameWritten`] and the buffer goes to
    /// the spare list.
    pub fn push_frame_write(&mut self, fd: RawFd, frame: Vec<u8>) {
        let result = sys::write(fd, &frame).map_err(io::Error::from_raw_os_error);
        self.recycle(frame);
        self.ready.push_back(Completion::FrameWritten { result });
    }

    /// Report (once) when `fd` is readable, as [`Completion::Readable`].
    /// Arm again after reading it dry. The caller keeps `fd` open while
    /// it is armed; the first call registers it, later calls must pass the
    /// same fd.
    pub fn push_poll_in(&mut self, fd: RawFd) {
        if let Err(e) = self.watch(fd, Token::PollIn) {
            self.ready.push_back(Completion::Readable {
                result: Err(io::Error::from_raw_os_error(e)),
            });
            return;
        }
        if std::mem::take(&mut self.poll_in.seen) {
            self.ready.push_back(Completion::Readable {
                result: Ok(ev(libc::EPOLLIN)),
            });
        } else {
            self.poll_in.armed = true;
        }
    }

    /// There is no provided-buffer ring here: always `Unsupported` (the
    /// worker then reads the TAP with [`Epoll::push_poll_in`] and reads).
    pub fn setup_port_ring(&mut self, _entries: u16, _buf_size: usize) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the epoll executor has no provided-buffer ring",
        ))
    }

    /// A cleared buffer from completed sends and frame writes, for reuse.
    pub fn take_spare_buffer(&mut self) -> Option<Vec<u8>> {
        self.spare.pop()
    }

    /// Report (once) when `eventfd` (non-blocking) was read, as
    /// [`Completion::Wake`]; arm again after each wake. The first call
    /// registers it; later calls must pass the same fd.
    pub fn arm_wake(&mut self, eventfd: RawFd) {
        if let Err(e) = self.watch(eventfd, Token::Wake) {
            warn!("epoll: cannot watch the wake eventfd: errno {e}");
            return;
        }
        self.wake.armed = true;
        if std::mem::take(&mut self.wake.seen) {
            self.try_wake();
        }
    }

    /// Try every op pushed since the last call, then wait until something
    /// is ready or `timeout` passes, in one `epoll_wait` (none when results
    /// are already ready or `min_complete` is 0). `EINTR` returns `Ok`.
    /// Does not wait forever when nothing is pending and no timeout is
    /// given.
    pub fn submit_and_wait(
        &mut self,
        min_complete: usize,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.run_dirty();
        if !self.events.is_empty() {
            // Events taken by work_pending wait for the drain.
            return Ok(());
        }
        let busy = min_complete == 0 || !self.ready.is_empty() || !self.dirty.is_empty();
        let ms = match timeout {
            _ if busy => 0,
            Some(t) => {
                self.deadline = Instant::now().checked_add(t);
                if self.pwait2 {
                    match sys::epoll_pwait2(&self.ep, &mut self.events, t) {
                        Err(e @ (libc::ENOSYS | libc::EPERM)) => {
                            debug!("epoll: no epoll_pwait2 (errno {e}); millisecond waits");
                            self.pwait2 = false;
                        }
                        r => return r.map_err(io::Error::from_raw_os_error),
                    }
                }
                // Rounded up: a wait never ends before its deadline.
                let ms = t.as_nanos().div_ceil(1_000_000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
            None if self.waiting() => -1,
            None => 0,
        };
        sys::epoll_wait(&self.ep, &mut self.events, ms).map_err(io::Error::from_raw_os_error)
    }

    /// Report every completion available now, in one batch.
    pub fn drain(&mut self, out: &mut impl FnMut(Completion)) {
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            let (mask, data) = (ev.events, ev.u64);
            match Token::unpack(data) {
                Some(Token::Flow { idx, gen_ }) => self.on_flow_event(idx, gen_, mask),
                Some(Token::Listener { id }) => self.run_listener(id),
                Some(Token::Wake) => {
                    if self.wake.armed {
                        self.try_wake();
                    } else {
                        self.wake.seen = true;
                    }
                }
                Some(Token::PollIn) => {
                    if std::mem::take(&mut self.poll_in.armed) {
                        self.ready
                            .push_back(Completion::Readable { result: Ok(mask) });
                    } else {
                        self.poll_in.seen = true;
                    }
                }
                None => warn!("epoll: event with unknown user data {data:#x}"),
            }
        }
        self.events = events;
        self.events.clear();
        let mut delivered = 0;
        while let Some(c) = self.ready.pop_front() {
            // A flow closed after its result was queued gets nothing.
            if let Completion::Host(ev) = &c
                && self.flow_mut(ev.flow()).is_none()
            {
                if let Completion::Host(HostEvent::Received {
                    result: Ok(buf), ..
                }) = c
                {
                    self.recycle(buf);
                }
                continue;
            }
            out(c);
            delivered += 1;
        }
        if let Some(deadline) = self.deadline.take()
            && delivered == 0
            && Instant::now() >= deadline
        {
            out(Completion::Timeout);
        }
    }

    /// Whether a wait would return at once: results are ready, ops wait to
    /// be tried, or (one `epoll_wait(0)`, whose events the next drain
    /// handles) a socket, the TAP or the eventfd became ready.
    pub fn work_pending(&mut self) -> bool {
        if !self.ready.is_empty() || !self.events.is_empty() || !self.dirty.is_empty() {
            return true;
        }
        if sys::epoll_wait(&self.ep, &mut self.events, 0).is_err() {
            self.events.clear();
        }
        !self.events.is_empty()
    }

    /// Stream sends the socket took only part of and that were restarted
    /// for the rest.
    pub fn short_sends(&self) -> u64 {
        self.short_sends
    }

    /// Flows opened and not yet closed.
    pub fn open_flows(&self) -> usize {
        self.live_flows
    }

    /// Open host sockets of flows and listeners.
    pub fn open_sockets(&self) -> usize {
        self.flows
            .iter()
            .flatten()
            .filter(|f| f.fd.is_some())
            .count()
            + self.listeners.len()
    }

    /// Abort every flow (`Close { reset: true }` for each).
    pub fn close_all(&mut self) {
        let ids: Vec<FlowId> = self.flows.iter().flatten().map(|f| f.id).collect();
        for id in ids {
            self.close(id, true);
        }
    }

    // ---- flows ----

    fn insert_flow(
        &mut self,
        id: FlowId,
        fd: Option<OwnedFd>,
        published: Option<(u32, SocketAddr)>,
        phase: Phase,
        dgram: bool,
    ) {
        let idx = id.idx as usize;
        if self.flows.len() <= idx {
            self.flows.resize_with(idx + 1, || None);
        }
        if let Some(old) = self.flows[idx].as_ref().map(|f| f.id) {
            warn!("epoll: attach of {id:?} while {old:?} is live without Close; aborting it");
            self.close(old, true);
        }
        self.flows[idx] = Some(Flow {
            id,
            fd,
            published,
            phase,
            dgram,
            sends: VecDeque::new(),
            sent: 0,
            recv: None,
            receiving: false,
            shutdown_pending: false,
            dirty: false,
        });
        self.live_flows += 1;
    }

    /// Add flow `id`'s socket to the epoll set.
    fn register(&mut self, id: FlowId) -> Result<(), Errno> {
        let Some(fd) = self
            .flow_mut(id)
            .and_then(|f| f.fd.as_ref().map(AsRawFd::as_raw_fd))
        else {
            return Ok(());
        };
        let token = Token::Flow {
            idx: id.idx,
            gen_: id.gen_,
        };
        sys::epoll_ctl(&self.ep, libc::EPOLL_CTL_ADD, fd, SOCK_EVENTS, token.pack())
    }

    fn mark_dirty(&mut self, id: FlowId) {
        if let Some(f) = self.flow_mut(id)
            && !std::mem::replace(&mut f.dirty, true)
        {
            self.dirty.push(id);
        }
    }

    /// The stream connect of flow `id` ended.
    fn connect_done(&mut self, id: FlowId, result: Result<(), Errno>) {
        let Some(f) = self.flow_mut(id) else { return };
        let deferred = match std::mem::replace(&mut f.phase, Phase::Connected) {
            Phase::Connecting { deferred } => deferred,
            other => {
                // Registration of a socket connected (or failed) at once.
                if let (Err(e), Phase::Connected) = (result, &other) {
                    f.phase = Phase::Failed(e);
                    f.fd = None;
                    self.ready.push_back(Completion::Host(HostEvent::Connected {
                        flow: id,
                        result: Err(e),
                    }));
                } else {
                    f.phase = other;
                }
                return;
            }
        };
        if let Err(e) = result {
            f.phase = Phase::Failed(e);
            f.fd = None;
        }
        self.ready
            .push_back(Completion::Host(HostEvent::Connected { flow: id, result }));
        for op in deferred {
            match result {
                Ok(()) => self.issue(op),
                Err(e) => self.fail_op(op, e),
            }
        }
    }

    /// A readiness edge on flow slot `idx`'s socket.
    fn on_flow_event(&mut self, idx: u32, gen_: u32, mask: u32) {
        let Some(f) = self.flows.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        if f.id.gen_ & Token::GEN_MASK != gen_ {
            trace!("epoll: stale event for slot {idx}");
            return;
        }
        let id = f.id;
        if matches!(f.phase, Phase::Connecting { .. }) {
            if mask & (EV_OUT | EV_ERR_HUP) == 0 {
                return;
            }
            let err = f.fd.as_ref().map_or(libc::EBADF, sys::so_error);
            let result = match err {
                0 if mask & EV_OUT != 0 => Ok(()),
                0 => Err(libc::ECONNRESET),
                e => Err(e),
            };
            self.connect_done(id, result);
        }
        self.run_flow(id);
    }

    /// Try flow `id`'s queued ops until they are done or would block.
    fn run_flow(&mut self, id: FlowId) {
        let Some(f) = self.flow_mut(id) else { return };
        if !matches!(f.phase, Phase::Connected) {
            return;
        }
        let Some(fd) = f.fd.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        if f.dgram {
            self.send_datagrams(id, fd);
            self.recv_datagrams(id, fd);
        } else {
            self.send_stream(id, fd);
            self.recv_stream(id, fd);
        }
    }

    /// Try every dirty flow and listener once.
    fn run_dirty(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            if let Some(f) = self.flow_mut(id) {
                f.dirty = false;
                self.run_flow(id);
            }
        }
        for id in std::mem::take(&mut self.dirty_listeners) {
            self.run_listener(id);
        }
    }

    fn ensure_dgram_bufs(&mut self) {
        if self.dgram_bufs.is_empty() {
            self.dgram_bufs = (0..sys::MMSG_BATCH)
                .map(|_| Vec::with_capacity(DGRAM_MAX))
                .collect();
        }
    }

    /// A datagram copied into a buffer of its own size.
    fn copy_out(&mut self, b: &[u8]) -> Vec<u8> {
        let mut data = self.spare.pop().unwrap_or_default();
        data.clear();
        data.extend_from_slice(b);
        data
    }

    // ---- watched caller fds ----

    /// Register `fd` for `token` (TAP or eventfd) on first use.
    fn watch(&mut self, fd: RawFd, token: Token) -> Result<(), Errno> {
        let w = if token == Token::Wake {
            &mut self.wake
        } else {
            &mut self.poll_in
        };
        if w.fd == Some(fd) {
            return Ok(());
        }
        let op = if w.fd.is_some() {
            libc::EPOLL_CTL_MOD
        } else {
            libc::EPOLL_CTL_ADD
        };
        let r = match sys::epoll_ctl(&self.ep, op, fd, IN_EVENTS, token.pack()) {
            Err(libc::EEXIST) => {
                sys::epoll_ctl(&self.ep, libc::EPOLL_CTL_MOD, fd, IN_EVENTS, token.pack())
            }
            r => r,
        };
        if r.is_ok() {
            w.fd = Some(fd);
        }
        r
    }

    /// Read the armed eventfd; a Wake when it had a count.
    fn try_wake(&mut self) {
        let Some(fd) = self.wake.fd else { return };
        match sys::read_eventfd(fd) {
            Ok(()) => {
                self.wake.armed = false;
                self.ready.push_back(Completion::Wake);
            }
            Err(libc::EAGAIN) => {}
            Err(e) => {
                warn!("epoll: eventfd read failed: errno {e}");
                self.wake.armed = false;
                self.ready.push_back(Completion::Wake);
            }
        }
    }

    // ---- slabs ----

    /// Something will end a wait: a flow waits for the kernel, or a watch
    /// is armed, or a port is served.
    fn waiting(&self) -> bool {
        self.live_flows > 0 || self.wake.armed || self.poll_in.armed || !self.listeners.is_empty()
    }

    fn flow_mut(&mut self, id: FlowId) -> Option<&mut Flow> {
        self.flows
            .get_mut(id.idx as usize)?
            .as_mut()
            .filter(|f| f.id.gen_ == id.gen_)
    }

    fn take_flow(&mut self, id: FlowId) -> Option<Flow> {
        let slot = self.flows.get_mut(id.idx as usize)?;
        if slot.as_ref()?.id.gen_ != id.gen_ {
            return None;
        }
        self.live_flows -= 1;
        slot.take()
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_MAX && buf.capacity() <= SPARE_MAX_CAPACITY {
            buf.clear();
            self.spare.push(buf);
        }
    }
}

impl Drop for Epoll {
    /// Abort every flow: peers see a reset. Nothing is in the kernel's
    /// hands, so everything is freed at once.
    fn drop(&mut self) {
        self.close_all();
    }
}

/// `shutdown(SHUT_WR)` of a flow's own socket.
fn shutdown_write(f: &Flow) {
    if let Some(fd) = &f.fd
        && let Err(e) = sys::shutdown(fd.as_raw_fd(), libc::SHUT_WR)
    {
        debug!("epoll: shutdown(SHUT_WR) of {:?} failed: errno {e}", f.id);
    }
}

impl FlowOps for Epoll {
    const NAME: &'static str = "epoll";

    fn phase_mut(&mut self, id: FlowId) -> Option<&mut Phase> {
        self.flow_mut(id).map(|f| &mut f.phase)
    }

    fn open(&mut self, id: FlowId, proto: Proto, dst: SocketAddr) {
        if let Some(old) = self
            .flows
            .get(id.idx as usize)
            .and_then(|f| f.as_ref().map(|f| f.id))
        {
            if old.gen_ == id.gen_ {
                warn!("epoll: second Open for {id:?}; ignored");
                return;
            }
            warn!("epoll: Open for {id:?} while {old:?} is live without Close; aborting it");
            self.close(old, true);
        }
        let src = match dst {
            _ if dst.ip().is_loopback() => None,
            SocketAddr::V4(_) => self.outbound.0.map(std::net::IpAddr::V4),
            SocketAddr::V6(_) => self.outbound.1.map(std::net::IpAddr::V6),
        };
        let dgram = proto != Proto::Tcp;
        let (fd, phase) = match new_socket(proto, &dst, src, true) {
            Ok(fd) => match sys::connect(&fd, &dst) {
                Ok(()) => (Some(fd), Phase::Connected),
                Err(libc::EINPROGRESS) if !dgram => (
                    Some(fd),
                    Phase::Connecting {
                        deferred: Vec::new(),
                    },
                ),
                Err(e) => (None, Phase::Failed(e)),
            },
            Err(e) => (None, Phase::Failed(e)),
        };
        match phase {
            Phase::Connected => self.ready.push_back(Completion::Host(HostEvent::Connected {
                flow: id,
                result: Ok(()),
            })),
            Phase::Failed(e) => {
                debug!(
                    "epoll: socket or connect for {id:?} ({proto:?} to {dst}) failed: errno {e}"
                );
                self.ready.push_back(Completion::Host(HostEvent::Connected {
                    flow: id,
                    result: Err(e),
                }));
            }
            Phase::Connecting { .. } => {}
        }
        let has_fd = fd.is_some();
        self.insert_flow(id, fd, None, phase, dgram);
        // Registered after connect(): an unconnected socket polls as hung
        // up, a connecting one as nothing until the handshake ends.
        if has_fd && let Err(e) = self.register(id) {
            self.connect_done(id, Err(e));
        }
    }

    /// Issue a Send, Recv or ShutdownWrite on a connected flow.
    fn issue(&mut self, op: SockOp) {
        let id = op.flow();
        let listener_fd = self
            .flow_mut(id)
            .and_then(|f| f.published)
            .map(|(l, peer)| (self.listeners.get(&l).map(|l| l.fd.as_raw_fd()), peer));
        let Some(f) = self.flow_mut(id) else {
            return;
        };
        match op {
            SockOp::Send { data, .. } => {
                if let Some((fd, peer)) = listener_fd {
                    // A published UDP port's flow: one non-blocking sendto
                    // on the shared socket.
                    let result = fd.map_or(Err(libc::EBADF), |fd| send_to(fd, &data, &peer));
                    self.recycle(data);
                    self.ready
                        .push_back(Completion::Host(HostEvent::Sent { flow: id, result }));
                    return;
                }
                f.sends.push_back(data);
            }
            SockOp::Recv { max, .. } => {
                if f.dgram {
                    f.receiving = true;
                } else {
                    f.recv = Some(max.min(MAX_RECV));
                }
            }
            SockOp::ShutdownWrite { .. } => {
                if f.sends.is_empty() {
                    shutdown_write(f);
                } else {
                    f.shutdown_pending = true;
                }
                return;
            }
            SockOp::Open { .. } | SockOp::Close { .. } => {
                unreachable!("Open and Close are handled by push")
            }
        }
        self.mark_dirty(id);
    }

    /// Answer `op` on a failed flow with `errno`, without the kernel.
    fn fail_op(&mut self, op: SockOp, errno: Errno) {
        let flow = op.flow();
        let ev = match op {
            SockOp::Send { data, .. } => {
                self.recycle(data);
                HostEvent::Sent {
                    flow,
                    result: Err(errno),
                }
            }
            SockOp::Recv { .. } => HostEvent::Received {
                flow,
                result: Err(errno),
            },
            SockOp::ShutdownWrite { .. } | SockOp::Open { .. } | SockOp::Close { .. } => return,
        };
        self.ready.push_back(Completion::Host(ev));
    }

    fn close(&mut self, id: FlowId, reset: bool) {
        let Some(flow) = self.take_flow(id) else {
            debug!("epoll: Close for {id:?}, which is not open; ignored");
            return;
        };
        for buf in flow.sends {
            self.recycle(buf);
        }
        if let Phase::Connecting { deferred } = flow.phase {
            for op in deferred {
                if let SockOp::Send { data, .. } = op {
                    self.recycle(data);
                }
            }
        }
        if let Some(fd) = flow.fd
            && reset
        {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            if let Err(e) = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger) {
                debug!("epoll: SO_LINGER 0 on {id:?} failed: errno {e}");
            }
            // Dropping `fd` closes it, which leaves the epoll set.
        }
    }
}
