//! Where a role can be reached, from committed data alone: any node computes the same list
//! offline from its committed [`ColonyState`].

use swarm_core::spec::Protocol;
use swarm_core::wire::ColonyState;

/// `"ip:port"` (`"[ip]:port"` for IPv6) for every assigned replica of `role` and every host
/// port its workload publishes, sorted and without duplicates. The IP is the one the plan
/// recorded for the replica's node (`NodeRecord::ip`); replicas on a node without a known
/// address, or on a held node (down, waited for), are left out, as are ports not published
/// on the node (a container port alone is not reachable from other nodes). Empty for an
/// unknown role, a role without published ports, or a state without a spec.
pub fn endpoints(state: &ColonyState, role: &str) -> Vec<String> {
    let Some(spec) = state.spec.as_ref().and_then(|s| s.role(role)) else {
        return Vec::new();
    };
    let mut ports: Vec<(u16, Protocol)> = spec
        .workload
        .ports
        .iter()
        .filter_map(|p| p.host.map(|h| (h, p.protocol)))
        .collect();
    ports.sort_unstable_by_key(|(h, p)| (*h, *p == Protocol::Udp));
    ports.dedup_by_key(|(h, _)| *h);
    let mut out = Vec::new();
    for a in state.assignments.iter().filter(|a| a.role == role) {
        if state.held.iter().any(|h| h.node == a.node) {
            continue;
        }
        let ip = state
            .nodes
            .binary_search_by_key(&a.node, |r| r.node)
            .ok()
            .and_then(|i| state.nodes[i].ip);
        let Some(ip) = ip else { continue };
        for (port, _) in &ports {
            out.push(std::net::SocketAddr::new(ip, *port).to_string());
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use swarm_core::spec::{ColonySpec, Count, HeldNode, NodeRecord, Port, RoleSpec};
    use swarm_core::wire::Assignment;
    use swarm_core::{Capabilities, NodeId};

    fn at(role: &str, replica: u32, node: u64) -> Assignment {
        Assignment {
            role: role.to_owned(),
            replica,
            node: NodeId(node),
            fallback: false,
            gpus: Vec::new(),
        }
    }

    fn node(id: u64, ip: Option<IpAddr>) -> NodeRecord {
        NodeRecord {
            ip,
            ..NodeRecord::new(NodeId(id), Capabilities::default())
        }
    }

    #[test]
    fn one_endpoint_per_replica_and_published_port_sorted() {
        let mut web = RoleSpec::new("web", Count::Replicas(3));
        web.workload.ports = vec![
            Port {
                container: 80,
                host: Some(8080),
                protocol: Protocol::Tcp,
            },
            Port {
                container: 9000,
                host: None,
                protocol: Protocol::Tcp,
            },
            Port {
                container: 53,
                host: Some(53),
                protocol: Protocol::Udp,
            },
        ];
        let db = RoleSpec::new("db", Count::Replicas(1));
        let v4 = |d| Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, d)));
        let state = ColonyState {
            spec: Some(ColonySpec {
                name: "c".to_owned(),
                roles: vec![web, db],
            }),
            nodes: vec![
                node(1, v4(2)),
                node(2, v4(1)),
                node(3, Some(IpAddr::V6(Ipv6Addr::LOCALHOST))),
                node(4, None),
                node(5, v4(5)),
            ],
            assignments: vec![
                at("db", 0, 1),
                at("web", 0, 1),
                at("web", 1, 2),
                at("web", 2, 3),
                at("web", 3, 4),
                at("web", 4, 5),
            ],
            held: vec![HeldNode {
                node: NodeId(5),
                roles: vec!["web".to_owned()],
            }],
            ..ColonyState::default()
        };
        assert_eq!(
            endpoints(&state, "web"),
            vec![
                "10.0.0.1:53",
                "10.0.0.1:8080",
                "10.0.0.2:53",
                "10.0.0.2:8080",
                "[::1]:53",
                "[::1]:8080"
            ]
        );
        assert!(endpoints(&state, "db").is_empty(), "no published port");
        assert!(endpoints(&state, "nope").is_empty());
        assert!(endpoints(&ColonyState::default(), "web").is_empty());
    }
}
