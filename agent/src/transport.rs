//! The seam between the driver and the network: the driver hands frames to a [`Transport`] and
//! reads what arrives from a bounded channel of [`Inbound`] frames. The implementation is
//! [`crate::secure::SecureTransport`]: sealed datagrams and mutual-TLS QUIC streams on one
//! UDP port.

use bytes::Bytes;
use std::net::SocketAddr;

/// Frames received and not yet taken by the driver; beyond it new frames are dropped (and
/// counted), exactly as a full socket buffer would drop them.
pub const INBOUND_QUEUE: usize = 4096;

/// One frame from a peer.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// The sender's address.
    pub from: SocketAddr,
    /// The frame as received.
    pub frame: Bytes,
}

/// Counters a transport keeps (exported by `status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportStats {
    /// Frames received.
    pub frames_in: u64,
    /// Frames handed to the network.
    pub frames_out: u64,
    /// Received but dropped: the inbound queue was full.
    pub dropped_in: u64,
    /// Not sent: the socket refused or was busy (UDP semantics: the protocol tolerates loss).
    pub dropped_out: u64,
    /// Not sent: too large for the lane that carried it.
    pub oversize: u64,
    /// Gossip datagrams refused unread: did not open (forged, replayed, unknown key,
    /// truncated, ...) or named another sender than the one that sealed them.
    #[serde(default)]
    pub refused_gossip: u64,
    /// QUIC handshakes, connections and requests refused (foreign or missing certificate,
    /// bad request, refused join, malformed lane frame).
    #[serde(default)]
    pub refused_quic: u64,
}

/// Sends frames to peers. Sending never blocks the driver: a frame that cannot go now is
/// dropped and counted, and the protocol's retries cover it.
pub trait Transport: Send + Sync {
    /// The address the transport is bound to.
    fn local_addr(&self) -> SocketAddr;
    /// A frame that fits one datagram (gossip, election, heartbeats).
    fn send_datagram(&self, to: SocketAddr, frame: Bytes);
    /// A frame that needs a reliable ordered stream (a colony-state transfer).
    fn send_stream(&self, to: SocketAddr, frame: Bytes);
    /// The counters so far.
    fn stats(&self) -> TransportStats;
    /// Stops receiving and closes the sockets. Idempotent.
    fn close(&self);
}
