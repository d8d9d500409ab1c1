//! The TAP's frames on io_uring: writes toward the guest (`Write` SQEs
//! whose buffers go to the spare list when they complete), and reads from
//! the guest, either one multishot `ReadMulti` into the port's
//! provided-buffer ring (`BufRing`, group `PORT_BGID`) or, where that is
//! missing, a one-shot poll after which the worker reads the fd itself.

use std::io;
use std::os::fd::RawFd;

use io_uring::{cqueue, opcode, types};
use log::warn;

use super::{Completion, Op, OpKind, OpRes, PORT_BGID, Uring, clamp_u32};
use crate::dataplane::bufring::BufRing;

impl Uring {
    /// Write `frame` to `fd` (a TAP device) with one io_uring write. Takes
    /// ownership of `frame` until [`Completion::FrameWritten`]; the buffer
    /// then goes to the spare list ([`Uring::take_spare_buffer`]). The caller
    /// keeps `fd` open until then.
    pub fn push_frame_write(&mut self, fd: RawFd, frame: Vec<u8>) {
        let op = Op::own(OpKind::FrameWrite, OpRes::Buf(frame));
        self.start(op, |res| {
            let OpRes::Buf(buf) = res else {
                unreachable!("frame write owns a buffer")
            };
            let len = clamp_u32(buf.len());
            // offset -1: the file position, as write(2) uses.
            opcode::Write::new(types::Fd(fd), buf.as_ptr(), len)
                .offset(u64::MAX)
                .build()
        });
    }

    /// Wait (one-shot) until `fd` is readable; the completion is
    /// [`Completion::Readable`]. Arm again after reading it dry. The caller
    /// keeps `fd` open until the completion arrives.
    ///
    /// This is how a TAP queue is read: tun's read path does not take
    /// io_uring's non-blocking attempt, so a READ on a TAP fd is punted to
    /// an io-wq thread (measured: a dozen `iou-wrk` threads and lower
    /// throughput). A poll plus direct reads of the non-blocking fd keeps
    /// everything on the worker.
    pub fn push_poll_in(&mut self, fd: RawFd) {
        let op = Op::own(OpKind::PollIn, OpRes::None);
        self.start(op, |_| {
            // Cannot fail: POLLIN (1) fits in u32.
            let mask = u32::try_from(libc::POLLIN).unwrap_or(1);
            opcode::PollAdd::new(types::Fd(fd), mask).build()
        });
    }

    /// Give the frame port a ring of `entries` provided buffers of
    /// `buf_size` bytes (each holds one frame) for [`Uring::push_port_read`].
    pub fn setup_port_ring(&mut self, entries: u16, buf_size: usize) -> io::Result<()> {
        if self.port_ring.is_none() {
            self.port_ring = Some(BufRing::new(&self.ring, entries, buf_size, PORT_BGID)?);
        }
        Ok(())
    }

    /// Read frames from `fd` (a non-blocking TAP queue) with one multishot
    /// read into the port's provided buffers: each frame completes as
    /// [`Completion::PortFrame`] with no syscall of its own, and the read
    /// stays armed until [`Completion::PortReadEnded`]. The caller keeps
    /// `fd` open until then.
    ///
    /// Measured on kernel 6.18: on a non-blocking TAP fd the multishot read
    /// runs inline, driven by the fd's poll wake-ups (no `iou-wrk`
    /// threads), unlike a plain READ, which tun punts to io-wq.
    pub fn push_port_read(&mut self, fd: RawFd) {
        let Some(bgid) = self.port_ring.as_ref().map(BufRing::bgid) else {
            warn!("uring: push_port_read without a port ring");
            return;
        };
        let op = Op::own(OpKind::PortRead, OpRes::None);
        self.start(op, |_| {
            opcode::ReadMulti::new(types::Fd(fd), 0, bgid).build()
        });
    }

    /// The frame in port buffer `bid`, which a [`Completion::PortFrame`]
    /// just named (each buffer can be read once until recycled).
    pub fn port_frame(&mut self, bid: u16, len: usize) -> Option<&[u8]> {
        self.port_ring.as_mut()?.get(bid, len)
    }

    /// Give port buffer `bid` back to the kernel (published at the next
    /// submit).
    pub fn port_recycle(&mut self, bid: u16) {
        if let Some(r) = self.port_ring.as_mut() {
            r.recycle(bid);
        }
    }

    /// A CQE of the multishot port read: a frame, and/or its end.
    pub(super) fn on_port_read(
        &mut self,
        slot: u32,
        result: i32,
        flags: u32,
        out: &mut impl FnMut(Completion),
    ) -> usize {
        let mut n = 0;
        if result >= 0 {
            match cqueue::buffer_select(flags) {
                Some(bid) => {
                    // Cannot fail: a non-negative i32 fits usize.
                    let len = usize::try_from(result).unwrap_or(0);
                    out(Completion::PortFrame { bid, len });
                    n += 1;
                }
                None if result > 0 => warn!("uring: port read CQE without a buffer"),
                None => {}
            }
        }
        if !cqueue::more(flags) {
            if self.free_op(slot).is_none() {
                warn!("uring: port read end for empty op slot {slot}");
                return n;
            }
            let result = if result < 0 {
                Err(io::Error::from_raw_os_error(-result))
            } else {
                Ok(())
            };
            out(Completion::PortReadEnded { result });
            n += 1;
        }
        n
    }
}
