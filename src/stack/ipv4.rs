//! IPv4 from and to the guest.
//!
//! In: the header is checked ([`wire::ipv4`]), bad sources dropped,
//! fragments reassembled ([`frag`]; a reassembled datagram whose flow
//! another worker owns goes there, see `forward`), and the L4 message goes
//! to TCP, UDP or ICMP. Out: an L4 message is wrapped in IPv4 and
//! Ethernet, fragmented to the MTU (or sent whole as one UFO frame when
//! the guest takes them), with a full or partial checksum ([`TxCsum`]).

use std::net::{IpAddr, Ipv4Addr};

use super::l2::{L2, L4_START, TxCsum, partial_csum_hdr};
use super::wire::vnet_hdr::{flags as vnet_flags, gso};
use super::wire::{self, Ipv4Packet, Ipv4Repr, VnetHdrRepr, ip_proto};
use super::{Actions, DropReason, Instant, Stack, TSO_MAX_FRAME, check, frag};

impl Stack {
    /// `csum_trusted`: the virtio-net header vouched for the L4 checksum.
    pub(super) fn ipv4(
        &mut self,
        payload: &[u8],
        csum_trusted: bool,
        now: Instant,
        out: &mut Actions,
    ) {
        let pkt = check!(self, Ipv4Packet::new_checked(payload));
        let repr = check!(self, Ipv4Repr::parse(&pkt));
        let src = repr.src_addr;
        let dst = repr.dst_addr;
        if src.is_multicast() || src.is_broadcast() || src.is_loopback() {
            return self.drop(DropReason::BadAddress);
        }
        if pkt.is_fragment() {
            let key = frag::FragKey {
                src: src.into(),
                dst: dst.into(),
                proto: repr.next_header,
                ident: pkt.ident().into(),
            };
            let (off, more) = (pkt.frag_offset(), pkt.more_frags());
            let Some(whole) = self.reassemble(key, off, more, pkt.payload(), now) else {
                return;
            };
            let (s, d) = (IpAddr::V4(src), IpAddr::V4(dst));
            if let Some(owner) = self.foreign_datagram(s, d, repr.next_header, &whole) {
                return self.forward_datagram(owner, repr, &whole, out);
            }
            // Each fragment's header spoke for that fragment only (and
            // Linux completes partial checksums before it fragments):
            // verify the whole datagram.
            return self.l4(src, dst, repr.next_header, &whole, false, now, out);
        }
        self.l4(
            src,
            dst,
            repr.next_header,
            pkt.payload(),
            csum_trusted,
            now,
            out,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn l4(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        payload: &[u8],
        csum_trusted: bool,
        now: Instant,
        out: &mut Actions,
    ) {
        let verify = self.cfg.verify_checksums && !csum_trusted;
        let (s, d) = (IpAddr::V4(src), IpAddr::V4(dst));
        match proto {
            ip_proto::TCP => self.tcp(s, d, payload, verify, now, out),
            ip_proto::UDP => self.udp(s, d, payload, verify, now, out),
            ip_proto::ICMP => self.icmp(src, dst, payload, verify, now, out),
            _ => self.drop(DropReason::Unsupported),
        }
    }

    /// Wrap an upper-layer message with a computed checksum in IPv4
    /// (fragmenting to the MTU) and Ethernet.
    pub(super) fn ipv4_to_guest(
        &mut self,
        l2: L2,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        l4: &[u8],
        out: &mut Actions,
    ) {
        self.ipv4_to_guest_csum(l2, src, dst, proto, l4, TxCsum::Full, out);
    }

    /// [`Stack::ipv4_to_guest`] for an `l4` whose checksum is `csum`
    /// ([`TxCsum::Partial`] only when `l4` fits the MTU whole).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ipv4_to_guest_csum(
        &mut self,
        l2: L2,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        l4: &[u8],
        csum: TxCsum,
        out: &mut Actions,
    ) {
        let mtu = usize::from(self.cfg.mtu);
        let ident = self.next_ident();
        let whole = l4.len() + wire::ipv4::HEADER_LEN <= mtu;
        if !whole {
            self.counters.fragmented += 1;
        }
        if !whole
            && proto == ip_proto::UDP
            && l2.offload.ufo
            && l2.offload.vnet_hdr
            && csum == TxCsum::Full
            && l4.len() + wire::ipv4::HEADER_LEN <= TSO_MAX_FRAME
            && l4.len() >= 8
        {
            // One frame instead of up to 45 (at MTU 1500): the guest's
            // kernel cuts it at `gso_size` (a multiple of 8, as fragment
            // offsets need) only if it forwards it. The checksum is whole
            // and computed, so DATA_VALID holds for every use of it.
            self.counters.ufo_frames += 1;
            let ip = Ipv4Repr::new(src, dst, proto, l4.len());
            let hdr = VnetHdrRepr {
                flags: vnet_flags::DATA_VALID,
                gso_type: gso::UDP,
                // Cannot fail: 42 and at most 65515.
                hdr_len: u16::try_from(L4_START + 8).unwrap_or(u16::MAX),
                gso_size: u16::try_from((mtu.max(68) - wire::ipv4::HEADER_LEN) / 8 * 8)
                    .unwrap_or(1480),
                ..VnetHdrRepr::PLAIN
            };
            let (mut buf, l4_at) = l2.ipv4_frame(&ip, &hdr, l4);
            let mut p = Ipv4Packet::new_unchecked(&mut buf[l4_at - wire::ipv4::HEADER_LEN..]);
            p.set_ident(ident);
            p.fill_checksum();
            self.push_frame(out, buf);
            return;
        }
        for (off, len, more) in frag::fragments(l4.len(), mtu) {
            let ip = Ipv4Repr::new(src, dst, proto, len);
            // virtio 1.2 §5.1.6.2: DATA_VALID for a checksum we computed over
            // a whole datagram; nothing for a fragment (no L4 header of its own).
            let hdr = match csum {
                TxCsum::Partial(off) if whole => partial_csum_hdr(off),
                TxCsum::Full if whole => VnetHdrRepr {
                    flags: vnet_flags::DATA_VALID,
                    ..VnetHdrRepr::PLAIN
                },
                _ => VnetHdrRepr::PLAIN,
            };
            debug_assert!(
                whole || csum == TxCsum::Full,
                "partial checksum on a fragment"
            );
            let (mut buf, l4_at) = l2.ipv4_frame(&ip, &hdr, &l4[off..off + len]);
            let mut p = Ipv4Packet::new_unchecked(&mut buf[l4_at - wire::ipv4::HEADER_LEN..]);
            if !whole {
                p.set_ident(ident);
                p.set_frag(false, more, u16::try_from(off).unwrap_or(0));
                p.fill_checksum();
            }
            self.push_frame(out, buf);
        }
    }

    /// Add a fragment (either family) to its datagram: `offset` bytes
    /// into it, `more` after it. Returns the whole datagram's L4 part once
    /// every fragment is in; a refused fragment is counted by its reason.
    pub(super) fn reassemble(
        &mut self,
        key: frag::FragKey,
        offset: u16,
        more: bool,
        data: &[u8],
        now: Instant,
    ) -> Option<Vec<u8>> {
        let pushed = self.reasm.push(key, offset, more, data, now);
        self.count_frag_losses();
        match pushed {
            Ok(Some(whole)) => {
                self.counters.reassembled += 1;
                return Some(whole);
            }
            Ok(None) => {}
            Err(frag::FragDrop::Invalid) => self.drop(DropReason::FragInvalid),
            Err(frag::FragDrop::Overlap) => self.drop(DropReason::FragOverlap),
            Err(frag::FragDrop::Limit) => self.drop(DropReason::FragLimit),
        }
        None
    }

    /// Count the incomplete datagrams the reassembler gave up since the
    /// last call: timed out (`drops_frag_timeout`) or evicted for room
    /// (`drops_frag_evicted`), one per datagram.
    pub(super) fn count_frag_losses(&mut self) {
        let (expired, evicted) = self.reasm.take_lost();
        self.counters.drops[DropReason::FragTimeout as usize] += expired;
        self.counters.drops[DropReason::FragEvicted as usize] += evicted;
    }
}
