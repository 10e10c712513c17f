//! The placement planner: fresh plans at 100 nodes × 20 roles and 10,000 nodes × 100,000
//! replicas, and re-plans after losing one node.

use criterion::{Criterion, criterion_group, criterion_main};
use dna::plan::plan;
use std::collections::BTreeMap;
use std::hint::black_box;
use swarm_core::spec::{ColonySpec, Count, Needs, NodeRecord, RoleSpec, Strategy};
use swarm_core::{Capabilities, NodeId};

fn nodes(n: u64) -> Vec<NodeRecord> {
    (1..=n)
        .map(|i| NodeRecord {
            node: NodeId(i),
            caps: Capabilities {
                cpu_millis: 16_000,
                memory_mib: 65_536,
                disk_mib: 500_000,
                gpus: if i % 10 == 0 { 2 } else { 0 },
                arch: if i % 7 == 0 { "aarch64" } else { "x86_64" }.to_owned(),
                labels: BTreeMap::from([("zone".to_owned(), format!("z{}", i % 3))]),
            },
            ip: None,
        })
        .collect()
}

/// `roles` roles of `replicas` each, with a mix of strategies, constraints and priorities.
fn spec(roles: usize, replicas: u32) -> ColonySpec {
    let roles = (0..roles)
        .map(|i| {
            let name = format!("role{i:03}");
            let mut needs = Needs {
                cpu_millis: 250 + 125 * (i as u32 % 6),
                memory_mib: 256 << (i % 4),
                disk_mib: 1000,
                ..Needs::default()
            };
            if i % 10 == 3 {
                needs.gpus = 1;
            }
            if i % 10 == 5 {
                needs.arch = vec!["x86_64".to_owned()];
            }
            if i % 10 == 7 {
                needs.labels.insert("zone".to_owned(), "z1".to_owned());
            }
            let base = RoleSpec::new(&name, Count::Replicas(replicas));
            RoleSpec {
                fallback: (i % 10 == 3).then(|| Needs {
                    gpus: 0,
                    ..needs.clone()
                }),
                needs,
                strategy: if i % 4 == 1 {
                    Strategy::Pack
                } else {
                    Strategy::Spread
                },
                affinity: if i % 5 == 2 {
                    vec![format!("role{:03}", i - 1)]
                } else {
                    vec![]
                },
                anti_affinity: if i % 10 == 9 { vec![name] } else { vec![] },
                priority: (i % 3) as i32,
                ..base
            }
        })
        .collect();
    ColonySpec {
        name: "bench".to_owned(),
        roles,
    }
}

fn bench(c: &mut Criterion) {
    let (s, n) = (spec(20, 4), nodes(100));
    c.bench_function("plan/fresh 100 nodes x 20 roles (80 replicas)", |b| {
        b.iter(|| plan(black_box(&s), black_box(&n), &[]))
    });
    let prev = plan(&s, &n, &[]).assignments;
    let fewer: Vec<NodeRecord> = n.iter().filter(|r| r.node != NodeId(37)).cloned().collect();
    c.bench_function(
        "plan/re-plan 100 nodes x 20 roles after losing one node",
        |b| b.iter(|| plan(black_box(&s), black_box(&fewer), black_box(&prev))),
    );

    let mut big = c.benchmark_group("plan/10k");
    big.sample_size(10);
    let (s, n) = (spec(100, 1000), nodes(10_000));
    big.bench_function("fresh 10,000 nodes x 100,000 replicas", |b| {
        b.iter(|| plan(black_box(&s), black_box(&n), &[]))
    });
    let fresh = plan(&s, &n, &[]);
    let fallback = fresh.assignments.iter().filter(|a| a.fallback).count();
    eprintln!(
        "10k: {} assigned ({fallback} on fallback), {} unplaced",
        fresh.assignments.len(),
        fresh.unplaced.len()
    );
    let prev = fresh.assignments;
    let fewer: Vec<NodeRecord> = n.iter().filter(|r| r.node != NodeId(37)).cloned().collect();
    let replan = plan(&s, &fewer, &prev);
    eprintln!(
        "10k after losing node 37 (which ran {}): {:?}",
        prev.iter().filter(|a| a.node == NodeId(37)).count(),
        dna::plan::diff(&prev, &replan.assignments)
    );
    big.bench_function(
        "re-plan 10,000 nodes x 100,000 replicas after losing one node",
        |b| b.iter(|| plan(black_box(&s), black_box(&fewer), black_box(&prev))),
    );
    big.finish();

    // 1,000 full nodes of priority-0 replicas; 1,000 priority-10 replicas arrive, each evicting two.
    let mut pre = c.benchmark_group("plan/preempt");
    pre.sample_size(10);
    let n = nodes(1000);
    let mut low = spec(1, 16_000);
    low.roles[0].needs = Needs {
        cpu_millis: 1000,
        memory_mib: 256,
        ..Needs::default()
    };
    low.roles[0].name = "low".to_owned();
    let prev = plan(&low, &n, &[]).assignments;
    let mut high = low.roles[0].clone();
    high.name = "high".to_owned();
    high.priority = 10;
    high.count = Count::Replicas(1000);
    high.needs.cpu_millis = 2000;
    let mut both = low.clone();
    both.roles.push(high);
    let p = plan(&both, &n, &prev);
    eprintln!(
        "preempt: {} assigned, {} unplaced, {:?}",
        p.assignments.len(),
        p.unplaced.len(),
        dna::plan::diff(&prev, &p.assignments)
    );
    pre.bench_function(
        "1,000 full nodes, 1,000 high-priority replicas arrive",
        |b| b.iter(|| plan(black_box(&both), black_box(&n), black_box(&prev))),
    );
    pre.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
