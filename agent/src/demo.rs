//! `aware-agent demo`: a local colony of real agent processes on loopback. It owns the demo's
//! life cycle: a temp directory (a data directory, log and key per agent), N `aware-agent run`
//! children of this very binary (agent `i` on its own loopback address `127.0.0.(i+1)`, so the
//! replicas of different nodes can listen on the same ports), the timeline it prints as it polls
//! every agent's status (discovery, the crowning, the spec applied, assignments), an optional
//! `kill -9` of the queen, and the cleanup on exit and on Ctrl-C/SIGTERM (children stopped, the
//! directory removed; each child also gets SIGTERM from the kernel if the demo dies, see
//! [`die_with_parent`]). With `--json` the timeline goes to stderr and stdout holds one
//! [`Report`].
//!
//! How a node is secured and which runtime runs its replicas is said in one place,
//! [`node_args`] (the `run` flags) and [`Client`] (how the demo asks an agent), so a change of
//! `run`'s credentials or runtime flags touches only those.

// The demo is I/O through and through: it reads the clock for its timeline and probes loopback
// ports (UDP and TCP) for its agents.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::control::{ControlRequest, ControlResponse};
use crate::status::{AppliedPlan, RoleName, Status};
use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use swarm_core::NodeId;
use tokio::process::{Child, Command};

/// The environment variable that tells `run` its parent is the demo (its pid).
pub const PARENT_ENV: &str = "AWARE_DEMO_PARENT";
/// Most agents a demo starts (one loopback address each, 127.0.0.1 ..= 127.0.0.250).
pub const MAX_NODES: usize = 250;
/// How often every agent's status is polled.
pub const POLL_MS: u64 = 50;
/// How long a stopping agent gets after SIGTERM before SIGKILL.
pub const STOP_GRACE_MS: u64 = 3_000;
/// How long a status request may take.
pub const STATUS_TIMEOUT_MS: u64 = 300;
/// How long the demo waits for the spec's plan to commit.
pub const APPLY_TIMEOUT_MS: u64 = 30_000;
/// The default spec for the process runtime (a small web tier of built-in HTTP workloads).
pub const DEMO_SPEC: &str = include_str!("../../examples/colonies/demo.yaml");
/// The default spec for the Docker runtime (the same roles in the locally built busybox image).
pub const DEMO_DOCKER_SPEC: &str = include_str!("../../examples/colonies/demo-docker.yaml");

/// What runs the replicas of the demo's agents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DemoRuntime {
    /// Child processes (no Docker needed).
    #[default]
    Process,
    /// Docker containers.
    Docker,
}

/// `aware-agent demo` flags.
#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// How many agents to start.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=MAX_NODES as i64))]
    pub nodes: u16,
    /// Colony spec to apply once a queen is crowned (default: the built-in demo web tier,
    /// examples/colonies/demo.yaml, or demo-docker.yaml with `--runtime docker`).
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// `kill -9` the queen this long after the agents started (e.g. `3s`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub kill_queen_after: Option<Duration>,
    /// Stop the colony and exit this long after the agents started (default: at Ctrl-C).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub exit_after: Option<Duration>,
    /// Print one JSON report on stdout at exit (the timeline goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// What runs the replicas.
    #[arg(long, value_enum, default_value_t = DemoRuntime::Process)]
    pub runtime: DemoRuntime,
}

/// One failover: times in seconds since the last agent was started.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failover {
    /// When the queen was killed.
    pub queen_lost_s: f64,
    /// When a new queen was first seen reigning.
    pub new_queen_s: f64,
}

/// What `--json` prints. Times are seconds since the last agent was started (all start within
/// milliseconds), measured by polling every agent's status every [`POLL_MS`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Agents started.
    pub nodes: usize,
    /// The queen at exit (16 hex digits), if any.
    pub queen: Option<String>,
    /// When a queen was first seen reigning.
    pub first_queen_s: Option<f64>,
    /// When every agent first saw every other up.
    pub membership_converged_s: Option<f64>,
    /// Each kill of the queen and when her successor reigned.
    pub failovers: Vec<Failover>,
    /// Replicas the committed plan assigns, summed over the running agents.
    pub assignments: usize,
    /// Replicas the running agents report running or healthy.
    pub running_workloads: usize,
    /// Largest resident set of any agent seen during the run, in MB.
    pub rss_mb_max: f64,
}

// ---------------------------------------------------------------------------------------------
// Credentials and runtime: the only place that knows `run`'s security and runtime flags and how
// to ask an agent (a colony CA directory every agent self-issues from; the admin certificate
// over the mutual-TLS QUIC control plane).

/// Credentials shared by the demo's agents and its client, made once under the demo directory.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// `aware-agent ca init`'s directory: the CA, the admin certificate, the gossip keyring.
    ca_dir: PathBuf,
}

impl Credentials {
    /// Creates the colony's credentials under `root`.
    pub fn create(root: &Path) -> anyhow::Result<Credentials> {
        let ca_dir = root.join("ca");
        crate::trust::init_local_colony(&ca_dir, "demo")
            .with_context(|| format!("{}: cannot create the colony CA", ca_dir.display()))?;
        Ok(Credentials { ca_dir })
    }
}

/// The `aware-agent run` arguments for agent `index`'s credentials and workload runtime.
pub fn node_args(creds: &Credentials, runtime: DemoRuntime, _index: usize) -> Vec<OsString> {
    let runtime = match runtime {
        DemoRuntime::Process => "process",
        DemoRuntime::Docker => "docker",
    };
    vec![
        "--stop-workloads".into(),
        "--ca-dir".into(),
        creds.ca_dir.clone().into(),
        "--runtime".into(),
        runtime.into(),
    ]
}

/// How the demo asks its agents (status, apply): one admin endpoint whose connections are
/// reused, so polling every agent every [`POLL_MS`] costs no new handshake.
#[derive(Clone, Debug)]
pub struct Client {
    admin: crate::control_plane::AdminClient,
}

impl Client {
    /// The admin client for agents on loopback (`ca init` writes the admin certificate into
    /// the CA directory).
    pub async fn connect(creds: &Credentials) -> anyhow::Result<Client> {
        let loopback = SocketAddr::new(node_ip(0), 0);
        let admin = crate::control_plane::AdminClient::connect(&creds.ca_dir, loopback).await?;
        Ok(Client { admin })
    }

    async fn ask(&self, addr: SocketAddr, request: ControlRequest) -> Option<ControlResponse> {
        self.admin.agent(addr, request).await.ok()
    }
}

/// How many replicas are running or healthy, each counted once: by the node it is assigned to,
/// as that node's own status reports it (a worker's table holds its own replicas, the queen's
/// the colony's, so only each node's own rows are counted).
fn running_workloads(statuses: &[&Status]) -> usize {
    statuses
        .iter()
        .filter_map(|s| s.workloads.as_ref().map(|w| (s.node, w)))
        .map(|(node, w)| {
            w.replicas
                .iter()
                .filter(|r| r.node == node)
                .filter(|r| {
                    matches!(
                        r.state,
                        Some(
                            crate::swarm_core::wire::ReplicaState::Running
                                | crate::swarm_core::wire::ReplicaState::Healthy
                        )
                    )
                })
                .count()
        })
        .sum()
}
// ---------------------------------------------------------------------------------------------

/// Called first thing by `aware-agent run`: if the demo started this process, ask the kernel
/// for SIGTERM when the demo dies (even by `kill -9`), and stop now if it already has.
pub fn die_with_parent() -> anyhow::Result<()> {
    let Some(parent) = std::env::var_os(PARENT_ENV) else {
        return Ok(());
    };
    let parent: i32 = parent
        .to_str()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("{PARENT_ENV} is not a process id"))?;
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
        .context("cannot ask for a signal at the demo's death")?;
    // The demo may have died between the spawn and the request above.
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        anyhow::bail!("the demo that started this agent is gone");
    }
    Ok(())
}

/// One agent process.
struct Node {
    index: usize,
    gossip: SocketAddr,
    metrics: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
    id: Option<NodeId>,
    status: Option<Status>,
}

/// A port free for UDP and TCP on `ip` right now.
fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    for _ in 0..64 {
        let tcp = std::net::TcpListener::bind((ip, 0))
            .with_context(|| format!("cannot bind a TCP port on {ip}"))?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no port free for both UDP and TCP on {ip}")
}

fn node_ip(index: usize) -> IpAddr {
    // index < MAX_NODES = 250, so the last octet stays within 1..=250.
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, (index + 1) as u8))
}

/// Resident set of a process in MB (VmRSS), if it runs.
fn rss_mb(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn short(id: NodeId) -> String {
    let s = id.to_string();
    s[s.len().saturating_sub(6)..].to_owned()
}

/// The timeline printer: stdout, or stderr with `--json`.
struct Timeline {
    start: Instant,
    to_stderr: bool,
}

impl Timeline {
    fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn say(&self, text: &str) {
        use std::io::Write as _;
        let line = format!("[{:6.2}s] {text}\n", self.secs());
        let _ = if self.to_stderr {
            std::io::stderr().write_all(line.as_bytes())
        } else {
            std::io::stdout().write_all(line.as_bytes())
        };
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `aware-agent demo`: exit 0 after a clean run, 1 on an error.
pub fn run(args: DemoArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aware-agent demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(demo(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aware-agent demo: {}", crate::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn load_spec(args: &DemoArgs) -> anyhow::Result<swarm_core::spec::ColonySpec> {
    let (text, name) = match &args.spec {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read", path.display()))?,
            path.display().to_string(),
        ),
        None => match args.runtime {
            DemoRuntime::Process => (DEMO_SPEC.to_owned(), "examples/colonies/demo.yaml".into()),
            DemoRuntime::Docker => (
                DEMO_DOCKER_SPEC.to_owned(),
                "examples/colonies/demo-docker.yaml".into(),
            ),
        },
    };
    Ok(dna::spec::parse(&text, &name)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_spec())
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    // Check the spec before anything starts.
    let spec = load_spec(&args)?;
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let root = tempfile::Builder::new()
        .prefix("aware-demo.")
        .tempdir()
        .context("cannot create the demo's temp directory")?;
    let creds = Credentials::create(root.path())?;
    let client = Client::connect(&creds).await?;
    let mut demo = Demo {
        nodes: Vec::new(),
        creds,
        client,
        runtime: args.runtime,
        exe,
        root: root.path().to_path_buf(),
        timeline: Timeline {
            start: Instant::now(),
            to_stderr: args.json,
        },
        seeds: String::new(),
    };
    let stop = crate::embed::stop_signal().context("cannot watch SIGTERM and SIGINT")?;
    let result = tokio::select! {
        r = demo.main(&args, spec) => r,
        () = stop => {
            demo.timeline.say("stop signal: stopping the colony");
            Ok(None)
        }
    };
    demo.stop_all().await;
    drop(demo);
    // Remove the directory now (and say so if it cannot be).
    let path = root.path().display().to_string();
    if let Err(e) = root.close() {
        eprintln!("aware-agent demo: cannot remove {path}: {e}");
    }
    let report = result?;
    if let (true, Some(report)) = (args.json, report) {
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        use std::io::Write as _;
        std::io::stdout()
            .write_all(text.as_bytes())
            .context("cannot write the report")?;
    }
    Ok(())
}

struct Demo {
    nodes: Vec<Node>,
    creds: Credentials,
    client: Client,
    runtime: DemoRuntime,
    exe: PathBuf,
    root: PathBuf,
    timeline: Timeline,
    seeds: String,
}

/// What the polling loop has seen so far.
#[derive(Default)]
struct Seen {
    first_queen_s: Option<f64>,
    converged_s: Option<f64>,
    queen: Option<(u64, NodeId)>,
    /// Members up, per agent, as last printed.
    up: Vec<usize>,
    /// Assignments per agent, as last printed.
    assigned: Vec<Vec<(String, u32)>>,
    failovers: Vec<Failover>,
    /// A kill is waiting for a new queen: (when, the killed queen's term).
    pending: Option<(f64, u64)>,
    rss_mb_max: f64,
    /// Replicas running or healthy, as last printed.
    running: usize,
    applied: Option<AppliedPlan>,
    spec_sent: bool,
}

impl Demo {
    fn prepare(&mut self, n: usize) -> anyhow::Result<()> {
        for index in 0..n {
            let ip = node_ip(index);
            let dir = self.root.join(format!("node{index}"));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("{}: cannot create", dir.display()))?;
            self.nodes.push(Node {
                index,
                gossip: SocketAddr::new(ip, free_port(ip)?),
                metrics: SocketAddr::new(ip, free_port(ip)?),
                dir,
                child: None,
                id: None,
                status: None,
            });
        }
        self.seeds = self
            .nodes
            .iter()
            .take(3)
            .map(|n| n.gossip.to_string())
            .collect::<Vec<_>>()
            .join(",");
        Ok(())
    }

    fn start(&mut self, index: usize) -> anyhow::Result<()> {
        let n = self.nodes.len();
        let node = &self.nodes[index];
        let log = std::fs::File::create(node.dir.join("agent.log"))
            .with_context(|| format!("{}: cannot create the log", node.dir.display()))?;
        // The process runtime finds `aware-agent` (the demo workload) on PATH: this binary first.
        let mut path = OsString::new();
        if let Some(dir) = self.exe.parent() {
            path.push(dir);
            path.push(":");
        }
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let mut cmd = Command::new(&self.exe);
        cmd.arg("run")
            .args(["--colony", "demo"])
            .arg("--data-dir")
            .arg(node.dir.join("data"))
            .args(["--bind", &node.gossip.to_string()])
            .args(["--seeds", &self.seeds])
            .args(["--bootstrap-expect", &n.to_string()])
            .args(["--metrics-bind", &node.metrics.to_string()])
            .args(["--log-format", "json"])
            .args(node_args(&self.creds, self.runtime, index))
            .env("PATH", path)
            .env(PARENT_ENV, std::process::id().to_string())
            .env_remove("AWARE_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        self.nodes[index].child = Some(child);
        Ok(())
    }

    /// SIGTERM to every agent, SIGKILL to those still running after [`STOP_GRACE_MS`].
    async fn stop_all(&mut self) {
        for node in &self.nodes {
            if let Some(pid) = node.child.as_ref().and_then(Child::id)
                && let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(STOP_GRACE_MS);
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                if tokio::time::timeout_at(deadline, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
                node.child = None;
            }
        }
        self.stop_leftover_workloads().await;
    }

    /// Agents stopped by SIGTERM stop their workloads (`--stop-workloads`), but one killed with
    /// `kill -9` leaves its processes for an adopter that will never come: open each such data
    /// directory's process runtime and stop what it still owns.
    async fn stop_leftover_workloads(&self) {
        use crate::runtime::Runtime as _;
        use crate::runtime::process::{ProcessConfig, ProcessRuntime};
        for node in &self.nodes {
            let Some(id) = node.id else { continue };
            let data = node.dir.join("data");
            if !data.join("process").exists() {
                continue;
            }
            let runtime = match ProcessRuntime::open(ProcessConfig::new(id, &data)).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!(
                        "aware-agent demo: cannot stop agent {}'s workloads: {e}",
                        node.index
                    );
                    continue;
                }
            };
            for replica in runtime.list().await.unwrap_or_default() {
                if let Err(e) = runtime.stop(&replica.key).await {
                    eprintln!("aware-agent demo: cannot stop {}: {e}", replica.key);
                }
            }
        }
    }

    fn kill9(&mut self, index: usize) {
        if let Some(child) = self.nodes[index].child.as_mut() {
            let _ = child.start_kill();
        }
    }

    async fn poll(&mut self) {
        let mut asks = tokio::task::JoinSet::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let client = self.client.clone();
            let (index, addr) = (node.index, node.gossip);
            asks.spawn(async move {
                let answer = tokio::time::timeout(
                    Duration::from_millis(STATUS_TIMEOUT_MS),
                    client.ask(addr, ControlRequest::Status),
                )
                .await;
                let status = match answer {
                    Ok(Some(ControlResponse::Status(s))) => Some(*s),
                    _ => None,
                };
                (index, status)
            });
        }
        while let Some(done) = asks.join_next().await {
            if let Ok((index, status)) = done {
                if let Some(s) = &status {
                    self.nodes[index].id = Some(s.node);
                }
                self.nodes[index].status = status;
            }
        }
    }

    fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == Some(id))
    }

    /// Prints what changed since the last poll and records the report's times.
    fn observe(&self, seen: &mut Seen) {
        let t = self.timeline.secs();
        let running: Vec<&Node> = self.running().collect();
        for node in &running {
            let Some(s) = &node.status else { continue };
            let up = s.members_up();
            if seen.up[node.index] != up {
                seen.up[node.index] = up;
                self.timeline.say(&format!(
                    "agent {} (node {}) sees {up} other member{} up",
                    node.index,
                    short(s.node),
                    if up == 1 { "" } else { "s" }
                ));
            }
            let mut assigned: Vec<(String, u32)> = s
                .assignments
                .iter()
                .map(|p| (p.role.clone(), p.replica))
                .collect();
            assigned.sort();
            if seen.assigned[node.index] != assigned {
                let list: Vec<String> = assigned.iter().map(|(r, i)| format!("{r}#{i}")).collect();
                self.timeline.say(&format!(
                    "agent {} is assigned {}",
                    node.index,
                    if list.is_empty() {
                        "nothing".to_owned()
                    } else {
                        list.join(", ")
                    }
                ));
                seen.assigned[node.index] = assigned;
            }
            if let Some(pid) = node.child.as_ref().and_then(Child::id)
                && let Some(mb) = rss_mb(pid)
            {
                seen.rss_mb_max = seen.rss_mb_max.max(mb);
            }
        }
        let statuses: Vec<&Status> = running.iter().filter_map(|n| n.status.as_ref()).collect();
        let up = running_workloads(&statuses);
        if up != seen.running {
            seen.running = up;
            let assigned: usize = statuses.iter().map(|s| s.assignments.len()).sum();
            self.timeline
                .say(&format!("replicas running: {up} of {assigned} assigned"));
        }
        // A queen: a node that says it reigns, in a term above the last one announced.
        let reigning = running
            .iter()
            .filter_map(|n| n.status.as_ref())
            .filter(|s| s.role == RoleName::Queen)
            .max_by_key(|s| s.term);
        if let Some(q) = reigning
            && seen.queen.is_none_or(|(term, _)| q.term > term)
        {
            seen.queen = Some((q.term, q.node));
            seen.first_queen_s.get_or_insert(t);
            let who = self
                .index_of(q.node)
                .map_or_else(String::new, |i| format!("agent {i}, "));
            match seen.pending.take() {
                Some((lost, _)) => {
                    self.timeline.say(&format!(
                        "new queen: node {} ({who}term {}), {:.2}s after the kill",
                        short(q.node),
                        q.term,
                        t - lost
                    ));
                    seen.failovers.push(Failover {
                        queen_lost_s: round3(lost),
                        new_queen_s: round3(t),
                    });
                }
                None => self.timeline.say(&format!(
                    "crowned: node {} ({who}term {}) is queen",
                    short(q.node),
                    q.term
                )),
            }
        }
        if seen.converged_s.is_none() {
            let n = running.len();
            let all = running.iter().all(|node| {
                node.status
                    .as_ref()
                    .is_some_and(|s| s.members_up() + 1 >= n)
            });
            if all {
                seen.converged_s = Some(t);
                self.timeline.say(&format!(
                    "membership converged: every agent sees all {} others",
                    n - 1
                ));
            }
        }
    }

    async fn apply(
        &self,
        spec: &swarm_core::spec::ColonySpec,
        queen: NodeId,
    ) -> Option<AppliedPlan> {
        let addr = self.nodes[self.index_of(queen)?].gossip;
        let answer = tokio::time::timeout(
            Duration::from_millis(APPLY_TIMEOUT_MS),
            self.client
                .ask(addr, ControlRequest::ApplySpec { spec: spec.clone() }),
        )
        .await
        .ok()
        .flatten();
        match answer {
            Some(ControlResponse::Applied(plan)) => Some(plan),
            Some(other) => {
                self.timeline
                    .say(&format!("spec not applied yet: {other:?}"));
                None
            }
            None => None,
        }
    }

    async fn main(
        &mut self,
        args: &DemoArgs,
        spec: swarm_core::spec::ColonySpec,
    ) -> anyhow::Result<Option<Report>> {
        let n = usize::from(args.nodes);
        self.prepare(n)?;
        self.timeline.say(&format!(
            "starting {n} agents on loopback ({} runtime), data under {} (removed at exit)",
            match self.runtime {
                DemoRuntime::Process => "process",
                DemoRuntime::Docker => "docker",
            },
            self.root.display()
        ));
        for i in 0..n {
            self.start(i)?;
        }
        // Times count from here: the last agent was just started.
        self.timeline.start = Instant::now();
        for node in &self.nodes {
            self.timeline.say(&format!(
                "agent {}: gossip and control {}, metrics http://{}/metrics, log {}",
                node.index,
                node.gossip,
                node.metrics,
                node.dir.join("agent.log").display()
            ));
        }
        let mut seen = Seen {
            up: vec![usize::MAX; n],
            assigned: vec![Vec::new(); n],
            ..Seen::default()
        };
        let mut killed = false;
        let mut tick = tokio::time::interval(Duration::from_millis(POLL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let t = self.timeline.secs();
            if args.exit_after.is_some_and(|d| t >= d.as_secs_f64()) {
                break;
            }
            for node in &mut self.nodes {
                if let Some(child) = node.child.as_mut()
                    && let Ok(Some(code)) = child.try_wait()
                {
                    node.child = None;
                    self.timeline.say(&format!(
                        "agent {} exited ({code}); see its log",
                        node.index
                    ));
                }
            }
            if self.running().next().is_none() {
                anyhow::bail!("every agent exited; see the logs above");
            }
            self.poll().await;
            self.observe(&mut seen);
            if let (Some((_, queen)), false) = (seen.queen, seen.spec_sent) {
                seen.spec_sent = true;
                self.timeline
                    .say(&format!("applying spec {} through the queen", spec.name));
                seen.applied = self.apply(&spec, queen).await;
                match &seen.applied {
                    Some(plan) => self.timeline.say(&format!(
                        "plan committed at version {}: {} replicas placed, {} unplaced",
                        plan.version,
                        plan.placements.len(),
                        plan.unplaced.len()
                    )),
                    None => seen.spec_sent = false,
                }
            }
            if let (Some(after), false, Some((term, queen))) =
                (args.kill_queen_after, killed, seen.queen)
                && t >= after.as_secs_f64()
                && let Some(i) = self.index_of(queen)
            {
                killed = true;
                self.kill9(i);
                let t = self.timeline.secs();
                seen.pending = Some((t, term));
                self.timeline.say(&format!(
                    "kill -9 the queen: agent {i} (node {})",
                    short(queen)
                ));
                if let Some(child) = self.nodes[i].child.as_mut() {
                    let _ = child.wait().await;
                }
                self.nodes[i].child = None;
                self.nodes[i].status = None;
            }
        }
        let statuses: Vec<&Status> = self.running().filter_map(|n| n.status.as_ref()).collect();
        self.timeline.say(&format!(
            "stopping the colony: {} agents running, {} replicas assigned, {} running, largest agent RSS {:.1} MB",
            statuses.len(),
            statuses.iter().map(|s| s.assignments.len()).sum::<usize>(),
            running_workloads(&statuses),
            seen.rss_mb_max
        ));
        let queen = statuses
            .iter()
            .filter(|s| s.role == RoleName::Queen)
            .max_by_key(|s| s.term)
            .map(|s| s.node.to_string());
        Ok(Some(Report {
            nodes: n,
            queen,
            first_queen_s: seen.first_queen_s.map(round3),
            membership_converged_s: seen.converged_s.map(round3),
            failovers: seen.failovers,
            assignments: statuses.iter().map(|s| s.assignments.len()).sum(),
            running_workloads: running_workloads(&statuses),
            rss_mb_max: (seen.rss_mb_max * 10.0).round() / 10.0,
        }))
    }
}
