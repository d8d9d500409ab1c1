//! Scripted tests of the TCP translation ([`Conn`]): `send!`/`recv!`-style
//! exchanges with a fake clock and a recording emitter. One file (a little
//! over 800 lines) so the scripts share their harness.

use super::*;

const ISS: SeqNumber = SeqNumber(1000);
const GUEST_ISN: SeqNumber = SeqNumber(u32::MAX - 100);
const FLOW: FlowId = FlowId { idx: 3, gen_: 7 };

/// An owned copy of a segment the connection emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seg {
    flags: Flags,
    seq: SeqNumber,
    ack: Option<SeqNumber>,
    wnd: u16,
    mss: Option<u16>,
    ws: Option<u8>,
    data: Vec<u8>,
}

struct Harness {
    conn: Conn,
    now: Instant,
    segs: Vec<Seg>,
    ops: Vec<SockOp>,
}

const TEMPL: TcpRepr<'static> = TcpRepr {
    src_port: 40000,
    dst_port: 80,
    flags: Flags {
        syn: false,
        fin: false,
        rst: false,
        psh: false,
    },
    seq_number: SeqNumber(0),
    ack_number: None,
    window_len: 65535,
    max_seg_size: None,
    window_scale: None,
    sack_permitted: false,
    payload: &[],
};

impl Harness {
    fn new(wscale: Option<u8>, mss: u16) -> Harness {
        Harness::with_budget(wscale, mss, Arc::new(MemBudget::default()))
    }

    fn with_budget(wscale: Option<u8>, mss: u16, mem: Arc<MemBudget>) -> Harness {
        let syn = TcpRepr {
            flags: Flags {
                syn: true,
                ..Flags::default()
            },
            seq_number: GUEST_ISN,
            max_seg_size: Some(mss),
            window_scale: wscale,
            ..TEMPL
        };
        Harness {
            conn: Conn::new(FLOW, &syn, ISS, 65520, mem),
            now: Instant::ZERO,
            segs: Vec::new(),
            ops: Vec::new(),
        }
    }

    fn sink(segs: &mut Vec<Seg>) -> impl FnMut(&TcpRepr<'_>) + '_ {
        move |r: &TcpRepr<'_>| {
            segs.push(Seg {
                flags: r.flags,
                seq: r.seq_number,
                ack: r.ack_number,
                wnd: r.window_len,
                mss: r.max_seg_size,
                ws: r.window_scale,
                data: r.payload.to_vec(),
            })
        }
    }

    fn connected(&mut self, r: Result<(), Errno>) -> Verdict {
        let mut e = Self::sink(&mut self.segs);
        self.conn.on_connected(r, self.now, &mut e, &mut self.ops)
    }
    fn seg(&mut self, r: TcpRepr<'_>) -> Verdict {
        let mut e = Self::sink(&mut self.segs);
        self.conn.on_segment(&r, self.now, &mut e, &mut self.ops)
    }
    fn sent(&mut self, r: Result<usize, Errno>) -> Verdict {
        let mut e = Self::sink(&mut self.segs);
        self.conn.on_sent(r, self.now, &mut e, &mut self.ops)
    }
    fn recvd(&mut self, r: Result<Vec<u8>, Errno>) -> Verdict {
        let mut e = Self::sink(&mut self.segs);
        self.conn.on_received(r, self.now, &mut e, &mut self.ops)
    }
    fn timer(&mut self) -> Verdict {
        let mut e = Self::sink(&mut self.segs);
        self.conn.on_timer(self.now, &mut e, &mut self.ops)
    }
    fn flush(&mut self) {
        let mut e = Self::sink(&mut self.segs);
        self.conn.flush_ack(&mut e);
    }
    fn take_segs(&mut self) -> Vec<Seg> {
        std::mem::take(&mut self.segs)
    }
    fn take_ops(&mut self) -> Vec<SockOp> {
        std::mem::take(&mut self.ops)
    }

    /// Handshake to Established; returns the guest's next sequence number.
    fn establish(&mut self) -> SeqNumber {
        assert_eq!(self.connected(Ok(())), Verdict::Keep);
        let synack = self.take_segs();
        assert_eq!(synack.len(), 1);
        assert!(synack[0].flags.syn);
        assert_eq!(synack[0].ack, Some(GUEST_ISN + 1usize));
        assert_eq!(
            self.take_ops(),
            vec![SockOp::Recv {
                flow: FLOW,
                max: RECV_INIT
            }]
        );
        self.seg(TcpRepr {
            seq_number: GUEST_ISN + 1usize,
            ack_number: Some(ISS + 1usize),
            ..TEMPL
        });
        assert_eq!(self.conn.state(), State::Established);
        GUEST_ISN + 1usize
    }

    fn data(&mut self, seq: SeqNumber, payload: &[u8]) -> Verdict {
        self.seg(TcpRepr {
            seq_number: seq,
            ack_number: Some(ISS + 1usize),
            payload,
            ..TEMPL
        })
    }

    fn ack(&mut self, ack: SeqNumber, seq: SeqNumber, wnd: u16) -> Verdict {
        self.seg(TcpRepr {
            seq_number: seq,
            ack_number: Some(ack),
            window_len: wnd,
            ..TEMPL
        })
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 7 + i / 251) % 256).to_le_bytes()[0])
        .collect()
}

#[test]
fn syn_ack_waits_for_host_connect_and_carries_options() {
    let mut h = Harness::new(Some(9), 1460);
    assert!(h.take_segs().is_empty(), "nothing before the host answers");
    h.connected(Ok(()));
    let s = &h.take_segs()[0];
    assert_eq!(s.seq, ISS);
    assert_eq!(s.mss, Some(1460));
    assert_eq!(s.ws, Some(OUR_WSCALE));
    assert_eq!(h.conn.state(), State::SynAckSent);
}

#[test]
fn no_window_scale_unless_the_guest_offers_it() {
    let mut h = Harness::new(None, 1460);
    h.connected(Ok(()));
    assert_eq!(h.take_segs()[0].ws, None);
}

#[test]
fn refused_connect_becomes_rst_acking_the_syn() {
    let mut h = Harness::new(Some(7), 1460);
    assert_eq!(h.connected(Err(111)), Verdict::Remove);
    let s = h.take_segs();
    assert_eq!(s.len(), 1);
    assert!(s[0].flags.rst);
    assert_eq!(s[0].ack, Some(GUEST_ISN + 1usize));
    assert_eq!(
        h.take_ops(),
        vec![SockOp::Close {
            flow: FLOW,
            reset: false
        }]
    );
}

#[test]
fn bulk_guest_data_goes_out_in_whole_chunks_one_send_at_a_time_byte_exact() {
    let mut h = Harness::new(Some(7), 1460);
    let mut seq = h.establish();
    let data = pattern(1_500_000);
    let mut written = Vec::new();
    let mut in_flight: Option<Vec<u8>> = None;
    let mut sizes = Vec::new();
    for (i, chunk) in data.chunks(1460).enumerate() {
        assert_eq!(h.data(seq, chunk), Verdict::Keep);
        seq = seq + chunk.len();
        for op in h.take_ops() {
            if let SockOp::Send { data, .. } = op {
                assert!(in_flight.is_none(), "one Send at a time");
                assert!(data.len() <= SEND_CHUNK);
                sizes.push(data.len());
                in_flight = Some(data);
            }
        }
        // The host finishes a Send now and then; meanwhile segments
        // pile up into chunks.
        if i % 251 == 0 {
            if let Some(buf) = in_flight.take() {
                written.extend_from_slice(&buf);
                assert_eq!(h.sent(Ok(buf.len())), Verdict::Keep);
                for op in h.take_ops() {
                    if let SockOp::Send { data, .. } = op {
                        sizes.push(data.len());
                        in_flight = Some(data);
                    }
                }
            }
        }
    }
    for _ in 0..1000 {
        let Some(buf) = in_flight.take() else { break };
        written.extend_from_slice(&buf);
        h.sent(Ok(buf.len()));
        for op in h.take_ops() {
            if let SockOp::Send { data, .. } = op {
                sizes.push(data.len());
                in_flight = Some(data);
            }
        }
    }
    assert_eq!(written, data, "byte-exact, nothing lost or repeated");
    assert_eq!(h.conn.queued_to_host(), 0);
    // The first segment went out alone; later ones were batched into
    // full chunks.
    assert_eq!(sizes[0], 1460);
    assert!(sizes.contains(&SEND_CHUNK), "no full chunk: {sizes:?}");
    h.flush();
    let last = h.take_segs().pop().expect("an ACK");
    assert_eq!(last.ack, Some(seq), "everything acknowledged");
}

#[test]
fn a_send_the_socket_took_only_part_of_resets_the_connection() {
    // The I/O layer finishes short sends itself; a short count reaching
    // the stack means the socket failed, and the unsent bytes are gone
    // with the buffer: reset both sides rather than lose data quietly.
    let mut h = Harness::new(Some(7), 1460);
    let seq = h.establish();
    h.data(seq, &pattern(1000));
    let n = match h.take_ops().as_slice() {
        [SockOp::Send { data, .. }] => data.len(),
        ops => panic!("expected one Send, got {ops:?}"),
    };
    h.take_segs();
    assert_eq!(h.sent(Ok(n - 1)), Verdict::Remove);
    assert!(
        h.take_segs().iter().any(|s| s.flags.rst),
        "no RST to the guest"
    );
    assert_eq!(
        h.take_ops(),
        vec![SockOp::Close {
            flow: FLOW,
            reset: true
        }]
    );
}

#[test]
fn window_closes_when_the_queue_is_full_and_reopens_after_writes() {
    let mut h = Harness::new(Some(7), 1460);
    let mut seq = h.establish();
    let chunk = pattern(60_000);
    // Fill TO_HOST_CAP without the host taking anything.
    let mut sent_any = false;
    while h.conn.queued_to_host() < TO_HOST_CAP {
        h.data(seq, &chunk);
        seq = seq
            + chunk
                .len()
                .min(TO_HOST_CAP - (h.conn.queued_to_host().min(TO_HOST_CAP)) + chunk.len());
        sent_any |= h
            .take_ops()
            .iter()
            .any(|o| matches!(o, SockOp::Send { .. }));
        if h.conn.queued_to_host() >= TO_HOST_CAP {
            break;
        }
    }
    assert!(sent_any);
    h.flush();
    let s = h.take_segs().pop().unwrap();
    assert_eq!(s.wnd, 0, "zero window when the queue is full");
    // Data beyond the window is not accepted.
    let before = h.conn.queued_to_host();
    h.data(s.ack.unwrap(), &chunk);
    assert_eq!(h.conn.queued_to_host(), before);
    h.take_segs();
    // The host takes everything in flight: a window update follows.
    h.sent(Ok(60_000));
    h.flush();
    let upd = h.take_segs().pop().expect("window update");
    assert!(upd.wnd > 0);
}

#[test]
fn host_data_is_segmented_to_mss_and_window() {
    let mut h = Harness::new(Some(0), 1000);
    let gseq = h.establish();
    h.ack(ISS + 1usize, gseq, 2500);
    h.recvd(Ok(pattern(10_000)));
    let segs = h.take_segs();
    let lens: Vec<usize> = segs.iter().map(|s| s.data.len()).collect();
    assert_eq!(lens, vec![1000, 1000, 500], "MSS then window limit");
    assert_eq!(segs[0].seq, ISS + 1usize);
    // The guest ACKs and opens the window: the rest flows.
    h.ack(ISS + 2501usize, gseq, 60000);
    let segs = h.take_segs();
    let total: usize = segs.iter().map(|s| s.data.len()).sum();
    assert_eq!(total, 7500);
    assert!(segs.last().unwrap().flags.psh);
    assert!(
        h.take_ops()
            .iter()
            .any(|o| matches!(o, SockOp::Recv { .. })),
        "a new Recv once room exists"
    );
}

/// Host reads come in the thread's pool chunks (256 KiB). One that came
/// back less than half full hands its bytes to a buffer of their size and
/// goes back to the pool at once; a fuller one stays whole until the guest
/// ACKs it, then goes back. Either way the bytes reach the guest exact.
#[test]
fn part_full_pool_chunks_go_back_to_the_pool() {
    let mut h = Harness::new(Some(7), 1000);
    let gseq = h.establish();
    h.ack(ISS + 1usize, gseq, 60000);
    assert_eq!(chunks::spare(), 0, "a test thread starts with no spares");
    let small = pattern(10_000);
    let mut buf = chunks::take(chunks::CHUNK);
    buf.extend_from_slice(&small);
    h.recvd(Ok(buf));
    assert_eq!(chunks::spare(), 1, "a part-full chunk is back at once");
    let big = pattern(chunks::CHUNK / 2 + 1);
    let mut buf = chunks::take(chunks::CHUNK);
    assert_eq!(chunks::spare(), 0, "the spare is reused");
    buf.extend_from_slice(&big);
    h.recvd(Ok(buf));
    assert_eq!(chunks::spare(), 0, "a fuller chunk waits for the ACK");
    let sent: Vec<u8> = h.take_segs().iter().flat_map(|s| s.data.clone()).collect();
    assert_eq!(sent, [small, big].concat(), "every byte, in order");
    h.ack(ISS + 1usize + sent.len(), gseq, 60000);
    assert_eq!(chunks::spare(), 1, "ACKed, the chunk is back");
}

#[test]
fn three_dup_acks_retransmit_from_snd_una() {
    let mut h = Harness::new(Some(0), 1000);
    let gseq = h.establish();
    h.ack(ISS + 1usize, gseq, 60000);
    h.recvd(Ok(pattern(5000)));
    assert_eq!(h.take_segs().len(), 5);
    h.ack(ISS + 1001usize, gseq, 60000);
    for _ in 0..2 {
        h.ack(ISS + 1001usize, gseq, 60000);
    }
    assert!(h.take_segs().is_empty(), "two dup ACKs: nothing yet");
    h.ack(ISS + 1001usize, gseq, 60000);
    let re = h.take_segs();
    assert_eq!(re[0].seq, ISS + 1001usize);
    assert_eq!(re[0].data, pattern(5000)[1000..2000].to_vec());
    assert_eq!(re.len(), 4, "go-back-N resends the rest");
}

#[test]
fn rto_retransmits_and_backs_off_then_resets() {
    let mut h = Harness::new(Some(0), 1000);
    let gseq = h.establish();
    h.ack(ISS + 1usize, gseq, 60000);
    h.recvd(Ok(pattern(100)));
    assert_eq!(h.take_segs().len(), 1);
    let d1 = h.conn.deadline().unwrap();
    h.now = d1;
    h.timer();
    let re = h.take_segs();
    assert_eq!(re.len(), 1);
    assert_eq!(re[0].seq, ISS + 1usize);
    let d2 = h.conn.deadline().unwrap();
    assert!(d2.since(d1) >= RTO_MIN * 2, "backs off");
    for _ in 0..=MAX_RETRIES {
        h.now = h.conn.deadline().unwrap_or(h.now);
        if h.timer() == Verdict::Remove {
            break;
        }
    }
    assert_eq!(h.conn.state(), State::Closed);
    assert!(h.take_segs().last().unwrap().flags.rst);
    assert!(h.take_ops().contains(&SockOp::Close {
        flow: FLOW,
        reset: true
    }));
}

#[test]
fn fin_both_ways_closes_cleanly() {
    let mut h = Harness::new(Some(7), 1460);
    let gseq = h.establish();
    h.data(gseq, b"hello");
    let ops = h.take_ops();
    assert_eq!(
        ops,
        vec![SockOp::Send {
            flow: FLOW,
            data: b"hello".to_vec()
        }]
    );
    // Guest FIN while the Send is in flight: shutdown waits for it.
    h.seg(TcpRepr {
        flags: Flags {
            fin: true,
            ..Flags::default()
        },
        seq_number: gseq + 5usize,
        ack_number: Some(ISS + 1usize),
        ..TEMPL
    });
    assert!(
        h.take_ops().is_empty(),
        "no shutdown before the data is written"
    );
    h.sent(Ok(5));
    assert_eq!(h.take_ops(), vec![SockOp::ShutdownWrite { flow: FLOW }]);
    h.flush();
    assert_eq!(
        h.take_segs().pop().unwrap().ack,
        Some(gseq + 6usize),
        "FIN acknowledged"
    );
    // Host replies and closes.
    h.recvd(Ok(b"world".to_vec()));
    h.recvd(Ok(Vec::new()));
    let segs = h.take_segs();
    assert_eq!(segs[0].data, b"world");
    assert!(segs.last().unwrap().flags.fin);
    assert_eq!(segs.last().unwrap().seq, ISS + 6usize);
    let v = h.ack(ISS + 7usize, gseq + 6usize, 65535);
    assert_eq!(v, Verdict::Remove);
    assert!(h.take_ops().contains(&SockOp::Close {
        flow: FLOW,
        reset: false
    }));
}

#[test]
fn guest_fin_that_ends_the_connection_is_acked_before_the_flow_goes() {
    // The host closes first (its FIN is acked), the guest answers and
    // closes last: its FIN must be acknowledged at once, since the flow
    // is removed before the end-of-batch ACK flush (seen with a
    // published port: the guest's FIN retransmission met a reset).
    let mut h = Harness::new(Some(7), 1460);
    let gseq = h.establish();
    h.recvd(Ok(Vec::new()));
    let fin = h.take_segs().pop().unwrap();
    assert!(fin.flags.fin);
    assert_eq!(h.ack(ISS + 2usize, gseq, 65535), Verdict::Keep);
    h.data(gseq, b"reply\n");
    h.sent(Ok(6));
    h.flush();
    h.take_segs();
    h.take_ops();
    let v = h.seg(TcpRepr {
        flags: Flags {
            fin: true,
            ..Flags::default()
        },
        seq_number: gseq + 6usize,
        ack_number: Some(ISS + 2usize),
        ..TEMPL
    });
    assert_eq!(v, Verdict::Remove);
    let segs = h.take_segs();
    assert_eq!(
        segs.last().map(|s| s.ack),
        Some(Some(gseq + 7usize)),
        "the guest's FIN was not acknowledged: {segs:?}"
    );
    let ops = h.take_ops();
    assert!(ops.contains(&SockOp::ShutdownWrite { flow: FLOW }));
    assert!(ops.contains(&SockOp::Close {
        flow: FLOW,
        reset: false
    }));
}

#[test]
fn half_close_keeps_the_other_direction_open() {
    let mut h = Harness::new(Some(7), 1460);
    let gseq = h.establish();
    h.seg(TcpRepr {
        flags: Flags {
            fin: true,
            ..Flags::default()
        },
        seq_number: gseq,
        ack_number: Some(ISS + 1usize),
        ..TEMPL
    });
    assert_eq!(h.take_ops(), vec![SockOp::ShutdownWrite { flow: FLOW }]);
    assert_eq!(h.recvd(Ok(pattern(3000))), Verdict::Keep);
    let total: usize = h.take_segs().iter().map(|s| s.data.len()).sum();
    assert_eq!(total, 3000, "host data still flows after the guest's FIN");
}

#[test]
fn guest_rst_aborts_the_host_socket() {
    let mut h = Harness::new(Some(7), 1460);
    let gseq = h.establish();
    let v = h.seg(TcpRepr {
        flags: Flags {
            rst: true,
            ..Flags::default()
        },
        seq_number: gseq,
        ..TEMPL
    });
    assert_eq!(v, Verdict::Remove);
    assert_eq!(
        h.take_ops(),
        vec![SockOp::Close {
            flow: FLOW,
            reset: true
        }]
    );
}

#[test]
fn out_of_window_rst_is_ignored() {
    let mut h = Harness::new(Some(7), 1460);
    let gseq = h.establish();
    let v = h.seg(TcpRepr {
        flags: Flags {
            rst: true,
            ..Flags::default()
        },
        seq_number: gseq + (TO_HOST_CAP + 10),
        ..TEMPL
    });
    assert_eq!(v, Verdict::Keep);
}

#[test]
fn host_reset_becomes_rst_to_the_guest() {
    let mut h = Harness::new(Some(7), 1460);
    h.establish();
    assert_eq!(h.recvd(Err(104)), Verdict::Remove);
    assert!(h.take_segs().last().unwrap().flags.rst);
    assert_eq!(
        h.take_ops(),
        vec![SockOp::Close {
            flow: FLOW,
            reset: true
        }]
    );
}

#[test]
fn out_of_order_segment_is_not_queued_and_gets_a_dup_ack() {
    let mut h = Harness::new(Some(7), 1460);
    let gseq = h.establish();
    h.data(gseq + 100usize, b"later");
    assert_eq!(h.conn.queued_to_host(), 0);
    let s = h.take_segs();
    assert_eq!(s.last().unwrap().ack, Some(gseq));
    // A retransmission overlapping what was received only adds the new part.
    h.data(gseq, b"abc");
    h.data(gseq + 1usize, b"bcdef");
    let sends: Vec<u8> = h
        .take_ops()
        .into_iter()
        .flat_map(|o| match o {
            SockOp::Send { data, .. } => data,
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(sends, b"abc");
    assert_eq!(h.conn.queued_to_host(), 6);
}

#[test]
fn zero_window_probe_on_timer() {
    let mut h = Harness::new(Some(0), 1000);
    let gseq = h.establish();
    h.ack(ISS + 1usize, gseq, 0);
    h.recvd(Ok(pattern(10)));
    assert!(h.take_segs().is_empty(), "zero window: nothing sent");
    // Nothing is in flight, yet the persist timer runs: if the guest's
    // window update is lost, a one-byte probe asks for it.
    let d = h
        .conn
        .deadline()
        .expect("persist timer armed behind a zero window");
    h.now = d;
    h.timer();
    let probe = h.take_segs();
    assert_eq!(probe.len(), 1);
    assert_eq!(probe[0].data.len(), 1, "a one-byte window probe");
    assert_eq!(probe[0].seq, ISS + 1usize);
    // The guest answers with an open window: the rest flows.
    h.ack(ISS + 2usize, gseq, 1000);
    let rest: usize = h.take_segs().iter().map(|s| s.data.len()).sum();
    assert_eq!(rest, 9);
}

#[test]
fn a_guest_that_answers_probes_is_never_reset() {
    let mut h = Harness::new(Some(0), 1000);
    let gseq = h.establish();
    h.ack(ISS + 1usize, gseq, 0);
    h.recvd(Ok(pattern(10)));
    for _ in 0..(MAX_RETRIES * 3) {
        h.now = h.conn.deadline().unwrap();
        assert_eq!(h.timer(), Verdict::Keep);
        h.take_segs();
        h.ack(ISS + 1usize, gseq, 0);
    }
    assert_eq!(h.conn.state(), State::Established);
}

#[test]
fn window_update_restarts_the_flow_before_the_probe() {
    let mut h = Harness::new(Some(0), 1000);
    let gseq = h.establish();
    h.ack(ISS + 1usize, gseq, 0);
    h.recvd(Ok(pattern(10)));
    h.ack(ISS + 1usize, gseq, 1000);
    assert_eq!(h.take_segs().len(), 1);
}

#[test]
fn max_segment_allows_tso_sized_segments_in_mss_multiples() {
    let mut h = Harness::new(Some(7), 1000);
    h.conn.set_max_segment(4500);
    assert_eq!(h.conn.max_segment(), 4000, "rounded down to the MSS");
    assert_eq!(h.conn.mss(), 1000, "the MSS is still the guest's");
    let gseq = h.establish();
    h.ack(ISS + 1usize, gseq, 100);
    h.recvd(Ok(pattern(10_500)));
    let segs = h.take_segs();
    let lens: Vec<usize> = segs.iter().map(|s| s.data.len()).collect();
    assert_eq!(lens, vec![4000, 4000, 2500]);
    assert!(segs[2].flags.psh && !segs[0].flags.psh);
    let all: Vec<u8> = segs.iter().flat_map(|s| s.data.clone()).collect();
    assert_eq!(all, pattern(10_500));
    h.conn.set_max_segment(10);
    assert_eq!(h.conn.max_segment(), 1000, "never below one MSS");
}

/// An inbound connection: our SYN to the guest is out; returns the
/// harness and that SYN.
fn inbound() -> (Harness, Seg) {
    let mut segs = Vec::new();
    let conn = Conn::new_to_guest(
        FLOW,
        ISS,
        1500,
        Instant::ZERO,
        Arc::new(MemBudget::default()),
        &mut Harness::sink(&mut segs),
    );
    let mut h = Harness {
        conn,
        now: Instant::ZERO,
        segs: Vec::new(),
        ops: Vec::new(),
    };
    assert_eq!(segs.len(), 1);
    let syn = segs.remove(0);
    assert!(syn.flags.syn && syn.ack.is_none());
    assert_eq!(syn.seq, ISS);
    assert_eq!(syn.mss, Some(1460), "the link's MSS");
    assert_eq!(syn.ws, Some(OUR_WSCALE));
    assert_eq!(h.conn.state(), State::SynSent);
    assert!(
        h.take_ops().is_empty(),
        "no host read before the guest answers"
    );
    (h, syn)
}

fn syn_ack(ack: SeqNumber, mss: u16, ws: Option<u8>) -> TcpRepr<'static> {
    TcpRepr {
        flags: Flags {
            syn: true,
            ..Flags::default()
        },
        seq_number: GUEST_ISN,
        ack_number: Some(ack),
        window_len: 1000,
        max_seg_size: Some(mss),
        window_scale: ws,
        ..TEMPL
    }
}

#[test]
fn inbound_handshake_completes_on_the_guests_syn_ack() {
    let (mut h, _) = inbound();
    assert_eq!(h.seg(syn_ack(ISS + 1usize, 1000, Some(2))), Verdict::Keep);
    assert_eq!(h.conn.state(), State::Established);
    assert_eq!(h.conn.mss(), 1000, "the guest's MSS");
    let s = h.take_segs();
    assert_eq!(s.len(), 1);
    assert!(!s[0].flags.syn && !s[0].flags.rst);
    assert_eq!(s[0].ack, Some(GUEST_ISN + 1usize), "the SYN-ACK is ACKed");
    assert_eq!(s[0].seq, ISS + 1usize);
    assert_eq!(
        h.take_ops(),
        vec![SockOp::Recv {
            flow: FLOW,
            max: RECV_INIT
        }],
        "host data is read once the guest is there"
    );
    // Host data flows within the SYN-ACK's (unscaled) window, then
    // within later windows scaled by 2.
    h.recvd(Ok(pattern(6000)));
    let lens: Vec<usize> = h.take_segs().iter().map(|s| s.data.len()).collect();
    assert_eq!(lens, vec![1000]);
    assert!(h.conn.deadline().is_some(), "RTO armed for the data");
    h.ack(ISS + 1001usize, GUEST_ISN + 1usize, 1000);
    let lens: Vec<usize> = h.take_segs().iter().map(|s| s.data.len()).collect();
    assert_eq!(lens, vec![1000, 1000, 1000, 1000]);
    // Guest data flows to the host.
    h.data(GUEST_ISN + 1usize, b"hi");
    assert!(h.take_ops().contains(&SockOp::Send {
        flow: FLOW,
        data: b"hi".to_vec()
    }));
}

#[test]
fn inbound_without_window_scale_from_the_guest_scales_nothing() {
    let (mut h, _) = inbound();
    h.seg(syn_ack(ISS + 1usize, 1460, None));
    let s = h.take_segs();
    assert_eq!(
        s[0].wnd,
        u16::MAX,
        "our window unscaled, clamped to 16 bits"
    );
}

#[test]
fn inbound_refused_by_the_guest_resets_the_host_client() {
    let (mut h, _) = inbound();
    // A RST that does not ACK our SYN is ignored (RFC 9293 §3.10.7.3).
    let v = h.seg(TcpRepr {
        flags: Flags {
            rst: true,
            ..Flags::default()
        },
        ack_number: Some(ISS + 5usize),
        ..TEMPL
    });
    assert_eq!(v, Verdict::Keep);
    assert!(h.take_ops().is_empty());
    let v = h.seg(TcpRepr {
        flags: Flags {
            rst: true,
            ..Flags::default()
        },
        ack_number: Some(ISS + 1usize),
        ..TEMPL
    });
    assert_eq!(v, Verdict::Remove);
    assert_eq!(
        h.take_ops(),
        vec![SockOp::Close {
            flow: FLOW,
            reset: true
        }]
    );
    assert!(h.take_segs().is_empty(), "no answer to a RST");
}

#[test]
fn inbound_bogus_ack_in_syn_sent_gets_a_rst_and_changes_nothing() {
    let (mut h, _) = inbound();
    h.seg(TcpRepr {
        seq_number: GUEST_ISN,
        ack_number: Some(ISS + 77usize),
        ..TEMPL
    });
    let s = h.take_segs();
    assert_eq!(s.len(), 1);
    assert!(s[0].flags.rst);
    assert_eq!(s[0].seq, ISS + 77usize);
    assert_eq!(h.conn.state(), State::SynSent);
    // A SYN-ACK for another ISN is not ours either.
    h.seg(syn_ack(ISS + 9usize, 1460, None));
    assert_eq!(h.conn.state(), State::SynSent);
}

#[test]
fn inbound_unanswered_syn_is_retried_then_the_host_socket_closes() {
    let (mut h, _) = inbound();
    let mut syns = 0;
    let mut last = Instant::ZERO;
    for _ in 0..=SYN_RETRIES + 2 {
        let Some(d) = h.conn.deadline() else { break };
        assert!(d > last, "backs off");
        last = d;
        h.now = d;
        if h.timer() == Verdict::Remove {
            break;
        }
        let s = h.take_segs();
        assert_eq!(s.len(), 1);
        assert!(s[0].flags.syn && s[0].seq == ISS);
        syns += 1;
    }
    assert_eq!(syns, SYN_RETRIES);
    assert_eq!(h.conn.state(), State::Closed);
    assert_eq!(
        h.take_ops(),
        vec![SockOp::Close {
            flow: FLOW,
            reset: true
        }]
    );
}
