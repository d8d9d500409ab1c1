//! The device against virtio-queue's driver-side mock: chains are built
//! in guest memory exactly as a driver would, then fed to the device. One
//! file (over 800 lines) so every test shares the mock queue helpers.
// Test fixtures use small constants: the casts cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestMemoryMmap;

use super::*;

const MEM: usize = 0x100_0000;
const QSIZE: u16 = 64;

fn mem() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
}

fn v1() -> Negotiated {
    Negotiated(offered(1, false))
}

/// A driver: a descriptor allocator over a mock split queue.
struct Drv<'a> {
    mock: MockSplitQueue<'a, GuestMemoryMmap<()>>,
    mem: &'a GuestMemoryMmap<()>,
    next_desc: u16,
    avail: u16,
}

impl<'a> Drv<'a> {
    fn new(mem: &'a GuestMemoryMmap<()>) -> Self {
        Drv {
            mock: MockSplitQueue::new(mem, QSIZE),
            mem,
            next_desc: 0,
            avail: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q: Queue = self.mock.create_queue().unwrap();
        q.set_event_idx(false);
        q
    }

    fn store(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = SplitDescriptor::new(addr, len, flags, next);
        self.mock
            .desc_table()
            .store(i, RawDescriptor::from(d))
            .unwrap();
    }

    fn publish(&mut self, head: u16) {
        let slot = usize::from(self.avail % QSIZE);
        self.mock.avail().ring().ref_at(slot).unwrap().store(head);
        self.avail = self.avail.wrapping_add(1);
        self.mock.avail().idx().store(self.avail);
    }

    /// A chain of `(addr, len)` buffers, all `write` or all readable.
    fn chain(&mut self, bufs: &[(u64, u32)], write: bool) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len)) in bufs.iter().enumerate() {
            let i = self.next_desc;
            let last = k + 1 == bufs.len();
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.store(i, addr, len, flags, i + 1);
            self.next_desc += 1;
        }
        self.publish(head);
        head
    }

    fn used(&self, i: u16) -> (u32, u32) {
        let e = self
            .mock
            .used()
            .ring()
            .ref_at(usize::from(i % QSIZE))
            .unwrap()
            .load();
        (e.id(), e.len())
    }

    fn used_idx(&self) -> u16 {
        self.mock.used().idx().load()
    }

    fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// Deterministic bytes (seeded LCG).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

/// A 12-byte header (flags, gso fields set so conversion is visible) and
/// an Ethernet frame of `len` bytes.
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0];
    f.extend(pattern(len as u64, len));
    f
}

const BUF: usize = HEADER_LEN + 14 + 65535;

#[test]
fn tx_normal_chain_header_and_frame() {
    let m = mem();
    let mut d = Drv::new(&m);
    let f = frame(1000);
    d.write(0x10_0000, &f[..12]);
    d.write(0x20_0000, &f[12..]);
    d.chain(&[(0x10_0000, 12), (0x20_0000, 1000)], false);
    let mut q = d.queue();
    let mut buf = vec![0u8; BUF];
    assert_eq!(
        tx_pop(&mut q, &m, v1(), &mut buf),
        Ok(Some(Tx::Frame(1012)))
    );
    assert_eq!(&buf[..1012], &f[..]);
    assert_eq!(d.used_idx(), 1);
    assert_eq!(d.used(0), (0, 0));
    assert_eq!(tx_pop(&mut q, &m, v1(), &mut buf), Ok(None));
}

#[test]
fn tx_chain_with_gaps_is_reassembled() {
    let m = mem();
    let mut d = Drv::new(&m);
    let f = frame(9000);
    // Cut the frame into pieces of uneven size at scattered addresses.
    let cuts = [5usize, 12, 13, 700, 701, 4701, 9012];
    let mut bufs = Vec::new();
    let mut addr = 0x10_0000u64;
    let mut from = 0;
    for (k, &to) in cuts.iter().enumerate() {
        d.write(addr, &f[from..to]);
        bufs.push((addr, (to - from) as u32));
        addr += (to - from) as u64 + 3 + 4096 * k as u64;
        from = to;
    }
    d.chain(&bufs, false);
    let mut q = d.queue();
    let mut buf = vec![0u8; BUF];
    assert_eq!(
        tx_pop(&mut q, &m, v1(), &mut buf),
        Ok(Some(Tx::Frame(9012)))
    );
    assert_eq!(&buf[..9012], &f[..]);
}

#[test]
fn tx_indirect_chain() {
    let m = mem();
    let mut d = Drv::new(&m);
    let f = frame(300);
    d.write(0x20_0000, &f);
    // Indirect table of two descriptors at 0x30_0000.
    let t = GuestAddress(0x30_0000);
    let put = |i: u64, desc: SplitDescriptor| {
        m.write_obj(RawDescriptor::from(desc), t.unchecked_add(16 * i))
            .unwrap();
    };
    put(
        0,
        SplitDescriptor::new(0x20_0000, 100, VRING_DESC_F_NEXT as u16, 1),
    );
    put(1, SplitDescriptor::new(0x20_0000 + 100, 212, 0, 0));
    d.store(0, t.0, 32, VRING_DESC_F_INDIRECT as u16, 0);
    d.publish(0);
    let mut q = d.queue();
    let mut buf = vec![0u8; BUF];
    assert_eq!(tx_pop(&mut q, &m, v1(), &mut buf), Ok(Some(Tx::Frame(312))));
    assert_eq!(&buf[..312], &f[..]);
}

#[test]
fn tx_legacy_header_is_widened() {
    let m = mem();
    let mut d = Drv::new(&m);
    let f = frame(60);
    let mut legacy = f[..10].to_vec();
    legacy.extend_from_slice(&f[12..]);
    d.write(0x10_0000, &legacy);
    d.chain(&[(0x10_0000, legacy.len() as u32)], false);
    let mut q = d.queue();
    let mut buf = vec![0xaau8; BUF];
    let legacy_neg = Negotiated(bit(feature::CSUM) | bit(feature::MAC));
    assert_eq!(legacy_neg.hdr_len(), 10);
    assert_eq!(
        tx_pop(&mut q, &m, legacy_neg, &mut buf),
        Ok(Some(Tx::Frame(72)))
    );
    assert_eq!(&buf[..10], &f[..10]);
    assert_eq!(&buf[10..12], &[0, 0]);
    assert_eq!(&buf[12..72], &f[12..]);
}

#[test]
fn tx_too_long_frame_is_dropped_and_queue_goes_on() {
    let m = mem();
    let mut d = Drv::new(&m);
    d.chain(&[(0x10_0000, 40_000), (0x20_0000, 40_000)], false);
    let f = frame(100);
    d.write(0x30_0000, &f);
    d.chain(&[(0x30_0000, 112)], false);
    d.chain(&[(0x30_0000, 5)], false);
    let mut q = d.queue();
    let mut buf = vec![0u8; BUF];
    assert_eq!(
        tx_pop(&mut q, &m, v1(), &mut buf),
        Ok(Some(Tx::Dropped(DropReason::TooLong)))
    );
    assert_eq!(tx_pop(&mut q, &m, v1(), &mut buf), Ok(Some(Tx::Frame(112))));
    assert_eq!(&buf[..112], &f[..]);
    assert_eq!(
        tx_pop(&mut q, &m, v1(), &mut buf),
        Ok(Some(Tx::Dropped(DropReason::Short)))
    );
    assert_eq!(d.used_idx(), 3, "every chain is returned");
}

#[test]
fn tx_looping_chain_is_an_error() {
    let m = mem();
    let mut d = Drv::new(&m);
    // 0 -> 1 -> 0 -> ...
    d.store(0, 0x10_0000, 64, VRING_DESC_F_NEXT as u16, 1);
    d.store(1, 0x10_1000, 64, VRING_DESC_F_NEXT as u16, 0);
    d.publish(0);
    let mut q = d.queue();
    let mut buf = vec![0u8; BUF];
    assert_eq!(
        tx_pop(&mut q, &m, v1(), &mut buf),
        Err(ChainError::Unterminated { head: 0 })
    );
    assert_eq!(d.used_idx(), 0);
}

#[test]
fn tx_next_index_out_of_range_is_an_error() {
    let m = mem();
    let mut d = Drv::new(&m);
    d.store(0, 0x10_0000, 64, VRING_DESC_F_NEXT as u16, QSIZE + 3);
    d.publish(0);
    let mut q = d.queue();
    let mut buf = vec![0u8; BUF];
    assert_eq!(
        tx_pop(&mut q, &m, v1(), &mut buf),
        Err(ChainError::Unterminated { head: 0 })
    );
}

#[test]
fn tx_descriptor_outside_memory_is_an_error() {
    let m = mem();
    for (addr, len) in [
        (MEM as u64 - 10, 64u32),
        (MEM as u64 + 0x1000, 64),
        (u64::MAX - 4, 64),
        (0x10_0000, u32::MAX),
    ] {
        let mut d = Drv::new(&m);
        d.chain(&[(addr, len)], false);
        let mut q = d.queue();
        let mut buf = vec![0u8; BUF];
        let r = tx_pop(&mut q, &m, v1(), &mut buf);
        assert!(
            matches!(r, Err(ChainError::OutOfMemory { head: 0, .. })),
            "{addr:#x}+{len}: {r:?}"
        );
    }
}

#[test]
fn tx_writable_descriptor_is_an_error() {
    let m = mem();
    let mut d = Drv::new(&m);
    d.chain(&[(0x10_0000, 64)], true);
    let mut q = d.queue();
    let mut buf = vec![0u8; BUF];
    assert_eq!(
        tx_pop(&mut q, &m, v1(), &mut buf),
        Err(ChainError::Direction { head: 0 })
    );
}

#[test]
fn tx_bad_indirect_table_is_an_error() {
    let m = mem();
    let mut d = Drv::new(&m);
    // Length not a multiple of 16.
    d.store(0, 0x30_0000, 17, VRING_DESC_F_INDIRECT as u16, 0);
    d.publish(0);
    let mut q = d.queue();
    let mut buf = vec![0u8; BUF];
    assert_eq!(
        tx_pop(&mut q, &m, v1(), &mut buf),
        Err(ChainError::Empty { head: 0 })
    );
}

#[test]
fn rx_one_chain_per_frame() {
    let m = mem();
    let mut d = Drv::new(&m);
    d.chain(&[(0x10_0000, 2048)], true);
    let mut q = d.queue();
    let mut rx = RxRing::default();
    let f = frame(1500);
    assert_eq!(rx.put(&mut q, &m, v1(), &f), Ok(Rx::Placed(1)));
    let got = d.read(0x10_0000, f.len());
    assert_eq!(&got[..10], &f[..10]);
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers is 1");
    assert_eq!(&got[12..], &f[12..]);
    assert_eq!(d.used_idx(), 1);
    assert_eq!(d.used(0), (0, 1512));
    assert_eq!(rx.put(&mut q, &m, v1(), &f), Ok(Rx::NoRoom));
}

#[test]
fn rx_mrg_rxbuf_spreads_over_many_small_buffers() {
    let m = mem();
    let mut d = Drv::new(&m);
    // 30 chains of 2 x 64 bytes, at scattered addresses.
    let mut addrs = Vec::new();
    for k in 0..30u64 {
        let a = 0x10_0000 + k * 0x1000;
        let b = 0x80_0000 + k * 0x777;
        d.chain(&[(a, 64), (b, 64)], true);
        addrs.push((a, b));
    }
    let mut q = d.queue();
    let mut rx = RxRing::default();
    let f = frame(3000); // 3012 bytes: 24 buffers of 128, the last partly
    assert_eq!(rx.put(&mut q, &m, v1(), &f), Ok(Rx::Placed(24)));
    assert_eq!(d.used_idx(), 24, "one used-index store for the frame");
    let mut got = Vec::new();
    for (k, &(a, b)) in addrs.iter().take(24).enumerate() {
        let (id, len) = d.used(k as u16);
        assert_eq!(id, 2 * k as u32);
        assert_eq!(len, if k < 23 { 128 } else { 3012 - 23 * 128 });
        got.extend(d.read(a, 64));
        got.extend(d.read(b, 64));
    }
    assert_eq!(&got[10..12], &24u16.to_le_bytes(), "num_buffers");
    assert_eq!(&got[..10], &f[..10]);
    assert_eq!(&got[12..3012], &f[12..]);
    // 6 chains (768 bytes) left: a 3000-byte frame does not fit, and
    // nothing is consumed; a small one does.
    assert_eq!(rx.put(&mut q, &m, v1(), &f), Ok(Rx::NoRoom));
    assert_eq!(d.used_idx(), 24);
    assert_eq!(rx.put(&mut q, &m, v1(), &frame(100)), Ok(Rx::Placed(1)));
    assert_eq!(d.used(24), (48, 112));
}

/// A TSO6 super-frame header: NEEDS_CSUM, gso_type TCPV6, hdr_len 74,
/// gso_size 1440, csum_start 54, csum_offset 16; then an Ethernet frame of
/// `len` bytes.
fn tso6_frame(len: usize) -> Vec<u8> {
    let mut f = vec![1, 4, 74, 0, 0xa0, 0x05, 54, 0, 16, 0, 0, 0];
    f.extend(pattern(len as u64 + 6, len));
    f
}

#[test]
fn tso6_super_frames_cross_the_device_both_ways() {
    let m = mem();
    // Guest → device: a 64 KiB TCPV6 super-frame in three descriptors.
    let mut d = Drv::new(&m);
    let f = tso6_frame(14 + 40 + 20 + 65_000);
    d.write(0x10_0000, &f[..12]);
    d.write(0x20_0000, &f[12..40_012]);
    d.write(0x30_0000, &f[40_012..]);
    let n = (f.len() - 40_012) as u32;
    d.chain(
        &[(0x10_0000, 12), (0x20_0000, 40_000), (0x30_0000, n)],
        false,
    );
    let mut q = d.queue();
    let mut buf = vec![0u8; BUF];
    assert_eq!(
        tx_pop(&mut q, &m, v1(), &mut buf),
        Ok(Some(Tx::Frame(f.len())))
    );
    assert_eq!(&buf[..f.len()], &f[..], "header and frame intact");

    // Device → guest: the same over mergeable 4 KiB buffers.
    let mut d = Drv::new(&m);
    for i in 0..20u64 {
        d.chain(&[(0x40_0000 + i * 0x1000, 4096)], true);
    }
    let mut q = d.queue();
    let mut rx = RxRing::default();
    let used = f.len().div_ceil(4096) as u16;
    assert_eq!(rx.put(&mut q, &m, v1(), &f), Ok(Rx::Placed(used)));
    let got = d.read(0x40_0000, f.len());
    assert_eq!(&got[..10], &f[..10], "gso fields as the stack wrote them");
    assert_eq!(&got[10..12], &used.to_le_bytes(), "num_buffers");
    assert_eq!(&got[12..], &f[12..]);
}

#[test]
fn rx_without_mrg_rxbuf_too_small_chain_drops_frame_keeps_chain() {
    let m = mem();
    let mut d = Drv::new(&m);
    d.chain(&[(0x10_0000, 1000)], true);
    d.chain(&[(0x20_0000, 1000)], true);
    let mut q = d.queue();
    let mut rx = RxRing::default();
    let neg = Negotiated(bit(feature::VERSION_1));
    assert_eq!(
        rx.put(&mut q, &m, neg, &frame(1500)),
        Ok(Rx::Dropped(DropReason::TooBig))
    );
    assert_eq!(q.next_avail(), 0);
    assert_eq!(rx.put(&mut q, &m, neg, &frame(500)), Ok(Rx::Placed(1)));
    assert_eq!(d.used(0), (0, 512));
}

#[test]
fn rx_legacy_header_is_narrowed() {
    let m = mem();
    let mut d = Drv::new(&m);
    d.chain(&[(0x10_0000, 2048)], true);
    let mut q = d.queue();
    let mut rx = RxRing::default();
    let f = frame(200);
    let neg = Negotiated(bit(feature::CSUM));
    assert_eq!(rx.put(&mut q, &m, neg, &f), Ok(Rx::Placed(1)));
    let got = d.read(0x10_0000, 210);
    assert_eq!(&got[..10], &f[..10]);
    assert_eq!(&got[10..], &f[12..]);
    assert_eq!(d.used(0), (0, 210));
}

#[test]
fn rx_bad_chains_are_errors() {
    let m = mem();
    // Readable descriptor in an RX chain.
    let mut d = Drv::new(&m);
    d.chain(&[(0x10_0000, 2048)], false);
    let mut q = d.queue();
    assert_eq!(
        RxRing::default().put(&mut q, &m, v1(), &frame(100)),
        Err(ChainError::Direction { head: 0 })
    );
    // Outside memory.
    let mut d = Drv::new(&m);
    d.chain(&[(MEM as u64 - 100, 2048)], true);
    let mut q = d.queue();
    assert!(matches!(
        RxRing::default().put(&mut q, &m, v1(), &frame(100)),
        Err(ChainError::OutOfMemory { .. })
    ));
    // Smaller than the header.
    let mut d = Drv::new(&m);
    d.chain(&[(0x10_0000, 4)], true);
    let mut q = d.queue();
    assert_eq!(
        RxRing::default().put(&mut q, &m, v1(), &frame(100)),
        Err(ChainError::Empty { head: 0 })
    );
    // A loop.
    let mut d = Drv::new(&m);
    let w = VRING_DESC_F_WRITE as u16 | VRING_DESC_F_NEXT as u16;
    d.store(0, 0x10_0000, 8, w, 0);
    d.publish(0);
    let mut q = d.queue();
    assert_eq!(
        RxRing::default().put(&mut q, &m, v1(), &frame(100_000)),
        Err(ChainError::Unterminated { head: 0 })
    );
}

#[test]
fn rx_event_idx_suppresses_notifications() {
    let m = mem();
    let mut d = Drv::new(&m);
    for k in 0..8u64 {
        d.chain(&[(0x10_0000 + k * 0x1000, 2048)], true);
    }
    let mut q = d.queue();
    q.set_event_idx(true);
    let mut rx = RxRing::default();
    // used_event lives after the avail ring.
    let used_event = d.mock.avail_addr().unchecked_add(4 + 2 * u64::from(QSIZE));
    let set_event = |v: u16| m.write_obj(v.to_le(), used_event).unwrap();
    set_event(2); // interrupt me when entry 2 is used (idx passes 3)
    assert_eq!(rx.needs_notification(&q, &m), Ok(false), "nothing used");
    rx.put(&mut q, &m, v1(), &frame(100)).unwrap();
    rx.put(&mut q, &m, v1(), &frame(100)).unwrap();
    assert_eq!(rx.needs_notification(&q, &m), Ok(false), "idx 2");
    rx.put(&mut q, &m, v1(), &frame(100)).unwrap();
    rx.put(&mut q, &m, v1(), &frame(100)).unwrap();
    assert_eq!(rx.needs_notification(&q, &m), Ok(true), "idx 4 passed 3");
    rx.put(&mut q, &m, v1(), &frame(100)).unwrap();
    assert_eq!(rx.needs_notification(&q, &m), Ok(false), "event is behind");
    // Without EVENT_IDX: the NO_INTERRUPT flag decides.
    q.set_event_idx(false);
    m.write_obj(1u16.to_le(), d.mock.avail_addr()).unwrap();
    rx.put(&mut q, &m, v1(), &frame(100)).unwrap();
    assert_eq!(rx.needs_notification(&q, &m), Ok(false));
    m.write_obj(0u16, d.mock.avail_addr()).unwrap();
    rx.put(&mut q, &m, v1(), &frame(100)).unwrap();
    assert_eq!(rx.needs_notification(&q, &m), Ok(true));
}

#[test]
fn rx_no_room_with_event_idx_asks_for_a_kick_at_the_guests_index() {
    // MRG_RXBUF, two 2 KiB buffers posted, a 6000-byte frame: no room.
    // The guest's next refill (avail 2 -> 3) must kick: avail_event = 2.
    let m = mem();
    let mut d = Drv::new(&m);
    for k in 0..2u64 {
        d.chain(&[(0x10_0000 + k * 0x1000, 2048)], true);
    }
    let mut q = d.queue();
    q.set_event_idx(true);
    let mut rx = RxRing::default();
    let neg = Negotiated(offered(1, false) | bit(feature::RING_EVENT_IDX));
    let big = frame(6000);
    assert_eq!(
        crate::vmm::queue_pair::rx_put(&mut q, &mut rx, &m, neg, &big),
        Ok(Rx::NoRoom)
    );
    let avail_event = d.mock.used_addr().unchecked_add(4 + 8 * u64::from(QSIZE));
    let ev: u16 = m.read_obj(avail_event).unwrap();
    assert_eq!(u16::from_le(ev), 2, "avail_event behind the guest's index");
    // The refill: now it fits, in three buffers.
    d.chain(&[(0x10_2000, 2048)], true);
    assert_eq!(
        crate::vmm::queue_pair::rx_put(&mut q, &mut rx, &m, neg, &big),
        Ok(Rx::Placed(3))
    );
    assert_eq!(d.used_idx(), 3);
}

fn ctrl_cmd(d: &mut Drv<'_>, at: u64, cmd: &[u8]) -> u64 {
    d.write(at, cmd);
    d.write(at + 0x800, &[0xff]);
    let head = d.next_desc;
    d.store(
        head,
        at,
        cmd.len() as u32,
        VRING_DESC_F_NEXT as u16,
        head + 1,
    );
    d.store(head + 1, at + 0x800, 1, VRING_DESC_F_WRITE as u16, 0);
    d.next_desc += 2;
    d.publish(head);
    at + 0x800
}

#[test]
fn ctrl_queue_pairs_and_acks() {
    let m = mem();
    let mut d = Drv::new(&m);
    let a = ctrl_cmd(&mut d, 0x10_0000, &[4, 0, 2, 0]); // MQ pairs 2
    let b = ctrl_cmd(&mut d, 0x11_0000, &[4, 0, 9, 0]); // too many
    let c = ctrl_cmd(&mut d, 0x12_0000, &[0, 0, 1]); // RX promisc on
    let e = ctrl_cmd(&mut d, 0x13_0000, &[77, 1]); // unknown class
    let mut q = d.queue();
    let mut effects = Vec::new();
    assert_eq!(ctrl_process(&mut q, &m, 4, &mut effects), Ok(true));
    assert_eq!(effects, vec![CtrlEffect::QueuePairs(2)]);
    assert_eq!(d.read(a, 1), [0]);
    assert_eq!(d.read(b, 1), [1]);
    assert_eq!(d.read(c, 1), [0]);
    assert_eq!(d.read(e, 1), [1]);
    assert_eq!(d.used_idx(), 4);
    assert_eq!(d.used(0), (0, 1));
}

#[test]
fn features_and_config() {
    let f = offered(2, false);
    let names = feature_names(f);
    for n in [
        "VERSION_1",
        "MRG_RXBUF",
        "MQ",
        "RING_EVENT_IDX",
        "HOST_TSO4",
        "HOST_TSO6",
        "GUEST_TSO4",
        "GUEST_TSO6",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    assert!(f & bit(feature::CTRL_VQ) == 0);
    assert!(offered(1, true) & bit(feature::CTRL_VQ) != 0);
    assert!(offered(1, false) & bit(feature::MQ) == 0);
    let neg = Negotiated(bit(feature::GUEST_TSO4));
    assert!(!neg.offload().tso, "TSO needs GUEST_CSUM too");
    let neg = Negotiated(bit(feature::GUEST_TSO4) | bit(feature::GUEST_CSUM));
    assert!(neg.offload().tso && neg.offload().csum);
    assert!(!neg.offload().tso6, "TSO4 alone says nothing about IPv6");
    let neg = Negotiated(bit(feature::GUEST_TSO6) | bit(feature::GUEST_CSUM));
    assert!(neg.offload().tso6 && !neg.offload().tso);
    // A guest that takes everything but TSO6.
    let no6 = offered(1, false) & !bit(feature::GUEST_TSO6) & !bit(feature::HOST_TSO6);
    let off = Negotiated(no6).offload();
    assert!(off.tso && off.csum && !off.tso6);
    let off = Negotiated(offered(1, false)).offload();
    assert!(off.tso && off.tso6 && off.csum);
    let cfg = ConfigSpace {
        mac: [0, 0x15, 0x15, 0x15, 0x15, 0x15],
        status: 1,
        max_queue_pairs: 2,
        mtu: 1500,
    };
    assert_eq!(cfg.read(0, 6), vec![0, 0x15, 0x15, 0x15, 0x15, 0x15]);
    assert_eq!(cfg.read(8, 4), vec![2, 0, 0xdc, 0x05]);
    assert_eq!(cfg.read(10, 8), vec![0xdc, 0x05, 0, 0, 0, 0, 0, 0]);
    assert!(cfg.read(u32::MAX, 4).is_empty());
}

#[test]
fn offered_offloads_by_backend() {
    let none = offered_with(1, true, OfferedOffloads::None);
    let stack = offered_with(1, true, OfferedOffloads::Stack);
    let tap = offered_with(1, true, OfferedOffloads::Tap);
    assert_eq!(stack, offered(1, true));
    for f in [
        feature::CSUM,
        feature::GUEST_CSUM,
        feature::HOST_TSO4,
        feature::GUEST_TSO4,
        feature::HOST_TSO6,
        feature::GUEST_TSO6,
    ] {
        assert!(none & bit(f) == 0 && stack & bit(f) != 0 && tap & bit(f) != 0);
    }
    // ECN only with a TAP: the stack makes its own segments.
    for f in [feature::HOST_ECN, feature::GUEST_ECN] {
        assert!(stack & bit(f) == 0 && tap & bit(f) != 0, "{f}");
    }
    // Everything else is the same.
    assert_eq!(none, stack & tap & none);
    assert_eq!(stack & !tap, 0);
}

#[test]
fn rx_headers_ask_only_for_what_the_driver_accepted() {
    use crate::stack::wire::vnet_hdr::{flags, gso};
    let h = |f: u8, g: u8| {
        let mut b = [0u8; HEADER_LEN];
        b[0] = f;
        b[1] = g;
        b
    };
    let plain = Negotiated(bit(feature::VERSION_1));
    let csum = Negotiated(plain.0 | bit(feature::GUEST_CSUM));
    let tso4 = Negotiated(csum.0 | bit(feature::GUEST_TSO4));
    let all = Negotiated(tso4.0 | bit(feature::GUEST_TSO6) | bit(feature::GUEST_ECN));
    let fits = |neg, mut b: [u8; HEADER_LEN]| rx_header_fits(neg, &mut b).then_some(b);
    // A plain frame fits everyone; DATA_VALID and RSC_INFO are cleared
    // for a driver without GUEST_CSUM, RSC_INFO for every driver.
    assert_eq!(fits(plain, h(0, 0)), Some(h(0, 0)));
    assert_eq!(
        fits(plain, h(flags::DATA_VALID | flags::RSC_INFO, 0)),
        Some(h(0, 0))
    );
    assert_eq!(
        fits(csum, h(flags::DATA_VALID | flags::RSC_INFO, 0)),
        Some(h(flags::DATA_VALID, 0))
    );
    // Partial checksums need GUEST_CSUM.
    assert_eq!(fits(plain, h(flags::NEEDS_CSUM, 0)), None);
    assert!(fits(csum, h(flags::NEEDS_CSUM, 0)).is_some());
    // Each GSO type needs its feature (and the checksum).
    let t4 = h(flags::NEEDS_CSUM, gso::TCPV4);
    let t6 = h(flags::NEEDS_CSUM, gso::TCPV6);
    let ecn = h(flags::NEEDS_CSUM, gso::TCPV4 | gso::ECN);
    assert_eq!(fits(csum, t4), None);
    assert!(fits(tso4, t4).is_some());
    assert_eq!(fits(tso4, t6), None);
    assert_eq!(fits(tso4, ecn), None);
    assert!(fits(all, t6).is_some() && fits(all, ecn).is_some());
    assert_eq!(
        fits(Negotiated(bit(feature::GUEST_TSO4)), t4),
        None,
        "TSO without GUEST_CSUM"
    );
    // UFO, USO and unknown types are never accepted here; nor is an ECN
    // flag on a frame that is not GSO.
    for g in [gso::UDP, gso::UDP_L4, 2, 0x7f] {
        assert_eq!(fits(all, h(flags::NEEDS_CSUM, g)), None, "{g}");
    }
    assert_eq!(fits(all, h(0, gso::ECN)), None);
}

/// An avail index more than a queue ahead is an error from every pop,
/// not "empty" (virtio-queue's `pop_descriptor_chain` said `None`, and
/// the TX loop spun on it).
#[test]
fn avail_index_beyond_queue_size_is_an_error_not_none() {
    let m = mem();
    let mut d = Drv::new(&m);
    d.chain(&[(0x10_0000, 100)], false);
    d.mock.avail().idx().store(QSIZE + 1);
    let want = Some(ChainError::AvailIndex {
        avail: QSIZE + 1,
        next: 0,
        size: QSIZE,
    });
    let mut q = d.queue();
    assert_eq!(pop_chain(&mut q, &m).err(), want);
    // Nothing was consumed.
    assert_eq!(q.next_avail(), 0);
    let mut buf = vec![0u8; BUF];
    assert_eq!(tx_pop(&mut q, &m, v1(), &mut buf).err(), want);
    let mut rx = RxRing::default();
    assert_eq!(rx.put(&mut q, &m, v1(), &frame(60)).err(), want);
    assert_eq!(ctrl_process(&mut q, &m, 4, &mut Vec::new()).err(), want);
    // Exactly a queue ahead is still legal (a full ring).
    d.mock.avail().idx().store(QSIZE);
    assert!(matches!(pop_chain(&mut q, &m), Ok(Some(_))));
    // And wrapping: next 65530, avail 5 is 11 ahead.
    let mut q = d.queue();
    q.set_next_avail(65530);
    d.mock.avail().idx().store(5);
    assert!(matches!(pop_chain(&mut q, &m), Ok(Some(_))));
    q.set_next_avail(65530);
    d.mock.avail().idx().store(65530u16.wrapping_add(QSIZE + 1));
    assert!(matches!(
        pop_chain(&mut q, &m),
        Err(ChainError::AvailIndex { .. })
    ));
}

#[test]
fn pop_chain_empty_and_not_ready_are_none() {
    let m = mem();
    let mut d = Drv::new(&m);
    let mut q = d.queue();
    assert!(matches!(pop_chain(&mut q, &m), Ok(None)));
    d.chain(&[(0x10_0000, 100)], false);
    q.set_ready(false);
    assert!(matches!(pop_chain(&mut q, &m), Ok(None)));
    q.set_ready(true);
    let c = pop_chain(&mut q, &m).unwrap().unwrap();
    assert_eq!(c.head_index(), 0);
    assert!(matches!(pop_chain(&mut q, &m), Ok(None)));
}

/// An avail ring whose index is readable but whose element is not (the
/// ring ends at the end of memory): an error, and virtio-queue's own
/// iterator is never asked to read it.
#[test]
fn pop_chain_avail_element_outside_memory_is_an_error() {
    let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let d = Drv::new(&small);
    let mut q = d.queue();
    // Flags and idx are the last 4 bytes of memory; ring[0] is past it.
    q.try_set_avail_ring_address(GuestAddress(0x10000 - 4))
        .unwrap();
    small
        .write_obj(1u16.to_le(), GuestAddress(0x10000 - 2))
        .unwrap();
    assert_eq!(pop_chain(&mut q, &small).err(), Some(ChainError::Rings));
    // The index itself outside memory: the same.
    q.try_set_avail_ring_address(GuestAddress(0x20000)).unwrap();
    assert_eq!(pop_chain(&mut q, &small).err(), Some(ChainError::Rings));
}

/// Random descriptor tables (seeded): the device returns frames or errors,
/// never panics or loops, and never writes outside the buffers it was given.
#[test]
fn random_tables_never_panic() {
    let m = mem();
    let mut x = 0x1234_5678u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..300 {
        let d = Drv::new(&m);
        for i in 0..QSIZE {
            let r = rnd();
            let addr = if r & 1 == 0 {
                0x10_0000 + (rnd() % 0x80_0000)
            } else {
                rnd()
            };
            let len = (rnd() % 70_000) as u32;
            let flags = (rnd() % 8) as u16;
            d.store(i, addr, len, flags, (rnd() % u64::from(QSIZE + 4)) as u16);
        }
        let mut d = d;
        for _ in 0..8 {
            let h = (rnd() % u64::from(QSIZE + 2)) as u16;
            d.publish(h);
        }
        let mut q = d.queue();
        let mut buf = vec![0u8; BUF];
        for _ in 0..16 {
            match tx_pop(&mut q, &m, v1(), &mut buf) {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let mut q = d.queue();
        let mut rx = RxRing::default();
        for _ in 0..16 {
            match rx.put(&mut q, &m, v1(), &frame(3000)) {
                Ok(Rx::Placed(_)) => {}
                _ => break,
            }
        }
        let mut q = d.queue();
        let _ = ctrl_process(&mut q, &m, 4, &mut Vec::new());
    }
}
