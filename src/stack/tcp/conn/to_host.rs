//! Guest → host: the receive window we advertise and the `Send` path.
//!
//! A guest segment's payload goes into `to_host` ([`Conn::push_to_host`]),
//! whose free space (capped by the connection's share of the memory
//! budget) is the window we advertise. One chunk at a time becomes a
//! `Send` ([`Conn::maybe_send`]); its completion ([`Conn::on_sent`]) frees
//! the chunk and may reopen the window with an update.

use super::*;

impl Conn {
    /// Free space of `to_host` (the queue's cap), ignoring the budget.
    pub(super) fn queue_wnd(&self) -> usize {
        TO_HOST_CAP.saturating_sub(self.to_host_len)
    }

    /// The window we advertise: the queue's free space, as far as the
    /// room left in the last chunk (already reserved) and this
    /// connection's share of the free budget ([`MemBudget::share`]) hold
    /// it. A budget-limited window under one MSS is advertised as zero
    /// (receiver silly window avoidance, RFC 9293 §3.8.6.2.2).
    pub(super) fn rcv_wnd(&self) -> usize {
        let queue = self.queue_wnd();
        let spare = self.to_host.back().map_or(0, |c| c.capacity() - c.len());
        let wnd = queue.min(spare.saturating_add(self.mem.share()));
        if wnd < queue && wnd < self.mss {
            0
        } else {
            wnd
        }
    }

    /// Queue guest bytes for the host (the one copy they get in uipd).
    /// Each new chunk is reserved from the budget first; returns how many
    /// bytes were taken: fewer than `bytes.len()` when the budget is spent.
    pub(super) fn push_to_host(&mut self, mut bytes: &[u8]) -> usize {
        let mut taken = 0;
        while !bytes.is_empty() {
            let room = self.to_host.back().map_or(0, |c| c.capacity() - c.len());
            if room == 0 {
                // With a Send in flight a chunk fills from several
                // segments. Under memory pressure (this connection's share
                // of the free budget is small), never past what the guest
                // may still send (the advertised window): an empty 256 KiB
                // chunk per connection would spend the budget on nothing.
                // Otherwise a whole chunk, which the worker's spare chunks
                // serve without a fresh mapping (`mem::chunks`); one cut to
                // the window's remainder is an odd size that is not kept.
                let expect =
                    usize::try_from((self.adv_right_edge - self.rcv_nxt).max(0)).unwrap_or(0);
                let plenty = self.mem.share() >= 4 * SEND_CHUNK;
                let want = if self.sending > 0 && plenty {
                    SEND_CHUNK
                } else if self.sending > 0 {
                    SEND_CHUNK.min(expect.max(bytes.len()))
                } else {
                    bytes.len().min(SEND_CHUNK)
                };
                let need = bytes.len().min(want);
                // The chunk's capacity, reserved with its bookkeeping: the
                // full chunk, else just what this segment needs, else what
                // the budget has left.
                let cap = if self.mem.try_reserve(want + CHUNK_OVERHEAD) {
                    want
                } else if need < want && self.mem.try_reserve(need + CHUNK_OVERHEAD) {
                    need
                } else {
                    let got = self.mem.reserve_up_to(need + CHUNK_OVERHEAD);
                    if got <= CHUNK_OVERHEAD {
                        self.mem.release(got);
                        break;
                    }
                    got - CHUNK_OVERHEAD
                };
                self.to_host_mem += cap + CHUNK_OVERHEAD;
                self.to_host.push_back(chunks::take(cap));
                continue;
            }
            let n = room.min(bytes.len());
            if let Some(c) = self.to_host.back_mut() {
                c.extend_from_slice(&bytes[..n]);
            }
            bytes = &bytes[n..];
            taken += n;
        }
        self.to_host_len += taken;
        taken
    }

    /// Window field for our segments (scaled down, clamped to 16 bits).
    pub(super) fn window_field(&self) -> u16 {
        let w = self.rcv_wnd() >> self.our_wscale;
        u16::try_from(w).unwrap_or(u16::MAX)
    }

    /// Issue a `Send` of queued guest data if none is in flight; issue the
    /// deferred `shutdown` once everything is written.
    pub(super) fn maybe_send(&mut self, ops: &mut Vec<SockOp>) {
        if self.sending != 0 || self.state == State::Closed {
            return;
        }
        let Some(data) = self.to_host.pop_front() else {
            if self.guest_fin && !self.host_shut {
                self.host_shut = true;
                ops.push(SockOp::ShutdownWrite { flow: self.flow });
            }
            return;
        };
        self.sending = data.len();
        self.sending_mem = data.capacity() + CHUNK_OVERHEAD;
        ops.push(SockOp::Send {
            flow: self.flow,
            data,
        });
    }

    /// Memory was released somewhere: re-post a `Recv` the budget held
    /// back, and tell the guest of a window the budget had kept closed.
    /// Sets the wait flag again if the budget still falls short.
    pub fn on_memory(&mut self, emit: &mut Emit<'_>, ops: &mut Vec<SockOp>) {
        if self.state == State::Closed {
            return;
        }
        self.maybe_recv(ops);
        if matches!(self.state, State::Established | State::SynAckSent) && !self.guest_fin {
            let believed =
                usize::try_from((self.adv_right_edge - self.rcv_nxt).max(0)).unwrap_or(0);
            let now_wnd = usize::from(self.window_field()) << self.our_wscale;
            // Update only for a useful window (silly window avoidance).
            if now_wnd > believed && (believed == 0 || now_wnd - believed >= 2 * self.mss) {
                self.send_ack(emit);
            } else if self.rcv_wnd() < self.queue_wnd() {
                self.mem_wait = true;
            }
        }
    }

    /// The host socket took `result` bytes of the `Send` in flight.
    pub fn on_sent(
        &mut self,
        result: Result<usize, Errno>,
        now: Instant,
        emit: &mut Emit<'_>,
        ops: &mut Vec<SockOp>,
    ) -> Verdict {
        if self.state == State::Closed {
            return Verdict::Remove;
        }
        // The I/O layer answers once the socket took the whole `Send`; a
        // short count means it failed, and the rest is gone with the buffer.
        match result {
            Ok(n) if n >= self.sending => {}
            Ok(_) | Err(_) => return self.abort(emit, ops),
        }
        self.to_host_len -= self.sending;
        self.sending = 0;
        self.to_host_mem -= self.sending_mem;
        self.mem.release(self.sending_mem);
        self.sending_mem = 0;
        // Window update when the window reopens noticeably (RFC 9293
        // §3.8.6.2.2): from zero, or by two segments while the guest believes
        // it has less than half of the largest window.
        let believed = usize::try_from((self.adv_right_edge - self.rcv_nxt).max(0)).unwrap_or(0);
        let now_wnd = usize::from(self.window_field()) << self.our_wscale;
        let max_wnd = TO_HOST_CAP.min(usize::from(u16::MAX) << self.our_wscale);
        if now_wnd > believed
            && (believed == 0 || (believed < max_wnd / 2 && now_wnd - believed >= 2 * self.mss))
        {
            self.ack_pending = true;
            self.ack_now = true;
        }
        self.maybe_send(ops);
        let _ = now;
        self.check_done(emit, ops)
    }
}
