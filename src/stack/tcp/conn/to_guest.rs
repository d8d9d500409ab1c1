//! Host → guest: the `Recv` path, segments to the guest, their ACKs and
//! retransmission.
//!
//! What the host socket returns ([`Conn::on_received`]) is queued in
//! `to_guest` and sent as segments within the guest's window
//! ([`Conn::transmit`]); the guest's ACKs free it ([`Conn::on_ack`]). A
//! lost segment is sent again after three duplicate ACKs or on the
//! retransmission timer ([`Conn::on_timer`]), which also probes a zero
//! window and retries an unanswered SYN toward the guest.

use super::*;

impl Conn {
    /// ACK processing for the host → guest direction.
    pub(super) fn on_ack(
        &mut self,
        ack: SeqNumber,
        seg: &TcpRepr<'_>,
        now: Instant,
        emit: &mut Emit<'_>,
    ) {
        let wnd = usize::from(seg.window_len) << self.snd_wscale;
        if wnd == 0 {
            // The guest answers (a probe) but its application is not
            // reading: it is alive, so persist without ever giving up.
            self.retries = 0;
        }
        let fin_seq = self.snd_una + self.to_guest_len;
        let max_ack = if self.fin_sent {
            fin_seq + 1usize
        } else {
            self.snd_nxt.max(self.snd_una)
        };
        if ack > max_ack {
            // ACK for data we never sent: answer with an ACK (RFC 9293 §3.10.7.4).
            self.send_ack(emit);
            return;
        }
        if ack > self.snd_una {
            let acked = usize::try_from(ack - self.snd_una).unwrap_or(0);
            let data_acked = acked.min(self.to_guest_len);
            self.consume_to_guest(data_acked);
            if self.fin_sent && ack == fin_seq + 1usize {
                self.fin_acked = true;
            }
            self.snd_una = ack;
            if self.snd_nxt < self.snd_una {
                self.snd_nxt = self.snd_una;
            }
            self.dup_acks = 0;
            self.retries = 0;
            self.rto = RTO_MIN;
            self.snd_wnd = wnd;
            if self.snd_nxt == self.snd_una && (!self.fin_sent || self.fin_acked) {
                self.rto_deadline = None;
            } else {
                self.arm_rto(now);
            }
        } else if ack == self.snd_una {
            let in_flight = self.snd_nxt > self.snd_una;
            if seg.payload.is_empty() && !seg.flags.fin && wnd == self.snd_wnd && in_flight {
                // RFC 5681 §2 duplicate ACK.
                self.dup_acks += 1;
                if self.dup_acks == 3 {
                    self.rewind();
                }
            } else {
                self.snd_wnd = wnd;
            }
        }
    }

    /// Forget the first `n` bytes of `to_guest` (the guest ACKed them),
    /// giving back each chunk that is wholly acknowledged.
    pub(super) fn consume_to_guest(&mut self, mut n: usize) {
        self.to_guest_len -= n;
        while n > 0 {
            let Some(front) = self.to_guest.front() else {
                break;
            };
            let left = front.len() - self.to_guest_head;
            if n < left {
                self.to_guest_head += n;
                break;
            }
            n -= left;
            let cost = front.capacity() + CHUNK_OVERHEAD;
            if let Some(acked) = self.to_guest.pop_front() {
                drop(chunks::give(acked));
            }
            self.to_guest_head = 0;
            self.to_guest_mem -= cost;
            self.mem.release(cost);
        }
    }

    /// The bytes of `to_guest` from `off` (relative to `snd_una`) to the
    /// end of the chunk holding `off`; empty at or past the end.
    pub(super) fn to_guest_at(&self, off: usize) -> &[u8] {
        let mut off = off + self.to_guest_head;
        for c in &self.to_guest {
            if off < c.len() {
                return &c[off..];
            }
            off -= c.len();
        }
        &[]
    }

    /// Go back to the oldest unacknowledged byte (fast retransmit or RTO).
    pub(super) fn rewind(&mut self) {
        self.snd_nxt = self.snd_una;
        if self.fin_sent && !self.fin_acked {
            self.fin_sent = false;
        }
    }

    pub(super) fn arm_rto(&mut self, now: Instant) {
        self.rto_deadline = Some(now + self.rto);
    }

    /// Issue a `Recv` when there is room for more host data.
    pub(super) fn maybe_recv(&mut self, ops: &mut Vec<SockOp>) {
        if self.receiving || self.host_eof || self.state == State::Closed {
            return;
        }
        let room = TO_GUEST_CAP.saturating_sub(self.to_guest_len);
        if room < self.mss.min(TO_GUEST_CAP / 4) {
            return;
        }
        // The read's buffer is reserved before it is posted; short of
        // budget the read shrinks, and below RECV_MIN it waits (the host
        // socket's buffer fills and the peer's window closes).
        let want = room.min(self.recv_size).min(RECV_CHUNK);
        let max = if self.mem.try_reserve(want) {
            want
        } else {
            self.mem.note_recv_deferred();
            let got = self.mem.reserve_up_to(want);
            if got < want.min(RECV_MIN) {
                self.mem.release(got);
                self.mem_wait = true;
                return;
            }
            got
        };
        self.recv_mem = max;
        self.receiving = true;
        ops.push(SockOp::Recv {
            flow: self.flow,
            max,
        });
    }

    /// The host socket returned data (or end of stream, or an error).
    pub fn on_received(
        &mut self,
        result: Result<Vec<u8>, Errno>,
        now: Instant,
        emit: &mut Emit<'_>,
        ops: &mut Vec<SockOp>,
    ) -> Verdict {
        if self.state == State::Closed {
            return Verdict::Remove;
        }
        self.receiving = false;
        let posted = std::mem::take(&mut self.recv_mem);
        self.mem.release(posted);
        match result {
            Ok(data) if data.is_empty() => self.host_eof = true,
            Ok(data) => {
                // Reads that fill their buffer grow the next one; reads
                // that come back mostly empty shrink it.
                if data.len() >= posted {
                    self.recv_size = (self.recv_size * 2).min(RECV_CHUNK);
                } else if data.len() < self.recv_size / 4 {
                    self.recv_size = (self.recv_size / 2).max(RECV_MIN);
                }
                self.push_to_guest(data);
            }
            Err(_) => return self.abort(emit, ops),
        }
        self.transmit(now, emit);
        self.maybe_recv(ops);
        self.check_done(emit, ops)
    }

    /// Keep a host read's buffer in `to_guest`, accounted by its capacity
    /// (trimmed to its length first: an in-place shrink). The budget
    /// reserved for the read covered it; this is the same memory, so the
    /// reservation is forced (it only differs by the bookkeeping overhead).
    pub(super) fn push_to_guest(&mut self, mut data: Vec<u8>) {
        self.to_guest_len += data.len();
        if data.len() < SMALL_CHUNK
            && let Some(back) = self.to_guest.back_mut()
            && back.len() < SMALL_CHUNK
        {
            let before = back.capacity();
            back.reserve_exact(data.len());
            back.extend_from_slice(&data);
            let grown = back.capacity() - before;
            self.to_guest_mem += grown;
            self.mem.force_reserve(grown);
            return;
        }
        if data.capacity() == chunks::CHUNK && data.len() < chunks::CHUNK / 2 {
            // A pool chunk less than half full: its bytes move to a buffer
            // of their size and the chunk goes back to the pool. Shrinking
            // it in place unmapped the rest (the chunk is above the pinned
            // mmap threshold), and the next read faulted fresh pages in:
            // measured (uipd-perf TCP_MAERTS), page faults under the reads
            // were 2.5% of all samples, and host → guest throughput fell by
            // a fifth to two fifths once reads came back part-full.
            let small = data.to_vec();
            drop(chunks::give(data));
            data = small;
        } else if data.capacity() > data.len() && data.capacity() != chunks::CHUNK {
            // A pool chunk at least half full stays whole (so it goes back
            // to the pool once ACKed); other buffers shrink to their bytes.
            data.shrink_to_fit();
        }
        let cost = data.capacity() + CHUNK_OVERHEAD;
        self.to_guest_mem += cost;
        self.mem.force_reserve(cost);
        self.to_guest.push_back(data);
    }

    /// Send what the guest's window allows, then FIN if the host is done.
    pub(super) fn transmit(&mut self, now: Instant, emit: &mut Emit<'_>) {
        if self.state != State::Established {
            return;
        }
        let end = self.snd_una + self.to_guest_len;
        let wnd_edge = self.snd_una + self.snd_wnd;
        let mut sent_any = false;
        while self.snd_nxt < end && self.snd_nxt < wnd_edge {
            let off = usize::try_from(self.snd_nxt - self.snd_una).unwrap_or(0);
            let avail = usize::try_from(end - self.snd_nxt).unwrap_or(0);
            let wnd_left = usize::try_from(wnd_edge - self.snd_nxt).unwrap_or(0);
            let slice = self.to_guest_at(off);
            if slice.is_empty() {
                break;
            }
            let len = self.max_seg.min(avail).min(wnd_left).min(slice.len());
            let last = len == avail;
            let seq = self.snd_nxt;
            let repr = self.segment(
                seq,
                Flags {
                    psh: last,
                    ..Flags::default()
                },
                &slice[..len],
            );
            emit(&repr);
            self.snd_nxt = self.snd_nxt + len;
            sent_any = true;
        }
        if sent_any {
            self.ack_pending = false;
            self.note_advertised();
        }
        if self.host_eof && !self.fin_sent && self.snd_nxt == end {
            let repr = self.segment(
                end,
                Flags {
                    fin: true,
                    ..Flags::default()
                },
                &[],
            );
            emit(&repr);
            self.fin_sent = true;
            self.snd_nxt = end + 1usize;
            self.ack_pending = false;
            self.note_advertised();
            sent_any = true;
        }
        // Persist timer (RFC 9293 §3.8.6.1): data waits behind a zero
        // window and nothing is in flight, so no ACK is coming that would
        // reopen it if the guest's window update was lost (a full TAP
        // queue drops frames). The RTO path probes with one byte.
        let waiting = self.snd_nxt < end && self.snd_nxt >= wnd_edge;
        if (sent_any || waiting) && self.rto_deadline.is_none() {
            self.arm_rto(now);
        }
    }

    /// Send the ACK the batch left pending.
    pub fn flush_ack(&mut self, emit: &mut Emit<'_>) {
        if self.ack_pending && matches!(self.state, State::Established | State::SynAckSent) {
            self.send_ack(emit);
        }
    }

    /// Timers: retransmission, zero-window probe, handshake.
    pub fn on_timer(
        &mut self,
        now: Instant,
        emit: &mut Emit<'_>,
        ops: &mut Vec<SockOp>,
    ) -> Verdict {
        let Some(deadline) = self.rto_deadline else {
            return Verdict::Keep;
        };
        if now < deadline || self.state == State::Closed {
            return Verdict::Keep;
        }
        self.retries += 1;
        if self.state == State::SynSent && self.retries > SYN_RETRIES {
            log::debug!(
                "tcp flow {:?}: the guest did not answer {} SYNs, closing",
                self.flow,
                self.retries
            );
            ops.push(SockOp::Close {
                flow: self.flow,
                reset: true,
            });
            self.state = State::Closed;
            return Verdict::Remove;
        }
        if self.retries > MAX_RETRIES {
            log::debug!(
                "tcp flow {:?}: {} retransmissions without progress, reset",
                self.flow,
                self.retries
            );
            return self.abort(emit, ops);
        }
        self.rto = (self.rto * 2).min(RTO_MAX);
        self.rto_deadline = None;
        match self.state {
            State::SynAckSent => {
                self.send_syn_ack(emit);
                self.arm_rto(now);
            }
            State::SynSent => {
                self.send_syn(emit);
                self.arm_rto(now);
            }
            State::Established => {
                self.rewind();
                if self.snd_wnd == 0 && self.to_guest_len > 0 {
                    // Zero-window probe (RFC 9293 §3.8.6.1): one byte past the window.
                    self.snd_wnd = 1;
                    self.transmit(now, emit);
                    self.snd_wnd = 0;
                } else {
                    self.transmit(now, emit);
                }
                if self.rto_deadline.is_none() {
                    self.arm_rto(now);
                }
            }
            State::Connecting | State::Closed => {}
        }
        Verdict::Keep
    }
}
