//! ICMPv6 (RFC 4443) with Neighbor Discovery (RFC 4861) and the RDNSS
//! option (RFC 8106): what the stack needs to be an IPv6 router on the
//! guest's link.
//!
//! # Theory of operation
//!
//! ```text
//!  0       1       2               4
//!  +-------+-------+---------------+-------------------------------------
//!  | type  | code  | checksum      | message body …
//!  +-------+-------+---------------+-------------------------------------
//!   echo (128, 129):   ident(2) seq(2) data
//!   unreachable (1):   unused(4) invoking packet
//!   too big (2):       mtu(4) invoking packet
//!   RS (133):          reserved(4) options
//!   RA (134):          hop limit(1) M|O(1) router lifetime(2) reachable(4) retrans(4) options
//!   NS (135):          reserved(4) target(16) options
//!   NA (136):          R|S|O(1) reserved(3) target(16) options
//!  options: type(1) length in 8-byte units(1, never 0) body
//! ```
//!
//! The checksum covers an IPv6 pseudo-header (RFC 4443 §2.3), so
//! [`Repr::parse`] takes the addresses. Options are walked with bounds: a
//! zero length or one past the message is `Malformed` (RFC 4861 §4.6 says
//! such a packet is discarded); unknown options are skipped. Only the
//! options the stack uses are kept: source/target link-layer address, prefix
//! information (the first), MTU and RDNSS (its first address). Other
//! message types (MLD, redirects, …) are `Unsupported`.

use std::net::{IpAddr, Ipv6Addr};

use super::checksum;
use super::{Error, Result, get, ip_proto};

mod field {
    use core::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
}

/// Fixed ICMPv6 header: type, code, checksum, 4 bytes.
pub const HEADER_LEN: usize = 8;

/// Message types.
pub mod msg_type {
    /// Destination unreachable.
    pub const DST_UNREACHABLE: u8 = 1;
    /// Packet too big.
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// Router solicitation.
    pub const ROUTER_SOLICIT: u8 = 133;
    /// Router advertisement.
    pub const ROUTER_ADVERT: u8 = 134;
    /// Neighbor solicitation.
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    /// Neighbor advertisement.
    pub const NEIGHBOR_ADVERT: u8 = 136;
}

/// Destination-unreachable codes (RFC 4443 §3.1).
pub mod unreachable {
    /// No route to destination.
    pub const NO_ROUTE: u8 = 0;
    /// Communication administratively prohibited.
    pub const ADMIN_PROHIBITED: u8 = 1;
    /// Address unreachable.
    pub const ADDRESS: u8 = 3;
    /// Port unreachable.
    pub const PORT: u8 = 4;
}

/// NDP option types.
mod opt {
    pub const SOURCE_LLADDR: u8 = 1;
    pub const TARGET_LLADDR: u8 = 2;
    pub const PREFIX_INFO: u8 = 3;
    pub const MTU: u8 = 5;
    pub const RDNSS: u8 = 25;
}

/// Most bytes of an error message's invoking packet we send: the whole
/// message stays within the IPv6 minimum MTU (RFC 4443 §2.4 (c)).
pub const MAX_ERROR_DATA: usize = 1280 - 40 - HEADER_LEN;

view! {
    /// A view of an ICMPv6 message.
    pub struct Packet;
    fn check_len = HEADER_LEN;
    /// Wrap and check that the 8-byte header is there.
    fn new_checked;
    /// Message type.
    msg_type: u8 = byte(field::TYPE);
    /// Message code.
    msg_code: u8 = byte(field::CODE);
    /// Checksum field.
    checksum: u16 = be16(field::CHECKSUM);
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// True if the checksum verifies for a message from `src` to `dst`.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let b = self.buffer.as_ref();
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        let ph = checksum::pseudo_header(src.into(), dst.into(), ip_proto::ICMPV6, len);
        checksum::finish(checksum::sum(b, ph)) == 0
    }
}

/// Prefix information option (RFC 4861 §4.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixInfo {
    /// Prefix length.
    pub prefix_len: u8,
    /// L: on-link.
    pub on_link: bool,
    /// A: autonomous address configuration (SLAAC).
    pub autonomous: bool,
    /// Valid lifetime in seconds.
    pub valid_lifetime: u32,
    /// Preferred lifetime in seconds.
    pub preferred_lifetime: u32,
    /// The prefix.
    pub prefix: Ipv6Addr,
}

/// Router advertisement body (RFC 4861 §4.2) with the options uipd sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterAdvert {
    /// Current hop limit to advise (0: unspecified).
    pub hop_limit: u8,
    /// M: addresses by DHCPv6.
    pub managed: bool,
    /// O: other configuration (DNS) by DHCPv6.
    pub other: bool,
    /// Router lifetime in seconds (0: not a default router).
    pub router_lifetime: u16,
    /// Reachable time in ms (0: unspecified).
    pub reachable_time: u32,
    /// Retransmission timer in ms (0: unspecified).
    pub retrans_time: u32,
    /// Source link-layer address option.
    pub lladdr: Option<[u8; 6]>,
    /// MTU option.
    pub mtu: Option<u32>,
    /// Prefix information option (the first one).
    pub prefix: Option<PrefixInfo>,
    /// RDNSS option (RFC 8106): lifetime in seconds and the first server.
    pub rdnss: Option<(u32, Ipv6Addr)>,
}

/// High-level ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr<'a> {
    /// Type 128.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data.
        data: &'a [u8],
    },
    /// Type 129.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data.
        data: &'a [u8],
    },
    /// Type 1.
    DstUnreachable {
        /// Code (see [`unreachable`](mod@unreachable)).
        code: u8,
        /// As much of the invoking packet as fits.
        data: &'a [u8],
    },
    /// Type 2.
    PacketTooBig {
        /// The next hop's MTU.
        mtu: u32,
        /// As much of the invoking packet as fits.
        data: &'a [u8],
    },
    /// Type 133.
    RouterSolicit {
        /// Source link-layer address option.
        lladdr: Option<[u8; 6]>,
    },
    /// Type 134.
    RouterAdvert(RouterAdvert),
    /// Type 135.
    NeighborSolicit {
        /// The address being resolved.
        target: Ipv6Addr,
        /// Source link-layer address option.
        lladdr: Option<[u8; 6]>,
    },
    /// Type 136.
    NeighborAdvert {
        /// R: the sender is a router.
        router: bool,
        /// S: an answer to a solicitation.
        solicited: bool,
        /// O: override cached entries.
        override_: bool,
        /// The address advertised.
        target: Ipv6Addr,
        /// Target link-layer address option.
        lladdr: Option<[u8; 6]>,
    },
}

/// The options of an NDP message, walked with bounds.
#[derive(Default)]
struct Options {
    source_lladdr: Option<[u8; 6]>,
    target_lladdr: Option<[u8; 6]>,
    prefix: Option<PrefixInfo>,
    mtu: Option<u32>,
    rdnss: Option<(u32, Ipv6Addr)>,
}

fn parse_options(mut b: &[u8]) -> Result<Options> {
    let mut o = Options::default();
    // Bounded: every step consumes at least 8 bytes (length 0 is refused).
    while !b.is_empty() {
        if b.len() < 2 {
            return Err(Error::Malformed);
        }
        let len = usize::from(b[1]) * 8;
        if len == 0 || len > b.len() {
            return Err(Error::Malformed);
        }
        let (body, rest) = b.split_at(len);
        match body[0] {
            opt::SOURCE_LLADDR | opt::TARGET_LLADDR if len == 8 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&body[2..8]);
                if body[0] == opt::SOURCE_LLADDR {
                    o.source_lladdr = Some(mac);
                } else {
                    o.target_lladdr = Some(mac);
                }
            }
            // Only the first prefix and RDNSS option count; later ones are skipped.
            opt::PREFIX_INFO if len == 32 && o.prefix.is_none() => {
                o.prefix = Some(PrefixInfo {
                    prefix_len: body[2],
                    on_link: body[3] & 0x80 != 0,
                    autonomous: body[3] & 0x40 != 0,
                    valid_lifetime: get::be32(body, 4..8),
                    preferred_lifetime: get::be32(body, 8..12),
                    prefix: get::ipv6(body, 16..32),
                });
            }
            opt::MTU if len == 8 => o.mtu = Some(get::be32(body, 4..8)),
            // RFC 8106 §5.1: length 3 + 2n, at least one address.
            opt::RDNSS if len >= 24 && (len / 8) % 2 == 1 && o.rdnss.is_none() => {
                o.rdnss = Some((get::be32(body, 4..8), get::ipv6(body, 8..24)));
            }
            opt::PREFIX_INFO if len == 32 => {}
            opt::RDNSS if len >= 24 && (len / 8) % 2 == 1 => {}
            opt::SOURCE_LLADDR | opt::TARGET_LLADDR | opt::PREFIX_INFO | opt::MTU | opt::RDNSS => {
                return Err(Error::Malformed);
            }
            _ => {} // RFC 4861 §4.6: unknown options are skipped.
        }
        b = rest;
    }
    Ok(o)
}

impl<'a> Repr<'a> {
    /// Parse a checked message from `src` to `dst`; `verify` checks the
    /// checksum. NDP messages must have code 0 and well-formed options;
    /// their hop limit of 255 (RFC 4861 §6.1) is the caller's to check.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&'a T>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        verify: bool,
    ) -> Result<Repr<'a>> {
        packet.check_len()?;
        if verify && !packet.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        // Borrow for 'a (the buffer's lifetime), not for the borrow of `packet`.
        let b: &'a [u8] = <T as AsRef<[u8]>>::as_ref(packet.buffer);
        let code = packet.msg_code();
        let ident = get::be16(b, 4..6);
        let seq_no = get::be16(b, 6..8);
        let ty = packet.msg_type();
        let ndp = (msg_type::ROUTER_SOLICIT..=msg_type::NEIGHBOR_ADVERT).contains(&ty);
        if code != 0 && (ndp || ty == msg_type::ECHO_REQUEST || ty == msg_type::ECHO_REPLY) {
            return Err(Error::Malformed);
        }
        match ty {
            msg_type::ECHO_REQUEST => Ok(Repr::EchoRequest {
                ident,
                seq_no,
                data: &b[HEADER_LEN..],
            }),
            msg_type::ECHO_REPLY => Ok(Repr::EchoReply {
                ident,
                seq_no,
                data: &b[HEADER_LEN..],
            }),
            msg_type::DST_UNREACHABLE if code <= 6 => Ok(Repr::DstUnreachable {
                code,
                data: &b[HEADER_LEN..],
            }),
            msg_type::DST_UNREACHABLE => Err(Error::Malformed),
            msg_type::PACKET_TOO_BIG => Ok(Repr::PacketTooBig {
                mtu: get::be32(b, 4..8),
                data: &b[HEADER_LEN..],
            }),
            msg_type::ROUTER_SOLICIT => {
                let o = parse_options(&b[HEADER_LEN..])?;
                Ok(Repr::RouterSolicit {
                    lladdr: o.source_lladdr,
                })
            }
            msg_type::ROUTER_ADVERT => {
                if b.len() < 16 {
                    return Err(Error::Truncated);
                }
                let o = parse_options(&b[16..])?;
                Ok(Repr::RouterAdvert(RouterAdvert {
                    hop_limit: b[4],
                    managed: b[5] & 0x80 != 0,
                    other: b[5] & 0x40 != 0,
                    router_lifetime: get::be16(b, 6..8),
                    reachable_time: get::be32(b, 8..12),
                    retrans_time: get::be32(b, 12..16),
                    lladdr: o.source_lladdr,
                    mtu: o.mtu,
                    prefix: o.prefix,
                    rdnss: o.rdnss,
                }))
            }
            msg_type::NEIGHBOR_SOLICIT | msg_type::NEIGHBOR_ADVERT => {
                if b.len() < 24 {
                    return Err(Error::Truncated);
                }
                let target = get::ipv6(b, 8..24);
                // RFC 4861 §7.1.1: the target is never multicast.
                if target.is_multicast() {
                    return Err(Error::Malformed);
                }
                let o = parse_options(&b[24..])?;
                if ty == msg_type::NEIGHBOR_SOLICIT {
                    Ok(Repr::NeighborSolicit {
                        target,
                        lladdr: o.source_lladdr,
                    })
                } else {
                    Ok(Repr::NeighborAdvert {
                        router: b[4] & 0x80 != 0,
                        solicited: b[4] & 0x40 != 0,
                        override_: b[4] & 0x20 != 0,
                        target,
                        lladdr: o.target_lladdr,
                    })
                }
            }
            _ => Err(Error::Unsupported),
        }
    }

    /// Bytes `emit` writes.
    pub fn buffer_len(&self) -> usize {
        let lla = |l: &Option<[u8; 6]>| if l.is_some() { 8 } else { 0 };
        match self {
            Repr::EchoRequest { data, .. }
            | Repr::EchoReply { data, .. }
            | Repr::DstUnreachable { data, .. }
            | Repr::PacketTooBig { data, .. } => HEADER_LEN + data.len(),
            Repr::RouterSolicit { lladdr } => HEADER_LEN + lla(lladdr),
            Repr::RouterAdvert(ra) => {
                16 + lla(&ra.lladdr)
                    + if ra.mtu.is_some() { 8 } else { 0 }
                    + if ra.prefix.is_some() { 32 } else { 0 }
                    + if ra.rdnss.is_some() { 24 } else { 0 }
            }
            Repr::NeighborSolicit { lladdr, .. } => 24 + lla(lladdr),
            Repr::NeighborAdvert { lladdr, .. } => 24 + lla(lladdr),
        }
    }

    /// Write the message into `buf` (exactly [`Repr::buffer_len`] bytes,
    /// every byte written) with its checksum for `src` → `dst`.
    pub fn emit(&self, buf: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr) {
        let len = self.buffer_len();
        let b = &mut buf[..len];
        b.fill(0);
        let put_lla = |b: &mut [u8], ty: u8, mac: [u8; 6]| {
            b[0] = ty;
            b[1] = 1;
            b[2..8].copy_from_slice(&mac);
        };
        match *self {
            Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }
            | Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => {
                b[0] = if matches!(self, Repr::EchoRequest { .. }) {
                    msg_type::ECHO_REQUEST
                } else {
                    msg_type::ECHO_REPLY
                };
                b[4..6].copy_from_slice(&ident.to_be_bytes());
                b[6..8].copy_from_slice(&seq_no.to_be_bytes());
                b[HEADER_LEN..].copy_from_slice(data);
            }
            Repr::DstUnreachable { code, data } => {
                b[0] = msg_type::DST_UNREACHABLE;
                b[1] = code;
                b[HEADER_LEN..].copy_from_slice(data);
            }
            Repr::PacketTooBig { mtu, data } => {
                b[0] = msg_type::PACKET_TOO_BIG;
                b[4..8].copy_from_slice(&mtu.to_be_bytes());
                b[HEADER_LEN..].copy_from_slice(data);
            }
            Repr::RouterSolicit { lladdr } => {
                b[0] = msg_type::ROUTER_SOLICIT;
                if let Some(mac) = lladdr {
                    put_lla(&mut b[8..], opt::SOURCE_LLADDR, mac);
                }
            }
            Repr::RouterAdvert(ra) => {
                b[0] = msg_type::ROUTER_ADVERT;
                b[4] = ra.hop_limit;
                b[5] = if ra.managed { 0x80 } else { 0 } | if ra.other { 0x40 } else { 0 };
                b[6..8].copy_from_slice(&ra.router_lifetime.to_be_bytes());
                b[8..12].copy_from_slice(&ra.reachable_time.to_be_bytes());
                b[12..16].copy_from_slice(&ra.retrans_time.to_be_bytes());
                let mut at = 16;
                if let Some(mac) = ra.lladdr {
                    put_lla(&mut b[at..], opt::SOURCE_LLADDR, mac);
                    at += 8;
                }
                if let Some(mtu) = ra.mtu {
                    b[at] = opt::MTU;
                    b[at + 1] = 1;
                    b[at + 4..at + 8].copy_from_slice(&mtu.to_be_bytes());
                    at += 8;
                }
                if let Some(p) = ra.prefix {
                    let o = &mut b[at..at + 32];
                    o[0] = opt::PREFIX_INFO;
                    o[1] = 4;
                    o[2] = p.prefix_len;
                    o[3] = if p.on_link { 0x80 } else { 0 } | if p.autonomous { 0x40 } else { 0 };
                    o[4..8].copy_from_slice(&p.valid_lifetime.to_be_bytes());
                    o[8..12].copy_from_slice(&p.preferred_lifetime.to_be_bytes());
                    o[16..32].copy_from_slice(&p.prefix.octets());
                    at += 32;
                }
                if let Some((life, server)) = ra.rdnss {
                    let o = &mut b[at..at + 24];
                    o[0] = opt::RDNSS;
                    o[1] = 3;
                    o[4..8].copy_from_slice(&life.to_be_bytes());
                    o[8..24].copy_from_slice(&server.octets());
                }
            }
            Repr::NeighborSolicit { target, lladdr } => {
                b[0] = msg_type::NEIGHBOR_SOLICIT;
                b[8..24].copy_from_slice(&target.octets());
                if let Some(mac) = lladdr {
                    put_lla(&mut b[24..], opt::SOURCE_LLADDR, mac);
                }
            }
            Repr::NeighborAdvert {
                router,
                solicited,
                override_,
                target,
                lladdr,
            } => {
                b[0] = msg_type::NEIGHBOR_ADVERT;
                b[4] = if router { 0x80 } else { 0 }
                    | if solicited { 0x40 } else { 0 }
                    | if override_ { 0x20 } else { 0 };
                b[8..24].copy_from_slice(&target.octets());
                if let Some(mac) = lladdr {
                    put_lla(&mut b[24..], opt::TARGET_LLADDR, mac);
                }
            }
        }
        let l = u32::try_from(len).unwrap_or(u32::MAX);
        let ph = checksum::pseudo_header(IpAddr::V6(src), IpAddr::V6(dst), ip_proto::ICMPV6, l);
        let c = checksum::finish(checksum::sum(b, ph));
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// A Linux router solicitation from fe80::215:15ff:fe15:1515 to ff02::2
    /// with its source link-layer address option.
    #[rustfmt::skip]
    const RS: [u8; 16] = [
        0x85, 0x00, 0x12, 0x5f, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x01, 0x00, 0x15, 0x15, 0x15, 0x15, 0x15,
    ];

    fn round_trip(r: Repr<'_>, src: Ipv6Addr, dst: Ipv6Addr) {
        for fill in [0u8, 0xff] {
            let mut buf = vec![fill; r.buffer_len()];
            r.emit(&mut buf, src, dst);
            let p = Packet::new_checked(&buf[..]).unwrap();
            assert!(p.verify_checksum(src, dst));
            assert_eq!(Repr::parse(&p, src, dst, true).unwrap(), r);
        }
    }

    #[test]
    fn router_solicitation_fixture() {
        let src = a("fe80::215:15ff:fe15:1515");
        let dst = a("ff02::2");
        let p = Packet::new_checked(&RS[..]).unwrap();
        let r = Repr::parse(&p, src, dst, false).unwrap();
        assert_eq!(
            r,
            Repr::RouterSolicit {
                lladdr: Some([0x00, 0x15, 0x15, 0x15, 0x15, 0x15])
            }
        );
        let mut buf = [0u8; 16];
        r.emit(&mut buf, src, dst);
        assert!(
            Packet::new_checked(&buf[..])
                .unwrap()
                .verify_checksum(src, dst)
        );
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap(), src, dst, true),
            Ok(r)
        );
    }

    #[test]
    fn every_message_round_trips() {
        let (s, d) = (a("fd00:33::2"), a("fd00:33::1"));
        round_trip(
            Repr::EchoRequest {
                ident: 7,
                seq_no: 9,
                data: b"hello",
            },
            s,
            d,
        );
        round_trip(
            Repr::EchoReply {
                ident: 7,
                seq_no: 9,
                data: b"",
            },
            s,
            d,
        );
        round_trip(
            Repr::DstUnreachable {
                code: unreachable::ADMIN_PROHIBITED,
                data: &[1, 2, 3],
            },
            s,
            d,
        );
        round_trip(
            Repr::PacketTooBig {
                mtu: 1280,
                data: &[1, 2, 3],
            },
            s,
            d,
        );
        round_trip(Repr::RouterSolicit { lladdr: None }, s, d);
        round_trip(
            Repr::RouterAdvert(RouterAdvert {
                hop_limit: 64,
                managed: false,
                other: true,
                router_lifetime: 1800,
                reachable_time: 0,
                retrans_time: 0,
                lladdr: Some([2, 0, 0, 0, 0, 1]),
                mtu: Some(1500),
                prefix: Some(PrefixInfo {
                    prefix_len: 64,
                    on_link: true,
                    autonomous: true,
                    valid_lifetime: 86400,
                    preferred_lifetime: 14400,
                    prefix: a("fd00:33::"),
                }),
                rdnss: Some((1800, a("fd00:33::1"))),
            }),
            a("fe80::1"),
            a("ff02::1"),
        );
        round_trip(
            Repr::NeighborSolicit {
                target: a("fd00:33::1"),
                lladdr: Some([2, 0, 0, 0, 0, 2]),
            },
            s,
            a("ff02::1:ff00:1"),
        );
        round_trip(
            Repr::NeighborAdvert {
                router: true,
                solicited: true,
                override_: true,
                target: a("fd00:33::1"),
                lladdr: Some([2, 0, 0, 0, 0, 1]),
            },
            d,
            s,
        );
    }

    #[test]
    fn malformed_messages_are_refused() {
        let (s, d) = (a("fe80::2"), a("ff02::2"));
        assert_eq!(Packet::new_checked(&RS[..7]).unwrap_err(), Error::Truncated);
        let check = |bytes: &[u8]| {
            let mut v = bytes.to_vec();
            // Fix the checksum so parsing gets past it.
            v[2] = 0;
            v[3] = 0;
            let l = u32::try_from(v.len()).unwrap();
            let ph = checksum::pseudo_header(s.into(), d.into(), ip_proto::ICMPV6, l);
            let c = checksum::finish(checksum::sum(&v, ph));
            v[2..4].copy_from_slice(&c.to_be_bytes());
            Repr::parse(&Packet::new_checked(&v[..]).unwrap(), s, d, true).map(|_| ())
        };
        // Bad checksum.
        assert_eq!(
            Repr::parse(&Packet::new_checked(&RS[..]).unwrap(), s, d, true),
            Err(Error::Checksum)
        );
        // Option of length 0 (would loop forever unbounded).
        let mut rs = RS;
        rs[9] = 0;
        assert_eq!(check(&rs), Err(Error::Malformed));
        // Option longer than the message.
        rs[9] = 2;
        assert_eq!(check(&rs), Err(Error::Malformed));
        // Odd trailing byte after the options.
        let mut long = RS.to_vec();
        long.push(1);
        assert_eq!(check(&long), Err(Error::Malformed));
        // Link-layer option of the wrong size.
        let mut lla = RS.to_vec();
        lla[9] = 2;
        lla.extend_from_slice(&[0; 8]);
        assert_eq!(check(&lla), Err(Error::Malformed));
        // Nonzero code on NDP.
        let mut rs = RS;
        rs[1] = 1;
        assert_eq!(check(&rs), Err(Error::Malformed));
        // NS shorter than its target, and with a multicast target.
        let mut ns = [0u8; 24];
        ns[0] = msg_type::NEIGHBOR_SOLICIT;
        assert_eq!(check(&ns[..20]), Err(Error::Truncated));
        ns[8] = 0xff;
        assert_eq!(check(&ns), Err(Error::Malformed));
        // An RA shorter than its fixed part.
        let mut ra = [0u8; 12];
        ra[0] = msg_type::ROUTER_ADVERT;
        assert_eq!(check(&ra), Err(Error::Truncated));
        // MLD (type 143) is not handled.
        let mut mld = [0u8; 8];
        mld[0] = 143;
        assert_eq!(check(&mld), Err(Error::Unsupported));
        // Unknown options are skipped.
        let mut rs = RS.to_vec();
        rs.extend_from_slice(&[200, 1, 0, 0, 0, 0, 0, 0]);
        assert!(check(&rs).is_ok());
    }
}
