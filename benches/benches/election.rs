//! Election rules and quorum counting, at 100 and 10,000 roster members.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dna::election::{self, Ballot, VoterView};
use dna::quorum::Quorum;
use std::collections::BTreeSet;
use std::hint::black_box;
use swarm_core::wire::{Pheromone, Version};
use swarm_core::{NodeId, Time};

fn bench(c: &mut Criterion) {
    let ballot = Ballot {
        candidate: NodeId(1),
        term: 5,
        version: Version { term: 4, seq: 2 },
        pheromone: Pheromone(500_000),
        handover: false,
        pre: true,
    };
    let view = VoterView {
        now: Time(10_000),
        term: 4,
        voted_for: None,
        version: Version { term: 4, seq: 2 },
        lease: Some((4, Time(9_000))),
        reigning: false,
        restart_fenced: false,
        just_voted_for: None,
        veto_open: true,
        fittest_other: Some(Pheromone(520_000)),
        weak_margin: 0.1,
    };
    c.bench_function("election/judge ballot", |b| {
        b.iter(|| election::judge(black_box(&ballot), black_box(&view)))
    });

    let mut group = c.benchmark_group("quorum/is_met majority of roster");
    for n in [100u64, 10_000] {
        let roster: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let q = Quorum::new(&roster, &roster, n as usize);
        let agreed: BTreeSet<NodeId> = (1..=n / 2 + 1).map(NodeId).collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| q.is_met(black_box(&agreed)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
