//! DHCPv4 server (RFC 2131/2132) for the one guest address.
//!
//! Stateless: there is one address to hand out, so there is no lease table.
//! DISCOVER → OFFER, REQUEST for the offered address (or INIT-REBOOT,
//! RENEWING, REBINDING) → ACK, REQUEST for another address → NAK,
//! INFORM → ACK without `yiaddr`/lease, RELEASE and DECLINE → no reply.
//! Every option is parsed with bounds checks (libslirp's CVE-2017-11434 was an
//! out-of-bounds read in option parsing).
//!
//! ```text
//!  0      1      2      3      4          8      10     12
//!  | op   | htype| hlen | hops | xid      | secs | flags|
//!  12 ciaddr 16 yiaddr 20 siaddr 24 giaddr 28 chaddr (16) 44
//!  44 sname (64) 108 file (128) 236 magic cookie 99.130.83.99 240
//!  240 options: code len data ... 255 (0 = pad, no length byte)
//! ```
//!
//! Every byte is read with `get`, so no input can index out of bounds. A
//! request must end its options with END (255); a message that runs out
//! before it is truncated and therefore malformed. Option overload (52)
//! is ignored: the options we read (53, 50, 54, 61) sit in the options field
//! with every client we answer. Relays (`giaddr`) are echoed but there is no
//! relay on a one-guest link, so replies never go to port 67 of a relay.
//!
//! Replies always carry the whole configuration (RFC 2131 §4.3.1 allows
//! options the client did not list in option 55) and fit in 548 bytes, the
//! UDP payload of the 576-byte datagram every client must accept (§2).

use std::net::Ipv4Addr;
use std::ops::Range;

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

/// The fixed BOOTP header plus the magic cookie (RFC 2131 §2, Figure 1).
mod field {
    use std::ops::Range;

    pub const OP: usize = 0;
    pub const HTYPE: usize = 1;
    pub const HLEN: usize = 2;
    pub const XID: Range<usize> = 4..8;
    pub const FLAGS: Range<usize> = 10..12;
    pub const CIADDR: Range<usize> = 12..16;
    pub const YIADDR: Range<usize> = 16..20;
    pub const GIADDR: Range<usize> = 24..28;
    pub const CHADDR: Range<usize> = 28..44;
    pub const COOKIE: Range<usize> = 236..240;
    pub const OPTIONS: usize = 240;
}

/// BOOTP op codes.
const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
/// ARP hardware type Ethernet, and its address length.
const HTYPE_ETHERNET: u8 = 1;
const HLEN_ETHERNET: u8 = 6;
/// RFC 2131 §3: 99.130.83.99.
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The broadcast bit of `flags` (RFC 2131 §2, Figure 2).
const FLAG_BROADCAST: u16 = 0x8000;
/// RFC 1542 §3.4 / RFC 2131 §2: a BOOTP message is at least 300 bytes.
const MIN_REPLY_LEN: usize = 300;
/// RFC 2131 §2: every client accepts a 576-byte datagram, 548 bytes of DHCP.
const MAX_REPLY_LEN: usize = 576 - 20 - 8;

/// Option codes (RFC 2132).
mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const INTERFACE_MTU: u8 = 26;
    pub const BROADCAST: u8 = 28;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const MESSAGE: u8 = 56;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const END: u8 = 255;
}

/// DHCP message types (option 53, RFC 2132 §9.6).
mod msg {
    pub const DISCOVER: u8 = 1;
    pub const OFFER: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const ACK: u8 = 5;
    pub const NAK: u8 = 6;
    pub const INFORM: u8 = 8;
}

/// The fields of a client message the server looks at.
struct Request<'a> {
    xid: [u8; 4],
    flags: u16,
    ciaddr: Ipv4Addr,
    giaddr: [u8; 4],
    chaddr: [u8; 16],
    msg_type: Option<u8>,
    requested_ip: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
    client_id: Option<&'a [u8]>,
}

/// Copy `range` of `buf` into an array; `None` if it is out of bounds.
fn array<const N: usize>(buf: &[u8], range: Range<usize>) -> Option<[u8; N]> {
    buf.get(range)?.try_into().ok()
}

/// A 4-byte option value as an address; other lengths are malformed.
fn addr_option(data: &[u8]) -> Result<Ipv4Addr, Ignored> {
    let octets: [u8; 4] = data.try_into().map_err(|_| Ignored::Malformed)?;
    Ok(Ipv4Addr::from(octets))
}

impl<'a> Request<'a> {
    fn parse(buf: &'a [u8]) -> Result<Self, Ignored> {
        let bad = Ignored::Malformed;
        if buf.len() < field::OPTIONS
            || buf.get(field::OP) != Some(&BOOTREQUEST)
            || buf.get(field::HTYPE) != Some(&HTYPE_ETHERNET)
            || buf.get(field::HLEN) != Some(&HLEN_ETHERNET)
            || buf.get(field::COOKIE) != Some(&MAGIC_COOKIE[..])
        {
            return Err(bad);
        }
        let mut req = Request {
            xid: array(buf, field::XID).ok_or(bad)?,
            flags: u16::from_be_bytes(array(buf, field::FLAGS).ok_or(bad)?),
            ciaddr: Ipv4Addr::from(array::<4>(buf, field::CIADDR).ok_or(bad)?),
            giaddr: array(buf, field::GIADDR).ok_or(bad)?,
            chaddr: array(buf, field::CHADDR).ok_or(bad)?,
            msg_type: None,
            requested_ip: None,
            server_id: None,
            client_id: None,
        };
        // RFC 2132 §2: code, length, data; PAD and END are single bytes.
        // The first occurrence of an option wins.
        let mut i = field::OPTIONS;
        loop {
            let code = *buf.get(i).ok_or(bad)?;
            match code {
                opt::PAD => i += 1,
                opt::END => break,
                _ => {
                    let len = usize::from(*buf.get(i + 1).ok_or(bad)?);
                    let start = i + 2;
                    let data = buf.get(start..start + len).ok_or(bad)?;
                    i = start + len;
                    match code {
                        opt::MESSAGE_TYPE if req.msg_type.is_none() => {
                            let &[t] = data else { return Err(bad) };
                            req.msg_type = Some(t);
                        }
                        opt::REQUESTED_IP if req.requested_ip.is_none() => {
                            req.requested_ip = Some(addr_option(data)?);
                        }
                        opt::SERVER_ID if req.server_id.is_none() => {
                            req.server_id = Some(addr_option(data)?);
                        }
                        opt::CLIENT_ID if req.client_id.is_none() => req.client_id = Some(data),
                        _ => {}
                    }
                }
            }
        }
        Ok(req)
    }

    fn client_mac(&self) -> EthernetAddress {
        let mut mac = [0; 6];
        for (m, c) in mac.iter_mut().zip(self.chaddr) {
            *m = c;
        }
        EthernetAddress(mac)
    }
}

/// Answer one client message (the UDP payload sent to port 67).
pub fn handle(params: &Params, request: &[u8]) -> Result<Reply, Ignored> {
    let req = Request::parse(request)?;
    match req.msg_type {
        Some(msg::DISCOVER) => Ok(answer(params, &req, Kind::Offer)),
        Some(msg::REQUEST) => {
            // RFC 2131 §4.3.2: a server id that is not ours means the client
            // chose another server's offer.
            if req.server_id.is_some_and(|id| id != params.server) {
                return Err(Ignored::NoReply);
            }
            // SELECTING and INIT-REBOOT name the address in option 50,
            // RENEWING and REBINDING in ciaddr.
            let wanted = req.requested_ip.unwrap_or(req.ciaddr);
            if wanted == params.offered {
                Ok(answer(params, &req, Kind::Ack))
            } else {
                Ok(answer(params, &req, Kind::Nak))
            }
        }
        Some(msg::INFORM) => Ok(answer(params, &req, Kind::InformAck)),
        // RELEASE and DECLINE need no answer (there is no lease table to
        // update), server-to-client types are not ours to answer, and a
        // message without option 53 is plain BOOTP, which is not served.
        _ => Err(Ignored::NoReply),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Offer,
    Ack,
    Nak,
    InformAck,
}

/// Append option `code` with `data` (at most 255 bytes by construction).
fn put_option(out: &mut Vec<u8>, code: u8, data: &[u8]) {
    // Cannot truncate: callers pass at most 255 bytes; a longer value is cut
    // rather than corrupting the option stream.
    let len = u8::try_from(data.len()).unwrap_or(u8::MAX);
    out.push(code);
    out.push(len);
    out.extend_from_slice(data.get(..usize::from(len)).unwrap_or(data));
}

fn subnet_mask(prefix_len: u8) -> Ipv4Addr {
    let prefix = u32::from(prefix_len.min(32));
    Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0))
}

/// Build the reply (RFC 2131 §4.3.1 Table 3).
fn answer(params: &Params, req: &Request<'_>, kind: Kind) -> Reply {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let (msg_type, yiaddr, ciaddr) = match kind {
        Kind::Offer => (msg::OFFER, params.offered, unspecified),
        Kind::Ack => (msg::ACK, params.offered, req.ciaddr),
        Kind::Nak => (msg::NAK, unspecified, unspecified),
        Kind::InformAck => (msg::ACK, unspecified, req.ciaddr),
    };

    let mut out = vec![0u8; field::OPTIONS];
    out[field::OP] = BOOTREPLY;
    out[field::HTYPE] = HTYPE_ETHERNET;
    out[field::HLEN] = HLEN_ETHERNET;
    out[field::XID].copy_from_slice(&req.xid);
    out[field::FLAGS].copy_from_slice(&req.flags.to_be_bytes());
    out[field::CIADDR].copy_from_slice(&ciaddr.octets());
    out[field::YIADDR].copy_from_slice(&yiaddr.octets());
    out[field::GIADDR].copy_from_slice(&req.giaddr);
    out[field::CHADDR].copy_from_slice(&req.chaddr);
    out[field::COOKIE].copy_from_slice(&MAGIC_COOKIE);

    put_option(&mut out, opt::MESSAGE_TYPE, &[msg_type]);
    put_option(&mut out, opt::SERVER_ID, &params.server.octets());
    // RFC 6842: the client identifier comes back unaltered.
    if let Some(id) = req.client_id {
        put_option(&mut out, opt::CLIENT_ID, id);
    }
    if kind == Kind::Nak {
        put_option(&mut out, opt::MESSAGE, b"requested address not available");
    } else {
        if kind != Kind::InformAck {
            // RFC 2131 §4.3.5: no lease time in a reply to INFORM.
            let lease = params.lease_secs;
            let (t1, t2) = if lease == u32::MAX {
                // RFC 2132 §9.2: 0xffffffff is an infinite lease.
                (u32::MAX, u32::MAX)
            } else {
                let t2 = u64::from(lease) * 7 / 8;
                (lease / 2, u32::try_from(t2).unwrap_or(u32::MAX))
            };
            put_option(&mut out, opt::LEASE_TIME, &lease.to_be_bytes());
            put_option(&mut out, opt::RENEWAL_TIME, &t1.to_be_bytes());
            put_option(&mut out, opt::REBINDING_TIME, &t2.to_be_bytes());
        }
        let mask = subnet_mask(params.prefix_len);
        let bcast = Ipv4Addr::from(u32::from(params.offered) | !u32::from(mask));
        put_option(&mut out, opt::SUBNET_MASK, &mask.octets());
        if !params.router.is_unspecified() {
            put_option(&mut out, opt::ROUTER, &params.router.octets());
        }
        put_option(&mut out, opt::BROADCAST, &bcast.octets());
        // RFC 2132 §5.1: the MTU option's minimum is 68.
        if params.mtu >= 68 {
            put_option(&mut out, opt::INTERFACE_MTU, &params.mtu.to_be_bytes());
        }
        // DNS last: it is the one list that may be cut to keep the reply
        // within 548 bytes (2 bytes of option header, 1 for END).
        let room = MAX_REPLY_LEN.saturating_sub(out.len() + 2 + 1) / 4;
        let count = params.dns.len().min(room).min(255 / 4);
        if count > 0 {
            let servers: Vec<u8> = params
                .dns
                .iter()
                .take(count)
                .flat_map(|a| a.octets())
                .collect();
            put_option(&mut out, opt::DNS, &servers);
        }
    }
    out.push(opt::END);
    if out.len() < MIN_REPLY_LEN {
        out.resize(MIN_REPLY_LEN, opt::PAD);
    }

    // RFC 2131 §4.1: NAKs are broadcast; so is a reply to a client that
    // asked for it or has no address yet (broadcasting avoids unicasting to
    // an address the client has not configured).
    let broadcast =
        kind == Kind::Nak || req.flags & FLAG_BROADCAST != 0 || req.ciaddr.is_unspecified();
    let dst = if broadcast {
        Ipv4Addr::BROADCAST
    } else {
        req.ciaddr
    };
    Reply {
        payload: out,
        broadcast,
        client_mac: req.client_mac(),
        dst,
    }
}

#[cfg(test)]
mod tests;
