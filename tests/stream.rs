//! End-to-end tests of the stream frontend (`uipd --socket PATH`, QEMU's
//! `-netdev stream` framing) with a real kernel stack as the guest.
//!
//! The guest is a network namespace whose TAP device is relayed to uipd's
//! socket by tests/servers/stream_relay.py, in the 4-byte length framing a
//! VMM uses; the namespace's own TCP/IP stack does DHCP, DNS, TCP and ICMP.
//! (tests/qemu_stream.rs runs the same frontend under a real QEMU.) As in
//! every end-to-end test, all of it runs in an outer namespace with only
//! `lo`.

mod common;

use common::{Scenario, random_file, skip_unless_uipd};

const MIB: u64 = 1024 * 1024;

/// Shell functions for the guest: `connect N` starts relay N and brings
/// eth0 up, `lease` runs busybox udhcpc with a script that configures
/// eth0, `disconnect` ends the relay (the VMM going away).
const GUEST_PRELUDE: &str = r#"
ip link set lo up
connect() {
    rm -f "$D/relay$1.ready"
    timeout -k 2 100 "$PY" "$SRV/stream_relay.py" --socket "$D/vm.sock" --ready "$D/relay$1.ready" --timeout 90 >>"$D/relay.log" 2>&1 &
    RELAY=$!
    for _ in $(seq 100); do [ -e "$D/relay$1.ready" ] && break; sleep 0.1; done
    [ -e "$D/relay$1.ready" ] || { echo "RESULT relay$1 started=0"; return 1; }
    ip link set eth0 up
    echo "RESULT relay$1 started=1"
}
disconnect() {
    kill "$RELAY" 2>/dev/null; wait "$RELAY" 2>/dev/null; true
}
lease() {
    timeout 30 busybox udhcpc -i eth0 -n -q -t 5 -T 2 -s "$D/dhcp.sh" 2>>"$D/udhcpc.log"
    echo "RESULT udhcpc rc=$?"
}
"#;

/// The udhcpc event script: configures eth0 from the lease and reports it.
const DHCP_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    ip route replace default via "$router"
    echo "RESULT lease ip=$ip router=$router dns=$(echo $dns | tr ' ' ,) mtu=$mtu"
    ;;
esac
"#;

/// A scenario whose backend is `uipd --socket $D/vm.sock ARGS` and whose
/// guest is a namespace relayed to it; uipd gets SIGTERM when the guest
/// script ends, and its exit status is the scenario's.
fn stream_scenario(name: &str, uipd_args: &str, guest: &str) -> Scenario {
    let mut sc = Scenario::new(name);
    let script = sc.dir().join("dhcp.sh");
    std::fs::write(&script, DHCP_SCRIPT).unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    sc.timeout(120)
        .invocation(&format!(
            "$UIPD --socket \"$D/vm.sock\" --stats --stats-json \"$D/stats.json\" {uipd_args} 2>\"$D/uipd.err\" &\n\
             U=$!\n\
             for _ in $(seq 100); do [ -S \"$D/vm.sock\" ] && break; sleep 0.1; done\n\
             timeout -k 5 100 unshare --net -- /bin/sh \"$D/guest.sh\" >\"$D/guest.out\" </dev/null\n\
             echo \"RESULT guest_exit rc=$?\" >>\"$D/guest.out\"\n\
             kill -TERM $U; wait $U"
        ))
        .guest(&format!("{GUEST_PRELUDE}\n{guest}"));
    sc
}

fn stat(o: &common::Outcome, key: &str) -> u64 {
    let text = std::fs::read_to_string(o.dir.join("stats.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["total"][key].as_u64().unwrap_or(0)
}

/// DHCP, DNS, ping and a 16 MiB transfer each way, byte-exact, through the
/// stream socket; with two workers, so frames are steered by hash.
#[test]
fn stream_dhcp_dns_ping_transfers() {
    if skip_unless_uipd("stream_dhcp_dns_ping_transfers") {
        return;
    }
    let mut sc = stream_scenario(
        "stream_transfers",
        "--workers 2 --resolver 127.0.0.1:5353",
        "connect 1 || exit 1\n\
         lease\n\
         echo \"RESULT dns addr=$(busybox nslookup test.uipd 192.168.33.1 2>/dev/null | awk '/^Address/ {a=$NF} END {print a}')\"\n\
         timeout 10 busybox ping -c 2 -W 2 192.168.33.1 >/dev/null 2>&1; echo \"RESULT ping rc=$?\"\n\
         timeout 60 busybox nc 192.168.33.1 9000 <\"$D/up.bin\" >\"$D/nc.out\"\n\
         echo \"RESULT upload rc=$? bytes=$(cut -d' ' -f1 \"$D/nc.out\") sha=$(cut -d' ' -f2 \"$D/nc.out\")\"\n\
         timeout 60 busybox wget -q -O \"$D/got.bin\" http://192.168.33.1:8080/down.bin\n\
         echo \"RESULT download rc=$? size=$(stat -c %s \"$D/got.bin\") sha=$(sha256sum \"$D/got.bin\" | cut -d' ' -f1)\"\n\
         disconnect",
    );
    let up = random_file(&sc.dir().join("up.bin"), 16 * MIB);
    let down = random_file(&sc.dir().join("down.bin"), 16 * MIB);
    let dir = sc.dir().display().to_string();
    sc.server("sink", 9000, &[])
        .server("http", 8080, &["--dir", &dir])
        .server("dns", 5353, &[]);
    let o = sc.run();
    o.expect_code(0);
    o.check(
        o.value("guest_exit", "rc") == "0",
        "the guest script failed",
    );
    o.check(
        o.value("relay1", "started") == "1",
        "the relay did not start",
    );
    o.check(o.value("udhcpc", "rc") == "0", "udhcpc got no lease");
    let l = o.result("lease");
    o.check(
        l["ip"] == "192.168.33.15" && l["router"] == "192.168.33.1" && l["mtu"] == "1500",
        "unexpected lease (want 192.168.33.15, router .1, MTU 1500)",
    );
    o.check(
        o.value("dns", "addr") == "10.1.2.3",
        "test.uipd did not resolve to 10.1.2.3 through the forwarder",
    );
    o.check(o.value("ping", "rc") == "0", "ping to the gateway failed");
    let u = o.result("upload");
    o.check(
        u["rc"] == "0" && u["bytes"] == (16 * MIB).to_string() && u["sha"] == up,
        "upload not byte-exact",
    );
    let d = o.result("download");
    o.check(
        d["rc"] == "0" && d["size"] == (16 * MIB).to_string() && d["sha"] == down,
        "download not byte-exact",
    );
    o.check(
        stat(&o, "tcp_opened") >= 2 && stat(&o, "rx_frames") > 10_000,
        "the counters do not show the transfers",
    );
    o.pass();
}

/// The VMM goes away with a connection open: uipd resets that host
/// connection, keeps running, and serves the next VMM from a clean start.
#[test]
fn stream_reconnect_resets_flows_and_serves_next_vmm() {
    if skip_unless_uipd("stream_reconnect") {
        return;
    }
    let mut sc = stream_scenario(
        "stream_reconnect",
        "",
        "connect 1 || exit 1\n\
         lease\n\
         # A connection that stays open: nc waits for the echo server.\n\
         (sleep 30 | timeout 40 busybox nc 192.168.33.1 7000 >/dev/null 2>&1) &\n\
         sleep 1\n\
         disconnect\n\
         sleep 1\n\
         connect 2 || exit 1\n\
         lease\n\
         echo hello | timeout 10 busybox nc 192.168.33.1 7000 >\"$D/echo.out\"\n\
         echo \"RESULT echo2 reply=$(tr ' ' _ <\"$D/echo.out\")\"\n\
         disconnect",
    );
    sc.server("echo", 7000, &[]);
    // Count established connections to the echo server from the outer
    // namespace while the guest runs: one before the first disconnect,
    // none after it.
    sc.setup(
        "{ ( for i in $(seq 60); do echo \"$(date +%s%N) $(ss -Htn state established '( dport = :7000 )' | wc -l)\" >>\"$D/ss.log\"; sleep 0.25; done ) & }",
    );
    let o = sc.run();
    o.expect_code(0);
    o.check(
        o.value("guest_exit", "rc") == "0",
        "the guest script failed",
    );
    o.check(
        o.results("udhcpc")
            .iter()
            .filter(|r| r["rc"] == "0")
            .count()
            == 2,
        "both VMM sessions should get a lease",
    );
    o.check(
        o.value("echo2", "reply") == "echo_hello",
        "the second VMM's connection did not work",
    );
    let ss = std::fs::read_to_string(o.dir.join("ss.log")).unwrap_or_default();
    let counts: Vec<u64> = ss
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    let first_open = counts.iter().position(|&c| c >= 1);
    o.check(first_open.is_some(), "the first connection never showed up");
    // After the first disconnect, the count must drop to 0 (reset) before
    // the second session's short echo.
    let dropped = first_open.is_some_and(|i| counts[i..].contains(&0));
    o.check(
        dropped,
        &format!("the first VMM's connection was not reset: {counts:?}"),
    );
    o.check(
        o.uipd_err.contains("uipd counters"),
        "uipd did not run to its end",
    );
    o.pass();
}

/// A VMM that sends bad frames: each connection must be closed by uipd.
const BAD_CLIENT: &str = r#"
import socket, struct, sys
cases = [
    ("oversize", struct.pack(">I", 70000) + b"x" * 100),
    ("short", struct.pack(">I", 5) + b"x" * 5),
    ("truncated", struct.pack(">I", 1000) + b"x" * 10),
]
for name, data in cases:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(sys.argv[1])
    s.sendall(data)
    if name == "truncated":
        s.shutdown(socket.SHUT_WR)
    try:
        closed = s.recv(1) == b""
    except OSError:
        closed = False
    print("RESULT bad kind=%s closed=%d" % (name, closed))
    s.close()
"#;

/// Bad input closes only that connection: a length over the limit, then a
/// frame cut short by the end of the stream; uipd serves the next VMM.
#[test]
fn stream_bad_frames_close_the_connection_only() {
    if skip_unless_uipd("stream_bad_frames") {
        return;
    }
    let sc = stream_scenario(
        "stream_bad_frames",
        "",
        "\"$PY\" \"$D/bad.py\" \"$D/vm.sock\"\n\
         connect 1 || exit 1\n\
         lease\n\
         disconnect",
    );
    std::fs::write(sc.dir().join("bad.py"), BAD_CLIENT).unwrap();
    let o = sc.run();
    o.expect_code(0);
    o.check(
        o.value("guest_exit", "rc") == "0",
        "the guest script failed",
    );
    for r in o.results("bad") {
        o.check(
            r["closed"] == "1",
            &format!("a {} frame did not close the connection", r["kind"]),
        );
    }
    o.check(
        o.results("bad").len() == 3,
        "the bad-frame client did not run",
    );
    o.check(
        o.value("udhcpc", "rc") == "0",
        "the VMM after the bad ones got no lease",
    );
    o.check(
        o.uipd_err.matches("outside 14..=").count() == 2
            && o.uipd_err.contains("ended inside a frame"),
        "uipd did not report the protocol errors",
    );
    o.pass();
}

/// Published ports through the stream frontend with two hash-steered
/// workers: host clients in the outer namespace reach servers in the
/// relayed guest. Eight connections each see the gateway as their peer
/// (each needs a source port whose frames the reader steers back to the
/// worker serving published ports), and an upload arrives byte-exact.
#[test]
fn stream_published_port() {
    if skip_unless_uipd("stream_published_port") {
        return;
    }
    let mut sc = stream_scenario(
        "stream_publish",
        "",
        "connect 1 || exit 1\n\
         lease\n\
         \"$PY\" \"$SRV/publish.py\" peerserver --port 80 --timeout 90 --ready \"$D/peer.ready\" 2>\"$D/peer.log\" &\n\
         P1=$!\n\
         \"$PY\" \"$SRV/host.py\" sink --bind 0.0.0.0 --port 81 --timeout 90 --ready \"$D/sink.ready\" >\"$D/sink.log\" 2>&1 &\n\
         P2=$!\n\
         for _ in $(seq 100); do [ -e \"$D/peer.ready\" ] && [ -e \"$D/sink.ready\" ] && break; sleep 0.1; done\n\
         touch \"$D/guest.ready\"\n\
         for _ in $(seq 600); do [ -e \"$D/done\" ] && break; sleep 0.1; done\n\
         kill $P1 $P2 2>/dev/null\n\
         disconnect",
    );
    let up = random_file(&sc.dir().join("up.bin"), MIB);
    let publish = common::tests_dir().join("servers/publish.py");
    sc.invocation(&format!(
        "$UIPD --socket \"$D/vm.sock\" --workers 2 -p 8080:80 -p 8081:81 --stats 2>\"$D/uipd.err\" &\n\
         U=$!; PIDS=\"$PIDS $U\"\n\
         for _ in $(seq 100); do [ -S \"$D/vm.sock\" ] && break; sleep 0.1; done\n\
         timeout -k 5 100 unshare --net -- /bin/sh \"$D/guest.sh\" >\"$D/guest.out\" </dev/null &\n\
         G=$!; PIDS=\"$PIDS $G\"\n\
         for _ in $(seq 300); do [ -e \"$D/guest.ready\" ] && break; sleep 0.1; done\n\
         PY='{py}'; PUB='{pub}'\n\
         for i in $(seq 8); do timeout 40 \"$PY\" \"$PUB\" peer 127.0.0.1 8080; done >\"$D/client.out\" 2>&1\n\
         timeout 40 \"$PY\" \"$PUB\" put 127.0.0.1 8081 \"$D/up.bin\" >>\"$D/client.out\" 2>&1\n\
         touch \"$D/done\"\n\
         wait $G; echo \"RESULT guest_exit rc=$?\" >>\"$D/guest.out\"\n\
         cat \"$D/client.out\" >>\"$D/guest.out\"\n\
         kill -TERM $U; wait $U",
        py = common::python(),
        pub = publish.display()
    ));
    let o = sc.run();
    o.expect_code(0);
    o.check(
        o.value("guest_exit", "rc") == "0",
        "the guest script failed",
    );
    o.check(o.value("udhcpc", "rc") == "0", "udhcpc got no lease");
    let peers = o.results("peer");
    o.check(peers.len() == 8, "eight connections");
    o.check(
        peers.iter().all(|p| p["ip"] == "192.168.33.1"),
        &format!("each connection reached the guest from the gateway: {peers:?}"),
    );
    o.check(
        o.value("put", "bytes") == MIB.to_string() && o.value("put", "sha") == up,
        "the upload through the published port is not byte-exact",
    );
    o.check(
        o.stat("published_tcp") == Some(9),
        "nine published connections",
    );
    o.pass();
}
