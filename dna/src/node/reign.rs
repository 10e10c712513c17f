//! The queen's reign: the heartbeat timer and its targets, acks and the lease window, heirs,
//! hand-over to a fitter heir and abdication.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use swarm_core::spec::ColonySpec;
use swarm_core::swim::ScentBook;
use swarm_core::wire::{self, ColonyMsg, Heir, Pheromone, Version};
use swarm_core::{Capabilities, NodeId, Time};

use crate::quorum::Quorum;

use super::replication::follower_needs_state;
use super::{AbdicateReason, Event, Node, Role, Timer, ms};

/// Heartbeats remembered for lease accounting.
pub(super) const LEASE_WINDOW: usize = 16;

#[derive(Debug, Default)]
pub(super) struct Follower {
    accepted: Version,
    pub(super) last_ack: Time,
    pub(super) state_sent: Option<(Version, Time)>,
}

#[derive(Debug)]
pub(super) struct Reign {
    pub(super) crowned_at: Time,
    pub(super) hb_seq: u64,
    /// (seq, send time, who acknowledged it, quorum reached)
    pub(super) sent: VecDeque<(u64, Time, BTreeSet<NodeId>, bool)>,
    pub(super) lease_until: Option<Time>,
    pub(super) quorum: Quorum,
    pub(super) followers: BTreeMap<NodeId, Follower>,
    pub(super) version_acks: BTreeSet<NodeId>,
    /// Heirs named in every heartbeat, re-ranked every fourth one.
    pub(super) heirs: Vec<Heir>,
    pub(super) fitter_since: Option<(NodeId, Time)>,
    /// Capabilities each node registered with this queen (or inherited from the state), with
    /// their digest. Bounded by the members she knows of.
    pub(super) registry: BTreeMap<NodeId, (u32, Capabilities)>,
    /// When a [`ColonyMsg::Describe`] last went to each node (one per two heartbeats at most).
    pub(super) described: BTreeMap<NodeId, Time>,
    /// A spec applied by the operator, waiting for the state version in flight to commit.
    pub(super) pending_spec: Option<ColonySpec>,
    /// The inputs of the plan changed; a [`Timer::Plan`] is armed.
    pub(super) plan_armed: bool,
    /// Replica reports colony-wide and the healthy roles published from them.
    pub(super) book: super::health::Book,
    /// Failed replicas: the nodes they avoid and their backoff.
    pub(super) failures: super::failures::Failures,
}

impl Node {
    /// Every roster member and every live member, by address; cached until membership or the
    /// roster changes (the queen sends to all of them several times a second).
    fn heartbeat_targets(&mut self) -> std::sync::Arc<[SocketAddr]> {
        if let Some(t) = &self.targets {
            return t.clone();
        }
        let me = self.cfg.node;
        let mut ids = self.roster_union();
        ids.extend(self.live.keys().copied());
        ids.remove(&me);
        let targets: std::sync::Arc<[SocketAddr]> =
            ids.into_iter().filter_map(|n| self.addr_of(n)).collect();
        self.targets = Some(targets.clone());
        targets
    }

    pub(super) fn on_heartbeat_timer(&mut self, term: u64, now: Time) {
        if self.role != Role::Queen || term != self.term {
            return;
        }
        if self.send_heartbeat(now) {
            let next = now + ms(self.cfg.heartbeat_ms);
            self.schedule(next, Timer::Heartbeat { term });
        }
    }

    /// A commit is announced at once with an extra heartbeat (it carries `commit`), so workers
    /// act on a new plan without waiting up to `heartbeat_ms` for the next one. Its acks count
    /// for the lease like any heartbeat's (measured from its send time).
    pub(super) fn announce_commit(&mut self) {
        let has_followers = self.reign.as_ref().is_some_and(|r| !r.followers.is_empty());
        if self.role == Role::Queen && has_followers {
            let now = self.last_now;
            self.send_heartbeat(now);
        }
    }

    /// Sends one heartbeat (false: her lease had run out and she abdicated instead).
    fn send_heartbeat(&mut self, now: Time) -> bool {
        let queen_lease = ms(self.cfg.queen_lease_ms);
        let Some(reign) = &mut self.reign else {
            return false;
        };
        let lease_end = reign.lease_until.unwrap_or(reign.crowned_at + queen_lease);
        if lease_end <= now {
            self.abdicate(AbdicateReason::LostMajority, now);
            return false;
        }
        reign.hb_seq += 1;
        let seq = reign.hb_seq;
        let mut acked = BTreeSet::new();
        acked.insert(self.cfg.node);
        // A queen who is a majority by herself (a colony of one) renews her own lease.
        let alone = reign.quorum.is_met(&acked);
        let mut renewed = None;
        if alone && reign.lease_until.is_none_or(|u| u < now + queen_lease) {
            reign.lease_until = Some(now + queen_lease);
            renewed = Some(now + queen_lease);
        }
        reign.sent.push_back((seq, now, acked, alone));
        if reign.sent.len() > LEASE_WINDOW {
            reign.sent.pop_front();
        }
        if seq % 4 == 1 {
            reign.heirs = Self::rank_heirs(reign, &self.scents, self.state.version, self.cfg.heirs);
        }
        let health_due = seq % 4 == 2;
        let msg = ColonyMsg::Heartbeat {
            term: self.term,
            seq,
            lease_ms: u32::try_from(self.cfg.lease_ms).unwrap_or(u32::MAX),
            latest: self.state.version,
            commit: self.commit,
            heirs: reign.heirs.clone(),
        };
        self.broadcast(&msg);
        if let Some(until) = renewed {
            self.emit(Event::Reigns {
                term: self.term,
                until,
            });
        }
        if health_due {
            // A new queen publishes the healthy roles once her book is complete or her wait is
            // over, even if no report arrives meanwhile.
            self.publish_health(now);
        }
        true
    }

    pub(super) fn broadcast(&mut self, msg: &ColonyMsg) {
        let Ok(bytes) = wire::encode_colony(self.cfg.node, msg) else {
            return;
        };
        let bytes = Bytes::from(bytes);
        for addr in self.heartbeat_targets().iter() {
            self.send_bytes(*addr, bytes.clone());
        }
    }

    /// The fittest followers holding the newest state, fittest first.
    fn rank_heirs(reign: &Reign, scents: &ScentBook, latest: Version, k: usize) -> Vec<Heir> {
        let book = scents.lock();
        let mut best: Vec<Heir> = reign
            .followers
            .iter()
            .filter(|(_, f)| f.accepted >= latest)
            .filter_map(|(n, _)| {
                book.get(n).map(|s| Heir {
                    node: *n,
                    pheromone: s.pheromone,
                })
            })
            .filter(|h| h.pheromone > Pheromone(0))
            .collect();
        best.sort_by(|a, b| b.pheromone.cmp(&a.pheromone).then(a.node.cmp(&b.node)));
        best.truncate(k);
        best
    }

    pub(super) fn on_ack(
        &mut self,
        from: NodeId,
        reply_to: SocketAddr,
        term: u64,
        seq: u64,
        accepted: Version,
        now: Time,
    ) {
        if term > self.term {
            return self.adopt_term(term, now);
        }
        if self.role != Role::Queen || term != self.term {
            return;
        }
        let queen_lease = ms(self.cfg.queen_lease_ms);
        let Some(reign) = &mut self.reign else { return };
        if reign.lease_until.unwrap_or(reign.crowned_at + queen_lease) <= now {
            // Her lease ran out since her last heartbeat timer checked it: she was paused, or
            // this ack was. A deposed queen decides nothing (no lease, no commit): she steps
            // down first (election.md §7, "Pauses").
            return self.abdicate(AbdicateReason::LostMajority, now);
        }
        let latest = self.state.version;
        let follower = reign.followers.entry(from).or_default();
        follower.accepted = follower.accepted.max(accepted);
        follower.last_ack = now;
        let counts = reign.quorum.counts(from);
        let mut extended = None;
        if counts {
            // Acks are cumulative: a worker that acks heartbeat `seq` (received at r ≥ its send
            // time) refuses votes until r + lease_ms, which also covers every earlier heartbeat.
            // So a worker that missed heartbeat k but acked k+1 still counts for k.
            for entry in reign.sent.iter_mut().filter(|e| e.0 <= seq && !e.3) {
                if entry.2.insert(from) && reign.quorum.is_met_fast(&entry.2) {
                    entry.3 = true;
                    let until = entry.1 + queen_lease;
                    if reign.lease_until.is_none_or(|u| u < until) {
                        reign.lease_until = Some(until);
                        extended = Some(until);
                    }
                }
            }
        }
        let mut committed = false;
        if accepted >= latest && latest > self.commit && counts && reign.version_acks.insert(from) {
            committed = reign.quorum.is_met_fast(&reign.version_acks);
        }
        let resend = accepted < latest
            && follower_needs_state(reign, from, latest, now, ms(self.cfg.heartbeat_ms * 2));
        if let Some(until) = extended {
            self.emit(Event::Reigns {
                term: self.term,
                until,
            });
        }
        if committed {
            self.commit_latest();
        }
        if resend {
            let msg = ColonyMsg::State {
                term: self.term,
                state: self.state.clone(),
                commit: self.commit,
            };
            self.send(reply_to, &msg);
        }
        // A roster of one or two survives the loss of none of its members (a queen crowned by
        // two of three before the third was known): a live member acking from outside it is
        // admitted now, not at the next tick. Larger rosters wait for the tick, which batches a
        // cold start's joiners into few roster changes (admitting each at once floods the
        // colony with state versions: cold-start convergence p99 0.5 s → 3.1 s).
        if self.state.roster.len() <= 2
            && self.state.roster.binary_search(&from).is_err()
            && self.live.contains_key(&from)
        {
            self.reconcile_roster(now);
        }
    }

    pub(super) fn consider_handover(&mut self, now: Time) {
        let mine = self.gland.level().as_f64();
        let margin = self.cfg.handover_margin;
        let sustain = ms(self.cfg.handover_sustain_ms);
        let committed = self.state.version == self.commit;
        let Some(reign) = &mut self.reign else { return };
        let best = reign
            .heirs
            .first()
            .copied()
            .filter(|h| h.pheromone.as_f64() > mine * (1.0 + margin));
        let Some(best) = best else {
            reign.fitter_since = None;
            return;
        };
        match reign.fitter_since {
            Some((n, since)) if n == best.node => {
                let up_to_date = reign
                    .followers
                    .get(&n)
                    .is_some_and(|f| f.accepted >= self.state.version);
                if committed && up_to_date && now.since(since) >= sustain {
                    let term = self.term;
                    self.send_to_node(best.node, &ColonyMsg::HandOver { term });
                    self.abdicate(AbdicateReason::Handover, now);
                }
            }
            _ => reign.fitter_since = Some((best.node, now)),
        }
    }

    pub(super) fn abdicate(&mut self, reason: AbdicateReason, now: Time) {
        if self.role != Role::Queen {
            return;
        }
        // Release every worker's lease at once (best effort; otherwise it runs out by itself).
        let msg = ColonyMsg::Heartbeat {
            term: self.term,
            seq: 0,
            lease_ms: 0,
            latest: self.state.version,
            commit: self.commit,
            heirs: Vec::new(),
        };
        self.broadcast(&msg);
        self.emit(Event::Abdicated {
            term: self.term,
            reason,
        });
        self.lost_queen = Some(self.cfg.node);
        self.queenless_since = Some(now);
        self.become_worker(now);
    }
}
