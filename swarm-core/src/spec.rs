//! The colony spec as data: what the colony should run, after parsing and validation.
//!
//! This module owns the *resolved* spec model only (templates expanded, quantities in fixed
//! units, names checked). The YAML language, its validation and error positions live in
//! `dna::spec`; placement lives in `dna::plan`. The model travels in the colony state, so a new
//! queen inherits exactly the spec her predecessor planned from.

use crate::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A whole colony: a name and its roles, in declaration order. Role names are unique.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColonySpec {
    pub name: String,
    pub roles: Vec<RoleSpec>,
}

impl ColonySpec {
    pub fn role(&self, name: &str) -> Option<&RoleSpec> {
        self.roles.iter().find(|r| r.name == name)
    }
}

/// How many replicas a role wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Count {
    /// Exactly this many replicas.
    Replicas(u32),
    /// One replica on every node that can take it.
    Global,
}

/// How replicas of a role choose among feasible nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Prefer the emptiest node and nodes not yet running this role (availability).
    #[default]
    Spread,
    /// Prefer the fullest node that still fits (bin packing, leaves whole nodes free).
    Pack,
}

/// What one replica needs from a node. A node is feasible when it offers all of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Needs {
    pub cpu_millis: u32,
    pub memory_mib: u64,
    pub disk_mib: u64,
    pub gpus: u16,
    /// Accepted CPU architectures; empty means any.
    pub arch: Vec<String>,
    /// Labels the node must carry with exactly these values.
    pub labels: BTreeMap<String, String>,
}

/// One role of the colony.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSpec {
    pub name: String,
    pub count: Count,
    pub needs: Needs,
    /// Needs to try when no node satisfies `needs` (e.g. GPU inference falling back to CPU).
    pub fallback: Option<Needs>,
    pub strategy: Strategy,
    /// Soft: prefer nodes that already run a replica of one of these roles.
    pub affinity: Vec<String>,
    /// Hard: never share a node with a replica of one of these roles. Naming the role itself
    /// means at most one replica of it per node.
    pub anti_affinity: Vec<String>,
    /// Higher is placed first; when capacity is short the lowest priorities stay unplaced.
    pub priority: i32,
    /// Roles that must be started before this one (start order; no cycles).
    pub depends_on: Vec<String>,
    pub workload: Workload,
    /// The role keeps state on its node (it mounts a writable volume, or the spec says
    /// `stateful: true`): see `reschedule_after_ms`.
    pub stateful: bool,
    /// How long its replicas keep their placement on a node the queen's SWIM view has declared
    /// down before they move elsewhere; 0 = at once. The spec's default is 5 minutes for a
    /// stateful role and 0 otherwise, so a short partition or a reboot does not start a second
    /// database elsewhere.
    pub reschedule_after_ms: u32,
    /// What its replicas do when the endpoints of a role in `depends_on` change.
    pub on_endpoints_change: OnEndpointsChange,
}

/// What a role's replicas do when the endpoints (`dna::endpoints`) of a role they depend on
/// change: nothing (the workload finds its peers itself, e.g. by DNS), or restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnEndpointsChange {
    #[default]
    Ignore,
    Restart,
}

impl RoleSpec {
    /// A role with `count` replicas and every other field at its default: no needs, spread,
    /// no affinities, priority 0, an empty workload.
    pub fn new(name: &str, count: Count) -> RoleSpec {
        RoleSpec {
            name: name.to_owned(),
            count,
            needs: Needs::default(),
            fallback: None,
            strategy: Strategy::Spread,
            affinity: Vec::new(),
            anti_affinity: Vec::new(),
            priority: 0,
            depends_on: Vec::new(),
            workload: Workload::default(),
            stateful: false,
            reschedule_after_ms: 0,
            on_endpoints_change: OnEndpointsChange::Ignore,
        }
    }
}

/// The container (or process) a replica runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub image: String,
    /// Replaces the image's entrypoint when non-empty.
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    pub volumes: Vec<Volume>,
    pub health: Option<HealthCheck>,
    pub restart: RestartPolicy,
    /// GPUs handed to the container (at most `needs.gpus`).
    pub gpus: u16,
    pub limits: Limits,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// A container port, optionally published on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub container: u16,
    pub host: Option<u16>,
    pub protocol: Protocol,
}

/// A named volume or host path mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// A volume name, or an absolute host path.
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    Http { path: String, port: u16 },
    Tcp { port: u16 },
    Exec { command: Vec<String> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    /// Consecutive failures before the replica counts as unhealthy.
    pub retries: u32,
    /// Grace period after start during which failures do not count.
    pub start_period_ms: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    #[default]
    Always,
    /// Restart after a non-zero exit, at most `max_retries` times (0 = unbounded).
    OnFailure {
        max_retries: u32,
    },
    Never,
}

/// Hard ceilings for the running container (requests are in [`Needs`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub cpu_millis: Option<u32>,
    pub memory_mib: Option<u64>,
}

/// Why a replica could not be placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnplacedReason {
    /// No node matches the arch / label / GPU constraints at all.
    NoMatchingNode { detail: String },
    /// Matching nodes exist but none has enough free capacity left.
    Capacity { detail: String },
    /// Every node with room already runs a role this one refuses to share with.
    AntiAffinity { detail: String },
    /// Every node with room already publishes a host port this role publishes.
    PortConflict { detail: String },
    /// Lower priority than roles that took the remaining capacity.
    Preempted { detail: String },
    /// It failed (its worker's restart policy gave up) on the nodes the detail names: it waits
    /// out its backoff, or no other node fits.
    Failing { detail: String },
}

impl std::fmt::Display for UnplacedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnplacedReason::NoMatchingNode { detail } => write!(f, "no matching node: {detail}"),
            UnplacedReason::Capacity { detail } => write!(f, "not enough capacity: {detail}"),
            UnplacedReason::AntiAffinity { detail } => write!(f, "anti-affinity: {detail}"),
            UnplacedReason::PortConflict { detail } => write!(f, "port conflict: {detail}"),
            UnplacedReason::Preempted { detail } => write!(f, "lower priority: {detail}"),
            UnplacedReason::Failing { detail } => write!(f, "failing: {detail}"),
        }
    }
}

/// A replica the planner could not place, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    pub role: String,
    pub replica: u32,
    pub reason: UnplacedReason,
}

/// A node as the planner sees it: its id, what it registered, and the IP its replicas are
/// reached at (published host ports listen there; `dna::endpoints`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: NodeId,
    pub caps: crate::Capabilities,
    /// The node's address as the queen's SWIM view knows it (its gossip address); `None` for
    /// nodes that were never seen (a nodes file, a test).
    pub ip: Option<std::net::IpAddr>,
}

impl NodeRecord {
    /// A node with no known address.
    pub fn new(node: NodeId, caps: crate::Capabilities) -> NodeRecord {
        NodeRecord {
            node,
            caps,
            ip: None,
        }
    }
}

/// Most nodes a [`Failure`] remembers (the most recent ones).
pub const MAX_FAILED_NODES: usize = 8;
/// Most bytes of a failure's or a report's detail text.
pub const MAX_DETAIL_BYTES: usize = 256;

/// A replica that failed (its worker's restart policy gave up): the plan keeps it off the nodes
/// it failed on, and after a repeated failure keeps it unplaced for a backoff. Part of the
/// committed state, so a new queen inherits it and the plan stays a pure function of committed
/// data. Durations are relative to the moment the queen proposed the version that carries them
/// (clocks are per node): a new queen counts them from her crowning, which only lengthens them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub role: String,
    pub replica: u32,
    /// The nodes it failed on, oldest first, at most [`MAX_FAILED_NODES`]: the plan places it
    /// on none of them.
    pub nodes: Vec<NodeId>,
    /// Failures in a row: the first moves it at once, each later one waits a backoff first.
    pub count: u32,
    /// What its worker said about the last failure (at most [`MAX_DETAIL_BYTES`]).
    pub detail: String,
    /// Backoff left: while positive the replica stays unplaced (`UnplacedReason::Failing`).
    pub retry_in_ms: u64,
    /// Until the record is forgotten (then the nodes are no longer avoided).
    pub forget_in_ms: u64,
}

impl Failure {
    /// In backoff: placed nowhere yet.
    pub fn waiting(&self) -> bool {
        self.retry_in_ms > 0
    }

    /// Equal for planning (the time left aside, except whether a backoff runs).
    pub fn same_plan(&self, other: &Failure) -> bool {
        (
            &self.role,
            self.replica,
            &self.nodes,
            self.count,
            &self.detail,
            self.waiting(),
        ) == (
            &other.role,
            other.replica,
            &other.nodes,
            other.count,
            &other.detail,
            other.waiting(),
        )
    }
}

/// A node the queen's SWIM view declares down, kept in the plan because replicas of roles with
/// a `reschedule_after_ms` still wait for it: those replicas keep their placement there, and
/// nothing new is placed on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldNode {
    pub node: NodeId,
    /// The roles whose replicas keep their placement on it, sorted.
    pub roles: Vec<String>,
}
