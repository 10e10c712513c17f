//! Stable node identity. Everything long-lived (votes, the queen, the roster, assignments) is keyed
//! on [`NodeId`], never on foca's identity value, which foca renews after a refuted suspicion.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's stable identity: 64 random bits chosen at first boot and persisted.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The all-zero id is never assigned; it stands for "unknown" in an announce to a seed.
    pub const UNKNOWN: NodeId = NodeId(0);
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{:08x}", self.0 >> 32)
    }
}
