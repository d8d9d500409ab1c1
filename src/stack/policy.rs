//! Outbound policy: which host destinations the guest may open flows to.
//!
//! # Theory of operation
//!
//! A [`Policy`] is an ordered list of [`Rule`]s (`--allow CIDR`,
//! `--deny CIDR`, in command-line order) and a default. A destination is
//! judged by the **last** rule whose prefix contains it (like a firewall
//! read bottom-up, or rsync's filters read in reverse): later, more
//! specific exceptions override earlier broad ones, so
//! `--deny 127.0.0.0/8 --allow 127.0.0.1/32` reaches 127.0.0.1 and nothing
//! else in 127/8. No matching rule: the default, which is allow unless
//! `--restrict`.
//!
//! Rules match the address uipd's host socket would connect to, *after*
//! the gateway mapping: a flow to the gateway (192.168.33.1) is judged as
//! 127.0.0.1, because that is what it reaches on the host (and one to the
//! IPv6 gateway, fd00:33::1 or fe80::1, as ::1). This is the
//! honest question for isolation ("what may this guest touch on the
//! host?"), and it makes `--no-host-loopback` and a `--deny 127.0.0.0/8`
//! say the same thing.
//!
//! The policy is checked only when the guest opens a flow (a TCP SYN, the
//! first UDP datagram or ICMP echo of a flow). Exempt, always allowed:
//! DNS to `gateway:53` (forwarded to the host's resolvers), DHCP and ICMP
//! echo to the gateway (answered by uipd itself, never a host socket),
//! and inbound flows (published ports), which the guest does not open.
//!
//! The stack answers a refused flow as a filtering router would
//! (see [`super::Stack`]): a TCP SYN gets an RST (the guest's `connect`
//! fails at once with `ECONNREFUSED`), a UDP datagram or an ICMP echo gets
//! ICMP destination unreachable, code 13 "communication administratively
//! prohibited" (RFC 1812 §5.2.7.1), which Linux reports as `EHOSTUNREACH`.
//! Each refusal is counted (`drops_denied`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The guest may open flows to the prefix.
    Allow,
    /// Flows to the prefix are refused.
    Deny,
}

/// An address prefix, `ADDR/LEN` (IPv4 or IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// A CIDR that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part is not an IP address.
    #[error("'{0}' is not an IP address")]
    Addr(String),
    /// The prefix length is not a number within the family's width.
    #[error("prefix length '{0}' is not 0..={1}")]
    Len(String, u8),
    /// Bits set beyond the prefix length (e.g. 10.0.0.1/8).
    #[error("{0} has host bits set beyond /{1} (did you mean {2}?)")]
    HostBits(IpAddr, u8, Cidr),
}

impl Cidr {
    /// The prefix `addr/len`; `None` when `len` exceeds the family's width
    /// or `addr` has bits set beyond `len`.
    pub fn new(addr: IpAddr, len: u8) -> Option<Cidr> {
        let c = Cidr { addr, len };
        (len <= Self::width(addr) && c.network() == addr).then_some(c)
    }

    fn width(addr: IpAddr) -> u8 {
        match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    /// `addr` with the bits beyond the prefix cleared.
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// True if `ip` is in the prefix (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Cidr { addr: ip, ..*self }.network() == self.addr
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDR/LEN`, or a bare `ADDR` for a single host.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Addr(a.to_string()))?;
        let width = Cidr::width(addr);
        let len = match l {
            None => width,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= width)
                .ok_or_else(|| CidrError::Len(l.to_string(), width))?,
        };
        Cidr::new(addr, len).ok_or_else(|| {
            let net = Cidr { addr, len }.network();
            CidrError::HostBits(addr, len, Cidr { addr: net, len })
        })
    }
}

/// One `--allow` or `--deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// What a match means.
    pub action: Action,
    /// The destinations it matches.
    pub cidr: Cidr,
}

/// The outbound policy: rules in order (last match wins) and a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The rules, in the order given.
    pub rules: Vec<Rule>,
    /// What a destination no rule matches gets (`Deny` with `--restrict`).
    pub default: Action,
}

impl Default for Policy {
    /// Everything allowed.
    fn default() -> Policy {
        Policy {
            rules: Vec::new(),
            default: Action::Allow,
        }
    }
}

impl Policy {
    /// The verdict for a flow to host address `ip`: the last matching
    /// rule's action, else the default.
    pub fn check(&self, ip: IpAddr) -> Action {
        self.rules
            .iter()
            .rev()
            .find(|r| r.cidr.contains(ip))
            .map_or(self.default, |r| r.action)
    }

    /// True if `ip` may be reached.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.check(ip) == Action::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_reject_nonsense() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("127.0.0.1").to_string(), "127.0.0.1/32");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("fd00::/8").to_string(), "fd00::/8");
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Len(..))
        ));
        assert!(matches!(
            "10.0.0.0/".parse::<Cidr>(),
            Err(CidrError::Len(..))
        ));
        assert!(matches!(
            "10.0.0.0/-1".parse::<Cidr>(),
            Err(CidrError::Len(..))
        ));
        assert!(matches!("::/129".parse::<Cidr>(), Err(CidrError::Len(..))));
        assert!(matches!("host/8".parse::<Cidr>(), Err(CidrError::Addr(_))));
        assert!(matches!("".parse::<Cidr>(), Err(CidrError::Addr(_))));
        let e = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/8"), "{e}");
    }

    #[test]
    fn contains_respects_prefix_and_family() {
        let c = cidr("192.168.0.0/16");
        assert!(c.contains(ip("192.168.255.1")));
        assert!(!c.contains(ip("192.169.0.1")));
        assert!(cidr("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!cidr("0.0.0.0/0").contains(ip("::1")));
        assert!(!cidr("::/0").contains(ip("127.0.0.1")));
        assert!(cidr("127.0.0.1/32").contains(ip("127.0.0.1")));
        assert!(!cidr("127.0.0.1/32").contains(ip("127.0.0.2")));
    }

    #[test]
    fn last_match_wins_and_default_applies_otherwise() {
        let rule = |action, s| Rule {
            action,
            cidr: cidr(s),
        };
        let p = Policy {
            rules: vec![
                rule(Action::Deny, "127.0.0.0/8"),
                rule(Action::Allow, "127.0.0.1/32"),
            ],
            default: Action::Allow,
        };
        assert!(p.allows(ip("127.0.0.1")));
        assert!(!p.allows(ip("127.0.0.2")));
        assert!(p.allows(ip("10.0.0.1")));
        // The same rules in the other order: the broad deny comes last.
        let q = Policy {
            rules: p.rules.iter().rev().copied().collect(),
            ..p.clone()
        };
        assert!(!q.allows(ip("127.0.0.1")));
        // Restricted: nothing but what is allowed.
        let r = Policy {
            rules: vec![rule(Action::Allow, "10.0.0.0/8")],
            default: Action::Deny,
        };
        assert!(r.allows(ip("10.9.9.9")));
        assert!(!r.allows(ip("127.0.0.1")));
        assert!(Policy::default().allows(ip("1.2.3.4")));
    }
}
