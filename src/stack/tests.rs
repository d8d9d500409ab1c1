//! Frame-level tests of the whole stack: guest frames in, frames and socket
//! ops out, time by hand.

use std::net::{Ipv4Addr, SocketAddr};

use super::wire::vnet_hdr::flags as vnet_flags;
use super::wire::{self, *};
use super::*;

const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 33, 15);
const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 33, 1);

fn stack_with(f: impl FnOnce(&mut Config)) -> Stack {
    let mut cfg = Config {
        resolvers: vec![SocketAddr::from(([127, 0, 0, 53], 53))],
        ..Config::default()
    };
    f(&mut cfg);
    Stack::new(cfg)
}

fn gw_mac() -> EthernetAddress {
    Config::default().gateway_mac
}

fn eth(dst: EthernetAddress, ethertype: EtherType, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 14 + payload.len()];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: dst,
        ethertype,
    }
    .emit(&mut f);
    f.payload_mut().copy_from_slice(payload);
    buf
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; 20 + l4.len()];
    let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
    ip.emit(&mut p);
    p.payload_mut().copy_from_slice(l4);
    buf
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

fn tcp_syn(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let r = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        flags: wire::tcp::Flags {
            syn: true,
            ..Default::default()
        },
        seq_number: SeqNumber(1),
        ack_number: None,
        window_len: 65535,
        max_seg_size: Some(1460),
        window_scale: Some(7),
        sack_permitted: true,
        payload: &[],
    };
    let mut l4 = vec![0u8; r.buffer_len()];
    r.emit(
        &mut TcpPacket::new_unchecked(&mut l4[..]),
        src.ip(),
        dst.ip(),
    );
    l4
}

fn ip_frame(dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    eth(gw_mac(), EtherType::Ipv4, &ipv4(GUEST, dst, proto, l4))
}

/// Parse a frame to the guest down to its IPv4 packet.
fn ip_of(frame: &[u8]) -> (EthernetRepr, Ipv4Packet<&[u8]>) {
    let f = EthernetFrame::new_checked(frame).unwrap();
    let e = EthernetRepr::parse(&f).unwrap();
    let p = Ipv4Packet::new_checked(&frame[14..]).unwrap();
    assert!(p.verify_checksum());
    (e, p)
}

/// The guest's (broadcast) ARP request from `from` for `target`.
fn arp_request(from: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let req = ArpRepr {
        operation: ArpOperation::Request,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: from,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut a = vec![0u8; 28];
    req.emit(&mut ArpPacket::new_unchecked(&mut a[..]));
    eth(EthernetAddress::BROADCAST, EtherType::Arp, &a)
}

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
    let [
        SockOp::Open {
            proto, dst, mss, ..
        },
    ] = &out.ops[..]
    else {
        panic!("{:?}", out.ops)
    };
    assert_eq!(
        (*proto, *dst, *mss),
        (
            Proto::Tcp,
            SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(1460)
        )
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
        "ACK sent at the end of the batch"
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

// ───────────────────────────── offloads ─────────────────────────────

fn offload_stack(tso: bool, csum: bool) -> Stack {
    stack_with(|c| {
        c.mtu = 1500;
        c.offload = Offload {
            vnet_hdr: true,
            tso,
            tso6: tso,
            csum,
            ufo: false,
        };
    })
}

/// `frame` behind a virtio-net header.
fn vnet(hdr: VnetHdrRepr, frame: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + frame.len()];
    hdr.emit(&mut VnetHdrPacket::new_unchecked(&mut buf[..]));
    buf[12..].copy_from_slice(frame);
    buf
}

/// Split a frame to the guest into its virtio-net header and Ethernet frame.
fn unvnet(frame: &[u8]) -> (VnetHdrRepr, &[u8]) {
    let h = VnetHdrRepr::parse(&VnetHdrPacket::new_checked(frame).unwrap()).unwrap();
    (h, &frame[12..])
}

/// With UFO, a host datagram larger than the MTU goes to the guest as one
/// frame (gso_type UDP, gso_size the fragment payload, a whole computed
/// checksum) instead of 45 fragments; one that fits goes as before.
#[test]
fn big_host_datagram_goes_to_the_guest_whole_with_ufo() {
    let mut s = stack_with(|c| {
        c.mtu = 1500;
        c.offload = Offload {
            vnet_hdr: true,
            tso: true,
            tso6: true,
            csum: true,
            ufo: true,
        };
    });
    let mut out = Actions::default();
    let l4 = udp(
        SocketAddr::from((GUEST, 5001)),
        SocketAddr::from((GW, 7)),
        b"x",
    );
    let frame = vnet(VnetHdrRepr::PLAIN, &ip_frame(GW, ip_proto::UDP, &l4));
    s.ingress(&frame, Instant::ZERO, &mut out);
    let flow = out.ops[0].flow();
    for (len, ufo) in [(65507usize, true), (1473, true), (1472, false)] {
        let data: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let mut out = Actions::default();
        s.host_event(
            HostEvent::Received {
                flow,
                result: Ok(data.clone()),
            },
            Instant::ZERO,
            &mut out,
        );
        assert_eq!(out.frames.len(), 1, "{len} bytes: one frame");
        let (h, f) = unvnet(&out.frames[0]);
        let (_, p) = ip_of(f);
        assert_eq!(usize::from(p.total_len()), 20 + 8 + len);
        assert!(!p.more_frags() && p.frag_offset() == 0);
        assert!(p.verify_checksum());
        if ufo {
            assert_eq!((h.gso_type, h.gso_size, h.hdr_len), (gso::UDP, 1480, 42));
            assert_eq!(h.flags, vnet_flags::DATA_VALID);
            let u = UdpPacket::new_checked(p.payload()).unwrap();
            assert!(u.verify_checksum(GW.into(), GUEST.into()));
            assert_eq!(u.payload(), &data[..]);
        } else {
            assert_eq!(h.gso_type, gso::NONE);
        }
    }
    assert_eq!(s.counters().ufo_frames, 2);
    assert_eq!(s.counters().fragmented, 2);
}

/// Guest segment (GUEST:40002 -> GW:80) with `flags`, `payload`; checksum computed.
fn guest_tcp(seq: SeqNumber, ack: Option<SeqNumber>, wnd: u16, payload: &[u8]) -> Vec<u8> {
    let r = TcpRepr {
        src_port: 40002,
        dst_port: 80,
        flags: wire::tcp::Flags::default(),
        seq_number: seq,
        ack_number: ack,
        window_len: wnd,
        max_seg_size: None,
        window_scale: None,
        sack_permitted: false,
        payload,
    };
    let mut l4 = vec![0u8; r.buffer_len()];
    r.emit(
        &mut TcpPacket::new_unchecked(&mut l4[..]),
        GUEST.into(),
        GW.into(),
    );
    ip_frame(GW, ip_proto::TCP, &l4)
}

/// Open GUEST:40002 -> GW:80 (MSS 1460, window scale 7) up to Established;
/// returns the flow and our next sequence number.
fn establish_offloaded(s: &mut Stack) -> (FlowId, SeqNumber) {
    let g = SocketAddr::from((GUEST, 40002));
    let r = SocketAddr::from((GW, 80));
    let mut out = Actions::default();
    s.ingress(
        &vnet(
            VnetHdrRepr::PLAIN,
            &ip_frame(GW, ip_proto::TCP, &tcp_syn(g, r)),
        ),
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
    let (h, f) = unvnet(&out.frames[0]);
    assert_eq!(h.gso_type, gso::NONE);
    let (_, p) = ip_of(f);
    let synack = TcpRepr::parse(
        &TcpPacket::new_checked(p.payload()).unwrap(),
        GW.into(),
        GUEST.into(),
        !h.needs_csum(),
    )
    .unwrap();
    let ours = synack.seq_number + 1usize;
    let mut out = Actions::default();
    // Window 2000 << 7 = 256000 bytes.
    s.ingress(
        &vnet(
            VnetHdrRepr::PLAIN,
            &guest_tcp(SeqNumber(2), Some(ours), 2000, &[]),
        ),
        Instant::ZERO,
        &mut out,
    );
    (flow, ours)
}

#[test]
fn tso_super_frames_carry_the_gso_header_and_a_partial_checksum() {
    let mut s = offload_stack(true, false);
    let (flow, seq) = establish_offloaded(&mut s);
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
    let max = tso_max_payload(1460);
    assert_eq!(max, 44 * 1460);
    assert_eq!(out.frames.len(), 2, "64240 + 35760 bytes");
    let mut got = Vec::new();
    let mut next = seq;
    for (i, frame) in out.frames.iter().enumerate() {
        let (h, f) = unvnet(frame);
        assert_eq!(h.flags, wire::vnet_hdr::flags::NEEDS_CSUM);
        assert_eq!(h.gso_type, gso::TCPV4);
        assert_eq!(h.gso_size, 1460);
        assert_eq!(h.hdr_len, 14 + 20 + 20);
        assert_eq!((h.csum_start, h.csum_offset), (34, 16));
        let (_, p) = ip_of(f);
        let tcp_len = p.payload().len();
        assert_eq!(tcp_len, 20 + if i == 0 { max } else { 100_000 - max });
        assert_eq!(usize::from(p.total_len()), 20 + tcp_len);
        let t = TcpPacket::new_checked(p.payload()).unwrap();
        // The field holds the pseudo-header sum (not complemented) over the
        // whole super-segment, as Linux's tcp_v4_send_check leaves it.
        assert_eq!(
            t.checksum(),
            wire::tcp::partial_checksum(GW.into(), GUEST.into(), tcp_len)
        );
        assert!(!t.verify_checksum(GW.into(), GUEST.into()));
        // Completing it as the kernel does (sum from csum_start to the end,
        // field included, complemented) gives the real checksum.
        let mut seg = p.payload().to_vec();
        let c = wire::checksum::finish(wire::checksum::sum(&seg, 0));
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        assert!(
            TcpPacket::new_checked(&seg[..])
                .unwrap()
                .verify_checksum(GW.into(), GUEST.into())
        );
        assert_eq!(t.seq_number(), next);
        next = next + (tcp_len - 20);
        assert_eq!(t.flags().psh, i == 1, "PSH on the last segment only");
        got.extend_from_slice(t.payload());
    }
    assert_eq!(got, data);
    assert_eq!(s.counters().tx_gso_frames, 2);

    // A segment that fits one MSS is a plain frame with a computed checksum.
    let mut out = Actions::default();
    s.ingress(
        &vnet(
            VnetHdrRepr::PLAIN,
            &guest_tcp(SeqNumber(2), Some(next), 2000, &[]),
        ),
        Instant::ZERO,
        &mut out,
    );
    s.host_event(
        HostEvent::Received {
            flow,
            result: Ok(b"small".to_vec()),
        },
        Instant::ZERO,
        &mut out,
    );
    let (h, f) = unvnet(out.frames.last().unwrap());
    assert_eq!(h.gso_type, gso::NONE);
    assert_eq!(h.flags, wire::vnet_hdr::flags::DATA_VALID);
    let (_, p) = ip_of(f);
    let t = TcpPacket::new_checked(p.payload()).unwrap();
    assert!(t.verify_checksum(GW.into(), GUEST.into()));
    assert_eq!(t.payload(), b"small");
}

#[test]
fn csum_offload_without_tso_sends_mss_segments_with_partial_checksums() {
    let mut s = offload_stack(false, true);
    let (flow, _) = establish_offloaded(&mut s);
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Received {
            flow,
            result: Ok(vec![7u8; 5000]),
        },
        Instant::ZERO,
        &mut out,
    );
    assert_eq!(out.frames.len(), 4, "1460 × 3 + 620");
    for frame in &out.frames {
        let (h, f) = unvnet(frame);
        assert_eq!(h.flags, wire::vnet_hdr::flags::NEEDS_CSUM);
        assert_eq!(h.gso_type, gso::NONE);
        assert_eq!((h.csum_start, h.csum_offset), (34, 16));
        let (_, p) = ip_of(f);
        let t = TcpPacket::new_checked(p.payload()).unwrap();
        assert_eq!(
            t.checksum(),
            wire::tcp::partial_checksum(GW.into(), GUEST.into(), p.payload().len())
        );
    }
    assert_eq!(s.counters().tx_gso_frames, 0);
}

#[test]
fn udp_to_the_guest_with_csum_offload_is_partial_unless_fragmented() {
    let mut s = offload_stack(false, true);
    let mut out = Actions::default();
    let l4 = udp(
        SocketAddr::from((GUEST, 5353)),
        SocketAddr::from((GW, 53)),
        b"query",
    );
    s.ingress(
        &vnet(VnetHdrRepr::PLAIN, &ip_frame(GW, ip_proto::UDP, &l4)),
        Instant::ZERO,
        &mut out,
    );
    let flow = out.ops[0].flow();
    s.host_event(
        HostEvent::Connected {
            flow,
            result: Ok(()),
        },
        Instant::ZERO,
        &mut out,
    );
    for (len, partial) in [(6usize, true), (4000, false)] {
        let mut out = Actions::default();
        s.host_event(
            HostEvent::Received {
                flow,
                result: Ok(vec![0x42; len]),
            },
            Instant::ZERO,
            &mut out,
        );
        let (h, f) = unvnet(&out.frames[0]);
        let (_, p) = ip_of(f);
        if partial {
            assert_eq!(out.frames.len(), 1);
            assert_eq!(h.flags, wire::vnet_hdr::flags::NEEDS_CSUM);
            assert_eq!((h.csum_start, h.csum_offset), (34, 6));
            let u = UdpPacket::new_checked(p.payload()).unwrap();
            let pseudo = wire::checksum::pseudo_header(
                GW.into(),
                GUEST.into(),
                ip_proto::UDP,
                u32::from(u.len()),
            );
            assert_eq!(u32::from(u.checksum()), pseudo);
        } else {
            assert_eq!(out.frames.len(), 3, "fragmented to MTU 1500");
            for fr in &out.frames {
                assert_eq!(unvnet(fr).0, VnetHdrRepr::PLAIN, "fragments: no offload");
            }
        }
    }
}

#[test]
fn needs_csum_from_the_guest_skips_checksum_verification() {
    let g = SocketAddr::from((GUEST, 40003));
    let mut l4 = tcp_syn(g, SocketAddr::from((GW, 8080)));
    // A partial checksum (as the kernel sends it) is not a full one.
    l4[16] ^= 0x5a;
    let frame = ip_frame(GW, ip_proto::TCP, &l4);
    let partial = VnetHdrRepr {
        flags: wire::vnet_hdr::flags::NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VnetHdrRepr::PLAIN
    };
    let valid = VnetHdrRepr {
        flags: wire::vnet_hdr::flags::DATA_VALID,
        ..VnetHdrRepr::PLAIN
    };
    for hdr in [partial, valid] {
        let mut s = offload_stack(true, true);
        let mut out = Actions::default();
        s.ingress(&vnet(hdr, &frame), Instant::ZERO, &mut out);
        assert!(
            matches!(out.ops[..], [SockOp::Open { .. }]),
            "{hdr:?}: accepted"
        );
        assert_eq!(s.counters().drops_of(DropReason::BadChecksum), 0);
    }
    // The same frame without the flag is a bad checksum.
    let mut s = offload_stack(true, true);
    let mut out = Actions::default();
    s.ingress(&vnet(VnetHdrRepr::PLAIN, &frame), Instant::ZERO, &mut out);
    assert!(out.ops.is_empty());
    assert_eq!(s.counters().drops_of(DropReason::BadChecksum), 1);
    // And without offloads the header's bytes are the Ethernet frame.
    let mut s = stack_with(|_| {});
    s.ingress(&vnet(partial, &frame), Instant::ZERO, &mut out);
    assert!(out.ops.is_empty());
}

#[test]
fn gso_super_frames_from_the_guest_are_one_big_segment() {
    let mut s = offload_stack(true, true);
    let (flow, ours) = establish_offloaded(&mut s);
    let payload: Vec<u8> = (0..60_000u32).map(|i| (i % 253) as u8).collect();
    let mut frame = guest_tcp(SeqNumber(2), Some(ours), 2000, &payload);
    // As Linux hands it over: the checksum field holds the pseudo-header sum.
    let pseudo = wire::tcp::partial_checksum(GUEST.into(), GW.into(), 20 + payload.len());
    frame[34 + 16..34 + 18].copy_from_slice(&pseudo.to_be_bytes());
    let hdr = VnetHdrRepr {
        flags: wire::vnet_hdr::flags::NEEDS_CSUM,
        gso_type: gso::TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let mut out = Actions::default();
    s.ingress(&vnet(hdr, &frame), Instant::ZERO, &mut out);
    assert_eq!(
        out.ops,
        vec![SockOp::Send {
            flow,
            data: payload
        }]
    );
    assert_eq!(s.counters().rx_gso_frames, 1);
    s.poll(Instant::ZERO, &mut out);
    let (_, f) = unvnet(out.frames.last().unwrap());
    let (_, p) = ip_of(f);
    let t = TcpPacket::new_checked(p.payload()).unwrap();
    assert_eq!(
        t.ack_number(),
        SeqNumber(2) + 60_000usize,
        "all of it ACKed"
    );
}

#[test]
fn bad_vnet_headers_are_dropped_and_counted() {
    let mut s = offload_stack(true, true);
    let arp = eth(EthernetAddress::BROADCAST, EtherType::Arp, &[0u8; 28]);
    let mut out = Actions::default();
    for bad in [
        vec![0u8; 5],
        // NEEDS_CSUM pointing past the end.
        vnet(
            VnetHdrRepr {
                flags: wire::vnet_hdr::flags::NEEDS_CSUM,
                csum_start: 60,
                csum_offset: 16,
                ..VnetHdrRepr::PLAIN
            },
            &arp,
        ),
        // USO: never negotiated.
        vnet(
            VnetHdrRepr {
                gso_type: gso::UDP_L4,
                gso_size: 1000,
                ..VnetHdrRepr::PLAIN
            },
            &arp,
        ),
    ] {
        s.ingress(&bad, Instant::ZERO, &mut out);
    }
    assert_eq!(s.counters().drops_of(DropReason::BadVnetHdr), 3);
    assert!(out.is_empty());
}

#[test]
fn every_frame_to_the_guest_gets_a_vnet_header() {
    let mut s = offload_stack(false, false);
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
        &vnet(
            VnetHdrRepr::PLAIN,
            &eth(EthernetAddress::BROADCAST, EtherType::Arp, &a),
        ),
        Instant::ZERO,
        &mut out,
    );
    let (h, f) = unvnet(&out.frames[0]);
    assert_eq!(h, VnetHdrRepr::PLAIN);
    assert_eq!(f.len(), 14 + 28);
    assert_eq!(
        EthernetFrame::new_checked(f).unwrap().ethertype(),
        EtherType::Arp
    );
    // Offloads without the header are ignored.
    let s = stack_with(|c| {
        c.offload = Offload {
            vnet_hdr: false,
            tso: true,
            tso6: true,
            csum: true,
            ufo: true,
        }
    });
    assert_eq!(s.config().offload, Offload::default());
}

// ─────────────────── isolation: outbound policy, flow limit ───────────────────

fn rules(list: &[(policy::Action, &str)], default: policy::Action) -> policy::Policy {
    policy::Policy {
        rules: list
            .iter()
            .map(|(action, c)| policy::Rule {
                action: *action,
                cidr: c.parse().unwrap(),
            })
            .collect(),
        default,
    }
}

/// The guest's SYN from `port` to `dst:dport`: (socket ops, frames).
fn syn_to(s: &mut Stack, port: u16, dst: Ipv4Addr, dport: u16) -> Actions {
    let mut out = Actions::default();
    let l4 = tcp_syn(
        SocketAddr::from((GUEST, port)),
        SocketAddr::from((dst, dport)),
    );
    s.ingress(&ip_frame(dst, ip_proto::TCP, &l4), Instant::ZERO, &mut out);
    out
}

/// The one frame in `out` is an RST answering a SYN with sequence 1.
fn assert_rst(out: &Actions, from: Ipv4Addr) {
    assert!(out.ops.is_empty(), "{:?}", out.ops);
    assert_eq!(out.frames.len(), 1);
    let (_, p) = ip_of(&out.frames[0]);
    assert_eq!((p.src_addr(), p.dst_addr()), (from, GUEST));
    let t = TcpRepr::parse(
        &TcpPacket::new_checked(p.payload()).unwrap(),
        from.into(),
        GUEST.into(),
        true,
    )
    .unwrap();
    assert!(t.flags.rst && !t.flags.syn);
    assert_eq!(t.ack_number, Some(SeqNumber(2)));
}

/// The one frame in `out` is ICMP unreachable `code` from `from`, quoting a
/// datagram of protocol `proto` from the guest to `from`; returns the quoted
/// L4 bytes.
fn assert_icmp_unreachable(out: &Actions, from: Ipv4Addr, code: u8, proto: u8) -> Vec<u8> {
    assert!(out.ops.is_empty(), "{:?}", out.ops);
    assert_eq!(out.frames.len(), 1);
    let (_, p) = ip_of(&out.frames[0]);
    assert_eq!((p.src_addr(), p.dst_addr()), (from, GUEST));
    assert_eq!(p.next_header(), ip_proto::ICMP);
    let icmp = Icmpv4Packet::new_checked(p.payload()).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!((icmp.msg_type(), icmp.msg_code()), (3, code));
    // RFC 792: 8 bytes of ICMP header, then the offending IP header + 8 bytes.
    let quoted = Ipv4Packet::new_checked(&p.payload()[8..]).unwrap();
    assert_eq!(
        (quoted.src_addr(), quoted.dst_addr(), quoted.next_header()),
        (GUEST, from, proto)
    );
    quoted.payload().to_vec()
}

fn udp_to(s: &mut Stack, port: u16, dst: Ipv4Addr, dport: u16, data: &[u8]) -> Actions {
    let mut out = Actions::default();
    let l4 = udp(
        SocketAddr::from((GUEST, port)),
        SocketAddr::from((dst, dport)),
        data,
    );
    s.ingress(&ip_frame(dst, ip_proto::UDP, &l4), Instant::ZERO, &mut out);
    out
}

fn ping_to(s: &mut Stack, ident: u16, dst: Ipv4Addr) -> Actions {
    let echo = Icmpv4Repr::EchoRequest {
        ident,
        seq_no: 1,
        data: b"ping-data",
    };
    let mut l4 = vec![0u8; echo.buffer_len()];
    echo.emit(&mut Icmpv4Packet::new_unchecked(&mut l4[..]));
    let mut out = Actions::default();
    s.ingress(&ip_frame(dst, ip_proto::ICMP, &l4), Instant::ZERO, &mut out);
    out
}

#[test]
fn policy_is_judged_on_the_host_address_last_match_wins() {
    use policy::Action::{Allow, Deny};
    // The gateway maps to 127.0.0.1, which the later, narrower allow admits.
    let mut s =
        stack_with(|c| c.policy = rules(&[(Deny, "127.0.0.0/8"), (Allow, "127.0.0.1/32")], Allow));
    let out = syn_to(&mut s, 40000, GW, 8080);
    assert!(
        matches!(out.ops[..], [SockOp::Open { dst, .. }] if dst == SocketAddr::from(([127, 0, 0, 1], 8080))),
        "{:?}",
        out.ops
    );
    assert_eq!(s.counters().drops_of(DropReason::Denied), 0);
    // The same rules the other way round: the broad deny is last and wins.
    let mut s =
        stack_with(|c| c.policy = rules(&[(Allow, "127.0.0.1/32"), (Deny, "127.0.0.0/8")], Allow));
    assert_rst(&syn_to(&mut s, 40000, GW, 8080), GW);
    assert_eq!(s.counters().drops_of(DropReason::Denied), 1);
    assert_eq!(s.counters().tcp_opened, 0);
    assert_eq!(s.flow_count(), 0, "a refused SYN leaves no flow");
    // A denied non-gateway prefix; others still pass.
    let mut s = stack_with(|c| c.policy = rules(&[(Deny, "10.0.0.0/8")], Allow));
    assert_rst(
        &syn_to(&mut s, 40001, Ipv4Addr::new(10, 1, 2, 3), 443),
        Ipv4Addr::new(10, 1, 2, 3),
    );
    let out = syn_to(&mut s, 40002, Ipv4Addr::new(11, 1, 2, 3), 443);
    assert!(matches!(out.ops[..], [SockOp::Open { .. }]));
    assert_eq!(s.counters().drops_of(DropReason::Denied), 1);
}

#[test]
fn restrict_refuses_udp_and_ping_as_admin_prohibited() {
    let far = Ipv4Addr::new(10, 1, 2, 3);
    let mut s = stack_with(|c| c.policy = rules(&[], policy::Action::Deny));
    let quoted = assert_icmp_unreachable(
        &udp_to(&mut s, 5000, far, 9999, b"hello"),
        far,
        wire::icmpv4::unreachable::ADMIN_PROHIBITED,
        ip_proto::UDP,
    );
    // The quoted UDP header names the guest's ports: its socket finds it.
    assert_eq!(&quoted[0..4], &[0x13, 0x88, 0x27, 0x0f]);
    assert_eq!(&quoted[8..], b"hello");
    let quoted = assert_icmp_unreachable(
        &ping_to(&mut s, 0x4242, far),
        far,
        wire::icmpv4::unreachable::ADMIN_PROHIBITED,
        ip_proto::ICMP,
    );
    // The quoted echo request carries the guest's identifier.
    assert_eq!(&quoted[0..1], &[8]);
    assert_eq!(&quoted[4..6], &[0x42, 0x42]);
    // The gateway's host loopback is not reachable either.
    assert_rst(&syn_to(&mut s, 40000, GW, 80), GW);
    assert_icmp_unreachable(
        &udp_to(&mut s, 5001, GW, 7, b"x"),
        GW,
        wire::icmpv4::unreachable::ADMIN_PROHIBITED,
        ip_proto::UDP,
    );
    assert_eq!(s.counters().drops_of(DropReason::Denied), 4);
    assert_eq!(s.flow_count(), 0);
}

#[test]
fn restrict_still_serves_dns_dhcp_and_gateway_ping() {
    let mut s = stack_with(|c| c.policy = rules(&[], policy::Action::Deny));
    // DNS over UDP and TCP to the gateway goes to the resolver (127.0.0.53
    // here, which the policy would deny: DNS is exempt).
    let out = udp_to(&mut s, 5353, GW, 53, b"query");
    assert!(
        matches!(out.ops[..], [SockOp::Open { proto: Proto::Udp, dst, .. }] if dst == SocketAddr::from(([127, 0, 0, 53], 53))),
        "{:?}",
        out.ops
    );
    let out = syn_to(&mut s, 40000, GW, 53);
    assert!(
        matches!(out.ops[..], [SockOp::Open { proto: Proto::Tcp, dst, .. }] if dst == SocketAddr::from(([127, 0, 0, 53], 53)))
    );
    // The gateway answers ping itself.
    let out = ping_to(&mut s, 7, GW);
    assert!(out.ops.is_empty());
    let (_, p) = ip_of(&out.frames[0]);
    assert_eq!(
        Icmpv4Packet::new_checked(p.payload()).unwrap().msg_type(),
        0
    );
    // DHCP.
    let mut m = vec![0u8; 240];
    m[0] = 1;
    m[1] = 1;
    m[2] = 6;
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
    assert_eq!(out.frames.len(), 1, "DHCP offer");
    assert_eq!(s.counters().drops_of(DropReason::Denied), 0);
}

#[test]
fn flows_beyond_max_flows_are_refused_and_counted() {
    let far = Ipv4Addr::new(10, 1, 2, 3);
    let mut s = stack_with(|c| c.max_flows = 2);
    for port in [40000, 40001] {
        assert!(matches!(
            syn_to(&mut s, port, far, 80).ops[..],
            [SockOp::Open { .. }]
        ));
    }
    assert_rst(&syn_to(&mut s, 40002, far, 80), far);
    assert_icmp_unreachable(
        &udp_to(&mut s, 5000, far, 53, b"q"),
        far,
        wire::icmpv4::unreachable::ADMIN_PROHIBITED,
        ip_proto::UDP,
    );
    assert_icmp_unreachable(
        &ping_to(&mut s, 9, far),
        far,
        wire::icmpv4::unreachable::ADMIN_PROHIBITED,
        ip_proto::ICMP,
    );
    assert_eq!(s.counters().drops_of(DropReason::FlowLimit), 3);
    assert_eq!(s.flow_count(), 2);
    // A retransmitted SYN of a live flow is not a new flow.
    let out = syn_to(&mut s, 40000, far, 80);
    assert!(out.ops.is_empty(), "{:?}", out.ops);
    assert_eq!(s.counters().drops_of(DropReason::FlowLimit), 3);
}

#[test]
fn flow_shares_add_up_to_the_total() {
    for total in [1, 5, 64, 65536] {
        for workers in 1..=8 {
            let shares: Vec<usize> = (0..workers)
                .map(|w| flow_share(total, w, workers))
                .collect();
            assert_eq!(shares.iter().sum::<usize>(), total, "{total} / {workers}");
            let (min, max) = (shares.iter().min(), shares.iter().max());
            assert!(max.unwrap() - min.unwrap() <= 1);
        }
    }
    assert_eq!(flow_share(5, 0, 0), 5, "no workers means one");
}

// ─────────────────────────── published ports ───────────────────────────

/// Parse a TCP frame to the guest: (src, dst, segment fields).
fn tcp_to_guest(frame: &[u8]) -> (SocketAddr, SocketAddr, TcpRepr<'_>) {
    let (_, p) = ip_of(frame);
    let (src, dst) = (p.src_addr(), p.dst_addr());
    let l4 = &frame[14 + 20..];
    let r = TcpRepr::parse(
        &TcpPacket::new_checked(l4).unwrap(),
        src.into(),
        dst.into(),
        true,
    )
    .unwrap();
    (
        SocketAddr::from((src, r.src_port)),
        SocketAddr::from((dst, r.dst_port)),
        r,
    )
}

/// A TCP segment from the guest's `from` to `to`.
fn guest_seg(from: SocketAddr, to: SocketAddr, r: TcpRepr<'_>) -> Vec<u8> {
    let r = TcpRepr {
        src_port: from.port(),
        dst_port: to.port(),
        ..r
    };
    let mut l4 = vec![0u8; r.buffer_len()];
    r.emit(
        &mut TcpPacket::new_unchecked(&mut l4[..]),
        from.ip(),
        to.ip(),
    );
    let SocketAddr::V4(t) = to else { panic!() };
    ip_frame(*t.ip(), ip_proto::TCP, &l4)
}

const BARE: TcpRepr<'static> = TcpRepr {
    src_port: 0,
    dst_port: 0,
    flags: wire::tcp::Flags {
        syn: false,
        fin: false,
        rst: false,
        psh: false,
    },
    seq_number: SeqNumber(500),
    ack_number: None,
    window_len: 65535,
    max_seg_size: None,
    window_scale: None,
    sack_permitted: false,
    payload: &[],
};

#[test]
fn published_tcp_opens_toward_the_guest_from_the_gateway() {
    let mut s = stack_with(|_| {});
    let peer = SocketAddr::from(([127, 0, 0, 1], 45678));
    let mut out = Actions::default();
    let flow = s.accept_tcp(peer, 80, Instant::ZERO, &mut out).unwrap();
    assert!(out.ops.is_empty(), "the host socket is already connected");
    // The guest's MAC is unknown: an ARP request for it goes first.
    assert_eq!(out.frames.len(), 2);
    let arp = ArpRepr::parse(&ArpPacket::new_checked(&out.frames[0][14..]).unwrap()).unwrap();
    assert_eq!(arp.operation, ArpOperation::Request);
    assert_eq!(arp.target_protocol_addr, GUEST);
    assert_eq!(arp.source_protocol_addr, GW);
    let (src, dst, syn) = tcp_to_guest(out.frames.last().unwrap());
    assert_eq!(dst, SocketAddr::from((GUEST, 80)));
    assert_eq!(src.ip(), std::net::IpAddr::V4(GW), "from the gateway");
    assert!(PUB_PORTS.contains(&src.port()));
    assert!(syn.flags.syn && syn.ack_number.is_none());
    assert_eq!(s.counters().published_tcp, 1);

    // A second connection gets another source port.
    // The guest's ARP reply teaches its MAC: no more requests.
    let reply = ArpRepr {
        operation: ArpOperation::Reply,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: GUEST,
        target_hardware_addr: gw_mac(),
        target_protocol_addr: GW,
    };
    let mut a = vec![0u8; reply.buffer_len()];
    reply.emit(&mut ArpPacket::new_unchecked(&mut a[..]));
    s.ingress(
        &eth(gw_mac(), EtherType::Arp, &a),
        Instant::ZERO,
        &mut Actions::default(),
    );
    let mut out2 = Actions::default();
    s.accept_tcp(peer, 80, Instant::ZERO, &mut out2).unwrap();
    assert_eq!(out2.frames.len(), 1, "just the SYN");
    let e = EthernetRepr::parse(&EthernetFrame::new_checked(&out2.frames[0][..]).unwrap()).unwrap();
    assert_eq!(e.dst_addr, GUEST_MAC, "addressed to the guest's MAC");
    let (src2, _, _) = tcp_to_guest(out2.frames.last().unwrap());
    assert_ne!(src, src2, "a fresh source port per connection");

    // The guest answers with SYN-ACK: ACK back, and the host socket is read.
    let synack = guest_seg(
        dst,
        src,
        TcpRepr {
            flags: wire::tcp::Flags {
                syn: true,
                ..Default::default()
            },
            ack_number: Some(syn.seq_number + 1usize),
            max_seg_size: Some(1460),
            window_scale: Some(7),
            ..BARE
        },
    );
    let mut out = Actions::default();
    s.ingress(&synack, Instant::ZERO, &mut out);
    let (_, _, ack) = tcp_to_guest(out.frames.last().unwrap());
    assert!(!ack.flags.syn && !ack.flags.rst);
    assert_eq!(ack.ack_number, Some(SeqNumber(501)));
    assert!(out.ops.contains(&SockOp::Recv {
        flow,
        max: super::tcp::conn::RECV_INIT
    }));
    // Host data reaches the guest on that connection.
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Received {
            flow,
            result: Ok(b"hello".to_vec()),
        },
        Instant::ZERO,
        &mut out,
    );
    let (from, to, d) = tcp_to_guest(out.frames.last().unwrap());
    assert_eq!((from, to), (src, dst));
    assert_eq!(d.payload, b"hello");
}

#[test]
fn published_tcp_refused_by_the_guest_resets_the_host_socket() {
    let mut s = stack_with(|_| {});
    let mut out = Actions::default();
    let flow = s
        .accept_tcp(
            SocketAddr::from(([127, 0, 0, 1], 1)),
            81,
            Instant::ZERO,
            &mut out,
        )
        .unwrap();
    let (src, dst, syn) = tcp_to_guest(out.frames.last().unwrap());
    let rst = guest_seg(
        dst,
        src,
        TcpRepr {
            flags: wire::tcp::Flags {
                rst: true,
                ..Default::default()
            },
            seq_number: SeqNumber(0),
            ack_number: Some(syn.seq_number + 1usize),
            ..BARE
        },
    );
    let mut out = Actions::default();
    s.ingress(&rst, Instant::ZERO, &mut out);
    assert_eq!(out.ops, vec![SockOp::Close { flow, reset: true }]);
    assert_eq!(s.flow_count(), 0);
}

#[test]
fn published_tcp_without_an_answer_gives_up_after_bounded_retries() {
    let mut s = stack_with(|_| {});
    let mut out = Actions::default();
    let flow = s
        .accept_tcp(
            SocketAddr::from(([127, 0, 0, 1], 1)),
            82,
            Instant::ZERO,
            &mut out,
        )
        .unwrap();
    let mut syns = 1;
    let mut closed = false;
    let mut t = Instant::ZERO;
    for _ in 0..2000 {
        t = t + std::time::Duration::from_millis(50);
        let mut out = Actions::default();
        s.poll(t, &mut out);
        syns += out.frames.len();
        if out.ops.contains(&SockOp::Close { flow, reset: true }) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the host socket is closed");
    assert_eq!(syns, 1 + super::tcp::conn::SYN_RETRIES as usize);
    assert!(t.since(Instant::ZERO) < std::time::Duration::from_secs(30));
    assert_eq!(s.flow_count(), 0);
}

#[test]
fn published_keep_source_shows_the_client_unless_it_is_loopback() {
    let mut s = stack_with(|c| c.publish_keep_source = true);
    let client = SocketAddr::from(([10, 99, 0, 1], 40000));
    let mut out = Actions::default();
    s.accept_tcp(client, 80, Instant::ZERO, &mut out).unwrap();
    let (src, _, _) = tcp_to_guest(out.frames.last().unwrap());
    assert_eq!(src, client);
    let mut out = Actions::default();
    s.accept_tcp(
        SocketAddr::from(([127, 0, 0, 1], 40000)),
        80,
        Instant::ZERO,
        &mut out,
    )
    .unwrap();
    let (src, _, _) = tcp_to_guest(out.frames.last().unwrap());
    assert_eq!(
        src.ip(),
        std::net::IpAddr::V4(GW),
        "the guest cannot answer a loopback address"
    );
}

#[test]
fn published_udp_flow_per_peer_and_replies_go_back_on_it() {
    let mut s = stack_with(|_| {});
    let peer = SocketAddr::from(([127, 0, 0, 1], 5000));
    let mut out = Actions::default();
    let flow = s
        .inbound_udp(peer, 53, b"q1", Instant::ZERO, &mut out)
        .expect("a new flow");
    let (_, p) = ip_of(out.frames.last().unwrap());
    assert_eq!(p.dst_addr(), GUEST);
    assert_eq!(p.src_addr(), GW);
    let u = UdpPacket::new_checked(p.payload()).unwrap();
    assert_eq!(u.dst_port(), 53);
    assert_eq!(u.payload(), b"q1");
    let from = SocketAddr::from((GW, u.src_port()));
    // Same peer again: same flow, nothing new to attach.
    let mut out = Actions::default();
    assert_eq!(
        s.inbound_udp(peer, 53, b"q2", Instant::ZERO, &mut out),
        None
    );
    let (_, p) = ip_of(out.frames.last().unwrap());
    assert_eq!(
        UdpPacket::new_checked(p.payload()).unwrap().src_port(),
        from.port()
    );
    // The guest's reply is a Send on the flow (to the peer, by the dataplane).
    let mut out = Actions::default();
    let reply = udp(SocketAddr::from((GUEST, 53)), from, b"answer");
    s.ingress(
        &ip_frame(GW, ip_proto::UDP, &reply),
        Instant::ZERO,
        &mut out,
    );
    assert_eq!(
        out.ops,
        vec![SockOp::Send {
            flow,
            data: b"answer".to_vec()
        }]
    );
    // Another peer: another flow.
    let mut out = Actions::default();
    let other = s.inbound_udp(
        SocketAddr::from(([127, 0, 0, 1], 5001)),
        53,
        b"x",
        Instant::ZERO,
        &mut out,
    );
    assert!(other.is_some_and(|o| o != flow));
    // Idle flows expire and close.
    let mut out = Actions::default();
    s.poll(Instant::ZERO + Config::default().udp_timeout * 2, &mut out);
    assert!(out.ops.contains(&SockOp::Close { flow, reset: false }));
    let mut out = Actions::default();
    assert!(
        s.inbound_udp(peer, 53, b"q3", Instant::ZERO, &mut out)
            .is_some(),
        "a fresh flow after expiry"
    );
}

#[test]
fn frames_of_another_workers_flows_go_to_it() {
    // Two stacks of one guest behind a multiqueue TAP (the kernel steers):
    // worker 0 accepted a published connection, worker 1 gets the guest's
    // frames of it. Worker 1 hands them over and answers nothing itself.
    let dir = Arc::new(Directory::new());
    let mut w0 = stack_with(|c| {
        c.worker = 0;
        c.directory = Some(dir.clone());
    });
    let mut w1 = stack_with(|c| {
        c.worker = 1;
        c.directory = Some(dir.clone());
    });
    // Only worker 1 has seen a guest frame (its ARP request for the
    // gateway); worker 0's SYN must still go to the guest's MAC, not to
    // broadcast, which Linux TCP would drop.
    let mut out = Actions::default();
    w1.ingress(&arp_request(GUEST, GW), Instant::ZERO, &mut out);
    assert_eq!(w0.guest_mac(), Some(GUEST_MAC));
    let peer = SocketAddr::from(([127, 0, 0, 1], 45678));
    let mut out = Actions::default();
    w0.accept_tcp(peer, 80, Instant::ZERO, &mut out).unwrap();
    assert_eq!(out.frames.len(), 1, "no ARP: the MAC is known");
    assert_eq!(&out.frames[0][0..6], &GUEST_MAC.0, "SYN to the guest's MAC");
    let (src, dst, syn) = tcp_to_guest(&out.frames[0]);
    let synack = guest_seg(
        dst,
        src,
        TcpRepr {
            flags: wire::tcp::Flags {
                syn: true,
                ..Default::default()
            },
            ack_number: Some(syn.seq_number + 1usize),
            max_seg_size: Some(1460),
            ..BARE
        },
    );
    let mut out = Actions::default();
    w1.ingress(&synack, Instant::ZERO, &mut out);
    assert!(
        out.frames.is_empty() && out.ops.is_empty(),
        "no RST, no flow"
    );
    assert_eq!(out.forward.len(), 1);
    assert_eq!(out.forward[0].0, 0);
    assert_eq!(out.forward[0].1, synack, "the same frame, for the owner");
    assert_eq!(w1.counters().foreign_flow_frames, 1);
    // The owner takes it as its own: the handshake completes.
    let mut out = Actions::default();
    w0.ingress(&synack, Instant::ZERO, &mut out);
    w0.poll(Instant::ZERO, &mut out);
    assert!(out.forward.is_empty());
    let (_, _, ack) = tcp_to_guest(out.frames.last().unwrap());
    assert!(ack.ack_number.is_some() && !ack.flags.rst && !ack.flags.syn);
    // A UDP reply on a published flow of worker 0's, too.
    let upeer = SocketAddr::from(([127, 0, 0, 1], 5353));
    let mut out = Actions::default();
    w0.inbound_udp(upeer, 53, b"q", Instant::ZERO, &mut out)
        .unwrap();
    let (_, p) = ip_of(out.frames.last().unwrap());
    let from = UdpPacket::new_checked(p.payload()).unwrap().src_port();
    let reply = udp(
        SocketAddr::from((GUEST, 53)),
        SocketAddr::from((GW, from)),
        b"a",
    );
    let mut out = Actions::default();
    w1.ingress(
        &ip_frame(GW, ip_proto::UDP, &reply),
        Instant::ZERO,
        &mut out,
    );
    assert_eq!(out.forward.len(), 1);
    assert!(out.ops.is_empty(), "no second host socket on worker 1");
    // The guest's own flow, opened on worker 1, whose frames then come in
    // on worker 0's queue (tun's flow entry aged out): worker 0 hands
    // them back rather than resetting the connection.
    let g = SocketAddr::from((GUEST, 5000));
    let r = SocketAddr::from((GW, 8080));
    let mut out = Actions::default();
    w1.ingress(
        &ip_frame(GW, ip_proto::TCP, &tcp_syn(g, r)),
        Instant::ZERO,
        &mut out,
    );
    assert!(matches!(out.ops[0], SockOp::Open { .. }));
    let data = guest_seg(
        g,
        r,
        TcpRepr {
            ack_number: Some(SeqNumber(1)),
            payload: b"late",
            ..BARE
        },
    );
    let mut out = Actions::default();
    w0.ingress(&data, Instant::ZERO, &mut out);
    assert!(out.frames.is_empty(), "no RST from worker 0");
    assert_eq!(out.forward, vec![(1, data)]);
    // A flow nobody holds is answered as ever: RST.
    let stray = guest_seg(SocketAddr::from((GUEST, 5001)), r, BARE);
    let mut out = Actions::default();
    w0.ingress(&stray, Instant::ZERO, &mut out);
    assert!(out.forward.is_empty());
    let (_, _, rst) = tcp_to_guest(&out.frames[0]);
    assert!(rst.flags.rst);
    // A stack that goes away leaves no claims behind.
    drop(w1);
    assert_eq!(
        dir.owner(&FlowKey {
            proto: Proto::Tcp,
            guest: g,
            remote: r
        }),
        None
    );
}

// ─────────────── published ports with isolation and steering ───────────────

#[test]
fn restrict_leaves_published_flows_alone() {
    let mut s = stack_with(|c| c.policy = rules(&[], policy::Action::Deny));
    let peer = SocketAddr::from(([127, 0, 0, 1], 45678));
    let mut out = Actions::default();
    let flow = s.accept_tcp(peer, 80, Instant::ZERO, &mut out).unwrap();
    let (src, dst, syn) = tcp_to_guest(out.frames.last().unwrap());
    // The guest's SYN-ACK to the gateway (127.0.0.1 to the policy, which
    // denies it) belongs to the inbound flow: not refused.
    let synack = guest_seg(
        dst,
        src,
        TcpRepr {
            flags: wire::tcp::Flags {
                syn: true,
                ..Default::default()
            },
            ack_number: Some(syn.seq_number + 1usize),
            max_seg_size: Some(1460),
            ..BARE
        },
    );
    let mut out = Actions::default();
    s.ingress(&synack, Instant::ZERO, &mut out);
    let (_, _, ack) = tcp_to_guest(out.frames.last().unwrap());
    assert!(!ack.flags.rst && !ack.flags.syn);
    assert!(out.ops.contains(&SockOp::Recv {
        flow,
        max: super::tcp::conn::RECV_INIT
    }));
    // A published UDP flow: the guest's reply goes back to the host peer.
    let mut out = Actions::default();
    let uflow = s
        .inbound_udp(peer, 53, b"q", Instant::ZERO, &mut out)
        .unwrap();
    let (_, p) = ip_of(out.frames.last().unwrap());
    let from = SocketAddr::from((GW, UdpPacket::new_checked(p.payload()).unwrap().src_port()));
    let mut out = Actions::default();
    let reply = udp(SocketAddr::from((GUEST, 53)), from, b"a");
    s.ingress(
        &ip_frame(GW, ip_proto::UDP, &reply),
        Instant::ZERO,
        &mut out,
    );
    assert_eq!(
        out.ops,
        vec![SockOp::Send {
            flow: uflow,
            data: b"a".to_vec()
        }]
    );
    assert_eq!(s.counters().drops_of(DropReason::Denied), 0);
    // While a flow the guest opens itself is still refused.
    let out = syn_to(&mut s, 40000, GW, 8080);
    assert_rst(&out, GW);
    assert_eq!(s.counters().drops_of(DropReason::Denied), 1);
}

#[test]
fn published_flows_count_against_max_flows() {
    let mut s = stack_with(|c| c.max_flows = 2);
    let peer = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut out = Actions::default();
    assert!(s.accept_tcp(peer(1), 80, Instant::ZERO, &mut out).is_some());
    assert!(
        s.inbound_udp(peer(2), 53, b"x", Instant::ZERO, &mut out)
            .is_some()
    );
    assert_eq!(s.accept_tcp(peer(3), 80, Instant::ZERO, &mut out), None);
    assert_eq!(
        s.inbound_udp(peer(4), 53, b"x", Instant::ZERO, &mut out),
        None
    );
    assert_eq!(s.counters().drops_of(DropReason::FlowLimit), 2);
    // And the guest's own flows find the table full too.
    let out = syn_to(&mut s, 40000, GW, 8080);
    assert_rst(&out, GW);
    assert_eq!(s.counters().drops_of(DropReason::FlowLimit), 3);
}

#[test]
fn published_keep_source_under_hash_steering_stays_on_this_worker() {
    // Worker 0 of 2 hash-steered stacks (stream, vhost-user): every inbound
    // flow's guest-side frames must steer back to worker 0, whichever
    // source the guest is shown.
    let mut s = stack_with(|c| {
        c.workers = 2;
        c.publish_keep_source = true;
    });
    let (mut kept, mut gateway) = (0, 0);
    for port in 40000..40032u16 {
        let client = SocketAddr::from(([10, 99, 0, 1], port));
        let mut out = Actions::default();
        s.accept_tcp(client, 80, Instant::ZERO, &mut out).unwrap();
        let (src, dst, _) = tcp_to_guest(out.frames.last().unwrap());
        if src == client {
            kept += 1;
        } else {
            assert_eq!(src.ip(), std::net::IpAddr::V4(GW));
            gateway += 1;
        }
        let reply = guest_seg(dst, src, BARE);
        assert_eq!(
            steer::frame_owner(&reply, 2),
            steer::Steer::Worker(0),
            "the guest's frames of {src} -> {dst} reach worker 0"
        );
    }
    assert!(kept > 0 && gateway > 0, "kept {kept} gateway {gateway}");
}

#[test]
fn a_separate_dns_address_serves_dns_and_nothing_else() {
    // slirp4netns's layout: gateway .2, DNS .3, guest .100.
    let gw = Ipv4Addr::new(10, 0, 2, 2);
    let dns = Ipv4Addr::new(10, 0, 2, 3);
    let mut s = stack_with(|c| {
        c.gateway = gw;
        c.dns = Some(dns);
        c.guest_ip = Ipv4Addr::new(10, 0, 2, 100);
    });
    let guest = Ipv4Addr::new(10, 0, 2, 100);
    // ARP for the DNS address is answered with the gateway's MAC.
    let mut out = Actions::default();
    s.ingress(&arp_request(guest, dns), Instant::ZERO, &mut out);
    let f = EthernetFrame::new_checked(&out.frames[0][..]).unwrap();
    let r = ArpRepr::parse(&ArpPacket::new_checked(f.payload()).unwrap()).unwrap();
    assert_eq!(r.source_protocol_addr, dns);
    assert_eq!(r.source_hardware_addr, gw_mac());
    let frame = |dst: Ipv4Addr, proto, l4: &[u8]| {
        let mut f = eth(gw_mac(), EtherType::Ipv4, &ipv4(guest, dst, proto, l4));
        f.truncate(14 + 20 + l4.len());
        f
    };
    // Port 53 (UDP and TCP) goes to the resolver.
    let mut out = Actions::default();
    let q = udp(
        SocketAddr::from((guest, 4000)),
        SocketAddr::from((dns, 53)),
        b"q",
    );
    s.ingress(&frame(dns, ip_proto::UDP, &q), Instant::ZERO, &mut out);
    assert!(
        matches!(out.ops[..], [SockOp::Open { proto: Proto::Udp, dst, .. }] if dst == SocketAddr::from(([127, 0, 0, 53], 53))),
        "{:?}",
        out.ops
    );
    let mut out = Actions::default();
    let syn = tcp_syn(SocketAddr::from((guest, 4001)), SocketAddr::from((dns, 53)));
    s.ingress(&frame(dns, ip_proto::TCP, &syn), Instant::ZERO, &mut out);
    assert!(matches!(
        out.ops[..],
        [SockOp::Open {
            proto: Proto::Tcp,
            ..
        }]
    ));
    // Any other port of it is refused (RST), not the host's loopback.
    let mut out = Actions::default();
    let syn = tcp_syn(SocketAddr::from((guest, 4002)), SocketAddr::from((dns, 80)));
    s.ingress(&frame(dns, ip_proto::TCP, &syn), Instant::ZERO, &mut out);
    assert!(out.ops.is_empty());
    let (_, _, rst) = tcp_to_guest(&out.frames[0]);
    assert!(rst.flags.rst);
    // The gateway's port 53 is the host's loopback, like any other port.
    let mut out = Actions::default();
    let syn = tcp_syn(SocketAddr::from((guest, 4003)), SocketAddr::from((gw, 53)));
    s.ingress(&frame(gw, ip_proto::TCP, &syn), Instant::ZERO, &mut out);
    assert!(
        matches!(out.ops[..], [SockOp::Open { dst, .. }] if dst == SocketAddr::from(([127, 0, 0, 1], 53)))
    );
    // Echo to it is answered locally.
    let echo = Icmpv4Repr::EchoRequest {
        ident: 9,
        seq_no: 1,
        data: b"x",
    };
    let mut l4 = vec![0u8; echo.buffer_len()];
    echo.emit(&mut Icmpv4Packet::new_unchecked(&mut l4[..]));
    let mut out = Actions::default();
    s.ingress(&frame(dns, ip_proto::ICMP, &l4), Instant::ZERO, &mut out);
    assert!(out.ops.is_empty());
    let (_, p) = ip_of(&out.frames[0]);
    assert_eq!(p.src_addr(), dns);
    // No DNS service at all: the address is nobody's (no ARP answer), and
    // the gateway offers no DNS server by DHCP.
    let mut s = stack_with(|c| {
        c.gateway = gw;
        c.dns = None;
        c.guest_ip = guest;
    });
    let mut out = Actions::default();
    s.ingress(&arp_request(guest, dns), Instant::ZERO, &mut out);
    assert!(out.frames.is_empty());
}

#[test]
fn loopback_aliases_stand_for_the_host_even_without_host_loopback() {
    let alias = Ipv4Addr::new(169, 254, 1, 2);
    let mut s = stack_with(|c| {
        c.loopback_aliases = vec![alias.into()];
        c.host_loopback = false;
    });
    let out = syn_to(&mut s, 40000, alias, 8080);
    assert!(
        matches!(out.ops[..], [SockOp::Open { dst, .. }] if dst == SocketAddr::from(([127, 0, 0, 1], 8080))),
        "{:?}",
        out.ops
    );
    // The gateway itself is still refused (--no-map-gw).
    let out = syn_to(&mut s, 40001, GW, 8080);
    assert_rst(&out, GW);
}

// ───────────────────────────── memory budget ─────────────────────────────

/// The last TCP segment to the guest in `out`.
fn last_tcp_to_guest(out: &Actions) -> TcpRepr<'_> {
    let f = out
        .frames
        .iter()
        .rev()
        .find(|f| ip_of(f).1.next_header() == ip_proto::TCP)
        .expect("a TCP segment to the guest");
    tcp_to_guest(f).2
}

/// Open GUEST:40002 -> GW:80 on a plain stack up to Established; returns
/// the flow and our next sequence number (the guest's is 2).
fn establish_plain(s: &mut Stack) -> (FlowId, SeqNumber) {
    let g = SocketAddr::from((GUEST, 40002));
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
    let our = last_tcp_to_guest(&out).seq_number + 1usize;
    let mut out = Actions::default();
    s.ingress(
        &guest_tcp(SeqNumber(2), Some(our), 65535, &[]),
        Instant::ZERO,
        &mut out,
    );
    (flow, our)
}

#[test]
fn spent_budget_closes_the_guest_window_and_release_reopens_it() {
    let mem = Arc::new(MemBudget::new(1 << 20));
    let mut s = stack_with(|c| c.memory = mem.clone());
    let (flow, our) = establish_plain(&mut s);
    assert_eq!(
        mem.used(),
        super::tcp::conn::RECV_INIT,
        "the posted Recv is reserved"
    );
    // Other flows take the rest of the budget.
    let hog = mem.reserve_up_to(usize::MAX);
    let mut out = Actions::default();
    s.ingress(
        &guest_tcp(SeqNumber(2), Some(our), 65535, &[7u8; 1000]),
        Instant::ZERO,
        &mut out,
    );
    s.poll(Instant::ZERO, &mut out);
    assert!(
        !out.ops.iter().any(|o| matches!(o, SockOp::Send { .. })),
        "nothing was queued"
    );
    let ack = last_tcp_to_guest(&out);
    assert_eq!(
        ack.ack_number,
        Some(SeqNumber(2)),
        "the bytes are not ACKed"
    );
    assert_eq!(ack.window_len, 0, "the window is closed");
    let st = mem.stats();
    assert_eq!(st.tcp_dropped_bytes, 1000);
    assert!(st.window_limited >= 1);

    // Memory comes back: a window update, without new data from the guest.
    mem.release(hog);
    let mut out = Actions::default();
    s.poll(Instant::from_millis(1), &mut out);
    let upd = last_tcp_to_guest(&out);
    assert_eq!(upd.ack_number, Some(SeqNumber(2)));
    assert!(upd.window_len > 0, "window update after the release");

    // The guest's retransmission is taken now.
    let mut out = Actions::default();
    s.ingress(
        &guest_tcp(SeqNumber(2), Some(our), 65535, &[7u8; 1000]),
        Instant::from_millis(2),
        &mut out,
    );
    assert!(out.ops.contains(&SockOp::Send {
        flow,
        data: vec![7u8; 1000]
    }));
    assert!(mem.used() > super::tcp::conn::RECV_INIT + 1000);

    // Host data waiting for the guest's ACK is held too; a reset frees all.
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Received {
            flow,
            result: Ok(vec![1u8; 500]),
        },
        Instant::from_millis(3),
        &mut out,
    );
    assert!(s.held_memory() > 0);
    assert_eq!(s.held_memory(), mem.used());
    let rst = TcpRepr {
        src_port: 40002,
        dst_port: 80,
        flags: wire::tcp::Flags {
            rst: true,
            ..Default::default()
        },
        seq_number: SeqNumber(1002),
        ack_number: None,
        window_len: 0,
        max_seg_size: None,
        window_scale: None,
        sack_permitted: false,
        payload: &[],
    };
    let mut l4 = vec![0u8; rst.buffer_len()];
    rst.emit(
        &mut TcpPacket::new_unchecked(&mut l4[..]),
        GUEST.into(),
        GW.into(),
    );
    let mut out = Actions::default();
    s.ingress(
        &ip_frame(GW, ip_proto::TCP, &l4),
        Instant::from_millis(4),
        &mut out,
    );
    assert_eq!(s.flow_count(), 0);
    assert_eq!(mem.used(), 0, "a removed flow gives back all it held");
}

#[test]
fn spent_budget_holds_host_reads_back_until_memory_is_free() {
    let mem = Arc::new(MemBudget::new(1 << 20));
    let mut s = stack_with(|c| c.memory = mem.clone());
    let (flow, _) = establish_plain(&mut s);
    // Other flows take the rest, and what the Recv in flight gives back.
    let hog = mem.reserve_up_to(usize::MAX) + super::tcp::conn::RECV_INIT;
    mem.force_reserve(super::tcp::conn::RECV_INIT);
    // The Recv in flight returns; no new one can be reserved.
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Received {
            flow,
            result: Ok(vec![1u8; 100]),
        },
        Instant::ZERO,
        &mut out,
    );
    assert!(
        !out.ops.iter().any(|o| matches!(o, SockOp::Recv { .. })),
        "no Recv posted over budget"
    );
    assert!(mem.stats().recv_deferred >= 1);
    mem.release(hog);
    let mut out = Actions::default();
    s.poll(Instant::from_millis(1), &mut out);
    assert!(
        out.ops
            .iter()
            .any(|o| matches!(o, SockOp::Recv { flow: f, .. } if *f == flow)),
        "the Recv is posted once memory is free"
    );
    s.reset_all(&mut out);
    assert_eq!(mem.used(), 0);
}

#[test]
fn udp_over_the_memory_budget_is_dropped_and_counted() {
    let mem = Arc::new(MemBudget::new(1000));
    let mut s = stack_with(|c| c.memory = mem.clone());
    let out = udp_to(&mut s, 5000, GW, 7, &[1u8; 900]);
    let flow = out.ops[0].flow();
    assert!(mem.used() >= 900, "the queued datagram is held");
    let out = udp_to(&mut s, 5000, GW, 7, &[2u8; 900]);
    assert!(out.ops.is_empty());
    assert_eq!(s.counters().drops_of(DropReason::MemoryBudget), 1);
    assert_eq!(mem.stats().udp_drops, 1);
    // Connected: the queued datagram goes out and is held until sent.
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Connected {
            flow,
            result: Ok(()),
        },
        Instant::ZERO,
        &mut out,
    );
    assert!(out.ops.contains(&SockOp::Send {
        flow,
        data: vec![1u8; 900]
    }));
    assert!(mem.used() >= 900);
    s.host_event(
        HostEvent::Sent {
            flow,
            result: Ok(900),
        },
        Instant::ZERO,
        &mut out,
    );
    assert_eq!(mem.used(), 0, "a sent datagram is given back");
    // With room again, datagrams pass.
    let out = udp_to(&mut s, 5000, GW, 7, &[3u8; 900]);
    assert_eq!(out.ops.len(), 1);
    let mut out = Actions::default();
    s.reset_all(&mut out);
    assert_eq!(
        mem.used(),
        0,
        "a removed flow gives back its datagrams in flight"
    );
}
