//! Tests of IPv4/IPv6 reassembly and fragmentation: order, overlap, limits,
//! timeouts and eviction.

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

/// What the module docs promise of every datagram in progress, and that
/// `held` is the sum of what they are charged.
fn check_invariants(r: &Reassembler) {
    let mut held = 0;
    for (_, dg) in &r.datagrams {
        // Charged for its whole buffer, and for each piece stored.
        assert_eq!(dg.charged, dg.buf.capacity() + dg.pieces * PIECE_OVERHEAD);
        assert!(dg.pieces >= dg.ranges.len());
        assert!(dg.pieces <= r.limits().max_frags_per_datagram);
        for pair in dg.ranges.windows(2) {
            // Sorted, disjoint and not touching.
            assert!(pair[0].end < pair[1].start, "{:?}", dg.ranges);
        }
        assert!(dg.ranges.iter().all(|r| !r.is_empty()));
        assert_eq!(dg.buf.len(), dg.ranges.last().map_or(0, |r| r.end));
        assert_eq!(dg.covered, dg.ranges.iter().map(Range::len).sum::<usize>());
        if let Some(end) = dg.end {
            assert!(dg.buf.len() <= end && dg.covered < end);
        }
        held += dg.charged;
    }
    assert_eq!(r.held_bytes(), held);
    assert!(r.in_progress() <= r.limits().max_datagrams);
}

/// Push every fragment; the last push, and only it, completes.
fn reassemble(r: &mut Reassembler, k: FragKey, frags: &[Frag]) -> Vec<u8> {
    let (last, rest) = frags.split_last().unwrap();
    for (off, more, data) in rest {
        assert_eq!(r.push(k, *off, *more, data, t(0)), Ok(None), "offset {off}");
        assert!(r.held_bytes() <= r.limits().max_total_bytes);
        check_invariants(r);
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
    // Only the gaps are new: 0..8, 24..40 and 48..56, so 5 pieces, in a
    // buffer grown to 24, 48 (twice 24), then 96 bytes (twice 48).
    assert_eq!(r.held_bytes(), 96 + 5 * PIECE_OVERHEAD);
    check_invariants(&r);
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
    // The lone tail fragment pays for the buffer up to its end.
    assert_eq!(r.held_bytes(), MAX_PAYLOAD + PIECE_OVERHEAD);
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
    // Its buffer reaches from 0 to the end the fragment sets.
    assert_eq!(r.held_bytes(), 16 + PIECE_OVERHEAD);
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
        check_invariants(&r);
        if i % 1000 == 0 {
            r.expire(t(i));
        }
    }
    let stats = r.stats();
    assert!(stats.reassembled > 0 && stats.overlap > 0 && stats.invalid > 0 && stats.evicted > 0);
    r.expire(t(u64::MAX));
    assert_eq!((r.held_bytes(), r.in_progress()), (0, 0));
}

/// Orders other than forward and backward: odd fragments first, from the
/// middle outwards, last first. Every one yields the exact bytes, and
/// pieces count the fragments stored whatever the ranges merged into.
#[test]
fn out_of_order_exact_bytes() {
    let data = payload(65507);
    let frags = split(&data, 1500);
    let n = frags.len();
    let odd_first: Vec<usize> = (1..n).step_by(2).chain((0..n).step_by(2)).collect();
    let middle_out: Vec<usize> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                n / 2 + i / 2
            } else {
                n / 2 - 1 - i / 2
            }
        })
        .collect();
    let last_first: Vec<usize> = std::iter::once(n - 1).chain(0..n - 1).collect();
    let mut r = Reassembler::new(Limits::default());
    for (ident, order) in [odd_first, middle_out, last_first].iter().enumerate() {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        let shuffled: Vec<Frag> = order.iter().map(|&i| frags[i].clone()).collect();
        let k = key(u16::try_from(ident).unwrap());
        // Stop one short to look inside.
        for (off, more, bytes) in &shuffled[..n - 1] {
            assert_eq!(r.push(k, *off, *more, bytes, t(0)), Ok(None));
        }
        let dg = &r.datagrams[0].1;
        assert_eq!(dg.pieces, n - 1);
        assert!(dg.ranges.len() <= 2);
        check_invariants(&r);
        let (off, more, bytes) = &shuffled[n - 1];
        assert_eq!(r.push(k, *off, *more, bytes, t(0)), Ok(Some(data.clone())));
        assert_eq!((r.held_bytes(), r.in_progress()), (0, 0));
    }
    // In order, one range; the buffer grows by doubling, so it is
    // charged less than twice what it holds.
    for (off, more, bytes) in &frags[..n - 1] {
        assert_eq!(r.push(key(9), *off, *more, bytes, t(0)), Ok(None));
        let dg = &r.datagrams[0].1;
        assert_eq!(dg.ranges.len(), 1);
        assert_eq!(dg.ranges[0], 0..usize::from(*off) + bytes.len());
        assert!(dg.buf.capacity() < 2 * dg.buf.len());
    }
    let (off, more, bytes) = &frags[n - 1];
    assert_eq!(
        r.push(key(9), *off, *more, bytes, t(0)),
        Ok(Some(data.clone()))
    );

    // Many datagrams at once, each in its own random order, interleaved.
    let mut rng = Rng(99);
    let mut orders: Vec<Vec<usize>> = (0..20)
        .map(|_| {
            let mut o: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut o);
            o
        })
        .collect();
    let mut done = 0;
    for step in 0..n {
        for (ident, order) in orders.iter_mut().enumerate() {
            let (off, more, bytes) = &frags[order[step]];
            let k = key(100 + u16::try_from(ident).unwrap());
            if let Some(whole) = r.push(k, *off, *more, bytes, t(0)).unwrap() {
                assert_eq!(whole, data);
                done += 1;
            }
        }
        check_invariants(&r);
    }
    assert_eq!(done, 20);
    assert_eq!((r.held_bytes(), r.in_progress()), (0, 0));
}

/// A lone fragment far into the datagram makes us allocate a buffer up
/// to it: it is charged for that buffer, not for its 8 bytes, and the
/// limits see it so.
#[test]
fn hostile_tail_fragment_is_charged_for_its_buffer() {
    let mut r = Reassembler::new(Limits::default());
    assert_eq!(r.push(key(1), 65000, false, &[7; 8], t(0)), Ok(None));
    assert!(r.held_bytes() >= 65008);
    assert_eq!(r.held_bytes(), 65008 + PIECE_OVERHEAD);
    // Not the last fragment: the buffer reaches its end all the same.
    assert_eq!(r.push(key(2), 64000, true, &[7; 1480], t(0)), Ok(None));
    assert_eq!(r.held_bytes(), 65008 + 65480 + 2 * PIECE_OVERHEAD);
    // The bytes before it, once they come, cost only their pieces.
    let before = r.held_bytes();
    assert_eq!(r.push(key(1), 0, true, &[7; 64000], t(0)), Ok(None));
    assert_eq!(r.held_bytes(), before + PIECE_OVERHEAD);
    assert_eq!(
        r.push(key(1), 64000, true, &[7; 1000], t(0)),
        Ok(Some(vec![7; 65008]))
    );
    assert_eq!(r.held_bytes(), 65480 + PIECE_OVERHEAD);
    check_invariants(&r);

    // A flood of them is bounded by the bytes they make us allocate:
    // each newcomer evicts the oldest.
    let limits = Limits {
        max_total_bytes: 1 << 20,
        ..Limits::default()
    };
    let cost = 65008 + PIECE_OVERHEAD;
    let fit = limits.max_total_bytes / cost;
    let mut r = Reassembler::new(limits);
    for i in 0..100u16 {
        assert_eq!(r.push(key(i), 65000, false, &[7; 8], t(0)), Ok(None));
        assert!(r.held_bytes() <= limits.max_total_bytes);
        check_invariants(&r);
    }
    assert_eq!(r.in_progress(), fit);
    assert_eq!(r.held_bytes(), fit * cost);
    assert_eq!(r.take_lost(), (0, 100 - u64::try_from(fit).unwrap()));
    // The bytes before the oldest survivor's tail fit in its buffer; a
    // newcomer then evicts the least recently touched, not that one.
    let oldest = 100 - u16::try_from(fit).unwrap();
    assert_eq!(r.push(key(oldest), 0, true, &[7; 64000], t(0)), Ok(None));
    assert_eq!(r.push(key(0), 65000, false, &[7; 8], t(0)), Ok(None));
    assert_eq!(r.take_lost(), (0, 1));
    assert_eq!(
        r.push(key(oldest), 64000, true, &[7; 1000], t(0)),
        Ok(Some(vec![7; 65008]))
    );
    // Its neighbour was the one evicted: its fragment starts afresh.
    assert_eq!(
        r.push(key(oldest + 1), 0, true, &[7; 64000], t(0)),
        Ok(None)
    );
    assert_eq!(
        r.push(key(oldest + 1), 64000, true, &[7; 1000], t(0)),
        Ok(None)
    );
    check_invariants(&r);
    r.expire(t(u64::MAX));
    assert_eq!((r.held_bytes(), r.in_progress()), (0, 0));

    // Where its buffer cannot fit even in an empty table it is refused,
    // and the datagram it belongs to with it.
    let small = Limits {
        max_total_bytes: 60_000,
        ..Limits::default()
    };
    let mut r = Reassembler::new(small);
    assert_eq!(r.push(key(1), 0, true, &[7; 8], t(0)), Ok(None));
    assert_eq!(
        r.push(key(2), 65000, false, &[7; 8], t(0)),
        Err(FragDrop::Limit)
    );
    assert_eq!(
        r.push(key(1), 65000, false, &[7; 8], t(0)),
        Err(FragDrop::Limit)
    );
    assert_eq!(r.stats().limit, 2);
    // Datagram 1 was put back untouched.
    assert_eq!(r.in_progress(), 1);
    assert_eq!(r.held_bytes(), 8 + PIECE_OVERHEAD);
    check_invariants(&r);
    assert_eq!(
        r.push(key(1), 8, false, &[7; 8], t(0)),
        Ok(Some(vec![7; 16]))
    );
    assert_eq!((r.held_bytes(), r.in_progress()), (0, 0));
}

/// held_bytes goes back down by exactly what a datagram was charged,
/// whichever way it leaves: completed, discarded, evicted or expired.
#[test]
fn held_bytes_return_to_zero() {
    let limits = Limits {
        max_datagrams: 3,
        ..Limits::default()
    };
    let mut r = Reassembler::new(limits);
    let data = payload(6000);
    let frags = split(&data, 1500);
    let charged = |r: &Reassembler, k: FragKey| {
        r.datagrams
            .iter()
            .find(|(key, _)| *key == k)
            .map_or(0, |(_, dg)| dg.charged)
    };
    // Three datagrams, each missing its first fragment.
    for ident in 1..=3u16 {
        for (off, more, bytes) in frags.iter().rev().take(frags.len() - 1) {
            let now = t(u64::from(ident) * SECOND);
            assert_eq!(r.push(key(ident), *off, *more, bytes, now), Ok(None));
        }
    }
    check_invariants(&r);
    let all = r.held_bytes();
    // Completed.
    let c1 = charged(&r, key(1));
    assert!(c1 >= 6000 - 1480);
    let (off, more, bytes) = &frags[0];
    assert_eq!(
        r.push(key(1), *off, *more, bytes, t(3 * SECOND)),
        Ok(Some(data.clone()))
    );
    assert_eq!(r.held_bytes(), all - c1);
    // Discarded for a conflicting overlap.
    let c2 = charged(&r, key(2));
    assert_eq!(
        r.push(key(2), 1480, true, &[0; 8], t(3 * SECOND)),
        Err(FragDrop::Overlap)
    );
    assert_eq!(r.held_bytes(), all - c1 - c2);
    // Evicted: datagram 3 is the least recently touched of the three.
    let c3 = charged(&r, key(3));
    for ident in 4..=6u16 {
        assert_eq!(
            r.push(key(ident), 0, true, &[1; 8], t(4 * SECOND)),
            Ok(None)
        );
    }
    assert_eq!(r.take_lost(), (0, 1));
    assert_eq!(
        r.held_bytes(),
        all - c1 - c2 - c3 + 3 * (8 + PIECE_OVERHEAD)
    );
    check_invariants(&r);
    // Expired.
    assert_eq!(r.expire(t(4 * SECOND + limits.timeout_us)), 3);
    assert_eq!((r.held_bytes(), r.in_progress()), (0, 0));
    assert_eq!(r.take_lost(), (3, 0));
}

/// Overlaps are checked against the bytes received, wherever they sit in
/// the buffer, and never against the zeros between them.
#[test]
fn overlap_checked_against_received_bytes_only() {
    let data = payload(64);
    let mut r = Reassembler::new(Limits::default());
    // 0..16 are zeros in the buffer until something arrives there.
    assert_eq!(r.push(key(1), 16, true, &data[16..32], t(0)), Ok(None));
    assert_eq!(r.push(key(1), 48, false, &data[48..64], t(0)), Ok(None));
    assert_eq!(r.push(key(1), 8, true, &data[8..24], t(0)), Ok(None));
    check_invariants(&r);
    // Spans the gap 32..48 and differs from the held bytes at 50.
    let mut evil = data[24..56].to_vec();
    evil[26] ^= 0x80;
    assert_eq!(
        r.push(key(1), 24, true, &evil, t(0)),
        Err(FragDrop::Overlap)
    );
    assert_eq!((r.held_bytes(), r.in_progress()), (0, 0));
    assert_eq!(r.stats().overlap, 1);
    // Same again, differing inside the first held range instead.
    assert_eq!(r.push(key(1), 16, true, &data[16..32], t(0)), Ok(None));
    assert_eq!(r.push(key(2), 0, true, &data[0..8], t(0)), Ok(None));
    let mut evil = data[0..24].to_vec();
    evil[20] ^= 1;
    assert_eq!(r.push(key(1), 0, true, &evil, t(0)), Err(FragDrop::Overlap));
    // Datagram 2 untouched.
    assert_eq!(r.held_bytes(), 8 + PIECE_OVERHEAD);
    assert_eq!(r.stats().overlap, 2);
    // The matching fragments complete it, bytes exact.
    assert_eq!(r.push(key(1), 16, true, &data[16..32], t(0)), Ok(None));
    assert_eq!(r.push(key(1), 0, true, &data[0..24], t(0)), Ok(None));
    assert_eq!(r.push(key(1), 24, true, &data[24..56], t(0)), Ok(None));
    assert_eq!(r.stats().duplicates, 0);
    assert_eq!(
        r.push(key(1), 48, false, &data[48..64], t(0)),
        Ok(Some(data))
    );
    assert_eq!(r.datagrams.len(), 1);
}
