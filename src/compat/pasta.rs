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
//!   [`super::passt::parse_ports`]); uipd publishes none by default where
//!   pasta's default is `auto`, which uipd refuses, like `-T/-U` other than
//!   `none` (ports of the namespace toward the host: not supported).
//! - Addresses as passt's: `-a`, `-n`, `-g`, `-D`, `--dns-forward`,
//!   `--no-map-gw`, `-m/--mtu`, `-M` (uipd's MAC), `--ns-mac-addr` (the
//!   TAP's). `-q`, `-d`, `-e/--stderr`, `--trace` are accepted.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::passt::{AddrArgs, publish_specs};
use crate::daemon::{Config, Frontend};

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
    /// Namespace TCP ports toward the host: only `none`.
    #[arg(short = 'T', long = "tcp-ns", value_name = "SPEC")]
    pub tcp_ns: Vec<String>,
    /// Namespace UDP ports toward the host: only `none`.
    #[arg(short = 'U', long = "udp-ns", value_name = "SPEC")]
    pub udp_ns: Vec<String>,
    /// Stay in the foreground.
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Write the serving process's PID to FILE.
    #[arg(short = 'P', long = "pid", value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Log to FILE once in the background.
    #[arg(short = 'l', long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Accepted.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Accepted; use RUST_LOG=debug.
    #[arg(short = 'd', long)]
    pub debug: bool,
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

/// What `main` does with the parsed command line.
#[derive(Debug)]
pub struct Invocation {
    /// The daemon's configuration.
    pub config: Config,
    /// Go to the background (fork) before serving.
    pub background: bool,
    /// Where to write the serving process's PID.
    pub pid_file: Option<PathBuf>,
    /// The user namespace to join first.
    pub userns: Option<PathBuf>,
}

impl Args {
    /// The daemon configuration for these arguments, on `workers` workers.
    pub fn invocation(&self, workers: usize) -> Result<Invocation, String> {
        for s in self.tcp_ns.iter().chain(&self.udp_ns) {
            if s != "none" {
                return Err(format!(
                    "-T/-U '{s}': forwarding the namespace's ports to the host is not supported by uipd (use 'none')"
                ));
            }
        }
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
        let publish = publish_specs(&self.tcp, &self.udp)?;
        let frontend = match &target {
            Some(t) => Frontend::Attach(t.clone()),
            None if self.rest.is_empty() => {
                let shell = std::env::var_os("SHELL").unwrap_or_else(|| "/bin/sh".into());
                Frontend::Spawn(vec![shell])
            }
            None => Frontend::Spawn(self.rest.clone()),
        };
        let (stack, _) = self.net.stack(65520, true)?;
        let background = target.is_some() && !self.foreground;
        // Quit with the namespace: its file (a PID's is /proc/PID/ns/net,
        // gone when the process is).
        let watch = match (&target, self.no_netns_quit) {
            (Some(t), false) => Some(crate::dataplane::netns::netns_path(t)),
            _ => None,
        };
        let config = Config {
            ifname: self.ns_ifname.clone().unwrap_or_else(|| "eth0".into()),
            config_net: self.config_net,
            publish,
            guest_mac: self.ns_mac_addr,
            detach_stdio: background.then(|| self.log_file.clone()),
            watch_netns: watch,
            // pasta brings the namespace's lo up, as slirp4netns -c does.
            loopback_up: true,
            ..Config::with_defaults(frontend, stack, workers)
        };
        Ok(Invocation {
            config,
            background,
            pid_file: self.pid_file.clone(),
            userns: self.userns.clone(),
        })
    }
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
    fn bad_argv_is_a_clear_error() {
        for (line, want) in [
            ("-T 8080 1", "not supported"),
            ("-U auto 1", "not supported"),
            ("-t auto 1", "not supported"),
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
