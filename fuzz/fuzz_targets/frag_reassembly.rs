//! Fuzz IPv4 reassembly: the input is a sequence of 5-byte records, each
//! pushing one fragment; the bounds must hold after every push.
//!
//! Record: `[flags, ident, offset_hi, offset_lo, len8]`
//! - flags bit 0: MF; bit 1: keep the offset unaligned; bit 2: corrupt the
//!   bytes; bits 3-4: clock step (0, 1 ms, 1 s, 20 s and `expire`); bits 5-7: bytes taken
//!   off `len8 * 8`.
//! - ident: low 3 bits (8 datagrams compete for 4 slots).
//!
//! Fragment bytes are a function of (ident, absolute offset) unless
//! corrupted, so a datagram reassembled from clean fragments is checked
//! byte for byte.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use uipd::stack::frag::{FragKey, Limits, MAX_PAYLOAD, Reassembler};
use uipd::stack::time::Instant;

fn pattern(ident: u16, at: usize) -> u8 {
    let [lo, hi] = u16::try_from(at % 65521).unwrap_or(0).to_le_bytes();
    lo ^ hi.rotate_left(3) ^ u8::try_from(ident).unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_total_bytes: 16 << 10,
        max_datagrams: 4,
        max_frags_per_datagram: 32,
        timeout_us: 5_000_000,
    };
    let mut r = Reassembler::new(limits);
    let mut now = Instant::ZERO;
    let mut corrupted = false;
    for rec in data.chunks_exact(5) {
        let &[flags, ident, off_hi, off_lo, len8] = rec else {
            continue;
        };
        let more = flags & 1 != 0;
        let mut offset = u16::from_be_bytes([off_hi, off_lo]);
        if flags & 2 == 0 {
            offset &= !7;
        }
        let corrupt = flags & 4 != 0;
        corrupted |= corrupt;
        now = Instant(now.0 + [0, 1_000, 1_000_000, 20_000_000][usize::from((flags >> 3) & 3)]);
        let len = (usize::from(len8) * 8).saturating_sub(usize::from(flags >> 5));
        let ident = u16::from(ident & 7);
        let start = usize::from(offset);
        let payload: Vec<u8> = (start..start + len)
            .map(|at| pattern(ident, at) ^ u8::from(corrupt))
            .collect();
        let key = FragKey {
            src: Ipv4Addr::new(10, 0, 0, 2).into(),
            dst: Ipv4Addr::new(10, 0, 0, 1).into(),
            proto: 17,
            ident: ident.into(),
        };
        if let Ok(Some(whole)) = r.push(key, offset, more, &payload, now) {
            assert!(whole.len() <= MAX_PAYLOAD);
            if !corrupted {
                for (at, &b) in whole.iter().enumerate() {
                    assert_eq!(b, pattern(ident, at));
                }
            }
        }
        assert!(r.held_bytes() <= limits.max_total_bytes);
        assert!(r.in_progress() <= limits.max_datagrams);
        if flags & 0x18 == 0x18 {
            // After a long clock step, reap: nothing left may be overdue.
            r.expire(now);
            assert!(r.next_deadline().is_none_or(|d| d > now));
        }
    }
    r.expire(Instant(u64::MAX));
    assert_eq!(r.held_bytes(), 0);
    assert_eq!(r.in_progress(), 0);
});
