//! Direct tests of the sans-IO node: feed packets and timers by hand, read what it sends.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use dna::{Config, Node, Persisted};
use std::net::SocketAddr;
use swarm_core::seal::ColonyKey;
use swarm_core::wire::{self, Body, ColonyMsg, MAX_STREAM_BYTES, Pheromone, Version};
use swarm_core::{NodeId, Time};

fn key() -> ColonyKey {
    ColonyKey::from_passphrase("node-tests")
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 7946))
}

fn config(id: u64, i: u8) -> Config {
    let mut c = Config::new(NodeId(id), addr(i), key());
    c.bootstrap_expect = 3;
    c
}

/// Every colony message the node wants to send, decoded.
fn sent(node: &mut Node) -> Vec<ColonyMsg> {
    let mut out = Vec::new();
    while let Some(t) = node.poll_transmit() {
        if let Ok(d) = wire::decode(&t.payload, &key(), MAX_STREAM_BYTES) {
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
    let packet = wire::encode_colony(NodeId(1), &ballot, &key()).unwrap();
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
            // Correctly sealed garbage on both channels: as from a compromised key holder.
            let mut packet = vec![wire::MAGIC, wire::WIRE_VERSION, 1 + (round % 4 == 0) as u8];
            packet.extend_from_slice(&(round + 100).to_le_bytes());
            packet.append(&mut body);
            key().seal(&mut packet);
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
