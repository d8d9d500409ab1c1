//! Namespace-to-host forwards (pasta's `-T`/`-U`): a connection to a port
//! on the namespace's loopback is carried to the same (or the named) port
//! on the host's loopback, outside the guest's link.
//!
//! # Theory of operation
//!
//! A socket belongs to the network namespace of the thread that created
//! it. So the listeners are made at start, before the sandbox, by a short
//! set-up step that enters the namespace on the calling thread only
//! (`setns`), binds, and returns ([`bind_in`]). From then on one thread,
//! `uipd-nsfwd`, which stays in the host's namespace, accepts on them and
//! connects (or sends) from its own, host-side sockets: TCP bytes are
//! copied both ways through a bounded buffer per direction, and each UDP
//! client of a namespace port gets a connected host socket of its own,
//! dropped after [`UDP_IDLE`] without traffic.
//!
//! ```text
//!  namespace: client ─► 127.0.0.1:P (listener made in the netns)
//!                          │ accept (uipd-nsfwd, host netns)
//!  host:                   └─► connect 127.0.0.1:G ─► host server
//! ```
//!
//! Limits: explicit ports only (`-T auto` would need a thread that stays
//! in the namespace to bind as host ports come and go); at most
//! [`MAX_CONNS`] TCP connections and [`MAX_UDP`] UDP clients at once (more
//! are refused: closed, or their datagrams dropped).

use std::net::SocketAddr;
use std::time::Duration;

use crate::publish::PubProto;

/// Longest a UDP client's host socket lives without a datagram either way.
pub const UDP_IDLE: Duration = Duration::from_secs(180);
/// Most TCP connections carried at once.
pub const MAX_CONNS: usize = 1024;
/// Most UDP clients served at once.
pub const MAX_UDP: usize = 1024;

/// One namespace-to-host forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsForward {
    /// Transport.
    pub proto: PubProto,
    /// Where it listens, in the namespace.
    pub listen: SocketAddr,
    /// The host loopback port it goes to (127.0.0.1 or ::1, the listen
    /// address's family).
    pub to_port: u16,
}

impl std::fmt::Display for NsForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ns {} -> host port {}/{}",
            self.listen, self.to_port, self.proto
        )
    }
}
