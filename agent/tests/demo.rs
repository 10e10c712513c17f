//! `aware-agent demo` end to end: five real agent processes on loopback, the queen killed with
//! `kill -9`, the JSON report checked; and Ctrl-C (SIGINT) in the middle of a demo stops every
//! agent it started and removes its directory. Each demo runs under a kill deadline and its own
//! TMPDIR, so nothing it leaves can outlive the test unnoticed.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_aware-agent");
/// No demo run by these tests may take longer than this.
const DEADLINE: Duration = Duration::from_secs(60);

/// Kills the demo if the test fails before it exits.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn demo(tmp: &std::path::Path, args: &[&str]) -> Guard {
    Guard(Some(
        Command::new(BIN)
            .arg("demo")
            .args(args)
            .env("TMPDIR", tmp)
            .env_remove("AWARE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ))
}

/// Waits for the child with a deadline, killing it past it.
fn wait(guard: &mut Guard) -> (std::process::ExitStatus, String) {
    let child = guard.0.as_mut().unwrap();
    let start = Instant::now();
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            let mut out = String::new();
            std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
            guard.0 = None;
            return (code, out);
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the demo ran past {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lines of the child's stderr, on a channel (read by a thread).
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads the demo's timeline until it reports a crowning (within [`DEADLINE`]).
fn wait_for_crowning(stderr: &mpsc::Receiver<String>) {
    let start = Instant::now();
    loop {
        let line = stderr
            .recv_timeout(DEADLINE.saturating_sub(start.elapsed()))
            .expect("no crowning in the demo's timeline");
        if line.contains("crowned") {
            return;
        }
    }
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

/// Processes whose working directory lies under `dir` (a workload's cwd is in its agent's data
/// directory, so one left running by the demo shows up here).
fn processes_under(dir: &std::path::Path) -> Vec<u32> {
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/cwd"))
                .is_ok_and(|cwd| cwd.display().to_string().starts_with(&dir))
        })
        .collect()
}

fn empty(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[test]
fn five_agents_crown_a_queen_survive_her_kill_and_report_it() {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut g = demo(
        tmp.path(),
        &[
            "--nodes",
            "5",
            "--json",
            "--kill-queen-after",
            "3s",
            "--exit-after",
            "9s",
        ],
    );
    let stderr = lines(g.0.as_mut().unwrap());
    let (code, out) = wait(&mut g);
    let timeline: Vec<String> = stderr.try_iter().collect();
    let timeline = timeline.join("\n");
    assert!(code.success(), "{code}\n{timeline}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["nodes"], 5, "{r}");
    assert!(r["queen"].is_string(), "{r}");
    let first = r["first_queen_s"].as_f64().unwrap();
    assert!(first < 3.0, "first queen after {first} s\n{timeline}");
    let converged = r["membership_converged_s"].as_f64().unwrap();
    assert!(converged < 5.0, "converged after {converged} s\n{timeline}");
    let failovers = r["failovers"].as_array().unwrap();
    assert_eq!(failovers.len(), 1, "{r}\n{timeline}");
    let lost = failovers[0]["queen_lost_s"].as_f64().unwrap();
    let new = failovers[0]["new_queen_s"].as_f64().unwrap();
    assert!(lost >= 3.0, "{r}");
    // The lease is 1 s; the bound leaves room for a loaded CI machine.
    assert!(
        new - lost < 3.0,
        "failover took {} s\n{timeline}",
        new - lost
    );
    // demo.yaml: front-end 3 + middleware 2 + store 1, re-placed on the four survivors.
    assert_eq!(r["assignments"], 6, "{r}\n{timeline}");
    // Every replica runs: the process runtime with the built-in HTTP workload.
    assert_eq!(r["running_workloads"], 6, "{r}\n{timeline}");
    // Nothing outlives the demo, not even the workloads of the queen it killed with kill -9.
    let left = processes_under(tmp.path());
    assert!(left.is_empty(), "processes left running: {left:?}");
    let rss = r["rss_mb_max"].as_f64().unwrap();
    assert!(rss > 1.0 && rss < 100.0, "{r}");
    // The timeline says what happened, in order.
    for what in [
        "crowned",
        "membership converged",
        "plan committed",
        "kill -9 the queen",
        "new queen",
    ] {
        assert!(timeline.contains(what), "no `{what}` in\n{timeline}");
    }
    assert!(empty(tmp.path()), "the demo left files behind");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn ctrl_c_stops_every_agent_and_removes_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = demo(tmp.path(), &["--nodes", "3", "--json"]);
    let pid = g.0.as_ref().unwrap().id();
    // Kept to the end: dropping it would stop the reader and let the demo block on stderr.
    let stderr = lines(g.0.as_mut().unwrap());
    wait_for_crowning(&stderr);
    let agents = children_of(pid);
    assert_eq!(agents.len(), 3, "{agents:?}");
    assert!(!empty(tmp.path()));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let (code, out) = wait(&mut g);
    assert!(code.success(), "{code}");
    assert!(out.is_empty(), "a stopped demo prints no report: {out}");
    for a in agents {
        assert!(!alive(a), "agent process {a} outlived the demo");
    }
    assert!(empty(tmp.path()), "the demo left files behind");
}

#[test]
fn agents_do_not_outlive_a_killed_demo() {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = demo(tmp.path(), &["--nodes", "2", "--json"]);
    let pid = g.0.as_ref().unwrap().id();
    // Kept to the end: dropping it would stop the reader and let the demo block on stderr.
    let stderr = lines(g.0.as_mut().unwrap());
    wait_for_crowning(&stderr);
    let agents = children_of(pid);
    assert_eq!(agents.len(), 2, "{agents:?}");
    // SIGKILL: the demo cleans nothing up; the kernel's parent-death signal stops the agents.
    let _ = g.0.as_mut().unwrap().kill();
    let _ = g.0.as_mut().unwrap().wait();
    g.0 = None;
    let start = Instant::now();
    while agents.iter().any(|a| alive(*a)) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "agents {agents:?} outlived a killed demo"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
