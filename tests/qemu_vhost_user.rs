//! End-to-end tests of the vhost-user-net backend (`uipd --vhost-user
//! SOCK`) with a real Linux guest under QEMU TCG: guest memory in a shared
//! memfd, `-netdev vhost-user` and the guest's own virtio-net driver
//! (`-device virtio-net-pci`), so every frame crosses real split
//! virtqueues that uipd reads and writes in the guest's memory.
//!
//! Everything runs in a loopback-only outer namespace (tests/common). One
//! boot runs the whole checklist ([`common::NetChecks`]): DHCP
//! (192.168.33.15), DNS through the gateway, ping of the gateway, 32 MiB
//! each way byte-exact (sha256), iperf3 both ways. uipd logs the features
//! the guest acked (by name); the test asserts the offloads it expects.
//!
//! QEMU 7.2 under TCG: the device runs with `vectors=0` (INTx). With
//! MSI-X, QEMU 7.2 itself crashes (SIGSEGV in `msix_set_vector_notifiers`,
//! seen with gdb) when vhost starts on a TCG machine, where it cannot use
//! irqfd; that is QEMU's bug, not the backend's. QEMU also sends
//! `SET_VRING_ENABLE` before `SET_FEATURES`, which the vhost crate refuses;
//! uipd's relay holds those and replays them (`src/vmm/vhost_user/relay.rs`).

mod common;

use common::{Guest, NetChecks, qemu_wall, random_file, sh_quote, skip_unless_uipd};

/// A guest wired to `uipd --vhost-user` with `workers` workers (and as
/// many queue pairs on QEMU's side when more than one).
fn vhost_guest(
    name: &str,
    checks: &NetChecks,
    workers: u32,
    extra: &[&str],
) -> (Guest, Option<String>) {
    let pairs = workers;
    let mut g = Guest::new(name);
    let sum = checks.install(&mut g);
    let sock = g.dir().join("uipd-vhost.sock").display().to_string();
    let workers = workers.to_string();
    let mut args = vec!["--vhost-user", &sock, "--stats", "--workers", &workers];
    let resolver = checks.dns_port.map(|p| format!("127.0.0.1:{p}"));
    if let Some(r) = &resolver {
        args.extend(["--resolver", r.as_str()]);
    }
    args.extend(extra);
    let chardev = format!("socket,id=c0,path={sock}");
    let (netdev, device) = if pairs > 1 {
        (
            format!("vhost-user,id=n0,chardev=c0,queues={pairs}"),
            "virtio-net-pci,netdev=n0,romfile=,mq=on,vectors=0".to_string(),
        )
    } else {
        (
            "vhost-user,id=n0,chardev=c0".to_string(),
            "virtio-net-pci,netdev=n0,romfile=,vectors=0".to_string(),
        )
    };
    g.timeout(200)
        .memfd(true)
        .daemon_with("env RUST_LOG=uipd=info $UIPD", &args, &sock)
        .qemu(&["-chardev", &chardev, "-netdev", &netdev, "-device", &device]);
    (g, sum)
}

/// The guest-acked features, from uipd's log.
fn acked(o: &common::Outcome) -> Vec<String> {
    o.uipd_err
        .lines()
        .rev()
        .find_map(|l| l.split_once("guest features: ").map(|(_, f)| f))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn run_checklist(name: &str, pairs: u32) {
    if skip_unless_uipd(name) || Guest::skip(name) {
        return;
    }
    let net = common::Backend::current().net();
    let checks = NetChecks::full(net.gw, net.dhcp_ip);
    let (mut g, sum) = vhost_guest(name, &checks, pairs, &[]);
    let o = g.run();
    let features = acked(&o);
    eprintln!("{name}: guest features: {}", features.join(" "));
    for f in [
        "VERSION_1",
        "MRG_RXBUF",
        "RING_EVENT_IDX",
        "CSUM",
        "GUEST_TSO4",
        "HOST_TSO4",
        "GUEST_TSO6",
        "HOST_TSO6",
    ] {
        o.check(
            features.iter().any(|x| x == f),
            &format!("the guest did not ack {f}: {features:?}"),
        );
    }
    checks.check(&o, sum.as_deref());
    o.check(
        o.stat("rx_frames").is_some_and(|n| n > 1000),
        "uipd's --stats shows no traffic",
    );
    eprintln!(
        "{name}: QEMU wall time {:.1} s",
        qemu_wall(&o).map_or(f64::NAN, |d| d.as_secs_f64())
    );
    o.pass();
}

/// The whole checklist through one queue pair.
#[test]
fn vhost_user_checklist() {
    run_checklist("qemu_vhost_user", 1);
}

/// The whole checklist with two workers and two queue pairs (`mq=on`): the
/// guest acks MQ and uses both pairs; TX frames are steered by the 5-tuple
/// to their owner worker, whose frames go out on its own pair.
#[test]
fn vhost_user_two_workers() {
    run_checklist("qemu_vhost_user_2w", 2);
}

/// The guest's port 8000, published on the host's 127.0.0.1:8022.
const PUB_HOST_PORT: u16 = 8022;
const PUB_GUEST_PORT: u16 = 8000;

/// Guest side of the published-port check: a one-shot `nc -l` that stores
/// what it receives (and answers "<bytes> <sha256>", as
/// tests/servers/publish.py `put` expects), started before the checks and
/// waited for (bounded) after them; the guest then reports the size and
/// sha256 of what it got.
///
/// Both ends are checked: the guest's copy, and the host client's reply
/// (which arrives after the host half-closed; the guest closes last, so
/// this also covers the ACK of the guest's final FIN: that ACK used to be
/// lost when the flow was removed, and the retransmitted FIN met a reset).
const PUB_SERVER: &str = r#"printf '#!/bin/sh\ncat >/tmp/pub.got\necho "$(wc -c </tmp/pub.got) $(sha256sum /tmp/pub.got | cut -d" " -f1)"\n' >/tmp/pubsink.sh
chmod +x /tmp/pubsink.sh
timeout 150 nc -l -p PORT -e /tmp/pubsink.sh &
NCPID=$!
"#;

/// The guest's virtio-net offloads off (`virtio_net csum=0 gso=0`): DHCP
/// and 16 MiB each way byte-exact. In the same boot, two more frontend
/// checks: a host client reaches a server in the guest through
/// `-p 127.0.0.1:8022:8000` (1 MiB byte-exact), and `--pcap` records the
/// DHCP exchange and TCP handshakes, read back with `tcpdump -r`.
///
/// The module parameters do not change which virtio features the driver
/// acks (it still acks CSUM and GUEST_TSO4, as uipd's "guest features:"
/// line shows; they only turn the netdev's offloads off), so the test
/// checks what the guest actually sent, in the capture: no guest frame
/// longer than the MTU (no TSO) and no guest TCP segment with a checksum
/// tcpdump calls incorrect (no checksum offload).
#[test]
fn vhost_user_offloads_off_publish_pcap() {
    let name = "qemu_vhost_user_nooffload";
    if skip_unless_uipd(name) || Guest::skip(name) {
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
    let net = common::Backend::current().net();
    let checks = NetChecks {
        dns_port: None,
        ping: false,
        iperf_secs: 0,
        bulk: 16 << 20,
        ..NetChecks::full(net.gw, net.dhcp_ip)
    };
    let publish = format!("127.0.0.1:{PUB_HOST_PORT}:{PUB_GUEST_PORT}");
    // uipd runs in the work directory: the capture lands there.
    let (mut g, sum) = vhost_guest(name, &checks, 1, &["-p", &publish, "--pcap", "vhost.pcap"]);
    let pcap = g.dir().join("vhost.pcap").display().to_string();
    let up = g.dir().join("pub.bin");
    let up_sum = random_file(&up, 1 << 20);
    g.module_params("virtio_net", "csum=0 gso=0");
    let server = PUB_SERVER.replace("PORT", &PUB_GUEST_PORT.to_string());
    g.script(&format!(
        "{server}{}\nwait $NCPID\nresult pubsrv rc=$? size=$(stat -c %s /tmp/pub.got) \
         sha=$(sha256sum /tmp/pub.got | cut -d' ' -f1)",
        checks.script()
    ));
    // Until the guest listens, uipd's SYN meets a reset and the client
    // sees the connection close: retry (bounded; the harness stops the
    // client when QEMU exits). Later tries meet the reset again, since the
    // guest's nc serves one connection; see PUB_SERVER on the reply.
    let client = format!(
        "for i in $(seq 120); do \
           out=$({py} {pubpy} put 127.0.0.1 {PUB_HOST_PORT} {up}); \
           case \"$out\" in *sha=[0-9a-f]*) echo \"$out\"; exit 0;; esac; sleep 1; \
         done",
        py = sh_quote(&common::python()),
        pubpy = sh_quote(
            &common::tests_dir()
                .join("servers/publish.py")
                .display()
                .to_string()
        ),
        up = sh_quote(&up.display().to_string()),
    );
    g.host_client(&client);
    let o = g.run();
    let features = acked(&o);
    eprintln!("{name}: guest features: {}", features.join(" "));
    checks.check(&o, sum.as_deref());
    o.check(
        o.value("pubsrv", "size") == (1u64 << 20).to_string(),
        "the published-port upload did not arrive whole",
    );
    o.check(
        o.value("pubsrv", "sha") == up_sum,
        "the published-port upload differs (sha256)",
    );
    o.check(
        o.value("pubsrv", "rc") == "0",
        "the guest's nc server failed",
    );
    let put = o.result("put");
    o.check(
        put.get("bytes").map(String::as_str) == Some("1048576") && put.get("sha") == Some(&up_sum),
        &format!("the host client's reply through the published port: {put:?}"),
    );
    // The capture.
    let read = |filter: &str, flags: &[&str]| {
        let out = std::process::Command::new("tcpdump")
            .args(["-r", &pcap, "-nn"])
            .args(flags)
            .arg(filter)
            .output()
            .expect("run tcpdump");
        o.check(
            out.status.success(),
            &format!(
                "tcpdump -r failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dhcp = read("udp port 67 or udp port 68", &[]);
    for what in ["BOOTP/DHCP, Request", "BOOTP/DHCP, Reply"] {
        o.check(
            dhcp.contains(what),
            &format!("the pcap has no {what}:\n{dhcp}"),
        );
    }
    let ip = net.dhcp_ip;
    let syn = read(&format!("tcp[tcpflags] & tcp-syn != 0 and host {ip}"), &[]);
    o.check(
        syn.contains("Flags [S],") && syn.contains("Flags [S.],"),
        &format!("the pcap has no TCP handshake:\n{syn}"),
    );
    o.check(
        syn.contains(&format!(".{PUB_GUEST_PORT}: Flags [S],")),
        &format!("the pcap has no SYN toward the published guest port:\n{syn}"),
    );
    let from_guest = read(&format!("src host {ip}"), &["-e"]);
    let longest = from_guest
        .lines()
        .filter_map(|l| {
            l.split_once(", length ")
                .and_then(|(_, r)| r.split(':').next())
        })
        .filter_map(|n| n.trim().parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    o.check(
        longest > 1000 && longest <= 1514,
        &format!(
            "longest guest frame {longest} bytes: expected full-size frames, none over 1514 (gso=0)"
        ),
    );
    let sums = read(&format!("tcp and src host {ip}"), &["-vv"]);
    let bad = sums.lines().filter(|l| l.contains("incorrect")).count();
    o.check(
        bad == 0 && sums.contains("cksum"),
        &format!("{bad} guest TCP segments with an incorrect checksum (csum=0)"),
    );
    o.check(
        o.stat("pcap_frames").is_some_and(|n| n > 1000),
        "uipd's --stats shows no captured frames",
    );
    o.pass();
}

/// IPv6 through a real guest: the kernel's SLAAC takes uipd's router
/// advertisement (fd00:33::/64), then 16 MiB each way byte-exact between
/// the guest and servers on the host's ::1, reached as [fd00:33::1]. The
/// guest acked HOST_TSO6 and GUEST_TSO6, and uipd's counters show TSO
/// super-frames both ways (the only TCP in this boot is over IPv6). The
/// upload is busybox nc's 1 KiB writes, which go out as super-frames only
/// when ACKs are slow enough for them to pile up, so 4 MiB of iperf3's
/// 128 KiB writes follow: those always leave several segments ready.
#[test]
fn vhost_user_ipv6_slaac_and_16_mib_each_way_with_tso6() {
    let name = "qemu_vhost_user_ipv6";
    if skip_unless_uipd(name) || Guest::skip(name) {
        return;
    }
    if common::Backend::current() != common::Backend::Uipd {
        eprintln!("{name}: skipped: IPv6 defaults are uipd's");
        return;
    }
    let net = common::Backend::current().net();
    // Only DHCP from the checklist: it brings the link up.
    let checks = NetChecks {
        dns_port: None,
        ping: false,
        iperf_secs: 0,
        bulk: 0,
        ..NetChecks::full(net.gw, net.dhcp_ip)
    };
    let (mut g, _) = vhost_guest(name, &checks, 1, &[]);
    let dir = g.dir().display().to_string();
    let sink = g.dir().join("sink6.txt").display().to_string();
    let sum = random_file(&g.dir().join("down6.bin"), 16 << 20);
    g.scenario()
        .server_at("http", "::1", 8081, &["--dir", &dir])
        .server_at("sink", "::1", 9001, &["--out", &sink])
        .raw_server("iperf3-v6", 5206, "iperf3 -s -B ::1 -p 5206");
    g.script(
        "dhcp || exit 1\n\
         i=0\n\
         while [ $i -lt 200 ] && ! ip -6 addr show dev eth0 scope global | grep -q 'fd00:33:'; do sleep 0.1; i=$((i + 1)); done\n\
         result v6 addr=$(ip -6 addr show dev eth0 scope global | awk '/inet6/ {print $2; exit}')\n\
         i=0\n\
         while [ $i -lt 100 ] && ip -6 addr show dev eth0 scope global | grep -q tentative; do sleep 0.1; i=$((i + 1)); done\n\
         timeout 10 ping -c 1 -W 5 fd00:33::1 >/dev/null 2>&1\n\
         result ping6 rc=$?\n\
         timeout 120 wget -q -O /tmp/down6.bin 'http://[fd00:33::1]:8081/down6.bin'\n\
         rc=$?\n\
         result down6 rc=$rc size=$(stat -c %s /tmp/down6.bin) sha=$(sha256sum /tmp/down6.bin | cut -d' ' -f1)\n\
         timeout 120 nc fd00:33::1 9001 </tmp/down6.bin >/tmp/nc6.out\n\
         rc=$?\n\
         result up6 rc=$rc bytes=$(cut -d' ' -f1 /tmp/nc6.out) sha=$(cut -d' ' -f2 /tmp/nc6.out)\n\
         timeout 60 iperf3 -6 -c fd00:33::1 -p 5206 -n 4M >/tmp/iperf6.out 2>&1\n\
         result iperf6 rc=$?",
    );
    let o = g.run();
    let features = acked(&o);
    eprintln!("{name}: guest features: {}", features.join(" "));
    for f in ["GUEST_TSO6", "HOST_TSO6"] {
        o.check(
            features.iter().any(|x| x == f),
            &format!("the guest did not ack {f}: {features:?}"),
        );
    }
    o.check(
        o.value("v6", "addr").starts_with("fd00:33:"),
        "no SLAAC address in fd00:33::/64",
    );
    o.check(
        o.value("ping6", "rc") == "0",
        "no echo reply from fd00:33::1",
    );
    o.check(o.value("down6", "rc") == "0", "the IPv6 download failed");
    o.check(
        o.value("down6", "sha") == sum,
        "the IPv6 download differs (sha256)",
    );
    o.check(o.value("up6", "rc") == "0", "the IPv6 upload failed");
    o.check(
        o.value("up6", "bytes") == (16u64 << 20).to_string() && o.value("up6", "sha") == sum,
        "the IPv6 upload differs",
    );
    let (rx, tx) = (
        o.stat("rx_gso_frames").unwrap_or(0),
        o.stat("tx_gso_frames").unwrap_or(0),
    );
    eprintln!("{name}: rx_gso_frames {rx} tx_gso_frames {tx}");
    o.check(o.value("iperf6", "rc") == "0", "the iperf3 upload failed");
    o.check(rx > 0, "the guest sent no TSO6 super-frames");
    o.check(tx > 0, "uipd sent the guest no TSO6 super-frames");
    o.pass();
}
