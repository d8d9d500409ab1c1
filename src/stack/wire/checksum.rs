//! Internet checksum (RFC 1071) helpers.
//!
//! # Theory of operation
//!
//! The checksum is the ones'-complement of the ones'-complement sum of the
//! message taken as big-endian 16-bit words. Ones'-complement addition is
//! addition modulo 0xffff with an "end-around carry", so the sum can be
//! accumulated in any wider integer and folded at the end (RFC 1071 §2 (B),
//! (C)). Two more facts make it fast:
//!
//! - `2^16 ≡ 1 (mod 0xffff)`: a 32-bit word is congruent to the sum of its
//!   two 16-bit halves, so 4 bytes can be added at a time.
//! - Byte-order independence (RFC 1071 §2 (B)): summing the words
//!   byte-swapped and swapping the folded result gives the same sum, so the
//!   loop reads native-endian words and never swaps per word.
//!
//! ```text
//!   data: | 16 bytes | 16 bytes | ... (64 KiB blocks) ... | tail (< 16 bytes) |
//!            4 x u32 native-endian -> 4 x u64 lanes, plain adds (no carries:
//!            a block adds at most 4096 u32s per lane, far below 2^32)
//!   block end: lanes -> u64 accumulator with end-around carry
//!   tail: native-endian 16-bit words; an odd last byte is padded with zero
//!   fold: u64 -> 16 bits with end-around carry, then swap back to big-endian
//! ```
//!
//! The plain adds over fixed-width lanes vectorize (SSE2 on x86-64). Folding
//! never turns a non-zero sum into zero, so the folded result is canonical:
//! 0 only for an all-zero input and initial value, otherwise the unique
//! congruent value in `1..=0xffff`. That is exactly what the word-by-word
//! RFC 1071 loop yields, which the tests check on random buffers.
//!
//! [`sum`] returns that folded value (always `<= 0xffff`), so results can be
//! chained as `initial` or added together without overflow; [`finish`] folds
//! again (a no-op for such values) and complements.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Add `x` to `acc` with end-around carry.
#[inline(always)]
fn add_carry(acc: u64, x: u64) -> u64 {
    let (s, carry) = acc.overflowing_add(x);
    // When `carry` is set, `s <= 2^64 - 2`, so adding it back cannot overflow.
    s + u64::from(carry)
}

/// Fold a 64-bit ones'-complement accumulator to 16 bits (end-around carry).
#[inline]
fn fold64(acc: u64) -> u16 {
    // Each step keeps the value congruent mod 0xffff and non-zero if it was.
    let mut s = add_carry(acc >> 32, acc & 0xffff_ffff); // <= 2^33 - 2
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    // Cannot fail: the loop leaves `s <= 0xffff`.
    u16::try_from(s).unwrap_or(0xffff)
}

/// Convert between a big-endian-word sum and a native-endian-word sum
/// (an involution: swapping is multiplying by 2^8 mod 0xffff, and 2^16 ≡ 1).
#[inline(always)]
fn to_native(v: u16) -> u16 {
    if cfg!(target_endian = "little") {
        v.swap_bytes()
    } else {
        v
    }
}

/// Bytes per block of lane sums; see the module doc for why it cannot overflow.
const BLOCK: usize = 1 << 16;

/// Add `data` to a running ones'-complement sum (unfolded, 32-bit
/// accumulator). `data` is taken as big-endian 16-bit words; an odd trailing
/// byte is padded with zero, so only the last chunk of a message may be odd.
///
/// The returned value is already folded to `0..=0xffff` (a valid running sum:
/// [`finish`] still has to be applied), so it may be passed back as
/// `initial` or added to a few other such sums without overflowing a `u32`.
///
/// Chaining: `sum(a ++ b, 0) == sum(b, sum(a, 0))` holds only when `a` has an
/// **even** length. With an odd `a`, its last byte is padded with a zero here,
/// whereas in the concatenation it pairs with the first byte of `b`; so
/// split a message only at even offsets.
///
/// Processes 16 bytes per step into 64-bit lanes; it is equal to the plain
/// RFC 1071 16-bit loop for every input (see the tests).
pub fn sum(data: &[u8], initial: u32) -> u32 {
    let mut acc = u64::from(to_native(fold64(u64::from(initial))));
    let (body, tail) = data.split_at(data.len() - data.len() % 16);
    for block in body.chunks(BLOCK) {
        let mut lanes = [0u64; 4];
        for chunk in block.chunks_exact(16) {
            for (lane, w) in lanes.iter_mut().zip(chunk.chunks_exact(4)) {
                *lane += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
            }
        }
        for lane in lanes {
            acc = add_carry(acc, lane);
        }
    }
    let mut words = tail.chunks_exact(2);
    for w in &mut words {
        acc = add_carry(acc, u64::from(u16::from_ne_bytes([w[0], w[1]])));
    }
    if let [last] = words.remainder() {
        // RFC 1071 §4.1: an odd trailing byte is the high byte of a padded word.
        acc = add_carry(acc, u64::from(u16::from_ne_bytes([*last, 0])));
    }
    u32::from(to_native(fold64(acc)))
}

/// Fold a running sum to 16 bits and complement it: the value to store in a
/// checksum field. (A result of 0 stays 0; UDP's "0 means none" is the
/// caller's concern.)
pub fn finish(sum: u32) -> u16 {
    !fold64(u64::from(sum))
}

/// The IPv4 pseudo-header sum for `proto` with an upper-layer length `len`.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u32) -> u32 {
    // RFC 768 / RFC 9293 §3.1: src, dst, zero, protocol, length. The length is
    // added as a 32-bit value, which equals the 16-bit field for any real one.
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&src.octets());
    b[4..8].copy_from_slice(&dst.octets());
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[15] = proto;
    sum(&b, 0)
}

fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: u32) -> u32 {
    // RFC 8200 §8.1: src, dst, 32-bit length, 3 zero bytes, next header.
    let mut b = [0u8; 40];
    b[0..16].copy_from_slice(&src.octets());
    b[16..32].copy_from_slice(&dst.octets());
    b[32..36].copy_from_slice(&len.to_be_bytes());
    b[39] = proto;
    sum(&b, 0)
}

/// The pseudo-header sum for either family (IPv6 per RFC 8200 §8.1).
/// Mixed families are a caller bug: it panics in debug builds.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: u32) -> u32 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => pseudo_header_v4(s, d, proto, len),
        (IpAddr::V6(s), IpAddr::V6(d)) => pseudo_header_v6(s, d, proto, len),
        (s, d) => {
            debug_assert!(false, "pseudo header with mixed families: {s} -> {d}");
            // Release builds: a deterministic (and wrong, so the packet is
            // dropped by the peer) sum rather than a panic.
            pseudo_header_v6(to_v6(s), to_v6(d), proto, len)
        }
    }
}

fn to_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain RFC 1071 §4.1 loop: 16-bit words into a wide accumulator,
    /// odd byte padded, then fold with end-around carry.
    fn reference(data: &[u8], initial: u32) -> u32 {
        let mut acc = u64::from(initial);
        let mut i = 0;
        while i + 1 < data.len() {
            acc += u64::from(u16::from_be_bytes([data[i], data[i + 1]]));
            i += 2;
        }
        if i < data.len() {
            acc += u64::from(data[i]) << 8;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        u32::try_from(acc).unwrap()
    }

    /// xorshift64*: tiny, seeded, good enough for test data.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[7]
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 numerical example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data, 0), 0xddf2);
        assert_eq!(finish(sum(&data, 0)), !0xddf2);
    }

    #[test]
    fn matches_reference_on_random_buffers() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut buf = vec![0u8; 4096];
        for round in 0..2000 {
            let len =
                usize::try_from(rng.next() % 300).unwrap() + if round % 10 == 0 { 3000 } else { 0 };
            let off = usize::try_from(rng.next() % 7).unwrap(); // odd/even starts
            for b in &mut buf[..off + len] {
                *b = rng.byte();
            }
            // Mostly 0xff bytes stress the end-around carry.
            if round % 3 == 0 {
                for b in &mut buf[off..off + len] {
                    *b |= 0xf0;
                }
            }
            let data = &buf[off..off + len];
            let init = match round % 4 {
                0 => 0,
                1 => u32::MAX,
                _ => u32::try_from(rng.next() & 0xffff_ffff).unwrap(),
            };
            assert_eq!(
                sum(data, init),
                reference(data, init),
                "len {len} off {off}"
            );
            assert_eq!(
                finish(sum(data, init)),
                !u16::try_from(reference(data, init)).unwrap()
            );
        }
    }

    #[test]
    fn matches_reference_across_blocks() {
        let mut rng = Rng(7);
        for len in [BLOCK - 1, BLOCK, BLOCK + 17, 3 * BLOCK + 5] {
            let data: Vec<u8> = (0..len).map(|_| rng.byte() | 0xc0).collect();
            assert_eq!(sum(&data, 0), reference(&data, 0), "len {len}");
            assert_eq!(
                sum(&data[1..], 0x1234),
                reference(&data[1..], 0x1234),
                "len {len}"
            );
        }
        let ones = vec![0xffu8; 5 * BLOCK + 3];
        assert_eq!(sum(&ones, u32::MAX), reference(&ones, u32::MAX));
    }

    #[test]
    fn chaining_at_even_offsets() {
        let mut rng = Rng(42);
        let data: Vec<u8> = (0..257).map(|_| rng.byte()).collect();
        for split in (0..data.len()).step_by(2) {
            let (a, b) = data.split_at(split);
            assert_eq!(sum(&data, 0), sum(b, sum(a, 0)), "split {split}");
        }
        // An odd split does not chain (documented): pick data where it differs.
        let d = [0x01, 0x02, 0x03];
        assert_ne!(sum(&d, 0), sum(&d[1..], sum(&d[..1], 0)));
    }

    #[test]
    fn edge_values() {
        assert_eq!(sum(&[], 0), 0);
        assert_eq!(finish(0), 0xffff);
        assert_eq!(finish(0xffff), 0);
        assert_eq!(sum(&[0xff; 64], 0), 0xffff);
        assert_eq!(sum(&[0xff; 64], u32::MAX), 0xffff);
        assert_eq!(sum(&[0x12], 0), 0x1200);
        assert_eq!(finish(u32::MAX), 0);
    }

    #[test]
    fn pseudo_headers() {
        let s = Ipv4Addr::new(10, 0, 2, 15);
        let d = Ipv4Addr::new(10, 0, 2, 3);
        let manual = [10, 0, 2, 15, 10, 0, 2, 3, 0, 17, 0, 40];
        assert_eq!(pseudo_header_v4(s, d, 17, 40), sum(&manual, 0));
        assert_eq!(
            pseudo_header(s.into(), d.into(), 17, 40),
            pseudo_header_v4(s, d, 17, 40)
        );
        let s6: Ipv6Addr = "fe80::1".parse().unwrap();
        let d6: Ipv6Addr = "fe80::2".parse().unwrap();
        let mut m6 = Vec::new();
        m6.extend_from_slice(&s6.octets());
        m6.extend_from_slice(&d6.octets());
        m6.extend_from_slice(&70_000u32.to_be_bytes());
        m6.extend_from_slice(&[0, 0, 0, 6]);
        assert_eq!(pseudo_header(s6.into(), d6.into(), 6, 70_000), sum(&m6, 0));
    }
}
