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
//! ```text
//!  VMM ──(unix socket)── relay ──(abstract unix socket)── vhost crate handler thread
//! ```
//!
//! Only control messages cross the relay; the data path (guest memory,
//! kick and call eventfds) never does.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// `VHOST_USER_SET_FEATURES`.
const SET_FEATURES: u32 = 2;
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
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
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
        s.read_exact(&mut hdr[n..])?;
    }
    let field = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let (request, flags, size) = (field(0), field(4), field(8));
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > MAX_BODY {
        return Err(invalid(format!(
            "vhost-user message {request} with a {size}-byte body (limit {MAX_BODY})"
        )));
    }
    let mut body = vec![0u8; size];
    let mut s = sock;
    s.read_exact(&mut body)?;
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

/// What the relay knows of the negotiation so far.
#[derive(Default)]
struct Negotiation {
    features: Option<u64>,
    protocol: u64,
    /// Ring enable states asked for too early: ring index → state.
    held: std::collections::BTreeMap<u32, u32>,
}

impl Negotiation {
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
    while !stop.load(Ordering::Relaxed) {
        let (from_vmm, from_handler) = wait_readable(vmm.as_raw_fd(), handler.as_raw_fd())?;
        if from_vmm {
            let Some(m) = recv(vmm)? else {
                return Ok(st);
            };
            st.from_vmm += 1;
            log::debug!(
                "vhost-user: VMM request {} flags {:#x} body {} bytes, {} fds",
                m.request,
                m.flags,
                m.body.len(),
                m.fds.len()
            );
            neg.note(&m);
            if neg.premature(&m) {
                st.swallowed += 1;
                neg.hold(&m);
                log::debug!("vhost-user: early SET_VRING_ENABLE (before SET_FEATURES) held");
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
                return Ok(st);
            };
            st.to_vmm += 1;
            log::debug!(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(request: u32, flags: u32, body: &[u8]) -> Message {
        Message {
            request,
            flags,
            body: body.to_vec(),
            fds: Vec::new(),
        }
    }

    /// Run the relay between two socket pairs; returns (vmm end, handler
    /// end) as the test sees them.
    fn harness() -> (UnixStream, UnixStream, std::thread::JoinHandle<RelayStats>) {
        let (vmm_test, vmm_relay) = UnixStream::pair().unwrap();
        let (h_relay, h_test) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            relay(&vmm_relay, &h_relay, &AtomicBool::new(false)).unwrap()
        });
        for s in [&vmm_test, &h_test] {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
        }
        (vmm_test, h_test, t)
    }

    #[test]
    fn swallows_early_vring_enable_acks_it_and_passes_the_rest_with_fds() {
        let (vmm, handler, t) = harness();
        // SET_PROTOCOL_FEATURES with REPLY_ACK, passed through.
        send(
            &vmm,
            &msg(
                SET_PROTOCOL_FEATURES,
                VERSION,
                &PROTOCOL_F_REPLY_ACK.to_le_bytes(),
            ),
        )
        .unwrap();
        let m = recv(&handler).unwrap().unwrap();
        assert_eq!(m.request, SET_PROTOCOL_FEATURES);
        // Early SET_VRING_ENABLE with need-reply: acked by the relay, not
        // forwarded.
        let mut state = [0u8; 8];
        state[4] = 1;
        send(
            &vmm,
            &msg(SET_VRING_ENABLE, VERSION | FLAG_NEED_REPLY, &state),
        )
        .unwrap();
        let ack = recv(&vmm).unwrap().unwrap();
        assert_eq!(ack.request, SET_VRING_ENABLE);
        assert_eq!(ack.flags & FLAG_REPLY, FLAG_REPLY);
        assert_eq!(ack.body, 0u64.to_le_bytes());
        // A message with an fd (SET_VRING_KICK) crosses with its fd.
        let (a, mut b) = UnixStream::pair().unwrap();
        let m = Message {
            request: 12,
            flags: VERSION,
            body: 0u64.to_le_bytes().to_vec(),
            fds: vec![OwnedFd::from(a)],
        };
        send(&vmm, &m).unwrap();
        let got = recv(&handler).unwrap().unwrap();
        assert_eq!(got.request, 12);
        assert_eq!(got.fds.len(), 1);
        let mut through = UnixStream::from(got.fds.into_iter().next().unwrap());
        through.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        b.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        // After SET_FEATURES with PROTOCOL_FEATURES, the held state is
        // replayed, and SET_VRING_ENABLE passes through.
        send(
            &vmm,
            &msg(SET_FEATURES, VERSION, &F_PROTOCOL_FEATURES.to_le_bytes()),
        )
        .unwrap();
        assert_eq!(recv(&handler).unwrap().unwrap().request, SET_FEATURES);
        let replayed = recv(&handler).unwrap().unwrap();
        assert_eq!(replayed.request, SET_VRING_ENABLE);
        assert_eq!(replayed.body, state);
        assert_eq!(replayed.flags & FLAG_NEED_REPLY, 0);
        send(&vmm, &msg(SET_VRING_ENABLE, VERSION, &state)).unwrap();
        assert_eq!(recv(&handler).unwrap().unwrap().request, SET_VRING_ENABLE);
        // Replies go back to the VMM.
        send(&handler, &msg(1, VERSION | FLAG_REPLY, &7u64.to_le_bytes())).unwrap();
        let r = recv(&vmm).unwrap().unwrap();
        assert_eq!((r.request, r.body), (1, 7u64.to_le_bytes().to_vec()));
        drop(vmm);
        let st = t.join().unwrap();
        assert_eq!(st.swallowed, 1);
        assert_eq!(st.replayed, 1);
        assert_eq!(st.from_vmm, 5);
    }

    #[test]
    fn an_oversized_body_ends_the_relay_with_an_error() {
        let (vmm_test, vmm_relay) = UnixStream::pair().unwrap();
        let (h_relay, _h_test) = UnixStream::pair().unwrap();
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&5u32.to_le_bytes());
        hdr.extend_from_slice(&VERSION.to_le_bytes());
        hdr.extend_from_slice(&1_000_000u32.to_le_bytes());
        (&vmm_test).write_all(&hdr).unwrap();
        let e = relay(&vmm_relay, &h_relay, &AtomicBool::new(false)).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
    }
}
