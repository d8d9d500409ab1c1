//! The embedded KVM VMM (issue 5), the virtio devices and their
//! transports.
//!
//! - [`virtio_net`]: the virtio-net device model (features, config space,
//!   TX/RX/control queue data path), transport-agnostic.
//! - [`vhost_user`]: the vhost-user-net backend (`--vhost-user SOCKET`) on
//!   top of it, with [`vhost_user::relay`] between the VMM and the vhost
//!   crate.
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
//!    ([`prepare`], `machine.rs`; [`kvm::Vm::new`]: in-kernel irqchip and
//!    PIT, guest RAM);
//! 2. loads the kernel (bzImage, or ELF vmlinux) with linux-loader, the
//!    initrd at the top of low RAM, and writes the zero page (or, for PVH,
//!    `hvm_start_info`: [`pvh`]), command line, E820 map, MP table, ACPI
//!    tables (the MADT: how a kernel without MP-table parsing finds every
//!    vCPU; FADT, DSDT with the PCI root bridge, MCFG for MMCONFIG:
//!    [`acpi`]), GDT and page tables ([`boot`]): [`load_guest`]
//!    (`load.rs`), pure, so tested without KVM. A kernel file is user input: a bad one is an
//!    error naming what is wrong with it, never a panic;
//! 3. builds the port-I/O bus ([`devices`]): COM1 with its IRQ 4 as an irqfd,
//!    the i8042 (reset ends the VM), the CMOS clock, the ACPI PM1 registers,
//!    and the PCI bus on ports, ECAM and the MMIO window ([`run_vm`]);
//! 4. runs one thread per vCPU until the guest powers off or resets, or
//!    uipd gets SIGINT/SIGTERM ([`vcpu`]); each of those is a clean exit.
//!
//! ```text
//!  caller's thread: load, set up, then wait (exit event | signal | all vCPUs halted)
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
mod load;
mod machine;
pub mod pci;
pub mod pvh;
pub mod queue_pair;
pub mod tap_net;
pub mod vcpu;
pub mod vhost_user;
pub mod virtio_net;
pub mod virtio_pci;

use std::path::PathBuf;

use linux_loader::loader;

pub use self::load::{Loaded, load_guest};
pub use self::machine::{Machine, prepare, run, run_vm};
pub use self::vcpu::Exit;
/// The vhost-user relay's old path (the fuzz targets use it).
pub use self::vhost_user::relay as vhost_relay;

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

#[cfg(test)]
mod tests;
