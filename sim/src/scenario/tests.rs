//! Unit tests of the scenario format's parts (durations, node ranges, errors with positions).

use super::nodes::{expand, parse_node_spec};
use super::values::format_duration;
use super::*;

fn parse(text: &str) -> Result<Scenario, String> {
    Scenario::parse(text, "t.yaml").map_err(|e| e.to_string())
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(s) => panic!("expected an error, parsed {s:?}"),
        Err(e) => e,
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration_us("250us"), Ok(250));
    assert_eq!(parse_duration_us("250µs"), Ok(250));
    assert_eq!(parse_duration_us("5ms"), Ok(5_000));
    assert_eq!(parse_duration_us("1.5s"), Ok(1_500_000));
    assert_eq!(parse_duration_us("0.001s"), Ok(1_000));
    assert_eq!(parse_duration_us("1.000000s"), Ok(1_000_000));
    assert_eq!(parse_duration_us("2m"), Ok(120_000_000));
    assert_eq!(parse_duration_us("1h"), Ok(3_600_000_000));
    assert_eq!(parse_duration_us(" 30 s "), Ok(30_000_000));
    assert_eq!(parse_duration_us("0s"), Ok(0));
    assert_eq!(
        parse_duration_us("0.5us"),
        Err("duration `0.5us` is not a whole number of microseconds".to_owned())
    );
    assert_eq!(
        parse_duration_us("30"),
        Err(
            "duration `30` has no unit; write e.g. `30s` or `30ms` (units: us, ms, s, m, h)"
                .to_owned()
        )
    );
    assert_eq!(
        parse_duration_us("5sec"),
        Err("unknown unit `sec` in duration `5sec` (units: us, ms, s, m, h)".to_owned())
    );
    for bad in [
        "", "s", "-5s", "1..2s", "1.s", ".5s", "1.2.3s", "abc", "5 s s",
    ] {
        assert!(parse_duration_us(bad).is_err(), "{bad:?} should not parse");
    }
    assert!(parse_duration_us("99999999999999999999h").is_err());
    assert!(parse_duration_us("18446744073709551615h").is_err());
    assert!(parse_duration_us("0.123456789012345678901234567890h").is_err());
    assert_eq!(parse_duration_us("18446744073709551615us"), Ok(u64::MAX));
    assert!(parse_duration_us("18446744073709551616us").is_err());
}

#[test]
fn duration_formatting() {
    assert_eq!(format_duration(0), "0s");
    assert_eq!(format_duration(30 * MICROS_PER_SEC), "30s");
    assert_eq!(format_duration(120 * MICROS_PER_SEC), "120s");
    assert_eq!(format_duration(1_500_000), "1500ms");
    assert_eq!(format_duration(7), "7us");
    for us in [0, 7, 1_500, 1_500_000, 60_000_000, 3_600_000_000, u64::MAX] {
        assert_eq!(parse_duration_us(&format_duration(us)), Ok(us));
    }
}

#[test]
fn node_ranges() {
    assert_eq!(parse_node_spec("0..50"), Ok(0..50));
    assert_eq!(parse_node_spec("0..=49"), Ok(0..50));
    assert_eq!(parse_node_spec(" 3 .. 5 "), Ok(3..5));
    assert_eq!(parse_node_spec("7"), Ok(7..8));
    assert_eq!(parse_node_spec("5..=5"), Ok(5..6));
    for bad in [
        "5..2",
        "5..5",
        "5..=4",
        "a..b",
        "..5",
        "5..",
        "",
        "x",
        "-1..3",
        "1...3",
        "1..=",
        "0..99999999999999999999999",
    ] {
        assert!(parse_node_spec(bad).is_err(), "{bad:?} should not parse");
    }
    assert!(parse_node_spec(&format!("0..{MAX_NODES}")).is_ok());
    assert!(parse_node_spec(&format!("0..={MAX_NODES}")).is_err());
    assert_eq!(expand(vec![5..8, 0..2, 1..3, 6..7]), vec![0, 1, 2, 5, 6, 7]);
}

#[test]
fn brief_example_parses() {
    let text = r#"
name: queen-crash
nodes: 100
duration: 80s
bootstrap_expect: 100
start_spread: 1s
network: {latency: "1ms..5ms", loss: 0.01, duplicate: 0.0, reorder: 0.0}
events:
  - {at: 30s, crash: queen}
  - {at: 40s, restart: crashed}
  - {at: 50s, partition: [[0, 1, 2], ["3..10"]]}
  - {at: 55s, oneway: {from: [0], to: ["1..5"]}}
  - {at: 60s, loss: 0.2}
  - {at: 61s, skew: {node: 3, offset: "-500ms"}}
  - {at: 70s, heal: true}
  - {at: 20s, crash: [9, 1, 2, "5..8", 1]}
  - {at: 20s, crash: "0..=3"}
  - {at: 20s, restart: 3}
chaos: {from: 10s, until: 70s, every: 5s, max_drift: 200ppm, max_pause: 2s}
"#;
    let s = parse(text).unwrap();
    assert_eq!(s.name, "queen-crash");
    assert_eq!(s.nodes, Some(100));
    assert_eq!(s.duration_us, Some(80 * MICROS_PER_SEC));
    assert_eq!(s.bootstrap_expect, Some(100));
    assert_eq!(s.start_spread_us, MICROS_PER_SEC);
    assert_eq!(
        s.network,
        NetworkSpec {
            latency_min_us: 1_000,
            latency_max_us: 5_000,
            loss: 0.01,
            duplicate: 0.0,
            reorder: 0.0
        }
    );
    let sec = MICROS_PER_SEC;
    let expected = vec![
        TimedEvent {
            at_us: 20 * sec,
            action: Action::Crash(Target::Nodes(vec![1, 2, 5, 6, 7, 9])),
        },
        TimedEvent {
            at_us: 20 * sec,
            action: Action::Crash(Target::Nodes(vec![0, 1, 2, 3])),
        },
        TimedEvent {
            at_us: 20 * sec,
            action: Action::Restart(RestartTarget::Nodes(vec![3])),
        },
        TimedEvent {
            at_us: 30 * sec,
            action: Action::Crash(Target::Queen),
        },
        TimedEvent {
            at_us: 40 * sec,
            action: Action::Restart(RestartTarget::Crashed),
        },
        TimedEvent {
            at_us: 50 * sec,
            action: Action::Partition(vec![vec![0, 1, 2], (3..10).collect()]),
        },
        TimedEvent {
            at_us: 55 * sec,
            action: Action::OneWay {
                from: vec![0],
                to: vec![1, 2, 3, 4],
            },
        },
        TimedEvent {
            at_us: 60 * sec,
            action: Action::Loss(0.2),
        },
        TimedEvent {
            at_us: 61 * sec,
            action: Action::Skew {
                node: Who::Node(3),
                offset_us: -500_000,
            },
        },
        TimedEvent {
            at_us: 70 * sec,
            action: Action::Heal,
        },
    ];
    assert_eq!(s.events, expected);
    assert_eq!(
        s.chaos,
        Some(ChaosSpec {
            from_us: 10 * sec,
            until_us: 70 * sec,
            mean_interval_us: 5 * sec,
            max_drift_ppm: 200,
            max_pause_us: 2 * sec,
        })
    );
    s.validate(100, "t.yaml").unwrap();
}

#[test]
fn defaults() {
    let s = parse("nodes: 3\n").unwrap();
    assert_eq!(s.name, "t");
    assert_eq!(s.duration_us, None);
    assert_eq!(s.start_spread_us, 0);
    assert_eq!(s.network, NetworkSpec::default());
    assert_eq!(s.network.latency_min_us, 1_000);
    assert_eq!(s.network.latency_max_us, 5_000);
    assert!(s.events.is_empty());
    assert_eq!(s.chaos, None);
    let empty = Scenario::parse("# nothing\n", "dir/empty.yaml").unwrap();
    assert_eq!(empty.name, "empty");
    assert_eq!(parse("events:\n").unwrap().events, vec![]);
    let chaos = parse("chaos: {until: 60s}\n").unwrap().chaos.unwrap();
    assert_eq!(chaos.from_us, 5 * MICROS_PER_SEC);
    assert_eq!(chaos.mean_interval_us, 5 * MICROS_PER_SEC);
    assert_eq!((chaos.max_drift_ppm, chaos.max_pause_us), (0, 0));
    assert!(parse("nodes: 3\n").unwrap().drift.is_empty());
    let net = parse("network: {latency: 3ms, loss: 1}\n").unwrap().network;
    assert_eq!(
        (net.latency_min_us, net.latency_max_us, net.loss),
        (3_000, 3_000, 1.0)
    );
    let partition = parse("events: [{at: 1s, partition: [\"0..2\", [5, \"3..=3\"]]}]\n").unwrap();
    assert_eq!(
        partition.events[0].action,
        Action::Partition(vec![vec![0, 1], vec![3, 5]])
    );
    assert_eq!(
        parse("events: [{at: 1s, partition: []}]\n").unwrap().events[0].action,
        Action::Partition(vec![])
    );
}

#[test]
fn errors_carry_positions() {
    assert_eq!(
        error("nodes: 3\nnetwork:\n  lattency: 1ms\n"),
        "t.yaml:3:3: network: unknown field `lattency`, did you mean `latency`?"
    );
    assert_eq!(
        error("events:\n  - {at: 1s, crash: 1, restart: 2}\n"),
        "t.yaml:2:24: events[0]: an event has exactly one action, but this one has `crash` and `restart`; split it into two events"
    );
    assert_eq!(
        error("events:\n  - {at: 1s, crash: Queen}\n"),
        "t.yaml:2:21: events[0].crash: unknown target `Queen`; did you mean `queen`?"
    );
    assert_eq!(
        error("events:\n  - {at: 1s, partition: [[0, 1], [\"1..3\"]]}\n"),
        "t.yaml:2:34: events[0].partition[1]: node 1 is in two partition groups (0 and 1); a node can be in only one"
    );
    assert_eq!(
        error("bootstrap_expect: 5\nnodes: 3\n"),
        "t.yaml:2:8: nodes: nodes 3 is fewer than bootstrap_expect (5)"
    );
    assert_eq!(
        error("events: [{at: 70s, heal: true}]\nduration: 60s\n"),
        "t.yaml:2:11: duration: duration 60s ends before events[0] (at 70s)"
    );
    assert_eq!(
        error("duration: 60s\nevents: [{at: 70s, heal: true}]\n"),
        "t.yaml:2:15: events[0].at: at 70s is after the end of the scenario (duration 60s)"
    );
    assert_eq!(
        error("duration: 60s\nchaos: {until: 70s}\n"),
        "t.yaml:2:8: chaos: chaos `until` (70s) is after the end of the scenario (duration 60s)"
    );
    assert_eq!(
        error("nodes: 1\nnodes: 2\n"),
        "t.yaml:2:1: duplicate field `nodes`"
    );
}

#[test]
fn validate_checks_indices() {
    let s = parse("nodes: 10\nbootstrap_expect: 10\nevents:\n  - {at: 1s, crash: queen}\n  - {at: 30s, oneway: {from: 1, to: [2, 12]}}\n").unwrap();
    assert_eq!(
        s.validate(10, "f.yaml").unwrap_err().to_string(),
        "f.yaml: events[1] (at 30s): node index 12 out of range (the colony has 10 nodes)"
    );
    assert_eq!(
        s.validate(5, "f.yaml").unwrap_err().to_string(),
        "f.yaml: bootstrap_expect 10 is more than the colony's 5 nodes"
    );
    assert!(s.validate(13, "f.yaml").is_ok());
    assert!(s.validate(0, "f.yaml").is_err());
}

#[test]
fn never_panics_on_odd_input() {
    let inputs = [
        "",
        "~",
        "[]",
        "- 1",
        "42",
        "\"text\"",
        "nodes: [",
        "{",
        "}",
        "\t",
        "a: b: c",
        "nodes: -1",
        "nodes: 1.5",
        "nodes: 99999999999999999999999",
        "duration: ~",
        "events: {}",
        "events: [1]",
        "events: [{}]",
        "events: [{at: 1s}]",
        "events: [{heal: true}]",
        "events: [{at: 1s, crash: []}]",
        "events: [{at: 1s, crash: -3}]",
        "events: [{at: 1s, crash: 1.5}]",
        "events: [{at: 1s, partition: [1, 2]}]",
        "events: [{at: 1s, partition: \"0..5\"}]",
        "events: [{at: 1s, skew: {node: 1, offset: \"--5s\"}}]",
        "events: [{at: 1s, pause: {node: {}, for: ~}}]",
        "drift: [{}]",
        "drift: {max: 5ppm}",
        "drift: [200ppm]",
        "chaos: {until: 10s, max_drift: -5ppm, max_skew: [1]}",
        "events: [{at: 1s, loss: .nan}]",
        "events: [{at: 1s, loss: -0.0}]",
        "events: [{at: 1s, loss: .inf}]",
        "network: {latency: \"5ms..1ms\"}",
        "network: {latency: \"..\"}",
        "network: {latency: 5}",
        "chaos: {until: 1s, from: 2s}",
        "chaos: {until: 10s, every: 0s}",
        "chaos: 5",
        "&a [*a]",
        "a: &x 1\nb: *y",
        "--- 1\n--- 2",
        "!!binary aGVsbG8=",
        "nodes: !tag 5",
        "name: \"\\u0000\\n\"",
        "events: [{at: \"1\\ns\", heal: true}]",
        "events: [{at: 1µ, heal: true}]",
        "events: [{at: 1s, crash: \"ü..ß\"}]",
        "? [1, 2]\n: 3",
        "events: [{? [a] : 1}]",
    ];
    for input in inputs {
        if let Err(e) = Scenario::parse(input, "odd.yaml") {
            let shown = e.to_string();
            assert!(shown.starts_with("odd.yaml:"), "{shown}");
            assert!(!shown.contains('\n'), "{shown}");
        }
    }
}

#[test]
fn drift_forms() {
    assert_eq!(
        parse("drift: 200ppm\n").unwrap().drift,
        vec![DriftClass {
            nodes: None,
            rate: DriftRate::Uniform(200)
        }]
    );
    let classes = parse(
        "drift:\n  - {max: 100ppm}\n  - {nodes: \"0..3\", rate: -250ppm}\n  - {nodes: [7], rate: +5ppm}\n",
    )
    .unwrap()
    .drift;
    assert_eq!(
        classes,
        vec![
            DriftClass {
                nodes: None,
                rate: DriftRate::Uniform(100)
            },
            DriftClass {
                nodes: Some(vec![0, 1, 2]),
                rate: DriftRate::Fixed(-250)
            },
            DriftClass {
                nodes: Some(vec![7]),
                rate: DriftRate::Fixed(5)
            },
        ]
    );
    assert_eq!(parse_ppm("0ppm"), Ok(0));
    assert_eq!(parse_ppm(" -500000ppm "), Ok(-500_000));
    for bad in [
        "",
        "ppm",
        "5",
        "1.5ppm",
        "5 ms",
        "500001ppm",
        "--5ppm",
        "99999999999999999999ppm",
    ] {
        assert!(parse_ppm(bad).is_err(), "{bad:?} should not parse");
    }
    let s = parse("nodes: 4\ndrift: [{nodes: \"2..6\", rate: 1ppm}]\n").unwrap();
    assert!(s.validate(4, "t.yaml").is_err());
    assert!(s.validate(6, "t.yaml").is_ok());
}

#[test]
fn pause_load_and_skew_take_one_node_or_the_queen() {
    let s = parse(
        "events:\n  - {at: 1s, pause: {node: queen, for: 1500ms}}\n  - {at: 2s, pause: {node: 4, for: 2s}}\n  - {at: 3s, load: {node: queen, to: 0.5}}\n  - {at: 4s, skew: {node: queen, offset: -1s}}\n",
    )
    .unwrap();
    let actions: Vec<Action> = s.events.into_iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        vec![
            Action::Pause {
                node: Who::Queen,
                for_us: 1_500_000
            },
            Action::Pause {
                node: Who::Node(4),
                for_us: 2 * MICROS_PER_SEC
            },
            Action::Load {
                node: Who::Queen,
                load: 0.5
            },
            Action::Skew {
                node: Who::Queen,
                offset_us: -1_000_000
            },
        ]
    );
    let s = parse("events: [{at: 1s, pause: {node: 9, for: 1s}}]\n").unwrap();
    assert!(s.validate(5, "t.yaml").is_err());
    for bad in [
        "events: [{at: 1s, pause: {node: queen, for: 0s}}]",
        "events: [{at: 1s, pause: {node: -1, for: 1s}}]",
        "events: [{at: 1s, pause: {node: [1, 2], for: 1s}}]",
        "events: [{at: 1s, load: {node: 1, to: -0.5}}]",
        "events: [{at: 1s, load: {node: 1}}]",
    ] {
        assert!(Scenario::parse(bad, "t.yaml").is_err(), "{bad}");
    }
}
