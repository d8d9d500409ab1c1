//! The passt personality: `passt [OPTIONS]`, a VMM's network backend on a
//! UNIX socket (QEMU's `-netdev stream`), an inherited connected socket
//! (`--fd N`) or vhost-user (`--vhost-user`).
//!
//! # Contract (passt 2023 and later, as libvirt and QEMU start it)
//!
//! - `-s/--socket PATH` (default: the first free `/tmp/passt_N.socket`),
//!   `-F/--fd N` (an already connected stream socket: uipd ends with it),
//!   `--vhost-user` (the socket speaks vhost-user instead).
//! - It goes to the background once the socket is bound (unless
//!   `-f/--foreground`): the parent exits 0 only after the child is
//!   serving, and `-P/--pid FILE` holds the child's PID by then (libvirt
//!   and QEMU read it as soon as the parent exits). stdout and stderr are
//!   then closed, or stderr goes to `-l/--log-file`.
//! - `-1/--one-off`: end after the first VMM disconnects.
//! - Addresses: uipd's layout unless `-a` (guest address), `-n` (netmask
//!   or prefix length), `-g` (gateway), `-D` (DNS server the guest is
//!   given, `none` for none), `--dns-forward ADDR` (the address whose port
//!   53 goes to the host's resolvers); `--no-map-gw`: the gateway is not
//!   the host's loopback; `--map-host-loopback ADDR` and
//!   `--map-guest-addr ADDR` add an off-link address that stands for the
//!   host's loopback (passt maps the latter to the host's own address,
//!   which in passt is the guest's; uipd's guest has its own, so the host
//!   is reached at its loopback, as podman's host.containers.internal
//!   expects). `-M/--mac-addr` is uipd's own MAC,
//!   except a 52:54:00 one: libvirt 9.x passes the guest's MAC there.
//! - `-t/-u SPEC` publish TCP/UDP ports ([`parse_spec`]): `all` (or a
//!   list of only exclusions) binds every free port outside the kernel's
//!   ephemeral range at start, skipping those in use or privileged.
//! - `--print-capabilities` prints the vhost-user backend's capabilities
//!   (`{"type": "net"}`) and exits.
//!
//! Options uipd accepts without acting on: `-q/--quiet`, `-d/--debug`,
//! `-S/--search` (no DHCP search list yet); they are listed in `--help`.
//! Anything else is an error naming it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::Parser;

pub use super::{DaemonArgs, Invocation};
use crate::addressing::{Layout, Plan, Request};
use crate::daemon::{Config, Frontend};
use crate::publish::{PortSet, PubProto, PublishSpec};
use crate::stack;

/// The command line (passt's options that VMM managers use).
#[derive(Debug, Parser)]
#[command(
    name = "passt",
    about = "uipd as passt: user-mode networking for a VMM (stream socket, fd or vhost-user)",
    long_about = "uipd as passt: user-mode networking for a VMM: QEMU's -netdev stream on a \
        UNIX socket, an inherited connected socket (--fd), or vhost-user (--vhost-user).\n\n\
        Accepted and not acted on: -q/--quiet, -d/--debug, -S/--search.",
    disable_version_flag = true
)]
pub struct Args {
    /// UNIX socket to listen on [default: the first free /tmp/passt_N.socket].
    #[arg(
        short = 's',
        long = "socket",
        value_name = "PATH",
        conflicts_with = "fd"
    )]
    pub socket: Option<PathBuf>,
    /// Serve this inherited, connected stream socket; end with it.
    #[arg(short = 'F', long = "fd", value_name = "FD")]
    pub fd: Option<RawFd>,
    /// Speak vhost-user on the socket (not the stream protocol).
    #[arg(long, conflicts_with = "fd")]
    pub vhost_user: bool,
    /// Print the vhost-user backend's capabilities (JSON) and exit.
    #[arg(long)]
    pub print_capabilities: bool,
    /// End after the first VMM disconnects.
    #[arg(short = '1', long)]
    pub one_off: bool,
    /// Foreground, PID file, log file, quiet and debug (as pasta's).
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Accepted; uipd's DHCP has no search list yet.
    #[arg(short = 'S', long, value_name = "LIST")]
    pub search: Option<String>,
    /// Addresses, DNS and loopback mapping.
    #[command(flatten)]
    pub net: AddrArgs,
    /// Publish TCP ports: none, all (every free non-ephemeral port), or
    /// PORTS (22, 22:23, 22-80, 22-80:32-90, ADDR/22, ~25 exclusions,
    /// comma-separated; only exclusions: all but those).
    #[arg(short = 't', long = "tcp-ports", value_name = "SPEC")]
    pub tcp: Vec<String>,
    /// Publish UDP ports (as -t).
    #[arg(short = 'u', long = "udp-ports", value_name = "SPEC")]
    pub udp: Vec<String>,
    /// Print the version.
    #[arg(long)]
    pub version: bool,
}

/// The address options passt and pasta share.
#[derive(Debug, clap::Args)]
pub struct AddrArgs {
    /// uipd's own MAC address toward the guest (a 52:54:00 one is taken
    /// for the guest's, as libvirt 9.x passes it, and leaves uipd's own).
    #[arg(short = 'M', long, value_name = "MAC", value_parser = crate::addressing::parse_mac)]
    pub mac_addr: Option<[u8; 6]>,
    /// The guest's IPv4 address (DHCP offers it).
    #[arg(short = 'a', long, value_name = "ADDR")]
    pub address: Option<Ipv4Addr>,
    /// The guest network's netmask (dotted, or a prefix length).
    #[arg(short = 'n', long, value_name = "MASK", value_parser = parse_netmask)]
    pub netmask: Option<u8>,
    /// The gateway (uipd's own address).
    #[arg(short = 'g', long, value_name = "ADDR")]
    pub gateway: Option<Ipv4Addr>,
    /// The DNS server the guest is given (`none`: none).
    #[arg(short = 'D', long, value_name = "ADDR|none")]
    pub dns: Option<String>,
    /// The address whose port 53 goes to the host's resolvers.
    #[arg(long, value_name = "ADDR")]
    pub dns_forward: Option<Ipv4Addr>,
    /// The gateway is not the host's loopback.
    #[arg(long)]
    pub no_map_gw: bool,
    /// An address that stands for the host's loopback (besides the
    /// gateway, unless --no-map-gw).
    #[arg(long, value_name = "ADDR")]
    pub map_host_loopback: Option<IpAddr>,
    /// An address that stands for the host (passt: the host's address the
    /// guest was given; uipd: the host's loopback, as --map-host-loopback).
    #[arg(long, value_name = "ADDR")]
    pub map_guest_addr: Option<IpAddr>,
    /// MTU offered to the guest (68..65520).
    #[arg(short = 'm', long, value_parser = clap::value_parser!(u16).range(68..=65520))]
    pub mtu: Option<u16>,
}

impl AddrArgs {
    /// A stack configuration with these addresses on uipd's layout (and
    /// `mtu` unless `-m`), offloads as `offload` says.
    pub fn stack(&self, mtu: u16, offload: bool) -> Result<(stack::Config, Plan), String> {
        let cidr = match (self.address, self.netmask) {
            (Some(a), n) => Some(crate::addressing::parse_cidr4(&format!(
                "{a}/{}",
                n.unwrap_or(24)
            ))?),
            (None, Some(n)) => Some((Ipv4Addr::new(192, 168, 33, 0), n)),
            (None, None) => None,
        };
        let dns = match self.dns.as_deref() {
            None => self.dns_forward.map(Some),
            Some("none") | Some("") => Some(None),
            Some(d) => {
                Some(Some(d.parse::<Ipv4Addr>().map_err(|_| {
                    format!("-D '{d}' is not an IPv4 address or 'none'")
                })?))
            }
        };
        let plan = Plan::resolve(
            &Request {
                cidr,
                gateway: self.gateway,
                guest: self.address,
                dns,
                prefix6: None,
            },
            Layout::UIPD,
            (Ipv4Addr::new(192, 168, 33, 0), 24),
        )?;
        let mut stack = stack::Config {
            mtu: self.mtu.unwrap_or(mtu),
            host_loopback: !self.no_map_gw,
            offload: stack::Offload::all(offload),
            ..stack::Config::default()
        };
        if let Some(mac) = self.mac_addr
            && !is_libvirt_guest_mac(mac)
        {
            stack.gateway_mac = stack::wire::EthernetAddress(mac);
        }
        plan.apply(&mut stack);
        stack.loopback_aliases =
            loopback_aliases(&plan, [self.map_host_loopback, self.map_guest_addr])?;
        Ok((stack, plan))
    }
}

/// What the `-t`/`-u` specs of a command line ask for, all together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortForwards {
    /// Explicit forwards, bound at start.
    pub fixed: Vec<PublishSpec>,
    /// Every free non-ephemeral port (passt's `all`), bound at start.
    pub every: Vec<PortSet>,
    /// The namespace's bound ports, followed at run time (pasta's `auto`).
    pub auto: Vec<PortSet>,
}

/// Each `-t`/`-u` spec of `tcp` and `udp`, as `who` reads them.
pub fn publish_specs(tcp: &[String], udp: &[String], who: Who) -> Result<PortForwards, String> {
    let mut out = PortForwards::default();
    for (flag, specs) in [('t', tcp), ('u', udp)] {
        for s in specs {
            match parse_spec(s, flag, who)? {
                Ports::Fixed(v) => out.fixed.extend(v),
                Ports::Every(set) => out.every.push(set),
                Ports::Auto(set) => out.auto.push(set),
            }
        }
    }
    Ok(out)
}

/// A netmask, dotted (`255.255.255.0`) or as a prefix length (`24`).
pub fn parse_netmask(s: &str) -> Result<u8, String> {
    if let Ok(n) = s.parse::<u8>() {
        return if n <= 32 {
            Ok(n)
        } else {
            Err(format!("'{s}' is not a prefix length (0-32)"))
        };
    }
    let m: Ipv4Addr = s
        .parse()
        .map_err(|_| format!("'{s}' is not a netmask or a prefix length"))?;
    let bits = u32::from(m);
    if bits.leading_ones() + bits.trailing_zeros() != 32 {
        return Err(format!("'{s}' is not a contiguous netmask"));
    }
    // Cannot fail: at most 32.
    Ok(u8::try_from(bits.leading_ones()).unwrap_or(32))
}

/// Which personality reads a port spec: `all` is passt's, `auto` pasta's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// passt (`-t`/`-u`).
    Passt,
    /// pasta (`-t`/`-u` host to namespace, `-T`/`-U` namespace to host).
    Pasta,
}

/// What one `-t`/`-u` spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    /// These forwards (none for `none`).
    Fixed(Vec<PublishSpec>),
    /// passt's `all`, or a list of only exclusions: every port that is
    /// not ephemeral and can be bound at start, same port in the guest.
    Every(PortSet),
    /// pasta's `auto`: the ports the namespace listens on, followed
    /// while uipd runs.
    Auto(PortSet),
}

/// One item of a port list: host ports `lo..=hi` to guest ports from `to`.
type Item = (u16, u16, u16);

/// One port spec of `-t`/`-u` (`flag` is the option's letter, for errors),
/// as `who` reads it.
///
/// `none` is no forward. `all` (passt) is every free non-ephemeral port;
/// `auto` (pasta) the namespace's bound ports, as they come and go. Else
/// an optional `ADDR/` (the host address to listen on; all addresses of
/// both families without it), then a comma-separated list of `P`, `P-Q`,
/// `P:G`, `P-Q:G-H` (host ports to guest ports, ranges of equal length)
/// and exclusions `~P` or `~P-Q` taken out of them. A list of only
/// exclusions means every port but those (passt's manual), as `all,~P`
/// does; `auto,~P` leaves those out of the namespace's ports.
pub fn parse_spec(spec: &str, flag: char, who: Who) -> Result<Ports, String> {
    let err = |m: &str| format!("-{flag} '{spec}': {m}");
    if spec == "none" {
        return Ok(Ports::Fixed(Vec::new()));
    }
    let proto = if flag.eq_ignore_ascii_case(&'u') {
        PubProto::Udp
    } else {
        PubProto::Tcp
    };
    let (addr, list) = match spec.split_once('/') {
        Some((a, rest)) => {
            if a.contains('%') {
                return Err(err("binding to an interface (%IFACE) is not supported"));
            }
            let ip: IpAddr = a
                .parse()
                .map_err(|_| err(&format!("'{a}' is not an address")))?;
            (Some(ip), rest)
        }
        None => (None, spec),
    };
    let port = |s: &str| -> Result<u16, String> {
        s.parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && !s.starts_with('+'))
            .ok_or_else(|| err(&format!("'{s}' is not a port (1-65535)")))
    };
    let range = |s: &str| -> Result<(u16, u16), String> {
        match s.split_once('-') {
            None => port(s).map(|p| (p, p)),
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if b < a {
                    return Err(err(&format!("the range {s} ends before it starts")));
                }
                Ok((a, b))
            }
        }
    };
    let mut includes: Vec<Item> = Vec::new();
    let mut excludes: Vec<(u16, u16)> = Vec::new();
    // `all` or `auto`, as the list's first item.
    let mut keyword: Option<&str> = None;
    for (i, item) in list.split(',').enumerate() {
        if item.is_empty() {
            return Err(err("an empty item"));
        }
        if item == "all" || item == "auto" || item == "none" {
            if i != 0 || item == "none" {
                return Err(err(&format!(
                    "'{item}' can only stand first (exclusions may follow it)"
                )));
            }
            keyword = Some(item);
            continue;
        }
        if let Some(x) = item.strip_prefix('~') {
            excludes.push(range(x)?);
            continue;
        }
        if keyword.is_some() {
            return Err(err(&format!(
                "'{item}': only exclusions (~P) may follow '{}'",
                keyword.unwrap_or_default()
            )));
        }
        let (h, g) = match item.split_once(':') {
            Some((h, g)) => (range(h)?, Some(range(g)?)),
            None => (range(item)?, None),
        };
        let g = g.unwrap_or(h);
        if h.1 - h.0 != g.1 - g.0 {
            return Err(err(&format!(
                "'{item}': the host range has {} ports, the guest range {}",
                u32::from(h.1 - h.0) + 1,
                u32::from(g.1 - g.0) + 1
            )));
        }
        includes.push((h.0, h.1, g.0));
    }
    let set = PortSet {
        proto,
        addr,
        exclude: excludes.clone(),
    };
    match (keyword, who) {
        (Some("auto"), Who::Pasta) => {
            if addr.is_some() {
                return Err(err(
                    "'auto' listens on every address: an ADDR/ prefix is not supported with it",
                ));
            }
            return Ok(Ports::Auto(set));
        }
        (Some("auto"), Who::Passt) => {
            return Err(err(
                "'auto' is pasta's (ports bound in the namespace): passt has no namespace to \
                 watch; use 'all' or name the ports",
            ));
        }
        (Some(_), Who::Pasta) => {
            return Err(err(
                "'all' is passt's: pasta follows the namespace's ports with 'auto'",
            ));
        }
        (Some(_), Who::Passt) => return Ok(Ports::Every(set)),
        (None, _) if includes.is_empty() => return Ok(Ports::Every(set)),
        (None, _) => {}
    }
    let ranges = split_around(&includes, &excludes);
    if ranges.is_empty() {
        return Err(err("the exclusions leave no port"));
    }
    let addrs = match addr {
        Some(a) => vec![a],
        None => vec![
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ],
    };
    let mut out = Vec::new();
    for addr in addrs {
        for &(lo, hi, g) in &ranges {
            out.push(PublishSpec {
                addr,
                host_port: lo,
                guest_port: g,
                count: hi - lo + 1,
                proto,
            });
        }
    }
    Ok(Ports::Fixed(out))
}

/// Each included range split around the excluded ports.
fn split_around(includes: &[Item], excludes: &[(u16, u16)]) -> Vec<Item> {
    let excluded = |p: u16| excludes.iter().any(|&(a, b)| (a..=b).contains(&p));
    let mut ranges = Vec::new();
    for &(lo, hi, g) in includes {
        let mut run: Option<u16> = None;
        for p in lo..=hi {
            match (excluded(p), run) {
                (false, None) => run = Some(p),
                (true, Some(start)) => {
                    ranges.push((start, p - 1, g + (start - lo)));
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run {
            ranges.push((start, hi, g + (start - lo)));
        }
    }
    ranges
}

/// The prefix QEMU and libvirt give guest NICs (52:54:00, locally administered).
const VMM_GUEST_PREFIX: [u8; 3] = [0x52, 0x54, 0x00];

/// Whether a `-M` value is the guest's MAC, not one meant for uipd.
///
/// passt's `-M` is the backend's own MAC, but libvirt 9.0 to 9.x passes the
/// *guest's* MAC there (`qemuPasstStart`: `--mac-addr` with the domain's
/// `<mac address>`, 52:54:00:xx:xx:xx unless the domain names another). A
/// gateway with the guest's own MAC would make uipd drop every guest frame
/// (a source equal to the gateway's MAC is a reflection) and make the guest
/// see its own address as the peer's; so such a value keeps uipd's own MAC.
fn is_libvirt_guest_mac(mac: [u8; 6]) -> bool {
    mac[..3] == VMM_GUEST_PREFIX
}

/// The first `/tmp/passt_N.socket` (N from 1) that does not exist.
pub fn default_socket() -> Result<PathBuf, String> {
    (1..=100)
        .map(|n| PathBuf::from(format!("/tmp/passt_{n}.socket")))
        .find(|p| !p.exists())
        .ok_or_else(|| "no free /tmp/passt_N.socket (N up to 100): give --socket".to_string())
}

impl Args {
    /// The daemon configuration for these arguments, on `workers` workers.
    pub fn invocation(&self, workers: usize) -> Result<Invocation, String> {
        let ports = publish_specs(&self.tcp, &self.udp, Who::Passt)?;
        let socket = match (&self.socket, self.fd) {
            (_, Some(_)) => None,
            (Some(p), None) => Some(p.clone()),
            (None, None) => Some(default_socket()?),
        };
        let frontend = match (self.fd, self.vhost_user, &socket) {
            (Some(fd), _, _) => Frontend::StreamFd(fd),
            (None, true, Some(p)) => Frontend::VhostUser(p.clone()),
            (None, false, Some(p)) => Frontend::Stream(p.clone()),
            (None, _, None) => unreachable!("a socket path when there is no fd"),
        };
        // As uipd's own VMM frontends: vhost-user negotiates offloads with
        // the guest; the stream protocol carries bare frames.
        let (stack, _) = self.net.stack(1500, self.vhost_user)?;
        let background = !self.daemon.foreground;
        let config = Config {
            publish: ports.fixed,
            publish_every: ports.every,
            one_off: self.one_off,
            ..Config::with_defaults(frontend, stack, workers)
        };
        Ok(Invocation {
            socket,
            ..self.daemon.invocation(config, background)
        })
    }
}

/// The addresses of `--map-host-loopback` and `--map-guest-addr` that the
/// stack must map to the host's loopback (the gateway needs no alias); one
/// on the guest's own link, or not unicast, cannot stand for the host.
pub fn loopback_aliases(plan: &Plan, given: [Option<IpAddr>; 2]) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for a in given.into_iter().flatten() {
        if a == IpAddr::V4(plan.gateway) {
            continue;
        }
        let on_link = match a {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(plan.prefix_len))
                    .unwrap_or(0);
                u32::from(v4) & mask == u32::from(plan.gateway) & mask
            }
            IpAddr::V6(v6) => v6.octets()[..8] == plan.prefix6.octets()[..8],
        };
        if on_link || a.is_unspecified() || a.is_multicast() || a.is_loopback() {
            return Err(format!(
                "{a} cannot stand for the host: it is on the guest's link, or not a unicast address"
            ));
        }
        out.push(a);
    }
    Ok(out)
}

/// The vhost-user backend capabilities `--print-capabilities` prints
/// (vhost-user.rst, "Backend program conventions").
pub const CAPABILITIES: &str = "{\n  \"type\": \"net\"\n}\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("passt").chain(args.split_whitespace()))
    }

    fn specs(s: &str) -> Vec<String> {
        match parse_spec(s, 't', Who::Passt).unwrap() {
            Ports::Fixed(v) => v.iter().map(ToString::to_string).collect(),
            other => panic!("{s}: {other:?}"),
        }
    }

    fn set(proto: PubProto, addr: Option<&str>, exclude: &[(u16, u16)]) -> PortSet {
        PortSet {
            proto,
            addr: addr.map(|a| a.parse().unwrap()),
            exclude: exclude.to_vec(),
        }
    }

    #[test]
    fn every_port_spec_form() {
        assert!(specs("none").is_empty());
        assert_eq!(specs("22"), ["0.0.0.0:22:22/tcp", "[::]:22:22/tcp"]);
        assert_eq!(specs("127.0.0.1/8080:80"), ["127.0.0.1:8080:80/tcp"]);
        assert_eq!(specs("::1/8080"), ["[::1]:8080:8080/tcp"]);
        assert_eq!(
            specs("127.0.0.1/22,25"),
            ["127.0.0.1:22:22/tcp", "127.0.0.1:25:25/tcp"]
        );
        assert_eq!(
            specs("127.0.0.1/22-80:32-90"),
            ["127.0.0.1:22-80:32-90/tcp"]
        );
        assert_eq!(
            specs("127.0.0.1/2000-2010,~2003-2005,~2010"),
            [
                "127.0.0.1:2000-2002:2000-2002/tcp",
                "127.0.0.1:2006-2009:2006-2009/tcp"
            ]
        );
        assert_eq!(
            specs("127.0.0.1/100-104:200-204,~100"),
            ["127.0.0.1:101-104:201-204/tcp"]
        );
        let Ok(Ports::Fixed(u)) = parse_spec("127.0.0.1/53", 'u', Who::Passt) else {
            panic!("-u 127.0.0.1/53");
        };
        assert_eq!(u[0].to_string(), "127.0.0.1:53:53/udp");
    }

    #[test]
    fn all_auto_and_exclusion_lists() {
        use PubProto::{Tcp, Udp};
        for (spec, flag, who, want) in [
            ("all", 't', Who::Passt, Ports::Every(set(Tcp, None, &[]))),
            ("all", 'u', Who::Passt, Ports::Every(set(Udp, None, &[]))),
            (
                "all,~22,~8000-8010",
                't',
                Who::Passt,
                Ports::Every(set(Tcp, None, &[(22, 22), (8000, 8010)])),
            ),
            // passt's manual: only exclusions = every other port.
            (
                "~25",
                't',
                Who::Passt,
                Ports::Every(set(Tcp, None, &[(25, 25)])),
            ),
            (
                "127.0.0.1/all,~25",
                't',
                Who::Passt,
                Ports::Every(set(Tcp, Some("127.0.0.1"), &[(25, 25)])),
            ),
            (
                "::1/~20000-20010",
                'u',
                Who::Passt,
                Ports::Every(set(Udp, Some("::1"), &[(20000, 20010)])),
            ),
            ("auto", 't', Who::Pasta, Ports::Auto(set(Tcp, None, &[]))),
            ("auto", 'u', Who::Pasta, Ports::Auto(set(Udp, None, &[]))),
            (
                "auto,~53",
                'u',
                Who::Pasta,
                Ports::Auto(set(Udp, None, &[(53, 53)])),
            ),
            ("none", 't', Who::Pasta, Ports::Fixed(Vec::new())),
        ] {
            assert_eq!(parse_spec(spec, flag, who), Ok(want), "-{flag} {spec}");
        }
        let p = publish_specs(
            &["all,~22".into(), "127.0.0.1/8080:80".into()],
            &["1000-1001".into()],
            Who::Passt,
        )
        .unwrap();
        assert_eq!(p.every, [set(Tcp, None, &[(22, 22)])]);
        assert_eq!(p.fixed.len(), 3);
        assert!(p.auto.is_empty());
    }

    #[test]
    fn bad_port_specs_say_why() {
        for (spec, want) in [
            ("0", "not a port"),
            ("70000", "not a port"),
            ("22-10", "ends before"),
            ("22-25:30", "host range has 4 ports"),
            ("x/22", "not an address"),
            ("10.0.0.1%eth0/22", "interface"),
            ("22,", "empty item"),
            ("+22", "not a port"),
            ("22-25,~22-25", "leave no port"),
            ("all,22", "only exclusions"),
            ("22,all", "can only stand first"),
            ("none,~22", "can only stand first"),
            ("all,~x", "not a port"),
        ] {
            let e = parse_spec(spec, 't', Who::Passt).expect_err(spec);
            assert!(e.contains(want) && e.contains(spec), "{spec}: {e}");
        }
        // Each keyword belongs to one personality.
        for (spec, who, want) in [
            ("auto", Who::Passt, "'auto' is pasta's"),
            ("auto,~22", Who::Passt, "'auto' is pasta's"),
            ("all", Who::Pasta, "'all' is passt's"),
            ("all,~22", Who::Pasta, "'all' is passt's"),
            (
                "127.0.0.1/auto",
                Who::Pasta,
                "ADDR/ prefix is not supported",
            ),
        ] {
            let e = parse_spec(spec, 'u', who).expect_err(spec);
            assert!(e.contains(want) && e.contains("-u"), "{spec}: {e}");
        }
    }

    #[test]
    fn the_integrators_argv_lines_parse() {
        // libvirt 11.3, <interface type='user'><backend type='passt'/> with a
        // port forward (as tests/integrators_libvirt.rs saw it).
        let a = parse(
            "--one-off --socket /run/libvirt/qemu/passt/1-vm-net0.socket \
             --pid /run/libvirt/qemu/passt/1-vm-net0-passt.pid \
             --tcp-ports 127.0.0.1/2222:22",
        )
        .unwrap();
        let inv = a.invocation(2).unwrap();
        assert!(inv.background && inv.config.one_off);
        assert!(matches!(&inv.config.frontend, Frontend::Stream(p)
            if p.to_str() == Some("/run/libvirt/qemu/passt/1-vm-net0.socket")));
        assert_eq!(inv.config.publish[0].to_string(), "127.0.0.1:2222:22/tcp");
        assert_eq!(
            inv.pid_file.as_deref(),
            Some(std::path::Path::new(
                "/run/libvirt/qemu/passt/1-vm-net0-passt.pid"
            ))
        );
        assert_eq!(inv.config.detach_stdio, Some(None));
        // QEMU >= 10.1 (-netdev passt / stream with addr.type=fd).
        let inv = parse("--fd 3 -f -q").unwrap().invocation(1).unwrap();
        assert!(matches!(inv.config.frontend, Frontend::StreamFd(3)));
        assert!(!inv.background && inv.config.detach_stdio.is_none());
        // vhost-user, addresses, DNS.
        let inv = parse(
            "--vhost-user -s /tmp/vu.sock -a 10.0.0.5 -n 255.255.255.0 -g 10.0.0.1 \
             --dns-forward 10.0.0.53 --no-map-gw -m 9000 -u 127.0.0.1/5353",
        )
        .unwrap()
        .invocation(1)
        .unwrap();
        assert!(matches!(&inv.config.frontend, Frontend::VhostUser(_)));
        let s = &inv.config.stack;
        assert_eq!(
            (s.guest_ip, s.gateway, s.prefix_len),
            (Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::new(10, 0, 0, 1), 24)
        );
        assert_eq!(s.dns, Some(Ipv4Addr::new(10, 0, 0, 53)));
        assert!(!s.host_loopback && s.offload.vnet_hdr);
        assert_eq!(s.mtu, 9000);
        assert_eq!(parse_netmask("255.255.0.0"), Ok(16));
        assert!(parse_netmask("255.0.255.0").is_err());
    }

    #[test]
    fn libvirts_guest_mac_is_not_the_gateways() {
        let default = stack::Config::default().gateway_mac;
        // libvirt 9.0 (upstream; Debian 12 builds it without passt): no
        // --pid (libvirt writes the PID file), the guest's MAC as -M.
        let inv = parse(
            "--one-off --socket /run/libvirt/qemu/passt/1-vm-net0.socket \
             --mac-addr 52:54:00:12:34:56 --tcp-ports 127.0.0.1/2222:22",
        )
        .unwrap()
        .invocation(1)
        .unwrap();
        assert_eq!(inv.config.stack.gateway_mac, default);
        assert_ne!(default.0[..3], VMM_GUEST_PREFIX);
        assert!(inv.pid_file.is_none() && inv.background);
        // Any other -M is uipd's own, as passt's manual says.
        let inv = parse("-f -M 02:00:00:00:00:07")
            .unwrap()
            .invocation(1)
            .unwrap();
        assert_eq!(inv.config.stack.gateway_mac.0, [2, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn bad_argv_is_a_clear_error() {
        for (line, want) in [
            ("--no-such-option", "--no-such-option"),
            ("--fd 3 --socket /x", "cannot be used with"),
            ("-m 70000", "70000"),
            ("-M 01:00:00:00:00:00", "multicast"),
        ] {
            let e = parse(line).expect_err(line).to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
        let inv = parse("--map-guest-addr 169.254.1.2 --map-host-loopback 192.168.33.1 -f")
            .unwrap()
            .invocation(1)
            .unwrap();
        assert_eq!(
            inv.config.stack.loopback_aliases,
            vec![IpAddr::V4(Ipv4Addr::new(169, 254, 1, 2))],
            "the gateway needs no alias"
        );
        for bad in [
            "--map-host-loopback 192.168.33.7",
            "--map-guest-addr 0.0.0.0",
        ] {
            let e = parse(&format!("{bad} -f"))
                .unwrap()
                .invocation(1)
                .unwrap_err();
            assert!(e.contains("cannot stand for the host"), "{bad}: {e}");
        }
        let e = parse("-D x -f").unwrap().invocation(1).unwrap_err();
        assert!(e.contains("-D 'x'"), "{e}");
    }
}
