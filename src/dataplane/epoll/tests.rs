//! The epoll executor driven alone against real loopback sockets (and a
//! socketpair as a fake TAP): the io_uring executor's contract tests,
//! mirrored. One file (over 800 lines) so the tests share their harness
//! (`open`, `host_events`, the echo servers) as `uring/tests.rs` does.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::FromRawFd;
use std::sync::mpsc;
use std::thread;

use super::*;

const LONG: Duration = Duration::from_secs(10);

fn fid(idx: u32) -> FlowId {
    FlowId { idx, gen_: 7 }
}

fn open(u: &mut Epoll, flow: FlowId, proto: Proto, dst: SocketAddr) {
    u.push(SockOp::Open { flow, proto, dst });
}

/// Pump until `n` host events arrived (panics after [`LONG`]).
fn host_events(u: &mut Epoll, n: usize) -> Vec<HostEvent> {
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

fn one(u: &mut Epoll) -> HostEvent {
    let mut evs = host_events(u, 1);
    assert_eq!(evs.len(), 1, "{evs:?}");
    evs.remove(0)
}

/// Pump for `d`; returns every completion but timeouts.
fn quiet_for(u: &mut Epoll, d: Duration) -> Vec<Completion> {
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

/// Completions other than host events, until `pred` holds (bounded).
fn until(u: &mut Epoll, mut pred: impl FnMut(Completion) -> bool) {
    let end = Instant::now() + LONG;
    let mut done = false;
    while !done {
        assert!(Instant::now() < end, "timed out");
        u.submit_and_wait(1, Some(Duration::from_millis(100)))
            .unwrap();
        u.drain(&mut |c| done |= pred(c));
    }
}

fn connected(u: &mut Epoll, flow: FlowId) {
    assert_eq!(
        one(u),
        HostEvent::Connected {
            flow,
            result: Ok(())
        }
    );
}

fn sent(u: &mut Epoll, flow: FlowId) -> usize {
    match one(u) {
        HostEvent::Sent {
            flow: f,
            result: Ok(n),
        } if f == flow => n,
        ev => panic!("expected Sent for {flow:?}, got {ev:?}"),
    }
}

fn received(u: &mut Epoll, flow: FlowId) -> Result<Vec<u8>, Errno> {
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
    });
    (addr, h)
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

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair(2) writes.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd(2) takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn token_round_trip() {
    for t in [
        Token::Flow { idx: 0, gen_: 0 },
        Token::Flow {
            idx: u32::MAX,
            gen_: Token::GEN_MASK,
        },
        Token::Listener { id: 12345 },
        Token::Wake,
        Token::PollIn,
    ] {
        assert_eq!(Token::unpack(t.pack()), Some(t));
    }
    assert_eq!(Token::unpack(0), None);
    assert_eq!(Token::unpack(99 << 56), None);
}

#[test]
fn tcp_connect_send_recv_eof() {
    let (addr, echo) = echo_server();
    let mut u = Epoll::new().unwrap();
    let f = fid(3);
    open(&mut u, f, Proto::Tcp, addr);
    connected(&mut u, f);
    assert_eq!(u.open_flows(), 1);
    u.push(SockOp::Send {
        flow: f,
        data: b"hello epoll".to_vec(),
    });
    assert_eq!(sent(&mut u, f), 11);
    let mut got = Vec::new();
    while got.len() < 11 {
        u.push(SockOp::Recv { flow: f, max: 100 });
        got.extend(received(&mut u, f).unwrap());
    }
    assert_eq!(got, b"hello epoll");
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
}

#[test]
fn ops_pushed_before_connect_completes_run_after_it() {
    let (addr, echo) = echo_server();
    let mut u = Epoll::new().unwrap();
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
    let mut u = Epoll::new().unwrap();
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

/// A Send larger than the socket buffers toward a peer that does not read
/// yet: no answer until the socket took all of it (the rest of each short
/// write waits for EPOLLOUT), then one `Sent` with the whole count,
/// byte-exact at the peer.
#[test]
fn tcp_send_larger_than_the_socket_buffers_completes_whole() {
    const LEN: usize = 8 << 20;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let peer = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        go_rx.recv_timeout(LONG).unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    });
    let data = pattern(LEN);
    let mut u = Epoll::new().unwrap();
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
    // The FIN waits for nothing: the send is complete.
    u.push(SockOp::ShutdownWrite { flow: f });
    u.submit_and_wait(0, None).unwrap();
    let got = peer.join().unwrap();
    assert_eq!(got.len(), LEN);
    assert!(got == data, "peer got different bytes");
    assert!(u.short_sends() > 0, "the restart path was not taken");
}

/// A ShutdownWrite behind a send still in progress waits for it: the peer
/// sees every byte, then EOF.
#[test]
fn shutdown_write_waits_for_the_send_in_progress() {
    const LEN: usize = 8 << 20;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let peer = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        thread::sleep(Duration::from_millis(200));
        s.set_read_timeout(Some(LONG)).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    });
    let data = pattern(LEN);
    let mut u = Epoll::new().unwrap();
    let f = fid(2);
    open(&mut u, f, Proto::Tcp, addr);
    connected(&mut u, f);
    u.push(SockOp::Send {
        flow: f,
        data: data.clone(),
    });
    u.push(SockOp::ShutdownWrite { flow: f });
    assert_eq!(sent(&mut u, f), LEN);
    let got = peer.join().unwrap();
    assert!(
        got == data,
        "peer got {} bytes, or different ones",
        got.len()
    );
}

#[test]
fn close_with_reset_makes_peer_see_econnreset() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut u = Epoll::new().unwrap();
    let f = fid(2);
    open(&mut u, f, Proto::Tcp, addr);
    connected(&mut u, f);
    let (mut peer, _) = l.accept().unwrap();
    peer.set_read_timeout(Some(LONG)).unwrap();
    // A recv waiting for data must not keep the socket (and the RST) back.
    u.push(SockOp::Recv { flow: f, max: 64 });
    u.submit_and_wait(0, None).unwrap();
    u.push(SockOp::Close {
        flow: f,
        reset: true,
    });
    assert!(quiet_for(&mut u, Duration::from_millis(100)).is_empty());
    assert_eq!(u.open_sockets(), 0);
    let err = peer.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
}

#[test]
fn no_event_after_close_even_with_ops_waiting_or_results_queued() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut u = Epoll::new().unwrap();
    let f = fid(4);
    open(&mut u, f, Proto::Tcp, addr);
    connected(&mut u, f);
    let (mut peer, _) = l.accept().unwrap();
    peer.set_read_timeout(Some(LONG)).unwrap();
    u.push(SockOp::Recv { flow: f, max: 64 });
    u.submit_and_wait(0, None).unwrap();
    // A result already queued (the send ran at submit) is not delivered
    // after Close either.
    u.push(SockOp::Send {
        flow: f,
        data: b"x".to_vec(),
    });
    u.submit_and_wait(0, None).unwrap();
    u.push(SockOp::Close {
        flow: f,
        reset: false,
    });
    assert_eq!(u.open_flows(), 0);
    let _ = peer.write_all(b"late");
    // Ops pushed after Close are dropped too.
    u.push(SockOp::Recv { flow: f, max: 64 });
    let evs = quiet_for(&mut u, Duration::from_millis(300));
    assert!(evs.is_empty(), "{evs:?}");
    assert_eq!(u.open_sockets(), 0);
    let mut buf = [0u8; 16];
    assert_eq!(peer.read(&mut buf).unwrap(), 1, "the send itself went out");
    match peer.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected EOF or reset, got {other:?}"),
    }
}

#[test]
fn slot_reuse_with_new_generation_gets_no_stale_events() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut u = Epoll::new().unwrap();
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
    let mut u = Epoll::new().unwrap();
    let f = fid(11);
    open(&mut u, f, Proto::Tcp, addr);
    connected(&mut u, f);
    let (mut peer, from) = l.accept().unwrap();
    assert!(from.is_ipv6());
    peer.write_all(b"v6").unwrap();
    u.push(SockOp::Recv { flow: f, max: 64 });
    assert_eq!(received(&mut u, f), Ok(b"v6".to_vec()));
}

#[test]
fn udp_echo_round_trip() {
    let (addr, _echo) = udp_echo();
    let mut u = Epoll::new().unwrap();
    let f = fid(6);
    open(&mut u, f, Proto::Udp, addr);
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
fn udp_to_closed_port_recv_is_econnrefused_and_receiving_goes_on() {
    let addr = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let mut u = Epoll::new().unwrap();
    let f = fid(7);
    open(&mut u, f, Proto::Udp, addr);
    connected(&mut u, f);
    u.push(SockOp::Recv { flow: f, max: 2048 });
    u.push(SockOp::Send {
        flow: f,
        data: b"anyone?".to_vec(),
    });
    assert_eq!(
        host_events(&mut u, 2),
        [
            HostEvent::Sent {
                flow: f,
                result: Ok(7)
            },
            HostEvent::Received {
                flow: f,
                result: Err(libc::ECONNREFUSED)
            }
        ]
    );
    // The port opens now: the same flow still receives.
    let s = UdpSocket::bind(addr).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    u.push(SockOp::Send {
        flow: f,
        data: b"now?".to_vec(),
    });
    assert_eq!(sent(&mut u, f), 4);
    let mut buf = [0u8; 16];
    let (n, from) = s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"now?");
    s.send_to(b"yes", from).unwrap();
    assert_eq!(received(&mut u, f), Ok(b"yes".to_vec()));
}

/// More datagrams than one `recvmmsg` batch (and one turn's rounds), in
/// order, from one `Recv`; sends in bursts go out by `sendmmsg`.
#[test]
fn one_recv_receives_every_datagram_of_a_udp_flow_in_order() {
    let (addr, _echo) = udp_echo();
    let mut u = Epoll::new().unwrap();
    let f = fid(0);
    open(&mut u, f, Proto::Udp, addr);
    connected(&mut u, f);
    u.push(SockOp::Recv {
        flow: f,
        max: 65535,
    });
    let sizes: Vec<usize> = (0..300).map(|i| [1, 1400, 9000, 65507][i % 4]).collect();
    let mut got = Vec::new();
    let mut sent = 0;
    let start = Instant::now();
    while got.len() < sizes.len() && start.elapsed() < LONG {
        while sent < sizes.len() && sent < got.len() + 8 {
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

/// A backlog of datagrams larger than one turn is read on the next turns
/// without a new readiness edge (edge-triggered: nothing else would wake).
#[test]
fn a_burst_beyond_one_turn_is_read_without_a_new_edge() {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut u = Epoll::new().unwrap();
    let f = fid(1);
    open(&mut u, f, Proto::Udp, peer.local_addr().unwrap());
    connected(&mut u, f);
    // The flow's local address, for the burst.
    u.push(SockOp::Send {
        flow: f,
        data: vec![0],
    });
    assert_eq!(sent(&mut u, f), 1);
    let mut buf = [0u8; 4];
    let (_, local) = peer.recv_from(&mut buf).unwrap();
    let burst = DGRAM_ROUNDS * sys::MMSG_BATCH * 2;
    for i in 0..burst {
        peer.send_to(&u32::try_from(i).unwrap().to_be_bytes(), local)
            .unwrap();
    }
    u.push(SockOp::Recv { flow: f, max: 2048 });
    let evs = host_events(&mut u, burst);
    for (i, ev) in evs.iter().enumerate() {
        let HostEvent::Received { result: Ok(d), .. } = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(d[..], u32::try_from(i).unwrap().to_be_bytes());
    }
}

#[test]
fn many_udp_flows_keep_order_per_flow() {
    let (addr, _echo) = udp_echo();
    let mut u = Epoll::new().unwrap();
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
    for &f in &flows {
        u.push(SockOp::Close {
            flow: f,
            reset: false,
        });
    }
    let evs = quiet_for(&mut u, Duration::from_millis(200));
    assert!(evs.is_empty(), "{evs:?}");
    assert_eq!(u.open_sockets(), 0);
}

#[test]
fn wake_via_eventfd() {
    let efd = eventfd();
    let raw = efd.as_raw_fd();
    let mut u = Epoll::new().unwrap();
    for round in 0..3 {
        u.arm_wake(raw);
        let waker = thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            let one = 1u64.to_ne_bytes();
            // SAFETY: `raw` stays open (the test joins before dropping
            // `efd`); `one` is 8 readable bytes.
            let n = unsafe { libc::write(raw, one.as_ptr().cast(), 8) };
            assert_eq!(n, 8);
        });
        let start = Instant::now();
        let mut wakes = 0;
        while wakes == 0 {
            assert!(start.elapsed() < LONG, "round {round}");
            u.submit_and_wait(1, Some(LONG)).unwrap();
            u.drain(&mut |c| match c {
                Completion::Wake => wakes += 1,
                other => panic!("unexpected {other:?}"),
            });
        }
        waker.join().unwrap();
    }
    // A kick while disarmed is remembered: arming completes at once.
    let one = 1u64.to_ne_bytes();
    // SAFETY: `raw` is open; `one` is 8 readable bytes.
    assert_eq!(unsafe { libc::write(raw, one.as_ptr().cast(), 8) }, 8);
    assert!(quiet_for(&mut u, Duration::from_millis(30)).is_empty());
    u.arm_wake(raw);
    let mut woke = false;
    until(&mut u, |c| {
        woke = matches!(c, Completion::Wake);
        woke
    });
    drop(u);
    drop(efd);
}

/// Timed waits end after their timeout, never before: with
/// `epoll_pwait2`'s nanoseconds and with `epoll_wait`'s milliseconds
/// (rounded up) where it is missing.
#[test]
fn timeout_returns_without_events() {
    let mut u = Epoll::new().unwrap();
    for (pwait2, t) in [
        (true, Duration::from_millis(80)),
        (true, Duration::from_micros(300)),
        (false, Duration::from_millis(80)),
        (false, Duration::from_micros(300)),
    ] {
        u.pwait2 = pwait2;
        let start = Instant::now();
        u.submit_and_wait(1, Some(t)).unwrap();
        let waited = start.elapsed();
        assert!(waited >= t, "returned after {waited:?}");
        assert!(waited < LONG);
        let mut got = Vec::new();
        u.drain(&mut |c| got.push(c));
        assert!(matches!(got[..], [Completion::Timeout]), "{got:?}");
    }
}

#[test]
fn frame_write_and_spare_buffer() {
    let (a, b) = seqpacket_pair();
    let mut u = Epoll::new().unwrap();
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

/// The TAP read path: a one-shot readable report on a fake TAP (a
/// socketpair), re-armed after reading dry, for each of several frames.
#[test]
fn poll_in_reports_a_fake_tap_readable_once_per_arm() {
    let (tap, guest) = seqpacket_pair();
    let mut u = Epoll::new().unwrap();
    assert!(
        u.setup_port_ring(16, 2048).is_err(),
        "no port ring on epoll"
    );
    u.push_poll_in(tap.as_raw_fd());
    assert!(quiet_for(&mut u, Duration::from_millis(50)).is_empty());
    for i in 0..3u8 {
        // SAFETY: `guest` is open; the frame is 64 readable bytes.
        let n = unsafe { libc::send(guest.as_raw_fd(), [i; 64].as_ptr().cast(), 64, 0) };
        assert_eq!(n, 64);
        let mut readable = 0;
        until(&mut u, |c| {
            if let Completion::Readable { result } = c {
                assert!(result.unwrap() & ev(libc::EPOLLIN) != 0);
                readable += 1;
            }
            readable > 0
        });
        // Read dry, as the worker does, then arm again.
        let mut buf = [0u8; 128];
        loop {
            // SAFETY: `tap` is open; `buf` has 128 writable bytes.
            let n = unsafe {
                libc::recv(
                    tap.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                break;
            }
            assert_eq!(buf[0], i);
        }
        assert!(
            quiet_for(&mut u, Duration::from_millis(30)).is_empty(),
            "one report per arm"
        );
        u.push_poll_in(tap.as_raw_fd());
    }
}

#[test]
fn drop_with_ops_waiting_resets_the_peers() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let efd = eventfd();
    let mut u = Epoll::new().unwrap();
    let f = fid(0);
    open(&mut u, f, Proto::Tcp, addr);
    connected(&mut u, f);
    let (mut peer, _) = l.accept().unwrap();
    peer.set_read_timeout(Some(LONG)).unwrap();
    u.push(SockOp::Recv { flow: f, max: 64 });
    u.arm_wake(efd.as_raw_fd());
    u.submit_and_wait(0, None).unwrap();
    drop(u);
    let err = peer.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
}

#[test]
fn published_tcp_accept_attach_and_remove() {
    let mut u = Epoll::new().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
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
    u.remove_listener(7);
    assert_eq!(
        std::net::TcpStream::connect(addr).unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused
    );
    assert!(u.listener_ids().is_empty());
    u.push(SockOp::Close { flow, reset: false });
    let _ = quiet_for(&mut u, Duration::from_millis(50));
    assert_eq!(client.read(&mut buf).unwrap(), 0, "EOF after Close");
}

#[test]
fn published_udp_datagrams_and_replies_through_the_shared_socket() {
    let mut u = Epoll::new().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    u.add_listener(9, Proto::Udp, OwnedFd::from(sock));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
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
    assert_eq!((&buf[..n], from), (&b"reply"[..], addr));
    u.push(SockOp::Close { flow, reset: false });
    client.send_to(b"again", addr).unwrap();
    let mut again = false;
    until(&mut u, |c| {
        again |= matches!(c, Completion::Datagram { ref data, .. } if data == b"again");
        again
    });
    // Removed: the flows of the port fail their sends.
    let flow = fid(5);
    u.attach_udp(flow, 9, client.local_addr().unwrap());
    u.remove_listener(9);
    u.push(SockOp::Send {
        flow,
        data: b"late".to_vec(),
    });
    assert_eq!(
        one(&mut u),
        HostEvent::Sent {
            flow,
            result: Err(libc::EBADF)
        }
    );
}
