//! QEMU stream framing (`uipd --socket`): a byte stream split at arbitrary
//! points must give the same frames, or the same error, as the whole
//! stream at once; lengths outside the bounds are errors, never panics or
//! huge allocations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uipd::dataplane::stream::{Deframer, MAX_FRAME, MIN_FRAME};

fn run(pieces: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
    let mut d = Deframer::default();
    let mut frames = Vec::new();
    for p in pieces {
        d.extend(p);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!((MIN_FRAME..=MAX_FRAME).contains(&f.len()));
                    frames.push(f.to_vec());
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, d.finish().is_err())
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let whole = run(&[stream]);
    let pieces: Vec<&[u8]> = stream.chunks(usize::from(step).max(1)).collect();
    assert_eq!(run(&pieces), whole);
});
