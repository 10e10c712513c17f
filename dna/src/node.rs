//! The colony node: one sans-IO state machine that owns SWIM membership (foca), the pheromone
//! gland, the election, the queen's reign and colony-state replication.
//!
//! Inputs: [`Node::handle_packet`], [`Node::handle_timeout`] (each with `now`).
//! Outputs: [`Node::poll_transmit`], [`Node::poll_timeout`], [`Node::poll_persist`] (write it
//! durably before sending what the same step produced), [`Node::poll_event`].
//!
//! Roles: a *worker* obeys the queen of the highest term it has seen while her lease runs; with no
//! live queen it waits a delay that shrinks with its pheromone rank, then runs a pre-vote (which
//! changes nobody's term) and, with a majority, a real vote. A *queen* heartbeats every member,
//! reigns while a majority of the roster keeps acknowledging her, replicates the colony state and
//! commits a version once a majority holds it. See docs/election.md for why this is safe.

use crate::config::{Config, ConfigError};
use crate::election::{self, Ballot, Verdict, VoterView};
use crate::pheromone::Gland;
use crate::quorum::{Quorum, majority};
use crate::timer::TimerQueue;
use bytes::Bytes;
use foca::{Foca, Member, OwnedNotification, PostcardCodec, Runtime};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;
use swarm_core::seal::ColonyKey;
use swarm_core::spec::{ColonySpec, NodeRecord};
use swarm_core::swim::{Scent, ScentBook, SwimId};
use swarm_core::wire::{
    self, Assignment, Body, ColonyMsg, ColonyState, Heir, MAX_DATAGRAM_BYTES, MAX_STREAM_BYTES,
    MEMBERS_PER_PACKET, Pheromone, Version,
};
use swarm_core::{Capabilities, NodeId, Time};

type Swim = Foca<SwimId, PostcardCodec, ChaCha8Rng, ScentBook>;

/// Bound on queued outgoing packets; beyond it the oldest are dropped (UDP semantics).
pub const MAX_OUTBOX: usize = 1 << 20;
/// Bound on queued observability events.
pub const MAX_EVENTS: usize = 1 << 16;
/// Heartbeats remembered for lease accounting.
const LEASE_WINDOW: usize = 16;

/// A packet for the driver to send.
#[derive(Clone, Debug)]
pub struct Transmit {
    pub to: SocketAddr,
    pub payload: Bytes,
}

/// What a node must keep across restarts. The driver writes it durably when polled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub node: NodeId,
    /// Restart count: tags timers and renews the SWIM identity.
    pub incarnation: u32,
    pub term: u64,
    /// The vote given in `term`, if any (at most one vote per term, even across restarts).
    pub voted_for: Option<NodeId>,
    /// Newest colony state accepted.
    pub state: ColonyState,
    /// Newest version known committed.
    pub commit: Version,
    /// Roster of the newest committed version.
    pub committed_roster: Vec<NodeId>,
    pub restart_penalty: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Role {
    Worker,
    Candidate,
    Queen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AbdicateReason {
    /// No majority of the roster acknowledged her for a whole queen lease.
    LostMajority,
    /// She saw a higher term.
    Superseded,
    /// She handed the crown to a fitter heir.
    Handover,
}

/// Observable happenings, for logs, metrics and the simulator's invariant checker.
/// Times are the node's own clock.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    MemberUp(NodeId),
    MemberDown(NodeId),
    Stood {
        term: u64,
        pre: bool,
    },
    /// `inherited` is the newest state version she held when the colony chose her.
    Crowned {
        term: u64,
        roster: usize,
        inherited: Version,
    },
    /// The queen's own lease now runs until `until`.
    Reigns {
        term: u64,
        until: Time,
    },
    Abdicated {
        term: u64,
        reason: AbdicateReason,
    },
    /// A worker accepted a heartbeat: it obeys `queen` of `term` until `until`.
    Obeyed {
        term: u64,
        queen: NodeId,
        until: Time,
    },
    /// The replicas this node must run changed (from a committed colony state).
    Assigned {
        version: Version,
        assignments: Vec<Assignment>,
    },
    /// The queen published a new plan (not yet committed).
    Planned {
        version: Version,
        assigned: usize,
        unplaced: usize,
    },
    /// A worker's lease ran out without renewal.
    QueenLost {
        term: u64,
        queen: NodeId,
    },
    Accepted {
        version: Version,
        digest: u64,
    },
    Committed {
        version: Version,
        digest: u64,
    },
}

#[derive(Clone, Debug)]
enum Timer {
    Foca(foca::Timer<SwimId>),
    Tick,
    Heartbeat { term: u64 },
    LeaseCheck,
    Stand { epoch: u64 },
    RoundTimeout { epoch: u64 },
    Announce,
    Plan { term: u64 },
}

#[derive(Clone, Debug)]
struct Tagged {
    incarnation: u32,
    timer: Timer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    PreVote,
    Vote,
    Handover,
}

#[derive(Clone, Copy, Debug)]
struct Lease {
    term: u64,
    queen: NodeId,
    until: Time,
}

#[derive(Debug)]
struct Candidacy {
    pre: bool,
    term: u64,
    handover: bool,
    quorum: Quorum,
    grants: BTreeSet<NodeId>,
}

#[derive(Debug, Default)]
struct Follower {
    accepted: Version,
    last_ack: Time,
    state_sent: Option<(Version, Time)>,
}

#[derive(Debug)]
struct Reign {
    crowned_at: Time,
    hb_seq: u64,
    /// (seq, send time, who acknowledged it, quorum reached)
    sent: VecDeque<(u64, Time, BTreeSet<NodeId>, bool)>,
    lease_until: Option<Time>,
    quorum: Quorum,
    followers: BTreeMap<NodeId, Follower>,
    version_acks: BTreeSet<NodeId>,
    /// Heirs named in every heartbeat, re-ranked every fourth one.
    heirs: Vec<Heir>,
    fitter_since: Option<(NodeId, Time)>,
    /// Capabilities each node registered with this queen (or inherited from the state), with
    /// their digest. Bounded by the members she knows of.
    registry: BTreeMap<NodeId, (u32, Capabilities)>,
    /// When a [`ColonyMsg::Describe`] last went to each node (one per two heartbeats at most).
    described: BTreeMap<NodeId, Time>,
    /// A spec applied by the operator, waiting for the state version in flight to commit.
    pending_spec: Option<ColonySpec>,
    /// The inputs of the plan changed; a [`Timer::Plan`] is armed.
    plan_armed: bool,
}

/// [`Node::apply_spec`] on a node that is not the queen. `queen` is the one it obeys, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this node is not the queen (queen: {queen:?})")]
pub struct NotQueen {
    pub queen: Option<NodeId>,
}

impl Reign {
    /// Every live member has registered its capabilities with her.
    fn knows_all(&self, live: &BTreeMap<NodeId, SwimId>) -> bool {
        live.keys().all(|n| self.registry.contains_key(n))
    }
}

/// Counters a driver may export as metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub packets_in: u64,
    pub packets_rejected: u64,
    pub swim_errors: u64,
    pub packets_out: u64,
    pub dropped_out: u64,
}

pub struct Node {
    cfg: Config,
    incarnation: u32,
    boot: Time,
    /// After a restart the node neither votes nor stands until this time (see election.rs).
    fenced_until: Time,
    /// When this node last gave its real vote (to `voted_for`).
    voted_at: Option<Time>,
    last_now: Time,
    rng: ChaCha8Rng,
    swim: Swim,
    scents: ScentBook,
    scent_seq: u32,
    last_scent: Option<(Scent, Time)>,
    gland: Gland,
    timers: TimerQueue<Tagged>,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    notes: Vec<OwnedNotification<SwimId>>,
    dirty: bool,
    stats: Stats,

    /// Live members per SWIM, by stable id.
    live: BTreeMap<NodeId, SwimId>,
    /// Where every node we ever heard of listens (ordered: we pick from it at random).
    addrs: BTreeMap<NodeId, SocketAddr>,
    down_since: BTreeMap<NodeId, Time>,

    term: u64,
    voted_for: Option<NodeId>,
    state: ColonyState,
    commit: Version,
    committed_roster: Vec<NodeId>,

    role: Role,
    lease: Option<Lease>,
    last_hb_seq: u64,
    queenless_since: Option<Time>,
    lost_queen: Option<NodeId>,
    heirs: Vec<Heir>,
    epoch: u64,
    /// Consecutive failed pre-vote/vote rounds (reset by a heartbeat or a crown).
    failed_rounds: u32,
    /// The next stand timer must compute our rank first (we were not eligible until now).
    rank_first: bool,
    ticks: u64,
    /// Bumped whenever foca reports a membership change.
    members_gen: u64,
    /// (members_gen, scent generation) → view digest.
    digest_cache: Option<((u64, u64), u64)>,
    /// Cache of [`Node::heartbeat_targets`]; `None` when stale.
    targets: Option<std::sync::Arc<[SocketAddr]>>,
    candidacy: Option<Candidacy>,
    reign: Option<Reign>,
    /// Digest of our own capabilities, sent in every heartbeat ack.
    caps_digest: u32,
    /// What this node was last told to run (from the newest committed state).
    assigned: Vec<Assignment>,
}

/// foca's runtime, writing into the node's queues.
struct Rt<'a> {
    node: NodeId,
    key: &'a ColonyKey,
    now: Time,
    incarnation: u32,
    outbox: &'a mut VecDeque<Transmit>,
    timers: &'a mut TimerQueue<Tagged>,
    notes: &'a mut Vec<OwnedNotification<SwimId>>,
}

impl Runtime<SwimId> for Rt<'_> {
    fn notify(&mut self, notification: foca::Notification<'_, SwimId>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: SwimId, data: &[u8]) {
        let payload = wire::encode_swim(self.node, data, self.key);
        push_bounded(
            self.outbox,
            Transmit {
                to: to.addr,
                payload: payload.into(),
            },
        );
    }

    fn submit_after(&mut self, event: foca::Timer<SwimId>, after: Duration) {
        self.timers.push(
            self.now + after,
            Tagged {
                incarnation: self.incarnation,
                timer: Timer::Foca(event),
            },
        );
    }
}

fn push_bounded(outbox: &mut VecDeque<Transmit>, t: Transmit) -> bool {
    let dropped = outbox.len() >= MAX_OUTBOX;
    if dropped {
        outbox.pop_front();
    }
    outbox.push_back(t);
    !dropped
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Node {
    /// A node booting at `now`. `disk` is what it persisted before (none on first boot);
    /// `seed` seeds its only RNG.
    pub fn new(
        cfg: Config,
        disk: Option<Persisted>,
        now: Time,
        seed: u64,
    ) -> Result<Node, ConfigError> {
        cfg.validate()?;
        if let Some(d) = &disk {
            if d.node != cfg.node {
                return Err(ConfigError(format!(
                    "persisted state belongs to node {}, not {}",
                    d.node, cfg.node
                )));
            }
        }
        let rebooted = disk.is_some();
        let disk = disk.unwrap_or(Persisted {
            node: cfg.node,
            incarnation: 0,
            term: 0,
            voted_for: None,
            state: ColonyState::default(),
            commit: Version::default(),
            committed_roster: Vec::new(),
            restart_penalty: 0.0,
        });
        let incarnation = if rebooted {
            disk.incarnation.wrapping_add(1)
        } else {
            0
        };
        let penalty = disk.restart_penalty + if rebooted { 1.0 } else { 0.0 };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let swim_rng = ChaCha8Rng::seed_from_u64(rng.random());
        let identity = SwimId {
            node: cfg.node,
            addr: cfg.addr,
            bump: incarnation as u16,
        };
        let size = NonZeroU32::new(cfg.cluster_size_hint.max(2)).unwrap_or(NonZeroU32::MIN);
        let mut swim_cfg = foca::Config::new_lan(size);
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
        let scents = ScentBook::default();
        let swim = Foca::with_custom_broadcast(
            identity,
            swim_cfg,
            swim_rng,
            PostcardCodec,
            scents.clone(),
        );
        let gland = Gland::new(&cfg.caps, cfg.queen_affinity, penalty);
        let mut node = Node {
            incarnation,
            boot: now,
            voted_at: None,
            fenced_until: if rebooted {
                now + ms(cfg.lease_ms)
            } else {
                now
            },
            last_now: now,
            rng,
            swim,
            scents,
            scent_seq: incarnation.wrapping_mul(1 << 16),
            last_scent: None,
            gland,
            timers: TimerQueue::default(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            notes: Vec::new(),
            dirty: true,
            stats: Stats::default(),
            live: BTreeMap::new(),
            addrs: BTreeMap::new(),
            down_since: BTreeMap::new(),
            term: disk.term,
            voted_for: disk.voted_for,
            state: disk.state,
            commit: disk.commit,
            committed_roster: disk.committed_roster,
            role: Role::Worker,
            lease: None,
            last_hb_seq: 0,
            queenless_since: Some(now),
            lost_queen: None,
            heirs: Vec::new(),
            epoch: 0,
            failed_rounds: 0,
            rank_first: true,
            ticks: 0,
            targets: None,
            members_gen: 0,
            digest_cache: None,
            candidacy: None,
            reign: None,
            caps_digest: cfg.caps.digest(),
            assigned: Vec::new(),
            cfg,
        };
        if node.state.version == node.commit {
            // After a restart: run again what the colony last committed for us.
            node.refresh_assigned();
        }
        node.publish_scent(now, true);
        node.schedule(now, Timer::Tick);
        node.schedule(now, Timer::Announce);
        let first_look = now + ms(node.cfg.stand_base_ms);
        node.schedule(first_look, Timer::Stand { epoch: 0 });
        Ok(node)
    }

    // ---- queries -------------------------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.cfg.node
    }
    pub fn addr(&self) -> SocketAddr {
        self.cfg.addr
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }
    pub fn state(&self) -> &ColonyState {
        &self.state
    }
    pub fn committed(&self) -> Version {
        self.commit
    }
    pub fn pheromone(&self) -> Pheromone {
        self.gland.level()
    }
    pub fn stats(&self) -> Stats {
        self.stats
    }
    /// Members SWIM considers alive, not counting this node.
    pub fn live_members(&self) -> usize {
        self.live.len()
    }
    /// The queen this node obeys at `now` (a queen names herself while her lease holds).
    pub fn queen(&self, now: Time) -> Option<(u64, NodeId)> {
        match (&self.reign, &self.lease) {
            (Some(r), _) if r.lease_until.is_some_and(|u| u > now) => {
                Some((self.term, self.cfg.node))
            }
            (None, Some(l)) if l.until > now => Some((l.term, l.queen)),
            _ => None,
        }
    }

    /// The last queen this worker obeyed and when her lease runs (or ran) out, even if expired.
    pub fn last_lease(&self) -> Option<(u64, NodeId, Time)> {
        self.lease.map(|l| (l.term, l.queen, l.until))
    }

    /// Reports the node's load in `0..=1` (weakens its pheromone).
    pub fn set_load(&mut self, load: f64) {
        self.gland.set_load(load);
    }

    /// Tells foca about members known in advance (from discovery or a previous run), as if a
    /// join-time exchange had delivered them.
    pub fn add_known_members(&mut self, members: &[SwimId], now: Time) {
        let now = self.clock(now);
        let me = self.cfg.addr;
        let list: Vec<Member<SwimId>> = members
            .iter()
            .filter(|m| m.addr != me)
            .cloned()
            .map(Member::alive)
            .collect();
        if self
            .with_swim(now, |swim, rt| swim.apply_many(list.into_iter(), false, rt))
            .is_err()
        {
            self.stats.swim_errors += 1;
        }
    }

    // ---- driver interface ----------------------------------------------------------------

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.outbox.pop_front()?;
        self.stats.packets_out += 1;
        Some(t)
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.next_deadline()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_persist(&mut self) -> Option<Persisted> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(Persisted {
            node: self.cfg.node,
            incarnation: self.incarnation,
            term: self.term,
            voted_for: self.voted_for,
            state: self.state.clone(),
            commit: self.commit,
            committed_roster: self.committed_roster.clone(),
            restart_penalty: self.gland.penalty(),
        })
    }

    pub fn handle_timeout(&mut self, now: Time) {
        let now = self.clock(now);
        while let Some(tagged) = self.timers.pop_due(now) {
            if tagged.incarnation != self.incarnation {
                debug_assert!(false, "timer from another incarnation");
                continue;
            }
            match tagged.timer {
                Timer::Foca(t) => {
                    if self
                        .with_swim(now, |swim, rt| swim.handle_timer(t, rt))
                        .is_err()
                    {
                        self.stats.swim_errors += 1;
                    }
                }
                Timer::Tick => self.on_tick(now),
                Timer::Heartbeat { term } => self.on_heartbeat_timer(term, now),
                Timer::LeaseCheck => self.on_lease_check(now),
                Timer::Stand { epoch } if epoch == self.epoch => self.on_stand_timer(now),
                Timer::RoundTimeout { epoch } if epoch == self.epoch => self.round_failed(now),
                Timer::Stand { .. } | Timer::RoundTimeout { .. } => {}
                Timer::Announce => self.on_announce_timer(now),
                Timer::Plan { term } => self.on_plan_timer(term, now),
            }
        }
    }

    pub fn handle_packet(&mut self, from: SocketAddr, packet: &[u8], now: Time) {
        let now = self.clock(now);
        self.stats.packets_in += 1;
        let decoded = match wire::decode(packet, &self.cfg.key, MAX_STREAM_BYTES) {
            Ok(d) => d,
            Err(_) => {
                self.stats.packets_rejected += 1;
                return;
            }
        };
        if decoded.from == self.cfg.node {
            self.stats.packets_rejected += 1;
            return;
        }
        match decoded.body {
            Body::Swim(data) => {
                if data.len() > MAX_DATAGRAM_BYTES
                    || self
                        .with_swim(now, |swim, rt| swim.handle_data(data, rt))
                        .is_err()
                {
                    self.stats.swim_errors += 1;
                }
            }
            Body::Colony(msg) => {
                // Only a colony-state transfer (a stream in the agent) may exceed a datagram.
                let is_state = matches!(msg, ColonyMsg::State { .. });
                if packet.len() > MAX_DATAGRAM_BYTES && !is_state {
                    self.stats.packets_rejected += 1;
                    return;
                }
                if self.addrs.get(&decoded.from) != Some(&from) {
                    self.addrs.insert(decoded.from, from);
                    self.targets = None;
                }
                self.on_colony(decoded.from, from, msg, now);
            }
        }
    }

    // ---- plumbing ------------------------------------------------------------------------

    /// The node's clock never runs backwards, whatever the driver passes.
    fn clock(&mut self, now: Time) -> Time {
        self.last_now = self.last_now.max(now);
        self.last_now
    }

    fn schedule(&mut self, at: Time, timer: Timer) {
        self.timers.push(
            at,
            Tagged {
                incarnation: self.incarnation,
                timer,
            },
        );
    }

    fn emit(&mut self, event: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn send(&mut self, to: SocketAddr, msg: &ColonyMsg) {
        if let Ok(bytes) = wire::encode_colony(self.cfg.node, msg, &self.cfg.key) {
            self.send_bytes(to, bytes.into());
        }
    }

    fn send_bytes(&mut self, to: SocketAddr, payload: Bytes) {
        if !push_bounded(&mut self.outbox, Transmit { to, payload }) {
            self.stats.dropped_out += 1;
        }
    }

    fn send_to_node(&mut self, node: NodeId, msg: &ColonyMsg) {
        if let Some(addr) = self.addr_of(node) {
            self.send(addr, msg);
        }
    }

    fn addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        self.live
            .get(&node)
            .map(|id| id.addr)
            .or_else(|| self.addrs.get(&node).copied())
    }

    fn with_swim<R>(&mut self, now: Time, f: impl FnOnce(&mut Swim, &mut Rt<'_>) -> R) -> R {
        let mut rt = Rt {
            node: self.cfg.node,
            key: &self.cfg.key,
            now,
            incarnation: self.incarnation,
            outbox: &mut self.outbox,
            timers: &mut self.timers,
            notes: &mut self.notes,
        };
        let result = f(&mut self.swim, &mut rt);
        self.process_notes(now);
        result
    }

    fn process_notes(&mut self, now: Time) {
        let notes = std::mem::take(&mut self.notes);
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
                    self.addrs.insert(id.node, id.addr);
                    self.down_since.remove(&id.node);
                    if self.live.insert(id.node, id.clone()).is_none() {
                        self.emit(Event::MemberUp(id.node));
                    }
                }
                OwnedNotification::MemberDown(id) => {
                    if self.live.get(&id.node) == Some(&id) {
                        self.live.remove(&id.node);
                        self.down_since.insert(id.node, now);
                        self.emit(Event::MemberDown(id.node));
                    }
                }
                OwnedNotification::Rejoin(_) => self.gland.suspected(),
                OwnedNotification::Idle => self.schedule(now, Timer::Announce),
                OwnedNotification::Active | OwnedNotification::Defunct => {}
            }
        }
    }

    fn persist(&mut self) {
        self.dirty = true;
    }

    // ---- membership ----------------------------------------------------------------------

    fn on_announce_timer(&mut self, now: Time) {
        if !self.live.is_empty() {
            return;
        }
        let seeds: Vec<SocketAddr> = self
            .cfg
            .seeds
            .iter()
            .copied()
            .filter(|s| *s != self.cfg.addr)
            .collect();
        for seed in seeds {
            let dst = SwimId {
                node: NodeId::UNKNOWN,
                addr: seed,
                bump: 0,
            };
            let _ = self.with_swim(now, |swim, rt| swim.announce(dst, rt));
            let scent = self.own_scent();
            self.send(seed, &ColonyMsg::JoinRequest { digest: 0, scent });
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
            .filter(|s| **s != self.cfg.addr && !self.live.values().any(|id| id.addr == **s));
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
        let dst = SwimId {
            node: NodeId::UNKNOWN,
            addr,
            bump: 0,
        };
        let _ = self.with_swim(now, |swim, rt| swim.announce(dst, rt));
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
        for id in self.live.values().chain(std::iter::once(me)) {
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

    fn on_join_request(&mut self, reply_to: SocketAddr, digest: u64) {
        if digest != 0 && digest == self.view_digest() {
            return;
        }
        let mut all: Vec<SwimId> = self.live.values().cloned().collect();
        all.push(self.swim.identity().clone());
        for chunk in all.chunks(MEMBERS_PER_PACKET) {
            let scents = {
                let book = self.scents.lock();
                chunk
                    .iter()
                    .filter_map(|m| book.get(&m.node).copied())
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
    fn publish_scent(&mut self, now: Time, force: bool) {
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

    fn pheromone_of(&self, node: NodeId) -> Pheromone {
        if node == self.cfg.node {
            self.gland.level()
        } else {
            self.scents
                .get(node)
                .map(|s| s.pheromone)
                .unwrap_or_default()
        }
    }

    // ---- housekeeping --------------------------------------------------------------------

    fn on_tick(&mut self, now: Time) {
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
            if let Some(addr) = self.live.values().nth(pick).map(|id| id.addr) {
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

    // ---- worker: obeying -----------------------------------------------------------------

    /// Whether `from` is the queen of `term` this worker last obeyed.
    fn obeys(&self, from: NodeId, term: u64) -> bool {
        self.lease
            .is_some_and(|l| l.term == term && l.queen == from)
    }

    fn lease_valid(&self, now: Time) -> bool {
        self.lease.is_some_and(|l| l.until > now)
    }

    fn adopt_term(&mut self, term: u64, now: Time) {
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

    fn become_worker(&mut self, now: Time) {
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
    fn on_heartbeat(
        &mut self,
        from: NodeId,
        reply_to: SocketAddr,
        term: u64,
        seq: u64,
        lease_ms: u32,
        commit: Version,
        heirs: Vec<Heir>,
        now: Time,
    ) {
        if term < self.term {
            self.ack(reply_to, seq);
            return;
        }
        if term > self.term {
            self.adopt_term(term, now);
        }
        match self.role {
            Role::Queen => return, // one queen per term: this cannot be another queen of ours
            Role::Candidate => self.become_worker(now),
            Role::Worker => {}
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
        };
        self.send(to, &msg);
    }

    fn on_lease_check(&mut self, now: Time) {
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

    fn on_state(
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

    // ---- candidacy -----------------------------------------------------------------------

    fn in_roster(&self, node: NodeId) -> bool {
        self.state.roster.binary_search(&node).is_ok()
            || self.committed_roster.binary_search(&node).is_ok()
    }

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

    /// The candidate we gave our real vote to within the last `heartbeat_ms + round_timeout_ms`
    /// (time enough for her crown and first heartbeat to reach us), if we obey no one yet.
    fn just_voted_for(&self, now: Time) -> Option<NodeId> {
        let window = ms(self.cfg.heartbeat_ms + self.cfg.round_timeout_ms);
        let at = self.voted_at?;
        (now.since(at) < window && !self.lease_valid(now)).then_some(self.voted_for?)
    }

    /// A live member whose scent says she reigns in our term or a later one.
    fn reigning_queen_scent(&self) -> Option<SwimId> {
        let book = self.scents.lock();
        self.live
            .values()
            .find(|id| {
                book.get(&id.node)
                    .is_some_and(|s| s.queen && s.term >= self.term)
            })
            .cloned()
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
            .filter_map(|n| book.get(n))
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

    fn schedule_stand(&mut self, now: Time) {
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

    /// Everyone in the latest or the committed roster.
    fn roster_union(&self) -> BTreeSet<NodeId> {
        self.state
            .roster
            .iter()
            .chain(&self.committed_roster)
            .copied()
            .collect()
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
    fn on_stand_timer(&mut self, now: Time) {
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
    fn stand(&mut self, now: Time, mode: Mode) {
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
        if let Ok(bytes) = wire::encode_colony(self.cfg.node, &msg, &self.cfg.key) {
            let bytes = Bytes::from(bytes);
            for addr in self.voters() {
                self.send_bytes(addr, bytes.clone());
            }
        }
    }

    fn round_failed(&mut self, now: Time) {
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
    fn queen_elsewhere(&mut self, queen: SwimId, now: Time) {
        if queen.node == self.cfg.node || !self.candidacy.as_ref().is_some_and(|c| c.pre) {
            return;
        }
        self.candidacy = None;
        self.role = Role::Worker;
        self.epoch += 1;
        let _ = self.with_swim(now, |swim, rt| swim.announce(queen, rt));
        let wait = self.cfg.lease_ms + self.rng.random_range(0..=self.cfg.lease_ms);
        let epoch = self.epoch;
        self.schedule(now + ms(wait), Timer::Stand { epoch });
    }

    fn on_vote_reply(&mut self, from: NodeId, term: u64, granted: bool, pre: bool, now: Time) {
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

    fn on_ballot(&mut self, reply_to: SocketAddr, ballot: Ballot, now: Time) {
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
                    self.lease.and_then(|l| self.live.get(&l.queen).cloned())
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

    // ---- queen ---------------------------------------------------------------------------

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
        });
        self.emit(Event::Crowned {
            term: self.term,
            roster: self.state.roster.len(),
            inherited,
        });
        self.commit_if_alone();
        self.publish_scent(now, true);
        self.on_heartbeat_timer(self.term, now);
        // The first plan waits for registrations (see `on_plan_timer`).
        self.want_plan(now, self.cfg.plan_delay_ms);
    }

    // ---- queen: registration and planning -------------------------------------------------

    /// A worker's ack carries its capabilities digest; ask for the details when they are new.
    fn check_registered(
        &mut self,
        from: NodeId,
        reply_to: SocketAddr,
        term: u64,
        caps: u32,
        now: Time,
    ) {
        if self.role != Role::Queen || term != self.term {
            return;
        }
        let every = ms(self.cfg.heartbeat_ms * 2);
        let Some(reign) = &mut self.reign else { return };
        if reign.registry.get(&from).is_some_and(|(d, _)| *d == caps) {
            return;
        }
        if reign
            .described
            .get(&from)
            .is_some_and(|at| now.since(*at) < every)
        {
            return;
        }
        reign.described.insert(from, now);
        self.send(reply_to, &ColonyMsg::Describe { term });
    }

    fn on_register(&mut self, from: NodeId, term: u64, caps: Capabilities, now: Time) {
        if self.role != Role::Queen || term != self.term {
            return;
        }
        if !caps.is_well_formed() || !(self.live.contains_key(&from) || self.in_roster(from)) {
            self.stats.packets_rejected += 1;
            return;
        }
        let Some(reign) = &mut self.reign else { return };
        let digest = caps.digest();
        if reign.registry.get(&from).is_some_and(|(d, _)| *d == digest) {
            return;
        }
        reign.registry.insert(from, (digest, caps));
        reign.described.remove(&from);
        let waiting = now.since(reign.crowned_at) < ms(self.cfg.register_wait_ms);
        let everyone = reign.knows_all(&self.live);
        let planning = reign.pending_spec.is_some() || self.state.spec.is_some();
        if waiting && everyone && planning {
            // The last registration the first plan waited for: plan now, not at the deadline
            // (the timer armed for the deadline then finds nothing left to do).
            let term = self.term;
            self.schedule(now + ms(self.cfg.plan_delay_ms), Timer::Plan { term });
        } else {
            self.want_plan(now, self.cfg.plan_delay_ms);
        }
    }

    /// The operator's colony spec. Only the queen takes it; it is planned and replicated like
    /// any other state change (`Event::Planned`, then `Event::Committed`).
    pub fn apply_spec(&mut self, spec: ColonySpec, now: Time) -> Result<(), NotQueen> {
        let now = self.clock(now);
        let queen = self.lease.filter(|l| l.until > now).map(|l| l.queen);
        let Some(reign) = self.reign.as_mut().filter(|_| self.role == Role::Queen) else {
            return Err(NotQueen { queen });
        };
        reign.pending_spec = Some(spec);
        self.want_plan(now, self.cfg.plan_delay_ms);
        Ok(())
    }

    /// Notes that the plan's inputs changed and arms the plan timer if it is not armed.
    fn want_plan(&mut self, now: Time, delay_ms: u64) {
        if self.role != Role::Queen {
            return;
        }
        let term = self.term;
        let Some(reign) = &mut self.reign else { return };
        if reign.plan_armed || (reign.pending_spec.is_none() && self.state.spec.is_none()) {
            return;
        }
        reign.plan_armed = true;
        self.schedule(now + ms(delay_ms), Timer::Plan { term });
    }

    fn on_plan_timer(&mut self, term: u64, now: Time) {
        if self.role != Role::Queen || term != self.term {
            return;
        }
        let Some(reign) = &mut self.reign else { return };
        reign.plan_armed = false;
        let waited = now.since(reign.crowned_at) >= ms(self.cfg.register_wait_ms);
        if !waited && !reign.knows_all(&self.live) {
            // More registrations are on their way: plan at the deadline, or when the last one
            // arrives (`on_register`), whichever comes first.
            let deadline = reign.crowned_at + ms(self.cfg.register_wait_ms);
            reign.plan_armed = true;
            self.schedule(deadline, Timer::Plan { term });
            return;
        }
        if self.state.version != self.commit {
            // One change in flight at a time: look again shortly.
            reign.plan_armed = true;
            self.schedule(now + ms(self.cfg.plan_delay_ms), Timer::Plan { term });
            return;
        }
        let me = self.cfg.node;
        // Forget nodes that are neither alive nor voting members (bounds the registry).
        let roster = &self.state.roster;
        let keep =
            |n: &NodeId| *n == me || self.live.contains_key(n) || roster.binary_search(n).is_ok();
        reign.registry.retain(|n, _| keep(n));
        reign.described.retain(|n, _| keep(n));
        let nodes: Vec<NodeRecord> = reign
            .registry
            .iter()
            .filter(|(n, _)| **n == me || self.live.contains_key(n))
            .map(|(n, (_, caps))| NodeRecord {
                node: *n,
                caps: caps.clone(),
            })
            .collect();
        let fresh_spec = reign.pending_spec.take();
        let Some(spec) = fresh_spec.as_ref().or(self.state.spec.as_ref()) else {
            return;
        };
        let plan = crate::plan::plan(spec, &nodes, &self.state.assignments);
        let unchanged = fresh_spec.is_none()
            && nodes == self.state.nodes
            && plan.assignments == self.state.assignments
            && plan.unplaced == self.state.unplaced;
        if unchanged {
            return;
        }
        let mut next = self.state.clone();
        next.version.seq += 1;
        if let Some(spec) = fresh_spec {
            next.spec_version += 1;
            next.spec = Some(spec);
        }
        next.nodes = nodes;
        next.assignments = plan.assignments;
        next.unplaced = plan.unplaced;
        let (assigned, unplaced) = (next.assignments.len(), next.unplaced.len());
        self.emit(Event::Planned {
            version: next.version,
            assigned,
            unplaced,
        });
        self.propose(next, now);
    }

    /// The replicas assigned to this node by the newest committed state; emits
    /// [`Event::Assigned`] when they changed.
    fn refresh_assigned(&mut self) {
        let me = self.cfg.node;
        let mine: Vec<Assignment> = self
            .state
            .assignments
            .iter()
            .filter(|a| a.node == me)
            .cloned()
            .collect();
        if mine != self.assigned {
            self.assigned = mine.clone();
            self.emit(Event::Assigned {
                version: self.commit,
                assignments: mine,
            });
        }
    }

    fn set_state(&mut self, next: ColonyState) {
        let digest = next.digest();
        self.emit(Event::Accepted {
            version: next.version,
            digest,
        });
        self.targets = None;
        self.state = next;
        self.persist();
    }

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

    fn on_heartbeat_timer(&mut self, term: u64, now: Time) {
        if self.role != Role::Queen || term != self.term {
            return;
        }
        let queen_lease = ms(self.cfg.queen_lease_ms);
        let Some(reign) = &mut self.reign else { return };
        let lease_end = reign.lease_until.unwrap_or(reign.crowned_at + queen_lease);
        if lease_end <= now {
            return self.abdicate(AbdicateReason::LostMajority, now);
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
        let next = now + ms(self.cfg.heartbeat_ms);
        self.schedule(next, Timer::Heartbeat { term });
    }

    fn broadcast(&mut self, msg: &ColonyMsg) {
        let Ok(bytes) = wire::encode_colony(self.cfg.node, msg, &self.cfg.key) else {
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

    fn on_ack(
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
        let latest = self.state.version;
        let Some(reign) = &mut self.reign else { return };
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
    }

    fn commit_latest(&mut self) {
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
    }

    /// Adds members that answer heartbeats, removes members down for long; one change in flight.
    fn reconcile_roster(&mut self, now: Time) {
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

    /// Makes `next` the queen's newest state and replicates it to everyone.
    fn propose(&mut self, next: ColonyState, now: Time) {
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
    fn commit_if_alone(&mut self) {
        let alone = self
            .reign
            .as_ref()
            .is_some_and(|r| r.quorum.is_met(&r.version_acks));
        if alone && self.state.version > self.commit {
            self.commit_latest();
        }
    }

    fn consider_handover(&mut self, now: Time) {
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

    fn abdicate(&mut self, reason: AbdicateReason, now: Time) {
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

    // ---- dispatch ------------------------------------------------------------------------

    fn on_colony(&mut self, from: NodeId, reply_to: SocketAddr, msg: ColonyMsg, now: Time) {
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
                if let (false, Some(queen)) = (granted, queen) {
                    self.queen_elsewhere(queen, now);
                } else {
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
                commit,
                heirs,
                .. // `latest`: a lagging worker shows in its ack and gets the state then
            } => {
                self.on_heartbeat(
                    from, reply_to, term, seq, lease_ms, commit, heirs, now,
                );
            }
            ColonyMsg::HeartbeatAck {
                term,
                seq,
                accepted,
                caps,
            } => {
                self.on_ack(from, reply_to, term, seq, accepted, now);
                self.check_registered(from, reply_to, term, caps, now);
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
            ColonyMsg::Members { members, scents } => {
                if members.len() <= MEMBERS_PER_PACKET && scents.len() <= MEMBERS_PER_PACKET {
                    // Only what we do not already know as alive goes to foca (its member
                    // list is searched linearly).
                    let new: Vec<SwimId> = members
                        .into_iter()
                        .filter(|m| self.live.get(&m.node) != Some(m))
                        .collect();
                    if !new.is_empty() {
                        self.add_known_members(&new, now);
                    }
                    for scent in scents {
                        if scent.node != self.cfg.node {
                            self.scents.merge(scent);
                        }
                    }
                }
            }
        }
    }
}

fn follower_needs_state(
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
