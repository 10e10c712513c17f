//! Workloads: the glue between the driver's `dna::Node` and the reconciler, so that the agent
//! runs what the colony committed. This module owns
//! - choosing and opening the runtime ([`RuntimeChoice`]: none, process, Docker, or the
//!   embedder's own [`Runtime`]) with the node's IP as probe and publish address;
//! - turning the newest *committed* colony state into the reconciler's [`Desired`]: this node's
//!   assignments (with their GPU indices), each workload's `AWARE_NODE`, `AWARE_NODE_IP` and
//!   `AWARE_PORT`, and the endpoints of every role ([`dna::endpoints`], which become
//!   `AWARE_<ROLE>_ENDPOINTS` and drive `on-endpoints-change: restart`);
//! - the colony-wide healthy roles ([`dna::Node::healthy_roles`]) into the reconciler's
//!   `depends-on` ordering;
//! - the reconciler's reports back into [`dna::Node::report_replicas`], through the driver's
//!   command queue ([`forward_reports`] holds only a weak sender, so the agent still stops when
//!   every handle is gone);
//! - what `status` shows about replicas ([`WorkloadsStatus`]) and `endpoints ROLE`.
//!
//! The driver calls [`Workloads::sync`] after each drain of the node: it is cheap unless a new
//! version was committed or the healthy roles changed. Nothing here waits for a queen: the last
//! committed desired set stays with the reconciler (autonomy), and an agent restart hands the
//! reconciler the assignments the node restored from disk, which it adopts without restarting.

use crate::driver::Command;
use crate::reconcile::{
    Desired, DesiredReplica, EndpointsChange, ReconcileError, Reconciler, ReconcilerConfig,
    ReconcilerHandle, ReplicaReport, ReplicaStatus, ReportedState,
};
use crate::runtime::Runtime;
use crate::runtime::docker::{DockerConfig, DockerRuntime};
use crate::runtime::process::{ProcessConfig, ProcessRuntime};
use crate::status::hex_id;
use crate::workload::{ENV_NODE, ENV_NODE_IP, ENV_PORT};
use dna::Node;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use swarm_core::NodeId;
use swarm_core::spec::{MAX_DETAIL_BYTES, OnEndpointsChange};
use swarm_core::wire::{self, Version};
use tokio::sync::mpsc;

/// Which runtime runs this node's replicas.
#[derive(Clone, Default)]
pub enum RuntimeChoice {
    /// Nothing runs: assignments are only tracked (and `status` says so).
    #[default]
    None,
    /// Supervised child processes under `<data dir>/process`.
    Process,
    /// Docker containers through the local engine.
    Docker,
    /// The embedder's own runtime.
    Custom(Arc<dyn Runtime>),
}

impl std::fmt::Debug for RuntimeChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeChoice::None => f.write_str("None"),
            RuntimeChoice::Process => f.write_str("Process"),
            RuntimeChoice::Docker => f.write_str("Docker"),
            RuntimeChoice::Custom(r) => write!(f, "Custom({})", r.name()),
        }
    }
}

impl From<crate::config::RuntimeKind> for RuntimeChoice {
    fn from(k: crate::config::RuntimeKind) -> RuntimeChoice {
        match k {
            crate::config::RuntimeKind::None => RuntimeChoice::None,
            crate::config::RuntimeKind::Process => RuntimeChoice::Process,
            crate::config::RuntimeKind::Docker => RuntimeChoice::Docker,
        }
    }
}

/// Why the workloads could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadsError {
    /// The runtime could not be opened (Docker unreachable, data dir unusable, ...).
    #[error("the {runtime} runtime cannot be used: {source}")]
    Runtime {
        /// Which runtime.
        runtime: &'static str,
        /// Why.
        #[source]
        source: crate::runtime::RuntimeError,
    },
    /// The reconciler refused its configuration (e.g. a colony name it cannot label with).
    #[error(transparent)]
    Reconciler(#[from] ReconcileError),
}

/// Opens the chosen runtime for node `node`, whose service IP is `node_ip` (process probes and
/// Docker's published ports use it). `None` for [`RuntimeChoice::None`].
pub async fn open_runtime(
    choice: RuntimeChoice,
    node: NodeId,
    node_ip: IpAddr,
    data_dir: &Path,
) -> Result<Option<Arc<dyn Runtime>>, WorkloadsError> {
    match choice {
        RuntimeChoice::None => Ok(None),
        RuntimeChoice::Custom(r) => Ok(Some(r)),
        RuntimeChoice::Process => {
            let mut cfg = ProcessConfig::new(node, data_dir);
            if !node_ip.is_unspecified() {
                cfg.probe_ip = node_ip;
            }
            let rt = ProcessRuntime::open(cfg)
                .await
                .map_err(|source| WorkloadsError::Runtime {
                    runtime: "process",
                    source,
                })?;
            Ok(Some(Arc::new(rt)))
        }
        RuntimeChoice::Docker => {
            let mut cfg = DockerConfig::new(node);
            cfg.publish_ip = node_ip;
            let rt =
                DockerRuntime::connect(cfg)
                    .await
                    .map_err(|source| WorkloadsError::Runtime {
                        runtime: "docker",
                        source,
                    })?;
            Ok(Some(Arc::new(rt)))
        }
    }
}

/// Where `status` got its replica rows from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaScope {
    /// The queen's book: every replica of the colony.
    Colony,
    /// A worker's own table: only this node's replicas (ask the queen for the rest).
    #[default]
    Node,
}

/// One replica of the committed plan and its last reported state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// The role.
    pub role: String,
    /// Which replica of it.
    pub replica: u32,
    /// The node it is assigned to.
    #[serde(with = "hex_id")]
    pub node: NodeId,
    /// Its state as its node last reported it (`None`: not reported yet).
    pub state: Option<wire::ReplicaState>,
    /// Restarts on that node.
    pub restarts: u32,
    /// The node's explanation (exit code, probe output, ...).
    pub detail: String,
}

/// What `status` says about workloads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadsStatus {
    /// The runtime's name (`process`, `docker`, ...), `None` when nothing runs.
    pub runtime: Option<String>,
    /// The committed version whose assignments the reconciler enforces.
    pub desired_version: Option<Version>,
    /// When this node first saw that version committed (Unix ms; at the queen, when she
    /// committed it).
    pub desired_at_unix_ms: u64,
    /// Where `replicas` comes from.
    pub scope: ReplicaScope,
    /// Every replica of the plan (at the queen) or of this node (at a worker), with its state.
    pub replicas: Vec<ReplicaInfo>,
    /// What this node's reconciler tracks: instance, pid, start time.
    pub local: Vec<ReplicaStatus>,
}

impl WorkloadsStatus {
    /// Replicas reported running (or better) in `replicas`.
    pub fn running(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| {
                matches!(
                    r.state,
                    Some(wire::ReplicaState::Running | wire::ReplicaState::Healthy)
                )
            })
            .count()
    }

    /// The human rendering appended to `status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let runtime = self
            .runtime
            .as_deref()
            .unwrap_or("none (nothing runs here)");
        let _ = writeln!(
            out,
            "\nworkloads: runtime {runtime}, desired version {}",
            self.desired_version
                .map_or_else(|| "-".to_owned(), |v| v.to_string())
        );
        let scope = match self.scope {
            ReplicaScope::Colony => "colony-wide",
            ReplicaScope::Node => "this node only",
        };
        let _ = writeln!(
            out,
            "replicas ({scope}): {} of {} running",
            self.running(),
            self.replicas.len()
        );
        let rows: Vec<[String; 6]> = self
            .replicas
            .iter()
            .map(|r| {
                let pid = self
                    .local
                    .iter()
                    .find(|l| l.role == r.role && l.replica == r.replica)
                    .and_then(|l| l.pid)
                    .map_or_else(String::new, |p| p.to_string());
                [
                    r.role.clone(),
                    r.replica.to_string(),
                    r.node.to_string(),
                    r.state
                        .map_or_else(|| "unreported".to_owned(), |s| format!("{s:?}"))
                        .to_lowercase(),
                    r.restarts.to_string(),
                    if pid.is_empty() {
                        r.detail.clone()
                    } else if r.detail.is_empty() {
                        format!("pid {pid}")
                    } else {
                        format!("pid {pid}; {}", r.detail)
                    },
                ]
            })
            .collect();
        out.push_str(&crate::commands::table(
            ["ROLE", "REPLICA", "NODE", "STATE", "RESTARTS", "DETAIL"],
            &rows,
        ));
        out
    }
}

/// The reconciler's state in the wire vocabulary the queen reads.
pub fn wire_state(s: ReportedState) -> wire::ReplicaState {
    match s {
        ReportedState::Waiting => wire::ReplicaState::Waiting,
        ReportedState::Starting => wire::ReplicaState::Starting,
        ReportedState::Running => wire::ReplicaState::Running,
        ReportedState::Healthy => wire::ReplicaState::Healthy,
        ReportedState::Unhealthy => wire::ReplicaState::Unhealthy,
        ReportedState::Failed => wire::ReplicaState::Failed,
        ReportedState::Stopped => wire::ReplicaState::Stopped,
    }
}

/// A reconciler report as the node sends it to the queen (detail cut to
/// [`MAX_DETAIL_BYTES`]).
pub fn wire_report(r: ReplicaReport) -> wire::ReplicaReport {
    let mut detail = r.detail.unwrap_or_default();
    if detail.len() > MAX_DETAIL_BYTES {
        let mut cut = MAX_DETAIL_BYTES;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    wire::ReplicaReport {
        role: r.role,
        replica: r.replica,
        state: wire_state(r.state),
        restarts: r.restarts,
        detail,
    }
}

/// Hands the reconciler's reports to the driver, batched (at most [`wire::MAX_REPORTS`] per
/// command). Holds only a weak sender: it ends when the driver is gone or the reconciler
/// closes its channel.
pub fn forward_reports(
    mut reports: mpsc::Receiver<ReplicaReport>,
    commands: mpsc::WeakSender<Command>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(first) = reports.recv().await {
            let mut batch = vec![wire_report(first)];
            while batch.len() < wire::MAX_REPORTS {
                match reports.try_recv() {
                    Ok(r) => batch.push(wire_report(r)),
                    Err(_) => break,
                }
            }
            let Some(tx) = commands.upgrade() else { return };
            if tx.send(Command::ReportReplicas(batch)).await.is_err() {
                return;
            }
        }
    })
}

/// The driver's side of the workloads: what was last handed to the reconciler.
pub struct Workloads {
    colony: String,
    node: NodeId,
    node_ip: IpAddr,
    runtime_name: Option<&'static str>,
    reconciler: Option<ReconcilerHandle>,
    stop_on_shutdown: bool,
    /// The committed version last turned into a desired set.
    seen: Option<Version>,
    seen_at_unix_ms: u64,
    /// Every role's endpoints in that version.
    endpoints: BTreeMap<String, Vec<String>>,
    healthy: Vec<String>,
}

impl std::fmt::Debug for Workloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workloads")
            .field("runtime", &self.runtime_name)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl Workloads {
    /// Starts the reconciler over `runtime` (none: only endpoints and status are kept) and
    /// returns the report channel to give to [`forward_reports`]. `stop_on_shutdown`: an agent
    /// shutdown stops this node's replicas (a node retiring) instead of leaving them running for
    /// the next agent to adopt.
    pub fn start(
        colony: &str,
        node: NodeId,
        node_ip: IpAddr,
        runtime: Option<Arc<dyn Runtime>>,
        cfg: ReconcilerConfig,
        stop_on_shutdown: bool,
    ) -> Result<(Workloads, Option<mpsc::Receiver<ReplicaReport>>), WorkloadsError> {
        let runtime_name = runtime.as_ref().map(|r| r.name());
        let (reconciler, reports) = match runtime {
            Some(rt) => {
                let (h, r) = Reconciler::spawn(rt, colony, cfg)?;
                (Some(h), Some(r))
            }
            None => (None, None),
        };
        let w = Workloads {
            colony: colony.to_owned(),
            node,
            node_ip,
            runtime_name,
            reconciler,
            stop_on_shutdown,
            seen: None,
            seen_at_unix_ms: 0,
            endpoints: BTreeMap::new(),
            healthy: Vec::new(),
        };
        Ok((w, reports))
    }

    /// Brings the reconciler up to date with the node: a newly committed version becomes a
    /// desired set (assignments, endpoints, healthy roles); otherwise only a change of the
    /// healthy roles is passed on.
    pub fn sync(&mut self, node: &Node) {
        let state = node.state();
        let committed = node.committed();
        let fresh = state.version == committed
            && state.spec.is_some()
            && self.seen.is_none_or(|v| v < committed);
        if fresh {
            self.seen = Some(committed);
            self.seen_at_unix_ms = unix_now_ms();
            self.endpoints = state
                .spec
                .iter()
                .flat_map(|s| s.roles.iter())
                .map(|r| (r.name.clone(), dna::endpoints(state, &r.name)))
                .collect();
            self.healthy = node.healthy_roles().to_vec();
            let desired = Desired {
                version: committed,
                colony: self.colony.clone(),
                replicas: self.desired_replicas(node),
                healthy_roles: self.healthy.iter().cloned().collect(),
                endpoints: self.endpoints.clone(),
            };
            tracing::info!(version = %committed, replicas = desired.replicas.len(),
                "desired set handed to the reconciler");
            if let Some(r) = &self.reconciler
                && let Err(e) = r.set_desired(desired)
            {
                tracing::warn!(error = %e, "the reconciler refused the desired set");
            }
        } else if node.healthy_roles() != self.healthy.as_slice() {
            self.healthy = node.healthy_roles().to_vec();
            if let Some(r) = &self.reconciler
                && let Err(e) = r.set_healthy_roles(self.healthy.iter().cloned().collect())
            {
                tracing::warn!(error = %e, "the reconciler refused the healthy roles");
            }
        }
    }

    /// This node's assignments in the committed state, as the reconciler wants them.
    fn desired_replicas(&self, node: &Node) -> Vec<DesiredReplica> {
        let state = node.state();
        let Some(spec) = &state.spec else {
            return Vec::new();
        };
        let me = self.node;
        state
            .assignments
            .iter()
            .filter(|a| a.node == me)
            .filter_map(|a| {
                let role = spec.role(&a.role)?;
                let mut workload = role.workload.clone();
                workload.env.insert(ENV_NODE.to_owned(), me.to_string());
                workload
                    .env
                    .insert(ENV_NODE_IP.to_owned(), self.node_ip.to_string());
                if let Some(p) = workload.ports.first() {
                    let port = p.container.to_string();
                    workload.env.entry(ENV_PORT.to_owned()).or_insert(port);
                }
                Some(DesiredReplica {
                    role: a.role.clone(),
                    replica: a.replica,
                    workload,
                    depends_on: role.depends_on.clone(),
                    gpus: a.gpus.clone(),
                    on_endpoints_change: match role.on_endpoints_change {
                        OnEndpointsChange::Ignore => EndpointsChange::Ignore,
                        OnEndpointsChange::Restart => EndpointsChange::Restart,
                    },
                })
            })
            .collect()
    }

    /// The endpoints of `role` in the newest committed state this node acted on (sorted).
    pub fn endpoints(&self, role: &str) -> Vec<String> {
        self.endpoints.get(role).cloned().unwrap_or_default()
    }

    /// What `status` shows.
    pub fn status(&self, node: &Node) -> WorkloadsStatus {
        let scope = if node.role() == dna::Role::Queen {
            ReplicaScope::Colony
        } else {
            ReplicaScope::Node
        };
        WorkloadsStatus {
            runtime: self.runtime_name.map(str::to_owned),
            desired_version: self.seen,
            desired_at_unix_ms: self.seen_at_unix_ms,
            scope,
            replicas: node
                .replica_states()
                .into_iter()
                .map(|r| ReplicaInfo {
                    role: r.role,
                    replica: r.replica,
                    node: r.node,
                    state: r.state,
                    restarts: r.restarts,
                    detail: r.detail,
                })
                .collect(),
            local: self
                .reconciler
                .as_ref()
                .map(ReconcilerHandle::snapshot)
                .unwrap_or_default(),
        }
    }

    /// Ends the reconciler: the replicas keep running for the next agent to adopt, unless the
    /// workloads were started with `stop_on_shutdown`.
    pub async fn shutdown(&mut self) {
        if let Some(r) = self.reconciler.take() {
            if self.stop_on_shutdown {
                tracing::info!("stopping this node's replicas before leaving");
            }
            r.shutdown(self.stop_on_shutdown).await;
        }
    }

    /// Roles of the committed spec with their endpoints (every role, possibly empty lists).
    pub fn endpoints_map(&self) -> &BTreeMap<String, Vec<String>> {
        &self.endpoints
    }

    /// Roles known healthy colony-wide, as last handed over.
    pub fn healthy_roles(&self) -> BTreeSet<String> {
        self.healthy.iter().cloned().collect()
    }
}

#[allow(clippy::disallowed_methods)] // the agent reads the wall clock for timestamps it reports
fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_keep_their_meaning_and_detail_is_cut_on_a_char_boundary() {
        let r = ReplicaReport {
            role: "web".into(),
            replica: 2,
            state: ReportedState::Failed,
            restarts: 3,
            detail: Some("é".repeat(MAX_DETAIL_BYTES)),
            at_unix_ms: 1,
        };
        let w = wire_report(r);
        assert_eq!(w.state, wire::ReplicaState::Failed);
        assert_eq!((w.role.as_str(), w.replica, w.restarts), ("web", 2, 3));
        assert!(w.detail.len() <= MAX_DETAIL_BYTES && !w.detail.is_empty());
        assert_eq!(
            wire_state(ReportedState::Waiting),
            wire::ReplicaState::Waiting
        );
        assert_eq!(
            wire_state(ReportedState::Healthy),
            wire::ReplicaState::Healthy
        );
    }
}
