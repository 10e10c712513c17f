//! The worker side: obeying a queen. Heartbeats and acks, the lease and its fencing, adopting a
//! higher term, accepting a colony state and noting what the queen committed.

use std::net::SocketAddr;
use swarm_core::wire::{ColonyMsg, ColonyState, Heir, Version};
use swarm_core::{NodeId, Time};

use super::{AbdicateReason, Event, Node, Role, Timer, ms};

#[derive(Clone, Copy, Debug)]
pub(super) struct Lease {
    pub(super) term: u64,
    pub(super) queen: NodeId,
    pub(super) until: Time,
}

impl Node {
    /// Whether `from` is the queen of `term` this worker last obeyed.
    pub(super) fn obeys(&self, from: NodeId, term: u64) -> bool {
        self.lease
            .is_some_and(|l| l.term == term && l.queen == from)
    }

    pub(super) fn lease_valid(&self, now: Time) -> bool {
        self.lease.is_some_and(|l| l.until > now)
    }

    pub(super) fn adopt_term(&mut self, term: u64, now: Time) {
        debug_assert!(term > self.term);
        if self.role == Role::Queen {
            // Abdicate in her own term, so that the release reaches the workers she leases.
            self.abdicate(AbdicateReason::Superseded, now);
        }
        self.term = term;
        self.voted_for = None;
        self.persist();
        if self.role == Role::Candidate {
            self.become_worker(now);
        }
    }

    pub(super) fn become_worker(&mut self, now: Time) {
        self.role = Role::Worker;
        self.candidacy = None;
        self.reign = None;
        self.epoch += 1;
        if !self.lease_valid(now) {
            self.queenless_since.get_or_insert(now);
            self.schedule_stand(now);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_heartbeat(
        &mut self,
        from: NodeId,
        reply_to: SocketAddr,
        term: u64,
        seq: u64,
        lease_ms: u32,
        latest: Version,
        commit: Version,
        heirs: Vec<Heir>,
        now: Time,
    ) {
        if term < self.term {
            self.ack(reply_to, seq);
            return;
        }
        if term > self.term {
            // A queen of a higher term from outside our roster reigns where we did: a second
            // roster (a misconfigured bootstrap, `split.rs`). Our workers follow her.
            let foreign = self.role == Role::Queen && lease_ms > 0 && !self.in_roster(from);
            let old = self.term;
            self.adopt_term(term, now);
            if foreign {
                self.yield_to(old, from, now);
            }
        }
        match self.role {
            Role::Queen => {
                // One queen per term, unless a misconfigured bootstrap crowned two.
                if lease_ms > 0 {
                    self.on_rival_queen(from, term, latest, now);
                }
                return;
            }
            Role::Candidate => self.become_worker(now),
            Role::Worker => {}
        }
        if self.ignores_after_yield(term, now) {
            return; // only the rival's next term is obeyed (`split.rs`)
        }
        if lease_ms == 0 {
            // The queen abdicated: release her lease now.
            if let Some(l) = &mut self.lease {
                if l.term == term && l.queen == from && l.until > now {
                    l.until = now;
                    self.on_lease_check(now);
                }
            }
            return;
        }
        // Fencing in the worker's own view: a new queen is obeyed only once the previous one's
        // lease has run out, so no worker ever sees two live leases.
        if let Some(l) = self.lease {
            if (l.term, l.queen) != (term, from) && l.until > now {
                if l.term == term {
                    self.on_two_queens(l.queen, from, term);
                } else if !self.in_roster(from) {
                    // A queen of a higher term from outside our roster: another roster's queen
                    // (a misconfigured bootstrap). Make sure she reaches ours (`split.rs`).
                    self.on_foreign_queen(l.queen, from, term);
                }
                return;
            }
        }
        let until = now + ms(self.cfg.lease_ms);
        let was_queenless = !self.lease_valid(now);
        self.lease = Some(Lease {
            term,
            queen: from,
            until,
        });
        self.yielded = None;
        self.last_hb_seq = seq;
        self.heirs = heirs;
        self.failed_rounds = 0;
        if was_queenless {
            self.queenless_since = None;
            self.lost_queen = None;
            self.epoch += 1;
            self.schedule(until, Timer::LeaseCheck);
        }
        self.emit(Event::Obeyed {
            term,
            queen: from,
            until,
        });
        self.note_commit(commit);
        self.ack(reply_to, seq);
    }

    /// Answers the queen (or a stale one) with our term and the newest version we hold.
    fn ack(&mut self, to: SocketAddr, seq: u64) {
        let msg = ColonyMsg::HeartbeatAck {
            term: self.term,
            seq,
            accepted: self.state.version,
            caps: self.caps_digest,
            replicas: self.reports.digest(),
            health: self.healthy_digest,
        };
        self.send(to, &msg);
    }

    pub(super) fn on_lease_check(&mut self, now: Time) {
        let Some(lease) = self.lease else { return };
        if lease.until > now {
            self.schedule(lease.until, Timer::LeaseCheck);
            return;
        }
        if self.queenless_since.is_none() {
            self.queenless_since = Some(now);
            self.lost_queen = Some(lease.queen);
            self.emit(Event::QueenLost {
                term: lease.term,
                queen: lease.queen,
            });
            self.epoch += 1;
            self.schedule_stand(now);
        }
    }

    pub(super) fn on_state(
        &mut self,
        from: NodeId,
        reply_to: SocketAddr,
        term: u64,
        state: ColonyState,
        commit: Version,
        now: Time,
    ) {
        let obeyed = self
            .lease
            .is_some_and(|l| l.term == term && l.queen == from && l.until > now);
        if term != self.term || !obeyed || self.role != Role::Worker {
            return;
        }
        if state.version.term != term || !state.is_well_formed() {
            self.stats.packets_rejected += 1;
            return;
        }
        if state.version > self.state.version {
            let digest = state.digest();
            self.emit(Event::Accepted {
                version: state.version,
                digest,
            });
            self.state = state;
            self.persist();
        }
        self.note_commit(commit);
        self.ack(reply_to, self.last_hb_seq);
    }

    /// The queen says `commit` is committed: everything up to it in her term is.
    fn note_commit(&mut self, commit: Version) {
        let mine = self.state.version;
        if mine.term == commit.term && mine <= commit && mine > self.commit {
            self.commit = mine;
            self.committed_roster = self.state.roster.clone();
            self.persist();
            let digest = self.state.digest();
            self.emit(Event::Committed {
                version: mine,
                digest,
            });
            self.refresh_assigned();
        }
    }
}
