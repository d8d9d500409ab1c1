//! TCP between the stack and [`Conn`]: guest segments in, frames and
//! socket operations out.
//!
//! A guest segment of a known flow, a host completion, a pending ACK, a
//! timer or freed memory all drive the flow's connection the same way
//! ([`Stack::drive_tcp`]): call it with an emitter that turns its
//! segments into frames to the guest ([`tcp_emitter`]), then collect what
//! it asks for: the frames, a pending ACK (sent at the end of the batch by
//! [`Stack::poll`]), a wait for memory, and its removal. A bare SYN with
//! no flow opens one (or is refused with a RST); any other segment with no
//! flow gets a RST (RFC 9293 §3.10.7.1).

use std::net::{IpAddr, SocketAddr};

use super::config::tso_payload;
use super::l2::{L2, L4_START, TCP_CSUM_OFFSET, partial_csum_hdr_at};
use super::tcp::conn::{Conn, DELAYED_ACK, Emit, Verdict};
use super::wire::vnet_hdr::{flags as vnet_flags, gso};
use super::wire::{self, SeqNumber, TcpPacket, TcpRepr, VnetHdrRepr, ip_proto};
use super::{
    Actions, DropReason, FlowId, FlowKey, FlowState, Instant, Proto, SockOp, Stack, check, ipv6,
    tcp,
};

/// Free budget at which [`Stack::poll`] wakes the flows waiting for memory
/// (less would only wake them to wait again).
pub(super) const MEM_WAKE: usize = 64 << 10;
/// ... and at least this much per connection sharing the budget (each
/// connection's window is its share of what is free).
pub(super) const MEM_WAKE_PER_CONN: usize = 2 << 10;

/// Whether [`Stack::drive_tcp`] queues the ACK a connection left pending
/// for the end of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PendingAck {
    /// Queue it: the input was a guest segment or a host completion, in
    /// the middle of a batch.
    Queue,
    /// Leave it: the input was the end of the batch itself, a timer or
    /// freed memory (a connection that cannot send its ACK now keeps the
    /// flag, and queueing it again would spin [`Stack::poll`]).
    Leave,
}

impl Stack {
    pub(super) fn tcp(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        payload: &[u8],
        verify: bool,
        now: Instant,
        out: &mut Actions,
    ) {
        let pkt = check!(self, TcpPacket::new_checked(payload));
        let seg = check!(self, TcpRepr::parse(&pkt, src, dst, verify));
        let key = FlowKey {
            proto: Proto::Tcp,
            guest: SocketAddr::from((src, seg.src_port)),
            remote: SocketAddr::from((dst, seg.dst_port)),
        };
        if let Some(id) = self.flows.lookup(&key) {
            let offload = self.cfg.offload;
            return self.drive_tcp(id, PendingAck::Queue, out, |conn, emit, ops| {
                let was = conn.state();
                let v = conn.on_segment(&seg, now, emit, ops);
                if was == tcp::conn::State::SynSent
                    && conn.state() == tcp::conn::State::Established
                    && let Some(max) = tso_payload(offload, &key, conn.mss())
                {
                    // Inbound: the guest's MSS is known only now.
                    conn.set_max_segment(max);
                }
                v
            });
        }
        let l2 = self.l2();
        // Not here: perhaps another worker's (a published flow, or one
        // whose frames changed queue). Even a bare SYN: a retransmission.
        if let Some(w) = self.held_elsewhere(&key) {
            return self.forward_l4(w, src, dst, ip_proto::TCP, payload, !verify, out);
        }
        // No flow: only a bare SYN opens one.
        let bare_syn = seg.flags.syn && seg.ack_number.is_none() && !seg.flags.fin;
        if seg.flags.rst {
            return;
        }
        if !bare_syn {
            self.drop(DropReason::NoFlow);
            return self.tcp_reset_reply(&key, &seg, l2, out);
        }
        if self.is_bad_dst(dst) {
            return self.drop(DropReason::BadAddress);
        }
        let host_dst = match self.map_remote(Proto::Tcp, SocketAddr::new(dst, seg.dst_port)) {
            Ok(a) => a,
            Err(reason) => {
                log::debug!("tcp {:?} -> {:?}: {}", key.guest, key.remote, reason.name());
                self.drop(reason);
                return self.tcp_reset_reply(&key, &seg, l2, out);
            }
        };
        let iss = self.next_isn();
        // Conn takes 40 bytes of IPv4 + TCP headers off the MTU; IPv6's
        // header is 20 bytes longer.
        let mtu = match dst {
            IpAddr::V4(_) => usize::from(self.cfg.mtu),
            IpAddr::V6(_) => usize::from(self.cfg.mtu).saturating_sub(20),
        };
        let offload = self.cfg.offload;
        let mem = self.cfg.memory.clone();
        let Some(id) = self.flows.insert_with(key, |id| {
            let mut conn = Conn::new(id, &seg, iss, mtu, mem);
            if let Some(max) = tso_payload(offload, &key, conn.mss()) {
                conn.set_max_segment(max);
            }
            FlowState::Tcp(Box::new(conn))
        }) else {
            // Another worker claimed the key since the lookup above (the
            // guest's SYN and its retransmission on two queues at once).
            if let Some(w) = self.held_elsewhere(&key) {
                return self.forward_l4(w, src, dst, ip_proto::TCP, payload, !verify, out);
            }
            self.drop(DropReason::FlowLimit);
            return self.tcp_reset_reply(&key, &seg, l2, out);
        };
        self.counters.tcp_opened += 1;
        out.ops.push(SockOp::Open {
            flow: id,
            proto: Proto::Tcp,
            dst: host_dst,
        });
    }

    /// RST for a segment that matches no connection (RFC 9293 §3.10.7.1).
    pub(super) fn tcp_reset_reply(
        &mut self,
        key: &FlowKey,
        seg: &TcpRepr<'_>,
        l2: L2,
        out: &mut Actions,
    ) {
        let (seq, ack) = match seg.ack_number {
            Some(a) => (a, None),
            None => (SeqNumber(0), Some(seg.seq_number + seg.segment_len())),
        };
        let repr = TcpRepr {
            src_port: 0,
            dst_port: 0,
            flags: wire::tcp::Flags {
                rst: true,
                ..Default::default()
            },
            seq_number: seq,
            ack_number: ack,
            window_len: 0,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            payload: &[],
        };
        let mut frames = Vec::new();
        tcp_emitter(l2, key, 0, &mut frames)(&repr);
        self.push_frames(out, frames);
    }

    /// A host client connected to a published port that forwards to the
    /// guest's `guest_port` (the dataplane accepted it). Opens a connection
    /// toward the guest: a SYN goes out now. Returns the new flow, to which
    /// the dataplane attaches the accepted socket (already connected: no
    /// `Open`, no `Connected` event), or `None` when the stack refuses it
    /// (flow limit): the dataplane then resets the host client.
    pub fn accept_tcp(
        &mut self,
        peer: SocketAddr,
        guest_port: u16,
        now: Instant,
        out: &mut Actions,
    ) -> Option<FlowId> {
        let Some(key) = self.inbound_source(Proto::Tcp, peer, guest_port) else {
            self.drop(DropReason::FlowLimit);
            return None;
        };
        self.solicit_guest_mac(out);
        let iss = self.next_isn();
        let mtu = usize::from(self.cfg.mtu);
        let l2 = self.l2();
        let mut frames = Vec::new();
        let mem = self.cfg.memory.clone();
        let id = self.flows.insert_with(key, |id| {
            let mut emit = tcp_emitter(l2, &key, 0, &mut frames);
            FlowState::Tcp(Box::new(Conn::new_to_guest(
                id, iss, mtu, now, mem, &mut emit,
            )))
        });
        let Some(id) = id else {
            self.drop(DropReason::FlowLimit);
            return None;
        };
        self.counters.published_tcp += 1;
        self.push_frames(out, frames);
        Some(id)
    }

    /// Re-drive the flows the budget held back, once it has room again
    /// (memory released here or by another worker's flows): each re-posts
    /// its `Recv` and sends a window update if its window reopened. A flow
    /// still short goes back on the list. The list starts at a rotating
    /// place, so no flow is always served last.
    pub(super) fn wake_mem_waiters(&mut self, out: &mut Actions) {
        let mem = &self.cfg.memory;
        if self.mem_wait.is_empty()
            || mem.available() < MEM_WAKE.max(mem.conns() * MEM_WAKE_PER_CONN)
        {
            return;
        }
        let mut waiting = std::mem::take(&mut self.mem_wait);
        waiting.sort_unstable();
        waiting.dedup();
        self.mem_rotor = self.mem_rotor.wrapping_add(1);
        let start = self.mem_rotor % waiting.len();
        waiting.rotate_left(start);
        for id in waiting {
            self.drive_tcp(id, PendingAck::Leave, out, |conn, emit, ops| {
                conn.on_memory(emit, ops);
                Verdict::Keep
            });
        }
    }

    /// Drive flow `id`'s connection with `call` (an input: a segment, a
    /// host completion, a timer, …), then collect what it asked for: its
    /// segments as frames to the guest, its wait for memory
    /// ([`Stack::wake_mem_waiters`]), an ACK it left pending (when `ack` is
    /// [`PendingAck::Queue`]), and the flow's removal. No-op if `id` is not
    /// a live TCP flow.
    pub(super) fn drive_tcp(
        &mut self,
        id: FlowId,
        ack: PendingAck,
        out: &mut Actions,
        call: impl FnOnce(&mut Conn, &mut Emit<'_>, &mut Vec<SockOp>) -> Verdict,
    ) {
        let l2 = self.l2();
        let Some((key, FlowState::Tcp(conn))) = self.flows.get_mut(id) else {
            return;
        };
        let key = *key;
        let mss = conn.mss();
        let mut frames = Vec::new();
        let verdict = call(
            conn,
            &mut tcp_emitter(l2, &key, mss, &mut frames),
            &mut out.ops,
        );
        let queue_ack = ack == PendingAck::Queue && conn.ack_pending();
        let delayable = conn.ack_delayable();
        if conn.take_mem_wait() {
            self.mem_wait.push(id);
        }
        self.push_frames(out, frames);
        if queue_ack {
            if delayable {
                self.delack_new.push(id);
            } else {
                self.ack_list.push(id);
            }
        }
        if verdict == Verdict::Remove {
            self.flows.remove(id);
        }
    }

    /// Give the ACKs queued as delayable in this batch their deadline
    /// ([`DELAYED_ACK`] from `now`), and send those that are due. An ACK
    /// that data to the guest carried meanwhile is no longer pending, and
    /// flushing it does nothing.
    pub(super) fn delayed_acks(&mut self, now: Instant, out: &mut Actions) {
        for id in std::mem::take(&mut self.delack_new) {
            if !self.delack.iter().any(|&(_, f)| f == id) {
                self.delack.push((now + DELAYED_ACK, id));
            }
        }
        if !self.delack.iter().any(|&(t, _)| t <= now) {
            return;
        }
        let mut due = Vec::new();
        self.delack.retain(|&(t, id)| {
            if t <= now {
                due.push(id);
            }
            t > now
        });
        for id in due {
            self.drive_tcp(id, PendingAck::Leave, out, |conn, emit, _| {
                conn.flush_ack(emit);
                Verdict::Keep
            });
        }
    }
}

/// A callback that turns a connection's [`TcpRepr`] into a frame to the
/// guest: the flow's ports and addresses (remote → guest) are filled in.
///
/// With a virtio-net header (virtio 1.2 §5.1.6.2, Linux `tun_get_user` →
/// `virtio_net_hdr_to_skb`): a segment whose payload exceeds `mss` (only
/// with `offload.tso`, see [`Conn::set_max_segment`]) becomes a TSO
/// super-frame: `gso_type` TCPV4, `gso_size` = `mss`, `hdr_len` = Ethernet +
/// IPv4 + TCP header, `NEEDS_CSUM` at `csum_start` 34 / `csum_offset` 16,
/// the checksum field holding the pseudo-header sum over the whole segment
/// (Linux's TSO adjusts it per segment). Other segments: a partial checksum
/// with `offload.csum`, else a computed one marked `DATA_VALID`. `mss` 0
/// never makes a super-frame.
pub(super) fn tcp_emitter<'a>(
    l2: L2,
    key: &FlowKey,
    mss: usize,
    frames: &'a mut Vec<Vec<u8>>,
) -> impl FnMut(&TcpRepr<'_>) + 'a {
    let key = *key;
    move |repr: &TcpRepr<'_>| {
        let (guest, remote) = (key.guest, key.remote);
        let mut r = *repr;
        r.src_port = remote.port();
        r.dst_port = guest.port();
        let (l4_start, gso_type) = match remote {
            SocketAddr::V4(_) => (L4_START, gso::TCPV4),
            SocketAddr::V6(_) => (ipv6::L4_START6, gso::TCPV6),
        };
        let gso = l2.offload.vnet_hdr && mss > 0 && r.payload.len() > mss;
        let partial = gso || (l2.offload.vnet_hdr && l2.offload.csum);
        let hdr = if !l2.offload.vnet_hdr {
            VnetHdrRepr::PLAIN
        } else if gso {
            VnetHdrRepr {
                gso_type,
                // Cannot fail: at most 14 + 40 + 60.
                hdr_len: u16::try_from(l4_start + r.header_len()).unwrap_or(u16::MAX),
                // Cannot fail: the MSS came from a 16-bit option.
                gso_size: u16::try_from(mss).unwrap_or(u16::MAX),
                ..partial_csum_hdr_at(l4_start, TCP_CSUM_OFFSET)
            }
        } else if partial {
            partial_csum_hdr_at(l4_start, TCP_CSUM_OFFSET)
        } else {
            VnetHdrRepr {
                flags: vnet_flags::DATA_VALID,
                ..VnetHdrRepr::PLAIN
            }
        };
        // The payload goes into the frame once, behind the headers.
        let Some((mut buf, l4_at)) = l2.ip_frame(
            remote.ip(),
            guest.ip(),
            ip_proto::TCP,
            r.buffer_len(),
            &hdr,
            r.payload,
        ) else {
            return;
        };
        let mut t = TcpPacket::new_unchecked(&mut buf[l4_at..]);
        r.emit_around_payload(&mut t, remote.ip(), guest.ip(), partial);
        frames.push(buf);
    }
}
