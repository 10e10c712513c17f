//! Colony-state replication at the queen: proposing a new state, committing it once a majority
//! holds it, reconciling the roster with who is alive; and roster queries shared by the
//! election and the reign.

use std::collections::BTreeSet;
use std::time::Duration;
use swarm_core::wire::{ColonyMsg, ColonyState, Version};
use swarm_core::{NodeId, Time};

use crate::quorum::Quorum;

use super::reign::Reign;
use super::{Event, Node, ms};

impl Node {
    pub(super) fn in_roster(&self, node: NodeId) -> bool {
        self.state.roster.binary_search(&node).is_ok()
            || self.committed_roster.binary_search(&node).is_ok()
    }

    /// Everyone in the latest or the committed roster.
    pub(super) fn roster_union(&self) -> BTreeSet<NodeId> {
        self.state
            .roster
            .iter()
            .chain(self.committed_roster.iter())
            .copied()
            .collect()
    }

    pub(super) fn set_state(&mut self, next: ColonyState) {
        let digest = next.digest();
        self.emit(Event::Accepted {
            version: next.version,
            digest,
        });
        self.targets = None;
        self.state = next;
        self.persist();
    }

    /// Makes `next` the queen's newest state and replicates it to everyone.
    pub(super) fn propose(&mut self, next: ColonyState, now: Time) {
        debug_assert_eq!(self.state.version, self.commit, "one change in flight");
        debug_assert_eq!(next.version.term, self.term);
        let quorum = Quorum::new(
            &self.committed_roster,
            &next.roster,
            self.cfg.bootstrap_expect,
        );
        self.set_state(next);
        if let Some(reign) = &mut self.reign {
            reign.quorum = quorum;
            reign.version_acks = [self.cfg.node].into_iter().collect();
        }
        let msg = ColonyMsg::State {
            term: self.term,
            state: self.state.clone(),
            commit: self.commit,
        };
        self.broadcast(&msg);
        if let Some(reign) = &mut self.reign {
            for f in reign.followers.values_mut() {
                f.state_sent = Some((self.state.version, now));
            }
        }
        self.commit_if_alone();
    }

    /// A queen who is a majority by herself (a colony of one) commits without waiting for acks.
    pub(super) fn commit_if_alone(&mut self) {
        let alone = self
            .reign
            .as_ref()
            .is_some_and(|r| r.quorum.is_met(&r.version_acks));
        if alone && self.state.version > self.commit {
            self.commit_latest();
        }
    }

    pub(super) fn commit_latest(&mut self) {
        self.targets = None;
        self.commit = self.state.version;
        self.committed_roster = self.state.roster.clone();
        self.persist();
        let digest = self.state.digest();
        self.emit(Event::Committed {
            version: self.commit,
            digest,
        });
        if let Some(reign) = &mut self.reign {
            reign.quorum = Quorum::new(
                &self.committed_roster,
                &self.state.roster,
                self.cfg.bootstrap_expect,
            );
        }
        self.refresh_assigned();
        self.announce_commit();
    }

    /// Adds members that answer heartbeats, removes members down for long; one change in flight.
    pub(super) fn reconcile_roster(&mut self, now: Time) {
        if self.state.version != self.commit {
            return;
        }
        let Some(reign) = &self.reign else { return };
        let fresh = ms(self.cfg.heartbeat_ms * 8);
        let mut roster: BTreeSet<NodeId> = self.state.roster.iter().copied().collect();
        let joiners = reign
            .followers
            .iter()
            .filter(|(n, f)| self.live.contains_key(n) && now.since(f.last_ack) < fresh)
            .map(|(n, _)| *n);
        let mut changed = false;
        for n in joiners {
            changed |= roster.insert(n);
        }
        let gone = ms(self.cfg.roster_remove_after_ms);
        for (n, since) in &self.down_since {
            if *n != self.cfg.node && now.since(*since) >= gone {
                changed |= roster.remove(n);
            }
        }
        if !changed {
            return;
        }
        debug_assert!(roster.contains(&self.cfg.node));
        let mut next = self.state.clone();
        next.version.seq += 1;
        next.roster = roster.into_iter().collect();
        self.propose(next, now);
    }
}

pub(super) fn follower_needs_state(
    reign: &mut Reign,
    from: NodeId,
    latest: Version,
    now: Time,
    every: Duration,
) -> bool {
    let Some(f) = reign.followers.get_mut(&from) else {
        return false;
    };
    let due = match f.state_sent {
        Some((v, at)) => v != latest || now.since(at) >= every,
        None => true,
    };
    if due {
        f.state_sent = Some((latest, now));
    }
    due
}
