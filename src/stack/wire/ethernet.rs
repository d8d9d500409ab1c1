//! Ethernet II frames.

use super::Result;

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
        let _ = v;
        todo!()
    }
}
impl From<EtherType> for u16 {
    fn from(v: EtherType) -> u16 {
        let _ = v;
        todo!()
    }
}

/// A view of an Ethernet frame.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wrap without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Frame { buffer }
    }
    /// Wrap and check the buffer holds a full header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let _ = &buffer;
        todo!()
    }
    /// Destination address.
    pub fn dst_addr(&self) -> Address {
        todo!()
    }
    /// Source address.
    pub fn src_addr(&self) -> Address {
        todo!()
    }
    /// EtherType.
    pub fn ethertype(&self) -> EtherType {
        todo!()
    }
    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        todo!()
    }
    /// The inner buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Mutable payload.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        todo!()
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
        let _ = frame;
        todo!()
    }
    /// Header length (14).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }
    /// Write the header into the first 14 bytes of `frame`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        let _ = frame;
        todo!()
    }
}
