//! The voter side of the election: turns a ballot into a `VoterView`, asks
//! `crate::election::judge` and answers it (and remembers a real vote).

use std::net::SocketAddr;
use swarm_core::wire::{ColonyMsg, Pheromone, Version};
use swarm_core::{NodeId, Time};

use crate::election::{self, Ballot, Verdict, VoterView};

use super::{Node, Role, ms};

impl Node {
    /// The candidate we gave our real vote to within the last `heartbeat_ms + round_timeout_ms`
    /// (time enough for her crown and first heartbeat to reach us), if we obey no one yet.
    pub(super) fn just_voted_for(&self, now: Time) -> Option<NodeId> {
        let window = ms(self.cfg.heartbeat_ms + self.cfg.round_timeout_ms);
        let at = self.voted_at?;
        (now.since(at) < window && !self.lease_valid(now)).then_some(self.voted_for?)
    }

    fn fittest_other(&self, candidate: NodeId, version: Version) -> Option<Pheromone> {
        let me = self.cfg.node;
        let alive =
            |n: NodeId| n == me || (self.live.contains_key(&n) && Some(n) != self.lost_queen);
        if let Some(first) = self.heirs.iter().find(|h| alive(h.node)) {
            return (first.node != candidate)
                .then(|| self.pheromone_of(first.node).max(first.pheromone));
        }
        let book = self.scents.lock();
        let others = self
            .live
            .keys()
            .filter(|n| **n != candidate && Some(**n) != self.lost_queen)
            .filter_map(|n| book.get(n))
            .filter(|s| s.version >= version)
            .map(|s| s.pheromone);
        let mine = (me != candidate && self.state.version >= version).then(|| self.gland.level());
        others.chain(mine).max()
    }

    pub(super) fn on_ballot(&mut self, reply_to: SocketAddr, ballot: Ballot, now: Time) {
        let veto_open = self
            .queenless_since
            .is_some_and(|t| now.since(t) < ms(self.cfg.weak_veto_ms));
        let view = VoterView {
            now,
            term: self.term,
            voted_for: self.voted_for,
            version: self.state.version,
            lease: self.lease.map(|l| (l.term, l.until)),
            reigning: self.role == Role::Queen,
            restart_fenced: now < self.fenced_until,
            just_voted_for: self.just_voted_for(now),
            veto_open,
            fittest_other: if veto_open {
                self.fittest_other(ballot.candidate, ballot.version)
            } else {
                None
            },
            weak_margin: self.cfg.weak_margin,
        };
        let verdict = election::judge(&ballot, &view);
        let granted = verdict == Verdict::Grant;
        if ballot.pre {
            let queen = match verdict {
                Verdict::Refuse(election::Refusal::LeaseValid) => {
                    self.lease.and_then(|l| self.live.get(&l.queen))
                }
                _ => None,
            };
            self.send(
                reply_to,
                &ColonyMsg::PreVoteReply {
                    term: if granted { ballot.term } else { self.term },
                    granted,
                    queen,
                },
            );
            return;
        }
        // A real ballot with a higher term moves our term, unless we still obey a live queen
        // (then we ignore it entirely: no disruption).
        let lease_blocks = matches!(
            verdict,
            Verdict::Refuse(election::Refusal::LeaseValid | election::Refusal::Reigning)
        );
        if ballot.term > self.term && !lease_blocks {
            self.adopt_term(ballot.term, now);
        }
        if granted {
            self.voted_for = Some(ballot.candidate);
            self.voted_at = Some(now);
            self.persist();
            if self.role == Role::Candidate {
                self.become_worker(now);
            }
        }
        self.send(
            reply_to,
            &ColonyMsg::VoteReply {
                term: self.term,
                granted,
            },
        );
    }
}
