//! The reconciler's logic against an in-memory runtime ([`Fake`], which implements
//! [`Runtime`] and can be scripted to fail starts, exit or change health). Most tests drive the
//! pure [`Machine`] with explicit time through [`Harness`], which carries out actions with the
//! same code as the task and delivers each action's runtime events *before* its result (the
//! order the real task may see), so they are deterministic. The last tests run the tokio task
//! itself (reports channel, adoption, shutdown, resync) and wait for conditions with deadlines.

#![allow(clippy::unwrap_used)]

use super::machine::{Machine, Now};
use super::task::execute;
use super::*;
use crate::runtime::{
    Observed, ReplicaKey, ReplicaState, Runtime, RuntimeError, RuntimeEvent, StartSpec,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_core::spec::{HealthCheck, Probe, RestartPolicy, Workload};
use swarm_core::wire::Version;
use tokio::sync::broadcast;

const COLONY: &str = "hive";
const SEC: u64 = 1_000;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Start {
        key: ReplicaKey,
        hash: u64,
        env: BTreeMap<String, String>,
        gpus: Vec<u32>,
    },
    Stop(ReplicaKey),
}

#[derive(Default)]
struct FakeState {
    replicas: BTreeMap<ReplicaKey, Observed>,
    next_instance: u64,
    calls: Vec<Call>,
    start_errors: BTreeMap<ReplicaKey, VecDeque<RuntimeError>>,
    /// Replicas whose next instance exits with this code right after starting.
    exit_on_start: BTreeMap<ReplicaKey, i32>,
    list_fails: bool,
    lists: usize,
}

/// An in-memory runtime with the trait's semantics (idempotent start on the same hash,
/// replacement on another, a restart count, events for every change).
struct Fake {
    state: Mutex<FakeState>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl Fake {
    fn new() -> Arc<Fake> {
        Arc::new(Fake {
            state: Mutex::new(FakeState::default()),
            events: broadcast::channel(crate::runtime::EVENT_CAPACITY).0,
        })
    }

    fn st(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    fn emit(&self, e: RuntimeEvent) {
        let _ = self.events.send(e);
    }

    /// A replica left running by a previous agent (no event).
    fn preload(&self, key: &ReplicaKey, hash: u64, state: ReplicaState, restarts: u32) {
        let mut st = self.st();
        st.next_instance += 1;
        let o = Observed {
            key: key.clone(),
            state,
            restarts,
            workload_hash: hash,
            instance: format!("old-{}", st.next_instance),
            started_at_unix_ms: 1,
            pid: Some(1000),
            oom_killed: false,
        };
        st.replicas.insert(key.clone(), o);
    }

    /// Changes the current instance's state; `silent` skips the event.
    fn set(&self, key: &ReplicaKey, state: ReplicaState, silent: bool) {
        let o = {
            let mut st = self.st();
            let o = st.replicas.get_mut(key).unwrap();
            o.state = state;
            o.clone()
        };
        if !silent {
            self.emit(RuntimeEvent::Changed(o));
        }
    }

    fn exit(&self, key: &ReplicaKey, code: i32) {
        self.set(key, ReplicaState::Exited { code: Some(code) }, false);
    }

    fn calls(&self) -> Vec<Call> {
        self.st().calls.clone()
    }

    fn starts(&self, key: &ReplicaKey) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Start { key: k, .. } if k == key))
            .collect()
    }

    fn stops(&self, key: &ReplicaKey) -> usize {
        self.calls()
            .iter()
            .filter(|c| matches!(c, Call::Stop(k) if k == key))
            .count()
    }

    fn state_of(&self, key: &ReplicaKey) -> Option<ReplicaState> {
        self.st().replicas.get(key).map(|o| o.state.clone())
    }
}

#[async_trait]
impl Runtime for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn start(&self, spec: &StartSpec) -> Result<Observed, RuntimeError> {
        let key = &spec.key;
        let mut events = Vec::new();
        let result = {
            let mut st = self.st();
            st.calls.push(Call::Start {
                key: key.clone(),
                hash: spec.workload_hash,
                env: spec.extra_env.clone(),
                gpus: spec.gpu_ids.clone(),
            });
            if let Some(e) = st.start_errors.get_mut(key).and_then(VecDeque::pop_front) {
                return Err(e);
            }
            let restarts = match st.replicas.get(key) {
                Some(o) if o.state.is_alive() && o.workload_hash == spec.workload_hash => {
                    return Ok(o.clone());
                }
                Some(o) if o.state.is_alive() => {
                    events.push(RuntimeEvent::Removed {
                        key: key.clone(),
                        instance: o.instance.clone(),
                    });
                    0
                }
                Some(o) if o.workload_hash == spec.workload_hash => o.restarts + 1,
                _ => 0,
            };
            st.next_instance += 1;
            let state = if spec.workload.health.is_some() {
                ReplicaState::Starting
            } else {
                ReplicaState::Running
            };
            let o = Observed {
                key: key.clone(),
                state,
                restarts,
                workload_hash: spec.workload_hash,
                instance: format!("i-{}", st.next_instance),
                started_at_unix_ms: 1,
                pid: Some(2000),
                oom_killed: false,
            };
            events.push(RuntimeEvent::Changed(o.clone()));
            if let Some(code) = st.exit_on_start.remove(key) {
                let mut ended = o.clone();
                ended.state = ReplicaState::Exited { code: Some(code) };
                ended.pid = None;
                events.push(RuntimeEvent::Changed(ended.clone()));
                st.replicas.insert(key.clone(), ended);
            } else {
                st.replicas.insert(key.clone(), o.clone());
            }
            o
        };
        for e in events {
            self.emit(e);
        }
        Ok(result)
    }

    async fn stop(&self, key: &ReplicaKey) -> Result<(), RuntimeError> {
        let removed = {
            let mut st = self.st();
            st.calls.push(Call::Stop(key.clone()));
            st.replicas.remove(key)
        };
        if let Some(o) = removed {
            self.emit(RuntimeEvent::Removed {
                key: key.clone(),
                instance: o.instance,
            });
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Observed>, RuntimeError> {
        let mut st = self.st();
        st.lists += 1;
        if st.list_fails {
            return Err(RuntimeError::Unreachable {
                what: "fake".into(),
                detail: "scripted".into(),
            });
        }
        Ok(st.replicas.values().cloned().collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
}

/// Drives a [`Machine`] against a [`Fake`] in explicit time.
struct Harness {
    m: Machine,
    rt: Arc<Fake>,
    rx: broadcast::Receiver<RuntimeEvent>,
    now_ms: u64,
    reports: Vec<ReplicaReport>,
    /// (time, key) of every start action.
    started: Vec<(u64, ReplicaKey)>,
}

impl Harness {
    async fn new(rt: Arc<Fake>, cfg: ReconcilerConfig) -> Harness {
        let rx = rt.subscribe();
        let mut m = Machine::new(COLONY, cfg).unwrap();
        m.listed(rt.list().await.unwrap(), Now::at_ms(0));
        Harness {
            m,
            rt,
            rx,
            now_ms: 0,
            reports: Vec::new(),
            started: Vec::new(),
        }
    }

    async fn default(rt: Arc<Fake>) -> Harness {
        Harness::new(rt, ReconcilerConfig::default()).await
    }

    fn now(&self) -> Now {
        Now::at_ms(self.now_ms)
    }

    async fn drain_events(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            if self.m.on_event(e, self.now()) {
                let list = self.rt.list().await.unwrap();
                self.m.listed(list, self.now());
            }
        }
    }

    /// Steps and carries out actions until the machine has nothing more to do now.
    async fn settle(&mut self) {
        for _ in 0..1000 {
            self.drain_events().await;
            let actions = self.m.step(self.now());
            while let Some(r) = self.m.poll_report() {
                self.reports.push(r);
            }
            if actions.is_empty() {
                return;
            }
            for a in actions {
                let key = a.key().clone();
                if matches!(a, Action::Start(_) | Action::Restart(_)) {
                    self.started.push((self.now_ms, key.clone()));
                }
                let result = execute(self.rt.as_ref(), a).await;
                // Events first, then the result: the order that tests the machine's guards.
                self.drain_events().await;
                self.m.op_done(&key, result, self.now());
            }
        }
        panic!("the machine never settles");
    }

    /// Moves time forward by `ms`, stopping at every deadline on the way.
    async fn advance(&mut self, ms: u64) {
        let target = self.now_ms + ms;
        self.settle().await;
        while let Some(at) = self.m.poll_timeout(self.now()).filter(|at| *at <= target) {
            self.now_ms = at;
            self.settle().await;
        }
        self.now_ms = target;
        self.settle().await;
    }

    async fn desire(&mut self, d: Desired) {
        self.m.set_desired(d, self.now()).unwrap();
        self.settle().await;
    }

    fn last(&self, key: &ReplicaKey) -> ReplicaReport {
        self.reports
            .iter()
            .rev()
            .find(|r| r.role == key.role && r.replica == key.replica)
            .cloned()
            .unwrap_or_else(|| panic!("no report for {key}"))
    }

    fn states(&self, key: &ReplicaKey) -> Vec<ReportedState> {
        self.reports
            .iter()
            .filter(|r| r.role == key.role && r.replica == key.replica)
            .map(|r| r.state)
            .collect()
    }

    fn start_times(&self, key: &ReplicaKey) -> Vec<u64> {
        self.started
            .iter()
            .filter(|(_, k)| k == key)
            .map(|(t, _)| *t)
            .collect()
    }
}

fn key(role: &str, replica: u32) -> ReplicaKey {
    ReplicaKey::new(COLONY, role, replica)
}

fn workload(name: &str, restart: RestartPolicy) -> Workload {
    Workload {
        command: vec!["run".into(), name.into()],
        restart,
        ..Workload::default()
    }
}

fn with_health(mut w: Workload) -> Workload {
    w.health = Some(HealthCheck {
        probe: Probe::Tcp { port: 1 },
        interval_ms: 100,
        timeout_ms: 100,
        retries: 1,
        start_period_ms: 0,
    });
    w
}

fn rep(role: &str, replica: u32, w: Workload) -> DesiredReplica {
    DesiredReplica {
        role: role.into(),
        replica,
        workload: w,
        ..DesiredReplica::default()
    }
}

fn dep(mut r: DesiredReplica, on: &[&str]) -> DesiredReplica {
    r.depends_on = on.iter().map(|s| (*s).to_owned()).collect();
    r
}

fn desired(seq: u64, replicas: Vec<DesiredReplica>) -> Desired {
    Desired {
        version: Version { term: 1, seq },
        colony: COLONY.into(),
        replicas,
        ..Desired::default()
    }
}

fn always(name: &str) -> Workload {
    workload(name, RestartPolicy::Always)
}

fn hash_of(w: &Workload) -> u64 {
    start_hash(w, &[])
}

#[tokio::test]
async fn a_dependent_waits_until_its_dependency_is_healthy_here() {
    let rt = Fake::new();
    let mut h = Harness::default(rt.clone()).await;
    let a = rep("a", 0, with_health(always("a")));
    let b = dep(rep("b", 0, always("b")), &["a"]);
    h.desire(desired(1, vec![a, b])).await;
    assert_eq!(rt.starts(&key("a", 0)).len(), 1);
    assert!(rt.starts(&key("b", 0)).is_empty(), "b must wait for a");
    let waiting = h.last(&key("b", 0));
    assert_eq!(waiting.state, ReportedState::Waiting);
    assert_eq!(
        waiting.detail.as_deref(),
        Some("waiting for healthy roles: a")
    );
    assert_eq!(h.last(&key("a", 0)).state, ReportedState::Starting);
    h.advance(60 * SEC).await;
    assert!(rt.starts(&key("b", 0)).is_empty(), "still not healthy");

    rt.set(&key("a", 0), ReplicaState::Healthy, false);
    h.settle().await;
    assert_eq!(rt.starts(&key("b", 0)).len(), 1);
    assert_eq!(h.last(&key("a", 0)).state, ReportedState::Healthy);
    assert_eq!(
        h.states(&key("b", 0)),
        [
            ReportedState::Waiting,
            ReportedState::Starting,
            ReportedState::Running
        ]
    );
}

#[tokio::test]
async fn a_dependency_healthy_elsewhere_counts_and_losing_it_stops_nothing() {
    let rt = Fake::new();
    let mut h = Harness::default(rt.clone()).await;
    let b = dep(rep("b", 0, always("b")), &["a", "z"]);
    h.desire(desired(1, vec![b])).await;
    assert!(rt.starts(&key("b", 0)).is_empty());
    assert_eq!(
        h.last(&key("b", 0)).detail.as_deref(),
        Some("waiting for healthy roles: a, z")
    );
    h.m.set_healthy_roles(BTreeSet::from(["a".to_owned()]))
        .unwrap();
    h.settle().await;
    assert!(rt.starts(&key("b", 0)).is_empty(), "z is still missing");
    h.m.set_healthy_roles(BTreeSet::from(["a".to_owned(), "z".to_owned()]))
        .unwrap();
    h.settle().await;
    assert_eq!(rt.starts(&key("b", 0)).len(), 1);

    h.m.set_healthy_roles(BTreeSet::new()).unwrap();
    h.advance(10 * 60 * SEC).await;
    assert_eq!(
        rt.stops(&key("b", 0)),
        0,
        "a running dependent is never stopped"
    );
    assert_eq!(h.last(&key("b", 0)).state, ReportedState::Running);
    // But its restart waits for the dependencies again.
    rt.exit(&key("b", 0), 1);
    h.advance(10 * 60 * SEC).await;
    assert_eq!(rt.starts(&key("b", 0)).len(), 1);
    assert_eq!(h.last(&key("b", 0)).state, ReportedState::Waiting);
}

#[tokio::test]
async fn backoff_doubles_to_its_cap_and_resets_after_a_stable_run() {
    let rt = Fake::new();
    let cfg = ReconcilerConfig {
        crash_loop_failures: 1_000, // isolate the backoff from crash-loop detection
        ..ReconcilerConfig::default()
    };
    let mut h = Harness::new(rt.clone(), cfg.clone()).await;
    let k = key("a", 0);
    h.desire(desired(1, vec![rep("a", 0, always("a"))])).await;
    let mut delays = Vec::new();
    for _ in 0..9 {
        let before = h.start_times(&k).len();
        rt.exit(&k, 1);
        let exited_at = h.now_ms;
        h.settle().await;
        assert_eq!(h.last(&k).state, ReportedState::Waiting);
        // Second by second until the restart, so that it runs only briefly (much less than
        // the reset period) before the next exit.
        for _ in 0..200 {
            if h.start_times(&k).len() > before {
                break;
            }
            h.advance(SEC).await;
        }
        let times = h.start_times(&k);
        assert_eq!(times.len(), before + 1, "one restart per exit");
        delays.push((times[before] - exited_at) / SEC);
    }
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 120, 120]);
    assert_eq!(h.last(&k).restarts, 9);

    // Up for the whole reset period: the next failure waits 1 s again.
    h.advance(cfg.backoff_reset_after_ms).await;
    rt.exit(&k, 1);
    let exited_at = h.now_ms;
    h.advance(5 * SEC).await;
    assert_eq!(*h.start_times(&k).last().unwrap() - exited_at, SEC);
}

#[tokio::test]
async fn a_crash_loop_is_reported_failed_and_still_retried_until_stable() {
    let rt = Fake::new();
    let mut h = Harness::default(rt.clone()).await;
    let k = key("a", 0);
    h.desire(desired(1, vec![rep("a", 0, always("a"))])).await;
    for i in 0..CRASH_LOOP_FAILURES {
        assert_ne!(h.last(&k).state, ReportedState::Failed, "failure {i}");
        rt.exit(&k, 2);
        h.settle().await;
        h.advance(BACKOFF_MAX_MS).await;
    }
    let failed = h
        .reports
        .iter()
        .rev()
        .find(|r| r.state == ReportedState::Failed);
    let detail = failed.unwrap().detail.clone().unwrap();
    assert!(
        detail.starts_with("crash loop: 5 failures within 10 min (last: exited with code 2"),
        "{detail}"
    );
    // Still restarted here (autonomy), still reported failed while it is not stable.
    let starts = rt.starts(&k).len();
    assert_eq!(starts, 6);
    assert_eq!(h.last(&k).state, ReportedState::Failed);
    rt.exit(&k, 2);
    h.advance(BACKOFF_MAX_MS).await;
    assert_eq!(rt.starts(&k).len(), starts + 1);
    // Stable for the reset period: reported as what it is again.
    h.advance(BACKOFF_RESET_AFTER_MS).await;
    assert_eq!(h.last(&k).state, ReportedState::Running);
}

#[tokio::test]
async fn on_failure_stops_after_max_retries_and_leaves_a_clean_exit_alone() {
    let rt = Fake::new();
    let mut h = Harness::default(rt.clone()).await;
    let k = key("job", 0);
    let w = workload("job", RestartPolicy::OnFailure { max_retries: 2 });
    h.desire(desired(1, vec![rep("job", 0, w)])).await;
    for _ in 0..3 {
        rt.exit(&k, 1);
        h.advance(60 * SEC).await;
    }
    assert_eq!(rt.starts(&k).len(), 3, "the first run and two retries");
    let last = h.last(&k);
    assert_eq!(last.state, ReportedState::Failed);
    assert_eq!(last.restarts, 2);
    assert!(
        last.detail
            .as_deref()
            .unwrap()
            .contains("gave up after 2 restart(s)"),
        "{last:?}"
    );
    h.advance(3_600 * SEC).await;
    assert_eq!(rt.starts(&k).len(), 3, "no restart after giving up");

    let k2 = key("ok", 0);
    let w2 = workload("ok", RestartPolicy::OnFailure { max_retries: 3 });
    h.desire(desired(2, vec![rep("ok", 0, w2)])).await;
    rt.exit(&k2, 0);
    h.advance(600 * SEC).await;
    assert_eq!(rt.starts(&k2).len(), 1);
    let last = h.last(&k2);
    assert_eq!(last.state, ReportedState::Stopped);
    assert_eq!(
        last.detail.as_deref(),
        Some("exited with code 0; restart policy: on-failure")
    );
}

#[tokio::test]
async fn never_is_not_restarted() {
    let rt = Fake::new();
    let mut h = Harness::default(rt.clone()).await;
    let k = key("once", 0);
    h.desire(desired(
        1,
        vec![rep("once", 0, workload("once", RestartPolicy::Never))],
    ))
    .await;
    rt.exit(&k, 3);
    h.advance(3_600 * SEC).await;
    assert_eq!(rt.starts(&k).len(), 1);
    let last = h.last(&k);
    assert_eq!(last.state, ReportedState::Stopped);
    assert_eq!(
        last.detail.as_deref(),
        Some("exited with code 3; restart policy: never")
    );
    assert_eq!(rt.stops(&k), 0, "the ended replica stays for its logs");
}

#[tokio::test]
async fn adoption_keeps_the_right_hash_replaces_the_wrong_one_and_restarts_the_dead() {
    let rt = Fake::new();
    let (wa, wb, wc) = (always("a"), always("b"), always("c"));
    rt.preload(&key("a", 0), hash_of(&wa), ReplicaState::Running, 3);
    rt.preload(
        &key("b", 0),
        hash_of(&always("b-old")),
        ReplicaState::Running,
        0,
    );
    rt.preload(
        &key("c", 0),
        hash_of(&wc),
        ReplicaState::Exited { code: Some(1) },
        0,
    );
    let mut h = Harness::default(rt.clone()).await;
    h.advance(600 * SEC).await;
    assert!(
        rt.calls().is_empty(),
        "nothing is done before the first desired set"
    );
    assert!(h.reports.is_empty());

    h.desire(desired(
        1,
        vec![rep("a", 0, wa), rep("b", 0, wb.clone()), rep("c", 0, wc)],
    ))
    .await;
    assert!(rt.starts(&key("a", 0)).is_empty(), "adopted as is");
    assert_eq!(h.last(&key("a", 0)).state, ReportedState::Running);
    assert_eq!(
        h.last(&key("a", 0)).restarts,
        3,
        "the runtime's count is kept"
    );
    let b_starts = rt.starts(&key("b", 0));
    assert!(
        matches!(&b_starts[..], [Call::Start { hash, .. }] if *hash == hash_of(&wb)),
        "{b_starts:?}"
    );
    // c exited while the agent was away: a failure like any other (1 s backoff).
    assert!(rt.starts(&key("c", 0)).is_empty());
    h.advance(SEC).await;
    assert_eq!(rt.starts(&key("c", 0)).len(), 1);
    assert_eq!(rt.stops(&key("a", 0)) + rt.stops(&key("b", 0)), 0);
}

#[tokio::test]
async fn an_adopted_restart_dependent_is_not_restarted_until_its_endpoints_change() {
    let rt = Fake::new();
    let w = always("web");
    rt.preload(&key("web", 0), hash_of(&w), ReplicaState::Running, 0);
    let mut h = Harness::default(rt.clone()).await;
    let mut r = dep(rep("web", 0, w), &["db"]);
    r.on_endpoints_change = EndpointsChange::Restart;
    let mut d = desired(1, vec![r]);
    d.healthy_roles = BTreeSet::from(["db".to_owned()]);
    d.endpoints = BTreeMap::from([("db".to_owned(), vec!["10.0.0.1:1".to_owned()])]);
    h.desire(d).await;
    h.advance(60 * SEC).await;
    assert!(rt.calls().is_empty(), "{:?}", rt.calls());
    h.m.set_endpoints(BTreeMap::from([(
        "db".to_owned(),
        vec!["10.0.0.2:1".to_owned()],
    )]))
    .unwrap();
    h.settle().await;
    assert_eq!(rt.stops(&key("web", 0)), 1);
    assert_eq!(rt.starts(&key("web", 0)).len(), 1);
}

#[tokio::test]
async fn nothing_is_stopped_before_the_first_desired_set_then_strays_are() {
    let rt = Fake::new();
    let wa = always("a");
    rt.preload(&key("a", 0), hash_of(&wa), ReplicaState::Running, 0);
    rt.preload(&key("stray", 0), 42, ReplicaState::Running, 0);
    rt.preload(
        &ReplicaKey::new("other-colony", "x", 0),
        42,
        ReplicaState::Running,
        0,
    );
    let mut h = Harness::default(rt.clone()).await;
    h.advance(3_600 * SEC).await;
    assert!(rt.calls().is_empty());
    assert_eq!(
        h.m.snapshot(h.now()).len(),
        2,
        "other colonies are not tracked"
    );

    h.desire(desired(1, vec![rep("a", 0, wa)])).await;
    assert_eq!(rt.calls(), vec![Call::Stop(key("stray", 0))]);
    assert!(
        rt.state_of(&ReplicaKey::new("other-colony", "x", 0))
            .is_some()
    );

    // A newer set without `a` stops it, and reports it stopped.
    h.desire(desired(2, vec![])).await;
    assert_eq!(rt.stops(&key("a", 0)), 1);
    let last = h.last(&key("a", 0));
    assert_eq!(last.state, ReportedState::Stopped);
    assert_eq!(
        last.detail.as_deref(),
        Some("no longer assigned to this node")
    );
    assert!(h.m.snapshot(h.now()).is_empty());
}

#[tokio::test]
async fn a_newer_desired_set_keeps_what_it_still_contains() {
    let rt = Fake::new();
    let mut h = Harness::default(rt.clone()).await;
    h.desire(desired(
        1,
        vec![rep("a", 0, always("a")), rep("a", 1, always("a"))],
    ))
    .await;
    h.desire(desired(
        2,
        vec![rep("a", 0, always("a")), rep("b", 0, always("b"))],
    ))
    .await;
    assert_eq!(rt.starts(&key("a", 0)).len(), 1, "a#0 untouched");
    assert_eq!(rt.stops(&key("a", 0)), 0);
    assert_eq!(rt.stops(&key("a", 1)), 1);
    assert_eq!(rt.starts(&key("b", 0)).len(), 1);
    // The same version again is accepted (no change); an older one is refused.
    h.m.set_desired(desired(2, vec![rep("a", 0, always("a"))]), h.now())
        .unwrap();
    let err = h.m.set_desired(desired(1, vec![]), h.now()).unwrap_err();
    assert!(matches!(err, ReconcileError::Stale { .. }), "{err}");
}

#[tokio::test]
async fn endpoint_changes_restart_restart_dependents_one_at_a_time() {
    let rt = Fake::new();
    let mut h = Harness::default(rt.clone()).await;
    let mut web = Vec::new();
    for i in 0..3 {
        let mut r = dep(rep("web", i, with_health(always("web"))), &["db"]);
        r.on_endpoints_change = EndpointsChange::Restart;
        web.push(r);
    }
    let worker = dep(rep("worker", 0, always("worker")), &["db"]);
    let mut d = desired(1, [web, vec![worker]].concat());
    d.healthy_roles = BTreeSet::from(["db".to_owned()]);
    d.endpoints = BTreeMap::from([("db".to_owned(), vec!["10.0.0.1:5432".to_owned()])]);
    h.desire(d).await;
    for i in 0..3 {
        rt.set(&key("web", i), ReplicaState::Healthy, false);
    }
    h.settle().await;
    let env_of = |c: &Call| match c {
        Call::Start { env, .. } => env.get("AWARE_DB_ENDPOINTS").cloned().unwrap(),
        Call::Stop(_) => unreachable!(),
    };
    assert_eq!(env_of(&rt.starts(&key("worker", 0))[0]), "10.0.0.1:5432");

    // Only an order change: no restart.
    h.m.set_endpoints(BTreeMap::from([(
        "db".to_owned(),
        vec!["10.0.0.1:5432".to_owned(), "10.0.0.1:5432".to_owned()],
    )]))
    .unwrap();
    h.settle().await;
    assert_eq!(rt.stops(&key("web", 0)), 0);

    h.m.set_endpoints(BTreeMap::from([(
        "db".to_owned(),
        vec!["10.0.0.9:5432".to_owned(), "10.0.0.2:5432".to_owned()],
    )]))
    .unwrap();
    h.settle().await;
    let restarted =
        |h: &Harness| -> Vec<u32> { (0..3).filter(|i| h.rt.stops(&key("web", *i)) > 0).collect() };
    assert_eq!(restarted(&h), vec![0], "one at a time");
    assert_eq!(
        env_of(rt.starts(&key("web", 0)).last().unwrap()),
        "10.0.0.2:5432,10.0.0.9:5432"
    );
    h.advance(60 * SEC).await;
    assert_eq!(restarted(&h), vec![0], "web#0 is not healthy yet");

    rt.set(&key("web", 0), ReplicaState::Healthy, false);
    h.settle().await;
    assert_eq!(restarted(&h), vec![0, 1]);
    rt.set(&key("web", 1), ReplicaState::Healthy, false);
    h.settle().await;
    rt.set(&key("web", 2), ReplicaState::Healthy, false);
    h.settle().await;
    assert_eq!(restarted(&h), vec![0, 1, 2]);
    for i in 0..3 {
        assert_eq!(
            rt.stops(&key("web", i)),
            1,
            "web#{i} restarted exactly once"
        );
    }
    // `Ignore`: kept running, and gets the new value at its next start.
    assert_eq!(rt.stops(&key("worker", 0)), 0);
    assert_eq!(rt.starts(&key("worker", 0)).len(), 1);
    rt.exit(&key("worker", 0), 1);
    h.advance(SEC).await;
    assert_eq!(
        env_of(rt.starts(&key("worker", 0)).last().unwrap()),
        "10.0.0.2:5432,10.0.0.9:5432"
    );
}

#[tokio::test]
async fn every_replica_gets_its_identity_and_its_dependencies_endpoints() {
    assert_eq!(endpoints_env_var("db"), "AWARE_DB_ENDPOINTS");
    assert_eq!(
        endpoints_env_var("db-main.v2"),
        "AWARE_DB_MAIN_V2_ENDPOINTS"
    );
    assert_eq!(endpoints_env_var("Cache_1"), "AWARE_CACHE_1_ENDPOINTS");

    let rt = Fake::new();
    let mut h = Harness::default(rt.clone()).await;
    let r = dep(
        rep("api", 4, always("api")),
        &["db-main", "cache", "db-main"],
    );
    let mut d = desired(1, vec![r]);
    d.healthy_roles = BTreeSet::from(["db-main".to_owned(), "cache".to_owned()]);
    d.endpoints = BTreeMap::from([
        (
            "db-main".to_owned(),
            vec!["10.0.0.6:5432".to_owned(), "10.0.0.5:5432".to_owned()],
        ),
        ("unrelated".to_owned(), vec!["10.0.0.7:1".to_owned()]),
    ]);
    h.desire(d).await;
    let calls = rt.starts(&key("api", 4));
    let Call::Start { env, .. } = &calls[0] else {
        unreachable!()
    };
    let expected = BTreeMap::from([
        ("AWARE_COLONY".to_owned(), COLONY.to_owned()),
        ("AWARE_ROLE".to_owned(), "api".to_owned()),
        ("AWARE_REPLICA".to_owned(), "4".to_owned()),
        (
            "AWARE_DB_MAIN_ENDPOINTS".to_owned(),
            "10.0.0.5:5432,10.0.0.6:5432".to_owned(),
        ),
        ("AWARE_CACHE_ENDPOINTS".to_owned(), String::new()),
    ]);
    assert_eq!(env, &expected);
}

#[tokio::test]
async fn gpus_are_handed_over_up_to_the_workloads_count_and_change_the_hash() {
    let rt = Fake::new();
    let mut h = Harness::default(rt.clone()).await;
    let mut w = always("llm");
    w.gpus = 1;
    let mut r = rep("llm", 0, w.clone());
    r.gpus = vec![3, 5];
    h.desire(desired(1, vec![r])).await;
    let calls = rt.starts(&key("llm", 0));
    let Call::Start { gpus, hash, .. } = &calls[0] else {
        unreachable!()
    };
    assert_eq!(gpus, &vec![3]);
    assert_eq!(*hash, start_hash(&w, &[3]));
    assert_ne!(*hash, start_hash(&w, &[5]));
    assert_ne!(*hash, start_hash(&w, &[]));
}

#[tokio::test]
async fn an_unhealthy_replica_is_restarted_after_the_grace() {
    let rt = Fake::new();
    let mut h = Harness::default(rt.clone()).await;
    let k = key("a", 0);
    h.desire(desired(1, vec![rep("a", 0, with_health(always("a")))]))
        .await;
    rt.set(&k, ReplicaState::Healthy, false);
    h.advance(10 * SEC).await;
    rt.set(&k, ReplicaState::Unhealthy, false);
    h.settle().await;
    assert_eq!(h.last(&k).state, ReportedState::Unhealthy);
    h.advance(UNHEALTHY_RESTART_AFTER_MS - 1).await;
    assert_eq!(rt.stops(&k), 0);
    h.advance(1).await;
    assert_eq!(rt.stops(&k), 1);
    assert_eq!(rt.starts(&k).len(), 1, "the restart waits for its backoff");
    assert_eq!(
        h.last(&k).detail.as_deref(),
        Some("unhealthy for 30 s; restarting after 1 s")
    );
    h.advance(SEC).await;
    assert_eq!(rt.starts(&k).len(), 2);
    assert_eq!(h.last(&k).restarts, 1);
}

#[tokio::test]
async fn start_errors_retry_with_backoff_unless_they_cannot_heal_here() {
    let rt = Fake::new();
    rt.st().start_errors.insert(
        key("a", 0),
        VecDeque::from([RuntimeError::Unreachable {
            what: "Docker".into(),
            detail: "down".into(),
        }]),
    );
    rt.st().start_errors.insert(
        key("b", 0),
        VecDeque::from([RuntimeError::InvalidSpec {
            key: "hive/b#0".into(),
            reason: "the process runtime needs a `command` to run".into(),
        }]),
    );
    let mut h = Harness::default(rt.clone()).await;
    h.desire(desired(
        1,
        vec![rep("a", 0, always("a")), rep("b", 0, always("b"))],
    ))
    .await;
    assert_eq!(h.last(&key("a", 0)).state, ReportedState::Waiting);
    h.advance(SEC).await;
    assert_eq!(rt.starts(&key("a", 0)).len(), 2);
    assert_eq!(h.last(&key("a", 0)).state, ReportedState::Running);

    let b = h.last(&key("b", 0));
    assert_eq!(b.state, ReportedState::Failed);
    assert!(
        b.detail
            .unwrap()
            .starts_with("cannot start here: replica hive/b#0")
    );
    h.advance(3_600 * SEC).await;
    assert_eq!(rt.starts(&key("b", 0)).len(), 1);
    // A new workload for it is tried again.
    h.desire(desired(
        2,
        vec![rep("a", 0, always("a")), rep("b", 0, always("b2"))],
    ))
    .await;
    assert_eq!(rt.starts(&key("b", 0)).len(), 2);
    assert_eq!(h.last(&key("b", 0)).state, ReportedState::Running);
}

#[tokio::test]
async fn an_exit_seen_before_the_start_result_is_not_undone() {
    let rt = Fake::new();
    rt.st().exit_on_start.insert(key("a", 0), 7);
    let mut h = Harness::default(rt.clone()).await;
    h.desire(desired(1, vec![rep("a", 0, always("a"))])).await;
    // The harness delivered Changed(Running), Changed(Exited) and then the start's result
    // (Running): the replica must count as exited and be restarted after its backoff.
    let last = h.last(&key("a", 0));
    assert_eq!(last.state, ReportedState::Waiting, "{last:?}");
    assert_eq!(
        last.detail.as_deref(),
        Some("exited with code 7; restarting after 1 s")
    );
    h.advance(SEC).await;
    assert_eq!(rt.starts(&key("a", 0)).len(), 2);
    assert_eq!(h.last(&key("a", 0)).state, ReportedState::Running);
}

#[tokio::test]
async fn a_replica_removed_behind_our_back_is_a_failure() {
    let rt = Fake::new();
    let mut h = Harness::default(rt.clone()).await;
    let k = key("a", 0);
    h.desire(desired(1, vec![rep("a", 0, always("a"))])).await;
    let instance = {
        let mut st = rt.st();
        st.replicas.remove(&k).unwrap().instance
    };
    rt.emit(RuntimeEvent::Removed {
        key: k.clone(),
        instance,
    });
    h.settle().await;
    assert!(
        h.last(&k)
            .detail
            .unwrap()
            .starts_with("disappeared from the runtime")
    );
    h.advance(SEC).await;
    assert_eq!(rt.starts(&k).len(), 2);
}

#[tokio::test]
async fn a_container_started_again_by_hand_is_seen_alive_again() {
    let rt = Fake::new();
    let mut h = Harness::default(rt.clone()).await;
    let k = key("a", 0);
    h.desire(desired(
        1,
        vec![rep("a", 0, workload("a", RestartPolicy::Never))],
    ))
    .await;
    rt.exit(&k, 1);
    h.settle().await;
    assert_eq!(h.last(&k).state, ReportedState::Stopped);
    // The same instance alive again: ignored when it is an older report...
    rt.set(&k, ReplicaState::Running, false);
    h.settle().await;
    assert_eq!(h.last(&k).state, ReportedState::Stopped);
    // ...accepted when it started again since.
    rt.st().replicas.get_mut(&k).unwrap().started_at_unix_ms = 2;
    rt.set(&k, ReplicaState::Running, false);
    h.settle().await;
    assert_eq!(h.m.snapshot(h.now())[0].pid, Some(2000));
    assert_eq!(rt.starts(&k).len(), 1);
}

#[test]
fn bad_inputs_are_refused_with_the_reason() {
    let mut m = Machine::new(COLONY, ReconcilerConfig::default()).unwrap();
    let mut d = desired(1, vec![rep("a", 0, always("a"))]);
    d.colony = "other".into();
    let e = m.set_desired(d, Now::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "desired set of colony `other` given to the reconciler of colony `hive`"
    );
    let d = desired(1, vec![rep("a", 0, always("a")), rep("a", 0, always("b"))]);
    let e = m.set_desired(d, Now::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "desired set 1.1: replica a#0 is listed twice"
    );
    let d = desired(1, vec![rep("a/b", 0, always("a"))]);
    let e = m.set_desired(d, Now::default()).unwrap_err();
    assert!(e.to_string().contains("role name `a/b`"), "{e}");
    let e = m
        .set_endpoints(BTreeMap::from([("db".into(), vec!["a,b:1".into()])]))
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("endpoints of role `db`: endpoint 0"),
        "{e}"
    );
    assert!(m.version().is_none(), "nothing was taken");
    assert!(Machine::new("bad name", ReconcilerConfig::default()).is_err());
    let cfg = ReconcilerConfig {
        backoff_max_ms: 1,
        backoff_initial_ms: 2,
        ..ReconcilerConfig::default()
    };
    assert!(Machine::new(COLONY, cfg).is_err());
}

#[test]
fn backoff_formula() {
    let cfg = ReconcilerConfig::default();
    let got: Vec<u64> = (1..=10).map(|n| cfg.backoff_ms(n)).collect();
    assert_eq!(
        got,
        [1, 2, 4, 8, 16, 32, 64, 120, 120, 120].map(|s| s * SEC)
    );
    assert_eq!(cfg.backoff_ms(u32::MAX), BACKOFF_MAX_MS);
}

// ---- the tokio task ----

/// A fast configuration for the task tests (real time).
fn fast() -> ReconcilerConfig {
    ReconcilerConfig {
        backoff_initial_ms: 20,
        backoff_max_ms: 100,
        ..ReconcilerConfig::default()
    }
}

async fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn next_report(
    rx: &mut tokio::sync::mpsc::Receiver<ReplicaReport>,
    pred: impl Fn(&ReplicaReport) -> bool,
) -> ReplicaReport {
    let deadline = Duration::from_secs(10);
    loop {
        let r = tokio::time::timeout(deadline, rx.recv())
            .await
            .expect("a report in time")
            .expect("the channel is open");
        if pred(&r) {
            return r;
        }
    }
}

#[tokio::test]
async fn the_task_adopts_reports_restarts_and_leaves_workloads_on_shutdown() {
    let rt = Fake::new();
    let wa = always("a");
    rt.preload(&key("a", 0), hash_of(&wa), ReplicaState::Running, 0);
    let (handle, mut reports) = Reconciler::spawn(rt.clone(), COLONY, fast()).unwrap();
    wait_for("the adopted replica in the snapshot", || {
        handle.snapshot().first().cloned()
    })
    .await;
    let mut d = desired(1, vec![rep("a", 0, wa), rep("b", 0, always("b"))]);
    d.endpoints = BTreeMap::from([("a".to_owned(), vec!["10.0.0.1:80".to_owned()])]);
    handle.set_desired(d).unwrap();
    let b = next_report(&mut reports, |r| {
        r.role == "b" && r.state == ReportedState::Running
    })
    .await;
    assert_eq!(b.restarts, 0);
    assert!(rt.starts(&key("a", 0)).is_empty(), "adopted, not started");
    assert_eq!(handle.endpoints("a"), vec!["10.0.0.1:80".to_owned()]);
    assert!(handle.endpoints("b").is_empty());

    rt.exit(&key("b", 0), 1);
    let back = next_report(&mut reports, |r| {
        r.role == "b" && r.state == ReportedState::Running && r.restarts == 1
    })
    .await;
    assert_eq!(back.detail, None);
    assert_eq!(rt.starts(&key("b", 0)).len(), 2);

    let stale = handle.set_desired(desired(0, vec![])).unwrap_err();
    assert!(matches!(stale, ReconcileError::Stale { .. }));

    handle.shutdown(false).await;
    assert_eq!(rt.stops(&key("a", 0)) + rt.stops(&key("b", 0)), 0);
    assert!(rt.state_of(&key("b", 0)).unwrap().is_alive());
    assert_eq!(
        handle.set_desired(desired(2, vec![])),
        Err(ReconcileError::Stopped)
    );
}

#[tokio::test]
async fn the_task_stops_its_colonys_workloads_when_leaving() {
    let rt = Fake::new();
    let foreign = ReplicaKey::new("other", "x", 0);
    rt.preload(&foreign, 1, ReplicaState::Running, 0);
    let (handle, mut reports) = Reconciler::spawn(rt.clone(), COLONY, fast()).unwrap();
    handle
        .set_desired(desired(1, vec![rep("a", 0, always("a"))]))
        .unwrap();
    next_report(&mut reports, |r| r.state == ReportedState::Running).await;
    handle.shutdown(true).await;
    assert_eq!(rt.stops(&key("a", 0)), 1);
    assert_eq!(
        rt.stops(&foreign),
        0,
        "another colony's replica is not ours"
    );
    let r = next_report(&mut reports, |r| r.state == ReportedState::Stopped).await;
    assert_eq!(
        r.detail.as_deref(),
        Some("stopped: this node leaves the colony")
    );
    assert!(handle.snapshot().is_empty());
}

#[tokio::test]
async fn the_task_lists_again_on_resync_and_retries_a_failed_listing() {
    let rt = Fake::new();
    rt.st().list_fails = true;
    let (handle, mut reports) = Reconciler::spawn(rt.clone(), COLONY, fast()).unwrap();
    handle
        .set_desired(desired(1, vec![rep("a", 0, always("a"))]))
        .unwrap();
    // Nothing is started while the runtime cannot be listed (the retry comes 500 ms later).
    wait_for("a failed listing", || (rt.st().lists >= 1).then_some(())).await;
    assert!(rt.calls().is_empty());
    rt.st().list_fails = false;
    next_report(&mut reports, |r| r.state == ReportedState::Running).await;
    // An exit the event stream missed is found by the listing a Resync asks for.
    rt.set(&key("a", 0), ReplicaState::Exited { code: Some(1) }, true);
    rt.emit(RuntimeEvent::Resync);
    next_report(&mut reports, |r| {
        r.state == ReportedState::Running && r.restarts == 1
    })
    .await;
    handle.shutdown(false).await;
}
