//! Control-plane messages: one request and one response per QUIC bidirectional stream, each a
//! frame `[CONTROL_VERSION][JSON]` of at most [`MAX_CONTROL_BYTES`]. The enums are
//! `#[non_exhaustive]` and tagged by `type`: new requests (status, apply, ...) are added as new
//! variants, and a peer that does not know one answers [`ErrorCode::Unsupported`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use swarm_core::NodeId;

/// Version byte in front of every control frame.
pub const CONTROL_VERSION: u8 = 1;
/// Largest control request or response.
pub const MAX_CONTROL_BYTES: usize = 1 << 20;

/// A request on the control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ControlRequest {
    /// Liveness and identity: answered with [`ControlResponse::Pong`].
    Ping,
    /// A node without a certificate asks to join: the only request allowed without one.
    Join {
        node: NodeId,
        token: String,
        csr_pem: String,
    },
    /// A node that cannot sign forwards a join to a signer (a node holding the CA key).
    Sign {
        node: NodeId,
        token: String,
        csr_pem: String,
    },
    /// The gossip keyring's key ids, the primary first.
    KeyringList,
    /// Installs a gossip key (base64) that opens but does not seal yet.
    KeyringInstall { key: String },
    /// Makes an installed key (id, 8 hex digits) the one that seals.
    KeyringUse { key_id: String },
    /// Removes an installed key that is not the primary.
    KeyringRemove { key_id: String },
    /// The whole keyring (`keyring` file text: base64 keys, the primary first), for a node that
    /// just joined. Served to certified nodes and the admin only.
    KeyringExport,
    /// An agent request (`status`, `apply`, ...; [`crate::control`]). `forwarded` is set by an
    /// agent passing a spec on to the queen (never forwarded again); `term` is the newest term
    /// the sender knows: a node whose own term is older refuses ([`ErrorCode::StaleTerm`]).
    Agent {
        request: crate::control::ControlRequest,
        #[serde(default)]
        forwarded: bool,
        #[serde(default)]
        term: Option<u64>,
    },
}

impl ControlRequest {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlRequest::Ping => "ping",
            ControlRequest::Join { .. } => "join",
            ControlRequest::Sign { .. } => "sign",
            ControlRequest::KeyringList => "keyring_list",
            ControlRequest::KeyringInstall { .. } => "keyring_install",
            ControlRequest::KeyringUse { .. } => "keyring_use",
            ControlRequest::KeyringRemove { .. } => "keyring_remove",
            ControlRequest::KeyringExport => "keyring_export",
            ControlRequest::Agent { .. } => "agent",
        }
    }
}

/// A response on the control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ControlResponse {
    Pong {
        node: NodeId,
    },
    /// The joiner's signed certificate and the colony CA certificate (PEM).
    Joined {
        cert_pem: String,
        ca_pem: String,
    },
    /// Key ids (8 hex digits), the primary first.
    Keyring {
        primary: String,
        keys: Vec<String>,
    },
    /// Answer to [`ControlRequest::KeyringExport`].
    KeyringText {
        text: String,
    },
    /// Answer to [`ControlRequest::Agent`].
    Agent {
        response: crate::control::ControlResponse,
    },
    Done,
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl ControlResponse {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ControlResponse {
        ControlResponse::Error {
            code,
            message: message.into(),
        }
    }
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request could not be read or decoded.
    BadRequest,
    /// The peer's identity may not make this request.
    Unauthorized,
    /// The server does not know this request.
    Unsupported,
    /// The join token was refused.
    TokenRefused,
    /// The CSR was refused.
    CsrRefused,
    /// No signer could be reached to sign a join.
    NoSigner,
    /// A keyring operation failed.
    Keyring,
    /// The receiver's term is older than the sender's: it is fenced off (a stale queen).
    StaleTerm,
    /// Anything else on the server's side.
    Internal,
}

/// Errors of control framing.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control frame of {len} bytes exceeds {MAX_CONTROL_BYTES}")]
    TooLarge { len: usize },
    #[error("empty control frame")]
    Empty,
    #[error("control frame version {0} is not supported (this node speaks {CONTROL_VERSION})")]
    BadVersion(u8),
    #[error("control frame: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes a control message as a frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ControlError> {
    let mut out = vec![CONTROL_VERSION];
    serde_json::to_writer(&mut out, msg)?;
    if out.len() > MAX_CONTROL_BYTES {
        return Err(ControlError::TooLarge { len: out.len() });
    }
    Ok(out)
}

/// Decodes a frame [`encode`] wrote.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, ControlError> {
    if frame.len() > MAX_CONTROL_BYTES {
        return Err(ControlError::TooLarge { len: frame.len() });
    }
    let (&version, body) = frame.split_first().ok_or(ControlError::Empty)?;
    if version != CONTROL_VERSION {
        return Err(ControlError::BadVersion(version));
    }
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_hostile_frames_are_refused() {
        let req = ControlRequest::Join {
            node: NodeId(u64::MAX - 1),
            token: "t".into(),
            csr_pem: "c".into(),
        };
        let frame = encode(&req).unwrap();
        assert_eq!(decode::<ControlRequest>(&frame).unwrap(), req);
        assert!(matches!(
            decode::<ControlRequest>(&[]),
            Err(ControlError::Empty)
        ));
        let mut v2 = frame.clone();
        v2[0] = 2;
        assert!(matches!(
            decode::<ControlRequest>(&v2),
            Err(ControlError::BadVersion(2))
        ));
        let unknown = [&[CONTROL_VERSION][..], br#"{"type":"teleport"}"#].concat();
        assert!(matches!(
            decode::<ControlRequest>(&unknown),
            Err(ControlError::Json(_))
        ));
        let huge = vec![CONTROL_VERSION; MAX_CONTROL_BYTES + 1];
        assert!(matches!(
            decode::<ControlRequest>(&huge),
            Err(ControlError::TooLarge { .. })
        ));
        let resp = ControlResponse::error(ErrorCode::NoSigner, "none");
        assert_eq!(
            decode::<ControlResponse>(&encode(&resp).unwrap()).unwrap(),
            resp
        );
    }
}
