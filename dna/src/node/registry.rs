//! At the queen: what every node can run (capability registration by Describe/Register, and
//! each node's address from her SWIM view), when and what to plan from the colony spec (with the
//! exclusions of `failures.rs`), and at every node the replicas the committed plan assigns to
//! it.

use std::net::SocketAddr;
use swarm_core::spec::NodeRecord;
use swarm_core::wire::{Assignment, ColonyMsg};
use swarm_core::{Capabilities, NodeId, Time};

use crate::plan::Exclusions;

use super::failures::same_exclusions;
use super::reign::Reign;
use super::{Event, Node, Role, Timer, ms};

impl Reign {
    /// Every live member has registered its capabilities with her.
    fn knows_all(&self, live: &super::live::Live) -> bool {
        live.keys().all(|n| self.registry.contains_key(n))
    }
}

impl Node {
    /// A worker's ack carries its capabilities digest; ask for the details when they are new.
    pub(super) fn check_registered(
        &mut self,
        from: NodeId,
        reply_to: SocketAddr,
        term: u64,
        caps: u32,
        now: Time,
    ) {
        if self.role != Role::Queen || term != self.term {
            return;
        }
        let every = ms(self.cfg.heartbeat_ms * 2);
        let Some(reign) = &mut self.reign else { return };
        if reign.registry.get(&from).is_some_and(|(d, _)| *d == caps) {
            return;
        }
        if reign
            .described
            .get(&from)
            .is_some_and(|at| now.since(*at) < every)
        {
            return;
        }
        reign.described.insert(from, now);
        self.send(reply_to, &ColonyMsg::Describe { term });
    }

    pub(super) fn on_register(&mut self, from: NodeId, term: u64, caps: Capabilities, now: Time) {
        if self.role != Role::Queen || term != self.term {
            return;
        }
        if !caps.is_well_formed() || !(self.live.contains_key(&from) || self.in_roster(from)) {
            self.stats.packets_rejected += 1;
            return;
        }
        let Some(reign) = &mut self.reign else { return };
        let digest = caps.digest();
        if reign.registry.get(&from).is_some_and(|(d, _)| *d == digest) {
            return;
        }
        reign.registry.insert(from, (digest, caps));
        reign.described.remove(&from);
        let waiting = now.since(reign.crowned_at) < ms(self.cfg.register_wait_ms);
        let everyone = reign.knows_all(&self.live);
        let planning = reign.pending_spec.is_some() || self.state.spec.is_some();
        if waiting && everyone && planning {
            // The last registration the first plan waited for: plan now, not at the deadline
            // (the timer armed for the deadline then finds nothing left to do).
            let term = self.term;
            self.schedule(now + ms(self.cfg.plan_delay_ms), Timer::Plan { term });
        } else {
            self.want_plan(now, self.cfg.plan_delay_ms);
        }
    }

    /// Notes that the plan's inputs changed and arms the plan timer if it is not armed.
    pub(super) fn want_plan(&mut self, now: Time, delay_ms: u64) {
        if self.role != Role::Queen {
            return;
        }
        let term = self.term;
        let Some(reign) = &mut self.reign else { return };
        if reign.plan_armed || (reign.pending_spec.is_none() && self.state.spec.is_none()) {
            return;
        }
        reign.plan_armed = true;
        self.schedule(now + ms(delay_ms), Timer::Plan { term });
    }

    pub(super) fn on_plan_timer(&mut self, term: u64, now: Time) {
        if self.role != Role::Queen || term != self.term {
            return;
        }
        let Some(reign) = &mut self.reign else { return };
        reign.plan_armed = false;
        let waited = now.since(reign.crowned_at) >= ms(self.cfg.register_wait_ms);
        if !waited && !reign.knows_all(&self.live) {
            // More registrations are on their way: plan at the deadline, or when the last one
            // arrives (`on_register`), whichever comes first.
            let deadline = reign.crowned_at + ms(self.cfg.register_wait_ms);
            reign.plan_armed = true;
            self.schedule(deadline, Timer::Plan { term });
            return;
        }
        if self.state.version != self.commit {
            // One change in flight at a time: look again shortly.
            reign.plan_armed = true;
            self.schedule(now + ms(self.cfg.plan_delay_ms), Timer::Plan { term });
            return;
        }
        let me = self.cfg.node;
        // Forget nodes that are neither alive, voting members, nor in the plan (bounds the
        // registry; a held node that comes back keeps its record).
        let roster = &self.state.roster;
        let planned = &self.state.nodes;
        let keep = |n: &NodeId| {
            *n == me
                || self.live.contains_key(n)
                || roster.binary_search(n).is_ok()
                || planned.binary_search_by_key(n, |r| r.node).is_ok()
        };
        reign.registry.retain(|n, _| keep(n));
        reign.described.retain(|n, _| keep(n));
        let ip_of = |n: &NodeId| {
            let addr = if *n == me {
                Some(self.cfg.addr)
            } else {
                self.live.addr(n)
            };
            addr.map(|a| a.ip()).filter(|ip| !ip.is_unspecified())
        };
        let mut nodes: Vec<NodeRecord> = reign
            .registry
            .iter()
            .filter(|(n, _)| **n == me || self.live.contains_key(n))
            .map(|(n, (_, caps))| NodeRecord {
                node: *n,
                caps: caps.clone(),
                ip: ip_of(n),
            })
            .collect();
        let fresh_spec = reign.pending_spec.take();
        let Some(spec) = fresh_spec.clone().or_else(|| self.state.spec.clone()) else {
            return;
        };
        let (failures, held) = self.exclusions_for(&spec, &mut nodes, now);
        let exclusions = Exclusions {
            failures: &failures,
            held: &held,
        };
        let plan = crate::plan::plan_excluding(&spec, &nodes, &self.state.assignments, exclusions);
        let unchanged = fresh_spec.is_none()
            && nodes == self.state.nodes
            && plan.assignments == self.state.assignments
            && plan.unplaced == self.state.unplaced
            && same_exclusions(&self.state, &failures, &held);
        if unchanged {
            return;
        }
        let mut next = self.state.clone();
        next.version.seq += 1;
        if fresh_spec.is_some() {
            next.spec_version += 1;
            next.spec = Some(spec);
        }
        next.nodes = nodes;
        next.assignments = plan.assignments;
        next.unplaced = plan.unplaced;
        next.failures = failures;
        next.held = held;
        let (assigned, unplaced) = (next.assignments.len(), next.unplaced.len());
        let moves = self.moves(&next);
        self.emit(Event::Planned {
            version: next.version,
            assigned,
            unplaced,
            moves,
        });
        self.propose(next, now);
        self.book_follow_plan(now);
    }

    /// The replicas assigned to this node by the newest committed state; emits
    /// [`Event::Assigned`] when they changed (and drops the reports of replicas that left).
    pub(super) fn refresh_assigned(&mut self) {
        let me = self.cfg.node;
        let mine: Vec<Assignment> = self
            .state
            .assignments
            .iter()
            .filter(|a| a.node == me)
            .cloned()
            .collect();
        if mine != self.assigned {
            self.assigned = mine.clone();
            self.emit(Event::Assigned {
                version: self.commit,
                assignments: mine,
            });
            self.reports_follow_assigned();
        }
    }
}
