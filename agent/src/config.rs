//! `aware-agent run` configuration: a TOML file, `AWARE_*` environment variables and command-line
//! flags, in that order of precedence (file < env < flags), resolved into [`Settings`].
//!
//! The file (every key optional except `colony`, which may also come from env or flags; relative
//! paths are relative to the file). A node needs credentials: a CA directory (a node holding the
//! colony CA issues its own certificate) or a join token, unless its data directory already
//! holds them from an earlier start (see `docs/security.md`):
//!
//! ```toml
//! colony = "prod"                      # colony name
//! data_dir = "/var/lib/aware"          # state, lock file
//! bind = "0.0.0.0:7946"                # the one UDP port: sealed gossip and mutual-TLS QUIC
//! advertise = "10.0.0.5:7946"          # what peers dial; required when bind is 0.0.0.0
//! seeds = ["10.0.0.1:7946", "seed.rack1.lan:7946"]  # ip:port or host:port (names re-resolved)
//! bootstrap_expect = 3                 # cold start: votes needed from a majority of this many
//! queen_affinity = 1.0                 # 0 = never stands as queen
//! caps = "caps.yaml"                   # capability config (see `aware-agent caps`)
//! log_format = "human"                 # or "json"
//! runtime = "process"                  # workload runtime: process (default), docker, none
//! metrics_bind = "127.0.0.1:9464"      # Prometheus `/metrics` (the default); "off" serves none
//!
//! ca_dir = "/etc/aware/ca"             # `aware-agent ca init` output: self-issue, sign joins
//!
//! [keys]
//! gossip = "keyring"                   # starting gossip keyring (if the data dir has none)
//! join_token = "join.token"            # file holding a join token (`aware-agent token create`)
//! admin = "/etc/aware/ca"              # for `status`/`apply`/`keys`: admin.crt, admin.key, ca.crt
//!
//! [discovery]
//! mdns = true
//! etcd = ["http://10.0.0.1:2379"]
//! # etcd over TLS (https:// endpoints): etcd's CA, and a client certificate and key when etcd
//! # runs with --client-cert-auth
//! # etcd_ca = "/etc/aware/etcd-ca.pem"
//! # etcd_cert = "/etc/aware/etcd-client.pem"
//! # etcd_key = "/etc/aware/etcd-client-key.pem"
//! ```
//!
//! Unknown keys and wrong types are errors that name `FILE:LINE:COL`.

use crate::discovery::seeds::SeedSpec;
use clap::{Args, ValueEnum};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Gossip port when none is configured.
pub const DEFAULT_PORT: u16 = 7946;
/// Largest join-token file read.
pub const MAX_KEY_FILE_BYTES: u64 = 4096;

/// How log lines are written (to stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text for a terminal.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Which workload runtime runs this node's assignments (see `crate::workloads`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Nothing runs: assignments are only tracked.
    None,
    /// Docker containers (the local engine; ports published on the node's IP).
    Docker,
    /// Supervised child processes (the default: needs no Docker).
    #[default]
    Process,
}

/// `metrics_bind`: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsBind {
    /// No metrics endpoint.
    Off,
    /// Listen here.
    At(SocketAddr),
}

impl std::str::FromStr for MetricsBind {
    type Err = String;

    fn from_str(s: &str) -> Result<MetricsBind, String> {
        if s == "off" {
            return Ok(MetricsBind::Off);
        }
        s.parse()
            .map(MetricsBind::At)
            .map_err(|_| format!("`{s}` is neither an address (127.0.0.1:9464) nor `off`"))
    }
}

impl<'de> Deserialize<'de> for MetricsBind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MetricsBind, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Colony name.
    pub colony: Option<String>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Gossip bind address.
    pub bind: Option<SocketAddr>,
    /// Address peers reach this node at.
    pub advertise: Option<SocketAddr>,
    /// Seeds: `ip:port` or `host:port`.
    #[serde(default)]
    pub seeds: Vec<Spanned<String>>,
    /// Cold-start quorum base.
    pub bootstrap_expect: Option<Spanned<usize>>,
    /// Weight for standing as queen.
    pub queen_affinity: Option<Spanned<f64>>,
    /// Capability config file.
    pub caps: Option<PathBuf>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// Workload runtime.
    pub runtime: Option<RuntimeKind>,
    /// Metrics endpoint address, or "off".
    pub metrics_bind: Option<MetricsBind>,
    /// Colony CA directory.
    pub ca_dir: Option<PathBuf>,
    /// Key files.
    #[serde(default)]
    pub keys: KeysConfig,
    /// Discovery.
    #[serde(default)]
    pub discovery: DiscoveryConfig,
}

/// `[keys]`: key files.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Starting gossip keyring file.
    pub gossip: Option<PathBuf>,
    /// File holding a join token.
    pub join_token: Option<PathBuf>,
    /// Admin credentials directory (client commands).
    pub admin: Option<PathBuf>,
}

/// `[discovery]`: how peers are found besides seeds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// mDNS on the LAN.
    pub mdns: Option<bool>,
    /// etcd endpoints.
    #[serde(default)]
    pub etcd: Vec<String>,
    /// etcd's CA certificate (PEM): TLS to etcd.
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd (PEM).
    pub etcd_cert: Option<PathBuf>,
    /// Client key for etcd (PEM).
    pub etcd_key: Option<PathBuf>,
}

/// Flags shared by `run`, `status` and `apply`; each also reads an `AWARE_*` variable.
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// Configuration file (TOML).
    #[arg(long, env = "AWARE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Colony name.
    #[arg(long, env = "AWARE_COLONY")]
    pub colony: Option<String>,
    /// Data directory (node state and lock).
    #[arg(long, env = "AWARE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Colony CA directory (`ca init`): a node holding it issues its own certificate and signs
    /// joins; its keyring is the starting keyring.
    #[arg(long, env = "AWARE_CA_DIR", value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Join token (`token create`) for a node without a certificate.
    #[arg(
        long,
        env = "AWARE_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,
    /// File holding a join token.
    #[arg(long, env = "AWARE_JOIN_TOKEN_FILE", value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Starting gossip keyring file (one base64 key per line, the primary first).
    #[arg(long, env = "AWARE_KEYRING_FILE", value_name = "FILE")]
    pub keyring_file: Option<PathBuf>,
    /// Admin credentials directory for `status`, `apply`, `keys` (admin.crt, admin.key, ca.crt).
    #[arg(long, env = "AWARE_ADMIN_DIR", value_name = "DIR")]
    pub admin_dir: Option<PathBuf>,
    /// Seeds, `ip:port` or `host:port` (comma-separated in the variable). Names are resolved at
    /// start and again while the agent runs.
    #[arg(long, env = "AWARE_SEEDS", value_delimiter = ',', value_name = "HOST:PORT",
          value_parser = SeedSpec::parse)]
    pub seeds: Vec<SeedSpec>,
    /// mDNS discovery on or off.
    #[arg(long, env = "AWARE_MDNS", value_name = "BOOL")]
    pub mdns: Option<bool>,
    /// etcd endpoints for discovery (comma-separated in the variable).
    #[arg(long, env = "AWARE_ETCD", value_delimiter = ',', value_name = "URL")]
    pub etcd: Vec<String>,
    /// etcd's CA certificate (PEM) for https:// endpoints.
    #[arg(long, env = "AWARE_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for an etcd with --client-cert-auth.
    #[arg(long, env = "AWARE_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for an etcd with --client-cert-auth.
    #[arg(long, env = "AWARE_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// Address the gossip socket binds.
    #[arg(long, env = "AWARE_BIND", value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Address peers reach this node at (default: the bind address).
    #[arg(long, env = "AWARE_ADVERTISE", value_name = "ADDR")]
    pub advertise: Option<SocketAddr>,
    /// Capability config file (YAML: labels, overrides, reserve).
    #[arg(long, env = "AWARE_CAPS_CONFIG", value_name = "FILE")]
    pub caps_config: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "AWARE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Cold start: a queen needs votes from a majority of this many nodes.
    #[arg(long, env = "AWARE_BOOTSTRAP_EXPECT", value_name = "N")]
    pub bootstrap_expect: Option<usize>,
    /// Weight in 0.0..=1.0 for standing as queen (0 = never).
    #[arg(long, env = "AWARE_QUEEN_AFFINITY", value_name = "WEIGHT")]
    pub queen_affinity: Option<f64>,
    /// Workload runtime.
    #[arg(long, env = "AWARE_RUNTIME", value_enum)]
    pub runtime: Option<RuntimeKind>,
    /// Where `/metrics` listens (default 127.0.0.1:9464), or `off`.
    #[arg(long, env = "AWARE_METRICS_BIND", value_name = "ADDR|off")]
    pub metrics_bind: Option<MetricsBind>,
}

/// Everything `run` needs, resolved and checked.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Colony name.
    pub colony: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Colony CA directory.
    pub ca_dir: Option<PathBuf>,
    /// Join token.
    pub join_token: Option<String>,
    /// Starting gossip keyring file.
    pub keyring_file: Option<PathBuf>,
    /// Seeds: addresses and host names.
    pub seeds: Vec<SeedSpec>,
    /// mDNS discovery on.
    pub mdns: bool,
    /// etcd endpoints.
    pub etcd: Vec<String>,
    /// TLS to etcd.
    pub etcd_tls: Option<crate::discovery::EtcdTls>,
    /// Gossip bind address.
    pub bind: SocketAddr,
    /// Address peers reach this node at.
    pub advertise: SocketAddr,
    /// Capability config file.
    pub caps_config: Option<PathBuf>,
    /// Log format.
    pub log_format: LogFormat,
    /// Cold-start quorum base.
    pub bootstrap_expect: usize,
    /// Weight for standing as queen.
    pub queen_affinity: f64,
    /// Workload runtime.
    pub runtime: RuntimeKind,
    /// Where `/metrics` listens; `None` when off.
    pub metrics_bind: Option<SocketAddr>,
    /// `metrics_bind` was configured (a bind failure is then fatal, not a warning).
    pub metrics_bind_explicit: bool,
}

/// What a client command (`status`, `apply`, `keys`) needs: where the agent listens and the
/// admin credentials.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// The agent's control address.
    pub addr: SocketAddr,
    /// Directory with `admin.crt`, `admin.key` and `ca.crt`.
    pub admin_dir: PathBuf,
}

/// A configuration that cannot be used. Displays as the line(s) to print.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file's content is wrong at a position.
    #[error("{file}:{line}:{col}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What is wrong.
        message: String,
    },
    /// A required setting is absent.
    #[error("{0}")]
    Missing(String),
    /// A setting has a bad value.
    #[error("{0}")]
    Bad(String),
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let upto = &text[..offset.min(text.len())];
    let line = upto.matches('\n').count() + 1;
    let col = upto
        .rfind('\n')
        .map_or(upto.chars().count(), |i| upto[i + 1..].chars().count())
        + 1;
    (line, col)
}

/// Parses a configuration file's text. `file` only names it in errors.
pub fn parse_file(text: &str, file: &str) -> Result<FileConfig, SettingsError> {
    toml::from_str(text).map_err(|e| {
        let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        SettingsError::Invalid {
            file: file.to_owned(),
            line,
            col,
            message: e.message().trim_end().to_owned(),
        }
    })
}

/// A loaded file with the directory its relative paths start from.
struct Loaded {
    config: FileConfig,
    text: String,
    name: String,
    base: PathBuf,
}

fn load(path: Option<&Path>) -> Result<Option<Loaded>, SettingsError> {
    let Some(path) = path else { return Ok(None) };
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        file: name.clone(),
        source,
    })?;
    let config = parse_file(&text, &name)?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(Some(Loaded {
        config,
        text,
        name,
        base,
    }))
}

fn relative(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { base.join(p) }
}

/// Reads a join-token file: its trimmed contents are the token.
pub fn read_token(path: &Path) -> Result<String, SettingsError> {
    let file = path.display().to_string();
    let read = |source| SettingsError::Read {
        file: file.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(SettingsError::Bad(format!(
            "{file}: a join-token file holds at most {MAX_KEY_FILE_BYTES} bytes, this one has {}",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(SettingsError::Bad(format!(
            "{file}: the join-token file is empty"
        )));
    }
    Ok(token.to_owned())
}

impl ConfigArgs {
    /// Merges file, environment and flags (clap already put env under flags) for `run`.
    pub fn resolve(&self) -> Result<Settings, SettingsError> {
        let loaded = load(self.config.as_deref())?;
        let (file, base) = match &loaded {
            Some(l) => (Some(&l.config), l.base.clone()),
            None => (None, PathBuf::from(".")),
        };
        let from_file = |f: &dyn Fn(&FileConfig) -> Option<PathBuf>| {
            file.and_then(f).map(|p| relative(&base, p))
        };
        let colony = self
            .colony
            .clone()
            .or_else(|| file.and_then(|f| f.colony.clone()))
            .ok_or_else(|| {
                SettingsError::Missing(
                    "no colony name: set `colony` in the config file, AWARE_COLONY or --colony"
                        .into(),
                )
            })?;
        if colony.trim().is_empty() {
            return Err(SettingsError::Bad("the colony name is empty".into()));
        }
        let join_token = match (&self.join_token, &self.join_token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(f)) => Some(read_token(f)?),
            (None, None) => match from_file(&|f| f.keys.join_token.clone()) {
                Some(f) => Some(read_token(&f)?),
                None => None,
            },
        };
        let data_dir = self
            .data_dir
            .clone()
            .or_else(|| from_file(&|f| f.data_dir.clone()))
            .unwrap_or_else(|| PathBuf::from(crate::caps::DEFAULT_DATA_DIR));
        let bind = self
            .bind
            .or_else(|| file.and_then(|f| f.bind))
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
        let advertise = self
            .advertise
            .or_else(|| file.and_then(|f| f.advertise))
            .unwrap_or(bind);
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            return Err(SettingsError::Bad(format!(
                "peers cannot reach {advertise}: set `advertise` (AWARE_ADVERTISE, --advertise) \
                 to this node's address"
            )));
        }
        let etcd = if self.etcd.is_empty() {
            file.map(|f| f.discovery.etcd.clone()).unwrap_or_default()
        } else {
            self.etcd.clone()
        };
        let etcd_path = |flag: &Option<PathBuf>, key: &dyn Fn(&FileConfig) -> Option<PathBuf>| {
            flag.clone().or_else(|| from_file(key))
        };
        let etcd_ca = etcd_path(&self.etcd_ca, &|f| f.discovery.etcd_ca.clone());
        let etcd_cert = etcd_path(&self.etcd_cert, &|f| f.discovery.etcd_cert.clone());
        let etcd_key = etcd_path(&self.etcd_key, &|f| f.discovery.etcd_key.clone());
        let etcd_tls = match (etcd_ca, etcd_cert.is_some() || etcd_key.is_some()) {
            (Some(ca), _) => Some(crate::discovery::EtcdTls {
                ca,
                cert: etcd_cert,
                key: etcd_key,
            }),
            (None, true) => {
                return Err(SettingsError::Bad(
                    "etcd_cert and etcd_key need etcd_ca (AWARE_ETCD_CA, --etcd-ca): the CA that signed etcd's certificate".into(),
                ));
            }
            (None, false) => None,
        };
        let spanned_err = |name: &str, span: std::ops::Range<usize>, message: String| {
            let l = loaded.as_ref();
            let (line, col) = l.map_or((1, 1), |l| line_col(&l.text, span.start));
            SettingsError::Invalid {
                file: l.map_or_else(|| name.to_owned(), |l| l.name.clone()),
                line,
                col,
                message,
            }
        };
        let seeds = if self.seeds.is_empty() {
            let mut seeds = Vec::new();
            for seed in file.map(|f| f.seeds.as_slice()).unwrap_or_default() {
                let spec = SeedSpec::parse(seed.get_ref())
                    .map_err(|e| spanned_err("seeds", seed.span(), e.to_string()))?;
                seeds.push(spec);
            }
            seeds
        } else {
            self.seeds.clone()
        };
        let bootstrap_expect = match (
            self.bootstrap_expect,
            file.and_then(|f| f.bootstrap_expect.as_ref()),
        ) {
            (Some(0), _) => {
                return Err(SettingsError::Bad(
                    "bootstrap_expect must be at least 1".into(),
                ));
            }
            (Some(n), _) => n,
            (None, Some(s)) if *s.get_ref() == 0 => {
                return Err(spanned_err(
                    "bootstrap_expect",
                    s.span(),
                    "bootstrap_expect must be at least 1".into(),
                ));
            }
            (None, Some(s)) => *s.get_ref(),
            (None, None) => 1,
        };
        let queen_affinity = match (
            self.queen_affinity,
            file.and_then(|f| f.queen_affinity.as_ref()),
        ) {
            (Some(a), _) if !(0.0..=1.0).contains(&a) => {
                return Err(SettingsError::Bad(format!(
                    "queen_affinity must be within 0.0..=1.0, not {a}"
                )));
            }
            (Some(a), _) => a,
            (None, Some(s)) if !(0.0..=1.0).contains(s.get_ref()) => {
                return Err(spanned_err(
                    "queen_affinity",
                    s.span(),
                    format!(
                        "queen_affinity must be within 0.0..=1.0, not {}",
                        s.get_ref()
                    ),
                ));
            }
            (None, Some(s)) => *s.get_ref(),
            (None, None) => 1.0,
        };
        Ok(Settings {
            colony,
            data_dir,
            ca_dir: self
                .ca_dir
                .clone()
                .or_else(|| from_file(&|f| f.ca_dir.clone())),
            join_token,
            keyring_file: self
                .keyring_file
                .clone()
                .or_else(|| from_file(&|f| f.keys.gossip.clone())),
            seeds,
            mdns: self
                .mdns
                .or_else(|| file.and_then(|f| f.discovery.mdns))
                .unwrap_or(false),
            etcd,
            etcd_tls,
            bind,
            advertise,
            caps_config: self
                .caps_config
                .clone()
                .or_else(|| from_file(&|f| f.caps.clone())),
            log_format: self
                .log_format
                .or_else(|| file.and_then(|f| f.log_format))
                .unwrap_or_default(),
            bootstrap_expect,
            queen_affinity,
            runtime: self
                .runtime
                .or_else(|| file.and_then(|f| f.runtime))
                .unwrap_or_default(),
            metrics_bind: match self
                .metrics_bind
                .or_else(|| file.and_then(|f| f.metrics_bind))
            {
                Some(MetricsBind::Off) => None,
                Some(MetricsBind::At(a)) => Some(a),
                None => Some(crate::metrics::DEFAULT_METRICS_BIND),
            },
            metrics_bind_explicit: self.metrics_bind.is_some()
                || file.is_some_and(|f| f.metrics_bind.is_some()),
        })
    }

    /// What `status`, `apply` and `keys` need: the agent's address (advertise, else bind) and
    /// the admin directory (`--admin-dir`, else `keys.admin`, else the CA directory).
    pub fn resolve_client(&self) -> Result<ClientSettings, SettingsError> {
        let loaded = load(self.config.as_deref())?;
        let file = loaded.as_ref().map(|l| &l.config);
        let base = loaded
            .as_ref()
            .map_or_else(|| PathBuf::from("."), |l| l.base.clone());
        let admin_dir = self
            .admin_dir
            .clone()
            .or_else(|| self.ca_dir.clone())
            .or_else(|| {
                file.and_then(|f| f.keys.admin.clone().or_else(|| f.ca_dir.clone()))
                    .map(|p| relative(&base, p))
            })
            .ok_or_else(|| {
                SettingsError::Missing(
                    "no admin credentials: set `keys.admin` in the config file, \
                     AWARE_ADMIN_DIR or --admin-dir (a directory with admin.crt, admin.key and \
                     ca.crt, as `aware-agent ca init` writes it)"
                        .into(),
                )
            })?;
        let mut addr = self
            .advertise
            .or(self.bind)
            .or_else(|| file.and_then(|f| f.advertise.or(f.bind)))
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)));
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(ClientSettings { addr, admin_dir })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_wrong_types_name_line_and_column() {
        let err = parse_file("colony = \"x\"\nbogus = 1\n", "a.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("a.toml:2:1: "), "{text}");
        assert!(text.contains("bogus"), "{text}");

        let err = parse_file("[discovery]\nmdns = true\nzeroconf = 1\n", "a.toml").unwrap_err();
        assert!(err.to_string().starts_with("a.toml:3:1: "), "{err}");

        let err = parse_file("bind = \"nowhere\"\n", "a.toml").unwrap_err();
        assert!(err.to_string().starts_with("a.toml:1:8: "), "{err}");

        let err = parse_file("log_format = \"xml\"\n", "a.toml").unwrap_err();
        assert!(err.to_string().starts_with("a.toml:1:14: "), "{err}");
    }

    #[test]
    fn metrics_bind_is_loopback_by_default_an_address_or_off() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), "s").unwrap();
        let cfg = dir.path().join("aware.toml");
        let resolve = |text: &str, flag: Option<MetricsBind>| {
            std::fs::write(
                &cfg,
                format!("colony = \"c\"\nbind = \"127.0.0.1:1\"\n{text}ca_dir = \"k\"\n"),
            )
            .unwrap();
            ConfigArgs {
                config: Some(cfg.clone()),
                metrics_bind: flag,
                ..ConfigArgs::default()
            }
            .resolve()
        };
        let s = resolve("", None).unwrap();
        assert_eq!(s.metrics_bind, Some(crate::metrics::DEFAULT_METRICS_BIND));
        assert!(!s.metrics_bind_explicit);
        let s = resolve("metrics_bind = \"off\"\n", None).unwrap();
        assert_eq!((s.metrics_bind, s.metrics_bind_explicit), (None, true));
        let s = resolve(
            "metrics_bind = \"off\"\n",
            Some("127.0.0.1:9".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(s.metrics_bind, Some("127.0.0.1:9".parse().unwrap()));
        let err = resolve("metrics_bind = \"nowhere\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("aware.toml:3:16: `nowhere` is neither"),
            "{err}"
        );
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn flags_win_over_the_file_and_paths_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("join.token"), "tok\n").unwrap();
        let cfg = dir.path().join("aware.toml");
        std::fs::write(
            &cfg,
            "colony = \"file\"\nbind = \"127.0.0.1:9000\"\nseeds = [\"127.0.0.1:9001\"]\n\
             queen_affinity = 0.5\nca_dir = \"ca\"\n[keys]\njoin_token = \"join.token\"\n",
        )
        .unwrap();
        let args = ConfigArgs {
            config: Some(cfg.clone()),
            colony: Some("flag".into()),
            ..ConfigArgs::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.colony, "flag");
        assert_eq!(s.bind, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(s.advertise, s.bind);
        assert_eq!(
            s.seeds,
            vec![SeedSpec::Addr("127.0.0.1:9001".parse().unwrap())]
        );
        assert_eq!(s.queen_affinity, 0.5);
        assert_eq!(s.ca_dir, Some(dir.path().join("ca")));
        assert_eq!(s.join_token.as_deref(), Some("tok"));

        std::fs::write(
            &cfg,
            "colony = \"c\"\nqueen_affinity = 2.0\nbind = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let args = ConfigArgs {
            config: Some(cfg),
            ..ConfigArgs::default()
        };
        let err = args.resolve().unwrap_err().to_string();
        assert!(err.contains("aware.toml:2:18: queen_affinity"), "{err}");
    }

    #[test]
    fn seeds_are_addresses_or_host_names_and_a_bad_one_names_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("aware.toml");
        std::fs::write(
            &cfg,
            "colony = \"c\"\nbind = \"127.0.0.1:9000\"\nseeds = [\"127.0.0.1:9001\", \"seed.rack1.lan:7946\"]\n",
        )
        .unwrap();
        let args = ConfigArgs {
            config: Some(cfg.clone()),
            ..ConfigArgs::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(
            s.seeds,
            vec![
                SeedSpec::Addr("127.0.0.1:9001".parse().unwrap()),
                SeedSpec::Name {
                    host: "seed.rack1.lan".into(),
                    port: 7946
                }
            ]
        );
        std::fs::write(
            &cfg,
            "colony = \"c\"\nbind = \"127.0.0.1:9000\"\nseeds = [\"ok:1\", \"no port\"]\n",
        )
        .unwrap();
        let args = ConfigArgs {
            config: Some(cfg),
            ..ConfigArgs::default()
        };
        let err = args.resolve().unwrap_err().to_string();
        assert!(err.contains("aware.toml:3:18:"), "{err}");
        assert!(err.contains("\"no port\""), "{err}");
    }

    #[test]
    fn etcd_tls_files_come_from_the_file_or_flags_and_a_client_cert_needs_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("aware.toml");
        std::fs::write(
            &cfg,
            "colony = \"c\"\nbind = \"127.0.0.1:9000\"\n[discovery]\netcd = [\"https://10.0.0.1:2379\"]\n\
             etcd_ca = \"ca.pem\"\netcd_cert = \"c.pem\"\netcd_key = \"k.pem\"\n",
        )
        .unwrap();
        let args = ConfigArgs {
            config: Some(cfg.clone()),
            ..ConfigArgs::default()
        };
        let tls = args.resolve().unwrap().etcd_tls.unwrap();
        assert_eq!(tls.ca, dir.path().join("ca.pem"));
        assert_eq!(tls.cert, Some(dir.path().join("c.pem")));
        assert_eq!(tls.key, Some(dir.path().join("k.pem")));
        let args = ConfigArgs {
            colony: Some("c".into()),
            bind: Some("127.0.0.1:9000".parse().unwrap()),
            etcd_cert: Some("c.pem".into()),
            ..ConfigArgs::default()
        };
        let err = args.resolve().unwrap_err().to_string();
        assert!(err.contains("need etcd_ca"), "{err}");
    }

    #[test]
    fn an_unspecified_bind_needs_an_advertise_address() {
        let args = ConfigArgs {
            colony: Some("c".into()),
            ..ConfigArgs::default()
        };
        assert!(
            args.resolve()
                .unwrap_err()
                .to_string()
                .contains("advertise")
        );
    }
}
