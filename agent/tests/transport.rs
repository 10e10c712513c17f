//! The transport security layer with real parts: quinn endpoints on loopback in one process,
//! real UDP sockets, real certificates. mTLS admission, foreign CAs, joins, the stream lane, and
//! the one port that carries gossip and QUIC while hostile datagrams hit it.

#![allow(clippy::unwrap_used)]

use aware_agent::net::counters::get;
use aware_agent::net::gossip::GossipCrypto;
use aware_agent::net::quic::{InboundFrame, MAX_STREAM_BYTES};
use aware_agent::net::tls;
use aware_agent::net::{
    ControlRequest, ControlResponse, ErrorCode, Net, NetChannels, NetConfig, NetCounters, NetError,
    NoHandler,
};
use aware_agent::pki::{self, Ca, Credentials, Identity};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use swarm_core::NodeId;
use swarm_core::envelope::{Key, Keyring};

const DEADLINE: Duration = Duration::from_secs(10);

#[allow(clippy::disallowed_methods)]
fn now() -> SystemTime {
    SystemTime::now()
}

fn new_ca(colony: &str) -> Arc<Ca> {
    Arc::new(Ca::generate(colony, now()).unwrap())
}

fn node_creds(ca: &Ca, id: u64) -> Credentials {
    let (key, csr) = pki::node_key_and_csr(NodeId(id)).unwrap();
    let cert = ca.sign_csr(&csr, NodeId(id), now()).unwrap();
    Credentials::new(&cert, &key, ca.cert().clone()).unwrap()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn node(ca: &Ca, id: u64) -> (Net, NetChannels) {
    let mut cfg = NetConfig::new(loopback());
    cfg.credentials = Some(node_creds(ca, id));
    Net::bind(cfg, Arc::new(NoHandler)).await.unwrap()
}

async fn signer(ca: &Arc<Ca>, id: u64) -> (Net, NetChannels) {
    let mut cfg = NetConfig::new(loopback());
    cfg.credentials = Some(node_creds(ca, id));
    cfg.signer = Some(ca.clone());
    Net::bind(cfg, Arc::new(NoHandler)).await.unwrap()
}

fn addr(net: &Net) -> SocketAddr {
    net.local_addr().unwrap()
}

/// Polls `cond` until it holds or the deadline passes.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn ping(from: &Net, to: &Net, node: Option<u64>) -> Result<ControlResponse, NetError> {
    from.request(addr(to), node.map(NodeId), &ControlRequest::Ping)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_between_two_nodes() {
    let ca = new_ca("hive");
    let (a, _ca) = node(&ca, 1).await;
    let (b, _cb) = node(&ca, 2).await;
    assert_eq!(
        ping(&b, &a, Some(1)).await.unwrap(),
        ControlResponse::Pong { node: NodeId(1) }
    );
    // Either direction, by address only (any colony node).
    assert_eq!(
        ping(&a, &b, None).await.unwrap(),
        ControlResponse::Pong { node: NodeId(2) }
    );
    // Dialling an address while expecting another node is refused by the client.
    let err = ping(&a, &b, Some(3)).await.unwrap_err();
    assert!(
        matches!(err, NetError::Connection(_) | NetError::WrongPeer { .. }),
        "{err}"
    );
    assert!(get(&a.counters().quic_accepted) >= 1);
    assert_eq!(get(&a.counters().quic_handshake_refused), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_from_another_ca_is_refused_counted_and_the_server_keeps_serving() {
    let ca = new_ca("hive");
    let impostor_ca = new_ca("hive"); // same colony name, different key
    let (a, _ca) = node(&ca, 1).await;
    let (mallory, _cm) = node(&impostor_ca, 66).await;
    let err = ping(&mallory, &a, None).await.unwrap_err();
    // The client sees the refusal on its first request (the handshake itself "succeeds").
    assert!(!matches!(err, NetError::NoCredentials), "{err}");
    eventually("the refused handshake to be counted", || {
        get(&a.counters().quic_handshake_refused) >= 1
    })
    .await;
    let (b, _cb) = node(&ca, 2).await;
    assert_eq!(
        ping(&b, &a, Some(1)).await.unwrap(),
        ControlResponse::Pong { node: NodeId(1) }
    );
    // And the colony's nodes refuse to talk to the impostor as a server, too.
    assert!(ping(&a, &mallory, None).await.is_err());
}

/// A raw quinn client without a certificate, on the given ALPN.
async fn anonymous_request(
    to: SocketAddr,
    ca: &Ca,
    alpn: &[u8],
    request: &ControlRequest,
) -> Result<ControlResponse, String> {
    let provider = tls::provider();
    let verifier = tls::ColonyServerVerifier::new(ca.cert(), provider.clone()).unwrap();
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    crypto.alpn_protocols = vec![alpn.to_vec()];
    let client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap(),
    ));
    let endpoint = quinn::Endpoint::client(loopback()).unwrap();
    let conn = endpoint
        .connect_with(client, to, tls::ANY_NODE_NAME)
        .unwrap()
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let frame = aware_agent::net::control::encode(request).unwrap();
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let reply = recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())?;
    aware_agent::net::control::decode(&reply).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_only_a_join_is_served() {
    let ca = new_ca("hive");
    let (a, _ca) = node(&ca, 1).await;
    // aware/1 without a certificate: the connection is closed.
    let r = anonymous_request(addr(&a), &ca, tls::ALPN_NODE, &ControlRequest::Ping).await;
    assert!(r.is_err(), "{r:?}");
    // aware-join/1: anything but a join is refused.
    let r = anonymous_request(addr(&a), &ca, tls::ALPN_JOIN, &ControlRequest::Ping).await;
    assert!(
        matches!(
            r,
            Ok(ControlResponse::Error {
                code: ErrorCode::Unauthorized,
                ..
            })
        ),
        "{r:?}"
    );
    let r = anonymous_request(addr(&a), &ca, tls::ALPN_JOIN, &ControlRequest::KeyringList).await;
    assert!(
        matches!(
            r,
            Ok(ControlResponse::Error {
                code: ErrorCode::Unauthorized,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(get(&a.counters().quic_unauthenticated) >= 3);
    // A node without credentials cannot even try.
    let (joiner, _cj) = Net::bind(NetConfig::new(loopback()), Arc::new(NoHandler))
        .await
        .unwrap();
    assert!(matches!(
        ping(&joiner, &a, None).await,
        Err(NetError::NoCredentials)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_a_valid_token_yields_a_certificate_that_works_and_an_expired_one_is_refused() {
    let ca = new_ca("hive");
    let (a, _ca) = signer(&ca, 1).await;
    let (joiner, _cj) = Net::bind(NetConfig::new(loopback()), Arc::new(NoHandler))
        .await
        .unwrap();

    let expired = ca
        .create_token(Duration::from_secs(3600), now() - Duration::from_secs(7200))
        .unwrap();
    let err = joiner
        .join(addr(&a), &expired, NodeId(77))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NetError::Refused { code: ErrorCode::TokenRefused, message } if message.contains("expired")),
        "{err}"
    );
    // A token from another colony's CA: the joiner's pin does not match the server.
    let other = new_ca("hive");
    let foreign = other
        .create_token(Duration::from_secs(3600), now())
        .unwrap();
    assert!(joiner.join(addr(&a), &foreign, NodeId(77)).await.is_err());
    assert_eq!(get(&a.counters().join_refused), 1);
    assert!(joiner.identity().is_none(), "not admitted");

    let token = ca.create_token(Duration::from_secs(3600), now()).unwrap();
    let creds = joiner.join(addr(&a), &token, NodeId(77)).await.unwrap();
    assert_eq!(creds.identity(), Identity::Node(NodeId(77)));
    assert_eq!(joiner.identity(), Some(Identity::Node(NodeId(77))));
    assert_eq!(get(&a.counters().join_signed), 1);
    // The new certificate works both ways with mutual TLS.
    assert_eq!(
        ping(&joiner, &a, Some(1)).await.unwrap(),
        ControlResponse::Pong { node: NodeId(1) }
    );
    assert_eq!(
        ping(&a, &joiner, Some(77)).await.unwrap(),
        ControlResponse::Pong { node: NodeId(77) }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_ca_key_forwards_a_join_to_a_signer() {
    let ca = new_ca("hive");
    let (s, _cs) = signer(&ca, 1).await;
    let mut cfg = NetConfig::new(loopback());
    cfg.credentials = Some(node_creds(&ca, 2));
    cfg.signers = vec![addr(&s)];
    let (b, _cb) = Net::bind(cfg, Arc::new(NoHandler)).await.unwrap();
    let (joiner, _cj) = Net::bind(NetConfig::new(loopback()), Arc::new(NoHandler))
        .await
        .unwrap();
    let token = ca.create_token(Duration::from_secs(600), now()).unwrap();
    let creds = joiner.join(addr(&b), &token, NodeId(9)).await.unwrap();
    assert_eq!(creds.identity(), Identity::Node(NodeId(9)));
    assert_eq!(get(&s.counters().join_signed), 1);
    // A node with neither the key nor a signer refuses.
    let (c, _cc) = node(&ca, 3).await;
    let (late, _cl) = Net::bind(NetConfig::new(loopback()), Arc::new(NoHandler))
        .await
        .unwrap();
    let err = late.join(addr(&c), &token, NodeId(10)).await.unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Refused {
                code: ErrorCode::NoSigner,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_lane_delivers_frames_in_order_including_5_mib() {
    let ca = new_ca("hive");
    let (a, _ca) = node(&ca, 1).await;
    let (b, mut cb) = node(&ca, 2).await;
    let mut sent = Vec::new();
    for i in 0..200u32 {
        let len = (i as usize * 997) % 20_000 + 1;
        let frame: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
        sent.push(Bytes::from(frame));
    }
    let big: Vec<u8> = (0..5 * 1024 * 1024).map(|j| (j % 251) as u8).collect();
    sent.insert(100, Bytes::from(big));
    for f in &sent {
        a.send_frame(addr(&b), f.clone()).unwrap();
    }
    for (i, expected) in sent.iter().enumerate() {
        let got: InboundFrame = tokio::time::timeout(DEADLINE, cb.frames.recv())
            .await
            .expect("frame in time")
            .expect("channel open");
        assert_eq!(got.peer, NodeId(1));
        assert_eq!(
            got.from,
            addr(&a),
            "the lane comes from the node's one address"
        );
        assert_eq!(got.frame.len(), expected.len(), "frame {i}");
        assert!(got.frame == *expected, "frame {i} content");
    }
    assert_eq!(get(&a.counters().lane_frames_sent), sent.len() as u64);
    assert!(matches!(
        a.send_frame(addr(&b), Bytes::from(vec![0u8; MAX_STREAM_BYTES + 1])),
        Err(NetError::FrameTooLarge { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_port_carries_gossip_and_quic_and_refuses_hostile_datagrams() {
    let ca = new_ca("hive");
    let key = Key::from_bytes([42; 32]);
    let (a, _ca) = node(&ca, 1).await;
    let (b, mut cb) = node(&ca, 2).await;
    let ga = GossipCrypto::new(
        NodeId(1),
        1_000,
        Keyring::new(key.clone()),
        a.counters().clone(),
        None,
    );
    let gb = GossipCrypto::new(
        NodeId(2),
        1_000,
        Keyring::new(key),
        b.counters().clone(),
        None,
    );

    // Gossip and a QUIC request on the same port, interleaved.
    let sealed = ga.seal(b"membership update").unwrap();
    a.send_gossip(addr(&b), &sealed).await.unwrap();
    assert_eq!(
        ping(&a, &b, Some(2)).await.unwrap(),
        ControlResponse::Pong { node: NodeId(2) }
    );
    let (from, datagram) = tokio::time::timeout(DEADLINE, cb.gossip.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, addr(&a), "gossip comes from the same address as QUIC");
    assert_eq!(
        gb.open(&datagram).unwrap(),
        (NodeId(1), b"membership update".to_vec())
    );

    // Hostile datagrams from a plain socket.
    let evil = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    let target = addr(&b);
    let mut hostile: Vec<Vec<u8>> = Vec::new();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for len in [1usize, 7, 45, 46, 300, 1399] {
        let mut junk = vec![0u8; len];
        for byte in junk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        junk[0] &= !0x40; // goes to gossip, not to quinn
        hostile.push(junk);
    }
    let good = ga.seal(b"state").unwrap();
    hostile.push(good[..good.len() - 1].to_vec()); // truncated
    hostile.push(datagram.to_vec()); // replayed
    let mut forged = good.clone();
    forged[40] ^= 0x10;
    hostile.push(forged); // forged
    let mut wrong_key = GossipCrypto::new(
        NodeId(1),
        5_000,
        Keyring::new(Key::from_bytes([9; 32])),
        Arc::new(NetCounters::default()),
        None,
    )
    .seal(b"x")
    .unwrap();
    hostile.push(wrong_key.clone());
    wrong_key[0] = 0x8B; // bad magic, fixed bit still clear
    hostile.push(wrong_key);
    for h in &hostile {
        evil.send_to(h, target).await.unwrap();
    }
    // Junk with the fixed bit set goes to quinn, which drops it.
    for _ in 0..20 {
        evil.send_to(&[0xC3u8; 64], target).await.unwrap();
        evil.send_to(&[0x41u8; 1200], target).await.unwrap();
    }
    let mut refused = 0;
    let mut opened = 0;
    while refused + opened < hostile.len() {
        let (_, d) = tokio::time::timeout(DEADLINE, cb.gossip.recv())
            .await
            .expect("every hostile datagram reaches the gossip channel")
            .unwrap();
        match gb.open(&d) {
            Ok(_) => opened += 1,
            Err(_) => refused += 1,
        }
    }
    assert_eq!(opened, 0, "nothing hostile opens");
    let c = b.counters();
    assert_eq!(c.envelope_refused_total(), hostile.len() as u64);
    assert_eq!(get(&c.envelope_replayed), 1);
    assert!(get(&c.envelope_forged) >= 2, "truncated and forged");
    assert!(get(&c.envelope_unknown_key) >= 1);
    assert!(get(&c.envelope_bad_magic) >= 1);
    assert!(get(&c.envelope_too_short) >= 2);
    // The port still serves QUIC, and a fresh gossip datagram still opens.
    assert_eq!(
        ping(&a, &b, Some(2)).await.unwrap(),
        ControlResponse::Pong { node: NodeId(2) }
    );
    a.send_gossip(target, &ga.seal(b"still here").unwrap())
        .await
        .unwrap();
    let (_, d) = tokio::time::timeout(DEADLINE, cb.gossip.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gb.open(&d).unwrap().1, b"still here");
    // The socket refuses to send what QUIC would claim.
    assert!(a.send_gossip(target, &[0x40, 1, 2]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyring_ops_over_the_control_plane_from_the_admin() {
    use aware_agent::net::gossip::KeyringHandler;
    let ca = new_ca("hive");
    let counters = Arc::new(NetCounters::default());
    let k1 = Key::from_bytes([1; 32]);
    let gossip = Arc::new(GossipCrypto::new(
        NodeId(1),
        1,
        Keyring::new(k1.clone()),
        counters,
        None,
    ));
    let mut cfg = NetConfig::new(loopback());
    cfg.credentials = Some(node_creds(&ca, 1));
    let handler = KeyringHandler {
        gossip: gossip.clone(),
        next: NoHandler,
    };
    let (a, _ca) = Net::bind(cfg, Arc::new(handler)).await.unwrap();
    // The CLI's path: `ca init` files, then an admin transport from them.
    let dir = tempfile::tempdir().unwrap();
    ca.save(dir.path()).unwrap();
    ca.issue_admin(now())
        .unwrap()
        .save(dir.path(), pki::ADMIN_STEM)
        .unwrap();
    let admin = Net::admin(dir.path(), "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    let k2 = Key::from_bytes([2; 32]);
    let steps = [
        ControlRequest::KeyringInstall {
            key: k2.to_base64(),
        },
        ControlRequest::KeyringUse {
            key_id: k2.id().to_string(),
        },
        ControlRequest::KeyringRemove {
            key_id: k1.id().to_string(),
        },
    ];
    for step in &steps {
        let r = admin
            .request(addr(&a), Some(NodeId(1)), step)
            .await
            .unwrap();
        assert!(matches!(r, ControlResponse::Keyring { .. }), "{r:?}");
    }
    assert_eq!(gossip.keyring().ids(), vec![k2.id()]);
    let r = admin
        .request(
            addr(&a),
            Some(NodeId(1)),
            &ControlRequest::KeyringRemove {
                key_id: k2.id().to_string(),
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            ControlResponse::Error {
                code: ErrorCode::Keyring,
                ..
            }
        ),
        "{r:?}"
    );
    // The admin certificate cannot serve.
    assert!(tls::server_config(&ca.issue_admin(now()).unwrap()).is_err());
    assert!(admin.identity() == Some(Identity::Admin));
}

/// Handshake figure (not a pass/fail timing): `cargo test -p aware-agent --release --test
/// transport -- --ignored --nocapture handshake_figure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn handshake_figure() {
    let ca = new_ca("hive");
    let (client, _cc) = node(&ca, 1).await;
    let mut servers = Vec::new();
    for i in 0..200u64 {
        servers.push(node(&ca, 1000 + i).await);
    }
    let mut dial_us = Vec::new();
    let mut warm_us = Vec::new();
    for (i, (server, _)) in servers.iter().enumerate() {
        let id = Some(1000 + i as u64);
        #[allow(clippy::disallowed_methods)]
        let t = Instant::now();
        ping(&client, server, id).await.unwrap();
        dial_us.push(t.elapsed().as_micros() as u64);
        #[allow(clippy::disallowed_methods)]
        let t = Instant::now();
        ping(&client, server, id).await.unwrap();
        warm_us.push(t.elapsed().as_micros() as u64);
    }
    dial_us.sort_unstable();
    warm_us.sort_unstable();
    let p = |v: &Vec<u64>, q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "new connection (mTLS handshake + admission ping + ping): p50 {} us, p99 {} us; \
         request on a cached connection: p50 {} us, p99 {} us",
        p(&dial_us, 0.5),
        p(&dial_us, 0.99),
        p(&warm_us, 0.5),
        p(&warm_us, 0.99)
    );
}

/// Splits the figure above: the handshake alone, then the first request on the new connection.
/// `cargo test -p aware-agent --release --test transport -- --ignored --nocapture handshake_split`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn handshake_split_figure() {
    let ca = new_ca("hive");
    let (a, _ca) = node(&ca, 1).await;
    let creds = node_creds(&ca, 2);
    let crypto = tls::client_config(&creds).unwrap();
    let client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap(),
    ));
    let endpoint = quinn::Endpoint::client(loopback()).unwrap();
    let mut hs = Vec::new();
    let mut first = Vec::new();
    for _ in 0..200 {
        #[allow(clippy::disallowed_methods)]
        let t = Instant::now();
        let conn = endpoint
            .connect_with(client.clone(), addr(&a), &pki::node_name(NodeId(1)))
            .unwrap()
            .await
            .unwrap();
        hs.push(t.elapsed().as_micros() as u64);
        #[allow(clippy::disallowed_methods)]
        let t = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&aware_agent::net::control::encode(&ControlRequest::Ping).unwrap())
            .await
            .unwrap();
        send.finish().unwrap();
        recv.read_to_end(1 << 20).await.unwrap();
        first.push(t.elapsed().as_micros() as u64);
        conn.close(0u32.into(), b"");
    }
    hs.sort_unstable();
    first.sort_unstable();
    println!(
        "handshake p50 {} us p99 {} us; first request p50 {} us p99 {} us",
        hs[100], hs[198], first[100], first[198]
    );
}
