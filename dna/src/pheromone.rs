//! Pheromone: a node's fitness to be queen, as a level in `0..=1`.
//!
//! The target level multiplies capability fitness (cpu, memory, disk, gpus), the operator's
//! `queen_affinity` (0 = never queen), stability (uptime, decaying penalties for restarts and
//! suspicions) and headroom (1 - load). The gossiped level moves toward the target a fraction per
//! tick: old scent evaporates, the present one reinforces it, so a brief spike does not crown.

use swarm_core::Capabilities;
use swarm_core::wire::Pheromone;

/// Uptime after which a node counts as fully stable.
pub const STABLE_AFTER_MS: u64 = 10 * 60 * 1000;
/// Half-life of a restart or suspicion penalty.
pub const PENALTY_HALF_LIFE_MS: u64 = 10 * 60 * 1000;
/// Fraction of the gap to the target closed per tick.
pub const REINFORCE_PER_TICK: f64 = 0.3;

/// Capability fitness in `0..=1`: saturating at 32 cores, 128 GiB, 4 TiB, 8 GPUs.
pub fn fitness(caps: &Capabilities) -> f64 {
    let cpu = (f64::from(caps.cpu_millis) / 32_000.0).min(1.0);
    let mem = (caps.memory_mib as f64 / (128.0 * 1024.0)).min(1.0);
    let disk = (caps.disk_mib as f64 / (4.0 * 1024.0 * 1024.0)).min(1.0);
    let gpu = (f64::from(caps.gpus) / 8.0).min(1.0);
    0.35 * cpu + 0.30 * mem + 0.15 * disk + 0.20 * gpu
}

/// The pheromone gland of one node.
#[derive(Clone, Debug)]
pub struct Gland {
    fitness: f64,
    affinity: f64,
    /// Restart and suspicion penalties, in "events", decaying with their half-life.
    penalty: f64,
    load: f64,
    level: f64,
}

impl Gland {
    pub fn new(caps: &Capabilities, affinity: f64, restart_penalty: f64) -> Gland {
        let mut gland = Gland {
            fitness: fitness(caps),
            affinity: affinity.clamp(0.0, 1.0),
            penalty: restart_penalty.max(0.0),
            load: 0.0,
            level: 0.0,
        };
        gland.level = gland.target(0);
        gland
    }

    /// The level this node would settle at, given its uptime.
    pub fn target(&self, uptime_ms: u64) -> f64 {
        let uptime = (uptime_ms as f64 / STABLE_AFTER_MS as f64).min(1.0);
        // The uptime ramp is gentle (×1.25 over ten minutes): ranks are relative, and a colony
        // that booted together ramps together, so a steep ramp would only make every node
        // republish its scent at the same moment (O(n² log n) gossip) for no change in order.
        let stability = (0.8 + 0.2 * uptime) * 0.75f64.powf(self.penalty);
        let headroom = 1.0 - 0.5 * self.load;
        self.affinity * (0.2 + 0.8 * self.fitness) * stability * headroom
    }

    /// One tick: penalties decay, the level moves toward the target.
    pub fn tick(&mut self, uptime_ms: u64, tick_ms: u64) {
        self.penalty *= 0.5f64.powf(tick_ms as f64 / PENALTY_HALF_LIFE_MS as f64);
        let target = self.target(uptime_ms);
        self.level += (target - self.level) * REINFORCE_PER_TICK;
    }

    pub fn suspected(&mut self) {
        self.penalty += 0.5;
    }

    /// Load in `0..=1` reported by the driver (cpu pressure, running workloads).
    pub fn set_load(&mut self, load: f64) {
        self.load = if load.is_nan() {
            0.0
        } else {
            load.clamp(0.0, 1.0)
        };
    }

    pub fn penalty(&self) -> f64 {
        self.penalty
    }

    pub fn level(&self) -> Pheromone {
        if self.affinity <= 0.0 {
            Pheromone(0)
        } else {
            Pheromone::from_f64(self.level).max(Pheromone(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big() -> Capabilities {
        Capabilities {
            cpu_millis: 32_000,
            memory_mib: 128 * 1024,
            gpus: 2,
            ..Capabilities::default()
        }
    }

    #[test]
    fn fitter_nodes_smell_stronger_and_zero_affinity_never() {
        let mut small = Gland::new(&Capabilities::default(), 1.0, 0.0);
        let mut large = Gland::new(&big(), 1.0, 0.0);
        let mut never = Gland::new(&big(), 0.0, 0.0);
        for i in 0..20 {
            small.tick(i * 1000, 1000);
            large.tick(i * 1000, 1000);
            never.tick(i * 1000, 1000);
        }
        assert!(large.level() > small.level());
        assert_eq!(never.level(), Pheromone(0));
        assert!(small.level() > Pheromone(0));
    }

    #[test]
    fn restarts_and_load_weaken_and_penalties_evaporate() {
        let fresh = Gland::new(&big(), 1.0, 0.0);
        let restarted = Gland::new(&big(), 1.0, 2.0);
        assert!(restarted.target(0) < fresh.target(0));
        let mut loaded = Gland::new(&big(), 1.0, 0.0);
        loaded.set_load(1.0);
        assert!(loaded.target(0) < fresh.target(0));
        let mut healing = Gland::new(&big(), 1.0, 2.0);
        for i in 0..3600 {
            healing.tick(i * 1000, 1000);
        }
        assert!(healing.penalty() < 0.05);
    }
}
