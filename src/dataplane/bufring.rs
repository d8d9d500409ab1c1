//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`): buffers the kernel
//! picks from for multishot receives and reads, so one SQE keeps receiving
//! and each completion names the buffer it filled.
//!
//! ```text
//!  ring (page-aligned, shared with the kernel): [entry 0 .. entry N-1], tail in entry 0's resv
//!  buffers (one allocation): [buf 0][buf 1]...[buf N-1], each `buf_size` bytes
//!  completion (bid, len) ─► BufRing::get(bid, len) ─► consumer copies/parses ─► BufRing::recycle(bid)
//! ```
//!
//! The kernel consumes entries from the head (which it keeps); uipd adds
//! returned buffers at the tail and publishes the new tail with a release
//! store. A buffer belongs to the kernel from the moment it is published
//! until a completion names it, and to uipd from then until `recycle`.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// A registered ring of `entries` buffers of `buf_size` bytes each.
pub struct BufRing {
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    bufs: Vec<u8>,
    buf_size: usize,
    entries: u16,
    mask: u16,
    tail: u16,
    bgid: u16,
    /// Buffers uipd holds (between a completion and `recycle`).
    lent: Vec<bool>,
}

// SAFETY: the raw pointer is an mmap owned by this value alone; moving the
// value to another thread moves that ownership with it.
unsafe impl Send for BufRing {}

impl BufRing {
    /// Map a ring of `entries` (a power of two, at most 32768) buffers of
    /// `buf_size` bytes, register it as buffer group `bgid` of `uring`,
    /// and hand every buffer to the kernel.
    pub fn new(uring: &IoUring, entries: u16, buf_size: usize, bgid: u16) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring entries must be a power of two up to 32768",
            ));
        }
        let ring_bytes = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping of `ring_bytes` bytes with no
        // address hint; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut br = BufRing {
            ring: ptr.cast(),
            ring_bytes,
            bufs: vec![0u8; usize::from(entries) * buf_size],
            buf_size,
            entries,
            mask: entries - 1,
            tail: 0,
            bgid,
            lent: vec![false; usize::from(entries)],
        };
        // SAFETY: the ring is a page-aligned mapping of `entries` entries
        // that lives until `Drop`, which unregisters it before unmapping;
        // `uring` outlives it (the owner drops the BufRing first).
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(br.ring as u64, entries, bgid, 0)?;
        }
        for bid in 0..entries {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    /// The buffer group id to put in SQEs.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// The size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// The first `len` bytes of buffer `bid`, which a completion just named.
    /// `None` for an id or length the ring never handed out (a kernel bug
    /// or a stale completion): the caller drops the completion.
    pub fn get(&mut self, bid: u16, len: usize) -> Option<&[u8]> {
        let i = usize::from(bid);
        if bid >= self.entries || len > self.buf_size || self.lent[i] {
            return None;
        }
        self.lent[i] = true;
        Some(&self.bufs[i * self.buf_size..i * self.buf_size + len])
    }

    /// Give buffer `bid` back to the kernel (visible after `publish`).
    pub fn recycle(&mut self, bid: u16) {
        let i = usize::from(bid);
        if bid < self.entries && self.lent[i] {
            self.lent[i] = false;
            self.push(bid);
        }
    }

    fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & self.mask);
        let i = usize::from(bid);
        let addr = self.bufs[i * self.buf_size..].as_mut_ptr() as u64;
        // SAFETY: `slot` < `entries`, so the entry is inside the mapping;
        // the kernel reads only entries between its head and the published
        // tail, and this one is past the published tail until `publish`.
        let e = unsafe { &mut *self.ring.add(slot) };
        e.set_addr(addr);
        e.set_len(u32::try_from(self.buf_size).unwrap_or(u32::MAX));
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publish the buffers pushed since the last call.
    pub fn publish(&mut self) {
        // SAFETY: the tail lives in entry 0's `resv` field, inside the
        // mapping; the kernel reads it with an acquire load, so a release
        // store makes the entries written before it visible. AtomicU16 has
        // the layout of u16 and the field is 2-byte aligned.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast_mut();
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }

    /// Unregister from `uring` (before it is dropped).
    pub fn unregister(&self, uring: &IoUring) {
        let _ = uring.submitter().unregister_buf_ring(self.bgid);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: `ring` is the mapping made in `new`, of `ring_bytes`
        // bytes; the owner unregistered it (or dropped the io_uring, which
        // drops the registration) before this runs.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_bytes);
        }
    }
}
