//! aware-agent: the embeddable node library and the `aware-agent` binary. Every piece of I/O
//! (UDP gossip, QUIC, discovery, container runtimes, persistence, REST, metrics) will live here
//! and only here, driving the sans-IO `dna::Node`. Until those drivers land, the colony runs in
//! the simulator (`aware-sim`), which drives the very same `dna::Node`.
//!
//! What exists today is the operator's tooling: capability detection ([`caps`]), Docker Compose
//! import ([`compose`]) and the `spec` / `caps` commands ([`commands`]).

pub mod caps;
pub mod commands;
pub mod compose;
pub mod yaml_pos;

pub use dna;
pub use swarm_core;
