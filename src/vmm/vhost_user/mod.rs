//! The vhost-user-net backend (`uipd --vhost-user SOCKET`): a VMM (QEMU,
//! cloud-hypervisor) shares guest memory and the virtqueues over a UNIX
//! socket, and uipd runs the virtio-net data path ([`super::virtio_net`])
//! on them.
//!
//! ```text
//!  VMM ──vhost-user socket──► relay (relay.rs) ──► vhost-user-backend request thread
//!                                                     (memory table, vrings, features)
//!  guest TX kick ─► handler thread of pair p ─► tx_pop ─► steer by 5-tuple ─► worker k inbox
//!  guest RX kick ─► handler thread of pair p ─► kick the workers (their sinks retry)
//!  worker k ─► VringSink ─► RxRing::put into RX queue of pair k (or another enabled pair)
//!              ─► call eventfd once per batch, when event-idx says so
//! ```
//!
//! One [`Device`] lives for the daemon; each VMM connection gets a fresh
//! [`Conn`] (memory, vrings, negotiated features) and a fresh
//! `VhostUserDaemon`. When the VMM leaves, every worker resets its host
//! connections and the socket is served again. A message out of order, a
//! memory table with overlapping, missing or file-less regions, or a vring
//! outside memory is refused by the relay ([`relay`] lists the
//! checks), a malformed message by vhost-user-backend: either way the error
//! is logged naming the request, and that connection is closed; the workers
//! and the next VMM are not affected. A broken descriptor chain stops only
//! its queue (logged).
//!
//! Backpressure, guest → host: a full inbox stops the TX queue (the chain
//! that did not fit waits, already copied, in `TxState::pending`) and a
//! timer retries it; nothing is dropped. Host → guest: a sink keeps up to
//! [`SINK_MAX_BYTES`] of frames while the guest has no RX buffers, then drops
//! (counted in `port_drops`); TCP retransmits.
//!
//! The backend does not offer CTRL_VQ: QEMU serves the control queue of a
//! vhost-user-net device itself and tells us the enabled queue pairs with
//! `SET_VRING_ENABLE`. Frames of a worker whose own pair is disabled go to
//! the next enabled pair.

pub mod relay;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventFlag, EventNotifier};

use super::virtio_net::{
    self, ConfigSpace, Negotiated, OfferedOffloads, bit, feature, feature_names,
};
use crate::dataplane::worker::{Shared, WorkerCounters};
use crate::rings::FrameRing;
use crate::stack::Offload;

pub use super::queue_pair::{Counters, SINK_MAX_BYTES};
use super::queue_pair::{Pairs, Port, QueueSink, RxQueues, Transport};

/// Largest virtqueue the backend accepts.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Log lines per call site and [`INTERVAL`](crate::ratelimit::INTERVAL)
/// for per-connection events: a front-end may reconnect in a loop, but a
/// test suite's worth of connections still shows in full.
const CONN_BURST: u32 = 50;

type Mem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// The device across connections: the workers' inboxes and controls.
pub struct Device {
    /// Inboxes, worker controls, generation and counters; each
    /// connection holds it too.
    port: Arc<Port>,
    config: ConfigSpace,
    allow_offload: bool,
    conn: RwLock<Option<Arc<Conn>>>,
}

/// One VMM connection's state.
pub struct Conn {
    port: Arc<Port>,
    mem: Mem,
    acked: AtomicU64,
    /// The vrings of each queue pair, as its handler thread first sees
    /// them (vhost-user-backend hands each thread only its own pair).
    vrings: Vec<OnceLock<Vec<VringRwLock>>>,
    /// The queue pairs' data path state (fresh for each connection).
    pairs: Pairs,
    /// The exit eventfds handed to vhost-user-backend, which leaks them
    /// (see [`Backend::exit_event`]): fd number and its (device, inode).
    exit_fds: Mutex<Vec<(RawFd, (u64, u64))>>,
}

impl Device {
    /// A device with one queue pair per worker (`inboxes.len()`).
    /// `allow_offload` false hides the checksum and TSO features.
    pub fn new(inboxes: Vec<Arc<FrameRing>>, mtu: u16, allow_offload: bool) -> Arc<Device> {
        let pairs = inboxes.len().max(1);
        Arc::new(Device {
            port: Arc::new(Port::new(pairs, inboxes)),
            config: ConfigSpace {
                mac: [0x00, 0x15, 0x15, 0x15, 0x15, 0x15],
                status: 1,
                max_queue_pairs: u16::try_from(pairs).unwrap_or(u16::MAX),
                mtu,
            },
            allow_offload,
            conn: RwLock::new(None),
        })
    }

    /// The workers' shared controls (for offload changes and resets).
    pub fn set_workers(&self, shared: Vec<Arc<Shared>>) {
        self.port.set_workers(shared);
    }

    /// Frontend counters.
    pub fn counters(&self) -> &Counters {
        &self.port.counters
    }

    /// A sink for worker `worker`'s frames toward the guest.
    pub fn sink(self: &Arc<Self>, worker: usize) -> VringSink {
        QueueSink::new(self.clone(), worker)
    }

    /// Virtio features offered (plus vhost-user's protocol-features bit).
    pub fn features(&self) -> u64 {
        let offloads = if self.allow_offload {
            OfferedOffloads::Stack
        } else {
            OfferedOffloads::None
        };
        virtio_net::offered_with(
            u16::try_from(self.port.pairs()).unwrap_or(u16::MAX),
            false,
            offloads,
        ) | bit(feature::VHOST_USER_PROTOCOL_FEATURES)
    }

    fn conn(&self) -> Option<Arc<Conn>> {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn workers_each(&self, f: impl Fn(&Shared)) {
        self.port.workers_each(f);
    }

    /// Serve VMM connections on `path` until `stop`; each connection ends
    /// with every worker's host connections reset. Returns only on `stop`
    /// (checked between and during connections) or a listener failure.
    ///
    /// uipd owns the listening socket (so it stays in place between VMMs)
    /// and relays each connection's control messages to the vhost crate's
    /// handler through a private abstract socket ([`relay`]), which
    /// smooths over a message order QEMU uses and the crate refuses.
    pub fn serve(
        self: &Arc<Self>,
        listener: &UnixListener,
        stop: &AtomicBool,
    ) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let mut serial = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let vmm = match accept(listener, stop)? {
                Some(c) => c,
                None => break,
            };
            vmm.set_nonblocking(false)?;
            serial += 1;
            let conn = Arc::new(Conn::new(self.port.clone())?);
            let mem = conn.mem.clone();
            *self.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
            self.port.new_guest();
            let backend = Backend {
                dev: self.clone(),
                conn: conn.clone(),
            };
            let mut daemon = VhostUserDaemon::new("uipd-vhost-user".into(), backend, mem)
                .map_err(|e| std::io::Error::other(format!("vhost-user daemon: {e}")))?;
            let nq = 2 * self.port.pairs();
            for (p, h) in daemon.get_epoll_handlers().iter().enumerate() {
                h.register_listener(conn.pairs.timer_fd(p), EventSet::IN, (nq + 1 + p) as u64)?;
            }
            // The crate's handler connects to the relay over a private
            // abstract socket: nothing appears in the file system.
            let name = format!("uipd-vhost-{}-{serial}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            let internal = UnixListener::bind_addr(&addr)?;
            let handler_side = UnixStream::connect_addr(&addr)?;
            let mut vl = vhost::vhost_user::Listener::from(internal);
            daemon
                .start(&mut vl)
                .map_err(|e| std::io::Error::other(format!("vhost-user daemon: {e}")))?;
            crate::log_limited!(log::Level::Info, burst CONN_BURST, "vhost-user: VMM connected");
            let relayed = relay::relay(&vmm, &handler_side, stop);
            let _ = vmm.shutdown(std::net::Shutdown::Both);
            let _ = handler_side.shutdown(std::net::Shutdown::Both);
            let handled = daemon.wait();
            match (relayed, handled) {
                (Ok(st), Err(e)) if st.handler_closed.is_some() => crate::log_limited!(
                    log::Level::Error,
                    burst CONN_BURST,
                    "vhost-user: connection closed: {} refused: {e}",
                    relay::describe(st.handler_closed.unwrap_or(0))
                ),
                (Ok(st), handled) => {
                    crate::log_limited!(
                        log::Level::Info,
                        burst CONN_BURST,
                        "vhost-user: the VMM disconnected ({} messages in, {} out, {} early ring enables held, {} replayed)",
                        st.from_vmm,
                        st.to_vmm,
                        st.swallowed,
                        st.replayed
                    );
                    if let Err(e) = handled {
                        crate::log_limited!(log::Level::Warn, burst CONN_BURST, "vhost-user: {e}");
                    }
                }
                (Err(e), _) => crate::log_limited!(
                    log::Level::Error,
                    burst CONN_BURST,
                    "vhost-user: connection closed: {e}"
                ),
            }
            for h in daemon.get_epoll_handlers() {
                h.send_exit_event();
            }
            // Dropping the daemon joins its handler threads and closes
            // their epolls; only then are the exit eventfds unused.
            drop(daemon);
            conn.close_exit_events();
            *self.conn.write().unwrap_or_else(|e| e.into_inner()) = None;
            self.port.new_guest();
            self.workers_each(|s| s.reset());
        }
        Ok(())
    }
}

/// The (device, inode) of the open file behind `fd`.
fn fd_identity(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes only into `st`, alive for the call; a closed
    // or foreign `fd` only makes it fail.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

/// Wait for a VMM to connect; `None` on `stop`.
fn accept(listener: &UnixListener, stop: &AtomicBool) -> std::io::Result<Option<UnixStream>> {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((c, _)) => return Ok(Some(c)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

impl Conn {
    fn new(port: Arc<Port>) -> std::io::Result<Conn> {
        Conn::with_memory(port, GuestMemoryMmap::new())
    }

    fn with_memory(port: Arc<Port>, mem: GuestMemoryMmap<()>) -> std::io::Result<Conn> {
        let pairs = port.pairs();
        Ok(Conn {
            port,
            mem: GuestMemoryAtomic::new(mem),
            acked: AtomicU64::new(0),
            vrings: (0..pairs).map(|_| OnceLock::new()).collect(),
            pairs: Pairs::new(pairs)?,
            exit_fds: Mutex::new(Vec::new()),
        })
    }

    /// Close the exit eventfds vhost-user-backend took and never closes.
    /// Call only after the `VhostUserDaemon` of this connection is
    /// dropped (its handler threads joined, their epolls closed).
    fn close_exit_events(&self) {
        let fds = std::mem::take(&mut *self.exit_fds.lock().unwrap_or_else(|e| e.into_inner()));
        for (fd, id) in fds {
            if fd_identity(fd) != Some(id) {
                // Not the descriptor we made any more (a crate that closes
                // it itself, and the number reused): leave it alone.
                log::warn!("vhost-user: exit eventfd {fd} changed; not closing it");
                continue;
            }
            // SAFETY:
            // - `fd` is the consumer end of an eventfd made in
            //   `Backend::exit_event`; vhost-user-backend 0.24 turned it
            //   into a raw fd (`VringEpollHandler::new`, `into_raw_fd`),
            //   registered it with its epoll and never closes it;
            // - the daemon that held it is dropped: its threads are
            //   joined and its epoll closed, so nothing uses the number;
            // - since the crate never closed it, the number still names
            //   that eventfd (the identity check above guards against a
            //   crate version that does close it, should the number have
            //   been reused by another kind of file), and each number is
            //   taken from `exit_fds` once, so it is closed exactly once.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }

    /// Virtqueue `q` (RX of pair p is 2p, TX 2p + 1), once its pair's
    /// handler thread has seen an event.
    fn vring(&self, q: usize) -> Option<&VringRwLock> {
        self.vrings.get(q / 2)?.get()?.get(q % 2)
    }
}

/// One connection of the device, as the shared data path sees it.
impl Transport for Conn {
    const WHAT: &'static str = "vhost-user";

    fn port(&self) -> &Port {
        &self.port
    }

    fn queue_pairs(&self) -> &Pairs {
        &self.pairs
    }

    fn negotiated(&self) -> Negotiated {
        Negotiated(self.acked.load(Ordering::Acquire))
    }

    /// QEMU serves the control queue and disables the pairs the guest does
    /// not use (`SET_VRING_ENABLE`): every pair counts, a disabled one is
    /// skipped by [`Transport::with_queue`].
    fn active_pairs(&self) -> usize {
        self.port.pairs()
    }

    fn with_queue<R>(
        &self,
        q: usize,
        f: impl FnOnce(&mut Queue, &GuestMemoryMmap<()>) -> R,
    ) -> Option<R> {
        let vring = self.vring(q)?;
        let mut g = vring.get_mut();
        if !g.is_enabled() || !g.get_queue().ready() {
            return None;
        }
        let mem = self.mem.memory();
        Some(f(g.get_queue_mut(), &mem))
    }

    fn signal(&self, q: usize) {
        if let Some(vring) = self.vring(q) {
            if vring.signal_used_queue().is_ok() {
                self.port
                    .counters
                    .interrupts
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A worker's frames toward the guest: straight into the RX buffers of its
/// queue pair.
pub type VringSink = QueueSink<Device>;

/// The guest is the connected VMM's, if one is connected.
impl RxQueues for Device {
    type Guest = Conn;

    fn port(&self) -> &Port {
        &self.port
    }

    fn with_guest<R>(&self, f: impl FnOnce(&Conn) -> R) -> Option<R> {
        self.conn().map(|c| f(&c))
    }
}

/// The vhost-user-backend face of one connection.
#[derive(Clone)]
struct Backend {
    dev: Arc<Device>,
    conn: Arc<Conn>,
}

impl VhostUserBackend for Backend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2 * self.dev.port.pairs()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.dev.features()
    }

    fn acked_features(&self, features: u64) {
        self.conn.acked.store(features, Ordering::Release);
        crate::log_limited!(
            log::Level::Info,
            burst CONN_BURST,
            "vhost-user: guest features: {}",
            feature_names(features).join(" ")
        );
        let neg = Negotiated(features);
        let off = if self.dev.allow_offload {
            neg.offload()
        } else {
            Offload {
                vnet_hdr: true,
                ..Offload::default()
            }
        };
        self.dev.workers_each(|s| s.set_offload(off));
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.dev.config.read(offset, size)
    }

    fn update_memory(&self, _mem: Mem) -> std::io::Result<()> {
        // The handler replaced the contents of our GuestMemoryAtomic (the
        // one given to the daemon); every access takes a fresh snapshot.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.dev.port.pairs())
            .map(|p| 0b11u64 << (2 * p))
            .collect()
    }

    /// vhost-user-backend 0.24 calls this once per handler thread, turns
    /// the consumer into a raw fd for its epoll and never closes it; the
    /// fd is remembered here and closed after the connection
    /// ([`Conn::close_exit_events`]), so connections do not leak fds.
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = vmm_sys_util::event::new_event_consumer_and_notifier(
            EventFlag::NONBLOCK | EventFlag::CLOEXEC,
        )
        .ok()?;
        let fd = consumer.as_raw_fd();
        let id = fd_identity(fd)?;
        self.conn
            .exit_fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((fd, id));
        Some((consumer, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> std::io::Result<()> {
        // Thread `thread_id` serves queue pair `thread_id` (see
        // `queues_per_thread`); its vrings and its queue events are that
        // pair's: event 0 is its RX queue, 1 its TX queue.
        let pair = thread_id;
        if let Some(slot) = self.conn.vrings.get(pair) {
            let _ = slot.set(vrings.to_vec());
        }
        let pairs = self.dev.port.pairs();
        let ev = usize::from(device_event);
        if ev == 0 {
            // The guest added RX buffers: let the workers' sinks retry.
            self.dev.port.kick_workers();
        } else if ev == 1 {
            self.conn.pairs.process_tx(&*self.conn, pair);
        } else if ev > 2 * pairs && ev <= 3 * pairs {
            self.conn.pairs.retry_tx(&*self.conn, ev - 2 * pairs - 1);
        }
        Ok(())
    }
}

/// In-process drivers for the fuzz targets (`fuzz/fuzz_targets/`); not an
/// API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// One vring as a front-end sets it up: size, guest addresses of the
    /// descriptor table, avail and used rings, and the first avail index
    /// (`SET_VRING_BASE`).
    #[derive(Debug, Clone, Copy)]
    pub struct Ring {
        /// Entries (a power of two up to [`MAX_QUEUE_SIZE`], else refused).
        pub size: u16,
        /// Descriptor table.
        pub desc: u64,
        /// Available ring.
        pub avail: u64,
        /// Used ring.
        pub used: u64,
        /// `SET_VRING_BASE`.
        pub base: u16,
    }

    /// Runs the backend's queue processing of one connection over `mem`
    /// with `features` acked: `kicks` TX kicks of pair 0 (each a
    /// [`Pairs::process_tx`], the inbox drained in between), then `frames`
    /// (12-byte header + Ethernet) placed toward the guest through
    /// [`RxQueues::place_all`], as a worker does. Returns the counter
    /// summary. `None` if the rings cannot be set up (the handler would
    /// refuse them).
    pub fn run_queues(
        mem: GuestMemoryMmap<()>,
        features: u64,
        rings: [Ring; 2],
        kicks: usize,
        frames: &[Vec<u8>],
    ) -> Option<String> {
        let inbox = Arc::new(FrameRing::new(64, 65_536 + 64).ok()?);
        let dev = Device::new(vec![inbox.clone()], 1500, true);
        let conn = Arc::new(Conn::with_memory(dev.port.clone(), mem).ok()?);
        conn.acked.store(features, Ordering::Release);
        let mut vrings = Vec::new();
        for r in rings {
            let max = u16::try_from(MAX_QUEUE_SIZE).unwrap_or(u16::MAX);
            if r.size == 0 || r.size > max || !r.size.is_power_of_two() {
                return None;
            }
            let v = VringRwLock::new(conn.mem.clone(), max).ok()?;
            v.set_queue_size(r.size);
            v.set_queue_info(r.desc, r.avail, r.used).ok()?;
            v.set_queue_next_avail(r.base);
            v.set_queue_event_idx(Negotiated(features).has(feature::RING_EVENT_IDX));
            v.set_queue_ready(true);
            v.set_enabled(true);
            vrings.push(v);
        }
        let _ = conn.vrings[0].set(vrings);
        *dev.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        for _ in 0..kicks {
            conn.pairs.process_tx(&*conn, 0);
            while let Some(f) = inbox.pop() {
                inbox.put_buf(f.buf);
            }
        }
        let mut waiting: VecDeque<Vec<u8>> = frames.iter().cloned().collect();
        let mut touched = vec![false; 1];
        let mut wc = WorkerCounters::default();
        // As a worker's sink: retry while frames wait (bounded, as the
        // guest may never post buffers).
        for _ in 0..4 {
            if waiting.is_empty() {
                break;
            }
            dev.place_all(0, &mut waiting, &mut touched, &mut wc);
        }
        Some(dev.counters().summary())
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::fuzzing::{Ring, run_queues};
    use super::*;

    /// The fuzz driver really runs the backend's TX path: one good chain
    /// is a frame; an avail index beyond the queue size stops the queue
    /// once, however often it is kicked.
    #[test]
    fn fuzz_driver_moves_a_frame_and_stops_a_bad_queue_once() {
        let run = |avail_idx: u16| {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x2_0000)]).unwrap();
            let frame = [0u8; 12 + 60];
            mem.write_slice(&frame, GuestAddress(0x10000)).unwrap();
            // Descriptor 0: the frame, readable, alone.
            let mut d = 0x10000u64.to_le_bytes().to_vec();
            d.extend_from_slice(&72u32.to_le_bytes());
            d.extend_from_slice(&[0; 4]);
            mem.write_slice(&d, GuestAddress(0x8000)).unwrap();
            mem.write_obj(avail_idx.to_le(), GuestAddress(0xa002))
                .unwrap();
            let ring = |desc, avail, used| Ring {
                size: 256,
                desc,
                avail,
                used,
                base: 0,
            };
            let features = virtio_net::offered(1, false);
            run_queues(
                mem,
                features,
                [ring(0, 0x2000, 0x3000), ring(0x8000, 0xa000, 0xb000)],
                3,
                &[],
            )
            .unwrap()
        };
        let good = run(1);
        assert!(good.contains("tx_frames 1 "), "{good}");
        assert!(good.contains("broken_queues 0 "), "{good}");
        let bad = run(300);
        assert!(bad.contains("tx_frames 0 "), "{bad}");
        assert!(bad.contains("broken_queues 1 "), "{bad}");
    }
}
