//! IPv6 on the guest link: the stack as the guest's IPv6 router.
//!
//! # Theory of operation
//!
//! The guest's link gets a /64 ULA prefix ([`Config::prefix6`], by default
//! `fd00:33::/64`). uipd is its router: it answers neighbour solicitations
//! for the gateway's two addresses ([`Config::gateway6`], `fd00:33::1`, and
//! the link-local [`Config::gateway6_ll`], `fe80::1`) with the same MAC as
//! the IPv4 gateway, and sends router advertisements from `fe80::1`: the
//! prefix with the A flag (the guest configures its own address by SLAAC),
//! the link MTU, and RDNSS = `fd00:33::1` (RFC 8106). One goes out as soon
//! as the guest sends any IPv6 frame (and two more, 2 s apart), another in
//! answer to each router solicitation, and one every [`RA_INTERVAL`] after
//! that.
//!
//! ```text
//!  guest ─ NS fe80::1 / fd00:33::1 ──► NA (R, S, O; gateway MAC)
//!        ─ RS ───────────────────────► RA: prefix fd00:33::/64 (L, A), O, MTU, RDNSS fd00:33::1
//!        ─ DHCPv6 Information-request ► Reply: DNS fd00:33::1
//!        ─ echo to the gateway ──────► echo reply
//!        ─ TCP/UDP/echo elsewhere ───► flows, as for IPv4 (tcp_glue, udp): the
//!                                      gateway maps to the host's ::1,
//!                                      [gateway]:53 to the first resolver
//! ```
//!
//! The guest's MAC is learnt from any IPv6 frame it sends, as for IPv4; its
//! addresses need no learning, since every flow's key holds the address
//! the guest used and replies go back to it. NDP messages must arrive with
//! hop limit 255 (RFC 4861 §6.1.1, §7.1.1), or they are dropped as
//! malformed; uipd sends them with 255.
//!
//! Fragments from the guest are reassembled with the IPv4 fragments' bounds
//! ([`frag::Reassembler`], one per stack); datagrams to the guest larger
//! than the MTU are fragmented (RFC 8200 §4.5).
//!
//! DNS: the RA's RDNSS option, and stateless DHCPv6 (the RA's O flag; an
//! Information-request to ff02::1:2 gets `fd00:33::1` as DNS server, see
//! [`dhcpv6`]). No stateful DHCPv6: addresses come by SLAAC only.
//!
//! Limits: a fragmentable part that starts with an extension header (rather than the
//! upper layer) is not reassembled (it expires, `drops_frag_timeout`).

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use super::icmp::quote;
use super::l2::{L2, TCP_CSUM_OFFSET, TxCsum, UDP_CSUM_OFFSET, partial_csum_hdr_at};
use super::udp::udp_datagram;
use super::wire::icmpv6::{self, PrefixInfo, RouterAdvert};
use super::wire::ipv6 as ip6;
use super::wire::vnet_hdr::{flags as vnet_flags, gso};
use super::wire::{
    EtherType, EthernetAddress, Icmpv6Packet, Icmpv6Repr, Ipv6Packet, Ipv6Repr, UdpPacket, UdpRepr,
    VnetHdrRepr, ip_proto,
};
use super::{
    Actions, DropReason, FlowKey, Instant, Proto, Stack, check, dhcpv6, frag, wire, wire_reason,
};

/// Offset of the L4 header in an IPv6 frame to the guest (no extension headers).
pub(super) const L4_START6: usize = wire::ethernet::HEADER_LEN + ip6::HEADER_LEN;

/// How often unsolicited router advertisements go out (RFC 4861 §6.2.1's
/// default MaxRtrAdvInterval).
pub const RA_INTERVAL: Duration = Duration::from_secs(600);
/// The first unsolicited advertisements (RFC 4861 §6.2.4:
/// MAX_INITIAL_RTR_ADVERTISEMENTS, at most MAX_INITIAL_RTR_ADVERT_INTERVAL
/// = 16 s apart) go out this often. A Linux guest that gets the very first
/// one while its link-local address is still tentative (uipd answers its
/// first IPv6 frame, the DAD probe) ignores it and, having "received an
/// RA", sends no solicitation; without a second one it never gets an
/// address (seen with a QEMU guest).
pub const INITIAL_RA_INTERVAL: Duration = Duration::from_secs(2);
/// How many unsolicited advertisements go out at [`INITIAL_RA_INTERVAL`].
pub const INITIAL_RAS: u8 = 3;
/// Router lifetime in the RA (3 × [`RA_INTERVAL`], RFC 4861 §6.2.1).
const ROUTER_LIFETIME: u16 = 1800;
/// RDNSS lifetime (RFC 8106 §5.1: at least 3 × MaxRtrAdvInterval).
const RDNSS_LIFETIME: u32 = 1800;
/// The all-nodes multicast address.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Offset of the ICMPv6 checksum in its header.
const ICMP6_CSUM_OFFSET: u16 = 2;

/// The ICMPv6 destination-unreachable code for an ICMPv4 one the flow code
/// chose (RFC 4443 §3.1 for the meanings).
pub(super) fn unreachable_code(v4: u8) -> u8 {
    use wire::icmpv4::unreachable as u4;
    use wire::icmpv6::unreachable as u6;
    match v4 {
        u4::ADMIN_PROHIBITED => u6::ADMIN_PROHIBITED,
        u4::NET => u6::NO_ROUTE,
        u4::HOST => u6::ADDRESS,
        _ => u6::PORT,
    }
}

impl L2 {
    /// A frame to the guest carrying IPv6 header `ip`, with room for
    /// `ip.payload_len` bytes, the last of which are `tail` (see
    /// [`L2::alloc`]). Returns the buffer and the offset of the IPv6
    /// payload.
    pub(super) fn ipv6_frame(
        &self,
        ip: &Ipv6Repr,
        hdr: &VnetHdrRepr,
        tail: &[u8],
    ) -> (Vec<u8>, usize) {
        let (mut buf, l3) =
            self.eth_frame(EtherType::Ipv6, ip6::HEADER_LEN + ip.payload_len, hdr, tail);
        ip.emit(&mut Ipv6Packet::new_unchecked(&mut buf[l3..]));
        (buf, l3 + ip6::HEADER_LEN)
    }
}

impl Stack {
    /// An IPv6 packet from the guest. `hdr`: its virtio-net header
    /// ([`VnetHdrRepr::PLAIN`] without one).
    pub(super) fn ipv6(
        &mut self,
        payload: &[u8],
        hdr: &VnetHdrRepr,
        now: Instant,
        out: &mut Actions,
    ) {
        let pkt = check!(self, Ipv6Packet::new_checked(payload));
        let ul = check!(self, pkt.upper_layer());
        let (src, dst) = (pkt.src_addr(), pkt.dst_addr());
        if src.is_multicast() || src.is_loopback() || is_v4_in_v6(src) {
            return self.drop(DropReason::BadAddress);
        }
        if self.next_ra.is_none() {
            // The guest is here and speaks IPv6: advertise at once (`poll`).
            self.next_ra = Some(now);
        }
        let l4 = &pkt.payload()[ul.offset..];
        if let Some(f) = ul.frag {
            // Linux completes checksums before it fragments: a fragment
            // has no offload of its own to describe.
            if hdr.gso_kind() != gso::NONE || hdr.needs_csum() {
                return self.drop(DropReason::BadVnetHdr);
            }
            if dst.is_multicast() || src.is_unspecified() {
                return self.drop(DropReason::BadAddress);
            }
            let key = frag::FragKey {
                src: src.into(),
                dst: dst.into(),
                proto: ul.proto,
                ident: f.ident,
            };
            let Some(whole) = self.reassemble(key, f.offset, f.more, l4, now) else {
                return;
            };
            let (s, d) = (IpAddr::V6(src), IpAddr::V6(dst));
            if let Some(owner) = self.foreign_datagram(s, d, ul.proto, &whole) {
                return self.forward_datagram6(owner, src, dst, ul.proto, &whole, out);
            }
            // Each fragment's header spoke for that fragment only: verify
            // the whole datagram.
            let verify = self.cfg.verify_checksums;
            let hop = pkt.hop_limit();
            return self.l4_6(src, dst, ul.proto, hop, &whole, verify, now, out);
        }
        // The virtio-net header must describe this packet: a TCPV6
        // super-frame is TCP over IPv6 with a partial checksum (virtio 1.2
        // §5.1.6.2: GSO needs NEEDS_CSUM), and a partial checksum sits
        // where this L4 protocol keeps it.
        let gso_ok = match hdr.gso_kind() {
            gso::NONE => true,
            gso::TCPV6 => ul.proto == ip_proto::TCP && hdr.needs_csum(),
            gso::UDP => ul.proto == ip_proto::UDP,
            _ => false,
        };
        let csum_field = match ul.proto {
            ip_proto::TCP => TCP_CSUM_OFFSET,
            ip_proto::UDP => UDP_CSUM_OFFSET,
            _ => ICMP6_CSUM_OFFSET,
        };
        let l4_start = L4_START6 + ul.offset;
        let csum_ok = !hdr.needs_csum()
            || (usize::from(hdr.csum_start) == l4_start && hdr.csum_offset == csum_field);
        if !gso_ok || !csum_ok {
            return self.drop(DropReason::BadVnetHdr);
        }
        let verify = self.cfg.verify_checksums && !(hdr.needs_csum() || hdr.data_valid());
        self.l4_6(src, dst, ul.proto, pkt.hop_limit(), l4, verify, now, out);
    }

    /// The upper layer of an IPv6 packet (or reassembled datagram) from
    /// the guest: `proto` with message `l4`, `verify` its checksum.
    #[allow(clippy::too_many_arguments)]
    fn l4_6(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        proto: u8,
        hop_limit: u8,
        l4: &[u8],
        verify: bool,
        now: Instant,
        out: &mut Actions,
    ) {
        if dst.is_multicast() {
            // Only neighbour discovery and DHCPv6 are for us; MLD reports
            // and the like are not.
            if proto == ip_proto::UDP && dst == dhcpv6::ALL_SERVERS {
                return self.dhcpv6(src, l4, verify, out);
            }
            if proto == ip_proto::ICMPV6 {
                return self.icmp6(src, dst, hop_limit, l4, verify, now, out);
            }
            return self.drop(DropReason::NotForUs);
        }
        if src.is_unspecified() && proto != ip_proto::ICMPV6 {
            return self.drop(DropReason::BadAddress);
        }
        let (s, d) = (IpAddr::V6(src), IpAddr::V6(dst));
        match proto {
            ip_proto::TCP => self.tcp(s, d, l4, verify, now, out),
            ip_proto::UDP => self.udp(s, d, l4, verify, now, out),
            ip_proto::ICMPV6 => self.icmp6(src, dst, hop_limit, l4, verify, now, out),
            // What followed a fragment header was not an upper layer.
            _ => self.drop(DropReason::Unsupported),
        }
    }

    /// Hand a reassembled datagram to the worker that owns its flow, as one
    /// unfragmented frame in the form `ingress` takes (a zero virtio-net
    /// header first when the link has one: verify everything).
    pub(super) fn forward_datagram6(
        &mut self,
        owner: usize,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        proto: u8,
        l4: &[u8],
        out: &mut Actions,
    ) {
        // The inboxes hold up to 65535 bytes of IP packet.
        if ip6::HEADER_LEN + l4.len() > usize::from(u16::MAX) {
            return self.drop(DropReason::FragLimit);
        }
        let (mut buf, l3) = self.guest_frame(EtherType::Ipv6, ip6::HEADER_LEN + l4.len());
        let mut p = Ipv6Packet::new_unchecked(&mut buf[l3..]);
        Ipv6Repr::new(src, dst, proto, l4.len()).emit(&mut p);
        p.payload_mut().copy_from_slice(l4);
        out.forward.push((owner, buf));
    }

    /// A destination no IPv6 flow may go to: unspecified, multicast,
    /// loopback, IPv4-mapped or -compatible (a host `AF_INET6` socket would
    /// reach IPv4 through them, past an IPv4 `--deny`), link-local, and the
    /// guest's own on-link prefix (nothing but the guest and the gateway
    /// lives there). The gateway's addresses are fine (they map to ::1).
    pub(super) fn is_bad_destination6(&self, dst: Ipv6Addr) -> bool {
        if self.is_local(IpAddr::V6(dst)) {
            return false;
        }
        let o = dst.octets();
        let link_local = o[0] == 0xfe && o[1] & 0xc0 == 0x80;
        let on_link = o[..8] == self.cfg.prefix6.octets()[..8];
        dst.is_unspecified()
            || dst.is_multicast()
            || dst.is_loopback()
            || is_v4_in_v6(dst)
            || link_local
            || on_link
    }

    #[allow(clippy::too_many_arguments)]
    fn icmp6(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        l4: &[u8],
        verify: bool,
        now: Instant,
        out: &mut Actions,
    ) {
        let pkt = check!(self, Icmpv6Packet::new_checked(l4));
        let repr = match Icmpv6Repr::parse(&pkt, src, dst, verify) {
            Ok(r) => r,
            // MLD reports and other group traffic uipd does not take part in.
            Err(wire::Error::Unsupported) if dst.is_multicast() => {
                return self.drop(DropReason::NotForUs);
            }
            Err(e) => return self.drop(wire_reason(e)),
        };
        let ndp = matches!(
            repr,
            Icmpv6Repr::RouterSolicit { .. }
                | Icmpv6Repr::RouterAdvert(_)
                | Icmpv6Repr::NeighborSolicit { .. }
                | Icmpv6Repr::NeighborAdvert { .. }
        );
        if ndp && hop_limit != 255 {
            // RFC 4861 §6.1.1, §7.1.1: not from the link; discard.
            return self.drop(DropReason::Malformed);
        }
        if !ndp && (src.is_unspecified() || dst.is_multicast()) {
            return self.drop(DropReason::NotForUs);
        }
        match repr {
            Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => {
                if self.is_local(IpAddr::V6(dst)) {
                    let reply = Icmpv6Repr::EchoReply {
                        ident,
                        seq_no,
                        data,
                    };
                    return self.icmp6_to_guest(dst, src, &reply, 64, out);
                }
                let (s, d) = (IpAddr::V6(src), IpAddr::V6(dst));
                self.echo_out(s, d, ident, l4, verify, now, out);
            }
            Icmpv6Repr::RouterSolicit { .. } => {
                // RFC 4861 §6.2.6: answer to the soliciting host, or to all
                // nodes when it has no address yet.
                let to = if src.is_unspecified() { ALL_NODES } else { src };
                self.send_ra(to, out);
                self.next_ra = Some(now + RA_INTERVAL);
            }
            Icmpv6Repr::NeighborSolicit { target, .. } => {
                if !self.is_local(IpAddr::V6(target)) {
                    // The guest's duplicate address detection, or a
                    // neighbour on the link that uipd does not stand for.
                    return self.drop(DropReason::NotForUs);
                }
                // RFC 4861 §7.2.4: a solicited advertisement to the
                // soliciter; to all nodes, unsolicited, when it is still
                // checking an address (source ::), here one of ours.
                let (to, solicited) = if src.is_unspecified() {
                    (ALL_NODES, false)
                } else {
                    (src, true)
                };
                let na = Icmpv6Repr::NeighborAdvert {
                    router: true,
                    solicited,
                    override_: true,
                    target,
                    lladdr: Some(self.cfg.gateway_mac.0),
                };
                self.icmp6_to_guest(target, to, &na, 255, out);
            }
            // Advertisements from the guest (its own addresses, or a router
            // it thinks it is): uipd already knows the guest's MAC.
            Icmpv6Repr::NeighborAdvert { .. } | Icmpv6Repr::RouterAdvert(_) => {}
            // Echo replies and errors from the guest about our traffic:
            // nothing to relay (as for ICMPv4).
            _ => self.drop(DropReason::Unsupported),
        }
    }

    /// A DHCPv6 message to all servers: an Information-request gets the
    /// DNS server ([`dhcpv6`]), from `[fe80::1]:547` to the client.
    fn dhcpv6(&mut self, src: Ipv6Addr, l4: &[u8], verify: bool, out: &mut Actions) {
        let pkt = check!(self, UdpPacket::new_checked(l4));
        let dst = IpAddr::V6(dhcpv6::ALL_SERVERS);
        let repr = check!(self, UdpRepr::parse(&pkt, IpAddr::V6(src), dst, verify));
        if repr.dst_port != dhcpv6::SERVER_PORT {
            return self.drop(DropReason::NotForUs);
        }
        if src.is_unspecified() {
            return self.drop(DropReason::BadAddress);
        }
        let dns: Vec<Ipv6Addr> = self.cfg.dns6.into_iter().collect();
        match dhcpv6::handle(pkt.payload(), self.cfg.gateway_mac.0, &dns) {
            Ok(reply) => {
                let l2 = self.l2();
                let from = SocketAddrV6::new(self.cfg.gateway6_ll, dhcpv6::SERVER_PORT, 0, 0);
                let to = SocketAddrV6::new(src, repr.src_port, 0, 0);
                self.udp_to_guest6(l2, from, to, &reply, out);
            }
            Err(dhcpv6::Ignored::NoReply) => {}
            Err(dhcpv6::Ignored::Malformed) => self.drop(DropReason::Dhcp),
        }
    }

    /// Send a router advertisement to `to` (the guest's address, or all nodes).
    fn send_ra(&mut self, to: Ipv6Addr, out: &mut Actions) {
        let ra = Icmpv6Repr::RouterAdvert(RouterAdvert {
            hop_limit: 64,
            managed: false,
            // Stateless DHCPv6 has the DNS server too (for guests that
            // ignore RDNSS).
            other: true,
            router_lifetime: ROUTER_LIFETIME,
            reachable_time: 0,
            retrans_time: 0,
            lladdr: Some(self.cfg.gateway_mac.0),
            mtu: Some(u32::from(self.cfg.mtu)),
            prefix: Some(PrefixInfo {
                prefix_len: 64,
                on_link: true,
                autonomous: true,
                // Infinite: the prefix lives as long as uipd does.
                valid_lifetime: u32::MAX,
                preferred_lifetime: u32::MAX,
                prefix: self.cfg.prefix6,
            }),
            rdnss: self.cfg.dns6.map(|a| (RDNSS_LIFETIME, a)),
        });
        let from = self.cfg.gateway6_ll;
        self.icmp6_to_guest(from, to, &ra, 255, out);
    }

    /// Unsolicited router advertisements: the first as soon as the guest
    /// has sent IPv6, [`INITIAL_RAS`] in all [`INITIAL_RA_INTERVAL`] apart,
    /// then every [`RA_INTERVAL`].
    pub(super) fn ra_timer(&mut self, now: Instant, out: &mut Actions) {
        if let Some(t) = self.next_ra
            && now >= t
        {
            self.send_ra(ALL_NODES, out);
            self.initial_ras = self.initial_ras.saturating_add(1);
            let wait = if self.initial_ras < INITIAL_RAS {
                INITIAL_RA_INTERVAL
            } else {
                RA_INTERVAL
            };
            self.next_ra = Some(now + wait);
        }
    }

    /// An ICMPv6 message from `src` to `dst` (multicast: to the group's
    /// MAC; else to the guest's), with hop limit `hop_limit`.
    fn icmp6_to_guest(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        msg: &Icmpv6Repr<'_>,
        hop_limit: u8,
        out: &mut Actions,
    ) {
        let mut l2 = self.l2();
        if dst.is_multicast() {
            l2.guest = EthernetAddress(ip6::multicast_mac(dst));
        }
        let len = msg.buffer_len();
        if ip6::HEADER_LEN + len > usize::from(self.cfg.mtu) {
            return self.drop(DropReason::Malformed);
        }
        let ip = Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: ip_proto::ICMPV6,
            payload_len: len,
            hop_limit,
        };
        let hdr = VnetHdrRepr {
            flags: vnet_flags::DATA_VALID,
            ..VnetHdrRepr::PLAIN
        };
        let (mut buf, at) = l2.ipv6_frame(&ip, &hdr, &[]);
        msg.emit(&mut buf[at..], src, dst);
        self.push_frame(out, buf);
    }

    /// ICMPv6 destination unreachable (`code`) to the guest about its
    /// datagram on flow `key` whose payload began with `data` (RFC 4443 §3.1).
    pub(super) fn icmp6_unreachable(
        &mut self,
        key: &FlowKey,
        code: u8,
        data: &[u8],
        out: &mut Actions,
    ) {
        let (SocketAddr::V6(guest), SocketAddr::V6(remote)) = (key.guest, key.remote) else {
            return;
        };
        let orig = quote(key, data, icmpv6::MAX_ERROR_DATA - ip6::HEADER_LEN);
        let msg = Icmpv6Repr::DstUnreachable { code, data: &orig };
        self.icmp6_to_guest(*remote.ip(), *guest.ip(), &msg, 64, out);
    }

    /// A datagram from the host on IPv6 flow `key` (UDP payload, or an
    /// ICMPv6 echo reply from a ping socket).
    pub(super) fn dgram_to_guest6(&mut self, key: &FlowKey, data: &[u8], out: &mut Actions) {
        let (SocketAddr::V6(guest), SocketAddr::V6(remote)) = (key.guest, key.remote) else {
            return;
        };
        match key.proto {
            Proto::Udp => {
                let l2 = self.l2();
                self.udp_to_guest6(l2, remote, guest, data, out);
            }
            Proto::Icmp => {
                // The ping socket's reply carries the socket's identifier;
                // give the guest back its own. The kernel checked the
                // checksum.
                let Ok(p) = Icmpv6Packet::new_checked(data) else {
                    return self.drop(DropReason::Malformed);
                };
                let Ok(Icmpv6Repr::EchoReply { seq_no, data, .. }) =
                    Icmpv6Repr::parse(&p, *remote.ip(), *guest.ip(), false)
                else {
                    return;
                };
                let reply = Icmpv6Repr::EchoReply {
                    ident: guest.port(),
                    seq_no,
                    data,
                };
                self.icmp6_to_guest(*remote.ip(), *guest.ip(), &reply, 64, out);
            }
            Proto::Tcp => {}
        }
    }

    /// A UDP datagram to the guest over IPv6, fragmented to the MTU.
    pub(super) fn udp_to_guest6(
        &mut self,
        l2: L2,
        from: SocketAddrV6,
        to: SocketAddrV6,
        payload: &[u8],
        out: &mut Actions,
    ) {
        let l4_len = wire::udp::HEADER_LEN + payload.len();
        if l4_len > usize::from(u16::MAX) {
            return self.drop(DropReason::Malformed);
        }
        let whole = ip6::HEADER_LEN + l4_len <= usize::from(self.cfg.mtu);
        let (l4, csum) = udp_datagram(from.into(), to.into(), payload, l2.offload.csum && whole);
        self.ipv6_to_guest(l2, *from.ip(), *to.ip(), ip_proto::UDP, &l4, csum, out);
    }

    /// Wrap an upper-layer message in IPv6 and Ethernet; one that does not
    /// fit the MTU goes in fragments (RFC 8200 §4.5), which then carry a
    /// full checksum (`csum` is [`TxCsum::Partial`] only for a whole one).
    #[allow(clippy::too_many_arguments)]
    fn ipv6_to_guest(
        &mut self,
        l2: L2,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        proto: u8,
        l4: &[u8],
        csum: TxCsum,
        out: &mut Actions,
    ) {
        let mtu = usize::from(self.cfg.mtu);
        let mut ip = Ipv6Repr::new(src, dst, proto, l4.len());
        if ip6::HEADER_LEN + l4.len() <= mtu {
            let hdr = match csum {
                TxCsum::Partial(off) => partial_csum_hdr_at(L4_START6, off),
                TxCsum::Full => VnetHdrRepr {
                    flags: vnet_flags::DATA_VALID,
                    ..VnetHdrRepr::PLAIN
                },
            };
            let (buf, _) = l2.ipv6_frame(&ip, &hdr, l4);
            return self.push_frame(out, buf);
        }
        debug_assert!(csum == TxCsum::Full, "partial checksum on a fragment");
        self.counters.fragmented += 1;
        let ident = u32::from(self.next_ident());
        // `fragments` sizes pieces for a 20-byte IPv4 header; 28 bytes less
        // MTU leaves room for IPv6's 40 plus the 8-byte fragment header.
        for (off, len, more) in frag::fragments(l4.len(), mtu.saturating_sub(28)) {
            ip.next_header = ip6::ext::FRAGMENT;
            ip.payload_len = ip6::FRAG_HEADER_LEN + len;
            let (mut buf, at) = l2.ipv6_frame(&ip, &VnetHdrRepr::PLAIN, &l4[off..off + len]);
            let offset = u16::try_from(off).unwrap_or(u16::MAX);
            ip6::emit_frag_header(&mut buf[at..], proto, offset, more, ident);
            self.push_frame(out, buf);
        }
    }
}

/// An IPv4-mapped (`::ffff:0:0/96`) or IPv4-compatible (`::/96`) address.
fn is_v4_in_v6(a: Ipv6Addr) -> bool {
    let o = a.octets();
    o[..10] == [0; 10]
        && ((o[10] == 0xff && o[11] == 0xff) || (o[10] == 0 && o[11] == 0))
        && !a.is_unspecified()
        && !a.is_loopback()
}

#[cfg(test)]
mod tests;
