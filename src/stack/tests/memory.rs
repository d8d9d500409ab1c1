//! The memory budget: windows close and host reads wait while it is
//! spent, and reopen when memory is released; datagrams over it drop.

use super::*;

// ───────────────────────────── memory budget ─────────────────────────────

/// The last TCP segment to the guest in `out`.
fn last_tcp_to_guest(out: &Actions) -> TcpRepr<'_> {
    let f = out
        .frames
        .iter()
        .rev()
        .find(|f| ip_of(f).1.next_header() == ip_proto::TCP)
        .expect("a TCP segment to the guest");
    tcp_to_guest(f).2
}

/// Open GUEST:40002 -> GW:80 on a plain stack up to Established; returns
/// the flow and our next sequence number (the guest's is 2).
pub(super) fn establish_plain(s: &mut Stack) -> (FlowId, SeqNumber) {
    let g = SocketAddr::from((GUEST, 40002));
    let r = SocketAddr::from((GW, 80));
    let mut out = Actions::default();
    s.ingress(
        &ip_frame(GW, ip_proto::TCP, &tcp_syn(g, r)),
        Instant::ZERO,
        &mut out,
    );
    let flow = out.ops[0].flow();
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Connected {
            flow,
            result: Ok(()),
        },
        Instant::ZERO,
        &mut out,
    );
    let our = last_tcp_to_guest(&out).seq_number + 1usize;
    let mut out = Actions::default();
    s.ingress(
        &guest_tcp(SeqNumber(2), Some(our), 65535, &[]),
        Instant::ZERO,
        &mut out,
    );
    (flow, our)
}

#[test]
fn spent_budget_closes_the_guest_window_and_release_reopens_it() {
    let mem = Arc::new(MemBudget::new(1 << 20));
    let mut s = stack_with(|c| c.memory = mem.clone());
    let (flow, our) = establish_plain(&mut s);
    assert_eq!(
        mem.used(),
        super::tcp::conn::RECV_INIT,
        "the posted Recv is reserved"
    );
    // Other flows take the rest of the budget.
    let hog = mem.reserve_up_to(usize::MAX);
    let mut out = Actions::default();
    s.ingress(
        &guest_tcp(SeqNumber(2), Some(our), 65535, &[7u8; 1000]),
        Instant::ZERO,
        &mut out,
    );
    s.poll(Instant::ZERO, &mut out);
    assert!(
        !out.ops.iter().any(|o| matches!(o, SockOp::Send { .. })),
        "nothing was queued"
    );
    let ack = last_tcp_to_guest(&out);
    assert_eq!(
        ack.ack_number,
        Some(SeqNumber(2)),
        "the bytes are not ACKed"
    );
    assert_eq!(ack.window_len, 0, "the window is closed");
    let st = mem.stats();
    assert_eq!(st.tcp_dropped_bytes, 1000);
    assert!(st.window_limited >= 1);

    // Memory comes back: a window update, without new data from the guest.
    mem.release(hog);
    let mut out = Actions::default();
    s.poll(Instant::from_millis(1), &mut out);
    let upd = last_tcp_to_guest(&out);
    assert_eq!(upd.ack_number, Some(SeqNumber(2)));
    assert!(upd.window_len > 0, "window update after the release");

    // The guest's retransmission is taken now.
    let mut out = Actions::default();
    s.ingress(
        &guest_tcp(SeqNumber(2), Some(our), 65535, &[7u8; 1000]),
        Instant::from_millis(2),
        &mut out,
    );
    assert!(out.ops.contains(&SockOp::Send {
        flow,
        data: vec![7u8; 1000]
    }));
    assert!(mem.used() > super::tcp::conn::RECV_INIT + 1000);

    // Host data waiting for the guest's ACK is held too; a reset frees all.
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Received {
            flow,
            result: Ok(vec![1u8; 500]),
        },
        Instant::from_millis(3),
        &mut out,
    );
    assert!(s.held_memory() > 0);
    assert_eq!(s.held_memory(), mem.used());
    let rst = TcpRepr {
        src_port: 40002,
        dst_port: 80,
        flags: wire::tcp::Flags {
            rst: true,
            ..Default::default()
        },
        seq_number: SeqNumber(1002),
        ack_number: None,
        window_len: 0,
        max_seg_size: None,
        window_scale: None,
        sack_permitted: false,
        payload: &[],
    };
    let mut l4 = vec![0u8; rst.buffer_len()];
    rst.emit(
        &mut TcpPacket::new_unchecked(&mut l4[..]),
        GUEST.into(),
        GW.into(),
    );
    let mut out = Actions::default();
    s.ingress(
        &ip_frame(GW, ip_proto::TCP, &l4),
        Instant::from_millis(4),
        &mut out,
    );
    assert_eq!(s.flow_count(), 0);
    assert_eq!(mem.used(), 0, "a removed flow gives back all it held");
}

#[test]
fn spent_budget_holds_host_reads_back_until_memory_is_free() {
    let mem = Arc::new(MemBudget::new(1 << 20));
    let mut s = stack_with(|c| c.memory = mem.clone());
    let (flow, _) = establish_plain(&mut s);
    // Other flows take the rest, and what the Recv in flight gives back.
    let hog = mem.reserve_up_to(usize::MAX) + super::tcp::conn::RECV_INIT;
    mem.force_reserve(super::tcp::conn::RECV_INIT);
    // The Recv in flight returns; no new one can be reserved.
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Received {
            flow,
            result: Ok(vec![1u8; 100]),
        },
        Instant::ZERO,
        &mut out,
    );
    assert!(
        !out.ops.iter().any(|o| matches!(o, SockOp::Recv { .. })),
        "no Recv posted over budget"
    );
    assert!(mem.stats().recv_deferred >= 1);
    mem.release(hog);
    let mut out = Actions::default();
    s.poll(Instant::from_millis(1), &mut out);
    assert!(
        out.ops
            .iter()
            .any(|o| matches!(o, SockOp::Recv { flow: f, .. } if *f == flow)),
        "the Recv is posted once memory is free"
    );
    s.reset_all(&mut out);
    assert_eq!(mem.used(), 0);
}

#[test]
fn udp_over_the_memory_budget_is_dropped_and_counted() {
    let mem = Arc::new(MemBudget::new(1000));
    let mut s = stack_with(|c| c.memory = mem.clone());
    let out = udp_to(&mut s, 5000, GW, 7, &[1u8; 900]);
    let flow = out.ops[0].flow();
    assert!(mem.used() >= 900, "the queued datagram is held");
    let out = udp_to(&mut s, 5000, GW, 7, &[2u8; 900]);
    assert!(out.ops.is_empty());
    assert_eq!(s.counters().drops_of(DropReason::MemoryBudget), 1);
    assert_eq!(mem.stats().udp_drops, 1);
    // Connected: the queued datagram goes out and is held until sent.
    let mut out = Actions::default();
    s.host_event(
        HostEvent::Connected {
            flow,
            result: Ok(()),
        },
        Instant::ZERO,
        &mut out,
    );
    assert!(out.ops.contains(&SockOp::Send {
        flow,
        data: vec![1u8; 900]
    }));
    assert!(mem.used() >= 900);
    s.host_event(
        HostEvent::Sent {
            flow,
            result: Ok(900),
        },
        Instant::ZERO,
        &mut out,
    );
    assert_eq!(mem.used(), 0, "a sent datagram is given back");
    // With room again, datagrams pass.
    let out = udp_to(&mut s, 5000, GW, 7, &[3u8; 900]);
    assert_eq!(out.ops.len(), 1);
    let mut out = Actions::default();
    s.reset_all(&mut out);
    assert_eq!(
        mem.used(),
        0,
        "a removed flow gives back its datagrams in flight"
    );
}
