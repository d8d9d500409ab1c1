//! uipd under the programs that launch slirp4netns, run unchanged: here
//! rootlesskit 1.1 (what Docker rootless and `rootlesskit --net=slirp4netns`
//! use), with uipd as its `--slirp4netns-binary` (a link named
//! slirp4netns to the binary under test).
//!
//! rootlesskit makes a user namespace and a network namespace for its child,
//! creates a persistent single-queue `tap0` there, starts slirp4netns as
//! `--mtu 65520 -r 3 [--disable-host-loopback] --api-socket PATH PID tap0`,
//! waits for the ready fd, configures 10.0.2.100/24 via 10.0.2.2 in the
//! child itself, and publishes `-p` ports through the API socket
//! (`--port-driver=slirp4netns`). As root it needs subordinate ids for
//! root: the test bind-mounts its own /etc/subuid and /etc/subgid inside
//! the harness's private mount namespace, so the machine's files are never
//! touched.
//!
//! ```text
//!  outer netns (lo only): host.py http on 127.0.0.1:8000, client of 127.0.0.1:18080
//!   └─ rootlesskit ─► uipd-as-slirp4netns (API socket) ─► tap0 in the child netns
//!        └─ child: wget http://10.0.2.2:8000/up.bin, httpd on :80 serving down.bin
//! ```

mod common;

use common::{Scenario, random_file, skip_unless_uipd};

const MIB: u64 = 1024 * 1024;

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// rootlesskit with `--port-driver=slirp4netns`: the child downloads 16 MiB
/// from the host's loopback through the gateway (outbound TCP), and a host
/// client downloads 16 MiB from the child's httpd through the published
/// port; both byte-exact. When rootlesskit ends, so does uipd.
#[test]
fn rootlesskit_runs_uipd_as_slirp4netns() {
    if skip_unless_uipd("rootlesskit_runs_uipd_as_slirp4netns") {
        return;
    }
    if !have("rootlesskit") {
        panic!("rootlesskit is missing (scripts/setup.sh installs it)");
    }
    let mut sc = Scenario::new("rootlesskit");
    let up = random_file(&sc.dir().join("up.bin"), 16 * MIB);
    let down = random_file(&sc.dir().join("down.bin"), 16 * MIB);
    let dir = sc.dir().display().to_string();
    sc.timeout(120).server("http", 8000, &["--dir", &dir]);
    // The child: fetch from the host, then serve until the client is done.
    std::fs::write(
        sc.dir().join("child.sh"),
        "D=\"$1\"\n\
         ip -o -4 addr show tap0 | awk '{print \"RESULT addr ip=\" $4}'\n\
         busybox wget -q -O \"$D/got-up.bin\" http://10.0.2.2:8000/up.bin\n\
         echo \"RESULT child_get sha=$(sha256sum <\"$D/got-up.bin\" | cut -d' ' -f1)\"\n\
         busybox httpd -f -p 80 -h \"$D\" & H=$!\n\
         touch \"$D/child.ready\"\n\
         for _ in $(seq 600); do [ -e \"$D/done\" ] && break; sleep 0.1; done\n\
         kill $H\n",
    )
    .expect("child.sh");
    // One list_hostfwd request on the API socket rootlesskit made.
    let query = "import json,socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); \
                 s.sendall(b'{\\\"execute\\\": \\\"list_hostfwd\\\"}'); s.shutdown(socket.SHUT_WR); \
                 r=json.loads(s.makefile().read()); print('RESULT api list=' + json.dumps(r, separators=(',', ':')))";
    sc.invocation(&format!(
        "API_QUERY=\"{query}\"\n\
         ln -sf \"$UIPD\" \"$D/slirp4netns\"\n\
         echo 'root:100000:65536' >\"$D/subid\"\n\
         mount --bind \"$D/subid\" /etc/subuid && mount --bind \"$D/subid\" /etc/subgid || exit 93\n\
         timeout -k 5 100 rootlesskit --net=slirp4netns --slirp4netns-binary=\"$D/slirp4netns\" \
           --port-driver=slirp4netns -p 127.0.0.1:18080:80/tcp --state-dir=\"$D/rk\" \
           -- sh \"$D/child.sh\" \"$D\" >\"$D/guest.out\" 2>\"$D/uipd.err\" </dev/null &\n\
         RK=$!\n\
         for _ in $(seq 300); do [ -e \"$D/child.ready\" ] && break; kill -0 $RK 2>/dev/null || break; sleep 0.1; done\n\
         if [ -e \"$D/child.ready\" ]; then \
           busybox wget -q -O \"$D/got-down.bin\" http://127.0.0.1:18080/down.bin; \
           echo \"RESULT host_get sha=$(sha256sum <\"$D/got-down.bin\" | cut -d' ' -f1)\" >\"$D/client.out\"; \
           timeout 5 {py} -c \"$API_QUERY\" \"$D/rk/.s4nn.sock\" >>\"$D/client.out\" 2>&1; \
         fi\n\
         touch \"$D/done\"\n\
         wait $RK; rc=$?\n\
         cat \"$D/client.out\" >>\"$D/guest.out\" 2>/dev/null\n\
         left=0; for p in /proc/[0-9]*; do \
           tr '\\0' ' ' <$p/cmdline 2>/dev/null | grep -q \"^$D/slirp4netns \" && left=$((left+1)); done\n\
         echo \"RESULT after left=$left\" >>\"$D/guest.out\"\n\
         (exit $rc)",
        py = common::python(),
    ));
    let o = sc.run();
    o.expect_code(0);
    o.check(
        o.value("addr", "ip") == "10.0.2.100/24",
        "the child's address",
    );
    o.check(
        o.value("child_get", "sha") == up,
        "the child's download through 10.0.2.2 differs",
    );
    o.check(
        o.value("host_get", "sha") == down,
        "the download through the published port differs",
    );
    let list = o.value("api", "list");
    o.check(
        list.contains("\"host_port\":18080") && list.contains("\"guest_port\":80"),
        "list_hostfwd names rootlesskit's forward",
    );
    o.check(
        o.value("after", "left") == "0",
        "uipd-as-slirp4netns ended with rootlesskit",
    );
    o.pass();
}

/// `pasta [OPTIONS] PID`, as podman's pasta network mode starts it: uipd
/// joins the process's namespace, configures `eth0` (`--config-net`),
/// goes to the background (the parent exits 0 with the serving PID in the
/// `-P` file) and publishes `-t` ports; the namespace reaches the host's
/// loopback through the gateway. When the namespace's process exits,
/// uipd quits by itself.
#[test]
fn pasta_backgrounds_serves_a_pid_and_quits_with_it() {
    if skip_unless_uipd("pasta_backgrounds_serves_a_pid_and_quits_with_it") {
        return;
    }
    let mut sc = Scenario::new("pasta_pid");
    let up = random_file(&sc.dir().join("up.bin"), 16 * MIB);
    let down = random_file(&sc.dir().join("down.bin"), 16 * MIB);
    let dir = sc.dir().display().to_string();
    sc.timeout(90).server("http", 8000, &["--dir", &dir]);
    std::fs::write(
        sc.dir().join("ns.sh"),
        "D=\"$1\"\n\
         for _ in $(seq 100); do ip -o -4 addr show eth0 2>/dev/null | grep -q inet && break; sleep 0.1; done\n\
         ip -o -4 addr show eth0 | awk '{print \"RESULT addr ip=\" $4}'\n\
         busybox wget -q -O \"$D/got-up.bin\" http://192.168.33.1:8000/up.bin\n\
         echo \"RESULT ns_get sha=$(sha256sum <\"$D/got-up.bin\" | cut -d' ' -f1)\"\n\
         busybox httpd -f -p 80 -h \"$D\" & H=$!\n\
         touch \"$D/ns.ready\"\n\
         for _ in $(seq 600); do [ -e \"$D/done\" ] && break; sleep 0.1; done\n\
         kill $H\n",
    )
    .expect("ns.sh");
    sc.invocation(
        "unshare --net sh \"$D/ns.sh\" \"$D\" >\"$D/guest.out\" 2>\"$D/ns.err\" </dev/null &\n\
         NS=$!\n\
         sleep 0.3\n\
         timeout -k 2 20 $UIPD pasta --config-net -t 127.0.0.1/18081:80 -P \"$D/pasta.pid\" $NS \
           >\"$D/pasta.out\" 2>\"$D/uipd.err\" </dev/null\n\
         echo \"RESULT parent rc=$?\" >\"$D/client.out\"\n\
         P=$(cat \"$D/pasta.pid\" 2>/dev/null)\n\
         kill -0 \"$P\" 2>/dev/null && echo \"RESULT serving alive=1\" >>\"$D/client.out\"\n\
         for _ in $(seq 300); do [ -e \"$D/ns.ready\" ] && break; sleep 0.1; done\n\
         busybox wget -q -O \"$D/got-down.bin\" http://127.0.0.1:18081/down.bin\n\
         echo \"RESULT host_get sha=$(sha256sum <\"$D/got-down.bin\" | cut -d' ' -f1)\" >>\"$D/client.out\"\n\
         touch \"$D/done\"\n\
         wait $NS\n\
         gone=0; for _ in $(seq 50); do kill -0 \"$P\" 2>/dev/null || { gone=1; break; }; sleep 0.1; done\n\
         echo \"RESULT after gone=$gone\" >>\"$D/client.out\"\n\
         [ $gone = 1 ] || kill \"$P\" 2>/dev/null\n\
         cat \"$D/client.out\" >>\"$D/guest.out\"\n\
         true",
    );
    let o = sc.run();
    o.expect_code(0);
    o.check(o.value("parent", "rc") == "0", "the parent exits 0");
    o.check(
        o.value("serving", "alive") == "1",
        "the PID file names the serving process",
    );
    o.check(o.value("addr", "ip") == "192.168.33.15/24", "--config-net");
    o.check(
        o.value("ns_get", "sha") == up,
        "the namespace's download through the gateway differs",
    );
    o.check(
        o.value("host_get", "sha") == down,
        "the download through -t 127.0.0.1/18081:80 differs",
    );
    o.check(
        o.value("after", "gone") == "1",
        "uipd quits when the namespace's process exits",
    );
    o.pass();
}

/// The udhcpc event script of the relayed guests: configures eth0.
const DHCP_SCRIPT: &str = "#!/bin/sh\n\
case \"$1\" in bound|renew)\n\
  ip addr flush dev \"$interface\"; ip addr add \"$ip/${mask:-24}\" dev \"$interface\"\n\
  ip route replace default via \"$router\";;\n\
esac\n";

/// `passt -t all,~4000-4100`, as a VMM manager would start it, with a
/// namespace relayed to its stream socket as the guest (the guest's own
/// kernel stack, tests/servers/stream_relay.py): a server the guest
/// starts on an arbitrary port that is not ephemeral (4321) is reached
/// through the same host port, 16 MiB byte-exact, while an excluded port
/// (4050) is not published at all.
#[test]
fn passt_all_publishes_every_free_port() {
    if skip_unless_uipd("passt_all_publishes_every_free_port") {
        return;
    }
    let mut sc = Scenario::new("passt_all");
    let down = random_file(&sc.dir().join("down.bin"), 16 * MIB);
    std::fs::write(sc.dir().join("dhcp.sh"), DHCP_SCRIPT).expect("dhcp.sh");
    std::fs::write(
        sc.dir().join("vm.sh"),
        "D=\"$1\"; PY=\"$2\"; SRV=\"$3\"\n\
         ip link set lo up\n\
         timeout -k 2 60 \"$PY\" \"$SRV/stream_relay.py\" --socket \"$D/vm.sock\" --ready \"$D/relay.ready\" --timeout 55 >\"$D/relay.log\" 2>&1 &\n\
         for _ in $(seq 100); do [ -e \"$D/relay.ready\" ] && break; sleep 0.1; done\n\
         ip link set eth0 up\n\
         timeout 30 busybox udhcpc -i eth0 -n -q -t 5 -T 2 -s \"$D/dhcp.sh\" >/dev/null 2>&1\n\
         echo \"RESULT lease rc=$?\"\n\
         busybox httpd -f -p 4321 -h \"$D\" & H=$!\n\
         busybox httpd -f -p 4050 -h \"$D\" & H2=$!\n\
         touch \"$D/vm.ready\"\n\
         for _ in $(seq 600); do [ -e \"$D/done\" ] && break; sleep 0.1; done\n\
         kill $H $H2\n",
    )
    .expect("vm.sh");
    sc.timeout(90).invocation(&format!(
        "chmod +x \"$D/dhcp.sh\"\n\
         RUST_LOG=info timeout -k 2 80 $UIPD passt -f -s \"$D/vm.sock\" -t all,~4000-4100 \
           >\"$D/passt.out\" 2>\"$D/uipd.err\" </dev/null &\n\
         U=$!\n\
         for _ in $(seq 300); do [ -S \"$D/vm.sock\" ] && break; sleep 0.1; done\n\
         timeout -k 2 70 unshare --net sh \"$D/vm.sh\" \"$D\" {py} {srv} >\"$D/guest.out\" 2>\"$D/vm.err\" </dev/null &\n\
         G=$!\n\
         for _ in $(seq 400); do [ -e \"$D/vm.ready\" ] && break; sleep 0.1; done\n\
         busybox wget -q -O \"$D/got.bin\" http://127.0.0.1:4321/down.bin\n\
         echo \"RESULT host_get sha=$(sha256sum <\"$D/got.bin\" | cut -d' ' -f1)\" >\"$D/client.out\"\n\
         timeout 5 busybox wget -q -O /dev/null http://127.0.0.1:4050/down.bin; \
         echo \"RESULT excluded rc=$?\" >>\"$D/client.out\"\n\
         n=$(grep -c ' 0A ' /proc/net/tcp); echo \"RESULT listeners v4=$n\" >>\"$D/client.out\"\n\
         touch \"$D/done\"\n\
         wait $G\n\
         kill $U; wait $U\n\
         cat \"$D/client.out\" >>\"$D/guest.out\"\n\
         true",
        py = common::sh_quote(&common::python()),
        srv = common::sh_quote(&common::tests_dir().join("servers").display().to_string()),
    ));
    let o = sc.run();
    o.expect_code(0);
    o.check(o.value("lease", "rc") == "0", "the guest got no lease");
    o.check(
        o.value("host_get", "sha") == down,
        "the download through port 4321 (published by 'all') differs",
    );
    o.check(
        o.value("excluded", "rc") != "0",
        "the excluded port 4050 was published",
    );
    let n: usize = o.value("listeners", "v4").parse().unwrap_or(0);
    o.check(n > 1000, "'all' bound fewer than 1000 IPv4 ports");
    o.pass();
}

/// `pasta -t auto PID`: a server the namespace starts after uipd is up
/// (port 7070, not named anywhere) becomes reachable from the host within
/// a few seconds, 16 MiB byte-exact, and its host port is withdrawn a few
/// seconds after the server stops. A server on the namespace's loopback
/// only (7071) is not published.
#[test]
fn pasta_auto_follows_the_namespaces_listeners() {
    if skip_unless_uipd("pasta_auto_follows_the_namespaces_listeners") {
        return;
    }
    let mut sc = Scenario::new("pasta_auto");
    let down = random_file(&sc.dir().join("down.bin"), 16 * MIB);
    std::fs::write(
        sc.dir().join("ns.sh"),
        "D=\"$1\"\n\
         for _ in $(seq 100); do ip -o -4 addr show eth0 2>/dev/null | grep -q inet && break; sleep 0.1; done\n\
         for _ in $(seq 300); do [ -e \"$D/go\" ] && break; sleep 0.1; done\n\
         busybox httpd -f -p 7070 -h \"$D\" & H=$!\n\
         busybox httpd -f -p 127.0.0.1:7071 -h \"$D\" & H2=$!\n\
         for _ in $(seq 300); do [ -e \"$D/stop\" ] && break; sleep 0.1; done\n\
         kill $H; wait $H\n\
         for _ in $(seq 300); do [ -e \"$D/done\" ] && break; sleep 0.1; done\n\
         kill $H2\n",
    )
    .expect("ns.sh");
    sc.timeout(90).invocation(
        "unshare --net sh \"$D/ns.sh\" \"$D\" >\"$D/guest.out\" 2>\"$D/ns.err\" </dev/null &\n\
         NS=$!\n\
         sleep 0.3\n\
         RUST_LOG=info timeout -k 2 20 $UIPD pasta --config-net -t auto -u auto -P \"$D/pasta.pid\" \
           -l \"$D/uipd.err\" $NS >\"$D/pasta.out\" 2>&1 </dev/null\n\
         echo \"RESULT parent rc=$?\" >\"$D/client.out\"\n\
         P=$(cat \"$D/pasta.pid\" 2>/dev/null)\n\
         touch \"$D/go\"; t0=$(date +%s%N)\n\
         up=0; for _ in $(seq 100); do \
           busybox wget -q -O \"$D/got.bin\" http://127.0.0.1:7070/down.bin 2>/dev/null && { up=1; break; }; \
           sleep 0.1; done\n\
         echo \"RESULT published up=$up ms=$(( ($(date +%s%N) - t0) / 1000000 )) \
           sha=$(sha256sum <\"$D/got.bin\" | cut -d' ' -f1)\" >>\"$D/client.out\"\n\
         timeout 5 busybox wget -q -O /dev/null http://127.0.0.1:7071/down.bin; \
         echo \"RESULT loopback_only rc=$?\" >>\"$D/client.out\"\n\
         touch \"$D/stop\"; t0=$(date +%s%N)\n\
         gone=0; for _ in $(seq 100); do \
           grep -q ':1B9E 00000000:0000 0A' /proc/net/tcp || { gone=1; break; }; sleep 0.1; done\n\
         echo \"RESULT withdrawn gone=$gone ms=$(( ($(date +%s%N) - t0) / 1000000 ))\" >>\"$D/client.out\"\n\
         timeout 5 busybox wget -q -O /dev/null http://127.0.0.1:7070/down.bin; \
         echo \"RESULT after rc=$?\" >>\"$D/client.out\"\n\
         touch \"$D/done\"\n\
         wait $NS\n\
         for _ in $(seq 50); do kill -0 \"$P\" 2>/dev/null || break; sleep 0.1; done\n\
         kill \"$P\" 2>/dev/null\n\
         cat \"$D/client.out\" >>\"$D/guest.out\"\n\
         true",
    );
    let o = sc.run();
    o.expect_code(0);
    o.check(o.value("parent", "rc") == "0", "the parent exits 0");
    let p = o.result("published");
    o.check(
        p["up"] == "1",
        "the namespace's new server was not published within 10 s",
    );
    o.check(
        p["sha"] == down,
        "the download through the auto-published port differs",
    );
    o.check(
        o.value("loopback_only", "rc") != "0",
        "a server on the namespace's loopback only was published",
    );
    o.check(
        o.value("withdrawn", "gone") == "1",
        "the host port stayed after the server stopped",
    );
    o.check(
        o.value("after", "rc") != "0",
        "the withdrawn port still answers",
    );
    eprintln!(
        "pasta auto: published after {} ms, withdrawn after {} ms",
        p["ms"],
        o.value("withdrawn", "ms")
    );
    o.pass();
}

/// `pasta -T 8000 -U 5300 PID`: the namespace reaches host servers on its
/// own loopback: 16 MiB byte-exact from a host HTTP server on 127.0.0.1:8000
/// through the namespace's 127.0.0.1:8000, and a UDP datagram to the
/// namespace's 127.0.0.1:5300 reaches a host echo server whose reply comes
/// back. The relay thread runs in the sandbox (the default).
#[test]
fn pasta_ns_to_host_forwards() {
    if skip_unless_uipd("pasta_ns_to_host_forwards") {
        return;
    }
    let mut sc = Scenario::new("pasta_ns_fwd");
    let down = random_file(&sc.dir().join("down.bin"), 16 * MIB);
    let dir = sc.dir().display().to_string();
    sc.timeout(90).server("http", 8000, &["--dir", &dir]);
    std::fs::write(
        sc.dir().join("udp.py"),
        "import socket, sys\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(5)\n\
         if sys.argv[1] == 'echo':\n    \
             s.bind(('127.0.0.1', 5300)); open(sys.argv[2], 'w').close()\n    \
             d, a = s.recvfrom(100); s.sendto(b'echo:' + d, a)\n\
         else:\n    \
             s.sendto(b'ping', ('127.0.0.1', 5300)); print('RESULT udp reply=' + s.recv(100).decode())\n",
    )
    .expect("udp.py");
    std::fs::write(
        sc.dir().join("ns.sh"),
        "D=\"$1\"; PY=\"$2\"\n\
         for _ in $(seq 300); do [ -e \"$D/go\" ] && break; sleep 0.1; done\n\
         busybox wget -q -O \"$D/got.bin\" http://127.0.0.1:8000/down.bin\n\
         echo \"RESULT ns_get rc=$? sha=$(sha256sum <\"$D/got.bin\" | cut -d' ' -f1)\"\n\
         timeout 10 \"$PY\" \"$D/udp.py\" client\n",
    )
    .expect("ns.sh");
    sc.invocation(&format!(
        "timeout 20 {py} \"$D/udp.py\" echo \"$D/echo.ready\" >\"$D/echo.log\" 2>&1 &\n\
         unshare --net sh \"$D/ns.sh\" \"$D\" {py} >\"$D/guest.out\" 2>\"$D/ns.err\" </dev/null &\n\
         NS=$!\n\
         sleep 0.3\n\
         timeout -k 2 30 $UIPD pasta --config-net -T 8000 -U 5300 -P \"$D/pasta.pid\" \
           -l \"$D/uipd.err\" $NS >\"$D/pasta.out\" 2>&1 </dev/null\n\
         echo \"RESULT parent rc=$?\" >\"$D/client.out\"\n\
         P=$(cat \"$D/pasta.pid\" 2>/dev/null)\n\
         for _ in $(seq 50); do [ -e \"$D/echo.ready\" ] && break; sleep 0.1; done\n\
         touch \"$D/go\"\n\
         wait $NS\n\
         for _ in $(seq 50); do kill -0 \"$P\" 2>/dev/null || break; sleep 0.1; done\n\
         kill \"$P\" 2>/dev/null\n\
         cat \"$D/client.out\" >>\"$D/guest.out\"\n\
         true",
        py = common::sh_quote(&common::python()),
    ));
    let o = sc.run();
    o.expect_code(0);
    o.check(o.value("parent", "rc") == "0", "the parent exits 0");
    let g = o.result("ns_get");
    o.check(
        g["rc"] == "0" && g["sha"] == down,
        "the download through -T 8000 differs",
    );
    o.check(
        o.value("udp", "reply") == "echo:ping",
        "the datagram through -U 5300 got no echo",
    );
    o.pass();
}

/// `pasta -T auto -U auto PID`: servers started on the host's loopback
/// after uipd is up (TCP 7080, UDP 7081, named nowhere) become reachable
/// from the namespace's 127.0.0.1 at the same ports within a few seconds
/// (16 MiB byte-exact; a datagram and its echo), and those namespace ports
/// close again a few seconds after the servers stop. The binder process
/// uipd forks into the namespace is gone once uipd is. Sandbox on (the
/// default).
#[test]
fn pasta_ns_auto_follows_the_hosts_ports() {
    if skip_unless_uipd("pasta_ns_auto_follows_the_hosts_ports") {
        return;
    }
    let mut sc = Scenario::new("pasta_ns_auto");
    let down = random_file(&sc.dir().join("down.bin"), 16 * MIB);
    std::fs::write(
        sc.dir().join("udp.py"),
        "import socket, sys\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         if sys.argv[1] == 'echo':\n    \
             s.settimeout(30); s.bind(('127.0.0.1', 7081))\n    \
             for _ in range(100):\n        \
                 d, a = s.recvfrom(100); s.sendto(b'echo:' + d, a)\n\
         else:\n    \
             s.settimeout(0.2)\n    \
             for _ in range(50):\n        \
                 try:\n            \
                     s.sendto(b'ping', ('127.0.0.1', 7081)); print('RESULT udp reply=' + s.recv(100).decode()); break\n        \
                 except OSError:\n            \
                     pass\n",
    )
    .expect("udp.py");
    // 7080 is 1BA8, 7081 1BA9 in /proc/net/{tcp,udp}.
    std::fs::write(
        sc.dir().join("ns.sh"),
        "D=\"$1\"; PY=\"$2\"\n\
         for _ in $(seq 300); do [ -e \"$D/go\" ] && break; sleep 0.1; done\n\
         t0=$(date +%s%N); up=0\n\
         for _ in $(seq 100); do \
           busybox wget -q -O \"$D/got.bin\" http://127.0.0.1:7080/down.bin 2>/dev/null && { up=1; break; }; \
           sleep 0.1; done\n\
         echo \"RESULT ns_get up=$up ms=$(( ($(date +%s%N) - t0) / 1000000 )) sha=$(sha256sum <\"$D/got.bin\" | cut -d' ' -f1)\"\n\
         timeout 20 \"$PY\" \"$D/udp.py\" client\n\
         echo \"RESULT open tcp=$(grep -c ':1BA8 00000000:0000 0A' /proc/net/tcp) udp=$(grep -c ':1BA9 00000000:0000 07' /proc/net/udp)\"\n\
         touch \"$D/got\"\n\
         for _ in $(seq 300); do [ -e \"$D/stopped\" ] && break; sleep 0.1; done\n\
         t0=$(date +%s%N); gone=0\n\
         for _ in $(seq 100); do \
           grep -q ':1BA8 00000000:0000 0A' /proc/net/tcp || grep -q ':1BA9 00000000:0000 07' /proc/net/udp || { gone=1; break; }; \
           sleep 0.1; done\n\
         echo \"RESULT closed gone=$gone ms=$(( ($(date +%s%N) - t0) / 1000000 ))\"\n\
         timeout 5 busybox wget -q -O /dev/null http://127.0.0.1:7080/down.bin 2>/dev/null; echo \"RESULT after rc=$?\"\n",
    )
    .expect("ns.sh");
    sc.timeout(90).invocation(&format!(
        "unshare --net sh \"$D/ns.sh\" \"$D\" {py} >\"$D/guest.out\" 2>\"$D/ns.err\" </dev/null &\n\
         NS=$!\n\
         sleep 0.3\n\
         RUST_LOG=info timeout -k 2 40 $UIPD pasta --config-net -T auto -U auto -P \"$D/pasta.pid\" \
           -l \"$D/uipd.err\" $NS >\"$D/pasta.out\" 2>&1 </dev/null\n\
         echo \"RESULT parent rc=$?\" >\"$D/client.out\"\n\
         P=$(cat \"$D/pasta.pid\" 2>/dev/null)\n\
         KIDS=$(pgrep -P \"$P\" | tr '\\n' ' ')\n\
         echo \"RESULT binder before=$(echo $KIDS | wc -w)\" >>\"$D/client.out\"\n\
         busybox httpd -f -p 127.0.0.1:7080 -h \"$D\" & H=$!\n\
         timeout 30 {py} \"$D/udp.py\" echo >\"$D/echo.log\" 2>&1 & E=$!\n\
         sleep 0.2; touch \"$D/go\"\n\
         for _ in $(seq 400); do [ -e \"$D/got\" ] && break; kill -0 $NS 2>/dev/null || break; sleep 0.1; done\n\
         kill $H $E 2>/dev/null; wait $H $E 2>/dev/null\n\
         touch \"$D/stopped\"\n\
         wait $NS\n\
         for _ in $(seq 50); do kill -0 \"$P\" 2>/dev/null || break; sleep 0.1; done\n\
         kill \"$P\" 2>/dev/null\n\
         left=0; for _ in $(seq 20); do left=0; for k in $KIDS; do kill -0 $k 2>/dev/null && left=$((left+1)); done; \
           [ $left = 0 ] && break; sleep 0.1; done\n\
         echo \"RESULT binder left=$left\" >>\"$D/client.out\"\n\
         cat \"$D/client.out\" >>\"$D/guest.out\"\n\
         true",
        py = common::sh_quote(&common::python()),
    ));
    let o = sc.run();
    o.expect_code(0);
    o.check(o.value("parent", "rc") == "0", "the parent exits 0");
    let b = o.results("binder");
    o.check(
        b.iter().any(|r| r.get("before").is_some_and(|v| v == "1")),
        "uipd has not exactly one child (the binder) while it serves",
    );
    o.check(
        b.iter().any(|r| r.get("left").is_some_and(|v| v == "0")),
        "the binder outlived uipd",
    );
    let g = o.result("ns_get");
    o.check(
        g["up"] == "1",
        "the host's new server was not reachable from the namespace within 10 s",
    );
    o.check(g["sha"] == down, "the download through -T auto differs");
    o.check(
        o.value("udp", "reply") == "echo:ping",
        "the datagram through -U auto got no echo",
    );
    let open = o.result("open");
    o.check(
        open["tcp"] == "1" && open["udp"] == "1",
        "the namespace's 127.0.0.1:7080/tcp and 7081/udp were not listening while the servers ran",
    );
    o.check(
        o.value("closed", "gone") == "1",
        "the namespace ports stayed after the host's servers stopped",
    );
    o.check(
        o.value("after", "rc") != "0",
        "the withdrawn namespace port still answers",
    );
    eprintln!(
        "pasta -T auto: reachable after {} ms, closed after {} ms",
        g["ms"],
        o.value("closed", "ms")
    );
    o.pass();
}
