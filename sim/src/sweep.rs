//! Sweeps: one scenario over a range of seeds, spread over worker threads (each run is still
//! deterministic: it depends on its seed only), aggregated into percentiles.

use crate::engine::{Options, Sim};
use crate::report::{ExtraTerms, Percentiles, Report, SeedViolation, SweepReport};
use crate::scenario::Scenario;
use std::sync::Mutex;

/// Runs `seeds` and returns every report, in seed order.
pub fn run_seeds(
    scenario: &Scenario,
    base: &Options,
    seeds: std::ops::Range<u64>,
    threads: usize,
) -> Vec<Report> {
    let next = Mutex::new(seeds.start);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let seed = {
                        let mut n = next.lock().unwrap_or_else(|e| e.into_inner());
                        if *n >= seeds.end {
                            break;
                        }
                        *n += 1;
                        *n - 1
                    };
                    let report = Sim::new(
                        scenario,
                        Options {
                            seed,
                            timeline: false,
                            ..base.clone()
                        },
                    )
                    .run();
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(report);
                }
            });
        }
    });
    let mut all = results.into_inner().unwrap_or_else(|e| e.into_inner());
    all.sort_by_key(|r| r.seed);
    all
}

/// Aggregates a sweep. `replay` renders the command that replays one seed.
pub fn summarize(reports: &[Report], wall_s: f64, replay: impl Fn(u64) -> String) -> SweepReport {
    let mut violations = Vec::new();
    for r in reports {
        for v in &r.violations {
            violations.push(SeedViolation {
                seed: r.seed,
                violation: v.clone(),
                replay: replay(r.seed),
            });
        }
    }
    let firsts = reports.iter().filter_map(|r| r.first_queen_s).collect();
    let failovers = reports
        .iter()
        .flat_map(|r| r.failovers.iter().filter_map(|f| f.duration_s()))
        .collect();
    let converged = reports
        .iter()
        .filter_map(|r| r.membership_converged_s)
        .collect();
    // Each queen crash legitimately crowns one more queen; any other crown is an extra term.
    let handovers_of = |r: &Report| {
        r.queens
            .iter()
            .filter(|q| q.ended_by.as_deref() == Some("Handover"))
            .count()
    };
    let extra_of = |r: &Report| {
        r.queens
            .len()
            .saturating_sub(1 + r.failovers.len() + handovers_of(r))
    };
    let extra = reports.iter().map(|r| extra_of(r) as f64).collect();
    let handovers = reports.iter().map(|r| handovers_of(r) as f64).collect();
    let extra_term_runs = reports
        .iter()
        .filter(|r| extra_of(r) > 0)
        .take(50)
        .map(|r| ExtraTerms {
            seed: r.seed,
            crowned_s: r.queens.iter().map(|q| q.crowned_s).collect(),
            replay: replay(r.seed),
        })
        .collect();
    SweepReport {
        runs: reports.len(),
        nodes: reports.first().map_or(0, |r| r.nodes),
        wall_s,
        violations,
        no_queen: reports
            .iter()
            .filter(|r| r.first_queen_s.is_none())
            .map(|r| r.seed)
            .collect(),
        failovers_unfinished: reports
            .iter()
            .flat_map(|r| &r.failovers)
            .filter(|f| f.new_queen_s.is_none())
            .count(),
        first_queen_s: Percentiles::of(firsts),
        failover_s: Percentiles::of(failovers),
        membership_converged_s: Percentiles::of(converged),
        roles_assigned_s: Percentiles::of(
            reports.iter().filter_map(|r| r.roles_assigned_s).collect(),
        ),
        churn_moves: Percentiles::of(
            reports
                .iter()
                .filter_map(|r| r.roles.as_ref().map(|x| x.moves.churn as f64))
                .collect(),
        ),
        handovers: Percentiles::of(handovers),
        extra_terms: Percentiles::of(extra),
        extra_term_runs,
    }
}
