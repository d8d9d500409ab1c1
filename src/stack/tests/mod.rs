//! Frame-level tests of the whole stack: guest frames in, frames and socket
//! ops out, time by hand.

use std::net::{Ipv4Addr, SocketAddr};

use super::tcp;
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

mod delayed_ack;
mod frames;
mod isolation;
mod memory;
mod offload;
mod published;
mod published_isolation;
