//! Majorities. Once a roster is committed, every decision (a crown, a lease, a commit) needs a
//! majority of the committed roster and, while a roster change is in flight, of the proposed one
//! too (joint consensus). Before any roster exists, a majority of `bootstrap_expect` nodes.

use std::collections::BTreeSet;
use swarm_core::NodeId;

/// Who must agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Quorum {
    /// Cold start: any `needed` distinct nodes.
    Bootstrap { needed: usize },
    /// Majorities of each listed roster (one or two rosters, each sorted).
    Rosters(Vec<Vec<NodeId>>),
}

pub fn majority(size: usize) -> usize {
    size / 2 + 1
}

impl Quorum {
    pub fn new(committed: &[NodeId], latest: &[NodeId], bootstrap_expect: usize) -> Quorum {
        if committed.is_empty() && latest.is_empty() {
            Quorum::Bootstrap {
                needed: majority(bootstrap_expect),
            }
        } else if committed.is_empty() {
            Quorum::Rosters(vec![latest.to_vec()])
        } else if latest.is_empty() || committed == latest {
            Quorum::Rosters(vec![committed.to_vec()])
        } else {
            Quorum::Rosters(vec![committed.to_vec(), latest.to_vec()])
        }
    }

    /// Whether `node`'s agreement counts at all.
    pub fn counts(&self, node: NodeId) -> bool {
        match self {
            Quorum::Bootstrap { .. } => true,
            Quorum::Rosters(rosters) => rosters.iter().any(|r| r.binary_search(&node).is_ok()),
        }
    }

    pub fn is_met(&self, agreed: &BTreeSet<NodeId>) -> bool {
        match self {
            Quorum::Bootstrap { needed } => agreed.len() >= *needed,
            Quorum::Rosters(rosters) => rosters.iter().all(|roster| {
                let have = roster.iter().filter(|n| agreed.contains(n)).count();
                have >= majority(roster.len())
            }),
        }
    }

    /// The smallest roster size involved (for reports).
    pub fn members(&self) -> usize {
        match self {
            Quorum::Bootstrap { needed } => *needed,
            Quorum::Rosters(r) => r.iter().map(Vec::len).max().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().copied().map(NodeId).collect()
    }

    fn set(v: &[u64]) -> BTreeSet<NodeId> {
        ids(v).into_iter().collect()
    }

    #[test]
    fn bootstrap_needs_majority_of_expected() {
        let q = Quorum::new(&[], &[], 5);
        assert!(!q.is_met(&set(&[1, 2])));
        assert!(q.is_met(&set(&[1, 2, 3])));
    }

    #[test]
    fn joint_change_needs_both_majorities() {
        let q = Quorum::new(&ids(&[1, 2, 3]), &ids(&[1, 2, 3, 4, 5, 6, 7]), 3);
        // Majority of the new roster but not of the old one.
        assert!(!q.is_met(&set(&[1, 4, 5, 6, 7])));
        assert!(q.is_met(&set(&[1, 2, 4, 5])));
        assert!(!q.counts(NodeId(9)));
        assert!(q.counts(NodeId(6)));
    }
}
