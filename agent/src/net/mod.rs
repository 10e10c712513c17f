//! The node's transport security layer: everything between `dna::Node`'s plain frames and the
//! network. One UDP port carries both sealed gossip and QUIC ([`demux`]); gossip is sealed under
//! the colony keyring ([`gossip`], over `swarm_core::envelope`); the control plane is QUIC with
//! mutual TLS against the colony CA ([`tls`], [`quic`]) carrying a stream lane for large frames
//! and typed control requests ([`control`]). Drops are counted by reason ([`counters`]). The
//! trust model is in `docs/security.md`.

pub mod control;
pub mod counters;
pub mod demux;
pub mod gossip;
pub mod quic;
pub mod tls;

pub use control::{ControlRequest, ControlResponse, ErrorCode};
pub use counters::NetCounters;
pub use demux::DemuxSocket;
pub use gossip::GossipCrypto;
pub use quic::{ControlHandler, InboundFrame, Net, NetChannels, NetConfig, NetError, NoHandler};
