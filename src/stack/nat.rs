//! Address translation: where a guest flow goes on the host, and how the
//! guest sees a host client of a published port.
//!
//! Outbound ([`Stack::map_remote`]): the gateway (and the loopback
//! aliases) stand for the host's loopback, the DNS address's port 53 for
//! the first resolver; everything else is reached as addressed, if the
//! outbound policy allows it. Inbound ([`Stack::inbound_source`]): a host
//! client of a published port shows as itself (`publish_keep_source`, when
//! the guest can answer it) or as the gateway with a fresh port from
//! [`PUB_PORTS`], always one whose flow this worker owns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[cfg(doc)]
use super::policy;
use super::{DropReason, FlowKey, Proto, Stack};

/// Source ports for inbound flows shown from the gateway (the Linux
/// ephemeral range: unlikely to be a port the guest connects to).
pub(super) const PUB_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

impl Stack {
    /// Where a new guest flow to `remote` goes on the host, or why it is
    /// refused: [`DropReason::Refused`] (no resolver, a port other than 53
    /// of a DNS address that is not the gateway, or the gateway with
    /// `host_loopback` off) or [`DropReason::Denied`] (the outbound
    /// [`policy`], judged on the host address; DNS is exempt).
    pub(super) fn map_remote(
        &self,
        proto: Proto,
        remote: SocketAddr,
    ) -> Result<SocketAddr, DropReason> {
        if self.is_dns(remote.ip()) {
            if remote.port() == 53 && proto != Proto::Icmp {
                return self
                    .cfg
                    .resolvers
                    .first()
                    .copied()
                    .ok_or(DropReason::Refused);
            }
            if !self.is_gateway(remote.ip()) {
                return Err(DropReason::Refused);
            }
        }
        let alias = self.cfg.loopback_aliases.contains(&remote.ip());
        let host = if self.is_gateway(remote.ip()) || alias {
            if !self.cfg.host_loopback && !alias {
                return Err(DropReason::Refused);
            }
            let lo = match remote {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            SocketAddr::new(lo, remote.port())
        } else {
            remote
        };
        if !self.cfg.policy.allows(host.ip()) {
            return Err(DropReason::Denied);
        }
        Ok(host)
    }

    /// One of the gateway's addresses (IPv4, or IPv6 global or link-local).
    pub(super) fn is_gateway(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => a == self.cfg.gateway,
            IpAddr::V6(a) => a == self.cfg.gateway6 || a == self.cfg.gateway6_ll,
        }
    }

    /// The DNS server address of either family.
    pub(super) fn is_dns(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.cfg.dns == Some(a),
            IpAddr::V6(a) => self.cfg.dns6 == Some(a),
        }
    }

    /// An address uipd answers echo and neighbour queries for: the
    /// gateway's or the DNS server's.
    pub(super) fn is_local(&self, ip: IpAddr) -> bool {
        self.is_gateway(ip) || self.is_dns(ip)
    }

    /// A destination no flow may go to, of either family.
    pub(super) fn is_bad_dst(&self, dst: IpAddr) -> bool {
        match dst {
            IpAddr::V4(a) => self.is_bad_destination(a),
            IpAddr::V6(a) => self.is_bad_destination6(a),
        }
    }

    pub(super) fn is_bad_destination(&self, dst: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.cfg.prefix_len.min(32)))
            .unwrap_or(0);
        let bcast = Ipv4Addr::from(u32::from(self.cfg.gateway) | !mask);
        dst.is_unspecified()
            || dst.is_broadcast()
            || dst.is_multicast()
            || dst == bcast
            || dst.is_loopback()
    }

    // ───────────────────────── published ports ─────────────────────────

    /// The source the guest sees for an inbound flow from host `peer` to
    /// guest port `guest_port`: the peer itself with `publish_keep_source`
    /// when the guest can answer it, else the gateway with a fresh port.
    /// `None` when no free source is found.
    pub(super) fn inbound_source(
        &mut self,
        proto: Proto,
        peer: SocketAddr,
        guest_port: u16,
    ) -> Option<FlowKey> {
        let guest = SocketAddr::from((self.cfg.guest_ip, guest_port));
        if self.cfg.publish_keep_source
            && let SocketAddr::V4(p) = peer
            && !self.is_bad_destination(*p.ip())
            && !self.in_guest_net(*p.ip())
        {
            let key = FlowKey {
                proto,
                guest,
                remote: peer,
            };
            // With hash steering the guest's frames of this flow must hash
            // to this worker; when the client's own 4-tuple does not, the
            // flow comes from the gateway instead (below), as the guest
            // would otherwise send its replies to a stack without the flow.
            if self.foreign_owner(&key).is_none() && self.key_free(&key) {
                return Some(key);
            }
        }
        // Bounded: a free port whose flow this worker owns (hash steering)
        // is found within a few tries unless the table is nearly full.
        for _ in 0..1024 {
            let port = self.pub_port;
            self.pub_port = if port >= *PUB_PORTS.end() {
                *PUB_PORTS.start()
            } else {
                port + 1
            };
            let key = FlowKey {
                proto,
                guest,
                remote: SocketAddr::from((self.cfg.gateway, port)),
            };
            if !self.key_free(&key) {
                continue;
            }
            // With hash steering, the guest's frames of this flow must hash
            // to this worker.
            if self.foreign_owner(&key).is_none() {
                return Some(key);
            }
        }
        None
    }

    pub(super) fn in_guest_net(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.cfg.prefix_len.min(32)))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.cfg.gateway) & mask
    }
}
