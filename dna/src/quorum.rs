//! Majorities. Once a roster is committed, every decision (a crown, a lease, a commit) needs a
//! majority of the committed roster and, while a roster change is in flight, of the proposed one
//! too (joint consensus). Until the first roster is committed, a majority of `bootstrap_expect`
//! nodes is needed as well — also by a node that already holds the first, uncommitted roster —
//! so that every cold-start decision intersects every other one.

use std::collections::BTreeSet;
use swarm_core::NodeId;

/// Who must agree: every listed condition at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quorum {
    /// Cold start (nothing committed yet): at least this many distinct nodes.
    bootstrap: Option<usize>,
    /// Majorities of each listed roster (zero, one or two rosters, each sorted).
    rosters: Vec<Vec<NodeId>>,
}

pub fn majority(size: usize) -> usize {
    size / 2 + 1
}

impl Quorum {
    pub fn new(committed: &[NodeId], latest: &[NodeId], bootstrap_expect: usize) -> Quorum {
        let mut rosters = Vec::new();
        for roster in [committed, latest] {
            if !roster.is_empty() && !rosters.iter().any(|r: &Vec<NodeId>| r.as_slice() == roster) {
                rosters.push(roster.to_vec());
            }
        }
        let bootstrap = committed.is_empty().then(|| majority(bootstrap_expect));
        Quorum { bootstrap, rosters }
    }

    /// Whether `node`'s agreement counts at all.
    pub fn counts(&self, node: NodeId) -> bool {
        self.bootstrap.is_some() || self.rosters.iter().any(|r| r.binary_search(&node).is_ok())
    }

    pub fn is_met(&self, agreed: &BTreeSet<NodeId>) -> bool {
        self.bootstrap.is_none_or(|needed| agreed.len() >= needed)
            && self.rosters.iter().all(|roster| {
                let have = roster.iter().filter(|n| agreed.contains(n)).count();
                have >= majority(roster.len())
            })
    }

    /// No set smaller than this can meet the quorum: checking `is_met` below it is wasted work.
    pub fn at_least(&self) -> usize {
        let rosters = self
            .rosters
            .iter()
            .map(|r| majority(r.len()))
            .max()
            .unwrap_or(0);
        rosters.max(self.bootstrap.unwrap_or(0))
    }

    /// `is_met`, skipping the roster walk while `agreed` is too small to possibly meet it.
    pub fn is_met_fast(&self, agreed: &BTreeSet<NodeId>) -> bool {
        agreed.len() >= self.at_least() && self.is_met(agreed)
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
    fn the_first_uncommitted_roster_still_needs_the_bootstrap_majority() {
        // bootstrap_expect = 10; a node holding an uncommitted roster of 3 must not be satisfied
        // by 2 of those 3: a bootstrapping node elsewhere could gather 6 disjoint votes.
        let q = Quorum::new(&[], &ids(&[1, 2, 3]), 10);
        assert!(!q.is_met(&set(&[1, 2])));
        assert!(q.counts(NodeId(9)));
        assert!(q.is_met(&set(&[1, 2, 4, 5, 6, 7])));
        assert!(
            !q.is_met(&set(&[1, 4, 5, 6, 7, 8])),
            "needs a majority of the roster too"
        );
        // Once committed, the roster alone decides.
        let q = Quorum::new(&ids(&[1, 2, 3]), &ids(&[1, 2, 3]), 10);
        assert!(q.is_met(&set(&[1, 2])));
    }

    #[test]
    fn joint_change_needs_both_majorities() {
        let q = Quorum::new(&ids(&[1, 2, 3]), &ids(&[1, 2, 3, 4, 5, 6, 7]), 3);
        // Majority of the new roster but not of the old one.
        assert!(!q.is_met(&set(&[1, 4, 5, 6, 7])));
        assert!(q.is_met(&set(&[1, 2, 4, 5])));
        assert!(!q.counts(NodeId(9)));
        assert_eq!(q.at_least(), 4);
        assert!(!q.is_met_fast(&set(&[1, 2, 4])));
        assert!(q.is_met_fast(&set(&[1, 2, 4, 5])));
        assert!(q.counts(NodeId(6)));
    }
}
