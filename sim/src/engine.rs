//! The discrete-event engine: virtual time, one seeded RNG (ChaCha8), an event queue ordered by
//! (time, sequence number), a simulated network (latency, loss, duplication, reordering,
//! partitions, one-way cuts), crashes and restarts (a restart keeps what the node persisted),
//! and clock skew. It drives the very same `dna::Node` (and so foca) the agent runs.
//!
//! Same seed ⇒ same event sequence: the trace hash folds every processed event in order.

use crate::checker::Checker;
use crate::report::{EventMoves, Moves, Roles};
use crate::report::{Failover, QueenRecord, Report};
use crate::scenario::{Action, ChaosSpec, RestartTarget, Scenario, Target, TimedEvent};
use bytes::Bytes;
use dna::{Config, Event, Node, Persisted, Role};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::collections::{BTreeSet, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use swarm_core::seal::ColonyKey;
use swarm_core::spec::ColonySpec;
use swarm_core::swim::SwimId;
use swarm_core::wire::{Assignment, Version};
use swarm_core::{Capabilities, NodeId, Time};

const PORT: u16 = 7946;
/// Node clocks start here so that negative skew never underflows.
const CLOCK_BASE_US: u64 = 1_000_000_000;
/// How often the engine samples colony-wide properties (membership convergence).
const SAMPLE_US: u64 = 100_000;
/// After the last disturbance, the colony must have converged to one queen within this long.
pub const SETTLE_US: u64 = 20_000_000;
/// ... at least once (sampled every `SAMPLE_US`) within the final window of the run: a hand-over
/// or a lost heartbeat may make any single instant look unsettled.
pub const CONVERGE_WINDOW_US: u64 = 5_000_000;
/// Bound on in-flight events (a runaway would otherwise eat the machine).
pub const MAX_QUEUE: usize = 50_000_000;
/// Bound on timeline lines kept for the readable report.
const MAX_TIMELINE: usize = 10_000;

/// Knobs beyond the scenario.
#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: usize,
    pub seed: u64,
    pub duration_us: u64,
    /// Give every node the full member list at boot (as from discovery) instead of joining
    /// through seeds; needed for very large colonies.
    pub preload_membership: bool,
    pub timeline: bool,
    /// Print diagnostics to stderr at the end (members known per node, messages by kind,
    /// ballots per second, nodes not following the queen).
    pub debug: bool,
    /// A colony spec handed to the first queen (and to any later queen whose state has none).
    pub spec: Option<std::sync::Arc<ColonySpec>>,
}

pub fn addr_of(index: usize) -> SocketAddr {
    let ip = u32::from(Ipv4Addr::new(10, 0, 0, 0)) + 1 + index as u32;
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), PORT))
}

fn index_of(addr: SocketAddr, nodes: usize) -> Option<usize> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    let i = u32::from(*v4.ip()).checked_sub(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + 1)? as usize;
    (i < nodes && v4.port() == PORT).then_some(i)
}

enum Kind {
    Boot { node: usize },
    Deliver { to: u32, from: u32, payload: Bytes },
    Wake { node: u32, incarnation: u32 },
    Scenario { index: usize },
    Chaos,
    Sample,
}

struct Ev {
    at: u64,
    seq: u64,
    kind: Kind,
}
impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct SimNode {
    id: NodeId,
    cfg: Config,
    /// Boxed: the engine moves it in and out on every event.
    node: Option<Box<Node>>,
    disk: Option<Persisted>,
    offset_us: i64,
    wake_at: Option<u64>,
    crashed_at: Option<u64>,
}

impl SimNode {
    fn local(&self, global: u64) -> Time {
        Time((CLOCK_BASE_US + global).saturating_add_signed(self.offset_us))
    }
    fn global(&self, local: Time) -> u64 {
        local
            .0
            .saturating_add_signed(-self.offset_us)
            .saturating_sub(CLOCK_BASE_US)
    }
}

struct Net {
    latency: (u64, u64),
    base_loss: f64,
    loss: f64,
    duplicate: f64,
    reorder: f64,
    /// Partition group per node; `None` = no partition in force.
    groups: Option<Vec<Option<u32>>>,
    oneway: Vec<(BTreeSet<usize>, BTreeSet<usize>)>,
}

impl Net {
    fn cut(&self, from: usize, to: usize) -> bool {
        if let Some(groups) = &self.groups {
            match (groups[from], groups[to]) {
                (Some(a), Some(b)) if a == b => {}
                _ => return true,
            }
        }
        self.oneway
            .iter()
            .any(|(f, t)| f.contains(&from) && t.contains(&to))
    }
    fn healthy(&self) -> bool {
        self.groups.is_none() && self.oneway.is_empty()
    }
}

pub struct Sim {
    opts: Options,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Ev>>,
    nodes: Vec<SimNode>,
    net: Net,
    events: Vec<TimedEvent>,
    chaos: Option<ChaosSpec>,
    checker: Checker,
    trace: u64,
    processed: u64,
    messages: u64,
    bytes: u64,
    last_disturbance: u64,
    membership_converged: Option<u64>,
    queens: Vec<QueenRecord>,
    failovers: Vec<Failover>,
    timeline: Vec<String>,
    debug: bool,
    /// The colony was seen converged at some sample in the final window.
    converged_in_window: bool,
    kinds: std::collections::BTreeMap<usize, (u64, u64)>,
    /// Node id → simulation index.
    index_by_id: HashMap<NodeId, usize>,
    /// A queen that must be handed the spec once the engine has her in hand.
    spec_due: Option<usize>,
    plans: Plans,
}

/// What the engine tracks about plans (only with a colony spec).
#[derive(Default)]
struct Plans {
    /// (role, replica) → node of the newest plan a queen committed.
    placed: BTreeMap<(String, u32), NodeId>,
    /// The newest version whose plan was checked (each version once: one version, one content).
    checked: BTreeSet<Version>,
    last_version: Version,
    committed: usize,
    assigned: usize,
    unplaced: Vec<String>,
    unplaced_count: usize,
    moves: Moves,
    /// The scenario event moves are attributed to.
    cause: Option<(u64, String)>,
}

fn mix(h: u64, x: u64) -> u64 {
    (h ^ x).wrapping_mul(0x100_0000_01b3).rotate_left(29)
}

impl Sim {
    pub fn new(scenario: &Scenario, opts: Options) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let key = ColonyKey::from_passphrase("aware-sim");
        let n = opts.nodes;
        let seeds: Vec<SocketAddr> = (0..n.min(3)).map(addr_of).collect();
        let mut ids = BTreeSet::new();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut id = NodeId(rng.random::<u64>() | 1);
            while !ids.insert(id) {
                id = NodeId(rng.random::<u64>() | 1);
            }
            let mut cfg = Config::new(id, addr_of(i), key.clone());
            cfg.seeds = seeds.clone();
            cfg.bootstrap_expect = scenario.bootstrap_expect.unwrap_or(n).max(1);
            cfg.cluster_size_hint = u32::try_from(n).unwrap_or(u32::MAX);
            cfg.caps = random_caps(&mut rng);
            if let Some(class) = scenario
                .capabilities
                .iter()
                .rev()
                .find(|c| c.nodes.binary_search(&i).is_ok())
            {
                cfg.caps = class.caps.clone();
            }
            nodes.push(SimNode {
                id,
                cfg,
                node: None,
                disk: None,
                offset_us: 0,
                wake_at: None,
                crashed_at: None,
            });
        }
        let net = &scenario.network;
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            net: Net {
                latency: (
                    net.latency_min_us,
                    net.latency_max_us.max(net.latency_min_us),
                ),
                base_loss: net.loss,
                loss: net.loss,
                duplicate: net.duplicate,
                reorder: net.reorder,
                groups: None,
                oneway: Vec::new(),
            },
            events: scenario.events.clone(),
            chaos: scenario.chaos.clone(),
            checker: Checker::default(),
            trace: 0xcbf2_9ce4_8422_2325,
            processed: 0,
            messages: 0,
            bytes: 0,
            last_disturbance: 0,
            membership_converged: None,
            queens: Vec::new(),
            failovers: Vec::new(),
            timeline: Vec::new(),
            debug: opts.debug,
            converged_in_window: false,
            kinds: Default::default(),
            index_by_id: HashMap::new(),
            spec_due: None,
            plans: Plans::default(),
            opts,
        };
        sim.index_by_id = sim
            .nodes
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        for i in 0..n {
            let at = if scenario.start_spread_us > 0 {
                sim.rng.random_range(0..scenario.start_spread_us)
            } else {
                0
            };
            sim.push(at, Kind::Boot { node: i });
        }
        for index in 0..sim.events.len() {
            let at = sim.events[index].at_us;
            sim.push(at, Kind::Scenario { index });
        }
        if let Some(chaos) = &sim.chaos {
            let at = chaos.from_us;
            sim.push(at, Kind::Chaos);
        }
        sim.push(0, Kind::Sample);
        sim
    }

    fn push(&mut self, at: u64, kind: Kind) {
        if self.queue.len() >= MAX_QUEUE {
            return;
        }
        self.seq += 1;
        self.queue.push(Reverse(Ev {
            at: at.max(self.now),
            seq: self.seq,
            kind,
        }));
    }

    fn note(&mut self, line: String) {
        if self.opts.timeline && self.timeline.len() < MAX_TIMELINE {
            self.timeline
                .push(format!("{:>9.3}s  {line}", self.now as f64 / 1e6));
        }
    }

    /// Runs to the end and returns the report (wall time and memory are filled by the caller).
    pub fn run(mut self) -> Report {
        let end = self.opts.duration_us;
        while let Some(Reverse(ev)) = self.queue.pop() {
            if ev.at > end {
                break;
            }
            self.now = ev.at;
            self.processed += 1;
            self.trace = mix(mix(self.trace, ev.at), ev.seq);
            self.dispatch(ev.kind);
        }
        self.now = end;
        self.finish()
    }

    fn dispatch(&mut self, kind: Kind) {
        match kind {
            Kind::Boot { node } => self.boot(node),
            Kind::Deliver { to, from, payload } => {
                let (to, from) = (to as usize, addr_of(from as usize));
                let tag = payload.len().checked_sub(8).map_or(0, |s| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&payload[s..]);
                    u64::from_le_bytes(b)
                });
                self.trace = mix(mix(self.trace, to as u64), tag);
                let now = self.now;
                let sn = &mut self.nodes[to];
                let local = sn.local(now);
                if let Some(node) = &mut sn.node {
                    node.handle_packet(from, &payload, local);
                    self.drain(to);
                }
            }
            Kind::Wake { node, incarnation } => {
                let node = node as usize;
                let now = self.now;
                let sn = &mut self.nodes[node];
                let local = sn.local(now);
                let Some(n) = &mut sn.node else { return };
                if n.incarnation() != incarnation || sn.wake_at != Some(now) {
                    return;
                }
                sn.wake_at = None;
                n.handle_timeout(local);
                self.drain(node);
            }
            Kind::Scenario { index } => {
                let action = self.events[index].action.clone();
                self.apply(action);
            }
            Kind::Chaos => self.chaos_step(),
            Kind::Sample => self.sample(),
        }
    }

    fn boot(&mut self, i: usize) {
        let now = self.now;
        let seed = self.rng.random::<u64>();
        let sn = &mut self.nodes[i];
        let local = sn.local(now);
        let restart = sn.disk.is_some();
        match Node::new(sn.cfg.clone(), sn.disk.clone(), local, seed) {
            Ok(mut node) => {
                if self.opts.preload_membership && !restart {
                    let all: Vec<SwimId> = self
                        .nodes
                        .iter()
                        .enumerate()
                        .map(|(j, s)| SwimId {
                            node: s.id,
                            addr: addr_of(j),
                            bump: 0,
                        })
                        .collect();
                    node.add_known_members(&all, local);
                }
                let sn = &mut self.nodes[i];
                sn.node = Some(Box::new(node));
                sn.crashed_at = None;
                sn.wake_at = None;
                if restart {
                    self.checker.on_restart(i);
                    self.note(format!("node {i} restarts"));
                }
                self.drain(i);
            }
            Err(e) => {
                let what = format!("node {i} cannot boot: {e}");
                self.checker.violate(now, what);
            }
        }
    }

    /// Collects everything a node wants done after an input.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        let Some(mut node) = self.nodes[i].node.take() else {
            return;
        };
        if let Some(p) = node.poll_persist() {
            self.nodes[i].disk = Some(p);
        }
        while let Some(event) = node.poll_event() {
            self.on_node_event(i, &node, event);
        }
        if self.spec_due.take() == Some(i) {
            if let Some(spec) = &self.opts.spec {
                let local = self.nodes[i].local(now);
                if node.apply_spec((**spec).clone(), local).is_ok() {
                    self.note(format!("node {i} is given the colony spec `{}`", spec.name));
                }
            }
        }
        while let Some(t) = node.poll_transmit() {
            self.transmit(i, t.to, t.payload);
        }
        let sn = &mut self.nodes[i];
        if let Some(deadline) = node.poll_timeout() {
            let at = sn.global(deadline).max(now);
            if sn.wake_at.is_none_or(|w| at < w) {
                sn.wake_at = Some(at);
                let incarnation = node.incarnation();
                sn.node = Some(node);
                self.push(
                    at,
                    Kind::Wake {
                        node: i as u32,
                        incarnation,
                    },
                );
                return;
            }
        }
        sn.node = Some(node);
    }

    fn on_node_event(&mut self, i: usize, node: &Node, event: Event) {
        let sn = &self.nodes[i];
        let offset = sn.offset_us;
        let to_global = |t: Time| {
            t.0.saturating_add_signed(-offset)
                .saturating_sub(CLOCK_BASE_US)
        };
        self.checker.on_event(self.now, i, sn.id, &event, to_global);
        match event {
            Event::Crowned { term, roster, .. } => {
                self.queens.push(QueenRecord {
                    term,
                    node: i,
                    id: format!("{:?}", sn.id),
                    crowned_s: secs(self.now),
                    deposed_s: None,
                    ended_by: None,
                    roles_assigned_s: None,
                });
                if self.opts.spec.is_some() && node.state().spec.is_none() {
                    self.spec_due = Some(i);
                }
                for f in self
                    .failovers
                    .iter_mut()
                    .filter(|f| f.new_queen_s.is_none() && f.term < term)
                {
                    f.new_queen_s = Some(secs(self.now));
                }
                self.note(format!(
                    "node {i} crowned queen of term {term} (roster {roster})"
                ));
            }
            Event::Abdicated { term, reason } => {
                self.depose(i, term, format!("{reason:?}"));
                self.note(format!("node {i} abdicates term {term}: {reason:?}"));
            }
            Event::Stood { pre, .. } if self.debug => {
                let second = self.now / 1_000_000;
                let e = self
                    .kinds
                    .entry(1000 + second as usize + if pre { 0 } else { 100_000 })
                    .or_insert((0, 0));
                e.0 += 1;
            }
            Event::QueenLost { term, .. } => {
                let now = secs(self.now);
                for f in self
                    .failovers
                    .iter_mut()
                    .filter(|f| f.detected_s.is_none() && f.term == term)
                {
                    f.detected_s = Some(now);
                }
            }
            Event::Committed { version, .. } => {
                if node.role() == Role::Queen {
                    self.note(format!(
                        "node {i} commits colony state {version} (roster {})",
                        node.state().roster.len()
                    ));
                }
                self.on_commit(i, node, version);
            }
            _ => {}
        }
    }

    /// Checks a committed plan once per version (no over-commit, every placement feasible,
    /// registered capabilities true) and, at the queen, tracks moves and time to assignment.
    fn on_commit(&mut self, i: usize, node: &Node, version: Version) {
        let state = node.state();
        let Some(spec) = &state.spec else { return };
        if self.plans.checked.insert(version) {
            if let Err(e) = dna::plan::check(spec, &state.nodes, &state.assignments) {
                self.checker.violate(
                    self.now,
                    format!("committed plan {version} is invalid: {e}"),
                );
            }
            for r in &state.nodes {
                let real = self
                    .index_by_id
                    .get(&r.node)
                    .map(|&j| &self.nodes[j].cfg.caps);
                if real != Some(&r.caps) {
                    self.checker.violate(
                        self.now,
                        format!(
                            "plan {version} uses capabilities node {:?} does not have",
                            r.node
                        ),
                    );
                }
            }
        }
        if node.role() != Role::Queen || version <= self.plans.last_version {
            return;
        }
        self.plans.last_version = version;
        // Moves: a replica whose node changed since the last committed plan.
        let mut placed = BTreeMap::new();
        let (mut forced, mut churn) = (0, 0);
        for Assignment {
            role,
            replica,
            node: to,
            ..
        } in &state.assignments
        {
            let key = (role.clone(), *replica);
            if let Some(from) = self.plans.placed.get(&key).filter(|f| *f != to) {
                let running = self
                    .index_by_id
                    .get(from)
                    .is_some_and(|&j| self.nodes[j].node.is_some());
                if running {
                    churn += 1;
                } else {
                    forced += 1;
                }
            }
            placed.insert(key, *to);
        }
        self.plans.placed = placed;
        self.plans.committed += 1;
        self.plans.assigned = state.assignments.len();
        self.plans.unplaced_count = state.unplaced.len();
        self.plans.unplaced = state
            .unplaced
            .iter()
            .take(20)
            .map(|u| format!("{}#{}: {}", u.role, u.replica, u.reason))
            .collect();
        self.plans.unplaced.extend(
            (state.unplaced.len() > 20)
                .then(|| format!("... and {} more", state.unplaced.len() - 20)),
        );
        if forced + churn > 0 {
            let moves = &mut self.plans.moves;
            moves.forced += forced;
            moves.churn += churn;
            let (at, what) = self
                .plans
                .cause
                .clone()
                .unwrap_or((0, "cold start".to_owned()));
            match moves.by_event.last_mut() {
                Some(e) if e.event == what && e.at_s == secs(at) => {
                    e.forced += forced;
                    e.churn += churn;
                }
                _ => moves.by_event.push(EventMoves {
                    at_s: secs(at),
                    event: what,
                    forced,
                    churn,
                }),
            }
        }
        // Time to assignment: the first plan of this queen covering every running node.
        let covered = self.nodes.iter().all(|sn| {
            sn.node.is_none() || state.nodes.binary_search_by_key(&sn.id, |r| r.node).is_ok()
        });
        if covered {
            let now = secs(self.now);
            if let Some(q) = self
                .queens
                .iter_mut()
                .rev()
                .find(|q| q.node == i && q.term == version.term && q.roles_assigned_s.is_none())
            {
                q.roles_assigned_s = Some(now - q.crowned_s);
            }
        }
    }

    fn depose(&mut self, i: usize, term: u64, why: String) {
        let now = secs(self.now);
        if let Some(q) = self
            .queens
            .iter_mut()
            .rev()
            .find(|q| q.node == i && q.term == term && q.deposed_s.is_none())
        {
            q.deposed_s = Some(now);
            q.ended_by = Some(why);
        }
    }

    fn transmit(&mut self, from: usize, to: SocketAddr, payload: Bytes) {
        self.messages += 1;
        if self.debug {
            let kind = if payload.get(2) == Some(&1) {
                100
            } else {
                payload.get(11).copied().unwrap_or(255) as usize
            };
            let e = self.kinds.entry(kind).or_insert((0, 0));
            e.0 += 1;
            e.1 += payload.len() as u64;
        }
        self.bytes += payload.len() as u64;
        let Some(to) = index_of(to, self.nodes.len()) else {
            return;
        };
        if self.net.cut(from, to) || self.rng.random_bool(self.net.loss.clamp(0.0, 1.0)) {
            return;
        }
        let copies = if self.rng.random_bool(self.net.duplicate.clamp(0.0, 1.0)) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let (lo, hi) = self.net.latency;
            let mut delay = self.rng.random_range(lo..=hi);
            if self.rng.random_bool(self.net.reorder.clamp(0.0, 1.0)) {
                delay += self.rng.random_range(0..=hi.max(1) * 4);
            }
            self.push(
                self.now + delay,
                Kind::Deliver {
                    to: to as u32,
                    from: from as u32,
                    payload: payload.clone(),
                },
            );
        }
    }

    fn current_queen(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, sn)| {
                sn.node
                    .as_ref()
                    .filter(|n| n.role() == Role::Queen)
                    .map(|n| (n.term(), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    fn crash(&mut self, i: usize) {
        let Some(node) = self.nodes[i].node.take() else {
            return;
        };
        let now = self.now;
        self.nodes[i].crashed_at = Some(now);
        self.nodes[i].wake_at = None;
        if node.role() == Role::Queen {
            self.depose(i, node.term(), "crash".to_owned());
            self.failovers.push(Failover {
                term: node.term(),
                queen_lost_s: secs(now),
                detected_s: None,
                new_queen_s: None,
            });
            self.note(format!("node {i} (queen of term {}) crashes", node.term()));
        } else {
            self.note(format!("node {i} crashes"));
        }
    }

    fn apply(&mut self, action: Action) {
        self.last_disturbance = self.now;
        if self.opts.spec.is_some() {
            let what = match &action {
                Action::Crash(Target::Queen) => match self.current_queen() {
                    Some(q) => format!("crash queen (node {q})"),
                    None => "crash queen (none)".to_owned(),
                },
                other => format!("{other:?}"),
            };
            self.plans.cause = Some((self.now, what));
        }
        match action {
            Action::Crash(Target::Queen) => match self.current_queen() {
                Some(q) => self.crash(q),
                None => self.note("crash: queen — there is no queen to crash".to_owned()),
            },
            Action::Crash(Target::Nodes(list)) => {
                for i in list {
                    if i < self.nodes.len() {
                        self.crash(i);
                    }
                }
            }
            Action::Restart(target) => {
                let list: Vec<usize> = match target {
                    RestartTarget::Crashed => (0..self.nodes.len())
                        .filter(|i| {
                            self.nodes[*i].node.is_none() && self.nodes[*i].crashed_at.is_some()
                        })
                        .collect(),
                    RestartTarget::Nodes(l) => l,
                };
                for i in list {
                    if i < self.nodes.len() && self.nodes[i].node.is_none() {
                        self.boot(i);
                    }
                }
            }
            Action::Partition(groups) => {
                let mut g = vec![None; self.nodes.len()];
                for (gi, group) in groups.iter().enumerate() {
                    for &i in group {
                        if let Some(slot) = g.get_mut(i) {
                            *slot = Some(gi as u32);
                        }
                    }
                }
                self.note(format!("partition into {} groups", groups.len()));
                self.net.groups = Some(g);
            }
            Action::OneWay { from, to } => {
                self.note(format!(
                    "one-way cut from {} nodes to {} nodes",
                    from.len(),
                    to.len()
                ));
                self.net
                    .oneway
                    .push((from.into_iter().collect(), to.into_iter().collect()));
            }
            Action::Loss(p) => {
                self.note(format!("loss set to {p}"));
                self.net.loss = p;
            }
            Action::Skew { node, offset_us } => {
                if let Some(sn) = self.nodes.get_mut(node) {
                    sn.offset_us = offset_us;
                    self.note(format!("node {node} clock offset {offset_us}µs"));
                }
            }
            Action::Heal => {
                self.note("network heals".to_owned());
                self.net.groups = None;
                self.net.oneway.clear();
                self.net.loss = self.net.base_loss;
            }
        }
    }

    /// Random faults between `from` and `until`; at `until` everything heals and restarts.
    fn chaos_step(&mut self) {
        let Some(chaos) = self.chaos.clone() else {
            return;
        };
        let n = self.nodes.len();
        if self.now >= chaos.until_us {
            self.apply(Action::Heal);
            self.apply(Action::Restart(RestartTarget::Crashed));
            return;
        }
        let roll = self.rng.random_range(0..100u32);
        let crashed = self.nodes.iter().filter(|s| s.node.is_none()).count();
        let action = match roll {
            0..=19 => Action::Crash(Target::Queen),
            20..=34 if crashed < n / 3 => {
                Action::Crash(Target::Nodes(vec![self.rng.random_range(0..n)]))
            }
            35..=49 => Action::Restart(RestartTarget::Crashed),
            50..=64 => {
                let cut = self.rng.random_range(1..n.max(2));
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    let j = self.rng.random_range(0..=i);
                    order.swap(i, j);
                }
                Action::Partition(vec![order[..cut].to_vec(), order[cut..].to_vec()])
            }
            65..=72 => {
                let a = self.rng.random_range(0..n);
                let b = self.rng.random_range(0..n);
                Action::OneWay {
                    from: vec![a],
                    to: vec![b],
                }
            }
            73..=79 => Action::Loss(self.rng.random_range(0.0..0.3)),
            80..=87 if chaos.max_skew_us > 0 => {
                let max = i64::try_from(chaos.max_skew_us).unwrap_or(i64::MAX);
                Action::Skew {
                    node: self.rng.random_range(0..n),
                    offset_us: self.rng.random_range(-max..=max),
                }
            }
            _ => Action::Heal,
        };
        self.apply(action);
        let mean = chaos.mean_interval_us.max(1) as f64;
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let next = self.now + ((-u.ln()) * mean) as u64;
        self.push(next.min(chaos.until_us), Kind::Chaos);
    }

    fn sample(&mut self) {
        if self.membership_converged.is_none() {
            let live: Vec<usize> = (0..self.nodes.len())
                .filter(|i| self.nodes[*i].node.is_some())
                .collect();
            let all_booted = live.len() == self.nodes.len();
            let full = live.iter().all(|i| {
                self.nodes[*i]
                    .node
                    .as_ref()
                    .is_some_and(|n| n.live_members() + 1 >= live.len())
            });
            if all_booted && full {
                self.membership_converged = Some(self.now);
                self.note(format!(
                    "membership converged: all {} nodes know each other",
                    live.len()
                ));
            }
        }
        if self.now + CONVERGE_WINDOW_US >= self.opts.duration_us
            && self.net.healthy()
            && !self.converged_in_window
        {
            let (queens, strays, running) = self.convergence();
            self.converged_in_window = running > 0 && queens == 1 && strays.is_empty();
        }
        let next = self.now + SAMPLE_US;
        self.push(next, Kind::Sample);
    }

    /// (queens, running nodes not following the one queen, running nodes). Converged means
    /// exactly one queen with a valid lease, and every other running node following her and
    /// having heard from her within the last two seconds (a worker may sit between two lost
    /// heartbeats at any given instant).
    fn convergence(&self) -> (usize, Vec<usize>, usize) {
        let now = self.now;
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].node.is_some())
            .collect();
        let queens: Vec<(u64, NodeId)> = running
            .iter()
            .filter_map(|i| {
                let sn = &self.nodes[*i];
                sn.node
                    .as_ref()
                    .filter(|n| n.role() == Role::Queen)
                    .map(|n| (n.term(), n.id()))
            })
            .collect();
        let strays: Vec<usize> = match queens.as_slice() {
            [(term, queen)] => running
                .iter()
                .copied()
                .filter(|i| {
                    let sn = &self.nodes[*i];
                    let Some(n) = sn.node.as_ref() else {
                        return false;
                    };
                    if n.id() == *queen {
                        return n.queen(sn.local(now)).is_none();
                    }
                    let recent = sn.local(now.saturating_sub(2_000_000));
                    !n.last_lease()
                        .is_some_and(|(t, q, until)| t == *term && q == *queen && until >= recent)
                })
                .collect(),
            _ => running.clone(),
        };
        (queens.len(), strays, running.len())
    }

    fn finish(mut self) -> Report {
        if self.debug {
            let known: Vec<usize> = self
                .nodes
                .iter()
                .filter_map(|s| s.node.as_ref().map(|n| n.live_members()))
                .collect();
            eprintln!(
                "known members per node: min {:?} max {:?}",
                known.iter().min(),
                known.iter().max()
            );
            eprintln!(
                "messages by kind (100 = swim, else ColonyMsg variant): {:?}",
                self.kinds
            );
        }
        // Convergence: long enough after the last disturbance, with a healed network, exactly one
        // queen must reign and every running node must obey her.
        let settled = self.net.healthy()
            && self.now >= self.last_disturbance + SETTLE_US
            && self.now >= SETTLE_US;
        if settled && !self.converged_in_window {
            let now = self.now;
            let (queens, strays, running) = self.convergence();
            if running > 0 {
                if self.debug {
                    for i in &strays {
                        let sn = &self.nodes[*i];
                        if let Some(n) = sn.node.as_ref() {
                            eprintln!(
                                "stray node {i}: role {:?} term {} last lease {:?}",
                                n.role(),
                                n.term(),
                                n.last_lease()
                            );
                        }
                    }
                }
                let what = format!(
                    "colony did not converge to one queen after healing (not once in the last {}s): at the end {queens} queens, {} of {running} running nodes not following her",
                    CONVERGE_WINDOW_US / 1_000_000,
                    strays.len()
                );
                self.checker.violate(now, what);
            }
        }
        Report {
            nodes: self.nodes.len(),
            seed: self.opts.seed,
            simulated_s: secs(self.now),
            wall_s: 0.0,
            peak_rss_mb: None,
            events: self.processed,
            trace_hash: format!("{:016x}", self.trace),
            membership_converged_s: self.membership_converged.map(secs),
            first_queen_s: self.queens.first().map(|q| q.crowned_s),
            roles_assigned_s: self
                .queens
                .iter()
                .filter_map(|q| q.roles_assigned_s)
                .reduce(f64::max),
            roles: self.opts.spec.as_ref().map(|spec| Roles {
                spec: spec.name.clone(),
                plans: self.plans.committed,
                assigned: self.plans.assigned,
                unplaced: self.plans.unplaced_count,
                unplaced_reasons: self.plans.unplaced.clone(),
                moves: self.plans.moves.clone(),
            }),
            queens: self.queens,
            failovers: self.failovers,
            violations: self.checker.violations,
            messages: crate::report::Messages {
                count: self.messages,
                bytes: self.bytes,
            },
            timeline: self.timeline,
        }
    }
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// A heterogeneous rack: small and large nodes, some with GPUs.
fn random_caps(rng: &mut ChaCha8Rng) -> Capabilities {
    let cores = [4u32, 8, 16, 32, 64][rng.random_range(0..5)];
    Capabilities {
        cpu_millis: cores * 1000,
        memory_mib: u64::from(cores) * 4096,
        disk_mib: rng.random_range(100..2000) * 1024,
        gpus: if rng.random_bool(0.2) {
            rng.random_range(1..=4)
        } else {
            0
        },
        ..Capabilities::default()
    }
}
