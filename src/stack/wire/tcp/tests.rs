//! Tests of the TCP wire format: fixtures captured from Linux, parse/emit
//! round trips, option walking and partial checksums.

use std::net::Ipv4Addr;

use super::*;

const GUEST: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15));
const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34));

/// A Linux guest's SYN, 10.0.2.15:45678 -> 93.184.216.34:80, window 64240,
/// options MSS 1460, SACK-permitted, timestamps, NOP, window scale 7.
#[rustfmt::skip]
const SYN: [u8; 40] = [
    0xb2, 0x6e, 0x00, 0x50, 0x5e, 0x8a, 0x1b, 0x3c, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0,
    0x06, 0x73, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x9a, 0x0c, 0x3e, 0x21,
    0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
];

/// The stack's SYN-ACK: MSS 1460 | NOP NOP SACK-permitted | NOP WS 7.
#[rustfmt::skip]
const SYN_ACK: [u8; 32] = [
    0x00, 0x50, 0xb2, 0x6e, 0x0b, 0xad, 0xca, 0xfe, 0x5e, 0x8a, 0x1b, 0x3d, 0x80, 0x12, 0xff, 0xff,
    0x29, 0xe6, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x01, 0x01, 0x04, 0x02, 0x01, 0x03, 0x03, 0x07,
];

/// The guest's first data segment: ACK|PSH, an HTTP request.
#[rustfmt::skip]
const ACK_DATA: [u8; 57] = [
    0xb2, 0x6e, 0x00, 0x50, 0x5e, 0x8a, 0x1b, 0x3d, 0x0b, 0xad, 0xca, 0xff, 0x50, 0x18, 0x01, 0xf6,
    0x1f, 0xf0, 0x00, 0x00, 0x47, 0x45, 0x54, 0x20, 0x2f, 0x20, 0x48, 0x54, 0x54, 0x50, 0x2f, 0x31,
    0x2e, 0x31, 0x0d, 0x0a, 0x48, 0x6f, 0x73, 0x74, 0x3a, 0x20, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c,
    0x65, 0x2e, 0x63, 0x6f, 0x6d, 0x0d, 0x0a, 0x0d, 0x0a,
];

const HTTP_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

const SYN_FLAGS: Flags = Flags {
    syn: true,
    fin: false,
    rst: false,
    psh: false,
};

fn syn_repr() -> Repr<'static> {
    Repr {
        src_port: 45678,
        dst_port: 80,
        flags: SYN_FLAGS,
        seq_number: SeqNumber(0x5e8a_1b3c),
        ack_number: None,
        window_len: 64240,
        max_seg_size: Some(1460),
        window_scale: Some(7),
        sack_permitted: true,
        payload: &[],
    }
}

fn syn_ack_repr() -> Repr<'static> {
    Repr {
        src_port: 80,
        dst_port: 45678,
        flags: SYN_FLAGS,
        seq_number: SeqNumber(0x0bad_cafe),
        ack_number: Some(SeqNumber(0x5e8a_1b3d)),
        window_len: 65535,
        max_seg_size: Some(1460),
        window_scale: Some(7),
        sack_permitted: true,
        payload: &[],
    }
}

fn data_repr() -> Repr<'static> {
    Repr {
        src_port: 45678,
        dst_port: 80,
        flags: Flags {
            psh: true,
            ..Flags::default()
        },
        seq_number: SeqNumber(0x5e8a_1b3d),
        ack_number: Some(SeqNumber(0x0bad_caff)),
        window_len: 502,
        max_seg_size: None,
        window_scale: None,
        sack_permitted: false,
        payload: HTTP_GET,
    }
}

/// A SYN from the guest carrying `opts` (padded with EOL), checksum filled.
fn syn_with_options(opts: &[u8]) -> Vec<u8> {
    let hlen = 20 + opts.len().div_ceil(4) * 4;
    let mut b = vec![0u8; hlen];
    b[..20].copy_from_slice(&SYN[..20]);
    b[20..20 + opts.len()].copy_from_slice(opts);
    let mut p = Packet::new_unchecked(&mut b[..]);
    p.set_header_len(hlen);
    p.fill_checksum(GUEST, SERVER);
    b
}

#[test]
fn deconstruct() {
    let p = Packet::new_checked(&SYN[..]).unwrap();
    assert_eq!(p.src_port(), 45678);
    assert_eq!(p.dst_port(), 80);
    assert_eq!(p.seq_number(), SeqNumber(0x5e8a_1b3c));
    assert_eq!(p.ack_number(), SeqNumber(0));
    assert_eq!(p.header_len(), 40);
    assert!(!p.ack());
    assert_eq!(p.flags(), SYN_FLAGS);
    assert_eq!(p.window_len(), 64240);
    assert_eq!(p.checksum(), 0x0673);
    assert_eq!(p.urgent_at(), 0);
    assert_eq!(p.options(), &SYN[20..]);
    assert!(p.payload().is_empty());
    assert!(p.verify_checksum(GUEST, SERVER));
    assert!(!p.verify_checksum(SERVER, Ipv4Addr::new(10, 0, 2, 16).into()));

    let p = Packet::new_checked(&ACK_DATA[..]).unwrap();
    assert!(p.ack());
    assert!(p.flags().psh && !p.flags().syn);
    assert_eq!(p.payload(), HTTP_GET);
}

#[test]
fn construct() {
    let mut buf = [0xa5u8; 57];
    let mut p = Packet::new_unchecked(&mut buf[..]);
    p.set_src_port(45678);
    p.set_dst_port(80);
    p.set_seq_number(SeqNumber(0x5e8a_1b3d));
    p.set_ack_number(SeqNumber(0x0bad_caff));
    p.set_header_len(20);
    p.set_flags(
        Flags {
            psh: true,
            ..Flags::default()
        },
        true,
    );
    p.set_window_len(502);
    p.set_urgent_at(0);
    p.payload_mut().copy_from_slice(HTTP_GET);
    p.fill_checksum(GUEST, SERVER);
    assert_eq!(buf, ACK_DATA);
}

#[test]
fn parse() {
    let p = Packet::new_checked(&SYN[..]).unwrap();
    assert_eq!(Repr::parse(&p, GUEST, SERVER, true), Ok(syn_repr()));
    let p = Packet::new_checked(&SYN_ACK[..]).unwrap();
    assert_eq!(Repr::parse(&p, SERVER, GUEST, true), Ok(syn_ack_repr()));
    let p = Packet::new_checked(&ACK_DATA[..]).unwrap();
    let r = Repr::parse(&p, GUEST, SERVER, true).unwrap();
    assert_eq!(r, data_repr());
    assert_eq!(r.segment_len(), HTTP_GET.len());
    assert_eq!(syn_repr().segment_len(), 1);
}

#[test]
fn emit() {
    for (repr, bytes, src, dst) in [
        (syn_ack_repr(), &SYN_ACK[..], SERVER, GUEST),
        (data_repr(), &ACK_DATA[..], GUEST, SERVER),
    ] {
        assert_eq!(repr.buffer_len(), bytes.len());
        let mut buf = vec![0xa5u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]), src, dst);
        assert_eq!(buf, bytes);
    }
}

#[test]
fn emit_parse_round_trip_all_option_sets() {
    for bits in 0..8u8 {
        let repr = Repr {
            max_seg_size: (bits & 1 != 0).then_some(536),
            sack_permitted: bits & 2 != 0,
            window_scale: (bits & 4 != 0).then_some(14),
            flags: Flags {
                fin: true,
                ..Flags::default()
            },
            ..data_repr()
        };
        assert_eq!(repr.header_len(), 20 + 4 * bits.count_ones() as usize);
        let mut buf = vec![0xa5u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]), GUEST, SERVER);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.urgent_at(), 0);
        assert_eq!(Repr::parse(&p, GUEST, SERVER, true), Ok(repr));
    }
}

#[test]
fn window_scale_clamped() {
    let b = syn_with_options(&[3, 3, 15]);
    let r = Repr::parse(&Packet::new_checked(&b[..]).unwrap(), GUEST, SERVER, true).unwrap();
    assert_eq!(r.window_scale, Some(14));
    // Emitting a larger shift also clamps.
    let repr = Repr {
        window_scale: Some(200),
        ..syn_repr()
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]), GUEST, SERVER);
    let r = Repr::parse(&Packet::new_checked(&buf[..]).unwrap(), GUEST, SERVER, true).unwrap();
    assert_eq!(r.window_scale, Some(14));
}

#[test]
fn options_walk() {
    let parse = |opts: &[u8]| {
        let b = syn_with_options(opts);
        Repr::parse(&Packet::new_checked(&b[..]).unwrap(), GUEST, SERVER, true)
            .map(|r| (r.max_seg_size, r.window_scale, r.sack_permitted))
    };
    // Unknown kinds (TFO cookie, SACK block) and timestamps are skipped.
    assert_eq!(
        parse(&[
            34, 4, 1, 2, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 2, 4, 2, 0
        ]),
        Ok((Some(512), None, false))
    );
    // Anything after EOL is ignored, even garbage.
    assert_eq!(parse(&[4, 2, 0, 2, 99, 1]), Ok((None, None, true)));
    // Only NOPs.
    assert_eq!(parse(&[1, 1, 1, 1]), Ok((None, None, false)));
    // Length below 2, past the end, or missing.
    assert_eq!(parse(&[1, 1, 30, 0]), Err(Error::Malformed));
    assert_eq!(parse(&[1, 1, 30, 1]), Err(Error::Malformed));
    assert_eq!(parse(&[1, 1, 30, 3]), Err(Error::Malformed));
    assert_eq!(parse(&[1, 1, 1, 30]), Err(Error::Malformed));
    assert_eq!(parse(&[8, 10, 0, 0, 0, 0, 0, 0]), Err(Error::Malformed));
    // Known kinds with the wrong length.
    assert_eq!(parse(&[2, 3, 5, 1]), Err(Error::Malformed));
    assert_eq!(parse(&[2, 2, 1, 1]), Err(Error::Malformed));
    assert_eq!(parse(&[3, 4, 7, 0]), Err(Error::Malformed));
    assert_eq!(parse(&[4, 3, 0, 0]), Err(Error::Malformed));
}

#[test]
fn bad_checksum() {
    let mut b = ACK_DATA;
    b[30] ^= 0x01;
    let p = Packet::new_checked(&b[..]).unwrap();
    assert!(!p.verify_checksum(GUEST, SERVER));
    assert_eq!(Repr::parse(&p, GUEST, SERVER, true), Err(Error::Checksum));
    assert!(Repr::parse(&p, GUEST, SERVER, false).is_ok());
}

#[test]
fn truncated() {
    for len in 0..SYN.len() {
        assert_eq!(
            Packet::new_checked(&SYN[..len]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&SYN[..len]), GUEST, SERVER, false),
            Err(Error::Truncated)
        );
    }
    // No length field: a cut inside the payload still parses as a view,
    // and only the checksum catches it.
    for len in 20..ACK_DATA.len() {
        let p = Packet::new_checked(&ACK_DATA[..len]).unwrap();
        assert_eq!(p.payload().len(), len - 20);
        assert_eq!(
            Repr::parse(&p, GUEST, SERVER, true),
            Err(Error::Checksum),
            "len {len}"
        );
    }
}

#[test]
fn malformed() {
    let with = |f: &dyn Fn(&mut [u8])| {
        let mut b = ACK_DATA;
        f(&mut b);
        Packet::new_unchecked(&mut b[..]).fill_checksum(GUEST, SERVER);
        (
            Packet::new_checked(&b[..]).map(|_| ()),
            Repr::parse(&Packet::new_unchecked(&b[..]), GUEST, SERVER, true).map(|_| ()),
        )
    };
    // Data offset 4 and 0.
    assert_eq!(
        with(&|b| b[12] = 0x40),
        (Err(Error::Malformed), Err(Error::Malformed))
    );
    assert_eq!(
        with(&|b| b[12] = 0x00),
        (Err(Error::Malformed), Err(Error::Malformed))
    );
    // Data offset 15 (60 bytes) in a 57-byte segment.
    assert_eq!(
        with(&|b| b[12] = 0xf0),
        (Err(Error::Truncated), Err(Error::Truncated))
    );
    // Port 0.
    assert_eq!(with(&|b| b[0..2].fill(0)), (Ok(()), Err(Error::Malformed)));
    assert_eq!(with(&|b| b[2..4].fill(0)), (Ok(()), Err(Error::Malformed)));
    // SYN with FIN or RST.
    assert_eq!(with(&|b| b[13] = 0x03), (Ok(()), Err(Error::Malformed)));
    assert_eq!(with(&|b| b[13] = 0x06), (Ok(()), Err(Error::Malformed)));
    // FIN|RST|ACK and the unused URG/ECE/CWR bits are accepted.
    assert_eq!(with(&|b| b[13] = 0xf5), (Ok(()), Ok(())));
}

#[test]
fn ipv6_checksum() {
    let s: IpAddr = "fd00::15".parse().unwrap();
    let d: IpAddr = "2606:2800:220:1::1".parse().unwrap();
    let repr = data_repr();
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]), s, d);
    let p = Packet::new_checked(&buf[..]).unwrap();
    assert_eq!(Repr::parse(&p, s, d, true), Ok(repr));
    assert_eq!(Repr::parse(&p, GUEST, SERVER, true), Err(Error::Checksum));
}

#[test]
fn partial_checksum_completes_to_the_full_one() {
    let payload: Vec<u8> = (0..3001u32).map(|i| (i * 13).to_le_bytes()[0]).collect();
    let repr = Repr {
        src_port: 80,
        dst_port: 45678,
        flags: Flags {
            psh: true,
            ..Flags::default()
        },
        seq_number: SeqNumber(0x1234_5678),
        ack_number: Some(SeqNumber(99)),
        window_len: 1000,
        max_seg_size: None,
        window_scale: None,
        sack_permitted: false,
        payload: &payload,
    };
    let mut full = vec![0xa5u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut full[..]), SERVER, GUEST);
    let mut part = vec![0x5au8; repr.buffer_len()];
    repr.emit_partial(&mut Packet::new_unchecked(&mut part[..]), SERVER, GUEST);
    assert_eq!(full[..16], part[..16]);
    assert_eq!(full[18..], part[18..]);
    let field = Packet::new_unchecked(&part[..]).checksum();
    assert_eq!(field, partial_checksum(SERVER, GUEST, part.len()));
    // What Linux's skb_checksum_help does with CHECKSUM_PARTIAL: sum from
    // csum_start to the end (the field included), complement, store.
    let done = checksum::finish(checksum::sum(&part, 0));
    assert_eq!(done, Packet::new_unchecked(&full[..]).checksum());
}
