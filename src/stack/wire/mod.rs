//! Wire formats: a zero-copy view (`Packet<T>`/`Frame<T>`) plus a high-level
//! `Repr` for each protocol, in the style of smoltcp's `wire` module.
//!
//! Parse with `new_checked` (length checks) then `Repr::parse` (semantic
//! checks, checksums). Emit with `Repr::emit` into a buffer of exactly
//! `Repr::buffer_len()` bytes obtained with `new_unchecked` (pool buffers hold
//! stale bytes, so `emit` writes every header byte).
//!
//! The views share their frame in this file: `view!` declares a view
//! struct with `new_unchecked`, `new_checked`, `into_inner`, its
//! fixed-offset getters and setters (and `check_len`, when the only check is
//! a minimum length), and `get`/`set` are the byte-order helpers they use. What differs per protocol (length checks that read a
//! field, flags, options, checksums, `Repr`) stays in the protocol's file.
//! Every generated function is a plain generic `#[inline]` function over the
//! buffer: no trait objects, and the same bounds checks as hand-written
//! accessors (one slice index per field, after `check_len` made it fit).

/// Declares a zero-copy view `pub struct $name<T: AsRef<[u8]>> { buffer: T }`
/// with `new_unchecked`, `new_checked` (which calls `check_len`),
/// `into_inner` and its fixed-offset fields:
///
/// ```text
/// view! {
///     /// A view of ...
///     pub struct Packet;
///     fn check_len = HEADER_LEN;    // optional: `Truncated` below HEADER_LEN;
///                                   // without it the file writes `check_len`
///     /// Wrap and check: ...
///     fn new_checked;
///     /// Source port.
///     src_port / set_src_port: u16 = be16(field::SRC_PORT);
///     /// Checksum field (no setter).
///     checksum: u16 = be16(field::CHECKSUM);
/// }
/// ```
///
/// A field reads with `get::kind` and writes with `set::kind`; the setter's
/// doc points to its getter.
macro_rules! view {
    (
        $(#[$m:meta])*
        pub struct $name:ident;
        $( fn check_len = $min:expr; )?
        $(#[$cm:meta])*
        fn new_checked;
        $(
            $(#[$gm:meta])*
            $get:ident $(/ $set:ident)?: $ty:ty = $kind:ident($f:expr);
        )*
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Wrap without checks.
            #[inline]
            pub const fn new_unchecked(buffer: T) -> Self {
                $name { buffer }
            }
            $(#[$cm])*
            #[inline]
            pub fn new_checked(buffer: T) -> $crate::stack::wire::Result<Self> {
                let view = Self::new_unchecked(buffer);
                view.check_len()?;
                Ok(view)
            }
            /// The inner buffer.
            #[inline]
            pub fn into_inner(self) -> T {
                self.buffer
            }
            $(
                #[doc = concat!(
                    "`Truncated` if the buffer is shorter than [`", stringify!($min),
                    "`]. Every field is in bounds once this has passed."
                )]
                #[inline]
                pub fn check_len(&self) -> $crate::stack::wire::Result<()> {
                    $crate::stack::wire::check_min(self.buffer.as_ref().len(), $min)
                }
            )?
            $(
                $(#[$gm])*
                #[inline]
                pub fn $get(&self) -> $ty {
                    $crate::stack::wire::get::$kind(self.buffer.as_ref(), $f)
                }
            )*
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            $($(
                #[doc = concat!("Set what [`", stringify!($name), "::", stringify!($get), "`] reads.")]
                #[inline]
                pub fn $set(&mut self, v: $ty) {
                    $crate::stack::wire::set::$kind(self.buffer.as_mut(), $f, v);
                }
            )?)*
        }
    };
}

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vnet_hdr;

pub use arp::{Operation as ArpOperation, Packet as ArpPacket, Repr as ArpRepr};
pub use ethernet::{
    Address as EthernetAddress, EtherType, Frame as EthernetFrame, Repr as EthernetRepr,
};
pub use icmpv4::{Packet as Icmpv4Packet, Repr as Icmpv4Repr};
pub use icmpv6::{Packet as Icmpv6Packet, Repr as Icmpv6Repr};
pub use ipv4::{Packet as Ipv4Packet, Repr as Ipv4Repr};
pub use ipv6::{Packet as Ipv6Packet, Repr as Ipv6Repr};
pub use tcp::{Packet as TcpPacket, Repr as TcpRepr, SeqNumber};
pub use udp::{Packet as UdpPacket, Repr as UdpRepr};
pub use vnet_hdr::{Packet as VnetHdrPacket, Repr as VnetHdrRepr};

/// Why a buffer is not a valid packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than its headers or its declared length.
    #[error("truncated packet")]
    Truncated,
    /// A field holds a value the protocol does not allow.
    #[error("malformed packet")]
    Malformed,
    /// The checksum does not verify.
    #[error("bad checksum")]
    Checksum,
    /// Valid, but a variant this stack does not handle.
    #[error("unsupported packet")]
    Unsupported,
}

/// Result of parsing.
pub type Result<T> = core::result::Result<T, Error>;

/// The hop limit (IPv4 TTL) of every IP header the stack writes for its own
/// packets and for datagrams it passes on: Linux's default
/// (`net.ipv4.ip_default_ttl`, `net.ipv6.conf.*.hop_limit`).
pub const HOP_LIMIT: u8 = 64;

/// IP protocol numbers used by the stack.
pub mod ip_proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// `Truncated` if a buffer of `len` bytes is shorter than `min`.
#[inline]
pub(crate) fn check_min(len: usize, min: usize) -> Result<()> {
    if len < min {
        Err(Error::Truncated)
    } else {
        Ok(())
    }
}

/// Checks a length that a header declares (a header length, a total length):
/// `Malformed` below `min` (it cannot even cover what holds it), `Truncated`
/// past the buffer's `len`.
#[inline]
pub(crate) fn check_declared(declared: usize, min: usize, len: usize) -> Result<()> {
    if declared < min {
        Err(Error::Malformed)
    } else if declared > len {
        Err(Error::Truncated)
    } else {
        Ok(())
    }
}

/// Field readers: `b[at]` as a byte, network-order (`be`) or little-endian
/// (`le`) integers, addresses. Each indexes once; the view's `check_len`
/// made the field fit.
pub(crate) mod get {
    use core::ops::Range;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::ethernet::Address;

    /// The byte at `at`.
    #[inline]
    pub fn byte(b: &[u8], at: usize) -> u8 {
        b[at]
    }
    /// A big-endian u16 at `r` (2 bytes).
    #[inline]
    pub fn be16(b: &[u8], r: Range<usize>) -> u16 {
        let b = &b[r];
        u16::from_be_bytes([b[0], b[1]])
    }
    /// A big-endian u32 at `r` (4 bytes).
    #[inline]
    pub fn be32(b: &[u8], r: Range<usize>) -> u32 {
        let b = &b[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    /// A little-endian u16 at `r` (2 bytes).
    #[inline]
    pub fn le16(b: &[u8], r: Range<usize>) -> u16 {
        let b = &b[r];
        u16::from_le_bytes([b[0], b[1]])
    }
    /// An IPv4 address at `r` (4 bytes).
    #[inline]
    pub fn ipv4(b: &[u8], r: Range<usize>) -> Ipv4Addr {
        let b = &b[r];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    /// An IPv6 address at `r` (16 bytes).
    #[inline]
    pub fn ipv6(b: &[u8], r: Range<usize>) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[r]);
        Ipv6Addr::from(a)
    }
    /// A MAC address at `r` (6 bytes).
    #[inline]
    pub fn mac(b: &[u8], r: Range<usize>) -> Address {
        let mut a = [0u8; 6];
        a.copy_from_slice(&b[r]);
        Address(a)
    }
}

/// Field writers, the inverses of `get`.
pub(crate) mod set {
    use core::ops::Range;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::ethernet::Address;

    /// Store `v` at `at`.
    #[inline]
    pub fn byte(b: &mut [u8], at: usize, v: u8) {
        b[at] = v;
    }
    /// Store `v` big-endian at `r` (2 bytes).
    #[inline]
    pub fn be16(b: &mut [u8], r: Range<usize>, v: u16) {
        b[r].copy_from_slice(&v.to_be_bytes());
    }
    /// Store `v` big-endian at `r` (4 bytes).
    #[inline]
    pub fn be32(b: &mut [u8], r: Range<usize>, v: u32) {
        b[r].copy_from_slice(&v.to_be_bytes());
    }
    /// Store `v` little-endian at `r` (2 bytes).
    #[inline]
    pub fn le16(b: &mut [u8], r: Range<usize>, v: u16) {
        b[r].copy_from_slice(&v.to_le_bytes());
    }
    /// Store an IPv4 address at `r` (4 bytes).
    #[inline]
    pub fn ipv4(b: &mut [u8], r: Range<usize>, a: Ipv4Addr) {
        b[r].copy_from_slice(&a.octets());
    }
    /// Store an IPv6 address at `r` (16 bytes).
    #[inline]
    pub fn ipv6(b: &mut [u8], r: Range<usize>, a: Ipv6Addr) {
        b[r].copy_from_slice(&a.octets());
    }
    /// Store a MAC address at `r` (6 bytes).
    #[inline]
    pub fn mac(b: &mut [u8], r: Range<usize>, a: Address) {
        b[r].copy_from_slice(&a.0);
    }
}
