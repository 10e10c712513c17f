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
//!
//! This file owns the one [`Node`] struct, its public API (construction, queries, the driver
//! contract, `set_load`, `add_known_members`, `apply_spec`), the timer kinds and the plumbing
//! every other file uses (clock, schedule, emit, send). The `impl Node` blocks for each
//! responsibility live next door:
//!
//! - `types.rs`: the public data (`Event`, `Persisted`, `Transmit`, `Role`, `AbdicateReason`,
//!   `NotQueen`, `Stats`);
//! - `membership.rs`: foca's runtime glue, member up/down, joining, hellos, the member
//!   exchange, anti-entropy and reconnect (the tick), suspicions told directly and deaths
//!   pushed, scents;
//! - `worker.rs`: obeying a queen: heartbeats, leases, fencing, accepting states and commits;
//! - `candidacy.rs`: standing: eligibility, rank, stand delay, pre-vote and vote rounds, crowning;
//! - `voter.rs`: answering ballots (the rules are the pure `crate::election::judge`);
//! - `reign.rs`: the queen's reign: heartbeat timer, acks and the lease window, heirs, hand-over,
//!   abdication;
//! - `replication.rs`: the colony state and its roster: propose, commit, roster reconciliation;
//! - `registry.rs`: at the queen, capability registration (Describe/Register) and planning; at
//!   every node, the replicas assigned to it;
//! - `health.rs`: replica reports (a node's own, and the queen's colony-wide table), the
//!   healthy roles the queen derives and distributes;
//! - `failures.rs`: at the queen, failed replicas (avoided nodes, backoff) and down nodes held
//!   for stateful replicas, as plan inputs; the moves a plan makes and why;
//! - `split.rs`: two queens in one term after a misconfigured bootstrap: detection and healing;
//! - `dispatch.rs`: which handler each incoming `ColonyMsg` goes to;
//! - `live.rs`: the live members, packed (n² entries in a simulated colony).

mod candidacy;
mod dispatch;
mod failures;
mod health;
mod live;
mod membership;
mod registry;
mod reign;
mod replication;
mod seeds;
mod split;
mod types;
mod voter;
mod worker;

pub use failures::{
    FAILURE_BACKOFF_BASE_MS, FAILURE_BACKOFF_CAP_MS, FAILURE_FORGET_MS, Move, MoveReason,
    failure_backoff_ms,
};
pub use health::{ReplicaRow, healthy_roles};
pub use membership::swim_config;
pub use types::{AbdicateReason, Event, Lane, NotQueen, Persisted, Role, Stats, Transmit};

use bytes::Bytes;
use foca::{Foca, Member, OwnedNotification, PostcardCodec};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;
use swarm_core::spec::ColonySpec;
use swarm_core::swim::{Scent, ScentBook, SwimId};
use swarm_core::wire::{
    self, Assignment, Body, ColonyMsg, ColonyState, Heir, MAX_DATAGRAM_FRAME_BYTES,
    MAX_STREAM_BYTES, Pheromone, Version,
};
use swarm_core::{NodeId, Time};

use crate::config::{Config, ConfigError};
use crate::pheromone::Gland;
use crate::timer::TimerQueue;

use candidacy::Candidacy;
use reign::Reign;
use worker::Lease;

type Swim = Foca<SwimId, PostcardCodec, ChaCha8Rng, ScentBook>;

/// Bound on queued outgoing packets; beyond it the oldest are dropped (UDP semantics).
pub const MAX_OUTBOX: usize = 1 << 20;

/// Bound on queued observability events.
pub const MAX_EVENTS: usize = 1 << 16;

/// Bound on members waiting for their second hello; past it, the second hello is skipped.
pub const MAX_GREET_AGAIN: usize = 1 << 16;

/// Bound on suspected members told so directly; past it, a new suspicion is left to gossip.
pub const MAX_BUDDIES: usize = 1 << 12;

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
    GreetAgain,
    JoinAgain,
    Buddy,
    PushAgain,
}

/// Who gets a hello when foca reports a member up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Greeting {
    /// Every member that comes up.
    All,
    /// Every member but this one (it just greeted us).
    Except(NodeId),
    /// Nobody (members handed in by the driver's discovery).
    Off,
}

#[derive(Clone, Debug)]
struct Tagged {
    incarnation: u32,
    timer: Timer,
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
    live: live::Live,
    /// Where every node we ever heard of listens, when that is not its live SWIM identity's
    /// address (so it holds the members that went down, and no copy of `live`; ordered: we
    /// pick from it at random).
    addrs: BTreeMap<NodeId, SocketAddr>,
    down_since: BTreeMap<NodeId, Time>,

    term: u64,
    voted_for: Option<NodeId>,
    state: ColonyState,
    commit: Version,
    committed_roster: std::sync::Arc<[NodeId]>,

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
    /// Whom a member that comes up greets with a hello (see `membership.rs`); set around
    /// the calls that must not greet.
    greeting: Greeting,
    /// A peer answered our join (or anti-entropy) request with its member list; until then
    /// the node keeps asking its seeds, even once foca's feed made it know some members.
    joined: bool,
    /// Who answered our join, until we asked it once more (`Timer::JoinAgain`).
    joined_via: Option<SocketAddr>,
    /// Suspicions foca raised during the current call (its suspect-to-down timers).
    suspicions: Vec<(SwimId, u16)>,
    /// Members we suspect and tell so (`Timer::Buddy`), by stable id.
    buddies: BTreeMap<NodeId, membership::Buddy>,
    /// Deaths we declared and push again (`Timer::PushAgain`): member, incarnation, pushes
    /// left, next one due.
    push_again: Vec<(SwimId, u16, u8, Time)>,
    /// Members greeted lately: the hellos each still gets and when the next one is due.
    greet_again: membership::GreetAgain,
    /// Cache of [`Node::heartbeat_targets`]; `None` when stale.
    targets: Option<std::sync::Arc<[SocketAddr]>>,
    candidacy: Option<Candidacy>,
    reign: Option<Reign>,
    /// Digest of our own capabilities, sent in every heartbeat ack.
    caps_digest: u32,
    /// What this node was last told to run (from the newest committed state).
    assigned: Vec<Assignment>,
    /// The last rival queen noted in a term (`split.rs`), so each is reported once.
    split_seen: Option<(u64, NodeId)>,
    /// Waiting for a rival queen after a split brain (`split.rs`): no standing meanwhile.
    yielded: Option<split::Yielded>,
    /// The last foreign queen introduced to ours (`split.rs`).
    introduced: Option<(u64, NodeId)>,
    /// This node's replica reports, for its assigned replicas (`health.rs`).
    reports: health::Reports,
    /// The healthy roles as the queen last said, and their digest (sent in every ack).
    healthy_roles: Vec<String>,
    healthy_digest: u32,
}

fn push_bounded(outbox: &mut VecDeque<Transmit>, t: Transmit) -> bool {
    let dropped = outbox.len() >= MAX_OUTBOX;
    if dropped {
        outbox.pop_front();
    }
    outbox.push_back(t);
    !dropped
}

/// Capacity an idle queue keeps.
const IDLE_CAPACITY: usize = 64;

/// Gives back the memory of a burst (a join answer brings every member up at once, and with
/// them a hello and an event each) once the queue is drained: every node keeps these queues,
/// so a burst's capacity held for good costs O(n²) in a simulated colony.
fn shrink_idle<T>(queue: &mut VecDeque<T>) {
    if queue.is_empty() && queue.capacity() > IDLE_CAPACITY {
        queue.shrink_to(IDLE_CAPACITY);
    }
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
            committed_roster: Default::default(),
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
        let swim_cfg = membership::swim_config(&cfg);
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
            live: live::Live::default(),
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
            greeting: Greeting::All,
            greet_again: membership::GreetAgain::default(),
            joined: false,
            joined_via: None,
            suspicions: Vec::new(),
            buddies: BTreeMap::new(),
            push_again: Vec::new(),
            candidacy: None,
            reign: None,
            caps_digest: cfg.caps.digest(),
            assigned: Vec::new(),
            split_seen: None,
            yielded: None,
            introduced: None,
            reports: health::Reports::default(),
            healthy_roles: Vec::new(),
            healthy_digest: 0,
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

    // ---- inputs from the operator and discovery ------------------------------------------

    /// Reports the node's load in `0..=1` (weakens its pheromone).
    pub fn set_load(&mut self, load: f64) {
        self.gland.set_load(load);
    }

    /// Tells foca about members known in advance (from discovery or a previous run), as if a
    /// join-time exchange had delivered them. Nobody is greeted: discovery told them too.
    pub fn add_known_members(&mut self, members: &[SwimId], now: Time) {
        let now = self.clock(now);
        self.greeting = Greeting::Off;
        self.apply_members(members, now);
        self.greeting = Greeting::All;
    }

    /// Members learned from a peer or from discovery go to foca as alive, without a foca
    /// broadcast (the membership exchange spreads them).
    fn apply_members(&mut self, members: &[SwimId], now: Time) {
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

    // ---- driver interface ----------------------------------------------------------------

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let Some(t) = self.outbox.pop_front() else {
            shrink_idle(&mut self.outbox);
            return None;
        };
        self.stats.packets_out += 1;
        Some(t)
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.next_deadline()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event.is_none() {
            shrink_idle(&mut self.events);
        }
        event
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
                    // A suspicion of ours that is about to run out: if it declares the
                    // member down, we tell every member at once.
                    let verdict = match &t {
                        foca::Timer::ChangeSuspectToDown {
                            member_id,
                            incarnation,
                            ..
                        } if self.live.is(member_id) => Some((member_id.clone(), *incarnation)),
                        _ => None,
                    };
                    let queued = self.outbox.len();
                    if self
                        .with_swim(now, |swim, rt| swim.handle_timer(t, rt))
                        .is_err()
                    {
                        self.stats.swim_errors += 1;
                    }
                    if let Some((id, incarnation)) = verdict {
                        if !self.live.is(&id) {
                            self.spread_down(id, incarnation, now);
                        } else {
                            // foca 2.0.0 sends the member `TurnUndead` (with
                            // `notify_down_members`) even when the suspicion was refuted and
                            // nothing went down; the member would then renew its identity and
                            // its old one be declared down everywhere. Only that message goes
                            // to it from this timer.
                            let mut i = queued.min(self.outbox.len());
                            while i < self.outbox.len() {
                                if self.outbox[i].to == id.addr {
                                    self.outbox.remove(i);
                                } else {
                                    i += 1;
                                }
                            }
                        }
                    }
                }
                Timer::Tick => self.on_tick(now),
                Timer::Heartbeat { term } => self.on_heartbeat_timer(term, now),
                Timer::LeaseCheck => self.on_lease_check(now),
                Timer::Stand { epoch } if epoch == self.epoch => self.on_stand_timer(now),
                Timer::RoundTimeout { epoch } if epoch == self.epoch => self.round_failed(now),
                Timer::Stand { .. } | Timer::RoundTimeout { .. } => {}
                Timer::Announce => self.on_announce_timer(now),
                Timer::GreetAgain => self.on_greet_again(now),
                Timer::JoinAgain => self.on_join_again(),
                Timer::Buddy => self.on_buddy_timer(now),
                Timer::PushAgain => self.on_push_again(now),
                Timer::Plan { term } => self.on_plan_timer(term, now),
            }
        }
    }

    pub fn handle_packet(&mut self, from: SocketAddr, packet: &[u8], now: Time) {
        let now = self.clock(now);
        self.stats.packets_in += 1;
        let decoded = match wire::decode(packet, MAX_STREAM_BYTES) {
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
                // foca never sends more than one datagram (its `max_packet_size`).
                if packet.len() > MAX_DATAGRAM_FRAME_BYTES
                    || self
                        .with_swim(now, |swim, rt| swim.handle_data(data, rt))
                        .is_err()
                {
                    self.stats.swim_errors += 1;
                }
            }
            Body::Colony(msg) => {
                // Only the messages that may be large travel on a stream; every other one must
                // fit a datagram, as its sender would have sent it.
                let may_stream = matches!(
                    msg,
                    ColonyMsg::State { .. }
                        | ColonyMsg::Members { .. }
                        | ColonyMsg::Register { .. }
                        | ColonyMsg::ReplicaStatus { .. }
                        | ColonyMsg::RoleHealth { .. }
                );
                if packet.len() > MAX_DATAGRAM_FRAME_BYTES && !may_stream {
                    self.stats.packets_rejected += 1;
                    return;
                }
                if self.live.addr(&decoded.from) == Some(from) {
                    // Where SWIM says it listens: nothing to remember beside that.
                    if self.addrs.remove(&decoded.from).is_some() {
                        self.targets = None;
                    }
                } else if self.addrs.get(&decoded.from) != Some(&from) {
                    self.addrs.insert(decoded.from, from);
                    self.targets = None;
                }
                self.on_colony(decoded.from, from, msg, now);
            }
        }
    }

    // ---- plumbing shared by every file ---------------------------------------------------

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
        if let Ok(bytes) = wire::encode_colony(self.cfg.node, msg) {
            self.send_bytes(to, bytes.into());
        }
    }

    fn send_bytes(&mut self, to: SocketAddr, payload: Bytes) {
        if !push_bounded(&mut self.outbox, Transmit::new(to, payload)) {
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
            .addr(&node)
            .or_else(|| self.addrs.get(&node).copied())
    }

    fn persist(&mut self) {
        self.dirty = true;
    }
}
