//! ICMP from and to the guest (IPv4; ICMPv6 lives in `ipv6`).
//!
//! Echo to the gateway or the DNS address is answered here; echo elsewhere
//! is a datagram flow on a host ping socket (see `udp`). The stack sends
//! destination unreachable for a datagram it cannot deliver: refused by
//! policy or the flow limit, or refused by the host. The quoted datagram
//! is rebuilt from the flow ([`quote`]) for either family.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use super::wire::{
    self, Icmpv4Packet, Icmpv4Repr, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, ip_proto,
};
use super::{Actions, DropReason, Errno, FlowKey, Instant, Proto, Stack, check, ipv6};

impl Stack {
    pub(super) fn icmp(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        payload: &[u8],
        verify: bool,
        now: Instant,
        out: &mut Actions,
    ) {
        let repr = check!(
            self,
            Icmpv4Packet::new_checked(payload).and_then(|p| {
                if verify && !p.verify_checksum() {
                    return Err(wire::Error::Checksum);
                }
                Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(payload))
            })
        );
        let Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        } = repr
        else {
            // Errors from the guest about our traffic: nothing to relay.
            return self.drop(DropReason::Unsupported);
        };
        if self.is_local(IpAddr::V4(dst)) {
            let reply = Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            };
            return self.icmp_to_guest(dst, src, &reply, out);
        }
        let (s, d) = (IpAddr::V4(src), IpAddr::V4(dst));
        self.echo_out(s, d, ident, payload, verify, now, out);
    }

    /// An echo request `msg` (identifier `ident`) from the guest at `src`
    /// to a remote `dst` of either family: sent on its flow's ping socket,
    /// or handed to the worker that holds the flow.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn echo_out(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        ident: u16,
        msg: &[u8],
        verify: bool,
        now: Instant,
        out: &mut Actions,
    ) {
        if self.is_bad_dst(dst) {
            return self.drop(DropReason::BadAddress);
        }
        let key = FlowKey {
            proto: Proto::Icmp,
            guest: SocketAddr::new(src, ident),
            remote: SocketAddr::new(dst, 0),
        };
        if let Some(w) = self.held_elsewhere(&key) {
            let proto = match dst {
                IpAddr::V4(_) => ip_proto::ICMP,
                IpAddr::V6(_) => ip_proto::ICMPV6,
            };
            return self.forward_l4(w, src, dst, proto, msg, !verify, out);
        }
        self.dgram_out(key, msg.to_vec(), now, out);
    }

    /// ICMP destination unreachable to the guest about a datagram of `key`:
    /// for UDP `data` is the datagram's payload, for ICMP the echo message.
    pub(super) fn icmp_unreachable(
        &mut self,
        key: &FlowKey,
        code: u8,
        data: &[u8],
        out: &mut Actions,
    ) {
        let (SocketAddr::V4(guest), SocketAddr::V4(remote)) = (key.guest, key.remote) else {
            return self.icmp6_unreachable(key, ipv6::unreachable_code(code), data, out);
        };
        // RFC 792: the IP header and the first 8 bytes (plus some payload).
        let orig = quote(key, data, 64 + 8);
        let msg = Icmpv4Repr::DstUnreachable {
            code,
            next_hop_mtu: 0,
            data: &orig,
        };
        self.icmp_to_guest(*remote.ip(), *guest.ip(), &msg, out);
    }

    /// An echo reply from a host ping socket on flow `guest` → `remote`:
    /// to the guest with the guest's own identifier (the socket's reply
    /// carries the socket's).
    pub(super) fn echo_reply_to_guest(
        &mut self,
        guest: SocketAddrV4,
        remote: SocketAddrV4,
        data: &[u8],
        out: &mut Actions,
    ) {
        if Icmpv4Packet::new_checked(data).is_err() {
            return self.drop(DropReason::Malformed);
        }
        let Ok(Icmpv4Repr::EchoReply { seq_no, data, .. }) =
            Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(data))
        else {
            return;
        };
        let reply = Icmpv4Repr::EchoReply {
            ident: guest.port(),
            seq_no,
            data,
        };
        self.icmp_to_guest(*remote.ip(), *guest.ip(), &reply, out);
    }

    /// ICMP message `msg` from `src` to the guest at `dst`.
    fn icmp_to_guest(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        msg: &Icmpv4Repr<'_>,
        out: &mut Actions,
    ) {
        let mut l4 = vec![0u8; msg.buffer_len()];
        msg.emit(&mut Icmpv4Packet::new_unchecked(&mut l4[..]));
        let l2 = self.l2();
        self.ipv4_to_guest(l2, src, dst, ip_proto::ICMP, &l4, out);
    }
}

/// The guest's datagram on flow `key`, as an ICMP or ICMPv6 error about
/// it quotes it (RFC 792, RFC 4443 §3.1): its IP header, then for UDP a
/// UDP header rebuilt from the flow, then `data` (the UDP payload, or the
/// echo message), cut so that the quoted L4 part is at most `room` bytes.
pub(super) fn quote(key: &FlowKey, data: &[u8], room: usize) -> Vec<u8> {
    let icmp = match key.guest {
        SocketAddr::V4(_) => ip_proto::ICMP,
        SocketAddr::V6(_) => ip_proto::ICMPV6,
    };
    let (proto, hdr, l4_len) = match key.proto {
        Proto::Icmp => (icmp, 0, data.len()),
        _ => (ip_proto::UDP, 8, 8 + data.len()),
    };
    let keep = data.len().min(room - hdr);
    let mut orig = match (key.guest.ip(), key.remote.ip()) {
        (IpAddr::V4(guest), IpAddr::V4(remote)) => {
            let mut orig = vec![0u8; wire::ipv4::HEADER_LEN + hdr + keep];
            Ipv4Repr::new(guest, remote, proto, l4_len)
                .emit(&mut Ipv4Packet::new_unchecked(&mut orig[..]));
            orig
        }
        (IpAddr::V6(guest), IpAddr::V6(remote)) => {
            let mut orig = vec![0u8; wire::ipv6::HEADER_LEN + hdr + keep];
            Ipv6Repr::new(guest, remote, proto, l4_len)
                .emit(&mut Ipv6Packet::new_unchecked(&mut orig[..]));
            orig
        }
        // A flow's two ends are always of one family.
        _ => return Vec::new(),
    };
    let at = orig.len() - hdr - keep;
    let u = &mut orig[at..];
    if hdr > 0 {
        u[0..2].copy_from_slice(&key.guest.port().to_be_bytes());
        u[2..4].copy_from_slice(&key.remote.port().to_be_bytes());
        u[4..6].copy_from_slice(&u16::try_from(l4_len).unwrap_or(u16::MAX).to_be_bytes());
    }
    u[hdr..].copy_from_slice(&data[..keep]);
    orig
}

/// Errno values the stack interprets (the stack is OS-agnostic; these are
/// Linux's numbers, which the dataplane reports).
pub(super) mod libc_errno {
    pub(in crate::stack) const ECONNREFUSED: i32 = 111;
    pub(in crate::stack) const ENETUNREACH: i32 = 101;
    pub(in crate::stack) const EHOSTUNREACH: i32 = 113;
    pub(in crate::stack) const EACCES: i32 = 13;
    pub(in crate::stack) const EPERM: i32 = 1;
}

/// The ICMP destination-unreachable code for a host socket's `errno`.
pub(super) fn unreachable_code(errno: Errno) -> u8 {
    use wire::icmpv4::unreachable;
    match errno {
        libc_errno::ENETUNREACH => unreachable::NET,
        libc_errno::EHOSTUNREACH => unreachable::HOST,
        libc_errno::EACCES | libc_errno::EPERM => unreachable::ADMIN_PROHIBITED,
        _ => unreachable::PORT,
    }
}
