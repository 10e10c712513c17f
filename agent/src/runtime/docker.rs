//! The Docker runtime: a replica is a container, driven through the Docker Engine API (bollard).
//!
//! - **Ownership.** Every container carries the owner labels (`io.aware.colony`, `.role`,
//!   `.replica`, `.node`, `.workload-hash`, `.restarts`; see [`super`]) and is named
//!   `aware-<colony>-<role>-<replica>-<node>`. Listing, events and every operation filter on the
//!   node label: a container without our labels is never touched, even one with our name (start
//!   then fails with [`RuntimeError::Foreign`]).
//! - **Restarts.** Docker's restart policy is explicitly `no`: the reconciler owns restarts.
//!   Starting a replica again after an exit removes the exited container and creates a new one
//!   whose `io.aware.restarts` label is one more (a changed workload hash starts again at 0).
//! - **Images.** Used when present locally; otherwise pulled (tag `latest` when none is given);
//!   a pull that fails becomes [`RuntimeError::ImageUnavailable`] naming the image and registry.
//! - **Container settings.** `command` replaces the entrypoint, `args` the image's command; env
//!   (workload, then extra); ports are exposed, and published on
//!   [`DockerConfig::publish_ip`] when they name a host port; volumes are named volumes or
//!   absolute host paths (binds, `:ro` when read-only); `limits` become `NanoCpus` / `Memory`;
//!   GPUs become an NVIDIA device request (the given ids, or a count when none are given). When
//!   the start fails (no NVIDIA runtime: the container stays in Created), the container is
//!   removed and the error says so ([`RuntimeError::GpuUnavailable`]).
//! - **Health.** An exec probe becomes the container's HEALTHCHECK (`CMD`), so Docker runs it and
//!   reports `health_status` events. HTTP and TCP probes run in the agent ([`super::health`])
//!   against the published host port (loopback when published on all addresses) or else the
//!   container's IP; those containers get `HEALTHCHECK NONE` (the image's own check would compete)
//!   and carry the probe in `io.aware.probe`, so a restarted agent resumes probing. Without a
//!   probe in the spec, the image's own HEALTHCHECK (if any) is reported.
//! - **Concurrency.** A start and a stop of one replica never overlap; different replicas are
//!   created, started and removed concurrently, at most [`OP_STRIPES`] at a time (the replica
//!   key picks one of that many locks). Twenty replicas applied at once therefore do not queue
//!   behind each other, and the daemon never sees more than [`OP_STRIPES`] operations from us.
//! - **Events, not polling.** One task follows Docker's event stream, filtered server-side to our
//!   node label, `type=container` and the events `start`, `die`, `health_status`, `destroy`,
//!   `oom`; each event is turned into the container's current state by one inspect and broadcast.
//!   When the stream breaks it reconnects with `since` = the last event seen (Docker replays what
//!   was missed) and broadcasts [`RuntimeEvent::Resync`]. An idle agent makes no API calls.

use super::health::{self, Health, ProbeTarget};
use super::{
    EVENT_CAPACITY, LABEL_NODE, LABEL_PROBE, MAX_REPLICAS, Observed, ReplicaKey, ReplicaState,
    Runtime, RuntimeError, RuntimeEvent, StartSpec, check_gpus, merged_env, owner_labels,
    parse_owner_labels,
};
use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, DeviceRequest,
    EventMessage, HealthConfig, HealthStatusEnum, HostConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use swarm_core::NodeId;
use swarm_core::spec::{HealthCheck, Probe, Protocol};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Default time Docker gives a container between SIGTERM and SIGKILL on stop.
pub const DEFAULT_STOP_GRACE_MS: u32 = 10_000;
/// Default timeout of one Docker API call (not of the event stream).
pub const DEFAULT_API_TIMEOUT_MS: u64 = 30_000;
/// Longest an image pull may take.
pub const PULL_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// Longest the connect-time ping may take.
pub const PING_TIMEOUT_MS: u64 = 5_000;
/// First and last delay before reconnecting a broken event stream.
pub const EVENTS_RETRY_MIN_MS: u64 = 500;
pub const EVENTS_RETRY_MAX_MS: u64 = 30_000;
/// The Docker events the runtime follows.
pub const FOLLOWED_EVENTS: [&str; 5] = ["start", "die", "health_status", "destroy", "oom"];

/// How the Docker runtime is set up.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    pub node: NodeId,
    /// Host address published ports bind to (`0.0.0.0` for all; `127.0.0.1` in tests).
    pub publish_ip: IpAddr,
    pub stop_grace_ms: u32,
    pub api_timeout_ms: u64,
}

impl DockerConfig {
    pub fn new(node: NodeId) -> DockerConfig {
        DockerConfig {
            node,
            publish_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            stop_grace_ms: DEFAULT_STOP_GRACE_MS,
            api_timeout_ms: DEFAULT_API_TIMEOUT_MS,
        }
    }
}

/// An agent-side probe of one container.
#[derive(Debug)]
struct ProbeSlot {
    container_id: String,
    health: Health,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    docker: Docker,
    cfg: DockerConfig,
    events: broadcast::Sender<RuntimeEvent>,
    probes: Mutex<BTreeMap<ReplicaKey, ProbeSlot>>,
}

/// Containers through the Docker Engine API. See the module doc.
#[derive(Debug)]
pub struct DockerRuntime {
    shared: Arc<Shared>,
    events_task: JoinHandle<()>,
    /// Start and stop take the lock of their replica's stripe: one replica's operations are
    /// serial, other replicas' run beside them (at most [`OP_STRIPES`] at once).
    ops: [tokio::sync::Mutex<()>; OP_STRIPES],
}

/// How many start/stop operations of different replicas may run at once.
pub const OP_STRIPES: usize = 8;

/// The stripe whose lock guards `key`'s operations (the same key always maps to the same one).
fn stripe_of(key: &ReplicaKey) -> usize {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    // The remainder is below OP_STRIPES, so it fits a usize on every platform.
    usize::try_from(h.finish() % OP_STRIPES as u64).unwrap_or(0)
}

impl Drop for DockerRuntime {
    /// Stops following events and probing; the containers keep running for the next agent.
    fn drop(&mut self) {
        self.events_task.abort();
        for (_, slot) in std::mem::take(&mut *self.shared.probes()) {
            slot.task.abort();
        }
    }
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn docker_err(op: impl Into<String>) -> impl FnOnce(DockerError) -> RuntimeError {
    let op = op.into();
    move |e| RuntimeError::Docker {
        op,
        detail: e.to_string(),
    }
}

/// `since` for the events API: seconds.nanoseconds.
fn since_arg(unix_nanos: i64) -> String {
    format!(
        "{}.{:09}",
        unix_nanos.div_euclid(1_000_000_000),
        unix_nanos.rem_euclid(1_000_000_000)
    )
}

/// Docker's RFC 3339 timestamps (`2026-12-02T10:11:12.123456789Z`) as Unix ms; 0 for the zero
/// time Docker reports for a container that never started.
fn parse_docker_time(text: &str) -> u64 {
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The registry an image reference is pulled from (`docker.io` unless the first path component
/// names a host).
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_owned(),
        _ => "docker.io".to_owned(),
    }
}

/// Splits a reference into what the create-image API takes: (`fromImage`, `tag`). A digest
/// reference keeps its digest and has no tag; no tag means `latest`.
fn split_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_owned(), None);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            (image[..at].to_owned(), Some(image[at + 1..].to_owned()))
        }
        None => (image.to_owned(), Some("latest".to_owned())),
    }
}

fn ms_to_ns(ms: u32) -> i64 {
    i64::from(ms) * 1_000_000
}

impl Shared {
    fn probes(&self) -> MutexGuard<'_, BTreeMap<ReplicaKey, ProbeSlot>> {
        self.probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, event: RuntimeEvent) {
        let _ = self.events.send(event);
    }

    fn node_filter(&self) -> String {
        format!("{LABEL_NODE}={}", self.cfg.node)
    }

    fn container_name(&self, key: &ReplicaKey) -> String {
        format!(
            "aware-{}-{}-{}-{}",
            key.colony, key.role, key.replica, self.cfg.node
        )
    }

    /// Ids of our containers, optionally only those of one replica.
    async fn our_container_ids(
        &self,
        key: Option<&ReplicaKey>,
    ) -> Result<Vec<String>, RuntimeError> {
        let mut labels = vec![self.node_filter()];
        if let Some(k) = key {
            labels.push(format!("{}={}", super::LABEL_COLONY, k.colony));
            labels.push(format!("{}={}", super::LABEL_ROLE, k.role));
            labels.push(format!("{}={}", super::LABEL_REPLICA, k.replica));
        }
        let filters = HashMap::from([("label", labels)]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(docker_err("list containers"))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Inspects a container; `None` when it is gone or not ours.
    async fn inspect_ours(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        match self.docker.inspect_container(id, None).await {
            Ok(c) => {
                let ours = c
                    .config
                    .as_ref()
                    .and_then(|cfg| cfg.labels.as_ref())
                    .and_then(|l| l.get(LABEL_NODE))
                    .is_some_and(|n| *n == self.cfg.node.to_string());
                Ok(ours.then_some(c))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(docker_err(format!("inspect container {id}"))(e)),
        }
    }

    /// The replica a container runs, from its labels.
    fn observe(&self, c: &ContainerInspectResponse) -> Option<Observed> {
        let labels = c.config.as_ref()?.labels.as_ref()?;
        let (key, workload_hash, restarts) =
            parse_owner_labels(|k| labels.get(k).map(String::as_str))?;
        let id = c.id.clone()?;
        let st = c.state.clone().unwrap_or_default();
        let agent_probed = labels.contains_key(LABEL_PROBE);
        let alive = |shared: &Shared| {
            if agent_probed {
                let probes = shared.probes();
                match probes.get(&key) {
                    Some(p) if p.container_id == id => health_state(p.health),
                    _ => ReplicaState::Starting,
                }
            } else {
                match st.health.as_ref().and_then(|h| h.status) {
                    Some(HealthStatusEnum::STARTING) => ReplicaState::Starting,
                    Some(HealthStatusEnum::HEALTHY) => ReplicaState::Healthy,
                    Some(HealthStatusEnum::UNHEALTHY) => ReplicaState::Unhealthy,
                    _ => ReplicaState::Running,
                }
            }
        };
        let exit_code = st.exit_code.and_then(|c| i32::try_from(c).ok());
        let state = match st.status {
            Some(ContainerStateStatusEnum::CREATED) => ReplicaState::Starting,
            Some(
                ContainerStateStatusEnum::RUNNING
                | ContainerStateStatusEnum::RESTARTING
                | ContainerStateStatusEnum::STOPPING,
            ) => alive(self),
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::REMOVING) => {
                ReplicaState::Exited { code: exit_code }
            }
            Some(ContainerStateStatusEnum::PAUSED) => ReplicaState::Failed {
                error: "the container is paused".to_owned(),
            },
            Some(ContainerStateStatusEnum::DEAD) => ReplicaState::Failed {
                error: st
                    .error
                    .clone()
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "dead".to_owned()),
            },
            Some(ContainerStateStatusEnum::EMPTY) | None => ReplicaState::Failed {
                error: "Docker reports no state".to_owned(),
            },
        };
        Some(Observed {
            key,
            state,
            restarts,
            workload_hash,
            instance: id,
            started_at_unix_ms: st.started_at.as_deref().map_or(0, parse_docker_time),
            pid: st
                .pid
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0),
            oom_killed: st.oom_killed.unwrap_or(false),
        })
    }

    /// Makes sure a running container whose spec has an HTTP or TCP probe is probed (once).
    fn ensure_prober(self: &Arc<Self>, c: &ContainerInspectResponse, probe_now: bool) {
        let Some(id) = c.id.clone() else { return };
        let labels = c.config.as_ref().and_then(|cfg| cfg.labels.as_ref());
        let Some(check) = labels
            .and_then(|l| l.get(LABEL_PROBE))
            .and_then(|j| serde_json::from_str::<HealthCheck>(j).ok())
        else {
            return;
        };
        let Some((key, _, _)) =
            labels.and_then(|l| parse_owner_labels(|k| l.get(k).map(String::as_str)))
        else {
            return;
        };
        let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running {
            return;
        }
        let probes = self.probes();
        if probes.get(&key).is_some_and(|p| p.container_id == id) {
            return;
        }
        if probes.len() >= MAX_REPLICAS && !probes.contains_key(&key) {
            tracing::warn!("docker: more than {MAX_REPLICAS} probes; {key} is not probed");
            return;
        }
        let Some(target) = probe_target(&check.probe, c) else {
            tracing::warn!("docker: {key}: no address to probe (port not published, no IP)");
            return;
        };
        drop(probes);
        // What does not change while the container runs; the probe only changes the state.
        let Some(base) = self.observe(c) else { return };
        let mut probes = self.probes();
        let weak: Weak<Shared> = Arc::downgrade(self);
        let (probe_key, probe_id) = (key.clone(), id.clone());
        let task = health::spawn_prober(
            target,
            &check,
            tokio::time::Instant::now(),
            probe_now,
            move |h| {
                if let Some(shared) = weak.upgrade() {
                    shared.on_probe(&probe_key, &probe_id, &base, h);
                }
            },
        );
        if let Some(old) = probes.insert(
            key,
            ProbeSlot {
                container_id: id,
                health: Health::Starting,
                task,
            },
        ) {
            old.task.abort();
        }
    }

    fn on_probe(&self, key: &ReplicaKey, id: &str, base: &Observed, health: Health) {
        {
            let mut probes = self.probes();
            match probes.get_mut(key) {
                Some(p) if p.container_id == id => p.health = health,
                _ => return,
            }
        }
        self.emit(RuntimeEvent::Changed(Observed {
            state: health_state(health),
            ..base.clone()
        }));
    }

    fn drop_prober(&self, key: &ReplicaKey, id: Option<&str>) {
        let mut probes = self.probes();
        if probes
            .get(key)
            .is_some_and(|p| id.is_none_or(|id| p.container_id == id))
            && let Some(p) = probes.remove(key)
        {
            p.task.abort();
        }
    }

    async fn on_event(self: &Arc<Self>, ev: EventMessage) {
        let Some(actor) = ev.actor else { return };
        let Some(id) = actor.id else { return };
        let action = ev.action.unwrap_or_default();
        let attrs = actor.attributes.unwrap_or_default();
        let Some((key, _, _)) = parse_owner_labels(|k| attrs.get(k).map(String::as_str)) else {
            return;
        };
        match action.as_str() {
            "destroy" => {
                self.drop_prober(&key, Some(&id));
                self.emit(RuntimeEvent::Removed { key, instance: id });
                return;
            }
            "die" => self.drop_prober(&key, Some(&id)),
            _ => {}
        }
        match self.inspect_ours(&id).await {
            Ok(Some(c)) => {
                if action == "start" {
                    self.ensure_prober(&c, false);
                }
                if let Some(o) = self.observe(&c) {
                    self.emit(RuntimeEvent::Changed(o));
                }
            }
            Ok(None) => {} // already gone: its destroy event follows
            Err(e) => tracing::warn!("docker: after event {action} of {id}: {e}"),
        }
    }

    /// Stops (grace period, then SIGKILL by Docker) and removes one container. Gone is fine.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let grace_s = i32::try_from(self.cfg.stop_grace_ms.div_ceil(1000)).unwrap_or(i32::MAX);
        let stop = StopContainerOptionsBuilder::new().t(grace_s).build();
        match self.docker.stop_container(id, Some(stop)).await {
            Ok(()) => {}
            Err(e) if matches!(status_of(&e), Some(304 | 404)) => {}
            Err(e) => return Err(docker_err(format!("stop container {id}"))(e)),
        }
        let rm = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(id, Some(rm)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            // Already being removed by someone (or us): fine.
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) => Err(docker_err(format!("remove container {id}"))(e)),
        }
    }

    /// The image, present locally or pulled.
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(docker_err(format!("inspect image {image}"))(e)),
        }
        let (from, tag) = split_reference(image);
        let mut opts = CreateImageOptionsBuilder::new().from_image(&from);
        if let Some(t) = &tag {
            opts = opts.tag(t);
        }
        let unavailable = |detail: String| RuntimeError::ImageUnavailable {
            image: image.to_owned(),
            registry: registry_of(image),
            detail,
        };
        let pull = async {
            let mut stream = self.docker.create_image(Some(opts.build()), None, None);
            while let Some(item) = stream.next().await {
                item.map_err(|e| unavailable(e.to_string()))?;
            }
            Ok::<(), RuntimeError>(())
        };
        match tokio::time::timeout(Duration::from_millis(PULL_TIMEOUT_MS), pull).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(unavailable(format!(
                    "no pull finished within {PULL_TIMEOUT_MS} ms"
                )));
            }
        }
        // A pull stream can end without an error and without the image (odd registries).
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) => Err(unavailable(format!(
                "pull ended but the image is still missing: {e}"
            ))),
        }
    }

    fn create_body(
        &self,
        spec: &StartSpec,
        restarts: u32,
    ) -> Result<ContainerCreateBody, RuntimeError> {
        let w = &spec.workload;
        let invalid = |reason: String| RuntimeError::InvalidSpec {
            key: spec.key.to_string(),
            reason,
        };
        let mut labels: HashMap<String, String> =
            owner_labels(&spec.key, self.cfg.node, spec.workload_hash, restarts)
                .into_iter()
                .collect();
        let healthcheck = match w.health.as_ref() {
            None => None,
            Some(h) => match &h.probe {
                Probe::Exec { command } => {
                    if command.is_empty() {
                        return Err(invalid("the exec health probe has no command".to_owned()));
                    }
                    Some(HealthConfig {
                        test: Some(
                            ["CMD".to_owned()]
                                .into_iter()
                                .chain(command.iter().cloned())
                                .collect(),
                        ),
                        interval: Some(ms_to_ns(h.interval_ms.max(1))),
                        timeout: Some(ms_to_ns(h.timeout_ms.max(1))),
                        retries: Some(i64::from(h.retries.max(1))),
                        start_period: Some(ms_to_ns(h.start_period_ms)),
                        start_interval: None,
                    })
                }
                Probe::Http { .. } | Probe::Tcp { .. } => {
                    let json = serde_json::to_string(h).map_err(|e| invalid(e.to_string()))?;
                    labels.insert(LABEL_PROBE.to_owned(), json);
                    Some(HealthConfig {
                        test: Some(vec!["NONE".to_owned()]),
                        ..Default::default()
                    })
                }
            },
        };
        let mut exposed = Vec::new();
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for p in &w.ports {
            let proto = match p.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            let name = format!("{}/{proto}", p.container);
            if let Some(host) = p.host {
                bindings
                    .entry(name.clone())
                    .or_default()
                    .get_or_insert_with(Vec::new)
                    .push(PortBinding {
                        host_ip: Some(self.cfg.publish_ip.to_string()),
                        host_port: Some(host.to_string()),
                    });
            }
            exposed.push(name);
        }
        let mut binds = Vec::new();
        for v in &w.volumes {
            let named = v.source.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.source
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            let path = v.source.starts_with('/') && !v.source.contains(':');
            if !(named || path) {
                return Err(invalid(format!(
                    "volume source `{}` is neither a volume name nor an absolute path",
                    v.source
                )));
            }
            if !v.target.starts_with('/') || v.target.contains(':') {
                return Err(invalid(format!(
                    "volume target `{}` must be an absolute path",
                    v.target
                )));
            }
            binds.push(format!(
                "{}:{}{}",
                v.source,
                v.target,
                if v.read_only { ":ro" } else { "" }
            ));
        }
        let device_requests = if !spec.gpu_ids.is_empty() {
            Some(vec![DeviceRequest {
                driver: Some("nvidia".to_owned()),
                device_ids: Some(spec.gpu_ids.iter().map(u32::to_string).collect()),
                capabilities: Some(vec![vec!["gpu".to_owned()]]),
                ..Default::default()
            }])
        } else if w.gpus > 0 {
            Some(vec![DeviceRequest {
                driver: Some("nvidia".to_owned()),
                count: Some(i64::from(w.gpus)),
                capabilities: Some(vec![vec!["gpu".to_owned()]]),
                ..Default::default()
            }])
        } else {
            None
        };
        let host_config = HostConfig {
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            binds: (!binds.is_empty()).then_some(binds),
            nano_cpus: w.limits.cpu_millis.map(|m| i64::from(m) * 1_000_000),
            memory: w
                .limits
                .memory_mib
                .map(|m| i64::try_from(m.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX)),
            device_requests,
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        };
        Ok(ContainerCreateBody {
            image: Some(w.image.clone()),
            entrypoint: (!w.command.is_empty()).then(|| w.command.clone()),
            cmd: (!w.args.is_empty()).then(|| w.args.clone()),
            env: Some(
                merged_env(spec)
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            ),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            healthcheck,
            host_config: Some(host_config),
            ..Default::default()
        })
    }
}

fn health_state(h: Health) -> ReplicaState {
    match h {
        Health::Starting => ReplicaState::Starting,
        Health::Healthy => ReplicaState::Healthy,
        Health::Unhealthy => ReplicaState::Unhealthy,
    }
}

/// Where an agent-side probe reaches a container: the published host port, else its IP.
fn probe_target(probe: &Probe, c: &ContainerInspectResponse) -> Option<ProbeTarget> {
    let port = match probe {
        Probe::Http { port, .. } | Probe::Tcp { port } => *port,
        Probe::Exec { .. } => return None,
    };
    let settings = c.network_settings.as_ref();
    let published = settings
        .and_then(|n| n.ports.as_ref())
        .and_then(|ports| ports.get(&format!("{port}/tcp")))
        .and_then(|b| b.as_ref())
        .and_then(|b| b.first())
        .and_then(|b| {
            let host_port: u16 = b.host_port.as_deref()?.parse().ok()?;
            let ip = match b.host_ip.as_deref().unwrap_or("") {
                "" | "0.0.0.0" => IpAddr::V4(Ipv4Addr::LOCALHOST),
                "::" => IpAddr::V6(Ipv6Addr::LOCALHOST),
                other => other.parse().ok()?,
            };
            Some(SocketAddr::new(ip, host_port))
        });
    let addr = published.or_else(|| {
        let nets = settings?.networks.as_ref()?;
        let ip = nets
            .values()
            .filter_map(|n| n.ip_address.as_deref())
            .find(|ip| !ip.is_empty())?;
        Some(SocketAddr::new(ip.parse().ok()?, port))
    })?;
    Some(match probe {
        Probe::Http { path, .. } => ProbeTarget::Http {
            addr,
            path: path.clone(),
        },
        _ => ProbeTarget::Tcp { addr },
    })
}

impl DockerRuntime {
    /// Connects to the local Docker engine (`DOCKER_HOST` or the default socket), checks that it
    /// answers, starts following its events and resumes probing the running containers this node
    /// owns. Must be called inside a tokio runtime.
    pub async fn connect(cfg: DockerConfig) -> Result<DockerRuntime, RuntimeError> {
        let unreachable = |detail: String| RuntimeError::Unreachable {
            what: "the Docker engine (DOCKER_HOST or /var/run/docker.sock)".to_owned(),
            detail,
        };
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| unreachable(e.to_string()))?
            .with_timeout(Duration::from_millis(cfg.api_timeout_ms));
        match tokio::time::timeout(Duration::from_millis(PING_TIMEOUT_MS), docker.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer to ping within {PING_TIMEOUT_MS} ms"
                )));
            }
        }
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            docker,
            cfg,
            events,
            probes: Mutex::new(BTreeMap::new()),
        });
        // Events are followed from before the first listing, so nothing falls in between.
        let since = i64::try_from(super::unix_now_ms())
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        let events_task = tokio::spawn(follow_events(Arc::downgrade(&shared), since));
        for id in shared.our_container_ids(None).await? {
            if let Some(c) = shared.inspect_ours(&id).await? {
                shared.ensure_prober(&c, true);
            }
        }
        Ok(DockerRuntime {
            shared,
            events_task,
            ops: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
        })
    }

    /// The container name this runtime gives a replica.
    pub fn container_name(&self, key: &ReplicaKey) -> String {
        self.shared.container_name(key)
    }

    /// The bollard client (for embedders and tests that need more of the API).
    pub fn client(&self) -> &Docker {
        &self.shared.docker
    }

    async fn start_locked(&self, spec: &StartSpec) -> Result<Observed, RuntimeError> {
        let s = &self.shared;
        let key = &spec.key;
        key.validate()?;
        check_gpus(spec)?;
        if spec.workload.image.is_empty() {
            return Err(RuntimeError::InvalidSpec {
                key: key.to_string(),
                reason: "the Docker runtime needs an `image`".to_owned(),
            });
        }
        let mut restarts = 0;
        for id in s.our_container_ids(Some(key)).await? {
            let Some(c) = s.inspect_ours(&id).await? else {
                continue;
            };
            let Some(o) = s.observe(&c) else { continue };
            if o.state.is_alive() && o.workload_hash == spec.workload_hash {
                return Ok(o);
            }
            if !o.state.is_alive() && o.workload_hash == spec.workload_hash {
                restarts = o.restarts.saturating_add(1);
            }
            s.drop_prober(key, Some(&id));
            s.remove(&id).await?;
        }
        s.ensure_image(&spec.workload.image).await?;
        let body = s.create_body(spec, restarts)?;
        let name = s.container_name(key);
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = match s.docker.create_container(Some(opts), body).await {
            Ok(c) => c,
            Err(e) if status_of(&e) == Some(409) => {
                return Err(RuntimeError::Foreign {
                    name,
                    key: key.to_string(),
                });
            }
            Err(e) if status_of(&e) == Some(404) => {
                return Err(RuntimeError::ImageUnavailable {
                    image: spec.workload.image.clone(),
                    registry: registry_of(&spec.workload.image),
                    detail: e.to_string(),
                });
            }
            Err(e) => return Err(docker_err(format!("create container {name}"))(e)),
        };
        if let Err(e) = s.docker.start_container(&created.id, None).await {
            // A container that failed to start stays in Created: remove it.
            let _ = s.remove(&created.id).await;
            let detail = e.to_string();
            let gpu = !spec.gpu_ids.is_empty() || spec.workload.gpus > 0;
            if gpu && (detail.contains("device driver") || detail.contains("nvidia")) {
                return Err(RuntimeError::GpuUnavailable {
                    key: key.to_string(),
                    gpus: spec.gpu_ids.clone(),
                    detail,
                });
            }
            return Err(RuntimeError::Docker {
                op: format!("start container {name} (it was removed)"),
                detail,
            });
        }
        let c = s
            .inspect_ours(&created.id)
            .await?
            .ok_or_else(|| RuntimeError::Docker {
                op: format!("inspect container {name}"),
                detail: "it vanished right after starting".to_owned(),
            })?;
        s.ensure_prober(&c, false);
        s.observe(&c).ok_or_else(|| RuntimeError::Docker {
            op: format!("inspect container {name}"),
            detail: "its labels did not read back".to_owned(),
        })
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn start(&self, spec: &StartSpec) -> Result<Observed, RuntimeError> {
        let _op = self.ops[stripe_of(&spec.key)].lock().await;
        self.start_locked(spec).await
    }

    async fn stop(&self, key: &ReplicaKey) -> Result<(), RuntimeError> {
        let _op = self.ops[stripe_of(key)].lock().await;
        key.validate()?;
        self.shared.drop_prober(key, None);
        for id in self.shared.our_container_ids(Some(key)).await? {
            self.shared.remove(&id).await?;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Observed>, RuntimeError> {
        let mut out = Vec::new();
        for id in self.shared.our_container_ids(None).await? {
            if let Some(o) = self
                .shared
                .inspect_ours(&id)
                .await?
                .and_then(|c| self.shared.observe(&c))
            {
                out.push(o);
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key).then_with(|| a.instance.cmp(&b.instance)));
        Ok(out)
    }

    async fn inspect(&self, key: &ReplicaKey) -> Result<Option<Observed>, RuntimeError> {
        for id in self.shared.our_container_ids(Some(key)).await? {
            if let Some(o) = self
                .shared
                .inspect_ours(&id)
                .await?
                .and_then(|c| self.shared.observe(&c))
            {
                return Ok(Some(o));
            }
        }
        Ok(None)
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.shared.events.subscribe()
    }
}

/// Follows Docker's event stream until the runtime is dropped, reconnecting with backoff.
async fn follow_events(shared: Weak<Shared>, mut since_ns: i64) {
    let mut retry_ms = EVENTS_RETRY_MIN_MS;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let filters = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("label", vec![s.node_filter()]),
            (
                "event",
                FOLLOWED_EVENTS.iter().map(|e| (*e).to_owned()).collect(),
            ),
        ]);
        let opts = EventsOptionsBuilder::new()
            .since(&since_arg(since_ns))
            .filters(&filters)
            .build();
        let mut stream = s.docker.events(Some(opts));
        drop(s);
        let why = loop {
            match stream.next().await {
                Some(Ok(ev)) => {
                    retry_ms = EVENTS_RETRY_MIN_MS;
                    if let Some(t) = ev.time_nano {
                        // Replays after a reconnect start just after the last event handled.
                        since_ns = since_ns.max(t.saturating_add(1));
                    }
                    let Some(s) = shared.upgrade() else { return };
                    s.on_event(ev).await;
                }
                Some(Err(e)) => break e.to_string(),
                None => break "the stream ended".to_owned(),
            }
        };
        let Some(s) = shared.upgrade() else { return };
        tracing::warn!("docker events: {why}; reconnecting in {retry_ms} ms");
        s.emit(RuntimeEvent::Resync);
        drop(s);
        tokio::time::sleep(Duration::from_millis(retry_ms)).await;
        retry_ms = (retry_ms * 2).min(EVENTS_RETRY_MAX_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("ghcr.io/a/b:1"), "ghcr.io");
        assert_eq!(registry_of("localhost:5000/x"), "localhost:5000");
        assert_eq!(
            split_reference("busybox"),
            ("busybox".into(), Some("latest".into()))
        );
        assert_eq!(
            split_reference("reg:5000/a/b:1.2"),
            ("reg:5000/a/b".into(), Some("1.2".into()))
        );
        assert_eq!(
            split_reference("reg:5000/a/b"),
            ("reg:5000/a/b".into(), Some("latest".into()))
        );
        assert_eq!(split_reference("a@sha256:00"), ("a@sha256:00".into(), None));
    }

    #[test]
    fn a_replica_keeps_its_stripe_and_replicas_spread_over_stripes() {
        let key = |i| ReplicaKey::new("c", "web", i);
        let stripes: std::collections::BTreeSet<usize> =
            (0..20).map(|i| stripe_of(&key(i))).collect();
        assert!(stripes.iter().all(|s| *s < OP_STRIPES));
        assert!(
            stripes.len() >= OP_STRIPES / 2,
            "20 replicas on stripes {stripes:?}"
        );
        for i in 0..20 {
            assert_eq!(stripe_of(&key(i)), stripe_of(&key(i)));
        }
    }

    #[test]
    fn times() {
        assert_eq!(parse_docker_time("1970-01-01T00:00:01.5Z"), 1500);
        assert_eq!(
            parse_docker_time("2026-12-02T10:11:12.123456789Z") % 1000,
            123
        );
        assert_eq!(parse_docker_time("0001-01-01T00:00:00Z"), 0);
        assert_eq!(since_arg(1_500_000_000), "1.500000000");
    }
}
