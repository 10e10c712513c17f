//! `capabilities:` classes: node ranges with cpu, memory, disk, gpus, arch and labels;
//! quantities are parsed by `dna::spec::quantity`, as in colony specs.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::CapClass;
use super::nodes::Nodes;

/// One entry of `capabilities:`: `{nodes: "0..80", cpu: 8, memory: 32Gi, disk: 500Gi, gpus: 1,
/// arch: x86_64, labels: {zone: a}}`. Quantities are parsed as in colony specs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CapsRaw {
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
    pub(super) fn into_class(self) -> CapClass {
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
