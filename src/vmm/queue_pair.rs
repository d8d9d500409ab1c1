//! The queue-pair data path both virtio-net frontends share: the
//! vhost-user backend ([`super::vhost_user`]) and the embedded VMM's
//! virtio-pci device ([`super::virtio_pci`]). They differ only in where the
//! queues live (vhost-user-backend's `VringRwLock`s, or `Mutex<Queue>`s
//! over the VM's own memory) and how an interrupt is raised (a call
//! eventfd, or an MSI-X vector's irqfd).
//!
//! ```text
//!  TX kick ─► tx_pass: tx_pop chains ─► steer::frame_owner ─► worker k inbox
//!             (a full inbox parks the frame in TxState::pending: retry later)
//!  worker k ─► QueueSink::send/flush ─► RxQueues::place_all ─► rx_put into an
//!             RX queue ─► one notification decision per touched queue per batch
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemory};

use super::virtio_net::{self, ChainError, Negotiated, Rx, RxRing, Tx};
use crate::dataplane::worker::{FrameSink, WorkerCounters};
use crate::rings::{Frame, FrameRing};
use crate::stack::steer::{self, Steer};
use crate::stack::wire::vnet_hdr::HEADER_LEN;

/// Bytes of frames a sink keeps while the guest has no RX buffers: more
/// than a Linux guest's largest default TCP receive window (6 MiB), so TCP
/// toward a slow guest waits on its window instead of losing segments
/// here and stalling on retransmission timeouts (measured: a 1024-frame
/// cap, 1.5 MB at MTU 1500, cut host→guest to a quarter without offloads).
pub const SINK_MAX_BYTES: usize = 8 << 20;
/// TX chains per pass before notifications are re-enabled.
pub const TX_BUDGET: usize = 256;
/// Retry delay for a TX frame that met a full inbox.
pub const TX_RETRY: Duration = Duration::from_micros(500);

/// Counters of a virtio-net frontend.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames taken from TX queues.
    pub tx_frames: AtomicU64,
    /// TX chains dropped (too short or too long).
    pub tx_drops: AtomicU64,
    /// Times a worker's inbox was full (TX paused).
    pub ring_full: AtomicU64,
    /// Queues stopped for a broken descriptor chain.
    pub broken_queues: AtomicU64,
    /// Interrupts signalled.
    pub interrupts: AtomicU64,
}

impl Counters {
    /// One line for the log.
    pub fn summary(&self) -> String {
        format!(
            "tx_frames {} tx_drops {} ring_full {} broken_queues {} interrupts {}",
            self.tx_frames.load(Ordering::Relaxed),
            self.tx_drops.load(Ordering::Relaxed),
            self.ring_full.load(Ordering::Relaxed),
            self.broken_queues.load(Ordering::Relaxed),
            self.interrupts.load(Ordering::Relaxed)
        )
    }
}

/// A TX queue's state between passes.
#[derive(Default)]
pub struct TxState {
    /// A frame already taken from the queue that met a full inbox: (owner, frame).
    pub pending: Option<(usize, Frame)>,
    /// The queue broke the virtqueue rules and is stopped.
    pub broken: bool,
}

/// What a TX pass ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxPass {
    /// The queue is empty (notifications re-enabled); `notify` if the
    /// guest wants an interrupt for the chains used.
    Done {
        /// Interrupt the guest.
        notify: bool,
    },
    /// An inbox was full: retry later (nothing was lost).
    Full {
        /// Interrupt the guest.
        notify: bool,
    },
    /// The queue broke a rule: it is stopped.
    Broken,
}

/// Guest → host: move the chains of TX queue `q` (of pair `pair`) to the
/// workers' inboxes, steered by flow; the frame that met a full inbox
/// waits in `st.pending` (retried first on the next pass).
#[allow(clippy::too_many_arguments)]
pub fn tx_pass<M: GuestMemory>(
    q: &mut Queue,
    mem: &M,
    neg: Negotiated,
    inboxes: &[Arc<FrameRing>],
    pair: usize,
    st: &mut TxState,
    c: &Counters,
    what: &str,
) -> TxPass {
    // A not-ready queue pops nothing, but `enable_notification` could
    // still see a moving avail index: never loop on it.
    if st.broken || !q.ready() {
        return TxPass::Done { notify: false };
    }
    let workers = inboxes.len();
    if let Some((w, f)) = st.pending.take() {
        if let Err(f) = inboxes[w].push(f) {
            st.pending = Some((w, f));
            return TxPass::Full { notify: false };
        }
    }
    let home = &inboxes[pair % workers];
    let mut full = false;
    'pass: loop {
        let _ = q.disable_notification(mem);
        for _ in 0..TX_BUDGET {
            let mut buf = home.get_buf();
            match virtio_net::tx_pop(q, mem, neg, &mut buf) {
                Ok(None) => {
                    home.put_buf(buf);
                    break;
                }
                Ok(Some(Tx::Frame(len))) => {
                    c.tx_frames.fetch_add(1, Ordering::Relaxed);
                    let eth = buf.get(HEADER_LEN..len).unwrap_or_default();
                    let w = match steer::frame_owner(eth, workers) {
                        Steer::Worker(w) => w.min(workers - 1),
                        Steer::Any => pair % workers,
                    };
                    if let Err(f) = inboxes[w].push(Frame { buf, len }) {
                        c.ring_full.fetch_add(1, Ordering::Relaxed);
                        st.pending = Some((w, f));
                        full = true;
                        break 'pass;
                    }
                }
                Ok(Some(Tx::Dropped(r))) => {
                    crate::log_limited!(log::Level::Debug, "{what}: TX frame dropped: {r:?}");
                    c.tx_drops.fetch_add(1, Ordering::Relaxed);
                    home.put_buf(buf);
                }
                Err(e) => {
                    crate::log_limited!(
                        log::Level::Error,
                        "{what}: TX queue of pair {pair}: {e}; queue stopped"
                    );
                    c.broken_queues.fetch_add(1, Ordering::Relaxed);
                    st.broken = true;
                    return TxPass::Broken;
                }
            }
        }
        // Re-enable kicks; if the guest added chains meanwhile, go on.
        match q.enable_notification(mem) {
            Ok(true) => continue,
            _ => break,
        }
    }
    let notify = q.needs_notification(mem).unwrap_or(true);
    if full {
        TxPass::Full { notify }
    } else {
        TxPass::Done { notify }
    }
}

/// Host → guest: [`RxRing::put`], and when the queue has no room, ask for
/// a kick and look once more (buffers may have arrived meanwhile;
/// otherwise the guest's next refill kicks).
///
/// With EVENT_IDX the kick must be asked for at the guest's *current*
/// avail index, not at ours: with MRG_RXBUF a frame that needs more
/// buffers than are posted leaves our index behind the guest's, and an
/// `avail_event` there is one the guest has already passed, so its next
/// refill would not kick and RX would stall until something else woke the
/// queue.
pub fn rx_put<M: GuestMemory>(
    q: &mut Queue,
    rx: &mut RxRing,
    mem: &M,
    neg: Negotiated,
    frame: &[u8],
) -> Result<Rx, ChainError> {
    let mut r = rx.put(q, mem, neg, frame);
    if r != Ok(Rx::NoRoom) {
        return r;
    }
    if matches!(q.enable_notification(mem), Ok(true)) {
        r = rx.put(q, mem, neg, frame);
    }
    if r == Ok(Rx::NoRoom) && q.event_idx_enabled() && kick_on_next_refill(q, mem) {
        r = rx.put(q, mem, neg, frame);
    }
    r
}

/// Sets `avail_event` to the guest's avail index, so that any buffer it
/// adds next kicks; true when the index moved meanwhile (look again).
fn kick_on_next_refill<M: GuestMemory>(q: &Queue, mem: &M) -> bool {
    let Ok(seen) = q.avail_idx(mem, Ordering::Acquire) else {
        return false;
    };
    // §2.7.10: avail_event follows the used ring's `size` elements.
    let at = q
        .used_ring()
        .checked_add(4 + 8 * u64::from(q.size()))
        .map(vm_memory::GuestAddress);
    let Some(at) = at else {
        return false;
    };
    if mem.store(seen.0.to_le(), at, Ordering::Release).is_err() {
        return false;
    }
    std::sync::atomic::fence(Ordering::SeqCst);
    q.avail_idx(mem, Ordering::Acquire)
        .is_ok_and(|now| now != seen)
}

/// The outcome of placing one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Written into an RX queue.
    Done,
    /// No RX buffers now: keep it.
    NoRoom,
    /// Dropped (too big, or a broken queue).
    Dropped,
}

/// Place frames from the front of `waiting` with `place` until one finds
/// no room; counts writes and drops. Returns the bytes taken from
/// `waiting` (for [`RxQueues::place_all`]).
pub fn place_front(
    waiting: &mut VecDeque<Vec<u8>>,
    counters: &mut WorkerCounters,
    mut place: impl FnMut(&[u8]) -> Placed,
) -> usize {
    let mut taken = 0;
    while let Some(f) = waiting.front() {
        match place(f) {
            Placed::Done => counters.port_writes += 1,
            Placed::Dropped => counters.port_drops += 1,
            Placed::NoRoom => break,
        }
        if let Some(f) = waiting.pop_front() {
            taken += f.len();
        }
    }
    taken
}

/// A frontend's RX queues, as a worker's [`QueueSink`] sees them.
pub trait RxQueues: Send + Sync {
    /// Changes when the guest goes away or resets the device: frames kept
    /// for the old one are dropped.
    fn generation(&self) -> u64;
    /// Number of queue pairs.
    fn pairs(&self) -> usize;
    /// Place frames from the front of `waiting` (worker `worker`'s) until
    /// it is empty or there is no room; then notify every queue in
    /// `touched` that wants it. Returns the bytes taken from `waiting`.
    fn place_all(
        &self,
        worker: usize,
        waiting: &mut VecDeque<Vec<u8>>,
        touched: &mut [bool],
        counters: &mut WorkerCounters,
    ) -> usize;
}

/// A worker's frames toward the guest: straight into the RX buffers of a
/// virtio-net frontend's queues.
pub struct QueueSink<T: RxQueues> {
    target: Arc<T>,
    worker: usize,
    waiting: VecDeque<Vec<u8>>,
    /// Bytes in `waiting`.
    waiting_bytes: usize,
    generation: u64,
    touched: Vec<bool>,
}

impl<T: RxQueues> QueueSink<T> {
    /// The sink of worker `worker`.
    pub fn new(target: Arc<T>, worker: usize) -> Self {
        let pairs = target.pairs();
        QueueSink {
            target,
            worker,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            generation: 0,
            touched: vec![false; pairs],
        }
    }
}

impl<T: RxQueues> FrameSink for QueueSink<T> {
    fn send(&mut self, frames: &mut Vec<Vec<u8>>, counters: &mut WorkerCounters) {
        for f in frames.drain(..) {
            if self.waiting_bytes + f.len() > SINK_MAX_BYTES {
                counters.port_drops += 1;
            } else {
                self.waiting_bytes += f.len();
                self.waiting.push_back(f);
            }
        }
        self.flush(counters);
    }

    fn flush(&mut self, counters: &mut WorkerCounters) -> bool {
        let generation = self.target.generation();
        if generation != self.generation {
            // Another guest (or none): frames for the old one are stale.
            counters.port_drops += self.waiting.len() as u64;
            self.waiting.clear();
            self.waiting_bytes = 0;
            self.generation = generation;
        }
        if self.waiting.is_empty() {
            return false;
        }
        let taken =
            self.target
                .place_all(self.worker, &mut self.waiting, &mut self.touched, counters);
        self.waiting_bytes = self.waiting_bytes.saturating_sub(taken);
        !self.waiting.is_empty()
    }
}
