//! swarm-core: the colony's senses. Pure data and codecs, no I/O.
//!
//! - [`id`]: stable node identity ([`NodeId`]).
//! - [`caps`]: what a node can offer ([`Capabilities`]).
//! - [`time`]: the virtual/monotonic instant every state machine is fed ([`Time`]).
//! - [`wire`]: versioned, size-limited wire messages and their codec (serde + bincode 2).
//! - [`envelope`]: the gossip envelope (XChaCha20-Poly1305 under the colony keyring, anti-replay), applied by the transport.
//! - [`spec`]: the resolved colony spec (roles, needs, workloads) as it travels in the colony state.
//! - [`swim`]: the SWIM (foca) identity and the pheromone "scent" piggybacked on foca broadcasts.

pub mod caps;
pub mod envelope;
pub mod id;
pub mod spec;
pub mod swim;
pub mod time;
pub mod wire;

pub use caps::Capabilities;
pub use id::NodeId;
pub use time::Time;
