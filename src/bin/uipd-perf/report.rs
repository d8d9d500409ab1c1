//! Results: netperf-style text and the `--json` object.
//!
//! Throughput is in 10^6 bits/s, latencies in microseconds. The JSON object
//! has the same fields for every test; test-specific ones are present only
//! for that test (`udp` fields for UDP_STREAM, `transactions`,
//! `trans_per_s` and `latency_us` for TCP_RR and TCP_CRR).

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

/// CPU seconds used by the client process during the test (getrusage).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Cpu {
    /// User time.
    pub user_s: f64,
    /// System time.
    pub sys_s: f64,
}

/// Transaction latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    /// Percentiles of a histogram of nanoseconds.
    pub fn from_ns_hist(h: &Histogram<u64>) -> Self {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Self {
            p50: us(0.5),
            p90: us(0.9),
            p99: us(0.99),
            p999: us(0.999),
            max: h.max() as f64 / 1e3,
        }
    }
}

/// UDP_STREAM counters; flattened into [`Report`].
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Udp {
    /// Datagrams the client sent.
    pub sent_datagrams: u64,
    /// Datagrams the server received.
    pub received_datagrams: u64,
    /// `sent - received`.
    pub lost_datagrams: u64,
    /// `lost / sent` in percent.
    pub loss_pct: f64,
    /// Payload bytes the client sent.
    pub sent_bytes: u64,
    /// Send throughput.
    pub sent_mbps: f64,
    /// Receive throughput (server-side bytes over the send time).
    pub received_mbps: f64,
    /// Sends that failed locally (ENOBUFS, timeout).
    pub send_errors: u64,
}

/// One test's result.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// netperf test name.
    pub test: &'static str,
    /// Server as given on the command line.
    pub host: String,
    /// Server control port.
    pub port: u16,
    /// Parallel streams.
    pub streams: usize,
    /// Elapsed time the throughput is computed over.
    pub duration_s: f64,
    /// Write / datagram size (stream tests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg_size: Option<usize>,
    /// Request size (RR tests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub req_size: Option<usize>,
    /// Response size (RR tests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resp_size: Option<usize>,
    /// Payload bytes delivered to the receiver (both directions for RR).
    pub bytes: u64,
    /// `bytes * 8 / duration_s / 10^6`.
    pub throughput_mbps: f64,
    /// UDP_STREAM counters.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub udp: Option<Udp>,
    /// Completed transactions (RR tests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transactions: Option<u64>,
    /// Transactions per second (RR tests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trans_per_s: Option<f64>,
    /// Transaction latency (RR tests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Latency>,
    /// Client CPU use.
    pub cpu: Cpu,
}

impl Report {
    /// The netperf-style text: a title, a header and one result line.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        // Writing to a String cannot fail; the results are ignored below.
        let _ = writeln!(
            o,
            "UIPD-PERF {} TEST to {} port {} ({} stream{})",
            self.test,
            self.host,
            self.port,
            self.streams,
            if self.streams == 1 { "" } else { "s" }
        );
        if let Some(u) = &self.udp {
            let _ = write!(
                o,
                "Message  Elapsed  Messages                     Throughput\n\
                 Size     Time     Sent        Received  Lost%  Sent        Received\n\
                 bytes    secs.    #           #                10^6bits/s  10^6bits/s\n\n\
                 {:>7}  {:>7.2}  {:>10}  {:>10} {:>6.2}  {:>10.2}  {:>10.2}\n",
                self.msg_size.unwrap_or(0),
                self.duration_s,
                u.sent_datagrams,
                u.received_datagrams,
                u.loss_pct,
                u.sent_mbps,
                u.received_mbps,
            );
        } else if let (Some(tps), Some(l)) = (self.trans_per_s, &self.latency_us) {
            let _ = write!(
                o,
                "Request  Response Elapsed  Trans      Trans       Latency (usec)\n\
                 Size     Size     Time     Count      Rate        p50       p90       p99       p99.9     max\n\
                 bytes    bytes    secs.    #          per sec.\n\n\
                 {:>7}  {:>7}  {:>7.2}  {:>9}  {:>10.2}  {:>8.1}  {:>8.1}  {:>8.1}  {:>8.1}  {:>8.1}\n",
                self.req_size.unwrap_or(0),
                self.resp_size.unwrap_or(0),
                self.duration_s,
                self.transactions.unwrap_or(0),
                tps,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
            );
        } else {
            let _ = write!(
                o,
                "Message  Elapsed  Bytes          Throughput\n\
                 Size     Time     Transferred\n\
                 bytes    secs.    bytes          10^6bits/sec\n\n\
                 {:>7}  {:>7.2}  {:>13}  {:>12.2}\n",
                self.msg_size.unwrap_or(0),
                self.duration_s,
                self.bytes,
                self.throughput_mbps,
            );
        }
        let _ = writeln!(
            o,
            "\nClient CPU: user {:.3} s, sys {:.3} s",
            self.cpu.user_s, self.cpu.sys_s
        );
        o
    }
}
