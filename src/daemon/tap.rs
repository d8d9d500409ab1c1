//! Namespace mode (`uipd -- COMMAND`, `--netns PATH|PID`, pasta,
//! slirp4netns): a multiqueue TAP in a new or an existing network
//! namespace, one worker per TAP queue, each reading and writing its own
//! queue (the kernel steers flows); pasta's `auto` ports and -T/-U
//! forwards, which need the namespace, are set up here too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::forwards::Publish;
use super::workers::{Port, Workers};
use super::{Config, Error, Frontend, STOP, Serving, inboxes, install_signals, io_err, serve};
use crate::dataplane::netns::{self, NetConfig};
use crate::dataplane::offload;
use crate::dataplane::tap::Tap;
use crate::dataplane::worker::PortOut;
use crate::stack;

/// pasta's `auto`: open the namespace's socket tables now, before the
/// sandbox (through `/proc/PID/net` of the spawned command or of the PID
/// given, else from inside the namespace file), to be scanned at run time.
fn auto_ports(
    cfg: &Config,
    spawned: Option<i32>,
) -> Result<Option<crate::autoports::AutoPorts>, Error> {
    use crate::autoports::AutoPorts;
    if cfg.publish_auto.is_empty() {
        return Ok(None);
    }
    let Some(procnet) = ns_procnet(cfg, spawned, "'auto'")? else {
        return Ok(None);
    };
    let own = cfg
        .ns_forwards
        .iter()
        .map(|f| (f.proto, f.listen.port()))
        .collect();
    Ok(Some(AutoPorts::new(cfg.publish_auto.clone(), procnet, own)))
}

/// The namespace's socket tables, opened now (before the sandbox) for
/// `what`: through `/proc/PID/net` of the spawned command or of the PID
/// given, else from inside the namespace file.
fn ns_procnet(
    cfg: &Config,
    spawned: Option<i32>,
    what: &str,
) -> Result<Option<crate::autoports::ProcNet>, Error> {
    use crate::autoports::ProcNet;
    let pid = match (&cfg.frontend, spawned) {
        (_, Some(pid)) => Some(pid.to_string()),
        (Frontend::Attach(t), None) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
            Some(t.clone())
        }
        _ => None,
    };
    let what = format!("opening the namespace's /proc/net/{{tcp,udp}}{{,6}} for {what}");
    let procnet = match (&cfg.frontend, pid) {
        (_, Some(pid)) => ProcNet::open(std::path::Path::new(&format!("/proc/{pid}/net")))
            .map_err(io_err(&what))?,
        (Frontend::Attach(t), None) => netns::in_netns(t, || {
            ProcNet::open(std::path::Path::new("/proc/thread-self/net"))
        })?
        .map_err(io_err(&what))?,
        _ => return Ok(None),
    };
    Ok(Some(procnet))
}

/// Namespace mode: one worker per TAP queue; the kernel steers flows.
pub(super) fn run_tap(cfg: &Config, mut publish: Publish) -> Result<i32, Error> {
    let net = NetConfig {
        ifname: cfg.ifname.clone(),
        mtu: cfg.stack.mtu,
        configure: cfg.config_net,
        guest_ip: cfg.stack.guest_ip,
        prefix_len: cfg.stack.prefix_len,
        gateway: cfg.stack.gateway,
        dns: cfg.stack.dns.unwrap_or(cfg.stack.gateway),
        guest_mac: cfg.guest_mac,
        queues: cfg.workers.max(1),
        vnet_hdr: cfg.stack.offload.vnet_hdr,
        loopback: cfg.loopback_up,
    };
    let (taps, child) = match &cfg.frontend {
        Frontend::Spawn(argv) => {
            let s = netns::spawn(&net, argv)?;
            let taps = s
                .taps
                .iter()
                .map(Tap::try_clone)
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(io_err("duplicating the TAP fds"))?;
            (taps, Some(s))
        }
        Frontend::Attach(target) => (netns::attach_queues(target, &net)?, None),
        Frontend::Stream(_)
        | Frontend::StreamFd(_)
        | Frontend::VhostUser(_)
        | Frontend::Vm(..)
        | Frontend::VmNoNet(_)
        | Frontend::VmTap { .. } => {
            unreachable!("run() sends the VMM frontends elsewhere")
        }
    };
    install_signals(child.is_none());
    publish.auto = auto_ports(cfg, child.as_ref().map(|c| c.pid))?;
    // pasta's -T/-U: listeners made in the namespace now, served by a
    // relay thread once the sandbox is up.
    let relay = if cfg.ns_forwards.is_empty() && cfg.ns_auto.is_empty() {
        None
    } else {
        let target = match (&cfg.frontend, child.as_ref()) {
            (_, Some(c)) => c.pid.to_string(),
            (Frontend::Attach(t), None) => t.clone(),
            _ => unreachable!("run_tap serves namespaces only"),
        };
        let listeners = crate::nsfwd::bind_in(&target, &cfg.ns_forwards).map_err(Error::Publish)?;
        let mut relay = crate::nsfwd::Relay::new(listeners).map_err(io_err("-T/-U listeners"))?;
        // -T auto: a binder process in the namespace, forked now (one
        // thread, no sandbox yet), and both socket tables opened now.
        if !cfg.ns_auto.is_empty() {
            let ns = ns_procnet(cfg, child.as_ref().map(|c| c.pid), "-T/-U auto")?
                .ok_or_else(|| Error::Publish("-T/-U auto: no namespace".into()))?;
            let host =
                crate::autoports::ProcNet::open(std::path::Path::new("/proc/thread-self/net"))
                    .map_err(io_err(
                        "opening the host's /proc/net/{tcp,udp}{,6} for -T/-U auto",
                    ))?;
            let binder = crate::nsauto::spawn(&target, cfg.sandbox).map_err(Error::Publish)?;
            let (tx, rx) = std::sync::mpsc::channel();
            relay.follow(rx);
            publish.ns_auto = Some(crate::nsauto::NsAuto::new(
                cfg.ns_auto.clone(),
                host,
                ns,
                binder,
                tx,
            ));
        }
        Some(relay)
    };

    let off = cfg.stack.offload;
    if off.vnet_hdr {
        // The header size and the offloads belong to the device: set them
        // once, through queue 0. (TSO from the namespace needs checksum
        // offload, and both need the header.)
        let fd = taps[0].as_raw_fd();
        offload::enable_vnet_hdr(fd).map_err(io_err("setting the TAP's virtio-net header size"))?;
        offload::set_offload(fd, off.csum, off.tso && off.csum)
            .map_err(io_err("enabling TAP offloads (TUNSETOFFLOAD)"))?;
    }
    // Inbox buffers hold one frame: up to the MTU, or a 64 KiB GSO
    // super-frame with its virtio-net header when offloads are on.
    let buf_size = if off.vnet_hdr {
        stack::wire::vnet_hdr::HEADER_LEN + 14 + 65535
    } else {
        usize::from(cfg.stack.mtu) + 14 + 4
    };
    let mut ports = Vec::new();
    for tap in &taps {
        // The reader is a dup of the queue fd, made non-blocking (the flag
        // belongs to the open file, so writes see it too: tun writes never
        // block anyway).
        let reader = tap.try_clone().map_err(io_err("duplicating a TAP queue"))?;
        reader
            .set_nonblocking(true)
            .map_err(io_err("making a TAP queue non-blocking"))?;
        // The kernel steers flows to TAP queues (see `stack::steer`): each
        // worker owns the flows it reads, so its stack shares nothing by
        // hash.
        ports.push(Port {
            out: PortOut::Tap(tap.as_raw_fd()),
            reader: Some(reader),
            shard: (0, 1),
        });
    }
    let workers = Workers::start(cfg, inboxes(taps.len(), buf_size)?, ports)?;
    let namespace = Namespace {
        taps,
        child,
        relay,
        relay_thread: None,
        relay_stop: Arc::new(AtomicBool::new(false)),
    };
    serve(cfg, publish, workers, namespace)
}

/// A namespace while it is served: its TAP queues, the command (spawn
/// mode) and pasta's -T/-U relay.
struct Namespace {
    /// The TAP queues, open until the end.
    taps: Vec<Tap>,
    /// The command, in spawn mode: uipd ends when it does.
    child: Option<netns::Spawned>,
    /// The -T/-U relay, made before the sandbox, started with the workers.
    relay: Option<crate::nsfwd::Relay>,
    relay_thread: Option<std::thread::JoinHandle<()>>,
    relay_stop: Arc<AtomicBool>,
}

impl Serving for Namespace {
    fn start(&mut self, _: &Config, _: &Workers) -> Result<(), Error> {
        if let Some(r) = self.relay.take() {
            let t = r
                .start(self.relay_stop.clone())
                .map_err(io_err("starting the -T/-U relay"))?;
            self.relay_thread = Some(t);
        }
        if let Some(c) = self.child.as_mut() {
            c.start()?;
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Option<i32>, Error> {
        match self.child.as_mut() {
            Some(c) => {
                if STOP.load(Ordering::SeqCst) {
                    // SIGTERM to uipd: pass it on, then wait for the command.
                    let _ = c.kill(libc::SIGTERM);
                    STOP.store(false, Ordering::SeqCst);
                }
                Ok(c.try_wait()?)
            }
            None => Ok(None),
        }
    }

    fn finish(self) {
        self.relay_stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.relay_thread
            && r.join().is_err()
        {
            log::error!("the -T/-U relay panicked");
        }
        drop(self.taps);
    }
}
