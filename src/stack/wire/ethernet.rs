//! Ethernet II frames.
//!
//! # Theory of operation
//!
//! ```text
//!  0                6               12        14
//!  +----------------+----------------+---------+-----------------
//!  | destination    | source         | type    | payload ...
//!  +----------------+----------------+---------+-----------------
//! ```
//!
//! No 802.1Q tags and no FCS: virtio-net and tap hand us untagged frames
//! without the trailing CRC. An EtherType below 0x0600 is an 802.3 length;
//! it parses as [`EtherType::Unknown`] and the stack drops it.

use super::{Result, get, set};

mod field {
    use core::ops::{Range, RangeFrom};
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: RangeFrom<usize> = 14..;
}

/// Length of the Ethernet header.
pub const HEADER_LEN: usize = 14;

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Address(pub [u8; 6]);

impl Address {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: Address = Address([0xff; 6]);
    /// True for the broadcast address.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }
    /// True for group (multicast or broadcast) addresses.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
    /// True for unicast addresses.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }
}

/// EtherType.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtherType {
    /// 0x0800
    Ipv4,
    /// 0x0806
    Arp,
    /// 0x86DD
    Ipv6,
    /// Anything else.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            other => EtherType::Unknown(other),
        }
    }
}
impl From<EtherType> for u16 {
    fn from(v: EtherType) -> u16 {
        match v {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(other) => other,
        }
    }
}

view! {
    /// A view of an Ethernet frame.
    pub struct Frame;
    fn check_len = HEADER_LEN;
    /// Wrap and check the buffer holds a full header.
    fn new_checked;
    /// Destination address.
    dst_addr / set_dst_addr: Address = mac(field::DST);
    /// Source address.
    src_addr / set_src_addr: Address = mac(field::SRC);
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// EtherType.
    pub fn ethertype(&self) -> EtherType {
        get::be16(self.buffer.as_ref(), field::ETHERTYPE).into()
    }
    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Mutable payload.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
    /// Set the EtherType.
    pub fn set_ethertype(&mut self, t: EtherType) {
        set::be16(self.buffer.as_mut(), field::ETHERTYPE, t.into());
    }
}

/// High-level Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source.
    pub src_addr: Address,
    /// Destination.
    pub dst_addr: Address,
    /// EtherType.
    pub ethertype: EtherType,
}

impl Repr {
    /// Parse a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<Repr> {
        // Re-checked so an unchecked frame cannot make the getters panic.
        frame.check_len()?;
        Ok(Repr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }
    /// Header length (14).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }
    /// Write the header into the first 14 bytes of `frame`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header of a QEMU guest's (52:54:00:12:34:56) ARP broadcast, followed by
    /// the 28-byte ARP request for 10.0.2.2 and 18 bytes of padding to the
    /// 60-byte Ethernet minimum.
    #[rustfmt::skip]
    const FRAME: [u8; 60] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56,
        0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x0a, 0x00, 0x02, 0x0f,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x02, 0x02,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    const GUEST: Address = Address([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    fn repr() -> Repr {
        Repr {
            src_addr: GUEST,
            dst_addr: Address::BROADCAST,
            ethertype: EtherType::Arp,
        }
    }

    #[test]
    fn deconstruct() {
        let f = Frame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(f.dst_addr(), Address::BROADCAST);
        assert!(f.dst_addr().is_broadcast() && f.dst_addr().is_multicast());
        assert_eq!(f.src_addr(), GUEST);
        assert!(f.src_addr().is_unicast());
        assert_eq!(f.ethertype(), EtherType::Arp);
        assert_eq!(f.payload(), &FRAME[14..]);
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 60];
        let mut f = Frame::new_unchecked(&mut buf[..]);
        f.set_dst_addr(Address::BROADCAST);
        f.set_src_addr(GUEST);
        f.set_ethertype(EtherType::Arp);
        f.payload_mut().copy_from_slice(&FRAME[14..]);
        assert_eq!(buf, FRAME);
    }

    #[test]
    fn parse_emit_round_trip() {
        let f = Frame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(Repr::parse(&f).unwrap(), repr());
        let mut buf = [0xa5u8; HEADER_LEN];
        repr().emit(&mut Frame::new_unchecked(&mut buf[..]));
        assert_eq!(buf[..], FRAME[..HEADER_LEN]);
        assert_eq!(repr().buffer_len(), HEADER_LEN);
    }

    #[test]
    fn ethertypes() {
        for (v, t) in [
            (0x0800, EtherType::Ipv4),
            (0x0806, EtherType::Arp),
            (0x86dd, EtherType::Ipv6),
            (0x05dc, EtherType::Unknown(0x05dc)),
        ] {
            assert_eq!(EtherType::from(v), t);
            assert_eq!(u16::from(t), v);
        }
    }

    #[test]
    fn truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Frame::new_checked(&FRAME[..len]).unwrap_err(),
                crate::stack::wire::Error::Truncated
            );
            assert!(Repr::parse(&Frame::new_unchecked(&FRAME[..len])).is_err());
        }
        let f = Frame::new_checked(&FRAME[..HEADER_LEN]).unwrap();
        assert!(f.payload().is_empty());
    }
}
