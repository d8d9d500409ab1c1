//! Offloads against the kernel as a real peer (TESTING.md §5): a TAP opened
//! with `IFF_VNET_HDR` and `TUNSETOFFLOAD`, a [`Stack`] with
//! [`Offload`] on, and a real Linux TCP connection through it.
//!
//! ```text
//!  test thread ─ unshare(CLONE_NEWNET): "outer" netns, lo only
//!   │  host: TcpListener 127.0.0.1:P   uipd-w0: Worker (Stack + io_uring)   port reader: TAP → FrameRing
//!   └─ guest thread ─ unshare(CLONE_NEWNET): "inner" netns
//!        eth0 = TAP (vnet hdr), 192.168.33.15/24, MTU 1500
//!        TcpStream → 192.168.33.1:P  (the stack maps the gateway to 127.0.0.1)
//!        IPv6 runs: fd00:33::15/64 (no DAD), TcpStream → [fd00:33::1]:P (→ [::1]:P)
//! ```
//!
//! Namespaces are per thread here: `unshare(CLONE_NEWNET)` moves only the
//! calling thread, threads it spawns inherit its namespace, and so do the
//! `ip` commands it runs. Nothing can leave the outer namespace. Every wait
//! is bounded; the namespaces disappear with their threads and fds.
//!
//! `offload_throughput_on_vs_off` (ignored by default; run it with
//! `cargo test --test offload -- --ignored --nocapture`) prints 5 s
//! transfers each way with offloads on and off.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use uipd::dataplane::offload::{self, OffloadError};
use uipd::dataplane::tap::Tap;
use uipd::dataplane::worker::{PortOut, Shared, Worker, WorkerCounters};
use uipd::rings::{Frame, FrameRing};
use uipd::stack::wire::vnet_hdr;
use uipd::stack::{Config, Counters, Offload, Stack};

/// Bound on every blocking step.
const STEP: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;
/// Period of the test pattern: not a multiple of any segment size.
const PERIOD: usize = 3_145_739;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Plain TAP, no virtio-net header (today's behaviour).
    Off,
    /// vnet header, partial checksums both ways, no TSO/GSO.
    Csum,
    /// vnet header, partial checksums and TSO/GSO both ways, UFO toward
    /// the namespace.
    Full,
}

impl Mode {
    fn offload(self) -> Offload {
        Offload {
            vnet_hdr: self != Mode::Off,
            csum: self != Mode::Off,
            tso: self == Mode::Full,
            tso6: self == Mode::Full,
            ufo: self == Mode::Full,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Job {
    /// Move exactly this many bytes each way and check every byte.
    Exact(usize),
    /// Move as much as possible for this long each way.
    Timed(Duration),
}

/// Bytes received and how long it took.
type Transfer = (u64, Duration);
/// TCP InCsumErrors and InErrs.
type TcpErrors = (u64, u64);

#[derive(Debug, Default)]
struct Outcome {
    /// Bytes the host received from the guest, and how long it took.
    up: Transfer,
    /// Bytes the guest received from the host, and how long it took.
    down: Transfer,
    stack: Counters,
    worker: WorkerCounters,
    /// Frames read from the TAP with a GSO header and over 1514 bytes.
    rx_gso_seen: u64,
    /// Largest frame read from the TAP (virtio-net header included).
    rx_max_len: u64,
    /// TCP InCsumErrors and InErrs in the guest namespace, before and after.
    guest_tcp_errors: (TcpErrors, TcpErrors),
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("offload: skipped: needs root and /dev/net/tun");
        return false;
    }
    true
}

/// Move the calling thread into a new network namespace.
fn unshare_net() {
    // SAFETY: unshare takes no pointers; CLONE_NEWNET affects only the
    // calling thread's namespace set (allowed in a multithreaded process).
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
}

fn ip(args: &[&str]) {
    let bin = ["/usr/sbin/ip", "/sbin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("ip");
    let st = Command::new(bin).args(args).status().expect("running ip");
    assert!(st.success(), "ip {args:?}: {st}");
}

fn pattern() -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut v: Vec<u8> = (0..PERIOD + MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect();
    // The tail repeats the head so any `PERIOD`-aligned window is contiguous.
    let (head, tail) = v.split_at_mut(PERIOD);
    tail.copy_from_slice(&head[..MIB]);
    v
}

/// Send per `job` on `s`, then shut down the write side.
fn send(s: &mut TcpStream, job: Job, pat: &[u8]) {
    let start = Instant::now();
    let mut off = 0usize;
    loop {
        let n = match job {
            Job::Exact(total) if off >= total => break,
            Job::Exact(total) => (total - off).min(256 << 10),
            Job::Timed(d) if start.elapsed() >= d => break,
            Job::Timed(_) => 256 << 10,
        };
        let at = off % PERIOD;
        let n = n.min(MIB);
        if let Err(e) = s.write_all(&pat[at..at + n]) {
            eprintln!("send after {off} bytes: {e}");
            return;
        }
        off += n;
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// Receive to end of stream, checking every byte against the pattern.
fn recv(s: &mut TcpStream, pat: &[u8]) -> (u64, Duration) {
    let mut buf = vec![0u8; 256 << 10];
    let mut off = 0usize;
    let mut start = None;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                // Reported by the byte count (and the counters) in the caller.
                eprintln!("recv after {off} bytes: {e}");
                break;
            }
        };
        start.get_or_insert_with(Instant::now);
        let at = off % PERIOD;
        // `n` ≤ 256 KiB < MIB: the window is inside `pat`.
        assert!(
            buf[..n] == pat[at..at + n],
            "byte mismatch near offset {off}"
        );
        off += n;
    }
    let took = start.map(|s| s.elapsed()).unwrap_or_default();
    (off as u64, took)
}

/// TCP InCsumErrors and InErrs of the calling thread's network namespace.
fn tcp_errors() -> (u64, u64) {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("snmp");
    let mut lines = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let vals: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let get = |k: &str| {
        names
            .iter()
            .position(|n| *n == k)
            .map(|i| vals[i].parse().unwrap())
            .unwrap_or(0)
    };
    (get("InCsumErrors"), get("InErrs"))
}

fn open_tap(mode: Mode) -> Tap {
    if mode == Mode::Off {
        return Tap::open("eth0").expect("TAP");
    }
    let tap = Tap::open_vnet("eth0", false).unwrap_or_else(|e: OffloadError| panic!("{e}"));
    offload::set_offload(tap.as_raw_fd(), true, mode == Mode::Full).expect("TUNSETOFFLOAD");
    tap
}

/// Copy frames from the TAP into the ring until `stop`, counting GSO frames.
fn port_reader(
    tap: Tap,
    ring: Arc<FrameRing>,
    vnet: bool,
    stop: Arc<AtomicBool>,
    gso_seen: Arc<AtomicU64>,
    max_len: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one live, initialised pollfd for the whole call;
        // the fd is owned by `tap`, which outlives the call.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, 100) };
        if rc <= 0 {
            continue;
        }
        let mut buf = ring.get_buf();
        let Ok(len) = tap.read_frame(&mut buf) else {
            return;
        };
        if len == 0 {
            return;
        }
        max_len.fetch_max(len as u64, Ordering::Relaxed);
        if vnet && len > vnet_hdr::HEADER_LEN + 1514 && buf[1] != vnet_hdr::gso::NONE {
            gso_seen.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(f) = ring.push_wait(Frame { buf, len }, Duration::from_secs(1)) {
            ring.put_buf(f.buf);
        }
    }
}

/// The guest side, in its own namespace: a TAP, an address, one connection.
fn guest(
    mode: Mode,
    v6: bool,
    job: Job,
    port: u16,
    tap_tx: mpsc::Sender<Tap>,
    ready: mpsc::Receiver<()>,
) -> (Transfer, (TcpErrors, TcpErrors)) {
    unshare_net();
    let tap = open_tap(mode);
    ip(&["link", "set", "lo", "up"]);
    ip(&["link", "set", "eth0", "mtu", "1500", "up"]);
    ip(&["addr", "add", "192.168.33.15/24", "dev", "eth0"]);
    if v6 {
        ip(&[
            "-6",
            "addr",
            "add",
            "fd00:33::15/64",
            "dev",
            "eth0",
            "nodad",
        ]);
    }
    tap_tx.send(tap).unwrap();
    ready.recv_timeout(STEP).expect("the stack starts");
    let before = tcp_errors();
    let pat = pattern();
    let gw = if v6 {
        SocketAddr::from(([0xfd00, 0x33, 0, 0, 0, 0, 0, 1], port))
    } else {
        SocketAddr::from(([192, 168, 33, 1], port))
    };
    let mut s = TcpStream::connect_timeout(&gw, STEP).expect("connect through uipd");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    send(&mut s, job, &pat);
    let down = recv(&mut s, &pat);
    (down, (before, tcp_errors()))
}

fn run(mode: Mode, job: Job) -> Outcome {
    run_family(mode, false, job)
}

/// [`run`] over IPv6 when `v6`.
fn run_family(mode: Mode, v6: bool, job: Job) -> Outcome {
    std::thread::spawn(move || run_in_outer_netns(mode, v6, job))
        .join()
        .expect("test thread")
}

fn run_in_outer_netns(mode: Mode, v6: bool, job: Job) -> Outcome {
    unshare_net();
    ip(&["link", "set", "lo", "up"]);
    let listener = TcpListener::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" }).unwrap();
    let port = listener.local_addr().unwrap().port();

    let (tap_tx, tap_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let guest = std::thread::spawn(move || guest(mode, v6, job, port, tap_tx, ready_rx));
    let tap = tap_rx.recv_timeout(STEP).expect("the guest's TAP");

    let vnet = mode != Mode::Off;
    let buf_size = if vnet {
        vnet_hdr::HEADER_LEN + 14 + 65535 + 64
    } else {
        1514 + 4
    };
    let ring = Arc::new(FrameRing::new(512, buf_size).unwrap());
    let shared = Arc::new(Shared::default());
    let stack = Stack::new(Config {
        mtu: 1500,
        offload: mode.offload(),
        ..Config::default()
    });
    // Frames reach the worker through its inbox, from the reader thread
    // below (which also checks the raw frames): the ring-fed frontend path.
    let worker = Worker {
        index: 0,
        stack,
        inboxes: vec![ring.clone()],
        port_out: PortOut::Tap(tap.as_raw_fd()),
        port_reader: None,
        shared: shared.clone(),
        cpu: None,
        outbound: (None, None),
        poll_us: 0,
        hash_steer: false,
        io: uipd::dataplane::io::IoEngine::Auto,
    };
    let worker = std::thread::Builder::new()
        .name("uipd-w0".into())
        .spawn(move || worker.run())
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let gso_seen = Arc::new(AtomicU64::new(0));
    let max_len = Arc::new(AtomicU64::new(0));
    let reader = {
        let (tap, ring, stop, g, m) = (
            tap.try_clone().unwrap(),
            ring.clone(),
            stop.clone(),
            gso_seen.clone(),
            max_len.clone(),
        );
        std::thread::spawn(move || port_reader(tap, ring, vnet, stop, g, m))
    };
    ready_tx.send(()).unwrap();

    // Host side: accept (bounded), receive the upload, send the download.
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + STEP;
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no connection through uipd");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(STEP)).unwrap();
    conn.set_write_timeout(Some(STEP)).unwrap();
    let pat = pattern();
    let up = recv(&mut conn, &pat);
    send(&mut conn, job, &pat);
    let (down, guest_tcp_errors) = guest.join().expect("guest thread");
    drop(conn);

    shared.stop.store(true, Ordering::SeqCst);
    ring.kick();
    let stats = worker.join().unwrap().expect("worker");
    let (stack, worker) = (stats.stack, stats.worker);
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    drop(tap);
    Outcome {
        up,
        down,
        stack,
        worker,
        rx_gso_seen: gso_seen.load(Ordering::Relaxed),
        rx_max_len: max_len.load(Ordering::Relaxed),
        guest_tcp_errors,
    }
}

fn mbit(b: (u64, Duration)) -> f64 {
    b.0 as f64 * 8.0 / b.1.as_secs_f64().max(1e-9) / 1e6
}

fn check_exact(mode: Mode, o: &Outcome, total: usize) {
    eprintln!(
        "{mode:?}: up {:.0} Mbit/s, down {:.0} Mbit/s, rx_gso_seen {}, rx_max_len {}, \
         stack rx_gso {} tx_gso {} rx_frames {} tx_frames {}, port_errors {}, guest tcp errors {:?}",
        mbit(o.up),
        mbit(o.down),
        o.rx_gso_seen,
        o.rx_max_len,
        o.stack.rx_gso_frames,
        o.stack.tx_gso_frames,
        o.stack.rx_frames,
        o.stack.tx_frames,
        o.worker.port_errors,
        o.guest_tcp_errors,
    );
    assert_eq!(o.up.0, total as u64, "guest → host byte count");
    assert_eq!(o.down.0, total as u64, "host → guest byte count");
    assert_eq!(o.worker.port_errors, 0, "the TAP took every frame");
    let ((csum0, err0), (csum1, err1)) = o.guest_tcp_errors;
    assert_eq!(csum1, csum0, "no TCP checksum errors in the namespace");
    assert_eq!(err1, err0, "no TCP input errors in the namespace");
    for (name, v) in o.stack.iter() {
        if name.starts_with("drops_") {
            assert!(
                matches!(name, "drops_ipv6" | "drops_not_for_us") || v == 0,
                "{name} = {v}"
            );
        }
    }
}

#[test]
fn tso_and_gso_32mib_each_way_byte_exact() {
    if !can_run() {
        return;
    }
    let total = 32 * MIB;
    let o = run(Mode::Full, Job::Exact(total));
    check_exact(Mode::Full, &o, total);
    assert!(
        o.rx_gso_seen > 0 && o.stack.rx_gso_frames > 0,
        "the namespace sent GSO super-frames"
    );
    assert!(o.rx_max_len > 12 + 1514, "frames over the MTU came in");
    assert!(
        o.stack.tx_gso_frames > 0,
        "we sent TSO super-frames and the transfer still worked"
    );
}

#[test]
fn tso6_32mib_each_way_byte_exact() {
    if !can_run() {
        return;
    }
    let total = 32 * MIB;
    let o = run_family(Mode::Full, true, Job::Exact(total));
    check_exact(Mode::Full, &o, total);
    assert_eq!(o.stack.tcp_opened, 1);
    assert!(
        o.rx_gso_seen > 0 && o.stack.rx_gso_frames > 0,
        "the namespace sent TSO6 super-frames"
    );
    assert!(o.rx_max_len > 12 + 1514, "frames over the MTU came in");
    assert!(
        o.stack.tx_gso_frames > 0,
        "we sent TSO6 super-frames and the transfer still worked"
    );
}

#[test]
fn csum_offload_without_tso_32mib_each_way_byte_exact() {
    if !can_run() {
        return;
    }
    let total = 32 * MIB;
    let o = run(Mode::Csum, Job::Exact(total));
    check_exact(Mode::Csum, &o, total);
    assert_eq!(o.stack.tx_gso_frames, 0);
    assert_eq!(o.stack.rx_gso_frames, 0, "no GSO without TUN_F_TSO4");
    assert!(o.rx_max_len <= 12 + 1514);
}

/// Print-only measurement (speed is a benchmark, not a timed test: it asserts nothing).
#[test]
#[ignore = "measurement: 20 s; run with --ignored --nocapture"]
fn offload_throughput_on_vs_off() {
    if !can_run() {
        return;
    }
    let d = Duration::from_secs(5);
    let mut rows = Vec::new();
    for mode in [Mode::Off, Mode::Full, Mode::Csum] {
        let o = run(mode, Job::Timed(d));
        rows.push((
            mode,
            mbit(o.up),
            mbit(o.down),
            o.stack.rx_frames,
            o.stack.tx_frames,
        ));
    }
    eprintln!("MTU 1500, 5 s each way, Mbit/s at the receiver:");
    for (mode, up, down, rx, tx) in &rows {
        eprintln!(
            "  {mode:?}: ns→host {up:>8.0}   host→ns {down:>8.0}   (frames from ns {rx}, to ns {tx})"
        );
    }
}
