//! The Docker runtime against the real engine, with the registry-free image
//! `aware-busybox:local` (built by `.ci/build-image.sh`; built here if missing).
//!
//! Docker must be reachable: these tests fail loudly otherwise, unless `AWARE_SKIP_DOCKER=1`,
//! which makes each print a skip line. Each test uses its own node id, so tests may run in
//! parallel, and a guard removes every container carrying that node's label (and the test's
//! other containers and volumes) even when the test fails.
//!
//! Run: `cargo test -p aware-agent --test runtime_docker -- --test-threads 2`.
//! Measurements (idle CPU with 20 containers, start latency):
//! `cargo test -p aware-agent --release --test runtime_docker -- --ignored --nocapture --test-threads 1`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
#![allow(clippy::disallowed_methods)] // tests measure and bound real time

mod support;

use aware_agent::runtime::docker::{DockerConfig, DockerRuntime};
use aware_agent::runtime::{
    LABEL_NODE, ReplicaKey, ReplicaState, Runtime, RuntimeError, RuntimeEvent, StartSpec,
};
use bollard::query_parameters::KillContainerOptionsBuilder;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use support::events::wait_for;
use swarm_core::NodeId;
use swarm_core::spec::{HealthCheck, Limits, Port, Probe, Protocol, Volume, Workload};

const IMAGE: &str = "aware-busybox:local";
const DEADLINE: Duration = Duration::from_secs(20);

/// Removes, on drop, every container labelled with the test's node id, plus named extras.
struct Cleanup {
    node: NodeId,
    containers: Vec<String>,
    volumes: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_NODE}={}", self.node);
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
        for name in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", name]).output();
        }
        for v in &self.volumes {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", v])
                .output();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `None` (after printing a skip line) when `AWARE_SKIP_DOCKER=1`; otherwise Docker must answer
/// and the image must exist (it is built if missing).
async fn setup(test: &str, node: u64) -> Option<(DockerRuntime, Cleanup)> {
    if std::env::var("AWARE_SKIP_DOCKER").as_deref() == Ok("1") {
        println!("skipping {test}: AWARE_SKIP_DOCKER=1");
        return None;
    }
    let node = NodeId(node);
    let cleanup = Cleanup {
        node,
        containers: Vec::new(),
        volumes: Vec::new(),
        dirs: Vec::new(),
    };
    let rt = DockerRuntime::connect(config(node))
        .await
        .unwrap_or_else(|e| {
            panic!("{test}: {e}. Install and start Docker, or set AWARE_SKIP_DOCKER=1 to skip")
        });
    if rt.client().inspect_image(IMAGE).await.is_err() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/build-image.sh");
        let status = Command::new("bash")
            .arg(script)
            .status()
            .expect("running .ci/build-image.sh");
        assert!(status.success(), "{script} failed: cannot build {IMAGE}");
    }
    Some((rt, cleanup))
}

fn config(node: NodeId) -> DockerConfig {
    let mut cfg = DockerConfig::new(node);
    cfg.publish_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    cfg.stop_grace_ms = 1_000;
    cfg
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// busybox httpd serving an index on container port 8080, published on `host_port`.
fn web(host_port: u16) -> Workload {
    Workload {
        image: IMAGE.into(),
        command: vec!["sh".into(), "-c".into()],
        args: vec![
            "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www".into(),
        ],
        ports: vec![Port {
            container: 8080,
            host: Some(host_port),
            protocol: Protocol::Tcp,
        }],
        health: Some(HealthCheck {
            probe: Probe::Http {
                path: "/".into(),
                port: 8080,
            },
            interval_ms: 200,
            timeout_ms: 1_000,
            retries: 2,
            start_period_ms: 2_000,
        }),
        ..Workload::default()
    }
}

fn sleeper() -> Workload {
    Workload {
        image: IMAGE.into(),
        command: vec!["sleep".into(), "3600".into()],
        ..Workload::default()
    }
}

async fn container_started_at(rt: &DockerRuntime, id: &str) -> String {
    let c = rt.client().inspect_container(id, None).await.unwrap();
    c.state.unwrap().started_at.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_health_kill_restart_adopt_stop() {
    let Some((rt, _cleanup)) = setup("lifecycle", 0x0d0c_0000_0000_0001).await else {
        return;
    };
    let mut events = rt.subscribe();
    let port = free_port();
    let key = ReplicaKey::new("colony", "web", 0);
    let spec = StartSpec::new(key.clone(), web(port));

    let t0 = Instant::now();
    let started = rt.start(&spec).await.unwrap();
    println!(
        "container start latency (create + start until running): {:?}",
        t0.elapsed()
    );
    assert_eq!(
        started.state,
        ReplicaState::Starting,
        "probed by the agent: starting until healthy"
    );
    assert_eq!(started.restarts, 0);
    assert!(started.pid.is_some() && started.started_at_unix_ms > 0);
    let healthy = wait_for(DEADLINE, &mut events, &key, "healthy", |o| {
        o.state == ReplicaState::Healthy
    })
    .await;
    assert_eq!(healthy.instance, started.instance);
    println!("healthy {:?} after the start call", t0.elapsed());
    // The container is labelled, named, has no Docker restart policy and serves on loopback.
    let c = rt
        .client()
        .inspect_container(&started.instance, None)
        .await
        .unwrap();
    assert_eq!(
        c.name.as_deref(),
        Some(format!("/{}", rt.container_name(&key)).as_str())
    );
    let labels = c.config.unwrap().labels.unwrap();
    assert_eq!(labels.get("io.aware.role").map(String::as_str), Some("web"));
    let policy = c.host_config.unwrap().restart_policy.unwrap().name.unwrap();
    assert_eq!(policy.to_string(), "no");
    // Idempotent: the same workload again returns the running container.
    assert_eq!(rt.start(&spec).await.unwrap().instance, started.instance);

    // docker kill: the exit arrives as an event.
    let kill = KillContainerOptionsBuilder::new().signal("KILL").build();
    rt.client()
        .kill_container(&started.instance, Some(kill))
        .await
        .unwrap();
    let exited = wait_for(DEADLINE, &mut events, &key, "exited", |o| {
        !o.state.is_alive()
    })
    .await;
    assert_eq!(exited.state, ReplicaState::Exited { code: Some(137) });
    assert_eq!(exited.instance, started.instance);

    // Started again: a new container, one restart, healthy again.
    let again = rt.start(&spec).await.unwrap();
    assert_ne!(again.instance, started.instance);
    assert_eq!(again.restarts, 1);
    wait_for(DEADLINE, &mut events, &key, "healthy again", |o| {
        o.state == ReplicaState::Healthy && o.instance == again.instance
    })
    .await;
    let docker_started_at = container_started_at(&rt, &again.instance).await;

    // Agent restart: a new runtime adopts the container without restarting it.
    drop(events);
    drop(rt);
    let rt = DockerRuntime::connect(config(NodeId(0x0d0c_0000_0000_0001)))
        .await
        .unwrap();
    let mut events = rt.subscribe();
    let adopted = rt.inspect(&key).await.unwrap().unwrap();
    assert_eq!(adopted.instance, again.instance, "same container");
    assert_eq!(
        adopted.started_at_unix_ms, again.started_at_unix_ms,
        "not restarted"
    );
    assert_eq!(adopted.restarts, 1);
    assert_eq!(
        container_started_at(&rt, &again.instance).await,
        docker_started_at
    );
    if adopted.state != ReplicaState::Healthy {
        wait_for(DEADLINE, &mut events, &key, "healthy after adoption", |o| {
            o.state == ReplicaState::Healthy
        })
        .await;
    }
    assert_eq!(rt.start(&spec).await.unwrap().instance, again.instance);

    rt.stop(&key).await.unwrap();
    let gone = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Ok(RuntimeEvent::Removed { key: k, instance }) = events.recv().await
                && k == key
            {
                return instance;
            }
        }
    })
    .await
    .expect("a destroy event");
    assert_eq!(gone, again.instance);
    assert!(rt.list().await.unwrap().is_empty());
    assert!(
        rt.client()
            .inspect_container(&again.instance, None)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_and_stopped_at_once_each_get_their_own_container() {
    let Some((rt, _cleanup)) = setup("at_once", 0x0d0c_0000_0000_0006).await else {
        return;
    };
    const N: u32 = 10;
    let keys: Vec<ReplicaKey> = (0..N).map(|i| ReplicaKey::new("c", "many", i)).collect();
    // Every start runs beside the others (one Docker runtime, striped locks); a start of one
    // replica twice at once must still give one container.
    let starts = keys.iter().chain(keys.iter().take(2)).map(|k| {
        let spec = StartSpec::new(k.clone(), sleeper());
        let rt = &rt;
        async move { rt.start(&spec).await }
    });
    let started = futures_util::future::join_all(starts).await;
    for o in &started {
        let o = o.as_ref().unwrap();
        assert_eq!(o.state, ReplicaState::Running, "{}", o.key);
    }
    let listed = rt.list().await.unwrap();
    assert_eq!(
        listed.len(),
        N as usize,
        "one container per replica: {listed:?}"
    );
    let names: std::collections::BTreeSet<String> =
        keys.iter().map(|k| rt.container_name(k)).collect();
    assert_eq!(names.len(), N as usize);
    let stops = keys.iter().map(|k| rt.stop(k));
    for r in futures_util::future::join_all(stops).await {
        r.unwrap();
    }
    assert!(rt.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlabelled_containers_are_left_alone() {
    let node = 0x0d0c_0000_0000_0002;
    let Some((rt, mut cleanup)) = setup("unlabelled", node).await else {
        return;
    };
    let key = ReplicaKey::new("c", "r", 0);
    let ours = rt.container_name(&key);
    // One with exactly our name and one with a similar name, neither with our labels.
    let similar = format!("{ours}-similar");
    for name in [&ours, &similar] {
        cleanup.containers.push(name.clone());
        let out = Command::new("docker")
            .args(["run", "-d", "--name", name, IMAGE, "sleep", "300"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Another node's container (labelled, but not with our node id).
    let other = DockerRuntime::connect(config(NodeId(node + 1)))
        .await
        .unwrap();
    let _other_cleanup = Cleanup {
        node: NodeId(node + 1),
        containers: vec![],
        volumes: vec![],
        dirs: vec![],
    };
    other
        .start(&StartSpec::new(ReplicaKey::new("c", "r", 5), sleeper()))
        .await
        .unwrap();

    assert!(rt.list().await.unwrap().is_empty(), "not ours: not listed");
    let err = rt
        .start(&StartSpec::new(key.clone(), sleeper()))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains(&ours), "{err}");
    rt.stop(&key).await.unwrap();
    rt.stop(&ReplicaKey::new("c", "r", 5)).await.unwrap();
    // A replica of ours next to them starts and stops without touching them.
    let mine = ReplicaKey::new("c", "r", 1);
    rt.start(&StartSpec::new(mine.clone(), sleeper()))
        .await
        .unwrap();
    assert_eq!(rt.list().await.unwrap().len(), 1);
    rt.stop(&mine).await.unwrap();
    for name in [&ours, &similar] {
        let c = rt.client().inspect_container(name, None).await.unwrap();
        assert_eq!(c.state.unwrap().running, Some(true), "{name} survived");
    }
    assert_eq!(
        other.list().await.unwrap().len(),
        1,
        "the other node's container survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_and_missing_gpus_give_clear_errors() {
    let Some((rt, _cleanup)) = setup("errors", 0x0d0c_0000_0000_0003).await else {
        return;
    };
    let image = "aware-no-such-image:1";
    let w = Workload {
        image: image.into(),
        ..sleeper()
    };
    let t0 = Instant::now();
    let err = rt
        .start(&StartSpec::new(ReplicaKey::new("c", "r", 0), w))
        .await
        .unwrap_err();
    println!("missing image error after {:?}: {err}", t0.elapsed());
    assert!(
        matches!(err, RuntimeError::ImageUnavailable { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(image) && text.contains("registry docker.io"),
        "{text}"
    );

    let gpu = ReplicaKey::new("c", "gpu", 0);
    let mut spec = StartSpec::new(
        gpu.clone(),
        Workload {
            gpus: 2,
            ..sleeper()
        },
    );
    spec.gpu_ids = vec![0, 1];
    match rt.start(&spec).await {
        // A host with the NVIDIA runtime really starts it; nothing to check then.
        Ok(_) => rt.stop(&gpu).await.unwrap(),
        Err(e) => {
            assert!(matches!(e, RuntimeError::GpuUnavailable { .. }), "{e}");
            assert!(e.to_string().contains("GPUs [0, 1]"), "{e}");
            assert!(
                rt.list().await.unwrap().is_empty(),
                "the Created container was removed"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_healthcheck_env_volumes_and_limits() {
    let node = 0x0d0c_0000_0000_0004;
    let Some((rt, mut cleanup)) = setup("settings", node).await else {
        return;
    };
    let host_dir = std::env::temp_dir().join(format!("aware-rt-docker-{}", std::process::id()));
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("in"), "from-host\n").unwrap();
    cleanup.dirs.push(host_dir.clone());
    let volume = format!("aware-test-vol-{node:x}");
    cleanup.volumes.push(volume.clone());
    let mut events = rt.subscribe();
    let key = ReplicaKey::new("c", "settings", 0);
    let w = Workload {
        image: IMAGE.into(),
        command: vec!["sh".into(), "-c".into()],
        args: vec![
            "cat /host/in > /host/out; echo \"$FOO $BAR\" >> /host/out; echo v > /vol/x; \
             sleep 1; touch /ready; exec sleep 3600"
                .into(),
        ],
        env: [
            ("FOO".to_owned(), "foo".to_owned()),
            ("BAR".to_owned(), "bar".to_owned()),
        ]
        .into(),
        volumes: vec![
            Volume {
                source: host_dir.display().to_string(),
                target: "/host".into(),
                read_only: false,
            },
            Volume {
                source: volume.clone(),
                target: "/vol".into(),
                read_only: false,
            },
        ],
        health: Some(HealthCheck {
            probe: Probe::Exec {
                command: vec!["test".into(), "-f".into(), "/ready".into()],
            },
            interval_ms: 250,
            timeout_ms: 1_000,
            retries: 3,
            start_period_ms: 5_000,
        }),
        limits: Limits {
            cpu_millis: Some(250),
            memory_mib: Some(64),
        },
        ..Workload::default()
    };
    let mut spec = StartSpec::new(key.clone(), w);
    spec.extra_env.insert("BAR".into(), "extra".into());
    let started = rt.start(&spec).await.unwrap();
    assert_eq!(started.state, ReplicaState::Starting);
    // Docker runs the exec probe (HEALTHCHECK CMD) and its health_status event is reported.
    wait_for(DEADLINE, &mut events, &key, "healthy", |o| {
        o.state == ReplicaState::Healthy
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(host_dir.join("out")).unwrap(),
        "from-host\nfoo extra\n"
    );
    let c = rt
        .client()
        .inspect_container(&started.instance, None)
        .await
        .unwrap();
    let hc = c.host_config.unwrap();
    assert_eq!(hc.nano_cpus, Some(250_000_000));
    assert_eq!(hc.memory, Some(64 * 1024 * 1024));
    let check = c.config.unwrap().healthcheck.unwrap();
    assert_eq!(check.test.unwrap(), ["CMD", "test", "-f", "/ready"]);
    let mounts = c.mounts.unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.name.as_deref() == Some(volume.as_str())),
        "{mounts:?}"
    );
    rt.stop(&key).await.unwrap();
}

/// Idle CPU of a runtime supervising 20 containers (events only, no probes), and the start
/// latency of those 20 containers with a local image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement (about 40 s); run by hand"]
async fn measure_idle_cpu_with_20_containers() {
    let Some((rt, _cleanup)) = setup("measure", 0x0d0c_0000_0000_0005).await else {
        return;
    };
    let mut ms = Vec::new();
    for i in 0..20 {
        let t0 = Instant::now();
        let o = rt
            .start(&StartSpec::new(ReplicaKey::new("m", "idle", i), sleeper()))
            .await
            .unwrap();
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        assert_eq!(o.state, ReplicaState::Running);
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "container start latency over 20 (local image): p50 {:.0} ms, max {:.0} ms",
        ms[10], ms[19]
    );
    assert_eq!(rt.list().await.unwrap().len(), 20);
    tokio::time::sleep(Duration::from_secs(2)).await; // let the start events settle
    let cpu_ticks = || {
        let s = std::fs::read_to_string("/proc/self/stat").unwrap();
        // Fields after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime: utime and stime are the 12th and 13th.
        let f: Vec<&str> = s.rsplit_once(')').unwrap().1.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let window = Duration::from_secs(30);
    let (c0, t0) = (cpu_ticks(), Instant::now());
    tokio::time::sleep(window).await;
    let (c1, elapsed) = (cpu_ticks(), t0.elapsed());
    let cpu_s = (c1 - c0) as f64 / 100.0; // USER_HZ
    println!(
        "idle with 20 containers: {:.3} s CPU in {:.1} s = {:.2}% of one core",
        cpu_s,
        elapsed.as_secs_f64(),
        100.0 * cpu_s / elapsed.as_secs_f64()
    );
    for i in 0..20 {
        rt.stop(&ReplicaKey::new("m", "idle", i)).await.unwrap();
    }
}
