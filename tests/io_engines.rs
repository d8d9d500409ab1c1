//! End-to-end tests of the epoll engine (`--io epoll`) and of the fallback
//! to it where io_uring is refused: the core cases (download and upload
//! byte-exact, UDP echo, DNS through the gateway, ping, a published port)
//! run (a) with `--io epoll` and (b) with `--io auto` under a seccomp filter
//! that refuses io_uring with `EPERM`, as Docker's and containerd's default
//! profiles do (src/bin/deny-io-uring.rs). `--io uring` under that filter
//! must fail at start, saying why.
//!
//! Everything runs inside the harness's loopback-only outer namespace (see
//! tests/common/mod.rs).

mod common;

use std::process::Command;

use common::{Scenario, random_file, skip_unless_uipd};

const MIB: u64 = 1024 * 1024;

/// The seccomp wrapper built with uipd.
fn deny_io_uring() -> &'static str {
    env!("CARGO_BIN_EXE_deny-io-uring")
}

/// The core cases in one run: uipd is started as `$WRAP $UIPD ARGS`, with
/// `-p 8081:81` and `--stats`. The guest downloads and uploads 4 MiB
/// (byte-exact), echoes UDP datagrams up to 65507 bytes, resolves through
/// the gateway's DNS and pings it, while a host client downloads 4 MiB
/// from an HTTP server in the guest through the published port. Returns
/// the outcome after checking all of it; the engine line of the stats
/// must say `epoll`.
fn core_cases(name: &str, wrap: &str, io_args: &[&str]) -> common::Outcome {
    let mut sc = Scenario::new(name);
    let down = random_file(&sc.dir().join("down.bin"), 4 * MIB);
    let up = random_file(&sc.dir().join("up.bin"), 4 * MIB);
    let publ = random_file(&sc.dir().join("pub.bin"), 4 * MIB);
    let dir = sc.dir().display().to_string();
    sc.timeout(120)
        .server("http", 8080, &["--dir", &dir])
        .server("sink", 9000, &[])
        .server("udpecho", 5000, &[])
        .server("dns", 5353, &[]);
    sc.guest(
        "PIDS=''\n\
         $PY $SRV/host.py http --bind 0.0.0.0 --port 81 --timeout 110 \
           --ready \"$D/http-81.ready\" --dir \"$D\" >\"$D/http-81.log\" 2>&1 &\n\
         PIDS=\"$PIDS $!\"\n\
         timeout 30 busybox wget -q -O \"$D/got.bin\" \"http://$GW:8080/down.bin\"\n\
         echo \"RESULT download rc=$? size=$(stat -c %s \"$D/got.bin\") sha=$(sha256sum \"$D/got.bin\" | cut -d' ' -f1)\"\n\
         timeout 30 busybox nc \"$GW\" 9000 <\"$D/up.bin\" >\"$D/nc.out\"\n\
         echo \"RESULT upload rc=$? bytes=$(cut -d' ' -f1 \"$D/nc.out\") sha=$(cut -d' ' -f2 \"$D/nc.out\")\"\n\
         timeout 30 \"$PY\" \"$SRV/guest.py\" udp \"$GW\" 5000 1 1400 8000 65507\n\
         timeout 20 busybox nslookup test.uipd. \"$DNS\"\n\
         echo \"RESULT nslookup rc=$?\"\n\
         timeout 30 busybox ping -c 3 -w 20 \"$GW\"\n\
         echo \"RESULT ping rc=$?\"\n\
         for _ in $(seq 150); do [ -e \"$D/http-81.ready\" ] && break; sleep 0.1; done\n\
         touch \"$D/guest.ready\"\n\
         for _ in $(seq 600); do [ -e \"$D/done\" ] && break; sleep 0.1; done\n\
         for p in $PIDS; do kill \"$p\" 2>/dev/null; done\n\
         exit 0",
    );
    let pubpy = common::tests_dir().join("servers/publish.py");
    let mut args = vec!["--stats", "--resolver", "127.0.0.1:5353", "-p", "8081:81"];
    args.extend_from_slice(io_args);
    let args: Vec<String> = args.iter().map(|a| common::sh_quote(a)).collect();
    sc.invocation(&format!(
        "timeout -k 5 100 {wrap} $UIPD {} -- /bin/sh \"$D/guest.sh\" \
           >\"$D/guest.out\" 2>\"$D/uipd.err\" </dev/null &\n\
         UP=$!\n\
         for _ in $(seq 600); do [ -e \"$D/guest.ready\" ] && break; \
           kill -0 $UP 2>/dev/null || break; sleep 0.1; done\n\
         if [ -e \"$D/guest.ready\" ]; then \
           timeout -k 5 60 {py} {pubpy} get 127.0.0.1 8081 /pub.bin \"$D/gotpub.bin\" \
             >\"$D/client.out\" 2>&1; fi\n\
         touch \"$D/done\"\n\
         wait $UP; rc=$?\n\
         cat \"$D/client.out\" >>\"$D/guest.out\" 2>/dev/null\n\
         (exit $rc)",
        args.join(" "),
        py = common::sh_quote(&common::python()),
        pubpy = common::sh_quote(&pubpy.display().to_string()),
    ));
    let o = sc.run();
    o.expect_code(0);
    let d = o.result("download");
    o.check(
        d["rc"] == "0" && d["size"] == (4 * MIB).to_string() && d["sha"] == down,
        "download through the gateway differs",
    );
    let u = o.result("upload");
    o.check(
        u["rc"] == "0" && u["bytes"] == (4 * MIB).to_string() && u["sha"] == up,
        "upload through the gateway differs",
    );
    let udp = o.results("udp");
    for size in ["1", "1400", "8000", "65507"] {
        o.check(
            udp.iter()
                .any(|r| r.get("size").map(String::as_str) == Some(size) && r["ok"] == "1"),
            &format!("UDP echo of {size} bytes failed"),
        );
    }
    o.check(o.value("nslookup", "rc") == "0", "nslookup failed");
    o.check(
        o.lines("Address:").iter().any(|a| a == "10.1.2.3"),
        "nslookup did not return the test resolver's 10.1.2.3",
    );
    o.check(o.value("ping", "rc") == "0", "ping of the gateway failed");
    o.check(
        o.guest_out.contains("3 packets received"),
        "ping did not get 3 replies",
    );
    o.check(
        o.value("get", "bytes") == (4 * MIB).to_string() && o.value("get", "sha") == publ,
        "download through the published port differs",
    );
    o.check(
        o.uipd_err.lines().any(|l| l == "uipd io: epoll"),
        "the stats do not say the workers ran on epoll",
    );
    o
}

/// How often uipd said it falls back.
fn fallback_lines(o: &common::Outcome) -> usize {
    o.uipd_err
        .lines()
        .filter(|l| l.contains("io_uring is not available"))
        .count()
}

/// (a) `--io epoll`: the core cases, and no word about io_uring.
#[test]
fn epoll_engine_core_cases() {
    if skip_unless_uipd("epoll_engine_core_cases") {
        return;
    }
    let o = core_cases("epoll_engine_core_cases", "", &["--io", "epoll"]);
    o.check(
        fallback_lines(&o) == 0,
        "--io epoll should not try io_uring",
    );
    o.pass();
}

/// (b) `--io auto` where a seccomp filter refuses io_uring with EPERM:
/// uipd falls back to epoll, says so exactly once (one warning for all its
/// workers), and serves the core cases.
#[test]
fn auto_falls_back_to_epoll_when_seccomp_refuses_io_uring() {
    if skip_unless_uipd("auto_falls_back_to_epoll_when_seccomp_refuses_io_uring") {
        return;
    }
    let wrap = common::sh_quote(deny_io_uring());
    let o = core_cases(
        "auto_falls_back_to_epoll_under_seccomp",
        &wrap,
        &["--io", "auto", "--workers", "2"],
    );
    o.check(
        fallback_lines(&o) == 1,
        &format!(
            "expected one fallback warning, found {}",
            fallback_lines(&o)
        ),
    );
    o.check(
        o.uipd_err
            .lines()
            .any(|l| l.contains("WARN") && l.contains("Operation not permitted")),
        "the warning does not say io_uring_setup was refused (EPERM)",
    );
    o.pass();
}

/// `--io uring` under the same filter fails at start-up: non-zero exit, a
/// message naming io_uring, and the guest command never runs.
#[test]
fn uring_engine_fails_clearly_when_seccomp_refuses_io_uring() {
    if skip_unless_uipd("uring_engine_fails_clearly_when_seccomp_refuses_io_uring") {
        return;
    }
    let uipd = std::env::var("UIPD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_uipd").into());
    let dir = std::env::temp_dir().join(format!("uipd-io-uring-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("guest-ran");
    let mut unshare = vec!["unshare"];
    if !common::is_root() {
        unshare.extend(["--user", "--map-root-user"]);
    }
    // In a namespace of its own all the same: should uipd get further than
    // it must, it reaches nothing.
    let out = Command::new("timeout")
        .args(["-k", "5", "30"])
        .args(&unshare)
        .args(["--net", "--"])
        .arg(deny_io_uring())
        .arg(&uipd)
        .args(["--io", "uring", "--", "touch"])
        .arg(&marker)
        .output()
        .expect("run uipd under deny-io-uring");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ran = marker.exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !out.status.success() && out.status.code() != Some(124),
        "expected a start-up failure, got {:?}; stderr: {stderr}",
        out.status
    );
    assert!(
        stderr.contains("io_uring") && stderr.contains("Operation not permitted"),
        "the error does not name io_uring and EPERM: {stderr}"
    );
    assert!(!ran, "the guest command ran although uipd failed");
}
