//! A vhost-user message relay between the VMM and the vhost crate's
//! request handler, for one front-end behaviour the crate refuses.
//!
//! QEMU (7.2 seen here) sends `SET_VRING_ENABLE` while it realizes a
//! virtio-net device, before the guest driver exists and so before
//! `SET_FEATURES`; the vhost crate (0.18) answers every such message with
//! an "inactive feature" error and drops the connection. QEMU sends them
//! again when the driver starts the device, still before `SET_FEATURES`,
//! and not after it. So the relay holds them back (acking when the
//! front-end asked for a reply), remembers the last state asked for each
//! ring, and replays those states to the handler right after it has
//! passed on a `SET_FEATURES` that acks the protocol-features bit.
//! Everything else goes through unchanged, file descriptors included.
//!
//! The relay is also where a misbehaving front-end is stopped, because it
//! sees every message before the crate acts on it. It refuses, with an
//! error naming the problem (and so closes that connection; the serve
//! loop, the workers and the next VMM are not affected):
//!
//! - a request number that is not in the vhost-user spec;
//! - a body over `MAX_BODY` (4 KiB), or one that does not arrive whole within
//!   [`BODY_TIMEOUT`] (a truncated message);
//! - a message that configures the device before `SET_OWNER`
//!   (`needs_owner`), and `SET_VRING_ADDR`/`SET_VRING_KICK` before
//!   `SET_MEM_TABLE`;
//! - a memory table that is malformed, has more or fewer file descriptors
//!   than regions, a region of size zero or one that wraps, regions that
//!   overlap in guest-physical or in the VMM's address space, or a region
//!   past the end of its (regular) file. vm-memory maps such a region
//!   without complaint, and the first access past the end would be a
//!   SIGBUS that kills the whole daemon. vm-memory does refuse overlapping
//!   guest-physical ranges, but with a message that names neither region;
//!   the VMM-address overlap it does not see at all (the crate's address
//!   translation would pick whichever region comes first);
//! - a `SET_VRING_NUM` that is not a power of two up to
//!   [`MAX_QUEUE_SIZE`](super::MAX_QUEUE_SIZE);
//! - a `SET_VRING_ADDR` whose descriptor table, available or used ring
//!   (sized from the last `SET_VRING_NUM`) is not wholly inside one region.
//!
//! What the relay cannot see: a VMM that shrinks a memory file after
//! `SET_MEM_TABLE` can still make a later access fault. The front-end is
//! the guest's VMM and owns that memory; uipd does not defend against it
//! corrupting its own guest.
//!
//! ```text
//!  VMM ──(unix socket)── relay ──(abstract unix socket)── vhost crate handler thread
//! ```
//!
//! Only control messages cross the relay; the data path (guest memory,
//! kick and call eventfds) never does.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// `VHOST_USER_SET_FEATURES`.
const SET_FEATURES: u32 = 2;
/// `VHOST_USER_SET_OWNER`.
const SET_OWNER: u32 = 3;
/// `VHOST_USER_RESET_OWNER`.
const RESET_OWNER: u32 = 4;
/// `VHOST_USER_SET_MEM_TABLE`.
const SET_MEM_TABLE: u32 = 5;
/// `VHOST_USER_SET_VRING_NUM`.
const SET_VRING_NUM: u32 = 8;
/// `VHOST_USER_SET_VRING_ADDR`.
const SET_VRING_ADDR: u32 = 9;
/// `VHOST_USER_SET_VRING_KICK`.
const SET_VRING_KICK: u32 = 12;
/// `VHOST_USER_SET_PROTOCOL_FEATURES`.
const SET_PROTOCOL_FEATURES: u32 = 16;
/// `VHOST_USER_SET_VRING_ENABLE`.
const SET_VRING_ENABLE: u32 = 18;
/// `VHOST_USER_F_PROTOCOL_FEATURES` (a virtio feature bit).
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VHOST_USER_PROTOCOL_F_REPLY_ACK`.
const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;
/// Header flags: version 1, reply, need-reply.
const VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 1 << 2;
const FLAG_NEED_REPLY: u32 = 1 << 3;
/// The largest message body uipd relays (the protocol's largest is a
/// memory table of 8 regions, 8 + 8 * 32 bytes; config space up to 256).
const MAX_BODY: usize = 4096;
/// Most file descriptors in one message (8 memory regions).
const MAX_FDS: usize = 32;
/// Poll timeout, so a stop request is seen.
const POLL_MS: libc::c_int = 200;
/// How long the rest of a message may take once its first byte arrived.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Debug lines per message-log call site and rate-limit window: a QEMU
/// session's setup (a few hundred messages) shows in full.
const MSG_BURST: u32 = 500;
/// Most memory regions in one `SET_MEM_TABLE` (`VHOST_MEMORY_BASELINE_NREGIONS`).
const MAX_REGIONS: usize = 8;

/// Front-end request names, by number (vhost-user spec, "Front-end
/// message types"); a number not here is refused.
const REQUESTS: [&str; 41] = [
    "GET_FEATURES",
    "SET_FEATURES",
    "SET_OWNER",
    "RESET_OWNER",
    "SET_MEM_TABLE",
    "SET_LOG_BASE",
    "SET_LOG_FD",
    "SET_VRING_NUM",
    "SET_VRING_ADDR",
    "SET_VRING_BASE",
    "GET_VRING_BASE",
    "SET_VRING_KICK",
    "SET_VRING_CALL",
    "SET_VRING_ERR",
    "GET_PROTOCOL_FEATURES",
    "SET_PROTOCOL_FEATURES",
    "GET_QUEUE_NUM",
    "SET_VRING_ENABLE",
    "SEND_RARP",
    "NET_SET_MTU",
    "SET_BACKEND_REQ_FD",
    "IOTLB_MSG",
    "SET_VRING_ENDIAN",
    "GET_CONFIG",
    "SET_CONFIG",
    "CREATE_CRYPTO_SESSION",
    "CLOSE_CRYPTO_SESSION",
    "POSTCOPY_ADVISE",
    "POSTCOPY_LISTEN",
    "POSTCOPY_END",
    "GET_INFLIGHT_FD",
    "SET_INFLIGHT_FD",
    "GPU_SET_SOCKET",
    "RESET_DEVICE",
    "VRING_KICK",
    "GET_MAX_MEM_SLOTS",
    "ADD_MEM_REG",
    "REM_MEM_REG",
    "SET_STATUS",
    "GET_STATUS",
    "GET_SHARED_OBJECT",
];

/// The spec's name of front-end request `request`, if it has one.
pub fn request_name(request: u32) -> Option<&'static str> {
    let i = usize::try_from(request).ok()?.checked_sub(1)?;
    REQUESTS.get(i).copied()
}

/// `NAME (n)` for logs.
pub fn describe(request: u32) -> String {
    match request_name(request) {
        Some(n) => format!("{n} ({request})"),
        None => format!("request {request}"),
    }
}

/// Requests that change the device's state, and so need `SET_OWNER`
/// first (vhost-user spec: `SET_OWNER` "sets the current front-end as an
/// owner of the session"; QEMU sends only the feature and queue-count
/// queries before it).
fn needs_owner(request: u32) -> bool {
    matches!(
        request_name(request),
        Some(
            "SET_FEATURES"
                | "SET_MEM_TABLE"
                | "SET_LOG_BASE"
                | "SET_LOG_FD"
                | "SET_VRING_NUM"
                | "SET_VRING_ADDR"
                | "SET_VRING_BASE"
                | "GET_VRING_BASE"
                | "SET_VRING_KICK"
                | "SET_VRING_CALL"
                | "SET_VRING_ERR"
                | "SET_VRING_ENABLE"
                | "SEND_RARP"
                | "NET_SET_MTU"
                | "SET_INFLIGHT_FD"
                | "ADD_MEM_REG"
                | "REM_MEM_REG"
        )
    )
}

/// A vhost-user message: 12-byte header, body, and the fds that came with
/// it.
struct Message {
    request: u32,
    flags: u32,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Counters of one relayed connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct RelayStats {
    /// Messages from the VMM.
    pub from_vmm: u64,
    /// Messages to the VMM.
    pub to_vmm: u64,
    /// Early `SET_VRING_ENABLE`s held back.
    pub swallowed: u64,
    /// Held ring states replayed after `SET_FEATURES`.
    pub replayed: u64,
    /// The crate's handler ended the connection (it refused a message):
    /// the last request passed to it.
    pub handler_closed: Option<u32>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The error for a message cut short while reading `what`.
fn truncated(e: io::Error, what: String) -> io::Error {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => invalid(format!(
            "truncated message: the connection ended inside {what}"
        )),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => invalid(format!(
            "truncated message: the rest of {what} did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        )),
        _ => e,
    }
}

/// Read one message; `Ok(None)` at a clean end of stream.
fn recv(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut hdr = [0u8; 12];
    let mut fds = [-1 as RawFd; MAX_FDS];
    let (n, nfds) = {
        let mut iov = [libc::iovec {
            iov_base: hdr.as_mut_ptr().cast(),
            iov_len: hdr.len(),
        }];
        // SAFETY: `iov` describes `hdr`, alive and writable for the call;
        // `fds` has room for MAX_FDS descriptors, and the received ones are
        // wrapped in OwnedFd just below, so none leaks.
        unsafe { sock.recv_with_fds(&mut iov, &mut fds) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?
    };
    let owned: Vec<OwnedFd> = fds[..nfds]
        .iter()
        // SAFETY: recvmsg just created these descriptors for this process;
        // nothing else owns them.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return Ok(None);
    }
    if n < hdr.len() {
        // The rest of a header that straddled reads.
        let mut s = sock;
        s.read_exact(&mut hdr[n..])
            .map_err(|e| truncated(e, format!("a message header ({n} of 12 bytes)")))?;
    }
    let field = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let (request, flags, size) = (field(0), field(4), field(8));
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > MAX_BODY {
        return Err(invalid(format!(
            "vhost-user {} with a {size}-byte body (limit {MAX_BODY})",
            describe(request)
        )));
    }
    let mut body = vec![0u8; size];
    let mut s = sock;
    s.read_exact(&mut body).map_err(|e| {
        truncated(
            e,
            format!("the {size}-byte body of vhost-user {}", describe(request)),
        )
    })?;
    Ok(Some(Message {
        request,
        flags,
        body,
        fds: owned,
    }))
}

/// Write one message with its fds.
fn send(sock: &UnixStream, m: &Message) -> io::Result<()> {
    let mut hdr = [0u8; 12];
    hdr[0..4].copy_from_slice(&m.request.to_le_bytes());
    hdr[4..8].copy_from_slice(&m.flags.to_le_bytes());
    // Cannot truncate: bodies are at most MAX_BODY.
    let size = u32::try_from(m.body.len()).unwrap_or(u32::MAX);
    hdr[8..12].copy_from_slice(&size.to_le_bytes());
    let fds: Vec<RawFd> = m.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let iov: [&[u8]; 2] = [&hdr, &m.body];
    let sent = sock
        .send_with_fds(&iov[..], &fds)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let total = hdr.len() + m.body.len();
    if sent < total {
        // Finish without fds (they went with the first byte).
        let mut all = Vec::with_capacity(total);
        all.extend_from_slice(&hdr);
        all.extend_from_slice(&m.body);
        let mut s = sock;
        s.write_all(&all[sent..])?;
    }
    Ok(())
}

/// One region of a memory table: guest-physical and VMM addresses.
#[derive(Clone, Copy, Debug)]
struct Region {
    gpa: u64,
    size: u64,
    vmm: u64,
}

/// What the relay knows of the negotiation so far.
#[derive(Default)]
struct Negotiation {
    features: Option<u64>,
    protocol: u64,
    /// Ring enable states asked for too early: ring index → state.
    held: BTreeMap<u32, u32>,
    /// `SET_OWNER` seen (and not undone by `RESET_OWNER`).
    owner: bool,
    /// The last memory table accepted.
    regions: Option<Vec<Region>>,
    /// Ring sizes from `SET_VRING_NUM`: ring index → entries.
    ring_num: BTreeMap<u32, u32>,
}

/// Little-endian words of a message body.
fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i + 4)?.try_into().ok().map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    b.get(i..i + 8)?.try_into().ok().map(u64::from_le_bytes)
}

/// The size of the file behind `fd`, when it is a regular file (memfds,
/// tmpfs and hugetlbfs files are); `None` for anything else.
fn regular_file_size(fd: &OwnedFd) -> Option<u64> {
    let f = std::fs::File::from(fd.try_clone().ok()?);
    let m = f.metadata().ok()?;
    m.file_type().is_file().then_some(m.len())
}

/// Parse and check a `SET_MEM_TABLE` body (u32 count, u32 padding, then
/// per region u64 guest address, size, VMM address, mmap offset) against
/// its fds; see the module docs for what is refused.
fn check_mem_table(m: &Message) -> io::Result<Vec<Region>> {
    let n = u32_at(&m.body, 0)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| invalid("SET_MEM_TABLE without a region count".into()))?;
    if n == 0 || n > MAX_REGIONS {
        return Err(invalid(format!(
            "SET_MEM_TABLE with {n} regions (1 to {MAX_REGIONS})"
        )));
    }
    if m.body.len() != 8 + 32 * n {
        return Err(invalid(format!(
            "SET_MEM_TABLE of {n} regions has a {}-byte body, not {}",
            m.body.len(),
            8 + 32 * n
        )));
    }
    if m.fds.len() != n {
        return Err(invalid(format!(
            "SET_MEM_TABLE lists {n} regions but carries {} file descriptor(s): a region is missing its memory",
            m.fds.len()
        )));
    }
    let mut regions = Vec::with_capacity(n);
    for (i, fd) in m.fds.iter().enumerate() {
        let at = 8 + 32 * i;
        let word = |k: usize| u64_at(&m.body, at + 8 * k).unwrap_or(0);
        let (gpa, size, vmm, offset) = (word(0), word(1), word(2), word(3));
        if size == 0 {
            return Err(invalid(format!("memory region {i} has size 0")));
        }
        let wraps = [gpa, vmm, offset]
            .iter()
            .any(|a| a.checked_add(size).is_none());
        if wraps {
            return Err(invalid(format!(
                "memory region {i} (size {size:#x}) wraps around the address space"
            )));
        }
        if let Some(len) = regular_file_size(fd) {
            if offset + size > len {
                return Err(invalid(format!(
                    "memory region {i} (offset {offset:#x}, size {size:#x}) extends past the end of its {len}-byte file"
                )));
            }
        }
        regions.push(Region { gpa, size, vmm });
    }
    for (i, a) in regions.iter().enumerate() {
        for (j, b) in regions.iter().enumerate().skip(i + 1) {
            let overlap = |x: u64, y: u64| x < y + b.size && y < x + a.size;
            if overlap(a.gpa, b.gpa) {
                return Err(invalid(format!(
                    "memory regions {i} ({:#x}+{:#x}) and {j} ({:#x}+{:#x}) overlap in guest-physical memory",
                    a.gpa, a.size, b.gpa, b.size
                )));
            }
            if overlap(a.vmm, b.vmm) {
                return Err(invalid(format!(
                    "memory regions {i} ({:#x}+{:#x}) and {j} ({:#x}+{:#x}) overlap in the VMM's address space",
                    a.vmm, a.size, b.vmm, b.size
                )));
            }
        }
    }
    Ok(regions)
}

impl Negotiation {
    /// Refuse a message out of order or with a bad memory table or vring
    /// address (module docs); remember what later checks need.
    fn check(&mut self, m: &Message) -> io::Result<()> {
        let Some(name) = request_name(m.request) else {
            return Err(invalid(format!(
                "unknown vhost-user request {} (flags {:#x}, {}-byte body)",
                m.request,
                m.flags,
                m.body.len()
            )));
        };
        if !self.owner && needs_owner(m.request) {
            return Err(invalid(format!(
                "{name} before SET_OWNER: the front-end does not own the device"
            )));
        }
        match m.request {
            SET_OWNER => self.owner = true,
            RESET_OWNER => self.owner = false,
            SET_MEM_TABLE => self.regions = Some(check_mem_table(m)?),
            SET_VRING_NUM => {
                if let (Some(i), Some(num)) = (u32_at(&m.body, 0), u32_at(&m.body, 4)) {
                    // virtio-queue ignores a size that is not a power of
                    // two with an error line per message and no error: a
                    // front-end could fill the log without being stopped.
                    let max = u32::try_from(super::MAX_QUEUE_SIZE).unwrap_or(u32::MAX);
                    if !num.is_power_of_two() || num > max {
                        return Err(invalid(format!(
                            "vring {i}: SET_VRING_NUM {num} (a power of two up to {max})"
                        )));
                    }
                    self.ring_num.insert(i, num);
                }
            }
            SET_VRING_ADDR | SET_VRING_KICK if self.regions.is_none() => {
                return Err(invalid(format!(
                    "{name} before SET_MEM_TABLE: no guest memory to place the ring in"
                )));
            }
            SET_VRING_ADDR => self.check_vring_addr(m)?,
            _ => {}
        }
        Ok(())
    }

    /// Each part of the ring must lie wholly inside one region (virtio 1.2
    /// §2.7: descriptor table 16 bytes per entry, available ring 6 + 2 per
    /// entry, used ring 6 + 8 per entry).
    fn check_vring_addr(&self, m: &Message) -> io::Result<()> {
        let (Some(index), Some(desc), Some(used), Some(avail)) = (
            u32_at(&m.body, 0),
            u64_at(&m.body, 8),
            u64_at(&m.body, 16),
            u64_at(&m.body, 24),
        ) else {
            return Err(invalid(format!(
                "SET_VRING_ADDR with a {}-byte body",
                m.body.len()
            )));
        };
        let num = u64::from(self.ring_num.get(&index).copied().unwrap_or(1).max(1));
        let regions = self.regions.as_deref().unwrap_or_default();
        for (what, addr, len) in [
            ("descriptor table", desc, 16 * num),
            ("available ring", avail, 6 + 2 * num),
            ("used ring", used, 6 + 8 * num),
        ] {
            let inside = regions.iter().any(|r| {
                addr >= r.vmm && addr.checked_add(len).is_some_and(|e| e <= r.vmm + r.size)
            });
            if !inside {
                return Err(invalid(format!(
                    "vring {index}: the {what} at VMM address {addr:#x} ({len} bytes) is outside guest memory"
                )));
            }
        }
        Ok(())
    }

    fn note(&mut self, m: &Message) {
        let word = || m.body.first_chunk::<8>().map(|b| u64::from_le_bytes(*b));
        match m.request {
            SET_FEATURES => self.features = word(),
            SET_PROTOCOL_FEATURES => self.protocol = word().unwrap_or(0),
            _ => {}
        }
    }

    /// A `SET_VRING_ENABLE` the handler would refuse: protocol features
    /// not (yet) acked with `SET_FEATURES`.
    fn premature(&self, m: &Message) -> bool {
        m.request == SET_VRING_ENABLE && !self.protocol_acked()
    }

    fn protocol_acked(&self) -> bool {
        self.features.is_some_and(|f| f & F_PROTOCOL_FEATURES != 0)
    }

    /// Remember an early ring state (body: u32 index, u32 state).
    fn hold(&mut self, m: &Message) {
        let word = |i: usize| {
            m.body
                .get(i..i + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
        };
        if let (Some(index), Some(num)) = (word(0), word(4)) {
            self.held.insert(index, num);
        }
    }

    /// The held ring states as messages for the handler, once it accepts
    /// them.
    fn replay(&mut self) -> Vec<Message> {
        if !self.protocol_acked() {
            return Vec::new();
        }
        std::mem::take(&mut self.held)
            .into_iter()
            .map(|(index, num)| {
                let mut body = index.to_le_bytes().to_vec();
                body.extend_from_slice(&num.to_le_bytes());
                Message {
                    request: SET_VRING_ENABLE,
                    flags: VERSION,
                    body,
                    fds: Vec::new(),
                }
            })
            .collect()
    }
}

fn wait_readable(a: RawFd, b: RawFd) -> io::Result<(bool, bool)> {
    let mut p = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `p` is an array of two valid pollfds alive across the call.
    let n = unsafe { libc::poll(p.as_mut_ptr(), 2, POLL_MS) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok((false, false))
        } else {
            Err(e)
        };
    }
    Ok((p[0].revents != 0, p[1].revents != 0))
}

/// Relay between `vmm` and `handler` until either side closes, an error,
/// or `stop`. Returns what crossed.
pub fn relay(vmm: &UnixStream, handler: &UnixStream, stop: &AtomicBool) -> io::Result<RelayStats> {
    let mut st = RelayStats::default();
    let mut neg = Negotiation::default();
    // A message, once begun, must arrive whole in time (a truncated one
    // must not hold the serve loop forever).
    vmm.set_read_timeout(Some(BODY_TIMEOUT))?;
    let mut last = 0;
    while !stop.load(Ordering::Relaxed) {
        let (from_vmm, from_handler) = wait_readable(vmm.as_raw_fd(), handler.as_raw_fd())?;
        if from_vmm {
            let Some(m) = recv(vmm)? else {
                return Ok(st);
            };
            st.from_vmm += 1;
            crate::log_limited!(
                log::Level::Debug,
                burst MSG_BURST,
                "vhost-user: VMM request {} flags {:#x} body {} bytes, {} fds",
                m.request,
                m.flags,
                m.body.len(),
                m.fds.len()
            );
            neg.check(&m)?;
            neg.note(&m);
            last = m.request;
            if neg.premature(&m) {
                st.swallowed += 1;
                neg.hold(&m);
                crate::log_limited!(
                    log::Level::Debug,
                    "vhost-user: early SET_VRING_ENABLE (before SET_FEATURES) held"
                );
                if m.flags & FLAG_NEED_REPLY != 0 && neg.protocol & PROTOCOL_F_REPLY_ACK != 0 {
                    let ack = Message {
                        request: m.request,
                        flags: VERSION | FLAG_REPLY,
                        body: 0u64.to_le_bytes().to_vec(),
                        fds: Vec::new(),
                    };
                    send(vmm, &ack)?;
                    st.to_vmm += 1;
                }
            } else {
                send(handler, &m)?;
                if m.request == SET_FEATURES {
                    for r in neg.replay() {
                        st.replayed += 1;
                        send(handler, &r)?;
                    }
                }
            }
        }
        if from_handler {
            let Some(m) = recv(handler)? else {
                st.handler_closed = Some(last);
                return Ok(st);
            };
            st.to_vmm += 1;
            crate::log_limited!(
                log::Level::Debug,
                burst MSG_BURST,
                "vhost-user: reply {} flags {:#x} body {:02x?}",
                m.request,
                m.flags,
                &m.body[..m.body.len().min(64)]
            );
            send(vmm, &m)?;
        }
    }
    Ok(st)
}

/// In-process driver for the fuzz targets (`fuzz/fuzz_targets/`); not an
/// API.
#[doc(hidden)]
pub mod fuzzing {
    use std::sync::OnceLock;

    use super::*;

    /// Memory files for `SET_MEM_TABLE` messages: memfds of 1 MiB, made
    /// once per process.
    fn pool() -> &'static [OwnedFd] {
        static POOL: OnceLock<Vec<OwnedFd>> = OnceLock::new();
        POOL.get_or_init(|| {
            (0..MAX_REGIONS)
                .filter_map(|_| {
                    // SAFETY: memfd_create takes a NUL-terminated name
                    // (a static C string) and flags; it returns a new fd
                    // or -1.
                    let fd =
                        unsafe { libc::memfd_create(c"uipd-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
                    if fd < 0 {
                        return None;
                    }
                    // SAFETY: `fd` was just created for this process and
                    // nothing else owns it.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    let f = std::fs::File::from(fd);
                    f.set_len(1 << 20).ok()?;
                    Some(OwnedFd::from(f))
                })
                .collect()
        })
    }

    /// Feeds a stream of messages to the relay's checks, as [`relay`]
    /// does with a front-end's: each is a 12-byte header (request, flags,
    /// body size, the size taken modulo what is left of the input), one
    /// byte saying how many memory fds come with it (modulo 9), and the
    /// body. Stops at the first message the relay refuses (it would close
    /// the connection). Returns how many messages passed.
    pub fn check_messages(mut data: &[u8]) -> usize {
        let mut neg = Negotiation::default();
        let mut passed = 0;
        while let Some((hdr, rest)) = data.split_first_chunk::<13>() {
            let field = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
            let size = usize::try_from(field(8)).unwrap_or(0) % (rest.len() + 1);
            let (body, rest) = rest.split_at(size);
            data = rest;
            let nfds = usize::from(hdr[12] % 9);
            let fds = pool()
                .iter()
                .take(nfds)
                .filter_map(|f| f.try_clone().ok())
                .collect();
            let m = Message {
                request: field(0),
                flags: field(4),
                body: body.to_vec(),
                fds,
            };
            if m.body.len() > MAX_BODY || neg.check(&m).is_err() {
                break;
            }
            neg.note(&m);
            if neg.premature(&m) {
                neg.hold(&m);
            } else if m.request == SET_FEATURES {
                let _ = neg.replay();
            }
            passed += 1;
        }
        passed
    }
}

#[cfg(test)]
mod tests;
