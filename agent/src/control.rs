//! The control plane's requests and responses (serde types) and how an agent answers them,
//! independent of the transport that carries them (the mutual-TLS QUIC control plane,
//! [`crate::control_plane`]). A transport decodes a
//! [`ControlRequest`], calls [`answer`] with a [`Forwarder`] that can reach other agents, and
//! sends back the [`ControlResponse`].
//!
//! A spec sent to a worker is forwarded once to the queen it names (never further, so a stale
//! view cannot bounce a request around the colony).

use crate::driver::ApplyError;
use crate::embed::Handle;
use crate::status::{AppliedPlan, Status};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use swarm_core::spec::ColonySpec;

/// What a client (the CLI, or another agent forwarding) asks an agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// The agent's [`Status`].
    Status,
    /// Apply a resolved spec; answered with the committed plan.
    ApplySpec {
        /// The spec, already checked by the client.
        spec: ColonySpec,
    },
    /// The endpoints of a role (what its dependents get in `AWARE_<ROLE>_ENDPOINTS`).
    Endpoints {
        /// The role.
        role: String,
    },
}

/// An agent's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// Answer to [`ControlRequest::Status`].
    Status(Box<Status>),
    /// The committed plan made from an applied spec.
    Applied(AppliedPlan),
    /// The spec was not applied.
    ApplyFailed(ApplyError),
    /// The request could not be handled (the agent is stopping, a malformed request, ...).
    Failed(String),
    /// Answer to [`ControlRequest::Endpoints`]: `ip:port` of every replica, sorted.
    Endpoints {
        /// The role asked about.
        role: String,
        /// Its endpoints in the newest committed plan the agent acted on.
        endpoints: Vec<String>,
    },
}

/// Sends a request to another agent (used to forward a spec to the queen).
pub trait Forwarder {
    /// Sends `request` to the agent at `to` (marked as forwarded) and returns its answer.
    fn forward(
        &self,
        to: SocketAddr,
        request: ControlRequest,
    ) -> impl Future<Output = ControlResponse> + Send;
}

/// Answers one request on behalf of the local agent; `forward` is `None` when the request was
/// itself forwarded.
pub async fn answer<F: Forwarder>(
    handle: &Handle,
    request: ControlRequest,
    forward: Option<&F>,
) -> ControlResponse {
    match request {
        ControlRequest::Status => match handle.status().await {
            Ok(s) => ControlResponse::Status(Box::new(s)),
            Err(e) => ControlResponse::Failed(e.to_string()),
        },
        ControlRequest::ApplySpec { spec } => match handle.apply_spec(spec.clone()).await {
            Ok(plan) => ControlResponse::Applied(plan),
            Err(ApplyError::NotQueen {
                queen: Some(queen),
                addr: Some(addr),
            }) if addr != handle.addr() && forward.is_some() => {
                tracing::info!(%queen, %addr, "forwarding a spec to the queen");
                match forward {
                    Some(f) => f.forward(addr, ControlRequest::ApplySpec { spec }).await,
                    None => ControlResponse::Failed("no forwarder".into()),
                }
            }
            Err(e) => ControlResponse::ApplyFailed(e),
        },
        ControlRequest::Endpoints { role } => match handle.endpoints(&role).await {
            Ok(endpoints) => ControlResponse::Endpoints { role, endpoints },
            Err(e) => ControlResponse::Failed(e.to_string()),
        },
    }
}
