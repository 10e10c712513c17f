//! At the queen: moving replicas that fail, and waiting for nodes that hold state. Both become
//! plan inputs committed with the plan (`ColonyState::failures`, `ColonyState::held`), so the
//! plan stays a pure function of committed data and a new queen inherits them.
//!
//! - **Failed replicas.** A replica reported `Failed` (its worker's restart policy gave up) on
//!   the node her newest plan assigns it to gets a record: the nodes it failed on (the plan
//!   places it on none of them) and a backoff. The first failure moves it at once; each further
//!   failure within [`FAILURE_FORGET_MS`] first keeps it unplaced for
//!   [`failure_backoff_ms`] (30 s, 1 min, 2 min, ... capped at 5 min), so it never flaps faster
//!   than that. A record is forgotten [`FAILURE_FORGET_MS`] after the last failure, and its
//!   nodes may be used again. Replicas of `global` roles are bound to their node: they get no
//!   record (their restart policy is all there is).
//! - **Held nodes.** A node her SWIM view declares down keeps its replicas of roles with a
//!   `reschedule_after_ms` (stateful roles by default: 5 min) for that long after she saw it go
//!   down: the node stays in the plan's nodes, marked held, so nothing new goes there; the
//!   other replicas move at once.
//! - **Clocks.** Deadlines are kept on her own clock. A committed [`Failure`] carries its time
//!   left *as of the proposal*; a new queen counts it from her crowning (later than the
//!   proposal, so a backoff only grows). A hold is measured from when her own SWIM view
//!   declared the node down (every node runs SWIM, so usually within a second of her
//!   predecessor's view), or from her crowning if she never saw it go down: a node down for 4
//!   of its 5 minutes under the old queen waits 5 more minutes at most under a new queen who
//!   booted after it went down, and about 1 more minute under one who saw it go.
//! - **Moves.** Every plan reports what it moves and why ([`Move`], in `Event::Planned`).

use std::collections::{BTreeMap, BTreeSet};
use swarm_core::spec::{
    ColonySpec, Failure, HeldNode, MAX_DETAIL_BYTES, MAX_FAILED_NODES, NodeRecord,
};
use swarm_core::wire::{Assignment, ColonyState};
use swarm_core::{NodeId, Time};

use super::health::{is_global, truncate};
use super::{Node, Role, Timer, ms};

/// The backoff after a replica's second failure in a row; it doubles with each further one.
pub const FAILURE_BACKOFF_BASE_MS: u64 = 30_000;
/// The longest backoff between two moves of a failing replica.
pub const FAILURE_BACKOFF_CAP_MS: u64 = 5 * 60_000;
/// A failure record is forgotten this long after the replica's last failure (or after its
/// backoff, if that is longer).
pub const FAILURE_FORGET_MS: u64 = 10 * 60_000;

/// How long a replica that failed `count` times in a row waits before its next move: nothing
/// after the first failure, then 30 s, 1 min, 2 min, 4 min, 5 min, 5 min, ...
pub fn failure_backoff_ms(count: u32) -> u64 {
    if count <= 1 {
        return 0;
    }
    let doublings = (count - 2).min(16);
    (FAILURE_BACKOFF_BASE_MS << doublings).min(FAILURE_BACKOFF_CAP_MS)
}

/// Why a plan moved a replica (or took it off its node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveReason {
    /// Its node is down (for a stateful role: for longer than its `reschedule-after`).
    NodeDown,
    /// It failed on its node (the worker's restart policy gave up); `detail` says where and
    /// what comes next.
    Failed { detail: String },
    /// Anything else: a new spec, a higher priority taking its room, a scale-down.
    Replanned,
}

/// A replica a new plan takes off its node: to another node, or to none (unplaced).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub role: String,
    pub replica: u32,
    pub from: NodeId,
    /// `None`: unplaced now (see the plan's `unplaced` for why).
    pub to: Option<NodeId>,
    pub why: MoveReason,
}

/// A failure record with its deadlines on the queen's clock.
#[derive(Debug)]
struct Local {
    /// `retry_in_ms` and `forget_in_ms` are filled in when a plan is made.
    record: Failure,
    retry_at: Time,
    forget_at: Time,
}

/// The queen's failure records and her next review of the plan's timed inputs.
#[derive(Debug, Default)]
pub(super) struct Failures {
    records: BTreeMap<(String, u32), Local>,
    /// A plan timer is armed for this time (a backoff, a record or a hold running out).
    review_at: Option<Time>,
}

impl Failures {
    /// What a new queen inherits: the committed records, counted from her crowning.
    pub(super) fn inherit(state: &ColonyState, now: Time) -> Failures {
        let records = state
            .failures
            .iter()
            .map(|f| {
                let local = Local {
                    record: f.clone(),
                    retry_at: now + ms(f.retry_in_ms),
                    forget_at: now + ms(f.forget_in_ms),
                };
                ((f.role.clone(), f.replica), local)
            })
            .collect();
        Failures {
            records,
            review_at: None,
        }
    }
}

impl Node {
    /// A `Failed` report for a replica her newest plan assigns to `node`.
    pub(super) fn replica_failed(
        &mut self,
        node: NodeId,
        role: String,
        replica: u32,
        mut detail: String,
        now: Time,
    ) {
        if self
            .state
            .spec
            .as_ref()
            .is_none_or(|spec| is_global(spec, &role))
        {
            return;
        }
        let Some(reign) = &mut self.reign else { return };
        let key = (role.clone(), replica);
        if let Some(old) = reign.failures.records.get(&key) {
            if old.forget_at <= now && old.retry_at <= now {
                reign.failures.records.remove(&key); // due to be forgotten: start afresh
            }
        }
        let local = reign.failures.records.entry(key).or_insert_with(|| Local {
            record: Failure {
                role,
                replica,
                nodes: Vec::new(),
                count: 0,
                detail: String::new(),
                retry_in_ms: 0,
                forget_in_ms: 0,
            },
            retry_at: now,
            forget_at: now,
        });
        if local.record.nodes.contains(&node) {
            return; // this failure is known: the plan is taking it off that node
        }
        local.record.nodes.push(node);
        if local.record.nodes.len() > MAX_FAILED_NODES {
            local.record.nodes.remove(0);
        }
        local.record.count = local.record.count.saturating_add(1);
        truncate(&mut detail, MAX_DETAIL_BYTES);
        local.record.detail = detail;
        let backoff = failure_backoff_ms(local.record.count);
        local.retry_at = now + ms(backoff);
        local.forget_at = now + ms(FAILURE_FORGET_MS.max(backoff));
        self.want_plan(now, self.cfg.plan_delay_ms);
    }

    /// The timed plan inputs as of `now`: the failure records (forgetting expired ones) and the
    /// held nodes, which join `nodes` (sorted by id on return). Arms a plan timer for the next
    /// deadline among them.
    pub(super) fn exclusions_for(
        &mut self,
        spec: &ColonySpec,
        nodes: &mut Vec<NodeRecord>,
        now: Time,
    ) -> (Vec<Failure>, Vec<HeldNode>) {
        let me = self.cfg.node;
        let term = self.term;
        let Some(reign) = &mut self.reign else {
            return (Vec::new(), Vec::new());
        };
        let mut next: Option<Time> = None;
        let mut soonest = |at: Time| {
            if at > now && next.is_none_or(|n| at < n) {
                next = Some(at);
            }
        };
        // Failures: forget the old, and those whose replica left the spec.
        reign.failures.records.retain(|(role, replica), f| {
            let exists = spec.role(role).is_some_and(|r| match r.count {
                swarm_core::spec::Count::Replicas(n) => *replica < n,
                swarm_core::spec::Count::Global => false,
            });
            exists && !(f.forget_at <= now && f.retry_at <= now)
        });
        let failures: Vec<Failure> = reign
            .failures
            .records
            .values()
            .map(|f| {
                soonest(f.retry_at);
                soonest(f.forget_at);
                Failure {
                    retry_in_ms: millis(f.retry_at, now),
                    forget_in_ms: millis(f.forget_at, now),
                    ..f.record.clone()
                }
            })
            .collect();
        // Held nodes: down in her view, with replicas that still wait for them.
        let mut held = Vec::new();
        let listed: BTreeSet<NodeId> = nodes.iter().map(|n| n.node).collect();
        for rec in &self.state.nodes {
            if rec.node == me || self.live.contains_key(&rec.node) || listed.contains(&rec.node) {
                continue;
            }
            let since = self
                .down_since
                .get(&rec.node)
                .copied()
                .unwrap_or(reign.crowned_at)
                .min(now);
            let mut roles = BTreeSet::new();
            for a in self.state.assignments.iter().filter(|a| a.node == rec.node) {
                let wait = spec.role(&a.role).map_or(0, |r| r.reschedule_after_ms);
                let until = since + ms(u64::from(wait));
                if until > now {
                    roles.insert(a.role.clone());
                    soonest(until);
                }
            }
            if !roles.is_empty() {
                nodes.push(rec.clone());
                held.push(HeldNode {
                    node: rec.node,
                    roles: roles.into_iter().collect(),
                });
            }
        }
        nodes.sort_by_key(|n| n.node);
        // Review when the next of these runs out (earlier timers stay armed).
        if let Some(at) = next {
            let due = reign.failures.review_at.is_none_or(|r| r <= now || at < r);
            if due {
                reign.failures.review_at = Some(at);
                self.schedule(at, Timer::Plan { term });
            }
        }
        (failures, held)
    }

    /// What the plan `next` takes off its node, compared with the current plan, and why.
    pub(super) fn moves(&self, next: &ColonyState) -> Vec<Move> {
        debug_assert_eq!(self.role, Role::Queen);
        let mut now_on: BTreeMap<(&str, u32), NodeId> = BTreeMap::new();
        for a in &next.assignments {
            now_on.insert((a.role.as_str(), a.replica), a.node);
        }
        let up = |n: NodeId| n == self.cfg.node || self.live.contains_key(&n);
        let mut out = Vec::new();
        for Assignment {
            role,
            replica,
            node: from,
            ..
        } in &self.state.assignments
        {
            let to = now_on.get(&(role.as_str(), *replica)).copied();
            if to == Some(*from) {
                continue;
            }
            let failure = next
                .failures
                .iter()
                .find(|f| f.role == *role && f.replica == *replica)
                .filter(|f| f.nodes.contains(from));
            let why = if let Some(f) = failure {
                let mut detail = format!("failed on node {from}");
                if !f.detail.is_empty() {
                    detail.push_str(&format!(": {}", f.detail));
                }
                if f.waiting() {
                    detail.push_str(&format!(
                        " ({} failures in a row: waits {}s before its next move)",
                        f.count,
                        f.retry_in_ms.div_ceil(1000)
                    ));
                }
                MoveReason::Failed { detail }
            } else if !up(*from) {
                MoveReason::NodeDown
            } else {
                MoveReason::Replanned
            };
            out.push(Move {
                role: role.clone(),
                replica: *replica,
                from: *from,
                to,
                why,
            });
        }
        out
    }
}

fn millis(at: Time, now: Time) -> u64 {
    u64::try_from(at.since(now).as_millis()).unwrap_or(u64::MAX)
}

/// Whether `failures` and `held` equal `current`'s in everything the plan depends on (the time
/// left in each failure record aside, except whether its backoff runs).
pub(super) fn same_exclusions(
    current: &ColonyState,
    failures: &[Failure],
    held: &[HeldNode],
) -> bool {
    current.held == held
        && current.failures.len() == failures.len()
        && current
            .failures
            .iter()
            .zip(failures)
            .all(|(a, b)| a.same_plan(b))
}
