//! The built-in demo workload (`aware-agent workload http`) as a real process on loopback: health,
//! identity, calls to dependencies (live, refused, silent), the one-hop depth limit, the store's
//! counter across a restart and a damaged counter file, SIGTERM; then the demo specs themselves:
//! `spec check`/`spec plan` on five small nodes, demo.yaml's three roles run by the real process
//! runtime on three loopback node IPs, and demo-docker.yaml's store as a real container (skipped
//! with `AWARE_SKIP_DOCKER=1`, like `runtime_docker.rs`).
//!
//! Run: `cargo test -p aware-agent --test workload`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
#![allow(clippy::disallowed_methods)] // tests bound real time with deadlines
#![allow(clippy::disallowed_types)] // a blocking HTTP client (sockets are allowed in agent/)

mod support;

use aware_agent::runtime::docker::{DockerConfig, DockerRuntime};
use aware_agent::runtime::process::{ProcessConfig, ProcessRuntime};
use aware_agent::runtime::{LABEL_NODE, ReplicaKey, ReplicaState, Runtime, StartSpec};
use aware_agent::workload::endpoints_var;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use support::events::wait_for;
use swarm_core::NodeId;
use swarm_core::spec::ColonySpec;

const BIN: &str = env!("CARGO_BIN_EXE_aware-agent");
const DEADLINE: Duration = Duration::from_secs(20);

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback /24 of our own (127.X.Y.0, from the pid) so that fixed demo ports never meet
/// another test's listeners.
fn private_loopback(host: u8) -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(
        127,
        100 + (pid % 100) as u8,
        (pid / 100 % 250) as u8 + 1,
        host,
    )
}

struct Http {
    status: u16,
    body: String,
}

impl Http {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), blocking, bounded.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Http {
    try_request(addr, method, path, headers)
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Http> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.take(1 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::other(format!("not an HTTP answer: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok(Http {
        status,
        body: if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A `workload http` child; killed (by pid) on drop if still running.
struct Workload {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Workload {
    fn start(ip: Ipv4Addr, env: &[(&str, String)], extra_args: &[&str]) -> Workload {
        let port = free_port(ip);
        Workload::start_on(SocketAddr::new(IpAddr::V4(ip), port), env, extra_args)
    }

    fn start_on(addr: SocketAddr, env: &[(&str, String)], extra_args: &[&str]) -> Workload {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        let child = Command::new(BIN)
            .args(["workload", "http", "--port", &addr.port().to_string()])
            .args(extra_args)
            .env_clear()
            .env("AWARE_NODE_IP", addr.ip().to_string())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Workload {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `/healthz` until it answers `want` (deadline, no fixed sleep).
    fn wait_health(&mut self, want: u16) -> Http {
        self.wait_health_until(&format!("status {want}"), |h| h.status == want)
    }

    fn wait_health_until(&mut self, what: &str, done: impl Fn(&Http) -> bool) -> Http {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("workload exited ({status}) early:\n{}", self.logs());
            }
            if let Ok(h) = try_request(self.addr, "GET", "/healthz", &[])
                && done(&h)
            {
                return h;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "/healthz on {} never answered {what}:\n{}",
                self.addr,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(&mut self) -> ExitStatus {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn identity(role: &str, replica: u32, node: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWARE_COLONY", "demo".to_owned()),
        ("AWARE_ROLE", role.to_owned()),
        ("AWARE_REPLICA", replica.to_string()),
        ("AWARE_NODE", node.to_owned()),
    ]
}

#[test]
fn answers_health_and_identity_and_stops_on_sigterm() {
    let mut w = Workload::start(
        Ipv4Addr::LOCALHOST,
        &identity("front-end", 2, "00000000000000a1"),
        &[],
    );
    assert_eq!(w.wait_health(200).body, "ok\n");
    let root = request(w.addr, "GET", "/", &[]);
    assert_eq!(root.status, 200);
    let j = root.json();
    assert_eq!(j["colony"], "demo");
    assert_eq!(j["role"], "front-end");
    assert_eq!(j["replica"], 2);
    assert_eq!(j["node"], "00000000000000a1");
    assert_eq!(j["node_ip"], "127.0.0.1");
    assert!(j["uptime_s"].is_u64(), "{j}");
    assert_eq!(j["deps"], serde_json::json!({}), "no dependencies: {j}");
    assert!(j.get("counter").is_none(), "not a store: {j}");
    // Not a store: no counter to increment; unknown paths are 404; big bodies are refused.
    assert_eq!(request(w.addr, "POST", "/inc", &[]).status, 404);
    assert_eq!(request(w.addr, "GET", "/nope", &[]).status, 404);
    let big = request(w.addr, "POST", "/inc", &[("Content-Length", "1000000")]);
    assert_eq!(big.status, 413);

    // An idle keep-alive connection does not hold up the graceful stop.
    let mut idle = TcpStream::connect(w.addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let start = Instant::now();
    let status = w.terminate();
    assert_eq!(status.code(), Some(0), "{}", w.logs());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "SIGTERM took {:?}",
        start.elapsed()
    );
    assert!(w.logs().contains("workload http stopped"), "{}", w.logs());
}

#[test]
fn calls_dependencies_one_hop_deep_and_reports_failures_fast() {
    let ip = Ipv4Addr::LOCALHOST;
    // The store is down (a refused port) and silent (accepts, never answers).
    let refused = free_port(ip);
    let silent = TcpListener::bind((ip, 0)).unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let mut mw_env = identity("middleware", 1, "00000000000000b2");
    mw_env.push((
        "AWARE_STORE_ENDPOINTS",
        format!("{ip}:{refused},{silent_addr}"),
    ));
    let mut mw = Workload::start(ip, &mw_env, &[]);
    mw.wait_health(200);

    let mut fe_env = identity("front-end", 0, "00000000000000a1");
    fe_env.push((
        "AWARE_MIDDLEWARE_ENDPOINTS",
        format!("{},{ip}:{refused}", mw.addr),
    ));
    let mut fe = Workload::start(ip, &fe_env, &[]);
    fe.wait_health(200);

    let start = Instant::now();
    let j = request(fe.addr, "GET", "/", &[]).json();
    let took = start.elapsed();
    let calls = j["deps"]["middleware"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{j}");
    let live = &calls[0];
    assert_eq!(live["endpoint"], mw.addr.to_string());
    assert_eq!(live["ok"], true, "{j}");
    assert_eq!(live["status"], 200);
    assert_eq!(
        live["answer"],
        serde_json::json!({"role": "middleware", "replica": 1, "node": "00000000000000b2"})
    );
    assert!(live.get("error").is_none(), "{j}");
    let dead = &calls[1];
    assert_eq!(dead["ok"], false, "{j}");
    assert!(dead["status"].is_null() && dead["answer"].is_null(), "{j}");
    assert!(
        dead["error"].as_str().unwrap().contains("connect"),
        "{dead}"
    );
    // The middleware, called by a dependent, answered with its identity only: the front-end's
    // request did not wait for the middleware's silent store.
    assert!(took < Duration::from_millis(2_000), "took {took:?}: {j}");

    // Called directly (depth 0) the middleware does call the store: both failures are reported,
    // the silent one after the 300 ms budget, not much later.
    let start = Instant::now();
    let j = request(mw.addr, "GET", "/", &[]).json();
    let took = start.elapsed();
    let store = j["deps"]["store"].as_array().unwrap();
    assert_eq!(store.len(), 2, "{j}");
    assert!(store.iter().all(|c| c["ok"] == false), "{j}");
    assert!(
        store[1]["error"]
            .as_str()
            .unwrap()
            .contains("no answer within 300 ms"),
        "{j}"
    );
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1_500),
        "took {took:?}"
    );
    // A request that says it comes from a dependent gets the identity only.
    let j = request(mw.addr, "GET", "/", &[("X-Aware-Depth", "1")]).json();
    assert_eq!(j["role"], "middleware");
    assert!(j.get("deps").is_none(), "{j}");
    drop(silent);
}

#[test]
fn the_store_counter_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("data");
    let store_arg = store_dir.to_str().unwrap().to_owned();
    let env = identity("store", 0, "00000000000000c3");
    let mut s = Workload::start(Ipv4Addr::LOCALHOST, &env, &["--store", &store_arg]);
    s.wait_health(200);
    assert_eq!(request(s.addr, "GET", "/", &[]).json()["counter"], 0);
    for want in 1..=3 {
        let r = request(s.addr, "POST", "/inc", &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["counter"], want);
        assert_eq!(r.json()["role"], "store");
    }
    assert_eq!(
        std::fs::read_to_string(store_dir.join("counter")).unwrap(),
        "3\n"
    );
    assert_eq!(s.terminate().code(), Some(0), "{}", s.logs());

    // Same directory, same port: the count goes on.
    let mut s2 = Workload::start_on(s.addr, &env, &["--store", &store_arg]);
    s2.wait_health(200);
    assert_eq!(request(s2.addr, "GET", "/", &[]).json()["counter"], 3);
    assert_eq!(request(s2.addr, "POST", "/inc", &[]).json()["counter"], 4);
    assert_eq!(s2.terminate().code(), Some(0));
}

#[test]
fn a_damaged_counter_keeps_the_store_unhealthy_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("counter"), "not a number\n").unwrap();
    let store_arg = dir.path().to_str().unwrap().to_owned();
    let mut s = Workload::start(
        Ipv4Addr::LOCALHOST,
        &identity("store", 0, "00000000000000c3"),
        &["--store", &store_arg],
    );
    // 503 while loading, then 503 for good, naming the file's content.
    let h = s.wait_health_until("503 not ready", |h| {
        h.status == 503 && h.body.contains("store not ready")
    });
    assert!(h.body.contains("not a number"), "{}", h.body);
    let r = request(s.addr, "POST", "/inc", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("counter")).unwrap(),
        "not a number\n"
    );
    assert_eq!(s.terminate().code(), Some(0));
}

#[test]
fn a_bad_contract_variable_is_named_and_exits_1() {
    let out = Command::new(BIN)
        .args(["workload", "http", "--port", "0"])
        .env_clear()
        .env("AWARE_NODE", "xyz")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("AWARE_NODE=`xyz`") && err.contains("16 hex digits"),
        "{err}"
    );
}

// ---- the demo specs ------------------------------------------------------------------------

fn aware(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_demo_specs_check_and_plan_on_five_small_nodes() {
    let nodes = repo_file("examples/nodes/demo.yaml");
    let nodes = nodes.to_str().unwrap();
    for spec in ["demo.yaml", "demo-docker.yaml"] {
        let file = repo_file("examples/colonies").join(spec);
        let file = file.to_str().unwrap();
        let (code, out, err) = aware(&["spec", "check", file, "--nodes", nodes]);
        assert_eq!(code, 0, "{spec}: {err}");
        assert_eq!(
            out.trim(),
            "demo: 3 roles, 6 replicas; checked against 5 nodes"
        );
        let (code, out, err) = aware(&["spec", "plan", file, "--nodes", nodes, "--json"]);
        assert_eq!(code, 0, "{spec}: {err}");
        let plan: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(plan["unplaced"], serde_json::json!([]), "{spec}: {plan}");
        let placements = plan["placements"].as_array().unwrap();
        assert_eq!(placements.len(), 6, "{spec}: {plan}");
        let front_nodes: std::collections::BTreeSet<_> = placements
            .iter()
            .filter(|p| p["role"] == "front-end")
            .map(|p| p["node"].to_string())
            .collect();
        assert_eq!(front_nodes.len(), 3, "front-ends share a node: {plan}");
    }
}

fn demo_spec(name: &str) -> ColonySpec {
    let path = repo_file("examples/colonies").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    aware_agent::dna::spec::parse(&text, name)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_spec()
}

/// The port a role's workload publishes (demo specs publish exactly one).
fn published_port(spec: &ColonySpec, role: &str) -> u16 {
    spec.role(role).unwrap().workload.ports[0].host.unwrap()
}

/// What the reconciler gives a replica: the identity and its dependencies' endpoints.
fn contract_env(
    spec: &ColonySpec,
    role: &str,
    node: NodeId,
    ip: Ipv4Addr,
    where_runs: &BTreeMap<&str, Ipv4Addr>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("AWARE_COLONY".to_owned(), spec.name.clone()),
        ("AWARE_ROLE".to_owned(), role.to_owned()),
        ("AWARE_REPLICA".to_owned(), "0".to_owned()),
        ("AWARE_NODE".to_owned(), node.to_string()),
        ("AWARE_NODE_IP".to_owned(), ip.to_string()),
    ]);
    for dep in &spec.role(role).unwrap().depends_on {
        env.insert(
            endpoints_var(dep),
            format!("{}:{}", where_runs[dep.as_str()], published_port(spec, dep)),
        );
    }
    env
}

/// demo.yaml as the process runtime runs it: one replica of each role, each on its own node
/// (its own runtime, data dir and loopback IP), `aware-agent` found through PATH; every replica
/// becomes healthy through the agent's HTTP probe on the node IP, and each tier reaches the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_yaml_runs_on_the_process_runtime() {
    let spec = demo_spec("demo.yaml");
    let root = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(BIN)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let path = format!(
        "{bin_dir}:{}",
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let roles = ["store", "middleware", "front-end"];
    let where_runs: BTreeMap<&str, Ipv4Addr> = roles
        .iter()
        .enumerate()
        .map(|(i, r)| (*r, private_loopback(i as u8 + 1)))
        .collect();
    let mut runtimes = Vec::new();
    for (i, role) in roles.iter().enumerate() {
        let node = NodeId(0xd0 + i as u64);
        let ip = where_runs[role];
        let mut cfg = ProcessConfig::new(node, &root.path().join(format!("node{i}")));
        cfg.probe_ip = IpAddr::V4(ip);
        cfg.stop_grace_ms = 2_000;
        let rt = ProcessRuntime::open(cfg).await.unwrap();
        let mut events = rt.subscribe();
        let key = ReplicaKey::new(&spec.name, role, 0);
        let mut start = StartSpec::new(key.clone(), spec.role(role).unwrap().workload.clone());
        start.extra_env = contract_env(&spec, role, node, ip, &where_runs);
        start.extra_env.insert("PATH".into(), path.clone());
        rt.start(&start).await.unwrap();
        let log = rt.log_path(&key);
        let healthy = wait_for(DEADLINE, &mut events, &key, "healthy", |o| {
            o.state == ReplicaState::Healthy || !o.state.is_alive()
        })
        .await;
        assert_eq!(
            healthy.state,
            ReplicaState::Healthy,
            "{key}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        runtimes.push((rt, key));
    }
    let addr =
        |role: &str| SocketAddr::new(IpAddr::V4(where_runs[role]), published_port(&spec, role));

    let (fe, mw, store) = (addr("front-end"), addr("middleware"), addr("store"));
    let j = tokio::task::spawn_blocking(move || request(fe, "GET", "/", &[]).json())
        .await
        .unwrap();
    assert_eq!(j["role"], "front-end");
    assert_eq!(j["node_ip"], where_runs["front-end"].to_string());
    let call = &j["deps"]["middleware"][0];
    assert_eq!(call["ok"], true, "{j}");
    assert_eq!(call["answer"]["role"], "middleware", "{j}");
    assert_eq!(call["answer"]["node"], NodeId(0xd1).to_string(), "{j}");

    let j = tokio::task::spawn_blocking(move || request(mw, "GET", "/", &[]).json())
        .await
        .unwrap();
    assert_eq!(j["deps"]["store"][0]["ok"], true, "{j}");
    assert_eq!(j["deps"]["store"][0]["answer"]["role"], "store", "{j}");

    let r = tokio::task::spawn_blocking(move || request(store, "POST", "/inc", &[]))
        .await
        .unwrap();
    assert_eq!(r.json()["counter"], 1, "{}", r.body);
    // The counter is in the store replica's working directory, under `data/`.
    let (store_rt, store_key) = &runtimes[0];
    let counter = store_rt.replica_dir(store_key).join("work/data/counter");
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "1\n");

    for (rt, key) in &runtimes {
        rt.stop(key).await.unwrap();
        assert!(rt.inspect(key).await.unwrap().is_none());
    }
}

/// demo-docker.yaml's store as a real container of `aware-busybox:local`, published on a
/// loopback node IP: the agent's probe finds it healthy and `/` names the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_docker_yaml_serves_its_identity() {
    if std::env::var("AWARE_SKIP_DOCKER").as_deref() == Ok("1") {
        println!("skipping demo_docker_yaml_serves_its_identity: AWARE_SKIP_DOCKER=1");
        return;
    }
    let spec = demo_spec("demo-docker.yaml");
    let node = NodeId(0xde00_0000_0000_0000 | u64::from(std::process::id()));
    let ip = private_loopback(9);
    struct Cleanup(NodeId);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let filter = format!("label={LABEL_NODE}={}", self.0);
            if let Ok(out) = Command::new("docker")
                .args(["ps", "-aq", "--filter", &filter])
                .output()
            {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("docker").args(["rm", "-f", id]).output();
                }
            }
        }
    }
    let _cleanup = Cleanup(node);
    let mut cfg = DockerConfig::new(node);
    cfg.publish_ip = IpAddr::V4(ip);
    cfg.stop_grace_ms = 1_000;
    let rt = DockerRuntime::connect(cfg).await.unwrap_or_else(|e| {
        panic!("{e}. Install and start Docker, or set AWARE_SKIP_DOCKER=1 to skip")
    });
    let image = &spec.role("store").unwrap().workload.image;
    if rt.client().inspect_image(image).await.is_err() {
        let script = repo_file(".ci/build-image.sh");
        let status = Command::new("bash").arg(&script).status().unwrap();
        assert!(status.success(), "{} failed", script.display());
    }
    let mut events = rt.subscribe();
    let key = ReplicaKey::new(&spec.name, "store", 0);
    let mut start = StartSpec::new(key.clone(), spec.role("store").unwrap().workload.clone());
    start.extra_env = contract_env(&spec, "store", node, ip, &BTreeMap::new());
    rt.start(&start).await.unwrap();
    let o = wait_for(DEADLINE, &mut events, &key, "healthy", |o| {
        o.state == ReplicaState::Healthy || !o.state.is_alive()
    })
    .await;
    assert_eq!(o.state, ReplicaState::Healthy, "{o:?}");
    let addr = SocketAddr::new(IpAddr::V4(ip), published_port(&spec, "store"));
    let j = tokio::task::spawn_blocking(move || request(addr, "GET", "/", &[]).json())
        .await
        .unwrap();
    assert_eq!(
        j,
        serde_json::json!({"role": "store", "replica": "0", "node": node.to_string()})
    );
    rt.stop(&key).await.unwrap();
}
