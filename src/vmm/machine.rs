//! The machine: a VM whose memory [`prepare`] loaded, its devices wired
//! ([`run_vm`]: the port-I/O bus with serial, i8042, CMOS and ACPI PM1;
//! the PCI bus on port I/O, ECAM and MMIO) and its vCPUs run until the
//! guest ends. The daemon adds the NIC ([`Machine::add_net`]) between the
//! two, once it has the guest memory its workers write into.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::devices::{self, Bus, Cmos, EventFdTrigger, I8042, SerialDevice, Sink};
use super::{Error, Exit, VmConfig, boot, kvm, load_guest, pci, vcpu, virtio_pci};

/// The host's total memory in MiB (from /proc/meminfo), if readable.
fn host_mem_mib() -> Option<u64> {
    let t = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = t.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib >> 10)
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
