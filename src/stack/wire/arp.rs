//! ARP (RFC 826) for Ethernet + IPv4.
//!
//! # Theory of operation
//!
//! Only the Ethernet/IPv4 flavour exists on a virtio link, so the view has
//! fixed offsets (hardware length 6, protocol length 4):
//!
//! ```text
//!  0       2       4    5    6       8            14       18           24       28
//!  +-------+-------+----+----+-------+------------+--------+------------+--------+
//!  | htype | ptype |hlen|plen| oper  | sender MAC | sndr IP| target MAC | tgt IP |
//!  +-------+-------+----+----+-------+------------+--------+------------+--------+
//! ```
//!
//! [`Packet::new_checked`] only checks the length; [`Repr::parse`] rejects
//! other hardware/protocol types as `Unsupported`. Unknown operations parse
//! (as [`Operation::Unknown`]) and the stack ignores them.

use std::net::Ipv4Addr;

use super::ethernet::Address;
use super::{Error, Result, get, set};

mod field {
    use core::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// Hardware type for Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;
/// Protocol type for IPv4 (its EtherType).
pub const PTYPE_IPV4: u16 = 0x0800;

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// 1
    Request,
    /// 2
    Reply,
    /// Anything else.
    Unknown(u16),
}

impl From<u16> for Operation {
    fn from(v: u16) -> Self {
        match v {
            1 => Operation::Request,
            2 => Operation::Reply,
            other => Operation::Unknown(other),
        }
    }
}

impl From<Operation> for u16 {
    fn from(v: Operation) -> u16 {
        match v {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Unknown(other) => other,
        }
    }
}

view! {
    /// A view of an ARP packet.
    pub struct Packet;
    fn check_len = PACKET_LEN;
    /// Wrap and check: ≥ 28 bytes.
    fn new_checked;
    /// Hardware type.
    hardware_type: u16 = be16(field::HTYPE);
    /// Protocol type.
    protocol_type: u16 = be16(field::PTYPE);
    /// Hardware address length.
    hardware_len: u8 = byte(field::HLEN);
    /// Protocol address length.
    protocol_len: u8 = byte(field::PLEN);
    /// Sender hardware address.
    source_hardware_addr / set_source_hardware_addr: Address = mac(field::SHA);
    /// Sender protocol address.
    source_protocol_addr / set_source_protocol_addr: Ipv4Addr = ipv4(field::SPA);
    /// Target hardware address.
    target_hardware_addr / set_target_hardware_addr: Address = mac(field::THA);
    /// Target protocol address.
    target_protocol_addr / set_target_protocol_addr: Ipv4Addr = ipv4(field::TPA);
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Operation.
    pub fn operation(&self) -> Operation {
        get::be16(self.buffer.as_ref(), field::OPER).into()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set hardware type, protocol type and both lengths for Ethernet/IPv4.
    pub fn set_ethernet_ipv4(&mut self) {
        let b = self.buffer.as_mut();
        set::be16(b, field::HTYPE, HTYPE_ETHERNET);
        set::be16(b, field::PTYPE, PTYPE_IPV4);
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
    }
    /// Set the operation.
    pub fn set_operation(&mut self, op: Operation) {
        set::be16(self.buffer.as_mut(), field::OPER, op.into());
    }
}

/// High-level ARP packet (Ethernet hardware, IPv4 protocol only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Operation.
    pub operation: Operation,
    /// Sender MAC.
    pub source_hardware_addr: Address,
    /// Sender IP.
    pub source_protocol_addr: Ipv4Addr,
    /// Target MAC.
    pub target_hardware_addr: Address,
    /// Target IP.
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    /// Parse: hardware type 1 / len 6, protocol 0x0800 / len 4, else `Unsupported`.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.hardware_type() != HTYPE_ETHERNET
            || packet.protocol_type() != PTYPE_IPV4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(Error::Unsupported);
        }
        Ok(Repr {
            operation: packet.operation(),
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }
    /// 28.
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }
    /// Write all 28 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_ethernet_ipv4();
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(self.source_hardware_addr);
        packet.set_source_protocol_addr(self.source_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ARP request "who has 10.0.2.2? tell 10.0.2.15" from a QEMU guest.
    #[rustfmt::skip]
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x0a, 0x00, 0x02, 0x0f,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x02, 0x02,
    ];

    /// The reply "10.0.2.2 is at 52:55:0a:00:02:02" (slirp's gateway MAC).
    #[rustfmt::skip]
    const REPLY: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02,
        0x52, 0x55, 0x0a, 0x00, 0x02, 0x02, 0x0a, 0x00, 0x02, 0x02,
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x0a, 0x00, 0x02, 0x0f,
    ];

    const GUEST_MAC: Address = Address([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    const GW_MAC: Address = Address([0x52, 0x55, 0x0a, 0x00, 0x02, 0x02]);
    const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
    const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

    fn request() -> Repr {
        Repr {
            operation: Operation::Request,
            source_hardware_addr: GUEST_MAC,
            source_protocol_addr: GUEST_IP,
            target_hardware_addr: Address([0; 6]),
            target_protocol_addr: GW_IP,
        }
    }

    fn reply() -> Repr {
        Repr {
            operation: Operation::Reply,
            source_hardware_addr: GW_MAC,
            source_protocol_addr: GW_IP,
            target_hardware_addr: GUEST_MAC,
            target_protocol_addr: GUEST_IP,
        }
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.hardware_type(), 1);
        assert_eq!(p.protocol_type(), 0x0800);
        assert_eq!(p.hardware_len(), 6);
        assert_eq!(p.protocol_len(), 4);
        assert_eq!(p.operation(), Operation::Request);
        assert_eq!(p.source_hardware_addr(), GUEST_MAC);
        assert_eq!(p.source_protocol_addr(), GUEST_IP);
        assert_eq!(p.target_hardware_addr(), Address([0; 6]));
        assert_eq!(p.target_protocol_addr(), GW_IP);
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 28];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_ethernet_ipv4();
        p.set_operation(Operation::Reply);
        p.set_source_hardware_addr(GW_MAC);
        p.set_source_protocol_addr(GW_IP);
        p.set_target_hardware_addr(GUEST_MAC);
        p.set_target_protocol_addr(GUEST_IP);
        assert_eq!(buf, REPLY);
    }

    #[test]
    fn parse_and_emit() {
        assert_eq!(
            Repr::parse(&Packet::new_checked(&REQUEST[..]).unwrap()),
            Ok(request())
        );
        assert_eq!(
            Repr::parse(&Packet::new_checked(&REPLY[..]).unwrap()),
            Ok(reply())
        );
        for (repr, bytes) in [(request(), REQUEST), (reply(), REPLY)] {
            let mut buf = [0xa5u8; PACKET_LEN];
            assert_eq!(repr.buffer_len(), PACKET_LEN);
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
            assert_eq!(buf, bytes);
        }
    }

    #[test]
    fn operations() {
        for (v, op) in [
            (1, Operation::Request),
            (2, Operation::Reply),
            (9, Operation::Unknown(9)),
        ] {
            assert_eq!(Operation::from(v), op);
            assert_eq!(u16::from(op), v);
        }
    }

    #[test]
    fn truncated() {
        for len in 0..PACKET_LEN {
            assert_eq!(
                Packet::new_checked(&REQUEST[..len]).unwrap_err(),
                Error::Truncated
            );
            assert_eq!(
                Repr::parse(&Packet::new_unchecked(&REQUEST[..len])),
                Err(Error::Truncated)
            );
        }
        // Trailing bytes (Ethernet padding) are fine.
        let mut long = [0u8; 46];
        long[..28].copy_from_slice(&REQUEST);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&long[..]).unwrap()),
            Ok(request())
        );
    }

    #[test]
    fn unsupported_types() {
        for (i, v) in [(1, 0x06), (3, 0xdd), (4, 8), (5, 16)] {
            let mut b = REQUEST;
            b[i] = v;
            assert_eq!(
                Repr::parse(&Packet::new_checked(&b[..]).unwrap()),
                Err(Error::Unsupported)
            );
        }
    }
}
