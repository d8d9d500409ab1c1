//! `uipd-perf -H HOST`: runs one test over `-P` parallel streams.
//!
//! Each stream is a complete test on its own control connection (see
//! [`crate::proto`]); the streams' results are summed into one [`Report`].
//! Every socket call is bounded by [`crate::net::TICK`] and every loop by the
//! test duration, so against a dead server a run ends within
//! `duration + CONNECT_TIMEOUT + DRAIN + RESULT_TIMEOUT` with an error.

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::net::{self, Fill, is_timeout};
use crate::proto::{self, Msg, TestKind, TestSpec};
use crate::report::{Cpu, Latency, Report, Udp};

/// Bound on each TCP connect (control, data, and each TCP_CRR connection).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on the `Hello` -> `Ready` exchange.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long past the duration a stream may take to finish (MAERTS EOF, the
/// last RR transaction).
const DRAIN: Duration = Duration::from_secs(2);
/// Bound on the `Done` -> `Result` exchange.
const RESULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Read size for TCP_MAERTS.
const READ_BUF: usize = 128 << 10;
/// Histogram range: 1 ns to 60 s at 3 significant digits.
const HIST_MAX_NS: u64 = 60_000_000_000;

/// Client settings from the command line.
pub struct Opts {
    /// Server host name or address.
    pub host: String,
    /// Server control port.
    pub port: u16,
    /// The test.
    pub spec: TestSpec,
    /// Parallel streams.
    pub streams: usize,
}

/// What one stream measured on both ends.
struct StreamResult {
    /// Bytes this side sent (STREAM, UDP) or received (MAERTS).
    local_bytes: u64,
    /// Datagrams sent (UDP) or transactions completed (RR, CRR).
    local_count: u64,
    /// Duration of this side's data phase.
    local_elapsed: Duration,
    /// Datagram sends that failed with ENOBUFS or timed out (UDP).
    send_errors: u64,
    /// Transaction latencies in ns (RR, CRR).
    hist: Option<Histogram<u64>>,
    /// The server's `Result`.
    remote_bytes: u64,
    remote_count: u64,
    remote_elapsed: Duration,
}

/// Local half of a [`StreamResult`].
#[derive(Default)]
struct Local {
    bytes: u64,
    count: u64,
    elapsed: Duration,
    send_errors: u64,
    hist: Option<Histogram<u64>>,
}

/// Runs the test and sums its streams.
pub fn run(opts: &Opts) -> Result<Report, String> {
    let target = format!("{}:{}", opts.host, opts.port);
    let addrs: Vec<SocketAddr> = (opts.host.as_str(), opts.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("cannot resolve {target}: no addresses"));
    }

    let cpu0 = net::cpu_times();
    let results: Vec<Result<StreamResult, String>> = if opts.streams == 1 {
        vec![run_stream(&addrs, opts.spec)]
    } else {
        thread::scope(|sc| {
            let handles: Vec<_> = (0..opts.streams)
                .map(|_| sc.spawn(|| run_stream(&addrs, opts.spec)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("stream thread panicked".into()))
                })
                .collect()
        })
    };
    let cpu1 = net::cpu_times();
    let results = results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{target}: {e}"))?;
    let cpu = Cpu {
        user_s: cpu1.0 - cpu0.0,
        sys_s: cpu1.1 - cpu0.1,
    };
    Ok(summarize(opts, &results, cpu))
}

fn mbps(bytes: u64, elapsed: f64) -> f64 {
    if elapsed > 0.0 {
        bytes as f64 * 8.0 / elapsed / 1e6
    } else {
        0.0
    }
}

/// Sums per-stream results; throughput is total bytes over the longest
/// stream's elapsed time.
fn summarize(opts: &Opts, rs: &[StreamResult], cpu: Cpu) -> Report {
    let spec = opts.spec;
    let mut report = Report {
        test: spec.test.name(),
        host: opts.host.clone(),
        port: opts.port,
        streams: rs.len(),
        duration_s: 0.0,
        msg_size: (!spec.test.is_rr()).then_some(spec.msg_size),
        req_size: spec.test.is_rr().then_some(spec.req_size),
        resp_size: spec.test.is_rr().then_some(spec.resp_size),
        bytes: 0,
        throughput_mbps: 0.0,
        udp: None,
        transactions: None,
        trans_per_s: None,
        latency_us: None,
        cpu,
    };
    let max_secs = |f: &dyn Fn(&StreamResult) -> Duration| {
        rs.iter().map(|r| f(r).as_secs_f64()).fold(0.0, f64::max)
    };
    match spec.test {
        TestKind::TcpStream => {
            // The receiver's view: server bytes over accept-to-last-byte,
            // falling back to ours if the server saw less than a tick.
            report.bytes = rs.iter().map(|r| r.remote_bytes).sum();
            report.duration_s = max_secs(&|r| {
                if r.remote_elapsed.is_zero() {
                    r.local_elapsed
                } else {
                    r.remote_elapsed
                }
            });
        }
        TestKind::TcpMaerts => {
            report.bytes = rs.iter().map(|r| r.local_bytes).sum();
            report.duration_s = max_secs(&|r| r.local_elapsed);
        }
        TestKind::UdpStream => {
            // Both rates over the sender's elapsed time, as netperf does.
            let sent_bytes: u64 = rs.iter().map(|r| r.local_bytes).sum();
            let sent: u64 = rs.iter().map(|r| r.local_count).sum();
            let received: u64 = rs.iter().map(|r| r.remote_count).sum();
            report.bytes = rs.iter().map(|r| r.remote_bytes).sum();
            report.duration_s = max_secs(&|r| r.local_elapsed);
            let lost = sent.saturating_sub(received);
            report.udp = Some(Udp {
                sent_datagrams: sent,
                received_datagrams: received,
                lost_datagrams: lost,
                loss_pct: if sent == 0 {
                    0.0
                } else {
                    lost as f64 * 100.0 / sent as f64
                },
                sent_bytes,
                sent_mbps: mbps(sent_bytes, report.duration_s),
                received_mbps: mbps(report.bytes, report.duration_s),
                send_errors: rs.iter().map(|r| r.send_errors).sum(),
            });
        }
        TestKind::TcpRr | TestKind::TcpCrr => {
            let trans: u64 = rs.iter().map(|r| r.local_count).sum();
            report.bytes = trans * (spec.req_size + spec.resp_size) as u64;
            report.duration_s = max_secs(&|r| r.local_elapsed);
            report.transactions = Some(trans);
            report.trans_per_s = Some(
                rs.iter()
                    .map(|r| {
                        let s = r.local_elapsed.as_secs_f64();
                        if s > 0.0 {
                            r.local_count as f64 / s
                        } else {
                            0.0
                        }
                    })
                    .sum(),
            );
            let mut all = new_hist();
            for h in rs.iter().filter_map(|r| r.hist.as_ref()) {
                // Cannot fail: every histogram has the same bounds.
                all.add(h).expect("histograms share bounds");
            }
            report.latency_us = Some(Latency::from_ns_hist(&all));
        }
    }
    report.throughput_mbps = mbps(report.bytes, report.duration_s);
    report
}

fn new_hist() -> Histogram<u64> {
    // Cannot fail: 1 <= low, high >= 2 * low, sigfig 3 <= 5.
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

fn connect_any(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::ErrorKind::AddrNotAvailable.into()))
}

/// One stream: handshake, data phase, result.
fn run_stream(addrs: &[SocketAddr], spec: TestSpec) -> Result<StreamResult, String> {
    let mut ctrl = connect_any(addrs).map_err(|e| format!("cannot connect: {e}"))?;
    let ctrl_err = |e: io::Error| format!("control connection: {e}");
    ctrl.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .and_then(|()| ctrl.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
        .and_then(|()| ctrl.set_nodelay(true))
        .map_err(ctrl_err)?;
    let mut rd = BufReader::new(ctrl.try_clone().map_err(ctrl_err)?);
    proto::send(
        &mut ctrl,
        &Msg::Hello {
            version: proto::VERSION,
            spec,
        },
    )
    .map_err(ctrl_err)?;
    let data_port = match proto::recv(&mut rd) {
        Ok(Msg::Ready { data_port }) => data_port,
        Ok(Msg::Error { message }) => return Err(format!("server refused the test: {message}")),
        Ok(other) => return Err(format!("unexpected reply {other:?}")),
        Err(e) if is_timeout(&e) => return Err("server did not answer the handshake".into()),
        Err(e) => return Err(ctrl_err(e)),
    };
    let mut data_addr = ctrl.peer_addr().map_err(ctrl_err)?;
    data_addr.set_port(data_port);

    let duration = Duration::from_millis(spec.duration_ms);
    let data_err = |e: io::Error| format!("data connection to {data_addr}: {e}");
    let local = match spec.test {
        TestKind::TcpStream => tcp_send(data_addr, spec.msg_size, duration),
        TestKind::TcpMaerts => tcp_recv(data_addr, duration),
        TestKind::UdpStream => udp_send(data_addr, spec.msg_size, duration),
        TestKind::TcpRr => rr(data_addr, spec.req_size, spec.resp_size, duration),
        TestKind::TcpCrr => crr(data_addr, spec.req_size, spec.resp_size, duration),
    }
    .map_err(data_err)?;

    ctrl.set_read_timeout(Some(RESULT_TIMEOUT))
        .and_then(|()| ctrl.set_write_timeout(Some(RESULT_TIMEOUT)))
        .map_err(ctrl_err)?;
    proto::send(&mut ctrl, &Msg::Done).map_err(ctrl_err)?;
    let (remote_bytes, remote_count, remote_elapsed) = match proto::recv(&mut rd) {
        Ok(Msg::Result {
            bytes,
            count,
            elapsed_s,
        }) => (
            bytes,
            count,
            Duration::try_from_secs_f64(elapsed_s).unwrap_or_default(),
        ),
        Ok(Msg::Error { message }) => return Err(format!("server: {message}")),
        Ok(other) => return Err(format!("unexpected reply {other:?}")),
        Err(e) if is_timeout(&e) => return Err("server did not send its result".into()),
        Err(e) => return Err(ctrl_err(e)),
    };
    Ok(StreamResult {
        local_bytes: local.bytes,
        local_count: local.count,
        local_elapsed: local.elapsed,
        send_errors: local.send_errors,
        hist: local.hist,
        remote_bytes,
        remote_count,
        remote_elapsed,
    })
}

fn data_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    net::prep_stream(&s)?;
    Ok(s)
}

/// TCP_STREAM: write `msg_size` chunks for `duration`, then half-close.
fn tcp_send(addr: SocketAddr, msg_size: usize, duration: Duration) -> io::Result<Local> {
    let mut s = data_connect(addr)?;
    let buf = vec![0x5au8; msg_size];
    let t0 = Instant::now();
    let end = t0 + duration;
    let mut bytes = 0u64;
    let mut now = t0;
    while now < end {
        match s.write(&buf) {
            Ok(n) => bytes += n as u64,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        now = Instant::now();
    }
    s.shutdown(std::net::Shutdown::Write)?;
    Ok(Local {
        bytes,
        elapsed: now - t0,
        ..Local::default()
    })
}

/// TCP_MAERTS: read until the server closes after its `duration`.
fn tcp_recv(addr: SocketAddr, duration: Duration) -> io::Result<Local> {
    let mut s = data_connect(addr)?;
    let mut buf = vec![0u8; READ_BUF];
    let t0 = Instant::now();
    let give_up = t0 + duration + DRAIN;
    let mut bytes = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(e) if is_timeout(&e) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if Instant::now() >= give_up {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "server did not end the stream",
            ));
        }
    }
    Ok(Local {
        bytes,
        elapsed: t0.elapsed(),
        ..Local::default()
    })
}

/// UDP_STREAM: send `msg_size` datagrams for `duration`.
fn udp_send(addr: SocketAddr, msg_size: usize, duration: Duration) -> io::Result<Local> {
    let any: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any)?;
    s.connect(addr)?;
    s.set_write_timeout(Some(net::TICK))?;
    let buf = vec![0x5au8; msg_size];
    let t0 = Instant::now();
    let end = t0 + duration;
    let mut local = Local::default();
    let mut now = t0;
    while now < end {
        match s.send(&buf) {
            Ok(n) => {
                local.bytes += n as u64;
                local.count += 1;
            }
            // A full device queue: the datagram is lost on our side.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) || is_timeout(&e) => {
                local.send_errors += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        now = Instant::now();
    }
    local.elapsed = now - t0;
    Ok(local)
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
}

fn short_response(f: Fill) -> io::Error {
    match f {
        Fill::Eof => io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"),
        _ => io::Error::new(io::ErrorKind::TimedOut, "server stopped responding"),
    }
}

/// TCP_RR: back-to-back transactions on one connection.
fn rr(
    addr: SocketAddr,
    req_size: usize,
    resp_size: usize,
    duration: Duration,
) -> io::Result<Local> {
    let mut s = data_connect(addr)?;
    let req = vec![0x5au8; req_size];
    let mut resp = vec![0u8; resp_size];
    let mut hist = new_hist();
    let t0 = Instant::now();
    let end = t0 + duration;
    let give_up = end + DRAIN;
    let mut count = 0u64;
    let mut now = t0;
    while now < end {
        net::write_full(&mut s, &req, give_up)?;
        match net::read_full(&mut s, &mut resp, give_up, None)? {
            Fill::Full => {}
            f => return Err(short_response(f)),
        }
        let t = Instant::now();
        record(&mut hist, t - now);
        count += 1;
        now = t;
    }
    Ok(Local {
        count,
        elapsed: now - t0,
        hist: Some(hist),
        ..Local::default()
    })
}

/// TCP_CRR: connect, one transaction, close, for `duration`.
fn crr(
    addr: SocketAddr,
    req_size: usize,
    resp_size: usize,
    duration: Duration,
) -> io::Result<Local> {
    let req = vec![0x5au8; req_size];
    let mut resp = vec![0u8; resp_size];
    let mut hist = new_hist();
    let t0 = Instant::now();
    let end = t0 + duration;
    let give_up = end + DRAIN;
    let mut count = 0u64;
    let mut now = t0;
    while now < end {
        let mut s = data_connect(addr)?;
        net::write_full(&mut s, &req, give_up)?;
        match net::read_full(&mut s, &mut resp, give_up, None)? {
            Fill::Full => {}
            f => return Err(short_response(f)),
        }
        drop(s);
        let t = Instant::now();
        record(&mut hist, t - now);
        count += 1;
        now = t;
    }
    Ok(Local {
        count,
        elapsed: now - t0,
        hist: Some(hist),
        ..Local::default()
    })
}
