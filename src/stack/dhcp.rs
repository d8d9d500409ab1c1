//! DHCPv4 server (RFC 2131/2132) for the one guest address.
//!
//! Stateless: there is one address to hand out, so there is no lease table.
//! DISCOVER → OFFER, REQUEST for the offered address (or INIT-REBOOT,
//! RENEWING, REBINDING) → ACK, REQUEST for another address → NAK,
//! INFORM → ACK without `yiaddr`/lease, RELEASE and DECLINE → no reply.
//! Every option is parsed with bounds checks (libslirp's CVE-2017-11434 was an
//! out-of-bounds read in option parsing).

use std::net::Ipv4Addr;

use super::wire::EthernetAddress;

/// Server port.
pub const SERVER_PORT: u16 = 67;
/// Client port.
pub const CLIENT_PORT: u16 = 68;

/// What the server hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// The server identifier (the gateway).
    pub server: Ipv4Addr,
    /// The address offered to the guest.
    pub offered: Ipv4Addr,
    /// Prefix length of the guest network.
    pub prefix_len: u8,
    /// Router option.
    pub router: Ipv4Addr,
    /// DNS server option.
    pub dns: Vec<Ipv4Addr>,
    /// Lease time in seconds.
    pub lease_secs: u32,
    /// Interface MTU option (26).
    pub mtu: u16,
}

/// A reply to send from `server:67` to the client on port 68.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The BOOTP message (UDP payload).
    pub payload: Vec<u8>,
    /// Send to the broadcast address (255.255.255.255 / ff:..:ff) rather than
    /// unicast to `yiaddr` (RFC 2131 §4.1: broadcast bit, or NAK, or no ciaddr).
    pub broadcast: bool,
    /// The client's hardware address (`chaddr`).
    pub client_mac: EthernetAddress,
    /// The destination IP for a unicast reply.
    pub dst: Ipv4Addr,
}

/// Why a request got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Too short, bad op/htype/hlen/magic cookie, or a malformed option.
    Malformed,
    /// A message type the server does not answer (RELEASE, DECLINE, OFFER...).
    NoReply,
}

/// Answer one client message (the UDP payload sent to port 67).
pub fn handle(params: &Params, request: &[u8]) -> Result<Reply, Ignored> {
    let _ = (params, request);
    todo!()
}
