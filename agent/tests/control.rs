//! The operator's side of a running agent, with the real binary: configuration errors name
//! `FILE:LINE:COL`, `apply` checks the spec locally before it connects, `status` reports an
//! unreachable agent, the control plane refuses an admin certificate from another CA, SIGTERM
//! stops an agent with exit 0, and a second agent cannot take a locked data directory.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // deadlines read the clock

mod common;

use common::{BIN, Colony};
use std::process::Command;
use std::time::Duration;

fn run(args: &[&str], envs: &[(&str, &std::path::Path)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_config_file_with_an_unknown_key_stops_run_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("aware.toml");
    std::fs::write(&cfg, "colony = \"c\"\n\n[discovery]\nmdsn = true\n").unwrap();
    let (code, _, err) = run(&["run", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{}:4:1: ", cfg.display())), "{err}");
    assert!(err.contains("mdsn"), "{err}");
}

#[test]
fn apply_checks_the_spec_before_it_connects() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.yaml");
    std::fs::write(&spec, "colony: x\nroles:\n  web:\n    replicas: many\n").unwrap();
    let admin = dir.path().join("ca");
    aware_agent::trust::init_local_colony(&admin, "c").unwrap();
    // Nothing listens on port 1: a connection attempt would fail differently.
    let (code, _, err) = run(
        &[
            "apply",
            spec.to_str().unwrap(),
            "--advertise",
            "127.0.0.1:1",
        ],
        &[("AWARE_ADMIN_DIR", &admin)],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{}:4:", spec.display())), "{err}");
    assert!(!err.contains("cannot reach"), "{err}");
}

#[test]
fn status_names_an_unreachable_agent() {
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("ca");
    aware_agent::trust::init_local_colony(&admin, "c").unwrap();
    let port = common::free_ports(1)[0];
    let addr = format!("127.0.0.1:{port}");
    let (code, _, err) = run(
        &["status", "--advertise", &addr],
        &[("AWARE_ADMIN_DIR", &admin)],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot reach the agent at {addr}")),
        "{err}"
    );
}

#[test]
fn the_control_plane_refuses_an_admin_certificate_from_another_ca() {
    let mut colony = Colony::new(1);
    colony.start(0);
    let before = colony.wait_for("the agent answers", Duration::from_secs(20), |s| {
        s.len() == 1
    });
    let refused_before = before[0].1.counters.transport.refused_quic;
    let wrong = colony.root.path().join("other-ca");
    aware_agent::trust::init_local_colony(&wrong, "test").unwrap();
    let (code, out, err) = run(
        &["status", "--json", "--advertise", &colony.addr(0)],
        &[("AWARE_ADMIN_DIR", &wrong)],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.is_empty());
    assert!(err.contains(&colony.addr(0)), "{err}");
    // Refused and counted; the agent keeps serving its own admin.
    colony.wait_for("the refusal counted", Duration::from_secs(10), |s| {
        s[0].1.counters.transport.refused_quic > refused_before
    });
}

#[test]
fn sigterm_stops_an_agent_cleanly_and_a_second_agent_cannot_share_its_data_directory() {
    let mut colony = Colony::new(1);
    colony.start(0);
    colony.wait_for("the agent answers", Duration::from_secs(20), |s| {
        s.len() == 1
    });

    // Same data directory, another port: refused by the lock, naming the directory.
    let port = common::free_ports(1)[0];
    let out = Command::new(BIN)
        .args([
            "run",
            "--colony",
            "test",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--data-dir")
        .arg(&colony.agents[0].dir)
        .arg("--ca-dir")
        .arg(&colony.ca)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another aware-agent holds this data directory"),
        "{err}"
    );

    let mut child = colony.agents[0].child.take().unwrap();
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
    let log = std::fs::read_to_string(colony.log(0)).unwrap();
    assert!(log.contains("agent stopped"), "{log}");
}
