//! Socket addresses in the forms the kernel reads and writes.
//!
//! [`SockAddr`] turns a [`SocketAddr`] into the `(const sockaddr *,
//! socklen_t)` pair of `bind`, `connect` and `sendto`; [`from_storage`]
//! turns the `sockaddr_storage` that `accept`, `recvfrom` and
//! `getpeername` fill back into a [`SocketAddr`]. [`sockaddr_v4`] and
//! [`sockaddr_hw`] build the bare `struct sockaddr` that `ifreq` and
//! `rtentry` embed, field by field (no `transmute`).
//!
//! All integers in a `sockaddr_in{,6}` are in network byte order but
//! `sin6_scope_id`, which is host order.

use std::net::{Ipv4Addr, SocketAddr};

/// A socket address in the form the kernel reads. It owns its bytes, so a
/// boxed one stays valid (at a fixed address) for as long as a pending
/// io_uring op needs it.
#[derive(Clone, Copy)]
pub enum SockAddr {
    /// An IPv4 address and port.
    V4(libc::sockaddr_in),
    /// An IPv6 address, port, flow info and scope.
    V6(libc::sockaddr_in6),
}

impl SockAddr {
    /// `addr` in the kernel's layout.
    pub fn new(addr: &SocketAddr) -> SockAddr {
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

    /// The address as the kernel's `const struct sockaddr *`; valid while
    /// `self` is neither moved nor dropped, for [`SockAddr::len`] bytes.
    pub fn as_ptr(&self) -> *const libc::sockaddr {
        match self {
            SockAddr::V4(a) => std::ptr::from_ref(a).cast(),
            SockAddr::V6(a) => std::ptr::from_ref(a).cast(),
        }
    }

    /// The length to pass with [`SockAddr::as_ptr`].
    #[allow(clippy::len_without_is_empty)] // a socklen_t, never empty
    pub fn len(&self) -> libc::socklen_t {
        match self {
            SockAddr::V4(_) => socklen_of::<libc::sockaddr_in>(),
            SockAddr::V6(_) => socklen_of::<libc::sockaddr_in6>(),
        }
    }
}

impl std::fmt::Debug for SockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (af, port) = match self {
            SockAddr::V4(a) => ("AF_INET", u16::from_be(a.sin_port)),
            SockAddr::V6(a) => ("AF_INET6", u16::from_be(a.sin6_port)),
        };
        write!(f, "SockAddr({af}, port {port})")
    }
}

/// `af` (an `AF_*` constant) as a `sa_family_t`.
pub fn family(af: libc::c_int) -> libc::sa_family_t {
    // Cannot fail: AF_INET (2) and AF_INET6 (10) fit in sa_family_t (u16).
    libc::sa_family_t::try_from(af).expect("address family fits sa_family_t")
}

/// The size of `T` as a `socklen_t`.
pub fn socklen_of<T>() -> libc::socklen_t {
    // Cannot fail: only socket structures of at most 128 bytes are passed.
    libc::socklen_t::try_from(std::mem::size_of::<T>()).expect("socket struct size fits socklen_t")
}

/// The IPv4 or IPv6 address the kernel wrote into `ss`; `None` for other
/// families. IPv6 flow info and scope are not kept.
pub fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY:
            // - The family says the storage holds a sockaddr_in.
            // - `sockaddr_storage` is larger than and aligned at least as
            //   strictly as `sockaddr_in`, and lives for the borrow.
            let a = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                a.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY:
            // - The family says the storage holds a sockaddr_in6.
            // - As above, for `sockaddr_in6`.
            let a = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((
                a.sin6_addr.s6_addr,
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    }
}

/// A zeroed `sockaddr_storage`, for the kernel to fill.
pub fn storage() -> libc::sockaddr_storage {
    // SAFETY:
    // - `sockaddr_storage` is a plain C struct of integers and padding; all
    //   zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// `addr` (port 0) as the `struct sockaddr` that `ifreq` and `rtentry` embed:
/// a `sockaddr_in` written into `sa_data` byte by byte (port, then address).
pub fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let mut sa = libc::sockaddr {
        sa_family: family(libc::AF_INET),
        sa_data: [0; 14],
    };
    // sockaddr_in: family (2 bytes), port (2, zero here), address (4, network order).
    for (dst, src) in sa.sa_data[2..6].iter_mut().zip(addr.octets()) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    sa
}

/// `mac` as the hardware address of `SIOCSIFHWADDR` (`ARPHRD_ETHER`).
pub fn sockaddr_hw(mac: [u8; 6]) -> libc::sockaddr {
    let mut sa = libc::sockaddr {
        sa_family: libc::ARPHRD_ETHER,
        sa_data: [0; 14],
    };
    for (dst, src) in sa.sa_data.iter_mut().zip(mac) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    sa
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv6Addr, SocketAddrV6};

    use super::*;

    /// Copies what `sa` points at into a storage, as the kernel would.
    fn round_trip(addr: SocketAddr) -> Option<SocketAddr> {
        let sa = SockAddr::new(&addr);
        let mut ss = storage();
        let len = usize::try_from(sa.len()).unwrap();
        assert!(len <= size_of_val(&ss));
        // SAFETY:
        // - `sa.as_ptr()` is valid for `len` bytes (its own doc) and `ss`
        //   has room for them (asserted); the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                sa.as_ptr().cast::<u8>(),
                std::ptr::from_mut(&mut ss).cast::<u8>(),
                len,
            );
        }
        from_storage(&ss)
    }

    #[test]
    fn socket_addrs_round_trip_through_the_kernel_layout() {
        let v4: SocketAddr = "192.168.33.15:8080".parse().unwrap();
        assert_eq!(round_trip(v4), Some(v4));
        let v6: SocketAddr = "[fd00:33::15]:53".parse().unwrap();
        assert_eq!(round_trip(v6), Some(v6));
        assert_eq!(SockAddr::new(&v4).len(), 16);
        assert_eq!(SockAddr::new(&v6).len(), 28);
        // Scope and flow info go to the kernel but do not come back.
        let scoped = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 1, 7, 3));
        assert_eq!(
            round_trip(scoped),
            Some(SocketAddr::from((Ipv6Addr::LOCALHOST, 1)))
        );
        assert_eq!(from_storage(&storage()), None);
    }

    #[test]
    fn bare_v4_sockaddr_matches_sockaddr_in() {
        let addr = Ipv4Addr::new(10, 0, 2, 15);
        let sa = sockaddr_v4(addr);
        let SockAddr::V4(sin) = SockAddr::new(&SocketAddr::from((addr, 0))) else {
            unreachable!()
        };
        // SAFETY:
        // - Both are 16-byte plain C structs without padding; their bytes
        //   are read for the comparison only.
        let (a, b) = unsafe {
            (
                std::mem::transmute::<libc::sockaddr, [u8; 16]>(sa),
                std::mem::transmute::<libc::sockaddr_in, [u8; 16]>(sin),
            )
        };
        assert_eq!(a, b);
        let hw = sockaddr_hw([0, 0x15, 0x15, 0x15, 0x15, 0xab]);
        assert_eq!(hw.sa_family, libc::ARPHRD_ETHER);
        assert_eq!(hw.sa_data[5].to_ne_bytes(), [0xab]);
    }
}
