//! TCP: parse, re-emit into stale buffers, re-parse (checksum verified), compare.
//!
//! Byte 0 is a control byte: bit 0 = fix up the input's checksum and verify
//! it (else it is treated as offloaded), bit 1 = IPv6 addresses.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use uipd::stack::wire::{TcpPacket, TcpRepr};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let (src, dst): (IpAddr, IpAddr) = if ctl & 2 != 0 {
        (
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x15).into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
        )
    } else {
        (
            Ipv4Addr::new(10, 0, 2, 15).into(),
            Ipv4Addr::new(93, 184, 216, 34).into(),
        )
    };
    let mut input = data.to_vec();
    let Ok(mut packet) = TcpPacket::new_checked(&mut input[..]) else {
        return;
    };
    let verify = ctl & 1 != 0;
    if verify {
        packet.fill_checksum(src, dst);
    }
    let packet = TcpPacket::new_checked(&input[..]).unwrap();
    let _ = (packet.options(), packet.urgent_at(), packet.ack_number());
    let Ok(repr) = TcpRepr::parse(&packet, src, dst, verify) else {
        return;
    };
    assert_eq!(repr.payload, packet.payload());
    assert!(repr.window_scale.is_none_or(|ws| ws <= 14));
    let [a, b] = [0x00u8, 0xff].map(|fill| {
        let mut buf = vec![fill; repr.buffer_len()];
        repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), src, dst);
        buf
    });
    assert_eq!(a, b, "emit left stale bytes");
    let out = TcpPacket::new_checked(&a[..]).unwrap();
    assert_eq!(out.header_len() % 4, 0);
    assert_eq!(out.ack(), repr.ack_number.is_some());
    assert_eq!(TcpRepr::parse(&out, src, dst, true).unwrap(), repr);
});
