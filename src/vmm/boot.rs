//! Guest physical memory layout and the two ways uipd enters a Linux
//! kernel: the x86 64-bit boot protocol and PVH.
//!
//! # Theory of operation
//!
//! **64-bit boot protocol** ([`Entry::Linux64`]: a bzImage, or an ELF
//! vmlinux without a PVH note), as its "64-bit BOOT PROTOCOL" section
//! describes (Documentation/arch/x86/boot.rst): the CPU is already in long
//! mode with an identity map, a GDT holds flat segments at selectors `0x10`
//! (code) and `0x18` (data), interrupts are off and `%rsi` points at the
//! zero page (`struct boot_params`). A bzImage is entered at its
//! protected-mode part + 0x200 (`startup_64` of the decompressor); an ELF
//! vmlinux at its ELF entry.
//!
//! **PVH** ([`Entry::Pvh`]: an ELF vmlinux with the
//! `XEN_ELFNOTE_PHYS32_ENTRY` note, Linux's `CONFIG_PVH`): Xen's "HVM
//! direct boot ABI" (xen/include/public/arch-x86/hvm/start_info.h). The CPU
//! is in 32-bit protected mode with paging off, flat 4 GiB code (`0x28`)
//! and data (`0x18`) segments, a 32-bit TSS (`0x30`), interrupts off, and
//! `%ebx` holds the address of `struct hvm_start_info`, which points at the
//! command line, the memory map and the initrd ([`super::pvh`]). The kernel
//! builds its own page tables and GDT; no zero page is needed.
//!
//! No firmware runs: this module writes everything firmware would have left
//! behind: the E820 map, the zero page, the command line, the MP table that
//! names the CPUs and the I/O APIC, the GDT and the page tables.
//!
//! Everything here is pure (no KVM): it computes and writes into a
//! [`GuestMemoryMmap`], so the layout is unit-tested byte for byte.
//!
//! ```text
//!  0x0000_0500  GDT: null, null, code64 (0x10), data (0x18), TSS64 (0x20), code32 (0x28), TSS32 (0x30)
//!  0x0000_0540  IDT (empty: the kernel loads its own before enabling interrupts)
//!  0x0000_6000  PVH: hvm_start_info (56 bytes)
//!  0x0000_6040  PVH: module list (the initrd, 32 bytes)
//!  0x0000_6080  PVH: memory map (24 bytes per E820 entry, up to 0x7000)
//!  0x0000_7000  zero page (boot_params; 64-bit boot protocol only)
//!  0x0000_8ff0  initial stack top
//!  0x0000_9000  PML4 ─► 0xa000 PDPT ─► 0xb000..0xefff four PDs: 4 GiB identity, 2 MiB pages
//!  0x0002_0000  kernel command line (NUL-terminated)
//!  0x0009_fc00  MP floating pointer (E820 reserved up to 0xa0000)
//!  0x000e_0000  ACPI tables, RSDP first (E820 reserved)
//!  0x000f_0000  MP configuration table (E820 reserved up to 1 MiB)
//!  0x0010_0000  kernel (bzImage protected-mode part / vmlinux), decompresses from here
//!      ...      RAM ... initrd at the top of low RAM, page-aligned
//!  0xc000_0000  ┐ MMIO hole, 1 GiB, never RAM: PCI BARs, 0xe000_0000 MMCONFIG (ECAM),
//!  0xfec0_0000  │ the I/O APIC, 0xfee0_0000 the local APICs
//!  0x1_0000_0000┘ RAM beyond 3 GiB continues here
//! ```
//!
//! Everything below 1 MiB stays where the kernel expects firmware data:
//! Linux copies the zero page or `hvm_start_info` and the tables they
//! point at early, and since 5.13 reserves the whole first MiB anyway.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The GDT's guest address.
pub const GDT_ADDR: u64 = 0x500;
/// The (empty) IDT's guest address.
pub const IDT_ADDR: u64 = 0x540;
/// PVH: `struct hvm_start_info`, whose address the boot vCPU gets in `%ebx`.
pub const PVH_START_INFO: u64 = 0x6000;
/// PVH: the module list (one entry: the initrd).
pub const PVH_MODLIST: u64 = 0x6040;
/// PVH: the memory map (`hvm_memmap_table_entry`s), up to [`ZERO_PAGE`].
pub const PVH_MEMMAP: u64 = 0x6080;
/// The zero page (`boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK: u64 = 0x8ff0;
/// The top-level page table.
pub const PML4_ADDR: u64 = 0x9000;
const PDPT_ADDR: u64 = 0xa000;
const PD_ADDR: u64 = 0xb000;
/// Number of page directories: each maps 1 GiB with 2 MiB pages.
const PD_COUNT: u64 = 4;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// The MP floating pointer structure: in the last KiB of base memory, where
/// the kernel's `smp_scan_config` looks.
pub const MPTABLE_FLOAT: u64 = 0x9_fc00;
/// The MP configuration table, in the reserved F segment.
pub const MPTABLE_CONFIG: u64 = 0xf_0000;
/// End of base memory (start of the legacy VGA/BIOS hole).
const BASE_MEM_END: u64 = 0xa_0000;
/// Where the kernel is loaded: 1 MiB ("high memory" in boot-protocol terms).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO hole below 4 GiB; RAM never lives in it.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the MMIO hole (4 GiB).
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// The PCI ECAM (MMCONFIG) window in the MMIO hole: 1 MiB, bus 0 only
/// (4 KiB of configuration space for each of its 32 devices × 8
/// functions). Reserved in the E820 map and described by the ACPI MCFG.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Size of the ECAM window (one bus).
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// The I/O APIC's MMIO base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Most vCPUs the MP table can name (8-bit APIC IDs; one ID is the I/O APIC's).
pub const MAX_VCPUS: usize = 254;

/// E820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// `setup_header.header`: "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `setup_header.boot_flag`.
const BOOT_FLAG: u16 = 0xaa55;
/// `type_of_loader`: "undefined" loader (boot.rst: 0xFF).
const LOADER_UNDEFINED: u8 = 0xff;
/// `xloadflags` bit 0: the kernel has the 64-bit entry at +0x200.
pub const XLF_KERNEL_64: u16 = 1;
/// Default `initrd_addr_max` for kernels that leave it 0 (boot.rst).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Command line size limit when the kernel gives none (boot protocol < 2.06).
const DEFAULT_CMDLINE_MAX: usize = 255;
/// Page size.
const PAGE: u64 = 0x1000;

/// GDT entries, in the order of their selectors: index 2 = 0x10 = `__BOOT_CS`,
/// index 3 = 0x18 = `__BOOT_DS` (also PVH's data segment), index 4 = 0x20 =
/// the TSS KVM needs in TR; for PVH, index 5 = 0x28 = a 32-bit code segment
/// and index 6 = 0x30 = a 32-bit TSS (base 0, limit 0x67, as the PVH ABI
/// asks).
pub const GDT: [u64; 7] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // code: present, DPL 0, exec/read, L=1, G=1
    gdt_entry(0xc093, 0, 0xfffff), // data: present, DPL 0, read/write, D/B=1, G=1
    gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS, G=1
    gdt_entry(0xc09b, 0, 0xfffff), // code32: present, DPL 0, exec/read, D/B=1, G=1
    gdt_entry(0x008b, 0, 0x67),    // TSS32: present, busy 32-bit TSS, 104 bytes
];
/// Selector of the boot code segment.
pub const BOOT_CS: u16 = 0x10;
/// Selector of the boot data segment.
pub const BOOT_DS: u16 = 0x18;
/// Selector of the TSS.
pub const BOOT_TSS: u16 = 0x20;
/// Selector of the PVH entry's 32-bit code segment.
pub const PVH_CS: u16 = 0x28;
/// Selector of the PVH entry's 32-bit TSS.
pub const PVH_TSS: u16 = 0x30;

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The 64-bit boot protocol: long mode at this address, `%rsi` =
    /// [`ZERO_PAGE`].
    Linux64(u64),
    /// PVH: 32-bit protected mode, paging off, at this address; `%ebx` =
    /// [`PVH_START_INFO`].
    Pvh(u32),
}

/// Layout errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory too small for the fixed layout.
    #[error("{0} MiB of guest memory is too little: at least {min} MiB", min = MIN_MEM_MIB)]
    MemTooSmall(u64),
    /// The command line does not fit the kernel's limit.
    #[error("the kernel command line is {len} bytes; this kernel takes at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The kernel's limit (without the NUL).
        max: usize,
    },
    /// A NUL byte inside the command line.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    /// The initrd does not fit between the kernel and the end of low RAM.
    #[error(
        "the initrd ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel (ends at {kernel_end:#x}): give more --mem"
    )]
    InitrdTooBig {
        /// Initrd size.
        size: u64,
        /// The highest address it may end at.
        limit: u64,
        /// The end of the kernel's footprint.
        kernel_end: u64,
    },
    /// The PVH memory map does not fit its place.
    #[error("{0} memory map entries do not fit the PVH memory map's place")]
    PvhMemmapTooLong(usize),
    /// Too many vCPUs for the MP table.
    #[error("{0} vCPUs: the MP table names at most {MAX_VCPUS}")]
    TooManyVcpus(usize),
    /// Writing guest memory failed (the layout does not fit the memory).
    #[error("writing {what} to guest memory at {addr:#x}")]
    Write {
        /// What was being written.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

// The fixed structures do not overlap.
const _: () = assert!(PD_ADDR + PD_COUNT * PAGE <= CMDLINE_ADDR);
const _: () = assert!(ZERO_PAGE + 4096 <= BOOT_STACK + 0x10);
const _: () = assert!(GDT_ADDR + 8 * GDT.len() as u64 <= IDT_ADDR);
const _: () = assert!(IDT_ADDR + 8 <= PVH_START_INFO);
const _: () = assert!(PVH_START_INFO + 56 <= PVH_MODLIST);
const _: () = assert!(PVH_MODLIST + 32 <= PVH_MEMMAP);
const _: () = assert!(PVH_MEMMAP < ZERO_PAGE);

/// Smallest guest memory accepted: room for the low structures, a kernel's
/// decompression and an initrd.
pub const MIN_MEM_MIB: u64 = 32;

/// Encodes a segment descriptor. `flags` holds the access byte in bits 0..8
/// and the G/DB/L/AVL nibble in bits 12..16 (the layout of Linux's
/// `GDT_ENTRY` macro).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The parts of a segment descriptor KVM wants in a `kvm_segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Base address.
    pub base: u64,
    /// Limit in bytes (scaled by the granularity bit).
    pub limit: u32,
    /// Selector (index * 8).
    pub selector: u16,
    /// Type nibble.
    pub type_: u8,
    /// Present.
    pub present: u8,
    /// Privilege level.
    pub dpl: u8,
    /// Default operand size (D/B).
    pub db: u8,
    /// Code/data (1) or system (0).
    pub s: u8,
    /// 64-bit code segment.
    pub l: u8,
    /// Granularity: limit in 4 KiB units.
    pub g: u8,
    /// Available for software.
    pub avl: u8,
}

impl Segment {
    /// Decodes GDT entry `index`.
    pub fn from_gdt(index: u16) -> Segment {
        let e = GDT[usize::from(index)];
        let bit = |n: u32| u8::from(e >> n & 1 == 1);
        let raw_limit = (e & 0xffff) | ((e >> 32) & 0x000f_0000);
        let g = bit(55);
        let limit = if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        };
        Segment {
            base: ((e >> 16) & 0x00ff_ffff) | ((e >> 32) & 0xff00_0000),
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            selector: index * 8,
            type_: u8::try_from(e >> 40 & 0xf).unwrap_or(0),
            present: bit(47),
            dpl: u8::try_from(e >> 45 & 3).unwrap_or(0),
            db: bit(54),
            s: bit(44),
            l: bit(53),
            g,
            avl: bit(52),
        }
    }
}

/// Guest RAM regions for `mem_bytes` of memory: up to the MMIO hole, then
/// the rest above 4 GiB.
pub fn ram_regions(mem_bytes: u64) -> Vec<(GuestAddress, u64)> {
    let low = mem_bytes.min(MMIO_HOLE_START);
    let mut r = vec![(GuestAddress(0), low)];
    if mem_bytes > MMIO_HOLE_START {
        r.push((GuestAddress(MMIO_HOLE_END), mem_bytes - MMIO_HOLE_START));
    }
    r
}

/// The E820 map the guest sees for `mem_bytes` of RAM.
pub fn e820_map(mem_bytes: u64) -> Vec<boot_e820_entry> {
    let e = |addr: u64, end: u64, r#type: u32| boot_e820_entry {
        addr,
        size: end - addr,
        r#type,
    };
    let low_end = mem_bytes.min(MMIO_HOLE_START);
    let mut map = vec![
        e(0, MPTABLE_FLOAT, E820_RAM),
        e(MPTABLE_FLOAT, BASE_MEM_END, E820_RESERVED),
        // The E segment holds the ACPI tables, the F segment the MP
        // configuration table, as a BIOS would.
        e(super::acpi::ACPI_START, HIMEM_START, E820_RESERVED),
        e(HIMEM_START, low_end, E820_RAM),
        // Linux accepts an MCFG window only if the firmware reserved it
        // ("MMCONFIG at ... reserved as E820 entry").
        e(
            PCI_ECAM_START,
            PCI_ECAM_START + PCI_ECAM_SIZE,
            E820_RESERVED,
        ),
    ];
    if mem_bytes > MMIO_HOLE_START {
        map.push(e(
            MMIO_HOLE_END,
            MMIO_HOLE_END + (mem_bytes - MMIO_HOLE_START),
            E820_RAM,
        ));
    }
    map
}

/// What the kernel loader found.
#[derive(Debug, Clone, Copy)]
pub struct KernelInfo {
    /// The setup header (from a bzImage), or `None` for an ELF vmlinux.
    pub header: Option<setup_header>,
    /// Where the kernel was loaded.
    pub load_addr: u64,
    /// End of the loaded image.
    pub image_end: u64,
}

impl KernelInfo {
    /// End of the memory the kernel uses while booting: its image, or
    /// `init_size` bytes from its load address when that is larger (the
    /// decompressor works in place).
    pub fn footprint_end(&self) -> u64 {
        let init = self
            .header
            .map_or(0, |h| u64::from(h.init_size))
            .saturating_add(self.load_addr);
        init.max(self.image_end)
    }

    /// The highest address the initrd may end at, per the header.
    pub fn initrd_addr_max(&self) -> u64 {
        match self.header.map(|h| h.initrd_addr_max) {
            Some(0) | None => DEFAULT_INITRD_ADDR_MAX,
            Some(m) => u64::from(m),
        }
    }

    /// The kernel's command line limit, without the NUL.
    pub fn cmdline_max(&self) -> usize {
        match self.header {
            // Protocol 2.06 added cmdline_size.
            Some(h) if { h.version } >= 0x0206 => {
                usize::try_from(h.cmdline_size).unwrap_or(usize::MAX)
            }
            Some(_) => DEFAULT_CMDLINE_MAX,
            // vmlinux: x86's COMMAND_LINE_SIZE.
            None => 2047,
        }
    }
}

/// Picks the initrd's address: page-aligned, as high as allowed (below the
/// MMIO hole, the end of RAM and the kernel's `initrd_addr_max`) and above
/// the kernel's footprint.
pub fn initrd_addr(mem_bytes: u64, kernel: &KernelInfo, size: u64) -> Result<u64, Error> {
    let limit = mem_bytes
        .min(MMIO_HOLE_START)
        .min(kernel.initrd_addr_max().saturating_add(1));
    let kernel_end = kernel.footprint_end();
    let addr = limit.checked_sub(size).map(|a| a & !(PAGE - 1));
    match addr {
        Some(a) if a >= kernel_end => Ok(a),
        _ => Err(Error::InitrdTooBig {
            size,
            limit,
            kernel_end,
        }),
    }
}

/// Checks the command line against the kernel's limit.
pub fn check_cmdline(cmdline: &str, kernel: &KernelInfo) -> Result<(), Error> {
    if cmdline.contains('\0') {
        return Err(Error::CmdlineNul);
    }
    let max = kernel.cmdline_max();
    if cmdline.len() > max {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    Ok(())
}

/// Builds the zero page: the kernel's own setup header (or a minimal one for
/// a vmlinux) with the loader's fields filled in, and the E820 map.
pub fn boot_params(
    kernel: &KernelInfo,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    e820: &[boot_e820_entry],
) -> boot_params {
    let mut p = boot_params {
        hdr: kernel.header.unwrap_or_else(|| setup_header {
            header: HDRS_MAGIC,
            boot_flag: BOOT_FLAG,
            kernel_alignment: 0x100_0000,
            ..setup_header::default()
        }),
        ..boot_params::default()
    };
    p.hdr.type_of_loader = LOADER_UNDEFINED;
    p.hdr.vid_mode = 0xffff; // "normal"
    // The layout keeps the command line below 4 GiB, so it fits in u32.
    p.hdr.cmd_line_ptr = u32::try_from(CMDLINE_ADDR).unwrap_or(0);
    if kernel.header.is_none() {
        p.hdr.cmdline_size = u32::try_from(cmdline_len + 1).unwrap_or(u32::MAX);
    }
    if let Some((addr, size)) = initrd {
        // initrd_addr() keeps the initrd below the MMIO hole (< 4 GiB).
        p.hdr.ramdisk_image = u32::try_from(addr).unwrap_or(0);
        p.hdr.ramdisk_size = u32::try_from(size).unwrap_or(0);
        p.ext_ramdisk_size = u32::try_from(size >> 32).unwrap_or(0);
    }
    let n = e820.len().min(p.e820_table.len());
    let mut table = p.e820_table;
    table[..n].copy_from_slice(&e820[..n]);
    p.e820_table = table;
    p.e820_entries = u8::try_from(n).unwrap_or(0);
    p
}

pub(super) fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    val: T,
) -> Result<(), Error> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| Error::Write { what, addr, source })
}

/// Writes the GDT, an empty IDT and the identity-mapping page tables
/// (4 GiB with 2 MiB pages: enough for any kernel footprint, zero page,
/// command line and initrd, which all live below the MMIO hole).
pub fn write_cpu_tables(mem: &GuestMemoryMmap) -> Result<(), Error> {
    for (i, e) in GDT.iter().enumerate() {
        write(mem, "the GDT", GDT_ADDR + 8 * i as u64, *e)?;
    }
    write(mem, "the IDT", IDT_ADDR, 0u64)?;
    // Present + writable (0x3); PD entries also PS (0x80): a 2 MiB page.
    write(mem, "the PML4", PML4_ADDR, PDPT_ADDR | 0x3)?;
    for i in 0..PD_COUNT {
        let pd = PD_ADDR + i * PAGE;
        write(mem, "the PDPT", PDPT_ADDR + 8 * i, pd | 0x3)?;
        for j in 0..512u64 {
            let frame = (i * 512 + j) << 21;
            write(mem, "a page directory", pd + 8 * j, frame | 0x83)?;
        }
    }
    Ok(())
}

/// Writes the command line, NUL-terminated, at [`CMDLINE_ADDR`] (both
/// entries use it).
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), Error> {
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|source| Error::Write {
            what: "the command line",
            addr: CMDLINE_ADDR,
            source,
        })
}

/// Writes the command line (NUL-terminated) and the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    params: &boot_params,
) -> Result<(), Error> {
    write_cmdline(mem, cmdline)?;
    write(mem, "the zero page", ZERO_PAGE, *params)
}

/// Builds the MP table (Intel MultiProcessor Specification 1.4, chapter 4):
/// the floating pointer and the configuration table, for `vcpus` CPUs with
/// APIC IDs 0..vcpus, one I/O APIC (ID `vcpus`) and ISA IRQs 0..15 wired to
/// its pins 0..15 (how KVM's in-kernel I/O APIC routes GSIs), ExtINT on
/// LINT0 and NMI on LINT1. Returns (floating pointer, configuration table).
pub fn mptable(vcpus: usize) -> Result<([u8; 16], Vec<u8>), Error> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::TooManyVcpus(vcpus));
    }
    // vcpus <= 254: every ID below fits in a byte.
    let ioapic_id = u8::try_from(vcpus).unwrap_or(u8::MAX);
    let mut t = Vec::with_capacity(44 + 20 * vcpus + 8 * 20);
    let mut entries: u16 = 0;
    // Header; length, entry count and checksum are filled in at the end.
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&[0, 0]); // base table length
    t.push(4); // spec revision 1.4
    t.push(0); // checksum
    t.extend_from_slice(b"UIPD    "); // OEM ID
    t.extend_from_slice(b"UIPD VMM    "); // product ID
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&[0, 0]); // entry count
    t.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    for id in 0..ioapic_id {
        // Processor: type 0, APIC ID, APIC version, flags (EN, BP for CPU 0),
        // CPU signature (family 6), feature flags (FPU, APIC), reserved.
        t.extend_from_slice(&[0, id, 0x14, if id == 0 { 3 } else { 1 }]);
        t.extend_from_slice(&0x600u32.to_le_bytes());
        t.extend_from_slice(&0x201u32.to_le_bytes());
        t.extend_from_slice(&[0; 8]);
        entries += 1;
    }
    // Bus 0: ISA.
    t.extend_from_slice(&[1, 0]);
    t.extend_from_slice(b"ISA   ");
    entries += 1;
    // The I/O APIC: type 2, ID, version 0x11, enabled, address.
    t.extend_from_slice(&[2, ioapic_id, 0x11, 1]);
    t.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    entries += 1;
    for irq in 0..16u8 {
        // I/O interrupt: type 3, INT, flags "conforms to bus", bus 0, IRQ,
        // destination I/O APIC, pin.
        t.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        entries += 1;
    }
    // Local interrupts: ExtINT on LINT0, NMI on LINT1, to every local APIC.
    t.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    t.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    entries += 2;
    let len = u16::try_from(t.len()).map_err(|_| Error::TooManyVcpus(vcpus))?;
    t[4..6].copy_from_slice(&len.to_le_bytes());
    t[34..36].copy_from_slice(&entries.to_le_bytes());
    t[7] = checksum(&t);

    let mut f = [0u8; 16];
    f[0..4].copy_from_slice(b"_MP_");
    f[4..8].copy_from_slice(&u32::try_from(MPTABLE_CONFIG).unwrap_or(0).to_le_bytes());
    f[8] = 1; // length in 16-byte units
    f[9] = 4; // spec revision
    // f[11] = 0: a configuration table is present; f[12] = 0: no IMCR.
    f[10] = checksum(&f);
    Ok((f, t))
}

/// The byte that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Writes the MP table for `vcpus` CPUs.
pub fn write_mptable(mem: &GuestMemoryMmap, vcpus: usize) -> Result<(), Error> {
    let (float, table) = mptable(vcpus)?;
    let w = |what, addr: u64, b: &[u8]| {
        mem.write_slice(b, GuestAddress(addr))
            .map_err(|source| Error::Write { what, addr, source })
    };
    w("the MP floating pointer", MPTABLE_FLOAT, &float)?;
    w("the MP table", MPTABLE_CONFIG, &table)?;
    if MPTABLE_CONFIG.checked_add(table.len() as u64) > Some(HIMEM_START) {
        return Err(Error::TooManyVcpus(vcpus));
    }
    Ok(())
}

/// Checks that `mem_bytes` can hold the layout.
pub fn check_mem(mem_bytes: u64) -> Result<(), Error> {
    if mem_bytes < MIN_MEM_MIB << 20 {
        return Err(Error::MemTooSmall(mem_bytes >> 20));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
