//! Scale and bounded-memory tests: many flows through one uipd, and the
//! `--max-memory` budget holding while host peers do not read.
//!
//! Same harness as tests/netns_e2e.rs (an outer namespace with only `lo`,
//! servers on its 127.0.0.1, uipd's guest namespace inside). The clients and
//! servers are tests/servers/scale.py (asyncio: one process for thousands of
//! sockets). The guest script is uipd's child, so `$PPID` is uipd: the
//! client reads uipd's VmRSS / VmHWM from /proc/$PPID/status and prints them
//! on its RESULT lines, which these tests print too.

mod common;

use common::{Outcome, Scenario, sh_quote, skip_unless_uipd, tests_dir};

/// The scale.py command line, quoted for the outer or guest shell.
fn scale_py() -> String {
    format!(
        "{} {}",
        sh_quote(&common::python()),
        sh_quote(&tests_dir().join("servers/scale.py").display().to_string())
    )
}

/// The guest script's check that `$PPID` is uipd.
const UIPD_PARENT: &str = "[ \"$(cat /proc/$PPID/comm)\" = uipd ] \
     || { echo \"parent $PPID is $(cat /proc/$PPID/comm), not uipd\"; exit 3; }";

fn kib(o: &Outcome, tag: &str, key: &str) -> u64 {
    o.value(tag, key)
        .parse()
        .unwrap_or_else(|_| o.fail(&format!("RESULT {tag} {key} is not a number")))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// 10,000 TCP connections open at once, each echoing its own message
/// through the gateway to an echo server on the outer loopback; then (once
/// those are closed: a process may be held to 20,000 fds) 10,000 UDP flows
/// open at once (one socket each) echoing a datagram each. uipd's RSS is
/// printed at each step.
#[test]
fn ten_thousand_tcp_and_udp_flows_echo() {
    if skip_unless_uipd("ten_thousand_tcp_and_udp_flows_echo") {
        return;
    }
    const N: usize = 10_000;
    let py = scale_py();
    let mut sc = Scenario::new("scale_10k");
    sc.timeout(150)
        .raw_server("echo", 7000, &format!("{py} echo-server 7000 140"))
        // uipd holds a host socket per flow: as many fds as allowed (the
        // TCP connections close before the UDP flows open, so 10,000 and
        // some suffice).
        .setup("ulimit -n $(ulimit -Hn)")
        .args(&["--stats", "--max-flows", "65536"])
        .guest(&format!(
            "{UIPD_PARENT}\nulimit -n $(ulimit -Hn)\n{py} echo-clients $GW 7000 {N} $PPID"
        ));
    let o = sc.run();
    eprintln!("{}", o.guest_out);
    o.expect_code(0);
    let n = N.to_string();
    o.check(o.value("tcp", "ok") == n, "every TCP connection echoes");
    o.check(o.value("udp", "ok") == n, "every UDP flow echoes");
    let idle = kib(&o, "idle", "rss_kb");
    let tcp = kib(&o, "tcp", "rss_kb");
    let udp = kib(&o, "udp", "rss_kb");
    let hwm = kib(&o, "udp", "hwm_kb");
    eprintln!(
        "scale_10k: uipd RSS idle {:.1} MiB, {N} TCP open {:.1} MiB, +{N} UDP {:.1} MiB, \
         peak {:.1} MiB; TCP connect {} s, UDP {} s, total {} s",
        mib(idle),
        mib(tcp),
        mib(udp),
        mib(hwm),
        o.value("tcp", "connect_s"),
        o.value("udp", "s"),
        o.value("done", "total_s"),
    );
    o.pass();
}

/// `--max-memory 256M`: 1,000 connections write 2 MiB each to a host
/// server that does not read. uipd's RSS stays under its idle RSS plus the
/// budget plus a fixed margin while they stall, and once the server reads,
/// every byte arrives (count and SHA-256 checked per connection).
#[test]
fn max_memory_holds_with_a_thousand_stalled_uploads() {
    if skip_unless_uipd("max_memory_holds_with_a_thousand_stalled_uploads") {
        return;
    }
    const N: usize = 1000;
    const BYTES: usize = 2 << 20;
    const BUDGET_MIB: u64 = 256;
    // What uipd may hold beyond the budget and its idle RSS: the io_uring
    // layer's spare buffers (at most 8 MiB per worker), the spare TCP
    // chunks (at most 4 MiB per worker, `stack::mem::chunks`), frames in
    // flight to the guest, per-flow state (about 1 KiB a flow) and the
    // allocator's fragmentation. Measured here: see README "Bounded memory".
    const MARGIN_MIB: u64 = 72;
    let py = scale_py();
    let mut sc = Scenario::new("max_memory");
    let release = sc.dir().join("release").display().to_string();
    sc.timeout(170)
        .raw_server(
            "slow",
            7001,
            &format!("{py} slow-server 7001 {} 160", sh_quote(&release)),
        )
        .setup("ulimit -n $(ulimit -Hn)")
        // Small host-side socket buffers (this outer namespace's own
        // sysctls), so the stalled bytes pile up in uipd, not in the
        // kernel between uipd and the server.
        .setup("sysctl -q -w net.ipv4.tcp_wmem='4096 16384 131072' net.ipv4.tcp_rmem='4096 65536 131072'")
        .args(&["--stats", "--max-memory", &format!("{BUDGET_MIB}M")])
        .guest(&format!(
            "{UIPD_PARENT}\nulimit -n $(ulimit -Hn)\n{py} slow-clients $GW 7001 {N} {BYTES} {} $PPID",
            sh_quote(&release)
        ));
    let o = sc.run();
    eprintln!("{}", o.guest_out);
    o.expect_code(0);
    o.check(
        o.value("drain", "ok") == N.to_string(),
        "every connection's bytes arrive, counted and hashed",
    );
    let idle = kib(&o, "idle", "rss_kb");
    let stall = kib(&o, "stall", "peak_rss_kb");
    let hwm = kib(&o, "drain", "hwm_kb");
    let bound = idle + (BUDGET_MIB + MARGIN_MIB) * 1024;
    eprintln!(
        "max_memory: uipd RSS idle {:.1} MiB, stalled peak {:.1} MiB ({} of {} bytes written), \
         VmHWM over the run {:.1} MiB; bound {:.1} MiB (idle + {BUDGET_MIB} MiB budget + \
         {MARGIN_MIB} MiB margin); mem_peak {:?}, window_limited {:?}, recv_deferred {:?}, \
         tcp_dropped_bytes {:?}",
        mib(idle),
        mib(stall),
        o.value("stall", "written"),
        o.value("stall", "of"),
        mib(hwm),
        mib(bound),
        o.stat("mem_peak"),
        o.stat("mem_window_limited"),
        o.stat("mem_recv_deferred"),
        o.stat("mem_tcp_dropped_bytes"),
    );
    o.check(
        o.stat("mem_limit") == Some(BUDGET_MIB << 20),
        "--stats shows the limit",
    );
    o.check(
        o.stat("mem_peak").is_some_and(|p| p <= BUDGET_MIB << 20),
        "the accounted peak stays within the budget",
    );
    o.check(
        o.stat("mem_used") == Some(0),
        "every flow gave its memory back",
    );
    o.check(
        o.stat("mem_window_limited").is_some_and(|n| n > 0),
        "the budget closed windows",
    );
    o.check(
        hwm <= bound,
        "uipd's peak RSS stays under the budget plus the margin",
    );
    o.pass();
}
