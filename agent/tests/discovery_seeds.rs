//! Static seeds: host names resolved (and re-resolved) through the system resolver, literal
//! addresses, deduplication, the node's own address skipped, a name that does not resolve not
//! blocking the others.
// These tests run real processes and servers and measure them by the wall clock.
#![allow(clippy::disallowed_methods)]

mod support;

use aware_agent::discovery::{Discovered, Discovery, DiscoveryConfig, MdnsConfig, Source};
use aware_agent::swarm_core::id::NodeId;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::netns::Lan;
use support::probe::{Probe, ProbeEvent, ProbeSpec};
use tokio::sync::mpsc;

#[test]
#[ignore = "helper process, started by the tests"]
fn probe_process() {
    support::probe::probe_main()
}

fn seeds_only(seeds: &[&str]) -> DiscoveryConfig {
    DiscoveryConfig {
        seeds: seeds.iter().map(|s| s.to_string()).collect(),
        seed_refresh_ms: 200,
        mdns: MdnsConfig {
            enabled: false,
            interfaces: Vec::new(),
        },
        etcd: None,
    }
}

async fn next(rx: &mut mpsc::Receiver<Discovered>) -> Option<Discovered> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn names_and_literals_resolve_once_each_and_skip_ourselves() {
    let me: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
    let cfg = seeds_only(&[
        "localhost:7001",
        "127.0.0.1:7001",
        "localhost:7001",
        "127.0.0.1:7002",
        "localhost:7000", // ourselves
    ]);
    let (d, mut rx) = Discovery::start("c", NodeId(1), me, cfg).expect("start");
    let mut got = vec![
        next(&mut rx).await.expect("first seed"),
        next(&mut rx).await.expect("second seed"),
    ];
    got.sort_by_key(|x| x.addr);
    let want = |port: u16| Discovered {
        node: None,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        source: Source::Seed,
    };
    assert_eq!(got, vec![want(7001), want(7002)]);
    // Re-resolution runs every 200 ms; nothing new comes out. (Names that do not resolve are
    // tested in a namespace, where no lookup can leave the machine.)
    let more = tokio::time::timeout(Duration::from_millis(700), rx.recv()).await;
    assert!(more.is_err(), "only new pairs are sent: {more:?}");
    d.shutdown().await;
    assert!(rx.recv().await.is_none());
}

#[test]
fn a_seed_name_that_moves_is_followed() {
    // The probe runs in a namespace whose /etc/hosts we control: the name first points at
    // 10.77.0.2, then at 10.77.0.3; both addresses are reported, in that order.
    let lan = Lan::new(1);
    let h = lan.host(0);
    h.set_hosts_file("127.0.0.1 localhost\n10.77.0.2 seed-a\n");
    let spec = ProbeSpec {
        colony: "c".into(),
        node: 1,
        addr: h.sock_addr(7946),
        config: seeds_only(&["seed-a:7946"]),
        log: "info".into(),
    };
    let mut p = Probe::spawn(spec, Some(h), false);
    let found = |seen: &[ProbeEvent], ip: &str| {
        seen.iter().any(|e| matches!(e, ProbeEvent::Found { node: None, addr, source, .. } if addr.ip().to_string() == ip && source == "seed"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    assert!(
        p.wait_until(deadline, |s| found(s, "10.77.0.2")),
        "{:?}",
        p.log()
    );
    h.set_hosts_file("127.0.0.1 localhost\n10.77.0.3 seed-a\n");
    assert!(
        p.wait_until(deadline, |s| found(s, "10.77.0.3")),
        "{:?}",
        p.log()
    );
    assert!(p.stop(Duration::from_secs(5)));
}

#[test]
fn an_unresolvable_name_is_logged_once_and_retried() {
    let lan = Lan::new(1);
    let h = lan.host(0);
    h.set_hosts_file("127.0.0.1 localhost\n");
    let spec = ProbeSpec {
        colony: "c".into(),
        node: 1,
        addr: h.sock_addr(7946),
        config: seeds_only(&["late-seed:7946"]),
        log: "info".into(),
    };
    let mut p = Probe::spawn(spec, Some(h), false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.log().iter().any(|l| l.contains("seed does not resolve")) {
        assert!(Instant::now() < deadline, "{:?}", p.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The name appears (as when DNS catches up): found at the next quick retry.
    h.set_hosts_file("127.0.0.1 localhost\n10.77.0.9 late-seed\n");
    assert!(p.wait_until(deadline, |s| s.iter().any(
        |e| matches!(e, ProbeEvent::Found { addr, .. } if addr.ip().to_string() == "10.77.0.9")
    )));
    // The probe logs "resolves again" before it reports the find, but its stderr (the log) and
    // stdout (the events) are read by two threads here: wait for the line, do not snapshot.
    while !p.log().iter().any(|l| l.contains("seed resolves again")) {
        assert!(Instant::now() < deadline, "{:?}", p.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = p.log();
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("seed does not resolve"))
            .count(),
        1,
        "logged once per failure streak: {log:?}"
    );
    assert!(p.stop(Duration::from_secs(5)));
}
