//! Neighbour discovery and router advertisements: the gateway answers
//! solicitations and advertises the prefix.

use super::*;

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
