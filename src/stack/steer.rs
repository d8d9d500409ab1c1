//! Flow steering: which worker owns a flow.
//!
//! Every flow lives on exactly one worker, `hash(5-tuple) % workers`. The
//! same function serves the dataplane (a frame read from a TAP queue that
//! belongs to another worker is forwarded to it over that worker's ring) and
//! the stack (a datagram reassembled on the worker that collected its
//! fragments is forwarded to the worker that owns its flow).
//!
//! A multiqueue TAP does not use this hash: the kernel steers. tun picks a
//! queue for a flow from a symmetric hash of its 5-tuple (stable for the
//! flow's life), or from the queue user space last *wrote* that flow's
//! packets to. So the worker that reads a flow's frames owns it and writes
//! its replies to the same queue, and nothing crosses workers. (Hash
//! ownership there was measured to fail: a one-way UDP stream never gets a
//! reply that would teach tun the owner's queue, and in half the runs every
//! frame crossed workers, at a quarter of the throughput.) One wart: IP
//! fragments carry no ports, so tun hashes them by addresses alone, and a
//! UDP flow that mixes fragmented and whole datagrams can land on two
//! workers, i.e. two host sockets.
//!
//! The hash serves frontends where uipd chooses the worker itself (frames
//! arriving on one ring, as vhost-user's will).
//!
//! ```text
//!  frame ─► Ethernet/IPv4 ─► fragment?  ─ yes ─► hash(src, dst, proto, ident)
//!                              │ no
//!                              ├─ TCP/UDP ─► hash(proto, guest ip:port, remote ip:port)
//!                              ├─ ICMP echo ─► hash(ICMP, guest ip:ident, remote ip:0)
//!                              └─ else (ARP, DHCP, …) ─► any worker (stateless)
//!        ─► IPv6 ─► multicast destination (NDP, MLD) ─► any worker
//!                 ─► extension headers walked ([`wire::ipv6`]) ─► fragment?
//!                      ─ yes ─► hash(src, dst, proto, ident folded to 16 bits)
//!                      ─ no ─► TCP/UDP/echo request (128) as above, else any
//! ```

use std::net::{IpAddr, SocketAddr};

use super::flow::FlowKey;
use super::ops::Proto;
use super::wire::{self, EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet, ip_proto};

/// Where a frame should be processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    /// Any worker: the frame is stateless (ARP, DHCP, malformed, …).
    Any,
    /// This worker owns the frame's flow.
    Worker(usize),
}

/// 64-bit mixer (the splitmix64 finaliser): cheap, and every input bit
/// affects every output bit, so `% workers` spreads flows evenly.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn ip_bits(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            let lo = u64::try_from(v & u128::from(u64::MAX)).unwrap_or(0);
            let hi = u64::try_from(v >> 64).unwrap_or(0);
            mix(hi) ^ lo
        }
    }
}

fn pick(h: u64, workers: usize) -> usize {
    let n = u64::try_from(workers.max(1)).unwrap_or(1);
    usize::try_from(h % n).unwrap_or(0)
}

/// The worker that owns the flow `(proto, guest, remote)`.
pub fn flow_owner(proto: Proto, guest: SocketAddr, remote: SocketAddr, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    let p = match proto {
        Proto::Tcp => 6u64,
        Proto::Udp => 17,
        Proto::Icmp => 1,
    };
    let h = mix(ip_bits(guest.ip()) ^ mix(ip_bits(remote.ip()) ^ (p << 32)))
        ^ mix((u64::from(guest.port()) << 16) | u64::from(remote.port()));
    pick(mix(h), workers)
}

/// The worker that reassembles the fragments of one datagram.
pub fn fragment_owner(src: IpAddr, dst: IpAddr, proto: u8, ident: u16, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    let h =
        mix(ip_bits(src) ^ mix(ip_bits(dst) ^ (u64::from(proto) << 32) ^ (u64::from(ident) << 40)));
    pick(h, workers)
}

/// Where the frames of flow `key` go: the worker [`flow_owner`] names,
/// except for a guest's DHCP request (UDP to port 67 over IPv4), which is
/// stateless ([`Steer::Any`]).
pub fn key_owner(key: &FlowKey, workers: usize) -> Steer {
    if key.proto == Proto::Udp && key.remote.is_ipv4() && key.remote.port() == 67 {
        return Steer::Any; // DHCP: stateless
    }
    Steer::Worker(flow_owner(key.proto, key.guest, key.remote, workers))
}

/// The flow a guest's L4 message `l4` (IP protocol `proto`, from `src` to
/// `dst`) belongs to: TCP and UDP by their ports, an ICMP or ICMPv6 echo
/// request by its identifier. `None` for anything else (echo replies,
/// errors, NDP, other protocols) and for a message too short to hold its
/// ports or identifier.
pub fn flow_key(proto: u8, src: IpAddr, dst: IpAddr, l4: &[u8]) -> Option<FlowKey> {
    let port = |at: usize| l4.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (proto, guest_port, remote_port) = match proto {
        ip_proto::TCP | ip_proto::UDP => {
            let p = if proto == ip_proto::TCP {
                Proto::Tcp
            } else {
                Proto::Udp
            };
            (p, port(0)?, port(2)?)
        }
        // Echo request: type 8 (ICMPv6: 128), identifier at bytes 4..6.
        ip_proto::ICMP if src.is_ipv4() && l4.first() == Some(&8) => (Proto::Icmp, port(4)?, 0),
        ip_proto::ICMPV6 if src.is_ipv6() && l4.first() == Some(&128) => (Proto::Icmp, port(4)?, 0),
        _ => return None,
    };
    Some(FlowKey {
        proto,
        guest: SocketAddr::new(src, guest_port),
        remote: SocketAddr::new(dst, remote_port),
    })
}

/// Where a guest frame (Ethernet, after any virtio-net header) goes. Reads
/// only headers, with bounds checks; malformed frames are `Any` (the stack
/// that gets them counts the drop).
pub fn frame_owner(frame: &[u8], workers: usize) -> Steer {
    if workers <= 1 {
        return Steer::Worker(0);
    }
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Steer::Any;
    };
    let ip = eth.payload();
    match eth.ethertype() {
        EtherType::Ipv6 => return frame_owner6(ip, workers),
        EtherType::Ipv4 if ip.len() >= wire::ipv4::HEADER_LEN => {}
        _ => return Steer::Any,
    }
    // Not `new_checked`: the total length and IHL are not checked here
    // (the stack that gets the frame judges them).
    let pkt = Ipv4Packet::new_unchecked(ip);
    if pkt.version() != 4 {
        return Steer::Any;
    }
    let proto = pkt.next_header();
    let (src, dst) = (IpAddr::V4(pkt.src_addr()), IpAddr::V4(pkt.dst_addr()));
    if pkt.is_fragment() {
        return Steer::Worker(fragment_owner(src, dst, proto, pkt.ident(), workers));
    }
    let Some(l4) = ip.get(pkt.header_len()..) else {
        return Steer::Any;
    };
    l4_owner(proto, src, dst, l4, workers)
}

/// Where the L4 message `l4` of a whole guest datagram goes.
fn l4_owner(proto: u8, src: IpAddr, dst: IpAddr, l4: &[u8], workers: usize) -> Steer {
    match flow_key(proto, src, dst, l4) {
        Some(key) => key_owner(&key, workers),
        None => Steer::Any,
    }
}

/// [`frame_owner`] for an IPv6 packet `ip`.
fn frame_owner6(ip: &[u8], workers: usize) -> Steer {
    let Ok(pkt) = Ipv6Packet::new_checked(ip) else {
        return Steer::Any;
    };
    let (src, dst) = (IpAddr::V6(pkt.src_addr()), IpAddr::V6(pkt.dst_addr()));
    if pkt.dst_addr().is_multicast() {
        return Steer::Any;
    }
    let Ok(ul) = pkt.upper_layer() else {
        return Steer::Any;
    };
    if let Some(f) = ul.frag {
        // Cannot fail: masked to 16 bits.
        let ident = u16::try_from((f.ident ^ (f.ident >> 16)) & 0xffff).unwrap_or(0);
        return Steer::Worker(fragment_owner(src, dst, ul.proto, ident, workers));
    }
    l4_owner(ul.proto, src, dst, &pkt.payload()[ul.offset..], workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp6_frame(sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 20];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[14 + 5] = 20; // payload length
        f[14 + 6] = 6;
        f[14 + 7] = 64;
        let g: std::net::Ipv6Addr = "fd00:33::15".parse().unwrap();
        let r: std::net::Ipv6Addr = "fd00:33::1".parse().unwrap();
        f[22..38].copy_from_slice(&g.octets());
        f[38..54].copy_from_slice(&r.octets());
        f[54..56].copy_from_slice(&sport.to_be_bytes());
        f[56..58].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn ipv6_frames_and_flows_agree() {
        let g: IpAddr = "fd00:33::15".parse().unwrap();
        let r: IpAddr = "fd00:33::1".parse().unwrap();
        let mut seen = [false; 4];
        for n in 1..=4 {
            for sport in 40000..40100 {
                let owner = flow_owner(
                    Proto::Tcp,
                    SocketAddr::new(g, sport),
                    SocketAddr::new(r, 80),
                    n,
                );
                seen[owner] = true;
                assert_eq!(frame_owner(&tcp6_frame(sport, 80), n), Steer::Worker(owner));
            }
        }
        assert!(seen.iter().all(|s| *s), "flows spread over every worker");
        // Multicast (NDP, MLD), truncated and unknown: any worker.
        let mut ns = tcp6_frame(1, 2);
        ns[38] = 0xff;
        assert_eq!(frame_owner(&ns, 4), Steer::Any);
        let f = tcp6_frame(1, 2);
        assert_eq!(frame_owner(&f[..50], 4), Steer::Any);
        let mut sctp = tcp6_frame(1, 2);
        sctp[14 + 6] = 132;
        assert_eq!(frame_owner(&sctp, 4), Steer::Any);
        // Behind a destination-options header, the same flow, the same worker.
        let mut ext = tcp6_frame(40000, 80);
        ext[14 + 5] = 28;
        ext[14 + 6] = 60;
        ext.splice(54..54, [6u8, 0, 1, 4, 0, 0, 0, 0]);
        assert_eq!(frame_owner(&ext, 4), frame_owner(&tcp6_frame(40000, 80), 4));
        // Fragments of one datagram stay together.
        let frag = |offset: u16, more: bool| {
            let mut f = tcp6_frame(1, 2);
            f[14 + 5] = 28;
            f[14 + 6] = 44;
            let word = offset | u16::from(more);
            let mut h = vec![17u8, 0];
            h.extend_from_slice(&word.to_be_bytes());
            h.extend_from_slice(&0xabcd_1234u32.to_be_bytes());
            f.splice(54..54, h);
            f
        };
        assert!(matches!(frame_owner(&frag(0, true), 4), Steer::Worker(_)));
        assert_eq!(
            frame_owner(&frag(0, true), 4),
            frame_owner(&frag(1448, false), 4)
        );
    }

    fn tcp_frame(sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12] = 0x08;
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[26..30].copy_from_slice(&[192, 168, 33, 15]);
        f[30..34].copy_from_slice(&[192, 168, 33, 1]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn frame_and_flow_agree() {
        for n in 1..=8 {
            for sport in 40000..40100 {
                let key_owner = flow_owner(
                    Proto::Tcp,
                    SocketAddr::from(([192, 168, 33, 15], sport)),
                    SocketAddr::from(([192, 168, 33, 1], 80)),
                    n,
                );
                assert_eq!(
                    frame_owner(&tcp_frame(sport, 80), n),
                    Steer::Worker(key_owner)
                );
            }
        }
    }

    #[test]
    fn flows_spread_evenly() {
        let n = 4;
        let mut count = [0usize; 4];
        for sport in 0..4000u16 {
            count[flow_owner(
                Proto::Tcp,
                SocketAddr::from(([192, 168, 33, 15], 30000 + sport)),
                SocketAddr::from(([192, 168, 33, 1], 5201)),
                n,
            )] += 1;
        }
        for c in count {
            assert!((800..1200).contains(&c), "uneven spread: {count:?}");
        }
    }

    #[test]
    fn stateless_and_malformed_frames_go_anywhere() {
        assert_eq!(frame_owner(&[0u8; 10], 4), Steer::Any);
        let mut arp = tcp_frame(1, 2);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(frame_owner(&arp, 4), Steer::Any);
        let mut dhcp = tcp_frame(68, 67);
        dhcp[14 + 9] = 17;
        assert_eq!(frame_owner(&dhcp, 4), Steer::Any);
        let mut short = tcp_frame(1, 2);
        short[14] = 0x4f; // IHL 60 bytes, beyond the frame
        assert_eq!(frame_owner(&short, 4), Steer::Any);
        assert_eq!(frame_owner(&[0u8; 10], 1), Steer::Worker(0));
    }

    #[test]
    fn fragments_of_a_datagram_stay_together() {
        let mut a = tcp_frame(1, 2);
        a[14 + 9] = 17;
        a[18..20].copy_from_slice(&0x1234u16.to_be_bytes());
        a[20] = 0x20; // MF
        let mut b = a.clone();
        b[20..22].copy_from_slice(&185u16.to_be_bytes()); // offset, no MF
        b[34..38].copy_from_slice(&[9, 9, 9, 9]); // payload bytes, not ports
        assert_eq!(frame_owner(&a, 4), frame_owner(&b, 4));
    }
}
