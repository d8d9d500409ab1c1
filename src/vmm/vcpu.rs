//! vCPU threads, exit dispatch and the end of the VM.
//!
//! # Theory of operation
//!
//! One thread per vCPU (`uipd-vcpu{n}`, optionally pinned) loops on
//! `KVM_RUN` and hands port-I/O and MMIO exits to the [`Bus`]es. The main
//! thread waits on the *exit event* and decides when the VM is over:
//!
//! ```text
//!  uipd-vcpu0 ─ KVM_RUN ─► IoIn/IoOut ─► pio Bus ─► serial, i8042 (reset ─┐)
//!  uipd-vcpu1 ─ KVM_RUN ─► Mmio ─► mmio Bus (PCI: ECAM, BARs)             │
//!       │ Shutdown (triple fault), SystemEvent, errors ─► reason ─────────┤
//!       │                                                                 ▼
//!  main: poll(exit event, 100 ms) ─ SIGINT/SIGTERM? ─ all vCPUs parked? ─ kick every vCPU
//! ```
//!
//! How a guest ends: with ACPI, `poweroff` writes `SLP_EN` with the `\_S5`
//! sleep type to PM1 control ([`super::devices::AcpiPm`]) → the power-off
//! event. Without ACPI power-off (a kernel without ACPI, or `acpi=off`):
//! `reboot` (with `reboot=k`, or by the
//! kernel's fallback order) writes 0xfe to the i8042 → the exit event; a
//! triple fault → `KVM_EXIT_SHUTDOWN`. `poweroff` and `halt` have no
//! device to talk to, so Linux halts every CPU with interrupts disabled
//! (`machine_halt` → `stop_this_cpu`: `cli; hlt` forever), which the
//! in-kernel local APIC keeps inside KVM: no exit reaches uipd. So the main
//! thread *kicks* every vCPU thread with a signal (`SIGRTMIN`) every 100 ms:
//! `KVM_RUN` returns `EINTR`, and the vCPU thread records whether its vCPU
//! is halted (`KVM_MP_STATE_HALTED`) with `RFLAGS.IF` clear, or still waits
//! for its start-up IPI. When every vCPU is parked so, with at least one
//! halted, on two rounds in a row, nothing but an NMI or INIT could wake
//! the guest again (no device of uipd sends either): the guest powered off.
//! The same kicks, with the stop flag set, end the threads on any exit.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use super::devices::Bus;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The guest powered off: how uipd saw it ("ACPI S5" when it wrote
    /// `SLP_EN` with the `\_S5` sleep type, "all vCPUs halted" for a
    /// kernel without ACPI power-off, "shutdown event" from KVM).
    PowerOff(&'static str),
    /// The guest reset the machine (i8042 reset, triple fault, reset event).
    Reset(&'static str),
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// The owner of the VM asked it to stop (its exit event, no reason).
    Stopped,
}

/// Errors that end a VM.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A vCPU failed or exited in a way uipd cannot continue from.
    #[error("vCPU {vcpu}: {what}")]
    Vcpu {
        /// Which vCPU.
        vcpu: usize,
        /// What happened.
        what: String,
    },
    /// Starting a thread or installing a signal handler failed.
    #[error("{what}")]
    Setup {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// vCPU thread states, as last seen by the vCPU thread itself.
const RUNNING: u8 = 0;
const HALTED_NOIRQ: u8 = 1;
const WAIT_SIPI: u8 = 2;

/// State shared by the vCPU threads and the main thread.
pub struct Shared {
    /// Set when the VM is ending: vCPU threads leave their loop.
    stop: AtomicBool,
    /// Signalled by whoever ends the VM: vCPU threads (with a reason), or
    /// the VM's owner (without: [`Exit::Stopped`]).
    exit_evt: EventFd,
    /// The i8042's reset line.
    reset_evt: EventFd,
    /// The ACPI PM1 control block's power-off (`SLP_EN` in S5).
    poweroff_evt: EventFd,
    /// The reason, when a vCPU thread ended the VM.
    reason: Mutex<Option<Result<Exit, RunError>>>,
    state: Vec<AtomicU8>,
    /// Port-I/O devices.
    pub pio: Bus,
    /// MMIO devices.
    pub mmio: Bus,
}

impl Shared {
    /// Shared state for `vcpus` vCPUs with these buses, ending on
    /// `exit_evt`, `reset_evt` or `poweroff_evt`.
    pub fn new(
        vcpus: usize,
        pio: Bus,
        mmio: Bus,
        exit_evt: EventFd,
        reset_evt: EventFd,
        poweroff_evt: EventFd,
    ) -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            exit_evt,
            reset_evt,
            poweroff_evt,
            reason: Mutex::new(None),
            state: (0..vcpus).map(|_| AtomicU8::new(RUNNING)).collect(),
            pio,
            mmio,
        }
    }

    fn end(&self, r: Result<Exit, RunError>) {
        let mut g = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        // The first reason wins.
        if g.is_none() {
            *g = Some(r);
        }
        drop(g);
        // An eventfd write fails only when the counter would overflow,
        // which means it is already signalled.
        let _ = self.exit_evt.write(1);
    }

    /// Every vCPU halted with interrupts off or never started, one halted.
    fn all_parked(&self) -> bool {
        let s: Vec<u8> = self
            .state
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .collect();
        s.iter().all(|&x| x == HALTED_NOIRQ || x == WAIT_SIPI) && s.contains(&HALTED_NOIRQ)
    }
}

/// SIGINT/SIGTERM seen (the signal number), 0 if none.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop(sig: libc::c_int) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

extern "C" fn on_kick(_: libc::c_int) {}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

fn install(sig: libc::c_int, h: extern "C" fn(libc::c_int)) -> std::io::Result<()> {
    // SAFETY:
    // - the handlers only store to an atomic or do nothing (async-signal-safe);
    // - `sa` is fully initialised (zeroed, then handler, flags and an empty mask);
    // - the pointers passed are to live locals.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = h as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&raw mut sa.sa_mask);
        libc::sigaction(sig, &raw const sa, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs the VM: one thread per vCPU (vCPU `i` pinned to
/// `pin[i % pin.len()]` when `pin` is not empty) until it ends.
pub fn run(vcpus: Vec<VcpuFd>, shared: Arc<Shared>, pin: &[usize]) -> Result<Exit, RunError> {
    let setup = |what| move |source| RunError::Setup { what, source };
    install(kick_signal(), on_kick).map_err(setup("installing the vCPU kick handler"))?;
    install(libc::SIGINT, on_stop).map_err(setup("installing the SIGINT handler"))?;
    install(libc::SIGTERM, on_stop).map_err(setup("installing the SIGTERM handler"))?;
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for (i, vcpu) in vcpus.into_iter().enumerate() {
        let sh = shared.clone();
        let cpu = (!pin.is_empty()).then(|| pin[i % pin.len()]);
        let t = std::thread::Builder::new()
            .name(format!("uipd-vcpu{i}"))
            .spawn(move || vcpu_loop(i, vcpu, &sh, cpu));
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                shared.stop.store(true, Ordering::SeqCst);
                stop_threads(threads, &shared);
                return Err(RunError::Setup {
                    what: "starting a vCPU thread",
                    source: e,
                });
            }
        }
    }
    let result = wait(&threads, &shared);
    shared.stop.store(true, Ordering::SeqCst);
    stop_threads(threads, &shared);
    result
}

/// The main thread's wait: the exit event, a signal, or all vCPUs parked.
fn wait(threads: &[JoinHandle<()>], shared: &Shared) -> Result<Exit, RunError> {
    let mut parked_rounds = 0;
    loop {
        let mut pfd = [
            shared.exit_evt.as_raw_fd(),
            shared.reset_evt.as_raw_fd(),
            shared.poweroff_evt.as_raw_fd(),
        ]
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `pfd` is an array of three valid pollfds on the stack;
        // nfds = 3 is its length.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), 3, 100) };
        if n > 0 && pfd[0].revents != 0 {
            let r = shared
                .reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            return r.unwrap_or(Ok(Exit::Stopped));
        }
        if n > 0 && pfd[1].revents != 0 {
            return Ok(Exit::Reset("i8042 reset"));
        }
        if n > 0 && pfd[2].revents != 0 {
            return Ok(Exit::PowerOff("ACPI S5"));
        }
        let sig = STOP_SIGNAL.load(Ordering::SeqCst);
        if sig != 0 {
            return Ok(Exit::Signal(sig));
        }
        if shared.all_parked() {
            parked_rounds += 1;
            if parked_rounds >= 2 {
                return Ok(Exit::PowerOff("all vCPUs halted"));
            }
        } else {
            parked_rounds = 0;
        }
        kick(threads);
    }
}

fn kick(threads: &[JoinHandle<()>]) {
    use std::os::unix::thread::JoinHandleExt;
    for t in threads.iter().filter(|t| !t.is_finished()) {
        // SAFETY: the pthread_t is that of a thread not yet joined (its
        // JoinHandle is alive), so it is a valid target; the kick signal has
        // a handler installed, so delivery only interrupts KVM_RUN.
        unsafe {
            libc::pthread_kill(t.as_pthread_t(), kick_signal());
        }
    }
}

/// Kicks until every vCPU thread has seen the stop flag (bounded: 5 s; a
/// thread still stuck then is left to the process exit).
fn stop_threads(threads: Vec<JoinHandle<()>>, shared: &Shared) {
    shared.stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        kick(&threads);
        std::thread::sleep(Duration::from_millis(10));
    }
    for t in threads {
        if t.is_finished() {
            let _ = t.join();
        } else {
            log::warn!("a vCPU thread did not stop within 5 s");
        }
    }
}

fn vcpu_loop(i: usize, mut vcpu: VcpuFd, sh: &Shared, cpu: Option<usize>) {
    if let Some(id) = cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            log::warn!("vCPU {i}: cannot pin to CPU {id}");
        }
    }
    let fail = |what: String| sh.end(Err(RunError::Vcpu { vcpu: i, what }));
    while !sh.stop.load(Ordering::SeqCst) {
        let exit = vcpu.run();
        let state = &sh.state[i];
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                state.store(RUNNING, Ordering::Release);
                sh.pio.read(u64::from(port), data);
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                state.store(RUNNING, Ordering::Release);
                sh.pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                state.store(RUNNING, Ordering::Release);
                sh.mmio.read(addr, data);
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                state.store(RUNNING, Ordering::Release);
                sh.mmio.write(addr, data);
            }
            Ok(VcpuExit::Shutdown) => {
                log_fault_state(i, &vcpu);
                sh.end(Ok(Exit::Reset("triple fault")));
                return;
            }
            Ok(VcpuExit::SystemEvent(t, _)) => {
                match t {
                    KVM_SYSTEM_EVENT_SHUTDOWN => sh.end(Ok(Exit::PowerOff("shutdown event"))),
                    KVM_SYSTEM_EVENT_RESET => sh.end(Ok(Exit::Reset("reset event"))),
                    KVM_SYSTEM_EVENT_CRASH => fail("the guest crashed".into()),
                    other => fail(format!("unexpected system event {other}")),
                }
                return;
            }
            // Only without an in-kernel local APIC; handled like a kick.
            Ok(VcpuExit::Hlt | VcpuExit::Intr) => record_parked(&vcpu, state),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                fail(format!(
                    "KVM could not enter the guest (hardware entry failure {reason:#x} on host CPU {cpu})"
                ));
                return;
            }
            Ok(VcpuExit::InternalError) => {
                fail("KVM internal error (an instruction it cannot emulate?)".into());
                return;
            }
            Ok(other) => {
                fail(format!("unexpected exit {other:?}"));
                return;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                record_parked(&vcpu, state);
            }
            Err(e) => {
                fail(format!("KVM_RUN failed: {e}"));
                return;
            }
        }
    }
}

/// A triple fault ends the VM with no word from the guest: leave the
/// state the CPU faulted in (instruction, fault address, page tables,
/// descriptor tables, pending event) in the log, so the cause can be found.
/// KVM on AMD resets the vCPU before it reports the shutdown: then the
/// registers are the reset state and only the last event (for example a
/// page fault on an instruction fetch) tells something.
fn log_fault_state(i: usize, vcpu: &VcpuFd) {
    if let (Ok(r), Ok(s)) = (vcpu.get_regs(), vcpu.get_sregs()) {
        if r.rip == 0xfff0 && s.cs.selector == 0xf000 {
            log::warn!("vCPU {i} triple fault: KVM has already reset the vCPU's registers");
        } else {
            log::warn!(
                "vCPU {i} triple fault: rip {:#x} rsp {:#x} rflags {:#x} cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} idt {:#x}+{:#x} gdt {:#x}+{:#x} tr {:#x}@{:#x}",
                r.rip,
                r.rsp,
                r.rflags,
                s.cs.selector,
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.efer,
                s.idt.base,
                s.idt.limit,
                s.gdt.base,
                s.gdt.limit,
                s.tr.selector,
                s.tr.base
            );
        }
    }
    if let Ok(e) = vcpu.get_vcpu_events() {
        log::warn!(
            "vCPU {i} events: exception injected {} nr {} has_error {} error {:#x}; interrupt injected {} nr {}; nmi injected {}",
            e.exception.injected,
            e.exception.nr,
            e.exception.has_error_code,
            e.exception.error_code,
            e.interrupt.injected,
            e.interrupt.nr,
            e.nmi.injected
        );
    }
}

/// After a kick: is this vCPU halted with interrupts off, or not started?
fn record_parked(vcpu: &VcpuFd, state: &AtomicU8) {
    if log::log_enabled!(log::Level::Trace) {
        if let (Ok(r), Ok(m)) = (vcpu.get_regs(), vcpu.get_mp_state()) {
            log::trace!(
                "vCPU kicked: rip {:#x} rflags {:#x} mp_state {}",
                r.rip,
                r.rflags,
                m.mp_state
            );
        }
    }
    let s = match vcpu.get_mp_state().map(|m| m.mp_state) {
        Ok(KVM_MP_STATE_HALTED) => match vcpu.get_regs() {
            Ok(r) if r.rflags & (1 << 9) == 0 => HALTED_NOIRQ,
            _ => RUNNING,
        },
        Ok(KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED) => WAIT_SIPI,
        _ => RUNNING,
    };
    state.store(s, Ordering::Release);
}
