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
        poll_us: 0,
        hash_steer: true,
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
    shared.dump.store(true, Ordering::SeqCst);
    inbox0.kick();
    std::thread::sleep(Duration::from_millis(300));
    let snap = shared.stats.lock().unwrap().clone();
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
