//! TSO over IPv6: super-frames to the guest and from it.

use super::*;

// ───────────────────────────── TSO6 ─────────────────────────────

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
