//! End-to-end tests of IPv6 in namespace mode: the guest namespace's own
//! Linux stack configures itself from uipd's router advertisements (SLAAC
//! in fd00:33::/64, default route via fe80::1) and talks to servers on the
//! outer namespace's ::1 through the gateway address fd00:33::1.
//!
//! Same harness as tests/netns_e2e.rs (tests/common/mod.rs): everything
//! runs in a loopback-only outer namespace, every step is bounded.

mod common;

use common::{Scenario, random_file, skip_unless_uipd};

const MIB: u64 = 1024 * 1024;

/// Guest snippet: wait (at most 10 s) for a SLAAC address in fd00:33::/64
/// and a default route via fe80::1, then report both and the IPv6 MTU the
/// RA set.
const WAIT_SLAAC: &str = "for _ in $(seq 100); do \
       ip -6 -o addr show dev $IFNAME scope global | grep -q 'inet6 fd00:33::' \
       && ip -6 route show default | grep -q 'via fe80::1' && break; sleep 0.1; done\n\
     echo \"RESULT slaac addr=$(ip -6 -o addr show dev $IFNAME scope global | awk '{print $4}' | head -n1) \
     gw=$(ip -6 route show default | awk '{print $3}' | head -n1) \
     mtu=$(cat /proc/sys/net/ipv6/conf/$IFNAME/mtu)\"";

/// The counter `name` of uipd's `--stats`, 0 when left out (zero).
fn stat(o: &common::Outcome, name: &str) -> u64 {
    o.check(
        o.stat("tcp_opened").is_some(),
        "uipd printed no --stats counters",
    );
    o.stat(name).unwrap_or(0)
}

fn check_slaac(o: &common::Outcome, mtu: &str) {
    let r = o.result("slaac");
    o.check(
        r.get("addr")
            .is_some_and(|a| a.starts_with("fd00:33::") && a.ends_with("/64")),
        "no SLAAC address in fd00:33::/64",
    );
    o.check(
        r.get("gw").map(String::as_str) == Some("fe80::1"),
        "no default route via fe80::1",
    );
    o.check(
        r.get("mtu").map(String::as_str) == Some(mtu),
        "the RA's MTU did not reach the guest",
    );
}

/// Guest snippet: send the file "$D/up.bin" to [fd00:33::1]:9000 in
/// 256 KiB writes, half-close, and print the sink's reply ("<bytes>
/// <sha256>"). Not busybox nc: its 1 KiB writes leave it to timing whether
/// the namespace's TCP ever has more than one segment ready to send (a
/// fresh 16 MiB upload on a loaded machine, where uipd ACKs each segment
/// before the next write, sent none), and TSO6 super-frames are what the
/// test is about.
const UPLOAD: &str = r#"import socket, sys
s = socket.create_connection(("fd00:33::1", 9000))
with open(sys.argv[1], "rb") as f:
    for b in iter(lambda: f.read(262144), b""):
        s.sendall(b)
s.shutdown(socket.SHUT_WR)
sys.stdout.write(s.makefile().read())
"#;

/// A 16 MiB upload (256 KiB writes to a sha256 sink on ::1) and download
/// (busybox wget from ::1), both through [fd00:33::1], byte-exact; `pre`
/// runs in the guest first. Returns the outcome for more checks.
fn updown6(name: &str, args: &[&str], pre: &str) -> common::Outcome {
    let mut sc = Scenario::new(name);
    let up = random_file(&sc.dir().join("up.bin"), 16 * MIB);
    let down = random_file(&sc.dir().join("down.bin"), 16 * MIB);
    let dir = sc.dir().display().to_string();
    sc.timeout(150)
        .server_at("sink", "::1", 9000, &[])
        .server_at("http", "::1", 8080, &["--dir", &dir])
        .args(args)
        .guest(&format!(
            "{WAIT_SLAAC}\n\
             {pre}\n\
             timeout 20 busybox ping6 -c 3 -w 15 fd00:33::1 >\"$D/ping.out\"\n\
             echo \"RESULT ping rc=$? recv=$(sed -n 's/.* \\([0-9]*\\) packets received.*/\\1/p' \"$D/ping.out\")\"\n\
             t0=$(date +%s%N)\n\
             timeout 60 \"$PY\" - \"$D/up.bin\" >\"$D/nc.out\" <<'EOF'\n{UPLOAD}EOF\n\
             rc=$?; t1=$(date +%s%N)\n\
             echo \"RESULT upload rc=$rc bytes=$(cut -d' ' -f1 \"$D/nc.out\") sha=$(cut -d' ' -f2 \"$D/nc.out\") ms=$(( (t1 - t0) / 1000000 ))\"\n\
             t0=$(date +%s%N)\n\
             timeout 60 busybox wget -q -O \"$D/got.bin\" \"http://[fd00:33::1]:8080/down.bin\"\n\
             rc=$?; t1=$(date +%s%N)\n\
             echo \"RESULT download rc=$rc size=$(stat -c %s \"$D/got.bin\") sha=$(sha256sum \"$D/got.bin\" | cut -d' ' -f1) ms=$(( (t1 - t0) / 1000000 ))\""
        ));
    let o = sc.run();
    o.expect_code(0);
    check_slaac(&o, "1500");
    let p = o.result("ping");
    o.check(
        p["rc"] == "0" && p["recv"] == "3",
        "ping6 fd00:33::1 did not get 3 replies",
    );
    let u = o.result("upload");
    let d = o.result("download");
    eprintln!("{name}: upload {} ms, download {} ms", u["ms"], d["ms"]);
    o.check(
        u["rc"] == "0" && u["bytes"] == (16 * MIB).to_string() && u["sha"] == up,
        &format!("upload: host got {} bytes, sha {}", u["bytes"], u["sha"]),
    );
    o.check(
        d["rc"] == "0" && d["size"] == (16 * MIB).to_string() && d["sha"] == down,
        &format!("download: guest got {} bytes, sha {}", d["size"], d["sha"]),
    );
    o
}

/// SLAAC, ping6 to the gateway and 16 MiB each way over IPv6 at MTU 1500
/// with the TAP's offloads on (the default): the transfer moved TSO6
/// super-frames both ways.
#[test]
fn ipv6_slaac_ping_and_tcp_16mib_with_tso6() {
    if skip_unless_uipd("ipv6_slaac_ping_and_tcp_16mib_with_tso6") {
        return;
    }
    let o = updown6(
        "ipv6_slaac_ping_and_tcp_16mib_with_tso6",
        &["--mtu", "1500", "--stats"],
        "",
    );
    let (rx, tx) = (stat(&o, "rx_gso_frames"), stat(&o, "tx_gso_frames"));
    eprintln!("rx_gso_frames {rx} tx_gso_frames {tx}");
    o.check(rx > 0, "the namespace sent no TSO6 super-frames");
    o.check(tx > 0, "uipd sent no TSO6 super-frames");
    o.check(stat(&o, "drops_bad_vnet_hdr") == 0, "vnet headers dropped");
    o.pass();
}

/// The same with TSO off in the namespace (`ethtool -K eth0 tso off`):
/// MSS-sized frames from the guest, still byte-exact.
#[test]
fn ipv6_tcp_16mib_with_guest_tso_off() {
    if skip_unless_uipd("ipv6_tcp_16mib_with_guest_tso_off") {
        return;
    }
    if !std::path::Path::new("/usr/sbin/ethtool").exists()
        && !std::path::Path::new("/sbin/ethtool").exists()
    {
        eprintln!("ipv6_tcp_16mib_with_guest_tso_off: skipped: no ethtool");
        return;
    }
    let o = updown6(
        "ipv6_tcp_16mib_with_guest_tso_off",
        &["--mtu", "1500", "--stats"],
        "ethtool -K $IFNAME tso off\n\
         echo \"RESULT ethtool tso=$(ethtool -k $IFNAME | awk '/^tcp-segmentation-offload:/ {print $2}')\"",
    );
    o.check(o.value("ethtool", "tso") == "off", "TSO is still on");
    o.check(
        stat(&o, "rx_gso_frames") == 0,
        "the namespace sent super-frames with TSO off",
    );
    o.pass();
}

/// UDP echo over IPv6 of `sizes` bytes to a server on ::1, DNS to
/// [fd00:33::1]:53 forwarded to the resolver, and stateless DHCPv6 naming
/// that DNS server; `args` for uipd.
fn udp6_and_dns(name: &str, args: &[&str], mtu: &str, sizes: &[&str]) -> common::Outcome {
    let mut sc = Scenario::new(name);
    let list = sizes.join(" ");
    sc.timeout(90)
        .server_at("udpecho", "::1", 5000, &[])
        .server("dns", 5353, &[])
        .args(&["--resolver", "127.0.0.1:5353", "--stats"])
        .args(args)
        .guest(&format!(
            "{WAIT_SLAAC}\n\
             timeout 30 \"$PY\" - {list} <<'EOF'\n{UDP6_PY}EOF\n\
             timeout 20 busybox nslookup test.uipd. fd00:33::1 >\"$D/ns.out\" 2>&1\n\
             echo \"RESULT nslookup rc=$?\"\n\
             cat \"$D/ns.out\"\n\
             timeout 20 \"$PY\" - $IFNAME <<'EOF'\n{DHCPV6_PY}EOF"
        ));
    let o = sc.run();
    o.expect_code(0);
    check_slaac(&o, mtu);
    o.check(
        o.value("dhcpv6", "dns") == "fd00:33::1",
        "stateless DHCPv6 did not name fd00:33::1",
    );
    let res = o.results("udp6");
    for size in sizes {
        o.check(
            res.iter().any(|r| {
                r.get("size").map(String::as_str) == Some(*size)
                    && r.get("ok").map(String::as_str) == Some("1")
            }),
            &format!("UDP over IPv6: {size}-byte round trip failed"),
        );
    }
    o.check(
        o.value("nslookup", "rc") == "0",
        "nslookup via fd00:33::1 failed",
    );
    o.check(
        o.lines("Address:").iter().any(|a| a == "10.1.2.3"),
        "nslookup via fd00:33::1 did not return 10.1.2.3",
    );
    o
}

/// UDP echo over IPv6 of 1, 1400 and 65000 bytes at the default MTU, and
/// DNS through [fd00:33::1].
#[test]
fn ipv6_udp_echo_and_dns() {
    if skip_unless_uipd("ipv6_udp_echo_and_dns") {
        return;
    }
    let o = udp6_and_dns(
        "ipv6_udp_echo_and_dns",
        &[],
        "65520",
        &["1", "1400", "65000"],
    );
    o.pass();
}

/// The same at MTU 1500: 8000- and 65000-byte datagrams travel in IPv6
/// fragments both ways (the namespace's are reassembled, ours are cut).
#[test]
fn ipv6_udp_echo_mtu_1500_fragmented() {
    if skip_unless_uipd("ipv6_udp_echo_mtu_1500_fragmented") {
        return;
    }
    let o = udp6_and_dns(
        "ipv6_udp_echo_mtu_1500_fragmented",
        &["--mtu", "1500"],
        "1500",
        &["1", "1400", "8000", "65000"],
    );
    o.check(stat(&o, "reassembled") >= 2, "nothing was reassembled");
    o.check(stat(&o, "fragmented") >= 2, "nothing was fragmented");
    o.pass();
}

/// A guest snippet that connects to [fd00:33::1]:9000 and reports `tag`
/// with the outcome: `ok` or the errno name.
fn connect6(tag: &str) -> String {
    format!("timeout 10 \"$PY\" - {tag} <<'EOF'\n{CONNECT6_PY}EOF")
}

/// Connects to [fd00:33::1]:9000; prints `RESULT <argv[1]> r=ok|ERRNAME ms=N`.
const CONNECT6_PY: &str = r#"import errno, socket, sys, time
s = socket.socket(socket.AF_INET6)
s.settimeout(5)
t = time.monotonic()
try:
    s.connect(("fd00:33::1", 9000))
    r = "ok"
except OSError as e:
    r = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "timeout"
print("RESULT %s r=%s ms=%d" % (sys.argv[1], r, (time.monotonic() - t) * 1000))
"#;

/// A stateless DHCPv6 client on interface argv[1]: an Information-request
/// to ff02::1:2 asking for DNS servers; prints `RESULT dhcpv6 dns=A[,B]`.
const DHCPV6_PY: &str = r#"import socket, struct, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 546))
s.settimeout(2)
ifindex = socket.if_nametoindex(sys.argv[1])
req = bytes([11, 0xab, 0xcd, 0xef]) + struct.pack("!HHH", 6, 2, 23)
dns = "none"
for _ in range(3):
    s.sendto(req, ("ff02::1:2", 547, 0, ifindex))
    try:
        data, peer = s.recvfrom(2000)
    except socket.timeout:
        continue
    if data[:4] != bytes([7, 0xab, 0xcd, 0xef]):
        continue
    o = data[4:]
    while len(o) >= 4:
        code, ln = struct.unpack("!HH", o[:4])
        body, o = o[4:4 + ln], o[4 + ln:]
        if code == 23:
            dns = ",".join(socket.inet_ntop(socket.AF_INET6, body[i:i + 16])
                           for i in range(0, len(body), 16))
    break
print("RESULT dhcpv6 dns=%s" % dns, flush=True)
"#;

/// UDP echo over IPv6 through [fd00:33::1]:5000, the sizes in argv, up to
/// three tries each; prints `RESULT udp6 size=N ok=0|1`.
const UDP6_PY: &str = r#"import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(2)
for size in map(int, sys.argv[1:]):
    data = bytes((i * 7 + size) % 251 for i in range(size))
    ok = 0
    for _ in range(3):
        s.sendto(data, ("fd00:33::1", 5000))
        try:
            got, peer = s.recvfrom(70000)
        except socket.timeout:
            continue
        ok = int(got == data and peer[0] == "fd00:33::1" and peer[1] == 5000)
        break
    print("RESULT udp6 size=%d ok=%d" % (size, ok), flush=True)
"#;

/// --deny ::1/128 refuses IPv6 connections to the gateway at once (RST:
/// ECONNREFUSED); a later --allow for it re-allows them; so does
/// --no-host-loopback refuse.
#[test]
fn ipv6_deny_allow_and_no_host_loopback() {
    if skip_unless_uipd("ipv6_deny_allow_and_no_host_loopback") {
        return;
    }
    for (name, args, want) in [
        ("ipv6_deny", &["--deny", "::1/128"][..], "ECONNREFUSED"),
        (
            "ipv6_deny_then_allow",
            &["--deny", "::/0", "--allow", "::1/128"][..],
            "ok",
        ),
        (
            "ipv6_no_host_loopback",
            &["--no-host-loopback"][..],
            "ECONNREFUSED",
        ),
    ] {
        let mut sc = Scenario::new(name);
        sc.timeout(60)
            .server_at("sink", "::1", 9000, &[])
            .args(args)
            .args(&["--stats"])
            .guest(&format!("{WAIT_SLAAC}\n{}", connect6("conn")));
        let o = sc.run();
        o.expect_code(0);
        let r = o.result("conn");
        o.check(
            r.get("r").map(String::as_str) == Some(want),
            &format!("{name}: expected {want}"),
        );
        let ms: u64 = r["ms"].parse().unwrap_or(u64::MAX);
        o.check(ms < 2000, &format!("{name}: took {ms} ms"));
        if name == "ipv6_deny" {
            o.check(stat(&o, "drops_denied") >= 1, "the refusal was not counted");
        }
        o.pass();
    }
}

/// Print-only measurement (speed is a benchmark, not a timed test: it asserts nothing): iperf3
/// single stream, 3 s, IPv4 through 192.168.33.1 and IPv6 through
/// [fd00:33::1], both directions, interleaved in one run, at the default
/// MTU and at 1500 (TSO/TSO6). Run with
/// `cargo test --test netns_ipv6 -- --ignored --nocapture`.
#[test]
#[ignore = "measurement: ~1 min; run with --ignored --nocapture"]
fn ipv6_vs_ipv4_iperf3() {
    let script = "for round in 1 2; do for fam in 4 6; do for dir in up down; do\n\
         if [ $fam = 4 ]; then host=$GW; else host=fd00:33::1; fi\n\
         r=''; [ $dir = down ] && r=-R\n\
         for try in 1 2 3; do\n\
           timeout 20 iperf3 -c $host -p 5201 -t 3 $r -J >\"$D/r.json\"\n\
           grep -q 'server is busy' \"$D/r.json\" || break; sleep 1\n\
         done\n\
         echo \"RESULT iperf fam=$fam dir=$dir bps=$(\"$PY\" -c 'import json,sys; print(int(json.load(open(sys.argv[1]))[\"end\"][\"sum_received\"][\"bits_per_second\"]))' \"$D/r.json\")\"\n\
       done; done; done";
    for (name, args) in [
        ("iperf_mtu65520", &[][..]),
        ("iperf_mtu1500", &["--mtu", "1500"][..]),
    ] {
        let mut sc = Scenario::new(name);
        sc.timeout(120)
            .raw_server("iperf3", 5201, "iperf3 -s -p 5201")
            .args(args)
            .guest(&format!("{WAIT_SLAAC}\n{script}"));
        let o = sc.run();
        o.expect_code(0);
        for r in o.results("iperf") {
            let mbit = r["bps"].parse::<f64>().unwrap_or(0.0) / 1e6;
            eprintln!(
                "{name}: IPv{} {:>4}: {mbit:>8.0} Mbit/s",
                r["fam"], r["dir"]
            );
        }
        o.pass();
    }
}
