//! The process runtime: a replica is the workload's `command` + `args`, run as a supervised
//! child process of the agent.
//!
//! - **Isolation.** Each replica runs in its own process group (`process_group(0)`: pgid = pid),
//!   with a clean environment (the agent's `PATH`, then the workload's env, then the caller's
//!   extra env, then `CUDA_VISIBLE_DEVICES` from the GPU ids: empty when none were given, so a
//!   replica sees only the GPUs it was handed) and its own working directory
//!   `<data dir>/process/replicas/<colony>/<role>/<replica>/work` (kept across restarts and stops,
//!   like a volume). `image`, `ports` and `volumes` have no meaning here and are ignored.
//! - **Stop.** SIGTERM to the whole group, then SIGKILL to the group after the grace period
//!   ([`ProcessConfig::stop_grace_ms`]), and a last SIGKILL to the group once the leader is gone,
//!   so that nothing it started outlives it (unless it left the group itself).
//! - **Logs.** stdout and stderr go to `output.log` in the replica's directory, capped at
//!   [`ProcessConfig::log_cap_bytes`] with one rotated `output.log.1` (see `logs.rs`).
//! - **Limits** (best effort). `limits.memory_mib` becomes `RLIMIT_AS` (virtual memory: runtimes
//!   that reserve large address spaces, such as the JVM or Go, need headroom), applied by a
//!   `/bin/sh -c 'ulimit -v KiB && exec "$@"'` prelude, so it is in place before the workload's
//!   first instruction and the pid stays the workload's. `limits.cpu_millis` is **not enforced**:
//!   that needs a delegated cgroup v2 subtree, which this runtime does not manage.
//! - **Exit detection.** A child the runtime spawned is awaited (`tokio::process::Child::wait`),
//!   which gives its exit code (128 + signal when killed). No polling.
//! - **Adoption.** Every replica is recorded (key, pid, start time in clock ticks from
//!   `/proc/PID/stat`, workload hash, restarts, health check, exit) in
//!   `<data dir>/process/state.json`, written atomically (tmp, fsync, rename, fsync dir). A new
//!   runtime over the same data dir (an agent restart) adopts each recorded process that is still
//!   the same process (same pid *and* start time, never the pid alone; and pgid = pid) without
//!   restarting it: it reopens its output FIFO, resumes its health probe (first probe at once) and
//!   watches its exit through a **pidfd** (`pidfd_open`, readable when the process exits; no
//!   polling). On a kernel without pidfd it falls back to checking `/proc/PID/stat` every
//!   [`ADOPTED_POLL_MS`]. An adopted process has no parent to hand over its status, so its exit
//!   code is unknown (`Exited { code: None }`). A process recorded as running that is gone (or
//!   whose pid now belongs to another process) is reported `Exited { code: None }`.
//!   A crash between spawning a child and writing the state file leaves that child unrecorded.
//! - **Health.** Every probe (HTTP and TCP against [`ProcessConfig::probe_ip`], 127.0.0.1 by
//!   default; exec as a command with the replica's env and working dir) runs in the agent
//!   ([`super::health`]).

use super::health::{self, Health, ProbeTarget};
use super::logs;
use super::procfs::{self, ProcStat};
use super::{
    EVENT_CAPACITY, MAX_REPLICAS, Observed, ReplicaKey, ReplicaState, Runtime, RuntimeError,
    RuntimeEvent, StartSpec, check_gpus, merged_env, unix_now_ms,
};
use async_trait::async_trait;
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use swarm_core::NodeId;
use swarm_core::spec::{HealthCheck, Probe};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// Default time between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_GRACE_MS: u32 = 10_000;
/// Default cap of one replica's `output.log` (and of `output.log.1`).
pub const DEFAULT_LOG_CAP_BYTES: u64 = 10 * 1024 * 1024;
/// Largest state file the runtime reads.
pub const STATE_FILE_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// How often an adopted process is checked when the kernel has no pidfd.
pub const ADOPTED_POLL_MS: u64 = 1_000;
/// How long a stop waits for the group to die after SIGKILL.
pub const KILL_WAIT_MS: u64 = 5_000;
/// How long a stop lets the log pump drain what the dead replica wrote.
pub const PUMP_DRAIN_MS: u64 = 1_000;
/// Version of the state file layout.
const STATE_VERSION: u32 = 1;
/// `PATH` for replicas when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How the process runtime is set up.
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    pub node: NodeId,
    /// The agent's data directory; the runtime keeps its state under `<data_dir>/process`.
    pub data_dir: PathBuf,
    pub stop_grace_ms: u32,
    pub log_cap_bytes: u64,
    /// Where HTTP and TCP probes reach a replica: the node's service IP, which workloads listen
    /// on (`AWARE_NODE_IP`; several nodes on one machine each have their own loopback address).
    /// `127.0.0.1` by default.
    pub probe_ip: IpAddr,
}

impl ProcessConfig {
    pub fn new(node: NodeId, data_dir: &Path) -> ProcessConfig {
        ProcessConfig {
            node,
            data_dir: data_dir.to_owned(),
            stop_grace_ms: DEFAULT_STOP_GRACE_MS,
            log_cap_bytes: DEFAULT_LOG_CAP_BYTES,
            probe_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

/// The state file: what a restarted agent needs to adopt its processes.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// The node (16 hex digits) whose agent wrote it.
    node: String,
    replicas: Vec<Record>,
}

/// One replica in the state file (its "labels": key, node, workload hash).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    key: ReplicaKey,
    pid: u32,
    start_ticks: u64,
    workload_hash: u64,
    restarts: u32,
    started_at_unix_ms: u64,
    health: Option<HealthCheck>,
    /// The replica's environment, for exec probes after an adoption.
    env: BTreeMap<String, String>,
    /// Set once the process has exited.
    exit: Option<Exit>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Exit {
    code: Option<i32>,
}

impl Record {
    fn instance(&self) -> String {
        format!("pid:{}:{}", self.pid, self.start_ticks)
    }
}

/// The tasks supervising a replica (not persisted).
#[derive(Debug, Default)]
struct Tasks {
    watcher: Option<JoinHandle<()>>,
    pump: Option<JoinHandle<()>>,
    prober: Option<JoinHandle<()>>,
}

impl Tasks {
    fn abort_all(&mut self) {
        for t in [self.watcher.take(), self.pump.take(), self.prober.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
    }
}

#[derive(Debug)]
struct Slot {
    rec: Record,
    tasks: Tasks,
    /// Becomes true when the process has exited (for stop to await).
    exited: watch::Receiver<bool>,
    /// `None` when the replica has no health check.
    health: Option<Health>,
}

impl Slot {
    fn observed(&self) -> Observed {
        let state = match (self.rec.exit, self.health) {
            (Some(exit), _) => ReplicaState::Exited { code: exit.code },
            (None, None) => ReplicaState::Running,
            (None, Some(Health::Starting)) => ReplicaState::Starting,
            (None, Some(Health::Healthy)) => ReplicaState::Healthy,
            (None, Some(Health::Unhealthy)) => ReplicaState::Unhealthy,
        };
        Observed {
            key: self.rec.key.clone(),
            state,
            restarts: self.rec.restarts,
            workload_hash: self.rec.workload_hash,
            instance: self.rec.instance(),
            started_at_unix_ms: self.rec.started_at_unix_ms,
            pid: self.rec.exit.is_none().then_some(self.rec.pid),
            oom_killed: false,
        }
    }
}

#[derive(Debug)]
struct Shared {
    cfg: ProcessConfig,
    state_path: PathBuf,
    slots: Mutex<BTreeMap<ReplicaKey, Slot>>,
    /// Serialises state-file writes; the snapshot is taken under it, so the last write is the
    /// newest state.
    persist_lock: tokio::sync::Mutex<()>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, BTreeMap<ReplicaKey, Slot>> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, event: RuntimeEvent) {
        let _ = self.events.send(event);
    }

    async fn persist(&self) -> Result<(), RuntimeError> {
        let _guard = self.persist_lock.lock().await;
        let file = StateFile {
            version: STATE_VERSION,
            node: self.cfg.node.to_string(),
            replicas: self.slots().values().map(|s| s.rec.clone()).collect(),
        };
        let path = self.state_path.clone();
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| RuntimeError::StateFile {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let write = tokio::task::spawn_blocking(move || procfs::write_atomic(&path, &bytes));
        match write.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RuntimeError::Io {
                what: format!("writing {}", self.state_path.display()),
                source: e,
            }),
            Err(e) => Err(RuntimeError::StateFile {
                path: self.state_path.display().to_string(),
                detail: format!("writer task failed: {e}"),
            }),
        }
    }

    /// Records the exit of the instance `(key, start_ticks)`, if it is still the current one.
    async fn on_exit(&self, key: &ReplicaKey, start_ticks: u64, code: Option<i32>) {
        let observed = {
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(key) else {
                return;
            };
            if slot.rec.start_ticks != start_ticks || slot.rec.exit.is_some() {
                return;
            }
            slot.rec.exit = Some(Exit { code });
            if let Some(p) = slot.tasks.prober.take() {
                p.abort();
            }
            slot.observed()
        };
        if let Err(e) = self.persist().await {
            tracing::warn!("process runtime: {e}");
        }
        self.emit(RuntimeEvent::Changed(observed));
    }

    fn on_health(&self, key: &ReplicaKey, start_ticks: u64, health: Health) {
        let observed = {
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(key) else {
                return;
            };
            if slot.rec.start_ticks != start_ticks || slot.rec.exit.is_some() {
                return;
            }
            slot.health = Some(health);
            slot.observed()
        };
        self.emit(RuntimeEvent::Changed(observed));
    }

    fn replica_dir(&self, key: &ReplicaKey) -> PathBuf {
        self.cfg
            .data_dir
            .join("process")
            .join("replicas")
            .join(&key.colony)
            .join(&key.role)
            .join(key.replica.to_string())
    }
}

/// Supervised child processes. See the module doc.
#[derive(Debug)]
pub struct ProcessRuntime {
    shared: Arc<Shared>,
    /// Serialises start and stop.
    ops: tokio::sync::Mutex<()>,
}

impl Drop for ProcessRuntime {
    /// Stops supervising (tasks end) but leaves every process running, for the next agent to
    /// adopt.
    fn drop(&mut self) {
        for slot in self.shared.slots().values_mut() {
            slot.tasks.abort_all();
        }
    }
}

impl ProcessRuntime {
    /// Opens the runtime over `cfg.data_dir`, adopting the recorded processes that still run.
    /// Must be called inside a tokio runtime.
    pub async fn open(cfg: ProcessConfig) -> Result<ProcessRuntime, RuntimeError> {
        let dir = cfg.data_dir.join("process");
        std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::Io {
            what: format!("creating {}", dir.display()),
            source: e,
        })?;
        let state_path = dir.join("state.json");
        let records = load_state(&state_path, cfg.node)?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            cfg,
            state_path,
            slots: Mutex::new(BTreeMap::new()),
            persist_lock: tokio::sync::Mutex::new(()),
            events,
        });
        for mut rec in records {
            let alive = rec.exit.is_none() && is_ours(rec.pid, rec.start_ticks);
            if rec.exit.is_none() && !alive {
                rec.exit = Some(Exit { code: None });
            }
            let (tx, rx) = watch::channel(!alive);
            let key = rec.key.clone();
            let health = rec.health.as_ref().map(|_| Health::Starting);
            shared.slots().insert(
                key.clone(),
                Slot {
                    rec: rec.clone(),
                    tasks: Tasks::default(),
                    exited: rx,
                    health,
                },
            );
            if alive {
                adopt(&shared, &rec, tx);
            }
        }
        shared.persist().await?;
        Ok(ProcessRuntime {
            shared,
            ops: tokio::sync::Mutex::new(()),
        })
    }

    /// The replica's directory (its `work/` dir and `output.log` live here).
    pub fn replica_dir(&self, key: &ReplicaKey) -> PathBuf {
        self.shared.replica_dir(key)
    }

    /// The replica's current output log.
    pub fn log_path(&self, key: &ReplicaKey) -> PathBuf {
        self.shared.replica_dir(key).join("output.log")
    }

    /// Terminates what is left of the replica's current instance (if anything) and stops its
    /// tasks. The slot stays.
    async fn terminate(&self, key: &ReplicaKey) {
        let grace = Duration::from_millis(u64::from(self.shared.cfg.stop_grace_ms));
        let Some((rec, mut exited)) = self
            .shared
            .slots()
            .get(key)
            .map(|s| (s.rec.clone(), s.exited.clone()))
        else {
            return;
        };
        let was_alive =
            rec.exit.is_none() && procfs::is_same_live_process(rec.pid, rec.start_ticks);
        if was_alive {
            signal_group(rec.pid, rec.start_ticks, Signal::TERM);
            let timed_out = tokio::time::timeout(grace, exited.wait_for(|e| *e))
                .await
                .is_err();
            if timed_out {
                signal_group(rec.pid, rec.start_ticks, Signal::KILL);
                let wait = Duration::from_millis(KILL_WAIT_MS);
                if tokio::time::timeout(wait, exited.wait_for(|e| *e))
                    .await
                    .is_err()
                {
                    tracing::warn!("replica {key} (pid {}) survived SIGKILL", rec.pid);
                }
            }
        }
        if was_alive {
            // Whatever the leader left behind in its group. Only right after seeing the leader
            // alive: the pid of a process that exited long ago may lead someone else's group now.
            kill_stragglers(rec.pid);
        }
        let pump = {
            let mut slots = self.shared.slots();
            slots.get_mut(key).and_then(|slot| {
                if let Some(t) = slot.tasks.prober.take() {
                    t.abort();
                }
                if let Some(t) = slot.tasks.watcher.take() {
                    t.abort();
                }
                slot.tasks.pump.take()
            })
        };
        if let Some(mut pump) = pump {
            let drain = Duration::from_millis(PUMP_DRAIN_MS);
            if tokio::time::timeout(drain, &mut pump).await.is_err() {
                pump.abort();
            }
        }
    }

    async fn start_locked(&self, spec: &StartSpec) -> Result<Observed, RuntimeError> {
        let key = &spec.key;
        key.validate()?;
        check_gpus(spec)?;
        let invalid = |reason: String| RuntimeError::InvalidSpec {
            key: key.to_string(),
            reason,
        };
        let Some((program, first_args)) = spec.workload.command.split_first() else {
            return Err(invalid(
                "the process runtime needs a `command` to run".to_owned(),
            ));
        };
        if spec.workload.gpus > 0 && spec.gpu_ids.is_empty() {
            return Err(invalid(format!(
                "the workload uses {} GPU(s); the process runtime needs their indices",
                spec.workload.gpus
            )));
        }
        let existing = self.shared.slots().get(key).map(|s| {
            (
                s.rec.exit.is_none(),
                s.rec.workload_hash,
                s.rec.restarts,
                s.observed(),
            )
        });
        let restarts = match existing {
            Some((true, hash, _, observed)) if hash == spec.workload_hash => return Ok(observed),
            Some((true, _, _, _)) => {
                self.terminate(key).await;
                0
            }
            Some((false, hash, restarts, _)) => {
                self.terminate(key).await;
                if hash == spec.workload_hash {
                    restarts.saturating_add(1)
                } else {
                    0
                }
            }
            None => {
                if self.shared.slots().len() >= MAX_REPLICAS {
                    return Err(RuntimeError::TooMany {
                        limit: MAX_REPLICAS,
                    });
                }
                0
            }
        };

        let dir = self.shared.replica_dir(key);
        let work = dir.join("work");
        let fifo = dir.join("output.fifo");
        let io = |what: String| move |e| RuntimeError::Io { what, source: e };
        std::fs::create_dir_all(&work).map_err(io(format!("creating {}", work.display())))?;
        logs::ensure_fifo(&fifo).map_err(io(format!("creating FIFO {}", fifo.display())))?;
        let out = logs::open_child_end(&fifo).map_err(io(format!("opening {}", fifo.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("opening {}", fifo.display())))?;
        // Held until the pump has opened its read end: a FIFO's buffered data is discarded when
        // its last descriptor closes, which a quick replica would otherwise do before the pump
        // is there.
        let keeper = out
            .try_clone()
            .map_err(io(format!("opening {}", fifo.display())))?;

        let mut env = BTreeMap::from([(
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned()),
        )]);
        env.extend(merged_env(spec));
        let gpus: Vec<String> = spec.gpu_ids.iter().map(u32::to_string).collect();
        env.insert("CUDA_VISIBLE_DEVICES".to_owned(), gpus.join(","));

        let mut argv: Vec<&str> = Vec::new();
        let limit_script;
        if let Some(mib) = spec.workload.limits.memory_mib {
            let kib = mib.saturating_mul(1024);
            limit_script = format!("ulimit -v {kib} && exec \"$@\"");
            argv.extend(["/bin/sh", "-c", &limit_script, "aware-limits"]);
        }
        argv.push(program);
        argv.extend(first_args.iter().map(String::as_str));
        argv.extend(spec.workload.args.iter().map(String::as_str));

        let child = {
            let mut cmd = tokio::process::Command::new(argv[0]);
            cmd.args(&argv[1..])
                .env_clear()
                .envs(&env)
                .current_dir(&work)
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .kill_on_drop(false);
            // The command (and with it the agent's copy of the FIFO's write end) is dropped at
            // the end of this block, so the pump sees end of file when the replica's side closes.
            cmd.spawn().map_err(|e| RuntimeError::Spawn {
                key: key.to_string(),
                program: program.clone(),
                source: e,
            })?
        };
        let pid = child.id().ok_or_else(|| RuntimeError::StateFile {
            path: self.shared.state_path.display().to_string(),
            detail: format!("replica {key}: the child has no pid right after spawning"),
        })?;
        let start_ticks = procfs::read_stat(pid)
            .map(|s: ProcStat| s.start_ticks)
            .ok_or_else(|| RuntimeError::Io {
                what: format!("reading /proc/{pid}/stat of replica {key}"),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
        let rec = Record {
            key: key.clone(),
            pid,
            start_ticks,
            workload_hash: spec.workload_hash,
            restarts,
            started_at_unix_ms: unix_now_ms(),
            health: spec.workload.health.clone(),
            env,
            exit: None,
        };
        let (tx, rx) = watch::channel(false);
        let pump = logs::spawn_pump(
            &fifo,
            &dir.join("output.log"),
            self.shared.cfg.log_cap_bytes,
        );
        drop(keeper);
        let health = rec.health.as_ref().map(|_| Health::Starting);
        let observed = {
            let mut slots = self.shared.slots();
            let slot = Slot {
                rec: rec.clone(),
                tasks: Tasks::default(),
                exited: rx,
                health,
            };
            let observed = slot.observed();
            let slot = match slots.entry(key.clone()) {
                Entry::Occupied(mut old) => {
                    old.insert(slot);
                    old.into_mut()
                }
                Entry::Vacant(v) => v.insert(slot),
            };
            slot.tasks.pump = pump
                .map_err(|e| tracing::warn!("replica {key}: logs: {e}"))
                .ok();
            // The slot exists before the watcher runs, so even an instant exit is recorded.
            let weak = Arc::downgrade(&self.shared);
            let watch_key = key.clone();
            slot.tasks.watcher = Some(tokio::spawn(async move {
                let mut child = child;
                let status = child.wait().await;
                let code = status.ok().and_then(|s| {
                    use std::os::unix::process::ExitStatusExt;
                    s.code().or_else(|| s.signal().map(|sig| 128 + sig))
                });
                if let Some(shared) = weak.upgrade() {
                    shared.on_exit(&watch_key, start_ticks, code).await;
                }
                let _ = tx.send(true);
            }));
            slot.tasks.prober = start_prober(&self.shared, &rec, &work, false);
            observed
        };
        self.shared.persist().await?;
        self.shared.emit(RuntimeEvent::Changed(observed.clone()));
        Ok(observed)
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: &StartSpec) -> Result<Observed, RuntimeError> {
        let _op = self.ops.lock().await;
        self.start_locked(spec).await
    }

    async fn stop(&self, key: &ReplicaKey) -> Result<(), RuntimeError> {
        let _op = self.ops.lock().await;
        self.terminate(key).await;
        let Some(mut slot) = self.shared.slots().remove(key) else {
            return Ok(());
        };
        slot.tasks.abort_all();
        let fifo = self.shared.replica_dir(key).join("output.fifo");
        let _ = std::fs::remove_file(fifo);
        self.shared.persist().await?;
        self.shared.emit(RuntimeEvent::Removed {
            key: key.clone(),
            instance: slot.rec.instance(),
        });
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Observed>, RuntimeError> {
        Ok(self.shared.slots().values().map(Slot::observed).collect())
    }

    async fn inspect(&self, key: &ReplicaKey) -> Result<Option<Observed>, RuntimeError> {
        Ok(self.shared.slots().get(key).map(Slot::observed))
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.shared.events.subscribe()
    }
}

/// Reads the state file; a missing file is an empty state. A file that cannot be read or
/// parsed is an error (it is left untouched).
fn load_state(path: &Path, node: NodeId) -> Result<Vec<Record>, RuntimeError> {
    let err = |detail: String| RuntimeError::StateFile {
        path: path.display().to_string(),
        detail,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(e.to_string())),
    };
    if meta.len() > STATE_FILE_MAX_BYTES {
        return Err(err(format!(
            "{} bytes, more than the {STATE_FILE_MAX_BYTES} allowed",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let file: StateFile =
        serde_json::from_slice(&bytes).map_err(|e| err(format!("not valid: {e}")))?;
    if file.version != STATE_VERSION {
        return Err(err(format!(
            "version {} (this agent reads {STATE_VERSION})",
            file.version
        )));
    }
    if file.node != node.to_string() {
        return Err(err(format!(
            "written by node {}, this agent is node {node}: not adopting another node's processes",
            file.node
        )));
    }
    if file.replicas.len() > MAX_REPLICAS {
        return Err(err(format!(
            "{} replicas, more than {MAX_REPLICAS}",
            file.replicas.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &file.replicas {
        r.key.validate().map_err(|e| err(e.to_string()))?;
        if !seen.insert(&r.key) {
            return Err(err(format!("replica {} is recorded twice", r.key)));
        }
    }
    Ok(file.replicas)
}

/// Whether `pid` is still the process group leader this runtime started at `start_ticks`.
fn is_ours(pid: u32, start_ticks: u64) -> bool {
    procfs::read_stat(pid).is_some_and(|s| {
        s.start_ticks == start_ticks && !s.is_zombie() && u32::try_from(s.pgid).ok() == Some(pid)
    })
}

/// Sends `sig` to the process group led by `pid`, if `pid` is still the process that started at
/// `start_ticks` (its identity; never the pid alone).
fn signal_group(pid: u32, start_ticks: u64, sig: Signal) {
    if !procfs::is_same_live_process(pid, start_ticks) {
        return;
    }
    if let Some(p) = group_pid(pid) {
        let _ = rustix::process::kill_process_group(p, sig);
    }
}

/// SIGKILL to what is left of the group led by the (dead) `pid`. A process group id cannot be
/// reused while the group has members, so this reaches only the replica's leftovers (or no one).
fn kill_stragglers(pid: u32) {
    if let Some(p) = group_pid(pid) {
        let _ = rustix::process::kill_process_group(p, Signal::KILL);
    }
}

/// `pid` as a process group to signal: never 0 or 1 (`kill(-1)` would signal everything).
fn group_pid(pid: u32) -> Option<Pid> {
    let raw = i32::try_from(pid).ok().filter(|p| *p > 1)?;
    Pid::from_raw(raw)
}

/// Supervises an adopted process: reopens its logs, resumes its probe, watches its exit.
fn adopt(shared: &Arc<Shared>, rec: &Record, exited: watch::Sender<bool>) {
    let dir = shared.replica_dir(&rec.key);
    let fifo = dir.join("output.fifo");
    let pump = logs::spawn_pump(&fifo, &dir.join("output.log"), shared.cfg.log_cap_bytes)
        .map_err(|e| tracing::warn!("adopted replica {}: logs: {e}", rec.key))
        .ok();
    let weak = Arc::downgrade(shared);
    let watcher = tokio::spawn(watch_adopted(
        weak,
        rec.key.clone(),
        rec.pid,
        rec.start_ticks,
        exited,
    ));
    let prober = start_prober(shared, rec, &dir.join("work"), true);
    if let Some(slot) = shared.slots().get_mut(&rec.key) {
        slot.tasks = Tasks {
            watcher: Some(watcher),
            pump,
            prober,
        };
    }
}

/// Waits for an adopted process (not our child) to exit: a pidfd if the kernel has them,
/// otherwise a check of `/proc/PID/stat` every [`ADOPTED_POLL_MS`].
async fn watch_adopted(
    shared: Weak<Shared>,
    key: ReplicaKey,
    pid: u32,
    start_ticks: u64,
    exited: watch::Sender<bool>,
) {
    let pidfd = Pid::from_raw(i32::try_from(pid).unwrap_or(0))
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    // Checked after opening the pidfd: from here on the pidfd refers to this very process.
    if procfs::is_same_live_process(pid, start_ticks) {
        let waited = match pidfd.map(register_pidfd) {
            Some(Ok(afd)) => afd.readable().await.map(drop).is_ok(),
            _ => false,
        };
        if !waited {
            let every = Duration::from_millis(ADOPTED_POLL_MS);
            while procfs::is_same_live_process(pid, start_ticks) {
                tokio::time::sleep(every).await;
            }
        }
    }
    if let Some(shared) = shared.upgrade() {
        shared.on_exit(&key, start_ticks, None).await;
    }
    let _ = exited.send(true);
}

/// Registers a pidfd with tokio's reactor (readable once the process has exited).
// tokio 1.54 deprecates the safe `AsyncFd` constructors because a generic `T: AsRawFd` may close
// or swap its descriptor; an `OwnedFd` can do neither while the `AsyncFd` owns it, which is the
// safety condition of the `unsafe` replacement this crate cannot use (`unsafe_code` is forbidden).
#[allow(deprecated)]
fn register_pidfd(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
}

/// Starts the replica's agent-side probe, if it has a health check.
fn start_prober(
    shared: &Arc<Shared>,
    rec: &Record,
    work: &Path,
    probe_now: bool,
) -> Option<JoinHandle<()>> {
    let check = rec.health.as_ref()?;
    let ip = shared.cfg.probe_ip;
    let local = |port: u16| SocketAddr::new(ip, port);
    let target = match &check.probe {
        Probe::Http { path, port } => ProbeTarget::Http {
            addr: local(*port),
            path: path.clone(),
        },
        Probe::Tcp { port } => ProbeTarget::Tcp { addr: local(*port) },
        Probe::Exec { command } => ProbeTarget::Exec {
            command: command.clone(),
            env: rec.env.clone(),
            cwd: work.to_owned(),
        },
    };
    // For the start period of an adopted replica, count from now (its age is unknown here).
    let started = tokio::time::Instant::now();
    let weak = Arc::downgrade(shared);
    let key = rec.key.clone();
    let ticks = rec.start_ticks;
    Some(health::spawn_prober(
        target,
        check,
        started,
        probe_now,
        move |h| {
            if let Some(shared) = weak.upgrade() {
                shared.on_health(&key, ticks, h);
            }
        },
    ))
}
