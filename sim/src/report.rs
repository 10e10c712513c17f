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
