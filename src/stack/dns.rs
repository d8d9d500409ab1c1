//! DNS forwarding: which host resolvers the guest's queries to the gateway
//! go to. The forwarder itself is plain NAT (a UDP or TCP flow to
//! `gateway:53` is opened toward a resolver); this module only reads
//! resolv.conf.
//!
//! The parser follows glibc's reading of resolv.conf(5): the keyword starts
//! the line, the address is the next whitespace-separated token and anything
//! after it is ignored. A `#` or `;` starts a comment anywhere on a line.
//! Loopback resolvers (`127.0.0.53`, `::1`) are kept: the forwarder reaches
//! them from the host side.

use std::net::{IpAddr, SocketAddr};

/// The port every resolver listens on (resolv.conf has no port syntax).
pub const DNS_PORT: u16 = 53;

/// Parse resolv.conf text: every `nameserver ADDR` line (IPv4 or IPv6, an
/// IPv6 zone suffix `%if` is dropped), port 53, in file order. Comments
/// (`#`, `;`) and malformed lines are skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines().filter_map(parse_line).collect()
}

/// One line: `Some(addr)` for a well-formed `nameserver` line.
fn parse_line(line: &str) -> Option<SocketAddr> {
    let line = match line.find(['#', ';']) {
        Some(i) => line.get(..i)?,
        None => line,
    };
    let mut words = line.split_ascii_whitespace();
    if words.next()? != "nameserver" {
        return None;
    }
    let word = words.next()?;
    // The zone (`fe80::1%eth0`) names a host interface; a socket address
    // built here has no interface index to map it to, so it is dropped.
    let addr = match word.split_once('%') {
        Some((addr, _zone)) => addr,
        None => word,
    };
    let ip: IpAddr = addr.parse().ok()?;
    Some(SocketAddr::new(ip, DNS_PORT))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), 53)
    }

    fn v6(s: &str) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(s.parse::<Ipv6Addr>().unwrap()), 53)
    }

    #[test]
    fn systemd_resolved_stub() {
        let text = "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\n\
                    nameserver 127.0.0.53\n\
                    options edns0 trust-ad\n\
                    search .\n";
        assert_eq!(parse_resolv_conf(text), vec![v4(127, 0, 0, 53)]);
    }

    #[test]
    fn mixed_families_in_order() {
        let text =
            "nameserver 8.8.8.8\nnameserver ::1\nnameserver 1.1.1.1\nnameserver fe80::1%eth0\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![v4(8, 8, 8, 8), v6("::1"), v4(1, 1, 1, 1), v6("fe80::1")]
        );
    }

    #[test]
    fn whitespace_and_comments() {
        let text = "\tnameserver\t10.0.0.1\t\n  nameserver   10.0.0.2   # trailing\n\
                    nameserver 10.0.0.3;x\n#nameserver 10.0.0.4\n;nameserver 10.0.0.5\n\
                    nameserver 10.0.0.6 extra words\r\n\n   \n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                v4(10, 0, 0, 1),
                v4(10, 0, 0, 2),
                v4(10, 0, 0, 3),
                v4(10, 0, 0, 6)
            ]
        );
    }

    #[test]
    fn garbage_is_skipped() {
        let text = "nameserver\nnameserver 300.1.1.1\nnameserver 1.2.3\nnameservers 1.2.3.4\n\
                    Nameserver 1.2.3.4\nnameserver1.2.3.4\nnameserver [::1]\nnameserver ::1:53:zz\n\
                    nameserver %eth0\nnameserver 1.2.3.4:53\n\u{0}\u{ff}nameserver 9.9.9.9\n\
                    domain example.com\nsearch a b c\nnameserver 9.9.9.9\n";
        assert_eq!(parse_resolv_conf(text), vec![v4(9, 9, 9, 9)]);
    }

    #[test]
    fn empty() {
        assert!(parse_resolv_conf("").is_empty());
        assert!(parse_resolv_conf("\n\n# nothing\n").is_empty());
    }
}
