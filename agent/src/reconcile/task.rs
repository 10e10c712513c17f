//! The reconciler task: one tokio task owns the [`Machine`] (no lock around it) and wakes on
//! exactly four things: a new input from the [`ReconcilerHandle`] (one `watch` channel: only
//! the newest desired set, healthy roles and endpoints matter), a runtime event (subscribed
//! before the first listing; a lag or a `Resync` drains the stream and lists again), the result
//! of an action, and the machine's next deadline (backoff, stable reset, unhealthy restart).
//! Actions run as their own tasks so that a slow start (an image pull) or stop (a grace period)
//! never blocks the loop; the machine keeps at most one in flight per replica. Reports go to the
//! driver on a bounded channel ([`REPORT_QUEUE`]); a snapshot for `status` is published on a
//! `watch` channel after every wake.

use super::machine::{MAX_SLOTS, Machine, Now, OpError, OpResult};
use super::{
    Action, Desired, REPORT_QUEUE, ReconcileError, ReconcilerConfig, ReplicaReport, ReplicaStatus,
    ReportedState, check_colony, validate_desired, validate_endpoints, validate_healthy_roles,
};
use crate::runtime::{ReplicaKey, Runtime, unix_now_ms};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// First delay before listing the runtime again after a failed listing.
pub const LIST_RETRY_INITIAL_MS: u64 = 500;
/// Longest delay between two listing attempts.
pub const LIST_RETRY_MAX_MS: u64 = 30_000;
/// How long a shutdown waits for actions in flight (an image pull may take longer; it then
/// finishes on its own and a later agent adopts what it started).
pub const SHUTDOWN_OPS_WAIT_MS: u64 = 30_000;
/// Capacity of the channel that brings back action results (at most one action per replica is
/// in flight, so senders never wait).
const OPS_QUEUE: usize = MAX_SLOTS;

/// The inputs, as the newest values given to the handle.
#[derive(Debug, Default)]
struct Inputs {
    desired: Option<Arc<Desired>>,
    desired_gen: u64,
    healthy_roles: Arc<BTreeSet<String>>,
    healthy_gen: u64,
    endpoints: Arc<BTreeMap<String, Vec<String>>>,
    endpoints_gen: u64,
}

#[derive(Debug)]
struct Shutdown {
    stop_workloads: bool,
    done: oneshot::Sender<()>,
}

/// Starts the reconciler task.
#[derive(Debug)]
pub struct Reconciler;

impl Reconciler {
    /// Spawns the reconciler of `colony` over `runtime` (inside a tokio runtime). It lists the
    /// runtime at once, adopts what matches, and does nothing else until the first
    /// [`ReconcilerHandle::set_desired`]. Returns the handle and the report channel.
    pub fn spawn(
        runtime: Arc<dyn Runtime>,
        colony: &str,
        cfg: ReconcilerConfig,
    ) -> Result<(ReconcilerHandle, mpsc::Receiver<ReplicaReport>), ReconcileError> {
        check_colony(colony)?;
        let machine = Machine::new(colony, cfg)?;
        let (inputs_tx, inputs_rx) = watch::channel(Inputs::default());
        let (snap_tx, snap_rx) = watch::channel(Arc::new(Vec::new()));
        let (reports_tx, reports_rx) = mpsc::channel(REPORT_QUEUE);
        let (shutdown_tx, shutdown_rx) = mpsc::channel(1);
        // Subscribed before the task lists, so that no change between the two is missed.
        let events = runtime.subscribe();
        let task = Task {
            runtime,
            machine,
            origin: Instant::now(),
            inputs: inputs_rx,
            snapshot: snap_tx,
            reports: reports_tx,
            reports_open: true,
            shutdown: shutdown_rx,
            events,
        };
        tokio::spawn(task.run());
        let handle = ReconcilerHandle {
            colony: Arc::from(colony),
            inputs: Arc::new(inputs_tx),
            snapshot: snap_rx,
            shutdown: shutdown_tx,
        };
        Ok((handle, reports_rx))
    }
}

/// The driver's side of a running reconciler. Cheap to clone. When every clone is dropped the
/// task ends and leaves the workloads running (as [`ReconcilerHandle::shutdown`] with
/// `stop_workloads: false`).
#[derive(Clone, Debug)]
pub struct ReconcilerHandle {
    colony: Arc<str>,
    inputs: Arc<watch::Sender<Inputs>>,
    snapshot: watch::Receiver<Arc<Vec<ReplicaStatus>>>,
    shutdown: mpsc::Sender<Shutdown>,
}

impl ReconcilerHandle {
    /// Hands over the newest committed desired set (its healthy roles and endpoints replace the
    /// current ones). An older version than the current one, another colony or a malformed set
    /// is refused with the reason, and nothing changes.
    pub fn set_desired(&self, desired: Desired) -> Result<(), ReconcileError> {
        if self.inputs.is_closed() {
            return Err(ReconcileError::Stopped);
        }
        let mut result = Ok(());
        self.inputs.send_if_modified(|i| {
            let current = i.desired.as_ref().map(|d| d.version);
            if let Err(e) = validate_desired(&desired, &self.colony, current) {
                result = Err(e);
                return false;
            }
            i.healthy_roles = Arc::new(desired.healthy_roles.clone());
            i.healthy_gen += 1;
            i.endpoints = Arc::new(desired.endpoints.clone());
            i.endpoints_gen += 1;
            i.desired = Some(Arc::new(desired));
            i.desired_gen += 1;
            true
        });
        result
    }

    /// The roles with at least one healthy replica colony-wide.
    pub fn set_healthy_roles(&self, roles: BTreeSet<String>) -> Result<(), ReconcileError> {
        validate_healthy_roles(&roles)?;
        if self.inputs.is_closed() {
            return Err(ReconcileError::Stopped);
        }
        self.inputs.send_modify(|i| {
            i.healthy_roles = Arc::new(roles);
            i.healthy_gen += 1;
        });
        Ok(())
    }

    /// The endpoints of every role (role → `host:port` list).
    pub fn set_endpoints(
        &self,
        endpoints: BTreeMap<String, Vec<String>>,
    ) -> Result<(), ReconcileError> {
        validate_endpoints(&endpoints)?;
        if self.inputs.is_closed() {
            return Err(ReconcileError::Stopped);
        }
        self.inputs.send_modify(|i| {
            i.endpoints = Arc::new(endpoints);
            i.endpoints_gen += 1;
        });
        Ok(())
    }

    /// The endpoints of `role` as workloads see them (sorted, no duplicates), for
    /// `aware-agent endpoints ROLE`.
    pub fn endpoints(&self, role: &str) -> Vec<String> {
        let mut list = self
            .inputs
            .borrow()
            .endpoints
            .get(role)
            .cloned()
            .unwrap_or_default();
        list.sort();
        list.dedup();
        list
    }

    /// The whole endpoint map in force.
    pub fn endpoints_map(&self) -> BTreeMap<String, Vec<String>> {
        let map = self.inputs.borrow().endpoints.clone();
        map.keys()
            .map(|role| (role.clone(), self.endpoints(role)))
            .collect()
    }

    /// Every replica the reconciler tracks, as of its last wake.
    pub fn snapshot(&self) -> Vec<ReplicaStatus> {
        self.snapshot.borrow().as_ref().clone()
    }

    /// The snapshot channel, to await changes.
    pub fn watch_snapshot(&self) -> watch::Receiver<Arc<Vec<ReplicaStatus>>> {
        self.snapshot.clone()
    }

    /// Ends the reconciler. With `stop_workloads` (the node leaves the colony) every replica of
    /// this colony on this node is stopped first; without (an agent upgrade or restart) they keep
    /// running for the next agent to adopt. Waits for actions in flight (at most
    /// `SHUTDOWN_OPS_WAIT_MS`) and, when stopping, for the stops.
    pub async fn shutdown(&self, stop_workloads: bool) {
        let (done, wait) = oneshot::channel();
        let cmd = Shutdown {
            stop_workloads,
            done,
        };
        if self.shutdown.send(cmd).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Why the task woke up.
enum Wake {
    Shutdown(Option<Shutdown>),
    Op(ReplicaKey, OpResult),
    Event(Result<crate::runtime::RuntimeEvent, RecvError>),
    /// Whether the inputs are still open.
    Inputs(bool),
    Timer,
}

struct Task {
    runtime: Arc<dyn Runtime>,
    machine: Machine,
    origin: Instant,
    inputs: watch::Receiver<Inputs>,
    snapshot: watch::Sender<Arc<Vec<ReplicaStatus>>>,
    reports: mpsc::Sender<ReplicaReport>,
    reports_open: bool,
    shutdown: mpsc::Receiver<Shutdown>,
    events: tokio::sync::broadcast::Receiver<crate::runtime::RuntimeEvent>,
}

impl Task {
    fn now(&self) -> Now {
        let mono_ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        Now {
            mono_ms,
            unix_ms: unix_now_ms(),
        }
    }

    async fn run(mut self) {
        let (ops_tx, mut ops_rx) = mpsc::channel::<(ReplicaKey, OpResult)>(OPS_QUEUE);
        let mut relist_at = Some(Instant::now());
        let mut list_retry_ms = LIST_RETRY_INITIAL_MS;
        let mut events_open = true;
        let mut applied = (0u64, 0u64, 0u64);
        loop {
            if relist_at.is_some_and(|at| at <= Instant::now()) {
                relist_at = self.relist(&mut list_retry_ms).await;
            }
            let now = self.now();
            for action in self.machine.step(now) {
                spawn_action(self.runtime.clone(), action, ops_tx.clone());
            }
            if !self.reports_open {
                while self.machine.poll_report().is_some() {}
            }
            self.publish(now);
            let deadline = self
                .machine
                .poll_timeout(now)
                .map(|ms| self.origin + Duration::from_millis(ms));
            let wake = match (deadline, relist_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wake = tokio::select! {
                biased;
                cmd = self.shutdown.recv() => Wake::Shutdown(cmd),
                Some((key, result)) = ops_rx.recv() => Wake::Op(key, result),
                event = self.events.recv(), if events_open => Wake::Event(event),
                changed = self.inputs.changed() => Wake::Inputs(changed.is_ok()),
                permit = self.reports.reserve(), if self.reports_open && self.machine.has_reports() => {
                    match permit {
                        Ok(permit) => {
                            if let Some(report) = self.machine.poll_report() {
                                permit.send(report);
                            }
                        }
                        Err(_) => self.reports_open = false,
                    }
                    Wake::Timer
                }
                () = sleep_until_opt(wake) => Wake::Timer,
            };
            match wake {
                Wake::Shutdown(cmd) => {
                    let stop = cmd.as_ref().is_some_and(|c| c.stop_workloads);
                    self.finish(stop, &mut ops_rx).await;
                    // Gone before the caller hears so: a later input is refused.
                    drop(self);
                    if let Some(cmd) = cmd {
                        let _ = cmd.done.send(());
                    }
                    return;
                }
                Wake::Op(key, result) => {
                    let now = self.now();
                    self.machine.op_done(&key, result, now);
                }
                Wake::Event(Ok(event)) => {
                    let now = self.now();
                    if self.machine.on_event(event, now) {
                        relist_at = Some(Instant::now());
                    }
                }
                Wake::Event(Err(RecvError::Lagged(missed))) => {
                    tracing::warn!(missed, "reconciler lagged behind runtime events; listing");
                    relist_at = Some(Instant::now());
                }
                Wake::Event(Err(RecvError::Closed)) => events_open = false,
                Wake::Inputs(false) => {
                    // Every handle is gone: end, leaving the workloads running.
                    self.finish(false, &mut ops_rx).await;
                    return;
                }
                Wake::Inputs(true) => self.apply_inputs(&mut applied),
                Wake::Timer => {}
            }
        }
    }

    /// Drains the event stream (what it holds is older than the listing), then lists. Returns
    /// when to list again (`None`: done).
    async fn relist(&mut self, retry_ms: &mut u64) -> Option<Instant> {
        for _ in 0..=crate::runtime::EVENT_CAPACITY {
            match self.events.try_recv() {
                Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        match self.runtime.list().await {
            Ok(list) => {
                let now = self.now();
                self.machine.listed(list, now);
                *retry_ms = LIST_RETRY_INITIAL_MS;
                None
            }
            Err(e) => {
                tracing::warn!(runtime = self.runtime.name(), error = %e,
                    retry_ms = *retry_ms, "reconciler cannot list the runtime; retrying");
                let at = Instant::now() + Duration::from_millis(*retry_ms);
                *retry_ms = (*retry_ms).saturating_mul(2).min(LIST_RETRY_MAX_MS);
                Some(at)
            }
        }
    }

    fn apply_inputs(&mut self, applied: &mut (u64, u64, u64)) {
        let (desired, healthy, endpoints, gens) = {
            let i = self.inputs.borrow_and_update();
            (
                i.desired.clone(),
                i.healthy_roles.clone(),
                i.endpoints.clone(),
                (i.desired_gen, i.healthy_gen, i.endpoints_gen),
            )
        };
        let now = self.now();
        if gens.0 != applied.0
            && let Some(d) = desired
            && let Err(e) = self.machine.set_desired(d.as_ref().clone(), now)
        {
            tracing::warn!(error = %e, "reconciler refused a desired set");
        }
        if (gens.0 != applied.0 || gens.1 != applied.1)
            && let Err(e) = self.machine.set_healthy_roles(healthy.as_ref().clone())
        {
            tracing::warn!(error = %e, "reconciler refused healthy roles");
        }
        if (gens.0 != applied.0 || gens.2 != applied.2)
            && let Err(e) = self.machine.set_endpoints(endpoints.as_ref().clone())
        {
            tracing::warn!(error = %e, "reconciler refused endpoints");
        }
        *applied = gens;
    }

    fn publish(&self, now: Now) {
        let snap = self.machine.snapshot(now);
        self.snapshot.send_if_modified(|cur| {
            if **cur == snap {
                false
            } else {
                *cur = Arc::new(snap);
                true
            }
        });
    }

    /// Waits for actions in flight, then stops the colony's replicas if asked, and flushes the
    /// reports that fit.
    async fn finish(
        &mut self,
        stop_workloads: bool,
        ops: &mut mpsc::Receiver<(ReplicaKey, OpResult)>,
    ) {
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_OPS_WAIT_MS);
        while self.machine.in_flight() > 0 {
            match tokio::time::timeout_at(deadline, ops.recv()).await {
                Ok(Some((key, result))) => {
                    let now = self.now();
                    self.machine.op_done(&key, result, now);
                }
                _ => {
                    tracing::warn!(
                        in_flight = self.machine.in_flight(),
                        "reconciler shutdown: actions still in flight; not waiting longer"
                    );
                    break;
                }
            }
        }
        if stop_workloads {
            match self.runtime.list().await {
                Ok(list) => {
                    for o in list
                        .into_iter()
                        .filter(|o| o.key.colony == self.machine.colony())
                    {
                        let detail = match self.runtime.stop(&o.key).await {
                            Ok(()) => "stopped: this node leaves the colony".to_owned(),
                            Err(e) => {
                                tracing::warn!(replica = %o.key, error = %e, "stop failed");
                                format!("stop failed while leaving the colony: {e}")
                            }
                        };
                        let report = ReplicaReport {
                            role: o.key.role.clone(),
                            replica: o.key.replica,
                            state: ReportedState::Stopped,
                            restarts: o.restarts,
                            detail: Some(detail),
                            at_unix_ms: unix_now_ms(),
                        };
                        let _ = self.reports.try_send(report);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reconciler shutdown: cannot list replicas to stop")
                }
            }
        }
        while let Some(report) = self.machine.poll_report() {
            if self.reports.try_send(report).is_err() {
                break;
            }
        }
        let now = self.now();
        if stop_workloads {
            self.snapshot.send_replace(Arc::new(Vec::new()));
        } else {
            self.publish(now);
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Carries out one action as its own task and sends its result back.
fn spawn_action(
    runtime: Arc<dyn Runtime>,
    action: Action,
    done: mpsc::Sender<(ReplicaKey, OpResult)>,
) {
    tokio::spawn(async move {
        let key = action.key().clone();
        let result = execute(runtime.as_ref(), action).await;
        let _ = done.send((key, result)).await;
    });
}

/// Carries out one action on the runtime (a `Restart` is a stop, then a start).
pub(crate) async fn execute(runtime: &dyn Runtime, action: Action) -> OpResult {
    let err = |e: crate::runtime::RuntimeError| OpError::from_runtime(&e);
    match action {
        Action::Start(spec) => OpResult::Started(runtime.start(&spec).await.map_err(err)),
        Action::Restart(spec) => match runtime.stop(&spec.key).await {
            Ok(()) => OpResult::Started(runtime.start(&spec).await.map_err(err)),
            Err(e) => OpResult::Started(Err(err(e))),
        },
        Action::Stop(key) => OpResult::Stopped(runtime.stop(&key).await.map_err(err)),
    }
}
