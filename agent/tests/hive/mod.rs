//! A colony of real `aware-agent run` processes on loopback running workloads, for
//! `workloads_colony.rs` and `workloads_docker.rs`: each agent on its own loopback address
//! (127.0.NET.10+i, so every node can publish the same ports), `status --json` polling with a
//! deadline, and a guard that kills every agent and the workload process groups their state
//! files name when dropped or after [`KILL_DEADLINE`] (a watchdog thread), whatever the test
//! does.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    dead_code
)] // tests: panics report, clocks time, sockets to the workloads

use aware_agent::Status;
use aware_agent::swarm_core::NodeId;
use aware_agent::swarm_core::wire::ReplicaState;
use aware_agent::workloads::ReplicaScope;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_aware-agent");
/// Everything a test started is killed after this, whatever the test is doing.
pub const KILL_DEADLINE: Duration = Duration::from_secs(90);
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Node {
    pub ip: String,
    pub port: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
}

/// Pids to kill: agents by pid, workloads by process group (read from the state files).
#[derive(Default)]
pub struct Reaper {
    agents: Mutex<BTreeSet<u32>>,
    dirs: Mutex<Vec<PathBuf>>,
}

impl Reaper {
    pub fn kill_all(&self) {
        for pid in self.agents.lock().unwrap().iter() {
            kill(*pid, false);
        }
        for dir in self.dirs.lock().unwrap().iter() {
            for pid in workload_pids(dir) {
                kill(pid, true);
            }
        }
    }
}

pub fn kill(pid: u32, group: bool) {
    let Some(p) = i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = if group {
        rustix::process::kill_process_group(p, rustix::process::Signal::KILL)
    } else {
        rustix::process::kill_process(p, rustix::process::Signal::KILL)
    };
}

/// The pids the process runtime recorded under a data directory.
pub fn workload_pids(dir: &Path) -> Vec<u32> {
    let text = std::fs::read_to_string(dir.join("process/state.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["replicas"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["pid"].as_u64())
                .filter_map(|p| u32::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A colony of agent processes on 127.0.`net`.(10+i).
pub struct Hive {
    pub root: tempfile::TempDir,
    /// The colony's CA directory (`aware-agent ca init`).
    pub key: PathBuf,
    pub nodes: Vec<Node>,
    pub seeds: String,
    pub runtime: &'static str,
    pub colony: &'static str,
    reaper: Arc<Reaper>,
    done: Arc<AtomicBool>,
}

impl Hive {
    pub fn new(net: u8, n: usize, runtime: &'static str, colony: &'static str) -> Hive {
        let root = tempfile::tempdir().unwrap();
        // A local colony: every agent self-issues its certificate from this CA directory, the
        // CLI uses its admin certificate.
        let key = root.path().join("ca");
        aware_agent::trust::init_local_colony(&key, colony).unwrap();
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let ip = format!("127.0.{net}.{}", 10 + i);
                // A port free for TCP on this address (UDP on it is then almost surely free).
                let l = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
                let port = l.local_addr().unwrap().port();
                Node {
                    ip,
                    port,
                    dir: root.path().join(format!("node{i}")),
                    child: None,
                }
            })
            .collect();
        let seeds = nodes
            .iter()
            .take(3)
            .map(|n| format!("{}:{}", n.ip, n.port))
            .collect::<Vec<_>>()
            .join(",");
        let reaper = Arc::new(Reaper::default());
        reaper
            .dirs
            .lock()
            .unwrap()
            .extend(nodes.iter().map(|n| n.dir.clone()));
        let done = Arc::new(AtomicBool::new(false));
        let (r, d) = (reaper.clone(), done.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            while !d.load(Ordering::Relaxed) {
                if start.elapsed() > KILL_DEADLINE {
                    eprintln!("kill deadline passed: killing every agent and workload");
                    r.kill_all();
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Hive {
            root,
            key,
            nodes,
            seeds,
            runtime,
            colony,
            reaper,
            done,
        }
    }

    pub fn addr(&self, i: usize) -> String {
        format!("{}:{}", self.nodes[i].ip, self.nodes[i].port)
    }

    pub fn log(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("node{i}.log"))
    }

    pub fn start(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(i))
            .unwrap();
        // demo.yaml runs `aware-agent workload http`: the binary under test, first on PATH.
        let bin_dir = Path::new(BIN).parent().unwrap();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new(BIN)
            .arg("run")
            .env("PATH", path)
            .env("AWARE_COLONY", self.colony)
            .env("AWARE_CA_DIR", &self.key)
            .env("AWARE_METRICS_BIND", "off")
            .env("AWARE_DATA_DIR", &self.nodes[i].dir)
            .env("AWARE_BIND", self.addr(i))
            .env("AWARE_SEEDS", &self.seeds)
            .env("AWARE_BOOTSTRAP_EXPECT", self.nodes.len().to_string())
            .env("AWARE_RUNTIME", self.runtime)
            .env("AWARE_LOG_FORMAT", "json")
            .env_remove("AWARE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.reaper.agents.lock().unwrap().insert(child.id());
        self.nodes[i].child = Some(child);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    /// SIGKILL the agent only: its workloads keep running (an agent crash).
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL the agent and every workload it ran (the machine is lost).
    pub fn kill_machine(&mut self, i: usize) {
        self.kill_agent(i);
        for pid in workload_pids(&self.nodes[i].dir) {
            kill(pid, true);
        }
    }

    /// SIGTERM and wait: the agent's clean shutdown.
    pub fn stop_agent(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            kill_term(c.id());
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "agent {i} ignored SIGTERM");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .collect()
    }

    pub fn cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .args(["--advertise", &self.addr(i)])
            .env("AWARE_ADMIN_DIR", &self.key)
            .env_remove("AWARE_CONFIG")
            .output()
            .unwrap()
    }

    pub fn status(&self, i: usize) -> Option<Status> {
        let out = self.cli(i, &["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn statuses(&self) -> Option<Vec<(usize, Status)>> {
        self.running()
            .into_iter()
            .map(|i| self.status(i).map(|s| (i, s)))
            .collect()
    }

    pub fn apply(&self, i: usize, spec: &Path) {
        let out = self.cli(i, &["apply", "--json", spec.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        ok: impl Fn(&[(usize, Status)]) -> Option<T>,
    ) -> (T, Vec<(usize, Status)>) {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < limit {
            if let Some(s) = self.statuses() {
                if let Some(t) = ok(&s) {
                    return (t, s);
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut report = format!("timed out after {limit:?} waiting for {what}\n");
        for (i, s) in last.unwrap_or_default() {
            report.push_str(&format!("--- node {i}:\n{}", s.render()));
        }
        for i in 0..self.nodes.len() {
            let log = std::fs::read_to_string(self.log(i)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            report.push_str(&format!("--- node {i} log tail:\n{}\n", tail.join("\n")));
        }
        panic!("{report}");
    }
}

impl Drop for Hive {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.reaper.kill_all();
    }
}

pub fn kill_term(pid: u32) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
}

/// The queen every running agent names, if they agree and she says so.
pub fn queen(s: &[(usize, Status)]) -> Option<(usize, NodeId)> {
    let q = s.first()?.1.queen?.node;
    if !s.iter().all(|(_, st)| st.queen.map(|x| x.node) == Some(q)) {
        return None;
    }
    s.iter()
        .find(|(_, st)| st.node == q && st.role == aware_agent::status::RoleName::Queen)
        .map(|(i, _)| (*i, q))
}

pub fn all_up(s: &[(usize, Status)]) -> bool {
    s.iter().all(|(_, st)| st.members_up() + 1 >= s.len())
}

/// The queen's colony-wide rows, when all `replicas` of the plan are healthy (or running,
/// without a health check) and none sits on a
/// node in `not_on`.
pub fn all_healthy(
    s: &[(usize, Status)],
    not_on: &BTreeSet<NodeId>,
    replicas: usize,
) -> Option<Vec<aware_agent::workloads::ReplicaInfo>> {
    let (qi, _) = queen(s)?;
    let st = &s.iter().find(|(i, _)| *i == qi)?.1;
    let w = st.workloads.as_ref()?;
    if w.scope != ReplicaScope::Colony || st.committed != st.version {
        return None;
    }
    let ok = w.replicas.len() == replicas
        && w.replicas.iter().all(|r| {
            matches!(r.state, Some(ReplicaState::Healthy | ReplicaState::Running))
                && !not_on.contains(&r.node)
        });
    ok.then(|| w.replicas.clone())
}

/// (role, replica) → (pid, started_at) of what each running agent's reconciler runs.
pub fn local_instances(s: &[(usize, Status)]) -> BTreeMap<(String, u32), (usize, u32, u64)> {
    let mut out = BTreeMap::new();
    for (i, st) in s {
        for l in st.workloads.iter().flat_map(|w| w.local.iter()) {
            if let Some(pid) = l.pid {
                out.insert((l.role.clone(), l.replica), (*i, pid, l.started_at_unix_ms));
            }
        }
    }
    out
}

/// `GET /` on a replica: the JSON it answers.
pub fn http_get(addr: &str) -> Option<serde_json::Value> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// When each replica's process or container started, measured on one machine's clock.
#[derive(Clone, Debug)]
pub struct StartLatency {
    pub role: String,
    /// Since the node running it first saw the plan committed (for a worker: the queen's next
    /// heartbeat after her commit).
    pub since_node_ms: u64,
    /// Since the queen committed the plan.
    pub since_commit_ms: u64,
}

/// Starts `n` agents, applies `spec` and waits until its `replicas` are healthy. Returns the
/// statuses and when each replica started (of replicas with `depends-on`, the time includes
/// waiting for their dependencies to become healthy).
pub fn running_demo(
    net: u8,
    n: usize,
    runtime: &'static str,
    spec: &Path,
    replicas: usize,
) -> (Hive, Vec<(usize, Status)>, Vec<StartLatency>) {
    let colony = if runtime == "docker" { "wldock" } else { "wl" };
    let mut hive = Hive::new(net, n, runtime, colony);
    hive.start_all();
    let ((qi, _), _) = hive.wait_for("one queen known to all", WAIT, |s| {
        queen(s).filter(|_| all_up(s))
    });
    hive.apply(qi, spec);
    let (_, s) = hive.wait_for("every replica healthy", WAIT, |s| {
        all_healthy(s, &BTreeSet::new(), replicas)
    });
    let desired_at = |st: &Status| st.workloads.as_ref().map_or(0, |w| w.desired_at_unix_ms);
    let committed_at = s
        .iter()
        .find(|(i, _)| *i == qi)
        .map(|(_, st)| desired_at(st))
        .unwrap();
    let mut out = Vec::new();
    for (_, st) in &s {
        for l in st.workloads.iter().flat_map(|w| w.local.iter()) {
            out.push(StartLatency {
                role: l.role.clone(),
                since_node_ms: l.started_at_unix_ms.saturating_sub(desired_at(st)),
                since_commit_ms: l.started_at_unix_ms.saturating_sub(committed_at),
            });
        }
    }
    (hive, s, out)
}

/// The start-latency lines a test prints, for the replicas of `roots` (roles without
/// `depends-on`) and for all.
pub fn print_latencies(what: &str, l: &[StartLatency], roots: &[&str]) {
    let pick = |f: fn(&StartLatency) -> u64, only_roots: bool| {
        l.iter()
            .filter(|x| !only_roots || roots.contains(&x.role.as_str()))
            .map(f)
            .collect::<Vec<u64>>()
    };
    println!(
        "figure: plan committed -> {what} running, roles without depends-on: since the node saw \
         the commit {}; since the queen committed {}",
        ms_summary(pick(|x| x.since_node_ms, true)),
        ms_summary(pick(|x| x.since_commit_ms, true))
    );
    println!(
        "figure: plan committed -> {what} running, every replica (dependents wait for their \
         dependencies' health checks): since the queen committed {}",
        ms_summary(pick(|x| x.since_commit_ms, false))
    );
}

/// `p50 X ms, max Y ms over N`.
pub fn ms_summary(mut v: Vec<u64>) -> String {
    v.sort_unstable();
    if v.is_empty() {
        return "none".into();
    }
    format!(
        "p50 {} ms, max {} ms over {}",
        v[v.len() / 2],
        v[v.len() - 1],
        v.len()
    )
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The Unix ms of a JSON log line's `"timestamp":"YYYY-MM-DDTHH:MM:SS.ffffffZ"`.
pub fn log_line_ms(line: &str) -> Option<u64> {
    let t = line.split("\"timestamp\":\"").nth(1)?.get(..26)?;
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 86_400 + hh * 3_600 + mm * 60 + ss) * 1_000) + us / 1_000;
    u64::try_from(ms).ok()
}

impl Hive {
    /// When agent `i` first logged `member down` for `node` at or after `since` (Unix ms).
    pub fn member_down_at(&self, i: usize, node: NodeId, since: u64) -> Option<u64> {
        let log = std::fs::read_to_string(self.log(i)).ok()?;
        let id = format!("\"member\":\"{node}\"");
        log.lines()
            .filter(|l| l.contains("member down") && l.contains(&id))
            .filter_map(log_line_ms)
            .find(|t| *t >= since)
    }
}

#[test]
fn log_timestamps_convert_to_unix_ms() {
    let line = r#"{"timestamp":"2026-12-02T07:26:50.476856Z","level":"INFO"}"#;
    assert_eq!(log_line_ms(line), Some(1_796_196_410_476));
}
