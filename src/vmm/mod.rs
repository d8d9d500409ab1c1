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
//! kernel entered directly through the 64-bit boot protocol, a 16550 serial
//! console on the terminal. [`run`] does, in order:
//!
//! 1. checks the configuration against the host (memory, CPUs) and opens KVM
//!    ([`kvm::Vm::new`]: in-kernel irqchip and PIT, guest RAM);
//! 2. loads the kernel (bzImage, or ELF vmlinux) with linux-loader, the
//!    initrd at the top of low RAM, and writes the zero page, command line,
//!    E820 map, MP table, ACPI tables (the MADT: how a kernel without
//!    MP-table parsing finds every vCPU; FADT, DSDT with the PCI root
//!    bridge, MCFG for MMCONFIG: [`acpi`]), GDT and page tables ([`boot`]);
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
//! The ACPI tables describe no `\_S5`, so the guest cannot ask ACPI to
//! power it off; see [`vcpu`] for how `poweroff` is detected. Recommended guest command line:
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
pub mod queue_pair;
pub mod tap_net;
pub mod vcpu;
pub mod vhost_relay;
pub mod vhost_user;
pub mod virtio_net;
pub mod virtio_pci;

use std::fs::File;
use std::io::{Seek, SeekFrom};
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

/// Loads the kernel; returns what [`boot`] needs and the entry point.
fn load_kernel(
    mem: &vm_memory::GuestMemoryMmap,
    path: &std::path::Path,
) -> Result<(boot::KernelInfo, u64), Error> {
    let file_err = |source| Error::File {
        path: path.to_owned(),
        source,
    };
    let mut f = File::open(path).map_err(file_err)?;
    let himem = Some(GuestAddress(boot::HIMEM_START));
    let load_err = |source| Error::Load {
        path: path.to_owned(),
        source,
    };
    match loader::bzimage::BzImage::load(mem, None, &mut f, himem) {
        Ok(r) => {
            let header = r.setup_header;
            if header.is_none_or(|h| h.xloadflags & boot::XLF_KERNEL_64 == 0) {
                return Err(Error::Not64Bit(path.to_owned()));
            }
            let info = boot::KernelInfo {
                header,
                load_addr: r.kernel_load.0,
                image_end: r.kernel_end,
            };
            // boot.rst, 64-bit boot protocol: startup_64 is at +0x200.
            Ok((info, r.kernel_load.0 + 0x200))
        }
        Err(loader::Error::Bzimage(loader::bzimage::Error::InvalidBzImage)) => {
            f.seek(SeekFrom::Start(0)).map_err(file_err)?;
            match loader::elf::Elf::load(mem, None, &mut f, himem) {
                Ok(r) => Ok((
                    boot::KernelInfo {
                        header: None,
                        load_addr: r.kernel_load.0,
                        image_end: r.kernel_end,
                    },
                    r.kernel_load.0,
                )),
                Err(loader::Error::Elf(
                    loader::elf::Error::InvalidElfMagicNumber | loader::elf::Error::ReadElfHeader,
                )) => Err(Error::NotAKernel(path.to_owned())),
                Err(e) => Err(load_err(e)),
            }
        }
        Err(loader::Error::Bzimage(loader::bzimage::Error::ReadBzImageHeader)) => {
            Err(Error::NotAKernel(path.to_owned()))
        }
        Err(e) => Err(load_err(e)),
    }
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
    entry: u64,
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
    let (kernel, entry) = load_kernel(&vm.mem, &cfg.kernel)?;
    boot::check_cmdline(&cfg.cmdline, &kernel)?;
    let initrd = match &cfg.initrd {
        None => None,
        Some(path) => Some(load_initrd(&vm.mem, mem_bytes, &kernel, path)?),
    };
    let e820 = boot::e820_map(mem_bytes);
    let mut params = boot::boot_params(&kernel, cfg.cmdline.len(), initrd, &e820);
    boot::write_mptable(&vm.mem, cfg.vcpus)?;
    params.acpi_rsdp_addr = acpi::write(&vm.mem, cfg.vcpus)?;
    boot::write_boot_params(&vm.mem, &cfg.cmdline, &params)?;
    boot::write_cpu_tables(&vm.mem)?;
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
/// vCPU 0 starts at `entry` in long mode with `%rsi` = the zero page.
/// Writing `exit_evt` (from another thread) stops the VM: [`Exit::Stopped`].
pub fn run_vm(
    vm: kvm::Vm,
    vcpus: usize,
    entry: u64,
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
        let boot = (i == 0).then_some((entry, boot::ZERO_PAGE));
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
            boot::HIMEM_START,
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
                boot::HIMEM_START,
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
}
