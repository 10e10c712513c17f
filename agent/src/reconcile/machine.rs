//! The reconciler's decisions, as a pure state machine: no tokio, no clock, no runtime calls.
//! The driver (the tokio task in `task.rs`, or a test) feeds it inputs with the time
//! ([`Machine::set_desired`], [`Machine::set_healthy_roles`], [`Machine::set_endpoints`],
//! [`Machine::listed`], [`Machine::on_event`], [`Machine::op_done`]), then calls
//! [`Machine::step`] for the [`Action`]s to carry out, [`Machine::poll_report`] for the reports
//! to send and [`Machine::poll_timeout`] for when to step again. It owns per replica: what is
//! wanted, what the runtime last reported, the operation in flight (at most one per replica),
//! the failure history (backoff, crash loop, retries) and what was last reported. The rules are
//! in the parent module's doc.
//!
//! Observations arrive from two unordered sources (the runtime's event stream, and the result
//! of our own start), so the machine never lets an older observation overwrite a newer one: an
//! ended instance does not come back to life, a replaced or removed instance is *retired* (its
//! late events are ignored), and a start's result is used only when no event about that
//! instance arrived first.

use super::{
    Desired, EndpointsChange, MAX_DESIRED_REPLICAS, ReconcileError, ReconcilerConfig,
    ReplicaReport, ReplicaStatus, ReportedState, endpoints_env_var, start_hash, validate_desired,
    validate_endpoints, validate_healthy_roles,
};
use super::{DesiredReplica, check_colony};
use crate::runtime::{
    MAX_REPLICAS, Observed, ReplicaKey, ReplicaState, RuntimeError, RuntimeEvent, StartSpec,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use swarm_core::spec::RestartPolicy;
use swarm_core::wire::Version;

/// Most replicas the machine tracks: every assigned one plus every one the runtime reports.
pub const MAX_SLOTS: usize = MAX_DESIRED_REPLICAS + MAX_REPLICAS;
/// Most reports waiting for the driver (one per replica at most; the oldest is dropped beyond).
pub const MAX_REPORT_BACKLOG: usize = MAX_SLOTS;
/// Replaced or removed instances remembered per replica, to ignore their late events.
const RETIRED_KEEP: usize = 4;

/// The time of an input: a monotonic clock for every decision, the wall clock for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    pub mono_ms: u64,
    pub unix_ms: u64,
}

impl Now {
    /// Both clocks at `ms` (tests).
    pub fn at_ms(ms: u64) -> Now {
        Now {
            mono_ms: ms,
            unix_ms: ms,
        }
    }
}

/// What the driver must do. Each action is for one replica; the machine issues no other action
/// for that replica until [`Machine::op_done`] reports its result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `Runtime::start` (a no-op for a live replica with the same hash; replaces one with
    /// another hash; starts an ended one again).
    Start(StartSpec),
    /// `Runtime::stop`, then `Runtime::start`: a live replica gets a new environment.
    Restart(StartSpec),
    /// `Runtime::stop`.
    Stop(ReplicaKey),
}

impl Action {
    pub fn key(&self) -> &ReplicaKey {
        match self {
            Action::Start(s) | Action::Restart(s) => &s.key,
            Action::Stop(k) => k,
        }
    }
}

/// A runtime error, as the machine needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpError {
    /// Trying again on this node cannot help (invalid spec, GPUs unavailable, too many replicas).
    pub permanent: bool,
    pub message: String,
}

impl OpError {
    pub fn from_runtime(e: &RuntimeError) -> OpError {
        OpError {
            permanent: matches!(
                e,
                RuntimeError::InvalidSpec { .. }
                    | RuntimeError::GpuUnavailable { .. }
                    | RuntimeError::TooMany { .. }
            ),
            message: e.to_string(),
        }
    }
}

/// The result of an [`Action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// Of a `Start` or a `Restart`.
    Started(Result<Observed, OpError>),
    /// Of a `Stop`.
    Stopped(Result<(), OpError>),
}

#[derive(Clone, Debug)]
struct Want {
    spec: DesiredReplica,
    gpu_ids: Vec<u32>,
    hash: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Start,
    Restart,
    Stop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Done {
    /// Given up on this node (reported `Failed`).
    Failed(String),
    /// Ended as its restart policy wants (reported `Stopped`).
    Completed(String),
}

/// An instance's end, not yet judged against the restart policy.
#[derive(Clone, Debug)]
struct End {
    code: Option<i32>,
    what: String,
}

#[derive(Debug, Default)]
struct Slot {
    want: Option<Want>,
    observed: Option<Observed>,
    op: Option<OpKind>,
    retired: VecDeque<String>,
    /// The instance whose end was already noted.
    ended: Option<String>,
    /// The instance we are stopping or replacing: its end is not a failure.
    quiet: Option<String>,
    pending_end: Option<End>,
    restarts: u32,
    /// The next start is a restart after a failure.
    restart_due: bool,
    consecutive_failures: u32,
    /// Failure times (ms) within the crash-loop window; at most `crash_loop_failures`.
    failure_times: VecDeque<u64>,
    /// The last failure and the backoff it caused, for the report.
    last_failure: Option<String>,
    next_start_ms: u64,
    /// No start of a replica that is not alive before this (set by every successful start).
    start_floor_ms: u64,
    up_since_ms: Option<u64>,
    unhealthy_since_ms: Option<u64>,
    crash_loop: Option<String>,
    done: Option<Done>,
    /// The `AWARE_*` environment the current instance was started with; `None` until it is
    /// known (an adopted replica gets the current one: its own is not recorded anywhere).
    started_env: Option<BTreeMap<String, String>>,
    stop_retry_ms: u64,
    stop_error: Option<String>,
    reported: Option<(ReportedState, Option<String>, u32)>,
}

fn policy_of(want: &Want) -> RestartPolicy {
    want.spec.workload.restart
}

fn map_state(s: &ReplicaState) -> ReportedState {
    match s {
        ReplicaState::Starting => ReportedState::Starting,
        ReplicaState::Running => ReportedState::Running,
        ReplicaState::Healthy => ReportedState::Healthy,
        ReplicaState::Unhealthy => ReportedState::Unhealthy,
        ReplicaState::Exited { .. } => ReportedState::Stopped,
        ReplicaState::Failed { .. } => ReportedState::Failed,
    }
}

/// `1 s`, `1500 ms`, `2 min`.
fn fmt_ms(ms: u64) -> String {
    if ms >= 60_000 && ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms >= 1_000 && ms.is_multiple_of(1_000) {
        format!("{} s", ms / 1_000)
    } else {
        format!("{ms} ms")
    }
}

fn describe_end(o: &Observed) -> End {
    match &o.state {
        ReplicaState::Exited { code } => {
            let what = match code {
                Some(c) if o.oom_killed => format!("killed by the OOM killer (exit code {c})"),
                Some(c) => format!("exited with code {c}"),
                None => "exited (exit code unknown)".to_owned(),
            };
            End { code: *code, what }
        }
        ReplicaState::Failed { error } => End {
            code: None,
            what: format!("failed: {error}"),
        },
        _ => End {
            code: None,
            what: "ended".to_owned(),
        },
    }
}

impl Slot {
    fn retire(&mut self, instance: String) {
        if !self.retired.contains(&instance) {
            self.retired.push_back(instance);
            if self.retired.len() > RETIRED_KEEP {
                self.retired.pop_front();
            }
        }
    }

    fn alive(&self) -> Option<&Observed> {
        self.observed.as_ref().filter(|o| o.state.is_alive())
    }

    /// Alive, running the wanted workload, and counting as healthy.
    fn healthy_as_wanted(&self) -> bool {
        match (self.alive(), &self.want) {
            (Some(o), Some(w)) => {
                o.workload_hash == w.hash && map_state(&o.state).counts_as_healthy()
            }
            _ => false,
        }
    }

    fn observe(&mut self, o: Observed) {
        if self.retired.contains(&o.instance) {
            return;
        }
        let ended = !o.state.is_alive();
        if !ended && self.ended.as_deref() == Some(o.instance.as_str()) {
            // Alive again after its end: an older report, unless it started again since (a
            // container started by hand keeps its id).
            let ended_start = self.observed.as_ref().map_or(0, |c| c.started_at_unix_ms);
            if o.started_at_unix_ms <= ended_start {
                return;
            }
            self.ended = None;
        }
        if let Some(cur) = self.observed.take() {
            if cur.instance != o.instance {
                self.retire(cur.instance);
            } else {
                self.observed = Some(cur);
            }
        }
        if ended && self.ended.as_deref() != Some(o.instance.as_str()) {
            self.ended = Some(o.instance.clone());
            if self.quiet.as_deref() != Some(o.instance.as_str()) {
                self.pending_end = Some(describe_end(&o));
            }
        }
        self.observed = Some(o);
    }

    fn on_removed(&mut self, instance: &str) {
        let Some(cur) = &self.observed else {
            self.retire(instance.to_owned());
            return;
        };
        if cur.instance != instance {
            self.retire(instance.to_owned());
            return;
        }
        let unnoticed_end = cur.state.is_alive()
            && self.ended.as_deref() != Some(instance)
            && self.quiet.as_deref() != Some(instance);
        if unnoticed_end {
            self.pending_end = Some(End {
                code: None,
                what: "disappeared from the runtime (removed outside AWARE?)".to_owned(),
            });
        }
        self.retire(instance.to_owned());
        self.observed = None;
    }

    /// Forgets the failure history (the workload changed, or it was re-assigned).
    fn reset_policy(&mut self) {
        self.restarts = 0;
        self.restart_due = false;
        self.consecutive_failures = 0;
        self.failure_times.clear();
        self.last_failure = None;
        self.next_start_ms = 0;
        self.crash_loop = None;
        self.done = None;
    }

    fn clear_history(&mut self) {
        self.consecutive_failures = 0;
        self.failure_times.clear();
        self.crash_loop = None;
    }

    fn judge_end(&mut self, cfg: &ReconcilerConfig, t: u64, end: End, policy: RestartPolicy) {
        match policy {
            RestartPolicy::Never => {
                self.done = Some(Done::Completed(format!(
                    "{}; restart policy: never",
                    end.what
                )));
            }
            RestartPolicy::OnFailure { .. } if end.code == Some(0) => {
                self.done = Some(Done::Completed(format!(
                    "{}; restart policy: on-failure",
                    end.what
                )));
            }
            _ => self.record_failure(cfg, t, end.what, policy),
        }
    }

    fn record_failure(
        &mut self,
        cfg: &ReconcilerConfig,
        t: u64,
        what: String,
        policy: RestartPolicy,
    ) {
        if self
            .up_since_ms
            .is_some_and(|up| t.saturating_sub(up) >= cfg.backoff_reset_after_ms)
        {
            self.clear_history();
        }
        self.up_since_ms = None;
        self.unhealthy_since_ms = None;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.failure_times.push_back(t);
        while self
            .failure_times
            .front()
            .is_some_and(|f| t.saturating_sub(*f) > cfg.crash_loop_window_ms)
        {
            self.failure_times.pop_front();
        }
        let limit = usize::try_from(cfg.crash_loop_failures).unwrap_or(usize::MAX);
        while self.failure_times.len() > limit {
            self.failure_times.pop_front();
        }
        self.restart_due = true;
        match policy {
            RestartPolicy::OnFailure { max_retries } if max_retries > 0 => {
                if self.restarts >= max_retries {
                    self.done = Some(Done::Failed(format!(
                        "{what}; gave up after {} restart(s) (restart policy: on-failure, \
                         max_retries {max_retries})",
                        self.restarts
                    )));
                    return;
                }
            }
            _ => {
                if self.failure_times.len() >= limit {
                    self.crash_loop = Some(format!(
                        "crash loop: {} failures within {} (last: {what}); restarted here every \
                         {} at most",
                        self.failure_times.len(),
                        fmt_ms(cfg.crash_loop_window_ms),
                        fmt_ms(cfg.backoff_max_ms)
                    ));
                }
            }
        }
        let delay = cfg.backoff_ms(self.consecutive_failures);
        self.next_start_ms = t.saturating_add(delay);
        self.last_failure = Some(format!("{what}; restarting after {}", fmt_ms(delay)));
    }

    /// Judges a pending end, keeps the up/unhealthy clocks, forgets old failures.
    fn track(&mut self, cfg: &ReconcilerConfig, t: u64) {
        // An end with nothing wanted (no longer assigned) needs no judgement.
        if let (Some(want), Some(end)) = (&self.want, self.pending_end.take()) {
            let policy = policy_of(want);
            self.judge_end(cfg, t, end, policy);
        }
        match self.alive().map(|o| &o.state) {
            Some(ReplicaState::Unhealthy) => {
                self.up_since_ms = None;
                self.unhealthy_since_ms.get_or_insert(t);
            }
            Some(_) => {
                self.unhealthy_since_ms = None;
                self.up_since_ms.get_or_insert(t);
            }
            None => {
                self.up_since_ms = None;
                self.unhealthy_since_ms = None;
            }
        }
        let has_history = self.consecutive_failures > 0 || self.crash_loop.is_some();
        if has_history
            && self
                .up_since_ms
                .is_some_and(|up| t.saturating_sub(up) >= cfg.backoff_reset_after_ms)
        {
            self.clear_history();
            self.last_failure = None;
        }
    }

    /// (state, detail) as reported; `first_desired` is whether any desired set arrived yet.
    fn status(
        &self,
        t: u64,
        missing: &[String],
        first_desired: bool,
    ) -> (ReportedState, Option<String>) {
        let Some(want) = &self.want else {
            let detail = if !first_desired {
                "found on this node; waiting for the first desired set"
            } else {
                "no longer assigned to this node; stopping"
            };
            let state = self
                .observed
                .as_ref()
                .map_or(ReportedState::Stopped, |o| map_state(&o.state));
            return (state, Some(detail.to_owned()));
        };
        match &self.done {
            Some(Done::Failed(r)) => return (ReportedState::Failed, Some(r.clone())),
            Some(Done::Completed(r)) => return (ReportedState::Stopped, Some(r.clone())),
            None => {}
        }
        if let Some(r) = &self.crash_loop {
            return (ReportedState::Failed, Some(r.clone()));
        }
        let waiting_for = || format!("waiting for healthy roles: {}", missing.join(", "));
        if let Some(o) = self.alive() {
            let state = map_state(&o.state);
            let detail = if o.workload_hash != want.hash {
                Some(match self.op {
                    Some(_) => "replacing its workload".to_owned(),
                    None if !missing.is_empty() => {
                        format!(
                            "runs its previous workload; the new one is {}",
                            waiting_for()
                        )
                    }
                    None => "runs its previous workload".to_owned(),
                })
            } else {
                match self.op {
                    Some(OpKind::Restart) => Some("restarting to pick up new endpoints".to_owned()),
                    Some(OpKind::Stop) => self.last_failure.clone(),
                    _ => None,
                }
            };
            return (state, detail);
        }
        if matches!(self.op, Some(OpKind::Start | OpKind::Restart)) {
            return (ReportedState::Starting, None);
        }
        if !missing.is_empty() {
            return (ReportedState::Waiting, Some(waiting_for()));
        }
        if t < self.next_start_ms {
            return (ReportedState::Waiting, self.last_failure.clone());
        }
        if let Some(e) = &self.stop_error {
            return (ReportedState::Waiting, Some(e.clone()));
        }
        (ReportedState::Waiting, None)
    }
}

/// The reconciler's state machine. See the module doc.
#[derive(Debug)]
pub struct Machine {
    cfg: ReconcilerConfig,
    colony: String,
    version: Option<Version>,
    listed: bool,
    healthy_roles: BTreeSet<String>,
    endpoints: BTreeMap<String, Vec<String>>,
    slots: BTreeMap<ReplicaKey, Slot>,
    /// The replica being restarted for new endpoints (one at a time).
    roll: Option<ReplicaKey>,
    reports: VecDeque<ReplicaReport>,
}

impl Machine {
    pub fn new(colony: &str, cfg: ReconcilerConfig) -> Result<Machine, ReconcileError> {
        cfg.validate()?;
        check_colony(colony)?;
        Ok(Machine {
            cfg,
            colony: colony.to_owned(),
            version: None,
            listed: false,
            healthy_roles: BTreeSet::new(),
            endpoints: BTreeMap::new(),
            slots: BTreeMap::new(),
            roll: None,
            reports: VecDeque::new(),
        })
    }

    pub fn colony(&self) -> &str {
        &self.colony
    }

    /// The version of the desired set in force (`None` before the first).
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// The endpoint map in force (each list sorted, without duplicates).
    pub fn endpoints(&self) -> &BTreeMap<String, Vec<String>> {
        &self.endpoints
    }

    /// How many actions are in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.values().filter(|s| s.op.is_some()).count()
    }

    /// A newer (or the same) committed desired set. Its healthy roles and endpoints replace the
    /// current ones. A refused set changes nothing.
    pub fn set_desired(&mut self, desired: Desired, _now: Now) -> Result<(), ReconcileError> {
        validate_desired(&desired, &self.colony, self.version)?;
        self.version = Some(desired.version);
        self.healthy_roles = desired.healthy_roles;
        self.endpoints = normalize(desired.endpoints);
        let mut wanted = BTreeMap::new();
        for spec in desired.replicas {
            let key = ReplicaKey::new(&self.colony, &spec.role, spec.replica);
            let gpu_ids: Vec<u32> = spec
                .gpus
                .iter()
                .take(usize::from(spec.workload.gpus))
                .map(|g| u32::from(*g))
                .collect();
            let hash = start_hash(&spec.workload, &gpu_ids);
            wanted.insert(
                key,
                Want {
                    spec,
                    gpu_ids,
                    hash,
                },
            );
        }
        for (key, slot) in &mut self.slots {
            if !wanted.contains_key(key) {
                slot.want = None;
            }
        }
        for (key, want) in wanted {
            let slot = self.slots.entry(key).or_default();
            if slot.want.as_ref().map(|w| w.hash) != Some(want.hash) {
                slot.reset_policy();
                slot.restarts = slot
                    .observed
                    .as_ref()
                    .filter(|o| o.workload_hash == want.hash)
                    .map_or(0, |o| o.restarts);
            }
            slot.want = Some(want);
        }
        Ok(())
    }

    /// Roles with at least one healthy replica colony-wide.
    pub fn set_healthy_roles(&mut self, roles: BTreeSet<String>) -> Result<(), ReconcileError> {
        validate_healthy_roles(&roles)?;
        self.healthy_roles = roles;
        Ok(())
    }

    /// The endpoints of every role.
    pub fn set_endpoints(
        &mut self,
        endpoints: BTreeMap<String, Vec<String>>,
    ) -> Result<(), ReconcileError> {
        validate_endpoints(&endpoints)?;
        self.endpoints = normalize(endpoints);
        Ok(())
    }

    /// A full listing of the runtime (at start, after a resync or a lag). Replicas of other
    /// colonies are ignored.
    pub fn listed(&mut self, list: Vec<Observed>, _now: Now) {
        self.listed = true;
        let mut present = BTreeSet::new();
        for o in list {
            if o.key.colony == self.colony {
                present.insert(o.key.clone());
                self.apply_observed(o);
            }
        }
        for (key, slot) in &mut self.slots {
            if !present.contains(key)
                && let Some(instance) = slot.observed.as_ref().map(|o| o.instance.clone())
            {
                slot.on_removed(&instance);
            }
        }
    }

    /// Whether the runtime has been listed at least once (nothing is done before).
    pub fn is_listed(&self) -> bool {
        self.listed
    }

    /// A runtime event. Returns true when the runtime must be listed again (a resync).
    pub fn on_event(&mut self, event: RuntimeEvent, _now: Now) -> bool {
        match event {
            RuntimeEvent::Changed(o) => {
                if o.key.colony == self.colony {
                    self.apply_observed(o);
                }
                false
            }
            RuntimeEvent::Removed { key, instance } => {
                if let Some(slot) = self.slots.get_mut(&key) {
                    slot.on_removed(&instance);
                }
                false
            }
            RuntimeEvent::Resync => true,
        }
    }

    fn apply_observed(&mut self, o: Observed) {
        if !self.slots.contains_key(&o.key) && self.slots.len() >= MAX_SLOTS {
            tracing::warn!(replica = %o.key, "reconciler tracks too many replicas; ignoring one");
            return;
        }
        self.slots.entry(o.key.clone()).or_default().observe(o);
    }

    /// The result of an action [`Machine::step`] returned.
    pub fn op_done(&mut self, key: &ReplicaKey, result: OpResult, now: Now) {
        let t = now.mono_ms;
        let cfg = &self.cfg;
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        let kind = slot.op.take();
        match result {
            OpResult::Started(Ok(o)) => {
                let seen = slot.observed.as_ref().map(|c| c.instance.as_str());
                if o.key == *key && seen != Some(o.instance.as_str()) {
                    slot.observe(o);
                }
                // Whatever the observations say, a replica is not started again within the
                // shortest backoff (a guard against a start the runtime answers as a no-op).
                slot.start_floor_ms = t.saturating_add(cfg.backoff_initial_ms);
            }
            OpResult::Started(Err(e)) => {
                if kind == Some(OpKind::Restart) {
                    // Differs from every real environment (which names the colony): the
                    // restart for new endpoints is still due.
                    slot.started_env = Some(BTreeMap::new());
                }
                if e.permanent {
                    slot.done = Some(Done::Failed(format!("cannot start here: {}", e.message)));
                } else if let Some(want) = &slot.want {
                    let policy = policy_of(want);
                    slot.record_failure(cfg, t, format!("start failed: {}", e.message), policy);
                }
            }
            OpResult::Stopped(Ok(())) => {
                slot.stop_error = None;
                if let Some(cur) = slot.observed.take() {
                    slot.retire(cur.instance);
                }
            }
            OpResult::Stopped(Err(e)) => {
                slot.stop_retry_ms = t.saturating_add(cfg.stop_retry_ms);
                slot.stop_error = Some(format!(
                    "stop failed: {}; retrying in {}",
                    e.message,
                    fmt_ms(cfg.stop_retry_ms)
                ));
                tracing::warn!(replica = %key, error = %e.message, "stop failed; will retry");
            }
        }
    }

    fn env_for(
        colony: &str,
        endpoints: &BTreeMap<String, Vec<String>>,
        spec: &DesiredReplica,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::from([
            ("AWARE_COLONY".to_owned(), colony.to_owned()),
            ("AWARE_ROLE".to_owned(), spec.role.clone()),
            ("AWARE_REPLICA".to_owned(), spec.replica.to_string()),
        ]);
        let deps: BTreeSet<&String> = spec.depends_on.iter().collect();
        for dep in deps {
            let value = endpoints.get(dep).map(|l| l.join(",")).unwrap_or_default();
            env.insert(endpoints_env_var(dep), value);
        }
        env
    }

    /// The environment a replica gets on top of its workload's (for `endpoints` and tests).
    pub fn env_of(&self, spec: &DesiredReplica) -> BTreeMap<String, String> {
        Machine::env_for(&self.colony, &self.endpoints, spec)
    }

    fn local_healthy(&self) -> BTreeSet<String> {
        self.slots
            .iter()
            .filter(|(_, s)| s.healthy_as_wanted())
            .map(|(k, _)| k.role.clone())
            .collect()
    }

    fn missing_deps(
        healthy: &BTreeSet<String>,
        local: &BTreeSet<String>,
        spec: &DesiredReplica,
    ) -> Vec<String> {
        let deps: BTreeSet<&String> = spec.depends_on.iter().collect();
        deps.into_iter()
            .filter(|d| !healthy.contains(*d) && !local.contains(*d))
            .cloned()
            .collect()
    }

    /// Decides what to do now. Does nothing before the runtime was listed and the first desired
    /// set arrived.
    pub fn step(&mut self, now: Now) -> Vec<Action> {
        let mut actions = Vec::new();
        if !self.listed || self.version.is_none() {
            return actions;
        }
        let t = now.mono_ms;
        for slot in self.slots.values_mut() {
            slot.track(&self.cfg, t);
            if slot.want.is_none() {
                slot.pending_end = None;
            }
        }
        if let Some(k) = &self.roll {
            let over = self.slots.get(k).is_none_or(|s| {
                s.want.is_none() || s.done.is_some() || (s.op.is_none() && s.healthy_as_wanted())
            });
            if over {
                self.roll = None;
            }
        }
        let local = self.local_healthy();
        let Machine {
            cfg,
            colony,
            healthy_roles,
            endpoints,
            slots,
            roll,
            ..
        } = self;
        for (key, slot) in slots.iter_mut() {
            if slot.op.is_some() {
                continue;
            }
            let Some(want) = &slot.want else {
                if let Some(o) = &slot.observed
                    && t >= slot.stop_retry_ms
                {
                    slot.quiet = Some(o.instance.clone());
                    slot.op = Some(OpKind::Stop);
                    actions.push(Action::Stop(key.clone()));
                }
                continue;
            };
            if slot.done.is_some() {
                continue;
            }
            let deps_ok = Machine::missing_deps(healthy_roles, &local, &want.spec).is_empty();
            let env = Machine::env_for(colony, endpoints, &want.spec);
            let spec = || StartSpec {
                key: key.clone(),
                workload: want.spec.workload.clone(),
                extra_env: env.clone(),
                gpu_ids: want.gpu_ids.clone(),
                workload_hash: want.hash,
            };
            let adopted = slot.started_env.is_none()
                && slot.alive().is_some_and(|o| o.workload_hash == want.hash);
            if adopted {
                // How it was started is not recorded anywhere: assume the current values. Its
                // restart count is the runtime's (when it was listed after the desired set).
                slot.started_env = Some(env.clone());
                let counted = slot.alive().map_or(0, |o| o.restarts);
                slot.restarts = slot.restarts.max(counted);
            }
            match slot.alive() {
                Some(o) if o.workload_hash != want.hash => {
                    if deps_ok {
                        actions.push(Action::Start(spec()));
                        slot.quiet = Some(o.instance.clone());
                        slot.op = Some(OpKind::Start);
                        slot.started_env = Some(env);
                    }
                }
                Some(o) => {
                    let unhealthy_for = slot
                        .unhealthy_since_ms
                        .map_or(0, |since| t.saturating_sub(since));
                    let restart_unhealthy = o.state == ReplicaState::Unhealthy
                        && policy_of(want) != RestartPolicy::Never
                        && unhealthy_for >= cfg.unhealthy_restart_after_ms;
                    let stale_env = want.spec.on_endpoints_change == EndpointsChange::Restart
                        && slot.started_env.as_ref() != Some(&env);
                    if restart_unhealthy {
                        let instance = o.instance.clone();
                        let policy = policy_of(want);
                        let what = format!("unhealthy for {}", fmt_ms(unhealthy_for));
                        slot.record_failure(cfg, t, what, policy);
                        if slot.done.is_none() {
                            slot.quiet = Some(instance);
                            slot.op = Some(OpKind::Stop);
                            actions.push(Action::Stop(key.clone()));
                        }
                    } else if stale_env && roll.is_none() && deps_ok && t >= slot.next_start_ms {
                        actions.push(Action::Restart(spec()));
                        slot.quiet = Some(o.instance.clone());
                        slot.op = Some(OpKind::Restart);
                        slot.started_env = Some(env);
                        *roll = Some(key.clone());
                    }
                }
                None => {
                    if deps_ok && t >= slot.next_start_ms.max(slot.start_floor_ms) {
                        actions.push(Action::Start(spec()));
                        if slot.restart_due {
                            slot.restarts = slot.restarts.saturating_add(1);
                            slot.restart_due = false;
                        }
                        slot.op = Some(OpKind::Start);
                        slot.started_env = Some(env);
                    }
                }
            }
        }
        self.collect_reports(now);
        actions
    }

    fn push_report(&mut self, report: ReplicaReport) {
        if let Some(old) = self
            .reports
            .iter_mut()
            .find(|r| r.role == report.role && r.replica == report.replica)
        {
            *old = report;
            return;
        }
        if self.reports.len() >= MAX_REPORT_BACKLOG {
            self.reports.pop_front();
        }
        self.reports.push_back(report);
    }

    fn collect_reports(&mut self, now: Now) {
        let t = now.mono_ms;
        let local = self.local_healthy();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (key, slot) in &mut self.slots {
            if slot.want.is_none() {
                if slot.observed.is_none() && slot.op.is_none() {
                    gone.push(key.clone());
                    if slot.reported.is_some() {
                        out.push(ReplicaReport {
                            role: key.role.clone(),
                            replica: key.replica,
                            state: ReportedState::Stopped,
                            restarts: slot.restarts,
                            detail: Some("no longer assigned to this node".to_owned()),
                            at_unix_ms: now.unix_ms,
                        });
                    }
                }
                continue;
            }
            let missing = slot
                .want
                .as_ref()
                .map(|w| Machine::missing_deps(&self.healthy_roles, &local, &w.spec))
                .unwrap_or_default();
            let (state, detail) = slot.status(t, &missing, true);
            let now_reported = (state, detail, slot.restarts);
            if slot.reported.as_ref() != Some(&now_reported) {
                out.push(ReplicaReport {
                    role: key.role.clone(),
                    replica: key.replica,
                    state: now_reported.0,
                    restarts: now_reported.2,
                    detail: now_reported.1.clone(),
                    at_unix_ms: now.unix_ms,
                });
                slot.reported = Some(now_reported);
            }
        }
        for key in gone {
            self.slots.remove(&key);
        }
        for r in out {
            self.push_report(r);
        }
    }

    /// The next report for the driver, oldest first (one per replica: a newer one replaces an
    /// unsent older one).
    pub fn poll_report(&mut self) -> Option<ReplicaReport> {
        self.reports.pop_front()
    }

    pub fn has_reports(&self) -> bool {
        !self.reports.is_empty()
    }

    /// The next time (monotonic ms, after `now`) at which [`Machine::step`] may act without any
    /// other input.
    pub fn poll_timeout(&self, now: Now) -> Option<u64> {
        let t = now.mono_ms;
        let cfg = &self.cfg;
        let mut next: Option<u64> = None;
        let mut consider = |at: u64| {
            if at > t {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        self.version?; // nothing is due before the first desired set
        for slot in self.slots.values() {
            if (slot.consecutive_failures > 0 || slot.crash_loop.is_some())
                && let Some(up) = slot.up_since_ms
            {
                consider(up.saturating_add(cfg.backoff_reset_after_ms));
            }
            if slot.op.is_some() {
                continue;
            }
            let Some(want) = &slot.want else {
                if slot.observed.is_some() {
                    consider(slot.stop_retry_ms);
                }
                continue;
            };
            if slot.done.is_some() {
                continue;
            }
            consider(slot.next_start_ms.max(slot.start_floor_ms));
            consider(slot.next_start_ms);
            if let Some(since) = slot.unhealthy_since_ms
                && policy_of(want) != RestartPolicy::Never
            {
                consider(since.saturating_add(cfg.unhealthy_restart_after_ms));
            }
        }
        next
    }

    /// Every tracked replica, for `status`.
    pub fn snapshot(&self, now: Now) -> Vec<ReplicaStatus> {
        let local = self.local_healthy();
        self.slots
            .iter()
            .map(|(key, slot)| {
                let missing = slot
                    .want
                    .as_ref()
                    .map(|w| Machine::missing_deps(&self.healthy_roles, &local, &w.spec))
                    .unwrap_or_default();
                let (state, detail) = slot.status(now.mono_ms, &missing, self.version.is_some());
                let alive = slot.alive();
                ReplicaStatus {
                    role: key.role.clone(),
                    replica: key.replica,
                    state,
                    detail,
                    restarts: slot.restarts,
                    desired: slot.want.is_some(),
                    instance: slot.observed.as_ref().map(|o| o.instance.clone()),
                    pid: alive.and_then(|o| o.pid),
                    started_at_unix_ms: slot.observed.as_ref().map_or(0, |o| o.started_at_unix_ms),
                }
            })
            .collect()
    }
}

/// Sorts each endpoint list and drops duplicates, so that an order change is no change.
fn normalize(mut map: BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    for list in map.values_mut() {
        list.sort();
        list.dedup();
    }
    map
}
