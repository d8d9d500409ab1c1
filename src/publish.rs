//! Published ports (`-p/--publish`): the spec syntax and the host listeners.
//!
//! # Theory of operation
//!
//! A spec `[ADDR:]HOSTPORT[-HOSTPORT2]:GUESTPORT[-GUESTPORT2][/tcp|/udp]`
//! names one or more *forwards*: host port `HOSTPORT + i` on `ADDR`
//! (default 127.0.0.1; `0.0.0.0` only when written; an IPv6 address in
//! brackets, `[::1]` or `[::]`) goes to the guest's port `GUESTPORT + i`
//! (on its IPv4 address, whichever family the host side has: an IPv6
//! listener is `IPV6_V6ONLY`, so `[::]` and `0.0.0.0` can both be served). A range on one side needs a range of the same
//! length on the other; a single guest port with a host range is refused
//! (several host ports into one guest port would be legal but is almost
//! always a typo).
//!
//! The daemon binds every forward's socket itself, before anything runs
//! ([`bind`]), so a port in use, a privileged port without permission or a
//! malformed spec is an error at start-up that names the spec. A bound
//! socket is then handed to a worker, which accepts (TCP) or receives
//! (UDP) on it through io_uring and feeds the stack
//! ([`crate::stack::Stack::accept_tcp`], [`crate::stack::Stack::inbound_udp`]).
//! The control socket ([`crate::control`]) adds and removes forwards the
//! same way at run time.
//!
//! ```text
//!  host client ──► 127.0.0.1:8080 (listener, worker 0's io_uring accept)
//!                    └─► Stack::accept_tcp ─ SYN from gateway:EPHEMERAL ─► guest :80
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;

/// Transport of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PubProto {
    /// TCP: connections are accepted and forwarded.
    Tcp,
    /// UDP: datagrams from each host peer become a flow.
    Udp,
}

impl fmt::Display for PubProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PubProto::Tcp => "tcp",
            PubProto::Udp => "udp",
        })
    }
}

/// A parsed `--publish` spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PublishSpec {
    /// Host address to listen on.
    pub addr: IpAddr,
    /// First host port.
    pub host_port: u16,
    /// First guest port.
    pub guest_port: u16,
    /// Number of consecutive ports (1 without a range).
    pub count: u16,
    /// Transport.
    pub proto: PubProto,
}

/// Why a spec is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not of the form the syntax asks for.
    #[error("'{0}' is not [ADDR:]HOSTPORT[-HOSTPORT2]:GUESTPORT[-GUESTPORT2][/tcp|/udp]")]
    Syntax(String),
    /// A port that is not a number in 1..=65535.
    #[error("'{0}': '{1}' is not a port (1-65535)")]
    Port(String, String),
    /// A range whose end is below its start.
    #[error("'{0}': the range {1} ends before it starts")]
    Range(String, String),
    /// Host and guest ranges of different lengths.
    #[error("'{0}': the host range has {1} ports, the guest range {2}")]
    Mismatch(String, u32, u32),
    /// An address that is not IPv4, nor IPv6 in brackets.
    #[error("'{0}': '{1}' is not an IPv4 address or an IPv6 one in brackets")]
    Addr(String, String),
    /// A protocol other than tcp or udp.
    #[error("'{0}': unknown protocol '{1}' (tcp or udp)")]
    Proto(String, String),
}

fn parse_port(spec: &str, s: &str) -> Result<u16, SpecError> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 && !s.starts_with('+') => Ok(p),
        _ => Err(SpecError::Port(spec.into(), s.into())),
    }
}

/// `P` or `P1-P2`: (first, count).
fn parse_range(spec: &str, s: &str) -> Result<(u16, u32), SpecError> {
    match s.split_once('-') {
        None => Ok((parse_port(spec, s)?, 1)),
        Some((a, b)) => {
            let (a, b) = (parse_port(spec, a)?, parse_port(spec, b)?);
            if b < a {
                return Err(SpecError::Range(spec.into(), s.into()));
            }
            Ok((a, u32::from(b - a) + 1))
        }
    }
}

impl PublishSpec {
    /// `count` ports from `port` on `addr` to the same ports in the guest.
    pub fn same_ports(addr: IpAddr, port: u16, count: u16, proto: PubProto) -> PublishSpec {
        PublishSpec {
            addr,
            host_port: port,
            guest_port: port,
            count,
            proto,
        }
    }

    /// Parse a spec (see the [module docs](self)).
    pub fn parse(spec: &str) -> Result<PublishSpec, SpecError> {
        let (body, proto) = match spec.rsplit_once('/') {
            None => (spec, PubProto::Tcp),
            Some((b, "tcp")) => (b, PubProto::Tcp),
            Some((b, "udp")) => (b, PubProto::Udp),
            Some((_, p)) => return Err(SpecError::Proto(spec.into(), p.into())),
        };
        // `[v6]:` first: the brackets keep the address's colons apart.
        let (v6, body) = match body.strip_prefix('[').and_then(|b| b.split_once("]:")) {
            Some((a, rest)) => {
                let ip = a
                    .parse::<std::net::Ipv6Addr>()
                    .map_err(|_| SpecError::Addr(spec.into(), format!("[{a}]")))?;
                (Some(IpAddr::V6(ip)), rest)
            }
            None => (None, body),
        };
        let parts: Vec<&str> = body.split(':').collect();
        let (addr, host, guest) = match (v6, parts.as_slice()) {
            (Some(ip), [h, g]) => (ip, *h, *g),
            (None, [h, g]) => (IpAddr::V4(Ipv4Addr::LOCALHOST), *h, *g),
            (None, [a, h, g]) => {
                let ip = a
                    .parse::<Ipv4Addr>()
                    .map_err(|_| SpecError::Addr(spec.into(), (*a).into()))?;
                (IpAddr::V4(ip), *h, *g)
            }
            _ => return Err(SpecError::Syntax(spec.into())),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(SpecError::Syntax(spec.into()));
        }
        let (host_port, hn) = parse_range(spec, host)?;
        let (guest_port, gn) = parse_range(spec, guest)?;
        if hn != gn {
            return Err(SpecError::Mismatch(spec.into(), hn, gn));
        }
        Ok(PublishSpec {
            addr,
            host_port,
            guest_port,
            // Cannot fail: a range of u16 ports has at most 65535 members.
            count: u16::try_from(hn).unwrap_or(u16::MAX),
            proto,
        })
    }

    /// Each forward of the spec: (host address, guest port).
    pub fn forwards(&self) -> impl Iterator<Item = (SocketAddr, u16)> + '_ {
        (0..self.count).map(move |i| {
            (
                SocketAddr::new(self.addr, self.host_port + i),
                self.guest_port + i,
            )
        })
    }
}

impl fmt::Display for PublishSpec {
    /// The canonical spelling (address always written).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |p: u16| {
            if self.count == 1 {
                p.to_string()
            } else {
                format!("{p}-{}", p + (self.count - 1))
            }
        };
        let addr = match self.addr {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        write!(
            f,
            "{}:{}:{}/{}",
            addr,
            range(self.host_port),
            range(self.guest_port),
            self.proto
        )
    }
}

/// Binding a forward's host socket failed.
#[derive(Debug, thiserror::Error)]
#[error("--publish {spec}: cannot listen on {addr}/{proto}{hint}")]
pub struct BindError {
    /// The spec as given.
    pub spec: String,
    /// The host address.
    pub addr: SocketAddr,
    /// Transport.
    pub proto: PubProto,
    /// A hint for the common causes.
    pub hint: &'static str,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// One bound host socket of a spec.
#[derive(Debug)]
pub struct Bound {
    /// The host address.
    pub addr: SocketAddr,
    /// The guest port it forwards to.
    pub guest_port: u16,
    /// Transport.
    pub proto: PubProto,
    /// The listening TCP socket or the bound UDP socket (blocking; the
    /// worker's io_uring never blocks on it).
    pub fd: OwnedFd,
}

/// Bind every forward of `spec` (`text` is the spec as the user wrote it,
/// for errors). All or nothing: on error, the sockets bound so far close.
pub fn bind(spec: &PublishSpec, text: &str) -> Result<Vec<Bound>, BindError> {
    let mut out = Vec::new();
    for (addr, guest_port) in spec.forwards() {
        let fd: std::io::Result<OwnedFd> = match (spec.proto, addr) {
            (proto, SocketAddr::V6(_)) => bind_v6only(proto, addr),
            (PubProto::Tcp, _) => TcpListener::bind(addr).map(OwnedFd::from),
            (PubProto::Udp, _) => UdpSocket::bind(addr).map(OwnedFd::from),
        };
        let fd = fd.map_err(|source| BindError {
            spec: text.into(),
            addr,
            proto: spec.proto,
            hint: match source.kind() {
                std::io::ErrorKind::AddrInUse => " (the port is in use)",
                std::io::ErrorKind::PermissionDenied => {
                    " (ports below net.ipv4.ip_unprivileged_port_start need CAP_NET_BIND_SERVICE)"
                }
                std::io::ErrorKind::AddrNotAvailable => " (no such local address)",
                _ => "",
            },
            source,
        })?;
        if spec.proto == PubProto::Udp {
            crate::dataplane::uring::size_udp_rcvbuf(&fd);
        }
        out.push(Bound {
            addr,
            guest_port,
            proto: spec.proto,
            fd,
        });
    }
    Ok(out)
}

/// A set of ports chosen by rule rather than named: passt's `all` (every
/// free port that is not ephemeral) or pasta's `auto` (the ports the
/// namespace listens on), less `exclude`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet {
    /// Transport.
    pub proto: PubProto,
    /// The host address to listen on; `None`: `0.0.0.0` and `[::]`.
    pub addr: Option<IpAddr>,
    /// Port ranges left out (`~P`, `~P-Q`).
    pub exclude: Vec<(u16, u16)>,
}

impl PortSet {
    /// Whether `port` is left out.
    pub fn excludes(&self, port: u16) -> bool {
        self.exclude.iter().any(|&(a, b)| (a..=b).contains(&port))
    }

    /// The host addresses to listen on.
    pub fn addrs(&self) -> Vec<IpAddr> {
        match self.addr {
            Some(a) => vec![a],
            None => vec![
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            ],
        }
    }
}

/// The kernel's ephemeral port range, `ip_local_port_range`'s text
/// ("32768\t60999\n"); `None` if it is not two ordered ports.
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(lo)), Some(Ok(hi)), None) = (it.next(), it.next(), it.next()) else {
        return None;
    };
    (lo <= hi).then_some((lo, hi))
}

/// The host's ephemeral ports (Linux's default 32768-60999 when
/// `/proc/sys/net/ipv4/ip_local_port_range` cannot be read).
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| parse_port_range(&t))
        .unwrap_or((32768, 60999))
}

/// Raise the soft limit on open files to the hard one, and the hard one
/// to `want` where the process may (`CAP_SYS_RESOURCE`); the soft limit
/// that results.
pub fn raise_nofile(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a live rlimit the kernel fills in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) } < 0 {
        return 0;
    }
    if r.rlim_max < want {
        let up = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        // SAFETY: `up` is a live rlimit the kernel only reads; a refusal
        // (no CAP_SYS_RESOURCE, or over fs.nr_open) changes nothing.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const up) } == 0 {
            return want;
        }
    }
    if r.rlim_cur < r.rlim_max {
        let soft = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: as above; raising the soft limit to the hard one is
        // always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const soft) } == 0 {
            return r.rlim_max;
        }
    }
    r.rlim_cur
}

/// What [`bind_every`] bound: runs of consecutive ports (one spec each,
/// guest port = host port) with their sockets, and what it skipped.
#[derive(Debug, Default)]
pub struct Every {
    /// Each run of bound ports and its sockets.
    pub runs: Vec<(PublishSpec, Vec<Bound>)>,
    /// Ports left out because they are in use, or privileged.
    pub skipped: usize,
    /// Ports not tried because uipd ran out of file descriptors.
    pub no_fd: usize,
}

/// Bind every port of `set` that is not ephemeral (`ephemeral`, inclusive)
/// and is free, on each of its addresses, lowest port first (both
/// families of a port before the next port): passt's `all`. A port in use
/// or privileged is skipped (counted). At most `budget` sockets are made
/// (it is decreased); the ports beyond it, or beyond the process's file
/// limit, are counted in [`Every::no_fd`].
pub fn bind_every(set: &PortSet, ephemeral: (u16, u16), budget: &mut usize) -> Every {
    let addrs = set.addrs();
    let mut out = Every::default();
    let mut runs: Vec<Vec<Bound>> = addrs.iter().map(|_| Vec::new()).collect();
    let close = |run: &mut Vec<Bound>, addr: IpAddr, out: &mut Every| {
        if let (Some(first), Some(last)) = (run.first(), run.last()) {
            let (lo, hi) = (first.addr.port(), last.addr.port());
            out.runs.push((
                PublishSpec::same_ports(addr, lo, hi - lo + 1, set.proto),
                std::mem::take(run),
            ));
        }
    };
    for port in 1..=u16::MAX {
        let skip = set.excludes(port) || (ephemeral.0..=ephemeral.1).contains(&port);
        for (i, &addr) in addrs.iter().enumerate() {
            if skip {
                close(&mut runs[i], addr, &mut out);
                continue;
            }
            if *budget == 0 {
                close(&mut runs[i], addr, &mut out);
                out.no_fd += 1;
                continue;
            }
            let spec = PublishSpec::same_ports(addr, port, 1, set.proto);
            match bind(&spec, "") {
                Ok(mut b) => {
                    *budget -= 1;
                    runs[i].extend(b.pop());
                }
                Err(e) => {
                    close(&mut runs[i], addr, &mut out);
                    if matches!(e.source.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        *budget = 0;
                        out.no_fd += 1;
                    } else {
                        log::trace!("all: {addr} port {port}/{}: {}", set.proto, e.source);
                        out.skipped += 1;
                    }
                }
            }
        }
    }
    for (i, &addr) in addrs.iter().enumerate() {
        close(&mut runs[i], addr, &mut out);
    }
    out
}

/// Descriptors this process has open now (`/proc/self/fd`), or `None`.
pub fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count)
}

/// Turn on the boolean socket option `opt` at `level`.
fn set_flag(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    crate::sys::sock::setsockopt(fd, level, opt, &one).map_err(std::io::Error::from_raw_os_error)
}

/// An IPv6 socket bound to `addr` with `IPV6_V6ONLY` (listening, for TCP),
/// so that it does not take the IPv4 port too (std binds dual-stack).
fn bind_v6only(proto: PubProto, addr: SocketAddr) -> std::io::Result<OwnedFd> {
    let ty = match proto {
        PubProto::Tcp => libc::SOCK_STREAM,
        PubProto::Udp => libc::SOCK_DGRAM,
    };
    let fd = crate::sys::sock::socket(libc::AF_INET6, ty, 0)
        .map_err(std::io::Error::from_raw_os_error)?;
    set_flag(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
    if proto == PubProto::Tcp {
        // As std's TcpListener: a port in TIME_WAIT can be bound again.
        set_flag(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    }
    if !addr.is_ipv6() {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    crate::sys::sock::bind(&fd, &addr).map_err(std::io::Error::from_raw_os_error)?;
    if proto == PubProto::Tcp {
        crate::sys::sock::listen(&fd, 1024).map_err(std::io::Error::from_raw_os_error)?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> PublishSpec {
        PublishSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn plain_specs() {
        let p = ok("8080:80");
        assert_eq!(p.addr, Ipv4Addr::LOCALHOST, "loopback by default");
        assert_eq!((p.host_port, p.guest_port, p.count), (8080, 80, 1));
        assert_eq!(p.proto, PubProto::Tcp);
        let p = ok("0.0.0.0:5353:53/udp");
        assert_eq!(p.addr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(p.proto, PubProto::Udp);
        assert_eq!(ok("1:2/tcp").to_string(), "127.0.0.1:1:2/tcp");
        let p = ok("[::]:8080:80/udp");
        assert_eq!(p.addr, IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        assert_eq!(p.to_string(), "[::]:8080:80/udp");
        assert_eq!(ok(&p.to_string()), p, "the canonical spelling parses back");
    }

    #[test]
    fn ipv6_listeners_leave_the_ipv4_port_free() {
        // A port that is free now (the probe closes again).
        let port = TcpListener::bind("[::1]:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let text = format!("[::1]:{port}:80");
        let _b = bind(&ok(&text), &text).unwrap();
        let v4 = TcpListener::bind(("127.0.0.1", port));
        assert!(v4.is_ok(), "IPV6_V6ONLY: the IPv4 port stays free");
        let c = std::net::TcpStream::connect(("::1", port));
        assert!(c.is_ok(), "the IPv6 listener accepts");
        let text = format!("[::1]:{port}:53/udp");
        let u = bind(&ok(&text), &text).unwrap();
        assert_eq!(u[0].proto, PubProto::Udp);
    }

    #[test]
    fn ranges_expand_pairwise() {
        let p = ok("9000-9002:7000-7002");
        assert_eq!(p.count, 3);
        let f: Vec<(u16, u16)> = p.forwards().map(|(a, g)| (a.port(), g)).collect();
        assert_eq!(f, vec![(9000, 7000), (9001, 7001), (9002, 7002)]);
        assert_eq!(p.to_string(), "127.0.0.1:9000-9002:7000-7002/tcp");
        assert_eq!(ok("65535-65535:1-1").count, 1);
    }

    #[test]
    fn malformed_specs_are_clear_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "is not [ADDR:]"),
            ("80", "is not [ADDR:]"),
            ("a:b:c:d", "is not [ADDR:]"),
            (":80", "is not [ADDR:]"),
            ("80:", "is not [ADDR:]"),
            ("0:80", "'0' is not a port"),
            ("70000:80", "'70000' is not a port"),
            ("x:80", "'x' is not a port"),
            ("+80:80", "'+80' is not a port"),
            ("9002-9000:1-3", "ends before it starts"),
            ("9000-9002:80", "host range has 3 ports, the guest range 1"),
            ("80:9000-9001", "host range has 1 ports, the guest range 2"),
            ("localhost:80:80", "not an IPv4 address"),
            ("::1:80:80", "is not [ADDR:]"),
            ("[::1]:80", "is not [ADDR:]"),
            ("[x]:80:80", "'[x]' is not an IPv4 address or an IPv6"),
            ("80:80/sctp", "unknown protocol 'sctp'"),
            ("80:80/", "unknown protocol ''"),
        ];
        for (spec, want) in cases {
            let e = PublishSpec::parse(spec).expect_err(spec).to_string();
            assert!(e.contains(want), "{spec}: {e:?} should say {want:?}");
            assert!(e.contains(spec), "{spec}: {e:?} should name the spec");
        }
    }

    #[test]
    fn bind_names_the_spec_when_the_port_is_taken() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let text = format!("{port}:80");
        let e = bind(&ok(&text), &text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&text), "{msg}");
        assert!(msg.contains("in use"), "{msg}");
    }
}
