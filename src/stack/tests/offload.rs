//! Offloads shared through the virtio-net header: TSO super-frames and
//! partial checksums to the guest, UFO, GSO and trusted checksums from it.

use super::*;

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
