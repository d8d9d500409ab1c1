//! Per-stack counters and the reasons a guest frame is dropped.
//!
//! One macro, `counters!`, lists every counter once: the plain counters
//! (`rx_frames`, …) and the drop reasons (`drops_truncated`, …). From that
//! list come the [`Counters`] struct, [`DropReason`], the names
//! [`Counters::iter`] reports, and [`Counters::merge`], so a new counter
//! cannot be forgotten in one of them.

use super::wire;
#[cfg(doc)]
use super::{Offload, directory};

/// Generates [`Counters`] and [`DropReason`] from one list: plain
/// counters (a field each, named as reported), then drop reasons (variant
/// => reported name; counted in `Counters::drops`).
macro_rules! counters {
    (
        counters { $($(#[doc = $fdoc:literal])* $field:ident,)* }
        drops { $($variant:ident => $name:literal,)* }
    ) => {
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

        /// Per-stack counters.
        #[derive(Debug, Clone, Default)]
        pub struct Counters {
            $($(#[doc = $fdoc])* pub $field: u64,)*
            /// Drops, indexed by [`DropReason`].
            pub drops: [u64; 32],
        }

        impl Counters {
            /// Every counter as (name, value), drops included.
            pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
                [$((stringify!($field), self.$field),)*]
                    .into_iter()
                    .chain(DropReason::ALL.iter().map(|r| (r.name(), self.drops_of(*r))))
            }

            /// Add another set of counters into this one.
            pub fn merge(&mut self, o: &Counters) {
                $(self.$field += o.$field;)*
                for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
                    *a += b;
                }
            }
        }
    };
}

counters! {
    counters {
        /// Frames from the guest.
        rx_frames,
        /// Bytes from the guest.
        rx_bytes,
        /// Frames to the guest.
        tx_frames,
        /// Bytes to the guest.
        tx_bytes,
        /// TCP connections opened.
        tcp_opened,
        /// UDP flows opened.
        udp_opened,
        /// ICMP echo flows opened.
        icmp_opened,
        /// Datagrams reassembled from fragments.
        reassembled,
        /// Datagrams larger than the MTU toward the guest (fragmented, or sent
        /// whole as UFO frames: [`Counters::ufo_frames`]).
        fragmented,
        /// Of those, the ones sent as one UFO frame ([`Offload::ufo`]).
        ufo_frames,
        /// GSO super-frames from the guest (virtio-net header `gso_type` not NONE).
        rx_gso_frames,
        /// TSO super-frames to the guest.
        tx_gso_frames,
        /// Inbound TCP connections from published ports.
        published_tcp,
        /// Inbound UDP flows from published ports.
        published_udp,
        /// Guest frames of flows that another worker holds, handed to it (they
        /// came in on this worker's queue: see [`directory`]).
        foreign_flow_frames,
    }
    drops {
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
}

const _: () = assert!(
    DropReason::ALL.len() <= 32,
    "Counters::drops holds 32 reasons"
);

impl Counters {
    /// Count a drop.
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    /// Drops for one reason.
    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}

/// The drop reason for a wire parse error.
pub(super) fn wire_reason(e: wire::Error) -> DropReason {
    match e {
        wire::Error::Truncated => DropReason::Truncated,
        wire::Error::Malformed => DropReason::Malformed,
        wire::Error::Checksum => DropReason::BadChecksum,
        wire::Error::Unsupported => DropReason::Unsupported,
    }
}
