//! Planner behaviour: seeded random properties (validity, determinism, fixed point), stickiness
//! on node loss and join, scaling, global roles, fallback, priorities and preemption,
//! anti-affinity, pack vs spread snapshots, and the checker rejecting bad plans.
#![allow(clippy::unwrap_used)]

use dna::plan::{Exclusions, Plan, check, check_excluding, diff, plan, plan_excluding};
use expect_test::{Expect, expect};
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;
use swarm_core::spec::{
    ColonySpec, Count, Failure, HeldNode, Needs, NodeRecord, Port, Protocol, RoleSpec, Strategy,
    UnplacedReason,
};
use swarm_core::wire::Assignment;
use swarm_core::{Capabilities, NodeId};

// ---------------------------------------------------------------------------------------------
// Builders

fn node(id: u64, cpu: u32, mem: u64) -> NodeRecord {
    NodeRecord {
        node: NodeId(id),
        caps: Capabilities {
            cpu_millis: cpu,
            memory_mib: mem,
            disk_mib: 100_000,
            gpus: 0,
            arch: "x86_64".into(),
            labels: BTreeMap::new(),
        },
        ip: None,
    }
}

fn gpu_node(id: u64, cpu: u32, mem: u64, gpus: u16) -> NodeRecord {
    let mut n = node(id, cpu, mem);
    n.caps.gpus = gpus;
    n
}

fn needs(cpu: u32, mem: u64) -> Needs {
    Needs {
        cpu_millis: cpu,
        memory_mib: mem,
        ..Needs::default()
    }
}

fn role(name: &str, count: u32, cpu: u32, mem: u64) -> RoleSpec {
    RoleSpec {
        needs: needs(cpu, mem),
        ..RoleSpec::new(name, Count::Replicas(count))
    }
}

fn colony(roles: Vec<RoleSpec>) -> ColonySpec {
    ColonySpec {
        name: "test".into(),
        roles,
    }
}

fn uniform_nodes(n: u64, cpu: u32, mem: u64) -> Vec<NodeRecord> {
    (1..=n).map(|i| node(i, cpu, mem)).collect()
}

/// A compact rendering: `role/replica -> node` (with `(fallback)`, and the GPU indices when
/// there are any), then unplaced.
fn render(p: &Plan) -> String {
    let mut s = String::new();
    for a in &p.assignments {
        let fb = if a.fallback { " (fallback)" } else { "" };
        let gpus = if a.gpus.is_empty() {
            String::new()
        } else {
            format!(" gpus {:?}", a.gpus)
        };
        s.push_str(&format!(
            "{}/{} -> {}{fb}{gpus}\n",
            a.role, a.replica, a.node.0
        ));
    }
    for u in &p.unplaced {
        s.push_str(&format!(
            "{}/{} unplaced: {}\n",
            u.role, u.replica, u.reason
        ));
    }
    s
}

fn check_snapshot(p: &Plan, e: Expect) {
    e.assert_eq(&render(p));
}

/// Every replica of every `Replicas` role is either assigned or unplaced, exactly once.
fn accounted(spec: &ColonySpec, p: &Plan) -> Result<(), String> {
    for (i, r) in spec.roles.iter().enumerate() {
        if spec.roles[..i].iter().any(|o| o.name == r.name) {
            continue; // a duplicate name: the first role wins
        }
        if let Count::Replicas(n) = r.count {
            let mut idx: Vec<u32> = p
                .assignments
                .iter()
                .filter(|a| a.role == r.name)
                .map(|a| a.replica)
                .chain(
                    p.unplaced
                        .iter()
                        .filter(|u| u.role == r.name)
                        .map(|u| u.replica),
                )
                .collect();
            idx.sort_unstable();
            let want: Vec<u32> = (0..n).collect();
            if idx != want {
                return Err(format!("{}: replicas {idx:?}, want 0..{n}", r.name));
            }
        }
    }
    Ok(())
}

fn sorted(p: &Plan) -> bool {
    p.assignments
        .windows(2)
        .all(|w| (&w[0].role, w[0].replica) < (&w[1].role, w[1].replica))
        && p.unplaced
            .windows(2)
            .all(|w| (&w[0].role, w[0].replica) < (&w[1].role, w[1].replica))
}

// ---------------------------------------------------------------------------------------------
// Seeded random properties

const NAMES: [&str; 8] = ["api", "db", "web", "cache", "gpu", "batch", "log", "queue"];
const ARCHS: [&str; 2] = ["x86_64", "aarch64"];
const PORTS: [(u16, Protocol); 3] = [
    (80, Protocol::Tcp),
    (443, Protocol::Tcp),
    (80, Protocol::Udp),
];

fn random_needs(rng: &mut ChaCha8Rng) -> Needs {
    let mut n = needs(
        rng.random_range(0..=4u32) * 250,
        rng.random_range(0..=8u64) * 256,
    );
    n.disk_mib = rng.random_range(0..=2u64) * 1000;
    if rng.random_bool(0.15) {
        n.gpus = rng.random_range(1..=2);
    }
    if rng.random_bool(0.2) {
        n.arch = vec![ARCHS[rng.random_range(0..2)].into()];
    }
    if rng.random_bool(0.15) {
        n.labels
            .insert("zone".into(), format!("z{}", rng.random_range(0..3)));
    }
    n
}

fn random_spec(rng: &mut ChaCha8Rng) -> ColonySpec {
    let k = rng.random_range(0..=NAMES.len());
    let mut roles = Vec::new();
    for name in NAMES.iter().take(k) {
        let mut r = role(name, 0, 0, 0);
        r.count = if rng.random_bool(0.15) {
            Count::Global
        } else {
            Count::Replicas(rng.random_range(0..12))
        };
        r.needs = random_needs(rng);
        if rng.random_bool(0.3) {
            r.fallback = Some(random_needs(rng));
        }
        if rng.random_bool(0.3) {
            r.strategy = Strategy::Pack;
        }
        let pick = |rng: &mut ChaCha8Rng| -> String {
            if rng.random_bool(0.1) {
                "nonexistent".into()
            } else {
                NAMES[rng.random_range(0..NAMES.len())].into()
            }
        };
        for _ in 0..rng.random_range(0..3) {
            let n = pick(rng);
            r.affinity.push(n);
        }
        if rng.random_bool(0.3) {
            let n = pick(rng);
            r.anti_affinity.push(n);
        }
        r.priority = rng.random_range(-2..=2);
        // Host ports from a small pool, so roles clash on nodes now and then.
        for _ in 0..rng.random_range(0..3) {
            if rng.random_bool(0.4) {
                let (host, protocol) = PORTS[rng.random_range(0..PORTS.len())];
                r.workload.ports.push(Port {
                    container: host,
                    host: Some(host),
                    protocol,
                });
            }
        }
        roles.push(r);
    }
    colony(roles)
}

fn random_node(rng: &mut ChaCha8Rng, id: u64) -> NodeRecord {
    let mut n = node(
        id,
        rng.random_range(0..=8u32) * 500,
        rng.random_range(0..=16u64) * 512,
    );
    n.caps.disk_mib = rng.random_range(0..=4u64) * 1000;
    if rng.random_bool(0.2) {
        n.caps.gpus = rng.random_range(1..=4);
    }
    n.caps.arch = ARCHS[usize::from(rng.random_bool(0.25))].into();
    if rng.random_bool(0.5) {
        n.caps
            .labels
            .insert("zone".into(), format!("z{}", rng.random_range(0..3)));
    }
    n
}

fn random_nodes(rng: &mut ChaCha8Rng) -> Vec<NodeRecord> {
    let k = rng.random_range(0..30u64);
    let mut v: Vec<NodeRecord> = (1..=k).map(|i| random_node(rng, i * 10)).collect();
    if rng.random_bool(0.1) && !v.is_empty() {
        // A duplicate id and an unsorted list: the planner must cope.
        let dup = random_node(rng, v[0].node.0);
        v.push(dup);
        v.shuffle(rng);
    }
    v
}

fn valid(spec: &ColonySpec, nodes: &[NodeRecord], p: &Plan, what: &str) {
    check(spec, nodes, &p.assignments).unwrap_or_else(|e| panic!("{what}: check failed: {e}"));
    accounted(spec, p).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(sorted(p), "{what}: output not sorted");
}

fn shuffled(rng: &mut ChaCha8Rng, a: &[Assignment]) -> Vec<Assignment> {
    let mut v = a.to_vec();
    v.shuffle(rng);
    v
}

/// The checks every plan must pass: valid, deterministic, independent of the order of
/// `previous`, and a fixed point when re-planned from itself.
fn properties(
    rng: &mut ChaCha8Rng,
    spec: &ColonySpec,
    nodes: &[NodeRecord],
    prev: &[Assignment],
    what: &str,
) -> Plan {
    let p = plan(spec, nodes, prev);
    valid(spec, nodes, &p, what);
    assert_eq!(p, plan(spec, nodes, prev), "{what}: not deterministic");
    assert_eq!(
        p,
        plan(spec, nodes, &shuffled(rng, prev)),
        "{what}: depends on the order of previous"
    );
    let again = plan(spec, nodes, &p.assignments);
    assert_eq!(
        render(&p),
        render(&again),
        "{what}: re-planning from the plan changed it"
    );
    let d = diff(&p.assignments, &again.assignments);
    assert_eq!((d.moved, d.added, d.removed), (0, 0, 0), "{what}");
    p
}

#[test]
fn random_plans_are_valid_deterministic_and_stable() {
    // How often each outcome showed up, so the sweep provably exercises every path.
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut tally = |p: &Plan| {
        *seen.entry("assigned").or_default() += p.assignments.len();
        *seen.entry("fallback").or_default() += p.assignments.iter().filter(|a| a.fallback).count();
        *seen.entry("with GPUs").or_default() +=
            p.assignments.iter().filter(|a| !a.gpus.is_empty()).count();
        for u in &p.unplaced {
            let k = match u.reason {
                UnplacedReason::NoMatchingNode { .. } => "no matching node",
                UnplacedReason::Capacity { .. } => "capacity",
                UnplacedReason::AntiAffinity { .. } => "anti-affinity",
                UnplacedReason::PortConflict { .. } => "port conflict",
                UnplacedReason::Preempted { .. } => "preempted",
                UnplacedReason::Failing { .. } => "failing",
            };
            *seen.entry(k).or_default() += 1;
        }
    };
    for seed in 0..400u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let spec = random_spec(&mut rng);
        let mut nodes = random_nodes(&mut rng);
        let p0 = properties(&mut rng, &spec, &nodes, &[], &format!("seed {seed} fresh"));

        // Churn: lose some nodes, add some, change the spec; re-plan from the previous plan.
        nodes.retain(|_| !rng.random_bool(0.2));
        for i in 0..rng.random_range(0..4u64) {
            nodes.push(random_node(&mut rng, 1000 + i));
        }
        let p1 = properties(
            &mut rng,
            &spec,
            &nodes,
            &p0.assignments,
            &format!("seed {seed} churn"),
        );
        tally(&p0);
        tally(&p1);
        let spec2 = if rng.random_bool(0.5) {
            random_spec(&mut rng)
        } else {
            spec.clone()
        };
        let p2 = properties(
            &mut rng,
            &spec2,
            &nodes,
            &p1.assignments,
            &format!("seed {seed} respec"),
        );
        tally(&p2);

        // Garbage previous (unknown roles and nodes, duplicates, infeasible spots).
        let garbage: Vec<Assignment> = (0..rng.random_range(0..40))
            .map(|_| Assignment {
                role: if rng.random_bool(0.9) {
                    NAMES[rng.random_range(0..NAMES.len())].into()
                } else {
                    "ghost".into()
                },
                replica: rng.random_range(0..14),
                node: NodeId(rng.random_range(0..40u64) * 10),
                fallback: rng.random_bool(0.3),
                gpus: {
                    let k = rng.random_range(0..3);
                    (0..k).map(|_| rng.random_range(0..5u16)).collect()
                },
            })
            .collect();
        properties(
            &mut rng,
            &spec,
            &nodes,
            &garbage,
            &format!("seed {seed} garbage"),
        );
    }
    eprintln!("outcomes over 400 seeds: {seen:?}");
    for k in [
        "assigned",
        "fallback",
        "with GPUs",
        "no matching node",
        "capacity",
        "anti-affinity",
        "port conflict",
        "preempted",
    ] {
        assert!(
            seen.get(k).copied().unwrap_or(0) > 0,
            "no {k} outcome in the sweep"
        );
    }
}

/// Random stickiness: with ample room and no anti-affinity, losing a node moves exactly its
/// replicas and a join moves nothing.
#[test]
fn random_loss_and_join_move_only_what_they_must() {
    for seed in 0..100u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut spec = random_spec(&mut rng);
        for r in &mut spec.roles {
            r.anti_affinity.clear();
            r.needs = needs(rng.random_range(0..=2u32) * 100, 64);
            r.fallback = None;
            r.count = Count::Replicas(rng.random_range(0..6));
        }
        let nodes = uniform_nodes(20, 16_000, 65_536);
        let p0 = plan(&spec, &nodes, &[]);
        assert!(p0.unplaced.is_empty(), "seed {seed}");
        let lost = NodeId(rng.random_range(1..=20u64));
        let on_lost = p0.assignments.iter().filter(|a| a.node == lost).count();
        let fewer: Vec<NodeRecord> = nodes.iter().filter(|n| n.node != lost).cloned().collect();
        let p1 = plan(&spec, &fewer, &p0.assignments);
        valid(&spec, &fewer, &p1, &format!("seed {seed}"));
        let d = diff(&p0.assignments, &p1.assignments);
        assert_eq!(
            (d.moved, d.removed, d.added),
            (on_lost, 0, 0),
            "seed {seed}"
        );

        let mut more = nodes.clone();
        more.push(node(99, 16_000, 65_536));
        let p2 = plan(&spec, &more, &p0.assignments);
        let d = diff(&p0.assignments, &p2.assignments);
        assert_eq!((d.moved, d.removed, d.added), (0, 0, 0), "seed {seed}");
    }
}

// ---------------------------------------------------------------------------------------------
// Stickiness

/// 20 roles × `replicas` on 100 nodes of 4 cores / 8 GiB.
fn hundred(replicas: u32) -> (ColonySpec, Vec<NodeRecord>) {
    let roles = (0..20)
        .map(|i| role(&format!("role{i:02}"), replicas, 250 + 50 * (i % 4), 256))
        .collect();
    (colony(roles), uniform_nodes(100, 4000, 8192))
}

#[test]
fn losing_one_of_a_hundred_nodes_moves_only_its_replicas() {
    let (spec, nodes) = hundred(20);
    let p0 = plan(&spec, &nodes, &[]);
    valid(&spec, &nodes, &p0, "fresh");
    assert!(p0.unplaced.is_empty());
    let mut worst = 0;
    for lost in [1u64, 37, 50, 100] {
        let on_lost = p0
            .assignments
            .iter()
            .filter(|a| a.node == NodeId(lost))
            .count();
        let fewer: Vec<NodeRecord> = nodes
            .iter()
            .filter(|n| n.node != NodeId(lost))
            .cloned()
            .collect();
        let p1 = plan(&spec, &fewer, &p0.assignments);
        valid(&spec, &fewer, &p1, "after loss");
        let d = diff(&p0.assignments, &p1.assignments);
        eprintln!("lost node {lost}: {on_lost} replicas on it; diff {d:?}");
        assert_eq!(d.moved, on_lost);
        assert_eq!((d.added, d.removed), (0, 0));
        assert_eq!(d.kept, 400 - on_lost);
        worst = worst.max(on_lost);
    }
    assert!(worst >= 1, "the test must lose a node that runs something");
}

#[test]
fn a_join_moves_nothing_and_new_replicas_use_new_nodes() {
    let (mut spec, nodes) = hundred(5);
    let p0 = plan(&spec, &nodes, &[]);
    let mut more = nodes.clone();
    more.push(node(101, 4000, 8192));
    let p1 = plan(&spec, &more, &p0.assignments);
    assert_eq!(diff(&p0.assignments, &p1.assignments).disrupted(), 0);
    assert_eq!(p0.assignments, p1.assignments);

    // A new role spreads onto the emptiest node first: the newcomer.
    spec.roles.push(role("newcomer", 1, 100, 64));
    let p2 = plan(&spec, &more, &p1.assignments);
    let d = diff(&p1.assignments, &p2.assignments);
    assert_eq!((d.moved, d.removed, d.added), (0, 0, 1));
    let placed = p2
        .assignments
        .iter()
        .find(|a| a.role == "newcomer")
        .unwrap();
    assert_eq!(placed.node, NodeId(101));
}

#[test]
fn scale_down_drops_highest_indices_and_scale_up_keeps_existing() {
    let nodes = uniform_nodes(4, 4000, 8192);
    let spec5 = colony(vec![role("web", 5, 500, 256)]);
    let p5 = plan(&spec5, &nodes, &[]);
    let spec3 = colony(vec![role("web", 3, 500, 256)]);
    let p3 = plan(&spec3, &nodes, &p5.assignments);
    assert_eq!(p3.assignments, p5.assignments[..3].to_vec());
    let d = diff(&p5.assignments, &p3.assignments);
    assert_eq!((d.kept, d.moved, d.added, d.removed), (3, 0, 0, 2));

    let spec6 = colony(vec![role("web", 6, 500, 256)]);
    let p6 = plan(&spec6, &nodes, &p3.assignments);
    assert_eq!(p6.assignments[..3], p3.assignments[..]);
    let d = diff(&p3.assignments, &p6.assignments);
    assert_eq!((d.kept, d.moved, d.added, d.removed), (3, 0, 3, 0));
    check_snapshot(
        &p6,
        expect![[r#"
            web/0 -> 1
            web/1 -> 2
            web/2 -> 3
            web/3 -> 4
            web/4 -> 1
            web/5 -> 2
        "#]],
    );
}

#[test]
fn a_spec_change_moves_only_replicas_that_no_longer_fit() {
    let nodes = vec![node(1, 4000, 8192), node(2, 1000, 8192)];
    let spec = colony(vec![role("web", 2, 500, 256)]);
    let p0 = plan(&spec, &nodes, &[]);
    check_snapshot(
        &p0,
        expect![[r#"
            web/0 -> 1
            web/1 -> 2
        "#]],
    );
    // Grow the need beyond node 2: only web/1 moves.
    let bigger = colony(vec![role("web", 2, 1500, 256)]);
    let p1 = plan(&bigger, &nodes, &p0.assignments);
    check_snapshot(
        &p1,
        expect![[r#"
            web/0 -> 1
            web/1 -> 1
        "#]],
    );
    let d = diff(&p0.assignments, &p1.assignments);
    assert_eq!((d.kept, d.moved), (1, 1));
}

// ---------------------------------------------------------------------------------------------
// Global roles

#[test]
fn global_roles_run_once_per_matching_node_with_sticky_indices() {
    let mut nodes = uniform_nodes(4, 4000, 8192);
    nodes[2].caps.arch = "aarch64".into();
    let mut agent = role("agent", 0, 100, 64);
    agent.count = Count::Global;
    agent.needs.arch = vec!["x86_64".into()];
    let spec = colony(vec![agent]);
    let p0 = plan(&spec, &nodes, &[]);
    check_snapshot(
        &p0,
        expect![[r#"
            agent/0 -> 1
            agent/1 -> 2
            agent/2 -> 4
        "#]],
    );
    // Lose node 2 (index 1), add nodes 5 and 6: node 5 takes the free index 1, node 6 index 3.
    nodes.retain(|n| n.node != NodeId(2));
    nodes.push(node(5, 4000, 8192));
    nodes.push(node(6, 4000, 8192));
    let p1 = plan(&spec, &nodes, &p0.assignments);
    valid(&spec, &nodes, &p1, "after churn");
    check_snapshot(
        &p1,
        expect![[r#"
            agent/0 -> 1
            agent/1 -> 5
            agent/2 -> 4
            agent/3 -> 6
        "#]],
    );
}

#[test]
fn a_global_role_that_does_not_fit_a_matching_node_is_reported_there() {
    let nodes = vec![node(1, 4000, 8192), node(2, 4000, 8192)];
    let mut agent = role("agent", 0, 1000, 64);
    agent.count = Count::Global;
    let hog = role("hog", 1, 3500, 64);
    let mut hog = hog;
    hog.priority = 5;
    hog.strategy = Strategy::Pack;
    let p = plan(&colony(vec![agent, hog]), &nodes, &[]);
    check_snapshot(
        &p,
        expect![[r#"
            agent/1 -> 2
            hog/0 -> 1
            agent/0 unplaced: lower priority: higher-priority roles hold the room it needs on 1 of 1 matching node
        "#]],
    );
}

// ---------------------------------------------------------------------------------------------
// Fallback

fn inference() -> RoleSpec {
    let mut r = role("infer", 3, 1000, 1024);
    r.needs.gpus = 1;
    r.fallback = Some(needs(2000, 2048));
    r
}

#[test]
fn gpu_role_falls_back_to_cpu_and_stays_there() {
    let nodes = vec![gpu_node(1, 8000, 16_384, 1), node(2, 8000, 16_384)];
    let spec = colony(vec![inference()]);
    let p0 = plan(&spec, &nodes, &[]);
    valid(&spec, &nodes, &p0, "fallback");
    check_snapshot(
        &p0,
        expect![[r#"
            infer/0 -> 1 gpus [0]
            infer/1 -> 2 (fallback)
            infer/2 -> 2 (fallback)
        "#]],
    );
    // A GPU node joins: the fallback replicas stay put (stickiness beats preference).
    let mut more = nodes.clone();
    more.push(gpu_node(3, 8000, 16_384, 4));
    let p1 = plan(&spec, &more, &p0.assignments);
    assert_eq!(p1.assignments, p0.assignments);
    // But a replica that has to move anyway prefers its primary needs again.
    let lost: Vec<NodeRecord> = more
        .iter()
        .filter(|n| n.node != NodeId(2))
        .cloned()
        .collect();
    let p2 = plan(&spec, &lost, &p1.assignments);
    check_snapshot(
        &p2,
        expect![[r#"
            infer/0 -> 1 gpus [0]
            infer/1 -> 3 gpus [0]
            infer/2 -> 3 gpus [1]
        "#]],
    );
}

#[test]
fn no_matching_node_explains_what_is_missing() {
    let nodes = vec![gpu_node(1, 8000, 16_384, 2), node(2, 8000, 16_384)];
    let mut r = role("train", 1, 1000, 1024);
    r.needs.gpus = 3;
    let mut arm = role("arm", 1, 100, 64);
    arm.needs.arch = vec!["aarch64".into()];
    let mut zoned = role("zoned", 1, 100, 64);
    zoned.needs.labels.insert("zone".into(), "eu".into());
    let big = role("big", 1, 100, 1 << 20);
    let mut with_fb = inference();
    with_fb.needs.gpus = 8;
    with_fb.fallback = Some(needs(100_000, 64));
    let p = plan(&colony(vec![r, arm, zoned, big, with_fb]), &nodes, &[]);
    check_snapshot(
        &p,
        expect![[r#"
            arm/0 unplaced: no matching node: needs arch arm64; nodes have amd64
            big/0 unplaced: no matching node: needs 1048576 MiB memory; largest node has 16384
            infer/0 unplaced: no matching node: needs 8 GPUs; largest node has 2; fallback: needs 100000 mCPU; largest node has 8000
            infer/1 unplaced: no matching node: needs 8 GPUs; largest node has 2; fallback: needs 100000 mCPU; largest node has 8000
            infer/2 unplaced: no matching node: needs 8 GPUs; largest node has 2; fallback: needs 100000 mCPU; largest node has 8000
            train/0 unplaced: no matching node: needs 3 GPUs; largest node has 2
            zoned/0 unplaced: no matching node: no node of a matching arch has labels zone=eu
        "#]],
    );
    assert!(matches!(
        p.unplaced[0].reason,
        UnplacedReason::NoMatchingNode { .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// Priorities and preemption

#[test]
fn capacity_shortage_leaves_lower_priorities_unplaced() {
    let nodes = uniform_nodes(2, 4000, 8192);
    let mut high = role("high", 3, 2000, 1024);
    high.priority = 10;
    let low = role("low", 3, 1000, 1024);
    let mut peer = role("peer", 2, 1000, 1024);
    peer.priority = 10;
    // Declaration order puts low first; priority places high and peer first.
    let spec = colony(vec![low, high, peer]);
    let p = plan(&spec, &nodes, &[]);
    valid(&spec, &nodes, &p, "priorities");
    check_snapshot(
        &p,
        expect![[r#"
            high/0 -> 1
            high/1 -> 2
            high/2 -> 1
            peer/0 -> 2
            peer/1 -> 2
            low/0 unplaced: lower priority: higher-priority roles hold the room it needs on 2 of 2 matching nodes
            low/1 unplaced: lower priority: higher-priority roles hold the room it needs on 2 of 2 matching nodes
            low/2 unplaced: lower priority: higher-priority roles hold the room it needs on 2 of 2 matching nodes
        "#]],
    );
}

#[test]
fn equal_priorities_report_plain_capacity() {
    let nodes = uniform_nodes(2, 4000, 8192);
    let spec = colony(vec![role("a", 4, 2000, 1024), role("b", 1, 1000, 64)]);
    let p = plan(&spec, &nodes, &[]);
    check_snapshot(
        &p,
        expect![[r#"
            a/0 -> 1
            a/1 -> 2
            a/2 -> 1
            a/3 -> 2
            b/0 unplaced: not enough capacity: 2 matching nodes are full (needs 1000 mCPU, 64 MiB memory)
        "#]],
    );
}

#[test]
fn higher_priority_evicts_the_fewest_lowest_priority_replicas() {
    let nodes = uniform_nodes(2, 4000, 8192);
    let mut lowest = role("lowest", 2, 1000, 256);
    lowest.priority = -5;
    let mut low = role("low", 4, 1000, 256);
    low.priority = 0;
    let p0 = plan(&colony(vec![lowest.clone(), low.clone()]), &nodes, &[]);
    check_snapshot(
        &p0,
        expect![[r#"
            low/0 -> 1
            low/1 -> 2
            low/2 -> 1
            low/3 -> 2
            lowest/0 -> 1
            lowest/1 -> 2
        "#]],
    );
    // The cluster is nearly full. A critical role arrives needing 3 cores per replica, twice.
    let mut critical = role("critical", 2, 3000, 256);
    critical.priority = 100;
    let spec = colony(vec![lowest, low, critical]);
    let p1 = plan(&spec, &nodes, &p0.assignments);
    valid(&spec, &nodes, &p1, "preemption");
    // Each node gives up its `lowest` replica and one `low` replica (the highest index);
    // nothing else moves, and the evicted find no room elsewhere.
    check_snapshot(
        &p1,
        expect![[r#"
            critical/0 -> 1
            critical/1 -> 2
            low/0 -> 1
            low/1 -> 2
            low/2 unplaced: lower priority: higher-priority roles hold the room it needs on 2 of 2 matching nodes
            low/3 unplaced: lower priority: higher-priority roles hold the room it needs on 2 of 2 matching nodes
            lowest/0 unplaced: lower priority: higher-priority roles hold the room it needs on 2 of 2 matching nodes
            lowest/1 unplaced: lower priority: higher-priority roles hold the room it needs on 2 of 2 matching nodes
        "#]],
    );
    let d = diff(&p0.assignments, &p1.assignments);
    assert_eq!((d.kept, d.moved, d.added, d.removed), (2, 0, 2, 4));
    assert!(
        p1.unplaced
            .iter()
            .all(|u| matches!(u.reason, UnplacedReason::Preempted { .. }))
    );
}

#[test]
fn preemption_prefers_evicting_the_lowest_priority_and_replaces_the_evicted() {
    // Node 1 runs a priority-0 replica, node 2 a priority-5 one; node 3 has spare room for one.
    let nodes = vec![
        node(1, 2000, 4096),
        node(2, 2000, 4096),
        node(3, 1000, 4096),
    ];
    let mut mid = role("mid", 1, 2000, 256);
    mid.priority = 5;
    let base = role("base", 1, 1000, 256);
    let prev = vec![
        Assignment {
            role: "base".into(),
            replica: 0,
            node: NodeId(1),
            fallback: false,
            gpus: Vec::new(),
        },
        Assignment {
            role: "mid".into(),
            replica: 0,
            node: NodeId(2),
            fallback: false,
            gpus: Vec::new(),
        },
    ];
    let mut top = role("top", 1, 2000, 256);
    top.priority = 9;
    let spec = colony(vec![base, mid, top]);
    let p = plan(&spec, &nodes, &prev);
    valid(&spec, &nodes, &p, "cheapest eviction");
    // `top` evicts `base` from node 1 (not `mid` from node 2); `base` re-places on node 3.
    check_snapshot(
        &p,
        expect![[r#"
            base/0 -> 3
            mid/0 -> 2
            top/0 -> 1
        "#]],
    );
}

#[test]
fn preemption_spreads_a_spread_role_and_evicts_only_what_it_needs() {
    // 20 full nodes of priority-0 replicas; 10 priority-10 replicas of 2 cores arrive.
    let nodes = uniform_nodes(20, 4000, 8192);
    let low = role("low", 80, 1000, 256);
    let p0 = plan(&colony(vec![low.clone()]), &nodes, &[]);
    assert!(p0.unplaced.is_empty());
    let mut high = role("high", 10, 2000, 256);
    high.priority = 10;
    let spec = colony(vec![low, high]);
    let p1 = plan(&spec, &nodes, &p0.assignments);
    valid(&spec, &nodes, &p1, "preempt at scale");
    let mut high_nodes: Vec<NodeId> = p1
        .assignments
        .iter()
        .filter(|a| a.role == "high")
        .map(|a| a.node)
        .collect();
    high_nodes.dedup();
    assert_eq!(high_nodes, (1..=10).map(NodeId).collect::<Vec<_>>());
    let d = diff(&p0.assignments, &p1.assignments);
    assert_eq!((d.kept, d.moved, d.added, d.removed), (60, 0, 10, 20));
    assert_eq!(p1.unplaced.len(), 20);
    assert!(
        p1.unplaced
            .iter()
            .all(|u| u.role == "low" && matches!(u.reason, UnplacedReason::Preempted { .. }))
    );
}

#[test]
fn preemption_never_evicts_equal_or_higher_priority() {
    let nodes = uniform_nodes(1, 2000, 4096);
    let mut a = role("a", 1, 2000, 256);
    a.priority = 3;
    let mut b = role("b", 1, 2000, 256);
    b.priority = 3;
    let prev = vec![Assignment {
        role: "b".into(),
        replica: 0,
        node: NodeId(1),
        fallback: false,
        gpus: Vec::new(),
    }];
    let p = plan(&colony(vec![a, b]), &nodes, &prev);
    check_snapshot(
        &p,
        expect![[r#"
            b/0 -> 1
            a/0 unplaced: not enough capacity: 1 matching node is full (needs 2000 mCPU, 256 MiB memory)
        "#]],
    );
}

// ---------------------------------------------------------------------------------------------
// Anti-affinity and affinity

#[test]
fn self_anti_affinity_means_one_per_node_and_reports_the_shortage() {
    let nodes = uniform_nodes(3, 8000, 16_384);
    let mut db = role("db", 5, 500, 512);
    db.anti_affinity = vec!["db".into()];
    let spec = colony(vec![db]);
    let p = plan(&spec, &nodes, &[]);
    valid(&spec, &nodes, &p, "self anti-affinity");
    check_snapshot(
        &p,
        expect![[r#"
            db/0 -> 1
            db/1 -> 2
            db/2 -> 3
            db/3 unplaced: anti-affinity: 3 nodes with room already run a role it must not share with (db)
            db/4 unplaced: anti-affinity: 3 nodes with room already run a role it must not share with (db)
        "#]],
    );
}

#[test]
fn anti_affinity_is_symmetric() {
    let nodes = uniform_nodes(2, 8000, 16_384);
    // Only `noisy` names the other, yet `quiet` (placed later) avoids it too.
    let mut noisy = role("noisy", 1, 100, 64);
    noisy.anti_affinity = vec!["quiet".into(), "unknown-role".into()];
    noisy.priority = 1;
    let mut quiet = role("quiet", 3, 100, 64);
    quiet.strategy = Strategy::Pack;
    let spec = colony(vec![quiet, noisy]);
    let p = plan(&spec, &nodes, &[]);
    valid(&spec, &nodes, &p, "symmetric");
    check_snapshot(
        &p,
        expect![[r#"
            noisy/0 -> 1
            quiet/0 -> 2
            quiet/1 -> 2
            quiet/2 -> 2
        "#]],
    );
}

#[test]
fn affinity_breaks_ties_toward_colocation() {
    let nodes = uniform_nodes(3, 4000, 8192);
    let mut cache = role("cache", 1, 1000, 1024);
    cache.priority = 1;
    let prev = vec![Assignment {
        role: "cache".into(),
        replica: 0,
        node: NodeId(3),
        fallback: false,
        gpus: Vec::new(),
    }];
    let mut app = role("app", 1, 1000, 1024);
    app.strategy = Strategy::Pack;
    app.affinity = vec!["cache".into()];
    // Pack alone would pick node 3 too (fullest); make node 2 equally full to force the tie.
    let mut other = role("other", 1, 1000, 1024);
    other.priority = 1;
    let mut prev2 = prev.clone();
    prev2.push(Assignment {
        role: "other".into(),
        replica: 0,
        node: NodeId(2),
        fallback: false,
        gpus: Vec::new(),
    });
    let p = plan(&colony(vec![cache, other, app]), &nodes, &prev2);
    check_snapshot(
        &p,
        expect![[r#"
            app/0 -> 3
            cache/0 -> 3
            other/0 -> 2
        "#]],
    );
}

// ---------------------------------------------------------------------------------------------
// Pack vs spread

#[test]
fn pack_fills_nodes_spread_balances_them() {
    let nodes = vec![
        node(1, 4000, 8192),
        node(2, 4000, 8192),
        node(3, 2000, 4096),
    ];
    let spread = role("svc", 5, 1000, 1024);
    let mut pack = role("svc", 5, 1000, 1024);
    pack.strategy = Strategy::Pack;
    check_snapshot(
        &plan(&colony(vec![spread]), &nodes, &[]),
        expect![[r#"
            svc/0 -> 1
            svc/1 -> 2
            svc/2 -> 3
            svc/3 -> 1
            svc/4 -> 2
        "#]],
    );
    check_snapshot(
        &plan(&colony(vec![pack]), &nodes, &[]),
        expect![[r#"
            svc/0 -> 3
            svc/1 -> 3
            svc/2 -> 1
            svc/3 -> 1
            svc/4 -> 1
        "#]],
    );
}

// ---------------------------------------------------------------------------------------------
// Host ports and GPU indices

fn publishing(name: &str, count: u32, ports: &[(u16, Protocol)]) -> RoleSpec {
    let mut r = role(name, count, 500, 256);
    r.workload.ports = ports
        .iter()
        .map(|&(host, protocol)| Port {
            container: host,
            host: Some(host),
            protocol,
        })
        .collect();
    r
}

#[test]
fn two_roles_publishing_port_80_spread_and_the_extra_one_says_why() {
    let web = publishing("web", 1, &[(80, Protocol::Tcp)]);
    let proxy = publishing("proxy", 1, &[(80, Protocol::Tcp), (443, Protocol::Tcp)]);
    let spec = colony(vec![web, proxy]);
    // Both would fit one node by capacity; the port sends them to different nodes.
    let two = uniform_nodes(2, 4000, 8192);
    let p = plan(&spec, &two, &[]);
    valid(&spec, &two, &p, "two nodes");
    check_snapshot(
        &p,
        expect![[r#"
            proxy/0 -> 2
            web/0 -> 1
        "#]],
    );
    let one = uniform_nodes(1, 4000, 8192);
    let p = plan(&spec, &one, &[]);
    valid(&spec, &one, &p, "one node");
    check_snapshot(
        &p,
        expect![[r#"
            web/0 -> 1
            proxy/0 unplaced: port conflict: host port 80/tcp already published on 1 node with room (by web)
        "#]],
    );
    assert!(matches!(
        p.unplaced[0].reason,
        UnplacedReason::PortConflict { .. }
    ));
}

#[test]
fn a_published_port_means_one_replica_per_node_and_protocols_do_not_clash() {
    let dns_tcp = publishing("dns-tcp", 3, &[(53, Protocol::Tcp)]);
    let dns_udp = publishing("dns-udp", 2, &[(53, Protocol::Udp)]);
    let spec = colony(vec![dns_tcp, dns_udp]);
    let nodes = uniform_nodes(2, 8000, 8192);
    let p = plan(&spec, &nodes, &[]);
    valid(&spec, &nodes, &p, "dns");
    check_snapshot(
        &p,
        expect![[r#"
            dns-tcp/0 -> 1
            dns-tcp/1 -> 2
            dns-udp/0 -> 1
            dns-udp/1 -> 2
            dns-tcp/2 unplaced: port conflict: host port 53/tcp already published on 2 nodes with room (by dns-tcp)
        "#]],
    );
}

#[test]
fn a_global_role_with_a_host_port_runs_once_per_node_and_keeps_others_off_it() {
    let mut ingress = publishing("ingress", 0, &[(80, Protocol::Tcp)]);
    ingress.count = Count::Global;
    ingress.priority = 10;
    let web = publishing("web", 1, &[(80, Protocol::Tcp)]);
    let spec = colony(vec![ingress, web]);
    let nodes = uniform_nodes(3, 4000, 8192);
    let p = plan(&spec, &nodes, &[]);
    valid(&spec, &nodes, &p, "global ingress");
    check_snapshot(
        &p,
        expect![[r#"
            ingress/0 -> 1
            ingress/1 -> 2
            ingress/2 -> 3
            web/0 unplaced: port conflict: host port 80/tcp already published on 3 nodes with room (by ingress)
        "#]],
    );
}

#[test]
fn a_higher_priority_role_evicts_the_holder_of_its_port() {
    let nodes = uniform_nodes(1, 8000, 8192);
    let low = publishing("low", 1, &[(80, Protocol::Tcp)]);
    let p0 = plan(&colony(vec![low.clone()]), &nodes, &[]);
    let mut high = publishing("high", 1, &[(80, Protocol::Tcp)]);
    high.priority = 5;
    let spec = colony(vec![low, high]);
    let p1 = plan(&spec, &nodes, &p0.assignments);
    valid(&spec, &nodes, &p1, "port preemption");
    check_snapshot(
        &p1,
        expect![[r#"
            high/0 -> 1
            low/0 unplaced: port conflict: host port 80/tcp already published on 1 node with room (by high)
        "#]],
    );
}

fn gpu_role(name: &str, count: u32, gpus: u16) -> RoleSpec {
    let mut r = role(name, count, 500, 256);
    r.needs.gpus = gpus;
    r.workload.gpus = gpus;
    r
}

#[test]
fn replicas_get_their_own_gpus_and_keep_them_across_re_plans() {
    let nodes = vec![
        gpu_node(1, 16_000, 65_536, 4),
        gpu_node(2, 16_000, 65_536, 2),
    ];
    let mut train = gpu_role("train", 1, 2);
    train.priority = 5;
    let mut infer = gpu_role("infer", 3, 1);
    infer.strategy = Strategy::Pack;
    let spec = colony(vec![train.clone(), infer.clone()]);
    let p0 = plan(&spec, &nodes, &[]);
    valid(&spec, &nodes, &p0, "gpus");
    check_snapshot(
        &p0,
        expect![[r#"
            infer/0 -> 1 gpus [2]
            infer/1 -> 1 gpus [3]
            infer/2 -> 2 gpus [0]
            train/0 -> 1 gpus [0, 1]
        "#]],
    );
    // Stickiness: a replica that held GPU 3 keeps GPU 3 (a fresh plan would give it 2); the
    // others take the lowest free indices around it.
    let prev = vec![Assignment {
        role: "infer".into(),
        replica: 0,
        node: NodeId(1),
        fallback: false,
        gpus: vec![3],
    }];
    let p1 = plan(&spec, &nodes, &prev);
    valid(&spec, &nodes, &p1, "re-plan");
    check_snapshot(
        &p1,
        expect![[r#"
            infer/0 -> 1 gpus [3]
            infer/1 -> 1 gpus [2]
            infer/2 -> 2 gpus [0]
            train/0 -> 1 gpus [0, 1]
        "#]],
    );
    // Invalid previous indices (out of range, twice) are replaced, never trusted.
    let bad = vec![Assignment {
        gpus: vec![7],
        ..prev[0].clone()
    }];
    let p = plan(&spec, &nodes, &bad);
    valid(&spec, &nodes, &p, "bad previous gpus");
    let infer0 = p
        .assignments
        .iter()
        .find(|a| a.role == "infer" && a.replica == 0);
    assert_eq!(
        infer0.map(|a| (a.node, a.gpus.clone())),
        Some((NodeId(1), vec![0]))
    );
    // A kept replica whose role now asks for two GPUs keeps its index and gets one more.
    let mut bigger = infer.clone();
    bigger.needs.gpus = 2;
    bigger.workload.gpus = 2;
    bigger.count = Count::Replicas(1);
    let spec2 = colony(vec![train, bigger]);
    let p2 = plan(&spec2, &nodes, &p1.assignments);
    valid(&spec2, &nodes, &p2, "more gpus");
    check_snapshot(
        &p2,
        expect![[r#"
            infer/0 -> 1 gpus [2, 3]
            train/0 -> 1 gpus [0, 1]
        "#]],
    );
}

// ---------------------------------------------------------------------------------------------
// Robustness

#[test]
fn degenerate_inputs_do_not_panic() {
    let spec = colony(vec![
        role("a", 3, 100, 64),
        role("a", 7, 100, 64), // duplicate name: the first wins
        {
            let mut g = role("g", 0, 0, 0);
            g.count = Count::Global;
            g
        },
    ]);
    // Zero nodes.
    let p = plan(&spec, &[], &[]);
    assert!(p.assignments.is_empty());
    assert_eq!(p.unplaced.len(), 3);
    // Zero-capacity nodes, duplicates, unsorted.
    let nodes = vec![node(5, 0, 0), node(2, 0, 0), node(5, 4000, 8192)];
    let p = plan(&spec, &nodes, &[]);
    valid(&spec, &nodes, &p, "zero capacity");
    check_snapshot(
        &p,
        expect![[r#"
            g/0 -> 2
            g/1 -> 5
            a/0 unplaced: no matching node: needs 100 mCPU; largest node has 0
            a/1 unplaced: no matching node: needs 100 mCPU; largest node has 0
            a/2 unplaced: no matching node: needs 100 mCPU; largest node has 0
        "#]],
    );
    // A huge count is clamped, not materialised.
    let huge = colony(vec![role("huge", u32::MAX, 0, 0)]);
    let one = uniform_nodes(1, 1, 1);
    let p = plan(&huge, &one, &[]);
    assert_eq!(
        p.assignments.len(),
        dna::plan::MAX_REPLICAS_PER_ROLE as usize
    );
    assert_eq!(p.unplaced.len(), 1);
    check(&huge, &one, &p.assignments).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The checker

#[test]
fn check_rejects_every_kind_of_bad_plan() {
    let nodes = vec![node(1, 2000, 4096), node(2, 2000, 4096)];
    let mut db = role("db", 2, 1500, 256);
    db.anti_affinity = vec!["db".into()];
    let web = role("web", 2, 500, 256);
    let spec = colony(vec![db, web]);
    let a = |role: &str, replica: u32, node: u64| Assignment {
        role: role.into(),
        replica,
        node: NodeId(node),
        fallback: false,
        gpus: Vec::new(),
    };
    let good = plan(&spec, &nodes, &[]);
    check(&spec, &nodes, &good.assignments).unwrap();
    let cases: Vec<(Vec<Assignment>, &str)> = vec![
        (vec![a("db", 0, 9)], "unknown node"),
        (vec![a("nope", 0, 1)], "no such role"),
        (vec![a("web", 0, 1), a("web", 0, 2)], "assigned twice"),
        (vec![a("web", 2, 1)], "out of range"),
        (
            vec![a("db", 0, 1), a("web", 0, 1), a("web", 1, 1)],
            "over-committed",
        ),
        (vec![a("db", 0, 1), a("db", 1, 1)], "over-committed"),
        (
            vec![Assignment {
                fallback: true,
                ..a("web", 0, 1)
            }],
            "no fallback",
        ),
    ];
    for (bad, want) in cases {
        let err = check(&spec, &nodes, &bad).unwrap_err();
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
    // Anti-affinity on its own (enough room).
    let roomy = vec![node(1, 8000, 8192)];
    let err = check(&spec, &roomy, &[a("db", 0, 1), a("db", 1, 1)]).unwrap_err();
    assert!(err.contains("anti-affinity"), "{err}");
    // A node that does not match.
    let mut arm = node(3, 8000, 8192);
    arm.caps.arch = "aarch64".into();
    let mut pinned = role("x", 1, 100, 64);
    pinned.needs.arch = vec!["x86_64".into()];
    let err = check(
        &colony(vec![pinned.clone()]),
        &[arm.clone()],
        &[a("x", 0, 3)],
    )
    .unwrap_err();
    assert!(err.contains("does not match"), "{err}");
    // Aliases are one arch: an `amd64` node matches `x86_64` needs, `arm64` matches `aarch64`.
    arm.caps.arch = "amd64".into();
    check(&colony(vec![pinned]), &[arm], &[a("x", 0, 3)]).unwrap();
}

#[test]
fn check_rejects_port_clashes_and_bad_gpu_indices() {
    let nodes = vec![gpu_node(1, 8000, 8192, 2)];
    let web = publishing("web", 2, &[(80, Protocol::Tcp)]);
    let api = publishing("api", 1, &[(8080, Protocol::Tcp), (80, Protocol::Tcp)]);
    let dns = publishing("dns", 1, &[(80, Protocol::Udp)]);
    let gpu = gpu_role("gpu", 2, 1);
    let spec = colony(vec![web, api, dns, gpu]);
    let a = |role: &str, replica: u32, gpus: &[u16]| Assignment {
        role: role.into(),
        replica,
        node: NodeId(1),
        fallback: false,
        gpus: gpus.to_vec(),
    };
    // 80/udp next to 80/tcp is fine, and so are two GPUs handed out once each.
    check(
        &spec,
        &nodes,
        &[
            a("web", 0, &[]),
            a("dns", 0, &[]),
            a("gpu", 0, &[1]),
            a("gpu", 1, &[0]),
        ],
    )
    .unwrap();
    let cases: Vec<(Vec<Assignment>, &str)> = vec![
        (
            vec![a("web", 0, &[]), a("api", 0, &[])],
            "host port 80/tcp published twice on node 0000000000000001: by web/0 and api/0",
        ),
        (
            vec![a("web", 0, &[]), a("web", 1, &[])],
            "host port 80/tcp published twice on node 0000000000000001: by web/0 and web/1",
        ),
        (
            vec![a("gpu", 0, &[1]), a("gpu", 1, &[1])],
            "GPU 1 of node 0000000000000001 handed to both gpu/0 and gpu/1",
        ),
        (
            vec![a("gpu", 0, &[2])],
            "gpu/0: GPU index 2 on node 0000000000000001, which has 2 GPUs",
        ),
        (
            vec![a("gpu", 0, &[])],
            "gpu/0: holds 0 GPU indices but its needs ask for 1",
        ),
        (
            vec![a("web", 0, &[0])],
            "web/0: holds 1 GPU indices but its needs ask for 0",
        ),
    ];
    for (bad, want) in cases {
        let err = check(&spec, &nodes, &bad).unwrap_err();
        assert_eq!(err, want);
    }
}

// ---------------------------------------------------------------------------------------------
// Exclusions: failed replicas and held (down, waited-for) nodes

fn failure(role: &str, replica: u32, nodes: &[u64], count: u32, retry_in_ms: u64) -> Failure {
    Failure {
        role: role.to_owned(),
        replica,
        nodes: nodes.iter().map(|&n| NodeId(n)).collect(),
        count,
        detail: "exit 1".to_owned(),
        retry_in_ms,
        forget_in_ms: 600_000,
    }
}

fn held(node: u64, roles: &[&str]) -> HeldNode {
    HeldNode {
        node: NodeId(node),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
    }
}

fn on(p: &Plan, role: &str, replica: u32) -> Option<u64> {
    p.assignments
        .iter()
        .find(|a| a.role == role && a.replica == replica)
        .map(|a| a.node.0)
}

#[test]
fn a_failed_replica_moves_off_the_nodes_it_failed_on_and_nothing_else_moves() {
    let nodes = uniform_nodes(4, 4000, 8192);
    let spec = colony(vec![role("web", 3, 1000, 1024), role("db", 1, 1000, 1024)]);
    let p0 = plan(&spec, &nodes, &[]);
    let was = on(&p0, "web", 1).unwrap();
    let failures = [failure("web", 1, &[was], 1, 0)];
    let ex = Exclusions {
        failures: &failures,
        held: &[],
    };
    let p1 = plan_excluding(&spec, &nodes, &p0.assignments, ex);
    check_excluding(&spec, &nodes, &p1.assignments, ex).unwrap();
    let now = on(&p1, "web", 1).unwrap();
    assert_ne!(now, was, "it moved");
    let d = diff(&p0.assignments, &p1.assignments);
    assert_eq!((d.moved, d.added, d.removed), (1, 0, 0), "only it moved");
    // Stable: re-planning under the same exclusions moves nothing.
    assert_eq!(plan_excluding(&spec, &nodes, &p1.assignments, ex), p1);
    // The plain checker does not know the exclusion; the excluding one rejects the old plan.
    let err = check_excluding(&spec, &nodes, &p0.assignments, ex).unwrap_err();
    assert!(err.contains("where it failed"), "{err}");
}

#[test]
fn a_failed_replica_in_backoff_or_with_nowhere_else_to_go_is_unplaced_failing() {
    let nodes = uniform_nodes(2, 4000, 8192);
    let spec = colony(vec![role("web", 2, 1000, 1024)]);
    let p0 = plan(&spec, &nodes, &[]);
    let (a, b) = (on(&p0, "web", 0).unwrap(), on(&p0, "web", 1).unwrap());
    // Backoff: placed nowhere, whatever room there is.
    let waiting = [failure("web", 0, &[a, b], 2, 30_000)];
    let ex = Exclusions {
        failures: &waiting,
        held: &[],
    };
    let p1 = plan_excluding(&spec, &nodes, &p0.assignments, ex);
    check_excluding(&spec, &nodes, &p1.assignments, ex).unwrap();
    check_snapshot(
        &p1,
        expect![[r#"
            web/1 -> 2
            web/0 unplaced: failing: failed 2 times in a row, on nodes 0000000000000001, 0000000000000002 (last: exit 1); waiting out its backoff before the next move
        "#]],
    );
    // Backoff over, but it failed on both nodes: still unplaced, saying so.
    let done = [failure("web", 0, &[1, 2], 2, 0)];
    let ex = Exclusions {
        failures: &done,
        held: &[],
    };
    let p2 = plan_excluding(&spec, &nodes, &p1.assignments, ex);
    check_snapshot(
        &p2,
        expect![[r#"
            web/1 -> 2
            web/0 unplaced: failing: failed 2 times in a row, on nodes 0000000000000001, 0000000000000002 (last: exit 1); no other node fits (no matching node: it failed on every node that is up)
        "#]],
    );
    // A third node joins: it goes there.
    let more = uniform_nodes(3, 4000, 8192);
    let p3 = plan_excluding(&spec, &more, &p2.assignments, ex);
    assert_eq!(on(&p3, "web", 0), Some(3));
    assert_eq!(on(&p3, "web", 1), Some(2), "the other replica stays");
}

#[test]
fn a_held_node_keeps_its_held_roles_moves_the_rest_and_takes_nothing_new() {
    let nodes = uniform_nodes(3, 4000, 8192);
    let spec = colony(vec![
        role("db", 1, 1000, 1024),
        role("web", 3, 1000, 1024),
        role("batch", 2, 500, 512),
    ]);
    let p0 = plan(&spec, &nodes, &[]);
    let down = on(&p0, "db", 0).unwrap();
    let holds = [held(down, &["db"])];
    let ex = Exclusions {
        failures: &[],
        held: &holds,
    };
    let p1 = plan_excluding(&spec, &nodes, &p0.assignments, ex);
    check_excluding(&spec, &nodes, &p1.assignments, ex).unwrap();
    assert_eq!(on(&p1, "db", 0), Some(down), "the stateful replica waits");
    for a in p1.assignments.iter().filter(|a| a.role != "db") {
        assert_ne!(
            a.node.0, down,
            "{}/{} stayed on a down node",
            a.role, a.replica
        );
    }
    // Scaling up places nothing there either, even when it is the only node with room.
    let bigger = colony(vec![
        role("db", 1, 1000, 1024),
        role("web", 3, 1000, 1024),
        role("batch", 9, 500, 512),
    ]);
    let p2 = plan_excluding(&bigger, &nodes, &p1.assignments, ex);
    check_excluding(&bigger, &nodes, &p2.assignments, ex).unwrap();
    assert!(
        p2.assignments
            .iter()
            .all(|a| a.node.0 != down || a.role == "db")
    );
    // The hold runs out: the node leaves the plan and the replica moves.
    let up: Vec<NodeRecord> = nodes.iter().filter(|n| n.node.0 != down).cloned().collect();
    let p3 = plan(&spec, &up, &p1.assignments);
    assert!(on(&p3, "db", 0).is_some_and(|n| n != down));
    // A replica on a held node whose role is not held there is rejected by the checker.
    let wrong = [held(down, &["web"])];
    let err = check_excluding(
        &spec,
        &nodes,
        &p1.assignments,
        Exclusions {
            failures: &[],
            held: &wrong,
        },
    )
    .unwrap_err();
    assert!(err.contains("held only for web"), "{err}");
}

#[test]
fn random_exclusions_always_give_valid_stable_plans() {
    for seed in 0..300u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let spec = random_spec(&mut rng);
        let nodes = random_nodes(&mut rng);
        let p0 = plan(&spec, &nodes, &[]);
        let mut failures: Vec<Failure> = Vec::new();
        let mut holds: Vec<HeldNode> = Vec::new();
        for a in &p0.assignments {
            if rng.random_bool(0.15) {
                let retry = if rng.random_bool(0.3) { 30_000 } else { 0 };
                failures.push(failure(&a.role, a.replica, &[a.node.0], 1, retry));
            }
        }
        failures.sort_by(|a, b| (&a.role, a.replica).cmp(&(&b.role, b.replica)));
        failures.dedup_by(|a, b| (&a.role, a.replica) == (&b.role, b.replica));
        let mut ids: Vec<u64> = nodes.iter().map(|n| n.node.0).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            if rng.random_bool(0.1) {
                let roles: Vec<&str> = spec
                    .roles
                    .iter()
                    .filter(|_| rng.random_bool(0.5))
                    .map(|r| r.name.as_str())
                    .collect();
                holds.push(held(id, &roles));
            }
        }
        let ex = Exclusions {
            failures: &failures,
            held: &holds,
        };
        let what = format!("seed {seed}");
        let p1 = plan_excluding(&spec, &nodes, &p0.assignments, ex);
        check_excluding(&spec, &nodes, &p1.assignments, ex)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        accounted(&spec, &p1).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(sorted(&p1), "{what}");
        assert_eq!(
            p1,
            plan_excluding(&spec, &nodes, &p0.assignments, ex),
            "{what}: not deterministic"
        );
        let again = plan_excluding(&spec, &nodes, &p1.assignments, ex);
        let d = diff(&p1.assignments, &again.assignments);
        assert_eq!((d.moved, d.removed), (0, 0), "{what}: not a fixed point");
    }
}
