//! How the host I/O executors (io_uring in [`crate::dataplane::uring`],
//! epoll in [`crate::dataplane::epoll`]) make and tune a flow's socket: the
//! socket type per protocol, `TCP_NODELAY`/`TCP_MAXSEG`, the UDP receive
//! buffer, the source address, and a reset on close. The system calls
//! themselves are [`crate::sys::sock`]'s.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use log::{debug, trace};

use crate::stack::ops::{Errno, Proto};
pub(super) use crate::sys::sock::{last_errno, peer_addr, send_to, setsockopt};
pub(super) use crate::sys::sockaddr::{from_storage as to_socket_addr, socklen_of};

/// Close a socket with RST (`SO_LINGER` 0): a host client the stack
/// refused.
pub fn abort_socket(fd: OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    if let Err(e) = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger) {
        debug!("uring: SO_LINGER 0 failed: errno {e}");
    }
}

/// Create the socket for an `Open`: close-on-exec, blocking unless
/// `nonblock` (the epoll executor's); TCP gets `TCP_NODELAY` and
/// `TCP_MAXSEG` (failures of either are logged only); bound to `src`
/// (port 0) when given.
pub(super) fn new_socket(
    proto: Proto,
    dst: &SocketAddr,
    src: Option<std::net::IpAddr>,
    nonblock: bool,
) -> Result<OwnedFd, Errno> {
    let v4 = dst.is_ipv4();
    let domain = if v4 { libc::AF_INET } else { libc::AF_INET6 };
    let (ty, protocol) = match proto {
        Proto::Tcp => (libc::SOCK_STREAM, 0),
        Proto::Udp => (libc::SOCK_DGRAM, 0),
        Proto::Icmp if v4 => (libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
        Proto::Icmp => (libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6),
    };
    let nb = if nonblock { libc::SOCK_NONBLOCK } else { 0 };
    let fd = crate::sys::sock::socket(domain, ty | nb, protocol)?;
    if proto == Proto::Tcp {
        let one: libc::c_int = 1;
        if let Err(e) = setsockopt(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one) {
            debug!("uring: TCP_NODELAY failed: errno {e}");
        }
    }
    if proto == Proto::Udp {
        size_udp_rcvbuf(&fd);
    }
    if let Some(ip) = src {
        crate::sys::sock::bind(&fd, &SocketAddr::new(ip, 0))?;
    }
    Ok(fd)
}

/// What uipd asks for as the receive buffer of its host UDP sockets (the
/// kernel doubles it for bookkeeping).
pub const UDP_RCVBUF: libc::c_int = 2 << 20;

/// Size the receive buffer of a host UDP socket: a sender on the host is
/// never slowed by uipd, so whatever arrives while the worker is busy or
/// descheduled waits here or is lost (`UdpRcvbufErrors`). Measured: netperf
/// UDP_STREAM host -> guest through a published port lost 90% in the
/// default 208 KiB (three 64 KiB datagrams) and about half as much with
/// 4 MiB. `SO_RCVBUFFORCE` where uipd may (CAP_NET_ADMIN: published
/// sockets are bound before the sandbox drops it), else `SO_RCVBUF`, which
/// the kernel clamps to `net.core.rmem_max`. Failures are ignored: the
/// default buffer still works.
pub fn size_udp_rcvbuf(fd: &OwnedFd) {
    if setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &UDP_RCVBUF).is_err()
        && let Err(e) = setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &UDP_RCVBUF)
    {
        trace!("uring: SO_RCVBUF failed: errno {e}");
    }
}
