//! The virtio-net device model against hostile guests: the input is the
//! guest's memory (descriptor table, avail ring and buffers all come from
//! it) and the negotiated features; TX pops, RX puts and control commands
//! run on it. The device may report errors, never panic or loop.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uipd::vmm::virtio_net::{Negotiated, RxRing, ctrl_process, offered, tx_pop};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x2_0000;
const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;

fn queue(mem: &GuestMemoryMmap, event_idx: bool) -> Option<Queue> {
    let mut q = Queue::new(QSIZE).ok()?;
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (ctl, image) = data.split_at(3);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    // The guest's whole memory, repeated to fill it: tables, rings and
    // buffers are all attacker-chosen.
    let mut fill: Vec<u8> = if image.is_empty() {
        vec![0; MEM]
    } else {
        image.iter().copied().cycle().take(MEM).collect()
    };
    // The used rings start clean (the device writes them).
    fill[USED as usize..USED as usize + 0x200].fill(0);
    if mem.write_slice(&fill, GuestAddress(0)).is_err() {
        return;
    }
    // Features: drop bits by the control byte (the guest may refuse any).
    let mut features = offered(2, true);
    for (bit, name_bit) in [(0, 15u32), (1, 32), (2, 11), (3, 7), (4, 0)] {
        if ctl[0] & (1 << bit) != 0 {
            features &= !(1u64 << name_bit);
        }
    }
    let neg = Negotiated(features);
    let event_idx = ctl[0] & 0x40 != 0;

    if let Some(mut q) = queue(&mem, event_idx) {
        let mut buf = vec![0u8; 12 + 14 + 65535];
        for _ in 0..(2 * QSIZE) {
            match tx_pop(&mut q, &mem, neg, &mut buf) {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    if let Some(mut q) = queue(&mem, event_idx) {
        let mut rx = RxRing::default();
        let len = 12 + 14 + usize::from(u16::from_le_bytes([ctl[1], ctl[2]]));
        let mut frame = vec![0u8; len.min(12 + 14 + 65535)];
        frame[12] = 0x02;
        for _ in 0..(2 * QSIZE) {
            match rx.put(&mut q, &mem, neg, &frame) {
                Ok(uipd::vmm::virtio_net::Rx::Placed(_)) => {}
                _ => break,
            }
        }
        let _ = rx.needs_notification(&q, &mem);
    }
    if let Some(mut q) = queue(&mem, event_idx) {
        let mut effects = Vec::new();
        let _ = ctrl_process(&mut q, &mem, 2, &mut effects);
    }
});
