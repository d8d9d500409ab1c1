//! Namespace-to-host forwards (pasta's `-T`/`-U`): a connection to a port
//! on the namespace's loopback is carried to the same (or the named) port
//! on the host's loopback, outside the guest's link.
//!
//! # Theory of operation
//!
//! A socket belongs to the network namespace of the thread that created
//! it. So the listeners are made at start, before the sandbox, by a short
//! set-up step that enters the namespace on the calling thread only
//! (`setns`), binds, and returns ([`bind_in`]). From then on one thread,
//! `uipd-nsfwd`, which stays in the host's namespace, accepts on them and
//! connects (or sends) from its own, host-side sockets: TCP bytes are
//! copied both ways through a bounded buffer per direction, and each UDP
//! client of a namespace port gets a connected host socket of its own,
//! dropped after [`UDP_IDLE`] without traffic.
//!
//! ```text
//!  namespace: client ─► 127.0.0.1:P (listener made in the netns)
//!                          │ accept (uipd-nsfwd, host netns)
//!  host:                   └─► connect 127.0.0.1:G ─► host server
//! ```
//!
//! `-T auto`/`-U auto` ([`crate::nsauto`]) hand the relay listeners made
//! later, by a helper process that stays in the namespace, and take them
//! back, through [`RelayCmd`]s the relay reads between polls: a listener
//! lives in a slot that keeps its index while it is held, so a UDP
//! client's `listener` index stays valid; a withdrawn listener's UDP
//! clients go with it, its accepted TCP connections stay until they end.
//!
//! Limits: at most
//! [`MAX_CONNS`] TCP connections and [`MAX_UDP`] UDP clients at once (more
//! are refused: closed, or their datagrams dropped). Bytes are copied
//! (no `splice`). Binding needs `setns` into the namespace, i.e.
//! `CAP_SYS_ADMIN` over its user namespace, as `--netns` attaching does.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use crate::publish::{self, PubProto, PublishSpec};

/// Longest a UDP client's host socket lives without a datagram either way.
pub const UDP_IDLE: Duration = Duration::from_secs(180);
/// Most TCP connections carried at once.
pub const MAX_CONNS: usize = 1024;
/// Most UDP clients served at once.
pub const MAX_UDP: usize = 1024;

/// One namespace-to-host forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsForward {
    /// Transport.
    pub proto: PubProto,
    /// Where it listens, in the namespace.
    pub listen: SocketAddr,
    /// The host loopback port it goes to (127.0.0.1 or ::1, the listen
    /// address's family).
    pub to_port: u16,
}

impl std::fmt::Display for NsForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ns {} -> host port {}/{}",
            self.listen, self.to_port, self.proto
        )
    }
}

/// Bytes buffered per direction of a TCP connection.
const BUF: usize = 64 << 10;
/// Longest a connect to the host's loopback may take (it is answered at
/// once, or refused).
const CONNECT_LIMIT: Duration = Duration::from_secs(1);

/// A listener made in the namespace, and its forward.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    fwd: NsForward,
}

impl Listener {
    /// The listener `fd` (a bound TCP listener or UDP socket made in the
    /// namespace) for `fwd`; takes ownership of `fd`.
    pub fn new(fd: OwnedFd, fwd: NsForward) -> Listener {
        Listener { fd, fwd }
    }
}

/// A change to the relay's listeners, sent by `-T auto`'s driver.
#[derive(Debug)]
pub enum RelayCmd {
    /// Serve this listener too.
    Add(Listener),
    /// Close the listener of this forward (its UDP clients too).
    Remove(NsForward),
}

/// Bind every forward's socket inside the namespace `target` (a path or a
/// PID, see [`crate::dataplane::netns::in_netns`]): all or nothing, the
/// error names the forward.
pub fn bind_in(target: &str, fwds: &[NsForward]) -> Result<Vec<Listener>, String> {
    crate::dataplane::netns::in_netns(target, || {
        let mut out = Vec::new();
        for f in fwds {
            let spec = PublishSpec {
                addr: f.listen.ip(),
                host_port: f.listen.port(),
                guest_port: f.to_port,
                count: 1,
                proto: f.proto,
            };
            let mut b = publish::bind(&spec, &f.to_string())
                .map_err(|e| format!("-T/-U {f}: cannot listen in the namespace: {}", e.source))?;
            if let Some(b) = b.pop() {
                out.push(Listener {
                    fd: b.fd,
                    fwd: f.clone(),
                });
            }
        }
        Ok(out)
    })
    .map_err(|e| e.to_string())?
}

/// The host loopback address of `fwd`'s family, at its target port.
fn host_target(fwd: &NsForward) -> SocketAddr {
    let ip = if fwd.listen.is_ipv4() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    };
    SocketAddr::new(ip, fwd.to_port)
}

/// One direction's bytes in flight: read from one side, not yet written
/// to the other.
#[derive(Default)]
struct Pipe {
    buf: Vec<u8>,
    /// The reading side said end of file.
    eof: bool,
    /// The writing side was shut down for writing (after `eof`, once the
    /// buffer was written).
    shut: bool,
}

/// A namespace client's connection and its host connection.
struct Conn {
    /// `[namespace side, host side]`.
    socks: [TcpStream; 2],
    /// `pipes[d]` carries what side `d` sent toward the other side.
    pipes: [Pipe; 2],
}

impl Conn {
    /// Move what can move without blocking; false once the connection is
    /// over (both directions shut, or an error).
    fn pump(&mut self) -> bool {
        for _ in 0..64 {
            let mut moved = false;
            for d in 0..2 {
                let (a, b) = if d == 0 { (0, 1) } else { (1, 0) };
                let p = &mut self.pipes[d];
                if !p.buf.is_empty() {
                    match (&self.socks[b]).write(&p.buf) {
                        Ok(n) => {
                            p.buf.drain(..n);
                            moved |= n > 0;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => moved = true,
                        Err(_) => return false,
                    }
                }
                if p.buf.is_empty() && !p.eof {
                    let mut chunk = vec![0u8; BUF];
                    match (&self.socks[a]).read(&mut chunk) {
                        Ok(0) => {
                            p.eof = true;
                            moved = true;
                        }
                        Ok(n) => {
                            chunk.truncate(n);
                            p.buf = chunk;
                            moved = true;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => moved = true,
                        Err(_) => return false,
                    }
                }
                if p.eof && p.buf.is_empty() && !p.shut {
                    let _ = self.socks[b].shutdown(std::net::Shutdown::Write);
                    p.shut = true;
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        !(self.pipes[0].shut && self.pipes[1].shut)
    }

    /// The poll events each side waits for.
    fn events(&self) -> [libc::c_short; 2] {
        let mut ev = [0; 2];
        for (d, p) in self.pipes.iter().enumerate() {
            if p.buf.is_empty() && !p.eof {
                ev[d] |= libc::POLLIN;
            }
            if !p.buf.is_empty() {
                ev[1 - d] |= libc::POLLOUT;
            }
        }
        ev
    }
}

/// A UDP client of a namespace port: its own connected host socket.
struct UdpClient {
    listener: usize,
    peer: SocketAddr,
    host: UdpSocket,
    last: Instant,
}

/// The relay's state, served by `Relay::run` on its own thread.
pub struct Relay {
    /// Listener slots: `None` where one was removed (reused by the next).
    tcp: Vec<Option<(TcpListener, NsForward)>>,
    udp: Vec<Option<(UdpSocket, NsForward)>>,
    /// Listeners that come and go (`-T auto`); `None`: fixed ones only.
    cmds: Option<Receiver<RelayCmd>>,
    conns: Vec<Conn>,
    clients: Vec<UdpClient>,
    by_peer: HashMap<(usize, SocketAddr), usize>,
}

impl Relay {
    /// The relay of `listeners` (bound by [`bind_in`]).
    pub fn new(listeners: Vec<Listener>) -> std::io::Result<Relay> {
        let mut r = Relay {
            tcp: Vec::new(),
            udp: Vec::new(),
            cmds: None,
            conns: Vec::new(),
            clients: Vec::new(),
            by_peer: HashMap::new(),
        };
        for l in listeners {
            r.add(l)?;
        }
        Ok(r)
    }

    /// Also serve the listeners `cmds` adds, until it removes them.
    pub fn follow(&mut self, cmds: Receiver<RelayCmd>) {
        self.cmds = Some(cmds);
    }

    /// Serve `l` (in the first free slot of its protocol).
    fn add(&mut self, l: Listener) -> std::io::Result<()> {
        fn put<T>(slots: &mut Vec<Option<T>>, x: T) {
            match slots.iter_mut().find(|s| s.is_none()) {
                Some(s) => *s = Some(x),
                None => slots.push(Some(x)),
            }
        }
        match l.fwd.proto {
            PubProto::Tcp => {
                let s = TcpListener::from(l.fd);
                s.set_nonblocking(true)?;
                put(&mut self.tcp, (s, l.fwd));
            }
            PubProto::Udp => {
                let s = UdpSocket::from(l.fd);
                s.set_nonblocking(true)?;
                put(&mut self.udp, (s, l.fwd));
            }
        }
        Ok(())
    }

    /// Close the listener of `fwd`, and forget its UDP clients.
    fn remove(&mut self, fwd: &NsForward) {
        match fwd.proto {
            PubProto::Tcp => {
                for s in &mut self.tcp {
                    if s.as_ref().is_some_and(|(_, f)| f == fwd) {
                        *s = None;
                    }
                }
            }
            PubProto::Udp => {
                let Some(l) = self
                    .udp
                    .iter()
                    .position(|s| s.as_ref().is_some_and(|(_, f)| f == fwd))
                else {
                    return;
                };
                self.udp[l] = None;
                self.clients.retain(|c| c.listener != l);
                self.reindex();
            }
        }
    }

    /// Apply the pending [`RelayCmd`]s (once their sender is gone, the
    /// listeners it added stay served).
    fn commands(&mut self) {
        let Some(rx) = self.cmds.take() else {
            return;
        };
        for _ in 0..1024 {
            match rx.try_recv() {
                Ok(RelayCmd::Add(l)) => {
                    let what = l.fwd.to_string();
                    if let Err(e) = self.add(l) {
                        log::warn!("nsfwd: {what}: {e}");
                    }
                }
                Ok(RelayCmd::Remove(f)) => self.remove(&f),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        self.cmds = Some(rx);
    }

    /// Rebuild the UDP client index after clients were removed.
    fn reindex(&mut self) {
        self.by_peer = self
            .clients
            .iter()
            .enumerate()
            .map(|(k, c)| ((c.listener, c.peer), k))
            .collect();
    }

    /// Start the relay thread (`uipd-nsfwd`), confined to its sandbox
    /// role; it ends when `stop` is set.
    pub fn start(self, stop: Arc<AtomicBool>) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("uipd-nsfwd".into())
            .spawn(move || {
                if let Err(e) = crate::sandbox::confine(crate::sandbox::Role::NsFwd) {
                    log::error!("{e}");
                    return;
                }
                self.run(&stop);
            })
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut last_sweep = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            self.commands();
            let mut pfds: Vec<libc::pollfd> = Vec::new();
            let pfd = |fd: i32, events: libc::c_short| libc::pollfd {
                fd,
                events,
                revents: 0,
            };
            // An empty slot polls fd -1, which poll(2) skips, so that
            // entry `i` stays slot `i`.
            for l in &self.tcp {
                let ev = if self.conns.len() < MAX_CONNS {
                    libc::POLLIN
                } else {
                    0
                };
                pfds.push(pfd(l.as_ref().map_or(-1, |(l, _)| l.as_raw_fd()), ev));
            }
            for s in &self.udp {
                pfds.push(pfd(
                    s.as_ref().map_or(-1, |(s, _)| s.as_raw_fd()),
                    libc::POLLIN,
                ));
            }
            for c in &self.conns {
                let ev = c.events();
                pfds.push(pfd(c.socks[0].as_raw_fd(), ev[0]));
                pfds.push(pfd(c.socks[1].as_raw_fd(), ev[1]));
            }
            for c in &self.clients {
                pfds.push(pfd(c.host.as_raw_fd(), libc::POLLIN));
            }
            let n = libc::nfds_t::try_from(pfds.len()).unwrap_or(libc::nfds_t::MAX);
            // SAFETY: `pfds` is a live array of `n` pollfds that poll(2)
            // writes the `revents` of, during the call only.
            let r = unsafe { libc::poll(pfds.as_mut_ptr(), n, 200) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("nsfwd: poll: {e}");
                    return;
                }
                continue;
            }
            let ready = |i: usize| pfds.get(i).is_some_and(|p| p.revents != 0);
            // Connections accepted below have no poll entry yet.
            let polled = self.conns.len();
            let mut i = 0;
            for l in 0..self.tcp.len() {
                if ready(i) {
                    self.accept(l);
                }
                i += 1;
            }
            for l in 0..self.udp.len() {
                if ready(i) {
                    self.udp_up(l);
                }
                i += 1;
            }
            let conns = std::mem::take(&mut self.conns);
            let base = i;
            for (k, mut c) in conns.into_iter().enumerate() {
                let touched = k >= polled || ready(base + 2 * k) || ready(base + 2 * k + 1);
                if !touched || c.pump() {
                    self.conns.push(c);
                }
            }
            i = base + 2 * polled;
            for k in 0..self.clients.len() {
                if ready(i + k) {
                    self.udp_down(k);
                }
            }
            if last_sweep.elapsed() >= Duration::from_secs(1) {
                last_sweep = Instant::now();
                self.sweep();
            }
        }
    }

    /// Accept the namespace's clients waiting on TCP listener `l`, each
    /// with a connection to the host's loopback.
    fn accept(&mut self, l: usize) {
        let Some((listener, fwd)) = &self.tcp[l] else {
            return;
        };
        for _ in 0..16 {
            if self.conns.len() >= MAX_CONNS {
                return;
            }
            let client = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::debug!("nsfwd: {fwd}: accept: {e}");
                    return;
                }
            };
            let to = host_target(fwd);
            let host = match TcpStream::connect_timeout(&to, CONNECT_LIMIT) {
                Ok(h) => h,
                Err(e) => {
                    // The client sees its connection end.
                    log::debug!("nsfwd: {fwd}: connect {to}: {e}");
                    continue;
                }
            };
            if client.set_nonblocking(true).is_err() || host.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = client.set_nodelay(true);
            let _ = host.set_nodelay(true);
            let mut c = Conn {
                socks: [client, host],
                pipes: [Pipe::default(), Pipe::default()],
            };
            if c.pump() {
                self.conns.push(c);
            }
        }
    }

    /// Datagrams from the namespace's clients of UDP port `l`: each
    /// client's go out through its own host socket.
    fn udp_up(&mut self, l: usize) {
        let mut buf = vec![0u8; 65536];
        for _ in 0..64 {
            let Some((sock, fwd)) = &self.udp[l] else {
                return;
            };
            let (n, peer) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let k = match self.by_peer.get(&(l, peer)) {
                Some(&k) => k,
                None => {
                    if self.clients.len() >= MAX_UDP {
                        continue;
                    }
                    let to = host_target(fwd);
                    let local = SocketAddr::new(to.ip(), 0);
                    let host = match UdpSocket::bind(local).and_then(|s| {
                        s.connect(to)?;
                        s.set_nonblocking(true)?;
                        Ok(s)
                    }) {
                        Ok(s) => s,
                        Err(e) => {
                            log::debug!("nsfwd: {fwd}: {e}");
                            continue;
                        }
                    };
                    self.clients.push(UdpClient {
                        listener: l,
                        peer,
                        host,
                        last: Instant::now(),
                    });
                    self.by_peer.insert((l, peer), self.clients.len() - 1);
                    self.clients.len() - 1
                }
            };
            let c = &mut self.clients[k];
            c.last = Instant::now();
            let _ = c.host.send(&buf[..n]);
        }
    }

    /// Replies from the host to UDP client `k`, sent back from the
    /// namespace port it wrote to.
    fn udp_down(&mut self, k: usize) {
        let mut buf = vec![0u8; 65536];
        let c = &mut self.clients[k];
        for _ in 0..64 {
            match c.host.recv(&mut buf) {
                Ok(n) => {
                    c.last = Instant::now();
                    if let Some((s, _)) = &self.udp[c.listener] {
                        let _ = s.send_to(&buf[..n], c.peer);
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// Forget UDP clients idle for [`UDP_IDLE`].
    fn sweep(&mut self) {
        let before = self.clients.len();
        self.clients.retain(|c| c.last.elapsed() < UDP_IDLE);
        if self.clients.len() != before {
            self.reindex();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(proto: PubProto, port: u16) -> NsForward {
        NsForward {
            proto,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            to_port: port,
        }
    }

    #[test]
    fn listeners_come_and_go_in_stable_slots() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut r = Relay::new(Vec::new()).unwrap();
        r.follow(rx);
        let udp = || OwnedFd::from(UdpSocket::bind("127.0.0.1:0").unwrap());
        for port in [1, 2, 3] {
            let l = Listener::new(udp(), fwd(PubProto::Udp, port));
            tx.send(RelayCmd::Add(l)).unwrap();
        }
        r.commands();
        assert_eq!(r.udp.len(), 3);
        // A client of slot 2 and one of slot 1.
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for listener in [2, 1] {
            r.clients.push(UdpClient {
                listener,
                peer,
                host: UdpSocket::bind("127.0.0.1:0").unwrap(),
                last: Instant::now(),
            });
        }
        r.reindex();
        tx.send(RelayCmd::Remove(fwd(PubProto::Udp, 2))).unwrap();
        tx.send(RelayCmd::Remove(fwd(PubProto::Tcp, 2))).unwrap();
        r.commands();
        assert!(r.udp[1].is_none() && r.udp[0].is_some() && r.udp[2].is_some());
        assert_eq!(r.clients.len(), 1, "the removed listener's client went");
        assert_eq!(
            r.by_peer.get(&(2, peer)),
            Some(&0),
            "the other keeps its slot"
        );
        // The free slot is reused; a closed channel leaves the listeners.
        let l = Listener::new(udp(), fwd(PubProto::Udp, 4));
        tx.send(RelayCmd::Add(l)).unwrap();
        drop(tx);
        r.commands();
        r.commands();
        assert_eq!(r.udp[1].as_ref().map(|(_, f)| f.to_port), Some(4));
        assert!(r.cmds.is_none());
        assert_eq!(r.udp.iter().flatten().count(), 3);
    }
}
