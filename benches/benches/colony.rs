//! Whole-colony simulation throughput: the same dna + foca code the agent runs, in virtual time.
//! The long figures (1 h, 1,000 and 10,000 nodes, 1,000-seed sweeps) are aware-sim commands in
//! benches/README.md; this bench tracks regressions on a short run.

use aware_sim::engine::{Options, Sim};
use aware_sim::scenario::Scenario;
use criterion::{Criterion, criterion_group, criterion_main};

fn scenario(name: &str) -> Scenario {
    let path = format!(
        "{}/../sim/scenarios/{name}.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    Scenario::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"))
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("colony");
    group.sample_size(10);
    let crash = scenario("queen-crash");
    group.bench_function("100 nodes, 60 s simulated, queen crash at 30 s", |b| {
        b.iter(|| {
            let r = Sim::new(
                &crash,
                Options {
                    nodes: 100,
                    seed: 1,
                    duration_us: 60_000_000,
                    preload_membership: false,
                    debug: false,
                    spec: None,
                    timeline: false,
                },
            )
            .run();
            assert!(r.violations.is_empty());
            r.events
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
