//! Membership: foca's runtime glue (`Rt`, `with_swim`, member up/down notes), joining through
//! the seeds, the hello to every member that comes up, the member exchange with its view
//! digest, anti-entropy and reconnect on the tick, failure detection around foca (a suspect is
//! told directly; a death this node declared is pushed to everyone), and this node's scent
//! (publishing ours, reading others'). docs/election.md §11 says why each exists.

use foca::{OwnedNotification, Runtime};
use rand::RngExt;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;
use swarm_core::swim::{Scent, SwimId};
use swarm_core::wire::{self, ColonyMsg, MAX_DATAGRAM_FRAME_BYTES, MEMBERS_PER_PACKET, Pheromone};
use swarm_core::{NodeId, Time};

use crate::config::Config;
use crate::timer::TimerQueue;

use super::{
    Event, Greeting, MAX_BUDDIES, MAX_GREET_AGAIN, Node, Role, Swim, Tagged, Timer, Transmit, ms,
    push_bounded,
};

/// foca's configuration for a node with `cfg` (also used by the bare-foca baseline in
/// `benches/`, so that it runs SWIM with the very same settings).
pub fn swim_config(cfg: &Config) -> foca::Config {
    let size = NonZeroU32::new(cfg.cluster_size_hint.max(2)).unwrap_or(NonZeroU32::MIN);
    let mut swim_cfg = foca::Config::new_lan(size);
    // Failure detection tuned for a LAN (docs/election.md, "Failure detection"):
    // new_lan's 1 s probe period and 4·log10(n) s suspicion put a crash 10 s or more away
    // from every survivor knowing it.
    swim_cfg.probe_period = ms(cfg.probe_period_ms);
    swim_cfg.probe_rtt = ms(cfg.probe_rtt_ms);
    swim_cfg.num_indirect_probes =
        NonZeroUsize::new(cfg.indirect_probes).unwrap_or(NonZeroUsize::MIN);
    swim_cfg.suspect_to_down_after = ms(cfg.suspect_to_down_ms);
    // Every foca packet must fit one datagram once framed and sealed.
    swim_cfg.max_packet_size = NonZeroUsize::new(MAX_DATAGRAM_FRAME_BYTES - wire::HEADER_BYTES)
        .unwrap_or(NonZeroUsize::MIN);
    // Our own anti-entropy (full member lists with scents) replaces foca's periodic announce.
    swim_cfg.periodic_announce = None;
    // Fewer retransmissions than foca's default 4·log10(n+1): each is a linear search of the
    // member list at every receiver (O(n²) per join wave), and our digest anti-entropy
    // repairs whatever the thinner epidemic misses.
    let max_tx =
        (cfg.swim_retransmit_factor * f64::from(size.get().saturating_add(1)).log10()).ceil();
    swim_cfg.max_transmissions = std::num::NonZeroU8::new(max_tx.clamp(3.0, 255.0) as u8)
        .unwrap_or(std::num::NonZeroU8::MIN);
    swim_cfg.periodic_gossip = Some(foca::PeriodicParams {
        frequency: ms(cfg.swim_gossip_ms),
        num_members: std::num::NonZeroUsize::new(3).unwrap_or(std::num::NonZeroUsize::MIN),
    });
    swim_cfg
}

/// Members greeted lately, in the order they were greeted, in batches that get their next
/// hellos together (a join greets every member at once: one `due` and one count for them all,
/// instead of 16 bytes beside each of n identities).
#[derive(Default)]
pub(super) struct GreetAgain {
    batches: Vec<GreetBatch>,
    len: usize,
}

struct GreetBatch {
    /// Hellos each member of the batch still gets.
    left: u8,
    /// When the next one is due.
    due: Time,
    to: Vec<SwimId>,
}

impl GreetAgain {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, to: SwimId, left: u8, due: Time) {
        self.len += 1;
        match self.batches.last_mut() {
            Some(b) if b.due == due && b.left == left => b.to.push(to),
            _ => self.batches.push(GreetBatch {
                left,
                due,
                to: vec![to],
            }),
        }
    }
}

/// A member this node suspects and tells so.
#[derive(Clone, Debug)]
pub(super) struct Buddy {
    id: SwimId,
    incarnation: u16,
    sends_left: u8,
}

/// foca's runtime, writing into the node's queues.
pub(super) struct Rt<'a> {
    node: NodeId,
    now: Time,
    incarnation: u32,
    outbox: &'a mut VecDeque<Transmit>,
    timers: &'a mut TimerQueue<Tagged>,
    notes: &'a mut Vec<OwnedNotification<SwimId>>,
    suspicions: &'a mut Vec<(SwimId, u16)>,
}

impl Runtime<SwimId> for Rt<'_> {
    fn notify(&mut self, notification: foca::Notification<'_, SwimId>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: SwimId, data: &[u8]) {
        let payload = wire::encode_swim(self.node, data);
        push_bounded(self.outbox, Transmit::new(to.addr, payload.into()));
    }

    fn submit_after(&mut self, event: foca::Timer<SwimId>, after: Duration) {
        // foca arms this timer exactly when one of its probes failed: the member is now
        // suspected by this node.
        if let foca::Timer::ChangeSuspectToDown {
            member_id,
            incarnation,
            ..
        } = &event
        {
            self.suspicions.push((member_id.clone(), *incarnation));
        }
        self.timers.push(
            self.now + after,
            Tagged {
                incarnation: self.incarnation,
                timer: Timer::Foca(event),
            },
        );
    }
}

impl Node {
    pub(super) fn with_swim<R>(
        &mut self,
        now: Time,
        f: impl FnOnce(&mut Swim, &mut Rt<'_>) -> R,
    ) -> R {
        let mut rt = Rt {
            node: self.cfg.node,
            now,
            incarnation: self.incarnation,
            outbox: &mut self.outbox,
            timers: &mut self.timers,
            notes: &mut self.notes,
            suspicions: &mut self.suspicions,
        };
        let result = f(&mut self.swim, &mut rt);
        self.process_notes(now);
        result
    }

    fn process_notes(&mut self, now: Time) {
        let notes = std::mem::take(&mut self.notes);
        let mut came_up: Vec<SwimId> = Vec::new();
        if !notes.is_empty() {
            self.targets = None;
            self.members_gen += 1;
            // Who is alive is an input of the plan.
            self.want_plan(now, self.cfg.plan_delay_ms);
        }
        for note in notes {
            match note {
                OwnedNotification::MemberUp(id) | OwnedNotification::Rename(_, id) => {
                    if id.node == self.cfg.node {
                        continue;
                    }
                    // SWIM's address is the one to use while the member is live.
                    self.addrs.remove(&id.node);
                    self.down_since.remove(&id.node);
                    if self.live.insert(&id) {
                        self.emit(Event::MemberUp(id.node));
                        came_up.push(id);
                    }
                }
                OwnedNotification::MemberDown(id) => {
                    if self.live.is(&id) {
                        self.live.remove(&id.node);
                        self.addrs.entry(id.node).or_insert(id.addr);
                        self.down_since.insert(id.node, now);
                        self.emit(Event::MemberDown(id.node));
                    }
                }
                OwnedNotification::Rejoin(_) => self.gland.suspected(),
                OwnedNotification::Idle => {
                    self.joined = false;
                    self.schedule(now, Timer::Announce);
                }
                OwnedNotification::Active | OwnedNotification::Defunct => {}
            }
        }
        self.greet(&came_up, now);
        for (id, incarnation) in std::mem::take(&mut self.suspicions) {
            self.suspect(id, incarnation, now);
        }
    }

    /// Lifeguard's buddy system: we suspect `id` (a probe, its indirect probes included, went
    /// unanswered), so we tell it directly, `buddy_sends` times `buddy_ms` apart while the
    /// suspicion stands. It refutes at once and announces itself to us with its new
    /// incarnation, instead of learning of the suspicion by gossip, and refuting by gossip,
    /// while our `suspect_to_down_ms` runs: that round trip through the epidemic is what
    /// turns lost packets into false downs.
    fn suspect(&mut self, id: SwimId, incarnation: u16, now: Time) {
        self.stats.suspicions += 1;
        if self.buddies.len() >= MAX_BUDDIES && !self.buddies.contains_key(&id.node) {
            return;
        }
        self.send_rumour(id.addr, &id, incarnation, false);
        let sends_left = self.cfg.buddy_sends.saturating_sub(1);
        if sends_left == 0 {
            return;
        }
        if self.buddies.is_empty() {
            self.schedule(now + ms(self.cfg.buddy_ms), Timer::Buddy);
        }
        self.buddies.insert(
            id.node,
            Buddy {
                id,
                incarnation,
                sends_left,
            },
        );
    }

    pub(super) fn on_buddy_timer(&mut self, now: Time) {
        let mut buddies = std::mem::take(&mut self.buddies);
        buddies.retain(|_, b| {
            // Still suspected, at the same incarnation? (A refutation or a down ends it.)
            self.swim.iter_membership_state().any(|m| {
                m.id() == &b.id
                    && m.state() == foca::State::Suspect
                    && m.incarnation() == b.incarnation
            })
        });
        for b in buddies.values_mut() {
            self.send_rumour(b.id.addr, &b.id, b.incarnation, false);
            b.sends_left -= 1;
        }
        buddies.retain(|_, b| b.sends_left > 0);
        if !buddies.is_empty() {
            self.schedule(now + ms(self.cfg.buddy_ms), Timer::Buddy);
        }
        self.buddies = buddies;
    }

    fn send_rumour(&mut self, to: SocketAddr, member: &SwimId, incarnation: u16, down: bool) {
        let msg = ColonyMsg::Rumour {
            member: member.clone(),
            incarnation,
            down,
        };
        self.send(to, &msg);
    }

    /// Our suspicion timer declared `id` down: every live member hears it from us at once,
    /// `down_pushes` times `greet_again_ms` apart (foca would spread it by gossip over several
    /// rounds, and its thin epidemic misses some members, who then wait to find out by
    /// probing it themselves: up to a whole probe round, 20 s at 100 nodes). Whoever hears it
    /// first from us also gossips it (foca's `max_transmissions`), which covers a lost push.
    pub(super) fn spread_down(&mut self, id: SwimId, incarnation: u16, now: Time) {
        self.buddies.remove(&id.node);
        let again = self.cfg.down_pushes.saturating_sub(1);
        if again > 0 && self.push_again.len() < MAX_BUDDIES {
            let due = now + ms(self.cfg.greet_again_ms);
            if self.push_again.is_empty() {
                self.schedule(due, Timer::PushAgain);
            }
            self.push_again.push((id.clone(), incarnation, again, due));
        }
        self.push_down(id, incarnation);
    }

    pub(super) fn on_push_again(&mut self, now: Time) {
        let mut pending = std::mem::take(&mut self.push_again);
        let next = now + ms(self.cfg.greet_again_ms);
        for (id, incarnation, left, due) in &mut pending {
            if *due <= now {
                self.push_down(id.clone(), *incarnation);
                *left -= 1;
                *due = next;
            }
        }
        pending.retain(|(_, _, left, _)| *left > 0);
        if let Some(first) = pending.iter().map(|(_, _, _, due)| *due).min() {
            self.schedule(first, Timer::PushAgain);
        }
        self.push_again = pending;
    }

    fn push_down(&mut self, id: SwimId, incarnation: u16) {
        let msg = ColonyMsg::Rumour {
            member: id,
            incarnation,
            down: true,
        };
        let Ok(bytes) = wire::encode_colony(self.cfg.node, &msg) else {
            return;
        };
        let bytes: bytes::Bytes = bytes.into();
        let to: Vec<SocketAddr> = self.live.addrs().collect();
        for addr in to {
            self.send_bytes(addr, bytes.clone());
        }
    }

    /// A rumour: we are suspected (refute, and announce ourselves to the suspecter with the
    /// new incarnation), or a member was declared down (foca applies and re-gossips it).
    pub(super) fn on_rumour(
        &mut self,
        from: NodeId,
        member: SwimId,
        incarnation: u16,
        down: bool,
        now: Time,
    ) {
        let me = self.swim.identity().clone();
        if member.addr == me.addr && member != me {
            // About an identity of ours that is gone: nothing to refute.
            return;
        }
        if member != me && !down {
            return;
        }
        if member == me && !down {
            self.stats.refutations += 1;
        }
        let state = if down {
            foca::State::Down
        } else {
            foca::State::Suspect
        };
        let update = foca::Member::new(member.clone(), incarnation, state);
        let suspecter = self.live.get(&from);
        let result = self.with_swim(now, |swim, rt| {
            swim.apply_many(std::iter::once(update), true, &mut *rt)?;
            match suspecter {
                // Any foca message carries our incarnation; an announce is the one we may
                // address to a given member.
                Some(to) if member == me => swim.announce(to, &mut *rt),
                _ => Ok(()),
            }
        });
        if result.is_err() {
            self.stats.swim_errors += 1;
        }
    }

    /// The hello: a member that comes up in our view (from a seed's list, foca's feed or
    /// gossip) gets a `Members` holding us and itself, so that it learns of us at once.
    ///
    /// Why: a newcomer learns everybody from its seed's answer, but nobody learns of the
    /// newcomer except the seed, whose foca then spreads the join by an epidemic thinned to
    /// `max_transmissions` ≈ 2·log10 n that needs seconds and misses ~e^-max_tx of the
    /// colony (those waited for anti-entropy). Whoever joins a seed after us learns of us
    /// from that seed's list; whoever joined before is in the list we got and hears our
    /// hello. So every pair that shares a seed meets within one round trip
    /// (docs/election.md §11). Every hello is sent `hello_copies` times, `greet_again_ms`
    /// apart: a lost hello would leave the pair to foca's thin epidemic or to anti-entropy,
    /// seconds later.
    fn greet(&mut self, came_up: &[SwimId], now: Time) {
        let skip = match self.greeting {
            Greeting::Off => return,
            Greeting::All => None,
            Greeting::Except(node) => Some(node),
        };
        for m in came_up.iter().filter(|m| Some(m.node) != skip) {
            self.greet_one(m.clone(), now);
        }
    }

    fn greet_one(&mut self, to: SwimId, now: Time) {
        self.send_hello(&to);
        let again = self.cfg.hello_copies.saturating_sub(1);
        if again == 0 || self.greet_again.len() >= MAX_GREET_AGAIN {
            return;
        }
        let due = now + ms(self.cfg.greet_again_ms);
        if self.greet_again.is_empty() {
            self.schedule(due, Timer::GreetAgain);
        }
        self.greet_again.push(to, again, due);
    }

    pub(super) fn on_greet_again(&mut self, now: Time) {
        let mut pending = std::mem::take(&mut self.greet_again);
        let next = now + ms(self.cfg.greet_again_ms);
        for batch in &mut pending.batches {
            if batch.due <= now {
                for to in &batch.to {
                    self.send_hello(to);
                }
                batch.left -= 1;
                batch.due = next;
            }
        }
        pending.batches.retain(|b| b.left > 0);
        pending.len = pending.batches.iter().map(|b| b.to.len()).sum();
        if let Some(first) = pending.batches.iter().map(|b| b.due).min() {
            self.schedule(first, Timer::GreetAgain);
        }
        self.greet_again = pending;
    }

    /// The second join request, with our digest: answered only if the views still differ.
    pub(super) fn on_join_again(&mut self) {
        if let Some(addr) = self.joined_via.take() {
            let digest = self.view_digest();
            let scent = self.own_scent();
            self.send(addr, &ColonyMsg::JoinRequest { digest, scent });
        }
    }

    /// A `Members` holding this node, the member greeted (as we know it: it tells the member
    /// that we know it, so it does not greet back) and our scent.
    fn send_hello(&mut self, to: &SwimId) {
        let hello = ColonyMsg::Members {
            members: vec![self.swim.identity().clone(), to.clone()],
            scents: self.own_scent().into_iter().collect(),
        };
        self.send(to.addr, &hello);
    }

    /// A member list from a peer: an answer to a join or anti-entropy request, or a hello.
    /// Only what we do not already know as alive goes to foca (its member list is searched
    /// linearly). Members that come up are greeted, and so is the sender when its list
    /// lacks us (a seed that has not heard our announce yet, a peer that missed our join).
    pub(super) fn on_members(
        &mut self,
        from: NodeId,
        members: Vec<SwimId>,
        scents: Vec<Scent>,
        now: Time,
    ) {
        let knows_me = members.iter().any(|m| m == self.swim.identity());
        // An answer to a join or anti-entropy request ends with its sender; a hello is
        // [sender, us].
        if members.last().is_some_and(|m| m.node == from) && !self.joined {
            self.joined = true;
            // Two newcomers the same seed answered within a round trip are in neither
            // answer; asking that seed once more a little later closes the race.
            if let Some(addr) = self.addr_of(from) {
                self.joined_via = Some(addr);
                self.schedule(now + ms(self.cfg.greet_again_ms), Timer::JoinAgain);
            }
        }
        let new: Vec<SwimId> = members
            .into_iter()
            .filter(|m| m.node != self.cfg.node && !self.live.is(m))
            .collect();
        let sender_new = new.iter().any(|m| m.node == from);
        if !new.is_empty() {
            if knows_me {
                self.greeting = Greeting::Except(from);
            }
            self.apply_members(&new, now);
            self.greeting = Greeting::All;
        }
        if !knows_me && !sender_new {
            if let Some(sender) = self.live.get(&from) {
                self.greet_one(sender, now);
            }
        }
        for scent in scents {
            if scent.node != self.cfg.node {
                self.scents.merge(scent);
            }
        }
    }

    pub(super) fn on_tick(&mut self, now: Time) {
        let uptime = now.since(self.boot).as_millis() as u64;
        self.gland.tick(uptime, self.cfg.tick_ms);
        self.publish_scent(now, false);
        self.ticks += 1;
        if self
            .ticks
            .is_multiple_of(self.cfg.anti_entropy_ticks.max(1))
            && !self.live.is_empty()
        {
            // Anti-entropy: a full member list from one random peer repairs any update that
            // gossip lost, instead of waiting for foca's periodic announce.
            let pick = self.rng.random_range(0..self.live.len());
            let picked = self.live.addrs().nth(pick);
            if let Some(addr) = picked {
                let digest = self.view_digest();
                let scent = self.own_scent();
                self.send(addr, &ColonyMsg::JoinRequest { digest, scent });
            }
        }
        if self
            .ticks
            .is_multiple_of(self.cfg.anti_entropy_ticks.max(1))
        {
            self.reconnect(now);
        }
        if self.role == Role::Queen {
            self.reconcile_roster(now);
            self.consider_handover(now);
        }
        self.schedule(now + ms(self.cfg.tick_ms), Timer::Tick);
    }

    /// Joining: until a seed answers with its member list, ask every seed for it (and, while
    /// foca knows nobody, announce to them) every `announce_retry_ms`. Foca's feed, the reply
    /// to an announce, holds only the ~60 members that fit one datagram: stopping at the
    /// first member known left a newcomer whose join request was lost knowing a random
    /// part of the colony, and the rest not knowing it, until anti-entropy.
    pub(super) fn on_announce_timer(&mut self, now: Time) {
        if self.joined {
            return;
        }
        let lonely = self.live.is_empty();
        let seeds: Vec<SocketAddr> = self
            .cfg
            .seeds
            .iter()
            .copied()
            .filter(|s| *s != self.cfg.addr)
            .collect();
        for seed in seeds {
            self.ask_to_join(seed, lonely, now);
        }
        let retry = now + ms(self.cfg.announce_retry_ms);
        self.schedule(retry, Timer::Announce);
    }

    /// Like Serf's reconnect: announce to one random node we know of but SWIM does not consider
    /// alive (seeds included), so that two sides of a healed partition, which declared each
    /// other down and forgot each other, merge again.
    fn reconnect(&mut self, now: Time) {
        let seeds_missing = self
            .cfg
            .seeds
            .iter()
            .filter(|s| **s != self.cfg.addr && !self.live.addrs().any(|a| a == **s));
        let mut candidates: Vec<SocketAddr> = seeds_missing.copied().collect();
        candidates.extend(
            self.addrs
                .iter()
                .filter(|(n, _)| !self.live.contains_key(n))
                .map(|(_, a)| *a),
        );
        candidates.retain(|a| *a != self.cfg.addr);
        candidates.sort_unstable();
        candidates.dedup();
        if candidates.is_empty() {
            return;
        }
        let addr = candidates[self.rng.random_range(0..candidates.len())];
        self.ask_to_join(addr, true, now);
    }

    /// Asks the node at `addr`, whose identity is not known yet, to let this one in: a join
    /// request for its member list, preceded by a SWIM announce when `announce` is set (the
    /// announce makes foca learn of us; the request brings the whole colony at once).
    pub(super) fn ask_to_join(&mut self, addr: SocketAddr, announce: bool, now: Time) {
        if announce {
            let dst = SwimId {
                node: NodeId::UNKNOWN,
                addr,
                bump: 0,
            };
            let _ = self.with_swim(now, |swim, rt| swim.announce(dst, rt));
        }
        let scent = self.own_scent();
        self.send(addr, &ColonyMsg::JoinRequest { digest: 0, scent });
    }

    /// An order-independent summary of this node's view: live members (and itself) with their
    /// SWIM bumps, and which of them it holds a scent for. Equal digests ⇒ nothing
    /// to exchange. Never 0 (0 asks for everything).
    fn view_digest(&mut self) -> u64 {
        let generation = (self.members_gen, self.scents.generation());
        if let Some((g, digest)) = self.digest_cache {
            if g == generation {
                return digest;
            }
        }
        let digest = self.compute_view_digest();
        self.digest_cache = Some((generation, digest));
        digest
    }

    fn compute_view_digest(&self) -> u64 {
        fn mix(mut z: u64) -> u64 {
            // splitmix64 finalizer
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        let book = self.scents.lock();
        let me = self.swim.identity();
        let mut digest = 0u64;
        for id in self.live.values().chain(std::iter::once(me.clone())) {
            digest ^= mix(id.node.0 ^ mix(u64::from(id.bump)));
            // Scent *presence*, not its sequence: changes travel as foca broadcasts; the
            // exchange only repairs what a node lacks (with a 1,000-node colony some scent is
            // always changing somewhere, and seq-sensitive digests would never agree).
            if book.contains_key(&id.node) {
                digest ^= mix(id.node.0.rotate_left(17) ^ (1 << 40));
            }
        }
        digest.max(1)
    }

    pub(super) fn on_join_request(&mut self, reply_to: SocketAddr, digest: u64) {
        if digest != 0 && digest == self.view_digest() {
            return;
        }
        let mut all: Vec<SwimId> = self.live.values().collect();
        all.push(self.swim.identity().clone());
        for chunk in all.chunks(MEMBERS_PER_PACKET) {
            let scents = {
                let book = self.scents.lock();
                chunk
                    .iter()
                    .filter_map(|m| book.get(&m.node).map(|e| e.scent(m.node)))
                    .collect()
            };
            let msg = ColonyMsg::Members {
                members: chunk.to_vec(),
                scents,
            };
            self.send(reply_to, &msg);
        }
    }

    fn own_scent(&self) -> Option<Scent> {
        self.scents.get(self.cfg.node)
    }

    /// Publishes our scent when it changed enough (or `force`). The boot scent only goes into
    /// our own book: it travels by the member exchange (pushed in our `JoinRequest`s, pulled by
    /// everyone's), because broadcasting every node's first scent through foca costs
    /// O(n² log n) at cold start. Later changes are foca broadcasts.
    pub(super) fn publish_scent(&mut self, now: Time, force: bool) {
        let scent = Scent {
            node: self.cfg.node,
            seq: self.scent_seq,
            pheromone: self.gland.level(),
            version: self.state.version,
            term: self.term,
            queen: self.role == Role::Queen,
        };
        let stale = match &self.last_scent {
            None => true,
            Some((last, _)) => {
                // Republish on a real change only (25%): anti-entropy carries scents to latecomers,
                // so there is no periodic refresh keeping foca's gossip busy.
                let moved = u64::from(last.pheromone.0.abs_diff(scent.pheromone.0)) * 4
                    > u64::from(last.pheromone.0);
                // A new state version alone does not republish: every node gets one at every
                // roster change, and n republishes cost O(n² log n). Heirs (from the queen's
                // acks) order successors by version; a scent's version is a hint.
                moved || last.queen != scent.queen
            }
        };
        if !(force || stale) {
            return;
        }
        self.scent_seq = self.scent_seq.wrapping_add(1);
        let scent = Scent {
            seq: self.scent_seq,
            ..scent
        };
        if self.last_scent.is_none() {
            self.scents.merge(scent);
            self.last_scent = Some((scent, now));
        } else if self.swim.add_broadcast(&scent.encode()).is_ok() {
            self.last_scent = Some((scent, now));
        }
    }

    pub(super) fn pheromone_of(&self, node: NodeId) -> Pheromone {
        if node == self.cfg.node {
            self.gland.level()
        } else {
            self.scents
                .get(node)
                .map(|s| s.pheromone)
                .unwrap_or_default()
        }
    }
}
