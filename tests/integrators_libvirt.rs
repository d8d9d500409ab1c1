//! uipd as libvirt's passt: a real libvirtd starts a QEMU guest with
//! `<interface type='user'><backend type='passt'/>`, and runs the binary
//! under test where it runs passt.
//!
//! Everything lives in the harness's outer `unshare --net --mount`
//! namespace (loopback only). There the test mounts tmpfs over libvirt's
//! state and configuration directories (/run, /var/lib, /var/log,
//! /var/cache and /etc/libvirt), writes its own libvirtd.conf and qemu.conf
//! (root, no security driver, no cgroups, no per-domain namespace, console
//! files opened without virtlogd), bind-mounts the uipd binary over
//! /usr/bin/passt, and starts libvirtd itself, by PID. Nothing on the
//! machine changes and a system libvirtd, if any, is not disturbed.
//!
//! Debian 12's libvirt 9.0 has the passt backend switched off by a Debian
//! patch ("Disable passt support": `<backend type='passt'/>` is refused as
//! an invalid value). scripts/libvirt-passt.sh therefore unpacks libvirt
//! 11.3 from bookworm-backports (no install) into `UIPD_LIBVIRT_ROOT`
//! (default target/libvirt-root), and the test bind-mounts its libvirtd,
//! virsh, libraries, drivers and data over the system's, again only inside
//! its namespace. Where the system libvirt has passt, no root is needed.
//!
//! ```text
//!  outer netns (lo only): host.py http on 127.0.0.1:8080, client of 127.0.0.1:2222
//!   └─ libvirtd ─► /usr/bin/passt (= uipd) --one-off --socket S --pid P -t 127.0.0.1/2222:22
//!               └► qemu-system-x86_64 -netdev stream,addr.path=S (TCG)
//!                    └─ guest: DHCP, wget http://192.168.33.1:8080/down.bin, httpd on :22
//! ```

mod common;

use std::path::{Path, PathBuf};

use common::{Guest, is_root, random_file, sh_quote, skip_unless_uipd};

const MIB: u64 = 1024 * 1024;

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The unpacked libvirt to run instead of the system's (see the module
/// docs), when there is one.
fn libvirt_root() -> Option<PathBuf> {
    let root = match std::env::var_os("UIPD_LIBVIRT_ROOT") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/libvirt-root"),
    };
    root.join("usr/sbin/libvirtd").is_file().then_some(root)
}

/// Shell lines that bind-mount the libvirt under `root` over the system's.
fn overlay(root: &Path) -> String {
    let r = sh_quote(&root.display().to_string());
    format!(
        "R={r}\n\
         for f in \"$R\"/usr/lib/x86_64-linux-gnu/libvirt*.so.0.*; do\n\
           n=$(basename \"$f\" | sed 's/\\.so\\.0\\..*//')\n\
           mount --bind \"$f\" \"$(readlink -f /usr/lib/x86_64-linux-gnu/$n.so.0)\" || exit 93\n\
         done\n\
         for p in usr/lib/x86_64-linux-gnu/libvirt usr/share/libvirt usr/lib/libvirt \
                  usr/sbin/libvirtd usr/bin/virsh; do\n\
           mount --bind \"$R/$p\" \"/$p\" || exit 93\n\
         done\n"
    )
}

const LIBVIRTD_CONF: &str = r#"unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "1:file:@D@/libvirtd.log"
log_filters = "1:qemu 1:util.command 3:util 3:rpc 3:object 3:event 3:conf"
"#;

const QEMU_CONF: &str = r#"user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
"#;

/// The guest MAC the domain names (libvirt 9.0 passed it to passt as
/// `--mac-addr`; passt's -M is the backend's own MAC).
const GUEST_MAC: &str = "52:54:00:12:34:56";

fn domain_xml(dir: &Path, initrd: &Path) -> String {
    format!(
        "<domain type='qemu'>\n\
         <name>uipdtest</name>\n\
         <memory unit='MiB'>512</memory>\n\
         <vcpu>2</vcpu>\n\
         <os><type arch='x86_64' machine='pc'>hvm</type>\n\
           <kernel>{kernel}</kernel>\n\
           <initrd>{initrd}</initrd>\n\
           <cmdline>console=ttyS0 quiet panic=-1</cmdline></os>\n\
         <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\n\
         <devices>\n\
           <emulator>/usr/bin/qemu-system-x86_64</emulator>\n\
           <serial type='file'><source path='{out}'/></serial>\n\
           <interface type='user'>\n\
             <mac address='{GUEST_MAC}'/>\n\
             <backend type='passt'/>\n\
             <portForward proto='tcp' address='127.0.0.1'><range start='2222' to='22'/></portForward>\n\
             <model type='virtio'/>\n\
             <rom enabled='no'/>\n\
           </interface>\n\
           <controller type='usb' model='none'/>\n\
           <memballoon model='none'/>\n\
         </devices>\n\
         </domain>\n",
        kernel = common::assets_dir().join("vmlinuz").display(),
        initrd = initrd.display(),
        out = dir.join("guest.out").display(),
    )
}

/// Prints `RESULT NAME n=N pids=..` for the processes named passt in this
/// network namespace (the outer script's: uipd, sandboxed, has a mount
/// namespace of its own), reading /proc read-only.
const SCAN_PASST: &str = r#"scan_passt() {
  n=0; pids=''; argv=''
  me=$(readlink /proc/self/ns/net)
  for c in /proc/[0-9]*/cmdline; do
    p=${c#/proc/}; p=${p%/cmdline}
    a0=$(tr '\0' '\n' <"$c" 2>/dev/null | head -n1)
    [ "$(basename -- "${a0:-x}")" = passt ] || continue
    [ "$(readlink /proc/$p/ns/net 2>/dev/null)" = "$me" ] || continue
    n=$((n + 1)); pids="$pids,$p"
    argv=$(tr '\0' ' ' <"$c")
    tr '\0' '\n' <"$c" >"$D/passt-argv-$1.txt"
  done
  echo "RESULT $1 n=$n pids=${pids#,}"
  [ -n "$argv" ] && echo "outer: $1: $argv" >&2
  return 0
}
"#;

/// The host client: waits for the guest's server, then downloads
/// down.bin from 127.0.0.1:2222 (the published port) and prints its sha256.
const FETCH_PY: &str = r#"import hashlib, sys, time, urllib.request
deadline = time.time() + float(sys.argv[2])
err = None
while time.time() < deadline:
    try:
        with urllib.request.urlopen("http://127.0.0.1:2222/down.bin", timeout=30) as r:
            h = hashlib.sha256(); n = 0
            while True:
                b = r.read(1 << 16)
                if not b:
                    break
                h.update(b); n += len(b)
        print(f"RESULT fwd rc=0 size={n} sha={h.hexdigest()}")
        sys.exit(0)
    except Exception as e:
        err = e
        time.sleep(0.5)
print(f"RESULT fwd rc=1 err={str(err).replace(' ', '_')}")
"#;

/// libvirt starts uipd as its passt for `<backend type='passt'/>`: the guest
/// gets 192.168.33.15 by DHCP, downloads 16 MiB from the host's loopback
/// through 192.168.33.1, and serves it on port 22, which a host client
/// reaches through the forwarded 127.0.0.1:2222; both byte-exact. uipd
/// runs while the domain does, and `virsh destroy` ends it.
#[test]
fn libvirt_runs_uipd_as_passt() {
    let name = "libvirt_runs_uipd_as_passt";
    if skip_unless_uipd(name) || Guest::skip(name) {
        return;
    }
    if !have("libvirtd") || !have("virsh") {
        eprintln!("{name}: skipped: libvirtd or virsh missing (scripts/setup.sh installs them)");
        return;
    }
    if !is_root() {
        eprintln!("{name}: skipped: libvirtd's qemu:///system needs root");
        return;
    }
    let mut g = Guest::new("libvirt_passt");
    g.timeout(100);
    let d = g.dir().to_path_buf();
    let sum = random_file(&d.join("down.bin"), 16 * MIB);
    g.scenario()
        .server("http", 8080, &["--dir", &d.display().to_string()]);
    g.script(
        "dhcp || exit 1\n\
         timeout 60 wget -q -O /tmp/down.bin http://192.168.33.1:8080/down.bin\n\
         rc=$?\n\
         result down rc=$rc size=$(stat -c %s /tmp/down.bin) sha=$(sha256sum /tmp/down.bin | cut -d' ' -f1)\n\
         mkdir -p /tmp/www && mv /tmp/down.bin /tmp/www/\n\
         httpd -p 22 -h /tmp/www || exit 2\n\
         result serving port=22\n\
         # The host fetches, then destroys the domain; the guest just waits.\n\
         sleep 90\n\
         exit 3",
    );
    let initrd = g.build_initramfs();
    std::fs::write(d.join("dom.xml"), domain_xml(&d, &initrd)).expect("write dom.xml");
    std::fs::write(d.join("fetch.py"), FETCH_PY).expect("write fetch.py");
    let uipd =
        std::env::var("UIPD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_uipd").to_string());
    let mut root = libvirt_root();
    if root.is_none() {
        // As guest-assets.sh for the guest kernel: fetch what is missing
        // (a no-op where the system's libvirt has passt).
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/libvirt-passt.sh");
        let st = std::process::Command::new("timeout")
            .args(["-k", "5", "900", "bash"])
            .arg(&script)
            .status();
        eprintln!("{name}: {}: {st:?}", script.display());
        root = libvirt_root();
    }
    let snippet = format!(
        "{scan}\
         for dir in /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt /etc/libvirt; do\n\
           mkdir -p \"$dir\" && mount -t tmpfs -o mode=0755 tmpfs \"$dir\" || exit 93\n\
         done\n\
         mkdir -p /etc/libvirt/qemu /etc/libvirt/nwfilter\n\
         printf '%s' {lconf} | sed \"s|@D@|$D|\" >/etc/libvirt/libvirtd.conf\n\
         printf '%s' {qconf} >/etc/libvirt/qemu.conf\n\
         {overlay}\
         mount --bind {uipd} /usr/bin/passt || exit 93\n\
         : >\"$D/host.out\"\n\
         timeout -k 5 150 libvirtd -f /etc/libvirt/libvirtd.conf >\"$D/libvirtd.out\" 2>&1 </dev/null &\n\
         LPID=$!\n\
         for _ in $(seq 200); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.1; done\n\
         V='timeout 60 virsh -q -c qemu:///system'\n\
         $V version >\"$D/virsh-version.txt\" 2>&1\n\
         echo \"outer: $(tr '\\n' ' ' <\"$D/virsh-version.txt\")\"\n\
         echo \"outer: qemu starts at $(date +%s.%N)\" >\"$D/qemu.time\"\n\
         if $V create \"$D/dom.xml\" >\"$D/virsh-create.txt\" 2>&1; then\n\
           echo 'RESULT create rc=0' >>\"$D/host.out\"\n\
           scan_passt passt_during >>\"$D/host.out\"\n\
           for _ in $(seq 900); do grep -q 'RESULT serving' \"$D/guest.out\" 2>/dev/null && break; \
             grep -q 'RESULT guest' \"$D/guest.out\" 2>/dev/null && break; sleep 0.1; done\n\
           timeout 70 {py} \"$D/fetch.py\" x 60 >>\"$D/host.out\" 2>\"$D/fetch.err\"\n\
           $V destroy uipdtest >\"$D/virsh-destroy.txt\" 2>&1\n\
           echo \"RESULT destroy rc=$?\" >>\"$D/host.out\"\n\
           for _ in $(seq 50); do r=$(scan_passt passt_after 2>&1); \
             case \"$r\" in *' n=0 '*) break;; esac; sleep 0.1; done\n\
           echo \"$r\" >>\"$D/host.out\"\n\
         else\n\
           echo \"outer: virsh create failed: $(cat \"$D/virsh-create.txt\")\"\n\
           echo 'RESULT create rc=1' >>\"$D/host.out\"\n\
         fi\n\
         echo \"$(date +%s.%N)\" >\"$D/qemu.rc\"\n\
         kill -TERM $LPID 2>/dev/null\n\
         for _ in $(seq 100); do kill -0 $LPID 2>/dev/null || break; sleep 0.1; done\n\
         kill -0 $LPID 2>/dev/null && {{ echo 'outer: libvirtd ignored SIGTERM'; kill -KILL $LPID; }}\n\
         wait $LPID\n\
         echo \"RESULT libvirtd rc=$?\" >>\"$D/host.out\"\n\
         cat \"$D/host.out\" >>\"$D/guest.out\"\n\
         grep -E 'passt|error' \"$D/libvirtd.log\" | tail -n 20\n\
         exit 0",
        scan = SCAN_PASST,
        lconf = sh_quote(LIBVIRTD_CONF),
        qconf = sh_quote(QEMU_CONF),
        overlay = root.as_deref().map(overlay).unwrap_or_default(),
        uipd = sh_quote(&uipd),
        py = sh_quote(&common::python()),
    );
    g.scenario().invocation(&snippet);
    let o = g.scenario().run();
    let create = o.value("create", "rc");
    if create != "0" {
        let err = std::fs::read_to_string(o.dir.join("virsh-create.txt")).unwrap_or_default();
        let hint = if err.contains("'passt'") {
            " (this libvirt build has the passt backend disabled, as Debian 12's 9.0 does: \
             run scripts/libvirt-passt.sh, which unpacks a libvirt that has it)"
        } else {
            ""
        };
        o.fail(&format!("virsh create failed: {}{hint}", err.trim()));
    }
    // The guest was destroyed, not powered off: its script never ended.
    o.check(
        o.value("boot", "modules") == "ok",
        "a virtio module did not load",
    );
    let lease = o.result("dhcp");
    o.check(
        lease.get("ip").map(String::as_str) == Some("192.168.33.15")
            && lease.get("router").map(String::as_str) == Some("192.168.33.1"),
        "DHCP lease is not 192.168.33.15 via 192.168.33.1",
    );
    let down = o.result("down");
    o.check(down["rc"] == "0", "the guest's wget failed");
    o.check(
        down["size"] == (16 * MIB).to_string() && down["sha"] == sum,
        "the guest's download differs (size or sha256)",
    );
    let fwd = o.result("fwd");
    o.check(
        fwd["rc"] == "0",
        "the host client could not fetch through 127.0.0.1:2222",
    );
    o.check(
        fwd["size"] == (16 * MIB).to_string() && fwd["sha"] == sum,
        "the forwarded download differs (size or sha256)",
    );
    let during = o.result("passt_during");
    o.check(
        during["n"] == "1",
        "not exactly one passt (uipd) process while the domain ran",
    );
    let argv =
        std::fs::read_to_string(o.dir.join("passt-argv-passt_during.txt")).unwrap_or_default();
    eprintln!(
        "{name}: libvirt ran passt as: {}",
        argv.trim().replace('\n', " ")
    );
    o.check(
        argv.lines().any(|l| l == "127.0.0.1/2222:22"),
        "libvirt did not pass the port forward",
    );
    o.check(o.value("destroy", "rc") == "0", "virsh destroy failed");
    o.check(
        o.value("passt_after", "n") == "0",
        "a passt (uipd) process outlived the domain",
    );
    o.check(
        o.value("libvirtd", "rc") == "0",
        "libvirtd did not exit 0 on SIGTERM",
    );
    o.pass();
}
