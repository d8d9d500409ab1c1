//! The embedded VMM (`uipd --kernel FILE`), by what is behind its NIC:
//! - `-net user` (the default): a virtio-pci NIC whose queue pairs feed the
//!   stack workers, hash-steered as for vhost-user ([`run_vm`], through the
//!   daemon's skeleton); the VM runs on thread `uipd-vmm`;
//! - `-net tap --tap NAME`: the NIC on a host TAP, one TAP queue per queue
//!   pair, no stack and no workers ([`run_vm_tap`]: its own small loop);
//! - `-net none`: no NIC ([`run_vm_no_net`]): the VM runs on the calling
//!   thread, with no sandbox, as it always has.
//!
//! In every case uipd ends when the guest does: "the VM ended" and exit
//! status 0 for a clean end (power-off, reset, SIGINT/SIGTERM), else the
//! error and 1.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::forwards::Publish;
use super::workers::{Workers, start_virtio_workers};
use super::{Config, DUMP, Error, STOP, Serving, inboxes, install_signals, io_err, serve};
use crate::rings::FrameRing;
use crate::stack;
use crate::vmm::virtio_net::OfferedOffloads;
use crate::vmm::virtio_pci::{MAX_PAIRS, NetCore};
use crate::vmm::{Exit, Machine, VmConfig};

/// How the VM thread ended: `None` if it panicked.
type VmResult = Option<Result<Exit, crate::vmm::Error>>;

/// Inbox buffers: up to a TSO super-frame with its virtio-net header.
const INBOX_BUF: usize = stack::wire::vnet_hdr::HEADER_LEN + 14 + 65535;

/// VMM mode: boot the guest with a virtio-net NIC of `queues` pairs whose
/// frames go to the workers (hash-steered, as for vhost-user); the daemon
/// ends when the guest does. See [`crate::vmm::virtio_pci`].
pub(super) fn run_vm(
    cfg: &Config,
    vm: &VmConfig,
    queues: usize,
    publish: Publish,
) -> Result<i32, Error> {
    let mut machine = crate::vmm::prepare(vm)?;
    install_signals(true);
    let n = cfg.workers.max(1);
    let inboxes = inboxes(n, INBOX_BUF)?;
    let offloads = if cfg.stack.offload.vnet_hdr {
        OfferedOffloads::Stack
    } else {
        OfferedOffloads::None
    };
    let core = add_nic(&mut machine, cfg, queues.max(1), &inboxes, offloads)?;
    let workers = start_virtio_workers(cfg, inboxes, |i| Box::new(core.sink(i)))?;
    core.set_workers(workers.shared.clone());
    let guest = Guest {
        stopper: machine.stopper()?,
        machine: Some(machine),
        core,
        thread: None,
        result: None,
    };
    serve(cfg, publish, workers, guest)
}

/// The guest while the stack serves it.
struct Guest {
    /// The VM, until [`Serving::start`] hands it to its thread.
    machine: Option<Machine>,
    /// Ends the VM.
    stopper: EventFd,
    core: Arc<NetCore>,
    thread: Option<JoinHandle<Result<Exit, crate::vmm::Error>>>,
    /// How the VM ended, kept until the workers are gone.
    result: VmResult,
}

impl Serving for Guest {
    fn start(&mut self, _: &Config, _: &Workers) -> Result<(), Error> {
        if let Some(machine) = self.machine.take() {
            self.thread = Some(spawn_vm(machine).map_err(io_err("starting the VMM"))?);
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Option<i32>, Error> {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            let r = self.thread.take().map(|t| t.join()).and_then(Result::ok);
            let code = vm_exit_code(&r);
            self.result = r;
            return Ok(Some(code));
        }
        Ok(None)
    }

    fn finish(self) {
        if let Some(t) = self.thread {
            // The control loop ended first (a worker failed, a signal): stop the VM.
            let _ = self.stopper.write(1);
            let _ = t.join();
        }
        drop(self.result);
        log::info!("virtio-net: {}", self.core.counters().summary());
    }
}

/// A virtio-net NIC of `pairs` queue pairs on `machine`, whose guest →
/// host frames go to `inboxes`, offering `offloads`.
fn add_nic(
    machine: &mut Machine,
    cfg: &Config,
    pairs: usize,
    inboxes: &[Arc<FrameRing>],
    offloads: OfferedOffloads,
) -> Result<Arc<NetCore>, Error> {
    let core = NetCore::new(machine.mem().clone(), pairs, inboxes.to_vec(), offloads)
        .map_err(io_err("creating the virtio-net device"))?;
    machine.add_net(core.clone(), cfg.stack.mtu)?;
    Ok(core)
}

/// Runs the VM on thread `uipd-vmm`, confined to the VMM's system calls.
fn spawn_vm(machine: Machine) -> std::io::Result<JoinHandle<Result<Exit, crate::vmm::Error>>> {
    std::thread::Builder::new()
        .name("uipd-vmm".into())
        .spawn(move || {
            crate::sandbox::confine(crate::sandbox::Role::Vmm)
                .map_err(|e| crate::vmm::Error::Sandbox(e.to_string()))?;
            machine.run()
        })
}

/// The exit status for how the VM thread ended, said on stderr.
fn vm_exit_code(r: &VmResult) -> i32 {
    match r {
        Some(Ok(exit)) => {
            eprintln!("uipd: the VM ended: {exit:?}");
            0
        }
        Some(Err(e)) => {
            eprintln!("uipd: {e}");
            1
        }
        None => 1,
    }
}

/// VMM mode with `-net none`: the guest alone, on this thread, with no
/// sandbox (nothing of the network is set up). An error comes back whole,
/// for the caller to say with its sources.
pub(super) fn run_vm_no_net(vm: &VmConfig) -> Result<i32, Error> {
    let exit = crate::vmm::run(vm)?;
    eprintln!("uipd: the VM ended: {exit:?}");
    Ok(0)
}

/// VMM mode with `-net tap`: the guest's NIC on a host TAP, one TAP queue
/// per queue pair, no stack ([`crate::vmm::tap_net`]); the daemon ends when
/// the guest does, or on SIGINT/SIGTERM.
pub(super) fn run_vm_tap(
    cfg: &Config,
    vm: &VmConfig,
    tap: &str,
    queues: usize,
) -> Result<i32, Error> {
    use crate::vmm::tap_net::{self, TapNet};
    let queues = queues.clamp(1, MAX_PAIRS);
    // The TAP first: a missing privilege is said before KVM is touched.
    let taps = tap_net::open(tap, queues)?;
    let mut machine = crate::vmm::prepare(vm)?;
    install_signals(true);
    // Guest frames wait here for their TAP queue's thread.
    let inboxes = inboxes(queues, INBOX_BUF)?;
    let offloads = if cfg.stack.offload.vnet_hdr {
        OfferedOffloads::Tap
    } else {
        OfferedOffloads::None
    };
    let core = add_nic(&mut machine, cfg, queues, &inboxes, offloads)?;
    let stopper = machine.stopper()?;
    // Set-up is done: the queue threads and the VMM start in the sandbox.
    crate::sandbox::enter(cfg.sandbox)?;
    let net = TapNet::start(core.clone(), taps, &inboxes)?;
    let vm_thread = match spawn_vm(machine) {
        Ok(t) => t,
        Err(e) => {
            net.stop();
            return Err(io_err("starting the VMM")(e));
        }
    };
    if let Err(e) = crate::sandbox::confine(crate::sandbox::Role::Control) {
        let _ = stopper.write(1);
        net.stop();
        return Err(e.into());
    }
    // Bounded by the guest: it ends, or a signal ends it.
    let mut stopping = false;
    while !vm_thread.is_finished() {
        if !stopping && STOP.load(Ordering::SeqCst) {
            let _ = stopper.write(1);
            stopping = true;
        }
        if DUMP.swap(false, Ordering::SeqCst) {
            eprintln!("uipd: -net tap counters so far: {}", net.counters.summary());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = vm_exit_code(&vm_thread.join().ok());
    let counters = net.counters.clone();
    net.stop();
    log::info!("virtio-net: {}", core.counters().summary());
    log::info!("-net tap: {}", counters.summary());
    if cfg.stats {
        eprintln!("uipd: virtio-net: {}", core.counters().summary());
        eprintln!("uipd: -net tap: {}", counters.summary());
    }
    Ok(code)
}
