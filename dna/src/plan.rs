//! The planner: a pure function from (spec, nodes, previous assignments) to a placement.
//!
//! STUB (owner: planner helper).

use swarm_core::spec::{ColonySpec, NodeRecord, Unplaced};
use swarm_core::wire::Assignment;

/// A placement: every replica either assigned to a node or unplaced with a reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sorted by (role, replica).
    pub assignments: Vec<Assignment>,
    /// Sorted by (role, replica).
    pub unplaced: Vec<Unplaced>,
}

/// Verifies a placement: known nodes, feasible needs, no over-commit, anti-affinity.
pub fn check(
    _spec: &ColonySpec,
    _nodes: &[NodeRecord],
    _assignments: &[Assignment],
) -> Result<(), String> {
    Ok(())
}

/// Place every replica of `spec` on `nodes` (sorted by id, unique), keeping replicas where
/// `previous` put them whenever that is still feasible.
pub fn plan(_spec: &ColonySpec, _nodes: &[NodeRecord], _previous: &[Assignment]) -> Plan {
    Plan::default()
}
