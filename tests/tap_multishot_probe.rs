//! Probe: does an io_uring multishot READ on a non-blocking TAP queue run
//! inline (poll-driven, no io-wq thread) and fill provided buffers?
//! Run as root inside a fresh netns:
//! `unshare --net cargo test --test tap_multishot_probe -- --ignored --nocapture`

use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, types};
use uipd::dataplane::bufring::BufRing;
use uipd::dataplane::tap::Tap;

fn iou_workers() -> usize {
    let me = std::process::id();
    std::fs::read_dir(format!("/proc/{me}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("iou-wrk"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "probe: run as root in a fresh netns"]
fn multishot_read_on_tap() {
    let tap = Tap::open("probe0").expect("tap");
    tap.set_nonblocking(true).unwrap();
    let sh = |c: &str| {
        assert!(
            std::process::Command::new("sh")
                .arg("-c")
                .arg(c)
                .status()
                .unwrap()
                .success(),
            "{c}"
        );
    };
    sh(
        "ip link set lo up && ip link set probe0 up && ip addr add 10.9.0.1/24 dev probe0 && ip neigh add 10.9.0.2 lladdr 02:00:00:00:00:02 dev probe0",
    );
    let mut ring = IoUring::new(256).unwrap();
    let mut br = BufRing::new(&ring, 64, 66000, 7).unwrap();
    let sqe = opcode::ReadMulti::new(types::Fd(tap.as_raw_fd()), 0, br.bgid())
        .build()
        .user_data(42);
    // SAFETY: the fd and the buffer group stay valid until the ring is dropped.
    unsafe { ring.submission().push(&sqe).unwrap() };
    ring.submit().unwrap();
    sh("ip link set probe0 mtu 65520");
    let size: usize = std::env::var("PROBE_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let sock = std::net::UdpSocket::bind("10.9.0.1:0").unwrap();
    let n = 20_000;
    let mut next_seq = 0u32;
    let mut bad = 0usize;
    let start = Instant::now();
    let mut got = 0usize;
    let mut sent = 0usize;
    let mut bytes = 0usize;
    let mut rearm = 0;
    let mut enters = 0;
    while got < n && start.elapsed() < Duration::from_secs(10) {
        while sent < n && sent < got + 32 {
            let mut p = vec![0u8; size];
            p[..4].copy_from_slice(&u32::try_from(sent).unwrap().to_be_bytes());
            p[size - 4..].copy_from_slice(&u32::try_from(sent).unwrap().to_be_bytes());
            sock.send_to(&p, "10.9.0.2:9").unwrap();
            sent += 1;
        }
        ring.submit_and_wait(1).unwrap();
        enters += 1;
        let cqes: Vec<cqueue::Entry> = ring.completion().collect();
        for c in cqes {
            if c.result() < 0 {
                panic!("read error {}", c.result());
            }
            let bid = cqueue::buffer_select(c.flags()).expect("buffer id");
            let len = usize::try_from(c.result()).unwrap();
            let f = br.get(bid, len).unwrap();
            bytes += f.len();
            // Ethernet 14 + IPv4 20 + UDP 8 = 42 bytes of headers.
            if f.len() == 42 + size && f[12] == 8 && f[13] == 0 {
                let a = u32::from_be_bytes(f[42..46].try_into().unwrap());
                let b = u32::from_be_bytes(f[f.len() - 4..].try_into().unwrap());
                if a != next_seq || b != a {
                    bad += 1;
                }
                next_seq = a + 1;
            }
            br.recycle(bid);
            got += 1;
            if !cqueue::more(c.flags()) {
                rearm += 1;
                let sqe = opcode::ReadMulti::new(types::Fd(tap.as_raw_fd()), 0, br.bgid())
                    .build()
                    .user_data(42);
                // SAFETY: as above.
                unsafe { ring.submission().push(&sqe).unwrap() };
            }
        }
        br.publish();
    }
    let el = start.elapsed();
    eprintln!(
        "multishot READ on tap: {got} frames ({bytes} bytes) in {el:?}, {enters} enters, {rearm} re-arms, {bad} out of order or torn, iou-wrk threads {}",
        iou_workers()
    );
    assert!(got >= n);
    assert_eq!(bad, 0);
    br.unregister(&ring);
}
