//! Tests of the DHCP server: each message type, odd parameters, and
//! malformed or truncated requests.

use super::*;

const XID: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];
const MAC: [u8; 6] = [0x00, 0x15, 0x15, 0x15, 0x15, 0x15];
const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 33, 1);
const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 33, 15);

fn params() -> Params {
    Params {
        server: GW,
        offered: GUEST,
        prefix_len: 24,
        router: GW,
        dns: vec![GW, Ipv4Addr::new(10, 0, 0, 2)],
        lease_secs: 86400,
        mtu: 1500,
    }
}

/// A client message as udhcpc builds it, ending with END and no padding
/// (so every truncation of it is malformed).
fn request(msg_type: u8, ciaddr: Ipv4Addr, flags: u16, opts: &[(u8, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; 240];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[3] = 0;
    b[4..8].copy_from_slice(&XID);
    b[8..10].copy_from_slice(&3u16.to_be_bytes());
    b[10..12].copy_from_slice(&flags.to_be_bytes());
    b[12..16].copy_from_slice(&ciaddr.octets());
    b[24..28].copy_from_slice(&[0, 0, 0, 0]);
    b[28..34].copy_from_slice(&MAC);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    b.extend_from_slice(&[53, 1, msg_type]);
    b.push(0); // a pad between options
    for (code, data) in opts {
        b.push(*code);
        b.push(u8::try_from(data.len()).unwrap());
        b.extend_from_slice(data);
    }
    b.push(255);
    b
}

/// Parameter request list as systemd-networkd sends it.
const PRL: (u8, &[u8]) = (55, &[1, 3, 6, 12, 15, 26, 28, 42, 51, 54, 58, 59, 119, 121]);

struct Parsed {
    op: u8,
    htype: u8,
    hlen: u8,
    xid: [u8; 4],
    flags: u16,
    ciaddr: Ipv4Addr,
    yiaddr: Ipv4Addr,
    siaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    chaddr: [u8; 16],
    opts: Vec<(u8, Vec<u8>)>,
}

impl Parsed {
    fn opt(&self, code: u8) -> Option<&[u8]> {
        self.opts
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| &d[..])
    }
    fn codes(&self) -> Vec<u8> {
        self.opts.iter().map(|(c, _)| *c).collect()
    }
}

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::from(<[u8; 4]>::try_from(b).unwrap())
}

/// An independent reader of the reply, strict about its format.
fn parse(b: &[u8]) -> Parsed {
    assert!(b.len() >= 300, "reply is {} bytes", b.len());
    assert!(b.len() <= 548, "reply is {} bytes", b.len());
    assert_eq!(&b[236..240], &[99, 130, 83, 99]);
    assert!(b[44..236].iter().all(|&x| x == 0), "sname/file not empty");
    assert_eq!(b[3], 0, "hops");
    assert_eq!(&b[8..10], &[0, 0], "secs");
    let mut opts = Vec::new();
    let mut i = 240;
    loop {
        match b[i] {
            0 => i += 1,
            255 => break,
            code => {
                let len = usize::from(b[i + 1]);
                let data = b[i + 2..i + 2 + len].to_vec();
                assert!(opts.iter().all(|(c, _)| *c != code), "option {code} twice");
                opts.push((code, data));
                i += 2 + len;
            }
        }
    }
    assert!(b[i + 1..].iter().all(|&x| x == 0), "bytes after END");
    Parsed {
        op: b[0],
        htype: b[1],
        hlen: b[2],
        xid: b[4..8].try_into().unwrap(),
        flags: u16::from_be_bytes([b[10], b[11]]),
        ciaddr: ip(&b[12..16]),
        yiaddr: ip(&b[16..20]),
        siaddr: ip(&b[20..24]),
        giaddr: ip(&b[24..28]),
        chaddr: b[28..44].try_into().unwrap(),
        opts,
    }
}

fn check_header(p: &Parsed, flags: u16) {
    assert_eq!((p.op, p.htype, p.hlen), (2, 1, 6));
    assert_eq!(p.xid, XID);
    assert_eq!(p.flags, flags);
    assert_eq!(p.siaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(p.giaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(&p.chaddr[..6], &MAC);
    assert_eq!(&p.chaddr[6..], &[0; 10]);
}

fn check_config(p: &Parsed) {
    assert_eq!(p.opt(54), Some(&[192, 168, 33, 1][..]));
    assert_eq!(p.opt(1), Some(&[255, 255, 255, 0][..]));
    assert_eq!(p.opt(3), Some(&[192, 168, 33, 1][..]));
    assert_eq!(p.opt(6), Some(&[192, 168, 33, 1, 10, 0, 0, 2][..]));
    assert_eq!(p.opt(26), Some(&[0x05, 0xdc][..]));
    assert_eq!(p.opt(28), Some(&[192, 168, 33, 255][..]));
}

fn check_lease(p: &Parsed) {
    assert_eq!(p.opt(51), Some(&86400u32.to_be_bytes()[..]));
    assert_eq!(p.opt(58), Some(&43200u32.to_be_bytes()[..]));
    assert_eq!(p.opt(59), Some(&75600u32.to_be_bytes()[..]));
}

#[test]
fn discover_offer() {
    let req = request(1, Ipv4Addr::UNSPECIFIED, 0, &[PRL, (57, &[2, 64])]);
    let reply = handle(&params(), &req).unwrap();
    assert!(reply.broadcast);
    assert_eq!(reply.dst, Ipv4Addr::BROADCAST);
    assert_eq!(reply.client_mac, EthernetAddress(MAC));
    let p = parse(&reply.payload);
    check_header(&p, 0);
    assert_eq!(p.ciaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(p.yiaddr, GUEST);
    assert_eq!(p.opt(53), Some(&[2][..]));
    check_config(&p);
    check_lease(&p);
    let mut codes = p.codes();
    codes.sort_unstable();
    assert_eq!(codes, [1, 3, 6, 26, 28, 51, 53, 54, 58, 59]);
    // Message type first, as some clients expect.
    assert_eq!(&reply.payload[240..243], &[53, 1, 2]);
}

#[test]
fn discover_broadcast_flag_and_giaddr_echoed() {
    let mut req = request(1, Ipv4Addr::UNSPECIFIED, 0x8000, &[]);
    req[24..28].copy_from_slice(&[10, 1, 2, 3]);
    let reply = handle(&params(), &req).unwrap();
    assert!(reply.broadcast);
    let p = parse(&reply.payload);
    assert_eq!(p.flags, 0x8000);
    assert_eq!(p.giaddr, Ipv4Addr::new(10, 1, 2, 3));
}

#[test]
fn request_selecting_ack() {
    let req = request(
        3,
        Ipv4Addr::UNSPECIFIED,
        0,
        &[(50, &GUEST.octets()), (54, &GW.octets()), PRL],
    );
    let reply = handle(&params(), &req).unwrap();
    assert!(reply.broadcast);
    let p = parse(&reply.payload);
    check_header(&p, 0);
    assert_eq!(p.opt(53), Some(&[5][..]));
    assert_eq!(p.yiaddr, GUEST);
    assert_eq!(p.ciaddr, Ipv4Addr::UNSPECIFIED);
    check_config(&p);
    check_lease(&p);
}

#[test]
fn request_init_reboot_ack() {
    // No server id, option 50 only.
    let req = request(3, Ipv4Addr::UNSPECIFIED, 0, &[(50, &GUEST.octets())]);
    let p = parse(&handle(&params(), &req).unwrap().payload);
    assert_eq!(p.opt(53), Some(&[5][..]));
    assert_eq!(p.yiaddr, GUEST);
}

#[test]
fn request_renewing_unicast_ack() {
    let req = request(3, GUEST, 0, &[]);
    let reply = handle(&params(), &req).unwrap();
    assert!(!reply.broadcast);
    assert_eq!(reply.dst, GUEST);
    let p = parse(&reply.payload);
    assert_eq!(p.opt(53), Some(&[5][..]));
    assert_eq!(p.ciaddr, GUEST);
    assert_eq!(p.yiaddr, GUEST);
    check_lease(&p);
}

#[test]
fn request_renewing_with_broadcast_flag() {
    let reply = handle(&params(), &request(3, GUEST, 0x8000, &[])).unwrap();
    assert!(reply.broadcast);
    assert_eq!(reply.dst, Ipv4Addr::BROADCAST);
}

#[test]
fn request_other_address_nak() {
    let other = Ipv4Addr::new(192, 168, 33, 99);
    for req in [
        request(
            3,
            Ipv4Addr::UNSPECIFIED,
            0,
            &[(50, &other.octets()), (54, &GW.octets())],
        ),
        request(3, Ipv4Addr::UNSPECIFIED, 0, &[(50, &other.octets())]),
        request(3, other, 0, &[]),
        request(3, Ipv4Addr::UNSPECIFIED, 0, &[]),
    ] {
        let reply = handle(&params(), &req).unwrap();
        assert!(reply.broadcast);
        assert_eq!(reply.dst, Ipv4Addr::BROADCAST);
        let p = parse(&reply.payload);
        check_header(&p, 0);
        assert_eq!(p.opt(53), Some(&[6][..]));
        assert_eq!(p.opt(54), Some(&GW.octets()[..]));
        assert_eq!(p.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(p.ciaddr, Ipv4Addr::UNSPECIFIED);
        for code in [1, 3, 6, 26, 28, 51, 58, 59] {
            assert_eq!(p.opt(code), None, "option {code} in NAK");
        }
    }
}

#[test]
fn request_foreign_server_id_no_reply() {
    let req = request(
        3,
        Ipv4Addr::UNSPECIFIED,
        0,
        &[(50, &GUEST.octets()), (54, &[10, 0, 0, 1])],
    );
    assert_eq!(handle(&params(), &req), Err(Ignored::NoReply));
}

#[test]
fn release_decline_and_server_types_no_reply() {
    for t in [2, 4, 5, 6, 7, 9, 13, 200] {
        let req = request(t, GUEST, 0, &[(54, &GW.octets())]);
        assert_eq!(handle(&params(), &req), Err(Ignored::NoReply), "type {t}");
    }
    // Plain BOOTP: no option 53.
    let mut bootp = request(1, Ipv4Addr::UNSPECIFIED, 0, &[]);
    bootp.truncate(240);
    bootp.push(255);
    assert_eq!(handle(&params(), &bootp), Err(Ignored::NoReply));
}

#[test]
fn inform_ack() {
    let req = request(8, GUEST, 0, &[PRL]);
    let reply = handle(&params(), &req).unwrap();
    assert!(!reply.broadcast);
    assert_eq!(reply.dst, GUEST);
    let p = parse(&reply.payload);
    check_header(&p, 0);
    assert_eq!(p.opt(53), Some(&[5][..]));
    assert_eq!(p.ciaddr, GUEST);
    assert_eq!(p.yiaddr, Ipv4Addr::UNSPECIFIED);
    check_config(&p);
    for code in [51, 58, 59] {
        assert_eq!(p.opt(code), None, "lease option {code} in INFORM ACK");
    }
}

#[test]
fn client_id_echoed() {
    let id: &[u8] = &[1, 0, 0x15, 0x15, 0x15, 0x15, 0x15];
    let req = request(1, Ipv4Addr::UNSPECIFIED, 0, &[(61, id)]);
    let p = parse(&handle(&params(), &req).unwrap().payload);
    assert_eq!(p.opt(61), Some(id));
}

#[test]
fn reply_stays_within_548_bytes() {
    // The DNS list gives way to the rest; parse() checks the 548 bytes.
    let mut params = params();
    params.dns = (0..200).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
    for (id_len, servers) in [(0, 63), (200, 13), (255, 0)] {
        let id = vec![7u8; id_len];
        let opts: &[(u8, &[u8])] = if id_len == 0 { &[] } else { &[(61, &id)] };
        let req = request(1, Ipv4Addr::UNSPECIFIED, 0, opts);
        let p = parse(&handle(&params, &req).unwrap().payload);
        let dns = p.opt(6).unwrap_or(&[]);
        assert_eq!(dns.len(), 4 * servers, "client id of {id_len}");
        assert!(dns.iter().step_by(4).all(|&b| b == 10));
        assert_eq!(p.opt(1), Some(&[255, 255, 255, 0][..]));
    }
}

#[test]
fn odd_params() {
    let mut params = params();
    params.prefix_len = 40;
    params.mtu = 60;
    params.router = Ipv4Addr::UNSPECIFIED;
    params.dns.clear();
    params.lease_secs = u32::MAX;
    let p = parse(
        &handle(&params, &request(1, Ipv4Addr::UNSPECIFIED, 0, &[]))
            .unwrap()
            .payload,
    );
    assert_eq!(p.opt(1), Some(&[255, 255, 255, 255][..]));
    assert_eq!(p.opt(28), Some(&GUEST.octets()[..]));
    assert_eq!(p.opt(3), None);
    assert_eq!(p.opt(6), None);
    assert_eq!(p.opt(26), None);
    assert_eq!(p.opt(51), Some(&[0xff; 4][..]));
    assert_eq!(p.opt(58), Some(&[0xff; 4][..]));
    assert_eq!(p.opt(59), Some(&[0xff; 4][..]));
    params.prefix_len = 0;
    let p = parse(
        &handle(&params, &request(1, Ipv4Addr::UNSPECIFIED, 0, &[]))
            .unwrap()
            .payload,
    );
    assert_eq!(p.opt(1), Some(&[0, 0, 0, 0][..]));
    assert_eq!(p.opt(28), Some(&[255, 255, 255, 255][..]));
}

#[test]
fn trailing_padding_after_end_accepted() {
    let mut req = request(1, Ipv4Addr::UNSPECIFIED, 0, &[PRL]);
    req.resize(576, 0);
    assert!(handle(&params(), &req).is_ok());
}

#[test]
fn truncated_at_every_length_is_malformed() {
    let reqs = [
        request(1, Ipv4Addr::UNSPECIFIED, 0, &[PRL]),
        request(
            3,
            Ipv4Addr::UNSPECIFIED,
            0,
            &[(50, &GUEST.octets()), (54, &GW.octets())],
        ),
        request(8, GUEST, 0, &[(61, &[1, 2, 3])]),
    ];
    for req in reqs {
        assert!(handle(&params(), &req).is_ok());
        for len in 0..req.len() {
            assert_eq!(
                handle(&params(), &req[..len]),
                Err(Ignored::Malformed),
                "len {len}"
            );
        }
    }
}

#[test]
fn bad_header_is_malformed() {
    let good = request(1, Ipv4Addr::UNSPECIFIED, 0, &[]);
    for (at, value) in [(0, 2), (1, 6), (2, 16), (236, 0), (239, 98)] {
        let mut req = good.clone();
        req[at] = value;
        assert_eq!(
            handle(&params(), &req),
            Err(Ignored::Malformed),
            "byte {at}"
        );
    }
}

#[test]
fn bad_options_are_malformed() {
    let cases: [&[u8]; 7] = [
        &[53, 1, 1, 12, 200, b'x', 255],        // length past the end
        &[53, 1, 1, 12, 255],                   // length byte, no data
        &[53, 1, 1, 12],                        // no length byte, no END
        &[53, 1, 1, 0, 0, 0],                   // pads, no END
        &[53, 2, 1, 1, 255],                    // message type of length 2
        &[53, 1, 3, 50, 3, 1, 2, 3, 255],       // requested IP of length 3
        &[53, 1, 3, 54, 5, 1, 2, 3, 4, 5, 255], // server id of length 5
    ];
    for opts in cases {
        let mut req = request(1, Ipv4Addr::UNSPECIFIED, 0, &[]);
        req.truncate(240);
        req.extend_from_slice(opts);
        assert_eq!(handle(&params(), &req), Err(Ignored::Malformed), "{opts:?}");
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let template = request(
        3,
        Ipv4Addr::UNSPECIFIED,
        0,
        &[(50, &GUEST.octets()), (54, &GW.octets()), PRL],
    );
    let mut ok = 0;
    for i in 0..10_000 {
        let len = usize::try_from(next() % 600).unwrap();
        let mut buf: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        if i % 2 == 0 {
            // Valid header, random options: reach the option parser.
            let head = len.min(243);
            buf[..head].copy_from_slice(&template[..head]);
        }
        if let Ok(reply) = handle(&params(), &buf) {
            ok += 1;
            parse(&reply.payload);
        }
    }
    assert!(ok > 0, "no random input got through");
}
