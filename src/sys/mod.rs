//! Raw system-call wrappers that several modules share: socket addresses,
//! sockets, fds and fd passing, namespaces and the parent-death signal, interface
//! ioctls and eventfds.
//!
//! # Theory of Operation
//!
//! This is the one place for small `libc` wrappers that more than one module
//! needs. Each wrapper is safe to call: every pointer it hands the kernel is
//! to memory borrowed for the call only, every fd it returns is an
//! [`OwnedFd`](std::os::fd::OwnedFd) owned by exactly one value, and each
//! `unsafe` block says which invariants make it sound. Wrappers that only one
//! module needs stay in that module (io_uring's SQE set-up in
//! `dataplane::uring`, the seccomp filters in `sandbox`, KVM in `vmm`).
//!
//! ```text
//!   sockaddr  SocketAddr <-> (sockaddr *, socklen_t); v4 sockaddrs for ifreq/rtentry
//!   sock      socket, bind, setsockopt, sendto, getpeername (errno results)
//!   fd        SOCK_SEQPACKET pairs, one message + SCM_RIGHTS fd, SO_RCVTIMEO
//!   process   unshare, setns, / made rprivate, PR_SET_PDEATHSIG
//!   ioctl     SIOCSIF* / SIOCADDRT on an AF_INET socket (IfSock)
//!   eventfd   vmm-sys-util's EventFd: the one eventfd type, with a wake-up API
//! ```
//!
//! Errors are `io::Error`s from `errno`; callers add what they were doing.

pub mod eventfd;
pub mod fd;
pub mod ioctl;
pub mod process;
pub mod sock;
pub mod sockaddr;

use std::io;

/// `rc < 0` as the call's `errno`, else `rc`: the usual shape of a libc call.
pub fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
