//! The nodes file: a YAML list of `{id, cpu, memory, disk, gpus, arch, labels}`, turned into
//! [`NodeRecord`]s sorted by id, so specs can be checked against a known set of machines.

use super::diag::{Diags, check_arch, fields, free_map, text, uint};
use super::resolve::{cpu, size};
use super::yaml::{Node, Pos, Value};
use std::collections::BTreeMap;
use swarm_core::Capabilities;
use swarm_core::NodeId;
use swarm_core::spec::NodeRecord;

const NODE_KEYS: &[&str] = &["id", "cpu", "memory", "disk", "gpus", "arch", "labels"];

pub(crate) fn nodes(d: &mut Diags, root: Option<&Node>) -> Vec<NodeRecord> {
    let Some(root) = root else {
        d.err(
            Pos {
                src: 0,
                line: 1,
                col: 1,
            },
            "the nodes file is empty; it needs a list like `- {id: 1, cpu: 8, memory: 32Gi}`",
        );
        return Vec::new();
    };
    let Value::Seq(items) = &root.value else {
        d.err(
            root.pos,
            format!(
                "expected a list of nodes (`- {{id: 1, cpu: 8, memory: 32Gi}}`), found {}",
                root.kind()
            ),
        );
        return Vec::new();
    };
    let mut out: Vec<NodeRecord> = Vec::new();
    let mut ids: BTreeMap<u64, usize> = BTreeMap::new();
    for item in items {
        let Some(f) = fields(d, item, NODE_KEYS, "a node") else {
            continue;
        };
        let mut caps = Capabilities {
            cpu_millis: 0,
            memory_mib: 0,
            disk_mib: 0,
            gpus: 0,
            arch: "amd64".to_owned(),
            labels: BTreeMap::new(),
        };
        let mut ok = true;
        let id = match f.get("id") {
            None => {
                d.err(item.pos, "a node needs `id:` (a positive whole number)");
                None
            }
            Some(n) => match uint(d, n, "id", u64::MAX) {
                Some(0) => {
                    d.err(n.pos, "node id must be positive (1 or more)");
                    None
                }
                Some(v) => {
                    if let Some(line) = ids.get(&v) {
                        d.err(
                            n.pos,
                            format!("duplicate node id {v} (first given at line {line})"),
                        );
                        None
                    } else {
                        ids.insert(v, n.pos.line);
                        Some(v)
                    }
                }
                None => None,
            },
        };
        match f.get("cpu") {
            None => {
                d.err(item.pos, "a node needs `cpu:` (e.g. `cpu: 8`)");
                ok = false;
            }
            Some(n) => match cpu(d, n) {
                Some(v) => caps.cpu_millis = v,
                None => ok = false,
            },
        }
        match f.get("memory") {
            None => {
                d.err(item.pos, "a node needs `memory:` (e.g. `memory: 32Gi`)");
                ok = false;
            }
            Some(n) => match size(d, n, "memory") {
                Some(v) => caps.memory_mib = v,
                None => ok = false,
            },
        }
        if let Some(n) = f.get("disk") {
            match size(d, n, "disk") {
                Some(v) => caps.disk_mib = v,
                None => ok = false,
            }
        }
        if let Some(n) = f.get("gpus") {
            match uint(d, n, "gpus", u64::from(u16::MAX)) {
                Some(v) => caps.gpus = u16::try_from(v).unwrap_or(0),
                None => ok = false,
            }
        }
        if let Some(n) = f.get("arch") {
            match text(d, n, "an architecture like `amd64`").and_then(|a| check_arch(d, a, n.pos)) {
                Some(a) => caps.arch = a.to_owned(),
                None => ok = false,
            }
        }
        if let Some(n) = f.get("labels") {
            for (k, _, v) in
                free_map(d, n, "labels", "a mapping of label names to values").unwrap_or_default()
            {
                match text(d, v, "a label value") {
                    Some(t) => {
                        caps.labels.insert(k.to_owned(), t.to_owned());
                    }
                    None => ok = false,
                }
            }
        }
        if let (Some(id), true) = (id, ok) {
            out.push(NodeRecord {
                node: NodeId(id),
                caps,
                ip: None,
            });
        }
    }
    out.sort_by_key(|n| n.node.0);
    out
}
