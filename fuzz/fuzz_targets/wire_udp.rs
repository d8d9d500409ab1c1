//! UDP: parse, re-emit into stale buffers, re-parse (checksum verified), compare.
//!
//! Byte 0 is a control byte: bit 0 = verify the input's checksum (else it is
//! treated as offloaded), bit 1 = IPv6 addresses instead of IPv4.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use uipd::stack::wire::{UdpPacket, UdpRepr};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let (src, dst): (IpAddr, IpAddr) = if ctl & 2 != 0 {
        (
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x15).into(),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3).into(),
        )
    } else {
        (
            Ipv4Addr::new(10, 0, 2, 15).into(),
            Ipv4Addr::new(10, 0, 2, 3).into(),
        )
    };
    let Ok(packet) = UdpPacket::new_checked(data) else {
        return;
    };
    let verified = packet.verify_checksum(src, dst);
    let Ok(repr) = UdpRepr::parse(&packet, src, dst, ctl & 1 != 0) else {
        return;
    };
    assert!(ctl & 1 == 0 || verified);
    let payload = packet.payload();
    let [a, b] = [0x00u8, 0xff].map(|fill| {
        let mut buf = vec![fill; repr.header_len() + payload.len()];
        repr.emit(
            &mut UdpPacket::new_unchecked(&mut buf[..]),
            src,
            dst,
            payload,
        );
        buf
    });
    assert_eq!(a, b, "emit left stale bytes");
    let out = UdpPacket::new_checked(&a[..]).unwrap();
    assert_ne!(out.checksum(), 0);
    assert_eq!(UdpRepr::parse(&out, src, dst, true).unwrap(), repr);
    assert_eq!(out.payload(), payload);
});
