//! The gossip envelope: authenticated encryption of every UDP datagram under the colony keyring,
//! and the anti-replay window a receiver keeps per sender. Pure: no clock, no RNG, no I/O. The
//! agent's UDP driver seals the plain frames `dna::Node` emits and opens what arrives; the
//! simulator's in-process network is trusted and carries plain frames.
//!
//! Layout of a sealed datagram (everything before the ciphertext is associated data):
//!
//! ```text
//! [0x8A magic][version 1][key id 4][sender NodeId 8 LE][session 8 LE][counter 8 LE][ciphertext][tag 16]
//! ```
//!
//! The AEAD is XChaCha20-Poly1305. Its 24-byte nonce is `sender ‖ session ‖ counter`, so a nonce
//! is unique under a key as long as every sender keeps `(session, counter)` strictly increasing
//! (the agent: `session` = boot time in ms, never below the last one it used; `counter` counts
//! datagrams within the session). The magic byte has bit 0x40 clear: QUIC v1 packets (with
//! greasing off) always have it set, which is how one UDP port carries both.
//!
//! What a successful open proves: the sender holds a key of the colony keyring. It does NOT prove
//! the sender is the `NodeId` in the header: any key holder can write any id there.

use crate::NodeId;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use std::collections::BTreeMap;
use std::fmt;

/// First byte of every sealed datagram. Bit 0x40 (QUIC's fixed bit) is clear.
pub const MAGIC: u8 = 0x8A;
/// Envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;
/// Bytes in a colony key.
pub const KEY_BYTES: usize = 32;
/// Bytes of key id carried in the clear.
pub const KEY_ID_BYTES: usize = 4;
/// Header bytes: magic, version, key id, sender, session, counter.
pub const HEADER_BYTES: usize = 1 + 1 + KEY_ID_BYTES + 8 + 8 + 8;
/// Bytes of Poly1305 tag after the ciphertext.
pub const TAG_BYTES: usize = 16;
/// What sealing adds to a plain frame.
pub const SEAL_OVERHEAD_BYTES: usize = HEADER_BYTES + TAG_BYTES;
/// Largest sealed datagram on the wire (the wire codec's limit, re-exported here).
pub use crate::wire::MAX_DATAGRAM_BYTES;
// A plain frame the node sends as one datagram always fits once sealed.
const _: () = assert!(SEAL_OVERHEAD_BYTES <= crate::wire::SEAL_RESERVE_BYTES);
/// Largest plain frame that can be sealed.
pub const MAX_PLAIN_BYTES: usize = MAX_DATAGRAM_BYTES - SEAL_OVERHEAD_BYTES;
/// Most keys a keyring holds (one primary plus keys being rotated in or out).
pub const MAX_KEYS: usize = 8;
/// Most senders a [`ReplayGuard`] tracks; the one heard from least recently is forgotten first.
pub const MAX_PEERS: usize = 16_384;
/// 64-bit blocks of the replay bitmap. One block is the one being filled, so the window is
/// `(REPLAY_BLOCKS - 1) * 64` counters.
const REPLAY_BLOCKS: usize = 17;
/// Counters behind the newest one that are still accepted (once each).
pub const REPLAY_WINDOW: u64 = (REPLAY_BLOCKS as u64 - 1) * 64;

const KEY_ID_CONTEXT: &str = "aware gossip key id v1";

/// Why a datagram was refused. The agent counts drops by [`EnvelopeError::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("datagram of {len} bytes is shorter than the {SEAL_OVERHEAD_BYTES}-byte envelope")]
    TooShort { len: usize },
    #[error("datagram of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("first byte {0:#04x} is not the envelope magic {MAGIC:#04x}")]
    BadMagic(u8),
    #[error("envelope version {0} is not supported (this node speaks {ENVELOPE_VERSION})")]
    BadVersion(u8),
    #[error("no installed key has id {0}")]
    UnknownKey(KeyId),
    #[error("authentication tag does not verify (forged or corrupted datagram)")]
    Forged,
    #[error("counter {counter} of sender {sender} was already seen or is out of the replay window")]
    Replayed { sender: NodeId, counter: u64 },
    #[error("session {session} of sender {sender} is older than its newest session {newest}")]
    StaleSession {
        sender: NodeId,
        session: u64,
        newest: u64,
    },
}

impl EnvelopeError {
    /// A short, stable label for counting drops by reason.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::TooShort { .. } => "too_short",
            EnvelopeError::TooLarge { .. } => "too_large",
            EnvelopeError::BadMagic(_) => "bad_magic",
            EnvelopeError::BadVersion(_) => "bad_version",
            EnvelopeError::UnknownKey(_) => "unknown_key",
            EnvelopeError::Forged => "forged",
            EnvelopeError::Replayed { .. } => "replayed",
            EnvelopeError::StaleSession { .. } => "stale_session",
        }
    }
}

/// Errors of keyring operations and key parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("key is not valid base64: {0}")]
    Base64(String),
    #[error("key is {0} bytes, expected {KEY_BYTES}")]
    KeyLength(usize),
    #[error("key id {0:?} is not 8 hex digits")]
    BadKeyId(String),
    #[error("the keyring already holds {MAX_KEYS} keys: remove one first")]
    Full,
    #[error("no installed key has id {0}")]
    NotInstalled(KeyId),
    #[error("key {0} is the primary key: make another key primary before removing it")]
    IsPrimary(KeyId),
    #[error("a different key with the same id {0} is already installed")]
    IdClash(KeyId),
    #[error("keyring text has no keys")]
    Empty,
    #[error("keyring text line {line}: {error}")]
    Line {
        line: usize,
        error: Box<KeyringError>,
    },
}

/// The 4-byte id of a key, carried in the clear so a receiver picks the key directly.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; KEY_ID_BYTES]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl std::str::FromStr for KeyId {
    type Err = KeyringError;
    /// Parses the 8 hex digits [`KeyId`]'s `Display` writes.
    fn from_str(s: &str) -> Result<KeyId, KeyringError> {
        let bad = || KeyringError::BadKeyId(s.to_string());
        if s.len() != 2 * KEY_ID_BYTES || !s.is_ascii() {
            return Err(bad());
        }
        let mut id = [0u8; KEY_ID_BYTES];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(KeyId(id))
    }
}

/// A 32-byte colony gossip key. Generated by the agent from the OS RNG; shown as base64.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_BYTES]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(id {}, ..)", self.id())
    }
}

impl Key {
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Key {
        Key(bytes)
    }

    /// Parses standard base64 (surrounding whitespace is ignored).
    pub fn from_base64(text: &str) -> Result<Key, KeyringError> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|e| KeyringError::Base64(e.to_string()))?;
        let arr: [u8; KEY_BYTES] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyringError::KeyLength(bytes.len()))?;
        Ok(Key(arr))
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// The first 4 bytes of a BLAKE3 key derivation of the key.
    pub fn id(&self) -> KeyId {
        let derived = blake3::derive_key(KEY_ID_CONTEXT, &self.0);
        let mut id = [0u8; KEY_ID_BYTES];
        id.copy_from_slice(&derived[..KEY_ID_BYTES]);
        KeyId(id)
    }
}

/// An installed key with its cipher ready (key setup is done once, not per datagram).
#[derive(Clone)]
struct Slot {
    id: KeyId,
    key: Key,
    cipher: XChaCha20Poly1305,
}

impl Slot {
    fn new(key: Key) -> Slot {
        let cipher = XChaCha20Poly1305::new(&key.0.into());
        Slot {
            id: key.id(),
            key,
            cipher,
        }
    }
}

/// The colony keyring: at most [`MAX_KEYS`] keys; the primary seals, every key opens. Rotation
/// without downtime (as in Serf): `install` the new key everywhere, `use_key` it everywhere, then
/// `remove` the old one.
#[derive(Clone)]
pub struct Keyring {
    /// Invariant: not empty, at most `MAX_KEYS`, ids distinct, `slots[0]` is the primary.
    slots: Vec<Slot>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary_id())
            .field("keys", &self.ids())
            .finish()
    }
}

impl Keyring {
    /// A keyring holding one key, which is primary.
    pub fn new(primary: Key) -> Keyring {
        Keyring {
            slots: vec![Slot::new(primary)],
        }
    }

    pub fn primary_id(&self) -> KeyId {
        self.slots[0].id
    }

    pub fn primary(&self) -> &Key {
        &self.slots[0].key
    }

    /// Ids of every installed key, the primary first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.slots.iter().map(|s| s.id).collect()
    }

    /// Every installed key, the primary first.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.slots.iter().map(|s| &s.key)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    fn slot(&self, id: KeyId) -> Option<&Slot> {
        self.slots.iter().find(|s| s.id == id)
    }

    /// Adds a key that can open but does not seal yet. Installing an installed key is a no-op.
    pub fn install(&mut self, key: Key) -> Result<KeyId, KeyringError> {
        let id = key.id();
        if let Some(slot) = self.slot(id) {
            return if slot.key == key {
                Ok(id)
            } else {
                Err(KeyringError::IdClash(id))
            };
        }
        if self.slots.len() >= MAX_KEYS {
            return Err(KeyringError::Full);
        }
        self.slots.push(Slot::new(key));
        Ok(id)
    }

    /// Makes an installed key the primary (the one that seals).
    pub fn use_key(&mut self, id: KeyId) -> Result<(), KeyringError> {
        let pos = self
            .slots
            .iter()
            .position(|s| s.id == id)
            .ok_or(KeyringError::NotInstalled(id))?;
        self.slots.swap(0, pos);
        Ok(())
    }

    /// Removes a key that is not the primary.
    pub fn remove(&mut self, id: KeyId) -> Result<(), KeyringError> {
        if self.primary_id() == id {
            return Err(KeyringError::IsPrimary(id));
        }
        let pos = self
            .slots
            .iter()
            .position(|s| s.id == id)
            .ok_or(KeyringError::NotInstalled(id))?;
        self.slots.remove(pos);
        Ok(())
    }

    /// One base64 key per line, the primary first (the keyring file format).
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for slot in &self.slots {
            text.push_str(&slot.key.to_base64());
            text.push('\n');
        }
        text
    }

    /// Parses [`Keyring::to_text`]: the first key is primary; blank lines and `#` comments are
    /// skipped.
    pub fn from_text(text: &str) -> Result<Keyring, KeyringError> {
        let mut ring: Option<Keyring> = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |error: KeyringError| KeyringError::Line {
                line: i + 1,
                error: Box::new(error),
            };
            let key = Key::from_base64(line).map_err(at)?;
            match ring.as_mut() {
                None => ring = Some(Keyring::new(key)),
                Some(r) => {
                    r.install(key).map_err(at)?;
                }
            }
        }
        ring.ok_or(KeyringError::Empty)
    }
}

/// The clear header of a sealed datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub key_id: KeyId,
    pub sender: NodeId,
    pub session: u64,
    pub counter: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0] = MAGIC;
        h[1] = ENVELOPE_VERSION;
        h[2..6].copy_from_slice(&self.key_id.0);
        h[6..14].copy_from_slice(&self.sender.0.to_le_bytes());
        h[14..22].copy_from_slice(&self.session.to_le_bytes());
        h[22..30].copy_from_slice(&self.counter.to_le_bytes());
        h
    }

    /// Parses and checks the clear header (size, magic, version) without any key.
    pub fn parse(packet: &[u8]) -> Result<Header, EnvelopeError> {
        if packet.len() > MAX_DATAGRAM_BYTES {
            return Err(EnvelopeError::TooLarge {
                len: packet.len(),
                max: MAX_DATAGRAM_BYTES,
            });
        }
        if packet.len() < SEAL_OVERHEAD_BYTES {
            return Err(EnvelopeError::TooShort { len: packet.len() });
        }
        if packet[0] != MAGIC {
            return Err(EnvelopeError::BadMagic(packet[0]));
        }
        if packet[1] != ENVELOPE_VERSION {
            return Err(EnvelopeError::BadVersion(packet[1]));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&packet[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let mut key_id = [0u8; KEY_ID_BYTES];
        key_id.copy_from_slice(&packet[2..6]);
        Ok(Header {
            key_id: KeyId(key_id),
            sender: NodeId(u64_at(6)),
            session: u64_at(14),
            counter: u64_at(22),
        })
    }

    fn nonce(&self) -> XNonce {
        let mut n = [0u8; 24];
        n[..8].copy_from_slice(&self.sender.0.to_le_bytes());
        n[8..16].copy_from_slice(&self.session.to_le_bytes());
        n[16..].copy_from_slice(&self.counter.to_le_bytes());
        XNonce::from(n)
    }
}

/// Seals `plain` under the keyring's primary key. The caller keeps `(session, counter)` strictly
/// increasing for `sender` (see the module doc).
pub fn seal(
    keyring: &Keyring,
    sender: NodeId,
    session: u64,
    counter: u64,
    plain: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if plain.len() > MAX_PLAIN_BYTES {
        return Err(EnvelopeError::TooLarge {
            len: plain.len() + SEAL_OVERHEAD_BYTES,
            max: MAX_DATAGRAM_BYTES,
        });
    }
    let slot = &keyring.slots[0];
    let header = Header {
        key_id: slot.id,
        sender,
        session,
        counter,
    };
    let head = header.encode();
    let mut out = Vec::with_capacity(plain.len() + SEAL_OVERHEAD_BYTES);
    out.extend_from_slice(&head);
    out.extend_from_slice(plain);
    let tag = slot
        .cipher
        .encrypt_inout_detached(&header.nonce(), &head, (&mut out[HEADER_BYTES..]).into())
        // XChaCha20-Poly1305 only refuses messages beyond 256 GiB; `plain` is bounded above.
        .map_err(|_| EnvelopeError::TooLarge {
            len: plain.len(),
            max: MAX_PLAIN_BYTES,
        })?;
    out.extend_from_slice(tag.as_slice());
    debug_assert!(out.len() <= MAX_DATAGRAM_BYTES);
    Ok(out)
}

/// Opens a sealed datagram with the key its header names. No replay check: see [`open_checked`].
pub fn open(keyring: &Keyring, packet: &[u8]) -> Result<(Header, Vec<u8>), EnvelopeError> {
    let header = Header::parse(packet)?;
    let plain = decrypt(keyring, &header, packet)?;
    Ok((header, plain))
}

fn decrypt(keyring: &Keyring, header: &Header, packet: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let slot = keyring
        .slot(header.key_id)
        .ok_or(EnvelopeError::UnknownKey(header.key_id))?;
    let (head, rest) = packet.split_at(HEADER_BYTES);
    let (body, tag) = rest.split_at(rest.len() - TAG_BYTES);
    let tag = Tag::try_from(tag).map_err(|_| EnvelopeError::Forged)?;
    let mut plain = body.to_vec();
    slot.cipher
        .decrypt_inout_detached(&header.nonce(), head, plain.as_mut_slice().into(), &tag)
        .map_err(|_| EnvelopeError::Forged)?;
    Ok(plain)
}

/// Opens a datagram and enforces anti-replay: a replayed or stale packet is refused before any
/// decryption, and the guard only records packets whose tag verified (so forgeries cannot move
/// a sender's window).
pub fn open_checked(
    keyring: &Keyring,
    guard: &mut ReplayGuard,
    packet: &[u8],
) -> Result<(Header, Vec<u8>), EnvelopeError> {
    let header = Header::parse(packet)?;
    guard.check(&header)?;
    let plain = decrypt(keyring, &header, packet)?;
    guard.record(&header);
    Ok((header, plain))
}

/// Sliding window of counters within one session (RFC 6479 style: a ring of 64-bit blocks).
#[derive(Clone, Debug)]
struct Window {
    session: u64,
    top: u64,
    blocks: [u64; REPLAY_BLOCKS],
    /// Order of the last accepted packet across all senders (for forgetting the stalest sender).
    last_seen: u64,
}

impl Window {
    fn fresh(session: u64, counter: u64, seen: u64) -> Window {
        let mut w = Window {
            session,
            top: counter,
            blocks: [0; REPLAY_BLOCKS],
            last_seen: seen,
        };
        w.set(counter);
        w
    }

    fn position(counter: u64) -> (usize, u64) {
        (
            ((counter / 64) % REPLAY_BLOCKS as u64) as usize,
            1u64 << (counter % 64),
        )
    }

    fn seen(&self, counter: u64) -> bool {
        if counter > self.top {
            return false;
        }
        if self.top - counter >= REPLAY_WINDOW {
            return true;
        }
        let (block, bit) = Window::position(counter);
        self.blocks[block] & bit != 0
    }

    fn set(&mut self, counter: u64) {
        if counter > self.top {
            let advance = (counter / 64 - self.top / 64).min(REPLAY_BLOCKS as u64);
            for i in 1..=advance {
                let block = ((self.top / 64 + i) % REPLAY_BLOCKS as u64) as usize;
                self.blocks[block] = 0;
            }
            self.top = counter;
        }
        let (block, bit) = Window::position(counter);
        self.blocks[block] |= bit;
    }
}

/// Anti-replay state for every sender heard from: its newest session and a window of
/// [`REPLAY_WINDOW`] counters in it. A newer session resets the window; an older one is refused.
/// Bounded by [`MAX_PEERS`] senders.
#[derive(Clone, Debug)]
pub struct ReplayGuard {
    peers: BTreeMap<NodeId, Window>,
    max_peers: usize,
    seen_seq: u64,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        ReplayGuard::new(MAX_PEERS)
    }
}

impl ReplayGuard {
    /// A guard that tracks at most `max_peers` senders (at least one).
    pub fn new(max_peers: usize) -> ReplayGuard {
        ReplayGuard {
            peers: BTreeMap::new(),
            max_peers: max_peers.max(1),
            seen_seq: 0,
        }
    }

    /// Senders tracked.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Whether a packet with this header would be accepted. Does not change anything.
    pub fn check(&self, h: &Header) -> Result<(), EnvelopeError> {
        let Some(w) = self.peers.get(&h.sender) else {
            return Ok(());
        };
        if h.session < w.session {
            return Err(EnvelopeError::StaleSession {
                sender: h.sender,
                session: h.session,
                newest: w.session,
            });
        }
        if h.session == w.session && w.seen(h.counter) {
            return Err(EnvelopeError::Replayed {
                sender: h.sender,
                counter: h.counter,
            });
        }
        Ok(())
    }

    /// Records an authenticated packet that [`ReplayGuard::check`] accepted.
    pub fn record(&mut self, h: &Header) {
        self.seen_seq += 1;
        let seen = self.seen_seq;
        match self.peers.get_mut(&h.sender) {
            Some(w) if h.session == w.session => {
                w.set(h.counter);
                w.last_seen = seen;
            }
            Some(w) if h.session > w.session => {
                *w = Window::fresh(h.session, h.counter, seen);
            }
            Some(_) => {} // older session: `check` refuses it; never move backwards
            None => {
                if self.peers.len() >= self.max_peers {
                    let stalest = self
                        .peers
                        .iter()
                        .min_by_key(|(_, w)| w.last_seen)
                        .map(|(id, _)| *id);
                    if let Some(id) = stalest {
                        self.peers.remove(&id);
                    }
                }
                self.peers
                    .insert(h.sender, Window::fresh(h.session, h.counter, seen));
            }
        }
        debug_assert!(self.peers.len() <= self.max_peers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key::from_bytes([b; KEY_BYTES])
    }

    fn ring() -> Keyring {
        Keyring::new(key(1))
    }

    #[test]
    fn seal_open_round_trip_and_layout() {
        let r = ring();
        let p = seal(&r, NodeId(7), 100, 3, b"hello colony").unwrap();
        assert_eq!(p.len(), 12 + SEAL_OVERHEAD_BYTES);
        assert_eq!(p[0], MAGIC);
        assert_eq!(p[0] & 0x40, 0, "QUIC's fixed bit must be clear");
        assert!(!p.windows(5).any(|w| w == b"hello"), "body is encrypted");
        let (h, plain) = open(&r, &p).unwrap();
        assert_eq!(plain, b"hello colony");
        assert_eq!(
            h,
            Header {
                key_id: key(1).id(),
                sender: NodeId(7),
                session: 100,
                counter: 3
            }
        );
    }

    #[test]
    fn empty_and_largest_frames_seal() {
        let r = ring();
        let p = seal(&r, NodeId(1), 1, 1, &[]).unwrap();
        assert_eq!(open(&r, &p).unwrap().1, Vec::<u8>::new());
        let big = vec![0xEEu8; MAX_PLAIN_BYTES];
        let p = seal(&r, NodeId(1), 1, 2, &big).unwrap();
        assert_eq!(p.len(), MAX_DATAGRAM_BYTES);
        assert_eq!(open(&r, &p).unwrap().1, big);
        let too_big = vec![0u8; MAX_PLAIN_BYTES + 1];
        assert!(matches!(
            seal(&r, NodeId(1), 1, 3, &too_big),
            Err(EnvelopeError::TooLarge { .. })
        ));
        let mut oversized = p.clone();
        oversized.push(0);
        assert!(matches!(
            open(&r, &oversized),
            Err(EnvelopeError::TooLarge { .. })
        ));
    }

    #[test]
    fn tampering_with_any_byte_is_refused_with_the_right_reason() {
        let r = ring();
        let p = seal(&r, NodeId(9), 5, 6, &[0x5Au8; 300]).unwrap();
        for i in 0..p.len() {
            for flip in [0x01u8, 0x80] {
                let mut t = p.clone();
                t[i] ^= flip;
                let err = open(&r, &t).unwrap_err();
                let expected = match i {
                    0 => EnvelopeError::BadMagic(t[0]),
                    1 => EnvelopeError::BadVersion(t[1]),
                    2..=5 => EnvelopeError::UnknownKey(Header::parse(&t).unwrap().key_id),
                    _ => EnvelopeError::Forged,
                };
                assert_eq!(err, expected, "byte {i} flipped by {flip:#x}");
            }
        }
    }

    #[test]
    fn truncation_is_refused() {
        let r = ring();
        let p = seal(&r, NodeId(9), 5, 6, b"some frame").unwrap();
        for len in 0..p.len() {
            let err = open(&r, &p[..len]).unwrap_err();
            if len < SEAL_OVERHEAD_BYTES {
                assert_eq!(err, EnvelopeError::TooShort { len });
            } else {
                assert_eq!(err, EnvelopeError::Forged, "truncated to {len}");
            }
        }
    }

    #[test]
    fn wrong_key_is_refused() {
        let p = seal(&ring(), NodeId(2), 1, 1, b"x").unwrap();
        let other = Keyring::new(key(2));
        assert_eq!(
            open(&other, &p).unwrap_err(),
            EnvelopeError::UnknownKey(key(1).id())
        );
        // Same id on the wire but a different key (a forger who guessed the id): tag fails.
        let mut forged = seal(&other, NodeId(2), 1, 1, b"x").unwrap();
        forged[2..6].copy_from_slice(&key(1).id().0);
        assert_eq!(open(&ring(), &forged).unwrap_err(), EnvelopeError::Forged);
    }

    #[test]
    fn rotation_with_two_keys_installed_loses_nothing() {
        // Node a and b start on key 1. The operator installs key 2 everywhere, uses it
        // everywhere (a first, then b), then removes key 1.
        let mut a = Keyring::new(key(1));
        let mut b = Keyring::new(key(1));
        let k2 = key(2).id();
        assert_eq!(a.install(key(2)).unwrap(), k2);
        assert_eq!(b.install(key(2)).unwrap(), k2);
        assert_eq!(
            a.install(key(2)).unwrap(),
            k2,
            "installing twice is a no-op"
        );
        assert_eq!(a.len(), 2);
        a.use_key(k2).unwrap();
        assert_eq!(a.primary_id(), k2);
        // a seals with key 2, b still with key 1: both open each other's packets.
        let from_a = seal(&a, NodeId(1), 1, 1, b"a").unwrap();
        let from_b = seal(&b, NodeId(2), 1, 1, b"b").unwrap();
        assert_eq!(open(&b, &from_a).unwrap().1, b"a");
        assert_eq!(open(&a, &from_b).unwrap().1, b"b");
        b.use_key(k2).unwrap();
        let k1 = key(1).id();
        assert_eq!(a.remove(k2), Err(KeyringError::IsPrimary(k2)));
        a.remove(k1).unwrap();
        b.remove(k1).unwrap();
        assert_eq!(a.remove(k1), Err(KeyringError::NotInstalled(k1)));
        assert_eq!(a.use_key(k1), Err(KeyringError::NotInstalled(k1)));
        // A straggler still sealing with the removed key is refused.
        assert_eq!(
            open(&a, &from_b).unwrap_err(),
            EnvelopeError::UnknownKey(k1)
        );
        assert_eq!(
            open(&b, &seal(&a, NodeId(1), 1, 2, b"new").unwrap())
                .unwrap()
                .1,
            b"new"
        );
    }

    #[test]
    fn keyring_is_bounded_and_round_trips_as_text() {
        let mut r = ring();
        for b in 2..=MAX_KEYS as u8 {
            r.install(key(b)).unwrap();
        }
        assert_eq!(r.install(key(100)), Err(KeyringError::Full));
        r.use_key(key(3).id()).unwrap();
        let text = r.to_text();
        let back = Keyring::from_text(&format!("# colony keys\n\n{text}")).unwrap();
        assert_eq!(back.ids(), r.ids());
        assert_eq!(back.primary_id(), key(3).id());
        assert_eq!(
            Keyring::from_text("\n# none\n").unwrap_err(),
            KeyringError::Empty
        );
        let err = Keyring::from_text("AAAA\n").unwrap_err();
        assert!(
            matches!(&err, KeyringError::Line { line: 1, error } if **error == KeyringError::KeyLength(3)),
            "{err:?}"
        );
        assert!(matches!(
            Key::from_base64("not base64!"),
            Err(KeyringError::Base64(_))
        ));
        let k = key(42);
        assert_eq!(Key::from_base64(&k.to_base64()).unwrap(), k);
        let id = k.id();
        assert_eq!(id.to_string().parse::<KeyId>().unwrap(), id);
        assert!("xyz".parse::<KeyId>().is_err());
        assert!("zzzzzzzz".parse::<KeyId>().is_err());
        assert!(
            !format!("{k:?}").contains(&k.to_base64()),
            "Debug hides the key"
        );
    }

    #[test]
    fn replay_of_a_packet_is_refused() {
        let r = ring();
        let mut g = ReplayGuard::default();
        let p = seal(&r, NodeId(3), 10, 1, b"once").unwrap();
        assert_eq!(open_checked(&r, &mut g, &p).unwrap().1, b"once");
        assert_eq!(
            open_checked(&r, &mut g, &p).unwrap_err(),
            EnvelopeError::Replayed {
                sender: NodeId(3),
                counter: 1
            }
        );
        // A forgery with a fresh counter does not move the window.
        let mut forged = seal(&r, NodeId(3), 10, 5000, b"x").unwrap();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(
            open_checked(&r, &mut g, &forged).unwrap_err(),
            EnvelopeError::Forged
        );
        let p2 = seal(&r, NodeId(3), 10, 2, b"two").unwrap();
        assert!(open_checked(&r, &mut g, &p2).is_ok(), "window not moved");
    }

    #[test]
    fn window_accepts_reordering_and_refuses_duplicates_and_the_too_old() {
        let mut g = ReplayGuard::default();
        let h = |counter| Header {
            key_id: KeyId([0; 4]),
            sender: NodeId(1),
            session: 1,
            counter,
        };
        let mut accept = |c: u64| {
            let ok = g.check(&h(c)).is_ok();
            if ok {
                g.record(&h(c));
            }
            ok
        };
        assert!(accept(100));
        assert!(accept(90), "reordered within the window");
        assert!(!accept(90));
        assert!(accept(100 + REPLAY_WINDOW - 1));
        assert!(!accept(100), "still in the window, already seen");
        assert!(accept(101), "oldest counters still in the window are fine");
        assert!(!accept(99), "just behind the window");
        // Reference model: a set of everything accepted and the highest.
        let mut g = ReplayGuard::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut top = 0u64;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly forward, with jumps back into and beyond the window.
            let c = match x % 10 {
                0 => top.saturating_sub(x % (2 * REPLAY_WINDOW)),
                1 => top + 64 * (x % 40),
                _ => top + x % 3,
            };
            let expected = !seen.contains(&c) && (c > top || top - c < REPLAY_WINDOW);
            let got = g.check(&h(c)).is_ok();
            assert_eq!(got, expected, "counter {c}, top {top}");
            if got {
                g.record(&h(c));
                seen.insert(c);
                top = top.max(c);
            }
        }
    }

    #[test]
    fn older_session_is_refused_and_newer_session_resets_the_window() {
        let r = ring();
        let mut g = ReplayGuard::default();
        let old = seal(&r, NodeId(4), 1_000, 7, b"old").unwrap();
        let new = seal(&r, NodeId(4), 2_000, 1, b"new").unwrap();
        assert!(open_checked(&r, &mut g, &old).is_ok());
        assert!(open_checked(&r, &mut g, &new).is_ok(), "restarted sender");
        assert_eq!(
            open_checked(&r, &mut g, &old).unwrap_err(),
            EnvelopeError::StaleSession {
                sender: NodeId(4),
                session: 1_000,
                newest: 2_000
            }
        );
        let older_fresh = seal(&r, NodeId(4), 1_500, 99, b"x").unwrap();
        assert_eq!(
            open_checked(&r, &mut g, &older_fresh).unwrap_err().reason(),
            "stale_session"
        );
        // Another sender is independent.
        let other = seal(&r, NodeId(5), 1, 7, b"other").unwrap();
        assert!(open_checked(&r, &mut g, &other).is_ok());
    }

    #[test]
    fn guard_is_bounded_and_forgets_the_stalest_sender() {
        let mut g = ReplayGuard::new(3);
        let h = |sender, counter| Header {
            key_id: KeyId([0; 4]),
            sender: NodeId(sender),
            session: 1,
            counter,
        };
        for s in 1..=3 {
            g.record(&h(s, 1));
        }
        g.record(&h(1, 2)); // sender 1 is fresh again; 2 is now the stalest
        g.record(&h(4, 1));
        assert_eq!(g.len(), 3);
        assert!(g.check(&h(1, 2)).is_err(), "1 still tracked");
        assert!(g.check(&h(3, 1)).is_err(), "3 still tracked");
        assert!(g.check(&h(2, 1)).is_ok(), "2 was forgotten");
    }

    #[test]
    fn garbage_never_panics() {
        let r = ring();
        let mut g = ReplayGuard::default();
        let mut x = 1u64;
        for len in 0..200 {
            let mut buf = vec![0u8; len];
            for b in buf.iter_mut() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                *b = (x >> 33) as u8;
            }
            if len > 1 {
                buf[0] = MAGIC;
                buf[1] = ENVELOPE_VERSION;
            }
            assert!(open_checked(&r, &mut g, &buf).is_err());
        }
        assert!(g.is_empty());
    }
}
