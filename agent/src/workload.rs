//! The built-in demo workload, `aware-agent workload http`: a small HTTP/1.1 server the agent
//! binary itself provides, so a colony can run real work on a fresh machine with no registry and
//! no Docker (the process runtime runs it as a replica's `command`). It owns the workload's CLI
//! ([`WorkloadCommand`]), the environment contract every workload gets from the reconciler
//! ([`ENV_COLONY`] ... [`endpoints_var`], parsed by [`parse_env`]) and the server.
//!
//! Routes:
//! - `GET /healthz`: `200 ok`; in store mode `503` until the counter is loaded (or while the
//!   counter file is unreadable, which is never overwritten).
//! - `GET /`: JSON `{colony, role, replica, node, node_ip, uptime_s, [counter], deps}` where
//!   `deps` maps each dependency role to one entry per endpoint:
//!   `{endpoint, ok, status, answer: {role, replica, node}, [error], ms}`, from a `GET /` to that
//!   endpoint bounded by [`DEP_TIMEOUT_MS`]. Calls carry [`DEPTH_HEADER`]; a request that arrives
//!   at depth [`MAX_CALL_DEPTH`] or more answers with its identity only (no `deps`), so a chain of
//!   dependencies never fans out beyond one hop.
//! - `POST /inc` (store mode): increments the counter, writes it atomically to `DIR/counter`
//!   (temporary file, fsync, rename, fsync of the directory) and answers `{counter, ...}` once it
//!   is durable, so the count survives a restart of the process on the same node.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections (a semaphore; the accept loop waits), request
//! heads of [`MAX_HEAD_BYTES`] read within [`HEADER_READ_TIMEOUT_MS`], request bodies refused
//! over [`MAX_REQUEST_BODY_BYTES`] (no route reads one), [`MAX_DEP_CALLS_IN_FLIGHT`] outbound
//! calls at once across all requests, answers read up to [`MAX_ANSWER_BYTES`], at most
//! [`MAX_DEP_ROLES`] roles of [`MAX_ENDPOINTS_PER_ROLE`] endpoints each. SIGTERM or SIGINT stops
//! accepting, lets open requests finish for up to [`SHUTDOWN_GRACE_MS`] and exits 0.

#![allow(clippy::disallowed_methods)] // uptime and call latency read the monotonic clock

use anyhow::Context as _;
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Colony name (`AWARE_COLONY`).
pub const ENV_COLONY: &str = "AWARE_COLONY";
/// Role name (`AWARE_ROLE`).
pub const ENV_ROLE: &str = "AWARE_ROLE";
/// Replica index within the role, a whole number (`AWARE_REPLICA`).
pub const ENV_REPLICA: &str = "AWARE_REPLICA";
/// The node's id, 16 hex digits (`AWARE_NODE`).
pub const ENV_NODE: &str = "AWARE_NODE";
/// The node's service IP (`AWARE_NODE_IP`): where the workload listens by default and where its
/// dependents reach it.
pub const ENV_NODE_IP: &str = "AWARE_NODE_IP";
/// The port to listen on when `--port` is not given (`AWARE_PORT`).
pub const ENV_PORT: &str = "AWARE_PORT";
/// Prefix and suffix of a dependency's endpoint list, `AWARE_<ROLE>_ENDPOINTS=host:port,...`
/// (see [`endpoints_var`]).
pub const ENV_ENDPOINTS_PREFIX: &str = "AWARE_";
pub const ENV_ENDPOINTS_SUFFIX: &str = "_ENDPOINTS";

/// Port when neither `--port` nor `AWARE_PORT` is given.
pub const DEFAULT_PORT: u16 = 8080;
/// Request header carrying how many hops a request is from the original caller.
pub const DEPTH_HEADER: &str = "x-aware-depth";
/// A request at this depth or deeper answers with its identity only.
pub const MAX_CALL_DEPTH: u32 = 1;
/// Whole budget of one dependency call (waiting for a call slot, connect, request, answer).
pub const DEP_TIMEOUT_MS: u64 = 300;
/// Outbound dependency calls in flight at once, over all requests.
pub const MAX_DEP_CALLS_IN_FLIGHT: usize = 64;
/// Dependency roles read from the environment (more are ignored, with a warning).
pub const MAX_DEP_ROLES: usize = 16;
/// Endpoints per dependency role (more are ignored, with a warning).
pub const MAX_ENDPOINTS_PER_ROLE: usize = 32;
/// Largest dependency answer read.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// Open connections at once; the accept loop waits for one to close.
pub const MAX_CONNECTIONS: usize = 256;
/// Largest request head (hyper's read buffer; its minimum is 8 KiB).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Time a client has to send a request head.
pub const HEADER_READ_TIMEOUT_MS: u64 = 5_000;
/// Largest request body accepted (declared length); no route reads one.
pub const MAX_REQUEST_BODY_BYTES: u64 = 4 * 1024;
/// Time open connections get to finish after SIGTERM.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
pub const ACCEPT_RETRY_MS: u64 = 50;
/// The counter's file name inside the store directory.
pub const COUNTER_FILE: &str = "counter";
/// Largest counter file read.
pub const MAX_COUNTER_FILE_BYTES: usize = 64;

/// `aware-agent workload ...`: workloads built into the agent binary.
#[derive(Debug, clap::Subcommand)]
pub enum WorkloadCommand {
    /// A small HTTP server that answers with its identity (role, replica, node) and calls the
    /// endpoints of the roles it depends on (`AWARE_<ROLE>_ENDPOINTS`); with --store, a counter
    /// kept on disk (POST /inc).
    Http(HttpArgs),
}

/// Flags of `workload http`.
#[derive(Clone, Debug, clap::Args)]
pub struct HttpArgs {
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, env = ENV_PORT, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Address to listen on [default: AWARE_NODE_IP, else 127.0.0.1].
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// Store mode: keep a counter in DIR/counter (POST /inc increments it); /healthz answers 503
    /// until it is loaded. A relative DIR is under the working directory.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

/// Who a workload is, from its environment. Unset variables are `None` (`null` in JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub colony: Option<String>,
    pub role: Option<String>,
    pub replica: Option<u32>,
    /// 16 hex digits.
    pub node: Option<String>,
    pub node_ip: Option<IpAddr>,
}

/// Everything a workload reads from its environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadEnv {
    pub identity: Identity,
    /// Dependency role (as named in the spec) → its endpoints (`host:port`), in the order given.
    pub deps: BTreeMap<String, Vec<String>>,
    /// What was ignored (too many roles or endpoints).
    pub warnings: Vec<String>,
}

/// A variable of the contract that has a bad value.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{var}=`{value}`: {reason}")]
    Invalid {
        var: String,
        value: String,
        reason: String,
    },
    #[error("{var}: the value is not UTF-8")]
    NotUtf8 { var: String },
}

/// The variable that lists the endpoints of role `role`: `AWARE_` + the role name upper-cased
/// with every character other than `A-Z0-9` turned into `_` + `_ENDPOINTS`
/// (`front-end` → `AWARE_FRONT_END_ENDPOINTS`).
pub fn endpoints_var(role: &str) -> String {
    let middle: String = role
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{ENV_ENDPOINTS_PREFIX}{middle}{ENV_ENDPOINTS_SUFFIX}")
}

/// The role an endpoints variable names, the inverse of [`endpoints_var`] for spec role names
/// (`[a-z0-9-]`): lower-cased, `_` → `-`. `None` for any other variable.
pub fn role_of_endpoints_var(var: &str) -> Option<String> {
    let middle = var
        .strip_prefix(ENV_ENDPOINTS_PREFIX)?
        .strip_suffix(ENV_ENDPOINTS_SUFFIX)?;
    let ok = !middle.is_empty()
        && middle
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    ok.then(|| middle.to_ascii_lowercase().replace('_', "-"))
}

/// Checks one `host:port` (an IPv6 host in brackets).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err(format!("`{endpoint}` is not host:port"));
    };
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if host.is_empty() || (host.contains(':') && !bracketed) || host.contains(char::is_whitespace) {
        return Err(format!(
            "`{endpoint}` has no valid host (IPv6 goes in brackets)"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("`{endpoint}` has no valid port (1..=65535)")),
    }
}

/// Reads the contract from `vars` (the process environment in production). Variables outside
/// the contract are ignored; a bad value is an error naming the variable.
pub fn parse_env(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<WorkloadEnv, EnvError> {
    let mut env = WorkloadEnv::default();
    let invalid = |var: &str, value: &str, reason: &str| EnvError::Invalid {
        var: var.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let mut endpoint_vars = BTreeMap::new();
    for (var, value) in vars {
        match var.as_str() {
            ENV_COLONY => env.identity.colony = Some(value),
            ENV_ROLE => env.identity.role = Some(value),
            ENV_REPLICA => {
                let n = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid(&var, &value, "not a whole number"))?;
                env.identity.replica = Some(n);
            }
            ENV_NODE => {
                let hex = value.trim();
                if hex.len() != 16 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(invalid(&var, &value, "not a node id (16 hex digits)"));
                }
                env.identity.node = Some(hex.to_ascii_lowercase());
            }
            ENV_NODE_IP => {
                let ip = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid(&var, &value, "not an IP address"))?;
                env.identity.node_ip = Some(ip);
            }
            _ => {
                if let Some(role) = role_of_endpoints_var(&var) {
                    endpoint_vars.insert(role, (var, value));
                }
            }
        }
    }
    for (role, (var, value)) in endpoint_vars {
        if env.deps.len() >= MAX_DEP_ROLES {
            env.warnings.push(format!(
                "{var} ignored: at most {MAX_DEP_ROLES} dependency roles are called"
            ));
            continue;
        }
        let mut endpoints = Vec::new();
        for endpoint in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            check_endpoint(endpoint).map_err(|reason| invalid(&var, &value, &reason))?;
            if endpoints.len() == MAX_ENDPOINTS_PER_ROLE {
                env.warnings.push(format!(
                    "{var}: only the first {MAX_ENDPOINTS_PER_ROLE} endpoints are called"
                ));
                break;
            }
            endpoints.push(endpoint.to_owned());
        }
        env.deps.insert(role, endpoints);
    }
    Ok(env)
}

/// The process environment's variables of the contract (`AWARE_*`), as UTF-8.
fn contract_vars() -> Result<Vec<(String, String)>, EnvError> {
    let mut out = Vec::new();
    for (var, value) in std::env::vars_os() {
        let Some(var) = var.to_str().filter(|v| v.starts_with("AWARE_")) else {
            continue;
        };
        let value = value.into_string().map_err(|_| EnvError::NotUtf8 {
            var: var.to_owned(),
        })?;
        out.push((var.to_owned(), value));
    }
    Ok(out)
}

/// Runs a workload command until it stops: 0 after a clean shutdown, 1 on an error (printed).
pub fn run(command: WorkloadCommand) -> ExitCode {
    let result = match command {
        WorkloadCommand::Http(args) => http(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "aware-agent workload http: {}",
                crate::error_line(&e)
            );
            ExitCode::FAILURE
        }
    }
}

fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("AWARE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn http(args: &HttpArgs) -> anyhow::Result<()> {
    init_logs();
    let env = parse_env(contract_vars()?)?;
    for w in &env.warnings {
        tracing::warn!("{w}");
    }
    let ip = args
        .bind
        .or(env.identity.node_ip)
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(
        SocketAddr::new(ip, args.port),
        args.store.clone(),
        env,
    ))
}

/// The counter of store mode.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StoreState {
    Loading,
    Ready(u64),
    /// The counter file cannot be used; it is left untouched.
    Broken(String),
}

#[derive(Debug)]
struct Store {
    path: PathBuf,
    state: Mutex<StoreState>,
    /// Serialises increments (held across the durable write; `/healthz` never waits for it).
    writer: tokio::sync::Mutex<()>,
}

/// Why an increment did not happen.
enum IncError {
    NotReady(String),
    Write(String),
}

impl Store {
    fn new(dir: &Path) -> Store {
        Store {
            path: dir.join(COUNTER_FILE),
            state: Mutex::new(StoreState::Loading),
            writer: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> StoreState {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, state: StoreState) {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
    }

    /// Reads the counter (0 when there is no file yet). Blocking.
    fn load(path: &Path) -> StoreState {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            return StoreState::Broken(format!("cannot create {}: {e}", dir.display()));
        }
        match crate::files::read_text_bounded(path, MAX_COUNTER_FILE_BYTES) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(n) => StoreState::Ready(n),
                Err(_) => StoreState::Broken(format!(
                    "{}: `{}` is not a counter (a whole number); the file is left as it is",
                    path.display(),
                    text.trim().escape_debug()
                )),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoreState::Ready(0),
            Err(e) => StoreState::Broken(format!("{}: {e}", path.display())),
        }
    }

    async fn increment(&self) -> Result<u64, IncError> {
        let _writer = self.writer.lock().await;
        let current = match self.state() {
            StoreState::Ready(n) => n,
            StoreState::Loading => return Err(IncError::NotReady("loading".to_owned())),
            StoreState::Broken(e) => return Err(IncError::NotReady(e)),
        };
        let next = current
            .checked_add(1)
            .ok_or_else(|| IncError::Write("the counter is at its maximum".to_owned()))?;
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || {
            crate::files::write_atomic(&path, format!("{next}\n").as_bytes(), 0o644)
        })
        .await;
        match written {
            Ok(Ok(())) => {
                self.set(StoreState::Ready(next));
                Ok(next)
            }
            Ok(Err(e)) => Err(IncError::Write(format!(
                "writing {}: {e}",
                self.path.display()
            ))),
            Err(e) => Err(IncError::Write(format!("writing the counter: {e}"))),
        }
    }
}

#[derive(Debug)]
struct App {
    identity: Identity,
    deps: BTreeMap<String, Vec<String>>,
    started: Instant,
    dep_calls: Semaphore,
    store: Option<Store>,
}

/// `GET /`'s answer.
#[derive(Debug, Serialize)]
struct Answer {
    #[serde(flatten)]
    identity: Identity,
    uptime_s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    counter: Option<u64>,
    /// Absent in an answer to a dependent (depth >= [`MAX_CALL_DEPTH`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    deps: Option<BTreeMap<String, Vec<DepResult>>>,
}

/// One call to one dependency endpoint.
#[derive(Debug, Serialize)]
struct DepResult {
    endpoint: String,
    ok: bool,
    /// The HTTP status, when an answer came.
    status: Option<u16>,
    /// `{role, replica, node}` from the answer, when it was a JSON object.
    answer: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// How long the call took.
    ms: u64,
}

/// Aborts a spawned task when dropped (a timed-out call leaves no connection behind).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One `GET /` to `endpoint` over a fresh connection: (status, body up to [`MAX_ANSWER_BYTES`]).
async fn fetch(endpoint: &str, depth: u32) -> Result<(u16, Bytes), String> {
    let stream = TcpStream::connect(endpoint)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let request = Request::get("/")
        .header(header::HOST, endpoint)
        .header(header::CONNECTION, "close")
        .header(DEPTH_HEADER, depth.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}

impl App {
    async fn call(&self, endpoint: &str, depth: u32) -> DepResult {
        let started = Instant::now();
        let attempt = tokio::time::timeout(Duration::from_millis(DEP_TIMEOUT_MS), async {
            let _slot = self
                .dep_calls
                .acquire()
                .await
                .map_err(|_| "shutting down".to_owned())?;
            fetch(endpoint, depth).await
        })
        .await;
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut result = DepResult {
            endpoint: endpoint.to_owned(),
            ok: false,
            status: None,
            answer: None,
            error: None,
            ms,
        };
        match attempt {
            Err(_) => result.error = Some(format!("no answer within {DEP_TIMEOUT_MS} ms")),
            Ok(Err(e)) => result.error = Some(e),
            Ok(Ok((status, body))) => {
                result.status = Some(status);
                let answer = match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(serde_json::Value::Object(map)) => Some(serde_json::Value::Object(
                        map.into_iter()
                            .filter(|(k, _)| matches!(k.as_str(), "role" | "replica" | "node"))
                            .collect(),
                    )),
                    _ => None,
                };
                let success = (200..300).contains(&status);
                result.error = match (&answer, success) {
                    (Some(_), true) => None,
                    (None, true) => Some("the answer is not a JSON object".to_owned()),
                    (_, false) => Some(format!("HTTP {status}")),
                };
                result.ok = result.error.is_none();
                result.answer = answer;
            }
        }
        result
    }

    async fn call_deps(&self, depth: u32) -> BTreeMap<String, Vec<DepResult>> {
        let calls = self.deps.iter().flat_map(|(role, endpoints)| {
            endpoints
                .iter()
                .map(move |e| async move { (role, self.call(e, depth).await) })
        });
        let mut out: BTreeMap<String, Vec<DepResult>> = self
            .deps
            .keys()
            .map(|role| (role.clone(), Vec::new()))
            .collect();
        for (role, result) in futures_util::future::join_all(calls).await {
            out.entry(role.clone()).or_default().push(result);
        }
        out
    }

    fn counter(&self) -> Option<u64> {
        match self.store.as_ref()?.state() {
            StoreState::Ready(n) => Some(n),
            _ => None,
        }
    }

    fn answer(&self, deps: Option<BTreeMap<String, Vec<DepResult>>>) -> Answer {
        Answer {
            identity: self.identity.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            counter: self.counter(),
            deps,
        }
    }
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    match app.store.as_ref().map(Store::state) {
        None | Some(StoreState::Ready(_)) => (StatusCode::OK, "ok\n").into_response(),
        Some(StoreState::Loading) => {
            (StatusCode::SERVICE_UNAVAILABLE, "store loading\n").into_response()
        }
        Some(StoreState::Broken(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store not ready: {e}\n"),
        )
            .into_response(),
    }
}

async fn root(State(app): State<Arc<App>>, headers: HeaderMap) -> Json<Answer> {
    let depth = headers
        .get(DEPTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let deps = if depth < MAX_CALL_DEPTH {
        Some(app.call_deps(depth.saturating_add(1)).await)
    } else {
        None
    };
    Json(app.answer(deps))
}

async fn inc(State(app): State<Arc<App>>) -> Response {
    let Some(store) = &app.store else {
        return (
            StatusCode::NOT_FOUND,
            "not a store (start with --store DIR)\n",
        )
            .into_response();
    };
    match store.increment().await {
        Ok(_) => Json(app.answer(None)).into_response(),
        Err(IncError::NotReady(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store not ready: {e}\n"),
        )
            .into_response(),
        Err(IncError::Write(e)) => {
            tracing::error!("{e}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

/// Refuses a declared body over [`MAX_REQUEST_BODY_BYTES`] before any handler runs.
async fn limit_body(request: Request<Body>, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY_BYTES) {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {MAX_REQUEST_BODY_BYTES} bytes\n"),
        )
            .into_response();
    }
    next.run(request).await
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/inc", post(inc))
        .layer(axum::middleware::from_fn(limit_body))
        .with_state(app)
}

async fn serve(addr: SocketAddr, store: Option<PathBuf>, env: WorkloadEnv) -> anyhow::Result<()> {
    // Registered before the listener exists, so an early signal still means a clean stop.
    let stop = crate::embed::stop_signal().context("cannot watch SIGTERM and SIGINT")?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on tcp {addr}"))?;
    let local = listener.local_addr().context("listener address")?;
    let app = Arc::new(App {
        identity: env.identity,
        deps: env.deps,
        started: Instant::now(),
        dep_calls: Semaphore::new(MAX_DEP_CALLS_IN_FLIGHT),
        store: store.as_deref().map(Store::new),
    });
    tracing::info!(
        addr = %local,
        role = app.identity.role.as_deref().unwrap_or("-"),
        replica = ?app.identity.replica,
        deps = ?app.deps.keys().collect::<Vec<_>>(),
        store = ?store,
        "workload http listening"
    );
    if app.store.is_some() {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let Some(store) = &app.store else { return };
            let path = store.path.clone();
            let state = tokio::task::spawn_blocking(move || Store::load(&path))
                .await
                .unwrap_or_else(|e| StoreState::Broken(format!("loading the counter: {e}")));
            match &state {
                StoreState::Broken(e) => tracing::error!("store not ready: {e}"),
                StoreState::Ready(n) => tracing::info!(counter = n, "store ready"),
                StoreState::Loading => {}
            }
            store.set(state);
        });
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        tracing::info!("stop signal received");
        let _ = stop_tx.send(true);
    });
    accept_loop(listener, router(app), stop_rx).await;
    tracing::info!("workload http stopped");
    Ok(())
}

/// Resolves once the stop signal came (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts until the stop signal, one task per connection (at most [`MAX_CONNECTIONS`]); then
/// lets the open connections finish gracefully for up to [`SHUTDOWN_GRACE_MS`].
async fn accept_loop(listener: TcpListener, router: Router, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            _ = stopped(&mut stop) => break,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut stop = stop.clone();
        conns.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS))
                .max_buf_size(MAX_HEAD_BYTES);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "connections still open after {SHUTDOWN_GRACE_MS} ms; closing them"
        );
        conns.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn endpoint_variable_names_round_trip_for_spec_role_names() {
        assert_eq!(endpoints_var("front-end"), "AWARE_FRONT_END_ENDPOINTS");
        assert_eq!(endpoints_var("store"), "AWARE_STORE_ENDPOINTS");
        assert_eq!(endpoints_var("a.b_c"), "AWARE_A_B_C_ENDPOINTS");
        for role in ["front-end", "store", "db2", "a-b-c"] {
            assert_eq!(
                role_of_endpoints_var(&endpoints_var(role)).as_deref(),
                Some(role)
            );
        }
        for other in [
            "AWARE_ENDPOINTS",
            "AWARE__ENDPOINTS",
            "AWARE_COLONY",
            "AWARE_x_ENDPOINTS",
            "X_STORE_ENDPOINTS",
        ] {
            assert_eq!(role_of_endpoints_var(other), None, "{other}");
        }
    }

    #[test]
    fn the_contract_is_read_and_bad_values_are_named() {
        let env = parse_env(vars(&[
            ("AWARE_COLONY", "demo"),
            ("AWARE_ROLE", "front-end"),
            ("AWARE_REPLICA", "2"),
            ("AWARE_NODE", "00000000000000AB"),
            ("AWARE_NODE_IP", "127.0.0.2"),
            (
                "AWARE_MIDDLEWARE_ENDPOINTS",
                "127.0.0.3:8081, [::1]:8081,,host:1",
            ),
            ("AWARE_STORE_ENDPOINTS", ""),
            ("AWARE_COLONY_KEY_FILE", "/x"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        assert_eq!(
            env.identity,
            Identity {
                colony: Some("demo".into()),
                role: Some("front-end".into()),
                replica: Some(2),
                node: Some("00000000000000ab".into()),
                node_ip: Some("127.0.0.2".parse().unwrap()),
            }
        );
        assert_eq!(
            env.deps,
            BTreeMap::from([
                (
                    "middleware".to_owned(),
                    vec![
                        "127.0.0.3:8081".into(),
                        "[::1]:8081".into(),
                        "host:1".into()
                    ]
                ),
                ("store".to_owned(), vec![]),
            ])
        );
        assert!(env.warnings.is_empty());

        for (var, value, says) in [
            ("AWARE_REPLICA", "x", "whole number"),
            ("AWARE_NODE", "abc", "16 hex"),
            ("AWARE_NODE_IP", "localhost", "IP address"),
            ("AWARE_STORE_ENDPOINTS", "127.0.0.1", "host:port"),
            ("AWARE_STORE_ENDPOINTS", "h:0", "port"),
            ("AWARE_STORE_ENDPOINTS", "::1:80", "brackets"),
        ] {
            let err = parse_env(vars(&[(var, value)])).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{var}=`{value}`")) && err.contains(says),
                "{err}"
            );
        }
    }

    #[test]
    fn too_many_endpoints_or_roles_are_cut_with_a_warning() {
        let many: Vec<String> = (1..=MAX_ENDPOINTS_PER_ROLE + 5)
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut list = vec![("AWARE_A_ENDPOINTS".to_owned(), many.join(","))];
        for i in 0..MAX_DEP_ROLES {
            list.push((format!("AWARE_R{i}_ENDPOINTS"), "h:1".to_owned()));
        }
        let env = parse_env(list).unwrap();
        assert_eq!(env.deps.len(), MAX_DEP_ROLES);
        assert_eq!(env.deps["a"].len(), MAX_ENDPOINTS_PER_ROLE);
        assert_eq!(env.warnings.len(), 2, "{:?}", env.warnings);
    }

    #[test]
    fn a_counter_file_is_read_and_a_bad_one_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(COUNTER_FILE);
        assert_eq!(Store::load(&path), StoreState::Ready(0));
        std::fs::write(&path, "41\n").unwrap();
        assert_eq!(Store::load(&path), StoreState::Ready(41));
        std::fs::write(&path, "forty\n").unwrap();
        let StoreState::Broken(e) = Store::load(&path) else {
            panic!("a bad counter must not load")
        };
        assert!(e.contains("forty") && e.contains("left as it is"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "forty\n");
    }
}
