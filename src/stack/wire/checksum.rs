//! Internet checksum (RFC 1071) helpers.

use std::net::{IpAddr, Ipv4Addr};

/// Add `data` to a running ones'-complement sum (unfolded, 32-bit
/// accumulator). `data` is taken as big-endian 16-bit words; an odd trailing
/// byte is padded with zero, so only the last chunk of a message may be odd.
pub fn sum(data: &[u8], initial: u32) -> u32 {
    let _ = (data, initial);
    todo!()
}

/// Fold a running sum to 16 bits and complement it: the value to store in a
/// checksum field. (A result of 0 stays 0; UDP's "0 means none" is the
/// caller's concern.)
pub fn finish(sum: u32) -> u16 {
    let _ = sum;
    todo!()
}

/// The IPv4 pseudo-header sum for `proto` with an upper-layer length `len`.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u32) -> u32 {
    let _ = (src, dst, proto, len);
    todo!()
}

/// The pseudo-header sum for either family (IPv6 per RFC 8200 §8.1).
/// Mixed families are a caller bug: it panics in debug builds.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: u32) -> u32 {
    let _ = (src, dst, proto, len);
    todo!()
}
