//! Split brain after a misconfigured bootstrap: two queens reigning in the same term.
//!
//! With `bootstrap_expect` below half the nodes that boot together, two disjoint bootstrap
//! majorities can each crown a queen in the same term (election.md §6). Nothing else in the
//! protocol merges them: each queen ignores a heartbeat of her own term, and workers fence a
//! second queen of their term. This file detects it and heals it (election.md §6, "Split
//! brain"):
//!
//! - A queen that receives a heartbeat of her own term from another node knows there is a
//!   rival. The one with the smaller `(version, id)` *yields*: she abdicates (releasing her
//!   workers) and sends everyone she heartbeats `Yield { term, to: rival }`.
//! - The rival, on that `Yield`, abdicates too and at once stands for `term + 1` with a
//!   hand-over ballot (her own voters accept it despite her lease, which she has just given
//!   up). Her new term is what lets her state supersede both sides' states of `term`, whose
//!   versions may collide.
//! - The yielding queen and her workers do not stand, and obey no heartbeat of `term` or
//!   lower, for `2 · lease_ms` ([`Yielded`]): the rival's heartbeat of the new term finds them
//!   queenless, they obey her and take her state, and her roster reconciliation takes them in.
//!   Should the rival never come, they stand again after that wait.
//! - A queen deposed by the heartbeat of a queen of a *higher* term from outside her roster
//!   (two rosters can do that too) yields to her the same way, so that her workers follow the
//!   new queen instead of electing one of their own, which would depose her again. A worker
//!   fenced by its queen's lease that hears such a foreign queen introduces its queen to her,
//!   so that her heartbeat reaches ours (rather than our acks, carrying her term, deposing ours
//!   with nobody to follow).
//! - A worker that obeys one queen and receives a heartbeat from another in the same term
//!   introduces each to the other (a `Members` naming the rival), so the two meet even before
//!   their own SWIM views have.
//!
//! Queens and workers emit [`Event::SplitBrain`] once per rival and term, for logs and metrics.

use swarm_core::wire::{ColonyMsg, Version};
use swarm_core::{NodeId, Time};

use super::candidacy::Mode;
use super::{AbdicateReason, Event, Node, Role, ms};

/// A node whose queen yielded to a rival queen of the same term.
#[derive(Clone, Copy, Debug)]
pub(super) struct Yielded {
    /// The term both queens shared: heartbeats of it (or lower) are no longer obeyed.
    term: u64,
    /// Until then the node does not stand.
    until: Time,
}

impl Node {
    /// At a queen: a heartbeat of her own term from `rival`, who holds `latest`.
    pub(super) fn on_rival_queen(&mut self, rival: NodeId, term: u64, latest: Version, now: Time) {
        debug_assert_eq!(self.role, Role::Queen);
        debug_assert_eq!(term, self.term);
        if rival == self.cfg.node {
            return;
        }
        self.note_split(term, rival);
        if (self.state.version, self.cfg.node) < (latest, rival) {
            // The smaller one yields. Whatever her side committed in this term is lost once
            // the rival's next term reaches it (the price of the misconfiguration, election.md
            // §6).
            self.abdicate(AbdicateReason::Superseded, now);
            self.yield_to(term, rival, now);
            self.send_to_node(rival, &ColonyMsg::Yield { term, to: rival });
        }
    }

    /// We reigned in `term` and step down for `queen` (a rival of our term, or a queen of a
    /// higher term whose heartbeat deposed us): our workers wait for her instead of electing
    /// one of their own, which with two rosters would only depose her again.
    pub(super) fn yield_to(&mut self, term: u64, queen: NodeId, now: Time) {
        self.broadcast(&ColonyMsg::Yield { term, to: queen });
        self.wait_for_rival(term, now);
    }

    /// `Yield { term, to }` from `from`.
    pub(super) fn on_yield(&mut self, from: NodeId, term: u64, to: NodeId, now: Time) {
        if from == self.cfg.node || to == from {
            return;
        }
        if self.role == Role::Queen && term == self.term && to == self.cfg.node {
            // The rival yielded to us: re-crown ourselves in the next term, so that our state
            // supersedes hers. Our own voters accept a hand-over ballot for exactly our term + 1.
            self.note_split(term, from);
            self.abdicate(AbdicateReason::Superseded, now);
            self.stand(now, Mode::Handover);
        } else if self.role != Role::Queen && self.obeys(from, term) {
            // `term` may be below ours: we may have heard of the queen she yields to already.
            if let Some(l) = &mut self.lease {
                l.until = l.until.min(now);
            }
            self.on_lease_check(now);
            self.wait_for_rival(term, now);
        }
    }

    fn wait_for_rival(&mut self, term: u64, now: Time) {
        self.yielded = Some(Yielded {
            term,
            until: now + ms(2 * self.cfg.lease_ms),
        });
    }

    /// Whether we are waiting for a rival queen's next term (we do not stand meanwhile).
    pub(super) fn waits_for_rival(&self, now: Time) -> bool {
        self.yielded.is_some_and(|y| now < y.until)
    }

    /// Whether a heartbeat of `term` is to be ignored: we wait for a rival's next term.
    pub(super) fn ignores_after_yield(&self, term: u64, now: Time) -> bool {
        self.yielded
            .is_some_and(|y| now < y.until && term <= y.term)
    }

    /// At a worker obeying `queen` of `term`: a heartbeat from `rival`, another queen of the
    /// same term. Introduce them to each other; they settle it between them.
    pub(super) fn on_two_queens(&mut self, queen: NodeId, rival: NodeId, term: u64) {
        if !self.note_split(term, rival) {
            return;
        }
        for (to, about) in [(queen, rival), (rival, queen)] {
            if let Some(id) = self.live.get(&about) {
                let msg = ColonyMsg::Members {
                    members: vec![id],
                    scents: Vec::new(),
                };
                self.send_to_node(to, &msg);
            }
        }
    }

    /// At a worker obeying `queen`: a heartbeat of the higher `term` from `foreign`, a queen
    /// outside our roster. Our queen must hear from her (she then yields to her, and we follow);
    /// otherwise our acks, carrying `term`, depose our queen with nobody to follow, and our
    /// roster elects again, deposing the foreign one in turn.
    pub(super) fn on_foreign_queen(&mut self, queen: NodeId, foreign: NodeId, term: u64) {
        if self.introduced == Some((term, foreign)) {
            return;
        }
        self.introduced = Some((term, foreign));
        if let Some(id) = self.live.get(&queen) {
            let msg = ColonyMsg::Members {
                members: vec![id],
                scents: Vec::new(),
            };
            self.send_to_node(foreign, &msg);
        }
    }

    /// Emits [`Event::SplitBrain`] the first time `rival` shows up in `term`; false if already
    /// noted.
    fn note_split(&mut self, term: u64, rival: NodeId) -> bool {
        if self.split_seen == Some((term, rival)) {
            return false;
        }
        self.split_seen = Some((term, rival));
        self.emit(Event::SplitBrain { term, other: rival });
        true
    }
}
