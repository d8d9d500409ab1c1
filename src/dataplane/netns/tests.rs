//! Tests of the namespace frontend that need no namespace: the config and
//! its helper arguments, the report protocol over a socketpair, and the
//! command lookup. The real namespaces are tested in `tests/netns_frontend.rs`.

use std::ffi::OsStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::Duration;

use super::helper::command_exists;
use super::protocol::{REPORT_OK, decode_error, encode_error, encode_queue, recv_taps, send_taps};
use super::*;
use crate::dataplane::tap::{MAX_TAP_QUEUES, TapFlags};
use crate::sys::fd::{send_msg, socketpair};

#[test]
fn config_round_trips_through_args() {
    let mut cfg = NetConfig::default();
    assert_eq!(NetConfig::from_args(&cfg.to_args()), Ok(cfg.clone()));
    cfg.guest_mac = Some([0x00, 0x15, 0x15, 0x15, 0x15, 0xab]);
    cfg.configure = false;
    cfg.mtu = 65520;
    assert_eq!(NetConfig::from_args(&cfg.to_args()), Ok(cfg.clone()));
    cfg.queues = MAX_TAP_QUEUES;
    cfg.vnet_hdr = true;
    assert_eq!(NetConfig::from_args(&cfg.to_args()), Ok(cfg.clone()));
    assert!(NetConfig::from_args(&[]).is_err());
    // Queue counts and the vnet_hdr flag are checked on the helper's side too.
    for (field, bad) in [(8, "0"), (8, "257"), (8, "x"), (9, "2")] {
        let mut args = cfg.to_args();
        args[field] = bad.into();
        assert!(NetConfig::from_args(&args).is_err(), "{field}: {bad}");
    }
}

#[test]
fn defaults_are_one_queue_without_vnet_hdr() {
    let cfg = NetConfig::default();
    assert_eq!((cfg.queues, cfg.vnet_hdr), (1, false));
    assert_eq!(cfg.tap_flags(), TapFlags::default());
    let cfg = NetConfig {
        queues: 2,
        vnet_hdr: true,
        ..NetConfig::default()
    };
    assert_eq!(
        cfg.tap_flags(),
        TapFlags {
            multi_queue: true,
            vnet_hdr: true
        }
    );
}

#[test]
fn netmask_from_prefix() {
    let mut cfg = NetConfig::default();
    for (p, m) in [
        (24, [255, 255, 255, 0]),
        (0, [0; 4]),
        (32, [255; 4]),
        (17, [255, 255, 128, 0]),
    ] {
        cfg.prefix_len = p;
        assert_eq!(cfg.netmask(), Ipv4Addr::from(m));
    }
}

#[test]
fn config_is_validated() {
    let bad = [
        NetConfig {
            mtu: 67,
            ..NetConfig::default()
        },
        NetConfig {
            prefix_len: 33,
            ..NetConfig::default()
        },
        NetConfig {
            ifname: "a/b".into(),
            ..NetConfig::default()
        },
        NetConfig {
            queues: 0,
            ..NetConfig::default()
        },
        NetConfig {
            queues: MAX_TAP_QUEUES + 1,
            ..NetConfig::default()
        },
    ];
    for cfg in bad {
        assert!(cfg.validate().is_err(), "{cfg:?}");
    }
}

#[test]
fn error_records_round_trip() {
    let err = NetnsError::NoPermission {
        what: "a user namespace".into(),
        source: io::Error::from_raw_os_error(libc::EPERM),
    };
    match decode_error(&encode_error(&err)) {
        NetnsError::NoPermission { what, source } => {
            assert_eq!(what, "a user namespace");
            assert_eq!(source.raw_os_error(), Some(libc::EPERM));
        }
        e => panic!("{e:?}"),
    }
    let err = NetnsError::Tap(TapError::NoTunDevice(io::Error::from_raw_os_error(
        libc::ENOENT,
    )));
    assert!(matches!(
        decode_error(&encode_error(&err)),
        NetnsError::Tap(TapError::NoTunDevice(_))
    ));
    let err = NetnsError::Tap(TapError::QueueCount(300));
    assert!(matches!(
        decode_error(&encode_error(&err)),
        NetnsError::Tap(TapError::QueueCount(300))
    ));
    assert!(matches!(decode_error(&[]), NetnsError::Protocol(_)));
    assert!(matches!(decode_error(&[7, 0]), NetnsError::Protocol(_)));
}

/// Stand-in TAPs: any fd will do for the protocol.
fn fake_taps(n: usize, name: &str) -> Vec<Tap> {
    (0..n)
        .map(|_| Tap::from_fd(socketpair().unwrap().0, name.to_owned()))
        .collect()
}

fn soon() -> std::time::Instant {
    std::time::Instant::now() + Duration::from_secs(5)
}

#[test]
fn every_queue_crosses_the_socketpair() {
    for queues in [1, 4, MAX_TAP_QUEUES] {
        let (a, b) = socketpair().unwrap();
        let taps = fake_taps(queues, "eth0");
        // The sender blocks once the socket buffer fills; the receiver drains it.
        let sender = std::thread::spawn(move || send_taps(a.as_fd(), &taps));
        let got = recv_taps(b.as_fd(), queues, soon()).unwrap().unwrap();
        sender.join().unwrap().unwrap();
        assert_eq!(got.len(), queues);
        assert!(got.iter().all(|t| t.name() == "eth0"));
    }
}

#[test]
fn malformed_queue_reports_are_protocol_errors() {
    let bad = |script: &dyn Fn(BorrowedFd<'_>), queues: usize| {
        let (a, b) = socketpair().unwrap();
        script(a.as_fd());
        drop(a);
        recv_taps(b.as_fd(), queues, soon())
    };
    let (_x, y) = socketpair().unwrap();
    let fd = Some(y.as_fd());
    let rec = |i, n| encode_queue(i, n, "eth0").unwrap();
    type Script<'a> = Box<dyn Fn(BorrowedFd<'_>) + 'a>;
    let cases: Vec<(Script, &str)> = vec![
        (
            Box::new(|s| send_msg(s, &rec(0, 2), None).unwrap()),
            "without its fd",
        ),
        (
            Box::new(|s| send_msg(s, &rec(1, 2), fd).unwrap()),
            "where 0 was expected",
        ),
        (
            Box::new(|s| send_msg(s, &rec(0, 3), fd).unwrap()),
            "3 queues reported, 2",
        ),
        (
            Box::new(|s| send_msg(s, &[REPORT_OK, 0], fd).unwrap()),
            "short queue record",
        ),
        (
            Box::new(|s| {
                send_msg(s, &rec(0, 2), fd).unwrap();
                send_msg(s, &encode_queue(1, 2, "eth1").unwrap(), fd).unwrap();
            }),
            "queue 1 is on \"eth1\"",
        ),
        (
            Box::new(|s| {
                let err = NetnsError::Setup {
                    step: "x".into(),
                    source: io::Error::from_raw_os_error(libc::EIO),
                };
                send_msg(s, &encode_error(&err), fd).unwrap();
            }),
            "an fd came with an error record",
        ),
        (
            Box::new(|s| {
                send_msg(s, &rec(0, 2), fd).unwrap();
                send_msg(s, &encode_error(&NetnsError::EmptyCommand), None).unwrap();
            }),
            "error record after 1 queue records",
        ),
    ];
    for (script, want) in &cases {
        match bad(script.as_ref(), 2) {
            Err(NetnsError::Protocol(m)) => assert!(m.contains(want), "{m} vs {want}"),
            r => panic!("{want}: {r:?}"),
        }
    }
    // An error record first is the helper's typed error.
    let r = bad(
        &|s| {
            let err = NetnsError::Tap(TapError::InvalidName("x/y".into()));
            send_msg(s, &encode_error(&err), None).unwrap();
        },
        2,
    );
    assert!(matches!(r, Err(NetnsError::Tap(TapError::InvalidName(n))) if n == "x/y"));
    // EOF part-way: the helper exited.
    let r = bad(&|s| send_msg(s, &rec(0, 2), fd).unwrap(), 2);
    assert!(matches!(r, Ok(None)), "{r:?}");
    // Silence: bounded by the deadline.
    let (_a, b) = socketpair().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_millis(50);
    assert!(matches!(
        recv_taps(b.as_fd(), 1, deadline),
        Err(NetnsError::HelperTimeout)
    ));
    assert!(encode_queue(MAX_TAP_QUEUES, 70_000, "eth0").is_err());
}

#[test]
fn bare_pids_name_proc_paths() {
    assert_eq!(netns_path("123"), PathBuf::from("/proc/123/ns/net"));
    assert_eq!(netns_path("/run/netns/x"), PathBuf::from("/run/netns/x"));
}

#[test]
fn commands_are_looked_up_in_path() {
    assert!(command_exists(OsStr::new("sh")));
    assert!(command_exists(OsStr::new("/bin/sh")));
    assert!(!command_exists(OsStr::new("uipd-no-such-command")));
    assert!(!command_exists(OsStr::new("/nonexistent/sh")));
}
