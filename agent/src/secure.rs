//! The driver's transport: [`SecureTransport`] puts the node's frames on the wire through
//! [`crate::net`]. A datagram frame is sealed under the colony keyring ([`GossipCrypto`]) and
//! sent from the node's one UDP port; a stream frame (too big for one datagram) goes on the
//! peer's mutual-TLS QUIC stream lane on the same port. One receive task opens what arrives and
//! hands the plain frames to the driver's bounded queue:
//!
//! - a gossip datagram that does not open (forged, replayed, unknown key, truncated, ...) is
//!   dropped and counted by [`GossipCrypto::open`], never parsed;
//! - a frame whose header names another sender than the one that sealed it (gossip) or than the
//!   certified peer (stream lane) is dropped and counted (`forged_sender`).

use crate::net::counters::get;
use crate::net::{GossipCrypto, Net, NetChannels};
use crate::transport::{INBOUND_QUEUE, Inbound, Transport, TransportStats};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use swarm_core::NodeId;
use swarm_core::envelope::MAX_PLAIN_BYTES;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, Default)]
struct Counters {
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    dropped_in: AtomicU64,
    dropped_out: AtomicU64,
    oversize: AtomicU64,
    forged_sender: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The sender id in a plain frame's header (`[magic][version][channel][sender u64 LE]`).
fn frame_sender(frame: &[u8]) -> Option<NodeId> {
    let id: [u8; 8] = frame.get(3..11)?.try_into().ok()?;
    Some(NodeId(u64::from_le_bytes(id)))
}

/// Sealed datagrams and QUIC stream frames on the node's one UDP port.
pub struct SecureTransport {
    net: Net,
    gossip: Arc<GossipCrypto>,
    local: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SecureTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureTransport")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl SecureTransport {
    /// Wraps a bound [`Net`] and its channels; frames for the driver arrive on the returned
    /// queue of [`INBOUND_QUEUE`]. Must run inside a tokio runtime.
    pub fn new(
        net: Net,
        channels: NetChannels,
        gossip: Arc<GossipCrypto>,
    ) -> std::io::Result<(SecureTransport, mpsc::Receiver<Inbound>)> {
        let local = net.local_addr()?;
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let task = tokio::spawn(receive(channels, gossip.clone(), tx, counters.clone()));
        Ok((
            SecureTransport {
                net,
                gossip,
                local,
                counters,
                task,
            },
            rx,
        ))
    }

    /// The QUIC side (control requests, counters).
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// The gossip sealing (keyring operations).
    pub fn gossip(&self) -> &Arc<GossipCrypto> {
        &self.gossip
    }
}

fn deliver(tx: &mpsc::Sender<Inbound>, counters: &Counters, inbound: Inbound) -> bool {
    match tx.try_send(inbound) {
        Ok(()) => {
            bump(&counters.frames_in);
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            bump(&counters.dropped_in);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

async fn receive(
    mut channels: NetChannels,
    gossip: Arc<GossipCrypto>,
    tx: mpsc::Sender<Inbound>,
    counters: Arc<Counters>,
) {
    loop {
        let open = tokio::select! {
            g = channels.gossip.recv() => match g {
                None => return,
                Some((from, sealed)) => match gossip.open(&sealed) {
                    // Counted by reason inside `open`; never parsed.
                    Err(_) => true,
                    Ok((sender, plain)) if frame_sender(&plain) == Some(sender) => {
                        deliver(&tx, &counters, Inbound { from, frame: Bytes::from(plain) })
                    }
                    Ok(_) => {
                        bump(&counters.forged_sender);
                        true
                    }
                },
            },
            f = channels.frames.recv() => match f {
                None => return,
                Some(f) if frame_sender(&f.frame) == Some(f.peer) => {
                    deliver(&tx, &counters, Inbound { from: f.from, frame: f.frame })
                }
                Some(_) => {
                    bump(&counters.forged_sender);
                    true
                }
            },
        };
        if !open {
            return;
        }
    }
}

impl Transport for SecureTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn send_datagram(&self, to: SocketAddr, frame: Bytes) {
        if frame.len() > MAX_PLAIN_BYTES {
            // Too big to seal into one datagram: the stream lane carries it.
            self.send_stream(to, frame);
            return;
        }
        let sealed = match self.gossip.seal(&frame) {
            Ok(s) => s,
            Err(e) => {
                bump(&self.counters.oversize);
                tracing::debug!(error = %e, "frame not sealed");
                return;
            }
        };
        match self.net.socket().try_send_gossip(to, &sealed) {
            Ok(()) => bump(&self.counters.frames_out),
            Err(e) => {
                bump(&self.counters.dropped_out);
                tracing::trace!(%to, error = %e, "datagram not sent");
            }
        }
    }

    fn send_stream(&self, to: SocketAddr, frame: Bytes) {
        match self.net.send_frame(to, frame) {
            Ok(()) => bump(&self.counters.frames_out),
            Err(crate::net::NetError::FrameTooLarge { .. }) => bump(&self.counters.oversize),
            Err(e) => {
                bump(&self.counters.dropped_out);
                tracing::debug!(%to, error = %e, "stream frame not queued");
            }
        }
    }

    fn stats(&self) -> TransportStats {
        let c = &self.counters;
        let n = self.net.counters();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransportStats {
            frames_in: load(&c.frames_in),
            frames_out: load(&c.frames_out),
            dropped_in: load(&c.dropped_in) + get(&n.gossip_dropped_full),
            dropped_out: load(&c.dropped_out) + get(&n.lane_frames_dropped),
            oversize: load(&c.oversize),
            refused_gossip: n.envelope_refused_total()
                + get(&n.gossip_dropped_malformed)
                + load(&c.forged_sender),
            refused_quic: get(&n.quic_handshake_refused)
                + get(&n.quic_unauthenticated)
                + get(&n.control_bad_requests)
                + get(&n.join_refused)
                + get(&n.lane_bad_frames),
        }
    }

    fn close(&self) {
        self.task.abort();
        self.net.close();
    }
}

impl Drop for SecureTransport {
    fn drop(&mut self) {
        self.task.abort();
    }
}
