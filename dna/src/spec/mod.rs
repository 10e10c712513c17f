//! The colony-spec language: YAML text → validated [`ColonySpec`], with `FILE:LINE:COL` errors.
//!
//! STUB: the real parser, templates and validation land with issue 4 (owner: spec helper).

use swarm_core::spec::{ColonySpec, NodeRecord};

pub mod quantity;

/// One problem found in a spec or nodes file, with its 1-based position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// Every problem found, in file order (never empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl std::fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A parsed, validated spec that still knows where each role came from, so later checks
/// (against a set of nodes) can point at the offending line.
#[derive(Clone, Debug)]
pub struct SpecDoc {
    spec: ColonySpec,
}

impl SpecDoc {
    pub fn spec(&self) -> &ColonySpec {
        &self.spec
    }

    pub fn into_spec(self) -> ColonySpec {
        self.spec
    }

    /// Requests no node could ever satisfy (e.g. 3 GPUs when the largest node has 2).
    pub fn check_nodes(&self, _nodes: &[NodeRecord]) -> Result<(), SpecErrors> {
        Ok(())
    }
}

/// Parse and validate a colony spec. `file` is only used in error messages.
pub fn parse(_text: &str, file: &str) -> Result<SpecDoc, SpecErrors> {
    Err(SpecErrors(vec![SpecError {
        file: file.to_owned(),
        line: 1,
        col: 1,
        message: "spec parsing is not implemented yet".to_owned(),
    }]))
}

/// Parse a nodes file: a YAML list of `{id, cpu, memory, disk, gpus, arch, labels}`.
pub fn parse_nodes(_text: &str, file: &str) -> Result<Vec<NodeRecord>, SpecErrors> {
    Err(SpecErrors(vec![SpecError {
        file: file.to_owned(),
        line: 1,
        col: 1,
        message: "nodes parsing is not implemented yet".to_owned(),
    }]))
}

/// The built-in template names.
pub const TEMPLATES: &[&str] = &["web-tier", "database-cluster", "compute-pool", "ai-stack"];
