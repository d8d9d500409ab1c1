//! pasta's `-T auto` / `-U auto`: every port bound on the host is also
//! reachable from the namespace's loopback, as host ports come and go.
//!
//! # Theory of operation
//!
//! A socket belongs to the network namespace of the thread that created
//! it, and once uipd is in its sandbox no thread may `setns` any more. So
//! before the sandbox, while uipd is still one thread, [`spawn`] forks a
//! small **binder** process that enters the namespace for good (`setns`),
//! keeps only its end of a `SOCK_SEQPACKET` socketpair (stdio goes to
//! `/dev/null`, every other descriptor is closed), enters a sandbox of its
//! own (empty root, no capabilities, `no_new_privs`, the
//! [`Role::NsBind`](crate::sandbox::Role::NsBind) allow-list: socket,
//! bind, listen, setsockopt, sendmsg, recvmsg and the base set) and then
//! only answers requests: "bind TCP|UDP port P on 127.0.0.1|::1" is
//! answered with the socket (`SCM_RIGHTS`) or an errno. It dies with uipd:
//! `PR_SET_PDEATHSIG(SIGKILL)` (set before it checks that its parent is
//! still the one that forked it), and it exits on end of file of the
//! socketpair, which [`Binder`]'s drop causes and then reaps.
//!
//! A helper process was chosen over a thread left outside the sandbox:
//! namespaces and seccomp filters are per thread but the address space is
//! shared, so a thread that keeps `CAP_SYS_ADMIN` and `setns` would be
//! reachable from any thread the guest compromises; a process with its
//! own, smaller filter and no capabilities is not.
//!
//! ```text
//!  control thread (1 s) ─ reads host + ns /proc/net/{tcp,udp}{,6} (fds opened at start)
//!     │ wanted() − held
//!     ├─► binder (in the netns) : "T 4 8000" ─► socket/bind/listen ─► fd (SCM_RIGHTS)
//!     └─► uipd-nsfwd relay      : RelayCmd::Add(listener) / Remove(forward)
//!  ns client ─► 127.0.0.1:8000 (binder's listener) ─► relay ─► host 127.0.0.1:8000
//! ```
//!
//! Which ports ([`wanted`]): each listening TCP (bound UDP) socket of the
//! host's tables whose address a connect to the host's `127.0.0.1`
//! (`::1`) reaches — the loopback address itself, or the wildcard — gives
//! a listener on the namespace's `127.0.0.1` (`::1`) at the same port,
//! unless the port is excluded (`auto,~P`), in the host's ephemeral range
//! (client sockets, uipd's own UDP flows), published host-side by uipd
//! itself (`-t`, fixed or `auto`: forwarding it back would loop), or used
//! in the namespace by a socket that is not one of these listeners (the
//! namespace's own servers, fixed `-T` ports). A port that no longer
//! qualifies has its listener closed (its accepted connections go on). A
//! port the binder could not bind is said once at debug level and tried
//! again at each scan.
//!
//! Limits: the binder has no capabilities, so ports below the namespace's
//! `net.ipv4.ip_unprivileged_port_start` cannot be bound (said once); a
//! dual-stack host socket on `[::]` is taken to serve IPv4 too (procfs
//! does not show `IPV6_V6ONLY`); UDP is not also forwarded for TCP ports
//! as pasta does.

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use crate::autoports::{ProcNet, SCAN_EVERY};
use crate::control::Forwards;
use crate::dataplane::netns;
use crate::nsfwd::{Listener, NsForward, RelayCmd};
use crate::publish::{self, PortSet, PubProto, PublishSpec};
use crate::sys::cvt;
use crate::sys::fd::{recv_msg, send_msg, set_recv_timeout, socketpair};
use crate::sys::process::{die_with_parent, setns};

/// How long the control thread waits for the binder's answer (it answers
/// at once; this bounds a stuck helper).
const ANSWER_LIMIT: Duration = Duration::from_secs(2);

/// One loopback socket in the namespace: what the binder is asked for,
/// and what the driver holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Want {
    /// Transport.
    pub proto: PubProto,
    /// `::1` rather than `127.0.0.1`.
    pub v6: bool,
    /// The port, in the namespace and on the host.
    pub port: u16,
}

impl Want {
    /// The namespace address the listener is bound to.
    pub fn listen(&self) -> SocketAddr {
        let ip = if self.v6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        };
        SocketAddr::new(ip, self.port)
    }

    /// The relay's forward for this listener (same port on the host).
    pub fn forward(&self) -> NsForward {
        NsForward {
            proto: self.proto,
            listen: self.listen(),
            to_port: self.port,
        }
    }
}

/// A request or reply that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Not the fixed length.
    #[error("binder message of {0} bytes, want 4")]
    Length(usize),
    /// The transport byte is neither `T` nor `U`.
    #[error("binder request for transport {0:#04x}")]
    Proto(u8),
    /// The family byte is neither 4 nor 6.
    #[error("binder request for address family {0}")]
    Family(u8),
    /// Port 0 (the binder makes no ephemeral listeners).
    #[error("binder request for port 0")]
    PortZero,
    /// A reply's errno is negative, or success came without a descriptor.
    #[error("binder reply {0} without a socket")]
    Reply(i32),
}

/// A request on the wire: `[b'T' | b'U', 4 | 6, port (big endian)]`.
pub fn encode_request(w: Want) -> [u8; 4] {
    let p = w.port.to_be_bytes();
    [
        match w.proto {
            PubProto::Tcp => b'T',
            PubProto::Udp => b'U',
        },
        if w.v6 { 6 } else { 4 },
        p[0],
        p[1],
    ]
}

/// The request in `msg`, checked.
pub fn decode_request(msg: &[u8]) -> Result<Want, ProtoError> {
    let &[proto, family, hi, lo] = msg else {
        return Err(ProtoError::Length(msg.len()));
    };
    let proto = match proto {
        b'T' => PubProto::Tcp,
        b'U' => PubProto::Udp,
        b => return Err(ProtoError::Proto(b)),
    };
    let v6 = match family {
        4 => false,
        6 => true,
        f => return Err(ProtoError::Family(f)),
    };
    let port = u16::from_be_bytes([hi, lo]);
    if port == 0 {
        return Err(ProtoError::PortZero);
    }
    Ok(Want { proto, v6, port })
}

/// A reply on the wire: the errno (little endian), 0 with the socket
/// attached.
pub fn encode_reply(errno: i32) -> [u8; 4] {
    errno.to_le_bytes()
}

/// The socket a reply of `msg` with `fd` attached gives, or its error.
pub fn decode_reply(msg: &[u8], fd: Option<OwnedFd>) -> io::Result<OwnedFd> {
    let bad = |e: ProtoError| io::Error::new(io::ErrorKind::InvalidData, e);
    let Ok(b) = <[u8; 4]>::try_from(msg) else {
        return Err(bad(ProtoError::Length(msg.len())));
    };
    match (i32::from_le_bytes(b), fd) {
        (0, Some(fd)) => Ok(fd),
        (e, _) if e > 0 => Err(io::Error::from_raw_os_error(e)),
        (e, _) => Err(bad(ProtoError::Reply(e))),
    }
}

/// Whether a connect to the host's loopback address of the family of
/// `v6` reaches a socket bound to `addr`.
pub fn reachable(addr: IpAddr, v6: bool) -> bool {
    match (addr, v6) {
        (IpAddr::V4(a), false) => a.is_unspecified() || a == Ipv4Addr::LOCALHOST,
        // A dual-stack `[::]` socket takes IPv4 too; so does a mapped one.
        (IpAddr::V6(a), false) => {
            a.is_unspecified()
                || a.to_ipv4_mapped()
                    .is_some_and(|m| m.is_unspecified() || m == Ipv4Addr::LOCALHOST)
        }
        (IpAddr::V6(a), true) => a.is_unspecified() || a == Ipv6Addr::LOCALHOST,
        (IpAddr::V4(_), true) => false,
    }
}

/// A namespace's (or the host's) listening TCP and bound UDP sockets.
#[derive(Debug, Default, Clone)]
pub struct Tables {
    /// Listening TCP sockets: local address and port.
    pub tcp: BTreeSet<(IpAddr, u16)>,
    /// Bound, unconnected UDP sockets.
    pub udp: BTreeSet<(IpAddr, u16)>,
}

impl Tables {
    fn of(&self, proto: PubProto) -> &BTreeSet<(IpAddr, u16)> {
        match proto {
            PubProto::Tcp => &self.tcp,
            PubProto::Udp => &self.udp,
        }
    }
}

/// The listeners the namespace should have (see the module comment):
/// `sets` are the `auto` sets (one per transport), `held` the listeners
/// held now, `ephemeral` the host's ephemeral range and `published`
/// whether uipd serves a host port itself.
pub fn wanted(
    sets: &[PortSet],
    host: &Tables,
    ns: &Tables,
    held: &HashSet<Want>,
    ephemeral: (u16, u16),
    published: impl Fn(PubProto, u16) -> bool,
) -> HashSet<Want> {
    let mut out = HashSet::new();
    for set in sets {
        let proto = set.proto;
        for &(addr, port) in host.of(proto) {
            if set.excludes(port)
                || (ephemeral.0..=ephemeral.1).contains(&port)
                || published(proto, port)
            {
                continue;
            }
            for v6 in [false, true] {
                if !reachable(addr, v6) {
                    continue;
                }
                let w = Want { proto, v6, port };
                // The namespace's own sockets on the port: any but the
                // listeners held for it.
                let ours = |&(a, p): &(IpAddr, u16)| {
                    let mine = Want {
                        proto,
                        v6: a.is_ipv6(),
                        port: p,
                    };
                    held.contains(&mine) && mine.listen().ip() == a
                };
                if ns.of(proto).iter().any(|s| s.1 == port && !ours(s)) {
                    continue;
                }
                out.insert(w);
            }
        }
    }
    out
}

/// The control thread's end of the binder.
#[derive(Debug)]
pub struct Binder {
    sock: OwnedFd,
    /// The helper process (0 in tests, where a thread serves).
    pid: libc::pid_t,
}

impl Binder {
    /// A listener for `w` made in the namespace.
    pub fn bind(&self, w: Want) -> io::Result<OwnedFd> {
        send_msg(self.sock.as_fd(), &encode_request(w), None)?;
        let mut buf = [0u8; 8];
        let (n, fd) = recv_msg(self.sock.as_fd(), &mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the -T/-U auto binder is gone",
            ));
        }
        decode_reply(&buf[..n], fd)
    }
}

impl Drop for Binder {
    fn drop(&mut self) {
        if self.pid <= 0 {
            return;
        }
        // Closing our end is the binder's end of file: it exits.
        // SAFETY: shutdown on a socket we own; no memory is passed.
        unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR) };
        for i in 0..100 {
            let mut status = 0;
            // SAFETY: waits for our own child into a live int.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r != 0 {
                return;
            }
            if i == 50 {
                // SAFETY: signals our own child, which has not been reaped
                // (waitpid said it runs), so the PID is still its.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Serve binder requests on `sock` until its end of file: each is
/// answered with a socket bound in this thread's network namespace, or an
/// errno. The binder process's loop; tests run it on a thread.
pub fn serve(sock: &OwnedFd) -> io::Result<()> {
    let mut buf = [0u8; 16];
    loop {
        let (n, extra) = recv_msg(sock.as_fd(), &mut buf)?;
        drop(extra);
        if n == 0 {
            return Ok(());
        }
        let made = match decode_request(&buf[..n]) {
            Ok(w) => bind_one(w),
            Err(_) => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        match made {
            Ok(fd) => send_msg(sock.as_fd(), &encode_reply(0), Some(fd.as_fd()))?,
            Err(e) => {
                let errno = e.raw_os_error().filter(|&e| e > 0).unwrap_or(libc::EIO);
                send_msg(sock.as_fd(), &encode_reply(errno), None)?;
            }
        }
    }
}

/// The loopback listener (TCP) or socket (UDP) of `w`, made here.
fn bind_one(w: Want) -> io::Result<OwnedFd> {
    let spec = PublishSpec::same_ports(w.listen().ip(), w.port, 1, w.proto);
    let mut b = publish::bind(&spec, "auto").map_err(|e| e.source)?;
    b.pop()
        .map(|b| b.fd)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Start the binder in the network namespace `target` (a path or a PID,
/// see [`crate::dataplane::netns::netns_path`]), in a sandbox of its own
/// when `sandbox` asks for one. Call before the sandbox and before any
/// thread starts: it forks.
pub fn spawn(target: &str, sandbox: crate::sandbox::Options) -> Result<Binder, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |what: &str| {
        let what = what.to_owned();
        move |e: io::Error| format!("-T/-U auto: {what}: {e}")
    };
    let path = netns::netns_path(target);
    let ns = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map(OwnedFd::from)
        .map_err(fail(&format!("opening {}", path.display())))?;
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(fail("opening /dev/null"))?;
    let (ours, theirs) = socketpair().map_err(fail("socketpair"))?;
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads > 1 {
        return Err(format!(
            "-T/-U auto: {threads} threads run already; the binder must be forked first (a uipd bug)"
        ));
    }
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: this process has one thread (checked above), so the child
    // starts with no lock held by a thread that does not exist there, and
    // may run ordinary code; it never returns from `binder_main`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail("fork")(io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(ours);
        binder_main(parent, &ns, &devnull, theirs, sandbox);
    }
    drop(theirs);
    let binder = Binder { sock: ours, pid };
    set_recv_timeout(binder.sock.as_fd(), ANSWER_LIMIT)
        .map_err(fail("setting the binder's answer time limit"))?;
    // Its first message says it is ready (empty) or why it is not.
    let mut buf = [0u8; 256];
    let (n, _) = recv_msg(binder.sock.as_fd(), &mut buf).map_err(fail("starting the binder"))?;
    match &buf[..n] {
        [0] => Ok(binder),
        [] => Err("-T/-U auto: the binder ended before it was ready".into()),
        why => Err(format!(
            "-T/-U auto: the binder: {}",
            String::from_utf8_lossy(why)
        )),
    }
}

/// The binder process: set up, then [`serve`]; never returns.
fn binder_main(
    parent: libc::pid_t,
    ns: &OwnedFd,
    devnull: &OwnedFd,
    sock: OwnedFd,
    sandbox: crate::sandbox::Options,
) -> ! {
    let code = match binder_setup(parent, ns, devnull, sock) {
        Ok(sock) => match ready(&sock, sandbox) {
            Ok(()) => i32::from(serve(&sock).is_err()),
            Err(e) => {
                let _ = send_msg(sock.as_fd(), e.as_bytes(), None);
                1
            }
        },
        Err(_) => 1,
    };
    // SAFETY: ends this process at once, without running the parent's
    // exit handlers (atexit, stdio flushes) a second time.
    unsafe { libc::_exit(code) }
}

/// The binder's first steps: die with the parent, enter the namespace,
/// keep only stdio (on /dev/null) and its socket. Returns the socket.
fn binder_setup(
    parent: libc::pid_t,
    ns: &OwnedFd,
    devnull: &OwnedFd,
    sock: OwnedFd,
) -> io::Result<OwnedFd> {
    // ESRCH: the parent died before the signal was armed.
    die_with_parent(parent)?;
    let entered = setns(ns.as_fd(), libc::CLONE_NEWNET);
    // Above stdio, so that /dev/null can take 0, 1 and 2.
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; the result is a new
    // descriptor owned by no one else.
    let high = unsafe {
        OwnedFd::from_raw_fd(cvt(libc::fcntl(
            sock.as_raw_fd(),
            libc::F_DUPFD_CLOEXEC,
            3,
        ))?)
    };
    drop(sock);
    let sock = high;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which only this
        // (single-threaded) process uses from here on.
        cvt(unsafe { libc::dup2(devnull.as_raw_fd(), fd) })?;
    }
    if let Err(e) = entered {
        let msg = format!("entering the network namespace: {e}");
        let _ = send_msg(sock.as_fd(), msg.as_bytes(), None);
        return Err(e);
    }
    close_others(sock.as_raw_fd());
    Ok(sock)
}

/// Close every descriptor above 2 but `keep` (uipd's TAP queues,
/// listeners and files have no business in the binder). The `OwnedFd`s
/// of the parent's copies are never used or dropped in this process.
fn close_others(keep: RawFd) {
    let keep = libc::c_uint::try_from(keep).unwrap_or(3);
    for (lo, hi) in [(3, keep.saturating_sub(1)), (keep + 1, libc::c_uint::MAX)] {
        if lo > hi {
            continue;
        }
        // SAFETY: close_range takes integers only; it closes descriptors
        // of this process, none of which is used below but `keep`.
        let r = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0) };
        if r < 0 {
            // Before Linux 5.9: one by one, up to a bound.
            for fd in lo..hi.min(65536) {
                // SAFETY: as above, for one descriptor.
                unsafe { libc::close(libc::c_int::try_from(fd).unwrap_or(-1)) };
            }
        }
    }
}

/// Enter the binder's sandbox (when asked) and say it is ready; an error
/// is the text for the parent.
fn ready(sock: &OwnedFd, sandbox: crate::sandbox::Options) -> Result<(), String> {
    if crate::sandbox::enter(sandbox)
        .map_err(|e| e.to_string())?
        .is_some()
    {
        crate::sandbox::confine(crate::sandbox::Role::NsBind).map_err(|e| e.to_string())?;
    }
    send_msg(sock.as_fd(), &[0], None).map_err(|e| e.to_string())
}

/// The `-T auto`/`-U auto` driver, polled by the control thread.
#[derive(Debug)]
pub struct NsAuto {
    sets: Vec<PortSet>,
    host: ProcNet,
    ns: ProcNet,
    binder: Binder,
    relay: Sender<RelayCmd>,
    held: HashSet<Want>,
    /// Listeners that could not be made (said once each).
    failed: HashSet<Want>,
    ephemeral: (u16, u16),
    /// The binder or the relay is gone: nothing more is done.
    dead: bool,
    last: Option<Instant>,
}

impl NsAuto {
    /// Follow the host's tables `host` for `sets`, given the namespace's
    /// `ns`, making listeners through `binder` and handing them to `relay`.
    pub fn new(
        sets: Vec<PortSet>,
        host: ProcNet,
        ns: ProcNet,
        binder: Binder,
        relay: Sender<RelayCmd>,
    ) -> NsAuto {
        NsAuto {
            sets,
            host,
            ns,
            binder,
            relay,
            held: HashSet::new(),
            failed: HashSet::new(),
            ephemeral: publish::ephemeral_range(),
            dead: false,
            last: None,
        }
    }

    /// Scan (at most every [`SCAN_EVERY`]) and add or withdraw listeners.
    pub fn poll(&mut self, forwards: &Forwards) {
        if self.dead || self.last.is_some_and(|t| t.elapsed() < SCAN_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let scan = |p: &mut ProcNet| p.scan_sockets().map(|(tcp, udp)| Tables { tcp, udp });
        let (host, ns) = match (scan(&mut self.host), scan(&mut self.ns)) {
            (Ok(h), Ok(n)) => (h, n),
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("-T/-U auto: reading the socket tables: {e}");
                return;
            }
        };
        let published = |proto, port| {
            forwards.serves(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port, proto)
                || forwards.serves(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port, proto)
        };
        let want = wanted(
            &self.sets,
            &host,
            &ns,
            &self.held,
            self.ephemeral,
            published,
        );
        let mut gone: Vec<Want> = self.held.difference(&want).copied().collect();
        gone.sort();
        for w in gone {
            self.held.remove(&w);
            if self.relay.send(RelayCmd::Remove(w.forward())).is_err() {
                self.stop("the relay stopped");
                return;
            }
            log::info!("-T/-U auto: withdrawn {}", w.forward());
        }
        self.failed.retain(|w| want.contains(w));
        let mut new: Vec<Want> = want.difference(&self.held).copied().collect();
        new.sort();
        for w in new {
            match self.binder.bind(w) {
                Ok(fd) => {
                    if self
                        .relay
                        .send(RelayCmd::Add(Listener::new(fd, w.forward())))
                        .is_err()
                    {
                        self.stop("the relay stopped");
                        return;
                    }
                    log::info!("-T/-U auto: forwarding {}", w.forward());
                    self.failed.remove(&w);
                    self.held.insert(w);
                }
                Err(e)
                    if e.raw_os_error().is_some()
                        && e.kind() != io::ErrorKind::BrokenPipe
                        && e.kind() != io::ErrorKind::WouldBlock =>
                {
                    if self.failed.insert(w) {
                        log::debug!("-T/-U auto: {}: skipped: {e}", w.forward());
                    }
                }
                Err(e) => {
                    self.stop(&e.to_string());
                    return;
                }
            }
        }
    }

    fn stop(&mut self, why: &str) {
        log::warn!("-T/-U auto: stopped following the host's ports: {why}");
        self.dead = true;
    }
}

#[cfg(test)]
mod tests;
