//! Sweeps: one scenario over a range of seeds, spread over worker threads (each run is still
//! deterministic: it depends on its seed only), aggregated into percentiles.

use crate::engine::{Options, Sim};
use crate::report::{ExtraTerms, Percentiles, Report, SeedViolation, SweepReport};
use crate::scenario::Scenario;
use std::sync::Mutex;

/// Runs `seeds` and returns every report, in seed order. `done` is called (from a worker
/// thread) after each run, e.g. to advance a progress bar.
pub fn run_seeds(
    scenario: &Scenario,
    base: &Options,
    seeds: std::ops::Range<u64>,
    threads: usize,
    done: impl Fn(&Report) + Sync,
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
                    done(&report);
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

fn detection(
    reports: &[Report],
    queen: bool,
    pick: impl Fn(&crate::report::Detection) -> Option<f64>,
) -> Percentiles {
    Percentiles::of(
        reports
            .iter()
            .flat_map(|r| &r.detections)
            .filter(|d| d.queen == queen)
            .filter_map(pick)
            .collect(),
    )
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
    let Samples {
        first_queen_s: firsts,
        failover_s: failovers,
        membership_converged_s: converged,
    } = Samples::of(reports);
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
        converged_after_last_boot_s: Percentiles::of(
            reports
                .iter()
                .filter_map(|r| r.converged_after_last_boot_s)
                .collect(),
        ),
        detect_first_s: detection(reports, false, |d| d.first_s),
        detect_last_s: detection(reports, false, |d| d.last_s),
        queen_detect_first_s: detection(reports, true, |d| d.first_s),
        queen_detect_last_s: detection(reports, true, |d| d.last_s),
        detections_incomplete: reports
            .iter()
            .flat_map(|r| &r.detections)
            .filter(|d| d.missed > 0 && !d.restarted_first)
            .count(),
        suspicions: Percentiles::of(reports.iter().map(|r| r.suspicions as f64).collect()),
        false_downs: Percentiles::of(reports.iter().map(|r| r.false_downs.len() as f64).collect()),
        false_downs_total: reports.iter().map(|r| r.false_downs.len()).sum(),
        gossip_bytes_per_node_s: Percentiles::of(
            reports
                .iter()
                .map(|r| r.steady.gossip_bytes_per_node_s())
                .collect(),
        ),
        roles_assigned_s: Percentiles::of(
            reports.iter().filter_map(|r| r.roles_assigned_s).collect(),
        ),
        churn_moves: Percentiles::of(
            reports
                .iter()
                .filter_map(|r| r.roles.as_ref().map(|x| x.moves.churn as f64))
                .collect(),
        ),
        failed_moved_s: Percentiles::of(
            reports
                .iter()
                .filter_map(|r| r.roles.as_ref())
                .flat_map(|x| x.replicas.failed_moved_s.iter().copied())
                .collect(),
        ),
        held_moved_s: Percentiles::of(
            reports
                .iter()
                .filter_map(|r| r.roles.as_ref())
                .flat_map(|x| x.replicas.held_moved_s.iter().copied())
                .collect(),
        ),
        handovers: Percentiles::of(handovers),
        extra_terms: Percentiles::of(extra),
        extra_term_runs,
    }
}

/// The per-run values a sweep's headline percentiles (and `sweep --svg`'s histograms) are made of.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// Per run that crowned one: when the first queen was crowned.
    pub first_queen_s: Vec<f64>,
    /// Per finished failover: from the queen's crash to the next crowning.
    pub failover_s: Vec<f64>,
    /// Per run that converged: when every node first knew every other.
    pub membership_converged_s: Vec<f64>,
}

impl Samples {
    pub fn of(reports: &[Report]) -> Samples {
        Samples {
            first_queen_s: reports.iter().filter_map(|r| r.first_queen_s).collect(),
            failover_s: reports
                .iter()
                .flat_map(|r| r.failovers.iter().filter_map(|f| f.duration_s()))
                .collect(),
            membership_converged_s: reports
                .iter()
                .filter_map(|r| r.membership_converged_s)
                .collect(),
        }
    }
}
