//! The protocol engine: guest frames in, guest frames and host socket
//! operations out. No I/O, no clock, no threads, no unsafe.
//!
//! ```text
//!  guest frame ──► Stack::ingress ────► Actions { frames: to the guest,
//!                                                ops: SockOp for the host }
//!  HostEvent   ──► Stack::host_event ─► Actions
//!  now         ──► Stack::poll ───────► Actions (delayed ACKs, timers) + next deadline
//! ```
//!
//! # Theory of operation
//!
//! The guest sees one router, the gateway (192.168.33.1 by default), with a
//! MAC of its own. uipd answers ARP for it, answers ICMP echo to it, serves
//! DHCP (one address: the guest's) and forwards DNS sent to it. Every other
//! TCP, UDP or ICMP echo flow the guest starts is NAT'ed onto a host socket:
//! the flow is keyed by the guest's 5-tuple ([`FlowKey`]), and the host
//! socket connects to the address the guest addressed, except that the
//! gateway address maps to the host's 127.0.0.1 (`host_loopback`) and
//! `gateway:53` maps to the first resolver. A new outbound flow is
//! judged by the outbound [`policy`] on that host address (DNS to the
//! gateway exempt) and by the flow cap (`max_flows`); a refused flow is
//! answered as a filtering router would (TCP: RST; UDP and ICMP echo: ICMP
//! unreachable, "administratively prohibited") and counted.
//!
//! IPv6 works the same way (see the `ipv6` module): the gateway is also
//! fd00:33::1 and fe80::1 on a /64 it advertises for SLAAC, it answers
//! neighbour and router solicitations, and IPv6 flows go to `AF_INET6` host
//! sockets, the gateway mapping to ::1.
//!
//! Malformed input is dropped and counted by [`DropReason`]; nothing a guest
//! sends can panic the stack or make it hold unbounded memory: flows are
//! capped (`max_flows`), per-flow queues are capped (see [`tcp::conn`]),
//! reassembly is capped ([`frag::Limits`]), and all flow buffers together
//! are held within one memory budget shared by every worker
//! ([`Config::memory`], see [`mem`]): past it, TCP windows close, host
//! reads wait and datagrams are dropped, instead of memory growing.
//!
//! The caller batches: feed a burst of frames to [`Stack::ingress`], then
//! call [`Stack::poll`] once, which sends the ACKs the burst left pending
//! (one per flow, like GRO on a NIC) and runs due timers.
//!
//! # Layout
//!
//! This file holds the [`Stack`] and its entry points: [`Stack::ingress`]
//! (which dispatches by ethertype), [`Stack::host_event`], [`Stack::poll`].
//! Each concern is an `impl Stack` block in a file of its own:
//!
//! ```text
//!  config.rs    Config, Offload, TSO sizes, flow shares
//!  counters.rs  Counters and DropReason (one list)
//!  l2.rs        Ethernet, ARP, building frames to the guest
//!  ipv4.rs      IPv4 in (reassembly) and out (fragments, UFO, checksums)
//!  ipv6.rs      IPv6, NDP, router advertisements, DHCPv6
//!  nat.rs       where a flow goes on the host; published ports' sources
//!  forward.rs   frames of flows another worker owns
//!  tcp_glue.rs  TCP segments into and out of tcp::conn::Conn
//!  udp.rs       UDP and ICMP echo flows; DHCP
//!  icmp.rs      ICMP echo and errors
//! ```
#![forbid(unsafe_code)]

pub mod dhcp;
pub mod dhcpv6;
pub mod directory;
pub mod dns;
pub mod flow;
pub mod frag;
mod ipv6;
pub mod mem;
pub mod ops;
pub mod policy;
pub mod steer;
pub mod tcp;
pub mod time;
pub mod wire;

// The engine, one concern per file, each an `impl Stack` block.
mod config;
mod counters;
mod forward;
mod icmp;
mod ipv4;
mod l2;
mod nat;
mod tcp_glue;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::{Config, Offload, TSO_MAX_FRAME, flow_share, tso_max_payload, tso6_max_payload};
pub use counters::{Counters, DropReason};
pub use directory::Directory;
pub use flow::{FlowId, FlowKey};
pub use mem::{MemBudget, MemStats};
pub use ops::{Errno, HostEvent, Proto, SockOp};
pub use time::Instant;

use counters::wire_reason;
use flow::FlowTable;
use nat::PUB_PORTS;
use tcp::conn::{Conn, Verdict};
use tcp_glue::PendingAck;
use udp::DgramFlow;
use wire::vnet_hdr::{self, gso};
use wire::{EtherType, EthernetAddress, EthernetFrame, SeqNumber, VnetHdrPacket, VnetHdrRepr};

/// Unwrap a parse result, or count the drop (by [`wire_reason`]) and
/// return from the calling handler (smoltcp's `check!`).
macro_rules! check {
    ($stack:expr, $parsed:expr) => {
        match $parsed {
            Ok(v) => v,
            Err(e) => return $stack.drop($crate::stack::counters::wire_reason(e)),
        }
    };
}
use check;

/// What the stack asks of the world after an input.
#[derive(Debug, Default)]
pub struct Actions {
    /// Ethernet frames to deliver to the guest, in order.
    pub frames: Vec<Vec<u8>>,
    /// Host socket operations, in order.
    pub ops: Vec<SockOp>,
    /// Guest frames that belong to another worker's flows, as
    /// `(worker, frame)`: a datagram reassembled here whose flow hashes
    /// elsewhere, or a frame of a flow the [`Directory`] says another
    /// worker holds. The frame is in the form `ingress` takes.
    pub forward: Vec<(usize, Vec<u8>)>,
}

impl Actions {
    /// True if there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.ops.is_empty() && self.forward.is_empty()
    }
}

/// How often flows are scanned for timers.
const TIMER_SCAN: Duration = Duration::from_millis(10);

/// A flow's state: a TCP connection, or a UDP / ICMP echo flow.
#[derive(Debug)]
enum FlowState {
    Tcp(Box<Conn>),
    Dgram(DgramFlow),
}

/// The user-mode network stack for one guest.
pub struct Stack {
    cfg: Config,
    guest_mac: Option<EthernetAddress>,
    flows: FlowTable<FlowState>,
    reasm: frag::Reassembler,
    counters: Counters,
    ip_ident: u16,
    isn_state: u64,
    ack_list: Vec<FlowId>,
    /// Flows whose pending ACK may wait ([`Conn::ack_delayable`]), queued
    /// in this batch; [`Stack::poll`] gives each its deadline.
    delack_new: Vec<FlowId>,
    /// Delayed ACKs and when each is due (at most one entry per flow).
    delack: Vec<(Instant, FlowId)>,
    next_scan: Instant,
    /// Next source port for inbound flows shown from the gateway.
    pub_port: u16,
    /// Inbound UDP flows by (guest port, host peer); entries whose flow
    /// expired are replaced on use and pruned when the map outgrows the
    /// flow table.
    pub_udp: std::collections::HashMap<(u16, SocketAddr), FlowId>,
    /// When the next unsolicited router advertisement is due; `None` until
    /// the guest first sends IPv6 (then one goes out at once).
    next_ra: Option<Instant>,
    /// Unsolicited RAs sent so far (the first few go out faster).
    initial_ras: u8,
    /// TCP flows the memory budget held back (a window kept small, a
    /// `Recv` not posted): [`Stack::poll`] re-drives them once memory is
    /// free.
    mem_wait: Vec<FlowId>,
    /// Where the next wake-up of `mem_wait` starts.
    mem_rotor: usize,
}

impl Stack {
    /// A stack with `cfg`.
    pub fn new(cfg: Config) -> Stack {
        let mut cfg = cfg;
        if !cfg.offload.vnet_hdr {
            // Without the header there is no way to say "partial" or "super-frame".
            cfg.offload = Offload::default();
        }
        let max_flows = cfg.max_flows;
        let isn_state = cfg.isn_seed | 1;
        let flows = match &cfg.directory {
            Some(d) => FlowTable::shared(max_flows, d.clone(), cfg.worker),
            None => FlowTable::new(max_flows),
        };
        Stack {
            cfg,
            guest_mac: None,
            flows,
            reasm: frag::Reassembler::new(frag::Limits::default()),
            counters: Counters::default(),
            ip_ident: 1,
            isn_state,
            ack_list: Vec::new(),
            delack_new: Vec::new(),
            delack: Vec::new(),
            next_scan: Instant::ZERO,
            pub_port: *PUB_PORTS.start()
                + u16::try_from(isn_state % u64::from(PUB_PORTS.end() - PUB_PORTS.start()))
                    .unwrap_or(0),
            pub_udp: std::collections::HashMap::new(),
            next_ra: None,
            initial_ras: 0,
            mem_wait: Vec::new(),
            mem_rotor: 0,
        }
    }

    /// The memory budget this stack's flows draw on.
    pub fn memory(&self) -> &Arc<MemBudget> {
        &self.cfg.memory
    }

    /// Bytes of the memory budget this stack's flows hold now (the sum the
    /// flows account; the budget itself is shared with other stacks).
    pub fn held_memory(&self) -> usize {
        self.flows
            .ids()
            .into_iter()
            .filter_map(|id| match self.flows.get(id) {
                Some((_, FlowState::Tcp(c))) => Some(c.held_memory()),
                Some((_, FlowState::Dgram(f))) => Some(f.held),
                None => None,
            })
            .sum()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Live flows.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Replace the resolvers (resolv.conf changed).
    pub fn set_resolvers(&mut self, resolvers: Vec<SocketAddr>) {
        self.cfg.resolvers = resolvers;
    }

    /// Change the offloads toward the guest (a virtio guest negotiated its
    /// features). Flows built under the old ones should be reset first.
    pub fn set_offload(&mut self, offload: Offload) {
        self.cfg.offload = if offload.vnet_hdr {
            offload
        } else {
            Offload::default()
        };
    }

    /// The guest's MAC, once seen (by any of the guest's stacks).
    pub fn guest_mac(&self) -> Option<EthernetAddress> {
        match &self.cfg.directory {
            Some(d) => d.guest_mac(),
            None => self.guest_mac,
        }
    }

    fn drop(&mut self, reason: DropReason) {
        log::trace!("drop: {}", reason.name());
        self.counters.drop(reason);
    }

    fn next_isn(&mut self) -> SeqNumber {
        // xorshift64*: RFC 6528 asks for unpredictable ISNs; the seed comes
        // from the OS in the daemon and is fixed in tests.
        let mut x = self.isn_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.isn_state = x;
        SeqNumber((x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32)
    }

    fn next_ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }

    // ───────────────────────────── ingress ─────────────────────────────

    /// Process one Ethernet frame from the guest (with `offload.vnet_hdr`,
    /// preceded by its 12-byte virtio-net header).
    ///
    /// A header with `NEEDS_CSUM` or `DATA_VALID` turns off L4 checksum
    /// verification for the frame: a partial checksum is not a full one, and
    /// the sender (the local kernel behind a TAP, or the guest's driver)
    /// vouches for the data. A guest that lies only corrupts its own stream,
    /// as it could with a correct checksum over wrong data. A GSO super-frame
    /// (TCPV4) is one big TCP segment to the translation; UDP segmentation
    /// (USO) super-frames, which the stack never enables, are dropped.
    pub fn ingress(&mut self, frame: &[u8], now: Instant, out: &mut Actions) {
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += frame.len() as u64;
        let (frame, hdr) = if self.cfg.offload.vnet_hdr {
            let hdr = match VnetHdrPacket::new_checked(frame).and_then(|p| VnetHdrRepr::parse(&p)) {
                Ok(h) => h,
                Err(_) => return self.drop(DropReason::BadVnetHdr),
            };
            match hdr.gso_kind() {
                gso::NONE => {}
                gso::TCPV4 | gso::TCPV6 | gso::UDP => self.counters.rx_gso_frames += 1,
                _ => return self.drop(DropReason::BadVnetHdr),
            }
            (&frame[vnet_hdr::HEADER_LEN..], hdr)
        } else {
            (frame, VnetHdrRepr::PLAIN)
        };
        let csum_trusted = hdr.needs_csum() || hdr.data_valid();
        let eth = check!(self, EthernetFrame::new_checked(frame));
        let src = eth.src_addr();
        let dst = eth.dst_addr();
        // IPv6 multicast (RFC 2464 §7): router and neighbour solicitations,
        // MLD reports; `ipv6` sorts out which concern us.
        let v6_multicast = dst.0[0] == 0x33 && dst.0[1] == 0x33;
        let v6_multicast = v6_multicast && eth.ethertype() == EtherType::Ipv6;
        if !(dst == self.cfg.gateway_mac || dst.is_broadcast() || v6_multicast) {
            return self.drop(DropReason::NotForUs);
        }
        if src.is_multicast() || src == self.cfg.gateway_mac {
            return self.drop(DropReason::BadAddress);
        }
        match eth.ethertype() {
            EtherType::Arp => self.arp(eth.payload(), src, out),
            // A TCPV6 super-frame must carry IPv6 (and TCPV4, IPv4).
            EtherType::Ipv4 if hdr.gso_kind() == gso::TCPV6 => self.drop(DropReason::BadVnetHdr),
            EtherType::Ipv4 => {
                self.learn_guest_mac(src);
                self.ipv4(eth.payload(), csum_trusted, now, out)
            }
            EtherType::Ipv6 if !self.cfg.ipv6 => self.drop(DropReason::Ipv6),
            EtherType::Ipv6 => {
                self.learn_guest_mac(src);
                self.ipv6(eth.payload(), &hdr, now, out)
            }
            EtherType::Unknown(_) => self.drop(DropReason::Unsupported),
        }
    }

    // ──────────────────────────── host events ──────────────────────────

    /// Process a completion from the host.
    pub fn host_event(&mut self, ev: HostEvent, now: Instant, out: &mut Actions) {
        let id = ev.flow();
        let Some((key, state)) = self.flows.get(id) else {
            // A completion for a flow that is gone (generation moved on).
            return;
        };
        let key = *key;
        if let FlowState::Dgram(_) = state {
            return self.dgram_event(id, key, ev, now, out);
        }
        if let HostEvent::Connected { result: Err(e), .. } = ev {
            log::debug!(
                "tcp {:?} -> {:?}: connect failed: errno {e}",
                key.guest,
                key.remote
            );
        }
        self.drive_tcp(id, PendingAck::Queue, out, |conn, emit, ops| match ev {
            HostEvent::Connected { result, .. } => conn.on_connected(result, now, emit, ops),
            HostEvent::Sent { result, .. } => conn.on_sent(result, now, emit, ops),
            HostEvent::Received { result, .. } => conn.on_received(result, now, emit, ops),
        });
    }

    // ─────────────────────────────── timers ────────────────────────────

    /// End of a batch and timers: send pending ACKs, retransmit, expire idle
    /// flows and stale fragments. Returns when it next needs to run.
    pub fn poll(&mut self, now: Instant, out: &mut Actions) -> Option<Instant> {
        let mut acks = std::mem::take(&mut self.ack_list);
        acks.sort_unstable();
        acks.dedup();
        for id in acks.drain(..) {
            self.drive_tcp(id, PendingAck::Leave, out, |conn, emit, _| {
                conn.flush_ack(emit);
                Verdict::Keep
            });
        }
        self.ack_list = acks;
        self.delayed_acks(now, out);
        self.wake_mem_waiters(out);
        self.ra_timer(now, out);

        if now >= self.next_scan {
            self.next_scan = now + TIMER_SCAN;
            self.reasm.expire(now);
            self.count_frag_losses();
            for id in self.flows.ids() {
                match self.flows.get(id) {
                    Some((_, FlowState::Tcp(conn)))
                        if conn.deadline().is_some_and(|d| d <= now) =>
                    {
                        self.drive_tcp(id, PendingAck::Leave, out, |conn, emit, ops| {
                            conn.on_timer(now, emit, ops)
                        });
                    }
                    Some((_, FlowState::Dgram(f))) if now.since(f.last_active) >= f.timeout => {
                        out.ops.push(SockOp::Close {
                            flow: id,
                            reset: false,
                        });
                        self.flows.remove(id);
                    }
                    _ => {}
                }
            }
        }
        self.next_deadline()
    }

    /// When [`Stack::poll`] next has work, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.ack_list.is_empty() || !self.delack_new.is_empty() {
            return Some(Instant::ZERO);
        }
        let delack = self.delack.iter().map(|&(t, _)| t).min();
        if self.flows.is_empty() && self.reasm.held_bytes() == 0 {
            return self.next_ra;
        }
        let next = self
            .next_ra
            .map_or(self.next_scan, |t| t.min(self.next_scan));
        Some(delack.map_or(next, |t| t.min(next)))
    }

    /// Reset every flow (the guest went away): RST the host peers.
    pub fn reset_all(&mut self, out: &mut Actions) {
        for id in self.flows.ids() {
            out.ops.push(SockOp::Close {
                flow: id,
                reset: true,
            });
            self.flows.remove(id);
        }
    }
}

#[cfg(test)]
mod tests;
