//! SWIM membership glue for foca: the identity foca gossips ([`SwimId`]) and the pheromone
//! [`Scent`] every node piggybacks on foca's custom broadcasts (no second gossip protocol).

use crate::NodeId;
use crate::wire::{Pheromone, Version};
use foca::{BroadcastHandler, Identity, Invalidates};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// foca's view of a node: the stable id, where it listens, and a bump that foca renews when the
/// node must rejoin under a fresh identity (after being declared down, or on restart).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SwimId {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub bump: u16,
}

impl Identity for SwimId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(SwimId {
            node: self.node,
            addr: self.addr,
            bump: self.bump.wrapping_add(1),
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Serial-number comparison so that a wrapped bump still wins.
        self.bump.wrapping_sub(adversary.bump) < u16::MAX / 2
    }
}

/// What every node says about itself through gossip: its pheromone level, the newest
/// colony-state version it holds and the highest term it has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scent {
    pub node: NodeId,
    /// Increases with every new scent from this node; newer replaces older.
    pub seq: u32,
    pub pheromone: Pheromone,
    pub version: Version,
    pub term: u64,
    /// The node reigns as queen of `term`. Lets a newcomer that the queen has not reached yet
    /// wait for her instead of standing.
    pub queen: bool,
}

/// A scent as the [`ScentBook`] keeps it: without the node id, which is its key (one entry
/// per known member in every node, so every byte counts n² times in a simulated colony).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScentEntry {
    pub seq: u32,
    pub pheromone: Pheromone,
    pub version: Version,
    pub term: u64,
    pub queen: bool,
}

impl ScentEntry {
    /// The scent of `node` this entry holds.
    pub fn scent(&self, node: NodeId) -> Scent {
        Scent {
            node,
            seq: self.seq,
            pheromone: self.pheromone,
            version: self.version,
            term: self.term,
            queen: self.queen,
        }
    }
}

impl From<Scent> for ScentEntry {
    fn from(s: Scent) -> ScentEntry {
        ScentEntry {
            seq: s.seq,
            pheromone: s.pheromone,
            version: s.version,
            term: s.term,
            queen: s.queen,
        }
    }
}

/// Largest encoded scent accepted from the wire.
pub const SCENT_MAX_BYTES: usize = 64;

impl Scent {
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    pub fn decode(data: &[u8]) -> Result<Scent, ScentError> {
        if data.len() > SCENT_MAX_BYTES {
            return Err(ScentError(format!(
                "{} bytes exceeds {SCENT_MAX_BYTES}",
                data.len()
            )));
        }
        let config = bincode::config::standard().with_limit::<SCENT_MAX_BYTES>();
        let (scent, used): (Scent, usize) = bincode::serde::decode_from_slice(data, config)
            .map_err(|e| ScentError(e.to_string()))?;
        if used != data.len() {
            return Err(ScentError("trailing bytes".to_owned()));
        }
        Ok(scent)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("malformed scent: {0}")]
pub struct ScentError(String);

/// Identifies one scent broadcast; a newer scent of the same node invalidates older ones.
#[derive(Debug, Clone, Copy)]
pub struct ScentKey {
    node: NodeId,
    seq: u32,
}

impl Invalidates for ScentKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && self.seq >= other.seq
    }
}

/// The newest scent heard from every node. Shared between foca's broadcast handler (which
/// writes) and the node's state machine (which reads); ordered so iteration is deterministic.
#[derive(Clone, Debug, Default)]
pub struct ScentBook {
    book: Arc<Mutex<BTreeMap<NodeId, ScentEntry>>>,
    /// Bumped on every change, so readers can cache what they derive from the book.
    generation: Arc<AtomicU64>,
}

impl ScentBook {
    pub fn lock(&self) -> MutexGuard<'_, BTreeMap<NodeId, ScentEntry>> {
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, node: NodeId) -> Option<Scent> {
        self.lock().get(&node).map(|e| e.scent(node))
    }

    /// Keeps `scent` if it is newer than what the book holds (anti-entropy; not re-gossiped).
    pub fn merge(&self, scent: Scent) -> bool {
        let mut book = self.lock();
        match book.get(&scent.node) {
            Some(known) if known.seq >= scent.seq => false,
            _ => {
                book.insert(scent.node, scent.into());
                self.generation.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }

    /// Changes whenever the book does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

impl BroadcastHandler<SwimId> for ScentBook {
    type Key = ScentKey;
    type Error = ScentError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&SwimId>,
    ) -> Result<Option<ScentKey>, ScentError> {
        let scent = Scent::decode(data)?;
        Ok(self.merge(scent).then_some(ScentKey {
            node: scent.node,
            seq: scent.seq,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_scent_replaces_older_and_stale_is_not_rebroadcast() {
        let mut book = ScentBook::default();
        let mut scent = Scent {
            node: NodeId(5),
            seq: 2,
            pheromone: Pheromone(10),
            version: Version::default(),
            term: 1,
            queen: false,
        };
        assert!(book.receive_item(&scent.encode(), None).unwrap().is_some());
        scent.seq = 1;
        assert!(book.receive_item(&scent.encode(), None).unwrap().is_none());
        assert_eq!(book.get(NodeId(5)).unwrap().seq, 2);
        assert!(book.receive_item(&[0xff; 3], None).is_err());
        assert!(book.receive_item(&[0; 100], None).is_err());
    }

    #[test]
    fn renewed_identity_wins_conflicts_even_when_wrapped() {
        let a = SwimId {
            node: NodeId(1),
            addr: "10.0.0.1:7946".parse().unwrap(),
            bump: u16::MAX,
        };
        let b = a.renew().unwrap();
        assert_eq!(b.bump, 0);
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
    }
}
