//! The stack's only contact with the world: socket operations it asks for
//! ([`SockOp`]) and what the host answered ([`HostEvent`]).
//!
//! The stack never performs I/O. It emits `SockOp`s into [`Actions`]; the
//! dataplane executes them (io_uring) and feeds the completions back as
//! `HostEvent`s. Every op and event names the flow by [`FlowId`], whose
//! generation makes completions for a closed-and-reused slot harmless: the
//! stack ignores events whose generation does not match.
//!
//! Rules the stack keeps (and the executor may rely on):
//! - `Open` comes first for a flow, and at most once per generation.
//! - For TCP, at most one `Send` and at most one `Recv` are outstanding per flow.
//! - For UDP/ICMP, several `Send`s may be outstanding, and one `Recv`
//!   starts continuous receiving: every datagram (or error) comes as its own
//!   `Received` until `Close`, with no further `Recv` (so the executor can
//!   keep a multishot receive armed and deliver a batch at once).
//! - After `Close`, the executor sends no further events for that flow.
//!
//! [`Actions`]: super::Actions

use std::net::SocketAddr;

use super::flow::FlowId;

/// A positive `errno` value from the host.
pub type Errno = i32;

/// Transport protocol of a host socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// `SOCK_STREAM`.
    Tcp,
    /// `SOCK_DGRAM`, connected to one peer.
    Udp,
    /// Unprivileged ping socket: `SOCK_DGRAM` + `IPPROTO_ICMP`, connected.
    Icmp,
}

/// A host socket operation the stack asks the dataplane to perform.
#[derive(Debug, PartialEq, Eq)]
pub enum SockOp {
    /// Create a host socket for `flow` and connect it to `dst`.
    ///
    /// TCP: non-blocking connect and `TCP_NODELAY`. The host socket's MSS
    /// is the kernel's for its path, not the guest's: a guest MSS of 1460
    /// forced onto a loopback connection (`TCP_MAXSEG`, as uipd did)
    /// measured netperf TCP_MAERTS at MTU 1500 at 5.5-9.3 Gbit/s against
    /// 17.6-24.6 without it. UDP/ICMP: `connect()` of a datagram socket.
    /// Completion: [`HostEvent::Connected`].
    Open {
        /// The flow this socket serves.
        flow: FlowId,
        /// Socket type.
        proto: Proto,
        /// Host-side destination (after NAT and loopback mapping).
        dst: SocketAddr,
    },
    /// Write `data` (takes ownership). TCP: the completion says how many
    /// bytes the socket took, possibly fewer than `data.len()`. UDP/ICMP:
    /// one datagram. Completion: [`HostEvent::Sent`].
    Send {
        /// Flow.
        flow: FlowId,
        /// Bytes to write.
        data: Vec<u8>,
    },
    /// Read up to `max` bytes (TCP: one completion), or start receiving
    /// datagrams (UDP/ICMP: one completion per datagram until `Close`).
    /// Completion: [`HostEvent::Received`].
    Recv {
        /// Flow.
        flow: FlowId,
        /// Most bytes to read.
        max: usize,
    },
    /// `shutdown(SHUT_WR)`: the guest sent FIN. No completion event.
    ShutdownWrite {
        /// Flow.
        flow: FlowId,
    },
    /// Close the socket and forget the flow. With `reset`, set `SO_LINGER`
    /// to 0 first so the peer sees RST. Outstanding ops are cancelled; no
    /// event for this flow follows.
    Close {
        /// Flow.
        flow: FlowId,
        /// Abort with RST rather than an orderly close.
        reset: bool,
    },
}

/// What the host answered, fed back with [`super::Stack::host_event`].
#[derive(Debug, PartialEq, Eq)]
pub enum HostEvent {
    /// Result of [`SockOp::Open`].
    Connected {
        /// Flow.
        flow: FlowId,
        /// `Err(errno)` if the socket could not be created or connected.
        result: Result<(), Errno>,
    },
    /// Result of [`SockOp::Send`]: bytes written.
    Sent {
        /// Flow.
        flow: FlowId,
        /// Bytes taken by the socket, or the error.
        result: Result<usize, Errno>,
    },
    /// Result of [`SockOp::Recv`]. For TCP, `Ok` with no bytes is end of stream.
    Received {
        /// Flow.
        flow: FlowId,
        /// The bytes, or the error (for UDP, `ECONNREFUSED` means the host got
        /// an ICMP port unreachable).
        result: Result<Vec<u8>, Errno>,
    },
}

impl SockOp {
    /// The flow this op belongs to.
    pub fn flow(&self) -> FlowId {
        match *self {
            SockOp::Open { flow, .. }
            | SockOp::Send { flow, .. }
            | SockOp::Recv { flow, .. }
            | SockOp::ShutdownWrite { flow }
            | SockOp::Close { flow, .. } => flow,
        }
    }
}

impl HostEvent {
    /// The flow this event belongs to.
    pub fn flow(&self) -> FlowId {
        match *self {
            HostEvent::Connected { flow, .. }
            | HostEvent::Sent { flow, .. }
            | HostEvent::Received { flow, .. } => flow,
        }
    }
}
