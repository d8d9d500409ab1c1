//! The vhost-user socket under bad input: the real `uipd --vhost-user SOCK`
//! binary and a raw client that speaks vhost-user messages (12-byte header:
//! u32 request, u32 flags, u32 body size; fds by SCM_RIGHTS).
//!
//! For each misbehaviour (a message out of order, a memory table with
//! overlapping, missing or file-less regions, a vring outside memory, an
//! oversized or truncated message, an unknown request, a body the crate's
//! handler refuses) the test asserts that uipd logs an error naming the
//! problem, closes that connection (the client reads EOF), keeps running,
//! and serves the next, well-behaved client (GET_FEATURES answers with
//! VERSION_1, MRG_RXBUF and PROTOCOL_FEATURES). A last test connects and
//! disconnects five times and asserts uipd's open fds do not grow.
//!
//! Those tests move no frames. `hostile_rings_stop_the_queue_once` does:
//! a raw front-end sets up an RX and a TX vring in a memory file (written
//! with `pwrite`, seen by uipd through its shared mapping), then offers
//! rings that break the rules one connection at a time, and finally moves
//! an ARP request and its reply byte-exact. Memory regions are regular
//! files in the test's directory (mmap'ed shared by uipd as a memfd would
//! be).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const VERSION: u32 = 1;
const FLAG_REPLY: u32 = 1 << 2;

const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;

const F_MRG_RXBUF: u64 = 1 << 15;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const F_VERSION_1: u64 = 1 << 32;

/// A running `uipd --vhost-user` and its log.
struct Uipd {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Uipd {
    fn start(name: &str) -> Uipd {
        Uipd::start_with_log(name, "uipd=info")
    }

    /// With `RUST_LOG=rust_log` (the hostile test wants virtio-queue's
    /// own lines too).
    fn start_with_log(name: &str, rust_log: &str) -> Uipd {
        let dir = std::env::temp_dir().join(format!("uipd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let sock = dir.join("vhost.sock");
        let log = std::fs::File::create(dir.join("uipd.err")).expect("log file");
        let bin = std::env::var("UIPD_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_uipd").to_string());
        let child = Command::new(bin)
            .arg("--vhost-user")
            .arg(&sock)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start uipd");
        let u = Uipd { child, dir, sock };
        let t = Instant::now();
        while !u.sock.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "uipd did not create its socket:\n{}",
                u.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        u
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("uipd.err")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.sock).expect("connect to uipd");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Waits (bounded) for the `n`th log line containing `what`.
    fn expect_log(&self, what: &str, n: usize) -> String {
        let t = Instant::now();
        loop {
            let log = self.log();
            let hits: Vec<&str> = log.lines().filter(|l| l.contains(what)).collect();
            if hits.len() >= n {
                return hits[n - 1].to_string();
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "uipd did not log {what:?} ({n} times):\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "uipd exited:\n{}",
            self.log()
        );
    }

    /// Open fds of the uipd process.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/PID/fd")
            .count()
    }
}

impl Drop for Uipd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the PID of the child this test started (not
        // yet reaped, so the PID cannot have been reused).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let t = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if t.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn send(s: &UnixStream, request: u32, flags: u32, body: &[u8], fds: &[RawFd]) {
    let size = u32::try_from(body.len()).unwrap();
    let mut msg = Vec::new();
    msg.extend_from_slice(&request.to_le_bytes());
    msg.extend_from_slice(&flags.to_le_bytes());
    msg.extend_from_slice(&size.to_le_bytes());
    msg.extend_from_slice(body);
    let n = s.send_with_fds(&[&msg[..]], fds).expect("sendmsg");
    assert_eq!(n, msg.len(), "short sendmsg");
}

fn req(s: &UnixStream, request: u32, body: &[u8], fds: &[RawFd]) {
    send(s, request, VERSION, body, fds);
}

/// Reads one reply: (request, flags, body).
fn reply(s: &UnixStream) -> (u32, u32, Vec<u8>) {
    let mut r = s;
    let mut hdr = [0u8; 12];
    r.read_exact(&mut hdr).expect("reply header");
    let w = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
    let mut body = vec![0u8; w(8) as usize];
    r.read_exact(&mut body).expect("reply body");
    (w(0), w(4), body)
}

/// Asserts uipd closed `s`: the next read is EOF (a reset counts too)
/// within the socket's read timeout.
fn expect_closed(s: &UnixStream) {
    let mut r = s;
    let mut buf = [0u8; 256];
    let t = Instant::now();
    loop {
        match r.read(&mut buf) {
            Ok(0) => return,
            // A reply sent before the close (a NACK): read on.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("uipd did not close the connection: {e}"),
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no EOF");
    }
}

/// A well-behaved client: GET_FEATURES gets the expected feature bits.
fn good_client(u: &Uipd) {
    let s = u.connect();
    req(&s, GET_FEATURES, &[], &[]);
    let (r, flags, body) = reply(&s);
    assert_eq!(r, GET_FEATURES);
    assert_eq!(flags & 0x3, VERSION, "reply version");
    assert_eq!(flags & FLAG_REPLY, FLAG_REPLY, "reply flag");
    let f = u64::from_le_bytes(body[..8].try_into().expect("8-byte features"));
    for (name, bit) in [
        ("VERSION_1", F_VERSION_1),
        ("MRG_RXBUF", F_MRG_RXBUF),
        ("PROTOCOL_FEATURES", F_PROTOCOL_FEATURES),
    ] {
        assert_eq!(f & bit, bit, "GET_FEATURES {f:#x} lacks {name}");
    }
}

/// A file of `len` bytes to serve as guest memory.
fn mem_file(dir: &Path, name: &str, len: u64) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(name))
        .expect("memory file");
    f.set_len(len).expect("set_len");
    f
}

/// A SET_MEM_TABLE body: (guest address, size, VMM address, offset) each.
fn mem_table(regions: &[(u64, u64, u64, u64)], count: u32) -> Vec<u8> {
    let mut b = count.to_le_bytes().to_vec();
    b.extend_from_slice(&0u32.to_le_bytes());
    for &(gpa, size, vmm, off) in regions {
        for w in [gpa, size, vmm, off] {
            b.extend_from_slice(&w.to_le_bytes());
        }
    }
    b
}

fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    let mut b = index.to_le_bytes().to_vec();
    b.extend_from_slice(&0u32.to_le_bytes());
    for w in [desc, used, avail, 0] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b
}

fn state(index: u32, num: u32) -> Vec<u8> {
    let mut b = index.to_le_bytes().to_vec();
    b.extend_from_slice(&num.to_le_bytes());
    b
}

const MIB: u64 = 1 << 20;
/// The VMM address the test pretends guest memory is mapped at.
const VMM_BASE: u64 = 0x7f00_0000_0000;

/// Each bad input: a clear error in the log, the connection closed, uipd
/// still serving.
#[test]
fn bad_input_closes_only_that_connection() {
    let mut u = Uipd::start("vhost-proto-bad");
    let dir = u.dir.clone();
    good_client(&u);
    let m1 = mem_file(&dir, "m1", MIB);
    let m2 = mem_file(&dir, "m2", MIB);
    let small = mem_file(&dir, "small", 64 << 10);
    let kick = mem_file(&dir, "kick", 0);

    type Case<'a> = (&'a str, Box<dyn Fn(&UnixStream) + 'a>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "SET_VRING_KICK before SET_OWNER",
            Box::new(|s| req(s, SET_VRING_KICK, &0u64.to_le_bytes(), &[kick.as_raw_fd()])),
            "SET_VRING_KICK before SET_OWNER",
        ),
        (
            "SET_VRING_ADDR before SET_MEM_TABLE",
            Box::new(|s| {
                req(s, SET_OWNER, &[], &[]);
                req(
                    s,
                    SET_VRING_ADDR,
                    &vring_addr(0, VMM_BASE, VMM_BASE, VMM_BASE),
                    &[],
                );
            }),
            "SET_VRING_ADDR before SET_MEM_TABLE",
        ),
        (
            "SET_VRING_KICK before SET_MEM_TABLE",
            Box::new(|s| {
                req(s, SET_OWNER, &[], &[]);
                req(s, SET_VRING_KICK, &0u64.to_le_bytes(), &[kick.as_raw_fd()]);
            }),
            "SET_VRING_KICK before SET_MEM_TABLE",
        ),
        (
            "overlapping guest-physical regions",
            Box::new(|s| {
                req(s, SET_OWNER, &[], &[]);
                let t = mem_table(
                    &[(0, MIB, VMM_BASE, 0), (MIB / 2, MIB, VMM_BASE + MIB, 0)],
                    2,
                );
                req(s, SET_MEM_TABLE, &t, &[m1.as_raw_fd(), m2.as_raw_fd()]);
            }),
            "overlap in guest-physical memory",
        ),
        (
            "overlapping VMM regions",
            Box::new(|s| {
                req(s, SET_OWNER, &[], &[]);
                let t = mem_table(&[(0, MIB, VMM_BASE, 0), (MIB, MIB, VMM_BASE + 4096, 0)], 2);
                req(s, SET_MEM_TABLE, &t, &[m1.as_raw_fd(), m2.as_raw_fd()]);
            }),
            "overlap in the VMM's address space",
        ),
        (
            "a region without its fd",
            Box::new(|s| {
                req(s, SET_OWNER, &[], &[]);
                let t = mem_table(&[(0, MIB, VMM_BASE, 0), (MIB, MIB, VMM_BASE + MIB, 0)], 2);
                req(s, SET_MEM_TABLE, &t, &[m1.as_raw_fd()]);
            }),
            "a region is missing its memory",
        ),
        (
            // vm-memory would map it; the vring read in SET_VRING_ADDR
            // would then fault past the file's end (SIGBUS, all of uipd).
            "a region past the end of its file",
            Box::new(|s| {
                req(s, SET_OWNER, &[], &[]);
                let t = mem_table(&[(0, MIB, VMM_BASE, 0)], 1);
                req(s, SET_MEM_TABLE, &t, &[small.as_raw_fd()]);
                req(s, SET_VRING_NUM, &state(0, 256), &[]);
                let a = VMM_BASE + MIB / 2;
                req(
                    s,
                    SET_VRING_ADDR,
                    &vring_addr(0, a, a + 8192, a + 4096),
                    &[],
                );
            }),
            "extends past the end of its",
        ),
        (
            "a vring outside every region",
            Box::new(|s| {
                req(s, SET_OWNER, &[], &[]);
                let t = mem_table(&[(0, MIB, VMM_BASE, 0)], 1);
                req(s, SET_MEM_TABLE, &t, &[m1.as_raw_fd()]);
                req(s, SET_VRING_NUM, &state(0, 256), &[]);
                // The descriptor table starts inside but runs past the end.
                let d = VMM_BASE + MIB - 1024;
                req(
                    s,
                    SET_VRING_ADDR,
                    &vring_addr(0, d, VMM_BASE + 8192, VMM_BASE + 4096),
                    &[],
                );
            }),
            "the descriptor table at VMM address",
        ),
        (
            "an oversized message",
            Box::new(|s| {
                let mut w = s;
                let mut h = 2u32.to_le_bytes().to_vec();
                h.extend_from_slice(&VERSION.to_le_bytes());
                h.extend_from_slice(&1_000_000u32.to_le_bytes());
                w.write_all(&h).unwrap();
            }),
            "1000000-byte body (limit",
        ),
        (
            "a truncated message",
            Box::new(|s| {
                let mut w = s;
                req(s, SET_OWNER, &[], &[]);
                let mut h = SET_VRING_ADDR.to_le_bytes().to_vec();
                h.extend_from_slice(&VERSION.to_le_bytes());
                h.extend_from_slice(&40u32.to_le_bytes());
                h.extend_from_slice(&[0u8; 8]);
                w.write_all(&h).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
            }),
            "truncated message: the connection ended inside the 40-byte body of vhost-user SET_VRING_ADDR",
        ),
        (
            "an unknown request",
            Box::new(|s| req(s, 99, &[], &[])),
            "unknown vhost-user request 99",
        ),
        (
            // Well ordered but malformed: the crate's handler refuses it.
            "SET_VRING_NUM with a short body",
            Box::new(|s| {
                req(s, SET_OWNER, &[], &[]);
                req(s, SET_VRING_NUM, &[0u8; 4], &[]);
            }),
            "SET_VRING_NUM (8) refused",
        ),
    ];
    for (what, act, expect) in &cases {
        let s = u.connect();
        act(&s);
        expect_closed(&s);
        let line = u.expect_log(expect, 1);
        assert!(
            line.contains("ERROR"),
            "{what}: not logged as an error: {line}"
        );
        u.assert_running();
        good_client(&u);
        eprintln!("{what}: {line}");
    }
    u.assert_running();
}

/// Five connections that set up memory and disconnect leave uipd with the
/// fds it had before them.
#[test]
fn connections_do_not_leak_fds() {
    let u = Uipd::start("vhost-proto-fds");
    let m = mem_file(&u.dir, "m", MIB);
    let cycle = |n: usize| {
        let s = u.connect();
        req(&s, SET_OWNER, &[], &[]);
        req(&s, GET_FEATURES, &[], &[]);
        let _ = reply(&s);
        req(
            &s,
            SET_MEM_TABLE,
            &mem_table(&[(0, MIB, VMM_BASE, 0)], 1),
            &[m.as_raw_fd()],
        );
        drop(s);
        u.expect_log("the VMM disconnected", n);
    };
    // Settled: the next connection is accepted only after the previous
    // one's teardown, so wait (bounded) for the count to stop changing.
    let settled = |at_most: Option<usize>| {
        let t = Instant::now();
        let mut last = u.fds();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = u.fds();
            if now == last && at_most.is_none_or(|m| now <= m) {
                return now;
            }
            if t.elapsed() > Duration::from_secs(5) {
                return now;
            }
            last = now;
        }
    };
    cycle(1);
    let before = settled(None);
    for n in 2..=6 {
        cycle(n);
    }
    let after = settled(Some(before));
    assert!(
        after <= before,
        "uipd's open fds grew from {before} to {after} over 5 connections"
    );
    good_client(&u);
}

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;
/// Ring size of both test vrings.
const QN: u16 = 256;
/// Guest-physical layout of the memory file (region 0 at gpa 0).
const RX_DESC: u64 = 0x0000;
const RX_AVAIL: u64 = 0x1000;
const RX_USED: u64 = 0x2000;
const TX_DESC: u64 = 0x4000;
const TX_AVAIL: u64 = 0x5000;
const TX_USED: u64 = 0x6000;
const TX_BUF: u64 = 0x10000;
const RX_BUF: u64 = 0x20000;
const RX_BUF_LEN: u32 = 2048;
const RX_BUFS: u16 = 16;

const GUEST_MAC: [u8; 6] = [0x00, 0x15, 0x15, 0x15, 0x15, 0x15];
const GUEST_IP: [u8; 4] = [192, 168, 33, 15];
const GW_IP: [u8; 4] = [192, 168, 33, 1];

/// A raw front-end with guest memory in a file, one queue pair (RX 0,
/// TX 1) and their kick eventfds.
struct Frontend {
    /// The connection, held open for the front-end's lifetime.
    _conn: UnixStream,
    mem: std::fs::File,
    kicks: [vmm_sys_util::eventfd::EventFd; 2],
    _calls: [vmm_sys_util::eventfd::EventFd; 2],
}

impl Frontend {
    /// Connects and sets up memory and both vrings (features: VERSION_1
    /// only, so rings are enabled at once and the header is 12 bytes).
    /// `prepare` writes the rings before the kick fds start them.
    fn connect(u: &Uipd, name: &str, prepare: impl FnOnce(&std::fs::File)) -> Frontend {
        use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
        let mem = mem_file(&u.dir, name, MIB);
        prepare(&mem);
        let s = u.connect();
        req(&s, SET_OWNER, &[], &[]);
        req(&s, GET_FEATURES, &[], &[]);
        let (_, _, body) = reply(&s);
        let offered = u64::from_le_bytes(body[..8].try_into().unwrap());
        assert_ne!(offered & F_VERSION_1, 0);
        req(&s, SET_FEATURES, &F_VERSION_1.to_le_bytes(), &[]);
        req(
            &s,
            SET_MEM_TABLE,
            &mem_table(&[(0, MIB, VMM_BASE, 0)], 1),
            &[mem.as_raw_fd()],
        );
        let kicks = [
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ];
        let calls = [
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ];
        for (q, (desc, avail, used)) in [(RX_DESC, RX_AVAIL, RX_USED), (TX_DESC, TX_AVAIL, TX_USED)]
            .into_iter()
            .enumerate()
        {
            let q32 = u32::try_from(q).unwrap();
            req(&s, SET_VRING_NUM, &state(q32, u32::from(QN)), &[]);
            req(
                &s,
                SET_VRING_ADDR,
                &vring_addr(q32, VMM_BASE + desc, VMM_BASE + used, VMM_BASE + avail),
                &[],
            );
            req(&s, SET_VRING_BASE, &state(q32, 0), &[]);
            req(
                &s,
                SET_VRING_CALL,
                &(q as u64).to_le_bytes(),
                &[calls[q].as_raw_fd()],
            );
            req(
                &s,
                SET_VRING_KICK,
                &(q as u64).to_le_bytes(),
                &[kicks[q].as_raw_fd()],
            );
        }
        Frontend {
            _conn: s,
            mem,
            kicks,
            _calls: calls,
        }
    }

    fn kick(&self, q: usize) {
        self.kicks[q].write(1).unwrap();
    }

    fn used_idx(&self, used: u64) -> u16 {
        let mut b = [0u8; 2];
        std::os::unix::fs::FileExt::read_exact_at(&self.mem, &mut b, used + 2).unwrap();
        u16::from_le_bytes(b)
    }
}

fn put(f: &std::fs::File, at: u64, bytes: &[u8]) {
    std::os::unix::fs::FileExt::write_all_at(f, bytes, at).unwrap();
}

fn get(f: &std::fs::File, at: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(f, &mut v, at).unwrap();
    v
}

fn desc(f: &std::fs::File, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let mut b = addr.to_le_bytes().to_vec();
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&next.to_le_bytes());
    put(f, table + 16 * u64::from(i), &b);
}

/// The avail ring: `heads` in ring order, then the index `idx`.
fn avail(f: &std::fs::File, ring: u64, heads: &[u16], idx: u16) {
    for (k, h) in heads.iter().enumerate() {
        put(f, ring + 4 + 2 * k as u64, &h.to_le_bytes());
    }
    put(f, ring + 2, &idx.to_le_bytes());
}

/// RX: `RX_BUFS` writable 2 KiB buffers, posted.
fn post_rx(f: &std::fs::File) {
    let heads: Vec<u16> = (0..RX_BUFS).collect();
    for i in 0..RX_BUFS {
        let a = RX_BUF + u64::from(i) * u64::from(RX_BUF_LEN);
        desc(f, RX_DESC, i, a, RX_BUF_LEN, VRING_DESC_F_WRITE, 0);
    }
    avail(f, RX_AVAIL, &heads, RX_BUFS);
}

/// An ARP request from the guest for the gateway, with a 12-byte
/// virtio-net header (all zero: no offload).
fn arp_request() -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&GW_IP);
    f
}

/// TX: the ARP request in chain 0, published.
fn offer_arp(f: &std::fs::File) {
    let frame = arp_request();
    put(f, TX_BUF, &frame);
    desc(
        f,
        TX_DESC,
        0,
        TX_BUF,
        u32::try_from(frame.len()).unwrap(),
        0,
        0,
    );
    avail(f, TX_AVAIL, &[0], 1);
}

/// utime + stime of `pid`, in clock ticks (/proc/PID/stat fields 14, 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state).
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// Rings that break the rules, one connection each: an avail index
/// beyond the queue size (issue 16: uipd spun and logged 215,802 lines in
/// 10 s), a descriptor outside memory, a loop, a chain longer than the
/// queue, a bad indirect table, and an RX avail index beyond the queue
/// size. Each stops its queue once, logged once however often it is
/// kicked; uipd then uses no CPU, and a well-behaved front-end afterwards
/// gets its ARP request answered, byte-exact.
#[test]
fn hostile_rings_stop_the_queue_once() {
    let mut u = Uipd::start_with_log("vhost-proto-hostile", "info");
    type Case<'a> = (&'a str, Box<dyn Fn(&std::fs::File)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "avail index beyond the queue size",
            Box::new(|f| {
                offer_arp(f);
                avail(f, TX_AVAIL, &[0], QN + 44);
            }),
            "more than the queue size 256 ahead",
        ),
        (
            "a descriptor outside memory",
            Box::new(|f| {
                desc(f, TX_DESC, 0, 0x40_0000_0000, 64, 0, 0);
                avail(f, TX_AVAIL, &[0], 1);
            }),
            "points outside guest memory",
        ),
        (
            "a descriptor loop",
            Box::new(|f| {
                desc(f, TX_DESC, 0, TX_BUF, 8, VRING_DESC_F_NEXT, 1);
                desc(f, TX_DESC, 1, TX_BUF, 8, VRING_DESC_F_NEXT, 0);
                avail(f, TX_AVAIL, &[0], 1);
            }),
            "does not end",
        ),
        (
            "a chain longer than the queue",
            Box::new(|f| {
                // Every descriptor says NEXT: the chain outlives the
                // queue's 256 entries (virtio-queue's TTL cuts it).
                for i in 0..QN {
                    desc(f, TX_DESC, i, TX_BUF, 8, VRING_DESC_F_NEXT, (i + 1) % QN);
                }
                avail(f, TX_AVAIL, &[0], 1);
            }),
            "does not end",
        ),
        (
            "a bad indirect table",
            Box::new(|f| {
                // 15 bytes: not a whole number of descriptors.
                desc(f, TX_DESC, 0, TX_BUF, 15, VRING_DESC_F_INDIRECT, 0);
                avail(f, TX_AVAIL, &[0], 1);
            }),
            "indirect table is invalid",
        ),
    ];
    let mut conns = 0;
    let mut stopped_ticks = Vec::new();
    for (i, (what, prepare, expect)) in cases.iter().enumerate() {
        let fe = Frontend::connect(&u, &format!("hostile{i}"), |f| prepare(f));
        conns += 1;
        // Kicked again and again: the queue is stopped after the first.
        for _ in 0..100 {
            fe.kick(1);
            std::thread::sleep(Duration::from_millis(1));
        }
        let line = u.expect_log("TX queue of pair 0:", i + 1);
        assert!(line.contains(expect), "{what}: {line}");
        assert!(line.contains("queue stopped"), "{what}: {line}");
        assert_eq!(fe.used_idx(TX_USED), 0, "{what}: a broken chain was used");
        // Idle with the queue stopped: no CPU.
        let t0 = cpu_ticks(u.pid());
        std::thread::sleep(Duration::from_secs(2));
        let ticks = cpu_ticks(u.pid()) - t0;
        stopped_ticks.push(ticks);
        assert!(ticks < 20, "{what}: uipd used {ticks} ticks in 2 s idle");
        let log = u.log();
        assert_eq!(count(&log, "TX queue of pair 0:"), i + 1, "{what}:\n{log}");
        u.assert_running();
        drop(fe);
        u.expect_log("the VMM disconnected", conns);
        eprintln!("{what}: {line} ({ticks} ticks in 2 s stopped)");
    }

    // RX: a good ARP request on TX, an RX avail index beyond the queue
    // size: the reply cannot be placed, the RX queue stops once.
    let fe = Frontend::connect(&u, "hostile-rx", |f| {
        post_rx(f);
        avail(f, RX_AVAIL, &[], QN + 1);
        offer_arp(f);
    });
    conns += 1;
    for _ in 0..20 {
        fe.kick(1);
        fe.kick(0);
        std::thread::sleep(Duration::from_millis(5));
    }
    let line = u.expect_log("RX queue 0:", 1);
    assert!(
        line.contains("more than the queue size 256 ahead"),
        "{line}"
    );
    assert_eq!(fe.used_idx(TX_USED), 1, "the good TX chain was used");
    assert_eq!(fe.used_idx(RX_USED), 0);
    let t0 = cpu_ticks(u.pid());
    std::thread::sleep(Duration::from_secs(2));
    let rx_ticks = cpu_ticks(u.pid()) - t0;
    assert!(rx_ticks < 20, "RX stopped: {rx_ticks} ticks in 2 s idle");
    drop(fe);
    u.expect_log("the VMM disconnected", conns);
    eprintln!("RX avail index beyond the queue size: {line} ({rx_ticks} ticks in 2 s)");

    // A well-behaved front-end: the ARP reply arrives byte-exact.
    let fe = Frontend::connect(&u, "good", |f| {
        post_rx(f);
        offer_arp(f);
    });
    fe.kick(0);
    fe.kick(1);
    let t = Instant::now();
    while fe.used_idx(RX_USED) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no ARP reply:\n{}",
            u.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fe.used_idx(TX_USED), 1);
    let elem = get(&fe.mem, RX_USED + 4, 8);
    let id = u32::from_le_bytes(elem[..4].try_into().unwrap());
    let len = u32::from_le_bytes(elem[4..].try_into().unwrap()) as usize;
    assert_eq!(id, 0, "the first posted buffer");
    assert!(len >= 12 + 42, "reply of {len} bytes");
    let got = get(&fe.mem, RX_BUF, len);
    let gw_mac: [u8; 6] = got[12 + 6..12 + 12].try_into().unwrap();
    let mut want = vec![0u8; 12];
    // num_buffers = 1 (§5.1.6.4), the rest of the header plain.
    want[10] = 1;
    want.extend_from_slice(&GUEST_MAC);
    want.extend_from_slice(&gw_mac);
    want.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    want.extend_from_slice(&gw_mac);
    want.extend_from_slice(&GW_IP);
    want.extend_from_slice(&GUEST_MAC);
    want.extend_from_slice(&GUEST_IP);
    want.resize(len, 0);
    assert_eq!(got, want, "ARP reply");
    assert_ne!(gw_mac, [0; 6]);
    drop(fe);

    u.assert_running();
    let log = u.log();
    let lines = log.lines().count();
    eprintln!(
        "log: {lines} lines; stopped: {stopped_ticks:?} ticks per 2 s; {} 'queue stopped'",
        count(&log, "queue stopped")
    );
    assert_eq!(count(&log, "Iterator error"), 0, "{log}");
    assert_eq!(count(&log, "Failed to read from memory"), 0, "{log}");
    assert_eq!(count(&log, "queue stopped"), cases.len() + 1, "{log}");
    assert!(lines < 200, "{lines} log lines:\n{log}");
}
