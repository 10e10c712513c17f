//! Real agents that find each other through an etcd registry alone (no seeds, no mDNS), with
//! the secure transport and a private etcd server (`support/etcd.rs`, Debian's `etcd`); then
//! etcd is killed mid-run and the colony keeps working on gossip alone: a kill -9 of the queen
//! still gets a new queen. The same over https with client certificates (etcd
//! `--client-cert-auth`). The `Colony` guard and `EtcdServer`'s drop kill every process.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // deadlines read the clock

mod common;
mod support;

use common::{Colony, all_known, one_queen};
use std::time::Duration;
use support::etcd::EtcdServer;

const SETTLE: Duration = Duration::from_secs(30);

#[test]
fn agents_find_each_other_by_etcd_and_survive_etcd_going_away() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut etcd = rt.block_on(EtcdServer::start());
    let mut colony = Colony::new(3);
    colony.seeds = String::new();
    colony
        .extra_env
        .push(("AWARE_ETCD".into(), etcd.endpoint()));
    colony.start_all();
    let s = colony.wait_for(
        "one queen, every member found by etcd and in the roster",
        SETTLE,
        |s| one_queen(s).is_some() && common::roster_settled(s),
    );
    let queen = one_queen(&s).unwrap();
    let qi = s.iter().find(|(_, st)| st.node == queen).unwrap().0;
    let term = s[0].1.term;

    etcd.kill9();
    colony.kill9(qi);
    colony.wait_for("a new queen with etcd gone", SETTLE, |s| {
        one_queen(s).is_some_and(|q| q != queen) && s.iter().all(|(_, st)| st.term > term)
    });
}

#[test]
fn agents_find_each_other_through_an_etcd_that_requires_client_certificates() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let etcd = rt.block_on(EtcdServer::start_tls());
    let tls = etcd.client_tls().unwrap().clone();
    let mut colony = Colony::new(3);
    colony.seeds = String::new();
    for (k, v) in [
        ("AWARE_ETCD", etcd.endpoint()),
        ("AWARE_ETCD_CA", tls.ca.display().to_string()),
        ("AWARE_ETCD_CERT", tls.cert.unwrap().display().to_string()),
        ("AWARE_ETCD_KEY", tls.key.unwrap().display().to_string()),
    ] {
        colony.extra_env.push((k.into(), v));
    }
    colony.start_all();
    colony.wait_for(
        "one queen, every member found by etcd over TLS",
        SETTLE,
        |s| one_queen(s).is_some() && all_known(s),
    );
}
