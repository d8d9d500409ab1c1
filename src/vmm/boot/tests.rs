use vm_memory::ByteValued;

use super::*;

const MIB: u64 = 1 << 20;

fn small_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
}

fn bz_header() -> setup_header {
    setup_header {
        header: HDRS_MAGIC,
        boot_flag: BOOT_FLAG,
        version: 0x020f,
        loadflags: 1,
        xloadflags: 0x7f,
        initrd_addr_max: 0x7fff_ffff,
        cmdline_size: 2047,
        init_size: 0x200_0000,
        code32_start: 0x10_0000,
        ..setup_header::default()
    }
}

fn bz_kernel() -> KernelInfo {
    KernelInfo {
        header: Some(bz_header()),
        load_addr: HIMEM_START,
        image_end: HIMEM_START + 8 * MIB,
    }
}

#[test]
fn zero_page_is_4096_bytes_with_fields_at_their_abi_offsets() {
    let p = boot_params::default();
    assert_eq!(std::mem::size_of::<boot_params>(), 4096);
    let base = std::ptr::addr_of!(p) as usize;
    let off = |f: usize| f - base;
    assert_eq!(off(std::ptr::addr_of!(p.e820_entries) as usize), 0x1e8);
    assert_eq!(off(std::ptr::addr_of!(p.hdr) as usize), 0x1f1);
    assert_eq!(
        off(std::ptr::addr_of!(p.hdr.type_of_loader) as usize),
        0x210
    );
    assert_eq!(off(std::ptr::addr_of!(p.hdr.ramdisk_image) as usize), 0x218);
    assert_eq!(off(std::ptr::addr_of!(p.hdr.cmd_line_ptr) as usize), 0x228);
    assert_eq!(off(std::ptr::addr_of!(p.e820_table) as usize), 0x2d0);
}

#[test]
fn e820_small_guest_has_base_memory_reserved_bios_areas_and_ram_from_1mib() {
    let m = e820_map(256 * MIB);
    let got: Vec<(u64, u64, u32)> = m.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
    assert_eq!(
        got,
        vec![
            (0, 0x9_fc00, E820_RAM),
            (0x9_fc00, 0x400, E820_RESERVED),
            (0xe_0000, 0x2_0000, E820_RESERVED),
            (HIMEM_START, 256 * MIB - HIMEM_START, E820_RAM),
            (PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED),
        ]
    );
    assert_eq!(ram_regions(256 * MIB), vec![(GuestAddress(0), 256 * MIB)]);
}

#[test]
fn e820_large_guest_skips_the_mmio_hole() {
    let mem = 5 * 1024 * MIB;
    let m = e820_map(mem);
    let last = m[m.len() - 1];
    let ecam = m[m.len() - 2];
    let low = m[m.len() - 3];
    assert_eq!(
        (ecam.addr, ecam.size, ecam.r#type),
        (PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED)
    );
    assert_eq!(
        (low.addr, low.addr + low.size),
        (HIMEM_START, MMIO_HOLE_START)
    );
    assert_eq!({ last.addr }, MMIO_HOLE_END);
    assert_eq!({ last.size }, mem - MMIO_HOLE_START);
    // No entry overlaps the hole or another entry.
    for w in m.windows(2) {
        assert!(w[0].addr + w[0].size <= w[1].addr);
    }
    // RAM stays out of the hole; the ECAM window is the only thing in it.
    assert!(m.iter().all(|e| e.addr + e.size <= MMIO_HOLE_START
        || e.addr >= MMIO_HOLE_END
        || e.r#type == E820_RESERVED && e.addr == PCI_ECAM_START));
    assert_eq!(
        ram_regions(mem),
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(MMIO_HOLE_END), mem - MMIO_HOLE_START)
        ]
    );
}

#[test]
fn initrd_goes_page_aligned_to_the_top_of_low_ram() {
    let k = bz_kernel();
    let a = initrd_addr(256 * MIB, &k, 5000).unwrap();
    assert_eq!(a, 256 * MIB - 0x2000);
    // A kernel with a low initrd_addr_max.
    let mut h = bz_header();
    h.initrd_addr_max = 0x37ff_ffff;
    let k2 = KernelInfo {
        header: Some(h),
        ..k
    };
    assert_eq!(
        initrd_addr(2048 * MIB, &k2, 0x1000).unwrap(),
        0x3800_0000 - 0x1000
    );
    // Large memory: still below the hole.
    assert!(initrd_addr(8192 * MIB, &k, 0x1000).unwrap() < MMIO_HOLE_START);
}

#[test]
fn initrd_that_would_overlap_the_decompressing_kernel_is_an_error() {
    let k = bz_kernel(); // footprint ends at 1 MiB + 32 MiB (init_size)
    assert_eq!(k.footprint_end(), HIMEM_START + 0x200_0000);
    let err = initrd_addr(64 * MIB, &k, 40 * MIB).unwrap_err();
    assert!(matches!(err, Error::InitrdTooBig { .. }), "{err}");
    assert!(initrd_addr(64 * MIB, &k, 30 * MIB).is_ok());
    assert!(initrd_addr(64 * MIB, &k, u64::MAX).is_err());
}

#[test]
fn cmdline_limits_follow_the_header() {
    let k = bz_kernel();
    assert!(check_cmdline("console=ttyS0", &k).is_ok());
    assert!(matches!(
        check_cmdline(&"x".repeat(2048), &k),
        Err(Error::CmdlineTooLong {
            len: 2048,
            max: 2047
        })
    ));
    assert!(matches!(check_cmdline("a\0b", &k), Err(Error::CmdlineNul)));
    let mut old = bz_header();
    old.version = 0x0204;
    let k_old = KernelInfo {
        header: Some(old),
        ..k
    };
    assert!(check_cmdline(&"x".repeat(256), &k_old).is_err());
}

#[test]
fn boot_params_carry_loader_fields_and_keep_the_kernel_header() {
    let k = bz_kernel();
    let e820 = e820_map(256 * MIB);
    let p = boot_params(&k, 13, Some((0xf00_0000, 12345)), &e820);
    assert_eq!({ p.hdr.type_of_loader }, 0xff);
    assert_eq!({ p.hdr.cmd_line_ptr }, 0x2_0000);
    assert_eq!({ p.hdr.ramdisk_image }, 0xf00_0000);
    assert_eq!({ p.hdr.ramdisk_size }, 12345);
    assert_eq!({ p.hdr.header }, HDRS_MAGIC);
    assert_eq!({ p.hdr.cmdline_size }, 2047, "the kernel's own limit stays");
    assert_eq!({ p.hdr.init_size }, 0x200_0000);
    assert_eq!(p.e820_entries, 5);
    assert_eq!({ p.e820_table[3].addr }, HIMEM_START);
    // A vmlinux gets a minimal header.
    let v = KernelInfo {
        header: None,
        load_addr: 0x100_0000,
        image_end: 0x200_0000,
    };
    let p = boot_params(&v, 13, None, &e820);
    assert_eq!({ p.hdr.boot_flag }, BOOT_FLAG);
    assert_eq!({ p.hdr.header }, HDRS_MAGIC);
    assert_eq!({ p.hdr.ramdisk_image }, 0);
    // In guest memory, byte for byte at the ABI offsets.
    let mem = small_mem();
    write_boot_params(&mem, "console=ttyS0", &p).unwrap();
    let mut b = [0u8; 4096];
    mem.read_slice(&mut b, GuestAddress(ZERO_PAGE)).unwrap();
    assert_eq!(&b[..], p.as_slice());
    assert_eq!(b[0x210], 0xff);
    assert_eq!(&b[0x228..0x22c], &0x2_0000u32.to_le_bytes());
    assert_eq!(&b[0x202..0x206], b"HdrS");
    let mut c = [0u8; 14];
    mem.read_slice(&mut c, GuestAddress(CMDLINE_ADDR)).unwrap();
    assert_eq!(&c, b"console=ttyS0\0");
}

#[test]
fn gdt_descriptors_decode_to_flat_long_mode_segments() {
    assert_eq!(GDT[2], 0x00af_9b00_0000_ffff);
    assert_eq!(GDT[3], 0x00cf_9300_0000_ffff);
    let cs = Segment::from_gdt(2);
    assert_eq!(cs.selector, BOOT_CS);
    assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
    assert_eq!(
        (cs.l, cs.db, cs.s, cs.present, cs.type_, cs.g),
        (1, 0, 1, 1, 0xb, 1)
    );
    let ds = Segment::from_gdt(3);
    assert_eq!(ds.selector, BOOT_DS);
    assert_eq!((ds.l, ds.db, ds.type_), (0, 1, 3));
    let tss = Segment::from_gdt(4);
    assert_eq!((tss.selector, tss.s, tss.type_), (BOOT_TSS, 0, 0xb));
}

#[test]
fn page_tables_identity_map_4gib_with_2mib_pages() {
    let mem = small_mem();
    write_cpu_tables(&mem).unwrap();
    let rd = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
    // Walk the tables for a few addresses.
    for va in [0u64, 0x10_0000, 0x1234_5678, 0xbfff_ffff, 0xffff_f000] {
        let pml4e = rd(PML4_ADDR + 8 * ((va >> 39) & 511));
        assert_eq!(pml4e & 1, 1);
        let pdpte = rd((pml4e & !0xfff) + 8 * ((va >> 30) & 511));
        assert_eq!(pdpte & 1, 1);
        let pde = rd((pdpte & !0xfff) + 8 * ((va >> 21) & 511));
        assert_eq!(pde & 0x83, 0x83, "present, writable, 2 MiB");
        assert_eq!((pde & !0x1f_ffff & !0xfff) | (va & 0x1f_ffff), va);
    }
    assert_eq!(rd(GDT_ADDR + 16), GDT[2]);
}

#[test]
fn mptable_checksums_and_entries() {
    let (f, t) = mptable(2).unwrap();
    assert_eq!(&f[..4], b"_MP_");
    assert_eq!(f.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    assert_eq!(u32::from_le_bytes(f[4..8].try_into().unwrap()), 0xf_0000);
    assert_eq!(&t[..4], b"PCMP");
    assert_eq!(usize::from(u16::from_le_bytes([t[4], t[5]])), t.len());
    assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    // 2 CPUs + bus + I/O APIC + 16 IRQs + 2 local interrupts.
    assert_eq!(u16::from_le_bytes([t[34], t[35]]), 2 + 1 + 1 + 16 + 2);
    assert_eq!(t.len(), 44 + 2 * 20 + 8 * (1 + 1 + 16 + 2));
    // CPU 0 is the enabled boot processor, CPU 1 enabled.
    assert_eq!(&t[44..48], &[0, 0, 0x14, 3]);
    assert_eq!(&t[64..68], &[0, 1, 0x14, 1]);
    // The I/O APIC has ID 2 at 0xfec00000.
    let io = 44 + 40 + 8;
    assert_eq!(&t[io..io + 8], &[2, 2, 0x11, 1, 0, 0, 0xc0, 0xfe]);
    assert!(mptable(0).is_err());
    assert!(mptable(MAX_VCPUS + 1).is_err());
    let (_, big) = mptable(MAX_VCPUS).unwrap();
    assert!(MPTABLE_CONFIG + big.len() as u64 <= HIMEM_START);
    let mem = small_mem();
    write_mptable(&mem, 4).unwrap();
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(MPTABLE_FLOAT)).unwrap(),
        0x5f50_4d5f
    );
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(MPTABLE_CONFIG)).unwrap(),
        0x504d_4350
    );
}

#[test]
fn mem_floor() {
    assert!(check_mem(31 * MIB).is_err());
    assert!(check_mem(32 * MIB).is_ok());
}
