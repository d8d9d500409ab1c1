//! Port-I/O and MMIO dispatch, and the legacy devices a Linux guest expects.
//!
//! # Theory of operation
//!
//! A vCPU exit for port I/O or MMIO names an address and a data slice; the
//! vCPU thread looks the address up in a [`Bus`] (one for ports, one for
//! MMIO) and calls the device that claims the range, with the offset into
//! it. Devices sit behind a `Mutex`: vCPU threads share them, and accesses
//! are rare (the data path goes through ioeventfd and irqfd, not through
//! exits).
//!
//! ```text
//!  vCPU exit ─► Bus (BTreeMap base → (len, device)) ─► device.read/write(offset, data)
//!  ports: 0x3f8-0x3ff 16550 (ttyS0, IRQ 4 by irqfd)   0x60-0x64 i8042 (reset)
//!         0x70-0x71 CMOS/RTC (the host's UTC time)    0x80 POST (ignored)
//!         0x600-0x605 ACPI PM1 event and control blocks (AcpiPm)
//!         0xcf8-0xcff PCI config (type 1); MMIO: the ECAM window and the BARs (super::pci)
//! ```
//!
//! The guest is untrusted: an access nobody claims reads as all-ones (a
//! floating bus) and is counted, a write to it is dropped and counted; an
//! access of a size a device does not implement is ignored the same way.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// A device on a [`Bus`].
pub trait BusDevice: Send {
    /// A read of `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Address ranges and their devices.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
    /// Accesses no device claimed (or a device refused).
    pub unhandled: AtomicU64,
}

/// Bus set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("device range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Base of the new range.
        base: u64,
        /// Its length.
        len: u64,
    },
}

impl Bus {
    /// Claims `[base, base + len)` for `dev`.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let overlaps = |b: u64, l: u64| end.is_none_or(|e| b < e && base < b + l);
        let prev = self.ranges.range(..=base).next_back();
        let next = self.ranges.range(base..).next();
        if prev.is_some_and(|(b, (l, _))| overlaps(*b, *l))
            || next.is_some_and(|(b, (l, _))| overlaps(*b, *l))
            || end.is_none()
        {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, (len, dev));
        Ok(())
    }

    fn find(&self, addr: u64, len: usize) -> Option<(u64, &SharedDevice)> {
        let (base, (l, dev)) = self.ranges.range(..=addr).next_back()?;
        let off = addr - base;
        // The whole access must lie inside the device's range.
        (off.checked_add(len as u64)? <= *l).then_some((off, dev))
    }

    /// Dispatches a read; unclaimed addresses read as all-ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((off, dev)) => lock(dev).read(off, data),
            None => {
                data.fill(0xff);
                self.unhandled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Dispatches a write; unclaimed addresses drop it.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.find(addr, data.len()) {
            Some((off, dev)) => lock(dev).write(off, data),
            None => {
                self.unhandled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Locks a device; a device whose holder panicked is still usable (its
/// state is plain registers).
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An [`EventFd`] as vm-superio's interrupt [`Trigger`]: registered as an
/// irqfd, each write raises the guest interrupt.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Writes every byte through at once (no buffering: the console is
/// interactive and a guest may die mid-line).
pub struct Unbuffered<W: Write + Send>(pub W);

impl<W: Write + Send> Write for Unbuffered<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(buf)?;
        self.0.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Base port of COM1 (ttyS0).
pub const COM1: u64 = 0x3f8;
/// Legacy IRQ of COM1.
pub const COM1_IRQ: u32 = 4;

/// The 16550 UART (vm-superio) as a bus device. Its output goes to a
/// writer (the terminal).
pub struct SerialDevice {
    /// The UART model.
    pub uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
    /// Output errors (a closed terminal): counted, the guest goes on.
    pub errors: u64,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> SerialDevice {
        SerialDevice {
            uart: Serial::new(EventFdTrigger(irq), out),
            errors: 0,
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data, u8::try_from(offset)) {
            ([b], Ok(off)) => *b = self.uart.read(off),
            (d, _) => d.fill(0xff),
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([b], Ok(off)) = (data, u8::try_from(offset)) {
            if self.uart.write(off, *b).is_err() {
                self.errors += 1;
            }
        }
    }
}

/// Base port of the i8042 (data 0x60, command/status 0x64).
pub const I8042_PORT: u64 = 0x60;

/// The i8042 keyboard controller, for what Linux uses it for here: the
/// CPU reset command (0xfe to port 0x64), which ends the VM. Status reads
/// as 0 (input buffer empty), so the kernel's `kb_wait` does not spin.
pub struct I8042(pub I8042Device<EventFdTrigger>);

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data, u8::try_from(offset)) {
            ([b], Ok(off)) => *b = self.0.read(off),
            (d, _) => d.fill(0xff),
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([b], Ok(off)) = (data, u8::try_from(offset)) {
            // A failed eventfd write is not the guest's fault and cannot be
            // reported to it; the vCPU thread also watches for KVM's own
            // shutdown exits.
            let _ = self.0.write(off, *b);
        }
    }
}

/// Base port of the ACPI PM1a event block (status 0x600, enable 0x602)
/// and control block (0x604), named by the FADT.
pub const ACPI_PM1: u64 = 0x600;
/// Ports claimed from [`ACPI_PM1`]: 4 event bytes, 2 control bytes.
pub const ACPI_PM1_LEN: u64 = 6;
/// The SCI's IRQ (FADT `SCI_INT`); never raised: no fixed event ever fires.
pub const ACPI_SCI_IRQ: u16 = 9;

/// The sleep type the DSDT's `\_S5` names (soft off), written to PM1
/// control's `SLP_TYP` with `SLP_EN` to power off.
pub const S5_SLP_TYP: u16 = 5;

/// The ACPI fixed-hardware registers an interpreter needs to come up
/// (ACPI 6.4 §4.8.3): PM1 status reads 0 (nothing happened; writes clear
/// nothing), PM1 enable keeps what the OS writes, PM1 control always
/// reads `SCI_EN` (the machine is in ACPI mode, so no SMI_CMD is needed)
/// and keeps `SLP_TYP`. Setting `SLP_EN` with `SLP_TYP` =
/// [`S5_SLP_TYP`] is the power-off (ACPI 6.4 §7.4.2, §4.8.3.2.1): it
/// signals `poweroff` once; `SLP_EN` with any other type (uipd names no
/// other sleep state) does nothing.
pub struct AcpiPm {
    regs: [u8; 6],
    poweroff: EventFd,
}

impl AcpiPm {
    /// The registers, signalling `poweroff` on an S5 entry.
    pub fn new(poweroff: EventFd) -> AcpiPm {
        AcpiPm {
            regs: [0; 6],
            poweroff,
        }
    }
}

/// PM1 control: `SCI_EN`.
const PM1_SCI_EN: u16 = 1;
/// PM1 control: the bits the OS may set (`SLP_TYP`, 10..12).
const PM1_CNT_WRITABLE: u16 = 0b111 << 10;
/// PM1 control: `SLP_EN` (write-only: enter the sleep state `SLP_TYP`).
const PM1_SLP_EN: u16 = 1 << 13;

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let at = usize::try_from(offset).unwrap_or(usize::MAX);
        let cnt = (u16::from_le_bytes([self.regs[4], self.regs[5]]) | PM1_SCI_EN).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = match at.saturating_add(i) {
                0 | 1 => 0,
                r @ (2 | 3) => self.regs[r],
                4 => cnt[0],
                5 => cnt[1],
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let at = usize::try_from(offset).unwrap_or(usize::MAX);
        let mask = PM1_CNT_WRITABLE.to_le_bytes();
        let mut slp_en = false;
        for (i, b) in data.iter().enumerate() {
            match at.saturating_add(i) {
                r @ (2 | 3) => self.regs[r] = *b,
                4 => self.regs[4] = *b & mask[0],
                5 => {
                    self.regs[5] = *b & mask[1];
                    slp_en = u16::from(*b) << 8 & PM1_SLP_EN != 0;
                }
                _ => {}
            }
        }
        let typ = (u16::from_le_bytes([self.regs[4], self.regs[5]]) & PM1_CNT_WRITABLE) >> 10;
        if slp_en && typ == S5_SLP_TYP {
            // Fails only when the counter would overflow: already signalled.
            let _ = self.poweroff.write(1);
        }
    }
}

/// Base port of the CMOS RTC (index 0x70, data 0x71).
pub const CMOS: u64 = 0x70;

/// A minimal MC146818 RTC: the time registers read the host's current UTC
/// time in BCD (24-hour mode), status A never shows an update in progress,
/// status D reports valid time; the rest of CMOS reads 0 and ignores writes.
/// Linux reads the wall clock from here at boot and would wait for the
/// update-in-progress bit to clear on an all-ones bus.
#[derive(Default)]
pub struct Cmos {
    index: u8,
}

/// Converts 0..=99 to BCD.
fn bcd(v: u64) -> u8 {
    u8::try_from((v / 10 % 10) << 4 | (v % 10)).unwrap_or(0)
}

/// Civil date (year, month, day) of a day count since 1970-01-01 (the
/// proleptic Gregorian algorithm published by Howard Hinnant).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u64::try_from(m).unwrap_or(1),
        u64::try_from(d).unwrap_or(1),
    )
}

impl Cmos {
    /// The register `index` at `unix` seconds.
    pub fn register(index: u8, unix: u64) -> u8 {
        let days = unix / 86_400;
        let secs = unix % 86_400;
        let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
        let y = u64::try_from(y).unwrap_or(2000);
        match index {
            0x00 => bcd(secs % 60),
            0x02 => bcd(secs / 60 % 60),
            0x04 => bcd(secs / 3600),
            0x06 => bcd((days + 4) % 7 + 1), // 1970-01-01 was a Thursday (5)
            0x07 => bcd(d),
            0x08 => bcd(m),
            0x09 => bcd(y % 100),
            0x32 => bcd(y / 100), // century
            0x0a => 0x26,         // divider on, 1024 Hz, no update in progress
            0x0b => 0x02,         // 24-hour, BCD, no interrupts
            0x0d => 0x80,         // valid RAM and time
            _ => 0,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (1, [b]) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                *b = Cmos::register(self.index, now);
            }
            (0, [b]) => *b = self.index,
            (_, d) => d.fill(0xff),
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, [b]) = (offset, data) {
            // Bit 7 is the NMI mask, not part of the index.
            self.index = b & 0x7f;
        }
    }
}

/// Swallows accesses silently: the POST diagnostic port 0x80 and others
/// Linux pokes on purpose.
pub struct Sink;

impl BusDevice for Sink {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acpi_pm1_blocks_say_acpi_mode_and_keep_only_writable_bits() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut pm = AcpiPm::new(evt.try_clone().unwrap());
        let r16 = |pm: &mut AcpiPm, off: u64| {
            let mut b = [0u8; 2];
            pm.read(off, &mut b);
            u16::from_le_bytes(b)
        };
        assert_eq!(r16(&mut pm, 0), 0, "no status bits");
        assert_eq!(r16(&mut pm, 4), 1, "SCI_EN: in ACPI mode");
        pm.write(0, &[0xff, 0xff]);
        assert_eq!(r16(&mut pm, 0), 0, "status never latches");
        pm.write(2, &0x0120u16.to_le_bytes());
        assert_eq!(r16(&mut pm, 2), 0x0120, "enable keeps what is written");
        // SLP_TYP is kept; SLP_EN and SCI_EN never read back. SLP_EN with
        // a type other than S5's does nothing.
        pm.write(4, &((3u16 << 10) | (1 << 13)).to_le_bytes());
        assert_eq!(r16(&mut pm, 4), (3 << 10) | 1);
        assert!(evt.read().is_err(), "SLP_EN in S3 powered off");
        // Linux's order: SLP_TYP alone, then SLP_TYP | SLP_EN.
        pm.write(4, &(5u16 << 10).to_le_bytes());
        assert!(evt.read().is_err(), "SLP_TYP alone powered off");
        pm.write(4, &((5u16 << 10) | (1 << 13)).to_le_bytes());
        assert_eq!(r16(&mut pm, 4), (5 << 10) | 1);
        assert_eq!(evt.read().unwrap(), 1, "S5 entry did not power off");
        pm.write(4, &0u16.to_le_bytes());
        assert_eq!(r16(&mut pm, 4), 1);
        // A byte write of the high half counts too.
        pm.write(4, &[0]);
        pm.write(5, &[(5 << 2) | (1 << 5)]);
        assert_eq!(evt.read().unwrap(), 1, "a byte write of S5 | SLP_EN");
        pm.write(5, &[0]);
        // Byte and dword accesses, and past the end.
        let mut b = [0u8; 4];
        pm.read(2, &mut b);
        assert_eq!(b, [0x20, 0x01, 1, 0]);
        let mut b = [0u8; 2];
        pm.read(5, &mut b);
        assert_eq!(b, [0, 0xff]);
        pm.write(u64::MAX, &[1, 2]);
        pm.read(u64::MAX, &mut b);
        assert_eq!(b, [0xff, 0xff]);
    }

    struct Reg(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap());
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn bus_dispatches_by_range_and_counts_the_rest() {
        let mut bus = Bus::default();
        let dev = Arc::new(Mutex::new(Reg(Vec::new())));
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        bus.read(0x3fa, &mut b);
        assert_eq!(b, [2]);
        bus.write(0x3ff, &[7]);
        assert_eq!(dev.lock().unwrap().0, vec![(7, vec![7])]);
        // Outside, or straddling the end: all-ones, counted.
        bus.read(0x400, &mut b);
        assert_eq!(b, [0xff]);
        let mut w = [0u8; 4];
        bus.read(0x3fe, &mut w);
        assert_eq!(w, [0xff; 4]);
        bus.write(0x3f7, &[1]);
        assert_eq!(bus.unhandled.load(Ordering::Relaxed), 3);
        assert_eq!(dev.lock().unwrap().0.len(), 1);
        // Overlaps are refused, neighbours accepted.
        assert!(bus.insert(0x3f0, 9, dev.clone()).is_err());
        assert!(bus.insert(0x3ff, 1, dev.clone()).is_err());
        assert!(bus.insert(0x3f0, 0, dev.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, dev.clone()).is_err());
        bus.insert(0x3f0, 8, dev.clone()).unwrap();
        bus.insert(0x400, 1, dev).unwrap();
    }

    #[test]
    fn cmos_reads_bcd_utc_time() {
        // 2024-02-29 13:45:56 UTC, a Thursday.
        let t = 1_709_214_356;
        let r = |i| Cmos::register(i, t);
        assert_eq!(
            [r(0), r(2), r(4), r(7), r(8), r(9), r(0x32), r(6)],
            [0x56, 0x45, 0x13, 0x29, 0x02, 0x24, 0x20, 5]
        );
        assert_eq!(Cmos::register(0x0a, t) & 0x80, 0, "never updating");
        let mut c = Cmos::default();
        c.write(0, &[0x80 | 0x0d]);
        let mut b = [0];
        c.read(1, &mut b);
        assert_eq!(b, [0x80]);
        c.read(0, &mut b);
        assert_eq!(b, [0x0d]);
        let mut w = [0; 2];
        c.read(1, &mut w);
        assert_eq!(w, [0xff; 2], "wide access ignored");
    }

    #[test]
    fn serial_writes_transmitted_bytes_and_raises_its_irq() {
        #[derive(Clone, Default)]
        struct Out(Arc<Mutex<Vec<u8>>>);
        impl Write for Out {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = Out::default();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        s.write(1, &[0x02]); // IER: transmitter-empty interrupt
        for c in b"hi" {
            s.write(0, &[*c]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        assert!(irq.read().unwrap() >= 1);
        let mut lsr = [0];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60, "THR and transmitter empty");
        s.write(0, &[1, 2]); // a wide write is ignored
        assert_eq!(out.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn i8042_reset_command_fires_the_reset_event() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut k = I8042(I8042Device::new(EventFdTrigger(evt.try_clone().unwrap())));
        let mut st = [0xaa];
        k.read(4, &mut st);
        assert_eq!(st, [0], "input buffer empty");
        k.write(4, &[0xd1]);
        assert!(evt.read().is_err(), "no reset for other commands");
        k.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
