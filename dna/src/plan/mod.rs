//! The planner: a pure function from (spec, nodes, previous assignments, exclusions) to a
//! placement, plus the tools to judge one: [`check`] / [`check_excluding`] verify a placement,
//! [`diff`] counts what moved.
//!
//! Deterministic by construction (no hashing, no floats, ties broken by node id), so every node
//! can recompute the queen's plan and verify it. See `place` for the algorithm.
//!
//! - `model`: resolved inputs and the matching rules shared by the planner and the checker.
//! - `place`: keep, place by priority with per-role score heaps, preempt, explain.
//! - [`check`]: the verifier a simulator invariant calls.
//! - [`diff`]: kept / moved / added / removed between two plans.

mod check;
mod diff;
mod model;
mod place;

use swarm_core::spec::{ColonySpec, Failure, HeldNode, NodeRecord, Unplaced};
use swarm_core::wire::{Assignment, ColonyState};

pub use check::{check, check_excluding};
pub use diff::{Diff, diff};
pub use model::MAX_REPLICAS_PER_ROLE;

/// A placement: every replica either assigned to a node or unplaced with a reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sorted by (role, replica).
    pub assignments: Vec<Assignment>,
    /// Sorted by (role, replica).
    pub unplaced: Vec<Unplaced>,
}

/// Place every replica of `spec` on `nodes` (sorted by id, unique), keeping replicas where
/// `previous` put them whenever that is still feasible.
///
/// Replicas: `Replicas(n)` wants indices `0..n`; `Global` wants one replica on every node whose
/// arch, labels and total capacity match `needs` or `fallback` (indices sticky per node).
/// Feasible: arch and labels match, the node's remaining capacity covers the needs, and no
/// anti-affinity conflict (symmetric; naming oneself means one per node). `fallback` needs are
/// tried only when no node is feasible with `needs`.
///
/// Order: previous assignments still feasible are kept first (higher priority first); then
/// roles are placed by priority (ties in declaration order). Spread picks the node with the
/// fewest replicas of the role, then the least utilised after placement, then affinity; Pack
/// picks the most utilised node after placement, then affinity; ties go to the lowest node id.
/// A replica that fits nowhere evicts replicas of strictly lower priority where that costs
/// least; the evicted are re-placed on their role's turn if they can be.
///
/// Never panics; nodes with duplicate ids keep their first record, duplicate role names keep
/// the first role, unknown role names in (anti-)affinity are ignored, counts above
/// [`MAX_REPLICAS_PER_ROLE`] are clamped and reported unplaced.
pub fn plan(spec: &ColonySpec, nodes: &[NodeRecord], previous: &[Assignment]) -> Plan {
    place::run(spec, nodes, previous, Exclusions::default())
}

/// What the queen's handling of failures and lost nodes adds to a plan's inputs. Both lists are
/// committed with the plan (`ColonyState::failures`, `ColonyState::held`), so
/// `plan_excluding(spec, nodes, previous, Exclusions::of(state))` reproduces `state`'s plan.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exclusions<'a> {
    /// Replicas that failed: placed on none of the nodes they failed on, and nowhere while
    /// their backoff runs. Ignored for `global` roles (their replicas cannot move).
    pub failures: &'a [Failure],
    /// Down nodes (they must be in `nodes` too) whose replicas of the listed roles keep their
    /// placement; nothing new goes there.
    pub held: &'a [HeldNode],
}

impl<'a> Exclusions<'a> {
    /// The exclusions a colony state was planned with.
    pub fn of(state: &'a ColonyState) -> Exclusions<'a> {
        Exclusions {
            failures: &state.failures,
            held: &state.held,
        }
    }
}

/// [`plan`] under [`Exclusions`]. A failed replica that fits on no other node, or waits out its
/// backoff, is unplaced with [`swarm_core::spec::UnplacedReason::Failing`], naming the nodes it
/// failed on.
pub fn plan_excluding(
    spec: &ColonySpec,
    nodes: &[NodeRecord],
    previous: &[Assignment],
    exclusions: Exclusions<'_>,
) -> Plan {
    place::run(spec, nodes, previous, exclusions)
}
