//! The QUIC control plane of a node: one quinn endpoint on the node's one UDP port (shared with
//! gossip through [`DemuxSocket`]), mutual TLS against the colony CA, and three services on it:
//!
//! - the **stream lane**: [`Net::send_frame`] queues a frame for a peer address; a writer task per
//!   peer delivers the peer's frames in order on one persistent unidirectional stream
//!   (`[u32 BE length][frame]`, at most [`MAX_STREAM_BYTES`]), reconnecting on failure. Inbound
//!   frames arrive on [`NetChannels::frames`] with the sender's address and certified node id.
//! - the **control API**: [`Net::request`] sends one [`ControlRequest`] on a bidirectional
//!   stream and reads one [`ControlResponse`]. A server answers `Ping`, `Join` and `Sign` itself
//!   and hands everything else to the driver's [`ControlHandler`] with the peer's [`Identity`].
//! - **join**: [`Net::join`] (a node without a certificate) sends its CSR and token on ALPN
//!   `aware-join/1`, pinning the CA hash in the token; the server signs if it holds the CA key, or
//!   forwards to the first of its configured `signers` that answers.
//!
//! Admission: on `aware/1` a client must present a certificate chaining to the colony CA (a
//! foreign one fails the handshake, counted in `quic_handshake_refused`); a client without one is
//! closed (`quic_unauthenticated`). On `aware-join/1` the only request served is `Join`.
//! Outbound connections are cached per address (at most [`MAX_CONNECTIONS`]); one enters the
//! cache only after a first request/response, because a client whose certificate the server
//! refused only learns it on its first stream.

use super::control::{self, ControlRequest, ControlResponse, ErrorCode};
use super::counters::{NetCounters, bump};
use super::demux::{DemuxSocket, GossipDatagram};
use super::tls::{self, ALPN_JOIN, ALPN_NODE, TlsError};
use crate::pki::{self, Ca, CaCert, Credentials, Identity, PkiError};
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    Connection, Endpoint, EndpointConfig, RecvStream, SendStream, TransportConfig, VarInt,
};
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};
use swarm_core::NodeId;
use tokio::sync::{Semaphore, mpsc};

/// Largest stream-lane frame.
pub const MAX_STREAM_BYTES: usize = swarm_core::wire::MAX_STREAM_BYTES;
/// Outbound connections cached (the least recently used is closed beyond this).
pub const MAX_CONNECTIONS: usize = 1024;
/// Inbound connections served at once (more are refused and counted).
pub const MAX_INBOUND_CONNECTIONS: usize = 1024;
/// Peers with a stream lane (the least recently used lane is closed beyond this).
pub const MAX_LANES: usize = 1024;
/// Frames queued per peer lane.
pub const LANE_QUEUE_FRAMES: usize = 256;
/// Bytes queued per peer lane.
pub const LANE_QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// Tries to deliver one frame before it is dropped and counted.
pub const LANE_ATTEMPTS: u32 = 3;
/// Delay before a lane's reconnect, times the attempt number.
pub const LANE_RETRY_MS: u64 = 200;
/// Inbound lane frames waiting for the driver (a full queue applies back-pressure to senders).
pub const INBOUND_FRAME_QUEUE: usize = 1024;
/// QUIC idle timeout; keep-alives go out well within it.
pub const IDLE_TIMEOUT_MS: u64 = 30_000;
pub const KEEP_ALIVE_MS: u64 = 10_000;
/// Bound on dialling a peer, and on one request/response.
pub const DIAL_TIMEOUT_MS: u64 = 5_000;
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Concurrent control requests per connection.
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 16;
/// Concurrent lane streams per connection.
pub const MAX_LANES_PER_CONNECTION: u32 = 4;

const CLOSE_DONE: u32 = 0;
const CLOSE_UNAUTHENTICATED: u32 = 0x10;
const CLOSE_EVICTED: u32 = 0x11;
const CLOSE_SHUTDOWN: u32 = 0x12;
const STOP_BAD_FRAME: u32 = 0x20;

/// A boxed future, for [`ControlHandler`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The driver's side of the control API: every request the transport does not answer itself
/// (everything but `Ping`, `Join` and `Sign`), with the certified identity of the peer.
pub trait ControlHandler: Send + Sync + 'static {
    fn handle(&self, peer: Identity, request: ControlRequest) -> BoxFuture<'_, ControlResponse>;
}

/// A handler that supports nothing.
#[derive(Debug, Default)]
pub struct NoHandler;

impl ControlHandler for NoHandler {
    fn handle(&self, _peer: Identity, request: ControlRequest) -> BoxFuture<'_, ControlResponse> {
        let kind = request.kind();
        Box::pin(async move {
            ControlResponse::error(ErrorCode::Unsupported, format!("{kind} is not served here"))
        })
    }
}

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("QUIC configuration: {0}")]
    Config(String),
    #[error("this node has no certificate yet: join first")]
    NoCredentials,
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream: {0}")]
    Stream(String),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("frame of {len} bytes exceeds {MAX_STREAM_BYTES}")]
    FrameTooLarge { len: usize },
    #[error("the lane to {0} is full")]
    QueueFull(SocketAddr),
    #[error("peer at {addr} is {got:?}, expected {expected:?}")]
    WrongPeer {
        addr: SocketAddr,
        expected: Option<NodeId>,
        got: Option<Identity>,
    },
    #[error("refused by the server ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("unexpected response {0:?}")]
    Unexpected(Box<ControlResponse>),
    #[error("join: {0}")]
    Join(String),
}

/// How a node's transport is set up.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The node's one UDP address (gossip and QUIC).
    pub bind: SocketAddr,
    /// The node's (or the admin's) certificate; `None` for a node that still has to join.
    pub credentials: Option<Credentials>,
    /// The CA with its key, on a node that signs joins.
    pub signer: Option<Arc<Ca>>,
    /// Where a node without the CA key forwards joins, tried in order.
    pub signers: Vec<SocketAddr>,
    pub idle_timeout_ms: u64,
    pub keep_alive_ms: u64,
}

impl NetConfig {
    pub fn new(bind: SocketAddr) -> NetConfig {
        NetConfig {
            bind,
            credentials: None,
            signer: None,
            signers: Vec::new(),
            idle_timeout_ms: IDLE_TIMEOUT_MS,
            keep_alive_ms: KEEP_ALIVE_MS,
        }
    }
}

/// A frame received on the stream lane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundFrame {
    pub from: SocketAddr,
    pub peer: NodeId,
    pub frame: Bytes,
}

/// What the transport delivers to the driver.
#[derive(Debug)]
pub struct NetChannels {
    /// Datagrams that are not QUIC: sealed gossip, still to be opened.
    pub gossip: mpsc::Receiver<GossipDatagram>,
    /// Stream-lane frames.
    pub frames: mpsc::Receiver<InboundFrame>,
}

/// A node's transport. Cheap to clone; the endpoint closes when the last clone is dropped.
#[derive(Clone)]
pub struct Net {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("local", &self.local_addr())
            .finish_non_exhaustive()
    }
}

struct Inner {
    endpoint: Endpoint,
    socket: Arc<DemuxSocket>,
    counters: Arc<NetCounters>,
    handler: Arc<dyn ControlHandler>,
    frames: mpsc::Sender<InboundFrame>,
    signer: Option<Arc<Ca>>,
    signers: Vec<SocketAddr>,
    transport: Arc<TransportConfig>,
    inbound: Arc<Semaphore>,
    state: Mutex<State>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    }
}

#[derive(Default)]
struct State {
    credentials: Option<Credentials>,
    client: Option<quinn::ClientConfig>,
    conns: HashMap<SocketAddr, Cached>,
    lanes: HashMap<SocketAddr, Lane>,
    tick: u64,
}

struct Cached {
    conn: Connection,
    peer: NodeId,
    used: u64,
}

struct Lane {
    tx: mpsc::Sender<Bytes>,
    queued_bytes: Arc<AtomicUsize>,
    used: u64,
}

/// What an inbound connection may do.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// Mutual TLS on `aware/1`.
    Known(Identity),
    /// `aware-join/1`: join requests only.
    Joiner,
}

#[allow(clippy::disallowed_methods)] // the agent is the I/O crate: tokens and certs need wall time
fn wall_clock() -> SystemTime {
    SystemTime::now()
}

fn transport_config(idle_timeout_ms: u64, keep_alive_ms: u64) -> Result<TransportConfig, NetError> {
    let mut t = TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(idle_timeout_ms))
        .map_err(|e| NetError::Config(e.to_string()))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(Duration::from_millis(
        keep_alive_ms.min(idle_timeout_ms / 2).max(1),
    )));
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_REQUESTS_PER_CONNECTION));
    t.max_concurrent_uni_streams(VarInt::from_u32(MAX_LANES_PER_CONNECTION));
    t.datagram_receive_buffer_size(None);
    Ok(t)
}

fn quic_server(
    creds: &Credentials,
    transport: &Arc<TransportConfig>,
) -> Result<quinn::ServerConfig, NetError> {
    let crypto = QuicServerConfig::try_from(tls::server_config(creds)?)
        .map_err(|e| NetError::Config(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport.clone());
    server.migration(false);
    Ok(server)
}

fn quic_client(
    crypto: rustls::ClientConfig,
    transport: &Arc<TransportConfig>,
) -> Result<quinn::ClientConfig, NetError> {
    let crypto = QuicClientConfig::try_from(crypto).map_err(|e| NetError::Config(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport.clone());
    Ok(client)
}

/// The certified identity of a connection's peer, if it presented a valid certificate.
pub fn peer_identity(conn: &Connection) -> Option<Identity> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    pki::identity_of(certs.first()?).ok()
}

fn alpn(conn: &Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

async fn with_timeout<T, E>(
    ms: u64,
    what: &'static str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, NetError>
where
    NetError: From<E>,
{
    match tokio::time::timeout(Duration::from_millis(ms), fut).await {
        Ok(r) => r.map_err(NetError::from),
        Err(_) => Err(NetError::Timeout(what)),
    }
}

/// One request/response on a new bidirectional stream.
async fn exchange(
    conn: &Connection,
    request: &ControlRequest,
) -> Result<ControlResponse, NetError> {
    let frame = control::encode(request)?;
    let work = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&frame)
            .await
            .map_err(|e| NetError::Stream(e.to_string()))?;
        send.finish().map_err(|e| NetError::Stream(e.to_string()))?;
        let reply = recv
            .read_to_end(control::MAX_CONTROL_BYTES)
            .await
            .map_err(|e| NetError::Stream(e.to_string()))?;
        Ok::<_, NetError>(control::decode::<ControlResponse>(&reply)?)
    };
    with_timeout(REQUEST_TIMEOUT_MS, "request", work).await
}

impl Net {
    /// Binds the node's UDP port and starts serving. Must run inside a tokio runtime.
    pub async fn bind(
        config: NetConfig,
        handler: Arc<dyn ControlHandler>,
    ) -> Result<(Net, NetChannels), NetError> {
        let counters = Arc::new(NetCounters::default());
        let (socket, gossip) = DemuxSocket::bind(config.bind, counters.clone()).await?;
        let mut endpoint_config = EndpointConfig::default();
        // Greasing would let quinn clear the fixed bit that tells QUIC from gossip.
        endpoint_config.grease_quic_bit(false);
        let transport = Arc::new(transport_config(
            config.idle_timeout_ms,
            config.keep_alive_ms,
        )?);
        let endpoint = Endpoint::new_with_abstract_socket(
            endpoint_config,
            None,
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )?;
        let (frames_tx, frames) = mpsc::channel(INBOUND_FRAME_QUEUE);
        let inner = Arc::new(Inner {
            endpoint: endpoint.clone(),
            socket,
            counters,
            handler,
            frames: frames_tx,
            signer: config.signer,
            signers: config.signers,
            transport,
            inbound: Arc::new(Semaphore::new(MAX_INBOUND_CONNECTIONS)),
            state: Mutex::new(State::default()),
        });
        let net = Net { inner };
        if let Some(creds) = config.credentials {
            net.set_credentials(creds)?;
        }
        tokio::spawn(accept_loop(endpoint, Arc::downgrade(&net.inner)));
        Ok((net, NetChannels { gossip, frames }))
    }

    /// A client-only transport for the CLI, with the admin certificate in `dir` (`admin.crt`,
    /// `admin.key`, `ca.crt`, as `ca init` writes them), on an ephemeral port of `bind_ip`.
    pub async fn admin(dir: &std::path::Path, bind_ip: std::net::IpAddr) -> Result<Net, NetError> {
        let mut config = NetConfig::new(SocketAddr::new(bind_ip, 0));
        config.credentials = Some(Credentials::load(dir, pki::ADMIN_STEM)?);
        let (net, _channels) = Net::bind(config, Arc::new(NoHandler)).await?;
        Ok(net)
    }

    /// The node's one address, for gossip and QUIC alike.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    pub fn counters(&self) -> &Arc<NetCounters> {
        &self.inner.counters
    }

    /// The shared UDP socket (for sending gossip).
    pub fn socket(&self) -> &Arc<DemuxSocket> {
        &self.inner.socket
    }

    /// Sends a sealed gossip datagram from the node's port.
    pub async fn send_gossip(&self, to: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        self.inner.socket.send_gossip(to, datagram).await
    }

    /// The node's certified identity, once it has credentials.
    pub fn identity(&self) -> Option<Identity> {
        self.inner.lock().credentials.as_ref().map(|c| c.identity())
    }

    /// Installs (or replaces) the node's certificate: serves with it if it is a node's, and
    /// uses it as a client. Cached connections made with older credentials are kept.
    pub fn set_credentials(&self, creds: Credentials) -> Result<(), NetError> {
        let client = quic_client(tls::client_config(&creds)?, &self.inner.transport)?;
        if let Identity::Node(_) = creds.identity() {
            let server = quic_server(&creds, &self.inner.transport)?;
            self.inner.endpoint.set_server_config(Some(server));
        }
        let mut st = self.inner.lock();
        st.client = Some(client);
        st.credentials = Some(creds);
        Ok(())
    }

    /// Sends one control request to the node at `to` (its identity pinned when `node` is given)
    /// and returns its response. Server-side failures come back as `ControlResponse::Error`.
    pub async fn request(
        &self,
        to: SocketAddr,
        node: Option<NodeId>,
        request: &ControlRequest,
    ) -> Result<ControlResponse, NetError> {
        self.inner.request(to, node, request).await
    }

    /// Queues `frame` for the peer at `to`. Frames to one peer are delivered in order on one
    /// stream. Never waits: a full lane refuses the frame (counted).
    pub fn send_frame(&self, to: SocketAddr, frame: Bytes) -> Result<(), NetError> {
        let len = frame.len();
        if len > MAX_STREAM_BYTES {
            return Err(NetError::FrameTooLarge { len });
        }
        let inner = &self.inner;
        let mut st = inner.lock();
        st.tick += 1;
        let tick = st.tick;
        let open = st.lanes.get(&to).is_some_and(|l| !l.tx.is_closed());
        if !open {
            st.lanes.remove(&to);
            if st.lanes.len() >= MAX_LANES {
                let stalest = st.lanes.iter().min_by_key(|(_, l)| l.used).map(|(a, _)| *a);
                if let Some(addr) = stalest {
                    st.lanes.remove(&addr); // its writer drains what it holds, then ends
                }
            }
            let (tx, rx) = mpsc::channel(LANE_QUEUE_FRAMES);
            let queued_bytes = Arc::new(AtomicUsize::new(0));
            tokio::spawn(lane_writer(
                Arc::downgrade(inner),
                to,
                rx,
                queued_bytes.clone(),
            ));
            st.lanes.insert(
                to,
                Lane {
                    tx,
                    queued_bytes,
                    used: tick,
                },
            );
        }
        let Some(lane) = st.lanes.get_mut(&to) else {
            return Err(NetError::QueueFull(to));
        };
        lane.used = tick;
        if lane.queued_bytes.load(Ordering::Relaxed) + len > LANE_QUEUE_BYTES {
            bump(&inner.counters.lane_queue_full);
            return Err(NetError::QueueFull(to));
        }
        lane.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if lane.tx.try_send(frame).is_err() {
            lane.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            bump(&inner.counters.lane_queue_full);
            return Err(NetError::QueueFull(to));
        }
        debug_assert!(st.lanes.len() <= MAX_LANES);
        Ok(())
    }

    /// Joins the colony through the node at `to` with a join token: generates this node's key
    /// and CSR, pins the server by the CA hash in the token, gets the certificate signed and
    /// installs it. The key never leaves this node.
    pub async fn join(
        &self,
        to: SocketAddr,
        token: &str,
        node: NodeId,
    ) -> Result<Credentials, NetError> {
        let claims = pki::token_peek(token)?;
        let pin = claims.ca_fingerprint()?;
        let (key_pem, csr_pem) = pki::node_key_and_csr(node)?;
        let client = quic_client(tls::join_client_config(pin)?, &self.inner.transport)?;
        let connecting = self
            .inner
            .endpoint
            .connect_with(client, to, tls::ANY_NODE_NAME)?;
        let conn = with_timeout(DIAL_TIMEOUT_MS, "join handshake", connecting).await?;
        let response = exchange(
            &conn,
            &ControlRequest::Join {
                node,
                token: token.to_string(),
                csr_pem,
            },
        )
        .await;
        conn.close(VarInt::from_u32(CLOSE_DONE), b"joined");
        match response? {
            ControlResponse::Joined { cert_pem, ca_pem } => {
                let ca = CaCert::from_pem(&ca_pem)?;
                if ca.fingerprint() != pin {
                    return Err(NetError::Join(format!(
                        "the server sent CA {}, the token pins {}",
                        ca.fingerprint_hex(),
                        claims.ca
                    )));
                }
                ca.verify_token(token, wall_clock())?;
                let creds = Credentials::new(&cert_pem, &key_pem, ca)?;
                if creds.identity() != Identity::Node(node) {
                    return Err(NetError::Join(format!(
                        "the certificate names {:?}, not node {node}",
                        creds.identity()
                    )));
                }
                self.set_credentials(creds.clone())?;
                Ok(creds)
            }
            ControlResponse::Error { code, message } => Err(NetError::Refused { code, message }),
            other => Err(NetError::Unexpected(Box::new(other))),
        }
    }

    /// Closes every connection and the endpoint now.
    pub fn close(&self) {
        let mut st = self.inner.lock();
        st.lanes.clear();
        st.conns.clear();
        drop(st);
        self.inner
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self, addr: SocketAddr) {
        self.lock().conns.remove(&addr);
    }

    /// A confirmed connection to `to` from the cache, or a new one.
    async fn connection(
        &self,
        to: SocketAddr,
        node: Option<NodeId>,
    ) -> Result<(Connection, NodeId, bool), NetError> {
        let client = {
            let mut st = self.lock();
            st.tick += 1;
            let tick = st.tick;
            if let Some(c) = st.conns.get_mut(&to)
                && c.conn.close_reason().is_none()
                && node.is_none_or(|n| n == c.peer)
            {
                c.used = tick;
                return Ok((c.conn.clone(), c.peer, true));
            }
            st.conns.remove(&to);
            st.client.clone().ok_or(NetError::NoCredentials)?
        };
        let dialled = self.dial(client, to, node).await;
        match dialled {
            Ok((conn, peer)) => {
                bump(&self.counters.quic_dialed);
                let mut st = self.lock();
                st.tick += 1;
                let used = st.tick;
                if st.conns.len() >= MAX_CONNECTIONS && !st.conns.contains_key(&to) {
                    let stalest = st.conns.iter().min_by_key(|(_, c)| c.used).map(|(a, _)| *a);
                    if let Some(old) = stalest.and_then(|a| st.conns.remove(&a)) {
                        old.conn.close(VarInt::from_u32(CLOSE_EVICTED), b"evicted");
                    }
                }
                st.conns.insert(
                    to,
                    Cached {
                        conn: conn.clone(),
                        peer,
                        used,
                    },
                );
                debug_assert!(st.conns.len() <= MAX_CONNECTIONS);
                Ok((conn, peer, false))
            }
            Err(e) => {
                bump(&self.counters.quic_dial_failed);
                Err(e)
            }
        }
    }

    async fn dial(
        &self,
        client: quinn::ClientConfig,
        to: SocketAddr,
        node: Option<NodeId>,
    ) -> Result<(Connection, NodeId), NetError> {
        let connecting = self
            .endpoint
            .connect_with(client, to, &tls::server_name(node))?;
        let conn = with_timeout(DIAL_TIMEOUT_MS, "handshake", connecting).await?;
        let identity = peer_identity(&conn);
        let peer = match identity {
            Some(Identity::Node(id)) if node.is_none_or(|n| n == id) => id,
            got => {
                conn.close(VarInt::from_u32(CLOSE_DONE), b"wrong peer");
                return Err(NetError::WrongPeer {
                    addr: to,
                    expected: node,
                    got,
                });
            }
        };
        // Admission is only certain once the server has answered (agent-facts.md).
        match exchange(&conn, &ControlRequest::Ping).await {
            Ok(ControlResponse::Pong { .. }) => Ok((conn, peer)),
            Ok(other) => Err(NetError::Unexpected(Box::new(other))),
            Err(e) => Err(e),
        }
    }

    async fn request(
        &self,
        to: SocketAddr,
        node: Option<NodeId>,
        request: &ControlRequest,
    ) -> Result<ControlResponse, NetError> {
        let (conn, _, cached) = self.connection(to, node).await?;
        match exchange(&conn, request).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.forget(to);
                if !cached {
                    return Err(e);
                }
                // The cached connection may belong to a peer that restarted: one fresh try.
                let (conn, _, _) = self.connection(to, node).await?;
                exchange(&conn, request).await
            }
        }
    }

    async fn dispatch(&self, peer: Peer, request: ControlRequest) -> ControlResponse {
        match (peer, request) {
            (
                _,
                ControlRequest::Join {
                    node,
                    token,
                    csr_pem,
                },
            ) => self.join_request(node, &token, &csr_pem).await,
            (Peer::Joiner, other) => {
                bump(&self.counters.quic_unauthenticated);
                ControlResponse::error(
                    ErrorCode::Unauthorized,
                    format!("{} needs a client certificate", other.kind()),
                )
            }
            (Peer::Known(_), ControlRequest::Ping) => match self.own_node() {
                Some(node) => ControlResponse::Pong { node },
                None => ControlResponse::error(ErrorCode::Internal, "no node certificate"),
            },
            (
                Peer::Known(Identity::Node(_)),
                ControlRequest::Sign {
                    node,
                    token,
                    csr_pem,
                },
            ) => match &self.signer {
                Some(ca) => self.sign_locally(ca, node, &token, &csr_pem),
                None => {
                    bump(&self.counters.join_refused);
                    ControlResponse::error(
                        ErrorCode::NoSigner,
                        "this node does not hold the CA key",
                    )
                }
            },
            (Peer::Known(Identity::Admin), ControlRequest::Sign { .. }) => {
                ControlResponse::error(ErrorCode::Unauthorized, "sign is node-to-node")
            }
            (Peer::Known(identity), other) => self.handler.handle(identity, other).await,
        }
    }

    fn own_node(&self) -> Option<NodeId> {
        self.lock()
            .credentials
            .as_ref()
            .and_then(|c| c.identity().node())
    }

    fn sign_locally(&self, ca: &Ca, node: NodeId, token: &str, csr_pem: &str) -> ControlResponse {
        let now = wall_clock();
        if let Err(e) = ca.cert().verify_token(token, now) {
            bump(&self.counters.join_refused);
            return ControlResponse::error(ErrorCode::TokenRefused, e.to_string());
        }
        match ca.sign_csr(csr_pem, node, now) {
            Ok(cert_pem) => {
                bump(&self.counters.join_signed);
                ControlResponse::Joined {
                    cert_pem,
                    ca_pem: ca.cert().pem().to_string(),
                }
            }
            Err(e) => {
                bump(&self.counters.join_refused);
                ControlResponse::error(ErrorCode::CsrRefused, e.to_string())
            }
        }
    }

    async fn join_request(&self, node: NodeId, token: &str, csr_pem: &str) -> ControlResponse {
        if let Some(ca) = &self.signer {
            return self.sign_locally(ca, node, token, csr_pem);
        }
        // Refuse a bad token here rather than bother a signer with it.
        let ca = self.lock().credentials.as_ref().map(|c| c.ca().clone());
        let Some(ca) = ca else {
            return ControlResponse::error(ErrorCode::Internal, "no colony CA");
        };
        if let Err(e) = ca.verify_token(token, wall_clock()) {
            bump(&self.counters.join_refused);
            return ControlResponse::error(ErrorCode::TokenRefused, e.to_string());
        }
        let sign = ControlRequest::Sign {
            node,
            token: token.to_string(),
            csr_pem: csr_pem.to_string(),
        };
        for signer in &self.signers {
            match self.request(*signer, None, &sign).await {
                Ok(r @ ControlResponse::Joined { .. }) => return r,
                Ok(
                    r @ ControlResponse::Error {
                        code: ErrorCode::TokenRefused | ErrorCode::CsrRefused,
                        ..
                    },
                ) => return r,
                _ => continue,
            }
        }
        bump(&self.counters.join_refused);
        ControlResponse::error(
            ErrorCode::NoSigner,
            format!(
                "none of the {} configured signers answered",
                self.signers.len()
            ),
        )
    }
}

async fn accept_loop(endpoint: Endpoint, weak: Weak<Inner>) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(inner) = weak.upgrade() else {
            incoming.refuse();
            break;
        };
        let Ok(permit) = inner.inbound.clone().try_acquire_owned() else {
            bump(&inner.counters.quic_refused_capacity);
            incoming.refuse();
            continue;
        };
        let counters = inner.counters.clone();
        drop(inner);
        let weak = weak.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(_) => {
                    bump(&counters.quic_handshake_refused);
                    return;
                }
            };
            bump(&counters.quic_accepted);
            let peer = match (alpn(&conn).as_deref(), peer_identity(&conn)) {
                (Some(ALPN_NODE), Some(identity)) => Peer::Known(identity),
                (Some(ALPN_JOIN), _) => Peer::Joiner,
                _ => {
                    bump(&counters.quic_unauthenticated);
                    conn.close(
                        VarInt::from_u32(CLOSE_UNAUTHENTICATED),
                        b"client certificate required",
                    );
                    return;
                }
            };
            serve_connection(conn, peer, weak).await;
        });
    }
}

async fn serve_connection(conn: Connection, peer: Peer, weak: Weak<Inner>) {
    let lane_peer = match peer {
        Peer::Known(Identity::Node(id)) => Some(id),
        _ => None,
    };
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    tokio::spawn(serve_request(send, recv, peer, weak.clone()));
                }
                Err(_) => break,
            },
            uni = conn.accept_uni(), if lane_peer.is_some() => match (uni, lane_peer) {
                (Ok(recv), Some(id)) => {
                    tokio::spawn(read_lane(recv, conn.remote_address(), id, weak.clone()));
                }
                _ => break,
            },
        }
    }
}

async fn serve_request(mut send: SendStream, mut recv: RecvStream, peer: Peer, weak: Weak<Inner>) {
    let read = tokio::time::timeout(
        Duration::from_millis(REQUEST_TIMEOUT_MS),
        recv.read_to_end(control::MAX_CONTROL_BYTES),
    )
    .await;
    let Some(inner) = weak.upgrade() else {
        return;
    };
    let response = match read {
        Ok(Ok(frame)) => match control::decode::<ControlRequest>(&frame) {
            Ok(request) => {
                bump(&inner.counters.control_requests);
                inner.dispatch(peer, request).await
            }
            Err(e) => {
                bump(&inner.counters.control_bad_requests);
                ControlResponse::error(ErrorCode::BadRequest, e.to_string())
            }
        },
        _ => {
            bump(&inner.counters.control_bad_requests);
            let _ = send.reset(VarInt::from_u32(STOP_BAD_FRAME));
            return;
        }
    };
    drop(inner);
    if let Ok(bytes) = control::encode(&response)
        && send.write_all(&bytes).await.is_ok()
    {
        let _ = send.finish();
    }
}

async fn lane_writer(
    weak: Weak<Inner>,
    to: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
    queued_bytes: Arc<AtomicUsize>,
) {
    let mut stream: Option<SendStream> = None;
    while let Some(frame) = rx.recv().await {
        queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
        let header = (frame.len() as u32).to_be_bytes();
        let mut attempt = 0;
        loop {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            if stream.is_none()
                && let Ok((conn, _, _)) = inner.connection(to, None).await
            {
                match conn.open_uni().await {
                    Ok(s) => stream = Some(s),
                    Err(_) => inner.forget(to),
                }
            }
            if let Some(s) = stream.as_mut() {
                if s.write_all(&header).await.is_ok() && s.write_all(&frame).await.is_ok() {
                    bump(&inner.counters.lane_frames_sent);
                    break;
                }
                stream = None;
                inner.forget(to);
            }
            attempt += 1;
            if attempt >= LANE_ATTEMPTS {
                // The peer is unreachable: drop what is queued now rather than retry each frame.
                bump(&inner.counters.lane_frames_dropped);
                while let Ok(queued) = rx.try_recv() {
                    queued_bytes.fetch_sub(queued.len(), Ordering::Relaxed);
                    bump(&inner.counters.lane_frames_dropped);
                }
                break;
            }
            bump(&inner.counters.lane_reconnects);
            drop(inner);
            tokio::time::sleep(Duration::from_millis(LANE_RETRY_MS * u64::from(attempt))).await;
        }
    }
    if let Some(mut s) = stream {
        let _ = s.finish();
    }
}

async fn read_lane(mut recv: RecvStream, from: SocketAddr, peer: NodeId, weak: Weak<Inner>) {
    loop {
        let mut header = [0u8; 4];
        if recv.read_exact(&mut header).await.is_err() {
            return; // finished, reset or connection gone
        }
        let len = u32::from_be_bytes(header) as usize;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if len > MAX_STREAM_BYTES {
            bump(&inner.counters.lane_bad_frames);
            let _ = recv.stop(VarInt::from_u32(STOP_BAD_FRAME));
            return;
        }
        let counters = inner.counters.clone();
        let frames = inner.frames.clone();
        drop(inner);
        // Grow with what arrives rather than trusting the announced length up front.
        let mut buf = Vec::with_capacity(len.min(64 * 1024));
        while buf.len() < len {
            match recv.read_chunk(len - buf.len(), true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                _ => {
                    bump(&counters.lane_bad_frames);
                    return;
                }
            }
        }
        bump(&counters.lane_frames_received);
        let frame = InboundFrame {
            from,
            peer,
            frame: Bytes::from(buf),
        };
        if frames.send(frame).await.is_err() {
            return;
        }
    }
}
