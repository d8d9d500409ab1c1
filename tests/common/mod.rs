//! Harness for the namespace-mode end-to-end tests.
//!
//! Each test builds a [`Scenario`]: host-side servers (tests/servers/host.py),
//! uipd options and a guest shell script. [`Scenario::run`] writes an outer
//! script and runs it under `unshare --net --mount`, so that everything, the
//! servers, uipd and its guest namespace, lives in an outer network namespace
//! that has nothing but `lo`: whatever uipd sends to "the host" can only reach
//! that namespace's loopback. Every step is bounded by `timeout`, servers exit
//! on their own after a while, and the outer script kills (by PID) only the
//! servers it started.
//!
//! ```text
//!  outer netns (lo only) ─ 127.0.0.1: host.py servers, iperf3 -s, ...
//!   └─ uipd [ARGS] -- /bin/sh guest.sh      (uipd's host sockets live here)
//!        └─ guest netns: eth0 (TAP) 192.168.33.15/24, gw 192.168.33.1
//! ```
//!
//! Environment:
//! - `UIPD_TEST_BACKEND=slirp4netns` runs the same scenarios on slirp4netns
//!   (through tests/common/slirp-uipd.sh) instead of uipd, to check the harness
//!   against a known-good backend; uipd-only tests skip themselves.
//! - `UIPD_TEST_BIN=PATH` runs another uipd binary (e.g. a release build).
//! - `UIPD_TEST_PYTHON=PATH` picks the Python 3 interpreter.
//! - `UIPD_TEST_KEEP=1` keeps every test's work directory (they are kept on failure).
//!
//! [`guest`] runs a real Linux guest under QEMU inside the same kind of outer namespace.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod guest;
#[allow(unused_imports)] // Only the QEMU tests use it.
pub use guest::*;

/// Which backend serves the guest namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The uipd binary under test.
    Uipd,
    /// slirp4netns behind tests/common/slirp-uipd.sh (harness validation).
    Slirp,
}

impl Backend {
    /// The backend chosen by `UIPD_TEST_BACKEND`.
    pub fn current() -> Backend {
        match std::env::var("UIPD_TEST_BACKEND").as_deref() {
            Ok("slirp4netns") | Ok("slirp") => Backend::Slirp,
            Ok("") | Ok("uipd") | Err(_) => Backend::Uipd,
            Ok(other) => panic!("UIPD_TEST_BACKEND={other}: expected uipd or slirp4netns"),
        }
    }

    /// Addresses as the guest sees them.
    pub fn net(self) -> Net {
        match self {
            Backend::Uipd => Net {
                gw: "192.168.33.1",
                guest_ip: "192.168.33.15",
                dhcp_ip: "192.168.33.15",
                dns: "192.168.33.1",
            },
            Backend::Slirp => Net {
                gw: "10.0.2.2",
                guest_ip: "10.0.2.100",
                dhcp_ip: "10.0.2.15",
                dns: "10.0.2.3",
            },
        }
    }
}

/// The guest's view of the network.
#[derive(Clone, Copy, Debug)]
pub struct Net {
    /// Gateway: TCP/UDP to it reach the host's 127.0.0.1.
    pub gw: &'static str,
    /// The statically configured guest address.
    pub guest_ip: &'static str,
    /// The address DHCP hands out.
    pub dhcp_ip: &'static str,
    /// The DNS forwarder.
    pub dns: &'static str,
}

/// Returns true (and says so) when the test does not apply to the current backend.
pub fn skip_unless_uipd(test: &str) -> bool {
    if Backend::current() != Backend::Uipd {
        eprintln!(
            "{test}: skipped: uipd-only test, backend is {:?}",
            Backend::current()
        );
        return true;
    }
    false
}

/// The tests/ directory.
pub fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// The Python 3 interpreter used for servers and guest clients.
pub fn python() -> String {
    if let Ok(p) = std::env::var("UIPD_TEST_PYTHON") {
        return p;
    }
    if Path::new("/usr/bin/python3").exists() {
        return "/usr/bin/python3".into();
    }
    "python3".into()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Quotes `s` for a POSIX shell (as is when it needs no quoting).
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A scenario: servers in the outer namespace, uipd options, a guest script.
pub struct Scenario {
    name: String,
    dir: PathBuf,
    backend: Backend,
    servers: Vec<(String, String, String)>,
    pre_setup: Vec<String>,
    setup: Vec<String>,
    invocation: Option<String>,
    args: Vec<String>,
    guest: String,
    timeout: Duration,
}

/// What a scenario run left behind.
pub struct Outcome {
    /// Test name.
    pub name: String,
    /// Work directory (data, logs).
    pub dir: PathBuf,
    /// Exit status of uipd (= of the guest command), None when it did not get that far.
    pub code: Option<i32>,
    /// Exit status of the whole outer script.
    pub outer_code: Option<i32>,
    /// Guest command's stdout.
    pub guest_out: String,
    /// Guest command's stderr.
    pub guest_err: String,
    /// uipd's stderr.
    pub uipd_err: String,
    /// Outer script's stdout + stderr.
    pub outer_log: String,
    /// Server logs, by name.
    pub server_logs: Vec<(String, String)>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    keep: bool,
    passed: bool,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Scenario {
    /// A new scenario with a fresh work directory.
    pub fn new(name: &str) -> Scenario {
        let backend = Backend::current();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("uipd-e2e-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create work dir");
        Scenario {
            name: name.into(),
            dir,
            backend,
            servers: Vec::new(),
            pre_setup: Vec::new(),
            setup: Vec::new(),
            invocation: None,
            args: Vec::new(),
            guest: String::new(),
            timeout: Duration::from_secs(120),
        }
    }

    /// The work directory (shared with the guest: same file system).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The guest's view of the network for this backend.
    pub fn net(&self) -> Net {
        self.backend.net()
    }

    /// The backend this scenario runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Adds a tests/servers/host.py server of `kind` on 127.0.0.1:`port`.
    pub fn server(&mut self, kind: &str, port: u16, extra: &[&str]) -> &mut Self {
        self.server_at(kind, "127.0.0.1", port, extra)
    }

    /// Adds a tests/servers/host.py server of `kind` on `addr`:`port`; `addr`
    /// must be on the outer namespace's `lo` (127.0.0.0/8, or one that
    /// [`Scenario::pre_setup`] adds).
    pub fn server_at(&mut self, kind: &str, addr: &str, port: u16, extra: &[&str]) -> &mut Self {
        let name = if addr == "127.0.0.1" {
            format!("{kind}-{port}")
        } else {
            format!("{kind}-{addr}-{port}")
        };
        let mut cmd = format!(
            "timeout -k 2 {} {} {}/servers/host.py {kind} --bind {} --port {port} --timeout {} --ready {}/{name}.ready",
            self.timeout.as_secs() + 30,
            sh_quote(&python()),
            sh_quote(&tests_dir().display().to_string()),
            sh_quote(addr),
            self.timeout.as_secs() + 20,
            sh_quote(&self.dir.display().to_string()),
        );
        for e in extra {
            cmd.push(' ');
            cmd.push_str(&sh_quote(e));
        }
        let ready = format!("[ -e \"$D/{name}.ready\" ]");
        self.servers.push((name, cmd, ready));
        self
    }

    /// Adds an arbitrary server command (bounded by the harness), ready once
    /// something listens on TCP 127.0.0.1:`port`.
    pub fn raw_server(&mut self, name: &str, port: u16, cmd: &str) -> &mut Self {
        let cmd = format!("timeout -k 2 {} {cmd}", self.timeout.as_secs() + 30);
        let ready = format!("ss -Hltn 'sport = :{port}' | grep -q .");
        self.servers.push((name.into(), cmd, ready));
        self
    }

    /// Replaces the default backend invocation
    /// (`timeout T $UIPD ARGS -- /bin/sh $D/guest.sh >$D/guest.out 2>$D/uipd.err`)
    /// with a shell snippet. It sees $UIPD (the backend command) and $D, must
    /// bound everything it runs, and its exit status is the backend's.
    pub fn invocation(&mut self, snippet: &str) -> &mut Self {
        self.invocation = Some(snippet.into());
        self
    }

    /// Adds a shell command run in the outer namespace before uipd starts
    /// (after the servers are ready).
    pub fn setup(&mut self, cmd: &str) -> &mut Self {
        self.setup.push(cmd.into());
        self
    }

    /// Adds a shell command run in the outer namespace before the servers
    /// start (e.g. `ip addr add` for an address a server binds).
    pub fn pre_setup(&mut self, cmd: &str) -> &mut Self {
        self.pre_setup.push(cmd.into());
        self
    }

    /// Adds uipd options (before `--`).
    pub fn args(&mut self, args: &[&str]) -> &mut Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Sets the guest script (POSIX sh). It sees $D (work dir), $PY, $SRV
    /// (tests/servers), $GW, $GUEST_IP, $DNS, $IFNAME. Its stdout is checked.
    pub fn guest(&mut self, script: &str) -> &mut Self {
        self.guest = script.into();
        self
    }

    /// Sets the whole scenario's time limit.
    pub fn timeout(&mut self, secs: u64) -> &mut Self {
        self.timeout = Duration::from_secs(secs);
        self
    }

    fn launcher(&self) -> String {
        match self.backend {
            Backend::Uipd => std::env::var("UIPD_TEST_BIN")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_uipd").to_string()),
            Backend::Slirp => format!("bash {}/common/slirp-uipd.sh", tests_dir().display()),
        }
    }

    fn outer_script(&self) -> String {
        let d = sh_quote(&self.dir.display().to_string());
        let secs = self.timeout.as_secs();
        let mut s = String::new();
        let _ = writeln!(s, "set -u\nD={d}\ncd \"$D\" || exit 90");
        s.push_str(
            "ip link set lo up || { echo 'outer: cannot bring lo up'; exit 90; }\n\
             sysctl -q -w net.ipv4.ping_group_range='0 2147483647' \
               || echo 'outer: warning: cannot set ping_group_range'\n\
             links=$(ip -o link show | awk -F': ' '{print $2}' | tr '\\n' ' ')\n\
             if [ \"$links\" != 'lo ' ]; then \
               echo \"outer: namespace has more than lo: $links\"; exit 90; fi\n\
             PIDS=''\n\
             cleanup() { for p in $PIDS; do kill \"$p\" 2>/dev/null; done; \
                         for p in $PIDS; do wait \"$p\" 2>/dev/null; done; }\n\
             trap cleanup EXIT\n",
        );
        for cmd in &self.pre_setup {
            let _ = writeln!(
                s,
                "{cmd} || {{ echo 'outer: pre-setup failed: {}'; exit 92; }}",
                cmd.replace('\'', "")
            );
        }
        for (name, cmd, _) in &self.servers {
            let _ = writeln!(
                s,
                "{cmd} >\"$D/server-{name}.log\" 2>&1 &\nPIDS=\"$PIDS $!\""
            );
        }
        for (name, _, ready) in &self.servers {
            let _ = writeln!(
                s,
                "for _ in $(seq 150); do {ready} && break; sleep 0.1; done\n\
                 {ready} || {{ echo 'outer: server {name} did not start'; exit 91; }}"
            );
        }
        for cmd in &self.setup {
            let _ = writeln!(
                s,
                "{cmd} || {{ echo 'outer: setup failed: {}'; exit 92; }}",
                cmd.replace('\'', "")
            );
        }
        let args: Vec<String> = self.args.iter().map(|a| sh_quote(a)).collect();
        let invocation = self.invocation.clone().unwrap_or_else(|| {
            format!(
                "timeout -k 5 {secs} $UIPD {} -- /bin/sh \"$D/guest.sh\" \
                 >\"$D/guest.out\" 2>\"$D/uipd.err\" </dev/null",
                args.join(" ")
            )
        });
        let _ = writeln!(
            s,
            "UIPD={}\n\
             echo \"outer: starting backend at $(date +%T.%N)\"\n\
             {invocation}\n\
             rc=$?\necho $rc >\"$D/uipd.rc\"\n\
             echo \"outer: backend exited with $rc at $(date +%T.%N)\"\n\
             exit 0",
            sh_quote(&self.launcher()),
        );
        s
    }

    fn guest_script(&self) -> String {
        let net = self.net();
        format!(
            "exec 2>\"{d}/guest.err\"\n\
             D={d}; PY={py}; SRV={srv}; GW={gw}; GUEST_IP={ip}; DNS={dns}; IFNAME=eth0\n\
             export D PY SRV GW GUEST_IP DNS IFNAME\n\
             cd \"$D\" || exit 99\n\
             {body}\n",
            d = self.dir.display(),
            py = sh_quote(&python()),
            srv = sh_quote(&tests_dir().join("servers").display().to_string()),
            gw = net.gw,
            ip = net.guest_ip,
            dns = net.dns,
            body = self.guest,
        )
    }

    /// Runs the scenario; never hangs past its timeout (plus a few seconds).
    pub fn run(&self) -> Outcome {
        check_prerequisites();
        std::fs::write(self.dir.join("outer.sh"), self.outer_script()).expect("write outer.sh");
        std::fs::write(self.dir.join("guest.sh"), self.guest_script()).expect("write guest.sh");
        let mut unshare = vec!["unshare"];
        if !is_root() {
            unshare.extend(["--user", "--map-root-user"]);
        }
        unshare.extend(["--net", "--mount", "--"]);
        let total = self.timeout.as_secs() + 15;
        let start = Instant::now();
        let out = Command::new("timeout")
            .args(["-k", "5", &total.to_string()])
            .args(&unshare)
            .arg("bash")
            .arg(self.dir.join("outer.sh"))
            .current_dir(&self.dir)
            .output()
            .expect("run timeout/unshare/bash");
        let elapsed = start.elapsed();
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let code = read("uipd.rc").trim().parse().ok();
        let server_logs = self
            .servers
            .iter()
            .map(|(n, _, _)| (n.clone(), read(&format!("server-{n}.log"))))
            .collect();
        Outcome {
            name: self.name.clone(),
            dir: self.dir.clone(),
            code,
            outer_code: out.status.code(),
            guest_out: read("guest.out"),
            guest_err: read("guest.err"),
            uipd_err: read("uipd.err"),
            outer_log: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            server_logs,
            elapsed,
            keep: std::env::var_os("UIPD_TEST_KEEP").is_some(),
            passed: false,
        }
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = s.len() - max;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

impl Outcome {
    /// Everything useful for diagnosing a failure.
    pub fn report(&self) -> String {
        let mut r = String::new();
        let _ = writeln!(
            r,
            "==== {} (work dir {}, {:.1} s, backend exit {:?}, outer exit {:?})",
            self.name,
            self.dir.display(),
            self.elapsed.as_secs_f64(),
            self.code,
            self.outer_code
        );
        let sections: [(&str, &str); 4] = [
            ("outer script", &self.outer_log),
            ("uipd stderr", &self.uipd_err),
            ("guest stdout", &self.guest_out),
            ("guest stderr", &self.guest_err),
        ];
        for (title, text) in sections {
            let _ = writeln!(r, "---- {title}:\n{}", tail(text, 6000));
        }
        for (n, log) in &self.server_logs {
            let _ = writeln!(r, "---- server {n}:\n{}", tail(log, 3000));
        }
        r
    }

    /// Panics with the full report.
    #[track_caller]
    pub fn fail(&self, why: &str) -> ! {
        panic!("{}: {why}\n{}", self.name, self.report());
    }

    /// Asserts `cond`, else fails with `why` and the report.
    #[track_caller]
    pub fn check(&self, cond: bool, why: &str) {
        if !cond {
            self.fail(why);
        }
    }

    /// Asserts the backend (= guest command) exited with `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) {
        if self.code != Some(code) {
            self.fail(&format!("expected exit status {code}, got {:?}", self.code));
        }
    }

    /// The `key=value` pairs of every guest stdout line "RESULT <tag> k=v ...".
    pub fn results(&self, tag: &str) -> Vec<HashMap<String, String>> {
        self.guest_out
            .lines()
            .filter_map(|l| l.strip_prefix("RESULT "))
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(tag)).then(|| {
                    it.filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
            })
            .collect()
    }

    /// The single "RESULT <tag> ..." line; fails if there is not exactly one.
    #[track_caller]
    pub fn result(&self, tag: &str) -> HashMap<String, String> {
        let mut r = self.results(tag);
        if r.len() != 1 {
            let hint = if self.guest_out.trim().is_empty() {
                " (the guest command printed nothing: did the backend run it?)"
            } else {
                ""
            };
            self.fail(&format!(
                "expected one 'RESULT {tag}' line, found {}{hint}",
                r.len()
            ));
        }
        r.remove(0)
    }

    /// Value of `key` in the single RESULT `tag` line.
    #[track_caller]
    pub fn value(&self, tag: &str, key: &str) -> String {
        match self.result(tag).get(key) {
            Some(v) => v.clone(),
            None => self.fail(&format!("RESULT {tag} has no {key}")),
        }
    }

    /// A counter from uipd's `--stats` output on stderr (`  name   value`);
    /// the last one printed; None when absent (uipd leaves out `drops_*`
    /// counters that are zero).
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.uipd_err.lines().rev().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(name))
                .then(|| it.next()?.parse().ok())
                .flatten()
        })
    }

    /// The guest stdout lines that start with `prefix` (prefix removed).
    pub fn lines(&self, prefix: &str) -> Vec<String> {
        self.guest_out
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// Marks the run as passed: its work directory is removed (unless UIPD_TEST_KEEP).
    pub fn pass(mut self) {
        eprintln!(
            "{}: passed in {:.1} s",
            self.name,
            self.elapsed.as_secs_f64()
        );
        self.passed = true;
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if self.passed && !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        }
        // Failed (or not explicitly passed): keep logs for diagnosis, drop bulk data.
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "bin") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        eprintln!("{}: logs kept in {}", self.name, self.dir.display());
    }
}

/// Fails early, with a clear message, when a tool the tests need is missing.
pub fn check_prerequisites() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let mut missing = Vec::new();
        for tool in [
            "unshare",
            "timeout",
            "ip",
            "sysctl",
            "busybox",
            "iperf3",
            "sha256sum",
        ] {
            let ok = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                missing.push(tool.to_string());
            }
        }
        if !Command::new(python())
            .arg("-c")
            .arg("import sys; assert sys.version_info >= (3, 7)")
            .status()
            .is_ok_and(|s| s.success())
        {
            missing.push(format!("python3 ({})", python()));
        }
        if Backend::current() == Backend::Slirp
            && !Command::new("sh")
                .args(["-c", "command -v slirp4netns"])
                .status()
                .is_ok_and(|s| s.success())
        {
            missing.push("slirp4netns".into());
        }
        assert!(
            missing.is_empty(),
            "end-to-end test prerequisites missing: {} (run scripts/setup.sh as root)",
            missing.join(", ")
        );
        assert!(
            Path::new("/dev/net/tun").exists(),
            "/dev/net/tun is missing: the namespace tests need TUN/TAP"
        );
    });
}

/// Writes `len` random bytes to `path` and returns their sha256 (hex).
pub fn random_file(path: &Path, len: u64) -> String {
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {len} /dev/urandom > {} && sha256sum {} | cut -d' ' -f1",
            sh_quote(&path.display().to_string()),
            sh_quote(&path.display().to_string())
        ))
        .output()
        .expect("make random file");
    assert!(st.status.success(), "cannot create {}", path.display());
    let sum = String::from_utf8_lossy(&st.stdout).trim().to_string();
    assert_eq!(sum.len(), 64, "bad sha256sum output {sum:?}");
    sum
}
