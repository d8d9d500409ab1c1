//! io_uring executor: runs the stack's [`SockOp`](crate::stack::SockOp)s on host sockets and turns
//! completions into [`HostEvent`]s.
//!
//! # Theory of operation
//!
//! One [`Uring`] belongs to one worker thread. The worker loops:
//!
//! ```text
//!   stack ──SockOp──▶ push ──▶ [SQ ring] ─┐            ┌─▶ kernel
//!                          └▶ [backlog] ──┴─ submit ───┘      │
//!   stack ◀─HostEvent── drain ◀── [ready] ◀── [CQ ring] ◀─────┘
//! ```
//!
//! [`Uring::push`] never blocks: when the SQ ring is full, entries wait in a
//! FIFO backlog that [`Uring::submit_and_wait`] flushes before its single
//! `io_uring_enter`. Once the backlog is non-empty every new entry goes behind
//! it, so SQEs reach the kernel in push order (an `AsyncCancel` is never
//! submitted before the op it cancels).
//!
//! State lives in three slabs:
//! - `flows`, indexed by [`FlowId::idx`] and checked against
//!   [`FlowId::gen_`]: the flows the stack has opened and not closed. Only a
//!   live flow with a matching generation ever gets an event.
//! - `socks`: open sockets. A socket outlives its flow while an op that
//!   references its fd is in flight; the fd is closed when its last CQE
//!   arrives, so a reused fd number can never receive a stale op.
//! - `ops`: one entry per SQE that owns something (sockaddr, data buffer,
//!   eventfd word, timespec). The entry is freed only when the op's CQE
//!   arrives: memory the kernel may still read or write is never freed or
//!   reused (tokio-uring's `Lifecycle::Ignored`). Resources are heap
//!   allocations (`Vec`, `Box`) so that the slab may grow and move its entries
//!   without moving what the kernel points at.
//!
//! `user_data` is a `Token` packed into a `u64`: an 8-bit kind tag and the
//! 32-bit `ops` slot (`token`). Each slot is used by exactly one SQE until
//! that SQE's last CQE, so the slot alone identifies the op. Two ops are
//! multishot and complete many times on one slot: the frame port's read
//! into provided buffers (`PortRead`, `frames`) and a datagram flow's
//! receive (`RecvMulti`, `executor`); their slot is freed only at the CQE
//! without `IORING_CQE_F_MORE`. Every other op is one-shot (a published
//! port's accept is re-armed per CQE rather than multishot).
//!
//! # Files
//! - `mod.rs`: the ring (restricted at creation), op slots (`start`,
//!   `free_op`), the SQ backlog, `submit_and_wait`, `drain` and the CQE
//!   dispatch, the wake and timeout sources, the spare-buffer list, `Drop`;
//! - `token`: `OpKind` and `Token`, one tag table;
//! - `executor`: the stack's socket ops (open, issue, connect, send,
//!   receive, close) and the flow and socket tables;
//! - `listeners`: published ports (accept, datagram polls, attach);
//! - `frames`: the TAP's frame writes and port reads;
//! - `gso`: a UDP flow's consecutive datagrams in one segmented `sendmsg`.
//!
//! # Semantics the stack relies on (see [`crate::stack::ops`])
//! - `Open`: `socket()` and `setsockopt()` run synchronously; the connect is an
//!   io_uring op. `Send`/`Recv`/`ShutdownWrite` pushed while the connect is in
//!   flight wait in the flow and are issued after a successful connect (a UDP
//!   flow may send its first datagram right behind its `Open`). If the socket
//!   cannot be created or the connect fails, `Connected{Err}` is delivered and
//!   every op of that flow is answered with the same errno.
//! - `ShutdownWrite` is a direct `shutdown(SHUT_WR)`, delayed until the sends
//!   in flight on the flow have completed (even partially: a stack that wants
//!   every byte out before FIN waits for `Sent` before asking for it).
//! - `Close` forgets the flow at once: no further event for it is delivered.
//!   Ops still in the backlog are dropped, ops in the kernel get an
//!   `AsyncCancel`, and the fd is closed when no op references it.
//! - Ops for a flow that is not open (never opened, already closed, or an old
//!   generation) are dropped with a debug log.
//!
//! # Published ports
//! [`Uring::add_listener`] takes a bound socket: a TCP listener gets one
//! one-shot `Accept` SQE at a time (re-armed on each CQE, so the
//! one-CQE-per-slot rule holds), a UDP socket a one-shot poll after which
//! it is read dry (at most `DGRAM_BATCH` datagrams per wake-up) with
//! non-blocking `recvfrom`. Accepted connections become flows through
//! [`Uring::attach_tcp`] (connected at once: no `Connected` event); UDP
//! clients through [`Uring::attach_udp`], whose `Send`s are a direct
//! non-blocking `sendto` on the shared socket (the `Sent` event comes from
//! the ready queue) and whose `Close` leaves that socket alone.
//! [`Uring::remove_listener`] shuts the socket down, so a TCP port refuses
//! new clients at once, and closes it when its op's CQE arrives.
//!
//! # Limits
//! - A `Recv` reads at most [`MAX_RECV`] bytes, a `Send` writes at most
//!   `u32::MAX` bytes per op (a partial send, allowed for TCP).
//! - The spare-buffer free list keeps at most [`SPARE_MAX_BYTES`] bytes (a
//!   fixed overhead outside the stack's memory budget), and at most [`SPARE_MAX`] buffers of at most
//!   [`SPARE_MAX_CAPACITY`] bytes each.
//! - Sockets are blocking: io_uring tries each op without blocking first and
//!   otherwise arms a poll, so no io-wq thread blocks on them.
//! - Kernels without `IORING_FEAT_EXT_ARG` (before 5.11) get the wait
//!   timeout as a timeout SQE; at most one is pending (the previous one is
//!   removed) and it counts in [`Uring::in_flight`] until its CQE.
//! - The eventfd given to [`Uring::arm_wake`] and the TAP fd given to
//!   [`Uring::push_frame_write`] belong to the caller, who keeps them open
//!   until the matching completion arrives.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};
use log::{debug, trace, warn};

use crate::dataplane::bufring::BufRing;
pub use crate::dataplane::io::Completion;
use crate::stack::flow::FlowId;
use crate::stack::mem::chunks;
use crate::stack::ops::{HostEvent, Proto};
use crate::sys::sockaddr::SockAddr;

mod executor;
mod frames;
mod gso;
mod listeners;
#[cfg(test)]
mod tests;
mod token;

use executor::{Flow, Sock};
use token::{OpKind, Token};

pub use crate::dataplane::sock::{UDP_RCVBUF, abort_socket, size_udp_rcvbuf};

/// Most bytes one `Recv` reads; a larger `max` is clamped (the event then
/// carries at most this many bytes, which the contract allows).
pub const MAX_RECV: usize = 16 << 20;
/// Buffer group id of the frame port's provided buffers.
const PORT_BGID: u16 = 1;
/// Buffer group id of the datagram flows' provided buffers.
const RECV_BGID: u16 = 2;
/// Datagram receive buffers: each holds the largest UDP datagram.
const RECV_RING_ENTRIES: u16 = 64;
/// The largest datagram a flow receives.
const DGRAM_MAX: usize = 65535;
/// Most buffers kept on the spare list.
pub const SPARE_MAX: usize = 256;
/// Most bytes (capacities) kept on the spare list in all.
pub const SPARE_MAX_BYTES: usize = 8 << 20;
/// Largest buffer capacity kept on the spare list.
pub const SPARE_MAX_CAPACITY: usize = 1 << 20;
/// How long dropping a [`Uring`] waits for cancelled ops before leaking
/// their buffers instead of freeing memory the kernel may still write.
const DROP_DRAIN: Duration = Duration::from_secs(2);

/// The only operations a ring of ours accepts (`IORING_REGISTER_RESTRICTIONS`):
/// io_uring ops do not pass through seccomp, so the ring itself refuses
/// everything else (opening or removing files, spawning, ...) with EACCES.
pub const ALLOWED_OPS: &[u8] = &[
    opcode::Accept::CODE,
    opcode::AsyncCancel::CODE,
    opcode::Connect::CODE,
    opcode::PollAdd::CODE,
    opcode::Read::CODE,
    opcode::ReadMulti::CODE,
    opcode::Recv::CODE,
    opcode::RecvMulti::CODE,
    opcode::Send::CODE,
    opcode::SendMsg::CODE,
    opcode::Timeout::CODE,
    opcode::TimeoutRemove::CODE,
    opcode::Write::CODE,
];

/// `io_uring_register` operations a ring of ours may make once enabled:
/// the provided-buffer rings (`bufring`).
const ALLOWED_REGISTER_OPS: &[u8] = &[
    22, // IORING_REGISTER_PBUF_RING
    23, // IORING_UNREGISTER_PBUF_RING
];

/// A ring created disabled, given its restrictions, then enabled.
fn restricted_ring(entries: u32, cq: u32) -> io::Result<IoUring> {
    use io_uring::register::Restriction;
    let ring = IoUring::builder()
        .setup_cqsize(cq)
        .setup_submit_all()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_r_disabled()
        .build(entries)?;
    let mut res: Vec<Restriction> = ALLOWED_OPS
        .iter()
        .map(|&op| Restriction::sqe_op(op))
        .chain(
            ALLOWED_REGISTER_OPS
                .iter()
                .map(|&op| Restriction::register_op(op)),
        )
        // Flags change how an allowed op runs, not what it may do.
        .chain(std::iter::once(Restriction::sqe_flags_allowed(0xff)))
        .collect();
    ring.submitter().register_restrictions(&mut res)?;
    ring.submitter().register_enable_rings()?;
    Ok(ring)
}

/// What an op owns until its CQE. Every variant is a heap allocation whose
/// address does not change when the `Op` moves.
enum OpRes {
    /// The op owns no memory (a poll).
    None,
    Addr(Box<SockAddr>),
    Buf(Vec<u8>),
    /// A stream `Send`'s bytes and how many the socket took so far.
    Sending {
        buf: Vec<u8>,
        done: usize,
    },
    Word(Box<[u8; 8]>),
    Time(Box<types::Timespec>),
    /// A segmented UDP send's message and bytes.
    Segments(Box<gso::SegmentedSend>),
}

/// An SQE in flight (or in the backlog).
struct Op {
    kind: OpKind,
    /// The flow the op serves (socket ops only).
    flow: Option<FlowId>,
    /// The `socks` slot whose fd the op uses (socket ops only).
    sock: Option<u32>,
    /// The published-port listener the op serves (accept, datagram poll).
    listener: Option<u32>,
    res: OpRes,
}

impl Op {
    /// An op of the worker's own: no flow, socket or listener.
    fn own(kind: OpKind, res: OpRes) -> Op {
        Op {
            kind,
            flow: None,
            sock: None,
            listener: None,
            res,
        }
    }

    /// A socket op of flow `id` on socket `s`.
    fn of_flow(kind: OpKind, id: FlowId, s: u32, res: OpRes) -> Op {
        Op {
            kind,
            flow: Some(id),
            sock: Some(s),
            listener: None,
            res,
        }
    }
}

/// Executes [`SockOp`](crate::stack::SockOp)s on one io_uring; see the [module docs](self).
pub struct Uring {
    ring: IoUring,
    /// `IORING_FEAT_EXT_ARG`: the wait timeout goes into `io_uring_enter`.
    ext_arg: bool,
    /// SQEs that did not fit in the SQ ring, in push order.
    backlog: VecDeque<squeue::Entry>,
    flows: Vec<Option<Flow>>,
    live_flows: usize,
    socks: Vec<Option<Sock>>,
    free_socks: Vec<u32>,
    ops: Vec<Option<Op>>,
    free_ops: Vec<u32>,
    in_flight: usize,
    /// Events decided without the kernel (failed `socket()`, ops on a failed
    /// flow), delivered by the next drain.
    ready: VecDeque<HostEvent>,
    spare: Vec<Vec<u8>>,
    /// Sum of the capacities on `spare`.
    spare_bytes: usize,
    /// Reused CQE snapshot: user data, result, flags.
    cqes: Vec<(u64, i32, u32)>,
    /// Provided buffers of the frame port's multishot read.
    port_ring: Option<BufRing>,
    /// Provided buffers shared by the datagram flows' multishot receives
    /// (made at the first one; `Err` once it failed: one-shot receives).
    recv_ring: Option<Result<BufRing, ()>>,
    /// End of the last timed wait, for [`Completion::Timeout`].
    deadline: Option<Instant>,
    /// The `ops` slot of the fallback timeout SQE in flight, if any.
    fallback_timeout: Option<u32>,
    /// Published-port sockets by listener id: (`socks` slot, protocol).
    listeners: std::collections::HashMap<u32, (u32, Proto)>,
    /// Stream sends the socket took only part of, restarted for the rest.
    short_sends: u64,
    /// UDP datagrams waiting to go out in one segmented send.
    batch: Option<gso::Batch>,
    /// Segmented sends issued, the datagrams they carried, and those that
    /// failed and were sent datagram by datagram instead.
    segmented_sends: u64,
    segmented_datagrams: u64,
    segment_fallbacks: u64,
    /// `MSG_WAITALL` on stream sends (off in a test of the restart path,
    /// which is what a kernel before 5.18 needs).
    send_waitall: bool,
    /// Source addresses to bind outbound sockets to (IPv4, IPv6), except
    /// those to loopback (slirp4netns's `--outbound-addr`).
    outbound: (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>),
}

impl Uring {
    /// A ring with `entries` SQ entries (and a CQ four times as large),
    /// restricted to [`ALLOWED_OPS`] where the kernel can (5.10 and later).
    pub fn new(entries: u32) -> io::Result<Uring> {
        let cq = entries.saturating_mul(4);
        let ring = restricted_ring(entries, cq).or_else(|e| {
            debug!("uring: restricted setup failed ({e}); trying a plain ring");
            IoUring::builder()
                .setup_cqsize(cq)
                .setup_submit_all()
                .build(entries)
                .or_else(|_| IoUring::new(entries))
        })?;
        let ext_arg = ring.params().is_feature_ext_arg();
        Ok(Uring {
            ring,
            ext_arg,
            backlog: VecDeque::new(),
            flows: Vec::new(),
            live_flows: 0,
            socks: Vec::new(),
            free_socks: Vec::new(),
            ops: Vec::new(),
            free_ops: Vec::new(),
            in_flight: 0,
            ready: VecDeque::new(),
            spare: Vec::new(),
            spare_bytes: 0,
            cqes: Vec::new(),
            port_ring: None,
            recv_ring: None,
            deadline: None,
            fallback_timeout: None,
            short_sends: 0,
            batch: None,
            segmented_sends: 0,
            segmented_datagrams: 0,
            segment_fallbacks: 0,
            send_waitall: true,
            outbound: (None, None),
            listeners: std::collections::HashMap::new(),
        })
    }

    /// A cleared buffer from completed sends and frame writes, for reuse.
    pub fn take_spare_buffer(&mut self) -> Option<Vec<u8>> {
        let b = self.spare.pop()?;
        self.spare_bytes -= b.capacity();
        Some(b)
    }

    /// Read 8 bytes from `eventfd`; its completion is [`Completion::Wake`].
    /// One read per call: arm again after each wake. The caller keeps
    /// `eventfd` open until the wake arrives.
    pub fn arm_wake(&mut self, eventfd: RawFd) {
        let op = Op::own(OpKind::Wake, OpRes::Word(Box::new([0; 8])));
        self.start(op, |res| {
            let OpRes::Word(word) = res else {
                unreachable!("wake owns a word")
            };
            opcode::Read::new(types::Fd(eventfd), word.as_mut_ptr(), 8)
                .offset(u64::MAX)
                .build()
        });
    }

    /// Submit everything pushed and wait until `min_complete` completions
    /// are ready or `timeout` passes, in one `io_uring_enter` (none when
    /// there is nothing to submit, to finish or to wait for; more only when
    /// the backlog is larger than the SQ ring). `EINTR`, `ETIME`, `EBUSY` and
    /// `EAGAIN` return `Ok`: the caller drains and loops. Does not wait when
    /// events are already ready, nor forever when nothing is in flight and
    /// no timeout is given.
    pub fn submit_and_wait(
        &mut self,
        min_complete: usize,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.flush_batch();
        if let Some(r) = self.port_ring.as_mut() {
            r.publish();
        }
        if let Some(Ok(r)) = self.recv_ring.as_mut() {
            r.publish();
        }
        let backlog_flushed = self.flush_backlog()?;
        let mut want = min_complete;
        if !self.ready.is_empty() || !backlog_flushed {
            want = 0;
        }
        if timeout.is_none() && self.in_flight == 0 {
            want = 0;
        }
        let idle = {
            let sq = self.ring.submission();
            sq.is_empty() && !sq.taskrun() && !sq.cq_overflow()
        };
        if want == 0 && idle {
            // Nothing to submit, to finish or to flush into the CQ ring,
            // and no wait: no system call (a busy turn, or the submit
            // before a busy-poll, after a turn that queued nothing).
            return Ok(());
        }
        let res = match timeout {
            Some(t) if want > 0 => {
                self.deadline = Instant::now().checked_add(t);
                if self.ext_arg {
                    let ts = types::Timespec::from(t);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(want, &args)
                } else {
                    self.push_timeout(t);
                    self.flush_backlog()?;
                    self.ring.submit_and_wait(want)
                }
            }
            _ => self.ring.submit_and_wait(want),
        };
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::ETIME | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                trace!("uring: enter returned {e}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Report every completion available now, in one batch.
    pub fn drain(&mut self, out: &mut impl FnMut(Completion)) {
        if self.ring.submission().taskrun() {
            // The kernel has completions to finish in this thread (a
            // socket or the TAP became ready): an enter runs that task
            // work and posts their CQEs, so this batch takes them.
            if let Err(e) = self.ring.submit_and_wait(0) {
                trace!("uring: enter for task work returned {e}");
            }
        }
        let mut delivered = self.deliver_ready(out);
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(user_data, result, flags) in &cqes {
            delivered += self.complete(user_data, result, flags, out);
        }
        cqes.clear();
        self.cqes = cqes;
        delivered += self.deliver_ready(out);
        if let Some(deadline) = self.deadline.take()
            && delivered == 0
            && Instant::now() >= deadline
        {
            out(Completion::Timeout);
        }
    }

    /// Whether a wait would return at once: completions are ready, or the
    /// kernel has task work for this thread (a socket or the TAP became
    /// ready; `IORING_SQ_TASKRUN`, which the next `io_uring_enter` runs).
    /// Reads shared ring memory only, no system call: what a busy-polling
    /// worker checks between its spins.
    pub fn work_pending(&mut self) -> bool {
        !self.ready.is_empty() || !self.ring.completion().is_empty() || {
            // Without IORING_SETUP_TASKRUN_FLAG (the plain-ring fallback)
            // this bit is never set, and task work waits for the window's
            // end: slower, never lost.
            self.ring.submission().taskrun()
        }
    }

    /// Stream sends the socket took only part of and that were restarted
    /// for the rest (with `MSG_WAITALL` the kernel does that itself).
    pub fn short_sends(&self) -> u64 {
        self.short_sends
    }

    /// Segmented UDP sends so far: `(sends, datagrams they carried,
    /// sends that failed and went datagram by datagram)`.
    pub fn segmented(&self) -> (u64, u64, u64) {
        (
            self.segmented_sends,
            self.segmented_datagrams,
            self.segment_fallbacks,
        )
    }

    /// Flows opened and not yet closed.
    pub fn open_flows(&self) -> usize {
        self.live_flows
    }

    /// Open host sockets, including those of closed flows whose cancelled
    /// ops have not completed yet.
    pub fn open_sockets(&self) -> usize {
        self.socks.len() - self.free_socks.len()
    }

    /// Ops pushed whose completion has not been processed yet (socket ops,
    /// frame writes, wake reads), backlog included.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The fallback wait timeout for kernels without `IORING_FEAT_EXT_ARG`.
    /// The previous one, if still pending, is removed first so that timed
    /// waits do not pile up timeouts in the kernel.
    fn push_timeout(&mut self, t: Duration) {
        self.remove_fallback_timeout();
        let op = Op::own(
            OpKind::Timeout,
            OpRes::Time(Box::new(types::Timespec::from(t))),
        );
        let slot = self.start(op, |res| {
            let OpRes::Time(ts) = res else {
                unreachable!("timeout owns a timespec")
            };
            opcode::Timeout::new(&raw const **ts).build()
        });
        self.fallback_timeout = Some(slot);
    }

    /// Ask the kernel to drop the pending fallback timeout, if any; its
    /// CQE (`ECANCELED`) still comes and frees its slot.
    fn remove_fallback_timeout(&mut self) {
        if let Some(slot) = self.fallback_timeout.take() {
            let old = Token::Op {
                kind: OpKind::Timeout,
                slot,
            };
            let remove = opcode::TimeoutRemove::new(old.pack())
                .build()
                .user_data(Token::Cancel.pack());
            self.enqueue(remove);
        }
    }

    // ---- completions ----

    fn deliver_ready(&mut self, out: &mut impl FnMut(Completion)) -> usize {
        let mut n = 0;
        while let Some(ev) = self.ready.pop_front() {
            // A flow closed after the event was queued gets nothing.
            if self.flow_mut(ev.flow()).is_some() {
                out(Completion::Host(ev));
                n += 1;
            }
        }
        n
    }

    /// Handle one CQE; returns how many completions it reported.
    fn complete(
        &mut self,
        user_data: u64,
        result: i32,
        flags: u32,
        out: &mut impl FnMut(Completion),
    ) -> usize {
        let Some(token) = Token::unpack(user_data) else {
            warn!("uring: CQE with unknown user_data {user_data:#x}");
            return 0;
        };
        let (kind, slot) = match token {
            Token::Cancel => {
                trace!("uring: cancel result {result}");
                return 0;
            }
            Token::Op { kind, slot } => (kind, slot),
        };
        if kind == OpKind::PortRead {
            return self.on_port_read(slot, result, flags, out);
        }
        if kind == OpKind::RecvMulti {
            return self.on_recv_multi(slot, result, flags, out);
        }
        let Some(op) = self.free_op(slot) else {
            warn!("uring: CQE for empty op slot {slot}");
            return 0;
        };
        debug_assert_eq!(op.kind, kind, "token kind matches the op slot");
        if let Some(s) = op.sock {
            self.sock_op_done(s, slot);
        }
        let res = if result < 0 { Err(-result) } else { Ok(result) };
        match op.kind {
            OpKind::Connect => self.on_connect(op.flow, res, out),
            OpKind::Send => self.on_send_cqe(op, res, out),
            OpKind::SendSegments => self.on_segments_cqe(op, res, out),
            OpKind::Recv => {
                let OpRes::Buf(buf) = op.res else {
                    unreachable!("recv owns a buffer")
                };
                self.on_recv(op.flow, res, buf, out)
            }
            OpKind::FrameWrite => {
                self.reclaim(op.res);
                let result = match res {
                    // Cannot fail: a non-negative i32 fits usize.
                    Ok(n) => Ok(usize::try_from(n).unwrap_or(0)),
                    Err(e) => Err(io::Error::from_raw_os_error(e)),
                };
                out(Completion::FrameWritten { result });
                1
            }
            OpKind::PollIn => {
                let result = match res {
                    Ok(m) => Ok(u32::try_from(m).unwrap_or(0)),
                    Err(e) => Err(io::Error::from_raw_os_error(e)),
                };
                out(Completion::Readable { result });
                1
            }
            OpKind::Wake => {
                if let Err(e) = res {
                    warn!("uring: eventfd read failed: errno {e}");
                }
                out(Completion::Wake);
                1
            }
            OpKind::Timeout => 0,
            OpKind::PortRead => unreachable!("handled by on_port_read"),
            OpKind::RecvMulti => unreachable!("handled by on_recv_multi"),
            OpKind::Accept => self.on_accept(op.listener, res, out),
            OpKind::DgramPoll => self.on_dgram_ready(op.listener, res, out),
        }
    }

    /// Put `op` in the slab, build its SQE from its resources in place, and
    /// queue it. Returns its `ops` slot.
    fn start(&mut self, op: Op, build: impl FnOnce(&mut OpRes) -> squeue::Entry) -> u32 {
        let kind = op.kind;
        let sock = op.sock;
        let slot = match self.free_ops.pop() {
            Some(slot) => {
                self.ops[slot as usize] = Some(op);
                slot
            }
            None => {
                self.ops.push(Some(op));
                // Cannot fail: in-flight ops are bounded by memory long
                // before 2^32.
                u32::try_from(self.ops.len() - 1).expect("op slots fit u32")
            }
        };
        // Cannot fail: the slot was filled just above.
        let entry = build(
            &mut self.ops[slot as usize]
                .as_mut()
                .expect("op slot is filled")
                .res,
        );
        if let Some(s) = sock
            && let Some(sock) = self.socks[s as usize].as_mut()
        {
            sock.ops.push(slot);
        }
        self.in_flight += 1;
        self.enqueue(entry.user_data(Token::Op { kind, slot }.pack()));
        slot
    }

    fn free_op(&mut self, slot: u32) -> Option<Op> {
        let op = self.ops.get_mut(slot as usize)?.take()?;
        self.free_ops.push(slot);
        if self.fallback_timeout == Some(slot) {
            self.fallback_timeout = None;
        }
        self.in_flight -= 1;
        Some(op)
    }

    /// Give an op's resources back (its CQE arrived or it never left the
    /// backlog).
    fn reclaim(&mut self, res: OpRes) {
        match res {
            OpRes::Buf(buf) | OpRes::Sending { buf, .. } => self.recycle(buf),
            OpRes::Segments(m) => self.recycle(m.buf),
            _ => {}
        }
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        // A whole TCP chunk goes back to the stack's allocations first.
        let Some(mut buf) = chunks::give(buf) else {
            return;
        };
        if self.spare.len() < SPARE_MAX
            && buf.capacity() <= SPARE_MAX_CAPACITY
            && self.spare_bytes + buf.capacity() <= SPARE_MAX_BYTES
        {
            buf.clear();
            self.spare_bytes += buf.capacity();
            self.spare.push(buf);
        }
    }

    /// A buffer for a read of `max` bytes. A spare one is used only when
    /// its capacity is within a quarter above `max`: the stack accounts a
    /// read by the `max` it asked for (its memory budget), so a small read
    /// must not hold a large buffer while it waits on an idle socket.
    fn recv_buffer(&mut self, max: usize) -> Vec<u8> {
        let fits = |b: &Vec<u8>| b.capacity() >= max && b.capacity() <= max + max / 4;
        if self.spare.last().is_some_and(fits)
            && let Some(mut buf) = self.take_spare_buffer()
        {
            buf.clear();
            return buf;
        }
        chunks::take(max)
    }

    // ---- submission ----

    fn enqueue(&mut self, entry: squeue::Entry) {
        if self.backlog.is_empty() {
            // SAFETY:
            // - every pointer in `entry` refers to a heap allocation owned by
            //   an `ops` slot (sockaddr, buffer, word, timespec) that is
            //   neither freed, reused nor reallocated until the op's CQE
            //   (or until it is taken out of the backlog unsubmitted);
            // - socket fds stay open while an op references them
            //   (`Sock::ops`); caller fds (TAP, eventfd) are documented to.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return;
            }
        }
        self.backlog.push_back(entry);
    }

    /// Move the backlog into the SQ ring, submitting (without waiting) when
    /// it is full. Returns whether the backlog is now empty.
    fn flush_backlog(&mut self) -> io::Result<bool> {
        while !self.backlog.is_empty() {
            {
                let mut sq = self.ring.submission();
                while let Some(entry) = self.backlog.front() {
                    // SAFETY: as in `enqueue`: the entry's buffers and fds
                    // stay valid until its CQE.
                    if unsafe { sq.push(entry) }.is_err() {
                        break;
                    }
                    self.backlog.pop_front();
                }
            }
            if self.backlog.is_empty() {
                break;
            }
            match self.ring.submit() {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

impl Drop for Uring {
    /// Abort every flow, cancel every op and wait (bounded) for their CQEs.
    /// Whatever is still in flight after that is leaked, never freed: the
    /// kernel may still write to it.
    fn drop(&mut self) {
        self.close_all();
        // Ops that never left the backlog can be freed now.
        for entry in std::mem::take(&mut self.backlog) {
            if let Some(Token::Op { slot, .. }) = Token::unpack(entry.get_user_data())
                && let Some(op) = self.free_op(slot)
            {
                if let Some(s) = op.sock {
                    self.sock_op_done(s, slot);
                }
            }
        }
        let pending: Vec<u64> = self
            .ops
            .iter()
            .enumerate()
            .filter_map(|(slot, op)| {
                let op = op.as_ref()?;
                let slot = u32::try_from(slot).ok()?;
                Some(
                    Token::Op {
                        kind: op.kind,
                        slot,
                    }
                    .pack(),
                )
            })
            .collect();
        for user_data in pending {
            let cancel = opcode::AsyncCancel::new(user_data)
                .build()
                .user_data(Token::Cancel.pack());
            self.enqueue(cancel);
        }
        let end = Instant::now() + DROP_DRAIN;
        while self.in_flight > 0 && Instant::now() < end {
            let others = self.in_flight - usize::from(self.fallback_timeout.is_some());
            let timeout = if others > 0 {
                Some(Duration::from_millis(50))
            } else {
                // Only a fallback timeout is left (and each timed wait
                // would arm another): remove it and wait for its CQE.
                self.remove_fallback_timeout();
                None
            };
            if self.submit_and_wait(1, timeout).is_err() {
                break;
            }
            self.drain(&mut |_| {});
        }
        if self.in_flight > 0 {
            warn!(
                "uring: {} ops still in flight at drop; leaking their buffers and sockets",
                self.in_flight
            );
            std::mem::forget(std::mem::take(&mut self.ops));
            std::mem::forget(std::mem::take(&mut self.socks));
            // The kernel may still fill port buffers.
            std::mem::forget(self.port_ring.take());
            std::mem::forget(self.recv_ring.take());
        } else {
            if let Some(r) = self.port_ring.take() {
                r.unregister(&self.ring);
            }
            if let Some(Ok(r)) = self.recv_ring.take() {
                r.unregister(&self.ring);
            }
        }
    }
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
