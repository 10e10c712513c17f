//! [`AgentEvent`]: what an embedding program (or a runtime) hears from its agent, distilled from
//! `dna::Event`. Delivered on a bounded broadcast channel of [`EVENT_CHANNEL`] events.
//!
//! **Lagging:** a subscriber that falls more than [`EVENT_CHANNEL`] events behind loses the
//! oldest ones; its next `recv` returns `RecvError::Lagged(n)` with the number lost, then resumes
//! with the oldest event still buffered. Events are notifications, not the source of truth: after
//! a lag, call `status()` to resynchronise (it holds the members, the queen and this node's
//! assignments). The agent never waits for a slow subscriber.

use swarm_core::NodeId;
use swarm_core::wire::{Assignment, Version};

/// Events buffered per subscriber before the oldest are dropped.
pub const EVENT_CHANNEL: usize = 1024;

/// Why this node stopped being queen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeposedReason {
    /// No majority acknowledged her for a whole queen lease.
    LostMajority,
    /// She saw a higher term.
    Superseded,
    /// She handed the crown to a fitter heir.
    Handover,
}

impl From<dna::AbdicateReason> for DeposedReason {
    fn from(r: dna::AbdicateReason) -> DeposedReason {
        match r {
            dna::AbdicateReason::LostMajority => DeposedReason::LostMajority,
            dna::AbdicateReason::Superseded => DeposedReason::Superseded,
            dna::AbdicateReason::Handover => DeposedReason::Handover,
        }
    }
}

/// Something the colony did that concerns this node.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentEvent {
    /// SWIM considers this member alive.
    MemberUp {
        /// The member.
        node: NodeId,
    },
    /// SWIM declared this member down.
    MemberDown {
        /// The member.
        node: NodeId,
    },
    /// This node was crowned queen.
    Crowned {
        /// Her term.
        term: u64,
    },
    /// This node stopped being queen.
    Deposed {
        /// The term she reigned in.
        term: u64,
        /// Why.
        reason: DeposedReason,
    },
    /// This node (a worker) obeys a new queen.
    QueenChanged {
        /// Her term.
        term: u64,
        /// The queen.
        queen: NodeId,
    },
    /// This node's queen's lease ran out without renewal.
    QueenLost {
        /// Her term.
        term: u64,
        /// The queen.
        queen: NodeId,
    },
    /// A colony-state version became committed here.
    Committed {
        /// The version.
        version: Version,
    },
    /// The replicas this node must run changed.
    Assigned {
        /// The committed version the assignments come from.
        version: Version,
        /// Every replica this node must run now (not a difference).
        assignments: Vec<Assignment>,
    },
}
