//! The daemon: wires a frontend (TAP queues in a namespace, or a QEMU
//! stream socket), the workers and the control loop.
//!
//! Namespace mode, one worker per TAP queue (the kernel steers flows):
//! ```text
//!  main thread ── control loop: child exit, signals, resolv.conf changes, stats
//!  uipd-w0 ◄──► TAP queue 0   (Stack shard 0 + io_uring)  ◄─ inbox 0 ◄─┐ frames of
//!  uipd-w1 ◄──► TAP queue 1   (Stack shard 1 + io_uring)  ◄─ inbox 1 ◄─┘ foreign flows
//! ```
//! Stream mode (see [`crate::dataplane::stream`]): the reader thread steers
//! frames to the workers' inboxes by the 5-tuple hash, and each worker's
//! sink writes to the one connection. When the VMM goes away, every worker
//! resets its flows and the next connection starts clean.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::dataplane::io::IoEngine;
use crate::dataplane::netns::{self, NetConfig};
use crate::dataplane::offload;
use crate::dataplane::pcap::{self, Pcap};
use crate::dataplane::tap::Tap;
use crate::dataplane::worker::{PortOut, Shared, Worker, WorkerCounters, WorkerStats};
use crate::rings::FrameRing;
use crate::sandbox::Anchor;
use crate::stack::{self, Counters, Stack};

/// Where the guest is.
#[derive(Debug, Clone)]
pub enum Frontend {
    /// Run a command in new namespaces.
    Spawn(Vec<OsString>),
    /// Attach to an existing network namespace (path or PID).
    Attach(String),
    /// Serve QEMU's `-netdev stream` protocol on a listening UNIX socket.
    Stream(PathBuf),
    /// Serve the stream protocol on this inherited, connected stream
    /// socket (passt's `--fd N`); uipd ends with the connection.
    StreamFd(std::os::fd::RawFd),
    /// Serve a VMM as a vhost-user-net backend on a listening UNIX socket.
    VhostUser(PathBuf),
    /// Boot a Linux guest in the embedded VMM with a virtio-net NIC of
    /// this many queue pairs (`uipd --kernel ... -net user`).
    Vm(Box<crate::vmm::VmConfig>, usize),
    /// Boot a Linux guest whose virtio-net NIC of `queues` pairs is a host
    /// TAP (`uipd --kernel ... -net tap --tap NAME`): no stack, no workers.
    VmTap {
        /// The VM.
        vm: Box<crate::vmm::VmConfig>,
        /// The TAP's name.
        tap: String,
        /// Queue pairs, one TAP queue each.
        queues: usize,
    },
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
    /// Attach: bring the target namespace's `lo` up too (slirp4netns `-c`).
    pub loopback_up: bool,
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
    /// Host I/O engine of the workers (`--io`): io_uring, epoll, or auto
    /// (io_uring when the host allows it, else epoll, said once).
    pub io: IoEngine,
    /// Write the final counters as JSON to this file.
    pub stats_json: Option<PathBuf>,
    /// Write every frame between guest and uipd to this pcap file.
    pub pcap: Option<PathBuf>,
    /// Stack configuration.
    pub stack: stack::Config,
    /// The memory budget of all flow buffers, in bytes (`--max-memory`):
    /// one [`stack::MemBudget`] shared by every worker's stack (its
    /// `stack.memory` is replaced by it). Default: [`default_max_memory`].
    pub max_memory: usize,
    /// Published ports (`--publish`), bound before anything starts.
    pub publish: Vec<crate::publish::PublishSpec>,
    /// Every free non-ephemeral port of each set (passt's `-t all`),
    /// bound before anything starts; ports in use are skipped.
    pub publish_every: Vec<crate::publish::PortSet>,
    /// The namespace's bound ports of each set, published and withdrawn
    /// as they come and go (pasta's `-t auto`; namespace frontends only).
    pub publish_auto: Vec<crate::publish::PortSet>,
    /// Listeners in the namespace whose connections go to the host's
    /// loopback (pasta's `-T`/`-U`; namespace frontends only).
    pub ns_forwards: Vec<crate::nsfwd::NsForward>,
    /// The host's bound ports of each set, reachable from the namespace's
    /// loopback as they come and go (pasta's `-T auto`/`-U auto`).
    pub ns_auto: Vec<crate::publish::PortSet>,
    /// Control socket path (`--control`).
    pub control: Option<PathBuf>,
    /// The guest interface's MAC (namespace mode), `None` for the kernel's.
    pub guest_mac: Option<[u8; 6]>,
    /// Write "1" to this inherited fd once the guest is served, then close
    /// it (slirp4netns's `-r FD`).
    pub ready_fd: Option<std::os::fd::RawFd>,
    /// Exit when this inherited fd becomes readable or is closed
    /// (slirp4netns's `-e FD`).
    pub exit_fd: Option<std::os::fd::RawFd>,
    /// Serve slirp4netns's JSON API on this socket (published ports).
    pub api_socket: Option<PathBuf>,
    /// Source addresses for outbound sockets (IPv4, IPv6).
    pub outbound: (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>),
    /// Serve only the first VMM connection, then end (passt's `--one-off`).
    pub one_off: bool,
    /// Once the guest is served (after `ready_fd`), point stdin and stdout
    /// at /dev/null and stderr at this file (or /dev/null), as a daemon
    /// does: whoever started uipd may wait for them to close.
    pub detach_stdio: Option<Option<PathBuf>>,
    /// End when this file (a namespace's) no longer exists (pasta quits
    /// when the namespace it serves is deleted, or its process exits).
    pub watch_netns: Option<PathBuf>,
    /// The sandbox entered once set-up is done ([`crate::sandbox`]).
    pub sandbox: crate::sandbox::Options,
}

impl Config {
    /// `frontend` on `stack` with `workers` unpinned workers (at most 4),
    /// and every other option as uipd's command line leaves it: no stats,
    /// pcap, published ports, control socket or handshake fds, the
    /// interface `eth0`, configured. The personalities start from this.
    pub fn with_defaults(frontend: Frontend, stack: stack::Config, workers: usize) -> Config {
        Config {
            frontend,
            ifname: "eth0".into(),
            config_net: true,
            resolvers: Vec::new(),
            stats: false,
            cpus: Vec::new(),
            workers: workers.clamp(1, 4),
            poll_us: 50,
            io: IoEngine::Auto,
            stats_json: None,
            pcap: None,
            stack,
            max_memory: default_max_memory(),
            publish: Vec::new(),
            publish_every: Vec::new(),
            publish_auto: Vec::new(),
            ns_forwards: Vec::new(),
            ns_auto: Vec::new(),
            control: None,
            guest_mac: None,
            ready_fd: None,
            exit_fd: None,
            api_socket: None,
            outbound: (None, None),
            one_off: false,
            detach_stdio: None,
            watch_netns: None,
            loopback_up: false,
            sandbox: crate::sandbox::Options::default(),
        }
    }
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
    /// The embedded VMM could not start.
    #[error(transparent)]
    Vmm(#[from] crate::vmm::Error),
    /// The TAP behind the VMM's NIC (`-net tap`) could not be set up.
    #[error(transparent)]
    Tap(#[from] crate::vmm::tap_net::Error),
    /// The sandbox could not be entered.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::Error),
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
pub fn host_resolvers(resolv: &Anchor) -> Vec<SocketAddr> {
    resolv
        .read()
        .map(|t| stack::dns::parse_resolv_conf(&String::from_utf8_lossy(&t)))
        .unwrap_or_default()
}

/// The default `--max-memory`: a quarter of the machine's physical memory
/// (`MemTotal` in /proc/meminfo), at least 64 MiB; 1 GiB if it cannot be read.
pub fn default_max_memory() -> usize {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
    });
    match total_kib {
        Some(kib) => (kib.saturating_mul(1024) / 4).max(64 << 20),
        None => 1 << 30,
    }
}

/// Flow buffers of at least this size get their own mapping from the
/// allocator (glibc's initial `M_MMAP_THRESHOLD`), kept fixed.
const MMAP_THRESHOLD: usize = 128 << 10;

/// Keep the allocator's mmap threshold fixed at [`MMAP_THRESHOLD`], so the
/// memory budget bounds the RSS. glibc raises the threshold each time a
/// mapped chunk is freed; from then on the 128-256 KiB flow buffers come
/// from the heap, whose free holes are not given back, and with many flows
/// of changing sizes it fragments: measured with 1,000 stalled uploads and
/// `--max-memory 256M`, a VmHWM of 373 MiB against 271 MiB with the
/// threshold fixed (tests/scale.rs). A mapped buffer goes back to the
/// kernel when it is freed.
fn pin_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    {
        let t = libc::c_int::try_from(MMAP_THRESHOLD).unwrap_or(libc::c_int::MAX);
        // SAFETY:
        // - mallopt(3) only changes allocator parameters; it takes no
        //   pointers and is called before the workers start, and glibc
        //   serialises it with allocations anyway;
        // - M_MMAP_THRESHOLD with a value below HEAP_MAX_SIZE / 2 is valid.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, t) };
        if ok != 1 {
            log::debug!("mallopt(M_MMAP_THRESHOLD) failed; the heap may outgrow --max-memory");
        }
        let t = libc::c_int::try_from(TRIM_THRESHOLD).unwrap_or(libc::c_int::MAX);
        // SAFETY: as above; M_TRIM_THRESHOLD takes any non-negative size.
        let ok = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, t) };
        if ok != 1 {
            log::debug!("mallopt(M_TRIM_THRESHOLD) failed");
        }
    }
}

/// Free memory an allocator arena keeps at its top before giving it back.
/// Pinning the mmap threshold also pins glibc's trim threshold at 128 KiB,
/// and a worker that handles 64 KiB datagrams (a reassembled datagram, its
/// payload, the pieces) frees more than that at the top of its arena after
/// each one: the arena shrank and the next datagram faulted its pages back
/// in. Measured with netperf UDP_STREAM at MTU 65520: page faults and page
/// clearing were about 30% of the worker's samples. Bounded: at most this
/// much per arena (one per worker thread) stays mapped while free.
const TRIM_THRESHOLD: usize = 4 << 20;

/// The memory budget's figures, from the workers' snapshots of it.
pub fn memory_stats(stats: &[WorkerStats]) -> stack::MemStats {
    stats
        .iter()
        .fold(stack::MemStats::default(), |a, s| a.max(s.memory))
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
            "uipd worker {i}: port_reads {} port_writes {} inbox {} forwarded {} foreign_flow_frames {} ring_full {} batches {} completions {} port_errors {} port_drops {}\n",
            w.port_reads, w.port_writes, w.inbox_frames, w.forwarded, st.stack.foreign_flow_frames, w.ring_full, w.batches, w.completions, w.port_errors, w.port_drops
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
    if let Some(io) = stats.iter().map(|st| st.io).find(|io| !io.is_empty()) {
        s.push_str(&format!("uipd io: {io}\n"));
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
        ("pcap_frames", sum(|w| w.pcap_frames)),
        ("pcap_drops", sum(|w| w.pcap_drops)),
        ("port_drops", sum(|w| w.port_drops)),
        ("sleeps", sum(|w| w.sleeps)),
        ("poll_hits", sum(|w| w.poll_hits)),
    ] {
        s.push_str(&format!("  {name:<28} {v}\n"));
    }
    for (name, v) in memory_stats(stats).iter() {
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
                "io": st.io,
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
    let memory = memory_stats(stats);
    serde_json::json!({ "workers": workers, "total": total, "memory": memory })
}

/// The running workers, as the control loop sees them.
struct Workers {
    shared: Vec<Arc<Shared>>,
    handles: Vec<std::thread::JoinHandle<std::io::Result<WorkerStats>>>,
    inboxes: Vec<Arc<FrameRing>>,
    /// The `--pcap` writer, fed by every worker.
    pcap: Option<Pcap>,
    /// The flows' memory budget, shared by the workers' stacks.
    memory: Arc<stack::MemBudget>,
}

/// What a frontend gives each worker.
struct Port {
    out: PortOut,
    reader: Option<Tap>,
    /// The worker's stack shard: `(worker, workers)` in the stack's hash
    /// steering, `(0, 1)` when the kernel steers (multiqueue TAP).
    shard: (usize, usize),
}

impl Workers {
    fn start(
        cfg: &Config,
        inboxes: Vec<Arc<FrameRing>>,
        ports: Vec<Port>,
    ) -> Result<Workers, Error> {
        let n = ports.len();
        let pcap_file = match &cfg.pcap {
            Some(path) => Some(std::fs::File::create(path).map_err(io_err(&format!(
                "creating the pcap file {}",
                path.display()
            )))?),
            None => None,
        };
        // Set-up is done: everything below runs in the sandbox, and every
        // thread starts from here on.
        crate::sandbox::enter(cfg.sandbox)?;
        let pcap = match pcap_file {
            Some(f) => {
                Some(Pcap::start(f, n, pcap::DEPTH).map_err(io_err("starting the pcap writer"))?)
            }
            None => None,
        };
        let mut shared = Vec::new();
        let mut handles = Vec::new();
        let directory = (n > 1).then(|| Arc::new(stack::Directory::new()));
        // One budget for every worker's flows (`--max-memory`).
        let memory = Arc::new(stack::MemBudget::new(cfg.max_memory));
        for (i, port) in ports.into_iter().enumerate() {
            let sh = Arc::new(Shared {
                pcap: pcap.as_ref().map(|p| p.capture(i)),
                ..Shared::default()
            });
            shared.push(sh.clone());
            let (worker, workers) = port.shard;
            // With the kernel steering (a multiqueue TAP: `workers` 1), the
            // guest's frames of a flow may come in on another queue than
            // its owner's (a published flow's are the accepting worker's
            // from the start): the stacks share a directory of flow owners
            // and hand such frames over; `worker` names each stack there.
            // Hash-steered stacks (stream, vhost-user) share it too, for
            // the guest's MAC and any flow whose frames do not hash to it.
            let worker = if workers == 1 { i } else { worker };
            let worker = Worker {
                index: i,
                stack: Stack::new(stack::Config {
                    worker,
                    workers,
                    directory: directory.clone(),
                    memory: memory.clone(),
                    // `--max-flows` is per guest: each worker gets a share.
                    max_flows: stack::flow_share(cfg.stack.max_flows, i, n),
                    isn_seed: cfg.stack.isn_seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    ..cfg.stack.clone()
                }),
                inboxes: inboxes.clone(),
                port_out: port.out,
                port_reader: port.reader,
                shared: sh,
                cpu: cfg.cpus.get(i).copied(),
                outbound: cfg.outbound,
                poll_us: cfg.poll_us,
                hash_steer: false,
                io: cfg.io,
            };
            let h = std::thread::Builder::new()
                .name(format!("uipd-w{i}"))
                .spawn(move || worker.run())
                .map_err(io_err("starting a worker"))?;
            handles.push(h);
        }
        Ok(Workers {
            shared,
            handles,
            inboxes,
            pcap,
            memory,
        })
    }

    fn kick_all(&self) {
        self.inboxes.iter().for_each(|r| r.kick());
    }

    fn each(&self, f: impl Fn(&Shared)) {
        self.shared.iter().for_each(|s| f(s));
        self.kick_all();
    }

    fn snapshot(&self) -> Vec<WorkerStats> {
        self.each(|s| s.dump.store(true, Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(150));
        self.shared
            .iter()
            .map(|s| s.stats.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    fn stop(self) -> Vec<WorkerStats> {
        self.each(|s| s.stop.store(true, Ordering::SeqCst));
        let mut stats = Vec::new();
        for (i, h) in self.handles.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(st)) => stats.push(st),
                Ok(Err(e)) => {
                    log::error!("worker {i} failed: {e}");
                    stats.push(WorkerStats::default());
                }
                Err(_) => stats.push(WorkerStats::default()),
            }
        }
        // Every worker is gone: the budget's final figures (a worker's own
        // snapshot may predate another's teardown).
        let memory = self.memory.stats();
        for st in &mut stats {
            st.memory = memory;
        }
        if let Some(p) = self.pcap {
            // The workers are gone: whatever they queued is written now.
            match p.finish() {
                Ok(n) => log::info!("pcap: {n} frames written"),
                Err(e) => log::error!("pcap: {e}"),
            }
        }
        stats
    }
}

/// The guest is served: tell whoever waits (`ready_fd`), and detach from
/// the terminal or pipes we were started with (`detach_stdio`).
fn ready(cfg: &Config, publish: &Publish) {
    if let Some(fd) = cfg.ready_fd {
        crate::compat::slirp4netns::signal_ready(fd);
    }
    if let Some(d) = &publish.detached
        && let Err(e) = crate::compat::detach_stdio(d)
    {
        log::warn!("detaching from stdin/stdout/stderr: {e}");
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

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.to_string();
    move |source| Error::Io { what, source }
}

/// Workers for a virtio-net frontend (vhost-user, the VMM's virtio-pci):
/// one per inbox, hash-steered shards, each writing through `sink(i)`.
/// Until the guest says which offloads it takes, the stacks use the
/// virtio-net header only.
fn start_virtio_workers(
    cfg: &Config,
    inboxes: Vec<Arc<FrameRing>>,
    sink: impl Fn(usize) -> Box<dyn crate::dataplane::worker::FrameSink>,
) -> Result<Workers, Error> {
    let n = inboxes.len();
    let ports = (0..n)
        .map(|i| Port {
            out: PortOut::Sink(sink(i)),
            reader: None,
            shard: (i, n),
        })
        .collect();
    let mut wcfg = cfg.clone();
    wcfg.stack.offload = stack::Offload {
        vnet_hdr: true,
        ..stack::Offload::default()
    };
    Workers::start(&wcfg, inboxes, ports)
}

/// Inbox rings, one per worker, whose buffers hold `buf_size` bytes.
fn inboxes(workers: usize, buf_size: usize) -> Result<Vec<Arc<FrameRing>>, Error> {
    (0..workers)
        .map(|_| FrameRing::new(1024, buf_size).map(Arc::new))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io_err("creating the frame rings"))
}

/// Run the daemon; returns the process exit code.
pub fn run(mut cfg: Config) -> Result<i32, Error> {
    let netns = matches!(cfg.frontend, Frontend::Spawn(_) | Frontend::Attach(_));
    let namespace_only =
        !cfg.publish_auto.is_empty() || !cfg.ns_forwards.is_empty() || !cfg.ns_auto.is_empty();
    if namespace_only && !netns {
        return Err(Error::Publish(
            "'auto' ports and namespace-to-host forwards need a network namespace".into(),
        ));
    }
    pin_mmap_threshold();
    let resolv_path = PathBuf::from("/etc/resolv.conf");
    // resolv.conf is re-read when it changes: through an anchor, which
    // works in the sandbox too.
    let resolv = if cfg.resolvers.is_empty() {
        match Anchor::new(&resolv_path) {
            Ok(a) => Some(a),
            Err(e) => {
                log::warn!("{}: {e}; not watching it", resolv_path.display());
                None
            }
        }
    } else {
        None
    };
    cfg.stack.resolvers = match &resolv {
        Some(a) => host_resolvers(a),
        None if cfg.resolvers.is_empty() => Vec::new(),
        None => cfg.resolvers.clone(),
    };
    let stack = !matches!(cfg.frontend, Frontend::VmTap { .. });
    if stack && cfg.stack.resolvers.is_empty() {
        log::warn!("no DNS resolver: DNS queries to the gateway will be refused");
    }
    cfg.stack.isn_seed = random_seed();
    // One probe for the whole daemon, before anything is bound: `--io
    // uring` fails here, `auto` says once that it runs on epoll.
    if stack {
        cfg.io = crate::dataplane::io::select(cfg.io).map_err(io_err(
            "--io uring: io_uring_setup failed (--io auto falls back to epoll)",
        ))?;
    }
    // Published ports and the control socket first: a port in use is an
    // error before any namespace or thread exists.
    let mut forwards = crate::control::Forwards::new();
    for spec in &cfg.publish {
        forwards.add(spec).map_err(Error::Publish)?;
    }
    publish_every(&cfg.publish_every, &mut forwards)?;
    let control = match &cfg.control {
        Some(path) => Some(crate::control::Control::bind(path)?),
        None => None,
    };
    let api = match &cfg.api_socket {
        Some(path) => Some(
            crate::compat::slirp4netns::Api::bind(path, cfg.stack.guest_ip).map_err(io_err(
                &format!("listening on the API socket {}", path.display()),
            ))?,
        ),
        None => None,
    };
    // Files written or watched later are opened now, before the sandbox.
    let watch_netns = match &cfg.watch_netns {
        Some(p) => {
            Some(crate::watch::Gone::new(p).map_err(io_err(&format!("watching {}", p.display())))?)
        }
        None => None,
    };
    let detached = match &cfg.detach_stdio {
        Some(log) => Some(
            crate::compat::open_detached(log.as_deref())
                .map_err(io_err("opening /dev/null and the log file"))?,
        ),
        None => None,
    };
    let stats_file = match &cfg.stats_json {
        Some(p) => {
            Some(std::fs::File::create(p).map_err(io_err(&format!("creating {}", p.display())))?)
        }
        None => None,
    };
    let publish = Publish {
        forwards,
        control,
        api,
        exit_fd: cfg.exit_fd,
        watch_netns,
        detached,
        stats_file,
        resolv,
        auto: None,
        ns_auto: None,
    };
    match cfg.frontend.clone() {
        Frontend::Spawn(_) | Frontend::Attach(_) => run_tap(&cfg, publish),
        Frontend::Stream(_) | Frontend::StreamFd(_) => run_stream(&cfg, publish),
        Frontend::VhostUser(path) => run_vhost_user(&cfg, &path, publish),
        Frontend::Vm(vm, queues) => run_vm(&cfg, &vm, queues, publish),
        Frontend::VmTap { vm, tap, queues } => run_vm_tap(&cfg, &vm, &tap, queues),
    }
}

/// Bind every free non-ephemeral port of each set (passt's `all`): ports
/// in use or privileged are skipped, as passt does, and counted in a debug
/// line; a set of which nothing could be bound is an error, and running
/// out of file descriptors is said once.
fn publish_every(
    sets: &[crate::publish::PortSet],
    forwards: &mut crate::control::Forwards,
) -> Result<(), Error> {
    use crate::publish;
    if sets.is_empty() {
        return Ok(());
    }
    let eph = publish::ephemeral_range();
    let ports: u64 = sets
        .iter()
        .map(|s| {
            let n = (1..=u16::MAX)
                .filter(|&p| !s.excludes(p) && !(eph.0..=eph.1).contains(&p))
                .count();
            (n * s.addrs().len()) as u64
        })
        .sum();
    // Each port is one descriptor; keep room for the flows, the frontend
    // and the rest (a quarter of the limit, at least 1024).
    let limit = publish::raise_nofile(ports + 4096);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let reserve = (limit / 4).max(1024);
    let mut budget = limit.saturating_sub(publish::open_fds().unwrap_or(64) + reserve);
    let started = std::time::Instant::now();
    let mut total = 0;
    for set in sets {
        let what = match set.addr {
            Some(a) => format!("{a}/all/{}", set.proto),
            None => format!("all/{}", set.proto),
        };
        let every = publish::bind_every(set, eph, &mut budget);
        let bound: usize = every.runs.iter().map(|(_, b)| b.len()).sum();
        log::debug!(
            "{what}: {bound} ports bound in {} runs, {} skipped (in use or privileged), \
             ephemeral {}-{} left out",
            every.runs.len(),
            every.skipped,
            eph.0,
            eph.1
        );
        if every.no_fd > 0 {
            log::warn!(
                "{what}: {bound} sockets bound, then out of file descriptors: {} more \
                 (the highest ports) are not forwarded; RLIMIT_NOFILE is {limit} (with \
                 {reserve} kept for flows), {} would be needed: raise the hard limit \
                 (ulimit -Hn) or exclude ports (~P-Q)",
                every.no_fd,
                ports.saturating_add(reserve as u64)
            );
        }
        if bound == 0 {
            return Err(Error::Publish(format!(
                "{what}: no port could be bound (all in use, privileged or out of descriptors)"
            )));
        }
        total += bound;
        for (spec, b) in every.runs {
            forwards.insert(spec, b);
        }
    }
    log::info!(
        "all: {total} ports bound in {} ms",
        started.elapsed().as_millis()
    );
    Ok(())
}

/// Published ports and the control socket, handed from [`run`] to the
/// frontend and on to [`control_loop`]. Worker 0 serves every published
/// port, in every frontend (see [`Workers::start`] for why its flows stay
/// on it).
struct Publish {
    forwards: crate::control::Forwards,
    control: Option<crate::control::Control>,
    /// slirp4netns's API socket.
    api: Option<crate::compat::slirp4netns::Api>,
    /// Exit when this fd is readable or closed (slirp4netns's `-e`).
    exit_fd: Option<std::os::fd::RawFd>,
    /// Exit when this file is gone (pasta's namespace file).
    watch_netns: Option<crate::watch::Gone>,
    /// Where the standard descriptors go once uipd serves.
    detached: Option<crate::compat::Detached>,
    /// `--stats-json`, written at the end.
    stats_file: Option<std::fs::File>,
    /// The host's resolv.conf, re-read when it changes (none when the
    /// resolvers were given).
    resolv: Option<Anchor>,
    /// pasta's `auto`: the namespace's ports, followed (namespace mode).
    auto: Option<crate::autoports::AutoPorts>,
    /// pasta's `-T auto`: the host's ports, followed (namespace mode).
    ns_auto: Option<crate::nsauto::NsAuto>,
}

impl Publish {
    /// Hand the bound ports to worker 0.
    fn start(&mut self, workers: &Workers) {
        self.forwards.flush(&workers.shared[0], &workers.inboxes[0]);
    }
}

/// pasta's `auto`: open the namespace's socket tables now, before the
/// sandbox (through `/proc/PID/net` of the spawned command or of the PID
/// given, else from inside the namespace file), to be scanned at run time.
fn auto_ports(
    cfg: &Config,
    spawned: Option<i32>,
) -> Result<Option<crate::autoports::AutoPorts>, Error> {
    use crate::autoports::AutoPorts;
    if cfg.publish_auto.is_empty() {
        return Ok(None);
    }
    let Some(procnet) = ns_procnet(cfg, spawned, "'auto'")? else {
        return Ok(None);
    };
    let own = cfg
        .ns_forwards
        .iter()
        .map(|f| (f.proto, f.listen.port()))
        .collect();
    Ok(Some(AutoPorts::new(cfg.publish_auto.clone(), procnet, own)))
}

/// The namespace's socket tables, opened now (before the sandbox) for
/// `what`: through `/proc/PID/net` of the spawned command or of the PID
/// given, else from inside the namespace file.
fn ns_procnet(
    cfg: &Config,
    spawned: Option<i32>,
    what: &str,
) -> Result<Option<crate::autoports::ProcNet>, Error> {
    use crate::autoports::ProcNet;
    let pid = match (&cfg.frontend, spawned) {
        (_, Some(pid)) => Some(pid.to_string()),
        (Frontend::Attach(t), None) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
            Some(t.clone())
        }
        _ => None,
    };
    let what = format!("opening the namespace's /proc/net/{{tcp,udp}}{{,6}} for {what}");
    let procnet = match (&cfg.frontend, pid) {
        (_, Some(pid)) => ProcNet::open(std::path::Path::new(&format!("/proc/{pid}/net")))
            .map_err(io_err(&what))?,
        (Frontend::Attach(t), None) => netns::in_netns(t, || {
            ProcNet::open(std::path::Path::new("/proc/thread-self/net"))
        })?
        .map_err(io_err(&what))?,
        _ => return Ok(None),
    };
    Ok(Some(procnet))
}

/// Namespace mode: one worker per TAP queue; the kernel steers flows.
fn run_tap(cfg: &Config, mut publish: Publish) -> Result<i32, Error> {
    let net = NetConfig {
        ifname: cfg.ifname.clone(),
        mtu: cfg.stack.mtu,
        configure: cfg.config_net,
        guest_ip: cfg.stack.guest_ip,
        prefix_len: cfg.stack.prefix_len,
        gateway: cfg.stack.gateway,
        dns: cfg.stack.dns.unwrap_or(cfg.stack.gateway),
        guest_mac: cfg.guest_mac,
        queues: cfg.workers.max(1),
        vnet_hdr: cfg.stack.offload.vnet_hdr,
        loopback: cfg.loopback_up,
    };
    let (taps, mut child) = match &cfg.frontend {
        Frontend::Spawn(argv) => {
            let s = netns::spawn(&net, argv)?;
            let taps = s
                .taps
                .iter()
                .map(Tap::try_clone)
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(io_err("duplicating the TAP fds"))?;
            (taps, Some(s))
        }
        Frontend::Attach(target) => (netns::attach_queues(target, &net)?, None),
        Frontend::Stream(_)
        | Frontend::StreamFd(_)
        | Frontend::VhostUser(_)
        | Frontend::Vm(..)
        | Frontend::VmTap { .. } => {
            unreachable!("run() sends the VMM frontends elsewhere")
        }
    };
    install_signals(child.is_none());
    publish.auto = auto_ports(cfg, child.as_ref().map(|c| c.pid))?;
    // pasta's -T/-U: listeners made in the namespace now, served by a
    // relay thread once the sandbox is up.
    let relay = if cfg.ns_forwards.is_empty() && cfg.ns_auto.is_empty() {
        None
    } else {
        let target = match (&cfg.frontend, child.as_ref()) {
            (_, Some(c)) => c.pid.to_string(),
            (Frontend::Attach(t), None) => t.clone(),
            _ => unreachable!("run_tap serves namespaces only"),
        };
        let listeners = crate::nsfwd::bind_in(&target, &cfg.ns_forwards).map_err(Error::Publish)?;
        let mut relay = crate::nsfwd::Relay::new(listeners).map_err(io_err("-T/-U listeners"))?;
        // -T auto: a binder process in the namespace, forked now (one
        // thread, no sandbox yet), and both socket tables opened now.
        if !cfg.ns_auto.is_empty() {
            let ns = ns_procnet(cfg, child.as_ref().map(|c| c.pid), "-T/-U auto")?
                .ok_or_else(|| Error::Publish("-T/-U auto: no namespace".into()))?;
            let host =
                crate::autoports::ProcNet::open(std::path::Path::new("/proc/thread-self/net"))
                    .map_err(io_err(
                        "opening the host's /proc/net/{tcp,udp}{,6} for -T/-U auto",
                    ))?;
            let binder = crate::nsauto::spawn(&target, cfg.sandbox).map_err(Error::Publish)?;
            let (tx, rx) = std::sync::mpsc::channel();
            relay.follow(rx);
            publish.ns_auto = Some(crate::nsauto::NsAuto::new(
                cfg.ns_auto.clone(),
                host,
                ns,
                binder,
                tx,
            ));
        }
        Some(relay)
    };

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
    let mut ports = Vec::new();
    for tap in &taps {
        // The reader is a dup of the queue fd, made non-blocking (the flag
        // belongs to the open file, so writes see it too: tun writes never
        // block anyway).
        let reader = tap.try_clone().map_err(io_err("duplicating a TAP queue"))?;
        reader
            .set_nonblocking(true)
            .map_err(io_err("making a TAP queue non-blocking"))?;
        // The kernel steers flows to TAP queues (see `stack::steer`): each
        // worker owns the flows it reads, so its stack shares nothing by
        // hash.
        ports.push(Port {
            out: PortOut::Tap(tap.as_raw_fd()),
            reader: Some(reader),
            shard: (0, 1),
        });
    }
    let workers = Workers::start(cfg, inboxes(taps.len(), buf_size)?, ports)?;
    publish.start(&workers);
    let relay_stop = Arc::new(AtomicBool::new(false));
    let relay = match relay {
        Some(r) => Some(
            r.start(relay_stop.clone())
                .map_err(io_err("starting the -T/-U relay"))?,
        ),
        None => None,
    };
    if let Some(c) = child.as_mut() {
        c.start()?;
    }
    ready(cfg, &publish);
    let (code, stats, stats_file) = control_loop(workers, publish, || match child.as_mut() {
        Some(c) => {
            if STOP.load(Ordering::SeqCst) {
                // SIGTERM to uipd: pass it on, then wait for the command.
                let _ = c.kill(libc::SIGTERM);
                STOP.store(false, Ordering::SeqCst);
            }
            Ok(c.try_wait()?)
        }
        None => Ok(None),
    })?;
    relay_stop.store(true, Ordering::SeqCst);
    if let Some(r) = relay
        && r.join().is_err()
    {
        log::error!("the -T/-U relay panicked");
    }
    drop(taps);
    report(cfg, &stats, stats_file);
    Ok(code)
}

/// Stream mode: a reader thread steers frames to the workers' inboxes by
/// hash; every worker writes to the shared connection.
fn run_stream(cfg: &Config, mut publish: Publish) -> Result<i32, Error> {
    use crate::dataplane::stream::{self, Source, StreamOut, StreamPort, StreamSink};
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
    publish.start(&workers);
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
    ready(cfg, &publish);
    let shared = workers.shared.clone();
    let inboxes = workers.inboxes.clone();
    let (code, stats, stats_file) = control_loop(workers, publish, || {
        if disconnected.swap(false, Ordering::SeqCst) {
            shared
                .iter()
                .for_each(|s| s.reset.store(true, Ordering::SeqCst));
            inboxes.iter().for_each(|r| r.kick());
        }
        if reader.is_finished() {
            if ends {
                log::info!("the VMM's connection ended: stopping");
                return Ok(Some(0));
            }
            log::error!("the stream reader stopped");
            return Ok(Some(1));
        }
        Ok(None)
    })?;
    stop.store(true, Ordering::SeqCst);
    report(cfg, &stats, stats_file);
    Ok(code)
}

/// vhost-user mode: one worker per queue pair, hash-steered; see
/// [`crate::vmm::vhost_user`].
fn run_vhost_user(
    cfg: &Config,
    path: &std::path::Path,
    mut publish: Publish,
) -> Result<i32, Error> {
    use crate::vmm::vhost_user::Device;
    // Bound before anything starts, so a path in use is a start-up error.
    let listener = crate::dataplane::stream::bind(path).map_err(io_err(&format!(
        "listening on the vhost-user socket {}",
        path.display()
    )))?;
    // Removed at the end, from inside the sandbox.
    let socket_file =
        Anchor::new(path).map_err(io_err(&format!("anchoring {}", path.display())))?;
    install_signals(true);
    let n = cfg.workers.max(1);
    let inboxes = inboxes(n, stack::wire::vnet_hdr::HEADER_LEN + 14 + 65535)?;
    let dev = Device::new(inboxes.clone(), cfg.stack.mtu, cfg.stack.offload.vnet_hdr);
    let workers = start_virtio_workers(cfg, inboxes, |i| Box::new(dev.sink(i)))?;
    dev.set_workers(workers.shared.clone());
    publish.start(&workers);
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (dev, stop) = (dev.clone(), stop.clone());
        std::thread::Builder::new()
            .name("uipd-vhost".into())
            .spawn(move || {
                crate::sandbox::confine(crate::sandbox::Role::Vhost)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                dev.serve(&listener, &stop)
            })
            .map_err(io_err("starting the vhost-user server"))?
    };
    ready(cfg, &publish);
    let (code, stats, stats_file) = control_loop(workers, publish, || {
        if server.is_finished() {
            log::error!("the vhost-user server stopped");
            return Ok(Some(1));
        }
        Ok(None)
    })?;
    stop.store(true, Ordering::SeqCst);
    if server.join().is_err() {
        log::error!("the vhost-user server panicked");
    }
    let _ = socket_file.remove();
    log::info!("vhost-user: {}", dev.counters().summary());
    report(cfg, &stats, stats_file);
    Ok(code)
}

/// VMM mode: boot the guest with a virtio-net NIC of `queues` pairs whose
/// frames go to the workers (hash-steered, as for vhost-user); the daemon
/// ends when the guest does. See [`crate::vmm::virtio_pci`].
fn run_vm(
    cfg: &Config,
    vm: &crate::vmm::VmConfig,
    queues: usize,
    mut publish: Publish,
) -> Result<i32, Error> {
    use crate::vmm::virtio_net::OfferedOffloads;
    use crate::vmm::virtio_pci::NetCore;
    let mut machine = crate::vmm::prepare(vm)?;
    install_signals(true);
    let n = cfg.workers.max(1);
    let inboxes = inboxes(n, stack::wire::vnet_hdr::HEADER_LEN + 14 + 65535)?;
    let core = NetCore::new(
        machine.mem().clone(),
        queues.max(1),
        inboxes.clone(),
        if cfg.stack.offload.vnet_hdr {
            OfferedOffloads::Stack
        } else {
            OfferedOffloads::None
        },
    )
    .map_err(io_err("creating the virtio-net device"))?;
    machine.add_net(core.clone(), cfg.stack.mtu)?;
    let workers = start_virtio_workers(cfg, inboxes, |i| Box::new(core.sink(i)))?;
    core.set_workers(workers.shared.clone());
    publish.start(&workers);
    let stopper = machine.stopper()?;
    let vm_thread = std::thread::Builder::new()
        .name("uipd-vmm".into())
        .spawn(move || {
            crate::sandbox::confine(crate::sandbox::Role::Vmm)
                .map_err(|e| crate::vmm::Error::Sandbox(e.to_string()))?;
            machine.run()
        })
        .map_err(io_err("starting the VMM"))?;
    let mut vm_thread = Some(vm_thread);
    let mut vm_result: Option<Result<crate::vmm::Exit, crate::vmm::Error>> = None;
    let (code, stats, stats_file) = control_loop(workers, publish, || {
        if vm_thread.as_ref().is_some_and(|t| t.is_finished()) {
            let r = vm_thread.take().map(|t| t.join()).and_then(Result::ok);
            let code = match &r {
                Some(Ok(exit)) => {
                    eprintln!("uipd: the VM ended: {exit:?}");
                    0
                }
                Some(Err(e)) => {
                    eprintln!("uipd: {e}");
                    1
                }
                None => 1,
            };
            vm_result = r;
            return Ok(Some(code));
        }
        Ok(None)
    })?;
    if let Some(t) = vm_thread.take() {
        // The control loop ended first (a worker failed, a signal): stop the VM.
        let _ = stopper.write(1);
        let _ = t.join();
    }
    drop(vm_result);
    log::info!("virtio-net: {}", core.counters().summary());
    report(cfg, &stats, stats_file);
    Ok(code)
}

/// VMM mode with `-net tap`: the guest's NIC on a host TAP, one TAP queue
/// per queue pair, no stack ([`crate::vmm::tap_net`]); the daemon ends when
/// the guest does, or on SIGINT/SIGTERM.
fn run_vm_tap(
    cfg: &Config,
    vm: &crate::vmm::VmConfig,
    tap: &str,
    queues: usize,
) -> Result<i32, Error> {
    use crate::vmm::tap_net::{self, TapNet};
    use crate::vmm::virtio_net::OfferedOffloads;
    use crate::vmm::virtio_pci::{MAX_PAIRS, NetCore};
    let queues = queues.clamp(1, MAX_PAIRS);
    // The TAP first: a missing privilege is said before KVM is touched.
    let taps = tap_net::open(tap, queues)?;
    let mut machine = crate::vmm::prepare(vm)?;
    install_signals(true);
    // Guest frames wait here for their TAP queue's thread: up to a TSO
    // super-frame with its header.
    let inboxes = inboxes(queues, stack::wire::vnet_hdr::HEADER_LEN + 14 + 65535)?;
    let offloads = if cfg.stack.offload.vnet_hdr {
        OfferedOffloads::Tap
    } else {
        OfferedOffloads::None
    };
    let core = NetCore::new(machine.mem().clone(), queues, inboxes.clone(), offloads)
        .map_err(io_err("creating the virtio-net device"))?;
    machine.add_net(core.clone(), cfg.stack.mtu)?;
    let stopper = machine.stopper()?;
    // Set-up is done: the queue threads and the VMM start in the sandbox.
    crate::sandbox::enter(cfg.sandbox)?;
    let net = TapNet::start(core.clone(), taps, &inboxes)?;
    let vm_thread = std::thread::Builder::new()
        .name("uipd-vmm".into())
        .spawn(move || {
            crate::sandbox::confine(crate::sandbox::Role::Vmm)
                .map_err(|e| crate::vmm::Error::Sandbox(e.to_string()))?;
            machine.run()
        });
    let vm_thread = match vm_thread {
        Ok(t) => t,
        Err(e) => {
            net.stop();
            return Err(io_err("starting the VMM")(e));
        }
    };
    if let Err(e) = crate::sandbox::confine(crate::sandbox::Role::Control) {
        let _ = stopper.write(1);
        net.stop();
        return Err(e.into());
    }
    // Bounded by the guest: it ends, or a signal ends it.
    let mut stopping = false;
    while !vm_thread.is_finished() {
        if !stopping && STOP.load(Ordering::SeqCst) {
            let _ = stopper.write(1);
            stopping = true;
        }
        if DUMP.swap(false, Ordering::SeqCst) {
            eprintln!("uipd: -net tap counters so far: {}", net.counters.summary());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = match vm_thread.join() {
        Ok(Ok(exit)) => {
            eprintln!("uipd: the VM ended: {exit:?}");
            0
        }
        Ok(Err(e)) => {
            eprintln!("uipd: {e}");
            1
        }
        Err(_) => 1,
    };
    let counters = net.counters.clone();
    net.stop();
    log::info!("virtio-net: {}", core.counters().summary());
    log::info!("-net tap: {}", counters.summary());
    if cfg.stats {
        eprintln!("uipd: virtio-net: {}", core.counters().summary());
        eprintln!("uipd: -net tap: {}", counters.summary());
    }
    Ok(code)
}

/// Serve signals, stats requests and resolv.conf changes until the
/// frontend says the guest is done (`frontend` returns an exit code) or a
/// stop signal comes; then stop the workers.
fn control_loop(
    workers: Workers,
    mut publish: Publish,
    mut frontend: impl FnMut() -> Result<Option<i32>, Error>,
) -> Result<(i32, Vec<WorkerStats>, Option<std::fs::File>), Error> {
    // Every thread has started: the main thread is held to its own list.
    crate::sandbox::confine(crate::sandbox::Role::Control)?;
    let mut resolv_version = publish.resolv.as_ref().and_then(Anchor::version);
    let mut last_check = std::time::Instant::now();
    let code = loop {
        if let Some(code) = frontend()? {
            break code;
        }
        if STOP.load(Ordering::SeqCst) {
            break 0;
        }
        if workers.handles.iter().any(|h| h.is_finished()) {
            log::error!("a worker stopped");
            break 1;
        }
        if DUMP.swap(false, Ordering::SeqCst) {
            eprint!("{}", render_stats(&workers.snapshot()));
        }
        if let Some(resolv) = &publish.resolv
            && last_check.elapsed() >= Duration::from_secs(1)
        {
            last_check = std::time::Instant::now();
            let v = resolv.version();
            if v != resolv_version {
                resolv_version = v;
                let list = host_resolvers(resolv);
                workers.each(|s| {
                    *s.resolvers.lock().unwrap_or_else(|e| e.into_inner()) = Some(list.clone());
                });
            }
        }
        if let Some(c) = publish.control.as_mut() {
            c.poll(&mut publish.forwards, &workers.shared, &workers.inboxes);
        }
        if let Some(a) = publish.api.as_mut() {
            a.poll(&mut publish.forwards, &workers.shared, &workers.inboxes);
        }
        if let Some(a) = publish.auto.as_mut() {
            a.poll(
                &mut publish.forwards,
                &workers.shared[0],
                &workers.inboxes[0],
            );
        }
        if let Some(a) = publish.ns_auto.as_mut() {
            a.poll(&publish.forwards);
        }
        if publish
            .exit_fd
            .is_some_and(crate::compat::slirp4netns::exit_requested)
        {
            log::info!("the exit fd is readable or closed: stopping");
            break 0;
        }
        if let Some(p) = &publish.watch_netns
            && p.gone()
        {
            log::info!("{} is gone: stopping", p.path().display());
            break 0;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((code, workers.stop(), publish.stats_file.take()))
}

/// Final stats: to stderr with `--stats`, to a file with `--stats-json`.
fn report(cfg: &Config, stats: &[WorkerStats], file: Option<std::fs::File>) {
    if cfg.stats {
        eprint!("{}", render_stats(stats));
    }
    if let (Some(mut f), Some(path)) = (file, &cfg.stats_json) {
        use std::io::Write;
        let doc = stats_json(stats);
        if let Err(e) = f.write_all(format!("{doc:#}\n").as_bytes()) {
            log::error!("writing {}: {e}", path.display());
        }
    }
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
