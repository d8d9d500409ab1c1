//! ICMPv4: parse, re-emit into stale buffers, re-parse, compare.
//!
//! Byte 0 is a control byte: bit 0 set = fix up the checksum first, so the
//! fuzzer gets past the checksum check half of the time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uipd::stack::wire::{Icmpv4Packet, Icmpv4Repr};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let mut input = data.to_vec();
    let Ok(mut packet) = Icmpv4Packet::new_checked(&mut input[..]) else {
        return;
    };
    if ctl & 1 != 0 {
        packet.fill_checksum();
    }
    let packet = Icmpv4Packet::new_checked(&input[..]).unwrap();
    let _ = (packet.echo_ident(), packet.next_hop_mtu(), packet.data());
    let Ok(repr) = Icmpv4Repr::parse(&packet) else {
        return;
    };
    assert_eq!(repr.buffer_len(), input.len());
    let [a, b] = [0x00u8, 0xff].map(|fill| {
        let mut buf = vec![fill; repr.buffer_len()];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
        buf
    });
    assert_eq!(a, b, "emit left stale bytes");
    let out = Icmpv4Packet::new_checked(&a[..]).unwrap();
    assert_eq!(Icmpv4Repr::parse(&out).unwrap(), repr);
});
