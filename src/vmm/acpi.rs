//! ACPI tables for the embedded VMM: just enough for a stock kernel to find
//! every vCPU. The Debian kernel has no MP-table parsing, so without a MADT
//! it starts one CPU whatever `--vcpus` says.
//!
//! ```text
//!  zero page acpi_rsdp_addr ─► RSDP (rev 2) ─► XSDT ─┬► MADT: a local APIC per vCPU, the I/O APIC,
//!                                                   │        ISA IRQ overrides (edge, active high)
//!                                                   └► MCFG: the PCI ECAM window (segment 0, bus 0)
//! ```
//!
//! There is deliberately no FADT (so no DSDT): the kernel reads the MADT at
//! boot, logs "ACPI: Unable to enable ACPI" and goes on without the ACPI
//! interpreter, which keeps legacy PCI probing (config mechanism #1) and
//! the legacy PIC/PIT. Measured in the nested test: two CPUs up, the inner
//! init reached in about half the time of the MP-table-only boot. A FADT
//! without fixed-feature registers makes the interpreter fail noisily;
//! a hardware-reduced one makes the kernel treat ISA IRQs as PCI-style
//! unless overridden, and, with the interpreter up, find PCI only through a
//! DSDT host bridge. Describing the PCI root bridge (and `_S5` for ACPI
//! power-off) in a DSDT is the step after this one.
//!
//! The MCFG describes the ECAM window ([`super::pci`]), which the E820 map
//! reserves. Linux reads the MCFG only with ACPI enabled
//! (`pci_mmcfg_early_init`/`late_init` call `acpi_table_parse`, which
//! returns at once once "Unable to enable ACPI" has disabled ACPI), so
//! today the kernel lists the table at boot and keeps using ports
//! 0xcf8/0xcfc; the window is there for the FADT + DSDT step.
//!
//! ISA IRQs keep their identity routing to the I/O APIC, as in the MP
//! table, with explicit edge/active-high overrides. Everything here is pure
//! and checked by unit tests (sums, offsets, lengths).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::{Error, IOAPIC_ADDR, LAPIC_ADDR, MAX_VCPUS, PCI_ECAM_SIZE, PCI_ECAM_START};

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
    // XSDT: header + two pointers.
    let madt_at = align(xsdt_at + 36 + 2 * 8);
    let madt = madt(vcpus)?;
    let buses = u16::try_from(PCI_ECAM_SIZE >> 20).unwrap_or(1);
    let mcfg = mcfg(PCI_ECAM_START, buses);
    let mcfg_at = align(madt_at + madt.len() as u64);
    if mcfg_at + mcfg.len() as u64 > ACPI_END {
        return Err(Error::TooManyVcpus(vcpus));
    }
    Ok(vec![
        (rsdp_at, rsdp(xsdt_at).to_vec()),
        (xsdt_at, xsdt(&[madt_at, mcfg_at])),
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
            assert_eq!(sum(tb), 0, "{:?} checksum", &tb[..4]);
        }
    }

    #[test]
    fn pointers_chain_from_the_rsdp_to_the_madt_and_mcfg_and_no_fadt() {
        let t = layout(2).unwrap();
        let at = |a: u64| t.iter().find(|(x, _)| *x == a).map(|(_, b)| b).unwrap();
        let xsdt = at(u64_at(&t[0].1, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(xsdt.len(), 36 + 2 * 8);
        let madt = at(u64_at(xsdt, 36));
        assert_eq!(&madt[..4], b"APIC");
        let mcfg = at(u64_at(xsdt, 44));
        assert_eq!(&mcfg[..4], b"MCFG");
        // No FADT: the kernel must not start the ACPI interpreter.
        assert!(t.iter().all(|(_, b)| &b[..4] != b"FACP"));
        // Tables stay in the E segment and do not overlap.
        let mut spans: Vec<(u64, u64)> = t.iter().map(|(a, b)| (*a, *a + b.len() as u64)).collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{spans:x?}");
        }
        assert!(spans.last().unwrap().1 <= ACPI_END);
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
