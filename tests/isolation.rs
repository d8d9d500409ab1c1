//! End-to-end tests of the isolation options (`--restrict`, `--allow`,
//! `--deny`, `--max-flows`) and of `--pcap`, with the guest namespace's own
//! Linux stack as the peer and real servers on the outer namespace's
//! loopback (see tests/common/mod.rs: the outer namespace has only `lo`).
//!
//! Every refusal is checked against a server that *is* listening, so a
//! refusal cannot be a missing server; and every test also shows something
//! that still works (DNS, an allowed address), so it cannot be a dead backend.

mod common;

use std::path::Path;

use common::{Outcome, Scenario, skip_unless_uipd};

/// Two addresses put on the outer namespace's `lo` for the rule-order test.
const ADDR_A: &str = "10.56.0.1";
const ADDR_B: &str = "10.56.0.2";

/// Guest-side probe: one connected UDP socket sends "x" to HOST PORT up to
/// three times and waits for a reply; prints "RESULT udp outcome=reply|
/// timeout|<errno name>". An ICMP unreachable reaches a connected socket as
/// an error on the next send or recv.
const UDP_PROBE: &str = r#"
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((sys.argv[1], int(sys.argv[2])))
out = "timeout"
for _ in range(3):
    try:
        s.send(b"x")
        s.recv(100)
        out = "reply"
        break
    except socket.timeout:
        pass
    except OSError as e:
        out = errno.errorcode.get(e.errno, str(e.errno))
        break
print("RESULT udp outcome=" + out, flush=True)
"#;

/// Guest-side: hold N connections to HOST PORT open (each echoes a line),
/// then try one more; prints "RESULT flows held=<k> extra=<outcome> ms=..".
const FLOW_HOLDER: &str = r#"
import errno, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for i in range(n):
    try:
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(b"hello %d\n" % i)
        if s.recv(100):
            held.append(s)
    except OSError as e:
        print("connection", i, "failed:", e, file=sys.stderr)
t0 = time.monotonic()
try:
    x = socket.create_connection((host, port), timeout=10)
    extra = "ok"
    x.close()
except socket.timeout:
    extra = "timeout"
except OSError as e:
    extra = errno.errorcode.get(e.errno, str(e.errno))
ms = int((time.monotonic() - t0) * 1000)
print("RESULT flows held=%d extra=%s ms=%d" % (len(held), extra, ms), flush=True)
for s in held:
    s.close()
"#;

/// Guest snippet: one TCP connect to `$1` port `$2` through guest.py,
/// reported as "RESULT connect_$3 outcome=.. ms=..".
const CONNECT_FN: &str = "conn() { timeout 20 \"$PY\" \"$SRV/guest.py\" connect \"$1\" \"$2\" \
     | sed \"s/^RESULT connect /RESULT connect_$3 /\"; }";

fn write_script(sc: &Scenario, name: &str, text: &str) {
    std::fs::write(sc.dir().join(name), text).expect("write guest helper");
}

/// The "outcome" of the single "RESULT `tag`" line.
fn outcome(o: &Outcome, tag: &str) -> String {
    o.value(tag, "outcome")
}

/// Asserts a fast TCP refusal on the "RESULT `tag`" line.
fn check_refused_fast(o: &Outcome, tag: &str) {
    let r = o.result(tag);
    o.check(
        r["outcome"] == "ECONNREFUSED",
        &format!("{tag}: expected ECONNREFUSED, got {}", r["outcome"]),
    );
    let ms: u64 = r["ms"].parse().unwrap_or(u64::MAX);
    o.check(
        ms < 2000,
        &format!("{tag}: refusal took {ms} ms (limit 2000)"),
    );
}

/// A counter from the `--stats-json` file's totals.
fn json_total(o: &Outcome, path: &Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let doc: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => o.fail(&format!("--stats-json file unreadable ({e}): {text:?}")),
    };
    match doc["total"][name].as_u64() {
        Some(v) => v,
        None => o.fail(&format!("--stats-json has no total.{name}")),
    }
}

/// `--restrict`: a TCP connect to a listening host-loopback server through
/// the gateway is refused at once, a UDP datagram to a live echo server gets
/// "administratively prohibited" (EHOSTUNREACH), and DNS through the gateway
/// still resolves, over UDP and TCP.
#[test]
fn restrict_refuses_everything_but_dns() {
    if skip_unless_uipd("restrict_refuses_everything_but_dns") {
        return;
    }
    let mut sc = Scenario::new("restrict_refuses_everything_but_dns");
    write_script(&sc, "udpprobe.py", UDP_PROBE);
    let stats = sc.dir().join("stats.json");
    let stats_s = stats.display().to_string();
    sc.timeout(90)
        .server("echo", 7000, &[])
        .server("udpecho", 5000, &[])
        .server("dns", 5353, &[])
        .args(&[
            "--restrict",
            "--resolver",
            "127.0.0.1:5353",
            "--stats-json",
            &stats_s,
        ])
        .guest(&format!(
            "{CONNECT_FN}\n\
             conn \"$GW\" 7000 gw\n\
             timeout 20 \"$PY\" \"$D/udpprobe.py\" \"$GW\" 5000\n\
             timeout 20 busybox nslookup test.uipd. \"$DNS\"\n\
             echo \"RESULT nslookup rc=$?\"\n\
             timeout 20 \"$PY\" \"$SRV/guest.py\" dnstcp \"$DNS\" 53 test.uipd."
        ));
    let o = sc.run();
    o.expect_code(0);
    check_refused_fast(&o, "connect_gw");
    let udp = outcome(&o, "udp");
    o.check(
        udp == "EHOSTUNREACH",
        &format!("UDP under --restrict: expected EHOSTUNREACH (ICMP admin-prohibited), got {udp}"),
    );
    o.check(
        o.value("nslookup", "rc") == "0",
        "nslookup failed under --restrict",
    );
    o.check(
        o.lines("Address:").iter().any(|a| a == "10.1.2.3"),
        "nslookup did not return 10.1.2.3",
    );
    let t = o.result("dnstcp");
    o.check(
        t.get("addrs").map(String::as_str) == Some("10.1.2.3"),
        "DNS over TCP did not return 10.1.2.3 under --restrict",
    );
    let denied = json_total(&o, &stats, "drops_denied");
    o.check(
        denied >= 2,
        &format!("drops_denied is {denied}, expected at least 2 (TCP + UDP)"),
    );
    o.pass();
}

/// `--allow`/`--deny`: the last matching rule wins, rules see the host
/// address (the gateway is 127.0.0.1), and `--restrict --allow` opens an
/// exception. The same rules in the other order give the other answer.
#[test]
fn allow_deny_last_match_wins() {
    if skip_unless_uipd("allow_deny_last_match_wins") {
        return;
    }
    let run = |name: &str, args: &[&str]| {
        let mut sc = Scenario::new(name);
        sc.timeout(90)
            .pre_setup(&format!(
                "ip addr add {ADDR_A}/32 dev lo && ip addr add {ADDR_B}/32 dev lo"
            ))
            .server("echo", 7000, &[])
            .server_at("echo", ADDR_A, 7000, &[])
            .server_at("echo", ADDR_B, 7000, &[])
            .args(args)
            .guest(&format!(
                "{CONNECT_FN}\n\
                 conn \"$GW\" 7000 gw\n\
                 conn {ADDR_A} 7000 a\n\
                 conn {ADDR_B} 7000 b"
            ));
        let o = sc.run();
        o.expect_code(0);
        o
    };
    // Broad denies first, narrow allows last: the allows win for their hosts.
    let o = run(
        "allow_deny_narrow_allow_last",
        &[
            "--deny",
            "127.0.0.0/8",
            "--deny",
            "10.56.0.0/16",
            "--allow",
            "127.0.0.1/32",
            "--allow",
            ADDR_A,
        ],
    );
    for tag in ["connect_gw", "connect_a"] {
        let got = outcome(&o, tag);
        o.check(got == "ok", &format!("{tag}: expected ok, got {got}"));
    }
    check_refused_fast(&o, "connect_b");
    o.pass();
    // The same rules in the other order: the broad denies come last and win.
    let o = run(
        "allow_deny_broad_deny_last",
        &[
            "--allow",
            "127.0.0.1/32",
            "--allow",
            ADDR_A,
            "--deny",
            "127.0.0.0/8",
            "--deny",
            "10.56.0.0/16",
        ],
    );
    for tag in ["connect_gw", "connect_a", "connect_b"] {
        check_refused_fast(&o, tag);
    }
    o.pass();
    // --restrict with one exception.
    let o = run(
        "restrict_with_an_allow",
        &["--restrict", "--allow", &format!("{ADDR_B}/32")],
    );
    check_refused_fast(&o, "connect_gw");
    check_refused_fast(&o, "connect_a");
    let got = outcome(&o, "connect_b");
    o.check(got == "ok", &format!("connect_b: expected ok, got {got}"));
    o.pass();
}

/// `--max-flows 5`: five connections held open work, the sixth is refused
/// at once (RST: ECONNREFUSED) and counted in `--stats-json`.
#[test]
fn max_flows_refuses_the_sixth_connection() {
    if skip_unless_uipd("max_flows_refuses_the_sixth_connection") {
        return;
    }
    let mut sc = Scenario::new("max_flows_refuses_the_sixth_connection");
    write_script(&sc, "holder.py", FLOW_HOLDER);
    let stats = sc.dir().join("stats.json");
    let stats_s = stats.display().to_string();
    sc.timeout(90)
        .server("echo", 7000, &[])
        .args(&[
            "--max-flows",
            "5",
            "--workers",
            "1",
            "--stats-json",
            &stats_s,
        ])
        .guest("timeout 40 \"$PY\" \"$D/holder.py\" \"$GW\" 7000 5");
    let o = sc.run();
    o.expect_code(0);
    let r = o.result("flows");
    o.check(
        r["held"] == "5",
        &format!("{} of 5 connections worked", r["held"]),
    );
    o.check(
        r["extra"] == "ECONNREFUSED",
        &format!(
            "the 6th connection: expected ECONNREFUSED, got {}",
            r["extra"]
        ),
    );
    let ms: u64 = r["ms"].parse().unwrap_or(u64::MAX);
    o.check(ms < 2000, &format!("refusal took {ms} ms (limit 2000)"));
    let n = json_total(&o, &stats, "drops_flow_limit");
    o.check(n >= 1, "drops_flow_limit is 0 in --stats-json");
    let opened = json_total(&o, &stats, "tcp_opened");
    o.check(opened == 5, &format!("tcp_opened is {opened}, expected 5"));
    o.pass();
}

/// `--max-flows` below the number of workers is a command-line error.
#[test]
fn max_flows_below_workers_is_an_error() {
    if skip_unless_uipd("max_flows_below_workers_is_an_error") {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uipd"))
        .args(["--max-flows", "1", "--workers", "2", "--", "true"])
        .output()
        .expect("run uipd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("--max-flows"), "stderr: {err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uipd"))
        .args(["--deny", "10.1.2.3/8", "--", "true"])
        .output()
        .expect("run uipd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("10.0.0.0/8"), "stderr: {err}");
}

/// `--pcap FILE`: after a short HTTP download, `tcpdump -r FILE` reads the
/// file and shows the connection's handshake (SYN, SYN-ACK, ACK), and the
/// file holds exactly the frames the workers say they captured.
#[test]
fn pcap_holds_the_handshake_of_a_download() {
    if skip_unless_uipd("pcap_holds_the_handshake_of_a_download") {
        return;
    }
    let tcpdump_ok = std::process::Command::new("tcpdump")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        tcpdump_ok,
        "tcpdump is missing (Debian package tcpdump; run scripts/setup.sh as root)"
    );
    let mut sc = Scenario::new("pcap_holds_the_handshake_of_a_download");
    let sum = common::random_file(&sc.dir().join("file.bin"), 100 * 1024);
    let dir = sc.dir().display().to_string();
    let pcap = sc.dir().join("cap.pcap");
    let stats = sc.dir().join("stats.json");
    let (pcap_s, stats_s) = (pcap.display().to_string(), stats.display().to_string());
    sc.timeout(90)
        .server("http", 8080, &["--dir", &dir])
        .args(&["--pcap", &pcap_s, "--stats-json", &stats_s])
        .guest(
            "timeout 30 busybox wget -q -O \"$D/got.bin\" \"http://$GW:8080/file.bin\"\n\
             echo \"RESULT wget rc=$? sha=$(sha256sum \"$D/got.bin\" | cut -d' ' -f1)\"",
        );
    let o = sc.run();
    o.expect_code(0);
    o.check(o.value("wget", "rc") == "0", "busybox wget failed");
    o.check(o.value("wget", "sha") == sum, "downloaded data differs");
    let td = std::process::Command::new("tcpdump")
        .args(["-r", &pcap_s, "-nn"])
        .output()
        .expect("run tcpdump");
    let text = String::from_utf8_lossy(&td.stdout).to_string();
    let err = String::from_utf8_lossy(&td.stderr).to_string();
    o.check(
        td.status.success(),
        &format!("tcpdump -r failed: {err}\n{text}"),
    );
    o.check(
        err.contains("EN10MB"),
        &format!("tcpdump does not see an Ethernet capture: {err}"),
    );
    let lines: Vec<&str> = text.lines().collect();
    // The guest's SYN names its port; the SYN-ACK and ACK must match it.
    let syn = lines
        .iter()
        .find(|l| l.contains(" > 192.168.33.1.8080: Flags [S],"))
        .unwrap_or_else(|| o.fail(&format!("no SYN to 192.168.33.1:8080 in:\n{text}")));
    let port = syn
        .split(" IP 192.168.33.15.")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| o.fail(&format!("cannot read the guest port from {syn:?}")));
    let guest = format!("192.168.33.15.{port}");
    let has = |pat: &str| lines.iter().any(|l| l.contains(pat));
    o.check(
        has(&format!("IP 192.168.33.1.8080 > {guest}: Flags [S.],")),
        &format!("no SYN-ACK to {guest} in:\n{text}"),
    );
    o.check(
        has(&format!(
            "IP {guest} > 192.168.33.1.8080: Flags [.], ack 1,"
        )),
        &format!("no handshake ACK from {guest} in:\n{text}"),
    );
    o.check(
        has(&format!("IP 192.168.33.1.8080 > {guest}: Flags [")) && has("HTTP"),
        &format!("no HTTP data in:\n{text}"),
    );
    // Every frame the workers queued is in the file, none were dropped.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap_or_default())
            .unwrap_or_default();
    let sum_of = |k: &str| -> u64 {
        doc["workers"]
            .as_array()
            .map(|w| w.iter().filter_map(|w| w["worker"][k].as_u64()).sum())
            .unwrap_or(u64::MAX)
    };
    let (frames, drops) = (sum_of("pcap_frames"), sum_of("pcap_drops"));
    eprintln!(
        "pcap: {} records read back, {frames} queued, {drops} dropped",
        lines.len()
    );
    o.check(
        drops == 0,
        &format!("{drops} frames dropped from the capture"),
    );
    o.check(
        frames == lines.len() as u64,
        &format!("{frames} frames captured but tcpdump read {}", lines.len()),
    );
    o.check(
        (8..5000).contains(&lines.len()),
        &format!("{} records for a 100 KiB download", lines.len()),
    );
    o.pass();
}

/// `--no-host-loopback`: TCP and UDP to listening servers on the host's
/// loopback through the gateway are refused (RST; ICMP port unreachable),
/// while DNS through the gateway still resolves.
#[test]
fn no_host_loopback_refuses_but_dns_works() {
    if skip_unless_uipd("no_host_loopback_refuses_but_dns_works") {
        return;
    }
    let mut sc = Scenario::new("no_host_loopback_refuses_but_dns_works");
    write_script(&sc, "udpprobe.py", UDP_PROBE);
    sc.timeout(90)
        .server("echo", 7000, &[])
        .server("udpecho", 5000, &[])
        .server("dns", 5353, &[])
        .args(&["--no-host-loopback", "--resolver", "127.0.0.1:5353"])
        .guest(&format!(
            "{CONNECT_FN}\n\
             conn \"$GW\" 7000 gw\n\
             timeout 20 \"$PY\" \"$D/udpprobe.py\" \"$GW\" 5000\n\
             timeout 20 busybox nslookup test.uipd. \"$DNS\"\n\
             echo \"RESULT nslookup rc=$?\""
        ));
    let o = sc.run();
    o.expect_code(0);
    check_refused_fast(&o, "connect_gw");
    let udp = outcome(&o, "udp");
    o.check(
        udp == "ECONNREFUSED",
        &format!("UDP with --no-host-loopback: expected ECONNREFUSED, got {udp}"),
    );
    o.check(
        o.value("nslookup", "rc") == "0" && o.lines("Address:").iter().any(|a| a == "10.1.2.3"),
        "DNS through the gateway failed with --no-host-loopback",
    );
    o.pass();
}

/// `--pcap` in attach mode: the file is complete after SIGTERM (flushed at
/// exit), with the handshake of the guest's connection in it.
#[test]
fn pcap_is_flushed_on_sigterm() {
    if skip_unless_uipd("pcap_is_flushed_on_sigterm") {
        return;
    }
    let mut sc = Scenario::new("pcap_is_flushed_on_sigterm");
    let pcap = sc.dir().join("cap.pcap");
    sc.timeout(60).server("echo", 7000, &[]).invocation(
        "timeout 50 unshare --net --mount -- sleep 45 & target=$!\n\
         for _ in $(seq 50); do [ \"$(readlink /proc/$target/ns/net)\" != \"$(readlink /proc/self/ns/net)\" ] && break; sleep 0.1; done\n\
         timeout -k 2 40 $UIPD --netns $target --pcap \"$D/cap.pcap\" 2>\"$D/uipd.err\" & uipd=$!\n\
         for _ in $(seq 100); do nsenter -t $target -n ip -4 -o addr show dev eth0 2>/dev/null | grep -q inet && break; sleep 0.1; done\n\
         timeout 20 nsenter -t $target -n -- /bin/sh \"$D/guest.sh\" >\"$D/guest.out\"\n\
         kill -TERM $uipd\n\
         wait $uipd; urc=$?\n\
         echo \"RESULT term rc=$urc\" >>\"$D/guest.out\"\n\
         kill $target 2>/dev/null; wait $target 2>/dev/null\n\
         [ $urc = 0 ]",
    )
    .guest(
        "echo hello | timeout 10 busybox nc \"$GW\" 7000 >\"$D/nc.out\"\n\
         echo \"RESULT nc reply=$(tr ' ' _ <\"$D/nc.out\")\"",
    );
    let o = sc.run();
    o.check(
        o.value("nc", "reply") == "echo_hello",
        "echo through uipd failed",
    );
    o.check(
        o.value("term", "rc") == "0",
        "uipd did not exit cleanly on SIGTERM",
    );
    let td = std::process::Command::new("tcpdump")
        .args(["-r", &pcap.display().to_string(), "-nn"])
        .output()
        .expect("run tcpdump");
    let text = String::from_utf8_lossy(&td.stdout).to_string();
    o.check(
        td.status.success(),
        &format!("tcpdump -r failed: {}", String::from_utf8_lossy(&td.stderr)),
    );
    for (what, from, flags) in [
        ("SYN", " > 192.168.33.1.7000: ", "Flags [S],"),
        ("SYN-ACK", "IP 192.168.33.1.7000 > ", "Flags [S.],"),
    ] {
        o.check(
            text.lines().any(|l| l.contains(from) && l.contains(flags)),
            &format!("no {what} in:\n{text}"),
        );
    }
    o.check(
        text.lines()
            .any(|l| l.contains("192.168.33.1.7000 > ") && l.contains("length 11")),
        &format!("no 11-byte echo reply (\"echo hello\\n\") in:\n{text}"),
    );
    o.expect_code(0);
    o.pass();
}
