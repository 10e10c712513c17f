//! mDNS discovery between real hosts: every test builds a LAN of network namespaces (see
//! `support/netns.rs`; needs root) and runs one discovery probe process per host.
//!
//! The timing figures (time from the last probe's start until every probe knows every other)
//! are printed; run with `--nocapture` to see them:
//! `cargo test -p aware-agent --release --test discovery_mdns -- --nocapture`
//! (`AWARE_DEBUG_TIMES=1` also prints, per probe, when it found each peer).
// These tests run real processes and servers and measure them by the wall clock.
#![allow(clippy::disallowed_methods)]

mod support;

use aware_agent::discovery::{DiscoveryConfig, MdnsConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::netns::Lan;
use support::probe::{Probe, ProbeSpec};

const PORT: u16 = 7946;
const HOSTS: usize = 10;
const ROUNDS: usize = 3;
/// Far above the ≤ 1 s target: a failure here means discovery did not happen, not that it was
/// slow (the figures are printed, not asserted).
const DISCOVERY_DEADLINE: Duration = Duration::from_secs(20);

#[test]
#[ignore = "helper process, started by the tests"]
fn probe_process() {
    support::probe::probe_main()
}

fn node_id(colony_tag: u64, round: usize, host: usize) -> u64 {
    (colony_tag << 48) | ((round as u64) << 16) | (host as u64 + 1)
}

fn mdns_only() -> DiscoveryConfig {
    DiscoveryConfig {
        mdns: MdnsConfig {
            enabled: true,
            interfaces: Vec::new(),
        },
        ..DiscoveryConfig::default()
    }
}

fn spec(colony: &str, node: u64, addr: SocketAddr) -> ProbeSpec {
    ProbeSpec {
        colony: colony.into(),
        node,
        addr,
        config: mdns_only(),
        log: "info,mdns_sd=warn".into(),
    }
}

/// Waits until probe `i` has found exactly `expected` (node hex → address) through mDNS and
/// returns the time (µs since the epoch) at which the last of them was first reported.
fn complete_at(p: &mut Probe, expected: &BTreeMap<String, SocketAddr>, deadline: Instant) -> u64 {
    let done = p.wait_until(deadline, |seen| {
        let mut missing = expected.len();
        let mut got = std::collections::BTreeSet::new();
        for e in seen {
            if let support::probe::ProbeEvent::Found {
                node: Some(n),
                addr,
                ..
            } = e
                && expected.get(n) == Some(addr)
                && got.insert(n.clone())
            {
                missing -= 1;
            }
        }
        missing == 0
    });
    assert!(
        done,
        "probe {} found only {:?} of {:?}; log: {:?}",
        p.spec.node,
        p.found(),
        expected,
        p.log()
    );
    let mut first: BTreeMap<String, u64> = BTreeMap::new();
    for (node, addr, source, t) in p.found() {
        let node = node.expect("mDNS peers come with their node id");
        assert_eq!(source, "mdns");
        assert_eq!(
            expected.get(&node),
            Some(&addr),
            "probe {:x} reported {node} at {addr}, which is not a peer of its colony",
            p.spec.node
        );
        first.entry(node).or_insert(t);
    }
    first.values().copied().max().unwrap_or(0)
}

/// One round: a probe on every host, all started at once; returns the time from the last
/// start to full discovery, in ms.
fn round(lan: &Lan, round: usize, boot: bool) -> f64 {
    if boot {
        for h in lan.hosts() {
            h.bring_down();
        }
    }
    let ids: Vec<u64> = (0..lan.hosts().len())
        .map(|i| node_id(0xb1, round, i))
        .collect();
    let mut probes: Vec<Probe> = lan
        .hosts()
        .iter()
        .map(|h| {
            let s = spec(
                "blue",
                ids[h.index],
                format!("0.0.0.0:{PORT}").parse().expect("addr"),
            );
            Probe::spawn(s, Some(h), boot)
        })
        .collect();
    let deadline = Instant::now() + DISCOVERY_DEADLINE;
    let mut last_complete = 0;
    for (i, p) in probes.iter_mut().enumerate() {
        let expected: BTreeMap<String, SocketAddr> = lan
            .hosts()
            .iter()
            .filter(|h| h.index != i)
            .map(|h| (format!("{:016x}", ids[h.index]), h.sock_addr(PORT)))
            .collect();
        last_complete = last_complete.max(complete_at(p, &expected, deadline));
    }
    let last_start = probes
        .iter()
        .map(|p| p.start_us().expect("probe printed its start"))
        .max()
        .unwrap_or(0);
    if std::env::var("AWARE_DEBUG_TIMES").is_ok() {
        for p in &probes {
            let s = p.start_us().unwrap_or(0);
            let mut f: Vec<(String, i64)> = p
                .found()
                .into_iter()
                .map(|(n, _, _, t)| {
                    (
                        n.unwrap_or_default()[12..].to_string(),
                        (t as i64 - last_start as i64) / 1000,
                    )
                })
                .collect();
            f.sort_by_key(|x| x.1);
            println!(
                "probe {:x} start {} ms: {:?}",
                p.spec.node & 0xff,
                (s as i64 - last_start as i64) / 1000,
                f
            );
        }
    }
    for p in &mut probes {
        assert!(p.stop(Duration::from_secs(5)), "probe shuts down by itself");
    }
    (last_complete as f64 - last_start as f64) / 1000.0
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let p50 = ms[ms.len() / 2];
    let max = ms[ms.len() - 1];
    println!(
        "mDNS {name}: {HOSTS} hosts, {} rounds: last start → everyone knows everyone: p50 {p50:.0} ms, max {max:.0} ms (all: {:?})",
        ms.len(),
        ms.iter().map(|m| m.round() as i64).collect::<Vec<_>>()
    );
}

#[test]
fn ten_hosts_find_each_other_with_settled_interfaces() {
    let lan = Lan::new(HOSTS);
    let times: Vec<f64> = (0..ROUNDS).map(|r| round(&lan, r, false)).collect();
    summary("settled interfaces", times);
}

#[test]
fn ten_hosts_find_each_other_when_started_as_the_interface_comes_up() {
    let lan = Lan::new_down(HOSTS);
    let times: Vec<f64> = (0..ROUNDS).map(|r| round(&lan, r, true)).collect();
    summary("boot (probe started right after eth0 up + address)", times);
}

#[test]
fn another_colony_on_the_same_lan_is_ignored() {
    // Hosts 0, 1 run colony blue; 2, 3 run red; host 0 also runs a red probe (two colonies on
    // one machine share the mDNS port).
    let lan = Lan::new(4);
    let addr = |i: usize| lan.host(i).sock_addr(PORT);
    let mut blue: Vec<Probe> = (0..2)
        .map(|i| {
            Probe::spawn(
                spec("blue", node_id(0xb1, 9, i), addr(i)),
                Some(lan.host(i)),
                false,
            )
        })
        .collect();
    let red_hosts = [2usize, 3, 0];
    let mut red: Vec<Probe> = red_hosts
        .iter()
        .map(|&i| {
            // The red probe on host 0 uses another port: one node per (address, port).
            let a = if i == 0 {
                lan.host(0).sock_addr(PORT + 1)
            } else {
                addr(i)
            };
            Probe::spawn(
                spec("red", node_id(0xed, 9, i), a),
                Some(lan.host(i)),
                false,
            )
        })
        .collect();
    let deadline = Instant::now() + DISCOVERY_DEADLINE;
    // Red finds red: its announcements were on the wire, where blue heard them too.
    for (k, p) in red.iter_mut().enumerate() {
        let expected: BTreeMap<String, SocketAddr> = red_hosts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != k)
            .map(|(_, &i)| {
                let a = if i == 0 {
                    lan.host(0).sock_addr(PORT + 1)
                } else {
                    addr(i)
                };
                (format!("{:016x}", node_id(0xed, 9, i)), a)
            })
            .collect();
        complete_at(p, &expected, deadline);
    }
    for (i, p) in blue.iter_mut().enumerate() {
        let j = 1 - i;
        let expected = BTreeMap::from([(format!("{:016x}", node_id(0xb1, 9, j)), addr(j))]);
        // complete_at also asserts nothing else was reported (no red node).
        complete_at(p, &expected, deadline);
    }
    for p in blue.iter_mut().chain(red.iter_mut()) {
        p.drain();
        for (node, _, _, _) in p.found() {
            let node = node.expect("node id");
            let colony_tag = u64::from_str_radix(&node[..4], 16).expect("hex");
            let mine = if p.spec.colony == "blue" { 0xb1 } else { 0xed };
            assert_eq!(colony_tag, mine, "{} probe reported {node}", p.spec.colony);
        }
        assert!(p.stop(Duration::from_secs(5)));
    }
}

#[test]
fn partition_and_cut_separate_hosts() {
    // The harness's failure injection, checked with mDNS: probes started during a partition
    // find only their side; after healing, a new probe finds everyone; a cut host is not found.
    let lan = Lan::new(4);
    lan.partition(&[0, 1], &[2, 3]);
    let id = |i: usize| node_id(0xc0, 0, i);
    let hex = |i: usize| format!("{:016x}", id(i));
    let mut probes: Vec<Probe> = (0..4)
        .map(|i| {
            Probe::spawn(
                spec("blue", id(i), lan.host(i).sock_addr(PORT)),
                Some(lan.host(i)),
                false,
            )
        })
        .collect();
    let deadline = Instant::now() + DISCOVERY_DEADLINE;
    for (i, p) in probes.iter_mut().enumerate() {
        let j = i ^ 1; // the other host on the same side
        let expected = BTreeMap::from([(hex(j), lan.host(j).sock_addr(PORT))]);
        complete_at(p, &expected, deadline);
    }
    lan.heal();
    lan.cut(3);
    // A newcomer on host 0 (another port): hears 0, 1, 2 but not the cut host 3.
    let mut newcomer = Probe::spawn(
        spec("blue", node_id(0xc0, 1, 0), lan.host(0).sock_addr(PORT + 1)),
        Some(lan.host(0)),
        false,
    );
    let expected: BTreeMap<String, SocketAddr> = (0..3)
        .map(|i| (hex(i), lan.host(i).sock_addr(PORT)))
        .collect();
    complete_at(&mut newcomer, &expected, deadline);
    // Host 3's answer would have come with the others'; allow it a moment to show up anyway.
    let grace = Instant::now() + Duration::from_millis(500);
    let leaked = newcomer.wait_until(grace, |seen| {
        seen.iter().any(|e| matches!(e, support::probe::ProbeEvent::Found { node: Some(n), .. } if *n == hex(3)))
    });
    assert!(
        !leaked,
        "the cut host was reachable: {:?}",
        newcomer.found()
    );
    lan.restore(3);
    assert!(newcomer.stop(Duration::from_secs(5)));
    for p in &mut probes {
        assert!(p.stop(Duration::from_secs(5)));
    }
}

#[test]
fn a_probe_started_before_its_interface_is_up_finds_everyone_once_it_is() {
    // Host 3 runs its agent before the network is configured (eth0 down, no address); the
    // interface watcher notices the address and mDNS rescans, announces and queries at once.
    let lan = Lan::new(4);
    lan.host(3).bring_down();
    let id = |i: usize| node_id(0xd0, 0, i);
    let mut probes: Vec<Probe> = (0..4)
        .map(|i| {
            Probe::spawn(
                spec(
                    "blue",
                    id(i),
                    format!("0.0.0.0:{PORT}").parse().expect("addr"),
                ),
                Some(lan.host(i)),
                false,
            )
        })
        .collect();
    let deadline = Instant::now() + DISCOVERY_DEADLINE;
    assert!(probes[3].wait_until(deadline, |s| {
        s.iter()
            .any(|e| matches!(e, support::probe::ProbeEvent::Start { .. }))
    }));
    // Let the early hosts find each other first, so the late one is the only thing missing.
    for (i, p) in probes.iter_mut().enumerate().take(3) {
        let expected: BTreeMap<String, SocketAddr> = (0..3)
            .filter(|j| *j != i)
            .map(|j| (format!("{:016x}", id(j)), lan.host(j).sock_addr(PORT)))
            .collect();
        assert!(p.wait_until(deadline, |seen| {
            expected.keys().all(|k| seen.iter().any(|e| matches!(e, support::probe::ProbeEvent::Found { node: Some(n), .. } if n == k)))
        }));
    }
    let up_us = support::probe::now_us();
    lan.host(3).bring_up();
    let mut last = 0;
    for (i, p) in probes.iter_mut().enumerate() {
        let expected: BTreeMap<String, SocketAddr> = (0..4)
            .filter(|j| *j != i)
            .map(|j| (format!("{:016x}", id(j)), lan.host(j).sock_addr(PORT)))
            .collect();
        last = last.max(complete_at(p, &expected, deadline));
    }
    println!(
        "mDNS late interface: address added → all 4 know each other: {:.0} ms",
        (last as f64 - up_us as f64) / 1000.0
    );
    for p in &mut probes {
        assert!(p.stop(Duration::from_secs(5)));
    }
}

#[test]
// Failed once in about ten runs of the whole suite on 2026-12-02 (A never logged B's goodbye
// within the deadline; passes alone and with its neighbours, cause not found yet). Kept out of
// CI until it is understood; run it with
// `cargo test --release -p aware-agent --test discovery_mdns -- --ignored`.
#[ignore = "flaky: a lost mDNS goodbye, see the comment above"]
fn shutdown_says_goodbye_so_a_return_is_reported_again() {
    // B stops cleanly and A's mDNS removes B about a second later (a goodbye sets the record's
    // TTL to 1 s, RFC 6762 §10.1; without a goodbye it would stay for its 120 s TTL). A then
    // forgets B, so when B comes back with the same id and address A reports it again rather
    // than swallowing it as "nothing new".
    let lan = Lan::new(2);
    let a_id = node_id(0xe0, 0, 0);
    let b_id = node_id(0xe0, 0, 1);
    let b_hex = format!("{b_id:016x}");
    let mut a_spec = spec("blue", a_id, lan.host(0).sock_addr(PORT));
    a_spec.log = "info,aware_agent::discovery::mdns=debug".into();
    let mut a = Probe::spawn(a_spec, Some(lan.host(0)), false);
    let deadline = Instant::now() + DISCOVERY_DEADLINE;
    let times_found = |seen: &[support::probe::ProbeEvent]| {
        seen.iter()
            .filter(|e| matches!(e, support::probe::ProbeEvent::Found { node: Some(n), .. } if *n == b_hex))
            .count()
    };
    let mut b = Probe::spawn(
        spec("blue", b_id, lan.host(1).sock_addr(PORT)),
        Some(lan.host(1)),
        false,
    );
    assert!(
        a.wait_until(deadline, |s| times_found(s) == 1),
        "{:?}",
        a.found()
    );
    assert!(b.stop(Duration::from_secs(5)), "B shuts down by itself");
    let stopped = Instant::now();
    while !a.log().iter().any(|l| l.contains("mDNS goodbye or expiry")) {
        assert!(
            Instant::now() < deadline,
            "no goodbye seen: {}",
            a.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "mDNS goodbye: peer removed {:.0} ms after it stopped",
        stopped.elapsed().as_secs_f64() * 1e3
    );
    let mut b = Probe::spawn(
        spec("blue", b_id, lan.host(1).sock_addr(PORT)),
        Some(lan.host(1)),
        false,
    );
    assert!(
        a.wait_until(deadline, |s| times_found(s) == 2),
        "{:?}",
        a.found()
    );
    assert!(b.stop(Duration::from_secs(5)));
    assert!(a.stop(Duration::from_secs(5)));
}
