//! The protocol engine: guest frames in, guest frames and host socket
//! operations out. No I/O, no clock, no threads, no unsafe.
//!
//! ```text
//!  guest frame ──► Stack::ingress ────► Actions { frames: to the guest,
//!                                                ops: SockOp for the host }
//!  HostEvent   ──► Stack::host_event ─► Actions
//!  now         ──► Stack::poll ───────► Actions (delayed ACKs, timers) + next deadline
//! ```
//!
//! # Theory of operation
//!
//! The guest sees one router, the gateway (192.168.33.1 by default), with a
//! MAC of its own. uipd answers ARP for it, answers ICMP echo to it, serves
//! DHCP (one address: the guest's) and forwards DNS sent to it. Every other
//! TCP, UDP or ICMP echo flow the guest starts is NAT'ed onto a host socket:
//! the flow is keyed by the guest's 5-tuple ([`FlowKey`]), and the host
//! socket connects to the address the guest addressed, except that the
//! gateway address maps to the host's 127.0.0.1 (`host_loopback`) and
//! `gateway:53` maps to the first resolver. A new outbound flow is
//! judged by the outbound [`policy`] on that host address (DNS to the
//! gateway exempt) and by the flow cap (`max_flows`); a refused flow is
//! answered as a filtering router would (TCP: RST; UDP and ICMP echo: ICMP
//! unreachable, "administratively prohibited") and counted.
//!
//! IPv6 works the same way (see the `ipv6` module): the gateway is also
//! fd00:33::1 and fe80::1 on a /64 it advertises for SLAAC, it answers
//! neighbour and router solicitations, and IPv6 flows go to `AF_INET6` host
//! sockets, the gateway mapping to ::1.
//!
//! Malformed input is dropped and counted by [`DropReason`]; nothing a guest
//! sends can panic the stack or make it hold unbounded memory: flows are
//! capped (`max_flows`), per-flow queues are capped (see [`tcp::conn`]),
//! reassembly is capped ([`frag::Limits`]), and all flow buffers together
//! are held within one memory budget shared by every worker
//! ([`Config::memory`], see [`mem`]): past it, TCP windows close, host
//! reads wait and datagrams are dropped, instead of memory growing.
//!
//! The caller batches: feed a burst of frames to [`Stack::ingress`], then
//! call [`Stack::poll`] once, which sends the ACKs the burst left pending
//! (one per flow, like GRO on a NIC) and runs due timers.
#![forbid(unsafe_code)]

pub mod dhcp;
pub mod dhcpv6;
pub mod directory;
pub mod dns;
pub mod flow;
pub mod frag;
mod ipv6;
pub mod mem;
pub mod ops;
pub mod policy;
pub mod steer;
pub mod tcp;
pub mod time;
pub mod wire;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

pub use directory::Directory;
pub use mem::{MemBudget, MemStats};

pub use flow::{FlowId, FlowKey};
pub use ops::{Errno, HostEvent, Proto, SockOp};
pub use time::Instant;

use flow::FlowTable;
use tcp::conn::{Conn, Verdict};
use wire::vnet_hdr::{self, flags as vnet_flags, gso};
use wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, EthernetFrame, EthernetRepr,
    Icmpv4Packet, Icmpv4Repr, Ipv4Packet, Ipv4Repr, SeqNumber, TcpPacket, TcpRepr, UdpPacket,
    UdpRepr, VnetHdrPacket, VnetHdrRepr, ip_proto,
};

/// Offloads shared with the guest through a virtio-net header
/// ([`wire::vnet_hdr`]): a TAP opened with `IFF_VNET_HDR`, or a virtio-net
/// device. All off is a plain Ethernet link (every checksum computed and
/// verified, no frame over the MTU).
///
/// ```text
///  vnet_hdr off:            | Ethernet frame ≤ 14 + MTU |
///  vnet_hdr on:   | 12 B hdr | Ethernet frame (≤ 14 + 65535 with GSO) |
/// ```
///
/// `tso` and `csum` mean nothing without `vnet_hdr` ([`Stack::new`] clears
/// them). What the guest may send us (GSO super-frames, partial checksums)
/// is always accepted once `vnet_hdr` is on: a TAP sends them only after
/// `TUNSETOFFLOAD`, a virtio guest only after negotiating `HOST_TSO4` /
/// `CSUM`, and either way the stack handles them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offload {
    /// Every frame, in and out, starts with a 12-byte virtio-net header.
    pub vnet_hdr: bool,
    /// We may send TCP super-frames (`gso_type` TCPV4) of up to
    /// [`TSO_MAX_FRAME`] bytes that the guest cuts at its MSS
    /// (virtio `GUEST_TSO4`). Super-frames always carry a partial checksum.
    pub tso: bool,
    /// The same for TCP over IPv6 (`gso_type` TCPV6, virtio `GUEST_TSO6`).
    pub tso6: bool,
    /// We may send TCP and UDP with `NEEDS_CSUM` and a partial checksum
    /// instead of computing it (virtio `GUEST_CSUM`).
    pub csum: bool,
    /// We may send a UDP datagram larger than the MTU as one frame
    /// (`gso_type` UDP, "UFO") instead of IPv4 fragments: the receiving
    /// kernel delivers it whole to a local socket or fragments it itself
    /// when it forwards it. A TAP takes it from user space whatever its
    /// `TUNSETOFFLOAD` flags (Linux kept accepting UFO from tun when it
    /// stopped generating it, 4.14); a virtio guest only with
    /// `GUEST_UFO`, which uipd does not offer.
    pub ufo: bool,
}

/// Largest IPv4 datagram of a TCP super-frame toward the guest (the IPv4
/// total length field's limit). IPv6 super-frames keep their whole packet,
/// fixed header included, within the same bound.
pub const TSO_MAX_FRAME: usize = 65535;

/// The largest TCP payload of a super-frame for a guest MSS of `mss`: a whole
/// number of segments that, with 20 bytes of IPv4 and 20 of TCP header (our
/// data segments carry no options), fits [`TSO_MAX_FRAME`].
pub fn tso_max_payload(mss: usize) -> usize {
    tso_payload_within(mss, wire::ipv4::HEADER_LEN)
}

/// [`tso_max_payload`] for TCP over IPv6 (a 40-byte IP header).
pub fn tso6_max_payload(mss: usize) -> usize {
    tso_payload_within(mss, wire::ipv6::HEADER_LEN)
}

fn tso_payload_within(mss: usize, ip_header: usize) -> usize {
    let room = TSO_MAX_FRAME - ip_header - wire::tcp::HEADER_LEN;
    let mss = mss.max(1);
    (room / mss * mss).max(mss)
}

/// The stack's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// MAC of the gateway (uipd's side of the link).
    pub gateway_mac: EthernetAddress,
    /// Gateway, DNS and DHCP server address.
    pub gateway: Ipv4Addr,
    /// The address DHCP hands out.
    pub guest_ip: Ipv4Addr,
    /// Prefix length of the guest network.
    pub prefix_len: u8,
    /// Link MTU toward the guest.
    pub mtu: u16,
    /// Serve IPv6 on the guest link: router advertisements, neighbour
    /// discovery, and IPv6 flows NAT'ed onto `AF_INET6` host sockets. Off:
    /// every IPv6 frame is dropped (`drops_ipv6`).
    pub ipv6: bool,
    /// The guest network's /64 prefix, advertised for SLAAC.
    pub prefix6: Ipv6Addr,
    /// The gateway's address in `prefix6` (DNS too; maps to the host's ::1).
    pub gateway6: Ipv6Addr,
    /// The gateway's link-local address: the source of router
    /// advertisements, so the guest's default route points to it.
    pub gateway6_ll: Ipv6Addr,
    /// Map the gateway address to the host's loopback.
    pub host_loopback: bool,
    /// Host resolvers for DNS sent to `dns:53`.
    pub resolvers: Vec<SocketAddr>,
    /// The guest's DNS server address: port 53 there (UDP and TCP) goes to
    /// the `resolvers`; DHCP offers it. uipd's default is the gateway
    /// itself; slirp4netns's is a separate address (10.0.2.3), which
    /// answers ARP and echo like the gateway and nothing but DNS. `None`:
    /// no DNS service (`--disable-dns`).
    pub dns: Option<Ipv4Addr>,
    /// The IPv6 DNS server address (RDNSS and DHCPv6 name it), as `dns`.
    pub dns6: Option<Ipv6Addr>,
    /// More addresses (beyond the gateway) that stand for the host's
    /// loopback, whatever `host_loopback` says (passt's and pasta's
    /// `--map-host-loopback` and `--map-guest-addr`, e.g. podman's
    /// host.containers.internal). They are off-link: the guest reaches them
    /// through the gateway.
    pub loopback_aliases: Vec<IpAddr>,
    /// DHCP lease time in seconds.
    pub lease_secs: u32,
    /// Most flows at once, in this stack. A guest served by several
    /// workers has one stack per worker: the daemon gives each a share of
    /// `--max-flows` ([`flow_share`]). A new flow beyond it is refused like
    /// a denied one (TCP: RST; UDP, ICMP echo: ICMP admin-prohibited) and
    /// counted (`drops_flow_limit`).
    pub max_flows: usize,
    /// Which host destinations the guest may open flows to
    /// (`--restrict`, `--allow`, `--deny`; see [`policy`]).
    pub policy: policy::Policy,
    /// Seed for initial sequence numbers.
    pub isn_seed: u64,
    /// Idle timeout of UDP flows.
    pub udp_timeout: Duration,
    /// Idle timeout of UDP flows to port 53.
    pub dns_timeout: Duration,
    /// Idle timeout of ICMP echo flows.
    pub icmp_timeout: Duration,
    /// Verify guest checksums (off when the frontend vouches for them).
    pub verify_checksums: bool,
    /// This stack's index among the workers that share flows by hash (see
    /// [`steer`]).
    pub worker: usize,
    /// Number of workers sharing the guest's flows by hash steering; 1 when
    /// this stack owns every flow it sees (a multiqueue TAP, where the
    /// kernel steers).
    pub workers: usize,
    /// Virtio-net header, TSO and checksum offload toward the guest.
    pub offload: Offload,
    /// Published ports: show the guest the host client's address as the
    /// source of inbound connections and datagrams (when it is one the
    /// guest can answer: not loopback, not in the guest's network), rather
    /// than the gateway's.
    pub publish_keep_source: bool,
    /// The guest's [`Directory`], shared by its stacks when there are
    /// several (`worker` is this one's index there): who owns each flow,
    /// and the guest's MAC. A guest frame of a flow that another stack
    /// holds goes to that stack ([`Actions::forward`]), whatever queue it
    /// came in on. `None` for a guest with one stack.
    pub directory: Option<Arc<Directory>>,
    /// The memory budget of flow buffers (`--max-memory`), one for all of
    /// a daemon's stacks. The default has no limit.
    pub memory: Arc<MemBudget>,
}

impl Default for Config {
    /// kvmtool-compatible defaults (DESIGN.md "Defaults").
    fn default() -> Self {
        Config {
            gateway_mac: EthernetAddress([0x02, 0x75, 0x69, 0x70, 0x64, 0x01]),
            gateway: Ipv4Addr::new(192, 168, 33, 1),
            guest_ip: Ipv4Addr::new(192, 168, 33, 15),
            prefix_len: 24,
            mtu: 65520,
            ipv6: true,
            prefix6: Ipv6Addr::new(0xfd00, 0x33, 0, 0, 0, 0, 0, 0),
            gateway6: Ipv6Addr::new(0xfd00, 0x33, 0, 0, 0, 0, 0, 1),
            gateway6_ll: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
            host_loopback: true,
            resolvers: Vec::new(),
            dns: Some(Ipv4Addr::new(192, 168, 33, 1)),
            dns6: Some(Ipv6Addr::new(0xfd00, 0x33, 0, 0, 0, 0, 0, 1)),
            loopback_aliases: Vec::new(),
            lease_secs: 86400,
            max_flows: 65536,
            policy: policy::Policy::default(),
            isn_seed: 0x5eed_1234_abcd_0001,
            udp_timeout: Duration::from_secs(180),
            dns_timeout: Duration::from_secs(10),
            icmp_timeout: Duration::from_secs(30),
            verify_checksums: true,
            worker: 0,
            workers: 1,
            offload: Offload::default(),
            publish_keep_source: false,
            directory: None,
            memory: Arc::new(MemBudget::default()),
        }
    }
}

/// Worker `worker`'s share of a guest-wide flow limit of `total` split
/// among `workers` stacks: `total / workers`, the first `total % workers`
/// workers one more, so the shares add up to `total` exactly. A flow is
/// refused when its own worker's share is used up (flows are not moved
/// between workers), so with several workers a guest whose flows hash
/// unevenly meets the limit somewhat before `total` flows in all.
pub fn flow_share(total: usize, worker: usize, workers: usize) -> usize {
    let workers = workers.max(1);
    total / workers + usize::from(worker < total % workers)
}

/// What the stack asks of the world after an input.
#[derive(Debug, Default)]
pub struct Actions {
    /// Ethernet frames to deliver to the guest, in order.
    pub frames: Vec<Vec<u8>>,
    /// Host socket operations, in order.
    pub ops: Vec<SockOp>,
    /// Guest frames that belong to another worker's flows, as
    /// `(worker, frame)`: a datagram reassembled here whose flow hashes
    /// elsewhere, or a frame of a flow the [`Directory`] says another
    /// worker holds. The frame is in the form `ingress` takes.
    pub forward: Vec<(usize, Vec<u8>)>,
}

impl Actions {
    /// True if there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.ops.is_empty() && self.forward.is_empty()
    }
}

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

/// Most datagrams queued on a UDP/ICMP flow while its socket connects.
const DGRAM_QUEUE: usize = 64;
/// How often flows are scanned for timers.
const TIMER_SCAN: Duration = Duration::from_millis(10);

/// A UDP or ICMP echo flow.
#[derive(Debug)]
struct DgramFlow {
    connected: bool,
    pending: VecDeque<Vec<u8>>,
    last_active: Instant,
    timeout: Duration,
    /// Budget held by each datagram in a `Send`, oldest first (a `Sent`
    /// gives back the oldest: the sum is exact once all are answered).
    in_flight: VecDeque<usize>,
    /// Budget held by `pending` and `in_flight`.
    held: usize,
    mem: Arc<MemBudget>,
}

impl DgramFlow {
    fn new(mem: Arc<MemBudget>, now: Instant, timeout: Duration, connected: bool) -> DgramFlow {
        DgramFlow {
            connected,
            pending: VecDeque::new(),
            last_active: now,
            timeout,
            in_flight: VecDeque::new(),
            held: 0,
            mem,
        }
    }

    /// What a datagram costs the budget.
    fn cost(data: &[u8]) -> usize {
        data.len() + mem::CHUNK_OVERHEAD
    }

    /// Reserve `data`'s cost; false when the budget is spent.
    fn reserve(&mut self, data: &[u8]) -> bool {
        let c = Self::cost(data);
        if !self.mem.try_reserve(c) {
            return false;
        }
        self.held += c;
        true
    }

    /// A reserved datagram goes into a `Send`.
    fn sending(&mut self, data: &[u8]) {
        self.in_flight.push_back(Self::cost(data));
    }

    /// A `Send` was answered.
    fn sent(&mut self) {
        if let Some(c) = self.in_flight.pop_front() {
            self.held -= c;
            self.mem.release(c);
        }
    }

    /// A queued datagram is given up (the socket failed).
    fn discard(&mut self, data: &[u8]) {
        let c = Self::cost(data);
        self.held -= c;
        self.mem.release(c);
    }
}

impl Drop for DgramFlow {
    /// A flow gone gives back what its queue and its `Send`s held.
    fn drop(&mut self) {
        self.mem.release(self.held);
    }
}

#[derive(Debug)]
enum FlowState {
    Tcp(Box<Conn>),
    Dgram(DgramFlow),
}

/// Link-layer addressing and offloads for frames to the guest.
#[derive(Debug, Clone, Copy)]
struct L2 {
    gateway: EthernetAddress,
    guest: EthernetAddress,
    offload: Offload,
}

impl L2 {
    /// Bytes before the Ethernet header: the virtio-net header, if any.
    fn headroom(&self) -> usize {
        if self.offload.vnet_hdr {
            vnet_hdr::HEADER_LEN
        } else {
            0
        }
    }

    /// A zeroed frame buffer for an Ethernet frame of `eth_len` bytes, with
    /// room for the virtio-net header (all zero: [`VnetHdrRepr::PLAIN`]).
    /// Returns the buffer and the offset of the Ethernet header.
    fn alloc(&self, eth_len: usize) -> (Vec<u8>, usize) {
        let hr = self.headroom();
        (vec![0u8; hr + eth_len], hr)
    }

    /// Write `hdr` in front of the frame in `buf` (no-op without vnet_hdr).
    fn put_vnet_hdr(&self, buf: &mut [u8], hdr: &VnetHdrRepr) {
        if self.offload.vnet_hdr {
            hdr.emit(&mut VnetHdrPacket::new_unchecked(buf));
        }
    }

    /// A frame to the guest carrying `ip`: virtio-net header `hdr` (when
    /// the link has one), Ethernet gateway → guest, and the IPv4 header,
    /// with room for `ip.payload_len` bytes of payload. Returns the buffer
    /// and the offset of the IPv4 payload (the L4 header).
    fn ipv4_frame(&self, ip: &Ipv4Repr, hdr: &VnetHdrRepr) -> (Vec<u8>, usize) {
        let ip_hdr = L4_START - wire::ethernet::HEADER_LEN;
        let (mut buf, l3) = self.eth_frame(EtherType::Ipv4, ip_hdr + ip.payload_len, hdr);
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[l3..]));
        (buf, l3 + ip_hdr)
    }

    /// A frame from the gateway to the guest with `hdr` and the Ethernet
    /// header written and room for `l3_len` bytes of `ethertype` after it;
    /// returns the buffer and the offset of the L3 header.
    fn eth_frame(
        &self,
        ethertype: EtherType,
        l3_len: usize,
        hdr: &VnetHdrRepr,
    ) -> (Vec<u8>, usize) {
        let (mut buf, hr) = self.alloc(wire::ethernet::HEADER_LEN + l3_len);
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
    fn ip_frame(
        &self,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        payload_len: usize,
        hdr: &VnetHdrRepr,
    ) -> Option<(Vec<u8>, usize)> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let ip = Ipv4Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: proto,
                    payload_len,
                    hop_limit: 64,
                };
                Some(self.ipv4_frame(&ip, hdr))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ip = wire::Ipv6Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: proto,
                    payload_len,
                    hop_limit: 64,
                };
                Some(self.ipv6_frame(&ip, hdr))
            }
            _ => None,
        }
    }
}

/// How the L4 checksum of a frame to the guest was filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxCsum {
    /// Computed in full (or the frame has no L4 checksum to speak of).
    Full,
    /// Partial (pseudo-header sum); the checksum field is at this offset
    /// from the start of the L4 header. Only for whole datagrams.
    Partial(u16),
}

/// Offset of the L4 header in a frame to the guest (Ethernet + IPv4, no options).
const L4_START: usize = wire::ethernet::HEADER_LEN + wire::ipv4::HEADER_LEN;

/// The user-mode network stack for one guest.
pub struct Stack {
    cfg: Config,
    guest_mac: Option<EthernetAddress>,
    flows: FlowTable<FlowState>,
    reasm: frag::Reassembler,
    counters: Counters,
    ip_ident: u16,
    isn_state: u64,
    ack_list: Vec<FlowId>,
    next_scan: Instant,
    /// Next source port for inbound flows shown from the gateway.
    pub_port: u16,
    /// Inbound UDP flows by (guest port, host peer); entries whose flow
    /// expired are replaced on use and pruned when the map outgrows the
    /// flow table.
    pub_udp: std::collections::HashMap<(u16, SocketAddr), FlowId>,
    /// When the next unsolicited router advertisement is due; `None` until
    /// the guest first sends IPv6 (then one goes out at once).
    next_ra: Option<Instant>,
    /// Unsolicited RAs sent so far (the first few go out faster).
    initial_ras: u8,
    /// TCP flows the memory budget held back (a window kept small, a
    /// `Recv` not posted): [`Stack::poll`] re-drives them once memory is
    /// free.
    mem_wait: Vec<FlowId>,
    /// Where the next wake-up of `mem_wait` starts.
    mem_rotor: usize,
}

/// Free budget at which [`Stack::poll`] wakes the flows waiting for memory
/// (less would only wake them to wait again).
const MEM_WAKE: usize = 64 << 10;
/// ... and at least this much per connection sharing the budget (each
/// connection's window is its share of what is free).
const MEM_WAKE_PER_CONN: usize = 2 << 10;

/// Source ports for inbound flows shown from the gateway (the Linux
/// ephemeral range: unlikely to be a port the guest connects to).
const PUB_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

impl Stack {
    /// A stack with `cfg`.
    pub fn new(cfg: Config) -> Stack {
        let mut cfg = cfg;
        if !cfg.offload.vnet_hdr {
            // Without the header there is no way to say "partial" or "super-frame".
            cfg.offload = Offload::default();
        }
        let max_flows = cfg.max_flows;
        let isn_state = cfg.isn_seed | 1;
        let flows = match &cfg.directory {
            Some(d) => FlowTable::shared(max_flows, d.clone(), cfg.worker),
            None => FlowTable::new(max_flows),
        };
        Stack {
            cfg,
            guest_mac: None,
            flows,
            reasm: frag::Reassembler::new(frag::Limits::default()),
            counters: Counters::default(),
            ip_ident: 1,
            isn_state,
            ack_list: Vec::new(),
            next_scan: Instant::ZERO,
            pub_port: *PUB_PORTS.start()
                + u16::try_from(isn_state % u64::from(PUB_PORTS.end() - PUB_PORTS.start()))
                    .unwrap_or(0),
            pub_udp: std::collections::HashMap::new(),
            next_ra: None,
            initial_ras: 0,
            mem_wait: Vec::new(),
            mem_rotor: 0,
        }
    }

    /// The memory budget this stack's flows draw on.
    pub fn memory(&self) -> &Arc<MemBudget> {
        &self.cfg.memory
    }

    /// Bytes of the memory budget this stack's flows hold now (the sum the
    /// flows account; the budget itself is shared with other stacks).
    pub fn held_memory(&self) -> usize {
        self.flows
            .ids()
            .into_iter()
            .filter_map(|id| match self.flows.get(id) {
                Some((_, FlowState::Tcp(c))) => Some(c.held_memory()),
                Some((_, FlowState::Dgram(f))) => Some(f.held),
                None => None,
            })
            .sum()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Live flows.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Replace the resolvers (resolv.conf changed).
    pub fn set_resolvers(&mut self, resolvers: Vec<SocketAddr>) {
        self.cfg.resolvers = resolvers;
    }

    /// Change the offloads toward the guest (a virtio guest negotiated its
    /// features). Flows built under the old ones should be reset first.
    pub fn set_offload(&mut self, offload: Offload) {
        self.cfg.offload = if offload.vnet_hdr {
            offload
        } else {
            Offload::default()
        };
    }

    /// The guest's MAC, once seen (by any of the guest's stacks).
    pub fn guest_mac(&self) -> Option<EthernetAddress> {
        match &self.cfg.directory {
            Some(d) => d.guest_mac(),
            None => self.guest_mac,
        }
    }

    /// A frame from `mac` came from the guest.
    fn learn_guest_mac(&mut self, mac: EthernetAddress) {
        match &self.cfg.directory {
            // Written only when it changes: every worker reads this line.
            Some(d) if d.guest_mac() != Some(mac) => d.set_guest_mac(mac),
            Some(_) => {}
            None => self.guest_mac = Some(mac),
        }
    }

    fn l2(&self) -> L2 {
        L2 {
            gateway: self.cfg.gateway_mac,
            guest: self.guest_mac().unwrap_or(EthernetAddress::BROADCAST),
            offload: self.cfg.offload,
        }
    }

    fn drop(&mut self, reason: DropReason) {
        log::trace!("drop: {}", reason.name());
        self.counters.drop(reason);
    }

    /// Count the incomplete datagrams the reassembler gave up since the
    /// last call: timed out (`drops_frag_timeout`) or evicted for room
    /// (`drops_frag_evicted`), one per datagram.
    fn count_frag_losses(&mut self) {
        let (expired, evicted) = self.reasm.take_lost();
        self.counters.drops[DropReason::FragTimeout as usize] += expired;
        self.counters.drops[DropReason::FragEvicted as usize] += evicted;
    }

    fn next_isn(&mut self) -> SeqNumber {
        // xorshift64*: RFC 6528 asks for unpredictable ISNs; the seed comes
        // from the OS in the daemon and is fixed in tests.
        let mut x = self.isn_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.isn_state = x;
        SeqNumber((x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32)
    }

    fn next_ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }

    fn push_frame(&mut self, out: &mut Actions, frame: Vec<u8>) {
        if self.cfg.offload.vnet_hdr
            && VnetHdrPacket::new_checked(&frame[..]).is_ok_and(|h| h.gso_type() != gso::NONE)
        {
            self.counters.tx_gso_frames += 1;
        }
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += frame.len() as u64;
        out.frames.push(frame);
    }

    // ───────────────────────────── ingress ─────────────────────────────

    /// Process one Ethernet frame from the guest (with `offload.vnet_hdr`,
    /// preceded by its 12-byte virtio-net header).
    ///
    /// A header with `NEEDS_CSUM` or `DATA_VALID` turns off L4 checksum
    /// verification for the frame: a partial checksum is not a full one, and
    /// the sender (the local kernel behind a TAP, or the guest's driver)
    /// vouches for the data. A guest that lies only corrupts its own stream,
    /// as it could with a correct checksum over wrong data. A GSO super-frame
    /// (TCPV4) is one big TCP segment to the translation; UDP segmentation
    /// (USO) super-frames, which the stack never enables, are dropped.
    pub fn ingress(&mut self, frame: &[u8], now: Instant, out: &mut Actions) {
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += frame.len() as u64;
        let (frame, hdr) = if self.cfg.offload.vnet_hdr {
            let hdr = match VnetHdrPacket::new_checked(frame).and_then(|p| VnetHdrRepr::parse(&p)) {
                Ok(h) => h,
                Err(_) => return self.drop(DropReason::BadVnetHdr),
            };
            match hdr.gso_kind() {
                gso::NONE => {}
                gso::TCPV4 | gso::TCPV6 | gso::UDP => self.counters.rx_gso_frames += 1,
                _ => return self.drop(DropReason::BadVnetHdr),
            }
            (&frame[vnet_hdr::HEADER_LEN..], hdr)
        } else {
            (frame, VnetHdrRepr::PLAIN)
        };
        let csum_trusted = hdr.needs_csum() || hdr.data_valid();
        let eth = match EthernetFrame::new_checked(frame) {
            Ok(f) => f,
            Err(e) => return self.drop(wire_reason(e)),
        };
        let src = eth.src_addr();
        let dst = eth.dst_addr();
        // IPv6 multicast (RFC 2464 §7): router and neighbour solicitations,
        // MLD reports; `ipv6` sorts out which concern us.
        let v6_multicast = dst.0[0] == 0x33 && dst.0[1] == 0x33;
        let v6_multicast = v6_multicast && eth.ethertype() == EtherType::Ipv6;
        if !(dst == self.cfg.gateway_mac || dst.is_broadcast() || v6_multicast) {
            return self.drop(DropReason::NotForUs);
        }
        if src.is_multicast() || src == self.cfg.gateway_mac {
            return self.drop(DropReason::BadAddress);
        }
        match eth.ethertype() {
            EtherType::Arp => self.arp(eth.payload(), src, out),
            // A TCPV6 super-frame must carry IPv6 (and TCPV4, IPv4).
            EtherType::Ipv4 if hdr.gso_kind() == gso::TCPV6 => self.drop(DropReason::BadVnetHdr),
            EtherType::Ipv4 => {
                self.learn_guest_mac(src);
                self.ipv4(eth.payload(), csum_trusted, now, out)
            }
            EtherType::Ipv6 if !self.cfg.ipv6 => self.drop(DropReason::Ipv6),
            EtherType::Ipv6 => {
                self.learn_guest_mac(src);
                self.ipv6(eth.payload(), &hdr, now, out)
            }
            EtherType::Unknown(_) => self.drop(DropReason::Unsupported),
        }
    }

    fn arp(&mut self, payload: &[u8], src_mac: EthernetAddress, out: &mut Actions) {
        let repr = match ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) {
            Ok(r) => r,
            Err(e) => return self.drop(wire_reason(e)),
        };
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
            .alloc(wire::ethernet::HEADER_LEN + reply.buffer_len());
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

    /// `csum_trusted`: the virtio-net header vouched for the L4 checksum.
    fn ipv4(&mut self, payload: &[u8], csum_trusted: bool, now: Instant, out: &mut Actions) {
        let pkt = match Ipv4Packet::new_checked(payload) {
            Ok(p) => p,
            Err(e) => return self.drop(wire_reason(e)),
        };
        let repr = match Ipv4Repr::parse(&pkt) {
            Ok(r) => r,
            Err(e) => return self.drop(wire_reason(e)),
        };
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
            let pushed =
                self.reasm
                    .push(key, pkt.frag_offset(), pkt.more_frags(), pkt.payload(), now);
            self.count_frag_losses();
            match pushed {
                Ok(Some(whole)) => {
                    self.counters.reassembled += 1;
                    if let Some(owner) = self.foreign_owner(src, dst, repr.next_header, &whole) {
                        return self.forward_datagram(owner, repr, &whole, out);
                    }
                    // Each fragment's header spoke for that fragment only
                    // (and Linux completes partial checksums before it
                    // fragments): verify the whole datagram.
                    self.l4(src, dst, repr.next_header, &whole, false, now, out);
                }
                Ok(None) => {}
                Err(frag::FragDrop::Invalid) => self.drop(DropReason::FragInvalid),
                Err(frag::FragDrop::Overlap) => self.drop(DropReason::FragOverlap),
                Err(frag::FragDrop::Limit) => self.drop(DropReason::FragLimit),
            }
            return;
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

    /// The worker that owns the flow of a reassembled datagram, if not this one.
    fn foreign_owner(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Option<usize> {
        if self.cfg.workers <= 1 {
            return None;
        }
        let mut frame = vec![0u8; 14 + 20];
        frame[12] = 0x08;
        frame[14] = 0x45;
        frame[14 + 9] = proto;
        frame[26..30].copy_from_slice(&src.octets());
        frame[30..34].copy_from_slice(&dst.octets());
        frame.extend_from_slice(&l4[..l4.len().min(8)]);
        match steer::frame_owner(&frame, self.cfg.workers) {
            steer::Steer::Worker(w) if w != self.cfg.worker => Some(w),
            _ => None,
        }
    }

    /// The worker that holds flow `key`, when this stack does not (see
    /// [`directory`]): the guest's frame of it came in on the wrong queue.
    fn held_elsewhere(&self, key: &FlowKey) -> Option<usize> {
        let dir = self.cfg.directory.as_ref()?;
        if self.flows.lookup(key).is_some() {
            return None;
        }
        dir.owner(key).filter(|&w| w != self.cfg.worker)
    }

    /// A key no stack of the guest holds (for a new inbound flow).
    fn key_free(&self, key: &FlowKey) -> bool {
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
    fn forward_l4(
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
                let ip = Ipv4Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: proto,
                    payload_len: l4.len(),
                    hop_limit: 64,
                };
                self.forward_datagram(owner, ip, l4, out);
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
    fn forward_datagram(&mut self, owner: usize, repr: Ipv4Repr, l4: &[u8], out: &mut Actions) {
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

    #[allow(clippy::too_many_arguments)]
    fn l4(
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

    /// Where a new guest flow to `remote` goes on the host, or why it is
    /// refused: [`DropReason::Refused`] (no resolver, a port other than 53
    /// of a DNS address that is not the gateway, or the gateway with
    /// `host_loopback` off) or [`DropReason::Denied`] (the outbound
    /// [`policy`], judged on the host address; DNS is exempt).
    fn map_remote(&self, proto: Proto, remote: SocketAddr) -> Result<SocketAddr, DropReason> {
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
    fn is_gateway(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => a == self.cfg.gateway,
            IpAddr::V6(a) => a == self.cfg.gateway6 || a == self.cfg.gateway6_ll,
        }
    }

    /// The DNS server address of either family.
    fn is_dns(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.cfg.dns == Some(a),
            IpAddr::V6(a) => self.cfg.dns6 == Some(a),
        }
    }

    /// An address uipd answers echo and neighbour queries for: the
    /// gateway's or the DNS server's.
    fn is_local(&self, ip: IpAddr) -> bool {
        self.is_gateway(ip) || self.is_dns(ip)
    }

    /// A destination no flow may go to, of either family.
    fn is_bad_dst(&self, dst: IpAddr) -> bool {
        match dst {
            IpAddr::V4(a) => self.is_bad_destination(a),
            IpAddr::V6(a) => self.is_bad_destination6(a),
        }
    }

    fn is_bad_destination(&self, dst: Ipv4Addr) -> bool {
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

    // ─────────────────────────────── TCP ───────────────────────────────

    fn tcp(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        payload: &[u8],
        verify: bool,
        now: Instant,
        out: &mut Actions,
    ) {
        let pkt = match TcpPacket::new_checked(payload) {
            Ok(p) => p,
            Err(e) => return self.drop(wire_reason(e)),
        };
        let seg = match TcpRepr::parse(&pkt, src, dst, verify) {
            Ok(r) => r,
            Err(e) => return self.drop(wire_reason(e)),
        };
        let key = FlowKey {
            proto: Proto::Tcp,
            guest: SocketAddr::from((src, seg.src_port)),
            remote: SocketAddr::from((dst, seg.dst_port)),
        };
        let l2 = self.l2();
        if let Some(id) = self.flows.lookup(&key) {
            let verdict = {
                let Some((_, FlowState::Tcp(conn))) = self.flows.get_mut(id) else {
                    return;
                };
                let mut frames = Vec::new();
                let mss = conn.mss();
                let was = conn.state();
                let v = conn.on_segment(
                    &seg,
                    now,
                    &mut tcp_emitter(l2, &key, mss, &mut frames),
                    &mut out.ops,
                );
                if was == tcp::conn::State::SynSent
                    && conn.state() == tcp::conn::State::Established
                    && let Some(max) = tso_payload(self.cfg.offload, &key, conn.mss())
                {
                    // Inbound: the guest's MSS is known only now.
                    conn.set_max_segment(max);
                }
                let pending = conn.ack_pending();
                (v, frames, pending, conn.take_mem_wait())
            };
            let (v, frames, pending, wait) = verdict;
            for f in frames {
                self.push_frame(out, f);
            }
            if pending {
                self.ack_list.push(id);
            }
            if wait {
                self.mem_wait.push(id);
            }
            if v == Verdict::Remove {
                self.flows.remove(id);
            }
            return;
        }
        // Not here: perhaps another worker's (a published flow, or one
        // whose frames changed queue). Even a bare SYN: a retransmission.
        if let Some(w) = self.held_elsewhere(&key) {
            return self.forward_l4(w, src, dst, ip_proto::TCP, payload, !verify, out);
        }
        // No flow: only a bare SYN opens one.
        let bare_syn = seg.flags.syn && seg.ack_number.is_none() && !seg.flags.fin;
        if seg.flags.rst {
            return;
        }
        if !bare_syn {
            self.drop(DropReason::NoFlow);
            return self.tcp_reset_reply(&key, &seg, l2, out);
        }
        if self.is_bad_dst(dst) {
            return self.drop(DropReason::BadAddress);
        }
        let host_dst = match self.map_remote(Proto::Tcp, SocketAddr::new(dst, seg.dst_port)) {
            Ok(a) => a,
            Err(reason) => {
                log::debug!("tcp {:?} -> {:?}: {}", key.guest, key.remote, reason.name());
                self.drop(reason);
                return self.tcp_reset_reply(&key, &seg, l2, out);
            }
        };
        let iss = self.next_isn();
        // Conn takes 40 bytes of IPv4 + TCP headers off the MTU; IPv6's
        // header is 20 bytes longer.
        let mtu = match dst {
            IpAddr::V4(_) => usize::from(self.cfg.mtu),
            IpAddr::V6(_) => usize::from(self.cfg.mtu).saturating_sub(20),
        };
        let offload = self.cfg.offload;
        let mem = self.cfg.memory.clone();
        let Some(id) = self.flows.insert_with(key, |id| {
            let mut conn = Conn::new(id, &seg, iss, mtu, mem);
            if let Some(max) = tso_payload(offload, &key, conn.mss()) {
                conn.set_max_segment(max);
            }
            FlowState::Tcp(Box::new(conn))
        }) else {
            // Another worker claimed the key since the lookup above (the
            // guest's SYN and its retransmission on two queues at once).
            if let Some(w) = self.held_elsewhere(&key) {
                return self.forward_l4(w, src, dst, ip_proto::TCP, payload, !verify, out);
            }
            self.drop(DropReason::FlowLimit);
            return self.tcp_reset_reply(&key, &seg, l2, out);
        };
        let conn_mss = match self.flows.get(id) {
            Some((_, FlowState::Tcp(c))) => c.mss(),
            _ => usize::from(tcp::conn::DEFAULT_MSS),
        };
        self.counters.tcp_opened += 1;
        out.ops.push(SockOp::Open {
            flow: id,
            proto: Proto::Tcp,
            dst: host_dst,
            mss: u16::try_from(conn_mss).ok(),
        });
    }

    /// RST for a segment that matches no connection (RFC 9293 §3.10.7.1).
    fn tcp_reset_reply(&mut self, key: &FlowKey, seg: &TcpRepr<'_>, l2: L2, out: &mut Actions) {
        let (seq, ack) = match seg.ack_number {
            Some(a) => (a, None),
            None => (SeqNumber(0), Some(seg.seq_number + seg.segment_len())),
        };
        let repr = TcpRepr {
            src_port: 0,
            dst_port: 0,
            flags: wire::tcp::Flags {
                rst: true,
                ..Default::default()
            },
            seq_number: seq,
            ack_number: ack,
            window_len: 0,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            payload: &[],
        };
        let mut frames = Vec::new();
        tcp_emitter(l2, key, 0, &mut frames)(&repr);
        for f in frames {
            self.push_frame(out, f);
        }
    }

    // ───────────────────────── published ports ─────────────────────────

    /// The source the guest sees for an inbound flow from host `peer` to
    /// guest port `guest_port`: the peer itself with `publish_keep_source`
    /// when the guest can answer it, else the gateway with a fresh port.
    /// `None` when no free source is found.
    fn inbound_source(
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
            let mut l4 = [0u8; 8];
            l4[0..2].copy_from_slice(&guest_port.to_be_bytes());
            l4[2..4].copy_from_slice(&p.port().to_be_bytes());
            let here = self
                .foreign_owner(self.cfg.guest_ip, *p.ip(), proto_number(proto), &l4)
                .is_none();
            if here && self.key_free(&key) {
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
            let mut l4 = [0u8; 8];
            l4[0..2].copy_from_slice(&guest_port.to_be_bytes());
            l4[2..4].copy_from_slice(&port.to_be_bytes());
            if self
                .foreign_owner(
                    self.cfg.guest_ip,
                    self.cfg.gateway,
                    proto_number(proto),
                    &l4,
                )
                .is_some()
            {
                continue;
            }
            return Some(key);
        }
        None
    }

    /// Ask for the guest's MAC (ARP who-has guest_ip) when it is not known
    /// yet: a frame to the broadcast MAC reaches the guest, but Linux TCP
    /// drops segments not addressed to its own MAC (`PACKET_HOST`), so an
    /// inbound SYN is answered only once the reply taught us the MAC (the
    /// SYN's retransmission then carries it).
    fn solicit_guest_mac(&mut self, out: &mut Actions) {
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
            .alloc(wire::ethernet::HEADER_LEN + req.buffer_len());
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

    fn in_guest_net(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.cfg.prefix_len.min(32)))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.cfg.gateway) & mask
    }

    /// A host client connected to a published port that forwards to the
    /// guest's `guest_port` (the dataplane accepted it). Opens a connection
    /// toward the guest: a SYN goes out now. Returns the new flow, to which
    /// the dataplane attaches the accepted socket (already connected: no
    /// `Open`, no `Connected` event), or `None` when the stack refuses it
    /// (flow limit): the dataplane then resets the host client.
    pub fn accept_tcp(
        &mut self,
        peer: SocketAddr,
        guest_port: u16,
        now: Instant,
        out: &mut Actions,
    ) -> Option<FlowId> {
        let Some(key) = self.inbound_source(Proto::Tcp, peer, guest_port) else {
            self.drop(DropReason::FlowLimit);
            return None;
        };
        self.solicit_guest_mac(out);
        let iss = self.next_isn();
        let mtu = usize::from(self.cfg.mtu);
        let l2 = self.l2();
        let mut frames = Vec::new();
        let mem = self.cfg.memory.clone();
        let id = self.flows.insert_with(key, |id| {
            let mut emit = tcp_emitter(l2, &key, 0, &mut frames);
            FlowState::Tcp(Box::new(Conn::new_to_guest(
                id, iss, mtu, now, mem, &mut emit,
            )))
        });
        let Some(id) = id else {
            self.drop(DropReason::FlowLimit);
            return None;
        };
        self.counters.published_tcp += 1;
        for f in frames {
            self.push_frame(out, f);
        }
        Some(id)
    }

    /// A datagram from host `peer` arrived on a published UDP port that
    /// forwards to the guest's `guest_port`: deliver it to the guest on the
    /// peer's flow. Returns the flow when this datagram created it: the
    /// dataplane then attaches it to the published socket, so that the
    /// guest's replies (`Send` on the flow) go back to `peer` from there.
    /// The flow expires like any UDP flow (`udp_timeout` idle).
    pub fn inbound_udp(
        &mut self,
        peer: SocketAddr,
        guest_port: u16,
        data: &[u8],
        now: Instant,
        out: &mut Actions,
    ) -> Option<FlowId> {
        let mut created = None;
        let live = self
            .pub_udp
            .get(&(guest_port, peer))
            .copied()
            .filter(|id| self.flows.get(*id).is_some());
        let id = match live {
            Some(id) => id,
            None => {
                let Some(key) = self.inbound_source(Proto::Udp, peer, guest_port) else {
                    self.drop(DropReason::FlowLimit);
                    return None;
                };
                self.solicit_guest_mac(out);
                let flow = DgramFlow::new(self.cfg.memory.clone(), now, self.cfg.udp_timeout, true);
                let Some(id) = self.flows.insert(key, FlowState::Dgram(flow)) else {
                    self.drop(DropReason::FlowLimit);
                    return None;
                };
                if self.pub_udp.len() >= self.cfg.max_flows {
                    let flows = &self.flows;
                    self.pub_udp.retain(|_, id| flows.get(*id).is_some());
                }
                self.pub_udp.insert((guest_port, peer), id);
                self.counters.published_udp += 1;
                created = Some(id);
                id
            }
        };
        let Some((key, FlowState::Dgram(f))) = self.flows.get_mut(id) else {
            return created;
        };
        f.last_active = now;
        let key = *key;
        self.dgram_to_guest(&key, data, out);
        created
    }

    // ─────────────────────────────── UDP ───────────────────────────────

    fn udp(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        payload: &[u8],
        verify: bool,
        now: Instant,
        out: &mut Actions,
    ) {
        let pkt = match UdpPacket::new_checked(payload) {
            Ok(p) => p,
            Err(e) => return self.drop(wire_reason(e)),
        };
        let repr = match UdpRepr::parse(&pkt, src, dst, verify) {
            Ok(r) => r,
            Err(e) => return self.drop(wire_reason(e)),
        };
        let data = pkt.payload();
        if let IpAddr::V4(d4) = dst
            && repr.dst_port == dhcp::SERVER_PORT
            && (d4.is_broadcast() || d4 == self.cfg.gateway)
        {
            return self.dhcp(data, out);
        }
        if self.is_bad_dst(dst) {
            return self.drop(DropReason::BadAddress);
        }
        let key = FlowKey {
            proto: Proto::Udp,
            guest: SocketAddr::from((src, repr.src_port)),
            remote: SocketAddr::from((dst, repr.dst_port)),
        };
        if let Some(w) = self.held_elsewhere(&key) {
            // Another worker's flow (published, or the guest's own that
            // changed queue): not a second host socket here.
            return self.forward_l4(w, src, dst, ip_proto::UDP, payload, !verify, out);
        }
        self.dgram_out(key, data.to_vec(), now, out);
    }

    /// Send a datagram (UDP payload, or an ICMP echo message) on the flow for
    /// `key`, opening it first if needed.
    fn dgram_out(&mut self, key: FlowKey, data: Vec<u8>, now: Instant, out: &mut Actions) {
        let id = match self.flows.lookup(&key) {
            Some(id) => id,
            None => {
                let remote = key.remote;
                let host_dst = match self.map_remote(key.proto, remote) {
                    Ok(a) => a,
                    Err(reason) => {
                        self.drop(reason);
                        // Nothing listens on the gateway without host
                        // loopback: the port is unreachable. A policy
                        // refusal says so (RFC 1812 §5.2.7.1).
                        let code = match reason {
                            DropReason::Denied => wire::icmpv4::unreachable::ADMIN_PROHIBITED,
                            _ => wire::icmpv4::unreachable::PORT,
                        };
                        return self.icmp_unreachable(&key, code, &data, out);
                    }
                };
                let timeout = match key.proto {
                    Proto::Icmp => self.cfg.icmp_timeout,
                    _ if remote.port() == 53 => self.cfg.dns_timeout,
                    _ => self.cfg.udp_timeout,
                };
                let flow = DgramFlow::new(self.cfg.memory.clone(), now, timeout, false);
                let Some(id) = self.flows.insert(key, FlowState::Dgram(flow)) else {
                    if self.held_elsewhere(&key).is_some() {
                        // Another worker opened the flow an instant ago
                        // (the same datagram flow on two queues at once):
                        // this one datagram is lost, as on a busy link.
                        return self.drop(DropReason::NoFlow);
                    }
                    // Refused, and said so: a guest that retries (DNS, a
                    // ping) learns at once instead of timing out.
                    self.drop(DropReason::FlowLimit);
                    let code = wire::icmpv4::unreachable::ADMIN_PROHIBITED;
                    return self.icmp_unreachable(&key, code, &data, out);
                };
                match key.proto {
                    Proto::Icmp => self.counters.icmp_opened += 1,
                    _ => self.counters.udp_opened += 1,
                }
                out.ops.push(SockOp::Open {
                    flow: id,
                    proto: key.proto,
                    dst: host_dst,
                    mss: None,
                });
                id
            }
        };
        let Some((_, FlowState::Dgram(f))) = self.flows.get_mut(id) else {
            return;
        };
        f.last_active = now;
        if !f.connected && f.pending.len() >= DGRAM_QUEUE {
            return self.drop(DropReason::UdpQueueFull);
        }
        if !f.reserve(&data) {
            // Over the memory budget: dropped, as by a full queue.
            f.mem.note_udp_drop();
            return self.drop(DropReason::MemoryBudget);
        }
        if f.connected {
            f.sending(&data);
            out.ops.push(SockOp::Send { flow: id, data });
        } else {
            f.pending.push_back(data);
        }
    }

    fn dhcp(&mut self, request: &[u8], out: &mut Actions) {
        let mask_bits = self.cfg.prefix_len;
        let params = dhcp::Params {
            server: self.cfg.gateway,
            offered: self.cfg.guest_ip,
            prefix_len: mask_bits,
            router: self.cfg.gateway,
            dns: self.cfg.dns.into_iter().collect(),
            lease_secs: self.cfg.lease_secs,
            mtu: self.cfg.mtu,
        };
        let reply = match dhcp::handle(&params, request) {
            Ok(r) => r,
            Err(dhcp::Ignored::NoReply) => return,
            Err(dhcp::Ignored::Malformed) => return self.drop(DropReason::Dhcp),
        };
        let (dst_ip, dst_mac) = if reply.broadcast {
            (Ipv4Addr::BROADCAST, EthernetAddress::BROADCAST)
        } else {
            (reply.dst, reply.client_mac)
        };
        let l2 = L2 {
            guest: dst_mac,
            ..self.l2()
        };
        self.udp_to_guest(
            l2,
            SocketAddrV4::new(self.cfg.gateway, dhcp::SERVER_PORT),
            SocketAddrV4::new(dst_ip, dhcp::CLIENT_PORT),
            &reply.payload,
            out,
        );
    }

    /// Build a UDP datagram to the guest, fragmenting it to the MTU.
    fn udp_to_guest(
        &mut self,
        l2: L2,
        from: SocketAddrV4,
        to: SocketAddrV4,
        payload: &[u8],
        out: &mut Actions,
    ) {
        let repr = UdpRepr {
            src_port: from.port(),
            dst_port: to.port(),
        };
        let l4_len = repr.header_len() + payload.len();
        if l4_len + wire::ipv4::HEADER_LEN > 65535 {
            return self.drop(DropReason::Malformed);
        }
        let mut l4 = vec![0u8; l4_len];
        let mut p = UdpPacket::new_unchecked(&mut l4[..]);
        let (s, d) = (IpAddr::V4(*from.ip()), IpAddr::V4(*to.ip()));
        // A partial checksum only on a whole datagram: fragments cannot
        // carry one (the receiver sums the datagram only after reassembly).
        let csum =
            if l2.offload.csum && wire::ipv4::HEADER_LEN + l4_len <= usize::from(self.cfg.mtu) {
                repr.emit_partial(&mut p, s, d, payload);
                TxCsum::Partial(UDP_CSUM_OFFSET)
            } else {
                repr.emit(&mut p, s, d, payload);
                TxCsum::Full
            };
        self.ipv4_to_guest_csum(l2, *from.ip(), *to.ip(), ip_proto::UDP, &l4, csum, out);
    }

    /// Wrap an upper-layer message with a computed checksum in IPv4
    /// (fragmenting to the MTU) and Ethernet.
    fn ipv4_to_guest(
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
    fn ipv4_to_guest_csum(
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
            let ip = Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: proto,
                payload_len: l4.len(),
                hop_limit: 64,
            };
            let hdr = VnetHdrRepr {
                flags: vnet_flags::DATA_VALID,
                gso_type: gso::UDP,
                // Cannot fail: 42 and at most 65515.
                hdr_len: u16::try_from(L4_START + 8).unwrap_or(u16::MAX),
                gso_size: u16::try_from((mtu.max(68) - wire::ipv4::HEADER_LEN) / 8 * 8)
                    .unwrap_or(1480),
                ..VnetHdrRepr::PLAIN
            };
            let (mut buf, l4_at) = l2.ipv4_frame(&ip, &hdr);
            let mut p = Ipv4Packet::new_unchecked(&mut buf[l4_at - wire::ipv4::HEADER_LEN..]);
            p.set_ident(ident);
            p.fill_checksum();
            p.payload_mut()[..l4.len()].copy_from_slice(l4);
            self.push_frame(out, buf);
            return;
        }
        for (off, len, more) in frag::fragments(l4.len(), mtu) {
            let ip = Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: proto,
                payload_len: len,
                hop_limit: 64,
            };
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
            let (mut buf, l4_at) = l2.ipv4_frame(&ip, &hdr);
            let mut p = Ipv4Packet::new_unchecked(&mut buf[l4_at - wire::ipv4::HEADER_LEN..]);
            if !whole {
                p.set_ident(ident);
                p.set_frag(false, more, u16::try_from(off).unwrap_or(0));
                p.fill_checksum();
            }
            p.payload_mut()[..len].copy_from_slice(&l4[off..off + len]);
            self.push_frame(out, buf);
        }
    }

    // ─────────────────────────────── ICMP ──────────────────────────────

    fn icmp(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        payload: &[u8],
        verify: bool,
        now: Instant,
        out: &mut Actions,
    ) {
        let repr = match Icmpv4Packet::new_checked(payload).and_then(|p| {
            if verify && !p.verify_checksum() {
                return Err(wire::Error::Checksum);
            }
            Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(payload))
        }) {
            Ok(r) => r,
            Err(e) => return self.drop(wire_reason(e)),
        };
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
            let mut l4 = vec![0u8; reply.buffer_len()];
            reply.emit(&mut Icmpv4Packet::new_unchecked(&mut l4[..]));
            let l2 = self.l2();
            return self.ipv4_to_guest(l2, dst, src, ip_proto::ICMP, &l4, out);
        }
        if self.is_bad_destination(dst) {
            return self.drop(DropReason::BadAddress);
        }
        let key = FlowKey {
            proto: Proto::Icmp,
            guest: SocketAddr::from((src, ident)),
            remote: SocketAddr::from((dst, 0)),
        };
        if let Some(w) = self.held_elsewhere(&key) {
            let (s, d) = (IpAddr::V4(src), IpAddr::V4(dst));
            return self.forward_l4(w, s, d, ip_proto::ICMP, payload, !verify, out);
        }
        self.dgram_out(key, payload.to_vec(), now, out);
    }

    /// ICMP destination unreachable to the guest about a datagram of `key`:
    /// for UDP `data` is the datagram's payload, for ICMP the echo message.
    fn icmp_unreachable(&mut self, key: &FlowKey, code: u8, data: &[u8], out: &mut Actions) {
        let (SocketAddr::V4(guest), SocketAddr::V4(remote)) = (key.guest, key.remote) else {
            return self.icmp6_unreachable(key, ipv6::unreachable_code(code), data, out);
        };
        // The offending datagram: its IP header and the first 8 bytes
        // (plus some payload) of its L4 message (RFC 792).
        let (proto, hdr, l4_len) = match key.proto {
            Proto::Icmp => (ip_proto::ICMP, 0, data.len()),
            _ => (ip_proto::UDP, 8, 8 + data.len()),
        };
        let keep = data.len().min(64 + 8 - hdr);
        let ip = Ipv4Repr {
            src_addr: *guest.ip(),
            dst_addr: *remote.ip(),
            next_header: proto,
            payload_len: l4_len,
            hop_limit: 64,
        };
        let mut orig = vec![0u8; wire::ipv4::HEADER_LEN + hdr + keep];
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut orig[..]));
        let u = &mut orig[wire::ipv4::HEADER_LEN..];
        if hdr > 0 {
            u[0..2].copy_from_slice(&guest.port().to_be_bytes());
            u[2..4].copy_from_slice(&remote.port().to_be_bytes());
            u[4..6].copy_from_slice(&u16::try_from(l4_len).unwrap_or(u16::MAX).to_be_bytes());
        }
        u[hdr..].copy_from_slice(&data[..keep]);
        let msg = Icmpv4Repr::DstUnreachable {
            code,
            next_hop_mtu: 0,
            data: &orig,
        };
        let mut l4 = vec![0u8; msg.buffer_len()];
        msg.emit(&mut Icmpv4Packet::new_unchecked(&mut l4[..]));
        let l2 = self.l2();
        self.ipv4_to_guest(l2, *remote.ip(), *guest.ip(), ip_proto::ICMP, &l4, out);
    }

    // ──────────────────────────── host events ──────────────────────────

    /// Process a completion from the host.
    pub fn host_event(&mut self, ev: HostEvent, now: Instant, out: &mut Actions) {
        let id = ev.flow();
        let l2 = self.l2();
        let Some((key, state)) = self.flows.get_mut(id) else {
            // A completion for a flow that is gone (generation moved on).
            return;
        };
        let key = *key;
        match state {
            FlowState::Tcp(conn) => {
                let mut frames = Vec::new();
                let mut emit = tcp_emitter(l2, &key, conn.mss(), &mut frames);
                if let HostEvent::Connected { result: Err(e), .. } = ev {
                    log::debug!(
                        "tcp {:?} -> {:?}: connect failed: errno {e}",
                        key.guest,
                        key.remote
                    );
                }
                let v = match ev {
                    HostEvent::Connected { result, .. } => {
                        conn.on_connected(result, now, &mut emit, &mut out.ops)
                    }
                    HostEvent::Sent { result, .. } => {
                        conn.on_sent(result, now, &mut emit, &mut out.ops)
                    }
                    HostEvent::Received { result, .. } => {
                        conn.on_received(result, now, &mut emit, &mut out.ops)
                    }
                };
                drop(emit);
                let pending = conn.ack_pending();
                if conn.take_mem_wait() {
                    self.mem_wait.push(id);
                }
                for f in frames {
                    self.push_frame(out, f);
                }
                if pending {
                    self.ack_list.push(id);
                }
                if v == Verdict::Remove {
                    self.flows.remove(id);
                }
            }
            FlowState::Dgram(_) => self.dgram_event(id, key, ev, now, out),
        }
    }

    fn dgram_event(
        &mut self,
        id: FlowId,
        key: FlowKey,
        ev: HostEvent,
        now: Instant,
        out: &mut Actions,
    ) {
        let Some((_, FlowState::Dgram(f))) = self.flows.get_mut(id) else {
            return;
        };
        match ev {
            HostEvent::Connected { result: Ok(()), .. } => {
                f.connected = true;
                while let Some(data) = f.pending.pop_front() {
                    f.sending(&data);
                    out.ops.push(SockOp::Send { flow: id, data });
                }
                out.ops.push(SockOp::Recv {
                    flow: id,
                    max: 65535,
                });
            }
            HostEvent::Connected { result: Err(e), .. } => {
                let pending: Vec<Vec<u8>> = f.pending.drain(..).collect();
                for d in &pending {
                    f.discard(d);
                }
                out.ops.push(SockOp::Close {
                    flow: id,
                    reset: false,
                });
                self.flows.remove(id);
                if key.proto == Proto::Icmp {
                    log::debug!("no ping socket (errno {e}); check net.ipv4.ping_group_range");
                    self.counters.drops[DropReason::NoPingSocket as usize] += pending.len() as u64;
                } else {
                    self.drop(DropReason::HostError);
                    let code = unreachable_code(e);
                    if let Some(first) = pending.first() {
                        self.icmp_unreachable(&key, code, first, out);
                    }
                }
            }
            HostEvent::Sent { result, .. } => {
                f.sent();
                if let Err(e) = result {
                    log::trace!("udp send error {e}");
                    if e == libc_errno::ECONNREFUSED {
                        self.icmp_unreachable(&key, wire::icmpv4::unreachable::PORT, &[], out);
                    }
                }
            }
            HostEvent::Received { result, .. } => {
                // Datagram flows receive continuously after the first
                // `Recv` (see `ops`): nothing to ask for again.
                f.last_active = now;
                match result {
                    Ok(data) => self.dgram_to_guest(&key, &data, out),
                    Err(e) if e == libc_errno::ECONNREFUSED && key.proto == Proto::Udp => {
                        self.icmp_unreachable(&key, wire::icmpv4::unreachable::PORT, &[], out)
                    }
                    Err(e) => log::trace!("dgram recv error {e}"),
                }
            }
        }
    }

    fn dgram_to_guest(&mut self, key: &FlowKey, data: &[u8], out: &mut Actions) {
        let (SocketAddr::V4(guest), SocketAddr::V4(remote)) = (key.guest, key.remote) else {
            return self.dgram_to_guest6(key, data, out);
        };
        let l2 = self.l2();
        match key.proto {
            Proto::Udp => self.udp_to_guest(l2, remote, guest, data, out),
            Proto::Icmp => {
                // The ping socket's reply carries the socket's identifier;
                // give the guest back its own.
                let Ok(p) = Icmpv4Packet::new_checked(data) else {
                    return self.drop(DropReason::Malformed);
                };
                let Ok(Icmpv4Repr::EchoReply { seq_no, data, .. }) =
                    Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(data))
                else {
                    let _ = p;
                    return;
                };
                let reply = Icmpv4Repr::EchoReply {
                    ident: guest.port(),
                    seq_no,
                    data,
                };
                let mut l4 = vec![0u8; reply.buffer_len()];
                reply.emit(&mut Icmpv4Packet::new_unchecked(&mut l4[..]));
                self.ipv4_to_guest(l2, *remote.ip(), *guest.ip(), ip_proto::ICMP, &l4, out);
            }
            Proto::Tcp => {}
        }
    }

    // ─────────────────────────────── timers ────────────────────────────

    /// End of a batch and timers: send pending ACKs, retransmit, expire idle
    /// flows and stale fragments. Returns when it next needs to run.
    pub fn poll(&mut self, now: Instant, out: &mut Actions) -> Option<Instant> {
        let l2 = self.l2();
        let mut acks = std::mem::take(&mut self.ack_list);
        acks.sort_unstable();
        acks.dedup();
        for id in acks.drain(..) {
            let Some((key, FlowState::Tcp(conn))) = self.flows.get_mut(id) else {
                continue;
            };
            let key = *key;
            let mut frames = Vec::new();
            let mss = conn.mss();
            conn.flush_ack(&mut tcp_emitter(l2, &key, mss, &mut frames));
            if conn.take_mem_wait() {
                self.mem_wait.push(id);
            }
            for f in frames {
                self.push_frame(out, f);
            }
        }
        self.ack_list = acks;
        self.wake_mem_waiters(out);
        self.ra_timer(now, out);

        if now >= self.next_scan {
            self.next_scan = now + TIMER_SCAN;
            self.reasm.expire(now);
            self.count_frag_losses();
            for id in self.flows.ids() {
                let Some((key, state)) = self.flows.get_mut(id) else {
                    continue;
                };
                let key = *key;
                match state {
                    FlowState::Tcp(conn) => {
                        if conn.deadline().is_some_and(|d| d <= now) {
                            let mut frames = Vec::new();
                            let mss = conn.mss();
                            let v = conn.on_timer(
                                now,
                                &mut tcp_emitter(l2, &key, mss, &mut frames),
                                &mut out.ops,
                            );
                            if conn.take_mem_wait() {
                                self.mem_wait.push(id);
                            }
                            for f in frames {
                                self.push_frame(out, f);
                            }
                            if v == Verdict::Remove {
                                self.flows.remove(id);
                            }
                        }
                    }
                    FlowState::Dgram(f) => {
                        if now.since(f.last_active) >= f.timeout {
                            out.ops.push(SockOp::Close {
                                flow: id,
                                reset: false,
                            });
                            self.flows.remove(id);
                        }
                    }
                }
            }
        }
        self.next_deadline()
    }

    /// Re-drive the flows the budget held back, once it has room again
    /// (memory released here or by another worker's flows): each re-posts
    /// its `Recv` and sends a window update if its window reopened. A flow
    /// still short goes back on the list. The list starts at a rotating
    /// place, so no flow is always served last.
    fn wake_mem_waiters(&mut self, out: &mut Actions) {
        let mem = &self.cfg.memory;
        if self.mem_wait.is_empty()
            || mem.available() < MEM_WAKE.max(mem.conns() * MEM_WAKE_PER_CONN)
        {
            return;
        }
        let l2 = self.l2();
        let mut waiting = std::mem::take(&mut self.mem_wait);
        waiting.sort_unstable();
        waiting.dedup();
        self.mem_rotor = self.mem_rotor.wrapping_add(1);
        let start = self.mem_rotor % waiting.len();
        waiting.rotate_left(start);
        for id in waiting {
            let Some((key, FlowState::Tcp(conn))) = self.flows.get_mut(id) else {
                continue;
            };
            let key = *key;
            let mss = conn.mss();
            let mut frames = Vec::new();
            conn.on_memory(&mut tcp_emitter(l2, &key, mss, &mut frames), &mut out.ops);
            if conn.take_mem_wait() {
                self.mem_wait.push(id);
            }
            for f in frames {
                self.push_frame(out, f);
            }
        }
    }

    /// When [`Stack::poll`] next has work, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.ack_list.is_empty() {
            return Some(Instant::ZERO);
        }
        if self.flows.is_empty() && self.reasm.held_bytes() == 0 {
            return self.next_ra;
        }
        Some(
            self.next_ra
                .map_or(self.next_scan, |t| t.min(self.next_scan)),
        )
    }

    /// Reset every flow (the guest went away): RST the host peers.
    pub fn reset_all(&mut self, out: &mut Actions) {
        for id in self.flows.ids() {
            out.ops.push(SockOp::Close {
                flow: id,
                reset: true,
            });
            self.flows.remove(id);
        }
    }
}

/// Errno values the stack interprets (the stack is OS-agnostic; these are
/// Linux's numbers, which the dataplane reports).
mod libc_errno {
    pub const ECONNREFUSED: i32 = 111;
    pub const ENETUNREACH: i32 = 101;
    pub const EHOSTUNREACH: i32 = 113;
    pub const EACCES: i32 = 13;
    pub const EPERM: i32 = 1;
}

/// The IP protocol number of a published flow's transport.
fn proto_number(proto: Proto) -> u8 {
    match proto {
        Proto::Udp => ip_proto::UDP,
        _ => ip_proto::TCP,
    }
}

fn unreachable_code(errno: Errno) -> u8 {
    use wire::icmpv4::unreachable;
    match errno {
        libc_errno::ENETUNREACH => unreachable::NET,
        libc_errno::EHOSTUNREACH => unreachable::HOST,
        libc_errno::EACCES | libc_errno::EPERM => unreachable::ADMIN_PROHIBITED,
        _ => unreachable::PORT,
    }
}

fn wire_reason(e: wire::Error) -> DropReason {
    match e {
        wire::Error::Truncated => DropReason::Truncated,
        wire::Error::Malformed => DropReason::Malformed,
        wire::Error::Checksum => DropReason::BadChecksum,
        wire::Error::Unsupported => DropReason::Unsupported,
    }
}

/// Offset of the UDP checksum field in the UDP header.
const UDP_CSUM_OFFSET: u16 = 6;
/// Offset of the TCP checksum field in the TCP header.
const TCP_CSUM_OFFSET: u16 = 16;

/// The virtio-net header of a whole IPv4 datagram whose L4 checksum is
/// partial, the field `csum_offset` bytes into the L4 header.
fn partial_csum_hdr(csum_offset: u16) -> VnetHdrRepr {
    partial_csum_hdr_at(L4_START, csum_offset)
}

/// [`partial_csum_hdr`] for an L4 header `l4_start` bytes into the frame.
fn partial_csum_hdr_at(l4_start: usize, csum_offset: u16) -> VnetHdrRepr {
    VnetHdrRepr {
        flags: vnet_flags::NEEDS_CSUM,
        // Cannot fail: 34 or 54.
        csum_start: u16::try_from(l4_start).unwrap_or(u16::MAX),
        csum_offset,
        ..VnetHdrRepr::PLAIN
    }
}

/// The largest segment payload of a TCP flow `key` whose guest MSS is
/// `mss`, when the guest takes TSO super-frames of its family.
fn tso_payload(offload: Offload, key: &FlowKey, mss: usize) -> Option<usize> {
    match key.guest {
        SocketAddr::V4(_) if offload.tso => Some(tso_max_payload(mss)),
        SocketAddr::V6(_) if offload.tso6 => Some(tso6_max_payload(mss)),
        _ => None,
    }
}

/// A callback that turns a connection's [`TcpRepr`] into a frame to the
/// guest: the flow's ports and addresses (remote → guest) are filled in.
///
/// With a virtio-net header (virtio 1.2 §5.1.6.2, Linux `tun_get_user` →
/// `virtio_net_hdr_to_skb`): a segment whose payload exceeds `mss` (only
/// with `offload.tso`, see [`Conn::set_max_segment`]) becomes a TSO
/// super-frame: `gso_type` TCPV4, `gso_size` = `mss`, `hdr_len` = Ethernet +
/// IPv4 + TCP header, `NEEDS_CSUM` at `csum_start` 34 / `csum_offset` 16,
/// the checksum field holding the pseudo-header sum over the whole segment
/// (Linux's TSO adjusts it per segment). Other segments: a partial checksum
/// with `offload.csum`, else a computed one marked `DATA_VALID`. `mss` 0
/// never makes a super-frame.
fn tcp_emitter<'a>(
    l2: L2,
    key: &FlowKey,
    mss: usize,
    frames: &'a mut Vec<Vec<u8>>,
) -> impl FnMut(&TcpRepr<'_>) + 'a {
    let key = *key;
    move |repr: &TcpRepr<'_>| {
        let (guest, remote) = (key.guest, key.remote);
        let mut r = *repr;
        r.src_port = remote.port();
        r.dst_port = guest.port();
        let (l4_start, gso_type) = match remote {
            SocketAddr::V4(_) => (L4_START, gso::TCPV4),
            SocketAddr::V6(_) => (ipv6::L4_START6, gso::TCPV6),
        };
        let gso = l2.offload.vnet_hdr && mss > 0 && r.payload.len() > mss;
        let partial = gso || (l2.offload.vnet_hdr && l2.offload.csum);
        let hdr = if !l2.offload.vnet_hdr {
            VnetHdrRepr::PLAIN
        } else if gso {
            VnetHdrRepr {
                gso_type,
                // Cannot fail: at most 14 + 40 + 60.
                hdr_len: u16::try_from(l4_start + r.header_len()).unwrap_or(u16::MAX),
                // Cannot fail: the MSS came from a 16-bit option.
                gso_size: u16::try_from(mss).unwrap_or(u16::MAX),
                ..partial_csum_hdr_at(l4_start, TCP_CSUM_OFFSET)
            }
        } else if partial {
            partial_csum_hdr_at(l4_start, TCP_CSUM_OFFSET)
        } else {
            VnetHdrRepr {
                flags: vnet_flags::DATA_VALID,
                ..VnetHdrRepr::PLAIN
            }
        };
        let Some((mut buf, l4_at)) =
            l2.ip_frame(remote.ip(), guest.ip(), ip_proto::TCP, r.buffer_len(), &hdr)
        else {
            return;
        };
        let mut t = TcpPacket::new_unchecked(&mut buf[l4_at..]);
        if partial {
            r.emit_partial(&mut t, remote.ip(), guest.ip());
        } else {
            r.emit(&mut t, remote.ip(), guest.ip());
        }
        frames.push(buf);
    }
}

#[cfg(test)]
mod tests;
