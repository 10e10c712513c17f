//! The agent's side of the mutual-TLS QUIC control plane: [`AgentControl`] answers what
//! [`crate::net`] does not answer itself, with the certified identity of the peer:
//!
//! - agent requests ([`crate::control`]: `status`, `apply`, ...) from the admin or a node; a
//!   spec sent to a worker is forwarded once to the queen's last-heard address over the same
//!   control plane (any certificate of the colony CA is accepted there: `answer` names only
//!   the address). **Fencing:** a request carries the newest term its sender knows;
//!   a node whose own term is older refuses it (`stale_term`), so a deposed queen that has not
//!   heard of her successor never takes a command meant for the current reign;
//! - the gossip keyring: `keys list` from anyone certified, `install`/`use`/`remove` from the
//!   admin only, the whole keyring (`KeyringExport`) to a node (one that just joined) or the
//!   admin.
//!
//! The client side for the CLI is [`admin_request`] / [`keyring_everywhere`], authenticated by the
//! admin certificate (`admin.crt`, `admin.key`, `ca.crt` in the admin directory).

use crate::control::{self, Forwarder};
use crate::embed::Handle;
use crate::net::control::{ControlRequest, ControlResponse, ErrorCode};
use crate::net::quic::{BoxFuture, ControlHandler};
use crate::net::{GossipCrypto, Net, NetError};
use crate::pki::Identity;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Serves the control plane for one agent. The handle and the transport are set once the agent
/// has started (requests before that get `internal: starting`).
#[derive(Default)]
pub struct AgentControl {
    handle: OnceLock<Handle>,
    net: OnceLock<Net>,
    gossip: OnceLock<Arc<GossipCrypto>>,
}

impl std::fmt::Debug for AgentControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentControl")
    }
}

impl AgentControl {
    pub fn new() -> Arc<AgentControl> {
        Arc::new(AgentControl::default())
    }

    /// Completes the handler once the agent runs.
    pub fn attach(&self, handle: Handle, net: Net, gossip: Arc<GossipCrypto>) {
        let _ = self.handle.set(handle);
        let _ = self.net.set(net);
        let _ = self.gossip.set(gossip);
    }

    async fn agent(
        &self,
        peer: Identity,
        request: control::ControlRequest,
        forwarded: bool,
        term: Option<u64>,
    ) -> ControlResponse {
        let (Some(handle), Some(net)) = (self.handle.get(), self.net.get()) else {
            return ControlResponse::error(ErrorCode::Internal, "the agent is starting");
        };
        let own_term = match handle.status().await {
            Ok(s) => s.term,
            Err(e) => return ControlResponse::error(ErrorCode::Internal, e.to_string()),
        };
        if let Some(t) = term
            && t > own_term
        {
            return ControlResponse::error(
                ErrorCode::StaleTerm,
                format!("this node is at term {own_term}, the sender knows term {t}: refused"),
            );
        }
        if forwarded && peer == Identity::Admin {
            return ControlResponse::error(ErrorCode::Unauthorized, "only a node forwards");
        }
        let forwarder = QuicForwarder {
            net: net.clone(),
            term: own_term,
        };
        let forward = (!forwarded).then_some(&forwarder);
        let response = control::answer(handle, request, forward).await;
        ControlResponse::Agent { response }
    }
}

struct QuicForwarder {
    net: Net,
    term: u64,
}

impl Forwarder for QuicForwarder {
    async fn forward(
        &self,
        to: SocketAddr,
        request: control::ControlRequest,
    ) -> control::ControlResponse {
        let request = ControlRequest::Agent {
            request,
            forwarded: true,
            term: Some(self.term),
        };
        match self.net.request(to, None, &request).await {
            Ok(ControlResponse::Agent { response }) => response,
            Ok(ControlResponse::Error { code, message }) => control::ControlResponse::Failed(
                format!("the queen at {to} refused ({code:?}): {message}"),
            ),
            Ok(other) => {
                control::ControlResponse::Failed(format!("the queen at {to} answered {other:?}"))
            }
            Err(e) => control::ControlResponse::Failed(format!("forwarding to the queen: {e}")),
        }
    }
}

impl ControlHandler for AgentControl {
    fn handle(&self, peer: Identity, request: ControlRequest) -> BoxFuture<'_, ControlResponse> {
        Box::pin(async move {
            let Some(gossip) = self.gossip.get() else {
                return ControlResponse::error(ErrorCode::Internal, "the agent is starting");
            };
            match (peer, request) {
                (
                    _,
                    ControlRequest::Agent {
                        request,
                        forwarded,
                        term,
                    },
                ) => self.agent(peer, request, forwarded, term).await,
                (_, ControlRequest::KeyringExport) => ControlResponse::KeyringText {
                    text: gossip.keyring().to_text(),
                },
                (_, r @ ControlRequest::KeyringList) | (Identity::Admin, r) => {
                    gossip.handle_keyring(&r).unwrap_or_else(|| {
                        ControlResponse::error(
                            ErrorCode::Unsupported,
                            format!("{} is not served here", r.kind()),
                        )
                    })
                }
                (Identity::Node(_), r) => ControlResponse::error(
                    ErrorCode::Unauthorized,
                    format!("{} needs the admin certificate", r.kind()),
                ),
            }
        })
    }
}

/// Where an admin client binds: loopback for a loopback agent, else any address of the family.
fn client_ip(to: SocketAddr) -> IpAddr {
    match to.ip() {
        ip if ip.is_loopback() => ip,
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Errors of an admin request.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin credentials in {dir}: {source}")]
    Credentials { dir: String, source: NetError },
    #[error("cannot reach the agent at {addr}: {source}")]
    Net { addr: SocketAddr, source: NetError },
    #[error("the agent at {addr} refused ({code:?}): {message}")]
    Refused {
        addr: SocketAddr,
        code: ErrorCode,
        message: String,
    },
    #[error("the agent at {addr} answered {got}")]
    Unexpected { addr: SocketAddr, got: String },
}

/// An admin client: one QUIC endpoint with the admin certificate, whose connections to agents
/// are kept and reused across requests (a tool that asks often, like the demo, holds one).
#[derive(Clone)]
pub struct AdminClient {
    net: Net,
    dir: String,
}

impl AdminClient {
    /// Binds a client endpoint with the admin certificate in `admin_dir`, on an address from
    /// which `to` is reachable.
    pub async fn connect(admin_dir: &Path, to: SocketAddr) -> Result<AdminClient, AdminError> {
        let dir = admin_dir.display().to_string();
        let net = Net::admin(admin_dir, client_ip(to))
            .await
            .map_err(|source| AdminError::Credentials {
                dir: dir.clone(),
                source,
            })?;
        Ok(AdminClient { net, dir })
    }

    /// One control-plane request to the agent at `to`.
    pub async fn raw(
        &self,
        to: SocketAddr,
        request: &ControlRequest,
    ) -> Result<ControlResponse, AdminError> {
        match self.net.request(to, None, request).await {
            Ok(ControlResponse::Error { code, message }) => Err(AdminError::Refused {
                addr: to,
                code,
                message,
            }),
            Ok(r) => Ok(r),
            Err(source) => Err(AdminError::Net { addr: to, source }),
        }
    }

    /// An agent request (`status`, `apply`, `endpoints`).
    pub async fn agent(
        &self,
        to: SocketAddr,
        request: control::ControlRequest,
    ) -> Result<control::ControlResponse, AdminError> {
        let request = ControlRequest::Agent {
            request,
            forwarded: false,
            term: None,
        };
        match self.raw(to, &request).await? {
            ControlResponse::Agent { response } => Ok(response),
            other => Err(AdminError::Unexpected {
                addr: to,
                got: format!("{other:?}"),
            }),
        }
    }

    /// Closes the endpoint.
    pub fn close(&self) {
        self.net.close();
    }
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("dir", &self.dir)
            .finish()
    }
}

/// One control-plane request to the agent at `to` with the admin certificate in `admin_dir`.
pub async fn admin_raw(
    admin_dir: &Path,
    to: SocketAddr,
    request: &ControlRequest,
) -> Result<ControlResponse, AdminError> {
    let client = AdminClient::connect(admin_dir, to).await?;
    let result = client.raw(to, request).await;
    client.close();
    result
}

/// An agent request (`status`, `apply`) with the admin certificate.
pub async fn admin_request(
    admin_dir: &Path,
    to: SocketAddr,
    request: control::ControlRequest,
) -> Result<control::ControlResponse, AdminError> {
    let client = AdminClient::connect(admin_dir, to).await?;
    let result = client.agent(to, request).await;
    client.close();
    result
}

/// One member's answer to a keyring operation (`aware-agent keys`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyResult {
    pub addr: SocketAddr,
    /// The primary key's id and every key id, when it succeeded.
    pub primary: Option<String>,
    pub keys: Vec<String>,
    pub error: Option<String>,
}

impl std::fmt::Display for KeyResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.error, &self.primary) {
            (Some(e), _) => write!(f, "{}: failed: {e}", self.addr),
            (None, Some(p)) => write!(
                f,
                "{}: primary {p}, keys {}",
                self.addr,
                self.keys.join(" ")
            ),
            (None, None) => write!(f, "{}: ok", self.addr),
        }
    }
}

/// A keyring operation on the agent at `to` and on every member it sees up (Serf's
/// `keys install|use|remove`: run each step everywhere before the next).
pub async fn keyring_everywhere(
    admin_dir: &Path,
    to: SocketAddr,
    request: &ControlRequest,
) -> Result<Vec<KeyResult>, AdminError> {
    let status = match admin_request(admin_dir, to, control::ControlRequest::Status).await? {
        control::ControlResponse::Status(s) => s,
        other => {
            return Err(AdminError::Unexpected {
                addr: to,
                got: format!("{other:?}"),
            });
        }
    };
    let mut addrs = vec![to];
    for m in &status.members {
        if m.state == crate::status::MemberState::Up
            && let Some(a) = m.addr
            && !addrs.contains(&a)
        {
            addrs.push(a);
        }
    }
    let mut out = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let result = match admin_raw(admin_dir, addr, request).await {
            Ok(ControlResponse::Keyring { primary, keys }) => KeyResult {
                addr,
                primary: Some(primary),
                keys,
                error: None,
            },
            Ok(other) => KeyResult {
                addr,
                primary: None,
                keys: Vec::new(),
                error: Some(format!("unexpected answer {other:?}")),
            },
            Err(e) => KeyResult {
                addr,
                primary: None,
                keys: Vec::new(),
                error: Some(e.to_string()),
            },
        };
        out.push(result);
    }
    Ok(out)
}
