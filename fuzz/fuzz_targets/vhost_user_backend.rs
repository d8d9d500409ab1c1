//! The vhost-user backend against a hostile front-end, in process: the
//! input is the guest's memory (descriptor tables, avail rings, buffers),
//! the vrings' sizes, first avail indices and acked features, and a
//! stream of vhost-user messages for the relay's checks. TX kicks and RX
//! placement run through the backend's own connection code
//! (`uipd::vmm::vhost_user::fuzzing`), as a vring handler thread and a
//! worker would. It may stop queues and refuse messages, never panic,
//! loop or touch memory outside the guest's.
//!
//! ```text
//!  data: [0..10) control (features, ring sizes and places, bases, message
//!        stream length in [8..10)) | messages | memory patches
//!  patch: u16 offset / 2, u8 length, bytes   (into zeroed guest memory)
//! ```
//!
//! Patches keep inputs (and seeds) small: rings and buffers go where the
//! bytes say, the rest of memory is zero.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uipd::vmm::vhost_relay::fuzzing::check_messages;
use uipd::vmm::vhost_user::fuzzing::{Ring, run_queues};
use uipd::vmm::virtio_net::offered;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x2_0000;

fuzz_target!(|data: &[u8]| {
    let Some((ctl, rest)) = data.split_first_chunk::<10>() else {
        return;
    };
    let msg_len = usize::from(u16::from_le_bytes([ctl[8], ctl[9]])).min(rest.len());
    let (msgs, image) = rest.split_at(msg_len);
    check_messages(msgs);

    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    let mut patches = image;
    while let Some((h, rest)) = patches.split_first_chunk::<3>() {
        let at = u64::from(u16::from_le_bytes([h[0], h[1]])) * 2;
        let n = usize::from(h[2]).min(rest.len());
        let (bytes, rest) = rest.split_at(n);
        let _ = mem.write_slice(bytes, GuestAddress(at));
        patches = rest;
    }
    // Features: the guest may refuse any offered bit.
    let mut features = offered(1, false);
    for (bit, f) in [(0, 15u32), (1, 32), (2, 29), (3, 28), (4, 0), (5, 11)] {
        if ctl[0] & (1 << bit) != 0 {
            features &= !(1u64 << f);
        }
    }
    // Sizes 1..=512 (powers of two); the rings at fixed, valid places,
    // or (control bit) anywhere the input says, in or out of memory.
    let size = |b: u8| 1u16 << (b % 10);
    let anywhere = ctl[1] & 0x80 != 0;
    let at = |k: u8, fixed: u64| {
        if anywhere {
            // 1 KiB steps over 256 KiB: half of them outside memory.
            u64::from(k) << 10
        } else {
            fixed
        }
    };
    let rings = [
        Ring {
            size: size(ctl[1]),
            desc: at(ctl[3], 0x0000),
            avail: at(ctl[4], 0x2000),
            used: at(ctl[5], 0x3000),
            base: u16::from(ctl[6]),
        },
        Ring {
            size: size(ctl[2]),
            desc: at(ctl[3] ^ 0x20, 0x8000),
            avail: at(ctl[4] ^ 0x20, 0xa000),
            used: at(ctl[5] ^ 0x20, 0xb000),
            base: u16::from(ctl[7]),
        },
    ];
    // Frames toward the guest: a few sizes, MRG_RXBUF may spread them.
    let frames: Vec<Vec<u8>> = [60usize, 1514, 9000]
        .iter()
        .take(usize::from(ctl[6] % 4))
        .map(|&n| {
            let mut f = vec![0u8; 12 + n];
            f[12..18].copy_from_slice(&[0, 0x15, 0x15, 0x15, 0x15, 0x15]);
            f
        })
        .collect();
    let _ = run_queues(mem, features, rings, 1 + usize::from(ctl[7] % 3), &frames);
});
