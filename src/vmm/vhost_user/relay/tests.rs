use super::*;

fn msg(request: u32, flags: u32, body: &[u8]) -> Message {
    Message {
        request,
        flags,
        body: body.to_vec(),
        fds: Vec::new(),
    }
}

/// Run the relay between two socket pairs; returns (vmm end, handler
/// end) as the test sees them.
fn harness() -> (UnixStream, UnixStream, std::thread::JoinHandle<RelayStats>) {
    let (vmm_test, vmm_relay) = UnixStream::pair().unwrap();
    let (h_relay, h_test) = UnixStream::pair().unwrap();
    let t =
        std::thread::spawn(move || relay(&vmm_relay, &h_relay, &AtomicBool::new(false)).unwrap());
    for s in [&vmm_test, &h_test] {
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
    }
    (vmm_test, h_test, t)
}

#[test]
fn swallows_early_vring_enable_acks_it_and_passes_the_rest_with_fds() {
    let (vmm, handler, t) = harness();
    send(&vmm, &msg(SET_OWNER, VERSION, &[])).unwrap();
    assert_eq!(recv(&handler).unwrap().unwrap().request, SET_OWNER);
    // SET_PROTOCOL_FEATURES with REPLY_ACK, passed through.
    send(
        &vmm,
        &msg(
            SET_PROTOCOL_FEATURES,
            VERSION,
            &PROTOCOL_F_REPLY_ACK.to_le_bytes(),
        ),
    )
    .unwrap();
    let m = recv(&handler).unwrap().unwrap();
    assert_eq!(m.request, SET_PROTOCOL_FEATURES);
    // Early SET_VRING_ENABLE with need-reply: acked by the relay, not
    // forwarded.
    let mut state = [0u8; 8];
    state[4] = 1;
    send(
        &vmm,
        &msg(SET_VRING_ENABLE, VERSION | FLAG_NEED_REPLY, &state),
    )
    .unwrap();
    let ack = recv(&vmm).unwrap().unwrap();
    assert_eq!(ack.request, SET_VRING_ENABLE);
    assert_eq!(ack.flags & FLAG_REPLY, FLAG_REPLY);
    assert_eq!(ack.body, 0u64.to_le_bytes());
    // A message with an fd (SET_VRING_CALL) crosses with its fd.
    let (a, mut b) = UnixStream::pair().unwrap();
    let m = Message {
        request: 13,
        flags: VERSION,
        body: 0u64.to_le_bytes().to_vec(),
        fds: vec![OwnedFd::from(a)],
    };
    send(&vmm, &m).unwrap();
    let got = recv(&handler).unwrap().unwrap();
    assert_eq!(got.request, 13);
    assert_eq!(got.fds.len(), 1);
    let mut through = UnixStream::from(got.fds.into_iter().next().unwrap());
    through.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    b.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"x");
    // After SET_FEATURES with PROTOCOL_FEATURES, the held state is
    // replayed, and SET_VRING_ENABLE passes through.
    send(
        &vmm,
        &msg(SET_FEATURES, VERSION, &F_PROTOCOL_FEATURES.to_le_bytes()),
    )
    .unwrap();
    assert_eq!(recv(&handler).unwrap().unwrap().request, SET_FEATURES);
    let replayed = recv(&handler).unwrap().unwrap();
    assert_eq!(replayed.request, SET_VRING_ENABLE);
    assert_eq!(replayed.body, state);
    assert_eq!(replayed.flags & FLAG_NEED_REPLY, 0);
    send(&vmm, &msg(SET_VRING_ENABLE, VERSION, &state)).unwrap();
    assert_eq!(recv(&handler).unwrap().unwrap().request, SET_VRING_ENABLE);
    // Replies go back to the VMM.
    send(&handler, &msg(1, VERSION | FLAG_REPLY, &7u64.to_le_bytes())).unwrap();
    let r = recv(&vmm).unwrap().unwrap();
    assert_eq!((r.request, r.body), (1, 7u64.to_le_bytes().to_vec()));
    drop(vmm);
    let st = t.join().unwrap();
    assert_eq!(st.swallowed, 1);
    assert_eq!(st.replayed, 1);
    assert_eq!(st.from_vmm, 6);
}

#[test]
fn a_vring_num_that_is_not_a_power_of_two_is_refused() {
    let mut neg = Negotiation {
        owner: true,
        ..Negotiation::default()
    };
    let num = |i: u32, n: u32| {
        let mut b = i.to_le_bytes().to_vec();
        b.extend_from_slice(&n.to_le_bytes());
        msg(SET_VRING_NUM, VERSION, &b)
    };
    assert!(neg.check(&num(0, 256)).is_ok());
    for bad in [0, 3, 2048] {
        let e = neg.check(&num(1, bad)).unwrap_err();
        assert!(e.to_string().contains("power of two"), "{bad}: {e}");
    }
}

#[test]
fn an_oversized_body_ends_the_relay_with_an_error() {
    let (vmm_test, vmm_relay) = UnixStream::pair().unwrap();
    let (h_relay, _h_test) = UnixStream::pair().unwrap();
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&5u32.to_le_bytes());
    hdr.extend_from_slice(&VERSION.to_le_bytes());
    hdr.extend_from_slice(&1_000_000u32.to_le_bytes());
    (&vmm_test).write_all(&hdr).unwrap();
    let e = relay(&vmm_relay, &h_relay, &AtomicBool::new(false)).unwrap_err();
    assert!(e.to_string().contains("limit"), "{e}");
}
