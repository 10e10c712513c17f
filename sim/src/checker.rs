//! The invariant checker. It watches every event every node emits (in global virtual time) and
//! records a violation the moment a safety property breaks:
//!
//! - at most one queen per term;
//! - no two queens of different terms hold valid self-leases at the same instant;
//! - no worker holds two live leases from different queens at once, nor obeys a lower term
//!   after a higher one;
//! - committed colony-state versions never go backwards on any node, and one version never has
//!   two contents;
//! - a queen holds every version committed in an earlier term (whenever, in virtual time, the
//!   commit and the crowning are observed).
//!
//! Convergence after healing ("exactly one queen, obeyed by all") is checked by the engine at the
//! end of a run, because it needs the whole colony's state.

use dna::Event;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use swarm_core::NodeId;
use swarm_core::wire::Version;

/// A violation is recorded at most this many times (a broken run would otherwise flood).
pub const MAX_VIOLATIONS: usize = 100;

#[derive(Default)]
struct WorkerView {
    /// (term, queen, lease end in global µs) of the lease last obeyed.
    lease: Option<(u64, NodeId, u64)>,
    highest_obeyed: u64,
    committed: Version,
}

#[derive(Default)]
pub struct Checker {
    pub violations: Vec<String>,
    queen_of_term: BTreeMap<u64, NodeId>,
    /// Queens' self-lease ends (global µs), by term, while they may still be valid.
    reigns: BTreeMap<u64, (NodeId, u64)>,
    workers: HashMap<usize, WorkerView>,
    digests: HashMap<Version, u64>,
    /// (term, version inherited) of every queen crowned so far.
    crowned: Vec<(u64, Version)>,
    /// Every version committed so far (to check queens crowned earlier in virtual time but of
    /// a later term: an ack may reach the old queen after the new one is crowned).
    committed: BTreeSet<Version>,
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

    /// `to_global` converts the node's clock to global µs.
    pub fn on_event(
        &mut self,
        now_us: u64,
        index: usize,
        node: NodeId,
        event: &Event,
        to_global: impl Fn(swarm_core::Time) -> u64,
    ) {
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
            }
            Event::Reigns { term, until } => {
                let until = to_global(until);
                self.reigns.retain(|_, (_, end)| *end > now_us);
                let overlapping: Vec<(u64, NodeId)> = self
                    .reigns
                    .iter()
                    .filter(|(t, _)| **t != term)
                    .map(|(t, (n, _))| (*t, *n))
                    .collect();
                for (t, n) in overlapping {
                    self.violate(now_us, format!("queen {node:?} (term {term}) reigns while queen {n:?} (term {t}) still holds her lease"));
                }
                self.reigns.insert(term, (node, until));
            }
            Event::Abdicated { term, .. } => {
                if let Some((n, end)) = self.reigns.get_mut(&term) {
                    if *n == node {
                        *end = (*end).min(now_us);
                    }
                }
            }
            Event::Obeyed { term, queen, until } => {
                let until = to_global(until);
                let view = self.workers.entry(index).or_default();
                let mut problems = Vec::new();
                if term < view.highest_obeyed {
                    problems.push(format!(
                        "worker {node:?} obeys term {term} after term {}",
                        view.highest_obeyed
                    ));
                }
                if let Some((t, q, end)) = view.lease {
                    if (t, q) != (term, queen) && end > now_us {
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
                if let Some(view) = self.workers.get_mut(&index) {
                    if let Some(lease) = &mut view.lease {
                        lease.2 = lease.2.min(now_us);
                    }
                }
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
                match self.digests.insert(version, digest) {
                    Some(d) if d != digest => self.violate(
                        now_us,
                        format!("version {version} committed with two different contents"),
                    ),
                    _ => {}
                }
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
            }
            Event::MemberUp(_)
            | Event::MemberDown(_)
            | Event::Stood { .. }
            | Event::Accepted { .. }
            | Event::Planned { .. }
            | Event::Assigned { .. } => {}
        }
    }

    /// A node restarted: its lease view is gone but what it committed is not.
    pub fn on_restart(&mut self, index: usize) {
        if let Some(view) = self.workers.get_mut(&index) {
            view.lease = None;
        }
    }
}
