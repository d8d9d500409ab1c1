//! MSI-X (PCI Local Bus 3.0 §6.8.2): a function's vector table and
//! pending-bit array, and behind each vector an irqfd on its own GSI with
//! a KVM MSI route ([`Hypervisor`]). Masking is done here
//! ([`MsixVector::signal`] keeps an interrupt pending while the vector or
//! the function is masked, and delivers it on unmask), so KVM's routes
//! change only when the guest rewrites an entry; a route to an address
//! outside the local APICs' window is refused and counted (`bad`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// x86 MSI address window (the local APICs).
const MSI_ADDR_MASK: u64 = 0xfff0_0000;
const MSI_ADDR_BASE: u64 = 0xfee0_0000;

/// What the VMM does for devices in KVM: MSI routes and ioeventfds. The
/// KVM implementation is [`crate::vmm::kvm::KvmHooks`]; tests record calls.
pub trait Hypervisor: Send + Sync {
    /// Route `gsi` to this MSI message (address, data), or remove its route.
    fn set_msi_route(&self, gsi: u32, msg: Option<(u64, u32)>) -> std::io::Result<()>;
    /// Have a guest write of any size to `addr` signal `fd` without an exit
    /// (`register` false: undo that).
    fn ioevent(&self, fd: &EventFd, addr: u64, register: bool) -> std::io::Result<()>;
    /// Have writes to `fd` raise `gsi`.
    fn irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()>;
}

/// One MSI-X vector as the data path sees it: an irqfd and the mask state.
#[derive(Debug)]
pub struct MsixVector {
    /// Registered as an irqfd on the vector's GSI.
    pub evt: EventFd,
    masked: AtomicBool,
    pending: AtomicBool,
    /// Interrupts sent.
    pub sent: AtomicU64,
}

impl MsixVector {
    fn new() -> std::io::Result<MsixVector> {
        Ok(MsixVector {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            masked: AtomicBool::new(true),
            pending: AtomicBool::new(false),
            sent: AtomicU64::new(0),
        })
    }

    /// Raise the interrupt, or keep it pending while masked (PCI 3.0
    /// §6.8.3.5: the PBA bit).
    pub fn signal(&self) {
        if self.masked.load(Ordering::Acquire) {
            self.pending.store(true, Ordering::Release);
            // An unmask between the load and the store has already looked
            // at `pending`: look at the mask again, so the interrupt is not
            // lost (a spurious one is harmless).
            if self.masked.load(Ordering::Acquire) || !self.pending.swap(false, Ordering::AcqRel) {
                return;
            }
        }
        if self.evt.write(1).is_ok() {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn set_masked(&self, masked: bool) {
        self.masked.store(masked, Ordering::Release);
        if !masked && self.pending.swap(false, Ordering::AcqRel) && self.evt.write(1).is_ok() {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether an interrupt waits for an unmask.
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }
}

/// Bytes per MSI-X table entry.
pub const MSIX_ENTRY: u64 = 16;
pub(super) const MSIX_CTRL_ENABLE: u16 = 1 << 15;
pub(super) const MSIX_CTRL_MASKALL: u16 = 1 << 14;

/// The MSI-X table of one function.
pub struct Msix {
    table: Vec<[u32; 4]>,
    enabled: bool,
    mask_all: bool,
    /// The vectors, shared with the data path.
    pub vectors: Arc<[MsixVector]>,
    routes: Vec<Option<(u64, u32)>>,
    gsi_base: u32,
    hv: Arc<dyn Hypervisor>,
    /// Rejected table writes and routes (bad size, bad address).
    pub bad: u64,
}

impl Msix {
    /// `n` vectors on GSIs `gsi_base..`, each with an irqfd; every entry
    /// starts masked (PCI 3.0 §6.8.2.9).
    pub fn new(n: u16, gsi_base: u32, hv: Arc<dyn Hypervisor>) -> std::io::Result<Msix> {
        let vectors: Arc<[MsixVector]> = (0..n)
            .map(|_| MsixVector::new())
            .collect::<std::io::Result<Vec<_>>>()?
            .into();
        for (i, v) in vectors.iter().enumerate() {
            hv.irqfd(&v.evt, gsi_base + u32::try_from(i).unwrap_or(0))?;
        }
        Ok(Msix {
            table: vec![[0, 0, 0, 1]; usize::from(n)],
            enabled: false,
            mask_all: false,
            vectors,
            routes: vec![None; usize::from(n)],
            gsi_base,
            hv,
            bad: 0,
        })
    }

    /// Table entries.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The capability body (after ID and next) for a table at `table_off`
    /// and a PBA at `pba_off` in BAR `bar`, and its write mask.
    pub fn capability(&self, bar: u8, table_off: u32, pba_off: u32) -> ([u8; 10], [u8; 10]) {
        let mut b = [0u8; 10];
        let n = u16::try_from(self.table.len().saturating_sub(1)).unwrap_or(0);
        b[0..2].copy_from_slice(&n.to_le_bytes());
        b[2..6].copy_from_slice(&(table_off | u32::from(bar)).to_le_bytes());
        b[6..10].copy_from_slice(&(pba_off | u32::from(bar)).to_le_bytes());
        let mut m = [0u8; 10];
        m[1] = 0xc0; // enable, function mask
        (b, m)
    }

    /// The guest wrote the capability's message control word.
    pub fn set_control(&mut self, ctrl: u16) {
        let (e, m) = (ctrl & MSIX_CTRL_ENABLE != 0, ctrl & MSIX_CTRL_MASKALL != 0);
        if (e, m) != (self.enabled, self.mask_all) {
            self.enabled = e;
            self.mask_all = m;
            for i in 0..self.table.len() {
                self.sync(i);
            }
        }
    }

    /// Whether MSI-X is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A read in the table (32-bit accesses; 64-bit ones are two).
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let (i, w) = (offset / MSIX_ENTRY, (offset % MSIX_ENTRY) / 4);
        let Some(e) = usize::try_from(i).ok().and_then(|i| self.table.get(i)) else {
            return;
        };
        let w = usize::try_from(w).unwrap_or(0);
        match data.len() {
            4 if offset % 4 == 0 => data.copy_from_slice(&e[w].to_le_bytes()),
            8 if offset % 8 == 0 => {
                data[..4].copy_from_slice(&e[w].to_le_bytes());
                data[4..].copy_from_slice(&e[w + 1].to_le_bytes());
            }
            _ => {}
        }
    }

    /// A write in the table; the entry's route and mask follow.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let i = usize::try_from(offset / MSIX_ENTRY).unwrap_or(usize::MAX);
        let w = usize::try_from((offset % MSIX_ENTRY) / 4).unwrap_or(0);
        let Some(e) = self.table.get_mut(i) else {
            self.bad += 1;
            return;
        };
        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        match data.len() {
            4 if offset % 4 == 0 => e[w] = word(data),
            8 if offset % 8 == 0 => {
                e[w] = word(&data[..4]);
                e[w + 1] = word(&data[4..]);
            }
            _ => {
                self.bad += 1;
                return;
            }
        }
        // Only the mask bit of vector control is defined.
        e[3] &= 1;
        self.sync(i);
    }

    /// A read of the pending-bit array.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (k, b) in data.iter_mut().enumerate() {
            let mut v = 0u8;
            for bit in 0..8u64 {
                let i = (offset + k as u64) * 8 + bit;
                let p = usize::try_from(i)
                    .ok()
                    .and_then(|i| self.vectors.get(i))
                    .is_some_and(MsixVector::is_pending);
                if p {
                    v |= 1 << bit;
                }
            }
            *b = v;
        }
    }

    /// Entry `i` changed (or the function's state did): update its KVM
    /// route while unmasked, then its mask (which delivers a pending one).
    fn sync(&mut self, i: usize) {
        let e = self.table[i];
        let masked = !self.enabled || self.mask_all || e[3] & 1 != 0;
        if !masked {
            let addr = u64::from(e[0]) | (u64::from(e[1]) << 32);
            let want = (addr & MSI_ADDR_MASK == MSI_ADDR_BASE).then_some((addr, e[2]));
            if want.is_none() {
                self.bad += 1;
            }
            if want != self.routes[i] {
                let gsi = self.gsi_base + u32::try_from(i).unwrap_or(0);
                log::debug!("MSI-X vector {i}: GSI {gsi} -> {want:x?}");
                match self.hv.set_msi_route(gsi, want) {
                    Ok(()) => self.routes[i] = want,
                    Err(e) => {
                        log::warn!("MSI-X vector {i}: KVM route: {e}");
                        self.bad += 1;
                    }
                }
            }
            if want.is_none() {
                // Nowhere to deliver: keep it masked (and pending).
                self.vectors[i].set_masked(true);
                return;
            }
        }
        self.vectors[i].set_masked(masked);
    }

    /// Device reset: every entry masked, MSI-X off (the routes stay until
    /// the guest writes new ones).
    pub fn reset(&mut self) {
        for e in &mut self.table {
            *e = [0, 0, 0, 1];
        }
        self.enabled = false;
        self.mask_all = false;
        for v in self.vectors.iter() {
            v.set_masked(true);
            v.pending.store(false, Ordering::Release);
        }
    }
}
