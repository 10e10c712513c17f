//! The placement verifier: the hard rules any plan must obey, whoever computed it.

use super::Exclusions;
use super::model::{
    DIMS, PortKey, Res, add_res, fits, fmt_port, fmt_res, matches, node_index, resolve_nodes,
    resolve_roles,
};
use swarm_core::spec::{ColonySpec, Count, NodeRecord};
use swarm_core::wire::Assignment;

/// [`check`], and the exclusions the plan was made under: no replica on a held node unless its
/// role is held there, none on a node it failed on, none placed while its backoff runs.
pub fn check_excluding(
    spec: &ColonySpec,
    nodes: &[NodeRecord],
    assignments: &[Assignment],
    exclusions: Exclusions<'_>,
) -> Result<(), String> {
    check(spec, nodes, assignments)?;
    for a in assignments {
        let who = format!("{}/{}", a.role, a.replica);
        if let Some(h) = exclusions.held.iter().find(|h| h.node == a.node) {
            if !h.roles.contains(&a.role) {
                return Err(format!(
                    "{who}: placed on node {}, which is down and held only for {}",
                    a.node,
                    if h.roles.is_empty() {
                        "nothing".to_owned()
                    } else {
                        h.roles.join(", ")
                    }
                ));
            }
        }
        let global = spec
            .role(&a.role)
            .is_some_and(|r| matches!(r.count, Count::Global));
        let failure = exclusions
            .failures
            .iter()
            .find(|f| f.role == a.role && f.replica == a.replica);
        if let (Some(f), false) = (failure, global) {
            if f.waiting() {
                return Err(format!("{who}: placed while its failure backoff runs"));
            }
            if f.nodes.contains(&a.node) {
                return Err(format!("{who}: placed on node {}, where it failed", a.node));
            }
        }
    }
    Ok(())
}

/// Verify `assignments` against `spec` and `nodes`: every assignment names a known role and a
/// known node, its replica index is in range, the node matches its needs (or its fallback when
/// marked so), no (role, replica) appears twice, no node is over-committed in CPU, memory,
/// disk or GPUs, no host port (with its protocol) is published twice on a node, every replica
/// holds as many GPU indices as its needs ask for, each below its node's GPU count and none
/// shared on a node, anti-affinity holds, and a global role has at most one replica per node.
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
    // (node, host port, assignment index) and (node, GPU index, assignment index).
    let mut ports: Vec<(usize, PortKey, usize)> = Vec::new();
    let mut gpus: Vec<(usize, u16, usize)> = Vec::new();
    for (ai, a) in assignments.iter().enumerate() {
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
        if a.gpus.len() as u64 != res[3] {
            return Err(format!(
                "{who}: holds {} GPU indices but its {} ask for {}",
                a.gpus.len(),
                if a.fallback { "fallback" } else { "needs" },
                res[3]
            ));
        }
        for &g in &a.gpus {
            if u64::from(g) >= nodes[n].cap[3] {
                return Err(format!(
                    "{who}: GPU index {g} on node {}, which has {} GPUs",
                    a.node, nodes[n].cap[3]
                ));
            }
            gpus.push((n, g, ai));
        }
        ports.extend(role.ports.iter().map(|&k| (n, k, ai)));
        add_res(&mut used[n], &res);
        placed.push((n, r, a.replica));
        keys.push((r, a.replica));
    }
    keys.sort_unstable();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        let name = roles.list[w[0].0 as usize].name();
        return Err(format!("{name}/{}: assigned twice", w[0].1));
    }
    let who = |ai: usize| format!("{}/{}", assignments[ai].role, assignments[ai].replica);
    ports.sort_unstable();
    if let Some(w) = ports
        .windows(2)
        .find(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1))
    {
        return Err(format!(
            "host port {} published twice on node {}: by {} and {}",
            fmt_port(w[0].1),
            nodes[w[0].0].id,
            who(w[0].2),
            who(w[1].2)
        ));
    }
    gpus.sort_unstable();
    if let Some(w) = gpus
        .windows(2)
        .find(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1))
    {
        return Err(format!(
            "GPU {} of node {} handed to both {} and {}",
            w[0].1,
            nodes[w[0].0].id,
            who(w[0].2),
            who(w[1].2)
        ));
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
