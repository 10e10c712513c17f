//! What discovery has already told the driver: a bounded memory of `(node, addr)` pairs so that
//! only new or changed pairs are sent, whichever source reports them.

use indexmap::IndexMap;
use std::net::SocketAddr;
use swarm_core::id::NodeId;

/// One remembered peer: a known node (its latest address) or an address without an id (a seed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Node(NodeId),
    Anonymous(SocketAddr),
}

/// Remembers at most `capacity` peers, forgetting the oldest insertion first. Forgetting only
/// means a later report of that peer is sent again, which the driver tolerates.
#[derive(Debug)]
pub(crate) struct Dedupe {
    known: IndexMap<Key, SocketAddr>,
    capacity: usize,
}

impl Dedupe {
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "dedupe capacity");
        Self {
            known: IndexMap::new(),
            capacity,
        }
    }

    /// True when `(node, addr)` is new or changed, i.e. when it must be sent; remembers it.
    pub(crate) fn admit(&mut self, node: Option<NodeId>, addr: SocketAddr) -> bool {
        let key = match node {
            Some(n) => Key::Node(n),
            None => Key::Anonymous(addr),
        };
        if self.known.get(&key) == Some(&addr) {
            return false;
        }
        // A changed address moves the node to the young end: it was just heard of.
        self.known.shift_remove(&key);
        while self.known.len() >= self.capacity {
            self.known.shift_remove_index(0);
        }
        self.known.insert(key, addr);
        debug_assert!(self.known.len() <= self.capacity);
        true
    }

    /// A source saw the peer leave: forget it so that its return is sent again. A pair that
    /// was superseded (the node has moved on to another address) is left alone.
    pub(crate) fn forget(&mut self, node: Option<NodeId>, addr: SocketAddr) {
        let key = match node {
            Some(n) => Key::Node(n),
            None => Key::Anonymous(addr),
        };
        if self.known.get(&key) == Some(&addr) {
            self.known.shift_remove(&key);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.known.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn only_new_or_changed_pairs_pass() {
        let mut d = Dedupe::new(16);
        let n = Some(NodeId(7));
        assert!(d.admit(n, a(1)));
        assert!(!d.admit(n, a(1)), "same pair twice");
        assert!(d.admit(n, a(2)), "address changed");
        assert!(!d.admit(n, a(2)));
        assert!(d.admit(n, a(1)), "changed back");
        // A seed and a node on the same address are different pairs.
        assert!(d.admit(None, a(1)));
        assert!(!d.admit(None, a(1)));
        assert!(d.admit(None, a(3)));
    }

    #[test]
    fn forget_lets_a_return_through_but_ignores_stale_pairs() {
        let mut d = Dedupe::new(16);
        let n = Some(NodeId(7));
        assert!(d.admit(n, a(1)));
        d.forget(n, a(9));
        assert!(!d.admit(n, a(1)), "forgetting another address is a no-op");
        d.forget(n, a(1));
        assert!(d.admit(n, a(1)), "returned after leaving");
        d.forget(None, a(5));
        assert!(d.admit(None, a(5)));
        d.forget(None, a(5));
        assert!(d.admit(None, a(5)));
    }

    #[test]
    fn memory_is_bounded_and_oldest_goes_first() {
        let mut d = Dedupe::new(3);
        for i in 0..10u64 {
            assert!(d.admit(Some(NodeId(i + 1)), a(1)));
            assert!(d.len() <= 3);
        }
        // 8, 9, 10 are remembered; 1 was evicted and is sent again.
        assert!(!d.admit(Some(NodeId(10)), a(1)));
        assert!(!d.admit(Some(NodeId(8)), a(1)));
        assert!(d.admit(Some(NodeId(1)), a(1)));
    }
}
