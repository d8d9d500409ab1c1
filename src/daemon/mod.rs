//! The daemon: every mode of uipd starts in [`run`], which wires a
//! frontend (TAP queues in a namespace, a QEMU stream socket, a vhost-user
//! socket, the embedded VMM's NIC), the workers and the control loop.
//!
//! [`run`] does what every frontend needs first (resolvers, the I/O
//! engine, published ports, the control socket, files opened before the
//! sandbox: `forwards.rs`), then hands over to the frontend's own file,
//! which sets up its side, starts the workers (`workers.rs`) and passes
//! both to one skeleton, `serve`: published ports to worker 0, the
//! frontend's threads, "ready", the control loop (the frontend's exit,
//! signals, resolv.conf changes, stats: `stats.rs`), then the frontend's
//! teardown and the final report. Only the VMM without a stack (`-net tap`,
//! `-net none`, in `vm.rs`) has no workers and so no skeleton.
//!
//! Namespace mode (`tap.rs`), one worker per TAP queue (the kernel steers
//! flows):
//! ```text
//!  main thread ── control loop: child exit, signals, resolv.conf changes, stats
//!  uipd-w0 ◄──► TAP queue 0   (Stack shard 0 + io_uring)  ◄─ inbox 0 ◄─┐ frames of
//!  uipd-w1 ◄──► TAP queue 1   (Stack shard 1 + io_uring)  ◄─ inbox 1 ◄─┘ foreign flows
//! ```
//! Stream mode (`stream.rs`, see [`crate::dataplane::stream`]): the reader
//! thread steers frames to the workers' inboxes by the 5-tuple hash, and
//! each worker's sink writes to the one connection. When the VMM goes
//! away, every worker resets its flows and the next connection starts
//! clean. vhost-user (`vhost_user.rs`) and the VMM's virtio-pci NIC (`vm.rs`)
//! steer the same way, from the guest's TX queues
//! ([`crate::vmm::queue_pair`]).

mod forwards;
mod stats;
mod stream;
mod tap;
mod vhost_user;
mod vm;
mod workers;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use self::forwards::Publish;
use self::stats::render_stats;
pub use self::stats::{memory_stats, stats_json};
use self::workers::Workers;
use crate::dataplane::io::IoEngine;
use crate::dataplane::netns;
use crate::dataplane::worker::WorkerStats;
use crate::rings::FrameRing;
use crate::sandbox::Anchor;
use crate::stack;

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
    /// Boot a Linux guest with no NIC (`uipd --kernel ... -net none`): no
    /// stack, no workers, no sandbox; uipd ends with the guest.
    VmNoNet(Box<crate::vmm::VmConfig>),
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

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.to_string();
    move |source| Error::Io { what, source }
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
    if let Frontend::VmNoNet(vm) = &cfg.frontend {
        // Nothing of the network: no resolvers, ports or sandbox.
        return vm::run_vm_no_net(vm);
    }
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
    let publish = Publish::open(&cfg, resolv)?;
    match cfg.frontend.clone() {
        Frontend::Spawn(_) | Frontend::Attach(_) => tap::run_tap(&cfg, publish),
        Frontend::Stream(_) | Frontend::StreamFd(_) => stream::run_stream(&cfg, publish),
        Frontend::VhostUser(path) => vhost_user::run_vhost_user(&cfg, &path, publish),
        Frontend::Vm(vm, queues) => vm::run_vm(&cfg, &vm, queues, publish),
        Frontend::VmTap { vm, tap, queues } => vm::run_vm_tap(&cfg, &vm, &tap, queues),
        Frontend::VmNoNet(_) => unreachable!("served above, before the network set-up"),
    }
}

/// What differs between the frontends of the stack once their workers
/// run; [`serve`] does the rest.
trait Serving {
    /// Starts what moves frames between the guest and the workers (or, in
    /// namespace mode, the command); worker 0 has the published ports.
    fn start(&mut self, cfg: &Config, workers: &Workers) -> Result<(), Error>;
    /// One turn of the control loop: `Some(exit code)` once the guest is
    /// done.
    fn poll(&mut self) -> Result<Option<i32>, Error>;
    /// The workers have stopped: stop and join what `start` started, and
    /// log the frontend's counters.
    fn finish(self);
}

/// The skeleton of every frontend of the stack, from its running workers
/// to the exit code: published ports to worker 0, the frontend's start,
/// "ready", the control loop, the frontend's teardown, the final report.
fn serve(
    cfg: &Config,
    mut publish: Publish,
    workers: Workers,
    mut frontend: impl Serving,
) -> Result<i32, Error> {
    publish.start(&workers);
    frontend.start(cfg, &workers)?;
    ready(cfg, &publish);
    let (code, stats, stats_file) = control_loop(workers, publish, || frontend.poll())?;
    frontend.finish();
    report(cfg, &stats, stats_file);
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
                    s.set_resolvers(list.clone());
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
