//! A worker's frame port: where guest frames come from ([`PortIn`]) and
//! where frames toward the guest go ([`PortOut`]).
//!
//! ```text
//!  PortIn::Ring   TAP ──multishot read──► provided buffers ─┐
//!  PortIn::Fd     TAP ──poll, then read(2) into pool buffers ┼─► Steering ─► own: Stack::ingress
//!  PortIn::Inbox  (a frame port thread feeds the inbox)      ┘            └► other: backlog ─► its inbox
//!  PortOut::Tap   frames ──io_uring writes──► TAP
//!  PortOut::Sink  frames ──FrameSink::send/flush──► stream socket, virtqueue
//! ```
//!
//! Steering is decided in one place ([`Steering::foreign`]): with hash
//! steering a frame whose flow hashes to another worker goes to that
//! worker's inbox (through the worker's bounded backlog); otherwise, and
//! always on a multiqueue TAP (the kernel steers), the reading worker owns
//! the frame. A frame read into a provided buffer is copied only when it
//! is handed to another worker; a frame read into a pool buffer moves.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::{BACKLOG_MAX, PORT_BATCH, WorkerCounters};
use crate::dataplane::io::{Io, IoEngine};
use crate::dataplane::pcap::Capture;
use crate::dataplane::tap::Tap;
use crate::rings::{Frame, FrameRing};
use crate::stack::steer::{self, Steer};

/// A frontend that takes the worker's frames toward the guest in batches
/// (a stream socket, a virtqueue), for frontends that are not a TAP queue.
///
/// Frames carry the 12-byte virtio-net header when the stack's
/// `offload.vnet_hdr` is on. A sink that cannot deliver at once (no RX
/// buffers yet, a full socket) keeps frames in a bounded queue and drops,
/// counted, beyond it: TCP toward the guest retransmits, and the guest's
/// window bounds how much is ever in flight. Whoever makes room again (the
/// guest refilling its RX queue) kicks the worker's inbox so `flush` runs.
pub trait FrameSink: Send {
    /// Deliver `frames` (drained), or keep them for `flush`.
    fn send(&mut self, frames: &mut Vec<Vec<u8>>, counters: &mut WorkerCounters);
    /// Retry kept frames; called once per worker loop iteration. Returns
    /// true while frames still wait.
    fn flush(&mut self, counters: &mut WorkerCounters) -> bool;
    /// The guest side went away for good: the worker should stop.
    fn closed(&self) -> bool {
        false
    }
}

/// Where a worker's frames toward the guest go.
pub enum PortOut {
    /// A TAP queue, written through io_uring.
    Tap(RawFd),
    /// A batching frontend.
    Sink(Box<dyn FrameSink>),
}

/// What [`PortOut::send`] leaves behind.
pub(super) struct Sent {
    /// A sink holds frames it could not deliver yet.
    pub(super) waiting: bool,
    /// The sink's guest went away for good.
    pub(super) closed: bool,
}

impl PortOut {
    /// Take `frames` (drained) toward the guest: one io_uring write each
    /// to the TAP, or to the sink, which then retries what it kept (once
    /// per loop turn, frames or not).
    pub(super) fn send(
        &mut self,
        frames: &mut Vec<Vec<u8>>,
        io: &mut Io,
        wc: &mut WorkerCounters,
    ) -> Sent {
        match self {
            PortOut::Tap(fd) => {
                for frame in frames.drain(..) {
                    wc.port_writes += 1;
                    io.push_frame_write(*fd, frame);
                }
                Sent {
                    waiting: false,
                    closed: false,
                }
            }
            PortOut::Sink(sink) => {
                if !frames.is_empty() {
                    sink.send(frames, wc);
                }
                let waiting = sink.flush(wc);
                Sent {
                    waiting,
                    closed: sink.closed(),
                }
            }
        }
    }
}

/// Which worker takes a guest frame a worker read itself.
pub(super) struct Steering {
    /// This worker.
    pub(super) index: usize,
    /// All workers.
    pub(super) workers: usize,
    /// Hash steering ([`super::Worker::hash_steer`]).
    pub(super) hash: bool,
    /// Bytes of virtio-net header before the Ethernet frame.
    pub(super) vnet_hdr: usize,
}

impl Steering {
    /// The worker that owns `frame`'s flow when it is another one.
    #[inline]
    pub(super) fn foreign(&self, frame: &[u8]) -> Option<usize> {
        if !self.hash {
            return None;
        }
        let eth = frame.get(self.vnet_hdr..).unwrap_or_default();
        match steer::frame_owner(eth, self.workers) {
            Steer::Worker(w) if w != self.index => Some(w),
            _ => None,
        }
    }
}

/// Provided buffers for the TAP queue's multishot read: about 4 MiB of
/// frames, between 16 and 256 of them.
fn port_ring_entries(frame_max: usize) -> u16 {
    let n = ((4usize << 20) / frame_max.max(1)).clamp(16, 256);
    // Cannot truncate: at most 256. Round down to a power of two.
    1u16 << (usize::BITS - 1 - n.leading_zeros())
}

/// Where a worker's guest frames come from.
pub(super) enum PortIn {
    /// A TAP queue read by one multishot io_uring read into the port's
    /// provided buffers: a batch of frames per wake-up, no syscall each.
    Ring {
        /// The queue (`None` once it closed: held frames still count).
        tap: Option<Tap>,
        /// The multishot read is in flight.
        armed: bool,
        /// Frames completed and not yet taken (buffer id, length).
        held: VecDeque<(u16, usize)>,
    },
    /// A TAP queue read dry with `read(2)` after a one-shot poll (kernels
    /// without provided-buffer rings, and the epoll engine).
    Fd {
        /// The queue, non-blocking.
        tap: Tap,
        /// Readable: read until `EAGAIN`.
        ready: bool,
        /// The poll is in flight.
        poll_armed: bool,
        /// A pool buffer the last read did not keep.
        spare: Option<Vec<u8>>,
    },
    /// Frames come only through the inbox (a frame port thread feeds it).
    Inbox,
}

impl PortIn {
    /// The port for `reader` (none: inbox only). On io_uring the queue is
    /// read into a ring of provided buffers of `frame_max` bytes where the
    /// kernel has them; elsewhere with poll + read.
    pub(super) fn new(reader: Option<Tap>, io: &mut Io, frame_max: usize, index: usize) -> PortIn {
        let Some(tap) = reader else {
            return PortIn::Inbox;
        };
        if io.engine() == IoEngine::Uring {
            match io.setup_port_ring(port_ring_entries(frame_max), frame_max) {
                Ok(()) => {
                    return PortIn::Ring {
                        tap: Some(tap),
                        armed: false,
                        held: VecDeque::new(),
                    };
                }
                Err(e) => log::info!(
                    "worker {index}: no provided-buffer ring ({e}); reading the TAP with poll + read"
                ),
            }
        }
        PortIn::Fd {
            tap,
            ready: true,
            poll_armed: false,
            spare: None,
        }
    }

    /// Frames wait to be read now (the loop must not sleep).
    pub(super) fn busy(&self) -> bool {
        match self {
            PortIn::Ring { held, .. } => !held.is_empty(),
            PortIn::Fd { ready, .. } => *ready,
            PortIn::Inbox => false,
        }
    }

    /// [`Completion::Readable`](crate::dataplane::io::Completion::Readable).
    pub(super) fn on_readable(&mut self, result: std::io::Result<u32>, index: usize) {
        if let PortIn::Fd {
            ready, poll_armed, ..
        } = self
        {
            *poll_armed = false;
            *ready = true;
        }
        if let Err(e) = result {
            log::debug!("worker {index}: TAP poll: {e}");
        }
    }

    /// [`Completion::PortFrame`](crate::dataplane::io::Completion::PortFrame).
    pub(super) fn on_frame(&mut self, bid: u16, len: usize) {
        if let PortIn::Ring { held, .. } = self {
            held.push_back((bid, len));
        }
    }

    /// [`Completion::PortReadEnded`](crate::dataplane::io::Completion::PortReadEnded).
    pub(super) fn on_read_ended(
        &mut self,
        result: std::io::Result<()>,
        wc: &mut WorkerCounters,
        index: usize,
    ) {
        let PortIn::Ring { tap, armed, .. } = self else {
            return;
        };
        *armed = false;
        match result {
            // Out of buffers: frames are held; re-arm later.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            res => {
                // The queue is gone (the namespace ended) or broken.
                wc.port_errors += 1;
                log::debug!("worker {index}: TAP queue closed ({res:?})");
                *tap = None;
            }
        }
    }

    /// Take the frames the port has now (at most one batch, and none while
    /// `backlog` is full): each to `ingress` or, steered elsewhere, onto
    /// `backlog`. Re-arms the read or the poll. Returns the frames taken.
    pub(super) fn take(
        &mut self,
        io: &mut Io,
        steering: &Steering,
        inboxes: &[Arc<FrameRing>],
        backlog: &mut VecDeque<(usize, Frame)>,
        wc: &mut WorkerCounters,
        ingress: &mut impl FnMut(&[u8], &mut WorkerCounters),
    ) -> u64 {
        match self {
            PortIn::Ring { tap, armed, held } => {
                // To the stack straight from the provided buffer, or
                // copied for their owner.
                let mut taken = 0u64;
                while backlog.len() < BACKLOG_MAX {
                    let Some((bid, len)) = held.pop_front() else {
                        break;
                    };
                    let Some(frame) = io.port_frame(bid, len) else {
                        wc.port_errors += 1;
                        continue;
                    };
                    taken += 1;
                    match steering.foreign(frame) {
                        Some(w) => {
                            wc.forwarded += 1;
                            let mut buf = inboxes[w].get_buf();
                            if buf.len() < frame.len() {
                                buf.resize(frame.len(), 0);
                            }
                            buf[..frame.len()].copy_from_slice(frame);
                            backlog.push_back((w, Frame { buf, len }));
                        }
                        None => ingress(frame, wc),
                    }
                    io.port_recycle(bid);
                }
                wc.port_reads += taken;
                if !*armed && held.is_empty() && backlog.len() < BACKLOG_MAX {
                    if let Some(tap) = tap {
                        io.push_port_read(tap.as_raw_fd());
                        *armed = true;
                    }
                }
                taken
            }
            PortIn::Fd {
                tap,
                ready,
                poll_armed,
                spare,
            } => {
                let mut read = 0usize;
                let mut closed = false;
                if *ready && backlog.len() < BACKLOG_MAX {
                    while read < PORT_BATCH {
                        let mut buf = spare
                            .take()
                            .unwrap_or_else(|| inboxes[steering.index].get_buf());
                        match tap.read_frame(&mut buf) {
                            Ok(len) if len > 0 => {
                                read += 1;
                                let frame = Frame { buf, len };
                                match steering.foreign(frame.bytes()) {
                                    Some(w) => {
                                        wc.forwarded += 1;
                                        backlog.push_back((w, frame));
                                    }
                                    None => {
                                        ingress(frame.bytes(), wc);
                                        *spare = Some(frame.buf);
                                    }
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                *spare = Some(buf);
                                *ready = false;
                                break;
                            }
                            Ok(_) | Err(_) => {
                                // The queue is gone (the namespace ended) or broken.
                                wc.port_errors += 1;
                                log::debug!("worker {}: TAP queue closed", steering.index);
                                closed = true;
                                break;
                            }
                        }
                    }
                    wc.port_reads += read as u64;
                }
                if closed {
                    *self = PortIn::Inbox;
                } else if !*ready && !*poll_armed {
                    io.push_poll_in(tap.as_raw_fd());
                    *poll_armed = true;
                }
                read as u64
            }
            PortIn::Inbox => 0,
        }
    }
}

/// Hand `frame` (with its virtio-net header of `vnet_hdr` bytes, if any) to
/// the capture, counting it or its drop; never blocks.
pub(super) fn capture(
    pcap: Option<&Capture>,
    wc: &mut WorkerCounters,
    frame: &[u8],
    vnet_hdr: usize,
) {
    let Some(c) = pcap else { return };
    let Some(eth) = frame.get(vnet_hdr..) else {
        return;
    };
    if c.record(eth) {
        wc.pcap_frames += 1;
    } else {
        wc.pcap_drops += 1;
    }
}
