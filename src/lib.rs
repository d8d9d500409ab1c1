//! uipd: a user-mode network backend for virtual machines and network
//! namespaces.
//!
//! # Theory of operation
//!
//! uipd gives a guest (a network namespace behind a TAP device, or a virtual
//! machine's virtio-net device: in uipd's own KVM VMM, over vhost-user or over
//! a QEMU stream socket) TCP/UDP/IPv4/IPv6 access with no privileges and no
//! host configuration: the guest's Ethernet frames become ordinary host
//! sockets, opened by uipd in user space.
//!
//! ```text
//!                  guest (network namespace)
//!                          │ multiqueue TAP, virtio-net header, TSO/csum offload
//!        ┌─────────────────┼──────────────────────┐
//!   queue 0           queue 1             queue N-1
//!   worker uipd-w0    worker uipd-w1      worker uipd-wN-1     (one per CPU, pinned)
//!   ├ Stack shard     ├ Stack shard       ├ Stack shard        stack::Stack: no I/O
//!   ├ io_uring        ├ io_uring          ├ io_uring           dataplane::uring (or
//!   │                 │                   │                    dataplane::epoll, --io)
//!   └ inbox ring ◄────┴── frames of flows that arrived on a foreign queue (rings)
//!                          │
//!                   host sockets (TCP, connected UDP, ping sockets)
//! ```
//!
//! Layers, from the wire up:
//! - [`stack`] is the protocol engine: ARP, IPv4 (with bounded
//!   reassembly), ICMP echo, DHCP, DNS forwarding, UDP NAT flows and TCP
//!   *translation* (see [`stack::tcp::conn`]). It performs no I/O, reads no
//!   clock and starts no thread: frames and host completions go in, frames
//!   and [`stack::SockOp`]s come out, and time is an argument. Everything
//!   the guest sends is checked; malformed input is a counted drop.
//! - [`rings`] are the lock-free frame rings (and their buffer pools)
//!   between threads.
//! - [`dataplane`] runs the stack: pinned [`dataplane::worker`]s, each
//!   owning one TAP queue, one io_uring ([`dataplane::uring`]) for every
//!   host socket operation and TAP write (or, where io_uring is refused,
//!   an epoll loop on non-blocking sockets, [`dataplane::epoll`], behind
//!   the same [`dataplane::io::Io`]), and one shard of the flows;
//!   [`stack::steer`] maps a flow to its worker. The namespace frontend
//!   ([`dataplane::netns`], [`dataplane::tap`]) creates or joins the
//!   namespace and its TAP; [`dataplane::offload`] turns on the
//!   virtio-net header and offloads.
//! - [`daemon`] wires a frontend to the workers and runs the control loop
//!   (the command's exit, signals, resolv.conf changes, statistics).
//! - [`publish`] parses `--publish` specs and binds their host sockets;
//!   worker 0 accepts and receives on them, and the stack opens each
//!   inbound flow toward the guest. [`control`] is the run-time control
//!   socket (`--control`, `uipd ctl`): list, add and remove forwards.
//! - [`vmm`] holds the virtio-net device model (transport-agnostic), the
//!   vhost-user backend (`--vhost-user`) and the embedded KVM VMM
//!   (`uipd --kernel`: boot protocol, vCPU threads, serial console, clean
//!   power-off).
//!
//! - [`ratelimit`] keeps log lines a guest or a front-end can trigger
//!   from flooding the log ([`log_limited!`]).
//!
//! A flow lives on exactly one worker; frames cross workers only when the
//! kernel delivers a flow's first frame to another queue, or a reassembled
//! datagram belongs to another worker's flow.
#![warn(missing_docs)]

pub mod addressing;
pub mod autoports;
pub mod compat;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod nsauto;
pub mod nsfwd;
pub mod publish;
pub mod ratelimit;
pub mod rings;
pub mod sandbox;
pub mod stack;
pub mod sys;
pub mod vmm;
pub mod watch;
