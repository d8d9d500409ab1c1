//! The daemon: wires a frame port, a ring, a worker and the control loop.
//!
//! ```text
//!  main thread ── control loop: child exit, signals, resolv.conf changes
//!  uipd-port   ── TAP read ──► FrameRing ──► uipd-w0 (Stack + io_uring) ── TAP write
//! ```

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::dataplane::netns::{self, NetConfig};
use crate::dataplane::tap::Tap;
use crate::dataplane::worker::{Shared, Worker, WorkerCounters};
use crate::rings::{Frame, FrameRing};
use crate::stack::{self, Counters, Stack};

/// Where the guest is.
#[derive(Debug, Clone)]
pub enum Frontend {
    /// Run a command in new namespaces.
    Spawn(Vec<OsString>),
    /// Attach to an existing network namespace (path or PID).
    Attach(String),
}

/// Everything the daemon needs, from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// The frontend.
    pub frontend: Frontend,
    /// TAP name inside the namespace.
    pub ifname: String,
    /// Configure address, route and resolv.conf in the namespace.
    pub config_net: bool,
    /// Resolvers given on the command line (else resolv.conf's).
    pub resolvers: Vec<SocketAddr>,
    /// Print counters at exit.
    pub stats: bool,
    /// CPUs for workers.
    pub cpus: Vec<usize>,
    /// Stack configuration.
    pub stack: stack::Config,
}

/// Start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Namespace or TAP set-up failed.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// Other I/O.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

static STOP: AtomicBool = AtomicBool::new(false);
static DUMP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_dump(_: libc::c_int) {
    DUMP.store(true, Ordering::SeqCst);
}

fn install_signals(stop_on_int: bool) {
    let set = |sig: libc::c_int, h: extern "C" fn(libc::c_int)| {
        // SAFETY: the handlers only store to atomics (async-signal-safe); the
        // sigaction struct is fully initialised (zeroed, then the handler).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = h as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&raw mut sa.sa_mask);
            libc::sigaction(sig, &raw const sa, std::ptr::null_mut());
        }
    };
    set(libc::SIGTERM, on_stop);
    if stop_on_int {
        set(libc::SIGINT, on_stop);
    } else {
        // In spawn mode ^C goes to the whole process group: the command gets
        // it and decides; uipd ends when the command does.
        // SAFETY: SIG_IGN is a valid disposition.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
        }
    }
    set(libc::SIGUSR1, on_dump);
}

/// Read the host's resolvers.
pub fn host_resolvers(path: &std::path::Path) -> Vec<SocketAddr> {
    std::fs::read_to_string(path)
        .map(|t| stack::dns::parse_resolv_conf(&t))
        .unwrap_or_default()
}

fn print_counters(c: &Counters, w: &WorkerCounters, ring_full: u64) {
    let mut s = String::from("uipd counters (worker 0):\n");
    for (name, v) in c.iter() {
        if v != 0 || !name.starts_with("drops_") {
            s.push_str(&format!("  {name:<28} {v}\n"));
        }
    }
    s.push_str(&format!(
        "  {:<28} {}\n  {:<28} {}\n  {:<28} {}\n  {:<28} {}\n  {:<28} {}\n",
        "batches",
        w.batches,
        "port_writes",
        w.port_writes,
        "port_write_errors",
        w.port_write_errors,
        "completions",
        w.completions,
        "ring_full",
        ring_full
    ));
    eprint!("{s}");
}

/// Run the daemon; returns the process exit code.
pub fn run(mut cfg: Config) -> Result<i32, Error> {
    let resolv_path = PathBuf::from("/etc/resolv.conf");
    let watch_resolv = cfg.resolvers.is_empty();
    cfg.stack.resolvers = if watch_resolv {
        host_resolvers(&resolv_path)
    } else {
        cfg.resolvers.clone()
    };
    if cfg.stack.resolvers.is_empty() {
        log::warn!("no DNS resolver: DNS queries to the gateway will be refused");
    }
    cfg.stack.isn_seed = random_seed();

    let net = NetConfig {
        ifname: cfg.ifname.clone(),
        mtu: cfg.stack.mtu,
        configure: cfg.config_net,
        guest_ip: cfg.stack.guest_ip,
        prefix_len: cfg.stack.prefix_len,
        gateway: cfg.stack.gateway,
        dns: cfg.stack.gateway,
        guest_mac: None,
        queues: 1,
        vnet_hdr: false,
    };
    let (tap, mut child) = match &cfg.frontend {
        Frontend::Spawn(argv) => {
            let s = netns::spawn(&net, argv)?;
            let tap = s.tap.try_clone().map_err(|source| Error::Io {
                what: "duplicating the TAP fd".into(),
                source,
            })?;
            (tap, Some(s))
        }
        Frontend::Attach(target) => (netns::attach(target, &net)?, None),
    };
    install_signals(child.is_none());

    let io_err = |what: &str| {
        let what = what.to_string();
        move |source| Error::Io { what, source }
    };
    // Frames up to the MTU plus the Ethernet header.
    let ring = Arc::new(
        FrameRing::new(1024, usize::from(cfg.stack.mtu) + 14 + 4)
            .map_err(io_err("creating the frame ring"))?,
    );
    let shared = Arc::new(Shared::default());
    let writer_fd = tap.as_raw_fd();

    let worker = Worker {
        stack: Stack::new(cfg.stack.clone()),
        ring: ring.clone(),
        port_fd: writer_fd,
        shared: shared.clone(),
        cpu: cfg.cpus.first().copied(),
    };
    let worker = std::thread::Builder::new()
        .name("uipd-w0".into())
        .spawn(move || worker.run())
        .map_err(io_err("starting the worker"))?;

    let reader_tap = tap.try_clone().map_err(io_err("duplicating the TAP fd"))?;
    let port_ring = ring.clone();
    std::thread::Builder::new()
        .name("uipd-port".into())
        .spawn(move || port_reader(reader_tap, port_ring))
        .map_err(io_err("starting the port reader"))?;

    let mut code = 0;
    if let Some(c) = child.as_mut() {
        c.start()?;
    }
    let mut resolv_mtime = mtime(&resolv_path);
    let mut last_check = std::time::Instant::now();
    loop {
        if let Some(c) = child.as_mut() {
            if let Some(status) = c.try_wait()? {
                code = status;
                break;
            }
        }
        if STOP.load(Ordering::SeqCst) {
            if let Some(c) = child.as_mut() {
                // SIGTERM to uipd: pass it on, then wait for the command.
                let _ = c.kill(libc::SIGTERM);
                STOP.store(false, Ordering::SeqCst);
                continue;
            }
            break;
        }
        if worker.is_finished() {
            log::error!("the worker stopped");
            code = 1;
            break;
        }
        if DUMP.swap(false, Ordering::SeqCst) {
            shared.dump.store(true, Ordering::SeqCst);
            ring.kick();
            std::thread::sleep(Duration::from_millis(150));
            let (c, w) = shared
                .counters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            print_counters(&c, &w, ring.full_events.load(Ordering::Relaxed));
        }
        if watch_resolv && last_check.elapsed() >= Duration::from_secs(1) {
            last_check = std::time::Instant::now();
            let m = mtime(&resolv_path);
            if m != resolv_mtime {
                resolv_mtime = m;
                *shared.resolvers.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(host_resolvers(&resolv_path));
                ring.kick();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    shared.stop.store(true, Ordering::SeqCst);
    ring.kick();
    let (c, w) = match worker.join() {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            log::error!("worker failed: {e}");
            (Counters::default(), WorkerCounters::default())
        }
        Err(_) => (Counters::default(), WorkerCounters::default()),
    };
    if cfg.stats {
        print_counters(&c, &w, ring.full_events.load(Ordering::Relaxed));
    }
    Ok(code)
}

fn mtime(p: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into the live buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        return u64::try_from(t.as_nanos() & u128::from(u64::MAX)).unwrap_or(1)
            ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(b)
}

/// The frame port: read frames from the TAP into the ring until the TAP goes away.
fn port_reader(tap: Tap, ring: Arc<FrameRing>) {
    loop {
        let mut buf = ring.get_buf();
        match tap.read_frame(&mut buf) {
            Ok(0) => return,
            Ok(len) => {
                if let Err(f) = ring.push_wait(Frame { buf, len }, Duration::from_secs(1)) {
                    // The worker has not drained for a second: it is gone or stuck.
                    ring.put_buf(f.buf);
                    log::warn!("frame ring full for 1 s; frame dropped");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("TAP read: {e}");
                return;
            }
        }
    }
}
