//! io_uring executor: runs the stack's [`SockOp`]s on host sockets and turns
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
//! 32-bit `ops` slot. Each slot is used by exactly one SQE until that SQE's
//! single CQE (no multishot ops), so the slot alone identifies the op.
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
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use log::{debug, trace, warn};

use crate::dataplane::bufring::BufRing;
use crate::stack::flow::FlowId;
use crate::stack::mem::chunks;
use crate::stack::ops::{Errno, HostEvent, Proto, SockOp};

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

/// One thing [`Uring::drain`] reports.
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

/// What an SQE does; part of its [`Token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Connect,
    Send,
    Recv,
    FrameWrite,
    PollIn,
    Wake,
    /// An accept on a published TCP port.
    Accept,
    /// A readiness poll on a published UDP port.
    DgramPoll,
    /// A timeout SQE, used only when the kernel lacks `IORING_FEAT_EXT_ARG`.
    Timeout,
    /// The frame port's multishot read (stays in flight across CQEs).
    PortRead,
    /// A datagram flow's multishot receive (stays in flight across CQEs).
    RecvMulti,
}

/// The meaning of a CQE, packed into the SQE's `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// An op whose resources live in `ops[slot]`.
    Op { kind: OpKind, slot: u32 },
    /// An `AsyncCancel`; its CQE only says whether the target was found.
    Cancel,
}

impl Token {
    const TAG_SHIFT: u32 = 56;
    const SLOT_MASK: u64 = 0xffff_ffff;

    /// Tag in the top byte, slot in the low 32 bits. Tag 0 is never used, so
    /// a zeroed `user_data` does not decode.
    fn pack(self) -> u64 {
        let (tag, slot): (u8, u32) = match self {
            Token::Op { kind, slot } => (
                match kind {
                    OpKind::Connect => 1,
                    OpKind::Send => 2,
                    OpKind::Recv => 3,
                    OpKind::FrameWrite => 4,
                    OpKind::Wake => 5,
                    OpKind::Timeout => 6,
                    OpKind::PollIn => 9,
                    OpKind::PortRead => 10,
                    OpKind::Accept => 11,
                    OpKind::DgramPoll => 12,
                    OpKind::RecvMulti => 13,
                },
                slot,
            ),
            Token::Cancel => (7, 0),
        };
        (u64::from(tag) << Self::TAG_SHIFT) | u64::from(slot)
    }

    fn unpack(v: u64) -> Option<Token> {
        if v & !((0xff << Self::TAG_SHIFT) | Self::SLOT_MASK) != 0 {
            return None;
        }
        let slot = u32::try_from(v & Self::SLOT_MASK).ok()?;
        let kind = match v >> Self::TAG_SHIFT {
            1 => OpKind::Connect,
            2 => OpKind::Send,
            3 => OpKind::Recv,
            4 => OpKind::FrameWrite,
            5 => OpKind::Wake,
            6 => OpKind::Timeout,
            9 => OpKind::PollIn,
            10 => OpKind::PortRead,
            11 => OpKind::Accept,
            12 => OpKind::DgramPoll,
            13 => OpKind::RecvMulti,
            7 if slot == 0 => return Some(Token::Cancel),
            _ => return None,
        };
        Some(Token::Op { kind, slot })
    }
}

/// A socket address in the form the kernel reads.
pub(super) enum SockAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl SockAddr {
    pub(super) fn new(addr: &SocketAddr) -> SockAddr {
        match addr {
            SocketAddr::V4(a) => SockAddr::V4(libc::sockaddr_in {
                sin_family: family(libc::AF_INET),
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => SockAddr::V6(libc::sockaddr_in6 {
                sin6_family: family(libc::AF_INET6),
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    pub(super) fn as_ptr(&self) -> *const libc::sockaddr {
        match self {
            SockAddr::V4(a) => std::ptr::from_ref(a).cast(),
            SockAddr::V6(a) => std::ptr::from_ref(a).cast(),
        }
    }

    pub(super) fn len(&self) -> libc::socklen_t {
        match self {
            SockAddr::V4(_) => socklen_of::<libc::sockaddr_in>(),
            SockAddr::V6(_) => socklen_of::<libc::sockaddr_in6>(),
        }
    }
}

fn family(af: libc::c_int) -> libc::sa_family_t {
    // Cannot fail: AF_INET (2) and AF_INET6 (10) fit in sa_family_t (u16).
    libc::sa_family_t::try_from(af).expect("address family fits sa_family_t")
}

pub(super) fn socklen_of<T>() -> libc::socklen_t {
    // Cannot fail: only socket structures of at most 128 bytes are passed.
    libc::socklen_t::try_from(std::mem::size_of::<T>()).expect("socket struct size fits socklen_t")
}

pub(super) fn last_errno() -> Errno {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
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

/// A host socket and the ops that reference its fd.
struct Sock {
    fd: OwnedFd,
    /// `ops` slots of the socket ops in flight on `fd`.
    ops: Vec<u32>,
    /// The flow is gone; close `fd` when `ops` is empty.
    closing: bool,
}

enum Phase {
    /// The connect is in flight; ops wait here in push order.
    Connecting {
        deferred: Vec<SockOp>,
    },
    Connected,
    /// `socket()` or the connect failed with this errno.
    Failed(Errno),
}

/// A live flow: opened by the stack and not yet closed.
struct Flow {
    id: FlowId,
    /// `None` when `socket()` failed.
    sock: Option<u32>,
    phase: Phase,
    /// Sends pushed and not yet completed.
    sends_in_flight: u32,
    /// A flow of a published UDP port: `sock` is the listener's (shared,
    /// never closed by the flow) and sends go to this peer with `sendto`.
    peer: Option<SocketAddr>,
    /// A `ShutdownWrite` that waits for `sends_in_flight` to reach 0.
    shutdown_pending: bool,
    /// A UDP or ICMP flow: once the stack's first `Recv` arrives, it
    /// receives continuously (see [`Uring::push`]).
    dgram: bool,
}

/// Executes [`SockOp`]s on one io_uring; see the [module docs](self).
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
    /// `MSG_WAITALL` on stream sends (off in a test of the restart path,
    /// which is what a kernel before 5.18 needs).
    send_waitall: bool,
    /// Source addresses to bind outbound sockets to (IPv4, IPv6), except
    /// those to loopback (slirp4netns's `--outbound-addr`).
    outbound: (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>),
}

impl Uring {
    /// Bind outbound sockets of each family to this source address
    /// (connections to loopback keep the kernel's choice).
    pub fn set_outbound(&mut self, v4: Option<std::net::Ipv4Addr>, v6: Option<std::net::Ipv6Addr>) {
        self.outbound = (v4, v6);
    }

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
            send_waitall: true,
            outbound: (None, None),
            listeners: std::collections::HashMap::new(),
        })
    }

    /// Queue one socket op (takes ownership of its data). Never blocks.
    pub fn push(&mut self, op: SockOp) {
        match op {
            SockOp::Open {
                flow,
                proto,
                dst,
                mss,
            } => self.open(flow, proto, dst, mss),
            SockOp::Close { flow, reset } => self.close(flow, reset),
            op => {
                let id = op.flow();
                let Some(f) = self.flow_mut(id) else {
                    debug!("uring: {op:?} for a flow that is not open; dropped");
                    return;
                };
                match &mut f.phase {
                    Phase::Connecting { deferred } => deferred.push(op),
                    Phase::Failed(e) => {
                        let e = *e;
                        self.fail_op(op, e);
                    }
                    Phase::Connected => self.issue(op),
                }
            }
        }
    }

    /// Write `frame` to `fd` (a TAP device) with one io_uring write. Takes
    /// ownership of `frame` until [`Completion::FrameWritten`]; the buffer
    /// then goes to the spare list ([`Uring::take_spare_buffer`]). The caller
    /// keeps `fd` open until then.
    pub fn push_frame_write(&mut self, fd: RawFd, frame: Vec<u8>) {
        let op = Op {
            kind: OpKind::FrameWrite,
            flow: None,
            sock: None,
            listener: None,
            res: OpRes::Buf(frame),
        };
        self.start(op, |res| {
            let OpRes::Buf(buf) = res else {
                unreachable!("frame write owns a buffer")
            };
            let len = clamp_u32(buf.len());
            // offset -1: the file position, as write(2) uses.
            opcode::Write::new(types::Fd(fd), buf.as_ptr(), len)
                .offset(u64::MAX)
                .build()
        });
    }

    /// Wait (one-shot) until `fd` is readable; the completion is
    /// [`Completion::Readable`]. Arm again after reading it dry. The caller
    /// keeps `fd` open until the completion arrives.
    ///
    /// This is how a TAP queue is read: tun's read path does not take
    /// io_uring's non-blocking attempt, so a READ on a TAP fd is punted to
    /// an io-wq thread (measured: a dozen `iou-wrk` threads and lower
    /// throughput). A poll plus direct reads of the non-blocking fd keeps
    /// everything on the worker.
    pub fn push_poll_in(&mut self, fd: RawFd) {
        let op = Op {
            kind: OpKind::PollIn,
            flow: None,
            sock: None,
            listener: None,
            res: OpRes::None,
        };
        self.start(op, |_| {
            // Cannot fail: POLLIN (1) fits in u32.
            let mask = u32::try_from(libc::POLLIN).unwrap_or(1);
            opcode::PollAdd::new(types::Fd(fd), mask).build()
        });
    }

    /// Give the frame port a ring of `entries` provided buffers of
    /// `buf_size` bytes (each holds one frame) for [`Uring::push_port_read`].
    pub fn setup_port_ring(&mut self, entries: u16, buf_size: usize) -> io::Result<()> {
        if self.port_ring.is_none() {
            self.port_ring = Some(BufRing::new(&self.ring, entries, buf_size, PORT_BGID)?);
        }
        Ok(())
    }

    /// Read frames from `fd` (a non-blocking TAP queue) with one multishot
    /// read into the port's provided buffers: each frame completes as
    /// [`Completion::PortFrame`] with no syscall of its own, and the read
    /// stays armed until [`Completion::PortReadEnded`]. The caller keeps
    /// `fd` open until then.
    ///
    /// Measured on kernel 6.18: on a non-blocking TAP fd the multishot read
    /// runs inline, driven by the fd's poll wake-ups (no `iou-wrk`
    /// threads), unlike a plain READ, which tun punts to io-wq.
    pub fn push_port_read(&mut self, fd: RawFd) {
        let Some(bgid) = self.port_ring.as_ref().map(BufRing::bgid) else {
            warn!("uring: push_port_read without a port ring");
            return;
        };
        let op = Op {
            kind: OpKind::PortRead,
            flow: None,
            sock: None,
            listener: None,
            res: OpRes::None,
        };
        self.start(op, |_| {
            opcode::ReadMulti::new(types::Fd(fd), 0, bgid).build()
        });
    }

    /// The frame in port buffer `bid`, which a [`Completion::PortFrame`]
    /// just named (each buffer can be read once until recycled).
    pub fn port_frame(&mut self, bid: u16, len: usize) -> Option<&[u8]> {
        self.port_ring.as_mut()?.get(bid, len)
    }

    /// Give port buffer `bid` back to the kernel (published at the next
    /// submit).
    pub fn port_recycle(&mut self, bid: u16) {
        if let Some(r) = self.port_ring.as_mut() {
            r.recycle(bid);
        }
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
        let op = Op {
            kind: OpKind::Wake,
            flow: None,
            sock: None,
            listener: None,
            res: OpRes::Word(Box::new([0; 8])),
        };
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
    /// are ready or `timeout` passes, in one `io_uring_enter` (more only when
    /// the backlog is larger than the SQ ring). `EINTR`, `ETIME`, `EBUSY` and
    /// `EAGAIN` return `Ok`: the caller drains and loops. Does not wait when
    /// events are already ready, nor forever when nothing is in flight and
    /// no timeout is given.
    pub fn submit_and_wait(
        &mut self,
        min_complete: usize,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
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

    /// Abort every flow (`Close { reset: true }` for each): used when the
    /// guest goes away, so peers see a reset rather than a clean end of data.
    pub fn close_all(&mut self) {
        let ids: Vec<FlowId> = self.flows.iter().flatten().map(|f| f.id).collect();
        for id in ids {
            self.close(id, true);
        }
    }

    // ---- published ports ----

    /// Serve published port `id`: `fd` is a listening TCP socket or a bound
    /// UDP socket (takes ownership). Connections come back as
    /// [`Completion::Accepted`], datagrams as [`Completion::Datagram`].
    /// An `id` already in use replaces the old listener.
    pub fn add_listener(&mut self, id: u32, proto: Proto, fd: OwnedFd) {
        self.remove_listener(id);
        let s = self.alloc_sock(fd);
        self.listeners.insert(id, (s, proto));
        self.arm_listener(id);
    }

    /// Stop serving published port `id`: a TCP listener stops listening at
    /// once (`shutdown`), so new clients are refused; its pending op is
    /// cancelled and the fd closes when that op's CQE arrives. Flows
    /// attached to a UDP listener fail their later sends with `EBADF`.
    pub fn remove_listener(&mut self, id: u32) {
        let Some((s, _)) = self.listeners.remove(&id) else {
            return;
        };
        let fd = self.sock_fd(s);
        // SAFETY: `fd` is the listener's open socket (owned by `socks[s]`,
        // released only below, after its ops); shutdown(2) takes no pointers.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        for f in self.flows.iter_mut().flatten() {
            if f.peer.is_some() && f.sock == Some(s) {
                f.sock = None;
                f.phase = Phase::Failed(libc::EBADF);
            }
        }
        self.abandon_sock(s);
    }

    /// Ids of the published ports served.
    pub fn listener_ids(&self) -> Vec<u32> {
        self.listeners.keys().copied().collect()
    }

    /// Take an accepted connection (from [`Completion::Accepted`]) as the
    /// host socket of `flow`, already connected: no `Connected` event
    /// follows; the stack's `Recv`/`Send` ops on `flow` run at once.
    pub fn attach_tcp(&mut self, id: FlowId, fd: OwnedFd) {
        let one: libc::c_int = 1;
        if let Err(e) = setsockopt(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one) {
            debug!("uring: TCP_NODELAY failed: errno {e}");
        }
        let s = self.alloc_sock(fd);
        self.attach(id, Some(s), None);
    }

    /// Make `flow` a flow of published UDP port `listener`: its sends go to
    /// `peer` from the listener's socket. No `Recv` may be pushed for it
    /// (the listener's datagrams come as [`Completion::Datagram`]).
    pub fn attach_udp(&mut self, id: FlowId, listener: u32, peer: SocketAddr) {
        match self.listeners.get(&listener) {
            Some(&(s, Proto::Udp)) => self.attach(id, Some(s), Some(peer)),
            _ => {
                debug!("uring: attach to UDP listener {listener}, which is gone");
                self.attach(id, None, Some(peer));
                if let Some(f) = self.flow_mut(id) {
                    f.phase = Phase::Failed(libc::EBADF);
                }
            }
        }
    }

    fn attach(&mut self, id: FlowId, sock: Option<u32>, peer: Option<SocketAddr>) {
        let idx = id.idx as usize;
        if self.flows.len() <= idx {
            self.flows.resize_with(idx + 1, || None);
        }
        if let Some(old) = self.flows[idx].as_ref().map(|f| f.id) {
            warn!("uring: attach of {id:?} while {old:?} is live without Close; aborting it");
            self.close(old, true);
        }
        self.flows[idx] = Some(Flow {
            id,
            sock,
            phase: Phase::Connected,
            sends_in_flight: 0,
            shutdown_pending: false,
            peer,
            dgram: false,
        });
        self.live_flows += 1;
    }

    fn arm_listener(&mut self, id: u32) {
        let Some(&(s, proto)) = self.listeners.get(&id) else {
            return;
        };
        let fd = self.sock_fd(s);
        let kind = match proto {
            Proto::Udp => OpKind::DgramPoll,
            _ => OpKind::Accept,
        };
        let op = Op {
            kind,
            flow: None,
            sock: Some(s),
            listener: Some(id),
            res: OpRes::None,
        };
        self.start(op, |_| match kind {
            OpKind::Accept => {
                opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
            }
            _ => {
                // Cannot fail: POLLIN (1) fits in u32.
                let mask = u32::try_from(libc::POLLIN).unwrap_or(1);
                opcode::PollAdd::new(types::Fd(fd), mask).build()
            }
        });
    }

    fn on_accept(
        &mut self,
        listener: Option<u32>,
        res: Result<i32, Errno>,
        out: &mut impl FnMut(Completion),
    ) -> usize {
        let Some(id) = listener else { return 0 };
        let live = self.listeners.contains_key(&id);
        let fd = match res {
            // SAFETY: the accept CQE's result is a new fd that nothing
            // else owns.
            Ok(fd) => Some(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(e) => {
                if live {
                    debug!("uring: accept on published port {id}: errno {e}");
                }
                None
            }
        };
        if !live {
            // Removed while the accept was in flight: `fd` closes here.
            return 0;
        }
        self.arm_listener(id);
        let Some(fd) = fd else { return 0 };
        let Some(peer) = peer_addr(&fd) else {
            debug!("uring: getpeername of an accepted connection failed");
            return 0;
        };
        out(Completion::Accepted {
            listener: id,
            fd,
            peer,
        });
        1
    }

    fn on_dgram_ready(
        &mut self,
        listener: Option<u32>,
        res: Result<i32, Errno>,
        out: &mut impl FnMut(Completion),
    ) -> usize {
        let Some(id) = listener else { return 0 };
        let Some(&(s, _)) = self.listeners.get(&id) else {
            return 0;
        };
        if let Err(e) = res {
            debug!("uring: poll on published port {id}: errno {e}");
        }
        let fd = self.sock_fd(s);
        let mut n = 0;
        // Bounded per wake-up; the poll is level-triggered, so what is
        // left wakes the next one at once.
        for _ in 0..DGRAM_BATCH {
            let mut buf = self.recv_buffer(65536);
            match recv_from(fd, &mut buf) {
                Ok(peer) => {
                    out(Completion::Datagram {
                        listener: id,
                        peer,
                        data: buf,
                    });
                    n += 1;
                }
                Err(e) => {
                    self.recycle(buf);
                    if e != libc::EAGAIN && e != libc::EWOULDBLOCK {
                        debug!("uring: recvfrom on published port {id}: errno {e}");
                    }
                    break;
                }
            }
        }
        self.arm_listener(id);
        n
    }

    // ---- ops ----

    fn open(&mut self, id: FlowId, proto: Proto, dst: SocketAddr, mss: Option<u16>) {
        let idx = id.idx as usize;
        if self.flows.len() <= idx {
            self.flows.resize_with(idx + 1, || None);
        }
        if let Some(old) = &self.flows[idx] {
            let old = old.id;
            if old.gen_ == id.gen_ {
                warn!("uring: second Open for {id:?}; ignored");
                return;
            }
            warn!("uring: Open for {id:?} while {old:?} is live without Close; aborting it");
            self.close(old, true);
        }
        let src = match dst {
            _ if dst.ip().is_loopback() => None,
            SocketAddr::V4(_) => self.outbound.0.map(std::net::IpAddr::V4),
            SocketAddr::V6(_) => self.outbound.1.map(std::net::IpAddr::V6),
        };
        let (sock, phase) = match new_socket(proto, &dst, mss, src, false) {
            Ok(fd) => (
                Some(self.alloc_sock(fd)),
                Phase::Connecting {
                    deferred: Vec::new(),
                },
            ),
            Err(e) => {
                debug!("uring: socket for {id:?} ({proto:?} to {dst}) failed: errno {e}");
                self.ready.push_back(HostEvent::Connected {
                    flow: id,
                    result: Err(e),
                });
                (None, Phase::Failed(e))
            }
        };
        self.flows[idx] = Some(Flow {
            id,
            sock,
            phase,
            sends_in_flight: 0,
            shutdown_pending: false,
            peer: None,
            dgram: proto != Proto::Tcp,
        });
        self.live_flows += 1;
        if let Some(s) = sock {
            let fd = self.sock_fd(s);
            let op = Op {
                kind: OpKind::Connect,
                flow: Some(id),
                sock: Some(s),
                listener: None,
                res: OpRes::Addr(Box::new(SockAddr::new(&dst))),
            };
            self.start(op, |res| {
                let OpRes::Addr(addr) = res else {
                    unreachable!("connect owns a sockaddr")
                };
                opcode::Connect::new(types::Fd(fd), addr.as_ptr(), addr.len()).build()
            });
        }
    }

    /// Issue a Send, Recv or ShutdownWrite on a connected flow.
    fn issue(&mut self, op: SockOp) {
        let id = op.flow();
        let Some(f) = self.flow_mut(id) else {
            return;
        };
        if f.dgram && matches!(op, SockOp::Recv { .. }) {
            // Cannot fail: a connected flow has a socket.
            let s = f.sock.expect("connected flow has a socket");
            if self.recv_ring_ready() {
                self.arm_recv_multi(id, s);
                return;
            }
        }
        let Some(f) = self.flow_mut(id) else {
            return;
        };
        // Cannot fail: a connected flow has a socket.
        let s = f.sock.expect("connected flow has a socket");
        if let (Some(peer), SockOp::Send { data, .. }) = (f.peer, &op) {
            // A published UDP port's flow: one non-blocking sendto on the
            // shared socket (a UDP send does not wait for the peer).
            let fd = self.sock_fd(s);
            let result = send_to(fd, data, &peer);
            if let SockOp::Send { data, .. } = op {
                self.recycle(data);
            }
            self.ready.push_back(HostEvent::Sent { flow: id, result });
            return;
        }
        match op {
            SockOp::Send { data, .. } => {
                f.sends_in_flight += 1;
                let fd = self.sock_fd(s);
                let op = Op {
                    kind: OpKind::Send,
                    flow: Some(id),
                    sock: Some(s),
                    listener: None,
                    res: OpRes::Sending { buf: data, done: 0 },
                };
                let waitall = self.send_waitall;
                self.start(op, |res| send_entry(fd, res, waitall));
            }
            SockOp::Recv { max, .. } => {
                let max = max.min(MAX_RECV);
                let fd = self.sock_fd(s);
                let buf = self.recv_buffer(max);
                let op = Op {
                    kind: OpKind::Recv,
                    flow: Some(id),
                    sock: Some(s),
                    listener: None,
                    res: OpRes::Buf(buf),
                };
                self.start(op, |res| {
                    let OpRes::Buf(buf) = res else {
                        unreachable!("recv owns a buffer")
                    };
                    opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), clamp_u32(max)).build()
                });
            }
            SockOp::ShutdownWrite { .. } => {
                if f.sends_in_flight > 0 {
                    f.shutdown_pending = true;
                } else {
                    self.shutdown_write(s);
                }
            }
            SockOp::Open { .. } | SockOp::Close { .. } => {
                unreachable!("Open and Close are handled by push")
            }
        }
    }

    /// Answer `op` on a failed flow with `errno`, without the kernel.
    fn fail_op(&mut self, op: SockOp, errno: Errno) {
        let flow = op.flow();
        match op {
            SockOp::Send { data, .. } => {
                self.recycle(data);
                self.ready.push_back(HostEvent::Sent {
                    flow,
                    result: Err(errno),
                });
            }
            SockOp::Recv { .. } => self.ready.push_back(HostEvent::Received {
                flow,
                result: Err(errno),
            }),
            SockOp::ShutdownWrite { .. } | SockOp::Open { .. } | SockOp::Close { .. } => {}
        }
    }

    fn close(&mut self, id: FlowId, reset: bool) {
        let Some(flow) = self.take_flow(id) else {
            debug!("uring: Close for {id:?}, which is not open; ignored");
            return;
        };
        if let Phase::Connecting { deferred } = flow.phase {
            // Never issued: the kernel has not seen their buffers.
            for op in deferred {
                if let SockOp::Send { data, .. } = op {
                    self.recycle(data);
                }
            }
        }
        let Some(s) = flow.sock else {
            return;
        };
        if flow.peer.is_some() {
            // The published port's socket is the listener's, not the flow's.
            return;
        }
        let Some(sock) = self.socks[s as usize].as_mut() else {
            return;
        };
        if reset {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            if let Err(e) = setsockopt(&sock.fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger) {
                debug!("uring: SO_LINGER 0 on {id:?} failed: errno {e}");
            }
        }
        self.abandon_sock(s);
    }

    /// The socket's owner is gone: cancel its ops (dropping those still in
    /// the backlog) and close the fd once no op references it.
    fn abandon_sock(&mut self, s: u32) {
        let Some(sock) = self.socks[s as usize].as_mut() else {
            return;
        };
        sock.closing = true;
        let ops = std::mem::take(&mut sock.ops);
        let mut kept = Vec::with_capacity(ops.len());
        for slot in ops {
            let Some(kind) = self.ops[slot as usize].as_ref().map(|o| o.kind) else {
                continue;
            };
            let user_data = Token::Op { kind, slot }.pack();
            let before = self.backlog.len();
            self.backlog.retain(|e| e.get_user_data() != user_data);
            if self.backlog.len() < before {
                // Still in the backlog: the kernel never saw it.
                if let Some(op) = self.free_op(slot) {
                    self.reclaim(op.res);
                }
            } else {
                let cancel = opcode::AsyncCancel::new(user_data)
                    .build()
                    .user_data(Token::Cancel.pack());
                self.enqueue(cancel);
                kept.push(slot);
            }
        }
        if kept.is_empty() {
            self.release_sock(s);
        } else if let Some(sock) = self.socks[s as usize].as_mut() {
            sock.ops = kept;
        }
    }

    fn shutdown_write(&self, s: u32) {
        let fd = self.sock_fd(s);
        // SAFETY:
        // - `fd` is an open socket owned by `socks[s]` (closed only when no
        //   op and no flow references it; the caller's flow does);
        // - shutdown(2) takes no pointers.
        if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
            debug!("uring: shutdown(SHUT_WR) failed: errno {}", last_errno());
        }
    }

    /// The fallback wait timeout for kernels without `IORING_FEAT_EXT_ARG`.
    /// The previous one, if still pending, is removed first so that timed
    /// waits do not pile up timeouts in the kernel.
    fn push_timeout(&mut self, t: Duration) {
        self.remove_fallback_timeout();
        let op = Op {
            kind: OpKind::Timeout,
            flow: None,
            sock: None,
            listener: None,
            res: OpRes::Time(Box::new(types::Timespec::from(t))),
        };
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
            OpKind::Send => {
                // A stream socket that took part of a Send (its buffer was
                // full, a signal): the rest goes out from where it stopped,
                // and the flow hears once, with the whole count. The stack
                // hands over its bytes without keeping a copy, so a short
                // count must not reach it as a success.
                let mut op = op;
                let mut res = res;
                if let (Ok(n), OpRes::Sending { buf, done }, Some(id), Some(s)) =
                    (res, &mut op.res, op.flow, op.sock)
                {
                    *done += usize::try_from(n).unwrap_or(0);
                    let total = i32::try_from(*done).unwrap_or(i32::MAX);
                    // A live flow's socket is not closing: the release
                    // above left its fd open for the restart.
                    if n > 0 && *done < buf.len() && self.flow_mut(id).is_some() {
                        self.short_sends += 1;
                        let fd = self.sock_fd(s);
                        let waitall = self.send_waitall;
                        self.start(op, |res| send_entry(fd, res, waitall));
                        return 0;
                    }
                    res = Ok(total);
                }
                self.reclaim(op.res);
                self.on_send(op.flow, res, out)
            }
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

    /// A CQE of the multishot port read: a frame, and/or its end.
    fn on_port_read(
        &mut self,
        slot: u32,
        result: i32,
        flags: u32,
        out: &mut impl FnMut(Completion),
    ) -> usize {
        let mut n = 0;
        if result >= 0 {
            match cqueue::buffer_select(flags) {
                Some(bid) => {
                    // Cannot fail: a non-negative i32 fits usize.
                    let len = usize::try_from(result).unwrap_or(0);
                    out(Completion::PortFrame { bid, len });
                    n += 1;
                }
                None if result > 0 => warn!("uring: port read CQE without a buffer"),
                None => {}
            }
        }
        if !cqueue::more(flags) {
            if self.free_op(slot).is_none() {
                warn!("uring: port read end for empty op slot {slot}");
                return n;
            }
            let result = if result < 0 {
                Err(io::Error::from_raw_os_error(-result))
            } else {
                Ok(())
            };
            out(Completion::PortReadEnded { result });
            n += 1;
        }
        n
    }

    fn on_connect(
        &mut self,
        flow: Option<FlowId>,
        res: Result<i32, Errno>,
        out: &mut impl FnMut(Completion),
    ) -> usize {
        let Some(id) = flow else { return 0 };
        let Some(f) = self.flow_mut(id) else {
            return 0;
        };
        let deferred = match std::mem::replace(&mut f.phase, Phase::Connected) {
            Phase::Connecting { deferred } => deferred,
            other => {
                f.phase = other;
                warn!("uring: connect completion for {id:?} outside Connecting");
                return 0;
            }
        };
        match res {
            Ok(_) => {
                out(Completion::Host(HostEvent::Connected {
                    flow: id,
                    result: Ok(()),
                }));
                for op in deferred {
                    self.issue(op);
                }
            }
            Err(e) => {
                f.phase = Phase::Failed(e);
                out(Completion::Host(HostEvent::Connected {
                    flow: id,
                    result: Err(e),
                }));
                for op in deferred {
                    self.fail_op(op, e);
                }
            }
        }
        1
    }

    fn on_send(
        &mut self,
        flow: Option<FlowId>,
        res: Result<i32, Errno>,
        out: &mut impl FnMut(Completion),
    ) -> usize {
        let Some(id) = flow else { return 0 };
        let Some(f) = self.flow_mut(id) else {
            return 0;
        };
        f.sends_in_flight = f.sends_in_flight.saturating_sub(1);
        let shutdown = (f.sends_in_flight == 0 && f.shutdown_pending)
            .then(|| {
                f.shutdown_pending = false;
                f.sock
            })
            .flatten();
        if let Some(s) = shutdown {
            self.shutdown_write(s);
        }
        let result = res.map(|n| usize::try_from(n).unwrap_or(0));
        out(Completion::Host(HostEvent::Sent { flow: id, result }));
        1
    }

    fn on_recv(
        &mut self,
        flow: Option<FlowId>,
        res: Result<i32, Errno>,
        mut buf: Vec<u8>,
        out: &mut impl FnMut(Completion),
    ) -> usize {
        let live = flow.filter(|&id| self.flow_mut(id).is_some());
        let Some(id) = live else {
            self.recycle(buf);
            return 0;
        };
        // A datagram flow receives continuously: the next receive is
        // issued here, not by the stack.
        if self.flow_mut(id).is_some_and(|f| f.dgram)
            && matches!(res, Ok(_) | Err(libc::ECONNREFUSED))
        {
            self.issue(SockOp::Recv {
                flow: id,
                max: DGRAM_MAX,
            });
        }
        let result = match res {
            Ok(n) => {
                let n = usize::try_from(n).unwrap_or(0).min(buf.capacity());
                // SAFETY:
                // - the Recv SQE pointed at this buffer's spare capacity with
                //   a length of at most its capacity, and the kernel reports
                //   it wrote `n` bytes there (clamped to the capacity);
                // - u8 has no invalid bit patterns, so those bytes are
                //   initialized values.
                unsafe { buf.set_len(n) };
                Ok(buf)
            }
            Err(e) => {
                self.recycle(buf);
                Err(e)
            }
        };
        out(Completion::Host(HostEvent::Received { flow: id, result }));
        1
    }

    /// The datagram receive ring, made on first use; false when it
    /// cannot be (a kernel without provided-buffer rings or multishot
    /// receive): datagram flows then use one-shot receives.
    fn recv_ring_ready(&mut self) -> bool {
        if self.recv_ring.is_none() {
            let r = BufRing::new(&self.ring, RECV_RING_ENTRIES, DGRAM_MAX, RECV_BGID);
            if let Err(e) = &r {
                debug!("uring: no datagram receive ring ({e}); one-shot receives");
            }
            self.recv_ring = Some(r.map_err(|_| ()));
        }
        matches!(self.recv_ring, Some(Ok(_)))
    }

    /// One multishot receive on datagram socket `s` of flow `id`.
    fn arm_recv_multi(&mut self, id: FlowId, s: u32) {
        let fd = self.sock_fd(s);
        let op = Op {
            kind: OpKind::RecvMulti,
            flow: Some(id),
            sock: Some(s),
            listener: None,
            res: OpRes::None,
        };
        self.start(op, |_| {
            opcode::RecvMulti::new(types::Fd(fd), RECV_BGID).build()
        });
    }

    /// A CQE of a datagram flow's multishot receive: a datagram (copied
    /// out of the shared buffer at once, so one busy flow cannot starve the
    /// others of buffers) and/or the end of the receive, which is re-armed
    /// while the flow lives.
    fn on_recv_multi(
        &mut self,
        slot: u32,
        result: i32,
        flags: u32,
        out: &mut impl FnMut(Completion),
    ) -> usize {
        let Some((flow, sock)) = self.ops.get(slot as usize).and_then(|o| {
            let o = o.as_ref()?;
            Some((o.flow, o.sock))
        }) else {
            warn!("uring: multishot receive CQE for empty op slot {slot}");
            return 0;
        };
        let live = flow.filter(|&id| self.flow_mut(id).is_some());
        let mut n = 0;
        if result >= 0
            && let Some(bid) = cqueue::buffer_select(flags)
        {
            // Cannot fail: a non-negative i32 fits usize.
            let len = usize::try_from(result).unwrap_or(0);
            let mut data = self.recv_buffer(len);
            if let Some(Ok(r)) = self.recv_ring.as_mut() {
                if let Some(bytes) = r.get(bid, len) {
                    data.extend_from_slice(bytes);
                }
                r.recycle(bid);
            }
            match live {
                Some(id) => {
                    out(Completion::Host(HostEvent::Received {
                        flow: id,
                        result: Ok(data),
                    }));
                    n += 1;
                }
                None => self.recycle(data),
            }
        }
        if cqueue::more(flags) {
            return n;
        }
        // The receive ended: free its slot, then decide what follows.
        if self.free_op(slot).is_some()
            && let Some(s) = sock
        {
            self.sock_op_done(s, slot);
        }
        let Some(id) = live else {
            return n;
        };
        let rearm = match -result {
            e if result >= 0 || e == libc::ENOBUFS => true,
            libc::ECANCELED => false,
            e => {
                // ECONNREFUSED: the host's ICMP port unreachable; the flow
                // goes on. Anything else ends the flow's receiving.
                out(Completion::Host(HostEvent::Received {
                    flow: id,
                    result: Err(e),
                }));
                n += 1;
                e == libc::ECONNREFUSED
            }
        };
        if rearm
            && let Some(s) = sock
            && self.flow_mut(id).is_some()
        {
            self.arm_recv_multi(id, s);
        }
        n
    }

    // ---- slabs ----

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

    fn alloc_sock(&mut self, fd: OwnedFd) -> u32 {
        let sock = Sock {
            fd,
            ops: Vec::new(),
            closing: false,
        };
        match self.free_socks.pop() {
            Some(s) => {
                self.socks[s as usize] = Some(sock);
                s
            }
            None => {
                self.socks.push(Some(sock));
                // Cannot fail: one socket per flow, flows are indexed by u32.
                u32::try_from(self.socks.len() - 1).expect("socket slots fit u32")
            }
        }
    }

    fn sock_fd(&self, s: u32) -> RawFd {
        self.socks[s as usize]
            .as_ref()
            .map_or(-1, |sock| sock.fd.as_raw_fd())
    }

    /// An op on socket `s` completed: forget it, and close the socket if its
    /// flow is gone and this was its last op.
    fn sock_op_done(&mut self, s: u32, slot: u32) {
        let Some(sock) = self.socks[s as usize].as_mut() else {
            return;
        };
        if let Some(i) = sock.ops.iter().position(|&o| o == slot) {
            sock.ops.swap_remove(i);
        }
        if sock.closing && sock.ops.is_empty() {
            self.release_sock(s);
        }
    }

    /// Close the fd of socket `s` (no op references it any more).
    fn release_sock(&mut self, s: u32) {
        if let Some(sock) = self.socks[s as usize].take() {
            debug_assert!(sock.ops.is_empty(), "no op references a released fd");
            drop(sock.fd);
            self.free_socks.push(s);
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
        if let OpRes::Buf(buf) | OpRes::Sending { buf, .. } = res {
            self.recycle(buf);
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

/// Close a socket with RST (`SO_LINGER` 0): a host client the stack
/// refused.
pub fn abort_socket(fd: OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    if let Err(e) = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger) {
        debug!("uring: SO_LINGER 0 failed: errno {e}");
    }
}

/// Most datagrams read from a published UDP port per wake-up.
const DGRAM_BATCH: usize = 64;

/// A kernel socket address as a [`SocketAddr`].
pub(super) fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; the
            // storage is larger and suitably aligned for it.
            let a = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                a.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((
                a.sin6_addr.s6_addr,
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    }
}

pub(super) fn peer_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = socklen_of::<libc::sockaddr_storage>();
    // SAFETY: `fd` is open; `ss` and `len` are live and `len` is the
    // storage's size, which the kernel does not exceed.
    let r = unsafe {
        libc::getpeername(
            fd.as_raw_fd(),
            std::ptr::from_mut(&mut ss).cast(),
            &raw mut len,
        )
    };
    if r < 0 {
        return None;
    }
    to_socket_addr(&ss)
}

/// One non-blocking `recvfrom` into `buf`'s spare capacity (at least one
/// byte); on success `buf` holds the datagram.
fn recv_from(fd: RawFd, buf: &mut Vec<u8>) -> Result<SocketAddr, Errno> {
    buf.clear();
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = socklen_of::<libc::sockaddr_storage>();
    // SAFETY:
    // - `fd` is an open socket for the call (the caller's listener);
    // - the kernel writes at most `buf.capacity()` bytes at its start, and
    //   at most `len` (the storage's size) bytes into `ss`.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.capacity(),
            libc::MSG_DONTWAIT,
            std::ptr::from_mut(&mut ss).cast(),
            &raw mut len,
        )
    };
    if n < 0 {
        return Err(last_errno());
    }
    // Cannot fail: n >= 0.
    let n = usize::try_from(n).unwrap_or(0).min(buf.capacity());
    // SAFETY: the kernel initialised the first `n` bytes (at most the
    // capacity); u8 has no invalid bit patterns.
    unsafe { buf.set_len(n) };
    to_socket_addr(&ss).ok_or(libc::EAFNOSUPPORT)
}

/// One non-blocking `sendto` of `data` to `peer` on `fd`.
pub(super) fn send_to(fd: RawFd, data: &[u8], peer: &SocketAddr) -> Result<usize, Errno> {
    let addr = SockAddr::new(peer);
    // SAFETY: `fd` is an open socket for the call; `data` and `addr` are
    // live and the lengths passed are theirs; the kernel only reads them.
    let n = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            addr.as_ptr(),
            addr.len(),
        )
    };
    if n < 0 {
        return Err(last_errno());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// The SQE of a stream `Send` (`OpRes::Sending`): the bytes from `done`
/// on. `MSG_WAITALL` lets the kernel itself retry a short send (5.18+);
/// [`Uring::complete`] restarts what an older kernel returns short.
fn send_entry(fd: RawFd, res: &mut OpRes, waitall: bool) -> squeue::Entry {
    let OpRes::Sending { buf, done } = res else {
        unreachable!("a stream send owns a buffer")
    };
    let rest = buf.get(*done..).unwrap_or_default();
    opcode::Send::new(types::Fd(fd), rest.as_ptr(), clamp_u32(rest.len()))
        .flags(libc::MSG_NOSIGNAL | if waitall { libc::MSG_WAITALL } else { 0 })
        .build()
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Create the socket for an `Open`: close-on-exec, blocking unless
/// `nonblock` (the epoll executor's); TCP gets `TCP_NODELAY` and
/// `TCP_MAXSEG` (failures of either are logged only); bound to `src`
/// (port 0) when given.
pub(super) fn new_socket(
    proto: Proto,
    dst: &SocketAddr,
    mss: Option<u16>,
    src: Option<std::net::IpAddr>,
    nonblock: bool,
) -> Result<OwnedFd, Errno> {
    let v4 = dst.is_ipv4();
    let domain = if v4 { libc::AF_INET } else { libc::AF_INET6 };
    let (ty, protocol) = match proto {
        Proto::Tcp => (libc::SOCK_STREAM, 0),
        Proto::Udp => (libc::SOCK_DGRAM, 0),
        Proto::Icmp if v4 => (libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
        Proto::Icmp => (libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6),
    };
    let nb = if nonblock { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC | nb, protocol) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: `fd` was just returned by socket(2); nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if proto == Proto::Tcp {
        let one: libc::c_int = 1;
        if let Err(e) = setsockopt(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one) {
            debug!("uring: TCP_NODELAY failed: errno {e}");
        }
        if let Some(mss) = mss {
            let mss = libc::c_int::from(mss);
            if let Err(e) = setsockopt(&fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG, &mss) {
                trace!("uring: TCP_MAXSEG {mss} failed: errno {e}");
            }
        }
    }
    if proto == Proto::Udp {
        size_udp_rcvbuf(&fd);
    }
    if let Some(ip) = src {
        let sa = SockAddr::new(&SocketAddr::new(ip, 0));
        // SAFETY: `sa` is a live sockaddr of `sa.len()` bytes that the
        // kernel only reads during the call; `fd` is the socket made above.
        if unsafe { libc::bind(fd.as_raw_fd(), sa.as_ptr(), sa.len()) } < 0 {
            return Err(last_errno());
        }
    }
    Ok(fd)
}

/// What uipd asks for as the receive buffer of its host UDP sockets (the
/// kernel doubles it for bookkeeping).
pub const UDP_RCVBUF: libc::c_int = 2 << 20;

/// Size the receive buffer of a host UDP socket: a sender on the host is
/// never slowed by uipd, so whatever arrives while the worker is busy or
/// descheduled waits here or is lost (`UdpRcvbufErrors`). Measured: netperf
/// UDP_STREAM host -> guest through a published port lost 90% in the
/// default 208 KiB (three 64 KiB datagrams) and about half as much with
/// 4 MiB. `SO_RCVBUFFORCE` where uipd may (CAP_NET_ADMIN: published
/// sockets are bound before the sandbox drops it), else `SO_RCVBUF`, which
/// the kernel clamps to `net.core.rmem_max`. Failures are ignored: the
/// default buffer still works.
pub fn size_udp_rcvbuf(fd: &OwnedFd) {
    if setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &UDP_RCVBUF).is_err()
        && let Err(e) = setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &UDP_RCVBUF)
    {
        trace!("uring: SO_RCVBUF failed: errno {e}");
    }
}

pub(super) fn setsockopt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
) -> Result<(), Errno> {
    // SAFETY:
    // - `fd` is an open socket, borrowed for the call;
    // - `val` points to a live, initialized `T` and the length passed is
    //   exactly its size; the kernel only reads it during the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(val).cast(),
            socklen_of::<T>(),
        )
    };
    if r < 0 { Err(last_errno()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, UdpSocket};
    use std::sync::mpsc;
    use std::thread;

    use super::*;

    const LONG: Duration = Duration::from_secs(10);

    fn fid(idx: u32) -> FlowId {
        FlowId { idx, gen_: 7 }
    }

    fn open(u: &mut Uring, flow: FlowId, proto: Proto, dst: SocketAddr) {
        u.push(SockOp::Open {
            flow,
            proto,
            dst,
            mss: Some(1460),
        });
    }

    /// The ring refuses what is not on [`ALLOWED_OPS`]: an `openat`
    /// submitted by hand completes with EACCES, so a compromised worker
    /// cannot open files through io_uring, which seccomp does not see.
    #[test]
    fn the_ring_refuses_ops_off_its_list() {
        let mut u = Uring::new(8).unwrap();
        let path = c"/etc/passwd";
        let sqe = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
            .flags(libc::O_RDONLY)
            .build()
            .user_data(0xdead);
        // SAFETY: `path` is a static literal, alive for the whole op.
        unsafe { u.ring.submission().push(&sqe).unwrap() };
        u.ring.submit_and_wait(1).unwrap();
        let cqe = u.ring.completion().next().unwrap();
        assert_eq!(cqe.user_data(), 0xdead);
        assert_eq!(
            cqe.result(),
            -libc::EACCES,
            "openat through the ring was not refused"
        );
    }

    /// Pump the ring until `n` host events arrived (panics after [`LONG`]).
    fn host_events(u: &mut Uring, n: usize) -> Vec<HostEvent> {
        let end = Instant::now() + LONG;
        let mut evs = Vec::new();
        while evs.len() < n {
            assert!(Instant::now() < end, "timed out; got {evs:?}");
            u.submit_and_wait(1, Some(Duration::from_millis(100)))
                .unwrap();
            u.drain(&mut |c| {
                if let Completion::Host(ev) = c {
                    evs.push(ev);
                }
            });
        }
        evs
    }

    fn one(u: &mut Uring) -> HostEvent {
        let mut evs = host_events(u, 1);
        assert_eq!(evs.len(), 1, "{evs:?}");
        evs.remove(0)
    }

    /// Pump the ring for `d`; returns every completion.
    fn quiet_for(u: &mut Uring, d: Duration) -> Vec<Completion> {
        let end = Instant::now() + d;
        let mut all = Vec::new();
        while Instant::now() < end {
            u.submit_and_wait(1, Some(Duration::from_millis(20)))
                .unwrap();
            u.drain(&mut |c| {
                if !matches!(c, Completion::Timeout) {
                    all.push(c);
                }
            });
        }
        all
    }

    fn connected(u: &mut Uring, flow: FlowId) {
        assert_eq!(
            one(u),
            HostEvent::Connected {
                flow,
                result: Ok(())
            }
        );
    }

    fn sent(u: &mut Uring, flow: FlowId) -> usize {
        match one(u) {
            HostEvent::Sent {
                flow: f,
                result: Ok(n),
            } if f == flow => n,
            ev => panic!("expected Sent for {flow:?}, got {ev:?}"),
        }
    }

    fn received(u: &mut Uring, flow: FlowId) -> Result<Vec<u8>, Errno> {
        match one(u) {
            HostEvent::Received { flow: f, result } if f == flow => result,
            ev => panic!("expected Received for {flow:?}, got {ev:?}"),
        }
    }

    fn closed_port_tcp() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn echo_server() -> (SocketAddr, thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(LONG)).unwrap();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => s.write_all(&buf[..n]).unwrap(),
                }
            }
            // Dropping `s` closes: the client sees EOF.
        });
        (addr, h)
    }

    #[test]
    fn token_round_trip() {
        let kinds = [
            OpKind::Connect,
            OpKind::Send,
            OpKind::Recv,
            OpKind::FrameWrite,
            OpKind::PollIn,
            OpKind::Wake,
            OpKind::Timeout,
        ];
        for kind in kinds {
            for slot in [0, 1, 12345, u32::MAX] {
                let t = Token::Op { kind, slot };
                assert_eq!(Token::unpack(t.pack()), Some(t));
            }
        }
        assert_eq!(Token::unpack(Token::Cancel.pack()), Some(Token::Cancel));
        assert_eq!(Token::unpack(0), None);
        assert_eq!(Token::unpack(1 << 40 | 2 << 56), None);
        assert_eq!(Token::unpack(99 << 56), None);
    }

    #[test]
    fn tcp_connect_send_recv_eof() {
        let (addr, echo) = echo_server();
        let mut u = Uring::new(32).unwrap();
        let f = fid(3);
        open(&mut u, f, Proto::Tcp, addr);
        connected(&mut u, f);
        assert_eq!(u.open_flows(), 1);
        u.push(SockOp::Send {
            flow: f,
            data: b"hello uring".to_vec(),
        });
        assert_eq!(sent(&mut u, f), 11);
        let mut got = Vec::new();
        while got.len() < 11 {
            u.push(SockOp::Recv { flow: f, max: 100 });
            got.extend(received(&mut u, f).unwrap());
        }
        assert_eq!(got, b"hello uring");
        // FIN to the echo server, which closes: EOF for us.
        u.push(SockOp::ShutdownWrite { flow: f });
        u.push(SockOp::Recv { flow: f, max: 100 });
        assert_eq!(received(&mut u, f), Ok(Vec::new()));
        echo.join().unwrap();
        u.push(SockOp::Close {
            flow: f,
            reset: false,
        });
        assert_eq!(u.open_flows(), 0);
        assert_eq!(u.open_sockets(), 0);
        assert_eq!(u.in_flight(), 0);
    }

    #[test]
    fn ops_pushed_before_connect_completes_run_after_it() {
        let (addr, echo) = echo_server();
        let mut u = Uring::new(32).unwrap();
        let f = fid(0);
        open(&mut u, f, Proto::Tcp, addr);
        u.push(SockOp::Send {
            flow: f,
            data: b"early".to_vec(),
        });
        u.push(SockOp::ShutdownWrite { flow: f });
        let evs = host_events(&mut u, 2);
        assert_eq!(
            evs,
            [
                HostEvent::Connected {
                    flow: f,
                    result: Ok(())
                },
                HostEvent::Sent {
                    flow: f,
                    result: Ok(5)
                }
            ]
        );
        let mut got = Vec::new();
        loop {
            u.push(SockOp::Recv { flow: f, max: 3 });
            let chunk = received(&mut u, f).unwrap();
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() <= 3);
            got.extend(chunk);
        }
        assert_eq!(got, b"early");
        echo.join().unwrap();
    }

    #[test]
    fn tcp_connect_refused() {
        let addr = closed_port_tcp();
        let mut u = Uring::new(8).unwrap();
        let f = fid(1);
        open(&mut u, f, Proto::Tcp, addr);
        u.push(SockOp::Recv { flow: f, max: 10 });
        let evs = host_events(&mut u, 2);
        assert_eq!(
            evs,
            [
                HostEvent::Connected {
                    flow: f,
                    result: Err(libc::ECONNREFUSED)
                },
                HostEvent::Received {
                    flow: f,
                    result: Err(libc::ECONNREFUSED)
                }
            ]
        );
        // Ops after the failure are answered with the same errno.
        u.push(SockOp::Send {
            flow: f,
            data: vec![1],
        });
        assert_eq!(
            one(&mut u),
            HostEvent::Sent {
                flow: f,
                result: Err(libc::ECONNREFUSED)
            }
        );
        u.push(SockOp::Close {
            flow: f,
            reset: true,
        });
        assert_eq!(u.open_sockets(), 0);
    }

    /// Deterministic test pattern (xorshift), so reordering would show.
    fn pattern(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    /// A Send larger than the socket buffers toward a peer that does not
    /// read yet: no answer until the socket took all of it, then one
    /// `Sent` with the whole count, byte-exact at the peer. With
    /// `MSG_WAITALL` the kernel finishes it; without (a kernel before
    /// 5.18), `Uring` restarts the rest itself.
    fn large_send_completes_whole(waitall: bool) {
        const LEN: usize = 8 << 20;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let peer = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // Do not read until told: the send fills the socket buffers.
            go_rx.recv_timeout(LONG).unwrap();
            s.set_read_timeout(Some(LONG)).unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all
        });
        let data = pattern(LEN);
        let mut u = Uring::new(8).unwrap();
        u.send_waitall = waitall;
        let f = fid(9);
        open(&mut u, f, Proto::Tcp, addr);
        connected(&mut u, f);
        u.push(SockOp::Send {
            flow: f,
            data: data.clone(),
        });
        assert!(
            quiet_for(&mut u, Duration::from_millis(300)).is_empty(),
            "a Send answered before the socket took all of it"
        );
        go_tx.send(()).unwrap();
        assert_eq!(sent(&mut u, f), LEN, "one Sent, the whole count");
        u.push(SockOp::ShutdownWrite { flow: f });
        let got = peer.join().unwrap();
        assert_eq!(got.len(), LEN);
        assert!(got == data, "peer got different bytes");
        if !waitall {
            assert!(u.short_sends() > 0, "the restart path was not taken");
        }
        u.push(SockOp::Close {
            flow: f,
            reset: false,
        });
    }

    #[test]
    fn tcp_send_larger_than_the_socket_buffers_completes_whole_with_waitall() {
        large_send_completes_whole(true);
    }

    #[test]
    fn tcp_send_larger_than_the_socket_buffers_completes_whole_by_restarts() {
        large_send_completes_whole(false);
    }

    #[test]
    fn close_with_reset_makes_peer_see_econnreset() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut u = Uring::new(8).unwrap();
        let f = fid(2);
        open(&mut u, f, Proto::Tcp, addr);
        connected(&mut u, f);
        let (mut peer, _) = l.accept().unwrap();
        peer.set_read_timeout(Some(LONG)).unwrap();
        // A recv in flight must not keep the socket (and the RST) back.
        u.push(SockOp::Recv { flow: f, max: 64 });
        u.submit_and_wait(0, None).unwrap();
        u.push(SockOp::Close {
            flow: f,
            reset: true,
        });
        assert!(quiet_for(&mut u, Duration::from_millis(100)).is_empty());
        assert_eq!(u.open_sockets(), 0, "fd closed once the cancel landed");
        let err = peer.read(&mut [0u8; 16]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    }

    #[test]
    fn no_event_after_close_even_with_recv_in_flight() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut u = Uring::new(8).unwrap();
        let f = fid(4);
        open(&mut u, f, Proto::Tcp, addr);
        connected(&mut u, f);
        let (mut peer, _) = l.accept().unwrap();
        peer.set_read_timeout(Some(LONG)).unwrap();
        u.push(SockOp::Recv { flow: f, max: 64 });
        u.submit_and_wait(0, None).unwrap();
        assert_eq!(u.in_flight(), 1);
        u.push(SockOp::Close {
            flow: f,
            reset: false,
        });
        assert_eq!(u.open_flows(), 0);
        // Data arriving now must not surface as an event for `f`.
        let _ = peer.write_all(b"late");
        // Ops pushed after Close are dropped too.
        u.push(SockOp::Recv { flow: f, max: 64 });
        let evs = quiet_for(&mut u, Duration::from_millis(300));
        assert!(evs.is_empty(), "{evs:?}");
        assert_eq!(u.in_flight(), 0);
        assert_eq!(u.open_sockets(), 0);
        // The socket really is closed: orderly close => EOF (or a reset,
        // since "late" was never read).
        match peer.read(&mut [0u8; 16]) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected EOF or reset, got {other:?}"),
        }
    }

    #[test]
    fn slot_reuse_with_new_generation_gets_no_stale_events() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut u = Uring::new(8).unwrap();
        let old = FlowId { idx: 5, gen_: 1 };
        let new = FlowId { idx: 5, gen_: 2 };
        open(&mut u, old, Proto::Tcp, addr);
        connected(&mut u, old);
        let (_p1, _) = l.accept().unwrap();
        u.push(SockOp::Recv { flow: old, max: 64 });
        u.submit_and_wait(0, None).unwrap();
        u.push(SockOp::Close {
            flow: old,
            reset: true,
        });
        open(&mut u, new, Proto::Tcp, addr);
        connected(&mut u, new);
        let (mut p2, _) = l.accept().unwrap();
        p2.write_all(b"new").unwrap();
        u.push(SockOp::Recv { flow: new, max: 64 });
        assert_eq!(received(&mut u, new), Ok(b"new".to_vec()));
        // Ops for the old generation are ignored.
        u.push(SockOp::Recv { flow: old, max: 64 });
        assert!(quiet_for(&mut u, Duration::from_millis(100)).is_empty());
        assert_eq!(u.open_sockets(), 1);
    }

    #[test]
    fn tcp_over_ipv6_loopback() {
        let Ok(l) = TcpListener::bind("[::1]:0") else {
            eprintln!("skipped: no IPv6 loopback");
            return;
        };
        let addr = l.local_addr().unwrap();
        let mut u = Uring::new(8).unwrap();
        let f = fid(11);
        open(&mut u, f, Proto::Tcp, addr);
        connected(&mut u, f);
        let (mut peer, from) = l.accept().unwrap();
        assert!(from.is_ipv6());
        peer.write_all(b"v6").unwrap();
        u.push(SockOp::Recv { flow: f, max: 64 });
        assert_eq!(received(&mut u, f), Ok(b"v6".to_vec()));
    }

    fn udp_echo() -> (SocketAddr, thread::JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let h = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            // Until no datagram for 2 s.
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                s.send_to(&buf[..n], from).unwrap();
            }
        });
        (addr, h)
    }

    #[test]
    fn udp_echo_round_trip() {
        let (addr, _echo) = udp_echo();
        let mut u = Uring::new(8).unwrap();
        let f = fid(6);
        open(&mut u, f, Proto::Udp, addr);
        // A datagram pushed right behind Open waits for the connect.
        u.push(SockOp::Send {
            flow: f,
            data: b"ping over udp".to_vec(),
        });
        u.push(SockOp::Recv { flow: f, max: 2048 });
        let evs = host_events(&mut u, 3);
        assert_eq!(
            evs,
            [
                HostEvent::Connected {
                    flow: f,
                    result: Ok(())
                },
                HostEvent::Sent {
                    flow: f,
                    result: Ok(13)
                },
                HostEvent::Received {
                    flow: f,
                    result: Ok(b"ping over udp".to_vec())
                },
            ]
        );
    }

    #[test]
    fn udp_to_closed_port_recv_is_econnrefused() {
        let addr = {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let mut u = Uring::new(8).unwrap();
        let f = fid(7);
        open(&mut u, f, Proto::Udp, addr);
        connected(&mut u, f);
        u.push(SockOp::Send {
            flow: f,
            data: b"anyone?".to_vec(),
        });
        assert_eq!(sent(&mut u, f), 7);
        u.push(SockOp::Recv { flow: f, max: 2048 });
        assert_eq!(received(&mut u, f), Err(libc::ECONNREFUSED));
    }

    #[test]
    fn backlog_beyond_sq_size_keeps_order_and_completes() {
        let (addr, _echo) = udp_echo();
        // 2 SQ entries, 12 flows x (connect, send, recv).
        let mut u = Uring::new(2).unwrap();
        let flows: Vec<FlowId> = (0..12).map(fid).collect();
        for (i, &f) in flows.iter().enumerate() {
            open(&mut u, f, Proto::Udp, addr);
            u.push(SockOp::Send {
                flow: f,
                data: vec![u8::try_from(i).unwrap(); 10],
            });
            u.push(SockOp::Recv { flow: f, max: 64 });
        }
        let evs = host_events(&mut u, 36);
        for (i, &f) in flows.iter().enumerate() {
            let mine: Vec<&HostEvent> = evs.iter().filter(|e| e.flow() == f).collect();
            assert_eq!(mine.len(), 3, "{mine:?}");
            assert!(matches!(
                mine[0],
                HostEvent::Connected { result: Ok(()), .. }
            ));
            assert!(matches!(mine[1], HostEvent::Sent { result: Ok(10), .. }));
            let HostEvent::Received { result: Ok(d), .. } = mine[2] else {
                panic!("{mine:?}")
            };
            assert_eq!(*d, vec![u8::try_from(i).unwrap(); 10]);
        }
        // Datagram flows keep receiving (one multishot receive each) until
        // they are closed.
        assert_eq!(u.in_flight(), 12);
        for &f in &flows {
            u.push(SockOp::Close {
                flow: f,
                reset: false,
            });
        }
        let evs = quiet_for(&mut u, Duration::from_millis(200));
        assert!(evs.is_empty(), "{evs:?}");
        assert_eq!(u.in_flight(), 0);
        assert_eq!(u.open_sockets(), 0);
    }

    #[test]
    fn one_recv_receives_every_datagram_of_a_udp_flow_in_order() {
        let (addr, _echo) = udp_echo();
        let mut u = Uring::new(64).unwrap();
        let f = fid(0);
        open(&mut u, f, Proto::Udp, addr);
        connected(&mut u, f);
        u.push(SockOp::Recv {
            flow: f,
            max: 65535,
        });
        // 200 datagrams up to the largest UDP payload, echoed back: more
        // than the 64 shared receive buffers, so the multishot receive runs
        // out of them and is re-armed on the way.
        let sizes: Vec<usize> = (0..200).map(|i| [1, 1400, 9000, 65507][i % 4]).collect();
        let mut got = Vec::new();
        let mut sent = 0;
        let start = Instant::now();
        while got.len() < sizes.len() && start.elapsed() < Duration::from_secs(10) {
            while sent < sizes.len() && sent < got.len() + 3 {
                let mut d = vec![0u8; sizes[sent]];
                d[0] = u8::try_from(sent % 256).unwrap();
                u.push(SockOp::Send { flow: f, data: d });
                sent += 1;
            }
            for ev in quiet_for(&mut u, Duration::from_millis(20)) {
                if let Completion::Host(HostEvent::Received { result, .. }) = ev {
                    got.push(result.unwrap());
                }
            }
        }
        assert_eq!(got.len(), sizes.len());
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.len(), sizes[i], "datagram {i}");
            assert_eq!(
                d[0],
                u8::try_from(i % 256).unwrap(),
                "datagram {i} out of order"
            );
        }
    }

    #[test]
    fn close_of_ops_still_in_backlog_drops_them() {
        let (addr, _echo) = udp_echo();
        let mut u = Uring::new(2).unwrap();
        let flows: Vec<FlowId> = (0..6).map(fid).collect();
        for &f in &flows {
            open(&mut u, f, Proto::Udp, addr);
        }
        assert_eq!(u.in_flight(), 6);
        for &f in &flows {
            u.push(SockOp::Close {
                flow: f,
                reset: false,
            });
        }
        // The four connects in the backlog are gone; two wait for CQEs.
        assert_eq!(u.in_flight(), 2);
        let evs = quiet_for(&mut u, Duration::from_millis(100));
        assert!(evs.is_empty(), "{evs:?}");
        assert_eq!(u.in_flight(), 0);
        assert_eq!(u.open_sockets(), 0);
    }

    fn eventfd() -> OwnedFd {
        // SAFETY: eventfd(2) takes no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just created and is owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    #[test]
    fn wake_via_eventfd() {
        let efd = eventfd();
        let raw = efd.as_raw_fd();
        let mut u = Uring::new(8).unwrap();
        u.arm_wake(raw);
        let waker = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            let one = 1u64.to_ne_bytes();
            // SAFETY: `raw` stays open (the test joins before dropping
            // `efd`); `one` is 8 readable bytes.
            let n = unsafe { libc::write(raw, one.as_ptr().cast(), 8) };
            assert_eq!(n, 8);
        });
        let start = Instant::now();
        let mut wakes = 0;
        while wakes == 0 {
            assert!(start.elapsed() < LONG);
            u.submit_and_wait(1, Some(LONG)).unwrap();
            u.drain(&mut |c| match c {
                Completion::Wake => wakes += 1,
                other => panic!("unexpected {other:?}"),
            });
        }
        waker.join().unwrap();
        assert_eq!(u.in_flight(), 0);
        drop(u);
        drop(efd);
    }

    fn timeout_returns_without_events(ext_arg: bool) {
        let mut u = Uring::new(8).unwrap();
        u.ext_arg &= ext_arg;
        let t = Duration::from_millis(80);
        let start = Instant::now();
        u.submit_and_wait(1, Some(t)).unwrap();
        let waited = start.elapsed();
        assert!(waited >= t, "returned after {waited:?}");
        assert!(waited < LONG);
        let mut got = Vec::new();
        u.drain(&mut |c| got.push(c));
        assert!(matches!(got[..], [Completion::Timeout]), "{got:?}");
        assert_eq!(u.in_flight(), 0);
    }

    #[test]
    fn timeout_returns_without_events_ext_arg() {
        timeout_returns_without_events(true);
    }

    #[test]
    fn timeout_returns_without_events_timeout_sqe() {
        timeout_returns_without_events(false);
    }

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair(2) writes.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: both fds were just created and are owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn fallback_timeouts_do_not_pile_up() {
        let (a, _b) = seqpacket_pair();
        let mut u = Uring::new(8).unwrap();
        u.ext_arg = false;
        let start = Instant::now();
        for _ in 0..20 {
            u.push_frame_write(a.as_raw_fd(), vec![0; 16]);
            u.submit_and_wait(1, Some(LONG)).unwrap();
            u.drain(&mut |c| assert!(matches!(c, Completion::FrameWritten { result: Ok(16) })));
        }
        // Let the last frame write and the removals land.
        u.submit_and_wait(0, None).unwrap();
        thread::sleep(Duration::from_millis(20));
        u.drain(&mut |c| assert!(matches!(c, Completion::FrameWritten { result: Ok(16) })));
        assert!(start.elapsed() < LONG);
        assert!(u.in_flight() <= 2, "{} ops in flight", u.in_flight());
        // Dropping removes the pending 10 s timeout instead of waiting.
        let start = Instant::now();
        drop(u);
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn frame_write_and_spare_buffer() {
        let (a, b) = seqpacket_pair();
        let mut u = Uring::new(8).unwrap();
        assert!(u.take_spare_buffer().is_none());
        let frame: Vec<u8> = (0..=255).collect();
        u.push_frame_write(a.as_raw_fd(), frame.clone());
        let mut written = None;
        while written.is_none() {
            u.submit_and_wait(1, Some(LONG)).unwrap();
            u.drain(&mut |c| match c {
                Completion::FrameWritten { result } => written = Some(result.unwrap()),
                other => panic!("unexpected {other:?}"),
            });
        }
        assert_eq!(written, Some(256));
        let mut got = [0u8; 512];
        // SAFETY: `b` is open; `got` has 512 writable bytes.
        let n = unsafe { libc::recv(b.as_raw_fd(), got.as_mut_ptr().cast(), got.len(), 0) };
        assert_eq!(usize::try_from(n).unwrap(), 256);
        assert_eq!(&got[..256], &frame[..]);
        let spare = u.take_spare_buffer().unwrap();
        assert!(spare.is_empty() && spare.capacity() >= 256);
    }

    #[test]
    fn drop_with_ops_in_flight_cancels_and_closes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let efd = eventfd();
        let mut u = Uring::new(8).unwrap();
        let f = fid(0);
        open(&mut u, f, Proto::Tcp, addr);
        connected(&mut u, f);
        let (mut peer, _) = l.accept().unwrap();
        peer.set_read_timeout(Some(LONG)).unwrap();
        u.push(SockOp::Recv { flow: f, max: 64 });
        u.arm_wake(efd.as_raw_fd());
        u.submit_and_wait(0, None).unwrap();
        let start = Instant::now();
        drop(u);
        assert!(start.elapsed() < DROP_DRAIN, "drop drained by cancelling");
        let err = peer.read(&mut [0u8; 16]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    }

    #[test]
    fn open_of_icmp_in_this_namespace_succeeds_or_fails_cleanly() {
        // ping_group_range decides; either way the contract holds.
        let mut u = Uring::new(8).unwrap();
        let f = fid(1);
        open(
            &mut u,
            f,
            Proto::Icmp,
            SocketAddr::from(([127, 0, 0, 1], 0)),
        );
        match one(&mut u) {
            HostEvent::Connected { result: Ok(()), .. } => {}
            HostEvent::Connected { result: Err(e), .. } => {
                assert_eq!(u.open_sockets(), 0);
                u.push(SockOp::Send {
                    flow: f,
                    data: vec![8, 0, 0, 0, 0, 0, 0, 0],
                });
                assert_eq!(
                    one(&mut u),
                    HostEvent::Sent {
                        flow: f,
                        result: Err(e)
                    }
                );
            }
            ev => panic!("{ev:?}"),
        }
        u.push(SockOp::Close {
            flow: f,
            reset: false,
        });
        assert!(quiet_for(&mut u, Duration::from_millis(20)).is_empty());
    }

    /// Bring `lo` up in the calling thread's network namespace.
    fn lo_up() -> io::Result<()> {
        // SAFETY: socket(2) takes no pointers.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `s` was just created and is owned by nobody else.
        let s = unsafe { OwnedFd::from_raw_fd(s) };
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, &c) in ifr.ifr_name.iter_mut().zip(b"lo") {
            *d = libc::c_char::try_from(c).unwrap();
        }
        // SAFETY: `s` is open; `ifr` is a valid ifreq the kernel fills.
        if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut ifr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let up = libc::c_short::try_from(libc::IFF_UP).unwrap();
        // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
        unsafe { ifr.ifr_ifru.ifru_flags |= up };
        // SAFETY: `s` is open; `ifr` is a valid ifreq the kernel reads.
        if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &raw const ifr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    #[test]
    fn icmp_echo_in_private_netns() {
        let sysctl = "/proc/sys/net/ipv4/ping_group_range";
        let before = std::fs::read_to_string(sysctl).unwrap();
        let t = thread::spawn(|| -> Result<(), String> {
            // SAFETY: unshare(2) takes no pointers; CLONE_NEWNET moves only
            // this thread into a new network namespace, and the thread ends
            // with the test.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!("unshare: {}", io::Error::last_os_error()));
            }
            lo_up().map_err(|e| format!("lo up: {e}"))?;
            // /proc/sys/net resolves to the network namespace of the task
            // that opens it: this thread's new one.
            let path = "/proc/sys/net/ipv4/ping_group_range";
            std::fs::write(path, "0 2147483647").map_err(|e| format!("sysctl: {e}"))?;
            let now = std::fs::read_to_string(path).unwrap();
            assert_eq!(
                now.split_whitespace().collect::<Vec<_>>(),
                ["0", "2147483647"]
            );

            let mut u = Uring::new(8).unwrap();
            let f = fid(0);
            open(
                &mut u,
                f,
                Proto::Icmp,
                SocketAddr::from(([127, 0, 0, 1], 0)),
            );
            connected(&mut u, f);
            // Echo request: type 8, code 0; the kernel sets id and checksum.
            let mut req = vec![8, 0, 0, 0, 0, 0, 0, 1];
            req.extend_from_slice(b"uipd ping payload");
            u.push(SockOp::Send {
                flow: f,
                data: req.clone(),
            });
            assert_eq!(sent(&mut u, f), req.len());
            u.push(SockOp::Recv { flow: f, max: 2048 });
            let reply = received(&mut u, f).unwrap();
            assert_eq!(reply.len(), req.len());
            assert_eq!(reply[0], 0, "echo reply type");
            assert_eq!(&reply[6..], &req[6..], "sequence and payload");
            Ok(())
        });
        match t.join().unwrap() {
            Ok(()) => {
                // The namespace of this (test) thread is untouched.
                let after = std::fs::read_to_string(sysctl).unwrap();
                assert_eq!(
                    before, after,
                    "the sysctl leaked out of the private namespace"
                );
            }
            Err(e) if e.starts_with("unshare") => eprintln!("skipped: {e}"),
            Err(e) => panic!("{e}"),
        }
    }

    /// Completions other than host events, until `pred` holds (bounded).
    fn until(u: &mut Uring, mut pred: impl FnMut(Completion) -> bool) {
        let end = Instant::now() + LONG;
        let mut done = false;
        while !done {
            assert!(Instant::now() < end, "timed out");
            u.submit_and_wait(1, Some(Duration::from_millis(100)))
                .unwrap();
            u.drain(&mut |c| done |= pred(c));
        }
    }

    #[test]
    fn published_tcp_accept_attach_and_remove() {
        use std::io::{Read, Write};
        let mut u = Uring::new(64).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        u.add_listener(7, Proto::Tcp, OwnedFd::from(l));
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(LONG)).unwrap();
        let mut accepted = None;
        until(&mut u, |c| match c {
            Completion::Accepted { listener, fd, peer } => {
                assert_eq!(listener, 7);
                assert_eq!(peer, client.local_addr().unwrap());
                accepted = Some(fd);
                true
            }
            _ => false,
        });
        let flow = fid(3);
        u.attach_tcp(flow, accepted.unwrap());
        // Attached: ops run at once, no Connected event.
        u.push(SockOp::Send {
            flow,
            data: b"from guest".to_vec(),
        });
        u.push(SockOp::Recv { flow, max: 100 });
        client.write_all(b"from host").unwrap();
        let evs = host_events(&mut u, 2);
        assert!(evs.contains(&HostEvent::Sent {
            flow,
            result: Ok(10)
        }));
        assert!(evs.contains(&HostEvent::Received {
            flow,
            result: Ok(b"from host".to_vec())
        }));
        let mut buf = [0u8; 10];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"from guest");
        // Removed: the port refuses new clients at once.
        u.remove_listener(7);
        assert_eq!(
            std::net::TcpStream::connect(addr).unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
        assert!(u.listener_ids().is_empty());
        // The established connection is unaffected.
        u.push(SockOp::Close { flow, reset: false });
        let _ = quiet_for(&mut u, Duration::from_millis(50));
        assert_eq!(client.read(&mut buf).unwrap(), 0, "EOF after Close");
    }

    #[test]
    fn published_udp_datagrams_and_replies_through_the_shared_socket() {
        let mut u = Uring::new(64).unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        u.add_listener(9, Proto::Udp, OwnedFd::from(sock));
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(LONG)).unwrap();
        for i in 0..3u8 {
            client.send_to(&[i; 100], addr).unwrap();
        }
        let mut got = Vec::new();
        until(&mut u, |c| {
            if let Completion::Datagram {
                listener,
                peer,
                data,
            } = c
            {
                assert_eq!(listener, 9);
                assert_eq!(peer, client.local_addr().unwrap());
                got.push(data);
            }
            got.len() == 3
        });
        assert_eq!(got, vec![vec![0; 100], vec![1; 100], vec![2; 100]]);
        let flow = fid(4);
        u.attach_udp(flow, 9, client.local_addr().unwrap());
        u.push(SockOp::Send {
            flow,
            data: b"reply".to_vec(),
        });
        assert_eq!(
            host_events(&mut u, 1),
            vec![HostEvent::Sent {
                flow,
                result: Ok(5)
            }]
        );
        let mut buf = [0u8; 16];
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"reply"[..], addr),
            "from the published port"
        );
        // Closing the flow leaves the published socket open.
        u.push(SockOp::Close { flow, reset: false });
        client.send_to(b"again", addr).unwrap();
        let mut again = false;
        until(&mut u, |c| {
            again |= matches!(c, Completion::Datagram { ref data, .. } if data == b"again");
            again
        });
    }
}
