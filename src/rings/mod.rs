//! Lock-free frame rings between frame ports and workers.
//!
//! ```text
//!   frame port thread                      worker thread
//!   ───────────────                        ─────────────
//!   buf = pool.get()  ◄──── free ring ◄─── pool.put(buf) after ingress
//!   read frame → buf
//!   ring.push(buf) ───────► frame ring ──► ring.pop() → Stack::ingress
//!   if worker asleep: eventfd write ─────► io_uring read on the eventfd wakes it
//! ```
//!
//! Both rings are bounded `crossbeam::queue::ArrayQueue`s (lock-free MPMC,
//! used here as SPSC). Buffers travel by value and come back through the
//! free ring, so a steady stream allocates nothing per frame.
//!
//! Wake-up protocol (no lost wake-ups): the worker sets `sleeping`, then
//! checks the ring once more before it blocks; the producer pushes, then
//! reads `sleeping` and, if set, clears it and writes the eventfd. Both
//! sides use `SeqCst` so the store of one and the load of the other cannot
//! both miss (the classic Dekker pattern).
//!
//! A full ring is backpressure: [`FrameRing::push`] hands the frame back and
//! the port waits for room (counting the event) rather than dropping it, so
//! TCP data is never silently lost inside uipd; the port's own kernel queue
//! (the TAP's txqueue) is what overflows, as a NIC's would.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam::queue::ArrayQueue;

use crate::sys::eventfd::{self, EventFd, Wake};

/// A frame in a pooled buffer: the first `len` bytes of `buf` are the frame.
/// Buffers keep their full length while they travel, so recycling one never
/// re-initialises it.
#[derive(Debug)]
pub struct Frame {
    /// The pooled buffer (full length).
    pub buf: Vec<u8>,
    /// Length of the frame in `buf`.
    pub len: usize,
}

impl Frame {
    /// The frame's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len.min(self.buf.len())]
    }
}

/// A bounded frame ring from one port to one worker, with its buffer pool.
pub struct FrameRing {
    ring: ArrayQueue<Frame>,
    free: ArrayQueue<Vec<u8>>,
    sleeping: AtomicBool,
    wake: EventFd,
    buf_size: usize,
    /// Times a producer found the ring full.
    pub full_events: AtomicU64,
}

impl FrameRing {
    /// A ring of `capacity` frames whose pooled buffers hold `buf_size` bytes.
    pub fn new(capacity: usize, buf_size: usize) -> io::Result<FrameRing> {
        Ok(FrameRing {
            ring: ArrayQueue::new(capacity),
            // A few pooled buffers cover the frames in flight at once; more
            // would only pin memory (a GSO buffer is 64 KiB).
            free: ArrayQueue::new((capacity / 4).max(8)),
            sleeping: AtomicBool::new(false),
            wake: eventfd::nonblocking()?,
            buf_size,
            full_events: AtomicU64::new(0),
        })
    }

    /// A buffer of `buf_size` bytes (contents unspecified), from the pool if
    /// one is free.
    pub fn get_buf(&self) -> Vec<u8> {
        match self.free.pop() {
            Some(b) if b.len() == self.buf_size => b,
            _ => vec![0u8; self.buf_size],
        }
    }

    /// Return a buffer to the pool (dropped if the pool is full or it is
    /// not a pool buffer).
    pub fn put_buf(&self, buf: Vec<u8>) {
        if buf.len() == self.buf_size {
            let _ = self.free.push(buf);
        }
    }

    /// Push a frame; on a full ring the frame comes back in `Err`.
    pub fn push(&self, frame: Frame) -> Result<(), Frame> {
        self.ring.push(frame)?;
        // Pairs with the SeqCst store in `prepare_sleep`: either the worker
        // sees our frame on its re-check, or we see `sleeping` set.
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.wake.signal();
        }
        Ok(())
    }

    /// Push, waiting (bounded spins, then short sleeps) while the ring is
    /// full. Gives up and returns the frame after `max_wait`.
    pub fn push_wait(&self, mut frame: Frame, max_wait: std::time::Duration) -> Result<(), Frame> {
        let start = std::time::Instant::now();
        let mut counted = false;
        loop {
            match self.push(frame) {
                Ok(()) => return Ok(()),
                Err(f) => frame = f,
            }
            if !counted {
                self.full_events.fetch_add(1, Ordering::Relaxed);
                counted = true;
                // Make sure the worker is awake to drain.
                self.wake.signal();
            }
            if start.elapsed() >= max_wait {
                return Err(frame);
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }

    /// Pop a frame.
    pub fn pop(&self) -> Option<Frame> {
        self.ring.pop()
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// True if no frame waits.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Worker: announce it is about to block. Returns false (and stays
    /// awake) if frames arrived meanwhile.
    pub fn prepare_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if !self.ring.is_empty() {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Worker: awake again.
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Wake the worker from outside (stop requests, signals).
    pub fn kick(&self) {
        self.wake.signal();
    }

    /// A consumer that polls [`FrameRing::wake_fd`] itself: clear the
    /// wake-up it woke for.
    pub fn clear_wake(&self) {
        self.wake.clear();
    }

    /// The eventfd the worker arms in its io_uring.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn frames_arrive_in_order_across_threads() {
        let ring = Arc::new(FrameRing::new(64, 16).unwrap());
        let r2 = ring.clone();
        let producer = std::thread::spawn(move || {
            for i in 0..10_000u32 {
                let mut buf = r2.get_buf();
                buf[..4].copy_from_slice(&i.to_be_bytes());
                r2.push_wait(Frame { buf, len: 4 }, Duration::from_secs(10))
                    .unwrap();
            }
        });
        let mut next = 0u32;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while next < 10_000 && std::time::Instant::now() < deadline {
            match ring.pop() {
                Some(f) => {
                    assert_eq!(u32::from_be_bytes(f.bytes().try_into().unwrap()), next);
                    next += 1;
                    ring.put_buf(f.buf);
                }
                None => std::thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(next, 10_000);
    }

    #[test]
    fn full_ring_returns_frame_and_counts() {
        let ring = FrameRing::new(2, 8).unwrap();
        let f = |b: u8| Frame {
            buf: vec![b],
            len: 1,
        };
        ring.push(f(1)).unwrap();
        ring.push(f(2)).unwrap();
        assert_eq!(ring.push(f(3)).unwrap_err().buf, vec![3]);
        let back = ring.push_wait(f(4), Duration::from_millis(5));
        assert_eq!(back.unwrap_err().buf, vec![4]);
        assert_eq!(ring.full_events.load(Ordering::Relaxed), 1);
        assert_eq!(ring.pop().unwrap().bytes(), &[1]);
    }

    #[test]
    fn sleeping_worker_is_woken_by_push() {
        let ring = FrameRing::new(4, 8).unwrap();
        assert!(ring.prepare_sleep());
        ring.push(Frame {
            buf: vec![1],
            len: 1,
        })
        .unwrap();
        let mut v = 0u64;
        // SAFETY: reading 8 bytes into a live u64 from our own eventfd.
        let n = unsafe { libc::read(ring.wake_fd(), (&raw mut v).cast(), 8) };
        assert_eq!(n, 8, "push must signal a sleeping worker");
        assert!(
            !ring.prepare_sleep(),
            "a waiting frame keeps the worker awake"
        );
    }
}
