//! The PCI bus of the embedded VMM: configuration space through the
//! type-1 mechanism (ports 0xcf8/0xcfc) and through ECAM (MMCONFIG), memory
//! BARs in the MMIO hole, and MSI-X (table, PBA, and the irqfd behind each
//! vector).
//!
//! # Theory of operation
//!
//! ```text
//!  port 0xcf8 ◄─ address (enable, bus 0, device, function 0, register)
//!  port 0xcfc..0xcff ─┐
//!  ECAM [PCI_ECAM_START, +1 MiB): bus 0 │ dev 5 bits │ fn 3 bits │ reg 12 bits
//!                     └─► PciBus::config_read/config_write (one decoder: ConfigAddr)
//!                           ─► PciConfig of that function (256 bytes + zeros to 4 KiB)
//!  MMIO window [PCI_MMIO_START, +PCI_MMIO_SIZE) ─► the device whose memory BAR
//!                                                 (memory decoding on) covers it
//!  device 0: host bridge (class 0x0600)   devices 1..: virtio-pci functions
//! ```
//!
//! Linux finds the bus through the ACPI root bridge `\_SB.PCI0`; without
//! ACPI it would find it itself: `pci_check_type1` writes
//! 0x80000000 to 0xcf8, reads it back, and then wants a host bridge (or a
//! VGA device) on bus 0 (`pci_sanity_check`); so device 0 is a host bridge
//! and nothing is needed on the kernel command line (`pci=conf1` only
//! forbids the other mechanisms).
//!
//! ECAM (PCI Express Base 4.0 §7.2.2): the same configuration space,
//! memory-mapped, 4 KiB per function. Registers 0x100..0xfff are the
//! extended space: they read as 0 (an extended capability header of 0 at
//! 0x100 says "none") and ignore writes. The window covers bus 0 only; the
//! ACPI MCFG table ([`super::acpi`]) describes it and the E820 map
//! reserves it; Linux then uses it for every access ("PCI: MMCONFIG for
//! domain 0000 [bus 00-00]"), and ports 0xcf8/0xcfc stay for early boot
//! and other kernels. Only bus 0, function 0 exist; anything else reads as all-ones, and an
//! access of a size other than 1, 2 or 4 bytes, or not naturally aligned,
//! reads as all-ones and writes nothing, through either path.
//!
//! Configuration space is bytes plus a write mask per byte: a guest write
//! changes only writable bits, so BAR sizing (write all-ones, read back
//! `!(size - 1)`) and read-only fields need no special cases. BARs are
//! assigned by uipd (as firmware would) and Linux keeps them; a guest that
//! moves a BAR is followed (the device is told through
//! [`PciDevice::config_write`]; [`PciConfig::write`] says a BAR changed).
//!
//! MSI-X: each vector's address and data become a KVM MSI route on its own
//! GSI, and an irqfd on that GSI is what the data path writes. Masking is
//! done in uipd ([`MsixVector::signal`] keeps the interrupt pending while
//! the vector or the function is masked, and delivers it on unmask), so
//! KVM's routes change only when the guest rewrites an entry. A route to
//! an address outside the local APICs' window is refused and counted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::devices::BusDevice;

/// Type-1 configuration ports: address at 0xcf8, data at 0xcfc.
pub const CONFIG_PORT: u64 = 0xcf8;
/// Ports claimed from [`CONFIG_PORT`].
pub const CONFIG_PORT_LEN: u64 = 8;
/// Start of the window where BARs are placed (the start of the MMIO hole).
pub const PCI_MMIO_START: u64 = super::boot::MMIO_HOLE_START;
/// Size of that window.
pub const PCI_MMIO_SIZE: u64 = 0x1000_0000;
/// Address space of the BARs of one device slot.
pub const SLOT_MMIO_SIZE: u64 = 0x10_0000;
/// Devices on bus 0.
pub const MAX_DEVICES: usize = 32;
/// The ECAM window (bus 0).
pub const PCI_ECAM_START: u64 = super::boot::PCI_ECAM_START;
/// Its size: 1 MiB per bus.
pub const PCI_ECAM_SIZE: u64 = super::boot::PCI_ECAM_SIZE;
/// Configuration space of one function as ECAM shows it.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// The part that holds registers (the rest, the extended space, is zeros).
const LEGACY_CONFIG_SIZE: usize = 256;
/// First GSI used for MSI routes (0..23 are the PIC and I/O APIC pins).
pub const MSI_GSI_BASE: u32 = 24;
/// x86 MSI address window (the local APICs).
const MSI_ADDR_MASK: u64 = 0xfff0_0000;
const MSI_ADDR_BASE: u64 = 0xfee0_0000;

/// Standard header offsets (PCI Local Bus 3.0 §6.1).
pub mod reg {
    /// Vendor ID.
    pub const VENDOR: usize = 0x00;
    /// Device ID.
    pub const DEVICE: usize = 0x02;
    /// Command.
    pub const COMMAND: usize = 0x04;
    /// Status.
    pub const STATUS: usize = 0x06;
    /// Revision ID.
    pub const REVISION: usize = 0x08;
    /// Class code (3 bytes: prog-if, subclass, class).
    pub const CLASS: usize = 0x09;
    /// Header type.
    pub const HEADER_TYPE: usize = 0x0e;
    /// BAR 0.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor ID.
    pub const SUBSYS_VENDOR: usize = 0x2c;
    /// Subsystem ID.
    pub const SUBSYS_ID: usize = 0x2e;
    /// Capabilities pointer.
    pub const CAP_PTR: usize = 0x34;
    /// Interrupt line.
    pub const INT_LINE: usize = 0x3c;
    /// Interrupt pin.
    pub const INT_PIN: usize = 0x3d;
}

/// Command register: memory space decoding.
pub const CMD_MEMORY: u16 = 1 << 1;
/// Status register: a capabilities list is present.
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Capability ID of MSI-X.
pub const CAP_MSIX: u8 = 0x11;
/// Capability ID of a vendor-specific capability (virtio's).
pub const CAP_VENDOR: u8 = 0x09;

/// One function's configuration space.
#[derive(Clone)]
pub struct PciConfig {
    bytes: [u8; 256],
    wmask: [u8; 256],
    /// Size of each BAR (0 = not implemented).
    bar_size: [u64; 6],
    /// Where the next capability goes; the last one's `next` byte.
    cap_end: usize,
    last_cap_next: Option<usize>,
}

/// What a guest write to configuration space changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigChange {
    /// A BAR's address or memory decoding changed.
    pub bars: bool,
}

impl PciConfig {
    /// A type-0 header for `vendor:device` of class `class` (24 bits:
    /// class, subclass, prog-if), without BARs or capabilities.
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8, subsys: (u16, u16)) -> Self {
        let mut c = PciConfig {
            bytes: [0; 256],
            wmask: [0; 256],
            bar_size: [0; 6],
            cap_end: 0x40,
            last_cap_next: None,
        };
        c.set16(reg::VENDOR, vendor);
        c.set16(reg::DEVICE, device);
        c.bytes[reg::REVISION] = revision;
        c.bytes[reg::CLASS..reg::CLASS + 3].copy_from_slice(&class.to_le_bytes()[..3]);
        c.set16(reg::SUBSYS_VENDOR, subsys.0);
        c.set16(reg::SUBSYS_ID, subsys.1);
        // Command: I/O, memory, bus master and INTx disable are writable.
        c.wmask[reg::COMMAND] = 0x07;
        c.wmask[reg::COMMAND + 1] = 0x04;
        c.wmask[reg::INT_LINE] = 0xff;
        c
    }

    fn set16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn get32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[at..at + 4]);
        u32::from_le_bytes(b)
    }

    /// A 16-bit register.
    pub fn get16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    /// Makes BAR `i` a 32-bit, non-prefetchable memory BAR of `size` bytes
    /// (a power of two, at least 16) at `addr`.
    pub fn set_bar(&mut self, i: usize, addr: u32, size: u32) {
        debug_assert!(size.is_power_of_two() && size >= 16 && addr % size == 0);
        let at = reg::BAR0 + 4 * i;
        self.bar_size[i] = u64::from(size);
        self.bytes[at..at + 4].copy_from_slice(&addr.to_le_bytes());
        // The low four bits (memory, 32-bit, not prefetchable) are read-only.
        self.wmask[at..at + 4].copy_from_slice(&(!(size - 1) & !0xf).to_le_bytes());
    }

    /// Address of memory BAR `i` when memory decoding is on.
    pub fn bar_addr(&self, i: usize) -> Option<(u64, u64)> {
        let size = *self.bar_size.get(i)?;
        if size == 0 || self.get16(reg::COMMAND) & CMD_MEMORY == 0 {
            return None;
        }
        let addr = u64::from(self.get32(reg::BAR0 + 4 * i) & !0xf);
        Some((addr, size))
    }

    /// Appends a capability: `body` starts after the ID and next bytes;
    /// `wmask` (same length as `body`) says which bits the guest may write.
    /// Returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], wmask: &[u8]) -> usize {
        let at = self.cap_end;
        let len = 2 + body.len();
        assert!(at + len <= 256, "capabilities overflow configuration space");
        self.bytes[at] = id;
        self.bytes[at + 1] = 0;
        self.bytes[at + 2..at + len].copy_from_slice(body);
        for (m, w) in self.wmask[at + 2..at + len].iter_mut().zip(wmask) {
            *m = *w;
        }
        match self.last_cap_next {
            None => {
                self.bytes[reg::CAP_PTR] = u8::try_from(at).unwrap_or(0);
                let st = self.get16(reg::STATUS) | STATUS_CAP_LIST;
                self.set16(reg::STATUS, st);
            }
            Some(n) => self.bytes[n] = u8::try_from(at).unwrap_or(0),
        }
        self.last_cap_next = Some(at + 1);
        // Capabilities are dword-aligned.
        self.cap_end = (at + len + 3) & !3;
        at
    }

    /// A guest read: `data.len()` bytes (1, 2 or 4, naturally aligned) at
    /// `offset`; the extended space (256 up to [`CONFIG_SPACE_SIZE`]) reads
    /// as zeros; anything else reads as all-ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        let n = data.len();
        if !matches!(n, 1 | 2 | 4) || offset % n != 0 || offset + n > CONFIG_SPACE_SIZE {
            data.fill(0xff);
            return;
        }
        match self.bytes.get(offset..offset + n) {
            Some(b) => data.copy_from_slice(b),
            None => data.fill(0),
        }
    }

    /// A guest write: only writable bits change; misaligned or odd-sized
    /// writes, and writes to the extended space, are ignored.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> ConfigChange {
        let n = data.len();
        if !matches!(n, 1 | 2 | 4) || offset % n != 0 || offset + n > LEGACY_CONFIG_SIZE {
            return ConfigChange::default();
        }
        let before: Vec<_> = (0..6).map(|i| self.bar_addr(i)).collect();
        for (i, v) in data.iter().enumerate() {
            let at = offset + i;
            let m = self.wmask[at];
            self.bytes[at] = (self.bytes[at] & !m) | (v & m);
        }
        let after: Vec<_> = (0..6).map(|i| self.bar_addr(i)).collect();
        ConfigChange {
            bars: before != after,
        }
    }

    /// The raw bytes (tests, capability fields the device reads back).
    pub fn bytes(&self) -> &[u8; 256] {
        &self.bytes
    }
}

/// A PCI function on bus 0.
pub trait PciDevice: Send {
    /// Its configuration space.
    fn config(&self) -> &PciConfig;
    /// A guest configuration write (the default applies the write masks).
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// A read of `data.len()` bytes at `offset` in memory BAR `bar`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// A write at `offset` in memory BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// A shared PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// The host bridge at 00:00.0: what Linux looks for before it trusts
/// type-1 configuration access.
pub struct HostBridge(PciConfig);

impl Default for HostBridge {
    fn default() -> Self {
        // Red Hat's QEMU PCIe host bridge ID; class 0x060000 (host bridge).
        HostBridge(PciConfig::new(
            0x1b36,
            0x0008,
            0x06_0000,
            0,
            (0x1af4, 0x1100),
        ))
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.0
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.0.write(offset, data);
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// Bus 0: the devices by slot, reached through the configuration ports
/// ([`PciConfigIo`]) and the BAR window ([`PciMmio`]).
#[derive(Default)]
pub struct PciBus {
    devices: Vec<(usize, SharedPciDevice)>,
}

impl PciBus {
    /// A bus with the host bridge in slot 0.
    pub fn new() -> PciBus {
        let mut b = PciBus::default();
        b.devices
            .push((0, Arc::new(Mutex::new(HostBridge::default()))));
        b
    }

    /// The next free slot.
    pub fn next_slot(&self) -> Option<usize> {
        let n = self.devices.len();
        (n < MAX_DEVICES).then_some(n)
    }

    /// Where the BARs of `slot` go (its share of the window).
    pub fn slot_mmio(slot: usize) -> u64 {
        PCI_MMIO_START + SLOT_MMIO_SIZE * slot as u64
    }

    /// Adds a device in slot [`PciBus::next_slot`].
    pub fn add(&mut self, dev: SharedPciDevice) -> usize {
        let slot = self.devices.len();
        self.devices.push((slot, dev));
        slot
    }

    fn device(&self, slot: usize) -> Option<&SharedPciDevice> {
        self.devices
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, d)| d)
    }

    /// A configuration read at `a`: functions that do not exist read as
    /// all-ones (so do bad sizes and alignments, see [`PciConfig::read`]).
    /// Returns false if nothing answered.
    pub fn config_read(&self, a: ConfigAddr, data: &mut [u8]) -> bool {
        match self.function(a) {
            Some(d) => {
                lock(d).config().read(usize::from(a.reg), data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// A configuration write at `a`; to a function that does not exist it
    /// goes nowhere. Returns false if nothing took it.
    pub fn config_write(&self, a: ConfigAddr, data: &[u8]) -> bool {
        match self.function(a) {
            Some(d) => {
                lock(d).config_write(usize::from(a.reg), data);
                true
            }
            None => false,
        }
    }

    fn function(&self, a: ConfigAddr) -> Option<&SharedPciDevice> {
        if a.bus != 0 || a.func != 0 {
            return None;
        }
        self.device(usize::from(a.dev))
    }

    /// Splits into the port-I/O, BAR and ECAM faces.
    pub fn into_bus_devices(self) -> (PciConfigIo, PciEcam, PciMmio) {
        let devs = Arc::new(self.devices);
        let bus = || PciBus {
            devices: devs.to_vec(),
        };
        (
            PciConfigIo {
                addr: 0,
                bus: bus(),
                ignored: 0,
            },
            PciEcam {
                bus: bus(),
                ignored: 0,
            },
            PciMmio {
                devices: devs,
                unclaimed: 0,
            },
        )
    }
}

/// Which function and register a configuration access is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigAddr {
    /// Bus number.
    pub bus: u8,
    /// Device (slot), 0..32.
    pub dev: u8,
    /// Function, 0..8.
    pub func: u8,
    /// Register offset, 0..4096.
    pub reg: u16,
}

impl ConfigAddr {
    /// The type-1 address register `a` with the data port at `port_off`
    /// (4..8) selecting the byte; `None` while the enable bit is clear.
    pub fn from_type1(a: u32, port_off: u64) -> Option<ConfigAddr> {
        if a & 0x8000_0000 == 0 {
            return None;
        }
        let byte = u16::try_from(port_off.checked_sub(4)?)
            .ok()
            .filter(|b| *b < 4)?;
        // Cannot truncate: each field is masked to its width first.
        Some(ConfigAddr {
            bus: ((a >> 16) & 0xff) as u8,
            dev: ((a >> 11) & 0x1f) as u8,
            func: ((a >> 8) & 0x7) as u8,
            reg: (a & 0xfc) as u16 + byte,
        })
    }

    /// An offset into the ECAM window (PCIe Base 4.0 §7.2.2: bus in bits
    /// 27:20, device 19:15, function 14:12, register 11:0); `None` past
    /// 256 buses.
    pub fn from_ecam(off: u64) -> Option<ConfigAddr> {
        if off >= 256 << 20 {
            return None;
        }
        // Cannot truncate: each field is masked to its width first.
        Some(ConfigAddr {
            bus: ((off >> 20) & 0xff) as u8,
            dev: ((off >> 15) & 0x1f) as u8,
            func: ((off >> 12) & 0x7) as u8,
            reg: (off & 0xfff) as u16,
        })
    }
}

fn lock(d: &SharedPciDevice) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    d.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Ports 0xcf8-0xcff: the type-1 address register and the data window.
pub struct PciConfigIo {
    addr: u32,
    bus: PciBus,
    /// Accesses ignored: bad sizes, other buses or functions.
    pub ignored: u64,
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.addr.to_le_bytes()),
            4..=7 => match ConfigAddr::from_type1(self.addr, offset) {
                Some(a) => {
                    self.bus.config_read(a, data);
                }
                None => data.fill(0xff),
            },
            _ => {
                self.ignored += 1;
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [a, b, c, d]) => self.addr = u32::from_le_bytes([*a, *b, *c, *d]),
            (4..=7, _) => {
                let took = ConfigAddr::from_type1(self.addr, offset)
                    .is_some_and(|a| self.bus.config_write(a, data));
                if !took {
                    self.ignored += 1;
                }
            }
            // Byte writes to 0xcf8/0xcfb are the type-2 mechanism's
            // (Linux's probe pokes 0xcfb): ignored.
            _ => self.ignored += 1,
        }
    }
}

/// The ECAM (MMCONFIG) window on the MMIO bus, at [`PCI_ECAM_START`]:
/// offsets decode to a function and register ([`ConfigAddr::from_ecam`]),
/// then go where the type-1 ports' accesses go.
pub struct PciEcam {
    bus: PciBus,
    /// Accesses no function took (other buses, functions, empty slots).
    pub ignored: u64,
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let answered = ConfigAddr::from_ecam(offset).is_some_and(|a| self.bus.config_read(a, data));
        if !answered {
            data.fill(0xff);
            self.ignored += 1;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let took = ConfigAddr::from_ecam(offset).is_some_and(|a| self.bus.config_write(a, data));
        if !took {
            self.ignored += 1;
        }
    }
}

/// The BAR window on the MMIO bus: each access goes to the device whose
/// memory BAR covers it.
pub struct PciMmio {
    devices: Arc<Vec<(usize, SharedPciDevice)>>,
    /// Accesses no BAR claimed.
    pub unclaimed: u64,
}

impl PciMmio {
    fn access(&mut self, offset: u64, len: usize, f: impl FnOnce(&mut dyn PciDevice, usize, u64)) {
        let addr = PCI_MMIO_START + offset;
        for (_, d) in self.devices.iter() {
            let mut g = lock(d);
            let hit = (0..6).find_map(|i| {
                let (base, size) = g.config().bar_addr(i)?;
                let off = addr.checked_sub(base)?;
                (off.checked_add(len as u64)? <= size).then_some((i, off))
            });
            if let Some((bar, off)) = hit {
                f(&mut *g, bar, off);
                return;
            }
        }
        self.unclaimed += 1;
    }
}

impl BusDevice for PciMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let len = data.len();
        self.access(offset, len, |d, bar, off| d.bar_read(bar, off, data));
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.access(offset, data.len(), |d, bar, off| {
            d.bar_write(bar, off, data)
        });
    }
}

/// What the VMM does for devices in KVM: MSI routes and ioeventfds. The
/// KVM implementation is [`super::kvm::KvmHooks`]; tests record calls.
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
const MSIX_CTRL_ENABLE: u16 = 1 << 15;
const MSIX_CTRL_MASKALL: u16 = 1 << 14;

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A GSI and its MSI message, as set.
    pub type Route = (u32, Option<(u64, u32)>);

    /// Records what a device asked of KVM.
    #[derive(Default)]
    pub struct FakeHv {
        pub routes: Mutex<Vec<Route>>,
        pub ioevents: Mutex<Vec<(u64, bool)>>,
        pub irqfds: Mutex<Vec<u32>>,
    }

    impl Hypervisor for FakeHv {
        fn set_msi_route(&self, gsi: u32, msg: Option<(u64, u32)>) -> std::io::Result<()> {
            self.routes.lock().unwrap().push((gsi, msg));
            Ok(())
        }
        fn ioevent(&self, _fd: &EventFd, addr: u64, register: bool) -> std::io::Result<()> {
            self.ioevents.lock().unwrap().push((addr, register));
            Ok(())
        }
        fn irqfd(&self, _fd: &EventFd, gsi: u32) -> std::io::Result<()> {
            self.irqfds.lock().unwrap().push(gsi);
            Ok(())
        }
    }

    struct Dev(PciConfig, Vec<(usize, u64, Vec<u8>)>);
    impl PciDevice for Dev {
        fn config(&self) -> &PciConfig {
            &self.0
        }
        fn config_write(&mut self, offset: usize, data: &[u8]) {
            self.0.write(offset, data);
        }
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(bar * 16 + usize::try_from(offset).unwrap()).unwrap());
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.1.push((bar, offset, data.to_vec()));
        }
    }

    fn cfg_read(io: &mut PciConfigIo, slot: u32, reg: u32, len: usize) -> u32 {
        io.write(
            0,
            &(0x8000_0000 | (slot << 11) | (reg & 0xfc)).to_le_bytes(),
        );
        let mut b = [0u8; 4];
        io.read(4 + u64::from(reg & 3), &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn cfg_write(io: &mut PciConfigIo, slot: u32, reg: u32, data: &[u8]) {
        io.write(
            0,
            &(0x8000_0000 | (slot << 11) | (reg & 0xfc)).to_le_bytes(),
        );
        io.write(4 + u64::from(reg & 3), data);
    }

    fn bus_with_dev() -> (PciConfigIo, PciMmio, Arc<Mutex<Dev>>) {
        let mut bus = PciBus::new();
        let mut c = PciConfig::new(0x1af4, 0x1041, 0x02_0000, 1, (0x1af4, 0x1100));
        let base = u32::try_from(PciBus::slot_mmio(1)).unwrap();
        c.set_bar(0, base, 0x4000);
        c.add_capability(CAP_MSIX, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], &[0, 0xc0]);
        c.add_capability(
            CAP_VENDOR,
            &[14, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[],
        );
        let dev = Arc::new(Mutex::new(Dev(c, Vec::new())));
        assert_eq!(bus.add(dev.clone()), 1);
        let (io, _, mmio) = bus.into_bus_devices();
        (io, mmio, dev)
    }

    #[test]
    fn type1_probe_finds_the_host_bridge_and_the_device() {
        let (mut io, _, _) = bus_with_dev();
        // Linux's pci_check_type1: a byte to 0xcfb is ignored, the address
        // register reads back what was written.
        io.write(3, &[1]);
        io.write(0, &0x8000_0000u32.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
        assert_eq!(cfg_read(&mut io, 0, 0, 4), 0x0008_1b36);
        assert_eq!(cfg_read(&mut io, 0, 0x0a, 2), 0x0600, "host bridge class");
        assert_eq!(cfg_read(&mut io, 1, 0, 4), 0x1041_1af4);
        assert_eq!(cfg_read(&mut io, 1, 0x0b, 1), 0x02);
        assert_eq!(
            cfg_read(&mut io, 1, 2, 2),
            0x1041,
            "16-bit read at offset 2"
        );
        // Empty slots, other functions and buses float.
        assert_eq!(cfg_read(&mut io, 2, 0, 4), 0xffff_ffff);
        io.write(0, &(0x8000_0000u32 | (1 << 11) | (1 << 8)).to_le_bytes());
        io.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);
        io.write(0, &(0x8000_0000u32 | (1 << 16) | (1 << 11)).to_le_bytes());
        io.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);
        // Disabled address: floats too.
        io.write(0, &(1u32 << 11).to_le_bytes());
        io.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn bar_sizing_and_read_only_fields() {
        let (mut io, _, _) = bus_with_dev();
        let base = u32::try_from(PciBus::slot_mmio(1)).unwrap();
        assert_eq!(cfg_read(&mut io, 1, 0x10, 4), base);
        cfg_write(&mut io, 1, 0x10, &[0xff; 4]);
        assert_eq!(
            cfg_read(&mut io, 1, 0x10, 4),
            !(0x4000u32 - 1),
            "size 16 KiB, 32-bit memory"
        );
        cfg_write(&mut io, 1, 0x10, &base.to_le_bytes());
        assert_eq!(cfg_read(&mut io, 1, 0x10, 4), base);
        // Unimplemented BARs and the ROM BAR size to 0.
        for r in [0x14, 0x18, 0x24, 0x30] {
            cfg_write(&mut io, 1, r, &[0xff; 4]);
            assert_eq!(cfg_read(&mut io, 1, r, 4), 0, "register {r:#x}");
        }
        // IDs, class, header type and the capability chain are read-only.
        cfg_write(&mut io, 1, 0, &[0; 4]);
        cfg_write(&mut io, 1, 0x08, &[0; 4]);
        cfg_write(&mut io, 1, 0x34, &[0]);
        assert_eq!(cfg_read(&mut io, 1, 0, 4), 0x1041_1af4);
        assert_eq!(cfg_read(&mut io, 1, 0x08, 4), 0x0200_0001);
        assert_eq!(cfg_read(&mut io, 1, 0x34, 1), 0x40);
        // Status says there is a capability list; the chain: MSI-X at 0x40
        // (12 bytes), the vendor capability at 0x4c, then the end.
        assert_ne!(cfg_read(&mut io, 1, 0x06, 2) & 0x10, 0);
        assert_eq!(cfg_read(&mut io, 1, 0x40, 2), 0x4c11);
        assert_eq!(cfg_read(&mut io, 1, 0x4c, 2), 0x0009);
        // The command register keeps only its writable bits.
        cfg_write(&mut io, 1, 0x04, &0xffffu16.to_le_bytes());
        assert_eq!(cfg_read(&mut io, 1, 0x04, 2), 0x0407);
        // Misaligned and odd-sized accesses are ignored.
        cfg_write(&mut io, 1, 0x11, &[0, 0]);
        assert_eq!(cfg_read(&mut io, 1, 0x10, 4), base);
        // Writable MSI-X control bits only.
        cfg_write(&mut io, 1, 0x42, &0xffffu16.to_le_bytes());
        assert_eq!(cfg_read(&mut io, 1, 0x42, 2), 0xc000 | 0x0201);
    }

    #[test]
    fn mmio_goes_to_the_bar_only_while_memory_decoding_is_on() {
        let (mut io, mut mmio, dev) = bus_with_dev();
        let off = PciBus::slot_mmio(1) - PCI_MMIO_START;
        let mut b = [0u8; 2];
        mmio.read(off + 3, &mut b);
        assert_eq!(b, [0xff; 2], "memory decoding off");
        cfg_write(&mut io, 1, 0x04, &CMD_MEMORY.to_le_bytes());
        mmio.read(off + 3, &mut b);
        assert_eq!(b, [3; 2]);
        mmio.write(off + 0x10, &[1, 2, 3, 4]);
        mmio.write(off + 0x3fff, &[1, 2]); // straddles the end
        assert_eq!(dev.lock().unwrap().1, vec![(0, 0x10, vec![1, 2, 3, 4])]);
        assert_eq!(mmio.unclaimed, 2);
        // The guest moves the BAR: the window follows.
        let new = u32::try_from(PciBus::slot_mmio(5)).unwrap();
        cfg_write(&mut io, 1, 0x10, &new.to_le_bytes());
        mmio.read(off + 3, &mut b);
        assert_eq!(b, [0xff; 2]);
        mmio.read(u64::from(new) - PCI_MMIO_START + 5, &mut b);
        assert_eq!(b, [5; 2]);
    }

    fn bus_with_dev_and_ecam() -> (PciConfigIo, PciEcam, Arc<Mutex<Dev>>) {
        let mut bus = PciBus::new();
        let mut c = PciConfig::new(0x1af4, 0x1041, 0x02_0000, 1, (0x1af4, 0x1100));
        c.set_bar(0, u32::try_from(PciBus::slot_mmio(1)).unwrap(), 0x4000);
        c.add_capability(CAP_MSIX, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], &[0, 0xc0]);
        let dev = Arc::new(Mutex::new(Dev(c, Vec::new())));
        bus.add(dev.clone());
        let (io, ecam, _) = bus.into_bus_devices();
        (io, ecam, dev)
    }

    fn ecam_off(bus: u64, dev: u64, func: u64, reg: u64) -> u64 {
        (bus << 20) | (dev << 15) | (func << 12) | reg
    }

    fn ecam_read(e: &mut PciEcam, off: u64, len: usize) -> u32 {
        let mut b = [0u8; 4];
        e.read(off, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    #[test]
    fn ecam_addresses_decode_to_bus_device_function_register() {
        let a = |bus, dev, func, reg| ConfigAddr {
            bus,
            dev,
            func,
            reg,
        };
        assert_eq!(ConfigAddr::from_ecam(0), Some(a(0, 0, 0, 0)));
        assert_eq!(
            ConfigAddr::from_ecam(ecam_off(0, 1, 0, 0x10)),
            Some(a(0, 1, 0, 0x10))
        );
        assert_eq!(
            ConfigAddr::from_ecam(ecam_off(3, 31, 7, 0xfff)),
            Some(a(3, 31, 7, 0xfff))
        );
        assert_eq!(
            ConfigAddr::from_ecam(ecam_off(255, 31, 7, 0xffc)),
            Some(a(255, 31, 7, 0xffc))
        );
        assert_eq!(ConfigAddr::from_ecam(256 << 20), None);
        assert_eq!(ConfigAddr::from_ecam(u64::MAX), None);
        // Type 1: enable bit, register dword plus the data port's byte.
        let t1 = 0x8000_0000u32 | (2 << 16) | (5 << 11) | (3 << 8) | 0x44;
        assert_eq!(ConfigAddr::from_type1(t1, 4), Some(a(2, 5, 3, 0x44)));
        assert_eq!(ConfigAddr::from_type1(t1, 7), Some(a(2, 5, 3, 0x47)));
        assert_eq!(ConfigAddr::from_type1(t1 & 0x7fff_ffff, 4), None);
        assert_eq!(ConfigAddr::from_type1(t1, 3), None);
        assert_eq!(ConfigAddr::from_type1(t1, 8), None);
        // The two low bits of the address register are not register bits.
        assert_eq!(ConfigAddr::from_type1(t1 | 3, 4), Some(a(2, 5, 3, 0x44)));
    }

    #[test]
    fn ecam_and_type1_reach_the_same_configuration_space() {
        let (mut io, mut ecam, _) = bus_with_dev_and_ecam();
        // Every register of both functions, in every size, reads the same.
        for slot in 0..2u32 {
            for reg in 0..256u32 {
                for len in [1usize, 2, 4] {
                    if reg as usize % len != 0 {
                        continue;
                    }
                    let off = ecam_off(0, u64::from(slot), 0, u64::from(reg));
                    assert_eq!(
                        ecam_read(&mut ecam, off, len),
                        cfg_read(&mut io, slot, reg, len),
                        "slot {slot} reg {reg:#x} len {len}"
                    );
                }
            }
        }
        // A write through one is read back through the other.
        let bar = ecam_off(0, 1, 0, 0x10);
        ecam.write(bar, &[0xff; 4]);
        assert_eq!(cfg_read(&mut io, 1, 0x10, 4), !(0x4000u32 - 1));
        cfg_write(&mut io, 1, 0x10, &0xc020_0000u32.to_le_bytes());
        assert_eq!(ecam_read(&mut ecam, bar, 4), 0xc020_0000);
        ecam.write(ecam_off(0, 1, 0, 0x04), &CMD_MEMORY.to_le_bytes());
        assert_eq!(cfg_read(&mut io, 1, 0x04, 2), u32::from(CMD_MEMORY));
        // Read-only fields stay read-only through ECAM too.
        ecam.write(ecam_off(0, 1, 0, 0), &[0; 4]);
        assert_eq!(ecam_read(&mut ecam, ecam_off(0, 1, 0, 0), 4), 0x1041_1af4);
        assert_eq!(ecam.ignored, 0);
    }

    #[test]
    fn ecam_extended_space_reads_zero_and_odd_accesses_are_harmless() {
        let (mut io, mut ecam, dev) = bus_with_dev_and_ecam();
        // 0x100..0xfff: zeros (no extended capability), writes ignored.
        for reg in [0x100u64, 0x104, 0x800, 0xffc] {
            assert_eq!(ecam_read(&mut ecam, ecam_off(0, 0, 0, reg), 4), 0);
            assert_eq!(ecam_read(&mut ecam, ecam_off(0, 1, 0, reg), 4), 0);
        }
        assert_eq!(ecam_read(&mut ecam, ecam_off(0, 1, 0, 0xfff), 1), 0);
        let before = *dev.lock().unwrap().0.bytes();
        ecam.write(ecam_off(0, 1, 0, 0x100), &[0xff; 4]);
        ecam.write(ecam_off(0, 1, 0, 0xffe), &[0xff; 2]);
        assert_eq!(ecam_read(&mut ecam, ecam_off(0, 1, 0, 0x100), 4), 0);
        assert_eq!(*dev.lock().unwrap().0.bytes(), before);
        // Misaligned and odd-sized accesses: all-ones, nothing written.
        assert_eq!(
            ecam_read(&mut ecam, ecam_off(0, 1, 0, 0x11), 2),
            0xffff,
            "misaligned"
        );
        let mut b3 = [0u8; 3];
        ecam.read(ecam_off(0, 1, 0, 0), &mut b3);
        assert_eq!(b3, [0xff; 3]);
        let mut b8 = [0u8; 8];
        ecam.read(ecam_off(0, 1, 0, 0), &mut b8);
        assert_eq!(b8, [0xff; 8]);
        ecam.write(ecam_off(0, 1, 0, 0x10), &[0; 8]);
        ecam.write(ecam_off(0, 1, 0, 0x11), &[0, 0]);
        ecam.write(ecam_off(0, 1, 0, 0x04), &[]);
        assert_eq!(*dev.lock().unwrap().0.bytes(), before);
        // Other buses, functions and empty slots float and are counted.
        for off in [
            ecam_off(1, 0, 0, 0),
            ecam_off(0, 1, 1, 0),
            ecam_off(0, 9, 0, 0),
            ecam_off(255, 31, 7, 0xffc),
        ] {
            assert_eq!(ecam_read(&mut ecam, off, 4), 0xffff_ffff, "{off:#x}");
            ecam.write(off, &[0; 4]);
        }
        assert_eq!(ecam.ignored, 8);
        // Past the window (the bus would not send it; still harmless).
        assert_eq!(ecam_read(&mut ecam, 256 << 20, 4), 0xffff_ffff);
        ecam.write(u64::MAX - 3, &[0; 4]);
        // Type 1 cannot reach the extended space (registers stop at 0xff).
        assert_eq!(cfg_read(&mut io, 1, 0xfc, 4), 0);
    }

    fn msix(n: u16) -> (Msix, Arc<FakeHv>) {
        let hv = Arc::new(FakeHv::default());
        let m = Msix::new(n, MSI_GSI_BASE, hv.clone()).unwrap();
        (m, hv)
    }

    #[test]
    fn msix_table_writes_route_and_unmask() {
        let (mut m, hv) = msix(3);
        assert_eq!(*hv.irqfds.lock().unwrap(), vec![24, 25, 26]);
        // Entries start masked; the PBA is empty.
        let mut b = [0u8; 4];
        m.table_read(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
        m.vectors[1].signal();
        assert!(m.vectors[1].evt.read().is_err(), "masked: nothing sent");
        let mut p = [0u8; 1];
        m.pba_read(0, &mut p);
        assert_eq!(p, [0b010]);
        // Linux: enable with mask-all, write the entry, unmask it, clear mask-all.
        m.set_control(MSIX_CTRL_ENABLE | MSIX_CTRL_MASKALL);
        m.table_write(16, &0xfee0_1000u32.to_le_bytes());
        m.table_write(20, &0u32.to_le_bytes());
        m.table_write(24, &0x4041u32.to_le_bytes());
        m.table_write(28, &0u32.to_le_bytes());
        assert!(
            hv.routes.lock().unwrap().is_empty(),
            "still masked by mask-all"
        );
        m.set_control(MSIX_CTRL_ENABLE);
        assert_eq!(
            *hv.routes.lock().unwrap(),
            vec![(25, Some((0xfee0_1000, 0x4041)))]
        );
        // The pending interrupt went out on unmask; now they go straight out.
        assert_eq!(m.vectors[1].evt.read().unwrap(), 1);
        m.pba_read(0, &mut p);
        assert_eq!(p, [0]);
        m.vectors[1].signal();
        assert_eq!(m.vectors[1].evt.read().unwrap(), 1);
        m.table_read(24, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x4041);
        // Masking the entry holds interrupts again.
        m.table_write(28, &1u32.to_le_bytes());
        m.vectors[1].signal();
        assert!(m.vectors[1].evt.read().is_err());
        // Vector 0 was never written: address 0 is not an MSI address, so
        // unmasking it is refused, counted, and nothing is routed.
        m.table_write(12, &0u32.to_le_bytes());
        assert_eq!(m.bad, 1);
        assert_eq!(hv.routes.lock().unwrap().len(), 1);
        m.vectors[0].signal();
        assert!(m.vectors[0].evt.read().is_err());
        // Out of range and odd sizes are ignored, counted.
        m.table_write(3 * 16, &[0; 4]);
        m.table_write(16, &[0; 2]);
        assert_eq!(m.bad, 3);
        m.table_read(3 * 16, &mut b);
        assert_eq!(b, [0xff; 4]);
        // A 64-bit write of the address.
        m.table_write(32, &0xfee0_2000u64.to_le_bytes());
        let mut q = [0u8; 8];
        m.table_read(32, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xfee0_2000);
        // Reset masks everything.
        m.reset();
        assert!(!m.enabled());
        m.vectors[1].signal();
        assert!(m.vectors[1].evt.read().is_err());
    }

    #[test]
    fn msix_capability_bytes() {
        let (m, _) = msix(6);
        let (b, w) = m.capability(0, 0x4000, 0x5000);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 5, "table size - 1");
        assert_eq!(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), 0x4000);
        assert_eq!(u32::from_le_bytes([b[6], b[7], b[8], b[9]]), 0x5000);
        assert_eq!(w[..2], [0, 0xc0]);
    }
}
