//! Hostile input at a real agent's one UDP port, with the real binary: random datagrams,
//! truncated, replayed and forged sealed datagrams, a datagram sealed under a key the colony does
//! not hold, a QUIC client whose admin certificate comes from another CA, joins with an expired
//! token and with a token from another colony CA. Every one is refused and counted, and the
//! colony keeps working (same queen, members up, status answers). The `Colony` guard kills every
//! agent, even on panic.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods, // deadlines and token times read the clock
    clippy::disallowed_types    // the test sends raw datagrams
)]

mod common;

use aware_agent::net::gossip::{generate_key, load_keyring};
use aware_agent::net::{ErrorCode, Net, NetConfig, NetError, NoHandler};
use aware_agent::pki::Ca;
use common::{Colony, all_known, one_queen};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use swarm_core::NodeId;
use swarm_core::envelope::{self, Keyring};

const SETTLE: Duration = Duration::from_secs(30);

/// A plain colony frame header claiming `sender`, then junk.
fn plain_frame(sender: u64) -> Vec<u8> {
    let mut f = vec![0xA7, 3, 2];
    f.extend_from_slice(&sender.to_le_bytes());
    f.extend_from_slice(b"not a bincode body");
    f
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn hostile_input_is_refused_counted_and_the_colony_keeps_serving() {
    let mut colony = Colony::new(2);
    colony.start_all();
    let before = colony.wait_for("one queen, both up", SETTLE, |s| {
        one_queen(s).is_some() && all_known(s)
    });
    let queen = one_queen(&before).unwrap();
    let target: SocketAddr = colony.addr(0).parse().unwrap();
    let t0 = before.iter().find(|(i, _)| *i == 0).unwrap().1.counters;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut bad_gossip = 0u64;
    rt.block_on(async {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // 1. Random datagrams: those with QUIC's fixed bit go to quinn (which drops what is not
        //    QUIC), the others to gossip, half of them with the envelope's magic byte.
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for i in 0..400 {
            let len = 1 + (rng.next() % 1399) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if i % 2 == 0 {
                d[0] = envelope::MAGIC;
            }
            if d[0] & 0x40 == 0 {
                bad_gossip += 1;
            }
            sock.send_to(&d, target).await.unwrap();
            if i % 32 == 31 {
                // Paced: a burst beyond the kernel's socket buffer would be dropped there,
                // silently and uncounted, which is not what this test is about.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // 2. Sealed datagrams: replayed, truncated, forged, and under a foreign key.
        let ring = load_keyring(&colony.ca).unwrap().unwrap();
        let sealed = envelope::seal(&ring, NodeId(0xdead), 1, 1, &plain_frame(0xdead)).unwrap();
        sock.send_to(&sealed, target).await.unwrap(); // opens (then the node refuses its body)
        sock.send_to(&sealed, target).await.unwrap(); // replayed
        sock.send_to(&sealed[..sealed.len() - 5], target)
            .await
            .unwrap(); // truncated
        let mut forged = sealed.clone();
        let mid = forged.len() / 2;
        forged[mid] ^= 0x01;
        sock.send_to(&forged, target).await.unwrap(); // forged
        let foreign = Keyring::new(generate_key().unwrap());
        let other = envelope::seal(&foreign, NodeId(0xbeef), 1, 1, &plain_frame(0xbeef)).unwrap();
        sock.send_to(&other, target).await.unwrap(); // unknown key
        bad_gossip += 4;

        // 3. An admin certificate from another CA: the handshake is refused.
        let other_ca = colony.root.path().join("other-ca");
        aware_agent::trust::init_local_colony(&other_ca, "test").unwrap();
        let refused = aware_agent::control_plane::admin_request(
            &other_ca,
            target,
            aware_agent::control::ControlRequest::Status,
        )
        .await;
        assert!(refused.is_err(), "{refused:?}");

        // 4. Joins: an expired token (signed by the right CA) is refused by the agent; a token
        //    of another CA pins a CA the agent does not show, so the joiner gives up.
        let ca = Ca::load(&colony.ca).unwrap();
        let past = SystemTime::now() - Duration::from_secs(7200);
        let expired = ca.create_token(Duration::from_secs(3600), past).unwrap();
        let (joiner, _ch) = Net::bind(
            NetConfig::new("127.0.0.1:0".parse().unwrap()),
            Arc::new(NoHandler),
        )
        .await
        .unwrap();
        match joiner.join(target, &expired, NodeId(0x77)).await {
            Err(NetError::Refused {
                code: ErrorCode::TokenRefused,
                message,
            }) => assert!(message.contains("expired"), "{message}"),
            other => panic!("an expired token was not refused: {other:?}"),
        }
        let foreign_token = Ca::load(&other_ca)
            .unwrap()
            .create_token(Duration::from_secs(3600), SystemTime::now())
            .unwrap();
        assert!(
            joiner
                .join(target, &foreign_token, NodeId(0x78))
                .await
                .is_err()
        );
        joiner.close();
    });

    // Refused and counted; the colony is unchanged and keeps gossiping.
    let after = colony.wait_for("the refusals counted", SETTLE, |s| {
        let c = s.iter().find(|(i, _)| *i == 0).unwrap().1.counters;
        c.transport.refused_gossip + c.transport.dropped_in
            >= t0.transport.refused_gossip + t0.transport.dropped_in + bad_gossip
            && c.transport.refused_quic >= t0.transport.refused_quic + 2
    });
    assert_eq!(one_queen(&after), Some(queen));
    assert!(all_known(&after));
    let t1 = after.iter().find(|(i, _)| *i == 0).unwrap().1.counters;
    assert!(t1.packets_in > t0.packets_in, "gossip goes on");
    eprintln!(
        "hostile: refused_gossip {} -> {}, refused_quic {} -> {} ({bad_gossip} bad gossip datagrams sent)",
        t0.transport.refused_gossip,
        t1.transport.refused_gossip,
        t0.transport.refused_quic,
        t1.transport.refused_quic
    );
}
