//! The driver: one tokio task that owns the `dna::Node` (the shape of quinn's endpoint driver).
//! It feeds the node frames from the transport, timer expiries and commands, each with `now`
//! from the monotonic clock, then drains it in the order the driver contract requires:
//! `poll_persist` (written durably, off the reactor, and awaited), `poll_event`, `poll_transmit`,
//! and finally `poll_timeout` for the next wake-up. There is no lock around the node and no
//! second copy of its state; other tasks talk to it through a bounded command channel with
//! oneshot replies ([`Command`]).
//!
//! Besides the node, the driver keeps what the node's events and accepted frames tell about the
//! other members (up or down, last address), for `status` and to name the queen's address.

use crate::events::{AgentEvent, DeposedReason};
use crate::persist::{PersistError, StateDir};
use crate::status::{AppliedPlan, Counters, MemberInfo, MemberState, Placement, QueenInfo, Status};
use crate::transport::{Inbound, Transport};
use dna::{Event, Node, Transmit};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm_core::spec::ColonySpec;
use swarm_core::swim::SwimId;
use swarm_core::{NodeId, Time};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Commands queued for the driver; senders wait when it is full.
pub const COMMAND_QUEUE: usize = 64;
/// Frames taken from the inbound queue before the node is drained (one fsync per batch).
pub const MAX_BATCH: usize = 64;
/// Spec applications waiting for their plan to commit; more are refused as busy.
pub const MAX_APPLY_WAITERS: usize = 16;
/// Members tracked for `status`; beyond it, members that are down and not in the roster are
/// forgotten first.
pub const MAX_PEERS: usize = 1 << 16;

/// Why the driver stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The state could not be written (the disk refused): nothing of that step was sent.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// The blocking task that writes the state panicked or was cancelled.
    #[error("the persistence task failed: {0}")]
    PersistTask(String),
    /// The transport stopped delivering frames.
    #[error("the transport closed its inbound queue")]
    TransportClosed,
}

/// Why a spec was not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ApplyError {
    /// Only the queen takes a spec. `queen` is the one this node obeys, if any, and `addr` where
    /// she was last heard from.
    #[error("this node is not the queen{}", queen_text(.queen, .addr))]
    NotQueen {
        /// The queen this node obeys.
        #[serde(with = "opt_hex_id")]
        queen: Option<NodeId>,
        /// Where she was last heard from (her gossip and control address).
        addr: Option<SocketAddr>,
    },
    /// The queen lost her crown before the plan committed. The spec may still be committed by
    /// her successor (it is in the state she replicated) or may be lost: apply it again.
    #[error("the queen of term {term} was deposed before the plan committed; apply it again")]
    Deposed {
        /// The term she reigned in when the spec was applied.
        term: u64,
    },
    /// [`MAX_APPLY_WAITERS`] applications already wait for their plan.
    #[error("too many spec applications are waiting for their plan; retry")]
    Busy,
    /// The agent stopped before answering.
    #[error("the agent has stopped")]
    Stopped,
    /// The control transport failed (connection, timeout, protocol).
    #[error("{0}")]
    Transport(String),
}

fn queen_text(queen: &Option<NodeId>, addr: &Option<SocketAddr>) -> String {
    match (queen, addr) {
        (Some(q), Some(a)) => format!(" (the queen is {q} at {a})"),
        (Some(q), None) => format!(" (the queen is {q})"),
        (None, _) => " (and knows of no queen right now)".to_owned(),
    }
}

mod opt_hex_id {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use swarm_core::NodeId;

    pub fn serialize<S: Serializer>(id: &Option<NodeId>, s: S) -> Result<S::Ok, S::Error> {
        id.map(|n| n.to_string()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NodeId>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| {
            u64::from_str_radix(&t, 16)
                .map(NodeId)
                .map_err(|e| serde::de::Error::custom(format!("node id `{t}`: {e}")))
        })
        .transpose()
    }
}

/// A request to the driver.
#[derive(Debug)]
pub enum Command {
    /// Replies with the node's [`Status`].
    Status(oneshot::Sender<Status>),
    /// Replies once the plan made from the spec is committed (or it cannot be).
    ApplySpec(ColonySpec, oneshot::Sender<Result<AppliedPlan, ApplyError>>),
    /// Members found by discovery.
    AddKnownMembers(Vec<SwimId>),
    /// An address found by discovery: becomes a seed and is asked to join (`Node::add_seed`).
    AddSeed(SocketAddr),
    /// Load in `0..=1`: weakens the node's pheromone.
    SetLoad(f64),
    /// Final persist, close the transport, stop; replies when done.
    Shutdown(oneshot::Sender<()>),
    /// Replica states from this node's reconciler, for the queen.
    ReportReplicas(Vec<swarm_core::wire::ReplicaReport>),
    /// Replies with the endpoints of a role in the newest committed state acted on.
    Endpoints(String, oneshot::Sender<Vec<String>>),
}

/// The node's monotonic clock: microseconds since the agent started. `Persisted` holds no
/// times, so each process may pick its own origin.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose origin is now.
    #[allow(clippy::disallowed_methods)] // the agent is where the clock is read
    pub fn start() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Time since the origin.
    #[allow(clippy::disallowed_methods)]
    pub fn now(&self) -> Time {
        Time(u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// The instant a node time stands for (to sleep until a deadline).
    pub fn instant(&self, t: Time) -> Instant {
        self.origin + Duration::from_micros(t.0)
    }
}

/// The sender id in a frame's header: `[magic][version][channel][sender u64 LE]...`. Read only
/// after the node has accepted the frame (so the seal verified).
fn frame_sender(frame: &[u8]) -> Option<NodeId> {
    let id: [u8; 8] = frame.get(3..11)?.try_into().ok()?;
    Some(NodeId(u64::from_le_bytes(id)))
}

#[derive(Debug, Default)]
struct Peer {
    up: bool,
    addr: Option<SocketAddr>,
}

#[derive(Debug)]
struct ApplyWaiter {
    term: u64,
    spec_version: u64,
    /// The spec applied (a spec equal to the current one brings no new `spec_version`).
    spec: ColonySpec,
    reply: oneshot::Sender<Result<AppliedPlan, ApplyError>>,
}

/// What woke the driver.
enum Input {
    Command(Option<Command>),
    Frame(Option<Inbound>),
    Timer,
}

/// The task that owns the node.
pub struct Driver {
    node: Node,
    colony: String,
    clock: Clock,
    transport: Box<dyn Transport>,
    inbound: mpsc::Receiver<Inbound>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<AgentEvent>,
    store: Arc<StateDir>,
    peers: BTreeMap<NodeId, Peer>,
    waiters: Vec<ApplyWaiter>,
    /// The (term, queen) last announced as `QueenChanged`.
    obeyed: Option<(u64, NodeId)>,
    /// What the node last said this node must run (`Event::Assigned`).
    assigned: Vec<Placement>,
    persists: u64,
    /// This node's workloads (the reconciler's inputs and reports), once set.
    workloads: Option<crate::workloads::Workloads>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("node", &self.node.id())
            .field("colony", &self.colony)
            .finish_non_exhaustive()
    }
}

/// Everything a driver is made of.
pub struct Parts {
    /// The node, freshly made with `Node::new` (its boot state not yet written).
    pub node: Node,
    /// The colony's name (reported in `status`).
    pub colony: String,
    /// The clock `node` was made with.
    pub clock: Clock,
    /// Where frames go.
    pub transport: Box<dyn Transport>,
    /// Where frames come from (the transport's queue).
    pub inbound: mpsc::Receiver<Inbound>,
    /// Requests from handles.
    pub commands: mpsc::Receiver<Command>,
    /// Where [`AgentEvent`]s are published.
    pub events: broadcast::Sender<AgentEvent>,
    /// The locked data directory.
    pub store: Arc<StateDir>,
}

impl Driver {
    /// A driver owning `p.node`. Call [`Driver::persist`], then spawn [`Driver::run`].
    pub fn new(p: Parts) -> Driver {
        Driver {
            node: p.node,
            colony: p.colony,
            clock: p.clock,
            transport: p.transport,
            inbound: p.inbound,
            commands: p.commands,
            events: p.events,
            store: p.store,
            peers: BTreeMap::new(),
            waiters: Vec::new(),
            obeyed: None,
            assigned: Vec::new(),
            persists: 0,
            workloads: None,
        }
    }

    /// Hands the driver this node's workloads: after each drain it keeps them in step with the
    /// committed state (see [`crate::workloads`]).
    pub fn set_workloads(&mut self, w: crate::workloads::Workloads) {
        self.workloads = Some(w);
    }

    /// Writes what the node wants persisted now (at boot: its id and new incarnation, before
    /// anything is sent).
    pub async fn persist(&mut self) -> Result<(), DriverError> {
        let Some(snapshot) = self.node.poll_persist() else {
            return Ok(());
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.store(&snapshot))
            .await
            .map_err(|e| DriverError::PersistTask(e.to_string()))??;
        self.persists += 1;
        Ok(())
    }

    /// Runs until shutdown (a command, or every handle dropped) or a fatal error. A failed
    /// persist is fatal: nothing the node produced in that step is sent.
    pub async fn run(mut self) -> Result<(), DriverError> {
        let result = self.run_loop().await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "the agent stops");
        }
        self.transport.close();
        for w in self.waiters.drain(..) {
            let _ = w.reply.send(Err(ApplyError::Stopped));
        }
        result
    }

    async fn run_loop(&mut self) -> Result<(), DriverError> {
        self.drain().await?;
        loop {
            let deadline = self.node.poll_timeout().map(|t| self.clock.instant(t));
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let input = tokio::select! {
                c = self.commands.recv() => Input::Command(c),
                f = self.inbound.recv() => Input::Frame(f),
                () = sleep => Input::Timer,
            };
            match input {
                Input::Command(None) => return self.shutdown(None).await,
                Input::Command(Some(Command::Shutdown(reply))) => {
                    return self.shutdown(Some(reply)).await;
                }
                Input::Command(Some(c)) => self.on_command(c),
                Input::Frame(None) => return Err(DriverError::TransportClosed),
                Input::Frame(Some(f)) => {
                    self.on_frame(f);
                    for _ in 1..MAX_BATCH {
                        match self.inbound.try_recv() {
                            Ok(f) => self.on_frame(f),
                            Err(_) => break,
                        }
                    }
                }
                Input::Timer => {}
            }
            let now = self.clock.now();
            if self.node.poll_timeout().is_some_and(|d| d <= now) {
                self.node.handle_timeout(now);
            }
            self.drain().await?;
        }
    }

    async fn shutdown(&mut self, reply: Option<oneshot::Sender<()>>) -> Result<(), DriverError> {
        // Leaving gracefully needs foca's `leave_cluster`, which `dna::Node` does not expose
        // yet: the others declare this node down by SWIM's failure detection.
        if let Some(w) = &mut self.workloads {
            w.shutdown().await;
        }
        let result = self.drain().await;
        tracing::info!(node = %self.node.id(), "agent stopped");
        if let Some(r) = reply {
            let _ = r.send(());
        }
        result
    }

    fn on_frame(&mut self, f: Inbound) {
        crate::metrics::frame_in(&f.frame);
        let rejected = self.node.stats().packets_rejected;
        self.node.handle_packet(f.from, &f.frame, self.clock.now());
        if self.node.stats().packets_rejected == rejected
            && let Some(id) = frame_sender(&f.frame)
        {
            self.peer(id).addr = Some(f.from);
        }
    }

    fn peer(&mut self, id: NodeId) -> &mut Peer {
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&id) {
            let roster = &self.node.state().roster;
            self.peers
                .retain(|n, p| p.up || roster.binary_search(n).is_ok());
        }
        self.peers.entry(id).or_default()
    }

    fn on_command(&mut self, c: Command) {
        let now = self.clock.now();
        match c {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::ApplySpec(spec, reply) => self.apply(spec, reply, now),
            Command::AddKnownMembers(members) => self.node.add_known_members(&members, now),
            Command::AddSeed(addr) => self.node.add_seed(addr, now),
            Command::SetLoad(load) => self.node.set_load(load.clamp(0.0, 1.0)),
            Command::Shutdown(_) => {}
            Command::ReportReplicas(reports) => self.node.report_replicas(reports, now),
            Command::Endpoints(role, reply) => {
                let list = self
                    .workloads
                    .as_ref()
                    .map(|w| w.endpoints(&role))
                    .unwrap_or_default();
                let _ = reply.send(list);
            }
        }
    }

    fn apply(
        &mut self,
        spec: ColonySpec,
        reply: oneshot::Sender<Result<AppliedPlan, ApplyError>>,
        now: Time,
    ) {
        let state = self.node.state();
        let settled = state.version == self.node.committed();
        if settled && state.spec.as_ref() == Some(&spec) && self.node.role() == dna::Role::Queen {
            // Nothing to change: the committed plan already comes from this spec.
            let _ = reply.send(Ok(AppliedPlan::from_state(state)));
            return;
        }
        if self.waiters.len() >= MAX_APPLY_WAITERS {
            let _ = reply.send(Err(ApplyError::Busy));
            return;
        }
        let spec_version = state.spec_version;
        let name = spec.name.clone();
        match self.node.apply_spec(spec.clone(), now) {
            Ok(()) => {
                tracing::info!(spec = %name, "spec applied; planning");
                self.waiters.push(ApplyWaiter {
                    term: self.node.term(),
                    spec_version,
                    spec,
                    reply,
                });
            }
            Err(e) => {
                let addr = e
                    .queen
                    .and_then(|q| self.peers.get(&q))
                    .and_then(|p| p.addr);
                let _ = reply.send(Err(ApplyError::NotQueen {
                    queen: e.queen,
                    addr,
                }));
            }
        }
    }

    /// Answers the spec applications whose plan committed or can no longer commit here.
    fn settle_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let state = self.node.state();
        let committed = state.version == self.node.committed();
        let queen = self.node.role() == dna::Role::Queen;
        let term = self.node.term();
        let mut still = Vec::with_capacity(self.waiters.len());
        for w in self.waiters.drain(..) {
            if w.reply.is_closed() {
                continue;
            }
            let planned =
                state.spec_version > w.spec_version || state.spec.as_ref() == Some(&w.spec);
            if committed && planned {
                let _ = w.reply.send(Ok(AppliedPlan::from_state(state)));
            } else if !queen || term != w.term {
                let _ = w.reply.send(Err(ApplyError::Deposed { term: w.term }));
            } else {
                still.push(w);
            }
        }
        self.waiters = still;
    }

    /// Persist first, then events, then packets (the driver contract).
    async fn drain(&mut self) -> Result<(), DriverError> {
        self.persist().await?;
        while let Some(e) = self.node.poll_event() {
            self.on_event(e);
        }
        if let Some(w) = &mut self.workloads {
            w.sync(&self.node);
        }
        while let Some(t) = self.node.poll_transmit() {
            self.send(t);
        }
        self.settle_waiters();
        Ok(())
    }

    /// The node chose the lane by size: a sealed datagram, or the peer's QUIC stream.
    fn send(&self, t: Transmit) {
        crate::metrics::frame_out(&t.payload);
        match t.lane {
            dna::Lane::Datagram => self.transport.send_datagram(t.to, t.payload),
            dna::Lane::Stream => self.transport.send_stream(t.to, t.payload),
        }
    }

    fn on_event(&mut self, e: Event) {
        let me = self.node.id();
        let out = match e {
            Event::MemberUp(node) => {
                tracing::info!(member = %node, "member up");
                self.peer(node).up = true;
                Some(AgentEvent::MemberUp { node })
            }
            Event::MemberDown(node) => {
                tracing::info!(member = %node, "member down");
                self.peer(node).up = false;
                Some(AgentEvent::MemberDown { node })
            }
            Event::Crowned {
                term,
                roster,
                inherited,
            } => {
                tracing::info!(node = %me, term, roster, %inherited, "crowned queen");
                self.obeyed = None;
                Some(AgentEvent::Crowned { term })
            }
            Event::Abdicated { term, reason } => {
                tracing::info!(node = %me, term, ?reason, "no longer queen");
                Some(AgentEvent::Deposed {
                    term,
                    reason: DeposedReason::from(reason),
                })
            }
            Event::Obeyed { term, queen, .. } => {
                if self.obeyed == Some((term, queen)) {
                    None
                } else {
                    self.obeyed = Some((term, queen));
                    tracing::info!(%queen, term, "obeys a new queen");
                    Some(AgentEvent::QueenChanged { term, queen })
                }
            }
            Event::QueenLost { term, queen } => {
                tracing::info!(%queen, term, "queen lost");
                self.obeyed = None;
                Some(AgentEvent::QueenLost { term, queen })
            }
            Event::Committed { version, .. } => {
                tracing::debug!(%version, "committed");
                Some(AgentEvent::Committed { version })
            }
            Event::Assigned {
                version,
                assignments,
            } => {
                tracing::info!(%version, replicas = assignments.len(), "assignments changed");
                self.assigned = assignments.iter().map(Placement::from).collect();
                Some(AgentEvent::Assigned {
                    version,
                    assignments,
                })
            }
            Event::Planned {
                version,
                assigned,
                unplaced,
                ..
            } => {
                tracing::info!(%version, assigned, unplaced, "planned");
                None
            }
            Event::Stood { term, pre } => {
                tracing::debug!(term, pre, "stood for queen");
                None
            }
            Event::Reigns { .. }
            | Event::Accepted { .. }
            | Event::SplitBrain { .. }
            | Event::RoleHealth { .. } => None,
        };
        if let Some(ev) = out {
            // No subscriber is fine; a slow one lags (see `events`).
            let _ = self.events.send(ev);
        }
    }

    fn status(&self) -> Status {
        let now = self.clock.now();
        let node = &self.node;
        let state = node.state();
        let me = node.id();
        let queen = node.queen(now).map(|(term, q)| QueenInfo {
            node: q,
            term,
            addr: if q == me {
                Some(node.addr())
            } else {
                self.peers.get(&q).and_then(|p| p.addr)
            },
        });
        let mut members: BTreeMap<NodeId, MemberInfo> = self
            .peers
            .iter()
            .filter(|(n, _)| **n != me)
            .map(|(n, p)| {
                (
                    *n,
                    MemberInfo {
                        node: *n,
                        addr: p.addr,
                        state: if p.up {
                            MemberState::Up
                        } else {
                            MemberState::Down
                        },
                        roster: false,
                    },
                )
            })
            .collect();
        for n in state.roster.iter().filter(|n| **n != me) {
            members
                .entry(*n)
                .or_insert(MemberInfo {
                    node: *n,
                    addr: None,
                    state: MemberState::Unknown,
                    roster: false,
                })
                .roster = true;
        }
        let stats = node.stats();
        Status {
            colony: self.colony.clone(),
            node: me,
            addr: node.addr(),
            role: node.role().into(),
            term: node.term(),
            incarnation: node.incarnation(),
            pheromone: node.pheromone().as_f64(),
            queen,
            version: state.version,
            committed: node.committed(),
            spec: state.spec.as_ref().map(|s| s.name.clone()),
            spec_version: state.spec_version,
            members: members.into_values().collect(),
            assignments: self.assigned.clone(),
            counters: Counters {
                packets_in: stats.packets_in,
                packets_rejected: stats.packets_rejected,
                packets_out: stats.packets_out,
                transport: self.transport.stats(),
                persists: self.persists,
            },
            workloads: self.workloads.as_ref().map(|w| w.status(node)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_is_read_from_the_header() {
        let mut frame = vec![0xA7, 1, 2];
        frame.extend_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        frame.extend_from_slice(b"body");
        assert_eq!(frame_sender(&frame), Some(NodeId(0x1122_3344_5566_7788)));
        assert_eq!(frame_sender(&frame[..10]), None);
    }
}
