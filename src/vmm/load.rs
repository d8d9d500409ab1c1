//! Loading a guest into memory, without KVM: the kernel (an ELF vmlinux
//! through linux-loader's ELF loader, else a bzImage), the initrd at the
//! top of low RAM, and the boot tables for the entry the kernel gets
//! ([`super::boot`], [`super::pvh`], [`super::acpi`]). A kernel file is
//! user input: a bad one is an [`Error`] naming what is wrong with it,
//! never a panic.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::{self, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use super::{BootMode, Error, VmConfig, acpi, boot, pvh};

/// What kind of kernel was loaded, and how it is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// The boot vCPU's entry.
    pub entry: boot::Entry,
    /// An ELF vmlinux (else a bzImage).
    pub elf: bool,
    /// The vmlinux has the PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`).
    pub pvh_note: bool,
}

impl std::fmt::Display for Loaded {
    /// One line for the log, e.g. "ELF vmlinux, PVH entry at 0x1000850".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.elf { "ELF vmlinux" } else { "bzImage" };
        match self.entry {
            boot::Entry::Pvh(a) => write!(f, "{kind}, PVH entry at {a:#x}"),
            boot::Entry::Linux64(a) => {
                write!(f, "{kind}, 64-bit entry at {a:#x}")?;
                match (self.elf, self.pvh_note) {
                    (true, true) => write!(f, " (--boot linux64; it has a PVH entry)"),
                    (true, false) => write!(f, " (no PVH note)"),
                    (false, _) => Ok(()),
                }
            }
        }
    }
}

/// The ELF header's first bytes: magic, class, data, and `e_machine`.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
pub(super) const ELFCLASS64: u8 = 2;
pub(super) const ELFDATA2LSB: u8 = 1;
pub(super) const EM_X86_64: u16 = 62;

/// Why linux-loader refused an ELF file, as a clause for
/// [`Error::BadElf`].
fn elf_reason(e: &loader::elf::Error) -> &'static str {
    use loader::elf::Error as E;
    match e {
        E::Align => "a note has an impossible alignment",
        E::BigEndianElfOnLittle => "it is big-endian",
        E::InvalidElfMagicNumber => "it has no ELF magic number",
        E::InvalidProgramHeaderSize => "its program header entries are not ELF64's size",
        E::InvalidProgramHeaderOffset => "its program headers overlap the ELF header",
        E::InvalidProgramHeaderAddress => "a segment's load address overflows",
        E::InvalidEntryAddress => "its entry point is below 1 MiB",
        E::Overflow => "a note's size overflows",
        E::ReadElfHeader => "its ELF header is cut short",
        E::ReadKernelImage => {
            "a segment is cut short in the file or does not fit in guest memory (give more --mem?)"
        }
        E::ReadProgramHeader => "its program headers are cut short",
        E::SeekKernelStart | E::SeekElfStart | E::SeekProgramHeader | E::SeekNoteHeader => {
            "an offset in it points outside the file"
        }
        E::ReadNoteHeader => "its notes are cut short",
        E::InvalidPvhNote => "its PVH note is shorter than a 32-bit address",
    }
}

/// Loads an ELF vmlinux (`f` at its start) and picks its entry.
fn load_elf(
    mem: &vm_memory::GuestMemoryMmap,
    path: &std::path::Path,
    f: &mut File,
    mode: BootMode,
) -> Result<(boot::KernelInfo, Loaded), Error> {
    let bad = |why: String| Error::BadElf {
        path: path.to_owned(),
        why,
    };
    let mut ident = [0u8; 20];
    match f.read_exact(&mut ident) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(bad("its ELF header is cut short".into()));
        }
        Err(source) => {
            return Err(Error::File {
                path: path.to_owned(),
                source,
            });
        }
    }
    let machine = u16::from_le_bytes([ident[18], ident[19]]);
    if ident[4] != ELFCLASS64 || ident[5] != ELFDATA2LSB || machine != EM_X86_64 {
        return Err(bad(format!(
            "it is not a 64-bit little-endian x86-64 ELF file (class {}, data {}, machine {machine})",
            ident[4], ident[5]
        )));
    }
    let himem = Some(GuestAddress(boot::HIMEM_START));
    let r = match loader::elf::Elf::load(mem, None, f, himem) {
        Ok(r) => r,
        Err(loader::Error::Elf(e)) => return Err(bad(elf_reason(&e).into())),
        Err(source) => {
            return Err(Error::Load {
                path: path.to_owned(),
                source,
            });
        }
    };
    let info = boot::KernelInfo {
        header: None,
        load_addr: r.kernel_load.0,
        image_end: r.kernel_end,
    };
    let pvh = match r.pvh_boot_cap {
        loader::elf::PvhBootCapability::PvhEntryPresent(a) => Some(a.0),
        _ => None,
    };
    let entry = match (mode, pvh) {
        (BootMode::Auto | BootMode::Pvh, Some(a)) => {
            // The note holds a 32-bit physical address; it must be code
            // that was just loaded.
            if a < boot::HIMEM_START || a >= r.kernel_end {
                return Err(bad(format!(
                    "its PVH entry {a:#x} is outside its loaded image ({:#x}..{:#x})",
                    boot::HIMEM_START,
                    r.kernel_end
                )));
            }
            boot::Entry::Pvh(
                u32::try_from(a).map_err(|_| bad("its PVH entry is above 4 GiB".into()))?,
            )
        }
        (BootMode::Pvh, None) => return Err(Error::NoPvhNote(path.to_owned())),
        (BootMode::Auto | BootMode::Linux64, _) => boot::Entry::Linux64(r.kernel_load.0),
    };
    let loaded = Loaded {
        entry,
        elf: true,
        pvh_note: pvh.is_some(),
    };
    Ok((info, loaded))
}

/// Loads the kernel (an ELF vmlinux, else a bzImage); returns what
/// [`boot`] needs and how to enter it.
fn load_kernel(
    mem: &vm_memory::GuestMemoryMmap,
    path: &std::path::Path,
    mode: BootMode,
) -> Result<(boot::KernelInfo, Loaded), Error> {
    let file_err = |source| Error::File {
        path: path.to_owned(),
        source,
    };
    let mut f = File::open(path).map_err(file_err)?;
    let mut magic = [0u8; 4];
    let is_elf = f.read_exact(&mut magic).is_ok() && &magic == ELF_MAGIC;
    f.seek(SeekFrom::Start(0)).map_err(file_err)?;
    if is_elf {
        return load_elf(mem, path, &mut f, mode);
    }
    let himem = Some(GuestAddress(boot::HIMEM_START));
    match loader::bzimage::BzImage::load(mem, None, &mut f, himem) {
        Ok(r) => {
            let header = r.setup_header;
            if header.is_none_or(|h| h.xloadflags & boot::XLF_KERNEL_64 == 0) {
                return Err(Error::Not64Bit(path.to_owned()));
            }
            if mode == BootMode::Pvh {
                return Err(Error::PvhNeedsElf(path.to_owned()));
            }
            let info = boot::KernelInfo {
                header,
                load_addr: r.kernel_load.0,
                image_end: r.kernel_end,
            };
            // boot.rst, 64-bit boot protocol: startup_64 is at +0x200.
            let loaded = Loaded {
                entry: boot::Entry::Linux64(r.kernel_load.0 + 0x200),
                elf: false,
                pvh_note: false,
            };
            Ok((info, loaded))
        }
        Err(loader::Error::Bzimage(
            loader::bzimage::Error::InvalidBzImage | loader::bzimage::Error::ReadBzImageHeader,
        )) => Err(Error::NotAKernel(path.to_owned())),
        Err(source) => Err(Error::Load {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Loads kernel and initrd into `mem` (`mem_bytes` of RAM) and writes the
/// boot tables for the entry the kernel gets: the zero page for the 64-bit
/// entry, `hvm_start_info` for PVH ([`pvh`]); the command line, E820 map,
/// MP table, ACPI tables, GDT and page tables for both. Pure (no KVM).
pub fn load_guest(
    mem: &vm_memory::GuestMemoryMmap,
    mem_bytes: u64,
    cfg: &VmConfig,
) -> Result<Loaded, Error> {
    let (kernel, loaded) = load_kernel(mem, &cfg.kernel, cfg.boot)?;
    boot::check_cmdline(&cfg.cmdline, &kernel)?;
    let initrd = match &cfg.initrd {
        None => None,
        Some(path) => Some(load_initrd(mem, mem_bytes, &kernel, path)?),
    };
    let e820 = boot::e820_map(mem_bytes);
    boot::write_mptable(mem, cfg.vcpus)?;
    let rsdp = acpi::write(mem, cfg.vcpus)?;
    match loaded.entry {
        boot::Entry::Linux64(_) => {
            let mut params = boot::boot_params(&kernel, cfg.cmdline.len(), initrd, &e820);
            params.acpi_rsdp_addr = rsdp;
            boot::write_boot_params(mem, &cfg.cmdline, &params)?;
        }
        boot::Entry::Pvh(_) => {
            boot::write_cmdline(mem, &cfg.cmdline)?;
            pvh::write_start_info(mem, &e820, initrd, rsdp)?;
        }
    }
    boot::write_cpu_tables(mem)?;
    Ok(loaded)
}

fn load_initrd(
    mem: &vm_memory::GuestMemoryMmap,
    mem_bytes: u64,
    kernel: &boot::KernelInfo,
    path: &std::path::Path,
) -> Result<(u64, u64), Error> {
    let file_err = |source| Error::File {
        path: path.to_owned(),
        source,
    };
    let mut f = File::open(path).map_err(file_err)?;
    let size = f.metadata().map_err(file_err)?.len();
    let addr = boot::initrd_addr(mem_bytes, kernel, size)?;
    let len = usize::try_from(size).unwrap_or(usize::MAX);
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, len)
        .map_err(|source| Error::Initrd {
            path: path.to_owned(),
            source,
        })?;
    Ok((addr, size))
}
