//! The workers' counters at the end (`--stats`, `--stats-json`) and on
//! SIGUSR1: per worker, then the total, and the memory budget's figures.

use crate::dataplane::worker::{WorkerCounters, WorkerStats};
use crate::stack::{self, Counters};

/// The memory budget's figures, from the workers' snapshots of it.
pub fn memory_stats(stats: &[WorkerStats]) -> stack::MemStats {
    stats
        .iter()
        .fold(stack::MemStats::default(), |a, s| a.max(s.memory))
}

/// Render counters of every worker, then the total.
pub(super) fn render_stats(stats: &[WorkerStats]) -> String {
    let mut s = String::new();
    let mut total = Counters::default();
    for (i, st) in stats.iter().enumerate() {
        total.merge(&st.stack);
        let w = &st.worker;
        let h = &st.latency_ns;
        s.push_str(&format!(
            "uipd worker {i}: port_reads {} port_writes {} inbox {} forwarded {} foreign_flow_frames {} ring_full {} batches {} completions {} port_errors {} port_drops {}\n",
            w.port_reads, w.port_writes, w.inbox_frames, w.forwarded, st.stack.foreign_flow_frames, w.ring_full, w.batches, w.completions, w.port_errors, w.port_drops
        ));
        if !h.is_empty() {
            s.push_str(&format!(
                "uipd worker {i}: frame-in to submit ns p50 {} p99 {} p99.9 {} max {}\n",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            ));
        }
    }
    if let Some(io) = stats.iter().map(|st| st.io).find(|io| !io.is_empty()) {
        s.push_str(&format!("uipd io: {io}\n"));
    }
    s.push_str(&format!("uipd counters ({} workers):\n", stats.len()));
    for (name, v) in total.iter() {
        if v != 0 || !name.starts_with("drops_") {
            s.push_str(&format!("  {name:<28} {v}\n"));
        }
    }
    let sum = |f: fn(&WorkerCounters) -> u64| stats.iter().map(|s| f(&s.worker)).sum::<u64>();
    for (name, v) in [
        ("forwarded", sum(|w| w.forwarded)),
        ("ring_full", sum(|w| w.ring_full)),
        ("port_errors", sum(|w| w.port_errors)),
        ("pcap_frames", sum(|w| w.pcap_frames)),
        ("pcap_drops", sum(|w| w.pcap_drops)),
        ("port_drops", sum(|w| w.port_drops)),
        ("sleeps", sum(|w| w.sleeps)),
        ("poll_hits", sum(|w| w.poll_hits)),
        ("udp_segmented_sends", sum(|w| w.udp_segmented_sends)),
        (
            "udp_segmented_datagrams",
            sum(|w| w.udp_segmented_datagrams),
        ),
        ("udp_segment_fallbacks", sum(|w| w.udp_segment_fallbacks)),
    ] {
        s.push_str(&format!("  {name:<28} {v}\n"));
    }
    for (name, v) in memory_stats(stats).iter() {
        s.push_str(&format!("  {name:<28} {v}\n"));
    }
    s
}

/// Stats as JSON: per worker and total.
pub fn stats_json(stats: &[WorkerStats]) -> serde_json::Value {
    let mut total = Counters::default();
    let workers: Vec<serde_json::Value> = stats
        .iter()
        .map(|st| {
            total.merge(&st.stack);
            let h = &st.latency_ns;
            let counters: serde_json::Map<String, serde_json::Value> = st
                .stack
                .iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            serde_json::json!({
                "stack": counters,
                "worker": st.worker,
                "io": st.io,
                "frame_to_submit_ns": {
                    "count": h.len(),
                    "p50": h.value_at_quantile(0.5),
                    "p99": h.value_at_quantile(0.99),
                    "p999": h.value_at_quantile(0.999),
                    "max": h.max(),
                },
            })
        })
        .collect();
    let total: serde_json::Map<String, serde_json::Value> = total
        .iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    let memory = memory_stats(stats);
    serde_json::json!({ "workers": workers, "total": total, "memory": memory })
}
