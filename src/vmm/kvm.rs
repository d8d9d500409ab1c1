//! The KVM VM and its vCPUs: creation and the architectural state a Linux
//! guest expects at its 64-bit entry point.
//!
//! # Theory of operation
//!
//! [`Vm::new`] opens `/dev/kvm`, checks the capabilities uipd relies on,
//! creates the VM with an in-kernel interrupt controller (PIC + I/O APIC +
//! local APICs) and PIT, and backs guest RAM with anonymous memory from
//! vm-memory, registered as one KVM memory slot per region
//! ([`super::boot::ram_regions`]: RAM skips the MMIO hole below 4 GiB).
//!
//! [`Vm::create_vcpu`] gives each vCPU KVM's supported CPUID (with its APIC
//! ID patched in), the MSRs Linux relies on at boot (notably MTRRs on, default
//! write-back: without it every access is uncached) and LINT0 = ExtINT,
//! LINT1 = NMI on its local APIC, as a BIOS leaves them. The boot vCPU also
//! gets the entry state ([`boot_state`]): long mode with the GDT, page
//! tables and registers of the 64-bit boot protocol, or 32-bit protected
//! mode for PVH ([`super::boot::Entry`]). The other vCPUs wait for the
//! guest's INIT/SIPI in KVM.
//!
//! Unsafe code: registering guest memory with KVM (the host mapping must
//! stay valid while the VM lives: [`Vm`] owns both, and drops the VM fd
//! first).

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, Msrs, kvm_fpu, kvm_msr_entry,
    kvm_pit_config, kvm_regs, kvm_segment, kvm_sregs, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::boot::{self, Segment};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KvmIrqRouting, kvm_irq_routing_entry,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch};
use vmm_sys_util::eventfd::EventFd;

/// KVM set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm is missing.
    #[error(
        "/dev/kvm does not exist: KVM is not available on this host (load kvm_intel or kvm_amd, or turn on nested virtualisation)"
    )]
    NoKvm,
    /// /dev/kvm is not accessible.
    #[error(
        "no permission to open /dev/kvm (add the user to the group that owns it, usually `kvm`)"
    )]
    KvmPermission,
    /// Another error opening /dev/kvm.
    #[error("cannot open /dev/kvm")]
    Open(#[source] kvm_ioctls::Error),
    /// The host's KVM lacks a capability uipd needs.
    #[error("the host's KVM lacks {0}")]
    MissingCap(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM: {what}")]
    Ioctl {
        /// What uipd asked for.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be allocated.
    #[error("cannot allocate {mib} MiB of guest memory")]
    Memory {
        /// The size asked for.
        mib: u64,
        /// The cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// Too many vCPUs for this host's KVM.
    #[error("{0} vCPUs: this host's KVM allows at most {1}")]
    TooManyVcpus(usize, usize),
    /// KVM refused some of the boot MSRs.
    #[error("KVM set only {set} of {want} boot MSRs (refused MSR {first_refused:#x})")]
    Msrs {
        /// How many were set.
        set: usize,
        /// How many were asked for.
        want: usize,
        /// The first one refused.
        first_refused: u32,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { what, source }
}

/// Where KVM keeps the TSS it needs for real-mode emulation on Intel: three
/// pages just below the identity-map page, inside the MMIO hole (never RAM).
const TSS_ADDR: usize = 0xfffb_d000;
/// The EPT identity-map page (Intel), below the TSS pages' neighbourhood.
const IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// Opens /dev/kvm with errors a user can act on.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::NoKvm,
        libc::EACCES | libc::EPERM => KvmError::KvmPermission,
        _ => KvmError::Open(e),
    })
}

/// A VM with its memory.
pub struct Vm {
    /// The VM fd. Declared first: dropped before `mem`, so KVM never holds a
    /// slot over unmapped memory. Shared only with [`KvmHooks`], which
    /// keeps a clone of `mem` for the same reason.
    pub fd: Arc<VmFd>,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    kvm: Kvm,
    supported_cpuid: CpuId,
}

impl Vm {
    /// Creates a VM with `mem_bytes` of RAM, the in-kernel irqchip and PIT.
    pub fn new(mem_bytes: u64) -> Result<Vm, KvmError> {
        let kvm = open_kvm()?;
        for (cap, name) in [
            (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
            (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
            (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
            (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
            (Cap::MpState, "KVM_CAP_MP_STATE"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCap(name));
            }
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("reading the supported CPUID"))?;
        let mib = mem_bytes >> 20;
        let ranges: Vec<(GuestAddress, usize)> = boot::ram_regions(mem_bytes)
            .into_iter()
            .map(|(a, l)| (a, usize::try_from(l).unwrap_or(usize::MAX)))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges)
            .map_err(|source| KvmError::Memory { mib, source })?;
        // KVM_CREATE_VM may be interrupted by a signal (seen on nested
        // SVM under load: EINTR); it has no side effect then, so retry a
        // bounded number of times.
        let mut tries = 0;
        let fd = loop {
            match kvm.create_vm() {
                Err(e) if e.errno() == libc::EINTR && tries < 8 => tries += 1,
                r => break r.map_err(ioctl("creating the VM"))?,
            }
        };
        fd.set_identity_map_address(IDENTITY_MAP_ADDR)
            .map_err(ioctl("setting the identity map address"))?;
        fd.set_tss_address(TSS_ADDR)
            .map_err(ioctl("setting the TSS address"))?;
        fd.create_irq_chip()
            .map_err(ioctl("creating the in-kernel irqchip"))?;
        // The dummy speaker: port 0x61 is handled in the kernel too.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(ioctl("creating the PIT"))?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: u32::try_from(slot).unwrap_or(u32::MAX),
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY:
            // - `userspace_addr..+memory_size` is the live anonymous mapping
            //   of `region`, owned by `mem`, which this `Vm` owns;
            // - `fd` is declared before `mem` in `Vm`, so the VM (and its
            //   slots) is dropped before the mapping is unmapped;
            // - slots and guest ranges do not overlap (ram_regions yields
            //   disjoint regions, one slot each).
            unsafe { fd.set_user_memory_region(r) }.map_err(ioctl("registering guest memory"))?;
        }
        Ok(Vm {
            fd: Arc::new(fd),
            mem,
            kvm,
            supported_cpuid,
        })
    }

    /// Most vCPUs this host's KVM allows in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// Creates vCPU `id` of `count`. `boot` = how the boot vCPU enters the
    /// kernel; the others (`None`) wait for the guest's INIT/SIPI, whatever
    /// the entry: the kernel brings them up through its own real-mode
    /// trampoline.
    pub fn create_vcpu(
        &self,
        id: u8,
        count: usize,
        boot: Option<boot::Entry>,
    ) -> Result<VcpuFd, KvmError> {
        if count > self.max_vcpus().min(boot::MAX_VCPUS) {
            return Err(KvmError::TooManyVcpus(
                count,
                self.max_vcpus().min(boot::MAX_VCPUS),
            ));
        }
        let vcpu = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl("creating a vCPU"))?;
        let mut cpuid = self.supported_cpuid.clone();
        patch_cpuid(&mut cpuid, id);
        vcpu.set_cpuid2(&cpuid).map_err(ioctl("setting CPUID"))?;
        set_boot_msrs(&vcpu)?;
        set_lint(&vcpu)?;
        if let Some(entry) = boot {
            set_boot_state(&vcpu, entry)?;
        }
        Ok(vcpu)
    }
}

/// CPUID leaves that carry the APIC ID, per vCPU.
fn patch_cpuid(cpuid: &mut CpuId, id: u8) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            // EBX[31:24]: initial APIC ID. ECX bit 31: running on a hypervisor.
            1 => {
                e.ebx = (e.ebx & 0x00ff_ffff) | (u32::from(id) << 24);
                e.ecx |= 1 << 31;
            }
            // Extended topology: EDX = x2APIC ID.
            0xb | 0x1f => e.edx = u32::from(id),
            // AMD extended APIC ID.
            0x8000_001e => e.eax = u32::from(id),
            _ => {}
        }
    }
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// The MSRs at boot: syscall MSRs cleared, fast strings on, MTRRs enabled
/// with write-back as the default type (SDM vol. 3 §11.11.2.1).
fn set_boot_msrs(vcpu: &VcpuFd) -> Result<(), KvmError> {
    let list = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, 1),          // fast-string operations
        (MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs on, default WB
    ];
    let entries: Vec<kvm_msr_entry> = list
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| KvmError::Msrs {
        set: 0,
        want: list.len(),
        first_refused: list[0].0,
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(ioctl("setting MSRs"))?;
    if set != list.len() {
        return Err(KvmError::Msrs {
            set,
            want: list.len(),
            first_refused: list.get(set).map_or(0, |m| m.0),
        });
    }
    Ok(())
}

/// APIC register offsets of LVT LINT0 and LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
/// Delivery modes (bits 8..11 of an LVT entry).
const DM_EXTINT: u32 = 7;
const DM_NMI: u32 = 4;

fn lapic_reg(regs: &[std::os::raw::c_char], off: usize) -> u32 {
    let mut b = [0u8; 4];
    for (d, s) in b.iter_mut().zip(&regs[off..off + 4]) {
        *d = s.to_ne_bytes()[0];
    }
    u32::from_le_bytes(b)
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char], off: usize, v: u32) {
    for (d, s) in regs[off..off + 4].iter_mut().zip(v.to_le_bytes()) {
        *d = std::os::raw::c_char::from_ne_bytes([s]);
    }
}

/// LINT0 = ExtINT (the PIC's output), LINT1 = NMI, as firmware leaves them.
fn set_lint(vcpu: &VcpuFd) -> Result<(), KvmError> {
    let mut lapic = vcpu.get_lapic().map_err(ioctl("reading the local APIC"))?;
    for (off, mode) in [(APIC_LVT0, DM_EXTINT), (APIC_LVT1, DM_NMI)] {
        let v = lapic_reg(&lapic.regs, off);
        set_lapic_reg(&mut lapic.regs, off, (v & !0x700) | (mode << 8));
    }
    vcpu.set_lapic(&lapic)
        .map_err(ioctl("writing the local APIC"))
}

fn kvm_seg(s: Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present,
        dpl: s.dpl,
        db: s.db,
        s: s.s,
        l: s.l,
        g: s.g,
        avl: s.avl,
        unusable: u8::from(s.present == 0),
        padding: 0,
    }
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// The boot vCPU's registers for `entry`, on top of `base` (KVM's reset
/// state: the APIC base, the LDT and the rest stay as they are). Pure, so
/// that both entries' states are unit-tested. The caller has written the
/// tables ([`boot::write_cpu_tables`]).
///
/// - [`boot::Entry::Linux64`], the boot protocol's 64-bit entry state:
///   long mode with paging on the identity map, flat
///   `__BOOT_CS`/`__BOOT_DS`, `%rsi` = the zero page.
/// - [`boot::Entry::Pvh`], the PVH ABI's (Xen docs/misc/pvh.pandoc):
///   protected mode (CR0.PE; ET reads as 1 on every CPU KVM runs on),
///   paging, PAE and long mode off, CR4 0, a flat 32-bit execute/read
///   CS, flat read/write DS/ES/SS, a 32-bit TSS of base 0 and limit
///   0x67, `%ebx` = `hvm_start_info`.
///
/// Both: interrupts off (RFLAGS = only the reserved bit 1), a stack below
/// the zero page (PVH leaves `%esp` unspecified; the kernel sets its own).
pub fn boot_state(entry: boot::Entry, base: &kvm_sregs) -> (kvm_regs, kvm_sregs) {
    let seg = |selector: u16| kvm_seg(Segment::from_gdt(selector / 8));
    let mut sregs = *base;
    let data = seg(boot::BOOT_DS);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = boot::GDT_ADDR;
    sregs.gdt.limit = u16::try_from(8 * boot::GDT.len() - 1).unwrap_or(u16::MAX);
    sregs.idt.base = boot::IDT_ADDR;
    sregs.idt.limit = 7;
    let mut regs = kvm_regs {
        rflags: 0x2, // reserved bit 1; IF clear
        rsp: boot::BOOT_STACK,
        rbp: boot::BOOT_STACK,
        ..Default::default()
    };
    match entry {
        boot::Entry::Linux64(rip) => {
            sregs.cs = seg(boot::BOOT_CS);
            sregs.tr = seg(boot::BOOT_TSS);
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = boot::PML4_ADDR;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsi = boot::ZERO_PAGE;
        }
        boot::Entry::Pvh(eip) => {
            sregs.cs = seg(boot::PVH_CS);
            sregs.tr = seg(boot::PVH_TSS);
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = u64::from(eip);
            regs.rbx = boot::PVH_START_INFO;
        }
    }
    (regs, sregs)
}

/// Puts the boot vCPU in [`boot_state`] for `entry`, with a reset FPU.
fn set_boot_state(vcpu: &VcpuFd, entry: boot::Entry) -> Result<(), KvmError> {
    let base = vcpu.get_sregs().map_err(ioctl("reading sregs"))?;
    let (regs, sregs) = boot_state(entry, &base);
    vcpu.set_sregs(&sregs).map_err(ioctl("writing sregs"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(ioctl("writing the FPU state"))?;
    vcpu.set_regs(&regs).map_err(ioctl("writing registers"))
}

/// The device-facing KVM calls ([`super::pci::Hypervisor`]): GSI routes
/// (the in-kernel irqchip's defaults plus one MSI route per vector),
/// ioeventfds and irqfds.
pub struct KvmHooks {
    /// Declared before `_mem`: the VM fd goes first (see [`Vm::fd`]).
    fd: Arc<VmFd>,
    _mem: GuestMemoryMmap,
    msi: Mutex<BTreeMap<u32, (u64, u32)>>,
}

/// KVM's routing chip numbers (KVM_IRQCHIP_PIC_MASTER/SLAVE, IOAPIC).
const CHIP_PIC_MASTER: u32 = 0;
const CHIP_PIC_SLAVE: u32 = 1;
const CHIP_IOAPIC: u32 = 2;

impl KvmHooks {
    /// Hooks for `vm`.
    pub fn new(vm: &Vm) -> KvmHooks {
        KvmHooks {
            fd: vm.fd.clone(),
            _mem: vm.mem.clone(),
            msi: Mutex::new(BTreeMap::new()),
        }
    }

    /// The whole routing table: `KVM_SET_GSI_ROUTING` replaces the one
    /// `KVM_CREATE_IRQCHIP` installed, so its entries (GSI 0-15 on the PICs
    /// and the I/O APIC, 16-23 on the I/O APIC) come first, as KVM's own
    /// `kvm_setup_default_irq_routing` makes them.
    fn table(msi: &BTreeMap<u32, (u64, u32)>) -> Vec<kvm_irq_routing_entry> {
        let mut v = Vec::new();
        let chip = |gsi: u32, irqchip: u32, pin: u32| {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip.irqchip = irqchip;
            e.u.irqchip.pin = pin;
            e
        };
        for gsi in 0..24u32 {
            if gsi < 16 {
                let pic = if gsi < 8 {
                    CHIP_PIC_MASTER
                } else {
                    CHIP_PIC_SLAVE
                };
                v.push(chip(gsi, pic, gsi % 8));
            }
            v.push(chip(gsi, CHIP_IOAPIC, gsi));
        }
        for (&gsi, &(addr, data)) in msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            // Cannot truncate: the low and high halves of a u64.
            e.u.msi.address_lo = (addr & 0xffff_ffff) as u32;
            e.u.msi.address_hi = (addr >> 32) as u32;
            e.u.msi.data = data;
            v.push(e);
        }
        v
    }
}

impl super::pci::Hypervisor for KvmHooks {
    fn set_msi_route(&self, gsi: u32, msg: Option<(u64, u32)>) -> std::io::Result<()> {
        let mut msi = self.msi.lock().unwrap_or_else(|e| e.into_inner());
        match msg {
            Some(m) => msi.insert(gsi, m),
            None => msi.remove(&gsi),
        };
        let entries = Self::table(&msi);
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| std::io::Error::other(format!("routing table: {e:?}")))?;
        self.fd
            .set_gsi_routing(&routing)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn ioevent(&self, fd: &EventFd, addr: u64, register: bool) -> std::io::Result<()> {
        let a = IoEventAddress::Mmio(addr);
        let r = if register {
            self.fd.register_ioevent(fd, &a, NoDatamatch)
        } else {
            self.fd.unregister_ioevent(fd, &a, NoDatamatch)
        };
        r.map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()> {
        self.fd
            .register_irqfd(fd, gsi)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What KVM's reset state leaves that the entry must keep.
    fn base() -> kvm_sregs {
        kvm_sregs {
            apic_base: 0xfee0_0900,
            cr8: 0,
            ..Default::default()
        }
    }

    fn flat(s: &kvm_segment) -> (u64, u32, u8, u8) {
        (s.base, s.limit, s.present, s.g)
    }

    #[test]
    fn pvh_entry_is_flat_32_bit_protected_mode_with_ebx_at_start_info() {
        let (regs, sregs) = boot_state(boot::Entry::Pvh(0x100_0850), &base());
        assert_eq!(regs.rip, 0x100_0850);
        assert_eq!(regs.rbx, boot::PVH_START_INFO);
        assert_eq!(regs.rflags, 0x2, "only the reserved bit: IF, TF, VM clear");
        // CR0: PE (and the fixed ET); no paging, no PAE, no long mode.
        assert_eq!(sregs.cr0 & CR0_PE, CR0_PE);
        assert_eq!(
            sregs.cr0 & !CR0_ET,
            CR0_PE,
            "every other writable bit clear"
        );
        assert_eq!((sregs.cr3, sregs.cr4, sregs.efer), (0, 0, 0));
        // CS: 32-bit execute/read, base 0, limit 4 GiB.
        let cs = sregs.cs;
        assert_eq!(flat(&cs), (0, 0xffff_ffff, 1, 1));
        assert_eq!(
            (cs.selector, cs.type_, cs.s, cs.db, cs.l),
            (boot::PVH_CS, 0xb, 1, 1, 0)
        );
        assert_eq!(cs.type_ & 0xa, 0xa, "code, readable");
        // DS, ES, SS: 32-bit read/write, base 0, limit 4 GiB.
        for d in [sregs.ds, sregs.es, sregs.ss] {
            assert_eq!(flat(&d), (0, 0xffff_ffff, 1, 1));
            assert_eq!((d.selector, d.s, d.db, d.l), (boot::BOOT_DS, 1, 1, 0));
            assert_eq!(d.type_ & 0xa, 0x2, "data, writable");
        }
        // TR: an active (busy) 32-bit TSS, base 0, limit 0x67.
        let tr = sregs.tr;
        assert_eq!(
            (
                tr.selector,
                tr.base,
                tr.limit,
                tr.type_,
                tr.s,
                tr.present,
                tr.g
            ),
            (boot::PVH_TSS, 0, 0x67, 0xb, 0, 1, 0)
        );
        // The GDT holds the descriptors the selectors name.
        assert_eq!(sregs.gdt.base, boot::GDT_ADDR);
        assert!(usize::from(sregs.gdt.limit) >= usize::from(boot::PVH_TSS) + 7);
        assert_eq!(sregs.apic_base, 0xfee0_0900, "the reset state is kept");
    }

    #[test]
    fn linux64_entry_is_long_mode_with_rsi_at_the_zero_page() {
        let (regs, sregs) = boot_state(boot::Entry::Linux64(0x100_0200), &base());
        assert_eq!(
            (regs.rip, regs.rsi, regs.rbx),
            (0x100_0200, boot::ZERO_PAGE, 0)
        );
        assert_eq!(regs.rflags, 0x2);
        assert_eq!(sregs.cr0, CR0_PE | CR0_ET | CR0_PG);
        assert_eq!((sregs.cr3, sregs.cr4), (boot::PML4_ADDR, CR4_PAE));
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!(
            (sregs.cs.selector, sregs.cs.l, sregs.cs.db),
            (boot::BOOT_CS, 1, 0)
        );
        assert_eq!(sregs.ds.selector, boot::BOOT_DS);
        assert_eq!(sregs.tr.selector, boot::BOOT_TSS);
        assert_eq!(sregs.gdt.limit, 8 * 7 - 1);
    }
}
