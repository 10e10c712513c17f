//! Versioned wire messages and their codec.
//!
//! Every frame is `[MAGIC][WIRE_VERSION][channel][sender NodeId, 8 bytes LE][body]`.
//! The `Swim` channel carries foca's own bytes; the `Colony` channel carries a bincode-encoded
//! [`ColonyMsg`]. Decoding treats every byte as hostile: size limit first, then magic, version,
//! and a bincode decode bounded by the same limit that must consume the body exactly.
//!
//! Frames are *plain*: authentication and encryption belong to the transport that carries
//! them (the agent seals every datagram with the colony keyring (`swarm_core::envelope`), and
//! carries stream frames inside mutual-TLS QUIC; the simulator's in-process network is
//! trusted). A frame that must cross a real network as one UDP datagram is at most
//! [`MAX_DATAGRAM_FRAME_BYTES`], so that it still fits [`MAX_DATAGRAM_BYTES`] once sealed;
//! anything larger travels on a reliable stream (up to [`MAX_STREAM_BYTES`]).

use crate::NodeId;
use crate::spec::{ColonySpec, Failure, HeldNode, MAX_DETAIL_BYTES, NodeRecord, Unplaced};
use crate::swim::{Scent, SwimId};
use serde::{Deserialize, Serialize};

pub const MAGIC: u8 = 0xA7;
/// 2: frames are no longer sealed by the node (the transport seals them).
/// 3: replica reports and colony-wide health (`ReplicaStatus`, `AskReplicas`, `RoleHealth`,
/// two digests in `HeartbeatAck`), failures and held nodes in `ColonyState`, `Yield`.
pub const WIRE_VERSION: u8 = 3;
/// Header bytes before the body: magic, version, channel, sender id.
pub const HEADER_BYTES: usize = 3 + 8;
/// Largest UDP datagram on the wire, sealed: below every LAN path MTU (1,500 bytes less IP
/// and UDP headers), so no datagram is ever fragmented. The simulator drops larger ones.
pub const MAX_DATAGRAM_BYTES: usize = 1400;
/// Room a transport may use to seal a datagram frame (header, nonce, tag).
pub const SEAL_RESERVE_BYTES: usize = 64;
/// Largest plain frame a node sends as one datagram; larger frames go on a stream.
pub const MAX_DATAGRAM_FRAME_BYTES: usize = MAX_DATAGRAM_BYTES - SEAL_RESERVE_BYTES;
/// Largest message a node accepts on a reliable stream (colony-state transfer).
pub const MAX_STREAM_BYTES: usize = 16 * 1024 * 1024;

const CHANNEL_SWIM: u8 = 1;
const CHANNEL_COLONY: u8 = 2;

/// A pheromone level in parts per million (1_000_000 = the strongest possible scent).
/// Fixed-point so that comparisons are exact and identical on every platform.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Pheromone(pub u32);

impl Pheromone {
    pub const MAX: Pheromone = Pheromone(1_000_000);

    pub fn from_f64(level: f64) -> Pheromone {
        if level.is_nan() || level <= 0.0 {
            Pheromone(0)
        } else {
            Pheromone((level.min(1.0) * 1e6).round() as u32)
        }
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.0.min(Self::MAX.0)) / 1e6
    }
}

/// The version of a colony-state document: the term of the queen that wrote it, then a sequence
/// number within that term. Ordered lexicographically.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    pub term: u64,
    pub seq: u64,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.term, self.seq)
    }
}

/// One replica of a role placed on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub role: String,
    pub replica: u32,
    pub node: NodeId,
    /// Placed with the role's fallback needs (e.g. CPU instead of GPU).
    pub fallback: bool,
    /// The node's GPUs reserved for this replica, by index (`0..caps.gpus`), ascending; as many
    /// as the placed needs ask for, empty when none. No two replicas on a node share one, and a
    /// replica keeps its indices across re-plans while it stays. A runtime hands exactly these
    /// to the workload (device requests, `CUDA_VISIBLE_DEVICES`).
    pub gpus: Vec<u16>,
}

impl ColonyState {
    /// A digest of the whole document, to check that equal versions hold equal content.
    pub fn digest(&self) -> u64 {
        let bytes =
            bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default();
        let hash = blake3::hash(&bytes);
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    /// Structural checks on a document received from the wire.
    pub fn is_well_formed(&self) -> bool {
        self.roster.windows(2).all(|w| w[0] < w[1])
            && self.nodes.windows(2).all(|w| w[0].node < w[1].node)
            && self
                .failures
                .windows(2)
                .all(|w| (&w[0].role, w[0].replica) < (&w[1].role, w[1].replica))
            && self.failures.iter().all(|f| {
                f.nodes.len() <= crate::spec::MAX_FAILED_NODES && f.detail.len() <= MAX_DETAIL_BYTES
            })
            && self.held.windows(2).all(|w| w[0].node < w[1].node)
    }
}

/// The colony-state document the queen replicates. A version is committed once a majority of the
/// roster has acknowledged it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColonyState {
    pub version: Version,
    /// The voting membership: majorities are counted over this list. Sorted, no duplicates.
    /// Shared (`Arc`): a node's state, its committed roster and what it persisted are one list.
    pub roster: std::sync::Arc<[NodeId]>,
    /// Bumped each time an operator applies a spec; 0 = no spec yet.
    pub spec_version: u64,
    /// The spec the assignments were planned from.
    pub spec: Option<ColonySpec>,
    /// The nodes the plan was computed over (live, registered), sorted by id. Empty without a
    /// spec. `dna::plan::plan(spec, nodes, previous assignments)` reproduces `assignments`.
    pub nodes: Vec<NodeRecord>,
    /// Sorted by (role, replica).
    pub assignments: Vec<Assignment>,
    /// Replicas the plan could not place, with the reason.
    pub unplaced: Vec<Unplaced>,
    /// Replicas that failed, and the nodes the plan keeps them off. Sorted by (role, replica).
    pub failures: Vec<Failure>,
    /// Down nodes that stay in `nodes` while stateful replicas wait for them. Sorted by node.
    pub held: Vec<HeldNode>,
}

/// What a worker's runtime last said about one of its replicas.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum ReplicaState {
    /// Not started yet: waiting for the roles it depends on, or for its restart delay.
    Waiting,
    /// Being pulled, created or started (or running, its health check not passed yet).
    #[default]
    Starting,
    /// Running; no health check says more (or it has none).
    Running,
    /// Running and its health check passes.
    Healthy,
    /// Running but its health check fails.
    Unhealthy,
    /// Its restart policy gave up: it will not run on this node again by itself. The queen
    /// moves it elsewhere.
    Failed,
    /// Stopped on purpose.
    Stopped,
}

/// One replica's state, as a worker reports it to the queen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub role: String,
    pub replica: u32,
    pub state: ReplicaState,
    /// Restarts so far on this node.
    pub restarts: u32,
    /// A short explanation (exit code, probe output), at most [`MAX_DETAIL_BYTES`].
    pub detail: String,
}

/// Most replica reports one [`ColonyMsg::ReplicaStatus`] carries (a node runs at most this many).
pub const MAX_REPORTS: usize = 1024;
/// Most role names one [`ColonyMsg::RoleHealth`] carries.
pub const MAX_HEALTHY_ROLES: usize = 4096;

/// A digest of a worker's whole report table (sorted by role and replica), carried in every
/// heartbeat ack so the queen notices what she lacks. 0 for an empty table, never 0 otherwise.
pub fn reports_digest(reports: &[ReplicaReport]) -> u32 {
    if reports.is_empty() {
        return 0;
    }
    digest32(
        &bincode::serde::encode_to_vec(reports, bincode::config::standard()).unwrap_or_default(),
    )
}

/// A digest of a list of role names (sorted): 0 for none, never 0 otherwise.
pub fn roles_digest(roles: &[String]) -> u32 {
    if roles.is_empty() {
        return 0;
    }
    digest32(&bincode::serde::encode_to_vec(roles, bincode::config::standard()).unwrap_or_default())
}

fn digest32(bytes: &[u8]) -> u32 {
    let hash = blake3::hash(bytes);
    let mut first = [0u8; 4];
    first.copy_from_slice(&hash.as_bytes()[..4]);
    u32::from_le_bytes(first).max(1)
}

/// A likely successor, as ranked by the queen: up to date and fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heir {
    pub node: NodeId,
    pub pheromone: Pheromone,
}

/// Election, reign and replication messages (sent point to point, never gossiped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColonyMsg {
    /// "Would you vote for me in `term`?" Does not change anyone's term (pre-vote).
    PreVote {
        term: u64,
        version: Version,
        pheromone: Pheromone,
    },
    /// `queen` is set when the voter refused because it obeys a live queen: the candidate then
    /// stops standing and makes itself known to her instead.
    PreVoteReply {
        term: u64,
        granted: bool,
        queen: Option<SwimId>,
    },
    /// A real ballot for `term`. `handover` is set when the reigning queen asked this candidate to
    /// take over, which lets voters ignore the still-valid lease of that queen.
    RequestVote {
        term: u64,
        version: Version,
        pheromone: Pheromone,
        handover: bool,
    },
    VoteReply {
        term: u64,
        granted: bool,
    },
    /// The queen's lease renewal. `latest` is the newest state version, `commit` the newest
    /// committed one; `heirs` ranks the fittest up-to-date workers for succession.
    Heartbeat {
        term: u64,
        seq: u64,
        lease_ms: u32,
        latest: Version,
        commit: Version,
        heirs: Vec<Heir>,
    },
    /// A worker's answer: the newest version it holds. `term` is the worker's own term; a higher
    /// one tells the queen that she has been superseded.
    ///
    /// `caps` is a digest of the worker's capabilities ([`crate::Capabilities::digest`]): when
    /// it differs from what the queen has registered, she asks with [`ColonyMsg::Describe`].
    ///
    /// `replicas` is a digest of the worker's replica reports ([`reports_digest`]): when it
    /// differs from the table the queen holds for it she asks with [`ColonyMsg::AskReplicas`].
    /// `health` is a digest of the healthy roles the worker knows ([`roles_digest`]): when it
    /// differs from hers she sends [`ColonyMsg::RoleHealth`].
    HeartbeatAck {
        term: u64,
        seq: u64,
        accepted: Version,
        caps: u32,
        replicas: u32,
        health: u32,
    },
    /// The queen asks a worker for its capabilities (it is new to her, or they changed).
    Describe {
        term: u64,
    },
    /// A worker's capabilities, in answer to [`ColonyMsg::Describe`].
    Register {
        term: u64,
        caps: crate::Capabilities,
    },
    /// The full colony-state document, with the queen's commit point.
    State {
        term: u64,
        state: ColonyState,
        commit: Version,
    },
    /// The queen asks a fitter, up-to-date worker to stand now.
    HandOver {
        term: u64,
    },
    /// A queen of `term` found another queen of the same term (a split brain after a
    /// misconfigured bootstrap) and yields to her: she has abdicated; her workers wait for `to`
    /// instead of electing, and `to` re-crowns herself in the next term.
    Yield {
        term: u64,
        to: NodeId,
    },
    /// A worker's replica reports (its whole table, at most [`MAX_REPORTS`]), sent to the queen
    /// when it changed or when she asks. `version` is the newest state the worker committed.
    ReplicaStatus {
        term: u64,
        version: Version,
        replicas: Vec<ReplicaReport>,
    },
    /// The queen asks a worker for its replica reports (her table differs from its digest).
    AskReplicas {
        term: u64,
    },
    /// The roles with at least one healthy replica somewhere in the colony, sorted (at most
    /// [`MAX_HEALTHY_ROLES`]). Sent by the queen to everyone when it changes, and to a worker
    /// whose ack shows another digest.
    RoleHealth {
        term: u64,
        roles: Vec<String>,
    },
    /// A joining node asks a seed for the whole member list at once (join-time state exchange).
    ///
    /// `digest` summarises the asker's member list and scents (0 = send everything): the
    /// answer is skipped when the two views already agree, so steady-state anti-entropy costs
    /// two small datagrams.
    /// `scent` is the asker's own: it pushes its scent while it pulls everyone else's.
    JoinRequest {
        digest: u64,
        scent: Option<Scent>,
    },
    /// A chunk of the sender's live members and the scents it holds for them, in answer to a
    /// [`ColonyMsg::JoinRequest`] (join-time exchange and periodic anti-entropy).
    Members {
        members: Vec<SwimId>,
        scents: Vec<Scent>,
    },
    /// SWIM news sent straight to the node it matters to instead of waiting for gossip:
    /// `down: false` goes to a member its sender suspects (`incarnation` is the suspected
    /// one), so that it refutes at once (Lifeguard's "buddy system"); `down: true` goes from
    /// the node whose suspicion timer declared `member` dead to every live member.
    Rumour {
        member: SwimId,
        incarnation: u16,
        down: bool,
    },
}

/// Most members sent in one [`ColonyMsg::Members`] message (larger than a datagram: it travels
/// on a stream).
pub const MEMBERS_PER_PACKET: usize = 512;

/// What a packet carries.
// Transient (one per decoded packet, moved straight into its handler): boxing the colony
// message would cost an allocation per packet to save stack space nobody keeps.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Body<'a> {
    Swim(&'a [u8]),
    Colony(ColonyMsg),
}

/// A packet that passed every check.
#[derive(Debug, PartialEq)]
pub struct Decoded<'a> {
    pub from: NodeId,
    pub body: Body<'a>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("packet of {len} bytes exceeds the limit of {limit}")]
    TooBig { len: usize, limit: usize },
    #[error("packet of {0} bytes is too short")]
    TooShort(usize),
    #[error("bad magic byte {0:#04x}")]
    BadMagic(u8),
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown channel {0}")]
    UnknownChannel(u8),
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("body has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("encode failed: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_STREAM_BYTES>()
}

fn header(channel: u8, from: NodeId, capacity: usize) -> Vec<u8> {
    let mut packet = Vec::with_capacity(HEADER_BYTES + capacity);
    packet.extend_from_slice(&[MAGIC, WIRE_VERSION, channel]);
    packet.extend_from_slice(&from.0.to_le_bytes());
    packet
}

/// Wraps foca's bytes in a frame.
pub fn encode_swim(from: NodeId, swim: &[u8]) -> Vec<u8> {
    let mut packet = header(CHANNEL_SWIM, from, swim.len());
    packet.extend_from_slice(swim);
    packet
}

/// Encodes a colony message as a frame.
pub fn encode_colony(from: NodeId, msg: &ColonyMsg) -> Result<Vec<u8>, WireError> {
    let mut packet = header(CHANNEL_COLONY, from, 64);
    bincode::serde::encode_into_std_write(msg, &mut packet, config())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    Ok(packet)
}

/// Checks and decodes a frame of at most `limit` bytes.
pub fn decode(packet: &[u8], limit: usize) -> Result<Decoded<'_>, WireError> {
    if packet.len() > limit {
        return Err(WireError::TooBig {
            len: packet.len(),
            limit,
        });
    }
    if packet.len() < HEADER_BYTES {
        return Err(WireError::TooShort(packet.len()));
    }
    if packet[0] != MAGIC {
        return Err(WireError::BadMagic(packet[0]));
    }
    if packet[1] != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion(packet[1]));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&packet[3..HEADER_BYTES]);
    let from = NodeId(u64::from_le_bytes(id));
    let body = &packet[HEADER_BYTES..];
    let body = match packet[2] {
        CHANNEL_SWIM => Body::Swim(body),
        CHANNEL_COLONY => {
            let (msg, used): (ColonyMsg, usize) = bincode::serde::decode_from_slice(body, config())
                .map_err(|e| WireError::Malformed(e.to_string()))?;
            if used != body.len() {
                return Err(WireError::TrailingBytes(body.len() - used));
            }
            Body::Colony(msg)
        }
        other => return Err(WireError::UnknownChannel(other)),
    };
    Ok(Decoded { from, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ColonyMsg {
        ColonyMsg::Heartbeat {
            term: 7,
            seq: 3,
            lease_ms: 1000,
            latest: Version { term: 7, seq: 2 },
            commit: Version { term: 7, seq: 1 },
            heirs: vec![Heir {
                node: NodeId(9),
                pheromone: Pheromone(500_000),
            }],
        }
    }

    #[test]
    fn colony_round_trip() {
        let bytes = encode_colony(NodeId(42), &sample()).unwrap();
        let decoded = decode(&bytes, MAX_DATAGRAM_FRAME_BYTES).unwrap();
        assert_eq!(decoded.from, NodeId(42));
        assert_eq!(decoded.body, Body::Colony(sample()));
    }

    #[test]
    fn swim_round_trip() {
        let bytes = encode_swim(NodeId(1), b"foca");
        assert_eq!(decode(&bytes, 100).unwrap().body, Body::Swim(b"foca"));
    }

    #[test]
    fn rejects_what_it_must() {
        let good = encode_colony(NodeId(42), &sample()).unwrap();
        assert!(matches!(decode(&good, 10), Err(WireError::TooBig { .. })));
        assert_eq!(decode(&good[..5], 1000), Err(WireError::TooShort(5)));
        let mut bad = good.clone();
        bad[0] = 0;
        assert_eq!(decode(&bad, 1000), Err(WireError::BadMagic(0)));
        let mut bad = good.clone();
        bad[1] = 99;
        assert_eq!(decode(&bad, 1000), Err(WireError::UnsupportedVersion(99)));
        let mut bad = good.clone();
        bad[2] = 9;
        assert_eq!(decode(&bad, 1000), Err(WireError::UnknownChannel(9)));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode(&long, 1000), Err(WireError::TrailingBytes(1)));
    }

    /// Hostile bodies (as from a compromised key holder, once the transport opened them) must
    /// never panic.
    #[test]
    fn hostile_bodies_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..400usize {
            let mut body = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                body.push(state as u8);
            }
            let mut packet = vec![MAGIC, WIRE_VERSION, CHANNEL_COLONY];
            packet.extend_from_slice(&7u64.to_le_bytes());
            packet.extend_from_slice(&body);
            let _ = decode(&packet, MAX_STREAM_BYTES);
        }
        // A length prefix claiming a huge vector must be refused by the limit, not allocated.
        let mut packet = vec![MAGIC, WIRE_VERSION, CHANNEL_COLONY];
        packet.extend_from_slice(&7u64.to_le_bytes());
        packet.extend_from_slice(&[6, 1, 1, 0, 0, 0, 252, 0xff, 0xff, 0xff, 0x7f]);
        assert!(decode(&packet, MAX_STREAM_BYTES).is_err());
    }
}
