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
//! uipd's relay holds those and replays them (`src/vmm/vhost_relay.rs`).

mod common;

use common::{Guest, NetChecks, qemu_wall, skip_unless_uipd};

/// A guest wired to `uipd --vhost-user` with `workers` workers (and as
/// many queue pairs on QEMU's side when more than one).
fn vhost_guest(name: &str, checks: &NetChecks, workers: u32) -> (Guest, Option<String>) {
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
    let (mut g, sum) = vhost_guest(name, &checks, pairs);
    let o = g.run();
    let features = acked(&o);
    eprintln!("{name}: guest features: {}", features.join(" "));
    for f in [
        "VERSION_1",
        "MRG_RXBUF",
        "RING_EVENT_IDX",
        "GUEST_TSO4",
        "HOST_TSO4",
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
