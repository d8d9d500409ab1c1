//! UDP (RFC 768) datagrams.
//!
//! # Theory of operation
//!
//! ```text
//!  0               2               4               6               8
//!  +---------------+---------------+---------------+---------------+-----
//!  | source port   | dest port     | length        | checksum      | payload
//!  +---------------+---------------+---------------+---------------+-----
//! ```
//!
//! [`Packet::new_checked`] establishes `8 <= len() <= buffer.len()`; the
//! datagram is `buffer[..len()]` and anything after it is ignored. The
//! checksum covers the pseudo header (RFC 768; RFC 8200 §8.1 for IPv6) and
//! `buffer[..len()]`. Over IPv4 a zero checksum field means "not computed",
//! so a computed zero is sent as 0xffff (the same value in ones' complement).
//! Over IPv6 a zero field is invalid (RFC 8200 §8.1) and fails verification.

use std::net::IpAddr;

use super::checksum;
use super::ip_proto;
use super::{Error, Result, check_declared, check_min};

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// Header length.
pub const HEADER_LEN: usize = 8;

view! {
    /// A view of a UDP datagram.
    pub struct Packet;
    /// Wrap and check: buffer ≥ 8, length field ≥ 8 and ≤ buffer length.
    fn new_checked;
    /// Source port.
    src_port / set_src_port: u16 = be16(field::SRC_PORT);
    /// Destination port.
    dst_port / set_dst_port: u16 = be16(field::DST_PORT);
    /// Length field.
    len / set_len: u16 = be16(field::LENGTH);
    /// Checksum field.
    checksum / set_checksum: u16 = be16(field::CHECKSUM);
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// The checks of [`Packet::new_checked`]: `Truncated` if the buffer is
    /// shorter than 8 bytes or than the length field, `Malformed` if the
    /// length field is below 8.
    pub fn check_len(&self) -> Result<()> {
        let buf_len = self.buffer.as_ref().len();
        check_min(buf_len, HEADER_LEN)?;
        check_declared(usize::from(self.len()), HEADER_LEN, buf_len)
    }
    /// True if the length field is 8 (no payload).
    pub fn is_empty(&self) -> bool {
        self.len() == 8
    }
    /// Payload up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
    /// True if the checksum verifies (IPv4: a zero field means "none" and verifies).
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        if self.checksum() == 0 {
            // RFC 768: none computed (IPv4); RFC 8200 §8.1: invalid (IPv6).
            return src.is_ipv4();
        }
        let len = self.len();
        let datagram = &self.buffer.as_ref()[..usize::from(len)];
        let pseudo = checksum::pseudo_header(src, dst, ip_proto::UDP, u32::from(len));
        checksum::finish(checksum::sum(datagram, pseudo)) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Compute and store the checksum over `buffer[..len()]` (a computed 0
    /// is stored as 0xffff, RFC 768).
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        self.set_checksum(0);
        let len = self.len();
        let pseudo = checksum::pseudo_header(src, dst, ip_proto::UDP, u32::from(len));
        let c = checksum::finish(checksum::sum(
            &self.buffer.as_ref()[..usize::from(len)],
            pseudo,
        ));
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
    /// Mutable payload (up to the length field).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// High-level UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl Repr {
    /// Parse a checked datagram; verifies the checksum unless `verify` is false
    /// (offloaded). Port 0 on either side is `Malformed`.
    pub fn parse<T: AsRef<[u8]>>(
        packet: &Packet<T>,
        src: IpAddr,
        dst: IpAddr,
        verify: bool,
    ) -> Result<Repr> {
        packet.check_len()?;
        // Port 0 is reserved (RFC 768 allows it only as "no reply" source;
        // nothing useful can be forwarded to or from it).
        if packet.src_port() == 0 || packet.dst_port() == 0 {
            return Err(Error::Malformed);
        }
        if verify && !packet.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
        })
    }
    /// Header length (8).
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }
    /// Write the header and `payload` into `packet` (exactly 8 + payload
    /// bytes), with the checksum computed (a computed 0 is sent as 0xffff).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: IpAddr,
        dst: IpAddr,
        payload: &[u8],
    ) {
        self.emit_unsummed(packet, payload);
        packet.fill_checksum(src, dst);
    }
    /// Like [`Repr::emit`], but for a receiver that completes the checksum
    /// (virtio `NEEDS_CSUM`, Linux `CHECKSUM_PARTIAL`): the checksum field
    /// holds the pseudo-header sum, folded and not complemented (Linux's
    /// `udp4_hwcsum` leaves the same). The payload is not read again.
    pub fn emit_partial<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: IpAddr,
        dst: IpAddr,
        payload: &[u8],
    ) {
        let len = self.emit_unsummed(packet, payload);
        let pseudo = checksum::pseudo_header(src, dst, ip_proto::UDP, u32::from(len));
        // Cannot fail: `pseudo_header` folds to at most 0xffff.
        packet.set_checksum(u16::try_from(pseudo).unwrap_or(0xffff));
    }
    /// Ports, length and payload, checksum field untouched; returns the
    /// length field written.
    fn emit_unsummed<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        payload: &[u8],
    ) -> u16 {
        // Over 65527 bytes of payload is a caller bug (the MTU caps it).
        debug_assert!(payload.len() <= usize::from(u16::MAX) - HEADER_LEN);
        let len = u16::try_from(HEADER_LEN + payload.len()).unwrap_or(u16::MAX);
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(len);
        let body = packet.payload_mut();
        let n = body.len().min(payload.len());
        body[..n].copy_from_slice(&payload[..n]);
        len
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// A guest's DNS query, 10.0.2.15:51234 -> 10.0.2.3:53, "example.com IN A".
    #[rustfmt::skip]
    const DNS_QUERY: [u8; 37] = [
        0xc8, 0x22, 0x00, 0x35, 0x00, 0x25, 0x9d, 0xe3, 0xb1, 0xe9, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x03, 0x63, 0x6f, 0x6d,
        0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    /// The answer, 10.0.2.3:53 -> 10.0.2.15:51234, A 93.184.216.34 TTL 3600.
    #[rustfmt::skip]
    const DNS_REPLY: [u8; 53] = [
        0x00, 0x35, 0xc8, 0x22, 0x00, 0x35, 0x1f, 0x3e, 0xb1, 0xe9, 0x81, 0x80, 0x00, 0x01, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x03, 0x63, 0x6f, 0x6d,
        0x00, 0x00, 0x01, 0x00, 0x01, 0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x0e, 0x10, 0x00,
        0x04, 0x5d, 0xb8, 0xd8, 0x22,
    ];

    const GUEST: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15));
    const DNS: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 3));

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&DNS_QUERY[..]).unwrap();
        assert_eq!(p.src_port(), 51234);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 37);
        assert!(!p.is_empty());
        assert_eq!(p.checksum(), 0x9de3);
        assert_eq!(p.payload(), &DNS_QUERY[8..]);
        assert!(p.verify_checksum(GUEST, DNS));
        assert!(!p.verify_checksum(GUEST, Ipv4Addr::new(10, 0, 2, 16).into()));
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 53];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(53);
        p.set_dst_port(51234);
        p.set_len(53);
        p.payload_mut().copy_from_slice(&DNS_REPLY[8..]);
        p.fill_checksum(DNS, GUEST);
        assert_eq!(buf, DNS_REPLY);
    }

    #[test]
    fn parse() {
        let p = Packet::new_checked(&DNS_QUERY[..]).unwrap();
        assert_eq!(
            Repr::parse(&p, GUEST, DNS, true),
            Ok(Repr {
                src_port: 51234,
                dst_port: 53
            })
        );
    }

    #[test]
    fn emit() {
        let repr = Repr {
            src_port: 53,
            dst_port: 51234,
        };
        assert_eq!(repr.header_len(), 8);
        let mut buf = [0xa5u8; 53];
        repr.emit(
            &mut Packet::new_unchecked(&mut buf[..]),
            DNS,
            GUEST,
            &DNS_REPLY[8..],
        );
        assert_eq!(buf, DNS_REPLY);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&p, DNS, GUEST, true), Ok(repr));
        assert_eq!(p.payload(), &DNS_REPLY[8..]);
    }

    #[test]
    fn empty_payload() {
        let repr = Repr {
            src_port: 9,
            dst_port: 9,
        };
        let mut buf = [0xa5u8; 8];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]), GUEST, DNS, &[]);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.is_empty() && p.payload().is_empty());
        assert_eq!(Repr::parse(&p, GUEST, DNS, true), Ok(repr));
    }

    #[test]
    fn zero_checksum() {
        // IPv4: zero means "none" and verifies.
        let mut b = DNS_QUERY;
        b[6] = 0;
        b[7] = 0;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum(GUEST, DNS));
        assert!(Repr::parse(&p, GUEST, DNS, true).is_ok());
        // IPv6: zero is invalid.
        let a: IpAddr = Ipv6Addr::LOCALHOST.into();
        assert!(!p.verify_checksum(a, a));
        assert_eq!(Repr::parse(&p, a, a, true), Err(Error::Checksum));
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Choose the last two payload bytes so the checksum computes to 0.
        let repr = Repr {
            src_port: 1000,
            dst_port: 2000,
        };
        let mut payload = [0x11u8, 0x22, 0, 0];
        let mut buf = [0u8; 12];
        repr.emit(
            &mut Packet::new_unchecked(&mut buf[..]),
            GUEST,
            DNS,
            &payload,
        );
        let c = Packet::new_unchecked(&buf[..]).checksum();
        // Adding the old checksum value into the data makes the sum 0xffff,
        // i.e. a computed checksum of 0.
        payload[2..4].copy_from_slice(&c.to_be_bytes());
        repr.emit(
            &mut Packet::new_unchecked(&mut buf[..]),
            GUEST,
            DNS,
            &payload,
        );
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum(GUEST, DNS));
    }

    #[test]
    fn ipv6_checksum() {
        let s: IpAddr = "fd00::2".parse::<Ipv6Addr>().unwrap().into();
        let d: IpAddr = "fd00::3".parse::<Ipv6Addr>().unwrap().into();
        let repr = Repr {
            src_port: 51234,
            dst_port: 53,
        };
        let mut buf = [0u8; 37];
        repr.emit(
            &mut Packet::new_unchecked(&mut buf[..]),
            s,
            d,
            &DNS_QUERY[8..],
        );
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum(s, d));
        assert_eq!(Repr::parse(&p, s, d, true), Ok(repr));
        assert_eq!(Repr::parse(&p, d, s, true), Ok(repr)); // the sum is symmetric
        assert_eq!(Repr::parse(&p, s, s, true), Err(Error::Checksum));
    }

    #[test]
    fn bad_checksum() {
        let mut b = DNS_QUERY;
        b[20] ^= 0x20; // 'e' -> 'E'
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p, GUEST, DNS, true), Err(Error::Checksum));
        // Offloaded: not verified.
        assert!(Repr::parse(&p, GUEST, DNS, false).is_ok());
    }

    #[test]
    fn trailing_bytes_ignored() {
        let mut b = [0u8; 46];
        b[..37].copy_from_slice(&DNS_QUERY);
        b[40] = 0xee;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.payload(), &DNS_QUERY[8..]);
        assert!(Repr::parse(&p, GUEST, DNS, true).is_ok());
    }

    #[test]
    fn truncated() {
        for len in 0..DNS_QUERY.len() {
            assert_eq!(
                Packet::new_checked(&DNS_QUERY[..len]).unwrap_err(),
                Error::Truncated
            );
            assert_eq!(
                Repr::parse(&Packet::new_unchecked(&DNS_QUERY[..len]), GUEST, DNS, false),
                Err(Error::Truncated)
            );
        }
    }

    #[test]
    fn malformed() {
        for bad_len in [0u16, 7] {
            let mut b = DNS_QUERY;
            b[4..6].copy_from_slice(&bad_len.to_be_bytes());
            assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        }
        for port in [0..2, 2..4] {
            let mut b = DNS_QUERY;
            b[port].fill(0);
            let p = Packet::new_checked(&b[..]).unwrap();
            assert_eq!(Repr::parse(&p, GUEST, DNS, false), Err(Error::Malformed));
        }
    }

    #[test]
    fn partial_checksum_completes_to_the_full_one() {
        let repr = Repr {
            src_port: 53,
            dst_port: 51234,
        };
        let mut full = [0xa5u8; 53];
        repr.emit(
            &mut Packet::new_unchecked(&mut full[..]),
            DNS,
            GUEST,
            &DNS_REPLY[8..],
        );
        let mut part = [0x5au8; 53];
        repr.emit_partial(
            &mut Packet::new_unchecked(&mut part[..]),
            DNS,
            GUEST,
            &DNS_REPLY[8..],
        );
        assert_eq!(full[..6], part[..6]);
        assert_eq!(full[8..], part[8..]);
        let done = checksum::finish(checksum::sum(&part, 0));
        assert_eq!(done, 0x1f3e, "the checksum of DNS_REPLY");
    }
}
