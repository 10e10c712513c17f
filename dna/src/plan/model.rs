//! The planner's resolved inputs, shared by [`super::plan`] and [`super::check`]: nodes sorted
//! and deduplicated, roles indexed with symmetric anti-affinity, resources as integer vectors,
//! published host ports as per-node keys, and the static matching and fitting rules.

use std::collections::BTreeMap;
use swarm_core::NodeId;
use swarm_core::caps::canonical_arch;
use swarm_core::spec::{ColonySpec, Count, Needs, NodeRecord, Protocol, RoleSpec};

/// The most replicas the planner materialises for one role; a larger count is clamped and the
/// excess reported as one unplaced entry (a spec validator should reject such counts first).
pub const MAX_REPLICAS_PER_ROLE: u32 = 1_000_000;

/// Resource dimensions, in this order: CPU millicores, memory MiB, disk MiB, GPUs.
pub(crate) const DIMS: usize = 4;
pub(crate) type Res = [u64; DIMS];

/// Parts per million: the integer scale of utilisation scores.
pub(crate) const PPM: u64 = 1_000_000;

pub(crate) fn needs_res(n: &Needs) -> Res {
    [
        u64::from(n.cpu_millis),
        n.memory_mib,
        n.disk_mib,
        u64::from(n.gpus),
    ]
}

/// Does `need` fit on top of `used` within `cap`, in every dimension?
pub(crate) fn fits(cap: &Res, used: &Res, need: &Res) -> bool {
    (0..DIMS).all(|i| used[i].saturating_add(need[i]) <= cap[i])
}

pub(crate) fn add_res(a: &mut Res, b: &Res) {
    for i in 0..DIMS {
        a[i] = a[i].saturating_add(b[i]);
    }
}

pub(crate) fn sub_res(a: &mut Res, b: &Res) {
    for i in 0..DIMS {
        a[i] = a[i].saturating_sub(b[i]);
    }
}

/// Utilisation of a node once `need` is added to `used`: the fullest dimension, in ppm.
/// Dimensions the node does not offer (capacity 0) are ignored.
pub(crate) fn util_after(cap: &Res, used: &Res, need: &Res) -> u64 {
    let mut worst = 0u64;
    for i in 0..DIMS {
        if cap[i] == 0 {
            continue;
        }
        let after = u128::from(used[i].saturating_add(need[i]));
        let ppm = after * u128::from(PPM) / u128::from(cap[i]);
        worst = worst.max(u64::try_from(ppm).unwrap_or(u64::MAX));
    }
    worst
}

/// "500 mCPU, 1024 MiB memory, 2 GPUs": the non-zero parts of a need.
pub(crate) fn fmt_res(r: &Res) -> String {
    let mut parts = Vec::new();
    if r[0] > 0 {
        parts.push(format!("{} mCPU", r[0]));
    }
    if r[1] > 0 {
        parts.push(format!("{} MiB memory", r[1]));
    }
    if r[2] > 0 {
        parts.push(format!("{} MiB disk", r[2]));
    }
    if r[3] > 0 {
        parts.push(format!("{} GPUs", r[3]));
    }
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join(", ")
    }
}

/// A published host port with its protocol, as one sortable number: `port << 1 | udp`. Host
/// ports are a per-node resource: two replicas publishing the same one cannot share a node.
pub(crate) type PortKey = u32;

pub(crate) fn port_key(port: u16, protocol: Protocol) -> PortKey {
    (u32::from(port) << 1) | u32::from(protocol == Protocol::Udp)
}

/// "80/tcp".
pub(crate) fn fmt_port(key: PortKey) -> String {
    let proto = if key & 1 == 1 { "udp" } else { "tcp" };
    format!("{}/{proto}", key >> 1)
}

/// The host ports a role publishes, sorted and deduplicated.
fn host_ports(spec: &RoleSpec) -> Vec<PortKey> {
    let mut v: Vec<PortKey> = spec
        .workload
        .ports
        .iter()
        .filter_map(|p| p.host.map(|h| port_key(h, p.protocol)))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Do two sorted port lists share a port?
pub(crate) fn ports_overlap(a: &[PortKey], b: &[PortKey]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// A node as the planner sees it.
pub(crate) struct Node<'a> {
    pub id: NodeId,
    pub cap: Res,
    /// In its Docker/OCI spelling when it has one.
    pub arch: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Nodes sorted by id; of duplicate ids the first in input order wins.
pub(crate) fn resolve_nodes(nodes: &[NodeRecord]) -> Vec<Node<'_>> {
    let mut v: Vec<Node<'_>> = nodes
        .iter()
        .map(|n| Node {
            id: n.node,
            cap: [
                u64::from(n.caps.cpu_millis),
                n.caps.memory_mib,
                n.caps.disk_mib,
                u64::from(n.caps.gpus),
            ],
            arch: canonical_arch(&n.caps.arch).unwrap_or(&n.caps.arch),
            labels: &n.caps.labels,
        })
        .collect();
    v.sort_by_key(|n| n.id); // stable: the first duplicate stays first
    v.dedup_by_key(|n| n.id);
    v
}

/// The index of `id` in nodes resolved by [`resolve_nodes`].
pub(crate) fn node_index(nodes: &[Node<'_>], id: NodeId) -> Option<usize> {
    nodes.binary_search_by_key(&id, |n| n.id).ok()
}

/// Arch names compare in their Docker/OCI spelling (node archs are canonical already).
fn arch_ok(needs: &Needs, node: &Node<'_>) -> bool {
    needs.arch.is_empty()
        || needs
            .arch
            .iter()
            .any(|a| canonical_arch(a).unwrap_or(a) == node.arch)
}

fn labels_ok(needs: &Needs, node: &Node<'_>) -> bool {
    needs
        .labels
        .iter()
        .all(|(k, v)| node.labels.get(k).is_some_and(|have| have == v))
}

/// Static match: arch, labels, and total capacity when the node is empty.
pub(crate) fn matches(needs: &Needs, res: &Res, node: &Node<'_>) -> bool {
    fits(&node.cap, &[0; DIMS], res) && arch_ok(needs, node) && labels_ok(needs, node)
}

/// Why no node matches `needs` at all, e.g. "needs 3 GPUs; largest node has 2".
pub(crate) fn explain_no_match(needs: &Needs, nodes: &[Node<'_>]) -> String {
    if nodes.is_empty() {
        return "there are no nodes".to_owned();
    }
    let by_arch: Vec<&Node<'_>> = nodes.iter().filter(|n| arch_ok(needs, n)).collect();
    if by_arch.is_empty() {
        let mut have: Vec<&str> = nodes.iter().map(|n| n.arch).collect();
        have.sort_unstable();
        have.dedup();
        let want: Vec<&str> = needs
            .arch
            .iter()
            .map(|a| canonical_arch(a).unwrap_or(a))
            .collect();
        return format!(
            "needs arch {}; nodes have {}",
            want.join(" or "),
            have.join(", ")
        );
    }
    let by_label: Vec<&Node<'_>> = by_arch
        .into_iter()
        .filter(|n| labels_ok(needs, n))
        .collect();
    if by_label.is_empty() {
        let want: Vec<String> = needs
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        return format!("no node of a matching arch has labels {}", want.join(", "));
    }
    let res = needs_res(needs);
    const UNITS: [&str; DIMS] = ["mCPU", "MiB memory", "MiB disk", "GPUs"];
    for (i, unit) in UNITS.iter().enumerate() {
        let largest = by_label.iter().map(|n| n.cap[i]).max().unwrap_or(0);
        if largest < res[i] {
            return format!("needs {} {unit}; largest node has {largest}", res[i]);
        }
    }
    format!("no single node has {} at once", fmt_res(&res))
}

/// A role as the planner sees it.
pub(crate) struct Role<'a> {
    pub spec: &'a RoleSpec,
    pub needs: Res,
    pub fallback: Option<Res>,
    /// Roles it may not share a node with, itself included when it names itself. Sorted.
    pub conflicts: Vec<u32>,
    /// Roles it prefers to share a node with. Sorted.
    pub affinity: Vec<u32>,
    /// Host ports it publishes (the same in both modes: the workload does not change).
    pub ports: Vec<PortKey>,
    pub global: bool,
    /// Replica count for `Replicas`, clamped to [`MAX_REPLICAS_PER_ROLE`].
    pub count: u32,
    /// Position in the (name-sorted) output order.
    pub rank: u32,
}

impl<'a> Role<'a> {
    /// GPUs one replica reserves in a mode.
    pub fn gpus(&self, fallback: bool) -> u64 {
        self.mode(fallback).map_or(0, |(_, res)| res[3])
    }

    /// The needs of one mode: primary (`fallback == false`) or fallback.
    pub fn mode(&self, fallback: bool) -> Option<(&'a Needs, Res)> {
        if fallback {
            let spec: &'a RoleSpec = self.spec;
            match (&spec.fallback, self.fallback) {
                (Some(n), Some(r)) => Some((n, r)),
                _ => None,
            }
        } else {
            Some((&self.spec.needs, self.needs))
        }
    }

    pub fn priority(&self) -> i32 {
        self.spec.priority
    }

    pub fn name(&self) -> &'a str {
        &self.spec.name
    }
}

pub(crate) struct Roles<'a> {
    pub list: Vec<Role<'a>>,
    pub by_name: BTreeMap<&'a str, u32>,
    /// Placement order: priority descending, then declaration order.
    pub order: Vec<u32>,
    /// Role index by output rank.
    pub by_rank: Vec<u32>,
}

/// Index the roles of `spec`. Of duplicate names the first declared wins; names in affinity
/// lists that match no role are ignored.
pub(crate) fn resolve_roles(spec: &ColonySpec) -> Roles<'_> {
    let mut by_name: BTreeMap<&str, u32> = BTreeMap::new();
    let mut specs: Vec<&RoleSpec> = Vec::new();
    for r in &spec.roles {
        if !by_name.contains_key(r.name.as_str()) {
            let idx = u32::try_from(specs.len()).unwrap_or(u32::MAX);
            by_name.insert(&r.name, idx);
            specs.push(r);
        }
    }
    let lookup = |names: &[String]| -> Vec<u32> {
        let mut v: Vec<u32> = names
            .iter()
            .filter_map(|n| by_name.get(n.as_str()).copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let mut conflicts: Vec<Vec<u32>> = specs.iter().map(|s| lookup(&s.anti_affinity)).collect();
    // Make anti-affinity symmetric.
    for i in 0..conflicts.len() {
        for j in conflicts[i].clone() {
            let Ok(iu) = u32::try_from(i) else { continue };
            if let Some(other) = conflicts.get_mut(j as usize) {
                if let Err(pos) = other.binary_search(&iu) {
                    other.insert(pos, iu);
                }
            }
        }
    }
    let mut list: Vec<Role<'_>> = specs
        .iter()
        .zip(conflicts)
        .map(|(s, conflicts)| Role {
            spec: s,
            needs: needs_res(&s.needs),
            fallback: s.fallback.as_ref().map(needs_res),
            conflicts,
            affinity: lookup(&s.affinity),
            ports: host_ports(s),
            global: matches!(s.count, Count::Global),
            count: match s.count {
                Count::Replicas(n) => n.min(MAX_REPLICAS_PER_ROLE),
                Count::Global => 0,
            },
            rank: 0,
        })
        .collect();
    // by_name iterates in name order: that is the output rank.
    let by_rank: Vec<u32> = by_name.values().copied().collect();
    for (rank, &r) in by_rank.iter().enumerate() {
        if let Some(role) = list.get_mut(r as usize) {
            role.rank = u32::try_from(rank).unwrap_or(u32::MAX);
        }
    }
    let mut order: Vec<u32> = (0..u32::try_from(list.len()).unwrap_or(u32::MAX)).collect();
    order.sort_by_key(|&r| (std::cmp::Reverse(list[r as usize].priority()), r));
    Roles {
        list,
        by_name,
        order,
        by_rank,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_core::Capabilities;

    fn record(id: u64, cpu: u32, arch: &str) -> NodeRecord {
        NodeRecord {
            node: NodeId(id),
            caps: Capabilities {
                cpu_millis: cpu,
                arch: arch.to_owned(),
                ..Capabilities::default()
            },
            ip: None,
        }
    }

    fn role(name: &str, anti: &[&str], priority: i32) -> RoleSpec {
        RoleSpec {
            anti_affinity: anti.iter().map(|s| (*s).to_owned()).collect(),
            priority,
            ..RoleSpec::new(name, Count::Replicas(2))
        }
    }

    #[test]
    fn utilisation_is_the_fullest_dimension_in_ppm() {
        let cap = [4000, 8192, 0, 2];
        assert_eq!(
            util_after(&cap, &[1000, 0, 0, 0], &[1000, 2048, 0, 0]),
            500_000
        );
        assert_eq!(util_after(&cap, &[0; DIMS], &[0, 0, 0, 1]), 500_000);
        // A dimension the node lacks does not count; no overflow at the extremes.
        assert_eq!(util_after(&[0; DIMS], &[0; DIMS], &[5, 5, 5, 5]), 0);
        assert_eq!(
            util_after(&[1, 1, 1, 1], &[u64::MAX; DIMS], &[u64::MAX; DIMS]),
            u64::MAX
        );
    }

    #[test]
    fn fits_saturates_instead_of_overflowing() {
        assert!(fits(&[10; DIMS], &[5; DIMS], &[5; DIMS]));
        assert!(!fits(&[10; DIMS], &[5, 5, 5, 6], &[5; DIMS]));
        assert!(!fits(&[u64::MAX - 1; DIMS], &[u64::MAX; DIMS], &[1; DIMS]));
    }

    #[test]
    fn nodes_are_sorted_and_the_first_duplicate_wins() {
        let input = [record(3, 1, "a"), record(1, 2, "a"), record(3, 3, "a")];
        let nodes = resolve_nodes(&input);
        let seen: Vec<(u64, u64)> = nodes.iter().map(|n| (n.id.0, n.cap[0])).collect();
        assert_eq!(seen, vec![(1, 2), (3, 1)]);
        assert_eq!(node_index(&nodes, NodeId(3)), Some(1));
        assert_eq!(node_index(&nodes, NodeId(2)), None);
    }

    #[test]
    fn roles_get_symmetric_conflicts_ranks_and_priority_order() {
        let spec = ColonySpec {
            name: "c".to_owned(),
            roles: vec![
                role("web", &["db", "ghost"], 0),
                role("db", &["db"], 5),
                role("web", &[], 9), // duplicate: ignored
                role("cache", &[], 5),
            ],
        };
        let roles = resolve_roles(&spec);
        assert_eq!(roles.list.len(), 3);
        assert_eq!(roles.list[0].conflicts, vec![1]); // web: db (ghost ignored)
        assert_eq!(roles.list[1].conflicts, vec![0, 1]); // db: web (symmetric), itself
        assert!(roles.list[2].conflicts.is_empty());
        // db and cache tie on priority 5: declaration order; web last.
        assert_eq!(roles.order, vec![1, 2, 0]);
        // Output ranks follow names: cache, db, web.
        assert_eq!(roles.by_rank, vec![2, 1, 0]);
        assert_eq!(roles.list[0].rank, 2);
    }

    #[test]
    fn explanations_name_the_first_missing_thing() {
        let input = [record(1, 2000, "x86_64"), record(2, 4000, "x86_64")];
        let nodes = resolve_nodes(&input);
        let mut needs = Needs {
            cpu_millis: 8000,
            ..Needs::default()
        };
        assert_eq!(
            explain_no_match(&needs, &nodes),
            "needs 8000 mCPU; largest node has 4000"
        );
        needs.arch = vec!["aarch64".to_owned(), "riscv64".to_owned()];
        assert_eq!(
            explain_no_match(&needs, &nodes),
            "needs arch arm64 or riscv64; nodes have amd64"
        );
        assert_eq!(explain_no_match(&needs, &[]), "there are no nodes");
    }
}
