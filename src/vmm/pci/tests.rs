use vmm_sys_util::eventfd::EventFd;

use super::msix::{MSIX_CTRL_ENABLE, MSIX_CTRL_MASKALL};
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
