//! TCP (RFC 9293) segments.

use core::cmp::Ordering;
use core::ops::{Add, Sub};
use std::net::IpAddr;

use super::Result;

/// Minimum header length.
pub const HEADER_LEN: usize = 20;

/// A TCP sequence number: arithmetic wraps, comparison is modulo 2^32
/// (RFC 9293 §3.4: `a < b` iff `(a - b) as i32 < 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// The larger of two sequence numbers (modulo 2^32).
    pub fn max(self, rhs: Self) -> Self {
        if self > rhs { self } else { rhs }
    }
    /// The smaller of two sequence numbers (modulo 2^32).
    pub fn min(self, rhs: Self) -> Self {
        if self < rhs { self } else { rhs }
    }
}

impl Add<usize> for SeqNumber {
    type Output = SeqNumber;
    fn add(self, rhs: usize) -> SeqNumber {
        // Truncation is the point: sequence space is modulo 2^32.
        #[allow(clippy::cast_possible_truncation)]
        SeqNumber(self.0.wrapping_add(rhs as u32))
    }
}

impl Sub<usize> for SeqNumber {
    type Output = SeqNumber;
    fn sub(self, rhs: usize) -> SeqNumber {
        #[allow(clippy::cast_possible_truncation)]
        SeqNumber(self.0.wrapping_sub(rhs as u32))
    }
}

impl Sub for SeqNumber {
    type Output = i64;
    /// Signed distance `self - rhs` in sequence space.
    fn sub(self, rhs: SeqNumber) -> i64 {
        // Reinterpreting the wrapped difference as signed is RFC 9293's rule.
        #[allow(clippy::cast_possible_wrap)]
        i64::from(self.0.wrapping_sub(rhs.0) as i32)
    }
}

impl PartialOrd for SeqNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some((*self - *other).cmp(&0))
    }
}

/// TCP control flags the stack reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// SYN
    pub syn: bool,
    /// FIN
    pub fin: bool,
    /// RST
    pub rst: bool,
    /// PSH
    pub psh: bool,
}

/// A view of a TCP segment.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }
    /// Wrap and check: buffer ≥ 20, data offset ≥ 5 and header fits.
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
    /// Sequence number.
    pub fn seq_number(&self) -> SeqNumber {
        todo!()
    }
    /// Acknowledgment number field (meaningful when ACK is set).
    pub fn ack_number(&self) -> SeqNumber {
        todo!()
    }
    /// Header length in bytes.
    pub fn header_len(&self) -> usize {
        todo!()
    }
    /// ACK flag.
    pub fn ack(&self) -> bool {
        todo!()
    }
    /// SYN, FIN, RST, PSH.
    pub fn flags(&self) -> Flags {
        todo!()
    }
    /// Window field (unscaled).
    pub fn window_len(&self) -> u16 {
        todo!()
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        todo!()
    }
    /// Options bytes.
    pub fn options(&self) -> &[u8] {
        todo!()
    }
    /// Payload.
    pub fn payload(&self) -> &[u8] {
        todo!()
    }
    /// True if the checksum verifies over the whole buffer.
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        let _ = (src, dst);
        todo!()
    }
}

/// High-level TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Control flags.
    pub flags: Flags,
    /// Sequence number.
    pub seq_number: SeqNumber,
    /// Acknowledgment number, when ACK is set.
    pub ack_number: Option<SeqNumber>,
    /// Window field (unscaled, as on the wire).
    pub window_len: u16,
    /// MSS option.
    pub max_seg_size: Option<u16>,
    /// Window scale option (shift count; values above 14 are clamped to 14 on parse, RFC 7323 §2.3).
    pub window_scale: Option<u8>,
    /// SACK-permitted option.
    pub sack_permitted: bool,
    /// Payload.
    pub payload: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Parse a checked segment. Verifies the checksum unless `verify` is false
    /// (the checksum was offloaded). Port 0 is `Malformed`. Options are
    /// walked with bounds checks: unknown ones skipped, a bad length is
    /// `Malformed`.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&'a T>,
        src: IpAddr,
        dst: IpAddr,
        verify: bool,
    ) -> Result<Repr<'a>> {
        let _ = (packet, src, dst, verify);
        todo!()
    }
    /// Header length this repr emits (20 + options, padded to 4).
    pub fn header_len(&self) -> usize {
        todo!()
    }
    /// Header plus payload length.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }
    /// Sequence space the segment occupies (payload + SYN + FIN).
    pub fn segment_len(&self) -> usize {
        self.payload.len() + usize::from(self.flags.syn) + usize::from(self.flags.fin)
    }
    /// Write header, options and payload into `packet` (exactly
    /// `buffer_len()` bytes) and fill the checksum.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: IpAddr,
        dst: IpAddr,
    ) {
        let _ = (packet, src, dst);
        todo!()
    }
}

#[cfg(test)]
mod seq_tests {
    use super::SeqNumber;

    #[test]
    fn comparison_wraps() {
        let a = SeqNumber(u32::MAX - 10);
        let b = a + 20usize;
        assert_eq!(b.0, 9);
        assert!(a < b);
        assert_eq!(b - a, 20);
        assert_eq!(a - b, -20);
        assert_eq!(a.max(b), b);
    }
}
