//! The top-level map of a scenario file (`ScenarioSeed`, with the cross-key checks that run on
//! whichever key comes second), the key handling every map shares (`KeySeed`: unknown,
//! repeated and conflicting keys), `MapSeed` for derived maps with a readable "expected", and
//! the `network:` map.

use std::fmt;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

use super::caps::CapsRaw;
use super::events::{ChaosSeed, DriftSeed, EventsSeed};
use super::values::{CountSeed, DurationSeed, Latency, Probability, format_duration};
use super::{CapClass, ChaosSpec, DriftClass, MAX_NODES, NetworkSpec, Scenario, TimedEvent};

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
    "drift",
    "replica_start",
];

/// Deserializes a map key, rejecting unknown and repeated keys, and a second
/// action key in one event, at the key's position.
pub(super) struct KeySeed<'a> {
    pub(super) fields: &'static [&'static str],
    pub(super) seen: &'a [&'static str],
    /// Keys of which at most one may appear (the event actions).
    pub(super) exclusive: &'static [&'static str],
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

pub(super) struct ScenarioSeed {
    pub(super) stem: String,
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
            drift: Vec::new(),
            replica_start_us: None,
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
        let mut drift: Vec<DriftClass> = Vec::new();
        let mut replica_start_us: Option<u64> = None;
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
                "drift" => drift = map.next_value_seed(DriftSeed)?,
                "replica_start" => {
                    replica_start_us = Some(map.next_value::<super::values::Duration>()?.0);
                }
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
            drift,
            replica_start_us,
        })
    }
}

/// A map type whose derived `Deserialize` does the work; this only gives
/// type errors a readable "expected" instead of the Rust struct's name.
pub(super) trait Described {
    const EXPECTING: &'static str;
}

pub(super) struct MapSeed<T>(std::marker::PhantomData<T>);

impl<T> MapSeed<T> {
    pub(super) fn new() -> Self {
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
