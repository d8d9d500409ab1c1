//! Stream mode (`--socket PATH`, passt's `--fd N`): QEMU's `-netdev
//! stream` protocol ([`crate::dataplane::stream`]). A reader thread steers
//! the guest's frames to the workers' inboxes by flow hash; every worker
//! writes to the one connection. When the VMM goes away, every worker
//! resets its flows and the next connection starts clean.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::forwards::Publish;
use super::workers::{Port, Workers};
use super::{Config, Error, Frontend, Serving, inboxes, install_signals, io_err, serve};
use crate::dataplane::stream::{self, Source, StreamOut, StreamPort, StreamSink};
use crate::dataplane::worker::{PortOut, Shared};
use crate::rings::FrameRing;

/// Stream mode: a reader thread steers frames to the workers' inboxes by
/// hash; every worker writes to the shared connection.
pub(super) fn run_stream(cfg: &Config, publish: Publish) -> Result<i32, Error> {
    let (source, ends) = match &cfg.frontend {
        Frontend::Stream(path) => {
            let listener = stream::bind(path).map_err(io_err(&format!(
                "listening on the stream socket {}",
                path.display()
            )))?;
            log::info!("serving QEMU stream connections on {}", path.display());
            let one_off = cfg.one_off;
            let path = path.clone();
            (
                Source::Listener {
                    listener,
                    path,
                    one_off,
                },
                one_off,
            )
        }
        Frontend::StreamFd(fd) => (Source::Connected(inherited_stream(*fd)?), true),
        _ => unreachable!("run() sends only stream frontends here"),
    };
    install_signals(true);
    let n = cfg.workers.max(1);
    let inboxes = inboxes(n, stream::MAX_FRAME)?;
    let out = Arc::new(StreamOut::default());
    let ports = (0..n)
        .map(|i| Port {
            out: PortOut::Sink(Box::new(StreamSink::new(out.clone(), 0))),
            reader: None,
            shard: (i, n),
        })
        .collect();
    let workers = Workers::start(cfg, inboxes.clone(), ports)?;
    let stop = Arc::new(AtomicBool::new(false));
    let disconnected = Arc::new(AtomicBool::new(false));
    let port = StreamPort {
        source,
        reader: stream::Reader {
            inboxes,
            out,
            vnet_hdr: 0,
            stop: stop.clone(),
            disconnected: disconnected.clone(),
            counters: Arc::default(),
        },
    };
    let connection = Connection {
        port: Some(port),
        ends,
        stop,
        disconnected,
        reader: None,
        shared: workers.shared.clone(),
        inboxes: workers.inboxes.clone(),
    };
    serve(cfg, publish, workers, connection)
}

/// The stream socket while it is served: its reader thread, and the
/// workers to reset when the VMM goes away.
struct Connection {
    /// The socket and the reader, until [`Serving::start`] hands them to
    /// their thread.
    port: Option<StreamPort>,
    /// The end of the connection ends uipd (`--fd`, `--one-off`).
    ends: bool,
    stop: Arc<AtomicBool>,
    /// Set by the reader when the VMM has gone.
    disconnected: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    shared: Vec<Arc<Shared>>,
    inboxes: Vec<Arc<FrameRing>>,
}

impl Serving for Connection {
    fn start(&mut self, _: &Config, _: &Workers) -> Result<(), Error> {
        let Some(port) = self.port.take() else {
            return Ok(());
        };
        let reader = std::thread::Builder::new()
            .name("uipd-stream".into())
            .spawn(move || {
                if let Err(e) = crate::sandbox::confine(crate::sandbox::Role::Stream) {
                    log::error!("{e}");
                    return;
                }
                port.run()
            })
            .map_err(io_err("starting the stream reader"))?;
        self.reader = Some(reader);
        Ok(())
    }

    fn poll(&mut self) -> Result<Option<i32>, Error> {
        let (shared, inboxes) = (&self.shared, &self.inboxes);
        if self.disconnected.swap(false, Ordering::SeqCst) {
            shared.iter().for_each(|s| s.reset());
            inboxes.iter().for_each(|r| r.kick());
        }
        if self.reader.as_ref().is_some_and(|r| r.is_finished()) {
            if self.ends {
                log::info!("the VMM's connection ended: stopping");
                return Ok(Some(0));
            }
            log::error!("the stream reader stopped");
            return Ok(Some(1));
        }
        Ok(None)
    }

    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Take over the inherited, connected stream socket `fd` (passt's `--fd`).
fn inherited_stream(fd: std::os::fd::RawFd) -> Result<std::os::unix::net::UnixStream, Error> {
    use std::os::fd::{BorrowedFd, FromRawFd};
    let bad = |what: &str| Error::Io {
        what: format!("--fd {fd}: {what}"),
        source: std::io::Error::from_raw_os_error(libc::EBADF),
    };
    // SAFETY: fcntl(F_GETFD) only asks whether `fd` is open; no memory.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(bad("not an open file descriptor"));
    }
    // SAFETY: `fd` is open (checked above) and only borrowed for the check.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let kind = socket_type(borrowed);
    if kind != Some(libc::SOCK_STREAM) {
        return Err(bad("not a stream socket"));
    }
    // SAFETY: the parent handed `fd` to uipd for exactly this; nothing else
    // in uipd uses or closes it, and the UnixStream owns it from here on.
    Ok(unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) })
}

/// `SO_TYPE` of a socket, `None` if `fd` is not one.
fn socket_type(fd: std::os::fd::BorrowedFd<'_>) -> Option<libc::c_int> {
    use std::os::fd::AsRawFd;
    let mut ty: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).ok()?;
    // SAFETY: `ty` and `len` are live for the call and `len` says how
    // many bytes `ty` has; the kernel writes at most that many.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            std::ptr::from_mut(&mut ty).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(ty)
}
