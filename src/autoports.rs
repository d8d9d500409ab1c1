//! pasta's `-t auto` / `-u auto`: publish on the host whatever ports the
//! namespace listens on, as they come and go.
//!
//! # Theory of operation
//!
//! Once a second the control thread re-reads the namespace's
//! `/proc/net/{tcp,tcp6}` (sockets in state `0A`, LISTEN) and
//! `/proc/net/{udp,udp6}` (state `07`: bound and not connected, so not a
//! client's socket), through descriptors opened at start: a procfs net
//! file opened in (or for a process of) a namespace keeps showing that
//! namespace, so the sandbox's empty root does not matter and no thread
//! has to stay in the namespace. Each port found that is not excluded
//! (`~P`), not served already by another forward of uipd (a fixed `-t`,
//! the control socket) and not a `-T/-U` listener of uipd's own is
//! published on the host's `0.0.0.0` and `[::]` to the same port of the
//! guest, through the same [`Forwards`] as the control socket; a port
//! that went away is withdrawn. A host port in use is skipped (said once
//! at debug level) and tried again at the next scan.
//!
//! ```text
//!  ns: server listens on *:8080 ─► /proc/net/tcp "00000000:1F90 ... 0A"
//!  control thread (1 s) ─► Forwards::add 0.0.0.0:8080:8080, [::]:8080:8080 ─► worker 0
//! ```
//!
//! Limits: sockets bound only to the namespace's loopback are left out
//! (the guest's link cannot reach them); uipd does not, as pasta does,
//! also publish UDP for the TCP ports it finds.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::control::Forwards;
use crate::dataplane::worker::Shared;
use crate::publish::{PortSet, PubProto, PublishSpec};
use crate::rings::FrameRing;

/// How often the namespace's sockets are scanned (pasta: every second).
pub const SCAN_EVERY: Duration = Duration::from_secs(1);

/// `/proc/net/tcp` state of a listening socket.
pub const TCP_LISTEN: u8 = 0x0A;
/// `/proc/net/udp` state of a bound, unconnected socket.
pub const UDP_UNCONN: u8 = 0x07;

/// The local ports of the sockets in `state` listed by a `/proc/net/tcp`,
/// `tcp6`, `udp` or `udp6` text, leaving out sockets bound to a loopback
/// address (IPv4, IPv6 or IPv4-mapped). Lines that do not parse are
/// skipped: the file is the kernel's, but a short read must not panic.
pub fn bound_ports(text: &str, state: u8) -> BTreeSet<u16> {
    bound_sockets(text, state)
        .into_iter()
        .filter(|&(addr, _)| !is_loopback(addr))
        .map(|(_, port)| port)
        .collect()
}

/// The local addresses and ports of the sockets in `state` listed by a
/// procfs socket table, loopback ones included (pasta's `-T auto` wants
/// those); port 0 and lines that do not parse are left out.
pub fn bound_sockets(text: &str, state: u8) -> BTreeSet<(IpAddr, u16)> {
    let mut out = BTreeSet::new();
    for line in text.lines().skip(1) {
        let mut f = line.split_whitespace();
        // "sl local rem st ...": "0:" "0100007F:1F90" "00000000:0000" "0A"
        let (Some(_), Some(local), Some(_), Some(st)) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if u8::from_str_radix(st, 16).ok() != Some(state) {
            continue;
        }
        let Some((addr, port)) = local.split_once(':') else {
            continue;
        };
        let (Some(addr), Ok(port)) = (parse_addr(addr), u16::from_str_radix(port, 16)) else {
            continue;
        };
        if port != 0 {
            out.insert((addr, port));
        }
    }
    out
}

/// An address as procfs prints it: the `__be32` words of the address, each
/// as a host-order hexadecimal number (8 digits for IPv4, 32 for IPv6).
fn parse_addr(hex: &str) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => word(hex).map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(hex.get(i * 8..i * 8 + 8)?)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Whether `a` is a loopback address (IPv4, IPv6 or IPv4-mapped).
pub fn is_loopback(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The namespace's socket tables, opened before the sandbox.
#[derive(Debug)]
pub struct ProcNet {
    files: Vec<(File, PubProto)>,
}

impl ProcNet {
    /// Open `DIR/tcp`, `tcp6`, `udp` and `udp6` of the procfs net
    /// directory `dir` (`/proc/PID/net` of a process in the namespace, or
    /// `/proc/thread-self/net` while this thread is in it). A missing
    /// `tcp6`/`udp6` (no IPv6) is left out.
    pub fn open(dir: &std::path::Path) -> std::io::Result<ProcNet> {
        let mut files = Vec::new();
        for (name, proto) in [
            ("tcp", PubProto::Tcp),
            ("tcp6", PubProto::Tcp),
            ("udp", PubProto::Udp),
            ("udp6", PubProto::Udp),
        ] {
            match File::open(dir.join(name)) {
                Ok(f) => files.push((f, proto)),
                Err(e) if name.ends_with('6') && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ProcNet { files })
    }

    /// The namespace's listening TCP ports and bound UDP ports now.
    pub fn scan(&mut self) -> std::io::Result<(BTreeSet<u16>, BTreeSet<u16>)> {
        let (tcp, udp) = self.scan_sockets()?;
        let ports = |s: BTreeSet<(IpAddr, u16)>| {
            s.into_iter()
                .filter(|&(a, _)| !is_loopback(a))
                .map(|(_, p)| p)
                .collect()
        };
        Ok((ports(tcp), ports(udp)))
    }

    /// The listening TCP sockets and bound UDP sockets now, by local
    /// address and port, loopback ones included.
    #[allow(clippy::type_complexity)]
    pub fn scan_sockets(
        &mut self,
    ) -> std::io::Result<(BTreeSet<(IpAddr, u16)>, BTreeSet<(IpAddr, u16)>)> {
        let (mut tcp, mut udp) = (BTreeSet::new(), BTreeSet::new());
        let mut buf = Vec::new();
        for (f, proto) in &mut self.files {
            buf.clear();
            f.seek(SeekFrom::Start(0))?;
            f.read_to_end(&mut buf)?;
            let text = String::from_utf8_lossy(&buf);
            match proto {
                PubProto::Tcp => tcp.extend(bound_sockets(&text, TCP_LISTEN)),
                PubProto::Udp => udp.extend(bound_sockets(&text, UDP_UNCONN)),
            }
        }
        Ok((tcp, udp))
    }
}

/// The `auto` sets and what they published.
#[derive(Debug)]
pub struct AutoPorts {
    sets: Vec<PortSet>,
    procnet: ProcNet,
    /// Ports of the namespace that are uipd's own (`-T`/`-U` listeners).
    own: HashSet<(PubProto, u16)>,
    published: HashSet<PublishSpec>,
    /// Specs whose host port could not be bound (logged once each).
    failed: HashSet<PublishSpec>,
    last: Option<Instant>,
}

impl AutoPorts {
    /// Follow the namespace's ports through `procnet` for `sets` (one per
    /// protocol at most); `own` are the namespace ports uipd listens on.
    pub fn new(sets: Vec<PortSet>, procnet: ProcNet, own: HashSet<(PubProto, u16)>) -> AutoPorts {
        AutoPorts {
            sets,
            procnet,
            own,
            published: HashSet::new(),
            failed: HashSet::new(),
            last: None,
        }
    }

    /// The specs the namespace's ports `tcp` and `udp` call for, given the
    /// forwards served by others.
    fn wanted(
        &self,
        tcp: &BTreeSet<u16>,
        udp: &BTreeSet<u16>,
        forwards: &Forwards,
    ) -> HashSet<PublishSpec> {
        let mut want = HashSet::new();
        for set in &self.sets {
            let ports = match set.proto {
                PubProto::Tcp => tcp,
                PubProto::Udp => udp,
            };
            for &port in ports {
                if set.excludes(port) || self.own.contains(&(set.proto, port)) {
                    continue;
                }
                for addr in set.addrs() {
                    let spec = PublishSpec::same_ports(addr, port, 1, set.proto);
                    // A port another forward of uipd serves is left to it.
                    if !self.published.contains(&spec) && forwards.serves(addr, port, set.proto) {
                        continue;
                    }
                    want.insert(spec);
                }
            }
        }
        want
    }

    /// Scan (at most every [`SCAN_EVERY`]) and publish or withdraw what
    /// changed, handing it to worker 0.
    pub fn poll(&mut self, forwards: &mut Forwards, worker: &Shared, inbox: &FrameRing) {
        if self.last.is_some_and(|t| t.elapsed() < SCAN_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let (tcp, udp) = match self.procnet.scan() {
            Ok(p) => p,
            Err(e) => {
                log::warn!("auto: reading the namespace's sockets: {e}");
                return;
            }
        };
        let want = self.wanted(&tcp, &udp, forwards);
        let gone: Vec<PublishSpec> = self.published.difference(&want).cloned().collect();
        for spec in gone {
            self.published.remove(&spec);
            match forwards.remove(&spec) {
                Ok(()) => log::info!("auto: withdrawn {spec}"),
                Err(e) => log::debug!("auto: {e}"),
            }
        }
        self.failed.retain(|s| want.contains(s));
        for spec in want {
            if self.published.contains(&spec) {
                continue;
            }
            match forwards.add(&spec) {
                Ok(()) => {
                    log::info!("auto: published {spec}");
                    self.failed.remove(&spec);
                    self.published.insert(spec);
                }
                Err(e) => {
                    if self.failed.insert(spec) {
                        log::debug!("auto: skipped: {e}");
                    }
                }
            }
        }
        forwards.flush(worker, inbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/net/tcp and tcp6 as Linux 6.1 prints them (trimmed to the
    /// columns read, plus one of the rest).
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0F21A8C0:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0F21A8C0:B3A2 0121A8C0:1F40 01 00000000:00000000 00:00000000 00000000     0        0 4 1
   4: 0F21A8C0:0050 0121A8C0:D431 06 00000000:00000000 00:00000000 00000000     0        0 0 1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue
   0: 00000000000000000000000000000000:1389 00000000000000000000000000000000:0000 0A 00000000:00000000
   1: 00000000000000000000000001000000:138A 00000000000000000000000000000000:0000 0A 00000000:00000000
   2: 0000000000000000FFFF00000100007F:138B 00000000000000000000000000000000:0000 0A 00000000:00000000
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5 2 0 0
  101: 0F21A8C0:A1B2 0121A8C0:0035 01 00000000:00000000 00:00000000 00000000     0        0 6 2 0 0
  102: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 7 2 0 0
";

    #[test]
    fn listening_and_bound_ports_without_loopback_or_clients() {
        assert_eq!(
            bound_ports(TCP, TCP_LISTEN).into_iter().collect::<Vec<_>>(),
            [22, 8080],
            "127.0.0.1:631 is loopback-only; the established and TIME_WAIT ones are no listeners"
        );
        assert_eq!(
            bound_ports(TCP6, TCP_LISTEN)
                .into_iter()
                .collect::<Vec<_>>(),
            [5001],
            "::1 and ::ffff:127.0.0.1 are loopback"
        );
        assert_eq!(
            bound_ports(UDP, UDP_UNCONN).into_iter().collect::<Vec<_>>(),
            [5353],
            "the connected client socket and 127.0.0.1:53 are left out"
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for text in [
            "",
            "header only\n",
            "h\n 0: 00000000:1F90\n",
            "h\n 0: 0000:1F90 00000000:0000 0A\n",
            "h\n 0: 00000000:XYZ 00000000:0000 0A\n",
            "h\n 0: 00000000:10000 00000000:0000 0A\n",
            "h\n 0: 00000000:0000 00000000:0000 0A\n",
            "h\n 0: 0000000000000000000000000000000Z:0016 x 0A\n",
            "h\n 0: 00000000:0016 00000000:0000 ZZ\n",
            "h\n 0: 00000000 00000000:0000 0A\n",
        ] {
            assert!(bound_ports(text, TCP_LISTEN).is_empty(), "{text:?}");
        }
        assert_eq!(
            parse_addr("0F21A8C0"),
            Some(IpAddr::V4(Ipv4Addr::new(192, 168, 33, 15)))
        );
    }

    #[test]
    fn a_procfs_file_is_read_again_from_the_start() {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut p = ProcNet::open(std::path::Path::new("/proc/thread-self/net")).unwrap();
        for _ in 0..3 {
            let (tcp, _) = p.scan().unwrap();
            assert!(tcp.contains(&port), "{port} in {tcp:?}");
        }
        drop(l);
        let (tcp, _) = p.scan().unwrap();
        assert!(!tcp.contains(&port));
    }
}
