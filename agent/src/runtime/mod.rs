//! Runtimes: what actually runs a replica on this node. This module owns the [`Runtime`] trait,
//! the types it speaks ([`ReplicaKey`], [`StartSpec`], [`ReplicaState`], [`Observed`],
//! [`RuntimeEvent`], [`RuntimeError`]) and the labels that mark what AWARE owns. Two
//! implementations ship: [`docker::DockerRuntime`] (containers through the Docker Engine API) and
//! [`process::ProcessRuntime`] (supervised child processes). Embedders may bring their own: the
//! trait is object safe, so an `Arc<dyn Runtime>` works.
//!
//! Division of labour with the reconciler (which is built on this trait):
//! - A runtime starts, stops, lists and reports. It never decides to restart anything: it reports
//!   exits ([`ReplicaState::Exited`]) and the reconciler applies the workload's restart policy and
//!   backoff by calling [`Runtime::start`] again. The Docker runtime therefore never sets Docker's
//!   own restart policy.
//! - A runtime only ever touches what it owns: containers carrying its labels ([`LABEL_NODE`] and
//!   friends), processes recorded in its state file (verified by pid *and* start time).
//! - [`Runtime::start`] on a replica that already runs the same workload (same hash) is a no-op that
//!   returns its state; with a different hash it replaces it. Starting again after an exit counts
//!   one restart ([`Observed::restarts`]); a new workload hash starts the count at 0 again.
//! - [`Runtime::stop`] stops and forgets a replica (the container is removed, the state-file entry
//!   dropped). An exited replica stays listed until it is started again or stopped.
//! - Events ([`Runtime::subscribe`]) carry the replica's whole observed state. The channel is
//!   bounded ([`EVENT_CAPACITY`]); a receiver that lags, or a [`RuntimeEvent::Resync`], must call
//!   [`Runtime::list`] to catch up.
//!
//! Health: the spec's probe is run by Docker (`HEALTHCHECK CMD` for an exec probe) or by the agent
//! ([`health`]: one bounded tokio task per replica for HTTP and TCP probes, and for every probe of
//! the process runtime).

#![allow(clippy::disallowed_methods)] // the agent reads the wall clock for timestamps it reports

pub mod docker;
pub mod health;
mod logs;
pub mod process;
mod procfs;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use swarm_core::NodeId;
use swarm_core::spec::Workload;
use tokio::sync::broadcast;

/// Label (and state-file field) naming the colony a replica belongs to.
pub const LABEL_COLONY: &str = "io.aware.colony";
/// Label naming the role.
pub const LABEL_ROLE: &str = "io.aware.role";
/// Label holding the replica index.
pub const LABEL_REPLICA: &str = "io.aware.replica";
/// Label holding the id of the node whose agent owns the container (16 hex digits).
pub const LABEL_NODE: &str = "io.aware.node";
/// Label holding [`StartSpec::workload_hash`] (16 hex digits): a changed workload is detected.
pub const LABEL_WORKLOAD_HASH: &str = "io.aware.workload-hash";
/// Label holding how many times the replica was started again after an exit.
pub const LABEL_RESTARTS: &str = "io.aware.restarts";
/// Label holding the agent-side health probe (JSON of the spec's `HealthCheck`), so an agent
/// that restarts resumes probing the containers it adopts.
pub const LABEL_PROBE: &str = "io.aware.probe";

/// Capacity of each runtime's event channel. A slower receiver gets `Lagged` and must re-list.
pub const EVENT_CAPACITY: usize = 1024;
/// Most replicas one runtime manages (bounds the state file, probe tasks and log pumps).
pub const MAX_REPLICAS: usize = 1024;
/// Longest colony or role name a key may carry (names become file names and container names).
pub const MAX_NAME_BYTES: usize = 63;

/// Which replica: the colony, the role and the replica's index within the role.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReplicaKey {
    pub colony: String,
    pub role: String,
    pub replica: u32,
}

impl ReplicaKey {
    pub fn new(colony: &str, role: &str, replica: u32) -> ReplicaKey {
        ReplicaKey {
            colony: colony.to_owned(),
            role: role.to_owned(),
            replica,
        }
    }

    /// Names end up in container names, labels and file paths: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at
    /// most [`MAX_NAME_BYTES`] bytes.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        for (what, name) in [("colony", &self.colony), ("role", &self.role)] {
            let ok = !name.is_empty()
                && name.len() <= MAX_NAME_BYTES
                && name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(RuntimeError::InvalidSpec {
                    key: self.to_string(),
                    reason: format!(
                        "{what} name `{name}` must match [A-Za-z0-9][A-Za-z0-9_.-]* \
                         (at most {MAX_NAME_BYTES} bytes)"
                    ),
                });
            }
        }
        Ok(())
    }
}

impl fmt::Display for ReplicaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.colony, self.role, self.replica)
    }
}

/// Everything a runtime needs to start one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartSpec {
    pub key: ReplicaKey,
    pub workload: Workload,
    /// Environment added on top of the workload's (the reconciler's `AWARE_*` variables, peers).
    pub extra_env: BTreeMap<String, String>,
    /// The GPU indices this replica may use (e.g. `[0, 1]`), chosen by the caller. Docker gets
    /// them as device ids; a process gets `CUDA_VISIBLE_DEVICES`.
    pub gpu_ids: Vec<u32>,
    /// [`workload_hash`] of what the replica should run (plus anything else the caller wants a
    /// change of to replace the replica). Stored with the replica.
    pub workload_hash: u64,
}

impl StartSpec {
    /// A spec with no extra env, no GPUs and the hash of `workload`.
    pub fn new(key: ReplicaKey, workload: Workload) -> StartSpec {
        let workload_hash = workload_hash(&workload);
        StartSpec {
            key,
            workload,
            extra_env: BTreeMap::new(),
            gpu_ids: Vec::new(),
            workload_hash,
        }
    }
}

/// A stable 64-bit hash of a workload (BLAKE3 of its JSON form; maps are ordered).
pub fn workload_hash(workload: &Workload) -> u64 {
    // Serialising plain data with string keys cannot fail; an empty input still hashes.
    let bytes = serde_json::to_vec(workload).unwrap_or_default();
    let digest = blake3::hash(&bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// What a replica is doing, as far as the runtime can tell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaState {
    /// Created, or running with a health check that has not passed yet.
    Starting,
    /// Running, and it has no health check.
    Running,
    /// Running, and its health check passes.
    Healthy,
    /// Running, and its health check failed `retries` times in a row.
    Unhealthy,
    /// It ended. `code` is the exit code (128 + signal number when killed by a signal), `None`
    /// when unknown (an adopted process has no parent to tell it its status).
    Exited { code: Option<i32> },
    /// It is in a state it cannot leave by itself (a dead or paused container, ...).
    Failed { error: String },
}

impl ReplicaState {
    /// Whether the replica's processes are alive.
    pub fn is_alive(&self) -> bool {
        matches!(
            self,
            ReplicaState::Starting
                | ReplicaState::Running
                | ReplicaState::Healthy
                | ReplicaState::Unhealthy
        )
    }
}

/// One replica as observed by a runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub key: ReplicaKey,
    pub state: ReplicaState,
    /// Starts after an exit since the workload last changed.
    pub restarts: u32,
    pub workload_hash: u64,
    /// What runs it: the container id, or `pid:<pid>:<start ticks>` for a process.
    pub instance: String,
    /// When the current instance started (0 if it never did).
    pub started_at_unix_ms: u64,
    /// The main process id, while alive.
    pub pid: Option<u32>,
    /// The kernel's OOM killer ended it (Docker only).
    pub oom_killed: bool,
}

/// A change a runtime reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// A replica's state (or health) changed; this is its whole current state.
    Changed(Observed),
    /// A replica instance is gone (stopped and removed).
    Removed { key: ReplicaKey, instance: String },
    /// Events may have been missed (the runtime lost its event source); call [`Runtime::list`].
    Resync,
}

/// Errors a runtime returns. Each says what and where.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("replica {key}: {reason}")]
    InvalidSpec { key: String, reason: String },
    #[error(
        "image `{image}` is not present on this node and could not be pulled from registry \
         {registry}: {detail}"
    )]
    ImageUnavailable {
        image: String,
        registry: String,
        detail: String,
    },
    #[error(
        "replica {key}: GPUs {gpus:?} were requested but this node cannot hand GPUs to \
         containers (no NVIDIA container runtime?): {detail}. The container was removed"
    )]
    GpuUnavailable {
        key: String,
        gpus: Vec<u32>,
        detail: String,
    },
    #[error("{what} is not reachable: {detail}")]
    Unreachable { what: String, detail: String },
    #[error(
        "a container named `{name}` exists without AWARE's labels; it is left alone (rename or \
         remove it to let replica {key} start)"
    )]
    Foreign { name: String, key: String },
    #[error("replica {key}: cannot start `{program}`: {source}")]
    Spawn {
        key: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path}: {detail}")]
    StateFile { path: String, detail: String },
    #[error("Docker {op} failed: {detail}")]
    Docker { op: String, detail: String },
    #[error("too many replicas: this runtime manages at most {limit}")]
    TooMany { limit: usize },
}

/// A runtime: starts, stops, lists and reports replicas on this node. Implementations are
/// `Send + Sync` and object safe (`Arc<dyn Runtime>`).
#[async_trait]
pub trait Runtime: Send + Sync {
    /// A short name for logs ("docker", "process").
    fn name(&self) -> &'static str;

    /// Makes the replica run `spec.workload`. Idempotent when it already runs the same hash;
    /// replaces it when the hash differs; starts it again (one more restart) after an exit.
    /// Returns its state right after the start.
    async fn start(&self, spec: &StartSpec) -> Result<Observed, RuntimeError>;

    /// Stops the replica (gracefully, then by force after the runtime's grace period) and
    /// forgets it. Ok if it does not exist.
    async fn stop(&self, key: &ReplicaKey) -> Result<(), RuntimeError>;

    /// Every replica this runtime owns on this node, alive or exited, ordered by key.
    async fn list(&self) -> Result<Vec<Observed>, RuntimeError>;

    /// One replica, if this runtime owns it.
    async fn inspect(&self, key: &ReplicaKey) -> Result<Option<Observed>, RuntimeError> {
        Ok(self.list().await?.into_iter().find(|o| &o.key == key))
    }

    /// State changes from now on (bounded; see [`EVENT_CAPACITY`]).
    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent>;
}

/// Milliseconds since the Unix epoch on the wall clock.
pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The labels that mark a replica as ours (shared by both runtimes' bookkeeping).
pub(crate) fn owner_labels(
    key: &ReplicaKey,
    node: NodeId,
    workload_hash: u64,
    restarts: u32,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_COLONY.to_owned(), key.colony.clone()),
        (LABEL_ROLE.to_owned(), key.role.clone()),
        (LABEL_REPLICA.to_owned(), key.replica.to_string()),
        (LABEL_NODE.to_owned(), node.to_string()),
        (
            LABEL_WORKLOAD_HASH.to_owned(),
            format!("{workload_hash:016x}"),
        ),
        (LABEL_RESTARTS.to_owned(), restarts.to_string()),
    ])
}

/// Reads back what [`owner_labels`] wrote: (key, workload hash, restarts). `None` if any is
/// missing or malformed (such a container is not ours to touch).
pub(crate) fn parse_owner_labels<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
) -> Option<(ReplicaKey, u64, u32)> {
    let key = ReplicaKey {
        colony: get(LABEL_COLONY)?.to_owned(),
        role: get(LABEL_ROLE)?.to_owned(),
        replica: get(LABEL_REPLICA)?.parse().ok()?,
    };
    key.validate().ok()?;
    let hash = u64::from_str_radix(get(LABEL_WORKLOAD_HASH)?, 16).ok()?;
    let restarts = get(LABEL_RESTARTS)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    Some((key, hash, restarts))
}

/// The environment a replica gets: the workload's, then the caller's extra variables on top.
pub(crate) fn merged_env(spec: &StartSpec) -> BTreeMap<String, String> {
    let mut env = spec.workload.env.clone();
    env.extend(spec.extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Checks the GPU request against the ids given: asking for more GPUs than ids is an error when
/// any ids are given (the caller chose them), so is giving more ids than the workload may use.
pub(crate) fn check_gpus(spec: &StartSpec) -> Result<(), RuntimeError> {
    let wanted = usize::from(spec.workload.gpus);
    let given = spec.gpu_ids.len();
    if given > 0 && given != wanted {
        return Err(RuntimeError::InvalidSpec {
            key: spec.key.to_string(),
            reason: format!("the workload uses {wanted} GPU(s) but {given} GPU id(s) were given"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_checked() {
        assert!(
            ReplicaKey::new("web", "front-end_1.a", 0)
                .validate()
                .is_ok()
        );
        for bad in ["", "-x", "a/b", "..", "a b", &"x".repeat(64)] {
            let err = ReplicaKey::new(bad, "r", 0)
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains("colony name"), "{bad}: {err}");
        }
    }

    #[test]
    fn labels_round_trip_and_reject_junk() {
        let key = ReplicaKey::new("c", "r", 7);
        let labels = owner_labels(&key, NodeId(0xabc), 0xdead_beef, 3);
        let back = parse_owner_labels(|k| labels.get(k).map(String::as_str));
        assert_eq!(back, Some((key, 0xdead_beef, 3)));
        let mut broken = labels.clone();
        broken.insert(LABEL_REPLICA.into(), "x".into());
        assert_eq!(
            parse_owner_labels(|k| broken.get(k).map(String::as_str)),
            None
        );
    }

    #[test]
    fn workload_hash_sees_every_field() {
        let a = Workload {
            image: "a".into(),
            ..Workload::default()
        };
        let mut b = a.clone();
        assert_eq!(workload_hash(&a), workload_hash(&b));
        b.env.insert("X".into(), "1".into());
        assert_ne!(workload_hash(&a), workload_hash(&b));
    }
}
