//! The queue-pair data path both virtio-net frontends share: the
//! vhost-user backend ([`super::vhost_user`]) and the embedded VMM's
//! virtio-pci device ([`super::virtio_pci`]). [`Pairs`] owns the state of
//! every queue pair (RX writers, TX states, stopped queues, TX retry
//! timers) and runs both directions; [`Port`] owns what the frontend shares
//! with its workers across guests (inboxes, worker controls, the guest
//! generation, counters), and [`QueueSink`] is a worker's way to the guest.
//! A frontend supplies only a [`Transport`]: where its queues live
//! (vhost-user-backend's `VringRwLock`s, or `Mutex<Queue>`s over the VM's
//! own memory), which pairs the guest uses, and how an interrupt is raised
//! (a call eventfd, or an MSI-X vector's irqfd); and, as [`RxQueues`], its
//! current guest's transport, if one is there.
//!
//! ```text
//!  TX kick ─► Pairs::process_tx ─► tx_pass: tx_pop chains ─► steer::frame_owner
//!             ─► worker k inbox (a full inbox parks the frame in
//!             TxState::pending and arms the pair's retry timer)
//!  worker k ─► QueueSink::send/flush ─► RxQueues::place_all ─► Pairs::place_all
//!             ─► rx_put into an RX queue ─► one notification decision per
//!             touched queue per batch
//! ```
//!
//! Locks, always in this order: a pair's TX state → a queue (the
//! transport's) → a pair's RX writer.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::timerfd::TimerFd;

use super::virtio_net::{self, ChainError, Negotiated, Rx, RxRing, Tx};
use crate::dataplane::worker::{FrameSink, Shared, WorkerCounters};
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
const TX_RETRY: Duration = Duration::from_micros(500);

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
struct TxState {
    /// A frame already taken from the queue that met a full inbox: (owner, frame).
    pending: Option<(usize, Frame)>,
    /// The queue broke the virtqueue rules and is stopped.
    broken: bool,
}

/// What a TX pass ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxPass {
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
fn tx_pass<M: GuestMemory>(
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
pub(super) fn rx_put<M: GuestMemory>(
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
enum Placed {
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
fn place_front(
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

/// What a virtio-net frontend shares with the workers behind it, across
/// guests (drivers, or VMM connections): their inboxes and controls, the
/// guest generation its sinks watch, and its counters.
pub struct Port {
    pairs: usize,
    inboxes: Vec<Arc<FrameRing>>,
    workers: OnceLock<Vec<Arc<Shared>>>,
    generation: AtomicU64,
    /// The frontend's counters.
    pub counters: Counters,
}

impl Port {
    /// `pairs` queue pairs whose guest → host frames go to `inboxes`.
    pub fn new(pairs: usize, inboxes: Vec<Arc<FrameRing>>) -> Port {
        Port {
            pairs,
            inboxes,
            workers: OnceLock::new(),
            generation: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    /// Number of queue pairs.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// The workers' inboxes (guest → host frames are steered to these).
    pub fn inboxes(&self) -> &[Arc<FrameRing>] {
        &self.inboxes
    }

    /// The workers' shared controls (offload changes, resets); set once.
    pub fn set_workers(&self, shared: Vec<Arc<Shared>>) {
        let _ = self.workers.set(shared);
    }

    /// Runs `f` on every worker's controls, then wakes the workers.
    pub fn workers_each(&self, f: impl Fn(&Shared)) {
        if let Some(s) = self.workers.get() {
            s.iter().for_each(|s| f(s));
        }
        self.kick_workers();
    }

    /// Wakes every worker (say, to let its sink retry).
    pub fn kick_workers(&self) {
        self.inboxes.iter().for_each(|r| r.kick());
    }

    /// Changes when the guest goes away or resets the device: frames the
    /// sinks kept for the old one are dropped.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The guest went away, came, or reset the device.
    pub fn new_guest(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// What a frontend gives the shared data path ([`Pairs`]).
pub trait Transport {
    /// The frontend's name in log lines.
    const WHAT: &'static str;
    /// The frontend's side toward the workers.
    fn port(&self) -> &Port;
    /// The state of the guest's queue pairs.
    fn queue_pairs(&self) -> &Pairs;
    /// The features the driver accepted.
    fn negotiated(&self) -> Negotiated;
    /// Queue pairs the guest uses now (frames toward it go to these).
    fn active_pairs(&self) -> usize;
    /// Runs `f` on virtqueue `q` (RX of pair p is 2p, TX 2p + 1) with the
    /// guest memory, if the queue is usable now (set up, enabled, ready);
    /// `None` otherwise.
    fn with_queue<R>(
        &self,
        q: usize,
        f: impl FnOnce(&mut Queue, &GuestMemoryMmap) -> R,
    ) -> Option<R>;
    /// Interrupts the guest for queue `q` (and counts it).
    fn signal(&self, q: usize);
}

/// The state of a frontend's queue pairs, and the data path over them.
pub struct Pairs {
    rx: Vec<Mutex<RxRing>>,
    rx_broken: Vec<AtomicBool>,
    tx: Vec<Mutex<TxState>>,
    timers: Vec<Mutex<TimerFd>>,
}

/// Locks `m`, taking over a poisoned lock (its holder panicked, but the
/// state it guards stays consistent between calls).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pairs {
    /// The state of `pairs` fresh queue pairs.
    pub fn new(pairs: usize) -> std::io::Result<Pairs> {
        Ok(Pairs {
            rx: (0..pairs).map(|_| Mutex::new(RxRing::default())).collect(),
            rx_broken: (0..pairs).map(|_| AtomicBool::new(false)).collect(),
            tx: (0..pairs).map(|_| Mutex::new(TxState::default())).collect(),
            timers: (0..pairs)
                .map(|_| {
                    TimerFd::new()
                        .map(Mutex::new)
                        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
                })
                .collect::<std::io::Result<_>>()?,
        })
    }

    /// The TX retry timer of pair `p`, to wait on: when it fires, call
    /// [`Pairs::retry_tx`].
    pub fn timer_fd(&self, p: usize) -> RawFd {
        lock(&self.timers[p]).as_raw_fd()
    }

    /// The TX retry timer of pair `p` fired: consume it and retry.
    pub fn retry_tx<T: Transport>(&self, t: &T, p: usize) {
        let _ = lock(&self.timers[p]).wait();
        self.process_tx(t, p);
    }

    /// Guest → host: move the TX chains of pair `p` to the workers'
    /// inboxes; a full inbox arms the pair's retry timer.
    pub fn process_tx<T: Transport>(&self, t: &T, p: usize) {
        let mut st = lock(&self.tx[p]);
        let neg = t.negotiated();
        let r = t.with_queue(2 * p + 1, |q, mem| {
            tx_pass(
                q,
                mem,
                neg,
                t.port().inboxes(),
                p,
                &mut st,
                &t.port().counters,
                T::WHAT,
            )
        });
        let notify = match r {
            None | Some(TxPass::Broken) => false,
            Some(TxPass::Done { notify }) => notify,
            Some(TxPass::Full { notify }) => {
                if let Err(e) = lock(&self.timers[p]).reset(TX_RETRY, None) {
                    log::error!("{}: arming the TX retry timer: {e}", T::WHAT);
                }
                notify
            }
        };
        if notify {
            t.signal(2 * p + 1);
        }
    }

    /// Host → guest: place frames from the front of `waiting` (worker
    /// `worker`'s) until it is empty or there is no room, then notify the
    /// queues written. Returns the bytes taken from `waiting`.
    pub fn place_all<T: Transport>(
        &self,
        t: &T,
        worker: usize,
        waiting: &mut VecDeque<Vec<u8>>,
        touched: &mut [bool],
        counters: &mut WorkerCounters,
    ) -> usize {
        let taken = place_front(waiting, counters, |f| self.place(t, worker, f, touched));
        self.notify(t, touched);
        taken
    }

    /// Writes one frame into the RX queue of the worker's own pair, or of
    /// the next active pair that is not stopped.
    fn place<T: Transport>(
        &self,
        t: &T,
        worker: usize,
        frame: &[u8],
        touched: &mut [bool],
    ) -> Placed {
        let neg = t.negotiated();
        let active = t.active_pairs().clamp(1, self.rx.len());
        let mut all_broken = true;
        for k in 0..active {
            let p = (worker + k) % active;
            if self.rx_broken[p].load(Ordering::Relaxed) {
                continue;
            }
            all_broken = false;
            let r = t.with_queue(2 * p, |q, mem| {
                rx_put(q, &mut lock(&self.rx[p]), mem, neg, frame)
            });
            let Some(r) = r else {
                continue;
            };
            return match r {
                Ok(Rx::Placed(_)) => {
                    touched[p] = true;
                    Placed::Done
                }
                Ok(Rx::NoRoom) => Placed::NoRoom,
                Ok(Rx::Dropped(_)) => Placed::Dropped,
                Err(e) => {
                    self.stop_rx(t, p, e);
                    Placed::Dropped
                }
            };
        }
        if all_broken {
            // No queue will take it until a reset: keeping it would only
            // make the worker retry every millisecond for nothing.
            Placed::Dropped
        } else {
            Placed::NoRoom
        }
    }

    /// Signals the RX queues written since the last call, where the guest
    /// wants it.
    fn notify<T: Transport>(&self, t: &T, touched: &mut [bool]) {
        for (p, written) in touched.iter_mut().enumerate() {
            if !std::mem::take(written) {
                continue;
            }
            let need = t.with_queue(2 * p, |q, mem| lock(&self.rx[p]).needs_notification(q, mem));
            match need {
                Some(Ok(true)) => t.signal(2 * p),
                Some(Ok(false)) | None => {}
                Some(Err(e)) => self.stop_rx(t, p, e),
            }
        }
    }

    fn stop_rx<T: Transport>(&self, t: &T, p: usize, e: ChainError) {
        crate::log_limited!(
            log::Level::Error,
            "{}: RX queue {}: {e}; queue stopped",
            T::WHAT,
            2 * p
        );
        t.port()
            .counters
            .broken_queues
            .fetch_add(1, Ordering::Relaxed);
        self.rx_broken[p].store(true, Ordering::Relaxed);
    }

    /// Back to a fresh device's state (the driver reset it): a TX frame
    /// still waiting goes back to its inbox's buffer pool.
    pub fn reset(&self, inboxes: &[Arc<FrameRing>]) {
        for p in 0..self.rx.len() {
            let mut st = lock(&self.tx[p]);
            if let Some((w, f)) = st.pending.take() {
                inboxes[w].put_buf(f.buf);
            }
            st.broken = false;
            drop(st);
            lock(&self.rx[p]).reset();
            self.rx_broken[p].store(false, Ordering::Relaxed);
        }
    }
}

/// A frontend's RX queues, as a worker's [`QueueSink`] sees them.
pub trait RxQueues: Send + Sync {
    /// The transport of one guest.
    type Guest: Transport;
    /// The frontend's side toward the workers.
    fn port(&self) -> &Port;
    /// Runs `f` on the current guest's transport; `None` while there is
    /// none.
    fn with_guest<R>(&self, f: impl FnOnce(&Self::Guest) -> R) -> Option<R>;

    /// See [`Port::generation`].
    fn generation(&self) -> u64 {
        self.port().generation()
    }

    /// Place frames from the front of `waiting` (worker `worker`'s) until
    /// it is empty or there is no room; then notify every queue in
    /// `touched` that wants it. Returns the bytes taken from `waiting`
    /// (none while there is no guest).
    fn place_all(
        &self,
        worker: usize,
        waiting: &mut VecDeque<Vec<u8>>,
        touched: &mut [bool],
        counters: &mut WorkerCounters,
    ) -> usize {
        self.with_guest(|g| {
            g.queue_pairs()
                .place_all(g, worker, waiting, touched, counters)
        })
        .unwrap_or(0)
    }
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
        let pairs = target.port().pairs();
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

impl<T: RxQueues> QueueSink<T> {
    /// Drops the frames kept for a guest that is gone (another one, or
    /// none, came since they were sent).
    fn forget_old_guest(&mut self, counters: &mut WorkerCounters) {
        let generation = self.target.generation();
        if generation != self.generation {
            counters.port_drops += self.waiting.len() as u64;
            self.waiting.clear();
            self.waiting_bytes = 0;
            self.generation = generation;
        }
    }
}

impl<T: RxQueues> FrameSink for QueueSink<T> {
    fn send(&mut self, frames: &mut Vec<Vec<u8>>, counters: &mut WorkerCounters) {
        // Before the new frames join: they are the current guest's (the
        // first reply after a reconnect, say a DHCP offer, was dropped as
        // stale when the sink had not flushed since).
        self.forget_old_guest(counters);
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
        self.forget_old_guest(counters);
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// RX queues that take every frame, and whose guest can be replaced.
    struct Fake {
        generation: AtomicU64,
        placed: Mutex<Vec<Vec<u8>>>,
        room: std::sync::atomic::AtomicBool,
        port: Port,
    }

    impl Default for Fake {
        fn default() -> Self {
            Fake {
                generation: AtomicU64::default(),
                placed: Mutex::default(),
                room: std::sync::atomic::AtomicBool::default(),
                port: Port::new(1, Vec::new()),
            }
        }
    }

    impl RxQueues for Fake {
        /// Never used: [`RxQueues::place_all`] is the fake's own.
        type Guest = crate::vmm::virtio_pci::NetCore;
        fn port(&self) -> &Port {
            &self.port
        }
        fn with_guest<R>(&self, _: impl FnOnce(&Self::Guest) -> R) -> Option<R> {
            None
        }
        fn generation(&self) -> u64 {
            self.generation.load(Ordering::SeqCst)
        }
        fn place_all(
            &self,
            _worker: usize,
            waiting: &mut VecDeque<Vec<u8>>,
            _touched: &mut [bool],
            counters: &mut WorkerCounters,
        ) -> usize {
            place_front(waiting, counters, |f| {
                if !self.room.load(Ordering::SeqCst) {
                    return Placed::NoRoom;
                }
                self.placed.lock().unwrap().push(f.to_vec());
                Placed::Done
            })
        }
    }

    /// Frames kept for a guest that left are dropped, but the first
    /// frame sent after a new guest came (with no flush in between) is
    /// the new guest's and is delivered.
    #[test]
    fn a_new_guests_first_frame_is_not_taken_for_a_stale_one() {
        let fake = Arc::new(Fake::default());
        let mut sink = QueueSink::new(fake.clone(), 0);
        let mut c = WorkerCounters::default();
        // Guest 1 has no RX buffers: the frame waits.
        sink.send(&mut vec![vec![1u8; 60]], &mut c);
        assert!(fake.placed.lock().unwrap().is_empty());
        // Guest 2 comes, with buffers; the worker's next frame is its.
        fake.generation.fetch_add(1, Ordering::SeqCst);
        fake.room.store(true, Ordering::SeqCst);
        sink.send(&mut vec![vec![2u8; 60]], &mut c);
        assert_eq!(*fake.placed.lock().unwrap(), vec![vec![2u8; 60]]);
        assert_eq!(c.port_drops, 1, "guest 1's frame is dropped");
        assert_eq!(c.port_writes, 1);
        assert!(!sink.flush(&mut c));
    }
}
