//! The join flow and key rotation with the real binary on loopback:
//!
//! - `token create`, then a node holding no CA key joins with the token through a worker that
//!   does not hold the CA key either (the worker forwards the CSR to its seed, a signer): the
//!   node's key is made on the node (its `node.key` is in its data directory only), it gets the
//!   keyring over mutual TLS and takes part in the colony; a node with an expired token or no
//!   token at all never starts;
//! - `keys generate|install|use|remove` on a running colony: every member switches, no gossip
//!   is refused on the way, and every member stays up.
//!
//! The `Colony` guard kills every agent it started; the extra processes have kill deadlines.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // deadlines read the clock

mod common;

use common::{BIN, Colony, all_known, one_queen};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

const SETTLE: Duration = Duration::from_secs(30);

fn cli(args: &[&str], ca: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("AWARE_ADMIN_DIR", ca)
        .env_remove("AWARE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `aware-agent run ARGS` that must fail: its exit code and stderr, killed after 30 s.
fn run_failing(args: &[&str]) -> (i32, String) {
    common::output_within(
        Command::new(BIN)
            .arg("run")
            .args(args)
            .env_remove("AWARE_CONFIG"),
        Duration::from_secs(30),
    )
}

#[test]
fn a_node_joins_with_a_token_through_a_worker_and_a_bad_token_is_never_admitted() {
    // Agents 0 and 1 start with the CA directory; then agent 1 restarts without it (its
    // certificate and keyring stay in its data directory), so it is no signer: agent 2 joins
    // through agent 1, which forwards the CSR to a signer among its seeds (agent 0). Both give
    // their seeds by host name (`localhost:PORT`): resolved at start for the CSR and the
    // forwarding, and by discovery while they run.
    let mut colony = Colony::new(3);
    colony.expect = 2;
    colony.start(0);
    colony.start(1);
    colony.wait_for("two agents, one queen", SETTLE, |s| {
        s.len() == 2 && one_queen(s).is_some() && all_known(s)
    });
    colony.kill9(1);
    let ports: Vec<u16> = colony.agents.iter().map(|a| a.port).collect();
    let by_name = |i: usize| format!("localhost:{}", ports[i]);
    let child = Command::new(BIN)
        .arg("run")
        .env("AWARE_COLONY", "test")
        .env("AWARE_DATA_DIR", &colony.agents[1].dir)
        .env("AWARE_BIND", colony.addr(1))
        .env("AWARE_SEEDS", format!("{},{}", by_name(0), by_name(1)))
        .env("AWARE_LOG_FORMAT", "json")
        .env_remove("AWARE_CONFIG")
        .env_remove("AWARE_CA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(colony.log(1)).unwrap())
        .spawn()
        .unwrap();
    colony.agents[1].child = Some(child);
    colony.wait_for("agent 1 back without the CA", SETTLE, |s| {
        s.len() == 2 && one_queen(s).is_some() && all_known(s)
    });
    let (code, token, err) = cli(
        &[
            "token",
            "create",
            "--ca-dir",
            colony.ca.to_str().unwrap(),
            "--ttl",
            "10m",
        ],
        &colony.ca,
    );
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();

    // No token and no CA: refused at once, saying what is missing.
    let port = common::free_ports(1)[0];
    let bind = format!("127.0.0.1:{port}");
    let lonely = colony.root.path().join("lonely");
    let (code, err) = run_failing(&[
        "--colony",
        "test",
        "--bind",
        &bind,
        "--data-dir",
        lonely.to_str().unwrap(),
        "--seeds",
        &colony.addr(0),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("holds no node certificate"), "{err}");

    // An expired token (signed by the colony CA): refused by the agent it asks.
    let ca = aware_agent::pki::Ca::load(&colony.ca).unwrap();
    let expired = ca
        .create_token(
            Duration::from_secs(60),
            SystemTime::now() - Duration::from_secs(3600),
        )
        .unwrap();
    let (code, err) = run_failing(&[
        "--colony",
        "test",
        "--bind",
        &bind,
        "--data-dir",
        lonely.to_str().unwrap(),
        "--seeds",
        &colony.addr(1),
        "--join-token",
        &expired,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("expired"), "{err}");
    assert!(!lonely.join("tls").join("node.crt").exists());

    // The good token through agent 1.
    let child = Command::new(BIN)
        .arg("run")
        .env("AWARE_COLONY", "test")
        .env("AWARE_DATA_DIR", &colony.agents[2].dir)
        .env("AWARE_BIND", colony.addr(2))
        .env("AWARE_SEEDS", by_name(1))
        .env("AWARE_JOIN_TOKEN", &token)
        .env("AWARE_LOG_FORMAT", "json")
        .env_remove("AWARE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(colony.log(2)).unwrap())
        .spawn()
        .unwrap();
    colony.agents[2].child = Some(child);
    let s = colony.wait_for("the joiner is a member", SETTLE, |s| {
        s.len() == 3 && one_queen(s).is_some() && all_known(s)
    });
    assert_eq!(s.len(), 3);
    let tls = colony.agents[2].dir.join("tls");
    assert!(
        tls.join("node.key").exists(),
        "the key was made on the node"
    );
    assert!(
        colony.agents[2].dir.join("keyring").exists(),
        "keyring fetched"
    );
    let log = std::fs::read_to_string(colony.log(2)).unwrap();
    assert!(log.contains("joined the colony"), "{log}");
}

#[test]
fn the_gossip_key_rotates_on_every_member_without_downtime() {
    let mut colony = Colony::new(3);
    colony.start_all();
    let before = colony.wait_for("one queen, all up", SETTLE, |s| {
        one_queen(s).is_some() && all_known(s)
    });
    let queen = one_queen(&before).unwrap();
    let at = colony.addr(0);
    let ca = colony.ca.clone();
    let keys = |op: &[&str]| {
        let mut args = vec!["keys"];
        args.extend_from_slice(op);
        args.extend_from_slice(&["--advertise", &at, "--json"]);
        let (code, out, err) = cli(&args, &ca);
        assert_eq!(code, 0, "keys {op:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let rows = v.as_array().unwrap().clone();
        assert_eq!(rows.len(), 3, "every member answers: {out}");
        rows
    };
    let old = keys(&["list"])[0]["primary"].as_str().unwrap().to_string();
    let (code, new_key, err) = cli(&["keys", "generate"], &ca);
    assert_eq!(code, 0, "{err}");
    keys(&["install", new_key.trim()]);
    let listed = keys(&["list"]);
    let new_id = listed[0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .find(|k| *k != old)
        .unwrap();
    for row in keys(&["use", &new_id]) {
        assert_eq!(row["primary"].as_str(), Some(new_id.as_str()), "{row}");
    }
    for row in keys(&["remove", &old]) {
        assert_eq!(row["keys"].as_array().unwrap().len(), 1, "{row}");
    }
    // Gossip went on under the new key: more packets in, none refused, same queen, all up.
    let after = colony.wait_for("gossip under the new key", SETTLE, |s| {
        s.iter().all(|(i, st)| {
            let b = &before.iter().find(|(j, _)| j == i).unwrap().1;
            st.counters.packets_in > b.counters.packets_in + 20
        })
    });
    for (i, st) in &after {
        assert_eq!(st.counters.transport.refused_gossip, 0, "agent {i}");
    }
    assert_eq!(one_queen(&after), Some(queen));
    assert!(all_known(&after));
    for a in &colony.agents {
        let ring = aware_agent::net::gossip::load_keyring(&a.dir)
            .unwrap()
            .unwrap();
        assert_eq!(ring.primary_id().to_string(), new_id, "saved on disk");
    }
}

/// Replaces the node certificate in `tls` by one for the same node and key slot, signed by the
/// colony CA as if `age` ago (so it ends `CERT_VALIDITY_DAYS - age` from now).
fn backdate_node_cert(ca: &std::path::Path, tls: &std::path::Path, age: Duration) {
    use aware_agent::pki::{self, Ca, Credentials, Identity};
    let node = match Credentials::load(tls, pki::NODE_STEM).unwrap().identity() {
        Identity::Node(n) => n,
        other => panic!("not a node certificate: {other:?}"),
    };
    let ca = Ca::load(ca).unwrap();
    let (key, csr) = pki::node_key_and_csr(node).unwrap();
    let cert = ca.sign_csr(&csr, node, SystemTime::now() - age).unwrap();
    Credentials::new(&cert, &key, ca.cert().clone())
        .unwrap()
        .save(tls, pki::NODE_STEM)
        .unwrap();
}

fn node_cert_days_left(tls: &std::path::Path) -> f64 {
    let c = aware_agent::pki::Credentials::load(tls, aware_agent::pki::NODE_STEM).unwrap();
    match c.not_after().duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64() / 86_400.0,
        Err(e) => -e.duration().as_secs_f64() / 86_400.0,
    }
}

#[test]
fn a_certificate_near_its_end_is_renewed_at_start_and_an_expired_one_stops_a_node_without_the_ca() {
    let day = Duration::from_secs(86_400);
    let mut colony = Colony::new(1);
    colony.expect = 1;
    colony.start(0);
    colony.wait_for("the agent up", SETTLE, |s| one_queen(s).is_some());
    colony.kill9(0);
    let tls = colony.agents[0].dir.join("tls");
    assert!(node_cert_days_left(&tls) > 364.0);

    // 20 days left: a node holding the CA renews it at start.
    let year = day * aware_agent::pki::CERT_VALIDITY_DAYS as u32;
    backdate_node_cert(&colony.ca, &tls, year - day * 20);
    assert!((19.0..21.0).contains(&node_cert_days_left(&tls)));
    colony.start(0);
    colony.wait_for("the agent up again", SETTLE, |s| one_queen(s).is_some());
    colony.kill9(0);
    assert!(node_cert_days_left(&tls) > 364.0, "renewed for a year");
    let log = std::fs::read_to_string(colony.log(0)).unwrap();
    assert!(log.contains("renewed this node's certificate"), "{log}");

    // Expired, and no CA to renew it: the node refuses to start, saying what to do.
    backdate_node_cert(&colony.ca, &tls, year + day);
    let dir = colony.agents[0].dir.to_str().unwrap().to_owned();
    let bind = colony.addr(0);
    let (code, err) = run_failing(&["--colony", "test", "--bind", &bind, "--data-dir", &dir]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("certificate expired at"), "{err}");
    assert!(err.contains(tls.to_str().unwrap()), "{err}");
    assert!(err.contains("--ca-dir"), "{err}");
}
