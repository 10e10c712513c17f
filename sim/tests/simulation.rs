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
    use swarm_core::spec::{ColonySpec, Count, Needs, RoleSpec, Strategy, Workload};
    let role = |name: &str, replicas: u32, cpu_millis: u32, memory_mib: u64| RoleSpec {
        name: name.to_owned(),
        count: Count::Replicas(replicas),
        needs: Needs {
            cpu_millis,
            memory_mib,
            ..Needs::default()
        },
        fallback: None,
        strategy: Strategy::Spread,
        affinity: Vec::new(),
        anti_affinity: vec![name.to_owned()],
        priority: 0,
        depends_on: Vec::new(),
        workload: Workload {
            image: format!("{name}:1"),
            ..Workload::default()
        },
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
    // Five workers crash: their replicas move (forced), nothing else does, before or after
    // they come back.
    assert!(roles.moves.forced > 0, "{:?}", roles.moves);
    assert_eq!(roles.moves.churn, 0, "{:?}", roles.moves);
    assert!(
        roles.moves.by_event.iter().all(|e| e.at_s == 40.0),
        "{:?}",
        roles.moves.by_event
    );
}
