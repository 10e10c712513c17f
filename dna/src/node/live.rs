//! `Live`: the members SWIM considers alive, by stable id, with their current identity.
//!
//! Every node holds one entry per member, so a colony of n nodes holds n² of them: a plain
//! `BTreeMap<NodeId, SwimId>` spends 56 bytes an entry (a `SocketAddr` alone is 32). Here an
//! IPv4 identity packs into 8 bytes beside its key (address, port, bump) and anything else is
//! boxed; the map's API is the part of `BTreeMap`'s the node uses, returning `SwimId`s by value.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use swarm_core::NodeId;
use swarm_core::swim::SwimId;

/// A member's identity without its node id (the map's key).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Packed {
    V4 { ip: [u8; 4], port: u16, bump: u16 },
    Other(Box<(SocketAddr, u16)>),
}

impl Packed {
    fn new(id: &SwimId) -> Packed {
        match id.addr {
            SocketAddr::V4(v4) => Packed::V4 {
                ip: v4.ip().octets(),
                port: v4.port(),
                bump: id.bump,
            },
            other => Packed::Other(Box::new((other, id.bump))),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Packed::V4 { ip, port, .. } => {
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(*ip), *port))
            }
            Packed::Other(b) => b.0,
        }
    }

    fn id(&self, node: NodeId) -> SwimId {
        let bump = match self {
            Packed::V4 { bump, .. } => *bump,
            Packed::Other(b) => b.1,
        };
        SwimId {
            node,
            addr: self.addr(),
            bump,
        }
    }
}

/// Live members by stable id, ordered (the node picks from it at random).
#[derive(Default)]
pub(super) struct Live {
    map: BTreeMap<NodeId, Packed>,
}

impl Live {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(super) fn contains_key(&self, node: &NodeId) -> bool {
        self.map.contains_key(node)
    }

    /// The member's current identity.
    pub(super) fn get(&self, node: &NodeId) -> Option<SwimId> {
        self.map.get(node).map(|p| p.id(*node))
    }

    /// Whether `id` is the member's current identity.
    pub(super) fn is(&self, id: &SwimId) -> bool {
        self.map
            .get(&id.node)
            .is_some_and(|p| *p == Packed::new(id))
    }

    /// Where the member listens.
    pub(super) fn addr(&self, node: &NodeId) -> Option<SocketAddr> {
        self.map.get(node).map(Packed::addr)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &NodeId> + '_ {
        self.map.keys()
    }

    /// Identities in id order.
    pub(super) fn values(&self) -> impl Iterator<Item = SwimId> + '_ {
        self.map.iter().map(|(n, p)| p.id(*n))
    }

    /// Addresses in id order.
    pub(super) fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.map.values().map(Packed::addr)
    }

    /// Sets the member's identity; true if it was not live before.
    pub(super) fn insert(&mut self, id: &SwimId) -> bool {
        self.map.insert(id.node, Packed::new(id)).is_none()
    }

    pub(super) fn remove(&mut self, node: &NodeId) {
        self.map.remove(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_v4_and_v6() {
        let mut live = Live::default();
        let a = SwimId {
            node: NodeId(1),
            addr: "10.0.0.1:7946".parse().unwrap(),
            bump: 7,
        };
        let b = SwimId {
            node: NodeId(2),
            addr: "[fe80::1%3]:7946".parse().unwrap(),
            bump: 1,
        };
        assert!(live.insert(&a));
        assert!(live.insert(&b));
        assert!(!live.insert(&a));
        assert_eq!(live.get(&NodeId(1)), Some(a.clone()));
        assert_eq!(live.get(&NodeId(2)), Some(b.clone()));
        assert!(live.is(&a) && live.is(&b));
        let renewed = SwimId {
            bump: 8,
            ..a.clone()
        };
        assert!(!live.is(&renewed));
        assert_eq!(
            live.values().collect::<Vec<_>>(),
            vec![a.clone(), b.clone()]
        );
        assert_eq!(live.addrs().collect::<Vec<_>>(), vec![a.addr, b.addr]);
        live.remove(&NodeId(1));
        assert_eq!(live.len(), 1);
        assert!(std::mem::size_of::<Packed>() <= 16);
    }
}
