//! Run-time control: the published ports the daemon serves, and the
//! control socket (`--control SOCKET`) with its client (`uipd ctl`).
//!
//! # Protocol
//!
//! A UNIX stream socket. The client sends one command line; the daemon
//! answers with lines and closes the connection. The first reply line is
//! `ok` or `error: MESSAGE`; for `list` the lines after `ok` are
//!
//! ```text
//!  forward 127.0.0.1:8080:80/tcp      one per published spec
//!  worker 0 flows 3                   live flows per worker
//!  counter rx_frames 1234             totals over the workers
//! ```
//!
//! Commands: `list`, `add SPEC`, `remove SPEC` (SPEC as for `--publish`;
//! `remove` takes any spelling of a spec that was added, and only whole
//! specs). The daemon serves one client at a time from its control thread,
//! with a 2 s limit on reading the command; a reply to `add` means the
//! port listens, a reply to `remove` means it no longer accepts.
//!
//! # Where the work happens
//!
//! The control thread binds (so errors, such as a port in use, go back to
//! the client or to start-up) and hands each bound socket to worker 0
//! as a [`Command::Publish`]; the worker accepts and receives on it
//! with its io_uring and owns the flows. The worker answers each such
//! command on a reply channel once it is in effect, and the control
//! thread waits (bounded) on that channel.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};

use crate::dataplane::worker::{self, Command, PublishCmd, Shared, WorkerStats};
use crate::publish::{self, PubProto, PublishSpec};
use crate::rings::FrameRing;
use crate::stack::{Counters, Proto};

/// Longest wait for a worker to carry out a command or publish stats.
const WORKER_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for a client's command line.
const READ_LIMIT: Duration = Duration::from_secs(2);
/// Longest command line.
const LINE_MAX: u64 = 4096;

/// The published ports, and how to reach the worker that serves them.
pub struct Forwards {
    entries: Vec<(PublishSpec, Vec<u32>)>,
    next_id: u32,
    /// Commands not yet handed to the worker.
    pending: Vec<PublishCmd>,
    /// Commands handed to the worker so far.
    sent: u64,
    /// Commands the worker reported carried out so far.
    done: u64,
    /// The worker's reports: how many commands each `Publish` held.
    done_tx: Sender<u64>,
    done_rx: Receiver<u64>,
}

impl Default for Forwards {
    fn default() -> Self {
        // Unbounded: the worker never blocks on a report; `flush` folds
        // the reports in, so at most one per flush waits here.
        let (done_tx, done_rx) = crossbeam::channel::unbounded();
        Forwards {
            entries: Vec::new(),
            next_id: 0,
            pending: Vec::new(),
            sent: 0,
            done: 0,
            done_tx,
            done_rx,
        }
    }
}

impl Forwards {
    /// No forwards.
    pub fn new() -> Forwards {
        Forwards::default()
    }

    /// Bind every port of `spec` and queue them for the worker
    /// ([`Forwards::flush`]). A spec already served is an error.
    pub fn add(&mut self, spec: &PublishSpec) -> Result<(), String> {
        if self.entries.iter().any(|(s, _)| s == spec) {
            return Err(format!("{spec} is already published"));
        }
        let bound = publish::bind(spec, &spec.to_string()).map_err(|e| {
            let mut m = e.to_string();
            m.push_str(&format!(": {}", e.source));
            m
        })?;
        self.insert(spec.clone(), bound);
        Ok(())
    }

    /// Serve `spec` through the sockets already bound for it (`bound`,
    /// each with its guest port), queued for the worker.
    pub fn insert(&mut self, spec: PublishSpec, bound: Vec<publish::Bound>) {
        let mut ids = Vec::new();
        for b in bound {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            ids.push(id);
            self.pending.push(PublishCmd::Add {
                id,
                proto: match b.proto {
                    PubProto::Tcp => Proto::Tcp,
                    PubProto::Udp => Proto::Udp,
                },
                guest_port: b.guest_port,
                fd: b.fd,
            });
        }
        self.entries.push((spec, ids));
    }

    /// Whether a served spec listens on host port `port` of `proto` at
    /// `addr` (or at an address that overlaps it: either unspecified).
    pub fn serves(&self, addr: std::net::IpAddr, port: u16, proto: PubProto) -> bool {
        self.entries.iter().any(|(s, _)| {
            s.proto == proto
                && (s.host_port..=s.host_port.saturating_add(s.count.saturating_sub(1)))
                    .contains(&port)
                && s.addr.is_ipv4() == addr.is_ipv4()
                && (s.addr == addr || s.addr.is_unspecified() || addr.is_unspecified())
        })
    }

    /// Stop serving `spec` (queued for the worker).
    pub fn remove(&mut self, spec: &PublishSpec) -> Result<(), String> {
        let Some(i) = self.entries.iter().position(|(s, _)| s == spec) else {
            return Err(format!("{spec} is not published"));
        };
        let (_, ids) = self.entries.remove(i);
        self.pending
            .extend(ids.into_iter().map(|id| PublishCmd::Remove { id }));
        Ok(())
    }

    /// The specs served.
    pub fn specs(&self) -> impl Iterator<Item = &PublishSpec> {
        self.entries.iter().map(|(s, _)| s)
    }

    /// Hand queued commands to the worker and kick it.
    pub fn flush(&mut self, worker: &Shared, inbox: &FrameRing) {
        self.done += self.done_rx.try_iter().sum::<u64>();
        if self.pending.is_empty() {
            return;
        }
        let cmds = std::mem::take(&mut self.pending);
        let n = cmds.len() as u64;
        if worker.send(Command::Publish {
            cmds,
            done: self.done_tx.clone(),
        }) {
            self.sent += n;
        }
        inbox.kick();
    }

    /// Wait (at most `WORKER_WAIT`) until the worker carried out every
    /// command handed to it; false on time-out.
    pub fn wait(&mut self) -> bool {
        let end = Instant::now() + WORKER_WAIT;
        while self.done < self.sent {
            match self.done_rx.recv_deadline(end) {
                Ok(n) => self.done += n,
                Err(_) => return false,
            }
        }
        true
    }
}

/// Control socket set-up failed.
#[derive(Debug, thiserror::Error)]
#[error("--control {}: cannot listen", path.display())]
pub struct ControlError {
    /// The socket path.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// The control socket, served from the daemon's control thread.
pub struct Control {
    listener: UnixListener,
    /// The socket file, removed at the end (from inside the sandbox).
    file: crate::sandbox::Anchor,
}

impl Control {
    /// Listen on `path`. A stale socket file (nothing answers on it) is
    /// replaced; a live one is an error.
    pub fn bind(path: &Path) -> Result<Control, ControlError> {
        let err = |source| ControlError {
            path: path.into(),
            source,
        };
        if path.exists() && UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let file = crate::sandbox::Anchor::new(path).map_err(err)?;
        Ok(Control { listener, file })
    }

    /// Serve the clients waiting now (without blocking when there are none).
    pub fn poll(
        &mut self,
        forwards: &mut Forwards,
        workers: &[Arc<Shared>],
        inboxes: &[Arc<FrameRing>],
    ) {
        accept_waiting(&self.listener, |conn| {
            if let Err(e) = serve(conn, forwards, workers, inboxes) {
                log::debug!("control: client: {e}");
            }
        });
    }
}

/// Hand each client waiting on the non-blocking `listener` to `serve`, a
/// few at most (the control loop comes back soon), without blocking.
pub fn accept_waiting(listener: &UnixListener, mut serve: impl FnMut(UnixStream)) {
    for _ in 0..8 {
        let Ok((conn, _)) = listener.accept() else {
            return;
        };
        serve(conn);
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.file.remove();
    }
}

fn serve(
    conn: UnixStream,
    forwards: &mut Forwards,
    workers: &[Arc<Shared>],
    inboxes: &[Arc<FrameRing>],
) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(READ_LIMIT))?;
    conn.set_write_timeout(Some(READ_LIMIT))?;
    let mut line = String::new();
    BufReader::new((&conn).take(LINE_MAX)).read_line(&mut line)?;
    let reply = match execute(line.trim(), forwards, workers, inboxes) {
        Ok(body) => format!("ok\n{body}"),
        Err(e) => format!("error: {e}\n"),
    };
    (&conn).write_all(reply.as_bytes())
}

/// Carry out one command; the reply's body, or the error.
fn execute(
    line: &str,
    forwards: &mut Forwards,
    workers: &[Arc<Shared>],
    inboxes: &[Arc<FrameRing>],
) -> Result<String, String> {
    let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
    let arg = arg.trim();
    let (Some(w0), Some(in0)) = (workers.first(), inboxes.first()) else {
        return Err("no worker is running".into());
    };
    match cmd {
        "list" if arg.is_empty() => Ok(list(forwards, workers, inboxes)),
        "add" | "remove" => {
            let spec = PublishSpec::parse(arg).map_err(|e| e.to_string())?;
            if cmd == "add" {
                forwards.add(&spec)?;
            } else {
                forwards.remove(&spec)?;
            }
            forwards.flush(w0, in0);
            if !forwards.wait() {
                return Err("the worker did not answer in time".into());
            }
            log::info!("control: {cmd} {spec}");
            Ok(String::new())
        }
        _ => Err(format!(
            "unknown command '{line}' (list, add SPEC, remove SPEC)"
        )),
    }
}

fn list(forwards: &Forwards, workers: &[Arc<Shared>], inboxes: &[Arc<FrameRing>]) -> String {
    let mut s = String::new();
    for spec in forwards.specs() {
        s.push_str(&format!("forward {spec}\n"));
    }
    let stats = snapshot(workers, inboxes);
    let mut total = Counters::default();
    for (i, st) in stats.iter().enumerate() {
        s.push_str(&format!("worker {i} flows {}\n", st.flows));
        total.merge(&st.stack);
    }
    for (name, v) in total.iter() {
        if v != 0 || !name.starts_with("drops_") {
            s.push_str(&format!("counter {name} {v}\n"));
        }
    }
    for (name, v) in crate::daemon::memory_stats(&stats).iter() {
        s.push_str(&format!("counter {name} {v}\n"));
    }
    s
}

/// Ask every worker for fresh stats and wait (bounded) for them; a worker
/// that does not answer in time gives default stats.
pub fn snapshot(workers: &[Arc<Shared>], inboxes: &[Arc<FrameRing>]) -> Vec<WorkerStats> {
    let replies = workers.iter().map(|w| w.request_stats()).collect();
    inboxes.iter().for_each(|r| r.kick());
    worker::collect_stats(replies, Instant::now() + WORKER_WAIT)
}

/// The client side: send `command` to the daemon at `path` and return its
/// reply; `Err` holds the daemon's error message or the I/O failure.
pub fn request(path: &Path, command: &str) -> Result<String, String> {
    let mut conn = UnixStream::connect(path)
        .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
    let limit = Some(WORKER_WAIT * 3);
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    conn.set_read_timeout(limit).map_err(io)?;
    conn.set_write_timeout(limit).map_err(io)?;
    conn.write_all(format!("{command}\n").as_bytes())
        .map_err(io)?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).map_err(io)?;
    match reply.split_once('\n') {
        Some(("ok", body)) => Ok(body.to_string()),
        Some((first, _)) => Err(first.strip_prefix("error: ").unwrap_or(first).to_string()),
        None => Err(format!("no reply from {}", path.display())),
    }
}
