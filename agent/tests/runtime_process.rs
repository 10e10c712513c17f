//! The process runtime with real child processes: lifecycle with a TCP probe and exit events,
//! restart counting, killing the whole process group (grandchildren too, SIGKILL after the grace
//! period), the capped and rotated output log, env / working dir / GPUs / memory limit, an HTTP
//! probe against busybox httpd, and adoption by a new runtime over the same data dir (an agent
//! restart) without restarting the process, including a recorded pid that now belongs to
//! another process (left alone).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
#![allow(clippy::disallowed_methods)] // tests measure and bound real time

mod support;

use aware_agent::runtime::process::{ProcessConfig, ProcessRuntime};
use aware_agent::runtime::{
    Observed, ReplicaKey, ReplicaState, Runtime, RuntimeError, RuntimeEvent, StartSpec,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::events::wait_for;
use swarm_core::NodeId;
use swarm_core::spec::{HealthCheck, Limits, Probe, Workload};

const NODE: NodeId = NodeId(0x00a1_b2c3_d4e5_f607);
const DEADLINE: Duration = Duration::from_secs(10);

/// A data dir removed on drop, and every process group the test noted killed on drop (so a
/// failing test leaves nothing running).
struct Scratch {
    dir: PathBuf,
    groups: std::sync::Mutex<Vec<u32>>,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("aware-rt-proc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch {
            dir,
            groups: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn cfg(&self) -> ProcessConfig {
        let mut cfg = ProcessConfig::new(NODE, &self.dir);
        cfg.stop_grace_ms = 2_000;
        cfg
    }

    fn note(&self, o: &Observed) {
        if let Some(pid) = o.pid {
            self.groups.lock().unwrap().push(pid);
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for pid in self.groups.lock().unwrap().drain(..) {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32).filter(|_| pid > 1) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(script: &str) -> Workload {
    Workload {
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..Workload::default()
    }
}

fn tcp_check(port: u16) -> HealthCheck {
    HealthCheck {
        probe: Probe::Tcp { port },
        interval_ms: 100,
        timeout_ms: 500,
        retries: 1,
        start_period_ms: 0,
    }
}

/// Polls `cond` until it holds or the deadline passes (for things no event reports: files,
/// other processes).
async fn until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Alive and not a zombie (a grandchild reparented to a PID 1 that does not reap stays a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some(Some('Z' | 'X')))
        }
        Err(_) => false,
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_probe_exit_restart_stop() {
    let scratch = Scratch::new("life");
    let rt = ProcessRuntime::open(scratch.cfg()).await.unwrap();
    let mut events = rt.subscribe();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let key = ReplicaKey::new("colony", "worker", 0);
    let mut workload = sh("echo started; while :; do sleep 1; done");
    workload.health = Some(tcp_check(port));
    let spec = StartSpec::new(key.clone(), workload);

    let t0 = Instant::now();
    let started = rt.start(&spec).await.unwrap();
    let latency = t0.elapsed();
    scratch.note(&started);
    println!("process start latency (start call until running): {latency:?}");
    assert_eq!(
        started.state,
        ReplicaState::Starting,
        "a probed replica starts as Starting"
    );
    let pid = started.pid.unwrap();
    assert!(alive(pid));
    assert_eq!(started.restarts, 0);

    wait_for(DEADLINE, &mut events, &key, "healthy", |o| {
        o.state == ReplicaState::Healthy
    })
    .await;
    // Starting the same workload again is a no-op.
    let again = rt.start(&spec).await.unwrap();
    assert_eq!(
        (again.instance.as_str(), again.pid),
        (started.instance.as_str(), Some(pid))
    );

    drop(listener);
    wait_for(DEADLINE, &mut events, &key, "unhealthy", |o| {
        o.state == ReplicaState::Unhealthy
    })
    .await;

    // Killed from outside: the exit is reported with 128 + SIGKILL.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let exited = wait_for(DEADLINE, &mut events, &key, "exited", |o| {
        !o.state.is_alive()
    })
    .await;
    assert_eq!(exited.state, ReplicaState::Exited { code: Some(137) });
    assert_eq!(exited.pid, None);
    let listed = rt.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, ReplicaState::Exited { code: Some(137) });

    // Started again after the exit: one restart, a new process.
    let restarted = rt.start(&spec).await.unwrap();
    scratch.note(&restarted);
    assert_eq!(restarted.restarts, 1);
    assert_ne!(restarted.pid, Some(pid));
    assert!(alive(restarted.pid.unwrap()));
    // A changed workload replaces the process and starts the count again.
    let changed = StartSpec::new(key.clone(), sh("while :; do sleep 1; done"));
    let replaced = rt.start(&changed).await.unwrap();
    scratch.note(&replaced);
    assert_eq!(replaced.restarts, 0);
    assert_eq!(
        replaced.state,
        ReplicaState::Running,
        "no health check: running at once"
    );
    assert!(
        !alive(restarted.pid.unwrap()),
        "the old process was stopped"
    );
    assert_ne!(replaced.workload_hash, restarted.workload_hash);

    rt.stop(&key).await.unwrap();
    assert!(!alive(replaced.pid.unwrap()));
    assert!(rt.list().await.unwrap().is_empty());
    let removed = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Ok(RuntimeEvent::Removed { key: k, instance }) = events.recv().await {
                return (k, instance);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(removed, (key.clone(), replaced.instance.clone()));
    let log = std::fs::read_to_string(rt.log_path(&key)).unwrap();
    assert!(log.starts_with("started\n"), "{log:?}");
    rt.stop(&key).await.unwrap(); // stopping what is gone is fine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_the_whole_group_and_escalates() {
    let scratch = Scratch::new("group");
    let mut cfg = scratch.cfg();
    cfg.stop_grace_ms = 1_500;
    let rt = ProcessRuntime::open(cfg).await.unwrap();

    // A polite group: SIGTERM to the group ends the shell and its background sleep.
    let polite = ReplicaKey::new("c", "polite", 0);
    let o = rt
        .start(&StartSpec::new(
            polite.clone(),
            sh("sleep 300 & echo $! > gc.pid; wait"),
        ))
        .await
        .unwrap();
    scratch.note(&o);
    let gc_file = rt.replica_dir(&polite).join("work/gc.pid");
    until("the grandchild's pid file", || read_pid(&gc_file).is_some()).await;
    let grandchild = read_pid(&gc_file).unwrap();
    assert!(alive(grandchild));
    let t0 = Instant::now();
    rt.stop(&polite).await.unwrap();
    let polite_stop = t0.elapsed();
    assert!(!alive(o.pid.unwrap()));
    until("the grandchild to die", || !alive(grandchild)).await;
    assert!(
        polite_stop < Duration::from_millis(1_500),
        "TERM sufficed: {polite_stop:?}"
    );

    // A group that ignores SIGTERM (the ignore is inherited by the sleep): SIGKILL after grace.
    let stubborn = ReplicaKey::new("c", "stubborn", 0);
    let script = "trap '' TERM; sleep 300 & echo $! > gc.pid; wait; wait";
    let o = rt
        .start(&StartSpec::new(stubborn.clone(), sh(script)))
        .await
        .unwrap();
    scratch.note(&o);
    let gc_file = rt.replica_dir(&stubborn).join("work/gc.pid");
    until("the grandchild's pid file", || read_pid(&gc_file).is_some()).await;
    let grandchild = read_pid(&gc_file).unwrap();
    let t0 = Instant::now();
    rt.stop(&stubborn).await.unwrap();
    let stubborn_stop = t0.elapsed();
    assert!(
        stubborn_stop >= Duration::from_millis(1_500),
        "waited the grace period: {stubborn_stop:?}"
    );
    assert!(!alive(o.pid.unwrap()));
    until("the stubborn grandchild to die", || !alive(grandchild)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_log_is_capped_and_rotated() {
    let scratch = Scratch::new("logs");
    let mut cfg = scratch.cfg();
    cfg.log_cap_bytes = 1_000;
    let rt = ProcessRuntime::open(cfg).await.unwrap();
    let mut events = rt.subscribe();
    let key = ReplicaKey::new("c", "chatty", 0);
    // 300 numbered lines (2590 bytes) on stdout, one line on stderr, then exit 3.
    let script =
        "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done; echo oops >&2; exit 3";
    let o = rt
        .start(&StartSpec::new(key.clone(), sh(script)))
        .await
        .unwrap();
    scratch.note(&o);
    let exited = wait_for(DEADLINE, &mut events, &key, "exit", |o| !o.state.is_alive()).await;
    assert_eq!(exited.state, ReplicaState::Exited { code: Some(3) });
    let log = rt.log_path(&key);
    let rotated = log.with_file_name("output.log.1");
    until("the log to end with stderr's line", || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.ends_with("oops\n"))
    })
    .await;
    let current = std::fs::read(&log).unwrap();
    let older = std::fs::read(&rotated).unwrap();
    assert!(
        current.len() <= 1_000 && older.len() == 1_000,
        "{} {}",
        current.len(),
        older.len()
    );
    // The two files are the last bytes of the output, in order.
    let full: String = (0..300).map(|i| format!("line-{i}\n")).collect::<String>() + "oops\n";
    let tail = [older, current].concat();
    assert!(
        full.as_bytes().ends_with(&tail),
        "rotated logs are not the output's tail"
    );
    rt.stop(&key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_workdir_gpus_and_memory_limit() {
    let scratch = Scratch::new("env");
    let rt = ProcessRuntime::open(scratch.cfg()).await.unwrap();
    let mut events = rt.subscribe();
    let key = ReplicaKey::new("c", "env", 2);
    let mut w = sh("echo \"$FOO $BAR $CUDA_VISIBLE_DEVICES $(pwd) $(ulimit -v)\"");
    w.env.insert("FOO".into(), "from-workload".into());
    w.env.insert("BAR".into(), "overridden".into());
    w.gpus = 2;
    w.limits = Limits {
        cpu_millis: Some(500),
        memory_mib: Some(512),
    };
    let mut spec = StartSpec::new(key.clone(), w.clone());
    spec.extra_env.insert("BAR".into(), "extra".into());
    spec.gpu_ids = vec![0, 1];
    let o = rt.start(&spec).await.unwrap();
    scratch.note(&o);
    let exited = wait_for(DEADLINE, &mut events, &key, "exit", |o| !o.state.is_alive()).await;
    assert_eq!(exited.state, ReplicaState::Exited { code: Some(0) });
    let work = rt.replica_dir(&key).join("work");
    let want = format!("from-workload extra 0,1 {} 524288\n", work.display());
    until("the output line", || {
        std::fs::read_to_string(rt.log_path(&key)).is_ok_and(|s| s == want)
    })
    .await;

    // GPUs wanted but no ids given, ids that do not match, no command, a missing program.
    let mut bad = StartSpec::new(ReplicaKey::new("c", "bad", 0), w.clone());
    let err = rt.start(&bad).await.unwrap_err().to_string();
    assert!(err.contains("needs their indices"), "{err}");
    bad.gpu_ids = vec![3];
    let err = rt.start(&bad).await.unwrap_err().to_string();
    assert!(err.contains("uses 2 GPU(s) but 1 GPU id(s)"), "{err}");
    let none = StartSpec::new(ReplicaKey::new("c", "bad", 0), Workload::default());
    let err = rt.start(&none).await.unwrap_err().to_string();
    assert!(err.contains("needs a `command`"), "{err}");
    let missing = Workload {
        command: vec!["/nonexistent/prog".into()],
        ..Workload::default()
    };
    let err = rt
        .start(&StartSpec::new(ReplicaKey::new("c", "bad", 0), missing))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Spawn { .. }), "{err}");
    assert!(
        err.to_string().contains("cannot start `/nonexistent/prog`"),
        "{err}"
    );
    let err = rt
        .start(&StartSpec::new(ReplicaKey::new("../x", "r", 0), sh("true")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("colony name"), "{err}");
    rt.stop(&key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probe_against_busybox_httpd() {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: install busybox-static (.ci/build-image.sh does)"
    );
    let scratch = Scratch::new("http");
    let rt = ProcessRuntime::open(scratch.cfg()).await.unwrap();
    let mut events = rt.subscribe();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let key = ReplicaKey::new("c", "web", 0);
    let mut w = Workload {
        command: vec!["sh".into(), "-c".into()],
        args: vec![format!(
            "mkdir -p www && echo ok > www/index.html && exec /bin/busybox httpd -f -p 127.0.0.1:{port} -h www"
        )],
        ..Workload::default()
    };
    w.health = Some(HealthCheck {
        probe: Probe::Http {
            path: "/index.html".into(),
            port,
        },
        interval_ms: 100,
        timeout_ms: 1_000,
        retries: 2,
        start_period_ms: 1_000,
    });
    let o = rt.start(&StartSpec::new(key.clone(), w)).await.unwrap();
    scratch.note(&o);
    let healthy = wait_for(DEADLINE, &mut events, &key, "healthy", |o| {
        o.state == ReplicaState::Healthy
    })
    .await;
    assert_eq!(healthy.pid, o.pid);
    rt.stop(&key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_without_restarting() {
    let scratch = Scratch::new("adopt");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let key = ReplicaKey::new("c", "kept", 0);
    // Writes "after" once the test creates `go`, which it does while no agent is running.
    let mut w = sh(
        "echo before; until [ -f go ]; do sleep 0.05; done; echo after; \
                    while :; do sleep 1; done",
    );
    w.health = Some(tcp_check(port));
    let spec = StartSpec::new(key.clone(), w);
    let short = ReplicaKey::new("c", "short", 0);

    let first = {
        let rt = ProcessRuntime::open(scratch.cfg()).await.unwrap();
        let mut events = rt.subscribe();
        let o = rt.start(&spec).await.unwrap();
        scratch.note(&o);
        wait_for(DEADLINE, &mut events, &key, "healthy", |o| {
            o.state == ReplicaState::Healthy
        })
        .await;
        let s = rt
            .start(&StartSpec::new(
                short.clone(),
                sh("while :; do sleep 1; done"),
            ))
            .await
            .unwrap();
        scratch.note(&s);
        rt.list()
            .await
            .unwrap()
            .into_iter()
            .find(|o| o.key == key)
            .unwrap()
        // The runtime is dropped here: the agent "restarts". Its processes keep running.
    };
    assert!(alive(first.pid.unwrap()));
    let work = scratch.dir.join("process/replicas/c/kept/0/work");
    std::fs::write(work.join("go"), b"").unwrap();

    let rt = ProcessRuntime::open(scratch.cfg()).await.unwrap();
    let mut events = rt.subscribe();
    let adopted = rt.inspect(&key).await.unwrap().unwrap();
    assert_eq!(adopted.instance, first.instance, "same pid and start time");
    assert_eq!(adopted.pid, first.pid);
    assert_eq!(adopted.started_at_unix_ms, first.started_at_unix_ms);
    assert_eq!(adopted.restarts, 0);
    // The probe resumes at once (it may already have passed: events began at `subscribe`,
    // the inspect after it covers the gap); the start call is a no-op for the same workload.
    if adopted.state != ReplicaState::Healthy {
        wait_for(DEADLINE, &mut events, &key, "healthy again", |o| {
            o.state == ReplicaState::Healthy
        })
        .await;
    }
    assert_eq!(rt.start(&spec).await.unwrap().instance, first.instance);
    // Output written while no agent was reading arrives in the log.
    until("output written across the restart", || {
        std::fs::read_to_string(rt.log_path(&key)).is_ok_and(|s| s == "before\nafter\n")
    })
    .await;

    // An adopted process's exit is seen (pidfd): no parent, so no code.
    let short_pid = rt.inspect(&short).await.unwrap().unwrap().pid.unwrap();
    rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(short_pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let gone = wait_for(DEADLINE, &mut events, &short, "exit of the adopted", |o| {
        !o.state.is_alive()
    })
    .await;
    assert_eq!(gone.state, ReplicaState::Exited { code: None });

    // Stopping an adopted process works too.
    rt.stop(&key).await.unwrap();
    until("the adopted process to die", || !alive(first.pid.unwrap())).await;
    rt.stop(&short).await.unwrap();
    assert!(rt.list().await.unwrap().is_empty());
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_pid_that_is_someone_else_is_left_alone() {
    let scratch = Scratch::new("foreign");
    // Another process, in its own group, that the runtime never started.
    let mut other = std::process::Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut other, 0);
    let mut other = other.arg("300").spawn().unwrap();
    let other_pid = other.id();
    // A state file claiming that pid, with a start time that is not the process's.
    let state = serde_json::json!({
        "version": 1,
        "node": NODE.to_string(),
        "replicas": [{
            "key": {"colony": "c", "role": "r", "replica": 0},
            "pid": other_pid, "start_ticks": 1, "workload_hash": 7, "restarts": 0,
            "started_at_unix_ms": 0, "health": null, "env": {}, "exit": null
        }]
    });
    std::fs::create_dir_all(scratch.dir.join("process")).unwrap();
    std::fs::write(scratch.dir.join("process/state.json"), state.to_string()).unwrap();
    let rt = ProcessRuntime::open(scratch.cfg()).await.unwrap();
    let listed = rt.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, ReplicaState::Exited { code: None });
    rt.stop(&listed[0].key).await.unwrap();
    assert!(alive(other_pid), "a pid alone is never trusted");
    other.kill().unwrap();
    other.wait().unwrap();

    // A corrupt state file is an error that names it, and it is left as it was.
    drop(rt);
    std::fs::write(scratch.dir.join("process/state.json"), b"{not json").unwrap();
    let err = ProcessRuntime::open(scratch.cfg())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("state.json") && err.contains("not valid"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(scratch.dir.join("process/state.json")).unwrap(),
        b"{not json"
    );
    // Another node's state file is not adopted.
    let mut other_node = scratch.cfg();
    other_node.node = NodeId(1);
    std::fs::write(scratch.dir.join("process/state.json"), state.to_string()).unwrap();
    let err = ProcessRuntime::open(other_node)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not adopting another node's processes"),
        "{err}"
    );
}

/// `cargo test -p aware-agent --release --test runtime_process -- --ignored --nocapture`:
/// start latency of 20 processes (start call until the process runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run by hand"]
async fn measure_process_start_latency() {
    let scratch = Scratch::new("measure");
    let rt = ProcessRuntime::open(scratch.cfg()).await.unwrap();
    let mut ms = Vec::new();
    for i in 0..20 {
        let key = ReplicaKey::new("m", "w", i);
        let t0 = Instant::now();
        let o = rt
            .start(&StartSpec::new(
                key.clone(),
                sh("while :; do sleep 1; done"),
            ))
            .await
            .unwrap();
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        scratch.note(&o);
        assert!(alive(o.pid.unwrap()));
    }
    for i in 0..20 {
        rt.stop(&ReplicaKey::new("m", "w", i)).await.unwrap();
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "process start latency over 20: p50 {:.1} ms, max {:.1} ms",
        ms[10], ms[19]
    );
}
