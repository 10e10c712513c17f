//! `bare-foca`: the baseline the simulator's speed is measured against. A colony of bare foca
//! nodes (no dna: no election, no heartbeats, no colony state, no membership exchange) driven
//! by the simulator's own event loop: the same event queue (`aware_sim::queue`), the same
//! datagram model (`aware_sim::link`), the same per-node timer queue and wake-up scheme as
//! `aware_sim::engine`, the same foca settings (`dna::node::swim_config`), identity type and
//! frame header. Nodes boot within the first second and announce to the first three (the
//! simulator's seeds), again every second while they know nobody.
//!
//! `cargo run --release -p aware-benches --bin bare-foca -- --nodes 100 --duration-s 3600`
//! prints one JSON line: events, packets, members known (min over nodes) and wall time.
//! benches/README.md sets it beside `aware-sim run` of the same colony.

use aware_sim::engine::{addr_of, index_of};
use aware_sim::link::Link;
use aware_sim::queue::EventQueue;
use bytes::Bytes;
use clap::Parser;
use dna::timer::TimerQueue;
use foca::{Foca, Notification, PostcardCodec, Runtime};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use swarm_core::swim::SwimId;
use swarm_core::{NodeId, Time, wire};

/// A node with no members announces again after this long.
const ANNOUNCE_RETRY_US: u64 = 1_000_000;
/// Seeds: the first nodes, as in the simulator.
const SEEDS: usize = 3;

#[derive(Parser)]
#[command(about = "A colony of bare foca nodes on the simulator's event loop and network model")]
struct Args {
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Simulated seconds.
    #[arg(long, default_value_t = 3600)]
    duration_s: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

type Swim = Foca<SwimId, PostcardCodec, ChaCha8Rng, foca::NoCustomBroadcast>;

enum Timer {
    Foca(foca::Timer<SwimId>),
    Announce,
}

enum Kind {
    Boot { node: usize },
    Deliver { to: u32, payload: Bytes },
    Wake { node: u32 },
}

struct BareNode {
    id: NodeId,
    swim: Option<Box<Swim>>,
    timers: TimerQueue<Timer>,
    wake_at: Option<u64>,
    members: usize,
}

/// foca's runtime: sends and timers into buffers the loop drains.
struct Rt<'a> {
    now: u64,
    node: NodeId,
    out: &'a mut Vec<(usize, Bytes)>,
    timers: &'a mut TimerQueue<Timer>,
    members: &'a mut usize,
    n: usize,
}

impl Runtime<SwimId> for Rt<'_> {
    fn notify(&mut self, notification: Notification<'_, SwimId>) {
        match notification {
            Notification::MemberUp(_) => *self.members += 1,
            Notification::MemberDown(_) => *self.members = self.members.saturating_sub(1),
            _ => {}
        }
    }

    fn send_to(&mut self, to: SwimId, data: &[u8]) {
        if let Some(i) = index_of(to.addr, self.n) {
            let frame = wire::encode_swim(self.node, data);
            self.out.push((i, frame.into()));
        }
    }

    fn submit_after(&mut self, event: foca::Timer<SwimId>, after: Duration) {
        let at = Time(self.now + after.as_micros() as u64);
        self.timers.push(at, Timer::Foca(event));
    }
}

struct Bare {
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: EventQueue<Kind>,
    nodes: Vec<BareNode>,
    link: Link,
    cfg: foca::Config,
    processed: u64,
    packets: u64,
    out: Vec<(usize, Bytes)>,
}

impl Bare {
    fn push(&mut self, at: u64, kind: Kind) {
        self.seq += 1;
        self.queue.push(at.max(self.now), self.seq, kind);
    }

    /// Runs `f` on node `i`'s foca, then sends what it sent and re-arms its wake-up.
    fn with_node(&mut self, i: usize, f: impl FnOnce(&mut Swim, &mut Rt<'_>)) {
        let n = self.nodes.len();
        let now = self.now;
        let node = &mut self.nodes[i];
        let Some(swim) = node.swim.as_mut() else {
            return;
        };
        let mut rt = Rt {
            now,
            node: node.id,
            out: &mut self.out,
            timers: &mut node.timers,
            members: &mut node.members,
            n,
        };
        f(swim, &mut rt);
        let out = std::mem::take(&mut self.out);
        for (to, payload) in &out {
            self.packets += 1;
            for delay in self.link.datagram(&mut self.rng).into_iter().flatten() {
                let kind = Kind::Deliver {
                    to: *to as u32,
                    payload: payload.clone(),
                };
                self.push(now + delay, kind);
            }
        }
        self.out = out;
        self.out.clear();
        let node = &mut self.nodes[i];
        if let Some(deadline) = node.timers.next_deadline() {
            let at = deadline.as_micros();
            if node.wake_at.is_none_or(|w| at < w) {
                node.wake_at = Some(at);
                self.push(at, Kind::Wake { node: i as u32 });
            }
        }
    }

    fn announce(&mut self, i: usize) {
        let seeds: Vec<SwimId> = (0..SEEDS.min(self.nodes.len()))
            .filter(|s| *s != i)
            .map(|s| SwimId {
                node: NodeId::UNKNOWN,
                addr: addr_of(s),
                bump: 0,
            })
            .collect();
        let retry = Time(self.now + ANNOUNCE_RETRY_US);
        self.with_node(i, |swim, rt| {
            for s in seeds {
                let _ = swim.announce(s, &mut *rt);
            }
            rt.timers.push(retry, Timer::Announce);
        });
    }

    fn dispatch(&mut self, kind: Kind) {
        match kind {
            Kind::Boot { node } => {
                let seed = self.rng.random::<u64>();
                let identity = SwimId {
                    node: self.nodes[node].id,
                    addr: addr_of(node),
                    bump: 0,
                };
                let swim = Foca::new(
                    identity,
                    self.cfg.clone(),
                    ChaCha8Rng::seed_from_u64(seed),
                    PostcardCodec,
                );
                self.nodes[node].swim = Some(Box::new(swim));
                self.announce(node);
            }
            Kind::Deliver { to, payload } => {
                let to = to as usize;
                // The simulator's frame header, as the node would strip it.
                let body = payload.get(wire::HEADER_BYTES..).unwrap_or_default();
                let body = Bytes::copy_from_slice(body);
                self.with_node(to, |swim, rt| {
                    let _ = swim.handle_data(&body, rt);
                });
            }
            Kind::Wake { node } => {
                let i = node as usize;
                let now = Time(self.now);
                if self.nodes[i].wake_at != Some(self.now) {
                    return;
                }
                self.nodes[i].wake_at = None;
                let mut announce = false;
                let mut due = Vec::new();
                while let Some(t) = self.nodes[i].timers.pop_due(now) {
                    match t {
                        Timer::Foca(t) => due.push(t),
                        Timer::Announce => announce = true,
                    }
                }
                self.with_node(i, |swim, rt| {
                    for t in due {
                        let _ = swim.handle_timer(t, &mut *rt);
                    }
                });
                if announce && self.nodes[i].members == 0 {
                    self.announce(i);
                }
            }
        }
    }
}

#[allow(clippy::disallowed_methods)] // wall-clock time of the whole run, outside the simulation
fn main() {
    let args = Args::parse();
    let n = args.nodes.max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut ids = BTreeSet::new();
    let mut nodes = Vec::with_capacity(n);
    let mut dna_cfg = None;
    for i in 0..n {
        let mut id = NodeId(rng.random::<u64>() | 1);
        while !ids.insert(id) {
            id = NodeId(rng.random::<u64>() | 1);
        }
        if dna_cfg.is_none() {
            let mut cfg = dna::Config::new(id, addr_of(i));
            cfg.cluster_size_hint = u32::try_from(n).unwrap_or(u32::MAX);
            dna_cfg = Some(cfg);
        }
        nodes.push(BareNode {
            id,
            swim: None,
            timers: TimerQueue::default(),
            wake_at: None,
            members: 0,
        });
    }
    let cfg = dna_cfg.map(|c| dna::node::swim_config(&c));
    let Some(cfg) = cfg else { return };
    let mut bare = Bare {
        rng,
        now: 0,
        seq: 0,
        queue: EventQueue::default(),
        nodes,
        // The simulator's default network: 1–5 ms, 1% loss.
        link: Link {
            latency_us: (1_000, 5_000),
            loss: 0.01,
            duplicate: 0.0,
            reorder: 0.0,
        },
        cfg,
        processed: 0,
        packets: 0,
        out: Vec::new(),
    };
    for i in 0..n {
        let at = bare.rng.random_range(0..1_000_000);
        bare.push(at, Kind::Boot { node: i });
    }
    let end = args.duration_s.saturating_mul(1_000_000);
    let wall = Instant::now();
    while let Some((at, _seq, kind)) = bare.queue.pop_until(end) {
        bare.now = at;
        bare.processed += 1;
        bare.dispatch(kind);
    }
    let min_members = bare.nodes.iter().map(|b| b.members).min().unwrap_or(0);
    println!(
        "{{\"nodes\": {n}, \"simulated_s\": {}, \"events\": {}, \"packets\": {}, \"min_members_known\": {min_members}, \"wall_s\": {:.3}}}",
        args.duration_s,
        bare.processed,
        bare.packets,
        wall.elapsed().as_secs_f64()
    );
}
