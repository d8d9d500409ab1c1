//! ICMPv4 (RFC 792): echo and the error messages the stack sends.

use super::Result;

/// A view of an ICMPv4 message.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }
    /// Wrap and check: at least 8 bytes.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let _ = &buffer;
        todo!()
    }
    /// Type.
    pub fn msg_type(&self) -> u8 {
        todo!()
    }
    /// Code.
    pub fn msg_code(&self) -> u8 {
        todo!()
    }
    /// True if the checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        todo!()
    }
}

/// ICMP "destination unreachable" codes the stack sends.
pub mod unreachable {
    /// Network unreachable.
    pub const NET: u8 = 0;
    /// Host unreachable.
    pub const HOST: u8 = 1;
    /// Port unreachable.
    pub const PORT: u8 = 3;
    /// Fragmentation needed and DF set.
    pub const FRAG_NEEDED: u8 = 4;
    /// Communication administratively prohibited.
    pub const ADMIN_PROHIBITED: u8 = 13;
}

/// High-level ICMPv4 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr<'a> {
    /// Type 8.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data.
        data: &'a [u8],
    },
    /// Type 0.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data.
        data: &'a [u8],
    },
    /// Type 3. `data` is the offending IP header plus the first bytes of its
    /// payload (RFC 792: at least 8; the builder passes up to 548 so the whole
    /// message stays within 576 bytes, RFC 1812 §4.3.2.3).
    DstUnreachable {
        /// Code (see [`unreachable`]).
        code: u8,
        /// Next-hop MTU for code 4, else 0.
        next_hop_mtu: u16,
        /// Original datagram's header and leading payload.
        data: &'a [u8],
    },
    /// Type 11 code 0 (TTL exceeded in transit).
    TimeExceeded {
        /// Original datagram's header and leading payload.
        data: &'a [u8],
    },
}

impl<'a> Repr<'a> {
    /// Parse a checked message (checksum verified). Other types are `Unsupported`.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        let _ = packet;
        todo!()
    }
    /// Bytes `emit` writes (8 + data).
    pub fn buffer_len(&self) -> usize {
        todo!()
    }
    /// Write the message and its checksum.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let _ = packet;
        todo!()
    }
}
