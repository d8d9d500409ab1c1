//! UDP and ICMP echo flows ("datagram flows"), and UDP to the guest.
//!
//! A guest datagram to a new remote opens a flow ([`DgramFlow`]) and a
//! connected host socket (`Open`); datagrams wait in the flow's queue
//! (at most [`DGRAM_QUEUE`]) until the socket is connected, then go out as
//! `Send`s. What the host socket receives comes back on the same flow
//! ([`Stack::dgram_event`]). Every queued or in-flight datagram holds its
//! size in the memory budget; past the budget datagrams are dropped
//! (`drops_mem_budget`), as by a full queue. Datagrams sent to the DHCP
//! server port go to [`dhcp`] instead of a flow.
//!
//! ```text
//!  guest UDP ─► udp ─► dgram_out ─► (new: map_remote, Open) ─► Send
//!  host  ──── Connected/Sent/Received ─► dgram_event ─► dgram_to_guest ─► frames
//! ```

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use super::icmp::{libc_errno, unreachable_code};
use super::l2::{L2, TxCsum, UDP_CSUM_OFFSET};
use super::wire::{self, EthernetAddress, UdpPacket, UdpRepr, ip_proto};
use super::{
    Actions, DropReason, FlowId, FlowKey, FlowState, HostEvent, Instant, MemBudget, Proto, SockOp,
    Stack, check, dhcp, mem,
};

/// Most datagrams queued on a UDP/ICMP flow while its socket connects.
pub(super) const DGRAM_QUEUE: usize = 64;

/// A UDP or ICMP echo flow.
#[derive(Debug)]
pub(super) struct DgramFlow {
    pub(super) connected: bool,
    pub(super) pending: VecDeque<Vec<u8>>,
    pub(super) last_active: Instant,
    pub(super) timeout: Duration,
    /// Budget held by each datagram in a `Send`, oldest first (a `Sent`
    /// gives back the oldest: the sum is exact once all are answered).
    pub(super) in_flight: VecDeque<usize>,
    /// Budget held by `pending` and `in_flight`.
    pub(super) held: usize,
    pub(super) mem: Arc<MemBudget>,
}

impl DgramFlow {
    pub(super) fn new(
        mem: Arc<MemBudget>,
        now: Instant,
        timeout: Duration,
        connected: bool,
    ) -> DgramFlow {
        DgramFlow {
            connected,
            pending: VecDeque::new(),
            last_active: now,
            timeout,
            in_flight: VecDeque::new(),
            held: 0,
            mem,
        }
    }

    /// What a datagram costs the budget.
    pub(super) fn cost(data: &[u8]) -> usize {
        data.len() + mem::CHUNK_OVERHEAD
    }

    /// Reserve `data`'s cost; false when the budget is spent.
    pub(super) fn reserve(&mut self, data: &[u8]) -> bool {
        let c = Self::cost(data);
        if !self.mem.try_reserve(c) {
            return false;
        }
        self.held += c;
        true
    }

    /// A reserved datagram goes into a `Send`.
    pub(super) fn sending(&mut self, data: &[u8]) {
        self.in_flight.push_back(Self::cost(data));
    }

    /// A `Send` was answered.
    pub(super) fn sent(&mut self) {
        if let Some(c) = self.in_flight.pop_front() {
            self.held -= c;
            self.mem.release(c);
        }
    }

    /// A queued datagram is given up (the socket failed).
    pub(super) fn discard(&mut self, data: &[u8]) {
        let c = Self::cost(data);
        self.held -= c;
        self.mem.release(c);
    }
}

impl Drop for DgramFlow {
    /// A flow gone gives back what its queue and its `Send`s held.
    fn drop(&mut self) {
        self.mem.release(self.held);
    }
}

impl Stack {
    /// A datagram from host `peer` arrived on a published UDP port that
    /// forwards to the guest's `guest_port`: deliver it to the guest on the
    /// peer's flow. Returns the flow when this datagram created it: the
    /// dataplane then attaches it to the published socket, so that the
    /// guest's replies (`Send` on the flow) go back to `peer` from there.
    /// The flow expires like any UDP flow (`udp_timeout` idle).
    pub fn inbound_udp(
        &mut self,
        peer: SocketAddr,
        guest_port: u16,
        data: &[u8],
        now: Instant,
        out: &mut Actions,
    ) -> Option<FlowId> {
        let mut created = None;
        let live = self
            .pub_udp
            .get(&(guest_port, peer))
            .copied()
            .filter(|id| self.flows.get(*id).is_some());
        let id = match live {
            Some(id) => id,
            None => {
                let Some(key) = self.inbound_source(Proto::Udp, peer, guest_port) else {
                    self.drop(DropReason::FlowLimit);
                    return None;
                };
                self.solicit_guest_mac(out);
                let flow = DgramFlow::new(self.cfg.memory.clone(), now, self.cfg.udp_timeout, true);
                let Some(id) = self.flows.insert(key, FlowState::Dgram(flow)) else {
                    self.drop(DropReason::FlowLimit);
                    return None;
                };
                if self.pub_udp.len() >= self.cfg.max_flows {
                    let flows = &self.flows;
                    self.pub_udp.retain(|_, id| flows.get(*id).is_some());
                }
                self.pub_udp.insert((guest_port, peer), id);
                self.counters.published_udp += 1;
                created = Some(id);
                id
            }
        };
        let Some((key, FlowState::Dgram(f))) = self.flows.get_mut(id) else {
            return created;
        };
        f.last_active = now;
        let key = *key;
        self.dgram_to_guest(&key, data, out);
        created
    }

    pub(super) fn udp(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        payload: &[u8],
        verify: bool,
        now: Instant,
        out: &mut Actions,
    ) {
        let pkt = check!(self, UdpPacket::new_checked(payload));
        let repr = check!(self, UdpRepr::parse(&pkt, src, dst, verify));
        let data = pkt.payload();
        if let IpAddr::V4(d4) = dst
            && repr.dst_port == dhcp::SERVER_PORT
            && (d4.is_broadcast() || d4 == self.cfg.gateway)
        {
            return self.dhcp(data, out);
        }
        if self.is_bad_dst(dst) {
            return self.drop(DropReason::BadAddress);
        }
        let key = FlowKey {
            proto: Proto::Udp,
            guest: SocketAddr::from((src, repr.src_port)),
            remote: SocketAddr::from((dst, repr.dst_port)),
        };
        if let Some(w) = self.held_elsewhere(&key) {
            // Another worker's flow (published, or the guest's own that
            // changed queue): not a second host socket here.
            return self.forward_l4(w, src, dst, ip_proto::UDP, payload, !verify, out);
        }
        self.dgram_out(key, data.to_vec(), now, out);
    }

    /// Send a datagram (UDP payload, or an ICMP echo message) on the flow for
    /// `key`, opening it first if needed.
    pub(super) fn dgram_out(
        &mut self,
        key: FlowKey,
        data: Vec<u8>,
        now: Instant,
        out: &mut Actions,
    ) {
        let id = match self.flows.lookup(&key) {
            Some(id) => id,
            None => {
                let remote = key.remote;
                let host_dst = match self.map_remote(key.proto, remote) {
                    Ok(a) => a,
                    Err(reason) => {
                        self.drop(reason);
                        // Nothing listens on the gateway without host
                        // loopback: the port is unreachable. A policy
                        // refusal says so (RFC 1812 §5.2.7.1).
                        let code = match reason {
                            DropReason::Denied => wire::icmpv4::unreachable::ADMIN_PROHIBITED,
                            _ => wire::icmpv4::unreachable::PORT,
                        };
                        return self.icmp_unreachable(&key, code, &data, out);
                    }
                };
                let timeout = match key.proto {
                    Proto::Icmp => self.cfg.icmp_timeout,
                    _ if remote.port() == 53 => self.cfg.dns_timeout,
                    _ => self.cfg.udp_timeout,
                };
                let flow = DgramFlow::new(self.cfg.memory.clone(), now, timeout, false);
                let Some(id) = self.flows.insert(key, FlowState::Dgram(flow)) else {
                    if self.held_elsewhere(&key).is_some() {
                        // Another worker opened the flow an instant ago
                        // (the same datagram flow on two queues at once):
                        // this one datagram is lost, as on a busy link.
                        return self.drop(DropReason::NoFlow);
                    }
                    // Refused, and said so: a guest that retries (DNS, a
                    // ping) learns at once instead of timing out.
                    self.drop(DropReason::FlowLimit);
                    let code = wire::icmpv4::unreachable::ADMIN_PROHIBITED;
                    return self.icmp_unreachable(&key, code, &data, out);
                };
                match key.proto {
                    Proto::Icmp => self.counters.icmp_opened += 1,
                    _ => self.counters.udp_opened += 1,
                }
                out.ops.push(SockOp::Open {
                    flow: id,
                    proto: key.proto,
                    dst: host_dst,
                });
                id
            }
        };
        let Some((_, FlowState::Dgram(f))) = self.flows.get_mut(id) else {
            return;
        };
        f.last_active = now;
        if !f.connected && f.pending.len() >= DGRAM_QUEUE {
            return self.drop(DropReason::UdpQueueFull);
        }
        if !f.reserve(&data) {
            // Over the memory budget: dropped, as by a full queue.
            f.mem.note_udp_drop();
            return self.drop(DropReason::MemoryBudget);
        }
        if f.connected {
            f.sending(&data);
            out.ops.push(SockOp::Send { flow: id, data });
        } else {
            f.pending.push_back(data);
        }
    }

    pub(super) fn dhcp(&mut self, request: &[u8], out: &mut Actions) {
        let mask_bits = self.cfg.prefix_len;
        let params = dhcp::Params {
            server: self.cfg.gateway,
            offered: self.cfg.guest_ip,
            prefix_len: mask_bits,
            router: self.cfg.gateway,
            dns: self.cfg.dns.into_iter().collect(),
            lease_secs: self.cfg.lease_secs,
            mtu: self.cfg.mtu,
        };
        let reply = match dhcp::handle(&params, request) {
            Ok(r) => r,
            Err(dhcp::Ignored::NoReply) => return,
            Err(dhcp::Ignored::Malformed) => return self.drop(DropReason::Dhcp),
        };
        let (dst_ip, dst_mac) = if reply.broadcast {
            (Ipv4Addr::BROADCAST, EthernetAddress::BROADCAST)
        } else {
            (reply.dst, reply.client_mac)
        };
        let l2 = L2 {
            guest: dst_mac,
            ..self.l2()
        };
        self.udp_to_guest(
            l2,
            SocketAddrV4::new(self.cfg.gateway, dhcp::SERVER_PORT),
            SocketAddrV4::new(dst_ip, dhcp::CLIENT_PORT),
            &reply.payload,
            out,
        );
    }

    /// Build a UDP datagram to the guest, fragmenting it to the MTU.
    pub(super) fn udp_to_guest(
        &mut self,
        l2: L2,
        from: SocketAddrV4,
        to: SocketAddrV4,
        payload: &[u8],
        out: &mut Actions,
    ) {
        let l4_len = wire::udp::HEADER_LEN + payload.len();
        if l4_len + wire::ipv4::HEADER_LEN > 65535 {
            return self.drop(DropReason::Malformed);
        }
        let whole = wire::ipv4::HEADER_LEN + l4_len <= usize::from(self.cfg.mtu);
        let (l4, csum) = udp_datagram(from.into(), to.into(), payload, l2.offload.csum && whole);
        self.ipv4_to_guest_csum(l2, *from.ip(), *to.ip(), ip_proto::UDP, &l4, csum, out);
    }

    /// A host completion on datagram flow `id`.
    pub(super) fn dgram_event(
        &mut self,
        id: FlowId,
        key: FlowKey,
        ev: HostEvent,
        now: Instant,
        out: &mut Actions,
    ) {
        let Some((_, FlowState::Dgram(f))) = self.flows.get_mut(id) else {
            return;
        };
        match ev {
            HostEvent::Connected { result: Ok(()), .. } => {
                f.connected = true;
                while let Some(data) = f.pending.pop_front() {
                    f.sending(&data);
                    out.ops.push(SockOp::Send { flow: id, data });
                }
                out.ops.push(SockOp::Recv {
                    flow: id,
                    max: 65535,
                });
            }
            HostEvent::Connected { result: Err(e), .. } => {
                let pending: Vec<Vec<u8>> = f.pending.drain(..).collect();
                for d in &pending {
                    f.discard(d);
                }
                out.ops.push(SockOp::Close {
                    flow: id,
                    reset: false,
                });
                self.flows.remove(id);
                if key.proto == Proto::Icmp {
                    log::debug!("no ping socket (errno {e}); check net.ipv4.ping_group_range");
                    self.counters.drops[DropReason::NoPingSocket as usize] += pending.len() as u64;
                } else {
                    self.drop(DropReason::HostError);
                    let code = unreachable_code(e);
                    if let Some(first) = pending.first() {
                        self.icmp_unreachable(&key, code, first, out);
                    }
                }
            }
            HostEvent::Sent { result, .. } => {
                f.sent();
                if let Err(e) = result {
                    log::trace!("udp send error {e}");
                    if e == libc_errno::ECONNREFUSED {
                        self.icmp_unreachable(&key, wire::icmpv4::unreachable::PORT, &[], out);
                    }
                }
            }
            HostEvent::Received { result, .. } => {
                // Datagram flows receive continuously after the first
                // `Recv` (see `ops`): nothing to ask for again.
                f.last_active = now;
                match result {
                    Ok(data) => self.dgram_to_guest(&key, &data, out),
                    Err(e) if e == libc_errno::ECONNREFUSED && key.proto == Proto::Udp => {
                        self.icmp_unreachable(&key, wire::icmpv4::unreachable::PORT, &[], out)
                    }
                    Err(e) => log::trace!("dgram recv error {e}"),
                }
            }
        }
    }

    pub(super) fn dgram_to_guest(&mut self, key: &FlowKey, data: &[u8], out: &mut Actions) {
        let (SocketAddr::V4(guest), SocketAddr::V4(remote)) = (key.guest, key.remote) else {
            return self.dgram_to_guest6(key, data, out);
        };
        let l2 = self.l2();
        match key.proto {
            Proto::Udp => self.udp_to_guest(l2, remote, guest, data, out),
            Proto::Icmp => self.echo_reply_to_guest(guest, remote, data, out),
            Proto::Tcp => {}
        }
    }
}

/// A UDP datagram `from` → `to` carrying `payload`, with a partial
/// checksum when `partial`, else a computed one. A partial checksum only on
/// a whole datagram: fragments cannot carry one (the receiver sums the
/// datagram only after reassembly).
pub(super) fn udp_datagram(
    from: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
    partial: bool,
) -> (Vec<u8>, TxCsum) {
    let repr = UdpRepr {
        src_port: from.port(),
        dst_port: to.port(),
    };
    let mut l4 = vec![0u8; repr.header_len() + payload.len()];
    let mut p = UdpPacket::new_unchecked(&mut l4[..]);
    let (s, d) = (from.ip(), to.ip());
    let csum = if partial {
        repr.emit_partial(&mut p, s, d, payload);
        TxCsum::Partial(UDP_CSUM_OFFSET)
    } else {
        repr.emit(&mut p, s, d, payload);
        TxCsum::Full
    };
    (l4, csum)
}
