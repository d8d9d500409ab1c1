//! podman 4.3 (Debian 12) with uipd as its slirp4netns, for real and offline.
//!
//! podman runs as root with private storage in the test's work directory
//! (`--root`, `--runroot`, vfs) and a containers.conf whose
//! `network_cmd_path` is `$D/slirp4netns`, a symlink to the uipd binary
//! under test: uipd's slirp4netns personality is chosen by argv[0]. The
//! image is a busybox rootfs made here and `podman import`ed: podman never
//! talks to a registry, and everything runs in the harness's outer network
//! namespace, which has only `lo`.
//!
//! ```text
//!  outer netns (lo only, private mounts: tmpfs /run, /dev/shm; resolv.conf = 127.0.0.1)
//!   ├─ 127.0.0.1:8000 host.py http ($D/www)    127.0.0.1:53 host.py dns
//!   ├─ podman run ... ─ conmon ─ container (netns: tap0 10.0.2.100, gw 10.0.2.2, DNS 10.0.2.3)
//!   └─ $D/slirp4netns (= uipd) -c -e 3 -r 4 --netns-type=path /run/netns/... tap0
//! ```
//!
//! What podman 4.3 passes (seen through a wrapper that logged argv and ran
//! the real slirp4netns): first `--help` (podman greps it for the flags it
//! may use), then, for `--network slirp4netns:allow_host_loopback=true`,
//! `--mtu=65520 --enable-sandbox --enable-seccomp --enable-ipv6 -c -e 3 -r 4
//! --netns-type=path /run/netns/netns-UUID tap0`; without
//! allow_host_loopback `--disable-host-loopback` comes first, and
//! `port_handler=slirp4netns` adds `--api-socket TMPDIR/CONTAINER_ID.net`.
//! fd 3 is the exit pipe (conmon holds the write end: uipd ends with the
//! container), fd 4 the ready pipe.
//!
//! What this sandbox needs that a normal host does not (all in the outer
//! namespace or podman's own config, nothing on the host changes):
//! - `default_ulimits` below the hard limits: podman asks for nofile
//!   1048576 for root, and raising a hard limit needs CAP_SYS_RESOURCE,
//!   which root here lacks (crun: "setrlimit `RLIMIT_NOFILE`: Operation not
//!   permitted").
//! - cgroups off (`cgroups = "disabled"`), and the cgroup v2 mount of a
//!   hybrid hierarchy unmounted (crun: "cgroups in hybrid mode not
//!   supported, drop all controllers from cgroupv2").
//! - tmpfs on /run (podman's /run/netns, crun's /run/crun) and /dev/shm
//!   (libpod's lock), and /var/lib/containers (the blob-info cache that
//!   `podman import` writes) hidden, so that nothing of podman's lands on
//!   the machine.
//!
//! Skipped, with a message, only when podman is not installed
//! (scripts/setup.sh installs it).

mod common;

use std::path::Path;
use std::process::Command;

use common::{Scenario, is_root, random_file, sh_quote};

const MIB: u64 = 1024 * 1024;

/// The HTTP server in the outer namespace (reached as 10.0.2.2:8000).
const HTTP_PORT: u16 = 8000;
/// Host ports published to the container's httpd (port 80).
const PUB_RLK: u16 = 8080;
const PUB_API: u16 = 8081;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The uipd binary under test.
fn uipd_bin() -> String {
    std::env::var("UIPD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_uipd").to_string())
}

/// A busybox rootfs: /bin/busybox and a link per applet, the dirs a
/// container needs.
fn make_rootfs(root: &Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "www", "ctr"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
}

/// Mounts in the outer namespace (its own mount namespace: the host keeps
/// its /run, /dev/shm, /etc/resolv.conf and /var/lib).
const MOUNTS: &str = r#"set -e
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount --bind "$D/resolv.conf" /etc/resolv.conf
if [ -d /var/lib/containers ]; then mount --bind "$D/varlib" /var/lib/containers;
else mount -t tmpfs tmpfs /var/lib; fi
if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi
"#;

/// The container's checks for the run on 10.0.2.2 (sh, in the container).
const CHECKS: &str = r#"
echo "RESULT addr ip=$(ip -o -4 addr show tap0 | awk '{print $4}')"
if ip -o link show lo | grep -q ',UP'; then echo "RESULT lo up=1"; else echo "RESULT lo up=0"; fi
echo "RESULT resolv first=$(awk '/^nameserver/ {print $2; exit}' /etc/resolv.conf)"
# (No -T: Debian 12 busybox wget segfaults with it.)
timeout 60 wget -q -O /tmp/big.bin http://10.0.2.2:8000/big.bin
rc=$?
echo "RESULT wget rc=$rc sha=$(sha256sum /tmp/big.bin | cut -d' ' -f1) size=$(wc -c </tmp/big.bin)"
a=$(nslookup test.uipd. 10.0.2.3 2>&1 | awk '/^Name:/ {n=1} n && /^Address/ {print $NF; exit}')
echo "RESULT dns addr=${a:-none}"
nslookup test.uipd. 10.0.2.3 >&2 2>&1
"#;

/// The steps, in the outer namespace (bash).
const PODMAN_SH: &str = r#"set -u
export CONTAINERS_CONF="$D/containers.conf" CONTAINERS_STORAGE_CONF="$D/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$D/registries.conf"
S4="$D/slirp4netns"
P() { timeout -k 5 60 podman --root "$D/root" --runroot "$D/run" --storage-driver vfs \
        --tmpdir /run/uipd-pm "$@"; }
# Whatever happens, our containers go (private storage: only ours), and
# with them conmon and uipd.
trap 'P rm -f -t 0 -a >/dev/null 2>&1' EXIT
# PIDs whose argv[0] is the symlink (read-only scan; zombies have no cmdline).
s4pids() {
  for f in /proc/[0-9]*/cmdline; do
    a0=$(tr '\0' '\n' 2>/dev/null <"$f" | head -n 1)
    if [ "$a0" = "$S4" ]; then p=${f#/proc/}; echo "${p%/cmdline}"; fi
  done
}
# RESULT gone-TAG left=N: how many are left after waiting (bounded) for none.
gone() {
  for _ in $(seq 100); do [ -z "$(s4pids)" ] && break; sleep 0.1; done
  echo "RESULT gone-$1 left=$(s4pids | wc -l)"
}
want_exe=$(readlink -f "$UIPD_BIN")

if "$S4" --version | grep -q uipd; then echo "RESULT version uipd=1"; else echo "RESULT version uipd=0"; fi
tar -C "$D/rootfs" -c . | P import - localhost/bbox >/dev/null
echo "RESULT import rc=$?"

# 1. Outbound: the host's loopback through 10.0.2.2, DNS through 10.0.2.3.
P run --rm -v "$D/ctr:/ctr:ro" --network slirp4netns:allow_host_loopback=true \
  localhost/bbox sh /ctr/checks.sh
echo "RESULT run rc=$?"
gone run

# 2. Published ports: TAG PORT NETWORK.
publish() {
  local tag=$1 port=$2 net=$3 id n ok p sum
  id=$(P run -d --name "$tag" -v "$D/www-ctr:/www:ro" -p "127.0.0.1:$port:80" \
         --network "$net" localhost/bbox httpd -f -p 80 -h /www) || { echo "RESULT $tag started=0"; return; }
  for _ in $(seq 100); do
    timeout 2 busybox wget -q -O /dev/null "http://127.0.0.1:$port/small.txt" 2>/dev/null && break
    sleep 0.1
  done
  sum=$(timeout 60 busybox wget -q -O - "http://127.0.0.1:$port/ctr.bin" | sha256sum | cut -d' ' -f1)
  n=0 ok=1
  for p in $(s4pids); do
    n=$((n + 1))
    [ "$(readlink -f /proc/$p/exe)" = "$want_exe" ] || ok=0
    echo "ARGV $tag: $(tr '\0' ' ' </proc/$p/cmdline)"
  done
  echo "RESULT $tag started=1 sha=$sum running=$n exe_is_uipd=$ok"
  if [ -S "/run/uipd-pm/$id.net" ]; then
    "$PY" - "/run/uipd-pm/$id.net" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b'{"execute": "list_hostfwd"}')
s.shutdown(socket.SHUT_WR)
r = json.loads(s.makefile().read())
if "return" not in r:
    sys.exit("list_hostfwd: %r" % r)
e = r["return"]["entries"]
print("RESULT apilist entries=%d host_port=%s guest_port=%s" % (
    len(e), e[0]["host_port"] if e else 0, e[0]["guest_port"] if e else 0))
EOF
  fi
  P stop -t 0 "$tag" >/dev/null
  echo "RESULT stop-$tag rc=$?"
  gone "$tag"
  P rm "$tag" >/dev/null
}
publish rlk "$PUB_RLK" slirp4netns
publish api "$PUB_API" slirp4netns:port_handler=slirp4netns
exit 0
"#;

#[test]
fn podman_runs_containers_on_uipd_as_slirp4netns() {
    if !have("podman") {
        eprintln!(
            "podman_runs_containers_on_uipd_as_slirp4netns: skipped: podman is not installed \
             (scripts/setup.sh installs it)"
        );
        return;
    }
    assert!(
        is_root(),
        "the podman test runs rootful podman (private storage): run it as root"
    );
    for tool in ["crun", "conmon"] {
        assert!(have(tool), "podman's {tool} is missing (scripts/setup.sh)");
    }
    // A short name: the API socket is /run/uipd-pm/<64 hex>.net, and the
    // work dir holds podman's storage.
    let mut sc = Scenario::new("pm");
    sc.timeout(150);
    let d = sc.dir().to_path_buf();
    let w = |name: &str, text: &str| std::fs::write(d.join(name), text).expect(name);
    for sub in ["www", "www-ctr", "ctr", "varlib", "cni"] {
        std::fs::create_dir_all(d.join(sub)).expect("work dir");
    }
    let host_sha = random_file(&d.join("www/big.bin"), 16 * MIB);
    let ctr_sha = random_file(&d.join("www-ctr/ctr.bin"), 8 * MIB);
    w("www-ctr/small.txt", "ok\n");
    w("ctr/checks.sh", CHECKS);
    make_rootfs(&d.join("rootfs"));
    std::os::unix::fs::symlink(uipd_bin(), d.join("slirp4netns")).expect("symlink");
    // uipd forwards 10.0.2.3 to the resolvers of /etc/resolv.conf: the
    // dns server on the outer namespace's 127.0.0.1.
    w("resolv.conf", "nameserver 127.0.0.1\n");
    w(
        "containers.conf",
        &format!(
            "[containers]\n\
             cgroups = \"disabled\"\n\
             default_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
             [engine]\n\
             network_cmd_path = \"{d}/slirp4netns\"\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             runtime = \"crun\"\n\
             [network]\n\
             network_backend = \"cni\"\n\
             network_config_dir = \"{d}/cni\"\n",
            d = d.display()
        ),
    );
    w(
        "storage.conf",
        &format!(
            "[storage]\ndriver = \"vfs\"\nrunroot = \"{d}/run\"\ngraphroot = \"{d}/root\"\n",
            d = d.display()
        ),
    );
    w("registries.conf", "unqualified-search-registries = []\n");
    w("mounts.sh", MOUNTS);
    w(
        "podman.sh",
        &format!(
            "D={}; UIPD_BIN={}; PY={}; PUB_RLK={PUB_RLK}; PUB_API={PUB_API}\n{PODMAN_SH}",
            sh_quote(&d.display().to_string()),
            sh_quote(&uipd_bin()),
            sh_quote(&common::python()),
        ),
    );
    sc.pre_setup("D=\"$D\" sh \"$D/mounts.sh\"")
        .server(
            "http",
            HTTP_PORT,
            &["--dir", &d.join("www").display().to_string()],
        )
        .server("dns", 53, &[])
        .invocation(
            "timeout -k 5 140 bash \"$D/podman.sh\" >\"$D/guest.out\" 2>\"$D/uipd.err\" </dev/null",
        );
    let out = sc.run();

    out.check(
        out.value("version", "uipd") == "1",
        "$D/slirp4netns --version is not uipd's",
    );
    out.check(out.value("import", "rc") == "0", "podman import failed");
    // 1. The container on uipd.
    out.check(
        out.value("addr", "ip") == "10.0.2.100/24",
        "tap0 lacks 10.0.2.100/24",
    );
    out.check(out.value("lo", "up") == "1", "the container's lo is down");
    out.check(
        out.value("resolv", "first") == "10.0.2.3",
        "the container's resolv.conf does not name 10.0.2.3 first",
    );
    let wget = out.result("wget");
    out.check(
        wget.get("rc").map(String::as_str) == Some("0")
            && wget.get("sha") == Some(&host_sha)
            && wget.get("size").map(String::as_str) == Some(&(16 * MIB).to_string()),
        "the 16 MiB download through 10.0.2.2 is not byte-exact",
    );
    out.check(
        out.value("dns", "addr") == "10.1.2.3",
        "test.uipd. did not resolve to 10.1.2.3 through 10.0.2.3",
    );
    out.check(out.value("run", "rc") == "0", "podman run failed");
    out.check(
        out.value("gone-run", "left") == "0",
        "uipd outlived its container (podman run --rm)",
    );
    // 2. Published ports, with both port handlers.
    for tag in ["rlk", "api"] {
        let r = out.result(tag);
        let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
        out.check(
            get("started") == "1",
            &format!("{tag}: podman run -d failed"),
        );
        out.check(
            get("sha") == ctr_sha,
            &format!("{tag}: the download from the container's httpd is not byte-exact"),
        );
        out.check(
            get("running") == "1" && get("exe_is_uipd") == "1",
            &format!("{tag}: not exactly one uipd running as $D/slirp4netns"),
        );
        out.check(
            out.value(&format!("stop-{tag}"), "rc") == "0",
            &format!("{tag}: podman stop failed"),
        );
        out.check(
            out.value(&format!("gone-{tag}"), "left") == "0",
            &format!("{tag}: uipd outlived podman stop"),
        );
    }
    // port_handler=slirp4netns: the forward went through uipd's API.
    out.check(
        out.value("apilist", "entries") == "1"
            && out.value("apilist", "host_port") == PUB_API.to_string()
            && out.value("apilist", "guest_port") == "80",
        "list_hostfwd on uipd's API socket does not show the published port",
    );
    for l in out.lines("ARGV ") {
        eprintln!("seen: {l}");
    }
    out.pass();
}
