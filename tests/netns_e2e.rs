//! End-to-end tests of namespace mode: `uipd [OPTIONS] -- COMMAND` with the
//! guest namespace's own Linux TCP/IP stack as the peer.
//!
//! Every test runs inside a fresh outer network namespace that has only `lo`
//! (see tests/common/mod.rs): host-side servers listen on 127.0.0.1 there, and
//! uipd's host sockets can reach nothing else. Ports therefore never clash
//! between tests, which cargo runs in parallel.
//!
//! `UIPD_TEST_BACKEND=slirp4netns cargo test --test netns_e2e` runs the same
//! scenarios on slirp4netns, which proves the harness and the guest commands.

mod common;

use common::{Backend, Scenario, random_file, skip_unless_uipd};

const MIB: u64 = 1024 * 1024;

/// Guest snippet that reports the guest's address and default route, so that
/// tests expecting an error can tell a backend's answer from a missing setup.
const NET_CHECK: &str = "echo \"RESULT netcfg addr=$(ip -4 -o addr show dev $IFNAME | awk '{print $4}') \
     gw=$(ip route show default | awk '{print $3}')\"";

/// Asserts the guest's static configuration (address/24 and default route).
fn check_net(o: &common::Outcome) {
    let net = common::Backend::current().net();
    let r = o.result("netcfg");
    o.check(
        r.get("addr") == Some(&format!("{}/24", net.guest_ip))
            && r.get("gw") == Some(&net.gw.to_string()),
        "the guest's eth0 address or default route is missing",
    );
}

/// 1. A 64 MiB HTTP download through the gateway mapping is byte-exact.
#[test]
fn http_download_64mib() {
    let mut sc = Scenario::new("http_download_64mib");
    let sum = random_file(&sc.dir().join("file.bin"), 64 * MIB);
    let dir = sc.dir().display().to_string();
    sc.timeout(180)
        .server("http", 8080, &["--dir", &dir])
        .args(&["--stats"])
        .guest(
            "timeout 150 busybox wget -q -O \"$D/got.bin\" \"http://$GW:8080/file.bin\"\n\
             echo \"RESULT wget rc=$?\"\n\
             echo \"RESULT got size=$(stat -c %s \"$D/got.bin\") sha=$(sha256sum \"$D/got.bin\" | cut -d' ' -f1)\"",
        );
    let o = sc.run();
    o.expect_code(0);
    o.check(o.value("wget", "rc") == "0", "busybox wget failed");
    o.check(
        o.value("got", "size") == (64 * MIB).to_string(),
        "downloaded size differs",
    );
    o.check(
        o.value("got", "sha") == sum,
        "downloaded data differs (sha256)",
    );
    o.pass();
}

/// 2. A 64 MiB upload to a host listener is byte-exact; the listener's reply
///    after the guest's EOF also checks the guest's FIN arrives.
#[test]
fn tcp_upload_64mib() {
    let mut sc = Scenario::new("tcp_upload_64mib");
    let sum = random_file(&sc.dir().join("up.bin"), 64 * MIB);
    let out = sc.dir().join("sink.txt").display().to_string();
    sc.timeout(180)
        .server("sink", 9000, &["--out", &out])
        .args(&["--stats"])
        .guest(
            "timeout 150 busybox nc \"$GW\" 9000 <\"$D/up.bin\" >\"$D/nc.out\"\n\
             rc=$?\n\
             echo \"RESULT upload rc=$rc bytes=$(cut -d' ' -f1 \"$D/nc.out\") sha=$(cut -d' ' -f2 \"$D/nc.out\")\"",
        );
    let o = sc.run();
    o.expect_code(0);
    let r = o.result("upload");
    o.check(r["rc"] == "0", "busybox nc failed");
    o.check(
        r["bytes"] == (64 * MIB).to_string(),
        "host received a different byte count",
    );
    o.check(r["sha"] == sum, "host received different data (sha256)");
    let sink = std::fs::read_to_string(&out).unwrap_or_default();
    o.check(
        sink.trim() == format!("{} {sum}", 64 * MIB),
        &format!("sink server recorded {sink:?}"),
    );
    o.pass();
}

/// 3. 200 concurrent short TCP connections are all answered correctly.
#[test]
fn tcp_200_concurrent_connections() {
    let mut sc = Scenario::new("tcp_200_concurrent_connections");
    sc.timeout(120)
        .server("echo", 7000, &[])
        .guest("timeout 100 \"$PY\" \"$SRV/guest.py\" concurrent \"$GW\" 7000 200");
    let o = sc.run();
    o.expect_code(0);
    let r = o.result("concurrent");
    o.check(
        r["ok"] == "200" && r["of"] == "200",
        &format!("{} of 200 connections answered correctly", r["ok"]),
    );
    o.pass();
}

/// 4a. The guest half-closes (FIN after 4 MiB) and still gets the reply, which
///     the host sends only after reading EOF.
#[test]
fn tcp_half_close() {
    let mut sc = Scenario::new("tcp_half_close");
    sc.timeout(90)
        .server("halfclose", 7001, &[])
        .guest(&format!(
            "timeout 60 \"$PY\" \"$SRV/guest.py\" halfclose \"$GW\" 7001 {}",
            4 * MIB
        ));
    let o = sc.run();
    o.expect_code(0);
    let r = o.result("halfclose");
    o.check(
        r["reply_bytes"] == r["sent"],
        "host saw a different byte count",
    );
    o.check(
        r["reply_sha"] == r["sha"],
        "host saw different data (sha256)",
    );
    o.check(
        r["tail_ok"] == "1",
        "reply after the half-close is missing or corrupt",
    );
    o.pass();
}

/// 4b. A host server that resets mid-transfer (SO_LINGER 0 close): the guest
///     sees the reset (or at least a truncated stream), never a complete one.
#[test]
fn tcp_reset_mid_transfer() {
    let mut sc = Scenario::new("tcp_reset_mid_transfer");
    sc.timeout(90)
        .server("reset", 7002, &[])
        .guest("timeout 60 \"$PY\" \"$SRV/guest.py\" reset \"$GW\" 7002");
    let o = sc.run();
    o.expect_code(0);
    let r = o.result("reset");
    eprintln!(
        "tcp_reset_mid_transfer: outcome {} after {} bytes",
        r["outcome"], r["bytes"]
    );
    o.check(
        r["outcome"] == "reset" || r["outcome"] == "truncated",
        &format!(
            "expected a reset (or a truncated stream), got {}",
            r["outcome"]
        ),
    );
    o.pass();
}

/// 5. Connecting to a closed host port fails fast with "connection refused".
#[test]
fn tcp_connect_closed_port_refused() {
    let mut sc = Scenario::new("tcp_connect_closed_port_refused");
    sc.timeout(60).guest(&format!(
        "{NET_CHECK}\ntimeout 30 \"$PY\" \"$SRV/guest.py\" connect \"$GW\" 7999"
    ));
    let o = sc.run();
    o.expect_code(0);
    check_net(&o);
    let r = o.result("connect");
    o.check(
        r["outcome"] == "ECONNREFUSED",
        &format!("expected ECONNREFUSED, got {}", r["outcome"]),
    );
    let ms: u64 = r["ms"].parse().unwrap_or(u64::MAX);
    o.check(ms < 2000, &format!("refusal took {ms} ms (limit 2000)"));
    o.pass();
}

fn udp_echo(name: &str, mtu: Option<u32>) {
    let mut sc = Scenario::new(name);
    let mtu_v = mtu.unwrap_or(65520);
    let mut sizes = vec![1, 100, 1400, mtu_v - 28, 65507];
    sizes.dedup();
    let sizes: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
    let mtu_s = mtu_v.to_string();
    if mtu.is_some() {
        sc.args(&["--mtu", &mtu_s]);
    }
    sc.timeout(90)
        .server("udpecho", 5000, &[])
        .args(&["--stats"])
        .guest(&format!(
            "echo \"RESULT link mtu=$(ip -o link show dev $IFNAME | sed -n 's/.* mtu \\([0-9]*\\) .*/\\1/p')\"\n\
             timeout 60 \"$PY\" \"$SRV/guest.py\" udp \"$GW\" 5000 {}",
            sizes.join(" ")
        ));
    let o = sc.run();
    o.expect_code(0);
    o.check(
        o.value("link", "mtu") == mtu_s,
        "guest interface has the wrong MTU",
    );
    let res = o.results("udp");
    for s in &sizes {
        let ok = res
            .iter()
            .any(|r| r.get("size") == Some(s) && r.get("ok").map(String::as_str) == Some("1"));
        o.check(ok, &format!("UDP round trip of {s} bytes failed"));
    }
    o.pass();
}

/// 6a. UDP echo of 1, 100, 1400, MTU-28 and 65507 bytes at the default MTU.
#[test]
fn udp_echo_default_mtu() {
    udp_echo("udp_echo_default_mtu", None);
}

/// 6b. The same at --mtu 1500, where 65507-byte datagrams are fragmented both ways.
#[test]
fn udp_echo_mtu_1500_fragmented() {
    udp_echo("udp_echo_mtu_1500_fragmented", Some(1500));
}

/// 7. ping -c 3 to the gateway succeeds.
#[test]
fn icmp_ping_gateway() {
    let mut sc = Scenario::new("icmp_ping_gateway");
    sc.timeout(60).guest(
        "timeout 30 busybox ping -c 3 -w 20 \"$GW\"\n\
         echo \"RESULT ping rc=$?\"",
    );
    let o = sc.run();
    o.expect_code(0);
    o.check(o.value("ping", "rc") == "0", "busybox ping failed");
    o.check(
        o.guest_out.contains("3 packets received"),
        "ping did not get 3 replies",
    );
    o.pass();
}

/// 8. DNS through the gateway: busybox nslookup (UDP, via the bind-mounted
///    /etc/resolv.conf) and a TCP query both get the test resolver's answer.
#[test]
fn dns_udp_and_tcp() {
    let mut sc = Scenario::new("dns_udp_and_tcp");
    let net = sc.net();
    match sc.backend() {
        Backend::Uipd => {
            sc.server("dns", 5353, &[])
                .args(&["--resolver", "127.0.0.1:5353"]);
        }
        Backend::Slirp => {
            // slirp4netns forwards to the resolvers of its own /etc/resolv.conf, on port 53.
            sc.server("dns", 53, &[]).setup(
                "echo 'nameserver 127.0.0.1' >\"$D/host-resolv.conf\" \
                 && mount --bind \"$D/host-resolv.conf\" /etc/resolv.conf",
            );
        }
    }
    sc.timeout(90).guest(
        "echo \"RESULT resolv ns=$(awk '/^nameserver/ {print $2; exit}' /etc/resolv.conf)\"\n\
         timeout 20 busybox nslookup test.uipd.\n\
         echo \"RESULT nslookup rc=$?\"\n\
         timeout 20 busybox nslookup nothere.uipd.\n\
         echo \"RESULT nslookup_nx rc=$?\"\n\
         timeout 20 \"$PY\" \"$SRV/guest.py\" dnstcp \"$DNS\" 53 test.uipd.",
    );
    let o = sc.run();
    o.expect_code(0);
    o.check(
        o.value("resolv", "ns") == net.dns,
        "/etc/resolv.conf in the guest does not name the gateway",
    );
    o.check(
        o.value("nslookup", "rc") == "0",
        "nslookup test.uipd. failed",
    );
    o.check(
        o.lines("Address:").iter().any(|a| a == "10.1.2.3"),
        "nslookup did not return 10.1.2.3",
    );
    o.check(
        o.value("nslookup_nx", "rc") != "0",
        "nslookup of a name the resolver does not know succeeded",
    );
    let r = o.result("dnstcp");
    o.check(
        r.get("rcode").map(String::as_str) == Some("0")
            && r.get("addrs").map(String::as_str) == Some("10.1.2.3")
            && r.get("id_ok").map(String::as_str) == Some("1"),
        "DNS over TCP did not return 10.1.2.3",
    );
    o.pass();
}

/// 9. With --no-config-net, busybox udhcpc obtains the guest address, the
///    router, the DNS server and the MTU by DHCP.
#[test]
fn dhcp_udhcpc() {
    let mut sc = Scenario::new("dhcp_udhcpc");
    let net = sc.net();
    let script = sc.dir().join("dhcp-event.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         dnsl=$(echo $dns | tr ' ' ,)\n\
         echo \"RESULT udhcpc event=$1 ip=$ip subnet=$subnet router=$router dns=$dnsl mtu=$mtu lease=$lease\"\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    sc.timeout(90).args(&["--no-config-net"]).guest(
        "echo \"RESULT pre flags=$(ip -o link show dev $IFNAME | sed -n 's/^[^<]*<\\([^>]*\\)>.*/\\1/p') addrs=$(ip -4 -o addr show dev $IFNAME | wc -l)\"\n\
         timeout 40 busybox udhcpc -i \"$IFNAME\" -n -q -t 5 -T 2 -s \"$D/dhcp-event.sh\"\n\
         echo \"RESULT udhcpc_exit rc=$?\"",
    );
    let o = sc.run();
    o.expect_code(0);
    let pre = o.result("pre");
    o.check(
        pre["flags"].split(',').any(|f| f == "UP"),
        "eth0 is not up with --no-config-net",
    );
    o.check(
        pre["addrs"] == "0",
        "eth0 has an IPv4 address despite --no-config-net",
    );
    o.check(
        o.value("udhcpc_exit", "rc") == "0",
        "udhcpc did not obtain a lease",
    );
    let bound: Vec<_> = o
        .results("udhcpc")
        .into_iter()
        .filter(|r| r.get("event").map(String::as_str) == Some("bound"))
        .collect();
    o.check(bound.len() == 1, "expected one 'bound' event");
    let b = &bound[0];
    let get = |k: &str| b.get(k).cloned().unwrap_or_default();
    o.check(get("ip") == net.dhcp_ip, &format!("DHCP ip {}", get("ip")));
    o.check(
        get("subnet") == "255.255.255.0",
        &format!("DHCP subnet {}", get("subnet")),
    );
    o.check(
        get("router") == net.gw,
        &format!("DHCP router {}", get("router")),
    );
    o.check(
        get("dns").split(',').any(|d| d == net.dns),
        &format!("DHCP dns {}", get("dns")),
    );
    if sc.backend() == Backend::Uipd {
        o.check(get("mtu") == "65520", &format!("DHCP mtu {}", get("mtu")));
    }
    o.pass();
}

fn iperf_rate(o: &common::Outcome, file: &str) -> f64 {
    let text = std::fs::read_to_string(o.dir.join(file)).unwrap_or_default();
    let v: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => o.fail(&format!("{file}: not iperf3 JSON ({e}): {text:.2000}")),
    };
    if let Some(err) = v.get("error") {
        o.fail(&format!("{file}: iperf3 error: {err}"));
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
}

/// 10. iperf3 for 2 s in both directions succeeds with a non-zero rate.
#[test]
fn iperf3_both_directions() {
    let mut sc = Scenario::new("iperf3_both_directions");
    sc.timeout(90)
        .raw_server("iperf3", 5201, "iperf3 -s -B 127.0.0.1 -p 5201")
        .guest(
            "timeout 30 iperf3 -c \"$GW\" -p 5201 -t 2 -J >\"$D/up.json\"\n\
             echo \"RESULT iperf_up rc=$?\"\n\
             timeout 30 iperf3 -c \"$GW\" -p 5201 -t 2 -R -J >\"$D/down.json\"\n\
             echo \"RESULT iperf_down rc=$?\"",
        );
    let o = sc.run();
    o.expect_code(0);
    let up = iperf_rate(&o, "up.json");
    let down = iperf_rate(&o, "down.json");
    eprintln!(
        "iperf3_both_directions: guest->host {:.0} Mbit/s, host->guest {:.0} Mbit/s",
        up / 1e6,
        down / 1e6
    );
    o.check(
        o.value("iperf_up", "rc") == "0",
        "iperf3 guest->host failed",
    );
    o.check(
        o.value("iperf_down", "rc") == "0",
        "iperf3 -R host->guest failed",
    );
    o.check(up > 0.0, "iperf3 guest->host rate is zero");
    o.check(down > 0.0, "iperf3 host->guest rate is zero");
    o.pass();
}

/// 11. With --no-host-loopback, the gateway does not reach the host's loopback:
///     a connection to a port that is open there is refused.
#[test]
fn no_host_loopback_refuses() {
    let mut sc = Scenario::new("no_host_loopback_refuses");
    sc.timeout(60)
        .server("echo", 7000, &[])
        .args(&["--no-host-loopback"])
        .guest(&format!(
            "{NET_CHECK}\ntimeout 30 \"$PY\" \"$SRV/guest.py\" connect \"$GW\" 7000\n\
             echo \"RESULT neigh lladdr=$(ip neigh show \"$GW\" dev $IFNAME | grep -c lladdr)\""
        ));
    let o = sc.run();
    o.expect_code(0);
    check_net(&o);
    // The gateway must have answered ARP: a dead backend also makes connect
    // fail (EHOSTUNREACH once ARP gives up, after ~3 s), which is no refusal.
    o.check(
        o.value("neigh", "lladdr") == "1",
        "the gateway did not answer ARP (is the backend serving the guest?)",
    );
    let r = o.result("connect");
    o.check(
        ["ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH"].contains(&r["outcome"].as_str()),
        &format!(
            "expected the connection to be refused, got {}",
            r["outcome"]
        ),
    );
    let ms: u64 = r["ms"].parse().unwrap_or(u64::MAX);
    o.check(ms < 2000, &format!("refusal took {ms} ms (limit 2000)"));
    o.pass();
}

/// 12. Command-line errors and exit statuses.
#[test]
fn cli_errors_and_exit_status() {
    if skip_unless_uipd("cli_errors_and_exit_status") {
        return;
    }
    // Each case: (name, invocation, check).
    let run = |name: &str, invocation: &str| {
        let mut sc = Scenario::new(name);
        sc.timeout(30)
            .invocation(invocation)
            .guest("echo \"RESULT ran\"");
        sc.run()
    };
    for bad in ["10", "67", "65521"] {
        let o = run(
            &format!("cli_mtu_{bad}"),
            &format!(
                "timeout -k 2 10 $UIPD --mtu {bad} -- /bin/sh \"$D/guest.sh\" \
                 >\"$D/guest.out\" 2>\"$D/uipd.err\" </dev/null"
            ),
        );
        o.check(
            o.code.is_some_and(|c| c != 0 && c != 124 && c != 137),
            &format!("--mtu {bad} did not fail promptly"),
        );
        o.check(
            o.results("ran").is_empty(),
            "the command ran despite a bad --mtu",
        );
        o.check(
            o.uipd_err.to_lowercase().contains("mtu"),
            "the error message does not name the MTU",
        );
        o.pass();
    }

    let o = run(
        "cli_mtu_68",
        "timeout -k 2 20 $UIPD --mtu 68 -- ip -o link show dev eth0 \
         >\"$D/guest.out\" 2>\"$D/uipd.err\" </dev/null",
    );
    o.expect_code(0);
    o.check(
        o.guest_out.contains(" mtu 68 "),
        "--mtu 68 is not applied to eth0",
    );
    o.pass();

    let o = run(
        "cli_netns_missing",
        "timeout -k 2 10 $UIPD --netns /nonexistent >\"$D/guest.out\" 2>\"$D/uipd.err\" </dev/null",
    );
    o.check(
        o.code.is_some_and(|c| c != 0 && c != 124 && c != 137),
        "--netns /nonexistent did not fail promptly",
    );
    o.check(
        o.uipd_err.contains("/nonexistent"),
        "the error message does not name the netns path",
    );
    o.pass();

    let o = run(
        "cli_command_missing",
        "timeout -k 2 20 $UIPD -- /nonexistent-cmd >\"$D/guest.out\" 2>\"$D/uipd.err\" </dev/null",
    );
    o.expect_code(127);
    o.check(
        o.uipd_err.contains("nonexistent-cmd"),
        "the error message does not name the missing command",
    );
    o.pass();

    let o = run(
        "cli_exit_status",
        "timeout -k 2 20 $UIPD -- /bin/sh -c 'exit 7' >\"$D/guest.out\" 2>\"$D/uipd.err\" </dev/null",
    );
    o.expect_code(7);
    o.pass();
}

/// 13. --netns PID attaches to an existing namespace, configures and serves
///     it, and exits promptly on SIGTERM.
#[test]
fn netns_attach_and_sigterm() {
    let mut sc = Scenario::new("netns_attach_and_sigterm");
    let net = sc.net();
    sc.timeout(60).server("echo", 7000, &[]).invocation(
        // The target namespace: a sleeper in a new netns (+ mount ns, so the
        // guest script can bind its own resolv.conf without touching ours).
        "timeout 50 unshare --net --mount -- sleep 45 & target=$!\n\
         for _ in $(seq 50); do [ \"$(readlink /proc/$target/ns/net)\" != \"$(readlink /proc/self/ns/net)\" ] && break; sleep 0.1; done\n\
         timeout -k 2 40 $UIPD --netns $target 2>\"$D/uipd.err\" & uipd=$!\n\
         for _ in $(seq 100); do nsenter -t $target -n ip -4 -o addr show dev eth0 2>/dev/null | grep -q inet && break; sleep 0.1; done\n\
         timeout 20 nsenter -t $target -n -- /bin/sh \"$D/guest.sh\" >\"$D/guest.out\"\n\
         echo \"RESULT guest rc=$?\" >>\"$D/guest.out\"\n\
         kill -TERM $uipd\n\
         t0=$(date +%s%N); wait $uipd; urc=$?; t1=$(date +%s%N)\n\
         echo \"RESULT term rc=$urc ms=$(( (t1 - t0) / 1000000 ))\" >>\"$D/guest.out\"\n\
         kill $target 2>/dev/null; wait $target 2>/dev/null\n\
         [ $urc = 0 ] || [ $urc = 143 ]",
    ).guest(
        "echo \"RESULT addr a=$(ip -4 -o addr show dev $IFNAME | awk '{print $4}')\"\n\
         echo \"RESULT route gw=$(ip route show default | awk '{print $3}')\"\n\
         echo hello | timeout 10 busybox nc \"$GW\" 7000 >\"$D/nc.out\"\n\
         echo \"RESULT nc reply=$(tr ' ' _ <\"$D/nc.out\")\"",
    );
    let o = sc.run();
    o.check(o.value("guest", "rc") == "0", "guest script failed");
    o.check(
        o.value("addr", "a") == format!("{}/24", net.guest_ip),
        "eth0 address",
    );
    o.check(o.value("route", "gw") == net.gw, "default route");
    o.check(
        o.value("nc", "reply") == "echo_hello",
        "echo through the attached namespace",
    );
    let t = o.result("term");
    // A clean exit (0) or death by the signal itself (128 + 15, as timeout(1) reports it).
    o.check(
        t["rc"] == "0" || t["rc"] == "143",
        &format!("uipd exited with {} on SIGTERM", t["rc"]),
    );
    let ms: u64 = t["ms"].parse().unwrap_or(u64::MAX);
    o.check(ms < 5000, &format!("uipd took {ms} ms to exit on SIGTERM"));
    o.expect_code(0);
    o.pass();
}
