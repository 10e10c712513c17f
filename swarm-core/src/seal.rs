//! Packet sealing: every packet carries a keyed BLAKE3 tag over its header and body, so a node
//! only acts on packets from holders of the colony key. Verification is constant-time.

/// Bytes of tag appended to every packet.
pub const TAG_BYTES: usize = 16;

/// The colony's shared secret. Derived from an operator passphrase with BLAKE3's KDF.
#[derive(Clone)]
pub struct ColonyKey([u8; 32]);

impl std::fmt::Debug for ColonyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ColonyKey(..)")
    }
}

impl ColonyKey {
    pub fn from_passphrase(passphrase: &str) -> ColonyKey {
        ColonyKey(blake3::derive_key(
            "aware colony key v1",
            passphrase.as_bytes(),
        ))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> ColonyKey {
        ColonyKey(bytes)
    }

    /// The tag for `data`.
    pub fn tag(&self, data: &[u8]) -> [u8; TAG_BYTES] {
        let full = blake3::keyed_hash(&self.0, data);
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&full.as_bytes()[..TAG_BYTES]);
        tag
    }

    /// Appends the tag for the whole of `packet` to it.
    pub fn seal(&self, packet: &mut Vec<u8>) {
        let tag = self.tag(packet);
        packet.extend_from_slice(&tag);
    }

    /// Checks the trailing tag and returns the sealed contents without it.
    pub fn open<'a>(&self, packet: &'a [u8]) -> Option<&'a [u8]> {
        let split = packet.len().checked_sub(TAG_BYTES)?;
        let (data, tag) = packet.split_at(split);
        let expected = self.tag(data);
        let diff = expected
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0).then_some(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_detects_tampering() {
        let key = ColonyKey::from_passphrase("hive");
        let mut packet = b"hello colony".to_vec();
        key.seal(&mut packet);
        assert_eq!(key.open(&packet), Some(&b"hello colony"[..]));
        let mut tampered = packet.clone();
        tampered[0] ^= 1;
        assert_eq!(key.open(&tampered), None);
        let other = ColonyKey::from_passphrase("other");
        assert_eq!(other.open(&packet), None);
        assert_eq!(key.open(&packet[..3]), None);
    }
}
