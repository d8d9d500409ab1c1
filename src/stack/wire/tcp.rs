//! TCP (RFC 9293) segments.
//!
//! # Theory of operation
//!
//! ```text
//!  0               2               4                               8
//!  +---------------+---------------+-------------------------------+
//!  | source port   | dest port     | sequence number               |
//!  +---------------+---------------+-------------------------------+
//!  | acknowledgment number         |off|rsv| flags | window        |
//!  +-------------------------------+---------------+---------------+
//!  | checksum      | urgent ptr    | options (off*4 - 20) ... | payload
//!  +---------------+---------------+--------------------------+--------
//!   12..14 as a u16: data offset << 12 | CWR ECE URG ACK PSH RST SYN FIN
//! ```
//!
//! A segment has no length field: the view's buffer must be exactly the IP
//! payload. [`Packet::new_checked`] establishes `20 <= header_len() <=
//! buffer.len()`. [`Repr::parse`] re-checks that, verifies the checksum
//! (pseudo header + whole buffer), rejects port 0 and SYN with FIN or RST, and
//! walks the options with bounds checks (RFC 9293 §3.2): EOL ends the list,
//! NOP is one byte, every other option carries a length >= 2 that must fit;
//! MSS (2), window scale (3, clamped to 14 per RFC 7323 §2.3) and
//! SACK-permitted (4) are kept; timestamps (8) and unknown kinds are skipped.
//! Options are reported whatever the flags: honouring MSS and window scale
//! only on a SYN (RFC 9293 §3.7.1, RFC 7323 §2.2) is the connection's job.
//!
//! [`Repr::emit`] writes each option 4-byte aligned, the way Linux does:
//!
//! ```text
//!  02 04 mss mss | 01 01 04 02 | 01 03 03 ws      (each present one, in this order)
//! ```
//!
//! The urgent pointer is always 0 (the stack never sends urgent data) and
//! ACK is set iff `ack_number` is `Some`.

use core::cmp::Ordering;
use core::ops::{Add, Sub};
use std::net::IpAddr;

use super::checksum;
use super::{Error, Result, check_declared, check_min, get, ip_proto, set};

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    pub const OFF_FLAGS: Range<usize> = 12..14;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Bits of the data-offset/flags word (bytes 12..14).
mod flag {
    pub const FIN: u16 = 0x001;
    pub const SYN: u16 = 0x002;
    pub const RST: u16 = 0x004;
    pub const PSH: u16 = 0x008;
    pub const ACK: u16 = 0x010;
}

/// Option kinds (IANA "TCP Option Kind Numbers").
mod opt {
    pub const EOL: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WS: u8 = 3;
    pub const SACK_PERMITTED: u8 = 4;
}

/// Largest window shift (RFC 7323 §2.3).
pub const MAX_WINDOW_SCALE: u8 = 14;

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

view! {
    /// A view of a TCP segment.
    pub struct Packet;
    /// Wrap and check: buffer ≥ 20, data offset ≥ 5 and header fits.
    fn new_checked;
    /// Source port.
    src_port / set_src_port: u16 = be16(field::SRC_PORT);
    /// Destination port.
    dst_port / set_dst_port: u16 = be16(field::DST_PORT);
    /// Window field (unscaled).
    window_len / set_window_len: u16 = be16(field::WINDOW);
    /// Checksum field.
    checksum / set_checksum: u16 = be16(field::CHECKSUM);
    /// Urgent pointer field.
    urgent_at / set_urgent_at: u16 = be16(field::URGENT);
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// The checks of [`Packet::new_checked`]: `Truncated` if the buffer is
    /// shorter than 20 bytes or than the data offset says, `Malformed` if the
    /// data offset is below 5.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        check_min(len, HEADER_LEN)?;
        check_declared(self.header_len(), HEADER_LEN, len)
    }
    fn off_flags(&self) -> u16 {
        get::be16(self.buffer.as_ref(), field::OFF_FLAGS)
    }
    /// Sequence number.
    pub fn seq_number(&self) -> SeqNumber {
        SeqNumber(get::be32(self.buffer.as_ref(), field::SEQ_NUM))
    }
    /// Acknowledgment number field (meaningful when ACK is set).
    pub fn ack_number(&self) -> SeqNumber {
        SeqNumber(get::be32(self.buffer.as_ref(), field::ACK_NUM))
    }
    /// Header length in bytes.
    pub fn header_len(&self) -> usize {
        usize::from(self.off_flags() >> 12) * 4
    }
    /// ACK flag.
    pub fn ack(&self) -> bool {
        self.off_flags() & flag::ACK != 0
    }
    /// SYN, FIN, RST, PSH.
    pub fn flags(&self) -> Flags {
        let w = self.off_flags();
        Flags {
            syn: w & flag::SYN != 0,
            fin: w & flag::FIN != 0,
            rst: w & flag::RST != 0,
            psh: w & flag::PSH != 0,
        }
    }
    /// Options bytes.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
    /// Payload.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
    /// True if the checksum verifies over the whole buffer.
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        let seg = self.buffer.as_ref();
        checksum::finish(checksum::sum(seg, pseudo(src, dst, seg.len()))) == 0
    }
}

/// The TCP pseudo-header sum for a segment of `len` bytes.
fn pseudo(src: IpAddr, dst: IpAddr, len: usize) -> u32 {
    // A segment over 4 GiB cannot exist; saturate rather than truncate.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    checksum::pseudo_header(src, dst, ip_proto::TCP, len)
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_off_flags(&mut self, w: u16) {
        set::be16(self.buffer.as_mut(), field::OFF_FLAGS, w);
    }
    /// Set the sequence number.
    pub fn set_seq_number(&mut self, v: SeqNumber) {
        set::be32(self.buffer.as_mut(), field::SEQ_NUM, v.0);
    }
    /// Set the acknowledgment number field (the ACK flag is separate).
    pub fn set_ack_number(&mut self, v: SeqNumber) {
        set::be32(self.buffer.as_mut(), field::ACK_NUM, v.0);
    }
    /// Set the header length in bytes (a multiple of 4, 20..=60); flags kept.
    pub fn set_header_len(&mut self, len: usize) {
        debug_assert!(
            len % 4 == 0 && (HEADER_LEN..=60).contains(&len),
            "bad TCP header length {len}"
        );
        // Cannot fail for a valid length; an invalid one stores offset 15.
        let off = u16::try_from(len / 4).unwrap_or(0x0f).min(0x0f);
        let w = (self.off_flags() & 0x0fff) | (off << 12);
        self.set_off_flags(w);
    }
    /// Set SYN, FIN, RST, PSH and ACK; clears URG, ECE, CWR and the reserved
    /// bits; the data offset is kept.
    pub fn set_flags(&mut self, flags: Flags, ack: bool) {
        let mut w = self.off_flags() & 0xf000;
        for (on, bit) in [
            (flags.fin, flag::FIN),
            (flags.syn, flag::SYN),
            (flags.rst, flag::RST),
            (flags.psh, flag::PSH),
            (ack, flag::ACK),
        ] {
            if on {
                w |= bit;
            }
        }
        self.set_off_flags(w);
    }
    /// Mutable options bytes (20 to the header length).
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
    /// Mutable payload.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
    /// Compute and store the checksum over the whole buffer.
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        self.set_checksum(0);
        let seg = self.buffer.as_ref();
        let c = checksum::finish(checksum::sum(seg, pseudo(src, dst, seg.len())));
        self.set_checksum(c);
    }
}

/// The options [`Repr`] keeps.
#[derive(Default)]
struct Options {
    mss: Option<u16>,
    window_scale: Option<u8>,
    sack_permitted: bool,
}

/// Walk an option list (RFC 9293 §3.2) with bounds checks.
fn parse_options(mut opts: &[u8]) -> Result<Options> {
    let mut o = Options::default();
    while let Some((&kind, rest)) = opts.split_first() {
        match kind {
            opt::EOL => break,
            opt::NOP => {
                opts = rest;
                continue;
            }
            _ => {}
        }
        // Every other option is kind, length (counting both), body.
        let len = usize::from(*rest.first().ok_or(Error::Malformed)?);
        if len < 2 || len > opts.len() {
            return Err(Error::Malformed);
        }
        let body = &opts[2..len];
        match (kind, body) {
            (opt::MSS, &[hi, lo]) => o.mss = Some(u16::from_be_bytes([hi, lo])),
            (opt::WS, &[shift]) => o.window_scale = Some(shift.min(MAX_WINDOW_SCALE)),
            (opt::SACK_PERMITTED, &[]) => o.sack_permitted = true,
            (opt::MSS | opt::WS | opt::SACK_PERMITTED, _) => return Err(Error::Malformed),
            // Timestamps (8), SACK blocks (5), MD5 (19), TFO (34), ...: skipped.
            _ => {}
        }
        opts = &opts[len..];
    }
    Ok(o)
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
        packet.check_len()?;
        if packet.src_port() == 0 || packet.dst_port() == 0 {
            return Err(Error::Malformed);
        }
        let flags = packet.flags();
        // No legitimate segment opens and resets or closes at once.
        if flags.syn && (flags.fin || flags.rst) {
            return Err(Error::Malformed);
        }
        if verify && !packet.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        let options = parse_options(packet.options())?;
        // Borrow for 'a (the buffer's lifetime), not for the borrow of `packet`.
        let buf: &'a [u8] = <T as AsRef<[u8]>>::as_ref(packet.buffer);
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            flags,
            seq_number: packet.seq_number(),
            ack_number: packet.ack().then(|| packet.ack_number()),
            window_len: packet.window_len(),
            max_seg_size: options.mss,
            window_scale: options.window_scale,
            sack_permitted: options.sack_permitted,
            payload: &buf[packet.header_len()..],
        })
    }
    /// Header length this repr emits (20 + options, padded to 4).
    pub fn header_len(&self) -> usize {
        // Each option is emitted in its own 4-byte slot (see the module doc).
        HEADER_LEN
            + 4 * (usize::from(self.max_seg_size.is_some())
                + usize::from(self.sack_permitted)
                + usize::from(self.window_scale.is_some()))
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
        self.emit_as(packet, src, dst, Payload::Copy, false);
    }
    /// [`Repr::emit`] (`partial` false) or [`Repr::emit_partial`] (true)
    /// into a `packet` whose payload already holds this repr's payload:
    /// the header and checksum are written around it, the payload is not
    /// copied again.
    pub fn emit_around_payload<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: IpAddr,
        dst: IpAddr,
        partial: bool,
    ) {
        self.emit_as(packet, src, dst, Payload::InPlace, partial);
    }
    /// Like [`Repr::emit`], but for a receiver that completes the checksum
    /// (virtio `NEEDS_CSUM`, Linux `CHECKSUM_PARTIAL`): the checksum field
    /// holds the pseudo-header sum over `buffer_len()` bytes, folded and
    /// **not** complemented, which is what Linux's `tcp_v4_send_check`
    /// leaves there and what its TSO and `skb_checksum_help` add the
    /// segment's sum to. The payload is not read again.
    pub fn emit_partial<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: IpAddr,
        dst: IpAddr,
    ) {
        self.emit_as(packet, src, dst, Payload::Copy, true);
    }
    fn emit_as<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: IpAddr,
        dst: IpAddr,
        payload: Payload,
        partial: bool,
    ) {
        let len = self.emit_unsummed(packet, payload);
        if partial {
            packet.set_checksum(partial_checksum(src, dst, len));
            return;
        }
        // Checksum exactly what this segment owns, whatever the buffer's length.
        let seg = &packet.buffer.as_ref()[..len];
        let c = checksum::finish(checksum::sum(seg, pseudo(src, dst, len)));
        packet.set_checksum(c);
    }
    /// Header, options and (unless it is in place) payload with a zero
    /// checksum; returns the length.
    fn emit_unsummed<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        payload: Payload,
    ) -> usize {
        let header_len = self.header_len();
        let len = header_len + self.payload.len();
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number.unwrap_or_default());
        packet.set_header_len(header_len);
        packet.set_flags(self.flags, self.ack_number.is_some());
        packet.set_window_len(self.window_len);
        packet.set_checksum(0);
        packet.set_urgent_at(0);
        let opts = packet.options_mut();
        let mut at = 0;
        if let Some(mss) = self.max_seg_size {
            let [hi, lo] = mss.to_be_bytes();
            opts[at..at + 4].copy_from_slice(&[opt::MSS, 4, hi, lo]);
            at += 4;
        }
        if self.sack_permitted {
            opts[at..at + 4].copy_from_slice(&[opt::NOP, opt::NOP, opt::SACK_PERMITTED, 2]);
            at += 4;
        }
        if let Some(ws) = self.window_scale {
            let ws = ws.min(MAX_WINDOW_SCALE);
            opts[at..at + 4].copy_from_slice(&[opt::NOP, opt::WS, 3, ws]);
        }
        if payload == Payload::Copy {
            packet.payload_mut()[..self.payload.len()].copy_from_slice(self.payload);
        } else {
            debug_assert!(
                packet.payload_mut().starts_with(self.payload),
                "the payload is in place"
            );
        }
        len
    }
}

/// Whether [`Repr`]'s emit copies the payload or finds it in place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Payload {
    Copy,
    InPlace,
}

/// The value of a partial (`CHECKSUM_PARTIAL`) TCP checksum field for a
/// segment of `len` bytes: the pseudo-header sum, folded, not complemented.
pub fn partial_checksum(src: IpAddr, dst: IpAddr, len: usize) -> u16 {
    // Cannot fail: `checksum::sum` folds to at most 0xffff.
    u16::try_from(pseudo(src, dst, len)).unwrap_or(0xffff)
}

#[cfg(test)]
mod tests;

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
