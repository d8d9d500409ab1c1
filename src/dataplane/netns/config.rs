//! [`NetConfig`]: how the namespace's network is set up, the checks on it,
//! and its form on the helper's command line.
//!
//! The helper gets the config as [`NetConfig::ARGS`] plain arguments
//! (`to_args`, parsed back by `from_args`, which checks every field again:
//! the helper trusts nothing on its command line), a MAC as
//! `xx:xx:xx:xx:xx:xx` or `-` for none.

use std::ffi::OsString;
use std::net::Ipv4Addr;

use super::NetnsError;
use crate::dataplane::tap::{MAX_TAP_QUEUES, Tap, TapError, TapFlags, ifname_cstring};

/// Smallest IPv4 MTU (RFC 791: every host must accept 68-byte datagrams).
const MIN_MTU: u16 = 68;

/// How the namespace's network is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Name of the TAP inside the namespace.
    pub ifname: String,
    /// MTU of the TAP.
    pub mtu: u16,
    /// Assign the address, default route and resolv.conf; `false` is `--no-config-net`
    /// (the TAP is still created, given its MTU/MAC and brought up).
    pub configure: bool,
    /// The namespace's IPv4 address.
    pub guest_ip: Ipv4Addr,
    /// Prefix length of `guest_ip`'s subnet.
    pub prefix_len: u8,
    /// Default gateway (uipd's address).
    pub gateway: Ipv4Addr,
    /// The nameserver written to the namespace's `/etc/resolv.conf`.
    pub dns: Ipv4Addr,
    /// MAC address of the TAP; `None` keeps the kernel's random one.
    pub guest_mac: Option<[u8; 6]>,
    /// Number of TAP queues, 1 to [`MAX_TAP_QUEUES`]; more than 1 makes the TAP
    /// multiqueue (`IFF_MULTI_QUEUE`), one fd per queue.
    pub queues: usize,
    /// Open every queue with `IFF_VNET_HDR`: frames on the fds carry a virtio-net
    /// header (10 bytes, the kernel's default size) before the Ethernet header.
    pub vnet_hdr: bool,
    /// [`attach`](super::attach): bring the target's `lo` up as well (slirp4netns `-c`
    /// does, and podman relies on it: nothing else brings a container's
    /// `lo` up). [`spawn`](super::spawn) always does: its namespace is new.
    pub loopback: bool,
}

impl Default for NetConfig {
    /// The kvmtool-compatible defaults: 192.168.33.15/24 via 192.168.33.1.
    fn default() -> Self {
        NetConfig {
            ifname: "eth0".to_owned(),
            mtu: 1500,
            configure: true,
            guest_ip: Ipv4Addr::new(192, 168, 33, 15),
            prefix_len: 24,
            gateway: Ipv4Addr::new(192, 168, 33, 1),
            dns: Ipv4Addr::new(192, 168, 33, 1),
            guest_mac: None,
            queues: 1,
            vnet_hdr: false,
            loopback: false,
        }
    }
}

impl NetConfig {
    pub(super) fn validate(&self) -> Result<(), NetnsError> {
        ifname_cstring(&self.ifname)?;
        if self.mtu < MIN_MTU {
            return Err(NetnsError::InvalidConfig(format!(
                "MTU {} is below the IPv4 minimum of {MIN_MTU}",
                self.mtu
            )));
        }
        if self.prefix_len > 32 {
            return Err(NetnsError::InvalidConfig(format!(
                "IPv4 prefix length {} is over 32",
                self.prefix_len
            )));
        }
        if self.queues == 0 || self.queues > MAX_TAP_QUEUES {
            return Err(NetnsError::InvalidConfig(format!(
                "{} TAP queues: it must be 1 to {MAX_TAP_QUEUES}",
                self.queues
            )));
        }
        Ok(())
    }

    /// The TAP flags for these settings (multiqueue exactly when `queues > 1`).
    pub(super) fn tap_flags(&self) -> TapFlags {
        TapFlags {
            multi_queue: self.queues > 1,
            vnet_hdr: self.vnet_hdr,
        }
    }

    /// Opens every queue of the TAP in the calling thread's network namespace.
    pub(super) fn open_taps(&self) -> Result<Vec<Tap>, TapError> {
        Tap::open_queues(&self.ifname, self.queues, self.tap_flags())
    }

    /// The netmask of `prefix_len` (validated to be at most 32).
    pub(super) fn netmask(&self) -> Ipv4Addr {
        let shift = 32 - u32::from(self.prefix_len.min(32));
        Ipv4Addr::from(u32::MAX.checked_shl(shift).unwrap_or(0))
    }

    /// Serialises the config for the helper's command line (see [`NetConfig::from_args`]).
    pub(super) fn to_args(&self) -> Vec<OsString> {
        let mac = self.guest_mac.map_or_else(|| "-".to_owned(), format_mac);
        [
            self.ifname.clone(),
            self.mtu.to_string(),
            u8::from(self.configure).to_string(),
            self.guest_ip.to_string(),
            self.prefix_len.to_string(),
            self.gateway.to_string(),
            self.dns.to_string(),
            mac,
            self.queues.to_string(),
            u8::from(self.vnet_hdr).to_string(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect()
    }

    pub(super) const ARGS: usize = 10;

    pub(super) fn from_args(args: &[OsString]) -> Result<NetConfig, String> {
        let s: Vec<&str> = args
            .iter()
            .map(|a| {
                a.to_str()
                    .ok_or_else(|| format!("non-UTF-8 argument {a:?}"))
            })
            .collect::<Result<_, _>>()?;
        let [
            ifname,
            mtu,
            configure,
            ip,
            prefix,
            gw,
            dns,
            mac,
            queues,
            vnet_hdr,
        ] = s[..]
        else {
            return Err(format!("expected {} config arguments", Self::ARGS));
        };
        let err = |what: &str, v: &str| format!("bad {what} {v:?}");
        let cfg = NetConfig {
            ifname: ifname.to_owned(),
            mtu: mtu.parse().map_err(|_| err("MTU", mtu))?,
            configure: match configure {
                "1" => true,
                "0" => false,
                v => return Err(err("configure flag", v)),
            },
            guest_ip: ip.parse().map_err(|_| err("address", ip))?,
            prefix_len: prefix.parse().map_err(|_| err("prefix", prefix))?,
            gateway: gw.parse().map_err(|_| err("gateway", gw))?,
            dns: dns.parse().map_err(|_| err("DNS address", dns))?,
            guest_mac: match mac {
                "-" => None,
                m => Some(parse_mac(m).ok_or_else(|| err("MAC", m))?),
            },
            queues: queues
                .parse()
                .ok()
                .filter(|q| (1..=MAX_TAP_QUEUES).contains(q))
                .ok_or_else(|| err("queue count", queues))?,
            vnet_hdr: match vnet_hdr {
                "1" => true,
                "0" => false,
                v => return Err(err("vnet_hdr flag", v)),
            },
            // Only `attach` reads it: the helper's namespace is new, and it
            // always brings `lo` up.
            loopback: false,
        };
        Ok(cfg)
    }
}

pub(super) fn format_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

pub(super) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}
