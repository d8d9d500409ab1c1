//! The global memory budget for flow buffers (`--max-memory`).
//!
//! # Theory of operation
//!
//! One [`MemBudget`] is shared (an `Arc`) by every flow of every worker's
//! stack. A flow reserves bytes *before* it buffers them and releases them
//! when they leave (a `Send` completed, the guest ACKed, the flow closed),
//! so [`MemBudget::used`] is the bytes uipd holds for flows, and never
//! exceeds [`MemBudget::limit`] except by the small forced reservations
//! that account for memory that already exists (a host read's buffer).
//!
//! What is counted, by capacity (what the allocator handed out, not what
//! is filled):
//! - TCP guest → host: the chunks of `to_host` and the `Send` in flight;
//! - TCP host → guest: the `Recv` buffer in flight and the chunks read from
//!   the host that the guest has not ACKed;
//! - UDP and ICMP echo guest → host: datagrams queued while the socket
//!   connects and datagrams in a `Send`.
//!
//! When the budget is spent the flows push back instead of growing:
//!
//! ```text
//!   guest ──data──► window to the guest shrinks/closes; bytes beyond what
//!                   can be reserved are dropped unACKed (retransmitted)
//!   host  ──data──► no Recv is posted: the socket buffer fills, the host
//!                   peer's window closes
//!   guest ──dgram─► dropped and counted (drops_mem_budget)
//! ```
//!
//! Each refusal is counted here (the counters are global, like the budget).
//! A flow that was refused waits on its stack's list; the stack re-drives
//! the waiters (window update, `Recv` re-posted) when memory is free again.
//!
//! The stack does no I/O: the budget is plain atomics, all `Relaxed`. No
//! other memory is published through them; a reservation only has to be
//! atomic with respect to other reservations (the read-modify-write of one
//! counter is, whatever the ordering).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Whole chunks kept for reuse on the thread that freed them.
///
/// TCP moves data in chunks of `CHUNK` bytes (a guest→host chunk that
/// becomes a `Send`, a host read that becomes a guest→bound chunk). Past
/// glibc's mmap threshold, which uipd pins (see `daemon::pin_mmap_threshold`)
/// so that freed flow buffers go back to the kernel, each such allocation is
/// an `mmap` whose pages fault in one by one, and each free an `munmap`:
/// measured, bulk TCP fell to 0.55-0.6x of the same code with glibc's
/// growing threshold. So the worker that frees a whole chunk (the I/O layer
/// after a `Send`, the stack when the guest ACKs) keeps up to
/// `SPARE_CHUNKS` of them for its next allocation. A chunk and its
/// flow live on one worker thread, so the list is thread-local: no lock.
/// Spare chunks are outside the budget: a fixed overhead per worker.
pub mod chunks {
    use std::cell::RefCell;

    /// The size of a whole chunk (`conn::SEND_CHUNK`, `conn::RECV_CHUNK`).
    pub const CHUNK: usize = 256 << 10;
    /// Most spare chunks a thread keeps (4 MiB): a bulk connection toward
    /// the guest holds up to `TO_GUEST_CAP` (16 chunks) unacknowledged
    /// and frees them in bursts as the guest ACKs, then reads as many
    /// again. With 4 kept, the other 12 were unmapped and the next reads
    /// faulted fresh pages in: measured (uipd-perf TCP_MAERTS, MTU 65520),
    /// 16 kept cut the CPU per byte of uipd and the client it runs from
    /// 534-575 to 462-475 ns per KiB, and page faults left the profile.
    /// What is kept here is outside the budget.
    pub const SPARE_CHUNKS: usize = 16;

    thread_local! {
        static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer of capacity `cap`: a spare chunk when `cap` is
    /// [`CHUNK`] and this thread has one.
    pub fn take(cap: usize) -> Vec<u8> {
        if cap == CHUNK
            && let Some(buf) = SPARE.with(|s| s.borrow_mut().pop())
        {
            return buf;
        }
        Vec::with_capacity(cap)
    }

    /// Frees `buf`, or keeps it (cleared) for [`take`] when it is a whole
    /// chunk and the thread keeps fewer than [`SPARE_CHUNKS`]. Returns
    /// `buf` back when it is not kept, for another use.
    pub fn give(mut buf: Vec<u8>) -> Option<Vec<u8>> {
        if buf.capacity() != CHUNK {
            return Some(buf);
        }
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_CHUNKS {
                buf.clear();
                s.push(buf);
                None
            } else {
                Some(buf)
            }
        })
    }

    /// Spare chunks this thread holds.
    pub fn spare() -> usize {
        SPARE.with(|s| s.borrow().len())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A whole chunk freed is the next one taken (same allocation);
        /// other sizes and chunks past the cap are not kept.
        #[test]
        fn whole_chunks_are_reused_up_to_the_cap() {
            let a = take(CHUNK);
            let at = a.as_ptr();
            assert!(give(a).is_none());
            let b = take(CHUNK);
            assert_eq!(b.as_ptr(), at, "the spare chunk is reused");
            assert!(b.is_empty() && b.capacity() == CHUNK);
            assert!(
                give(Vec::with_capacity(4096)).is_some(),
                "not a whole chunk"
            );
            for _ in 0..SPARE_CHUNKS {
                assert!(give(Vec::with_capacity(CHUNK)).is_none());
            }
            assert!(give(b).is_some(), "past the cap");
            assert_eq!(spare(), SPARE_CHUNKS);
        }
    }
}

/// Bytes of bookkeeping counted per buffered chunk or datagram on top of
/// its capacity (allocator header and queue slot), so a flood of tiny
/// chunks cannot hide behind their payload size.
pub const CHUNK_OVERHEAD: usize = 64;

/// A shared budget of bytes; see the module documentation.
#[derive(Debug)]
pub struct MemBudget {
    limit: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
    /// TCP connections drawing on the budget (for [`MemBudget::share`]).
    conns: AtomicUsize,
    window_limited: AtomicU64,
    recv_deferred: AtomicU64,
    tcp_dropped_bytes: AtomicU64,
    udp_drops: AtomicU64,
}

/// A copy of a budget's gauges and counters, for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemStats {
    /// The limit in bytes.
    pub limit: u64,
    /// Bytes held now.
    pub used: u64,
    /// Most bytes held at once.
    pub peak: u64,
    /// Windows advertised to the guest smaller than the flow's queue
    /// allows, because of the budget (zero windows included).
    pub window_limited: u64,
    /// Host `Recv`s not posted (or posted smaller) for lack of budget.
    pub recv_deferred: u64,
    /// Guest TCP bytes dropped unACKed for lack of budget (the guest
    /// retransmits them).
    pub tcp_dropped_bytes: u64,
    /// Guest datagrams dropped for lack of budget.
    pub udp_drops: u64,
}

impl MemStats {
    /// The larger of each field: several workers' snapshots of the same
    /// budget, taken at slightly different moments.
    pub fn max(self, o: MemStats) -> MemStats {
        MemStats {
            limit: self.limit.max(o.limit),
            used: self.used.max(o.used),
            peak: self.peak.max(o.peak),
            window_limited: self.window_limited.max(o.window_limited),
            recv_deferred: self.recv_deferred.max(o.recv_deferred),
            tcp_dropped_bytes: self.tcp_dropped_bytes.max(o.tcp_dropped_bytes),
            udp_drops: self.udp_drops.max(o.udp_drops),
        }
    }

    /// Every field as (name, value), for text stats.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("mem_limit", self.limit),
            ("mem_used", self.used),
            ("mem_peak", self.peak),
            ("mem_window_limited", self.window_limited),
            ("mem_recv_deferred", self.recv_deferred),
            ("mem_tcp_dropped_bytes", self.tcp_dropped_bytes),
            ("mem_udp_drops", self.udp_drops),
        ]
        .into_iter()
    }
}

impl Default for MemBudget {
    /// No limit (tests; a daemon always sets one).
    fn default() -> Self {
        MemBudget::new(usize::MAX)
    }
}

impl MemBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> MemBudget {
        MemBudget {
            limit,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            conns: AtomicUsize::new(0),
            window_limited: AtomicU64::new(0),
            recv_deferred: AtomicU64::new(0),
            tcp_dropped_bytes: AtomicU64::new(0),
            udp_drops: AtomicU64::new(0),
        }
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes that may still be reserved.
    pub fn available(&self) -> usize {
        self.limit.saturating_sub(self.used())
    }

    /// A TCP connection starts drawing on the budget.
    pub fn register(&self) {
        self.conns.fetch_add(1, Ordering::Relaxed);
    }

    /// A TCP connection is gone.
    pub fn unregister(&self) {
        self.conns.fetch_sub(1, Ordering::Relaxed);
    }

    /// TCP connections drawing on the budget.
    pub fn conns(&self) -> usize {
        self.conns.load(Ordering::Relaxed)
    }

    /// One connection's fair share of what is free: the most window a
    /// connection advertises beyond the room it already holds, so that the
    /// windows of all connections together stay within the budget and
    /// guests rarely send what must then be dropped.
    pub fn share(&self) -> usize {
        self.available() / self.conns().max(1)
    }

    /// Reserve exactly `n` bytes, or nothing (false).
    pub fn try_reserve(&self, n: usize) -> bool {
        self.reserve_with(|avail| (n <= avail).then_some(n)) == n
    }

    /// Reserve as much of `n` as is available; returns what was reserved.
    pub fn reserve_up_to(&self, n: usize) -> usize {
        self.reserve_with(|avail| Some(n.min(avail)))
    }

    fn reserve_with(&self, amount: impl Fn(usize) -> Option<usize>) -> usize {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let Some(n) = amount(self.limit.saturating_sub(cur)).filter(|&n| n > 0) else {
                return 0;
            };
            match self.used.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.peak.fetch_max(cur + n, Ordering::Relaxed);
                    return n;
                }
                Err(c) => cur = c,
            }
        }
    }

    /// Account `n` bytes that are already allocated (a host read's buffer
    /// whose size the kernel chose within a reservation): may pass the limit.
    pub fn force_reserve(&self, n: usize) {
        let now = self.used.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// Give back `n` reserved bytes.
    pub fn release(&self, n: usize) {
        let prev = self.used.fetch_sub(n, Ordering::Relaxed);
        debug_assert!(prev >= n, "memory budget released more than reserved");
    }

    /// Count a window clamped by the budget.
    pub fn note_window_limited(&self) {
        self.window_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a `Recv` deferred or shrunk by the budget.
    pub fn note_recv_deferred(&self) {
        self.recv_deferred.fetch_add(1, Ordering::Relaxed);
    }

    /// Count guest TCP bytes dropped for lack of budget.
    pub fn note_tcp_dropped(&self, bytes: usize) {
        self.tcp_dropped_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Count a guest datagram dropped for lack of budget.
    pub fn note_udp_drop(&self) {
        self.udp_drops.fetch_add(1, Ordering::Relaxed);
    }

    /// The gauges and counters now.
    pub fn stats(&self) -> MemStats {
        MemStats {
            limit: self.limit as u64,
            used: self.used() as u64,
            peak: self.peak.load(Ordering::Relaxed) as u64,
            window_limited: self.window_limited.load(Ordering::Relaxed),
            recv_deferred: self.recv_deferred.load(Ordering::Relaxed),
            tcp_dropped_bytes: self.tcp_dropped_bytes.load(Ordering::Relaxed),
            udp_drops: self.udp_drops.load(Ordering::Relaxed),
        }
    }
}

/// Parse a size: a number of bytes with an optional `K`, `M`, `G` or `T`
/// suffix (powers of 1024; `KiB`, `MB` and the like are read the same way).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (a number with an optional K, M, G suffix)"))?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => {
            return Err(format!(
                "'{s}': unknown size suffix '{other}' (K, M, G or T)"
            ));
        }
    };
    n.checked_mul(1usize << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_release_and_limits() {
        let b = MemBudget::new(100);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(41));
        assert_eq!(b.reserve_up_to(50), 40);
        assert_eq!(b.available(), 0);
        assert_eq!(b.reserve_up_to(1), 0);
        b.release(100);
        assert_eq!(b.used(), 0);
        assert_eq!(b.stats().peak, 100);
        b.force_reserve(120);
        assert_eq!(b.available(), 0);
        b.release(120);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("3MiB"), Ok(3 << 20));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
    }
}
