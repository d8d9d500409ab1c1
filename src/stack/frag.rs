//! IPv4 fragment reassembly and fragmentation, with hard bounds.
//!
//! Reassembly is where libslirp's worst CVEs lived (CVE-2019-14378 heap
//! overflow, CVE-2020-1983 use-after-free), so everything here is bounded:
//! total bytes held, datagrams in progress, fragments per datagram, the
//! reassembled size (65535 - header), and age. Overlapping fragments whose
//! bytes differ discard the whole datagram (RFC 5722's rule, applied to v4
//! too); an exact duplicate is ignored.

use std::net::Ipv4Addr;

use super::time::Instant;

/// Identifies one datagram being reassembled (RFC 791).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub proto: u8,
    /// Identification.
    pub ident: u16,
}

/// Reassembly bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes held across all datagrams in progress.
    pub max_total_bytes: usize,
    /// Datagrams in progress at once.
    pub max_datagrams: usize,
    /// Fragments kept per datagram.
    pub max_frags_per_datagram: usize,
    /// Age after which an incomplete datagram is dropped, in microseconds.
    pub timeout_us: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_bytes: 4 << 20,
            max_datagrams: 64,
            max_frags_per_datagram: 2048,
            timeout_us: 15_000_000,
        }
    }
}

/// Why a fragment was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragDrop {
    /// Offset + length beyond 65535 - 20, or a non-final fragment whose
    /// length is not a multiple of 8, or an empty non-final fragment.
    Invalid,
    /// Overlap with different bytes: the datagram was discarded.
    Overlap,
    /// A limit was hit (memory, datagrams, fragments).
    Limit,
}

/// Reassembles fragmented IPv4 payloads.
pub struct Reassembler {
    limits: Limits,
}

impl Reassembler {
    /// A reassembler with the given bounds.
    pub fn new(limits: Limits) -> Self {
        Reassembler { limits }
    }

    /// Add a fragment's payload at `offset` bytes (`more` = MF flag).
    /// Returns the whole upper-layer payload when the datagram is complete.
    pub fn push(
        &mut self,
        key: FragKey,
        offset: u16,
        more: bool,
        payload: &[u8],
        now: Instant,
    ) -> Result<Option<Vec<u8>>, FragDrop> {
        let _ = (key, offset, more, payload, now, self.limits);
        todo!()
    }

    /// Drop datagrams older than the timeout; returns how many were dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let _ = now;
        todo!()
    }

    /// Earliest time a datagram in progress will expire.
    pub fn next_deadline(&self) -> Option<Instant> {
        todo!()
    }

    /// Bytes currently held.
    pub fn held_bytes(&self) -> usize {
        todo!()
    }
}

/// Split an upper-layer payload of `payload_len` bytes into IPv4 fragments
/// for a link of `mtu` bytes (IP header of 20 included). Yields
/// `(offset, len, more)`; every offset is a multiple of 8. A payload that fits
/// yields one `(0, payload_len, false)`.
pub fn fragments(payload_len: usize, mtu: usize) -> impl Iterator<Item = (usize, usize, bool)> {
    let _ = (payload_len, mtu);
    std::iter::empty()
}
