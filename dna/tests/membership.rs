//! The membership mechanism of one node, driven by hand: the hello a member that comes up
//! gets, the join that keeps asking its seeds until one answers, and the rumours (a suspicion
//! told to the suspect, a death pushed to everyone).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use dna::{Config, Event, Node};
use foca::{Codec, Message, PostcardCodec};
use std::net::SocketAddr;
use swarm_core::swim::SwimId;
use swarm_core::wire::{self, Body, ColonyMsg, MAX_STREAM_BYTES};
use swarm_core::{NodeId, Time};

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 7946))
}

fn id(i: u8) -> SwimId {
    SwimId {
        node: NodeId(u64::from(i)),
        addr: addr(i),
        bump: 0,
    }
}

fn node(i: u8, seeds: &[u8]) -> Node {
    let mut c = Config::new(NodeId(u64::from(i)), addr(i));
    c.seeds = seeds.iter().map(|s| addr(*s)).collect();
    Node::new(c, None, Time::ZERO, u64::from(i)).unwrap()
}

enum Sent {
    Colony(SocketAddr, ColonyMsg),
    /// A SWIM packet: destination, foca message, sender's incarnation.
    Swim(SocketAddr, Message<SwimId>, u16),
}

fn sent(node: &mut Node) -> Vec<Sent> {
    let mut out = Vec::new();
    while let Some(t) = node.poll_transmit() {
        let d = wire::decode(&t.payload, MAX_STREAM_BYTES).unwrap();
        match d.body {
            Body::Colony(m) => out.push(Sent::Colony(t.to, m)),
            Body::Swim(mut data) => {
                let h = PostcardCodec.decode_header(&mut data).unwrap();
                out.push(Sent::Swim(t.to, h.message, h.src_incarnation));
            }
        }
    }
    out
}

fn hellos(sent: &[Sent]) -> Vec<(SocketAddr, Vec<SwimId>)> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Colony(to, ColonyMsg::Members { members, .. }) => Some((*to, members.clone())),
            _ => None,
        })
        .collect()
}

fn join_requests(sent: &[Sent]) -> Vec<(SocketAddr, u64)> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Colony(to, ColonyMsg::JoinRequest { digest, .. }) => Some((*to, *digest)),
            _ => None,
        })
        .collect()
}

fn deliver(to: &mut Node, from: u8, msg: &ColonyMsg, now: Time) {
    let packet = wire::encode_colony(NodeId(u64::from(from)), msg).unwrap();
    to.handle_packet(addr(from), &packet, now);
}

fn members(list: &[u8]) -> ColonyMsg {
    ColonyMsg::Members {
        members: list.iter().map(|i| id(*i)).collect(),
        scents: Vec::new(),
    }
}

/// Runs the node's timers up to `until`, returning what it sent.
fn run_until(node: &mut Node, until: Time) -> Vec<Sent> {
    let mut out = Vec::new();
    while let Some(at) = node.poll_timeout().filter(|at| *at <= until) {
        node.handle_timeout(at);
        out.extend(sent(node));
    }
    out
}

fn ms(v: u64) -> Time {
    Time::from_millis(v)
}

#[test]
fn a_member_list_that_lacks_us_makes_us_greet_everyone_in_it_three_times() {
    let mut a = node(2, &[]);
    sent(&mut a);
    // Seed 10 answers (its list ends with itself) and does not know us yet.
    deliver(&mut a, 10, &members(&[11, 12, 10]), ms(1));
    assert_eq!(a.live_members(), 3);
    let mut greeted = hellos(&sent(&mut a));
    greeted.sort_by_key(|(to, _)| *to);
    let expect: Vec<(SocketAddr, Vec<SwimId>)> = [10, 11, 12]
        .iter()
        .map(|i| (addr(*i), vec![id(2), id(*i)]))
        .collect();
    assert_eq!(
        greeted, expect,
        "one hello each: us, then the member greeted"
    );
    let greet_again = Config::new(NodeId(2), addr(2)).greet_again_ms;
    let again = run_until(&mut a, ms(1 + 3 * greet_again));
    let mut copies = hellos(&again);
    copies.sort_by_key(|(to, _)| *to);
    assert_eq!(copies.len(), 6, "two more copies each");
    assert!(copies.iter().all(|(to, m)| m[1].addr == *to));
}

#[test]
fn a_hello_is_not_answered_with_a_hello() {
    let mut a = node(2, &[]);
    sent(&mut a);
    // 11 greets us: [11, us]. We learn of it, and it already knows us.
    deliver(&mut a, 11, &members(&[11, 2]), ms(1));
    assert_eq!(a.live_members(), 1);
    let mut events = Vec::new();
    while let Some(e) = a.poll_event() {
        events.push(e);
    }
    assert!(events.contains(&Event::MemberUp(NodeId(11))), "{events:?}");
    let out = run_until(&mut a, ms(2_000));
    assert!(
        hellos(&sent(&mut a)).is_empty() && hellos(&out).is_empty(),
        "no hello back"
    );
}

#[test]
fn a_newcomer_keeps_asking_its_seeds_until_one_answers_then_asks_once_more() {
    let retry = Config::new(NodeId(2), addr(2)).announce_retry_ms;
    let greet_again = Config::new(NodeId(2), addr(2)).greet_again_ms;
    let mut a = node(2, &[10]);
    let boot = run_until(&mut a, ms(0));
    assert_eq!(join_requests(&boot), vec![(addr(10), 0)]);
    // Some member greets us (as foca's feed would make us know some): we still ask the seed,
    // since only its answer holds everybody.
    deliver(&mut a, 11, &members(&[11, 2]), ms(1));
    let retried = run_until(&mut a, ms(retry));
    assert_eq!(join_requests(&retried), vec![(addr(10), 0)]);
    // The seed answers: one more request, with our digest, a little later; then none.
    deliver(&mut a, 10, &members(&[11, 2, 10]), ms(retry + 1));
    let after = run_until(&mut a, ms(retry + 1 + greet_again));
    let asked = join_requests(&after);
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].0, addr(10));
    assert_ne!(asked[0].1, 0, "the second request carries a digest");
    // (Up to one more retry period: the members never answer foca's probes, so they are
    // declared down after the suspicion timeout, and a node that knows nobody joins again.)
    let later = run_until(&mut a, ms(2 * retry + 1));
    assert!(
        join_requests(&later)
            .iter()
            .all(|(to, digest)| *to != addr(10) || *digest != 0),
        "no more join requests to the seed: {:?}",
        join_requests(&later)
    );
}

#[test]
fn a_suspected_member_refutes_at_once_and_announces_itself_to_its_suspecter() {
    let mut a = node(2, &[]);
    deliver(&mut a, 11, &members(&[11, 12, 13, 14, 11]), ms(1));
    sent(&mut a);
    let rumour = ColonyMsg::Rumour {
        member: id(2),
        incarnation: 0,
        down: false,
    };
    deliver(&mut a, 12, &rumour, ms(2));
    let out = sent(&mut a);
    let announces: Vec<(SocketAddr, u16)> = out
        .iter()
        .filter_map(|s| match s {
            Sent::Swim(to, Message::Announce, inc) => Some((*to, *inc)),
            _ => None,
        })
        .collect();
    assert_eq!(
        announces,
        vec![(addr(12), 1)],
        "refuted: incarnation 0 -> 1"
    );
    // A suspicion about an identity of ours that is gone is ignored.
    let stale = ColonyMsg::Rumour {
        member: SwimId { bump: 7, ..id(2) },
        incarnation: 9,
        down: true,
    };
    deliver(&mut a, 12, &stale, ms(3));
    assert!(sent(&mut a).is_empty());
    assert_eq!(a.live_members(), 4);
}

#[test]
fn a_pushed_death_takes_the_member_down_at_once() {
    let mut a = node(2, &[]);
    deliver(&mut a, 11, &members(&[12, 13, 11]), ms(1));
    sent(&mut a);
    while a.poll_event().is_some() {}
    let rumour = ColonyMsg::Rumour {
        member: id(13),
        incarnation: 0,
        down: true,
    };
    deliver(&mut a, 12, &rumour, ms(2));
    let mut events = Vec::new();
    while let Some(e) = a.poll_event() {
        events.push(e);
    }
    assert!(
        events.contains(&Event::MemberDown(NodeId(13))),
        "{events:?}"
    );
    assert_eq!(a.live_members(), 2);
    // A suspicion of someone else is not ours to act on.
    let hearsay = ColonyMsg::Rumour {
        member: id(11),
        incarnation: 0,
        down: false,
    };
    deliver(&mut a, 12, &hearsay, ms(3));
    assert!(sent(&mut a).is_empty());
}

#[test]
fn a_refuted_suspicion_does_not_tell_the_member_it_is_down() {
    let cfg = Config::new(NodeId(2), addr(2));
    let (period, suspect) = (cfg.probe_period_ms, cfg.suspect_to_down_ms);
    let mut a = node(2, &[]);
    deliver(&mut a, 11, &members(&[11, 2]), ms(1));
    sent(&mut a);
    // 11 never answers a probe: after one probe period without an ack, it is suspected and
    // told so.
    let out = run_until(&mut a, ms(3 * period));
    let suspected = out.iter().any(
        |s| matches!(s, Sent::Colony(to, ColonyMsg::Rumour { down: false, .. }) if *to == addr(11)),
    );
    assert!(suspected, "no suspicion after {}ms", 3 * period);
    // It refutes: a foca announce from it with incarnation 1.
    let header = foca::Header {
        src: id(11),
        src_incarnation: 1,
        dst: id(2),
        message: Message::Announce,
    };
    let mut data = Vec::new();
    PostcardCodec.encode_header(&header, &mut data).unwrap();
    let refuted = ms(3 * period + 1);
    a.handle_packet(addr(11), &wire::encode_swim(NodeId(11), &data), refuted);
    sent(&mut a);
    // The first suspicion's timer runs out: foca 2.0.0 would send 11 `TurnUndead` (and 11 would
    // renew its identity); nothing may go to 11 from it. (11 keeps failing later probes, so a
    // second suspicion follows; look only until just after the first timer.)
    let out = run_until(&mut a, ms(3 * period + suspect + period / 2));
    let undead = out
        .iter()
        .any(|s| matches!(s, Sent::Swim(to, Message::TurnUndead, _) if *to == addr(11)));
    assert!(!undead, "TurnUndead sent to a member that refuted");
    assert_eq!(a.live_members(), 1);
}
