//! virtio-net over virtio-pci (modern, virtio 1.2 §4.1) for the embedded
//! VMM, wired to uipd's stack workers through the shared queue-pair data
//! path ([`super::queue_pair`]) and the device model ([`super::virtio_net`]).
//!
//! # Theory of operation
//!
//! ```text
//!  PCI function 00:0N.0, 1af4:1041, class 0x020000, MSI-X only (no INTx)
//!  BAR 0 (32-bit memory, 32 KiB):
//!    0x0000 common config   0x1000 ISR   0x2000 device config (virtio_net_config)
//!    0x3000 notify (4 bytes per queue)   0x4000 MSI-X table   0x6000 PBA
//!  queues: RX of pair p = 2p, TX = 2p + 1, control = 2 * pairs
//!  vectors: one per queue (the driver picks), plus config; GSI 24 + n each
//!
//!  guest kick of queue 2p/2p+1 ─ KVM ioeventfd (no exit) ─► thread uipd-vq{p}
//!      TX: tx_pass ─► steer ─► worker inboxes;  RX: kick the workers' sinks
//!  guest kick of the control queue ─ MMIO exit ─► vCPU thread: ctrl_process
//!  worker k ─ QueueSink ─► RX queue of pair k % active pairs ─► MSI-X irqfd,
//!      once per batch when event-idx says so
//! ```
//!
//! Everything the guest writes is checked: a register outside the common
//! configuration, an access of the wrong size, a queue size that is not a
//! power of two, a queue whose rings lie outside guest memory, features
//! the device did not offer: ignored and counted (`bad`), never a panic.
//! A queue the guest enables with bad rings stays disabled; a chain that
//! breaks the rules stops its queue ([`super::virtio_net::ChainError`]).
//!
//! Reset (status 0) puts every queue, the features and the MSI-X table
//! back to their initial state, bumps the generation (sinks drop frames
//! meant for the old driver) and tells every worker to reset its flows.
//!
//! Locks: the vCPU thread holds the device's mutex during an access; the
//! data path never takes it. Queues have their own mutexes in [`NetCore`],
//! RX writers and TX states theirs in [`Pairs`], always taken in the order
//! TX state → queue → RX writer.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::eventfd::EventFd;

use super::pci::{self, Hypervisor, Msix, MsixVector, PciConfig, PciDevice};
use super::queue_pair::{Counters, Pairs, Port, QueueSink, RxQueues, Transport};
use super::virtio_net::{
    self, ConfigSpace, CtrlEffect, Negotiated, OfferedOffloads, bit, feature, feature_names,
};
use crate::dataplane::worker::Shared;
use crate::rings::FrameRing;

/// Size of each virtqueue the device offers.
pub const QUEUE_SIZE: u16 = 256;
/// Most queue pairs (`--queues`).
pub const MAX_PAIRS: usize = 64;
/// `VIRTIO_MSI_NO_VECTOR`.
const NO_VECTOR: u16 = 0xffff;

/// BAR 0 layout.
const BAR_SIZE: u32 = 0x8000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x40;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const DEVICE_CFG_LEN: u64 = 0x100;
const NOTIFY: u64 = 0x3000;
const NOTIFY_MULT: u32 = 4;
const MSIX_TABLE_OFF: u32 = 0x4000;
const MSIX_PBA_OFF: u32 = 0x6000;
const MSIX_TABLE: u64 = MSIX_TABLE_OFF as u64;
const MSIX_PBA: u64 = MSIX_PBA_OFF as u64;

/// virtio-pci capability types (§4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

/// Device status bits (§2.1).
mod status {
    pub const FEATURES_OK: u8 = 8;
    pub const DRIVER_OK: u8 = 4;
    pub const NEEDS_RESET: u8 = 64;
}

/// State the data path shares: queues, interrupts, workers.
pub struct NetCore {
    mem: GuestMemoryMmap,
    /// Inboxes, worker controls, generation and counters.
    port: Port,
    offloads: OfferedOffloads,
    queues: Vec<Mutex<Queue>>,
    /// The queue pairs' data path state.
    data: Pairs,
    queue_vector: Vec<AtomicU16>,
    vectors: OnceLock<Arc<[MsixVector]>>,
    acked: AtomicU64,
    live: AtomicBool,
    active_pairs: AtomicUsize,
    isr: AtomicU8,
    kicks: Vec<EventFd>,
    stop: EventFd,
}

impl NetCore {
    /// A device core for `pairs` queue pairs over `mem`, feeding `inboxes`
    /// (one per worker, or per TAP queue), offering `offloads`.
    pub fn new(
        mem: GuestMemoryMmap,
        pairs: usize,
        inboxes: Vec<Arc<FrameRing>>,
        offloads: OfferedOffloads,
    ) -> std::io::Result<Arc<NetCore>> {
        let pairs = pairs.clamp(1, MAX_PAIRS);
        let nq = 2 * pairs + 1;
        let q = || {
            Queue::new(QUEUE_SIZE)
                .map(Mutex::new)
                .map_err(|e| std::io::Error::other(format!("{e:?}")))
        };
        Ok(Arc::new(NetCore {
            mem,
            port: Port::new(pairs, inboxes),
            offloads,
            queues: (0..nq).map(|_| q()).collect::<std::io::Result<_>>()?,
            data: Pairs::new(pairs)?,
            queue_vector: (0..nq).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            vectors: OnceLock::new(),
            acked: AtomicU64::new(0),
            live: AtomicBool::new(false),
            active_pairs: AtomicUsize::new(1),
            isr: AtomicU8::new(0),
            kicks: (0..2 * pairs)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<std::io::Result<_>>()?,
            stop: EventFd::new(libc::EFD_NONBLOCK)?,
        }))
    }

    /// The workers' shared controls (offloads, resets).
    pub fn set_workers(&self, shared: Vec<Arc<Shared>>) {
        self.port.set_workers(shared);
    }

    /// Data-path counters.
    pub fn counters(&self) -> &Counters {
        &self.port.counters
    }

    /// Queue pairs.
    pub fn pairs(&self) -> usize {
        self.port.pairs()
    }

    /// A sink for worker `worker`'s frames toward the guest.
    pub fn sink(self: &Arc<Self>, worker: usize) -> QueueSink<NetCore> {
        QueueSink::new(self.clone(), worker)
    }

    /// The features offered.
    pub fn features(&self) -> u64 {
        virtio_net::offered_with(
            u16::try_from(self.pairs()).unwrap_or(1),
            true,
            self.offloads,
        )
    }

    /// What the driver accepted (0 until it sets FEATURES_OK, and after a
    /// reset).
    pub fn negotiated(&self) -> Negotiated {
        Negotiated(self.acked.load(Ordering::Acquire))
    }

    fn lock_queue(&self, q: usize) -> std::sync::MutexGuard<'_, Queue> {
        self.queues[q].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn workers_each(&self, f: impl Fn(&Shared)) {
        self.port.workers_each(f);
    }

    /// Interrupt for queue `q` (its MSI-X vector, if it has one).
    fn signal_queue(&self, q: usize) {
        let v = self.queue_vector[q].load(Ordering::Acquire);
        self.isr.fetch_or(1, Ordering::AcqRel);
        if let Some(vec) = self.vectors.get().and_then(|vs| vs.get(usize::from(v))) {
            vec.signal();
            self.port
                .counters
                .interrupts
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The control queue, on the vCPU thread that kicked it.
    fn process_ctrl(&self) {
        let cq = 2 * self.pairs();
        let mut effects = Vec::new();
        let notify = {
            let mut q = self.lock_queue(cq);
            if !q.ready() || !self.live.load(Ordering::Acquire) {
                return;
            }
            let max = u16::try_from(self.pairs()).unwrap_or(1);
            let mut used = false;
            loop {
                match virtio_net::ctrl_process(&mut q, &self.mem, max, &mut effects) {
                    Ok(any) => used |= any,
                    Err(e) => {
                        crate::log_limited!(
                            log::Level::Error,
                            "virtio-net: control queue: {e}; queue stopped"
                        );
                        self.port
                            .counters
                            .broken_queues
                            .fetch_add(1, Ordering::Relaxed);
                        q.set_ready(false);
                        return;
                    }
                }
                // With EVENT_IDX the driver kicks again only past
                // avail_event (§2.7.10): move it to what we consumed, and
                // look again in case it added a command meanwhile.
                match q.enable_notification(&self.mem) {
                    Ok(true) => continue,
                    _ => break,
                }
            }
            used && q.needs_notification(&self.mem).unwrap_or(true)
        };
        for e in effects {
            match e {
                CtrlEffect::QueuePairs(n) => {
                    crate::log_limited!(
                        log::Level::Info,
                        "virtio-net: the guest uses {n} queue pairs"
                    );
                    self.active_pairs.store(usize::from(n), Ordering::Release);
                }
            }
        }
        if notify {
            self.signal_queue(cq);
        }
    }

    /// Thread uipd-vq{p}: TX kicks, RX kicks (refills) and TX retries of
    /// pair `p`, until [`NetCore::stop`].
    fn pair_loop(&self, p: usize) {
        let timer_fd = self.data.timer_fd(p);
        let fds = [
            self.kicks[2 * p].as_raw_fd(),
            self.kicks[2 * p + 1].as_raw_fd(),
            timer_fd,
            self.stop.as_raw_fd(),
        ];
        loop {
            let mut pfd = fds.map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: `pfd` is an array of four valid pollfds on the stack.
            let n = unsafe { libc::poll(pfd.as_mut_ptr(), 4, 1000) };
            if n < 0 {
                continue;
            }
            if pfd[3].revents != 0 {
                return;
            }
            log::trace!("virtio-net: pair {p} events {:?}", pfd.map(|f| f.revents));
            if pfd[0].revents != 0 {
                let _ = self.kicks[2 * p].read();
                // The guest added RX buffers: let the workers' sinks retry.
                self.port.kick_workers();
            }
            if pfd[2].revents != 0 {
                // The retry also takes whatever a kick announced.
                let _ = self.kicks[2 * p + 1].read();
                self.data.retry_tx(self, p);
            } else if pfd[1].revents != 0 {
                let _ = self.kicks[2 * p + 1].read();
                self.data.process_tx(self, p);
            }
        }
    }

    /// Starts one thread per queue pair.
    pub fn start(self: &Arc<Self>) -> std::io::Result<Vec<JoinHandle<()>>> {
        (0..self.pairs())
            .map(|p| {
                let c = self.clone();
                std::thread::Builder::new()
                    .name(format!("uipd-vq{p}"))
                    .spawn(move || c.pair_loop(p))
            })
            .collect()
    }

    /// Ends the queue threads.
    pub fn stop(&self) {
        let _ = self.stop.write(1);
    }

    fn reset(&self) {
        self.live.store(false, Ordering::Release);
        self.data.reset(self.port.inboxes());
        for (q, v) in self.queues.iter().zip(&self.queue_vector) {
            q.lock().unwrap_or_else(|e| e.into_inner()).reset();
            v.store(NO_VECTOR, Ordering::Release);
        }
        self.acked.store(0, Ordering::Release);
        self.active_pairs.store(1, Ordering::Release);
        self.isr.store(0, Ordering::Release);
        self.port.new_guest();
        self.workers_each(|s| s.reset());
    }
}

/// The device's driver is its one guest: always there (its queues are
/// usable only while it is live, see [`Transport::with_queue`]).
impl RxQueues for NetCore {
    type Guest = NetCore;

    fn port(&self) -> &Port {
        &self.port
    }

    fn with_guest<R>(&self, f: impl FnOnce(&NetCore) -> R) -> Option<R> {
        Some(f(self))
    }
}

impl Transport for NetCore {
    const WHAT: &'static str = "virtio-net";

    fn port(&self) -> &Port {
        &self.port
    }

    fn queue_pairs(&self) -> &Pairs {
        &self.data
    }

    fn negotiated(&self) -> Negotiated {
        NetCore::negotiated(self)
    }

    /// The pairs the driver enabled through the control queue.
    fn active_pairs(&self) -> usize {
        self.active_pairs.load(Ordering::Acquire)
    }

    /// Queues are usable only while the driver is live (DRIVER_OK, no
    /// reset since).
    fn with_queue<R>(
        &self,
        q: usize,
        f: impl FnOnce(&mut Queue, &GuestMemoryMmap) -> R,
    ) -> Option<R> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let mut queue = self.lock_queue(q);
        if !queue.ready() {
            return None;
        }
        Some(f(&mut queue, &self.mem))
    }

    fn signal(&self, q: usize) {
        self.signal_queue(q);
    }
}

/// Whether `q`'s descriptor table, avail and used rings lie inside `mem`
/// (virtio 1.2 §2.7: 16 bytes per descriptor, 6 + 2 per avail entry, 6 + 8
/// per used entry). `QueueT::is_valid` checks the same but logs each
/// failure, and the guest chooses how often it enables a queue.
fn rings_inside(q: &Queue, mem: &GuestMemoryMmap) -> bool {
    let n = usize::from(q.size());
    [
        (q.desc_table(), 16 * n, Permissions::Read),
        (q.avail_ring(), 6 + 2 * n, Permissions::Read),
        (q.used_ring(), 6 + 8 * n, Permissions::Write),
    ]
    .into_iter()
    .all(|(a, len, access)| mem.check_range(GuestAddress(a), len, access))
}

/// The PCI function: configuration space, BAR 0 registers, MSI-X.
pub struct VirtioNetPci {
    cfg: PciConfig,
    msix_cap: usize,
    msix: Msix,
    core: Arc<NetCore>,
    hv: Arc<dyn Hypervisor>,
    /// Where the ioeventfds are registered (BAR 0's address).
    ioevents_at: Option<u64>,
    config: ConfigSpace,
    device_feature_sel: u32,
    driver_feature_sel: u32,
    driver_features: u64,
    status: u8,
    config_vector: u16,
    queue_sel: u16,
    /// Guest accesses ignored as invalid.
    pub bad: u64,
}

impl VirtioNetPci {
    /// The function, its BAR 0 at `bar_addr`; MSI-X vectors on GSIs from
    /// `gsi_base`.
    pub fn new(
        core: Arc<NetCore>,
        hv: Arc<dyn Hypervisor>,
        bar_addr: u32,
        gsi_base: u32,
        mtu: u16,
    ) -> std::io::Result<VirtioNetPci> {
        let nq = u16::try_from(core.queues.len()).unwrap_or(0);
        let msix = Msix::new(nq + 1, gsi_base, hv.clone())?;
        let _ = core.vectors.set(msix.vectors.clone());
        // Modern-only virtio-net: device ID 0x1040 + 1, revision 1.
        let mut cfg = PciConfig::new(0x1af4, 0x1041, 0x02_0000, 1, (0x1af4, 0x1100));
        cfg.set_bar(0, bar_addr, BAR_SIZE);
        let (body, mask) = msix.capability(0, MSIX_TABLE_OFF, MSIX_PBA_OFF);
        let msix_cap = cfg.add_capability(pci::CAP_MSIX, &body, &mask);
        let vcap = |ty: u8, off: u64, len: u64, extra: Option<u32>| {
            // struct virtio_pci_cap after vndr and next: cap_len, cfg_type,
            // bar, id, padding[2], offset, length (+ notify_off_multiplier).
            let cap_len: u8 = if extra.is_some() { 20 } else { 16 };
            let mut b = vec![cap_len, ty, 0, 0, 0, 0];
            b.extend_from_slice(&u32::try_from(off).unwrap_or(0).to_le_bytes());
            b.extend_from_slice(&u32::try_from(len).unwrap_or(0).to_le_bytes());
            if let Some(m) = extra {
                b.extend_from_slice(&m.to_le_bytes());
            }
            b
        };
        let notify_len = u64::from(nq) * u64::from(NOTIFY_MULT);
        for b in [
            vcap(CAP_COMMON, COMMON, COMMON_LEN, None),
            vcap(CAP_NOTIFY, NOTIFY, notify_len, Some(NOTIFY_MULT)),
            vcap(CAP_ISR, ISR, 1, None),
            vcap(CAP_DEVICE, DEVICE_CFG, DEVICE_CFG_LEN, None),
        ] {
            cfg.add_capability(pci::CAP_VENDOR, &b, &[]);
        }
        let config = ConfigSpace {
            mac: [0x00, 0x15, 0x15, 0x15, 0x15, 0x15],
            status: 1,
            max_queue_pairs: u16::try_from(core.pairs()).unwrap_or(1),
            mtu,
        };
        Ok(VirtioNetPci {
            cfg,
            msix_cap,
            msix,
            core,
            hv,
            ioevents_at: None,
            config,
            device_feature_sel: 0,
            driver_feature_sel: 0,
            driver_features: 0,
            status: 0,
            config_vector: NO_VECTOR,
            queue_sel: 0,
            bad: 0,
        })
    }

    /// Registers the notify ioeventfds of the data queues where BAR 0 is
    /// now (and removes them from where it was).
    fn place_ioevents(&mut self) {
        let now = self.cfg.bar_addr(0).map(|(a, _)| a);
        if now == self.ioevents_at {
            return;
        }
        let kicks = &self.core.kicks;
        for (at, reg) in [(self.ioevents_at, false), (now, true)] {
            let Some(base) = at else { continue };
            for (q, k) in kicks.iter().enumerate() {
                let addr = base + NOTIFY + u64::from(NOTIFY_MULT) * q as u64;
                if let Err(e) = self.hv.ioevent(k, addr, reg) {
                    crate::log_limited!(
                        log::Level::Warn,
                        "virtio-net: ioeventfd at {addr:#x}: {e}"
                    );
                }
            }
        }
        self.ioevents_at = now;
    }

    fn selected(&self) -> Option<usize> {
        let q = usize::from(self.queue_sel);
        (q < self.core.queues.len()).then_some(q)
    }

    fn common_read(&mut self, off: u64, data: &mut [u8]) {
        let core = &self.core;
        let q = self.selected();
        let v: u64 = match (off, data.len()) {
            (0x00, 4) => u64::from(self.device_feature_sel),
            (0x04, 4) => match self.device_feature_sel {
                0 => core.features() & 0xffff_ffff,
                1 => core.features() >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(self.driver_feature_sel),
            (0x0c, 4) => match self.driver_feature_sel {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => u64::from(self.config_vector),
            (0x12, 2) => core.queues.len() as u64,
            (0x14, 1) => u64::from(self.status),
            (0x15, 1) => 0, // config_generation: the config never changes
            (0x16, 2) => u64::from(self.queue_sel),
            (0x18, 2) => q.map_or(0, |q| u64::from(core.lock_queue(q).size())),
            (0x1a, 2) => q.map_or(u64::from(NO_VECTOR), |q| {
                u64::from(core.queue_vector[q].load(Ordering::Acquire))
            }),
            (0x1c, 2) => q.map_or(0, |q| u64::from(core.lock_queue(q).ready())),
            (0x1e, 2) => q.map_or(0, |q| q as u64),
            (0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, 4) => q.map_or(0, |q| {
                let g = core.lock_queue(q);
                let a = match off & !7 {
                    0x20 => g.desc_table(),
                    0x28 => g.avail_ring(),
                    _ => g.used_ring(),
                };
                if off & 4 == 0 {
                    a & 0xffff_ffff
                } else {
                    a >> 32
                }
            }),
            _ => {
                self.bad += 1;
                u64::MAX
            }
        };
        let b = v.to_le_bytes();
        data.copy_from_slice(&b[..data.len()]);
    }

    fn common_write(&mut self, off: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        // Cannot truncate: each arm checks the width first.
        let (v16, v32) = ((v & 0xffff) as u16, (v & 0xffff_ffff) as u32);
        match (off, data.len()) {
            (0x00, 4) => self.device_feature_sel = v32,
            (0x08, 4) => self.driver_feature_sel = v32,
            (0x0c, 4) => {
                if self.status & status::FEATURES_OK != 0 {
                    self.bad += 1;
                    return;
                }
                match self.driver_feature_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => self.bad += 1,
                }
            }
            (0x10, 2) => self.config_vector = self.check_vector(v16),
            (0x14, 1) => self.set_status((v & 0xff) as u8),
            (0x16, 2) => self.queue_sel = v16,
            (0x18 | 0x1a | 0x1c | 0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, _) => {
                self.queue_write(off, data.len(), v16, v32)
            }
            _ => self.bad += 1,
        }
    }

    /// A vector number the device has, else NO_VECTOR (which the driver
    /// reads back as a refusal, §4.1.5.1.2).
    fn check_vector(&mut self, v: u16) -> u16 {
        if v == NO_VECTOR || usize::from(v) < self.msix.len() {
            v
        } else {
            self.bad += 1;
            NO_VECTOR
        }
    }

    fn queue_write(&mut self, off: u64, len: usize, v16: u16, v32: u32) {
        let Some(qi) = self.selected() else {
            self.bad += 1;
            return;
        };
        if off == 0x1a && len == 2 {
            let v = self.check_vector(v16);
            self.core.queue_vector[qi].store(v, Ordering::Release);
            return;
        }
        let core = self.core.clone();
        let mut q = core.lock_queue(qi);
        // §4.1.4.3.2: the driver writes a queue's fields only while it is
        // disabled, and enables it once.
        if q.ready() || self.status & status::DRIVER_OK != 0 && off != 0x1c {
            self.bad += 1;
            return;
        }
        match (off, len) {
            (0x18, 2) => {
                if v16 == 0 || v16 > QUEUE_SIZE || !v16.is_power_of_two() {
                    self.bad += 1;
                } else {
                    q.set_size(v16);
                }
            }
            (0x1c, 2) => {
                if v16 != 1 {
                    self.bad += 1;
                    return;
                }
                q.set_event_idx(Negotiated(self.driver_features).has(feature::RING_EVENT_IDX));
                q.set_ready(true);
                crate::log_limited!(
                    log::Level::Debug,
                    burst 256,
                    "virtio-net: queue {qi} enabled: size {} vector {}",
                    q.size(),
                    core.queue_vector[qi].load(Ordering::Relaxed)
                );
                if !rings_inside(&q, &core.mem) {
                    crate::log_limited!(
                        log::Level::Warn,
                        "virtio-net: queue {qi} has rings outside guest memory: left disabled"
                    );
                    q.set_ready(false);
                    self.bad += 1;
                }
            }
            (0x20..=0x37, 4) => {
                // One half of a ring address (low word at the 8-aligned
                // offset). `try_set_*`, not `set_*`: a misaligned address
                // is counted here; the latter would log it on every write.
                let cur = match off {
                    0x20 | 0x24 => q.desc_table(),
                    0x28 | 0x2c => q.avail_ring(),
                    _ => q.used_ring(),
                };
                let a = if off % 8 == 0 {
                    (cur & !0xffff_ffff) | u64::from(v32)
                } else {
                    (cur & 0xffff_ffff) | (u64::from(v32) << 32)
                };
                let r = match off {
                    0x20 | 0x24 => q.try_set_desc_table_address(GuestAddress(a)),
                    0x28 | 0x2c => q.try_set_avail_ring_address(GuestAddress(a)),
                    _ => q.try_set_used_ring_address(GuestAddress(a)),
                };
                if r.is_err() {
                    self.bad += 1;
                }
            }
            _ => self.bad += 1,
        }
    }

    fn set_status(&mut self, s: u8) {
        if s == 0 {
            self.reset();
            return;
        }
        let mut s = s;
        let newly = s & !self.status;
        if newly & status::FEATURES_OK != 0 {
            let offered = self.core.features();
            let f = self.driver_features;
            if f & !offered != 0 || f & bit(feature::VERSION_1) == 0 {
                crate::log_limited!(
                    log::Level::Warn,
                    "virtio-net: the driver asked for features {:#x} (offered {offered:#x}): refused",
                    f
                );
                s &= !status::FEATURES_OK;
                self.bad += 1;
            } else {
                self.accept_features(f);
            }
        }
        if newly & status::DRIVER_OK != 0 && s & status::FEATURES_OK != 0 {
            self.core.live.store(true, Ordering::Release);
            crate::log_limited!(log::Level::Info, "virtio-net: driver ready");
        }
        self.status = s & !status::NEEDS_RESET;
    }

    fn accept_features(&self, f: u64) {
        crate::log_limited!(
            log::Level::Info,
            "virtio-net: guest features: {}",
            feature_names(f).join(" ")
        );
        self.core.acked.store(f, Ordering::Release);
        // Only offered features are accepted (set_status), so without
        // offloads offered none are on here either.
        let off = Negotiated(f).offload();
        self.core.workers_each(|s| s.set_offload(off));
    }

    fn reset(&mut self) {
        self.core.reset();
        self.msix.reset();
        self.device_feature_sel = 0;
        self.driver_feature_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.config_vector = NO_VECTOR;
        self.queue_sel = 0;
    }

    fn notify(&mut self, off: u64) {
        let q = off / u64::from(NOTIFY_MULT);
        let cq = 2 * self.core.pairs() as u64;
        if q == cq {
            self.core.process_ctrl();
        } else if let Some(k) = usize::try_from(q).ok().and_then(|q| self.core.kicks.get(q)) {
            // A kick that reached us as an exit (no ioeventfd yet).
            let _ = k.write(1);
        } else {
            self.bad += 1;
        }
    }
}

impl PciDevice for VirtioNetPci {
    fn config(&self) -> &PciConfig {
        &self.cfg
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let change = self.cfg.write(offset, data);
        if change.bars {
            self.place_ioevents();
        }
        let ctrl_at = self.msix_cap + 2;
        if offset <= ctrl_at + 1 && offset + data.len() > ctrl_at {
            let ctrl = self.cfg.get16(ctrl_at);
            self.msix.set_control(ctrl);
        }
    }

    fn bar_read(&mut self, bar: usize, off: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        let len = data.len() as u64;
        match off {
            o if o + len <= COMMON + COMMON_LEN => self.common_read(o - COMMON, data),
            ISR if len == 1 => data[0] = self.core.isr.swap(0, Ordering::AcqRel),
            o if (DEVICE_CFG..DEVICE_CFG + DEVICE_CFG_LEN).contains(&o) => {
                let b = self.config.read(
                    u32::try_from(o - DEVICE_CFG).unwrap_or(u32::MAX),
                    u32::try_from(len).unwrap_or(0),
                );
                if b.len() == data.len() {
                    data.copy_from_slice(&b);
                }
            }
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => self.msix.table_read(o - MSIX_TABLE, data),
            o if (MSIX_PBA..u64::from(BAR_SIZE)).contains(&o) => {
                self.msix.pba_read(o - MSIX_PBA, data)
            }
            _ => self.bad += 1,
        }
    }

    fn bar_write(&mut self, bar: usize, off: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        let len = data.len() as u64;
        match off {
            o if o + len <= COMMON + COMMON_LEN => self.common_write(o - COMMON, data),
            o if (NOTIFY..MSIX_TABLE).contains(&o) => self.notify(o - NOTIFY),
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => self.msix.table_write(o - MSIX_TABLE, data),
            _ => self.bad += 1,
        }
    }
}

#[cfg(test)]
mod tests;
