//! Direct socket system calls that both host I/O executors use (io_uring
//! in [`crate::dataplane::uring`], epoll in [`crate::dataplane::epoll`]):
//! creating a flow's socket, options, `sendto`, peer addresses, and
//! reading a kernel `sockaddr_storage` back as a [`SocketAddr`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use log::{debug, trace};

use crate::dataplane::sockaddr::SockAddr;
use crate::stack::ops::{Errno, Proto};

/// `size_of::<T>()` as a `socklen_t`.
pub(super) fn socklen_of<T>() -> libc::socklen_t {
    // Cannot fail: only socket structures of at most 128 bytes are passed.
    libc::socklen_t::try_from(std::mem::size_of::<T>()).expect("socket struct size fits socklen_t")
}

/// The calling thread's errno (`EIO` when there is none).
pub(super) fn last_errno() -> Errno {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

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

/// A kernel socket address as a [`SocketAddr`].
pub(super) fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; the
            // storage is larger and suitably aligned for it.
            let a = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                a.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((
                a.sin6_addr.s6_addr,
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    }
}

pub(super) fn peer_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = socklen_of::<libc::sockaddr_storage>();
    // SAFETY: `fd` is open; `ss` and `len` are live and `len` is the
    // storage's size, which the kernel does not exceed.
    let r = unsafe {
        libc::getpeername(
            fd.as_raw_fd(),
            std::ptr::from_mut(&mut ss).cast(),
            &raw mut len,
        )
    };
    if r < 0 {
        return None;
    }
    to_socket_addr(&ss)
}

/// One non-blocking `sendto` of `data` to `peer` on `fd`.
pub(super) fn send_to(fd: RawFd, data: &[u8], peer: &SocketAddr) -> Result<usize, Errno> {
    let addr = SockAddr::new(peer);
    // SAFETY: `fd` is an open socket for the call; `data` and `addr` are
    // live and the lengths passed are theirs; the kernel only reads them.
    let n = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            addr.as_ptr(),
            addr.len(),
        )
    };
    if n < 0 {
        return Err(last_errno());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Create the socket for an `Open`: close-on-exec, blocking unless
/// `nonblock` (the epoll executor's); TCP gets `TCP_NODELAY` and
/// `TCP_MAXSEG` (failures of either are logged only); bound to `src`
/// (port 0) when given.
pub(super) fn new_socket(
    proto: Proto,
    dst: &SocketAddr,
    mss: Option<u16>,
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
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC | nb, protocol) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: `fd` was just returned by socket(2); nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if proto == Proto::Tcp {
        let one: libc::c_int = 1;
        if let Err(e) = setsockopt(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one) {
            debug!("uring: TCP_NODELAY failed: errno {e}");
        }
        if let Some(mss) = mss {
            let mss = libc::c_int::from(mss);
            if let Err(e) = setsockopt(&fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG, &mss) {
                trace!("uring: TCP_MAXSEG {mss} failed: errno {e}");
            }
        }
    }
    if proto == Proto::Udp {
        size_udp_rcvbuf(&fd);
    }
    if let Some(ip) = src {
        let sa = SockAddr::new(&SocketAddr::new(ip, 0));
        // SAFETY: `sa` is a live sockaddr of `sa.len()` bytes that the
        // kernel only reads during the call; `fd` is the socket made above.
        if unsafe { libc::bind(fd.as_raw_fd(), sa.as_ptr(), sa.len()) } < 0 {
            return Err(last_errno());
        }
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

pub(super) fn setsockopt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
) -> Result<(), Errno> {
    // SAFETY:
    // - `fd` is an open socket, borrowed for the call;
    // - `val` points to a live, initialized `T` and the length passed is
    //   exactly its size; the kernel only reads it during the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(val).cast(),
            socklen_of::<T>(),
        )
    };
    if r < 0 { Err(last_errno()) } else { Ok(()) }
}
