//! Static feasibility against a concrete node list: requests no node could ever satisfy, even
//! when empty (more GPUs than any node has, an arch or label nobody carries, or a combination no
//! single node offers). Capacity already used by other roles is the planner's business.

use super::diag::Diags;
use super::quantity::{fmt_cpu, fmt_mib};
use super::resolve::{NeedsPos, RoleInfo};
use super::yaml::Pos;
use swarm_core::caps::same_arch;
use swarm_core::spec::{ColonySpec, Needs, NodeRecord};

pub(crate) fn check(d: &mut Diags, spec: &ColonySpec, info: &[RoleInfo], nodes: &[NodeRecord]) {
    for (role, ri) in spec.roles.iter().zip(info) {
        let who = format!("role `{}`", role.name);
        let Some((pos, msg)) = impossible(&role.needs, &ri.needs, ri.name_pos, nodes, &who) else {
            continue;
        };
        match &role.fallback {
            None => d.err(pos, msg),
            Some(fb) => {
                let at = ri.fallback.at.unwrap_or(ri.name_pos);
                if let Some((_, fmsg)) = impossible(fb, &ri.fallback, at, nodes, "its fallback") {
                    d.err(pos, format!("{msg}; {fmsg}"));
                }
            }
        }
    }
}

/// Why `needs` fits no node, at the most specific position, or `None` if some node fits.
fn impossible(
    needs: &Needs,
    pos: &NeedsPos,
    role_pos: Pos,
    nodes: &[NodeRecord],
    who: &str,
) -> Option<(Pos, String)> {
    let at = pos.at.unwrap_or(role_pos);
    if nodes.is_empty() {
        return Some((at, format!("{who} cannot run: the nodes list is empty")));
    }
    if nodes.iter().any(|n| shortfalls(needs, n).is_empty()) {
        return None;
    }
    // One dimension no node satisfies on its own: point at that entry.
    let biggest = |f: &dyn Fn(&NodeRecord) -> u64| {
        nodes
            .iter()
            .max_by_key(|n| (f(n), std::cmp::Reverse(n.node.0)))
            .map(|n| (f(n), n.node.0))
            .unwrap_or((0, 0))
    };
    let (max, id) = biggest(&|n| u64::from(n.caps.gpus));
    if u64::from(needs.gpus) > max {
        return Some((
            pos.gpus.unwrap_or(at),
            format!(
                "{who} needs {} GPU{} but the largest node has {max} (node {id})",
                needs.gpus,
                if needs.gpus == 1 { "" } else { "s" }
            ),
        ));
    }
    if !needs.arch.is_empty() && !nodes.iter().any(|n| arch_ok(needs, &n.caps.arch)) {
        let mut have: Vec<&str> = nodes.iter().map(|n| n.caps.arch.as_str()).collect();
        have.sort_unstable();
        have.dedup();
        return Some((
            pos.arch.unwrap_or(at),
            format!(
                "{who} needs arch {} but no node has it (nodes are {})",
                needs.arch.join(" or "),
                have.join(", ")
            ),
        ));
    }
    for (k, v) in &needs.labels {
        if !nodes.iter().any(|n| n.caps.labels.get(k) == Some(v)) {
            let mut seen: Vec<String> = nodes
                .iter()
                .filter_map(|n| n.caps.labels.get(k).map(|x| format!("{k}={x}")))
                .collect();
            seen.sort_unstable();
            seen.dedup();
            let have = if seen.is_empty() {
                format!("no node has a `{k}` label")
            } else {
                format!("nodes have {}", seen.join(", "))
            };
            return Some((
                pos.labels.get(k).copied().unwrap_or(at),
                format!("{who} needs label {k}={v} but no node carries it ({have})"),
            ));
        }
    }
    let (max, id) = biggest(&|n| u64::from(n.caps.cpu_millis));
    if u64::from(needs.cpu_millis) > max {
        return Some((
            pos.cpu.unwrap_or(at),
            format!(
                "{who} needs cpu {} but the largest node has {} (node {id})",
                fmt_cpu(needs.cpu_millis),
                fmt_cpu(u32::try_from(max).unwrap_or(u32::MAX))
            ),
        ));
    }
    let (max, id) = biggest(&|n| n.caps.memory_mib);
    if needs.memory_mib > max {
        return Some((
            pos.memory.unwrap_or(at),
            format!(
                "{who} needs memory {} but the largest node has {} (node {id})",
                fmt_mib(needs.memory_mib),
                fmt_mib(max)
            ),
        ));
    }
    let (max, id) = biggest(&|n| n.caps.disk_mib);
    if needs.disk_mib > max {
        return Some((
            pos.disk.unwrap_or(at),
            format!(
                "{who} needs disk {} but the largest node has {} (node {id})",
                fmt_mib(needs.disk_mib),
                fmt_mib(max)
            ),
        ));
    }
    // Each part fits somewhere, but never all on one node: name the closest node.
    let best = nodes
        .iter()
        .min_by_key(|n| (shortfalls(needs, n).len(), n.node.0))?;
    Some((
        at,
        format!(
            "{who} needs more than any single node offers; the closest is node {} (short of {})",
            best.node.0,
            shortfalls(needs, best).join(", ")
        ),
    ))
}

/// Does a node of arch `have` satisfy `needs.arch` (empty: any), aliases resolved?
fn arch_ok(needs: &Needs, have: &str) -> bool {
    needs.arch.is_empty() || needs.arch.iter().any(|a| same_arch(a, have))
}

fn shortfalls(needs: &Needs, n: &NodeRecord) -> Vec<String> {
    let c = &n.caps;
    let mut out = Vec::new();
    if needs.cpu_millis > c.cpu_millis {
        out.push(format!("cpu: has {}", fmt_cpu(c.cpu_millis)));
    }
    if needs.memory_mib > c.memory_mib {
        out.push(format!("memory: has {}", fmt_mib(c.memory_mib)));
    }
    if needs.disk_mib > c.disk_mib {
        out.push(format!("disk: has {}", fmt_mib(c.disk_mib)));
    }
    if needs.gpus > c.gpus {
        out.push(format!("gpus: has {}", c.gpus));
    }
    if !arch_ok(needs, &c.arch) {
        out.push(format!("arch: is {}", c.arch));
    }
    for (k, v) in &needs.labels {
        if c.labels.get(k) != Some(v) {
            out.push(format!("label {k}={v}"));
        }
    }
    out
}
