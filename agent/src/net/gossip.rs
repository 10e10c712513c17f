//! Gossip sealing for the UDP driver: [`GossipCrypto`] seals the node's plain frames under the
//! primary key of the colony keyring and opens what arrives (with anti-replay), counting every
//! refusal by reason. It also owns the keyring file in the data directory (`keyring`, one base64
//! key per line, the primary first, mode 0600, written atomically) and the keyring operations
//! of `aware-agent keys install|use|remove`, which [`KeyringHandler`] serves on the control
//! plane.
//!
//! The session of this process is its boot time in ms, raised above the last session it used
//! (persisted by the driver) so that a restart is always a newer session for the receivers, even
//! if the wall clock went backwards; see `docs/security.md`.

use super::control::{ControlRequest, ControlResponse, ErrorCode};
use super::counters::{NetCounters, bump};
use super::quic::{BoxFuture, ControlHandler};
use crate::files::{read_text_bounded, write_atomic};
use crate::pki::Identity;
use ring::rand::SecureRandom as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use swarm_core::NodeId;
use swarm_core::envelope::{
    self, EnvelopeError, KEY_BYTES, Key, KeyId, Keyring, KeyringError, ReplayGuard,
};

/// The keyring file's name in the data directory.
pub const KEYRING_FILE: &str = "keyring";
/// Largest keyring file accepted.
pub const MAX_KEYRING_FILE_BYTES: usize = 16 * 1024;

/// Errors of the keyring store.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: KeyringError },
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("system RNG failed")]
    Rng,
}

/// A new random gossip key from the OS RNG.
pub fn generate_key() -> Result<Key, KeyStoreError> {
    let mut bytes = [0u8; KEY_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeyStoreError::Rng)?;
    Ok(Key::from_bytes(bytes))
}

/// Reads the keyring file in `dir`; `None` if there is none yet.
pub fn load_keyring(dir: &Path) -> Result<Option<Keyring>, KeyStoreError> {
    let path = dir.join(KEYRING_FILE);
    let text = match read_text_bounded(&path, MAX_KEYRING_FILE_BYTES) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(KeyStoreError::Io { path, source }),
    };
    Keyring::from_text(&text)
        .map(Some)
        .map_err(|source| KeyStoreError::Parse { path, source })
}

/// Writes the keyring file in `dir` atomically, mode 0600.
pub fn save_keyring(dir: &Path, keyring: &Keyring) -> Result<(), KeyStoreError> {
    let path = dir.join(KEYRING_FILE);
    write_atomic(&path, keyring.to_text().as_bytes(), 0o600)
        .map_err(|source| KeyStoreError::Io { path, source })
}

/// The session number for a process that boots at `boot_ms` (wall clock) after having used
/// `last_session` (persisted): never below `last_session + 1`.
pub fn next_session(boot_ms: u64, last_session: Option<u64>) -> u64 {
    match last_session {
        Some(last) => boot_ms.max(last.saturating_add(1)),
        None => boot_ms,
    }
}

/// Seals and opens gossip for one node; shared by the driver's send and receive paths.
pub struct GossipCrypto {
    node: NodeId,
    session: u64,
    counter: AtomicU64,
    keyring: RwLock<Keyring>,
    guard: Mutex<ReplayGuard>,
    counters: Arc<NetCounters>,
    /// Where keyring changes are saved (none in tests that keep it in memory).
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for GossipCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipCrypto")
            .field("node", &self.node)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl GossipCrypto {
    /// `session` must be newer than any session this node used before (see [`next_session`]).
    /// With `dir`, keyring changes are saved there before they take effect.
    pub fn new(
        node: NodeId,
        session: u64,
        keyring: Keyring,
        counters: Arc<NetCounters>,
        dir: Option<PathBuf>,
    ) -> GossipCrypto {
        GossipCrypto {
            node,
            session,
            counter: AtomicU64::new(0),
            keyring: RwLock::new(keyring),
            guard: Mutex::new(ReplayGuard::default()),
            counters,
            dir,
        }
    }

    pub fn session(&self) -> u64 {
        self.session
    }

    fn guard(&self) -> MutexGuard<'_, ReplayGuard> {
        self.guard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the keyring.
    pub fn keyring(&self) -> Keyring {
        self.keyring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Seals a plain frame (at most `envelope::MAX_PLAIN_BYTES`) with the next counter.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let ring = self.keyring.read().unwrap_or_else(|e| e.into_inner());
        envelope::seal(&ring, self.node, self.session, counter, plain)
    }

    /// Opens a sealed datagram: the sender's claimed node id and the plain frame. Refusals are
    /// counted by reason; the datagram is never parsed further.
    pub fn open(&self, datagram: &[u8]) -> Result<(NodeId, Vec<u8>), EnvelopeError> {
        let ring = self.keyring.read().unwrap_or_else(|e| e.into_inner());
        let result = envelope::open_checked(&ring, &mut self.guard(), datagram);
        match result {
            Ok((header, plain)) => {
                bump(&self.counters.envelope_opened);
                Ok((header.sender, plain))
            }
            Err(e) => {
                self.counters.envelope_refused(&e);
                Err(e)
            }
        }
    }

    fn change(
        &self,
        op: impl FnOnce(&mut Keyring) -> Result<(), KeyringError>,
    ) -> Result<Keyring, KeyStoreError> {
        let mut ring = self.keyring.write().unwrap_or_else(|e| e.into_inner());
        let mut next = ring.clone();
        op(&mut next)?;
        if let Some(dir) = &self.dir {
            save_keyring(dir, &next)?; // on disk before it takes effect
        }
        *ring = next.clone();
        Ok(next)
    }

    /// `keys install`: the key opens from now on; it seals once it is `use`d.
    pub fn install(&self, key: Key) -> Result<Keyring, KeyStoreError> {
        self.change(|r| r.install(key).map(|_| ()))
    }

    /// `keys use`: the installed key seals from now on.
    pub fn use_key(&self, id: KeyId) -> Result<Keyring, KeyStoreError> {
        self.change(|r| r.use_key(id))
    }

    /// `keys remove`: the key (not the primary) no longer opens.
    pub fn remove(&self, id: KeyId) -> Result<Keyring, KeyStoreError> {
        self.change(|r| r.remove(id))
    }

    /// Serves the keyring requests of the control plane; `None` for any other request.
    pub fn handle_keyring(&self, request: &ControlRequest) -> Option<ControlResponse> {
        let result = match request {
            ControlRequest::KeyringList => Ok(self.keyring()),
            ControlRequest::KeyringInstall { key } => Key::from_base64(key)
                .map_err(KeyStoreError::from)
                .and_then(|k| self.install(k)),
            ControlRequest::KeyringUse { key_id } => key_id
                .parse::<KeyId>()
                .map_err(KeyStoreError::from)
                .and_then(|id| self.use_key(id)),
            ControlRequest::KeyringRemove { key_id } => key_id
                .parse::<KeyId>()
                .map_err(KeyStoreError::from)
                .and_then(|id| self.remove(id)),
            _ => return None,
        };
        Some(match result {
            Ok(ring) => ControlResponse::Keyring {
                primary: ring.primary_id().to_string(),
                keys: ring.ids().iter().map(ToString::to_string).collect(),
            },
            Err(e) => ControlResponse::error(ErrorCode::Keyring, e.to_string()),
        })
    }
}

/// A [`ControlHandler`] that serves keyring requests from the admin or a node, and delegates
/// everything else to `next`.
pub struct KeyringHandler<H> {
    pub gossip: Arc<GossipCrypto>,
    pub next: H,
}

impl<H: ControlHandler> ControlHandler for KeyringHandler<H> {
    fn handle(&self, peer: Identity, request: ControlRequest) -> BoxFuture<'_, ControlResponse> {
        match self.gossip.handle_keyring(&request) {
            Some(response) => Box::pin(async move { response }),
            None => self.next.handle(peer, request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_changes_are_saved_before_they_take_effect() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_keyring(dir.path()).unwrap().is_none());
        let k1 = generate_key().unwrap();
        let ring = Keyring::new(k1.clone());
        save_keyring(dir.path(), &ring).unwrap();
        let counters = Arc::new(NetCounters::default());
        let g = GossipCrypto::new(NodeId(1), 10, ring, counters, Some(dir.path().into()));
        let k2 = generate_key().unwrap();
        g.install(k2.clone()).unwrap();
        g.use_key(k2.id()).unwrap();
        g.remove(k1.id()).unwrap();
        let saved = load_keyring(dir.path()).unwrap().unwrap();
        assert_eq!(saved.ids(), vec![k2.id()]);
        assert!(g.remove(k2.id()).is_err(), "the primary stays");
        assert_eq!(
            load_keyring(dir.path()).unwrap().unwrap().ids(),
            vec![k2.id()]
        );
        std::fs::write(dir.path().join(KEYRING_FILE), "garbage\n").unwrap();
        let err = load_keyring(dir.path()).unwrap_err().to_string();
        assert!(err.contains("keyring") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn sessions_only_go_forward() {
        assert_eq!(next_session(1000, None), 1000);
        assert_eq!(next_session(1000, Some(500)), 1000);
        assert_eq!(next_session(1000, Some(5000)), 5001, "clock went backwards");
    }

    #[test]
    fn seal_open_between_two_nodes_counts_refusals() {
        let key = generate_key().unwrap();
        let ca = Arc::new(NetCounters::default());
        let cb = Arc::new(NetCounters::default());
        let a = GossipCrypto::new(NodeId(1), 1, Keyring::new(key.clone()), ca, None);
        let b = GossipCrypto::new(NodeId(2), 1, Keyring::new(key), cb.clone(), None);
        let p = a.seal(b"ping").unwrap();
        assert_eq!(b.open(&p).unwrap(), (NodeId(1), b"ping".to_vec()));
        assert!(b.open(&p).is_err());
        assert_eq!(super::super::counters::get(&cb.envelope_replayed), 1);
        assert_eq!(super::super::counters::get(&cb.envelope_opened), 1);
        let resp = b.handle_keyring(&ControlRequest::KeyringUse {
            key_id: "nothex!!".into(),
        });
        assert!(matches!(
            resp,
            Some(ControlResponse::Error {
                code: ErrorCode::Keyring,
                ..
            })
        ));
    }
}
