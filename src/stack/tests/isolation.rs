//! Isolation: the outbound policy and the flow limit, and how refused
//! flows are answered (RST, ICMP admin-prohibited).

use super::*;

// ─────────────────── isolation: outbound policy, flow limit ───────────────────

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
