//! `aware-sim run --svg` and `sweep --svg` draw well-formed SVG with what they claim (the title,
//! a band per reign, a marker per crash, a panel per metric with p50/p99), and the sweep's progress
//! bar shows on a terminal only. These run the real binary.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use aware_sim::plot::{mark_color, svg_color};
use aware_sim::series::MarkKind;
use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aware-sim"))
}

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pictures");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 15-node colony: a worker crashes, then the queen, then both restart, a partition, a heal.
const SCENARIO: &str = "\
name: pictures-test
nodes: 15
duration: 40s
bootstrap_expect: 15
start_spread: 1s
network: {latency: \"1ms..5ms\", loss: 0.01}
events:
  - {at: 8s, crash: 3}
  - {at: 12s, crash: queen}
  - {at: 18s, restart: crashed}
  - {at: 22s, partition: [\"0..10\", \"10..15\"]}
  - {at: 26s, heal: true}
";
const CRASHES: usize = 2;

/// The text of every `<text>` element.
fn texts(doc: &roxmltree::Document) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_owned())
        .collect()
}

#[test]
fn run_svg_draws_title_reigns_and_crash_markers() {
    let scenario = tmp("run.yaml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let svg_path = tmp("run.svg");
    let _ = std::fs::remove_file(&svg_path);
    let out = bin()
        .arg("run")
        .arg(&scenario)
        .args(["--seed", "3", "--json", "--svg"])
        .arg(&svg_path)
        .output()
        .unwrap();
    ok(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let queens = report["queens"].as_array().unwrap().len();
    assert!(queens >= 2, "a queen crash crowns a second queen: {queens}");

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert!(doc.root_element().has_tag_name("svg"));
    let texts = texts(&doc);
    assert!(
        texts
            .iter()
            .any(|t| t == "pictures-test: 15 nodes, seed 3, 40 s simulated"),
        "title missing: {texts:?}"
    );

    // One filled band per reign, in one of the two queen colours.
    let bands = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect"))
        .filter(|n| matches!(n.attribute("fill"), Some("#F6C85F" | "#E6A032")))
        .count();
    assert_eq!(bands, queens, "a band per reign");

    // One vertical line per crash in the crash colour (plus one in the legend), and a label each.
    let crash = svg_color(mark_color(MarkKind::Crash));
    let lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some(crash.as_str()))
        .count();
    assert_eq!(lines, CRASHES + 1, "crash markers (+1 legend entry)");
    let labels: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text") && n.attribute("fill") == Some(crash.as_str()))
        .map(|n| n.text().unwrap_or("").trim().to_owned())
        .collect();
    assert_eq!(labels.len(), CRASHES, "{labels:?}");
    assert!(labels.iter().any(|l| l == "crash n3"), "{labels:?}");
    assert!(
        labels.iter().any(|l| l.starts_with("crash queen n")),
        "{labels:?}"
    );
    for want in ["partition 10|5", "heal", "restart 2 nodes"] {
        assert!(texts.iter().any(|t| t == want), "{want} missing: {texts:?}");
    }
    assert!(
        texts.iter().any(|t| t.starts_with("new queen +")),
        "failover marker missing: {texts:?}"
    );
}

fn sweep_args(svg: Option<&PathBuf>) -> Command {
    let scenario = tmp("sweep.yaml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let mut cmd = bin();
    cmd.arg("sweep")
        .arg(&scenario)
        .args(["--seeds", "0..4", "--duration", "20s"]);
    if let Some(svg) = svg {
        cmd.arg("--svg").arg(svg);
    }
    cmd
}

#[test]
fn sweep_svg_draws_a_histogram_per_metric_with_percentiles() {
    let svg_path = tmp("sweep.svg");
    let _ = std::fs::remove_file(&svg_path);
    let out = sweep_args(Some(&svg_path)).output().unwrap();
    ok(&out);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let texts = texts(&doc);
    assert!(
        texts
            .iter()
            .any(|t| t == "pictures-test: 4 seeds × 15 nodes"),
        "{texts:?}"
    );
    // One failover per queen crash: 4 or more (node 3 may have been queen when it crashed).
    for caption in [
        "first queen (n=4)",
        "failover: crash to new queen (n=",
        "membership converged (n=4)",
    ] {
        assert!(
            texts.iter().any(|t| t.starts_with(caption)),
            "{caption}: {texts:?}"
        );
    }
    for p in ["p50 ", "p99 "] {
        let n = texts.iter().filter(|t| t.starts_with(p)).count();
        assert_eq!(n, 3, "{p} on each panel: {texts:?}");
    }
}

const BAR_CHARS: [char; 3] = ['█', '\r', '\x1b'];

#[test]
fn sweep_progress_bar_is_absent_when_piped() {
    let out = sweep_args(None).output().unwrap();
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(BAR_CHARS),
        "progress bar on a pipe: {stderr:?}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 runs of 15 nodes"));
}

/// The counterpart: under a pseudo-terminal (util-linux `script`) the bar is drawn, unless --json.
#[test]
fn sweep_progress_bar_shows_on_a_terminal_but_not_with_json() {
    let cmd = |json: bool| {
        let c = sweep_args(None);
        let mut line: Vec<String> = std::iter::once(c.get_program())
            .chain(c.get_args())
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect();
        if json {
            line.push("--json".to_owned());
        }
        Command::new("script")
            .args(["-qec", &line.join(" "), "/dev/null"])
            .output()
            .unwrap()
    };
    let tty = cmd(false);
    ok(&tty);
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(shown.contains('█'), "no bar on a terminal: {shown:?}");
    let json = cmd(true);
    ok(&json);
    let quiet = String::from_utf8_lossy(&json.stdout);
    assert!(!quiet.contains('█'), "bar with --json: {quiet:?}");
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Recording the series is observation only: the same seed gives the same trace with or without.
#[test]
fn recording_the_series_changes_nothing_in_the_run() {
    use aware_sim::engine::{Options, Sim};
    let sc = aware_sim::scenario::Scenario::parse(SCENARIO, "pictures-test.yaml").unwrap();
    let opts = Options {
        nodes: 15,
        seed: 5,
        duration_us: 30_000_000,
        preload_membership: false,
        debug: false,
        spec: None,
        timeline: false,
    };
    let plain = Sim::new(&sc, opts.clone()).run();
    let recorded = Sim::new(&sc, opts).record_series().run();
    assert_eq!(plain.trace_hash, recorded.trace_hash);
    assert!(plain.series.is_none());
    let series = recorded.series.unwrap();
    // A sample every 100 ms over 30 s, and the five scripted actions.
    assert_eq!(series.points().len(), 301);
    assert_eq!(series.markers.len(), 5, "{:?}", series.markers);
}
