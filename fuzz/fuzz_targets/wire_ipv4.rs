//! IPv4: parse, re-emit into stale buffers, re-parse, compare.
//!
//! Byte 0 is a control byte: bit 0 set = fix up the header checksum first,
//! so the fuzzer gets past the checksum check half of the time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uipd::stack::wire::{Ipv4Packet, Ipv4Repr};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let mut input = data.to_vec();
    let Ok(mut packet) = Ipv4Packet::new_checked(&mut input[..]) else {
        return;
    };
    if ctl & 1 != 0 {
        packet.fill_checksum();
    }
    let packet = Ipv4Packet::new_checked(&input[..]).unwrap();
    // Every getter must be in bounds on a checked packet.
    let _ = (
        packet.ident(),
        packet.dont_frag(),
        packet.is_fragment(),
        packet.checksum(),
    );
    let _ = (packet.header(), packet.tos());
    let Ok(repr) = Ipv4Repr::parse(&packet) else {
        return;
    };
    assert_eq!(repr.payload_len, packet.payload().len());
    let [a, b] = [0x00u8, 0xff].map(|fill| {
        let mut buf = vec![fill; repr.buffer_len() + repr.payload_len];
        let mut out = Ipv4Packet::new_unchecked(&mut buf[..]);
        repr.emit(&mut out);
        out.payload_mut().copy_from_slice(packet.payload());
        buf
    });
    assert_eq!(a, b, "emit left stale bytes");
    let out = Ipv4Packet::new_checked(&a[..]).unwrap();
    assert_eq!(Ipv4Repr::parse(&out).unwrap(), repr);
    assert_eq!(out.payload(), packet.payload());
    assert!(!out.dont_frag() && !out.is_fragment() && out.ident() == 0);
});
