//! Self-check of the QEMU guest harness (tests/common/guest.rs) on QEMU's
//! own user-mode network (`-netdev user`, libslirp), inside the loopback-only
//! outer namespace: if this fails, the harness is broken, not uipd.
//!
//! The guest loads the virtio-net modules, gets a lease from slirp's DHCP
//! server (10.0.2.15), and downloads a file from a host.py http server on the
//! outer namespace's 127.0.0.1 through slirp's 10.0.2.2; the file's sha256 in
//! the guest must match. The test prints how long one boot takes.

mod common;

use common::{Guest, check_guest, qemu_wall, random_file};

const MIB: u64 = 1024 * 1024;

#[test]
fn slirp_dhcp_and_http_download() {
    if Guest::skip("slirp_dhcp_and_http_download") {
        return;
    }
    let mut g = Guest::new("qemu_slirp");
    let len = 4 * MIB;
    let sum = random_file(&g.dir().join("file.bin"), len);
    let dir = g.dir().display().to_string();
    g.scenario().server("http", 8080, &["--dir", &dir]);
    g.timeout(120)
        .qemu(&[
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ])
        .script(
            "dhcp || exit 1\n\
             timeout 60 wget -q -O /tmp/got.bin http://10.0.2.2:8080/file.bin\n\
             result wget rc=$?\n\
             result got size=$(stat -c %s /tmp/got.bin) sha=$(sha256sum /tmp/got.bin | cut -d' ' -f1)",
        );
    let o = g.run();
    let uptime = check_guest(&o);
    let lease = o.result("dhcp");
    o.check(
        lease.get("ip").map(String::as_str) == Some("10.0.2.15")
            && lease.get("router").map(String::as_str) == Some("10.0.2.2"),
        "unexpected DHCP lease from slirp",
    );
    o.check(o.value("wget", "rc") == "0", "wget failed");
    o.check(o.value("got", "size") == len.to_string(), "size differs");
    o.check(o.value("got", "sha") == sum, "sha256 differs");
    eprintln!(
        "qemu_slirp: guest ready (modules + eth0) after {} s of guest uptime, \
         script done at {uptime:.2} s; QEMU wall time {:.1} s",
        o.value("boot", "uptime"),
        qemu_wall(&o).map_or(f64::NAN, |d| d.as_secs_f64()),
    );
    o.pass();
}
