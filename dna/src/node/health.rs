//! Replica states and colony-wide health.
//!
//! - **At every node**: the replica reports its driver hands over (`report_replicas`), kept for
//!   the replicas the committed plan assigns to it, with their digest (carried in every
//!   heartbeat ack). The node sends its whole table to the queen (`ReplicaStatus`) when it
//!   changes and when she asks (`AskReplicas`, on a digest mismatch: how a new queen learns
//!   every table within a heartbeat or two of her crowning). It keeps the last healthy-role list
//!   the queen sent (`RoleHealth`), queen or no queen, and reports changes (`Event::RoleHealth`).
//! - **At the queen**: the colony-wide table ([`Book`]): per node, the reports for the replicas
//!   her newest plan assigns to it (bounded by the assignments; a report for anything else is
//!   stale and dropped). From it she derives the roles with at least one healthy replica
//!   ([`healthy_roles`]) and sends them to everyone when they change, and to a worker whose
//!   ack shows another digest. A new queen publishes nothing until every live member has sent
//!   its table, or `register_wait_ms` has passed: the workers keep the last list until then.
//!   A `Failed` report goes to `failures.rs`, which moves the replica.

use std::collections::{BTreeMap, BTreeSet};
use swarm_core::spec::{ColonySpec, Count, MAX_DETAIL_BYTES};
use swarm_core::wire::{
    ColonyMsg, ColonyState, MAX_HEALTHY_ROLES, MAX_REPORTS, ReplicaReport, ReplicaState, Version,
    reports_digest, roles_digest,
};
use swarm_core::{NodeId, Time};

use super::{Event, Node, Role, ms};

/// Role names longer than this are refused in a `RoleHealth` (role names have at most 63).
const MAX_ROLE_NAME_BYTES: usize = 63;

/// One replica of the plan and what its node last reported about it
/// ([`Node::replica_states`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRow {
    pub role: String,
    pub replica: u32,
    pub node: NodeId,
    /// `None`: its node has not reported it (yet).
    pub state: Option<ReplicaState>,
    pub restarts: u32,
    pub detail: String,
}

/// A node's own reports, for the replicas assigned to it.
#[derive(Debug, Default)]
pub(super) struct Reports {
    /// Sorted by (role, replica), one per replica.
    table: Vec<ReplicaReport>,
    digest: u32,
}

impl Reports {
    pub(super) fn digest(&self) -> u32 {
        self.digest
    }

    fn rehash(&mut self) {
        self.digest = reports_digest(&self.table);
    }
}

/// What the queen holds of one node's reports.
#[derive(Debug, Default)]
struct Table {
    /// Digest of the table as the node sent it (matched against its acks).
    digest: u32,
    /// The committed version the node stood at when it sent it: an older report is stale.
    version: Version,
    /// The reports for replicas her newest plan assigns to that node, by (role, replica).
    reports: BTreeMap<(String, u32), ReplicaReport>,
}

/// The queen's colony-wide view of replica states and what she published from it.
#[derive(Debug, Default)]
pub(super) struct Book {
    tables: BTreeMap<NodeId, Table>,
    /// When an `AskReplicas` last went to each node (one per two heartbeats at most).
    asked: BTreeMap<NodeId, Time>,
    /// When a `RoleHealth` last went to each node on a digest mismatch.
    told: BTreeMap<NodeId, Time>,
    /// The healthy roles as last published in this reign (`None`: not yet).
    published: Option<(Vec<String>, u32)>,
    /// Something changed since the last publication.
    dirty: bool,
}

/// The roles with at least one replica of the plan reported healthy by the node it is assigned
/// to: `Healthy`, or `Running` for a role without a health check. Sorted.
pub fn healthy_roles(state: &ColonyState, rows: &[ReplicaRow]) -> Vec<String> {
    let Some(spec) = &state.spec else {
        return Vec::new();
    };
    let mut out = BTreeSet::new();
    for row in rows {
        if row_healthy(spec, row) {
            out.insert(row.role.clone());
        }
    }
    out.into_iter().collect()
}

fn row_healthy(spec: &ColonySpec, row: &ReplicaRow) -> bool {
    match row.state {
        Some(ReplicaState::Healthy) => true,
        Some(ReplicaState::Running) => spec
            .role(&row.role)
            .is_some_and(|r| r.workload.health.is_none()),
        _ => false,
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(super) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

impl Node {
    // ---- public API ------------------------------------------------------------------------

    /// The driver's replica reports (from its reconciler), for replicas assigned to this node:
    /// each replaces the previous report of the same (role, replica); reports for replicas
    /// not assigned here are ignored, and a replica that leaves the plan loses its report.
    /// When the table changed, the queen hears of it at once.
    pub fn report_replicas(&mut self, reports: Vec<ReplicaReport>, now: Time) {
        let now = self.clock(now);
        let mut changed = false;
        for mut r in reports {
            let assigned = self
                .assigned
                .iter()
                .any(|a| a.role == r.role && a.replica == r.replica);
            if !assigned {
                continue;
            }
            truncate(&mut r.detail, MAX_DETAIL_BYTES);
            let table = &mut self.reports.table;
            match table.binary_search_by(|e| (&e.role, e.replica).cmp(&(&r.role, r.replica))) {
                Ok(i) if table[i] == r => {}
                Ok(i) => {
                    table[i] = r;
                    changed = true;
                }
                // A message carries at most `MAX_REPORTS`: beyond that the node goes unheard.
                Err(_) if table.len() >= MAX_REPORTS => {}
                Err(i) => {
                    table.insert(i, r);
                    changed = true;
                }
            }
        }
        if changed {
            self.reports.rehash();
            self.send_reports(now);
        }
    }

    /// Replica states: at the queen, every replica of her newest plan colony-wide (with what
    /// its node last reported); at any other node, the replicas assigned to it. Sorted by
    /// (role, replica).
    pub fn replica_states(&self) -> Vec<ReplicaRow> {
        let book = self.reign.as_ref().map(|r| &r.book);
        match book {
            Some(book) if self.role == Role::Queen => self
                .state
                .assignments
                .iter()
                .map(|a| {
                    let report = book
                        .tables
                        .get(&a.node)
                        .and_then(|t| t.reports.get(&(a.role.clone(), a.replica)));
                    row(&a.role, a.replica, a.node, report)
                })
                .collect(),
            _ => self
                .assigned
                .iter()
                .map(|a| {
                    let report = self
                        .reports
                        .table
                        .iter()
                        .find(|r| r.role == a.role && r.replica == a.replica);
                    row(&a.role, a.replica, a.node, report)
                })
                .collect(),
        }
    }

    /// The roles with at least one healthy replica somewhere in the colony, as the queen last
    /// said (kept while there is no queen). Sorted.
    pub fn healthy_roles(&self) -> &[String] {
        &self.healthy_roles
    }

    // ---- worker side -----------------------------------------------------------------------

    /// Drops the reports of replicas no longer assigned here (after a new commit).
    pub(super) fn reports_follow_assigned(&mut self) {
        let now = self.last_now;
        let before = self.reports.table.len();
        let assigned = &self.assigned;
        self.reports.table.retain(|r| {
            assigned
                .iter()
                .any(|a| a.role == r.role && a.replica == r.replica)
        });
        if self.reports.table.len() != before {
            self.reports.rehash();
            self.send_reports(now);
        }
    }

    /// Our whole table to the queen we obey (or into our own book, as queen).
    pub(super) fn send_reports(&mut self, now: Time) {
        let version = self.commit;
        if self.role == Role::Queen {
            let me = self.cfg.node;
            let table = self.reports.table.clone();
            self.take_reports(me, version, table, now);
            return;
        }
        let Some(lease) = self.lease.filter(|l| l.until > now && l.term == self.term) else {
            return; // no queen: the next one asks (our ack digest differs from her table)
        };
        let msg = ColonyMsg::ReplicaStatus {
            term: lease.term,
            version,
            replicas: self.reports.table.clone(),
        };
        self.send_to_node(lease.queen, &msg);
    }

    /// `AskReplicas` from the queen we obey.
    pub(super) fn on_ask_replicas(&mut self, from: NodeId, term: u64, now: Time) {
        if self.role == Role::Worker && term == self.term && self.obeys(from, term) {
            self.send_reports(now);
        }
    }

    /// `RoleHealth` from the queen we obey: the new list of healthy roles.
    pub(super) fn on_role_health(&mut self, from: NodeId, term: u64, roles: Vec<String>) {
        if self.role != Role::Worker || term != self.term || !self.obeys(from, term) {
            return;
        }
        let well_formed = roles.len() <= MAX_HEALTHY_ROLES
            && roles.windows(2).all(|w| w[0] < w[1])
            && roles.iter().all(|r| r.len() <= MAX_ROLE_NAME_BYTES);
        if !well_formed {
            self.stats.packets_rejected += 1;
            return;
        }
        self.set_healthy_roles(roles);
    }

    fn set_healthy_roles(&mut self, roles: Vec<String>) {
        if roles != self.healthy_roles {
            self.healthy_digest = roles_digest(&roles);
            self.healthy_roles = roles.clone();
            self.emit(Event::RoleHealth { roles });
        }
    }

    // ---- queen side ------------------------------------------------------------------------

    /// A node's `ReplicaStatus`.
    pub(super) fn on_replica_status(
        &mut self,
        from: NodeId,
        term: u64,
        version: Version,
        replicas: Vec<ReplicaReport>,
        now: Time,
    ) {
        if self.role != Role::Queen || term != self.term {
            return;
        }
        let known = self.live.contains_key(&from) || self.in_roster(from);
        let sorted = replicas
            .windows(2)
            .all(|w| (&w[0].role, w[0].replica) < (&w[1].role, w[1].replica));
        let bounded = replicas.len() <= MAX_REPORTS
            && replicas.iter().all(|r| r.detail.len() <= MAX_DETAIL_BYTES);
        if !known || !sorted || !bounded {
            self.stats.packets_rejected += 1;
            return;
        }
        self.take_reports(from, version, replicas, now);
    }

    /// Files `node`'s table: what her newest plan assigns to it. Failed replicas move.
    fn take_reports(
        &mut self,
        node: NodeId,
        version: Version,
        replicas: Vec<ReplicaReport>,
        now: Time,
    ) {
        let digest = reports_digest(&replicas);
        let mut failed = Vec::new();
        let mut reports = BTreeMap::new();
        let plan = &self.state.assignments; // sorted by (role, replica)
        for r in replicas {
            let assigned = plan
                .binary_search_by(|a| {
                    (a.role.as_str(), a.replica).cmp(&(r.role.as_str(), r.replica))
                })
                .is_ok_and(|i| plan[i].node == node);
            if !assigned {
                continue; // stale: the plan moved it since
            }
            if r.state == ReplicaState::Failed {
                failed.push((r.role.clone(), r.replica, r.detail.clone()));
            }
            reports.insert((r.role.clone(), r.replica), r);
        }
        let Some(reign) = &mut self.reign else { return };
        let table = reign.book.tables.entry(node).or_default();
        table.digest = digest;
        table.version = table.version.max(version);
        if table.reports != reports {
            table.reports = reports;
            reign.book.dirty = true;
        }
        for (role, replica, detail) in failed {
            self.replica_failed(node, role, replica, detail, now);
        }
        self.publish_health(now);
    }

    /// The ack's digests: ask for a table we lack, send the healthy roles it lacks.
    pub(super) fn check_reports(
        &mut self,
        from: NodeId,
        term: u64,
        replicas: u32,
        health: u32,
        now: Time,
    ) {
        if self.role != Role::Queen || term != self.term {
            return;
        }
        let every = ms(self.cfg.heartbeat_ms * 2);
        let Some(reign) = &mut self.reign else { return };
        let book = &mut reign.book;
        let held = book.tables.get(&from).map_or(0, |t| t.digest);
        if held != replicas {
            if replicas == 0 {
                // An empty table needs no asking.
                let table = book.tables.entry(from).or_default();
                table.digest = 0;
                if !table.reports.is_empty() {
                    table.reports.clear();
                    book.dirty = true;
                }
            } else if book
                .asked
                .get(&from)
                .is_none_or(|at| now.since(*at) >= every)
            {
                book.asked.insert(from, now);
                self.send_to_node(from, &ColonyMsg::AskReplicas { term });
            }
        } else {
            book.tables.entry(from).or_default(); // digest 0 and no table: known empty
        }
        let Some(reign) = &mut self.reign else { return };
        let book = &mut reign.book;
        if let Some((roles, digest)) = &book.published {
            if *digest != health
                && book
                    .told
                    .get(&from)
                    .is_none_or(|at| now.since(*at) >= every)
            {
                book.told.insert(from, now);
                let msg = ColonyMsg::RoleHealth {
                    term,
                    roles: roles.clone(),
                };
                self.send_to_node(from, &msg);
            }
        }
    }

    /// After a new plan: drop reports of replicas that left their node, forget nodes that are
    /// gone, and recompute the healthy roles.
    pub(super) fn book_follow_plan(&mut self, now: Time) {
        let me = self.cfg.node;
        let Some(reign) = &mut self.reign else { return };
        let assigned: BTreeSet<(NodeId, &str, u32)> = self
            .state
            .assignments
            .iter()
            .map(|a| (a.node, a.role.as_str(), a.replica))
            .collect();
        let keep_node = |n: &NodeId| {
            *n == me || self.live.contains_key(n) || self.state.nodes.iter().any(|r| r.node == *n)
        };
        let book = &mut reign.book;
        book.tables.retain(|n, _| keep_node(n));
        book.asked.retain(|n, _| keep_node(n));
        book.told.retain(|n, _| keep_node(n));
        for (node, table) in &mut book.tables {
            let before = table.reports.len();
            table
                .reports
                .retain(|(role, replica), _| assigned.contains(&(*node, role.as_str(), *replica)));
            book.dirty |= table.reports.len() != before;
        }
        book.dirty = true;
        self.publish_health(now);
    }

    /// Publishes the healthy roles if they changed, once the book is complete enough: every
    /// live member has sent its table, or `register_wait_ms` has passed since her crowning.
    pub(super) fn publish_health(&mut self, now: Time) {
        let wait = ms(self.cfg.register_wait_ms);
        let me = self.cfg.node;
        let Some(reign) = &self.reign else { return };
        let book = &reign.book;
        let ready = book.published.is_some()
            || now.since(reign.crowned_at) >= wait
            || self
                .live
                .keys()
                .chain([&me])
                .all(|n| book.tables.contains_key(n));
        if !ready || !(book.dirty || book.published.is_none()) {
            return;
        }
        let rows = self.replica_states();
        let roles = healthy_roles(&self.state, &rows);
        let Some(reign) = &mut self.reign else { return };
        let book = &mut reign.book;
        book.dirty = false;
        if book.published.as_ref().is_some_and(|(r, _)| *r == roles) {
            return;
        }
        let digest = roles_digest(&roles);
        book.published = Some((roles.clone(), digest));
        if roles.len() <= MAX_HEALTHY_ROLES {
            let msg = ColonyMsg::RoleHealth {
                term: self.term,
                roles: roles.clone(),
            };
            self.broadcast(&msg);
        }
        self.set_healthy_roles(roles);
    }

    /// The queen's own table goes into her book at her crowning.
    pub(super) fn book_at_crowning(&mut self, now: Time) {
        let me = self.cfg.node;
        let table = self.reports.table.clone();
        let version = self.commit;
        self.take_reports(me, version, table, now);
    }
}

fn row(role: &str, replica: u32, node: NodeId, report: Option<&ReplicaReport>) -> ReplicaRow {
    ReplicaRow {
        role: role.to_owned(),
        replica,
        node,
        state: report.map(|r| r.state),
        restarts: report.map_or(0, |r| r.restarts),
        detail: report.map(|r| r.detail.clone()).unwrap_or_default(),
    }
}

/// Whether role `name` of `spec` runs one replica per node.
pub(super) fn is_global(spec: &ColonySpec, name: &str) -> bool {
    spec.role(name)
        .is_some_and(|r| matches!(r.count, Count::Global))
}
