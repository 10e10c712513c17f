//! The `aware-agent` subcommands as library functions: each reads its files, does its work and
//! returns the text to print, so tests can run them without a process and `main.rs` stays a
//! thin clap wrapper. Errors carry the file (and, for content errors, `FILE:LINE:COL`).

use crate::caps::{self, ConfigError, DetectEnv};
use crate::compose::{self, ComposeError};
use dna::spec::quantity::fmt_mib;
use dna::spec::{SpecDoc, SpecErrors};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use swarm_core::Capabilities;
use swarm_core::spec::{ColonySpec, Count, NodeRecord};

/// What a command prints: `stdout` always ends with a newline when not empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    fn stdout(text: String) -> Output {
        Output {
            stdout: text,
            stderr: String::new(),
        }
    }
}

/// Why a command failed. Each variant displays as the lines to print on stderr.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spec(#[from] SpecErrors),
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot write the output: {0}")]
    Emit(String),
}

fn read(path: &Path) -> Result<(String, String), CommandError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, file)),
        Err(source) => Err(CommandError::Read { file, source }),
    }
}

/// A parsed spec and the nodes it was checked against.
struct Loaded {
    doc: SpecDoc,
    nodes: Vec<NodeRecord>,
}

/// Parse a spec and, when given, a nodes file, reporting the errors of both at once.
fn load(spec: &Path, nodes: Option<&Path>) -> Result<Loaded, CommandError> {
    let (spec_text, spec_file) = read(spec)?;
    let nodes_text = nodes.map(read).transpose()?;
    let doc = dna::spec::parse(&spec_text, &spec_file);
    let records = match &nodes_text {
        Some((text, file)) => dna::spec::parse_nodes(text, file),
        None => Ok(Vec::new()),
    };
    match (doc, records) {
        (Ok(doc), Ok(records)) => {
            if nodes.is_some() {
                doc.check_nodes(&records)?;
            }
            Ok(Loaded {
                doc,
                nodes: records,
            })
        }
        (Err(SpecErrors(mut a)), Err(SpecErrors(b))) => {
            a.extend(b);
            Err(SpecErrors(a).into())
        }
        (Err(e), _) | (_, Err(e)) => Err(e.into()),
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// One line about a spec: `shop: 4 roles, 9 replicas + 1 global role`.
pub fn summary(spec: &ColonySpec) -> String {
    let mut replicas: u64 = 0;
    let mut global = 0usize;
    for role in &spec.roles {
        match role.count {
            Count::Replicas(n) => replicas += u64::from(n),
            Count::Global => global += 1,
        }
    }
    let mut line = format!(
        "{}: {}, {}",
        spec.name,
        plural(spec.roles.len(), "role"),
        plural(usize::try_from(replicas).unwrap_or(usize::MAX), "replica")
    );
    if global > 0 {
        let _ = write!(line, " + {}", plural(global, "global role"));
    }
    line
}

/// `spec check FILE [--nodes NODES]`: one summary line, or every error.
pub fn spec_check(spec: &Path, nodes: Option<&Path>) -> Result<Output, CommandError> {
    let loaded = load(spec, nodes)?;
    let mut line = summary(loaded.doc.spec());
    if let Some(template) = loaded.doc.template() {
        let _ = write!(line, " (template {template})");
    }
    if nodes.is_some() {
        let _ = write!(
            line,
            "; checked against {}",
            plural(loaded.nodes.len(), "node")
        );
    }
    line.push('\n');
    Ok(Output::stdout(line))
}

#[derive(Serialize)]
struct PlanJson<'a> {
    placements: Vec<PlacementJson<'a>>,
    unplaced: Vec<UnplacedJson<'a>>,
}

#[derive(Serialize)]
struct PlacementJson<'a> {
    role: &'a str,
    replica: u32,
    node: u64,
    fallback: bool,
    /// The node's GPU indices reserved for the replica.
    gpus: &'a [u16],
}

#[derive(Serialize)]
struct UnplacedJson<'a> {
    role: &'a str,
    replica: u32,
    reason: String,
}

/// The NOTES column of a placement: fallback needs, GPU indices.
fn notes(a: &swarm_core::wire::Assignment) -> String {
    let mut notes = Vec::new();
    if a.fallback {
        notes.push("fallback needs".to_owned());
    }
    if !a.gpus.is_empty() {
        let ids: Vec<String> = a.gpus.iter().map(u16::to_string).collect();
        notes.push(format!("gpus {}", ids.join(",")));
    }
    notes.join("; ")
}

/// `spec plan FILE --nodes NODES [--json]`: where every replica goes, or why it cannot.
pub fn spec_plan(spec: &Path, nodes: &Path, json: bool) -> Result<Output, CommandError> {
    let loaded = load(spec, Some(nodes))?;
    let plan = dna::plan::plan(loaded.doc.spec(), &loaded.nodes, &[]);
    if json {
        let out = PlanJson {
            placements: plan
                .assignments
                .iter()
                .map(|a| PlacementJson {
                    role: &a.role,
                    replica: a.replica,
                    node: a.node.0,
                    fallback: a.fallback,
                    gpus: &a.gpus,
                })
                .collect(),
            unplaced: plan
                .unplaced
                .iter()
                .map(|u| UnplacedJson {
                    role: &u.role,
                    replica: u.replica,
                    reason: u.reason.to_string(),
                })
                .collect(),
        };
        let mut text =
            serde_json::to_string_pretty(&out).map_err(|e| CommandError::Emit(e.to_string()))?;
        text.push('\n');
        return Ok(Output::stdout(text));
    }

    let rows: Vec<[String; 4]> = plan
        .assignments
        .iter()
        .map(|a| {
            [
                a.role.clone(),
                a.replica.to_string(),
                a.node.0.to_string(),
                notes(a),
            ]
        })
        .collect();
    let mut text = table(["ROLE", "REPLICA", "NODE", "NOTES"], &rows);
    if plan.unplaced.is_empty() {
        let _ = writeln!(
            text,
            "\nall {} placed",
            plural(plan.assignments.len(), "replica")
        );
    } else {
        let _ = writeln!(text, "\nunplaced ({}):", plan.unplaced.len());
        for u in &plan.unplaced {
            let _ = writeln!(text, "  {} #{}: {}", u.role, u.replica, u.reason);
        }
    }
    Ok(Output::stdout(text))
}

/// Left-aligned columns separated by two spaces, no trailing blanks.
pub(crate) fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; N]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

/// `spec import-compose FILE`: the spec on stdout, warnings on stderr.
pub fn import_compose(file: &Path) -> Result<Output, CommandError> {
    let (text, name) = read(file)?;
    let base_dir = std::path::absolute(file)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    // `${VAR}` reads the process environment over the `.env` beside the file, as Compose does.
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let variables = match &base_dir {
        Some(dir) => compose::load_variables(dir, env)?,
        None => env.collect(),
    };
    let options = compose::Options {
        base_dir,
        variables,
    };
    let converted = compose::convert(&text, &name, &options)?;
    let mut stderr = String::new();
    for w in &converted.warnings {
        let _ = writeln!(stderr, "{w}");
    }
    Ok(Output {
        stdout: converted.spec_yaml,
        stderr,
    })
}

/// Capabilities as an operator reads them (and could paste into a nodes file).
#[derive(Serialize)]
struct CapsYaml<'a> {
    cpu: compose::Cpu,
    memory: String,
    disk: String,
    gpus: u16,
    arch: &'a str,
    labels: &'a std::collections::BTreeMap<String, String>,
}

/// Render capabilities as YAML (default) or JSON (the `Capabilities` fields as they are).
pub fn render_caps(caps: &Capabilities, json: bool) -> Result<String, CommandError> {
    let mut text = if json {
        serde_json::to_string_pretty(caps).map_err(|e| CommandError::Emit(e.to_string()))?
    } else {
        serde_norway::to_string(&CapsYaml {
            cpu: compose::Cpu::from_millis(caps.cpu_millis),
            memory: fmt_mib(caps.memory_mib),
            disk: fmt_mib(caps.disk_mib),
            gpus: caps.gpus,
            arch: &caps.arch,
            labels: &caps.labels,
        })
        .map_err(|e| CommandError::Emit(e.to_string()))?
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// `caps [--config FILE] [--data-dir DIR] [--json]`: detected capabilities merged with the
/// operator's config.
pub fn caps(
    config: Option<&Path>,
    data_dir: Option<&Path>,
    json: bool,
) -> Result<Output, CommandError> {
    // Read the config first: a typo there should fail before any probing.
    let config = config
        .map(caps::load_config)
        .transpose()?
        .unwrap_or_default();
    let detected = caps::detect(&DetectEnv::host(data_dir));
    let merged = caps::merge(detected, &config);
    Ok(Output::stdout(render_caps(&merged, json)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_core::spec::RoleSpec;

    fn role(name: &str, count: Count) -> RoleSpec {
        RoleSpec::new(name, count)
    }

    #[test]
    fn summary_counts_replicas_and_global_roles() {
        let spec = ColonySpec {
            name: "shop".to_owned(),
            roles: vec![
                role("web", Count::Replicas(3)),
                role("db", Count::Replicas(1)),
                role("logs", Count::Global),
            ],
        };
        assert_eq!(summary(&spec), "shop: 3 roles, 4 replicas + 1 global role");
        let one = ColonySpec {
            name: "x".to_owned(),
            roles: vec![role("a", Count::Replicas(1))],
        };
        assert_eq!(summary(&one), "x: 1 role, 1 replica");
    }

    #[test]
    fn table_aligns_columns() {
        let rows = [
            [
                "web".to_owned(),
                "0".to_owned(),
                "1".to_owned(),
                String::new(),
            ],
            [
                "inference".to_owned(),
                "10".to_owned(),
                "2".to_owned(),
                "fallback needs".to_owned(),
            ],
        ];
        let t = table(["ROLE", "REPLICA", "NODE", "NOTES"], &rows);
        expect_test::expect![[r#"
            ROLE       REPLICA  NODE  NOTES
            web        0        1
            inference  10       2     fallback needs
        "#]]
        .assert_eq(&t);
    }

    #[test]
    fn caps_render_as_yaml_and_json() {
        let mut caps = Capabilities {
            cpu_millis: 3500,
            ..Capabilities::default()
        };
        caps.labels.insert("zone".to_owned(), "a".to_owned());
        expect_test::expect![[r#"
            cpu: 3500m
            memory: 8Gi
            disk: 100Gi
            gpus: 0
            arch: amd64
            labels:
              zone: a
        "#]]
        .assert_eq(&render_caps(&caps, false).unwrap());
        let json: serde_json::Value =
            serde_json::from_str(&render_caps(&caps, true).unwrap()).unwrap();
        assert_eq!(json["cpu_millis"], 3500);
    }
}
