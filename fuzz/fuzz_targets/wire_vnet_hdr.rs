//! virtio-net header: parse, re-emit into stale buffers, re-parse, compare.
//!
//! The whole input is the header plus the frame it precedes (the frame's
//! length bounds the partial-checksum offsets).
#![no_main]

use libfuzzer_sys::fuzz_target;
use uipd::stack::wire::vnet_hdr::HEADER_LEN;
use uipd::stack::wire::{VnetHdrPacket, VnetHdrRepr};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = VnetHdrPacket::new_checked(data) else {
        assert!(data.len() < HEADER_LEN);
        return;
    };
    let Ok(repr) = VnetHdrRepr::parse(&packet) else {
        return;
    };
    if repr.needs_csum() {
        let end = usize::from(repr.csum_start) + usize::from(repr.csum_offset) + 2;
        assert!(end <= packet.payload().len());
    }
    let [a, b] = [0x00u8, 0xff].map(|fill| {
        let mut buf = vec![fill; repr.buffer_len()];
        repr.emit(&mut VnetHdrPacket::new_unchecked(&mut buf[..]));
        buf
    });
    assert_eq!(a, b, "emit left stale bytes");
    assert_eq!(&a[..], &data[..HEADER_LEN], "emit is the inverse of parse");
});
