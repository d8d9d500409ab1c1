//! `uipd-perf -s`: serves tests, one thread per control connection.
//!
//! Per test: read `Hello` (≤ [`HELLO_TIMEOUT`]), bind a data socket on the
//! address the client reached us at (port 0), answer `Ready`, and run the
//! data side on its own thread while the control thread waits for `Done`.
//! `Done` (or the control connection dying) sets the stop flag; the data
//! thread then drains for at most one idle [`TICK`] and the server answers
//! `Result`. Whatever the client does, the data phase ends by
//! `Ready + duration + SLACK`, so a test never outlives its duration by more
//! than a few seconds, and at most [`MAX_ACTIVE`] tests run at once.

use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::net::{self, Fill, TICK, is_timeout, stopped};
use crate::proto::{self, Msg, TestKind, TestSpec};

/// How long a new control connection may take to send `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Write timeout on the control connection.
const CTRL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Allowance past the test duration for the client to connect and drain.
const SLACK: Duration = Duration::from_secs(5);
/// Per-connection bound on a TCP_CRR request, response and close.
const CRR_CONN_TIMEOUT: Duration = Duration::from_secs(2);
/// Size of the server's read buffer for stream tests.
const READ_BUF: usize = 128 << 10;
/// Receive buffer asked for on UDP data sockets.
const UDP_RCVBUF: usize = 4 << 20;
/// Tests served at once; more are refused with an `Error`.
const MAX_ACTIVE: usize = 64;

/// Server settings from the command line.
pub struct Opts {
    /// Address to listen on.
    pub bind: IpAddr,
    /// Control port (0: any free port).
    pub port: u16,
    /// Exit after the first test.
    pub once: bool,
}

/// What the data side measured.
struct Measured {
    bytes: u64,
    count: u64,
    elapsed: Duration,
}

/// Runs the server until killed (or after one test with `once`).
pub fn run(opts: &Opts) -> Result<(), String> {
    let l = TcpListener::bind((opts.bind, opts.port)).map_err(|e| {
        format!(
            "cannot listen on {}: {e}",
            SocketAddr::from((opts.bind, opts.port))
        )
    })?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    println!("uipd-perf: listening on {local}");
    // The test harness reads the port from this line; push it out now.
    io::stdout().flush().map_err(|e| e.to_string())?;

    if opts.once {
        let (ctrl, peer) = l.accept().map_err(|e| format!("accept: {e}"))?;
        return serve(ctrl, peer).map_err(|e| format!("{peer}: {e}"));
    }
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let (mut ctrl, peer) = match l.accept() {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept: {e}");
                thread::sleep(TICK);
                continue;
            }
        };
        let Some(slot) = Slot::take(&active) else {
            log::warn!("{peer}: refused, {MAX_ACTIVE} tests already running");
            let _ = ctrl.set_write_timeout(Some(CTRL_WRITE_TIMEOUT));
            let _ = proto::send(
                &mut ctrl,
                &Msg::Error {
                    message: format!("server busy: {MAX_ACTIVE} tests running"),
                },
            );
            continue;
        };
        let spawned = thread::Builder::new()
            .name(format!("uipd-perf-{}", peer.port()))
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = serve(ctrl, peer) {
                    log::warn!("{peer}: {e}");
                }
            });
        // On failure the closure, and with it the slot, is dropped unrun.
        if let Err(e) = spawned {
            log::warn!("{peer}: cannot spawn a thread: {e}");
        }
    }
}

/// One of [`MAX_ACTIVE`] test slots, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Option<Self> {
        // Relaxed: an admission counter only; it guards no other data.
        let prev = active.fetch_add(1, Ordering::Relaxed);
        let slot = Self(Arc::clone(active));
        (prev < MAX_ACTIVE).then_some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tells the client why, then returns the same message as an error.
fn refuse(ctrl: &mut TcpStream, message: String) -> Result<(), String> {
    let _ = proto::send(
        ctrl,
        &Msg::Error {
            message: message.clone(),
        },
    );
    Err(message)
}

/// Runs one test on a fresh control connection.
fn serve(mut ctrl: TcpStream, peer: SocketAddr) -> Result<(), String> {
    let io_err = |what: &str, e: io::Error| format!("{what}: {e}");
    ctrl.set_read_timeout(Some(HELLO_TIMEOUT))
        .and_then(|()| ctrl.set_write_timeout(Some(CTRL_WRITE_TIMEOUT)))
        .and_then(|()| ctrl.set_nodelay(true))
        .map_err(|e| io_err("control socket", e))?;
    let mut rd = BufReader::new(ctrl.try_clone().map_err(|e| io_err("control socket", e))?);

    let spec = match proto::recv(&mut rd).map_err(|e| io_err("reading hello", e))? {
        Msg::Hello { version, spec } if version == proto::VERSION => spec,
        Msg::Hello { version, .. } => {
            return refuse(
                &mut ctrl,
                format!(
                    "protocol version {version} unsupported, want {}",
                    proto::VERSION
                ),
            );
        }
        other => return refuse(&mut ctrl, format!("expected hello, got {other:?}")),
    };
    if let Err(m) = spec.validate() {
        return refuse(&mut ctrl, m);
    }
    let sizes = if spec.test.is_rr() {
        format!("request {} B, response {} B", spec.req_size, spec.resp_size)
    } else {
        format!("message {} B", spec.msg_size)
    };
    log::info!(
        "{peer}: {} for {} ms, {sizes}",
        spec.test.name(),
        spec.duration_ms
    );

    // Data socket on the address the client used, so it is reachable the
    // same way (family, interface and IPv6 scope included).
    let mut data_addr = ctrl.local_addr().map_err(|e| io_err("control socket", e))?;
    data_addr.set_port(0);
    let data = match DataSocket::bind(spec.test, data_addr) {
        Ok(d) => d,
        Err(e) => return refuse(&mut ctrl, format!("cannot bind data socket: {e}")),
    };
    let data_port = match data.port() {
        Ok(p) => p,
        Err(e) => return refuse(&mut ctrl, format!("data socket: {e}")),
    };

    let duration = Duration::from_millis(spec.duration_ms);
    let deadline = Instant::now() + duration + SLACK;
    let stop = Arc::new(AtomicBool::new(false));
    proto::send(&mut ctrl, &Msg::Ready { data_port }).map_err(|e| io_err("sending ready", e))?;

    let worker = {
        let stop = Arc::clone(&stop);
        thread::Builder::new()
            .name(format!("uipd-perf-d{data_port}"))
            .spawn(move || data.run(spec, deadline, &stop))
            .map_err(|e| io_err("spawning data thread", e))?
    };

    // Wait for Done; the read timeout keeps this within the data deadline.
    let wait = deadline.saturating_duration_since(Instant::now()) + TICK;
    let done = ctrl
        .set_read_timeout(Some(wait))
        .and_then(|()| proto::recv(&mut rd));
    // Relaxed: the data thread only polls the flag; `join` below orders the
    // measured values.
    stop.store(true, Ordering::Relaxed);
    let measured = worker
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("data thread panicked")));

    match done {
        Ok(Msg::Done) => {}
        Ok(other) => return refuse(&mut ctrl, format!("expected done, got {other:?}")),
        Err(e) if is_timeout(&e) => {
            return refuse(&mut ctrl, "client never finished the test".into());
        }
        Err(e) => return Err(io_err("waiting for done", e)),
    }
    match measured {
        Ok(m) => {
            log::info!(
                "{peer}: {} done, {} bytes, {} count, {:.3} s",
                spec.test.name(),
                m.bytes,
                m.count,
                m.elapsed.as_secs_f64()
            );
            proto::send(
                &mut ctrl,
                &Msg::Result {
                    bytes: m.bytes,
                    count: m.count,
                    elapsed_s: m.elapsed.as_secs_f64(),
                },
            )
            .map_err(|e| io_err("sending result", e))?;
            // Let the client read the result before we close.
            let _ = ctrl.shutdown(Shutdown::Write);
            Ok(())
        }
        Err(e) => refuse(&mut ctrl, format!("data phase failed: {e}")),
    }
}

/// The per-test data socket.
enum DataSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl DataSocket {
    fn bind(test: TestKind, addr: SocketAddr) -> io::Result<Self> {
        if test == TestKind::UdpStream {
            let s = UdpSocket::bind(addr)?;
            net::set_rcvbuf(&s, UDP_RCVBUF);
            s.set_read_timeout(Some(TICK))?;
            Ok(Self::Udp(s))
        } else {
            let l = TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(Self::Tcp(l))
        }
    }

    fn port(&self) -> io::Result<u16> {
        Ok(match self {
            Self::Tcp(l) => l.local_addr()?.port(),
            Self::Udp(s) => s.local_addr()?.port(),
        })
    }

    /// Runs the server side of the data phase; takes ownership of the socket
    /// so it is closed when the phase ends.
    fn run(self, spec: TestSpec, deadline: Instant, stop: &AtomicBool) -> io::Result<Measured> {
        let duration = Duration::from_millis(spec.duration_ms);
        match (self, spec.test) {
            (Self::Udp(s), _) => udp_sink(&s, deadline, stop),
            (Self::Tcp(l), TestKind::TcpStream) => tcp_sink(&l, deadline, stop),
            (Self::Tcp(l), TestKind::TcpMaerts) => {
                tcp_source(&l, spec.msg_size, duration, deadline, stop)
            }
            (Self::Tcp(l), TestKind::TcpRr) => {
                rr_serve(&l, spec.req_size, spec.resp_size, deadline, stop)
            }
            (Self::Tcp(l), TestKind::TcpCrr | TestKind::UdpStream) => {
                crr_serve(&l, spec.req_size, spec.resp_size, deadline, stop)
            }
        }
    }
}

fn accept(l: &TcpListener, deadline: Instant, stop: &AtomicBool) -> io::Result<TcpStream> {
    net::accept_until(l, deadline, Some(stop))?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "client never connected to the data port",
        )
    })
}

/// TCP_STREAM: read until EOF; elapsed runs from accept to the last byte.
fn tcp_sink(l: &TcpListener, deadline: Instant, stop: &AtomicBool) -> io::Result<Measured> {
    let mut s = accept(l, deadline, stop)?;
    let mut buf = vec![0u8; READ_BUF];
    let t0 = Instant::now();
    let mut last = t0;
    let mut bytes = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                bytes += n as u64;
                last = Instant::now();
                if last >= deadline {
                    break;
                }
            }
            Err(e) if is_timeout(&e) => {
                if stopped(stop) || Instant::now() >= deadline {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Measured {
        bytes,
        count: 0,
        elapsed: last - t0,
    })
}

/// TCP_MAERTS: write `msg_size` chunks for `duration`, then close.
fn tcp_source(
    l: &TcpListener,
    msg_size: usize,
    duration: Duration,
    deadline: Instant,
    stop: &AtomicBool,
) -> io::Result<Measured> {
    let mut s = accept(l, deadline, stop)?;
    let buf = vec![0xa5u8; msg_size];
    let t0 = Instant::now();
    let end = (t0 + duration).min(deadline);
    let mut bytes = 0u64;
    let mut now = t0;
    while now < end && !stopped(stop) {
        match s.write(&buf) {
            Ok(n) => bytes += n as u64,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        now = Instant::now();
    }
    // FIN tells the client the stream is over; queued data still goes out.
    let _ = s.shutdown(Shutdown::Write);
    Ok(Measured {
        bytes,
        count: 0,
        elapsed: now - t0,
    })
}

/// UDP_STREAM: count datagrams until stopped and idle for a tick.
fn udp_sink(s: &UdpSocket, deadline: Instant, stop: &AtomicBool) -> io::Result<Measured> {
    let mut buf = vec![0u8; 65536];
    let mut first = None;
    let mut last = Instant::now();
    let (mut bytes, mut count) = (0u64, 0u64);
    loop {
        match s.recv(&mut buf) {
            Ok(n) => {
                last = Instant::now();
                first.get_or_insert(last);
                bytes += n as u64;
                count += 1;
                if last >= deadline {
                    break;
                }
            }
            Err(e) if is_timeout(&e) => {
                if stopped(stop) || Instant::now() >= deadline {
                    break;
                }
            }
            // ICMP errors from earlier sends cannot occur (we never send),
            // but a signal can.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Measured {
        bytes,
        count,
        elapsed: first.map_or(Duration::ZERO, |f| last - f),
    })
}

/// TCP_RR: answer each `req_size` request with `resp_size` bytes until EOF.
fn rr_serve(
    l: &TcpListener,
    req_size: usize,
    resp_size: usize,
    deadline: Instant,
    stop: &AtomicBool,
) -> io::Result<Measured> {
    let mut s = accept(l, deadline, stop)?;
    let mut req = vec![0u8; req_size];
    let resp = vec![0x5au8; resp_size];
    let t0 = Instant::now();
    let mut last = t0;
    let mut count = 0u64;
    while net::read_full(&mut s, &mut req, deadline, Some(stop))? == Fill::Full {
        net::write_full(&mut s, &resp, deadline)?;
        count += 1;
        last = Instant::now();
    }
    Ok(Measured {
        bytes: count * (req_size + resp_size) as u64,
        count,
        elapsed: last - t0,
    })
}

/// TCP_CRR: per connection, answer one request, then wait for the client's
/// close (netperf's order, so TIME_WAIT stays on the client).
fn crr_serve(
    l: &TcpListener,
    req_size: usize,
    resp_size: usize,
    deadline: Instant,
    stop: &AtomicBool,
) -> io::Result<Measured> {
    let mut req = vec![0u8; req_size];
    let resp = vec![0x5au8; resp_size];
    let mut tail = [0u8; 1];
    let t0 = Instant::now();
    let mut last = t0;
    let mut count = 0u64;
    while let Some(mut s) = net::accept_until(l, deadline, Some(stop))? {
        let conn_deadline = (Instant::now() + CRR_CONN_TIMEOUT).min(deadline);
        let one = net::read_full(&mut s, &mut req, conn_deadline, None).and_then(|got| {
            if got != Fill::Full {
                return Ok(false);
            }
            net::write_full(&mut s, &resp, conn_deadline)?;
            // Anything but a close here is a client out of step; drop it.
            net::read_full(&mut s, &mut tail, conn_deadline, None)?;
            Ok(true)
        });
        match one {
            Ok(true) => {
                count += 1;
                last = Instant::now();
            }
            Ok(false) => {}
            Err(e) => log::debug!("TCP_CRR connection: {e}"),
        }
    }
    Ok(Measured {
        bytes: count * (req_size + resp_size) as u64,
        count,
        elapsed: last - t0,
    })
}
