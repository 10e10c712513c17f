//! aware-sim: a deterministic discrete-event simulator for AWARE colonies.
//!
//! - [`scenario`]: scenario files (YAML) and their strict, positioned errors.
//! - [`clock`]: a node's monotonic clock (drift, steps that stall, the map to global time).
//! - [`engine`]: virtual time, the seeded RNG, the simulated network and fault injection; drives
//!   the real `dna::Node` (and foca) code.
//! - [`link`]: the datagram model of a path (loss, duplication, latency, reordering).
//! - [`queue`]: the event queue (a calendar queue ordered by time, then sequence number).
//! - [`checker`]: safety invariants checked at every event.
//! - [`report`]: run and sweep reports.
//! - [`sweep`]: many seeds, aggregated, with replay commands for failing seeds.
//! - [`series`]: the bounded time series a run records for its picture.
//! - [`plot`]: SVG pictures of a run (timeline) and of a sweep (histograms), drawn with plotters.

pub mod checker;
pub mod clock;
pub mod engine;
pub mod link;
pub mod plot;
pub mod queue;
pub mod report;
pub mod scenario;
pub mod series;
pub mod sweep;

pub use engine::{Options, Sim};
pub use report::{Report, SweepReport};
