//! A worker's metrics: its own counters ([`WorkerCounters`]) and the
//! snapshot it answers a stats request with ([`WorkerStats`]).

use hdrhistogram::Histogram;

use crate::stack::Counters;

/// Counters of the worker itself (the stack keeps its own).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerCounters {
    /// Frames read from the worker's TAP queue.
    pub port_reads: u64,
    /// Frames written to the TAP queue or handed to the sink.
    pub port_writes: u64,
    /// Failed reads or writes on the TAP queue or the sink.
    pub port_errors: u64,
    /// Frames a sink could not deliver and dropped (its queue was full).
    pub port_drops: u64,
    /// Frames taken from the inbox.
    pub inbox_frames: u64,
    /// Frames handed to other workers (steering).
    pub forwarded: u64,
    /// Times another worker's inbox was full.
    pub ring_full: u64,
    /// Batches processed (loop iterations that had frames).
    pub batches: u64,
    /// Host completions processed.
    pub completions: u64,
    /// Loop wake-ups.
    pub wakeups: u64,
    /// Waits in `io_uring_enter` (the worker had nothing to do; a wait
    /// returns at once when completions are already there).
    pub sleeps: u64,
    /// Busy-polls that found work before their window ran out (each one
    /// a sleep and a wake-up saved).
    pub poll_hits: u64,
    /// Segmented UDP sends to host sockets (io_uring: several datagrams
    /// of a flow in one `sendmsg` with `UDP_SEGMENT`).
    pub udp_segmented_sends: u64,
    /// Datagrams those sends carried.
    pub udp_segmented_datagrams: u64,
    /// Segmented sends the host refused (a path MTU below the segment
    /// size), whose datagrams then went one by one.
    pub udp_segment_fallbacks: u64,
    /// Frames queued for the pcap file (`--pcap`), both directions.
    pub pcap_frames: u64,
    /// Frames left out of the pcap file because its writer fell behind.
    pub pcap_drops: u64,
}

/// A snapshot of one worker's metrics.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    /// The stack's counters.
    pub stack: Counters,
    /// The worker's own counters.
    pub worker: WorkerCounters,
    /// Live flows of the worker's stack (at the last publication).
    pub flows: u64,
    /// The I/O engine the worker runs on (`uring` or `epoll`; empty before
    /// it started).
    pub io: &'static str,
    /// The flows' memory budget (shared by all workers) at the last
    /// publication.
    pub memory: crate::stack::MemStats,
    /// Frame-in to socket-submit latency, in nanoseconds: from the start of
    /// the turn that took a batch's frames in (the end of the wait before
    /// it) to the end of that turn, whose work the next `io_uring_enter`
    /// submits (recorded once per frame).
    pub latency_ns: Histogram<u64>,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            stack: Counters::default(),
            worker: WorkerCounters::default(),
            flows: 0,
            io: "",
            memory: crate::stack::MemStats::default(),
            // Cannot fail: 3 significant figures is within hdrhistogram's 0..=5.
            latency_ns: Histogram::new(3).unwrap_or_else(|_| unreachable!()),
        }
    }
}
