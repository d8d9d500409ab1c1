//! IPv4 (RFC 791) packets.
//!
//! # Theory of operation
//!
//! ```text
//!  0       1       2               4               6               8
//!  +---+---+-------+---------------+---------------+---------------+
//!  |ver|ihl|  tos  | total length  | identification|flags|frag off |
//!  +---+---+-------+---------------+---------------+---------------+
//!  |  ttl  | proto | hdr checksum  | source address                |
//!  +-------+-------+---------------+-------------------------------+
//!  | destination address           | options (ihl > 5) ... payload
//!  +-------------------------------+-----------------------------------
//! ```
//!
//! [`Packet::new_checked`] establishes the invariant every getter relies on:
//! `20 <= header_len() <= total_len() <= buffer.len()`. Bytes past
//! `total_len` (Ethernet padding) are ignored. Options are accepted on input
//! and skipped; the stack never emits any. [`Repr::parse`] re-runs the length
//! checks (so an unchecked view cannot make it panic) and verifies the header
//! checksum.

use std::net::Ipv4Addr;

use super::checksum;
use super::{Error, Result, check_declared, check_min, get, set};

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// DF bit in the flags/fragment-offset word.
const FLAG_DF: u16 = 0x4000;
/// MF bit in the flags/fragment-offset word.
const FLAG_MF: u16 = 0x2000;
/// Fragment offset (in 8-byte units) in the flags/fragment-offset word.
const OFFSET_MASK: u16 = 0x1fff;

/// Minimum (and emitted) header length.
pub const HEADER_LEN: usize = 20;

view! {
    /// A view of an IPv4 packet.
    pub struct Packet;
    /// Wrap and check: buffer ≥ 20, version 4, IHL ≥ 5 and header fits,
    /// total length ≥ header length and ≤ buffer length (a longer buffer,
    /// e.g. Ethernet padding, is fine: `payload()` stops at total length).
    fn new_checked;
    /// Type-of-service byte (DSCP and ECN).
    tos / set_tos: u8 = byte(field::TOS);
    /// Total length field.
    total_len / set_total_len: u16 = be16(field::LENGTH);
    /// Identification.
    ident / set_ident: u16 = be16(field::IDENT);
    /// TTL.
    hop_limit / set_hop_limit: u8 = byte(field::TTL);
    /// Protocol.
    next_header / set_next_header: u8 = byte(field::PROTOCOL);
    /// Header checksum field.
    checksum / set_checksum: u16 = be16(field::CHECKSUM);
    /// Source address.
    src_addr / set_src_addr: Ipv4Addr = ipv4(field::SRC);
    /// Destination address.
    dst_addr / set_dst_addr: Ipv4Addr = ipv4(field::DST);
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// The checks of [`Packet::new_checked`]: `Truncated` when the buffer is
    /// shorter than 20 bytes, the header or the total length; `Malformed` for
    /// version != 4, IHL < 5 or total length < header length.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        check_min(len, HEADER_LEN)?;
        if self.version() != 4 {
            return Err(Error::Malformed);
        }
        let header_len = self.header_len();
        check_declared(header_len, HEADER_LEN, len)?;
        check_declared(usize::from(self.total_len()), header_len, len)
    }
    fn flg_off(&self) -> u16 {
        get::be16(self.buffer.as_ref(), field::FLG_OFF)
    }
    /// Version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }
    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }
    /// DF flag.
    pub fn dont_frag(&self) -> bool {
        self.flg_off() & FLAG_DF != 0
    }
    /// MF flag.
    pub fn more_frags(&self) -> bool {
        self.flg_off() & FLAG_MF != 0
    }
    /// Fragment offset in bytes (field × 8).
    pub fn frag_offset(&self) -> u16 {
        // At most 0x1fff * 8 = 65528: fits.
        (self.flg_off() & OFFSET_MASK) * 8
    }
    /// True if MF is set or the offset is non-zero.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    /// True if the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        // RFC 1071: the sum over a header with a correct checksum is 0xffff.
        checksum::finish(checksum::sum(self.header(), 0)) == 0
    }
    /// The header bytes (including options).
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }
    /// Payload: from header end to total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set DF, MF and the fragment offset (bytes, a multiple of 8).
    pub fn set_frag(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        debug_assert_eq!(offset % 8, 0, "fragment offset not a multiple of 8");
        let mut v = (offset / 8) & OFFSET_MASK;
        if dont_frag {
            v |= FLAG_DF;
        }
        if more_frags {
            v |= FLAG_MF;
        }
        set::be16(self.buffer.as_mut(), field::FLG_OFF, v);
    }
    /// Set version 4 and the header length in bytes (a multiple of 4, 20..=60).
    pub fn set_header_len(&mut self, len: usize) {
        debug_assert!(
            len % 4 == 0 && (HEADER_LEN..=60).contains(&len),
            "bad IPv4 header length {len}"
        );
        // Cannot fail for a valid length; an invalid one stores IHL 15.
        let ihl = u8::try_from(len / 4).unwrap_or(0x0f).min(0x0f);
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ihl;
    }
    /// Recompute and store the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::finish(checksum::sum(self.header(), 0));
        self.set_checksum(c);
    }
    /// Mutable payload (header end to total length).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }
}

/// High-level IPv4 header (no options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source.
    pub src_addr: Ipv4Addr,
    /// Destination.
    pub dst_addr: Ipv4Addr,
    /// Protocol.
    pub next_header: u8,
    /// Payload length.
    pub payload_len: usize,
    /// TTL.
    pub hop_limit: u8,
}

impl Repr {
    /// A header from `src_addr` to `dst_addr` over `payload_len` bytes of
    /// `next_header`, with the stack's hop limit ([`super::HOP_LIMIT`]).
    pub const fn new(
        src_addr: Ipv4Addr,
        dst_addr: Ipv4Addr,
        next_header: u8,
        payload_len: usize,
    ) -> Repr {
        Repr {
            src_addr,
            dst_addr,
            next_header,
            payload_len,
            hop_limit: super::HOP_LIMIT,
        }
    }
    /// Parse a checked packet: verifies the header checksum. Fragments parse
    /// fine (the caller checks `is_fragment`); `payload_len` is this packet's.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            // Cannot underflow: check_len ensured total_len >= header_len.
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            hop_limit: packet.hop_limit(),
        })
    }
    /// Emitted header length (20).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }
    /// Write a 20-byte header: IHL 5, TOS 0, ident 0, DF clear, offset 0,
    /// total length = 20 + payload_len, checksum filled.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        // A payload over 65515 bytes is a caller bug (the MTU caps it far below).
        debug_assert!(self.payload_len <= usize::from(u16::MAX) - HEADER_LEN);
        let total = u16::try_from(HEADER_LEN + self.payload_len).unwrap_or(u16::MAX);
        packet.set_header_len(HEADER_LEN);
        packet.set_tos(0);
        packet.set_total_len(total);
        packet.set_ident(0);
        // Ident 0 with DF clear: the datagram goes straight onto the guest
        // link with no router in between, so it is never fragmented on the
        // way and the ident is never used for reassembly (RFC 6864 §4).
        // A caller that fragments sets distinct idents with `set_ident`.
        packet.set_frag(false, false, 0);
        packet.set_hop_limit(self.hop_limit);
        packet.set_next_header(self.next_header);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::wire::ip_proto;

    /// A guest's DNS query (10.0.2.15:51234 -> 10.0.2.3:53, "example.com A"),
    /// as Linux sends it: ident 0x1c46, DF set, TTL 64.
    #[rustfmt::skip]
    const DNS_QUERY: [u8; 57] = [
        0x45, 0x00, 0x00, 0x39, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x06, 0x5d, 0x0a, 0x00, 0x02, 0x0f,
        0x0a, 0x00, 0x02, 0x03, 0xc8, 0x22, 0x00, 0x35, 0x00, 0x25, 0x9d, 0xe3, 0xb1, 0xe9, 0x01, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65,
        0x03, 0x63, 0x6f, 0x6d, 0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    /// The stack's reply header (10.0.2.3 -> 10.0.2.15): ident 0, DF clear, TTL 64.
    #[rustfmt::skip]
    const REPLY_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x49, 0x00, 0x00, 0x00, 0x00, 0x40, 0x11, 0x62, 0x93, 0x0a, 0x00, 0x02, 0x03,
        0x0a, 0x00, 0x02, 0x0f,
    ];

    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
    const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

    fn reply_repr() -> Repr {
        Repr {
            src_addr: DNS,
            dst_addr: GUEST,
            next_header: ip_proto::UDP,
            payload_len: 53,
            hop_limit: 64,
        }
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&DNS_QUERY[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.tos(), 0);
        assert_eq!(p.total_len(), 57);
        assert_eq!(p.ident(), 0x1c46);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.next_header(), ip_proto::UDP);
        assert_eq!(p.checksum(), 0x065d);
        assert_eq!(p.src_addr(), GUEST);
        assert_eq!(p.dst_addr(), DNS);
        assert!(p.verify_checksum());
        assert_eq!(p.header(), &DNS_QUERY[..20]);
        assert_eq!(p.payload(), &DNS_QUERY[20..]);
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 57];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_header_len(20);
        p.set_tos(0);
        p.set_total_len(57);
        p.set_ident(0x1c46);
        p.set_frag(true, false, 0);
        p.set_hop_limit(64);
        p.set_next_header(ip_proto::UDP);
        p.set_src_addr(GUEST);
        p.set_dst_addr(DNS);
        p.payload_mut().copy_from_slice(&DNS_QUERY[20..]);
        p.fill_checksum();
        assert_eq!(buf, DNS_QUERY);
    }

    #[test]
    fn parse() {
        let p = Packet::new_checked(&DNS_QUERY[..]).unwrap();
        let repr = Repr::parse(&p).unwrap();
        assert_eq!(
            repr,
            Repr {
                src_addr: GUEST,
                dst_addr: DNS,
                next_header: ip_proto::UDP,
                payload_len: 37,
                hop_limit: 64
            }
        );
    }

    #[test]
    fn emit() {
        let repr = reply_repr();
        assert_eq!(repr.buffer_len(), 20);
        let mut buf = [0xa5u8; 20 + 53];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        repr.emit(&mut p);
        assert_eq!(p.payload_mut().len(), 53);
        assert_eq!(buf[..20], REPLY_HEADER);
        // Round trip (the payload is opaque to IPv4).
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap()),
            Ok(repr)
        );
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let mut buf = [0u8; 80];
        buf[..57].copy_from_slice(&DNS_QUERY);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.payload(), &DNS_QUERY[20..]);
        assert_eq!(Repr::parse(&p).unwrap().payload_len, 37);
    }

    #[test]
    fn options_are_skipped() {
        // IHL 6 with a 4-byte option (NOP NOP NOP EOL); total length 24 + 4.
        let mut buf = [0u8; 28];
        buf[..20].copy_from_slice(&DNS_QUERY[..20]);
        buf[0] = 0x46;
        buf[2..4].copy_from_slice(&28u16.to_be_bytes());
        buf[20..24].copy_from_slice(&[1, 1, 1, 0]);
        buf[24..].copy_from_slice(b"abcd");
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.fill_checksum();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.payload(), b"abcd");
        assert_eq!(Repr::parse(&p).unwrap().payload_len, 4);
    }

    #[test]
    fn fragments() {
        let mut buf = DNS_QUERY;
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_frag(false, true, 1480);
        p.fill_checksum();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(!p.dont_frag() && p.more_frags() && p.is_fragment());
        assert_eq!(p.frag_offset(), 1480);
        assert!(Repr::parse(&p).is_ok());
        // Largest offset.
        let mut buf = DNS_QUERY;
        Packet::new_unchecked(&mut buf[..]).set_frag(false, false, 0xfff8);
        assert_eq!(Packet::new_unchecked(&buf[..]).frag_offset(), 0xfff8);
    }

    #[test]
    fn truncated() {
        for len in 0..DNS_QUERY.len() {
            assert_eq!(
                Packet::new_checked(&DNS_QUERY[..len]).unwrap_err(),
                Error::Truncated,
                "len {len}"
            );
            assert_eq!(
                Repr::parse(&Packet::new_unchecked(&DNS_QUERY[..len])),
                Err(Error::Truncated)
            );
        }
    }

    #[test]
    fn malformed() {
        let check = |i: usize, v: u8, err: Error| {
            let mut b = DNS_QUERY;
            b[i] = v;
            // Fix the checksum so only the field under test is wrong.
            let c = {
                let mut h = b;
                h[10] = 0;
                h[11] = 0;
                checksum::finish(checksum::sum(&h[..20], 0))
            };
            b[10..12].copy_from_slice(&c.to_be_bytes());
            assert_eq!(
                Packet::new_checked(&b[..]).unwrap_err(),
                err,
                "byte {i} = {v:#x}"
            );
            assert_eq!(Repr::parse(&Packet::new_unchecked(&b[..])), Err(err));
        };
        check(0, 0x65, Error::Malformed); // version 6
        check(0, 0x44, Error::Malformed); // IHL 4
        check(0, 0x40, Error::Malformed); // IHL 0
        check(0, 0x4f, Error::Truncated); // 60-byte header in a 57-byte buffer
        check(3, 19, Error::Malformed); // total length < header length
        check(3, 58, Error::Truncated); // total length > buffer
        check(2, 0xff, Error::Truncated);
    }

    #[test]
    fn bad_checksum() {
        let mut b = DNS_QUERY;
        b[8] = 63; // TTL changed, checksum not updated
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(!p.verify_checksum());
        assert_eq!(Repr::parse(&p), Err(Error::Checksum));
        // Payload corruption does not matter to IPv4.
        let mut b = DNS_QUERY;
        b[40] ^= 0xff;
        assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).is_ok());
    }
}
