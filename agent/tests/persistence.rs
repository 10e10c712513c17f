//! The state file on a real disk: round trip, the temp-file-then-rename protocol (a crash before
//! the rename leaves the old state), the directory lock, and the real binary refusing to start
//! on a truncated, flipped, wrong-magic or wrong-version file with an error naming the file.
#![allow(clippy::unwrap_used)]

mod common;

use aware_agent::dna::Persisted;
use aware_agent::persist::{self, PersistError, STATE_FILE, StateDir, TEMP_FILE};
use aware_agent::swarm_core::NodeId;
use aware_agent::swarm_core::wire::{ColonyState, Version};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn sample(term: u64) -> Persisted {
    Persisted {
        node: NodeId(0x1234_5678_9abc_def0),
        incarnation: 2,
        term,
        voted_for: Some(NodeId(42)),
        state: ColonyState {
            version: Version { term, seq: 3 },
            roster: vec![NodeId(42), NodeId(0x1234_5678_9abc_def0)].into(),
            ..ColonyState::default()
        },
        commit: Version { term, seq: 2 },
        committed_roster: vec![NodeId(42)].into(),
        restart_penalty: 1.0,
    }
}

/// Opens `dir` again after this process dropped its `StateDir`. The lock is an `flock` on an
/// open file description: a child that another test in this binary forks at that moment holds a
/// copy of the descriptor until its `exec` closes it (close-on-exec), so the lock can outlive the
/// drop by that window. Retried while `Locked` for at most 10 s; any other error fails at once.
#[allow(clippy::disallowed_methods)] // the deadline reads the clock
fn reopen(dir: &Path) -> StateDir {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match StateDir::open(dir) {
            Ok(store) => return store,
            Err(PersistError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("reopen {}: {e}", dir.display()),
        }
    }
}

#[test]
fn state_round_trips_through_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateDir::open(dir.path()).unwrap();
    assert_eq!(store.load().unwrap(), None, "first boot: no state");
    store.store(&sample(5)).unwrap();
    store.store(&sample(6)).unwrap();
    assert_eq!(store.load().unwrap(), Some(sample(6)));
    assert!(
        !dir.path().join(TEMP_FILE).exists(),
        "the temp file was renamed"
    );
    drop(store);
    let again = reopen(dir.path());
    assert_eq!(again.load().unwrap(), Some(sample(6)));
}

#[test]
fn a_crash_before_the_rename_leaves_the_old_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateDir::open(dir.path()).unwrap();
    store.store(&sample(5)).unwrap();
    drop(store);
    // What a crash between writing the temp file and renaming it leaves behind: a half-written
    // newer state beside the old one.
    let newer = persist::encode(&sample(9)).unwrap();
    std::fs::write(dir.path().join(TEMP_FILE), &newer[..newer.len() / 2]).unwrap();
    let store = reopen(dir.path());
    assert_eq!(store.load().unwrap(), Some(sample(5)));
    assert!(
        !dir.path().join(TEMP_FILE).exists(),
        "the stray temp file is removed"
    );
}

#[test]
fn a_second_agent_cannot_open_a_locked_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _first = StateDir::open(dir.path()).unwrap();
    match StateDir::open(dir.path()) {
        Err(PersistError::Locked { .. }) => {}
        other => panic!("expected the lock to refuse: {other:?}"),
    }
}

/// Runs `aware-agent run` on a data directory holding `bytes` as its state file.
fn run_on(dir: &Path, bytes: &[u8]) -> (i32, String) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(STATE_FILE), bytes).unwrap();
    // An agent that accepted the file would run forever: killed after 30 s, it fails the
    // test on its exit code instead of hanging CI.
    common::output_within(
        Command::new(env!("CARGO_BIN_EXE_aware-agent"))
            .args(["run", "--colony", "c", "--bind", "127.0.0.1:0"])
            .arg("--advertise")
            .arg("127.0.0.1:1")
            .arg("--data-dir")
            .arg(dir),
        Duration::from_secs(30),
    )
}

#[test]
fn the_agent_refuses_to_start_on_a_damaged_state_file() {
    let root = tempfile::tempdir().unwrap();
    let good = persist::encode(&sample(7)).unwrap();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut magic = good.clone();
    magic[0] = b'X';
    let mut version = good.clone();
    let future = persist::FORMAT_VERSION + 1;
    version[8..12].copy_from_slice(&future.to_le_bytes());
    let future_error = format!("format version {future} is not supported");
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("truncated", good[..good.len() - 3].to_vec(), "truncated"),
        ("empty", Vec::new(), "truncated"),
        ("flipped", flipped, "checksum mismatch"),
        ("magic", magic, "wrong magic"),
        ("version", version, future_error.as_str()),
    ];
    for (name, bytes, expected) in cases {
        let dir = root.path().join(name);
        let (code, stderr) = run_on(&dir, &bytes);
        let file = dir.join(STATE_FILE).display().to_string();
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(stderr.contains(&file), "{name}: no file name in {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        // Nothing was overwritten.
        assert_eq!(
            std::fs::read(dir.join(STATE_FILE)).unwrap(),
            bytes,
            "{name}"
        );
    }
}
