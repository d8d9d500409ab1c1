//! Tests of the `-T/-U auto` port choice, the binder's wire format and a
//! binder served on a thread.

use super::*;

fn set(proto: PubProto, exclude: Vec<(u16, u16)>) -> PortSet {
    PortSet {
        proto,
        addr: None,
        exclude,
    }
}

fn tcp(v: &[(&str, u16)]) -> Tables {
    Tables {
        tcp: v.iter().map(|&(a, p)| (a.parse().unwrap(), p)).collect(),
        udp: BTreeSet::new(),
    }
}

fn w(v6: bool, port: u16) -> Want {
    Want {
        proto: PubProto::Tcp,
        v6,
        port,
    }
}

#[test]
fn requests_and_replies_round_trip_and_bad_ones_are_errors() {
    for want in [
        w(false, 1),
        w(true, 65535),
        Want {
            proto: PubProto::Udp,
            v6: false,
            port: 5353,
        },
    ] {
        assert_eq!(decode_request(&encode_request(want)), Ok(want));
    }
    assert_eq!(encode_request(w(true, 0x1F90)), [b'T', 6, 0x1F, 0x90]);
    assert_eq!(decode_request(&[]), Err(ProtoError::Length(0)));
    assert_eq!(
        decode_request(&[b'T', 4, 0, 1, 0]),
        Err(ProtoError::Length(5))
    );
    assert_eq!(
        decode_request(&[b'X', 4, 0, 1]),
        Err(ProtoError::Proto(b'X'))
    );
    assert_eq!(decode_request(&[b'U', 5, 0, 1]), Err(ProtoError::Family(5)));
    assert_eq!(decode_request(&[b'U', 6, 0, 0]), Err(ProtoError::PortZero));

    let e = decode_reply(&encode_reply(libc::EADDRINUSE), None).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE));
    let e = decode_reply(&encode_reply(0), None).unwrap_err();
    assert_eq!(
        e.kind(),
        io::ErrorKind::InvalidData,
        "success without a socket"
    );
    let e = decode_reply(&encode_reply(-3), None).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    let e = decode_reply(&[0, 0], None).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    let fd = OwnedFd::from(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    assert!(decode_reply(&encode_reply(0), Some(fd)).is_ok());
}

#[test]
fn which_host_sockets_the_loopback_reaches() {
    let r = |a: &str, v6| reachable(a.parse().unwrap(), v6);
    assert!(r("0.0.0.0", false) && r("127.0.0.1", false));
    assert!(!r("127.0.0.2", false) && !r("192.168.1.5", false) && !r("0.0.0.0", true));
    assert!(r("::", false) && r("::", true) && r("::1", true));
    assert!(r("::ffff:127.0.0.1", false) && !r("::ffff:127.0.0.1", true));
    assert!(!r("::1", false) && !r("fd00::1", true));
}

#[test]
fn host_ports_minus_excluded_ephemeral_published_and_the_namespaces() {
    let host = tcp(&[
        ("127.0.0.1", 8000), // v4 only
        ("::", 8001),        // both
        ("::1", 8002),       // v6 only
        ("192.168.1.5", 8003),
        ("0.0.0.0", 22),    // excluded
        ("0.0.0.0", 40000), // ephemeral
        ("0.0.0.0", 8080),  // uipd publishes it (-t)
        ("0.0.0.0", 9000),  // the namespace serves it
        ("0.0.0.0", 9001),  // held already
    ]);
    let ns = tcp(&[("10.0.2.100", 9000), ("127.0.0.1", 9001)]);
    let held: HashSet<Want> = [w(false, 9001)].into();
    let sets = [set(PubProto::Tcp, vec![(22, 22)])];
    let got = wanted(&sets, &host, &ns, &held, (32768, 60999), |p, port| {
        p == PubProto::Tcp && port == 8080
    });
    let mut got: Vec<Want> = got.into_iter().collect();
    got.sort();
    assert_eq!(
        got,
        [
            w(false, 8000),
            w(false, 8001),
            w(false, 9001),
            w(true, 8001),
            w(true, 8002)
        ]
    );
    // Without a UDP set nothing is forwarded for UDP; a held port whose
    // host socket is gone is no longer wanted.
    let mut host_udp = Tables::default();
    host_udp.udp.insert(("0.0.0.0".parse().unwrap(), 5300));
    assert!(wanted(&sets, &host_udp, &ns, &held, (32768, 60999), |_, _| false).is_empty());
    let udp = [set(PubProto::Udp, vec![])];
    let got = wanted(
        &udp,
        &host_udp,
        &Tables::default(),
        &held,
        (1, 0),
        |_, _| false,
    );
    assert_eq!(
        got,
        [Want {
            proto: PubProto::Udp,
            v6: false,
            port: 5300
        }]
        .into()
    );
    // The namespace's own v4 listener on a port does not keep the v6
    // one away when both are ours... but a foreign one does.
    let held: HashSet<Want> = [w(false, 8001)].into();
    let ns = tcp(&[("127.0.0.1", 8001)]);
    let got = wanted(&sets, &tcp(&[("::", 8001)]), &ns, &held, (1, 0), |_, _| {
        false
    });
    assert_eq!(got, [w(false, 8001), w(true, 8001)].into());
    let got = wanted(
        &sets,
        &tcp(&[("::", 8001)]),
        &ns,
        &HashSet::new(),
        (1, 0),
        |_, _| false,
    );
    assert!(
        got.is_empty(),
        "127.0.0.1:8001 in the namespace is not ours"
    );
}

#[test]
fn a_served_binder_sends_listeners_and_errors() {
    let (ours, theirs) = socketpair().unwrap();
    let server = std::thread::spawn(move || serve(&theirs));
    let binder = Binder { sock: ours, pid: 0 };
    // A free port: bound, noted, closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fd = binder.bind(w(false, port)).unwrap();
    let l = std::net::TcpListener::from(fd);
    assert_eq!(l.local_addr().unwrap(), w(false, port).listen());
    let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(l.accept().is_ok());
    drop(c);
    // The same port again: the binder's errno.
    let e = binder.bind(w(false, port)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE));
    let u = Want {
        proto: PubProto::Udp,
        v6: false,
        port,
    };
    let s = std::net::UdpSocket::from(binder.bind(u).unwrap());
    assert_eq!(s.local_addr().unwrap(), u.listen());
    // A malformed request: EINVAL, and the binder goes on.
    send_msg(binder.sock.as_fd(), b"zz", None).unwrap();
    let mut buf = [0u8; 8];
    let (n, fd) = recv_msg(binder.sock.as_fd(), &mut buf).unwrap();
    let e = decode_reply(&buf[..n], fd).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    drop(binder);
    assert!(server.join().unwrap().is_ok(), "end of file ends it");
}
