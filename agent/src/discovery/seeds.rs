//! Static seeds: `ip:port` literals and `host:port` names. Names are resolved at start, again
//! every `seed_refresh_ms`, and retried quickly (with backoff) while any of them fails, so a
//! seed whose DNS record appears late or changes is still found. Seeds carry no node id.

use super::backoff::Backoff;
use super::{DiscoveryError, Me, Sink, Source, sleep_or_stop};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;

/// At most this many addresses are taken from one name's resolution.
pub const MAX_ADDRS_PER_SEED: usize = 16;
/// One name resolution may take at most this long (the system resolver has its own, longer,
/// timeouts; a hung resolver must not stall the other seeds).
pub const RESOLVE_TIMEOUT_MS: u64 = 5_000;
/// Retry pacing while a name does not resolve.
const RETRY_MIN_MS: u64 = 200;

/// One configured seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeedSpec {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

impl SeedSpec {
    /// Parses `ip:port`, `[ipv6]:port` or `host:port`.
    pub fn parse(s: &str) -> Result<SeedSpec, DiscoveryError> {
        let bad = |why: &str| DiscoveryError::BadSeed {
            seed: s.to_string(),
            why: why.to_string(),
        };
        if let Ok(a) = s.parse::<SocketAddr>() {
            if a.port() == 0 {
                return Err(bad("port 0 is not a gossip port"));
            }
            return Ok(SeedSpec::Addr(a));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(bad("expected host:port or ip:port"));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port after the last ':' is not a number in 1..=65535"))?;
        if port == 0 {
            return Err(bad("port 0 is not a gossip port"));
        }
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !host_ok {
            return Err(bad(
                "not an IP address, and the host name is empty or has characters other than letters, digits, '-', '_' and '.' (IPv6 goes in brackets: [::1]:7000)",
            ));
        }
        Ok(SeedSpec::Name {
            host: host.to_string(),
            port,
        })
    }

    /// Parses every seed and checks literal addresses against the node's address family.
    pub(crate) fn parse_all(seeds: &[String], me: &Me) -> Result<Vec<SeedSpec>, DiscoveryError> {
        let mut out: Vec<SeedSpec> = Vec::new();
        for s in seeds {
            let spec = SeedSpec::parse(s)?;
            if let SeedSpec::Addr(a) = &spec
                && !me.same_family(a)
            {
                return Err(DiscoveryError::BadSeed {
                    seed: s.clone(),
                    why: format!(
                        "is {} but this node advertises {} ({}); its socket cannot reach it",
                        family(a),
                        family(&me.addr),
                        me.addr
                    ),
                });
            }
            if !out.contains(&spec) {
                out.push(spec);
            }
        }
        Ok(out)
    }
}

fn family(a: &SocketAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Resolves `host:port` once, bounded by [`RESOLVE_TIMEOUT_MS`]; only addresses of the node's
/// family, at most [`MAX_ADDRS_PER_SEED`].
async fn resolve(host: &str, port: u16, me: &Me) -> Result<BTreeSet<SocketAddr>, String> {
    resolve_like(host, port, me.addr).await
}

/// `host:port`'s addresses in `like`'s address family (at most [`MAX_ADDRS_PER_SEED`]), with
/// the lookup bounded by [`RESOLVE_TIMEOUT_MS`]; the error says why there are none.
pub async fn resolve_like(
    host: &str,
    port: u16,
    like: SocketAddr,
) -> Result<BTreeSet<SocketAddr>, String> {
    let lookup = tokio::net::lookup_host((host, port));
    let addrs = tokio::time::timeout(Duration::from_millis(RESOLVE_TIMEOUT_MS), lookup)
        .await
        .map_err(|_| format!("no answer within {RESOLVE_TIMEOUT_MS} ms"))?
        .map_err(|e| e.to_string())?;
    let set: BTreeSet<SocketAddr> = addrs
        .filter(|a| a.is_ipv4() == like.is_ipv4())
        .take(MAX_ADDRS_PER_SEED)
        .collect();
    if set.is_empty() {
        return Err(format!("no {} address", family(&like)));
    }
    Ok(set)
}

/// Reports the literal seeds once, then keeps the named ones resolved.
pub(crate) async fn run(
    specs: Vec<SeedSpec>,
    refresh: Duration,
    mut sink: Sink,
    mut stop: watch::Receiver<bool>,
) {
    let me = sink.me.clone();
    let mut names: Vec<(String, u16)> = Vec::new();
    for spec in specs {
        match spec {
            SeedSpec::Addr(a) => {
                if !sink.seen(None, a, Source::Seed).await {
                    return;
                }
            }
            SeedSpec::Name { host, port } => names.push((host, port)),
        }
    }
    if names.is_empty() {
        return;
    }
    // Per name: its last good resolution, and whether its failure has been logged.
    let mut resolved: HashMap<(String, u16), BTreeSet<SocketAddr>> = HashMap::new();
    let mut failing: BTreeSet<(String, u16)> = BTreeSet::new();
    let max_retry_ms = u64::try_from(refresh.as_millis())
        .unwrap_or(u64::MAX)
        .max(RETRY_MIN_MS);
    let mut backoff = Backoff::new(RETRY_MIN_MS, max_retry_ms, me.node.0);
    loop {
        let mut any_failed = false;
        for key in &names {
            let (host, port) = key;
            match resolve(host, *port, &me).await {
                Ok(now) => {
                    if failing.remove(key) {
                        tracing::info!(seed = %format!("{host}:{port}"), "seed resolves again");
                    }
                    let before = resolved
                        .insert(key.clone(), now.clone())
                        .unwrap_or_default();
                    for a in before.difference(&now) {
                        if !sink.gone(None, *a).await {
                            return;
                        }
                    }
                    for a in &now {
                        if !sink.seen(None, *a, Source::Seed).await {
                            return;
                        }
                    }
                }
                Err(why) => {
                    any_failed = true;
                    // Once per failure streak, not per retry.
                    if failing.insert(key.clone()) {
                        tracing::warn!(seed = %format!("{host}:{port}"), %why, "seed does not resolve; retrying");
                    }
                }
            }
        }
        let wait = if any_failed {
            backoff.next_delay()
        } else {
            backoff.reset();
            refresh
        };
        if sleep_or_stop(wait, &mut stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_core::id::NodeId;

    fn me() -> Me {
        Me {
            colony: "c".into(),
            node: NodeId(1),
            addr: "10.0.0.1:7000".parse().expect("addr"),
        }
    }

    #[test]
    fn parses_literals_and_names() {
        assert_eq!(
            SeedSpec::parse("10.0.0.2:7000").ok(),
            Some(SeedSpec::Addr("10.0.0.2:7000".parse().expect("addr")))
        );
        assert_eq!(
            SeedSpec::parse("[fd00::1]:7000").ok(),
            Some(SeedSpec::Addr("[fd00::1]:7000".parse().expect("addr")))
        );
        assert_eq!(
            SeedSpec::parse("rack-1.example:7946").ok(),
            Some(SeedSpec::Name {
                host: "rack-1.example".into(),
                port: 7946
            })
        );
        for (bad, says) in [
            ("rack-1", "host:port"),
            ("rack-1:", "port"),
            ("rack-1:99999", "port"),
            ("rack-1:0", "port 0"),
            ("10.0.0.2:0", "port 0"),
            (":7000", "host name"),
            ("fd00::1:7000", "brackets"),
            ("a b:7000", "host name"),
        ] {
            let e = SeedSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn parse_all_dedupes_and_checks_the_family() {
        let seeds: Vec<String> = ["10.0.0.2:7000", "10.0.0.2:7000", "h:1", "h:1", "h:2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let specs = SeedSpec::parse_all(&seeds, &me()).expect("valid");
        assert_eq!(specs.len(), 3, "{specs:?}");
        let e = SeedSpec::parse_all(&["[::1]:7000".to_string()], &me())
            .unwrap_err()
            .to_string();
        assert!(e.contains("IPv6") && e.contains("IPv4"), "{e}");
    }
}
