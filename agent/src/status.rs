//! What an agent reports about itself and its colony ([`Status`]) and what applying a spec
//! returns ([`AppliedPlan`]), as serde types shared by the embedding API and the control plane,
//! plus their human renderings for the CLI. Node ids serialize as 16 hex digits.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::SocketAddr;
use swarm_core::NodeId;
use swarm_core::wire::{ColonyState, Version};

/// Serde for [`NodeId`] as the 16-hex-digit text used in logs.
pub mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};
    use swarm_core::NodeId;

    /// Writes the id as 16 hex digits.
    pub fn serialize<S: Serializer>(id: &NodeId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    /// Reads an id written as hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        u64::from_str_radix(&text, 16)
            .map(NodeId)
            .map_err(|e| serde::de::Error::custom(format!("node id `{text}`: {e}")))
    }
}

/// This node's part in the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    /// Obeys a queen (or waits for one).
    Worker,
    /// Asking for (pre-)votes.
    Candidate,
    /// Crowned and reigning.
    Queen,
}

impl From<dna::Role> for RoleName {
    fn from(r: dna::Role) -> RoleName {
        match r {
            dna::Role::Worker => RoleName::Worker,
            dna::Role::Candidate => RoleName::Candidate,
            dna::Role::Queen => RoleName::Queen,
        }
    }
}

/// The queen this node obeys (or itself while it reigns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueenInfo {
    /// The queen.
    #[serde(with = "hex_id")]
    pub node: NodeId,
    /// Her term.
    pub term: u64,
    /// Where she was last heard from, if she has been.
    pub addr: Option<SocketAddr>,
}

/// How SWIM sees a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// SWIM considers it alive.
    Up,
    /// SWIM declared it down.
    Down,
    /// In the roster but never reported by SWIM since this agent started.
    Unknown,
}

/// One other member of the colony.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member.
    #[serde(with = "hex_id")]
    pub node: NodeId,
    /// Where its frames last came from.
    pub addr: Option<SocketAddr>,
    /// How SWIM sees it.
    pub state: MemberState,
    /// A voting member (in the newest colony state's roster).
    pub roster: bool,
}

/// One replica placed on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The role.
    pub role: String,
    /// Which replica of it (from 0).
    pub replica: u32,
    /// The node that runs it.
    #[serde(with = "hex_id")]
    pub node: NodeId,
    /// Placed with the role's fallback needs.
    pub fallback: bool,
}

impl From<&swarm_core::wire::Assignment> for Placement {
    fn from(a: &swarm_core::wire::Assignment) -> Placement {
        Placement {
            role: a.role.clone(),
            replica: a.replica,
            node: a.node,
            fallback: a.fallback,
        }
    }
}

/// A replica the plan could not place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnplacedInfo {
    /// The role.
    pub role: String,
    /// Which replica of it.
    pub replica: u32,
    /// Why no node could take it.
    pub reason: String,
}

/// Transport and node counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Frames handed to the node.
    pub packets_in: u64,
    /// Frames the node refused (bad seal, version, size, ...).
    pub packets_rejected: u64,
    /// Frames the node produced.
    pub packets_out: u64,
    /// The transport's own counters (drops included).
    pub transport: crate::transport::TransportStats,
    /// State snapshots written to disk since start.
    pub persists: u64,
}

/// An agent's view of itself and its colony.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The colony's name.
    pub colony: String,
    /// This node.
    #[serde(with = "hex_id")]
    pub node: NodeId,
    /// Where peers reach it.
    pub addr: SocketAddr,
    /// Its part in the election.
    pub role: RoleName,
    /// The highest term it has seen.
    pub term: u64,
    /// How many times it restarted on this data directory.
    pub incarnation: u32,
    /// Fitness to be queen, 0..=1.
    pub pheromone: f64,
    /// The queen it obeys at this moment (itself while it reigns).
    pub queen: Option<QueenInfo>,
    /// Newest colony-state version held.
    pub version: Version,
    /// Newest version known committed.
    pub committed: Version,
    /// The name of the spec the plan was made from.
    pub spec: Option<String>,
    /// How many specs were applied to the colony so far.
    pub spec_version: u64,
    /// Every other node this agent has heard of, by id.
    pub members: Vec<MemberInfo>,
    /// The replicas this node runs (from the newest committed plan).
    pub assignments: Vec<Placement>,
    /// Traffic and persistence counters.
    pub counters: Counters,
    /// The runtime and every replica's state (colony-wide at the queen); `None` from an agent
    /// without workloads.
    #[serde(default)]
    pub workloads: Option<crate::workloads::WorkloadsStatus>,
}

impl Status {
    /// Members SWIM currently considers up.
    pub fn members_up(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.state == MemberState::Up)
            .count()
    }
}

/// The committed plan a spec produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPlan {
    /// The spec's name.
    pub spec: String,
    /// Its number among the specs applied to the colony.
    pub spec_version: u64,
    /// The committed colony-state version holding the plan.
    pub version: Version,
    /// Where every placed replica runs.
    pub placements: Vec<Placement>,
    /// What could not be placed, and why.
    pub unplaced: Vec<UnplacedInfo>,
}

impl AppliedPlan {
    /// The plan held in a colony state (which the caller knows to be committed).
    pub fn from_state(state: &ColonyState) -> AppliedPlan {
        AppliedPlan {
            spec: state
                .spec
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            spec_version: state.spec_version,
            version: state.version,
            placements: state.assignments.iter().map(Placement::from).collect(),
            unplaced: state
                .unplaced
                .iter()
                .map(|u| UnplacedInfo {
                    role: u.role.clone(),
                    replica: u.replica,
                    reason: u.reason.to_string(),
                })
                .collect(),
        }
    }

    /// The plan as the CLI prints it.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} (spec version {}) committed at version {}\n",
            self.spec, self.spec_version, self.version
        );
        let rows: Vec<[String; 4]> = self
            .placements
            .iter()
            .map(|p| {
                [
                    p.role.clone(),
                    p.replica.to_string(),
                    p.node.to_string(),
                    if p.fallback { "fallback needs" } else { "" }.to_owned(),
                ]
            })
            .collect();
        out.push_str(&crate::commands::table(
            ["ROLE", "REPLICA", "NODE", "NOTES"],
            &rows,
        ));
        if self.unplaced.is_empty() {
            let _ = writeln!(out, "all {} replicas placed", self.placements.len());
        } else {
            let _ = writeln!(out, "unplaced ({}):", self.unplaced.len());
            for u in &self.unplaced {
                let _ = writeln!(out, "  {} #{}: {}", u.role, u.replica, u.reason);
            }
        }
        out
    }
}

fn addr_text(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "-".to_owned(), |a| a.to_string())
}

impl Status {
    /// The status as the CLI prints it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "colony {}: node {} at {}, {:?} in term {} (incarnation {}, pheromone {:.3})",
            self.colony,
            self.node,
            self.addr,
            self.role,
            self.term,
            self.incarnation,
            self.pheromone
        );
        match &self.queen {
            Some(q) => {
                let _ = writeln!(
                    out,
                    "queen {} (term {}) at {}",
                    q.node,
                    q.term,
                    addr_text(q.addr)
                );
            }
            None => out.push_str("no queen\n"),
        }
        let _ = writeln!(
            out,
            "state version {} (committed {}), spec {} (version {})",
            self.version,
            self.committed,
            self.spec.as_deref().unwrap_or("none"),
            self.spec_version
        );
        let down = self.members.len() - self.members_up();
        let _ = writeln!(out, "\nmembers: {} up, {} not up", self.members_up(), down);
        let rows: Vec<[String; 4]> = self
            .members
            .iter()
            .map(|m| {
                [
                    m.node.to_string(),
                    addr_text(m.addr),
                    format!("{:?}", m.state).to_lowercase(),
                    if m.roster { "yes" } else { "no" }.to_owned(),
                ]
            })
            .collect();
        out.push_str(&crate::commands::table(
            ["NODE", "ADDR", "STATE", "ROSTER"],
            &rows,
        ));
        let _ = writeln!(out, "\nassignments here: {}", self.assignments.len());
        for a in &self.assignments {
            let _ = writeln!(
                out,
                "  {} #{}{}",
                a.role,
                a.replica,
                if a.fallback { " (fallback needs)" } else { "" }
            );
        }
        if let Some(w) = &self.workloads {
            out.push_str(&w.render());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_travel_as_hex_text() {
        let q = QueenInfo {
            node: NodeId(0xabc),
            term: 2,
            addr: None,
        };
        let json = serde_json::to_string(&q).unwrap();
        assert_eq!(json, r#"{"node":"0000000000000abc","term":2,"addr":null}"#);
        assert_eq!(serde_json::from_str::<QueenInfo>(&json).unwrap(), q);
        assert!(
            serde_json::from_str::<QueenInfo>(r#"{"node":"xyz","term":2,"addr":null}"#).is_err()
        );
    }
}
