//! The discrete-event engine: virtual time, one seeded RNG (ChaCha8), an event queue ordered by
//! (time, sequence number), a simulated network (latency, loss, duplication, reordering,
//! partitions, one-way cuts), crashes and restarts (a restart keeps what the node persisted),
//! each node's monotonic clock (`crate::clock`: drift, and steps for explicit tests) and process
//! pauses (held sends, a bounded receive buffer, no timers; see the scenario module doc). It
//! drives the very same `dna::Node` (and so foca) the agent runs.
//!
//! Same seed ⇒ same event sequence: the trace hash folds every processed event in order.
//!
//! With a colony spec, `workload.rs` models each node's runtime (replica reports) and checks
//! what the colony does with replicas (failed ones move, exclusions hold, stateful ones wait,
//! health converges).

mod workload;

use crate::checker::Checker;
use crate::clock::Clock;
use crate::link::Link;
use crate::queue::EventQueue;
use crate::report::{Detection, EventMoves, Moves, Roles, Traffic};
use crate::report::{Failover, QueenRecord, Report};
use crate::scenario::{
    Action, ChaosSpec, DriftRate, RestartTarget, Scenario, Target, TimedEvent, Who,
};
use crate::series::{MarkKind, Series};
use bytes::Bytes;
use dna::{Config, Event, Lane, Node, Persisted, Role, Transmit};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::collections::{BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use swarm_core::spec::ColonySpec;
use swarm_core::swim::SwimId;
use swarm_core::wire::{Assignment, MAX_DATAGRAM_BYTES, ReplicaState, SEAL_RESERVE_BYTES, Version};
use swarm_core::{Capabilities, NodeId, Time};
use workload::{DEFAULT_REPLICA_START_US, Workloads};

const PORT: u16 = 7946;
/// A paused node's receive buffer holds this many payload bytes (Linux's default
/// `net.core.rmem_default`); packets that arrive when it is full are dropped, as by a full UDP
/// socket. (The kernel also charges per-packet overhead, so a real buffer holds fewer small
/// packets: this errs towards delivering more stale packets, the harder case.)
pub const RX_BUFFER_BYTES: usize = 212_992;
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
/// Stream throughput: 125 bytes per µs is 1 Gbit/s.
const STREAM_BYTES_PER_US: u64 = 125;
/// A stream frame hit by a loss roll arrives this many worst-case latencies later (QUIC's
/// loss detection and retransmission).
const STREAM_RETRANSMIT_LATENCIES: u64 = 3;
/// Bound on the per-(sender, receiver) stream ordering table; past it, pairs with nothing in
/// flight are forgotten.
const MAX_STREAM_PAIRS: usize = 1 << 16;
/// A `MemberDown` is false when its subject is running and has not crashed for this long, and
/// no partition or cut has separated the pair for this long (a stale rumour of a real death
/// may legitimately arrive late).
pub const FALSE_DOWN_GRACE_US: u64 = 30_000_000;
/// Bound on the crash detections the engine tracks per run (later crashes are not tracked).
const MAX_DETECTIONS: usize = 10_000;

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

/// The simulation index of the node listening on `addr` (the inverse of [`addr_of`]).
pub fn index_of(addr: SocketAddr, nodes: usize) -> Option<usize> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    let i = u32::from(*v4.ip()).checked_sub(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + 1)? as usize;
    (i < nodes && v4.port() == PORT).then_some(i)
}

enum Kind {
    Boot {
        node: usize,
    },
    Deliver {
        to: u32,
        from: u32,
        payload: Bytes,
    },
    Wake {
        node: u32,
        incarnation: u32,
    },
    /// A paused node resumes.
    Resume {
        node: u32,
        incarnation: u32,
    },
    Scenario {
        index: usize,
    },
    Chaos,
    Sample,
    /// A modelled replica finished starting.
    Ready {
        node: u32,
        incarnation: u32,
        role: String,
        replica: u32,
    },
    /// Queued replica reports are due at a node.
    Reports {
        node: u32,
        incarnation: u32,
    },
}

struct SimNode {
    id: NodeId,
    cfg: Config,
    /// Boxed: the engine moves it in and out on every event.
    node: Option<Box<Node>>,
    disk: Option<Persisted>,
    clock: Clock,
    wake_at: Option<u64>,
    crashed_at: Option<u64>,
    /// When it last crashed (kept across restarts, for telling stale rumours from false downs).
    last_crash: Option<u64>,
    pause: Pause,
}

/// A node's process pause (see the scenario module doc).
#[derive(Default)]
struct Pause {
    /// A pause that starts inside the node's next step, and its length.
    due_us: Option<u64>,
    /// While paused: when it resumes.
    until: Option<u64>,
    /// What the interrupted step sends when the node resumes.
    held: Vec<dna::Transmit>,
    /// Packets that arrived meanwhile (sender index, payload), at most `RX_BUFFER_BYTES`.
    rx: VecDeque<(u32, Bytes)>,
    rx_bytes: usize,
    rx_dropped: usize,
}

impl SimNode {
    fn local(&self, global: u64) -> Time {
        self.clock.local(global)
    }
    /// The earliest global time ≥ `now` at which the node's clock reads `local`.
    fn global(&self, local: Time, now: u64) -> u64 {
        self.clock.global(local, now)
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
    /// When a partition or cut was last put in force or healed.
    last_cut_change: Option<u64>,
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
    queue: EventQueue<Kind>,
    nodes: Vec<SimNode>,
    net: Net,
    events: Vec<TimedEvent>,
    chaos: Option<ChaosSpec>,
    checker: Checker,
    trace: u64,
    processed: u64,
    messages: u64,
    bytes: u64,
    stream_frames: u64,
    oversize_dropped: u64,
    /// Per (from, to): when the last stream frame is delivered, so streams stay ordered.
    streams: HashMap<(u32, u32), u64>,
    last_disturbance: u64,
    membership_converged: Option<u64>,
    /// When the last node booted for the first time.
    last_first_boot: u64,
    /// Crashes being watched: who marks the crashed node down, and when.
    detections: Vec<Watch>,
    false_downs: Vec<String>,
    /// Bytes sent from the middle of the run on (steady state), by class, and per node.
    steady: SteadyBytes,
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
    /// The time series for `run --svg` (only when [`Sim::record_series`] asked for it).
    series: Option<Series>,
    /// Test hook: persistence that loses `voted_for` on restart (a bug the checker must catch).
    forget_votes: bool,
    /// The replicas' runtime model and its checks (`workload.rs`).
    work: Workloads,
    /// Whether the colony was calm when the action being applied began (see `Sim::calm`).
    action_calm: bool,
}

/// One crash being watched: the running nodes that have not yet marked the crashed node down.
struct Watch {
    node: usize,
    id: NodeId,
    queen: bool,
    crashed_at: u64,
    pending: BTreeSet<usize>,
    survivors: usize,
    first: Option<u64>,
    last: Option<u64>,
    /// Closed: every survivor knew, or the node restarted first.
    closed: bool,
    restarted_first: bool,
}

/// Traffic from the middle of the run on.
#[derive(Default)]
struct SteadyBytes {
    swim: u64,
    membership: u64,
    other: u64,
    /// SWIM + membership bytes per sending node.
    gossip_by_node: Vec<u64>,
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
        let n = opts.nodes;
        let seeds: Vec<SocketAddr> = (0..n.min(3)).map(addr_of).collect();
        let mut ids = BTreeSet::new();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut id = NodeId(rng.random::<u64>() | 1);
            while !ids.insert(id) {
                id = NodeId(rng.random::<u64>() | 1);
            }
            let mut cfg = Config::new(id, addr_of(i));
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
                clock: Clock::new(0),
                wake_at: None,
                crashed_at: None,
                pause: Pause::default(),
                last_crash: None,
            });
        }
        // Clock rates, fixed per node (later classes win). No draws without `drift:`.
        for class in &scenario.drift {
            let listed: Vec<usize> = class.nodes.clone().unwrap_or_else(|| (0..n).collect());
            for i in listed.into_iter().filter(|i| *i < n) {
                let ppm = match class.rate {
                    DriftRate::Fixed(ppm) => ppm,
                    DriftRate::Uniform(max) => rng.random_range(-max..=max),
                };
                nodes[i].clock = Clock::new(ppm);
            }
        }
        let net = &scenario.network;
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            queue: EventQueue::default(),
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
                last_cut_change: None,
            },
            events: scenario.events.clone(),
            chaos: scenario.chaos.clone(),
            checker: Checker::default(),
            trace: 0xcbf2_9ce4_8422_2325,
            processed: 0,
            messages: 0,
            bytes: 0,
            stream_frames: 0,
            oversize_dropped: 0,
            streams: HashMap::new(),
            last_disturbance: 0,
            membership_converged: None,
            last_first_boot: 0,
            detections: Vec::new(),
            false_downs: Vec::new(),
            steady: SteadyBytes {
                gossip_by_node: vec![0; n],
                ..SteadyBytes::default()
            },
            queens: Vec::new(),
            failovers: Vec::new(),
            timeline: Vec::new(),
            debug: opts.debug,
            converged_in_window: false,
            kinds: Default::default(),
            index_by_id: HashMap::new(),
            spec_due: None,
            plans: Plans::default(),
            series: None,
            forget_votes: false,
            work: Workloads::new(
                scenario
                    .replica_start_us
                    .unwrap_or(DEFAULT_REPLICA_START_US),
            ),
            action_calm: false,
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

    /// Test hook: the driver's persistence loses `voted_for` whenever a node restarts, a bug that
    /// lets a node vote twice in one term. The checker must catch what follows.
    pub fn forget_votes_on_restart(&mut self) {
        self.forget_votes = true;
    }

    /// Test hook: adjusts node `i`'s configuration before it first boots (call before `run`).
    pub fn configure(&mut self, f: impl Fn(usize, &mut Config)) {
        for (i, sn) in self.nodes.iter_mut().enumerate() {
            f(i, &mut sn.cfg);
        }
    }

    fn push(&mut self, at: u64, kind: Kind) {
        if self.queue.len() >= MAX_QUEUE {
            return;
        }
        self.seq += 1;
        self.queue.push(at.max(self.now), self.seq, kind);
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
        self.run_until(end);
        self.report()
    }

    /// Processes every event up to `at_us` (at most the run's end); virtual time is then `at_us`.
    pub fn run_until(&mut self, at_us: u64) {
        while self.step_until(at_us).is_some() {}
        self.now = self.now.max(at_us.min(self.opts.duration_us));
    }

    /// Processes the next event if it is due by the run's end, and returns its time.
    pub fn step(&mut self) -> Option<u64> {
        self.step_until(self.opts.duration_us)
    }

    fn step_until(&mut self, at_us: u64) -> Option<u64> {
        let end = at_us.min(self.opts.duration_us);
        let (at, seq, kind) = self.queue.pop_until(end)?;
        self.now = at;
        self.processed += 1;
        self.trace = mix(mix(self.trace, at), seq);
        self.dispatch(kind);
        Some(self.now)
    }

    /// Applies a scenario action now (for tests that steer a run as it goes).
    pub fn act(&mut self, action: Action) {
        self.apply(action);
    }

    /// What node `i` last persisted.
    pub fn disk(&self, i: usize) -> Option<&Persisted> {
        self.nodes.get(i)?.disk.as_ref()
    }

    /// The running queen of the highest term, if any.
    pub fn queen(&self) -> Option<usize> {
        self.current_queen()
    }

    /// Virtual time now.
    pub fn now_us(&self) -> u64 {
        self.now
    }

    /// Ends the run at its full duration and returns the report.
    pub fn report(mut self) -> Report {
        self.now = self.now.max(self.opts.duration_us);
        self.finish()
    }

    fn dispatch(&mut self, kind: Kind) {
        match kind {
            Kind::Boot { node } => self.boot(node),
            Kind::Deliver { to, from, payload } => self.deliver(to as usize, from, payload),
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
            Kind::Resume { node, incarnation } => self.resume(node as usize, incarnation),
            Kind::Scenario { index } => {
                let action = self.events[index].action.clone();
                self.apply(action);
            }
            Kind::Chaos => self.chaos_step(),
            Kind::Sample => self.sample(),
            Kind::Ready {
                node,
                incarnation,
                role,
                replica,
            } => self.on_ready(node as usize, incarnation, role, replica),
            Kind::Reports { node, incarnation } => self.on_reports_due(node as usize, incarnation),
        }
    }

    fn boot(&mut self, i: usize) {
        let now = self.now;
        let seed = self.rng.random::<u64>();
        let sn = &mut self.nodes[i];
        let local = sn.local(now);
        let restart = sn.disk.is_some();
        if restart && self.forget_votes {
            if let Some(disk) = &mut sn.disk {
                disk.voted_for = None;
            }
        }
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
                    self.on_restart(i);
                    self.note(format!("node {i} restarts"));
                    for w in self
                        .detections
                        .iter_mut()
                        .filter(|w| w.node == i && !w.closed)
                    {
                        w.closed = true;
                        w.restarted_first = true;
                    }
                } else {
                    self.last_first_boot = self.last_first_boot.max(now);
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
            self.checker.on_persist(now, i, p.node, p.term, p.voted_for);
            self.nodes[i].disk = Some(p);
        }
        while let Some(event) = node.poll_event() {
            self.on_node_event(i, &node, event);
        }
        // The runtime's reports are inputs of this same step (its events may queue more).
        loop {
            let reports = self.take_reports(i);
            if reports.is_empty() {
                break;
            }
            let local = self.nodes[i].local(now);
            node.report_replicas(reports, local);
            while let Some(event) = node.poll_event() {
                self.on_node_event(i, &node, event);
            }
        }
        self.checker.on_term(now, i, node.id(), node.term());
        if self.spec_due.take() == Some(i) {
            if let Some(spec) = &self.opts.spec {
                let local = self.nodes[i].local(now);
                if node.apply_spec((**spec).clone(), local).is_ok() {
                    self.note(format!("node {i} is given the colony spec `{}`", spec.name));
                }
            }
        }
        if let Some(for_us) = self.nodes[i].pause.due_us.take() {
            // The pause hits now, between this step's decisions and its sends.
            let mut held = Vec::new();
            while let Some(t) = node.poll_transmit() {
                held.push(t);
            }
            let incarnation = node.incarnation();
            let sn = &mut self.nodes[i];
            let until = now + for_us;
            sn.pause.until = Some(until);
            sn.wake_at = None;
            sn.node = Some(node);
            self.note(format!(
                "node {i} pauses for {:.3}s ({} packets of this step held)",
                secs(for_us),
                held.len()
            ));
            self.nodes[i].pause.held = held;
            self.push(
                until,
                Kind::Resume {
                    node: i as u32,
                    incarnation,
                },
            );
            return;
        }
        while let Some(t) = node.poll_transmit() {
            self.transmit(i, t);
        }
        let sn = &mut self.nodes[i];
        if let Some(deadline) = node.poll_timeout() {
            let at = sn.global(deadline, now);
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

    /// A packet reaches node `to`: handled now, or buffered while the node is paused.
    fn deliver(&mut self, to: usize, from: u32, payload: Bytes) {
        let tag = payload.len().checked_sub(8).map_or(0, |s| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[s..]);
            u64::from_le_bytes(b)
        });
        self.trace = mix(mix(self.trace, to as u64), tag);
        let now = self.now;
        let sn = &mut self.nodes[to];
        if sn.node.is_some() && sn.pause.until.is_some() {
            let p = &mut sn.pause;
            if p.rx_bytes + payload.len() <= RX_BUFFER_BYTES {
                p.rx_bytes += payload.len();
                p.rx.push_back((from, payload));
            } else {
                p.rx_dropped += 1;
            }
            return;
        }
        let local = sn.local(now);
        if let Some(node) = &mut sn.node {
            node.handle_packet(addr_of(from as usize), &payload, local);
            self.drain(to);
        }
    }

    /// A paused node resumes: the interrupted step's sends leave, then the buffered packets are
    /// handled in arrival order, with its due timers firing at a point among them the RNG picks
    /// (first, last or in between), as an event loop's `select` over a socket and a timer would.
    fn resume(&mut self, i: usize, incarnation: u32) {
        let now = self.now;
        let sn = &mut self.nodes[i];
        let current = sn
            .node
            .as_ref()
            .is_some_and(|n| n.incarnation() == incarnation);
        if !current || sn.pause.until != Some(now) {
            return;
        }
        sn.pause.until = None;
        let held = std::mem::take(&mut sn.pause.held);
        let rx = std::mem::take(&mut sn.pause.rx);
        let dropped = std::mem::take(&mut sn.pause.rx_dropped);
        sn.pause.rx_bytes = 0;
        self.note(format!(
            "node {i} resumes: {} held packets leave, {} buffered packets to handle, {dropped} dropped",
            held.len(),
            rx.len()
        ));
        for t in held {
            self.transmit(i, t);
        }
        let timers_after = self.rng.random_range(0..=rx.len());
        let mut rx = rx.into_iter();
        for (from, payload) in rx.by_ref().take(timers_after) {
            self.deliver(i, from, payload);
        }
        let sn = &mut self.nodes[i];
        let local = sn.local(now);
        if let Some(node) = &mut sn.node {
            node.handle_timeout(local);
            self.drain(i); // also schedules its next wake
        }
        for (from, payload) in rx {
            self.deliver(i, from, payload);
        }
    }

    /// The node's clock changed course: its next timer is due at another global time.
    fn reclock(&mut self, i: usize) {
        let now = self.now;
        let sn = &mut self.nodes[i];
        if sn.pause.until.is_some() {
            return; // resuming reschedules
        }
        let Some(node) = &sn.node else { return };
        let Some(deadline) = node.poll_timeout() else {
            return;
        };
        let at = sn.global(deadline, now);
        let incarnation = node.incarnation();
        sn.wake_at = Some(at);
        self.push(
            at,
            Kind::Wake {
                node: i as u32,
                incarnation,
            },
        );
    }

    fn resolve(&self, who: Who) -> Option<usize> {
        match who {
            Who::Queen => self.current_queen(),
            Who::Node(n) => (n < self.nodes.len()).then_some(n),
        }
    }

    fn on_node_event(&mut self, i: usize, node: &Node, event: Event) {
        let now = self.now;
        let nodes = &self.nodes;
        let clocks = |j: usize| nodes[j].clock.local(now);
        self.checker.on_event(now, i, nodes[i].id, &event, &clocks);
        let sn = &self.nodes[i];
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
            Event::SplitBrain { term, other } => {
                let who = if node.role() == Role::Queen || node.term() > term {
                    "queen"
                } else {
                    "worker"
                };
                let j = self.index_by_id.get(&other).copied();
                self.note(format!(
                    "node {i} ({who}) sees a second queen in term {term}: node {}",
                    j.map_or_else(|| format!("{other:?}"), |j| j.to_string())
                ));
            }
            Event::Stood { pre, .. } if self.debug => {
                let second = self.now / 1_000_000;
                let e = self
                    .kinds
                    .entry(1000 + second as usize + if pre { 0 } else { 100_000 })
                    .or_insert((0, 0));
                e.0 += 1;
            }
            Event::MemberDown(down) => self.on_member_down(i, down),
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
            Event::Assigned { assignments, .. } => {
                let mine = assignments
                    .into_iter()
                    .map(|a| (a.role, a.replica))
                    .collect();
                self.on_assigned(i, node.incarnation(), mine);
            }
            Event::Planned { version, moves, .. } => {
                for m in moves.iter().take(20) {
                    let to = m.to.map_or_else(
                        || "nowhere".to_owned(),
                        |id| {
                            self.index_by_id
                                .get(&id)
                                .map_or_else(|| format!("{id:?}"), |j| format!("node {j}"))
                        },
                    );
                    let from = self
                        .index_by_id
                        .get(&m.from)
                        .map_or_else(|| format!("{:?}", m.from), |j| format!("node {j}"));
                    self.note(format!(
                        "plan {version} moves {}/{} from {from} to {to}: {:?}",
                        m.role, m.replica, m.why
                    ));
                }
            }
            _ => {}
        }
    }

    /// Node `i` marks `down` dead: a detection of a watched crash, or a false down if `down` is
    /// running and nothing explains it (see [`FALSE_DOWN_GRACE_US`]).
    fn on_member_down(&mut self, i: usize, down: NodeId) {
        let now = self.now;
        let Some(&x) = self.index_by_id.get(&down) else {
            return;
        };
        if let Some(w) = self
            .detections
            .iter_mut()
            .rev()
            .find(|w| w.id == down && !w.closed)
        {
            if w.pending.remove(&i) {
                w.first.get_or_insert(now);
                w.last = Some(now);
                if w.pending.is_empty() {
                    w.closed = true;
                }
            }
            return;
        }
        let sn = &self.nodes[x];
        let crashed_lately = sn.last_crash.is_some_and(|c| c + FALSE_DOWN_GRACE_US > now);
        let cut_lately = self
            .net
            .last_cut_change
            .is_some_and(|c| c + FALSE_DOWN_GRACE_US > now);
        if sn.node.is_some()
            && !crashed_lately
            && !cut_lately
            && !self.net.cut(i, x)
            && !self.net.cut(x, i)
        {
            let what = format!("node {i} marks running node {x} down");
            self.note(format!("FALSE DOWN: {what}"));
            if self.false_downs.len() < MAX_DETECTIONS {
                self.false_downs.push(format!("{:.3}s {what}", secs(now)));
            }
        }
    }

    /// Checks a committed plan once per version (no over-commit, every placement feasible,
    /// registered capabilities true) and, at the queen, tracks moves and time to assignment.
    fn on_commit(&mut self, i: usize, node: &Node, version: Version) {
        let state = node.state();
        let Some(spec) = &state.spec else { return };
        if self.plans.checked.insert(version) {
            let exclusions = dna::plan::Exclusions::of(state);
            if let Err(e) =
                dna::plan::check_excluding(spec, &state.nodes, &state.assignments, exclusions)
            {
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
        self.check_replica_moves();
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
        // Time to assignment: the first plan of this queen that assigns as many replicas as a
        // fresh plan over every running node's real capabilities could.
        let now = secs(self.now);
        let Some(q) = self
            .queens
            .iter()
            .rposition(|q| q.node == i && q.term == version.term && q.roles_assigned_s.is_none())
        else {
            return;
        };
        let mut running: Vec<swarm_core::spec::NodeRecord> = self
            .nodes
            .iter()
            .filter(|sn| sn.node.is_some())
            .map(|sn| swarm_core::spec::NodeRecord {
                node: sn.id,
                caps: sn.cfg.caps.clone(),
                ip: None,
            })
            .collect();
        running.sort_by_key(|r| r.node);
        let placeable = dna::plan::plan(spec, &running, &[]).assignments.len();
        // A failed replica kept unplaced (backoff, or nowhere else to go) is accounted for.
        let failing = state
            .unplaced
            .iter()
            .filter(|u| matches!(u.reason, swarm_core::spec::UnplacedReason::Failing { .. }))
            .count();
        if state.assignments.len() + failing >= placeable {
            let q = &mut self.queens[q];
            q.roles_assigned_s = Some(now - q.crowned_s);
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

    fn transmit(&mut self, from: usize, t: Transmit) {
        let Transmit { to, payload, lane } = t;
        self.messages += 1;
        if self.now >= self.opts.duration_us / 2 {
            let len = payload.len() as u64;
            // Byte 2 is the channel (1 = SWIM); byte 11 the `ColonyMsg` variant (10 JoinRequest,
            // 11 Members, 12 Rumour: the membership exchange).
            let gossip = match (payload.get(2), payload.get(11)) {
                (Some(1), _) => Some(&mut self.steady.swim),
                (_, Some(10..=12)) => Some(&mut self.steady.membership),
                _ => None,
            };
            match gossip {
                Some(class) => {
                    *class += len;
                    if let Some(b) = self.steady.gossip_by_node.get_mut(from) {
                        *b += len;
                    }
                }
                None => self.steady.other += len,
            }
        }
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
        match lane {
            Lane::Datagram => self.send_datagram(from, to, payload),
            Lane::Stream => self.send_stream(from, to, payload),
        }
    }

    /// An unreliable datagram: dropped if, once sealed, it would not fit a LAN datagram; then
    /// subject to cuts, loss, duplication, latency and reordering.
    fn send_datagram(&mut self, from: usize, to: usize, payload: Bytes) {
        if payload.len() + SEAL_RESERVE_BYTES > MAX_DATAGRAM_BYTES {
            self.oversize_dropped += 1;
            return;
        }
        if self.net.cut(from, to) {
            return;
        }
        let link = Link {
            latency_us: self.net.latency,
            loss: self.net.loss,
            duplicate: self.net.duplicate,
            reorder: self.net.reorder,
        };
        for delay in link.datagram(&mut self.rng).into_iter().flatten() {
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

    /// A frame on a reliable, ordered stream (QUIC in the agent): never lost or duplicated
    /// while the path is up, delivered in order per (sender, receiver) after one network
    /// latency plus its transfer time at [`STREAM_BYTES_PER_US`]; a frame a loss roll hits is
    /// retransmitted, arriving [`STREAM_RETRANSMIT_LATENCIES`] latencies later. A cut path breaks
    /// the stream and the frame is lost (the protocol resends what matters).
    fn send_stream(&mut self, from: usize, to: usize, payload: Bytes) {
        self.stream_frames += 1;
        if self.net.cut(from, to) {
            return;
        }
        let (lo, hi) = self.net.latency;
        let mut delay = self.rng.random_range(lo..=hi) + payload.len() as u64 / STREAM_BYTES_PER_US;
        if self.rng.random_bool(self.net.loss.clamp(0.0, 1.0)) {
            delay += STREAM_RETRANSMIT_LATENCIES * hi;
        }
        if self.streams.len() >= MAX_STREAM_PAIRS {
            let now = self.now;
            self.streams.retain(|_, last| *last > now);
        }
        let pair = (from as u32, to as u32);
        let at = self
            .streams
            .get(&pair)
            .map_or(self.now + delay, |last| (*last).max(self.now + delay));
        self.streams.insert(pair, at);
        self.push(
            at,
            Kind::Deliver {
                to: to as u32,
                from: from as u32,
                payload,
            },
        );
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
        self.nodes[i].last_crash = Some(now);
        self.nodes[i].wake_at = None;
        self.nodes[i].pause = Pause::default();
        let calm = self.action_calm;
        self.on_crash(i, calm);
        // A survivor that crashes no longer counts; the crashed node is now watched.
        for w in self.detections.iter_mut().filter(|w| !w.closed) {
            if w.pending.remove(&i) && w.pending.is_empty() {
                w.closed = true;
            }
        }
        if self.detections.len() < MAX_DETECTIONS {
            let pending: BTreeSet<usize> = (0..self.nodes.len())
                .filter(|j| self.nodes[*j].node.is_some())
                .collect();
            self.detections.push(Watch {
                node: i,
                id: self.nodes[i].id,
                queen: node.role() == Role::Queen,
                crashed_at: now,
                survivors: pending.len(),
                closed: pending.is_empty(),
                pending,
                first: None,
                last: None,
                restarted_first: false,
            });
        }
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
        self.action_calm = self.calm();
        // A replica's failure or ill health disturbs no election.
        if !matches!(action, Action::Fail(_) | Action::Unhealthy(_)) {
            self.last_disturbance = self.now;
        }
        self.record_action(&action);
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
                self.net.last_cut_change = Some(self.now);
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
                self.net.last_cut_change = Some(self.now);
            }
            Action::Loss(p) => {
                self.note(format!("loss set to {p}"));
                self.net.loss = p;
            }
            Action::Skew { node, offset_us } => {
                let Some(i) = self.resolve(node) else {
                    return self.note(format!("skew {node:?}: no such node"));
                };
                let now = self.now;
                self.nodes[i].clock.set_offset(now, offset_us);
                self.note(format!("node {i} clock steps to offset {offset_us}µs"));
                self.reclock(i);
            }
            Action::Pause { node, for_us } => {
                let Some(i) = self.resolve(node).filter(|i| self.nodes[*i].node.is_some()) else {
                    return self.note(format!("pause {node:?}: no such running node"));
                };
                let now = self.now;
                let sn = &mut self.nodes[i];
                if let Some(until) = sn.pause.until {
                    // Already paused: the pause lasts until the later end.
                    if now + for_us > until {
                        sn.pause.until = Some(now + for_us);
                        let incarnation = sn.node.as_ref().map_or(0, |n| n.incarnation());
                        self.push(
                            now + for_us,
                            Kind::Resume {
                                node: i as u32,
                                incarnation,
                            },
                        );
                    }
                    return;
                }
                sn.pause.due_us = Some(sn.pause.due_us.unwrap_or(0).max(for_us));
                let queen = sn
                    .node
                    .as_ref()
                    .filter(|n| n.role() == Role::Queen)
                    .map(|n| n.term());
                let lease_us = sn.cfg.lease_ms * 1000;
                if let Some(term) = queen {
                    if for_us >= lease_us {
                        // Long enough for the colony to elect another queen.
                        self.failovers.push(Failover {
                            term,
                            queen_lost_s: secs(now),
                            detected_s: None,
                            new_queen_s: None,
                        });
                    }
                }
                self.note(format!(
                    "node {i}{} will pause for {:.3}s from its next step",
                    queen.map_or(String::new(), |t| format!(" (queen of term {t})")),
                    secs(for_us)
                ));
            }
            Action::Load { node, load } => {
                let Some(i) = self.resolve(node) else {
                    return self.note(format!("load {node:?}: no such node"));
                };
                if let Some(n) = &mut self.nodes[i].node {
                    n.set_load(load);
                    self.note(format!("node {i} reports load {load}"));
                }
            }
            Action::Heal => {
                self.note("network heals".to_owned());
                if !self.net.healthy() {
                    self.net.last_cut_change = Some(self.now);
                }
                self.net.groups = None;
                self.net.oneway.clear();
                self.net.loss = self.net.base_loss;
            }
            Action::Fail(r) => {
                let calm = self.action_calm;
                self.set_replica_state(r, ReplicaState::Failed, calm);
            }
            Action::Unhealthy(r) => {
                let calm = self.action_calm;
                self.set_replica_state(r, ReplicaState::Unhealthy, calm);
            }
            Action::CrashRunning(r) => {
                let calm = self.action_calm;
                self.crash_running(r, calm);
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
            0..=19 => Some(Action::Crash(Target::Queen)),
            20..=34 if crashed < n / 3 => Some(Action::Crash(Target::Nodes(vec![
                self.rng.random_range(0..n),
            ]))),
            35..=49 => Some(Action::Restart(RestartTarget::Crashed)),
            50..=64 => {
                let cut = self.rng.random_range(1..n.max(2));
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    let j = self.rng.random_range(0..=i);
                    order.swap(i, j);
                }
                Some(Action::Partition(vec![
                    order[..cut].to_vec(),
                    order[cut..].to_vec(),
                ]))
            }
            65..=72 => {
                let a = self.rng.random_range(0..n);
                let b = self.rng.random_range(0..n);
                Some(Action::OneWay {
                    from: vec![a],
                    to: vec![b],
                })
            }
            73..=79 => Some(Action::Loss(self.rng.random_range(0.0..0.3))),
            80..=83 if chaos.max_drift_ppm > 0 => {
                // A real clock's rate wanders (temperature), continuously: no step.
                let i = self.rng.random_range(0..n);
                let max = chaos.max_drift_ppm;
                let ppm = self.rng.random_range(-max..=max);
                let now = self.now;
                self.nodes[i].clock.set_drift(now, ppm);
                self.note(format!("node {i} clock drifts {ppm}ppm"));
                self.reclock(i);
                None
            }
            84..=89 if chaos.max_pause_us > 0 => Some(Action::Pause {
                node: if self.rng.random_bool(0.5) {
                    Who::Queen
                } else {
                    Who::Node(self.rng.random_range(0..n))
                },
                for_us: self.rng.random_range(1..=chaos.max_pause_us),
            }),
            _ => Some(Action::Heal),
        };
        if let Some(action) = action {
            self.apply(action);
        }
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
        self.check_fail_deadlines();
        if self.now + CONVERGE_WINDOW_US >= self.opts.duration_us && self.net.healthy() {
            self.sample_health();
        }
        self.record_sample();
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
                    let recent = Time(sn.local(now).0.saturating_sub(2_000_000));
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
        self.finish_health(settled);
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
        let detections = self
            .detections
            .iter()
            .map(|w| Detection {
                node: w.node,
                queen: w.queen,
                crashed_s: secs(w.crashed_at),
                survivors: w.survivors,
                first_s: w.first.map(|t| secs(t - w.crashed_at)),
                last_s: (w.pending.is_empty() && !w.restarted_first)
                    .then(|| w.last.map(|t| secs(t - w.crashed_at)))
                    .flatten(),
                missed: w.pending.len(),
                restarted_first: w.restarted_first,
            })
            .collect();
        let window_s = secs(self.now - self.opts.duration_us / 2).max(1e-6);
        let per_node = |b: u64| b as f64 / window_s / self.nodes.len().max(1) as f64;
        let steady = Traffic {
            from_s: secs(self.opts.duration_us / 2),
            swim_bytes_per_node_s: per_node(self.steady.swim),
            membership_bytes_per_node_s: per_node(self.steady.membership),
            other_bytes_per_node_s: per_node(self.steady.other),
            gossip_max_node_bytes_s: self
                .steady
                .gossip_by_node
                .iter()
                .max()
                .copied()
                .unwrap_or(0) as f64
                / window_s,
        };
        let queen_healthy: Vec<String> = self
            .current_queen()
            .and_then(|q| self.nodes[q].node.as_ref())
            .map(|n| n.healthy_roles().to_vec())
            .unwrap_or_default();
        Report {
            nodes: self.nodes.len(),
            seed: self.opts.seed,
            simulated_s: secs(self.now),
            wall_s: 0.0,
            peak_rss_mb: None,
            events: self.processed,
            trace_hash: format!("{:016x}", self.trace),
            membership_converged_s: self.membership_converged.map(secs),
            converged_after_last_boot_s: self
                .membership_converged
                .map(|t| secs(t.saturating_sub(self.last_first_boot))),
            detections,
            suspicions: self
                .nodes
                .iter()
                .filter_map(|s| s.node.as_ref().map(|n| n.stats().suspicions))
                .sum(),
            false_downs: self.false_downs,
            steady,
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
                replicas: crate::report::ReplicaStats {
                    failures_injected: self.work.failures_injected,
                    failed_moved_s: self.work.failed_moved_s.clone(),
                    held_moved_s: self.work.held_moved_s.clone(),
                    held_kept: self.work.held_kept,
                    healthy_roles: queen_healthy.clone(),
                },
            }),
            queens: self.queens,
            failovers: self.failovers,
            violations: self.checker.violations,
            messages: crate::report::Messages {
                count: self.messages,
                bytes: self.bytes,
                stream_frames: self.stream_frames,
                oversize_dropped: self.oversize_dropped,
            },
            timeline: self.timeline,
            series: self.series,
        }
    }
}

// ---- Recording for pictures (`run --svg`): the only engine code that feeds `series.rs`. ----
impl Sim {
    /// Records members known per node at every sample and a marker per scenario action, for
    /// [`Report::series`]. Off by default; it changes nothing in the run (no RNG draw, no event).
    pub fn record_series(mut self) -> Sim {
        self.series = Some(Series::new());
        self
    }

    fn record_sample(&mut self) {
        let Some(series) = &mut self.series else {
            return;
        };
        let mut known: Vec<u32> = self
            .nodes
            .iter()
            .filter_map(|sn| sn.node.as_ref())
            .map(|n| u32::try_from(n.live_members() + 1).unwrap_or(u32::MAX))
            .collect();
        series.sample(secs(self.now), &mut known);
    }

    fn record_action(&mut self, action: &Action) {
        if self.series.is_none() {
            return;
        }
        let running = |i: &usize| self.nodes.get(*i).is_some_and(|sn| sn.node.is_some());
        let nodes = |n: usize, verb: &str| match n {
            1 => format!("{verb} 1 node"),
            n => format!("{verb} {n} nodes"),
        };
        let (kind, label) = match action {
            Action::Crash(Target::Queen) => match self.current_queen() {
                Some(q) => (MarkKind::Crash, format!("crash queen n{q}")),
                None => return,
            },
            Action::Crash(Target::Nodes(list)) => {
                match list.iter().filter(|i| running(i)).count() {
                    0 => return,
                    1 => match list.iter().find(|i| running(i)) {
                        Some(i) => (MarkKind::Crash, format!("crash n{i}")),
                        None => return,
                    },
                    n => (MarkKind::Crash, nodes(n, "crash")),
                }
            }
            Action::Restart(target) => {
                let down = |i: &usize| self.nodes.get(*i).is_some_and(|sn| sn.node.is_none());
                let n = match target {
                    RestartTarget::Crashed => (0..self.nodes.len()).filter(down).count(),
                    RestartTarget::Nodes(list) => list.iter().filter(|i| down(i)).count(),
                };
                if n == 0 {
                    return;
                }
                (MarkKind::Restart, nodes(n, "restart"))
            }
            Action::Partition(groups) => (
                MarkKind::Partition,
                format!("partition {}", {
                    let sizes: Vec<String> = groups.iter().map(|g| g.len().to_string()).collect();
                    sizes.join("|")
                }),
            ),
            Action::Heal => (MarkKind::Heal, "heal".to_owned()),
            Action::OneWay { from, to } => (
                MarkKind::Network,
                format!("one-way {}→{}", from.len(), to.len()),
            ),
            Action::Loss(p) => (MarkKind::Network, format!("loss {:.0}%", p * 100.0)),
            Action::Skew { node, offset_us } => (
                MarkKind::Network,
                format!("skew {} {:+}ms", who(*node), offset_us / 1000),
            ),
            Action::Pause { node, for_us } => (
                MarkKind::Pause,
                format!("pause {} {:.1}s", who(*node), *for_us as f64 / 1e6),
            ),
            Action::Load { node, load } => (
                MarkKind::Network,
                format!("load {} {:.0}%", who(*node), load * 100.0),
            ),
            Action::Fail(r) => (MarkKind::Network, format!("fail {}/{}", r.role, r.replica)),
            Action::Unhealthy(r) => (
                MarkKind::Network,
                format!("unhealthy {}/{}", r.role, r.replica),
            ),
            Action::CrashRunning(r) => (
                MarkKind::Crash,
                format!("crash runner of {}/{}", r.role, r.replica),
            ),
        };
        let at = secs(self.now);
        if let Some(series) = &mut self.series {
            series.mark(at, kind, label);
        }
    }
}

fn who(w: Who) -> String {
    match w {
        Who::Queen => "queen".to_owned(),
        Who::Node(i) => format!("n{i}"),
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
