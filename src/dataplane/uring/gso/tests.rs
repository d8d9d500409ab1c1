//! Segmented UDP sends against real sockets on loopback.

use std::net::UdpSocket;
use std::time::Duration;

use super::super::tests::{connected, fid, host_events, open, sent};
use super::*;
use crate::stack::{HostEvent, Proto};

/// Datagram `i` of a test: `len` bytes that name it.
fn datagram(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j).to_le_bytes()[0]).collect()
}

/// Every datagram waiting on `s` (until it has been quiet for 200 ms).
fn receive_all(s: &UdpSocket) -> Vec<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    while let Ok(n) = s.recv(&mut buf) {
        got.push(buf[..n].to_vec());
        assert!(got.len() <= 1000, "runaway");
    }
    got
}

#[test]
fn datagrams_pushed_together_go_out_in_one_segmented_send_and_arrive_whole() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut u = Uring::new(64).unwrap();
    let f = fid(3);
    open(&mut u, f, Proto::Udp, server.local_addr().unwrap());
    connected(&mut u, f);
    // 10 of 1000 bytes and a shorter last one: one batch. Then 5 more of
    // 1000: a datagram after a short one starts a new batch.
    let mut sent_data: Vec<Vec<u8>> = (0..10).map(|i| datagram(i, 1000)).collect();
    sent_data.push(datagram(10, 300));
    sent_data.extend((11..16).map(|i| datagram(i, 1000)));
    for d in &sent_data {
        u.push(SockOp::Send {
            flow: f,
            data: d.clone(),
        });
    }
    let evs = host_events(&mut u, sent_data.len());
    let lens: Vec<usize> = evs
        .iter()
        .map(|ev| match ev {
            HostEvent::Sent {
                flow,
                result: Ok(n),
            } if *flow == f => *n,
            ev => panic!("expected Sent for {f:?}, got {ev:?}"),
        })
        .collect();
    let want: Vec<usize> = sent_data.iter().map(Vec::len).collect();
    assert_eq!(lens, want, "one Sent per datagram, in order");
    assert_eq!(
        receive_all(&server),
        sent_data,
        "the peer got each datagram"
    );
    assert_eq!(u.segmented(), (2, 16, 0));
}

#[test]
fn a_batch_stops_at_the_segment_and_byte_limits() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut u = Uring::new(64).unwrap();
    let f = fid(4);
    open(&mut u, f, Proto::Udp, server.local_addr().unwrap());
    connected(&mut u, f);
    // 100 datagrams of 100 bytes: 64 + 36. Then 3 of 30000 bytes: two fit
    // in 65507, the third starts a batch of its own (a plain send).
    let mut sent_data: Vec<Vec<u8>> = (0..100).map(|i| datagram(i, 100)).collect();
    sent_data.extend((100..103).map(|i| datagram(i, 30000)));
    for d in &sent_data {
        u.push(SockOp::Send {
            flow: f,
            data: d.clone(),
        });
    }
    let evs = host_events(&mut u, sent_data.len());
    assert!(
        evs.iter()
            .all(|ev| matches!(ev, HostEvent::Sent { result: Ok(_), .. })),
        "{evs:?}"
    );
    assert_eq!(receive_all(&server), sent_data);
    assert_eq!(u.segmented(), (3, 102, 0));
}

#[test]
fn a_refused_segmented_send_is_sent_datagram_by_datagram() {
    // Nobody listens: the first datagram's ICMP port unreachable comes
    // back (on loopback, within the send) as a pending ECONNREFUSED, which
    // fails the segmented send whole.
    let addr = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut u = Uring::new(64).unwrap();
    let f = fid(5);
    open(&mut u, f, Proto::Udp, addr);
    connected(&mut u, f);
    u.push(SockOp::Send {
        flow: f,
        data: datagram(0, 500),
    });
    assert_eq!(sent(&mut u, f), 500);
    std::thread::sleep(Duration::from_millis(20));
    for i in 1..=5 {
        u.push(SockOp::Send {
            flow: f,
            data: datagram(i, 500),
        });
    }
    let evs = host_events(&mut u, 5);
    assert_eq!(evs.len(), 5, "one Sent per datagram: {evs:?}");
    assert!(
        evs.iter().any(|ev| matches!(
            ev,
            HostEvent::Sent {
                result: Err(libc::ECONNREFUSED),
                ..
            }
        )),
        "the refusal reaches the stack: {evs:?}"
    );
    assert_eq!(u.segmented(), (1, 5, 1), "one segmented send, refused");
    // The flow no longer segments.
    for i in 6..=8 {
        u.push(SockOp::Send {
            flow: f,
            data: datagram(i, 500),
        });
    }
    assert_eq!(host_events(&mut u, 3).len(), 3);
    assert_eq!(u.segmented(), (1, 5, 1));
}

#[test]
fn a_close_right_after_a_batch_sends_it_first() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut u = Uring::new(64).unwrap();
    let f = fid(6);
    open(&mut u, f, Proto::Udp, server.local_addr().unwrap());
    connected(&mut u, f);
    let sent_data: Vec<Vec<u8>> = (0..4).map(|i| datagram(i, 700)).collect();
    for d in &sent_data {
        u.push(SockOp::Send {
            flow: f,
            data: d.clone(),
        });
    }
    u.push(SockOp::Close {
        flow: f,
        reset: false,
    });
    // The batch was started before the close: the kernel has it.
    u.submit_and_wait(0, None).unwrap();
    assert_eq!(u.segmented(), (1, 4, 0));
    let got = receive_all(&server);
    assert!(
        got.is_empty() || got == sent_data,
        "all or (cancelled) none, never part: {got:?}"
    );
}
