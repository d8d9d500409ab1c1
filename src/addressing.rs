//! The guest link's addresses: from a few options to the whole plan.
//!
//! uipd's own defaults are kvmtool's (192.168.33.0/24: gateway .1, which is
//! also the DNS server, guest .15; IPv6 fd00:33::/64 with gateway ::1);
//! slirp4netns's are 10.0.2.0/24 with gateway .2, DNS .3 and guest .100
//! (IPv6 fd00::/64, ::2 and ::3). [`Plan::resolve`] takes a CIDR and any
//! of the addresses (the rest follow from the CIDR by the layout's offsets)
//! and checks that they make sense together: every address inside the
//! network, none of them its network or broadcast address, gateway and
//! guest distinct.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::stack;

/// Host offsets in the network for a layout's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The gateway's offset (1 for uipd, 2 for slirp4netns).
    pub gateway: u32,
    /// The DNS server's offset (None: the gateway serves DNS).
    pub dns: Option<u32>,
    /// The guest's offset (15 for uipd, 100 for slirp4netns).
    pub guest: u32,
    /// The default IPv6 prefix (a /64).
    pub prefix6: Ipv6Addr,
}

impl Layout {
    /// uipd's (kvmtool's): 192.168.33.0/24, gateway .1 (and DNS), guest .15.
    pub const UIPD: Layout = Layout {
        gateway: 1,
        dns: None,
        guest: 15,
        prefix6: Ipv6Addr::new(0xfd00, 0x33, 0, 0, 0, 0, 0, 0),
    };
    /// slirp4netns's: gateway .2, DNS .3, guest .100; IPv6 fd00::/64.
    pub const SLIRP4NETNS: Layout = Layout {
        gateway: 2,
        dns: Some(3),
        guest: 100,
        prefix6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0),
    };
}

/// What the user asked for; `None` fields follow from the layout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The network (`--cidr`): address and prefix length.
    pub cidr: Option<(Ipv4Addr, u8)>,
    /// `--gateway`.
    pub gateway: Option<Ipv4Addr>,
    /// `--guest-ip`.
    pub guest: Option<Ipv4Addr>,
    /// `--dns`: `Some(None)` for no DNS service.
    pub dns: Option<Option<Ipv4Addr>>,
    /// `--ipv6-prefix` (a /64; the host part is ignored).
    pub prefix6: Option<Ipv6Addr>,
}

/// The resolved addresses of the guest link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The network's prefix length.
    pub prefix_len: u8,
    /// The gateway (uipd's own address).
    pub gateway: Ipv4Addr,
    /// The guest's address (DHCP offers it; `-c`/config-net assigns it).
    pub guest: Ipv4Addr,
    /// The DNS server address, if any.
    pub dns: Option<Ipv4Addr>,
    /// The IPv6 prefix (/64).
    pub prefix6: Ipv6Addr,
    /// The IPv6 gateway: the prefix's host `gateway` offset.
    pub gateway6: Ipv6Addr,
    /// The IPv6 DNS server: the prefix's host `dns` offset, or the gateway.
    pub dns6: Option<Ipv6Addr>,
}

/// Parse `A.B.C.D/N` (N in 0..=32; the host bits are ignored).
pub fn parse_cidr4(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let err = || format!("'{s}' is not an IPv4 CIDR such as 10.0.2.0/24");
    let (a, n) = s.split_once('/').ok_or_else(err)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
    let len: u8 = n.parse().map_err(|_| err())?;
    if len > 32 || n.starts_with('+') {
        return Err(err());
    }
    Ok((Ipv4Addr::from(u32::from(addr) & mask(len)), len))
}

/// Parse an IPv6 /64 prefix, `fd00:1::` or `fd00:1::/64`.
pub fn parse_prefix6(s: &str) -> Result<Ipv6Addr, String> {
    let (a, n) = s.split_once('/').unwrap_or((s, "64"));
    if n != "64" {
        return Err(format!("'{s}': only /64 prefixes can be used for SLAAC"));
    }
    let addr: Ipv6Addr = a
        .parse()
        .map_err(|_| format!("'{s}' is not an IPv6 prefix such as fd00:33::/64"))?;
    Ok(Ipv6Addr::from(u128::from(addr) & !u128::from(u64::MAX)))
}

fn mask(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

impl Plan {
    /// Resolve `req` on `layout`'s defaults (`default_cidr` when no CIDR is
    /// given). Errors say which address does not fit.
    pub fn resolve(
        req: &Request,
        layout: Layout,
        default_cidr: (Ipv4Addr, u8),
    ) -> Result<Plan, String> {
        let (net, len) = req.cidr.unwrap_or(default_cidr);
        if len > 30 {
            return Err(format!(
                "the network {net}/{len} is too small: it needs room for a gateway and a guest (/30 or larger)"
            ));
        }
        let m = mask(len);
        let base = u32::from(net) & m;
        let at = |off: u32| Ipv4Addr::from(base.wrapping_add(off));
        let hosts = !m;
        let fits = |off: u32| off > 0 && off < hosts;
        let pick = |given: Option<Ipv4Addr>, off: u32, what: &str| match given {
            Some(a) => Ok(a),
            None if fits(off) => Ok(at(off)),
            None => Err(format!(
                "the network {net}/{len} has no host .{off} for the {what}: give --{what} too"
            )),
        };
        let gateway = pick(req.gateway, layout.gateway, "gateway")?;
        let guest = pick(req.guest, layout.guest, "guest-ip")?;
        let dns = match req.dns {
            Some(d) => d,
            None => match layout.dns {
                Some(off) => Some(pick(None, off, "dns")?),
                None => Some(gateway),
            },
        };
        let inside = |a: Ipv4Addr, what: &str| {
            let h = u32::from(a);
            if h & m != base {
                return Err(format!("the {what} {a} is outside the network {net}/{len}"));
            }
            if h == base || h == base | hosts {
                return Err(format!(
                    "the {what} {a} is the network's own or its broadcast address"
                ));
            }
            Ok(())
        };
        inside(gateway, "gateway")?;
        inside(guest, "guest address")?;
        if gateway == guest {
            return Err(format!("the gateway and the guest are both {gateway}"));
        }
        if let Some(d) = dns {
            inside(d, "DNS address")?;
            if d == guest {
                return Err(format!("the DNS address {d} is the guest's"));
            }
        }
        let prefix6 = req.prefix6.unwrap_or(layout.prefix6);
        let host6 = |off: u32| Ipv6Addr::from(u128::from(prefix6) | u128::from(off));
        // The IPv6 gateway and DNS server keep the IPv4 layout's offsets;
        // with IPv4 addresses given by hand, the layout's own.
        let gateway6 = host6(layout.gateway);
        let dns6 = match (dns, layout.dns) {
            (None, _) => None,
            (Some(_), Some(off)) => Some(host6(off)),
            (Some(_), None) => Some(gateway6),
        };
        Ok(Plan {
            prefix_len: len,
            gateway,
            guest,
            dns,
            prefix6,
            gateway6,
            dns6,
        })
    }

    /// Write the plan into a stack configuration.
    pub fn apply(&self, cfg: &mut stack::Config) {
        cfg.gateway = self.gateway;
        cfg.guest_ip = self.guest;
        cfg.prefix_len = self.prefix_len;
        cfg.dns = self.dns;
        cfg.prefix6 = self.prefix6;
        cfg.gateway6 = self.gateway6;
        cfg.dns6 = self.dns6;
    }
}

/// Parse a MAC address `aa:bb:cc:dd:ee:ff` (a unicast one).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let err = || format!("'{s}' is not a MAC address such as 02:00:00:00:00:15");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(err());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(err());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(format!("'{s}' is a multicast or all-zero MAC address"));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UIPD_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(192, 168, 33, 0), 24);
    const SLIRP_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 0, 2, 0), 24);

    #[test]
    fn defaults_are_uipds_and_slirp4netnss_layouts() {
        let p = Plan::resolve(&Request::default(), Layout::UIPD, UIPD_NET).unwrap();
        let mut cfg = stack::Config::default();
        let before = (
            cfg.gateway,
            cfg.guest_ip,
            cfg.dns,
            cfg.gateway6,
            cfg.dns6,
            cfg.prefix6,
        );
        p.apply(&mut cfg);
        assert_eq!(
            before,
            (
                cfg.gateway,
                cfg.guest_ip,
                cfg.dns,
                cfg.gateway6,
                cfg.dns6,
                cfg.prefix6
            ),
            "uipd's plan is the stack's default"
        );
        let s = Plan::resolve(&Request::default(), Layout::SLIRP4NETNS, SLIRP_NET).unwrap();
        assert_eq!(s.gateway, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(s.dns, Some(Ipv4Addr::new(10, 0, 2, 3)));
        assert_eq!(s.guest, Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(s.gateway6, "fd00::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(s.dns6, Some("fd00::3".parse().unwrap()));
    }

    #[test]
    fn a_cidr_moves_every_address_and_explicit_ones_win() {
        let req = Request {
            cidr: Some(parse_cidr4("10.11.12.77/16").unwrap()),
            ..Request::default()
        };
        let p = Plan::resolve(&req, Layout::SLIRP4NETNS, SLIRP_NET).unwrap();
        assert_eq!(
            (p.gateway, p.dns, p.guest, p.prefix_len),
            (
                Ipv4Addr::new(10, 11, 0, 2),
                Some(Ipv4Addr::new(10, 11, 0, 3)),
                Ipv4Addr::new(10, 11, 0, 100),
                16
            )
        );
        let req = Request {
            gateway: Some(Ipv4Addr::new(192, 168, 33, 254)),
            guest: Some(Ipv4Addr::new(192, 168, 33, 2)),
            dns: Some(None),
            prefix6: Some(parse_prefix6("fd00:1:2:3::/64").unwrap()),
            ..Request::default()
        };
        let p = Plan::resolve(&req, Layout::UIPD, UIPD_NET).unwrap();
        assert_eq!(p.gateway, Ipv4Addr::new(192, 168, 33, 254));
        assert_eq!(p.guest, Ipv4Addr::new(192, 168, 33, 2));
        assert_eq!((p.dns, p.dns6), (None, None));
        assert_eq!(p.gateway6, "fd00:1:2:3::1".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn addresses_that_do_not_fit_are_clear_errors() {
        let with = |f: fn(&mut Request)| {
            let mut r = Request::default();
            f(&mut r);
            Plan::resolve(&r, Layout::UIPD, UIPD_NET).unwrap_err()
        };
        assert!(with(|r| r.gateway = Some(Ipv4Addr::new(10, 0, 0, 1))).contains("outside"));
        assert!(with(|r| r.guest = Some(Ipv4Addr::new(192, 168, 33, 255))).contains("broadcast"));
        assert!(with(|r| r.guest = Some(Ipv4Addr::new(192, 168, 33, 1))).contains("both"));
        assert!(with(|r| r.dns = Some(Some(Ipv4Addr::new(192, 168, 33, 15)))).contains("guest's"));
        assert!(with(|r| r.cidr = Some((Ipv4Addr::new(10, 0, 0, 0), 31))).contains("too small"));
        // A /28 ends at .15, its broadcast address: the guest needs one given.
        assert!(with(|r| r.cidr = Some((Ipv4Addr::new(10, 0, 0, 0), 28))).contains("--guest-ip"));
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "x/8", "10.0.0.0/+8"] {
            assert!(parse_cidr4(bad).is_err(), "{bad}");
        }
        assert!(parse_prefix6("fd00::/48").is_err());
        assert!(parse_prefix6("fd00::x").is_err());
        assert_eq!(parse_mac("02:00:00:00:00:15"), Ok([2, 0, 0, 0, 0, 0x15]));
        for bad in [
            "01:00:00:00:00:01",
            "00:00:00:00:00:00",
            "02:00:00:00:00",
            "2:0:0:0:0:15",
            "zz:00:00:00:00:01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
