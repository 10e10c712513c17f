//! The candidate side of the election: when a node may stand, its rank and stand delay, the
//! pre-vote and vote rounds (soliciting, counting, failing with backoff) and crowning the
//! winner. The voter's rules are the pure `crate::election::judge`; answering ballots is
//! `voter.rs`.

use bytes::Bytes;
use rand::RngExt;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use swarm_core::swim::SwimId;
use swarm_core::wire::{self, ColonyMsg, Pheromone, Version};
use swarm_core::{Capabilities, NodeId, Time};

use crate::election;
use crate::quorum::{Quorum, majority};

use super::reign::Reign;
use super::{Event, Node, Role, Timer, ms};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    PreVote,
    Vote,
    Handover,
}

#[derive(Debug)]
pub(super) struct Candidacy {
    pre: bool,
    term: u64,
    handover: bool,
    quorum: Quorum,
    grants: BTreeSet<NodeId>,
}

impl Node {
    fn quorum(&self) -> Quorum {
        Quorum::new(
            &self.committed_roster,
            &self.state.roster,
            self.cfg.bootstrap_expect,
        )
    }

    fn may_stand(&self, now: Time) -> bool {
        if self.cfg.queen_affinity <= 0.0
            || self.role != Role::Worker
            || self.lease_valid(now)
            || now < self.fenced_until
        {
            return false;
        }
        if self.just_voted_for(now).is_some_and(|c| c != self.cfg.node) {
            // We just voted for someone whose crown is due: do not duel with her.
            return false;
        }
        if self.waits_for_rival(now) {
            // Our queen yielded to a rival of her term, who is re-crowning herself (`split.rs`).
            return false;
        }
        if self.lease.is_none() && self.reigning_queen_scent().is_some() {
            // Never had a queen since boot, but one reigns: she just has not reached us yet.
            return false;
        }
        if self.state.roster.is_empty() && self.committed_roster.is_empty() {
            self.live.len() + 1 >= majority(self.cfg.bootstrap_expect)
        } else {
            self.in_roster(self.cfg.node)
        }
    }

    /// A live member whose scent says she reigns in our term or a later one.
    fn reigning_queen_scent(&self) -> Option<SwimId> {
        let book = self.scents.lock();
        self.live.values().find(|id| {
            book.get(&id.node)
                .is_some_and(|s| s.queen && s.term >= self.term)
        })
    }

    /// Our position in the succession: 0 = the fittest up-to-date live member.
    fn rank(&self) -> usize {
        let me = self.cfg.node;
        let alive =
            |n: &NodeId| *n == me || (self.live.contains_key(n) && Some(*n) != self.lost_queen);
        let live_heirs: Vec<NodeId> = self.heirs.iter().map(|h| h.node).filter(alive).collect();
        if let Some(i) = live_heirs.iter().position(|n| *n == me) {
            return i;
        }
        let mine = (self.state.version, self.gland.level(), me);
        let book = self.scents.lock();
        let ahead = self
            .live
            .keys()
            .filter(|n| Some(**n) != self.lost_queen && !live_heirs.contains(n))
            .filter_map(|n| book.get(n).map(|e| e.scent(*n)))
            .filter(|s| s.pheromone > Pheromone(0) && (s.version, s.pheromone, s.node) > mine)
            .count();
        let ahead = if self.state.roster.is_empty() && self.committed_roster.is_empty() {
            // Cold start: we know (and smell) only part of the colony yet; scale our rank among
            // the members we smell to the `bootstrap_expect` we expect, so that half the rack
            // does not think itself the fittest.
            // Smoothed: (ahead + ½) / known of the expected colony is ahead of us, so a node that
            // smells few others does not assume it is the fittest.
            let known = self.live.keys().filter(|n| book.contains_key(n)).count() + 1;
            let expected = self.cfg.bootstrap_expect.max(known);
            (2 * ahead + 1) * expected / (2 * known)
        } else {
            ahead
        };
        live_heirs.len() + ahead
    }

    pub(super) fn schedule_stand(&mut self, now: Time) {
        self.schedule_stand_after(now, 0);
    }

    /// Arms the stand timer at our rank's delay (plus `extra_ms`) from `now`.
    fn schedule_stand_after(&mut self, now: Time, extra_ms: u64) {
        let jitter = self.rng.random_range(0..=self.cfg.stagger_ms / 2);
        let delay = election::stand_delay_ms(
            self.rank(),
            self.cfg.stand_base_ms,
            self.cfg.stagger_ms,
            jitter,
        );
        let epoch = self.epoch;
        self.schedule(now + ms(delay + extra_ms), Timer::Stand { epoch });
    }

    fn voters(&self) -> Vec<SocketAddr> {
        let me = self.cfg.node;
        let mut ids = self.roster_union();
        if ids.is_empty() {
            ids = self.live.keys().copied().collect();
        }
        ids.into_iter()
            .filter(|n| *n != me)
            .filter_map(|n| self.addr_of(n))
            .collect()
    }

    /// The stand timer: stand if eligible and our rank's delay has passed since we became
    /// eligible; otherwise look again shortly.
    pub(super) fn on_stand_timer(&mut self, now: Time) {
        if !self.may_stand(now) {
            if self.role == Role::Worker && !self.lease_valid(now) {
                // Not eligible yet (too few members known, or a queen reigns who does not know
                // us yet: make sure she does). Rank again once eligible.
                if self.lease.is_none() {
                    if let Some(queen) = self.reigning_queen_scent() {
                        let _ = self.with_swim(now, |swim, rt| swim.announce(queen, rt));
                    }
                }
                self.rank_first = true;
                let epoch = self.epoch;
                self.schedule(
                    now + ms(self.cfg.round_timeout_ms * 2),
                    Timer::Stand { epoch },
                );
            }
            return;
        }
        if std::mem::take(&mut self.rank_first) {
            // Just became eligible: our rank, known only now, sets the delay from here.
            return self.schedule_stand(now);
        }
        self.stand(now, Mode::PreVote);
    }

    /// Start a pre-vote, a real vote (after a won pre-vote), or a hand-over vote.
    pub(super) fn stand(&mut self, now: Time, mode: Mode) {
        let handover = mode == Mode::Handover;
        if mode == Mode::PreVote && !self.may_stand(now) {
            return;
        }
        self.role = Role::Candidate;
        self.epoch += 1;
        let quorum = self.quorum();
        let mut grants = BTreeSet::new();
        if quorum.counts(self.cfg.node) {
            grants.insert(self.cfg.node);
        }
        let pre = mode == Mode::PreVote;
        let term = self.term + 1;
        if !pre {
            self.term = term;
            self.voted_for = Some(self.cfg.node);
            self.persist();
        }
        self.candidacy = Some(Candidacy {
            pre,
            term,
            handover,
            quorum,
            grants,
        });
        self.emit(Event::Stood { term, pre });
        let epoch = self.epoch;
        self.schedule(
            now + ms(self.cfg.round_timeout_ms),
            Timer::RoundTimeout { epoch },
        );
        self.solicit(now);
    }

    fn solicit(&mut self, now: Time) {
        let Some(c) = &self.candidacy else { return };
        let (version, pheromone) = (self.state.version, self.gland.level());
        let msg = if c.pre {
            ColonyMsg::PreVote {
                term: c.term,
                version,
                pheromone,
            }
        } else {
            ColonyMsg::RequestVote {
                term: c.term,
                version,
                pheromone,
                handover: c.handover,
            }
        };
        if c.quorum.is_met(&c.grants) {
            return self.round_won(now);
        }
        if let Ok(bytes) = wire::encode_colony(self.cfg.node, &msg) {
            let bytes = Bytes::from(bytes);
            for addr in self.voters() {
                self.send_bytes(addr, bytes.clone());
            }
        }
    }

    pub(super) fn round_failed(&mut self, now: Time) {
        if self.role != Role::Candidate {
            return;
        }
        self.candidacy = None;
        self.role = Role::Worker;
        self.epoch += 1;
        // Exponential backoff: a colony that keeps refusing us (it has a queen we cannot hear,
        // or votes keep splitting) is not flooded with ballots.
        self.failed_rounds = self.failed_rounds.saturating_add(1);
        let window = self.cfg.round_timeout_ms << self.failed_rounds.min(5);
        let backoff = self.rng.random_range(0..=window);
        self.schedule_stand_after(now, backoff);
    }

    /// A voter refused our pre-vote because it obeys a live queen: stop standing, make
    /// ourselves known to her (she heartbeats every member SWIM tells her about) and wait.
    ///
    /// A claim naming the very queen whose lease this candidate lost is ignored (a plain
    /// refusal): that voter is obeying her late, typically after waking from a pause with her
    /// heartbeats in its receive buffer, and she is gone (election.md §13, "Pauses").
    /// Returns false when the claim is ignored, so the reply counts as a plain refusal.
    pub(super) fn queen_elsewhere(&mut self, queen: SwimId, now: Time) -> bool {
        if Some(queen.node) == self.lost_queen {
            return false;
        }
        if queen.node == self.cfg.node || !self.candidacy.as_ref().is_some_and(|c| c.pre) {
            return true;
        }
        self.candidacy = None;
        self.role = Role::Worker;
        self.epoch += 1;
        let _ = self.with_swim(now, |swim, rt| swim.announce(queen, rt));
        let wait = self.cfg.lease_ms + self.rng.random_range(0..=self.cfg.lease_ms);
        let epoch = self.epoch;
        self.schedule(now + ms(wait), Timer::Stand { epoch });
        true
    }

    pub(super) fn on_vote_reply(
        &mut self,
        from: NodeId,
        term: u64,
        granted: bool,
        pre: bool,
        now: Time,
    ) {
        if term > self.term && !(pre && granted) {
            self.adopt_term(term, now);
            return;
        }
        let Some(c) = &mut self.candidacy else { return };
        if c.pre != pre || c.term != term || !granted || !c.quorum.counts(from) {
            return;
        }
        c.grants.insert(from);
        if c.quorum.is_met(&c.grants) {
            self.round_won(now);
        }
    }

    fn round_won(&mut self, now: Time) {
        let Some(c) = self.candidacy.take() else {
            return;
        };
        if c.pre {
            // A majority would vote for us: now stand for real.
            self.role = Role::Worker;
            if self.lease_valid(now) {
                return self.become_worker(now);
            }
            self.stand(now, Mode::Vote);
        } else {
            self.crown(now);
        }
    }

    fn crown(&mut self, now: Time) {
        debug_assert_eq!(self.voted_for, Some(self.cfg.node));
        self.role = Role::Queen;
        self.targets = None;
        self.lease = None;
        self.queenless_since = None;
        self.epoch += 1;
        let inherited = self.state.version;
        let mut next = self.state.clone();
        next.version = Version {
            term: self.term,
            seq: 0,
        };
        if next.roster.is_empty() {
            next.roster = self
                .live
                .keys()
                .copied()
                .chain([self.cfg.node])
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
        }
        let quorum = Quorum::new(
            &self.committed_roster,
            &next.roster,
            self.cfg.bootstrap_expect,
        );
        // Inherit what the colony knew of every node; live ones re-register if they changed.
        let mut registry: BTreeMap<NodeId, (u32, Capabilities)> = next
            .nodes
            .iter()
            .map(|r| (r.node, (r.caps.digest(), r.caps.clone())))
            .collect();
        registry.insert(self.cfg.node, (self.caps_digest, self.cfg.caps.clone()));
        self.set_state(next);
        self.reign = Some(Reign {
            crowned_at: now,
            hb_seq: 0,
            sent: VecDeque::new(),
            lease_until: None,
            quorum,
            followers: BTreeMap::new(),
            version_acks: [self.cfg.node].into_iter().collect(),
            heirs: Vec::new(),
            fitter_since: None,
            registry,
            described: BTreeMap::new(),
            pending_spec: None,
            plan_armed: false,
            book: Default::default(),
            failures: super::failures::Failures::inherit(&self.state, now),
        });
        self.emit(Event::Crowned {
            term: self.term,
            roster: self.state.roster.len(),
            inherited,
        });
        self.commit_if_alone();
        self.book_at_crowning(now);
        self.publish_scent(now, true);
        self.on_heartbeat_timer(self.term, now);
        // The first plan waits for registrations (see `on_plan_timer`).
        self.want_plan(now, self.cfg.plan_delay_ms);
    }
}
