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
//! in one event, …) run inside the deserializers so they carry a position too.
//!
//! ```yaml
//! name: queen-crash
//! nodes: 100
//! duration: 60s
//! bootstrap_expect: 100
//! start_spread: 1s
//! network: {latency: "1ms..5ms", loss: 0.01, duplicate: 0.0, reorder: 0.0}
//! events:
//!   - {at: 30s, crash: queen}        # queen | 3 | [1, 2, "5..8"] | "0..50" | "0..=49"
//!   - {at: 40s, restart: crashed}    # crashed | 3 | [..]
//!   - {at: 50s, partition: [[0, 1, 2], ["3..10"]]}
//!   - {at: 55s, oneway: {from: [0], to: ["1..5"]}}
//!   - {at: 60s, loss: 0.2}
//!   - {at: 61s, skew: {node: 3, offset: "500ms"}}
//!   - {at: 70s, heal: true}
//! chaos: {from: 10s, until: 100s, every: 5s, max_skew: 200ms}
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Microseconds in one second; all scenario times are in microseconds.
pub const MICROS_PER_SEC: u64 = 1_000_000;

/// Node indices must be below this; it bounds what a range string can expand to.
const MAX_NODES: usize = 1 << 20;

const MICROS_PER_MS: u64 = 1_000;
const MICROS_PER_MIN: u64 = 60 * MICROS_PER_SEC;
const MICROS_PER_HOUR: u64 = 60 * MICROS_PER_MIN;

const TOP_KEYS: &[&str] = &[
    "name",
    "nodes",
    "duration",
    "bootstrap_expect",
    "start_spread",
    "network",
    "events",
    "chaos",
    "spec",
    "capabilities",
];
const EVENT_KEYS: &[&str] = &[
    "at",
    "crash",
    "restart",
    "partition",
    "oneway",
    "loss",
    "skew",
    "heal",
];
const ACTION_KEYS: &[&str] = &[
    "crash",
    "restart",
    "partition",
    "oneway",
    "loss",
    "skew",
    "heal",
];

/// Parses a duration such as `250us`, `5ms`, `1.5s`, `2m` or `1h` into
/// microseconds. A unit is required; `µs` is accepted for `us`. Fractions are
/// allowed as long as the result is a whole number of microseconds.
///
/// # Errors
///
/// A message (without position) for a missing or unknown unit, a malformed
/// number, a value that is not whole microseconds, or one that overflows `u64`.
pub fn parse_duration_us(s: &str) -> Result<u64, String> {
    const HINT: &str = "expected a number and a unit (us, ms, s, m, h), e.g. `30s` or `1.5s`";
    let text = s.trim();
    if text.is_empty() {
        return Err(format!("empty duration; {HINT}"));
    }
    let split = text
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_digit() || c == '.'))
        .map_or(text.len(), |(i, _)| i);
    let (number, unit) = (&text[..split], text[split..].trim_start());
    if number.is_empty() {
        return Err(format!("invalid duration {}: {HINT}", quote(text)));
    }
    let unit_us = match unit {
        "us" | "µs" | "μs" => 1,
        "ms" => MICROS_PER_MS,
        "s" => MICROS_PER_SEC,
        "m" => MICROS_PER_MIN,
        "h" => MICROS_PER_HOUR,
        "" => {
            return Err(format!(
                "duration {} has no unit; write e.g. `{number}s` or `{number}ms` (units: us, ms, s, m, h)",
                quote(text)
            ));
        }
        other => {
            return Err(format!(
                "unknown unit {} in duration {} (units: us, ms, s, m, h)",
                quote(other),
                quote(text)
            ));
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let malformed =
        whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty());
    if malformed {
        return Err(format!("invalid duration {}: {HINT}", quote(text)));
    }
    let too_large = || format!("duration {} is too large", quote(text));
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let mut total = whole.checked_mul(unit_us).ok_or_else(too_large)?;
    let fraction = fraction.trim_end_matches('0');
    if !fraction.is_empty() {
        let not_whole = || {
            format!(
                "duration {} is not a whole number of microseconds",
                quote(text)
            )
        };
        // unit_us < 10^10, so an exact fraction never has more than 10
        // significant digits; longer ones cannot be whole microseconds.
        if fraction.len() > 10 {
            return Err(not_whole());
        }
        let digits: u128 = fraction.parse().map_err(|_| not_whole())?;
        let scale = 10u128.pow(fraction.len() as u32);
        let scaled = digits * u128::from(unit_us);
        if !scaled.is_multiple_of(scale) {
            return Err(not_whole());
        }
        let extra = u64::try_from(scaled / scale).map_err(|_| too_large())?;
        total = total.checked_add(extra).ok_or_else(too_large)?;
    }
    Ok(total)
}

/// Formats microseconds for messages: whole seconds as `90s`, else `ms` or `us`.
fn format_duration(us: u64) -> String {
    if us.is_multiple_of(MICROS_PER_SEC) {
        format!("{}s", us / MICROS_PER_SEC)
    } else if us.is_multiple_of(MICROS_PER_MS) {
        format!("{}ms", us / MICROS_PER_MS)
    } else {
        format!("{us}us")
    }
}

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
    /// Shift one node's clock.
    Skew {
        /// The node whose clock moves.
        node: usize,
        /// The shift, positive or negative.
        offset_us: i64,
    },
    /// Remove partitions and one-way cuts and restore the scenario's base loss.
    Heal,
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
    /// Largest clock skew chaos may apply (default 0: no skew).
    pub max_skew_us: u64,
}

/// Why a scenario file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be parsed; `line` and `column` are 1-based.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        /// The file name as the caller gave it.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The file parsed but does not fit the colony it is run on.
    #[error("{file}: {message}")]
    Invalid {
        /// The file name as the caller gave it.
        file: String,
        /// What is wrong.
        message: String,
    },
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
            Action::Skew { node, .. } => Box::new(std::iter::once(*node)),
            Action::Crash(Target::Queen)
            | Action::Restart(RestartTarget::Crashed)
            | Action::Loss(_)
            | Action::Heal => Box::new(std::iter::empty()),
        }
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Converts a serde_norway error into `FILE:LINE:COL: message`.
fn yaml_error(err: &serde_norway::Error, text: &str, file: &str) -> ScenarioError {
    let location = err.location();
    let (line, column) = location
        .as_ref()
        .map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
    let mut message = err.to_string();
    // serde_norway appends the position in words; we print it as FILE:LINE:COL.
    let mut suffixes = vec![format!(" at line {line} column {column}")];
    if let Some(l) = &location {
        suffixes.push(format!(" at position {}", l.index()));
    }
    for suffix in suffixes {
        if let Some(stripped) = message.strip_suffix(suffix.as_str()) {
            message = stripped.to_owned();
            break;
        }
        if let Some(at) = message.find(suffix.as_str()) {
            message.replace_range(at..at + suffix.len(), "");
            break;
        }
    }
    let at_tab = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.chars().nth(column - 1))
        == Some('\t');
    if at_tab && !message.contains("tab") {
        message.push_str(" (a tab: YAML indents with spaces only)");
    }
    ScenarioError::Parse {
        file: file.to_owned(),
        line,
        column,
        message: suggest_field(&message).replace('\n', "\\n"),
    }
}

/// Rewrites serde's "unknown field `x`, expected one of ..." into
/// "unknown field `x`, did you mean `y`?" when one expected field is close.
fn suggest_field(message: &str) -> String {
    const MARK: &str = "unknown field `";
    let Some(start) = message.find(MARK) else {
        return message.to_owned();
    };
    let rest = &message[start + MARK.len()..];
    let Some(end) = rest.find('`') else {
        return message.to_owned();
    };
    let found = &rest[..end];
    let Some(expected) = rest[end + 1..].split_once("expected").map(|(_, e)| e) else {
        return message.to_owned();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match closest(found, candidates.iter().copied()) {
        Some(best) => format!(
            "{}unknown field `{found}`, did you mean `{best}`?",
            &message[..start]
        ),
        None => message.to_owned(),
    }
}

/// The candidate closest to `found`, if one is close enough to be a typo.
fn closest<'a>(found: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let found = found.to_lowercase();
    let mut best: Option<((usize, bool), &'a str)> = None;
    for candidate in candidates {
        let distance = edit_distance(&found, candidate);
        let close = distance <= (candidate.chars().count() / 3).max(1)
            || (found.chars().count() >= 3 && candidate.starts_with(found.as_str()));
        // On equal distance, a candidate the typo is a prefix of wins (`gpu` → `gpus`).
        let rank = (distance, !candidate.starts_with(found.as_str()));
        if close && best.is_none_or(|(r, _)| rank < r) {
            best = Some((rank, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// User text in backticks, with control characters escaped so that messages
/// stay on one line.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('`');
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('`');
    out
}

// ---------------------------------------------------------------------------
// Keys

/// Deserializes a map key, rejecting unknown and repeated keys, and a second
/// action key in one event, at the key's position.
struct KeySeed<'a> {
    fields: &'static [&'static str],
    seen: &'a [&'static str],
    /// Keys of which at most one may appear (the event actions).
    exclusive: &'static [&'static str],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = &'static str;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = &'static str;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let Some(&key) = self.fields.iter().find(|&&f| f == v) else {
            return Err(E::unknown_field(v, self.fields));
        };
        if self.seen.contains(&key) {
            return Err(E::duplicate_field(key));
        }
        let other_action = self
            .seen
            .iter()
            .find(|k| self.exclusive.contains(k))
            .filter(|_| self.exclusive.contains(&key));
        if let Some(other) = other_action {
            return Err(E::custom(format_args!(
                "an event has exactly one action, but this one has `{other}` and `{key}`; split it into two events"
            )));
        }
        Ok(key)
    }
}

// ---------------------------------------------------------------------------
// Top level

struct ScenarioSeed {
    stem: String,
}

impl<'de> DeserializeSeed<'de> for ScenarioSeed {
    type Value = Scenario;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Scenario, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ScenarioSeed {
    type Value = Scenario;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a scenario (a map with keys such as `nodes`, `duration` and `events`)")
    }

    /// An empty file is a scenario with every default.
    fn visit_unit<E: de::Error>(self) -> Result<Scenario, E> {
        Ok(Scenario {
            name: self.stem,
            nodes: None,
            duration_us: None,
            bootstrap_expect: None,
            start_spread_us: 0,
            network: NetworkSpec::default(),
            events: Vec::new(),
            chaos: None,
            spec: None,
            capabilities: Vec::new(),
        })
    }

    /// Cross-key checks (events within `duration`, `bootstrap_expect` within
    /// `nodes`, ...) run on whichever of the two keys comes second, so the
    /// error points at a real place whatever order the file uses.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scenario, A::Error> {
        let mut seen: Vec<&'static str> = Vec::new();
        let mut name = None;
        let mut nodes: Option<usize> = None;
        let mut duration: Option<u64> = None;
        let mut bootstrap_expect: Option<usize> = None;
        let mut start_spread: Option<u64> = None;
        let mut network = None;
        let mut events: Option<Vec<TimedEvent>> = None;
        let mut chaos: Option<ChaosSpec> = None;
        let mut spec: Option<String> = None;
        let mut capabilities: Vec<CapClass> = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed {
            fields: TOP_KEYS,
            seen: &seen,
            exclusive: &[],
        })? {
            seen.push(key);
            match key {
                "name" => name = Some(map.next_value::<String>()?),
                "nodes" => {
                    nodes = Some(map.next_value_seed(CountSeed(|n: usize| {
                        if n > MAX_NODES {
                            return Err(format!("at most {MAX_NODES} nodes are supported"));
                        }
                        match bootstrap_expect {
                            Some(b) if b > n => {
                                Err(format!("nodes {n} is fewer than bootstrap_expect ({b})"))
                            }
                            _ => Ok(()),
                        }
                    }))?);
                }
                "bootstrap_expect" => {
                    bootstrap_expect =
                        Some(map.next_value_seed(CountSeed(|b: usize| match nodes {
                            Some(n) if b > n => {
                                Err(format!("bootstrap_expect {b} is more than nodes ({n})"))
                            }
                            _ => Ok(()),
                        }))?);
                }
                "duration" => {
                    let last_event = events
                        .as_deref()
                        .and_then(|events| events.iter().enumerate().max_by_key(|(_, e)| e.at_us));
                    duration = Some(map.next_value_seed(DurationSeed(|d: u64| {
                        if d == 0 {
                            return Err("duration must be longer than 0s".to_owned());
                        }
                        let d_text = format_duration(d);
                        if let Some((index, event)) = last_event.filter(|(_, e)| e.at_us > d) {
                            return Err(format!(
                                "duration {d_text} ends before events[{index}] (at {})",
                                format_duration(event.at_us)
                            ));
                        }
                        if let Some(chaos) = chaos.as_ref().filter(|c| c.until_us > d) {
                            return Err(format!(
                                "duration {d_text} ends before chaos `until` ({})",
                                format_duration(chaos.until_us)
                            ));
                        }
                        match start_spread {
                            Some(s) if s > d => Err(format!(
                                "duration {d_text} is shorter than start_spread ({})",
                                format_duration(s)
                            )),
                            _ => Ok(()),
                        }
                    }))?);
                }
                "start_spread" => {
                    start_spread =
                        Some(map.next_value_seed(DurationSeed(|s: u64| match duration {
                            Some(d) if s > d => Err(format!(
                                "start_spread {} is longer than duration ({})",
                                format_duration(s),
                                format_duration(d)
                            )),
                            _ => Ok(()),
                        }))?);
                }
                "network" => {
                    network = Some(
                        map.next_value_seed(MapSeed::<NetworkRaw>::new())?
                            .into_spec(),
                    )
                }
                "events" => events = Some(map.next_value_seed(EventsSeed { duration })?),
                "chaos" => chaos = Some(map.next_value_seed(ChaosSeed { duration })?),
                "spec" => spec = Some(map.next_value::<String>()?),
                "capabilities" => {
                    capabilities = map
                        .next_value::<Vec<CapsRaw>>()?
                        .into_iter()
                        .map(CapsRaw::into_class)
                        .collect();
                }
                _ => {
                    return Err(de::Error::custom(format_args!(
                        "internal error: unhandled key `{key}`"
                    )));
                }
            }
        }
        let mut events = events.unwrap_or_default();
        events.sort_by_key(|e| e.at_us);
        Ok(Scenario {
            name: name.unwrap_or(self.stem),
            nodes,
            duration_us: duration,
            bootstrap_expect,
            start_spread_us: start_spread.unwrap_or(0),
            network: network.unwrap_or_default(),
            events,
            chaos,
            spec,
            capabilities,
        })
    }
}

// ---------------------------------------------------------------------------
// Scalars

/// A positive count (`nodes`, `bootstrap_expect`) with an extra check.
struct CountSeed<F>(F);

impl<'de, F: FnOnce(usize) -> Result<(), String>> DeserializeSeed<'de> for CountSeed<F> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<F: FnOnce(usize) -> Result<(), String>> Visitor<'_> for CountSeed<F> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a positive whole number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        if v == 0 {
            return Err(E::custom("must be at least 1"));
        }
        let n = usize::try_from(v).map_err(|_| E::custom(format_args!("{v} is too large")))?;
        (self.0)(n).map_err(E::custom)?;
        Ok(n)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
        }
    }
}

/// A duration string with an extra check on its value.
struct DurationSeed<F>(F);

impl<'de, F: FnOnce(u64) -> Result<(), String>> DeserializeSeed<'de> for DurationSeed<F> {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<F: FnOnce(u64) -> Result<(), String>> Visitor<'_> for DurationSeed<F> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration such as `30s`, `250ms` or `1.5s`")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        let us = parse_duration_us(v).map_err(E::custom)?;
        (self.0)(us).map_err(E::custom)?;
        Ok(us)
    }
}

fn no_check<T>(_: T) -> Result<(), String> {
    Ok(())
}

/// A duration with no extra check.
struct Duration(u64);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        DurationSeed(no_check::<u64>)
            .deserialize(deserializer)
            .map(Duration)
    }
}

/// A duration that must be longer than zero.
struct PositiveDuration(u64);

impl<'de> Deserialize<'de> for PositiveDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        DurationSeed(|us: u64| {
            if us == 0 {
                Err("must be longer than 0s".to_owned())
            } else {
                Ok(())
            }
        })
        .deserialize(deserializer)
        .map(PositiveDuration)
    }
}

/// A duration with an optional sign, like `500ms` or `-200ms`.
struct SignedDuration(i64);

impl<'de> Deserialize<'de> for SignedDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(SignedDurationVisitor)
    }
}

struct SignedDurationVisitor;

impl Visitor<'_> for SignedDurationVisitor {
    type Value = SignedDuration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration with an optional sign, such as `500ms` or `-200ms`")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SignedDuration, E> {
        let text = v.trim();
        let (negative, magnitude) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let us = parse_duration_us(magnitude).map_err(E::custom)?;
        let us = i64::try_from(us)
            .map_err(|_| E::custom(format_args!("offset {} is too large", quote(text))))?;
        Ok(SignedDuration(if negative { -us } else { us }))
    }
}

/// A probability in `[0, 1]`.
struct Probability(f64);

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ProbabilityVisitor)
    }
}

struct ProbabilityVisitor;

impl Visitor<'_> for ProbabilityVisitor {
    type Value = Probability;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a probability between 0.0 and 1.0")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Probability, E> {
        if (0.0..=1.0).contains(&v) {
            Ok(Probability(v))
        } else {
            Err(E::custom(format_args!(
                "{v} is not a probability; expected a number between 0.0 and 1.0"
            )))
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Probability, E> {
        match v {
            0 => Ok(Probability(0.0)),
            1 => Ok(Probability(1.0)),
            _ => Err(E::custom(format_args!(
                "{v} is not a probability; expected a number between 0.0 and 1.0"
            ))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Probability, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format_args!(
                "{v} is not a probability; expected a number between 0.0 and 1.0"
            ))),
        }
    }
}

/// `latency: "1ms..5ms"` or a single `"3ms"`.
struct Latency {
    min_us: u64,
    max_us: u64,
}

impl<'de> Deserialize<'de> for Latency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(LatencyVisitor)
    }
}

struct LatencyVisitor;

impl Visitor<'_> for LatencyVisitor {
    type Value = Latency;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a latency range such as \"1ms..5ms\" or a single latency such as \"3ms\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Latency, E> {
        let Some((min, max)) = v.split_once("..") else {
            let us = parse_duration_us(v).map_err(E::custom)?;
            return Ok(Latency {
                min_us: us,
                max_us: us,
            });
        };
        let max = max.strip_prefix('=').unwrap_or(max);
        let min_us = parse_duration_us(min).map_err(E::custom)?;
        let max_us = parse_duration_us(max).map_err(E::custom)?;
        if min_us > max_us {
            return Err(E::custom(format_args!(
                "latency range {} is reversed; write the smaller latency first",
                quote(v)
            )));
        }
        Ok(Latency { min_us, max_us })
    }
}

/// `heal: true` (the only value that makes sense).
struct HealFlag;

impl<'de> Deserialize<'de> for HealFlag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HealVisitor)
    }
}

struct HealVisitor;

impl Visitor<'_> for HealVisitor {
    type Value = HealFlag;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`true`")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<HealFlag, E> {
        if v {
            Ok(HealFlag)
        } else {
            Err(E::custom(
                "only `true` makes sense (to keep a fault in place, leave the event out)",
            ))
        }
    }
}

// ---------------------------------------------------------------------------
// Node lists

/// Parses `"5"`, `"0..50"` (exclusive) or `"0..=49"` (inclusive) into a
/// half-open range of node indices.
fn parse_node_spec(s: &str) -> Result<Range<usize>, String> {
    const HINT: &str = "ranges look like `0..50` or `0..=49`";
    let text = s.trim();
    let index = |part: &str| -> Result<usize, String> {
        let part = part.trim();
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(if part.is_empty() {
                format!(
                    "invalid node range {}: it needs a start and an end ({HINT})",
                    quote(text)
                )
            } else {
                format!(
                    "invalid node range {}: {} is not a node index ({HINT})",
                    quote(text),
                    quote(part)
                )
            });
        }
        part.parse::<usize>()
            .map_err(|_| format!("node index {} is too large", quote(part)))
    };
    let range = if let Some((start, end)) = text.split_once("..=") {
        let (start, end) = (index(start)?, index(end)?);
        if start > end {
            return Err(format!(
                "node range {} is empty: the start must not be after the end",
                quote(text)
            ));
        }
        start..end.saturating_add(1)
    } else if let Some((start, end)) = text.split_once("..") {
        let (start, end) = (index(start)?, index(end)?);
        if start >= end {
            return Err(format!(
                "node range {} is empty: the start must be below the end (`..` excludes the end; use `..=` to include it)",
                quote(text)
            ));
        }
        start..end
    } else if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let n = index(text)?;
        n..n.saturating_add(1)
    } else {
        return Err(format!(
            "invalid node {}: expected a node index or a range ({HINT})",
            quote(text)
        ));
    };
    if range.end > MAX_NODES {
        return Err(format!(
            "node index in {} is too large (at most {})",
            quote(text),
            MAX_NODES - 1
        ));
    }
    Ok(range)
}

/// Sorted, deduplicated node indices from a list of ranges.
fn expand(mut ranges: Vec<Range<usize>>) -> Vec<usize> {
    ranges.sort_by_key(|r| r.start);
    let mut nodes = Vec::new();
    let mut next = 0;
    for range in ranges {
        let start = range.start.max(next);
        nodes.extend(start..range.end);
        next = next.max(range.end);
    }
    nodes
}

fn single_node<E: de::Error>(v: u64) -> Result<Range<usize>, E> {
    match usize::try_from(v) {
        Ok(n) if n < MAX_NODES => Ok(n..n + 1),
        _ => Err(E::custom(format_args!(
            "node index {v} is too large (at most {})",
            MAX_NODES - 1
        ))),
    }
}

fn negative_node<E: de::Error>(v: i64) -> E {
    E::custom(format_args!("node indices start at 0; {v} is not one"))
}

/// One item of a node list: an index or a range string.
struct NodeItem(Range<usize>);

impl<'de> Deserialize<'de> for NodeItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeItemVisitor)
    }
}

struct NodeItemVisitor;

impl Visitor<'_> for NodeItemVisitor {
    type Value = NodeItem;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a node index or a range such as \"0..50\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NodeItem, E> {
        single_node(v).map(NodeItem)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<NodeItem, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(negative_node(v)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeItem, E> {
        parse_node_spec(v).map(NodeItem).map_err(E::custom)
    }
}

/// What a node list may be besides indices and ranges.
#[derive(Clone, Copy, PartialEq)]
enum ListKind {
    /// `crash:` also takes `queen`.
    Crash,
    /// `restart:` also takes `crashed`.
    Restart,
    /// `oneway` `from`/`to`: plain node lists.
    Plain,
    /// A partition group: a list, or a single range string.
    Group,
}

impl ListKind {
    fn keyword(self) -> Option<&'static str> {
        match self {
            ListKind::Crash => Some("queen"),
            ListKind::Restart => Some("crashed"),
            ListKind::Plain | ListKind::Group => None,
        }
    }
}

/// A parsed node list: the keyword, or nodes.
enum NodeList {
    Keyword,
    Nodes(Vec<usize>),
}

/// Parses a node list: an index, a range string, a list of those, or the
/// list kind's keyword. For partition groups, `taken` records which group
/// each node is in so a node in two groups is reported at the second group.
struct NodeListSeed<'a> {
    kind: ListKind,
    taken: Option<(&'a mut BTreeMap<usize, usize>, usize)>,
}

impl<'de> DeserializeSeed<'de> for NodeListSeed<'_> {
    type Value = NodeList;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<NodeList, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl NodeListSeed<'_> {
    fn finish<E: de::Error>(self, ranges: Vec<Range<usize>>) -> Result<NodeList, E> {
        let nodes = expand(ranges);
        if let Some((taken, group)) = self.taken {
            for &node in &nodes {
                if let Some(&other) = taken.get(&node) {
                    return Err(E::custom(format_args!(
                        "node {node} is in two partition groups ({other} and {group}); a node can be in only one"
                    )));
                }
            }
            taken.extend(nodes.iter().map(|&n| (n, group)));
        }
        Ok(NodeList::Nodes(nodes))
    }
}

impl<'de> Visitor<'de> for NodeListSeed<'_> {
    type Value = NodeList;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.kind {
            ListKind::Crash => f.write_str(
                "`queen`, a node index, a range such as \"0..50\", or a list of indices and ranges",
            ),
            ListKind::Restart => f.write_str(
                "`crashed`, a node index, a range such as \"0..50\", or a list of indices and ranges",
            ),
            ListKind::Plain => f.write_str(
                "a node index, a range such as \"0..50\", or a list of indices and ranges",
            ),
            ListKind::Group => f.write_str(
                "a partition group: a list of node indices and ranges, or a range such as \"0..50\"",
            ),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NodeList, E> {
        if self.kind == ListKind::Group {
            return Err(E::custom(format_args!(
                "a partition group is a list or a range string; write [{v}] for a group of one node"
            )));
        }
        let range = single_node(v)?;
        self.finish(vec![range])
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<NodeList, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(negative_node(v)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeList, E> {
        if let Some(keyword) = self.kind.keyword() {
            if v == keyword {
                return Ok(NodeList::Keyword);
            }
            let looks_like_nodes =
                v.contains("..") || v.trim().starts_with(|c: char| c.is_ascii_digit());
            if !looks_like_nodes {
                let hint = match closest(v, [keyword]) {
                    Some(k) => format!("did you mean `{k}`?"),
                    None => format!("expected `{keyword}`, a node index, a range or a list"),
                };
                return Err(E::custom(format_args!(
                    "unknown target {}; {hint}",
                    quote(v)
                )));
            }
        }
        if self.kind == ListKind::Group && !v.contains("..") {
            return Err(E::custom(format_args!(
                "a partition group is a list or a range string; write [{}] for a group of one node",
                v.trim()
            )));
        }
        let range = parse_node_spec(v).map_err(E::custom)?;
        self.finish(vec![range])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeList, A::Error> {
        let mut ranges = Vec::new();
        while let Some(NodeItem(range)) = seq.next_element()? {
            ranges.push(range);
        }
        if ranges.is_empty() {
            return Err(de::Error::custom(match self.kind {
                ListKind::Group => {
                    "empty partition group; leave it out (nodes in no group are isolated)"
                }
                _ => "empty node list",
            }));
        }
        self.finish(ranges)
    }
}

/// `partition: [[0, 1, 2], ["3..10"]]` or `partition: ["0..60", "60..100"]`.
struct PartitionSeed;

impl<'de> DeserializeSeed<'de> for PartitionSeed {
    type Value = Vec<Vec<usize>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PartitionSeed {
    type Value = Vec<Vec<usize>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of partition groups, e.g. [[0, 1, 2], [\"3..10\"]]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut taken = BTreeMap::new();
        let mut groups = Vec::new();
        loop {
            let seed = NodeListSeed {
                kind: ListKind::Group,
                taken: Some((&mut taken, groups.len())),
            };
            match seq.next_element_seed(seed)? {
                Some(NodeList::Nodes(nodes)) => groups.push(nodes),
                Some(NodeList::Keyword) => {
                    return Err(de::Error::custom("internal error: keyword in a partition"));
                }
                None => break,
            }
        }
        Ok(groups)
    }
}

struct Nodes(Vec<usize>);

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seed = NodeListSeed {
            kind: ListKind::Plain,
            taken: None,
        };
        match seed.deserialize(deserializer)? {
            NodeList::Nodes(nodes) => Ok(Nodes(nodes)),
            NodeList::Keyword => Err(de::Error::custom("internal error: keyword in a node list")),
        }
    }
}

// ---------------------------------------------------------------------------
// Maps

/// A map type whose derived `Deserialize` does the work; this only gives
/// type errors a readable "expected" instead of the Rust struct's name.
trait Described {
    const EXPECTING: &'static str;
}

struct MapSeed<T>(std::marker::PhantomData<T>);

impl<T> MapSeed<T> {
    fn new() -> Self {
        MapSeed(std::marker::PhantomData)
    }
}

impl<'de, T: Deserialize<'de> + Described> DeserializeSeed<'de> for MapSeed<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de> + Described> Visitor<'de> for MapSeed<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

/// One entry of `capabilities:`: `{nodes: "0..80", cpu: 8, memory: 32Gi, disk: 500Gi, gpus: 1,
/// arch: x86_64, labels: {zone: a}}`. Quantities are parsed as in colony specs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CapsRaw {
    nodes: Nodes,
    cpu: Cpu,
    memory: Mib,
    #[serde(default)]
    disk: Option<Mib>,
    #[serde(default)]
    gpus: Option<u16>,
    #[serde(default)]
    arch: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl CapsRaw {
    fn into_class(self) -> CapClass {
        CapClass {
            nodes: self.nodes.0,
            caps: swarm_core::Capabilities {
                cpu_millis: self.cpu.0,
                memory_mib: self.memory.0,
                disk_mib: self.disk.map_or(0, |d| d.0),
                gpus: self.gpus.unwrap_or(0),
                arch: self.arch.unwrap_or_else(|| "x86_64".to_owned()),
                labels: self.labels,
            },
        }
    }
}

/// CPU as in colony specs: `2`, `0.5`, `"500m"`.
struct Cpu(u32);

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(QuantityVisitor { cpu: true })
            .map(|v| Cpu(v as u32))
    }
}

/// Memory or disk as in colony specs: `"512Mi"`, `"32Gi"` (a unit is required).
struct Mib(u64);

impl<'de> Deserialize<'de> for Mib {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(QuantityVisitor { cpu: false })
            .map(Mib)
    }
}

struct QuantityVisitor {
    cpu: bool,
}

impl QuantityVisitor {
    fn parse<E: de::Error>(&self, text: &str) -> Result<u64, E> {
        if self.cpu {
            dna::spec::quantity::cpu_millis(text)
                .map(u64::from)
                .map_err(E::custom)
        } else {
            dna::spec::quantity::mib(text).map_err(E::custom)
        }
    }
}

impl Visitor<'_> for QuantityVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.cpu {
            f.write_str("a cpu quantity such as 2, 0.5 or \"500m\"")
        } else {
            f.write_str("a quantity with a unit such as \"512Mi\" or \"32Gi\"")
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        self.parse(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        self.parse(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        self.parse(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        self.parse(&v.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkRaw {
    #[serde(default)]
    latency: Option<Latency>,
    #[serde(default)]
    loss: Option<Probability>,
    #[serde(default)]
    duplicate: Option<Probability>,
    #[serde(default)]
    reorder: Option<Probability>,
}

impl Described for NetworkRaw {
    const EXPECTING: &'static str =
        "a network map such as {latency: \"1ms..5ms\", loss: 0.01, duplicate: 0.0, reorder: 0.0}";
}

impl NetworkRaw {
    fn into_spec(self) -> NetworkSpec {
        let default = NetworkSpec::default();
        let (latency_min_us, latency_max_us) = self
            .latency
            .map_or((default.latency_min_us, default.latency_max_us), |l| {
                (l.min_us, l.max_us)
            });
        NetworkSpec {
            latency_min_us,
            latency_max_us,
            loss: self.loss.map_or(default.loss, |p| p.0),
            duplicate: self.duplicate.map_or(default.duplicate, |p| p.0),
            reorder: self.reorder.map_or(default.reorder, |p| p.0),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OneWayRaw {
    from: Nodes,
    to: Nodes,
}

impl Described for OneWayRaw {
    const EXPECTING: &'static str = "a one-way cut such as {from: [0], to: [\"1..5\"]}";
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SkewRaw {
    node: usize,
    offset: SignedDuration,
}

impl Described for SkewRaw {
    const EXPECTING: &'static str = "a clock skew such as {node: 3, offset: \"500ms\"}";
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChaosRaw {
    #[serde(default)]
    from: Option<Duration>,
    until: Duration,
    #[serde(default)]
    every: Option<PositiveDuration>,
    #[serde(default)]
    max_skew: Option<Duration>,
}

/// `chaos: {from: 10s, until: 100s, every: 5s, max_skew: 200ms}`; `until`
/// must fit in `duration` when that is known.
struct ChaosSeed {
    duration: Option<u64>,
}

impl<'de> DeserializeSeed<'de> for ChaosSeed {
    type Value = ChaosSpec;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<ChaosSpec, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChaosSeed {
    type Value = ChaosSpec;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a chaos map such as {from: 10s, until: 100s, every: 5s, max_skew: 200ms}")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ChaosSpec, A::Error> {
        let raw = ChaosRaw::deserialize(MapAccessDeserializer::new(map))?;
        let spec = ChaosSpec {
            from_us: raw.from.map_or(5 * MICROS_PER_SEC, |d| d.0),
            until_us: raw.until.0,
            mean_interval_us: raw.every.map_or(5 * MICROS_PER_SEC, |d| d.0),
            max_skew_us: raw.max_skew.map_or(0, |d| d.0),
        };
        if spec.from_us >= spec.until_us {
            return Err(de::Error::custom(format_args!(
                "chaos `from` ({}) must be before `until` ({})",
                format_duration(spec.from_us),
                format_duration(spec.until_us)
            )));
        }
        if let Some(d) = self.duration.filter(|&d| spec.until_us > d) {
            return Err(de::Error::custom(format_args!(
                "chaos `until` ({}) is after the end of the scenario (duration {})",
                format_duration(spec.until_us),
                format_duration(d)
            )));
        }
        Ok(spec)
    }
}

/// `events: [...]`; each `at` must fit in `duration` when that is known.
struct EventsSeed {
    duration: Option<u64>,
}

impl<'de> DeserializeSeed<'de> for EventsSeed {
    type Value = Vec<TimedEvent>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsSeed {
    type Value = Vec<TimedEvent>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of events such as {at: 30s, crash: queen}")
    }

    /// `events:` with nothing after it: no events.
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut events = Vec::new();
        while let Some(event) = seq.next_element_seed(EventSeed {
            duration: self.duration,
        })? {
            events.push(event);
        }
        Ok(events)
    }
}

/// One event: `at` plus exactly one action key.
struct EventSeed {
    duration: Option<u64>,
}

impl<'de> DeserializeSeed<'de> for EventSeed {
    type Value = TimedEvent;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<TimedEvent, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed {
    type Value = TimedEvent;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event: a map with `at` and one action, such as {at: 30s, crash: queen}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TimedEvent, A::Error> {
        let mut seen: Vec<&'static str> = Vec::new();
        let mut at = None;
        let mut action = None;
        while let Some(key) = map.next_key_seed(KeySeed {
            fields: EVENT_KEYS,
            seen: &seen,
            exclusive: ACTION_KEYS,
        })? {
            seen.push(key);
            let parsed = match key {
                "at" => {
                    at = Some(map.next_value_seed(DurationSeed(
                        |us: u64| match self.duration {
                            Some(d) if us > d => Err(format!(
                                "at {} is after the end of the scenario (duration {})",
                                format_duration(us),
                                format_duration(d)
                            )),
                            _ => Ok(()),
                        },
                    ))?);
                    continue;
                }
                "crash" => {
                    let seed = NodeListSeed {
                        kind: ListKind::Crash,
                        taken: None,
                    };
                    Action::Crash(match map.next_value_seed(seed)? {
                        NodeList::Keyword => Target::Queen,
                        NodeList::Nodes(nodes) => Target::Nodes(nodes),
                    })
                }
                "restart" => {
                    let seed = NodeListSeed {
                        kind: ListKind::Restart,
                        taken: None,
                    };
                    Action::Restart(match map.next_value_seed(seed)? {
                        NodeList::Keyword => RestartTarget::Crashed,
                        NodeList::Nodes(nodes) => RestartTarget::Nodes(nodes),
                    })
                }
                "partition" => Action::Partition(map.next_value_seed(PartitionSeed)?),
                "oneway" => {
                    let raw = map.next_value_seed(MapSeed::<OneWayRaw>::new())?;
                    Action::OneWay {
                        from: raw.from.0,
                        to: raw.to.0,
                    }
                }
                "loss" => Action::Loss(map.next_value::<Probability>()?.0),
                "skew" => {
                    let raw = map.next_value_seed(MapSeed::<SkewRaw>::new())?;
                    Action::Skew {
                        node: raw.node,
                        offset_us: raw.offset.0,
                    }
                }
                "heal" => {
                    let HealFlag = map.next_value()?;
                    Action::Heal
                }
                _ => {
                    return Err(de::Error::custom(format_args!(
                        "internal error: unhandled key `{key}`"
                    )));
                }
            };
            action = Some(parsed);
        }
        let Some(at_us) = at else {
            return Err(de::Error::custom(
                "event has no `at`; say when it happens, e.g. `at: 30s`",
            ));
        };
        let Some(action) = action else {
            return Err(de::Error::custom(format_args!(
                "event has no action; add one of {}",
                ACTION_KEYS
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        Ok(TimedEvent { at_us, action })
    }
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, String> {
        Scenario::parse(text, "t.yaml").map_err(|e| e.to_string())
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(s) => panic!("expected an error, parsed {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_us("250us"), Ok(250));
        assert_eq!(parse_duration_us("250µs"), Ok(250));
        assert_eq!(parse_duration_us("5ms"), Ok(5_000));
        assert_eq!(parse_duration_us("1.5s"), Ok(1_500_000));
        assert_eq!(parse_duration_us("0.001s"), Ok(1_000));
        assert_eq!(parse_duration_us("1.000000s"), Ok(1_000_000));
        assert_eq!(parse_duration_us("2m"), Ok(120_000_000));
        assert_eq!(parse_duration_us("1h"), Ok(3_600_000_000));
        assert_eq!(parse_duration_us(" 30 s "), Ok(30_000_000));
        assert_eq!(parse_duration_us("0s"), Ok(0));
        assert_eq!(
            parse_duration_us("0.5us"),
            Err("duration `0.5us` is not a whole number of microseconds".to_owned())
        );
        assert_eq!(
            parse_duration_us("30"),
            Err(
                "duration `30` has no unit; write e.g. `30s` or `30ms` (units: us, ms, s, m, h)"
                    .to_owned()
            )
        );
        assert_eq!(
            parse_duration_us("5sec"),
            Err("unknown unit `sec` in duration `5sec` (units: us, ms, s, m, h)".to_owned())
        );
        for bad in [
            "", "s", "-5s", "1..2s", "1.s", ".5s", "1.2.3s", "abc", "5 s s",
        ] {
            assert!(parse_duration_us(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(parse_duration_us("99999999999999999999h").is_err());
        assert!(parse_duration_us("18446744073709551615h").is_err());
        assert!(parse_duration_us("0.123456789012345678901234567890h").is_err());
        assert_eq!(parse_duration_us("18446744073709551615us"), Ok(u64::MAX));
        assert!(parse_duration_us("18446744073709551616us").is_err());
    }

    #[test]
    fn duration_formatting() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(30 * MICROS_PER_SEC), "30s");
        assert_eq!(format_duration(120 * MICROS_PER_SEC), "120s");
        assert_eq!(format_duration(1_500_000), "1500ms");
        assert_eq!(format_duration(7), "7us");
        for us in [0, 7, 1_500, 1_500_000, 60_000_000, 3_600_000_000, u64::MAX] {
            assert_eq!(parse_duration_us(&format_duration(us)), Ok(us));
        }
    }

    #[test]
    fn node_ranges() {
        assert_eq!(parse_node_spec("0..50"), Ok(0..50));
        assert_eq!(parse_node_spec("0..=49"), Ok(0..50));
        assert_eq!(parse_node_spec(" 3 .. 5 "), Ok(3..5));
        assert_eq!(parse_node_spec("7"), Ok(7..8));
        assert_eq!(parse_node_spec("5..=5"), Ok(5..6));
        for bad in [
            "5..2",
            "5..5",
            "5..=4",
            "a..b",
            "..5",
            "5..",
            "",
            "x",
            "-1..3",
            "1...3",
            "1..=",
            "0..99999999999999999999999",
        ] {
            assert!(parse_node_spec(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(parse_node_spec(&format!("0..{MAX_NODES}")).is_ok());
        assert!(parse_node_spec(&format!("0..={MAX_NODES}")).is_err());
        assert_eq!(expand(vec![5..8, 0..2, 1..3, 6..7]), vec![0, 1, 2, 5, 6, 7]);
    }

    #[test]
    fn brief_example_parses() {
        let text = r#"
name: queen-crash
nodes: 100
duration: 80s
bootstrap_expect: 100
start_spread: 1s
network: {latency: "1ms..5ms", loss: 0.01, duplicate: 0.0, reorder: 0.0}
events:
  - {at: 30s, crash: queen}
  - {at: 40s, restart: crashed}
  - {at: 50s, partition: [[0, 1, 2], ["3..10"]]}
  - {at: 55s, oneway: {from: [0], to: ["1..5"]}}
  - {at: 60s, loss: 0.2}
  - {at: 61s, skew: {node: 3, offset: "-500ms"}}
  - {at: 70s, heal: true}
  - {at: 20s, crash: [9, 1, 2, "5..8", 1]}
  - {at: 20s, crash: "0..=3"}
  - {at: 20s, restart: 3}
chaos: {from: 10s, until: 70s, every: 5s, max_skew: 200ms}
"#;
        let s = parse(text).unwrap();
        assert_eq!(s.name, "queen-crash");
        assert_eq!(s.nodes, Some(100));
        assert_eq!(s.duration_us, Some(80 * MICROS_PER_SEC));
        assert_eq!(s.bootstrap_expect, Some(100));
        assert_eq!(s.start_spread_us, MICROS_PER_SEC);
        assert_eq!(
            s.network,
            NetworkSpec {
                latency_min_us: 1_000,
                latency_max_us: 5_000,
                loss: 0.01,
                duplicate: 0.0,
                reorder: 0.0
            }
        );
        let sec = MICROS_PER_SEC;
        let expected = vec![
            TimedEvent {
                at_us: 20 * sec,
                action: Action::Crash(Target::Nodes(vec![1, 2, 5, 6, 7, 9])),
            },
            TimedEvent {
                at_us: 20 * sec,
                action: Action::Crash(Target::Nodes(vec![0, 1, 2, 3])),
            },
            TimedEvent {
                at_us: 20 * sec,
                action: Action::Restart(RestartTarget::Nodes(vec![3])),
            },
            TimedEvent {
                at_us: 30 * sec,
                action: Action::Crash(Target::Queen),
            },
            TimedEvent {
                at_us: 40 * sec,
                action: Action::Restart(RestartTarget::Crashed),
            },
            TimedEvent {
                at_us: 50 * sec,
                action: Action::Partition(vec![vec![0, 1, 2], (3..10).collect()]),
            },
            TimedEvent {
                at_us: 55 * sec,
                action: Action::OneWay {
                    from: vec![0],
                    to: vec![1, 2, 3, 4],
                },
            },
            TimedEvent {
                at_us: 60 * sec,
                action: Action::Loss(0.2),
            },
            TimedEvent {
                at_us: 61 * sec,
                action: Action::Skew {
                    node: 3,
                    offset_us: -500_000,
                },
            },
            TimedEvent {
                at_us: 70 * sec,
                action: Action::Heal,
            },
        ];
        assert_eq!(s.events, expected);
        assert_eq!(
            s.chaos,
            Some(ChaosSpec {
                from_us: 10 * sec,
                until_us: 70 * sec,
                mean_interval_us: 5 * sec,
                max_skew_us: 200_000
            })
        );
        s.validate(100, "t.yaml").unwrap();
    }

    #[test]
    fn defaults() {
        let s = parse("nodes: 3\n").unwrap();
        assert_eq!(s.name, "t");
        assert_eq!(s.duration_us, None);
        assert_eq!(s.start_spread_us, 0);
        assert_eq!(s.network, NetworkSpec::default());
        assert_eq!(s.network.latency_min_us, 1_000);
        assert_eq!(s.network.latency_max_us, 5_000);
        assert!(s.events.is_empty());
        assert_eq!(s.chaos, None);
        let empty = Scenario::parse("# nothing\n", "dir/empty.yaml").unwrap();
        assert_eq!(empty.name, "empty");
        assert_eq!(parse("events:\n").unwrap().events, vec![]);
        let chaos = parse("chaos: {until: 60s}\n").unwrap().chaos.unwrap();
        assert_eq!(chaos.from_us, 5 * MICROS_PER_SEC);
        assert_eq!(chaos.mean_interval_us, 5 * MICROS_PER_SEC);
        assert_eq!(chaos.max_skew_us, 0);
        let net = parse("network: {latency: 3ms, loss: 1}\n").unwrap().network;
        assert_eq!(
            (net.latency_min_us, net.latency_max_us, net.loss),
            (3_000, 3_000, 1.0)
        );
        let partition =
            parse("events: [{at: 1s, partition: [\"0..2\", [5, \"3..=3\"]]}]\n").unwrap();
        assert_eq!(
            partition.events[0].action,
            Action::Partition(vec![vec![0, 1], vec![3, 5]])
        );
        assert_eq!(
            parse("events: [{at: 1s, partition: []}]\n").unwrap().events[0].action,
            Action::Partition(vec![])
        );
    }

    #[test]
    fn errors_carry_positions() {
        assert_eq!(
            error("nodes: 3\nnetwork:\n  lattency: 1ms\n"),
            "t.yaml:3:3: network: unknown field `lattency`, did you mean `latency`?"
        );
        assert_eq!(
            error("events:\n  - {at: 1s, crash: 1, restart: 2}\n"),
            "t.yaml:2:24: events[0]: an event has exactly one action, but this one has `crash` and `restart`; split it into two events"
        );
        assert_eq!(
            error("events:\n  - {at: 1s, crash: Queen}\n"),
            "t.yaml:2:21: events[0].crash: unknown target `Queen`; did you mean `queen`?"
        );
        assert_eq!(
            error("events:\n  - {at: 1s, partition: [[0, 1], [\"1..3\"]]}\n"),
            "t.yaml:2:34: events[0].partition[1]: node 1 is in two partition groups (0 and 1); a node can be in only one"
        );
        assert_eq!(
            error("bootstrap_expect: 5\nnodes: 3\n"),
            "t.yaml:2:8: nodes: nodes 3 is fewer than bootstrap_expect (5)"
        );
        assert_eq!(
            error("events: [{at: 70s, heal: true}]\nduration: 60s\n"),
            "t.yaml:2:11: duration: duration 60s ends before events[0] (at 70s)"
        );
        assert_eq!(
            error("duration: 60s\nevents: [{at: 70s, heal: true}]\n"),
            "t.yaml:2:15: events[0].at: at 70s is after the end of the scenario (duration 60s)"
        );
        assert_eq!(
            error("duration: 60s\nchaos: {until: 70s}\n"),
            "t.yaml:2:8: chaos: chaos `until` (70s) is after the end of the scenario (duration 60s)"
        );
        assert_eq!(
            error("nodes: 1\nnodes: 2\n"),
            "t.yaml:2:1: duplicate field `nodes`"
        );
    }

    #[test]
    fn validate_checks_indices() {
        let s = parse("nodes: 10\nbootstrap_expect: 10\nevents:\n  - {at: 1s, crash: queen}\n  - {at: 30s, oneway: {from: 1, to: [2, 12]}}\n").unwrap();
        assert_eq!(
            s.validate(10, "f.yaml").unwrap_err().to_string(),
            "f.yaml: events[1] (at 30s): node index 12 out of range (the colony has 10 nodes)"
        );
        assert_eq!(
            s.validate(5, "f.yaml").unwrap_err().to_string(),
            "f.yaml: bootstrap_expect 10 is more than the colony's 5 nodes"
        );
        assert!(s.validate(13, "f.yaml").is_ok());
        assert!(s.validate(0, "f.yaml").is_err());
    }

    #[test]
    fn never_panics_on_odd_input() {
        let inputs = [
            "",
            "~",
            "[]",
            "- 1",
            "42",
            "\"text\"",
            "nodes: [",
            "{",
            "}",
            "\t",
            "a: b: c",
            "nodes: -1",
            "nodes: 1.5",
            "nodes: 99999999999999999999999",
            "duration: ~",
            "events: {}",
            "events: [1]",
            "events: [{}]",
            "events: [{at: 1s}]",
            "events: [{heal: true}]",
            "events: [{at: 1s, crash: []}]",
            "events: [{at: 1s, crash: -3}]",
            "events: [{at: 1s, crash: 1.5}]",
            "events: [{at: 1s, partition: [1, 2]}]",
            "events: [{at: 1s, partition: \"0..5\"}]",
            "events: [{at: 1s, skew: {node: 1, offset: \"--5s\"}}]",
            "events: [{at: 1s, loss: .nan}]",
            "events: [{at: 1s, loss: -0.0}]",
            "events: [{at: 1s, loss: .inf}]",
            "network: {latency: \"5ms..1ms\"}",
            "network: {latency: \"..\"}",
            "network: {latency: 5}",
            "chaos: {until: 1s, from: 2s}",
            "chaos: {until: 10s, every: 0s}",
            "chaos: 5",
            "&a [*a]",
            "a: &x 1\nb: *y",
            "--- 1\n--- 2",
            "!!binary aGVsbG8=",
            "nodes: !tag 5",
            "name: \"\\u0000\\n\"",
            "events: [{at: \"1\\ns\", heal: true}]",
            "events: [{at: 1µ, heal: true}]",
            "events: [{at: 1s, crash: \"ü..ß\"}]",
            "? [1, 2]\n: 3",
            "events: [{? [a] : 1}]",
        ];
        for input in inputs {
            if let Err(e) = Scenario::parse(input, "odd.yaml") {
                let shown = e.to_string();
                assert!(shown.starts_with("odd.yaml:"), "{shown}");
                assert!(!shown.contains('\n'), "{shown}");
            }
        }
    }
}
