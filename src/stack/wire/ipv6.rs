//! IPv6 (RFC 8200) packets and their extension-header chain.
//!
//! # Theory of operation
//!
//! ```text
//!  0       1       2               4               6       7       8
//!  +---+---+-------+---------------+---------------+-------+-------+
//!  |ver| traffic class | flow label | payload length|next hd|hop lim|
//!  +---+---------------------------+---------------+-------+-------+
//!  | source address (16 bytes)                                     |
//!  | destination address (16 bytes)                                |
//!  +---------------------------------------------------------------+
//!  | extension headers (hop-by-hop, routing, fragment, dest opts)… |
//!  | upper-layer header and data                                   |
//! ```
//!
//! [`Packet::new_checked`] establishes the invariant every getter relies on:
//! `40 + payload_len() <= buffer.len()`. Bytes past it (Ethernet padding)
//! are ignored. A jumbogram (payload length 0 with a hop-by-hop jumbo
//! option, RFC 2675) is `Unsupported`: it never fits a link uipd serves.
//!
//! [`Packet::upper_layer`] walks the extension headers with hard bounds: at
//! most [`MAX_EXT_HEADERS`] headers, every length checked against the
//! payload, hop-by-hop only first (RFC 8200 §4.1). Routing headers with
//! segments left are `Unsupported` (uipd is the final hop, not a router
//! that forwards along a source route), as is every next-header value that
//! is neither a known extension header nor an upper-layer protocol uipd
//! handles (TCP, UDP, ICMPv6). Option contents are not interpreted: an
//! option whose type asks to discard (RFC 8200 §4.2, high bits ≠ 00) is
//! `Unsupported` too, since uipd does not know any option.

use std::net::Ipv6Addr;

use super::{Error, Result, check_min, get, ip_proto};

mod field {
    use core::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

/// Fixed header length.
pub const HEADER_LEN: usize = 40;
/// Length of a fragment extension header.
pub const FRAG_HEADER_LEN: usize = 8;
/// Most extension headers [`Packet::upper_layer`] walks before giving up.
pub const MAX_EXT_HEADERS: usize = 8;
/// Most bytes of extension headers accepted before the upper layer.
pub const MAX_EXT_BYTES: usize = 512;

/// Extension header numbers (RFC 8200 §4).
pub mod ext {
    /// Hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// Routing.
    pub const ROUTING: u8 = 43;
    /// Fragment.
    pub const FRAGMENT: u8 = 44;
    /// No next header.
    pub const NO_NEXT: u8 = 59;
    /// Destination options.
    pub const DEST_OPTS: u8 = 60;
}

view! {
    /// A view of an IPv6 packet.
    pub struct Packet;
    /// Wrap and check (see [`Packet::check_len`]).
    fn new_checked;
    /// Payload length field (extension headers included).
    payload_len / set_payload_len: u16 = be16(field::LENGTH);
    /// Next header field of the fixed header.
    next_header / set_next_header: u8 = byte(field::NXT_HDR);
    /// Hop limit.
    hop_limit / set_hop_limit: u8 = byte(field::HOP_LIMIT);
    /// Source address.
    src_addr / set_src_addr: Ipv6Addr = ipv6(field::SRC);
    /// Destination address.
    dst_addr / set_dst_addr: Ipv6Addr = ipv6(field::DST);
}

/// Where the upper-layer header starts, as found by [`Packet::upper_layer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// Upper-layer protocol (TCP, UDP or ICMPv6).
    pub proto: u8,
    /// Offset of the upper-layer header from the start of the IPv6 payload.
    pub offset: usize,
    /// The fragment header, if the packet is a real fragment (an atomic
    /// fragment, offset 0 without M, RFC 6946, is not reported).
    pub frag: Option<FragInfo>,
}

/// The fields of a fragment header (RFC 8200 §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragInfo {
    /// Fragment offset in bytes.
    pub offset: u16,
    /// More fragments.
    pub more: bool,
    /// Identification.
    pub ident: u32,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// `Truncated` when the buffer is shorter than 40 bytes or than
    /// 40 + payload length; `Malformed` for version != 6; `Unsupported` for a
    /// jumbogram (payload length 0 with a hop-by-hop header).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        check_min(len, HEADER_LEN)?;
        if self.version() != 6 {
            return Err(Error::Malformed);
        }
        if self.payload_len() == 0 && self.next_header() == ext::HOP_BY_HOP {
            return Err(Error::Unsupported);
        }
        if HEADER_LEN + usize::from(self.payload_len()) > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }
    fn word0(&self) -> u32 {
        get::be32(self.buffer.as_ref(), field::VER_TC_FLOW)
    }
    /// Version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }
    /// Traffic class.
    pub fn traffic_class(&self) -> u8 {
        // Cannot fail: masked to 8 bits.
        u8::try_from((self.word0() >> 20) & 0xff).unwrap_or(0)
    }
    /// Flow label.
    pub fn flow_label(&self) -> u32 {
        self.word0() & 0x000f_ffff
    }
    /// The payload: extension headers and upper layer, up to payload length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }

    /// Walk the extension headers to the upper layer (see the module docs
    /// for the bounds). `Truncated` when a header runs past the payload,
    /// `Malformed` for a hop-by-hop header not first or a bad fragment
    /// header, `Unsupported` for anything uipd does not handle.
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        self.check_len()?;
        let p = self.payload();
        let mut next = self.next_header();
        let mut off = 0usize;
        let mut frag = None;
        let mut seen_frag = false;
        for i in 0..=MAX_EXT_HEADERS {
            match next {
                ip_proto::TCP | ip_proto::UDP | ip_proto::ICMPV6 => {
                    return Ok(UpperLayer {
                        proto: next,
                        offset: off,
                        frag,
                    });
                }
                _ if i == MAX_EXT_HEADERS || off > MAX_EXT_BYTES => {
                    return Err(Error::Unsupported);
                }
                ext::HOP_BY_HOP | ext::DEST_OPTS => {
                    if next == ext::HOP_BY_HOP && i != 0 {
                        return Err(Error::Malformed);
                    }
                    let h = p.get(off..off + 2).ok_or(Error::Truncated)?;
                    let len = (usize::from(h[1]) + 1) * 8;
                    let body = p.get(off + 2..off + len).ok_or(Error::Truncated)?;
                    check_options(body)?;
                    next = h[0];
                    off += len;
                }
                ext::ROUTING => {
                    let h = p.get(off..off + 4).ok_or(Error::Truncated)?;
                    let len = (usize::from(h[1]) + 1) * 8;
                    if p.len() < off + len {
                        return Err(Error::Truncated);
                    }
                    // RFC 8200 §4.4: segments left 0 means "ignore the header".
                    if h[3] != 0 {
                        return Err(Error::Unsupported);
                    }
                    next = h[0];
                    off += len;
                }
                ext::FRAGMENT => {
                    if seen_frag {
                        return Err(Error::Malformed);
                    }
                    seen_frag = true;
                    let h = p.get(off..off + FRAG_HEADER_LEN).ok_or(Error::Truncated)?;
                    let word = u16::from_be_bytes([h[2], h[3]]);
                    let info = FragInfo {
                        offset: word & 0xfff8,
                        more: word & 1 != 0,
                        ident: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                    };
                    if info.offset != 0 || info.more {
                        frag = Some(info);
                    }
                    next = h[0];
                    off += FRAG_HEADER_LEN;
                    if frag.is_some_and(|f| f.offset != 0) {
                        // A non-first fragment: the upper-layer header is in
                        // the first one; what follows is data.
                        return Ok(UpperLayer {
                            proto: next,
                            offset: off,
                            frag,
                        });
                    }
                }
                _ => return Err(Error::Unsupported),
            }
        }
        Err(Error::Unsupported)
    }
}

/// RFC 8200 §4.2: walk the TLV options of a hop-by-hop or destination
/// options header; padding is fine, any other option whose type says
/// "skip" (high bits 00) is skipped, the rest (discard on unknown) refuse.
fn check_options(mut body: &[u8]) -> Result<()> {
    // Bounded: every step consumes at least one byte.
    while let Some((&ty, rest)) = body.split_first() {
        if ty == 0 {
            // Pad1.
            body = rest;
            continue;
        }
        let (&len, rest) = rest.split_first().ok_or(Error::Truncated)?;
        let data = rest.get(..usize::from(len)).ok_or(Error::Truncated)?;
        // PadN (1) and options marked "skip if unknown" (00xxxxxx, such as
        // the router alert that MLD reports carry) pass.
        if ty != 1 && ty >> 6 != 0 {
            return Err(Error::Unsupported);
        }
        body = &rest[data.len()..];
    }
    Ok(())
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set version 6, traffic class 0, flow label 0.
    pub fn set_version_class_flow(&mut self) {
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&[0x60, 0, 0, 0]);
    }
    /// Mutable payload (up to payload length).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// High-level IPv6 header (no extension headers on emit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source.
    pub src_addr: Ipv6Addr,
    /// Destination.
    pub dst_addr: Ipv6Addr,
    /// Next header (the upper-layer protocol when parsed).
    pub next_header: u8,
    /// Payload length (the upper-layer part, when parsed).
    pub payload_len: usize,
    /// Hop limit.
    pub hop_limit: u8,
}

impl Repr {
    /// A header from `src_addr` to `dst_addr` over `payload_len` bytes of
    /// `next_header`, with the stack's hop limit ([`super::HOP_LIMIT`]).
    pub const fn new(
        src_addr: Ipv6Addr,
        dst_addr: Ipv6Addr,
        next_header: u8,
        payload_len: usize,
    ) -> Repr {
        Repr {
            src_addr,
            dst_addr,
            next_header,
            payload_len,
            hop_limit: super::HOP_LIMIT,
        }
    }
    /// Parse a checked packet and walk its extension headers: `next_header`
    /// and `payload_len` describe the upper layer. Fragments are refused
    /// here (`Unsupported`); use [`Packet::upper_layer`] to see them.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        let ul = packet.upper_layer()?;
        if ul.frag.is_some() {
            return Err(Error::Unsupported);
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: ul.proto,
            // Cannot underflow: upper_layer kept offset within the payload.
            payload_len: packet.payload().len() - ul.offset,
            hop_limit: packet.hop_limit(),
        })
    }
    /// Emitted header length (40).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }
    /// Write a 40-byte header (traffic class and flow label 0).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        debug_assert!(self.payload_len <= usize::from(u16::MAX));
        packet.set_version_class_flow();
        packet.set_payload_len(u16::try_from(self.payload_len).unwrap_or(u16::MAX));
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

/// Write a fragment header (RFC 8200 §4.5) into the first 8 bytes of `buf`.
pub fn emit_frag_header(buf: &mut [u8], next_header: u8, offset: u16, more: bool, ident: u32) {
    debug_assert_eq!(offset % 8, 0, "fragment offset not a multiple of 8");
    buf[0] = next_header;
    buf[1] = 0;
    let word = (offset & 0xfff8) | u16::from(more);
    buf[2..4].copy_from_slice(&word.to_be_bytes());
    buf[4..8].copy_from_slice(&ident.to_be_bytes());
}

/// The solicited-node multicast address of `a` (RFC 4291 §2.7.1).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet multicast MAC of IPv6 multicast address `a` (RFC 2464 §7).
pub fn multicast_mac(a: Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ICMPv6 echo request fd00:33::2 → fd00:33::1, 8 bytes of ICMP.
    #[rustfmt::skip]
    const ECHO: [u8; 48] = [
        0x60, 0x0a, 0xbc, 0xde, 0x00, 0x08, 0x3a, 0x40,
        0xfd, 0x00, 0x00, 0x33, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
        0xfd, 0x00, 0x00, 0x33, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
        0x80, 0x00, 0x00, 0x00, 0x12, 0x34, 0x00, 0x01,
    ];

    fn with_ext(exts: &[(u8, &[u8])], last: u8, upper: &[u8]) -> Vec<u8> {
        // exts: (this header's type, its bytes with [0] = next header to fill).
        let mut payload = Vec::new();
        for (i, (_, bytes)) in exts.iter().enumerate() {
            let mut b = bytes.to_vec();
            b[0] = exts.get(i + 1).map_or(last, |e| e.0);
            payload.extend_from_slice(&b);
        }
        payload.extend_from_slice(upper);
        let mut v = vec![0u8; HEADER_LEN + payload.len()];
        Repr {
            src_addr: Ipv6Addr::LOCALHOST,
            dst_addr: Ipv6Addr::LOCALHOST,
            next_header: exts.first().map_or(last, |e| e.0),
            payload_len: payload.len(),
            hop_limit: 64,
        }
        .emit(&mut Packet::new_unchecked(&mut v[..]));
        v[HEADER_LEN..].copy_from_slice(&payload);
        v
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&ECHO[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0);
        assert_eq!(p.flow_label(), 0xabcde);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.next_header(), ip_proto::ICMPV6);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), "fd00:33::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "fd00:33::1".parse::<Ipv6Addr>().unwrap());
        let r = Repr::parse(&p).unwrap();
        assert_eq!(r.payload_len, 8);
        assert_eq!(r.next_header, ip_proto::ICMPV6);
    }

    #[test]
    fn construct_into_stale_buffer() {
        let p = Packet::new_checked(&ECHO[..]).unwrap();
        let r = Repr::parse(&p).unwrap();
        let mut buf = [0xffu8; 48];
        let mut out = Packet::new_unchecked(&mut buf[..]);
        r.emit(&mut out);
        out.payload_mut().copy_from_slice(p.payload());
        // Flow label is emitted as 0.
        let mut want = ECHO;
        want[1] = 0;
        want[2] = 0;
        want[3] = 0;
        assert_eq!(buf, want);
    }

    #[test]
    fn truncated_and_malformed() {
        assert_eq!(
            Packet::new_checked(&ECHO[..39]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&ECHO[..47]).unwrap_err(),
            Error::Truncated
        );
        let mut v4 = ECHO;
        v4[0] = 0x45;
        assert_eq!(Packet::new_checked(&v4[..]).unwrap_err(), Error::Malformed);
        let mut jumbo = ECHO;
        jumbo[4] = 0;
        jumbo[5] = 0;
        jumbo[6] = ext::HOP_BY_HOP;
        assert_eq!(
            Packet::new_checked(&jumbo[..]).unwrap_err(),
            Error::Unsupported
        );
        // Padding past the payload length is ignored.
        let mut padded = ECHO.to_vec();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(Packet::new_checked(&padded[..]).unwrap().payload().len(), 8);
    }

    #[test]
    fn extension_headers_are_walked() {
        let hbh: &[u8] = &[0, 0, 1, 4, 0, 0, 0, 0]; // PadN
        let dst: &[u8] = &[0, 0, 1, 4, 0, 0, 0, 0];
        let rt: &[u8] = &[0, 0, 0, 0, 0, 0, 0, 0]; // segments left 0
        let v = with_ext(
            &[
                (ext::HOP_BY_HOP, hbh),
                (ext::DEST_OPTS, dst),
                (ext::ROUTING, rt),
            ],
            ip_proto::UDP,
            &[1, 2, 3, 4, 0, 8, 0, 0],
        );
        let p = Packet::new_checked(&v[..]).unwrap();
        let ul = p.upper_layer().unwrap();
        assert_eq!(ul.proto, ip_proto::UDP);
        assert_eq!(ul.offset, 24);
        assert_eq!(ul.frag, None);
        assert_eq!(Repr::parse(&p).unwrap().payload_len, 8);
    }

    #[test]
    fn bad_extension_headers_are_refused() {
        let hbh: &[u8] = &[0, 0, 1, 4, 0, 0, 0, 0];
        // Hop-by-hop not first.
        let v = with_ext(
            &[(ext::DEST_OPTS, hbh), (ext::HOP_BY_HOP, hbh)],
            ip_proto::UDP,
            &[0; 8],
        );
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.upper_layer().unwrap_err(), Error::Malformed);
        // A routing header with segments left.
        let v = with_ext(
            &[(ext::ROUTING, &[0, 0, 0, 1, 0, 0, 0, 0])],
            ip_proto::UDP,
            &[0; 8],
        );
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.upper_layer().unwrap_err(), Error::Unsupported);
        // A header that claims more than the payload.
        let v = with_ext(&[(ext::DEST_OPTS, &[0, 9, 1, 4, 0, 0, 0, 0])], 6, &[]);
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.upper_layer().unwrap_err(), Error::Truncated);
        // An option that must be discarded when unknown.
        let v = with_ext(
            &[(ext::DEST_OPTS, &[0, 0, 0xc2, 4, 0, 0, 0, 0])],
            ip_proto::UDP,
            &[0; 8],
        );
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.upper_layer().unwrap_err(), Error::Unsupported);
        // An option that runs past its header.
        let v = with_ext(
            &[(ext::DEST_OPTS, &[0, 0, 1, 9, 0, 0, 0, 0])],
            ip_proto::UDP,
            &[0; 8],
        );
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.upper_layer().unwrap_err(), Error::Truncated);
        // An unknown next header (SCTP), and "no next header".
        for nh in [132, ext::NO_NEXT] {
            let v = with_ext(&[], nh, &[0; 8]);
            let p = Packet::new_checked(&v[..]).unwrap();
            assert_eq!(p.upper_layer().unwrap_err(), Error::Unsupported);
        }
        // Too many headers: nine destination-options headers.
        let d: &[u8] = &[0, 0, 1, 4, 0, 0, 0, 0];
        let many: Vec<(u8, &[u8])> = (0..9).map(|_| (ext::DEST_OPTS, d)).collect();
        let v = with_ext(&many, ip_proto::UDP, &[0; 8]);
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.upper_layer().unwrap_err(), Error::Unsupported);
        // Truncated inside the first extension header.
        let v = with_ext(&[], ext::DEST_OPTS, &[17]);
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.upper_layer().unwrap_err(), Error::Truncated);
    }

    #[test]
    fn fragments_are_reported() {
        let mut f = [0u8; 8];
        emit_frag_header(&mut f, ip_proto::UDP, 1232, true, 0xdead_beef);
        let v = with_ext(&[(ext::FRAGMENT, &f)], ip_proto::UDP, &[0; 16]);
        let p = Packet::new_checked(&v[..]).unwrap();
        let ul = p.upper_layer().unwrap();
        assert_eq!(
            ul.frag,
            Some(FragInfo {
                offset: 1232,
                more: true,
                ident: 0xdead_beef
            })
        );
        assert_eq!(ul.offset, 8);
        assert_eq!(Repr::parse(&p).unwrap_err(), Error::Unsupported);
        // An atomic fragment is a whole datagram.
        emit_frag_header(&mut f, ip_proto::UDP, 0, false, 7);
        let v = with_ext(&[(ext::FRAGMENT, &f)], ip_proto::UDP, &[0; 8]);
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap().payload_len, 8);
        // Two fragment headers.
        let v = with_ext(
            &[(ext::FRAGMENT, &f), (ext::FRAGMENT, &f)],
            ip_proto::UDP,
            &[0; 8],
        );
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.upper_layer().unwrap_err(), Error::Malformed);
    }

    #[test]
    fn multicast_helpers() {
        let a: Ipv6Addr = "fe80::215:15ff:fe15:1515".parse().unwrap();
        assert_eq!(
            solicited_node(a),
            "ff02::1:ff15:1515".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            multicast_mac(solicited_node(a)),
            [0x33, 0x33, 0xff, 0x15, 0x15, 0x15]
        );
    }
}
