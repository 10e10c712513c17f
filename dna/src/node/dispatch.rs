//! Dispatch: which handler each incoming `ColonyMsg` goes to.

use std::net::SocketAddr;
use swarm_core::wire::{ColonyMsg, MEMBERS_PER_PACKET};
use swarm_core::{NodeId, Time};

use crate::election::Ballot;

use super::candidacy::Mode;
use super::{Node, Role};

impl Node {
    pub(super) fn on_colony(
        &mut self,
        from: NodeId,
        reply_to: SocketAddr,
        msg: ColonyMsg,
        now: Time,
    ) {
        match msg {
            ColonyMsg::PreVote {
                term,
                version,
                pheromone,
            } => {
                let ballot = Ballot {
                    candidate: from,
                    term,
                    version,
                    pheromone,
                    handover: false,
                    pre: true,
                };
                self.on_ballot(reply_to, ballot, now);
            }
            ColonyMsg::RequestVote {
                term,
                version,
                pheromone,
                handover,
            } => {
                let ballot = Ballot {
                    candidate: from,
                    term,
                    version,
                    pheromone,
                    handover,
                    pre: false,
                };
                self.on_ballot(reply_to, ballot, now);
            }
            ColonyMsg::PreVoteReply {
                term,
                granted,
                queen,
            } => {
                let elsewhere = match (granted, queen) {
                    (false, Some(queen)) => self.queen_elsewhere(queen, now),
                    _ => false,
                };
                if !elsewhere {
                    self.on_vote_reply(from, term, granted, true, now);
                }
            }
            ColonyMsg::VoteReply { term, granted } => {
                self.on_vote_reply(from, term, granted, false, now)
            }
            ColonyMsg::Heartbeat {
                term,
                seq,
                lease_ms,
                latest,
                commit,
                heirs,
            } => {
                // `latest` matters only to a rival queen of the same term (`split.rs`); a
                // lagging worker shows in its ack and gets the state then.
                self.on_heartbeat(
                    from, reply_to, term, seq, lease_ms, latest, commit, heirs, now,
                );
            }
            ColonyMsg::HeartbeatAck {
                term,
                seq,
                accepted,
                caps,
                replicas,
                health,
            } => {
                self.on_ack(from, reply_to, term, seq, accepted, now);
                self.check_registered(from, reply_to, term, caps, now);
                self.check_reports(from, term, replicas, health, now);
            }
            ColonyMsg::Describe { term } => {
                if self.obeys(from, term) && term == self.term && self.role == Role::Worker {
                    let msg = ColonyMsg::Register {
                        term,
                        caps: self.cfg.caps.clone(),
                    };
                    self.send(reply_to, &msg);
                }
            }
            ColonyMsg::Register { term, caps } => self.on_register(from, term, caps, now),
            ColonyMsg::State {
                term,
                state,
                commit,
            } => self.on_state(from, reply_to, term, state, commit, now),
            ColonyMsg::ReplicaStatus {
                term,
                version,
                replicas,
            } => self.on_replica_status(from, term, version, replicas, now),
            ColonyMsg::AskReplicas { term } => self.on_ask_replicas(from, term, now),
            ColonyMsg::RoleHealth { term, roles } => self.on_role_health(from, term, roles),
            ColonyMsg::Yield { term, to } => self.on_yield(from, term, to, now),
            ColonyMsg::HandOver { term } => {
                if self.obeys(from, term)
                    && term == self.term
                    && self.role == Role::Worker
                    && self.cfg.queen_affinity > 0.0
                {
                    self.stand(now, Mode::Handover);
                }
            }
            ColonyMsg::JoinRequest { digest, scent } => {
                if let Some(scent) = scent.filter(|s| s.node == from) {
                    self.scents.merge(scent);
                }
                self.on_join_request(reply_to, digest);
            }
            ColonyMsg::Rumour {
                member,
                incarnation,
                down,
            } => self.on_rumour(from, member, incarnation, down, now),
            ColonyMsg::Members { members, scents } => {
                if members.len() <= MEMBERS_PER_PACKET && scents.len() <= MEMBERS_PER_PACKET {
                    self.on_members(from, members, scents, now);
                }
            }
        }
    }
}
