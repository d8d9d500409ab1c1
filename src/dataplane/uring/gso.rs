//! UDP segmentation offload on the host side: consecutive datagrams of one
//! UDP flow go to its socket in one `sendmsg` with a `UDP_SEGMENT` control
//! message (Linux 4.18), instead of one send each.
//!
//! The stack still asks for one [`SockOp::Send`] per datagram and hears one
//! [`HostEvent::Sent`](crate::stack::HostEvent::Sent) per datagram; only the executor batches. A send of
//! `n` segments of `size` bytes (the last may be shorter) costs the kernel
//! one pass through the socket, routing and output path (on loopback one
//! trip through the device, the receiving socket cuts it back into
//! datagrams) where `n` sends cost `n`. The peer receives the same
//! datagrams either way.
//!
//! ```text
//!   push(Send d1) ─► batch [d1]            (not submitted yet)
//!   push(Send d2) ─► batch [d1 d2]         same flow, |d2| <= |d1|, room
//!   push(other op) or submit ─► flush: 1 datagram: a plain Send
//!                                      n > 1: one SendMsg, UDP_SEGMENT |d1|
//!   CQE ok  ─► n Sent events, one per datagram, in order
//!   CQE err ─► the kernel sent none: each datagram is sent on its own (the
//!              errors come per datagram, as without batching) and the flow
//!              sends without segmentation from then on
//! ```
//!
//! A batch ends at a datagram shorter than the first (the kernel cuts
//! every segment but the last to the same size), at [`MAX_SEGMENTS`], or
//! when the next datagram would take it past [`MAX_BYTES`]. A path whose
//! MTU is smaller than a segment (`EINVAL`, `EMSGSIZE`), or a device that
//! cannot checksum it (`EIO`), is the error path above: nothing is lost.

use io_uring::{opcode, types};

use super::{Op, OpKind, OpRes, Uring};
use crate::dataplane::io::Phase;
use crate::stack::{FlowId, SockOp};

/// Most segments in one send (the kernel's `UDP_MAX_SEGMENTS` is 64 before
/// Linux 6.9).
pub(super) const MAX_SEGMENTS: usize = 64;

/// Most bytes in one send: the UDP payload an IPv4 datagram can carry.
pub(super) const MAX_BYTES: usize = 65535 - 20 - 8;

/// `UDP_SEGMENT` (linux/udp.h), at level `SOL_UDP`.
const UDP_SEGMENT: libc::c_int = 103;

/// Datagrams of one flow waiting to be sent together.
pub(super) struct Batch {
    flow: FlowId,
    /// Size of every segment but the last (that of the first datagram).
    size: usize,
    buf: Vec<u8>,
}

impl Batch {
    /// Datagrams in the batch.
    fn count(&self) -> usize {
        self.buf.len().div_ceil(self.size)
    }

    /// Whether `len` more bytes can join as the next segment: the batch
    /// has not ended at a shorter datagram, `len` is not longer than a
    /// segment, and both limits hold.
    fn takes(&self, len: usize) -> bool {
        self.buf.len() % self.size == 0
            && len <= self.size
            && self.count() < MAX_SEGMENTS
            && self.buf.len() + len <= MAX_BYTES
    }
}

/// Length of a `cmsghdr` followed by a `u16` (`CMSG_LEN(2)`).
const CMSG_LEN: usize = std::mem::size_of::<libc::cmsghdr>() + 2;

/// `CMSG_SPACE(2)`: the header and the `u16`, padded to 8 bytes.
const CMSG_SPACE: usize = (CMSG_LEN + 7) & !7;

/// A control buffer aligned as `cmsghdr` is.
#[repr(C, align(8))]
struct Cmsg([u8; CMSG_SPACE]);

/// What a segmented `SendMsg` owns until its CQE: the message header, its
/// one iovec and control message point into this same heap allocation.
pub(super) struct SegmentedSend {
    hdr: libc::msghdr,
    iov: libc::iovec,
    cmsg: Cmsg,
    pub(super) buf: Vec<u8>,
    pub(super) size: usize,
}

impl SegmentedSend {
    /// `buf` as segments of `size` bytes (the last may be shorter).
    fn new(buf: Vec<u8>, size: u16) -> Box<SegmentedSend> {
        let mut cmsg = Cmsg([0; CMSG_SPACE]);
        // The control message, field by field in native byte order:
        // cmsg_len (size_t), cmsg_level (int), cmsg_type (int), then data.
        let len = CMSG_LEN.to_ne_bytes();
        let level = libc::SOL_UDP.to_ne_bytes();
        let kind = UDP_SEGMENT.to_ne_bytes();
        let (l, rest) = cmsg.0.split_at_mut(len.len());
        l.copy_from_slice(&len);
        let (lv, rest) = rest.split_at_mut(level.len());
        lv.copy_from_slice(&level);
        let (k, rest) = rest.split_at_mut(kind.len());
        k.copy_from_slice(&kind);
        rest[..2].copy_from_slice(&size.to_ne_bytes());
        // SAFETY: `msghdr` is a plain C struct of integers and pointers;
        // all-zero bytes are a valid value (null pointers, zero lengths).
        let hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        let mut m = Box::new(SegmentedSend {
            hdr,
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            cmsg,
            buf,
            size: usize::from(size),
        });
        // The pointers are taken once the fields have their final, boxed
        // addresses; neither the box nor `buf` is moved or resized until
        // the CQE (the op owns the box).
        m.iov.iov_base = m.buf.as_mut_ptr().cast();
        m.iov.iov_len = m.buf.len();
        m.hdr.msg_iov = &raw mut m.iov;
        m.hdr.msg_iovlen = 1;
        m.hdr.msg_control = m.cmsg.0.as_mut_ptr().cast();
        m.hdr.msg_controllen = CMSG_SPACE;
        m
    }

    /// How many datagrams it carries.
    fn count(&self) -> usize {
        self.buf.len().div_ceil(self.size.max(1))
    }
}

impl Uring {
    /// Take `op` into the pending batch if it is a datagram for a connected
    /// UDP flow that may segment; otherwise hand it back (after sending the
    /// batch, whatever `op` is, so ops keep their order).
    pub(super) fn batch_udp(&mut self, op: SockOp) -> Option<SockOp> {
        let SockOp::Send { flow, data } = op else {
            self.flush_batch();
            return Some(op);
        };
        let eligible = !data.is_empty()
            && data.len() <= usize::from(u16::MAX)
            && self.flow_mut(flow).is_some_and(|f| {
                f.udp
                    && !f.no_segments
                    && f.peer.is_none()
                    && f.sock.is_some()
                    && matches!(f.phase, Phase::Connected)
            });
        if !eligible {
            self.flush_batch();
            return Some(SockOp::Send { flow, data });
        }
        let fits = self
            .batch
            .as_ref()
            .is_some_and(|b| b.flow == flow && b.takes(data.len()));
        if fits && let Some(mut b) = self.batch.take() {
            if b.count() == 1 {
                // From one datagram to a batch: a buffer with room for all.
                let mut big = self.take_spare_buffer().unwrap_or_default();
                big.reserve(MAX_BYTES.min(b.buf.len() * MAX_SEGMENTS));
                big.extend_from_slice(&b.buf);
                let first = std::mem::replace(&mut b.buf, big);
                self.recycle(first);
            }
            b.buf.extend_from_slice(&data);
            self.batch = Some(b);
            self.recycle(data);
        } else {
            self.flush_batch();
            self.batch = Some(Batch {
                flow,
                size: data.len(),
                buf: data,
            });
        }
        if let Some(f) = self.flow_mut(flow) {
            f.sends_in_flight += 1;
        }
        None
    }

    /// Send the pending batch: a plain `Send` for one datagram, a
    /// segmented `SendMsg` for more.
    pub(super) fn flush_batch(&mut self) {
        let Some(b) = self.batch.take() else {
            return;
        };
        // The flow cannot have closed since: a Close goes through `push`,
        // which flushed first. Checked all the same.
        let Some(s) = self.flow_mut(b.flow).and_then(|f| f.sock) else {
            self.recycle(b.buf);
            return;
        };
        let fd = self.sock_fd(s);
        let count = b.count();
        if count == 1 {
            self.start_send(b.flow, s, b.buf);
            return;
        }
        // Cannot fail: a batch's segment size came from a datagram of at
        // most u16::MAX bytes.
        let size = u16::try_from(b.size).unwrap_or(u16::MAX);
        self.segmented_sends += 1;
        self.segmented_datagrams += count as u64;
        let op = Op::of_flow(
            OpKind::SendSegments,
            b.flow,
            s,
            OpRes::Segments(SegmentedSend::new(b.buf, size)),
        );
        self.start(op, |res| {
            let OpRes::Segments(m) = res else {
                unreachable!("a segmented send owns its message")
            };
            opcode::SendMsg::new(types::Fd(fd), &raw const m.hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        });
    }

    /// The CQE of a segmented send (its op slot already freed).
    pub(super) fn on_segments_cqe(
        &mut self,
        op: Op,
        res: Result<i32, crate::stack::Errno>,
        out: &mut impl FnMut(super::Completion),
    ) -> usize {
        let OpRes::Segments(m) = op.res else {
            unreachable!("a segmented send owns its message")
        };
        let Some(id) = op.flow else {
            self.recycle(m.buf);
            return 0;
        };
        let count = m.count();
        if res.is_ok() {
            let mut delivered = 0;
            for chunk in m.buf.chunks(m.size.max(1)) {
                let n = i32::try_from(chunk.len()).unwrap_or(i32::MAX);
                delivered += self.on_send(Some(id), Ok(n), out);
            }
            self.recycle(m.buf);
            return delivered;
        }
        // The kernel sent none of them. A live flow sends each on its own
        // (each gets its own result) and no longer segments.
        let live = self.flow_mut(id).and_then(|f| {
            f.no_segments = true;
            f.sock.filter(|_| matches!(f.phase, Phase::Connected))
        });
        self.segment_fallbacks += 1;
        let Some(s) = live else {
            let mut delivered = 0;
            for _ in 0..count {
                delivered += self.on_send(Some(id), res, out);
            }
            self.recycle(m.buf);
            return delivered;
        };
        for chunk in m.buf.chunks(m.size.max(1)) {
            let mut one = self.take_spare_buffer().unwrap_or_default();
            one.extend_from_slice(chunk);
            self.start_send(id, s, one);
        }
        self.recycle(m.buf);
        0
    }

    /// Start a one-datagram or stream `Send` of `data` on socket `s` (the
    /// flow's `sends_in_flight` already counts it).
    pub(super) fn start_send(&mut self, id: FlowId, s: u32, data: Vec<u8>) {
        let fd = self.sock_fd(s);
        let op = Op::of_flow(OpKind::Send, id, s, OpRes::Sending { buf: data, done: 0 });
        let waitall = self.send_waitall;
        self.start(op, |res| super::executor::send_entry(fd, res, waitall));
    }
}

#[cfg(test)]
mod tests;
