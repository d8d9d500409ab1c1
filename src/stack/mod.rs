//! The protocol engine: guest frames in, guest frames and host socket
//! operations out. No I/O, no clock, no threads, no unsafe.
//!
//! ```text
//!  guest frame ──► Stack::ingress ──► Actions { frames: to the guest,
//!                                              ops: SockOp for the host }
//!  HostEvent   ──► Stack::host_event ─► Actions
//!  now         ──► Stack::poll ───────► Actions (timers), next deadline
//! ```
#![forbid(unsafe_code)]

pub mod dhcp;
pub mod dns;
pub mod flow;
pub mod frag;
pub mod ops;
pub mod tcp;
pub mod time;
pub mod wire;

pub use flow::{FlowId, FlowKey};
pub use ops::{Errno, HostEvent, Proto, SockOp};
pub use time::Instant;
