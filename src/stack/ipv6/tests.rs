//! Frame-level tests of the stack's IPv6: neighbour and router discovery,
//! echo, flows over IPv6, TSO6 both ways, and hostile input.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::stack::wire::icmpv6::{self, RouterAdvert};
use crate::stack::wire::vnet_hdr::{flags as vflags, gso};
use crate::stack::wire::{self, *};
use crate::stack::*;

const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
fn guest() -> Ipv6Addr {
    a("fd00:33::5054:ff:fe12:3456")
}
fn guest_ll() -> Ipv6Addr {
    a("fe80::5054:ff:fe12:3456")
}
fn gw() -> Ipv6Addr {
    a("fd00:33::1")
}
fn gw_ll() -> Ipv6Addr {
    a("fe80::1")
}
fn gw_mac() -> EthernetAddress {
    Config::default().gateway_mac
}

fn stack_with(f: impl FnOnce(&mut Config)) -> Stack {
    let mut cfg = Config {
        resolvers: vec![SocketAddr::from(([127, 0, 0, 53], 53))],
        ..Config::default()
    };
    f(&mut cfg);
    Stack::new(cfg)
}

/// An Ethernet frame from the guest carrying an IPv6 packet; multicast
/// destinations go to their group MAC, the rest to the gateway's.
fn frame(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, hop_limit: u8, l4: &[u8]) -> Vec<u8> {
    let dst_mac = if dst.is_multicast() {
        EthernetAddress(wire::ipv6::multicast_mac(dst))
    } else {
        gw_mac()
    };
    let mut buf = vec![0u8; 14 + 40 + l4.len()];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: dst_mac,
        ethertype: EtherType::Ipv6,
    }
    .emit(&mut f);
    let mut p = Ipv6Packet::new_unchecked(f.payload_mut());
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4.len(),
        hop_limit,
    }
    .emit(&mut p);
    p.payload_mut().copy_from_slice(l4);
    buf
}

fn icmp(msg: &Icmpv6Repr<'_>, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut l4 = vec![0u8; msg.buffer_len()];
    msg.emit(&mut l4, src, dst);
    l4
}

fn icmp_frame(msg: &Icmpv6Repr<'_>, src: Ipv6Addr, dst: Ipv6Addr, hop: u8) -> Vec<u8> {
    frame(src, dst, ip_proto::ICMPV6, hop, &icmp(msg, src, dst))
}

/// A frame to the guest: its Ethernet header and IPv6 packet.
fn ip_of(frame: &[u8]) -> (EthernetRepr, Ipv6Packet<&[u8]>) {
    let e = EthernetRepr::parse(&EthernetFrame::new_checked(frame).unwrap()).unwrap();
    assert_eq!(e.ethertype, EtherType::Ipv6);
    (e, Ipv6Packet::new_checked(&frame[14..]).unwrap())
}

/// The ICMPv6 message in a frame to the guest (checksum verified).
fn icmp_of(p: &Ipv6Packet<&[u8]>) -> Icmpv6Repr<'static> {
    let data: &'static [u8] = Box::leak(p.payload().to_vec().into_boxed_slice());
    let pkt = Icmpv6Packet::new_checked(data).unwrap();
    Icmpv6Repr::parse(&pkt, p.src_addr(), p.dst_addr(), true).unwrap()
}

fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut l4 = vec![0u8; 8 + payload.len()];
    UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut l4[..]),
        src.ip(),
        dst.ip(),
        payload,
    );
    l4
}

fn tcp(src: SocketAddr, dst: SocketAddr, r: TcpRepr<'_>) -> Vec<u8> {
    let mut l4 = vec![0u8; r.buffer_len()];
    r.emit(
        &mut TcpPacket::new_unchecked(&mut l4[..]),
        src.ip(),
        dst.ip(),
    );
    l4
}

fn syn() -> TcpRepr<'static> {
    TcpRepr {
        src_port: 40000,
        dst_port: 8080,
        flags: wire::tcp::Flags {
            syn: true,
            ..Default::default()
        },
        seq_number: SeqNumber(1),
        ack_number: None,
        window_len: 65535,
        max_seg_size: Some(1440),
        window_scale: Some(7),
        sack_permitted: true,
        payload: &[],
    }
}

fn g(port: u16) -> SocketAddr {
    SocketAddr::from((guest(), port))
}

#[test]
fn neighbour_solicitation_for_the_gateway_is_answered() {
    let mut s = stack_with(|_| {});
    for target in [gw_ll(), gw()] {
        let ns = Icmpv6Repr::NeighborSolicit {
            target,
            lladdr: Some(GUEST_MAC.0),
        };
        let dst = wire::ipv6::solicited_node(target);
        let mut out = Actions::default();
        s.ingress(
            &icmp_frame(&ns, guest_ll(), dst, 255),
            Instant::ZERO,
            &mut out,
        );
        assert_eq!(out.frames.len(), 1, "one NA");
        let (e, p) = ip_of(&out.frames[0]);
        assert_eq!((e.src_addr, e.dst_addr), (gw_mac(), GUEST_MAC));
        assert_eq!(
            (p.src_addr(), p.dst_addr(), p.hop_limit()),
            (target, guest_ll(), 255)
        );
        assert_eq!(
            icmp_of(&p),
            Icmpv6Repr::NeighborAdvert {
                router: true,
                solicited: true,
                override_: true,
                target,
                lladdr: Some(gw_mac().0),
            }
        );
    }
    assert_eq!(s.guest_mac(), Some(GUEST_MAC));
    // DAD for the guest's own address: no answer.
    let ns = Icmpv6Repr::NeighborSolicit {
        target: guest(),
        lladdr: None,
    };
    let mut out = Actions::default();
    let dst = wire::ipv6::solicited_node(guest());
    s.ingress(
        &icmp_frame(&ns, Ipv6Addr::UNSPECIFIED, dst, 255),
        Instant::ZERO,
        &mut out,
    );
    assert!(out.frames.is_empty());
    // Not from the link (hop limit below 255): a counted drop.
    let ns = Icmpv6Repr::NeighborSolicit {
        target: gw(),
        lladdr: None,
    };
    let before = s.counters().drops_of(DropReason::Malformed);
    s.ingress(
        &icmp_frame(&ns, guest_ll(), wire::ipv6::solicited_node(gw()), 64),
        Instant::ZERO,
        &mut out,
    );
    assert!(out.frames.is_empty());
    assert_eq!(s.counters().drops_of(DropReason::Malformed), before + 1);
}

fn expect_ra(msg: Icmpv6Repr<'_>, mtu: u32) {
    let Icmpv6Repr::RouterAdvert(RouterAdvert {
        router_lifetime,
        lladdr,
        mtu: Some(got_mtu),
        prefix: Some(p),
        rdnss: Some((_, dns)),
        ..
    }) = msg
    else {
        panic!("not a full RA: {msg:?}");
    };
    assert!(router_lifetime > 0, "a default router");
    assert!(
        matches!(
            msg,
            Icmpv6Repr::RouterAdvert(RouterAdvert {
                other: true,
                managed: false,
                ..
            })
        ),
        "O: stateless DHCPv6"
    );
    assert_eq!(lladdr, Some(gw_mac().0));
    assert_eq!(got_mtu, mtu);
    assert_eq!((p.prefix, p.prefix_len), (a("fd00:33::"), 64));
    assert!(p.on_link && p.autonomous, "L and A: SLAAC");
    assert_eq!(dns, gw());
}

#[test]
fn router_solicitation_gets_an_advertisement_and_the_first_frame_one_unsolicited() {
    let mut s = stack_with(|c| c.mtu = 1500);
    assert_eq!(
        s.next_deadline(),
        None,
        "silent before the guest speaks IPv6"
    );
    // MLD report from the guest: not for us, but it announces the guest.
    let mut out = Actions::default();
    let mut mld = [143u8, 0, 0, 0, 0, 0, 0, 0];
    let ph =
        wire::checksum::pseudo_header(guest_ll().into(), a("ff02::16").into(), ip_proto::ICMPV6, 8);
    let c = wire::checksum::finish(wire::checksum::sum(&mld, ph));
    mld[2..4].copy_from_slice(&c.to_be_bytes());
    s.ingress(
        &frame(guest_ll(), a("ff02::16"), ip_proto::ICMPV6, 1, &mld),
        Instant::ZERO,
        &mut out,
    );
    assert!(out.frames.is_empty());
    assert_eq!(s.counters().drops_of(DropReason::NotForUs), 1);
    let t = Instant::ZERO + std::time::Duration::from_millis(1);
    assert_eq!(s.next_deadline(), Some(Instant::ZERO));
    s.poll(t, &mut out);
    assert_eq!(out.frames.len(), 1, "unsolicited RA");
    let (e, p) = ip_of(&out.frames[0]);
    assert_eq!(e.dst_addr, EthernetAddress([0x33, 0x33, 0, 0, 0, 1]));
    assert_eq!(
        (p.src_addr(), p.dst_addr(), p.hop_limit()),
        (gw_ll(), a("ff02::1"), 255)
    );
    expect_ra(icmp_of(&p), 1500);
    // Two more follow, INITIAL_RA_INTERVAL apart; then much later.
    let mut t = t;
    for _ in 1..super::INITIAL_RAS {
        let next = s.next_deadline().unwrap();
        assert_eq!(next, t + super::INITIAL_RA_INTERVAL);
        t = next;
        let mut o = Actions::default();
        s.poll(t, &mut o);
        assert_eq!(o.frames.len(), 1, "initial unsolicited RA");
    }
    let next = s.next_deadline().unwrap();
    assert!(next >= t + super::RA_INTERVAL);

    let rs = Icmpv6Repr::RouterSolicit {
        lladdr: Some(GUEST_MAC.0),
    };
    let mut out = Actions::default();
    s.ingress(&icmp_frame(&rs, guest_ll(), a("ff02::2"), 255), t, &mut out);
    assert_eq!(out.frames.len(), 1);
    let (e, p) = ip_of(&out.frames[0]);
    assert_eq!(e.dst_addr, GUEST_MAC);
    assert_eq!(p.dst_addr(), guest_ll());
    expect_ra(icmp_of(&p), 1500);
}

#[test]
fn echo_to_the_gateway_is_answered_and_elsewhere_relayed() {
    let mut s = stack_with(|_| {});
    let echo = Icmpv6Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 3,
        data: b"ping6",
    };
    for dst in [gw(), gw_ll()] {
        let src = if dst == gw() { guest() } else { guest_ll() };
        let mut out = Actions::default();
        s.ingress(&icmp_frame(&echo, src, dst, 64), Instant::ZERO, &mut out);
        assert!(out.ops.is_empty());
        let (_, p) = ip_of(&out.frames[0]);
        assert_eq!((p.src_addr(), p.dst_addr()), (dst, src));
        assert_eq!(
            icmp_of(&p),
            Icmpv6Repr::EchoReply {
                ident: 0x1234,
                seq_no: 3,
                data: b"ping6"
            }
        );
    }
    // Elsewhere: a ping socket to that address.
    let far = a("2001:db8::7");
    let mut out = Actions::default();
    s.ingress(
        &icmp_frame(&echo, guest(), far, 64),
        Instant::ZERO,
        &mut out,
    );
    let [
        SockOp::Open {
            flow, proto, dst, ..
        },
    ] = out.ops[..]
    else {
        panic!("{:?}", out.ops)
    };
    assert_eq!((proto, dst), (Proto::Icmp, SocketAddr::from((far, 0))));
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Connected {
            flow,
            result: Ok(()),
        },
        Instant::ZERO,
        &mut out,
    );
    assert!(matches!(out.ops[0], SockOp::Send { .. }));
    // The kernel's reply carries the socket's identifier; the guest gets its own.
    let reply = Icmpv6Repr::EchoReply {
        ident: 999,
        seq_no: 3,
        data: b"ping6",
    };
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Received {
            flow,
            result: Ok(icmp(&reply, far, guest())),
        },
        Instant::ZERO,
        &mut out,
    );
    let (_, p) = ip_of(&out.frames[0]);
    assert_eq!((p.src_addr(), p.dst_addr()), (far, guest()));
    assert_eq!(
        icmp_of(&p),
        Icmpv6Repr::EchoReply {
            ident: 0x1234,
            seq_no: 3,
            data: b"ping6"
        }
    );
}

/// SYN guest:40000 → [gw]:8080 and the host's connect; returns the flow and
/// the SYN-ACK's TCP header.
fn handshake(s: &mut Stack) -> (FlowId, SeqNumber) {
    let mut out = Actions::default();
    let l4 = tcp(g(40000), SocketAddr::from((gw(), 8080)), syn());
    let fr = wrap(s, frame(guest(), gw(), ip_proto::TCP, 64, &l4));
    s.ingress(&fr, Instant::ZERO, &mut out);
    let [SockOp::Open { flow, dst, mss, .. }] = out.ops[..] else {
        panic!("{:?}", out.ops)
    };
    assert_eq!(dst, SocketAddr::from((Ipv6Addr::LOCALHOST, 8080)));
    assert_eq!(mss, Some(1440));
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Connected {
            flow,
            result: Ok(()),
        },
        Instant::ZERO,
        &mut out,
    );
    let f = out.frames.last().unwrap();
    let (f, partial) = if s.config().offload.vnet_hdr {
        (&f[12..], unvnet(f).0.needs_csum())
    } else {
        (&f[..], false)
    };
    let (_, p) = ip_of(f);
    assert_eq!((p.src_addr(), p.dst_addr()), (gw(), guest()));
    let t = TcpPacket::new_checked(p.payload()).unwrap();
    assert_eq!(t.verify_checksum(gw().into(), guest().into()), !partial);
    let sa = TcpRepr::parse(&t, gw().into(), guest().into(), !partial).unwrap();
    assert!(sa.flags.syn && sa.ack_number == Some(SeqNumber(2)));
    let ours = sa.seq_number + 1usize;
    // The guest's ACK completes the handshake.
    let ack = TcpRepr {
        flags: wire::tcp::Flags::default(),
        seq_number: SeqNumber(2),
        ack_number: Some(ours),
        window_len: 2000,
        max_seg_size: None,
        window_scale: None,
        sack_permitted: false,
        ..syn()
    };
    let l4 = tcp(g(40000), SocketAddr::from((gw(), 8080)), ack);
    let mut out = Actions::default();
    let fr = wrap(s, frame(guest(), gw(), ip_proto::TCP, 64, &l4));
    s.ingress(&fr, Instant::ZERO, &mut out);
    (flow, ours)
}

/// `frame` behind a plain virtio-net header when the stack's link has one.
fn wrap(s: &Stack, frame: Vec<u8>) -> Vec<u8> {
    if !s.config().offload.vnet_hdr {
        return frame;
    }
    let mut v = vec![0u8; 12];
    v.extend_from_slice(&frame);
    v
}

#[test]
fn tcp_over_ipv6_maps_the_gateway_to_host_loopback() {
    let mut s = stack_with(|c| c.mtu = 1500);
    let (flow, ours) = handshake(&mut s);
    // Host data reaches the guest in MSS-sized segments (1500 - 60).
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Received {
            flow,
            result: Ok(vec![7u8; 3000]),
        },
        Instant::ZERO,
        &mut out,
    );
    let lens: Vec<usize> = out
        .frames
        .iter()
        .map(|f| {
            let (_, p) = ip_of(f);
            let t = TcpPacket::new_checked(p.payload()).unwrap();
            assert!(t.verify_checksum(gw().into(), guest().into()));
            t.payload().len()
        })
        .collect();
    assert_eq!(lens, vec![1440, 1440, 120]);
    let (_, p) = ip_of(&out.frames[0]);
    assert_eq!(
        TcpPacket::new_checked(p.payload()).unwrap().seq_number(),
        ours
    );
    assert_eq!(s.counters().tcp_opened, 1);
}

/// The RST a refused SYN gets, or a panic.
fn expect_rst(s: &mut Stack, dst: Ipv6Addr) {
    let mut out = Actions::default();
    let l4 = tcp(g(40001), SocketAddr::from((dst, 8080)), syn());
    s.ingress(
        &frame(guest(), dst, ip_proto::TCP, 64, &l4),
        Instant::ZERO,
        &mut out,
    );
    assert!(out.ops.is_empty(), "{:?}", out.ops);
    let (_, p) = ip_of(&out.frames[0]);
    let t = TcpPacket::new_checked(p.payload()).unwrap();
    assert!(t.verify_checksum(dst.into(), guest().into()));
    assert!(t.flags().rst);
}

#[test]
fn policy_and_host_loopback_apply_to_ipv6() {
    let mut s = stack_with(|c| c.host_loopback = false);
    expect_rst(&mut s, gw());
    assert_eq!(s.counters().drops_of(DropReason::Refused), 1);

    let deny = |c: &mut Config, rules: &[(&str, policy::Action)]| {
        c.policy.rules = rules
            .iter()
            .map(|(cidr, action)| policy::Rule {
                action: *action,
                cidr: cidr.parse().unwrap(),
            })
            .collect();
    };
    let mut s = stack_with(|c| deny(c, &[("::1/128", policy::Action::Deny)]));
    expect_rst(&mut s, gw());
    assert_eq!(s.counters().drops_of(DropReason::Denied), 1);
    // UDP to a denied address: ICMPv6 administratively prohibited.
    let far = a("2001:db8::9");
    let mut s = stack_with(|c| {
        deny(
            c,
            &[
                ("::/0", policy::Action::Deny),
                ("2001:db8::/32", policy::Action::Allow),
                ("2001:db8::9/128", policy::Action::Deny),
            ],
        )
    });
    let mut out = Actions::default();
    let l4 = udp(g(5000), SocketAddr::from((far, 7)), b"hello");
    s.ingress(
        &frame(guest(), far, ip_proto::UDP, 64, &l4),
        Instant::ZERO,
        &mut out,
    );
    assert!(out.ops.is_empty());
    let (_, p) = ip_of(&out.frames[0]);
    let Icmpv6Repr::DstUnreachable { code, data } = icmp_of(&p) else {
        panic!("not unreachable");
    };
    assert_eq!(code, icmpv6::unreachable::ADMIN_PROHIBITED);
    let inner = Ipv6Packet::new_unchecked(data);
    assert_eq!((inner.src_addr(), inner.dst_addr()), (guest(), far));
    // The more specific allow after the deny lets another address through.
    let ok = a("2001:db8::8");
    let l4 = udp(g(5000), SocketAddr::from((ok, 7)), b"hello");
    let mut out = Actions::default();
    s.ingress(
        &frame(guest(), ok, ip_proto::UDP, 64, &l4),
        Instant::ZERO,
        &mut out,
    );
    assert!(matches!(
        out.ops[0],
        SockOp::Open {
            proto: Proto::Udp,
            ..
        }
    ));
}

#[test]
fn dns_to_the_gateway_goes_to_the_resolver() {
    let mut s = stack_with(|_| {});
    let l4 = udp(g(5353), SocketAddr::from((gw(), 53)), b"query");
    let mut out = Actions::default();
    s.ingress(
        &frame(guest(), gw(), ip_proto::UDP, 64, &l4),
        Instant::ZERO,
        &mut out,
    );
    let [SockOp::Open { flow, dst, .. }] = out.ops[..] else {
        panic!("{:?}", out.ops)
    };
    assert_eq!(dst, SocketAddr::from(([127, 0, 0, 53], 53)));
    // The answer comes back from [gw]:53, with a valid checksum.
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Received {
            flow,
            result: Ok(b"answer".to_vec()),
        },
        Instant::ZERO,
        &mut out,
    );
    let (_, p) = ip_of(&out.frames[0]);
    assert_eq!((p.src_addr(), p.dst_addr()), (gw(), guest()));
    let u = UdpPacket::new_checked(p.payload()).unwrap();
    assert!(u.verify_checksum(gw().into(), guest().into()));
    assert_eq!((u.src_port(), u.payload()), (53, &b"answer"[..]));
}

#[test]
fn large_datagrams_to_the_guest_are_fragmented() {
    let mut s = stack_with(|c| c.mtu = 1500);
    let far = a("2001:db8::1");
    let l4 = udp(g(5000), SocketAddr::from((far, 7)), b"x");
    let mut out = Actions::default();
    s.ingress(
        &frame(guest(), far, ip_proto::UDP, 64, &l4),
        Instant::ZERO,
        &mut out,
    );
    let flow = out.ops[0].flow();
    let data: Vec<u8> = (0..4000u32).map(|i| (i % 253) as u8).collect();
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Received {
            flow,
            result: Ok(data.clone()),
        },
        Instant::ZERO,
        &mut out,
    );
    assert_eq!(out.frames.len(), 3);
    let mut whole = vec![0u8; 8 + 4000];
    let mut ident = None;
    for f in &out.frames {
        assert!(f.len() <= 14 + 1500);
        let (_, p) = ip_of(f);
        let ul = p.upper_layer().unwrap();
        let fi = ul.frag.unwrap();
        assert_eq!(*ident.get_or_insert(fi.ident), fi.ident);
        let body = &p.payload()[ul.offset..];
        let at = usize::from(fi.offset);
        whole[at..at + body.len()].copy_from_slice(body);
    }
    let u = UdpPacket::new_checked(&whole[..]).unwrap();
    assert!(u.verify_checksum(far.into(), guest().into()));
    assert_eq!(u.payload(), &data[..]);
    assert_eq!(s.counters().fragmented, 1);
}

#[test]
fn hostile_ipv6_is_a_counted_drop() {
    let mut s = stack_with(|_| {});
    let mut out = Actions::default();
    // An IPv4-mapped destination would reach IPv4 through an AF_INET6 socket.
    let mapped = a("::ffff:10.0.0.1");
    let l4 = tcp(g(40000), SocketAddr::from((mapped, 80)), syn());
    s.ingress(
        &frame(guest(), mapped, ip_proto::TCP, 64, &l4),
        Instant::ZERO,
        &mut out,
    );
    assert_eq!(s.counters().drops_of(DropReason::BadAddress), 1);
    // Link-local elsewhere and the guest's own prefix: nothing to NAT to.
    for dst in [a("fe80::99"), a("fd00:33::99")] {
        let l4 = udp(g(5000), SocketAddr::from((dst, 7)), b"x");
        s.ingress(
            &frame(guest(), dst, ip_proto::UDP, 64, &l4),
            Instant::ZERO,
            &mut out,
        );
    }
    assert_eq!(s.counters().drops_of(DropReason::BadAddress), 3);
    // Truncated extension header, unknown next header, bad checksum.
    s.ingress(
        &frame(guest(), gw(), 60, 64, &[17, 4]),
        Instant::ZERO,
        &mut out,
    );
    assert_eq!(s.counters().drops_of(DropReason::Truncated), 1);
    s.ingress(
        &frame(guest(), gw(), 132, 64, &[0; 8]),
        Instant::ZERO,
        &mut out,
    );
    assert_eq!(s.counters().drops_of(DropReason::Unsupported), 1);
    let mut l4 = udp(g(5000), SocketAddr::from((gw(), 53)), b"x");
    l4[6] ^= 1;
    s.ingress(
        &frame(guest(), gw(), ip_proto::UDP, 64, &l4),
        Instant::ZERO,
        &mut out,
    );
    assert_eq!(s.counters().drops_of(DropReason::BadChecksum), 1);
    // Payload length past the frame.
    let mut f = frame(guest(), gw(), ip_proto::UDP, 64, &udp(g(1), g(2), b""));
    f[14 + 5] = 200;
    s.ingress(&f, Instant::ZERO, &mut out);
    assert_eq!(s.counters().drops_of(DropReason::Truncated), 2);
    // Multicast source.
    let f = frame(a("ff02::1"), gw(), ip_proto::UDP, 64, &udp(g(1), g(2), b""));
    s.ingress(&f, Instant::ZERO, &mut out);
    assert_eq!(s.counters().drops_of(DropReason::BadAddress), 4);
    assert!(out.frames.iter().all(|f| {
        // Only the unsolicited RA may have gone out: nothing else answered.
        ip_of(f).1.next_header() == ip_proto::ICMPV6
    }));
    assert!(out.ops.is_empty());

    // With IPv6 off, every IPv6 frame is dropped as such.
    let mut s = stack_with(|c| c.ipv6 = false);
    let echo = Icmpv6Repr::EchoRequest {
        ident: 1,
        seq_no: 1,
        data: b"",
    };
    let mut out = Actions::default();
    s.ingress(
        &icmp_frame(&echo, guest(), gw(), 64),
        Instant::ZERO,
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(s.counters().drops_of(DropReason::Ipv6), 1);
}

// ───────────────────────────── TSO6 ─────────────────────────────

fn offload_stack(tso6: bool) -> Stack {
    stack_with(|c| {
        c.mtu = 1500;
        c.offload = Offload {
            vnet_hdr: true,
            tso: false,
            tso6,
            csum: false,
            ufo: false,
        };
    })
}

fn vnet(hdr: VnetHdrRepr, frame: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + frame.len()];
    hdr.emit(&mut VnetHdrPacket::new_unchecked(&mut buf[..]));
    buf[12..].copy_from_slice(frame);
    buf
}

fn unvnet(frame: &[u8]) -> (VnetHdrRepr, &[u8]) {
    let h = VnetHdrRepr::parse(&VnetHdrPacket::new_checked(frame).unwrap()).unwrap();
    (h, &frame[12..])
}

#[test]
fn tso6_super_frames_go_to_the_guest() {
    let mut s = offload_stack(true);
    let (flow, seq) = handshake(&mut s);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Received {
            flow,
            result: Ok(data.clone()),
        },
        Instant::ZERO,
        &mut out,
    );
    let max = tso6_max_payload(1440);
    assert_eq!(max, 45 * 1440);
    assert!(40 + 20 + max <= TSO_MAX_FRAME);
    assert_eq!(out.frames.len(), 2);
    let mut got = Vec::new();
    let mut next = seq;
    for (i, frame) in out.frames.iter().enumerate() {
        let (h, f) = unvnet(frame);
        assert_eq!(h.flags, vflags::NEEDS_CSUM);
        assert_eq!(h.gso_type, gso::TCPV6);
        assert_eq!(h.gso_size, 1440);
        assert_eq!(h.hdr_len, 14 + 40 + 20);
        assert_eq!((h.csum_start, h.csum_offset), (54, 16));
        let (_, p) = ip_of(f);
        let tcp_len = p.payload().len();
        assert_eq!(tcp_len, 20 + if i == 0 { max } else { 100_000 - max });
        let t = TcpPacket::new_checked(p.payload()).unwrap();
        assert_eq!(
            t.checksum(),
            wire::tcp::partial_checksum(gw().into(), guest().into(), tcp_len)
        );
        // Completed as the kernel does, it is the real checksum.
        let mut seg = p.payload().to_vec();
        let c = wire::checksum::finish(wire::checksum::sum(&seg, 0));
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        assert!(
            TcpPacket::new_checked(&seg[..])
                .unwrap()
                .verify_checksum(gw().into(), guest().into())
        );
        assert_eq!(t.seq_number(), next);
        next = next + (tcp_len - 20);
        got.extend_from_slice(t.payload());
    }
    assert_eq!(got, data);
    assert_eq!(s.counters().tx_gso_frames, 2);

    // A guest that refused TSO6 (but took TSO4) gets MSS-sized frames.
    let mut s = stack_with(|c| {
        c.mtu = 1500;
        c.offload = Offload {
            vnet_hdr: true,
            tso: true,
            tso6: false,
            csum: true,
            ufo: false,
        };
    });
    let (flow, _) = handshake(&mut s);
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Received {
            flow,
            result: Ok(vec![1u8; 10_000]),
        },
        Instant::ZERO,
        &mut out,
    );
    assert!(out.frames.iter().all(|f| unvnet(f).0.gso_type == gso::NONE));
    assert!(out.frames.iter().all(|f| f.len() <= 12 + 14 + 1500));
    assert_eq!(s.counters().tx_gso_frames, 0);
}

/// A guest super-frame: `len` bytes of TCP payload after the handshake,
/// behind virtio-net header `hdr`.
fn guest_super(ours: SeqNumber, len: usize, hdr: VnetHdrRepr) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| u8::try_from(i % 249).unwrap()).collect();
    let r = TcpRepr {
        flags: wire::tcp::Flags::default(),
        seq_number: SeqNumber(2),
        ack_number: Some(ours),
        window_len: 2000,
        max_seg_size: None,
        window_scale: None,
        sack_permitted: false,
        payload: &payload,
        ..syn()
    };
    let mut l4 = vec![0u8; r.buffer_len()];
    // As Linux leaves it under NEEDS_CSUM: the pseudo-header sum only.
    r.emit_partial(
        &mut TcpPacket::new_unchecked(&mut l4[..]),
        guest().into(),
        gw().into(),
    );
    vnet(hdr, &frame(guest(), gw(), ip_proto::TCP, 64, &l4))
}

#[test]
fn tso6_super_frames_from_the_guest_are_consumed_and_hostile_headers_dropped() {
    let mut s = offload_stack(true);
    let (flow, ours) = handshake(&mut s);
    let good = VnetHdrRepr {
        flags: vflags::NEEDS_CSUM,
        gso_type: gso::TCPV6,
        hdr_len: 14 + 40 + 20,
        gso_size: 1440,
        csum_start: 54,
        csum_offset: 16,
        num_buffers: 0,
    };
    let mut out = Actions::default();
    s.ingress(&guest_super(ours, 30_000, good), Instant::ZERO, &mut out);
    let sent: usize = out
        .ops
        .iter()
        .map(|op| match op {
            SockOp::Send { flow: f, data } if *f == flow => data.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(sent, 30_000, "{:?}", out.ops.len());
    assert_eq!(s.counters().rx_gso_frames, 1);

    let bad = [
        // Checksum field not where TCP keeps it.
        VnetHdrRepr {
            csum_offset: 6,
            ..good
        },
        VnetHdrRepr {
            csum_start: 34,
            ..good
        },
        // GSO without a partial checksum.
        VnetHdrRepr {
            flags: vflags::DATA_VALID,
            ..good
        },
        // TCPV4 on an IPv6 packet.
        VnetHdrRepr {
            gso_type: gso::TCPV4,
            ..good
        },
        // UDP_L4 (never enabled), and an unknown type.
        VnetHdrRepr {
            gso_type: gso::UDP_L4,
            ..good
        },
        VnetHdrRepr {
            gso_type: 9,
            ..good
        },
    ];
    for (i, hdr) in bad.iter().enumerate() {
        let mut out = Actions::default();
        s.ingress(&guest_super(ours, 3000, *hdr), Instant::ZERO, &mut out);
        assert!(out.ops.is_empty(), "header {i} let data through");
        assert_eq!(
            s.counters().drops_of(DropReason::BadVnetHdr),
            i as u64 + 1,
            "header {i}"
        );
    }
    // TCPV6 on an IPv4 frame.
    let mut v4 = guest_super(ours, 100, good);
    v4[12 + 12..12 + 14].copy_from_slice(&[0x08, 0x00]);
    s.ingress(&v4, Instant::ZERO, &mut Actions::default());
    assert_eq!(s.counters().drops_of(DropReason::BadVnetHdr), 7);
    // A UDP datagram marked as a TCP super-frame.
    let l4 = udp(g(5000), SocketAddr::from((gw(), 53)), b"q");
    let f = vnet(
        VnetHdrRepr {
            csum_offset: 6,
            ..good
        },
        &frame(guest(), gw(), ip_proto::UDP, 64, &l4),
    );
    s.ingress(&f, Instant::ZERO, &mut Actions::default());
    assert_eq!(s.counters().drops_of(DropReason::BadVnetHdr), 8);
    let _ = IpAddr::V6(gw());
}

#[test]
fn fragments_from_the_guest_are_reassembled() {
    let mut s = stack_with(|c| c.mtu = 1500);
    let far = a("2001:db8::1");
    let data: Vec<u8> = (0..4000u32)
        .map(|i| u8::try_from(i % 241).unwrap())
        .collect();
    let l4 = udp(g(5000), SocketAddr::from((far, 7)), &data);
    // Three fragments, the last first: 1448 + 1448 + 1112 bytes.
    let piece = |off: usize, len: usize, more: bool| {
        let mut body = vec![0u8; 8 + len];
        wire::ipv6::emit_frag_header(
            &mut body,
            ip_proto::UDP,
            u16::try_from(off).unwrap(),
            more,
            0x5eed,
        );
        body[8..].copy_from_slice(&l4[off..off + len]);
        frame(guest(), far, wire::ipv6::ext::FRAGMENT, 64, &body)
    };
    let mut out = Actions::default();
    s.ingress(
        &piece(2896, l4.len() - 2896, false),
        Instant::ZERO,
        &mut out,
    );
    s.ingress(&piece(0, 1448, true), Instant::ZERO, &mut out);
    assert!(out.ops.is_empty(), "not whole yet");
    s.ingress(&piece(1448, 1448, true), Instant::ZERO, &mut out);
    let [SockOp::Open { flow, dst, .. }] = out.ops[..] else {
        panic!("{:?}", out.ops)
    };
    assert_eq!(dst, SocketAddr::from((far, 7)));
    assert_eq!(s.counters().reassembled, 1);
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Connected {
            flow,
            result: Ok(()),
        },
        Instant::ZERO,
        &mut out,
    );
    let SockOp::Send { data: sent, .. } = &out.ops[0] else {
        panic!("{:?}", out.ops)
    };
    assert_eq!(sent, &data);
    // A fragment that claims a GSO header is refused; an overlapping one counted.
    let mut v = vec![0u8; 12];
    v[1] = gso::TCPV6;
    v[4] = 1;
    v.extend_from_slice(&piece(0, 1448, true));
    let mut s = offload_stack(true);
    s.ingress(&v, Instant::ZERO, &mut Actions::default());
    assert_eq!(s.counters().drops_of(DropReason::BadVnetHdr), 1);
    let mut s = stack_with(|c| c.mtu = 1500);
    s.ingress(&piece(0, 1448, true), Instant::ZERO, &mut out);
    // Overlapping bytes that disagree (RFC 5722: discard the datagram).
    let mut evil = piece(8, 1448, true);
    let last = evil.len() - 1;
    evil[last - 1000] ^= 0xff;
    s.ingress(&evil, Instant::ZERO, &mut out);
    assert_eq!(s.counters().drops_of(DropReason::FragOverlap), 1);
}

#[test]
fn the_flow_cap_applies_to_ipv6() {
    let mut s = stack_with(|c| c.max_flows = 1);
    let far = a("2001:db8::1");
    let mut out = Actions::default();
    for port in [5000, 5001] {
        let l4 = udp(g(port), SocketAddr::from((far, 7)), b"x");
        s.ingress(
            &frame(guest(), far, ip_proto::UDP, 64, &l4),
            Instant::ZERO,
            &mut out,
        );
    }
    assert_eq!(out.ops.len(), 1, "one flow opened");
    assert_eq!(s.counters().drops_of(DropReason::FlowLimit), 1);
    let (_, p) = ip_of(out.frames.last().unwrap());
    assert!(matches!(
        icmp_of(&p),
        Icmpv6Repr::DstUnreachable {
            code: icmpv6::unreachable::ADMIN_PROHIBITED,
            ..
        }
    ));
    // TCP beyond the cap: RST.
    let l4 = tcp(g(40000), SocketAddr::from((far, 80)), syn());
    let mut out = Actions::default();
    s.ingress(
        &frame(guest(), far, ip_proto::TCP, 64, &l4),
        Instant::ZERO,
        &mut out,
    );
    assert!(out.ops.is_empty());
    let (_, p) = ip_of(&out.frames[0]);
    assert!(TcpPacket::new_checked(p.payload()).unwrap().flags().rst);
    assert_eq!(s.counters().drops_of(DropReason::FlowLimit), 2);
}

#[test]
fn dhcpv6_information_request_gets_the_dns_server() {
    let mut s = stack_with(|_| {});
    let mut req = vec![11u8, 1, 2, 3];
    req.extend_from_slice(&[0, 1, 0, 10, 0, 3, 0, 1]);
    req.extend_from_slice(&GUEST_MAC.0);
    let l4 = udp(
        SocketAddr::from((guest_ll(), 546)),
        SocketAddr::from((dhcpv6::ALL_SERVERS, 547)),
        &req,
    );
    let mut out = Actions::default();
    s.ingress(
        &frame(guest_ll(), dhcpv6::ALL_SERVERS, ip_proto::UDP, 1, &l4),
        Instant::ZERO,
        &mut out,
    );
    assert!(out.ops.is_empty());
    assert_eq!(out.frames.len(), 1);
    let (e, p) = ip_of(&out.frames[0]);
    assert_eq!(e.dst_addr, GUEST_MAC);
    assert_eq!((p.src_addr(), p.dst_addr()), (gw_ll(), guest_ll()));
    let u = UdpPacket::new_checked(p.payload()).unwrap();
    assert!(u.verify_checksum(gw_ll().into(), guest_ll().into()));
    assert_eq!((u.src_port(), u.dst_port()), (547, 546));
    let r = u.payload();
    assert_eq!(&r[..4], &[7, 1, 2, 3]);
    assert!(r.ends_with(&gw().octets()), "DNS server option last");
    // Malformed: counted.
    let l4 = udp(
        SocketAddr::from((guest_ll(), 546)),
        SocketAddr::from((dhcpv6::ALL_SERVERS, 547)),
        &[11, 1],
    );
    s.ingress(
        &frame(guest_ll(), dhcpv6::ALL_SERVERS, ip_proto::UDP, 1, &l4),
        Instant::ZERO,
        &mut out,
    );
    assert_eq!(s.counters().drops_of(DropReason::Dhcp), 1);
}
