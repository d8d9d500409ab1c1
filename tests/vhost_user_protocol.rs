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
//! No frames move: no vring is ever started, so uipd sends nothing. Memory
//! regions are regular files in the test's directory (mmap'ed shared by
//! uipd as a memfd would be).

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
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_KICK: u32 = 12;

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
            .env("RUST_LOG", "uipd=info")
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
