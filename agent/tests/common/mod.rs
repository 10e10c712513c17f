//! Real `aware-agent run` processes on loopback for the colony tests: free ports, a data
//! directory and log per agent, `status --json` polling with a deadline, and a guard that kills
//! every child it started (by pid) even when a test panics.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    dead_code
)] // tests read the clock for deadlines and probe free ports

use aware_agent::Status;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_aware-agent");

/// Runs `cmd` to its end with stdout discarded and stderr captured, killing it with SIGKILL if
/// it is still running after `limit` (a guard, not a synchronisation: a command that should
/// stop by itself but does not fails its test instead of hanging CI). Exit code (-1 when
/// killed) and stderr.
pub fn output_within(cmd: &mut Command, limit: Duration) -> (i32, String) {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let guard = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done_tx.send(());
    guard.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `n` UDP ports free right now (the agent's one port carries gossip and QUIC).
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let l = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        held.push(l);
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

pub struct Agent {
    pub port: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
}

/// A colony of agent processes; dropping it kills every child still running.
pub struct Colony {
    pub root: tempfile::TempDir,
    /// The local colony's CA directory (`ca init`): every agent self-issues its certificate
    /// from it, and the CLI uses its admin certificate.
    pub ca: PathBuf,
    pub agents: Vec<Agent>,
    pub seeds: String,
    pub expect: usize,
    /// Per agent, the port its `/metrics` listens on; `None`: metrics off.
    pub metrics_ports: Option<Vec<u16>>,
    /// More `AWARE_*` variables for every agent (e.g. discovery).
    pub extra_env: Vec<(String, String)>,
}

impl Colony {
    /// Prepares `n` agents (none started). The first three are the seeds.
    pub fn new(n: usize) -> Colony {
        let root = tempfile::tempdir().unwrap();
        let ca = root.path().join("ca");
        aware_agent::trust::init_local_colony(&ca, "test").unwrap();
        let ports = free_ports(n);
        let seeds = ports
            .iter()
            .take(3)
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let agents = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| Agent {
                port,
                dir: root.path().join(format!("agent{i}")),
                child: None,
            })
            .collect();
        Colony {
            root,
            ca,
            agents,
            seeds,
            // Every agent boots together: a smaller value lets two disjoint majorities of
            // `bootstrap_expect` crown two queens in one term at cold start.
            expect: n,
            metrics_ports: None,
            extra_env: Vec::new(),
        }
    }

    pub fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.agents[i].port)
    }

    pub fn log(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("agent{i}.log"))
    }

    /// Starts agent `i` (again, after a kill: same port and data directory).
    pub fn start(&mut self, i: usize) {
        assert!(self.agents[i].child.is_none(), "agent {i} already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(i))
            .unwrap();
        let mut cmd = Command::new(BIN);
        if !self.seeds.is_empty() {
            cmd.env("AWARE_SEEDS", &self.seeds);
        }
        let child = cmd
            .arg("run")
            .env("AWARE_COLONY", "test")
            .env("AWARE_CA_DIR", &self.ca)
            .env("AWARE_DATA_DIR", &self.agents[i].dir)
            .env("AWARE_BIND", self.addr(i))
            .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("AWARE_BOOTSTRAP_EXPECT", self.expect.to_string())
            .env("AWARE_LOG_FORMAT", "json")
            // These colonies test election and replication with image-only specs: no workloads.
            .env("AWARE_RUNTIME", "none")
            .env(
                "AWARE_METRICS_BIND",
                self.metrics_ports
                    .as_ref()
                    .map_or_else(|| "off".to_owned(), |p| format!("127.0.0.1:{}", p[i])),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents[i].child = Some(child);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.agents.len() {
            self.start(i);
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.agents.len())
            .filter(|i| self.agents[*i].child.is_some())
            .collect()
    }

    /// `aware-agent status --json` against agent `i`; `None` if it does not answer.
    pub fn status(&self, i: usize) -> Option<Status> {
        let out = Command::new(BIN)
            .args(["status", "--json", "--advertise", &self.addr(i)])
            .env("AWARE_ADMIN_DIR", &self.ca)
            .env_remove("AWARE_CONFIG")
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Statuses of every running agent, or `None` if any does not answer.
    pub fn statuses(&self) -> Option<Vec<(usize, Status)>> {
        self.running()
            .into_iter()
            .map(|i| self.status(i).map(|s| (i, s)))
            .collect()
    }

    /// `aware-agent apply FILE` through agent `i`: (exit code, stdout, stderr).
    pub fn apply(&self, i: usize, spec: &Path) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(["apply", "--json", "--advertise", &self.addr(i)])
            .arg(spec)
            .env("AWARE_ADMIN_DIR", &self.ca)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Polls every running agent until `ok` holds for all of their statuses, or panics after
    /// `limit` with the last statuses and the logs' tails.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        ok: impl Fn(&[(usize, Status)]) -> bool,
    ) -> Vec<(usize, Status)> {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < limit {
            if let Some(s) = self.statuses() {
                if ok(&s) {
                    return s;
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut report = format!("timed out after {limit:?} waiting for {what}\n");
        for (i, s) in last.unwrap_or_default() {
            report.push_str(&format!(
                "agent {i}: {:?} term {} queen {:?} up {} committed {} spec {:?}\n",
                s.role,
                s.term,
                s.queen.map(|q| q.node),
                s.members_up(),
                s.committed,
                s.spec
            ));
        }
        for i in 0..self.agents.len() {
            let log = std::fs::read_to_string(self.log(i)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            report.push_str(&format!("--- agent {i} log tail:\n{}\n", tail.join("\n")));
        }
        panic!("{report}");
    }
}

impl Drop for Colony {
    fn drop(&mut self) {
        for a in &mut self.agents {
            if let Some(mut c) = a.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Every running agent names the same live queen, and she says she is queen.
pub fn one_queen(s: &[(usize, Status)]) -> Option<aware_agent::swarm_core::NodeId> {
    let q = s.first()?.1.queen?.node;
    let all_agree = s.iter().all(|(_, st)| st.queen.map(|x| x.node) == Some(q));
    let she = s
        .iter()
        .any(|(_, st)| st.node == q && st.role == aware_agent::status::RoleName::Queen);
    (all_agree && she).then_some(q)
}

/// Every running agent sees all the others up.
pub fn all_known(s: &[(usize, Status)]) -> bool {
    let n = s.len();
    s.iter().all(|(_, st)| st.members_up() + 1 >= n)
}

/// Every running agent sees all the others up, every one of them is a voting member of the
/// newest colony state, and that state is committed. Tests that kill the queen of a 3-agent
/// colony wait for this first: a queen crowned by a bare majority before the third agent was
/// known reigns over a committed roster of 2 until the third is admitted (at its first
/// heartbeat ack), and losing her in that window leaves no majority of that roster
/// (docs/election.md, "Cold start"; `sim/scenarios/late-third.yaml`).
pub fn roster_settled(s: &[(usize, Status)]) -> bool {
    all_known(s)
        && s.iter().all(|(_, st)| {
            st.committed == st.version
                && st.members.iter().filter(|m| m.roster).count() + 1 >= s.len()
        })
}

/// A small spec of our own: an image and tiny needs, so every node can take it.
pub fn small_spec(dir: &Path) -> PathBuf {
    let path = dir.join("small.yaml");
    std::fs::write(
        &path,
        "colony: small\nroles:\n  web:\n    replicas: 3\n    needs: {cpu: 10m, memory: 16Mi}\n    \
         workload:\n      image: busybox:1.36\n  cache:\n    replicas: 2\n    \
         needs: {cpu: 10m, memory: 16Mi}\n    workload:\n      image: redis:7\n",
    )
    .unwrap();
    path
}
