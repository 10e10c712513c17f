//! The spec walker: a position-marked YAML tree → [`ColonySpec`], merging a template's roles,
//! applying `scale`, and checking everything that can be known without nodes (references,
//! depends-on cycles, gpus and limits against needs, ports, volumes, env names, ...).

use super::diag::{
    ARCHES, Diags, NAME_RULE, boolean, check_arch, did_you_mean, fields, free_map, int, name_list,
    text, uint, valid_name,
};
use super::quantity;
use super::yaml::{Node, Pos, Value};
use std::collections::BTreeMap;
use swarm_core::spec::{
    ColonySpec, Count, HealthCheck, Needs, OnEndpointsChange, Port, Probe, Protocol, RestartPolicy,
    RoleSpec, Strategy, Volume, Workload,
};

pub(crate) const TOP_KEYS: &[&str] = &["colony", "template", "scale", "roles"];
pub(crate) const ROLE_KEYS: &[&str] = &[
    "replicas",
    "mode",
    "needs",
    "fallback",
    "placement",
    "affinity",
    "anti-affinity",
    "priority",
    "depends-on",
    "workload",
    "stateful",
    "reschedule-after",
    "on-endpoints-change",
];
/// `reschedule-after` of a stateful role when the spec gives none.
pub const STATEFUL_RESCHEDULE_AFTER_MS: u32 = 5 * 60 * 1000;
pub(crate) const NEEDS_KEYS: &[&str] = &["cpu", "memory", "disk", "gpus", "arch", "labels"];
pub(crate) const WORKLOAD_KEYS: &[&str] = &[
    "image", "command", "args", "env", "ports", "volumes", "health", "restart", "gpus", "limits",
];
const HEALTH_KEYS: &[&str] = &[
    "http",
    "tcp",
    "exec",
    "interval",
    "timeout",
    "retries",
    "start-period",
];
const LIMIT_KEYS: &[&str] = &["cpu", "memory"];
const PORT_KEYS: &[&str] = &["container", "host", "protocol"];
const VOLUME_KEYS: &[&str] = &["source", "target", "read-only"];

/// Most replicas a single role may ask for.
pub const MAX_REPLICAS: u64 = 10_000;

/// Where the pieces of a `needs` (or `fallback`) mapping are, for errors found against nodes.
#[derive(Clone, Debug, Default)]
pub(crate) struct NeedsPos {
    pub at: Option<Pos>,
    pub cpu: Option<Pos>,
    pub memory: Option<Pos>,
    pub disk: Option<Pos>,
    pub gpus: Option<Pos>,
    pub arch: Option<Pos>,
    pub labels: BTreeMap<String, Pos>,
}

/// Positions kept per role after parsing.
#[derive(Clone, Debug)]
pub(crate) struct RoleInfo {
    pub name_pos: Pos,
    pub needs: NeedsPos,
    pub fallback: NeedsPos,
    /// Where `reschedule-after` was given, if it was.
    pub reschedule_after: Option<Pos>,
}

pub(crate) struct Resolved {
    pub spec: ColonySpec,
    pub info: Vec<RoleInfo>,
}

/// Walk a whole spec. `template` loads a built-in template's tree by name (source index 1).
pub(crate) fn resolve(
    d: &mut Diags,
    root: &Node,
    template: &dyn Fn(&str) -> Option<Node>,
) -> Option<Resolved> {
    let Value::Map(_) = &root.value else {
        d.err(
            root.pos,
            format!(
                "expected a mapping with `colony:` and `roles:` at the top level, found {}",
                root.kind()
            ),
        );
        return None;
    };
    let top = fields(d, root, TOP_KEYS, "the colony spec")?;
    let mut template_failed = false;

    let mut name = String::new();
    match top.get("colony") {
        None => d.err(
            root.pos,
            "missing required key `colony` (the colony's name)",
        ),
        Some(n) => {
            if let Some(t) = text(d, n, "the colony name") {
                if valid_name(t) {
                    name = t.to_owned();
                } else {
                    d.err(n.pos, format!("invalid colony name `{t}`: {NAME_RULE}"));
                }
            }
        }
    }

    // Template roles first (in template order), then user roles merged over them.
    let mut roles: Vec<(String, Pos, Node)> = Vec::new();
    if let Some(tn) = top.get("template") {
        if let Some(t) = text(d, tn, "a template name") {
            match template(t) {
                Some(tree) => roles.extend(template_roles(&tree)),
                None => {
                    template_failed = true;
                    let hint = did_you_mean(t, super::TEMPLATES.iter().copied());
                    d.err(
                        tn.pos,
                        format!(
                            "unknown template `{t}`{hint} (templates: {})",
                            super::TEMPLATES.join(", ")
                        ),
                    );
                }
            }
        }
    }
    let from_template = roles.len();
    match top.get("roles") {
        None if !top.has("template") => d.err(
            root.pos,
            "missing required key `roles` (or `template:` to start from a built-in template)",
        ),
        None => {}
        Some(rn) => user_roles(d, rn, &mut roles, from_template),
    }

    if roles.is_empty() && !template_failed {
        let given_none = top
            .get("roles")
            .is_some_and(|r| r.is_null() || matches!(&r.value, Value::Map(m) if m.is_empty()));
        if let (Some(rk), true) = (top.key("roles"), given_none) {
            d.err(
                rk.pos,
                "the colony has no roles; add at least one under `roles:`",
            );
        }
    }
    let mut specs = Vec::new();
    let mut info = Vec::new();
    for (role_name, name_pos, node) in &roles {
        let (spec, ri) = role(d, role_name, *name_pos, node);
        specs.push(spec);
        info.push(ri);
    }

    if let (Some(sn), false) = (top.get("scale"), template_failed) {
        scale(d, sn, &mut specs);
    }
    for (spec, ri) in specs.iter().zip(&info) {
        if let (Count::Global, Some(at)) = (spec.count, ri.reschedule_after) {
            d.err(
                at,
                format!(
                    "`reschedule-after` has no effect on role `{}`: it runs in `mode: global`, and a global replica never moves to another node",
                    spec.name
                ),
            );
        }
    }
    references(d, &roles, &specs);
    Some(Resolved {
        spec: ColonySpec { name, roles: specs },
        info,
    })
}

fn template_roles(tree: &Node) -> Vec<(String, Pos, Node)> {
    let mut out = Vec::new();
    if let Value::Map(top) = &tree.value {
        for (k, v) in top {
            if k.scalar() == Some("roles") {
                if let Value::Map(roles) = &v.value {
                    for (rk, rv) in roles {
                        if let Some(n) = rk.scalar() {
                            out.push((n.to_owned(), rk.pos, rv.clone()));
                        }
                    }
                }
            }
        }
    }
    out
}

fn user_roles(
    d: &mut Diags,
    rn: &Node,
    roles: &mut Vec<(String, Pos, Node)>,
    from_template: usize,
) {
    if rn.is_null() {
        return;
    }
    let Value::Map(entries) = &rn.value else {
        d.err(
            rn.pos,
            format!(
                "expected a mapping of role names to roles for `roles`, found {}",
                rn.kind()
            ),
        );
        return;
    };
    let mut seen: Vec<(&str, Pos)> = Vec::new();
    for (k, v) in entries {
        let Some(n) = k.scalar() else {
            d.err(k.pos, format!("expected a role name, found {}", k.kind()));
            continue;
        };
        if let Some((_, first)) = seen.iter().find(|(s, _)| *s == n) {
            d.err(
                k.pos,
                format!(
                    "duplicate role `{n}` (first defined at line {})",
                    first.line
                ),
            );
            continue;
        }
        seen.push((n, k.pos));
        if !valid_name(n) {
            d.err(k.pos, format!("invalid role name `{n}`: {NAME_RULE}"));
            continue;
        }
        match roles[..from_template].iter_mut().find(|r| r.0 == n) {
            Some(existing) => {
                existing.2 = merge(&existing.2, v, true);
                existing.1 = k.pos;
            }
            None => roles.push((n.to_owned(), k.pos, v.clone())),
        }
    }
}

/// Overlay `user` on `base` key by key. At role level `workload` and `needs` merge one level
/// deeper, and `replicas`/`mode` replace each other as one group.
fn merge(base: &Node, user: &Node, role_level: bool) -> Node {
    let (Value::Map(b), Value::Map(u)) = (&base.value, &user.value) else {
        if user.is_null() {
            return base.clone();
        }
        return user.clone();
    };
    let user_has = |k: &str| u.iter().any(|(uk, _)| uk.scalar() == Some(k));
    let mut out: Vec<(Node, Node, bool)> = b
        .iter()
        .filter(|(k, _)| {
            !(role_level
                && matches!(k.scalar(), Some("replicas" | "mode"))
                && (user_has("replicas") || user_has("mode")))
        })
        .map(|(k, v)| (k.clone(), v.clone(), false))
        .collect();
    for (uk, uv) in u {
        let key = uk.scalar();
        let slot = out
            .iter_mut()
            .find(|(bk, _, replaced)| !*replaced && key.is_some() && bk.scalar() == key);
        match slot {
            Some(slot) => {
                let deeper = role_level && matches!(key, Some("workload" | "needs"));
                slot.1 = if deeper {
                    merge(&slot.1, uv, false)
                } else {
                    uv.clone()
                };
                slot.0 = uk.clone();
                slot.2 = true;
            }
            None => out.push((uk.clone(), uv.clone(), true)),
        }
    }
    Node {
        pos: user.pos,
        value: Value::Map(out.into_iter().map(|(k, v, _)| (k, v)).collect()),
    }
}

fn role(d: &mut Diags, name: &str, name_pos: Pos, node: &Node) -> (RoleSpec, RoleInfo) {
    let mut spec = RoleSpec::new(name, Count::Replicas(1));
    let mut info = RoleInfo {
        name_pos,
        needs: NeedsPos::default(),
        fallback: NeedsPos::default(),
        reschedule_after: None,
    };
    let what = format!("role `{name}`");
    let Some(f) = fields(d, node, ROLE_KEYS, &what) else {
        return (spec, info);
    };

    if let Some(n) = f.get("replicas") {
        if let Some(v) = uint(d, n, "replicas", MAX_REPLICAS) {
            spec.count = Count::Replicas(u32::try_from(v).unwrap_or(0));
        }
    }
    if let Some(n) = f.get("mode") {
        match text(d, n, "`replicated` or `global`") {
            Some("global") => {
                if f.has("replicas") {
                    let at = f.key("mode").map_or(n.pos, |k| k.pos);
                    d.err(
                        at,
                        format!("{what} sets both `replicas` and `mode: global`; keep one (global runs one replica per eligible node)"),
                    );
                } else {
                    spec.count = Count::Global;
                }
            }
            Some("replicated") => {}
            Some(t) => d.err(
                n.pos,
                format!(
                    "unknown mode `{t}`{} (modes: replicated, global)",
                    did_you_mean(t, ["replicated", "global"])
                ),
            ),
            None => {}
        }
    }
    if let Some(n) = f.get("needs") {
        info.needs = needs(d, n, &format!("needs of {what}"), &mut spec.needs);
        info.needs.at = f.key("needs").map(|k| k.pos);
    }
    if let Some(n) = f.get("fallback") {
        let mut fb = Needs::default();
        info.fallback = needs(d, n, &format!("fallback of {what}"), &mut fb);
        info.fallback.at = f.key("fallback").map(|k| k.pos);
        spec.fallback = Some(fb);
    }
    if let Some(n) = f.get("placement") {
        match text(d, n, "`spread` or `pack`") {
            Some("spread") => spec.strategy = Strategy::Spread,
            Some("pack") => spec.strategy = Strategy::Pack,
            Some(t) => d.err(
                n.pos,
                format!(
                    "unknown placement `{t}`{} (placements: spread, pack)",
                    did_you_mean(t, ["spread", "pack"])
                ),
            ),
            None => {}
        }
    }
    for (key, out) in [
        ("affinity", &mut spec.affinity),
        ("anti-affinity", &mut spec.anti_affinity),
        ("depends-on", &mut spec.depends_on),
    ] {
        if let Some(n) = f.get(key) {
            for (r, _) in name_list(d, n, "role names").unwrap_or_default() {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
    }
    if let Some(n) = f.get("priority") {
        if let Some(p) = int(d, n, "priority") {
            spec.priority = p;
        }
    }
    match f.get("workload") {
        Some(n) => workload(d, n, &what, &spec.needs, &info.needs, &mut spec.workload),
        None => d.err(
            name_pos,
            format!("{what} has no `workload` (it needs at least `workload: {{image: ...}}`)"),
        ),
    }
    // Stateful: a writable volume keeps state on the node (a read-only mount is configuration).
    spec.stateful = spec.workload.volumes.iter().any(|v| !v.read_only);
    if let Some(n) = f.get("stateful") {
        if let Some(b) = boolean(d, n, "`stateful`") {
            spec.stateful = b;
        }
    }
    spec.reschedule_after_ms = if spec.stateful {
        STATEFUL_RESCHEDULE_AFTER_MS
    } else {
        0
    };
    if let Some(n) = f.get("reschedule-after") {
        info.reschedule_after = f.key("reschedule-after").map(|k| k.pos);
        if let Some(ms) = duration(d, n, "reschedule-after") {
            spec.reschedule_after_ms = ms;
        }
    }
    if let Some(n) = f.get("on-endpoints-change") {
        match text(d, n, "`restart` or `ignore`") {
            Some("restart") => {
                if spec.depends_on.is_empty() {
                    d.err(
                        n.pos,
                        format!(
                            "`on-endpoints-change: restart` has no effect: {what} depends on no role (add `depends-on`, or leave it out)"
                        ),
                    );
                } else {
                    spec.on_endpoints_change = OnEndpointsChange::Restart;
                }
            }
            Some("ignore") => spec.on_endpoints_change = OnEndpointsChange::Ignore,
            Some(t) => d.err(
                n.pos,
                format!(
                    "unknown on-endpoints-change `{t}`{} (choices: restart, ignore)",
                    did_you_mean(t, ["restart", "ignore"])
                ),
            ),
            None => {}
        }
    }
    (spec, info)
}

/// Read a `needs`-shaped mapping (also used for `fallback` and node capabilities' checks).
fn needs(d: &mut Diags, node: &Node, what: &str, out: &mut Needs) -> NeedsPos {
    let mut pos = NeedsPos::default();
    let Some(f) = fields(d, node, NEEDS_KEYS, what) else {
        return pos;
    };
    if let Some(n) = f.get("cpu") {
        pos.cpu = Some(n.pos);
        if let Some(v) = cpu(d, n) {
            out.cpu_millis = v;
        }
    }
    if let Some(n) = f.get("memory") {
        pos.memory = Some(n.pos);
        if let Some(v) = size(d, n, "memory") {
            out.memory_mib = v;
        }
    }
    if let Some(n) = f.get("disk") {
        pos.disk = Some(n.pos);
        if let Some(v) = size(d, n, "disk") {
            out.disk_mib = v;
        }
    }
    if let Some(n) = f.get("gpus") {
        pos.gpus = Some(n.pos);
        if let Some(v) = uint(d, n, "gpus", u64::from(u16::MAX)) {
            out.gpus = u16::try_from(v).unwrap_or(0);
        }
    }
    if let Some(n) = f.get("arch") {
        pos.arch = Some(n.pos);
        for (a, p) in arch_list(d, n) {
            if let Some(a) = check_arch(d, &a, p) {
                if !out.arch.iter().any(|have| have == a) {
                    out.arch.push(a.to_owned());
                }
            }
        }
        if out.arch.is_empty()
            && !n.is_null()
            && matches!(n.value, Value::Seq(ref s) if s.is_empty())
        {
            d.err(
                n.pos,
                format!(
                    "empty arch list; leave `arch` out to accept any ({})",
                    ARCHES.join(", ")
                ),
            );
        }
    }
    if let Some(n) = f.get("labels") {
        for (k, kn, v) in
            free_map(d, n, "labels", "a mapping of label names to values").unwrap_or_default()
        {
            if let Some(t) = text(d, v, "a label value") {
                out.labels.insert(k.to_owned(), t.to_owned());
                pos.labels.insert(k.to_owned(), kn.pos);
            }
        }
    }
    pos
}

/// One architecture or a list of them. `386` is written as a plain YAML number, so numbers
/// count as names here.
fn arch_list(d: &mut Diags, n: &Node) -> Vec<(String, Pos)> {
    let name = |d: &mut Diags, item: &Node| match (item.scalar(), item.kind()) {
        (Some(t), "a string" | "a number") => Some((t.to_owned(), item.pos)),
        _ => {
            d.err(
                item.pos,
                format!(
                    "expected an architecture like `amd64`, found {}",
                    item.kind()
                ),
            );
            None
        }
    };
    match &n.value {
        _ if n.is_null() => Vec::new(),
        Value::Seq(items) => items.iter().filter_map(|i| name(d, i)).collect(),
        _ => name(d, n).into_iter().collect(),
    }
}

pub(crate) fn cpu(d: &mut Diags, n: &Node) -> Option<u32> {
    let t = text(d, n, "a cpu amount like `2`, `0.5` or `500m`")?;
    match quantity::cpu_millis(t) {
        Ok(v) => Some(v),
        Err(e) => {
            d.err(n.pos, format!("invalid cpu `{t}`: {e}"));
            None
        }
    }
}

pub(crate) fn size(d: &mut Diags, n: &Node, what: &str) -> Option<u64> {
    let t = text(d, n, &format!("a {what} size like `512Mi` or `1Gi`"))?;
    match quantity::mib(t) {
        Ok(v) => Some(v),
        Err(e) => {
            d.err(n.pos, format!("invalid {what} `{t}`: {e}"));
            None
        }
    }
}

fn duration(d: &mut Diags, n: &Node, what: &str) -> Option<u32> {
    let t = text(d, n, &format!("a duration for {what} like `10s`"))?;
    match quantity::duration_ms(t) {
        Ok(v) => Some(v),
        Err(e) => {
            d.err(n.pos, format!("invalid {what} `{t}`: {e}"));
            None
        }
    }
}

fn workload(
    d: &mut Diags,
    node: &Node,
    role_what: &str,
    needs: &Needs,
    needs_pos: &NeedsPos,
    w: &mut Workload,
) {
    let what = format!("workload of {role_what}");
    let Some(f) = fields(d, node, WORKLOAD_KEYS, &what) else {
        return;
    };
    match f.get("image") {
        None => d.err(
            node.pos,
            format!("{what} has no `image` (e.g. `image: nginx:1.27`)"),
        ),
        Some(n) => {
            if let Some(t) = text(d, n, "an image name") {
                if t.trim().is_empty() {
                    d.err(n.pos, "image must not be empty (e.g. `nginx:1.27`)");
                } else if t.chars().any(char::is_whitespace) {
                    d.err(n.pos, format!("image `{t}` must not contain spaces"));
                } else {
                    w.image = t.to_owned();
                }
            }
        }
    }
    if let Some(n) = f.get("command") {
        w.command = words(d, n, "command");
    }
    if let Some(n) = f.get("args") {
        w.args = words(d, n, "args");
    }
    if let Some(n) = f.get("env") {
        env(d, n, &mut w.env);
    }
    if let Some(n) = f.get("ports") {
        w.ports = ports(d, n);
    }
    if let Some(n) = f.get("volumes") {
        w.volumes = volumes(d, n);
    }
    if let Some(n) = f.get("health") {
        w.health = health(d, n);
    }
    if let Some(n) = f.get("restart") {
        if let Some(r) = restart(d, n) {
            w.restart = r;
        }
    }
    if let Some(n) = f.get("gpus") {
        if let Some(v) = uint(d, n, "gpus", u64::from(u16::MAX)) {
            let v = u16::try_from(v).unwrap_or(0);
            if v > needs.gpus {
                d.err(
                    n.pos,
                    format!(
                        "workload asks for {v} GPU{} but needs.gpus is {}; raise needs.gpus or lower workload.gpus",
                        if v == 1 { "" } else { "s" },
                        needs.gpus
                    ),
                );
            } else {
                w.gpus = v;
            }
        }
    }
    if let Some(n) = f.get("limits") {
        if let Some(lf) = fields(d, n, LIMIT_KEYS, &format!("limits of {role_what}")) {
            if let Some(c) = lf.get("cpu") {
                if let Some(v) = cpu(d, c) {
                    if v < needs.cpu_millis && needs_pos.cpu.is_some() {
                        d.err(
                            c.pos,
                            format!(
                                "limits.cpu {} is below needs.cpu {}; a limit must be at least what the role reserves",
                                quantity::fmt_cpu(v),
                                quantity::fmt_cpu(needs.cpu_millis)
                            ),
                        );
                    } else {
                        w.limits.cpu_millis = Some(v);
                    }
                }
            }
            if let Some(m) = lf.get("memory") {
                if let Some(v) = size(d, m, "memory") {
                    if v < needs.memory_mib {
                        d.err(
                            m.pos,
                            format!(
                                "limits.memory {} is below needs.memory {}; a limit must be at least what the role reserves",
                                quantity::fmt_mib(v),
                                quantity::fmt_mib(needs.memory_mib)
                            ),
                        );
                    } else {
                        w.limits.memory_mib = Some(v);
                    }
                }
            }
        }
    }
}

/// A command line: a list of words, or one string split shell-style.
fn words(d: &mut Diags, n: &Node, what: &str) -> Vec<String> {
    match &n.value {
        _ if n.is_null() => Vec::new(),
        Value::Scalar { text, .. } => match shell_words::split(text) {
            Ok(w) => w,
            Err(e) => {
                d.err(
                    n.pos,
                    format!("cannot split {what} into words: {e}; write it as a list instead"),
                );
                Vec::new()
            }
        },
        Value::Seq(items) => items
            .iter()
            .filter_map(|i| {
                let t = i.scalar();
                if t.is_none() {
                    d.err(
                        i.pos,
                        format!("expected a word of {what}, found {}", i.kind()),
                    );
                }
                t.map(str::to_owned)
            })
            .collect(),
        Value::Map(_) => {
            d.err(
                n.pos,
                format!("expected {what} as a string or a list of words, found a mapping"),
            );
            Vec::new()
        }
    }
}

/// Docker's rule for environment variable names: anything but the empty name, `=` and NUL
/// (`discovery.type`, `MY-KEY` and `9LIVES` are all fine; the program reading them decides).
pub fn env_name_ok(k: &str) -> bool {
    !k.is_empty() && !k.contains(['=', '\0'])
}

fn env(d: &mut Diags, n: &Node, out: &mut BTreeMap<String, String>) {
    let bad_name = |k: &str| {
        if k.is_empty() {
            "an environment variable needs a name".to_owned()
        } else {
            format!(
                "`{}` is not a valid environment variable name (any name without `=` or NUL)",
                k.escape_debug()
            )
        }
    };
    match &n.value {
        _ if n.is_null() => {}
        Value::Map(_) => {
            for (k, kn, v) in free_map(d, n, "env", "a mapping").unwrap_or_default() {
                if !env_name_ok(k) {
                    d.err(kn.pos, bad_name(k));
                    continue;
                }
                let value = if v.is_null() {
                    Some("")
                } else {
                    text(d, v, "a value for the variable")
                };
                if let Some(t) = value {
                    out.insert(k.to_owned(), t.to_owned());
                }
            }
        }
        Value::Seq(items) => {
            let mut first: BTreeMap<String, usize> = BTreeMap::new();
            for i in items {
                let Some(t) = text(d, i, "a `KEY=value` string") else {
                    continue;
                };
                let Some((k, v)) = t.split_once('=') else {
                    d.err(i.pos, format!("expected `KEY=value`, found `{t}` (no `=`)"));
                    continue;
                };
                if !env_name_ok(k) {
                    d.err(i.pos, bad_name(k));
                    continue;
                }
                if let Some(line) = first.get(k) {
                    d.err(
                        i.pos,
                        format!("duplicate env variable `{k}` (first given at line {line})"),
                    );
                    continue;
                }
                first.insert(k.to_owned(), i.pos.line);
                out.insert(k.to_owned(), v.to_owned());
            }
        }
        Value::Scalar { .. } => d.err(
            n.pos,
            format!(
                "expected env as a mapping (`KEY: value`) or a list of `KEY=value`, found {}",
                n.kind()
            ),
        ),
    }
}

fn port_number(d: &mut Diags, t: &str, pos: Pos, what: &str) -> Option<u16> {
    match t.parse::<u64>() {
        Ok(v) if (1..=65535).contains(&v) => u16::try_from(v).ok(),
        Ok(v) => {
            d.err(pos, format!("{what} {v} is not valid (ports are 1-65535)"));
            None
        }
        Err(_) => {
            d.err(
                pos,
                format!("{what} `{t}` is not a number (ports are 1-65535)"),
            );
            None
        }
    }
}

fn protocol(d: &mut Diags, t: &str, pos: Pos) -> Option<Protocol> {
    match t {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        _ => {
            d.err(
                pos,
                format!(
                    "unknown protocol `{t}`{} (tcp or udp)",
                    did_you_mean(t, ["tcp", "udp"])
                ),
            );
            None
        }
    }
}

fn ports(d: &mut Diags, n: &Node) -> Vec<Port> {
    let mut out: Vec<Port> = Vec::new();
    let Value::Seq(items) = &n.value else {
        if !n.is_null() {
            d.err(
                n.pos,
                format!("expected a list of ports, found {}", n.kind()),
            );
        }
        return out;
    };
    let mut published: Vec<(u16, Protocol, usize)> = Vec::new();
    for i in items {
        let port = match &i.value {
            Value::Scalar { text, .. } => {
                let (body, proto) = match text.split_once('/') {
                    Some((b, p)) => (b, protocol(d, p, i.pos)),
                    None => (text.as_str(), Some(Protocol::Tcp)),
                };
                let parts: Vec<&str> = body.split(':').collect();
                match parts.as_slice() {
                    [c] => port_number(d, c, i.pos, "port").map(|c| (c, None)),
                    [h, c] => {
                        let h = port_number(d, h, i.pos, "host port");
                        let c = port_number(d, c, i.pos, "container port");
                        h.zip(c).map(|(h, c)| (c, Some(h)))
                    }
                    _ => {
                        d.err(
                            i.pos,
                            format!(
                                "expected a port like `80`, `8080:80` or `53/udp`, found `{text}`"
                            ),
                        );
                        None
                    }
                }
                .and_then(|(container, host)| {
                    proto.map(|protocol| Port {
                        container,
                        host,
                        protocol,
                    })
                })
            }
            Value::Map(_) => {
                let Some(f) = fields(d, i, PORT_KEYS, "a port") else {
                    continue;
                };
                let num = |d: &mut Diags, k: &str, what: &str| -> Option<Option<u16>> {
                    match f.get(k) {
                        None => Some(None),
                        Some(p) => {
                            let t = text(d, p, what)?;
                            port_number(d, t, p.pos, what).map(Some)
                        }
                    }
                };
                let container = num(d, "container", "container port");
                let host = num(d, "host", "host port");
                let proto = match f.get("protocol") {
                    None => Some(Protocol::Tcp),
                    Some(p) => text(d, p, "tcp or udp").and_then(|t| protocol(d, t, p.pos)),
                };
                match (container, host, proto) {
                    (Some(Some(container)), Some(host), Some(protocol)) => Some(Port {
                        container,
                        host,
                        protocol,
                    }),
                    (Some(None), _, _) => {
                        d.err(
                            i.pos,
                            "a port mapping needs `container:` (the port inside the container)",
                        );
                        None
                    }
                    _ => None,
                }
            }
            Value::Seq(_) => {
                d.err(i.pos, "expected a port, found a list");
                None
            }
        };
        if let Some(p) = port {
            if let Some(h) = p.host {
                if let Some((_, _, line)) = published
                    .iter()
                    .find(|(ph, pp, _)| *ph == h && *pp == p.protocol)
                {
                    d.err(
                        i.pos,
                        format!("host port {h} is published twice (first at line {line})"),
                    );
                    continue;
                }
                published.push((h, p.protocol, i.pos.line));
            }
            out.push(p);
        }
    }
    out
}

fn volume_source_ok(d: &mut Diags, s: &str, pos: Pos) -> bool {
    let name_ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if s.starts_with('/') || name_ok {
        return true;
    }
    d.err(
        pos,
        format!("volume source `{s}` must be a volume name (like `data`) or an absolute host path (like `/srv/data`)"),
    );
    false
}

fn volume_target_ok(d: &mut Diags, t: &str, pos: Pos) -> bool {
    if t.starts_with('/') {
        return true;
    }
    d.err(
        pos,
        format!(
            "volume target `{t}` must be an absolute path inside the container, e.g. `/{}`",
            t.trim_start_matches("./")
        ),
    );
    false
}

fn volumes(d: &mut Diags, n: &Node) -> Vec<Volume> {
    let mut out: Vec<Volume> = Vec::new();
    let Value::Seq(items) = &n.value else {
        if !n.is_null() {
            d.err(
                n.pos,
                format!("expected a list of volumes, found {}", n.kind()),
            );
        }
        return out;
    };
    for i in items {
        let vol = match &i.value {
            Value::Scalar { text, .. } => {
                let parts: Vec<&str> = text.split(':').collect();
                let (src, tgt, ro) = match parts.as_slice() {
                    [s, t] => (*s, *t, Some(false)),
                    [s, t, "ro"] => (*s, *t, Some(true)),
                    [s, t, "rw"] => (*s, *t, Some(false)),
                    [_, _, m] => {
                        d.err(i.pos, format!("unknown volume mode `{m}` (ro or rw)"));
                        ("", "", None)
                    }
                    _ => {
                        d.err(
                            i.pos,
                            format!("expected a volume like `data:/var/lib/data` or `/srv/x:/x:ro`, found `{text}`"),
                        );
                        ("", "", None)
                    }
                };
                match ro {
                    Some(read_only)
                        if volume_source_ok(d, src, i.pos) & volume_target_ok(d, tgt, i.pos) =>
                    {
                        Some(Volume {
                            source: src.to_owned(),
                            target: tgt.to_owned(),
                            read_only,
                        })
                    }
                    _ => None,
                }
            }
            Value::Map(_) => {
                let Some(f) = fields(d, i, VOLUME_KEYS, "a volume") else {
                    continue;
                };
                let source = match f.get("source") {
                    None => {
                        d.err(
                            i.pos,
                            "a volume needs `source:` (a volume name or host path)",
                        );
                        None
                    }
                    Some(s) => {
                        text(d, s, "a volume source").filter(|t| volume_source_ok(d, t, s.pos))
                    }
                };
                let target = match f.get("target") {
                    None => {
                        d.err(
                            i.pos,
                            "a volume needs `target:` (an absolute path in the container)",
                        );
                        None
                    }
                    Some(s) => {
                        text(d, s, "a volume target").filter(|t| volume_target_ok(d, t, s.pos))
                    }
                };
                let ro = match f.get("read-only") {
                    None => Some(false),
                    Some(b) => boolean(d, b, "read-only"),
                };
                match (source, target, ro) {
                    (Some(s), Some(t), Some(read_only)) => Some(Volume {
                        source: s.to_owned(),
                        target: t.to_owned(),
                        read_only,
                    }),
                    _ => None,
                }
            }
            Value::Seq(_) => {
                d.err(i.pos, "expected a volume, found a list");
                None
            }
        };
        if let Some(v) = vol {
            if let Some(first) = out.iter().find(|o| o.target == v.target) {
                d.err(
                    i.pos,
                    format!(
                        "volume target `{}` is mounted twice (also from `{}`)",
                        v.target, first.source
                    ),
                );
                continue;
            }
            out.push(v);
        }
    }
    out
}

fn health(d: &mut Diags, n: &Node) -> Option<HealthCheck> {
    let f = fields(d, n, HEALTH_KEYS, "health")?;
    let mut probe: Option<Probe> = None;
    let mut probes = 0;
    for kind in ["http", "tcp", "exec"] {
        let Some(pn) = f.get(kind) else { continue };
        probes += 1;
        if probes > 1 {
            let at = f.key(kind).map_or(pn.pos, |k| k.pos);
            d.err(
                at,
                "health takes exactly one of `http`, `tcp` or `exec`; remove the others",
            );
            continue;
        }
        probe = match kind {
            "http" => {
                let pf = fields(d, pn, &["path", "port"], "the http probe")?;
                let path = match pf.get("path") {
                    None => Some("/".to_owned()),
                    Some(p) => match text(d, p, "a URL path") {
                        Some(t) if t.starts_with('/') => Some(t.to_owned()),
                        Some(t) => {
                            d.err(p.pos, format!("http path `{t}` must start with `/`"));
                            None
                        }
                        None => None,
                    },
                };
                let port = probe_port(d, &pf, pn, "http");
                path.zip(port)
                    .map(|(path, port)| Probe::Http { path, port })
            }
            "tcp" => {
                let pf = fields(d, pn, &["port"], "the tcp probe")?;
                probe_port(d, &pf, pn, "tcp").map(|port| Probe::Tcp { port })
            }
            _ => {
                let command = words(d, pn, "exec");
                if command.is_empty() {
                    d.err(pn.pos, "exec probe needs a command, e.g. `[pg_isready]`");
                    None
                } else {
                    Some(Probe::Exec { command })
                }
            }
        };
    }
    if probes == 0 {
        d.err(
            n.pos,
            "health needs one probe: `http: {path, port}`, `tcp: {port}` or `exec: [command]`",
        );
    }
    let mut hc = HealthCheck {
        probe: probe.clone().unwrap_or(Probe::Tcp { port: 1 }),
        interval_ms: 10_000,
        timeout_ms: 5_000,
        retries: 3,
        start_period_ms: 0,
    };
    if let Some(x) = f.get("interval") {
        match duration(d, x, "interval") {
            Some(0) => d.err(x.pos, "interval must be more than 0"),
            Some(v) => hc.interval_ms = v,
            None => {}
        }
    }
    if let Some(x) = f.get("timeout") {
        match duration(d, x, "timeout") {
            Some(0) => d.err(x.pos, "timeout must be more than 0"),
            Some(v) => hc.timeout_ms = v,
            None => {}
        }
    }
    if let Some(x) = f.get("start-period") {
        if let Some(v) = duration(d, x, "start-period") {
            hc.start_period_ms = v;
        }
    }
    if let Some(x) = f.get("retries") {
        if let Some(v) = uint(d, x, "retries", 1000) {
            hc.retries = u32::try_from(v).unwrap_or(3);
        }
    }
    probe.map(|_| hc)
}

fn probe_port(d: &mut Diags, pf: &super::diag::Fields<'_>, pn: &Node, kind: &str) -> Option<u16> {
    match pf.get("port") {
        None => {
            d.err(pn.pos, format!("the {kind} probe needs `port:`"));
            None
        }
        Some(p) => {
            let t = text(d, p, "a port number")?;
            port_number(d, t, p.pos, "port")
        }
    }
}

fn restart(d: &mut Diags, n: &Node) -> Option<RestartPolicy> {
    const POLICIES: [&str; 3] = ["always", "on-failure", "never"];
    match &n.value {
        Value::Scalar { text, .. } => match text.as_str() {
            "always" => Some(RestartPolicy::Always),
            "on-failure" => Some(RestartPolicy::OnFailure { max_retries: 0 }),
            "never" => Some(RestartPolicy::Never),
            t => {
                d.err(
                    n.pos,
                    format!(
                        "unknown restart policy `{t}`{} (always, on-failure, never)",
                        did_you_mean(t, POLICIES)
                    ),
                );
                None
            }
        },
        Value::Map(_) => {
            let f = fields(d, n, &["on-failure"], "restart")?;
            let Some(of) = f.get("on-failure") else {
                d.err(n.pos, "expected `restart: {on-failure: {max-retries: N}}`");
                return None;
            };
            let of = fields(d, of, &["max-retries"], "on-failure")?;
            let max = match of.get("max-retries") {
                None => 0,
                Some(m) => u32::try_from(uint(d, m, "max-retries", u64::from(u32::MAX))?).ok()?,
            };
            Some(RestartPolicy::OnFailure { max_retries: max })
        }
        Value::Seq(_) => {
            d.err(
                n.pos,
                "expected a restart policy (always, on-failure, never), found a list",
            );
            None
        }
    }
}

fn scale(d: &mut Diags, n: &Node, specs: &mut [RoleSpec]) {
    let names: Vec<String> = specs.iter().map(|r| r.name.clone()).collect();
    let entries = free_map(
        d,
        n,
        "scale",
        "a mapping of role names to replica counts for `scale`",
    )
    .unwrap_or_default();
    for (name, kn, v) in entries {
        let Some(role) = specs.iter_mut().find(|r| r.name == name) else {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            d.err(kn.pos, unknown_role(name, "scale", &refs));
            continue;
        };
        if v.scalar() == Some("global") {
            role.count = Count::Global;
        } else if v.kind() != "a number" {
            d.err(
                v.pos,
                format!(
                    "expected a replica count (a whole number) or `global` for role `{name}`, found {}",
                    v.kind()
                ),
            );
        } else if let Some(c) = uint(d, v, "replicas", MAX_REPLICAS) {
            role.count = Count::Replicas(u32::try_from(c).unwrap_or(0));
        }
    }
}

fn unknown_role(name: &str, place: &str, roles: &[&str]) -> String {
    let hint = did_you_mean(name, roles.iter().copied());
    if roles.is_empty() {
        format!("unknown role `{name}` in {place}")
    } else if hint.is_empty() {
        format!(
            "unknown role `{name}` in {place} (roles: {})",
            roles.join(", ")
        )
    } else {
        format!("unknown role `{name}` in {place}{hint}")
    }
}

/// References between roles (affinity, anti-affinity, depends-on, scale) and depends-on cycles.
fn references(d: &mut Diags, roles: &[(String, Pos, Node)], specs: &[RoleSpec]) {
    let names: Vec<&str> = specs.iter().map(|r| r.name.as_str()).collect();
    // Re-walk the raw lists for positions (the resolved lists dropped them).
    let mut edges: Vec<Vec<(usize, Pos)>> = vec![Vec::new(); specs.len()];
    for (i, (rname, _, node)) in roles.iter().enumerate() {
        let Value::Map(entries) = &node.value else {
            continue;
        };
        for (k, v) in entries {
            let Some(key @ ("affinity" | "anti-affinity" | "depends-on")) = k.scalar() else {
                continue;
            };
            let mut quiet = Diags::default();
            for (r, p) in name_list(&mut quiet, v, "role names").unwrap_or_default() {
                match names.iter().position(|n| *n == r) {
                    Some(j) => {
                        if key == "depends-on" && !edges[i].iter().any(|e| e.0 == j) {
                            edges[i].push((j, p));
                        }
                    }
                    None => d.err(
                        p,
                        unknown_role(&r, &format!("{key} of role `{rname}`"), &names),
                    ),
                }
            }
        }
    }
    cycles(d, &names, &edges);
}

fn cycles(d: &mut Diags, names: &[&str], edges: &[Vec<(usize, Pos)>]) {
    // 0 = unvisited, 1 = on the stack, 2 = done. Iterative DFS in declaration order.
    let mut state = vec![0u8; names.len()];
    for start in 0..names.len() {
        if state[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(top) = stack.last_mut() {
            let u = top.0;
            if let Some(&(v, pos)) = edges[u].get(top.1) {
                top.1 += 1;
                match state[v] {
                    0 => {
                        state[v] = 1;
                        stack.push((v, 0));
                    }
                    1 => {
                        let from = stack.iter().position(|(s, _)| *s == v).unwrap_or(0);
                        let mut path: Vec<&str> =
                            stack[from..].iter().map(|(s, _)| names[*s]).collect();
                        path.push(names[v]);
                        d.err(pos, format!("depends-on cycle: {}", path.join(" -> ")));
                    }
                    _ => {}
                }
            } else {
                state[u] = 2;
                stack.pop();
            }
        }
    }
}
