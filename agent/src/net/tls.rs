//! TLS for the QUIC control plane: rustls configurations (TLS 1.3 only, one crypto provider:
//! ring) and the two server-certificate verifiers the colony needs.
//!
//! - Servers require a client certificate chaining to the colony CA on ALPN `aware/1`, and let a
//!   client without one in only on ALPN `aware-join/1` (for the join request alone; `quic.rs`
//!   enforces that). A client certificate from another CA fails the handshake either way.
//! - [`ColonyServerVerifier`] checks that the server's certificate chains to the colony CA (via
//!   webpki) and names a node; the name dialled is `<nodeid>.aware` when the caller knows who it
//!   dials, or [`ANY_NODE_NAME`] when it only knows an address (the stream lane): then any colony
//!   node is accepted and its id is read from its certificate.
//! - [`PinnedCaVerifier`] is the joiner's: it has no CA yet, only the CA's SHA-256 from the join
//!   token, and accepts a server whose chain includes that CA and chains to it.

use crate::pki::{self, CaCert, Credentials, Identity};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use swarm_core::NodeId;

/// ALPN of node-to-node and admin traffic (mutual TLS).
pub const ALPN_NODE: &[u8] = b"aware/1";
/// ALPN of a join request from a node that has no certificate yet.
pub const ALPN_JOIN: &[u8] = b"aware-join/1";
/// Server name dialled when any colony node will do (never a node's name: not 16 hex digits).
pub const ANY_NODE_NAME: &str = "any.aware";

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{0} credentials cannot serve: only a node certificate has serverAuth")]
    NotANode(String),
}

/// The one crypto provider: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CaCert) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone())?;
    Ok(Arc::new(roots))
}

/// The server name to dial: the node's name, or [`ANY_NODE_NAME`].
pub fn server_name(node: Option<NodeId>) -> String {
    node.map(pki::node_name)
        .unwrap_or_else(|| ANY_NODE_NAME.to_string())
}

/// The server side of a node: its certificate chain, client certificates verified against the
/// colony CA but optional (for `aware-join/1`), ALPN `aware/1` and `aware-join/1`.
pub fn server_config(creds: &Credentials) -> Result<rustls::ServerConfig, TlsError> {
    if !matches!(creds.identity(), Identity::Node(_)) {
        return Err(TlsError::NotANode(creds.identity().name()));
    }
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(creds.ca())?, provider.clone())
            .allow_unauthenticated()
            .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain(), creds.key_der())?;
    config.alpn_protocols = vec![ALPN_NODE.to_vec(), ALPN_JOIN.to_vec()];
    Ok(config)
}

/// The client side of a node or of the admin CLI: mutual TLS, ALPN `aware/1`.
pub fn client_config(creds: &Credentials) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = ColonyServerVerifier::new(creds.ca(), provider.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(creds.chain(), creds.key_der())?;
    config.alpn_protocols = vec![ALPN_NODE.to_vec()];
    Ok(config)
}

/// The joiner's client: no client certificate, server pinned by the CA hash, ALPN `aware-join/1`.
pub fn join_client_config(ca_fingerprint: [u8; 32]) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = PinnedCaVerifier {
        fingerprint: ca_fingerprint,
        provider: provider.clone(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_JOIN.to_vec()];
    Ok(config)
}

fn bad_cert(e: impl std::fmt::Display) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        std::io::Error::other(e.to_string()),
    ))))
}

/// Verifies a server certificate against the colony CA (webpki does the chain, validity and
/// serverAuth checks) and that it names the node dialled, or any node for [`ANY_NODE_NAME`].
#[derive(Debug)]
pub struct ColonyServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ColonyServerVerifier {
    pub fn new(ca: &CaCert, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let inner = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider)
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        Ok(ColonyServerVerifier { inner })
    }
}

fn check_node_name(
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
) -> Result<ServerName<'static>, rustls::Error> {
    let Identity::Node(node) = pki::identity_of(end_entity).map_err(bad_cert)? else {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ));
    };
    let own = pki::node_name(node);
    let dialled = match server_name {
        ServerName::DnsName(name) => name.as_ref().to_string(),
        _ => String::new(),
    };
    if dialled != ANY_NODE_NAME && dialled != own {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ));
    }
    ServerName::try_from(own).map_err(bad_cert)
}

impl ServerCertVerifier for ColonyServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let own = check_node_name(end_entity, server_name)?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &own, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The joiner's verifier: the server must present the CA whose SHA-256 the token carries, and its
/// certificate must chain to it and name a node.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| {
                ring::digest::digest(&ring::digest::SHA256, c.as_ref()).as_ref()
                    == self.fingerprint.as_slice()
            })
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(bad_cert)?;
        let own = check_node_name(end_entity, server_name)?;
        inner.verify_server_cert(end_entity, intermediates, &own, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
