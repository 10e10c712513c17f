//! Discovery: finds candidate peers for the colony from any combination of three sources and
//! hands them to the driver. It only *finds* peers; SWIM *judges* them. A peer that disappears
//! from mDNS or etcd is not reported down (its goodbye or an expired lease only makes discovery
//! forget it, so that its return is reported again).
//!
//! - **Seeds** ([`seeds`]): static `host:port` or `ip:port` strings. Host names are resolved at
//!   start and re-resolved every `seed_refresh_ms` (quick retries with backoff while a name does
//!   not resolve).
//! - **mDNS** ([`mdns`]): announces `<node-id>._aware._udp.local.` with the node's gossip (= QUIC)
//!   port and, in TXT, its node id and colony name (plus its address when it advertises a
//!   concrete one); browses the same type and ignores other colonies. Zero configuration.
//! - **etcd** ([`etcd`]): registers `<prefix>/<colony>/members/<node-id>` → JSON
//!   `{"node","addr","colony"}` under a lease that it keeps alive, and watches the prefix. For
//!   colonies that span subnets.
//!
//! Everything a source reports goes through one emitter that remembers what the driver was told
//! (`dedupe`): only new or changed `(node, addr)` pairs reach the [`Discovered`] channel.
//! The node's own id and advertised address are never reported.

mod backoff;
mod dedupe;
pub mod etcd;
mod legacy_query;
pub mod mdns;
pub mod seeds;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use swarm_core::id::NodeId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use etcd::{EtcdConfig, EtcdTls};
pub use mdns::MdnsConfig;

/// Capacity of the channel of [`Discovered`] peers handed to the driver. A full channel makes
/// the sources wait (they lose nothing that matters: the next report of a peer is sent again).
pub const DISCOVERED_QUEUE: usize = 1024;
/// Capacity of the internal queue from the sources to the emitter.
pub const OBSERVATION_QUEUE: usize = 1024;
/// At most this many peers are remembered, per source and by the emitter's dedupe; the oldest
/// is forgotten first (it is then re-sent if reported again).
pub const MAX_KNOWN_PEERS: usize = 16_384;
/// At most this many seed strings in a configuration.
pub const MAX_SEEDS: usize = 1024;
/// Colony names are DNS-label sized: they go into mDNS TXT records and etcd keys.
pub const MAX_COLONY_NAME_BYTES: usize = 63;
/// `shutdown()` waits at most this long in total for the mDNS goodbye and the etcd revoke.
pub const SHUTDOWN_TIMEOUT_MS: u64 = 3_000;

/// Where a peer was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Seed,
    Mdns,
    Etcd,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Seed => "seed",
            Source::Mdns => "mdns",
            Source::Etcd => "etcd",
        })
    }
}

/// A candidate peer. `node` is `None` for a seed (its id is learned by gossip); the driver puts
/// those in the node's seed list and known ids into `dna::Node::add_known_members`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discovered {
    pub node: Option<NodeId>,
    pub addr: SocketAddr,
    pub source: Source,
}

/// Which sources to run. Any combination may be enabled; all three off is allowed (the driver
/// then relies on what it persisted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// `host:port` or `ip:port` (IPv6 in brackets). Names are re-resolved periodically.
    pub seeds: Vec<String>,
    /// How often seed host names are resolved again.
    pub seed_refresh_ms: u64,
    /// LAN mDNS, on by default (zero configuration).
    pub mdns: MdnsConfig,
    /// The etcd registry, off unless configured.
    pub etcd: Option<EtcdConfig>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            seeds: Vec::new(),
            seed_refresh_ms: 30_000,
            mdns: MdnsConfig::default(),
            etcd: None,
        }
    }
}

impl DiscoveryConfig {
    /// Checks the configuration without starting anything.
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        if self.seeds.len() > MAX_SEEDS {
            return Err(DiscoveryError::Config(format!(
                "{} seeds given, at most {MAX_SEEDS} are allowed",
                self.seeds.len()
            )));
        }
        for s in &self.seeds {
            seeds::SeedSpec::parse(s)?;
        }
        if !(100..=86_400_000).contains(&self.seed_refresh_ms) {
            return Err(DiscoveryError::Config(format!(
                "seed_refresh_ms = {} is outside 100..=86400000",
                self.seed_refresh_ms
            )));
        }
        self.mdns.validate()?;
        if let Some(e) = &self.etcd {
            e.validate()?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "colony name {0:?} is not valid: use 1 to {MAX_COLONY_NAME_BYTES} ASCII letters, digits, '-', '_' or '.'"
    )]
    BadColony(String),
    #[error("node id 0 is reserved for \"unknown\" and cannot be announced")]
    UnknownNode,
    #[error("advertised address {0} has port 0; advertise the gossip port the node listens on")]
    NoPort(SocketAddr),
    #[error("seed {seed:?}: {why}")]
    BadSeed { seed: String, why: String },
    #[error("discovery config: {0}")]
    Config(String),
    #[error("Discovery::start must be called from inside a tokio runtime")]
    NoRuntime,
}

/// Checks a colony name (it goes into mDNS TXT records and etcd keys).
pub fn validate_colony(colony: &str) -> Result<(), DiscoveryError> {
    let ok = !colony.is_empty()
        && colony.len() <= MAX_COLONY_NAME_BYTES
        && colony
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(DiscoveryError::BadColony(colony.to_string()))
    }
}

/// Parses a node id written as exactly 16 hex digits (how [`NodeId`] displays). Rejects the
/// reserved id 0.
pub fn parse_node_hex(s: &str) -> Option<NodeId> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match u64::from_str_radix(s, 16) {
        Ok(0) | Err(_) => None,
        Ok(v) => Some(NodeId(v)),
    }
}

/// Who this node is, as every source needs to know it.
#[derive(Clone, Debug)]
pub(crate) struct Me {
    pub(crate) colony: String,
    pub(crate) node: NodeId,
    pub(crate) addr: SocketAddr,
}

impl Me {
    /// Peers are reported only in the address family this node advertises: its one UDP socket
    /// speaks that family.
    pub(crate) fn same_family(&self, addr: &SocketAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4()
    }
}

/// What a source saw.
#[derive(Debug)]
pub(crate) enum Observation {
    Seen(Discovered),
    /// The source saw the peer leave (mDNS goodbye, etcd key deleted, a seed name no longer
    /// resolving to it). Not a verdict: it only lets a return be reported again.
    Gone {
        node: Option<NodeId>,
        addr: SocketAddr,
    },
}

/// A source's handle on the emitter. Sending gives up when discovery is stopping, so that a
/// driver that stopped reading cannot keep a source from saying goodbye.
#[derive(Clone, Debug)]
pub(crate) struct Sink {
    me: Me,
    tx: mpsc::Sender<Observation>,
    stop: watch::Receiver<bool>,
}

impl Sink {
    /// Reports a peer; false once discovery is stopping.
    pub(crate) async fn seen(
        &mut self,
        node: Option<NodeId>,
        addr: SocketAddr,
        source: Source,
    ) -> bool {
        if node == Some(self.me.node) || addr == self.me.addr || !self.me.same_family(&addr) {
            return true;
        }
        self.send(Observation::Seen(Discovered { node, addr, source }))
            .await
    }

    pub(crate) async fn gone(&mut self, node: Option<NodeId>, addr: SocketAddr) -> bool {
        self.send(Observation::Gone { node, addr }).await
    }

    async fn send(&mut self, o: Observation) -> bool {
        if *self.stop.borrow() {
            return false;
        }
        tokio::select! {
            r = self.tx.send(o) => r.is_ok(),
            _ = stopped(&mut self.stop) => false,
        }
    }
}

/// Resolves once the stop flag is raised (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped: that is a stop too.
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleeps for `d` unless discovery stops first; true if it stopped.
pub(crate) async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stopped(stop) => true,
    }
}

/// The running discovery sources. Dropping it stops them too (they still say goodbye in the
/// background if the runtime lives on); [`Discovery::shutdown`] waits for the goodbye.
#[derive(Debug)]
pub struct Discovery {
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Discovery {
    /// Starts the configured sources for node `node` of `colony`, reachable at `addr` (its gossip
    /// and QUIC address; an unspecified IP such as `0.0.0.0` lets mDNS announce each interface's
    /// own address). Returns the handle and the channel of discovered peers; the channel closes
    /// after shutdown, and dropping it stops the sources as well. Must be called inside a tokio
    /// runtime. Fails only on invalid input:
    /// unreachable etcd, missing interfaces or unresolvable names are retried in the background.
    pub fn start(
        colony: &str,
        node: NodeId,
        addr: SocketAddr,
        config: DiscoveryConfig,
    ) -> Result<(Discovery, mpsc::Receiver<Discovered>), DiscoveryError> {
        validate_colony(colony)?;
        if node == NodeId::UNKNOWN {
            return Err(DiscoveryError::UnknownNode);
        }
        if addr.port() == 0 {
            return Err(DiscoveryError::NoPort(addr));
        }
        config.validate()?;
        // Unreadable TLS files are a configuration error now, not an etcd outage later.
        if let Some(tls) = config.etcd.as_ref().and_then(|e| e.tls.as_ref()) {
            tls.load()?;
        }
        let me = Me {
            colony: colony.to_string(),
            node,
            addr,
        };
        let seed_specs = seeds::SeedSpec::parse_all(&config.seeds, &me)?;
        let rt = tokio::runtime::Handle::try_current().map_err(|_| DiscoveryError::NoRuntime)?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let (obs_tx, obs_rx) = mpsc::channel(OBSERVATION_QUEUE);
        let (out_tx, out_rx) = mpsc::channel(DISCOVERED_QUEUE);
        let sink = Sink {
            me: me.clone(),
            tx: obs_tx,
            stop: stop_rx.clone(),
        };
        let mut tasks = Vec::new();
        if !seed_specs.is_empty() {
            let refresh = Duration::from_millis(config.seed_refresh_ms);
            tasks.push((
                "seeds",
                rt.spawn(seeds::run(
                    seed_specs,
                    refresh,
                    sink.clone(),
                    stop_rx.clone(),
                )),
            ));
        }
        if config.mdns.enabled {
            tasks.push((
                "mdns",
                rt.spawn(mdns::run(
                    me.clone(),
                    config.mdns.clone(),
                    sink.clone(),
                    stop_rx.clone(),
                )),
            ));
        }
        if let Some(e) = config.etcd {
            tasks.push((
                "etcd",
                rt.spawn(etcd::run(me.clone(), e, sink.clone(), stop_rx.clone())),
            ));
        }
        // The emitter ends when every source has dropped its sink.
        drop(sink);
        rt.spawn(emit(obs_rx, out_tx));
        tracing::info!(
            colony,
            node = %node,
            %addr,
            sources = ?tasks.iter().map(|t| t.0).collect::<Vec<_>>(),
            "discovery started"
        );
        Ok((
            Discovery {
                stop: stop_tx,
                tasks,
            },
            out_rx,
        ))
    }

    /// Stops every source: mDNS sends its goodbye (unregister), etcd revokes the lease. Waits
    /// at most [`SHUTDOWN_TIMEOUT_MS`] in total, then abandons what has not finished.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SHUTDOWN_TIMEOUT_MS);
        for (name, mut task) in self.tasks.drain(..) {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(
                    source = name,
                    "discovery source did not stop in time; abandoned"
                );
                task.abort();
            }
        }
        tracing::info!("discovery stopped");
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Forwards only new or changed `(node, addr)` pairs to the driver.
async fn emit(mut rx: mpsc::Receiver<Observation>, tx: mpsc::Sender<Discovered>) {
    let mut seen = dedupe::Dedupe::new(MAX_KNOWN_PEERS);
    while let Some(o) = rx.recv().await {
        match o {
            Observation::Seen(d) => {
                if seen.admit(d.node, d.addr) {
                    tracing::debug!(node = ?d.node.map(|n| n.to_string()), addr = %d.addr, source = %d.source, "discovered");
                    if tx.send(d).await.is_err() {
                        return;
                    }
                }
            }
            Observation::Gone { node, addr } => seen.forget(node, addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colony_names() {
        for ok in ["a", "web-tier", "shop_2", "x.y", &"c".repeat(63)] {
            assert!(validate_colony(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "slash/y", "ünï", &"c".repeat(64)] {
            let e = validate_colony(bad).unwrap_err().to_string();
            assert!(e.contains("not valid"), "{bad}: {e}");
        }
    }

    #[test]
    fn node_hex_round_trips_and_rejects_junk() {
        let n = NodeId(0x0123_4567_89ab_cdef);
        assert_eq!(parse_node_hex(&n.to_string()), Some(n));
        assert_eq!(parse_node_hex("0123456789ABCDEF"), Some(n));
        for bad in [
            "",
            "0123456789abcde",
            "0123456789abcdef0",
            "+123456789abcdef",
            "0123456789abcdeg",
            "0000000000000000",
        ] {
            assert_eq!(parse_node_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = DiscoveryConfig::default();
        assert!(c.mdns.enabled, "mDNS is on by default: zero configuration");
        assert!(c.etcd.is_none());
        c.validate().expect("defaults are valid");
        let c = DiscoveryConfig {
            seeds: vec!["no-port".into()],
            ..DiscoveryConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("no-port"), "{e}");
        let c: DiscoveryConfig =
            serde_json::from_str(r#"{"seeds":["a:1"],"mdns":{"enabled":false},"etcd":{"endpoints":["http://127.0.0.1:2379"]}}"#)
                .expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.etcd.as_ref().map(|e| e.lease_ttl_s), Some(5));
        let e = serde_json::from_str::<DiscoveryConfig>(r#"{"sedes":[]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sedes"), "{e}");
    }

    #[tokio::test]
    async fn start_rejects_bad_input_with_clear_errors() {
        let addr: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let off = DiscoveryConfig {
            mdns: MdnsConfig {
                enabled: false,
                ..MdnsConfig::default()
            },
            ..DiscoveryConfig::default()
        };
        let e = Discovery::start("bad name", NodeId(1), addr, off.clone()).unwrap_err();
        assert!(matches!(e, DiscoveryError::BadColony(_)));
        let e = Discovery::start("c", NodeId::UNKNOWN, addr, off.clone()).unwrap_err();
        assert!(matches!(e, DiscoveryError::UnknownNode));
        let e = Discovery::start(
            "c",
            NodeId(1),
            "127.0.0.1:0".parse().expect("addr"),
            off.clone(),
        )
        .unwrap_err();
        assert!(matches!(e, DiscoveryError::NoPort(_)));
        let six = DiscoveryConfig {
            seeds: vec!["[::1]:7000".into()],
            ..off.clone()
        };
        let e = Discovery::start("c", NodeId(1), addr, six)
            .unwrap_err()
            .to_string();
        assert!(e.contains("IPv6") && e.contains("[::1]:7000"), "{e}");
        // Nothing enabled: runs, yields nothing, shuts down at once.
        let (d, mut rx) = Discovery::start("c", NodeId(1), addr, off).expect("starts");
        d.shutdown().await;
        assert!(
            rx.recv().await.is_none(),
            "the channel closes after shutdown"
        );
    }

    #[test]
    fn start_outside_a_runtime_is_an_error_not_a_panic() {
        let off = DiscoveryConfig {
            mdns: MdnsConfig {
                enabled: false,
                ..MdnsConfig::default()
            },
            ..DiscoveryConfig::default()
        };
        let e = Discovery::start("c", NodeId(1), "127.0.0.1:7000".parse().expect("addr"), off)
            .unwrap_err();
        assert!(matches!(e, DiscoveryError::NoRuntime));
    }
}
