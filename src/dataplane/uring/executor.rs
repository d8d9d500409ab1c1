//! The stack's socket ops on io_uring: `Open` (a synchronous `socket()`
//! plus a connect SQE), `Send`, `Recv` (one-shot, or a multishot receive
//! into the shared datagram buffer ring for UDP and ICMP flows),
//! `ShutdownWrite` and `Close`, with the flow table (`flows`, checked by
//! generation) and the socket table (`socks`, an fd closed only after its
//! last op's CQE). The rules the stack relies on are in the
//! [module docs](super).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types};
use log::{debug, warn};

use super::{
    Completion, DGRAM_MAX, MAX_RECV, Op, OpKind, OpRes, RECV_BGID, RECV_RING_ENTRIES, Token, Uring,
    clamp_u32,
};
use crate::dataplane::bufring::BufRing;
use crate::dataplane::io::{FlowOps, Phase, route};
use crate::dataplane::sock::{last_errno, new_socket, send_to, setsockopt};
use crate::stack::flow::FlowId;
use crate::stack::ops::{Errno, HostEvent, Proto, SockOp};
use crate::sys::sockaddr::SockAddr;

/// A host socket and the ops that reference its fd.
pub(super) struct Sock {
    pub(super) fd: OwnedFd,
    /// `ops` slots of the socket ops in flight on `fd`.
    pub(super) ops: Vec<u32>,
    /// The flow is gone; close `fd` when `ops` is empty.
    pub(super) closing: bool,
}

/// A live flow: opened by the stack and not yet closed.
pub(super) struct Flow {
    pub(super) id: FlowId,
    /// `None` when `socket()` failed.
    pub(super) sock: Option<u32>,
    pub(super) phase: Phase,
    /// Sends pushed and not yet completed.
    pub(super) sends_in_flight: u32,
    /// A flow of a published UDP port: `sock` is the listener's (shared,
    /// never closed by the flow) and sends go to this peer with `sendto`.
    pub(super) peer: Option<SocketAddr>,
    /// A `ShutdownWrite` that waits for `sends_in_flight` to reach 0.
    pub(super) shutdown_pending: bool,
    /// A UDP or ICMP flow: once the stack's first `Recv` arrives, it
    /// receives continuously (see [`Uring::push`]).
    pub(super) dgram: bool,
    /// A UDP flow: its datagrams may go out segmented (`gso`).
    pub(super) udp: bool,
    /// A segmented send failed on this flow: it sends one datagram each.
    pub(super) no_segments: bool,
}

impl Uring {
    /// Bind outbound sockets of each family to this source address
    /// (connections to loopback keep the kernel's choice).
    pub fn set_outbound(&mut self, v4: Option<std::net::Ipv4Addr>, v6: Option<std::net::Ipv6Addr>) {
        self.outbound = (v4, v6);
    }

    /// Queue one socket op (takes ownership of its data). Never blocks.
    /// A UDP datagram may wait in the segmentation batch (`gso`) until
    /// the next other op or submit.
    pub fn push(&mut self, op: SockOp) {
        if let Some(op) = self.batch_udp(op) {
            route(self, op);
        }
    }

    /// Abort every flow (`Close { reset: true }` for each): used when the
    /// guest goes away, so peers see a reset rather than a clean end of data.
    pub fn close_all(&mut self) {
        self.flush_batch();
        let ids: Vec<FlowId> = self.flows.iter().flatten().map(|f| f.id).collect();
        for id in ids {
            self.close(id, true);
        }
    }

    // ---- ops ----

    /// The socket's owner is gone: cancel its ops (dropping those still in
    /// the backlog) and close the fd once no op references it.
    pub(super) fn abandon_sock(&mut self, s: u32) {
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

    pub(super) fn shutdown_write(&self, s: u32) {
        let fd = self.sock_fd(s);
        // SAFETY:
        // - `fd` is an open socket owned by `socks[s]` (closed only when no
        //   op and no flow references it; the caller's flow does);
        // - shutdown(2) takes no pointers.
        if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
            debug!("uring: shutdown(SHUT_WR) failed: errno {}", last_errno());
        }
    }

    pub(super) fn on_connect(
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

    /// The CQE of a `Send` (its op slot already freed).
    pub(super) fn on_send_cqe(
        &mut self,
        mut op: Op,
        mut res: Result<i32, Errno>,
        out: &mut impl FnMut(Completion),
    ) -> usize {
        // A stream socket that took part of a Send (its buffer was
        // full, a signal): the rest goes out from where it stopped,
        // and the flow hears once, with the whole count. The stack
        // hands over its bytes without keeping a copy, so a short
        // count must not reach it as a success.
        if let (Ok(n), OpRes::Sending { buf, done }, Some(id), Some(s)) =
            (res, &mut op.res, op.flow, op.sock)
        {
            *done += usize::try_from(n).unwrap_or(0);
            let total = i32::try_from(*done).unwrap_or(i32::MAX);
            // A live flow's socket is not closing: the caller's
            // `sock_op_done` left its fd open for the restart.
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

    pub(super) fn on_send(
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

    pub(super) fn on_recv(
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
    pub(super) fn recv_ring_ready(&mut self) -> bool {
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
    pub(super) fn arm_recv_multi(&mut self, id: FlowId, s: u32) {
        let fd = self.sock_fd(s);
        let op = Op::of_flow(OpKind::RecvMulti, id, s, OpRes::None);
        self.start(op, |_| {
            opcode::RecvMulti::new(types::Fd(fd), RECV_BGID).build()
        });
    }

    /// A CQE of a datagram flow's multishot receive: a datagram (copied
    /// out of the shared buffer at once, so one busy flow cannot starve the
    /// others of buffers) and/or the end of the receive, which is re-armed
    /// while the flow lives.
    pub(super) fn on_recv_multi(
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

    pub(super) fn flow_mut(&mut self, id: FlowId) -> Option<&mut Flow> {
        self.flows
            .get_mut(id.idx as usize)?
            .as_mut()
            .filter(|f| f.id.gen_ == id.gen_)
    }

    pub(super) fn take_flow(&mut self, id: FlowId) -> Option<Flow> {
        let slot = self.flows.get_mut(id.idx as usize)?;
        if slot.as_ref()?.id.gen_ != id.gen_ {
            return None;
        }
        self.live_flows -= 1;
        slot.take()
    }

    pub(super) fn alloc_sock(&mut self, fd: OwnedFd) -> u32 {
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

    pub(super) fn sock_fd(&self, s: u32) -> RawFd {
        self.socks[s as usize]
            .as_ref()
            .map_or(-1, |sock| sock.fd.as_raw_fd())
    }

    /// An op on socket `s` completed: forget it, and close the socket if its
    /// flow is gone and this was its last op.
    pub(super) fn sock_op_done(&mut self, s: u32, slot: u32) {
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
    pub(super) fn release_sock(&mut self, s: u32) {
        if let Some(sock) = self.socks[s as usize].take() {
            debug_assert!(sock.ops.is_empty(), "no op references a released fd");
            drop(sock.fd);
            self.free_socks.push(s);
        }
    }
}

/// The SQE of a stream `Send` (`OpRes::Sending`): the bytes from `done`
/// on. `MSG_WAITALL` lets the kernel itself retry a short send (5.18+);
/// [`Uring::complete`] restarts what an older kernel returns short.
pub(super) fn send_entry(fd: RawFd, res: &mut OpRes, waitall: bool) -> squeue::Entry {
    let OpRes::Sending { buf, done } = res else {
        unreachable!("a stream send owns a buffer")
    };
    let rest = buf.get(*done..).unwrap_or_default();
    opcode::Send::new(types::Fd(fd), rest.as_ptr(), clamp_u32(rest.len()))
        .flags(libc::MSG_NOSIGNAL | if waitall { libc::MSG_WAITALL } else { 0 })
        .build()
}

impl FlowOps for Uring {
    const NAME: &'static str = "uring";

    fn phase_mut(&mut self, id: FlowId) -> Option<&mut Phase> {
        self.flow_mut(id).map(|f| &mut f.phase)
    }

    fn open(&mut self, id: FlowId, proto: Proto, dst: SocketAddr) {
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
        let (sock, phase) = match new_socket(proto, &dst, src, false) {
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
            udp: proto == Proto::Udp,
            no_segments: false,
        });
        self.live_flows += 1;
        if let Some(s) = sock {
            let fd = self.sock_fd(s);
            let op = Op::of_flow(
                OpKind::Connect,
                id,
                s,
                OpRes::Addr(Box::new(SockAddr::new(&dst))),
            );
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
                self.start_send(id, s, data);
            }
            SockOp::Recv { max, .. } => {
                let max = max.min(MAX_RECV);
                let fd = self.sock_fd(s);
                let buf = self.recv_buffer(max);
                let op = Op::of_flow(OpKind::Recv, id, s, OpRes::Buf(buf));
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
}
