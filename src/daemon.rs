//! The daemon: wires the TAP queues, the workers and the control loop.
//!
//! ```text
//!  main thread ── control loop: child exit, signals, resolv.conf changes, stats
//!  uipd-w0 ◄──► TAP queue 0   (Stack shard 0 + io_uring)  ◄─ inbox 0 ◄─┐ frames of
//!  uipd-w1 ◄──► TAP queue 1   (Stack shard 1 + io_uring)  ◄─ inbox 1 ◄─┘ foreign flows
//! ```

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::dataplane::netns::{self, NetConfig};
use crate::dataplane::offload;
use crate::dataplane::tap::Tap;
use crate::dataplane::worker::{PortOut, Shared, Worker, WorkerCounters, WorkerStats};
use crate::rings::FrameRing;
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
    /// CPUs for workers: one worker per CPU, pinned.
    pub cpus: Vec<usize>,
    /// Number of workers (TAP queues); `cpus.len()` when CPUs are given.
    pub workers: usize,
    /// Busy-poll this many microseconds before a worker sleeps.
    pub poll_us: u64,
    /// Write the final counters as JSON to this file.
    pub stats_json: Option<PathBuf>,
    /// Stack configuration.
    pub stack: stack::Config,
    /// Published ports (`--publish`), bound before anything starts.
    pub publish: Vec<crate::publish::PublishSpec>,
    /// Control socket path (`--control`).
    pub control: Option<PathBuf>,
}

/// Start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Namespace or TAP set-up failed.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// A published port could not be bound.
    #[error("{0}")]
    Publish(String),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
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

/// Render counters of every worker, then the total.
fn render_stats(stats: &[WorkerStats]) -> String {
    let mut s = String::new();
    let mut total = Counters::default();
    for (i, st) in stats.iter().enumerate() {
        total.merge(&st.stack);
        let w = &st.worker;
        let h = &st.latency_ns;
        s.push_str(&format!(
            "uipd worker {i}: port_reads {} port_writes {} inbox {} forwarded {} ring_full {} batches {} completions {} port_errors {}\n",
            w.port_reads, w.port_writes, w.inbox_frames, w.forwarded, w.ring_full, w.batches, w.completions, w.port_errors
        ));
        if !h.is_empty() {
            s.push_str(&format!(
                "uipd worker {i}: frame-in to submit ns p50 {} p99 {} p99.9 {} max {}\n",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            ));
        }
    }
    s.push_str(&format!("uipd counters ({} workers):\n", stats.len()));
    for (name, v) in total.iter() {
        if v != 0 || !name.starts_with("drops_") {
            s.push_str(&format!("  {name:<28} {v}\n"));
        }
    }
    let sum = |f: fn(&WorkerCounters) -> u64| stats.iter().map(|s| f(&s.worker)).sum::<u64>();
    for (name, v) in [
        ("forwarded", sum(|w| w.forwarded)),
        ("ring_full", sum(|w| w.ring_full)),
        ("port_errors", sum(|w| w.port_errors)),
    ] {
        s.push_str(&format!("  {name:<28} {v}\n"));
    }
    s
}

/// Stats as JSON: per worker and total.
pub fn stats_json(stats: &[WorkerStats]) -> serde_json::Value {
    let mut total = Counters::default();
    let workers: Vec<serde_json::Value> = stats
        .iter()
        .map(|st| {
            total.merge(&st.stack);
            let h = &st.latency_ns;
            let counters: serde_json::Map<String, serde_json::Value> = st
                .stack
                .iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            serde_json::json!({
                "stack": counters,
                "worker": st.worker,
                "frame_to_submit_ns": {
                    "count": h.len(),
                    "p50": h.value_at_quantile(0.5),
                    "p99": h.value_at_quantile(0.99),
                    "p999": h.value_at_quantile(0.999),
                    "max": h.max(),
                },
            })
        })
        .collect();
    let total: serde_json::Map<String, serde_json::Value> = total
        .iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    serde_json::json!({ "workers": workers, "total": total })
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
    // Published ports and the control socket first: a port in use is an
    // error before any namespace or thread exists.
    let mut forwards = crate::control::Forwards::new();
    for spec in &cfg.publish {
        forwards.add(spec).map_err(Error::Publish)?;
    }
    let mut control = match &cfg.control {
        Some(path) => Some(crate::control::Control::bind(path)?),
        None => None,
    };

    let net = NetConfig {
        ifname: cfg.ifname.clone(),
        mtu: cfg.stack.mtu,
        configure: cfg.config_net,
        guest_ip: cfg.stack.guest_ip,
        prefix_len: cfg.stack.prefix_len,
        gateway: cfg.stack.gateway,
        dns: cfg.stack.gateway,
        guest_mac: None,
        queues: cfg.workers.max(1),
        vnet_hdr: cfg.stack.offload.vnet_hdr,
    };
    let (taps, mut child) = match &cfg.frontend {
        Frontend::Spawn(argv) => {
            let s = netns::spawn(&net, argv)?;
            let taps = s
                .taps
                .iter()
                .map(Tap::try_clone)
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|source| Error::Io {
                    what: "duplicating the TAP fds".into(),
                    source,
                })?;
            (taps, Some(s))
        }
        Frontend::Attach(target) => (netns::attach_queues(target, &net)?, None),
    };
    install_signals(child.is_none());

    let io_err = |what: &str| {
        let what = what.to_string();
        move |source| Error::Io { what, source }
    };
    let workers = taps.len();
    let off = cfg.stack.offload;
    if off.vnet_hdr {
        // The header size and the offloads belong to the device: set them
        // once, through queue 0. (TSO from the namespace needs checksum
        // offload, and both need the header.)
        let fd = taps[0].as_raw_fd();
        offload::enable_vnet_hdr(fd).map_err(io_err("setting the TAP's virtio-net header size"))?;
        offload::set_offload(fd, off.csum, off.tso && off.csum)
            .map_err(io_err("enabling TAP offloads (TUNSETOFFLOAD)"))?;
    }
    // Inbox buffers hold one frame: up to the MTU, or a 64 KiB GSO
    // super-frame with its virtio-net header when offloads are on.
    let buf_size = if off.vnet_hdr {
        stack::wire::vnet_hdr::HEADER_LEN + 14 + 65535
    } else {
        usize::from(cfg.stack.mtu) + 14 + 4
    };
    let inboxes = (0..workers)
        .map(|_| FrameRing::new(1024, buf_size).map(Arc::new))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io_err("creating the frame rings"))?;
    let mut shared = Vec::new();
    let mut handles = Vec::new();
    for (i, tap) in taps.iter().enumerate() {
        // The reader is a dup of the queue fd, made non-blocking (the flag
        // belongs to the open file, so writes see it too: tun writes never
        // block anyway).
        let reader = tap.try_clone().map_err(io_err("duplicating a TAP queue"))?;
        reader
            .set_nonblocking(true)
            .map_err(io_err("making a TAP queue non-blocking"))?;
        let sh = Arc::new(Shared::default());
        shared.push(sh.clone());
        let worker = Worker {
            index: i,
            // The kernel steers flows to TAP queues (see `stack::steer`):
            // each worker owns the flows it reads, so its stack shares
            // nothing by hash.
            // `worker` names this stack for published flows only
            // (`inbound_owner`); with `workers` 1 nothing is hash-steered.
            stack: Stack::new(stack::Config {
                worker: i,
                workers: 1,
                inbound_owner: (taps.len() > 1).then_some(0),
                isn_seed: cfg.stack.isn_seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                ..cfg.stack.clone()
            }),
            inboxes: inboxes.clone(),
            port_out: PortOut::Tap(tap.as_raw_fd()),
            port_reader: Some(reader),
            shared: sh,
            cpu: cfg.cpus.get(i).copied(),
            poll_us: cfg.poll_us,
            hash_steer: false,
        };
        let h = std::thread::Builder::new()
            .name(format!("uipd-w{i}"))
            .spawn(move || worker.run())
            .map_err(io_err("starting a worker"))?;
        handles.push(h);
    }
    let kick_all = || inboxes.iter().for_each(|r| r.kick());
    // Worker 0 serves the published ports (in TAP mode the kernel sends
    // the guest's replies to the queue that wrote the flow's first frame).
    forwards.flush(&shared[0], &inboxes[0]);

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
        if handles.iter().any(|h| h.is_finished()) {
            log::error!("a worker stopped");
            code = 1;
            break;
        }
        if DUMP.swap(false, Ordering::SeqCst) {
            shared
                .iter()
                .for_each(|s| s.dump.store(true, Ordering::SeqCst));
            kick_all();
            std::thread::sleep(Duration::from_millis(150));
            let snap: Vec<WorkerStats> = shared
                .iter()
                .map(|s| s.stats.lock().unwrap_or_else(|e| e.into_inner()).clone())
                .collect();
            eprint!("{}", render_stats(&snap));
        }
        if watch_resolv && last_check.elapsed() >= Duration::from_secs(1) {
            last_check = std::time::Instant::now();
            let m = mtime(&resolv_path);
            if m != resolv_mtime {
                resolv_mtime = m;
                let list = host_resolvers(&resolv_path);
                for s in &shared {
                    *s.resolvers.lock().unwrap_or_else(|e| e.into_inner()) = Some(list.clone());
                }
                kick_all();
            }
        }
        if let Some(c) = control.as_mut() {
            c.poll(&mut forwards, &shared, &inboxes);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    shared
        .iter()
        .for_each(|s| s.stop.store(true, Ordering::SeqCst));
    kick_all();
    let mut final_stats = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(st)) => final_stats.push(st),
            Ok(Err(e)) => {
                log::error!("worker {i} failed: {e}");
                final_stats.push(WorkerStats::default());
            }
            Err(_) => final_stats.push(WorkerStats::default()),
        }
    }
    drop(taps);
    if cfg.stats {
        eprint!("{}", render_stats(&final_stats));
    }
    if let Some(path) = &cfg.stats_json {
        let doc = stats_json(&final_stats);
        if let Err(e) = std::fs::write(path, format!("{doc:#}\n")) {
            log::error!("writing {}: {e}", path.display());
        }
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
