//! The embedding API with an embedder-supplied runtime: a one-node colony started in-process
//! with `AgentBuilder::runtime` (a `ProcessRuntime` the test opens itself) runs the replicas of
//! an applied spec, reports them running in `status`, answers `Handle::endpoints`; a plain
//! `shutdown` leaves the processes running and the next agent on the same data directory adopts
//! them (same pid); with `stop_workloads_on_shutdown` the shutdown stops them.
//!
//! Every process group the test sees is killed when it ends, and the whole test runs under a
//! deadline.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests: panics report, clocks time

use aware_agent::runtime::Runtime;
use aware_agent::runtime::process::{ProcessConfig, ProcessRuntime};
use aware_agent::{Agent, AgentBuilder};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(40);
const SPEC: &str = "\
colony: embedded
roles:
  db:
    replicas: 1
    needs: {cpu: 10m, memory: 8Mi}
    workload:
      image: none
      command: [sh, -c, 'exec sleep 120']
      ports: ['15432:5432']
  api:
    replicas: 1
    depends-on: [db]
    needs: {cpu: 10m, memory: 8Mi}
    workload:
      image: none
      command: [sh, -c, 'echo \"$AWARE_DB_ENDPOINTS $AWARE_NODE_IP $AWARE_PORT\" > seen; exec sleep 120']
      ports: ['18080:80']
";

/// Process groups to kill at the end, whatever happens.
#[derive(Default)]
struct Groups(Mutex<Vec<u32>>);

impl Drop for Groups {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap().drain(..) {
            if let Some(p) = i32::try_from(pid)
                .ok()
                .filter(|p| *p > 1)
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
        }
    }
}

async fn start(dir: &Path, stop_on_shutdown: bool) -> Agent {
    let node_dir = dir.to_owned();
    // The embedder's runtime labels what it runs with its own id (here a fixed one).
    let id = aware_agent::swarm_core::NodeId(0x0e3b_0000_0000_0001);
    let mut cfg = ProcessConfig::new(id, &node_dir);
    cfg.stop_grace_ms = 500;
    let rt: Arc<dyn Runtime> = Arc::new(ProcessRuntime::open(cfg).await.unwrap());
    // A local colony CA beside the data directory (made once; the restart reuses it).
    let ca = dir.with_extension("ca");
    if !ca.exists() {
        aware_agent::trust::init_local_colony(&ca, "embedded").unwrap();
    }
    AgentBuilder::new("embedded")
        .ca_dir(&ca)
        .data_dir(&node_dir)
        .bind("127.0.0.1:0".parse().unwrap())
        .runtime(rt)
        .stop_workloads_on_shutdown(stop_on_shutdown)
        .start()
        .await
        .unwrap()
}

/// role#replica → pid of what the agent runs, once `n` replicas run.
async fn running(agent: &Agent, n: usize, groups: &Groups) -> BTreeMap<String, u32> {
    let start = Instant::now();
    loop {
        let s = agent.status().await.unwrap();
        let pids: BTreeMap<String, u32> = s
            .workloads
            .iter()
            .flat_map(|w| w.local.iter())
            .filter_map(|l| Some((format!("{}#{}", l.role, l.replica), l.pid?)))
            .collect();
        groups.0.lock().unwrap().extend(pids.values().copied());
        let w = s.workloads.as_ref().unwrap();
        if pids.len() == n && w.running() == n {
            return pids;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{n} replicas not running: {}",
            s.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedder_s_runtime_runs_the_plan_and_its_workloads_outlive_a_restart() {
    tokio::time::timeout(DEADLINE, scenario())
        .await
        .expect("the test passed its deadline");
}

async fn scenario() {
    let groups = Groups::default();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("node");
    let agent = start(&dir, false).await;
    let spec = aware_agent::dna::spec::parse(SPEC, "embedded.yaml")
        .unwrap()
        .into_spec();
    let start_wait = Instant::now();
    loop {
        match agent.apply_spec(spec.clone()).await {
            Ok(_) => break,
            Err(e) => {
                assert!(start_wait.elapsed() < Duration::from_secs(10), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let pids = running(&agent, 2, &groups).await;
    assert_eq!(
        agent.endpoints("db").await.unwrap(),
        vec!["127.0.0.1:15432".to_owned()]
    );
    assert!(agent.endpoints("nope").await.unwrap().is_empty());
    // The dependent saw its dependency's endpoints and the node's variables.
    let seen = dir.join("process/replicas/embedded/api/0/work/seen");
    let text = loop {
        let t = std::fs::read_to_string(&seen).unwrap_or_default();
        if t.ends_with('\n') {
            break t;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(30),
            "the dependent never wrote {}",
            seen.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(text.trim(), "127.0.0.1:15432 127.0.0.1 80");

    // A plain shutdown leaves them running; the next agent adopts them (same pids).
    agent.shutdown().await.unwrap();
    assert!(
        pids.values().all(|p| alive(*p)),
        "a shutdown stopped a workload"
    );
    let agent = start(&dir, true).await;
    let adopted = running(&agent, 2, &groups).await;
    assert_eq!(adopted, pids, "the restarted agent restarted its workloads");

    // Retiring: the shutdown stops them.
    agent.shutdown().await.unwrap();
    assert!(
        pids.values().all(|p| !alive(*p)),
        "workloads survived a stopping shutdown"
    );
}
