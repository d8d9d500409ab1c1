//! Flow table: a 5-tuple ([`FlowKey`]) maps to a slot ([`FlowId`]) in a
//! fixed-capacity slab.
//!
//! A `FlowId` carries the slot index and a generation. Freeing a slot bumps
//! its generation, so an id held by a late io_uring completion no longer
//! resolves: `get` returns `None` and the event is dropped. Capacity is set
//! at construction; `insert` fails rather than grow past it (a guest cannot
//! make uipd allocate without bound).
//!
//! Keys are address-family generic (`IpAddr`), so IPv6 shares the table.
//!
//! A table of one of several workers' stacks records its keys in the
//! guest's [`Directory`] ([`FlowTable::shared`]): an insert claims the key
//! (and fails when another worker holds it), a remove releases it, so the
//! directory names every flow's owner for the stacks that miss it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::directory::Directory;
use super::ops::Proto;

/// Handle to a flow slot: index plus generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    /// Slot index.
    pub idx: u32,
    /// Slot generation when the id was issued.
    pub gen_: u32,
}

/// A flow as the guest sees it: protocol, the guest's endpoint and the remote
/// endpoint the guest addressed (before any NAT or loopback mapping).
///
/// For ICMP echo the "ports" are the echo identifier (guest side) and 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Protocol.
    pub proto: Proto,
    /// The guest's address and port.
    pub guest: SocketAddr,
    /// The address and port the guest sent to.
    pub remote: SocketAddr,
}

impl FlowKey {
    /// Address family of the flow (the guest side).
    pub fn is_ipv4(&self) -> bool {
        matches!(self.guest.ip(), IpAddr::V4(_))
    }
}

struct Slot<T> {
    gen_: u32,
    entry: Option<(FlowKey, T)>,
}

/// Fixed-capacity map from [`FlowKey`] to per-flow state `T`.
pub struct FlowTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    index: HashMap<FlowKey, FlowId>,
    capacity: usize,
    /// The guest's directory and this table's worker, when flows are
    /// shared out among several stacks.
    claims: Option<(Arc<Directory>, usize)>,
}

impl<T> FlowTable<T> {
    /// A table that holds at most `capacity` flows.
    pub fn new(capacity: usize) -> Self {
        FlowTable {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            capacity,
            claims: None,
        }
    }

    /// A table that holds at most `capacity` flows and records them in
    /// `directory` as worker `worker`'s.
    pub fn shared(capacity: usize, directory: Arc<Directory>, worker: usize) -> Self {
        let mut t = FlowTable::new(capacity);
        t.claims = Some((directory, worker));
        t
    }

    /// Number of live flows.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True if no flow is live.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The id of the flow with this key.
    pub fn lookup(&self, key: &FlowKey) -> Option<FlowId> {
        self.index.get(key).copied()
    }

    /// Insert a new flow; `None` if the key exists or the table is full.
    pub fn insert(&mut self, key: FlowKey, value: T) -> Option<FlowId> {
        self.insert_with(key, |_| value)
    }

    /// Insert a new flow whose state needs its own id; `None` if the key
    /// exists (here, or in the directory as another worker's) or the table
    /// is full (then `make` is not called).
    pub fn insert_with(&mut self, key: FlowKey, make: impl FnOnce(FlowId) -> T) -> Option<FlowId> {
        if self.index.contains_key(&key) || self.index.len() >= self.capacity {
            return None;
        }
        if let Some((dir, worker)) = &self.claims
            && !dir.claim(&key, *worker)
        {
            return None;
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len()).ok()?;
                self.slots.push(Slot {
                    gen_: 0,
                    entry: None,
                });
                i
            }
        };
        let slot = &mut self.slots[idx as usize];
        let id = FlowId {
            idx,
            gen_: slot.gen_,
        };
        slot.entry = Some((key, make(id)));
        self.index.insert(key, id);
        Some(id)
    }

    /// The flow's key and state, if `id` is still live.
    pub fn get(&self, id: FlowId) -> Option<(&FlowKey, &T)> {
        let slot = self.slots.get(id.idx as usize)?;
        if slot.gen_ != id.gen_ {
            return None;
        }
        slot.entry.as_ref().map(|(k, v)| (k, v))
    }

    /// Mutable access to the flow's state, if `id` is still live.
    pub fn get_mut(&mut self, id: FlowId) -> Option<(&FlowKey, &mut T)> {
        let slot = self.slots.get_mut(id.idx as usize)?;
        if slot.gen_ != id.gen_ {
            return None;
        }
        slot.entry.as_mut().map(|(k, v)| (&*k, v))
    }

    /// Remove the flow; its slot's generation moves on.
    pub fn remove(&mut self, id: FlowId) -> Option<(FlowKey, T)> {
        let slot = self.slots.get_mut(id.idx as usize)?;
        if slot.gen_ != id.gen_ {
            return None;
        }
        let (key, value) = slot.entry.take()?;
        slot.gen_ = slot.gen_.wrapping_add(1);
        self.free.push(id.idx);
        self.index.remove(&key);
        if let Some((dir, worker)) = &self.claims {
            dir.release(&key, *worker);
        }
        Some((key, value))
    }

    /// Ids of all live flows (for timers and teardown).
    pub fn ids(&self) -> Vec<FlowId> {
        self.index.values().copied().collect()
    }
}

impl<T> Drop for FlowTable<T> {
    /// A stack that goes away (its worker stopped) leaves no claims that
    /// would send other workers' frames to it.
    fn drop(&mut self) {
        if let Some((dir, worker)) = &self.claims {
            for key in self.index.keys() {
                dir.release(key, *worker);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TCP key from guest port `port` to 10.0.0.1:80 (also the directory's tests' key).
    pub(crate) fn key(port: u16) -> FlowKey {
        FlowKey {
            proto: Proto::Tcp,
            guest: SocketAddr::from(([192, 168, 33, 15], port)),
            remote: SocketAddr::from(([10, 0, 0, 1], 80)),
        }
    }

    #[test]
    fn stale_id_does_not_resolve_after_reuse() {
        let mut t = FlowTable::new(4);
        let a = t.insert(key(1), "a").unwrap();
        assert_eq!(t.remove(a).unwrap().1, "a");
        let b = t.insert(key(2), "b").unwrap();
        assert_eq!(a.idx, b.idx, "slot is reused");
        assert!(t.get(a).is_none(), "old generation must not resolve");
        assert_eq!(*t.get(b).unwrap().1, "b");
    }

    #[test]
    fn shared_tables_hold_each_key_once_and_release_it() {
        let dir = Arc::new(Directory::new());
        let mut a = FlowTable::shared(4, dir.clone(), 0);
        let mut b = FlowTable::shared(4, dir.clone(), 1);
        let id = a.insert(key(1), ()).unwrap();
        assert_eq!(dir.owner(&key(1)), Some(0));
        assert!(b.insert(key(1), ()).is_none(), "worker 0 holds the key");
        assert!(b.is_empty());
        a.remove(id).unwrap();
        assert_eq!(dir.owner(&key(1)), None);
        assert!(b.insert(key(1), ()).is_some(), "free again");
        assert_eq!(dir.owner(&key(1)), Some(1));
        a.insert(key(2), ()).unwrap();
        drop(a);
        assert_eq!(
            dir.owner(&key(2)),
            None,
            "a dropped table releases its keys"
        );
        assert_eq!(dir.owner(&key(1)), Some(1));
    }

    #[test]
    fn capacity_is_a_hard_limit() {
        let mut t = FlowTable::new(2);
        assert!(t.insert(key(1), ()).is_some());
        assert!(t.insert(key(2), ()).is_some());
        assert!(t.insert(key(3), ()).is_none());
        assert!(t.insert(key(1), ()).is_none(), "duplicate key");
        assert_eq!(t.len(), 2);
    }
}
