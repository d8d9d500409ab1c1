//! Integration tests for the namespace frontend (`uipd::dataplane::{netns, tap}`).
//!
//! The parent side runs in this test process; the helper is the `uipd` binary
//! (`CARGO_BIN_EXE_uipd`), whose `main` dispatches `__uipd-netns-child`. Tests
//! need root and `/dev/net/tun` (TESTING.md §5); without them they print
//! "skipped" and pass. All traffic stays inside namespaces these tests create,
//! every wait is bounded, and only our own children are signalled, by PID.
//!
//! The unprivileged tests run this test binary again, as uid 65534, with
//! `UIPD_NETNS_PROBE` set and `--ignored --exact <probe>`: the ignored probe
//! tests below are those entry points, and do nothing in a normal run.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use uipd::dataplane::netns::{self, NetConfig, NetnsError, Spawned};
use uipd::dataplane::tap::{Tap, TapError, TapFlags};

const HELPER: &str = env!("CARGO_BIN_EXE_uipd");
const PROBE_ENV: &str = "UIPD_NETNS_PROBE";
const BUSYBOX: &str = "/bin/busybox";

fn can_run() -> bool {
    // SAFETY: geteuid cannot fail and takes no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root && Path::new("/dev/net/tun").exists();
    if !ok {
        eprintln!("skipped: needs root and /dev/net/tun");
    }
    ok
}

fn argv(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn sh(script: &str) -> Vec<OsString> {
    argv(&["sh", "-c", script])
}

fn spawn(cfg: &NetConfig, argv: &[OsString]) -> Result<Spawned, NetnsError> {
    netns::spawn_with_helper(cfg, argv, Path::new(HELPER))
}

/// Waits at most `limit` for the command; kills it (our own child, by PID) and panics after.
fn wait_bounded(sp: &mut Spawned, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(code) = sp.try_wait().expect("try_wait") {
            return code;
        }
        if Instant::now() > deadline {
            sp.kill(libc::SIGKILL).expect("kill");
            let code = sp.wait().expect("wait");
            panic!(
                "command {} ran over {limit:?} (killed, code {code})",
                sp.pid
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "uipd-netns-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `script` in a spawned namespace and returns (exit code, its stdout).
fn run_in_ns(cfg: &NetConfig, script: &str) -> (i32, String) {
    let dir = TempDir::new("out");
    let out = dir.0.join("stdout");
    let full = format!("exec > '{}' 2>&1; {script}", out.display());
    let mut sp = spawn(cfg, &sh(&full)).expect("spawn");
    sp.start().expect("start");
    let code = wait_bounded(&mut sp, Duration::from_secs(20));
    (code, fs::read_to_string(&out).unwrap_or_default())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

const CHECK_SCRIPT: &str = "id -u; cat /sys/class/net/eth0/mtu; ip -4 addr show eth0; ip route; \
                            cat /etc/resolv.conf; ip link show lo";

fn assert_configured(out: &str, mtu: u16) {
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("0"), "uid inside the namespace: {out}");
    assert_eq!(lines.next(), Some(mtu.to_string().as_str()), "MTU: {out}");
    assert!(out.contains("inet 192.168.33.15/24"), "address: {out}");
    assert!(out.contains("brd 192.168.33.255"), "broadcast: {out}");
    assert!(
        out.contains("default via 192.168.33.1 dev eth0"),
        "route: {out}"
    );
    assert!(
        out.contains("nameserver 192.168.33.1"),
        "resolv.conf: {out}"
    );
    assert!(out.contains("LOOPBACK,UP"), "lo up: {out}");
}

#[test]
fn spawn_configures_address_route_mtu_and_resolv_conf() {
    if !can_run() {
        return;
    }
    let host_resolv = fs::read("/etc/resolv.conf").ok();
    let cfg = NetConfig {
        mtu: 1400,
        guest_mac: Some([0x02, 0x15, 0x15, 0x15, 0x15, 0x15]),
        ..NetConfig::default()
    };
    let (code, out) = run_in_ns(
        &cfg,
        &format!("{CHECK_SCRIPT}; ip link show eth0; echo cgroups: $(ls /sys/fs/cgroup | wc -l)"),
    );
    assert_eq!(code, 0, "{out}");
    assert_configured(&out, 1400);
    // The fresh sysfs got the host's /sys submounts (cgroups) back.
    let host_cgroups = fs::read_dir("/sys/fs/cgroup").map_or(0, Iterator::count);
    assert!(out.contains(&format!("cgroups: {host_cgroups}\n")), "{out}");
    assert!(out.contains("link/ether 02:15:15:15:15:15"), "MAC: {out}");
    // The bind mount stayed in the command's private mount namespace.
    assert_eq!(fs::read("/etc/resolv.conf").ok(), host_resolv);
}

#[test]
fn exit_status_propagates() {
    if !can_run() {
        return;
    }
    let cfg = NetConfig::default();
    let (code, _) = run_in_ns(&cfg, "exit 7");
    assert_eq!(code, 7);
    let (code, _) = run_in_ns(&cfg, "kill -9 $$");
    assert_eq!(code, 128 + 9);
}

#[test]
fn no_config_leaves_eth0_without_ipv4() {
    if !can_run() {
        return;
    }
    let cfg = NetConfig {
        configure: false,
        mtu: 9000,
        ..NetConfig::default()
    };
    let (code, out) = run_in_ns(
        &cfg,
        "cat /sys/class/net/eth0/mtu; ip -4 addr show eth0; echo routes:; ip -4 route; ip link show eth0",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("9000\n"), "{out}");
    assert!(!out.contains("inet "), "{out}");
    assert!(
        out.contains("routes:\n") && !out.contains("default via"),
        "{out}"
    );
    assert!(out.contains("eth0: <BROADCAST,MULTICAST,UP"), "{out}");
}

#[test]
fn missing_command_is_a_clear_error() {
    if !can_run() {
        return;
    }
    let err = spawn(&NetConfig::default(), &argv(&["uipd-no-such-command"])).unwrap_err();
    assert!(matches!(err, NetnsError::CommandNotFound(_)), "{err:?}");
    assert_eq!(err.to_string(), "command not found: uipd-no-such-command");
    let err = spawn(&NetConfig::default(), &[]).unwrap_err();
    assert!(matches!(err, NetnsError::EmptyCommand), "{err:?}");
}

#[test]
fn exec_failure_in_the_namespace_exits_127() {
    if !can_run() {
        return;
    }
    // Executable, so the parent's PATH check passes, but its interpreter is missing:
    // execve fails with ENOENT inside the helper.
    let dir = TempDir::new("exec");
    let script = dir.0.join("bad-interp");
    fs::write(&script, "#!/nonexistent/uipd-interp\n").unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut sp = spawn(&NetConfig::default(), &[script.into_os_string()]).expect("spawn");
    sp.start().expect("start");
    assert_eq!(wait_bounded(&mut sp, Duration::from_secs(10)), 127);
}

#[test]
fn helper_setup_errors_come_back_typed() {
    if !can_run() {
        return;
    }
    // `lo` exists in every new namespace and is not a TAP: TUNSETIFF fails in the
    // helper, and the error record crosses the socketpair.
    let cfg = NetConfig {
        ifname: "lo".into(),
        ..NetConfig::default()
    };
    let err = spawn(&cfg, &argv(&["true"])).unwrap_err();
    match &err {
        NetnsError::Tap(TapError::SetIff { name, source }) => {
            assert_eq!(name, "lo");
            assert!(source.raw_os_error().is_some(), "{err:?}");
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(
        err.to_string().contains("cannot create TAP device \"lo\""),
        "{err}"
    );
}

#[test]
fn start_is_once_and_wait_without_start_ends_the_helper() {
    if !can_run() {
        return;
    }
    let mut sp = spawn(&NetConfig::default(), &argv(&["true"])).expect("spawn");
    // Cancelled: the helper sees EOF on the go channel and exits 1; true never runs.
    sp.cancel();
    assert_eq!(wait_bounded(&mut sp, Duration::from_secs(10)), 1);
    assert!(matches!(sp.start(), Err(NetnsError::AlreadyStarted)));

    let mut sp = spawn(&NetConfig::default(), &argv(&["true"])).expect("spawn");
    sp.start().expect("start");
    assert!(matches!(sp.start(), Err(NetnsError::AlreadyStarted)));
    assert_eq!(wait_bounded(&mut sp, Duration::from_secs(10)), 0);
}

#[test]
fn dropping_spawned_kills_the_command() {
    if !can_run() {
        return;
    }
    let mut sp = spawn(&NetConfig::default(), &argv(&["sleep", "30"])).expect("spawn");
    sp.start().expect("start");
    let pid = sp.pid;
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(sp.try_wait().expect("try_wait"), None);
    drop(sp);
    // Reaped by drop, so /proc/PID is gone (barring PID reuse in these few µs).
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

// --- Frames on the TAP: ARP, then an ICMP echo round trip ------------------

const GW_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

/// Waits up to `deadline` for a frame accepted by `pick`.
fn read_until(tap: &Tap, deadline: Instant, pick: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: `pfd` is one live pollfd for the call.
        let n = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        if n <= 0 {
            continue;
        }
        let len = tap.read_frame(&mut buf).expect("read_frame");
        if pick(&buf[..len]) {
            return Some(buf[..len].to_vec());
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap()
}

#[test]
fn frames_flow_both_ways_on_the_tap() {
    if !can_run() {
        return;
    }
    let cfg = NetConfig {
        guest_mac: Some([0x00, 0x15, 0x15, 0x15, 0x15, 0x15]),
        ..NetConfig::default()
    };
    let ping = argv(&[BUSYBOX, "ping", "-c1", "-W5", "192.168.33.1"]);
    let mut sp = spawn(&cfg, &ping).expect("spawn");
    let reader = sp.tap.try_clone().expect("try_clone");
    sp.start().expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);

    // ARP request who-has 192.168.33.1 tell 192.168.33.15.
    let arp = read_until(&reader, deadline, |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06]
    })
    .expect("no ARP request within 10 s");
    assert_eq!(&arp[0..6], &[0xff; 6], "broadcast");
    assert_eq!(&arp[6..12], &cfg.guest_mac.unwrap(), "source MAC");
    assert_eq!(&arp[20..22], &[0, 1], "op = request");
    assert_eq!(&arp[28..32], &[192, 168, 33, 15], "sender IP");
    assert_eq!(&arp[38..42], &[192, 168, 33, 1], "target IP");

    // Answer it from the "gateway".
    let mut reply = Vec::with_capacity(42);
    reply.extend_from_slice(&arp[6..12]);
    reply.extend_from_slice(&GW_MAC);
    reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    reply.extend_from_slice(&GW_MAC);
    reply.extend_from_slice(&[192, 168, 33, 1]);
    reply.extend_from_slice(&arp[22..28]);
    reply.extend_from_slice(&[192, 168, 33, 15]);
    assert_eq!(sp.tap.write_frame(&reply).expect("write ARP reply"), 42);

    // The echo request now goes to our MAC; answer it so ping exits 0.
    let req = read_until(&reader, deadline, |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 8
    })
    .expect("no ICMP echo request within 10 s");
    assert_eq!(&req[0..6], &GW_MAC, "sent to the MAC from our ARP reply");
    assert_eq!(&req[30..34], &[192, 168, 33, 1]);
    let ihl = usize::from(req[14] & 0x0f) * 4;
    let mut echo = req.clone();
    echo[0..6].copy_from_slice(&req[6..12]);
    echo[6..12].copy_from_slice(&GW_MAC);
    echo[26..30].copy_from_slice(&req[30..34]); // swapping addresses keeps the IP checksum
    echo[30..34].copy_from_slice(&req[26..30]);
    let icmp = 14 + ihl;
    echo[icmp] = 0; // echo reply
    echo[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
    let sum = checksum(&echo[icmp..]);
    echo[icmp + 2..icmp + 4].copy_from_slice(&sum.to_be_bytes());
    sp.tap.write_frame(&echo).expect("write echo reply");

    assert_eq!(
        wait_bounded(&mut sp, Duration::from_secs(10)),
        0,
        "ping got its reply"
    );
}

// --- Several queues and IFF_VNET_HDR ---------------------------------------

/// Size of the virtio-net header the kernel uses until `TUNSETVNETHDRSZ` changes it.
const VNET_HDR_LEN: usize = 10;

/// Waits up to `deadline` for a frame accepted by `pick` on any of `taps`; returns
/// the queue it came on and the frame as read (with its vnet header, if any).
fn read_any(
    taps: &[Tap],
    deadline: Instant,
    pick: impl Fn(&[u8]) -> bool,
) -> Option<(usize, Vec<u8>)> {
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfds: Vec<libc::pollfd> = taps
            .iter()
            .map(|t| libc::pollfd {
                fd: t.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        let nfds = libc::nfds_t::try_from(pfds.len()).unwrap();
        // SAFETY: `pfds` is a live array of `nfds` pollfds for the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), nfds, ms) };
        if n <= 0 {
            continue;
        }
        for (q, pfd) in pfds.iter().enumerate() {
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            let len = taps[q].read_frame(&mut buf).expect("read_frame");
            if pick(&buf[..len]) {
                return Some((q, buf[..len].to_vec()));
            }
        }
    }
}

/// Plays the gateway for one `ping -c1 192.168.33.1` in a spawned namespace: answers
/// its ARP request and its echo request, writing both answers on queue `write_q`.
/// Frames on the TAP carry `hdr` bytes of vnet header (0 or [`VNET_HDR_LEN`]); the
/// answers get an all-zero one. Returns the ARP request as read, header included.
fn answer_one_ping(taps: &[Tap], write_q: usize, hdr: usize, mac: [u8; 6]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let write = |frame: &[u8]| {
        let mut out = vec![0u8; hdr];
        out.extend_from_slice(frame);
        let n = taps[write_q].write_frame(&out).expect("write frame");
        assert_eq!(n, out.len());
    };
    let (_, arp_raw) = read_any(taps, deadline, |f| {
        f.len() >= hdr + 42 && f[hdr + 12..hdr + 14] == [0x08, 0x06]
    })
    .expect("no ARP request within 10 s");
    let arp = &arp_raw[hdr..];
    assert_eq!(&arp[0..6], &[0xff; 6], "broadcast");
    assert_eq!(&arp[6..12], &mac, "source MAC");
    assert_eq!(&arp[38..42], &[192, 168, 33, 1], "target IP");
    let mut reply = Vec::with_capacity(42);
    reply.extend_from_slice(&arp[6..12]);
    reply.extend_from_slice(&GW_MAC);
    reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    reply.extend_from_slice(&GW_MAC);
    reply.extend_from_slice(&[192, 168, 33, 1]);
    reply.extend_from_slice(&arp[22..28]);
    reply.extend_from_slice(&[192, 168, 33, 15]);
    write(&reply);

    let (_, req_raw) = read_any(taps, deadline, |f| {
        let f = &f[hdr.min(f.len())..];
        f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 8
    })
    .expect("no ICMP echo request within 10 s");
    let req = &req_raw[hdr..];
    assert_eq!(&req[0..6], &GW_MAC, "sent to the MAC from our ARP reply");
    let ihl = usize::from(req[14] & 0x0f) * 4;
    let mut echo = req.to_vec();
    echo[0..6].copy_from_slice(&req[6..12]);
    echo[6..12].copy_from_slice(&GW_MAC);
    echo[26..30].copy_from_slice(&req[30..34]);
    echo[30..34].copy_from_slice(&req[26..30]);
    let icmp = 14 + ihl;
    echo[icmp] = 0;
    echo[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
    let sum = checksum(&echo[icmp..]);
    echo[icmp + 2..icmp + 4].copy_from_slice(&sum.to_be_bytes());
    write(&echo);
    arp_raw
}

/// Spawns `ping -c1 192.168.33.1` after `pre` (shell, output to a file) with `cfg`,
/// plays the gateway on queue `write_q`, and returns the ARP request as read and the
/// script's output. Asserts ping got its reply.
fn ping_through_queues(cfg: &NetConfig, pre: &str, write_q: usize) -> (Vec<u8>, String) {
    let dir = TempDir::new("mq");
    let out = dir.0.join("stdout");
    let script = format!(
        "exec > '{}' 2>&1; {pre}; exec {BUSYBOX} ping -c1 -W5 192.168.33.1",
        out.display()
    );
    let mut sp = spawn(cfg, &sh(&script)).expect("spawn");
    assert_eq!(sp.taps.len(), cfg.queues, "one fd per queue");
    assert!(sp.taps.iter().all(|t| t.name() == cfg.ifname));
    assert_eq!(sp.tap.name(), cfg.ifname);
    let fds: std::collections::HashSet<i32> = sp
        .taps
        .iter()
        .map(Tap::as_raw_fd)
        .chain([sp.tap.as_raw_fd()])
        .collect();
    assert_eq!(fds.len(), cfg.queues + 1, "distinct fds");
    for t in &sp.taps {
        t.set_nonblocking(true).expect("set_nonblocking");
    }
    sp.start().expect("start");
    let hdr = if cfg.vnet_hdr { VNET_HDR_LEN } else { 0 };
    let arp = answer_one_ping(&sp.taps, write_q, hdr, cfg.guest_mac.unwrap());
    let code = wait_bounded(&mut sp, Duration::from_secs(10));
    let text = fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(code, 0, "ping got its reply: {text}");
    (arp, text)
}

#[test]
fn spawn_with_four_queues_passes_four_fds_that_all_carry_frames() {
    if !can_run() {
        return;
    }
    let cfg = NetConfig {
        guest_mac: Some([0x00, 0x15, 0x15, 0x15, 0x15, 0x16]),
        queues: 4,
        ..NetConfig::default()
    };
    let (arp, out) = ping_through_queues(
        &cfg,
        "echo queues: $(ls /sys/class/net/eth0/queues); cat /sys/class/net/eth0/tun_flags",
        2,
    );
    assert!(
        out.contains("queues: rx-0 rx-1 rx-2 rx-3 tx-0 tx-1 tx-2 tx-3\n"),
        "{out}"
    );
    // IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE, no IFF_VNET_HDR.
    assert!(out.contains("\n0x1102\n"), "tun_flags: {out}");
    assert_eq!(arp.len(), 42, "no vnet header: {arp:02x?}");
}

#[test]
fn vnet_hdr_prefixes_frames_with_a_virtio_net_header() {
    if !can_run() {
        return;
    }
    let cfg = NetConfig {
        guest_mac: Some([0x00, 0x15, 0x15, 0x15, 0x15, 0x17]),
        queues: 2,
        vnet_hdr: true,
        ..NetConfig::default()
    };
    let (arp, out) = ping_through_queues(&cfg, "cat /sys/class/net/eth0/tun_flags", 1);
    // IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE | IFF_VNET_HDR.
    assert!(out.starts_with("0x5102\n"), "tun_flags: {out}");
    // A plain ARP request: no checksum offload, no GSO, so an all-zero header, then
    // the Ethernet frame (padded by nobody: 42 bytes).
    assert_eq!(arp.len(), VNET_HDR_LEN + 42, "{arp:02x?}");
    assert_eq!(&arp[..VNET_HDR_LEN], &[0; VNET_HDR_LEN], "{arp:02x?}");
    assert_eq!(&arp[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14], &[0x08, 0x06]);

    // One queue with vnet_hdr: spawn's single fd carries the header too.
    let cfg = NetConfig {
        guest_mac: Some([0x00, 0x15, 0x15, 0x15, 0x15, 0x18]),
        vnet_hdr: true,
        ..NetConfig::default()
    };
    let (arp, out) = ping_through_queues(&cfg, "cat /sys/class/net/eth0/tun_flags", 0);
    // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR.
    assert!(out.starts_with("0x5002\n"), "tun_flags: {out}");
    assert_eq!(&arp[..VNET_HDR_LEN], &[0; VNET_HDR_LEN], "{arp:02x?}");
}

#[test]
fn spawn_with_the_kernels_most_queues() {
    if !can_run() {
        return;
    }
    let cfg = NetConfig {
        queues: uipd::dataplane::tap::MAX_TAP_QUEUES,
        configure: false,
        ..NetConfig::default()
    };
    let mut sp = spawn(&cfg, &argv(&["true"])).expect("spawn with 256 queues");
    assert_eq!(sp.taps.len(), 256);
    sp.cancel();
    assert_eq!(wait_bounded(&mut sp, Duration::from_secs(10)), 1);
}

#[test]
fn queue_counts_out_of_range_are_rejected_before_the_helper_runs() {
    for queues in [0, 257] {
        let cfg = NetConfig {
            queues,
            ..NetConfig::default()
        };
        let err = spawn(&cfg, &argv(&["true"])).unwrap_err();
        assert!(matches!(err, NetnsError::InvalidConfig(_)), "{err:?}");
        assert!(err.to_string().contains("1 to 256"), "{err}");
        let err = netns::attach_queues("/proc/self/ns/net", &cfg).unwrap_err();
        assert!(matches!(err, NetnsError::InvalidConfig(_)), "{err:?}");
    }
    assert!(matches!(
        Tap::open_queues("eth0", 257, TapFlags::default()),
        Err(TapError::QueueCount(257))
    ));
}

// --- --netns attach --------------------------------------------------------

/// A named namespace from `ip netns add`, deleted on drop (also when a test fails).
struct NamedNetns(String);

impl NamedNetns {
    /// `ip netns add uipdtest-<pid>-<suffix>`.
    fn new(suffix: &str) -> NamedNetns {
        let name = format!("uipdtest-{}-{suffix}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add")
            .success();
        assert!(ok, "ip netns add {name}");
        NamedNetns(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn thread_netns() -> PathBuf {
    fs::read_link("/proc/thread-self/ns/net").expect("readlink")
}

#[test]
fn attach_creates_the_tap_in_a_named_netns() {
    if !can_run() {
        return;
    }
    let ns = NamedNetns::new("named");
    let before = thread_netns();
    let cfg = NetConfig {
        ifname: "uipdt0".into(),
        mtu: 4000,
        ..NetConfig::default()
    };
    let tap = netns::attach(&ns.path(), &cfg).expect("attach");
    assert_eq!(tap.name(), "uipdt0");
    assert_eq!(thread_netns(), before, "the thread came back");

    let out = ns.exec(&["ip", "-4", "addr", "show", "uipdt0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("mtu 4000"), "{text}");
    assert!(text.contains("inet 192.168.33.15/24"), "{text}");
    let route = ns.exec(&["ip", "route"]);
    assert!(
        String::from_utf8_lossy(&route.stdout).contains("default via 192.168.33.1 dev uipdt0"),
        "{route:?}"
    );
    // Not in our own namespace.
    let here = Command::new("ip")
        .args(["link", "show", "uipdt0"])
        .output()
        .unwrap();
    assert!(
        !here.status.success(),
        "uipdt0 leaked into the test's namespace"
    );

    // The TAP is non-persistent: closing the fd removes it.
    drop(tap);
    let out = ns.exec(&["ip", "link", "show", "uipdt0"]);
    assert!(!out.status.success(), "TAP outlived its fd");
}

/// `lo` of an attached namespace: left down unless `loopback` (slirp4netns
/// `-c` brings it up, and podman's containers have no other way to get it).
#[test]
fn attach_brings_lo_up_only_when_asked() {
    if !can_run() {
        return;
    }
    let lo_up = |ns: &NamedNetns| {
        let out = ns.exec(&["ip", "-o", "link", "show", "lo"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).contains(",UP")
    };
    for loopback in [false, true] {
        let ns = NamedNetns::new(if loopback { "lo1" } else { "lo0" });
        assert!(!lo_up(&ns), "a new namespace's lo is down");
        let cfg = NetConfig {
            ifname: "uipdt0".into(),
            loopback,
            ..NetConfig::default()
        };
        let tap = netns::attach(&ns.path(), &cfg).expect("attach");
        assert_eq!(lo_up(&ns), loopback, "loopback: {loopback}");
        drop(tap);
    }
}

#[test]
fn attach_queues_opens_every_queue_in_a_named_netns() {
    if !can_run() {
        return;
    }
    let ns = NamedNetns::new("mq");
    let before = thread_netns();
    let cfg = NetConfig {
        ifname: "uipdt3".into(),
        queues: 2,
        ..NetConfig::default()
    };
    let mut taps = netns::attach_queues(&ns.path(), &cfg).expect("attach_queues");
    assert_eq!(thread_netns(), before, "the thread came back");
    assert_eq!(taps.len(), 2);
    assert!(taps.iter().all(|t| t.name() == "uipdt3"));
    assert_ne!(taps[0].as_raw_fd(), taps[1].as_raw_fd());

    let queues = || {
        let out = ns.exec(&["ls", "/sys/class/net/uipdt3/queues"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = queues();
    assert!(
        text.contains("tx-0\ntx-1\n") && !text.contains("tx-2"),
        "{text}"
    );
    let flags = ns.exec(&["cat", "/sys/class/net/uipdt3/tun_flags"]);
    assert_eq!(String::from_utf8_lossy(&flags.stdout), "0x1102\n");
    let addr = ns.exec(&["ip", "-4", "addr", "show", "uipdt3"]);
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains("inet 192.168.33.15/24"),
        "{addr:?}"
    );

    // Closing one queue detaches it; the interface lives until the last one goes.
    drop(taps.pop());
    let text = queues();
    assert!(text.contains("tx-0\n") && !text.contains("tx-1"), "{text}");
    drop(taps);
    let out = ns.exec(&["ip", "link", "show", "uipdt3"]);
    assert!(!out.status.success(), "TAP outlived its queues");

    // Plain attach with several queues keeps queue 0 only.
    let tap = netns::attach(&ns.path(), &cfg).expect("attach");
    assert_eq!(tap.name(), "uipdt3");
    let text = queues();
    assert!(text.contains("tx-0\n") && !text.contains("tx-1"), "{text}");
    assert_eq!(thread_netns(), before);
}

#[test]
fn attach_by_pid_without_config() {
    if !can_run() {
        return;
    }
    let mut sp = spawn(&NetConfig::default(), &argv(&["sleep", "20"])).expect("spawn");
    sp.start().expect("start");
    let cfg = NetConfig {
        ifname: "uipdt1".into(),
        configure: false,
        ..NetConfig::default()
    };
    let tap = netns::attach(&sp.pid.to_string(), &cfg).expect("attach by PID");
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", sp.pid))
        .args(["ip", "-4", "addr", "show", "uipdt1"])
        .output()
        .expect("nsenter");
    let linkout = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", sp.pid))
        .args(["ip", "link", "show", "uipdt1"])
        .output()
        .expect("nsenter");
    sp.kill(libc::SIGKILL).expect("kill");
    assert_eq!(wait_bounded(&mut sp, Duration::from_secs(10)), 128 + 9);
    assert!(linkout.status.success(), "{linkout:?}");
    assert!(
        String::from_utf8_lossy(&linkout.stdout).contains(",UP"),
        "{linkout:?}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("inet "),
        "{out:?}"
    );
    drop(tap);
}

#[test]
fn attach_to_a_missing_or_wrong_target_is_a_clear_error() {
    if !can_run() {
        return;
    }
    let before = thread_netns();
    let err = netns::attach("/run/netns/uipd-does-not-exist", &NetConfig::default()).unwrap_err();
    assert!(matches!(err, NetnsError::TargetNotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "network namespace \"/run/netns/uipd-does-not-exist\" does not exist"
    );
    let err = netns::attach("999999999", &NetConfig::default()).unwrap_err();
    assert!(matches!(err, NetnsError::TargetNotFound { .. }), "{err:?}");

    let err = netns::attach("/proc/self/ns/uts", &NetConfig::default()).unwrap_err();
    assert!(
        error_chain(&err).contains("not a network namespace"),
        "{err}"
    );
    assert_eq!(thread_netns(), before);

    // A TAP failure inside the target still brings the thread back.
    let ns = NamedNetns::new("bad");
    let bad = NetConfig {
        ifname: "lo".into(),
        ..NetConfig::default()
    };
    let err = netns::attach(&ns.path(), &bad).unwrap_err();
    assert!(
        matches!(err, NetnsError::Tap(TapError::SetIff { .. })),
        "{err:?}"
    );
    assert_eq!(thread_netns(), before);
}

// --- Unprivileged: the same binary as uid 65534 ----------------------------

/// Runs the ignored probe test `probe` as uid 65534 (`setpriv`), bounded by 60 s. With
/// `tun_dir`, first gives it a 0666 `/dev/net/tun` in a private mount namespace: a
/// tmpfs on `tun_dir` holds a fresh node that is bind-mounted over `/dev/net/tun`.
fn run_probe_unprivileged(probe: &str, mode: &str, tun_dir: Option<&Path>) -> Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", "60"]);
    if let Some(dir) = tun_dir {
        cmd.args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount -t tmpfs -o mode=755 uipdtest \"$1\" && mknod -m 666 \"$1/tun\" c 10 200 && \
                 mount --bind \"$1/tun\" /dev/net/tun && shift && exec \"$@\"",
            )
            .arg("sh")
            .arg(dir);
    }
    cmd.args([
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "env",
    ])
    .arg(format!("{PROBE_ENV}={mode}"))
    .arg(exe)
    .args([
        "--ignored",
        "--exact",
        probe,
        "--nocapture",
        "--test-threads=1",
    ])
    .current_dir("/")
    .output()
    .expect("run probe")
}

/// Whether uid 65534 may create user namespaces here.
fn userns_allowed() -> bool {
    let ok = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "unshare",
            "-U",
            "true",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: unprivileged user namespaces are not allowed here");
    }
    ok
}

#[test]
fn unprivileged_spawn_works_in_a_user_namespace() {
    if !can_run() || !userns_allowed() {
        return;
    }
    // /dev/net/tun is root-only (0600) on this machine; on most distributions it is
    // 0666. Give the probe a 0666 node in a private mount namespace of its own, so
    // nothing changes for the rest of the machine.
    let dir = TempDir::new("tun");
    let out = run_probe_unprivileged("probe_unprivileged_spawn", "spawn", Some(&dir.0));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("probe: outer uid 65534"), "{text}");
    assert!(text.contains("probe: exit 0"), "{text}");
    assert_configured(
        text.split("probe: begin\n").nth(1).expect("probe output"),
        1500,
    );
}

#[test]
fn unprivileged_without_tun_access_is_a_clear_error() {
    if !can_run() || !userns_allowed() {
        return;
    }
    let meta = fs::metadata("/dev/net/tun").unwrap();
    if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o006 == 0o006 {
        eprintln!("skipped: /dev/net/tun is world-accessible here");
        return;
    }
    let out = run_probe_unprivileged("probe_unprivileged_spawn", "no-tun", None);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("probe: error: no permission to open /dev/net/tun"),
        "{text}"
    );
}

/// Entry point for the unprivileged tests: does nothing unless `UIPD_NETNS_PROBE` is set.
#[test]
#[ignore = "run by the unprivileged tests as uid 65534"]
fn probe_unprivileged_spawn() {
    let Some(mode) = std::env::var_os(PROBE_ENV) else {
        return;
    };
    // SAFETY: geteuid cannot fail and takes no arguments.
    println!("probe: outer uid {}", unsafe { libc::geteuid() });
    let result = spawn(
        &NetConfig::default(),
        &sh(&format!("echo probe: begin; {CHECK_SCRIPT}")),
    );
    match (mode.to_str(), result) {
        (Some("spawn"), Ok(mut sp)) => {
            sp.start().expect("start");
            let code = wait_bounded(&mut sp, Duration::from_secs(20));
            println!("probe: exit {code}");
        }
        (Some("no-tun"), Err(e)) => {
            assert!(
                matches!(e, NetnsError::Tap(TapError::TunPermission(_))),
                "{e:?}"
            );
            println!("probe: error: {}", error_chain(&e));
        }
        (m, r) => panic!("probe mode {m:?}: unexpected {r:?}"),
    }
}

#[test]
fn tap_open_reports_bad_names_and_duplicates() {
    if !can_run() {
        return;
    }
    assert!(matches!(
        Tap::open("bad/name"),
        Err(TapError::InvalidName(_))
    ));
    // In a namespace of our own: a TAP, then a second open of the same name while
    // the first is attached (EBUSY).
    let ns = NamedNetns::new("dup");
    let cfg = NetConfig {
        ifname: "uipdt2".into(),
        configure: false,
        ..NetConfig::default()
    };
    let tap = netns::attach(&ns.path(), &cfg).expect("attach");
    let err = netns::attach(&ns.path(), &cfg).unwrap_err();
    assert!(
        matches!(err, NetnsError::Tap(TapError::SetIff { .. })),
        "{err:?}"
    );
    assert!(error_chain(&err).contains("uipdt2"), "{err}");
    let clone = tap.try_clone().expect("try_clone");
    assert_ne!(clone.as_raw_fd(), tap.as_raw_fd());
    assert_eq!(clone.name(), "uipdt2");
}
