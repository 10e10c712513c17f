//! `aware-agent spec import-compose`: a Docker Compose file → a colony spec (YAML in the spec
//! language), plus warnings for everything that has no colony equivalent.
//!
//! The conversion never fails on what it cannot map: it warns (with `FILE:LINE:COL` where the
//! key's position is known) and goes on. It fails only when the input is not YAML or not a
//! mapping with `services`, or when a `${VAR:?message}` requires a variable that is not set.
//! Compose's own unit conventions are converted here (memory in binary multiples → `Mi`/`Gi`,
//! `cpus: 0.5` → `500m`, Go-style durations → `s`/`ms`).
//!
//! Before anything is mapped, every string value is interpolated as Compose does
//! ([`crate::interpolate`]) with [`Options::variables`]: the process environment over the
//! `.env` file beside the compose file ([`load_variables`]).

use crate::yaml_pos::KeyPositions;
use dna::spec::quantity::{fmt_cpu, fmt_mib};
use indexmap::IndexMap;
use serde::Serialize;
use serde_norway::{Mapping, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// A converted compose file: the spec as YAML text and the warnings, in file order.
#[derive(Clone, Debug)]
pub struct Converted {
    pub spec_yaml: String,
    pub warnings: Vec<Warning>,
}

/// Something in the compose file that was dropped or changed on the way to the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub file: String,
    /// 1-based line and column of the key concerned, when known.
    pub pos: Option<(usize, usize)>,
    pub service: Option<String>,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some((line, col)) => write!(f, "{}:{line}:{col}: warning: ", self.file)?,
            None => write!(f, "{}: warning: ", self.file)?,
        }
        if let Some(service) = &self.service {
            write!(f, "service {service}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The compose file cannot be converted at all.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("{file}:{line}:{col}: {message}")]
    Invalid {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{file}: cannot write the spec: {message}")]
    Emit { file: String, message: String },
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
}

/// How to convert.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The compose file's directory as an absolute path: relative bind mounts (`./data:/data`)
    /// are resolved against it, as Compose does. Without it they are kept as written.
    pub base_dir: Option<PathBuf>,
    /// The variables `${VAR}` interpolation reads (see [`load_variables`]). Empty: every
    /// variable is unset.
    pub variables: BTreeMap<String, String>,
}

/// The variables Compose interpolates with: the `.env` file in `dir` (when there is one)
/// overlaid with `env`, the process environment, which wins, as in Compose.
pub fn load_variables(
    dir: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, ComposeError> {
    let path = dir.join(".env");
    let file = path.display().to_string();
    let mut vars = BTreeMap::new();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            for item in dotenvy::from_read_iter(text.as_bytes()) {
                match item {
                    Ok((k, v)) => {
                        vars.insert(k, v);
                    }
                    Err(dotenvy::Error::LineParse(line, index)) => {
                        // dotenvy names the line by its text: find it for a position.
                        let (line_no, col) = text.find(line.as_str()).map_or((1, 1), |at| {
                            let before = &text[..at];
                            (before.matches('\n').count() + 1, index + 1)
                        });
                        return Err(error(
                            &file,
                            (line_no, col),
                            format!("cannot parse {line:?} as KEY=value"),
                        ));
                    }
                    Err(e) => {
                        return Err(ComposeError::Read {
                            file,
                            message: e.to_string(),
                        });
                    }
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ComposeError::Read {
                file,
                message: e.to_string(),
            });
        }
    }
    vars.extend(env);
    Ok(vars)
}

// ---------------------------------------------------------------------------------------------
// The spec language as emitted (kebab-case keys, empty fields left out).

#[derive(Serialize)]
struct SpecOut {
    colony: String,
    roles: IndexMap<String, RoleOut>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "kebab-case")]
struct RoleOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "NeedsOut::is_empty")]
    needs: NeedsOut,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    depends_on: Vec<String>,
    workload: WorkloadOut,
}

#[derive(Serialize, Default)]
struct NeedsOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<Cpu>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gpus: Option<u16>,
}

impl NeedsOut {
    fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.gpus.is_none()
    }
}

#[derive(Serialize, Default)]
struct LimitsOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<Cpu>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<String>,
}

impl LimitsOut {
    fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none()
    }
}

#[derive(Serialize, Default)]
struct WorkloadOut {
    image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    args: Vec<String>,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    env: IndexMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<HealthOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart: Option<RestartOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gpus: Option<u16>,
    #[serde(skip_serializing_if = "LimitsOut::is_empty")]
    limits: LimitsOut,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct HealthOut {
    exec: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_period: Option<String>,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(untagged)]
enum RestartOut {
    Word(&'static str),
    OnFailure {
        #[serde(rename = "on-failure")]
        on_failure: MaxRetries,
    },
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
struct MaxRetries {
    #[serde(rename = "max-retries")]
    max_retries: u32,
}

/// CPU as the spec writes it: whole cores as a number, anything else in millicores.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum Cpu {
    Cores(u32),
    Millis(String),
}

impl Cpu {
    /// As the spec writes it: `2`, `500m`.
    pub fn text(&self) -> String {
        match self {
            Cpu::Cores(n) => n.to_string(),
            Cpu::Millis(m) => m.clone(),
        }
    }

    pub fn from_millis(millis: u32) -> Cpu {
        if millis.is_multiple_of(1000) {
            Cpu::Cores(millis / 1000)
        } else {
            Cpu::Millis(fmt_cpu(millis))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Unit conversions (public for tests and reuse).

/// Bytes from a Docker memory value: `512m`, `1gb`, `1.5G`, `100MiB`, `2048` (bytes).
/// Units are binary multiples, as Docker means them.
pub fn docker_bytes(text: &str) -> Result<u64, String> {
    let s = text.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let shift = match unit.trim_start() {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        "p" | "pb" | "pi" | "pib" => 50,
        _ => return Err(format!("{text:?} is not a memory size (e.g. 512m, 1g)")),
    };
    let bytes = scaled_decimal(number, 1u128 << shift)
        .ok_or_else(|| format!("{text:?} is not a memory size (e.g. 512m, 1g)"))?;
    u64::try_from(bytes).map_err(|_| format!("{text:?} is too large"))
}

/// `int.frac * scale`, rounded up, in exact integer arithmetic. `None` when not a plain
/// non-negative decimal or absurdly large.
fn scaled_decimal(number: &str, scale: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || !all_digits(frac) || int.len() > 20 {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    // Beyond 18 fractional digits nothing measurable is left: they are dropped.
    let frac = &frac[..frac.len().min(18)];
    let denom = 10u128.pow(u32::try_from(frac.len()).ok()?);
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let whole = int.checked_mul(scale)?;
    let part = frac.checked_mul(scale)?.div_ceil(denom);
    whole.checked_add(part)
}

/// The spec quantity for a byte count, rounded up to whole MiB and written as the spec writes
/// it (`NTi`, `NGi` or `NMi`: [`fmt_mib`]).
pub fn mib_quantity(bytes: u64) -> String {
    fmt_mib(bytes.div_ceil(1 << 20))
}

/// Millicores from a Compose `cpus` value (`0.5`, `"2"`, `1.25`), rounded up to a whole
/// millicore.
pub fn compose_cpu_millis(text: &str) -> Result<u32, String> {
    let millis = scaled_decimal(text.trim(), 1000)
        .ok_or_else(|| format!("{text:?} is not a CPU count (e.g. 0.5, 2)"))?;
    u32::try_from(millis).map_err(|_| format!("{text:?} is too many CPUs"))
}

/// Milliseconds from a Compose (Go) duration: `10s`, `1m30s`, `1.5s`, `500ms`, `1h`.
pub fn duration_ms(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration (e.g. 30s, 1m30s, 500ms)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(n);
        let u = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(u);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        let part = scaled_decimal(number, scale).ok_or_else(bad)?;
        nanos = nanos.checked_add(part).ok_or_else(bad)?;
        rest = tail;
    }
    u64::try_from(nanos.div_ceil(1_000_000)).map_err(|_| bad())
}

/// A duration as the spec writes it.
fn duration_text(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

// ---------------------------------------------------------------------------------------------
// Conversion.

struct Cx<'a> {
    file: &'a str,
    pos: KeyPositions,
    warnings: Vec<Warning>,
    options: &'a Options,
}

impl Cx<'_> {
    /// Warn about the key at `path` (or its nearest indexed ancestor).
    fn warn(&mut self, path: &[&str], service: Option<&str>, message: impl Into<String>) {
        let pos = (1..=path.len())
            .rev()
            .find_map(|n| self.pos.get(&path[..n]));
        self.warnings.push(Warning {
            file: self.file.to_owned(),
            pos,
            service: service.map(str::to_owned),
            message: message.into(),
        });
    }
}

/// A scalar as text (strings, numbers, booleans); `None` for null and collections.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Tagged(t) => scalar(&t.value),
        _ => None,
    }
}

fn key_str(k: &Value) -> String {
    scalar(k).unwrap_or_else(|| "?".to_owned())
}

fn error(file: &str, (line, col): (usize, usize), message: impl Into<String>) -> ComposeError {
    ComposeError::Invalid {
        file: file.to_owned(),
        line,
        col,
        message: message.into(),
    }
}

/// Convert compose `text`. `file` names the file in messages and gives the colony its default
/// name (the compose `name:` wins).
pub fn convert(text: &str, file: &str, options: &Options) -> Result<Converted, ComposeError> {
    let mut doc: Value = serde_norway::from_str(text).map_err(|e| {
        let at = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        error(file, at, crate::caps::strip_location(&e.to_string()))
    })?;
    doc.apply_merge()
        .map_err(|e| error(file, (1, 1), crate::caps::strip_location(&e.to_string())))?;
    let mut cx = Cx {
        file,
        pos: KeyPositions::index(text),
        warnings: Vec::new(),
        options,
    };
    let mut unset = Vec::new();
    interpolate_all(&mut cx, &mut doc, &mut Vec::new(), &mut unset)?;
    let Value::Mapping(top) = &doc else {
        return Err(error(
            file,
            (1, 1),
            "not a Compose file: expected a mapping with `services`",
        ));
    };
    let services = match top.get("services") {
        Some(Value::Mapping(m)) => m,
        Some(_) => {
            let at = cx.pos.get(&["services"]).unwrap_or((1, 1));
            return Err(error(
                file,
                at,
                "`services` must be a mapping of service names",
            ));
        }
        None => {
            return Err(error(
                file,
                (1, 1),
                "not a Compose file: no `services` mapping",
            ));
        }
    };

    let mut colony = default_colony_name(file);
    for (k, v) in top {
        let key = key_str(k);
        match key.as_str() {
            "services" | "version" | "volumes" => {}
            "name" => match scalar(v) {
                Some(name) if !name.is_empty() => colony = name,
                _ => cx.warn(
                    &["name"],
                    None,
                    "`name` is not a string; using the file name",
                ),
            },
            "networks" => cx.warn(
                &[&key],
                None,
                "top-level networks are not mapped: roles share the colony network",
            ),
            "secrets" | "configs" => cx.warn(
                &[&key],
                None,
                format!("top-level {key} are not mapped; pass them as env or volumes"),
            ),
            k if k.starts_with("x-") => cx.warn(
                &[k],
                None,
                format!("extension `{k}` ignored (anchors it defines still apply)"),
            ),
            k => cx.warn(
                &[k],
                None,
                format!("top-level `{k}` is not supported; ignored"),
            ),
        }
    }

    let names: Vec<String> = services.keys().map(key_str).collect();
    if names.is_empty() {
        cx.warn(&["services"], None, "no services: the colony has no roles");
    }
    let mut roles = IndexMap::new();
    for (k, v) in services {
        let name = key_str(k);
        let empty = Mapping::new();
        let svc = match v {
            Value::Mapping(m) => m,
            Value::Null => &empty,
            _ => {
                cx.warn(
                    &["services", &name],
                    Some(&name),
                    "service is not a mapping; skipped",
                );
                continue;
            }
        };
        let role = convert_service(&mut cx, &colony, &name, svc, &names);
        roles.insert(name, role);
    }

    // File order; warnings without a position (keys that came through a merge) go last.
    cx.warnings
        .sort_by_key(|w| w.pos.unwrap_or((usize::MAX, usize::MAX)));
    let spec_yaml =
        serde_norway::to_string(&SpecOut { colony, roles }).map_err(|e| ComposeError::Emit {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
    Ok(Converted {
        spec_yaml,
        warnings: cx.warnings,
    })
}

/// Interpolate every string value under `v` (keys stay as written, as in Compose). A variable
/// used without a value is warned about once, where it is first used.
fn interpolate_all(
    cx: &mut Cx<'_>,
    v: &mut Value,
    path: &mut Vec<String>,
    unset: &mut Vec<String>,
) -> Result<(), ComposeError> {
    match v {
        Value::String(text) if text.contains('$') => {
            let at: Vec<&str> = path.iter().map(String::as_str).collect();
            match crate::interpolate::interpolate(text, &cx.options.variables) {
                Ok(out) => {
                    let service = match at.as_slice() {
                        ["services", service, _, ..] => Some(*service),
                        _ => None,
                    };
                    for name in out.unset {
                        if !unset.contains(&name) {
                            cx.warn(
                                &at,
                                service,
                                format!("variable {name} is not set; using an empty string"),
                            );
                            unset.push(name);
                        }
                    }
                    *text = out.text;
                }
                Err(e) => {
                    let pos = (1..=at.len())
                        .rev()
                        .find_map(|n| cx.pos.get(&at[..n]))
                        .unwrap_or((1, 1));
                    return Err(error(cx.file, pos, e.to_string()));
                }
            }
        }
        Value::Mapping(m) => {
            for (k, child) in m.iter_mut() {
                path.push(key_str(k));
                interpolate_all(cx, child, path, unset)?;
                path.pop();
            }
        }
        Value::Sequence(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                interpolate_all(cx, child, path, unset)?;
                path.pop();
            }
        }
        Value::Tagged(t) => interpolate_all(cx, &mut t.value, path, unset)?,
        _ => {}
    }
    Ok(())
}

/// The colony name from the file name: `web.compose.yaml` → `web`; a plain
/// `docker-compose.yml` / `compose.yaml` takes its directory's name, as Compose does.
pub fn default_colony_name(file: &str) -> String {
    let path = Path::new(file);
    let base = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("colony");
    let mut stem = base.split('.').next().unwrap_or(base).to_owned();
    if stem == "docker-compose" || stem == "compose" {
        let dir = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent()?.file_name()?.to_str().map(str::to_owned));
        if let Some(dir) = dir {
            stem = dir;
        }
    }
    let cleaned: String = stem
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let cleaned = cleaned.trim_matches('-').to_owned();
    if cleaned.is_empty() {
        "colony".to_owned()
    } else {
        cleaned
    }
}

/// What a service's keys say that is only settled once all keys are seen (precedence between
/// `deploy` and the service-level shorthands, the placeholder image, GPU totals).
///
/// Compose's default restart (`no`) is not copied: a colony restarts replicas unless told
/// otherwise, which is what people moving a stack to a cluster expect.
#[derive(Default)]
struct Pending {
    replicas: Option<u32>,
    scale: Option<u32>,
    global: bool,
    restart: Option<RestartOut>,
    deploy_restart: Option<RestartOut>,
    has_build: bool,
    gpus: u32,
    mem_limit: Option<String>,
    mem_reservation: Option<String>,
    cpus: Option<Cpu>,
    /// `runtime: nvidia`: the container sees the node's GPUs.
    runtime_nvidia: bool,
    /// Where `deploy.resources.limits` was written, if it was.
    limits_at: Option<Vec<String>>,
}

fn convert_service(
    cx: &mut Cx<'_>,
    colony: &str,
    name: &str,
    svc: &Mapping,
    services: &[String],
) -> RoleOut {
    let mut role = RoleOut::default();
    let mut p = Pending::default();
    let s = Some(name);
    for (k, v) in svc {
        let key = key_str(k);
        let path = ["services", name, key.as_str()];
        match key.as_str() {
            "image" => match scalar(v) {
                Some(image) if !image.is_empty() => role.workload.image = image,
                _ => cx.warn(&path, s, "`image` is not a string; ignored"),
            },
            "build" => p.has_build = true,
            "entrypoint" => role.workload.command = words(cx, &path, s, v),
            "command" => role.workload.args = words(cx, &path, s, v),
            "environment" => role.workload.env = environment(cx, &path, s, v),
            "ports" => role.workload.ports = ports(cx, &path, s, v),
            "volumes" => role.workload.volumes = volumes(cx, &path, s, v),
            "healthcheck" => role.workload.health = healthcheck(cx, &path, s, v),
            "restart" => p.restart = restart_word(cx, &path, s, v),
            "depends_on" => role.depends_on = depends_on(cx, &path, s, v, services),
            "deploy" => deploy(cx, &path, s, v, &mut role, &mut p),
            "scale" => p.scale = count(cx, &path, s, v),
            "gpus" => p.gpus = p.gpus.saturating_add(gpu_request(cx, &path, s, v)),
            "devices" => p.gpus = p.gpus.saturating_add(devices(cx, &path, s, v)),
            "mem_limit" => p.mem_limit = memory(cx, &path, s, v),
            "mem_reservation" => p.mem_reservation = memory(cx, &path, s, v),
            "cpus" => p.cpus = cpu(cx, &path, s, v),
            "runtime" => match scalar(v).as_deref() {
                Some("nvidia") => p.runtime_nvidia = true,
                Some("runc") => {}
                other => cx.warn(
                    &path,
                    s,
                    format!(
                        "runtime {} is not mapped: the node's runtime runs the workload; ignored",
                        other.unwrap_or("?")
                    ),
                ),
            },
            "shm_size" => cx.warn(
                &path,
                s,
                "shm_size is not mapped: the container gets the runtime's default /dev/shm \
                 (64Mi on Docker), which can be too small for browsers or data loaders. Dropped",
            ),
            other => {
                let message = match other {
                    "networks" => {
                        "networks are not mapped: roles share the colony network".to_owned()
                    }
                    "network_mode" => {
                        "network_mode is not mapped: roles use the colony network".to_owned()
                    }
                    "secrets" | "configs" => {
                        format!("{other} are not mapped; pass them as env or volumes")
                    }
                    "env_file" => {
                        "env_file is not read; copy its variables into `environment`".to_owned()
                    }
                    "extends" => "extends is not followed; inline the base service".to_owned(),
                    "profiles" => "profiles are ignored: every service becomes a role".to_owned(),
                    "privileged" | "cap_add" | "cap_drop" => {
                        format!("{other} is not supported: replicas run unprivileged")
                    }
                    "links" | "external_links" | "expose" => {
                        format!("{other} is not needed: roles reach each other by name")
                    }
                    x if x.starts_with("x-") => format!("extension `{x}` ignored"),
                    x => format!("`{x}` has no colony-spec equivalent; ignored"),
                };
                cx.warn(&path, s, message);
            }
        }
    }

    if role.workload.image.is_empty() {
        let placeholder = format!("{colony}-{name}:latest");
        let why = if p.has_build {
            "has only `build:`"
        } else {
            "has no `image`"
        };
        cx.warn(
            &["services", name, if p.has_build { "build" } else { "image" }],
            s,
            format!("{why}; image set to {placeholder} (Compose's name for the built image): build and push it where the nodes can pull it"),
        );
        role.workload.image = placeholder;
    } else if p.has_build {
        cx.warn(
            &["services", name, "build"],
            s,
            format!("`build` ignored: the colony pulls {}", role.workload.image),
        );
    }

    if p.global {
        if p.replicas.is_some() || p.scale.is_some() {
            cx.warn(
                &["services", name, "deploy", "replicas"],
                s,
                "replicas ignored for a global service",
            );
        }
        role.mode = Some("global");
    } else {
        role.replicas = Some(p.replicas.or(p.scale).unwrap_or(1));
    }
    role.workload.restart = p.deploy_restart.or(p.restart);
    if p.runtime_nvidia {
        let (gpus, message) = if p.gpus > 0 {
            (
                p.gpus,
                "runtime: nvidia is how Docker exposes GPUs; the GPU request of this service already says how many. Dropped",
            )
        } else {
            (
                1,
                "runtime: nvidia exposes the node's GPUs to the container: taken as a request for 1 GPU (needs.gpus and workload.gpus 1). Ask for more with deploy.resources.reservations.devices",
            )
        };
        p.gpus = gpus;
        cx.warn(&["services", name, "runtime"], s, message);
    }
    if p.gpus > 0 {
        let gpus = u16::try_from(p.gpus).unwrap_or(u16::MAX);
        role.needs.gpus = Some(gpus);
        role.workload.gpus = Some(gpus);
    }
    if role.workload.limits.memory.is_none() {
        role.workload.limits.memory = p.mem_limit.take();
    }
    if role.workload.limits.cpu.is_none() {
        role.workload.limits.cpu = p.cpus.clone();
    }
    if role.needs.memory.is_none() {
        role.needs.memory = p.mem_reservation.take();
    }
    default_needs_to_limits(cx, name, &mut role, &p);
    role
}

/// Like Kubernetes requests, needs default to the limits: a service that only sets limits
/// would otherwise reserve nothing, and the planner would stack it anywhere.
fn default_needs_to_limits(cx: &mut Cx<'_>, name: &str, role: &mut RoleOut, p: &Pending) {
    let limits = &role.workload.limits;
    let mut taken = Vec::new();
    if role.needs.cpu.is_none()
        && let Some(cpu) = &limits.cpu
    {
        role.needs.cpu = Some(cpu.clone());
        taken.push(format!("cpu {}", cpu.text()));
    }
    if role.needs.memory.is_none()
        && let Some(memory) = &limits.memory
    {
        role.needs.memory = Some(memory.clone());
        taken.push(format!("memory {memory}"));
    }
    if taken.is_empty() {
        return;
    }
    let at: Vec<&str> = match &p.limits_at {
        Some(path) => path.iter().map(String::as_str).collect(),
        None if p.cpus.is_some() && role.needs.cpu == p.cpus => vec!["services", name, "cpus"],
        None => vec!["services", name, "mem_limit"],
    };
    cx.warn(
        &at,
        Some(name),
        format!(
            "no reservation for {}: needs set to the limits, so each replica reserves them on its node; give deploy.resources.reservations to reserve less",
            taken.join(", ")
        ),
    );
}

/// A command: a list of strings, or a string split shell-style (Compose does not run a shell).
fn words(cx: &mut Cx<'_>, path: &[&str], s: Option<&str>, v: &Value) -> Vec<String> {
    match v {
        Value::Null => Vec::new(),
        Value::Sequence(items) => {
            let mut out = Vec::new();
            for item in items {
                match scalar(item) {
                    Some(w) => out.push(w),
                    None => cx.warn(path, s, "a list item is not a string; dropped"),
                }
            }
            out
        }
        v => match scalar(v) {
            Some(text) => match shell_words::split(&text) {
                Ok(words) => words,
                Err(e) => {
                    cx.warn(
                        path,
                        s,
                        format!("cannot split {text:?} into words ({e}); ignored"),
                    );
                    Vec::new()
                }
            },
            None => {
                cx.warn(path, s, "expected a string or a list of strings; ignored");
                Vec::new()
            }
        },
    }
}

fn environment(
    cx: &mut Cx<'_>,
    path: &[&str],
    s: Option<&str>,
    v: &Value,
) -> IndexMap<String, String> {
    let mut env = IndexMap::new();
    let mut add = |cx: &mut Cx<'_>, at: &str, key: String, value: Option<String>| {
        let at = [path, &[at]].concat();
        if !dna::spec::env_name_ok(&key) {
            cx.warn(
                &at,
                s,
                format!(
                    "environment name `{}` is empty or contains `=` or NUL; dropped",
                    key.escape_debug()
                ),
            );
            return;
        }
        match value {
            Some(value) => {
                env.insert(key, value);
            }
            None => cx.warn(
                &at,
                s,
                format!("environment {key} has no value (taken from the host by Compose); dropped"),
            ),
        }
    };
    match v {
        Value::Mapping(m) => {
            for (k, val) in m {
                let key = key_str(k);
                add(cx, &key.clone(), key, scalar(val));
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let idx = i.to_string();
                let Some(entry) = scalar(item) else {
                    cx.warn(
                        &[path, &[idx.as_str()]].concat(),
                        s,
                        "an environment entry is not a string; dropped",
                    );
                    continue;
                };
                match entry.split_once('=') {
                    Some((k, val)) => add(cx, &idx, k.to_owned(), Some(val.to_owned())),
                    None => add(cx, &idx, entry, None),
                }
            }
        }
        Value::Null => {}
        _ => cx.warn(
            path,
            s,
            "`environment` must be a mapping or a list; ignored",
        ),
    }
    env
}

fn port_number(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|p| *p > 0)
}

/// One short-syntax port: `[IP:][HOST:]CONTAINER[/PROTO]` → `HOST:CONTAINER/PROTO`.
fn short_port(text: &str) -> Result<(String, Option<String>), String> {
    let (spec, proto) = text.rsplit_once('/').unwrap_or((text, "tcp"));
    if proto != "tcp" && proto != "udp" {
        return Err(format!(
            "port {text:?}: protocol {proto} is not supported (tcp, udp); dropped"
        ));
    }
    let mut parts = spec.rsplitn(3, ':');
    let container = parts.next().unwrap_or_default();
    let host = parts.next();
    let ip = parts.next();
    if container.contains('-') || host.is_some_and(|h| h.contains('-')) {
        return Err(format!(
            "port range {text:?} is not supported; list the ports one by one"
        ));
    }
    let container = port_number(container)
        .ok_or_else(|| format!("port {text:?}: {container:?} is not a port number; dropped"))?;
    let note = ip
        .map(|ip| format!("port {text:?}: host address {ip} dropped (published on all addresses)"));
    match host {
        None | Some("") => Ok((format!("{container}/{proto}"), note)),
        Some(h) => {
            let host = port_number(h)
                .ok_or_else(|| format!("port {text:?}: {h:?} is not a port number; dropped"))?;
            Ok((format!("{host}:{container}/{proto}"), note))
        }
    }
}

fn long_port(m: &Mapping) -> Result<(String, Option<String>), String> {
    let target = m
        .get("target")
        .and_then(scalar)
        .ok_or_else(|| "port without `target`; dropped".to_owned())?;
    let proto = m
        .get("protocol")
        .and_then(scalar)
        .unwrap_or_else(|| "tcp".to_owned());
    let mut short = match m.get("published").and_then(scalar) {
        Some(published) => format!("{published}:{target}/{proto}"),
        None => format!("{target}/{proto}"),
    };
    if let Some(ip) = m.get("host_ip").and_then(scalar) {
        short = format!("{ip}:{short}");
    }
    short_port(&short)
}

fn ports(cx: &mut Cx<'_>, path: &[&str], s: Option<&str>, v: &Value) -> Vec<String> {
    let Some(items) = v.as_sequence() else {
        if !v.is_null() {
            cx.warn(path, s, "`ports` must be a list; ignored");
        }
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let idx = i.to_string();
        let item_path = [path, &[idx.as_str()]].concat();
        let converted = match item {
            Value::Mapping(m) => long_port(m),
            v => match scalar(v) {
                Some(text) => short_port(&text),
                None => Err("a port entry is neither a string nor a mapping; dropped".to_owned()),
            },
        };
        match converted {
            Ok((port, note)) => {
                if let Some(note) = note {
                    cx.warn(&item_path, s, note);
                }
                out.push(port);
            }
            Err(e) => cx.warn(&item_path, s, e),
        }
    }
    out
}

/// `a/./b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// One volume as the spec writes it, from source, target and read-only flag.
fn volume_entry(
    cx: &mut Cx<'_>,
    path: &[&str],
    s: Option<&str>,
    source: &str,
    target: &str,
    read_only: bool,
) -> Option<String> {
    if !target.starts_with('/') {
        cx.warn(
            path,
            s,
            format!("volume target {target:?} is not an absolute path; dropped"),
        );
        return None;
    }
    let source = if source.starts_with('.') {
        match &cx.options.base_dir {
            Some(base) => {
                let resolved = normalize(&base.join(source)).display().to_string();
                cx.warn(
                    path,
                    s,
                    format!("relative bind {source} resolved against the compose file's directory: {resolved}"),
                );
                resolved
            }
            None => {
                cx.warn(
                    path,
                    s,
                    format!("relative bind {source} kept as written: make it absolute"),
                );
                source.to_owned()
            }
        }
    } else if source.starts_with('~') {
        cx.warn(
            path,
            s,
            format!("bind {source} depends on a home directory; make it absolute. Dropped"),
        );
        return None;
    } else {
        source.to_owned()
    };
    Some(if read_only {
        format!("{source}:{target}:ro")
    } else {
        format!("{source}:{target}")
    })
}

fn volumes(cx: &mut Cx<'_>, path: &[&str], s: Option<&str>, v: &Value) -> Vec<String> {
    let Some(items) = v.as_sequence() else {
        if !v.is_null() {
            cx.warn(path, s, "`volumes` must be a list; ignored");
        }
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let idx = i.to_string();
        let item_path = [path, &[idx.as_str()]].concat();
        let entry = match item {
            Value::Mapping(m) => {
                let kind = m
                    .get("type")
                    .and_then(scalar)
                    .unwrap_or_else(|| "volume".to_owned());
                let source = m.get("source").and_then(scalar);
                let target = m.get("target").and_then(scalar);
                let read_only = m.get("read_only").and_then(Value::as_bool).unwrap_or(false);
                match (kind.as_str(), source, target) {
                    ("volume" | "bind", Some(source), Some(target)) => {
                        volume_entry(cx, &item_path, s, &source, &target, read_only)
                    }
                    ("volume" | "bind", None, Some(target)) => {
                        cx.warn(
                            &item_path,
                            s,
                            format!(
                                "anonymous volume at {target} is not supported; name it. Dropped"
                            ),
                        );
                        None
                    }
                    ("volume" | "bind", _, None) => {
                        cx.warn(&item_path, s, "volume without `target`; dropped");
                        None
                    }
                    (other, ..) => {
                        cx.warn(
                            &item_path,
                            s,
                            format!("volume type {other} is not supported; dropped"),
                        );
                        None
                    }
                }
            }
            v => match scalar(v) {
                Some(text) => {
                    let parts: Vec<&str> = text.split(':').collect();
                    match parts.as_slice() {
                        [target] => {
                            cx.warn(&item_path, s, format!("anonymous volume at {target} is not supported; name it. Dropped"));
                            None
                        }
                        [source, target] => volume_entry(cx, &item_path, s, source, target, false),
                        [source, target, mode] => {
                            let mut read_only = false;
                            for opt in mode.split(',') {
                                match opt {
                                    "ro" => read_only = true,
                                    "rw" | "z" | "Z" | "nocopy" | "cached" | "delegated"
                                    | "consistent" => {}
                                    other => cx.warn(
                                        &item_path,
                                        s,
                                        format!("volume option {other:?} ignored"),
                                    ),
                                }
                            }
                            volume_entry(cx, &item_path, s, source, target, read_only)
                        }
                        _ => {
                            cx.warn(
                                &item_path,
                                s,
                                format!("volume {text:?} is not SOURCE:TARGET[:MODE]; dropped"),
                            );
                            None
                        }
                    }
                }
                None => {
                    cx.warn(
                        &item_path,
                        s,
                        "a volume entry is neither a string nor a mapping; dropped",
                    );
                    None
                }
            },
        };
        out.extend(entry);
    }
    out
}

fn duration_field(
    cx: &mut Cx<'_>,
    m: &Mapping,
    path: &[&str],
    s: Option<&str>,
    key: &str,
) -> Option<String> {
    let v = m.get(key)?;
    let field = [path, &[key]].concat();
    let Some(text) = scalar(v) else {
        cx.warn(&field, s, format!("{key} is not a duration; ignored"));
        return None;
    };
    match duration_ms(&text) {
        Ok(ms) if u32::try_from(ms).is_ok() => Some(duration_text(ms)),
        Ok(_) => {
            cx.warn(&field, s, format!("{key} {text} is too long; ignored"));
            None
        }
        Err(e) => {
            cx.warn(&field, s, format!("{key}: {e}; ignored"));
            None
        }
    }
}

fn healthcheck(cx: &mut Cx<'_>, path: &[&str], s: Option<&str>, v: &Value) -> Option<HealthOut> {
    let Value::Mapping(m) = v else {
        cx.warn(path, s, "`healthcheck` must be a mapping; ignored");
        return None;
    };
    if m.get("disable").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let test_path = [path, &["test"]].concat();
    let exec = match m.get("test") {
        None => {
            cx.warn(path, s, "healthcheck without `test` relies on the image's HEALTHCHECK, which the colony does not read; ignored");
            return None;
        }
        Some(Value::Sequence(items)) => {
            let words: Vec<String> = items.iter().filter_map(scalar).collect();
            match words.split_first() {
                Some((first, rest)) if first == "CMD" && !rest.is_empty() => rest.to_vec(),
                Some((first, rest)) if first == "CMD-SHELL" && !rest.is_empty() => {
                    vec!["/bin/sh".to_owned(), "-c".to_owned(), rest.join(" ")]
                }
                Some((first, _)) if first == "NONE" => return None,
                _ => {
                    cx.warn(
                        &test_path,
                        s,
                        "healthcheck test must start with CMD, CMD-SHELL or NONE; ignored",
                    );
                    return None;
                }
            }
        }
        Some(v) => match scalar(v) {
            Some(text) if !text.trim().is_empty() => {
                vec!["/bin/sh".to_owned(), "-c".to_owned(), text]
            }
            _ => {
                cx.warn(&test_path, s, "healthcheck test is empty; ignored");
                return None;
            }
        },
    };
    for (k, _) in m {
        let key = key_str(k);
        if !matches!(
            key.as_str(),
            "test" | "interval" | "timeout" | "retries" | "start_period" | "disable"
        ) {
            cx.warn(
                &[path, &[key.as_str()]].concat(),
                s,
                format!("healthcheck {key} is not supported; ignored"),
            );
        }
    }
    let retries = match m.get("retries") {
        None => None,
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Some(n),
            None => {
                cx.warn(
                    &[path, &["retries"]].concat(),
                    s,
                    "healthcheck retries is not a count; ignored",
                );
                None
            }
        },
    };
    Some(HealthOut {
        exec,
        interval: duration_field(cx, m, path, s, "interval"),
        timeout: duration_field(cx, m, path, s, "timeout"),
        retries,
        start_period: duration_field(cx, m, path, s, "start_period"),
    })
}

fn restart_word(cx: &mut Cx<'_>, path: &[&str], s: Option<&str>, v: &Value) -> Option<RestartOut> {
    // YAML 1.1 readers turn a bare `no` into false.
    if v.as_bool() == Some(false) {
        return Some(RestartOut::Word("never"));
    }
    let text = scalar(v).unwrap_or_default();
    match text.as_str() {
        "no" => Some(RestartOut::Word("never")),
        "always" | "unless-stopped" => Some(RestartOut::Word("always")),
        "on-failure" => Some(RestartOut::Word("on-failure")),
        t => match t.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(n)) => Some(RestartOut::OnFailure {
                on_failure: MaxRetries { max_retries: n },
            }),
            _ => {
                cx.warn(path, s, format!("restart {text:?} is not one of no, always, on-failure[:N], unless-stopped; ignored"));
                None
            }
        },
    }
}

fn restart_policy(
    cx: &mut Cx<'_>,
    path: &[&str],
    s: Option<&str>,
    v: &Value,
) -> Option<RestartOut> {
    let Value::Mapping(m) = v else {
        cx.warn(path, s, "`restart_policy` must be a mapping; ignored");
        return None;
    };
    for (k, _) in m {
        let key = key_str(k);
        if !matches!(key.as_str(), "condition" | "max_attempts") {
            cx.warn(
                &[path, &[key.as_str()]].concat(),
                s,
                format!("restart_policy {key} is not supported; ignored"),
            );
        }
    }
    let max = m
        .get("max_attempts")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok());
    let condition = m
        .get("condition")
        .and_then(scalar)
        .unwrap_or_else(|| "any".to_owned());
    match condition.as_str() {
        "none" => Some(RestartOut::Word("never")),
        "any" => Some(RestartOut::Word("always")),
        "on-failure" => Some(match max {
            Some(n) if n > 0 => RestartOut::OnFailure {
                on_failure: MaxRetries { max_retries: n },
            },
            _ => RestartOut::Word("on-failure"),
        }),
        other => {
            cx.warn(
                &[path, &["condition"]].concat(),
                s,
                format!("restart condition {other:?} is not none, on-failure or any; ignored"),
            );
            None
        }
    }
}

fn depends_on(
    cx: &mut Cx<'_>,
    path: &[&str],
    s: Option<&str>,
    v: &Value,
    services: &[String],
) -> Vec<String> {
    // (name, key of its entry under depends_on: the list index or the name itself)
    let names: Vec<(String, String)> = match v {
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| Some((scalar(item)?, i.to_string())))
            .collect(),
        Value::Mapping(m) => {
            for (k, v) in m {
                depends_on_options(cx, path, s, &key_str(k), v);
            }
            m.keys().map(|k| (key_str(k), key_str(k))).collect()
        }
        Value::Null => Vec::new(),
        _ => {
            cx.warn(path, s, "`depends_on` must be a list or a mapping; ignored");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (name, at) in names {
        if services.contains(&name) {
            out.push(name);
        } else {
            cx.warn(
                &[path, &[at.as_str()]].concat(),
                s,
                format!("depends on unknown service {name}; dropped"),
            );
        }
    }
    out
}

/// The long form `depends_on: {db: {condition: service_healthy, restart: true}}`: a colony
/// keeps the start order only, so every condition stronger than "started" is dropped, with a
/// warning.
fn depends_on_options(cx: &mut Cx<'_>, path: &[&str], s: Option<&str>, dep: &str, v: &Value) {
    let Value::Mapping(m) = v else {
        return;
    };
    for (k, v) in m {
        let key = key_str(k);
        let at = [path, &[dep, key.as_str()]].concat();
        match (key.as_str(), scalar(v).as_deref()) {
            ("condition", Some("service_started")) | ("required", Some("true")) => {}
            ("condition", Some(c @ ("service_healthy" | "service_completed_successfully"))) => {
                cx.warn(
                    &at,
                    s,
                    format!(
                        "depends_on {dep}: condition {c} dropped: a colony starts {dep} first but does not wait until it is {}",
                        if c == "service_healthy" { "healthy" } else { "done" }
                    ),
                )
            }
            (key, value) => cx.warn(
                &at,
                s,
                format!(
                    "depends_on {dep}: {key}: {} is not mapped (only the start order is); dropped",
                    value.unwrap_or("...")
                ),
            ),
        }
    }
}

fn count(cx: &mut Cx<'_>, path: &[&str], s: Option<&str>, v: &Value) -> Option<u32> {
    match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
        Some(n) => Some(n),
        None => {
            cx.warn(path, s, "expected a replica count; ignored");
            None
        }
    }
}

fn memory(cx: &mut Cx<'_>, path: &[&str], s: Option<&str>, v: &Value) -> Option<String> {
    let text = scalar(v).unwrap_or_default();
    match docker_bytes(&text) {
        Ok(0) => {
            cx.warn(path, s, "memory 0 means no limit; ignored");
            None
        }
        Ok(bytes) => Some(mib_quantity(bytes)),
        Err(e) => {
            cx.warn(path, s, format!("memory {e}; ignored"));
            None
        }
    }
}

fn cpu(cx: &mut Cx<'_>, path: &[&str], s: Option<&str>, v: &Value) -> Option<Cpu> {
    let text = scalar(v).unwrap_or_default();
    match compose_cpu_millis(&text) {
        Ok(0) => {
            cx.warn(path, s, "cpus 0 means no limit; ignored");
            None
        }
        Ok(m) => Some(Cpu::from_millis(m)),
        Err(e) => {
            cx.warn(path, s, format!("cpus {e}; ignored"));
            None
        }
    }
}

/// GPUs asked for by one device request: `count: N | all`, or `device_ids: [...]`.
fn gpu_count(cx: &mut Cx<'_>, path: &[&str], s: Option<&str>, m: &Mapping) -> u32 {
    if let Some(ids) = m.get("device_ids").and_then(Value::as_sequence) {
        return u32::try_from(ids.len()).unwrap_or(u32::MAX);
    }
    let count = m.get("count");
    if let Some(n) = count.and_then(Value::as_u64) {
        return u32::try_from(n).unwrap_or(u32::MAX);
    }
    // `count: all`, or no count at all (Compose's default is all).
    if count.is_none_or(|v| scalar(v).as_deref() == Some("all")) {
        cx.warn(
            path,
            s,
            "GPU count `all` has no fixed number on a colony; asking for 1 GPU",
        );
    } else {
        cx.warn(path, s, "GPU count is neither a number nor `all`; using 1");
    }
    1
}

fn is_gpu_request(m: &Mapping) -> bool {
    let caps_gpu = m
        .get("capabilities")
        .and_then(Value::as_sequence)
        .is_some_and(|c| c.iter().any(|x| x.as_str() == Some("gpu")));
    let nvidia = m.get("driver").and_then(Value::as_str) == Some("nvidia");
    caps_gpu || nvidia
}

/// `deploy.resources.reservations.devices` or the service-level `gpus`.
fn device_requests(cx: &mut Cx<'_>, path: &[&str], s: Option<&str>, v: &Value) -> u32 {
    let Some(items) = v.as_sequence() else {
        cx.warn(path, s, "device requests must be a list; ignored");
        return 0;
    };
    let mut gpus = 0u32;
    for (i, item) in items.iter().enumerate() {
        let idx = i.to_string();
        let item_path = [path, &[idx.as_str()]].concat();
        match item {
            Value::Mapping(m) if is_gpu_request(m) => {
                gpus = gpus.saturating_add(gpu_count(cx, &item_path, s, m));
            }
            _ => cx.warn(
                &item_path,
                s,
                "device reservations other than GPUs are not supported; dropped",
            ),
        }
    }
    gpus
}

fn gpu_request(cx: &mut Cx<'_>, path: &[&str], s: Option<&str>, v: &Value) -> u32 {
    if scalar(v).as_deref() == Some("all") {
        cx.warn(
            path,
            s,
            "gpus: all has no fixed number on a colony; asking for 1 GPU",
        );
        return 1;
    }
    device_requests(cx, path, s, v)
}

/// Service-level `devices`: `/dev/nvidiaN` entries count as GPUs (the other NVIDIA control
/// devices come with them); anything else is dropped.
fn devices(cx: &mut Cx<'_>, path: &[&str], s: Option<&str>, v: &Value) -> u32 {
    let Some(items) = v.as_sequence() else {
        cx.warn(path, s, "`devices` must be a list; ignored");
        return 0;
    };
    let mut gpus = 0u32;
    for (i, item) in items.iter().enumerate() {
        let idx = i.to_string();
        let item_path = [path, &[idx.as_str()]].concat();
        let text = scalar(item).unwrap_or_default();
        let host = text.split(':').next().unwrap_or_default();
        match host.strip_prefix("/dev/nvidia") {
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => gpus += 1,
            Some(_) => {}
            None => cx.warn(
                &item_path,
                s,
                format!("device {text:?} is not supported (only GPUs are); dropped"),
            ),
        }
    }
    gpus
}

fn deploy(
    cx: &mut Cx<'_>,
    path: &[&str],
    s: Option<&str>,
    v: &Value,
    role: &mut RoleOut,
    p: &mut Pending,
) {
    let Value::Mapping(m) = v else {
        cx.warn(path, s, "`deploy` must be a mapping; ignored");
        return;
    };
    for (k, v) in m {
        let key = key_str(k);
        let sub = [path, &[key.as_str()]].concat();
        match key.as_str() {
            "replicas" => p.replicas = count(cx, &sub, s, v),
            "mode" => match scalar(v).as_deref() {
                Some("global") => p.global = true,
                Some("replicated") => {}
                other => cx.warn(
                    &sub,
                    s,
                    format!(
                        "deploy mode {} is not supported; treated as replicated",
                        other.unwrap_or("?")
                    ),
                ),
            },
            "restart_policy" => p.deploy_restart = restart_policy(cx, &sub, s, v),
            "resources" => resources(cx, &sub, s, v, role, p),
            other => cx.warn(&sub, s, format!("deploy.{other} is not mapped; ignored")),
        }
    }
}

fn resources(
    cx: &mut Cx<'_>,
    path: &[&str],
    s: Option<&str>,
    v: &Value,
    role: &mut RoleOut,
    p: &mut Pending,
) {
    let Value::Mapping(m) = v else {
        cx.warn(path, s, "`resources` must be a mapping; ignored");
        return;
    };
    for (k, v) in m {
        let key = key_str(k);
        let sub = [path, &[key.as_str()]].concat();
        let Value::Mapping(r) = v else {
            cx.warn(
                &sub,
                s,
                format!("resources.{key} must be a mapping; ignored"),
            );
            continue;
        };
        let reservations = match key.as_str() {
            "reservations" => true,
            "limits" => {
                p.limits_at = Some(sub.iter().map(|k| (*k).to_owned()).collect());
                false
            }
            other => {
                cx.warn(&sub, s, format!("resources.{other} is not mapped; ignored"));
                continue;
            }
        };
        for (rk, rv) in r {
            let rkey = key_str(rk);
            let field = [sub.as_slice(), &[rkey.as_str()]].concat();
            match (rkey.as_str(), reservations) {
                ("cpus", true) => role.needs.cpu = cpu(cx, &field, s, rv),
                ("cpus", false) => role.workload.limits.cpu = cpu(cx, &field, s, rv),
                ("memory", true) => role.needs.memory = memory(cx, &field, s, rv),
                ("memory", false) => role.workload.limits.memory = memory(cx, &field, s, rv),
                ("devices", true) => {
                    p.gpus = p.gpus.saturating_add(device_requests(cx, &field, s, rv))
                }
                (other, _) => cx.warn(
                    &field,
                    s,
                    format!("resources.{key}.{other} is not mapped; ignored"),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_memory_units_are_binary() {
        assert_eq!(docker_bytes("512m"), Ok(512 << 20));
        assert_eq!(docker_bytes("512M"), Ok(512 << 20));
        assert_eq!(docker_bytes("1gb"), Ok(1 << 30));
        assert_eq!(docker_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(docker_bytes("100MiB"), Ok(100 << 20));
        assert_eq!(docker_bytes("64k"), Ok(64 << 10));
        assert_eq!(docker_bytes("64 kb"), Ok(64 << 10));
        assert_eq!(docker_bytes("2048"), Ok(2048));
        assert_eq!(docker_bytes("10b"), Ok(10));
    }

    #[test]
    fn hostile_memory_values_are_errors_not_panics() {
        for bad in [
            "",
            "-1g",
            "1e9",
            "g",
            ".",
            "1..5g",
            "1.5.5g",
            "0x10m",
            "ten",
            "1 g b",
            "1gx",
            "99999999999999999999999999999999g",
            "18446744073709551616",
            "17179869184g",
            "\u{0663}m",
            "1.m.",
        ] {
            assert!(
                docker_bytes(bad).is_err(),
                "{bad:?} -> {:?}",
                docker_bytes(bad)
            );
        }
        assert_eq!(docker_bytes("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(docker_bytes("1.000000000000000000000000001k"), Ok(1024));
        assert_eq!(docker_bytes("1.001k"), Ok(1026));
    }

    #[test]
    fn memory_quantities_round_up_to_mib() {
        assert_eq!(mib_quantity(512 << 20), "512Mi");
        assert_eq!(mib_quantity(1 << 30), "1Gi");
        assert_eq!(mib_quantity(3 << 29), "1536Mi");
        assert_eq!(mib_quantity(1), "1Mi");
        assert_eq!(mib_quantity(0), "0Mi");
        assert_eq!(mib_quantity(1 << 40), "1Ti");
        assert_eq!(mib_quantity(u64::MAX), "16777216Ti");
    }

    #[test]
    fn cpus_become_millicores() {
        assert_eq!(compose_cpu_millis("0.5"), Ok(500));
        assert_eq!(compose_cpu_millis("2"), Ok(2000));
        assert_eq!(compose_cpu_millis("1.25"), Ok(1250));
        assert_eq!(compose_cpu_millis(".1"), Ok(100));
        assert_eq!(compose_cpu_millis("0.0001"), Ok(1));
        assert_eq!(compose_cpu_millis("0"), Ok(0));
        for bad in ["", "-1", "1e3", "half", "5000000", "1.2.3", "nan", "inf"] {
            assert!(compose_cpu_millis(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Cpu::from_millis(2000), Cpu::Cores(2));
        assert_eq!(Cpu::from_millis(500), Cpu::Millis("500m".to_owned()));
    }

    #[test]
    fn go_durations() {
        assert_eq!(duration_ms("10s"), Ok(10_000));
        assert_eq!(duration_ms("1m30s"), Ok(90_000));
        assert_eq!(duration_ms("1.5s"), Ok(1_500));
        assert_eq!(duration_ms("500ms"), Ok(500));
        assert_eq!(duration_ms("1h"), Ok(3_600_000));
        assert_eq!(duration_ms("10us"), Ok(1));
        assert_eq!(duration_text(90_000), "90s");
        assert_eq!(duration_text(1_500), "1500ms");
        for bad in [
            "",
            "10",
            "s",
            "10x",
            "-1s",
            "1e3s",
            "99999999999999999999999h",
        ] {
            assert!(duration_ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn short_ports() {
        let ok = |t: &str| short_port(t).map(|(p, _)| p);
        assert_eq!(ok("8080:80"), Ok("8080:80/tcp".to_owned()));
        assert_eq!(ok("80"), Ok("80/tcp".to_owned()));
        assert_eq!(ok("53:53/udp"), Ok("53:53/udp".to_owned()));
        assert_eq!(ok("127.0.0.1:8080:80"), Ok("8080:80/tcp".to_owned()));
        assert!(short_port("127.0.0.1:8080:80").is_ok_and(|(_, note)| note.is_some()));
        assert_eq!(ok("127.0.0.1::80"), Ok("80/tcp".to_owned()));
        for bad in [
            "3000-3005",
            "9090-9091:8080-8081",
            "80/sctp",
            "x:80",
            "0",
            "70000",
            "",
        ] {
            assert!(short_port(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn colony_names_from_files() {
        assert_eq!(
            default_colony_name("examples/compose/ai-stack.compose.yaml"),
            "ai-stack"
        );
        assert_eq!(default_colony_name("/srv/shop/docker-compose.yml"), "shop");
        assert_eq!(default_colony_name("My_Stack.yml"), "my-stack");
    }

    fn convert_ok(text: &str) -> Converted {
        convert(text, "c.yaml", &Options::default()).unwrap()
    }

    #[test]
    fn not_compose_is_an_error_with_position() {
        let e = convert("services: [\n", "c.yaml", &Options::default()).unwrap_err();
        assert!(e.to_string().starts_with("c.yaml:"), "{e}");
        let e = convert("- a\n- b\n", "c.yaml", &Options::default()).unwrap_err();
        assert!(e.to_string().starts_with("c.yaml:1:1: "), "{e}");
        let e = convert("version: '3'\n", "c.yaml", &Options::default()).unwrap_err();
        assert!(e.to_string().contains("no `services`"), "{e}");
        let e = convert("name: x\nservices: 3\n", "c.yaml", &Options::default()).unwrap_err();
        assert!(e.to_string().starts_with("c.yaml:2:1: "), "{e}");
    }

    #[test]
    fn strings_split_shell_style_and_lists_stay() {
        let out = convert_ok(
            "services:\n  web:\n    image: nginx\n    entrypoint: /docker-entrypoint.sh\n    command: nginx -g 'daemon off;'\n",
        );
        assert!(
            out.spec_yaml
                .contains("command:\n      - /docker-entrypoint.sh\n"),
            "{}",
            out.spec_yaml
        );
        assert!(out.spec_yaml.contains("- daemon off;"), "{}", out.spec_yaml);
        assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    }

    #[test]
    fn relative_binds_resolve_against_the_compose_dir() {
        let options = Options {
            base_dir: Some(PathBuf::from("/srv/shop")),
            ..Options::default()
        };
        let out = convert(
            "services:\n  web:\n    image: nginx\n    volumes: [./html:/usr/share/nginx/html:ro, ../x:/x, ~/y:/y, /z]\n",
            "c.yaml",
            &options,
        )
        .unwrap();
        assert!(
            out.spec_yaml
                .contains("/srv/shop/html:/usr/share/nginx/html:ro"),
            "{}",
            out.spec_yaml
        );
        assert!(out.spec_yaml.contains("/srv/x:/x"), "{}", out.spec_yaml);
        assert!(!out.spec_yaml.contains("/y"), "{}", out.spec_yaml);
        assert_eq!(out.warnings.len(), 4, "{:?}", out.warnings);
    }

    #[test]
    fn hostile_services_warn_instead_of_failing() {
        let out = convert_ok(
            "services:\n  a: 3\n  b:\n  c:\n    image: [x]\n    ports: {x: 1}\n    volumes: 7\n    environment: 5\n    healthcheck: {test: 5}\n    deploy: {replicas: -1, resources: {limits: {memory: -5, cpus: lots}}}\n    restart: sometimes\n    depends_on: {zz: {}}\n    command: \"unterminated '\"\n",
        );
        assert!(out.spec_yaml.contains("b:"), "{}", out.spec_yaml);
        assert!(!out.spec_yaml.contains("a:"), "{}", out.spec_yaml);
        let text: Vec<String> = out.warnings.iter().map(ToString::to_string).collect();
        assert!(text.len() >= 10, "{text:#?}");
        assert!(text.iter().all(|w| w.starts_with("c.yaml:")), "{text:#?}");
    }

    #[test]
    fn merge_keys_and_extensions() {
        let out = convert_ok(
            "x-common: &common\n  restart: unless-stopped\n  environment: {TZ: UTC}\nservices:\n  a:\n    <<: *common\n    image: busybox\n",
        );
        assert!(out.spec_yaml.contains("TZ: UTC"), "{}", out.spec_yaml);
        assert!(
            out.spec_yaml.contains("restart: always"),
            "{}",
            out.spec_yaml
        );
        assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
        assert_eq!(
            out.warnings[0].to_string(),
            "c.yaml:1:1: warning: extension `x-common` ignored (anchors it defines still apply)"
        );
    }

    #[test]
    fn gpu_requests_in_all_their_forms() {
        let out = convert_ok(
            "services:\n  a:\n    image: x\n    gpus: all\n  b:\n    image: x\n    deploy:\n      resources:\n        reservations:\n          devices:\n            - {driver: nvidia, device_ids: ['0', '1'], capabilities: [gpu]}\n            - {capabilities: [tpu]}\n  c:\n    image: x\n    devices: [/dev/nvidia0, /dev/nvidiactl, /dev/nvidia1, /dev/dri]\n  d:\n    image: x\n    gpus: [{driver: nvidia, count: 3}]\n",
        );
        let spec: Value = serde_norway::from_str(&out.spec_yaml).unwrap();
        let gpus = |role: &str| spec["roles"][role]["needs"]["gpus"].as_u64();
        assert_eq!(gpus("a"), Some(1));
        assert_eq!(gpus("b"), Some(2));
        assert_eq!(gpus("c"), Some(2));
        assert_eq!(gpus("d"), Some(3));
        assert_eq!(spec["roles"]["d"]["workload"]["gpus"].as_u64(), Some(3));
        let text: Vec<String> = out.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(
            text[0].starts_with("c.yaml:4:5: warning: service a: gpus: all"),
            "{text:#?}"
        );
        assert!(
            text[1].starts_with(
                "c.yaml:12:15: warning: service b: device reservations other than GPUs"
            ),
            "{text:#?}"
        );
        assert!(text[2].contains("/dev/dri"), "{text:#?}");
    }

    #[test]
    fn global_mode_restart_and_precedence() {
        let out = convert_ok(
            "services:\n  a:\n    image: x\n    scale: 4\n    restart: \"no\"\n    deploy: {mode: global, replicas: 2, restart_policy: {condition: any}}\n  b:\n    image: x\n    scale: 4\n    restart: on-failure:2\n    mem_limit: 1.5g\n    cpus: 0.75\n",
        );
        let spec: Value = serde_norway::from_str(&out.spec_yaml).unwrap();
        let a = &spec["roles"]["a"];
        assert_eq!(a["mode"].as_str(), Some("global"));
        assert!(a.get("replicas").is_none());
        assert_eq!(a["workload"]["restart"].as_str(), Some("always"));
        let b = &spec["roles"]["b"];
        assert_eq!(b["replicas"].as_u64(), Some(4));
        assert_eq!(
            b["workload"]["restart"]["on-failure"]["max-retries"].as_u64(),
            Some(2)
        );
        assert_eq!(b["workload"]["limits"]["memory"].as_str(), Some("1536Mi"));
        assert_eq!(b["workload"]["limits"]["cpu"].as_str(), Some("750m"));
        // Limits alone: the needs follow them, with a warning at the first limit's key.
        assert_eq!(b["needs"]["cpu"].as_str(), Some("750m"));
        assert_eq!(b["needs"]["memory"].as_str(), Some("1536Mi"));
        assert_eq!(out.warnings.len(), 2, "{:?}", out.warnings);
        assert_eq!(
            out.warnings[1].to_string(),
            "c.yaml:12:5: warning: service b: no reservation for cpu 750m, memory 1536Mi: needs set to the limits, so each replica reserves them on its node; give deploy.resources.reservations to reserve less"
        );
    }
}
