//! Tests of the io_uring executor against real sockets on loopback (and a
//! private network namespace for ICMP); one file so they share their helpers
//! (`open`, `host_events`, `echo_server`, ...).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::thread;

use super::*;
use crate::stack::ops::{Errno, SockOp};

const LONG: Duration = Duration::from_secs(10);

pub(super) fn fid(idx: u32) -> FlowId {
    FlowId { idx, gen_: 7 }
}

pub(super) fn open(u: &mut Uring, flow: FlowId, proto: Proto, dst: SocketAddr) {
    u.push(SockOp::Open { flow, proto, dst });
}

/// The ring refuses what is not on [`ALLOWED_OPS`]: an `openat`
/// submitted by hand completes with EACCES, so a compromised worker
/// cannot open files through io_uring, which seccomp does not see.
#[test]
fn the_ring_refuses_ops_off_its_list() {
    let mut u = Uring::new(8).unwrap();
    let path = c"/etc/passwd";
    let sqe = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
        .flags(libc::O_RDONLY)
        .build()
        .user_data(0xdead);
    // SAFETY: `path` is a static literal, alive for the whole op.
    unsafe { u.ring.submission().push(&sqe).unwrap() };
    u.ring.submit_and_wait(1).unwrap();
    let cqe = u.ring.completion().next().unwrap();
    assert_eq!(cqe.user_data(), 0xdead);
    assert_eq!(
        cqe.result(),
        -libc::EACCES,
        "openat through the ring was not refused"
    );
}

/// Pump the ring until `n` host events arrived (panics after [`LONG`]).
pub(super) fn host_events(u: &mut Uring, n: usize) -> Vec<HostEvent> {
    let end = Instant::now() + LONG;
    let mut evs = Vec::new();
    while evs.len() < n {
        assert!(Instant::now() < end, "timed out; got {evs:?}");
        u.submit_and_wait(1, Some(Duration::from_millis(100)))
            .unwrap();
        u.drain(&mut |c| {
            if let Completion::Host(ev) = c {
                evs.push(ev);
            }
        });
    }
    evs
}

fn one(u: &mut Uring) -> HostEvent {
    let mut evs = host_events(u, 1);
    assert_eq!(evs.len(), 1, "{evs:?}");
    evs.remove(0)
}

/// Pump the ring for `d`; returns every completion.
fn quiet_for(u: &mut Uring, d: Duration) -> Vec<Completion> {
    let end = Instant::now() + d;
    let mut all = Vec::new();
    while Instant::now() < end {
        u.submit_and_wait(1, Some(Duration::from_millis(20)))
            .unwrap();
        u.drain(&mut |c| {
            if !matches!(c, Completion::Timeout) {
                all.push(c);
            }
        });
    }
    all
}

pub(super) fn connected(u: &mut Uring, flow: FlowId) {
    assert_eq!(
        one(u),
        HostEvent::Connected {
            flow,
            result: Ok(())
        }
    );
}

pub(super) fn sent(u: &mut Uring, flow: FlowId) -> usize {
    match one(u) {
        HostEvent::Sent {
            flow: f,
            result: Ok(n),
        } if f == flow => n,
        ev => panic!("expected Sent for {flow:?}, got {ev:?}"),
    }
}

fn received(u: &mut Uring, flow: FlowId) -> Result<Vec<u8>, Errno> {
    match one(u) {
        HostEvent::Received { flow: f, result } if f == flow => result,
        ev => panic!("expected Received for {flow:?}, got {ev:?}"),
    }
}

fn closed_port_tcp() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn echo_server() -> (SocketAddr, thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => s.write_all(&buf[..n]).unwrap(),
            }
        }
        // Dropping `s` closes: the client sees EOF.
    });
    (addr, h)
}

#[test]
fn token_round_trip() {
    let kinds = [
        OpKind::Connect,
        OpKind::Send,
        OpKind::Recv,
        OpKind::FrameWrite,
        OpKind::PollIn,
        OpKind::Wake,
        OpKind::Timeout,
    ];
    for kind in kinds {
        for slot in [0, 1, 12345, u32::MAX] {
            let t = Token::Op { kind, slot };
            assert_eq!(Token::unpack(t.pack()), Some(t));
        }
    }
    assert_eq!(Token::unpack(Token::Cancel.pack()), Some(Token::Cancel));
    assert_eq!(Token::unpack(0), None);
    assert_eq!(Token::unpack(1 << 40 | 2 << 56), None);
    assert_eq!(Token::unpack(99 << 56), None);
}

#[test]
fn tcp_connect_send_recv_eof() {
    let (addr, echo) = echo_server();
    let mut u = Uring::new(32).unwrap();
    let f = fid(3);
    open(&mut u, f, Proto::Tcp, addr);
    connected(&mut u, f);
    assert_eq!(u.open_flows(), 1);
    u.push(SockOp::Send {
        flow: f,
        data: b"hello uring".to_vec(),
    });
    assert_eq!(sent(&mut u, f), 11);
    let mut got = Vec::new();
    while got.len() < 11 {
        u.push(SockOp::Recv { flow: f, max: 100 });
        got.extend(received(&mut u, f).unwrap());
    }
    assert_eq!(got, b"hello uring");
    // FIN to the echo server, which closes: EOF for us.
    u.push(SockOp::ShutdownWrite { flow: f });
    u.push(SockOp::Recv { flow: f, max: 100 });
    assert_eq!(received(&mut u, f), Ok(Vec::new()));
    echo.join().unwrap();
    u.push(SockOp::Close {
        flow: f,
        reset: false,
    });
    assert_eq!(u.open_flows(), 0);
    assert_eq!(u.open_sockets(), 0);
    assert_eq!(u.in_flight(), 0);
}

#[test]
fn ops_pushed_before_connect_completes_run_after_it() {
    let (addr, echo) = echo_server();
    let mut u = Uring::new(32).unwrap();
    let f = fid(0);
    open(&mut u, f, Proto::Tcp, addr);
    u.push(SockOp::Send {
        flow: f,
        data: b"early".to_vec(),
    });
    u.push(SockOp::ShutdownWrite { flow: f });
    let evs = host_events(&mut u, 2);
    assert_eq!(
        evs,
        [
            HostEvent::Connected {
                flow: f,
                result: Ok(())
            },
            HostEvent::Sent {
                flow: f,
                result: Ok(5)
            }
        ]
    );
    let mut got = Vec::new();
    loop {
        u.push(SockOp::Recv { flow: f, max: 3 });
        let chunk = received(&mut u, f).unwrap();
        if chunk.is_empty() {
            break;
        }
        assert!(chunk.len() <= 3);
        got.extend(chunk);
    }
    assert_eq!(got, b"early");
    echo.join().unwrap();
}

#[test]
fn tcp_connect_refused() {
    let addr = closed_port_tcp();
    let mut u = Uring::new(8).unwrap();
    let f = fid(1);
    open(&mut u, f, Proto::Tcp, addr);
    u.push(SockOp::Recv { flow: f, max: 10 });
    let evs = host_events(&mut u, 2);
    assert_eq!(
        evs,
        [
            HostEvent::Connected {
                flow: f,
                result: Err(libc::ECONNREFUSED)
            },
            HostEvent::Received {
                flow: f,
                result: Err(libc::ECONNREFUSED)
            }
        ]
    );
    // Ops after the failure are answered with the same errno.
    u.push(SockOp::Send {
        flow: f,
        data: vec![1],
    });
    assert_eq!(
        one(&mut u),
        HostEvent::Sent {
            flow: f,
            result: Err(libc::ECONNREFUSED)
        }
    );
    u.push(SockOp::Close {
        flow: f,
        reset: true,
    });
    assert_eq!(u.open_sockets(), 0);
}

/// Deterministic test pattern (xorshift), so reordering would show.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// A Send larger than the socket buffers toward a peer that does not
/// read yet: no answer until the socket took all of it, then one
/// `Sent` with the whole count, byte-exact at the peer. With
/// `MSG_WAITALL` the kernel finishes it; without (a kernel before
/// 5.18), `Uring` restarts the rest itself.
fn large_send_completes_whole(waitall: bool) {
    const LEN: usize = 8 << 20;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let peer = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        // Do not read until told: the send fills the socket buffers.
        go_rx.recv_timeout(LONG).unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    });
    let data = pattern(LEN);
    let mut u = Uring::new(8).unwrap();
    u.send_waitall = waitall;
    let f = fid(9);
    open(&mut u, f, Proto::Tcp, addr);
    connected(&mut u, f);
    u.push(SockOp::Send {
        flow: f,
        data: data.clone(),
    });
    assert!(
        quiet_for(&mut u, Duration::from_millis(300)).is_empty(),
        "a Send answered before the socket took all of it"
    );
    go_tx.send(()).unwrap();
    assert_eq!(sent(&mut u, f), LEN, "one Sent, the whole count");
    u.push(SockOp::ShutdownWrite { flow: f });
    let got = peer.join().unwrap();
    assert_eq!(got.len(), LEN);
    assert!(got == data, "peer got different bytes");
    if !waitall {
        assert!(u.short_sends() > 0, "the restart path was not taken");
    }
    u.push(SockOp::Close {
        flow: f,
        reset: false,
    });
}

#[test]
fn tcp_send_larger_than_the_socket_buffers_completes_whole_with_waitall() {
    large_send_completes_whole(true);
}

#[test]
fn tcp_send_larger_than_the_socket_buffers_completes_whole_by_restarts() {
    large_send_completes_whole(false);
}

#[test]
fn close_with_reset_makes_peer_see_econnreset() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut u = Uring::new(8).unwrap();
    let f = fid(2);
    open(&mut u, f, Proto::Tcp, addr);
    connected(&mut u, f);
    let (mut peer, _) = l.accept().unwrap();
    peer.set_read_timeout(Some(LONG)).unwrap();
    // A recv in flight must not keep the socket (and the RST) back.
    u.push(SockOp::Recv { flow: f, max: 64 });
    u.submit_and_wait(0, None).unwrap();
    u.push(SockOp::Close {
        flow: f,
        reset: true,
    });
    assert!(quiet_for(&mut u, Duration::from_millis(100)).is_empty());
    assert_eq!(u.open_sockets(), 0, "fd closed once the cancel landed");
    let err = peer.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
}

#[test]
fn no_event_after_close_even_with_recv_in_flight() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut u = Uring::new(8).unwrap();
    let f = fid(4);
    open(&mut u, f, Proto::Tcp, addr);
    connected(&mut u, f);
    let (mut peer, _) = l.accept().unwrap();
    peer.set_read_timeout(Some(LONG)).unwrap();
    u.push(SockOp::Recv { flow: f, max: 64 });
    u.submit_and_wait(0, None).unwrap();
    assert_eq!(u.in_flight(), 1);
    u.push(SockOp::Close {
        flow: f,
        reset: false,
    });
    assert_eq!(u.open_flows(), 0);
    // Data arriving now must not surface as an event for `f`.
    let _ = peer.write_all(b"late");
    // Ops pushed after Close are dropped too.
    u.push(SockOp::Recv { flow: f, max: 64 });
    let evs = quiet_for(&mut u, Duration::from_millis(300));
    assert!(evs.is_empty(), "{evs:?}");
    assert_eq!(u.in_flight(), 0);
    assert_eq!(u.open_sockets(), 0);
    // The socket really is closed: orderly close => EOF (or a reset,
    // since "late" was never read).
    match peer.read(&mut [0u8; 16]) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected EOF or reset, got {other:?}"),
    }
}

#[test]
fn slot_reuse_with_new_generation_gets_no_stale_events() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut u = Uring::new(8).unwrap();
    let old = FlowId { idx: 5, gen_: 1 };
    let new = FlowId { idx: 5, gen_: 2 };
    open(&mut u, old, Proto::Tcp, addr);
    connected(&mut u, old);
    let (_p1, _) = l.accept().unwrap();
    u.push(SockOp::Recv { flow: old, max: 64 });
    u.submit_and_wait(0, None).unwrap();
    u.push(SockOp::Close {
        flow: old,
        reset: true,
    });
    open(&mut u, new, Proto::Tcp, addr);
    connected(&mut u, new);
    let (mut p2, _) = l.accept().unwrap();
    p2.write_all(b"new").unwrap();
    u.push(SockOp::Recv { flow: new, max: 64 });
    assert_eq!(received(&mut u, new), Ok(b"new".to_vec()));
    // Ops for the old generation are ignored.
    u.push(SockOp::Recv { flow: old, max: 64 });
    assert!(quiet_for(&mut u, Duration::from_millis(100)).is_empty());
    assert_eq!(u.open_sockets(), 1);
}

#[test]
fn tcp_over_ipv6_loopback() {
    let Ok(l) = TcpListener::bind("[::1]:0") else {
        eprintln!("skipped: no IPv6 loopback");
        return;
    };
    let addr = l.local_addr().unwrap();
    let mut u = Uring::new(8).unwrap();
    let f = fid(11);
    open(&mut u, f, Proto::Tcp, addr);
    connected(&mut u, f);
    let (mut peer, from) = l.accept().unwrap();
    assert!(from.is_ipv6());
    peer.write_all(b"v6").unwrap();
    u.push(SockOp::Recv { flow: f, max: 64 });
    assert_eq!(received(&mut u, f), Ok(b"v6".to_vec()));
}

fn udp_echo() -> (SocketAddr, thread::JoinHandle<()>) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let h = thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        // Until no datagram for 2 s.
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            s.send_to(&buf[..n], from).unwrap();
        }
    });
    (addr, h)
}

#[test]
fn udp_echo_round_trip() {
    let (addr, _echo) = udp_echo();
    let mut u = Uring::new(8).unwrap();
    let f = fid(6);
    open(&mut u, f, Proto::Udp, addr);
    // A datagram pushed right behind Open waits for the connect.
    u.push(SockOp::Send {
        flow: f,
        data: b"ping over udp".to_vec(),
    });
    u.push(SockOp::Recv { flow: f, max: 2048 });
    let evs = host_events(&mut u, 3);
    assert_eq!(
        evs,
        [
            HostEvent::Connected {
                flow: f,
                result: Ok(())
            },
            HostEvent::Sent {
                flow: f,
                result: Ok(13)
            },
            HostEvent::Received {
                flow: f,
                result: Ok(b"ping over udp".to_vec())
            },
        ]
    );
}

#[test]
fn udp_to_closed_port_recv_is_econnrefused() {
    let addr = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let mut u = Uring::new(8).unwrap();
    let f = fid(7);
    open(&mut u, f, Proto::Udp, addr);
    connected(&mut u, f);
    u.push(SockOp::Send {
        flow: f,
        data: b"anyone?".to_vec(),
    });
    assert_eq!(sent(&mut u, f), 7);
    u.push(SockOp::Recv { flow: f, max: 2048 });
    assert_eq!(received(&mut u, f), Err(libc::ECONNREFUSED));
}

#[test]
fn backlog_beyond_sq_size_keeps_order_and_completes() {
    let (addr, _echo) = udp_echo();
    // 2 SQ entries, 12 flows x (connect, send, recv).
    let mut u = Uring::new(2).unwrap();
    let flows: Vec<FlowId> = (0..12).map(fid).collect();
    for (i, &f) in flows.iter().enumerate() {
        open(&mut u, f, Proto::Udp, addr);
        u.push(SockOp::Send {
            flow: f,
            data: vec![u8::try_from(i).unwrap(); 10],
        });
        u.push(SockOp::Recv { flow: f, max: 64 });
    }
    let evs = host_events(&mut u, 36);
    for (i, &f) in flows.iter().enumerate() {
        let mine: Vec<&HostEvent> = evs.iter().filter(|e| e.flow() == f).collect();
        assert_eq!(mine.len(), 3, "{mine:?}");
        assert!(matches!(
            mine[0],
            HostEvent::Connected { result: Ok(()), .. }
        ));
        assert!(matches!(mine[1], HostEvent::Sent { result: Ok(10), .. }));
        let HostEvent::Received { result: Ok(d), .. } = mine[2] else {
            panic!("{mine:?}")
        };
        assert_eq!(*d, vec![u8::try_from(i).unwrap(); 10]);
    }
    // Datagram flows keep receiving (one multishot receive each) until
    // they are closed.
    assert_eq!(u.in_flight(), 12);
    for &f in &flows {
        u.push(SockOp::Close {
            flow: f,
            reset: false,
        });
    }
    let evs = quiet_for(&mut u, Duration::from_millis(200));
    assert!(evs.is_empty(), "{evs:?}");
    assert_eq!(u.in_flight(), 0);
    assert_eq!(u.open_sockets(), 0);
}

#[test]
fn one_recv_receives_every_datagram_of_a_udp_flow_in_order() {
    let (addr, _echo) = udp_echo();
    let mut u = Uring::new(64).unwrap();
    let f = fid(0);
    open(&mut u, f, Proto::Udp, addr);
    connected(&mut u, f);
    u.push(SockOp::Recv {
        flow: f,
        max: 65535,
    });
    // 200 datagrams up to the largest UDP payload, echoed back: more
    // than the 64 shared receive buffers, so the multishot receive runs
    // out of them and is re-armed on the way.
    let sizes: Vec<usize> = (0..200).map(|i| [1, 1400, 9000, 65507][i % 4]).collect();
    let mut got = Vec::new();
    let mut sent = 0;
    let start = Instant::now();
    while got.len() < sizes.len() && start.elapsed() < Duration::from_secs(10) {
        while sent < sizes.len() && sent < got.len() + 3 {
            let mut d = vec![0u8; sizes[sent]];
            d[0] = u8::try_from(sent % 256).unwrap();
            u.push(SockOp::Send { flow: f, data: d });
            sent += 1;
        }
        for ev in quiet_for(&mut u, Duration::from_millis(20)) {
            if let Completion::Host(HostEvent::Received { result, .. }) = ev {
                got.push(result.unwrap());
            }
        }
    }
    assert_eq!(got.len(), sizes.len());
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d.len(), sizes[i], "datagram {i}");
        assert_eq!(
            d[0],
            u8::try_from(i % 256).unwrap(),
            "datagram {i} out of order"
        );
    }
}

#[test]
fn close_of_ops_still_in_backlog_drops_them() {
    let (addr, _echo) = udp_echo();
    let mut u = Uring::new(2).unwrap();
    let flows: Vec<FlowId> = (0..6).map(fid).collect();
    for &f in &flows {
        open(&mut u, f, Proto::Udp, addr);
    }
    assert_eq!(u.in_flight(), 6);
    for &f in &flows {
        u.push(SockOp::Close {
            flow: f,
            reset: false,
        });
    }
    // The four connects in the backlog are gone; two wait for CQEs.
    assert_eq!(u.in_flight(), 2);
    let evs = quiet_for(&mut u, Duration::from_millis(100));
    assert!(evs.is_empty(), "{evs:?}");
    assert_eq!(u.in_flight(), 0);
    assert_eq!(u.open_sockets(), 0);
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd(2) takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn wake_via_eventfd() {
    let efd = eventfd();
    let raw = efd.as_raw_fd();
    let mut u = Uring::new(8).unwrap();
    u.arm_wake(raw);
    let waker = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        let one = 1u64.to_ne_bytes();
        // SAFETY: `raw` stays open (the test joins before dropping
        // `efd`); `one` is 8 readable bytes.
        let n = unsafe { libc::write(raw, one.as_ptr().cast(), 8) };
        assert_eq!(n, 8);
    });
    let start = Instant::now();
    let mut wakes = 0;
    while wakes == 0 {
        assert!(start.elapsed() < LONG);
        u.submit_and_wait(1, Some(LONG)).unwrap();
        u.drain(&mut |c| match c {
            Completion::Wake => wakes += 1,
            other => panic!("unexpected {other:?}"),
        });
    }
    waker.join().unwrap();
    assert_eq!(u.in_flight(), 0);
    drop(u);
    drop(efd);
}

/// What a busy-polling worker relies on: an event another thread causes
/// shows in `work_pending` with no system call of ours (the CQE, or the
/// ring's task-work flag when the kernel still has to finish the op in
/// this thread), and the next `drain` delivers it: drain runs that task
/// work itself rather than leaving it to the next enter.
#[test]
fn drain_delivers_what_work_pending_saw() {
    let (a, b) = seqpacket_pair();
    let mut u = Uring::new(8).unwrap();
    u.push_poll_in(a.as_raw_fd());
    u.submit_and_wait(0, None).unwrap();
    assert!(!u.work_pending(), "nothing happened yet");
    // Nothing queued: no system call, and nothing lost by skipping it.
    u.submit_and_wait(0, None).unwrap();
    let raw = b.as_raw_fd();
    let writer = thread::spawn(move || {
        // SAFETY: `raw` stays open (the test joins before dropping `b`);
        // the buffer is 1 readable byte.
        let n = unsafe { libc::write(raw, [7u8].as_ptr().cast(), 1) };
        assert_eq!(n, 1);
    });
    let start = Instant::now();
    while !u.work_pending() {
        assert!(start.elapsed() < LONG, "the event never showed");
        std::hint::spin_loop();
    }
    let mut readable = 0;
    u.drain(&mut |c| match c {
        Completion::Readable { result: Ok(_) } => readable += 1,
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(
        readable, 1,
        "the first drain after work_pending delivers it"
    );
    writer.join().unwrap();
    assert_eq!(u.in_flight(), 0);
    drop(u);
    drop((a, b));
}

fn timeout_returns_without_events(ext_arg: bool) {
    let mut u = Uring::new(8).unwrap();
    u.ext_arg &= ext_arg;
    let t = Duration::from_millis(80);
    let start = Instant::now();
    u.submit_and_wait(1, Some(t)).unwrap();
    let waited = start.elapsed();
    assert!(waited >= t, "returned after {waited:?}");
    assert!(waited < LONG);
    let mut got = Vec::new();
    u.drain(&mut |c| got.push(c));
    assert!(matches!(got[..], [Completion::Timeout]), "{got:?}");
    assert_eq!(u.in_flight(), 0);
}

#[test]
fn timeout_returns_without_events_ext_arg() {
    timeout_returns_without_events(true);
}

#[test]
fn timeout_returns_without_events_timeout_sqe() {
    timeout_returns_without_events(false);
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair(2) writes.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

#[test]
fn fallback_timeouts_do_not_pile_up() {
    let (a, _b) = seqpacket_pair();
    let mut u = Uring::new(8).unwrap();
    u.ext_arg = false;
    let start = Instant::now();
    for _ in 0..20 {
        u.push_frame_write(a.as_raw_fd(), vec![0; 16]);
        u.submit_and_wait(1, Some(LONG)).unwrap();
        u.drain(&mut |c| assert!(matches!(c, Completion::FrameWritten { result: Ok(16) })));
    }
    // Let the last frame write and the removals land.
    u.submit_and_wait(0, None).unwrap();
    thread::sleep(Duration::from_millis(20));
    u.drain(&mut |c| assert!(matches!(c, Completion::FrameWritten { result: Ok(16) })));
    assert!(start.elapsed() < LONG);
    assert!(u.in_flight() <= 2, "{} ops in flight", u.in_flight());
    // Dropping removes the pending 10 s timeout instead of waiting.
    let start = Instant::now();
    drop(u);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn frame_write_and_spare_buffer() {
    let (a, b) = seqpacket_pair();
    let mut u = Uring::new(8).unwrap();
    assert!(u.take_spare_buffer().is_none());
    let frame: Vec<u8> = (0..=255).collect();
    u.push_frame_write(a.as_raw_fd(), frame.clone());
    let mut written = None;
    while written.is_none() {
        u.submit_and_wait(1, Some(LONG)).unwrap();
        u.drain(&mut |c| match c {
            Completion::FrameWritten { result } => written = Some(result.unwrap()),
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(written, Some(256));
    let mut got = [0u8; 512];
    // SAFETY: `b` is open; `got` has 512 writable bytes.
    let n = unsafe { libc::recv(b.as_raw_fd(), got.as_mut_ptr().cast(), got.len(), 0) };
    assert_eq!(usize::try_from(n).unwrap(), 256);
    assert_eq!(&got[..256], &frame[..]);
    let spare = u.take_spare_buffer().unwrap();
    assert!(spare.is_empty() && spare.capacity() >= 256);
}

#[test]
fn drop_with_ops_in_flight_cancels_and_closes() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let efd = eventfd();
    let mut u = Uring::new(8).unwrap();
    let f = fid(0);
    open(&mut u, f, Proto::Tcp, addr);
    connected(&mut u, f);
    let (mut peer, _) = l.accept().unwrap();
    peer.set_read_timeout(Some(LONG)).unwrap();
    u.push(SockOp::Recv { flow: f, max: 64 });
    u.arm_wake(efd.as_raw_fd());
    u.submit_and_wait(0, None).unwrap();
    let start = Instant::now();
    drop(u);
    assert!(start.elapsed() < DROP_DRAIN, "drop drained by cancelling");
    let err = peer.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
}

#[test]
fn open_of_icmp_in_this_namespace_succeeds_or_fails_cleanly() {
    // ping_group_range decides; either way the contract holds.
    let mut u = Uring::new(8).unwrap();
    let f = fid(1);
    open(
        &mut u,
        f,
        Proto::Icmp,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    match one(&mut u) {
        HostEvent::Connected { result: Ok(()), .. } => {}
        HostEvent::Connected { result: Err(e), .. } => {
            assert_eq!(u.open_sockets(), 0);
            u.push(SockOp::Send {
                flow: f,
                data: vec![8, 0, 0, 0, 0, 0, 0, 0],
            });
            assert_eq!(
                one(&mut u),
                HostEvent::Sent {
                    flow: f,
                    result: Err(e)
                }
            );
        }
        ev => panic!("{ev:?}"),
    }
    u.push(SockOp::Close {
        flow: f,
        reset: false,
    });
    assert!(quiet_for(&mut u, Duration::from_millis(20)).is_empty());
}

/// Bring `lo` up in the calling thread's network namespace.
fn lo_up() -> io::Result<()> {
    // SAFETY: socket(2) takes no pointers.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` was just created and is owned by nobody else.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &c) in ifr.ifr_name.iter_mut().zip(b"lo") {
        *d = libc::c_char::try_from(c).unwrap();
    }
    // SAFETY: `s` is open; `ifr` is a valid ifreq the kernel fills.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let up = libc::c_short::try_from(libc::IFF_UP).unwrap();
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    unsafe { ifr.ifr_ifru.ifru_flags |= up };
    // SAFETY: `s` is open; `ifr` is a valid ifreq the kernel reads.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &raw const ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn icmp_echo_in_private_netns() {
    let sysctl = "/proc/sys/net/ipv4/ping_group_range";
    let before = std::fs::read_to_string(sysctl).unwrap();
    let t = thread::spawn(|| -> Result<(), String> {
        // SAFETY: unshare(2) takes no pointers; CLONE_NEWNET moves only
        // this thread into a new network namespace, and the thread ends
        // with the test.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!("unshare: {}", io::Error::last_os_error()));
        }
        lo_up().map_err(|e| format!("lo up: {e}"))?;
        // /proc/sys/net resolves to the network namespace of the task
        // that opens it: this thread's new one.
        let path = "/proc/sys/net/ipv4/ping_group_range";
        std::fs::write(path, "0 2147483647").map_err(|e| format!("sysctl: {e}"))?;
        let now = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            now.split_whitespace().collect::<Vec<_>>(),
            ["0", "2147483647"]
        );

        let mut u = Uring::new(8).unwrap();
        let f = fid(0);
        open(
            &mut u,
            f,
            Proto::Icmp,
            SocketAddr::from(([127, 0, 0, 1], 0)),
        );
        connected(&mut u, f);
        // Echo request: type 8, code 0; the kernel sets id and checksum.
        let mut req = vec![8, 0, 0, 0, 0, 0, 0, 1];
        req.extend_from_slice(b"uipd ping payload");
        u.push(SockOp::Send {
            flow: f,
            data: req.clone(),
        });
        assert_eq!(sent(&mut u, f), req.len());
        u.push(SockOp::Recv { flow: f, max: 2048 });
        let reply = received(&mut u, f).unwrap();
        assert_eq!(reply.len(), req.len());
        assert_eq!(reply[0], 0, "echo reply type");
        assert_eq!(&reply[6..], &req[6..], "sequence and payload");
        Ok(())
    });
    match t.join().unwrap() {
        Ok(()) => {
            // The namespace of this (test) thread is untouched.
            let after = std::fs::read_to_string(sysctl).unwrap();
            assert_eq!(
                before, after,
                "the sysctl leaked out of the private namespace"
            );
        }
        Err(e) if e.starts_with("unshare") => eprintln!("skipped: {e}"),
        Err(e) => panic!("{e}"),
    }
}

/// Completions other than host events, until `pred` holds (bounded).
fn until(u: &mut Uring, mut pred: impl FnMut(Completion) -> bool) {
    let end = Instant::now() + LONG;
    let mut done = false;
    while !done {
        assert!(Instant::now() < end, "timed out");
        u.submit_and_wait(1, Some(Duration::from_millis(100)))
            .unwrap();
        u.drain(&mut |c| done |= pred(c));
    }
}

#[test]
fn published_tcp_accept_attach_and_remove() {
    use std::io::{Read, Write};
    let mut u = Uring::new(64).unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    u.add_listener(7, Proto::Tcp, OwnedFd::from(l));
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(LONG)).unwrap();
    let mut accepted = None;
    until(&mut u, |c| match c {
        Completion::Accepted { listener, fd, peer } => {
            assert_eq!(listener, 7);
            assert_eq!(peer, client.local_addr().unwrap());
            accepted = Some(fd);
            true
        }
        _ => false,
    });
    let flow = fid(3);
    u.attach_tcp(flow, accepted.unwrap());
    // Attached: ops run at once, no Connected event.
    u.push(SockOp::Send {
        flow,
        data: b"from guest".to_vec(),
    });
    u.push(SockOp::Recv { flow, max: 100 });
    client.write_all(b"from host").unwrap();
    let evs = host_events(&mut u, 2);
    assert!(evs.contains(&HostEvent::Sent {
        flow,
        result: Ok(10)
    }));
    assert!(evs.contains(&HostEvent::Received {
        flow,
        result: Ok(b"from host".to_vec())
    }));
    let mut buf = [0u8; 10];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from guest");
    // Removed: the port refuses new clients at once.
    u.remove_listener(7);
    assert_eq!(
        std::net::TcpStream::connect(addr).unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused
    );
    assert!(u.listener_ids().is_empty());
    // The established connection is unaffected.
    u.push(SockOp::Close { flow, reset: false });
    let _ = quiet_for(&mut u, Duration::from_millis(50));
    assert_eq!(client.read(&mut buf).unwrap(), 0, "EOF after Close");
}

#[test]
fn published_udp_datagrams_and_replies_through_the_shared_socket() {
    let mut u = Uring::new(64).unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    u.add_listener(9, Proto::Udp, OwnedFd::from(sock));
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(LONG)).unwrap();
    for i in 0..3u8 {
        client.send_to(&[i; 100], addr).unwrap();
    }
    let mut got = Vec::new();
    until(&mut u, |c| {
        if let Completion::Datagram {
            listener,
            peer,
            data,
        } = c
        {
            assert_eq!(listener, 9);
            assert_eq!(peer, client.local_addr().unwrap());
            got.push(data);
        }
        got.len() == 3
    });
    assert_eq!(got, vec![vec![0; 100], vec![1; 100], vec![2; 100]]);
    let flow = fid(4);
    u.attach_udp(flow, 9, client.local_addr().unwrap());
    u.push(SockOp::Send {
        flow,
        data: b"reply".to_vec(),
    });
    assert_eq!(
        host_events(&mut u, 1),
        vec![HostEvent::Sent {
            flow,
            result: Ok(5)
        }]
    );
    let mut buf = [0u8; 16];
    let (n, from) = client.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from),
        (&b"reply"[..], addr),
        "from the published port"
    );
    // Closing the flow leaves the published socket open.
    u.push(SockOp::Close { flow, reset: false });
    client.send_to(b"again", addr).unwrap();
    let mut again = false;
    until(&mut u, |c| {
        again |= matches!(c, Completion::Datagram { ref data, .. } if data == b"again");
        again
    });
}
