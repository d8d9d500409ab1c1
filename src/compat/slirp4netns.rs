//! The slirp4netns personality: `slirp4netns [OPTIONS] PID|PATH [TAPNAME]`.
//!
//! # Contract (slirp4netns 1.2, as podman 4.x and rootlesskit 1.x use it)
//!
//! - The target is a PID (`--netns-type=pid`, the default: its
//!   `/proc/PID/ns/net`) or a namespace file (`--netns-type=path`);
//!   `--userns-path` is joined first, while uipd has one thread.
//! - TAPNAME (default `tap0`) is created in it, or attached when it exists
//!   (rootlesskit makes a persistent single-queue `tap0` itself; uipd then
//!   serves it with one worker).
//! - `-c/--configure` brings `lo` up, and the TAP with the guest address
//!   (network base + 100/24 by default, 10.0.2.100), the default route via
//!   base + 2;
//!   without it the caller configures the namespace (rootlesskit does).
//!   DNS is base + 3; with `--enable-ipv6` the guest link also has fd00::/64
//!   with gateway ::2 and DNS ::3.
//! - `-r FD`: "1" is written to FD once the TAP is served, then FD is
//!   closed. `-e FD`: uipd exits when FD becomes readable or is closed.
//! - `-a/--api-socket PATH`: a UNIX socket taking one JSON request per
//!   connection ([`Api`]): `add_hostfwd`, `list_hostfwd`, `remove_hostfwd`.
//! - `--enable-sandbox` and `--enable-seccomp` ask for what uipd always
//!   does ([`crate::sandbox`]: empty read-only root, no capabilities, a
//!   seccomp list per thread), so they change nothing; without them uipd
//!   is sandboxed all the same, as passt always is.
//!
//! Everything else is the namespace frontend (`--netns`) with slirp4netns's
//! addresses: the gateway (10.0.2.2) is the host's loopback unless
//! `--disable-host-loopback`, and 10.0.2.3:53 goes to the host's resolvers
//! unless `--disable-dns`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

use crate::addressing::{Layout, Plan, Request};
use crate::control::Forwards;
use crate::daemon::{Config, Frontend};
use crate::dataplane::worker::Shared;
use crate::publish::{PubProto, PublishSpec};
use crate::rings::FrameRing;
use crate::stack;

/// slirp4netns's default network.
const DEFAULT_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 0, 2, 0), 24);

/// Workers when the TAP is ours to make multiqueue: as uipd's own default.
const MAX_WORKERS: usize = 4;

/// The command line (slirp4netns 1.2's options).
#[derive(Debug, Parser, PartialEq, Eq)]
#[command(
    name = "slirp4netns",
    about = "uipd as slirp4netns: user-mode networking for a network namespace",
    long_about = "uipd as slirp4netns: user-mode networking for a network namespace.\n\n\
        Usage: slirp4netns [OPTIONS] PID|PATH [TAPNAME]\n\n\
        uipd always runs sandboxed (empty read-only root, no capabilities, \
        per-thread seccomp lists): --enable-sandbox and --enable-seccomp are \
        accepted and change nothing.",
    disable_version_flag = true
)]
pub struct Args {
    /// Bring up the interface: the guest address (base + 100), the default
    /// route via the gateway (base + 2).
    #[arg(short = 'c', long)]
    pub configure: bool,
    /// Exit when this fd becomes readable or is closed.
    #[arg(short = 'e', long, value_name = "FD")]
    pub exit_fd: Option<RawFd>,
    /// Write "1" to this fd (then close it) once the network is served.
    #[arg(short = 'r', long, value_name = "FD")]
    pub ready_fd: Option<RawFd>,
    /// MTU of the interface (default 1500, at most 65520).
    #[arg(short = 'm', long, default_value_t = 1500,
          value_parser = clap::value_parser!(u16).range(68..=65520))]
    pub mtu: u16,
    /// The guest network (default 10.0.2.0/24).
    #[arg(long, value_name = "CIDR", value_parser = crate::addressing::parse_cidr4)]
    pub cidr: Option<(Ipv4Addr, u8)>,
    /// Refuse connections to the gateway (otherwise the host's 127.0.0.1).
    #[arg(long)]
    pub disable_host_loopback: bool,
    /// No DNS server at base + 3.
    #[arg(long)]
    pub disable_dns: bool,
    /// MAC address of the interface.
    #[arg(long, value_name = "MAC", value_parser = crate::addressing::parse_mac)]
    pub macaddress: Option<[u8; 6]>,
    /// The namespace is a PID (`pid`) or a file (`path`).
    #[arg(long, value_name = "TYPE", default_value = "pid", value_parser = ["pid", "path"])]
    pub netns_type: String,
    /// Join this user namespace before the network namespace.
    #[arg(long, value_name = "PATH")]
    pub userns_path: Option<PathBuf>,
    /// Serve slirp4netns's JSON API on this UNIX socket.
    #[arg(short = 'a', long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// IPv6 on the guest link: fd00::/64, gateway fd00::2, DNS fd00::3.
    #[arg(short = '6', long)]
    pub enable_ipv6: bool,
    /// Source address for outbound IPv4 connections.
    #[arg(long, value_name = "ADDR")]
    pub outbound_addr: Option<Ipv4Addr>,
    /// Source address for outbound IPv6 connections.
    #[arg(long, value_name = "ADDR")]
    pub outbound_addr6: Option<std::net::Ipv6Addr>,
    /// Accepted: the sandbox (mount namespace, no capabilities) is always on.
    #[arg(long)]
    pub enable_sandbox: bool,
    /// Accepted: per-thread seccomp lists are always on.
    #[arg(long)]
    pub enable_seccomp: bool,
    /// Print the version.
    #[arg(short = 'v', long)]
    pub version: bool,
    /// The network namespace: a PID, or a path with --netns-type=path.
    #[arg(value_name = "PID|PATH", required_unless_present = "version")]
    pub target: Option<String>,
    /// The TAP interface to create (or attach) in it.
    #[arg(value_name = "TAPNAME", default_value = "tap0", value_parser = parse_tapname)]
    pub tapname: String,
}

fn parse_tapname(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 || s.contains(['/', ' ', ':']) {
        return Err("a TAP name has 1 to 15 characters, without '/', ':' or spaces".into());
    }
    Ok(s.to_string())
}

/// The version line(s) `--version` prints.
pub fn version() -> String {
    format!(
        "slirp4netns version 1.2.0 (uipd {})\nuipd: user-mode networking, not libslirp\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// What `main` does with the parsed command line.
#[derive(Debug)]
pub struct Invocation {
    /// The daemon's configuration.
    pub config: Config,
    /// The user namespace to join first.
    pub userns: Option<PathBuf>,
    /// The guest address (for the API's `guest_addr`).
    pub guest: Ipv4Addr,
}

impl Args {
    /// The daemon configuration and set-up steps for these arguments, on
    /// `workers` workers.
    pub fn invocation(&self, workers: usize) -> Result<Invocation, String> {
        let target = self
            .target
            .clone()
            .ok_or("the PID or path of the network namespace is missing")?;
        let target = match self.netns_type.as_str() {
            "pid" => {
                if target.is_empty() || !target.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!(
                        "'{target}' is not a PID (use --netns-type=path for a namespace file)"
                    ));
                }
                target
            }
            _ => {
                if target.bytes().all(|b| b.is_ascii_digit()) {
                    // A path that reads as a PID would be taken for one.
                    format!("./{target}")
                } else {
                    target
                }
            }
        };
        let plan = Plan::resolve(
            &Request {
                cidr: self.cidr,
                dns: self.disable_dns.then_some(None),
                ..Request::default()
            },
            Layout::SLIRP4NETNS,
            DEFAULT_CIDR,
        )?;
        let mut stack = stack::Config {
            mtu: self.mtu,
            host_loopback: !self.disable_host_loopback,
            ipv6: self.enable_ipv6,
            max_flows: 65536,
            offload: stack::Offload {
                vnet_hdr: true,
                tso: true,
                tso6: true,
                csum: true,
                ufo: true,
            },
            ..stack::Config::default()
        };
        plan.apply(&mut stack);
        let config = Config {
            ifname: self.tapname.clone(),
            config_net: self.configure,
            // slirp4netns's configure_network() brings `lo` up first; podman
            // counts on it (the container's `lo` is down otherwise).
            loopback_up: self.configure,
            guest_mac: self.macaddress,
            ready_fd: self.ready_fd,
            exit_fd: self.exit_fd,
            api_socket: self.api_socket.clone(),
            outbound: (self.outbound_addr, self.outbound_addr6),
            ..Config::with_defaults(Frontend::Attach(target), stack, workers.min(MAX_WORKERS))
        };
        Ok(Invocation {
            config,
            userns: self.userns_path.clone(),
            guest: plan.guest,
        })
    }
}

// ───────────────────────────── the API socket ─────────────────────────────

/// Longest a client may take to send its request.
const READ_LIMIT: Duration = Duration::from_secs(2);
/// Largest request read.
const REQUEST_MAX: usize = 4096;

/// One request of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `add_hostfwd`: publish `spec` (one port).
    Add(PublishSpec),
    /// `list_hostfwd`.
    List,
    /// `remove_hostfwd {"id": N}`.
    Remove(u64),
}

fn desc(msg: impl std::fmt::Display) -> String {
    format!("bad request: {msg}")
}

/// Parse one request; `guest` is the guest's address (an empty or absent
/// `guest_addr` means it; another one is refused: uipd forwards only to
/// the guest). Errors are the `desc` of the error reply.
pub fn parse_request(body: &[u8], guest: Ipv4Addr) -> Result<ApiRequest, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| desc(format!("not JSON: {e}")))?;
    let exec = v
        .get("execute")
        .and_then(Value::as_str)
        .ok_or_else(|| desc("no \"execute\""))?;
    let args = v.get("arguments").cloned().unwrap_or(Value::Null);
    let field = |k: &str| args.get(k).filter(|x| !x.is_null());
    let port = |k: &str| -> Result<u16, String> {
        let p = field(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| desc(format!("{exec}: \"{k}\" is missing or not a number")))?;
        u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| desc(format!("{exec}: \"{k}\" {p} is not a port (1-65535)")))
    };
    match exec {
        "add_hostfwd" => {
            let proto_s = field("proto").and_then(Value::as_str).unwrap_or("tcp");
            let (proto, family) = match proto_s {
                "tcp" => (PubProto::Tcp, None),
                "udp" => (PubProto::Udp, None),
                "tcp4" => (PubProto::Tcp, Some(4)),
                "udp4" => (PubProto::Udp, Some(4)),
                "tcp6" => (PubProto::Tcp, Some(6)),
                "udp6" => (PubProto::Udp, Some(6)),
                p => return Err(desc(format!("add_hostfwd: unknown proto \"{p}\""))),
            };
            let host = match field("host_addr").and_then(Value::as_str) {
                Some(s) if !s.is_empty() => s
                    .parse::<IpAddr>()
                    .map_err(|_| desc(format!("add_hostfwd: bad host_addr \"{s}\"")))?,
                _ if family == Some(6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            };
            match (family, host) {
                (Some(4), IpAddr::V6(_)) | (Some(6), IpAddr::V4(_)) => {
                    return Err(desc(format!(
                        "add_hostfwd: host_addr {host} does not match proto {proto_s}"
                    )));
                }
                _ => {}
            }
            match field("guest_addr").and_then(Value::as_str) {
                None | Some("") => {}
                Some(s) => match s.parse::<Ipv4Addr>() {
                    Ok(a) if a == guest => {}
                    _ => {
                        return Err(desc(format!(
                            "add_hostfwd: guest_addr \"{s}\": uipd forwards to the guest's {guest}"
                        )));
                    }
                },
            }
            Ok(ApiRequest::Add(PublishSpec {
                addr: host,
                host_port: port("host_port")?,
                guest_port: port("guest_port")?,
                count: 1,
                proto,
            }))
        }
        "list_hostfwd" => Ok(ApiRequest::List),
        "remove_hostfwd" => {
            let id = field("id")
                .and_then(Value::as_u64)
                .ok_or_else(|| desc("remove_hostfwd: \"id\" is missing or not a number"))?;
            Ok(ApiRequest::Remove(id))
        }
        other => Err(desc(format!("unknown \"execute\" \"{other}\""))),
    }
}

/// The error reply for `desc`.
pub fn error_reply(desc: &str) -> Value {
    json!({ "error": { "desc": desc } })
}

/// The API socket and the forwards added through it.
pub struct Api {
    listener: UnixListener,
    /// The socket file, removed at the end (from inside the sandbox).
    file: crate::sandbox::Anchor,
    fwds: HostFwds,
}

/// The forwards added through the API.
struct HostFwds {
    guest: Ipv4Addr,
    /// (id, spec) in the order added; ids count from 1.
    entries: Vec<(u64, PublishSpec)>,
    next_id: u64,
}

impl Api {
    /// Listen on `path` (a stale socket file is replaced). `guest` is the
    /// address forwards go to.
    pub fn bind(path: &Path, guest: Ipv4Addr) -> std::io::Result<Api> {
        if path.exists() && UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(Api {
            listener,
            file: crate::sandbox::Anchor::new(path)?,
            fwds: HostFwds {
                guest,
                entries: Vec::new(),
                next_id: 1,
            },
        })
    }

    /// Serve the clients waiting now (without blocking when there are none).
    pub fn poll(
        &mut self,
        forwards: &mut Forwards,
        workers: &[Arc<Shared>],
        inboxes: &[Arc<FrameRing>],
    ) {
        let fwds = &mut self.fwds;
        crate::control::accept_waiting(&self.listener, |conn| {
            if let Err(e) = fwds.serve(conn, forwards, workers, inboxes) {
                log::debug!("slirp4netns API: client: {e}");
            }
        });
    }

    /// Carry out `req` on `forwards` (handed to worker 0 and waited for).
    pub fn execute(
        &mut self,
        req: ApiRequest,
        forwards: &mut Forwards,
        workers: &[Arc<Shared>],
        inboxes: &[Arc<FrameRing>],
    ) -> Value {
        self.fwds.execute(req, forwards, workers, inboxes)
    }
}

impl HostFwds {
    fn serve(
        &mut self,
        mut conn: UnixStream,
        forwards: &mut Forwards,
        workers: &[Arc<Shared>],
        inboxes: &[Arc<FrameRing>],
    ) -> std::io::Result<()> {
        conn.set_nonblocking(false)?;
        conn.set_write_timeout(Some(READ_LIMIT))?;
        let body = read_request(&mut conn)?;
        let reply = match parse_request(&body, self.guest) {
            Ok(req) => self.execute(req, forwards, workers, inboxes),
            Err(d) => error_reply(&d),
        };
        conn.write_all(format!("{reply}\n").as_bytes())
    }

    fn execute(
        &mut self,
        req: ApiRequest,
        forwards: &mut Forwards,
        workers: &[Arc<Shared>],
        inboxes: &[Arc<FrameRing>],
    ) -> Value {
        let apply = |forwards: &mut Forwards| -> Result<(), String> {
            if let (Some(w0), Some(in0)) = (workers.first(), inboxes.first()) {
                forwards.flush(w0, in0);
                if !forwards.wait() {
                    return Err("the worker did not answer in time".into());
                }
            }
            Ok(())
        };
        match req {
            ApiRequest::Add(spec) => {
                if let Err(e) = forwards.add(&spec).and_then(|()| apply(forwards)) {
                    return error_reply(&desc(format!("add_hostfwd: {e}")));
                }
                let id = self.next_id;
                self.next_id += 1;
                log::info!("slirp4netns API: add_hostfwd {id}: {spec}");
                self.entries.push((id, spec));
                json!({ "return": { "id": id } })
            }
            ApiRequest::List => {
                let entries: Vec<Value> = self
                    .entries
                    .iter()
                    .map(|(id, s)| {
                        let v6 = s.addr.is_ipv6();
                        let proto = match (s.proto, v6) {
                            (PubProto::Tcp, false) => "tcp",
                            (PubProto::Udp, false) => "udp",
                            (PubProto::Tcp, true) => "tcp6",
                            (PubProto::Udp, true) => "udp6",
                        };
                        json!({
                            "id": id,
                            "proto": proto,
                            "host_addr": s.addr.to_string(),
                            "host_port": s.host_port,
                            "guest_addr": self.guest.to_string(),
                            "guest_port": s.guest_port,
                        })
                    })
                    .collect();
                json!({ "return": { "entries": entries } })
            }
            ApiRequest::Remove(id) => {
                let Some(i) = self.entries.iter().position(|(e, _)| *e == id) else {
                    return error_reply(&desc(format!("remove_hostfwd: no forward with id {id}")));
                };
                let (_, spec) = self.entries.remove(i);
                if let Err(e) = forwards.remove(&spec).and_then(|()| apply(forwards)) {
                    return error_reply(&desc(format!("remove_hostfwd: {e}")));
                }
                log::info!("slirp4netns API: remove_hostfwd {id}: {spec}");
                json!({ "return": {} })
            }
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.file.remove();
    }
}

/// Read one request: until EOF (clients that half-close) or until the bytes
/// so far are a whole JSON value (clients that wait for the reply),
/// bounded in size and time.
fn read_request(conn: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let end = Instant::now() + READ_LIMIT;
    let mut body = Vec::new();
    let mut buf = [0u8; 1024];
    while body.len() < REQUEST_MAX {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                body.extend_from_slice(&buf[..n]);
                if serde_json::from_slice::<Value>(&body).is_ok() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(body)
}

/// Write "1" to the ready fd and close it (`-r FD`).
pub fn signal_ready(fd: RawFd) {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was handed to this process by its parent for exactly
    // this (`-r FD`); nothing else in uipd opens, uses or closes it, and
    // the File takes it over and closes it once.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    if let Err(e) = f.write_all(b"1") {
        log::warn!("slirp4netns: writing to the ready fd {fd}: {e}");
    }
}

/// True when the exit fd (`-e FD`) is readable, closed or broken.
pub fn exit_requested(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one live pollfd for the call's duration; a timeout of
    // 0 never blocks. An fd that is not open comes back as POLLNVAL.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("slirp4netns").chain(args.split_whitespace()))
    }

    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

    #[test]
    fn the_integrators_argv_lines_parse() {
        // rootlesskit 1.1 (--net=slirp4netns --port-driver=slirp4netns).
        let a = parse(
            "--mtu 65520 -r 3 --disable-host-loopback --api-socket /tmp/rk/.s4nn.sock 20160 tap0",
        )
        .unwrap();
        assert_eq!((a.mtu, a.ready_fd, a.configure), (65520, Some(3), false));
        assert!(a.disable_host_loopback);
        assert_eq!(a.target.as_deref(), Some("20160"));
        let inv = a.invocation(2).unwrap();
        assert!(!inv.config.loopback_up, "without -c the caller sets up lo");
        assert!(matches!(&inv.config.frontend, Frontend::Attach(t) if t == "20160"));
        assert_eq!(inv.config.ifname, "tap0");
        assert!(!inv.config.stack.host_loopback);
        assert!(!inv.config.stack.ipv6);
        assert_eq!(inv.guest, GUEST);
        assert_eq!(inv.config.stack.gateway, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(inv.config.stack.dns, Some(Ipv4Addr::new(10, 0, 2, 3)));
        // podman 4.3 (rootless, --network slirp4netns).
        let a = parse(
            "--disable-host-loopback --mtu=65520 --enable-sandbox --enable-seccomp --enable-ipv6 \
             -c -r 3 -e 4 --netns-type=path /run/user/1000/netns/netns-1234 tap0",
        )
        .unwrap();
        assert!(a.configure && a.enable_ipv6 && a.enable_sandbox && a.enable_seccomp);
        assert_eq!((a.ready_fd, a.exit_fd), (Some(3), Some(4)));
        let inv = a.invocation(2).unwrap();
        assert!(
            inv.config.loopback_up,
            "-c brings lo up, as slirp4netns does"
        );
        assert!(matches!(
            &inv.config.frontend,
            Frontend::Attach(t) if t == "/run/user/1000/netns/netns-1234"
        ));
        assert_eq!(
            inv.config.stack.gateway6,
            "fd00::2".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(inv.config.stack.dns6, Some("fd00::3".parse().unwrap()));
        // podman 4.3 as root, as seen (tests/integrators_podman.rs):
        // `--network slirp4netns:allow_host_loopback=true`, then
        // `--network slirp4netns:port_handler=slirp4netns` (after a `--help`
        // that podman greps for the flags).
        let a = parse(
            "--mtu=65520 --enable-sandbox --enable-seccomp --enable-ipv6 -c -e 3 -r 4 \
             --netns-type=path /run/netns/netns-4c859acc-a013-add9-5eb4-1ec80e43411d tap0",
        )
        .unwrap();
        let inv = a.invocation(2).unwrap();
        assert!(inv.config.stack.host_loopback && inv.config.config_net);
        assert_eq!(
            (inv.config.exit_fd, inv.config.ready_fd),
            (Some(3), Some(4))
        );
        let a = parse(
            "--disable-host-loopback --mtu=65520 --enable-sandbox --enable-seccomp --enable-ipv6 \
             -c -e 3 -r 4 --api-socket /tmp/pm/tmp/d62750a35ba5.net \
             --netns-type=path /run/netns/netns-1ca2697a-2e0c-e895-9e27-b974d80beaf4 tap0",
        )
        .unwrap();
        let inv = a.invocation(2).unwrap();
        assert!(!inv.config.stack.host_loopback);
        assert_eq!(
            inv.config.api_socket.as_deref(),
            Some(Path::new("/tmp/pm/tmp/d62750a35ba5.net"))
        );
        // --cidr, --macaddress, --disable-dns, --userns-path, TAPNAME default.
        let a = parse(
            "--cidr 10.99.0.0/24 --macaddress 02:00:00:00:00:99 --disable-dns \
             --userns-path /proc/7/ns/user 7",
        )
        .unwrap();
        let inv = a.invocation(1).unwrap();
        assert_eq!(inv.config.ifname, "tap0");
        assert_eq!(inv.guest, Ipv4Addr::new(10, 99, 0, 100));
        assert_eq!(inv.config.stack.dns, None);
        assert_eq!(inv.config.guest_mac, Some([2, 0, 0, 0, 0, 0x99]));
        assert_eq!(inv.userns, Some(PathBuf::from("/proc/7/ns/user")));
    }

    #[test]
    fn bad_argv_is_a_clear_error() {
        for (line, want) in [
            ("--no-such-flag 1 tap0", "--no-such-flag"),
            ("--mtu 70000 1 tap0", "70000"),
            ("--netns-type=fd 1", "fd"),
            ("--cidr 10.0.2.0 1", "CIDR"),
            ("--macaddress 01:00:00:00:00:01 1", "multicast"),
            ("1 tap0 extra", "extra"),
        ] {
            let e = parse(line).expect_err(line).to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
        let e = parse("abc tap0").unwrap().invocation(1).unwrap_err();
        assert!(e.contains("not a PID"), "{e}");
        assert!(parse("").is_err(), "the target is required");
        assert!(parse("--version").unwrap().version);
    }

    #[test]
    fn help_lists_every_flag_the_integrators_look_for() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        for flag in [
            "--netns-type",
            "--mtu",
            "--cidr",
            "--disable-host-loopback",
            "--api-socket",
            "--enable-sandbox",
            "--enable-seccomp",
            "--outbound-addr",
            "--enable-ipv6",
            "--userns-path",
            "--macaddress",
            "--disable-dns",
            "--ready-fd",
            "--exit-fd",
            "--configure",
        ] {
            assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
        }
    }

    #[test]
    fn api_requests_parse_and_bad_ones_say_why() {
        let add = |body: &str| parse_request(body.as_bytes(), GUEST);
        let r = add(r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "127.0.0.1", "host_port": 18080, "guest_addr": "10.0.2.100", "guest_port": 80}}"#).unwrap();
        assert_eq!(
            r,
            ApiRequest::Add(PublishSpec::parse("127.0.0.1:18080:80/tcp").unwrap())
        );
        let r = add(r#"{"execute":"add_hostfwd","arguments":{"proto":"udp6","host_port":53,"guest_port":5353}}"#).unwrap();
        assert_eq!(
            r,
            ApiRequest::Add(PublishSpec::parse("[::]:53:5353/udp").unwrap())
        );
        let r = add(r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp4","host_port":1,"guest_addr":"","guest_port":2}}"#).unwrap();
        assert_eq!(
            r,
            ApiRequest::Add(PublishSpec::parse("0.0.0.0:1:2").unwrap())
        );
        assert_eq!(add(r#"{"execute":"list_hostfwd"}"#), Ok(ApiRequest::List));
        assert_eq!(
            add(r#"{"execute":"remove_hostfwd","arguments":{"id":7}}"#),
            Ok(ApiRequest::Remove(7))
        );
        for (body, want) in [
            ("not json", "not JSON"),
            (r#"{"arguments":{}}"#, "no \"execute\""),
            (r#"{"execute":"reboot"}"#, "unknown \"execute\" \"reboot\""),
            (
                r#"{"execute":"add_hostfwd","arguments":{"proto":"sctp","host_port":1,"guest_port":1}}"#,
                "unknown proto",
            ),
            (
                r#"{"execute":"add_hostfwd","arguments":{"host_port":0,"guest_port":1}}"#,
                "not a port",
            ),
            (
                r#"{"execute":"add_hostfwd","arguments":{"host_port":70000,"guest_port":1}}"#,
                "not a port",
            ),
            (
                r#"{"execute":"add_hostfwd","arguments":{"guest_port":1}}"#,
                "\"host_port\" is missing",
            ),
            (
                r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp6","host_addr":"127.0.0.1","host_port":1,"guest_port":1}}"#,
                "does not match",
            ),
            (
                r#"{"execute":"add_hostfwd","arguments":{"host_addr":"x","host_port":1,"guest_port":1}}"#,
                "bad host_addr",
            ),
            (
                r#"{"execute":"add_hostfwd","arguments":{"host_port":1,"guest_addr":"10.0.2.5","guest_port":1}}"#,
                "forwards to the guest's 10.0.2.100",
            ),
            (
                r#"{"execute":"remove_hostfwd","arguments":{}}"#,
                "\"id\" is missing",
            ),
        ] {
            let e = add(body).expect_err(body);
            assert!(
                e.starts_with("bad request: ") && e.contains(want),
                "{body}: {e}"
            );
            let reply = error_reply(&e);
            assert_eq!(reply["error"]["desc"], Value::String(e));
        }
    }

    #[test]
    fn api_adds_lists_and_removes_on_the_forwards() {
        // No workers: the forwards are bound and queued, as at start-up.
        let dir = std::env::temp_dir().join(format!("uipd-s4nn-api-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let mut api = Api::bind(&dir.join("api.sock"), GUEST).unwrap();
        let mut fwd = Forwards::new();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spec = PublishSpec::parse(&format!("127.0.0.1:{port}:80")).unwrap();
        let r = api.execute(ApiRequest::Add(spec.clone()), &mut fwd, &[], &[]);
        assert_eq!(r, json!({"return": {"id": 1}}));
        let again = api.execute(ApiRequest::Add(spec.clone()), &mut fwd, &[], &[]);
        assert!(
            again["error"]["desc"]
                .as_str()
                .unwrap()
                .contains("already published")
        );
        let list = api.execute(ApiRequest::List, &mut fwd, &[], &[]);
        assert_eq!(
            list,
            json!({"return": {"entries": [{"id": 1, "proto": "tcp", "host_addr": "127.0.0.1",
                   "host_port": port, "guest_addr": "10.0.2.100", "guest_port": 80}]}})
        );
        assert_eq!(
            api.execute(ApiRequest::Remove(1), &mut fwd, &[], &[]),
            json!({"return": {}})
        );
        let gone = api.execute(ApiRequest::Remove(1), &mut fwd, &[], &[]);
        assert!(
            gone["error"]["desc"]
                .as_str()
                .unwrap()
                .contains("no forward with id 1")
        );
        assert_eq!(fwd.specs().count(), 0);
        drop(api);
        assert!(
            !dir.join("api.sock").exists(),
            "the socket file goes with it"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
