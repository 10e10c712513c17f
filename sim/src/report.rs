//! Run and sweep reports: the JSON the CLI prints, and the readable timeline.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct QueenRecord {
    pub term: u64,
    /// Node index in the simulation.
    pub node: usize,
    /// Stable node id.
    pub id: String,
    pub crowned_s: f64,
    pub deposed_s: Option<f64>,
    /// Why her reign ended: `crash`, or the abdication reason (`LostMajority`, `Superseded`,
    /// `Handover`).
    pub ended_by: Option<String>,
    /// With a colony spec: time from her crowning until she committed a plan covering every
    /// running node (every placeable replica assigned).
    pub roles_assigned_s: Option<f64>,
}

/// Replica moves (a replica's node changed between two committed plans), attributed to the
/// most recent scenario event before them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Moves {
    /// Replicas moved off a node that was down (unavoidable).
    pub forced: usize,
    /// Replicas moved off a node that was still running (churn).
    pub churn: usize,
    pub by_event: Vec<EventMoves>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventMoves {
    pub at_s: f64,
    pub event: String,
    pub forced: usize,
    pub churn: usize,
}

/// What the colony's plan looked like (only with a colony spec).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Roles {
    pub spec: String,
    /// Plans committed by queens.
    pub plans: usize,
    /// Replicas assigned in the last committed plan.
    pub assigned: usize,
    /// Replicas the last committed plan could not place, with reasons (first 20).
    pub unplaced: usize,
    pub unplaced_reasons: Vec<String>,
    pub moves: Moves,
}

#[derive(Clone, Debug, Serialize)]
pub struct Failover {
    #[serde(skip)]
    pub term: u64,
    pub queen_lost_s: f64,
    /// First worker whose lease of the lost queen ran out.
    pub detected_s: Option<f64>,
    pub new_queen_s: Option<f64>,
}

impl Failover {
    pub fn duration_s(&self) -> Option<f64> {
        self.new_queen_s.map(|n| n - self.queen_lost_s)
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Messages {
    pub count: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub seed: u64,
    pub simulated_s: f64,
    pub wall_s: f64,
    pub peak_rss_mb: Option<f64>,
    pub events: u64,
    pub trace_hash: String,
    pub membership_converged_s: Option<f64>,
    pub first_queen_s: Option<f64>,
    /// With a colony spec: the worst over all queens of [`QueenRecord::roles_assigned_s`].
    pub roles_assigned_s: Option<f64>,
    /// With a colony spec: the plan's outcome and the replica moves.
    pub roles: Option<Roles>,
    pub queens: Vec<QueenRecord>,
    pub failovers: Vec<Failover>,
    pub violations: Vec<String>,
    pub messages: Messages,
    #[serde(skip)]
    pub timeline: Vec<String>,
}

impl Report {
    pub fn readable(&self) -> String {
        let mut out = String::new();
        for line in &self.timeline {
            out.push_str(line);
            out.push('\n');
        }
        let opt = |v: Option<f64>| v.map_or("never".to_owned(), |s| format!("{s:.3}s"));
        out.push_str(&format!(
            "\n{} nodes, seed {}, {:.0}s simulated in {:.2}s wall, {} events, trace {}\n",
            self.nodes, self.seed, self.simulated_s, self.wall_s, self.events, self.trace_hash
        ));
        out.push_str(&format!(
            "membership converged: {}; first queen: {}\n",
            opt(self.membership_converged_s),
            opt(self.first_queen_s)
        ));
        if let Some(r) = &self.roles {
            out.push_str(&format!(
                "roles ({}): every replica assigned {} after crowning (worst queen); {} assigned, {} unplaced, {} plans; moves: {} forced, {} churn\n",
                r.spec,
                opt(self.roles_assigned_s),
                r.assigned,
                r.unplaced,
                r.plans,
                r.moves.forced,
                r.moves.churn
            ));
            for e in &r.moves.by_event {
                out.push_str(&format!(
                    "  after {:.3}s {}: {} forced, {} churn\n",
                    e.at_s, e.event, e.forced, e.churn
                ));
            }
            for u in &r.unplaced_reasons {
                out.push_str(&format!("  unplaced: {u}\n"));
            }
        }
        for f in &self.failovers {
            out.push_str(&format!(
                "failover: queen lost {:.3}s, detected {}, new queen {}\n",
                f.queen_lost_s,
                opt(f.detected_s),
                opt(f.new_queen_s)
            ));
        }
        out.push_str(&format!(
            "messages: {} ({} bytes)\n",
            self.messages.count, self.messages.bytes
        ));
        if self.violations.is_empty() {
            out.push_str("invariants: all held\n");
        } else {
            out.push_str(&format!("VIOLATIONS ({}):\n", self.violations.len()));
            for v in &self.violations {
                out.push_str(&format!("  {v}\n"));
            }
        }
        out
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    pub fn of(mut values: Vec<f64>) -> Percentiles {
        values.sort_by(f64::total_cmp);
        let pick = |q: f64| -> Option<f64> {
            if values.is_empty() {
                return None;
            }
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            Some(values[rank - 1])
        };
        Percentiles {
            samples: values.len(),
            p50: pick(0.50),
            p99: pick(0.99),
            max: values.last().copied(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SeedViolation {
    pub seed: u64,
    pub violation: String,
    pub replay: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    pub runs: usize,
    pub nodes: usize,
    pub wall_s: f64,
    pub violations: Vec<SeedViolation>,
    /// Runs in which no queen was ever crowned.
    pub no_queen: Vec<u64>,
    /// Queen crashes after which no new queen was crowned before the run ended.
    pub failovers_unfinished: usize,
    pub first_queen_s: Percentiles,
    pub failover_s: Percentiles,
    pub membership_converged_s: Percentiles,
    /// With a colony spec: per run, the worst time from a crowning to every replica assigned.
    pub roles_assigned_s: Percentiles,
    /// With a colony spec: churn moves per run (replicas moved off running nodes).
    pub churn_moves: Percentiles,
    /// Graceful hand-overs to a fitter heir per run (intended: hysteresis, not loss).
    pub handovers: Percentiles,
    /// Terms crowned per run beyond those caused by a queen crash or a hand-over: false
    /// depositions, duels, minority queens stepping down.
    pub extra_terms: Percentiles,
    /// The runs with extra terms (at most 50): seed and when each queen was crowned.
    pub extra_term_runs: Vec<ExtraTerms>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExtraTerms {
    pub seed: u64,
    pub crowned_s: Vec<f64>,
    pub replay: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p99, p.max), (Some(50.0), Some(99.0), Some(100.0)));
        assert_eq!(Percentiles::of(vec![]).p99, None);
    }
}
