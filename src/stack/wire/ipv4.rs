//! IPv4 (RFC 791) packets.

use std::net::Ipv4Addr;

use super::Result;

/// Minimum (and emitted) header length.
pub const HEADER_LEN: usize = 20;

/// A view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }
    /// Wrap and check: buffer ≥ 20, version 4, IHL ≥ 5 and header fits,
    /// total length ≥ header length and ≤ buffer length (a longer buffer,
    /// e.g. Ethernet padding, is fine: `payload()` stops at total length).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let _ = &buffer;
        todo!()
    }
    /// Version field.
    pub fn version(&self) -> u8 {
        todo!()
    }
    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        todo!()
    }
    /// Total length field.
    pub fn total_len(&self) -> u16 {
        todo!()
    }
    /// Identification.
    pub fn ident(&self) -> u16 {
        todo!()
    }
    /// DF flag.
    pub fn dont_frag(&self) -> bool {
        todo!()
    }
    /// MF flag.
    pub fn more_frags(&self) -> bool {
        todo!()
    }
    /// Fragment offset in bytes (field × 8).
    pub fn frag_offset(&self) -> u16 {
        todo!()
    }
    /// True if MF is set or the offset is non-zero.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    /// TTL.
    pub fn hop_limit(&self) -> u8 {
        todo!()
    }
    /// Protocol.
    pub fn next_header(&self) -> u8 {
        todo!()
    }
    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        todo!()
    }
    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        todo!()
    }
    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        todo!()
    }
    /// True if the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        todo!()
    }
    /// The header bytes (including options).
    pub fn header(&self) -> &[u8] {
        todo!()
    }
    /// Payload: from header end to total length.
    pub fn payload(&self) -> &[u8] {
        todo!()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set identification.
    pub fn set_ident(&mut self, v: u16) {
        let _ = v;
        todo!()
    }
    /// Set DF, MF and the fragment offset (bytes, a multiple of 8).
    pub fn set_frag(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let _ = (dont_frag, more_frags, offset);
        todo!()
    }
    /// Set total length.
    pub fn set_total_len(&mut self, v: u16) {
        let _ = v;
        todo!()
    }
    /// Recompute and store the header checksum.
    pub fn fill_checksum(&mut self) {
        todo!()
    }
    /// Mutable payload (header end to total length).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        todo!()
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
    /// Parse a checked packet: verifies the header checksum. Fragments parse
    /// fine (the caller checks `is_fragment`); `payload_len` is this packet's.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        let _ = packet;
        todo!()
    }
    /// Emitted header length (20).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }
    /// Write a 20-byte header: IHL 5, TOS 0, ident 0, DF clear, offset 0,
    /// total length = 20 + payload_len, checksum filled.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let _ = packet;
        todo!()
    }
}
