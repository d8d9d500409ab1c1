//! The embedded KVM VMM (issue 5), the virtio devices and their
//! transports.
//!
//! - [`virtio_net`]: the virtio-net device model (features, config space,
//!   TX/RX/control queue data path), transport-agnostic.
//! - [`vhost_user`]: the vhost-user-net backend (`--vhost-user SOCKET`) on
//!   top of it, with [`vhost_relay`] between the VMM and the vhost crate.
//! - The VMM below (`uipd --kernel`); its virtio-pci transport
//!   ([`virtio_pci`]) reuses [`virtio_net`] and [`queue_pair`].
//!
//! # Theory of operation
//!
//! `uipd --kernel FILE` runs a Linux guest the kvmtool way: no firmware, the
//! kernel entered directly (a bzImage through the 64-bit boot protocol, an
//! ELF vmlinux through PVH when it has the PVH note: [`boot::Entry`]), a
//! 16550 serial console on the terminal. [`run`] does, in order:
//!
//! 1. checks the configuration against the host (memory, CPUs) and opens KVM
//!    ([`kvm::Vm::new`]: in-kernel irqchip and PIT, guest RAM);
//! 2. loads the kernel (bzImage, or ELF vmlinux) with linux-loader, the
//!    initrd at the top of low RAM, and writes the zero page (or, for PVH,
//!    `hvm_start_info`: [`pvh`]), command line, E820 map, MP table, ACPI
//!    tables (the MADT: how a kernel without MP-table parsing finds every
//!    vCPU; FADT, DSDT with the PCI root bridge, MCFG for MMCONFIG:
//!    [`acpi`]), GDT and page tables ([`boot`]): [`load_guest`], pure, so
//!    tested without KVM. A kernel file is user input: a bad one is an
//!    error naming what is wrong with it, never a panic;
//! 3. builds the port-I/O bus ([`devices`]): COM1 with its IRQ 4 as an irqfd,
//!    the i8042 (reset ends the VM), the CMOS clock, the ACPI PM1 registers;
//! 4. runs one thread per vCPU until the guest powers off or resets, or
//!    uipd gets SIGINT/SIGTERM ([`vcpu`]); each of those is a clean exit.
//!
//! ```text
//!  main thread: load, set up, then wait (exit event | signal | all vCPUs halted)
//!  uipd-vcpu0..N-1: KVM_RUN ─► exits ─► pio/mmio Bus ─► devices
//!  in KVM: PIC, I/O APIC, local APICs, PIT; irqfd GSI 4 ◄── serial
//! ```
//!
//! The DSDT names `\_S5`, so the guest powers off the ACPI way (a write of
//! `SLP_EN` with sleep type 5 to PM1 control, see [`devices`]); a kernel
//! without ACPI halts every vCPU instead, see [`vcpu`] for how both are
//! detected. Recommended guest command line:
//! `console=ttyS0 reboot=k panic=-1` (reboot through the i8042; a panic
//! reboots at once, which ends uipd instead of hanging).
//!
//! Devices on PCI ([`pci`]): a host bridge and, with `-net user` (the
//! default), a virtio-net function over modern virtio-pci
//! ([`virtio_pci`]) with one MSI-X vector per queue (irqfd + KVM MSI
//! routes) and ioeventfds on the RX/TX notify addresses; its queue pairs
//! feed the daemon's stack workers through [`queue_pair`], the data path
//! it shares with [`vhost_user`]. [`prepare`] loads the guest and returns
//! a [`Machine`]; the daemon adds the NIC (it needs the guest memory for
//! the workers' sinks) and runs it. Linux finds the bus through the ACPI
//! root bridge and reaches configuration space through the ECAM window
//! (MMCONFIG, 4 KiB per function) that the MCFG describes; the type-1
//! ports 0xcf8/0xcfc reach the same registers. With `-net tap` the NIC's
//! frames go to a host TAP instead of the workers ([`tap_net`]). The stock
//! Debian kernel loads
//! `virtio_pci` and `virtio_net` as modules from its initramfs.

pub mod acpi;
pub mod boot;
pub mod devices;
pub mod kvm;
pub mod pci;
pub mod pvh;
pub mod queue_pair;
pub mod tap_net;
pub mod vcpu;
pub mod vhost_user;
pub mod virtio_net;
pub mod virtio_pci;

/// The vhost-user relay's old path (the fuzz targets use it).
pub use self::vhost_user::relay as vhost_relay;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use linux_loader::loader::{self, KernelLoader};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use self::devices::{Bus, Cmos, EventFdTrigger, I8042, SerialDevice, Sink};
pub use self::vcpu::Exit;

/// Everything the VMM needs, from the command line.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The kernel: a bzImage, or an ELF vmlinux.
    pub kernel: PathBuf,
    /// An initrd / initramfs.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub vcpus: usize,
    /// Host CPUs for the vCPU threads: vCPU i on `vcpu_cpus[i % len]`.
    pub vcpu_cpus: Vec<usize>,
    /// How to enter an ELF vmlinux (`--boot`).
    pub boot: BootMode,
}

/// Which entry an ELF vmlinux gets (`--boot`); a bzImage always gets the
/// 64-bit one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootMode {
    /// PVH when the vmlinux has the PVH note, else the 64-bit entry.
    #[default]
    Auto,
    /// PVH; an error for a bzImage or a vmlinux without the note.
    Pvh,
    /// The 64-bit boot protocol at the ELF entry, even with a PVH note.
    Linux64,
}

/// The default command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// VMM errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM set-up.
    #[error(transparent)]
    Kvm(#[from] kvm::KvmError),
    /// Memory layout.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// The VMM thread could not be confined.
    #[error("{0}")]
    Sandbox(String),
    /// More memory than the host has.
    #[error("--mem {mib} MiB is more than this host's memory ({host_mib} MiB)")]
    MemTooLarge {
        /// Asked for.
        mib: u64,
        /// The host's MemTotal.
        host_mib: u64,
    },
    /// Too many or too few vCPUs.
    #[error("--vcpus {0}: give 1 to {1}")]
    Vcpus(usize, usize),
    /// A `--vcpu-cpus` CPU the process cannot use.
    #[error("--vcpu-cpus")]
    Cpus(#[from] crate::dataplane::cpus::CpuError),
    /// A file could not be read.
    #[error("cannot read {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a kernel image.
    #[error("{0} is not a Linux kernel (neither a bzImage nor an ELF vmlinux)")]
    NotAKernel(PathBuf),
    /// A bzImage without the 64-bit entry point.
    #[error("{0} is a bzImage without the 64-bit boot entry (xloadflags bit 0): too old or 32-bit")]
    Not64Bit(PathBuf),
    /// An ELF file that cannot be loaded as a kernel.
    #[error("{path} is not a usable ELF vmlinux: {why}")]
    BadElf {
        /// The kernel.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// `--boot pvh` with a vmlinux that has no PVH entry.
    #[error(
        "{0} has no PVH entry (no XEN_ELFNOTE_PHYS32_ENTRY note: a kernel built without CONFIG_PVH); leave out --boot pvh to enter it in 64-bit mode"
    )]
    NoPvhNote(PathBuf),
    /// `--boot pvh` with a bzImage.
    #[error(
        "{0} is a bzImage: --boot pvh needs an ELF vmlinux with a PVH note (see scripts/extract-vmlinux.sh)"
    )]
    PvhNeedsElf(PathBuf),
    /// The kernel could not be loaded.
    #[error("cannot load the kernel {path}")]
    Load {
        /// The kernel.
        path: PathBuf,
        /// The cause.
        #[source]
        source: loader::Error,
    },
    /// The initrd could not be loaded.
    #[error("cannot load the initrd {path} into guest memory")]
    Initrd {
        /// The initrd.
        path: PathBuf,
        /// The cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Device set-up.
    #[error("setting up devices: {0}")]
    Devices(String),
    /// Running the VM.
    #[error(transparent)]
    Run(#[from] vcpu::RunError),
}

/// The host's total memory in MiB (from /proc/meminfo), if readable.
fn host_mem_mib() -> Option<u64> {
    let t = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = t.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib >> 10)
}

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
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;

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

/// Boots the guest and runs it until it ends. `Ok` = a clean end (power
/// off, reset, SIGINT/SIGTERM), exit status 0.
pub fn run(cfg: &VmConfig) -> Result<Exit, Error> {
    prepare(cfg)?.run()
}

/// A VM whose memory is loaded (kernel, initrd, boot tables), before its
/// devices are wired and its vCPUs run: the daemon adds the NIC here,
/// once it has the guest memory its workers write into.
pub struct Machine {
    vm: kvm::Vm,
    vcpus: usize,
    entry: boot::Entry,
    pin: Vec<usize>,
    pci: pci::PciBus,
    hooks: Arc<kvm::KvmHooks>,
    nets: Vec<Arc<virtio_pci::NetCore>>,
    exit_evt: EventFd,
}

/// Loads the guest: checks the configuration against the host, creates
/// the VM, loads kernel and initrd and writes the boot tables.
pub fn prepare(cfg: &VmConfig) -> Result<Machine, Error> {
    let mem_bytes = cfg.mem_mib.checked_mul(1 << 20).ok_or(Error::MemTooLarge {
        mib: cfg.mem_mib,
        host_mib: host_mem_mib().unwrap_or(0),
    })?;
    boot::check_mem(mem_bytes)?;
    if let Some(host_mib) = host_mem_mib().filter(|&h| cfg.mem_mib > h) {
        return Err(Error::MemTooLarge {
            mib: cfg.mem_mib,
            host_mib,
        });
    }
    if !cfg.vcpu_cpus.is_empty() {
        crate::dataplane::cpus::check_usable(&cfg.vcpu_cpus)?;
    }
    let vm = kvm::Vm::new(mem_bytes)?;
    let max = vm.max_vcpus().min(boot::MAX_VCPUS);
    if cfg.vcpus == 0 || cfg.vcpus > max {
        return Err(Error::Vcpus(cfg.vcpus, max));
    }
    let loaded = load_guest(&vm.mem, mem_bytes, cfg)?;
    // Which entry a kernel got is worth a line: a vmlinux boots either way.
    eprintln!("uipd: kernel {}: {loaded}", cfg.kernel.display());
    let entry = loaded.entry;
    let exit_evt =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Devices(format!("eventfd: {e}")))?;
    let hooks = Arc::new(kvm::KvmHooks::new(&vm));
    Ok(Machine {
        vm,
        vcpus: cfg.vcpus,
        entry,
        pin: cfg.vcpu_cpus.clone(),
        pci: pci::PciBus::new(),
        hooks,
        nets: Vec::new(),
        exit_evt,
    })
}

impl Machine {
    /// Guest memory.
    pub fn mem(&self) -> &vm_memory::GuestMemoryMmap {
        &self.vm.mem
    }

    /// Writing this event ends the VM ([`Exit::Stopped`]).
    pub fn stopper(&self) -> Result<EventFd, Error> {
        self.exit_evt
            .try_clone()
            .map_err(|e| Error::Devices(format!("eventfd: {e}")))
    }

    /// Adds a virtio-net PCI function driven by `core`.
    pub fn add_net(&mut self, core: Arc<virtio_pci::NetCore>, mtu: u16) -> Result<(), Error> {
        let slot = self
            .pci
            .next_slot()
            .ok_or_else(|| Error::Devices("no free PCI slot".into()))?;
        let bar = u32::try_from(pci::PciBus::slot_mmio(slot))
            .map_err(|_| Error::Devices("BAR above 4 GiB".into()))?;
        // Each function gets its own GSIs: one per MSI-X vector.
        let gsi = pci::MSI_GSI_BASE + 256 * u32::try_from(self.nets.len()).unwrap_or(0);
        let dev = virtio_pci::VirtioNetPci::new(core.clone(), self.hooks.clone(), bar, gsi, mtu)
            .map_err(|e| Error::Devices(format!("virtio-net: {e}")))?;
        self.pci.add(Arc::new(Mutex::new(dev)));
        self.nets.push(core);
        Ok(())
    }

    /// Runs the VM until it ends, on the terminal's console.
    pub fn run(self) -> Result<Exit, Error> {
        let out = Box::new(devices::Unbuffered(std::io::stdout()));
        let mut threads = Vec::new();
        for n in &self.nets {
            threads.extend(
                n.start()
                    .map_err(|e| Error::Devices(format!("starting the queue threads: {e}")))?,
            );
        }
        let r = run_vm(
            self.vm,
            self.vcpus,
            self.entry,
            &self.pin,
            out,
            self.exit_evt,
            self.pci,
        );
        for n in &self.nets {
            n.stop();
        }
        for t in threads {
            let _ = t.join();
        }
        r
    }
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

/// Wires the devices and runs the vCPUs of a VM whose memory is ready:
/// vCPU 0 starts at `entry` (long mode with `%rsi` = the zero page, or
/// PVH with `%ebx` = `hvm_start_info`); the others wait for INIT/SIPI.
/// Writing `exit_evt` (from another thread) stops the VM: [`Exit::Stopped`].
pub fn run_vm(
    vm: kvm::Vm,
    vcpus: usize,
    entry: boot::Entry,
    pin: &[usize],
    console: Box<dyn std::io::Write + Send>,
    exit_evt: EventFd,
    pci: pci::PciBus,
) -> Result<Exit, Error> {
    let dev_err = |what: &str, e: &dyn std::fmt::Display| Error::Devices(format!("{what}: {e}"));
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| dev_err("eventfd", &e))?;
    vm.fd
        .register_irqfd(&serial_irq, devices::COM1_IRQ)
        .map_err(|e| dev_err("registering the serial irqfd", &e))?;
    let mut pio = Bus::default();
    let reset_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| dev_err("eventfd", &e))?;
    let reset = reset_evt.try_clone().map_err(|e| dev_err("eventfd", &e))?;
    let poweroff_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| dev_err("eventfd", &e))?;
    let poweroff = poweroff_evt
        .try_clone()
        .map_err(|e| dev_err("eventfd", &e))?;
    let ins = |bus: &mut Bus, base, len, d: Arc<Mutex<dyn devices::BusDevice>>| {
        bus.insert(base, len, d)
            .map_err(|e| dev_err("port map", &e))
    };
    ins(
        &mut pio,
        devices::COM1,
        8,
        Arc::new(Mutex::new(SerialDevice::new(serial_irq, console))),
    )?;
    ins(
        &mut pio,
        devices::I8042_PORT,
        5,
        Arc::new(Mutex::new(I8042(vm_superio::I8042Device::new(
            EventFdTrigger(reset),
        )))),
    )?;
    ins(
        &mut pio,
        devices::CMOS,
        2,
        Arc::new(Mutex::new(Cmos::default())),
    )?;
    ins(&mut pio, 0x80, 1, Arc::new(Mutex::new(Sink)))?;
    ins(
        &mut pio,
        devices::ACPI_PM1,
        devices::ACPI_PM1_LEN,
        Arc::new(Mutex::new(devices::AcpiPm::new(poweroff))),
    )?;
    let (pci_io, pci_ecam, pci_mmio) = pci.into_bus_devices();
    ins(
        &mut pio,
        pci::CONFIG_PORT,
        pci::CONFIG_PORT_LEN,
        Arc::new(Mutex::new(pci_io)),
    )?;
    let mut mmio = Bus::default();
    mmio.insert(
        pci::PCI_MMIO_START,
        pci::PCI_MMIO_SIZE,
        Arc::new(Mutex::new(pci_mmio)),
    )
    .map_err(|e| dev_err("MMIO map", &e))?;
    mmio.insert(
        pci::PCI_ECAM_START,
        pci::PCI_ECAM_SIZE,
        Arc::new(Mutex::new(pci_ecam)),
    )
    .map_err(|e| dev_err("MMIO map (ECAM)", &e))?;
    let shared = vcpu::Shared::new(vcpus, pio, mmio, exit_evt, reset_evt, poweroff_evt);
    let mut fds = Vec::with_capacity(vcpus);
    for i in 0..vcpus {
        let id = u8::try_from(i).map_err(|_| Error::Vcpus(vcpus, boot::MAX_VCPUS))?;
        let boot = (i == 0).then_some(entry);
        fds.push(vm.create_vcpu(id, vcpus, boot)?);
    }
    let r = vcpu::run(fds, Arc::new(shared), pin)?;
    // The VM (and its memory) lives until every vCPU thread is gone.
    drop(vm);
    Ok(r)
}

#[cfg(test)]
mod tests {
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
        let loaded =
            load_guest(&mem, 64 * MIB, &config(&k, Some(&initrd), BootMode::Auto)).unwrap();
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
}
