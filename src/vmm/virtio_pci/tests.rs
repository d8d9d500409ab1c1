//! The virtio-pci function driven the way Linux's virtio_pci_modern does
//! it, through configuration space and BAR 0, with a recording fake of
//! KVM (no /dev/kvm needed) and queues built by virtio-queue's mock.
// Test fixtures use small constants: the casts cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::vmm::pci::tests::FakeHv;

const MEM: usize = 0x40_0000;
const BAR: u32 = 0xc010_0000;

fn setup(pairs: usize) -> (VirtioNetPci, Arc<NetCore>, Arc<FakeHv>, Vec<Arc<FrameRing>>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let inboxes: Vec<_> = (0..2)
        .map(|_| Arc::new(FrameRing::new(16, 2048).unwrap()))
        .collect();
    let core = NetCore::new(mem, pairs, inboxes.clone(), OfferedOffloads::Stack).unwrap();
    let hv = Arc::new(FakeHv::default());
    let dev = VirtioNetPci::new(core.clone(), hv.clone(), BAR, 24, 1500).unwrap();
    (dev, core, hv, inboxes)
}

fn r(d: &mut VirtioNetPci, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    d.bar_read(0, off, &mut b[..len]);
    u64::from_le_bytes(b)
}

fn w(d: &mut VirtioNetPci, off: u64, len: usize, v: u64) {
    d.bar_write(0, off, &v.to_le_bytes()[..len]);
}

fn cfg16(d: &VirtioNetPci, at: usize) -> u16 {
    d.config().get16(at)
}

/// The virtio capabilities: (cfg_type, offset, length) in chain order.
fn virtio_caps(d: &VirtioNetPci) -> Vec<(u8, u32, u32)> {
    let b = d.config().bytes();
    let mut at = usize::from(b[0x34]);
    let mut caps = Vec::new();
    for _ in 0..16 {
        if at == 0 {
            break;
        }
        if b[at] == pci::CAP_VENDOR {
            let u = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            assert_eq!(b[at + 4], 0, "BAR 0");
            caps.push((b[at + 3], u(at + 8), u(at + 12)));
        }
        at = usize::from(b[at + 1]);
    }
    caps
}

#[test]
fn capabilities_point_into_bar0() {
    let (d, ..) = setup(2);
    assert_eq!(cfg16(&d, 0), 0x1af4);
    assert_eq!(cfg16(&d, 2), 0x1041);
    assert_eq!(d.config().bytes()[0x08], 1, "revision 1: modern");
    assert_eq!(d.config().bytes()[0x3d], 0, "no INTx pin");
    assert_eq!(
        virtio_caps(&d),
        vec![
            (CAP_COMMON, 0, 0x40),
            (CAP_NOTIFY, 0x3000, 5 * 4),
            (CAP_ISR, 0x1000, 1),
            (CAP_DEVICE, 0x2000, 0x100),
        ]
    );
    // MSI-X: 2 pairs + control + config = 6 vectors, table at 0x4000.
    let b = d.config().bytes();
    assert_eq!(b[0x40], pci::CAP_MSIX);
    assert_eq!(u16::from_le_bytes([b[0x42], b[0x43]]) & 0x7ff, 5);
}

#[test]
fn feature_negotiation_and_status() {
    let (mut d, core, ..) = setup(2);
    w(&mut d, 0x00, 4, 0);
    let lo = r(&mut d, 0x04, 4);
    w(&mut d, 0x00, 4, 1);
    let hi = r(&mut d, 0x04, 4);
    let offered = lo | hi << 32;
    assert_eq!(offered, core.features());
    assert_ne!(offered & bit(feature::MQ), 0);
    assert_ne!(offered & bit(feature::CTRL_VQ), 0);
    assert_eq!(r(&mut d, 0x12, 2), 5, "num_queues");
    // A bit the device did not offer: FEATURES_OK does not stick.
    w(&mut d, 0x14, 1, 1 | 2);
    w(&mut d, 0x08, 4, 1);
    w(&mut d, 0x0c, 4, 1 | (1 << 20)); // VERSION_1 | an unoffered bit
    w(&mut d, 0x14, 1, 1 | 2 | 8);
    assert_eq!(r(&mut d, 0x14, 1), 3, "FEATURES_OK refused");
    assert_eq!(core.negotiated(), Negotiated(0));
    // Without VERSION_1: refused too.
    w(&mut d, 0x0c, 4, 0);
    w(&mut d, 0x08, 4, 0);
    w(&mut d, 0x0c, 4, bit(feature::MAC));
    w(&mut d, 0x14, 1, 1 | 2 | 8);
    assert_eq!(r(&mut d, 0x14, 1), 3);
    // A good set is accepted and becomes Negotiated.
    let want = bit(feature::MAC) | bit(feature::MRG_RXBUF) | bit(feature::VERSION_1);
    w(&mut d, 0x08, 4, 0);
    w(&mut d, 0x0c, 4, want & 0xffff_ffff);
    w(&mut d, 0x08, 4, 1);
    w(&mut d, 0x0c, 4, want >> 32);
    w(&mut d, 0x14, 1, 1 | 2 | 8);
    assert_eq!(r(&mut d, 0x14, 1), 11);
    assert_eq!(core.negotiated(), Negotiated(want));
    // Features are frozen after FEATURES_OK.
    w(&mut d, 0x08, 4, 0);
    w(&mut d, 0x0c, 4, 0);
    assert_eq!(r(&mut d, 0x0c, 4), want & 0xffff_ffff);
    // Device config: the MAC and max_queue_pairs.
    assert_eq!(r(&mut d, 0x2000, 4), 0x1515_1500);
    assert_eq!(r(&mut d, 0x2008, 2), 2);
    assert_eq!(r(&mut d, 0x200a, 2), 1500);
    // Reset: status 0, features gone, reads 0 at once.
    w(&mut d, 0x14, 1, 0);
    assert_eq!(r(&mut d, 0x14, 1), 0);
    assert_eq!(core.negotiated(), Negotiated(0));
    // Odd registers and sizes are ignored, counted.
    let bad = d.bad;
    w(&mut d, 0x3c, 2, 1);
    w(&mut d, 0x14, 2, 0xffff);
    assert_eq!(d.bad, bad + 2);
    assert_eq!(r(&mut d, 0x14, 1), 0);
}

#[test]
fn queue_setup_checks_what_the_guest_writes() {
    let (mut d, core, ..) = setup(1);
    w(&mut d, 0x16, 2, 1);
    assert_eq!(r(&mut d, 0x18, 2), u64::from(QUEUE_SIZE));
    assert_eq!(r(&mut d, 0x1e, 2), 1, "notify offset = queue index");
    // Not a power of two, too big: ignored.
    w(&mut d, 0x18, 2, 100);
    w(&mut d, 0x18, 2, 512);
    assert_eq!(r(&mut d, 0x18, 2), u64::from(QUEUE_SIZE));
    w(&mut d, 0x18, 2, 64);
    assert_eq!(r(&mut d, 0x18, 2), 64);
    // Rings past the end of guest memory: the queue stays disabled.
    w(&mut d, 0x20, 4, (MEM as u64) - 0x100);
    w(&mut d, 0x28, 4, 0x2000);
    w(&mut d, 0x30, 4, 0x3000);
    w(&mut d, 0x1c, 2, 1);
    assert_eq!(r(&mut d, 0x1c, 2), 0);
    // Good rings: enabled; afterwards its fields are frozen.
    w(&mut d, 0x20, 4, 0x1000);
    w(&mut d, 0x24, 4, 0);
    w(&mut d, 0x1c, 2, 1);
    assert_eq!(r(&mut d, 0x1c, 2), 1);
    assert_eq!(r(&mut d, 0x20, 4), 0x1000);
    assert_eq!(r(&mut d, 0x28, 4), 0x2000);
    w(&mut d, 0x20, 4, 0x8000);
    assert_eq!(r(&mut d, 0x20, 4), 0x1000);
    // MSI-X vectors: in range kept, out of range read back as NO_VECTOR.
    w(&mut d, 0x1a, 2, 2);
    assert_eq!(r(&mut d, 0x1a, 2), 2);
    w(&mut d, 0x1a, 2, 4);
    assert_eq!(r(&mut d, 0x1a, 2), u64::from(NO_VECTOR));
    w(&mut d, 0x10, 2, 3);
    assert_eq!(r(&mut d, 0x10, 2), 3);
    // No such queue.
    w(&mut d, 0x16, 2, 3);
    assert_eq!(r(&mut d, 0x18, 2), 0);
    w(&mut d, 0x18, 2, 64);
    // Reset puts the queue back.
    w(&mut d, 0x14, 1, 0);
    assert!(!core.lock_queue(1).ready());
    assert_eq!(core.lock_queue(1).size(), QUEUE_SIZE);
}

#[test]
fn msix_through_config_space_and_bar() {
    let (mut d, _, hv, _) = setup(1);
    // Enable MSI-X with mask-all (config space), program vector 1 in the
    // table (BAR 0 + 0x4000), unmask.
    d.config_write(0x42, &0xc000u16.to_le_bytes());
    w(&mut d, 0x4010, 4, 0xfee0_0000);
    w(&mut d, 0x4014, 4, 0);
    w(&mut d, 0x4018, 4, 0x31);
    w(&mut d, 0x401c, 4, 0);
    assert!(hv.routes.lock().unwrap().is_empty());
    d.config_write(0x42, &0x8000u16.to_le_bytes());
    assert_eq!(
        *hv.routes.lock().unwrap(),
        vec![(25, Some((0xfee0_0000, 0x31)))]
    );
    assert_eq!(r(&mut d, 0x4018, 4), 0x31);
    // irqfds for all four vectors (RX, TX, control, config).
    assert_eq!(*hv.irqfds.lock().unwrap(), vec![24, 25, 26, 27]);
}

#[test]
fn ioeventfds_follow_bar0() {
    let (mut d, _, hv, _) = setup(1);
    assert!(
        hv.ioevents.lock().unwrap().is_empty(),
        "memory decoding off"
    );
    d.config_write(0x04, &pci::CMD_MEMORY.to_le_bytes());
    let base = u64::from(BAR) + NOTIFY;
    assert_eq!(
        *hv.ioevents.lock().unwrap(),
        vec![(base, true), (base + 4, true)],
        "RX and TX only: the control queue exits to the vCPU thread"
    );
    d.config_write(0x10, &0xc020_0000u32.to_le_bytes());
    let ev = hv.ioevents.lock().unwrap().clone();
    assert_eq!(
        ev[2..],
        [
            (base, false),
            (base + 4, false),
            (0xc020_0000 + NOTIFY, true),
            (0xc020_0000 + NOTIFY + 4, true)
        ]
    );
}

/// The driver's side of bring-up: features, one queue at the mock's
/// rings, DRIVER_OK.
fn bring_up(d: &mut VirtioNetPci, q: u16, mock: &MockSplitQueue<'_, GuestMemoryMmap>) {
    let f = bit(feature::VERSION_1) | bit(feature::MAC);
    w(d, 0x14, 1, 1 | 2);
    w(d, 0x08, 4, 0);
    w(d, 0x0c, 4, f & 0xffff_ffff);
    w(d, 0x08, 4, 1);
    w(d, 0x0c, 4, f >> 32);
    w(d, 0x14, 1, 1 | 2 | 8);
    w(d, 0x16, 2, u64::from(q));
    w(d, 0x18, 2, 16);
    w(d, 0x20, 4, mock.desc_table_addr().0);
    w(d, 0x28, 4, mock.avail_addr().0);
    w(d, 0x30, 4, mock.used_addr().0);
    w(d, 0x1a, 2, u64::from(q));
    w(d, 0x1c, 2, 1);
    w(d, 0x14, 1, 1 | 2 | 8 | 4);
}

#[test]
fn tx_chain_reaches_a_worker_inbox_and_reset_drops_state() {
    let (mut d, core, _, inboxes) = setup(1);
    let mock = MockSplitQueue::create(&core.mem, GuestAddress(0x10000), 16);
    bring_up(&mut d, 1, &mock);
    // One frame: a 12-byte header and a 60-byte ARP-sized frame in two
    // descriptors.
    let frame: Vec<u8> = (0..72u8).collect();
    core.mem.write_slice(&frame, GuestAddress(0x20000)).unwrap();
    let descs = [
        SplitDescriptor::new(0x20000, 12, VRING_DESC_F_NEXT as u16, 1),
        SplitDescriptor::new(0x2000c, 60, 0, 0),
    ];
    for (i, desc) in descs.iter().enumerate() {
        mock.desc_table()
            .store(i as u16, RawDescriptor::from(*desc))
            .unwrap();
    }
    mock.avail().ring().ref_at(0).unwrap().store(0);
    mock.avail().idx().store(1);
    core.data.process_tx(&*core, 0);
    let got: Vec<_> = inboxes.iter().filter_map(|i| i.pop()).collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].bytes(), &frame[..]);
    assert_eq!(mock.used().idx().load(), 1);
    assert_eq!(core.counters().tx_frames.load(Ordering::Relaxed), 1);
    // After a reset nothing is processed until the driver is back.
    let g = core.generation();
    w(&mut d, 0x14, 1, 0);
    assert!(core.generation() > g);
    mock.avail().idx().store(2);
    core.data.process_tx(&*core, 0);
    assert!(inboxes.iter().all(|i| i.pop().is_none()));
}

/// `-net tap`'s data path ([`crate::vmm::tap_net`]) with a datagram
/// socket pair standing in for the TAP (one frame per read and write, as a
/// TAP): a guest TX chain comes out of the "TAP" whole, header included;
/// a "TAP" frame lands in the guest's RX buffer with `num_buffers` set;
/// frames asking for offloads the driver did not accept, and runts, are
/// dropped and counted, and the queue goes on.
#[test]
fn tap_backend_moves_frames_both_ways_and_drops_what_the_driver_did_not_accept() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};

    use crate::dataplane::tap::Tap;
    use crate::stack::wire::vnet_hdr::flags;
    use crate::vmm::tap_net::TapNet;

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let inboxes = vec![Arc::new(FrameRing::new(16, 2048).unwrap())];
    let core = NetCore::new(mem, 1, inboxes.clone(), OfferedOffloads::Tap).unwrap();
    let hv = Arc::new(FakeHv::default());
    let mut d = VirtioNetPci::new(core.clone(), hv, BAR, 24, 1500).unwrap();
    let rxq = MockSplitQueue::create(&core.mem, GuestAddress(0x10000), 16);
    let txq = MockSplitQueue::create(&core.mem, GuestAddress(0x30000), 16);
    // Bring-up: VERSION_1 and MAC only (no GUEST_CSUM), both queues.
    let f = bit(feature::VERSION_1) | bit(feature::MAC);
    w(&mut d, 0x14, 1, 1 | 2);
    w(&mut d, 0x08, 4, 0);
    w(&mut d, 0x0c, 4, f & 0xffff_ffff);
    w(&mut d, 0x08, 4, 1);
    w(&mut d, 0x0c, 4, f >> 32);
    w(&mut d, 0x14, 1, 1 | 2 | 8);
    for (q, m) in [(0u64, &rxq), (1, &txq)] {
        w(&mut d, 0x16, 2, q);
        w(&mut d, 0x18, 2, 16);
        w(&mut d, 0x20, 4, m.desc_table_addr().0);
        w(&mut d, 0x28, 4, m.avail_addr().0);
        w(&mut d, 0x30, 4, m.used_addr().0);
        w(&mut d, 0x1c, 2, 1);
    }
    w(&mut d, 0x14, 1, 1 | 2 | 8 | 4);

    let (ours, theirs) = UnixDatagram::pair().unwrap();
    theirs
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let tap = Tap::from_fd(std::os::fd::OwnedFd::from(ours), "fake0".into());
    tap.set_nonblocking(true).unwrap();
    let net = TapNet::start(core.clone(), vec![tap], &inboxes).unwrap();
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !done() {
            assert!(t0.elapsed() < Duration::from_secs(5), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    // Guest → TAP: a 12-byte header and a 60-byte frame in two descriptors.
    let frame: Vec<u8> = (0..72u8).collect();
    core.mem.write_slice(&frame, GuestAddress(0x20000)).unwrap();
    for (i, desc) in [
        SplitDescriptor::new(0x20000, 12, VRING_DESC_F_NEXT as u16, 1),
        SplitDescriptor::new(0x2000c, 60, 0, 0),
    ]
    .iter()
    .enumerate()
    {
        txq.desc_table()
            .store(i as u16, RawDescriptor::from(*desc))
            .unwrap();
    }
    txq.avail().ring().ref_at(0).unwrap().store(0);
    txq.avail().idx().store(1);
    core.data.process_tx(&*core, 0);
    let mut got = [0u8; 256];
    let n = theirs.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &frame[..]);
    assert_eq!(txq.used().idx().load(), 1);

    // TAP → guest: into the one RX buffer the driver gave.
    let give_rx = |slot: u16, addr: u64| {
        rxq.desc_table()
            .store(
                slot,
                RawDescriptor::from(SplitDescriptor::new(
                    addr,
                    2048,
                    VRING_DESC_F_WRITE as u16,
                    0,
                )),
            )
            .unwrap();
        rxq.avail()
            .ring()
            .ref_at(usize::from(slot))
            .unwrap()
            .store(slot);
        rxq.avail().idx().store(slot + 1);
    };
    give_rx(0, 0x40000);
    let mut from_tap = vec![0u8; 12];
    from_tap.extend((0..60u8).map(|b| b ^ 0x5a));
    theirs.send(&from_tap).unwrap();
    wait("the RX frame", &|| rxq.used().idx().load() == 1);
    let mut placed = vec![0u8; 72];
    core.mem
        .read_slice(&mut placed, GuestAddress(0x40000))
        .unwrap();
    assert_eq!(&placed[12..], &from_tap[12..]);
    assert_eq!(&placed[10..12], &1u16.to_le_bytes(), "num_buffers");
    assert_eq!(net.counters.rx_frames.load(Ordering::Relaxed), 1);

    // A partial checksum for a driver without GUEST_CSUM, then a runt:
    // both dropped, the RX buffer still free.
    give_rx(1, 0x41000);
    let mut csum = from_tap.clone();
    csum[0] = flags::NEEDS_CSUM;
    theirs.send(&csum).unwrap();
    theirs.send(&[0u8; 5]).unwrap();
    wait("two drops", &|| {
        net.counters.rx_drops.load(Ordering::Relaxed) == 2
    });
    assert_eq!(rxq.used().idx().load(), 1);
    // The next good frame still gets through.
    theirs.send(&from_tap).unwrap();
    wait("the next RX frame", &|| rxq.used().idx().load() == 2);
    let counters = net.counters.clone();
    net.stop();
    assert_eq!(counters.tx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(counters.tx_drops.load(Ordering::Relaxed), 0);
    assert_eq!(counters.rx_frames.load(Ordering::Relaxed), 2);
}
