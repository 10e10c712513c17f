//! End-to-end properties of the simulator and the colony it runs (small colonies, few seeds:
//! the long sweeps are documented commands in benches/README.md).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use aware_sim::engine::{Options, Sim};
use aware_sim::report::Report;
use aware_sim::scenario::Scenario;

fn scenario(name: &str) -> Scenario {
    let path = format!("{}/scenarios/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    Scenario::parse(&text, &path).unwrap()
}

fn run(sc: &Scenario, nodes: usize, seed: u64, duration_s: u64) -> Report {
    Sim::new(
        sc,
        Options {
            nodes,
            seed,
            duration_us: duration_s * 1_000_000,
            preload_membership: false,
            debug: false,
            spec: None,
            timeline: true,
        },
    )
    .run()
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    let sc = scenario("queen-crash");
    let a = run(&sc, 30, 7, 40);
    let b = run(&sc, 30, 7, 40);
    let c = run(&sc, 30, 8, 40);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.events, b.events);
    assert_eq!(a.timeline, b.timeline);
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn cold_start_crowns_one_queen_and_converges() {
    let sc = scenario("cold-start");
    for seed in 0..3 {
        let r = run(&sc, 100, seed, 15);
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        let first = r.first_queen_s.expect("a queen is crowned");
        assert!(first < 3.0, "seed {seed}: first queen at {first}s");
        assert!(
            r.membership_converged_s.is_some(),
            "seed {seed}: membership never converged"
        );
        assert_eq!(r.queens.len(), 1, "seed {seed}: {:?}", r.queens);
    }
}

#[test]
fn cold_start_membership_converges_within_one_and_a_half_seconds_of_the_last_boot() {
    let sc = scenario("cold-start");
    for seed in 0..5 {
        let r = run(&sc, 100, seed, 10);
        let after = r.converged_after_last_boot_s.expect("membership converges");
        assert!(
            after <= 1.5,
            "seed {seed}: converged {after}s after the last boot"
        );
    }
}

#[test]
fn every_survivor_knows_a_crashed_worker_within_three_seconds() {
    let sc = scenario("worker-crash");
    for seed in 0..3 {
        let r = run(&sc, 100, seed, 45);
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        assert_eq!(r.detections.len(), 5, "seed {seed}");
        for d in &r.detections {
            let last = d.last_s.unwrap_or(f64::INFINITY);
            assert!(last <= 3.0, "seed {seed}: {d:?}");
        }
        assert!(r.false_downs.is_empty(), "seed {seed}: {:?}", r.false_downs);
        // Probes and gossip stay within 2 KB/s per node.
        let gossip = r.steady.gossip_bytes_per_node_s();
        assert!(gossip <= 2_000.0, "seed {seed}: {gossip} B/s per node");
    }
}

#[test]
fn false_downs_are_counted_and_partitions_are_not_false_downs() {
    // Heavy loss: running nodes get declared down, and the report says so.
    let storm = Scenario::parse(
        "nodes: 20\nnetwork: {latency: 1ms..5ms, loss: 0.01}\nevents:\n  - {at: 10s, loss: 0.6}\n",
        "storm.yaml",
    )
    .unwrap();
    let r = run(&storm, 20, 1, 30);
    assert!(!r.false_downs.is_empty(), "60% loss and no false down?");
    // A partition's downs are real (the other side is unreachable), and so are crashes'.
    let sc = scenario("partition");
    let r = run(&sc, 100, 0, 90);
    assert!(r.false_downs.is_empty(), "{:?}", r.false_downs);
}

#[test]
fn queen_crash_fails_over_within_two_seconds() {
    let sc = scenario("queen-crash");
    for seed in 0..3 {
        let r = run(&sc, 100, seed, 60);
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        assert_eq!(r.failovers.len(), 1);
        let f = &r.failovers[0];
        let took = f.duration_s().expect("a new queen is crowned");
        assert!(took <= 2.0, "seed {seed}: failover took {took}s");
        assert!(f.detected_s.is_some_and(|d| d >= f.queen_lost_s));
    }
}

#[test]
fn minority_side_of_a_partition_never_keeps_a_queen() {
    let sc = scenario("partition");
    for seed in 0..3 {
        let r = run(&sc, 100, seed, 90);
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        // Any queen reigning when the partition started either sat on the majority side or
        // abdicated within one queen lease (+ heartbeat) of it.
        for q in &r.queens {
            if q.node >= 60 && q.crowned_s < 30.0 {
                let deposed = q.deposed_s.expect("minority queen must abdicate");
                assert!(
                    deposed < 31.0,
                    "seed {seed}: minority queen reigned until {deposed}"
                );
            }
            assert!(
                !(q.node >= 60 && q.crowned_s >= 30.0 && q.crowned_s < 60.0),
                "seed {seed}: minority crowned a queen: {q:?}"
            );
        }
    }
}

#[test]
fn lossy_network_never_deposes_a_live_queen() {
    let sc = scenario("lossy-network");
    for seed in 0..2 {
        let r = run(&sc, 100, seed, 120);
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        assert_eq!(r.queens.len(), 1, "seed {seed}: extra terms {:?}", r.queens);
        // 5% loss alone never gets a running node declared down.
        assert!(r.false_downs.is_empty(), "seed {seed}: {:?}", r.false_downs);
    }
}

#[test]
fn chaos_sample_holds_every_invariant() {
    let sc = scenario("chaos");
    for seed in 0..20 {
        let r = run(&sc, 20, seed, 120);
        assert!(
            r.violations.is_empty(),
            "seed {seed}: {:?}\nreplay: aware-sim run sim/scenarios/chaos.yaml --seed {seed}",
            r.violations
        );
    }
}

#[test]
fn rolling_restart_keeps_every_committed_state() {
    let sc = scenario("rolling-restart");
    for seed in 0..3 {
        let r = run(&sc, 20, seed, 120);
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        assert!(r.first_queen_s.is_some());
    }
}

fn shop_spec() -> swarm_core::spec::ColonySpec {
    use swarm_core::spec::{ColonySpec, Count, Needs, RoleSpec, Workload};
    let role = |name: &str, replicas: u32, cpu_millis: u32, memory_mib: u64| RoleSpec {
        needs: Needs {
            cpu_millis,
            memory_mib,
            ..Needs::default()
        },
        anti_affinity: vec![name.to_owned()],
        workload: Workload {
            image: format!("{name}:1"),
            ..Workload::default()
        },
        ..RoleSpec::new(name, Count::Replicas(replicas))
    };
    ColonySpec {
        name: "shop".to_owned(),
        roles: vec![
            role("front-end", 6, 500, 512),
            role("api", 4, 1000, 1024),
            role("db", 1, 2000, 4096),
        ],
    }
}

#[test]
fn the_queen_plans_the_spec_and_her_successor_keeps_the_plan() {
    let sc = scenario("queen-crash");
    for seed in 0..2 {
        let r = Sim::new(
            &sc,
            Options {
                nodes: 100,
                seed,
                duration_us: 45_000_000,
                preload_membership: false,
                debug: false,
                spec: Some(std::sync::Arc::new(shop_spec())),
                timeline: true,
            },
        )
        .run();
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        let roles = r.roles.as_ref().unwrap();
        assert_eq!(
            (roles.assigned, roles.unplaced),
            (11, 0),
            "seed {seed}: {roles:?}"
        );
        let assigned = r.roles_assigned_s.unwrap();
        assert!(assigned <= 1.0, "seed {seed}: assigned after {assigned}s");
        // Two queens (the crash at 30s), each with a complete plan.
        assert_eq!(r.queens.len(), 2, "seed {seed}: {:?}", r.queens);
        assert!(r.queens.iter().all(|q| q.roles_assigned_s.is_some()));
        // The new queen moves nothing that still runs; only the dead queen's replicas move.
        assert_eq!(roles.moves.churn, 0, "seed {seed}: {:?}", roles.moves);
        assert!(roles.moves.forced <= 3, "seed {seed}: {:?}", roles.moves);
    }
}

#[test]
fn worker_crashes_move_only_their_replicas_and_nothing_moves_back() {
    let sc = scenario("roles-churn");
    let dir = format!("{}/scenarios", env!("CARGO_MANIFEST_DIR"));
    let path = format!("{dir}/{}", sc.spec.as_deref().unwrap());
    let text = std::fs::read_to_string(&path).unwrap();
    let spec = dna::spec::parse(&text, &path).unwrap().into_spec();
    let r = Sim::new(
        &sc,
        Options {
            nodes: 100,
            seed: 1,
            duration_us: sc.duration_us.unwrap(),
            preload_membership: false,
            debug: false,
            spec: Some(std::sync::Arc::new(spec)),
            timeline: false,
        },
    )
    .run();
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let roles = r.roles.as_ref().unwrap();
    assert_eq!((roles.assigned, roles.unplaced), (102, 0), "{roles:?}");
    assert!(r.roles_assigned_s.unwrap() <= 1.0, "{:?}", r.queens);
    // The queen's crash at 30s moves her replicas once SWIM declares her down (~1.5s later),
    // five workers crash at 40s and their replicas move (forced); nothing else moves, before
    // or after they come back at 60s.
    assert!(roles.moves.forced > 0, "{:?}", roles.moves);
    assert_eq!(roles.moves.churn, 0, "{:?}", roles.moves);
    assert!(
        roles
            .moves
            .by_event
            .iter()
            .all(|e| e.at_s == 40.0 || (e.at_s == 30.0 && e.forced <= 3)),
        "{:?}",
        roles.moves.by_event
    );
}

/// A small colony built in code (no scenario file), for tests that steer a run as it goes.
fn steerable(nodes: usize, seed: u64, duration_us: u64) -> Sim {
    use aware_sim::scenario::NetworkSpec;
    let sc = Scenario {
        name: "steered".to_owned(),
        nodes: Some(nodes),
        duration_us: Some(duration_us),
        bootstrap_expect: Some(nodes),
        start_spread_us: 0,
        network: NetworkSpec::default(),
        events: Vec::new(),
        chaos: None,
        spec: None,
        capabilities: Vec::new(),
        drift: Vec::new(),
        replica_start_us: None,
    };
    Sim::new(
        &sc,
        Options {
            nodes,
            seed,
            duration_us,
            preload_membership: false,
            debug: false,
            spec: None,
            timeline: true,
        },
    )
}

/// A driver whose persistence loses `voted_for` on restart lets a node vote twice in one term,
/// and the checker must catch it (the vote itself, from the persisted snapshots, and the two
/// queens it crowns). Three nodes: Q (the queen), A, and a voter V that never stands.
///
/// 1. Q is cut off; A stands and V votes for A in the next term T (persisted: `(T, A)`).
/// 2. At that very step V crashes, and the partition becomes {Q, V} | {A}: V never hears from
///    A, so it keeps Q's version. A is crowned in T by V's vote (already in flight).
/// 3. V restarts 10 ms later from a disk whose vote the bug wiped: `(T, none)`.
/// 4. Q (still in term T−1, as up to date as V) stands for T, and V grants it again: two
///    queens in T.
///
/// With the default configuration the restart fence (a restarted node refuses every ballot for
/// `lease_ms` after boot) hides the bug: V's fence refusals carry its term T, so Q learns T and
/// stands for T+1 instead, and nothing is wrong to see. The fence is `lease_ms` long, so this
/// test shortens the whole lease (heartbeat 20 ms, queen lease 40 ms, lease 50 ms, which the
/// config still validates) to end V's fence before Q's next ballot. The normal path (no bug)
/// must stay clean under the very same steering.
#[test]
fn a_node_that_forgets_its_vote_on_restart_is_caught() {
    use aware_sim::scenario::{Action, RestartTarget, Target};
    const V: usize = 2;
    let run = |seed: u64, bug: bool| {
        let mut sim = steerable(3, seed, 15_000_000);
        sim.configure(|i, cfg| {
            cfg.heartbeat_ms = 20;
            cfg.queen_lease_ms = 40;
            cfg.lease_ms = 50;
            if i == V {
                cfg.queen_affinity = 0.0;
            }
        });
        if bug {
            sim.forget_votes_on_restart();
        }
        sim.run_until(5_000_000);
        let q = sim.queen().expect("a queen by 5s");
        assert_ne!(q, V, "V never stands");
        let a = 3 - q - V;
        sim.act(Action::Partition(vec![vec![q], vec![a, V]]));
        let term = sim.disk(V).unwrap().term;
        while !sim
            .disk(V)
            .is_some_and(|d| d.term > term && d.voted_for.is_some())
        {
            sim.step().expect("V votes before the run ends");
        }
        let voted_at = sim.now_us();
        sim.act(Action::Crash(Target::Nodes(vec![V])));
        sim.act(Action::Partition(vec![vec![q, V], vec![a]]));
        sim.run_until(voted_at + 10_000);
        sim.act(Action::Restart(RestartTarget::Nodes(vec![V])));
        sim.run_until(15_000_000);
        sim.report()
    };
    for seed in 0..3 {
        let r = run(seed, true);
        let caught = |what: &str| r.violations.iter().any(|v| v.contains(what));
        assert!(
            caught("voted twice in term") && caught("two queens in term"),
            "seed {seed}: the checker missed the forgotten vote: {:?}\n{}",
            r.violations,
            r.timeline.join("\n")
        );
        let r = run(seed, false);
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
    }
}

/// A queen whose clock stalls (a backward step; or a suspend her clock does not count) believes
/// in her lease for as long as the stall lasts. Cut off from the colony at that moment, she is
/// replaced after the workers' leases run out (about a second), long before her stalled clock
/// reaches the end of her lease: two queens hold leases at the same real instant, and the
/// checker (which judges every lease on its holder's clock as it really runs) must say so.
/// Without the stall the same run is clean.
#[test]
fn a_queen_lease_stretched_by_a_clock_stall_is_caught() {
    use aware_sim::scenario::{Action, Who};
    for seed in 0..3 {
        for stall in [true, false] {
            let mut sim = steerable(5, seed, 12_000_000);
            sim.run_until(5_000_000);
            let q = sim.queen().expect("a queen by 5s");
            if stall {
                sim.act(Action::Skew {
                    node: Who::Node(q),
                    offset_us: -3_000_000,
                });
            }
            let others: Vec<usize> = (0..5).filter(|i| *i != q).collect();
            sim.act(Action::Partition(vec![vec![q], others]));
            sim.run_until(12_000_000);
            let r = sim.report();
            assert!(
                r.queens.len() >= 2,
                "seed {seed}: no new queen: {:?}",
                r.queens
            );
            let overlap = r
                .violations
                .iter()
                .any(|v| v.contains("still holds her lease"));
            if stall {
                assert!(
                    overlap,
                    "seed {seed}: stretched lease not caught: {:?}",
                    r.violations
                );
            } else {
                assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
            }
        }
    }
}

/// The queen pauses longer than a lease while the colony elects another (which then crashes);
/// she resumes into queenless workers of a higher term. Nothing she does may break an
/// invariant, each long pause costs one failover, and the 250 ms pause (shorter than
/// `queen_lease_ms − heartbeat_ms`) costs none. Seeds 80 and 88 are ones where a woken node's
/// pre-vote refusals named the dead queen: before candidates ignored such a claim about the
/// queen they had lost themselves, their failover took 2.1 s and 2.4 s.
#[test]
fn a_paused_queen_harms_nothing_when_she_resumes() {
    let sc = scenario("queen-pause");
    for seed in [0, 1, 2, 3, 4, 80, 88] {
        let r = run(&sc, 20, seed, 80);
        assert!(
            r.violations.is_empty(),
            "seed {seed}: {:?}\nreplay: aware-sim run sim/scenarios/queen-pause.yaml --seed {seed}",
            r.violations
        );
        // Paused at 15s (4s), the crash at 18.3s, paused at 35s (1.5s): three new queens.
        assert_eq!(r.failovers.len(), 3, "seed {seed}: {:?}", r.failovers);
        for f in &r.failovers {
            let took = f.duration_s().expect("a new queen is crowned");
            // Even the crash while the old queen sleeps: she wakes and obeys the dead queen's
            // buffered heartbeats, but candidates ignore her refusals that name the queen they
            // lost themselves (election.md §4, §13).
            assert!(took <= 2.0, "seed {seed}: failover took {took}s: {f:?}");
        }
        assert!(
            !r.queens.iter().any(|q| q.crowned_s > 45.0),
            "seed {seed}: the 250ms pause cost the crown: {:?}",
            r.queens
        );
        // The queen paused at 15s resumed and stepped down.
        let first = &r.queens[0];
        assert!(
            first.deposed_s.is_some_and(|d| d >= 19.0),
            "seed {seed}: {first:?}"
        );
        assert!(
            r.timeline.iter().any(|l| l.contains("resumes")),
            "seed {seed}"
        );
    }
}

/// A loaded queen hands the crown to a fitter heir after `handover_sustain_ms`, through
/// `HandOver`: once, with the heir crowned within a few milliseconds of her abdication (no
/// failover wait for leases to run out: she released them), and no violation.
#[test]
fn a_loaded_queen_hands_the_crown_to_a_fitter_heir() {
    let sc = scenario("handover");
    for seed in 0..3 {
        let r = run(&sc, 20, seed, 100);
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        assert_eq!(r.queens.len(), 2, "seed {seed}: {:?}", r.queens);
        let (old, heir) = (&r.queens[0], &r.queens[1]);
        assert_eq!(old.ended_by.as_deref(), Some("Handover"), "seed {seed}");
        assert_ne!(old.node, heir.node);
        let abdicated = old.deposed_s.unwrap();
        // Load at 10s; the heir must have been fitter for 60s (plus the level's ramp).
        assert!(
            (70.0..80.0).contains(&abdicated),
            "seed {seed}: hand-over at {abdicated}s"
        );
        let gap = heir.crowned_s - abdicated;
        assert!(
            (0.0..0.05).contains(&gap),
            "seed {seed}: the heir was crowned {gap}s after the release"
        );
        assert!(heir.deposed_s.is_none(), "seed {seed}: {heir:?}");
    }
}

/// A misconfigured bootstrap (`bootstrap_expect` 6 in a rack of 20, booted in two halves that
/// cannot hear each other) crowns two queens in one term. The checker says so, which is the
/// misconfiguration's cost; but once the network heals the queens must find each other and the
/// colony must end under one queen (without the healing in `dna/src/node/split.rs` both reign
/// on forever and the end-of-run convergence check fails).
#[test]
fn two_queens_of_one_term_heal_into_one_colony() {
    let sc = scenario("split-brain");
    for seed in 0..4 {
        let r = run(&sc, 20, seed, 60);
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("two queens in term")),
            "seed {seed}: the scenario no longer splits: {:?}",
            r.violations
        );
        assert!(
            !r.violations.iter().any(|v| v.contains("did not converge")),
            "seed {seed}: {:?}\nreplay: aware-sim run sim/scenarios/split-brain.yaml --seed {seed}",
            r.violations
        );
        assert!(
            r.timeline.iter().any(|l| l.contains("sees a second queen")),
            "seed {seed}: {}",
            r.timeline.join("\n")
        );
    }
}

/// Runs a scenario that names its own colony spec.
fn run_with_spec(name: &str, seed: u64) -> Report {
    let sc = scenario(name);
    let dir = format!("{}/scenarios", env!("CARGO_MANIFEST_DIR"));
    let path = format!("{dir}/{}", sc.spec.as_deref().unwrap());
    let text = std::fs::read_to_string(&path).unwrap();
    let spec = dna::spec::parse(&text, &path).unwrap().into_spec();
    Sim::new(
        &sc,
        Options {
            nodes: sc.nodes.unwrap(),
            seed,
            duration_us: sc.duration_us.unwrap(),
            preload_membership: false,
            debug: false,
            spec: Some(std::sync::Arc::new(spec)),
            timeline: true,
        },
    )
    .run()
}

/// A failed replica moves at once; failing again, it waits out its backoff unplaced; a queen
/// crash in the middle moves nothing that runs; a replica that failed on every node it fits
/// stays unplaced until its record is forgotten. The engine checks every committed plan
/// against its exclusions and the time from each failure to the plan that takes the replica
/// off its node.
#[test]
fn failed_replicas_move_back_off_and_never_return_early() {
    for seed in 0..3 {
        let r = run_with_spec("replica-failure", seed);
        let replay =
            format!("replay: aware-sim run sim/scenarios/replica-failure.yaml --seed {seed}");
        assert!(
            r.violations.is_empty(),
            "seed {seed}: {:?}\n{replay}",
            r.violations
        );
        let roles = r.roles.as_ref().unwrap();
        let x = &roles.replicas;
        assert_eq!(x.failures_injected, 4, "seed {seed}");
        assert_eq!(x.failed_moved_s.len(), 4, "seed {seed}: {x:?}");
        assert!(
            x.failed_moved_s.iter().all(|s| *s <= 2.0),
            "seed {seed}: {x:?}"
        );
        let moved = |what: &str| r.timeline.iter().any(|l| l.contains(what));
        // The first failure moves web/0 to another node, the second to nowhere (backoff).
        assert!(moved("moves web/0 from node"), "seed {seed}\n{replay}");
        assert!(moved("to nowhere: Failed"), "seed {seed}\n{replay}");
        // The queen crash moved only what ran on the queen.
        let crash = roles
            .moves
            .by_event
            .iter()
            .find(|e| e.event.starts_with("crash queen"));
        assert!(
            crash.is_none_or(|e| e.churn == 0),
            "seed {seed}: {:?}",
            roles.moves
        );
        // At the end everything runs again (batch/0's record was forgotten at ~690s) and every
        // role is healthy somewhere (api through api/0, api/1 being unhealthy).
        assert_eq!(
            (roles.assigned, roles.unplaced),
            (7, 0),
            "seed {seed}: {roles:?}"
        );
        assert_eq!(
            x.healthy_roles,
            ["api", "batch", "db", "web"],
            "seed {seed}"
        );
    }
}

/// The database's node is lost for 30 s (shorter than its 1 min `reschedule-after`): nothing
/// moves. Lost again for good: it moves about a minute after the queen's SWIM view declared
/// the node down, through a queen crash in the middle of the wait; nothing moves back.
#[test]
fn stateful_replicas_wait_for_their_node_then_move() {
    for seed in 0..3 {
        let r = run_with_spec("stateful-loss", seed);
        let replay =
            format!("replay: aware-sim run sim/scenarios/stateful-loss.yaml --seed {seed}");
        assert!(
            r.violations.is_empty(),
            "seed {seed}: {:?}\n{replay}",
            r.violations
        );
        let roles = r.roles.as_ref().unwrap();
        let x = &roles.replicas;
        assert_eq!(x.held_kept, 1, "seed {seed}: {x:?}\n{replay}");
        assert_eq!(x.held_moved_s.len(), 1, "seed {seed}: {x:?}\n{replay}");
        let after = x.held_moved_s[0];
        // The minute runs from when the queen's SWIM view declared the node down (a few
        // seconds after the crash; up to ~20 s in the view of a queen crowned meanwhile).
        assert!(
            (60.0..80.0).contains(&after),
            "seed {seed}: moved after {after}s\n{replay}"
        );
        assert_eq!(roles.moves.churn, 0, "seed {seed}: {:?}", roles.moves);
        assert_eq!(
            (roles.assigned, roles.unplaced),
            (7, 0),
            "seed {seed}: {roles:?}"
        );
    }
}
