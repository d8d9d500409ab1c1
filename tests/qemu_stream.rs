//! End-to-end tests of the stream frontend (`uipd --socket SOCK`) with a real
//! Linux guest under QEMU TCG: `-netdev stream,server=off,addr.type=unix`
//! (each frame after a 4-byte big-endian length) and the guest's own
//! virtio-net driver (`-device virtio-net-pci`).
//!
//! Everything runs in a loopback-only outer namespace (tests/common): uipd,
//! QEMU and the host servers (host.py dns/http/sink, iperf3 -s) on its
//! 127.0.0.1. Each boot costs several seconds of TCG, so one boot runs the
//! whole checklist ([`common::NetChecks`]): DHCP (192.168.33.15), DNS through
//! the gateway (test.uipd -> 10.1.2.3 from a host.py dns server named by
//! `--resolver`), ping of the gateway, 32 MiB each way byte-exact (sha256),
//! iperf3 both ways for 3 s each; a second boot repeats DHCP and the bulk
//! transfers with the guest's offloads off (`virtio_net csum=0 gso=0`).
//! Compare the printed Mbit/s with tests/qemu_guest.rs (QEMU's slirp, same
//! script, same machine).
//!
//! `UIPD_TEST_BACKEND=slirp4netns` runs the same tests with QEMU's slirp
//! behind the same stream socket (tests/common/qemu-stream-slirp.sh) instead
//! of uipd, to check the harness; DNS is left out there.

mod common;

use common::{Backend, Guest, NetChecks, qemu_wall, sh_quote, tests_dir};

/// The checklist for the current backend's addresses.
fn checks() -> NetChecks {
    let net = Backend::current().net();
    let mut c = NetChecks::full(net.gw, net.dhcp_ip);
    if Backend::current() == Backend::Slirp {
        c.dns_port = None;
    }
    c
}

/// A guest wired to `uipd --socket` (plus `extra` uipd options).
fn stream_guest(name: &str, checks: &NetChecks, extra: &[&str]) -> (Guest, Option<String>) {
    let mut g = Guest::new(name);
    let sum = checks.install(&mut g);
    let sock = g.dir().join("uipd.sock").display().to_string();
    let mut args = vec!["--socket", &sock, "--stats"];
    let resolver = checks.dns_port.map(|p| format!("127.0.0.1:{p}"));
    if let Some(r) = &resolver {
        args.extend(["--resolver", r.as_str()]);
    }
    args.extend(extra);
    let netdev = format!("stream,id=n0,server=off,addr.type=unix,addr.path={sock}");
    let program = match Backend::current() {
        Backend::Uipd => "$UIPD".to_string(),
        Backend::Slirp => format!(
            "bash {}",
            sh_quote(
                &tests_dir()
                    .join("common/qemu-stream-slirp.sh")
                    .display()
                    .to_string()
            )
        ),
    };
    g.timeout(180).daemon_with(&program, &args, &sock).qemu(&[
        "-netdev",
        &netdev,
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
    ]);
    (g, sum)
}

/// The whole checklist through `uipd --socket`.
#[test]
fn stream_checklist() {
    if Guest::skip("stream_checklist") {
        return;
    }
    let checks = checks();
    let (mut g, sum) = stream_guest("qemu_stream", &checks, &[]);
    let o = g.run();
    checks.check(&o, sum.as_deref());
    if Backend::current() == Backend::Uipd {
        o.check(
            o.stat("rx_frames").is_some_and(|n| n > 1000),
            "uipd's --stats shows no traffic (did the guest talk to another backend?)",
        );
    }
    eprintln!(
        "qemu_stream: QEMU wall time {:.1} s",
        qemu_wall(&o).map_or(f64::NAN, |d| d.as_secs_f64())
    );
    o.pass();
}

/// DHCP and 32 MiB each way with the guest's checksum and segmentation
/// offloads off: every frame carries a checksum the guest computed itself.
#[test]
fn stream_offloads_off() {
    if Guest::skip("stream_offloads_off") {
        return;
    }
    let checks = NetChecks {
        dns_port: None,
        ping: false,
        iperf_secs: 0,
        ..checks()
    };
    let (mut g, sum) = stream_guest("qemu_stream_nooffload", &checks, &[]);
    g.module_params("virtio_net", "csum=0 gso=0");
    let o = g.run();
    checks.check(&o, sum.as_deref());
    o.pass();
}

/// QEMU joined to `uipd passt --fd 10` by a socketpair, as QEMU >= 10.1
/// starts passt (`-netdev stream,addr.type=fd`): DHCP, ping, 16 MiB each
/// way byte-exact; when QEMU exits, uipd sees the end of its connection
/// and exits 0 by itself (tests/common/fdpair.py records its status).
#[test]
fn passt_fd_socketpair() {
    if Guest::skip("passt_fd_socketpair") || Backend::current() != Backend::Uipd {
        return;
    }
    let checks = NetChecks {
        // The personality reads the host's resolv.conf: no test resolver.
        dns_port: None,
        bulk: 16 << 20,
        iperf_secs: 0,
        ..checks()
    };
    let mut g = Guest::new("qemu_passt_fd");
    let sum = checks.install(&mut g);
    let pair = tests_dir().join("common/fdpair.py").display().to_string();
    g.timeout(180)
        .qemu_prefix(&format!(
            "{} {} \"$D\" $UIPD passt --fd 10 --foreground --quiet ---",
            sh_quote(&common::python()),
            sh_quote(&pair)
        ))
        .qemu(&[
            "-netdev",
            "stream,id=n0,server=off,addr.type=fd,addr.str=11",
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ]);
    let o = g.run();
    checks.check(&o, sum.as_deref());
    let rc = std::fs::read_to_string(o.dir.join("daemon.rc")).unwrap_or_default();
    o.check(
        rc.trim() == "0",
        &format!("uipd did not end by itself with exit 0 when QEMU closed the pair: {rc:?}"),
    );
    o.pass();
}
