//! Per-stack counters and the reasons a guest frame is dropped.
//!
//! One macro, [`counters!`], lists every counter once: the plain counters
//! (`rx_frames`, …) and the drop reasons (`drops_truncated`, …). From that
//! list come the [`Counters`] struct, [`DropReason`], the names
//! [`Counters::iter`] reports, and [`Counters::merge`], so a new counter
//! cannot be forgotten in one of them.

use super::wire;
#[cfg(doc)]
use super::{Offload, directory};

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal,)*) => {
        /// Why a guest frame (or part of it) was dropped.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum DropReason { $(#[doc = $name] $variant,)* }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// Counter name.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }
        }
    };
}

drop_reasons! {
    Truncated => "drops_truncated",
    Malformed => "drops_malformed",
    BadChecksum => "drops_bad_csum",
    NotForUs => "drops_not_for_us",
    Unsupported => "drops_unsupported",
    Ipv6 => "drops_ipv6",
    BadAddress => "drops_bad_address",
    FragInvalid => "drops_frag_invalid",
    FragOverlap => "drops_frag_overlap",
    FragLimit => "drops_frag_limit",
    FragTimeout => "drops_frag_timeout",
    FragEvicted => "drops_frag_evicted",
    FlowLimit => "drops_flow_limit",
    NoFlow => "drops_no_flow",
    UdpQueueFull => "drops_udp_queue_full",
    NoPingSocket => "drops_icmp_no_ping_socket",
    Refused => "drops_refused",
    Dhcp => "drops_dhcp",
    HostError => "drops_host_error",
    BadVnetHdr => "drops_bad_vnet_hdr",
    Denied => "drops_denied",
    MemoryBudget => "drops_mem_budget",
}

const _: () = assert!(
    DropReason::ALL.len() <= 32,
    "Counters::drops holds 32 reasons"
);

/// Per-stack counters.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Frames from the guest.
    pub rx_frames: u64,
    /// Bytes from the guest.
    pub rx_bytes: u64,
    /// Frames to the guest.
    pub tx_frames: u64,
    /// Bytes to the guest.
    pub tx_bytes: u64,
    /// TCP connections opened.
    pub tcp_opened: u64,
    /// UDP flows opened.
    pub udp_opened: u64,
    /// ICMP echo flows opened.
    pub icmp_opened: u64,
    /// Datagrams reassembled from fragments.
    pub reassembled: u64,
    /// Datagrams larger than the MTU toward the guest (fragmented, or sent
    /// whole as UFO frames: [`Counters::ufo_frames`]).
    pub fragmented: u64,
    /// Of those, the ones sent as one UFO frame ([`Offload::ufo`]).
    pub ufo_frames: u64,
    /// GSO super-frames from the guest (virtio-net header `gso_type` not NONE).
    pub rx_gso_frames: u64,
    /// TSO super-frames to the guest.
    pub tx_gso_frames: u64,
    /// Inbound TCP connections from published ports.
    pub published_tcp: u64,
    /// Inbound UDP flows from published ports.
    pub published_udp: u64,
    /// Guest frames of flows that another worker holds, handed to it (they
    /// came in on this worker's queue: see [`directory`]).
    pub foreign_flow_frames: u64,
    /// Drops, indexed by [`DropReason`].
    pub drops: [u64; 32],
}

impl Counters {
    /// Count a drop.
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    /// Drops for one reason.
    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Every counter as (name, value), drops included.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        [
            ("rx_frames", self.rx_frames),
            ("rx_bytes", self.rx_bytes),
            ("tx_frames", self.tx_frames),
            ("tx_bytes", self.tx_bytes),
            ("tcp_opened", self.tcp_opened),
            ("udp_opened", self.udp_opened),
            ("icmp_opened", self.icmp_opened),
            ("reassembled", self.reassembled),
            ("fragmented", self.fragmented),
            ("ufo_frames", self.ufo_frames),
            ("rx_gso_frames", self.rx_gso_frames),
            ("tx_gso_frames", self.tx_gso_frames),
            ("published_tcp", self.published_tcp),
            ("published_udp", self.published_udp),
            ("foreign_flow_frames", self.foreign_flow_frames),
        ]
        .into_iter()
        .chain(
            DropReason::ALL
                .iter()
                .map(|r| (r.name(), self.drops_of(*r))),
        )
    }

    /// Add another set of counters into this one.
    pub fn merge(&mut self, o: &Counters) {
        self.rx_frames += o.rx_frames;
        self.rx_bytes += o.rx_bytes;
        self.tx_frames += o.tx_frames;
        self.tx_bytes += o.tx_bytes;
        self.tcp_opened += o.tcp_opened;
        self.udp_opened += o.udp_opened;
        self.icmp_opened += o.icmp_opened;
        self.reassembled += o.reassembled;
        self.fragmented += o.fragmented;
        self.ufo_frames += o.ufo_frames;
        self.rx_gso_frames += o.rx_gso_frames;
        self.tx_gso_frames += o.tx_gso_frames;
        self.published_tcp += o.published_tcp;
        self.published_udp += o.published_udp;
        self.foreign_flow_frames += o.foreign_flow_frames;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
    }
}

pub(super) fn wire_reason(e: wire::Error) -> DropReason {
    match e {
        wire::Error::Truncated => DropReason::Truncated,
        wire::Error::Malformed => DropReason::Malformed,
        wire::Error::Checksum => DropReason::BadChecksum,
        wire::Error::Unsupported => DropReason::Unsupported,
    }
}
