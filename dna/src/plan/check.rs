//! The placement verifier: the hard rules any plan must obey, whoever computed it.

use super::model::{
    DIMS, Res, add_res, fits, fmt_res, matches, node_index, resolve_nodes, resolve_roles,
};
use swarm_core::spec::{ColonySpec, NodeRecord};
use swarm_core::wire::Assignment;

/// Verify `assignments` against `spec` and `nodes`: every assignment names a known role and a
/// known node, its replica index is in range, the node matches its needs (or its fallback when
/// marked so), no (role, replica) appears twice, no node is over-committed in CPU, memory,
/// disk or GPUs, anti-affinity holds, and a global role has at most one replica per node.
/// Returns the first violation found, as a sentence.
pub fn check(
    spec: &ColonySpec,
    nodes: &[NodeRecord],
    assignments: &[Assignment],
) -> Result<(), String> {
    let nodes = resolve_nodes(nodes);
    let roles = resolve_roles(spec);
    let mut used: Vec<Res> = vec![[0; DIMS]; nodes.len()];
    // (node, role, replica) for every assignment.
    let mut placed: Vec<(usize, u32, u32)> = Vec::with_capacity(assignments.len());
    let mut keys: Vec<(u32, u32)> = Vec::with_capacity(assignments.len());
    for a in assignments {
        let who = format!("{}/{}", a.role, a.replica);
        let Some(&r) = roles.by_name.get(a.role.as_str()) else {
            return Err(format!("{who}: no such role in the spec"));
        };
        let role = &roles.list[r as usize];
        let Some(n) = node_index(&nodes, a.node) else {
            return Err(format!("{who}: on unknown node {}", a.node));
        };
        if !role.global && a.replica >= role.count {
            return Err(format!(
                "{who}: replica index out of range (role wants {})",
                role.count
            ));
        }
        let Some((needs, res)) = role.mode(a.fallback) else {
            return Err(format!(
                "{who}: marked fallback but the role has no fallback"
            ));
        };
        if !matches(needs, &res, &nodes[n]) {
            return Err(format!(
                "{who}: node {} does not match its {} (arch, labels or size)",
                a.node,
                if a.fallback { "fallback" } else { "needs" }
            ));
        }
        add_res(&mut used[n], &res);
        placed.push((n, r, a.replica));
        keys.push((r, a.replica));
    }
    keys.sort_unstable();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        let name = roles.list[w[0].0 as usize].name();
        return Err(format!("{name}/{}: assigned twice", w[0].1));
    }
    for (n, u) in used.iter().enumerate() {
        if !fits(&nodes[n].cap, &[0; DIMS], u) {
            return Err(format!(
                "node {} over-committed: {} placed, {} offered",
                nodes[n].id,
                fmt_res(u),
                fmt_res(&nodes[n].cap)
            ));
        }
    }
    placed.sort_unstable();
    // Per node, the roles on it with their replica counts.
    let mut i = 0;
    while i < placed.len() {
        let n = placed[i].0;
        let mut on_node: Vec<(u32, u32)> = Vec::new();
        while i < placed.len() && placed[i].0 == n {
            let r = placed[i].1;
            match on_node.last_mut() {
                Some(last) if last.0 == r => last.1 += 1,
                _ => on_node.push((r, 1)),
            }
            i += 1;
        }
        for &(r, k) in &on_node {
            let role = &roles.list[r as usize];
            if role.global && k > 1 {
                return Err(format!(
                    "global role {} has {k} replicas on node {}",
                    role.name(),
                    nodes[n].id
                ));
            }
            for &c in &role.conflicts {
                let clash = if c == r {
                    k > 1
                } else {
                    on_node.binary_search_by_key(&c, |e| e.0).is_ok()
                };
                if clash {
                    return Err(format!(
                        "anti-affinity: {} and {} share node {}",
                        role.name(),
                        roles.list[c as usize].name(),
                        nodes[n].id
                    ));
                }
            }
        }
    }
    Ok(())
}
