//! Timed events and chaos: `events:` (each an `at` plus exactly one action: crash, restart,
//! partition, oneway, loss, skew, pause, load, heal, fail, unhealthy, crash_running) and
//! `chaos:`, with the checks against
//! `duration`; and the top-level `drift:` classes.

use std::fmt;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::nodes::{ListKind, NodeList, NodeListSeed, Nodes, PartitionSeed};
use super::parse::{Described, KeySeed, MapSeed};
use super::values::{
    Duration, DurationSeed, HealFlag, Load, PositiveDuration, Ppm, PpmBound, PpmVisitor,
    Probability, SignedDuration, format_duration,
};
use super::{
    Action, ChaosSpec, DriftClass, DriftRate, MICROS_PER_SEC, ReplicaRef, RestartTarget, Target,
    TimedEvent, Who,
};

const EVENT_KEYS: &[&str] = &[
    "at",
    "crash",
    "restart",
    "partition",
    "oneway",
    "loss",
    "skew",
    "pause",
    "load",
    "heal",
    "fail",
    "unhealthy",
    "crash_running",
];
const ACTION_KEYS: &[&str] = &[
    "crash",
    "restart",
    "partition",
    "oneway",
    "loss",
    "skew",
    "pause",
    "load",
    "heal",
    "fail",
    "unhealthy",
    "crash_running",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicaRaw {
    role: String,
    replica: u32,
}

impl Described for ReplicaRaw {
    const EXPECTING: &'static str = "a replica of the colony spec such as {role: web, replica: 0}";
}

impl ReplicaRaw {
    fn into_ref(self) -> ReplicaRef {
        ReplicaRef {
            role: self.role,
            replica: self.replica,
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
    node: Who,
    offset: SignedDuration,
}

impl Described for SkewRaw {
    const EXPECTING: &'static str = "a clock step such as {node: 3, offset: \"-500ms\"}";
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseRaw {
    node: Who,
    #[serde(rename = "for")]
    for_: PositiveDuration,
}

impl Described for PauseRaw {
    const EXPECTING: &'static str = "a process pause such as {node: queen, for: 2s}";
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRaw {
    node: Who,
    to: Load,
}

impl Described for LoadRaw {
    const EXPECTING: &'static str = "a load report such as {node: queen, to: 0.9}";
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
    max_drift: Option<PpmBound>,
    #[serde(default)]
    max_pause: Option<Duration>,
    /// Gone: refused with a pointer to `max_drift` (at the value's position).
    #[serde(default)]
    max_skew: Option<NoSkew>,
}

/// Chaos no longer steps clocks; this only exists to say so where the old key stands.
struct NoSkew;

const NO_SKEW: &str = "`max_skew` is gone: monotonic clocks never jump; chaos models them with `max_drift` (a rate error such as 200ppm) and `max_pause` (process pauses such as 2s)";

impl<'de> Deserialize<'de> for NoSkew {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through a visitor, so that the error points at the value.
        deserializer.deserialize_any(NoSkewVisitor)
    }
}

struct NoSkewVisitor;

impl Visitor<'_> for NoSkewVisitor {
    type Value = NoSkew;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(NO_SKEW)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<NoSkew, E> {
        Err(E::custom(NO_SKEW))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<NoSkew, E> {
        Err(E::custom(NO_SKEW))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<NoSkew, E> {
        Err(E::custom(NO_SKEW))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<NoSkew, E> {
        Err(E::custom(NO_SKEW))
    }
}

/// `chaos: {from: 10s, until: 100s, every: 5s, max_drift: 200ppm, max_pause: 2s}`; `until`
/// must fit in `duration` when that is known.
pub(super) struct ChaosSeed {
    pub(super) duration: Option<u64>,
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
        f.write_str(
            "a chaos map such as {from: 10s, until: 100s, every: 5s, max_drift: 200ppm, max_pause: 2s}",
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ChaosSpec, A::Error> {
        let raw = ChaosRaw::deserialize(MapAccessDeserializer::new(map))?;
        // `NoSkew` never deserializes, so the key cannot have got this far.
        debug_assert!(raw.max_skew.is_none());
        let spec = ChaosSpec {
            from_us: raw.from.map_or(5 * MICROS_PER_SEC, |d| d.0),
            until_us: raw.until.0,
            mean_interval_us: raw.every.map_or(5 * MICROS_PER_SEC, |d| d.0),
            max_drift_ppm: raw.max_drift.map_or(0, |d| d.0),
            max_pause_us: raw.max_pause.map_or(0, |d| d.0),
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
pub(super) struct EventsSeed {
    pub(super) duration: Option<u64>,
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
                "pause" => {
                    let raw = map.next_value_seed(MapSeed::<PauseRaw>::new())?;
                    Action::Pause {
                        node: raw.node,
                        for_us: raw.for_.0,
                    }
                }
                "load" => {
                    let raw = map.next_value_seed(MapSeed::<LoadRaw>::new())?;
                    Action::Load {
                        node: raw.node,
                        load: raw.to.0,
                    }
                }
                "heal" => {
                    let HealFlag = map.next_value()?;
                    Action::Heal
                }
                "fail" => Action::Fail(
                    map.next_value_seed(MapSeed::<ReplicaRaw>::new())?
                        .into_ref(),
                ),
                "unhealthy" => Action::Unhealthy(
                    map.next_value_seed(MapSeed::<ReplicaRaw>::new())?
                        .into_ref(),
                ),
                "crash_running" => Action::CrashRunning(
                    map.next_value_seed(MapSeed::<ReplicaRaw>::new())?
                        .into_ref(),
                ),
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

/// `drift: 200ppm` (every node draws its rate in ±200 ppm) or a list of classes
/// `[{nodes: "0..3", rate: 250ppm}, {max: 100ppm}]` (see the module doc).
pub(super) struct DriftSeed;

impl<'de> DeserializeSeed<'de> for DriftSeed {
    type Value = Vec<DriftClass>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DriftSeed {
    type Value = Vec<DriftClass>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(
            "a drift bound such as `200ppm`, or a list of classes such as [{nodes: \"0..3\", rate: 250ppm}]",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let max = PpmVisitor { bound: true }.visit_str(v)?;
        Ok(vec![DriftClass {
            nodes: None,
            rate: DriftRate::Uniform(max),
        }])
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        PpmVisitor { bound: true }.visit_u64(v).map(|_| Vec::new())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        PpmVisitor { bound: true }.visit_i64(v).map(|_| Vec::new())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        PpmVisitor { bound: true }.visit_f64(v).map(|_| Vec::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut classes = Vec::new();
        while let Some(class) = seq.next_element_seed(DriftClassSeed)? {
            classes.push(class);
        }
        Ok(classes)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DriftClassRaw {
    #[serde(default)]
    nodes: Option<Nodes>,
    #[serde(default)]
    rate: Option<Ppm>,
    #[serde(default)]
    max: Option<PpmBound>,
}

/// One drift class: `nodes` (default: every node) and exactly one of `rate` or `max`.
struct DriftClassSeed;

impl<'de> DeserializeSeed<'de> for DriftClassSeed {
    type Value = DriftClass;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<DriftClass, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DriftClassSeed {
    type Value = DriftClass;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a drift class such as {nodes: \"0..3\", rate: 250ppm} or {max: 100ppm}")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DriftClass, A::Error> {
        let raw = DriftClassRaw::deserialize(MapAccessDeserializer::new(map))?;
        let rate = match (raw.rate, raw.max) {
            (Some(r), None) => DriftRate::Fixed(r.0),
            (None, Some(m)) => DriftRate::Uniform(m.0),
            (Some(_), Some(_)) => {
                return Err(de::Error::custom(
                    "a drift class has `rate` (one fixed rate) or `max` (each node draws its own in ±max), not both",
                ));
            }
            (None, None) => {
                return Err(de::Error::custom(
                    "a drift class needs `rate` (e.g. `rate: -150ppm`) or `max` (e.g. `max: 200ppm`)",
                ));
            }
        };
        Ok(DriftClass {
            nodes: raw.nodes.map(|n| n.0),
            rate,
        })
    }
}
