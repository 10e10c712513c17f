//! Seeds found at run time: `Node::add_seed`, the entry point for the driver's discovery
//! (static seeds re-resolved, mDNS, etcd). A found address becomes a seed (so reconnect keeps
//! trying it after a partition) and is asked for its member list at once unless it is already
//! a live member: two groups that formed apart (e.g. by mDNS at boot) merge this way.

use super::Node;
use std::net::SocketAddr;
use swarm_core::Time;

/// Seeds a node keeps; beyond it, a found address is asked once but not kept.
pub const MAX_SEEDS: usize = 1024;

impl Node {
    /// A peer address found by discovery. Idempotent for a live member's address.
    pub fn add_seed(&mut self, addr: SocketAddr, now: Time) {
        let now = self.clock(now);
        if addr == self.cfg.addr || self.live.values().any(|id| id.addr == addr) {
            return;
        }
        if !self.cfg.seeds.contains(&addr) && self.cfg.seeds.len() < MAX_SEEDS {
            self.cfg.seeds.push(addr);
        }
        let lonely = self.live.is_empty();
        self.ask_to_join(addr, lonely, now);
    }
}
