//! aware-agent: the embeddable node library and the `aware-agent` binary. Every piece of I/O
//! (UDP gossip, QUIC, discovery, container runtimes, persistence, REST, metrics) will live here
//! and only here, driving the sans-IO `dna::Node`. Until those drivers land, the colony runs in
//! the simulator (`aware-sim`), which drives the very same `dna::Node`.

pub use dna;
pub use swarm_core;
