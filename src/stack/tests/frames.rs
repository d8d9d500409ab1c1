//! The basics, frame by frame: ARP, echo to the gateway, TCP and UDP
//! flows, DNS, fragments both ways, DHCP, and malformed input.

use super::*;

#[test]
fn arp_for_the_gateway_is_answered() {
    let mut s = stack_with(|_| {});
    let req = ArpRepr {
        operation: ArpOperation::Request,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: GUEST,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: GW,
    };
    let mut a = vec![0u8; 28];
    req.emit(&mut ArpPacket::new_unchecked(&mut a[..]));
    let mut out = Actions::default();
    s.ingress(
        &eth(EthernetAddress::BROADCAST, EtherType::Arp, &a),
        Instant::ZERO,
        &mut out,
    );
    assert_eq!(out.frames.len(), 1);
    let f = EthernetFrame::new_checked(&out.frames[0][..]).unwrap();
    assert_eq!(f.dst_addr(), GUEST_MAC);
    let rep = ArpRepr::parse(&ArpPacket::new_checked(f.payload()).unwrap()).unwrap();
    assert_eq!(rep.operation, ArpOperation::Reply);
    assert_eq!(rep.source_protocol_addr, GW);
    assert_eq!(rep.source_hardware_addr, gw_mac());
    assert_eq!(rep.target_protocol_addr, GUEST);

    // A probe for the guest's own address (DAD) gets no answer.
    let probe = ArpRepr {
        source_protocol_addr: Ipv4Addr::UNSPECIFIED,
        target_protocol_addr: GUEST,
        ..req
    };
    probe.emit(&mut ArpPacket::new_unchecked(&mut a[..]));
    let mut out = Actions::default();
    s.ingress(
        &eth(EthernetAddress::BROADCAST, EtherType::Arp, &a),
        Instant::ZERO,
        &mut out,
    );
    assert!(out.is_empty());
}

#[test]
fn ping_to_the_gateway_is_answered_locally() {
    let mut s = stack_with(|_| {});
    let echo = Icmpv4Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 7,
        data: b"abcdefgh",
    };
    let mut l4 = vec![0u8; echo.buffer_len()];
    echo.emit(&mut Icmpv4Packet::new_unchecked(&mut l4[..]));
    let mut out = Actions::default();
    s.ingress(&ip_frame(GW, ip_proto::ICMP, &l4), Instant::ZERO, &mut out);
    assert!(out.ops.is_empty());
    assert_eq!(out.frames.len(), 1);
    let (e, p) = ip_of(&out.frames[0]);
    assert_eq!(e.dst_addr, GUEST_MAC);
    assert_eq!((p.src_addr(), p.dst_addr()), (GW, GUEST));
    let icmp = Icmpv4Packet::new_checked(p.payload()).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!(
        Icmpv4Repr::parse(&icmp).unwrap(),
        Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 7,
            data: b"abcdefgh"
        }
    );
}

#[test]
fn tcp_syn_opens_a_mapped_host_socket() {
    let mut s = stack_with(|_| {});
    let g = SocketAddr::from((GUEST, 40000));
    let mut out = Actions::default();
    s.ingress(
        &ip_frame(GW, ip_proto::TCP, &tcp_syn(g, SocketAddr::from((GW, 8080)))),
        Instant::ZERO,
        &mut out,
    );
    let [SockOp::Open { proto, dst, .. }] = &out.ops[..] else {
        panic!("{:?}", out.ops)
    };
    assert_eq!(
        (*proto, *dst),
        (Proto::Tcp, SocketAddr::from(([127, 0, 0, 1], 8080)))
    );
    assert!(out.frames.is_empty(), "SYN-ACK waits for the host");

    let remote = Ipv4Addr::new(10, 9, 8, 7);
    let mut out = Actions::default();
    s.ingress(
        &ip_frame(
            remote,
            ip_proto::TCP,
            &tcp_syn(g, SocketAddr::from((remote, 443))),
        ),
        Instant::ZERO,
        &mut out,
    );
    assert!(
        matches!(out.ops[..], [SockOp::Open { dst, .. }] if dst == SocketAddr::from((remote, 443)))
    );
}

#[test]
fn no_host_loopback_refuses_with_rst() {
    let mut s = stack_with(|c| c.host_loopback = false);
    let mut out = Actions::default();
    let g = SocketAddr::from((GUEST, 40000));
    s.ingress(
        &ip_frame(GW, ip_proto::TCP, &tcp_syn(g, SocketAddr::from((GW, 22)))),
        Instant::ZERO,
        &mut out,
    );
    assert!(out.ops.is_empty());
    let (_, p) = ip_of(&out.frames[0]);
    let t = TcpRepr::parse(
        &TcpPacket::new_checked(p.payload()).unwrap(),
        GW.into(),
        GUEST.into(),
        true,
    )
    .unwrap();
    assert!(t.flags.rst);
    assert_eq!(t.ack_number, Some(SeqNumber(2)));
    assert_eq!(s.counters().drops_of(DropReason::Refused), 1);
}

#[test]
fn full_tcp_exchange_through_frames() {
    let mut s = stack_with(|_| {});
    let g = SocketAddr::from((GUEST, 40001));
    let r = SocketAddr::from((GW, 80));
    let mut out = Actions::default();
    s.ingress(
        &ip_frame(GW, ip_proto::TCP, &tcp_syn(g, r)),
        Instant::ZERO,
        &mut out,
    );
    let flow = out.ops[0].flow();
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Connected {
            flow,
            result: Ok(()),
        },
        Instant::ZERO,
        &mut out,
    );
    let (_, p) = ip_of(&out.frames[0]);
    let synack = TcpRepr::parse(
        &TcpPacket::new_checked(p.payload()).unwrap(),
        GW.into(),
        GUEST.into(),
        true,
    )
    .unwrap();
    assert!(synack.flags.syn && synack.ack_number == Some(SeqNumber(2)));
    assert_eq!((synack.src_port, synack.dst_port), (80, 40001));

    // Guest ACK with data.
    let data = TcpRepr {
        src_port: 40001,
        dst_port: 80,
        flags: wire::tcp::Flags::default(),
        seq_number: SeqNumber(2),
        ack_number: Some(synack.seq_number + 1usize),
        window_len: 1000,
        max_seg_size: None,
        window_scale: None,
        sack_permitted: false,
        payload: b"GET / HTTP/1.0\r\n\r\n",
    };
    let mut l4 = vec![0u8; data.buffer_len()];
    data.emit(
        &mut TcpPacket::new_unchecked(&mut l4[..]),
        GUEST.into(),
        GW.into(),
    );
    let mut out = Actions::default();
    s.ingress(&ip_frame(GW, ip_proto::TCP, &l4), Instant::ZERO, &mut out);
    assert!(out.ops.contains(&SockOp::Send {
        flow,
        data: b"GET / HTTP/1.0\r\n\r\n".to_vec()
    }));
    s.poll(Instant::ZERO, &mut out);
    assert!(
        out.frames.is_empty(),
        "a small request's ACK waits for the reply (delayed ACK)"
    );
    let due = Instant::ZERO + tcp::conn::DELAYED_ACK;
    assert_eq!(s.next_deadline(), Some(due));
    s.poll(due, &mut out);
    let (_, p) = ip_of(out.frames.last().unwrap());
    let ack = TcpRepr::parse(
        &TcpPacket::new_checked(p.payload()).unwrap(),
        GW.into(),
        GUEST.into(),
        true,
    )
    .unwrap();
    assert_eq!(
        ack.ack_number,
        Some(SeqNumber(2 + 18)),
        "ACK sent once the delay ran out"
    );
}

#[test]
fn dns_to_the_gateway_goes_to_the_resolver() {
    let mut s = stack_with(|_| {});
    let mut out = Actions::default();
    let l4 = udp(
        SocketAddr::from((GUEST, 5353)),
        SocketAddr::from((GW, 53)),
        b"query",
    );
    s.ingress(&ip_frame(GW, ip_proto::UDP, &l4), Instant::ZERO, &mut out);
    assert!(
        matches!(out.ops[..], [SockOp::Open { proto: Proto::Udp, dst, .. }] if dst == SocketAddr::from(([127, 0, 0, 53], 53)))
    );
    let flow = out.ops[0].flow();
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Connected {
            flow,
            result: Ok(()),
        },
        Instant::ZERO,
        &mut out,
    );
    assert_eq!(
        out.ops[0],
        SockOp::Send {
            flow,
            data: b"query".to_vec()
        },
        "queued datagram sent once connected"
    );
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
    assert_eq!(
        p.src_addr(),
        GW,
        "the answer comes from the address the guest asked"
    );
    let u = UdpPacket::new_checked(p.payload()).unwrap();
    assert!(u.verify_checksum(GW.into(), GUEST.into()));
    assert_eq!(
        (u.src_port(), u.dst_port(), u.payload()),
        (53, 5353, &b"answer"[..])
    );
    // Idle DNS flows expire after the short timeout.
    let mut out = Actions::default();
    s.poll(Instant::from_millis(11_000), &mut out);
    assert!(out.ops.iter().any(|o| matches!(o, SockOp::Close { .. })));
    assert_eq!(s.flow_count(), 0);
}

#[test]
fn udp_port_unreachable_becomes_icmp() {
    let mut s = stack_with(|_| {});
    let mut out = Actions::default();
    let l4 = udp(
        SocketAddr::from((GUEST, 5000)),
        SocketAddr::from((GW, 9)),
        b"x",
    );
    s.ingress(&ip_frame(GW, ip_proto::UDP, &l4), Instant::ZERO, &mut out);
    let flow = out.ops[0].flow();
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Received {
            flow,
            result: Err(111),
        },
        Instant::ZERO,
        &mut out,
    );
    let (_, p) = ip_of(&out.frames[0]);
    assert_eq!(p.next_header(), ip_proto::ICMP);
    let icmp = Icmpv4Packet::new_checked(p.payload()).unwrap();
    assert_eq!((icmp.msg_type(), icmp.msg_code()), (3, 3));
}

#[test]
fn big_host_datagram_is_fragmented_to_the_mtu_and_reassembles() {
    let mut s = stack_with(|c| c.mtu = 1500);
    let mut out = Actions::default();
    let l4 = udp(
        SocketAddr::from((GUEST, 5001)),
        SocketAddr::from((GW, 7)),
        b"x",
    );
    s.ingress(&ip_frame(GW, ip_proto::UDP, &l4), Instant::ZERO, &mut out);
    let flow = out.ops[0].flow();
    let big: Vec<u8> = (0..65507u32).map(|i| (i % 251) as u8).collect();
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Received {
            flow,
            result: Ok(big.clone()),
        },
        Instant::ZERO,
        &mut out,
    );
    assert!(out.frames.len() >= 45);
    let mut r = frag::Reassembler::new(frag::Limits::default());
    let mut whole = None;
    for f in &out.frames {
        assert!(f.len() <= 1514, "frame within MTU");
        let (_, p) = ip_of(f);
        let key = frag::FragKey {
            src: p.src_addr().into(),
            dst: p.dst_addr().into(),
            proto: p.next_header(),
            ident: p.ident().into(),
        };
        if let Some(w) = r
            .push(
                key,
                p.frag_offset(),
                p.more_frags(),
                p.payload(),
                Instant::ZERO,
            )
            .unwrap()
        {
            whole = Some(w);
        }
    }
    let whole = whole.expect("reassembles");
    let u = UdpPacket::new_checked(&whole[..]).unwrap();
    assert!(u.verify_checksum(GW.into(), GUEST.into()));
    assert_eq!(u.payload(), &big[..]);
}

#[test]
fn fragmented_guest_datagram_is_reassembled_into_one_send() {
    let mut s = stack_with(|c| c.mtu = 1500);
    let big: Vec<u8> = (0..65507u32).map(|i| (i % 249) as u8).collect();
    let l4 = udp(
        SocketAddr::from((GUEST, 6000)),
        SocketAddr::from((GW, 7)),
        &big,
    );
    let mut out = Actions::default();
    for (i, (off, len, more)) in frag::fragments(l4.len(), 1500).enumerate() {
        let mut pkt = ipv4(GUEST, GW, ip_proto::UDP, &l4[off..off + len]);
        let mut p = Ipv4Packet::new_unchecked(&mut pkt[..]);
        p.set_ident(0x4242);
        p.set_frag(false, more, u16::try_from(off).unwrap());
        p.fill_checksum();
        s.ingress(
            &eth(gw_mac(), EtherType::Ipv4, &pkt),
            Instant::from_micros(i as u64),
            &mut out,
        );
    }
    let flow = out.ops[0].flow();
    s.host_event(
        HostEvent::Connected {
            flow,
            result: Ok(()),
        },
        Instant::ZERO,
        &mut out,
    );
    let sent: Vec<_> = out
        .ops
        .iter()
        .filter_map(|o| match o {
            SockOp::Send { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0], &big);
    assert_eq!(s.counters().reassembled, 1);
}

#[test]
fn dhcp_discover_gets_a_broadcast_offer() {
    let mut s = stack_with(|_| {});
    let mut m = vec![0u8; 240];
    m[0] = 1;
    m[1] = 1;
    m[2] = 6;
    m[4..8].copy_from_slice(&[1, 2, 3, 4]);
    m[28..34].copy_from_slice(&GUEST_MAC.0);
    m[236..240].copy_from_slice(&[99, 130, 83, 99]);
    m.extend_from_slice(&[53, 1, 1, 255]);
    let l4 = udp(
        SocketAddr::from(([0, 0, 0, 0], 68)),
        SocketAddr::from(([255, 255, 255, 255], 67)),
        &m,
    );
    let frame = eth(
        EthernetAddress::BROADCAST,
        EtherType::Ipv4,
        &ipv4(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            ip_proto::UDP,
            &l4,
        ),
    );
    let mut out = Actions::default();
    s.ingress(&frame, Instant::ZERO, &mut out);
    assert_eq!(out.frames.len(), 1);
    let (e, p) = ip_of(&out.frames[0]);
    assert_eq!(e.dst_addr, EthernetAddress::BROADCAST);
    assert_eq!((p.src_addr(), p.dst_addr()), (GW, Ipv4Addr::BROADCAST));
    let u = UdpPacket::new_checked(p.payload()).unwrap();
    assert_eq!((u.src_port(), u.dst_port()), (67, 68));
    assert_eq!(&u.payload()[16..20], &GUEST.octets(), "yiaddr");
}

#[test]
fn malformed_frames_are_dropped_by_reason() {
    let mut s = stack_with(|_| {});
    let mut out = Actions::default();
    s.ingress(&[0u8; 5], Instant::ZERO, &mut out);
    assert_eq!(s.counters().drops_of(DropReason::Truncated), 1);

    let mut pkt = ipv4(
        GUEST,
        GW,
        ip_proto::UDP,
        &udp(
            SocketAddr::from((GUEST, 1)),
            SocketAddr::from((GW, 2)),
            b"x",
        ),
    );
    pkt[0] = 0x44; // IHL 4
    s.ingress(
        &eth(gw_mac(), EtherType::Ipv4, &pkt),
        Instant::ZERO,
        &mut out,
    );
    pkt[0] = 0x45;
    pkt[10] ^= 0xff; // header checksum
    s.ingress(
        &eth(gw_mac(), EtherType::Ipv4, &pkt),
        Instant::ZERO,
        &mut out,
    );
    pkt[10] ^= 0xff;
    pkt[2..4].copy_from_slice(&9000u16.to_be_bytes()); // total length beyond the frame
    s.ingress(
        &eth(gw_mac(), EtherType::Ipv4, &pkt),
        Instant::ZERO,
        &mut out,
    );
    let c = s.counters();
    assert_eq!(
        c.drops_of(DropReason::Malformed) + c.drops_of(DropReason::Truncated),
        3
    );
    assert_eq!(c.drops_of(DropReason::BadChecksum), 1);
    assert!(out.is_empty());
}

#[test]
fn random_frames_never_panic_and_flows_stay_bounded() {
    let mut s = stack_with(|c| c.max_flows = 64);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let base = ip_frame(
        GW,
        ip_proto::TCP,
        &tcp_syn(SocketAddr::from((GUEST, 1000)), SocketAddr::from((GW, 80))),
    );
    let mut out = Actions::default();
    for i in 0..20_000u64 {
        let mut f = base.clone();
        // Flip a few bytes, sometimes truncate.
        for _ in 0..(rnd() % 4) {
            let at = usize::try_from(rnd() % f.len() as u64).unwrap();
            f[at] = rnd().to_le_bytes()[0];
        }
        if rnd() % 5 == 0 {
            let len = usize::try_from(rnd() % f.len() as u64).unwrap();
            f.truncate(len);
        }
        s.ingress(&f, Instant::from_micros(i), &mut out);
        out.frames.clear();
        out.ops.clear();
    }
    assert!(s.flow_count() <= 64);
}
