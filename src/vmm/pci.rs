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
//! MSI-X ([`msix`]): each vector's address and data become a KVM MSI route on its own
//! GSI, and an irqfd on that GSI is what the data path writes. Masking is
//! done in uipd ([`MsixVector::signal`] keeps the interrupt pending while
//! the vector or the function is masked, and delivers it on unmask), so
//! KVM's routes change only when the guest rewrites an entry. A route to
//! an address outside the local APICs' window is refused and counted.

use std::sync::{Arc, Mutex};

use super::devices::BusDevice;

pub mod msix;

pub use self::msix::{Hypervisor, MSIX_ENTRY, Msix, MsixVector};

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

#[cfg(test)]
pub(crate) mod tests;
