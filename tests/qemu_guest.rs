//! Self-check of the QEMU guest harness (tests/common/guest.rs) on QEMU's
//! own user-mode network (`-netdev user`, libslirp), inside the loopback-only
//! outer namespace: if this fails, the harness is broken, not uipd.
//!
//! The guest loads the virtio-net modules, gets a lease from slirp's DHCP
//! server (10.0.2.15), pings slirp's gateway 10.0.2.2, downloads 32 MiB from a
//! host.py http server on the outer namespace's 127.0.0.1 through 10.0.2.2
//! and uploads 32 MiB to a sink there (both byte-exact by sha256), and runs
//! iperf3 both ways: the same checklist as the uipd frontend tests
//! ([`common::NetChecks`]) but DNS (slirp forwards to the host's resolvers,
//! which the outer namespace does not have), so its figures are the
//! reference for theirs. The test prints how long one boot takes.

mod common;

use common::{Guest, NetChecks, qemu_wall};

#[test]
fn slirp_checklist() {
    if Guest::skip("slirp_checklist") {
        return;
    }
    let mut g = Guest::new("qemu_slirp");
    let checks = NetChecks {
        dns_port: None,
        ..NetChecks::full("10.0.2.2", "10.0.2.15")
    };
    let sum = checks.install(&mut g);
    g.timeout(150).qemu(&[
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
    ]);
    let o = g.run();
    checks.check(&o, sum.as_deref());
    eprintln!(
        "qemu_slirp: guest ready (modules loaded, eth0 present) {} s after boot (guest clock); \
         QEMU wall time {:.1} s",
        o.value("boot", "uptime"),
        qemu_wall(&o).map_or(f64::NAN, |d| d.as_secs_f64()),
    );
    o.pass();
}
