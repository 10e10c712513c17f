//! aware-agent: the embeddable colony node and the `aware-agent` binary. Every piece of I/O
//! lives here and only here, driving the sans-IO `dna::Node`.
//!
//! Start a node inside your own tokio runtime:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use aware_agent::{AgentBuilder, AgentEvent};
//! // Once: a colony CA, admin certificate and gossip keyring (`aware-agent ca init`).
//! let ca = std::path::Path::new("/tmp/aware-demo-ca");
//! if !ca.join("ca.crt").exists() {
//!     aware_agent::trust::init_local_colony(ca, "demo")?;
//! }
//! let agent = AgentBuilder::new("demo")
//!     .ca_dir(ca) // this node holds the CA: it issues its own certificate
//!     .data_dir("/tmp/aware-demo")
//!     .bind("127.0.0.1:7946".parse()?)
//!     .seeds(["127.0.0.1:7947".parse()?])
//!     .start()
//!     .await?;
//! let mut events = agent.events();
//! if let Ok(AgentEvent::Crowned { term }) = events.recv().await {
//!     println!("crowned in term {term}");
//! }
//! println!("{}", agent.status().await?.render());
//! agent.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Modules by responsibility:
//! - [`embed`]: [`AgentBuilder`], [`Agent`], [`Handle`] (the embedding API).
//! - [`driver`]: the task that owns the node (persist first, then events, then packets).
//! - [`persist`]: the framed, fsynced state file in the data directory.
//! - [`transport`]: the network seam; [`secure`]: its implementation (sealed gossip datagrams +
//!   mutual-TLS QUIC streams on one UDP port); [`trust`]: a node's certificate, keyring and
//!   gossip session at start (CA directory, join token).
//! - [`events`]: [`AgentEvent`]; [`status`]: [`Status`] and [`AppliedPlan`].
//! - [`control`]: agent requests (`status`, `apply`) and how they are answered;
//!   [`control_plane`]: serving them (and the keyring) on the mutual-TLS QUIC control plane,
//!   and the admin client.
//! - [`config`]: `aware-agent run` configuration (TOML < `AWARE_*` env < flags).
//! - [`net`]: the sealed gossip + mutual-TLS QUIC transport on one UDP port; [`pki`]: the colony
//!   CA, node certificates and join tokens; [`files`]: atomic file writes.
//! - [`discovery`]: seeds, mDNS and etcd.
//! - [`demo`]: `aware-agent demo`, a local colony of agent processes on loopback.
//! - [`metrics`]: Prometheus `/metrics` (members, term, elections, traffic, drops, plan).
//! - [`runtime`]: Docker and process runtimes that run replicas; [`reconcile`]: the reconciler that
//!   keeps this node's assignments running on one of them.
//! - operator tooling: [`caps`], [`compose`] (with [`interpolate`]), [`commands`], [`yaml_pos`].
//! - [`workload`]: the built-in demo workload (`aware-agent workload http`) and the `AWARE_*`
//!   environment contract every workload gets; [`workloads`]: the glue that feeds the
//!   reconciler from the node's committed state and its reports back to the queen.

pub mod caps;
pub mod commands;
pub mod compose;
pub mod config;
pub mod control;
pub mod control_plane;
pub mod demo;
pub mod discovery;
pub mod driver;
pub mod embed;
pub mod events;
pub mod files;
pub mod interpolate;
pub mod metrics;
pub mod net;
pub mod persist;
pub mod pki;
pub mod reconcile;
pub mod runtime;
pub mod secure;
pub mod status;
pub mod transport;
pub mod trust;
pub mod workload;
pub mod workloads;
pub mod yaml_pos;

pub use dna;
pub use driver::ApplyError;
pub use embed::{Agent, AgentBuilder, AgentError, Handle};
pub use events::{AgentEvent, DeposedReason};
pub use status::{AppliedPlan, Status};
pub use swarm_core;

/// An error and its causes on one line, `a: b: c`, leaving out a cause whose text the line
/// already holds: our typed errors name their source in their own message, as people read
/// them, and anyhow's `{:#}` would print it twice. What the binary's commands print on failure.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_line_names_each_cause_once() {
        let io = std::io::Error::other("disk on fire");
        let typed = crate::config::SettingsError::Read {
            file: "aware.toml".into(),
            source: io,
        };
        let e = anyhow::Error::new(typed).context("cannot start");
        let line = crate::error_line(&e);
        assert_eq!(line.matches("disk on fire").count(), 1, "{line}");
        assert!(line.starts_with("cannot start: aware.toml"), "{line}");
    }
}
