//! Interface configuration through ioctls on an `AF_INET` socket: MTU, MAC,
//! up, IPv4 address and netmask, and the default route.
//!
//! The socket belongs to the network namespace that was current for the
//! calling thread when it was created, so whoever switches namespaces
//! creates a new [`IfSock`] afterwards. Interface names are checked by the
//! caller (`dataplane::tap::ifname_cstring`) and passed as C strings.

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::cvt;
use super::sockaddr::{sockaddr_hw, sockaddr_v4};

/// A zeroed `ifreq` naming interface `name` (at most `IFNAMSIZ` bytes with
/// its NUL; longer names are cut, so check them first).
pub fn ifreq(name: &CStr) -> libc::ifreq {
    // SAFETY:
    // - `ifreq` is a plain C struct (arrays, integers, a union of those and
    //   pointers); all-zero bytes are a valid value for every field.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.to_bytes_with_nul()) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    ifr
}

/// An `AF_INET` datagram socket used only as a handle for interface ioctls.
#[derive(Debug)]
pub struct IfSock(OwnedFd);

impl IfSock {
    /// A new handle in the calling thread's network namespace.
    pub fn new() -> io::Result<IfSock> {
        // SAFETY:
        // - Plain syscall with constant arguments; no pointers.
        let fd =
            cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY:
        // - `fd` was just returned by socket(2), is open, and is owned by nobody else.
        Ok(IfSock(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ifreq_ioctl(&self, req: libc::Ioctl, ifr: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY:
        // - `self.0` is an open socket owned by `self`.
        // - `req` is one of the SIOC*IF* requests, each of which reads and/or
        //   writes exactly one `struct ifreq`; `ifr` is a live, aligned,
        //   exclusively borrowed `ifreq` for the duration of the call.
        cvt(unsafe { libc::ioctl(self.0.as_raw_fd(), req, std::ptr::from_mut(ifr)) }).map(drop)
    }

    /// `SIOCSIFMTU`.
    pub fn set_mtu(&self, name: &CStr, mtu: u16) -> io::Result<()> {
        let mut ifr = ifreq(name);
        ifr.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
        self.ifreq_ioctl(libc::SIOCSIFMTU, &mut ifr)
    }

    /// `SIOCSIFHWADDR` with an Ethernet address.
    pub fn set_mac(&self, name: &CStr, mac: [u8; 6]) -> io::Result<()> {
        let mut ifr = ifreq(name);
        ifr.ifr_ifru.ifru_hwaddr = sockaddr_hw(mac);
        self.ifreq_ioctl(libc::SIOCSIFHWADDR, &mut ifr)
    }

    /// Adds `IFF_UP` to the interface's flags (`SIOCGIFFLAGS`, `SIOCSIFFLAGS`).
    pub fn set_up(&self, name: &CStr) -> io::Result<()> {
        let mut ifr = ifreq(name);
        self.ifreq_ioctl(libc::SIOCGIFFLAGS, &mut ifr)?;
        let up = libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
        // SAFETY:
        // - SIOCGIFFLAGS just filled the `ifru_flags` member of the union, and
        //   any bit pattern is a valid `c_short`.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | up;
        self.ifreq_ioctl(libc::SIOCSIFFLAGS, &mut ifr)
    }

    /// `SIOCSIFADDR` then `SIOCSIFNETMASK`.
    pub fn set_ipv4(&self, name: &CStr, addr: Ipv4Addr, mask: Ipv4Addr) -> io::Result<()> {
        let mut ifr = ifreq(name);
        ifr.ifr_ifru.ifru_addr = sockaddr_v4(addr);
        self.ifreq_ioctl(libc::SIOCSIFADDR, &mut ifr)?;
        // SIOCSIFADDR set the classful mask and its broadcast; the netmask ioctl
        // narrows or widens it and the kernel recomputes that broadcast.
        let mut ifr = ifreq(name);
        ifr.ifr_ifru.ifru_netmask = sockaddr_v4(mask);
        self.ifreq_ioctl(libc::SIOCSIFNETMASK, &mut ifr)
    }

    /// `SIOCADDRT`: the default route via `gateway` on interface `name`.
    pub fn add_default_route(&self, name: &CStr, gateway: Ipv4Addr) -> io::Result<()> {
        // SAFETY:
        // - `rtentry` is a plain C struct of integers, sockaddrs and one pointer;
        //   all-zero bytes are valid (a null `rt_dev` means "any device").
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr_v4(gateway);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        rt.rt_dev = name.as_ptr().cast_mut();
        // SAFETY:
        // - `self.0` is an open socket owned by `self`.
        // - SIOCADDRT reads one `struct rtentry`; `rt` is live and aligned for
        //   the call, and `rt.rt_dev` points to `name`, a NUL-terminated string
        //   that outlives the call and that the kernel only reads.
        cvt(unsafe { libc::ioctl(self.0.as_raw_fd(), libc::SIOCADDRT, &raw mut rt) }).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_names_the_interface() {
        let ifr = ifreq(c"eth0");
        let name: Vec<u8> = ifr.ifr_name.iter().map(|c| c.to_ne_bytes()[0]).collect();
        assert_eq!(&name[..5], b"eth0\0");
        assert!(name[5..].iter().all(|&b| b == 0));
    }

    #[test]
    fn loopback_can_be_looked_at() {
        // SIOCGIFFLAGS on lo needs no privilege; a missing interface is ENODEV.
        let sock = IfSock::new().unwrap();
        let mut ifr = ifreq(c"lo");
        sock.ifreq_ioctl(libc::SIOCGIFFLAGS, &mut ifr).unwrap();
        let mut ifr = ifreq(c"uipd-no-such0");
        let e = sock.ifreq_ioctl(libc::SIOCGIFFLAGS, &mut ifr).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
    }
}
