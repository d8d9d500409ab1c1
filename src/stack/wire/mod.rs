//! Wire formats: a zero-copy view (`Packet<T>`/`Frame<T>`) plus a high-level
//! `Repr` for each protocol, in the style of smoltcp's `wire` module.
//!
//! Parse with `new_checked` (length checks) then `Repr::parse` (semantic
//! checks, checksums). Emit with `Repr::emit` into a buffer of exactly
//! `Repr::buffer_len()` bytes obtained with `new_unchecked` (pool buffers hold
//! stale bytes, so `emit` writes every header byte).

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
