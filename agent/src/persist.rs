//! Durable node state in the data directory: the `dna::Persisted` snapshot (which also holds the
//! node's stable id) in one framed file, written so that `kill -9` at any instant loses nothing
//! that was committed, and read so that a damaged file stops the agent instead of silently
//! resetting a vote or a term.
//!
//! File `state.bin`, all integers little-endian:
//!
//! ```text
//! [magic "AWSTATE\0", 8 B][format version u32][body length u64][BLAKE3 of body, 32 B][body]
//! ```
//!
//! The body is `Persisted` in bincode 2 (standard config). A write goes to `state.bin.tmp`, is
//! fsynced, renamed over `state.bin`, and the directory is fsynced, so a crash leaves either the
//! old file or the new one, never a mix. A stray temp file at start-up is the trace of a crash
//! before the rename: the old state is authoritative and the temp file is removed.
//!
//! The directory is locked (`data.lock`, an advisory `flock`) for as long as the [`StateDir`]
//! lives, so two agents can never share one data directory and its votes.

use dna::Persisted;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// First bytes of a state file.
pub const MAGIC: [u8; 8] = *b"AWSTATE\0";
/// Layout version of the frame and body. An agent refuses any other version.
/// 2: the colony state carries failed-replica records, held nodes and node IPs (issue 10).
pub const FORMAT_VERSION: u32 = 2;
/// Bytes before the body: magic, version, length, checksum.
pub const HEADER_BYTES: usize = 8 + 4 + 8 + 32;
/// Largest body accepted (a colony state travels in at most `MAX_STREAM_BYTES` = 16 MiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// The state file's name in the data directory.
pub const STATE_FILE: &str = "state.bin";
/// Where a write goes before it is renamed over [`STATE_FILE`].
pub const TEMP_FILE: &str = "state.bin.tmp";
/// The lock file that keeps a second agent out of the directory.
pub const LOCK_FILE: &str = "data.lock";

/// Why the state could not be read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The operating system refused `op` on `file`.
    #[error("{file}: cannot {op}: {source}")]
    Io {
        /// The file or directory.
        file: String,
        /// What was attempted.
        op: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Another process holds the data directory's lock.
    #[error("{file}: another aware-agent holds this data directory (lock {lock} is taken)")]
    Locked {
        /// The data directory.
        file: String,
        /// The lock file.
        lock: String,
    },
    /// The state file is damaged (truncated, wrong magic, checksum, undecodable body).
    #[error(
        "{file}: corrupt state file: {problem}. The agent refuses to start rather than forget \
         a vote or a term; restore the file from a backup, or move the whole data directory \
         away to rejoin as a new node"
    )]
    Corrupt {
        /// The state file.
        file: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The state file was written by an agent with another format version.
    #[error(
        "{file}: state file format version {found} is not supported (this agent reads version \
         {FORMAT_VERSION}); run the aware-agent release that wrote it"
    )]
    Version {
        /// The state file.
        file: String,
        /// The version it declares.
        found: u32,
    },
    /// The snapshot could not be encoded (should not happen).
    #[error("{file}: cannot encode the node state: {message}")]
    Encode {
        /// The state file that was to be written.
        file: String,
        /// The encoder's error.
        message: String,
    },
}

fn io<'a>(file: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> PersistError + 'a {
    move |source| PersistError::Io {
        file: file.display().to_string(),
        op,
        source,
    }
}

/// Frames a snapshot: header plus bincode body.
pub fn encode(state: &Persisted) -> Result<Vec<u8>, bincode::error::EncodeError> {
    let body = bincode::serde::encode_to_vec(state, bincode::config::standard())?;
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(&body).as_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks and decodes a framed snapshot. `file` names the source in errors.
pub fn decode(bytes: &[u8], file: &str) -> Result<Persisted, PersistError> {
    let corrupt = |problem: String| PersistError::Corrupt {
        file: file.to_owned(),
        problem,
    };
    if bytes.len() < HEADER_BYTES {
        return Err(corrupt(format!(
            "truncated: {} bytes, shorter than the {HEADER_BYTES}-byte header",
            bytes.len()
        )));
    }
    let (header, body) = bytes.split_at(HEADER_BYTES);
    if header[..8] != MAGIC {
        return Err(corrupt(
            "wrong magic (not an aware-agent state file)".into(),
        ));
    }
    let mut word = [0u8; 4];
    word.copy_from_slice(&header[8..12]);
    let version = u32::from_le_bytes(word);
    if version != FORMAT_VERSION {
        return Err(PersistError::Version {
            file: file.to_owned(),
            found: version,
        });
    }
    let mut long = [0u8; 8];
    long.copy_from_slice(&header[12..20]);
    let declared = u64::from_le_bytes(long);
    if declared > MAX_BODY_BYTES as u64 {
        return Err(corrupt(format!(
            "declares a {declared}-byte body, above the {MAX_BODY_BYTES}-byte limit"
        )));
    }
    if body.len() as u64 != declared {
        return Err(corrupt(format!(
            "{} the header declares a {declared}-byte body but {} bytes follow",
            if (body.len() as u64) < declared {
                "truncated:"
            } else {
                "trailing bytes:"
            },
            body.len()
        )));
    }
    if blake3::hash(body).as_bytes() != &header[20..52] {
        return Err(corrupt("checksum mismatch".into()));
    }
    let config = bincode::config::standard().with_limit::<MAX_BODY_BYTES>();
    let (state, used): (Persisted, usize) = bincode::serde::decode_from_slice(body, config)
        .map_err(|e| corrupt(format!("undecodable body: {e}")))?;
    if used != body.len() {
        return Err(corrupt(format!(
            "the body has {} bytes after the state",
            body.len() - used
        )));
    }
    Ok(state)
}

/// The data directory, locked for this process.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    /// Held for the lock; released when dropped.
    _lock: File,
}

impl StateDir {
    /// Creates the directory if needed, takes its lock and removes a stray temp file left by a
    /// crash before the rename (the old state file stays authoritative).
    pub fn open(dir: &Path) -> Result<StateDir, PersistError> {
        fs::create_dir_all(dir).map_err(io(dir, "create the data directory"))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path, "open the lock file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(PersistError::Locked {
                    file: dir.display().to_string(),
                    lock: lock_path.display().to_string(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&lock_path, "lock")(e)),
        }
        let temp = dir.join(TEMP_FILE);
        match fs::remove_file(&temp) {
            Ok(()) => tracing::warn!(
                file = %temp.display(),
                "removed a partial state write left by a crash; the previous state stands"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&temp, "remove the stale temp file")(e)),
        }
        Ok(StateDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Path of the state file.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The last state written, or `None` on first boot (no state file).
    pub fn load(&self) -> Result<Option<Persisted>, PersistError> {
        let path = self.state_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, "read")(e)),
        };
        decode(&bytes, &path.display().to_string()).map(Some)
    }

    /// Writes `state` durably: temp file, fsync, rename, fsync of the directory. Blocking: call
    /// it off the async reactor (`spawn_blocking`).
    pub fn store(&self, state: &Persisted) -> Result<(), PersistError> {
        let path = self.state_path();
        let bytes = encode(state).map_err(|e| PersistError::Encode {
            file: path.display().to_string(),
            message: e.to_string(),
        })?;
        let temp = self.dir.join(TEMP_FILE);
        let mut file = File::create(&temp).map_err(io(&temp, "create"))?;
        file.write_all(&bytes).map_err(io(&temp, "write"))?;
        file.sync_all().map_err(io(&temp, "fsync"))?;
        drop(file);
        fs::rename(&temp, &path).map_err(io(&path, "rename the temp file over"))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir, "fsync the data directory"))?;
        Ok(())
    }
}

/// A fresh node id from the operating system's RNG (never [`swarm_core::NodeId::UNKNOWN`]).
pub fn random_node_id() -> Result<swarm_core::NodeId, getrandom::Error> {
    loop {
        let id = getrandom::u64()?;
        if id != swarm_core::NodeId::UNKNOWN.0 {
            return Ok(swarm_core::NodeId(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_core::NodeId;
    use swarm_core::wire::{ColonyState, Version};

    fn sample() -> Persisted {
        Persisted {
            node: NodeId(0xfeed),
            incarnation: 3,
            term: 7,
            voted_for: Some(NodeId(9)),
            state: ColonyState {
                version: Version { term: 7, seq: 2 },
                roster: vec![NodeId(1), NodeId(9), NodeId(0xfeed)].into(),
                ..ColonyState::default()
            },
            commit: Version { term: 7, seq: 1 },
            committed_roster: vec![NodeId(1), NodeId(9)].into(),
            restart_penalty: 1.5,
        }
    }

    #[test]
    fn frame_round_trips() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(&bytes[..8], b"AWSTATE\0");
        assert_eq!(decode(&bytes, "f").unwrap(), sample());
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = encode(&sample()).unwrap();
        for len in 0..bytes.len() {
            let err = decode(&bytes[..len], "state.bin").unwrap_err().to_string();
            assert!(err.starts_with("state.bin: "), "{err}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad, "f").is_err(), "flipped byte {i} accepted");
        }
    }

    #[test]
    fn trailing_bytes_and_huge_lengths_are_refused() {
        let mut bytes = encode(&sample()).unwrap();
        bytes.push(0);
        assert!(
            decode(&bytes, "f")
                .unwrap_err()
                .to_string()
                .contains("trailing")
        );
        let mut huge = encode(&sample()).unwrap();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(
            decode(&huge, "f")
                .unwrap_err()
                .to_string()
                .contains("limit")
        );
    }
}
