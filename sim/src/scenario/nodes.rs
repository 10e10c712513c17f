//! Node lists: an index, a range string (`0..50`, `0..=49`), a list of those, or a keyword
//! (`queen`, `crashed`); partition groups, where a node may be in only one group; one node
//! (`Who`: an index or `queen`).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};

use super::errors::{closest, quote};
use super::{MAX_NODES, Who};

/// Parses `"5"`, `"0..50"` (exclusive) or `"0..=49"` (inclusive) into a
/// half-open range of node indices.
pub(super) fn parse_node_spec(s: &str) -> Result<Range<usize>, String> {
    const HINT: &str = "ranges look like `0..50` or `0..=49`";
    let text = s.trim();
    let index = |part: &str| -> Result<usize, String> {
        let part = part.trim();
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(if part.is_empty() {
                format!(
                    "invalid node range {}: it needs a start and an end ({HINT})",
                    quote(text)
                )
            } else {
                format!(
                    "invalid node range {}: {} is not a node index ({HINT})",
                    quote(text),
                    quote(part)
                )
            });
        }
        part.parse::<usize>()
            .map_err(|_| format!("node index {} is too large", quote(part)))
    };
    let range = if let Some((start, end)) = text.split_once("..=") {
        let (start, end) = (index(start)?, index(end)?);
        if start > end {
            return Err(format!(
                "node range {} is empty: the start must not be after the end",
                quote(text)
            ));
        }
        start..end.saturating_add(1)
    } else if let Some((start, end)) = text.split_once("..") {
        let (start, end) = (index(start)?, index(end)?);
        if start >= end {
            return Err(format!(
                "node range {} is empty: the start must be below the end (`..` excludes the end; use `..=` to include it)",
                quote(text)
            ));
        }
        start..end
    } else if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let n = index(text)?;
        n..n.saturating_add(1)
    } else {
        return Err(format!(
            "invalid node {}: expected a node index or a range ({HINT})",
            quote(text)
        ));
    };
    if range.end > MAX_NODES {
        return Err(format!(
            "node index in {} is too large (at most {})",
            quote(text),
            MAX_NODES - 1
        ));
    }
    Ok(range)
}

/// Sorted, deduplicated node indices from a list of ranges.
pub(super) fn expand(mut ranges: Vec<Range<usize>>) -> Vec<usize> {
    ranges.sort_by_key(|r| r.start);
    let mut nodes = Vec::new();
    let mut next = 0;
    for range in ranges {
        let start = range.start.max(next);
        nodes.extend(start..range.end);
        next = next.max(range.end);
    }
    nodes
}

fn single_node<E: de::Error>(v: u64) -> Result<Range<usize>, E> {
    match usize::try_from(v) {
        Ok(n) if n < MAX_NODES => Ok(n..n + 1),
        _ => Err(E::custom(format_args!(
            "node index {v} is too large (at most {})",
            MAX_NODES - 1
        ))),
    }
}

fn negative_node<E: de::Error>(v: i64) -> E {
    E::custom(format_args!("node indices start at 0; {v} is not one"))
}

/// One item of a node list: an index or a range string.
struct NodeItem(Range<usize>);

impl<'de> Deserialize<'de> for NodeItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeItemVisitor)
    }
}

struct NodeItemVisitor;

impl Visitor<'_> for NodeItemVisitor {
    type Value = NodeItem;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a node index or a range such as \"0..50\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NodeItem, E> {
        single_node(v).map(NodeItem)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<NodeItem, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(negative_node(v)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeItem, E> {
        parse_node_spec(v).map(NodeItem).map_err(E::custom)
    }
}

/// What a node list may be besides indices and ranges.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum ListKind {
    /// `crash:` also takes `queen`.
    Crash,
    /// `restart:` also takes `crashed`.
    Restart,
    /// `oneway` `from`/`to`: plain node lists.
    Plain,
    /// A partition group: a list, or a single range string.
    Group,
}

impl ListKind {
    fn keyword(self) -> Option<&'static str> {
        match self {
            ListKind::Crash => Some("queen"),
            ListKind::Restart => Some("crashed"),
            ListKind::Plain | ListKind::Group => None,
        }
    }
}

/// A parsed node list: the keyword, or nodes.
pub(super) enum NodeList {
    Keyword,
    Nodes(Vec<usize>),
}

/// Parses a node list: an index, a range string, a list of those, or the
/// list kind's keyword. For partition groups, `taken` records which group
/// each node is in so a node in two groups is reported at the second group.
pub(super) struct NodeListSeed<'a> {
    pub(super) kind: ListKind,
    pub(super) taken: Option<(&'a mut BTreeMap<usize, usize>, usize)>,
}

impl<'de> DeserializeSeed<'de> for NodeListSeed<'_> {
    type Value = NodeList;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<NodeList, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl NodeListSeed<'_> {
    fn finish<E: de::Error>(self, ranges: Vec<Range<usize>>) -> Result<NodeList, E> {
        let nodes = expand(ranges);
        if let Some((taken, group)) = self.taken {
            for &node in &nodes {
                if let Some(&other) = taken.get(&node) {
                    return Err(E::custom(format_args!(
                        "node {node} is in two partition groups ({other} and {group}); a node can be in only one"
                    )));
                }
            }
            taken.extend(nodes.iter().map(|&n| (n, group)));
        }
        Ok(NodeList::Nodes(nodes))
    }
}

impl<'de> Visitor<'de> for NodeListSeed<'_> {
    type Value = NodeList;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.kind {
            ListKind::Crash => f.write_str(
                "`queen`, a node index, a range such as \"0..50\", or a list of indices and ranges",
            ),
            ListKind::Restart => f.write_str(
                "`crashed`, a node index, a range such as \"0..50\", or a list of indices and ranges",
            ),
            ListKind::Plain => f.write_str(
                "a node index, a range such as \"0..50\", or a list of indices and ranges",
            ),
            ListKind::Group => f.write_str(
                "a partition group: a list of node indices and ranges, or a range such as \"0..50\"",
            ),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NodeList, E> {
        if self.kind == ListKind::Group {
            return Err(E::custom(format_args!(
                "a partition group is a list or a range string; write [{v}] for a group of one node"
            )));
        }
        let range = single_node(v)?;
        self.finish(vec![range])
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<NodeList, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(negative_node(v)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeList, E> {
        if let Some(keyword) = self.kind.keyword() {
            if v == keyword {
                return Ok(NodeList::Keyword);
            }
            let looks_like_nodes =
                v.contains("..") || v.trim().starts_with(|c: char| c.is_ascii_digit());
            if !looks_like_nodes {
                let hint = match closest(v, [keyword]) {
                    Some(k) => format!("did you mean `{k}`?"),
                    None => format!("expected `{keyword}`, a node index, a range or a list"),
                };
                return Err(E::custom(format_args!(
                    "unknown target {}; {hint}",
                    quote(v)
                )));
            }
        }
        if self.kind == ListKind::Group && !v.contains("..") {
            return Err(E::custom(format_args!(
                "a partition group is a list or a range string; write [{}] for a group of one node",
                v.trim()
            )));
        }
        let range = parse_node_spec(v).map_err(E::custom)?;
        self.finish(vec![range])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeList, A::Error> {
        let mut ranges = Vec::new();
        while let Some(NodeItem(range)) = seq.next_element()? {
            ranges.push(range);
        }
        if ranges.is_empty() {
            return Err(de::Error::custom(match self.kind {
                ListKind::Group => {
                    "empty partition group; leave it out (nodes in no group are isolated)"
                }
                _ => "empty node list",
            }));
        }
        self.finish(ranges)
    }
}

/// `partition: [[0, 1, 2], ["3..10"]]` or `partition: ["0..60", "60..100"]`.
pub(super) struct PartitionSeed;

impl<'de> DeserializeSeed<'de> for PartitionSeed {
    type Value = Vec<Vec<usize>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PartitionSeed {
    type Value = Vec<Vec<usize>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of partition groups, e.g. [[0, 1, 2], [\"3..10\"]]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut taken = BTreeMap::new();
        let mut groups = Vec::new();
        loop {
            let seed = NodeListSeed {
                kind: ListKind::Group,
                taken: Some((&mut taken, groups.len())),
            };
            match seq.next_element_seed(seed)? {
                Some(NodeList::Nodes(nodes)) => groups.push(nodes),
                Some(NodeList::Keyword) => {
                    return Err(de::Error::custom("internal error: keyword in a partition"));
                }
                None => break,
            }
        }
        Ok(groups)
    }
}

pub(super) struct Nodes(pub(super) Vec<usize>);

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seed = NodeListSeed {
            kind: ListKind::Plain,
            taken: None,
        };
        match seed.deserialize(deserializer)? {
            NodeList::Nodes(nodes) => Ok(Nodes(nodes)),
            NodeList::Keyword => Err(de::Error::custom("internal error: keyword in a node list")),
        }
    }
}

/// One node: an index or `queen` (skew, pause, load).
impl<'de> Deserialize<'de> for Who {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WhoVisitor)
    }
}

struct WhoVisitor;

impl Visitor<'_> for WhoVisitor {
    type Value = Who;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("one node: `queen` or a node index")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Who, E> {
        single_node(v).map(|r| Who::Node(r.start))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Who, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(negative_node(v)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Who, E> {
        if v == "queen" {
            return Ok(Who::Queen);
        }
        let text = v.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            let range = parse_node_spec(text).map_err(E::custom)?;
            return Ok(Who::Node(range.start));
        }
        if text.contains("..") {
            return Err(E::custom(format_args!(
                "{} is a range, but this takes one node: `queen` or a node index",
                quote(text)
            )));
        }
        let hint = match closest(v, ["queen"]) {
            Some(k) => format!("did you mean `{k}`?"),
            None => "expected `queen` or a node index".to_owned(),
        };
        Err(E::custom(format_args!("unknown node {}; {hint}", quote(v))))
    }
}
