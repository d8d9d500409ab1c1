//! The stack workers as the daemon runs them: one thread per port
//! (`uipd-w{n}`, pinned where `--cpus` says), each with its stack shard,
//! its inbox and its way out to the guest ([`Port`]); the flows' memory
//! budget and the flow directory are shared. Set-up ends here: the
//! sandbox is entered just before the first worker starts.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Config, Error, io_err};
use crate::dataplane::pcap::{self, Pcap};
use crate::dataplane::tap::Tap;
use crate::dataplane::worker::{PortOut, Shared, Worker, WorkerStats};
use crate::rings::FrameRing;
use crate::stack::{self, Stack};

/// The running workers, as the control loop sees them.
pub(super) struct Workers {
    pub(super) shared: Vec<Arc<Shared>>,
    pub(super) handles: Vec<std::thread::JoinHandle<std::io::Result<WorkerStats>>>,
    pub(super) inboxes: Vec<Arc<FrameRing>>,
    /// The `--pcap` writer, fed by every worker.
    pub(super) pcap: Option<Pcap>,
    /// The flows' memory budget, shared by the workers' stacks.
    pub(super) memory: Arc<stack::MemBudget>,
}

/// What a frontend gives each worker.
pub(super) struct Port {
    pub(super) out: PortOut,
    pub(super) reader: Option<Tap>,
    /// The worker's stack shard: `(worker, workers)` in the stack's hash
    /// steering, `(0, 1)` when the kernel steers (multiqueue TAP).
    pub(super) shard: (usize, usize),
}

impl Workers {
    pub(super) fn start(
        cfg: &Config,
        inboxes: Vec<Arc<FrameRing>>,
        ports: Vec<Port>,
    ) -> Result<Workers, Error> {
        let n = ports.len();
        let pcap_file = match &cfg.pcap {
            Some(path) => Some(std::fs::File::create(path).map_err(io_err(&format!(
                "creating the pcap file {}",
                path.display()
            )))?),
            None => None,
        };
        // Set-up is done: everything below runs in the sandbox, and every
        // thread starts from here on.
        crate::sandbox::enter(cfg.sandbox)?;
        let pcap = match pcap_file {
            Some(f) => {
                Some(Pcap::start(f, n, pcap::DEPTH).map_err(io_err("starting the pcap writer"))?)
            }
            None => None,
        };
        let mut shared = Vec::new();
        let mut handles = Vec::new();
        let directory = (n > 1).then(|| Arc::new(stack::Directory::new()));
        // One budget for every worker's flows (`--max-memory`).
        let memory = Arc::new(stack::MemBudget::new(cfg.max_memory));
        for (i, port) in ports.into_iter().enumerate() {
            let sh = Arc::new(Shared::new(pcap.as_ref().map(|p| p.capture(i))));
            shared.push(sh.clone());
            let (worker, workers) = port.shard;
            // With the kernel steering (a multiqueue TAP: `workers` 1), the
            // guest's frames of a flow may come in on another queue than
            // its owner's (a published flow's are the accepting worker's
            // from the start): the stacks share a directory of flow owners
            // and hand such frames over; `worker` names each stack there.
            // Hash-steered stacks (stream, vhost-user) share it too, for
            // the guest's MAC and any flow whose frames do not hash to it.
            let worker = if workers == 1 { i } else { worker };
            let worker = Worker {
                index: i,
                stack: Stack::new(stack::Config {
                    worker,
                    workers,
                    directory: directory.clone(),
                    memory: memory.clone(),
                    // `--max-flows` is per guest: each worker gets a share.
                    max_flows: stack::flow_share(cfg.stack.max_flows, i, n),
                    isn_seed: cfg.stack.isn_seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    ..cfg.stack.clone()
                }),
                inboxes: inboxes.clone(),
                port_out: port.out,
                port_reader: port.reader,
                shared: sh,
                cpu: cfg.cpus.get(i).copied(),
                outbound: cfg.outbound,
                poll_us: cfg.poll_us,
                hash_steer: false,
                io: cfg.io,
            };
            let h = std::thread::Builder::new()
                .name(format!("uipd-w{i}"))
                .spawn(move || worker.run())
                .map_err(io_err("starting a worker"))?;
            handles.push(h);
        }
        Ok(Workers {
            shared,
            handles,
            inboxes,
            pcap,
            memory,
        })
    }

    pub(super) fn kick_all(&self) {
        self.inboxes.iter().for_each(|r| r.kick());
    }

    pub(super) fn each(&self, f: impl Fn(&Shared)) {
        self.shared.iter().for_each(|s| f(s));
        self.kick_all();
    }

    pub(super) fn snapshot(&self) -> Vec<WorkerStats> {
        crate::control::snapshot(&self.shared, &self.inboxes)
    }

    pub(super) fn stop(self) -> Vec<WorkerStats> {
        self.each(|s| s.stop.store(true, Ordering::SeqCst));
        let mut stats = Vec::new();
        for (i, h) in self.handles.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(st)) => stats.push(st),
                Ok(Err(e)) => {
                    log::error!("worker {i} failed: {e}");
                    stats.push(WorkerStats::default());
                }
                Err(_) => stats.push(WorkerStats::default()),
            }
        }
        // Every worker is gone: the budget's final figures (a worker's own
        // snapshot may predate another's teardown).
        let memory = self.memory.stats();
        for st in &mut stats {
            st.memory = memory;
        }
        if let Some(p) = self.pcap {
            // The workers are gone: whatever they queued is written now.
            match p.finish() {
                Ok(n) => log::info!("pcap: {n} frames written"),
                Err(e) => log::error!("pcap: {e}"),
            }
        }
        stats
    }
}

/// Workers for a virtio-net frontend (vhost-user, the VMM's virtio-pci):
/// one per inbox, hash-steered shards, each writing through `sink(i)`.
/// Until the guest says which offloads it takes, the stacks use the
/// virtio-net header only.
pub(super) fn start_virtio_workers(
    cfg: &Config,
    inboxes: Vec<Arc<FrameRing>>,
    sink: impl Fn(usize) -> Box<dyn crate::dataplane::worker::FrameSink>,
) -> Result<Workers, Error> {
    let n = inboxes.len();
    let ports = (0..n)
        .map(|i| Port {
            out: PortOut::Sink(sink(i)),
            reader: None,
            shard: (i, n),
        })
        .collect();
    let mut wcfg = cfg.clone();
    wcfg.stack.offload = stack::Offload {
        vnet_hdr: true,
        ..stack::Offload::default()
    };
    Workers::start(&wcfg, inboxes, ports)
}
