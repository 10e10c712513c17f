//! The Docker runtime in a real colony: three `aware-agent run --runtime docker` processes on
//! loopback (each publishing on its own 127.0.44.x address) run `examples/colonies/demo-docker.yaml`
//! with the locally built image `aware-busybox:local` (`.ci/build-image.sh`, built here if
//! missing; no registry). Covered: every replica's container healthy through the agent's probes,
//! the latency from the committed plan to each container running (printed), and an agent
//! SIGKILLed and started again adopting its containers (same container id and start time).
//! Skips with a message when Docker is absent (or `AWARE_SKIP_DOCKER=1`).
//!
//! `cargo test -p aware-agent --release --test workloads_docker -- --nocapture` prints the
//! figures; `-- --ignored --nocapture` measures the idle CPU of an agent supervising 20
//! containers.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests: panics report, clocks time

mod hive;

use hive::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const IMAGE: &str = "aware-busybox:local";
/// demo-docker.yaml: 3 front-end, 2 middleware, 1 store.
const DEMO_REPLICAS: usize = 6;

/// Removes every container of a colony when dropped (the agents leave them running on purpose).
struct Containers(&'static str);

impl Containers {
    fn ids(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=io.aware.colony={}", self.0))
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
    }

    fn remove_all(&self) {
        let ids = self.ids();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// Docker answers and the image exists (built if missing); `false` after a skip line.
fn docker_ready(test: &str) -> bool {
    if std::env::var("AWARE_SKIP_DOCKER").as_deref() == Ok("1") {
        println!("skipping {test}: AWARE_SKIP_DOCKER=1");
        return false;
    }
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    if !info.is_ok_and(|o| o.status.success()) {
        println!("skipping {test}: Docker is absent or not running");
        return false;
    }
    let have = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/build-image.sh");
        let status = Command::new("bash").arg(script).status().unwrap();
        assert!(status.success(), "{script} failed: cannot build {IMAGE}");
    }
    true
}

fn spec_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/colonies")
        .join(name)
}

#[test]
fn docker_colony_runs_the_demo_and_a_restarted_agent_adopts_its_containers() {
    if !docker_ready("docker_colony") {
        return;
    }
    let t0 = Instant::now();
    let containers = Containers("wldock");
    containers.remove_all();
    let (mut hive, s, latencies) = running_demo(
        44,
        3,
        "docker",
        &spec_path("demo-docker.yaml"),
        DEMO_REPLICAS,
    );
    print_latencies("container", &latencies, &["store"]);
    assert_eq!(containers.ids().len(), DEMO_REPLICAS);
    // A replica answers with its identity (generated from the AWARE_* variables).
    let st = &s[0].1;
    let ip = &hive.nodes[s[0].0].ip;
    let answer = http_get(&format!("{ip}:8080")).unwrap();
    assert_eq!(answer["role"], "front-end");
    assert_eq!(answer["node"], st.node.to_string());

    // kill -9 an agent and start it again: same containers, not restarted.
    let (qi, _) = queen(&s).unwrap();
    let worker = hive.running().into_iter().find(|i| *i != qi).unwrap();
    let mine: BTreeMap<_, _> = instances(&s, worker);
    assert!(!mine.is_empty());
    hive.kill_agent(worker);
    hive.start(worker);
    let (adopted, _) = hive.wait_for("the restarted agent adopting its containers", WAIT, |s| {
        let st = &s.iter().find(|(i, _)| *i == worker)?.1;
        let w = st.workloads.as_ref()?;
        let now = instances(s, worker);
        (w.desired_version.is_some() && now.len() >= mine.len()).then_some(now)
    });
    assert_eq!(adopted, mine, "containers after kill -9 and a restart");
    let (_, _) = hive.wait_for("every replica healthy again", WAIT, |s| {
        all_healthy(s, &BTreeSet::new(), DEMO_REPLICAS)
    });
    println!("wall: {} ms", t0.elapsed().as_millis());
}

/// (role, replica) → (container id, started at) on agent `i`.
fn instances(
    s: &[(usize, aware_agent::Status)],
    i: usize,
) -> BTreeMap<(String, u32), (String, u64)> {
    s.iter()
        .filter(|(j, _)| *j == i)
        .flat_map(|(_, st)| st.workloads.iter().flat_map(|w| w.local.iter()))
        .filter_map(|l| {
            let id = l.instance.clone()?;
            Some(((l.role.clone(), l.replica), (id, l.started_at_unix_ms)))
        })
        .collect()
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn measure_idle_agent_cpu_with_20_containers() {
    if !docker_ready("idle_cpu") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let spec = root.path().join("idle.yaml");
    std::fs::write(
        &spec,
        "colony: idle\nroles:\n  idle:\n    replicas: 20\n    needs: {cpu: 10m, memory: 8Mi}\n    \
         workload:\n      image: aware-busybox:local\n      command: [sleep, '3600']\n      \
         restart: always\n",
    )
    .unwrap();
    let containers = Containers("wldock");
    containers.remove_all();
    let (hive, _, latencies) = running_demo(45, 1, "docker", &spec, 20);
    print_latencies("container (20 at once)", &latencies, &["idle"]);
    let pid = hive.nodes[0].child.as_ref().unwrap().id();
    let ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        let f: Vec<&str> = after.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    std::thread::sleep(Duration::from_secs(2));
    let (c0, t0) = (ticks(), Instant::now());
    std::thread::sleep(Duration::from_secs(30));
    let (c1, dt) = (ticks(), t0.elapsed());
    let pct = (c1 - c0) as f64 / 100.0 / dt.as_secs_f64() * 100.0;
    println!(
        "figure: idle agent supervising 20 containers: {:.2} s CPU in {:.1} s = {pct:.2}% of one core",
        (c1 - c0) as f64 / 100.0,
        dt.as_secs_f64()
    );
    assert_eq!(containers.ids().len(), 20);
    drop(hive);
}
