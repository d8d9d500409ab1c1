//! DNS forwarding: which host resolvers the guest's queries to the gateway
//! go to. The forwarder itself is plain NAT (a UDP or TCP flow to
//! `gateway:53` is opened toward a resolver); this module only reads
//! resolv.conf.

use std::net::SocketAddr;

/// Parse resolv.conf text: every `nameserver ADDR` line (IPv4 or IPv6, an
/// IPv6 zone suffix `%if` is dropped), port 53, in file order. Comments
/// (`#`, `;`) and malformed lines are skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let _ = text;
    todo!()
}
