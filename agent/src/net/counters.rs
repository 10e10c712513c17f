//! Drop and traffic counters of the transport, as plain atomics. Every refused packet, handshake
//! or request is counted here by reason; the driver exports [`NetCounters::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};
use swarm_core::envelope::EnvelopeError;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters of the transport (monotonic, since start).
        #[derive(Debug, Default)]
        pub struct NetCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl NetCounters {
            /// Every counter with its name, in a fixed order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Non-QUIC datagrams handed to the gossip channel.
    gossip_received,
    /// Gossip datagrams dropped because the gossip channel was full.
    gossip_dropped_full,
    /// Datagrams dropped at the socket: empty, or larger than a sealed datagram can be.
    gossip_dropped_malformed,
    /// Gossip datagrams sent.
    gossip_sent,
    /// Sealed datagrams refused by reason (see `EnvelopeError::reason`).
    envelope_too_short,
    envelope_too_large,
    envelope_bad_magic,
    envelope_bad_version,
    envelope_unknown_key,
    envelope_forged,
    envelope_replayed,
    envelope_stale_session,
    /// Gossip datagrams that opened.
    envelope_opened,
    /// QUIC connections that completed the handshake (inbound).
    quic_accepted,
    /// Inbound QUIC handshakes that failed (bad or foreign certificate, wrong ALPN, ...).
    quic_handshake_refused,
    /// Inbound QUIC connections refused because the node serves its limit already.
    quic_refused_capacity,
    /// Connections or requests refused for lack of an authenticated identity.
    quic_unauthenticated,
    /// Outbound connections opened and confirmed.
    quic_dialed,
    /// Outbound dials that failed.
    quic_dial_failed,
    /// Control requests served.
    control_requests,
    /// Control requests that could not be read or decoded.
    control_bad_requests,
    /// Join requests that got a certificate.
    join_signed,
    /// Join or sign requests refused (token, CSR, no signer).
    join_refused,
    /// Stream-lane frames written / received.
    lane_frames_sent,
    lane_frames_received,
    /// Stream-lane frames refused because the peer's queue was full.
    lane_queue_full,
    /// Stream-lane frames given up after the reconnect attempts.
    lane_frames_dropped,
    /// Stream-lane reconnects after a failure.
    lane_reconnects,
    /// Inbound lanes closed for a malformed or oversized frame.
    lane_bad_frames,
}

impl NetCounters {
    /// Counts a refused gossip datagram under its reason.
    pub fn envelope_refused(&self, error: &EnvelopeError) {
        let c = match error {
            EnvelopeError::TooShort { .. } => &self.envelope_too_short,
            EnvelopeError::TooLarge { .. } => &self.envelope_too_large,
            EnvelopeError::BadMagic(_) => &self.envelope_bad_magic,
            EnvelopeError::BadVersion(_) => &self.envelope_bad_version,
            EnvelopeError::UnknownKey(_) => &self.envelope_unknown_key,
            EnvelopeError::Forged => &self.envelope_forged,
            EnvelopeError::Replayed { .. } => &self.envelope_replayed,
            EnvelopeError::StaleSession { .. } => &self.envelope_stale_session,
        };
        bump(c);
    }

    /// Sum of every refused gossip datagram.
    pub fn envelope_refused_total(&self) -> u64 {
        [
            &self.envelope_too_short,
            &self.envelope_too_large,
            &self.envelope_bad_magic,
            &self.envelope_bad_version,
            &self.envelope_unknown_key,
            &self.envelope_forged,
            &self.envelope_replayed,
            &self.envelope_stale_session,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// Adds one.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Reads a counter.
pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
