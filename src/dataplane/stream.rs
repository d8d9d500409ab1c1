//! The stream frontend: QEMU's `-netdev stream` protocol on a UNIX socket.
//!
//! Each Ethernet frame travels as a 4-byte big-endian length followed by
//! the frame, both ways (the framing passt speaks, so
//! `-netdev stream,id=n0,server=off,addr.type=unix,addr.path=SOCKET`
//! works). uipd listens; one VMM is served at a time, and when it goes away
//! every host socket of its guest is reset and the next connection is
//! accepted (or, one-off, uipd ends). It can also serve one connection it
//! was handed, already connected (passt's `--fd N`, the other end of a
//! socketpair QEMU holds), and ends with it.
//!
//! ```text
//!  VMM ──socket──► reader thread ──steer by 5-tuple──► worker k inbox ──► Stack k
//!  VMM ◄──socket── StreamOut (one shared, bounded, non-blocking queue) ◄── StreamSink of each worker
//! ```
//!
//! Both directions are bounded. Toward the workers, a full inbox stops the
//! reader, so the socket fills and the VMM stops sending (no frame is
//! dropped). Toward the VMM, frames wait in one byte queue shared by all
//! workers (so frames from different workers never interleave mid-frame)
//! and are written without blocking; past [`OUT_QUEUE_MAX`] bytes new frames
//! are dropped and counted, as a full NIC queue would drop them.
//!
//! Bad input closes the connection with a clear log line: a length under an
//! Ethernet header or over [`MAX_FRAME`], or a frame cut short by the end of
//! the stream. Nothing else is affected.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::dataplane::worker::{FrameSink, WorkerCounters};
use crate::rings::{Frame, FrameRing};
use crate::stack::steer::{self, Steer};

/// The longest frame either way: a 64 KiB IPv4 packet plus an Ethernet
/// header with a VLAN tag.
pub const MAX_FRAME: usize = 65535 + 18;
/// The shortest: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Bytes of frames toward the VMM that may wait for the socket.
pub const OUT_QUEUE_MAX: usize = 4 << 20;
/// How long the reader waits for a full inbox before looking at the stop
/// flag again.
const PUSH_WAIT: Duration = Duration::from_millis(50);
/// Reader poll timeout: how quickly a stop is noticed.
const POLL_MS: libc::c_int = 100;

/// Errors of the stream protocol (the connection is closed on each).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A length outside [`MIN_FRAME`]..=[`MAX_FRAME`].
    #[error("frame length {0} is outside {MIN_FRAME}..={MAX_FRAME}")]
    BadLength(usize),
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame ({have} of {want} bytes)")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the length announced (with the 4-byte length).
        want: usize,
    },
}

/// Splits a byte stream into frames.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
    start: usize,
}

impl Deframer {
    /// Append bytes read from the stream.
    pub fn extend(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, ProtocolError> {
        let rest = &self.buf[self.start..];
        let Some(len_bytes) = rest.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = usize::try_from(u32::from_be_bytes(*len_bytes)).unwrap_or(usize::MAX);
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
            return Err(ProtocolError::BadLength(len));
        }
        if rest.len() < 4 + len {
            return Ok(None);
        }
        let at = self.start + 4;
        self.start = at + len;
        Ok(Some(&self.buf[at..at + len]))
    }

    /// The stream ended: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        let have = self.buf.len() - self.start;
        if have == 0 {
            return Ok(());
        }
        let want = match self.buf[self.start..].first_chunk::<4>() {
            Some(b) => 4 + usize::try_from(u32::from_be_bytes(*b)).unwrap_or(usize::MAX),
            None => 4,
        };
        Err(ProtocolError::Truncated { have, want })
    }
}

/// Bind the listening socket. A stale socket file (nobody listening) is
/// replaced; a live one, or a path that is not a socket, is an error.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by another process", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// The connection's sending side, shared by every worker's sink.
#[derive(Default)]
pub struct StreamOut {
    inner: Mutex<OutInner>,
    /// Frames dropped because no VMM was connected.
    pub unconnected_drops: AtomicU64,
}

#[derive(Default)]
struct OutInner {
    conn: Option<UnixStream>,
    /// Length-prefixed frames not yet written; `queue[off..]` is pending.
    queue: Vec<u8>,
    off: usize,
}

impl OutInner {
    /// Write as much as the socket takes; Err when the connection broke.
    fn write_some(&mut self) -> io::Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        while self.off < self.queue.len() {
            match conn.write(&self.queue[self.off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.off == self.queue.len() {
            self.queue.clear();
            self.off = 0;
        } else if self.off > OUT_QUEUE_MAX {
            self.queue.drain(..self.off);
            self.off = 0;
        }
        Ok(())
    }

    fn pending(&self) -> usize {
        self.queue.len() - self.off
    }
}

impl StreamOut {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new VMM connection: frames go to it from now on.
    pub fn connect(&self, conn: UnixStream) {
        let mut g = self.lock();
        g.conn = Some(conn);
        g.queue.clear();
        g.off = 0;
    }

    /// The VMM went away: drop what waits for it.
    pub fn disconnect(&self) {
        let mut g = self.lock();
        g.conn = None;
        g.queue = Vec::new();
        g.off = 0;
    }

    /// Queue `frames` (drained) and write what the socket takes now.
    /// Returns true while bytes still wait.
    fn send(&self, frames: &mut Vec<Vec<u8>>, skip: usize, c: &mut WorkerCounters) -> bool {
        let mut g = self.lock();
        if g.conn.is_none() {
            let n = frames.len() as u64;
            frames.clear();
            c.port_drops += n;
            self.unconnected_drops.fetch_add(n, Ordering::Relaxed);
            return false;
        }
        for f in frames.drain(..) {
            let eth = f.get(skip..).unwrap_or_default();
            if eth.len() > MAX_FRAME || g.pending() + 4 + eth.len() > OUT_QUEUE_MAX {
                c.port_drops += 1;
                continue;
            }
            // Cannot truncate: MAX_FRAME fits in u32.
            let len = u32::try_from(eth.len()).unwrap_or(u32::MAX);
            g.queue.extend_from_slice(&len.to_be_bytes());
            g.queue.extend_from_slice(eth);
            c.port_writes += 1;
        }
        if let Err(e) = g.write_some() {
            log::warn!("stream: writing to the VMM: {e}; closing the connection");
            c.port_errors += 1;
            if let Some(conn) = g.conn.take() {
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
            g.queue.clear();
            g.off = 0;
        }
        g.pending() > 0
    }
}

/// One worker's way to the VMM.
pub struct StreamSink {
    out: Arc<StreamOut>,
    /// Bytes of virtio-net header in front of each stack frame (stripped:
    /// the stream carries bare Ethernet frames).
    skip: usize,
    waiting: bool,
}

impl StreamSink {
    /// A sink writing to `out`; stack frames start with `skip` header bytes.
    pub fn new(out: Arc<StreamOut>, skip: usize) -> StreamSink {
        StreamSink {
            out,
            skip,
            waiting: false,
        }
    }
}

impl FrameSink for StreamSink {
    fn send(&mut self, frames: &mut Vec<Vec<u8>>, counters: &mut WorkerCounters) {
        self.waiting = self.out.send(frames, self.skip, counters);
    }

    fn flush(&mut self, counters: &mut WorkerCounters) -> bool {
        if self.waiting {
            self.waiting = self.out.send(&mut Vec::new(), self.skip, counters);
        }
        self.waiting
    }
}

/// Counters of the reader thread.
#[derive(Debug, Default)]
pub struct ReaderCounters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Frames read and handed to workers.
    pub frames: AtomicU64,
    /// Connections closed for a protocol error.
    pub protocol_errors: AtomicU64,
    /// Times a worker's inbox was full.
    pub ring_full: AtomicU64,
}

/// Where the VMM's connections come from.
pub enum Source {
    /// A listening socket at `path` (removed at the end); with `one_off`,
    /// only its first connection is served.
    Listener {
        /// The socket.
        listener: UnixListener,
        /// Its path.
        path: PathBuf,
        /// Serve one connection, then end.
        one_off: bool,
    },
    /// One connection, already made.
    Connected(UnixStream),
}

/// The accepting and reading side: runs on its own thread.
pub struct StreamPort {
    /// Where connections come from.
    pub source: Source,
    /// What reads them.
    pub reader: Reader,
}

/// Reads a VMM's connection into the workers' inboxes.
pub struct Reader {
    /// The workers' inboxes.
    pub inboxes: Vec<Arc<FrameRing>>,
    /// The shared sending side.
    pub out: Arc<StreamOut>,
    /// Bytes of zeroed virtio-net header to put in front of each frame for
    /// the stack (0 when the stack runs without one).
    pub vnet_hdr: usize,
    /// Stop flag.
    pub stop: Arc<AtomicBool>,
    /// Raised when a connection ended: the daemon resets every flow.
    pub disconnected: Arc<AtomicBool>,
    /// Counters.
    pub counters: Arc<ReaderCounters>,
}

/// Wait until `fd` is readable or `POLL_MS` passed.
fn wait_readable(fd: std::os::fd::RawFd) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd that lives across the call.
    let n = unsafe { libc::poll(&raw mut p, 1, POLL_MS) };
    match n {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

impl StreamPort {
    /// Serve VMM connections, one at a time, until the stop flag (or the
    /// end of a one-off or handed-over connection: then the thread ends).
    pub fn run(self) {
        self.reader.run(self.source);
    }
}

impl Reader {
    fn run(&self, source: Source) {
        let (listener, path, one_off) = match source {
            Source::Connected(conn) => {
                self.counters.connections.fetch_add(1, Ordering::Relaxed);
                log::info!("stream: serving the connection handed over");
                self.serve_one(conn);
                return;
            }
            Source::Listener {
                listener,
                path,
                one_off,
            } => (listener, path, one_off),
        };
        if let Err(e) = listener.set_nonblocking(true) {
            log::error!("stream: {e}");
            return;
        }
        while !self.stop.load(Ordering::Relaxed) {
            match wait_readable(listener.as_raw_fd()) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    log::error!("stream: waiting for a connection: {e}");
                    break;
                }
            }
            let conn = match listener.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    log::warn!("stream: accept: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            self.counters.connections.fetch_add(1, Ordering::Relaxed);
            log::info!("stream: VMM connected to {}", path.display());
            self.serve_one(conn);
            if one_off {
                log::info!("stream: one-off: done after the first VMM");
                break;
            }
        }
        let _ = std::fs::remove_file(&path);
    }

    /// Serve `conn` to its end; then the guest's flows are reset.
    fn serve_one(&self, conn: UnixStream) {
        match self.serve(conn) {
            Ok(()) => log::info!("stream: VMM disconnected"),
            Err(e) => log::warn!("stream: connection closed: {e}"),
        }
        self.out.disconnect();
        self.disconnected.store(true, Ordering::SeqCst);
        self.inboxes.iter().for_each(|r| r.kick());
    }

    fn serve(&self, conn: UnixStream) -> io::Result<()> {
        conn.set_nonblocking(true)?;
        self.out.connect(conn.try_clone()?);
        let mut reader = conn;
        let mut deframer = Deframer::default();
        let mut chunk = vec![0u8; 256 << 10];
        let workers = self.inboxes.len();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let n = match reader.read(&mut chunk) {
                Ok(0) => {
                    return deframer
                        .finish()
                        .map_err(|e| self.protocol_error(&reader, e));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_readable(reader.as_raw_fd())?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            deframer.extend(&chunk[..n]);
            loop {
                let eth = match deframer.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return Err(self.protocol_error(&reader, e)),
                };
                let w = match steer::frame_owner(eth, workers) {
                    Steer::Worker(w) => w.min(workers - 1),
                    Steer::Any => 0,
                };
                let ring = &self.inboxes[w];
                let mut buf = ring.get_buf();
                let len = self.vnet_hdr + eth.len();
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                buf[..self.vnet_hdr].fill(0);
                buf[self.vnet_hdr..len].copy_from_slice(eth);
                let mut frame = Frame { buf, len };
                let mut counted = false;
                // A full inbox holds the reader (and so the VMM) back.
                loop {
                    match ring.push_wait(frame, PUSH_WAIT) {
                        Ok(()) => break,
                        Err(f) => frame = f,
                    }
                    if !counted {
                        self.counters.ring_full.fetch_add(1, Ordering::Relaxed);
                        counted = true;
                    }
                    if self.stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                }
                self.counters.frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn protocol_error(&self, conn: &UnixStream, e: ProtocolError) -> io::Error {
        self.counters
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        let _ = conn.shutdown(std::net::Shutdown::Both);
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in frames {
            v.extend_from_slice(&u32::try_from(f.len()).unwrap().to_be_bytes());
            v.extend_from_slice(f);
        }
        v
    }

    #[test]
    fn deframes_across_arbitrary_splits() {
        let a = vec![1u8; 60];
        let b = vec![2u8; 1514];
        let c = vec![3u8; MAX_FRAME];
        let stream = framed(&[&a, &b, &c]);
        for step in [1, 3, 4, 5, 999, stream.len()] {
            let mut d = Deframer::default();
            let mut got = Vec::new();
            for piece in stream.chunks(step) {
                d.extend(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, vec![a.clone(), b.clone(), c.clone()], "step {step}");
            assert_eq!(d.finish(), Ok(()));
        }
    }

    #[test]
    fn rejects_bad_lengths_and_truncation() {
        let mut d = Deframer::default();
        d.extend(&u32::try_from(MAX_FRAME + 1).unwrap().to_be_bytes());
        assert_eq!(d.next_frame(), Err(ProtocolError::BadLength(MAX_FRAME + 1)));
        let mut d = Deframer::default();
        d.extend(&13u32.to_be_bytes());
        assert_eq!(d.next_frame(), Err(ProtocolError::BadLength(13)));
        let mut d = Deframer::default();
        d.extend(&u32::MAX.to_be_bytes());
        assert!(d.next_frame().is_err());
        let mut d = Deframer::default();
        d.extend(&framed(&[&[7u8; 100]])[..50]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(
            d.finish(),
            Err(ProtocolError::Truncated {
                have: 50,
                want: 104
            })
        );
        let mut d = Deframer::default();
        d.extend(&[0, 0]);
        assert_eq!(
            d.finish(),
            Err(ProtocolError::Truncated { have: 2, want: 4 })
        );
    }

    #[test]
    fn bind_replaces_stale_socket_and_refuses_live_or_non_socket() {
        let dir = std::env::temp_dir().join(format!("uipd-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s");
        let l = bind(&p).unwrap();
        let e = bind(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        drop(l);
        // Stale: the file stays after the listener is gone.
        assert!(p.exists());
        let l = bind(&p).unwrap();
        drop(l);
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"x").unwrap();
        let e = bind(&p).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sink_keeps_framing_when_the_socket_is_full_and_drops_past_the_bound() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let out = Arc::new(StreamOut::default());
        out.connect(a);
        let mut sink = StreamSink::new(out.clone(), 12);
        let mut c = WorkerCounters::default();
        // 12 header bytes + a 60000-byte frame, many times: far more than
        // the socket buffer, and more than OUT_QUEUE_MAX.
        let n = OUT_QUEUE_MAX / 60000 + 40;
        let mut frames: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let mut f = vec![0u8; 12 + 60000];
                f[12..].fill(u8::try_from(i % 251).unwrap());
                f
            })
            .collect();
        sink.send(&mut frames, &mut c);
        assert!(frames.is_empty());
        assert!(c.port_drops > 0, "{c:?}");
        assert_eq!(c.port_writes + c.port_drops, n as u64);
        // Read everything back while flushing: whole frames, in order.
        b.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut d = Deframer::default();
        let mut got = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        for _ in 0..10_000 {
            let waiting = sink.flush(&mut c);
            match b.read(&mut buf) {
                Ok(k) if k > 0 => d.extend(&buf[..k]),
                _ if !waiting => break,
                _ => {}
            }
            while let Some(f) = d.next_frame().unwrap() {
                assert_eq!(f.len(), 60000);
                assert_eq!(f[0], u8::try_from(got % 251).unwrap());
                got += 1;
            }
        }
        assert_eq!(got, c.port_writes);
        assert_eq!(c.port_errors, 0);
    }
}
