//! Ethernet: parse, re-emit into stale buffers, re-parse, compare.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uipd::stack::wire::{EthernetFrame, EthernetRepr};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = EthernetFrame::new_checked(data) else {
        assert!(data.len() < 14);
        return;
    };
    let Ok(repr) = EthernetRepr::parse(&frame) else {
        return;
    };
    // Emit into buffers holding different stale bytes: emit must write every
    // header byte, so both come out the same (and equal to the input).
    let [buf, other] = [0x00u8, 0xff].map(|fill| {
        let mut buf = vec![fill; repr.buffer_len() + frame.payload().len()];
        let mut out = EthernetFrame::new_unchecked(&mut buf[..]);
        repr.emit(&mut out);
        out.payload_mut().copy_from_slice(frame.payload());
        buf
    });
    assert_eq!(buf, other, "emit left stale bytes");
    assert_eq!(buf, data);
    let again = EthernetRepr::parse(&EthernetFrame::new_checked(&buf[..]).unwrap()).unwrap();
    assert_eq!(again, repr);
});
