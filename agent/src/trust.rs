//! A node's credentials at start: its TLS certificate (from its data directory, self-issued from a
//! CA directory on a node that holds the colony CA key, or signed through the colony with a join
//! token), its gossip keyring (from its data directory, a keyring file the operator gave, the CA
//! directory, or fetched over mutual TLS from the node that admitted it), and the gossip session
//! number (persisted so that a restart is always a newer session for the receivers).
//!
//! A local colony in one call: [`init_local_colony`] writes a CA directory (`ca.crt`, `ca.key`,
//! `admin.crt`, `admin.key`, `keyring`); every node started with that directory as its CA
//! directory (`aware-agent run --ca-dir D`, [`crate::AgentBuilder::ca_dir`]) issues its own
//! certificate and copies the keyring, and the CLI uses the directory as its admin directory
//! (`aware-agent status --admin-dir D`). See `docs/security.md`.

use crate::files::{read_text_bounded, write_atomic};
use crate::net::gossip::{self, KeyStoreError};
use crate::pki::{self, Ca, CaInit, Credentials, Identity, PkiError};
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use swarm_core::NodeId;
use swarm_core::envelope::Keyring;

/// The node's TLS directory inside its data directory (`ca.crt`, `node.crt`, `node.key`).
pub const TLS_DIR: &str = "tls";
/// The file holding the last gossip session this data directory used.
pub const SESSION_FILE: &str = "gossip-session";

/// Errors of the credential bootstrap; each names the file or the step.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Keys(#[from] KeyStoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Bad { path: PathBuf, why: String },
    #[error(
        "{0} holds a certificate for node {1}, but this data directory is node {2}: remove the tls directory or use the right data directory"
    )]
    WrongNode(PathBuf, String, NodeId),
}

/// A node certificate is renewed at start (on a node holding the CA) once it has fewer than
/// this many days left; without the CA the agent warns from then on.
pub const RENEW_BEFORE_DAYS: u64 = 30;

/// What a node certificate's end of validity means at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertDue {
    /// More than [`RENEW_BEFORE_DAYS`] left.
    Fine,
    /// Still valid, but renew it: whole days left.
    Soon { days_left: u64 },
    /// Peers refuse it.
    Expired,
}

/// Classifies `not_after` against `now` (wall clock, passed in).
pub fn cert_due(not_after: SystemTime, now: SystemTime) -> CertDue {
    match not_after.duration_since(now) {
        Err(_) => CertDue::Expired,
        Ok(left) if left.is_zero() => CertDue::Expired,
        Ok(left) => {
            let days_left = left.as_secs() / 86_400;
            if days_left < RENEW_BEFORE_DAYS {
                CertDue::Soon { days_left }
            } else {
                CertDue::Fine
            }
        }
    }
}

/// `aware-agent ca init` for a local colony: the CA, the admin certificate and a fresh gossip
/// keyring, all in `dir`. Refuses to overwrite an existing CA.
pub fn init_local_colony(dir: &Path, colony: &str) -> Result<CaInit, TrustError> {
    let init = pki::ca_init(dir, colony)?;
    if gossip::load_keyring(dir)?.is_none() {
        gossip::save_keyring(dir, &Keyring::new(gossip::generate_key()?))?;
    }
    Ok(init)
}

/// The node's credentials saved in `tls_dir`, if any (they must name `node`).
pub fn load_node(tls_dir: &Path, node: NodeId) -> Result<Option<Credentials>, TrustError> {
    if !tls_dir.join(format!("{}.crt", pki::NODE_STEM)).exists() {
        return Ok(None);
    }
    let creds = Credentials::load(tls_dir, pki::NODE_STEM)?;
    match creds.identity() {
        Identity::Node(id) if id == node => Ok(Some(creds)),
        other => Err(TrustError::WrongNode(
            tls_dir.to_path_buf(),
            other.name(),
            node,
        )),
    }
}

#[allow(clippy::disallowed_methods)] // certificates need wall time; the agent is the I/O crate
pub(crate) fn wall_clock() -> SystemTime {
    SystemTime::now()
}

/// On a node holding the CA key: a fresh key, a certificate for `node` signed by the CA in
/// `ca_dir`, saved in `tls_dir`. The key is made here and never leaves the node.
pub fn issue_node(ca_dir: &Path, node: NodeId, tls_dir: &Path) -> Result<Credentials, TrustError> {
    let ca = Ca::load(ca_dir)?;
    let (key_pem, csr_pem) = pki::node_key_and_csr(node)?;
    let cert_pem = ca.sign_csr(&csr_pem, node, wall_clock())?;
    let creds = Credentials::new(&cert_pem, &key_pem, ca.cert().clone())?;
    creds.save(tls_dir, pki::NODE_STEM)?;
    Ok(creds)
}

/// The keyring to start with when the data directory has none: from `file` (the operator's
/// keyring file), else from the CA directory's `keyring`.
pub fn initial_keyring(
    file: Option<&Path>,
    ca_dir: Option<&Path>,
) -> Result<Option<Keyring>, TrustError> {
    if let Some(path) = file {
        let text = read_text_bounded(path, gossip::MAX_KEYRING_FILE_BYTES).map_err(|source| {
            TrustError::Io {
                path: path.to_path_buf(),
                source,
            }
        })?;
        return Keyring::from_text(&text)
            .map(Some)
            .map_err(|e| TrustError::Bad {
                path: path.to_path_buf(),
                why: e.to_string(),
            });
    }
    match ca_dir {
        Some(dir) => Ok(gossip::load_keyring(dir)?),
        None => Ok(None),
    }
}

/// The gossip session for this boot (see [`gossip::next_session`]), written to `data_dir`
/// before the first datagram is sealed.
pub fn next_session(data_dir: &Path) -> Result<u64, TrustError> {
    let path = data_dir.join(SESSION_FILE);
    let last = match read_text_bounded(&path, 64) {
        Ok(text) => Some(text.trim().parse::<u64>().map_err(|e| TrustError::Bad {
            path: path.clone(),
            why: format!("not a session number: {e}"),
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(TrustError::Io { path, source }),
    };
    let boot_ms = wall_clock()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let session = gossip::next_session(boot_ms, last);
    write_atomic(&path, format!("{session}\n").as_bytes(), 0o600)
        .map_err(|source| TrustError::Io { path, source })?;
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_due_for_renewal_in_its_last_days_and_expired_after() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(cert_due(now + day * 365, now), CertDue::Fine);
        assert_eq!(
            cert_due(now + day * RENEW_BEFORE_DAYS as u32, now),
            CertDue::Fine
        );
        assert_eq!(
            cert_due(now + day * 29 + day / 2, now),
            CertDue::Soon { days_left: 29 }
        );
        assert_eq!(cert_due(now + day / 2, now), CertDue::Soon { days_left: 0 });
        assert_eq!(cert_due(now, now), CertDue::Expired);
        assert_eq!(cert_due(now - day, now), CertDue::Expired);
    }

    #[test]
    fn a_local_colony_issues_node_certificates_and_shares_its_keyring() {
        let root = tempfile::tempdir().unwrap();
        let ca_dir = root.path().join("ca");
        init_local_colony(&ca_dir, "hive").unwrap();
        let ring = initial_keyring(None, Some(&ca_dir)).unwrap().unwrap();
        assert_eq!(ring.len(), 1);
        let tls = root.path().join("node").join(TLS_DIR);
        assert!(load_node(&tls, NodeId(7)).unwrap().is_none());
        let creds = issue_node(&ca_dir, NodeId(7), &tls).unwrap();
        assert_eq!(creds.identity(), Identity::Node(NodeId(7)));
        assert!(load_node(&tls, NodeId(7)).unwrap().is_some());
        let err = load_node(&tls, NodeId(8)).unwrap_err().to_string();
        assert!(err.contains("0000000000000007.aware"), "{err}");
        let s1 = next_session(root.path()).unwrap();
        let s2 = next_session(root.path()).unwrap();
        assert!(s2 > s1);
        std::fs::write(root.path().join(SESSION_FILE), "x").unwrap();
        assert!(next_session(root.path()).is_err());
    }
}
