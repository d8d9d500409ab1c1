//! ACPI tables for the embedded VMM: enough for a stock kernel to find
//! every vCPU (the Debian kernel has no MP-table parsing, so without a MADT
//! it starts one CPU whatever `--vcpus` says), to run its ACPI interpreter,
//! and through it to find the PCI root bridge and the ECAM (MMCONFIG)
//! window.
//!
//! ```text
//!  zero page acpi_rsdp_addr ─► RSDP (rev 2) ─► XSDT ─┬► FADT ─┬► FACS
//!                                                   │        └► DSDT: \_SB.PCI0 (PNP0A08), bus 0,
//!                                                   │                 I/O and BAR windows (_CRS)
//!                                                   ├► MADT: a local APIC per vCPU, the I/O APIC,
//!                                                   │        ISA IRQ overrides (edge, active high)
//!                                                   └► MCFG: the PCI ECAM window (segment 0, bus 0)
//! ```
//!
//! Why a FADT and a DSDT: Linux reads the MCFG only with ACPI enabled
//! (`pci_mmcfg_early_init` goes through `acpi_table_parse`, which does
//! nothing once ACPI is disabled), and without a FADT it logs "ACPI: Unable
//! to enable ACPI" and disables it. The FADT is a full one, not
//! hardware-reduced: hardware-reduced makes Linux drop the PIT and the
//! 8259 (its timer and, under nested TCG, the only working clock event:
//! "APIC timer disabled due to verification failure"). A full FADT needs
//! the PM1a event and control registers ([`super::devices::AcpiPm`]: always
//! in ACPI mode, no SMI command port, no event ever raised) and a FACS.
//! With the interpreter up, Linux scans PCI only below root bridges the
//! DSDT names, so the DSDT has one, `\_SB.PCI0`, with the resources the
//! bus really has. Seen in the nested test (Debian 6.1): "ACPI:
//! Interpreter enabled", "PCI: MMCONFIG for domain 0000 [bus 00-00] at [mem
//! 0xe0000000-0xe00fffff]", "... reserved in E820", "ACPI: PCI Root Bridge
//! \[PCI0\]", the host bridge's config space 4096 bytes. The DSDT's
//! `\_S5` lets Linux power off the ACPI way (`SLP_EN` in PM1 control);
//! a kernel without ACPI still ends in the halt [`super::vcpu`] detects.
//! There is no `_PRT`: every function here uses
//! MSI-X and has no INTx pin.
//!
//! ISA IRQs keep their identity routing to the I/O APIC, as in the MP
//! table, with explicit edge/active-high overrides. Everything here is pure
//! and checked by unit tests (sums, offsets, lengths).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::{Error, IOAPIC_ADDR, LAPIC_ADDR, MAX_VCPUS, PCI_ECAM_SIZE, PCI_ECAM_START};
use super::devices::{ACPI_PM1, ACPI_SCI_IRQ, S5_SLP_TYP};

/// Where the tables go: the E segment, reserved in the E820 map.
pub const ACPI_START: u64 = 0xe_0000;
/// End of the area (the F segment holds the MP table).
pub const ACPI_END: u64 = 0xf_0000;

const OEM_ID: &[u8; 6] = b"UIPD  ";
const OEM_TABLE_ID: &[u8; 8] = b"UIPDVMM ";
const CREATOR_ID: &[u8; 4] = b"UIPD";

/// ISA IRQs given an explicit edge/high override (IRQ 0 and the cascade,
/// 2, are the timer's, which a hardware-reduced guest does not use).
const ISA_IRQS: [u8; 14] = [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

/// The byte that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A table with the 36-byte standard header; `body` follows it. Length and
/// checksum are filled in.
fn table(sig: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(sig);
    // Cannot truncate: tables here are a few KiB at most.
    t.extend_from_slice(&u32::try_from(36 + body.len()).unwrap_or(0).to_le_bytes());
    t.push(revision);
    t.push(0);
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// The MADT: one enabled local APIC per vCPU (APIC IDs 0..vcpus), the I/O
/// APIC (ID `vcpus`, GSI base 0).
pub fn madt(vcpus: usize) -> Result<Vec<u8>, Error> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::TooManyVcpus(vcpus));
    }
    let mut b = Vec::with_capacity(8 + 8 * vcpus + 12);
    b.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    // PCAT_COMPAT: the dual 8259 PIC is there (KVM's in-kernel irqchip).
    b.extend_from_slice(&1u32.to_le_bytes());
    for id in 0..vcpus {
        // vcpus <= 254: the ID fits in a byte.
        let id = u8::try_from(id).unwrap_or(u8::MAX);
        // Processor local APIC: type 0, length 8, ACPI UID, APIC ID, enabled.
        b.extend_from_slice(&[0, 8, id, id]);
        b.extend_from_slice(&1u32.to_le_bytes());
    }
    let ioapic_id = u8::try_from(vcpus).unwrap_or(u8::MAX);
    // I/O APIC: type 1, length 12, ID, reserved, address, GSI base.
    b.extend_from_slice(&[1, 12, ioapic_id, 0]);
    b.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    // ISA IRQs keep their pins but must stay edge-triggered, active high:
    // on a hardware-reduced platform Linux has no legacy IRQs and would
    // take an unlisted GSI as PCI-style (level, active low), and the
    // serial port's irqfd pulses would then never be seen.
    for irq in ISA_IRQS {
        // Interrupt source override: type 2, length 10, bus 0 (ISA),
        // source IRQ, GSI, flags (polarity active high 01, trigger edge 01).
        b.extend_from_slice(&[2, 10, 0, irq]);
        b.extend_from_slice(&u32::from(irq).to_le_bytes());
        b.extend_from_slice(&0b0101u16.to_le_bytes());
    }
    Ok(table(b"APIC", 4, &b))
}

/// The MCFG (PCI Firmware 3.2 §4.1.2): one ECAM window of `buses` buses
/// from bus 0 of segment 0 at `base` (1 MiB per bus).
pub fn mcfg(base: u64, buses: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + 16);
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&base.to_le_bytes());
    // Segment group 0, start bus 0, end bus, 4 reserved bytes.
    b.extend_from_slice(&0u16.to_le_bytes());
    let end = u8::try_from(buses.clamp(1, 256) - 1).unwrap_or(u8::MAX);
    b.extend_from_slice(&[0, end, 0, 0, 0, 0]);
    table(b"MCFG", 1, &b)
}

/// FADT `Flags` (ACPI 6.4 Table 5.10): WBINVD works; the power and sleep
/// buttons are not fixed features (so no fixed event is ever enabled).
const FADT_FLAGS: u32 = 1 | (1 << 4) | (1 << 5);
/// FADT `IAPC_BOOT_ARCH`: legacy devices (the UART, the RTC) and an 8042.
const FADT_BOOT_ARCH: u16 = 0b11;

/// The FADT (revision 6, 276 bytes): not hardware-reduced (the PIC and PIT
/// stay the kernel's timers and interrupt controllers), the PM1a event
/// and control blocks at [`ACPI_PM1`] ([`super::devices::AcpiPm`]), no
/// PM timer, no GPEs, no SMI command port (always in ACPI mode), SCI on
/// IRQ [`ACPI_SCI_IRQ`]. Only the 64-bit pointers to `facs` and `dsdt`.
pub fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let mut b = vec![0u8; 276 - 36];
    let put =
        |b: &mut Vec<u8>, off: usize, v: &[u8]| b[off - 36..off - 36 + v.len()].copy_from_slice(v);
    let pm1 = u32::try_from(ACPI_PM1).unwrap_or(0);
    put(&mut b, 40, &u32::try_from(dsdt).unwrap_or(0).to_le_bytes());
    put(&mut b, 46, &ACPI_SCI_IRQ.to_le_bytes());
    put(&mut b, 56, &pm1.to_le_bytes());
    put(&mut b, 64, &(pm1 + 4).to_le_bytes());
    put(&mut b, 88, &[4, 2]);
    // C2 and C3 not supported (latencies over 100 and 1000 µs).
    put(&mut b, 96, &0x0fffu16.to_le_bytes());
    put(&mut b, 98, &0x0fffu16.to_le_bytes());
    put(&mut b, 109, &FADT_BOOT_ARCH.to_le_bytes());
    put(&mut b, 112, &FADT_FLAGS.to_le_bytes());
    put(&mut b, 132, &facs.to_le_bytes());
    put(&mut b, 140, &dsdt.to_le_bytes());
    table(b"FACP", 6, &b)
}

/// The FACS (64 bytes, 64-byte aligned; required without the
/// hardware-reduced flag): no waking vector, no global lock owner.
pub fn facs() -> [u8; 64] {
    let mut f = [0u8; 64];
    f[0..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[32] = 2; // version
    f
}

/// AML encoding (ACPI 6.4 §20), just what the DSDT below needs.
mod aml {
    pub const ZERO: u8 = 0x00;
    pub const NAME: u8 = 0x08;
    pub const DWORD: u8 = 0x0c;
    pub const SCOPE: u8 = 0x10;
    pub const BUFFER: u8 = 0x11;
    pub const WORD: u8 = 0x0b;
    pub const BYTE: u8 = 0x0a;
    pub const PACKAGE: u8 = 0x12;
    pub const EXT: u8 = 0x5b;
    pub const DEVICE: u8 = 0x82;
    pub const ROOT: u8 = b'\\';

    /// `PkgLength` (§20.2.4) for `len` bytes that follow it: the count
    /// includes the encoding's own bytes.
    pub fn pkg_len(len: usize) -> Vec<u8> {
        for n in 1..=4usize {
            let total = len + n;
            let fits = match n {
                1 => total < 0x40,
                _ => total < 1 << (4 + 8 * (n - 1)),
            };
            if !fits {
                continue;
            }
            let byte = |x: usize| u8::try_from(x & 0xff).unwrap_or(0);
            if n == 1 {
                return vec![byte(total)];
            }
            let mut v = vec![byte(((n - 1) << 6) | (total & 0xf))];
            for k in 0..n - 1 {
                v.push(byte(total >> (4 + 8 * k)));
            }
            return v;
        }
        Vec::new()
    }

    /// `op PkgLength body`.
    pub fn package(op: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = op.to_vec();
        v.extend(pkg_len(body.len()));
        v.extend_from_slice(body);
        v
    }

    /// `Name(seg, DWord)`.
    pub fn name_dword(seg: &[u8; 4], v: u32) -> Vec<u8> {
        let mut b = vec![NAME];
        b.extend_from_slice(seg);
        b.push(DWORD);
        b.extend_from_slice(&v.to_le_bytes());
        b
    }

    /// `Name(seg, Zero)`.
    pub fn name_zero(seg: &[u8; 4]) -> Vec<u8> {
        let mut b = vec![NAME];
        b.extend_from_slice(seg);
        b.push(ZERO);
        b
    }

    /// `Name(seg, Buffer() { bytes })`.
    pub fn name_buffer(seg: &[u8; 4], bytes: &[u8]) -> Vec<u8> {
        let mut body = vec![WORD];
        body.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(0).to_le_bytes());
        body.extend_from_slice(bytes);
        let mut b = vec![NAME];
        b.extend_from_slice(seg);
        b.extend(package(&[BUFFER], &body));
        b
    }

    /// `Name(\seg, Package() { bytes... })`, at the namespace root.
    pub fn name_root_byte_package(seg: &[u8; 4], bytes: &[u8]) -> Vec<u8> {
        let mut body = vec![u8::try_from(bytes.len()).unwrap_or(0)];
        for &v in bytes {
            if v == 0 {
                body.push(ZERO);
            } else {
                body.extend_from_slice(&[BYTE, v]);
            }
        }
        let mut b = vec![NAME, ROOT];
        b.extend_from_slice(seg);
        b.extend(package(&[PACKAGE], &body));
        b
    }

    /// A compressed EISA ID: "PNP0A03" → 0x030ad041 (§19.6.35).
    pub fn eisa_id(id: &[u8; 7]) -> u32 {
        let c = |x: u8| u32::from(x.wrapping_sub(b'@') & 0x1f);
        let hex = |x: u8| char::from(x).to_digit(16).unwrap_or(0);
        let vendor = (c(id[0]) << 10) | (c(id[1]) << 5) | c(id[2]);
        let product = (hex(id[3]) << 12) | (hex(id[4]) << 8) | (hex(id[5]) << 4) | hex(id[6]);
        // Big-endian halves in a little-endian dword.
        (vendor >> 8) | ((vendor & 0xff) << 8) | ((product >> 8) << 16) | ((product & 0xff) << 24)
    }
}

/// Resource descriptors (ACPI 6.4 §6.4) of the PCI root bridge's `_CRS`:
/// bus 0, the configuration ports, I/O around them, and the BAR window.
fn root_bridge_crs() -> Vec<u8> {
    use super::pci::{CONFIG_PORT, CONFIG_PORT_LEN, PCI_MMIO_SIZE, PCI_MMIO_START};
    let mut r = Vec::new();
    // Word address space (0x88, 13 bytes): type, general flags (producer,
    // min and max fixed), type flags, granularity, min, max, offset, length.
    let word = |r: &mut Vec<u8>, ty: u8, tflags: u8, min: u16, max: u16| {
        r.extend_from_slice(&[0x88, 13, 0, ty, 0x0c, tflags]);
        for v in [0, min, max, 0, max - min + 1] {
            r.extend_from_slice(&v.to_le_bytes());
        }
    };
    word(&mut r, 2, 0, 0, 0);
    let cf8 = u16::try_from(CONFIG_PORT).unwrap_or(0xcf8);
    let cf8_len = u8::try_from(CONFIG_PORT_LEN).unwrap_or(8);
    // I/O port (small item 0x47): 16-bit decode, min, max, alignment, length.
    r.extend_from_slice(&[0x47, 1]);
    r.extend_from_slice(&cf8.to_le_bytes());
    r.extend_from_slice(&cf8.to_le_bytes());
    r.extend_from_slice(&[1, cf8_len]);
    // I/O windows below and above them (type 1, the entire ISA range).
    word(&mut r, 1, 3, 0, cf8 - 1);
    word(&mut r, 1, 3, cf8 + u16::from(cf8_len), 0xffff);
    // DWord memory (0x87, 23 bytes): read-write, not cacheable.
    r.extend_from_slice(&[0x87, 23, 0, 0, 0x0c, 1]);
    let lo = u32::try_from(PCI_MMIO_START).unwrap_or(0);
    let len = u32::try_from(PCI_MMIO_SIZE).unwrap_or(0);
    for v in [0, lo, lo + (len - 1), 0, len] {
        r.extend_from_slice(&v.to_le_bytes());
    }
    // End tag, checksum 0 ("treat as summing to zero").
    r.extend_from_slice(&[0x79, 0]);
    r
}

/// The DSDT: `\_SB.PCI0`, the PCI Express root bridge of segment 0, bus 0
/// (`PNP0A08`, compatible `PNP0A03`), with its resources (with ACPI up,
/// Linux scans PCI only below root bridges the DSDT names); and `\_S5`,
/// the soft-off sleep state, `SLP_TYP` [`S5_SLP_TYP`] for PM1a and PM1b
/// (ACPI 6.4 §7.4.2): with it Linux powers off through the PM1 control
/// block, which [`super::devices::AcpiPm`] turns into the VM's end.
pub fn dsdt() -> Vec<u8> {
    use aml::*;
    let mut dev = b"PCI0".to_vec();
    dev.extend(name_dword(b"_HID", eisa_id(b"PNP0A08")));
    dev.extend(name_dword(b"_CID", eisa_id(b"PNP0A03")));
    dev.extend(name_zero(b"_SEG"));
    dev.extend(name_zero(b"_BBN"));
    dev.extend(name_zero(b"_UID"));
    dev.extend(name_buffer(b"_CRS", &root_bridge_crs()));
    let mut sb = vec![ROOT];
    sb.extend_from_slice(b"_SB_");
    sb.extend(package(&[EXT, DEVICE], &dev));
    let mut aml = package(&[SCOPE], &sb);
    let typ = u8::try_from(S5_SLP_TYP).unwrap_or(0);
    aml.extend(name_root_byte_package(b"_S5_", &[typ, typ, 0, 0]));
    table(b"DSDT", 2, &aml)
}

/// The XSDT listing `tables`.
pub fn xsdt(tables: &[u64]) -> Vec<u8> {
    let b: Vec<u8> = tables.iter().flat_map(|a| a.to_le_bytes()).collect();
    table(b"XSDT", 1, &b)
}

/// The RSDP (revision 2) pointing at `xsdt`.
pub fn rsdp(xsdt: u64) -> [u8; 36] {
    let mut r = [0u8; 36];
    r[0..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(OEM_ID);
    r[15] = 2;
    r[20..24].copy_from_slice(&36u32.to_le_bytes());
    r[24..32].copy_from_slice(&xsdt.to_le_bytes());
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// The tables for `vcpus` CPUs laid out from [`ACPI_START`]: a list of
/// (guest address, bytes), RSDP first.
pub fn layout(vcpus: usize) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    let align = |a: u64| (a + 63) & !63;
    let rsdp_at = ACPI_START;
    let xsdt_at = align(rsdp_at + 36);
    // XSDT: header + three pointers.
    let fadt_at = align(xsdt_at + 36 + 3 * 8);
    let facs_at = align(fadt_at + 276);
    let dsdt_at = align(facs_at + 64);
    let dsdt = dsdt();
    let madt_at = align(dsdt_at + dsdt.len() as u64);
    let madt = madt(vcpus)?;
    let buses = u16::try_from(PCI_ECAM_SIZE >> 20).unwrap_or(1);
    let mcfg = mcfg(PCI_ECAM_START, buses);
    let mcfg_at = align(madt_at + madt.len() as u64);
    if mcfg_at + mcfg.len() as u64 > ACPI_END {
        return Err(Error::TooManyVcpus(vcpus));
    }
    Ok(vec![
        (rsdp_at, rsdp(xsdt_at).to_vec()),
        (xsdt_at, xsdt(&[fadt_at, madt_at, mcfg_at])),
        (fadt_at, fadt(facs_at, dsdt_at)),
        (facs_at, facs().to_vec()),
        (dsdt_at, dsdt),
        (madt_at, madt),
        (mcfg_at, mcfg),
    ])
}

/// Writes the tables; returns the RSDP's address (for the zero page's
/// `acpi_rsdp_addr`).
pub fn write(mem: &GuestMemoryMmap, vcpus: usize) -> Result<u64, Error> {
    let tables = layout(vcpus)?;
    for (addr, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|source| Error::Write {
                what: "the ACPI tables",
                addr: *addr,
                source,
            })?;
    }
    Ok(ACPI_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_sums_to_zero_and_states_its_length() {
        let t = layout(4).unwrap();
        let (_, r) = &t[0];
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(r), 0, "RSDP extended checksum");
        for (_, tb) in &t[1..] {
            assert_eq!(u32_at(tb, 4) as usize, tb.len(), "{:?}", &tb[..4]);
            // The FACS alone has no checksum.
            if &tb[..4] != b"FACS" {
                assert_eq!(sum(tb), 0, "{:?} checksum", &tb[..4]);
            }
        }
    }

    #[test]
    fn pointers_chain_from_the_rsdp_to_every_table() {
        let t = layout(2).unwrap();
        let at = |a: u64| t.iter().find(|(x, _)| *x == a).map(|(_, b)| b).unwrap();
        let xsdt = at(u64_at(&t[0].1, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(xsdt.len(), 36 + 3 * 8);
        let fadt = at(u64_at(xsdt, 36));
        assert_eq!(&fadt[..4], b"FACP");
        let madt = at(u64_at(xsdt, 44));
        assert_eq!(&madt[..4], b"APIC");
        let mcfg = at(u64_at(xsdt, 52));
        assert_eq!(&mcfg[..4], b"MCFG");
        // The FADT's 64-bit pointers (and the 32-bit DSDT, equal).
        let facs_at = u64_at(fadt, 132);
        assert_eq!(facs_at % 64, 0, "the FACS is 64-byte aligned");
        assert_eq!(&at(facs_at)[..4], b"FACS");
        let dsdt_at = u64_at(fadt, 140);
        assert_eq!(u64::from(u32_at(fadt, 40)), dsdt_at);
        assert_eq!(&at(dsdt_at)[..4], b"DSDT");
        assert_eq!(u32_at(fadt, 36), 0, "FIRMWARE_CTRL: the 64-bit one only");
        // Tables stay in the E segment and do not overlap.
        let mut spans: Vec<(u64, u64)> = t.iter().map(|(a, b)| (*a, *a + b.len() as u64)).collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{spans:x?}");
        }
        assert!(spans.last().unwrap().1 <= ACPI_END);
    }

    #[test]
    fn fadt_names_the_pm1_blocks_and_is_not_hardware_reduced() {
        let f = fadt(0xe_0100, 0xe_0200);
        assert_eq!(f.len(), 276);
        assert_eq!(u32_at(&f, 4), 276);
        assert_eq!(f[8], 6, "revision 6");
        assert_eq!(sum(&f), 0);
        assert_eq!(u16::from_le_bytes([f[46], f[47]]), ACPI_SCI_IRQ);
        assert_eq!(u32_at(&f, 48), 0, "no SMI_CMD: always in ACPI mode");
        assert_eq!(u64::from(u32_at(&f, 56)), ACPI_PM1, "PM1a_EVT_BLK");
        assert_eq!(u64::from(u32_at(&f, 64)), ACPI_PM1 + 4, "PM1a_CNT_BLK");
        assert_eq!((f[88], f[89]), (4, 2), "PM1 event and control lengths");
        assert_eq!((u32_at(&f, 76), f[91]), (0, 0), "no PM timer");
        assert_eq!((u32_at(&f, 80), f[92]), (0, 0), "no GPE0");
        let flags = u32_at(&f, 112);
        assert_eq!(flags & (1 << 20), 0, "not HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 4), 0, "no fixed power button");
        assert_eq!(
            u16::from_le_bytes([f[109], f[110]]),
            0b11,
            "legacy devices, 8042"
        );
        assert_eq!(u64_at(&f, 132), 0xe_0100);
        assert_eq!(u64_at(&f, 140), 0xe_0200);
        // The extended register blocks stay zero: the kernel builds them
        // from the 32-bit ones.
        assert!(f[148..276].iter().all(|b| *b == 0));
        let c = facs();
        assert_eq!(&c[..4], b"FACS");
        assert_eq!(u32_at(&c, 4), 64);
    }

    #[test]
    fn aml_encodings() {
        assert_eq!(aml::eisa_id(b"PNP0A03"), 0x030a_d041);
        assert_eq!(aml::eisa_id(b"PNP0A08"), 0x080a_d041);
        assert_eq!(aml::pkg_len(0), [1]);
        assert_eq!(aml::pkg_len(62), [63]);
        assert_eq!(aml::pkg_len(63), [0x41, 0x04]);
        assert_eq!(aml::pkg_len(4093), [0x4f, 0xff]);
        assert_eq!(aml::pkg_len(4094), [0x81, 0x00, 0x01]);
        assert_eq!(aml::name_zero(b"_SEG"), b"\x08_SEG\x00");
        assert_eq!(
            aml::name_dword(b"_HID", 0x0102_0304),
            b"\x08_HID\x0c\x04\x03\x02\x01"
        );
        // Name(_CRS, Buffer(0x0002) {0x79, 0x00}).
        assert_eq!(
            aml::name_buffer(b"_CRS", &[0x79, 0]),
            b"\x08_CRS\x11\x06\x0b\x02\x00\x79\x00"
        );
    }

    /// Walks `Scope(\_SB_) { Device(PCI0) { Name... } }` in the DSDT.
    #[test]
    fn dsdt_names_the_pci_root_bridge_and_its_resources() {
        let d = dsdt();
        assert_eq!(&d[..4], b"DSDT");
        assert_eq!(u32_at(&d, 4) as usize, d.len());
        assert_eq!(sum(&d), 0);
        let aml = &d[36..];
        // PkgLength: one byte (lead bits 00) or two (01).
        let pkg = |b: &[u8]| -> (usize, usize) {
            match b[0] >> 6 {
                0 => (usize::from(b[0] & 0x3f), 1),
                1 => ((usize::from(b[1]) << 4) | usize::from(b[0] & 0xf), 2),
                n => panic!("unexpected PkgLength size {n}"),
            }
        };
        // After the scope: Name(\_S5_, Package(4) { 5, 5, 0, 0 }).
        let s5: &[u8] = &[
            0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 8, 4, 0x0a, 5, 0x0a, 5, 0, 0,
        ];
        assert!(aml.ends_with(s5), "no \\_S5 at the end: {aml:02x?}");
        let aml = &aml[..aml.len() - s5.len()];
        assert_eq!(aml[0], 0x10, "ScopeOp");
        let (len, n) = pkg(&aml[1..]);
        assert_eq!(1 + len, aml.len(), "the scope spans the rest");
        let body = &aml[1 + n..];
        assert_eq!(&body[..5], b"\\_SB_");
        let dev = &body[5..];
        assert_eq!(&dev[..2], &[0x5b, 0x82], "DeviceOp");
        let (len, n) = pkg(&dev[2..]);
        assert_eq!(2 + len, dev.len());
        let dev = &dev[2 + n..];
        assert_eq!(&dev[..4], b"PCI0");
        // The names, in order.
        let mut at = 4;
        let mut names = Vec::new();
        while at < dev.len() {
            assert_eq!(dev[at], 0x08, "NameOp at {at}");
            let name = std::str::from_utf8(&dev[at + 1..at + 5])
                .unwrap()
                .to_string();
            at += 5;
            let value: Vec<u8> = match dev[at] {
                0x00 => {
                    at += 1;
                    vec![0]
                }
                0x0c => {
                    at += 5;
                    dev[at - 4..at].to_vec()
                }
                0x11 => {
                    let (len, _) = pkg(&dev[at + 1..]);
                    let v = dev[at + 1..at + 1 + len].to_vec();
                    at += 1 + len;
                    v
                }
                op => panic!("unexpected data object {op:#x} for {name}"),
            };
            names.push((name, value));
        }
        let get = |n: &str| {
            names
                .iter()
                .find(|(x, _)| x == n)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("_HID"), 0x080a_d041u32.to_le_bytes());
        assert_eq!(get("_CID"), 0x030a_d041u32.to_le_bytes());
        for n in ["_SEG", "_BBN", "_UID"] {
            assert_eq!(get(n), [0], "{n}");
        }
        // _CRS: PkgLength, WordPrefix size, then the descriptors.
        let crs = get("_CRS");
        let (_, n) = pkg(&crs);
        assert_eq!(crs[n], 0x0b);
        let size = usize::from(u16::from_le_bytes([crs[n + 1], crs[n + 2]]));
        let r = &crs[n + 3..];
        assert_eq!(r.len(), size);
        let mut items = Vec::new();
        let mut i = 0;
        while i < r.len() {
            if r[i] & 0x80 != 0 {
                let len = usize::from(u16::from_le_bytes([r[i + 1], r[i + 2]]));
                items.push((r[i], r[i + 3..i + 3 + len].to_vec()));
                i += 3 + len;
            } else {
                let len = usize::from(r[i] & 7);
                items.push((r[i] & 0xf8, r[i + 1..i + 1 + len].to_vec()));
                i += 1 + len;
            }
        }
        assert_eq!(i, r.len());
        let w = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let dw = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(items.len(), 6, "{items:x?}");
        // Bus 0 only (the ECAM window's one bus).
        assert_eq!((items[0].0, items[0].1[0]), (0x88, 2));
        assert_eq!(
            (w(&items[0].1, 5), w(&items[0].1, 7), w(&items[0].1, 11)),
            (0, 0, 1)
        );
        // The configuration ports, and I/O around them.
        assert_eq!(items[1], (0x40, vec![1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8]));
        assert_eq!((w(&items[2].1, 5), w(&items[2].1, 7)), (0, 0xcf7));
        assert_eq!(
            (w(&items[3].1, 5), w(&items[3].1, 7), w(&items[3].1, 11)),
            (0xd00, 0xffff, 0xf300)
        );
        // The BAR window.
        assert_eq!((items[4].0, items[4].1[0]), (0x87, 0));
        assert_eq!(dw(&items[4].1, 7), 0xc000_0000);
        assert_eq!(dw(&items[4].1, 11), 0xcfff_ffff);
        assert_eq!(dw(&items[4].1, 19), 0x1000_0000);
        assert_eq!(items[5], (0x78, vec![0]), "end tag");
    }

    #[test]
    fn mcfg_describes_the_ecam_window_of_bus_0() {
        let m = mcfg(PCI_ECAM_START, 1);
        // Header (36), 8 reserved bytes, one 16-byte allocation.
        assert_eq!(m.len(), 36 + 8 + 16);
        assert_eq!(u32_at(&m, 4) as usize, m.len());
        assert_eq!(m[8], 1, "revision 1");
        assert_eq!(sum(&m), 0);
        assert_eq!(&m[36..44], &[0; 8]);
        assert_eq!(u64_at(&m, 44), PCI_ECAM_START);
        assert_eq!(u16::from_le_bytes([m[52], m[53]]), 0, "segment 0");
        assert_eq!((m[54], m[55]), (0, 0), "buses 0..=0");
        assert_eq!(&m[56..60], &[0; 4]);
        // 1 MiB per bus: the window the layout uses is one bus.
        assert_eq!(PCI_ECAM_SIZE, 1 << 20);
        assert_eq!(PCI_ECAM_START % (1 << 20), 0);
        // More buses, and the bounds.
        assert_eq!(mcfg(0xe000_0000, 256)[55], 255);
        assert_eq!(mcfg(0xe000_0000, 0)[55], 0);
        assert_eq!(mcfg(0xe000_0000, 999)[55], 255);
        let t = layout(1).unwrap();
        assert!(t.iter().any(|(_, b)| b[..] == mcfg(PCI_ECAM_START, 1)[..]));
    }

    #[test]
    fn madt_lists_one_enabled_local_apic_per_vcpu_and_the_io_apic() {
        for vcpus in [1usize, 2, 7, MAX_VCPUS] {
            let m = madt(vcpus).unwrap();
            assert_eq!(u32_at(&m, 36), LAPIC_ADDR);
            let mut lapics = Vec::new();
            let mut ioapics = Vec::new();
            let mut isos = Vec::new();
            let mut off = 44;
            while off < m.len() {
                let (ty, len) = (m[off], usize::from(m[off + 1]));
                assert!(len >= 2 && off + len <= m.len());
                match ty {
                    0 => {
                        assert_eq!(u32_at(&m, off + 4), 1, "enabled");
                        lapics.push(m[off + 3]);
                    }
                    1 => ioapics.push((m[off + 2], u32_at(&m, off + 4), u32_at(&m, off + 8))),
                    2 => {
                        let irq = m[off + 3];
                        assert_eq!(u32_at(&m, off + 4), u32::from(irq), "identity GSI");
                        assert_eq!(u16::from_le_bytes([m[off + 8], m[off + 9]]), 0b0101);
                        isos.push(irq);
                    }
                    t => panic!("unexpected MADT entry {t}"),
                }
                off += len;
            }
            let want: Vec<u8> = (0..vcpus).map(|i| u8::try_from(i).unwrap()).collect();
            assert_eq!(lapics, want);
            assert_eq!(
                ioapics,
                vec![(u8::try_from(vcpus).unwrap(), IOAPIC_ADDR, 0)]
            );
            assert!(isos.contains(&4), "the serial port's IRQ is edge/high");
            assert_eq!(isos, ISA_IRQS);
        }
        assert!(madt(0).is_err());
        assert!(madt(MAX_VCPUS + 1).is_err());
        assert!(layout(MAX_VCPUS).is_ok());
    }
}
