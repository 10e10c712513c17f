//! Prometheus metrics of one agent: the `metrics` facade with `metrics-exporter-prometheus`'s
//! recorder (no listener of its own), served from our own axum route `GET /metrics` on
//! `metrics_bind` (loopback by default).
//!
//! Where the values come from:
//! - at each scrape, the driver's [`Status`] (members by state, term, is_queen, versions,
//!   assignments, packet and drop counters), so gauges are never staler than the scrape;
//! - the agent's event stream ([`AgentEvent`]), folded by a [`Tracker`]: queens seen (elections)
//!   and failovers (a new queen after the previous one was lost);
//! - two calls in the driver, [`frame_in`] and [`frame_out`], for bytes in and out.
//!
//! Every name is a constant in [`names`]. One recorder per process: with several agents in one
//! process (embedding), the counters add up.

use crate::embed::Handle;
use crate::events::{AgentEvent, DeposedReason};
use crate::status::{MemberState, RoleName, Status};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use swarm_core::NodeId;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinSet;

/// Where `/metrics` listens when `metrics_bind` is not configured.
pub const DEFAULT_METRICS_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);
/// How often the recorder's upkeep runs (drains histogram buckets; cheap).
pub const UPKEEP_INTERVAL_MS: u64 = 5_000;
/// How long a scrape waits for the driver's status before answering without it.
pub const STATUS_TIMEOUT_MS: u64 = 1_000;
/// Scrapes served at once; more connections wait to be accepted.
pub const MAX_SCRAPERS: usize = 8;
/// A scraper must send its request head within this.
pub const HEADER_READ_TIMEOUT_MS: u64 = 5_000;
/// Largest request head read (hyper's minimum).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Metric names.
pub mod names {
    /// Gauge: when this node's certificate expires, in Unix seconds (alert on
    /// `aware_certificate_expiry_timestamp_seconds - time() < 30 * 86400`).
    pub const CERT_EXPIRY: &str = "aware_certificate_expiry_timestamp_seconds";
    /// Gauge, label `state` (up, down, unknown): other members as SWIM sees them.
    pub const MEMBERS: &str = "aware_members";
    /// Gauge: other members in the voting roster of the newest colony state.
    pub const ROSTER: &str = "aware_roster_members";
    /// Gauge: the highest term this node has seen.
    pub const TERM: &str = "aware_term";
    /// Gauge: 1 while this node reigns.
    pub const IS_QUEEN: &str = "aware_is_queen";
    /// Gauge: 1 while this node obeys (or is) a queen.
    pub const HAS_QUEEN: &str = "aware_has_queen";
    /// Counter: queens this node saw crowned (itself or one it started to obey).
    pub const ELECTIONS: &str = "aware_elections_total";
    /// Counter: new queens after the previous one was lost (her lease ran out, or this node
    /// lost its majority as queen).
    pub const FAILOVERS: &str = "aware_failovers_total";
    /// Counter: queen leases that ran out at this node.
    pub const QUEEN_LOST: &str = "aware_queen_lost_total";
    /// Counter, label `to` (up, down): member state changes.
    pub const MEMBER_CHANGES: &str = "aware_member_changes_total";
    /// Counter: frames handed to the node.
    pub const PACKETS_IN: &str = "aware_packets_received_total";
    /// Counter: frames the node produced.
    pub const PACKETS_OUT: &str = "aware_packets_sent_total";
    /// Counter, label `channel` (swim, colony): bytes of frames handed to the node (frames as
    /// the node reads them: no UDP/IP headers, no seal).
    pub const BYTES_IN: &str = "aware_bytes_received_total";
    /// Counter, label `channel` (swim, colony): bytes of frames the node produced.
    pub const BYTES_OUT: &str = "aware_bytes_sent_total";
    /// Counter, label `reason`: frames dropped (see [`super::DropReason`]).
    pub const DROPS: &str = "aware_drops_total";
    /// Gauge: sequence number of the newest committed colony-state version (the plan).
    pub const PLAN_VERSION: &str = "aware_plan_version";
    /// Gauge: sequence number of the newest colony-state version held (committed or not).
    pub const STATE_VERSION: &str = "aware_state_version";
    /// Gauge: how many specs were applied to the colony.
    pub const SPEC_VERSION: &str = "aware_spec_version";
    /// Gauge: replicas the committed plan assigns to this node.
    pub const ASSIGNMENTS: &str = "aware_assignments";
    /// Counter: state snapshots written to disk.
    pub const PERSISTS: &str = "aware_persists_total";
    /// Gauge: 1 if the last scrape got the driver's status in time.
    pub const STATUS_UP: &str = "aware_status_up";
}

/// Why frames were dropped (`reason` label of [`names::DROPS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The node refused the frame (bad seal, version, size, ...).
    Rejected,
    /// The inbound queue was full.
    InboundQueueFull,
    /// The socket refused or was busy.
    SendFailed,
    /// Too large for its lane.
    Oversize,
}

impl DropReason {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Rejected => "rejected",
            DropReason::InboundQueueFull => "inbound_queue_full",
            DropReason::SendFailed => "send_failed",
            DropReason::Oversize => "oversize",
        }
    }
}

/// The metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Another recorder is installed in this process.
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    /// The listener could not bind.
    #[error("cannot listen for metrics on tcp {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Installs the Prometheus recorder as this process's global recorder and describes every
/// metric. Once per process.
pub fn install_recorder() -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| MetricsError::Recorder(e.to_string()))?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(names::MEMBERS, "Other members by SWIM state");
    describe_gauge!(
        names::CERT_EXPIRY,
        "When this node's certificate expires (Unix seconds)"
    );
    describe_gauge!(names::ROSTER, "Members of the voting roster");
    describe_gauge!(names::TERM, "Highest term seen");
    describe_gauge!(names::IS_QUEEN, "1 while this node reigns");
    describe_gauge!(names::HAS_QUEEN, "1 while this node obeys or is a queen");
    describe_counter!(names::ELECTIONS, "Queens seen crowned");
    describe_counter!(names::FAILOVERS, "New queens after the previous was lost");
    describe_counter!(names::QUEEN_LOST, "Queen leases that ran out here");
    describe_counter!(names::MEMBER_CHANGES, "Member state changes");
    describe_counter!(names::PACKETS_IN, "Frames handed to the node");
    describe_counter!(names::PACKETS_OUT, "Frames the node produced");
    describe_counter!(names::BYTES_IN, "Bytes of frames handed to the node");
    describe_counter!(names::BYTES_OUT, "Bytes of frames the node produced");
    describe_counter!(names::DROPS, "Frames dropped, by reason");
    describe_gauge!(
        names::PLAN_VERSION,
        "Seq of the newest committed state version"
    );
    describe_gauge!(names::STATE_VERSION, "Seq of the newest state version held");
    describe_gauge!(names::SPEC_VERSION, "Specs applied to the colony");
    describe_gauge!(names::ASSIGNMENTS, "Replicas assigned to this node");
    describe_counter!(names::PERSISTS, "State snapshots written");
    describe_gauge!(
        names::STATUS_UP,
        "1 if the last scrape got the status in time"
    );
}

/// The `channel` label of a frame: its third header byte (`swarm_core::wire`: 1 SWIM, 2 colony).
fn channel(frame: &[u8]) -> &'static str {
    match frame.get(2) {
        Some(1) => "swim",
        Some(2) => "colony",
        _ => "other",
    }
}

/// A frame arrived for the node (called by the driver).
pub fn frame_in(frame: &[u8]) {
    metrics::counter!(names::BYTES_IN, "channel" => channel(frame)).increment(frame.len() as u64);
}

/// The node sent a frame (called by the driver).
pub fn frame_out(frame: &[u8]) {
    metrics::counter!(names::BYTES_OUT, "channel" => channel(frame)).increment(frame.len() as u64);
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Sets every status-derived metric.
pub fn record_status(s: &Status) {
    let count = |state| s.members.iter().filter(|m| m.state == state).count() as f64;
    for (state, label) in [
        (MemberState::Up, "up"),
        (MemberState::Down, "down"),
        (MemberState::Unknown, "unknown"),
    ] {
        metrics::gauge!(names::MEMBERS, "state" => label).set(count(state));
    }
    let roster_others = s.members.iter().filter(|m| m.roster).count();
    metrics::gauge!(names::ROSTER).set(roster_others as f64);
    metrics::gauge!(names::TERM).set(s.term as f64);
    metrics::gauge!(names::IS_QUEEN).set(flag(s.role == RoleName::Queen));
    metrics::gauge!(names::HAS_QUEEN).set(flag(s.queen.is_some()));
    metrics::gauge!(names::PLAN_VERSION).set(s.committed.seq as f64);
    metrics::gauge!(names::STATE_VERSION).set(s.version.seq as f64);
    metrics::gauge!(names::SPEC_VERSION).set(s.spec_version as f64);
    metrics::gauge!(names::ASSIGNMENTS).set(s.assignments.len() as f64);
    let c = &s.counters;
    metrics::counter!(names::PACKETS_IN).absolute(c.packets_in);
    metrics::counter!(names::PACKETS_OUT).absolute(c.packets_out);
    metrics::counter!(names::PERSISTS).absolute(c.persists);
    for (reason, n) in [
        (DropReason::Rejected, c.packets_rejected),
        (DropReason::InboundQueueFull, c.transport.dropped_in),
        (DropReason::SendFailed, c.transport.dropped_out),
        (DropReason::Oversize, c.transport.oversize),
    ] {
        metrics::counter!(names::DROPS, "reason" => reason.label()).absolute(n);
    }
}

/// Folds the event stream into the election counters.
#[derive(Debug, Default)]
pub struct Tracker {
    /// The queen last seen: (term, node); `None` for this node itself.
    queen: Option<(u64, Option<NodeId>)>,
    /// The previous queen was lost and no new one was seen yet.
    lost: bool,
}

impl Tracker {
    /// Counts what `event` says.
    pub fn observe(&mut self, event: &AgentEvent) {
        match event {
            AgentEvent::Crowned { term } => self.new_queen(*term, None),
            AgentEvent::QueenChanged { term, queen } => self.new_queen(*term, Some(*queen)),
            AgentEvent::QueenLost { .. } => {
                metrics::counter!(names::QUEEN_LOST).increment(1);
                self.lost = true;
            }
            AgentEvent::Deposed {
                reason: DeposedReason::LostMajority,
                ..
            } => self.lost = true,
            AgentEvent::MemberUp { .. } => {
                metrics::counter!(names::MEMBER_CHANGES, "to" => "up").increment(1);
            }
            AgentEvent::MemberDown { .. } => {
                metrics::counter!(names::MEMBER_CHANGES, "to" => "down").increment(1);
            }
            _ => {}
        }
    }

    fn new_queen(&mut self, term: u64, queen: Option<NodeId>) {
        if self.queen == Some((term, queen)) {
            return;
        }
        metrics::counter!(names::ELECTIONS).increment(1);
        if self.lost {
            metrics::counter!(names::FAILOVERS).increment(1);
        }
        self.lost = false;
        self.queen = Some((term, queen));
    }
}

#[derive(Clone)]
struct App {
    prometheus: PrometheusHandle,
    agent: Handle,
}

async fn scrape(State(app): State<App>) -> Response {
    let status =
        tokio::time::timeout(Duration::from_millis(STATUS_TIMEOUT_MS), app.agent.status()).await;
    match status {
        Ok(Ok(s)) => {
            record_status(&s);
            metrics::gauge!(names::STATUS_UP).set(1.0);
        }
        _ => metrics::gauge!(names::STATUS_UP).set(0.0),
    }
    if let Some(t) = app.agent.cert_not_after() {
        let unix_s = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(names::CERT_EXPIRY).set(unix_s);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.prometheus.render(),
    )
        .into_response()
}

/// The running endpoint; dropping it stops every task it started.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl MetricsServer {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Binds `bind`, then serves `GET /metrics`, folds `events` into a [`Tracker`] and runs the
/// recorder's upkeep every [`UPKEEP_INTERVAL_MS`].
pub async fn serve(
    bind: SocketAddr,
    prometheus: PrometheusHandle,
    agent: Handle,
    mut events: broadcast::Receiver<AgentEvent>,
) -> Result<MetricsServer, MetricsError> {
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| MetricsError::Bind { addr: bind, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr: bind, source })?;
    let mut tasks = JoinSet::new();
    let upkeep = prometheus.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(UPKEEP_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    tasks.spawn(async move {
        let mut tracker = Tracker::default();
        loop {
            match events.recv().await {
                Ok(e) => tracker.observe(&e),
                // Lost events are lost counts; the status-derived gauges stay exact.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    let router = Router::new()
        .route("/metrics", get(scrape))
        .with_state(App { prometheus, agent });
    tasks.spawn(accept_loop(listener, router));
    Ok(MetricsServer { addr, tasks })
}

async fn accept_loop(listener: TcpListener, router: Router) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPERS));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        conns.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS))
                .max_buf_size(MAX_HEAD_BYTES);
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusRecorder;

    fn recorder() -> PrometheusRecorder {
        PrometheusBuilder::new().build_recorder()
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_new_queen_after_a_lost_one_is_a_failover() {
        let rec = recorder();
        metrics::with_local_recorder(&rec, || {
            let mut t = Tracker::default();
            t.observe(&AgentEvent::QueenChanged {
                term: 1,
                queen: NodeId(7),
            });
            // The same queen again is no election.
            t.observe(&AgentEvent::QueenChanged {
                term: 1,
                queen: NodeId(7),
            });
            t.observe(&AgentEvent::QueenLost {
                term: 1,
                queen: NodeId(7),
            });
            t.observe(&AgentEvent::Crowned { term: 2 });
            // A hand-over is an election, not a failover.
            t.observe(&AgentEvent::Deposed {
                term: 2,
                reason: DeposedReason::Handover,
            });
            t.observe(&AgentEvent::QueenChanged {
                term: 3,
                queen: NodeId(9),
            });
            t.observe(&AgentEvent::MemberDown { node: NodeId(7) });
        });
        let text = rec.handle().render();
        assert_eq!(value(&text, names::ELECTIONS), Some(3.0), "{text}");
        assert_eq!(value(&text, names::FAILOVERS), Some(1.0), "{text}");
        assert_eq!(value(&text, names::QUEEN_LOST), Some(1.0), "{text}");
        assert_eq!(
            value(&text, &format!("{}{{to=\"down\"}}", names::MEMBER_CHANGES)),
            Some(1.0),
            "{text}"
        );
    }
}
