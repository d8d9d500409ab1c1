//! Socket calls on host sockets: create, bind, listen, set an option,
//! `sendto`, the peer's address.
//!
//! Errors are the raw `errno` (an `i32`), the form the stack's completions
//! carry (the stack's `Errno`), so the executors hand them on
//! without conversion; [`std::io::Error::from_raw_os_error`] turns one into
//! an `io::Error` where a caller wants that.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::sockaddr::{SockAddr, from_storage, socklen_of, storage};

/// The calling thread's `errno` (`EIO` when there is none).
pub fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `socket(domain, ty | SOCK_CLOEXEC, protocol)`: `ty` may carry
/// `SOCK_NONBLOCK`.
pub fn socket(domain: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> Result<OwnedFd, i32> {
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: `fd` was just returned by socket(2); nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `bind(fd, addr)`.
pub fn bind(fd: &OwnedFd, addr: &SocketAddr) -> Result<(), i32> {
    let sa = SockAddr::new(addr);
    // SAFETY:
    // - `sa` is a live sockaddr of `sa.len()` bytes that the kernel only
    //   reads during the call;
    // - `fd` is an open socket, borrowed for the call.
    if unsafe { libc::bind(fd.as_raw_fd(), sa.as_ptr(), sa.len()) } < 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// `listen(fd, backlog)`.
pub fn listen(fd: &OwnedFd, backlog: libc::c_int) -> Result<(), i32> {
    // SAFETY: listen(2) on an open socket borrowed for the call; no pointers.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } < 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// `setsockopt(fd, level, name, val)` with `val`'s size as the length.
pub fn setsockopt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
) -> Result<(), i32> {
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

/// The address of `fd`'s peer (`getpeername`), or `None`.
pub fn peer_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    let mut ss = storage();
    let mut len = socklen_of::<libc::sockaddr_storage>();
    // SAFETY:
    // - `fd` is open; `ss` and `len` are live for the call and `len` is the
    //   storage's size, which the kernel does not write beyond.
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
    from_storage(&ss)
}

/// One non-blocking `sendto` of `data` to `peer` on `fd` (`MSG_NOSIGNAL`):
/// the bytes the kernel took.
pub fn send_to(fd: RawFd, data: &[u8], peer: &SocketAddr) -> Result<usize, i32> {
    let addr = SockAddr::new(peer);
    // SAFETY:
    // - `fd` is an open socket for the call (the caller's flow holds it);
    // - `data` and `addr` are live and the lengths passed are theirs; the
    //   kernel only reads them during the call.
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

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    #[test]
    fn a_datagram_sent_from_a_bound_socket_names_its_source() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        bind(&fd, &"127.0.0.1:0".parse().unwrap()).unwrap();
        let one: libc::c_int = 1;
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_BROADCAST, &one).unwrap();
        let to = rx.local_addr().unwrap();
        assert_eq!(send_to(fd.as_raw_fd(), b"hello", &to), Ok(5));
        let mut buf = [0u8; 16];
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert!(from.ip().is_loopback() && from.port() != 0);
        assert_eq!(peer_addr(&fd), None, "an unconnected socket has no peer");
        assert_eq!(
            setsockopt(&fd, libc::SOL_SOCKET, -1, &one),
            Err(libc::ENOPROTOOPT)
        );
    }
}
