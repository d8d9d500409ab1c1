//! ICMPv4 (RFC 792): echo and the error messages the stack sends.
//!
//! # Theory of operation
//!
//! ```text
//!  0       1       2               4               6               8
//!  +-------+-------+---------------+---------------+---------------+-----
//!  | type  | code  | checksum      | rest of header (4 bytes)      | data
//!  +-------+-------+---------------+---------------+---------------+-----
//!   echo (0, 8):                     | identifier    | sequence no   |
//!   unreachable (3):                 | unused        | next-hop MTU  | (code 4, RFC 1191)
//!   time exceeded (11):              | unused                        |
//! ```
//!
//! The checksum covers the whole message (the IPv4 payload; no pseudo
//! header). [`Packet::new_checked`] only ensures the 8-byte header is there;
//! [`Repr::parse`] verifies the checksum and maps the types above, borrowing
//! `data` from the packet's buffer. Other types are `Unsupported`.

use super::checksum;
use super::{Error, Result, set};

mod field {
    use core::ops::{Range, RangeFrom};
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const REST: Range<usize> = 4..8;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQ_NO: Range<usize> = 6..8;
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
    pub const DATA: RangeFrom<usize> = 8..;
}

/// Header length (type, code, checksum, rest of header).
pub const HEADER_LEN: usize = 8;

/// Message types this module knows.
pub mod msg_type {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable.
    pub const DST_UNREACHABLE: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
}

view! {
    /// A view of an ICMPv4 message.
    pub struct Packet;
    fn check_len = HEADER_LEN;
    /// Wrap and check: at least 8 bytes.
    fn new_checked;
    /// Type.
    msg_type / set_msg_type: u8 = byte(field::TYPE);
    /// Code.
    msg_code / set_msg_code: u8 = byte(field::CODE);
    /// Checksum field.
    checksum / set_checksum: u16 = be16(field::CHECKSUM);
    /// Echo identifier (bytes 4..6).
    echo_ident / set_echo_ident: u16 = be16(field::ECHO_IDENT);
    /// Echo sequence number (bytes 6..8).
    echo_seq_no / set_echo_seq_no: u16 = be16(field::ECHO_SEQ_NO);
    /// Next-hop MTU of a "fragmentation needed" message (bytes 6..8).
    next_hop_mtu: u16 = be16(field::NEXT_HOP_MTU);
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Everything after the 8-byte header.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }
    /// True if the checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::finish(checksum::sum(self.buffer.as_ref(), 0)) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set the 4-byte "rest of header" (bytes 4..8) as one big-endian word.
    pub fn set_rest_of_header(&mut self, v: u32) {
        set::be32(self.buffer.as_mut(), field::REST, v);
    }
    /// Mutable data after the header.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }
    /// Compute and store the checksum over the whole buffer.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::finish(checksum::sum(self.buffer.as_ref(), 0));
        self.set_checksum(c);
    }
}

/// ICMP "destination unreachable" codes the stack sends.
pub mod unreachable {
    /// Network unreachable.
    pub const NET: u8 = 0;
    /// Host unreachable.
    pub const HOST: u8 = 1;
    /// Port unreachable.
    pub const PORT: u8 = 3;
    /// Fragmentation needed and DF set.
    pub const FRAG_NEEDED: u8 = 4;
    /// Communication administratively prohibited.
    pub const ADMIN_PROHIBITED: u8 = 13;
}

/// High-level ICMPv4 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr<'a> {
    /// Type 8.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data.
        data: &'a [u8],
    },
    /// Type 0.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data.
        data: &'a [u8],
    },
    /// Type 3. `data` is the offending IP header plus the first bytes of its
    /// payload (RFC 792: at least 8; the builder passes up to 548 so the whole
    /// message stays within 576 bytes, RFC 1812 §4.3.2.3).
    DstUnreachable {
        /// Code (see [`unreachable`](mod@unreachable)).
        code: u8,
        /// Next-hop MTU for code 4, else 0.
        next_hop_mtu: u16,
        /// Original datagram's header and leading payload.
        data: &'a [u8],
    },
    /// Type 11 code 0 (TTL exceeded in transit).
    TimeExceeded {
        /// Original datagram's header and leading payload.
        data: &'a [u8],
    },
}

impl<'a> Repr<'a> {
    /// Parse a checked message (checksum verified). Other types are `Unsupported`.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        // Borrow for 'a (the buffer's lifetime), not for the borrow of `packet`.
        let buf: &'a [u8] = <T as AsRef<[u8]>>::as_ref(packet.buffer);
        let data = &buf[field::DATA];
        let code = packet.msg_code();
        match packet.msg_type() {
            // RFC 792: echo messages have code 0.
            msg_type::ECHO_REQUEST | msg_type::ECHO_REPLY if code != 0 => Err(Error::Malformed),
            msg_type::ECHO_REQUEST => Ok(Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            }),
            msg_type::ECHO_REPLY => Ok(Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            }),
            // Codes 0..=15 are assigned (RFC 792, RFC 1122 §3.2.2.1, RFC 1812 §5.2.7.1).
            msg_type::DST_UNREACHABLE if code > 15 => Err(Error::Malformed),
            msg_type::DST_UNREACHABLE => Ok(Repr::DstUnreachable {
                code,
                // RFC 1191 §4: the MTU field exists only for code 4.
                next_hop_mtu: if code == unreachable::FRAG_NEEDED {
                    packet.next_hop_mtu()
                } else {
                    0
                },
                data,
            }),
            // Code 1 (reassembly time exceeded) is not one the stack handles.
            msg_type::TIME_EXCEEDED if code == 0 => Ok(Repr::TimeExceeded { data }),
            _ => Err(Error::Unsupported),
        }
    }
    /// Bytes `emit` writes (8 + data).
    pub fn buffer_len(&self) -> usize {
        let data = match self {
            Repr::EchoRequest { data, .. }
            | Repr::EchoReply { data, .. }
            | Repr::DstUnreachable { data, .. }
            | Repr::TimeExceeded { data } => data,
        };
        HEADER_LEN + data.len()
    }
    /// Write the message and its checksum.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let (ty, code, rest, data) = match *self {
            Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => (
                msg_type::ECHO_REQUEST,
                0,
                u32::from(ident) << 16 | u32::from(seq_no),
                data,
            ),
            Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => (
                msg_type::ECHO_REPLY,
                0,
                u32::from(ident) << 16 | u32::from(seq_no),
                data,
            ),
            Repr::DstUnreachable {
                code,
                next_hop_mtu,
                data,
            } => {
                let mtu = if code == unreachable::FRAG_NEEDED {
                    next_hop_mtu
                } else {
                    0
                };
                (msg_type::DST_UNREACHABLE, code, u32::from(mtu), data)
            }
            Repr::TimeExceeded { data } => (msg_type::TIME_EXCEEDED, 0, 0, data),
        };
        packet.set_msg_type(ty);
        packet.set_msg_code(code);
        packet.set_rest_of_header(rest);
        packet.data_mut()[..data.len()].copy_from_slice(data);
        // Checksum only what this message owns, whatever the buffer's length.
        packet.set_checksum(0);
        let c = checksum::finish(checksum::sum(
            &packet.buffer.as_ref()[..HEADER_LEN + data.len()],
            0,
        ));
        packet.set_checksum(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ping -c1 10.0.2.2` from a Linux guest: ident 0x0b3e, seq 1, 56 bytes
    /// of data (a struct timeval, then 0x10..=0x37).
    #[rustfmt::skip]
    const ECHO_REQUEST: [u8; 64] = [
        0x08, 0x00, 0x3a, 0x95, 0x0b, 0x3e, 0x00, 0x01, 0xe3, 0xb2, 0xa5, 0x66, 0x00, 0x00, 0x00, 0x00,
        0x5c, 0x3f, 0x0e, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17,
        0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27,
        0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37,
    ];

    /// The matching reply (only the type and checksum differ).
    #[rustfmt::skip]
    const ECHO_REPLY: [u8; 64] = [
        0x00, 0x00, 0x42, 0x95, 0x0b, 0x3e, 0x00, 0x01, 0xe3, 0xb2, 0xa5, 0x66, 0x00, 0x00, 0x00, 0x00,
        0x5c, 0x3f, 0x0e, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17,
        0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27,
        0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37,
    ];

    /// The offending datagram's IP header plus 8 bytes: the guest's DNS query
    /// 10.0.2.15:51234 -> 10.0.2.3:53.
    #[rustfmt::skip]
    const QUOTE: [u8; 28] = [
        0x45, 0x00, 0x00, 0x39, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x06, 0x5d, 0x0a, 0x00, 0x02, 0x0f,
        0x0a, 0x00, 0x02, 0x03, 0xc8, 0x22, 0x00, 0x35, 0x00, 0x25, 0x9d, 0xe3,
    ];

    /// Port unreachable quoting [`QUOTE`].
    const PORT_UNREACH_HDR: [u8; 8] = [0x03, 0x03, 0x96, 0x9c, 0, 0, 0, 0];
    /// Fragmentation needed, next-hop MTU 1400, quoting [`QUOTE`].
    const FRAG_NEEDED_HDR: [u8; 8] = [0x03, 0x04, 0x91, 0x23, 0, 0, 0x05, 0x78];
    /// TTL exceeded in transit, quoting [`QUOTE`].
    const TIME_EXCEEDED_HDR: [u8; 8] = [0x0b, 0x00, 0x8e, 0x9f, 0, 0, 0, 0];

    fn with_quote(hdr: [u8; 8]) -> [u8; 36] {
        let mut b = [0u8; 36];
        b[..8].copy_from_slice(&hdr);
        b[8..].copy_from_slice(&QUOTE);
        b
    }

    fn fixtures() -> Vec<(Vec<u8>, Repr<'static>)> {
        vec![
            (
                ECHO_REQUEST.to_vec(),
                Repr::EchoRequest {
                    ident: 0x0b3e,
                    seq_no: 1,
                    data: &ECHO_REQUEST[8..],
                },
            ),
            (
                ECHO_REPLY.to_vec(),
                Repr::EchoReply {
                    ident: 0x0b3e,
                    seq_no: 1,
                    data: &ECHO_REQUEST[8..],
                },
            ),
            (
                with_quote(PORT_UNREACH_HDR).to_vec(),
                Repr::DstUnreachable {
                    code: unreachable::PORT,
                    next_hop_mtu: 0,
                    data: &QUOTE,
                },
            ),
            (
                with_quote(FRAG_NEEDED_HDR).to_vec(),
                Repr::DstUnreachable {
                    code: unreachable::FRAG_NEEDED,
                    next_hop_mtu: 1400,
                    data: &QUOTE,
                },
            ),
            (
                with_quote(TIME_EXCEEDED_HDR).to_vec(),
                Repr::TimeExceeded { data: &QUOTE },
            ),
        ]
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&ECHO_REQUEST[..]).unwrap();
        assert_eq!(p.msg_type(), msg_type::ECHO_REQUEST);
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.checksum(), 0x3a95);
        assert_eq!(p.echo_ident(), 0x0b3e);
        assert_eq!(p.echo_seq_no(), 1);
        assert_eq!(p.data(), &ECHO_REQUEST[8..]);
        assert!(p.verify_checksum());
        let b = with_quote(FRAG_NEEDED_HDR);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.msg_type(), p.msg_code(), p.next_hop_mtu()), (3, 4, 1400));
        assert!(p.verify_checksum());
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 64];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(msg_type::ECHO_REPLY);
        p.set_msg_code(0);
        p.set_echo_ident(0x0b3e);
        p.set_echo_seq_no(1);
        p.data_mut().copy_from_slice(&ECHO_REQUEST[8..]);
        p.fill_checksum();
        assert_eq!(buf, ECHO_REPLY);
    }

    #[test]
    fn parse() {
        for (bytes, repr) in fixtures() {
            let p = Packet::new_checked(&bytes[..]).unwrap();
            assert_eq!(Repr::parse(&p), Ok(repr));
        }
    }

    #[test]
    fn emit() {
        for (bytes, repr) in fixtures() {
            assert_eq!(repr.buffer_len(), bytes.len());
            let mut buf = vec![0xa5u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
            assert_eq!(buf, bytes, "{repr:?}");
        }
    }

    #[test]
    fn mtu_only_for_code_4() {
        // A stray value in bytes 6..8 of a port-unreachable is ignored...
        let mut b = with_quote(PORT_UNREACH_HDR);
        b[7] = 0x99;
        Packet::new_unchecked(&mut b[..]).fill_checksum();
        let repr = Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            Repr::DstUnreachable {
                code: 3,
                next_hop_mtu: 0,
                data: &QUOTE
            }
        );
        // ...and never emitted.
        let r = Repr::DstUnreachable {
            code: 3,
            next_hop_mtu: 1400,
            data: &QUOTE,
        };
        let mut buf = [0u8; 36];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, with_quote(PORT_UNREACH_HDR));
    }

    #[test]
    fn bad_checksum() {
        let mut b = ECHO_REQUEST;
        b[63] ^= 1;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(!p.verify_checksum());
        assert_eq!(Repr::parse(&p), Err(Error::Checksum));
    }

    #[test]
    fn truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&ECHO_REQUEST[..len]).unwrap_err(),
                Error::Truncated
            );
            assert_eq!(
                Repr::parse(&Packet::new_unchecked(&ECHO_REQUEST[..len])),
                Err(Error::Truncated)
            );
        }
        // Cut inside the data: the header is there, the checksum no longer holds.
        for len in HEADER_LEN..ECHO_REQUEST.len() {
            let p = Packet::new_checked(&ECHO_REQUEST[..len]).unwrap();
            assert!(Repr::parse(&p).is_err(), "len {len}");
        }
    }

    #[test]
    fn unsupported_and_malformed() {
        let cases = [
            (13u8, 0u8, Error::Unsupported), // timestamp
            (5, 0, Error::Unsupported),      // redirect
            (11, 1, Error::Unsupported),     // reassembly time exceeded
            (8, 1, Error::Malformed),        // echo with a code
            (0, 7, Error::Malformed),
            (3, 16, Error::Malformed),
        ];
        for (ty, code, err) in cases {
            let mut b = ECHO_REQUEST;
            b[0] = ty;
            b[1] = code;
            let mut p = Packet::new_unchecked(&mut b[..]);
            p.fill_checksum();
            assert_eq!(
                Repr::parse(&Packet::new_checked(&b[..]).unwrap()),
                Err(err),
                "{ty}/{code}"
            );
        }
    }
}
