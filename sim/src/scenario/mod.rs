//! Scenario files: the YAML that tells `aware-sim` what to simulate.
//!
//! This module owns the scenario format and nothing else: it turns the text of
//! a scenario file into a [`Scenario`] (colony size, run length, network model,
//! timed fault events and the optional chaos generator) and checks it against
//! the colony it will run on ([`Scenario::validate`]). It does no I/O: the
//! caller reads the file and passes its text and its name.
//!
//! Every error names the file and, for anything found while parsing, the
//! 1-based line and column of the offending YAML node:
//! `FILE:LINE:COL: message`. Semantic checks (bad durations, reversed ranges,
//! probabilities outside `0..=1`, a node in two partition groups, two actions
//! in one event, a drift without `ppm` or beyond ±500000ppm, …) run inside the
//! deserializers so they carry a position too.
//!
//! ```yaml
//! name: queen-crash
//! nodes: 100
//! duration: 60s
//! bootstrap_expect: 100
//! start_spread: 1s
//! network: {latency: "1ms..5ms", loss: 0.01, duplicate: 0.0, reorder: 0.0}
//! drift: 200ppm                      # or a list of classes, see below
//! events:
//!   - {at: 30s, crash: queen}        # queen | 3 | [1, 2, "5..8"] | "0..50" | "0..=49"
//!   - {at: 40s, restart: crashed}    # crashed | 3 | [..]
//!   - {at: 50s, partition: [[0, 1, 2], ["3..10"]]}
//!   - {at: 55s, oneway: {from: [0], to: ["1..5"]}}
//!   - {at: 60s, loss: 0.2}
//!   - {at: 61s, skew: {node: 3, offset: "-500ms"}}   # node: an index or queen
//!   - {at: 62s, pause: {node: queen, for: 2s}}       # node: an index or queen
//!   - {at: 65s, load: {node: queen, to: 0.9}}        # node: an index or queen
//!   - {at: 70s, heal: true}
//!   - {at: 75s, fail: {role: web, replica: 0}}       # with a spec, see Workloads
//!   - {at: 76s, unhealthy: {role: api, replica: 1}}
//!   - {at: 77s, crash_running: {role: db, replica: 0}}
//! chaos: {from: 10s, until: 100s, every: 5s, max_drift: 200ppm, max_pause: 2s}
//! replica_start: 2s
//! ```
//!
//! **Workloads.** With a colony spec the engine models each node's runtime: a replica the
//! node's committed plan assigns to it is reported `Starting` at once and `Healthy` (or
//! `Running`, for a role without a health check) `replica_start` later (default 1s); one that
//! leaves the plan is dropped. `fail` makes the named replica's reports go `Failed` on whatever
//! node runs it then (its restart policy gave up there; it starts normally on the next node),
//! `unhealthy` makes them go `Unhealthy` there, and `crash_running` crashes the node that runs
//! it (a no-op when no running node does). A paused node reports nothing until it resumes.
//!
//! **Clocks.** Every node's clock is monotonic (see `crate::clock`). `drift:` sets each node's
//! fixed rate error in parts per million: a single bound such as `drift: 200ppm` gives every node
//! its own rate drawn uniformly in ±200 ppm; a list of classes sets rates per node, later classes
//! winning where they overlap, and nodes no class names run exact:
//!
//! ```yaml
//! drift:
//!   - {max: 100ppm}                  # no `nodes`: every node, uniform in ±100 ppm
//!   - {nodes: "0..3", rate: 250ppm}  # exactly +250 ppm (fast); `-250ppm` is slow
//! ```
//!
//! Values are whole ppm with the unit (`150ppm`, `-150ppm`), at most ±500000ppm (real
//! oscillators stay within a few hundred; larger values exist to show where lease safety breaks).
//! `skew` is a **step** of the clock, which a real monotonic clock never takes; it stays for
//! explicit tests: `offset` is where the clock stands relative to its undisturbed course, and a
//! backward step stalls the clock until that course catches up (the node's clock never runs
//! backwards).
//!
//! **Pauses.** `pause: {node, for}` stops the node's process, as a long GC, a SIGSTOP or a
//! descheduled VM does. It hits inside the node's first step at or after `at`: the node has
//! taken that input and decided (what it persists and reports happens then), but everything the
//! step sends leaves only when it resumes (a queen paused between checking her lease and
//! acting on it). While paused the node handles nothing: its timers do not fire, and packets
//! for it wait in a receive buffer of `RX_BUFFER_BYTES` (Linux's default 208 KiB) and are dropped
//! once it is full, as by a full UDP socket. It resumes `for` later with its clock advanced by
//! the whole pause: first the held sends leave, then the buffered packets are handled in
//! arrival order, its due timers firing at a point among them that the run's RNG picks (an
//! event loop's `select` over a socket and a timer gives no order either). A crash ends a pause
//! (and loses the buffer); a second pause of a paused node extends it to the later end.
//!
//! `load: {node, to}` reports the node's load (`0..=1`) to it, which lowers its pheromone (a
//! loaded queen hands the crown to a fitter heir after `handover_sustain_ms`).
//!
//! **Chaos** injects, at random (exponential) intervals of mean `every` between `from` and
//! `until`: crashes (often the queen), restarts, partitions, one-way cuts, loss changes, and,
//! within what real monotonic clocks do, rate changes of one node's clock (a new rate uniform in
//! ±`max_drift`, continuous: no step) and pauses of one node (the queen half the time) for a
//! uniform duration up to `max_pause`. At `until` everything heals and restarts. Chaos no longer
//! steps clocks (`max_skew` is refused with a pointer to `max_drift`).
//!
//! This file owns the public types and [`Scenario::parse`] / [`Scenario::validate`]. The parser
//! lives next door: `parse.rs` (the top-level map, keys, the `network:` map), `values.rs`
//! (durations, counts, probabilities, latency), `nodes.rs` (node lists and ranges, partition
//! groups), `events.rs` (timed events and `chaos:`), `caps.rs` (`capabilities:` classes) and
//! `errors.rs` ([`ScenarioError`], positions and "did you mean" suggestions).

mod caps;
mod errors;
mod events;
mod nodes;
mod parse;
#[cfg(test)]
mod tests;
mod values;

pub use errors::ScenarioError;
pub use values::{parse_duration_us, parse_ppm};

use std::path::Path;

use serde::de::DeserializeSeed;

use errors::yaml_error;
use parse::ScenarioSeed;
use values::{MICROS_PER_MS, format_duration};

/// Microseconds in one second; all scenario times are in microseconds.
pub const MICROS_PER_SEC: u64 = 1_000_000;

/// Node indices must be below this; it bounds what a range string can expand to.
const MAX_NODES: usize = 1 << 20;

/// A parsed scenario file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// From the `name:` key, else the file stem.
    pub name: String,
    /// Colony size, if the file fixes one.
    pub nodes: Option<usize>,
    /// Simulated run length, if the file fixes one.
    pub duration_us: Option<u64>,
    /// How many nodes the colony waits for before electing a queen.
    pub bootstrap_expect: Option<usize>,
    /// Nodes boot at uniformly random times in `[0, start_spread)`; 0 means
    /// all boot at t=0.
    pub start_spread_us: u64,
    /// The base network model.
    pub network: NetworkSpec,
    /// Timed events, sorted by `at_us` (stable: same-time events keep file order).
    pub events: Vec<TimedEvent>,
    /// Random fault injection, if any.
    pub chaos: Option<ChaosSpec>,
    /// A colony spec file (path relative to the scenario file) the first queen is given.
    pub spec: Option<String>,
    /// Node capabilities by index ranges; later classes win where they overlap. Nodes no class
    /// names get random capabilities.
    pub capabilities: Vec<CapClass>,
    /// Clock drift by node classes; later classes win where they overlap. Nodes no class names
    /// run exact.
    pub drift: Vec<DriftClass>,
    /// With a spec: how long a replica takes from assignment to healthy (see Workloads).
    pub replica_start_us: Option<u64>,
}

/// One replica of the colony spec, named in an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRef {
    /// The role's name.
    pub role: String,
    /// The replica index.
    pub replica: u32,
}

/// The clock drift of a group of nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftClass {
    /// The node indices this class applies to (sorted, deduplicated); `None` is every node.
    pub nodes: Option<Vec<usize>>,
    /// Their rate.
    pub rate: DriftRate,
}

/// A clock's rate error, in parts per million.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftRate {
    /// Exactly this (positive: the clock runs fast).
    Fixed(i64),
    /// Each node draws its own fixed rate uniformly in `-max..=max`.
    Uniform(i64),
}

/// One node, named by index or as whichever node is queen at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Whichever node is queen at that moment.
    Queen,
    /// This node index.
    Node(usize),
}

/// The capabilities of a group of nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct CapClass {
    /// The node indices this class applies to (sorted, deduplicated).
    pub nodes: Vec<usize>,
    /// What each of them offers.
    pub caps: swarm_core::Capabilities,
}

/// The network model: one-way latency drawn uniformly from
/// `latency_min_us..=latency_max_us`, and per-packet probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSpec {
    /// Smallest one-way latency.
    pub latency_min_us: u64,
    /// Largest one-way latency.
    pub latency_max_us: u64,
    /// Probability that a packet is dropped.
    pub loss: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Probability that a packet is held back so later ones overtake it.
    pub reorder: f64,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            latency_min_us: MICROS_PER_MS,
            latency_max_us: 5 * MICROS_PER_MS,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
        }
    }
}

/// One scripted event.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedEvent {
    /// When it happens, in microseconds of virtual time.
    pub at_us: u64,
    /// What happens.
    pub action: Action,
}

/// Which nodes to crash.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Whichever node is queen at that moment.
    Queen,
    /// These node indices (sorted, deduplicated).
    Nodes(Vec<usize>),
}

/// Which nodes to restart.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartTarget {
    /// Every node that is down at that moment.
    Crashed,
    /// These node indices (sorted, deduplicated).
    Nodes(Vec<usize>),
}

/// What a timed event does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Crash nodes.
    Crash(Target),
    /// Restart nodes.
    Restart(RestartTarget),
    /// Split the colony; nodes in no group are isolated.
    Partition(Vec<Vec<usize>>),
    /// Packets from `from` to `to` are dropped (not the reverse).
    OneWay {
        /// Senders whose packets are dropped.
        from: Vec<usize>,
        /// Receivers that no longer hear from `from`.
        to: Vec<usize>,
    },
    /// Set the network-wide loss probability.
    Loss(f64),
    /// Step one node's clock (real monotonic clocks never do; for explicit tests).
    Skew {
        /// The node whose clock moves.
        node: Who,
        /// Where the clock stands relative to its undisturbed course, positive or negative (a
        /// backward step stalls the clock).
        offset_us: i64,
    },
    /// Stop one node's process for a while (see the module doc).
    Pause {
        /// The node that pauses.
        node: Who,
        /// For how long.
        for_us: u64,
    },
    /// Report one node's load (`0..=1`; it lowers the node's pheromone).
    Load {
        /// The node whose load changes.
        node: Who,
        /// The new load.
        load: f64,
    },
    /// Remove partitions and one-way cuts and restore the scenario's base loss.
    Heal,
    /// The replica's reports go `Failed` on the node running it (see Workloads).
    Fail(ReplicaRef),
    /// The replica's reports go `Unhealthy` on the node running it.
    Unhealthy(ReplicaRef),
    /// Crash the node that runs the replica.
    CrashRunning(ReplicaRef),
}

/// Random fault injection between `from_us` and `until_us`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosSpec {
    /// When chaos starts (default 5s).
    pub from_us: u64,
    /// When chaos stops (required).
    pub until_us: u64,
    /// Mean time between chaos events (default 5s).
    pub mean_interval_us: u64,
    /// Largest clock drift, in ppm, chaos may give a node when it changes its rate (default 0:
    /// chaos leaves rates alone).
    pub max_drift_ppm: i64,
    /// Longest process pause chaos may inject (default 0: no pauses).
    pub max_pause_us: u64,
}

impl Scenario {
    /// Parses the text of a scenario file. `file` is used in error messages
    /// and, without its extension, as the default name.
    ///
    /// # Errors
    ///
    /// [`ScenarioError::Parse`], displayed as `FILE:LINE:COL: message`, for
    /// invalid YAML, unknown keys, wrong types and bad values.
    pub fn parse(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
        let stem = Path::new(file)
            .file_stem()
            .map_or_else(|| file.to_owned(), |s| s.to_string_lossy().into_owned());
        let deserializer = serde_norway::Deserializer::from_str(text);
        ScenarioSeed { stem }
            .deserialize(deserializer)
            .map_err(|err| yaml_error(&err, text, file))
    }

    /// Checks the scenario against the colony it will run on: every node
    /// index must be below `nodes`, and `bootstrap_expect` must not exceed it.
    ///
    /// # Errors
    ///
    /// [`ScenarioError::Invalid`], displayed as `FILE: message`, naming the
    /// first offending event as `events[INDEX] (at TIME)`, where INDEX is its
    /// place in the sorted [`Scenario::events`].
    pub fn validate(&self, nodes: usize, file: &str) -> Result<(), ScenarioError> {
        let invalid = |message: String| ScenarioError::Invalid {
            file: file.to_owned(),
            message,
        };
        if nodes == 0 {
            return Err(invalid("a colony needs at least one node".to_owned()));
        }
        if let Some(expect) = self.bootstrap_expect.filter(|&b| b > nodes) {
            return Err(invalid(format!(
                "bootstrap_expect {expect} is more than the colony's {nodes} nodes"
            )));
        }
        for (index, class) in self.capabilities.iter().enumerate() {
            if let Some(node) = class.nodes.iter().find(|&&n| n >= nodes) {
                return Err(invalid(format!(
                    "capabilities[{index}]: node index {node} out of range (the colony has {nodes} nodes)"
                )));
            }
        }
        for (index, class) in self.drift.iter().enumerate() {
            if let Some(node) = class.nodes.iter().flatten().find(|&&n| n >= nodes) {
                return Err(invalid(format!(
                    "drift[{index}]: node index {node} out of range (the colony has {nodes} nodes)"
                )));
            }
        }
        for (index, event) in self.events.iter().enumerate() {
            if let Some(node) = event.action.node_indices().find(|&n| n >= nodes) {
                return Err(invalid(format!(
                    "events[{index}] (at {}): node index {node} out of range (the colony has {nodes} nodes)",
                    format_duration(event.at_us)
                )));
            }
        }
        Ok(())
    }
}

impl Action {
    /// Every node index the action names.
    fn node_indices(&self) -> Box<dyn Iterator<Item = usize> + '_> {
        match self {
            Action::Crash(Target::Nodes(nodes)) | Action::Restart(RestartTarget::Nodes(nodes)) => {
                Box::new(nodes.iter().copied())
            }
            Action::Partition(groups) => Box::new(groups.iter().flatten().copied()),
            Action::OneWay { from, to } => Box::new(from.iter().chain(to).copied()),
            Action::Skew { node, .. } | Action::Pause { node, .. } | Action::Load { node, .. } => {
                match node {
                    Who::Node(n) => Box::new(std::iter::once(*n)),
                    Who::Queen => Box::new(std::iter::empty()),
                }
            }
            Action::Crash(Target::Queen)
            | Action::Restart(RestartTarget::Crashed)
            | Action::Loss(_)
            | Action::Heal
            | Action::Fail(_)
            | Action::Unhealthy(_)
            | Action::CrashRunning(_) => Box::new(std::iter::empty()),
        }
    }
}
