//! End-to-end tests of the sandbox (`src/sandbox`): what a running uipd
//! holds, seen from outside through /proc, and what happens when a thread
//! steps outside its list. The rest of the suite runs with the sandbox on
//! too, since it is the default; these tests look at the sandbox itself.
//!
//! Each test runs in a fresh outer network namespace with only `lo` (see
//! tests/common/mod.rs). The outer script starts uipd in the background,
//! waits until the guest has moved data, inspects /proc/<uipd> while it
//! runs, then lets the guest finish.

mod common;

use common::{Scenario, random_file, skip_unless_uipd};

const MIB: u64 = 1024 * 1024;

/// The backend invocation: uipd in the background (its PID in uipd.pid,
/// through `exec`), /proc inspected once the guest says so, the guest
/// released, and uipd's status as the snippet's.
fn inspecting_invocation(args: &str, env: &str) -> String {
    format!(
        "{env} D=\"$D\" timeout -k 5 60 sh -c 'echo $$ >\"$D/uipd.pid\"; exec \"$0\" \"$@\"' \
           $UIPD {args} -- /bin/sh \"$D/guest.sh\" \
           >\"$D/guest.out\" 2>\"$D/uipd.err\" </dev/null &\n\
         T=$!\n\
         for _ in $(seq 200); do [ -e \"$D/guest.ready\" ] && break; sleep 0.1; done\n\
         P=$(cat \"$D/uipd.pid\")\n\
         for t in /proc/$P/task/*; do \
           echo \"RESULT thread comm=$(cat $t/comm) $(awk '/^(Seccomp|NoNewPrivs|CapEff):/ \
             {{ sub(\":\", \"\", $1); printf \"%s=%s \", $1, $2 }}' $t/status)\"; \
         done >\"$D/threads.txt\"\n\
         echo \"RESULT root entries=$(ls -A /proc/$P/root/ | wc -l) \
           passwd=$(test -e /proc/$P/root/etc/passwd && echo visible || echo hidden)\" \
           >>\"$D/threads.txt\"\n\
         touch \"$D/outer.done\"\n\
         wait $T"
    )
}

/// The guest: a download, the signal to inspect, a wait for the outer
/// script, the inspection's findings, a second download.
const GUEST: &str = "get() { timeout 30 busybox wget -q -O \"$D/got$1.bin\" \"http://$GW:8080/file.bin\"; \
       echo \"RESULT get$1 rc=$? sha=$(sha256sum \"$D/got$1.bin\" | cut -d' ' -f1)\"; }\n\
     get 1\n\
     touch \"$D/guest.ready\"\n\
     for _ in $(seq 200); do [ -e \"$D/outer.done\" ] && break; sleep 0.1; done\n\
     cat \"$D/threads.txt\"\n\
     get 2";

fn download_scenario(name: &str, args: &str, env: &str) -> (Scenario, String) {
    let mut sc = Scenario::new(name);
    let sum = random_file(&sc.dir().join("file.bin"), 4 * MIB);
    let dir = sc.dir().display().to_string();
    sc.timeout(90)
        .server("http", 8080, &["--dir", &dir])
        .invocation(&inspecting_invocation(args, env))
        .guest(GUEST);
    (sc, sum)
}

/// 1. Every thread of a running uipd (the default: sandbox on) is under a
///    seccomp filter, with no_new_privs and no effective capability; its
///    root is an empty directory; and traffic passes before and after.
#[test]
fn every_thread_is_confined_and_the_root_is_empty() {
    if skip_unless_uipd("every_thread_is_confined_and_the_root_is_empty") {
        return;
    }
    let (sc, sum) = download_scenario("sandbox_confined", "--workers 2 --stats", "");
    let o = sc.run();
    o.expect_code(0);
    for n in ["1", "2"] {
        o.check(
            o.value(&format!("get{n}"), "rc") == "0" && o.value(&format!("get{n}"), "sha") == sum,
            "a download through the sandboxed uipd failed or differs",
        );
    }
    let threads = o.results("thread");
    // The main thread and two workers at least.
    o.check(threads.len() >= 3, "fewer threads than expected were seen");
    for t in &threads {
        let comm = t.get("comm").cloned().unwrap_or_default();
        o.check(
            t.get("Seccomp").map(String::as_str) == Some("2"),
            &format!("thread {comm} is not under a seccomp filter"),
        );
        o.check(
            t.get("NoNewPrivs").map(String::as_str) == Some("1"),
            &format!("thread {comm} lacks no_new_privs"),
        );
        o.check(
            t.get("CapEff").map(String::as_str) == Some("0000000000000000"),
            &format!("thread {comm} holds capabilities"),
        );
    }
    o.check(
        threads
            .iter()
            .any(|t| t.get("comm").is_some_and(|c| c.starts_with("uipd-w"))),
        "no worker thread was inspected",
    );
    let root = o.result("root");
    o.check(
        root.get("entries").map(String::as_str) == Some("0"),
        "uipd's root directory is not empty",
    );
    o.check(
        root.get("passwd").map(String::as_str) == Some("hidden"),
        "uipd's root shows /etc/passwd",
    );
    o.pass();
}

/// 2. The same inspection with `--no-sandbox` sees an ordinary process:
///    the checks above can fail.
#[test]
fn no_sandbox_leaves_the_process_as_it_started() {
    if skip_unless_uipd("no_sandbox_leaves_the_process_as_it_started") {
        return;
    }
    let (sc, sum) = download_scenario("sandbox_off", "--no-sandbox", "");
    let o = sc.run();
    o.expect_code(0);
    o.check(o.value("get2", "sha") == sum, "download failed");
    let threads = o.results("thread");
    o.check(!threads.is_empty(), "no thread was inspected");
    o.check(
        threads
            .iter()
            .all(|t| t.get("Seccomp").map(String::as_str) == Some("0")),
        "a thread is under seccomp with --no-sandbox",
    );
    o.check(
        o.result("root").get("passwd").map(String::as_str) == Some("visible"),
        "the host's files are hidden with --no-sandbox",
    );
    o.pass();
}

/// 3. A worker that makes a call outside its list ends the process with
///    SIGSYS, and the log names the call and the thread (debug build: the
///    trapping filter). The test hook makes the workers call syslog(2)
///    right after confining themselves; the first one ends uipd.
#[test]
fn a_forbidden_call_ends_uipd_with_sigsys_and_names_it() {
    if skip_unless_uipd("a_forbidden_call_ends_uipd_with_sigsys_and_names_it") {
        return;
    }
    let mut sc = Scenario::new("sandbox_sigsys");
    sc.timeout(40).invocation(
        "UIPD_TEST_FORBIDDEN_SYSCALL=worker timeout -k 5 30 $UIPD -- sleep 20 \
         >\"$D/guest.out\" 2>\"$D/uipd.err\" </dev/null",
    );
    let o = sc.run();
    // timeout(1) reports a command killed by signal N as 128 + N.
    o.expect_code(128 + libc::SIGSYS);
    o.check(
        o.uipd_err.lines().any(|l| {
            l.contains("seccomp: thread uipd-w") && l.contains("made forbidden system call syslog")
        }),
        "the log does not name the forbidden call and its thread",
    );
    o.check(
        o.elapsed.as_secs() < 15,
        "uipd did not end at once on the forbidden call",
    );
    o.pass();
}

/// 4. The control thread, the one role that may open files, finds none:
///    /etc/passwd does not exist in its root.
#[test]
fn the_control_thread_cannot_open_host_files() {
    if skip_unless_uipd("the_control_thread_cannot_open_host_files") {
        return;
    }
    let mut sc = Scenario::new("sandbox_open");
    sc.timeout(40).invocation(
        "UIPD_TEST_OPEN=/etc/passwd timeout -k 5 30 $UIPD -- sh -c 'sleep 1; echo RESULT done ok=1' \
         >\"$D/guest.out\" 2>\"$D/uipd.err\" </dev/null",
    );
    let o = sc.run();
    o.expect_code(0);
    o.check(o.value("done", "ok") == "1", "the command did not run");
    o.check(
        o.uipd_err
            .contains("test hook: open /etc/passwd: No such file or directory"),
        "the control thread could open /etc/passwd, or the hook did not run",
    );
    o.pass();
}
