//! The node's public data: what it emits (`Event`), persists (`Persisted`) and sends
//! (`Transmit` on a `Lane`), its `Role`, `AbdicateReason`, the `NotQueen` error and the driver's `Stats`.
//! (`ReplicaRow` lives in `health.rs`, `Move` in `failures.rs`.)

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use swarm_core::wire::{Assignment, ColonyState, MAX_DATAGRAM_FRAME_BYTES, Version};
use swarm_core::{NodeId, Time};

/// How the driver must carry a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// One unreliable datagram (at most [`MAX_DATAGRAM_FRAME_BYTES`] before sealing): gossip,
    /// votes, heartbeats and acks. The protocol tolerates loss, duplication and reordering.
    Datagram,
    /// A reliable, ordered stream to the peer (QUIC in the agent): frames too big for one
    /// datagram, such as colony-state transfers and member lists.
    Stream,
}

/// A frame for the driver to send.
#[derive(Clone, Debug)]
pub struct Transmit {
    pub to: SocketAddr,
    pub payload: Bytes,
    pub lane: Lane,
}

impl Transmit {
    /// A frame on the lane its size requires: a datagram when it fits one, else a stream.
    pub fn new(to: SocketAddr, payload: Bytes) -> Transmit {
        let lane = if payload.len() <= MAX_DATAGRAM_FRAME_BYTES {
            Lane::Datagram
        } else {
            Lane::Stream
        };
        Transmit { to, payload, lane }
    }
}

/// What a node must keep across restarts. The driver writes it durably when polled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub node: NodeId,
    /// Restart count: tags timers and renews the SWIM identity.
    pub incarnation: u32,
    pub term: u64,
    /// The vote given in `term`, if any (at most one vote per term, even across restarts).
    pub voted_for: Option<NodeId>,
    /// Newest colony state accepted.
    pub state: ColonyState,
    /// Newest version known committed.
    pub commit: Version,
    /// Roster of the newest committed version.
    pub committed_roster: std::sync::Arc<[NodeId]>,
    pub restart_penalty: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Role {
    Worker,
    Candidate,
    Queen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AbdicateReason {
    /// No majority of the roster acknowledged her for a whole queen lease.
    LostMajority,
    /// She saw a higher term.
    Superseded,
    /// She handed the crown to a fitter heir.
    Handover,
}

/// Observable happenings, for logs, metrics and the simulator's invariant checker.
/// Times are the node's own clock.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    MemberUp(NodeId),
    MemberDown(NodeId),
    Stood {
        term: u64,
        pre: bool,
    },
    /// `inherited` is the newest state version she held when the colony chose her.
    Crowned {
        term: u64,
        roster: usize,
        inherited: Version,
    },
    /// The queen's own lease now runs until `until`.
    Reigns {
        term: u64,
        until: Time,
    },
    Abdicated {
        term: u64,
        reason: AbdicateReason,
    },
    /// A worker accepted a heartbeat: it obeys `queen` of `term` until `until`.
    Obeyed {
        term: u64,
        queen: NodeId,
        until: Time,
    },
    /// The replicas this node must run changed (from a committed colony state).
    Assigned {
        version: Version,
        assignments: Vec<Assignment>,
    },
    /// The queen published a new plan (not yet committed). `moves` lists the replicas it takes
    /// off their node, and why (a node down, a failure, a re-plan).
    Planned {
        version: Version,
        assigned: usize,
        unplaced: usize,
        moves: Vec<super::Move>,
    },
    /// A worker's lease ran out without renewal.
    QueenLost {
        term: u64,
        queen: NodeId,
    },
    Accepted {
        version: Version,
        digest: u64,
    },
    Committed {
        version: Version,
        digest: u64,
    },
    /// Another queen reigns in `term` (a misconfigured bootstrap, election.md §6): seen by a
    /// queen (`other` is her rival; the smaller of the two abdicates) or by a worker (`other`
    /// is the queen it does not obey).
    SplitBrain {
        term: u64,
        other: NodeId,
    },
    /// The roles with at least one healthy replica somewhere in the colony changed (as the
    /// queen says; sorted). A role whose `depends-on` are all in it may start.
    RoleHealth {
        roles: Vec<String>,
    },
}

/// [`Node::apply_spec`](super::Node::apply_spec) on a node that is not the queen. `queen` is the
/// one it obeys, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this node is not the queen (queen: {queen:?})")]
pub struct NotQueen {
    pub queen: Option<NodeId>,
}

/// Counters a driver may export as metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub packets_in: u64,
    pub packets_rejected: u64,
    pub swim_errors: u64,
    pub packets_out: u64,
    pub dropped_out: u64,
    /// Probes of ours that went unanswered, indirect probes included (each starts a suspicion).
    pub suspicions: u64,
    /// Suspicions of us we were told about and refuted.
    pub refutations: u64,
}
