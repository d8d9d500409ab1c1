//! The guest-wide facts that the stacks of one guest share: which worker
//! owns each flow, and the guest's MAC.
//!
//! Each worker's [`Stack`](super::Stack) keeps its own flows, and a flow
//! lives on exactly one of them. Where uipd picks the worker (hash
//! steering) the owner follows from the 5-tuple; but with a multiqueue TAP
//! the *kernel* picks the queue a guest frame arrives on, and the worker
//! that read a flow's first frame owns it. The queue of a flow's later
//! frames can change under it: tun's flow table follows the queue user
//! space last wrote the flow's packets to, and its entries age out; RPS/XPS
//! inside the guest, or the guest's process moving to another CPU, change
//! the choice too; and a published port's flow is started by uipd (the
//! worker that accepted the host client), not by a guest frame at all. A
//! stack that gets a frame of a flow it does not hold asks the directory
//! who does, and hands the frame there ([`Actions::forward`](super::Actions::forward)) instead of
//! answering it (a RST, or a second host socket for a UDP flow).
//!
//! ```text
//!  worker k: FlowTable::insert_with ─► claim(key, k)   (refused: the key is another's)
//!            FlowTable::remove      ─► release(key, k)
//!  worker j: lookup(key) misses     ─► owner(key) = Some(k ≠ j) ─► forward to k's inbox
//! ```
//!
//! Invariants:
//! - at most one worker holds a key, here and in its own table: a stack
//!   inserts a flow only after its claim succeeded, and releases the claim
//!   when it removes the flow;
//! - a forwarded frame reaches a worker that held the key when it was sent;
//!   if the flow ended meanwhile, that worker finds no owner and answers the
//!   frame itself (as for any dead flow), so a frame moves at most once per
//!   change of the key's owner.
//!
//! The map is consulted only when a stack's own table misses (the first
//! frame of each new flow, and frames of flows that changed queue), and
//! written when flows come and go; it is sharded so that workers opening
//! flows at once rarely meet on a lock. The guest's MAC is learnt by
//! whichever worker sees a frame of the guest's first (ARP replies and
//! other stateless frames are answered wherever they arrive) and is needed
//! by all of them: a worker that never saw a guest frame still starts
//! published connections, and Linux TCP drops segments not addressed to its
//! own MAC.
//!
//! No I/O and no clock here, like the rest of the stack: only memory
//! shared between the workers' threads.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::flow::FlowKey;
use super::wire::EthernetAddress;

/// Number of lock shards; a power of two.
const SHARDS: usize = 64;

/// Bit that marks [`Directory::mac`] as known.
const MAC_KNOWN: u64 = 1 << 48;

/// Flow ownership and the guest's MAC, shared by one guest's stacks.
pub struct Directory {
    shards: Box<[Mutex<HashMap<FlowKey, usize>>]>,
    hasher: std::collections::hash_map::RandomState,
    /// The guest's MAC in the low 48 bits, with [`MAC_KNOWN`] set once it
    /// is known; 0 before. Relaxed: the value is self-contained and a
    /// worker that reads it a little late only sends one frame to the old
    /// (or broadcast) address, as a single stack would before it learnt.
    mac: AtomicU64,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("flows", &self.len())
            .field("guest_mac", &self.guest_mac())
            .finish()
    }
}

impl Default for Directory {
    fn default() -> Self {
        Directory::new()
    }
}

impl Directory {
    /// An empty directory: no flows, guest MAC unknown.
    pub fn new() -> Directory {
        Directory {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            mac: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &FlowKey) -> std::sync::MutexGuard<'_, HashMap<FlowKey, usize>> {
        // Cannot fail: masked below SHARDS.
        let i = usize::try_from(self.hasher.hash_one(key) & (SHARDS as u64 - 1)).unwrap_or(0);
        // A poisoned shard only means another worker panicked while holding
        // it; the map itself is never left half-updated by these methods.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker that holds the flow `key`, if any.
    pub fn owner(&self, key: &FlowKey) -> Option<usize> {
        self.shard(key).get(key).copied()
    }

    /// Record that `worker` holds `key`. False when another worker holds
    /// it (the caller must not create the flow); true when it was free or
    /// `worker`'s already.
    pub fn claim(&self, key: &FlowKey, worker: usize) -> bool {
        let mut m = self.shard(key);
        match m.get(key) {
            Some(&w) => w == worker,
            None => {
                m.insert(*key, worker);
                true
            }
        }
    }

    /// `worker` no longer holds `key` (a claim of another worker's stays).
    pub fn release(&self, key: &FlowKey, worker: usize) {
        let mut m = self.shard(key);
        if m.get(key) == Some(&worker) {
            m.remove(key);
        }
    }

    /// Flows recorded, over all shards.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// True if no flow is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The guest's MAC, once some stack has seen it.
    pub fn guest_mac(&self) -> Option<EthernetAddress> {
        let v = self.mac.load(Ordering::Relaxed);
        (v & MAC_KNOWN != 0).then(|| {
            let b = v.to_be_bytes();
            EthernetAddress([b[2], b[3], b[4], b[5], b[6], b[7]])
        })
    }

    /// Record the guest's MAC (a stack saw a frame from it).
    pub fn set_guest_mac(&self, mac: EthernetAddress) {
        let m = mac.0;
        let v = u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]]) | MAC_KNOWN;
        self.mac.store(v, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::flow::tests::key;

    #[test]
    fn one_owner_per_key() {
        let d = Directory::new();
        assert_eq!(d.owner(&key(1)), None);
        assert!(d.claim(&key(1), 2));
        assert!(d.claim(&key(1), 2), "a second claim by the owner is fine");
        assert!(!d.claim(&key(1), 0), "another worker's key");
        assert_eq!(d.owner(&key(1)), Some(2));
        d.release(&key(1), 0);
        assert_eq!(d.owner(&key(1)), Some(2), "only the owner releases");
        d.release(&key(1), 2);
        assert_eq!(d.owner(&key(1)), None);
        assert!(d.claim(&key(1), 0));
        assert!(!d.is_empty());
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn keys_spread_over_shards_and_stay_apart() {
        let d = Directory::new();
        for p in 0..1000 {
            assert!(d.claim(&key(p), usize::from(p % 4)));
        }
        assert_eq!(d.len(), 1000);
        for p in 0..1000 {
            assert_eq!(d.owner(&key(p)), Some(usize::from(p % 4)));
        }
    }

    #[test]
    fn guest_mac_round_trips() {
        let d = Directory::new();
        assert_eq!(d.guest_mac(), None);
        let mac = EthernetAddress([0x00, 0x15, 0x15, 0xfe, 0x01, 0xff]);
        d.set_guest_mac(mac);
        assert_eq!(d.guest_mac(), Some(mac));
        let zero = EthernetAddress([0; 6]);
        d.set_guest_mac(zero);
        assert_eq!(d.guest_mac(), Some(zero), "known even when all zero");
    }
}
