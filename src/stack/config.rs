//! The stack's configuration: addresses, limits, timeouts, and the
//! offloads shared with the guest through a virtio-net header.
//!
//! Everything here is set once by the daemon ([`Config`]); only the
//! resolvers and the offloads change later ([`Stack::set_resolvers`],
//! [`Stack::set_offload`]). The TSO helpers size the TCP super-frames the
//! guest may take ([`TSO_MAX_FRAME`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::wire::{self, EthernetAddress};
#[cfg(doc)]
use super::{Actions, Stack, steer};
use super::{Directory, FlowKey, MemBudget, policy};

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

impl Offload {
    /// Every offload on (`true`: a TAP namespace's defaults) or off (plain
    /// frames, no virtio-net header).
    pub fn all(on: bool) -> Offload {
        Offload {
            vnet_hdr: on,
            tso: on,
            tso6: on,
            csum: on,
            ufo: on,
        }
    }
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

pub(super) fn tso_payload_within(mss: usize, ip_header: usize) -> usize {
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
    /// kvmtool-compatible defaults (README "Defaults": 192.168.33.0/24, gateway and DNS .1).
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

/// The largest segment payload of a TCP flow `key` whose guest MSS is
/// `mss`, when the guest takes TSO super-frames of its family.
pub(super) fn tso_payload(offload: Offload, key: &FlowKey, mss: usize) -> Option<usize> {
    match key.guest {
        SocketAddr::V4(_) if offload.tso => Some(tso_max_payload(mss)),
        SocketAddr::V6(_) if offload.tso6 => Some(tso6_max_payload(mss)),
        _ => None,
    }
}
