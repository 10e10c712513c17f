//! The reconciler: makes what this node's runtime runs match the newest *committed* plan's
//! assignments for this node, and reports every replica's state upward. This module owns the
//! reconciler's input and output types ([`Desired`], [`DesiredReplica`], [`ReplicaReport`],
//! [`ReplicaStatus`], [`ReportedState`]), its tunables ([`ReconcilerConfig`]) and the
//! `AWARE_<ROLE>_ENDPOINTS` naming ([`endpoints_env_var`]). [`machine`] holds every decision as
//! a pure state machine (time is an input); [`Reconciler`] is the tokio task that drives it
//! against a [`Runtime`](crate::runtime::Runtime).
//!
//! Rules (the numbers are [`ReconcilerConfig`]'s defaults):
//! - **Order.** A replica starts (and restarts) only once every role in its `depends_on` is
//!   healthy *somewhere in the colony*: named in the driver's colony-wide `healthy_roles`, or
//!   healthy on this node ([`ReportedState::counts_as_healthy`]: `Healthy`, or `Running` for a
//!   workload without a health check). A running replica is never stopped because a dependency
//!   went away.
//! - **Restart policy and backoff.** An exit is judged by the workload's policy: `Never` leaves
//!   it ended (`Stopped`); `OnFailure` leaves an exit with code 0 ended and restarts other exits
//!   at most `max_retries` times (then `Failed`; 0 means unbounded); `Always` restarts every exit.
//!   Restarts wait 1 s, doubling per consecutive failure up to 2 min. Once a replica has stayed
//!   up (alive and not unhealthy) for 2 min, its failure history is forgotten (backoff back to
//!   1 s, crash loop cleared; `OnFailure`'s retry count is a total and is not reset). A failed
//!   start counts as a failure; an error that cannot heal on this node (invalid spec, GPUs the
//!   node cannot hand out, too many replicas) is `Failed` at once.
//! - **Crash loop.** Under `Always` (and `OnFailure` with `max_retries: 0`), 5 failures within
//!   10 min is a crash loop: the replica is reported `Failed` with the reason, so the queen may
//!   place it elsewhere, and it is still restarted every 2 min here (autonomy: the queen may be
//!   unreachable) until it stays up for 2 min.
//! - **Unhealthy.** A replica unhealthy for 30 s in a row is stopped and restarted (a failure:
//!   backoff and policy apply), except under `Never`.
//! - **Adoption.** At start the reconciler lists the runtime first. A live replica whose workload
//!   hash ([`start_hash`]) matches its assignment is adopted as is (no start). Nothing is stopped
//!   before the first desired set arrives (the driver hands over the last committed assignments
//!   from its persisted state at boot); from then on every replica of this colony that is not
//!   assigned here is stopped.
//! - **Autonomy.** Nothing here waits for the queen. The last desired set keeps being enforced;
//!   a newer one only stops what it no longer contains.
//! - **Endpoints.** Every replica gets `AWARE_COLONY`, `AWARE_ROLE`, `AWARE_REPLICA` and, for
//!   each role it depends on, `AWARE_<ROLE>_ENDPOINTS=host:port,...` (sorted). When that value
//!   changes, live replicas with [`EndpointsChange::Restart`] are restarted one at a time (the
//!   next one only once the previous one counts as healthy again); the others keep running and
//!   get the new value at their next start. The endpoints are not part of the workload hash, so
//!   an adopted replica's environment is assumed current (a change made while the agent was down
//!   is not noticed until the next change).
//! - **Reports.** Every change of a replica's (state, detail, restarts) is reported on a bounded
//!   channel ([`REPORT_QUEUE`]); a backlog keeps only the newest report per replica.

pub mod machine;
mod task;
#[cfg(test)]
mod tests;

pub use machine::{Action, Machine, Now, OpError, OpResult};
pub use task::{Reconciler, ReconcilerHandle};

use crate::runtime::{MAX_NAME_BYTES, ReplicaKey, workload_hash};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use swarm_core::spec::Workload;
use swarm_core::wire::Version;

/// Default first restart delay.
pub const BACKOFF_INITIAL_MS: u64 = 1_000;
/// Default longest restart delay (the delay doubles per consecutive failure up to this).
pub const BACKOFF_MAX_MS: u64 = 120_000;
/// Default time a replica must stay up before its failure history is forgotten.
pub const BACKOFF_RESET_AFTER_MS: u64 = 120_000;
/// Default number of failures within [`CRASH_LOOP_WINDOW_MS`] that make a crash loop.
pub const CRASH_LOOP_FAILURES: u32 = 5;
/// Default window for [`CRASH_LOOP_FAILURES`].
pub const CRASH_LOOP_WINDOW_MS: u64 = 600_000;
/// Default time a replica may stay unhealthy before it is restarted.
pub const UNHEALTHY_RESTART_AFTER_MS: u64 = 30_000;
/// Default delay before a failed stop is tried again.
pub const STOP_RETRY_MS: u64 = 5_000;
/// Capacity of the report channel to the driver.
pub const REPORT_QUEUE: usize = 1024;
/// Most replicas one desired set may assign to this node.
pub const MAX_DESIRED_REPLICAS: usize = crate::runtime::MAX_REPLICAS;
/// Most roles in `healthy_roles`, in the endpoint map, or in one replica's `depends_on`.
pub const MAX_ROLES: usize = 4096;
/// Most endpoints of one role (they become one environment variable).
pub const MAX_ENDPOINTS_PER_ROLE: usize = 1024;
/// Longest endpoint (`host:port`, a DNS name being at most 253 bytes).
pub const MAX_ENDPOINT_BYTES: usize = 261;
/// Longest value of one `AWARE_<ROLE>_ENDPOINTS` (the endpoints joined by commas): half of
/// Linux's 128 KiB limit per environment string.
pub const MAX_ENDPOINTS_VALUE_BYTES: usize = 64 * 1024;

/// What a running replica does when the endpoints of a role it depends on change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointsChange {
    /// Keep running; the new value is in its environment from its next start on.
    #[default]
    Ignore,
    /// Restart it (one replica of this node at a time) so that it sees the new value.
    Restart,
}

/// The newest committed plan, as this node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub version: Version,
    pub colony: String,
    /// This node's assignments only.
    pub replicas: Vec<DesiredReplica>,
    /// Roles with at least one healthy replica colony-wide (may be stale; the driver also
    /// updates it on its own with [`ReconcilerHandle::set_healthy_roles`]).
    pub healthy_roles: BTreeSet<String>,
    /// role → `["10.0.0.5:8080", ...]` (also updated on its own with
    /// [`ReconcilerHandle::set_endpoints`]).
    pub endpoints: BTreeMap<String, Vec<String>>,
}

/// One replica assigned to this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredReplica {
    pub role: String,
    pub replica: u32,
    pub workload: Workload,
    /// Roles that must be healthy somewhere in the colony before this replica starts.
    pub depends_on: Vec<String>,
    /// The GPU indices the plan gave this replica. The first `workload.gpus` of them are handed
    /// to it (none when `workload.gpus` is 0).
    pub gpus: Vec<u16>,
    pub on_endpoints_change: EndpointsChange,
}

/// A replica's state as the reconciler reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReportedState {
    /// Not running yet: waiting for the roles it depends on, or for its restart delay.
    Waiting,
    /// Being started, or running with a health check that has not passed yet.
    Starting,
    /// Running, and it has no health check.
    Running,
    /// Running, and its health check passes.
    Healthy,
    /// Running, and its health check fails.
    Unhealthy,
    /// This node gave up on it, or it is crash looping (the detail says which): a candidate for
    /// placement elsewhere.
    Failed,
    /// Ended by its own restart policy (`Never`, or `OnFailure` after exit 0), or no longer
    /// assigned here and stopped.
    Stopped,
}

impl ReportedState {
    /// Whether a replica in this state satisfies a `depends_on` on its role.
    pub fn counts_as_healthy(self) -> bool {
        matches!(self, ReportedState::Running | ReportedState::Healthy)
    }
}

/// One change of one replica's state, for the driver to send to the queen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub role: String,
    pub replica: u32,
    pub state: ReportedState,
    /// Restarts after a failure since the workload last changed.
    pub restarts: u32,
    pub detail: Option<String>,
    pub at_unix_ms: u64,
}

/// One replica as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub role: String,
    pub replica: u32,
    pub state: ReportedState,
    pub detail: Option<String>,
    pub restarts: u32,
    /// Whether the current desired set assigns it here (false: being stopped, or nothing was
    /// desired yet).
    pub desired: bool,
    /// What runs it (container id, `pid:...`), if anything.
    pub instance: Option<String>,
    pub pid: Option<u32>,
    pub started_at_unix_ms: u64,
}

/// The reconciler's tunables, each with its unit in its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcilerConfig {
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub backoff_reset_after_ms: u64,
    pub crash_loop_failures: u32,
    pub crash_loop_window_ms: u64,
    pub unhealthy_restart_after_ms: u64,
    pub stop_retry_ms: u64,
}

impl Default for ReconcilerConfig {
    fn default() -> ReconcilerConfig {
        ReconcilerConfig {
            backoff_initial_ms: BACKOFF_INITIAL_MS,
            backoff_max_ms: BACKOFF_MAX_MS,
            backoff_reset_after_ms: BACKOFF_RESET_AFTER_MS,
            crash_loop_failures: CRASH_LOOP_FAILURES,
            crash_loop_window_ms: CRASH_LOOP_WINDOW_MS,
            unhealthy_restart_after_ms: UNHEALTHY_RESTART_AFTER_MS,
            stop_retry_ms: STOP_RETRY_MS,
        }
    }
}

impl ReconcilerConfig {
    pub fn validate(&self) -> Result<(), ReconcileError> {
        let bad = |what: &str| Err(ReconcileError::Config(what.to_owned()));
        if self.backoff_initial_ms == 0 {
            return bad("backoff_initial_ms must be at least 1");
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return bad("backoff_max_ms must be at least backoff_initial_ms");
        }
        if self.crash_loop_failures == 0 {
            return bad("crash_loop_failures must be at least 1");
        }
        if self.stop_retry_ms == 0 {
            return bad("stop_retry_ms must be at least 1");
        }
        Ok(())
    }

    /// The delay before the restart that follows the `n`-th consecutive failure (`n` ≥ 1):
    /// `backoff_initial_ms · 2^(n-1)`, at most `backoff_max_ms`.
    pub fn backoff_ms(&self, n: u32) -> u64 {
        let shift = n.saturating_sub(1).min(63);
        self.backoff_initial_ms
            .checked_mul(1u64 << shift)
            .map_or(self.backoff_max_ms, |d| d.min(self.backoff_max_ms))
    }
}

/// Errors of the reconciler's inputs; each says what and where. A refused input changes
/// nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReconcileError {
    #[error("desired set of colony `{got}` given to the reconciler of colony `{expected}`")]
    WrongColony { expected: String, got: String },
    #[error("desired set version {got} is older than the current {current}; ignored")]
    Stale { current: Version, got: Version },
    #[error("desired set {version}: replica {role}#{replica} is listed twice")]
    Duplicate {
        version: Version,
        role: String,
        replica: u32,
    },
    #[error("desired set {version}: {count} replicas for this node, at most {limit}")]
    TooManyReplicas {
        version: Version,
        count: usize,
        limit: usize,
    },
    #[error("desired set {version}: {reason}")]
    InvalidReplica { version: Version, reason: String },
    #[error("endpoints of role `{role}`: {reason}")]
    Endpoints { role: String, reason: String },
    #[error("{what}: {count} roles, at most {limit}")]
    TooManyRoles {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("invalid reconciler config: {0}")]
    Config(String),
    #[error("colony name `{0}` must match [A-Za-z0-9][A-Za-z0-9_.-]* (at most 63 bytes)")]
    ColonyName(String),
    #[error("the reconciler has stopped")]
    Stopped,
}

/// `AWARE_<ROLE>_ENDPOINTS`: the role upper-cased, every character other than an ASCII letter
/// or digit replaced by `_` (so `db-main` and `db.main` share a name; the spec should not use
/// both).
pub fn endpoints_env_var(role: &str) -> String {
    let name: String = role
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("AWARE_{name}_ENDPOINTS")
}

/// The hash a replica runs under ([`crate::runtime::StartSpec::workload_hash`]): the
/// [`workload_hash`] alone when no GPU ids are handed over, else mixed with the ids, so that a
/// different GPU assignment replaces the replica and an adopted one is matched exactly.
pub fn start_hash(workload: &Workload, gpu_ids: &[u32]) -> u64 {
    let base = workload_hash(workload);
    if gpu_ids.is_empty() {
        return base;
    }
    let mut h = blake3::Hasher::new();
    h.update(&base.to_le_bytes());
    for id in gpu_ids {
        h.update(&id.to_le_bytes());
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// Checks a colony name the way replica keys are checked.
pub(crate) fn check_colony(colony: &str) -> Result<(), ReconcileError> {
    ReplicaKey::new(colony, "x", 0)
        .validate()
        .map_err(|_| ReconcileError::ColonyName(colony.to_owned()))?;
    debug_assert!(colony.len() <= MAX_NAME_BYTES);
    Ok(())
}

/// Checks a desired set against the reconciler's colony and its current version.
pub fn validate_desired(
    desired: &Desired,
    colony: &str,
    current: Option<Version>,
) -> Result<(), ReconcileError> {
    let version = desired.version;
    if desired.colony != colony {
        return Err(ReconcileError::WrongColony {
            expected: colony.to_owned(),
            got: desired.colony.clone(),
        });
    }
    if let Some(current) = current.filter(|c| version < *c) {
        return Err(ReconcileError::Stale {
            current,
            got: version,
        });
    }
    if desired.replicas.len() > MAX_DESIRED_REPLICAS {
        return Err(ReconcileError::TooManyReplicas {
            version,
            count: desired.replicas.len(),
            limit: MAX_DESIRED_REPLICAS,
        });
    }
    let mut seen = BTreeSet::new();
    for r in &desired.replicas {
        ReplicaKey::new(colony, &r.role, r.replica)
            .validate()
            .map_err(|e| ReconcileError::InvalidReplica {
                version,
                reason: e.to_string(),
            })?;
        if r.depends_on.len() > MAX_ROLES {
            return Err(ReconcileError::InvalidReplica {
                version,
                reason: format!(
                    "replica {}#{} depends on {} roles, at most {MAX_ROLES}",
                    r.role,
                    r.replica,
                    r.depends_on.len()
                ),
            });
        }
        if !seen.insert((r.role.as_str(), r.replica)) {
            return Err(ReconcileError::Duplicate {
                version,
                role: r.role.clone(),
                replica: r.replica,
            });
        }
    }
    validate_healthy_roles(&desired.healthy_roles)?;
    validate_endpoints(&desired.endpoints)
}

/// Checks the size of a healthy-roles set.
pub fn validate_healthy_roles(roles: &BTreeSet<String>) -> Result<(), ReconcileError> {
    if roles.len() > MAX_ROLES {
        return Err(ReconcileError::TooManyRoles {
            what: "healthy roles",
            count: roles.len(),
            limit: MAX_ROLES,
        });
    }
    Ok(())
}

/// Checks an endpoint map: bounded sizes, and every endpoint a non-empty `host:port` without
/// commas, whitespace or control characters (they are joined with commas into one variable).
pub fn validate_endpoints(map: &BTreeMap<String, Vec<String>>) -> Result<(), ReconcileError> {
    if map.len() > MAX_ROLES {
        return Err(ReconcileError::TooManyRoles {
            what: "endpoints",
            count: map.len(),
            limit: MAX_ROLES,
        });
    }
    for (role, list) in map {
        let bad = |reason: String| ReconcileError::Endpoints {
            role: role.clone(),
            reason,
        };
        if list.len() > MAX_ENDPOINTS_PER_ROLE {
            return Err(bad(format!(
                "{} endpoints, at most {MAX_ENDPOINTS_PER_ROLE}",
                list.len()
            )));
        }
        let joined = list.iter().map(|e| e.len() + 1).sum::<usize>();
        if joined > MAX_ENDPOINTS_VALUE_BYTES + 1 {
            return Err(bad(format!(
                "{joined} bytes once joined, at most {MAX_ENDPOINTS_VALUE_BYTES}"
            )));
        }
        for (i, e) in list.iter().enumerate() {
            if e.is_empty() || e.len() > MAX_ENDPOINT_BYTES {
                return Err(bad(format!(
                    "endpoint {i} is {} bytes (1 to {MAX_ENDPOINT_BYTES} allowed)",
                    e.len()
                )));
            }
            if e.chars()
                .any(|c| c == ',' || c.is_whitespace() || c.is_control())
            {
                return Err(bad(format!(
                    "endpoint {i} `{}` contains a comma, whitespace or a control character",
                    e.escape_debug()
                )));
            }
        }
    }
    Ok(())
}
