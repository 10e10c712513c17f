//! The colony PKI: the colony CA (`aware-agent ca init`), node and admin certificates, CSR
//! signing with every constraint set by the signer, and join tokens (`aware-agent token create`).
//!
//! - The CA is a P-256 key and a self-signed certificate (CN = colony name, path length 0).
//! - A node certificate names the node by one DNS SAN, `<16 hex digits of its NodeId>.aware`, and
//!   may serve and be a client (serverAuth + clientAuth). The admin certificate the CLI uses is
//!   `admin.aware`, client only.
//! - A node generates its own key and sends a CSR; the signer keeps nothing from the CSR but its
//!   (verified) public key and checks that the one requested name is the requesting node's.
//! - A join token is an ES256 JWT signed by the CA key: colony name, expiry and the SHA-256 of the
//!   CA certificate, which lets the joiner pin the server it asks (like kubeadm's discovery hash).
//!   It is valid until it expires, for any number of joins.
//!
//! Files in a CA directory: `ca.crt`, `ca.key`, `admin.crt`, `admin.key`. A node keeps `ca.crt`,
//! `node.crt` and `node.key` in its TLS directory. Keys are written with mode 0600.

use crate::files::{read_text_bounded, write_atomic};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use swarm_core::NodeId;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// DNS suffix of every colony name.
pub const NAME_SUFFIX: &str = ".aware";
/// The admin certificate's one DNS SAN.
pub const ADMIN_NAME: &str = "admin.aware";
/// Lifetime of the CA certificate.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Lifetime of node and admin certificates.
pub const CERT_VALIDITY_DAYS: i64 = 365;
/// Certificates start this long before they are made, for clocks that lag the signer's.
pub const CLOCK_SKEW_SECS: i64 = 300;
/// Largest PEM file or PEM field accepted.
pub const MAX_PEM_BYTES: usize = 64 * 1024;
/// Largest join token accepted.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Longest join-token lifetime `token create` issues.
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;
/// Longest colony name.
pub const MAX_COLONY_NAME_BYTES: usize = 64;

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const ADMIN_STEM: &str = "admin";
pub const NODE_STEM: &str = "node";

/// Errors of the PKI. Each says what was wrong and, for files, where.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} already exists: refusing to overwrite a colony CA")]
    Exists(PathBuf),
    #[error("colony name {0:?} must be 1-{MAX_COLONY_NAME_BYTES} characters of [A-Za-z0-9._-]")]
    ColonyName(String),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{what}: {detail}")]
    BadCert { what: &'static str, detail: String },
    #[error("CSR refused: {0}")]
    Csr(String),
    #[error(
        "CSR refused: it asks for {got:?}, the requesting node may only ask for [{expected:?}]"
    )]
    CsrName { expected: String, got: Vec<String> },
    #[error("token refused: {0}")]
    Token(String),
    #[error("token refused: it expired at {exp} (now {now}, unix seconds)")]
    TokenExpired { exp: u64, now: u64 },
    #[error("token refused: it is for colony {got:?}, this is colony {expected:?}")]
    TokenColony { expected: String, got: String },
    #[error("token refused: it pins CA {got}, this colony's CA is {expected}")]
    TokenCa { expected: String, got: String },
    #[error("token TTL of {0} s is outside 1 s ..= {MAX_TOKEN_TTL_SECS} s")]
    TokenTtl(u64),
    #[error("system RNG failed")]
    Rng,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who a certificate names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    Node(NodeId),
    Admin,
}

impl Identity {
    /// The DNS name in the certificate.
    pub fn name(&self) -> String {
        match self {
            Identity::Node(id) => node_name(*id),
            Identity::Admin => ADMIN_NAME.to_string(),
        }
    }

    pub fn node(&self) -> Option<NodeId> {
        match self {
            Identity::Node(id) => Some(*id),
            Identity::Admin => None,
        }
    }
}

/// `<16 hex digits>.aware`, the DNS SAN of a node's certificate and its TLS server name.
pub fn node_name(node: NodeId) -> String {
    format!("{:016x}{NAME_SUFFIX}", node.0)
}

/// Parses a name [`Identity::name`] writes.
pub fn parse_identity_name(name: &str) -> Option<Identity> {
    if name == ADMIN_NAME {
        return Some(Identity::Admin);
    }
    let hex = name.strip_suffix(NAME_SUFFIX)?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u64::from_str_radix(hex, 16).ok()?;
    (id != NodeId::UNKNOWN.0).then_some(Identity::Node(NodeId(id)))
}

fn dns_names(cert: &X509Certificate<'_>) -> Result<Vec<String>, PkiError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::BadCert {
            what: "subject alternative names",
            detail: e.to_string(),
        })?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => d.to_string(),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default())
}

fn parse_cert<'a>(der: &'a [u8], what: &'static str) -> Result<X509Certificate<'a>, PkiError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| PkiError::BadCert {
            what,
            detail: e.to_string(),
        })
}

/// The identity a certificate names: exactly one DNS SAN that is a node or the admin name.
pub fn identity_of(cert_der: &[u8]) -> Result<Identity, PkiError> {
    let cert = parse_cert(cert_der, "peer certificate")?;
    let names = dns_names(&cert)?;
    match names.as_slice() {
        [one] => parse_identity_name(one).ok_or_else(|| PkiError::BadCert {
            what: "peer certificate",
            detail: format!("{one:?} is not a colony name"),
        }),
        _ => Err(PkiError::BadCert {
            what: "peer certificate",
            detail: format!("expected one DNS name, found {names:?}"),
        }),
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| PkiError::Rng)?;
    Ok(b)
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut b = random_bytes::<16>()?;
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // and 16 bytes long
    Ok(SerialNumber::from_slice(&b))
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn validity(params: &mut CertificateParams, now: SystemTime, days: i64) {
    let now = OffsetDateTime::from(now);
    params.not_before = now - time::Duration::seconds(CLOCK_SKEW_SECS);
    params.not_after = now + time::Duration::days(days);
}

fn pem_der(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject as _;
    if pem.len() > MAX_PEM_BYTES {
        return Err(PkiError::BadCert {
            what,
            detail: format!("PEM larger than {MAX_PEM_BYTES} bytes"),
        });
    }
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::BadCert {
        what,
        detail: e.to_string(),
    })
}

fn valid_colony_name(colony: &str) -> Result<(), PkiError> {
    let ok = !colony.is_empty()
        && colony.len() <= MAX_COLONY_NAME_BYTES
        && colony
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PkiError::ColonyName(colony.to_string()))
    }
}

/// The colony CA certificate: what every node and the CLI trust. Holds no private key.
#[derive(Clone, Debug)]
pub struct CaCert {
    pem: String,
    der: CertificateDer<'static>,
    colony: String,
    fingerprint: [u8; 32],
    /// Uncompressed P-256 point, for verifying join tokens.
    public_key: Vec<u8>,
}

impl CaCert {
    pub fn from_pem(pem: &str) -> Result<CaCert, PkiError> {
        let der = pem_der(pem, "CA certificate")?;
        let cert = parse_cert(&der, "CA certificate")?;
        if !cert.is_ca() {
            return Err(PkiError::BadCert {
                what: "CA certificate",
                detail: "not a CA (basic constraints)".into(),
            });
        }
        let colony = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| PkiError::BadCert {
                what: "CA certificate",
                detail: "no common name (the colony name)".into(),
            })?
            .to_string();
        let public_key = cert.public_key().subject_public_key.data.to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &der);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        Ok(CaCert {
            pem: pem.to_string(),
            der,
            colony,
            fingerprint,
            public_key,
        })
    }

    /// Reads `ca.crt` from `dir`.
    pub fn load(dir: &Path) -> Result<CaCert, PkiError> {
        let path = dir.join(CA_CERT_FILE);
        let pem = read_text_bounded(&path, MAX_PEM_BYTES).map_err(io_err(&path))?;
        CaCert::from_pem(&pem)
    }

    /// Writes `ca.crt` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        let path = dir.join(CA_CERT_FILE);
        write_atomic(&path, self.pem.as_bytes(), 0o644).map_err(io_err(&path))
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    pub fn colony(&self) -> &str {
        &self.colony
    }

    /// SHA-256 of the certificate (DER).
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    pub fn fingerprint_hex(&self) -> String {
        hex(&self.fingerprint)
    }

    /// Checks a join token: signed by this CA's key, pins this CA, names this colony, and has
    /// not expired at `now`.
    pub fn verify_token(&self, token: &str, now: SystemTime) -> Result<TokenClaims, PkiError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(PkiError::Token(format!(
                "longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        // Expiry is checked below against `now`, an input, rather than the library's clock read.
        validation.validate_exp = false;
        validation.leeway = 0;
        let key = jsonwebtoken::DecodingKey::from_ec_der(&self.public_key);
        let data = jsonwebtoken::decode::<TokenClaims>(token, &key, &validation)
            .map_err(|e| PkiError::Token(e.to_string()))?;
        let claims = data.claims;
        if claims.ca != self.fingerprint_hex() {
            return Err(PkiError::TokenCa {
                expected: self.fingerprint_hex(),
                got: claims.ca,
            });
        }
        if claims.colony != self.colony {
            return Err(PkiError::TokenColony {
                expected: self.colony.clone(),
                got: claims.colony,
            });
        }
        let now = unix_secs(now);
        if now >= claims.exp {
            return Err(PkiError::TokenExpired {
                exp: claims.exp,
                now,
            });
        }
        Ok(claims)
    }
}

/// What a join token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Colony name.
    pub colony: String,
    /// SHA-256 of the CA certificate, hex.
    pub ca: String,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
    /// Random id, for logs.
    pub jti: String,
}

impl TokenClaims {
    /// The CA fingerprint this token pins.
    pub fn ca_fingerprint(&self) -> Result<[u8; 32], PkiError> {
        let bad = || PkiError::Token(format!("CA hash {:?} is not 64 hex digits", self.ca));
        if self.ca.len() != 64 || !self.ca.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&self.ca[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(out)
    }
}

/// Reads a token's claims WITHOUT checking its signature: the joiner does this to learn which CA
/// to pin before it can check anything. Never trust the result otherwise.
pub fn token_peek(token: &str) -> Result<TokenClaims, PkiError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(PkiError::Token(format!(
            "longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.insecure_disable_signature_validation();
    validation.validate_exp = false;
    let data = jsonwebtoken::decode::<TokenClaims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(&[]),
        &validation,
    )
    .map_err(|e| PkiError::Token(e.to_string()))?;
    Ok(data.claims)
}

/// The colony CA with its private key: signs node CSRs, admin certificates and join tokens.
pub struct Ca {
    cert: CaCert,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("colony", &self.cert.colony)
            .field("fingerprint", &self.cert.fingerprint_hex())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA for `colony`: P-256 key, self-signed, path length 0, valid from `now`.
    pub fn generate(colony: &str, now: SystemTime) -> Result<Ca, PkiError> {
        valid_colony_name(colony)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, colony);
        dn.push(DnType::OrganizationName, "aware colony CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        validity(&mut params, now, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        Ca::from_parts(&cert.pem(), key)
    }

    fn from_parts(cert_pem: &str, key: KeyPair) -> Result<Ca, PkiError> {
        let cert = CaCert::from_pem(cert_pem)?;
        if cert.public_key != key.public_key_raw() {
            return Err(PkiError::BadCert {
                what: "CA key",
                detail: "does not match the CA certificate".into(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert.der, key)?;
        Ok(Ca { cert, issuer })
    }

    /// Reads `ca.crt` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert = CaCert::load(dir)?;
        let path = dir.join(CA_KEY_FILE);
        let key_pem = read_text_bounded(&path, MAX_PEM_BYTES).map_err(io_err(&path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        Ca::from_parts(cert.pem(), key)
    }

    /// Writes `ca.crt` and `ca.key` (mode 0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        let path = dir.join(CA_KEY_FILE);
        write_atomic(&path, self.issuer.key().serialize_pem().as_bytes(), 0o600)
            .map_err(io_err(&path))?;
        self.cert.save(dir)
    }

    pub fn cert(&self) -> &CaCert {
        &self.cert
    }

    fn leaf_params(
        &self,
        identity: Identity,
        now: SystemTime,
    ) -> Result<CertificateParams, PkiError> {
        let name = identity.name();
        let mut params = CertificateParams::new(vec![name.clone()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, self.cert.colony.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match identity {
            Identity::Node(_) => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Identity::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        validity(&mut params, now, CERT_VALIDITY_DAYS);
        Ok(params)
    }

    /// A new admin key and certificate (client only) for the CLI.
    pub fn issue_admin(&self, now: SystemTime) -> Result<Credentials, PkiError> {
        let key = KeyPair::generate()?;
        let cert = self
            .leaf_params(Identity::Admin, now)?
            .signed_by(&key, &self.issuer)?;
        Credentials::new(&cert.pem(), &key.serialize_pem(), self.cert.clone())
    }

    /// Signs a node's CSR. The CSR's signature must verify and it must ask for exactly the name
    /// of `node`; everything else in the certificate (not a CA, key usage, serverAuth +
    /// clientAuth, validity) is set here, whatever the CSR asked. Returns the certificate PEM.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        node: NodeId,
        now: SystemTime,
    ) -> Result<String, PkiError> {
        if csr_pem.len() > MAX_PEM_BYTES {
            return Err(PkiError::Csr(format!("larger than {MAX_PEM_BYTES} bytes")));
        }
        if node == NodeId::UNKNOWN {
            return Err(PkiError::Csr("node id 0 is never assigned".into()));
        }
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Csr(e.to_string()))?;
        if request.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::Csr("the key must be ECDSA P-256".into()));
        }
        let got: Vec<String> = request
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::DnsName(name) => name.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        let expected = node_name(node);
        if got != [expected.clone()] {
            return Err(PkiError::CsrName { expected, got });
        }
        let signed = CertificateSigningRequestParams {
            params: self.leaf_params(Identity::Node(node), now)?,
            public_key: request.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(signed.pem())
    }

    /// A join token for this colony, valid for `ttl` from `now`.
    pub fn create_token(&self, ttl: Duration, now: SystemTime) -> Result<String, PkiError> {
        let ttl_secs = ttl.as_secs();
        if ttl_secs == 0 || ttl_secs > MAX_TOKEN_TTL_SECS {
            return Err(PkiError::TokenTtl(ttl_secs));
        }
        let iat = unix_secs(now);
        let claims = TokenClaims {
            colony: self.cert.colony.clone(),
            ca: self.cert.fingerprint_hex(),
            iat,
            exp: iat + ttl_secs,
            jti: hex(&random_bytes::<8>()?),
        };
        let key = jsonwebtoken::EncodingKey::from_ec_der(self.issuer.key().serialized_der());
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &key,
        )
        .map_err(|e| PkiError::Token(e.to_string()))
    }
}

/// A certificate, its private key and the CA it chains to: a node's or the admin's TLS identity.
#[derive(Clone)]
pub struct Credentials {
    identity: Identity,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    key_der: Vec<u8>,
    ca: CaCert,
    not_after: SystemTime,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("colony", &self.ca.colony)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Checks that the certificate names a colony identity and holds the key's public half.
    pub fn new(cert_pem: &str, key_pem: &str, ca: CaCert) -> Result<Credentials, PkiError> {
        let cert_der = pem_der(cert_pem, "certificate")?;
        let identity = identity_of(&cert_der)?;
        let key = KeyPair::from_pem(key_pem)?;
        let cert = parse_cert(&cert_der, "certificate")?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::BadCert {
                what: "certificate",
                detail: "does not hold the public half of the key".into(),
            });
        }
        if cert.issuer() != parse_cert(&ca.der, "CA certificate")?.subject() {
            return Err(PkiError::BadCert {
                what: "certificate",
                detail: format!("issued by {}, not by the colony CA", cert.issuer()),
            });
        }
        let not_after = u64::try_from(cert.validity().not_after.timestamp())
            .map_or(SystemTime::UNIX_EPOCH, |s| {
                SystemTime::UNIX_EPOCH + Duration::from_secs(s)
            });
        Ok(Credentials {
            identity,
            cert_pem: cert_pem.to_string(),
            cert_der,
            key_pem: key_pem.to_string(),
            key_der: key.serialize_der(),
            ca,
            not_after,
        })
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// When the certificate stops being valid (peers refuse it from then on).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub fn ca(&self) -> &CaCert {
        &self.ca
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The chain a peer is shown: the certificate, then the CA's.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone(), self.ca.der.clone()]
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Reads `<stem>.crt`, `<stem>.key` and `ca.crt` from `dir`.
    pub fn load(dir: &Path, stem: &str) -> Result<Credentials, PkiError> {
        let ca = CaCert::load(dir)?;
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        let cert = read_text_bounded(&cert_path, MAX_PEM_BYTES).map_err(io_err(&cert_path))?;
        let key = read_text_bounded(&key_path, MAX_PEM_BYTES).map_err(io_err(&key_path))?;
        Credentials::new(&cert, &key, ca)
    }

    /// Writes `<stem>.key` (0600), `<stem>.crt` and `ca.crt` into `dir` (created 0700).
    pub fn save(&self, dir: &Path, stem: &str) -> Result<(), PkiError> {
        create_private_dir(dir)?;
        let key_path = dir.join(format!("{stem}.key"));
        write_atomic(&key_path, self.key_pem.as_bytes(), 0o600).map_err(io_err(&key_path))?;
        let cert_path = dir.join(format!("{stem}.crt"));
        write_atomic(&cert_path, self.cert_pem.as_bytes(), 0o644).map_err(io_err(&cert_path))?;
        self.ca.save(dir)
    }
}

fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err(dir))
}

/// A node's fresh key and a CSR for its name. The key never leaves the node.
pub fn node_key_and_csr(node: NodeId) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let name = node_name(node);
    let mut params = CertificateParams::new(vec![name.clone()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), csr))
}

/// What `ca init` made.
#[derive(Debug)]
pub struct CaInit {
    pub ca: CaCert,
    pub admin: Credentials,
}

#[allow(clippy::disallowed_methods)] // the CLI reads the wall clock; the PKI functions take `now`
fn wall_clock() -> SystemTime {
    SystemTime::now()
}

/// `aware-agent ca init`: a new colony CA and admin certificate in `dir`. Refuses to overwrite an
/// existing CA.
pub fn ca_init(dir: &Path, colony: &str) -> Result<CaInit, PkiError> {
    for file in [CA_KEY_FILE, CA_CERT_FILE] {
        let path = dir.join(file);
        if path.exists() {
            return Err(PkiError::Exists(path));
        }
    }
    create_private_dir(dir)?;
    let now = wall_clock();
    let ca = Ca::generate(colony, now)?;
    let admin = ca.issue_admin(now)?;
    ca.save(dir)?;
    admin.save(dir, ADMIN_STEM)?;
    Ok(CaInit {
        ca: ca.cert().clone(),
        admin,
    })
}

/// `aware-agent token create --ttl`: a join token signed by the CA in `ca_dir`.
pub fn token_create(ca_dir: &Path, ttl: Duration) -> Result<String, PkiError> {
    Ca::load(ca_dir)?.create_token(ttl, wall_clock())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn names_round_trip() {
        let id = NodeId(0x0123_4567_89ab_cdef);
        assert_eq!(node_name(id), "0123456789abcdef.aware");
        assert_eq!(
            parse_identity_name(&node_name(id)),
            Some(Identity::Node(id))
        );
        assert_eq!(parse_identity_name("admin.aware"), Some(Identity::Admin));
        for bad in [
            "0000000000000000.aware",
            "123.aware",
            "0123456789abcdeg.aware",
            "x.other",
        ] {
            assert_eq!(parse_identity_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn csr_is_signed_with_the_signers_constraints_and_the_name_is_checked() {
        let ca = Ca::generate("hive", t0()).unwrap();
        let node = NodeId(42);
        let (key, csr) = node_key_and_csr(node).unwrap();
        let cert = ca.sign_csr(&csr, node, t0()).unwrap();
        let creds = Credentials::new(&cert, &key, ca.cert().clone()).unwrap();
        assert_eq!(creds.identity(), Identity::Node(node));
        let der = pem_der(&cert, "x").unwrap();
        let parsed = parse_cert(&der, "x").unwrap();
        assert!(!parsed.is_ca());
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        // A CSR for another node's name is refused.
        let err = ca.sign_csr(&csr, NodeId(43), t0()).unwrap_err();
        assert!(matches!(err, PkiError::CsrName { .. }), "{err}");
        // A CSR asking for certificate signing and code signing gets a node leaf anyway.
        let evil_key = KeyPair::generate().unwrap();
        let mut evil = CertificateParams::new(vec![node_name(NodeId(7))]).unwrap();
        evil.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        evil.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        let evil_csr = evil.serialize_request(&evil_key).unwrap().pem().unwrap();
        let cert = ca.sign_csr(&evil_csr, NodeId(7), t0()).unwrap();
        let der = pem_der(&cert, "x").unwrap();
        let parsed = parse_cert(&der, "x").unwrap();
        assert!(!parsed.is_ca());
        let ku = parsed.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
        // Two names, one of them ours: refused.
        let mut two =
            CertificateParams::new(vec![node_name(NodeId(7)), "queen.aware".into()]).unwrap();
        two.is_ca = IsCa::NoCa;
        let two_csr = two.serialize_request(&evil_key).unwrap().pem().unwrap();
        assert!(ca.sign_csr(&two_csr, NodeId(7), t0()).is_err());
        // A corrupted CSR (signature no longer verifies) is refused.
        let mut lines: Vec<String> = csr.lines().map(str::to_string).collect();
        let mid = lines.len() / 2;
        let flipped: String = lines[mid]
            .chars()
            .map(|c| {
                if c == 'A' {
                    'B'
                } else if c == 'B' {
                    'A'
                } else {
                    c
                }
            })
            .collect();
        lines[mid] = flipped;
        assert!(ca.sign_csr(&lines.join("\n"), node, t0()).is_err());
        assert!(ca.sign_csr("garbage", node, t0()).is_err());
    }

    #[test]
    fn tokens_are_checked_for_signature_expiry_colony_and_ca() {
        let ca = Ca::generate("hive", t0()).unwrap();
        let token = ca.create_token(Duration::from_secs(3600), t0()).unwrap();
        let claims = ca.cert().verify_token(&token, t0()).unwrap();
        assert_eq!(claims.colony, "hive");
        assert_eq!(claims.ca_fingerprint().unwrap(), ca.cert().fingerprint());
        assert_eq!(token_peek(&token).unwrap(), claims);
        let later = t0() + Duration::from_secs(3600);
        assert!(matches!(
            ca.cert().verify_token(&token, later),
            Err(PkiError::TokenExpired { .. })
        ));
        // Another colony's CA (even with the same name) does not accept it.
        let other = Ca::generate("hive", t0()).unwrap();
        assert!(matches!(
            other.cert().verify_token(&token, t0()),
            Err(PkiError::Token(_))
        ));
        // A token whose claims were edited fails its signature.
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = TokenClaims {
            exp: claims.exp + 1_000_000,
            ..claims.clone()
        };
        use base64::Engine as _;
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&forged_claims).unwrap());
        let forged = format!("{}.{}.{}", parts[0], body, parts[2]);
        assert!(matches!(
            ca.cert().verify_token(&forged, t0()),
            Err(PkiError::Token(_))
        ));
        assert!(ca.cert().verify_token("not.a.token", t0()).is_err());
        assert!(
            ca.cert()
                .verify_token(&"x".repeat(MAX_TOKEN_BYTES + 1), t0())
                .is_err()
        );
        assert!(matches!(
            ca.create_token(Duration::from_secs(0), t0()),
            Err(PkiError::TokenTtl(0))
        ));
    }

    #[test]
    fn ca_init_writes_loadable_files_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let init = ca_init(&ca_dir, "hive").unwrap();
        assert_eq!(init.admin.identity(), Identity::Admin);
        let ca = Ca::load(&ca_dir).unwrap();
        assert_eq!(ca.cert().fingerprint(), init.ca.fingerprint());
        let admin = Credentials::load(&ca_dir, ADMIN_STEM).unwrap();
        assert_eq!(admin.identity(), Identity::Admin);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(ca_dir.join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(ca_init(&ca_dir, "hive"), Err(PkiError::Exists(_))));
        let token = token_create(&ca_dir, Duration::from_secs(60)).unwrap();
        assert!(init.ca.verify_token(&token, wall_clock()).is_ok());
        assert!(matches!(
            ca_init(&dir.path().join("x"), "bad name"),
            Err(PkiError::ColonyName(_))
        ));
    }

    #[test]
    fn credentials_refuse_a_key_that_is_not_the_certificates() {
        let ca = Ca::generate("hive", t0()).unwrap();
        let (_key, csr) = node_key_and_csr(NodeId(5)).unwrap();
        let cert = ca.sign_csr(&csr, NodeId(5), t0()).unwrap();
        let (other_key, _) = node_key_and_csr(NodeId(5)).unwrap();
        assert!(Credentials::new(&cert, &other_key, ca.cert().clone()).is_err());
        let other_ca = Ca::generate("other", t0()).unwrap();
        let (key, csr) = node_key_and_csr(NodeId(6)).unwrap();
        let cert = ca.sign_csr(&csr, NodeId(6), t0()).unwrap();
        assert!(Credentials::new(&cert, &key, other_ca.cert().clone()).is_err());
    }
}
