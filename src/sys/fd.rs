//! fds and fd passing: close-on-exec `SOCK_SEQPACKET` pairs, one message with
//! at most one `SCM_RIGHTS` fd each way, and a receive timeout.
//!
//! The namespace helper (`dataplane::netns`) and the `-T/-U auto` binder
//! (`nsauto`) speak to uipd over such pairs: message boundaries are kept, so
//! one record is one message, and an fd travels with the record it belongs
//! to. Every fd received is close-on-exec (`MSG_CMSG_CLOEXEC`) and owned once.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A close-on-exec `SOCK_SEQPACKET` UNIX socket pair.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY:
    // - `fds` is a live, writable array of two ints, as socketpair(2) requires.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY:
    // - socketpair succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message, with `fd` attached as `SCM_RIGHTS` if given.
pub fn send_msg(sock: BorrowedFd<'_>, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    // u64 elements give the control buffer the alignment of `cmsghdr`.
    let mut cbuf = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY:
    // - `msghdr` is a plain C struct; all-zero bytes are valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        let fd_len = libc::c_uint::try_from(size_of::<RawFd>()).unwrap_or(4);
        // SAFETY:
        // - CMSG_SPACE/CMSG_LEN only compute sizes from their argument.
        let (space, len) = unsafe { (libc::CMSG_SPACE(fd_len), libc::CMSG_LEN(fd_len)) };
        let space = usize::try_from(space).unwrap_or(usize::MAX);
        assert!(space <= size_of_val(&cbuf), "control buffer too small");
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY:
        // - `msg.msg_control` points to `cbuf`, which is 8-byte aligned, zeroed,
        //   and at least CMSG_SPACE(sizeof(int)) bytes long (asserted above), so
        //   CMSG_FIRSTHDR returns a non-null header inside it and CMSG_DATA
        //   points to `sizeof(int)` writable bytes inside it.
        // - The data pointer may be unaligned for `i32`; `write_unaligned` is used.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = usize::try_from(len).unwrap_or(usize::MAX);
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        }
    }
    loop {
        // SAFETY:
        // - `sock` is an open socket borrowed for the call.
        // - `msg` points to `iov` (over `data`) and, if set, to `cbuf`, all live
        //   for the call; sendmsg only reads them.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Receives one message into `buf`; returns its length (0 = peer closed) and the
/// fd that came with it, if any (received close-on-exec).
///
/// A truncated message or control part, or more than one fd, is
/// `InvalidData` (the extra fds are closed).
pub fn recv_msg(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut cbuf = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY:
    // - `msghdr` is a plain C struct; all-zero bytes are valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&cbuf);
    let n = loop {
        // SAFETY:
        // - `sock` is an open socket borrowed for the call.
        // - `msg` points to `iov` (over `buf`, exclusively borrowed) and `cbuf`,
        //   both live and writable for the call with the lengths given.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        if let Ok(n) = usize::try_from(n) {
            break n;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    let mut fds = Vec::new();
    // SAFETY:
    // - `msg` was filled by a successful recvmsg: `msg_control`/`msg_controllen`
    //   describe the valid part of `cbuf`, so CMSG_FIRSTHDR/CMSG_NXTHDR walk only
    //   headers inside it and return null at its end.
    // - For an SCM_RIGHTS header, the kernel wrote `(cmsg_len - CMSG_LEN(0)) / 4`
    //   fds after CMSG_DATA; they are read unaligned and each is a new fd that
    //   this process now owns exactly once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let header = usize::try_from(libc::CMSG_LEN(0)).unwrap_or(usize::MAX);
                let count = (*cmsg).cmsg_len.saturating_sub(header) / size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "control data truncated",
        ));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message truncated",
        ));
    }
    // More than one fd is a protocol error; the extra OwnedFds are closed on drop.
    if fds.len() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more than one fd received",
        ));
    }
    Ok((n, fds.pop()))
}

/// `SO_RCVTIMEO`: a blocking receive on `sock` fails with `EAGAIN` after
/// `timeout` (rounded down to microseconds; zero means no timeout).
pub fn set_recv_timeout(sock: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    let len = libc::socklen_t::try_from(size_of::<libc::timeval>()).unwrap_or(16);
    // SAFETY:
    // - `sock` is an open socket; SO_RCVTIMEO reads one `timeval` of `len`
    //   bytes from `tv`, which is live for the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            len,
        )
    };
    super::cvt(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn fd_passing_over_a_socketpair() {
        let (a, b) = socketpair().unwrap();
        let (x, _y) = socketpair().unwrap();
        send_msg(a.as_fd(), b"hi", Some(x.as_fd())).unwrap();
        let mut buf = [0u8; 16];
        let (n, fd) = recv_msg(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert!(fd.is_some());
        drop(a);
        assert_eq!(recv_msg(b.as_fd(), &mut buf).unwrap().0, 0);
    }

    #[test]
    fn receive_timeout_and_truncation_are_errors() {
        let (a, b) = socketpair().unwrap();
        set_recv_timeout(b.as_fd(), Duration::from_millis(20)).unwrap();
        let mut buf = [0u8; 2];
        let e = recv_msg(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        send_msg(a.as_fd(), b"too long", None).unwrap();
        let e = recv_msg(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
