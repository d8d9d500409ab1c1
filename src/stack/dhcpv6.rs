//! Stateless DHCPv6 (RFC 8415 §6.1, §18.2.6): an Information-request gets
//! a Reply naming the DNS server (RFC 3646). No addresses are leased: the
//! guest configures its own by SLAAC from the router advertisement, whose
//! O flag tells it to ask here for "other configuration".
//!
//! # Theory of operation
//!
//! ```text
//!  client [fe80::x]:546 ── Information-request ─► [ff02::1:2]:547
//!         ◄── Reply from [fe80::1]:547: Server ID (DUID-LL of the gateway
//!             MAC), the client's Client ID echoed, DNS servers (option 23)
//!
//!  message: type(1) transaction-id(3) options…
//!  option:  code(2) length(2) data(length)
//! ```
//!
//! Options are walked with bounds (a length past the message is
//! malformed). Per §16.12 an Information-request that names another server,
//! or asks for addresses (an IA option), is discarded. Other message types
//! get no answer: uipd is not a stateful server.

use std::net::Ipv6Addr;

/// The server's UDP port.
pub const SERVER_PORT: u16 = 547;
/// The client's UDP port.
pub const CLIENT_PORT: u16 = 546;
/// All_DHCP_Relay_Agents_and_Servers (ff02::1:2).
pub const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

mod msg {
    pub const INFORMATION_REQUEST: u8 = 11;
    pub const REPLY: u8 = 7;
}

mod opt {
    pub const CLIENTID: u16 = 1;
    pub const SERVERID: u16 = 2;
    pub const IA_NA: u16 = 3;
    pub const IA_TA: u16 = 4;
    pub const IA_PD: u16 = 25;
    pub const DNS_SERVERS: u16 = 23;
}

/// Why a message got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Well-formed, but nothing to answer (another type, another server).
    NoReply,
    /// Not a valid DHCPv6 message.
    Malformed,
}

/// The server's DUID: DUID-LL (type 3) over Ethernet (hardware type 1).
fn duid(mac: [u8; 6]) -> [u8; 10] {
    let mut d = [0u8; 10];
    d[..4].copy_from_slice(&[0, 3, 0, 1]);
    d[4..].copy_from_slice(&mac);
    d
}

fn put_opt(out: &mut Vec<u8>, code: u16, data: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    // Cannot fail: every option built here is far below 64 KiB.
    out.extend_from_slice(&u16::try_from(data.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(data);
}

/// The Reply to DHCPv6 message `request` from a server whose DUID is built
/// from `server_mac`, naming `dns`.
pub fn handle(request: &[u8], server_mac: [u8; 6], dns: &[Ipv6Addr]) -> Result<Vec<u8>, Ignored> {
    let (&ty, rest) = request.split_first().ok_or(Ignored::Malformed)?;
    let xid = rest.get(..3).ok_or(Ignored::Malformed)?;
    let mut opts = &rest[3..];
    let mut client_id = None;
    let mut other_server = false;
    let mut wants_addresses = false;
    // Bounded: every step consumes at least the 4-byte option header.
    while !opts.is_empty() {
        let h = opts.get(..4).ok_or(Ignored::Malformed)?;
        let code = u16::from_be_bytes([h[0], h[1]]);
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let data = opts.get(4..4 + len).ok_or(Ignored::Malformed)?;
        match code {
            opt::CLIENTID => client_id = Some(data),
            opt::SERVERID => other_server |= data != duid(server_mac),
            opt::IA_NA | opt::IA_TA | opt::IA_PD => wants_addresses = true,
            _ => {}
        }
        opts = &opts[4 + len..];
    }
    if ty != msg::INFORMATION_REQUEST || other_server || wants_addresses {
        return Err(Ignored::NoReply);
    }
    let mut out = vec![msg::REPLY];
    out.extend_from_slice(xid);
    put_opt(&mut out, opt::SERVERID, &duid(server_mac));
    if let Some(id) = client_id {
        put_opt(&mut out, opt::CLIENTID, id);
    }
    let servers: Vec<u8> = dns.iter().flat_map(|a| a.octets()).collect();
    put_opt(&mut out, opt::DNS_SERVERS, &servers);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0x75, 0x69, 0x70, 0x64, 1];

    fn dns() -> Vec<Ipv6Addr> {
        vec!["fd00:33::1".parse().unwrap()]
    }

    /// An Information-request as a client sends it: xid 0x123456, Client ID
    /// (DUID-LL of 52:54:00:12:34:56), Option Request (23, 24), Elapsed Time.
    #[rustfmt::skip]
    const INFO_REQ: [u8; 36] = [
        11, 0x12, 0x34, 0x56,
        0, 1, 0, 10, 0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56,
        0, 6, 0, 4, 0, 23, 0, 24,
        0, 8, 0, 2, 0, 0,
        0, 99, 0, 0, // an unknown, empty option: skipped
    ];

    #[test]
    fn information_request_gets_the_dns_server() {
        let r = handle(&INFO_REQ, MAC, &dns()).unwrap();
        let mut want = vec![7, 0x12, 0x34, 0x56];
        want.extend_from_slice(&[0, 2, 0, 10, 0, 3, 0, 1]);
        want.extend_from_slice(&MAC);
        want.extend_from_slice(&INFO_REQ[4..18]);
        want.extend_from_slice(&[0, 23, 0, 16, 0xfd, 0, 0, 0x33]);
        want.extend_from_slice(&[0; 11]);
        want.push(1);
        assert_eq!(r, want);
    }

    #[test]
    fn other_messages_and_malformed_ones_are_ignored() {
        let mut solicit = INFO_REQ;
        solicit[0] = 1;
        assert_eq!(handle(&solicit, MAC, &dns()), Err(Ignored::NoReply));
        // Naming another server.
        let mut other = INFO_REQ.to_vec();
        other.extend_from_slice(&[0, 2, 0, 4, 0, 3, 0, 1]);
        assert_eq!(handle(&other, MAC, &dns()), Err(Ignored::NoReply));
        // Naming us is fine.
        let mut ours = INFO_REQ.to_vec();
        ours.extend_from_slice(&[0, 2, 0, 10]);
        ours.extend_from_slice(&duid(MAC));
        assert!(handle(&ours, MAC, &dns()).is_ok());
        // Asking for an address.
        let mut ia = INFO_REQ.to_vec();
        ia.extend_from_slice(&[0, 3, 0, 0]);
        assert_eq!(handle(&ia, MAC, &dns()), Err(Ignored::NoReply));
        // Truncated: header, option header, option body.
        assert_eq!(handle(&INFO_REQ[..3], MAC, &dns()), Err(Ignored::Malformed));
        assert_eq!(handle(&INFO_REQ[..6], MAC, &dns()), Err(Ignored::Malformed));
        assert_eq!(
            handle(&INFO_REQ[..10], MAC, &dns()),
            Err(Ignored::Malformed)
        );
        assert_eq!(handle(&[], MAC, &dns()), Err(Ignored::Malformed));
    }
}
