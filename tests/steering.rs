//! Steering between workers, and what a full inbox does: backpressure that
//! is counted, never silent loss.
//!
//! A SEQPACKET socketpair stands in for worker 0's TAP queue (it keeps frame
//! boundaries, as a TAP does). Every frame written there belongs to worker
//! 1's flows. Worker 1's inbox is tiny and, at first, nobody drains it: worker
//! 0 must forward what fits, count the full ring, keep the rest in order and
//! stop reading its queue; once the inbox drains, every frame arrives, in
//! order.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use uipd::dataplane::io::IoEngine;
use uipd::dataplane::tap::Tap;
use uipd::dataplane::worker::{PortOut, Shared, Worker};
use uipd::rings::FrameRing;
use uipd::stack::steer::{self, Steer};
use uipd::stack::{Config, Stack};

fn udp_frame(sport: u16, seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + 4];
    f[0..6].copy_from_slice(&Config::default().gateway_mac.0);
    f[6..12].copy_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
    f[12] = 0x08;
    f[14] = 0x45;
    f[14 + 2..14 + 4].copy_from_slice(&32u16.to_be_bytes());
    f[14 + 8] = 64;
    f[14 + 9] = 17;
    f[26..30].copy_from_slice(&[192, 168, 33, 15]);
    f[30..34].copy_from_slice(&[10, 9, 8, 7]);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&9u16.to_be_bytes());
    f[38..40].copy_from_slice(&12u16.to_be_bytes());
    f[42..46].copy_from_slice(&seq.to_be_bytes());
    f
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the live two-element array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by no one else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

#[test]
fn a_full_inbox_is_counted_backpressure_and_loses_nothing() {
    full_inbox(IoEngine::Uring);
}

/// The same on the epoll engine: its TAP reads (poll + read) stop and
/// resume with the backlog as the multishot read does.
#[test]
fn a_full_inbox_is_counted_backpressure_and_loses_nothing_on_epoll() {
    full_inbox(IoEngine::Epoll);
}

fn full_inbox(io: IoEngine) {
    // Source ports whose flows worker 1 owns (of 2).
    let ports: Vec<u16> = (40000..50000)
        .filter(|&p| steer::frame_owner(&udp_frame(p, 0), 2) == Steer::Worker(1))
        .take(8)
        .collect();
    let (ours, theirs) = seqpacket_pair();
    let port = Tap::from_fd(ours, "sp0".into());
    let reader = port.try_clone().unwrap();
    reader.set_nonblocking(true).unwrap();
    let guest = Tap::from_fd(theirs, "sp1".into());

    let inbox0 = Arc::new(FrameRing::new(64, 2048).unwrap());
    let inbox1 = Arc::new(FrameRing::new(4, 2048).unwrap());
    let shared = Arc::new(Shared::default());
    let worker = Worker {
        index: 0,
        stack: Stack::new(Config {
            worker: 0,
            workers: 2,
            ..Config::default()
        }),
        inboxes: vec![inbox0.clone(), inbox1.clone()],
        port_out: PortOut::Tap(port.as_raw_fd()),
        port_reader: Some(reader),
        shared: shared.clone(),
        cpu: None,
        outbound: (None, None),
        poll_us: 0,
        hash_steer: true,
        io,
    };
    let handle = std::thread::spawn(move || worker.run());

    // 400 frames, far more than inbox 1 holds; the socket buffer holds them
    // all, so the writes never wait on the worker.
    const N: u32 = 400;
    for i in 0..N {
        let f = udp_frame(ports[(i as usize) % ports.len()], i);
        assert_eq!(guest.write_frame(&f).unwrap(), f.len());
    }
    // Nobody drains inbox 1 yet: it fills and stays full.
    let deadline = Instant::now() + Duration::from_secs(10);
    while inbox1.len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(inbox1.len(), 4, "worker 0 forwarded what fits");
    std::thread::sleep(Duration::from_millis(200));
    let reply = shared.request_stats().unwrap();
    inbox0.kick();
    let snap = reply.recv_timeout(Duration::from_secs(2)).unwrap();
    assert!(snap.worker.ring_full > 0, "a full inbox is counted");

    // Now drain inbox 1 as its worker would: every frame, in order.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < N as usize && Instant::now() < deadline {
        match inbox1.pop() {
            Some(f) => {
                let b = f.bytes();
                got.push(u32::from_be_bytes([b[42], b[43], b[44], b[45]]));
                inbox1.put_buf(f.buf);
            }
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "every frame, in order");

    shared.stop.store(true, Ordering::SeqCst);
    inbox0.kick();
    let stats = handle.join().unwrap().unwrap();
    assert_eq!(stats.worker.forwarded, u64::from(N));
    assert_eq!(stats.worker.port_reads, u64::from(N));
    assert_eq!(
        stats.stack.rx_frames, 0,
        "worker 0 processed none of worker 1's frames"
    );
    drop(port);
}

/// A TCP ACK over IPv6 from [fd00:33::15]:`sport` to [fd00:33::1]:80 that
/// matches no flow (the owner answers it with RST: no host socket), with
/// `seq` in its sequence number.
fn tcp6_ack(sport: u16, seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40 + 20];
    f[0..6].copy_from_slice(&Config::default().gateway_mac.0);
    f[6..12].copy_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    f[14] = 0x60;
    f[14 + 4..14 + 6].copy_from_slice(&20u16.to_be_bytes());
    f[14 + 6] = 6;
    f[14 + 7] = 64;
    let g: std::net::Ipv6Addr = "fd00:33::15".parse().unwrap();
    let r: std::net::Ipv6Addr = "fd00:33::1".parse().unwrap();
    f[22..38].copy_from_slice(&g.octets());
    f[38..54].copy_from_slice(&r.octets());
    let t = &mut f[54..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&80u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x10; // ACK
    t[14..16].copy_from_slice(&1000u16.to_be_bytes());
    // Checksum over the pseudo-header (RFC 8200 §8.1).
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for w in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
    };
    add(&g.octets());
    add(&r.octets());
    add(&[0, 0, 0, 20, 0, 0, 0, 6]);
    add(&f[54..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !u16::try_from(sum).unwrap();
    f[54 + 16..54 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// With hash steering over two workers, every IPv6 frame of a flow reaches
/// the worker that owns its 5-tuple: worker 0 forwards worker 1's frames
/// (all of them, in order) and processes only its own.
#[test]
fn ipv6_flows_are_steered_to_their_owner() {
    ipv6_steering(IoEngine::Uring);
}

#[test]
fn ipv6_flows_are_steered_to_their_owner_on_epoll() {
    ipv6_steering(IoEngine::Epoll);
}

fn ipv6_steering(io: IoEngine) {
    let owned = |w: usize| -> Vec<u16> {
        (40000..50000)
            .filter(|&p| steer::frame_owner(&tcp6_ack(p, 0), 2) == Steer::Worker(w))
            .take(8)
            .collect()
    };
    let (mine, theirs_ports) = (owned(0), owned(1));
    assert_eq!((mine.len(), theirs_ports.len()), (8, 8));
    let (ours, theirs) = seqpacket_pair();
    let port = Tap::from_fd(ours, "sp0".into());
    let reader = port.try_clone().unwrap();
    reader.set_nonblocking(true).unwrap();
    let guest = Tap::from_fd(theirs, "sp1".into());
    let inbox0 = Arc::new(FrameRing::new(64, 2048).unwrap());
    let inbox1 = Arc::new(FrameRing::new(256, 2048).unwrap());
    let shared = Arc::new(Shared::default());
    let worker = Worker {
        index: 0,
        stack: Stack::new(Config {
            worker: 0,
            workers: 2,
            ..Config::default()
        }),
        inboxes: vec![inbox0.clone(), inbox1.clone()],
        port_out: PortOut::Tap(port.as_raw_fd()),
        port_reader: Some(reader),
        shared: shared.clone(),
        cpu: None,
        outbound: (None, None),
        poll_us: 0,
        hash_steer: true,
        io,
    };
    let handle = std::thread::spawn(move || worker.run());
    const N: u32 = 64;
    for i in 0..N {
        let idx = (i as usize / 2) % 8;
        let p = if i % 2 == 0 {
            mine[idx]
        } else {
            theirs_ports[idx]
        };
        let f = tcp6_ack(p, i);
        assert_eq!(guest.write_frame(&f).unwrap(), f.len());
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < N as usize / 2 && Instant::now() < deadline {
        match inbox1.pop() {
            Some(f) => {
                let b = f.bytes();
                let sport = u16::from_be_bytes([b[54], b[55]]);
                assert!(
                    theirs_ports.contains(&sport),
                    "port {sport} is not worker 1's"
                );
                got.push(u32::from_be_bytes([b[58], b[59], b[60], b[61]]));
                inbox1.put_buf(f.buf);
            }
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    let want: Vec<u32> = (0..N).filter(|i| i % 2 == 1).collect();
    assert_eq!(got, want, "worker 1's frames, all, in order");
    // Worker 0 answered each of its own with an RST (no such flow).
    let mut rsts = 0;
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    guest.set_nonblocking(true).unwrap();
    while rsts < N / 2 && Instant::now() < deadline {
        match guest.read_frame(&mut buf) {
            Ok(n) if n >= 14 + 40 + 20 && buf[12..14] == [0x86, 0xdd] && buf[14 + 6] == 6 => {
                assert_eq!(buf[14 + 40 + 13] & 0x04, 0x04, "an RST");
                let dport = u16::from_be_bytes([buf[56], buf[57]]);
                assert!(
                    mine.contains(&dport),
                    "RST for port {dport}, not worker 0's"
                );
                rsts += 1;
            }
            Ok(_) => {} // an RA
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    assert_eq!(rsts, N / 2, "worker 0 answered its own frames");
    shared.stop.store(true, Ordering::SeqCst);
    inbox0.kick();
    let stats = handle.join().unwrap().unwrap();
    assert_eq!(stats.worker.forwarded, u64::from(N / 2));
    assert_eq!(stats.stack.rx_frames, u64::from(N / 2));
    drop(port);
}
