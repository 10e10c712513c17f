//! Node capabilities: the resources a node offers and the labels an operator gives it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a node can offer. Detected on the node and merged with operator labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Free disk in MiB.
    pub disk_mib: u64,
    /// Number of GPUs.
    pub gpus: u16,
    /// CPU architecture, e.g. `x86_64`, `aarch64`.
    pub arch: String,
    /// Free-form operator labels.
    pub labels: BTreeMap<String, String>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            cpu_millis: 4000,
            memory_mib: 8192,
            disk_mib: 100 * 1024,
            gpus: 0,
            arch: "x86_64".to_owned(),
            labels: BTreeMap::new(),
        }
    }
}
