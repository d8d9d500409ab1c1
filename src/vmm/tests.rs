//! Tests of loading a guest and running it (the KVM ones skip without
//! /dev/kvm).

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::load::{ELFCLASS64, ELFDATA2LSB, EM_X86_64};
use super::*;

#[derive(Clone, Default)]
struct Out(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Out {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A VM with `code` at 1 MiB, entered in long mode like a kernel; `None`
/// when this host has no usable /dev/kvm (the test then says so).
fn tiny_vm(code: &[u8]) -> Option<kvm::Vm> {
    let vm = match kvm::Vm::new(4 << 20) {
        Ok(vm) => vm,
        Err(e @ (kvm::KvmError::NoKvm | kvm::KvmError::KvmPermission)) => {
            eprintln!("skipped: {e}");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    boot::write_cpu_tables(&vm.mem).unwrap();
    vm.mem
        .write_slice(code, GuestAddress(boot::HIMEM_START))
        .unwrap();
    Some(vm)
}

// mov dx, 0x3f8; mov al, 'O'; out dx, al; mov al, 'K'; out dx, al
const PRINT_OK: &[u8] = &[0x66, 0xba, 0xf8, 0x03, 0xb0, b'O', 0xee, 0xb0, b'K', 0xee];

fn run_tiny(code: &[u8], vcpus: usize) -> Option<(Result<Exit, Error>, String)> {
    let vm = tiny_vm(code)?;
    let out = Out::default();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let r = run_vm(
        vm,
        vcpus,
        boot::Entry::Linux64(boot::HIMEM_START),
        &[],
        Box::new(out.clone()),
        evt,
        pci::PciBus::new(),
    );
    let s = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    Some((r, s))
}

#[test]
fn long_mode_guest_prints_on_the_serial_port_and_halt_with_interrupts_off_powers_off() {
    // PRINT_OK; cli; hlt; jmp back to hlt.
    let code = [PRINT_OK, &[0xfa, 0xf4, 0xeb, 0xfd]].concat();
    let Some((r, out)) = run_tiny(&code, 2) else {
        return;
    };
    assert_eq!(r.unwrap(), Exit::PowerOff("all vCPUs halted"));
    assert_eq!(out, "OK");
}

#[test]
fn slp_en_with_the_s5_sleep_type_powers_off_the_vm() {
    // PRINT_OK; mov dx, 0x604; mov ax, SLP_TYP 5 | SLP_EN; out dx, ax;
    // sti; hlt; jmp back: ACPI's S5 entry (the guest then idles with
    // interrupts on, so only the PM1 write can end it).
    let s5 = (5u16 << 10) | (1 << 13);
    let [lo, hi] = s5.to_le_bytes();
    let code = [
        PRINT_OK,
        &[0x66, 0xba, 0x04, 0x06, 0x66, 0xb8, lo, hi, 0x66, 0xef],
        &[0xfb, 0xf4, 0xeb, 0xfd],
    ]
    .concat();
    let Some((r, out)) = run_tiny(&code, 1) else {
        return;
    };
    assert_eq!(r.unwrap(), Exit::PowerOff("ACPI S5"));
    assert_eq!(out, "OK");
}

#[test]
fn i8042_reset_and_triple_fault_end_the_vm_as_a_reset() {
    // mov al, 0xfe; out 0x64, al; jmp $
    let Some((r, _)) = run_tiny(&[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe], 1) else {
        return;
    };
    assert_eq!(r.unwrap(), Exit::Reset("i8042 reset"));
    // ud2 with an empty IDT: #UD, #GP, #DF, then a triple fault.
    let Some((r, _)) = run_tiny(&[0x0f, 0x0b], 1) else {
        return;
    };
    assert_eq!(r.unwrap(), Exit::Reset("triple fault"));
}

#[test]
fn halt_with_interrupts_on_is_not_a_power_off() {
    // sti; hlt; jmp back: an idle CPU waiting for interrupts. The PIT is
    // not programmed, so nothing wakes it. After ~1 s (ten kick rounds)
    // the owner stops it through the exit event.
    let Some(vm) = tiny_vm(&[0xfb, 0xf4, 0xeb, 0xfd]) else {
        return;
    };
    let out = Out::default();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let stop = evt.try_clone().unwrap();
    let t0 = std::time::Instant::now();
    let handle = std::thread::spawn(move || {
        run_vm(
            vm,
            1,
            boot::Entry::Linux64(boot::HIMEM_START),
            &[],
            Box::new(out),
            evt,
            pci::PciBus::new(),
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert!(
        !handle.is_finished(),
        "an idle guest was taken for powered off"
    );
    stop.write(1).unwrap();
    let r = handle.join().unwrap();
    assert_eq!(r.unwrap(), Exit::Stopped);
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
}

// ---- Kernel files: ELF (with and without the PVH note), bzImage, bad ones.

const MIB: u64 = 1 << 20;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_GUEST_OS: u32 = 6;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// One ELF note named "Xen".
fn note(v: &mut Vec<u8>, r#type: u32, desc: &[u8]) {
    v.extend_from_slice(&4u32.to_le_bytes());
    v.extend_from_slice(&u32::try_from(desc.len()).unwrap().to_le_bytes());
    v.extend_from_slice(&r#type.to_le_bytes());
    v.extend_from_slice(b"Xen\0");
    v.extend_from_slice(desc);
    v.resize(v.len().next_multiple_of(4), 0);
}

fn phdr(v: &mut Vec<u8>, r#type: u32, offset: u64, paddr: u64, filesz: u64, memsz: u64) {
    v.extend_from_slice(&r#type.to_le_bytes());
    v.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for x in [
        offset,
        paddr | 0xffff_ffff_8000_0000,
        paddr,
        filesz,
        memsz,
        16,
    ] {
        v.extend_from_slice(&x.to_le_bytes());
    }
}

/// A minimal x86-64 ELF executable, built the way a vmlinux is: one
/// PT_LOAD of `code` (plus 4 KiB of bss) at 1 MiB, entered there;
/// with `pvh`, a PT_NOTE (after the code in the file) with an
/// unrelated Xen note first and then XEN_ELFNOTE_PHYS32_ENTRY (8
/// bytes, as Debian's kernel has it).
fn elf(code: &[u8], pvh: Option<u32>) -> Vec<u8> {
    let phnum: u16 = if pvh.is_some() { 2 } else { 1 };
    let phoff = 64u64;
    let code_at = (phoff + 56 * u64::from(phnum)).next_multiple_of(16);
    let notes_at = (code_at + code.len() as u64).next_multiple_of(4);
    let mut notes = Vec::new();
    if let Some(a) = pvh {
        note(&mut notes, XEN_ELFNOTE_GUEST_OS, b"linux\0");
        note(
            &mut notes,
            XEN_ELFNOTE_PHYS32_ENTRY,
            &u64::from(a).to_le_bytes(),
        );
    }
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[ELFCLASS64, ELFDATA2LSB, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&EM_X86_64.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&boot::HIMEM_START.to_le_bytes()); // e_entry
    f.extend_from_slice(&phoff.to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&64u16.to_le_bytes());
    f.extend_from_slice(&56u16.to_le_bytes());
    f.extend_from_slice(&phnum.to_le_bytes());
    f.extend_from_slice(&[64, 0, 0, 0, 0, 0]);
    assert_eq!(f.len(), 64);
    let len = code.len() as u64;
    phdr(
        &mut f,
        PT_LOAD,
        code_at,
        boot::HIMEM_START,
        len,
        len + 0x1000,
    );
    if pvh.is_some() {
        let n = notes.len() as u64;
        phdr(&mut f, PT_NOTE, notes_at, 0, n, n);
    }
    f.resize(usize::try_from(code_at).unwrap(), 0);
    f.extend_from_slice(code);
    f.resize(usize::try_from(notes_at).unwrap(), 0);
    f.extend_from_slice(&notes);
    f
}

/// A minimal bzImage (boot protocol 2.15, 64-bit entry) around `payload`.
fn bzimage(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 0x400];
    f[0x1f1] = 1; // setup_sects: the kernel starts at 0x400
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    f[0x211] = 1; // loadflags: LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    f[0x236..0x238].copy_from_slice(&boot::XLF_KERNEL_64.to_le_bytes());
    f[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    f.extend_from_slice(payload);
    f
}

/// A file in the temporary directory, removed on drop.
struct TempFile(PathBuf);
impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> TempFile {
        let p = std::env::temp_dir().join(format!("uipd-vmm-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        TempFile(p)
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn guest_mem(bytes: u64) -> vm_memory::GuestMemoryMmap {
    let r: Vec<(GuestAddress, usize)> = boot::ram_regions(bytes)
        .into_iter()
        .map(|(a, l)| (a, usize::try_from(l).unwrap()))
        .collect();
    vm_memory::GuestMemoryMmap::from_ranges(&r).unwrap()
}

fn config(kernel: &TempFile, initrd: Option<&TempFile>, boot: BootMode) -> VmConfig {
    VmConfig {
        kernel: kernel.0.clone(),
        initrd: initrd.map(|f| f.0.clone()),
        cmdline: "console=ttyS0 pvh=yes".into(),
        mem_mib: 64,
        vcpus: 2,
        vcpu_cpus: Vec::new(),
        boot,
    }
}

fn load(name: &str, bytes: &[u8], boot: BootMode) -> Result<Loaded, Error> {
    let k = TempFile::new(name, bytes);
    load_guest(&guest_mem(64 * MIB), 64 * MIB, &config(&k, None, boot))
}

#[test]
fn elf_with_the_pvh_note_is_entered_through_pvh_with_start_info_written() {
    let entry = 0x10_0040;
    let k = TempFile::new("pvh.elf", &elf(&[0x90; 0x100], Some(entry)));
    let initrd = TempFile::new("pvh.initrd", &[0xa5; 5000]);
    let mem = guest_mem(64 * MIB);
    let loaded = load_guest(&mem, 64 * MIB, &config(&k, Some(&initrd), BootMode::Auto)).unwrap();
    assert_eq!(loaded.entry, boot::Entry::Pvh(entry));
    assert_eq!(loaded.to_string(), "ELF vmlinux, PVH entry at 0x100040");
    // The kernel is where its PT_LOAD asks.
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(boot::HIMEM_START)).unwrap(),
        0x90
    );
    // hvm_start_info: magic, the initrd as module 0, the command line,
    // the RSDP, the memory map.
    use linux_loader::loader::elf::start_info::{hvm_modlist_entry, hvm_start_info};
    let info: hvm_start_info = mem.read_obj(GuestAddress(boot::PVH_START_INFO)).unwrap();
    assert_eq!(
        (info.magic, info.version, info.nr_modules),
        (0x336e_c578, 1, 1)
    );
    let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
    assert_eq!(m.size, 5000);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(m.paddr)).unwrap(), 0xa5);
    assert_eq!(
        m.paddr,
        boot::initrd_addr(
            64 * MIB,
            &boot::KernelInfo {
                header: None,
                load_addr: boot::HIMEM_START,
                image_end: boot::HIMEM_START + 0x1100,
            },
            5000
        )
        .unwrap()
    );
    let mut c = [0u8; 22];
    mem.read_slice(&mut c, GuestAddress(info.cmdline_paddr))
        .unwrap();
    assert_eq!(&c, b"console=ttyS0 pvh=yes\0");
    let mut r = [0u8; 8];
    mem.read_slice(&mut r, GuestAddress(info.rsdp_paddr))
        .unwrap();
    assert_eq!(&r, b"RSD PTR ");
    assert_eq!(info.memmap_paddr, boot::PVH_MEMMAP);
    assert_eq!(info.memmap_entries as usize, boot::e820_map(64 * MIB).len());
    // No zero page: PVH does not use one.
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(boot::ZERO_PAGE + 0x202))
            .unwrap(),
        0
    );
}

#[test]
fn elf_without_the_note_keeps_the_64_bit_entry_and_the_zero_page() {
    let k = TempFile::new("plain.elf", &elf(&[0x90; 0x100], None));
    let mem = guest_mem(64 * MIB);
    let loaded = load_guest(&mem, 64 * MIB, &config(&k, None, BootMode::Auto)).unwrap();
    assert_eq!(loaded.entry, boot::Entry::Linux64(boot::HIMEM_START));
    assert_eq!(
        loaded.to_string(),
        "ELF vmlinux, 64-bit entry at 0x100000 (no PVH note)"
    );
    let mut hdrs = [0u8; 4];
    mem.read_slice(&mut hdrs, GuestAddress(boot::ZERO_PAGE + 0x202))
        .unwrap();
    assert_eq!(&hdrs, b"HdrS", "a zero page was written");
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(boot::PVH_START_INFO))
            .unwrap(),
        0,
        "no hvm_start_info"
    );
    // --boot pvh refuses it, with the reason.
    let err = load("plain-pvh.elf", &elf(&[0x90; 0x100], None), BootMode::Pvh).unwrap_err();
    assert!(matches!(err, Error::NoPvhNote(_)), "{err}");
    assert!(err.to_string().contains("has no PVH entry"), "{err}");
}

#[test]
fn boot_linux64_forces_the_64_bit_entry_on_a_pvh_kernel() {
    let f = elf(&[0x90; 0x100], Some(0x10_0040));
    let loaded = load("forced.elf", &f, BootMode::Linux64).unwrap();
    assert_eq!(loaded.entry, boot::Entry::Linux64(boot::HIMEM_START));
    assert!(loaded.to_string().contains("--boot linux64"), "{loaded}");
    let loaded = load("forced-pvh.elf", &f, BootMode::Pvh).unwrap();
    assert_eq!(loaded.entry, boot::Entry::Pvh(0x10_0040));
}

#[test]
fn bzimage_keeps_the_64_bit_entry_and_refuses_boot_pvh() {
    let b = bzimage(&[0x90; 0x1000]);
    let loaded = load("bz", &b, BootMode::Auto).unwrap();
    assert_eq!(loaded.entry, boot::Entry::Linux64(0x10_0200));
    assert_eq!(loaded.to_string(), "bzImage, 64-bit entry at 0x100200");
    assert_eq!(load("bz64", &b, BootMode::Linux64).unwrap(), loaded);
    let err = load("bzpvh", &b, BootMode::Pvh).unwrap_err();
    assert!(matches!(err, Error::PvhNeedsElf(_)), "{err}");
}

#[test]
fn bad_kernel_files_are_clear_errors() {
    let good = elf(&[0x90; 0x100], Some(0x10_0040));
    let why = |name: &str, bytes: &[u8]| match load(name, bytes, BootMode::Auto) {
        Err(e @ Error::BadElf { .. }) => e.to_string(),
        other => panic!("{name}: {other:?}"),
    };
    // Cut short in the header, the program headers, the notes, the code.
    assert!(why("cut-ident", &good[..10]).contains("ELF header is cut short"));
    assert!(why("cut-ehdr", &good[..40]).contains("ELF header is cut short"));
    assert!(why("cut-phdr", &good[..100]).contains("program headers are cut short"));
    let code_at = (64 + 2 * 56usize).next_multiple_of(16);
    assert!(why("cut-code", &good[..code_at + 0x80]).contains("segment is cut short"));
    let notes_at = code_at + 0x100;
    assert!(why("cut-note", &good[..notes_at + 30]).contains("notes are cut short"));
    // 32-bit, big-endian, another machine.
    for (i, v, name) in [(4, 1u8, "class"), (5, 2, "data"), (18, 3, "machine")] {
        let mut f = good.clone();
        f[i] = v;
        assert!(
            why(name, &f).contains("not a 64-bit little-endian x86-64 ELF"),
            "{name}"
        );
    }
    // The PVH entry outside the image, and a segment outside memory.
    let far = elf(&[0x90; 0x100], Some(0x800_0000));
    assert!(why("far-pvh", &far).contains("PVH entry 0x8000000 is outside"));
    let mut big = good.clone();
    let filesz_at = 64 + 32; // PT_LOAD's p_filesz
    big[filesz_at..filesz_at + 8].copy_from_slice(&(128 * MIB).to_le_bytes());
    assert!(why("big", &big).contains("segment is cut short"));
    // Not a kernel at all.
    for (name, bytes) in [("empty", &b""[..]), ("text", &b"#!/bin/sh\necho hi\n"[..])] {
        let err = load(name, bytes, BootMode::Auto).unwrap_err();
        assert!(matches!(err, Error::NotAKernel(_)), "{name}: {err}");
    }
    let err = load("missing", b"", BootMode::Auto).map(|_| ());
    assert!(err.is_err());
}

#[test]
fn every_truncation_and_random_damage_of_an_elf_kernel_is_an_error_or_a_load_never_a_panic() {
    let good = elf(&[0x90; 0x40], Some(0x10_0010));
    let mem = guest_mem(32 * MIB);
    let k = TempFile::new("fuzz.elf", &good);
    let cfg = VmConfig {
        mem_mib: 32,
        ..config(&k, None, BootMode::Auto)
    };
    // The PVH note's descriptor is 8 bytes, of which the entry is the
    // first 4: a file without the other 4 is still whole.
    for len in 0..good.len() - 4 {
        std::fs::write(&k.0, &good[..len]).unwrap();
        let r = load_guest(&mem, 32 * MIB, &cfg);
        assert!(r.is_err(), "a kernel cut at {len} bytes was loaded");
    }
    // Seeded xorshift: damage 1-4 bytes anywhere.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..3000 {
        let mut f = good.clone();
        for _ in 0..=next() % 4 {
            let i = usize::try_from(next() % good.len() as u64).unwrap();
            f[i] = next().to_le_bytes()[0];
        }
        std::fs::write(&k.0, &f).unwrap();
        match load_guest(&mem, 32 * MIB, &cfg) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                err += 1;
            }
        }
    }
    assert!(ok > 0 && err > 0, "{ok} loaded, {err} refused");
}

/// A PVH guest on this host's KVM: 32-bit code at the PVH entry that
/// checks `%ebx` → `hvm_start_info.magic` and CR0.PG = 0, then prints
/// "OK" on COM1 with an `inc eax` (0x40) between: in 64-bit mode that
/// byte is a REX prefix and the first letter would be 'N'.
#[test]
fn pvh_guest_starts_in_32_bit_protected_mode_with_ebx_at_start_info() {
    #[rustfmt::skip]
    let code = [
        0x81, 0x3b, 0x78, 0xc5, 0x6e, 0x33, // cmp dword [ebx], 0x336ec578
        0x75, 0x15,                         // jne fail
        0x0f, 0x20, 0xc0,                   // mov eax, cr0
        0xa9, 0x00, 0x00, 0x00, 0x80,       // test eax, CR0.PG
        0x75, 0x0b,                         // jnz fail
        0x66, 0xba, 0xf8, 0x03,             // mov dx, 0x3f8
        0xb0, b'N',                         // mov al, 'N'
        0x40,                               // inc eax (32-bit only)
        0xee,                               // out dx, al
        0xb0, b'K', 0xee,                   // mov al, 'K'; out dx, al
        0xfa, 0xf4, 0xeb, 0xfd,             // fail: cli; hlt; jmp hlt
    ];
    let vm = match kvm::Vm::new(32 * MIB) {
        Ok(vm) => vm,
        Err(e @ (kvm::KvmError::NoKvm | kvm::KvmError::KvmPermission)) => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let k = TempFile::new("run.elf", &elf(&code, Some(0x10_0000)));
    let cfg = VmConfig {
        mem_mib: 32,
        ..config(&k, None, BootMode::Auto)
    };
    let loaded = load_guest(&vm.mem, 32 * MIB, &cfg).unwrap();
    assert_eq!(loaded.entry, boot::Entry::Pvh(0x10_0000));
    let out = Out::default();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    // Two vCPUs: the second waits for a SIPI that never comes, as an
    // AP does until the kernel starts it.
    let r = run_vm(
        vm,
        2,
        loaded.entry,
        &[],
        Box::new(out.clone()),
        evt,
        pci::PciBus::new(),
    );
    let s = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    assert_eq!(r.unwrap(), Exit::PowerOff("all vCPUs halted"));
    assert_eq!(s, "OK");
}
