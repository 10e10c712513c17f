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
    /// Disk capacity offered to workloads, in MiB: the size of the filesystem holding the
    /// agent's data directory less the operator's reserve. It is a *capacity*, like memory, not
    /// the space free right now: the planner subtracts the replicas' `needs.disk` from it, so a
    /// volume that fills up does not make its own replica infeasible.
    pub disk_mib: u64,
    /// Number of GPUs; the planner hands out indices `0..gpus`.
    pub gpus: u16,
    /// CPU architecture in the Docker/OCI vocabulary ([`ARCHES`]): `amd64`, `arm64`, ...
    pub arch: String,
    /// Free-form operator labels.
    pub labels: BTreeMap<String, String>,
}

/// Bounds on what a node may register (the queen rejects larger descriptions).
pub const MAX_LABELS: usize = 64;
/// Longest label key, label value or arch string accepted.
pub const MAX_LABEL_BYTES: usize = 253;

/// The architecture vocabulary: Docker/OCI platform names (what `docker version` and image
/// manifests say). Node capabilities and resolved specs use these spellings.
pub const ARCHES: &[&str] = &[
    "amd64", "arm64", "arm", "ppc64le", "s390x", "riscv64", "386",
];

/// The [`ARCHES`] name of an architecture given in its own name or a common alias: `uname -m`
/// (`x86_64`, `aarch64`, `armv7l`, `i686`), Debian (`armhf`, `ppc64el`), Go/Docker variants
/// (`arm64/v8`, `arm/v7`). `None` for anything else (compare such names as written).
pub fn canonical_arch(name: &str) -> Option<&'static str> {
    Some(match name {
        "amd64" | "x86_64" | "x86-64" | "x64" => "amd64",
        "arm64" | "aarch64" | "arm64/v8" | "armv8" => "arm64",
        "arm" | "armv7l" | "armv7" | "armhf" | "arm/v7" => "arm",
        "ppc64le" | "ppc64el" | "powerpc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "386" | "i386" | "i686" | "x86" => "386",
        _ => return None,
    })
}

/// Do two architecture names mean the same architecture (aliases resolved)?
pub fn same_arch(a: &str, b: &str) -> bool {
    canonical_arch(a).unwrap_or(a) == canonical_arch(b).unwrap_or(b)
}

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
            arch: "amd64".to_owned(),
            labels: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alias_maps_into_the_vocabulary() {
        let table = [
            ("x86_64", "amd64"),
            ("amd64", "amd64"),
            ("aarch64", "arm64"),
            ("arm64", "arm64"),
            ("armv7l", "arm"),
            ("armhf", "arm"),
            ("arm", "arm"),
            ("ppc64le", "ppc64le"),
            ("ppc64el", "ppc64le"),
            ("s390x", "s390x"),
            ("riscv64", "riscv64"),
            ("i686", "386"),
            ("386", "386"),
        ];
        for (alias, want) in table {
            assert_eq!(canonical_arch(alias), Some(want), "{alias}");
            assert!(ARCHES.contains(&want));
        }
        for name in ARCHES {
            assert_eq!(
                canonical_arch(name),
                Some(*name),
                "canonical names map to themselves"
            );
        }
        // Big-endian ppc64 and unknown names are not guessed.
        assert_eq!(canonical_arch("ppc64"), None);
        assert_eq!(canonical_arch("X86_64"), None);
        assert!(same_arch("x86_64", "amd64"));
        assert!(same_arch("loong64", "loong64"));
        assert!(!same_arch("arm", "arm64"));
    }
}
