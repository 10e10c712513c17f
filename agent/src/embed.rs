//! The embedding API: start a colony node inside your own tokio runtime with [`AgentBuilder`],
//! then talk to it through [`Agent`] (or a cloneable [`Handle`]): a stream of [`AgentEvent`]s,
//! [`Status`], applying a spec on the queen, and a clean shutdown. `aware-agent run` is built
//! on exactly this API.
//!
//! The node's transport is [`SecureTransport`]: sealed gossip under the colony keyring and
//! mutual-TLS QUIC on one UDP port, which also serves the control plane ([`AgentControl`]).
//! Its credentials come from [`crate::trust`]: the data directory, a CA directory
//! ([`AgentBuilder::ca_dir`]) or a join token ([`AgentBuilder::join_token`]).

use crate::control_plane::AgentControl;
use crate::discovery::{Discovery, DiscoveryConfig};
use crate::driver::{ApplyError, COMMAND_QUEUE, Clock, Command, Driver, DriverError, Parts};
use crate::events::{AgentEvent, EVENT_CHANNEL};
use crate::net::control::{ControlRequest, ControlResponse, ErrorCode};
use crate::net::gossip::{self, GossipCrypto};
use crate::net::{Net, NetConfig, NetError};
use crate::persist::{PersistError, StateDir};
use crate::secure::SecureTransport;
use crate::status::{AppliedPlan, Status};
use crate::transport::{Inbound, Transport};
use crate::trust::{self, CertDue, TrustError};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use swarm_core::envelope::{Key, Keyring};
use swarm_core::spec::ColonySpec;
use swarm_core::swim::SwimId;
use swarm_core::{Capabilities, NodeId};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

/// Why an agent could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data directory or its state file (named in the message) cannot be used.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// The socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The node has no certificate and was given no way to get one.
    #[error(
        "{0} holds no node certificate: start it with a CA directory (ca_dir, --ca-dir) on a node that holds the colony CA, or with a join token (join_token, --join-token) and seeds"
    )]
    NoCredentials(PathBuf),
    /// The node has no gossip keyring and was given none.
    #[error(
        "{0} holds no gossip keyring: give one (keyring file, --keyring, or a CA directory with a keyring), or join with a token"
    )]
    NoKeyring(PathBuf),
    /// The node's certificate has expired and the node holds no CA to renew it.
    #[error(
        "{dir}: this node's certificate expired at {not_after} and peers refuse it: start the node once with the CA directory (ca_dir, --ca-dir) to renew it, or remove {dir} and join again with a token"
    )]
    CertExpired {
        /// The node's TLS directory.
        dir: PathBuf,
        /// When it expired (RFC 3339).
        not_after: String,
    },
    /// Credentials or keyring files could not be used.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The QUIC endpoint could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Joining with a token failed.
    #[error("join: {0}")]
    Join(String),
    /// Discovery could not start (bad colony name, etcd endpoint, ...).
    #[error(transparent)]
    Discovery(#[from] crate::discovery::DiscoveryError),
    /// [`AgentBuilder::data_dir`] was not called.
    #[error("no data directory: call AgentBuilder::data_dir")]
    NoDataDir,
    /// Bound to `0.0.0.0` with no [`AgentBuilder::advertise`] address.
    #[error("bound to {0}, which peers cannot reach: call AgentBuilder::advertise")]
    NoAdvertise(SocketAddr),
    /// The node configuration is invalid (e.g. `queen_affinity` outside `0..=1`).
    #[error(transparent)]
    Node(#[from] dna::config::ConfigError),
    /// No randomness for the node id or the node's RNG seed.
    #[error("the operating system's random number generator failed: {0}")]
    Rng(String),
    /// The driver stopped on an error (e.g. the disk refused a write).
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The agent is no longer running.
    #[error("the agent has stopped")]
    Stopped,
    /// A task of the agent panicked or was cancelled.
    #[error("the agent task failed: {0}")]
    Task(String),
    /// The workload runtime or the reconciler could not be set up.
    #[error(transparent)]
    Workloads(#[from] crate::workloads::WorkloadsError),
}

/// Configures and starts an [`Agent`].
///
/// ```no_run
/// # async fn demo() -> Result<(), aware_agent::AgentError> {
/// let agent = aware_agent::AgentBuilder::new("my-colony")
///     // made once with `aware-agent ca init --dir /etc/aware/ca --colony my-colony`
///     .ca_dir("/etc/aware/ca")
///     .data_dir("/var/lib/my-app/aware")
///     .bind("10.0.0.5:7946".parse().expect("an address"))
///     .seeds(["10.0.0.1:7946".parse().expect("an address")])
///     .start()
///     .await?;
/// println!("node {} is up", agent.id());
/// agent.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct AgentBuilder {
    colony: String,
    keyring: Option<Keyring>,
    keyring_file: Option<PathBuf>,
    ca_dir: Option<PathBuf>,
    join_token: Option<String>,
    discovery: Option<DiscoveryConfig>,
    data_dir: Option<PathBuf>,
    bind: SocketAddr,
    advertise: Option<SocketAddr>,
    seeds: Vec<SocketAddr>,
    caps: Option<Capabilities>,
    bootstrap_expect: usize,
    queen_affinity: f64,
    transport: Option<(Box<dyn Transport>, mpsc::Receiver<Inbound>)>,
    events: broadcast::Sender<AgentEvent>,
    runtime: crate::workloads::RuntimeChoice,
    stop_workloads: bool,
    reconciler: crate::reconcile::ReconcilerConfig,
}

impl std::fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentBuilder")
            .field("colony", &self.colony)
            .field("data_dir", &self.data_dir)
            .field("bind", &self.bind)
            .field("advertise", &self.advertise)
            .field("seeds", &self.seeds)
            .finish_non_exhaustive()
    }
}

impl AgentBuilder {
    /// A node of colony `colony`, binding `0.0.0.0:7946` unless told otherwise.
    pub fn new(colony: impl Into<String>) -> AgentBuilder {
        AgentBuilder {
            colony: colony.into(),
            keyring: None,
            keyring_file: None,
            ca_dir: None,
            join_token: None,
            discovery: None,
            data_dir: None,
            bind: SocketAddr::from(([0, 0, 0, 0], crate::config::DEFAULT_PORT)),
            advertise: None,
            seeds: Vec::new(),
            caps: None,
            bootstrap_expect: 1,
            queen_affinity: 1.0,
            transport: None,
            events: broadcast::channel(EVENT_CHANNEL).0,
            runtime: crate::workloads::RuntimeChoice::None,
            stop_workloads: false,
            reconciler: crate::reconcile::ReconcilerConfig::default(),
        }
    }

    /// Which runtime runs the replicas the colony assigns to this node (default
    /// [`RuntimeChoice::None`](crate::workloads::RuntimeChoice::None): nothing runs, as an
    /// embedder may place work itself from [`AgentEvent::Assigned`]; `aware-agent run` uses the
    /// process runtime unless configured otherwise).
    pub fn runtime_choice(mut self, choice: crate::workloads::RuntimeChoice) -> AgentBuilder {
        self.runtime = choice;
        self
    }

    /// Runs this node's replicas on the embedder's own [`Runtime`](crate::runtime::Runtime).
    pub fn runtime(self, runtime: Arc<dyn crate::runtime::Runtime>) -> AgentBuilder {
        self.runtime_choice(crate::workloads::RuntimeChoice::Custom(runtime))
    }

    /// Whether [`Agent::shutdown`] stops this node's replicas (a node retiring from the colony)
    /// instead of leaving them running for the next agent on this data directory to adopt
    /// (the default: an upgrade or restart does not restart the workloads).
    pub fn stop_workloads_on_shutdown(mut self, stop: bool) -> AgentBuilder {
        self.stop_workloads = stop;
        self
    }

    /// The reconciler's tunables (restart backoff, crash loops, ...).
    pub fn reconciler_config(mut self, cfg: crate::reconcile::ReconcilerConfig) -> AgentBuilder {
        self.reconciler = cfg;
        self
    }

    /// The gossip key to start with when the data directory holds no keyring yet (afterwards
    /// the data directory's keyring, which `aware-agent keys` rotates, wins).
    pub fn key(mut self, key: Key) -> AgentBuilder {
        self.keyring = Some(Keyring::new(key));
        self
    }

    /// [`AgentBuilder::key`] derived from a passphrase (BLAKE3 key derivation): every node
    /// given the same passphrase seals with the same key.
    pub fn passphrase(self, passphrase: &str) -> AgentBuilder {
        self.key(Key::from_bytes(blake3::derive_key(
            "aware gossip key v1",
            passphrase.as_bytes(),
        )))
    }

    /// A keyring file (`keyring` format: one base64 key per line, the primary first) to start
    /// with when the data directory holds none.
    pub fn keyring_file(mut self, path: impl Into<PathBuf>) -> AgentBuilder {
        self.keyring_file = Some(path.into());
        self
    }

    /// A colony CA directory (`aware-agent ca init`). With `ca.key` in it, this node issues
    /// its own certificate and signs the joins of others; its `keyring` is the starting
    /// keyring. See [`crate::trust::init_local_colony`].
    pub fn ca_dir(mut self, dir: impl Into<PathBuf>) -> AgentBuilder {
        self.ca_dir = Some(dir.into());
        self
    }

    /// A join token (`aware-agent token create`): a node without a certificate makes its own
    /// key, gets its certificate signed through one of its seeds, and fetches the keyring.
    pub fn join_token(mut self, token: impl Into<String>) -> AgentBuilder {
        self.join_token = Some(token.into());
        self
    }

    /// Discovery sources (static seeds by name, mDNS, etcd); every address found is handed
    /// to the node as a seed. Off unless set.
    pub fn discovery(mut self, config: DiscoveryConfig) -> AgentBuilder {
        self.discovery = Some(config);
        self
    }

    /// Where the node keeps its state (created if missing; locked while the agent runs).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> AgentBuilder {
        self.data_dir = Some(dir.into());
        self
    }

    /// The UDP address to bind. Port 0 picks a free port.
    pub fn bind(mut self, addr: SocketAddr) -> AgentBuilder {
        self.bind = addr;
        self
    }

    /// The address peers reach this node at (default: the bound address, which must then not
    /// be `0.0.0.0`).
    pub fn advertise(mut self, addr: SocketAddr) -> AgentBuilder {
        self.advertise = Some(addr);
        self
    }

    /// Addresses of nodes to announce to at start.
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = SocketAddr>) -> AgentBuilder {
        self.seeds = seeds.into_iter().collect();
        self
    }

    /// This node's capabilities (default: detected from the host and the data directory).
    pub fn capabilities(mut self, caps: Capabilities) -> AgentBuilder {
        self.caps = Some(caps);
        self
    }

    /// Cold start: a queen needs votes from a majority of this many nodes (default 1).
    pub fn bootstrap_expect(mut self, n: usize) -> AgentBuilder {
        self.bootstrap_expect = n;
        self
    }

    /// Weight in `0.0..=1.0` for standing as queen; 0 never stands (default 1).
    pub fn queen_affinity(mut self, affinity: f64) -> AgentBuilder {
        self.queen_affinity = affinity;
        self
    }

    /// Uses an already bound transport (and the queue it delivers frames to) instead of the
    /// sealed QUIC transport on [`AgentBuilder::bind`] (no credentials and no control plane
    /// then): for tests of the driver.
    pub fn transport(
        mut self,
        transport: Box<dyn Transport>,
        inbound: mpsc::Receiver<Inbound>,
    ) -> AgentBuilder {
        self.transport = Some((transport, inbound));
        self
    }

    /// A receiver that sees every event from the very start, including those the node emits
    /// at boot (the assignments it restored from disk). [`Agent::events`] subscribes later.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// Opens the data directory, binds the socket, writes the boot state durably and starts the
    /// driver task on the current tokio runtime.
    pub async fn start(mut self) -> Result<Agent, AgentError> {
        let data_dir = self.data_dir.clone().ok_or(AgentError::NoDataDir)?;
        let dir = data_dir.clone();
        let (store, disk) = tokio::task::spawn_blocking(move || {
            let store = StateDir::open(&dir)?;
            let disk = store.load()?;
            Ok::<_, PersistError>((store, disk))
        })
        .await
        .map_err(|e| AgentError::Task(e.to_string()))??;
        let caps = match self.caps.take() {
            Some(c) => c,
            None => {
                let dir = data_dir.clone();
                tokio::task::spawn_blocking(move || {
                    crate::caps::detect(&crate::caps::DetectEnv::host(Some(&dir)))
                })
                .await
                .map_err(|e| AgentError::Task(e.to_string()))?
            }
        };
        let id = match &disk {
            Some(d) => d.node,
            None => crate::persist::random_node_id().map_err(|e| AgentError::Rng(e.to_string()))?,
        };
        let (transport, inbound, secure, cert_not_after) = match self.transport.take() {
            Some((t, i)) => (t, i, None, None),
            None => {
                let (t, i, control, not_after) = self.secure(&data_dir, id).await?;
                let parts = (t.net().clone(), t.gossip().clone(), control);
                (
                    Box::new(t) as Box<dyn Transport>,
                    i,
                    Some(parts),
                    Some(not_after),
                )
            }
        };
        let local = transport.local_addr();
        let advertise = match self.advertise {
            Some(a) => a,
            None if local.ip().is_unspecified() => return Err(AgentError::NoAdvertise(local)),
            None => local,
        };
        let mut cfg = dna::Config::new(id, advertise);
        cfg.seeds = self.seeds.clone();
        cfg.caps = caps;
        cfg.queen_affinity = self.queen_affinity;
        cfg.bootstrap_expect = self.bootstrap_expect;
        let seed = getrandom::u64().map_err(|e| AgentError::Rng(e.to_string()))?;
        let clock = Clock::start();
        let restarted = disk.is_some();
        let node = dna::Node::new(cfg, disk, clock.now(), seed)?;
        tracing::info!(
            node = %id,
            addr = %advertise,
            colony = %self.colony,
            incarnation = node.incarnation(),
            term = node.term(),
            restarted,
            "agent starting"
        );
        let runtime =
            crate::workloads::open_runtime(self.runtime, id, advertise.ip(), &data_dir).await?;
        let (workloads, reports) = crate::workloads::Workloads::start(
            &self.colony,
            id,
            advertise.ip(),
            runtime,
            self.reconciler,
            self.stop_workloads,
        )?;
        let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
        if let Some(reports) = reports {
            crate::workloads::forward_reports(reports, tx.downgrade());
        }
        let mut driver = Driver::new(Parts {
            node,
            colony: self.colony.clone(),
            clock,
            transport,
            inbound,
            commands,
            events: self.events.clone(),
            store: Arc::new(store),
        });
        driver.set_workloads(workloads);
        // The new incarnation (and, on first boot, the id) is on disk before anything leaves.
        driver.persist().await?;
        let task = tokio::spawn(driver.run());
        let handle = Handle {
            tx,
            id,
            addr: advertise,
            local,
            cert_not_after,
        };
        if let Some((net, gossip, control)) = secure {
            control.attach(handle.clone(), net, gossip);
        }
        let discovery = match self.discovery.take() {
            Some(config) => Some(start_discovery(&self.colony, &handle, config)?),
            None => None,
        };
        Ok(Agent {
            handle,
            task,
            events: self.events,
            discovery,
        })
    }

    /// The sealed QUIC transport with this node's certificate and keyring (see
    /// [`crate::trust`]), and the control plane it serves.
    async fn secure(
        &self,
        data_dir: &Path,
        id: NodeId,
    ) -> Result<
        (
            SecureTransport,
            mpsc::Receiver<Inbound>,
            Arc<AgentControl>,
            SystemTime,
        ),
        AgentError,
    > {
        let tls_dir = data_dir.join(trust::TLS_DIR);
        let ca_dir = self
            .ca_dir
            .as_ref()
            .filter(|d| d.join(crate::pki::CA_KEY_FILE).exists());
        let mut creds = match (trust::load_node(&tls_dir, id), ca_dir) {
            (Ok(c), _) => c,
            // A node holding the CA heals its own damaged credentials (e.g. a crash between
            // writing a renewed key and its certificate) by issuing new ones.
            (Err(TrustError::Pki(e)), Some(_)) => {
                tracing::warn!(dir = %tls_dir.display(), error = %e, "this node's credentials cannot be used; issuing new ones");
                None
            }
            (Err(e), _) => return Err(e.into()),
        };
        let now = trust::wall_clock();
        let mut signer = None;
        if let Some(ca_dir) = ca_dir {
            match creds
                .as_ref()
                .map(|c| (c.not_after(), trust::cert_due(c.not_after(), now)))
            {
                None => {
                    creds = Some(trust::issue_node(ca_dir, id, &tls_dir)?);
                    tracing::info!(node = %id, ca = %ca_dir.display(), "issued this node's certificate");
                }
                Some((old, CertDue::Soon { .. } | CertDue::Expired)) => {
                    creds = Some(trust::issue_node(ca_dir, id, &tls_dir)?);
                    tracing::info!(node = %id, ca = %ca_dir.display(), was_valid_until = %humantime::format_rfc3339_seconds(old), "renewed this node's certificate");
                }
                Some((_, CertDue::Fine)) => {}
            }
            signer = Some(Arc::new(
                crate::pki::Ca::load(ca_dir).map_err(TrustError::from)?,
            ));
        }
        if let Some(c) = &creds {
            match trust::cert_due(c.not_after(), now) {
                CertDue::Fine => {}
                CertDue::Soon { days_left } => tracing::warn!(
                    days_left,
                    valid_until = %humantime::format_rfc3339_seconds(c.not_after()),
                    "this node's certificate expires soon: start the node once with the CA directory (--ca-dir) to renew it, or remove {} and join again with a token",
                    tls_dir.display()
                ),
                CertDue::Expired => {
                    return Err(AgentError::CertExpired {
                        dir: tls_dir,
                        not_after: humantime::format_rfc3339_seconds(c.not_after()).to_string(),
                    });
                }
            }
        }
        let control = AgentControl::new();
        let mut config = NetConfig::new(self.bind);
        config.credentials = creds.clone();
        config.signer = signer;
        config.signers = self.seeds.clone();
        let (net, channels) = match Net::bind(config, control.clone()).await {
            Ok(n) => n,
            Err(NetError::Io(source)) => {
                return Err(AgentError::Bind {
                    addr: self.bind,
                    source,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let mut joined_via = None;
        let mut not_after = creds.as_ref().map(crate::pki::Credentials::not_after);
        if creds.is_none() {
            let Some(token) = &self.join_token else {
                return Err(AgentError::NoCredentials(tls_dir));
            };
            let (c, via) = join(&net, &self.seeds, token, id).await?;
            c.save(&tls_dir, crate::pki::NODE_STEM)
                .map_err(TrustError::from)?;
            not_after = Some(c.not_after());
            tracing::info!(node = %id, via = %via, "joined the colony: certificate signed");
            joined_via = Some(via);
        }
        let keyring = match gossip::load_keyring(data_dir).map_err(TrustError::from)? {
            Some(k) => k,
            None => {
                let start = match trust::initial_keyring(
                    self.keyring_file.as_deref(),
                    self.ca_dir.as_deref(),
                )? {
                    Some(k) => Some(k),
                    None => self.keyring.clone(),
                };
                let k = match (start, joined_via) {
                    (Some(k), _) => k,
                    (None, Some(via)) => fetch_keyring(&net, via).await?,
                    (None, None) => return Err(AgentError::NoKeyring(data_dir.to_path_buf())),
                };
                gossip::save_keyring(data_dir, &k).map_err(TrustError::from)?;
                k
            }
        };
        let session = trust::next_session(data_dir)?;
        let gossip = Arc::new(GossipCrypto::new(
            id,
            session,
            keyring,
            net.counters().clone(),
            Some(data_dir.to_path_buf()),
        ));
        let (transport, inbound) =
            SecureTransport::new(net, channels, gossip).map_err(|source| AgentError::Bind {
                addr: self.bind,
                source,
            })?;
        let not_after = not_after.ok_or(AgentError::NoCredentials(tls_dir))?;
        Ok((transport, inbound, control, not_after))
    }
}

/// How long a node with a join token keeps trying its seeds.
pub const JOIN_TIMEOUT_MS: u64 = 60_000;
/// Pause between rounds over the seeds while joining.
pub const JOIN_RETRY_MS: u64 = 500;

/// Joins through the first seed that answers. A refused token or CSR ends it at once: a node
/// without a valid token is never admitted.
async fn join(
    net: &Net,
    seeds: &[SocketAddr],
    token: &str,
    id: NodeId,
) -> Result<(crate::pki::Credentials, SocketAddr), AgentError> {
    if seeds.is_empty() {
        return Err(AgentError::Join(
            "a join token needs at least one seed to join through".into(),
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(JOIN_TIMEOUT_MS);
    let mut last = String::new();
    loop {
        for seed in seeds {
            match net.join(*seed, token, id).await {
                Ok(creds) => return Ok((creds, *seed)),
                Err(
                    e @ NetError::Refused {
                        code: ErrorCode::TokenRefused | ErrorCode::CsrRefused,
                        ..
                    },
                ) => return Err(AgentError::Join(format!("{seed}: {e}"))),
                Err(e @ (NetError::Pki(_) | NetError::Join(_))) => {
                    return Err(AgentError::Join(e.to_string()));
                }
                Err(e) => last = format!("{seed}: {e}"),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::Join(format!(
                "no seed admitted this node within {JOIN_TIMEOUT_MS} ms (last: {last})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(JOIN_RETRY_MS)).await;
    }
}

/// The keyring of the node that admitted us, over mutual TLS.
async fn fetch_keyring(net: &Net, via: SocketAddr) -> Result<Keyring, AgentError> {
    match net
        .request(via, None, &ControlRequest::KeyringExport)
        .await?
    {
        ControlResponse::KeyringText { text } => Keyring::from_text(&text)
            .map_err(|e| AgentError::Join(format!("the keyring from {via}: {e}"))),
        other => Err(AgentError::Join(format!(
            "asked {via} for the keyring, got {other:?}"
        ))),
    }
}

/// Starts discovery and hands every address it finds to the node as a seed.
fn start_discovery(
    colony: &str,
    handle: &Handle,
    config: DiscoveryConfig,
) -> Result<Discovery, AgentError> {
    let (discovery, mut found) = Discovery::start(colony, handle.id(), handle.addr(), config)?;
    let handle = handle.clone();
    tokio::spawn(async move {
        while let Some(d) = found.recv().await {
            tracing::debug!(addr = %d.addr, source = %d.source, "found a peer");
            if handle.tx.send(Command::AddSeed(d.addr)).await.is_err() {
                return;
            }
        }
    });
    Ok(discovery)
}

/// A cloneable way to talk to a running agent from other tasks (discovery, runtimes, control).
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    id: NodeId,
    addr: SocketAddr,
    local: SocketAddr,
    cert_not_after: Option<SystemTime>,
}

impl Handle {
    /// When this node's certificate stops being valid (`None` with a transport of the
    /// embedder's own, which has no certificate).
    pub fn cert_not_after(&self) -> Option<SystemTime> {
        self.cert_not_after
    }

    /// This node's stable id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address peers reach this node at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the socket is bound to (differs from [`Handle::addr`] behind NAT or when
    /// bound to `0.0.0.0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    /// The node's view of itself and its colony.
    pub async fn status(&self) -> Result<Status, AgentError> {
        self.ask(Command::Status).await.ok_or(AgentError::Stopped)
    }

    /// Hands a colony spec to this node, which must be the queen; resolves once the plan made
    /// from it is committed. Elsewhere it fails with [`ApplyError::NotQueen`], naming the queen
    /// (and her address) when known.
    pub async fn apply_spec(&self, spec: ColonySpec) -> Result<AppliedPlan, ApplyError> {
        self.ask(|r| Command::ApplySpec(spec, r))
            .await
            .unwrap_or(Err(ApplyError::Stopped))
    }

    /// Members found by discovery (id and address), as if a join exchange had delivered them.
    pub async fn add_known_members(&self, members: Vec<SwimId>) -> Result<(), AgentError> {
        self.tx
            .send(Command::AddKnownMembers(members))
            .await
            .map_err(|_| AgentError::Stopped)
    }

    /// The endpoints (`ip:port`) of `role` in the newest committed plan this node acted on:
    /// what its dependents get in `AWARE_<ROLE>_ENDPOINTS`. Empty for an unknown role or one
    /// without published ports.
    pub async fn endpoints(&self, role: &str) -> Result<Vec<String>, AgentError> {
        self.ask(|r| Command::Endpoints(role.to_owned(), r))
            .await
            .ok_or(AgentError::Stopped)
    }

    /// Reports this host's load in `0..=1` (a loaded node is a weaker queen candidate).
    pub async fn set_load(&self, load: f64) -> Result<(), AgentError> {
        self.tx
            .send(Command::SetLoad(load))
            .await
            .map_err(|_| AgentError::Stopped)
    }
}

/// A running colony node.
///
/// ```no_run
/// # async fn demo(agent: aware_agent::Agent, spec: aware_agent::swarm_core::spec::ColonySpec) {
/// use aware_agent::{AgentEvent, ApplyError};
/// let mut events = agent.events();
/// tokio::spawn(async move {
///     while let Ok(event) = events.recv().await {
///         if let AgentEvent::Assigned { assignments, .. } = event {
///             println!("run {} replicas", assignments.len());
///         }
///     }
/// });
/// match agent.apply_spec(spec).await {
///     Ok(plan) => println!("{}", plan.render()),
///     Err(ApplyError::NotQueen { queen, addr }) => println!("ask {queen:?} at {addr:?}"),
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Agent {
    handle: Handle,
    task: JoinHandle<Result<(), DriverError>>,
    events: broadcast::Sender<AgentEvent>,
    discovery: Option<Discovery>,
}

impl Agent {
    /// Shorthand for [`AgentBuilder::new`].
    pub fn builder(colony: impl Into<String>) -> AgentBuilder {
        AgentBuilder::new(colony)
    }

    /// This node's stable id (persisted; picked at random on first boot).
    pub fn id(&self) -> NodeId {
        self.handle.id
    }

    /// The address peers reach this node at.
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }

    /// A cloneable handle for other tasks.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Subscribes to events from now on. The channel is bounded ([`EVENT_CHANNEL`]); a
    /// subscriber that lags loses the oldest events and gets `RecvError::Lagged` (see
    /// [`crate::events`]).
    pub fn events(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// See [`Handle::status`].
    pub async fn status(&self) -> Result<Status, AgentError> {
        self.handle.status().await
    }

    /// See [`Handle::apply_spec`].
    pub async fn apply_spec(&self, spec: ColonySpec) -> Result<AppliedPlan, ApplyError> {
        self.handle.apply_spec(spec).await
    }

    /// See [`Handle::endpoints`].
    pub async fn endpoints(&self, role: &str) -> Result<Vec<String>, AgentError> {
        self.handle.endpoints(role).await
    }

    /// Persists a final time, closes the socket and waits for the driver to finish.
    pub async fn shutdown(mut self) -> Result<(), AgentError> {
        if let Some(d) = self.discovery.take() {
            d.shutdown().await; // mDNS goodbye, etcd lease revoked
        }
        let (reply, done) = oneshot::channel();
        if self.handle.tx.send(Command::Shutdown(reply)).await.is_ok() {
            let _ = done.await;
        }
        self.join().await
    }

    /// Runs until `signal` completes (then shuts down cleanly) or the agent stops on its own
    /// (an error, e.g. the disk refused a write).
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), AgentError> {
        let stopped = tokio::select! {
            () = signal => None,
            r = &mut self.task => Some(r),
        };
        match stopped {
            None => self.shutdown().await,
            Some(r) => flatten(r),
        }
    }

    async fn join(self) -> Result<(), AgentError> {
        flatten(self.task.await)
    }
}

fn flatten(r: Result<Result<(), DriverError>, tokio::task::JoinError>) -> Result<(), AgentError> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(AgentError::Task(e.to_string())),
    }
}

/// SIGTERM or SIGINT, the usual `signal` for [`Agent::run_until`]. The handlers are registered
/// when this is called, so a signal that arrives before the future is first polled still counts.
pub fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
