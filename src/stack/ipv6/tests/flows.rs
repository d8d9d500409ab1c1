//! IPv6 flows: echo, TCP and UDP to the host, policy and the flow cap,
//! DNS and DHCPv6, fragments both ways, and hostile packets.

use super::*;

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
