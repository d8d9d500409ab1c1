//! Integration tests for the `uipd-perf` binary over loopback.
//!
//! Each test starts its own server on 127.0.0.1 with `-p 0` (the server
//! prints the port it got), runs one client, and kills only the server it
//! started. Every child is waited for with a deadline, so a hang fails the
//! test instead of stalling the suite.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_uipd-perf");

/// A server child, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["-s", "-B", "127.0.0.1", "-p", "0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read server banner");
        // "uipd-perf: listening on 127.0.0.1:PORT"
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in server banner {line:?}"));
        Self { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs the binary, killing it if it outlives `limit`.
fn run(args: &[&str], limit: Duration) -> Output {
    let t0 = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    // Drain both pipes on threads so a chatty child cannot block on them.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait client") {
            break st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("uipd-perf {args:?} ran longer than {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
        took: t0.elapsed(),
    }
}

/// Runs one 1-second test with `--json` and returns the parsed object.
fn client_json(port: u16, test: &str, extra: &[&str]) -> Value {
    let port = port.to_string();
    let mut args = vec![
        "-H",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        test,
        "-l",
        "1",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = run(&args, Duration::from_secs(15));
    assert!(
        o.status.success(),
        "{test} failed: {}\nstdout: {}",
        o.stderr,
        o.stdout
    );
    let v: Value = serde_json::from_str(o.stdout.trim())
        .unwrap_or_else(|e| panic!("{test}: bad JSON {e}: {:?}", o.stdout));
    assert_eq!(v["test"], test);
    assert_eq!(v["host"], "127.0.0.1");
    let d = f(&v, "duration_s");
    assert!(d > 0.5 && d < 5.0, "{test}: duration_s {d}");
    assert!(
        f(&v, "cpu.user_s") >= 0.0 && f(&v, "cpu.sys_s") >= 0.0,
        "{v}"
    );
    v
}

/// A number at a dotted path.
fn f(v: &Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v}"))
}

fn check_stream(v: &Value) {
    assert!(f(v, "bytes") > 0.0, "{v}");
    assert!(f(v, "throughput_mbps") > 0.0, "{v}");
    assert_eq!(f(v, "msg_size"), 131_072.0, "{v}");
}

fn check_rr(v: &Value) {
    assert!(f(v, "transactions") > 0.0, "{v}");
    assert!(f(v, "trans_per_s") > 0.0, "{v}");
    let p50 = f(v, "latency_us.p50");
    let p90 = f(v, "latency_us.p90");
    let p99 = f(v, "latency_us.p99");
    let p999 = f(v, "latency_us.p999");
    let max = f(v, "latency_us.max");
    assert!(p50 > 0.0, "{v}");
    assert!(
        p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "{v}"
    );
}

#[test]
fn tcp_stream() {
    let s = Server::start(&[]);
    check_stream(&client_json(s.port, "TCP_STREAM", &[]));
}

#[test]
fn tcp_maerts() {
    let s = Server::start(&[]);
    check_stream(&client_json(s.port, "TCP_MAERTS", &[]));
}

#[test]
fn udp_stream() {
    let s = Server::start(&[]);
    let v = client_json(s.port, "UDP_STREAM", &[]);
    let sent = f(&v, "sent_datagrams");
    let received = f(&v, "received_datagrams");
    assert!(sent > 0.0, "{v}");
    assert!(received > 0.0 && received <= sent, "{v}");
    assert_eq!(f(&v, "lost_datagrams"), sent - received, "{v}");
    assert_eq!(f(&v, "msg_size"), 1400.0, "{v}");
    assert!(f(&v, "sent_mbps") >= f(&v, "received_mbps"), "{v}");
    assert!(f(&v, "throughput_mbps") > 0.0, "{v}");
}

#[test]
fn udp_stream_max_datagram() {
    let s = Server::start(&[]);
    let v = client_json(s.port, "UDP_STREAM", &["-m", "65507"]);
    assert_eq!(f(&v, "msg_size"), 65507.0, "{v}");
    assert!(
        f(&v, "received_datagrams") <= f(&v, "sent_datagrams"),
        "{v}"
    );
}

#[test]
fn tcp_rr() {
    let s = Server::start(&[]);
    let v = client_json(s.port, "TCP_RR", &[]);
    check_rr(&v);
    assert_eq!(f(&v, "req_size"), 1.0);
    assert_eq!(f(&v, "resp_size"), 1.0);
}

#[test]
fn tcp_rr_sizes_and_parallel_streams() {
    let s = Server::start(&[]);
    let v = client_json(s.port, "TCP_RR", &["-r", "100,4K", "-P", "2"]);
    check_rr(&v);
    assert_eq!(f(&v, "streams"), 2.0);
    assert_eq!(f(&v, "resp_size"), 4096.0);
    assert_eq!(f(&v, "bytes"), f(&v, "transactions") * 4196.0, "{v}");
}

#[test]
fn tcp_crr() {
    let s = Server::start(&[]);
    check_rr(&client_json(s.port, "TCP_CRR", &[]));
}

#[test]
fn text_output_has_header_and_result() {
    let mut s = Server::start(&["--once"]);
    let port = s.port.to_string();
    let o = run(
        &["-H", "127.0.0.1", "-p", &port, "-l", "0.3"],
        Duration::from_secs(10),
    );
    assert!(o.status.success(), "{}", o.stderr);
    assert!(o.stdout.contains("TCP_STREAM TEST"), "{}", o.stdout);
    assert!(o.stdout.contains("10^6bits/sec"), "{}", o.stdout);
    // --once: the server exits by itself, successfully.
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = s.child.try_wait().expect("wait server") {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "--once server did not exit"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success());
}

/// A TCP socket bound to 127.0.0.1 on a port of the kernel's choice, not
/// listening, and that port.
fn bound_not_listening() -> (std::os::fd::OwnedFd, u16) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new fd.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::sa_family_t::try_from(libc::AF_INET).expect("AF_INET fits");
    sa.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>())
        .expect("sockaddr_in size fits");
    // SAFETY: `sa` is a live sockaddr_in of `len` bytes, read by bind(2)
    // and written by getsockname(2) (at most `len` bytes) during the calls.
    unsafe {
        assert_eq!(
            libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&sa).cast(), len),
            0
        );
        assert_eq!(
            libc::getsockname(fd.as_raw_fd(), std::ptr::from_mut(&mut sa).cast(), &mut len),
            0
        );
    }
    (fd, u16::from_be(sa.sin_port))
}

#[test]
fn closed_port_fails_fast() {
    // A TCP socket bound to a port but not listening keeps the port for
    // the test (a port merely found free could be taken by a server of a
    // test running beside this one), and connections to it are refused.
    let (_reserved, port) = bound_not_listening();
    let port = port.to_string();
    let o = run(
        &["-H", "127.0.0.1", "-p", &port, "-t", "TCP_RR", "-l", "1"],
        Duration::from_secs(10),
    );
    assert_eq!(o.status.code(), Some(1), "stderr: {}", o.stderr);
    assert!(o.stderr.contains("error"), "stderr: {}", o.stderr);
    assert!(o.stderr.contains("cannot connect"), "stderr: {}", o.stderr);
    assert!(o.took < Duration::from_secs(5), "took {:?}", o.took);
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        &["-H", "127.0.0.1", "-t", "SCTP_STREAM"][..],
        &["-H", "127.0.0.1", "-t", "UDP_STREAM", "-m", "65508"],
        &["-H", "127.0.0.1", "-l", "0"],
        &[],
    ] {
        let o = run(args, Duration::from_secs(5));
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(o.stderr.contains("error"), "{args:?}: {}", o.stderr);
    }
}
