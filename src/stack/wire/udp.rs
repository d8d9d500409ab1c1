//! UDP (RFC 768) datagrams.

use std::net::IpAddr;

use super::Result;

/// Header length.
pub const HEADER_LEN: usize = 8;

/// A view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }
    /// Wrap and check: buffer ≥ 8, length field ≥ 8 and ≤ buffer length.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let _ = &buffer;
        todo!()
    }
    /// Source port.
    pub fn src_port(&self) -> u16 {
        todo!()
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        todo!()
    }
    /// Length field.
    pub fn len(&self) -> u16 {
        todo!()
    }
    /// True if the length field is 8 (no payload).
    pub fn is_empty(&self) -> bool {
        self.len() == 8
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        todo!()
    }
    /// Payload up to the length field.
    pub fn payload(&self) -> &[u8] {
        todo!()
    }
    /// True if the checksum verifies (IPv4: a zero field means "none" and verifies).
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        let _ = (src, dst);
        todo!()
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
        let _ = (packet, src, dst, verify);
        todo!()
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
        let _ = (packet, src, dst, payload);
        todo!()
    }
}
