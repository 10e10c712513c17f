//! The engine's model of the nodes' runtimes (with a colony spec), and the invariants on what
//! the colony does with replicas:
//!
//! - **Model.** A replica a node's committed plan assigns to it (`Event::Assigned`) is
//!   reported `Starting` at once and `Healthy` (or `Running`, for a role without a health
//!   check) `replica_start` later; one that leaves the plan is dropped. The scenario's `fail`
//!   and `unhealthy` make the replica's reports go `Failed` / `Unhealthy` on the node running
//!   it; `crash_running` crashes that node. Reports go to the node through
//!   `Node::report_replicas` (a paused node gets them when it resumes).
//! - **A failed replica moves.** After an injected failure, a plan committed within
//!   [`FAIL_MOVE_BOUND_US`] (`plan_delay_ms` plus a few heartbeats) takes it off that node,
//!   unless something else disturbed the colony meanwhile.
//! - **Exclusions hold.** Every committed plan passes `dna::plan::check_excluding` under its
//!   own committed exclusions: no replica on a node it failed on, none placed during its
//!   backoff, nothing but held roles on a held node (checked in `on_commit`).
//! - **Stateful replicas wait.** A replica of a role with a `reschedule_after_ms` whose node
//!   crashes in a calm colony (network whole, no disturbance for `SETTLE_US`) is not moved by
//!   any committed plan before the crash + its `reschedule_after_ms`. When it moves, and
//!   whether its node came back first, goes into the report (`held_moved_s`, `held_kept`).
//! - **Health converges.** At the end of a settled run the queen's healthy roles equal the
//!   model's (roles with a healthy replica in her plan), and every running node knows them.

use std::collections::BTreeMap;
use swarm_core::NodeId;
use swarm_core::wire::{ReplicaReport, ReplicaState};

use super::{Kind, SETTLE_US, Sim};
use crate::scenario::ReplicaRef;

/// A replica is healthy this long after its assignment when the scenario says nothing.
pub const DEFAULT_REPLICA_START_US: u64 = 1_000_000;
/// A failed replica must be off its node this long after the failure (20 ms `plan_delay_ms`
/// plus six 300 ms heartbeats: the report, or the ask that repairs a lost one, and the commit).
pub const FAIL_MOVE_BOUND_US: u64 = 2_000_000;

/// A failure injected by the scenario, waiting for the plan that takes the replica off its node.
struct FailCheck {
    role: String,
    replica: u32,
    from: NodeId,
    at_us: u64,
    /// Whether the colony was calm and stayed so (checked at the deadline).
    calm: bool,
}

/// A stateful replica whose node crashed.
struct HoldCheck {
    node: usize,
    id: NodeId,
    role: String,
    replica: u32,
    crashed_us: u64,
    wait_us: u64,
}

/// The runtime model and the checks above.
#[derive(Default)]
pub(super) struct Workloads {
    pub(super) start_us: u64,
    /// Per running node: its replicas and their states.
    running: BTreeMap<usize, BTreeMap<(String, u32), ReplicaState>>,
    /// Reports waiting to reach each node.
    outbox: BTreeMap<usize, Vec<ReplicaReport>>,
    fails: Vec<FailCheck>,
    holds: Vec<HoldCheck>,
    pub(super) failures_injected: usize,
    pub(super) failed_moved_s: Vec<f64>,
    pub(super) held_moved_s: Vec<f64>,
    pub(super) held_kept: usize,
    /// The colony's healthy roles agreed with the model at a sample of the final window.
    pub(super) health_converged: bool,
}

impl Workloads {
    pub(super) fn new(start_us: u64) -> Workloads {
        Workloads {
            start_us,
            ..Workloads::default()
        }
    }
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

impl Sim {
    fn has_health_check(&self, role: &str) -> bool {
        self.opts
            .spec
            .as_ref()
            .and_then(|s| s.role(role))
            .is_some_and(|r| r.workload.health.is_some())
    }

    fn queue_report(&mut self, i: usize, role: &str, replica: u32, state: ReplicaState) {
        let detail = match state {
            ReplicaState::Failed => "exited 1; restart policy gave up".to_owned(),
            ReplicaState::Unhealthy => "health check failing".to_owned(),
            _ => String::new(),
        };
        self.work.outbox.entry(i).or_default().push(ReplicaReport {
            role: role.to_owned(),
            replica,
            state,
            restarts: 0,
            detail,
        });
    }

    /// Reports queued for node `i`, to hand to it in its current step (`drain`).
    pub(super) fn take_reports(&mut self, i: usize) -> Vec<ReplicaReport> {
        self.work.outbox.remove(&i).unwrap_or_default()
    }

    /// Hands node `i` its queued reports now, or when it resumes from a pause.
    fn flush_reports(&mut self, i: usize) {
        let Some(incarnation) = self.nodes[i].node.as_ref().map(|n| n.incarnation()) else {
            self.work.outbox.remove(&i);
            return;
        };
        let at = self.nodes[i].pause.until.unwrap_or(self.now);
        self.push(
            at,
            Kind::Reports {
                node: i as u32,
                incarnation,
            },
        );
    }

    /// `Kind::Reports`: the node takes its queued reports (unless it is paused again).
    pub(super) fn on_reports_due(&mut self, i: usize, incarnation: u32) {
        let current = self.nodes[i]
            .node
            .as_ref()
            .is_some_and(|n| n.incarnation() == incarnation);
        if !current || !self.work.outbox.contains_key(&i) {
            return;
        }
        if self.nodes[i].pause.until.is_some() {
            return self.flush_reports(i);
        }
        self.drain(i);
    }

    /// Node `i`'s committed plan now assigns it `assignments`.
    pub(super) fn on_assigned(&mut self, i: usize, incarnation: u32, mine: Vec<(String, u32)>) {
        if self.opts.spec.is_none() {
            return;
        }
        let start = self.work.start_us;
        let mut states = self.work.running.remove(&i).unwrap_or_default();
        states.retain(|k, _| mine.contains(k));
        let mut fresh = Vec::new();
        for key in mine {
            if let std::collections::btree_map::Entry::Vacant(e) = states.entry(key.clone()) {
                e.insert(ReplicaState::Starting);
                fresh.push(key);
            }
        }
        self.work.running.insert(i, states);
        for (role, replica) in fresh {
            self.queue_report(i, &role, replica, ReplicaState::Starting);
            self.push(
                self.now + start,
                Kind::Ready {
                    node: i as u32,
                    incarnation,
                    role,
                    replica,
                },
            );
        }
    }

    /// `Kind::Ready`: a starting replica is up.
    pub(super) fn on_ready(&mut self, i: usize, incarnation: u32, role: String, replica: u32) {
        let current = self.nodes[i]
            .node
            .as_ref()
            .is_some_and(|n| n.incarnation() == incarnation);
        if !current {
            return;
        }
        let up = if self.has_health_check(&role) {
            ReplicaState::Healthy
        } else {
            ReplicaState::Running
        };
        let Some(state) = self
            .work
            .running
            .get_mut(&i)
            .and_then(|m| m.get_mut(&(role.clone(), replica)))
        else {
            return;
        };
        if *state != ReplicaState::Starting {
            return;
        }
        *state = up;
        self.queue_report(i, &role, replica, up);
        self.flush_reports(i);
    }

    /// The running node that runs `r`: the one the newest committed plan names, else any.
    fn runner(&self, r: &ReplicaRef) -> Option<usize> {
        let key = (r.role.clone(), r.replica);
        let runs = |i: &usize| {
            self.nodes[*i].node.is_some()
                && self
                    .work
                    .running
                    .get(i)
                    .is_some_and(|m| m.contains_key(&key))
        };
        let planned = self
            .plans
            .placed
            .get(&key)
            .and_then(|id| self.index_by_id.get(id).copied())
            .filter(runs);
        planned.or_else(|| self.work.running.keys().copied().find(runs))
    }

    /// `fail` / `unhealthy`: the replica's reports go `state` on the node running it.
    pub(super) fn set_replica_state(&mut self, r: ReplicaRef, state: ReplicaState, calm: bool) {
        let Some(i) = self.runner(&r) else {
            return self.note(format!(
                "{state:?} {}/{}: no running node runs it",
                r.role, r.replica
            ));
        };
        if let Some(s) = self
            .work
            .running
            .get_mut(&i)
            .and_then(|m| m.get_mut(&(r.role.clone(), r.replica)))
        {
            *s = state;
        }
        self.note(format!(
            "{}/{} goes {state:?} on node {i}",
            r.role, r.replica
        ));
        self.queue_report(i, &r.role, r.replica, state);
        self.flush_reports(i);
        if state == ReplicaState::Failed {
            self.work.failures_injected += 1;
            let from = self.nodes[i].id;
            self.work.fails.push(FailCheck {
                role: r.role,
                replica: r.replica,
                from,
                at_us: self.now,
                calm,
            });
        }
    }

    /// `crash_running`.
    pub(super) fn crash_running(&mut self, r: ReplicaRef, calm: bool) {
        match self.runner(&r) {
            Some(i) => {
                self.action_calm = calm;
                self.crash(i);
            }
            None => self.note(format!(
                "crash_running {}/{}: no running node runs it",
                r.role, r.replica
            )),
        }
    }

    /// Node `i` crashes: its runtime is gone; in a calm colony, its stateful replicas are
    /// watched.
    pub(super) fn on_crash(&mut self, i: usize, calm: bool) {
        self.work.running.remove(&i);
        self.work.outbox.remove(&i);
        let Some(spec) = self.opts.spec.clone() else {
            return;
        };
        if !calm {
            return;
        }
        let id = self.nodes[i].id;
        for ((role, replica), node) in &self.plans.placed {
            if *node != id {
                continue;
            }
            let wait_ms = spec.role(role).map_or(0, |r| r.reschedule_after_ms);
            if wait_ms > 0 {
                self.work.holds.push(HoldCheck {
                    node: i,
                    id,
                    role: role.clone(),
                    replica: *replica,
                    crashed_us: self.now,
                    wait_us: u64::from(wait_ms) * 1000,
                });
            }
        }
    }

    /// Node `i` restarts: its held replicas kept their place.
    pub(super) fn on_restart(&mut self, i: usize) {
        let before = self.work.holds.len();
        self.work.holds.retain(|h| h.node != i);
        self.work.held_kept += before - self.work.holds.len();
    }

    /// A queen committed a new plan (`plans.placed` is up to date).
    pub(super) fn check_replica_moves(&mut self) {
        let now = self.now;
        let placed = &self.plans.placed;
        let on = |role: &str, replica: u32| placed.get(&(role.to_owned(), replica)).copied();
        let mut moved_s = Vec::new();
        self.work.fails.retain(|f| {
            if on(&f.role, f.replica) == Some(f.from) {
                return true;
            }
            moved_s.push(secs(now - f.at_us));
            false
        });
        self.work.failed_moved_s.extend(moved_s);
        let mut violations = Vec::new();
        let mut held_s = Vec::new();
        self.work.holds.retain(|h| {
            if on(&h.role, h.replica) == Some(h.id) {
                return true;
            }
            let after = now - h.crashed_us;
            if after < h.wait_us {
                violations.push(format!(
                    "stateful replica {}/{} moved off node {} {:.3}s after it crashed, before its reschedule-after ({:.0}s)",
                    h.role,
                    h.replica,
                    h.node,
                    secs(after),
                    secs(h.wait_us)
                ));
            }
            held_s.push(secs(after));
            false
        });
        self.work.held_moved_s.extend(held_s);
        for v in violations {
            self.checker.violate(now, v);
        }
    }

    /// At each sample: a failed replica still on its node past the bound, in a calm colony.
    pub(super) fn check_fail_deadlines(&mut self) {
        let now = self.now;
        let disturbed_since = |at: u64, last: u64| last > at;
        let last = self.last_disturbance;
        let mut late = Vec::new();
        self.work.fails.retain(|f| {
            if now < f.at_us + FAIL_MOVE_BOUND_US {
                return true;
            }
            if f.calm && !disturbed_since(f.at_us, last) {
                late.push(format!(
                    "failed replica {}/{} still on node {} {:.1}s after it failed",
                    f.role,
                    f.replica,
                    f.from,
                    secs(now - f.at_us)
                ));
            }
            false
        });
        for v in late {
            self.checker.violate(now, v);
        }
    }

    /// In the final window: do the colony's healthy roles agree with the model?
    pub(super) fn sample_health(&mut self) {
        if self.opts.spec.is_none() || self.work.health_converged {
            return;
        }
        let Some(q) = self.current_queen() else {
            return;
        };
        let expected = self.expected_healthy();
        let agree = (0..self.nodes.len()).all(|i| {
            self.nodes[i]
                .node
                .as_ref()
                .is_none_or(|n| n.healthy_roles() == expected.as_slice())
        });
        let queen_agrees = self.nodes[q]
            .node
            .as_ref()
            .is_some_and(|n| n.healthy_roles() == expected.as_slice());
        self.work.health_converged = agree && queen_agrees;
    }

    /// Roles with a replica the newest committed plan places on a running node whose model
    /// says it is healthy.
    fn expected_healthy(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for ((role, replica), id) in &self.plans.placed {
            let Some(&i) = self.index_by_id.get(id) else {
                continue;
            };
            let state = self
                .work
                .running
                .get(&i)
                .and_then(|m| m.get(&(role.clone(), *replica)));
            let healthy = match state {
                Some(ReplicaState::Healthy) => true,
                Some(ReplicaState::Running) => !self.has_health_check(role),
                _ => false,
            };
            if healthy && self.nodes[i].node.is_some() && !out.contains(role) {
                out.push(role.clone());
            }
        }
        out.sort();
        out
    }

    /// The end-of-run verdict on health (only for a settled run with a spec).
    pub(super) fn finish_health(&mut self, settled: bool) {
        if !settled || self.opts.spec.is_none() || self.work.health_converged {
            return;
        }
        if self.current_queen().is_none() {
            return; // the convergence check reports that
        }
        let expected = self.expected_healthy();
        let disagree = self
            .nodes
            .iter()
            .filter_map(|sn| sn.node.as_ref())
            .filter(|n| n.healthy_roles() != expected.as_slice())
            .count();
        let now = self.now;
        self.checker.violate(
            now,
            format!(
                "healthy roles did not converge (not once in the last {}s): expected {expected:?}, {disagree} running nodes disagree",
                super::CONVERGE_WINDOW_US / 1_000_000
            ),
        );
    }

    /// A calm colony: network whole and nothing happened for `SETTLE_US`.
    pub(super) fn calm(&self) -> bool {
        self.net.healthy() && self.now >= self.last_disturbance + SETTLE_US
    }
}
