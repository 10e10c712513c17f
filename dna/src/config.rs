//! Node configuration. Durations carry their unit in the name; defaults are tuned for a LAN.

use std::net::SocketAddr;
use swarm_core::{Capabilities, NodeId};

#[derive(Clone, Debug)]
pub struct Config {
    pub node: NodeId,
    /// Where this node receives packets.
    pub addr: SocketAddr,
    /// Nodes to announce to on start (the node's own address is skipped).
    pub seeds: Vec<SocketAddr>,
    pub caps: Capabilities,
    /// Operator weight in `0.0..=1.0`; `0.0` means this node never stands as queen.
    pub queen_affinity: f64,
    /// Cold start: before any roster is committed, a candidate needs votes from a majority of this
    /// many nodes, so two halves of a rack that boot apart can never both crown a queen.
    pub bootstrap_expect: usize,
    /// Expected colony size, to size foca's gossip fan-out.
    pub cluster_size_hint: u32,
    /// The queen sends a heartbeat to every member this often.
    pub heartbeat_ms: u64,
    /// A worker obeys a queen for this long after her last heartbeat, and refuses to vote while
    /// it does. Shorter than SWIM's failure detection (a crash is known ~1.5 s later).
    pub lease_ms: u64,
    /// The queen reigns for this long after the send time of a heartbeat a majority acknowledged.
    /// Must be below `lease_ms` by more than the worst clock drift over one lease.
    pub queen_lease_ms: u64,
    /// Candidate delay per pheromone rank: the fittest stands first.
    pub stagger_ms: u64,
    /// Delay before even the fittest stands, to let every voter's lease run out too.
    pub stand_base_ms: u64,
    /// A pre-vote or vote round gives up after this.
    pub round_timeout_ms: u64,
    /// For this long after losing its queen a voter refuses candidates clearly weaker than the
    /// fittest up-to-date member it knows to be alive.
    pub weak_veto_ms: u64,
    /// "Clearly weaker": the fitter member's pheromone exceeds the candidate's by this fraction.
    pub weak_margin: f64,
    /// A heir must be this much fitter than the queen ...
    pub handover_margin: f64,
    /// ... for this long before she hands the crown over.
    pub handover_sustain_ms: u64,
    /// A roster member SWIM has declared down for this long is removed from the roster.
    pub roster_remove_after_ms: u64,
    /// Pheromone update, scent gossip and housekeeping period.
    pub tick_ms: u64,
    /// While a node knows no member, it re-announces to its seeds this often.
    pub announce_retry_ms: u64,
    /// Heirs named in each heartbeat.
    pub heirs: usize,
    /// A member that comes up in a node's view gets this many hellos ...
    pub hello_copies: u8,
    /// ... this far apart.
    pub greet_again_ms: u64,
    /// Every this many ticks a node asks one random peer for its full member list.
    pub anti_entropy_ticks: u64,
    /// foca's gossip period (it wakes every node this often, so it is a cost even when idle).
    pub swim_gossip_ms: u64,
    /// SWIM: every node probes one member (round-robin over a shuffled list) this often.
    pub probe_period_ms: u64,
    /// SWIM: no ack this long after the ping starts the indirect probes.
    pub probe_rtt_ms: u64,
    /// SWIM: members asked to ping a silent member on the prober's behalf.
    pub indirect_probes: usize,
    /// SWIM: a suspected member that has not refuted within this is declared down.
    pub suspect_to_down_ms: u64,
    /// A death this node declared is pushed to every member this many times, `greet_again_ms`
    /// apart.
    pub down_pushes: u8,
    /// A suspected member is told so directly this many times ...
    pub buddy_sends: u8,
    /// ... this far apart, while the suspicion stands.
    pub buddy_ms: u64,
    /// Each SWIM update is retransmitted `factor·log10(n+1)` times (at least 3).
    pub swim_retransmit_factor: f64,
    /// The queen re-plans this long after the first change to its inputs (nodes, spec), so a
    /// burst of changes costs one plan and one state version.
    pub plan_delay_ms: u64,
    /// A new queen waits at most this long for every live member to register its capabilities
    /// before her first plan (so the first plan spreads over the whole colony).
    pub register_wait_ms: u64,
}

impl Config {
    pub fn new(node: NodeId, addr: SocketAddr) -> Config {
        Config {
            node,
            addr,
            seeds: Vec::new(),
            caps: Capabilities::default(),
            queen_affinity: 1.0,
            bootstrap_expect: 1,
            cluster_size_hint: 100,
            heartbeat_ms: 300,
            lease_ms: 1000,
            queen_lease_ms: 650,
            stagger_ms: 40,
            stand_base_ms: 15,
            round_timeout_ms: 100,
            weak_veto_ms: 1500,
            weak_margin: 0.10,
            handover_margin: 0.25,
            handover_sustain_ms: 60_000,
            roster_remove_after_ms: 30_000,
            tick_ms: 1000,
            announce_retry_ms: 500,
            heirs: 4,
            hello_copies: 3,
            greet_again_ms: 200,
            anti_entropy_ticks: 5,
            swim_gossip_ms: 200,
            probe_period_ms: 200,
            probe_rtt_ms: 80,
            indirect_probes: 5,
            suspect_to_down_ms: 1200,
            down_pushes: 2,
            buddy_sends: 5,
            buddy_ms: 200,
            swim_retransmit_factor: 2.0,
            plan_delay_ms: 20,
            register_wait_ms: 600,
        }
    }

    /// Checks the relations the protocol's safety depends on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.queen_lease_ms >= self.lease_ms {
            return Err(ConfigError("queen_lease_ms must be below lease_ms".into()));
        }
        if self.heartbeat_ms * 2 > self.queen_lease_ms {
            return Err(ConfigError(
                "heartbeat_ms must be at most half of queen_lease_ms".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.queen_affinity) {
            return Err(ConfigError(
                "queen_affinity must be within 0.0..=1.0".into(),
            ));
        }
        if self.bootstrap_expect == 0 {
            return Err(ConfigError("bootstrap_expect must be at least 1".into()));
        }
        if self.probe_rtt_ms == 0 || self.probe_rtt_ms >= self.probe_period_ms {
            return Err(ConfigError(
                "probe_rtt_ms must be positive and below probe_period_ms".into(),
            ));
        }
        if self.suspect_to_down_ms == 0 || self.swim_gossip_ms == 0 || self.indirect_probes == 0 {
            return Err(ConfigError(
                "suspect_to_down_ms, swim_gossip_ms and indirect_probes must be positive".into(),
            ));
        }
        if self.tick_ms == 0 || self.round_timeout_ms == 0 {
            return Err(ConfigError(
                "tick_ms and round_timeout_ms must be positive".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid node configuration: {0}")]
pub struct ConfigError(pub String);
