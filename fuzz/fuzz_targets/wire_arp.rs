//! ARP: parse, re-emit into stale buffers, re-parse, compare.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uipd::stack::wire::{ArpPacket, ArpRepr};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = ArpPacket::new_checked(data) else {
        return;
    };
    let Ok(repr) = ArpRepr::parse(&packet) else {
        return;
    };
    let [a, b] = [0x00u8, 0xff].map(|fill| {
        let mut buf = vec![fill; repr.buffer_len()];
        repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        buf
    });
    assert_eq!(a, b, "emit left stale bytes");
    assert_eq!(a[..], data[..a.len()]);
    let again = ArpRepr::parse(&ArpPacket::new_checked(&a[..]).unwrap()).unwrap();
    assert_eq!(again, repr);
});
