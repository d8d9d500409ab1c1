//! Published ports together with isolation and steering; a separate DNS
//! address; loopback aliases.

use super::*;

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
