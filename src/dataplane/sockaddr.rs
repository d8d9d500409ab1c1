//! [`SockAddr`]: a [`SocketAddr`] in the form the kernel reads
//! (`sockaddr_in` or `sockaddr_in6`), for the io_uring connect op and the
//! direct `sendto`/`bind` calls of both executors. Moved here as it was
//! from the io_uring executor, so that it can be swapped for a shared
//! sockaddr type in one place.

use std::net::SocketAddr;

use crate::dataplane::sock::socklen_of;

/// A socket address in the form the kernel reads.
pub(super) enum SockAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl SockAddr {
    pub(super) fn new(addr: &SocketAddr) -> SockAddr {
        match addr {
            SocketAddr::V4(a) => SockAddr::V4(libc::sockaddr_in {
                sin_family: family(libc::AF_INET),
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => SockAddr::V6(libc::sockaddr_in6 {
                sin6_family: family(libc::AF_INET6),
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    pub(super) fn as_ptr(&self) -> *const libc::sockaddr {
        match self {
            SockAddr::V4(a) => std::ptr::from_ref(a).cast(),
            SockAddr::V6(a) => std::ptr::from_ref(a).cast(),
        }
    }

    pub(super) fn len(&self) -> libc::socklen_t {
        match self {
            SockAddr::V4(_) => socklen_of::<libc::sockaddr_in>(),
            SockAddr::V6(_) => socklen_of::<libc::sockaddr_in6>(),
        }
    }
}

fn family(af: libc::c_int) -> libc::sa_family_t {
    // Cannot fail: AF_INET (2) and AF_INET6 (10) fit in sa_family_t (u16).
    libc::sa_family_t::try_from(af).expect("address family fits sa_family_t")
}
