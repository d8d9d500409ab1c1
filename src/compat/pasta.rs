//! The pasta personality: `pasta [OPTIONS] [PID | --netns PATH|NAME | COMMAND [ARGS]]`,
//! a network namespace's backend, as podman (`--network pasta`) starts it.
//!
//! # Contract (pasta 2023 and later)
//!
//! - A PID joins that process's network namespace; `--netns PATH|NAME`
//!   (a NAME is `/run/netns/NAME`) a namespace file; `--userns PATH` is
//!   joined first. Without either, COMMAND (default: `$SHELL`, else
//!   `/bin/sh`) runs in new namespaces and pasta exits with its status.
//! - The TAP is `-I/--ns-ifname` (uipd: `eth0` by default; pasta takes
//!   the host's upstream interface's name, which a sandbox may not have);
//!   `--config-net` gives it the address, route and MTU.
//! - With a namespace to join, pasta forks to the background once the
//!   namespace is served (unless `-f/--foreground`); `-P/--pid FILE` holds
//!   the serving PID by the time the parent exits. It quits when the
//!   namespace file is removed, or when the PID's process exits
//!   (`--no-netns-quit`: it stays).
//! - `-t/-u SPEC` publish host ports into the namespace (as passt's, see
//!   [`super::passt::parse_spec`]); `auto` follows the ports the namespace
//!   listens on ([`crate::autoports`]). uipd publishes none by default
//!   where pasta's default is `auto`.
//! - `-T/-U SPEC` forward named namespace ports to the host's loopback
//!   ([`crate::nsfwd`]); `auto` follows the ports bound on the host
//!   ([`crate::nsauto`]). uipd forwards none by default where pasta's
//!   default is `auto`.
//! - Addresses as passt's: `-a`, `-n`, `-g`, `-D`, `--dns-forward`,
//!   `--no-map-gw`, `-m/--mtu`, `-M` (uipd's MAC), `--ns-mac-addr` (the
//!   TAP's). `-q`, `-d`, `-e/--stderr`, `--trace` are accepted.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::DaemonArgs;
pub use super::Invocation;
use super::passt::{AddrArgs, Ports, Who, parse_spec, publish_specs};
use crate::daemon::{Config, Frontend};
use crate::nsfwd::NsForward;
use crate::publish::PortSet;

/// The command line (pasta's options that podman and users pass).
#[derive(Debug, Parser)]
#[command(
    name = "pasta",
    about = "uipd as pasta: user-mode networking for a network namespace",
    long_about = "uipd as pasta: user-mode networking for a network namespace.\n\n\
        Usage: pasta [OPTIONS] [PID | --netns PATH|NAME | COMMAND [ARGS]...]\n\n\
        Accepted and not acted on: -q/--quiet, -d/--debug, --trace, -e/--stderr.",
    disable_version_flag = true
)]
pub struct Args {
    /// Join this network namespace (a path, or a name under /run/netns).
    #[arg(long, value_name = "PATH|NAME")]
    pub netns: Option<String>,
    /// Join this user namespace first.
    #[arg(long, value_name = "PATH")]
    pub userns: Option<PathBuf>,
    /// Stay running when the namespace file is removed.
    #[arg(long)]
    pub no_netns_quit: bool,
    /// Accepted (uipd joins only the user namespace --userns names).
    #[arg(long)]
    pub netns_only: bool,
    /// Give the interface its address, route and MTU.
    #[arg(long)]
    pub config_net: bool,
    /// Name of the interface in the namespace [default: eth0].
    #[arg(short = 'I', long, value_name = "NAME")]
    pub ns_ifname: Option<String>,
    /// MAC address of the interface in the namespace.
    #[arg(long, value_name = "MAC", value_parser = crate::addressing::parse_mac)]
    pub ns_mac_addr: Option<[u8; 6]>,
    /// Addresses, DNS and loopback mapping (as passt's).
    #[command(flatten)]
    pub net: AddrArgs,
    /// Publish host TCP ports into the namespace (see passt's -t).
    #[arg(short = 't', long = "tcp-ports", value_name = "SPEC")]
    pub tcp: Vec<String>,
    /// Publish host UDP ports into the namespace.
    #[arg(short = 'u', long = "udp-ports", value_name = "SPEC")]
    pub udp: Vec<String>,
    /// Namespace TCP ports toward the host's loopback: none, or PORTS.
    #[arg(short = 'T', long = "tcp-ns", value_name = "SPEC")]
    pub tcp_ns: Vec<String>,
    /// Namespace UDP ports toward the host's loopback: none, or PORTS.
    #[arg(short = 'U', long = "udp-ns", value_name = "SPEC")]
    pub udp_ns: Vec<String>,
    /// Foreground, PID file, log file, quiet and debug (as passt's).
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Accepted; use RUST_LOG=trace.
    #[arg(long)]
    pub trace: bool,
    /// Accepted: uipd logs to stderr.
    #[arg(short = 'e', long)]
    pub stderr: bool,
    /// Print the version.
    #[arg(long)]
    pub version: bool,
    /// A PID to join, or a command to run in new namespaces.
    #[arg(value_name = "PID|COMMAND", trailing_var_arg = true)]
    pub rest: Vec<OsString>,
}

impl Args {
    /// The daemon configuration for these arguments, on `workers` workers.
    pub fn invocation(&self, workers: usize) -> Result<Invocation, String> {
        let (ns_forwards, ns_auto) = ns_forwards(&self.tcp_ns, &self.udp_ns)?;
        let pid = match self.rest.as_slice() {
            [p] if p
                .to_str()
                .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())) =>
            {
                p.to_str().map(str::to_owned)
            }
            _ => None,
        };
        let target = match (&self.netns, &pid) {
            (Some(_), Some(_)) => {
                return Err("give a PID or --netns, not both".into());
            }
            (Some(n), None) if !self.rest.is_empty() => {
                return Err(format!("--netns {n} and a command: give one of them"));
            }
            (Some(n), None) if n.contains('/') => Some(n.clone()),
            (Some(n), None) => Some(format!("/run/netns/{n}")),
            (None, Some(p)) => Some(p.clone()),
            (None, None) => None,
        };
        let ports = publish_specs(&self.tcp, &self.udp, Who::Pasta)?;
        let frontend = match &target {
            Some(t) => Frontend::Attach(t.clone()),
            None if self.rest.is_empty() => {
                let shell = std::env::var_os("SHELL").unwrap_or_else(|| "/bin/sh".into());
                Frontend::Spawn(vec![shell])
            }
            None => Frontend::Spawn(self.rest.clone()),
        };
        let (stack, _) = self.net.stack(65520, true)?;
        let background = target.is_some() && !self.daemon.foreground;
        // Quit with the namespace: its file (a PID's is /proc/PID/ns/net,
        // gone when the process is).
        let watch = match (&target, self.no_netns_quit) {
            (Some(t), false) => Some(crate::dataplane::netns::netns_path(t)),
            _ => None,
        };
        let config = Config {
            ifname: self.ns_ifname.clone().unwrap_or_else(|| "eth0".into()),
            config_net: self.config_net,
            publish: ports.fixed,
            publish_every: ports.every,
            publish_auto: ports.auto,
            ns_forwards,
            ns_auto,
            guest_mac: self.ns_mac_addr,
            watch_netns: watch,
            // pasta brings the namespace's lo up, as slirp4netns -c does.
            loopback_up: true,
            ..Config::with_defaults(frontend, stack, workers)
        };
        Ok(Invocation {
            userns: self.userns.clone(),
            ..self.daemon.invocation(config, background)
        })
    }
}

/// The `-T`/`-U` specs as namespace-to-host forwards: each port listens on
/// the namespace's 127.0.0.1 and ::1 (or on the `ADDR/` given) and goes to
/// the host's loopback, to the port after `:` if one is given; and the
/// `auto` sets (with their `~P` exclusions), one per flag at most.
pub fn ns_forwards(
    tcp: &[String],
    udp: &[String],
) -> Result<(Vec<NsForward>, Vec<PortSet>), String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let mut out = Vec::new();
    let mut auto: Vec<PortSet> = Vec::new();
    for (flag, specs) in [('T', tcp), ('U', udp)] {
        for s in specs {
            let fixed = match parse_spec(s, flag, Who::Pasta)? {
                Ports::Fixed(v) => v,
                Ports::Auto(set) => {
                    if auto.iter().any(|a| a.proto == set.proto) {
                        return Err(format!("-{flag} '{s}': 'auto' is given twice"));
                    }
                    auto.push(set);
                    continue;
                }
                Ports::Every(_) => {
                    return Err(format!(
                        "-{flag} '{s}': from the namespace to the host uipd forwards named \
                         ports or 'auto' (exclusion-only lists are not supported there)"
                    ));
                }
            };
            for spec in fixed {
                // Without an address the spec lists 0.0.0.0 and [::]: the
                // namespace's loopback of each family stands for them.
                let listen = match spec.addr {
                    IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    a => a,
                };
                for (addr, to) in spec.forwards() {
                    out.push(NsForward {
                        proto: spec.proto,
                        listen: SocketAddr::new(listen, addr.port()),
                        to_port: to,
                    });
                }
            }
        }
    }
    Ok((out, auto))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn parse(args: &str) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("pasta").chain(args.split_whitespace()))
    }

    #[test]
    fn the_integrators_argv_lines_parse() {
        // podman 4.3 (--network pasta, -p 8080:80).
        let a = parse(
            "--config-net -t 8080-8080:80-80 -u none -T none -U none --no-map-gw --quiet \
             --netns /run/user/1000/netns/netns-abc",
        )
        .unwrap();
        let inv = a.invocation(2).unwrap();
        assert!(inv.background);
        assert!(
            matches!(&inv.config.frontend, Frontend::Attach(t) if t == "/run/user/1000/netns/netns-abc")
        );
        assert!(inv.config.config_net && !inv.config.stack.host_loopback);
        let p: Vec<String> = inv.config.publish.iter().map(ToString::to_string).collect();
        assert_eq!(p, ["0.0.0.0:8080:80/tcp", "[::]:8080:80/tcp"]);
        assert_eq!(
            inv.config.watch_netns,
            Some(PathBuf::from("/run/user/1000/netns/netns-abc"))
        );
        // A PID, a name, a command.
        let inv = parse("-f 1234").unwrap().invocation(1).unwrap();
        assert!(matches!(&inv.config.frontend, Frontend::Attach(t) if t == "1234"));
        assert!(!inv.background);
        assert_eq!(
            inv.config.watch_netns,
            Some(PathBuf::from("/proc/1234/ns/net"))
        );
        let inv = parse("--netns box --no-netns-quit -I tap9")
            .unwrap()
            .invocation(1)
            .unwrap();
        assert!(matches!(&inv.config.frontend, Frontend::Attach(t) if t == "/run/netns/box"));
        assert_eq!(
            (inv.config.ifname.as_str(), inv.config.watch_netns.as_ref()),
            ("tap9", None)
        );
        // podman 5 names host.containers.internal with --map-guest-addr.
        let inv = parse("--config-net --map-guest-addr 169.254.1.2 -- sh -c true")
            .unwrap()
            .invocation(1)
            .unwrap();
        assert_eq!(
            inv.config.stack.loopback_aliases,
            vec![std::net::IpAddr::V4(Ipv4Addr::new(169, 254, 1, 2))]
        );
        assert!(matches!(&inv.config.frontend, Frontend::Spawn(c) if c.len() == 3 && c[0] == "sh"));
        assert!(!inv.background);
        let inv = parse("-a 10.1.0.9 -n 16 -g 10.1.0.1 --ns-mac-addr 02:00:00:00:00:09 1")
            .unwrap()
            .invocation(1)
            .unwrap();
        assert_eq!(
            (inv.config.stack.guest_ip, inv.config.stack.prefix_len),
            (Ipv4Addr::new(10, 1, 0, 9), 16)
        );
        assert_eq!(inv.config.guest_mac, Some([2, 0, 0, 0, 0, 9]));
    }

    #[test]
    fn auto_and_namespace_to_host_forwards() {
        use crate::publish::PubProto;
        let inv = parse("-t auto -u auto,~53 -T 8080,9000:9001 -U ::1/5353 1")
            .unwrap()
            .invocation(1)
            .unwrap();
        let c = &inv.config;
        assert!(c.publish.is_empty() && c.publish_every.is_empty());
        assert_eq!(c.publish_auto.len(), 2);
        assert_eq!(c.publish_auto[1].proto, PubProto::Udp);
        assert!(c.publish_auto[1].excludes(53) && !c.publish_auto[1].excludes(54));
        let f: Vec<String> = c.ns_forwards.iter().map(ToString::to_string).collect();
        assert_eq!(
            f,
            [
                "ns 127.0.0.1:8080 -> host port 8080/tcp",
                "ns 127.0.0.1:9000 -> host port 9001/tcp",
                "ns [::1]:8080 -> host port 8080/tcp",
                "ns [::1]:9000 -> host port 9001/tcp",
                "ns [::1]:5353 -> host port 5353/udp",
            ]
        );
        assert!(c.ns_auto.is_empty());
        let inv = parse("-T auto,~22 -U auto -T 8080 1")
            .unwrap()
            .invocation(1)
            .unwrap();
        let a = &inv.config.ns_auto;
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].proto, a[1].proto), (PubProto::Tcp, PubProto::Udp));
        assert!(a[0].excludes(22) && !a[0].excludes(23) && !a[1].excludes(22));
        assert_eq!(inv.config.ns_forwards.len(), 2, "8080 on 127.0.0.1 and ::1");
        let inv = parse("-t ~22 1").unwrap().invocation(1).unwrap();
        assert_eq!(
            inv.config.publish_every.len(),
            1,
            "only exclusions: all others"
        );
    }

    #[test]
    fn bad_argv_is_a_clear_error() {
        for (line, want) in [
            ("-U ~53 1", "exclusion-only lists"),
            ("-T auto -T auto,~22 1", "'auto' is given twice"),
            ("-T all 1", "'all' is passt's"),
            ("-t all 1", "'all' is passt's"),
            ("-T 80-81:90 1", "host range has 2 ports"),
            ("--netns a 7", "not both"),
            ("--netns a sh", "give one of them"),
            ("-D x 1", "-D 'x'"),
        ] {
            let e = parse(line).unwrap().invocation(1).expect_err(line);
            assert!(e.contains(want), "{line}: {e}");
        }
        assert!(
            parse("--no-such-option")
                .unwrap_err()
                .to_string()
                .contains("--no-such-option")
        );
    }
}
