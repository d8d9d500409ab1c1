//! The whole stack under arbitrary input: a script of guest frames, host
//! completions and clock steps. Nothing may panic, and the stack's memory
//! must stay within its bounds (flows ≤ max_flows).
//!
//! Input: records of `[kind u8][len u16 LE][len bytes]`:
//! - kind % 5 == 0: a guest frame;
//! - 1: `Connected` (Ok if the first byte is even, else ECONNREFUSED) for the
//!   flow of a recent op (chosen by the second byte);
//! - 2: `Received` with the bytes (empty = EOF);
//! - 3: `Sent` with n = the first two bytes;
//! - 4: advance the clock by `bytes[0]` × 50 ms and poll.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uipd::stack::{Actions, Config, FlowId, HostEvent, Instant, SockOp, Stack};

fuzz_target!(|data: &[u8]| {
    let mut stack = Stack::new(Config {
        mtu: 1500,
        max_flows: 32,
        resolvers: vec!["127.0.0.53:53".parse().unwrap()],
        ..Config::default()
    });
    let mut now = 0u64;
    let mut flows: Vec<FlowId> = Vec::new();
    let mut out = Actions::default();
    let mut rest = data;
    while rest.len() >= 3 {
        let kind = rest[0] % 5;
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let body = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let pick = |flows: &Vec<FlowId>, b: Option<&u8>| -> Option<FlowId> {
            if flows.is_empty() {
                return None;
            }
            Some(flows[usize::from(*b.unwrap_or(&0)) % flows.len()])
        };
        let t = Instant::from_micros(now);
        match kind {
            0 => stack.ingress(body, t, &mut out),
            1 => {
                if let Some(flow) = pick(&flows, body.get(1)) {
                    let result = if body.first().is_none_or(|b| b % 2 == 0) { Ok(()) } else { Err(111) };
                    stack.host_event(HostEvent::Connected { flow, result }, t, &mut out);
                }
            }
            2 => {
                if let Some(flow) = pick(&flows, body.first()) {
                    let bytes = body.get(1..).unwrap_or_default().to_vec();
                    stack.host_event(HostEvent::Received { flow, result: Ok(bytes) }, t, &mut out);
                }
            }
            3 => {
                if let Some(flow) = pick(&flows, body.get(2)) {
                    let n = usize::from(u16::from_le_bytes([*body.first().unwrap_or(&0), *body.get(1).unwrap_or(&0)]));
                    stack.host_event(HostEvent::Sent { flow, result: Ok(n) }, t, &mut out);
                }
            }
            _ => {
                now += u64::from(*body.first().unwrap_or(&1)) * 50_000;
                stack.poll(Instant::from_micros(now), &mut out);
            }
        }
        for op in out.ops.drain(..) {
            if let SockOp::Open { flow, .. } = op {
                flows.push(flow);
                if flows.len() > 64 {
                    flows.remove(0);
                }
            }
        }
        for f in out.frames.drain(..) {
            assert!(f.len() <= 1514, "frame over the MTU: {}", f.len());
        }
        assert!(stack.flow_count() <= 32);
    }
});
