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
    pub replicas: ReplicaStats,
}

/// What happened to replicas under the engine's runtime model (see `engine/workload.rs`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplicaStats {
    /// Replica failures the scenario injected (`fail`).
    pub failures_injected: usize,
    /// Per injected failure: seconds until a committed plan took the replica off its node.
    pub failed_moved_s: Vec<f64>,
    /// Per stateful replica whose node crashed in a calm colony and did not come back in time:
    /// seconds from the crash to the committed plan that moved it.
    pub held_moved_s: Vec<f64>,
    /// Stateful replicas whose node crashed and came back before they moved.
    pub held_kept: usize,
    /// The queen's healthy roles at the end of the run.
    pub healthy_roles: Vec<String>,
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

/// How long the survivors of one crash took to mark the crashed node down (`MemberDown`).
#[derive(Clone, Debug, Serialize)]
pub struct Detection {
    pub node: usize,
    /// The crashed node was the queen (reported apart: her loss is seen first through leases).
    pub queen: bool,
    pub crashed_s: f64,
    /// Nodes running at the crash that did not crash themselves before knowing.
    pub survivors: usize,
    /// From the crash to the first survivor's `MemberDown`.
    pub first_s: Option<f64>,
    /// From the crash to the last survivor's `MemberDown`; `None` unless every survivor knew
    /// before the run ended and before the node restarted.
    pub last_s: Option<f64>,
    /// Survivors that never marked it down (the run ended or the node restarted first).
    pub missed: usize,
    pub restarted_first: bool,
}

/// Bytes sent per node per second from the middle of the run to its end (steady state when
/// the scenario has no late events).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Traffic {
    pub from_s: f64,
    /// foca's SWIM packets (probes, gossip, announces and feeds).
    pub swim_bytes_per_node_s: f64,
    /// The membership exchange (`JoinRequest`, `Members`).
    pub membership_bytes_per_node_s: f64,
    /// Everything else: heartbeats and acks, ballots, state transfers, registrations.
    pub other_bytes_per_node_s: f64,
    /// The busiest node's SWIM + membership bytes per second.
    pub gossip_max_node_bytes_s: f64,
}

impl Traffic {
    /// SWIM + membership exchange, per node.
    pub fn gossip_bytes_per_node_s(&self) -> f64 {
        self.swim_bytes_per_node_s + self.membership_bytes_per_node_s
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Messages {
    pub count: u64,
    pub bytes: u64,
    /// Frames sent on a reliable stream (too big for one datagram), a subset of `count`.
    pub stream_frames: u64,
    /// Datagrams the network dropped because, sealed, they would exceed
    /// `MAX_DATAGRAM_BYTES` (1,400): a real LAN fragments or drops them.
    pub oversize_dropped: u64,
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
    /// Membership converged, counted from the moment the last node first booted.
    pub converged_after_last_boot_s: Option<f64>,
    pub first_queen_s: Option<f64>,
    /// With a colony spec: the worst over all queens of [`QueenRecord::roles_assigned_s`].
    pub roles_assigned_s: Option<f64>,
    /// With a colony spec: the plan's outcome and the replica moves.
    pub roles: Option<Roles>,
    pub queens: Vec<QueenRecord>,
    pub failovers: Vec<Failover>,
    pub violations: Vec<String>,
    pub messages: Messages,
    /// Every crash: how long until the first and the last survivor marked it down.
    pub detections: Vec<Detection>,
    /// Suspicions raised (unanswered probes) by the nodes running at the end.
    pub suspicions: u64,
    /// `MemberDown`s of running nodes that no crash, partition or cut explains (at most 10,000).
    pub false_downs: Vec<String>,
    /// Traffic in the second half of the run.
    pub steady: Traffic,
    #[serde(skip)]
    pub timeline: Vec<String>,
    /// Members known over time and scenario markers, for `run --svg` (see `Sim::record_series`).
    #[serde(skip)]
    pub series: Option<crate::series::Series>,
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
            "membership converged: {} ({} after the last boot); first queen: {}\n",
            opt(self.membership_converged_s),
            opt(self.converged_after_last_boot_s),
            opt(self.first_queen_s)
        ));
        for d in &self.detections {
            out.push_str(&format!(
                "crash of {}node {} at {:.3}s: first survivor knew after {}, last (of {}) after {}{}\n",
                if d.queen { "queen " } else { "" },
                d.node,
                d.crashed_s,
                opt(d.first_s),
                d.survivors,
                opt(d.last_s),
                if d.missed > 0 {
                    format!(
                        "; {} never knew{}",
                        d.missed,
                        if d.restarted_first { " (it restarted first)" } else { "" }
                    )
                } else {
                    String::new()
                }
            ));
        }
        out.push_str(&format!(
            "suspicions: {}; false downs: {}\n",
            self.suspicions,
            self.false_downs.len()
        ));
        for f in self.false_downs.iter().take(20) {
            out.push_str(&format!("  {f}\n"));
        }
        let t = &self.steady;
        out.push_str(&format!(
            "traffic from {:.0}s, per node: gossip {:.0} B/s (SWIM {:.0}, membership exchange {:.0}; busiest node {:.0}), other {:.0} B/s\n",
            t.from_s,
            t.gossip_bytes_per_node_s(),
            t.swim_bytes_per_node_s,
            t.membership_bytes_per_node_s,
            t.gossip_max_node_bytes_s,
            t.other_bytes_per_node_s
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
            let x = &r.replicas;
            let list = |v: &[f64]| {
                v.iter()
                    .map(|s| format!("{s:.3}s"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push_str(&format!(
                "replicas: healthy roles {:?}; {} failures injected, moved off after [{}]; stateful replicas of crashed nodes: {} kept, moved after [{}]\n",
                x.healthy_roles,
                x.failures_injected,
                list(&x.failed_moved_s),
                x.held_kept,
                list(&x.held_moved_s)
            ));
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
            "messages: {} ({} bytes; {} on streams; {} oversize datagrams dropped)\n",
            self.messages.count,
            self.messages.bytes,
            self.messages.stream_frames,
            self.messages.oversize_dropped
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
    /// Membership converged, counted from the last node's first boot.
    pub converged_after_last_boot_s: Percentiles,
    /// Worker crashes: crash to the first survivor's `MemberDown`, per crash.
    pub detect_first_s: Percentiles,
    /// Worker crashes: crash to the last survivor's `MemberDown`, per crash every survivor
    /// learned of (see `detections_incomplete`).
    pub detect_last_s: Percentiles,
    /// The same two for queen crashes.
    pub queen_detect_first_s: Percentiles,
    pub queen_detect_last_s: Percentiles,
    /// Crashes some survivor never marked down before the run ended (a restart first is not
    /// counted).
    pub detections_incomplete: usize,
    /// Suspicions (unanswered probes) per run.
    pub suspicions: Percentiles,
    /// False downs per run.
    pub false_downs: Percentiles,
    pub false_downs_total: usize,
    /// SWIM + membership exchange bytes per node per second in each run's second half.
    pub gossip_bytes_per_node_s: Percentiles,
    /// With a colony spec: per run, the worst time from a crowning to every replica assigned.
    pub roles_assigned_s: Percentiles,
    /// With a colony spec: churn moves per run (replicas moved off running nodes).
    pub churn_moves: Percentiles,
    /// With a colony spec: per injected replica failure, seconds until a committed plan took
    /// the replica off its node.
    pub failed_moved_s: Percentiles,
    /// With a colony spec: per stateful replica of a crashed node that moved, seconds from the
    /// crash to the move.
    pub held_moved_s: Percentiles,
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
