//! The invariant checker. It watches every event every node emits, every term a node holds after
//! each step and every vote it persists, and records a violation the moment a safety property
//! breaks:
//!
//! - at most one queen per term, and at most one vote per term per node, across restarts (from
//!   the persisted `voted_for`);
//! - no two queens of different terms hold self-leases at the same real instant;
//! - no worker holds two live leases from different queens at once, nor obeys a lower term after
//!   a higher one;
//! - a node's term never decreases (across restarts), and no node obeys a heartbeat or accepts a
//!   colony state of a term lower than one it has already held (stale queens are fenced);
//! - committed colony-state versions never go backwards on any node, and one version never has
//!   two contents (whether accepted or committed, anywhere);
//! - a queen holds every version committed in an earlier term (whenever, in virtual time, the
//!   commit and the crowning are observed), and no queen commits after a queen of a higher term
//!   has committed (a deposed queen decides nothing).
//!
//! **Leases are judged in real time.** A `Reigns { until }` (or `Obeyed { until }`) is a promise
//! in the node's own clock. The checker keeps it in local time and asks, whenever it needs to
//! know whether a lease still runs, what that node's clock reads *now* (the `clocks` argument).
//! So a lease's real end is wherever the clock really reaches `until`, whatever drift, rate
//! changes or stalls happen after the event; nothing is converted at emission time.
//!
//! Convergence after healing ("exactly one queen, obeyed by all") is checked by the engine at the
//! end of a run, because it needs the whole colony's state.

use dna::Event;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use swarm_core::wire::Version;
use swarm_core::{NodeId, Time};

/// A violation is recorded at most this many times (a broken run would otherwise flood).
pub const MAX_VIOLATIONS: usize = 100;

#[derive(Default)]
struct WorkerView {
    /// (term, queen, lease end in the worker's own clock) of the lease last obeyed.
    lease: Option<(u64, NodeId, Time)>,
    highest_obeyed: u64,
    committed: Version,
}

/// A queen's self-lease: who holds it and until when in her own clock.
#[derive(Clone, Copy)]
struct Lease {
    index: usize,
    node: NodeId,
    until: Time,
}

#[derive(Default)]
pub struct Checker {
    pub violations: Vec<String>,
    queen_of_term: BTreeMap<u64, NodeId>,
    /// Queens' self-leases by term, while they may still run.
    reigns: BTreeMap<u64, Lease>,
    workers: HashMap<usize, WorkerView>,
    /// Every version accepted or committed anywhere, with its content's digest.
    digests: HashMap<Version, u64>,
    /// (term, version inherited) of every queen crowned so far.
    crowned: Vec<(u64, Version)>,
    /// Every version committed so far (to check queens crowned earlier in virtual time but of
    /// a later term: an ack may reach the old queen after the new one is crowned).
    committed: BTreeSet<Version>,
    /// The term each node held after its last step (it never decreases, even across restarts).
    terms: HashMap<usize, u64>,
    /// The last vote each node persisted: (term, candidate).
    votes: HashMap<usize, (u64, NodeId)>,
    /// Queens still reigning in their own view (crowned, neither abdicated nor restarted):
    /// term → node index. Their `Committed` are their own commit decisions.
    reigning: BTreeMap<u64, usize>,
    /// The highest term whose queen has committed a version.
    highest_queen_commit: Option<u64>,
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

impl Checker {
    pub fn violate(&mut self, at_us: u64, what: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations
                .push(format!("t={:.3}s: {what}", secs(at_us)));
        }
    }

    /// An event `node` (simulation index `index`) emitted at global time `now_us`. `clocks(i)`
    /// is what node `i`'s clock reads at `now_us`.
    pub fn on_event(
        &mut self,
        now_us: u64,
        index: usize,
        node: NodeId,
        event: &Event,
        clocks: &dyn Fn(usize) -> Time,
    ) {
        let held_term = self.terms.get(&index).copied().unwrap_or(0);
        match *event {
            Event::Crowned {
                term, inherited, ..
            } => {
                if let Some(other) = self.queen_of_term.insert(term, node) {
                    if other != node {
                        self.violate(
                            now_us,
                            format!("two queens in term {term}: {other:?} and {node:?}"),
                        );
                    }
                }
                // Every version committed in an earlier term must be in what she inherited.
                let lost: Vec<Version> = self
                    .committed
                    .iter()
                    .filter(|v| v.term < term && **v > inherited)
                    .copied()
                    .collect();
                for v in lost {
                    self.violate(now_us, format!("queen {node:?} of term {term} inherited {inherited}, missing committed {v}"));
                }
                self.crowned.push((term, inherited));
                self.reigning.insert(term, index);
            }
            Event::Reigns { term, until } => {
                if clocks(index) >= until {
                    // A lease that has already run out promises nothing.
                    return;
                }
                // A lease runs while its holder's clock, read now, is below its end.
                self.reigns.retain(|_, l| clocks(l.index) < l.until);
                let overlapping: Vec<(u64, NodeId)> = self
                    .reigns
                    .iter()
                    .filter(|(t, _)| **t != term)
                    .map(|(t, l)| (*t, l.node))
                    .collect();
                for (t, n) in overlapping {
                    self.violate(now_us, format!("queen {node:?} (term {term}) reigns while queen {n:?} (term {t}) still holds her lease"));
                }
                let lease = self
                    .reigns
                    .entry(term)
                    .or_insert(Lease { index, node, until });
                lease.until = lease.until.max(until);
            }
            Event::Abdicated { term, .. } => {
                if let Some(l) = self.reigns.get_mut(&term) {
                    if l.node == node {
                        l.until = l.until.min(clocks(index));
                    }
                }
                if self.reigning.get(&term) == Some(&index) {
                    self.reigning.remove(&term);
                }
            }
            Event::Obeyed { term, queen, until } => {
                let now_local = clocks(index);
                let view = self.workers.entry(index).or_default();
                let mut problems = Vec::new();
                if term < view.highest_obeyed {
                    problems.push(format!(
                        "worker {node:?} obeys term {term} after term {}",
                        view.highest_obeyed
                    ));
                }
                if term < held_term {
                    problems.push(format!(
                        "worker {node:?} obeys a heartbeat of term {term} after holding term {held_term}"
                    ));
                }
                if let Some((t, q, end)) = view.lease {
                    if (t, q) != (term, queen) && now_local < end {
                        problems.push(format!("worker {node:?} obeys {queen:?} (term {term}) while {q:?}'s lease (term {t}) runs"));
                    }
                }
                view.highest_obeyed = view.highest_obeyed.max(term);
                view.lease = Some((term, queen, until));
                for p in problems {
                    self.violate(now_us, p);
                }
            }
            Event::QueenLost { .. } => {
                let now_local = clocks(index);
                if let Some(view) = self.workers.get_mut(&index) {
                    if let Some(lease) = &mut view.lease {
                        lease.2 = lease.2.min(now_local);
                    }
                }
            }
            Event::Accepted { version, digest } => {
                if version.term < held_term {
                    self.violate(
                        now_us,
                        format!(
                            "node {node:?} accepts state {version} after holding term {held_term}"
                        ),
                    );
                }
                self.one_content(now_us, version, digest);
            }
            Event::Committed { version, digest } => {
                let view = self.workers.entry(index).or_default();
                let before = view.committed;
                view.committed = version;
                if version <= before {
                    self.violate(
                        now_us,
                        format!("node {node:?} committed {version} after {before}"),
                    );
                }
                self.one_content(now_us, version, digest);
                if self.committed.insert(version) {
                    let lost: Vec<(u64, Version)> = self
                        .crowned
                        .iter()
                        .filter(|(t, inh)| *t > version.term && *inh < version)
                        .copied()
                        .collect();
                    for (t, inh) in lost {
                        self.violate(now_us, format!("version {version} committed, but the queen of term {t} was crowned holding only {inh}"));
                    }
                }
                if self.reigning.get(&version.term) == Some(&index) {
                    // Her own commit decision.
                    if let Some(higher) = self.highest_queen_commit.filter(|h| *h > version.term) {
                        self.violate(now_us, format!("queen {node:?} of term {} commits {version} after the queen of term {higher} committed", version.term));
                    }
                    let highest = self.highest_queen_commit.get_or_insert(version.term);
                    *highest = (*highest).max(version.term);
                }
            }
            Event::MemberUp(_)
            | Event::MemberDown(_)
            | Event::Stood { .. }
            | Event::Planned { .. }
            | Event::Assigned { .. }
            | Event::SplitBrain { .. }
            | Event::RoleHealth { .. } => {}
        }
    }

    /// One version, one content: every version has one writer (the queen of its term).
    fn one_content(&mut self, now_us: u64, version: Version, digest: u64) {
        match self.digests.insert(version, digest) {
            Some(d) if d != digest => self.violate(
                now_us,
                format!("version {version} has two different contents"),
            ),
            _ => {}
        }
    }

    /// The term node `index` holds after a step (or at boot). Terms never go backwards, even
    /// across restarts: the term is persisted before anything that reveals it is sent.
    pub fn on_term(&mut self, now_us: u64, index: usize, node: NodeId, term: u64) {
        let held = self.terms.entry(index).or_insert(term);
        if term < *held {
            let before = *held;
            *held = term;
            self.violate(
                now_us,
                format!("node {node:?} holds term {term} after term {before}"),
            );
        } else {
            *held = term;
        }
    }

    /// Node `index` persisted `voted_for` in `term`: one vote per term, even across restarts.
    pub fn on_persist(
        &mut self,
        now_us: u64,
        index: usize,
        node: NodeId,
        term: u64,
        voted_for: Option<NodeId>,
    ) {
        let Some(candidate) = voted_for else { return };
        match self.votes.insert(index, (term, candidate)) {
            Some((t, earlier)) if t == term && earlier != candidate => self.violate(
                now_us,
                format!("node {node:?} voted twice in term {term}: for {earlier:?} and for {candidate:?}"),
            ),
            Some((t, earlier)) if t > term => {
                // Terms never go backwards (`on_term` reports it); keep the newer vote.
                self.votes.insert(index, (t, earlier));
            }
            _ => {}
        }
    }

    /// A node restarted: its lease view and any reign are gone but what it committed is not.
    pub fn on_restart(&mut self, index: usize) {
        if let Some(view) = self.workers.get_mut(&index) {
            view.lease = None;
        }
        self.reigning.retain(|_, i| *i != index);
    }
}
