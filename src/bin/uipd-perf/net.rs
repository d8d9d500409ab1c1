//! Bounded socket helpers shared by client and server.
//!
//! Every data socket gets [`TICK`] read and write timeouts, so no call blocks
//! longer than one tick; loops re-check their deadline (and a stop flag) on
//! each tick. That is what bounds a test against a dead or silent peer.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest single blocking socket call on a data socket.
pub const TICK: Duration = Duration::from_millis(100);

/// Whether `e` is a socket timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO` expiry).
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads `stop` (set by the control thread once the peer said `Done`).
pub fn stopped(stop: &AtomicBool) -> bool {
    // Relaxed: the flag only ends a loop; no other data is published with it.
    stop.load(Ordering::Relaxed)
}

/// Sets `TICK` timeouts and `TCP_NODELAY` on a data stream.
pub fn prep_stream(s: &TcpStream) -> io::Result<()> {
    s.set_read_timeout(Some(TICK))?;
    s.set_write_timeout(Some(TICK))?;
    s.set_nodelay(true)
}

/// Waits until `fd` is readable or `timeout` passes; `Ok(false)` on timeout.
pub fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY:
    // - `pfd` is a valid, initialised `pollfd` that outlives the call.
    // - `nfds` is 1, the number of entries behind the pointer.
    let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    match rc {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// Accepts one connection before `deadline`, giving up early once `stop` is
/// set. The listener must be non-blocking; the stream is prepared with
/// [`prep_stream`].
pub fn accept_until(
    l: &TcpListener,
    deadline: Instant,
    stop: Option<&AtomicBool>,
) -> io::Result<Option<TcpStream>> {
    loop {
        match l.accept() {
            Ok((s, _)) => {
                // Linux does not pass O_NONBLOCK on to accepted sockets, but
                // other kernels do; the data loops rely on blocking + TICK.
                s.set_nonblocking(false)?;
                prep_stream(&s)?;
                return Ok(Some(s));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A connection reset before accept: wait for the next one.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        if now >= deadline || stop.is_some_and(stopped) {
            return Ok(None);
        }
        wait_readable(l, TICK.min(deadline - now))?;
    }
}

/// How [`read_full`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    /// The buffer is full.
    Full,
    /// The peer closed before the first byte.
    Eof,
    /// The deadline passed, or `stop` was set while no data was arriving.
    Gave,
}

/// Fills `buf` from a [`prep_stream`]ed socket, ticking until `deadline`.
///
/// A close in the middle of the buffer is `UnexpectedEof`.
pub fn read_full(
    s: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    stop: Option<&AtomicBool>,
) -> io::Result<Fill> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(Fill::Eof),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed in the middle of a message",
                ));
            }
            Ok(n) => {
                got += n;
                continue;
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline || stop.is_some_and(stopped) {
            return Ok(Fill::Gave);
        }
    }
    Ok(Fill::Full)
}

/// Writes all of `buf`, ticking until `deadline`; a peer that stops
/// reading until then is `TimedOut`.
pub fn write_full(s: &mut TcpStream, buf: &[u8], deadline: Instant) -> io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        match s.write(&buf[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                off += n;
                continue;
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer stopped reading",
            ));
        }
    }
    Ok(())
}

/// Asks for a `bytes` receive buffer; the kernel caps it at `rmem_max`.
pub fn set_rcvbuf(fd: &impl AsRawFd, bytes: usize) {
    let Ok(val) = libc::c_int::try_from(bytes) else {
        return;
    };
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY:
    // - `fd` is an open socket borrowed for the duration of the call.
    // - `optval` points at a live `c_int` and `optlen` is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const val).cast(),
            len,
        )
    };
    if rc != 0 {
        log::debug!("SO_RCVBUF {bytes}: {}", io::Error::last_os_error());
    }
}

/// User and system CPU seconds used so far by this process.
pub fn cpu_times() -> (f64, f64) {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY:
    // - `ru` points at writable memory the size of a `rusage`.
    // - `RUSAGE_SELF` is a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return (0.0, 0.0);
    }
    // SAFETY:
    // - zero is a valid bit pattern for every field of `rusage`, and
    //   getrusage succeeded, so the value is fully initialised.
    let ru = unsafe { ru.assume_init() };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn accept_gives_up_at_deadline() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        let t0 = Instant::now();
        let got = accept_until(&l, t0 + Duration::from_millis(250), None).unwrap();
        assert!(got.is_none());
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn read_full_reports_eof_and_partial() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        prep_stream(&s).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        c.write_all(b"abcd").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            read_full(&mut s, &mut buf, deadline, None).unwrap(),
            Fill::Full
        );
        assert_eq!(&buf, b"abcd");
        c.write_all(b"xy").unwrap();
        drop(c);
        let e = read_full(&mut s, &mut buf, deadline, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            read_full(&mut s, &mut buf, deadline, None).unwrap(),
            Fill::Eof
        );
    }

    #[test]
    fn read_full_stops_on_flag() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        prep_stream(&s).unwrap();
        let stop = AtomicBool::new(true);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 4];
        let got = read_full(&mut s, &mut buf, deadline, Some(&stop)).unwrap();
        assert_eq!(got, Fill::Gave);
    }

    #[test]
    fn cpu_times_are_sane() {
        let (u, s) = cpu_times();
        assert!(u >= 0.0 && s >= 0.0);
    }
}
