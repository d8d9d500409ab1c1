//! Ethernet and ARP: frames to the guest and the gateway's link address.
//!
//! Every frame to the guest is built here ([`L2`]): the virtio-net header
//! (when the link has one), Ethernet from the gateway's MAC to the
//! guest's, then the IP header, in one zeroed buffer the L4 code fills
//! in. The guest's MAC is learnt from its frames (shared through the
//! [`Directory`](super::Directory) when several stacks serve the guest);
//! until it is known, frames go to the broadcast MAC and an inbound flow
//! first asks for it with an ARP request. uipd answers ARP for the
//! gateway and the DNS address, nothing else.
//!
//! ```text
//!  | vnet hdr (12 B, optional) | Ethernet (14) | IPv4 (20) / IPv6 (40) | L4 … |
//!  0                           headroom        headroom+14             L4_START
//! ```

use std::net::IpAddr;

use super::wire::vnet_hdr::{self, flags as vnet_flags, gso};
use super::wire::{
    self, ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, EthernetFrame,
    EthernetRepr, Ipv4Packet, Ipv4Repr, VnetHdrPacket, VnetHdrRepr,
};
use super::{Actions, DropReason, Offload, Stack, check};

/// Link-layer addressing and offloads for frames to the guest.
#[derive(Debug, Clone, Copy)]
pub(super) struct L2 {
    /// The gateway's MAC: the source of every frame.
    pub(super) gateway: EthernetAddress,
    /// The destination MAC (the guest's, or broadcast before it is known).
    pub(super) guest: EthernetAddress,
    /// What the guest takes: the virtio-net header, partial checksums, TSO.
    pub(super) offload: Offload,
}

impl L2 {
    /// Bytes before the Ethernet header: the virtio-net header, if any.
    pub(super) fn headroom(&self) -> usize {
        if self.offload.vnet_hdr {
            vnet_hdr::HEADER_LEN
        } else {
            0
        }
    }

    /// A frame buffer for an Ethernet frame of `eth_len` bytes, with room
    /// for the virtio-net header (all zero: [`VnetHdrRepr::PLAIN`]), whose
    /// last `tail.len()` bytes are `tail` (the payload) and the rest zero.
    /// Returns the buffer and the offset of the Ethernet header.
    ///
    /// The payload is copied once, straight after the zeroed headers,
    /// rather than written over a buffer zeroed in full: at 64 KiB TSO
    /// frames the `memset` was 4% of a saturated worker's time.
    pub(super) fn alloc(&self, eth_len: usize, tail: &[u8]) -> (Vec<u8>, usize) {
        debug_assert!(tail.len() <= eth_len, "the payload fits the frame");
        let hr = self.headroom();
        let len = hr + eth_len;
        let mut buf = Vec::with_capacity(len);
        buf.resize(len - tail.len().min(eth_len), 0);
        buf.extend_from_slice(&tail[tail.len().saturating_sub(eth_len)..]);
        (buf, hr)
    }

    /// Write `hdr` in front of the frame in `buf` (no-op without vnet_hdr).
    pub(super) fn put_vnet_hdr(&self, buf: &mut [u8], hdr: &VnetHdrRepr) {
        if self.offload.vnet_hdr {
            hdr.emit(&mut VnetHdrPacket::new_unchecked(buf));
        }
    }

    /// A frame to the guest carrying `ip`: virtio-net header `hdr` (when
    /// the link has one), Ethernet gateway → guest, and the IPv4 header,
    /// with room for `ip.payload_len` bytes of payload, the last of which
    /// are `tail` (see [`L2::alloc`]). Returns the buffer and the offset of
    /// the IPv4 payload (the L4 header).
    pub(super) fn ipv4_frame(
        &self,
        ip: &Ipv4Repr,
        hdr: &VnetHdrRepr,
        tail: &[u8],
    ) -> (Vec<u8>, usize) {
        let ip_hdr = L4_START - wire::ethernet::HEADER_LEN;
        let (mut buf, l3) = self.eth_frame(EtherType::Ipv4, ip_hdr + ip.payload_len, hdr, tail);
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[l3..]));
        (buf, l3 + ip_hdr)
    }

    /// A frame from the gateway to the guest with `hdr` and the Ethernet
    /// header written and room for `l3_len` bytes of `ethertype` after it,
    /// the last of which are `tail`; returns the buffer and the offset of
    /// the L3 header.
    pub(super) fn eth_frame(
        &self,
        ethertype: EtherType,
        l3_len: usize,
        hdr: &VnetHdrRepr,
        tail: &[u8],
    ) -> (Vec<u8>, usize) {
        let (mut buf, hr) = self.alloc(wire::ethernet::HEADER_LEN + l3_len, tail);
        self.put_vnet_hdr(&mut buf, hdr);
        EthernetRepr {
            src_addr: self.gateway,
            dst_addr: self.guest,
            ethertype,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut buf[hr..]));
        (buf, hr + wire::ethernet::HEADER_LEN)
    }

    /// [`L2::ipv4_frame`] or [`L2::ipv6_frame`] for `src` → `dst` (hop
    /// limit 64); `None` for mixed families.
    pub(super) fn ip_frame(
        &self,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        payload_len: usize,
        hdr: &VnetHdrRepr,
        tail: &[u8],
    ) -> Option<(Vec<u8>, usize)> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                Some(self.ipv4_frame(&Ipv4Repr::new(s, d, proto, payload_len), hdr, tail))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                Some(self.ipv6_frame(&wire::Ipv6Repr::new(s, d, proto, payload_len), hdr, tail))
            }
            _ => None,
        }
    }
}

/// How the L4 checksum of a frame to the guest was filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TxCsum {
    /// Computed in full (or the frame has no L4 checksum to speak of).
    Full,
    /// Partial (pseudo-header sum); the checksum field is at this offset
    /// from the start of the L4 header. Only for whole datagrams.
    Partial(u16),
}

/// Offset of the L4 header in a frame to the guest (Ethernet + IPv4, no options).
pub(super) const L4_START: usize = wire::ethernet::HEADER_LEN + wire::ipv4::HEADER_LEN;

/// Offset of the UDP checksum field in the UDP header.
pub(super) const UDP_CSUM_OFFSET: u16 = 6;
/// Offset of the TCP checksum field in the TCP header.
pub(super) const TCP_CSUM_OFFSET: u16 = 16;

/// The virtio-net header of a whole IPv4 datagram whose L4 checksum is
/// partial, the field `csum_offset` bytes into the L4 header.
pub(super) fn partial_csum_hdr(csum_offset: u16) -> VnetHdrRepr {
    partial_csum_hdr_at(L4_START, csum_offset)
}

/// [`partial_csum_hdr`] for an L4 header `l4_start` bytes into the frame.
pub(super) fn partial_csum_hdr_at(l4_start: usize, csum_offset: u16) -> VnetHdrRepr {
    VnetHdrRepr {
        flags: vnet_flags::NEEDS_CSUM,
        // Cannot fail: 34 or 54.
        csum_start: u16::try_from(l4_start).unwrap_or(u16::MAX),
        csum_offset,
        ..VnetHdrRepr::PLAIN
    }
}

impl Stack {
    pub(super) fn l2(&self) -> L2 {
        L2 {
            gateway: self.cfg.gateway_mac,
            guest: self.guest_mac().unwrap_or(EthernetAddress::BROADCAST),
            offload: self.cfg.offload,
        }
    }

    /// A frame from `mac` came from the guest.
    pub(super) fn learn_guest_mac(&mut self, mac: EthernetAddress) {
        match &self.cfg.directory {
            // Written only when it changes: every worker reads this line.
            Some(d) if d.guest_mac() != Some(mac) => d.set_guest_mac(mac),
            Some(_) => {}
            None => self.guest_mac = Some(mac),
        }
    }

    pub(super) fn push_frame(&mut self, out: &mut Actions, frame: Vec<u8>) {
        if self.cfg.offload.vnet_hdr
            && VnetHdrPacket::new_checked(&frame[..]).is_ok_and(|h| h.gso_type() != gso::NONE)
        {
            self.counters.tx_gso_frames += 1;
        }
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += frame.len() as u64;
        out.frames.push(frame);
    }

    /// [`Stack::push_frame`] for each of `frames`, in order.
    pub(super) fn push_frames(&mut self, out: &mut Actions, frames: Vec<Vec<u8>>) {
        for f in frames {
            self.push_frame(out, f);
        }
    }

    pub(super) fn arp(&mut self, payload: &[u8], src_mac: EthernetAddress, out: &mut Actions) {
        let repr = check!(
            self,
            ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p))
        );
        if repr.source_hardware_addr != src_mac {
            return self.drop(DropReason::BadAddress);
        }
        self.learn_guest_mac(src_mac);
        let ours = repr.target_protocol_addr == self.cfg.gateway
            || self.is_dns(IpAddr::V4(repr.target_protocol_addr));
        if repr.operation != ArpOperation::Request || !ours {
            // Gratuitous ARP, probes for the guest's own address, replies:
            // nothing to answer (an answer to a DAD probe would make the
            // guest think its address is taken).
            return;
        }
        let reply = ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_addr: self.cfg.gateway_mac,
            source_protocol_addr: repr.target_protocol_addr,
            target_hardware_addr: repr.source_hardware_addr,
            target_protocol_addr: repr.source_protocol_addr,
        };
        // The virtio-net header stays PLAIN: ARP has no checksum to offload.
        let (mut buf, hr) = self
            .l2()
            .alloc(wire::ethernet::HEADER_LEN + reply.buffer_len(), &[]);
        let mut f = EthernetFrame::new_unchecked(&mut buf[hr..]);
        EthernetRepr {
            src_addr: self.cfg.gateway_mac,
            dst_addr: src_mac,
            ethertype: EtherType::Arp,
        }
        .emit(&mut f);
        reply.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
        self.push_frame(out, buf);
    }

    /// Ask for the guest's MAC (ARP who-has guest_ip) when it is not known
    /// yet: a frame to the broadcast MAC reaches the guest, but Linux TCP
    /// drops segments not addressed to its own MAC (`PACKET_HOST`), so an
    /// inbound SYN is answered only once the reply taught us the MAC (the
    /// SYN's retransmission then carries it).
    pub(super) fn solicit_guest_mac(&mut self, out: &mut Actions) {
        if self.guest_mac().is_some() {
            return;
        }
        let req = ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: self.cfg.gateway_mac,
            source_protocol_addr: self.cfg.gateway,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: self.cfg.guest_ip,
        };
        let (mut buf, hr) = self
            .l2()
            .alloc(wire::ethernet::HEADER_LEN + req.buffer_len(), &[]);
        let mut f = EthernetFrame::new_unchecked(&mut buf[hr..]);
        EthernetRepr {
            src_addr: self.cfg.gateway_mac,
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EtherType::Arp,
        }
        .emit(&mut f);
        req.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
        self.push_frame(out, buf);
    }
}
