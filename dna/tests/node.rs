//! Direct tests of the sans-IO node: feed packets and timers by hand, read what it sends.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use dna::{Config, Node, Persisted};
use std::net::SocketAddr;
use swarm_core::wire::{self, Body, ColonyMsg, MAX_STREAM_BYTES, Pheromone, Version};
use swarm_core::{NodeId, Time};

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 7946))
}

fn config(id: u64, i: u8) -> Config {
    let mut c = Config::new(NodeId(id), addr(i));
    c.bootstrap_expect = 3;
    c
}

/// Every colony message the node wants to send, decoded.
fn sent(node: &mut Node) -> Vec<ColonyMsg> {
    let mut out = Vec::new();
    while let Some(t) = node.poll_transmit() {
        if let Ok(d) = wire::decode(&t.payload, MAX_STREAM_BYTES) {
            if let Body::Colony(m) = d.body {
                out.push(m);
            }
        }
    }
    out
}

fn prevote_reply(node: &mut Node, now: Time) -> Option<bool> {
    let ballot = ColonyMsg::PreVote {
        term: 1,
        version: Version::default(),
        pheromone: Pheromone::MAX,
    };
    let packet = wire::encode_colony(NodeId(1), &ballot).unwrap();
    node.handle_packet(addr(1), &packet, now);
    sent(node).into_iter().find_map(|m| match m {
        ColonyMsg::PreVoteReply { granted, .. } => Some(granted),
        _ => None,
    })
}

#[test]
fn a_restarted_node_votes_for_nobody_for_one_lease() {
    let boot = Time::from_millis(10_000);
    let cfg = config(2, 2);
    let lease = std::time::Duration::from_millis(cfg.lease_ms);
    // First boot: grants at once (no lease, up-to-date, fitter candidate).
    let mut fresh = Node::new(cfg.clone(), None, boot, 7).unwrap();
    assert_eq!(prevote_reply(&mut fresh, boot), Some(true));
    let disk: Persisted = fresh.poll_persist().unwrap();
    // Restart with what it persisted: fenced for one lease, then grants again.
    let mut restarted = Node::new(cfg, Some(disk), boot, 8).unwrap();
    assert_eq!(restarted.incarnation(), 1);
    assert_eq!(prevote_reply(&mut restarted, boot + lease / 2), Some(false));
    assert_eq!(prevote_reply(&mut restarted, boot + lease), Some(true));
}

#[test]
fn persisted_state_of_another_node_is_refused() {
    let mut a = Node::new(config(2, 2), None, Time::ZERO, 1).unwrap();
    let disk = a.poll_persist().unwrap();
    assert!(Node::new(config(3, 3), Some(disk), Time::ZERO, 1).is_err());
}

#[test]
fn hostile_packets_are_counted_and_never_panic() {
    let mut node = Node::new(config(2, 2), None, Time::ZERO, 3).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..2000u64 {
        let len = (next() % 300) as usize;
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 {
            // Well-framed garbage on both channels: as from a compromised key holder, once the
            // transport has opened the datagram.
            let mut packet = vec![wire::MAGIC, wire::WIRE_VERSION, 1 + (round % 4 == 0) as u8];
            packet.extend_from_slice(&(round + 100).to_le_bytes());
            packet.append(&mut body);
            body = packet;
        }
        node.handle_packet(addr(9), &body, Time::from_millis(round));
        node.handle_timeout(Time::from_millis(round));
        sent(&mut node);
    }
    let stats = node.stats();
    assert_eq!(stats.packets_in, 2000);
    assert!(
        stats.packets_rejected + stats.swim_errors >= 1500,
        "{stats:?}"
    );
}

/// Runs a lone node's timers until `until`, collecting its events.
fn run_alone(node: &mut Node, until: Time, events: &mut Vec<dna::Event>) {
    while let Some(at) = node.poll_timeout() {
        if at > until {
            break;
        }
        node.handle_timeout(at);
        while node.poll_transmit().is_some() {}
        while let Some(e) = node.poll_event() {
            events.push(e);
        }
    }
}

fn one_role_spec(replicas: u32) -> swarm_core::spec::ColonySpec {
    use swarm_core::spec::{ColonySpec, Count, Needs, RoleSpec, Workload};
    ColonySpec {
        name: "solo".to_owned(),
        roles: vec![RoleSpec {
            needs: Needs {
                cpu_millis: 100,
                memory_mib: 64,
                ..Needs::default()
            },
            workload: Workload {
                image: "nginx:1.27".to_owned(),
                ..Workload::default()
            },
            ..RoleSpec::new("web", Count::Replicas(replicas))
        }],
    }
}

#[test]
fn a_lone_queen_plans_commits_and_runs_her_own_replicas() {
    let mut cfg = config(7, 7);
    cfg.bootstrap_expect = 1;
    let mut node = Node::new(cfg, None, Time(0), 1).unwrap();
    let mut events = Vec::new();
    run_alone(&mut node, Time(2_000_000), &mut events);
    assert_eq!(node.role(), dna::Role::Queen, "{events:?}");
    // A worker refuses a spec; the queen takes it.
    let mut worker = Node::new(config(8, 8), None, Time(0), 2).unwrap();
    assert!(worker.apply_spec(one_role_spec(1), Time(1)).is_err());
    node.apply_spec(one_role_spec(3), Time(2_000_000)).unwrap();
    run_alone(&mut node, Time(4_000_000), &mut events);
    let state = node.state();
    assert_eq!(state.spec_version, 1);
    assert_eq!(state.nodes.len(), 1);
    assert_eq!(state.assignments.len(), 3, "{state:?}");
    assert_eq!(
        node.committed(),
        state.version,
        "a lone queen commits alone"
    );
    assert_eq!(
        node.term(),
        1,
        "a lone queen renews her own lease: no new terms"
    );
    let assigned = events.iter().rev().find_map(|e| match e {
        dna::Event::Assigned { assignments, .. } => Some(assignments.len()),
        _ => None,
    });
    assert_eq!(assigned, Some(3), "{events:?}");
    // After a restart the node runs what it last committed, before hearing from anyone.
    let disk = node.poll_persist().unwrap();
    let mut cfg = config(7, 7);
    cfg.bootstrap_expect = 1;
    let mut again = Node::new(cfg, Some(disk), Time(5_000_000), 3).unwrap();
    let first = std::iter::from_fn(|| again.poll_event()).find_map(|e| match e {
        dna::Event::Assigned { assignments, .. } => Some(assignments.len()),
        _ => None,
    });
    assert_eq!(first, Some(3));
}

#[test]
fn registrations_from_strangers_and_oversized_ones_are_refused() {
    let mut cfg = config(7, 7);
    cfg.bootstrap_expect = 1;
    let mut node = Node::new(cfg, None, Time(0), 1).unwrap();
    let mut events = Vec::new();
    run_alone(&mut node, Time(2_000_000), &mut events);
    assert_eq!(node.role(), dna::Role::Queen);
    node.apply_spec(one_role_spec(1), Time(2_000_000)).unwrap();
    run_alone(&mut node, Time(3_000_000), &mut events);
    let rejected = node.stats().packets_rejected;
    let term = node.term();
    let mut huge = swarm_core::Capabilities::default();
    for i in 0..100 {
        huge.labels.insert(format!("k{i}"), "v".to_owned());
    }
    for (from, caps) in [
        (NodeId(99), swarm_core::Capabilities::default()),
        (NodeId(99), huge),
    ] {
        let msg = ColonyMsg::Register { term, caps };
        let packet = wire::encode_colony(from, &msg).unwrap();
        node.handle_packet(addr(99), &packet, Time(3_000_000));
    }
    run_alone(&mut node, Time(4_000_000), &mut events);
    assert_eq!(node.stats().packets_rejected, rejected + 2);
    assert_eq!(
        node.state().nodes.len(),
        1,
        "strangers never enter the plan"
    );
}

fn report(
    role: &str,
    replica: u32,
    state: swarm_core::wire::ReplicaState,
) -> swarm_core::wire::ReplicaReport {
    swarm_core::wire::ReplicaReport {
        role: role.to_owned(),
        replica,
        state,
        restarts: 0,
        detail: "x".repeat(1000),
    }
}

#[test]
fn a_lone_queen_tracks_her_replicas_health_and_moves_a_failed_one_nowhere() {
    use swarm_core::spec::UnplacedReason;
    use swarm_core::wire::ReplicaState::{Failed, Running, Starting};
    let mut cfg = config(7, 7);
    cfg.bootstrap_expect = 1;
    let mut node = Node::new(cfg, None, Time(0), 1).unwrap();
    let mut events = Vec::new();
    run_alone(&mut node, Time(2_000_000), &mut events);
    node.apply_spec(one_role_spec(2), Time(2_000_000)).unwrap();
    run_alone(&mut node, Time(3_000_000), &mut events);
    assert_eq!(node.state().assignments.len(), 2);
    assert!(node.healthy_roles().is_empty());
    // Reports for replicas she does not run are ignored; details are cut to a bound.
    node.report_replicas(
        vec![
            report("web", 0, Starting),
            report("web", 9, Running),
            report("db", 0, Running),
        ],
        Time(3_000_000),
    );
    let rows = node.replica_states();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].state, Some(Starting));
    assert_eq!(rows[0].detail.len(), swarm_core::spec::MAX_DETAIL_BYTES);
    assert_eq!(rows[1].state, None, "not reported yet");
    assert!(node.healthy_roles().is_empty(), "nothing runs yet");
    // Running, and the role has no health check: `web` is healthy, and she says so.
    node.report_replicas(vec![report("web", 1, Running)], Time(3_100_000));
    assert_eq!(node.healthy_roles(), ["web".to_owned()]);
    let said = std::iter::from_fn(|| node.poll_event()).find_map(|e| match e {
        dna::Event::RoleHealth { roles } => Some(roles),
        _ => None,
    });
    assert_eq!(said, Some(vec!["web".to_owned()]));
    // A stranger's table is refused.
    let rejected = node.stats().packets_rejected;
    let msg = ColonyMsg::ReplicaStatus {
        term: node.term(),
        version: node.committed(),
        replicas: vec![report("web", 0, Failed)],
    };
    node.handle_packet(
        addr(99),
        &wire::encode_colony(NodeId(99), &msg).unwrap(),
        Time(3_200_000),
    );
    assert_eq!(node.stats().packets_rejected, rejected + 1);
    // web/1 fails: the only node is the one it failed on, so it is unplaced, failing.
    node.report_replicas(vec![report("web", 1, Failed)], Time(3_300_000));
    run_alone(&mut node, Time(4_000_000), &mut events);
    let planned = events.iter().rev().find_map(|e| match e {
        dna::Event::Planned { moves, .. } if !moves.is_empty() => Some(moves.clone()),
        _ => None,
    });
    let moves = planned.expect("a plan moved it");
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!(
        (moves[0].role.as_str(), moves[0].replica, moves[0].to),
        ("web", 1, None)
    );
    assert!(
        matches!(moves[0].why, dna::MoveReason::Failed { .. }),
        "{moves:?}"
    );
    let state = node.state();
    assert_eq!(state.failures.len(), 1);
    assert_eq!(state.failures[0].nodes, [NodeId(7)]);
    let u = &state.unplaced[0];
    assert!(matches!(u.reason, UnplacedReason::Failing { .. }), "{u:?}");
    assert!(
        u.reason.to_string().contains("failed on every node"),
        "{}",
        u.reason
    );
    // It left the plan: its report is gone, and no replica of `web` runs healthy any more.
    assert_eq!(node.replica_states().len(), 1);
    assert!(node.healthy_roles().is_empty());
}

#[test]
fn failure_backoff_doubles_from_thirty_seconds_up_to_five_minutes() {
    let waits: Vec<u64> = (1..=8).map(dna::node::failure_backoff_ms).collect();
    assert_eq!(
        waits,
        [
            0, 30_000, 60_000, 120_000, 240_000, 300_000, 300_000, 300_000
        ]
    );
}
