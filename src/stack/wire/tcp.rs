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
        let len = self.emit_unsummed(packet);
        // Checksum exactly what this segment owns, whatever the buffer's length.
        let seg = &packet.buffer.as_ref()[..len];
        let c = checksum::finish(checksum::sum(seg, pseudo(src, dst, len)));
        packet.set_checksum(c);
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
        let len = self.emit_unsummed(packet);
        packet.set_checksum(partial_checksum(src, dst, len));
    }
    /// Header, options and payload with a zero checksum; returns the length.
    fn emit_unsummed<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> usize {
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
        packet.payload_mut()[..self.payload.len()].copy_from_slice(self.payload);
        len
    }
}

/// The value of a partial (`CHECKSUM_PARTIAL`) TCP checksum field for a
/// segment of `len` bytes: the pseudo-header sum, folded, not complemented.
pub fn partial_checksum(src: IpAddr, dst: IpAddr, len: usize) -> u16 {
    // Cannot fail: `checksum::sum` folds to at most 0xffff.
    u16::try_from(pseudo(src, dst, len)).unwrap_or(0xffff)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const GUEST: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15));
    const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34));

    /// A Linux guest's SYN, 10.0.2.15:45678 -> 93.184.216.34:80, window 64240,
    /// options MSS 1460, SACK-permitted, timestamps, NOP, window scale 7.
    #[rustfmt::skip]
    const SYN: [u8; 40] = [
        0xb2, 0x6e, 0x00, 0x50, 0x5e, 0x8a, 0x1b, 0x3c, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0,
        0x06, 0x73, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x9a, 0x0c, 0x3e, 0x21,
        0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];

    /// The stack's SYN-ACK: MSS 1460 | NOP NOP SACK-permitted | NOP WS 7.
    #[rustfmt::skip]
    const SYN_ACK: [u8; 32] = [
        0x00, 0x50, 0xb2, 0x6e, 0x0b, 0xad, 0xca, 0xfe, 0x5e, 0x8a, 0x1b, 0x3d, 0x80, 0x12, 0xff, 0xff,
        0x29, 0xe6, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x01, 0x01, 0x04, 0x02, 0x01, 0x03, 0x03, 0x07,
    ];

    /// The guest's first data segment: ACK|PSH, an HTTP request.
    #[rustfmt::skip]
    const ACK_DATA: [u8; 57] = [
        0xb2, 0x6e, 0x00, 0x50, 0x5e, 0x8a, 0x1b, 0x3d, 0x0b, 0xad, 0xca, 0xff, 0x50, 0x18, 0x01, 0xf6,
        0x1f, 0xf0, 0x00, 0x00, 0x47, 0x45, 0x54, 0x20, 0x2f, 0x20, 0x48, 0x54, 0x54, 0x50, 0x2f, 0x31,
        0x2e, 0x31, 0x0d, 0x0a, 0x48, 0x6f, 0x73, 0x74, 0x3a, 0x20, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c,
        0x65, 0x2e, 0x63, 0x6f, 0x6d, 0x0d, 0x0a, 0x0d, 0x0a,
    ];

    const HTTP_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

    const SYN_FLAGS: Flags = Flags {
        syn: true,
        fin: false,
        rst: false,
        psh: false,
    };

    fn syn_repr() -> Repr<'static> {
        Repr {
            src_port: 45678,
            dst_port: 80,
            flags: SYN_FLAGS,
            seq_number: SeqNumber(0x5e8a_1b3c),
            ack_number: None,
            window_len: 64240,
            max_seg_size: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            payload: &[],
        }
    }

    fn syn_ack_repr() -> Repr<'static> {
        Repr {
            src_port: 80,
            dst_port: 45678,
            flags: SYN_FLAGS,
            seq_number: SeqNumber(0x0bad_cafe),
            ack_number: Some(SeqNumber(0x5e8a_1b3d)),
            window_len: 65535,
            max_seg_size: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            payload: &[],
        }
    }

    fn data_repr() -> Repr<'static> {
        Repr {
            src_port: 45678,
            dst_port: 80,
            flags: Flags {
                psh: true,
                ..Flags::default()
            },
            seq_number: SeqNumber(0x5e8a_1b3d),
            ack_number: Some(SeqNumber(0x0bad_caff)),
            window_len: 502,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            payload: HTTP_GET,
        }
    }

    /// A SYN from the guest carrying `opts` (padded with EOL), checksum filled.
    fn syn_with_options(opts: &[u8]) -> Vec<u8> {
        let hlen = 20 + opts.len().div_ceil(4) * 4;
        let mut b = vec![0u8; hlen];
        b[..20].copy_from_slice(&SYN[..20]);
        b[20..20 + opts.len()].copy_from_slice(opts);
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_header_len(hlen);
        p.fill_checksum(GUEST, SERVER);
        b
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&SYN[..]).unwrap();
        assert_eq!(p.src_port(), 45678);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq_number(), SeqNumber(0x5e8a_1b3c));
        assert_eq!(p.ack_number(), SeqNumber(0));
        assert_eq!(p.header_len(), 40);
        assert!(!p.ack());
        assert_eq!(p.flags(), SYN_FLAGS);
        assert_eq!(p.window_len(), 64240);
        assert_eq!(p.checksum(), 0x0673);
        assert_eq!(p.urgent_at(), 0);
        assert_eq!(p.options(), &SYN[20..]);
        assert!(p.payload().is_empty());
        assert!(p.verify_checksum(GUEST, SERVER));
        assert!(!p.verify_checksum(SERVER, Ipv4Addr::new(10, 0, 2, 16).into()));

        let p = Packet::new_checked(&ACK_DATA[..]).unwrap();
        assert!(p.ack());
        assert!(p.flags().psh && !p.flags().syn);
        assert_eq!(p.payload(), HTTP_GET);
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 57];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(45678);
        p.set_dst_port(80);
        p.set_seq_number(SeqNumber(0x5e8a_1b3d));
        p.set_ack_number(SeqNumber(0x0bad_caff));
        p.set_header_len(20);
        p.set_flags(
            Flags {
                psh: true,
                ..Flags::default()
            },
            true,
        );
        p.set_window_len(502);
        p.set_urgent_at(0);
        p.payload_mut().copy_from_slice(HTTP_GET);
        p.fill_checksum(GUEST, SERVER);
        assert_eq!(buf, ACK_DATA);
    }

    #[test]
    fn parse() {
        let p = Packet::new_checked(&SYN[..]).unwrap();
        assert_eq!(Repr::parse(&p, GUEST, SERVER, true), Ok(syn_repr()));
        let p = Packet::new_checked(&SYN_ACK[..]).unwrap();
        assert_eq!(Repr::parse(&p, SERVER, GUEST, true), Ok(syn_ack_repr()));
        let p = Packet::new_checked(&ACK_DATA[..]).unwrap();
        let r = Repr::parse(&p, GUEST, SERVER, true).unwrap();
        assert_eq!(r, data_repr());
        assert_eq!(r.segment_len(), HTTP_GET.len());
        assert_eq!(syn_repr().segment_len(), 1);
    }

    #[test]
    fn emit() {
        for (repr, bytes, src, dst) in [
            (syn_ack_repr(), &SYN_ACK[..], SERVER, GUEST),
            (data_repr(), &ACK_DATA[..], GUEST, SERVER),
        ] {
            assert_eq!(repr.buffer_len(), bytes.len());
            let mut buf = vec![0xa5u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]), src, dst);
            assert_eq!(buf, bytes);
        }
    }

    #[test]
    fn emit_parse_round_trip_all_option_sets() {
        for bits in 0..8u8 {
            let repr = Repr {
                max_seg_size: (bits & 1 != 0).then_some(536),
                sack_permitted: bits & 2 != 0,
                window_scale: (bits & 4 != 0).then_some(14),
                flags: Flags {
                    fin: true,
                    ..Flags::default()
                },
                ..data_repr()
            };
            assert_eq!(repr.header_len(), 20 + 4 * bits.count_ones() as usize);
            let mut buf = vec![0xa5u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]), GUEST, SERVER);
            let p = Packet::new_checked(&buf[..]).unwrap();
            assert_eq!(p.urgent_at(), 0);
            assert_eq!(Repr::parse(&p, GUEST, SERVER, true), Ok(repr));
        }
    }

    #[test]
    fn window_scale_clamped() {
        let b = syn_with_options(&[3, 3, 15]);
        let r = Repr::parse(&Packet::new_checked(&b[..]).unwrap(), GUEST, SERVER, true).unwrap();
        assert_eq!(r.window_scale, Some(14));
        // Emitting a larger shift also clamps.
        let repr = Repr {
            window_scale: Some(200),
            ..syn_repr()
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]), GUEST, SERVER);
        let r = Repr::parse(&Packet::new_checked(&buf[..]).unwrap(), GUEST, SERVER, true).unwrap();
        assert_eq!(r.window_scale, Some(14));
    }

    #[test]
    fn options_walk() {
        let parse = |opts: &[u8]| {
            let b = syn_with_options(opts);
            Repr::parse(&Packet::new_checked(&b[..]).unwrap(), GUEST, SERVER, true)
                .map(|r| (r.max_seg_size, r.window_scale, r.sack_permitted))
        };
        // Unknown kinds (TFO cookie, SACK block) and timestamps are skipped.
        assert_eq!(
            parse(&[
                34, 4, 1, 2, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 2, 4, 2,
                0
            ]),
            Ok((Some(512), None, false))
        );
        // Anything after EOL is ignored, even garbage.
        assert_eq!(parse(&[4, 2, 0, 2, 99, 1]), Ok((None, None, true)));
        // Only NOPs.
        assert_eq!(parse(&[1, 1, 1, 1]), Ok((None, None, false)));
        // Length below 2, past the end, or missing.
        assert_eq!(parse(&[1, 1, 30, 0]), Err(Error::Malformed));
        assert_eq!(parse(&[1, 1, 30, 1]), Err(Error::Malformed));
        assert_eq!(parse(&[1, 1, 30, 3]), Err(Error::Malformed));
        assert_eq!(parse(&[1, 1, 1, 30]), Err(Error::Malformed));
        assert_eq!(parse(&[8, 10, 0, 0, 0, 0, 0, 0]), Err(Error::Malformed));
        // Known kinds with the wrong length.
        assert_eq!(parse(&[2, 3, 5, 1]), Err(Error::Malformed));
        assert_eq!(parse(&[2, 2, 1, 1]), Err(Error::Malformed));
        assert_eq!(parse(&[3, 4, 7, 0]), Err(Error::Malformed));
        assert_eq!(parse(&[4, 3, 0, 0]), Err(Error::Malformed));
    }

    #[test]
    fn bad_checksum() {
        let mut b = ACK_DATA;
        b[30] ^= 0x01;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(!p.verify_checksum(GUEST, SERVER));
        assert_eq!(Repr::parse(&p, GUEST, SERVER, true), Err(Error::Checksum));
        assert!(Repr::parse(&p, GUEST, SERVER, false).is_ok());
    }

    #[test]
    fn truncated() {
        for len in 0..SYN.len() {
            assert_eq!(
                Packet::new_checked(&SYN[..len]).unwrap_err(),
                Error::Truncated
            );
            assert_eq!(
                Repr::parse(&Packet::new_unchecked(&SYN[..len]), GUEST, SERVER, false),
                Err(Error::Truncated)
            );
        }
        // No length field: a cut inside the payload still parses as a view,
        // and only the checksum catches it.
        for len in 20..ACK_DATA.len() {
            let p = Packet::new_checked(&ACK_DATA[..len]).unwrap();
            assert_eq!(p.payload().len(), len - 20);
            assert_eq!(
                Repr::parse(&p, GUEST, SERVER, true),
                Err(Error::Checksum),
                "len {len}"
            );
        }
    }

    #[test]
    fn malformed() {
        let with = |f: &dyn Fn(&mut [u8])| {
            let mut b = ACK_DATA;
            f(&mut b);
            Packet::new_unchecked(&mut b[..]).fill_checksum(GUEST, SERVER);
            (
                Packet::new_checked(&b[..]).map(|_| ()),
                Repr::parse(&Packet::new_unchecked(&b[..]), GUEST, SERVER, true).map(|_| ()),
            )
        };
        // Data offset 4 and 0.
        assert_eq!(
            with(&|b| b[12] = 0x40),
            (Err(Error::Malformed), Err(Error::Malformed))
        );
        assert_eq!(
            with(&|b| b[12] = 0x00),
            (Err(Error::Malformed), Err(Error::Malformed))
        );
        // Data offset 15 (60 bytes) in a 57-byte segment.
        assert_eq!(
            with(&|b| b[12] = 0xf0),
            (Err(Error::Truncated), Err(Error::Truncated))
        );
        // Port 0.
        assert_eq!(with(&|b| b[0..2].fill(0)), (Ok(()), Err(Error::Malformed)));
        assert_eq!(with(&|b| b[2..4].fill(0)), (Ok(()), Err(Error::Malformed)));
        // SYN with FIN or RST.
        assert_eq!(with(&|b| b[13] = 0x03), (Ok(()), Err(Error::Malformed)));
        assert_eq!(with(&|b| b[13] = 0x06), (Ok(()), Err(Error::Malformed)));
        // FIN|RST|ACK and the unused URG/ECE/CWR bits are accepted.
        assert_eq!(with(&|b| b[13] = 0xf5), (Ok(()), Ok(())));
    }

    #[test]
    fn ipv6_checksum() {
        let s: IpAddr = "fd00::15".parse().unwrap();
        let d: IpAddr = "2606:2800:220:1::1".parse().unwrap();
        let repr = data_repr();
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]), s, d);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&p, s, d, true), Ok(repr));
        assert_eq!(Repr::parse(&p, GUEST, SERVER, true), Err(Error::Checksum));
    }

    #[test]
    fn partial_checksum_completes_to_the_full_one() {
        let payload: Vec<u8> = (0..3001u32).map(|i| (i * 13).to_le_bytes()[0]).collect();
        let repr = Repr {
            src_port: 80,
            dst_port: 45678,
            flags: Flags {
                psh: true,
                ..Flags::default()
            },
            seq_number: SeqNumber(0x1234_5678),
            ack_number: Some(SeqNumber(99)),
            window_len: 1000,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            payload: &payload,
        };
        let mut full = vec![0xa5u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut full[..]), SERVER, GUEST);
        let mut part = vec![0x5au8; repr.buffer_len()];
        repr.emit_partial(&mut Packet::new_unchecked(&mut part[..]), SERVER, GUEST);
        assert_eq!(full[..16], part[..16]);
        assert_eq!(full[18..], part[18..]);
        let field = Packet::new_unchecked(&part[..]).checksum();
        assert_eq!(field, partial_checksum(SERVER, GUEST, part.len()));
        // What Linux's skb_checksum_help does with CHECKSUM_PARTIAL: sum from
        // csum_start to the end (the field included), complement, store.
        let done = checksum::finish(checksum::sum(&part, 0));
        assert_eq!(done, Packet::new_unchecked(&full[..]).checksum());
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
