//! Source positions for YAML mapping keys, so warnings about a document can say
//! `FILE:LINE:COL`. serde_norway's values carry no positions, so this walks the parser's event
//! stream once and records where each key path (`services.web.build`) was written.
//!
//! Only keys written literally are indexed; keys that arrive through an alias or a `<<` merge
//! have no position of their own and are simply absent.

use saphyr_parser::{Event, Parser};
use std::collections::HashMap;

/// 1-based line and column of every mapping key and sequence item, by its path from the
/// document root. Sequence items appear in paths as their index.
#[derive(Clone, Debug, Default)]
pub struct KeyPositions {
    keys: HashMap<Vec<String>, (usize, usize)>,
}

enum Frame {
    Mapping {
        path: Vec<String>,
        /// The key whose value comes next, or `None` while a key is expected.
        key: Option<String>,
    },
    Sequence {
        path: Vec<String>,
        index: usize,
    },
}

impl KeyPositions {
    /// Index the first document of `text`. A document the parser rejects yields what was indexed
    /// before the error (the caller reports YAML errors through serde_norway).
    pub fn index(text: &str) -> KeyPositions {
        let mut keys = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let at = (span.start.line(), span.start.col() + 1);
            if let Some(Frame::Sequence { path, index }) = stack.last()
                && matches!(
                    event,
                    Event::Scalar(..)
                        | Event::Alias(_)
                        | Event::MappingStart(..)
                        | Event::SequenceStart(..)
                )
            {
                let mut full = path.clone();
                full.push(index.to_string());
                keys.entry(full).or_insert(at);
            }
            match event {
                Event::DocumentEnd => break,
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Mapping { path, key }) = stack.last_mut()
                        && key.is_none()
                    {
                        let mut full = path.clone();
                        full.push(value.to_string());
                        keys.entry(full).or_insert(at);
                        *key = Some(value.to_string());
                        continue;
                    }
                    value_done(&mut stack);
                }
                Event::Alias(_) => {
                    if let Some(Frame::Mapping {
                        key: key @ None, ..
                    }) = stack.last_mut()
                    {
                        *key = Some(String::new());
                        continue;
                    }
                    value_done(&mut stack);
                }
                Event::MappingStart(..) => {
                    let path = child_path(&mut stack);
                    stack.push(Frame::Mapping { path, key: None });
                }
                Event::SequenceStart(..) => {
                    let path = child_path(&mut stack);
                    stack.push(Frame::Sequence { path, index: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    value_done(&mut stack);
                }
                _ => {}
            }
        }
        KeyPositions { keys }
    }

    /// Where the key at `path` was written.
    pub fn get(&self, path: &[&str]) -> Option<(usize, usize)> {
        let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        self.keys.get(&path).copied()
    }
}

/// The path of a collection that starts now, as a value (or a complex key) of the top frame.
fn child_path(stack: &mut [Frame]) -> Vec<String> {
    match stack.last_mut() {
        None => Vec::new(),
        Some(Frame::Mapping { path, key }) => {
            let mut p = path.clone();
            // A collection used as a key gets a path no lookup will ask for.
            p.push(key.clone().unwrap_or_else(|| "?".to_owned()));
            p
        }
        Some(Frame::Sequence { path, index }) => {
            let mut p = path.clone();
            p.push(index.to_string());
            p
        }
    }
}

/// A value (scalar, alias or whole collection) of the top frame is complete.
fn value_done(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Mapping { key, .. }) => {
            // A collection key completes the key, not the value.
            if key.is_none() {
                *key = Some("?".to_owned());
            } else {
                *key = None;
            }
        }
        Some(Frame::Sequence { index, .. }) => *index += 1,
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_and_flow_keys() {
        let text = "services:\n  web:\n    image: nginx\n    ports: [\"80\"]\n    build: {context: .}\n  db:\n    volumes:\n      - type: volume\n        source: data\n";
        let pos = KeyPositions::index(text);
        assert_eq!(pos.get(&["services"]), Some((1, 1)));
        assert_eq!(pos.get(&["services", "web"]), Some((2, 3)));
        assert_eq!(pos.get(&["services", "web", "build"]), Some((5, 5)));
        assert_eq!(
            pos.get(&["services", "web", "build", "context"]),
            Some((5, 13))
        );
        assert_eq!(
            pos.get(&["services", "db", "volumes", "0", "source"]),
            Some((9, 9))
        );
        assert_eq!(pos.get(&["services", "web", "ports", "0"]), Some((4, 13)));
        assert_eq!(pos.get(&["services", "db", "volumes", "0"]), Some((8, 9)));
        assert_eq!(pos.get(&["services", "nope"]), None);
    }

    #[test]
    fn broken_yaml_does_not_panic() {
        let pos = KeyPositions::index("a: [\nb: }\n");
        assert_eq!(pos.get(&["a"]), Some((1, 1)));
    }
}
