//! One translated TCP connection: the guest's TCP on one side, a host stream
//! socket on the other.
//!
//! # Theory of operation
//!
//! uipd does not terminate the guest's TCP in a full stack of its own. The
//! host kernel does the real TCP toward the peer; this state machine only
//! speaks enough TCP toward the guest to move bytes between the guest and
//! the host socket, over a link (the TAP or virtqueue) that is local and
//! lossless except when a ring is full.
//!
//! ```text
//!            guest ─ segments ─►  to_host: bounded queue ── Send ──► host socket
//!   (rcv_nxt, our window)         [ack'd to guest, unsent]          (one Send in flight)
//!
//!            guest ◄─ segments ─  to_guest: bounded queue ◄─ Recv ── host socket
//!   (snd_una..snd_nxt, its wnd)   [read, unacked by guest]          (one Recv in flight)
//! ```
//!
//! Guest → host. A segment's payload is appended to `to_host` and ACKed at
//! once; the window we advertise is the queue's free space, so the guest can
//! never send more than uipd holds (`TO_HOST_CAP`). The queue is a list of
//! chunks ([`SEND_CHUNK`]), and a chunk becomes a `Send`'s buffer as it is:
//! the payload is copied once, from the frame into the chunk (a byte ring
//! cost a second copy into each `Send`, measured at 14% of a worker's time
//! in a bulk upload). So the `Send` no longer shares its bytes with the
//! queue, and the I/O layer finishes a `Send` the socket took only part of
//! before it answers; a short count is a failed socket (the connection is
//! reset, nothing is silently lost). When the queue drains, a window update
//! reopens the window. (passt ACKs only what the socket took because it keeps no buffer;
//! with a bounded queue, ACK-on-queue is ordinary receiver behaviour and
//! keeps the guest's congestion window from collapsing on a slow peer.)
//!
//! Host → guest. Bytes read from the host stay in `to_guest` until the guest
//! ACKs them, so retransmission (three duplicate ACKs, or the RTO) replays
//! from `snd_una` (go-back-N: the link reorders nothing). `Recv` is issued
//! only while `to_guest` has room, which is the backpressure toward the host
//! peer. Segments respect the guest's MSS and its scaled window; when the
//! link cuts TSO super-frames, [`Conn::set_max_segment`] lets one segment
//! carry many MSS worth of payload (the MSS stays the guest's: it is the
//! super-frame's `gso_size`).
//!
//! Close. Guest FIN → `shutdown(SHUT_WR)` once `to_host` is drained. Host EOF
//! → FIN to the guest once `to_guest` is all sent. When both FINs are done
//! (ours ACKed) the socket is closed and the flow forgotten; the guest keeps
//! TIME-WAIT. RST from the guest → abortive close (`SO_LINGER` 0) so the host
//! peer sees RST; a host error → RST to the guest. A refused connect becomes
//! a RST answering the guest's SYN: the SYN-ACK is sent only after the host
//! connect succeeds, so the guest sees exactly what the host saw.
//!
//! Inbound (a published port, [`Conn::new_to_guest`]). The host connection
//! is already accepted; uipd sends the guest a SYN ([`State::SynSent`]),
//! retransmitted with backoff at most [`SYN_RETRIES`] times. The guest's
//! SYN-ACK sets `rcv_nxt`, its MSS and window scale, and is ACKed: from
//! there the connection is the same translation as an outbound one. A RST
//! from the guest (nothing listens) or no answer closes the host socket
//! with RST, so the host client sees the refusal.
//!
//! Layout: this file holds the state, the handshake and the guest's
//! segments ([`Conn::on_segment`]); `to_host.rs` the guest → host path
//! (receive window, `Send`s), `to_guest.rs` the host → guest path
//! (`Recv`s, segments, ACKs, retransmission); `tests.rs` the scripts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::stack::flow::FlowId;
use crate::stack::mem::{CHUNK_OVERHEAD, MemBudget, chunks};
use crate::stack::ops::{Errno, SockOp};
use crate::stack::time::Instant;
use crate::stack::wire::tcp::{Flags, Repr as TcpRepr, SeqNumber};

/// Longest an ACK of a little data waits for data to the guest to carry it
/// ([`Conn::ack_delayable`]): long enough for a host on loopback or a LAN
/// to answer a request (netperf's TCP_RR replies in 30-80 us here), short
/// enough that a guest whose Nagle holds its next small segment until this
/// ACK loses half a millisecond, not the 40 ms of a kernel's delayed ACK.
pub const DELAYED_ACK: Duration = Duration::from_micros(500);

/// Most bytes queued from the guest toward the host socket (our receive window).
pub const TO_HOST_CAP: usize = 4 << 20;
/// Most bytes read from the host and not yet acknowledged by the guest.
pub const TO_GUEST_CAP: usize = 4 << 20;
/// Largest single host read.
pub const RECV_CHUNK: usize = 256 << 10;
/// First host read of a connection: reads grow (doubling up to
/// [`RECV_CHUNK`]) while they come back full and shrink when they come back
/// mostly empty, so an idle connection holds a small buffer in its `Recv`
/// and a bulk one a large one.
pub const RECV_INIT: usize = 16 << 10;
/// Smallest host read worth posting when the memory budget is short.
pub const RECV_MIN: usize = 4 << 10;
/// Host reads shorter than this are appended to the previous short chunk
/// of `to_guest` (a trickle of tiny reads would otherwise hold one
/// allocation per byte or two).
const SMALL_CHUNK: usize = 2 << 10;
/// Largest chunk of `to_host`, so the largest single host write. Bytes that
/// arrive while a `Send` is in flight fill chunks of this capacity (a bulk
/// upload); a segment that arrives with none in flight gets a chunk of its
/// own size and goes out at once. Chunks never grow past their first
/// capacity: a reallocation would copy.
pub const SEND_CHUNK: usize = 256 << 10;
/// Window scale we offer when the guest offers one (2^7 × 65535 ≈ 8 MiB ≥ caps).
pub const OUR_WSCALE: u8 = 7;
/// Initial and minimum retransmission timeout (a local link: RFC 6298's 1 s
/// floor is for the Internet; Linux uses 200 ms).
pub const RTO_MIN: Duration = Duration::from_millis(200);
/// Largest retransmission timeout.
pub const RTO_MAX: Duration = Duration::from_secs(30);
/// Retransmissions of the same data before the connection is reset.
pub const MAX_RETRIES: u32 = 12;
/// MSS assumed when the guest sends none (RFC 9293 §3.7.1).
pub const DEFAULT_MSS: u16 = 536;
/// Retransmissions of our SYN to the guest before an inbound connection is
/// given up (200 ms doubling: about 12 s in all).
pub const SYN_RETRIES: u32 = 5;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Guest SYN seen; the host connect is in flight.
    Connecting,
    /// Inbound: our SYN sent to the guest; waiting for its SYN-ACK.
    SynSent,
    /// SYN-ACK sent; waiting for the guest's ACK.
    SynAckSent,
    /// Data may flow (either side may have half-closed).
    Established,
    /// Gone: the flow must be removed (a `Close` was issued).
    Closed,
}

/// What a guest segment or host event asks the stack to do about the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the flow.
    Keep,
    /// The connection is over; remove the flow (its `Close` op was issued).
    Remove,
}

/// A segment to send to the guest: a [`TcpRepr`] whose ports the stack fills
/// in. Produced through the `emit` callback so payloads are borrowed straight
/// from the connection's queue.
pub type Emit<'e> = dyn FnMut(&TcpRepr<'_>) + 'e;

/// One translated connection.
#[derive(Debug)]
pub struct Conn {
    flow: FlowId,
    state: State,

    // Guest → host.
    /// Next sequence number expected from the guest.
    rcv_nxt: SeqNumber,
    /// Bytes received from the guest and not yet in a `Send`, in chunks
    /// of at most [`SEND_CHUNK`] bytes; each becomes one `Send`'s buffer.
    to_host: VecDeque<Vec<u8>>,
    /// Bytes in `to_host` and in the `Send` in flight: what uipd holds.
    to_host_len: usize,
    /// Budget reserved for `to_host` and the `Send` in flight (chunk
    /// capacities plus [`CHUNK_OVERHEAD`] each).
    to_host_mem: usize,
    /// Bytes in the `Send` in flight (0 = none in flight).
    sending: usize,
    /// Budget held by the `Send` in flight (part of `to_host_mem`).
    sending_mem: usize,
    /// The guest sent FIN (counted in `rcv_nxt`).
    guest_fin: bool,
    /// `shutdown(SHUT_WR)` was issued.
    host_shut: bool,
    /// Window scale the guest accepts from us (0 if it sent no option).
    our_wscale: u8,
    /// Right edge of the window last advertised (to detect a reopening).
    adv_right_edge: SeqNumber,
    /// An ACK to the guest is due: at the end of the batch, or within
    /// [`DELAYED_ACK`] when it may wait ([`Conn::ack_delayable`]).
    ack_pending: bool,
    /// The pending ACK may not wait (a full segment's worth of data, a FIN,
    /// a window the guest is about to run out of, a duplicate, a window
    /// update).
    ack_now: bool,
    /// `rcv_nxt` as of the last segment we sent (each carries the ACK).
    acked_nxt: SeqNumber,

    // Host → guest.
    /// Our initial sequence number.
    iss: SeqNumber,
    /// Oldest byte the guest has not acknowledged (start of `to_guest`).
    snd_una: SeqNumber,
    /// Next byte to send.
    snd_nxt: SeqNumber,
    /// Bytes read from the host, from `snd_una` on: the `Recv` buffers
    /// themselves (no copy), the first one from `to_guest_head` on.
    to_guest: VecDeque<Vec<u8>>,
    /// Bytes in `to_guest` from `to_guest_head` on.
    to_guest_len: usize,
    /// Bytes of the first chunk of `to_guest` the guest already ACKed.
    to_guest_head: usize,
    /// Budget reserved for `to_guest` (capacities plus overhead).
    to_guest_mem: usize,
    /// Size of the next `Recv` (adapts; see [`RECV_INIT`]).
    recv_size: usize,
    /// Budget reserved for the `Recv` in flight.
    recv_mem: usize,
    /// Guest's advertised window in bytes (scaled).
    snd_wnd: usize,
    /// Shift to apply to the guest's window field.
    snd_wscale: u8,
    /// Guest MSS (clamped to what the MTU allows).
    mss: usize,
    /// Largest payload of one segment we emit: `mss`, or a multiple of it
    /// when the link takes TSO super-frames ([`Conn::set_max_segment`]).
    max_seg: usize,
    /// A `Recv` is in flight.
    receiving: bool,
    /// The host socket reached end of stream.
    host_eof: bool,
    /// Our FIN has been sent (it occupies `snd_una + to_guest_len`).
    fin_sent: bool,
    /// The guest acknowledged our FIN.
    fin_acked: bool,
    /// Consecutive duplicate ACKs.
    dup_acks: u32,
    /// When the oldest unacknowledged data times out.
    rto_deadline: Option<Instant>,
    /// Current RTO.
    rto: Duration,
    /// Retransmissions without progress.
    retries: u32,

    /// The flows' shared memory budget.
    mem: Arc<MemBudget>,
    /// The budget refused this connection something (a window, a `Recv`,
    /// bytes): the stack calls [`Conn::on_memory`] once memory is free.
    mem_wait: bool,
}

impl Drop for Conn {
    /// A connection gone (closed, reset, the flow table torn down) gives
    /// back everything it reserved.
    fn drop(&mut self) {
        self.mem
            .release(self.to_host_mem + self.to_guest_mem + self.recv_mem);
        self.mem.unregister();
    }
}

impl Conn {
    /// A connection for a guest SYN: `syn` is the parsed SYN, `iss` our ISN,
    /// `mtu` the guest link MTU. The caller issues the host `Open`.
    pub fn new(
        flow: FlowId,
        syn: &TcpRepr<'_>,
        iss: SeqNumber,
        mtu: usize,
        mem: Arc<MemBudget>,
    ) -> Conn {
        let link_mss = mtu.saturating_sub(40).max(64);
        let mss = usize::from(syn.max_seg_size.unwrap_or(DEFAULT_MSS)).clamp(64, link_mss);
        let (our_wscale, snd_wscale) = match syn.window_scale {
            Some(ws) => (OUR_WSCALE, ws.min(14)),
            None => (0, 0),
        };
        let rcv_nxt = syn.seq_number + 1usize;
        mem.register();
        Conn {
            flow,
            state: State::Connecting,
            rcv_nxt,
            to_host: VecDeque::new(),
            to_host_len: 0,
            to_host_mem: 0,
            sending: 0,
            sending_mem: 0,
            guest_fin: false,
            host_shut: false,
            our_wscale,
            adv_right_edge: rcv_nxt,
            ack_pending: false,
            ack_now: false,
            acked_nxt: rcv_nxt,
            iss,
            snd_una: iss,
            snd_nxt: iss,
            to_guest: VecDeque::new(),
            to_guest_len: 0,
            to_guest_head: 0,
            to_guest_mem: 0,
            recv_size: RECV_INIT,
            recv_mem: 0,
            snd_wnd: usize::from(syn.window_len),
            snd_wscale,
            mss,
            max_seg: mss,
            receiving: false,
            host_eof: false,
            fin_sent: false,
            fin_acked: false,
            dup_acks: 0,
            rto_deadline: None,
            rto: RTO_MIN,
            retries: 0,
            mem,
            mem_wait: false,
        }
    }

    /// An inbound connection (a host client accepted on a published port):
    /// `iss` our ISN, `mtu` the guest link MTU. Emits the SYN to the guest
    /// and arms its retransmission; the host socket is already connected.
    pub fn new_to_guest(
        flow: FlowId,
        iss: SeqNumber,
        mtu: usize,
        now: Instant,
        mem: Arc<MemBudget>,
        emit: &mut Emit<'_>,
    ) -> Conn {
        let link_mss = mtu.saturating_sub(40).max(64);
        mem.register();
        let mut c = Conn {
            flow,
            state: State::SynSent,
            rcv_nxt: SeqNumber(0),
            to_host: VecDeque::new(),
            to_host_len: 0,
            to_host_mem: 0,
            sending: 0,
            sending_mem: 0,
            guest_fin: false,
            host_shut: false,
            our_wscale: OUR_WSCALE,
            adv_right_edge: SeqNumber(0),
            ack_pending: false,
            ack_now: false,
            acked_nxt: SeqNumber(0),
            iss,
            snd_una: iss,
            snd_nxt: iss + 1usize,
            to_guest: VecDeque::new(),
            to_guest_len: 0,
            to_guest_head: 0,
            to_guest_mem: 0,
            recv_size: RECV_INIT,
            recv_mem: 0,
            snd_wnd: 0,
            snd_wscale: 0,
            mss: link_mss,
            max_seg: link_mss,
            receiving: false,
            host_eof: false,
            fin_sent: false,
            fin_acked: false,
            dup_acks: 0,
            rto_deadline: None,
            rto: RTO_MIN,
            retries: 0,
            mem,
            mem_wait: false,
        };
        c.send_syn(emit);
        c.arm_rto(now);
        c
    }

    /// Our SYN toward the guest (inbound connections): MSS of the link and
    /// our window scale offered; no ACK.
    pub(super) fn send_syn(&mut self, emit: &mut Emit<'_>) {
        let repr = TcpRepr {
            src_port: 0,
            dst_port: 0,
            flags: Flags {
                syn: true,
                ..Flags::default()
            },
            seq_number: self.iss,
            ack_number: None,
            // RFC 7323 §2.2: the window field of a SYN is never scaled.
            window_len: u16::try_from(self.rcv_wnd()).unwrap_or(u16::MAX),
            max_seg_size: Some(u16::try_from(self.mss).unwrap_or(u16::MAX)),
            window_scale: Some(OUR_WSCALE),
            sack_permitted: false,
            payload: &[],
        };
        emit(&repr);
    }

    /// The guest's answer to our SYN (state `SynSent`).
    pub(super) fn on_syn_sent(
        &mut self,
        seg: &TcpRepr<'_>,
        emit: &mut Emit<'_>,
        ops: &mut Vec<SockOp>,
    ) -> Verdict {
        let acks_syn = seg.ack_number == Some(self.iss + 1usize);
        if seg.flags.rst {
            // RFC 9293 §3.10.7.3: a RST is acceptable in SYN-SENT if it
            // ACKs our SYN. Nothing listens: the host client sees RST.
            if acks_syn {
                ops.push(SockOp::Close {
                    flow: self.flow,
                    reset: true,
                });
                self.state = State::Closed;
                return Verdict::Remove;
            }
            return Verdict::Keep;
        }
        if !(seg.flags.syn && acks_syn) {
            // Not a SYN-ACK for our SYN: a stale or bogus segment. An ACK
            // of something else gets a RST (RFC 9293 §3.10.7.3).
            if let Some(ack) = seg.ack_number.filter(|_| !acks_syn) {
                let repr = TcpRepr {
                    src_port: 0,
                    dst_port: 0,
                    flags: Flags {
                        rst: true,
                        ..Flags::default()
                    },
                    seq_number: ack,
                    ack_number: None,
                    window_len: 0,
                    max_seg_size: None,
                    window_scale: None,
                    sack_permitted: false,
                    payload: &[],
                };
                emit(&repr);
            }
            return Verdict::Keep;
        }
        let link_mss = self.mss;
        self.mss = usize::from(seg.max_seg_size.unwrap_or(DEFAULT_MSS)).clamp(64, link_mss);
        self.max_seg = self.mss;
        match seg.window_scale {
            Some(ws) => self.snd_wscale = ws.min(14),
            // RFC 7323 §1.3: scaling needs both sides' option.
            None => self.our_wscale = 0,
        }
        self.rcv_nxt = seg.seq_number + 1usize;
        // RFC 7323 §2.2: the SYN-ACK's window is not scaled.
        self.snd_wnd = usize::from(seg.window_len);
        self.snd_una = self.iss + 1usize;
        self.snd_nxt = self.snd_una;
        self.state = State::Established;
        self.rto_deadline = None;
        self.retries = 0;
        self.rto = RTO_MIN;
        self.send_ack(emit);
        self.maybe_recv(ops);
        Verdict::Keep
    }

    /// The connection's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The MSS used toward the guest.
    pub fn mss(&self) -> usize {
        self.mss
    }

    /// Let segments to the guest carry up to `max` bytes of payload (rounded
    /// down to a multiple of the MSS, never below one MSS): the link cuts
    /// them at the MSS (TSO). The MSS itself, the window checks, PSH on the
    /// last segment and retransmission are unchanged; a segment may still
    /// be shorter (window, queue end, the queue's ring wrapping).
    pub fn set_max_segment(&mut self, max: usize) {
        self.max_seg = (max / self.mss * self.mss).max(self.mss);
    }

    /// Largest payload of one segment to the guest.
    pub fn max_segment(&self) -> usize {
        self.max_seg
    }

    /// Bytes waiting for the host socket.
    pub fn queued_to_host(&self) -> usize {
        self.to_host_len
    }

    /// Bytes read from the host and not yet acknowledged by the guest.
    pub fn unacked_to_guest(&self) -> usize {
        self.to_guest_len
    }

    /// Bytes of the memory budget this connection holds.
    pub fn held_memory(&self) -> usize {
        self.to_host_mem + self.to_guest_mem + self.recv_mem
    }

    /// True once if the budget refused this connection something since the
    /// last call: the stack then keeps it on its list of waiters.
    pub fn take_mem_wait(&mut self) -> bool {
        std::mem::take(&mut self.mem_wait)
    }

    /// Earliest timer of this connection.
    pub fn deadline(&self) -> Option<Instant> {
        self.rto_deadline
    }

    /// True if an ACK is waiting for [`Conn::flush_ack`].
    pub fn ack_pending(&self) -> bool {
        self.ack_pending
    }

    /// True if the pending ACK may wait up to [`DELAYED_ACK`]: it covers
    /// less than one full segment of fresh data (a request; RFC 9293
    /// §3.8.6.3 would allow two) and nothing else is owed. The data we send the guest in the meantime
    /// (a reply, typically) carries it, so a request/response exchange
    /// costs one frame to the guest, not two.
    pub fn ack_delayable(&self) -> bool {
        self.ack_pending && !self.ack_now
    }

    /// A bare segment from us with the current ACK and window.
    fn segment<'p>(&self, seq: SeqNumber, flags: Flags, payload: &'p [u8]) -> TcpRepr<'p> {
        TcpRepr {
            src_port: 0,
            dst_port: 0,
            flags,
            seq_number: seq,
            ack_number: Some(self.rcv_nxt),
            window_len: self.window_field(),
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            payload,
        }
    }

    pub(super) fn send_ack(&mut self, emit: &mut Emit<'_>) {
        let seq = self.snd_nxt;
        let repr = self.segment(seq, Flags::default(), &[]);
        emit(&repr);
        self.note_advertised();
        self.ack_pending = false;
    }

    pub(super) fn note_advertised(&mut self) {
        self.acked_nxt = self.rcv_nxt;
        self.ack_now = false;
        let wnd = usize::from(self.window_field()) << self.our_wscale;
        self.adv_right_edge = self.rcv_nxt + wnd;
        if self.rcv_wnd() < self.queue_wnd() && !self.guest_fin {
            // The budget, not the queue, set this window: reopen it with a
            // window update once memory is free.
            if !self.mem_wait {
                self.mem.note_window_limited();
            }
            self.mem_wait = true;
        }
    }

    pub(super) fn send_syn_ack(&mut self, emit: &mut Emit<'_>) {
        let mut repr = self.segment(
            self.iss,
            Flags {
                syn: true,
                ..Flags::default()
            },
            &[],
        );
        repr.max_seg_size = Some(u16::try_from(self.mss).unwrap_or(u16::MAX));
        if self.our_wscale != 0 {
            repr.window_scale = Some(self.our_wscale);
        }
        // RFC 7323 §2.2: the window field of a SYN is never scaled.
        repr.window_len = u16::try_from(self.rcv_wnd()).unwrap_or(u16::MAX);
        emit(&repr);
        self.note_advertised();
    }

    /// A RST answering the current state (guest sees the connection reset).
    pub(super) fn send_rst(&self, emit: &mut Emit<'_>) {
        let mut repr = self.segment(
            self.snd_nxt,
            Flags {
                rst: true,
                ..Flags::default()
            },
            &[],
        );
        repr.window_len = 0;
        emit(&repr);
    }

    /// Abort: RST to the guest, RST to the host peer, flow gone.
    pub(super) fn abort(&mut self, emit: &mut Emit<'_>, ops: &mut Vec<SockOp>) -> Verdict {
        if self.state != State::Closed {
            self.send_rst(emit);
            ops.push(SockOp::Close {
                flow: self.flow,
                reset: true,
            });
            self.state = State::Closed;
        }
        Verdict::Remove
    }

    /// The host connect finished.
    pub fn on_connected(
        &mut self,
        result: Result<(), Errno>,
        now: Instant,
        emit: &mut Emit<'_>,
        ops: &mut Vec<SockOp>,
    ) -> Verdict {
        if self.state != State::Connecting {
            return Verdict::Keep;
        }
        match result {
            Ok(()) => {
                self.state = State::SynAckSent;
                self.snd_nxt = self.iss + 1usize;
                self.send_syn_ack(emit);
                self.arm_rto(now);
                self.maybe_recv(ops);
                Verdict::Keep
            }
            Err(_) => {
                // The guest's SYN was never answered, so a RST with ACK of the
                // SYN is the refusal (RFC 9293 §3.10.7.1).
                let repr = TcpRepr {
                    src_port: 0,
                    dst_port: 0,
                    flags: Flags {
                        rst: true,
                        ..Flags::default()
                    },
                    seq_number: SeqNumber(0),
                    ack_number: Some(self.rcv_nxt),
                    window_len: 0,
                    max_seg_size: None,
                    window_scale: None,
                    sack_permitted: false,
                    payload: &[],
                };
                emit(&repr);
                ops.push(SockOp::Close {
                    flow: self.flow,
                    reset: false,
                });
                self.state = State::Closed;
                Verdict::Remove
            }
        }
    }

    /// A segment from the guest for this connection.
    pub fn on_segment(
        &mut self,
        seg: &TcpRepr<'_>,
        now: Instant,
        emit: &mut Emit<'_>,
        ops: &mut Vec<SockOp>,
    ) -> Verdict {
        if self.state == State::Closed {
            return Verdict::Remove;
        }
        if self.state == State::SynSent {
            return self.on_syn_sent(seg, emit, ops);
        }
        if seg.flags.rst {
            // RFC 5961 §3.2, simplified: accept a RST whose sequence number
            // falls inside the window; ignore others.
            let off = seg.seq_number - self.rcv_nxt;
            if off >= 0 && off <= i64::try_from(self.rcv_wnd().max(1)).unwrap_or(i64::MAX) {
                ops.push(SockOp::Close {
                    flow: self.flow,
                    reset: true,
                });
                self.state = State::Closed;
                return Verdict::Remove;
            }
            return Verdict::Keep;
        }
        if seg.flags.syn {
            if seg.ack_number.is_none() && seg.seq_number + 1usize == self.rcv_nxt {
                // A retransmitted SYN: answer again if we already did.
                if self.state == State::SynAckSent {
                    self.send_syn_ack(emit);
                }
                return Verdict::Keep;
            }
            // A SYN inside a synchronized connection: challenge ACK (RFC 5961 §4).
            self.send_ack(emit);
            return Verdict::Keep;
        }
        let Some(ack) = seg.ack_number else {
            // RFC 9293 §3.10.7.4: segments without ACK are dropped.
            return Verdict::Keep;
        };
        match self.state {
            State::Connecting | State::SynSent => return Verdict::Keep,
            State::SynAckSent => {
                if ack != self.iss + 1usize {
                    return Verdict::Keep;
                }
                self.state = State::Established;
                self.snd_una = ack;
                self.rto_deadline = None;
                self.retries = 0;
                self.rto = RTO_MIN;
            }
            State::Established | State::Closed => {}
        }

        self.on_ack(ack, seg, now, emit);

        // Payload and FIN (guest → host).
        let payload_len = seg.payload.len();
        if payload_len > 0 || seg.flags.fin {
            let off = seg.seq_number - self.rcv_nxt;
            if off > 0 || self.guest_fin {
                // Out of order (the link lost a frame) or data after FIN:
                // a duplicate ACK asks for what is missing.
                self.send_ack(emit);
            } else {
                // `off <= 0`: skip what was already received.
                let skip = usize::try_from(-off).unwrap_or(usize::MAX);
                let mut fin = seg.flags.fin;
                if skip > payload_len {
                    // Entirely old (a retransmission): re-ACK.
                    self.ack_pending = true;
                    self.ack_now = true;
                } else {
                    let fresh = &seg.payload[skip..];
                    let fit = fresh.len().min(self.queue_wnd());
                    // What the budget cannot hold is dropped unACKed, like
                    // bytes beyond the window: the guest sends them again.
                    let take = self.push_to_host(&fresh[..fit]);
                    if take < fit {
                        self.mem.note_tcp_dropped(fit - take);
                        self.mem_wait = true;
                    }
                    if take < fresh.len() {
                        // Beyond our window: the rest is dropped, and so is a FIN behind it.
                        fin = false;
                    }
                    self.rcv_nxt = self.rcv_nxt + take;
                    if fin {
                        self.rcv_nxt = self.rcv_nxt + 1usize;
                        self.guest_fin = true;
                    }
                    self.ack_pending = true;
                    // The ACK waits only for less than one full segment
                    // unACKed (a request, not a bulk transfer), and while
                    // the guest still has two segments of window left
                    // (else it would stall waiting for it). Bulk data is
                    // ACKed at the end of each batch, as before delayed
                    // ACKs: the guest's ACK clock in a transfer stays as
                    // it was (RFC 9293 would allow every other segment).
                    let unacked = usize::try_from(self.rcv_nxt - self.acked_nxt).unwrap_or(0);
                    let room = usize::try_from(self.adv_right_edge - self.rcv_nxt).unwrap_or(0);
                    if fin || take < fresh.len() || unacked >= self.mss || room < 2 * self.mss {
                        self.ack_now = true;
                    }
                    self.maybe_send(ops);
                }
            }
        }

        self.transmit(now, emit);
        self.maybe_recv(ops);
        self.check_done(emit, ops)
    }

    /// Both directions finished: close the socket and forget the flow.
    /// The ACK the batch left pending (typically for the guest's FIN, when
    /// it is the last to close) goes out now: the flow will not be here
    /// for the end-of-batch flush, and without it the guest retransmits its
    /// FIN into a flow that no longer exists and gets a reset.
    pub(super) fn check_done(&mut self, emit: &mut Emit<'_>, ops: &mut Vec<SockOp>) -> Verdict {
        let guest_done = self.guest_fin && self.host_shut && self.sending == 0;
        let host_done = self.host_eof && self.fin_acked;
        if guest_done && host_done {
            self.flush_ack(emit);
            ops.push(SockOp::Close {
                flow: self.flow,
                reset: false,
            });
            self.state = State::Closed;
            return Verdict::Remove;
        }
        Verdict::Keep
    }

    /// Tear down from outside (flow table teardown, guest gone): RST the
    /// guest and the host peer.
    pub fn reset(&mut self, emit: &mut Emit<'_>, ops: &mut Vec<SockOp>) {
        let _ = self.abort(emit, ops);
    }
}

mod to_guest;
mod to_host;

#[cfg(test)]
mod tests;
