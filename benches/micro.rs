//! Micro-benchmarks of the hot per-frame pieces: the Internet checksum, the
//! frame ring, parsing/building a 1500-byte TCP frame, and IPv4 fragment
//! reassembly.
//!
//! `cargo bench --bench micro` (about 25 s). No criterion: each case is a
//! timing loop over `std::hint::black_box`ed inputs, calibrated to about
//! `TARGET` per repetition, repeated `REPS` times; the median repetition is
//! reported as ns/op (and GB/s where bytes are involved), with the min and
//! max next to it so the spread is visible. Arguments after `--` filter cases
//! by substring (`cargo bench --bench micro -- checksum`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uipd::rings::{Frame, FrameRing};
use uipd::stack::frag::{self, FragKey, Limits, Reassembler};
use uipd::stack::time::Instant as StackInstant;
use uipd::stack::wire::checksum;
use uipd::stack::wire::tcp::Flags;
use uipd::stack::wire::{
    EtherType, EthernetAddress, EthernetFrame, EthernetRepr, Ipv4Packet, Ipv4Repr, SeqNumber,
    TcpPacket, TcpRepr, ip_proto,
};

/// Wall time one repetition aims for.
const TARGET: Duration = Duration::from_millis(150);
/// Repetitions per case; the median is reported.
const REPS: usize = 7;

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

/// One case's result.
struct Stats {
    median_ns: f64,
    min_ns: f64,
    max_ns: f64,
}

/// Time `op` (one call = one operation): calibrate an iteration count that
/// takes about `TARGET`, then run `REPS` repetitions of it.
fn measure(mut op: impl FnMut()) -> Stats {
    let mut iters: u64 = 1;
    // Calibration, bounded: at most 40 doublings.
    for _ in 0..40 {
        let t = Instant::now();
        for _ in 0..iters {
            op();
        }
        if t.elapsed() >= TARGET / 8 {
            break;
        }
        iters *= 2;
    }
    iters *= 8;
    let mut per_op: Vec<f64> = (0..REPS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                op();
            }
            t.elapsed().as_secs_f64() * 1e9 / iters as f64
        })
        .collect();
    per_op.sort_by(f64::total_cmp);
    Stats {
        median_ns: per_op[REPS / 2],
        min_ns: per_op[0],
        max_ns: per_op[REPS - 1],
    }
}

/// Print one line: name, ns/op (median, min..max), GB/s (median) when
/// `bytes` per op is given.
fn report(name: &str, bytes: Option<usize>, s: &Stats) {
    let rate = bytes
        .map(|b| format!("{:8.2} GB/s", b as f64 / s.median_ns))
        .unwrap_or_default();
    println!(
        "{name:<40} {:10.1} ns/op  [{:.1} .. {:.1}] {rate}",
        s.median_ns, s.min_ns, s.max_ns
    );
}

/// The plain RFC 1071 loop: 16-bit words, 32-bit accumulator, fold at end.
fn naive_sum(data: &[u8]) -> u32 {
    let mut acc: u32 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [last] = words.remainder() {
        acc += u32::from(*last) << 8;
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// A pseudo-random, reproducible byte pattern.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn bench_checksum(filter: &dyn Fn(&str) -> bool) {
    for len in [64usize, 1500, 65535] {
        let data = pattern(len);
        // The optimised sum must agree with the reference before we time it.
        assert_eq!(
            checksum::finish(checksum::sum(&data, 0)),
            checksum::finish(naive_sum(&data)),
            "checksum mismatch at {len} bytes"
        );
        let name = format!("checksum::sum {len} B");
        if filter(&name) {
            let s = measure(|| {
                black_box(checksum::sum(black_box(&data), 0));
            });
            report(&name, Some(len), &s);
        }
        let name = format!("checksum naive RFC 1071 loop {len} B");
        if filter(&name) {
            let s = measure(|| {
                black_box(naive_sum(black_box(&data)));
            });
            report(&name, Some(len), &s);
        }
    }
}

fn bench_ring(filter: &dyn Fn(&str) -> bool) {
    const FRAME: usize = 1514;
    let name = "ring push+pop, 1 thread";
    if filter(name) {
        let ring = FrameRing::new(256, 2048).expect("eventfd");
        let s = measure(|| {
            let buf = ring.get_buf();
            let pushed = ring.push(Frame { buf, len: FRAME });
            debug_assert!(pushed.is_ok());
            if let Some(f) = ring.pop() {
                ring.put_buf(black_box(f).buf);
            }
        });
        report(name, None, &s);
    }

    // Producer on this thread, consumer on another; buffers come back
    // through the pool as in the data path. One op = one frame through.
    let name = "ring push/pop, 2 threads (per frame)";
    if filter(name) {
        // Under `cargo test` (no `--bench`: a debug build, on a machine
        // busy with other tests) a smoke run: every frame must still come
        // through, but few enough that two spinning threads finish well
        // inside the deadline (1 Mi frames once took over 20 s there).
        let (frames, reps): (u64, usize) = if smoke() {
            (1 << 14, 1)
        } else {
            (1 << 20, REPS)
        };
        let mut per_frame = Vec::with_capacity(reps);
        for _ in 0..reps {
            let ring = Arc::new(FrameRing::new(256, 2048).expect("eventfd"));
            let consumer = {
                let ring = Arc::clone(&ring);
                std::thread::spawn(move || {
                    let mut got: u64 = 0;
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while got < frames && Instant::now() < deadline {
                        // Bounded inner spin before re-checking the clock.
                        for _ in 0..1024 {
                            match ring.pop() {
                                Some(f) => {
                                    got += 1;
                                    ring.put_buf(black_box(f).buf);
                                }
                                None => std::hint::spin_loop(),
                            }
                        }
                    }
                    got
                })
            };
            let t = Instant::now();
            let deadline = t + Duration::from_secs(20);
            let mut sent: u64 = 0;
            while sent < frames && Instant::now() < deadline {
                let mut frame = Frame {
                    buf: ring.get_buf(),
                    len: FRAME,
                };
                // Spin while full, bounded; give up on this frame after that.
                for _ in 0..1_000_000 {
                    match ring.push(frame) {
                        Ok(()) => {
                            sent += 1;
                            break;
                        }
                        Err(f) => {
                            frame = f;
                            std::hint::spin_loop();
                        }
                    }
                }
            }
            let got = consumer.join().expect("consumer thread");
            let elapsed = t.elapsed();
            assert_eq!(got, frames, "consumer did not receive every frame");
            per_frame.push(elapsed.as_secs_f64() * 1e9 / frames as f64);
        }
        per_frame.sort_by(f64::total_cmp);
        let s = Stats {
            median_ns: per_frame[reps / 2],
            min_ns: per_frame[0],
            max_ns: per_frame[reps - 1],
        };
        report(name, None, &s);
    }
}

/// A 1514-byte Ethernet frame: IPv4/TCP, ACK|PSH, 1460 bytes of data,
/// checksums valid.
fn build_frame(frame: &mut [u8], payload: &[u8]) -> usize {
    let tcp = TcpRepr {
        src_port: 45678,
        dst_port: 5201,
        flags: Flags {
            psh: true,
            ..Flags::default()
        },
        seq_number: SeqNumber(0x1234_5678),
        ack_number: Some(SeqNumber(0x0bad_cafe)),
        window_len: 0xffff,
        max_seg_size: None,
        window_scale: None,
        sack_permitted: false,
        payload,
    };
    let ip = Ipv4Repr {
        src_addr: GUEST,
        dst_addr: GATEWAY,
        next_header: ip_proto::TCP,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
        dst_addr: EthernetAddress([0x52, 0x55, 10, 0, 2, 2]),
        ethertype: EtherType::Ipv4,
    };
    let total = eth.buffer_len() + ip.buffer_len() + tcp.buffer_len();
    let frame = &mut frame[..total];
    let mut e = EthernetFrame::new_unchecked(&mut *frame);
    eth.emit(&mut e);
    let mut p = Ipv4Packet::new_unchecked(e.payload_mut());
    ip.emit(&mut p);
    let mut t = TcpPacket::new_unchecked(p.payload_mut());
    tcp.emit(&mut t, IpAddr::V4(GUEST), IpAddr::V4(GATEWAY));
    total
}

/// Parse as the ingress path does: Ethernet, IPv4 (header checksum),
/// TCP (full checksum). Returns the payload length.
fn parse_frame(frame: &[u8]) -> usize {
    let Ok(e) = EthernetFrame::new_checked(frame) else {
        return 0;
    };
    if EthernetRepr::parse(&e).map(|r| r.ethertype) != Ok(EtherType::Ipv4) {
        return 0;
    }
    let Ok(p) = Ipv4Packet::new_checked(e.payload()) else {
        return 0;
    };
    let Ok(ip) = Ipv4Repr::parse(&p) else {
        return 0;
    };
    let Ok(t) = TcpPacket::new_checked(p.payload()) else {
        return 0;
    };
    TcpRepr::parse(&t, IpAddr::V4(ip.src_addr), IpAddr::V4(ip.dst_addr), true)
        .map(|r| r.payload.len())
        .unwrap_or(0)
}

fn bench_frames(filter: &dyn Fn(&str) -> bool) {
    let payload = pattern(1460);
    let mut frame = vec![0u8; 2048];
    let len = build_frame(&mut frame, &payload);
    assert_eq!(len, 1514, "frame length");
    assert_eq!(
        parse_frame(&frame[..len]),
        1460,
        "the built frame must parse"
    );

    let name = "frame parse eth+ipv4+tcp 1514 B";
    if filter(name) {
        let s = measure(|| {
            black_box(parse_frame(black_box(&frame[..len])));
        });
        report(name, Some(len), &s);
    }
    let name = "frame build eth+ipv4+tcp 1514 B";
    if filter(name) {
        let mut out = vec![0u8; 2048];
        let s = measure(|| {
            black_box(build_frame(black_box(&mut out), black_box(&payload)));
        });
        report(name, Some(len), &s);
    }
}

/// Reassembly of netperf UDP_STREAM's datagrams: 65507 bytes at MTU 1500,
/// 45 fragments each, every datagram with a new identification (as the
/// guest sends them), in order and in reverse order. One op is one whole
/// datagram; the line reports ns per fragment.
fn bench_reassembly(filter: &dyn Fn(&str) -> bool) {
    const LEN: usize = 65507;
    let data = pattern(LEN);
    let frags: Vec<(u16, bool, &[u8])> = frag::fragments(LEN, 1500)
        .map(|(off, len, more)| {
            // Cannot fail: offsets stay within MAX_PAYLOAD.
            let off16 = u16::try_from(off).expect("offset fits u16");
            (off16, more, &data[off..off + len])
        })
        .collect();
    assert_eq!(frags.len(), 45, "fragment count");
    let per_frag = frags.len() as f64;
    let mut reversed = frags.clone();
    reversed.reverse();
    for (name, order) in [
        ("reassembly 45 frags in order (per frag)", &frags),
        ("reassembly 45 frags reversed (per frag)", &reversed),
    ] {
        if !filter(name) {
            continue;
        }
        let mut r = Reassembler::new(Limits::default());
        let mut ident: u32 = 0;
        let mut whole = |r: &mut Reassembler| {
            ident = (ident + 1) & 0xffff;
            let key = FragKey {
                src: IpAddr::V4(GUEST),
                dst: IpAddr::V4(GATEWAY),
                proto: ip_proto::UDP,
                ident,
            };
            let mut out = None;
            for &(off, more, bytes) in order.iter() {
                out = r
                    .push(key, off, more, black_box(bytes), StackInstant::ZERO)
                    .expect("valid fragment");
            }
            out.expect("complete")
        };
        // Correct before it is timed.
        assert!(whole(&mut r) == data, "reassembled bytes differ");
        assert_eq!(r.held_bytes(), 0, "bytes held after completion");
        let s = if smoke() {
            // Under `cargo test`: a few datagrams, timed once.
            let t = Instant::now();
            for _ in 0..20 {
                black_box(whole(&mut r));
            }
            let ns = t.elapsed().as_secs_f64() * 1e9 / 20.0;
            Stats {
                median_ns: ns,
                min_ns: ns,
                max_ns: ns,
            }
        } else {
            measure(|| {
                black_box(whole(&mut r));
            })
        };
        assert_eq!(r.held_bytes(), 0, "bytes held after the run");
        let s = Stats {
            median_ns: s.median_ns / per_frag,
            min_ns: s.min_ns / per_frag,
            max_ns: s.max_ns / per_frag,
        };
        report(name, Some(LEN / frags.len()), &s);
    }
}

/// Run by `cargo test` rather than `cargo bench` (which passes `--bench`).
fn smoke() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments are name filters.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let filter = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    println!(
        "uipd micro-benchmarks: median of {REPS} repetitions of ~{} ms each",
        TARGET.as_millis()
    );
    bench_checksum(&filter);
    bench_ring(&filter);
    bench_frames(&filter);
    bench_reassembly(&filter);
}
