//! Fuzz the DHCP server: any input gets a reply or a reason, never a panic,
//! and every reply is a well-formed BOOTREPLY that fits 548 bytes.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use uipd::stack::dhcp::{Params, handle};

fuzz_target!(|data: &[u8]| {
    let params = Params {
        server: Ipv4Addr::new(192, 168, 33, 1),
        offered: Ipv4Addr::new(192, 168, 33, 15),
        prefix_len: 24,
        router: Ipv4Addr::new(192, 168, 33, 1),
        dns: vec![Ipv4Addr::new(192, 168, 33, 1)],
        lease_secs: 86400,
        mtu: 1500,
    };
    if let Ok(reply) = handle(&params, data) {
        let p = &reply.payload;
        assert!((300..=548).contains(&p.len()));
        assert_eq!(&p[..3], &[2, 1, 6]);
        assert_eq!(&p[4..8], &data[4..8]);
        assert_eq!(&p[28..44], &data[28..44]);
        assert_eq!(&p[236..240], &[99, 130, 83, 99]);
        assert_eq!(reply.client_mac.0, p[28..34]);
        assert!(reply.broadcast || !reply.dst.is_unspecified());
    }
});
