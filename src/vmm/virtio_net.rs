//! The virtio-net device model (virtio 1.2 §5.1): feature negotiation, the
//! config space, and the data path of one queue pair over split virtqueues.
//! Transport-agnostic: every function takes a [`Queue`] and a
//! `M: GuestMemory`, so the vhost-user backend ([`super::vhost_user`]) and
//! the embedded VMM's virtio-pci device share it. Nothing here signals an
//! interrupt or touches a socket; callers get frames and "needs
//! notification" decisions back.
//!
//! # Theory of operation
//!
//! ```text
//!  guest TX queue ─► tx_pop: walk one chain (readable descriptors only),
//!                    copy header + frame into a pool buffer, add_used(head, 0)
//!                    (10-byte legacy header widened to the 12-byte v1 form)
//!  stack frame (12-byte header + Ethernet) ─► RxRing::put: pop as many
//!                    chains as the frame needs (one without MRG_RXBUF), write
//!                    header (num_buffers set) + frame straight into them,
//!                    publish every used entry with one used-index store
//!  RxRing::needs_notification: event-idx (or NO_INTERRUPT) once per batch
//!  ctrl_process: VIRTIO_NET_CTRL_* commands, acked; MQ VQ_PAIRS_SET reported
//! ```
//!
//! Every descriptor the guest gives is untrusted. Addresses and lengths are
//! checked by vm-memory on each access (an access outside guest memory is
//! an error, never a fault), a chain must end (a loop or a chain longer
//! than the queue is cut by virtio-queue's TTL; we notice because the last
//! descriptor still says `NEXT`), and its descriptors must all point the
//! right way. The avail ring itself is checked too ([`pop_chain`]: an index
//! more than a queue ahead, a ring outside memory). A chain or ring that
//! breaks these rules is a [`ChainError`]: the
//! caller reports it and stops that queue (virtio 1.2 §2.1.2, the device
//! may set `DEVICE_NEEDS_RESET`). A frame that is merely too long for uipd's
//! buffers is a counted drop and the queue goes on.
//!
//! Guest TOCTOU: the guest may rewrite a buffer while we copy it. TX frames
//! are copied once into our buffer before anything parses them, so the
//! stack only ever sees a consistent snapshot; RX buffers are only written.
//!
//! Why RX publishes used entries itself rather than with
//! `QueueT::add_used`: that call stores the used index once per chain, and
//! with `MRG_RXBUF` a guest polling the ring could see the first buffer of a
//! frame (whose `num_buffers` says 3) before the other two are used; Linux
//! then drops the frame as "buffers missing". Writing all elements first
//! and the index once (as QEMU's `virtqueue_flush` does) closes that window,
//! and lets us decide on notification with the event-idx rule over the
//! whole batch.

use std::sync::atomic::{Ordering, fence};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use crate::stack::Offload;
use crate::stack::wire::vnet_hdr::HEADER_LEN;

mod ctrl;

pub use self::ctrl::{CtrlEffect, ctrl_process};

/// Feature bit numbers (virtio 1.2 §5.1.3, §6).
pub mod feature {
    use virtio_bindings::bindings::{virtio_config as c, virtio_net as n, virtio_ring as r};

    /// Device handles packets with partial checksum (guest → device).
    pub const CSUM: u32 = n::VIRTIO_NET_F_CSUM;
    /// Driver handles packets with partial checksum (device → guest).
    pub const GUEST_CSUM: u32 = n::VIRTIO_NET_F_GUEST_CSUM;
    /// Control channel offloads reconfiguration.
    pub const CTRL_GUEST_OFFLOADS: u32 = n::VIRTIO_NET_F_CTRL_GUEST_OFFLOADS;
    /// Device reports its maximum MTU.
    pub const MTU: u32 = n::VIRTIO_NET_F_MTU;
    /// Device has a MAC address in its config space.
    pub const MAC: u32 = n::VIRTIO_NET_F_MAC;
    /// Driver can receive TSOv4.
    pub const GUEST_TSO4: u32 = n::VIRTIO_NET_F_GUEST_TSO4;
    /// Driver can receive TSOv6.
    pub const GUEST_TSO6: u32 = n::VIRTIO_NET_F_GUEST_TSO6;
    /// Driver can receive TSO with ECN.
    pub const GUEST_ECN: u32 = n::VIRTIO_NET_F_GUEST_ECN;
    /// Driver can receive UFO.
    pub const GUEST_UFO: u32 = n::VIRTIO_NET_F_GUEST_UFO;
    /// Device can receive TSOv4.
    pub const HOST_TSO4: u32 = n::VIRTIO_NET_F_HOST_TSO4;
    /// Device can receive TSOv6.
    pub const HOST_TSO6: u32 = n::VIRTIO_NET_F_HOST_TSO6;
    /// Device can receive TSO with ECN.
    pub const HOST_ECN: u32 = n::VIRTIO_NET_F_HOST_ECN;
    /// Device can receive UFO.
    pub const HOST_UFO: u32 = n::VIRTIO_NET_F_HOST_UFO;
    /// Driver can merge receive buffers.
    pub const MRG_RXBUF: u32 = n::VIRTIO_NET_F_MRG_RXBUF;
    /// Config `status` field is valid.
    pub const STATUS: u32 = n::VIRTIO_NET_F_STATUS;
    /// Control virtqueue.
    pub const CTRL_VQ: u32 = n::VIRTIO_NET_F_CTRL_VQ;
    /// Control channel RX mode.
    pub const CTRL_RX: u32 = n::VIRTIO_NET_F_CTRL_RX;
    /// Control channel VLAN filtering.
    pub const CTRL_VLAN: u32 = n::VIRTIO_NET_F_CTRL_VLAN;
    /// Driver can send gratuitous packets.
    pub const GUEST_ANNOUNCE: u32 = n::VIRTIO_NET_F_GUEST_ANNOUNCE;
    /// Multiqueue with automatic receive steering.
    pub const MQ: u32 = n::VIRTIO_NET_F_MQ;
    /// MAC address set through the control channel.
    pub const CTRL_MAC_ADDR: u32 = n::VIRTIO_NET_F_CTRL_MAC_ADDR;
    /// Indirect descriptor tables (virtio 1.2 §2.7.5.3).
    pub const RING_INDIRECT_DESC: u32 = r::VIRTIO_RING_F_INDIRECT_DESC;
    /// `used_event` / `avail_event` notification suppression (§2.7.10).
    pub const RING_EVENT_IDX: u32 = r::VIRTIO_RING_F_EVENT_IDX;
    /// vhost-user: protocol features are negotiated (not a virtio bit).
    pub const VHOST_USER_PROTOCOL_FEATURES: u32 =
        vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES
            .bits()
            .trailing_zeros();
    /// virtio 1.0 or later.
    pub const VERSION_1: u32 = c::VIRTIO_F_VERSION_1;
    /// Device is behind an IOMMU.
    pub const ACCESS_PLATFORM: u32 = c::VIRTIO_F_ACCESS_PLATFORM;
}

const NAMES: &[(u32, &str)] = &[
    (feature::CSUM, "CSUM"),
    (feature::GUEST_CSUM, "GUEST_CSUM"),
    (feature::CTRL_GUEST_OFFLOADS, "CTRL_GUEST_OFFLOADS"),
    (feature::MTU, "MTU"),
    (feature::MAC, "MAC"),
    (feature::GUEST_TSO4, "GUEST_TSO4"),
    (feature::GUEST_TSO6, "GUEST_TSO6"),
    (feature::GUEST_ECN, "GUEST_ECN"),
    (feature::GUEST_UFO, "GUEST_UFO"),
    (feature::HOST_TSO4, "HOST_TSO4"),
    (feature::HOST_TSO6, "HOST_TSO6"),
    (feature::HOST_ECN, "HOST_ECN"),
    (feature::HOST_UFO, "HOST_UFO"),
    (feature::MRG_RXBUF, "MRG_RXBUF"),
    (feature::STATUS, "STATUS"),
    (feature::CTRL_VQ, "CTRL_VQ"),
    (feature::CTRL_RX, "CTRL_RX"),
    (feature::CTRL_VLAN, "CTRL_VLAN"),
    (feature::GUEST_ANNOUNCE, "GUEST_ANNOUNCE"),
    (feature::MQ, "MQ"),
    (feature::CTRL_MAC_ADDR, "CTRL_MAC_ADDR"),
    (feature::RING_INDIRECT_DESC, "RING_INDIRECT_DESC"),
    (feature::RING_EVENT_IDX, "RING_EVENT_IDX"),
    (
        feature::VHOST_USER_PROTOCOL_FEATURES,
        "VHOST_USER_PROTOCOL_FEATURES",
    ),
    (feature::VERSION_1, "VERSION_1"),
    (feature::ACCESS_PLATFORM, "ACCESS_PLATFORM"),
];

/// The bit for feature number `f`.
pub const fn bit(f: u32) -> u64 {
    1u64 << f
}

/// The names of the bits set in `features` (unknown bits as `bitN`).
pub fn feature_names(features: u64) -> Vec<String> {
    (0..64)
        .filter(|b| features & bit(*b) != 0)
        .map(|b| match NAMES.iter().find(|(n, _)| *n == b) {
            Some((_, name)) => (*name).to_string(),
            None => format!("bit{b}"),
        })
        .collect()
}

/// Which checksum and segmentation offloads a device offers: what the
/// backend behind it can take and make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferedOffloads {
    /// None (`--no-offload`): full checksums, frames of at most the MTU.
    None,
    /// uipd's stack: checksums and TSO over IPv4 and IPv6 both ways; a
    /// guest that accepts `GUEST_TSO4` but refuses `GUEST_TSO6` (or the
    /// other way round) gets super-frames only for the family it accepted
    /// (see [`Negotiated::offload`]).
    Stack,
    /// A host TAP (`-net tap`): the kernel takes and makes TSO over IPv4
    /// and IPv6, with ECN, so those are offered too.
    Tap,
}

/// The checksum and TSO features of `o`.
fn offload_bits(o: OfferedOffloads) -> u64 {
    use feature::*;
    let list: &[u32] = match o {
        OfferedOffloads::None => &[],
        OfferedOffloads::Stack => &[
            CSUM, GUEST_CSUM, HOST_TSO4, GUEST_TSO4, HOST_TSO6, GUEST_TSO6,
        ],
        OfferedOffloads::Tap => &[
            CSUM, GUEST_CSUM, HOST_TSO4, GUEST_TSO4, HOST_TSO6, GUEST_TSO6, HOST_ECN, GUEST_ECN,
        ],
    };
    list.iter().fold(0u64, |a, b| a | bit(*b))
}

/// The features the device offers for `queue_pairs` pairs with the
/// offloads of uipd's stack; see [`offered_with`].
pub fn offered(queue_pairs: u16, ctrl_vq: bool) -> u64 {
    offered_with(queue_pairs, ctrl_vq, OfferedOffloads::Stack)
}

/// The features the device offers for `queue_pairs` pairs; `ctrl_vq` when
/// this device model serves the control queue itself (the embedded VMM;
/// for vhost-user the VMM does); `offloads` by what the backend takes.
pub fn offered_with(queue_pairs: u16, ctrl_vq: bool, offloads: OfferedOffloads) -> u64 {
    use feature::*;
    let mut f = [
        VERSION_1,
        MAC,
        MTU,
        STATUS,
        MRG_RXBUF,
        RING_EVENT_IDX,
        RING_INDIRECT_DESC,
    ]
    .iter()
    .fold(0u64, |a, b| a | bit(*b))
        | offload_bits(offloads);
    if ctrl_vq {
        f |= bit(CTRL_VQ) | bit(CTRL_RX) | bit(CTRL_MAC_ADDR);
    }
    if queue_pairs > 1 {
        f |= bit(MQ);
    }
    f
}

/// What the driver accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Negotiated(pub u64);

impl Negotiated {
    /// Whether feature `f` was accepted.
    pub fn has(self, f: u32) -> bool {
        self.0 & bit(f) != 0
    }

    /// Length of the virtio-net header on the wire: 12 bytes
    /// (`virtio_net_hdr_v1` / `_mrg_rxbuf`) with VERSION_1 or MRG_RXBUF,
    /// else the legacy 10 (§5.1.6.1).
    pub fn hdr_len(self) -> usize {
        if self.has(feature::VERSION_1) || self.has(feature::MRG_RXBUF) {
            HEADER_LEN
        } else {
            HEADER_LEN - 2
        }
    }

    /// Whether RX frames may span several chains.
    pub fn mrg_rxbuf(self) -> bool {
        self.has(feature::MRG_RXBUF)
    }

    /// The stack offloads these features allow toward the guest. The stack
    /// always takes the header from the guest (it honours `NEEDS_CSUM` and
    /// TSO super-frames, which the guest sends only if it accepted `CSUM`
    /// and `HOST_TSO4` / `HOST_TSO6`).
    pub fn offload(self) -> Offload {
        let csum = self.has(feature::GUEST_CSUM);
        Offload {
            vnet_hdr: true,
            csum,
            tso: csum && self.has(feature::GUEST_TSO4),
            tso6: csum && self.has(feature::GUEST_TSO6),
            // GUEST_UFO is not offered.
            ufo: false,
        }
    }
}

/// Toward the guest, a frame whose header was made by someone else (a
/// host TAP): whether it asks only for what the driver accepted (§5.1.6.4:
/// `NEEDS_CSUM` needs `GUEST_CSUM`, each GSO type its `GUEST_TSO4`/`TSO6`/
/// `UFO`, the ECN flag `GUEST_ECN`). `DATA_VALID` is cleared without
/// `GUEST_CSUM` (the device may set it only then); `RSC_INFO` is always
/// cleared (never negotiated here). `false`: drop the frame.
pub fn rx_header_fits(neg: Negotiated, hdr: &mut [u8; HEADER_LEN]) -> bool {
    use crate::stack::wire::vnet_hdr::{flags, gso};
    let csum = neg.has(feature::GUEST_CSUM);
    if hdr[0] & flags::NEEDS_CSUM != 0 && !csum {
        return false;
    }
    if !csum {
        hdr[0] &= !flags::DATA_VALID;
    }
    hdr[0] &= !flags::RSC_INFO;
    let ty = hdr[1];
    if ty & gso::ECN != 0 && !neg.has(feature::GUEST_ECN) {
        return false;
    }
    let need = match ty & !gso::ECN {
        gso::NONE => return ty == gso::NONE,
        gso::TCPV4 => feature::GUEST_TSO4,
        gso::TCPV6 => feature::GUEST_TSO6,
        gso::UDP => feature::GUEST_UFO,
        _ => return false,
    };
    // A GSO frame also needs its checksum left partial (§5.1.6.2).
    neg.has(need) && csum
}

/// `struct virtio_net_config` up to `mtu` (§5.1.4), little-endian.
#[derive(Debug, Clone, Copy)]
pub struct ConfigSpace {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// `VIRTIO_NET_S_LINK_UP` (1) when the link is up.
    pub status: u16,
    /// Most queue pairs the guest may enable.
    pub max_queue_pairs: u16,
    /// The MTU the device advises.
    pub mtu: u16,
}

impl ConfigSpace {
    /// The config space bytes.
    pub fn bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..6].copy_from_slice(&self.mac);
        b[6..8].copy_from_slice(&self.status.to_le_bytes());
        b[8..10].copy_from_slice(&self.max_queue_pairs.to_le_bytes());
        b[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        b
    }

    /// A driver read of `size` bytes at `offset`; bytes past the fields we
    /// implement read as zero, a range past 256 bytes is empty.
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let (Ok(off), Ok(size)) = (usize::try_from(offset), usize::try_from(size)) else {
            return Vec::new();
        };
        if off.saturating_add(size) > 256 {
            return Vec::new();
        }
        let b = self.bytes();
        (off..off + size)
            .map(|i| b.get(i).copied().unwrap_or(0))
            .collect()
    }
}

/// A chain that breaks the virtqueue rules: the queue must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain has no descriptor we could read (or a bad indirect table).
    #[error("descriptor chain {head} is empty or its indirect table is invalid")]
    Empty {
        /// Head index.
        head: u16,
    },
    /// The chain loops, is longer than the queue, or points past the table.
    #[error("descriptor chain {head} does not end (a loop, or a next index out of range)")]
    Unterminated {
        /// Head index.
        head: u16,
    },
    /// A device-writable descriptor in a TX chain, a readable one in RX.
    #[error("descriptor chain {head} has a descriptor of the wrong direction")]
    Direction {
        /// Head index.
        head: u16,
    },
    /// A descriptor points outside guest memory.
    #[error("descriptor chain {head} points outside guest memory ({addr:#x}+{len})")]
    OutOfMemory {
        /// Head index.
        head: u16,
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The used ring or the avail ring is outside guest memory.
    #[error("the queue's rings are outside guest memory")]
    Rings,
    /// The driver's available index is more than a queue ahead of the
    /// device's (virtio 1.2 §2.7.6: it offers at most `size` chains).
    #[error(
        "the available ring index {avail} is more than the queue size {size} ahead of the device's {next}"
    )]
    AvailIndex {
        /// The driver's available index.
        avail: u16,
        /// The device's next available index.
        next: u16,
        /// Queue size.
        size: u16,
    },
}

/// Why a frame was dropped without stopping the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// TX: shorter than the virtio-net header.
    Short,
    /// TX: longer than uipd's frame buffer.
    TooLong,
    /// RX: the frame does not fit one chain and MRG_RXBUF is off.
    TooBig,
}

/// The outcome of [`tx_pop`] for one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tx {
    /// A frame of this many bytes (12-byte header included) is in the buffer.
    Frame(usize),
    /// The chain was consumed, its frame dropped.
    Dropped(DropReason),
}

/// Walk one chain's descriptors: each must point the way `want_write`
/// says (any way if `None`), and the chain must end. Calls `f` per
/// descriptor.
fn walk<M, F>(
    chain: virtio_queue::DescriptorChain<&M>,
    want_write: Option<bool>,
    mut f: F,
) -> Result<(), ChainError>
where
    M: GuestMemory,
    F: FnMut(&Descriptor) -> Result<(), ChainError>,
{
    let head = chain.head_index();
    let mut last: Option<Descriptor> = None;
    for desc in chain {
        if want_write.is_some_and(|w| w != desc.is_write_only()) {
            return Err(ChainError::Direction { head });
        }
        f(&desc)?;
        last = Some(desc);
    }
    match last {
        None => Err(ChainError::Empty { head }),
        // virtio-queue's iterator stops silently on a loop (TTL), a next
        // index past the table, or a bad indirect table: the descriptor it
        // stopped after still says NEXT.
        Some(d) if d.has_next() => Err(ChainError::Unterminated { head }),
        Some(_) => Ok(()),
    }
}

/// Pop the next available chain of `q`: `Ok(None)` when the queue is
/// empty or not ready, an error when the avail ring breaks the rules.
///
/// Why not `QueueT::pop_descriptor_chain`: it logs an error of
/// `QueueT::iter` (an avail index more than a queue ahead, an avail ring
/// outside memory) and returns `None`, the same as an empty queue, so a
/// caller that loops until the queue looks empty after re-enabling
/// notifications (`enable_notification` still sees the bad index) spins
/// and logs forever. Here every such state is a [`ChainError`], and the
/// caller stops the queue once. The avail ring element is checked before
/// the iterator reads it, so virtio-queue's own "Failed to read from
/// memory" line cannot be triggered either.
pub fn pop_chain<'m, M: GuestMemory>(
    q: &mut Queue,
    mem: &'m M,
) -> Result<Option<DescriptorChain<&'m M>>, ChainError> {
    if !q.ready() {
        return Ok(None);
    }
    let (next, size) = (q.next_avail(), q.size());
    let avail = q
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| ChainError::Rings)?
        .0;
    if avail == next {
        return Ok(None);
    }
    if avail.wrapping_sub(next) > size {
        return Err(ChainError::AvailIndex { avail, next, size });
    }
    // §2.7.6: ring[next % size] follows the 4-byte flags and idx.
    let slot = next.checked_rem(size).ok_or(ChainError::Rings)?;
    let elem = GuestAddress(q.avail_ring())
        .checked_add(RING_HEADER + 2 * u64::from(slot))
        .ok_or(ChainError::Rings)?;
    if !mem.check_range(elem, 2, Permissions::Read) {
        return Err(ChainError::Rings);
    }
    // `iter` reads the index again: a guest that moved it meanwhile gets
    // the same checks (and an avail ring at address 0, which virtio-queue
    // refuses as "not ready" although the queue is, is broken for good).
    let mut it = q.iter(mem).map_err(|e| match e {
        virtio_queue::Error::InvalidAvailRingIndex => ChainError::AvailIndex { avail, next, size },
        _ => ChainError::Rings,
    })?;
    Ok(it.next())
}

/// Check that a descriptor lies inside guest memory (readable for a TX
/// descriptor, writable for an RX one).
fn check<M: GuestMemory>(mem: &M, head: u16, d: &Descriptor) -> Result<usize, ChainError> {
    let n = usize::try_from(d.len()).unwrap_or(usize::MAX);
    let access = if d.is_write_only() {
        Permissions::Write
    } else {
        Permissions::Read
    };
    if mem.check_range(d.addr(), n, access) {
        Ok(n)
    } else {
        Err(ChainError::OutOfMemory {
            head,
            addr: d.addr().0,
            len: d.len(),
        })
    }
}

/// Pop one TX chain and copy its frame into `buf`, widened to the 12-byte
/// header; the chain is returned to the guest (used, length 0) unless it is
/// broken. `Ok(None)`: the queue is empty (or not ready).
pub fn tx_pop<M: GuestMemory>(
    q: &mut Queue,
    mem: &M,
    neg: Negotiated,
    buf: &mut [u8],
) -> Result<Option<Tx>, ChainError> {
    let Some(chain) = pop_chain(q, mem)? else {
        return Ok(None);
    };
    let head = chain.head_index();
    // A legacy 10-byte header lands at offset 2, then moves down.
    let shift = HEADER_LEN - neg.hdr_len();
    let mut at = shift;
    let mut too_long = false;
    walk(chain, Some(false), |d| {
        let n = check(mem, head, d)?;
        if too_long || at.saturating_add(n) > buf.len() {
            too_long = true;
            return Ok(());
        }
        mem.read_slice(&mut buf[at..at + n], d.addr())
            .map_err(|_| ChainError::OutOfMemory {
                head,
                addr: d.addr().0,
                len: d.len(),
            })?;
        at += n;
        Ok(())
    })?;
    q.add_used(mem, head, 0).map_err(|_| ChainError::Rings)?;
    if too_long {
        return Ok(Some(Tx::Dropped(DropReason::TooLong)));
    }
    if at < HEADER_LEN {
        return Ok(Some(Tx::Dropped(DropReason::Short)));
    }
    if shift > 0 {
        buf.copy_within(shift..HEADER_LEN, 0);
        // num_buffers: meaningless on TX.
        buf[HEADER_LEN - 2..HEADER_LEN].fill(0);
    }
    Ok(Some(Tx::Frame(at)))
}

/// The outcome of [`RxRing::put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rx {
    /// Written into this many chains.
    Placed(u16),
    /// Not enough RX buffers now: nothing was consumed; keep the frame.
    NoRoom,
    /// Dropped; nothing was consumed.
    Dropped(DropReason),
}

/// Writer state of one RX queue: scratch lists reused across frames and the
/// used index at the last notification decision.
#[derive(Debug, Default)]
pub struct RxRing {
    /// (head, writable bytes) of the chains popped for the current frame.
    chains: Vec<(u16, usize)>,
    /// (addr, len) of their descriptors, in order.
    segs: Vec<(GuestAddress, usize)>,
    /// `next_used` when we last decided on a notification.
    signalled: Option<u16>,
}

const USED_ELEM: u64 = 8;
const RING_HEADER: u64 = 4;
const AVAIL_F_NO_INTERRUPT: u16 = 1;

impl RxRing {
    /// Write `frame` (12-byte virtio-net header + Ethernet) into the guest's
    /// RX buffers and publish it. The header's `num_buffers` is set here;
    /// a legacy guest gets the 10-byte header.
    pub fn put<M: GuestMemory>(
        &mut self,
        q: &mut Queue,
        mem: &M,
        neg: Negotiated,
        frame: &[u8],
    ) -> Result<Rx, ChainError> {
        if self.signalled.is_none() {
            self.signalled = Some(q.next_used());
        }
        let Some((hdr, eth)) = frame.split_first_chunk::<HEADER_LEN>() else {
            return Ok(Rx::Dropped(DropReason::Short));
        };
        let hdr_len = neg.hdr_len();
        let total = hdr_len + eth.len();
        let start = q.next_avail();
        self.chains.clear();
        self.segs.clear();
        let mut cap = 0usize;
        while cap < total {
            let Some(chain) = pop_chain(q, mem)? else {
                q.set_next_avail(start);
                return Ok(Rx::NoRoom);
            };
            if !neg.mrg_rxbuf() && !self.chains.is_empty() {
                // One chain per frame without MRG_RXBUF: it was too small.
                q.set_next_avail(start);
                return Ok(Rx::Dropped(DropReason::TooBig));
            }
            let head = chain.head_index();
            let mut chain_cap = 0usize;
            let segs = &mut self.segs;
            walk(chain, Some(true), |d| {
                let n = check(mem, head, d)?;
                if n > 0 {
                    segs.push((d.addr(), n));
                    chain_cap = chain_cap.saturating_add(n);
                }
                Ok(())
            })?;
            if chain_cap < hdr_len {
                // §5.1.6.3.1: every buffer holds at least the header.
                return Err(ChainError::Empty { head });
            }
            self.chains.push((head, chain_cap));
            cap = cap.saturating_add(chain_cap);
            if !neg.mrg_rxbuf() && cap < total {
                q.set_next_avail(start);
                return Ok(Rx::Dropped(DropReason::TooBig));
            }
        }
        let n = u16::try_from(self.chains.len()).map_err(|_| ChainError::Rings)?;
        let mut h = *hdr;
        // §5.1.6.4: num_buffers is 1 without MRG_RXBUF.
        h[HEADER_LEN - 2..].copy_from_slice(&n.to_le_bytes());
        let mut w = Scatter {
            segs: &self.segs,
            i: 0,
            off: 0,
        };
        w.write(mem, &h[..hdr_len])?;
        w.write(mem, eth)?;
        // Used entries: every chain full but the last.
        let size = q.size();
        if size == 0 {
            return Err(ChainError::Rings);
        }
        let used = GuestAddress(q.used_ring());
        let mut idx = q.next_used();
        let mut left = total;
        for &(head, chain_cap) in &self.chains {
            let len = left.min(chain_cap);
            left -= len;
            let slot = u64::from(idx % size);
            let addr = used
                .checked_add(RING_HEADER + slot * USED_ELEM)
                .ok_or(ChainError::Rings)?;
            let mut elem = [0u8; 8];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
            mem.write_slice(&elem, addr)
                .map_err(|_| ChainError::Rings)?;
            idx = idx.wrapping_add(1);
        }
        // Release: the elements and the buffers' bytes are visible before
        // the driver can see the new index (pairs with its acquire load).
        mem.store(
            idx.to_le(),
            used.checked_add(2).ok_or(ChainError::Rings)?,
            Ordering::Release,
        )
        .map_err(|_| ChainError::Rings)?;
        q.set_next_used(idx);
        Ok(Rx::Placed(n))
    }

    /// Whether the guest wants an interrupt for the used entries published
    /// since the last call (§2.7.10: the event-idx rule over the batch, or
    /// the `NO_INTERRUPT` flag without EVENT_IDX).
    pub fn needs_notification<M: GuestMemory>(
        &mut self,
        q: &Queue,
        mem: &M,
    ) -> Result<bool, ChainError> {
        let new = q.next_used();
        let old = self.signalled.unwrap_or(new);
        if new == old {
            return Ok(false);
        }
        // The used index store must be visible before we read the driver's
        // used_event / flags (pairs with the driver's barrier between
        // writing used_event and re-reading the used index).
        fence(Ordering::SeqCst);
        let avail = GuestAddress(q.avail_ring());
        let notify = if q.event_idx_enabled() {
            let at = avail
                .checked_add(RING_HEADER + 2 * u64::from(q.size()))
                .ok_or(ChainError::Rings)?;
            let event = u16::from_le(
                mem.load::<u16>(at, Ordering::Relaxed)
                    .map_err(|_| ChainError::Rings)?,
            );
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags = u16::from_le(
                mem.load::<u16>(avail, Ordering::Relaxed)
                    .map_err(|_| ChainError::Rings)?,
            );
            flags & AVAIL_F_NO_INTERRUPT == 0
        };
        self.signalled = Some(new);
        Ok(notify)
    }

    /// Forget the notification state (the queue was reset).
    pub fn reset(&mut self) {
        self.signalled = None;
    }
}

/// Sequential writes across a list of guest segments.
struct Scatter<'a> {
    segs: &'a [(GuestAddress, usize)],
    i: usize,
    off: usize,
}

impl Scatter<'_> {
    fn write<M: GuestMemory>(&mut self, mem: &M, mut data: &[u8]) -> Result<(), ChainError> {
        while !data.is_empty() {
            let Some(&(addr, len)) = self.segs.get(self.i) else {
                return Err(ChainError::Rings);
            };
            let n = (len - self.off).min(data.len());
            let at = addr.checked_add(self.off as u64).ok_or(ChainError::Rings)?;
            mem.write_slice(&data[..n], at)
                .map_err(|_| ChainError::OutOfMemory {
                    head: 0,
                    addr: at.0,
                    len: u32::try_from(n).unwrap_or(u32::MAX),
                })?;
            data = &data[n..];
            self.off += n;
            if self.off == len {
                self.i += 1;
                self.off = 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
