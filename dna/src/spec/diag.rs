//! Error collection and the typed readers shared by the spec and nodes walkers: mappings with
//! known keys (unknown-key did-you-mean, duplicate keys), integers, strings, name lists.
//!
//! Every reader reports into [`Diags`] and returns `None` on a bad value, so a walk goes on and
//! collects all problems; [`Diags::into_errors`] sorts them into file order.

use super::SpecError;
use super::yaml::{Node, Pos, Value};

#[derive(Default)]
pub(crate) struct Diags {
    errs: Vec<(Pos, String)>,
}

impl Diags {
    pub fn err(&mut self, pos: Pos, msg: impl Into<String>) {
        self.errs.push((pos, msg.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.errs.is_empty()
    }

    /// Sorted by (source, line, column), identical errors dropped. `files[src]` names the source.
    pub fn into_errors(mut self, files: &[String]) -> Vec<SpecError> {
        self.errs.sort_by_key(|e| e.0);
        self.errs.dedup();
        self.errs
            .into_iter()
            .map(|(pos, message)| SpecError {
                file: files.get(usize::from(pos.src)).cloned().unwrap_or_default(),
                line: pos.line,
                col: pos.col,
                message: if pos.src == 0 {
                    message
                } else {
                    format!("{message} (in the template; override it under `roles:`)")
                },
            })
            .collect()
    }
}

/// Edit distance (Levenshtein over chars), for did-you-mean suggestions.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `; did you mean `x`?` when a candidate is close enough, else empty.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    let limit = (word.chars().count() / 3).max(1);
    let best = candidates
        .into_iter()
        .map(|c| (distance(&word.to_lowercase(), c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, c)) => format!("; did you mean `{c}`?"),
        None => String::new(),
    }
}

/// The entries of a mapping whose keys were checked against a known set.
pub(crate) struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node, &'n Node)>,
}

impl<'n> Fields<'n> {
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|e| e.0 == key).map(|e| e.2)
    }

    pub fn key(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|e| e.0 == key).map(|e| e.1)
    }

    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|e| e.0 == key)
    }
}

/// Check that `node` is a mapping whose keys are all in `allowed` (reporting unknown keys with a
/// suggestion and duplicate keys); `what` names the mapping in messages (`role `web``).
/// A null node reads as an empty mapping.
pub(crate) fn fields<'n>(
    d: &mut Diags,
    node: &'n Node,
    allowed: &[&str],
    what: &str,
) -> Option<Fields<'n>> {
    if node.is_null() {
        return Some(Fields {
            entries: Vec::new(),
        });
    }
    let Value::Map(entries) = &node.value else {
        d.err(
            node.pos,
            format!("expected a mapping for {what}, found {}", node.kind()),
        );
        return None;
    };
    let mut out: Vec<(&'n str, &'n Node, &'n Node)> = Vec::new();
    for (k, v) in entries {
        let Some(name) = k.scalar() else {
            d.err(
                k.pos,
                format!("expected a key name in {what}, found {}", k.kind()),
            );
            continue;
        };
        // `x-...` keys at the top level are ignored, as in compose files: a place for anchors.
        let extension = allowed.contains(&"colony") && name.starts_with("x-");
        let known = allowed.contains(&name) || extension;
        if !known {
            let hint = did_you_mean(name, allowed.iter().copied());
            let msg = if hint.is_empty() {
                format!(
                    "unknown key `{name}` in {what} (known keys: {})",
                    allowed.join(", ")
                )
            } else {
                format!("unknown key `{name}` in {what}{hint}")
            };
            d.err(k.pos, msg);
            continue;
        }
        if let Some(first) = out.iter().find(|e| e.0 == name) {
            d.err(
                k.pos,
                format!(
                    "duplicate key `{name}` in {what} (first given at line {})",
                    first.1.pos.line
                ),
            );
            continue;
        }
        out.push((name, k, v));
    }
    Some(Fields { entries: out })
}

/// Entries of a mapping with free-form keys (labels, env, roles, scale), duplicates reported.
pub(crate) fn free_map<'n>(
    d: &mut Diags,
    node: &'n Node,
    what: &str,
    expected: &str,
) -> Option<Vec<(&'n str, &'n Node, &'n Node)>> {
    if node.is_null() {
        return Some(Vec::new());
    }
    let Value::Map(entries) = &node.value else {
        d.err(
            node.pos,
            format!("expected {expected}, found {}", node.kind()),
        );
        return None;
    };
    let mut out: Vec<(&'n str, &'n Node, &'n Node)> = Vec::new();
    for (k, v) in entries {
        let Some(name) = k.scalar() else {
            d.err(
                k.pos,
                format!("expected a name as key in {what}, found {}", k.kind()),
            );
            continue;
        };
        if let Some(first) = out.iter().find(|e| e.0 == name) {
            d.err(
                k.pos,
                format!(
                    "duplicate key `{name}` in {what} (first given at line {})",
                    first.1.pos.line
                ),
            );
            continue;
        }
        out.push((name, k, v));
    }
    Some(out)
}

/// Any scalar as text (quoted or not); numbers are accepted as their text.
pub(crate) fn text<'n>(d: &mut Diags, node: &'n Node, what: &str) -> Option<&'n str> {
    match node.scalar() {
        Some(t) => Some(t),
        None => {
            d.err(node.pos, format!("expected {what}, found {}", node.kind()));
            None
        }
    }
}

/// A non-negative integer written as a plain YAML number, at most `max`.
pub(crate) fn uint(d: &mut Diags, node: &Node, what: &str, max: u64) -> Option<u64> {
    let Some(t) = node.plain() else {
        d.err(
            node.pos,
            format!("expected {what} (a whole number), found {}", node.kind()),
        );
        return None;
    };
    if let Some(rest) = t.strip_prefix('-') {
        if rest.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty() {
            d.err(node.pos, format!("{what} must not be negative, found {t}"));
            return None;
        }
    }
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        d.err(
            node.pos,
            format!(
                "expected {what} (a whole number), found {} `{t}`",
                node.kind()
            ),
        );
        return None;
    }
    match t.parse::<u64>() {
        Ok(v) if v <= max => Some(v),
        _ => {
            d.err(node.pos, format!("{what} {t} is too large (at most {max})"));
            None
        }
    }
}

/// A signed integer written as a plain YAML number, within i32.
pub(crate) fn int(d: &mut Diags, node: &Node, what: &str) -> Option<i32> {
    let Some(t) = node.plain() else {
        d.err(
            node.pos,
            format!("expected {what} (a whole number), found {}", node.kind()),
        );
        return None;
    };
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        d.err(
            node.pos,
            format!(
                "expected {what} (a whole number), found {} `{t}`",
                node.kind()
            ),
        );
        return None;
    }
    match t.parse::<i32>() {
        Ok(v) => Some(v),
        Err(_) => {
            d.err(
                node.pos,
                format!("{what} {t} is out of range ({} to {})", i32::MIN, i32::MAX),
            );
            None
        }
    }
}

/// `true` / `false` as a plain YAML boolean.
pub(crate) fn boolean(d: &mut Diags, node: &Node, what: &str) -> Option<bool> {
    match node.plain() {
        Some("true" | "True" | "TRUE") => Some(true),
        Some("false" | "False" | "FALSE") => Some(false),
        _ => {
            d.err(
                node.pos,
                format!("expected {what} (true or false), found {}", node.kind()),
            );
            None
        }
    }
}

/// A list of names (a single name is accepted as a one-element list).
pub(crate) fn name_list(d: &mut Diags, node: &Node, what: &str) -> Option<Vec<(String, Pos)>> {
    if node.is_null() {
        return Some(Vec::new());
    }
    match &node.value {
        Value::Scalar { text, .. } if node.kind() == "a string" => {
            Some(vec![(text.clone(), node.pos)])
        }
        Value::Scalar { .. } => {
            d.err(
                node.pos,
                format!("expected a list of {what}, found {}", node.kind()),
            );
            None
        }
        Value::Seq(items) => {
            let mut out = Vec::new();
            for item in items {
                match item.scalar() {
                    Some(t) if item.kind() == "a string" => out.push((t.to_owned(), item.pos)),
                    _ => d.err(
                        item.pos,
                        format!("expected a list of {what}, found {} in it", item.kind()),
                    ),
                }
            }
            Some(out)
        }
        Value::Map(_) => {
            d.err(
                node.pos,
                format!("expected a list of {what}, found a mapping"),
            );
            None
        }
    }
}

/// `[a-z0-9][a-z0-9-]*`, at most 63 characters (a DNS label, so names can become host names).
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(crate) const NAME_RULE: &str =
    "use lowercase letters, digits and `-`, starting with a letter or digit, at most 63 characters";

/// CPU architectures a node may report (as `uname -m` spells them).
pub(crate) use swarm_core::caps::ARCHES;

/// Check an architecture name and return its Docker/OCI spelling: aliases such as `x86_64`,
/// `aarch64` or `armv7l` are accepted and normalised (`swarm_core::caps::canonical_arch`).
pub(crate) fn check_arch(d: &mut Diags, name: &str, pos: Pos) -> Option<&'static str> {
    if let Some(canonical) = swarm_core::caps::canonical_arch(name) {
        return Some(canonical);
    }
    let lower = name.to_ascii_lowercase();
    let hint = match swarm_core::caps::canonical_arch(&lower) {
        Some(c) => format!("; did you mean `{c}`?"),
        None => did_you_mean(name, ARCHES.iter().copied()),
    };
    let hint = if hint.is_empty() {
        format!(" (known: {})", ARCHES.join(", "))
    } else {
        hint
    };
    d.err(pos, format!("unknown architecture `{name}`{hint}"));
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance() {
        assert_eq!(distance("replica", "replicas"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(
            did_you_mean("replica", ["replicas", "mode"]),
            "; did you mean `replicas`?"
        );
        assert_eq!(did_you_mean("zzz", ["replicas", "mode"]), "");
    }
}
