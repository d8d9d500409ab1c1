//! IPv6 and ICMPv6: walk the extension headers of any packet, parse its
//! ICMPv6 message (NDP options included), re-emit into stale buffers,
//! re-parse, compare.
//!
//! Byte 0 is a control byte: bit 0 set = skip checksum verification, so
//! the fuzzer reaches the NDP option parser half of the time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uipd::stack::wire::{Icmpv6Packet, Icmpv6Repr, Ipv6Packet, Ipv6Repr, ip_proto};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let Ok(packet) = Ipv6Packet::new_checked(data) else {
        return;
    };
    let _ = (packet.traffic_class(), packet.flow_label(), packet.hop_limit());
    let Ok(ul) = packet.upper_layer() else {
        return;
    };
    assert!(ul.offset <= packet.payload().len());
    let Ok(repr) = Ipv6Repr::parse(&packet) else {
        assert!(ul.frag.is_some());
        return;
    };
    let upper = &packet.payload()[ul.offset..];
    assert_eq!(repr.payload_len, upper.len());
    let [a, b] = [0x00u8, 0xff].map(|fill| {
        let mut buf = vec![fill; repr.buffer_len() + repr.payload_len];
        let mut out = Ipv6Packet::new_unchecked(&mut buf[..]);
        repr.emit(&mut out);
        out.payload_mut().copy_from_slice(upper);
        buf
    });
    assert_eq!(a, b, "emit left stale bytes");
    let out = Ipv6Packet::new_checked(&a[..]).unwrap();
    assert_eq!(Ipv6Repr::parse(&out).unwrap(), repr);
    if repr.next_header != ip_proto::ICMPV6 {
        return;
    }
    let Ok(icmp) = Icmpv6Packet::new_checked(upper) else {
        return;
    };
    let (s, d) = (repr.src_addr, repr.dst_addr);
    let Ok(msg) = Icmpv6Repr::parse(&icmp, s, d, ctl & 1 == 0) else {
        return;
    };
    let [a, b] = [0x00u8, 0xff].map(|fill| {
        let mut buf = vec![fill; msg.buffer_len()];
        msg.emit(&mut buf, s, d);
        buf
    });
    assert_eq!(a, b, "emit left stale bytes");
    let again = Icmpv6Packet::new_checked(&a[..]).unwrap();
    assert!(again.verify_checksum(s, d));
    assert_eq!(Icmpv6Repr::parse(&again, s, d, true).unwrap(), msg);
});
