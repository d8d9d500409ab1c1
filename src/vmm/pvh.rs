//! The PVH boot information: what the boot vCPU's `%ebx` points at when
//! uipd enters an ELF vmlinux at its PVH entry ([`super::boot::Entry::Pvh`]).
//!
//! # Theory of operation
//!
//! Xen's "HVM direct boot ABI" (xen/include/public/arch-x86/hvm/start_info.h;
//! Linux implements it in arch/x86/platform/pvh/) hands the kernel one
//! structure instead of a zero page. Version 1 carries the memory map, so
//! no hypercall is needed, which is what makes it usable under KVM:
//!
//! ```text
//!  %ebx ─► 0x6000 hvm_start_info { magic 0x336ec578, version 1, flags 0,
//!          │                       nr_modules 0|1, modlist_paddr,
//!          │                       cmdline_paddr, rsdp_paddr,
//!          │                       memmap_paddr, memmap_entries }
//!          ├─► 0x6040 module list: [{ initrd address, size, cmdline 0 }]
//!          ├─► 0x2_0000 the command line (NUL-terminated, shared with the zero page's)
//!          ├─► 0xe_0000 the ACPI RSDP ([`super::acpi`])
//!          └─► 0x6080 memory map: the E820 map of [`super::boot::e820_map`],
//!                     entry for entry (the E820 and PVH type numbers agree)
//! ```
//!
//! Linux copies `hvm_start_info` to its own memory as its first act, and
//! turns the rest into a zero page of its own (`init_pvh_bootparams`): the
//! memory map becomes its E820 table, the first module its initrd, the
//! RSDP address its ACPI root pointer. Everything here is pure: it builds
//! the structures and writes them into a [`GuestMemoryMmap`].

use linux_loader::loader::bootparam::boot_e820_entry;
use linux_loader::loader::elf::start_info::{
    XEN_HVM_START_MAGIC_VALUE, hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestMemoryMmap;

use super::boot::{CMDLINE_ADDR, Error, PVH_MEMMAP, PVH_MODLIST, PVH_START_INFO, ZERO_PAGE, write};

/// `hvm_start_info.version`: 1 has the memory map fields.
pub const START_INFO_VERSION: u32 = 1;

/// Size of one memory map entry in guest memory.
const MEMMAP_ENTRY: u64 = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
/// Size of one module list entry in guest memory.
const MODLIST_ENTRY: u64 = std::mem::size_of::<hvm_modlist_entry>() as u64;

/// Most memory map entries that fit between [`PVH_MEMMAP`] and the zero
/// page. The map uipd builds has at most six.
pub const MAX_MEMMAP_ENTRIES: usize = 165;
const _: () = assert!(PVH_MEMMAP + MAX_MEMMAP_ENTRIES as u64 * MEMMAP_ENTRY <= ZERO_PAGE);
const _: () = assert!(PVH_MEMMAP + (MAX_MEMMAP_ENTRIES as u64 + 1) * MEMMAP_ENTRY > ZERO_PAGE);

/// The memory map: the E820 map, one entry for each, same types (1 RAM,
/// 2 reserved, 3 ACPI, ... are the E820 numbers).
pub fn memmap(e820: &[boot_e820_entry]) -> Vec<hvm_memmap_table_entry> {
    e820.iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.r#type,
            reserved: 0,
        })
        .collect()
}

/// The module list: the initrd (address, size) as the only module, with
/// no command line of its own.
pub fn modlist(initrd: Option<(u64, u64)>) -> Vec<hvm_modlist_entry> {
    initrd
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        })
        .into_iter()
        .collect()
}

/// The start-of-day structure for a memory map of `memmap_entries` and
/// `modules` modules, the command line at [`CMDLINE_ADDR`] and the ACPI
/// RSDP at `rsdp`.
pub fn start_info(memmap_entries: usize, modules: usize, rsdp: u64) -> hvm_start_info {
    hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        flags: 0,
        // Both are small: at most one module, MAX_MEMMAP_ENTRIES entries.
        nr_modules: u32::try_from(modules).unwrap_or(0),
        // A 0 address means "not present" (start_info.h).
        modlist_paddr: if modules > 0 { PVH_MODLIST } else { 0 },
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: rsdp,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: u32::try_from(memmap_entries).unwrap_or(0),
        reserved: 0,
    }
}

/// Writes `hvm_start_info`, the module list and the memory map (the
/// command line is [`super::boot::write_cmdline`]'s).
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    e820: &[boot_e820_entry],
    initrd: Option<(u64, u64)>,
    rsdp: u64,
) -> Result<(), Error> {
    let map = memmap(e820);
    if map.len() > MAX_MEMMAP_ENTRIES {
        return Err(Error::PvhMemmapTooLong(map.len()));
    }
    let mods = modlist(initrd);
    for (i, m) in mods.iter().enumerate() {
        let addr = PVH_MODLIST + MODLIST_ENTRY * i as u64;
        write(mem, "the PVH module list", addr, *m)?;
    }
    for (i, e) in map.iter().enumerate() {
        let addr = PVH_MEMMAP + MEMMAP_ENTRY * i as u64;
        write(mem, "the PVH memory map", addr, *e)?;
    }
    let info = start_info(map.len(), mods.len(), rsdp);
    write(mem, "hvm_start_info", PVH_START_INFO, info)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::super::boot::{E820_RAM, E820_RESERVED, HIMEM_START, e820_map};
    use super::*;

    const MIB: u64 = 1 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn start_info_bytes_follow_the_abi() {
        let m = mem();
        let e820 = e820_map(256 * MIB);
        write_start_info(&m, &e820, Some((0xf00_0000, 12345)), 0xe_0000).unwrap();
        let mut b = [0u8; 56];
        m.read_slice(&mut b, GuestAddress(PVH_START_INFO)).unwrap();
        // Offsets from start_info.h.
        assert_eq!(u32_at(&b, 0), 0x336e_c578, "magic");
        assert_eq!(u32_at(&b, 4), 1, "version");
        assert_eq!(u32_at(&b, 8), 0, "flags");
        assert_eq!(u32_at(&b, 12), 1, "nr_modules");
        assert_eq!(u64_at(&b, 16), PVH_MODLIST, "modlist_paddr");
        assert_eq!(u64_at(&b, 24), CMDLINE_ADDR, "cmdline_paddr");
        assert_eq!(u64_at(&b, 32), 0xe_0000, "rsdp_paddr");
        assert_eq!(u64_at(&b, 40), PVH_MEMMAP, "memmap_paddr");
        assert_eq!(u32_at(&b, 48), 5, "memmap_entries");
        assert_eq!(u32_at(&b, 52), 0, "reserved");
    }

    #[test]
    fn memmap_in_guest_memory_is_the_e820_map() {
        for mem_bytes in [256 * MIB, 5 * 1024 * MIB] {
            let m = mem();
            let e820 = e820_map(mem_bytes);
            write_start_info(&m, &e820, None, 0xe_0000).unwrap();
            let n = m
                .read_obj::<u32>(GuestAddress(PVH_START_INFO + 48))
                .unwrap();
            assert_eq!(usize::try_from(n).unwrap(), e820.len());
            for (i, e) in e820.iter().enumerate() {
                let mut b = [0u8; 24];
                let at = PVH_MEMMAP + 24 * i as u64;
                m.read_slice(&mut b, GuestAddress(at)).unwrap();
                assert_eq!(u64_at(&b, 0), { e.addr });
                assert_eq!(u64_at(&b, 8), { e.size });
                assert_eq!(u32_at(&b, 16), { e.r#type });
                assert_eq!(u32_at(&b, 20), 0);
            }
        }
        // The types are the E820 numbers, which the PVH ABI shares.
        let map = memmap(&e820_map(256 * MIB));
        assert_eq!(map[0].type_, E820_RAM);
        assert_eq!(map[1].type_, E820_RESERVED);
        assert_eq!((map[3].addr, map[3].type_), (HIMEM_START, E820_RAM));
    }

    #[test]
    fn modlist_holds_the_initrd_or_nothing() {
        let m = mem();
        let e820 = e820_map(256 * MIB);
        write_start_info(&m, &e820, Some((0xf00_0000, 12345)), 0xe_0000).unwrap();
        let mut b = [0u8; 32];
        m.read_slice(&mut b, GuestAddress(PVH_MODLIST)).unwrap();
        assert_eq!(u64_at(&b, 0), 0xf00_0000, "paddr");
        assert_eq!(u64_at(&b, 8), 12345, "size");
        assert_eq!(u64_at(&b, 16), 0, "cmdline_paddr");
        assert_eq!(u64_at(&b, 24), 0, "reserved");
        // Without an initrd: no modules, and no list address.
        let m = mem();
        write_start_info(&m, &e820, None, 0xe_0000).unwrap();
        let info = m
            .read_obj::<hvm_start_info>(GuestAddress(PVH_START_INFO))
            .unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(PVH_MODLIST)).unwrap(),
            0,
            "nothing written at the list"
        );
    }

    #[test]
    fn memmap_that_would_reach_the_zero_page_is_an_error() {
        let e = boot_e820_entry {
            addr: 0,
            size: 4096,
            r#type: E820_RAM,
        };
        let m = mem();
        assert!(write_start_info(&m, &vec![e; MAX_MEMMAP_ENTRIES], None, 0).is_ok());
        let last = PVH_MEMMAP + 24 * MAX_MEMMAP_ENTRIES as u64;
        assert!(last <= ZERO_PAGE);
        let err = write_start_info(&m, &vec![e; MAX_MEMMAP_ENTRIES + 1], None, 0).unwrap_err();
        assert!(matches!(err, Error::PvhMemmapTooLong(_)), "{err}");
    }

    #[test]
    fn writing_into_too_little_memory_is_an_error_not_a_panic() {
        let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let err = write_start_info(&tiny, &e820_map(256 * MIB), None, 0).unwrap_err();
        assert!(matches!(err, Error::Write { .. }), "{err}");
    }
}
