//! ARP (RFC 826) for Ethernet + IPv4.

use std::net::Ipv4Addr;

use super::Result;
use super::ethernet::Address;

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// 1
    Request,
    /// 2
    Reply,
    /// Anything else.
    Unknown(u16),
}

/// A view of an ARP packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }
    /// Wrap and check: ≥ 28 bytes.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let _ = &buffer;
        todo!()
    }
}

/// High-level ARP packet (Ethernet hardware, IPv4 protocol only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Operation.
    pub operation: Operation,
    /// Sender MAC.
    pub source_hardware_addr: Address,
    /// Sender IP.
    pub source_protocol_addr: Ipv4Addr,
    /// Target MAC.
    pub target_hardware_addr: Address,
    /// Target IP.
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    /// Parse: hardware type 1 / len 6, protocol 0x0800 / len 4, else `Unsupported`.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        let _ = packet;
        todo!()
    }
    /// 28.
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }
    /// Write all 28 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let _ = packet;
        todo!()
    }
}
