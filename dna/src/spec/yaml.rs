//! A small position-marked YAML tree built from `saphyr-parser` events.
//!
//! Why this and not serde: the spec must report *every* problem with the exact `line:col` of the
//! offending node, including duplicate keys, which serde-based and most tree loaders silently
//! merge. `saphyr-parser` is the maintained pure-Rust YAML 1.2 parser (successor of yaml-rust,
//! two small dependencies, no `unsafe` C port); it yields events with spans, so we build our own
//! tree that keeps every key (duplicates included) in document order with its position.
//!
//! The builder is iterative with a nesting limit, and aliases are expanded under a node budget,
//! so hostile input (deep nesting, "billion laughs") yields an error instead of a stack
//! overflow or memory blow-up.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;

/// Where a node starts: which source (0 = the user's file, others = templates), 1-based line and
/// column (in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub src: u8,
    pub line: usize,
    pub col: usize,
}

#[derive(Clone, Debug)]
pub(crate) enum Value {
    /// Text of a scalar; `plain` is false for quoted and block scalars (always strings).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in document order, duplicate keys included.
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: Value,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The scalar text, whatever its style.
    pub fn scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// A plain (unquoted) scalar's text: numbers and booleans are only read from these.
    pub fn plain(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, plain: true } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// "a number", "a list", ... for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        if self.is_null() {
            return "nothing";
        }
        match &self.value {
            Value::Scalar { text, plain: true } => {
                let t = text.as_str();
                if matches!(t, "true" | "false" | "True" | "False" | "TRUE" | "FALSE") {
                    "a boolean"
                } else if looks_numeric(t) {
                    "a number"
                } else {
                    "a string"
                }
            }
            Value::Scalar { .. } => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

fn looks_numeric(t: &str) -> bool {
    let t = t.strip_prefix(['-', '+']).unwrap_or(t);
    !t.is_empty()
        && t.chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '.')
        && t.parse::<f64>().is_ok()
        || matches!(t, ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN")
}

/// A YAML syntax problem (or a resource limit hit while loading).
#[derive(Debug)]
pub(crate) struct LoadError {
    pub pos: Pos,
    pub message: String,
}

const MAX_DEPTH: usize = 64;
const MAX_NODES: usize = 100_000;

enum Frame {
    Seq(Pos, Vec<Node>, usize),
    Map(Pos, Vec<(Node, Node)>, Option<Node>, usize),
}

fn pos_of(src: u8, span: &Span) -> Pos {
    Pos {
        src,
        line: span.start.line().max(1),
        col: span.start.col() + 1,
    }
}

fn count(n: &Node) -> usize {
    match &n.value {
        Value::Scalar { .. } => 1,
        Value::Seq(v) => 1 + v.iter().map(count).sum::<usize>(),
        Value::Map(v) => 1 + v.iter().map(|(k, v)| count(k) + count(v)).sum::<usize>(),
    }
}

/// Load one YAML document. `Ok(None)` for an empty stream (or only comments).
pub(crate) fn load(text: &str, src: u8) -> Result<Option<Node>, LoadError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut docs = 0usize;
    let mut nodes = 0usize;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| LoadError {
            pos: Pos {
                src,
                line: e.marker().line().max(1),
                col: e.marker().col() + 1,
            },
            message: format!("YAML syntax error: {}", e.info()),
        })?;
        let pos = pos_of(src, &span);
        let done: Node = match event {
            Event::DocumentStart(_) => {
                docs += 1;
                if docs > 1 {
                    return Err(LoadError {
                        pos,
                        message:
                            "only one YAML document is allowed per file (found a second `---`)"
                                .to_owned(),
                    });
                }
                continue;
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {
                continue;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(LoadError {
                        pos,
                        message: format!("nesting deeper than {MAX_DEPTH} levels"),
                    });
                }
                if matches!(event, Event::SequenceStart(..)) {
                    stack.push(Frame::Seq(pos, Vec::new(), anchor));
                } else {
                    stack.push(Frame::Map(pos, Vec::new(), None, anchor));
                }
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq(p, items, a)) => (
                        Node {
                            pos: p,
                            value: Value::Seq(items),
                        },
                        a,
                    ),
                    Some(Frame::Map(p, entries, _, a)) => (
                        Node {
                            pos: p,
                            value: Value::Map(entries),
                        },
                        a,
                    ),
                    None => continue,
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::Scalar(text, style, anchor, tag) => {
                let string_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let node = Node {
                    pos,
                    value: Value::Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain && !string_tag,
                    },
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::Alias(id) => {
                let Some(found) = anchors.get(&id) else {
                    return Err(LoadError {
                        pos,
                        message: "alias to an unknown anchor".to_owned(),
                    });
                };
                nodes += count(found);
                if nodes > MAX_NODES {
                    return Err(LoadError {
                        pos,
                        message: format!("document expands to more than {MAX_NODES} nodes"),
                    });
                }
                let mut n = found.clone();
                n.pos = pos;
                n
            }
        };
        nodes += 1;
        if nodes > MAX_NODES {
            return Err(LoadError {
                pos,
                message: format!("document has more than {MAX_NODES} nodes"),
            });
        }
        match stack.last_mut() {
            Some(Frame::Seq(_, items, _)) => items.push(done),
            Some(Frame::Map(_, entries, pending, _)) => match pending.take() {
                None => *pending = Some(done),
                Some(key) => entries.push((key, done)),
            },
            None => root = Some(done),
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keeps_duplicates_and_positions() {
        let n = load("a: 1\nb:\n  - x\na: 2\n", 0).unwrap().unwrap();
        let Value::Map(entries) = &n.value else {
            panic!("not a map")
        };
        assert_eq!(entries.len(), 3);
        assert_eq!((entries[2].0.pos.line, entries[2].0.pos.col), (4, 1));
        assert_eq!((entries[2].1.pos.line, entries[2].1.pos.col), (4, 4));
        let Value::Seq(items) = &entries[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!((items[0].pos.line, items[0].pos.col), (3, 5));
    }

    #[test]
    fn empty_and_limits() {
        assert!(load("", 0).unwrap().is_none());
        assert!(load("# only a comment\n", 0).unwrap().is_none());
        assert!(load(&"[".repeat(1000), 0).is_err());
        let laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
        assert!(load(laughs, 0).is_err());
    }
}
