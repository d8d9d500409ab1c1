//! `uipd --kernel ... -net tap --tap NAME`: what can be checked without
//! booting a guest (the data path is in tests/vmm_nested.rs): the command
//! line, the privilege error, and attaching to an existing TAP. Each run
//! is bounded by `timeout`, and TAPs live in a fresh network namespace
//! (`unshare --net`) that goes away with the run.
//!
//! The TAP is opened before KVM is touched, so a kernel that does not
//! exist is how these runs get past the TAP and stop: their error is
//! then about the kernel.

mod common;

use std::process::{Command, Output};

fn uipd() -> &'static str {
    env!("CARGO_BIN_EXE_uipd")
}

/// Runs `sh -c script` in a fresh network (and mount) namespace, with
/// `$UIPD` set to the binary under test.
fn in_netns(script: &str) -> Output {
    Command::new("timeout")
        .args(["-k", "2", "30", "unshare", "--net", "--mount", "--"])
        .args(["sh", "-c", script])
        .env("UIPD", uipd())
        .output()
        .expect("run unshare")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn net_tap_without_tap_is_a_usage_error() {
    let out = Command::new(uipd())
        .args(["--kernel", "/nonexistent", "-net", "tap"])
        .output()
        .expect("run uipd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("-net tap needs --tap NAME"), "{err}");
}

#[test]
fn tap_without_net_tap_and_stack_options_with_it_are_usage_errors() {
    for args in [
        &["--kernel", "/nonexistent", "--tap", "t0"][..],
        &["--kernel", "/nonexistent", "-net", "user", "--tap", "t0"],
    ] {
        let out = Command::new(uipd()).args(args).output().expect("run uipd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("--tap NAME goes with"), "{args:?}: {err}");
    }
    for extra in [
        &["-p", "8080:80"][..],
        &["--pcap", "/tmp/x"],
        &["--restrict"],
    ] {
        let out = Command::new(uipd())
            .args(["--kernel", "/nonexistent", "-net", "tap", "--tap", "t0"])
            .args(extra)
            .output()
            .expect("run uipd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains("are for uipd's stack"), "{extra:?}: {err}");
    }
}

/// Without CAP_NET_ADMIN (uipd as `nobody` in a fresh network namespace)
/// the error names the TAP and the capability, and uipd exits 1. Twice:
/// with /dev/net/tun as the host has it (root only here: the open fails),
/// and with a 0666 node bind-mounted over it in the run's own mount
/// namespace (the open works, TUNSETIFF says EPERM).
#[test]
fn tap_without_cap_net_admin_fails_naming_the_tap_and_the_capability() {
    if !common::is_root() {
        eprintln!("skipped: needs root to switch to nobody");
        return;
    }
    let run = r#"setpriv --reuid=65534 --regid=65534 --clear-groups "$UIPD" \
        --kernel /nonexistent -net tap --tap uipdtap9"#;
    let open_tun = format!(
        r#"d=$(mktemp -d) && mknod "$d/tun" c 10 200 && chmod 666 "$d/tun" &&
        mount --bind "$d/tun" /dev/net/tun || exit 99
        {run}; rc=$?; umount /dev/net/tun; rm -rf "$d"; exit $rc"#
    );
    for (what, script) in [
        ("host /dev/net/tun", run.to_string()),
        ("0666 node", open_tun),
    ] {
        let out = in_netns(&script);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {t}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no permission to attach TAP \"uipdtap9\"")
                && err.contains("CAP_NET_ADMIN"),
            "{what}: {t}"
        );
        assert!(
            !err.contains("/nonexistent"),
            "{what}: the TAP is checked before the kernel: {t}"
        );
        if what == "0666 node" {
            assert!(err.contains("Operation not permitted"), "{what}: {t}");
        }
    }
}

/// An existing TAP (made by `ip tuntap add`) is attached, with or without
/// multi_queue; one made without it cannot have two queues, and the error
/// says how to make one that can.
#[test]
fn an_existing_tap_is_attached_and_a_queue_mismatch_is_explained() {
    if !common::is_root() {
        eprintln!("skipped: needs root for TAP devices");
        return;
    }
    let out = in_netns(
        r#"ip tuntap add dev uipdmq mode tap multi_queue vnet_hdr || exit 99
        ip tuntap add dev uipdsq mode tap || exit 99
        for a in "uipdmq 1" "uipdmq 2" "uipdsq 1" "uipdsq 2" "uipdnew 1" "uipdnew2 3"; do
            set -- $a
            echo "RUN $1 $2"
            RUST_LOG=info "$UIPD" --kernel /nonexistent -net tap --tap $1 --queues $2 2>&1
            echo "RC $?"
        done"#,
    );
    let t = text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{t}");
    let runs: Vec<&str> = stdout.split("RUN ").skip(1).collect();
    assert_eq!(runs.len(), 6, "{t}");
    for (i, r) in runs.iter().enumerate() {
        let name = r.split_whitespace().next().unwrap_or_default();
        if i == 3 {
            assert!(r.contains("RC 1"), "{t}");
            assert!(
                r.contains("TAP \"uipdsq\" exists without multi_queue")
                    && r.contains("multi_queue`"),
                "{t}"
            );
        } else {
            // Attached (or created): the run went on to the kernel.
            assert!(r.contains(&format!("attached to {name}")), "{r}\n{t}");
            assert!(r.contains("cannot read /nonexistent"), "{r}\n{t}");
            assert!(r.contains("RC 1"), "{r}\n{t}");
        }
    }
}
