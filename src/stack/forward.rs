//! Guest frames of flows another worker owns, handed to it.
//!
//! A guest served by several workers has one stack each; every flow lives
//! on one of them. Two kinds of guest frames reach the wrong one: a
//! datagram reassembled where its fragments were steered (fragments carry
//! no ports), whose flow hashes elsewhere ([`steer::key_owner`]); and a
//! frame of a flow the [`Directory`](super::Directory) says another stack
//! holds (a published flow, or a guest flow whose frames changed queue).
//! Either goes out in [`Actions::forward`] as a frame in the form
//! [`Stack::ingress`] takes, and the owner processes it as its own.

use std::net::IpAddr;

use super::wire::vnet_hdr::flags as vnet_flags;
use super::wire::{
    self, EtherType, EthernetAddress, EthernetFrame, EthernetRepr, Ipv4Packet, Ipv4Repr,
    VnetHdrPacket, VnetHdrRepr,
};
use super::{Actions, FlowKey, Stack, steer};

impl Stack {
    /// The worker that owns flow `key` by hash steering, if not this one.
    pub(super) fn foreign_owner(&self, key: &FlowKey) -> Option<usize> {
        if self.cfg.workers <= 1 {
            return None;
        }
        match steer::key_owner(key, self.cfg.workers) {
            steer::Steer::Worker(w) if w != self.cfg.worker => Some(w),
            _ => None,
        }
    }

    /// The worker that owns the flow of a reassembled datagram (its L4
    /// part `l4`, protocol `proto`, from `src` to `dst`), if not this one.
    pub(super) fn foreign_datagram(
        &self,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        l4: &[u8],
    ) -> Option<usize> {
        if self.cfg.workers <= 1 {
            return None;
        }
        self.foreign_owner(&steer::flow_key(proto, src, dst, l4)?)
    }

    /// The worker that holds flow `key`, when this stack does not (see
    /// [`directory`]): the guest's frame of it came in on the wrong queue.
    pub(super) fn held_elsewhere(&self, key: &FlowKey) -> Option<usize> {
        let dir = self.cfg.directory.as_ref()?;
        if self.flows.lookup(key).is_some() {
            return None;
        }
        dir.owner(key).filter(|&w| w != self.cfg.worker)
    }

    /// A key no stack of the guest holds (for a new inbound flow).
    pub(super) fn key_free(&self, key: &FlowKey) -> bool {
        self.flows.lookup(key).is_none()
            && self
                .cfg
                .directory
                .as_ref()
                .is_none_or(|d| d.owner(key).is_none())
    }

    /// Hand a guest datagram (its L4 part `l4`, from `src` to `dst`) to
    /// worker `owner`, which holds its flow. `trusted`: its L4 checksum
    /// was vouched for (it may be partial), so the copy says so in its
    /// virtio-net header.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_l4(
        &mut self,
        owner: usize,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        l4: &[u8],
        trusted: bool,
        out: &mut Actions,
    ) {
        self.counters.foreign_flow_frames += 1;
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.forward_datagram(owner, Ipv4Repr::new(s, d, proto, l4.len()), l4, out);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => self.forward_datagram6(owner, s, d, proto, l4, out),
            _ => return,
        }
        if trusted
            && self.cfg.offload.vnet_hdr
            && let Some((_, frame)) = out.forward.last_mut()
        {
            let hdr = VnetHdrRepr {
                flags: vnet_flags::DATA_VALID,
                ..VnetHdrRepr::PLAIN
            };
            hdr.emit(&mut VnetHdrPacket::new_unchecked(&mut frame[..]));
        }
    }

    /// Hand a reassembled datagram to the worker that owns its flow, as one
    /// unfragmented frame (it may exceed the MTU: it never leaves uipd).
    pub(super) fn forward_datagram(
        &mut self,
        owner: usize,
        repr: Ipv4Repr,
        l4: &[u8],
        out: &mut Actions,
    ) {
        let ip = Ipv4Repr {
            payload_len: l4.len(),
            ..repr
        };
        let (mut buf, l3) = self.guest_frame(EtherType::Ipv4, ip.buffer_len() + l4.len());
        let mut p = Ipv4Packet::new_unchecked(&mut buf[l3..]);
        ip.emit(&mut p);
        p.payload_mut().copy_from_slice(l4);
        out.forward.push((owner, buf));
    }

    /// A reassembled datagram's frame for its owner worker, in the form
    /// `ingress` takes: a (zero: verify everything) virtio-net header first
    /// when the link carries one, then Ethernet from the guest to the
    /// gateway, with room for `l3_len` bytes of `ethertype`. Returns the
    /// buffer and the offset of the L3 header.
    pub(super) fn guest_frame(&self, ethertype: EtherType, l3_len: usize) -> (Vec<u8>, usize) {
        let hdr = if self.cfg.offload.vnet_hdr {
            wire::vnet_hdr::HEADER_LEN
        } else {
            0
        };
        let mut buf = vec![0u8; hdr + wire::ethernet::HEADER_LEN + l3_len];
        EthernetRepr {
            src_addr: self
                .guest_mac()
                .unwrap_or(EthernetAddress([2, 0, 0, 0, 0, 1])),
            dst_addr: self.cfg.gateway_mac,
            ethertype,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut buf[hdr..]));
        (buf, hdr + wire::ethernet::HEADER_LEN)
    }
}
