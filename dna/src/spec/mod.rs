//! The colony-spec language: YAML text → validated [`ColonySpec`], with `FILE:LINE:COL` errors.
//!
//! The language is documented in `docs/colony-spec.md`. Pipeline: `yaml` builds a
//! position-marked tree (syntax errors stop there), `resolve` walks it, merging a built-in
//! template and collecting *every* problem, and [`SpecDoc::check_nodes`] later checks requests
//! against a concrete node list. All errors come back sorted in file order.
//!
//! - [`quantity`]: cpu, memory/disk sizes and durations.
//! - [`templates`]: the built-in templates (`examples/colonies/*.yaml`, embedded).
//! - `nodes`: the nodes file (`parse_nodes`); `check`: feasibility against nodes.

use swarm_core::spec::{ColonySpec, Count, NodeRecord, Probe, RestartPolicy, Strategy};

mod check;
mod diag;
mod nodes;
pub mod quantity;
mod resolve;
pub mod templates;
mod yaml;

pub use resolve::{MAX_REPLICAS, env_name_ok};
pub use templates::{TEMPLATES, template};

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
    /// Source names by index: 0 is the user's file, 1 the template (if any).
    files: Vec<String>,
    info: Vec<resolve::RoleInfo>,
    template: Option<String>,
}

impl SpecDoc {
    pub fn spec(&self) -> &ColonySpec {
        &self.spec
    }

    pub fn into_spec(self) -> ColonySpec {
        self.spec
    }

    /// The built-in template the spec starts from (`template:`), if any.
    pub fn template(&self) -> Option<&str> {
        self.template.as_deref()
    }

    /// Requests no node could ever satisfy (e.g. 3 GPUs when the largest node has 2), each
    /// reported at the `needs` entry that asks for it and naming the closest node. A role with a
    /// `fallback` only fails when the fallback is impossible too.
    pub fn check_nodes(&self, nodes: &[NodeRecord]) -> Result<(), SpecErrors> {
        let mut d = diag::Diags::default();
        check::check(&mut d, &self.spec, &self.info, nodes);
        if d.is_empty() {
            Ok(())
        } else {
            Err(SpecErrors(d.into_errors(&self.files)))
        }
    }

    /// One line per role with what was resolved (counts, needs, image, relations); stable text
    /// meant for snapshots and `--dry-run` style output.
    pub fn summary(&self) -> String {
        summary(&self.spec)
    }
}

/// The compact, stable text form used by [`SpecDoc::summary`].
pub fn summary(spec: &ColonySpec) -> String {
    use quantity::{fmt_cpu, fmt_mib};
    use std::fmt::Write as _;
    let mut out = format!("colony {}\n", spec.name);
    for r in &spec.roles {
        let count = match r.count {
            Count::Replicas(n) => format!("x{n}"),
            Count::Global => "global".to_owned(),
        };
        let _ = write!(out, "{} {count}", r.name);
        if r.strategy == Strategy::Pack {
            out.push_str(" pack");
        }
        if r.priority != 0 {
            let _ = write!(out, " prio={}", r.priority);
        }
        let needs = |n: &swarm_core::spec::Needs| {
            let mut s = format!(
                "cpu={} mem={}",
                fmt_cpu(n.cpu_millis),
                fmt_mib(n.memory_mib)
            );
            if n.disk_mib > 0 {
                let _ = write!(s, " disk={}", fmt_mib(n.disk_mib));
            }
            if n.gpus > 0 {
                let _ = write!(s, " gpus={}", n.gpus);
            }
            if !n.arch.is_empty() {
                let _ = write!(s, " arch={}", n.arch.join("|"));
            }
            for (k, v) in &n.labels {
                let _ = write!(s, " {k}={v}");
            }
            s
        };
        let _ = write!(out, " [{}]", needs(&r.needs));
        if let Some(f) = &r.fallback {
            let _ = write!(out, " fallback=[{}]", needs(f));
        }
        for (what, list) in [
            ("affinity", &r.affinity),
            ("anti", &r.anti_affinity),
            ("after", &r.depends_on),
        ] {
            if !list.is_empty() {
                let _ = write!(out, " {what}={}", list.join(","));
            }
        }
        let w = &r.workload;
        let _ = write!(out, "\n  image={}", w.image);
        if !w.command.is_empty() {
            let _ = write!(out, " cmd={:?}", w.command);
        }
        if !w.args.is_empty() {
            let _ = write!(out, " args={:?}", w.args);
        }
        if !w.env.is_empty() {
            let keys: Vec<&str> = w.env.keys().map(String::as_str).collect();
            let _ = write!(out, " env={}", keys.join(","));
        }
        for p in &w.ports {
            let proto = match p.protocol {
                swarm_core::spec::Protocol::Tcp => "",
                swarm_core::spec::Protocol::Udp => "/udp",
            };
            match p.host {
                Some(h) => {
                    let _ = write!(out, " port={h}:{}{proto}", p.container);
                }
                None => {
                    let _ = write!(out, " port={}{proto}", p.container);
                }
            }
        }
        for v in &w.volumes {
            let _ = write!(
                out,
                " vol={}:{}{}",
                v.source,
                v.target,
                if v.read_only { ":ro" } else { "" }
            );
        }
        if let Some(h) = &w.health {
            let probe = match &h.probe {
                Probe::Http { path, port } => format!("http:{port}{path}"),
                Probe::Tcp { port } => format!("tcp:{port}"),
                Probe::Exec { command } => format!("exec:{}", command.join(" ")),
            };
            let _ = write!(
                out,
                " health={probe}/{}ms/{}ms/{}/{}ms",
                h.interval_ms, h.timeout_ms, h.retries, h.start_period_ms
            );
        }
        match w.restart {
            RestartPolicy::Always => {}
            RestartPolicy::Never => out.push_str(" restart=never"),
            RestartPolicy::OnFailure { max_retries } => {
                let _ = write!(out, " restart=on-failure:{max_retries}");
            }
        }
        if w.gpus > 0 {
            let _ = write!(out, " gpus={}", w.gpus);
        }
        if let Some(c) = w.limits.cpu_millis {
            let _ = write!(out, " limit-cpu={}", fmt_cpu(c));
        }
        if let Some(m) = w.limits.memory_mib {
            let _ = write!(out, " limit-mem={}", fmt_mib(m));
        }
        out.push('\n');
    }
    out
}

fn load_error(file: &str, e: yaml::LoadError) -> SpecErrors {
    SpecErrors(vec![SpecError {
        file: file.to_owned(),
        line: e.pos.line,
        col: e.pos.col,
        message: e.message,
    }])
}

/// Parse and validate a colony spec. `file` is only used in error messages.
pub fn parse(text: &str, file: &str) -> Result<SpecDoc, SpecErrors> {
    let root = yaml::load(text, 0).map_err(|e| load_error(file, e))?;
    let Some(root) = root else {
        return Err(SpecErrors(vec![SpecError {
            file: file.to_owned(),
            line: 1,
            col: 1,
            message: "the spec is empty; it needs at least `colony:` and `roles:` (or `template:`)"
                .to_owned(),
        }]));
    };
    let mut files = vec![file.to_owned()];
    let mut d = diag::Diags::default();
    let load_template = |name: &str| -> Option<yaml::Node> {
        let text = template(name)?;
        yaml::load(text, 1).ok().flatten()
    };
    let resolved = resolve::resolve(&mut d, &root, &load_template);
    let used = templates::used(&root);
    if let Some(t) = &used {
        files.push(format!("template:{t}.yaml"));
    }
    match resolved {
        Some(r) if d.is_empty() => Ok(SpecDoc {
            spec: r.spec,
            files,
            info: r.info,
            template: used.map(|t| t.to_string()),
        }),
        _ => Err(SpecErrors(d.into_errors(&files))),
    }
}

/// Parse a nodes file: a YAML list of `{id, cpu, memory, disk, gpus, arch, labels}`.
/// The result is sorted by id (ids are unique).
pub fn parse_nodes(text: &str, file: &str) -> Result<Vec<NodeRecord>, SpecErrors> {
    let root = yaml::load(text, 0).map_err(|e| load_error(file, e))?;
    let mut d = diag::Diags::default();
    let nodes = nodes::nodes(&mut d, root.as_ref());
    if d.is_empty() {
        Ok(nodes)
    } else {
        Err(SpecErrors(d.into_errors(&[file.to_owned()])))
    }
}
