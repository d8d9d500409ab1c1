//! The virtio-net header (`struct virtio_net_hdr_v1`, virtio 1.2 §5.1.6) that
//! precedes every frame on a TAP opened with `IFF_VNET_HDR` (with
//! `TUNSETVNETHDRSZ` 12) and every buffer of a virtio-net queue.
//!
//! # Theory of operation
//!
//! ```text
//!  0       1          2           4            6              8               10             12
//!  +-------+----------+-----------+------------+--------------+---------------+--------------+---------
//!  | flags | gso_type | hdr_len   | gso_size   | csum_start   | csum_offset   | num_buffers  | Ethernet
//!  +-------+----------+-----------+------------+--------------+---------------+--------------+---------
//!                       (u16 fields little-endian)
//! ```
//!
//! - `flags`: [`flags::NEEDS_CSUM`]: the L4 checksum is partial: the field at
//!   `csum_start + csum_offset` holds the pseudo-header sum (not complemented)
//!   and the receiver (or whoever forwards the frame) completes it over
//!   `frame[csum_start..]`. [`flags::DATA_VALID`]: the sender vouches for the
//!   checksum (virtio: the device verified it).
//! - `gso_type`: [`gso::NONE`], or a super-frame that the receiver may cut into
//!   `gso_size`-byte segments ([`gso::TCPV4`], [`gso::TCPV6`], [`gso::UDP`]),
//!   optionally with [`gso::ECN`] (CWR must be set on the first segment only).
//!   `hdr_len` is the length of the headers (L2+L3+L4) that each segment repeats.
//! - Offsets (`csum_start`, `hdr_len`) count from the Ethernet header, i.e.
//!   from the first byte after this header.
//! - `num_buffers` is only meaningful with `VIRTIO_NET_F_MRG_RXBUF`; a TAP
//!   ignores it. Emitted as 0 here (the virtio frontend fills it in).
//!
//! Endianness: virtio 1.x (`VIRTIO_F_VERSION_1`) headers are little-endian. A
//! TAP uses the host's native ("legacy") endianness unless `TUNSETVNETLE` is
//! set; every host uipd runs on (x86_64, aarch64) is little-endian, so the
//! two agree and this module always reads and writes little-endian. A
//! big-endian host would have to set `TUNSETVNETLE` on the TAP.
//!
//! 12 bytes is the `virtio_net_hdr_v1` / `virtio_net_hdr_mrg_rxbuf` size; the
//! legacy 10-byte form (no `num_buffers`) is not supported.

use super::{Error, Result};

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Range<usize> = 2..4;
    pub const GSO_SIZE: Range<usize> = 4..6;
    pub const CSUM_START: Range<usize> = 6..8;
    pub const CSUM_OFFSET: Range<usize> = 8..10;
    pub const NUM_BUFFERS: Range<usize> = 10..12;
}

/// Header length (`virtio_net_hdr_v1`).
pub const HEADER_LEN: usize = 12;

/// `flags` bits.
pub mod flags {
    /// The L4 checksum is partial (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    pub const NEEDS_CSUM: u8 = 1;
    /// The checksum is known good (`VIRTIO_NET_HDR_F_DATA_VALID`).
    pub const DATA_VALID: u8 = 2;
    /// Receive-segment-coalescing info (`VIRTIO_NET_HDR_F_RSC_INFO`).
    pub const RSC_INFO: u8 = 4;
    /// Every bit this module knows.
    pub const ALL: u8 = NEEDS_CSUM | DATA_VALID | RSC_INFO;
}

/// `gso_type` values.
pub mod gso {
    /// Not a super-frame.
    pub const NONE: u8 = 0;
    /// TCP over IPv4 (TSO4).
    pub const TCPV4: u8 = 1;
    /// UDP fragmentation offload (UFO).
    pub const UDP: u8 = 3;
    /// TCP over IPv6 (TSO6).
    pub const TCPV6: u8 = 4;
    /// UDP segmentation offload (USO, `VIRTIO_NET_HDR_GSO_UDP_L4`).
    pub const UDP_L4: u8 = 5;
    /// Flag: the TCP super-frame carries ECN (CWR on the first segment).
    pub const ECN: u8 = 0x80;
}

view! {
    /// A view of a virtio-net header at the start of `buffer`.
    pub struct Packet;
    fn check_len = HEADER_LEN;
    /// Wrap and check that the buffer holds at least the 12-byte header.
    fn new_checked;
    /// `flags`.
    flags / set_flags: u8 = byte(field::FLAGS);
    /// `gso_type` (ECN bit included).
    gso_type / set_gso_type: u8 = byte(field::GSO_TYPE);
    /// `hdr_len`.
    hdr_len / set_hdr_len: u16 = le16(field::HDR_LEN);
    /// `gso_size`.
    gso_size / set_gso_size: u16 = le16(field::GSO_SIZE);
    /// `csum_start`.
    csum_start / set_csum_start: u16 = le16(field::CSUM_START);
    /// `csum_offset`.
    csum_offset / set_csum_offset: u16 = le16(field::CSUM_OFFSET);
    /// `num_buffers`.
    num_buffers / set_num_buffers: u16 = le16(field::NUM_BUFFERS);
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// What follows the header (the Ethernet frame).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Mutable view of what follows the header.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// High-level virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Repr {
    /// `flags` ([`flags`] bits).
    pub flags: u8,
    /// `gso_type` ([`gso`] values, ECN bit included).
    pub gso_type: u8,
    /// Length of the headers each segment repeats (L2+L3+L4).
    pub hdr_len: u16,
    /// Payload bytes per segment of a super-frame.
    pub gso_size: u16,
    /// Where checksumming starts, from the Ethernet header.
    pub csum_start: u16,
    /// Where the checksum is stored, from `csum_start`.
    pub csum_offset: u16,
    /// Buffers of a merged receive buffer (`VIRTIO_NET_F_MRG_RXBUF`).
    pub num_buffers: u16,
}

impl Repr {
    /// A header that says nothing: no offload, checksum not vouched for.
    pub const PLAIN: Repr = Repr {
        flags: 0,
        gso_type: gso::NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
        num_buffers: 0,
    };

    /// Parse a header that precedes a frame of `frame_len` bytes.
    ///
    /// `Truncated`: shorter than 12 bytes. `Malformed`: unknown flag bits; a
    /// partial checksum whose field (`csum_start + csum_offset + 2`) lies
    /// beyond the frame; a super-frame with `gso_size` 0. `Unsupported`: a
    /// `gso_type` other than NONE, TCPV4, TCPV6, UDP, UDP_L4.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        let frame_len = packet.payload().len();
        let repr = Repr {
            flags: packet.flags(),
            gso_type: packet.gso_type(),
            hdr_len: packet.hdr_len(),
            gso_size: packet.gso_size(),
            csum_start: packet.csum_start(),
            csum_offset: packet.csum_offset(),
            num_buffers: packet.num_buffers(),
        };
        if repr.flags & !flags::ALL != 0 {
            return Err(Error::Malformed);
        }
        if repr.needs_csum()
            && usize::from(repr.csum_start) + usize::from(repr.csum_offset) + 2 > frame_len
        {
            return Err(Error::Malformed);
        }
        match repr.gso_kind() {
            gso::NONE => {}
            gso::TCPV4 | gso::TCPV6 | gso::UDP | gso::UDP_L4 => {
                if repr.gso_size == 0 {
                    return Err(Error::Malformed);
                }
            }
            _ => return Err(Error::Unsupported),
        }
        Ok(repr)
    }

    /// True if `NEEDS_CSUM` is set.
    pub const fn needs_csum(&self) -> bool {
        self.flags & flags::NEEDS_CSUM != 0
    }

    /// True if `DATA_VALID` is set.
    pub const fn data_valid(&self) -> bool {
        self.flags & flags::DATA_VALID != 0
    }

    /// `gso_type` without the ECN bit.
    pub const fn gso_kind(&self) -> u8 {
        self.gso_type & !gso::ECN
    }

    /// Header length (12).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write the 12 header bytes at the start of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_flags(self.flags);
        packet.set_gso_type(self.gso_type);
        packet.set_hdr_len(self.hdr_len);
        packet.set_gso_size(self.gso_size);
        packet.set_csum_start(self.csum_start);
        packet.set_csum_offset(self.csum_offset);
        packet.set_num_buffers(self.num_buffers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TSO4 super-frame header as Linux's tun writes it for a TCP segment
    /// of 64 KiB at MSS 1448: NEEDS_CSUM, TCPV4, hdr_len 66 (14+20+32),
    /// gso_size 1448, csum_start 34, csum_offset 16.
    #[rustfmt::skip]
    const TSO: [u8; 12] = [
        0x01, 0x01, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00, 0x00, 0x00,
    ];

    fn tso_repr() -> Repr {
        Repr {
            flags: flags::NEEDS_CSUM,
            gso_type: gso::TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    fn with_frame(hdr: &[u8; 12], frame_len: usize) -> Vec<u8> {
        let mut v = hdr.to_vec();
        v.resize(HEADER_LEN + frame_len, 0xa5);
        v
    }

    #[test]
    fn deconstruct() {
        let buf = with_frame(&TSO, 100);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.flags(), flags::NEEDS_CSUM);
        assert_eq!(p.gso_type(), gso::TCPV4);
        assert_eq!(p.hdr_len(), 66);
        assert_eq!(p.gso_size(), 1448);
        assert_eq!(p.csum_start(), 34);
        assert_eq!(p.csum_offset(), 16);
        assert_eq!(p.num_buffers(), 0);
        assert_eq!(p.payload().len(), 100);
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 12];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_flags(flags::NEEDS_CSUM);
        p.set_gso_type(gso::TCPV4);
        p.set_hdr_len(66);
        p.set_gso_size(1448);
        p.set_csum_start(34);
        p.set_csum_offset(16);
        p.set_num_buffers(0);
        assert_eq!(buf, TSO);
    }

    #[test]
    fn parse_and_emit_round_trip() {
        let buf = with_frame(&TSO, 100);
        let r = Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(r, tso_repr());
        assert!(r.needs_csum() && !r.data_valid());
        assert_eq!(r.gso_kind(), gso::TCPV4);
        let mut out = [0xa5u8; 12];
        r.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, TSO);
        assert_eq!(r.buffer_len(), 12);
    }

    #[test]
    fn plain_header_is_all_zero() {
        let mut out = [0xa5u8; 12];
        Repr::PLAIN.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, [0; 12]);
        let r = Repr::parse(&Packet::new_checked(&out[..]).unwrap()).unwrap();
        assert_eq!(r, Repr::PLAIN);
    }

    #[test]
    fn ecn_bit_is_kept_and_masked_for_the_kind() {
        let mut h = TSO;
        h[1] = gso::TCPV4 | gso::ECN;
        let buf = with_frame(&h, 100);
        let r = Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(r.gso_type, gso::TCPV4 | gso::ECN);
        assert_eq!(r.gso_kind(), gso::TCPV4);
    }

    #[test]
    fn truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&TSO[..len]).unwrap_err(),
                Error::Truncated
            );
            assert_eq!(
                Repr::parse(&Packet::new_unchecked(&TSO[..len])),
                Err(Error::Truncated)
            );
        }
    }

    #[test]
    fn checksum_field_beyond_the_frame_is_malformed() {
        // csum_start 34 + csum_offset 16 + 2 = 52 bytes needed.
        let short = with_frame(&TSO, 51);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&short[..]).unwrap()),
            Err(Error::Malformed)
        );
        let exact = with_frame(&TSO, 52);
        assert!(Repr::parse(&Packet::new_checked(&exact[..]).unwrap()).is_ok());
        // Without NEEDS_CSUM the offsets mean nothing.
        let mut h = TSO;
        h[0] = flags::DATA_VALID;
        let short = with_frame(&h, 10);
        assert!(Repr::parse(&Packet::new_checked(&short[..]).unwrap()).is_ok());
    }

    #[test]
    fn malformed_and_unsupported() {
        let mut h = TSO;
        h[0] = 0x08; // unknown flag
        let b = with_frame(&h, 100);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&b[..]).unwrap()),
            Err(Error::Malformed)
        );
        let mut h = TSO;
        h[4] = 0;
        h[5] = 0; // gso_size 0 on a super-frame
        let b = with_frame(&h, 100);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&b[..]).unwrap()),
            Err(Error::Malformed)
        );
        let mut h = TSO;
        h[1] = 2; // no such gso type
        let b = with_frame(&h, 100);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&b[..]).unwrap()),
            Err(Error::Unsupported)
        );
    }
}
