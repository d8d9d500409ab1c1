//! IPv4 fragment reassembly and fragmentation, with hard bounds.
//!
//! Reassembly is where libslirp's worst CVEs lived (CVE-2019-14378 heap
//! overflow, CVE-2020-1983 use-after-free), so everything here is bounded:
//! total bytes held, datagrams in progress, fragments per datagram, the
//! reassembled size (65535 - header), and age. Overlapping fragments whose
//! bytes differ discard the whole datagram (RFC 5722's rule, applied to v4
//! too); an exact duplicate is ignored.
//!
//! # Layout
//!
//! Each datagram in progress owns one buffer, which every fragment's bytes
//! are copied into at their offset, and a sorted list of the disjoint byte
//! ranges received so far. A range that touches its neighbours merges with
//! them, so fragments that arrive in order keep a single range:
//!
//! ```text
//!  offset 0        1480       2960            4440   end (from MF=0)
//!  buf    [ bytes   ][ zeros   ][ bytes         ]     known once the last
//!  ranges [0..1480  )          [2960..4440      )     fragment arrives
//!                   ^ a later fragment fills the gap: one range 0..4440
//! ```
//!
//! The buffer ends where the last range does; an out-of-order fragment
//! extends it with zeros up to its own offset, and the zeros are never read
//! as data. A fragment that overlaps received ranges must agree with the
//! buffer there byte for byte; it is then copied whole (where it overlaps,
//! it writes the bytes already there). Because ranges never overlap,
//! `covered` (the sum of their lengths) equals the end exactly when the
//! datagram is complete, so completion is O(1), and the buffer itself is
//! handed back as the payload, with no second copy to assemble it.
//! Finding a fragment's place is a binary search over the ranges.
//!
//! The buffer grows once per fragment that reaches past its capacity: to
//! the end, once the last fragment has told it, else to twice its capacity
//! (at most [`MAX_PAYLOAD`]) or the fragment's end if that is further. The
//! buffer of a 65507-byte datagram at MTU 1500 is allocated once when the
//! last fragment comes first, and 7 times in order (1480, 2960, 5920, ...,
//! 47360, then 65515 bytes), copying about 1.4 times the payload on the way.
//!
//! The datagrams in progress sit in a vector, at most `max_datagrams` long
//! (64), searched from the end, where a datagram goes back after each
//! fragment: the datagram that got the previous fragment is found first.
//! The guest picks the keys, so a hash table would need a keyed hash to
//! keep collisions from degrading it; a scan bounded by `max_datagrams`
//! cannot be degraded.
//!
//! # Accounting
//!
//! [`Reassembler::held_bytes`] is the sum over datagrams in progress of
//! their buffer's capacity plus [`PIECE_OVERHEAD`] per piece stored (a run
//! of bytes new when its fragment arrived: one per fragment, unless
//! fragments overlap). A flood of 8-byte fragments pays for its
//! bookkeeping, and a lone fragment at offset 65000 for the 64 KiB buffer
//! it makes us allocate, not only for their payload. A fragment's cost (its
//! pieces and the buffer's growth) is checked against the limits before
//! the buffer grows, added when it is stored, and subtracted, all of the
//! datagram's at once, when the datagram completes (the buffer goes to the
//! caller), expires or is discarded; it returns to 0 when nothing is in
//! progress.
//!
//! # Limits
//!
//! A fragment that would exceed `max_total_bytes` or `max_datagrams` first
//! expires timed-out datagrams, then evicts the datagrams in progress that
//! were *touched* least recently (no fragment for the longest time) until it
//! fits ([`FragStats::evicted`]); only a fragment that cannot fit even in an
//! empty table is dropped ([`FragDrop::Limit`]). Every fragment here comes
//! from the one guest, in the order it sent them: a datagram that has not
//! grown while newer ones did has lost a fragment on the way (the TAP queue
//! drops frames when uipd falls behind) and will never complete. Keeping
//! such datagrams for the whole timeout and refusing newcomers instead was
//! measured to lose everything: netperf's 65507-byte UDP_STREAM at MTU 1500
//! filled the 64 slots with dead datagrams within milliseconds and then 90%
//! of the fragments that reached uipd were dropped for the limit (0.3% of
//! the datagrams arrived). A datagram that is still receiving fragments is
//! the most recently touched, so it is the last to go. A datagram that
//! would exceed `max_frags_per_datagram` pieces can never complete (pieces
//! only accumulate), so it is discarded whole. A fragment whose cost would
//! exceed `max_total_bytes` even in an empty table is refused without
//! evicting anything. Age is counted from the first fragment: later
//! fragments do not extend it (as in Linux).

use std::net::IpAddr;
use std::ops::Range;

use super::time::Instant;

/// Largest reassembled upper-layer payload: 65535 minus a 20-byte header.
pub const MAX_PAYLOAD: usize = 65535 - 20;

/// Bytes charged per stored piece on top of the buffer: its share of the
/// range list (a range is 16 bytes, the list may have twice the ranges'
/// room) and of the work it costs, so that many tiny fragments pay more
/// than their bytes.
pub const PIECE_OVERHEAD: usize = 64;

/// A datagram in progress that has not received a fragment while this many
/// fragments (of any datagram) arrived is given up when its identification
/// shows up again: its own fragment was lost, and the sender has since
/// wrapped its 16-bit IPv4 identification, so the fragment starts a new
/// datagram (RFC 4963 §3.2: merged with the stale pieces it would be
/// corrupt, caught only by the UDP checksum). Linux applies the same rule
/// per source address (`ipfrag_max_dist`, 64). The fragments of a live
/// datagram leave the guest back to back; 1024 leaves room for 20 other
/// 64 KiB datagrams at MTU 1500 interleaved with it. Measured with a bound
/// of 32768 instead: netperf at MTU 65520 (two fragments per datagram,
/// 50,000 datagrams per second, four in five frames dropped by the TAP
/// queue) still merged stale pieces (`drops_frag_overlap` 12,
/// `drops_bad_csum` 7 in 26,000 datagrams): uipd saw only about 20,000
/// fragments per wrap. Under heavier loss still, fewer than 1024 fragments
/// may arrive per wrap; the UDP checksum remains the last check, as in
/// Linux.
pub const STALE_PUSHES: u64 = 1024;

/// Identifies one datagram being reassembled (RFC 791; RFC 8200 §4.5 for
/// IPv6, whose identification is 32 bits and whose `proto` is the next
/// header after the fragment header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol.
    pub proto: u8,
    /// Identification.
    pub ident: u32,
}

/// Reassembly bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes held across all datagrams in progress.
    pub max_total_bytes: usize,
    /// Datagrams in progress at once.
    pub max_datagrams: usize,
    /// Pieces stored per datagram: one per fragment that brought new
    /// bytes, more for one that filled several gaps between held bytes
    /// (see the module docs).
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
    /// Also an offset that is not a multiple of 8 (not encodable in the IPv4
    /// header), and, discarding the datagram, a fragment past the end set by
    /// the last fragment or a last fragment that contradicts the held ones.
    Invalid,
    /// Overlap with different bytes: the datagram was discarded.
    Overlap,
    /// A limit was hit (memory, datagrams, fragments).
    Limit,
}

/// Counters of what the reassembler did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FragStats {
    /// Datagrams completed.
    pub reassembled: u64,
    /// Fragments that were exact duplicates of held bytes.
    pub duplicates: u64,
    /// Fragments dropped as [`FragDrop::Invalid`].
    pub invalid: u64,
    /// Datagrams discarded for a conflicting overlap.
    pub overlap: u64,
    /// Fragments dropped as [`FragDrop::Limit`].
    pub limit: u64,
    /// Datagrams dropped by the timeout.
    pub expired: u64,
    /// Incomplete datagrams evicted (least recently touched first) to make
    /// room for a newer fragment, or found stale ([`STALE_PUSHES`]) when
    /// their identification came back.
    pub evicted: u64,
}

/// One datagram in progress.
struct Datagram {
    first_seen: Instant,
    /// [`Reassembler::pushes`] when its last fragment arrived: eviction
    /// order and staleness.
    last_push: u64,
    /// The payload so far, every byte at its offset. Its length is the end
    /// of the last range; bytes outside `ranges` are zeros, never read.
    buf: Vec<u8>,
    /// The parts of `buf` received: sorted, non-empty, pairwise disjoint
    /// and not touching (touching ranges are merged).
    ranges: Vec<Range<usize>>,
    /// The payload length, once the fragment with MF=0 arrived.
    end: Option<usize>,
    /// Sum of the ranges' lengths.
    covered: usize,
    /// Pieces stored: runs of bytes that were new when their fragment
    /// arrived, the count [`Limits::max_frags_per_datagram`] bounds.
    pieces: usize,
    /// What this datagram adds to [`Reassembler::held_bytes`].
    charged: usize,
}

impl Datagram {
    fn new(now: Instant, push: u64) -> Self {
        Datagram {
            first_seen: now,
            last_push: push,
            buf: Vec::new(),
            ranges: Vec::new(),
            end: None,
            covered: 0,
            pieces: 0,
            charged: 0,
        }
    }

    fn deadline(&self, timeout_us: u64) -> Instant {
        Instant(self.first_seen.0.saturating_add(timeout_us))
    }

    /// Check a fragment against what is held: the end (set by the last
    /// fragment) and the overlap rule. Returns how many pieces it would
    /// store: the runs of `offset..offset + payload.len()` not held yet.
    fn check(&self, offset: usize, more: bool, payload: &[u8]) -> Result<usize, FragDrop> {
        let new_end = offset + payload.len();
        match self.end {
            Some(end) if new_end > end || (!more && new_end != end) => {
                return Err(FragDrop::Invalid);
            }
            // `buf` ends where the last range does.
            None if !more && self.buf.len() > new_end => return Err(FragDrop::Invalid),
            _ => {}
        }
        let first = self.ranges.partition_point(|r| r.end <= offset);
        let mut gaps = 0;
        let mut cursor = offset;
        for range in self.ranges.iter().skip(first) {
            if range.start >= new_end {
                break;
            }
            if range.start > cursor {
                gaps += 1;
            }
            let (lo, hi) = (range.start.max(offset), range.end.min(new_end));
            let held = self.buf.get(lo..hi);
            let new = payload.get(lo - offset..hi - offset);
            // Cannot be None: lo..hi lies within both the range (so within
            // `buf`) and the fragment; a None would still be a conflict.
            if held.is_none() || held != new {
                return Err(FragDrop::Overlap);
            }
            cursor = hi;
        }
        if cursor < new_end {
            gaps += 1;
        }
        Ok(gaps)
    }

    /// The capacity `buf` needs for a fragment ending at `new_end` (see
    /// the module docs): its capacity as it is when that suffices.
    fn capacity_for(&self, new_end: usize, more: bool) -> usize {
        let cap = self.buf.capacity();
        if new_end <= cap {
            return cap;
        }
        match (self.end, more) {
            (Some(end), _) => end.max(new_end),
            (None, false) => new_end,
            (None, true) => new_end.max(cap.saturating_mul(2).min(MAX_PAYLOAD)),
        }
    }

    /// Copy a fragment that passed [`Datagram::check`] into `buf` and merge
    /// its range. Held bytes it overlaps are equal to its own, so it is
    /// copied whole.
    fn store(&mut self, offset: usize, payload: &[u8]) {
        if payload.is_empty() {
            return;
        }
        let new_end = offset + payload.len();
        let len = self.buf.len();
        if offset < len {
            let below = new_end.min(len);
            if let (Some(dst), Some(src)) = (
                self.buf.get_mut(offset..below),
                payload.get(..below - offset),
            ) {
                dst.copy_from_slice(src);
            }
        }
        if new_end > len {
            // Zeros up to an out-of-order fragment; a no-op in order.
            self.buf.resize(offset.max(len), 0);
            let tail = payload
                .get(len.saturating_sub(offset)..)
                .unwrap_or_default();
            self.buf.extend_from_slice(tail);
        }

        // Ranges i..j overlap or touch offset..new_end: they become one.
        let i = self.ranges.partition_point(|r| r.end < offset);
        let j = self.ranges.partition_point(|r| r.start <= new_end);
        let merged = match (
            self.ranges.get(i),
            j.checked_sub(1).and_then(|l| self.ranges.get(l)),
        ) {
            (Some(first), Some(last)) if i < j => first.start.min(offset)..last.end.max(new_end),
            _ => offset..new_end,
        };
        let held: usize = self
            .ranges
            .get(i..j)
            .unwrap_or_default()
            .iter()
            .map(Range::len)
            .sum();
        self.covered += merged.len() - held;
        if i < j {
            self.ranges.splice(i..j, std::iter::once(merged));
        } else {
            self.ranges.insert(i, merged);
        }
    }
}

/// Reassembles fragmented IPv4 and IPv6 payloads.
pub struct Reassembler {
    limits: Limits,
    /// The datagrams in progress, at most `max_datagrams`, each put back at
    /// the end when it got a fragment (see the module docs).
    datagrams: Vec<(FragKey, Datagram)>,
    /// Sum of `charged` over `datagrams` and the one being worked on.
    held: usize,
    stats: FragStats,
    /// Valid fragments pushed so far: a clock that counts arrivals.
    pushes: u64,
    /// Datagrams expired and evicted since the last [`Reassembler::take_lost`].
    lost: (u64, u64),
}

impl Reassembler {
    /// A reassembler with the given bounds.
    pub fn new(limits: Limits) -> Self {
        Reassembler {
            limits,
            datagrams: Vec::new(),
            held: 0,
            stats: FragStats::default(),
            pushes: 0,
            lost: (0, 0),
        }
    }

    /// Take the datagram of `key` out of the table, if it is there.
    fn take(&mut self, key: &FragKey) -> Option<Datagram> {
        // From the end: the datagram a fragment belongs to is usually the
        // one the previous fragment did.
        let i = self
            .datagrams
            .iter()
            .rposition(|(k, _)| k.ident == key.ident && k == key)?;
        Some(self.datagrams.swap_remove(i).1)
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
        let offset = usize::from(offset);
        let len = payload.len();
        // RFC 791: offsets count 8-byte units, so every fragment but the
        // last carries a non-zero multiple of 8 bytes.
        if offset % 8 != 0 || (more && (len == 0 || len % 8 != 0)) || offset + len > MAX_PAYLOAD {
            self.stats.invalid += 1;
            return Err(FragDrop::Invalid);
        }

        // The datagram is taken out of the table while it is worked on and
        // put back only if it is still in progress; `held` keeps counting it.
        let timeout = self.limits.timeout_us;
        self.pushes += 1;
        let existing = match self.take(&key) {
            Some(dg) if now >= dg.deadline(timeout) => {
                self.release(dg);
                self.stats.expired += 1;
                self.lost.0 += 1;
                None
            }
            Some(dg) if self.pushes - dg.last_push > STALE_PUSHES => {
                // Passed by too many fragments to be alive: this fragment
                // belongs to a new datagram that reuses the identification.
                self.release(dg);
                self.stats.evicted += 1;
                self.lost.1 += 1;
                None
            }
            other => other,
        };
        let is_new = existing.is_none();
        if is_new && !self.room_for(now, 1, 0) {
            self.stats.limit += 1;
            return Err(FragDrop::Limit);
        }
        let mut dg = existing.unwrap_or_else(|| Datagram::new(now, self.pushes));
        dg.last_push = self.pushes;

        let gaps = match dg.check(offset, more, payload) {
            Ok(gaps) => gaps,
            Err(drop) => {
                self.release(dg);
                match drop {
                    FragDrop::Overlap => self.stats.overlap += 1,
                    _ => self.stats.invalid += 1,
                }
                return Err(drop);
            }
        };
        if dg.pieces + gaps > self.limits.max_frags_per_datagram {
            // It can never complete: pieces are only ever added.
            self.release(dg);
            self.stats.limit += 1;
            return Err(FragDrop::Limit);
        }
        let old_cap = dg.buf.capacity();
        let cap = if len == 0 {
            old_cap
        } else {
            dg.capacity_for(offset + len, more)
        };
        let overhead = gaps * PIECE_OVERHEAD;
        if !self.room_for(now, usize::from(is_new), cap - old_cap + overhead) {
            if !is_new {
                self.datagrams.push((key, dg));
            }
            self.stats.limit += 1;
            return Err(FragDrop::Limit);
        }

        if gaps == 0 && (more || dg.end.is_some()) {
            self.stats.duplicates += 1;
        }
        dg.buf.reserve_exact(cap - dg.buf.len());
        dg.store(offset, payload);
        dg.pieces += gaps;
        // What the allocation reports, in case it rounded up.
        let cost = dg.buf.capacity().saturating_sub(old_cap) + overhead;
        dg.charged += cost;
        self.held += cost;
        if !more {
            dg.end = Some(offset + len);
        }

        if dg.end == Some(dg.covered) {
            self.held -= dg.charged;
            self.stats.reassembled += 1;
            // Every byte up to the end is held, and `buf` ends there.
            dg.buf.truncate(dg.covered);
            return Ok(Some(dg.buf));
        }
        self.datagrams.push((key, dg));
        Ok(None)
    }

    /// Whether `datagrams` more datagrams and `bytes` more bytes fit,
    /// expiring timed-out datagrams and then evicting the least recently
    /// touched ones (see the module docs) until they do. The datagram being
    /// worked on is out of the table, so it is never evicted for itself.
    fn room_for(&mut self, now: Instant, datagrams: usize, bytes: usize) -> bool {
        let fits = |r: &Self| {
            r.datagrams.len() + datagrams <= r.limits.max_datagrams
                && r.held.saturating_add(bytes) <= r.limits.max_total_bytes
        };
        if fits(self) {
            return true;
        }
        if datagrams > self.limits.max_datagrams || bytes > self.limits.max_total_bytes {
            // Would not fit even in an empty table: evicting would only
            // lose the datagrams in progress.
            return false;
        }
        self.expire(now);
        // Bounded: each round removes one datagram or stops.
        while !fits(self) {
            let Some(victim) = self
                .datagrams
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, dg))| dg.last_push)
                .map(|(i, _)| i)
            else {
                return false;
            };
            let (_, dg) = self.datagrams.swap_remove(victim);
            self.release(dg);
            self.stats.evicted += 1;
            self.lost.1 += 1;
        }
        true
    }

    /// Forget a datagram that is out of the table.
    fn release(&mut self, dg: Datagram) {
        self.held -= dg.charged;
    }

    /// Drop datagrams older than the timeout; returns how many were dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let timeout = self.limits.timeout_us;
        let mut freed = 0;
        let before = self.datagrams.len();
        self.datagrams.retain(|(_, dg)| {
            let keep = now < dg.deadline(timeout);
            if !keep {
                freed += dg.charged;
            }
            keep
        });
        self.held -= freed;
        let dropped = before - self.datagrams.len();
        let n = u64::try_from(dropped).unwrap_or(u64::MAX);
        self.stats.expired += n;
        self.lost.0 += n;
        dropped
    }

    /// Datagrams lost since the last call, as `(expired, evicted)`: every
    /// incomplete datagram given up, however it was found (a scan, a
    /// fragment arriving late, or room needed), counted once.
    pub fn take_lost(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.lost)
    }

    /// Earliest time a datagram in progress will expire.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.datagrams
            .iter()
            .map(|(_, dg)| dg.deadline(self.limits.timeout_us))
            .min()
    }

    /// Bytes currently held.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Datagrams in progress.
    pub fn in_progress(&self) -> usize {
        self.datagrams.len()
    }

    /// What happened so far.
    pub fn stats(&self) -> FragStats {
        self.stats
    }

    /// The bounds in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

/// Split an upper-layer payload of `payload_len` bytes into IPv4 fragments
/// for a link of `mtu` bytes (IP header of 20 included). Yields
/// `(offset, len, more)`; every offset is a multiple of 8. A payload that fits
/// yields one `(0, payload_len, false)`.
///
/// An `mtu` below 68 (RFC 791's minimum) is taken as 68. Every fragment but
/// the last carries `(mtu - 20)` rounded down to a multiple of 8. The caller
/// keeps `payload_len` within [`MAX_PAYLOAD`]; longer payloads are split all
/// the same but their offsets do not fit the IPv4 header.
pub fn fragments(payload_len: usize, mtu: usize) -> impl Iterator<Item = (usize, usize, bool)> {
    let room = mtu.max(68) - 20;
    let chunk = if payload_len <= room {
        payload_len
    } else {
        room / 8 * 8
    };
    let mut offset = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let len = chunk.min(payload_len - offset);
        let more = offset + len < payload_len;
        let item = (offset, len, more);
        offset += len;
        done = !more;
        Some(item)
    })
}

#[cfg(test)]
mod tests;
