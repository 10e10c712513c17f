//! The etcd registry against a real etcd (Debian's `etcd-server`, started by the test on free
//! loopback ports, see `support/etcd.rs`): registration under a lease, discovery of members
//! registered by others, expiry of a crashed member, etcd killed and restarted mid-run, and a
//! hung etcd. Figures are printed (`-- --nocapture`).
// These tests run real processes and servers and measure them by the wall clock.
#![allow(clippy::disallowed_methods)]

mod support;

use aware_agent::discovery::etcd::{MemberRecord, member_key};
use aware_agent::discovery::{
    Discovered, Discovery, DiscoveryConfig, EtcdConfig, MdnsConfig, SHUTDOWN_TIMEOUT_MS, Source,
};
use aware_agent::swarm_core::id::NodeId;
use etcd_client::{Client, EventType, PutOptions, WatchOptions};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::etcd::EtcdServer;
use support::probe::{Probe, ProbeEvent, ProbeSpec};
use tokio::sync::mpsc;

const COLONY: &str = "c1";
const TTL_S: i64 = 2;
const DEADLINE: Duration = Duration::from_secs(15);

#[test]
#[ignore = "helper process, started by the tests"]
fn probe_process() {
    support::probe::probe_main()
}

fn etcd_only(endpoint: &str) -> DiscoveryConfig {
    DiscoveryConfig {
        mdns: MdnsConfig {
            enabled: false,
            interfaces: Vec::new(),
        },
        etcd: Some(EtcdConfig {
            endpoints: vec![endpoint.to_string()],
            lease_ttl_s: TTL_S,
            call_timeout_ms: 500,
            retry_max_ms: 1_000,
            ..EtcdConfig::default()
        }),
        ..DiscoveryConfig::default()
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn key(node: u64) -> String {
    member_key("/aware", COLONY, NodeId(node))
}

/// Puts a member record the way another agent would, under its own lease.
async fn put_member(c: &mut Client, colony: &str, node: u64, a: SocketAddr) -> i64 {
    let lease = c.lease_grant(30, None).await.expect("grant").id();
    let rec = MemberRecord {
        node: format!("{node:016x}"),
        addr: a,
        colony: colony.into(),
    };
    c.put(
        member_key("/aware", colony, NodeId(node)),
        serde_json::to_vec(&rec).expect("json"),
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .expect("put");
    lease
}

/// The key's lease, once the key exists (polled until `deadline`).
async fn wait_key(c: &mut Client, k: &str, deadline: Instant) -> Option<(i64, Vec<u8>)> {
    while Instant::now() < deadline {
        if let Ok(r) = c.get(k, None).await
            && let Some(kv) = r.kvs().first()
        {
            return Some((kv.lease(), kv.value().to_vec()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn wait_gone(c: &mut Client, k: &str, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if let Ok(r) = c.get(k, None).await
            && r.kvs().is_empty()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn next(rx: &mut mpsc::Receiver<Discovered>) -> Discovered {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("a discovery within the deadline")
        .expect("channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_under_a_lease_and_revokes_on_shutdown() {
    let etcd = EtcdServer::start().await;
    let mut c = etcd.client().await;
    let me = 0xa1;
    let t0 = Instant::now();
    let (d, _rx) = Discovery::start(COLONY, NodeId(me), addr(7001), etcd_only(&etcd.endpoint()))
        .expect("start");
    let (lease, value) = wait_key(&mut c, &key(me), t0 + DEADLINE)
        .await
        .expect("registered");
    let registered = t0.elapsed();
    let rec: MemberRecord = serde_json::from_slice(&value).expect("record is JSON");
    assert_eq!(
        rec,
        MemberRecord {
            node: format!("{me:016x}"),
            addr: addr(7001),
            colony: COLONY.into()
        }
    );
    assert_ne!(lease, 0, "the key hangs on a lease");
    let ttl = c.lease_time_to_live(lease, None).await.expect("ttl");
    assert_eq!(ttl.granted_ttl(), TTL_S);
    // Keep-alive: the key outlives several TTLs.
    tokio::time::sleep(Duration::from_secs(u64::try_from(2 * TTL_S).unwrap_or(4))).await;
    assert!(
        wait_key(
            &mut c,
            &key(me),
            Instant::now() + Duration::from_millis(200)
        )
        .await
        .is_some()
    );
    let t1 = Instant::now();
    d.shutdown().await;
    assert!(
        wait_gone(&mut c, &key(me), t1 + Duration::from_secs(1)).await,
        "shutdown revokes the lease, so the key goes at once"
    );
    println!(
        "etcd: registered {:.0} ms after start; key gone {:.0} ms after shutdown() began",
        registered.as_secs_f64() * 1e3,
        t1.elapsed().as_secs_f64() * 1e3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovers_members_registered_by_others() {
    let etcd = EtcdServer::start().await;
    let mut c = etcd.client().await;
    // Registered before we start: found by the initial listing.
    put_member(&mut c, COLONY, 0xb1, addr(7101)).await;
    // Another colony under the same prefix: never reported.
    put_member(&mut c, "other", 0xb9, addr(7109)).await;
    let (d, mut rx) = Discovery::start(
        COLONY,
        NodeId(0xa1),
        addr(7001),
        etcd_only(&etcd.endpoint()),
    )
    .expect("start");
    let got = next(&mut rx).await;
    assert_eq!(
        got,
        Discovered {
            node: Some(NodeId(0xb1)),
            addr: addr(7101),
            source: Source::Etcd
        }
    );
    // Junk under our prefix is skipped; the same member again is not re-sent; a new one and a
    // moved one are (found by the watch).
    c.put(key(0xbad), "not json", None).await.expect("put");
    c.put(format!("/aware/{COLONY}/members/nonsense"), "{}", None)
        .await
        .expect("put");
    put_member(&mut c, COLONY, 0xb1, addr(7101)).await;
    put_member(&mut c, COLONY, 0xb2, addr(7102)).await;
    assert_eq!(next(&mut rx).await.node, Some(NodeId(0xb2)));
    put_member(&mut c, COLONY, 0xb1, addr(7111)).await;
    let moved = next(&mut rx).await;
    assert_eq!((moved.node, moved.addr), (Some(NodeId(0xb1)), addr(7111)));
    d.shutdown().await;
    assert!(rx.recv().await.is_none(), "nothing else was reported");
}

fn probe_spec(node: u64, port: u16, endpoint: &str) -> ProbeSpec {
    ProbeSpec {
        colony: COLONY.into(),
        node,
        addr: addr(port),
        config: etcd_only(endpoint),
        log: "info,aware_agent::discovery::etcd=debug".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_member_expires_and_its_return_is_reported_again() {
    let etcd = EtcdServer::start().await;
    let mut c = etcd.client().await;
    let (d, mut rx) = Discovery::start(
        COLONY,
        NodeId(0xa1),
        addr(7001),
        etcd_only(&etcd.endpoint()),
    )
    .expect("start");
    // Member B is another process; it is killed with SIGKILL (no revoke).
    let mut b = Probe::spawn(probe_spec(0xb1, 7101, &etcd.endpoint()), None, false);
    let got = next(&mut rx).await;
    assert_eq!((got.node, got.addr), (Some(NodeId(0xb1)), addr(7101)));
    let mut watch = c
        .watch(key(0xb1), Some(WatchOptions::new()))
        .await
        .expect("watch");
    assert!(
        watch
            .message()
            .await
            .expect("watch")
            .expect("created")
            .created()
    );
    let killed = Instant::now();
    b.kill();
    let removed = tokio::time::timeout(DEADLINE, async {
        loop {
            let m = watch.message().await.expect("watch").expect("open");
            if m.events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return killed.elapsed();
            }
        }
    })
    .await
    .expect("the crashed member's key expires");
    println!(
        "etcd: crashed member's key deleted {:.0} ms after SIGKILL (lease TTL {TTL_S} s)",
        removed.as_secs_f64() * 1e3
    );
    assert!(
        removed <= Duration::from_secs(u64::try_from(TTL_S).unwrap_or(2) + 3),
        "{removed:?}"
    );
    // The same member comes back at the same address: reported again, because the deletion
    // made discovery forget it (the dedupe would swallow it otherwise).
    let mut b2 = Probe::spawn(probe_spec(0xb1, 7101, &etcd.endpoint()), None, false);
    let back = next(&mut rx).await;
    assert_eq!((back.node, back.addr), (Some(NodeId(0xb1)), addr(7101)));
    assert!(b2.stop(Duration::from_secs(5)));
    d.shutdown().await;
}

fn count(log: &[String], needle: &str) -> usize {
    log.iter().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_mid_run_then_restarted() {
    let mut etcd = EtcdServer::start().await;
    let mut c = etcd.client().await;
    let mut p = Probe::spawn(probe_spec(0xa1, 7001, &etcd.endpoint()), None, false);
    let (lease_before, _) = wait_key(&mut c, &key(0xa1), Instant::now() + DEADLINE)
        .await
        .expect("registered");
    etcd.kill9();
    let deadline = Instant::now() + DEADLINE;
    // Several retries happen (debug lines), but the outage is logged once.
    while count(&p.log(), "etcd still unreachable") < 3 {
        assert!(Instant::now() < deadline, "no retries: {:?}", p.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = p.log();
    assert_eq!(count(&log, "WARN"), 1, "one warning per outage: {log:?}");
    assert_eq!(
        count(&log, "etcd unreachable; discovery goes on"),
        1,
        "{log:?}"
    );
    let restarted = Instant::now();
    etcd.restart().await;
    let mut c = etcd.client().await;
    while count(&p.log(), "etcd reachable again") == 0 {
        assert!(
            Instant::now() < deadline,
            "did not re-register: {:?}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reregistered = restarted.elapsed();
    let (lease_after, _) = wait_key(&mut c, &key(0xa1), Instant::now() + DEADLINE)
        .await
        .expect("registered again");
    assert_ne!(lease_after, lease_before, "a fresh lease after the restart");
    let ttl = c.lease_time_to_live(lease_after, None).await.expect("ttl");
    assert!(ttl.ttl() > 0, "the new lease is alive and kept alive");
    // The watch works again: a member registered after the restart is found.
    put_member(&mut c, COLONY, 0xb7, addr(7107)).await;
    assert!(p.wait_until(Instant::now() + DEADLINE, |seen| {
        seen.iter().any(
        |e| matches!(e, ProbeEvent::Found { node: Some(n), .. } if n == &format!("{:016x}", 0xb7))
    )
    }));
    assert!(p.stop(Duration::from_secs(5)), "shuts down by itself");
    assert!(
        wait_gone(&mut c, &key(0xa1), Instant::now() + Duration::from_secs(1)).await,
        "revoked at shutdown"
    );
    println!(
        "etcd: killed and restarted: the agent logged {} warning(s) and re-registered {:.0} ms after the respawn began (etcd's own start-up included)",
        count(&p.log(), "WARN"),
        reregistered.as_secs_f64() * 1e3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_etcd_does_not_hang_the_agent() {
    let etcd = EtcdServer::start().await;
    let mut c = etcd.client().await;
    let seed_port = 7333;
    let mut cfg = etcd_only(&etcd.endpoint());
    cfg.seeds = vec![format!("localhost:{seed_port}")];
    let (d, mut rx) = Discovery::start(COLONY, NodeId(0xa1), addr(7001), cfg).expect("start");
    wait_key(&mut c, &key(0xa1), Instant::now() + DEADLINE)
        .await
        .expect("registered");
    assert_eq!(next(&mut rx).await.source, Source::Seed);
    etcd.freeze();
    let t = Instant::now();
    d.shutdown().await;
    let took = t.elapsed();
    etcd.thaw();
    println!(
        "etcd: shutdown() against a frozen (SIGSTOP) etcd took {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    assert!(
        took <= Duration::from_millis(SHUTDOWN_TIMEOUT_MS + 500),
        "shutdown is bounded: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_over_mutual_tls_and_a_node_without_a_client_certificate_is_refused() {
    let etcd = EtcdServer::start_tls().await;
    let tls = etcd.client_tls().expect("tls").clone();
    let mut c = etcd.client().await;
    let with_tls = |tls: aware_agent::discovery::EtcdTls| {
        let mut cfg = etcd_only(&etcd.endpoint());
        if let Some(e) = cfg.etcd.as_mut() {
            e.tls = Some(tls);
        }
        cfg
    };
    let (good, bad) = (0xb1, 0xb2);
    let t0 = Instant::now();
    let (d1, _rx1) =
        Discovery::start(COLONY, NodeId(good), addr(7011), with_tls(tls.clone())).expect("start");
    // Only etcd's CA, no client certificate: etcd (--client-cert-auth) refuses the handshake.
    let ca_only = aware_agent::discovery::EtcdTls {
        cert: None,
        key: None,
        ..tls.clone()
    };
    let (d2, _rx2) =
        Discovery::start(COLONY, NodeId(bad), addr(7012), with_tls(ca_only)).expect("start");
    assert!(
        wait_key(&mut c, &key(good), t0 + DEADLINE).await.is_some(),
        "registered over mutual TLS"
    );
    println!(
        "etcd over mutual TLS: registered {:.0} ms after start",
        t0.elapsed().as_secs_f64() * 1e3
    );
    // The refused one has had as long, and 1 s more, to register.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        c.get(key(bad), None).await.expect("get").kvs().is_empty(),
        "a node without a client certificate is not registered"
    );
    d1.shutdown().await;
    d2.shutdown().await;

    // Plain http to a TLS config, a missing CA file: refused at start, naming what is wrong.
    let mut plain = with_tls(tls.clone());
    if let Some(e) = plain.etcd.as_mut() {
        e.endpoints = vec!["http://127.0.0.1:1".into()];
    }
    let refused = |r: Result<_, aware_agent::discovery::DiscoveryError>| match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    let err = refused(Discovery::start(COLONY, NodeId(0xb3), addr(7013), plain));
    assert!(err.contains("is not https://"), "{err}");
    let missing = aware_agent::discovery::EtcdTls {
        ca: "/nonexistent/etcd-ca.pem".into(),
        ..tls
    };
    let err = refused(Discovery::start(
        COLONY,
        NodeId(0xb4),
        addr(7014),
        with_tls(missing),
    ));
    assert!(err.contains("/nonexistent/etcd-ca.pem"), "{err}");
}
