//! Data-driven checks of the scenario format.
//!
//! - `tests/scenario_errors/NAME.yaml` is a bad scenario file and
//!   `NAME.expected` holds the exact one-line error it must produce (a file
//!   that parses is also validated against its own `nodes`, so the folder can
//!   hold `Scenario::validate` cases too). Run with `UPDATE_EXPECT=1` to
//!   rewrite the `.expected` files from the current output, then review the diff.
//! - Every shipped file in `scenarios/` must parse and validate.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs;
use std::path::{Path, PathBuf};

use aware_sim::scenario::{Scenario, ScenarioError};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files in `dir` (relative to the crate) ending in `.ext`, sorted.
fn files_with_extension(dir: &str, ext: &str) -> Vec<PathBuf> {
    let dir = crate_dir().join(dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Parses, then validates against the file's own `nodes` when it has one.
fn check(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
    let scenario = Scenario::parse(text, file)?;
    if let Some(nodes) = scenario.nodes {
        scenario.validate(nodes, file)?;
    }
    Ok(scenario)
}

#[test]
fn bad_scenarios_give_the_expected_errors() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1");
    let cases = files_with_extension("tests/scenario_errors", "yaml");
    assert!(
        cases.len() >= 12,
        "expected at least 12 cases in tests/scenario_errors, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for path in &cases {
        let shown = format!("tests/scenario_errors/{}", file_name(path));
        let text = fs::read_to_string(path).unwrap();
        let actual = match check(&text, &shown) {
            Ok(scenario) => {
                failures.push(format!("{shown}: parsed without error: {scenario:?}"));
                continue;
            }
            Err(err) => err.to_string(),
        };
        if actual.contains('\n') || !actual.starts_with(&format!("{shown}:")) {
            failures.push(format!(
                "{shown}: error is not one line starting with the file name: {actual:?}"
            ));
        }
        let expected_path = path.with_extension("expected");
        if update {
            fs::write(&expected_path, format!("{actual}\n")).unwrap();
            continue;
        }
        match fs::read_to_string(&expected_path) {
            Ok(expected) => {
                let expected = expected.trim_end_matches(['\n', '\r']);
                if expected != actual {
                    failures.push(format!(
                        "{shown}:\n    expected: {expected}\n    actual:   {actual}"
                    ));
                }
            }
            Err(e) => failures.push(format!(
                "{shown}: cannot read {}: {e}\n    actual:   {actual}",
                file_name(&expected_path)
            )),
        }
    }
    for expected in files_with_extension("tests/scenario_errors", "expected") {
        if !expected.with_extension("yaml").exists() {
            failures.push(format!(
                "tests/scenario_errors/{}: no matching .yaml file",
                file_name(&expected)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenario error cases failed (UPDATE_EXPECT=1 rewrites the .expected files):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn shipped_scenarios_parse_and_validate() {
    let files = files_with_extension("scenarios", "yaml");
    assert!(!files.is_empty(), "no scenario files in scenarios/");
    let mut failures = Vec::new();
    for path in &files {
        let shown = format!("scenarios/{}", file_name(path));
        let text = fs::read_to_string(path).unwrap();
        match check(&text, &shown) {
            Ok(scenario) => {
                let stem = path.file_stem().unwrap().to_string_lossy();
                if scenario.name != stem {
                    failures.push(format!(
                        "{shown}: name `{}` differs from the file name",
                        scenario.name
                    ));
                }
                if scenario.nodes.is_none() || scenario.duration_us.is_none() {
                    failures.push(format!("{shown}: shipped scenarios set nodes and duration"));
                }
                if !text.starts_with('#') {
                    failures.push(format!(
                        "{shown}: start with a comment saying what it checks"
                    ));
                }
            }
            Err(err) => failures.push(err.to_string()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shipped_scenarios_say_what_the_brief_says() {
    use aware_sim::scenario::{Action, MICROS_PER_SEC, RestartTarget, Target};
    let load = |name: &str| {
        let path = crate_dir().join("scenarios").join(format!("{name}.yaml"));
        let text = fs::read_to_string(&path).unwrap();
        Scenario::parse(&text, name).unwrap()
    };
    let sec = MICROS_PER_SEC;

    let cold = load("cold-start");
    assert_eq!(
        (cold.nodes, cold.duration_us, cold.bootstrap_expect),
        (Some(100), Some(30 * sec), Some(100))
    );
    assert_eq!(cold.start_spread_us, sec);
    assert_eq!(
        (cold.network.latency_min_us, cold.network.latency_max_us),
        (1_000, 5_000)
    );
    assert_eq!(cold.network.loss, 0.01);
    assert!(cold.events.is_empty());

    let queen = load("queen-crash");
    assert_eq!(
        (queen.nodes, queen.duration_us),
        (Some(100), Some(60 * sec))
    );
    assert_eq!(queen.events.len(), 1);
    assert_eq!(queen.events[0].at_us, 30 * sec);
    assert_eq!(queen.events[0].action, Action::Crash(Target::Queen));

    let workers = load("worker-crash");
    assert_eq!(
        (workers.nodes, workers.duration_us, workers.network.loss),
        (Some(100), Some(60 * sec), 0.01)
    );
    let crashed: usize = workers
        .events
        .iter()
        .map(|e| match &e.action {
            Action::Crash(Target::Nodes(list)) => list.len(),
            other => panic!("worker-crash only crashes workers: {other:?}"),
        })
        .sum();
    assert_eq!(crashed, 5);

    let repeated = load("repeated-queen-crash");
    assert_eq!(
        (repeated.nodes, repeated.duration_us),
        (Some(100), Some(120 * sec))
    );
    let times: Vec<u64> = repeated.events.iter().map(|e| e.at_us / sec).collect();
    assert_eq!(times, [20, 35, 50, 65, 80]);
    assert!(
        repeated.events[..4]
            .iter()
            .all(|e| e.action == Action::Crash(Target::Queen))
    );
    assert_eq!(
        repeated.events[4].action,
        Action::Restart(RestartTarget::Crashed)
    );

    let partition = load("partition");
    assert_eq!(
        (partition.nodes, partition.duration_us),
        (Some(100), Some(90 * sec))
    );
    assert_eq!(partition.events.len(), 2);
    assert_eq!(partition.events[0].at_us, 30 * sec);
    assert_eq!(
        partition.events[0].action,
        Action::Partition(vec![(0..60).collect(), (60..100).collect()])
    );
    assert_eq!(partition.events[1].at_us, 60 * sec);
    assert_eq!(partition.events[1].action, Action::Heal);

    let lossy = load("lossy-network");
    assert_eq!(
        (lossy.nodes, lossy.duration_us),
        (Some(100), Some(600 * sec))
    );
    assert_eq!(lossy.network.loss, 0.05);
    assert!(lossy.events.is_empty());

    let rolling = load("rolling-restart");
    assert_eq!(
        (rolling.nodes, rolling.duration_us),
        (Some(20), Some(120 * sec))
    );
    let mut expected = Vec::new();
    for i in 0..10u64 {
        let crash_at = (20 + 8 * i) * sec;
        let node = usize::try_from(i).unwrap();
        expected.push((crash_at, Action::Crash(Target::Nodes(vec![node]))));
        expected.push((
            crash_at + 3 * sec,
            Action::Restart(RestartTarget::Nodes(vec![node])),
        ));
    }
    let actual: Vec<(u64, Action)> = rolling
        .events
        .iter()
        .map(|e| (e.at_us, e.action.clone()))
        .collect();
    assert_eq!(actual, expected);

    let chaos = load("chaos");
    assert_eq!(
        (chaos.nodes, chaos.duration_us),
        (Some(20), Some(120 * sec))
    );
    let spec = chaos.chaos.unwrap();
    assert_eq!(
        (
            spec.from_us,
            spec.until_us,
            spec.mean_interval_us,
            spec.max_drift_ppm,
            spec.max_pause_us
        ),
        (10 * sec, 90 * sec, 4 * sec, 200, 2 * sec)
    );
    assert_eq!(
        chaos.drift,
        [aware_sim::scenario::DriftClass {
            nodes: None,
            rate: aware_sim::scenario::DriftRate::Uniform(200)
        }]
    );
}
