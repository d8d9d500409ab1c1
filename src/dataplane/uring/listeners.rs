//! Published ports on io_uring: a TCP listener has one one-shot `Accept`
//! in flight (re-armed at each CQE), a UDP socket a one-shot poll after
//! which it is read dry with non-blocking `recvfrom` (at most
//! `DGRAM_BATCH` datagrams per wake-up). Accepted connections and UDP
//! clients become flows through `attach_tcp` / `attach_udp`.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, types};
use log::{debug, warn};

use super::executor::Flow;
use super::{Completion, Op, OpKind, OpRes, Uring};
use crate::dataplane::io::{FlowOps, Phase};
use crate::dataplane::sock::{last_errno, peer_addr, setsockopt, socklen_of, to_socket_addr};
use crate::stack::flow::FlowId;
use crate::stack::ops::{Errno, Proto};

/// Most datagrams read from a published UDP port per wake-up.
const DGRAM_BATCH: usize = 64;

impl Uring {
    // ---- published ports ----

    /// Serve published port `id`: `fd` is a listening TCP socket or a bound
    /// UDP socket (takes ownership). Connections come back as
    /// [`Completion::Accepted`], datagrams as [`Completion::Datagram`].
    /// An `id` already in use replaces the old listener.
    pub fn add_listener(&mut self, id: u32, proto: Proto, fd: OwnedFd) {
        self.remove_listener(id);
        let s = self.alloc_sock(fd);
        self.listeners.insert(id, (s, proto));
        self.arm_listener(id);
    }

    /// Stop serving published port `id`: a TCP listener stops listening at
    /// once (`shutdown`), so new clients are refused; its pending op is
    /// cancelled and the fd closes when that op's CQE arrives. Flows
    /// attached to a UDP listener fail their later sends with `EBADF`.
    pub fn remove_listener(&mut self, id: u32) {
        let Some((s, _)) = self.listeners.remove(&id) else {
            return;
        };
        let fd = self.sock_fd(s);
        // SAFETY: `fd` is the listener's open socket (owned by `socks[s]`,
        // released only below, after its ops); shutdown(2) takes no pointers.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        for f in self.flows.iter_mut().flatten() {
            if f.peer.is_some() && f.sock == Some(s) {
                f.sock = None;
                f.phase = Phase::Failed(libc::EBADF);
            }
        }
        self.abandon_sock(s);
    }

    /// Ids of the published ports served.
    pub fn listener_ids(&self) -> Vec<u32> {
        self.listeners.keys().copied().collect()
    }

    /// Take an accepted connection (from [`Completion::Accepted`]) as the
    /// host socket of `flow`, already connected: no `Connected` event
    /// follows; the stack's `Recv`/`Send` ops on `flow` run at once.
    pub fn attach_tcp(&mut self, id: FlowId, fd: OwnedFd) {
        let one: libc::c_int = 1;
        if let Err(e) = setsockopt(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one) {
            debug!("uring: TCP_NODELAY failed: errno {e}");
        }
        let s = self.alloc_sock(fd);
        self.attach(id, Some(s), None);
    }

    /// Make `flow` a flow of published UDP port `listener`: its sends go to
    /// `peer` from the listener's socket. No `Recv` may be pushed for it
    /// (the listener's datagrams come as [`Completion::Datagram`]).
    pub fn attach_udp(&mut self, id: FlowId, listener: u32, peer: SocketAddr) {
        match self.listeners.get(&listener) {
            Some(&(s, Proto::Udp)) => self.attach(id, Some(s), Some(peer)),
            _ => {
                debug!("uring: attach to UDP listener {listener}, which is gone");
                self.attach(id, None, Some(peer));
                if let Some(f) = self.flow_mut(id) {
                    f.phase = Phase::Failed(libc::EBADF);
                }
            }
        }
    }

    pub(super) fn attach(&mut self, id: FlowId, sock: Option<u32>, peer: Option<SocketAddr>) {
        let idx = id.idx as usize;
        if self.flows.len() <= idx {
            self.flows.resize_with(idx + 1, || None);
        }
        if let Some(old) = self.flows[idx].as_ref().map(|f| f.id) {
            warn!("uring: attach of {id:?} while {old:?} is live without Close; aborting it");
            self.close(old, true);
        }
        self.flows[idx] = Some(Flow {
            id,
            sock,
            phase: Phase::Connected,
            sends_in_flight: 0,
            shutdown_pending: false,
            peer,
            dgram: false,
            udp: false,
            no_segments: false,
        });
        self.live_flows += 1;
    }

    pub(super) fn arm_listener(&mut self, id: u32) {
        let Some(&(s, proto)) = self.listeners.get(&id) else {
            return;
        };
        let fd = self.sock_fd(s);
        let kind = match proto {
            Proto::Udp => OpKind::DgramPoll,
            _ => OpKind::Accept,
        };
        let op = Op {
            kind,
            flow: None,
            sock: Some(s),
            listener: Some(id),
            res: OpRes::None,
        };
        self.start(op, |_| match kind {
            OpKind::Accept => {
                opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
            }
            _ => {
                // Cannot fail: POLLIN (1) fits in u32.
                let mask = u32::try_from(libc::POLLIN).unwrap_or(1);
                opcode::PollAdd::new(types::Fd(fd), mask).build()
            }
        });
    }

    pub(super) fn on_accept(
        &mut self,
        listener: Option<u32>,
        res: Result<i32, Errno>,
        out: &mut impl FnMut(Completion),
    ) -> usize {
        let Some(id) = listener else { return 0 };
        let live = self.listeners.contains_key(&id);
        let fd = match res {
            // SAFETY: the accept CQE's result is a new fd that nothing
            // else owns.
            Ok(fd) => Some(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(e) => {
                if live {
                    debug!("uring: accept on published port {id}: errno {e}");
                }
                None
            }
        };
        if !live {
            // Removed while the accept was in flight: `fd` closes here.
            return 0;
        }
        self.arm_listener(id);
        let Some(fd) = fd else { return 0 };
        let Some(peer) = peer_addr(&fd) else {
            debug!("uring: getpeername of an accepted connection failed");
            return 0;
        };
        out(Completion::Accepted {
            listener: id,
            fd,
            peer,
        });
        1
    }

    pub(super) fn on_dgram_ready(
        &mut self,
        listener: Option<u32>,
        res: Result<i32, Errno>,
        out: &mut impl FnMut(Completion),
    ) -> usize {
        let Some(id) = listener else { return 0 };
        let Some(&(s, _)) = self.listeners.get(&id) else {
            return 0;
        };
        if let Err(e) = res {
            debug!("uring: poll on published port {id}: errno {e}");
        }
        let fd = self.sock_fd(s);
        let mut n = 0;
        // Bounded per wake-up; the poll is level-triggered, so what is
        // left wakes the next one at once.
        for _ in 0..DGRAM_BATCH {
            let mut buf = self.recv_buffer(65536);
            match recv_from(fd, &mut buf) {
                Ok(peer) => {
                    out(Completion::Datagram {
                        listener: id,
                        peer,
                        data: buf,
                    });
                    n += 1;
                }
                Err(e) => {
                    self.recycle(buf);
                    if e != libc::EAGAIN && e != libc::EWOULDBLOCK {
                        debug!("uring: recvfrom on published port {id}: errno {e}");
                    }
                    break;
                }
            }
        }
        self.arm_listener(id);
        n
    }
}

/// One non-blocking `recvfrom` into `buf`'s spare capacity (at least one
/// byte); on success `buf` holds the datagram.
fn recv_from(fd: RawFd, buf: &mut Vec<u8>) -> Result<SocketAddr, Errno> {
    buf.clear();
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = socklen_of::<libc::sockaddr_storage>();
    // SAFETY:
    // - `fd` is an open socket for the call (the caller's listener);
    // - the kernel writes at most `buf.capacity()` bytes at its start, and
    //   at most `len` (the storage's size) bytes into `ss`.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.capacity(),
            libc::MSG_DONTWAIT,
            std::ptr::from_mut(&mut ss).cast(),
            &raw mut len,
        )
    };
    if n < 0 {
        return Err(last_errno());
    }
    // Cannot fail: n >= 0.
    let n = usize::try_from(n).unwrap_or(0).min(buf.capacity());
    // SAFETY: the kernel initialised the first `n` bytes (at most the
    // capacity); u8 has no invalid bit patterns.
    unsafe { buf.set_len(n) };
    to_socket_addr(&ss).ok_or(libc::EAFNOSUPPORT)
}
