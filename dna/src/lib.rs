//! dna: the colony's instinct engine. Pure and sans-IO: no sockets, no clock reads, no global RNG.
//!
//! A [`Node`] is a state machine in the style of quinn-proto and foca: the driver feeds it
//! packets (`handle_packet`) and timer expiries (`handle_timeout`) with `now`, and drains what it
//! wants done (`poll_transmit`, `poll_timeout`, `poll_persist`, `poll_event`).
//!
//! - [`config`]: every tunable, with units in the names.
//! - [`pheromone`]: how fit a node is to be queen, evaporating and reinforced over time.
//! - [`quorum`]: majorities over the roster (or `bootstrap_expect` before there is one).
//! - [`election`]: the voter's rules and the candidate's stagger, as pure functions.
//! - [`spec`]: the colony-spec language (YAML → [`swarm_core::spec::ColonySpec`]) and templates.
//! - [`plan`]: the planner, a pure function from spec, nodes and previous plan to placements.
//! - [`timer`]: the node's own timer queue.
//! - [`node`]: SWIM membership (foca), election, reign and colony-state replication; replica
//!   reports, colony-wide health ([`healthy_roles`]) and failure handling.
//! - [`endpoints`]: where a role's replicas are reached (`ip:port`), from committed data.

pub mod config;
pub mod election;
mod endpoints;
pub mod node;
pub mod pheromone;
pub mod plan;
pub mod quorum;
pub mod spec;
pub mod timer;

pub use config::Config;
pub use endpoints::endpoints;
pub use node::{
    AbdicateReason, Event, Lane, Move, MoveReason, Node, NotQueen, Persisted, ReplicaRow, Role,
    Transmit, healthy_roles,
};
