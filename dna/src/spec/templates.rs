//! The built-in templates: the documented example colonies under `examples/colonies/`,
//! embedded at compile time so `template: NAME` works without any file access.

use super::yaml::{Node, Value};

/// The built-in template names.
pub const TEMPLATES: &[&str] = &["web-tier", "database-cluster", "compute-pool", "ai-stack"];

/// The YAML text of a built-in template, or `None` for an unknown name.
pub fn template(name: &str) -> Option<&'static str> {
    match name {
        "web-tier" => Some(include_str!("../../../examples/colonies/web-tier.yaml")),
        "database-cluster" => Some(include_str!(
            "../../../examples/colonies/database-cluster.yaml"
        )),
        "compute-pool" => Some(include_str!("../../../examples/colonies/compute-pool.yaml")),
        "ai-stack" => Some(include_str!("../../../examples/colonies/ai-stack.yaml")),
        _ => None,
    }
}

/// The known template a spec's top level names, if any.
pub(crate) fn used(root: &Node) -> Option<&str> {
    let Value::Map(entries) = &root.value else {
        return None;
    };
    entries
        .iter()
        .find(|(k, _)| k.scalar() == Some("template"))
        .and_then(|(_, v)| v.scalar())
        .filter(|t| template(t).is_some())
}
