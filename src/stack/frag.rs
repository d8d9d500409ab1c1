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
//! Each datagram in progress keeps a sorted list of disjoint pieces; a
//! fragment that overlaps held pieces must agree with them byte for byte and
//! only its uncovered parts (the gaps) are stored:
//!
//! ```text
//!  offset 0        1480       2960            4440   end (from MF=0)
//!         [piece 0 ][ gap     ][ piece 1       ]     known once the last
//!                   ^ a later fragment fills it      fragment arrives
//! ```
//!
//! Because pieces never overlap, `covered` (the sum of their lengths) equals
//! the end exactly when the datagram is complete, so completion is O(1).
//!
//! # Accounting
//!
//! [`Reassembler::held_bytes`] is the sum over stored pieces of their length
//! plus [`PIECE_OVERHEAD`], so a flood of 8-byte fragments pays for its
//! bookkeeping, not only its payload. It is added when a piece is stored and
//! subtracted when its datagram completes, expires or is discarded, and
//! returns to 0 when nothing is in progress.
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
//! would exceed `max_frags_per_datagram` can never complete (pieces only
//! accumulate), so it is discarded whole. Age is counted from the first
//! fragment: later fragments do not extend it (as in Linux).

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;

use super::time::Instant;

/// Largest reassembled upper-layer payload: 65535 minus a 20-byte header.
pub const MAX_PAYLOAD: usize = 65535 - 20;

/// Bytes charged per stored piece on top of its payload: the piece's record
/// and its heap allocation's bookkeeping.
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

/// Bytes of one fragment, at `offset` within the datagram.
struct Piece {
    offset: usize,
    data: Vec<u8>,
}

impl Piece {
    fn end(&self) -> usize {
        self.offset + self.data.len()
    }
}

/// One datagram in progress.
struct Datagram {
    first_seen: Instant,
    /// [`Reassembler::pushes`] when its last fragment arrived: eviction
    /// order and staleness.
    last_push: u64,
    /// Sorted by offset, pairwise disjoint, non-empty, all below `end`.
    pieces: Vec<Piece>,
    /// The payload length, once the fragment with MF=0 arrived.
    end: Option<usize>,
    /// Sum of the pieces' lengths.
    covered: usize,
    /// What this datagram adds to [`Reassembler::held_bytes`].
    charged: usize,
}

impl Datagram {
    fn new(now: Instant, push: u64) -> Self {
        Datagram {
            first_seen: now,
            last_push: push,
            pieces: Vec::new(),
            end: None,
            covered: 0,
            charged: 0,
        }
    }

    fn deadline(&self, timeout_us: u64) -> Instant {
        Instant(self.first_seen.0.saturating_add(timeout_us))
    }

    /// The byte ranges of `offset..offset + payload.len()` not held yet,
    /// after checking the fragment against what is held.
    fn gaps(
        &self,
        offset: usize,
        more: bool,
        payload: &[u8],
    ) -> Result<Vec<Range<usize>>, FragDrop> {
        let new_end = offset + payload.len();
        match self.end {
            Some(end) if new_end > end || (!more && new_end != end) => {
                return Err(FragDrop::Invalid);
            }
            None if !more && self.pieces.last().is_some_and(|p| p.end() > new_end) => {
                return Err(FragDrop::Invalid);
            }
            _ => {}
        }
        let first = self.pieces.partition_point(|p| p.end() <= offset);
        let mut gaps = Vec::new();
        let mut cursor = offset;
        for piece in self.pieces.iter().skip(first) {
            if piece.offset >= new_end {
                break;
            }
            if piece.offset > cursor {
                gaps.push(cursor..piece.offset);
            }
            let (lo, hi) = (piece.offset.max(offset), piece.end().min(new_end));
            let held = piece.data.get(lo - piece.offset..hi - piece.offset);
            let new = payload.get(lo - offset..hi - offset);
            // Cannot be None: lo..hi lies within both the piece and the
            // fragment; a None would still be treated as a conflict.
            if held.is_none() || held != new {
                return Err(FragDrop::Overlap);
            }
            cursor = hi;
        }
        if cursor < new_end {
            gaps.push(cursor..new_end);
        }
        Ok(gaps)
    }

    /// The payload, if every byte up to the end is held.
    fn assemble(self) -> Option<Vec<u8>> {
        let end = self.end?;
        if self.covered != end {
            return None;
        }
        let mut out = Vec::with_capacity(end);
        for piece in self.pieces {
            out.extend_from_slice(&piece.data);
        }
        Some(out)
    }
}

/// Reassembles fragmented IPv4 payloads.
pub struct Reassembler {
    limits: Limits,
    datagrams: HashMap<FragKey, Datagram>,
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
            datagrams: HashMap::new(),
            held: 0,
            stats: FragStats::default(),
            pushes: 0,
            lost: (0, 0),
        }
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
        let existing = match self.datagrams.remove(&key) {
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

        let gaps = match dg.gaps(offset, more, payload) {
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
        if dg.pieces.len() + gaps.len() > self.limits.max_frags_per_datagram {
            // It can never complete: pieces are only ever added.
            self.release(dg);
            self.stats.limit += 1;
            return Err(FragDrop::Limit);
        }
        let cost: usize = gaps.iter().map(|g| g.len() + PIECE_OVERHEAD).sum();
        if !self.room_for(now, usize::from(is_new), cost) {
            if !is_new {
                self.datagrams.insert(key, dg);
            }
            self.stats.limit += 1;
            return Err(FragDrop::Limit);
        }

        if gaps.is_empty() && (more || dg.end.is_some()) {
            self.stats.duplicates += 1;
        }
        for gap in gaps {
            let data = payload
                .get(gap.start - offset..gap.end - offset)
                .unwrap_or_default()
                .to_vec();
            dg.covered += data.len();
            dg.pieces.push(Piece {
                offset: gap.start,
                data,
            });
        }
        // Offsets are distinct (pieces are disjoint and non-empty).
        dg.pieces.sort_unstable_by_key(|p| p.offset);
        dg.charged += cost;
        self.held += cost;
        if !more {
            dg.end = Some(offset + len);
        }

        if dg.end == Some(dg.covered) {
            self.held -= dg.charged;
            self.stats.reassembled += 1;
            return Ok(dg.assemble());
        }
        self.datagrams.insert(key, dg);
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
        self.expire(now);
        // Bounded: each round removes one datagram or stops.
        while !fits(self) {
            let Some(victim) = self
                .datagrams
                .iter()
                .min_by_key(|(_, dg)| dg.last_push)
                .map(|(k, _)| *k)
            else {
                return false;
            };
            if let Some(dg) = self.datagrams.remove(&victim) {
                self.release(dg);
                self.stats.evicted += 1;
                self.lost.1 += 1;
            }
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
        self.datagrams.retain(|_, dg| {
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
            .values()
            .map(|dg| dg.deadline(self.limits.timeout_us))
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
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    fn key(ident: u16) -> FragKey {
        FragKey {
            src: IpAddr::from([192, 168, 33, 15]),
            dst: IpAddr::from([10, 0, 0, 1]),
            proto: 17,
            ident: u32::from(ident),
        }
    }

    fn t(us: u64) -> Instant {
        Instant(us)
    }

    /// Seeded xorshift64.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                let j = self.below(i + 1);
                v.swap(i, j);
            }
        }
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from((i * 7 + i / 251) % 256).unwrap())
            .collect()
    }

    type Frag = (u16, bool, Vec<u8>);

    fn split(data: &[u8], mtu: usize) -> Vec<Frag> {
        fragments(data.len(), mtu)
            .map(|(off, len, more)| {
                (
                    u16::try_from(off).unwrap(),
                    more,
                    data[off..off + len].to_vec(),
                )
            })
            .collect()
    }

    /// Push every fragment; the last push, and only it, completes.
    fn reassemble(r: &mut Reassembler, k: FragKey, frags: &[Frag]) -> Vec<u8> {
        let (last, rest) = frags.split_last().unwrap();
        for (off, more, data) in rest {
            assert_eq!(r.push(k, *off, *more, data, t(0)), Ok(None), "offset {off}");
            assert!(r.held_bytes() <= r.limits().max_total_bytes);
        }
        let out = r
            .push(k, last.0, last.1, &last.2, t(0))
            .unwrap()
            .expect("complete");
        assert_eq!(r.held_bytes(), 0);
        assert_eq!(r.in_progress(), 0);
        out
    }

    #[test]
    fn fragments_split() {
        assert_eq!(fragments(0, 1500).collect::<Vec<_>>(), [(0, 0, false)]);
        assert_eq!(
            fragments(1480, 1500).collect::<Vec<_>>(),
            [(0, 1480, false)]
        );
        assert_eq!(
            fragments(1481, 1500).collect::<Vec<_>>(),
            [(0, 1480, true), (1480, 1, false)]
        );
        assert_eq!(
            fragments(1481, 1501).collect::<Vec<_>>(),
            [(0, 1481, false)]
        );
        // 1482 does not fit 1481, and 1481 rounds down to 1480.
        assert_eq!(
            fragments(1482, 1501).collect::<Vec<_>>(),
            [(0, 1480, true), (1480, 2, false)]
        );
        // Clamped to 68: 48 bytes per fragment.
        assert_eq!(
            fragments(100, 0).collect::<Vec<_>>(),
            [(0, 48, true), (48, 48, true), (96, 4, false)]
        );
        for mtu in [68, 576, 1280, 1500, 9000, 65535] {
            for len in [1, 47, 48, 49, 1472, 65507, MAX_PAYLOAD] {
                let frags: Vec<_> = fragments(len, mtu).collect();
                let mut next = 0;
                for (i, &(off, flen, more)) in frags.iter().enumerate() {
                    assert_eq!(off, next);
                    assert_eq!(off % 8, 0);
                    assert!(flen + 20 <= mtu.max(68));
                    assert_eq!(more, i + 1 < frags.len());
                    if more {
                        assert_eq!(flen % 8, 0);
                        assert!(flen > 0);
                    }
                    next += flen;
                }
                assert_eq!(next, len);
            }
        }
        assert_eq!(fragments(65507, 1500).count(), 45);
        assert_eq!(fragments(65507, 576).count(), 119);
    }

    #[test]
    fn in_order_reverse_and_random() {
        let data = payload(65507);
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        for mtu in [1500, 576] {
            let frags = split(&data, mtu);
            let mut r = Reassembler::new(Limits::default());
            assert_eq!(reassemble(&mut r, key(1), &frags), data);

            let mut rev = frags.clone();
            rev.reverse();
            assert_eq!(reassemble(&mut r, key(2), &rev), data);

            for round in 0..20 {
                let mut shuffled = frags.clone();
                rng.shuffle(&mut shuffled);
                assert_eq!(reassemble(&mut r, key(3 + round), &shuffled), data);
            }
            assert_eq!(r.stats().reassembled, 22);
        }
    }

    #[test]
    fn largest_payload() {
        let data = payload(MAX_PAYLOAD);
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(reassemble(&mut r, key(1), &split(&data, 1500)), data);
    }

    #[test]
    fn interleaved_datagrams() {
        let a = payload(5000);
        let b: Vec<u8> = payload(4000).iter().map(|x| !x).collect();
        let (fa, fb) = (split(&a, 1500), split(&b, 1500));
        let mut r = Reassembler::new(Limits::default());
        let mut done = Vec::new();
        for i in 0..fa.len().max(fb.len()) {
            for (k, f) in [(key(1), &fa), (key(2), &fb)] {
                if let Some((off, more, d)) = f.get(i) {
                    if let Some(out) = r.push(k, *off, *more, d, t(0)).unwrap() {
                        done.push(out);
                    }
                }
            }
        }
        assert_eq!(done, [b, a]);
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn unfragmented_payload_passes_through() {
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(
            r.push(key(1), 0, false, b"whole", t(0)),
            Ok(Some(b"whole".to_vec()))
        );
        assert_eq!(r.push(key(1), 0, false, b"", t(0)), Ok(Some(Vec::new())));
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn empty_last_fragment() {
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(r.push(key(1), 16, false, b"", t(0)), Ok(None));
        assert_eq!(
            r.push(key(1), 0, true, &[1; 16], t(0)),
            Ok(Some(vec![1; 16]))
        );
        assert_eq!(r.held_bytes(), 0);
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn duplicates_ignored() {
        let data = payload(4000);
        let frags = split(&data, 1500);
        let mut r = Reassembler::new(Limits::default());
        let (off, more, d) = &frags[0];
        assert_eq!(r.push(key(1), *off, *more, d, t(0)), Ok(None));
        let held = r.held_bytes();
        assert_eq!(held, d.len() + PIECE_OVERHEAD);
        for _ in 0..3 {
            assert_eq!(r.push(key(1), *off, *more, d, t(0)), Ok(None));
            assert_eq!(r.held_bytes(), held);
        }
        let (off, more, d) = &frags[2];
        assert_eq!(r.push(key(1), *off, *more, d, t(0)), Ok(None));
        assert_eq!(r.push(key(1), *off, *more, d, t(0)), Ok(None));
        assert_eq!(r.stats().duplicates, 4);
        let (off, more, d) = &frags[1];
        assert_eq!(r.push(key(1), *off, *more, d, t(0)), Ok(Some(data)));
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn overlapping_identical_accepted() {
        let data = payload(64);
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(r.push(key(1), 8, true, &data[8..24], t(0)), Ok(None));
        assert_eq!(r.push(key(1), 40, true, &data[40..48], t(0)), Ok(None));
        // Covers both pieces and the gaps around and between them.
        assert_eq!(r.push(key(1), 0, true, &data[0..56], t(0)), Ok(None));
        // Only the gaps are stored: 0..8, 24..40 and 48..56, so 56 bytes in 5
        // pieces.
        assert_eq!(r.held_bytes(), 56 + 5 * PIECE_OVERHEAD);
        assert_eq!(
            r.push(key(1), 48, false, &data[48..64], t(0)),
            Ok(Some(data))
        );
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn overlapping_different_discards() {
        let data = payload(64);
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(r.push(key(1), 0, true, &data[0..16], t(0)), Ok(None));
        assert_eq!(r.push(key(2), 0, true, &data[0..16], t(0)), Ok(None));
        let mut evil = data[8..32].to_vec();
        evil[3] ^= 1;
        assert_eq!(r.push(key(1), 8, true, &evil, t(0)), Err(FragDrop::Overlap));
        // Datagram 1 is gone, datagram 2 untouched.
        assert_eq!(r.in_progress(), 1);
        assert_eq!(r.held_bytes(), 16 + PIECE_OVERHEAD);
        assert_eq!(r.stats().overlap, 1);
        // A new datagram 1 starts from scratch.
        assert_eq!(r.push(key(1), 16, false, &data[16..64], t(0)), Ok(None));
        assert_eq!(
            r.push(key(1), 0, true, &data[0..16], t(0)),
            Ok(Some(data.clone()))
        );
        assert_eq!(
            r.push(key(2), 16, false, &data[16..64], t(0)),
            Ok(Some(data))
        );
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn invalid_fragments() {
        let mut r = Reassembler::new(Limits::default());
        let big = vec![0u8; 2000];
        // Past 65515 in total.
        assert_eq!(
            r.push(key(1), 65512, false, &big[..4], t(0)),
            Err(FragDrop::Invalid)
        );
        assert_eq!(
            r.push(key(1), 64512, true, &big[..1008], t(0)),
            Err(FragDrop::Invalid)
        );
        assert_eq!(
            r.push(key(1), 0, false, &vec![0; MAX_PAYLOAD + 1], t(0)),
            Err(FragDrop::Invalid)
        );
        assert_eq!(r.push(key(1), 65512, false, &big[..3], t(0)), Ok(None));
        // Non-final: not a multiple of 8, or empty.
        assert_eq!(
            r.push(key(2), 0, true, &big[..9], t(0)),
            Err(FragDrop::Invalid)
        );
        assert_eq!(
            r.push(key(2), 0, true, &big[..1], t(0)),
            Err(FragDrop::Invalid)
        );
        assert_eq!(r.push(key(2), 8, true, &[], t(0)), Err(FragDrop::Invalid));
        // Offset not a multiple of 8.
        assert_eq!(
            r.push(key(2), 4, false, &big[..8], t(0)),
            Err(FragDrop::Invalid)
        );
        assert_eq!(r.stats().invalid, 7);
        // Stateless rejections leave datagrams alone.
        assert_eq!(r.in_progress(), 1);
        assert_eq!(r.held_bytes(), 3 + PIECE_OVERHEAD);
    }

    #[test]
    fn fragment_beyond_known_end_discards() {
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(r.push(key(1), 16, false, &[1; 8], t(0)), Ok(None));
        assert_eq!(
            r.push(key(1), 24, true, &[1; 8], t(0)),
            Err(FragDrop::Invalid)
        );
        assert_eq!((r.in_progress(), r.held_bytes()), (0, 0));
        // Straddling the end.
        assert_eq!(r.push(key(1), 16, false, &[1; 8], t(0)), Ok(None));
        assert_eq!(
            r.push(key(1), 8, true, &[1; 24], t(0)),
            Err(FragDrop::Invalid)
        );
        assert_eq!((r.in_progress(), r.held_bytes()), (0, 0));
    }

    #[test]
    fn second_different_last_fragment_discards() {
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(r.push(key(1), 16, false, &[1; 8], t(0)), Ok(None));
        assert_eq!(r.push(key(1), 16, false, &[1; 8], t(0)), Ok(None)); // duplicate
        assert_eq!(
            r.push(key(1), 16, false, &[1; 7], t(0)),
            Err(FragDrop::Invalid)
        );
        assert_eq!((r.in_progress(), r.held_bytes()), (0, 0));
        assert_eq!(r.push(key(1), 16, false, &[1; 8], t(0)), Ok(None));
        assert_eq!(
            r.push(key(1), 32, false, &[1; 8], t(0)),
            Err(FragDrop::Invalid)
        );
        assert_eq!((r.in_progress(), r.held_bytes()), (0, 0));
        // A last fragment ending before bytes already held.
        assert_eq!(r.push(key(1), 32, true, &[1; 8], t(0)), Ok(None));
        assert_eq!(
            r.push(key(1), 16, false, &[1; 8], t(0)),
            Err(FragDrop::Invalid)
        );
        assert_eq!((r.in_progress(), r.held_bytes()), (0, 0));
    }

    #[test]
    fn max_total_bytes() {
        let limits = Limits {
            max_total_bytes: 10_000,
            ..Limits::default()
        };
        let mut r = Reassembler::new(limits);
        let chunk = [5u8; 1480];
        let cost = 1480 + PIECE_OVERHEAD;
        let fit = 10_000 / cost;
        // Datagram i starts at time i: each newcomer past `fit` evicts the
        // least recently touched one, so the newest `fit` stay.
        for i in 0..100u16 {
            assert_eq!(r.push(key(i), 0, true, &chunk, t(u64::from(i))), Ok(None));
            assert!(r.held_bytes() <= 10_000);
        }
        assert_eq!(r.held_bytes(), fit * cost);
        assert_eq!(r.in_progress(), fit);
        assert_eq!(r.stats().evicted, 100 - u64::try_from(fit).unwrap());
        assert_eq!(r.stats().limit, 0);
        assert_eq!(r.take_lost(), (0, 100 - u64::try_from(fit).unwrap()));
        assert_eq!(r.take_lost(), (0, 0));
        // The survivors can still complete (nothing to store).
        assert_eq!(
            r.push(key(99), 1480, false, &[], t(100)),
            Ok(Some(chunk.to_vec()))
        );
        assert_eq!(r.held_bytes(), (fit - 1) * cost);
        // A datagram that keeps growing is touched last and survives
        // newcomers; the idle one beside it goes.
        let (old, busy) = (98u16, 97u16);
        assert_eq!(r.push(key(busy), 1480, true, &chunk, t(200)), Ok(None));
        assert_eq!(r.push(key(500), 0, true, &chunk, t(201)), Ok(None));
        assert_eq!(r.push(key(501), 0, true, &chunk, t(202)), Ok(None));
        assert_eq!(
            r.push(key(busy), 2960, false, &chunk, t(203)),
            Ok(Some([chunk; 3].concat()))
        );
        // 94, 95 and 96 (touched least recently) made room for 500, 501
        // and busy's last fragment; 98 is still there.
        assert_eq!(
            r.push(key(old), 1480, false, &chunk, t(204)),
            Ok(Some([chunk; 2].concat()))
        );
        // 96 was evicted: its next fragment starts a new datagram.
        assert_eq!(r.push(key(96), 1480, false, &chunk, t(205)), Ok(None));
        assert_eq!(r.take_lost(), (0, 3));
        assert!(r.held_bytes() <= 10_000);
        // A fragment larger than the whole budget is refused outright.
        let tiny = Limits {
            max_total_bytes: 1000,
            ..Limits::default()
        };
        let mut r = Reassembler::new(tiny);
        assert_eq!(r.push(key(1), 0, true, &chunk, t(0)), Err(FragDrop::Limit));
        assert_eq!((r.in_progress(), r.held_bytes()), (0, 0));
        assert_eq!(r.stats().limit, 1);
        // Expiry comes before eviction.
        let mut r = Reassembler::new(limits);
        for i in 0..u16::try_from(fit).unwrap() {
            assert_eq!(r.push(key(i), 0, true, &chunk, t(0)), Ok(None));
        }
        assert_eq!(
            r.push(key(300), 0, true, &chunk, t(limits.timeout_us)),
            Ok(None)
        );
        assert_eq!(r.in_progress(), 1);
        assert_eq!(r.held_bytes(), cost);
        assert_eq!(r.take_lost(), (u64::try_from(fit).unwrap(), 0));
    }

    #[test]
    fn max_datagrams() {
        let limits = Limits {
            max_datagrams: 4,
            ..Limits::default()
        };
        let mut r = Reassembler::new(limits);
        for i in 0..4 {
            assert_eq!(r.push(key(i), 0, true, &[0; 8], t(u64::from(i))), Ok(None));
        }
        // Datagram 0 grows: datagram 1 is now the least recently touched.
        assert_eq!(r.push(key(0), 8, true, &[0; 8], t(10)), Ok(None));
        assert_eq!(r.push(key(9), 0, true, &[0; 8], t(11)), Ok(None));
        assert_eq!(r.in_progress(), 4);
        assert_eq!(r.stats().evicted, 1);
        assert_eq!(r.held_bytes(), 5 * (8 + PIECE_OVERHEAD));
        assert_eq!(
            r.push(key(0), 16, false, &[0; 1], t(12)),
            Ok(Some(vec![0; 17]))
        );
        // Datagram 1 is gone: its last fragment starts a new datagram.
        assert_eq!(r.push(key(1), 8, false, &[0; 1], t(13)), Ok(None));
        assert_eq!(r.in_progress(), 4);
        assert_eq!(
            r.push(key(9), 8, false, &[0; 1], t(14)),
            Ok(Some(vec![0; 9]))
        );
    }

    /// A lost fragment's partner must not be merged with a datagram that
    /// reuses its identification after the 16-bit counter wrapped.
    #[test]
    fn identification_reused_after_wrap_starts_afresh() {
        let mut r = Reassembler::new(Limits::default());
        let old = payload(2000);
        let new: Vec<u8> = old.iter().map(|b| b ^ 0x55).collect();
        // Only the first fragment of datagram 7 arrives.
        let (off, more, bytes) = &split(&old, 1500)[0];
        assert_eq!(r.push(key(7), *off, *more, bytes, t(0)), Ok(None));
        // Many complete datagrams pass (other identifications).
        let filler = split(&payload(1600), 1500);
        let mut i = 0u16;
        while r.pushes <= STALE_PUSHES {
            i = i % 60_000 + 1000;
            for (off, more, bytes) in &filler {
                let _ = r.push(key(i), *off, *more, bytes, t(0)).unwrap();
            }
            i += 1;
        }
        assert_eq!(r.in_progress(), 1);
        // Identification 7 again: the new datagram, whole and unmixed.
        let frags = split(&new, 1500);
        assert_eq!(reassemble(&mut r, key(7), &frags), new);
        assert_eq!(r.stats().evicted, 1);
        assert_eq!(r.stats().overlap, 0);
        // A datagram that is touched in time is kept.
        assert_eq!(r.push(key(8), *off, *more, bytes, t(0)), Ok(None));
        let (off2, more2, bytes2) = &split(&old, 1500)[1];
        assert_eq!(
            r.push(key(8), *off2, *more2, bytes2, t(0)),
            Ok(Some(old.clone()))
        );
    }

    /// The loss netperf's UDP_STREAM met: the TAP queue drops one fragment
    /// of many 65507-byte datagrams. The dead datagrams must not block the
    /// complete ones that follow.
    #[test]
    fn datagrams_missing_a_fragment_do_not_block_later_ones() {
        let limits = Limits::default();
        let mut r = Reassembler::new(limits);
        let data = payload(65507 + 8);
        let frags = split(&data, 1500);
        let mut now = 0;
        let mut complete = 0;
        for ident in 0..1000u16 {
            // Every other datagram loses one fragment (a different one).
            let lost = (ident % 2 == 0).then(|| usize::from(ident) % frags.len());
            for (i, (off, more, bytes)) in frags.iter().enumerate() {
                now += 1;
                if Some(i) == lost {
                    continue;
                }
                if let Some(whole) = r.push(key(ident), *off, *more, bytes, t(now)).unwrap() {
                    assert_eq!(whole, data);
                    complete += 1;
                }
                assert!(r.held_bytes() <= limits.max_total_bytes);
                assert!(r.in_progress() <= limits.max_datagrams);
            }
        }
        assert_eq!(complete, 500);
        assert_eq!(r.stats().limit, 0);
        let (expired, evicted) = r.take_lost();
        assert_eq!(expired, 0);
        assert_eq!(evicted + u64::try_from(r.in_progress()).unwrap(), 500);
    }

    #[test]
    fn max_frags_per_datagram() {
        let limits = Limits {
            max_frags_per_datagram: 4,
            ..Limits::default()
        };
        let mut r = Reassembler::new(limits);
        for i in 0..4u16 {
            assert_eq!(r.push(key(1), i * 16, true, &[0; 8], t(0)), Ok(None));
        }
        assert_eq!(r.push(key(2), 0, true, &[0; 8], t(0)), Ok(None));
        assert_eq!(
            r.push(key(1), 64, true, &[0; 8], t(0)),
            Err(FragDrop::Limit)
        );
        // Datagram 1 can never complete: it is gone, datagram 2 stays.
        assert_eq!(r.in_progress(), 1);
        assert_eq!(r.held_bytes(), 8 + PIECE_OVERHEAD);
        // A fragment bridging pieces counts each gap it fills.
        for i in 0..3u16 {
            assert_eq!(r.push(key(3), i * 16, true, &[0; 8], t(0)), Ok(None));
        }
        assert_eq!(
            r.push(key(3), 0, true, &[0; 40], t(0)),
            Err(FragDrop::Limit)
        );
        assert_eq!(r.in_progress(), 1);
    }

    #[test]
    fn timeout_expiry() {
        let limits = Limits::default();
        let mut r = Reassembler::new(limits);
        assert_eq!(r.next_deadline(), None);
        assert_eq!(r.push(key(1), 0, true, &[0; 8], t(SECOND)), Ok(None));
        assert_eq!(r.push(key(2), 0, true, &[0; 8], t(2 * SECOND)), Ok(None));
        // Later fragments do not extend the age.
        assert_eq!(r.push(key(1), 8, true, &[0; 8], t(3 * SECOND)), Ok(None));
        let first = t(SECOND + limits.timeout_us);
        assert_eq!(r.next_deadline(), Some(first));
        assert_eq!(r.expire(t(first.0 - 1)), 0);
        assert_eq!(r.expire(first), 1);
        assert_eq!(r.held_bytes(), 8 + PIECE_OVERHEAD);
        assert_eq!(r.next_deadline(), Some(t(2 * SECOND + limits.timeout_us)));
        // A fragment for a timed-out datagram starts a new one.
        assert_eq!(
            r.push(key(2), 8, false, &[0; 8], t(2 * SECOND + limits.timeout_us)),
            Ok(None)
        );
        assert_eq!(r.held_bytes(), 8 + PIECE_OVERHEAD);
        assert_eq!(r.stats().expired, 2);
        assert_eq!(r.expire(t(u64::MAX)), 1);
        assert_eq!(
            (r.held_bytes(), r.in_progress(), r.next_deadline()),
            (0, 0, None)
        );
    }

    #[test]
    fn tiny_fragment_flood_stays_bounded() {
        let limits = Limits::default();
        let mut r = Reassembler::new(limits);
        let mut rng = Rng(42);
        let mut accepted = 0;
        for i in 0..200_000u32 {
            let ident = u16::try_from(rng.below(1000)).unwrap();
            let offset = u16::try_from(rng.below(8000) * 8).unwrap();
            let now = t(u64::from(i) * 10);
            if r.push(key(ident), offset, true, &[0xaa; 8], now).is_ok() {
                accepted += 1;
            }
            assert!(r.held_bytes() <= limits.max_total_bytes);
            assert!(r.in_progress() <= limits.max_datagrams);
        }
        assert!(accepted > 0);
        assert!(r.stats().evicted > 0);
        r.expire(t(u64::MAX));
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn random_fragments_keep_accounting_exact() {
        let limits = Limits {
            max_total_bytes: 20_000,
            max_datagrams: 8,
            max_frags_per_datagram: 16,
            timeout_us: 1000,
        };
        let mut r = Reassembler::new(limits);
        let mut rng = Rng(7);
        for i in 0..50_000u64 {
            let ident = u16::try_from(rng.below(12)).unwrap();
            let offset = u16::try_from(rng.below(64) * 8).unwrap();
            let more = rng.below(4) != 0;
            let len = if more {
                8 * rng.below(8)
            } else {
                rng.below(70)
            };
            // Few distinct byte values, so overlaps often agree.
            let fill = u8::try_from(rng.below(2)).unwrap();
            let _ = r.push(key(ident), offset, more, &vec![fill; len], t(i));
            assert!(r.held_bytes() <= limits.max_total_bytes);
            if i % 1000 == 0 {
                r.expire(t(i));
            }
        }
        let stats = r.stats();
        assert!(
            stats.reassembled > 0 && stats.overlap > 0 && stats.invalid > 0 && stats.evicted > 0
        );
        r.expire(t(u64::MAX));
        assert_eq!((r.held_bytes(), r.in_progress()), (0, 0));
    }
}
