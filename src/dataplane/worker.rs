//! A stack worker: one thread, optionally pinned, that owns a [`Stack`], an
//! io_uring ([`Uring`]) and the consuming end of a [`FrameRing`].
//!
//! ```text
//!  loop {
//!     pop ≤ BATCH frames from the ring ──► Stack::ingress
//!     Stack::poll (pending ACKs, timers)
//!     frames → io_uring writes to the port;  SockOps → io_uring
//!     prepare_sleep; submit_and_wait(1, until the next deadline)
//!     drain CQEs: HostEvent ──► Stack::host_event; Wake ──► re-arm
//!  }
//! ```
//!
//! The worker sleeps in `io_uring_enter` until a completion, an eventfd
//! wake from the port (only written when the worker announced it sleeps), or
//! the stack's next deadline; an idle worker costs no CPU beyond a wake-up
//! every `IDLE_TICK`, when it also looks at the stop and stats flags.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::dataplane::uring::{Completion, Uring};
use crate::rings::FrameRing;
use crate::stack::{Actions, Counters, Instant, Stack};

/// Frames taken from the ring per batch.
const BATCH: usize = 256;
/// Longest sleep: how quickly a stop or stats request is noticed.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// Counters of the worker itself (the stack keeps its own).
#[derive(Debug, Clone, Default)]
pub struct WorkerCounters {
    /// Batches processed.
    pub batches: u64,
    /// Frames written to the port.
    pub port_writes: u64,
    /// Failed writes to the port.
    pub port_write_errors: u64,
    /// Host completions processed.
    pub completions: u64,
    /// Loop wake-ups.
    pub wakeups: u64,
}

/// Flags and data shared between a worker and the control thread.
#[derive(Default)]
pub struct Shared {
    /// Ask the worker to stop.
    pub stop: AtomicBool,
    /// Ask the worker to publish its counters.
    pub dump: AtomicBool,
    /// Counters published by the worker (on request and at exit).
    pub counters: Mutex<(Counters, WorkerCounters)>,
    /// New resolvers to hand to the stack (resolv.conf changed).
    pub resolvers: Mutex<Option<Vec<std::net::SocketAddr>>>,
}

/// Everything a worker needs.
pub struct Worker {
    /// The stack it drives.
    pub stack: Stack,
    /// Frames from the port.
    pub ring: Arc<FrameRing>,
    /// Where frames to the guest are written (the TAP fd).
    pub port_fd: RawFd,
    /// Shared control state.
    pub shared: Arc<Shared>,
    /// CPU to pin to.
    pub cpu: Option<usize>,
}

impl Worker {
    /// Run until `shared.stop`; returns the final counters.
    pub fn run(mut self) -> std::io::Result<(Counters, WorkerCounters)> {
        if let Some(cpu) = self.cpu {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                log::warn!("could not pin worker to CPU {cpu}");
            }
        }
        let mut uring = Uring::new(1024)?;
        uring.arm_wake(self.ring.wake_fd());
        let start = std::time::Instant::now();
        let now =
            || Instant::from_micros(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
        let mut out = Actions::default();
        let mut wc = WorkerCounters::default();
        let mut events = Vec::new();

        while !self.shared.stop.load(Ordering::Relaxed) {
            wc.wakeups += 1;
            if let Ok(mut r) = self.shared.resolvers.try_lock() {
                if let Some(list) = r.take() {
                    log::info!("resolvers now {list:?}");
                    self.stack.set_resolvers(list);
                }
            }
            // Host completions first: they free room in queues the guest's
            // frames may need.
            uring.drain(&mut |c| events.push(c));
            let t = now();
            for c in events.drain(..) {
                wc.completions += 1;
                match c {
                    Completion::Host(ev) => self.stack.host_event(ev, t, &mut out),
                    Completion::Wake => uring.arm_wake(self.ring.wake_fd()),
                    Completion::FrameWritten { result } => {
                        if result.is_err() {
                            wc.port_write_errors += 1;
                        }
                    }
                    Completion::Timeout => {}
                }
            }
            let mut n = 0;
            while n < BATCH {
                let Some(frame) = self.ring.pop() else { break };
                self.stack.ingress(frame.bytes(), t, &mut out);
                self.ring.put_buf(frame.buf);
                n += 1;
            }
            if n > 0 {
                wc.batches += 1;
            }
            let deadline = self.stack.poll(t, &mut out);
            for frame in out.frames.drain(..) {
                wc.port_writes += 1;
                uring.push_frame_write(self.port_fd, frame);
            }
            for op in out.ops.drain(..) {
                uring.push(op);
            }
            if self.shared.dump.swap(false, Ordering::Relaxed) {
                *self
                    .shared
                    .counters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) =
                    (self.stack.counters().clone(), wc.clone());
            }
            // Sleep only if nothing is waiting in the ring.
            let timeout = match deadline {
                Some(d) if d <= t => Some(Duration::ZERO),
                Some(d) => Some(d.since(t).min(IDLE_TICK)),
                None => Some(IDLE_TICK),
            };
            let busy = n == BATCH || timeout == Some(Duration::ZERO);
            if !busy && self.ring.prepare_sleep() {
                uring.submit_and_wait(1, timeout)?;
                self.ring.awake();
            } else {
                uring.submit_and_wait(0, None)?;
            }
        }
        // The guest is gone: reset every host connection.
        self.stack.reset_all(&mut out);
        for op in out.ops.drain(..) {
            uring.push(op);
        }
        uring.submit_and_wait(0, None)?;
        uring.close_all();
        let result = (self.stack.counters().clone(), wc);
        *self
            .shared
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = result.clone();
        Ok(result)
    }
}
