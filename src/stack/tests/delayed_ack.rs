//! Delayed ACKs: a little data from the guest is ACKed by the data that
//! answers it, or after [`tcp::conn::DELAYED_ACK`]; a full segment's
//! worth, a FIN or a nearly closed window are ACKed at the end of the batch.

use super::*;

/// An established connection GUEST:40002 -> GW:80 (the guest's next
/// sequence number is 2); returns the stack, the flow and our next
/// sequence number.
fn established() -> (Stack, FlowId, SeqNumber) {
    let mut s = stack_with(|_| {});
    let (flow, ours) = super::memory::establish_plain(&mut s);
    let mut out = Actions::default();
    s.poll(Instant::ZERO, &mut out);
    assert!(out.frames.is_empty(), "nothing answers the handshake's ACK");
    (s, flow, ours)
}

/// The ACK numbers of the TCP frames in `out`, with their payload sizes.
fn acks(out: &Actions) -> Vec<(Option<SeqNumber>, usize)> {
    out.frames
        .iter()
        .map(|f| {
            let (_, _, r) = tcp_to_guest(f);
            (r.ack_number, r.payload.len())
        })
        .collect()
}

#[test]
fn a_request_is_acked_by_its_reply_in_one_frame() {
    let (mut s, flow, ours) = established();
    let mut out = Actions::default();
    s.ingress(
        &guest_tcp(SeqNumber(2), Some(ours), 65535, b"ping"),
        Instant::ZERO,
        &mut out,
    );
    s.poll(Instant::ZERO, &mut out);
    assert!(out.frames.is_empty(), "the ACK waits: {:?}", acks(&out));
    // The host answers 100 us later: one frame, data and ACK together.
    let t = Instant::from_micros(100);
    let mut out = Actions::default();
    let reply = HostEvent::Received {
        flow,
        result: Ok(b"pong".to_vec()),
    };
    s.host_event(reply, t, &mut out);
    s.poll(t, &mut out);
    assert_eq!(acks(&out), [(Some(SeqNumber(6)), 4)]);
    // Nothing is left for the deadline.
    let mut out = Actions::default();
    s.poll(t + tcp::conn::DELAYED_ACK, &mut out);
    assert!(out.frames.is_empty(), "{:?}", acks(&out));
}

#[test]
fn an_unanswered_request_is_acked_when_the_delay_runs_out() {
    let (mut s, _, ours) = established();
    let t0 = Instant::from_micros(1000);
    let mut out = Actions::default();
    s.ingress(
        &guest_tcp(SeqNumber(2), Some(ours), 65535, b"ping"),
        t0,
        &mut out,
    );
    s.poll(t0, &mut out);
    assert!(out.frames.is_empty());
    let due = t0 + tcp::conn::DELAYED_ACK;
    assert_eq!(s.next_deadline(), Some(due), "the worker wakes for it");
    s.poll(Instant::from_micros(1499), &mut out);
    assert!(out.frames.is_empty(), "not before its time");
    s.poll(due, &mut out);
    assert_eq!(acks(&out), [(Some(SeqNumber(6)), 0)]);
}

#[test]
fn bulk_data_is_acked_at_the_end_of_the_batch() {
    let (mut s, _, ours) = established();
    // A small segment: the ACK waits.
    let mut out = Actions::default();
    s.ingress(
        &guest_tcp(SeqNumber(2), Some(ours), 65535, &[7u8; 100]),
        Instant::ZERO,
        &mut out,
    );
    s.poll(Instant::ZERO, &mut out);
    assert!(out.frames.is_empty(), "a little data: the ACK may wait");
    // A full segment is bulk: ACKed at the end of the batch.
    let seg = vec![7u8; 1460];
    let mut out = Actions::default();
    s.ingress(
        &guest_tcp(SeqNumber(2 + 100), Some(ours), 65535, &seg),
        Instant::ZERO,
        &mut out,
    );
    s.poll(Instant::ZERO, &mut out);
    assert_eq!(acks(&out), [(Some(SeqNumber(2 + 100 + 1460)), 0)]);
    let mut out = Actions::default();
    s.ingress(
        &guest_tcp(SeqNumber(2 + 1560), Some(ours), 65535, &seg),
        Instant::ZERO,
        &mut out,
    );
    s.poll(Instant::ZERO, &mut out);
    assert_eq!(acks(&out), [(Some(SeqNumber(2 + 1560 + 1460)), 0)]);
}

#[test]
fn a_fin_is_acked_at_the_end_of_the_batch() {
    let (mut s, _, ours) = established();
    let mut fin = TcpRepr {
        flags: wire::tcp::Flags {
            fin: true,
            ..Default::default()
        },
        seq_number: SeqNumber(2),
        ack_number: Some(ours),
        payload: b"bye",
        ..BARE
    };
    fin.window_len = 65535;
    let g = SocketAddr::from((GUEST, 40002));
    let r = SocketAddr::from((GW, 80));
    let mut out = Actions::default();
    s.ingress(&guest_seg(g, r, fin), Instant::ZERO, &mut out);
    s.poll(Instant::ZERO, &mut out);
    assert_eq!(acks(&out), [(Some(SeqNumber(2 + 3 + 1)), 0)]);
}
