//! Published ports on the epoll executor: listeners registered
//! edge-triggered, accepted or read dry in bounded turns, and the flows
//! attached to them (see the [parent module](super)).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use log::{debug, trace, warn};

use super::{ACCEPT_BATCH, DGRAM_ROUNDS, Epoll, IN_EVENTS, Listener, Token, sys};
use crate::dataplane::io::Completion;
use crate::dataplane::io::Phase;
use crate::dataplane::sock::{peer_addr, setsockopt};
use crate::stack::flow::FlowId;
use crate::stack::ops::Proto;

impl Epoll {
    /// Serve published port `id`: `fd` is a listening TCP socket or a bound
    /// UDP socket (takes ownership; made non-blocking). Connections come
    /// as [`Completion::Accepted`], datagrams as [`Completion::Datagram`].
    /// An `id` already in use replaces the old listener.
    pub fn add_listener(&mut self, id: u32, proto: Proto, fd: OwnedFd) {
        self.remove_listener(id);
        if let Err(e) = sys::set_nonblocking(fd.as_raw_fd()) {
            warn!("epoll: published port {id}: O_NONBLOCK failed: errno {e}");
            return;
        }
        let token = Token::Listener { id }.pack();
        if let Err(e) = sys::epoll_ctl(
            &self.ep,
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            IN_EVENTS,
            token,
        ) {
            warn!("epoll: published port {id}: epoll_ctl failed: errno {e}");
            return;
        }
        self.listeners.insert(id, Listener { fd, proto });
        // Whatever is already queued is served at the next submit.
        self.dirty_listeners.push(id);
    }

    /// Stop serving published port `id`: the socket is shut down (a TCP
    /// port refuses new clients at once) and closed. Flows attached to a
    /// UDP listener fail their later sends with `EBADF`.
    pub fn remove_listener(&mut self, id: u32) {
        let Some(l) = self.listeners.remove(&id) else {
            return;
        };
        if let Err(e) = sys::shutdown(l.fd.as_raw_fd(), libc::SHUT_RDWR) {
            trace!("epoll: shutdown of published port {id}: errno {e}");
        }
        for f in self.flows.iter_mut().flatten() {
            if f.published.is_some_and(|(l, _)| l == id) {
                f.phase = Phase::Failed(libc::EBADF);
            }
        }
        // Dropping `l` closes the fd, which leaves the epoll set.
    }

    /// Ids of the published ports served.
    pub fn listener_ids(&self) -> Vec<u32> {
        self.listeners.keys().copied().collect()
    }

    /// Take an accepted connection as the host socket of `flow`, already
    /// connected: no `Connected` event follows.
    pub fn attach_tcp(&mut self, id: FlowId, fd: OwnedFd) {
        let one: libc::c_int = 1;
        if let Err(e) = setsockopt(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one) {
            debug!("epoll: TCP_NODELAY failed: errno {e}");
        }
        let phase = match sys::set_nonblocking(fd.as_raw_fd()) {
            Ok(()) => Phase::Connected,
            Err(e) => Phase::Failed(e),
        };
        self.insert_flow(id, Some(fd), None, phase, false);
        if let Err(e) = self.register(id) {
            if let Some(f) = self.flow_mut(id) {
                f.phase = Phase::Failed(e);
            }
        }
    }

    /// Make `flow` a flow of published UDP port `listener`: its sends go
    /// to `peer` from the listener's socket. No `Recv` may be pushed for
    /// it (the listener's datagrams come as [`Completion::Datagram`]).
    pub fn attach_udp(&mut self, id: FlowId, listener: u32, peer: SocketAddr) {
        let phase = match self.listeners.get(&listener) {
            Some(l) if l.proto == Proto::Udp => Phase::Connected,
            _ => {
                debug!("epoll: attach to UDP listener {listener}, which is gone");
                Phase::Failed(libc::EBADF)
            }
        };
        self.insert_flow(id, None, Some((listener, peer)), phase, false);
    }

    /// Accept or read published port `id` dry (bounded; the rest next turn).
    pub(super) fn run_listener(&mut self, id: u32) {
        let Some(l) = self.listeners.get(&id) else {
            return;
        };
        let (fd, proto) = (l.fd.as_raw_fd(), l.proto);
        let more = if proto == Proto::Udp {
            self.listener_datagrams(id, fd)
        } else {
            self.listener_accepts(id, fd)
        };
        if more && !self.dirty_listeners.contains(&id) {
            self.dirty_listeners.push(id);
        }
    }

    fn listener_accepts(&mut self, id: u32, fd: RawFd) -> bool {
        for _ in 0..ACCEPT_BATCH {
            match sys::accept(fd) {
                Ok((c, peer)) => {
                    let Some(peer) = peer.or_else(|| peer_addr(&c)) else {
                        debug!("epoll: no peer address for a connection on published port {id}");
                        continue;
                    };
                    self.ready.push_back(Completion::Accepted {
                        listener: id,
                        fd: c,
                        peer,
                    });
                }
                Err(libc::EAGAIN) => return false,
                Err(libc::EINTR | libc::ECONNABORTED) => {}
                Err(e) => {
                    debug!("epoll: accept on published port {id}: errno {e}");
                    return false;
                }
            }
        }
        true
    }

    fn listener_datagrams(&mut self, id: u32, fd: RawFd) -> bool {
        self.ensure_dgram_bufs();
        for _ in 0..DGRAM_ROUNDS {
            let mut bufs = std::mem::take(&mut self.dgram_bufs);
            let mut peers = std::mem::take(&mut self.peers);
            peers.clear();
            peers.resize(bufs.len(), None);
            let r = sys::recv_batch(fd, &mut bufs, Some(&mut peers));
            if let Ok(n) = r {
                for (b, peer) in bufs[..n].iter().zip(&peers) {
                    let data = self.copy_out(b);
                    if let Some(peer) = *peer {
                        self.ready.push_back(Completion::Datagram {
                            listener: id,
                            peer,
                            data,
                        });
                    }
                }
            }
            let full = matches!(r, Ok(n) if n == bufs.len());
            self.dgram_bufs = bufs;
            self.peers = peers;
            match r {
                Ok(_) if full => {}
                Err(libc::EINTR) => {}
                Ok(_) | Err(libc::EAGAIN) => return false,
                Err(e) => {
                    debug!("epoll: recvmmsg on published port {id}: errno {e}");
                    return false;
                }
            }
        }
        true
    }
}
