//! The system calls of the epoll executor, each behind a safe wrapper:
//! every pointer handed to the kernel is to memory borrowed for the call
//! only (nothing outlives a call, unlike an io_uring SQE), so each wrapper
//! is sound on its own and the executor above it is safe code.
//!
//! Every socket call is non-blocking (`MSG_DONTWAIT` or an `O_NONBLOCK`
//! fd): `EAGAIN` is an answer, never a wait.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::dataplane::sock::{last_errno, socklen_of, to_socket_addr};
use crate::stack::ops::Errno;
use crate::sys::sockaddr::SockAddr;

/// Most messages one `sendmmsg`/`recvmmsg` moves.
pub(super) const MMSG_BATCH: usize = 32;

fn ret(r: libc::c_int) -> Result<(), Errno> {
    if r < 0 { Err(last_errno()) } else { Ok(()) }
}

fn ret_len(n: isize) -> Result<usize, Errno> {
    usize::try_from(n).map_err(|_| last_errno())
}

/// A new close-on-exec epoll instance.
pub(super) fn epoll_create() -> std::io::Result<OwnedFd> {
    // SAFETY: epoll_create1 takes no pointers; a negative return is an error.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by epoll_create1; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `epoll_ctl(op)` of `fd` with `events` and `token` as its user data.
pub(super) fn epoll_ctl(
    ep: &OwnedFd,
    op: libc::c_int,
    fd: RawFd,
    events: u32,
    token: u64,
) -> Result<(), Errno> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY:
    // - `ep` is an open epoll fd, borrowed for the call;
    // - `ev` is a live epoll_event the kernel only reads during the call.
    ret(unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd, &raw mut ev) })
}

/// Wait up to `timeout_ms` (-1: forever) for events into `buf`'s whole
/// capacity; `buf` then holds them. `EINTR` is no events.
pub(super) fn epoll_wait(
    ep: &OwnedFd,
    buf: &mut Vec<libc::epoll_event>,
    timeout_ms: libc::c_int,
) -> Result<(), Errno> {
    buf.clear();
    let cap = libc::c_int::try_from(buf.capacity()).unwrap_or(libc::c_int::MAX);
    // SAFETY:
    // - `ep` is an open epoll fd, borrowed for the call;
    // - the kernel writes at most `cap` (the capacity) events at the start
    //   of `buf`'s allocation, which is live and not aliased for the call.
    let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), buf.as_mut_ptr(), cap, timeout_ms) };
    if n < 0 {
        let e = last_errno();
        return if e == libc::EINTR { Ok(()) } else { Err(e) };
    }
    let n = usize::try_from(n).unwrap_or(0).min(buf.capacity());
    // SAFETY: the kernel initialised the first `n` events (at most the
    // capacity); epoll_event is plain data.
    unsafe { buf.set_len(n) };
    Ok(())
}

/// `epoll_pwait2`: wait up to `timeout` (nanosecond resolution) for
/// events into `buf`'s whole capacity, as [`epoll_wait`] does. Called as a
/// raw system call (glibc has a wrapper only since 2.35); `ENOSYS` (a
/// kernel before 5.11) or `EPERM` (a seccomp profile that lacks it) tell
/// the caller to use [`epoll_wait`].
pub(super) fn epoll_pwait2(
    ep: &OwnedFd,
    buf: &mut Vec<libc::epoll_event>,
    timeout: std::time::Duration,
) -> Result<(), Errno> {
    buf.clear();
    let cap = libc::c_int::try_from(buf.capacity()).unwrap_or(libc::c_int::MAX);
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos().min(999_999_999)),
    };
    // SAFETY:
    // - `ep` is an open epoll fd, borrowed for the call;
    // - the kernel writes at most `cap` (the capacity) events at the start
    //   of `buf`'s live, unaliased allocation, and only reads `ts`;
    // - a null signal mask means none (its size is then not read).
    let n = unsafe {
        libc::syscall(
            libc::SYS_epoll_pwait2,
            ep.as_raw_fd(),
            buf.as_mut_ptr(),
            cap,
            &raw const ts,
            std::ptr::null::<libc::sigset_t>(),
            0usize,
        )
    };
    if n < 0 {
        let e = last_errno();
        return if e == libc::EINTR { Ok(()) } else { Err(e) };
    }
    let n = usize::try_from(n).unwrap_or(0).min(buf.capacity());
    // SAFETY: the kernel initialised the first `n` events (at most the
    // capacity); epoll_event is plain data.
    unsafe { buf.set_len(n) };
    Ok(())
}

/// Non-blocking `connect` of `fd` to `dst`: `Ok` when connected at once,
/// `Err(EINPROGRESS)` while a stream connect goes on.
pub(super) fn connect(fd: &OwnedFd, dst: &SocketAddr) -> Result<(), Errno> {
    let sa = SockAddr::new(dst);
    // SAFETY: `sa` is a live sockaddr of `sa.len()` bytes that the kernel
    // only reads during the call; `fd` is an open socket, borrowed.
    ret(unsafe { libc::connect(fd.as_raw_fd(), sa.as_ptr(), sa.len()) })
}

/// The socket's pending error (`SO_ERROR`, which reading clears); 0: none.
pub(super) fn so_error(fd: &OwnedFd) -> Errno {
    let mut err: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: `err` and `len` are live for the call and `len` is `err`'s
    // size, which the kernel does not exceed; `fd` is borrowed.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            std::ptr::from_mut(&mut err).cast(),
            &raw mut len,
        )
    };
    if r < 0 { last_errno() } else { err }
}

/// `fcntl(F_SETFL, O_NONBLOCK)`.
pub(super) fn set_nonblocking(fd: RawFd) -> Result<(), Errno> {
    // SAFETY: fcntl(F_GETFL) on the caller's open fd takes no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(last_errno());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: as above; F_SETFL takes an int.
    ret(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })
}

/// `shutdown(how)`.
pub(super) fn shutdown(fd: RawFd, how: libc::c_int) -> Result<(), Errno> {
    // SAFETY: shutdown(2) on the caller's open fd takes no pointers.
    ret(unsafe { libc::shutdown(fd, how) })
}

/// One non-blocking `send` of `data`.
pub(super) fn send(fd: RawFd, data: &[u8]) -> Result<usize, Errno> {
    // SAFETY: `data` is live and borrowed for the call, and its length is
    // the one passed; the kernel only reads it.
    ret_len(unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

/// One `write` of `data` (a frame to a TAP queue), retried on `EINTR`.
pub(super) fn write(fd: RawFd, data: &[u8]) -> Result<usize, Errno> {
    loop {
        // SAFETY: `data` is live and borrowed for the call, its length is
        // the one passed; the kernel only reads it.
        match ret_len(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) }) {
            Err(libc::EINTR) => {}
            r => return r,
        }
    }
}

/// One non-blocking `recv` of at most `max` bytes into `buf` (cleared
/// first; reserved to `max`); on success `buf` holds them.
pub(super) fn recv(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> Result<usize, Errno> {
    buf.clear();
    buf.reserve(max);
    // SAFETY: the kernel writes at most `max` bytes (within the capacity
    // just reserved) at the start of `buf`'s live, unaliased allocation.
    let n = ret_len(unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            max.min(buf.capacity()),
            libc::MSG_DONTWAIT,
        )
    })?;
    let n = n.min(buf.capacity());
    // SAFETY: the kernel initialised the first `n` bytes (at most the
    // capacity); u8 has no invalid bit patterns.
    unsafe { buf.set_len(n) };
    Ok(n)
}

/// Read an eventfd's counter (non-blocking fd).
pub(super) fn read_eventfd(fd: RawFd) -> Result<(), Errno> {
    let mut v: u64 = 0;
    // SAFETY: the kernel writes at most 8 bytes into the live `v`.
    ret_len(unsafe { libc::read(fd, (&raw mut v).cast(), 8) }).map(|_| ())
}

/// `accept4`: a non-blocking, close-on-exec connection, and its peer.
pub(super) fn accept(fd: RawFd) -> Result<(OwnedFd, Option<SocketAddr>), Errno> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = socklen_of::<libc::sockaddr_storage>();
    // SAFETY: the kernel writes at most `len` (the storage's size) bytes
    // into the live `ss`; `fd` is the caller's open listener.
    let c = unsafe {
        libc::accept4(
            fd,
            std::ptr::from_mut(&mut ss).cast(),
            &raw mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if c < 0 {
        return Err(last_errno());
    }
    // SAFETY: `c` is the new connection's fd, which nothing else owns.
    let c = unsafe { OwnedFd::from_raw_fd(c) };
    Ok((c, to_socket_addr(&ss)))
}

/// `sendmmsg` of up to [`MMSG_BATCH`] datagrams of `bufs` (on a connected
/// socket): how many the kernel took, from the first. An error is the
/// first datagram's (none was sent).
pub(super) fn send_batch<'a>(
    fd: RawFd,
    bufs: impl Iterator<Item = &'a [u8]>,
) -> Result<usize, Errno> {
    // SAFETY: all-zero is a valid iovec (null, 0) and a valid mmsghdr (no
    // name, no iovecs, no control data).
    let mut iov: [libc::iovec; MMSG_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MMSG_BATCH] = unsafe { std::mem::zeroed() };
    let mut n = 0;
    for (b, (v, h)) in bufs.zip(iov.iter_mut().zip(hdrs.iter_mut())) {
        v.iov_base = b.as_ptr().cast_mut().cast();
        v.iov_len = b.len();
        h.msg_hdr.msg_iov = std::ptr::from_mut(v);
        h.msg_hdr.msg_iovlen = 1;
        n += 1;
    }
    mmsg(n, |vlen| {
        // SAFETY:
        // - the first `n` headers each point to one iovec of `iov`, which
        //   points to a datagram borrowed from `bufs` for the whole call
        //   (the iterator's items outlive it: `'a`);
        // - the kernel reads those and writes only the headers' `msg_len`.
        unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                vlen,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        }
    })
}

/// Run one `sendmmsg`/`recvmmsg` over the first `n` headers (`call` gets
/// `n` as its `vlen`): how many messages it handled, or its errno. No call
/// at all for `n` 0.
fn mmsg(n: usize, call: impl FnOnce(libc::c_uint) -> libc::c_int) -> Result<usize, Errno> {
    if n == 0 {
        return Ok(0);
    }
    // Cannot fail: n <= MMSG_BATCH (32).
    let vlen = libc::c_uint::try_from(n).unwrap_or(0);
    let r = call(vlen);
    if r < 0 {
        return Err(last_errno());
    }
    Ok(usize::try_from(r).unwrap_or(0))
}

/// `recvmmsg` of up to `bufs.len()` (at most [`MMSG_BATCH`]) datagrams,
/// each into one buffer of `bufs` (cleared; filled up to its capacity,
/// which holds the largest datagram). With `peers`, each datagram's
/// source is stored at its index. Returns how many arrived.
pub(super) fn recv_batch(
    fd: RawFd,
    bufs: &mut [Vec<u8>],
    mut peers: Option<&mut [Option<SocketAddr>]>,
) -> Result<usize, Errno> {
    let n = bufs.len().min(MMSG_BATCH);
    // SAFETY: all-zero is a valid iovec, mmsghdr and sockaddr_storage.
    let mut iov: [libc::iovec; MMSG_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MMSG_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut names: [libc::sockaddr_storage; MMSG_BATCH] = unsafe { std::mem::zeroed() };
    let want_names = peers.is_some();
    for i in 0..n {
        bufs[i].clear();
        iov[i].iov_base = bufs[i].as_mut_ptr().cast();
        iov[i].iov_len = bufs[i].capacity();
        hdrs[i].msg_hdr.msg_iov = &raw mut iov[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        if want_names {
            hdrs[i].msg_hdr.msg_name = (&raw mut names[i]).cast();
            hdrs[i].msg_hdr.msg_namelen = socklen_of::<libc::sockaddr_storage>();
        }
    }
    let got = mmsg(n, |vlen| {
        // SAFETY:
        // - each of the first `n` headers points to one iovec over the spare
        //   capacity of one buffer of `bufs` (live, borrowed mutably, so not
        //   aliased) and, with names, to one sockaddr_storage of `names`
        //   with its size as `msg_namelen`;
        // - the kernel writes at most each iovec's length and each name's
        //   size, and the headers' lengths and flags; no timeout is passed.
        unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                vlen,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        }
    })?
    .min(n);
    for i in 0..got {
        let len = usize::try_from(hdrs[i].msg_len)
            .unwrap_or(0)
            .min(bufs[i].capacity());
        // SAFETY: the kernel initialised the first `msg_len` bytes of this
        // buffer (clamped to its capacity); u8 has no invalid bit patterns.
        unsafe { bufs[i].set_len(len) };
        if let Some(p) = peers.as_deref_mut()
            && let Some(slot) = p.get_mut(i)
        {
            *slot = to_socket_addr(&names[i]);
        }
    }
    Ok(got)
}
