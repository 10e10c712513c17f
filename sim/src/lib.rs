//! aware-sim: a deterministic discrete-event simulator for AWARE colonies.
//!
//! - [`scenario`]: scenario files (YAML) and their strict, positioned errors.
//! - [`engine`]: virtual time, the seeded RNG, the simulated network and fault injection; drives
//!   the real `dna::Node` (and foca) code.
//! - [`checker`]: safety invariants checked at every event.
//! - [`report`]: run and sweep reports.
//! - [`sweep`]: many seeds, aggregated, with replay commands for failing seeds.

pub mod checker;
pub mod engine;
pub mod report;
pub mod scenario;
pub mod sweep;

pub use engine::{Options, Sim};
pub use report::{Report, SweepReport};
