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

/// Bounds on what a node may register (the queen rejects larger descriptions).
pub const MAX_LABELS: usize = 64;
/// Longest label key, label value or arch string accepted.
pub const MAX_LABEL_BYTES: usize = 253;

impl Capabilities {
    /// A short fingerprint, sent in every heartbeat ack so the queen notices new or changed nodes.
    pub fn digest(&self) -> u32 {
        let bytes =
            bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default();
        let hash = blake3::hash(&bytes);
        let mut first = [0u8; 4];
        first.copy_from_slice(&hash.as_bytes()[..4]);
        u32::from_le_bytes(first)
    }

    /// Within the size bounds a queen accepts from the wire.
    pub fn is_well_formed(&self) -> bool {
        self.arch.len() <= MAX_LABEL_BYTES
            && self.labels.len() <= MAX_LABELS
            && self
                .labels
                .iter()
                .all(|(k, v)| k.len() <= MAX_LABEL_BYTES && v.len() <= MAX_LABEL_BYTES)
    }
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
