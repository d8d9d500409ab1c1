//! Frame-level tests of the stack's IPv6: neighbour and router discovery,
//! echo, flows over IPv6, TSO6 both ways, and hostile input.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::stack::wire::icmpv6::{self, RouterAdvert};
use crate::stack::wire::vnet_hdr::{flags as vflags, gso};
use crate::stack::wire::{self, *};
use crate::stack::*;
// The RA timing constants, as the scripts name them (`super::RA_INTERVAL`).
use super::{INITIAL_RA_INTERVAL, INITIAL_RAS, RA_INTERVAL};

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

/// SYN guest:40000 → [gw]:8080 and the host's connect; returns the flow and
/// the SYN-ACK's TCP header.
fn handshake(s: &mut Stack) -> (FlowId, SeqNumber) {
    let mut out = Actions::default();
    let l4 = tcp(g(40000), SocketAddr::from((gw(), 8080)), syn());
    let fr = wrap(s, frame(guest(), gw(), ip_proto::TCP, 64, &l4));
    s.ingress(&fr, Instant::ZERO, &mut out);
    let [SockOp::Open { flow, dst, .. }] = out.ops[..] else {
        panic!("{:?}", out.ops)
    };
    assert_eq!(dst, SocketAddr::from((Ipv6Addr::LOCALHOST, 8080)));
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

/// `frame` behind a plain virtio-net header when the stack's link has one.
fn wrap(s: &Stack, frame: Vec<u8>) -> Vec<u8> {
    if !s.config().offload.vnet_hdr {
        return frame;
    }
    let mut v = vec![0u8; 12];
    v.extend_from_slice(&frame);
    v
}

mod flows;
mod ndp;
mod offload;
