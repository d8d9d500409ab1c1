//! Published ports: inbound TCP and UDP toward the guest, and frames of
//! flows another worker holds.

use super::*;

// ─────────────────────────── published ports ───────────────────────────

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
