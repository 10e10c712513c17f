//! Plan-to-plan differences keyed by (role, replica): how many stayed, moved, appeared, went.

use swarm_core::NodeId;
use swarm_core::wire::Assignment;

/// Counts of replicas between two plans, keyed by (role, replica).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Same key, same node.
    pub kept: usize,
    /// Same key, different node.
    pub moved: usize,
    /// Key only in `next`.
    pub added: usize,
    /// Key only in `previous`.
    pub removed: usize,
}

impl Diff {
    /// Replicas that stop running where they ran: moved plus removed.
    pub fn disrupted(&self) -> usize {
        self.moved + self.removed
    }
}

fn keyed(list: &[Assignment]) -> Vec<(&str, u32, NodeId)> {
    let mut v: Vec<(&str, u32, NodeId)> = list
        .iter()
        .map(|a| (a.role.as_str(), a.replica, a.node))
        .collect();
    v.sort_unstable();
    v.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    v
}

/// Compare two assignment lists (any order; of duplicate keys the lowest node id counts).
pub fn diff(previous: &[Assignment], next: &[Assignment]) -> Diff {
    let (p, n) = (keyed(previous), keyed(next));
    let mut d = Diff::default();
    let (mut i, mut j) = (0, 0);
    while i < p.len() && j < n.len() {
        match (p[i].0, p[i].1).cmp(&(n[j].0, n[j].1)) {
            std::cmp::Ordering::Less => {
                d.removed += 1;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                d.added += 1;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if p[i].2 == n[j].2 {
                    d.kept += 1;
                } else {
                    d.moved += 1;
                }
                i += 1;
                j += 1;
            }
        }
    }
    d.removed += p.len() - i;
    d.added += n.len() - j;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(role: &str, replica: u32, node: u64) -> Assignment {
        Assignment {
            role: role.to_owned(),
            replica,
            node: NodeId(node),
            fallback: false,
            gpus: Vec::new(),
        }
    }

    #[test]
    fn counts_kept_moved_added_removed_by_role_and_replica() {
        let prev = [a("web", 0, 1), a("web", 1, 2), a("db", 0, 3), a("db", 1, 3)];
        let next = [
            a("db", 0, 3),
            a("web", 1, 4),
            a("web", 0, 1),
            a("web", 2, 5),
        ];
        let d = diff(&prev, &next);
        assert_eq!(
            d,
            Diff {
                kept: 2,
                moved: 1,
                added: 1,
                removed: 1
            }
        );
        assert_eq!(d.disrupted(), 2);
        assert_eq!(diff(&[], &next).added, 4);
        assert_eq!(diff(&prev, &[]).removed, 4);
    }
}
