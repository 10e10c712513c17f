//! Real colonies running real workloads: `aware-agent run` processes on loopback, each on its
//! own loopback address (127.0.N.x, so every node can publish the same ports), with the process
//! runtime running `examples/colonies/demo.yaml` (the agent's built-in HTTP workload). Covered:
//! a worker's machine lost (agent and its workloads SIGKILLed) ⇒ its stateless replicas run and
//! answer elsewhere; the queen SIGKILLed ⇒ no replica on a survivor stops, restarts or moves;
//! an agent SIGKILLed (or stopped) and started again ⇒ it adopts its workloads without
//! restarting them. With `--nocapture` the tests print the figures in benches/README.md
//! (assignment committed ⇒ process running, worker killed ⇒ replicas running elsewhere).
//!
//! Every child (agents, and the workload process groups their state files name) is killed when
//! the test ends, panics or passes its kill deadline ([`KILL_DEADLINE`], a watchdog thread).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests: panics report, clocks time

mod hive;

use hive::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// demo.yaml: 3 front-end, 2 middleware, 1 store.
const DEMO_REPLICAS: usize = 6;

fn demo_spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/colonies/demo.yaml")
}

#[test]
fn a_lost_worker_s_replicas_run_and_answer_elsewhere() {
    let t0 = Instant::now();
    let (mut hive, s, latencies) = running_demo(41, 4, "process", &demo_spec(), DEMO_REPLICAS);
    print_latencies("process", &latencies, &["store"]);
    let (qi, _) = queen(&s).unwrap();
    let instances = local_instances(&s);
    // A worker that runs at least one replica.
    let (victim, lost) = s
        .iter()
        .filter(|(i, _)| *i != qi)
        .map(|(i, st)| (*i, st.workloads.as_ref().map_or(0, |w| w.local.len())))
        .max_by_key(|(_, n)| *n)
        .unwrap();
    assert!(lost > 0, "no worker runs anything: {instances:?}");
    let victim_id = s.iter().find(|(i, _)| *i == victim).unwrap().1.node;
    let survivors_before: BTreeMap<_, _> = instances
        .iter()
        .filter(|(_, (i, _, _))| *i != victim)
        .map(|(k, v)| (k.clone(), *v))
        .collect();

    let killed_ms = unix_ms();
    hive.kill_machine(victim);
    let gone = BTreeSet::from([victim_id]);
    let (_, s) = hive.wait_for("the lost replicas healthy elsewhere", WAIT, |s| {
        all_healthy(s, &gone, DEMO_REPLICAS)
    });
    let healthy_ms = unix_ms() - killed_ms;
    // Exact times from the agents' own records: the queen's log line declaring the node down,
    // and the start time of each new instance.
    let down_ms = hive.member_down_at(qi, victim_id, killed_ms).unwrap() - killed_ms;
    let started: Vec<u64> = local_instances(&s)
        .iter()
        .filter(|(k, _)| !survivors_before.contains_key(*k))
        .map(|(_, (_, _, at))| at.saturating_sub(killed_ms))
        .collect();
    assert_eq!(started.len(), lost, "the lost replicas run again");
    let last = started.iter().max().copied().unwrap_or(0);
    println!(
        "figure: worker killed -> queen declares it down {down_ms} ms -> its {lost} replicas \
         running elsewhere {last} ms after the kill ({} ms after detection); healthy (first \
         HTTP probe, 1 s interval) seen by status polling {healthy_ms} ms after the kill",
        last.saturating_sub(down_ms)
    );
    assert!(
        last <= down_ms + 1_000,
        "replicas ran again {last} ms after the kill, detection at {down_ms} ms"
    );
    // Replicas on the survivors were not touched.
    let after = local_instances(&s);
    for (k, v) in &survivors_before {
        assert_eq!(after.get(k), Some(v), "replica {k:?} restarted or moved");
    }
    // Every survivor front end answers, and reaches its dependencies.
    let fronts: Vec<String> = hive
        .running()
        .into_iter()
        .map(|i| format!("{}:8080", hive.nodes[i].ip))
        .collect();
    let answered: Vec<serde_json::Value> = fronts.iter().filter_map(|a| http_get(a)).collect();
    assert_eq!(answered.len(), 3, "front ends answering: {answered:?}");
    // demo.yaml keeps `on-endpoints-change` at its default (ignore): a front end started
    // before the move still lists the lost middleware endpoint, but reaches the other one.
    for a in &answered {
        assert_eq!(a["role"], "front-end", "{a}");
        let deps = a["deps"]["middleware"].as_array().unwrap();
        assert!(deps.iter().any(|d| d["ok"] == true), "{a}");
    }
    // `aware-agent endpoints` names the new places, never the lost node.
    let out = hive.cli(hive.running()[0], &["endpoints", "middleware", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list: Vec<&str> = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert_eq!(list.len(), 2, "{v}");
    let lost_ip = format!("{}:", hive.nodes[victim].ip);
    assert!(list.iter().all(|e| !e.starts_with(&lost_ip)), "{v}");
    println!("wall: {} ms", t0.elapsed().as_millis());
}

#[test]
fn the_queen_killed_no_replica_on_a_survivor_stops_or_moves_and_restarts_are_adopted() {
    let t0 = Instant::now();
    let (mut hive, s, _) = running_demo(42, 4, "process", &demo_spec(), DEMO_REPLICAS);
    let (qi, qid) = queen(&s).unwrap();
    let before = local_instances(&s);
    let on_survivors: BTreeMap<_, _> = before
        .iter()
        .filter(|(_, (i, _, _))| *i != qi)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    hive.kill_agent(qi);
    let ((), s) = hive.wait_for("a new queen with every replica healthy again", WAIT, |s| {
        let (_, q) = queen(s)?;
        (q != qid).then_some(())?;
        all_healthy(s, &BTreeSet::from([qid]), DEMO_REPLICAS).map(|_| ())
    });
    let after = local_instances(&s);
    let mut stopped_or_moved = 0;
    for (k, v) in &on_survivors {
        if after.get(k) != Some(v) {
            stopped_or_moved += 1;
            eprintln!("replica {k:?}: {v:?} -> {:?}", after.get(k));
        }
    }
    println!(
        "figure: queen killed -> {stopped_or_moved} of {} replicas on survivors stopped or moved",
        on_survivors.len()
    );
    assert_eq!(stopped_or_moved, 0);

    // An agent crash (kill -9) and a clean stop, each followed by a start on the same data
    // directory: the agent adopts its processes (same pid, same start time), restarts none.
    let worker = hive.running()[0];
    for how in ["kill -9", "SIGTERM"] {
        let s = hive.statuses().unwrap();
        let mine: BTreeMap<_, _> = local_instances(&s)
            .into_iter()
            .filter(|(_, (i, _, _))| *i == worker)
            .collect();
        assert!(!mine.is_empty(), "worker {worker} runs nothing");
        if how == "kill -9" {
            hive.kill_agent(worker);
        } else {
            hive.stop_agent(worker);
        }
        hive.start(worker);
        let (adopted, _) = hive.wait_for("the restarted agent adopting its replicas", WAIT, |s| {
            let st = &s.iter().find(|(i, _)| *i == worker)?.1;
            let w = st.workloads.as_ref()?;
            (w.desired_version.is_some() && w.local.len() >= mine.len()).then(|| {
                local_instances(s)
                    .into_iter()
                    .filter(|(_, (i, _, _))| *i == worker)
                    .collect::<BTreeMap<_, _>>()
            })
        });
        assert_eq!(adopted, mine, "after {how} and a restart");
    }
    println!("wall: {} ms", t0.elapsed().as_millis());
}

/// A spec with roles `r0..=rk`, each `mode: global` (one replica per node) sleeping.
fn rounds_spec(dir: &Path, k: usize) -> PathBuf {
    let mut text = String::from("colony: rounds\nroles:\n");
    for r in 0..=k {
        text.push_str(&format!(
            "  r{r}:\n    mode: global\n    needs: {{cpu: 1m, memory: 1Mi}}\n    workload:\n      \
             image: none\n      command: [sh, -c, 'exec sleep 600']\n"
        ));
    }
    let path = dir.join(format!("rounds{k}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn measure_commit_to_process_running() {
    const NODES: usize = 3;
    const ROUNDS: usize = 10;
    let mut hive = Hive::new(43, NODES, "process", "wl");
    hive.start_all();
    let ((qi, _), _) = hive.wait_for("one queen known to all", WAIT, |s| {
        queen(s).filter(|_| all_up(s))
    });
    let (mut on_queen, mut on_workers, mut seen) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..ROUNDS {
        let spec = rounds_spec(hive.root.path(), k);
        hive.apply(qi, &spec);
        let role = format!("r{k}");
        let (_, s) = hive.wait_for("the new role running on every node", WAIT, |s| {
            let n = local_instances(s)
                .keys()
                .filter(|(r, _)| *r == role)
                .count();
            (n == NODES).then_some(())
        });
        let desired_at = |i: usize| {
            s.iter()
                .find(|(j, _)| *j == i)
                .and_then(|(_, st)| st.workloads.as_ref())
                .map_or(0, |w| w.desired_at_unix_ms)
        };
        let committed = desired_at(qi);
        for ((r, _), (i, _, started)) in local_instances(&s) {
            if r == role {
                let ms = started.saturating_sub(committed);
                if i == qi {
                    on_queen.push(ms);
                } else {
                    on_workers.push(ms);
                    seen.push(desired_at(i).saturating_sub(committed));
                }
            }
        }
    }
    println!(
        "figure: queen committed -> process running ({ROUNDS} rounds, {NODES} nodes): on the \
         queen {}; on workers {} (of which the worker learning the commit from the next \
         heartbeat: {})",
        ms_summary(on_queen),
        ms_summary(on_workers),
        ms_summary(seen)
    );
}
