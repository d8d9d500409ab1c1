//! End-to-end tests of published ports (`-p/--publish`) and the control
//! socket (`--control`, `uipd ctl`): host clients in the outer namespace
//! reach servers inside the guest namespace, whose own Linux TCP/IP stack
//! answers uipd's SYNs and datagrams.
//!
//! Shape of each run (inside the harness's loopback-only outer namespace):
//!
//! ```text
//!  outer: uipd -p ... -- guest.sh &      guest.sh: start servers, touch guest.ready,
//!         wait for guest.ready                     wait for `done` (bounded), exit
//!         client.sh (python clients to 127.0.0.1:HOSTPORT) > client.out
//!         touch done; wait for uipd; client.out appended to guest.out
//! ```

mod common;

use common::{Outcome, Scenario, random_file, skip_unless_uipd};

const MIB: u64 = 1024 * 1024;

/// Runs uipd with `args`, guest servers started by `servers` (sh lines run
/// in the guest; each must create the file it names in `ready`), then the
/// outer-namespace `client` script (it sees $D, $PY, $PUB = publish.py and
/// $UIPD; its stdout is checked as RESULT lines).
fn run(name: &str, args: &[&str], servers: &str, ready: &[&str], client: &str) -> Outcome {
    let mut sc = Scenario::new(name);
    run_in(&mut sc, args, servers, ready, client)
}

fn run_in(
    sc: &mut Scenario,
    args: &[&str],
    servers: &str,
    ready: &[&str],
    client: &str,
) -> Outcome {
    let waits: String = ready
        .iter()
        .map(|f| {
            format!(
                "for _ in $(seq 150); do [ -e \"$D/{f}\" ] && break; sleep 0.1; done\n\
                 [ -e \"$D/{f}\" ] || echo 'guest: {f} missing'\n"
            )
        })
        .collect();
    sc.timeout(120).guest(&format!(
        "PIDS=''\n{servers}\n{waits}\
         touch \"$D/guest.ready\"\n\
         for _ in $(seq 900); do [ -e \"$D/done\" ] && break; sleep 0.1; done\n\
         for p in $PIDS; do kill \"$p\" 2>/dev/null; done\n\
         exit 0"
    ));
    let py = common::python();
    let pubpy = common::tests_dir().join("servers/publish.py");
    std::fs::write(
        sc.dir().join("client.sh"),
        format!(
            "PY='{py}'; PUB='{}'; D='{}'\n{client}\n",
            pubpy.display(),
            sc.dir().display()
        ),
    )
    .expect("write client.sh");
    let args: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    sc.invocation(&format!(
        "timeout -k 5 100 $UIPD {} -- /bin/sh \"$D/guest.sh\" \
           >\"$D/guest.out\" 2>\"$D/uipd.err\" </dev/null &\n\
         UP=$!\n\
         for _ in $(seq 200); do [ -e \"$D/guest.ready\" ] && break; \
           kill -0 $UP 2>/dev/null || break; sleep 0.1; done\n\
         if [ -e \"$D/guest.ready\" ]; then \
           UIPD=$UIPD timeout -k 5 80 sh \"$D/client.sh\" >\"$D/client.out\" 2>&1; fi\n\
         touch \"$D/done\"\n\
         wait $UP; rc=$?\n\
         cat \"$D/client.out\" >>\"$D/guest.out\" 2>/dev/null\n\
         (exit $rc)",
        args.join(" ")
    ));
    sc.run()
}

/// Guest: a guest-side server of tests/servers/host.py.
fn guest_server(kind: &str, port: u16, extra: &str) -> String {
    format!(
        "$PY $SRV/host.py {kind} --bind 0.0.0.0 --port {port} --timeout 110 \
           --ready \"$D/{kind}-{port}.ready\" {extra} >\"$D/{kind}-{port}.log\" 2>&1 &\n\
         PIDS=\"$PIDS $!\""
    )
}

fn peer_server(port: u16) -> String {
    format!(
        "$PY $SRV/publish.py peerserver --port {port} --timeout 110 \
           --ready \"$D/peer-{port}.ready\" 2>\"$D/peer-{port}.log\" &\n\
         PIDS=\"$PIDS $!\""
    )
}

/// A host client downloads 16 MiB from an HTTP server in the guest and
/// uploads 16 MiB to a sink there, both byte-exact, through published ports.
#[test]
fn tcp_16mib_both_ways() {
    if skip_unless_uipd("tcp_16mib_both_ways") {
        return;
    }
    let mut sc = Scenario::new("publish_tcp_16mib");
    let down = random_file(&sc.dir().join("down.bin"), 16 * MIB);
    let up = random_file(&sc.dir().join("up.bin"), 16 * MIB);
    let servers = format!(
        "{}\n{}",
        guest_server("http", 80, "--dir \"$D\""),
        guest_server("sink", 81, "")
    );
    let o = run_in(
        &mut sc,
        &["-p", "127.0.0.1:8080:80", "-p", "8081:81/tcp", "--stats"],
        &servers,
        &["http-80.ready", "sink-81.ready"],
        "$PY $PUB get 127.0.0.1 8080 /down.bin \"$D/got.bin\"\n\
         $PY $PUB put 127.0.0.1 8081 \"$D/up.bin\"",
    );
    o.expect_code(0);
    o.check(
        o.value("get", "bytes") == (16 * MIB).to_string(),
        "download size",
    );
    o.check(o.value("get", "sha") == down, "downloaded data differs");
    o.check(
        o.value("put", "bytes") == (16 * MIB).to_string(),
        "upload size",
    );
    o.check(o.value("put", "sha") == up, "uploaded data differs");
    o.check(
        o.stat("published_tcp").is_some_and(|n| n >= 2),
        "published_tcp counter",
    );
    o.pass();
}

/// UDP datagrams (small and larger than the guest MTU's fragment size) to
/// a published UDP port come back from the guest's echo server.
#[test]
fn udp_echo() {
    if skip_unless_uipd("udp_echo") {
        return;
    }
    let o = run(
        "publish_udp_echo",
        &["-p", "5353:5353/udp", "--stats"],
        &guest_server("udpecho", 5353, ""),
        &["udpecho-5353.ready"],
        "$PY $PUB udp 127.0.0.1 5353 1 100 1400 8000 30000",
    );
    o.expect_code(0);
    o.check(o.value("udp", "ok") == "1", "not every datagram was echoed");
    o.check(
        o.stat("published_udp") == Some(1),
        "one flow for one client",
    );
    o.pass();
}

/// A port range publishes each port to its counterpart.
#[test]
fn port_range() {
    if skip_unless_uipd("port_range") {
        return;
    }
    let servers = format!(
        "{}\n{}\n{}",
        peer_server(7000),
        peer_server(7001),
        peer_server(7002)
    );
    let o = run(
        "publish_port_range",
        &["-p", "9000-9002:7000-7002"],
        &servers,
        &["peer-7000.ready", "peer-7001.ready", "peer-7002.ready"],
        "for p in 9000 9001 9002; do $PY $PUB peer 127.0.0.1 $p; done\n\
         $PY $PUB refused 127.0.0.1 9003",
    );
    o.expect_code(0);
    let peers = o.results("peer");
    o.check(peers.len() == 3, "three connections");
    o.check(
        peers
            .iter()
            .all(|p| p.get("ip").map(String::as_str) == Some("192.168.33.1")),
        "each port reached the guest (from the gateway)",
    );
    o.check(
        o.value("refused", "refused") == "1",
        "9003 is not published",
    );
    o.pass();
}

/// The guest sees the gateway as the peer by default, and the host client's
/// own (non-loopback) address with --publish-keep-source.
#[test]
fn keep_source() {
    if skip_unless_uipd("keep_source") {
        return;
    }
    for (keep, want) in [(false, "192.168.33.1"), (true, "10.99.0.1")] {
        let name = if keep {
            "publish_keep_source"
        } else {
            "publish_gw_source"
        };
        let mut sc = Scenario::new(name);
        sc.pre_setup("ip addr add 10.99.0.1/32 dev lo");
        let mut args = vec!["-p", "8080:80"];
        if keep {
            args.push("--publish-keep-source");
        }
        let o = run_in(
            &mut sc,
            &args,
            &peer_server(80),
            &["peer-80.ready"],
            "$PY $PUB peer 127.0.0.1 8080 10.99.0.1",
        );
        o.expect_code(0);
        o.check(o.value("peer", "ip") == want, "the peer the guest saw");
        o.pass();
    }
}

/// A published port that is already in use fails at start-up, naming the
/// spec, before the command runs.
#[test]
fn port_in_use_fails_at_startup() {
    if skip_unless_uipd("port_in_use_fails_at_startup") {
        return;
    }
    let mut sc = Scenario::new("publish_port_in_use");
    sc.server("rawecho", 8080, &[])
        .args(&["-p", "8080:80"])
        .guest("echo RESULT ran yes");
    let o = sc.run();
    o.check(o.code == Some(1), "uipd exits with 1");
    o.check(o.results("ran").is_empty(), "the command must not run");
    o.check(
        o.uipd_err.contains("--publish 127.0.0.1:8080:80/tcp") && o.uipd_err.contains("in use"),
        "the error names the spec and the cause",
    );
    o.pass();
}

/// A privileged port without permission fails at start-up, naming the spec
/// and the cause: uipd runs as `nobody` (setpriv) in a fresh network
/// namespace, where ports below 1024 need CAP_NET_BIND_SERVICE.
#[test]
fn privileged_port_without_permission_fails_at_startup() {
    if !common::is_root() {
        eprintln!("skipped: needs root to switch to nobody");
        return;
    }
    let out = std::process::Command::new("timeout")
        .args(["-k", "2", "20", "unshare", "--net", "--", "setpriv"])
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_uipd"))
        .args(["-p", "127.0.0.1:80:80", "--", "sh", "-c", "echo ran"])
        .output()
        .expect("run unshare/setpriv/uipd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ran"),
        "the command must not run"
    );
    assert!(
        err.contains("--publish 127.0.0.1:80:80/tcp") && err.contains("CAP_NET_BIND_SERVICE"),
        "{err}"
    );
}

/// A malformed spec is a usage error that names it.
#[test]
fn malformed_spec_is_a_usage_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uipd"))
        .args(["-p", "9000-9002:80", "--", "true"])
        .output()
        .expect("run uipd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("9000-9002:80") && err.contains("host range has 3 ports"),
        "{err}"
    );
}

/// The control socket adds a forward that then works, lists it and the
/// flows, and removes it, after which the port refuses connections.
#[test]
fn control_socket_adds_lists_and_removes() {
    if skip_unless_uipd("control_socket_adds_lists_and_removes") {
        return;
    }
    let mut sc = Scenario::new("publish_control");
    let sock = sc.dir().join("ctl.sock").display().to_string();
    let o = run_in(
        &mut sc,
        &["--control", &sock],
        &peer_server(80),
        &["peer-80.ready"],
        "C=\"$D/ctl.sock\"\n\
         $PY $PUB refused 127.0.0.1 8080\n\
         $UIPD ctl --control $C add 8080:80 && echo 'RESULT add rc=0'\n\
         $UIPD ctl --control $C add 8080:80; echo \"RESULT add_again rc=$?\"\n\
         $PY $PUB peer 127.0.0.1 8080\n\
         $UIPD ctl --control $C list >\"$D/list.txt\"; echo \"RESULT list rc=$?\"\n\
         grep -q '^forward 127.0.0.1:8080:80/tcp$' \"$D/list.txt\" && echo 'RESULT listed yes=1'\n\
         grep -q '^counter published_tcp 1$' \"$D/list.txt\" && echo 'RESULT counted yes=1'\n\
         grep -q '^worker 0 flows' \"$D/list.txt\" && echo 'RESULT flows yes=1'\n\
         $UIPD ctl --control $C remove 127.0.0.1:8080:80/tcp && echo 'RESULT remove rc=0'\n\
         $PY $PUB refused 127.0.0.1 8080\n\
         $UIPD ctl --control $C remove 8080:80; echo \"RESULT remove_again rc=$?\"",
    );
    o.expect_code(0);
    let refused = o.results("refused");
    o.check(refused.len() == 2, "two refusal checks");
    o.check(
        refused
            .iter()
            .all(|r| r.get("refused").map(String::as_str) == Some("1")),
        "the port refuses before add and after remove",
    );
    o.check(o.value("add", "rc") == "0", "add succeeds");
    o.check(
        o.value("add_again", "rc") == "1",
        "adding it twice is an error",
    );
    o.check(
        o.value("peer", "ip") == "192.168.33.1",
        "the added forward works",
    );
    o.check(o.value("list", "rc") == "0", "list succeeds");
    o.check(o.results("listed").len() == 1, "list shows the forward");
    o.check(o.results("counted").len() == 1, "list shows the counter");
    o.check(o.results("flows").len() == 1, "list shows flows per worker");
    o.check(o.value("remove", "rc") == "0", "remove succeeds");
    o.check(
        o.value("remove_again", "rc") == "1",
        "removing it twice is an error",
    );
    o.pass();
}

/// `--restrict` refuses the guest's own connections but not published
/// ports: a host client's upload to the guest's published sink arrives
/// byte-exact, while the guest's connect to a listening host server is
/// refused at once.
#[test]
fn restrict_still_serves_published_ports() {
    if skip_unless_uipd("restrict_still_serves_published_ports") {
        return;
    }
    let mut sc = Scenario::new("publish_restrict");
    let up = random_file(&sc.dir().join("up.bin"), 64 * 1024);
    // A host server the guest could reach without --restrict (the gateway
    // is the host's 127.0.0.1).
    sc.server("echo", 7000, &[]);
    let servers = format!(
        "{}\n\
         timeout 20 $PY $SRV/publish.py refused 192.168.33.1 7000",
        guest_server("sink", 81, "")
    );
    let o = run_in(
        &mut sc,
        &["--restrict", "-p", "8081:81", "--stats"],
        &servers,
        &["sink-81.ready"],
        "$PY $PUB put 127.0.0.1 8081 \"$D/up.bin\"",
    );
    o.expect_code(0);
    o.check(
        o.value("put", "bytes") == (64 * 1024).to_string() && o.value("put", "sha") == up,
        "the upload through the published port is not byte-exact",
    );
    o.check(
        o.value("refused", "refused") == "1",
        "the guest's outbound connect was not refused",
    );
    o.check(
        o.stat("published_tcp") == Some(1),
        "one published connection",
    );
    o.check(
        o.stat("drops_denied") == Some(1),
        "one outbound flow denied",
    );
    o.pass();
}

/// Published flows survive the guest's frames arriving on any worker's TAP
/// queue (a clean-clone run under load once saw `keep_source`,
/// `port_range` and the 16 MiB test reset this way). Four workers, one
/// TAP queue each; the worker that accepts a host client starts the flow,
/// but tun picks the queue of each guest frame: from the queue uipd last
/// wrote that flow's packets to while that entry lives (a few seconds),
/// else by hash. So:
/// - the guest says nothing before the first published SYN (no IPv6, link
///   brought up by its own script): the accepting worker must reach the
///   guest's MAC through whichever worker reads the guest's ARP reply;
/// - 200 connections in a row each read a greeting and 4 KiB, byte-exact;
/// - 32 connections at once (shown the client's own address) and 8 UDP
///   flows, whose guest side answers only after 7 s of silence, when tun
///   has forgotten them: their replies come in by hash, on other workers'
///   queues, and must be handed to the owner (`foreign_flow_frames`), not
///   reset or answered from a second socket;
/// - a busy loop on every CPU throughout, and the guest's servers pinned to
///   each CPU in turn.
#[test]
fn published_flows_survive_frames_on_any_queue_under_load() {
    if skip_unless_uipd("published_flows_survive_frames_on_any_queue_under_load") {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    for cpu in 0..cpus {
        let mut sc = Scenario::new(&format!("publish_any_queue_cpu{cpu}"));
        sc.pre_setup("ip addr add 10.99.0.1/32 dev lo");
        let pin = format!("taskset -c {cpu} ");
        let servers = format!(
            "sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.eth0.disable_ipv6=1\n\
             ip addr add 192.168.33.15/24 dev eth0 && ip link set eth0 up \
               && ip route add default via 192.168.33.1 || echo 'guest: no address'\n\
             {pin}$PY $SRV/publish.py peerserver --port 80 --bytes 4096 --timeout 110 \
               --ready \"$D/seq.ready\" 2>\"$D/seq.log\" &\nPIDS=\"$PIDS $!\"\n\
             {pin}$PY $SRV/publish.py peerserver --port 81 --bytes 65536 --delay 7 \
               --timeout 110 --ready \"$D/idle.ready\" 2>\"$D/idle.log\" &\nPIDS=\"$PIDS $!\"\n\
             {pin}$PY $SRV/publish.py udpdelay --port 5353 --delay 7 --timeout 110 \
               --ready \"$D/udp.ready\" 2>\"$D/udp.log\" &\nPIDS=\"$PIDS $!\""
        );
        let o = run_in(
            &mut sc,
            &[
                "--workers",
                "4",
                "--no-config-net",
                "--publish-keep-source",
                "--stats",
                "-p",
                "8080:80",
                "-p",
                "8081:81",
                "-p",
                "5353:5353/udp",
            ],
            &servers,
            &["seq.ready", "idle.ready", "udp.ready"],
            "LOAD=''\n\
             for c in $(seq $(nproc)); do timeout 75 sh -c 'while :; do :; done' & LOAD=\"$LOAD $!\"; done\n\
             $PY $PUB peers 127.0.0.1 8080 200 4096 1\n\
             $PY $PUB peers 127.0.0.1 8081 32 65536 32 10.99.0.1 & P=$!\n\
             $PY $PUB udpwait 127.0.0.1 5353 8 20 10.99.0.1\n\
             wait $P\n\
             for p in $LOAD; do kill $p 2>/dev/null; done",
        );
        o.expect_code(0);
        let runs = o.results("peers");
        o.check(runs.len() == 2, "both connection runs reported");
        for (run, want) in runs.iter().zip([200, 32]) {
            let n = |k: &str| run.get(k).and_then(|v| v.parse::<u32>().ok());
            o.check(
                n("ok") == Some(want) && n("reset") == Some(0) && n("bad") == Some(0),
                &format!("all {want} connections byte-exact, none reset: {run:?}"),
            );
        }
        o.check(
            runs.get(1).and_then(|r| r.get("ips")).map(String::as_str) == Some("10.99.0.1"),
            "the guest saw the client's own address",
        );
        o.check(o.value("udpwait", "ok") == "1", "every UDP flow echoed");
        o.check(
            o.stat("foreign_flow_frames").is_some_and(|n| n > 0),
            "some replies came in on another worker's queue and were handed over",
        );
        o.pass();
    }
}
