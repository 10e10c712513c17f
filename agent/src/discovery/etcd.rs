//! The etcd registry, for colonies that span subnets (where mDNS does not reach). Registers
//! `<prefix>/<colony>/members/<node-id>` → JSON [`MemberRecord`] under a lease of
//! `lease_ttl_s`, keeps the lease alive every third of its TTL, lists the members once and then
//! watches the prefix for additions (and removals, which only make discovery forget a peer).
//!
//! etcd is optional infrastructure: every call is bounded by `call_timeout_ms` (etcd-client
//! has no timeout of its own; a hung etcd would block for 40 s or more), a failure ends the
//! session, and a new session (connect, grant a fresh lease, put, list, watch) is retried with
//! backoff. The outage is logged once when it starts and once when it ends, not per retry.
//! Nothing here blocks the other sources or the driver.
//!
//! TLS (`tls`, for `https://` endpoints): etcd's CA and, for an etcd with `--client-cert-auth`,
//! a client certificate and key, through etcd-client's rustls with the ring provider (the one
//! provider of the whole agent).

use super::backoff::Backoff;
use super::{
    DiscoveryError, MAX_KNOWN_PEERS, Me, Sink, Source, parse_node_hex, sleep_or_stop, stopped,
};
use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions,
    WatchOptions, WatchResponse,
};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use swarm_core::id::NodeId;
use tokio::sync::watch;

/// A member record larger than this is ignored (hostile or broken writer).
pub const MAX_RECORD_BYTES: usize = 1024;
/// etcd grants at least 2 s whatever is asked.
pub const MIN_LEASE_TTL_S: i64 = 2;
const RETRY_MIN_MS: u64 = 100;

/// etcd settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://10.0.0.5:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix; members live under `<prefix>/<colony>/members/`.
    pub prefix: String,
    /// Lease TTL: a crashed member's key disappears this long after its last keep-alive.
    pub lease_ttl_s: i64,
    /// Bound on every single etcd call (connect, grant, put, get, watch, keep-alive reply).
    pub call_timeout_ms: u64,
    /// Longest wait between reconnection attempts.
    pub retry_max_ms: u64,
    /// TLS to etcd (`https://` endpoints); `None` for plain `http://`.
    pub tls: Option<EtcdTls>,
}

/// TLS to etcd: the CA that signed etcd's server certificate, and this node's client
/// certificate and key for an etcd that asks for one (`--client-cert-auth`). PEM files, read at
/// start (errors name the file) and again at each reconnection, so a renewed file is picked up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// CA certificate(s), PEM.
    pub ca: PathBuf,
    /// Client certificate, PEM (with `key`).
    pub cert: Option<PathBuf>,
    /// Client private key, PEM (with `cert`).
    pub key: Option<PathBuf>,
}

/// Largest PEM file read for etcd TLS.
pub const MAX_TLS_FILE_BYTES: usize = 256 * 1024;

impl EtcdTls {
    /// Reads the files into the client's TLS options.
    pub fn load(&self) -> Result<TlsOptions, DiscoveryError> {
        let read = |path: &Path| {
            crate::files::read_text_bounded(path, MAX_TLS_FILE_BYTES)
                .map_err(|e| DiscoveryError::Config(format!("etcd TLS: {}: {e}", path.display())))
        };
        let ca = read(&self.ca)?;
        if !ca.contains("-----BEGIN CERTIFICATE-----") {
            return Err(DiscoveryError::Config(format!(
                "etcd TLS: {}: no PEM certificate in it",
                self.ca.display()
            )));
        }
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(DiscoveryError::Config(
                    "etcd TLS: a client certificate needs its key, and a key its certificate (give both or neither)".into(),
                ));
            }
        }
        Ok(tls)
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            prefix: "/aware".to_string(),
            lease_ttl_s: 5,
            call_timeout_ms: 2_000,
            retry_max_ms: 5_000,
            tls: None,
        }
    }
}

impl EtcdConfig {
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        let bad = |why: String| Err(DiscoveryError::Config(format!("etcd: {why}")));
        if self.endpoints.is_empty() {
            return bad("no endpoints given".into());
        }
        if let Some(e) = self
            .endpoints
            .iter()
            .find(|e| e.is_empty() || e.chars().any(char::is_whitespace))
        {
            return bad(format!("endpoint {e:?} is not a URL"));
        }
        let https = self.tls.is_some();
        if let Some(e) = self
            .endpoints
            .iter()
            .find(|e| e.starts_with("https://") != https)
        {
            return bad(if https {
                format!("endpoint {e:?} is not https:// but TLS to etcd is configured")
            } else {
                format!(
                    "endpoint {e:?} is https:// but no etcd CA is configured (etcd_ca, --etcd-ca)"
                )
            });
        }
        if !self.prefix.starts_with('/')
            || self.prefix.ends_with('/')
            || self.prefix.chars().any(char::is_whitespace)
        {
            return bad(format!(
                "prefix {:?} must start with '/', not end with '/', and have no spaces",
                self.prefix
            ));
        }
        if !(MIN_LEASE_TTL_S..=3_600).contains(&self.lease_ttl_s) {
            return bad(format!(
                "lease_ttl_s = {} is outside {MIN_LEASE_TTL_S}..=3600",
                self.lease_ttl_s
            ));
        }
        let keepalive_ms = self.keepalive_period().as_millis();
        if !(100..=60_000).contains(&self.call_timeout_ms)
            || u128::from(self.call_timeout_ms) >= keepalive_ms * 2
        {
            return bad(format!(
                "call_timeout_ms = {} must be in 100..=60000 and shorter than two keep-alive periods ({} ms) so a hung etcd is noticed before the lease runs out",
                self.call_timeout_ms,
                keepalive_ms * 2
            ));
        }
        if !(RETRY_MIN_MS..=600_000).contains(&self.retry_max_ms) {
            return bad(format!(
                "retry_max_ms = {} is outside {RETRY_MIN_MS}..=600000",
                self.retry_max_ms
            ));
        }
        Ok(())
    }

    /// Keep-alives go out three times per TTL.
    fn keepalive_period(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.lease_ttl_s).unwrap_or(5) * 1000 / 3)
    }
}

/// The value stored under a member's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// 16 hex digits, as in the key.
    pub node: String,
    pub addr: SocketAddr,
    pub colony: String,
}

/// `<prefix>/<colony>/members/`
pub fn members_prefix(prefix: &str, colony: &str) -> String {
    format!("{prefix}/{colony}/members/")
}

/// `<prefix>/<colony>/members/<node-id>`
pub fn member_key(prefix: &str, colony: &str, node: NodeId) -> String {
    format!("{}{node}", members_prefix(prefix, colony))
}

/// Reads one member entry; every byte is untrusted.
fn decode_member(members: &str, key: &[u8], value: &[u8]) -> Result<(NodeId, SocketAddr), String> {
    let node = node_of_key(members, key)?;
    if value.len() > MAX_RECORD_BYTES {
        return Err(format!(
            "record of {} bytes exceeds {MAX_RECORD_BYTES}",
            value.len()
        ));
    }
    let rec: MemberRecord = serde_json::from_slice(value).map_err(|e| format!("record: {e}"))?;
    if parse_node_hex(&rec.node) != Some(node) {
        return Err(format!("record names node {:?}, the key {node}", rec.node));
    }
    if rec.addr.port() == 0 || rec.addr.ip().is_unspecified() {
        return Err(format!("record address {} is not reachable", rec.addr));
    }
    Ok((node, rec.addr))
}

fn node_of_key(members: &str, key: &[u8]) -> Result<NodeId, String> {
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
    key.strip_prefix(members)
        .and_then(parse_node_hex)
        .ok_or_else(|| format!("key {key:?} is not {members}<16 hex digits>"))
}

/// Our registration: the client that made it and its lease.
struct Registration {
    client: Client,
    lease: i64,
}

/// Runs the registry until discovery stops, then revokes the lease.
pub(crate) async fn run(me: Me, cfg: EtcdConfig, mut sink: Sink, mut stop: watch::Receiver<bool>) {
    let mut st = State {
        backoff: Backoff::new(RETRY_MIN_MS, cfg.retry_max_ms, me.node.0.rotate_left(17)),
        reg: None,
        known: IndexMap::new(),
        outage: false,
    };
    loop {
        match session(&me, &cfg, &mut sink, &mut stop, &mut st).await {
            Ok(()) => break,
            Err(e) => {
                if st.outage {
                    tracing::debug!(error = %e, "etcd still unreachable");
                } else {
                    tracing::warn!(
                        error = %e,
                        endpoints = ?cfg.endpoints,
                        "etcd unreachable; discovery goes on without it and keeps retrying"
                    );
                    st.outage = true;
                }
                if sleep_or_stop(st.backoff.next_delay(), &mut stop).await {
                    break;
                }
            }
        }
    }
    if let Some(mut r) = st.reg.take() {
        let ms = cfg.call_timeout_ms;
        match call("lease revoke", ms, r.client.lease_revoke(r.lease)).await {
            Ok(_) => tracing::info!(lease = r.lease, "etcd registration revoked"),
            Err(e) => {
                tracing::warn!(error = %e, "etcd registration not revoked; it expires with its lease")
            }
        }
    }
}

struct State {
    backoff: Backoff,
    reg: Option<Registration>,
    /// Members seen through etcd, to report their removal; bounded, oldest forgotten first.
    known: IndexMap<NodeId, SocketAddr>,
    outage: bool,
}

/// One etcd call, bounded.
async fn call<T>(
    what: &str,
    timeout_ms: u64,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), f).await {
        Err(_) => Err(format!("{what}: no answer within {timeout_ms} ms")),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Ok(Ok(v)) => Ok(v),
    }
}

/// One connection: register, list, then keep alive and watch until an error or the stop.
/// `Ok` means discovery is stopping.
async fn session(
    me: &Me,
    cfg: &EtcdConfig,
    sink: &mut Sink,
    stop: &mut watch::Receiver<bool>,
    st: &mut State,
) -> Result<(), String> {
    let ms = cfg.call_timeout_ms;
    let mut opts = ConnectOptions::new().with_connect_timeout(Duration::from_millis(ms));
    if let Some(tls) = &cfg.tls {
        opts = opts.with_tls(tls.load().map_err(|e| e.to_string())?);
    }
    let mut client = call(
        "connect",
        ms,
        Client::connect(cfg.endpoints.clone(), Some(opts)),
    )
    .await?;
    let lease = call("lease grant", ms, client.lease_grant(cfg.lease_ttl_s, None))
        .await?
        .id();
    let previous = st.reg.replace(Registration {
        client: client.clone(),
        lease,
    });
    let record = MemberRecord {
        node: me.node.to_string(),
        addr: me.addr,
        colony: me.colony.clone(),
    };
    let value = serde_json::to_vec(&record).map_err(|e| format!("encode record: {e}"))?;
    let key = member_key(&cfg.prefix, &me.colony, me.node);
    call(
        "register",
        ms,
        client.put(key, value, Some(PutOptions::new().with_lease(lease))),
    )
    .await?;
    // The key now hangs on the new lease; the old one (from before an etcd restart or a hung
    // connection) would only expire: release it now.
    if let Some(old) = previous.filter(|p| p.lease != lease) {
        let _ = call("revoke old lease", ms, client.lease_revoke(old.lease)).await;
    }
    let (mut keeper, mut replies) = call("keep-alive", ms, client.lease_keep_alive(lease)).await?;

    let members = members_prefix(&cfg.prefix, &me.colony);
    let limit = i64::try_from(MAX_KNOWN_PEERS).unwrap_or(i64::MAX);
    let listing = call(
        "list members",
        ms,
        client.get(
            members.clone(),
            Some(GetOptions::new().with_prefix().with_limit(limit)),
        ),
    )
    .await?;
    let revision = listing.header().map(|h| h.revision()).unwrap_or(0);
    let mut present: Vec<NodeId> = Vec::new();
    for kv in listing.kvs() {
        match decode_member(&members, kv.key(), kv.value()) {
            Ok((node, addr)) => {
                present.push(node);
                if !learn(me, st, sink, node, addr).await {
                    return Ok(());
                }
            }
            Err(why) => tracing::debug!(%why, "ignoring an etcd member entry"),
        }
    }
    // Members that left while we were away.
    let left: Vec<(NodeId, SocketAddr)> = st
        .known
        .iter()
        .filter(|(n, _)| !present.contains(n))
        .map(|(n, a)| (*n, *a))
        .collect();
    for (node, addr) in left {
        st.known.shift_remove(&node);
        if !sink.gone(Some(node), addr).await {
            return Ok(());
        }
    }
    let mut watch = call(
        "watch",
        ms,
        client.watch(
            members.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        ),
    )
    .await?;

    if st.outage {
        tracing::info!("etcd reachable again; registered anew");
        st.outage = false;
    } else {
        tracing::info!(lease, ttl_s = cfg.lease_ttl_s, "registered in etcd");
    }
    st.backoff.reset();

    let period = cfg.keepalive_period();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped(stop) => return Ok(()),
            _ = tick.tick() => {
                call("keep-alive send", ms, keeper.keep_alive()).await?;
                match call("keep-alive reply", ms, replies.message()).await? {
                    Some(r) if r.ttl() > 0 => {}
                    Some(_) => return Err("the lease expired on the server".into()),
                    None => return Err("keep-alive stream closed".into()),
                }
            }
            msg = watch.message() => {
                let resp = msg
                    .map_err(|e| format!("watch: {e}"))?
                    .ok_or_else(|| "watch stream closed".to_string())?;
                if !on_watch(me, st, sink, &members, resp).await? {
                    return Ok(());
                }
            }
        }
    }
}

/// Applies one watch response. `Ok(false)` means discovery is stopping.
async fn on_watch(
    me: &Me,
    st: &mut State,
    sink: &mut Sink,
    members: &str,
    resp: WatchResponse,
) -> Result<bool, String> {
    if resp.canceled() {
        // E.g. our start revision was compacted away: a new session lists afresh.
        return Err(format!(
            "watch canceled (compacted to {}): {}",
            resp.compact_revision(),
            resp.cancel_reason()
        ));
    }
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        match ev.event_type() {
            EventType::Put => match decode_member(members, kv.key(), kv.value()) {
                Ok((node, addr)) => {
                    if !learn(me, st, sink, node, addr).await {
                        return Ok(false);
                    }
                }
                Err(why) => tracing::debug!(%why, "ignoring an etcd member entry"),
            },
            EventType::Delete => {
                if let Ok(node) = node_of_key(members, kv.key())
                    && let Some(addr) = st.known.shift_remove(&node)
                {
                    tracing::debug!(node = %node, "etcd member key gone");
                    if !sink.gone(Some(node), addr).await {
                        return Ok(false);
                    }
                }
            }
        }
    }
    Ok(true)
}

/// Remembers and reports a member if it is new or moved. False means discovery is stopping.
async fn learn(me: &Me, st: &mut State, sink: &mut Sink, node: NodeId, addr: SocketAddr) -> bool {
    if node == me.node || st.known.get(&node) == Some(&addr) {
        return true;
    }
    st.known.shift_remove(&node);
    while st.known.len() >= MAX_KNOWN_PEERS {
        st.known.shift_remove_index(0);
    }
    st.known.insert(node, addr);
    sink.seen(Some(node), addr, Source::Etcd).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMBERS: &str = "/aware/blue/members/";

    #[test]
    fn keys_and_records_round_trip() {
        let n = NodeId(0xfeed);
        assert_eq!(
            member_key("/aware", "blue", n),
            "/aware/blue/members/000000000000feed"
        );
        let rec = MemberRecord {
            node: n.to_string(),
            addr: "10.1.2.3:7946".parse().expect("addr"),
            colony: "blue".into(),
        };
        let json = serde_json::to_string(&rec).expect("json");
        assert_eq!(
            json,
            r#"{"node":"000000000000feed","addr":"10.1.2.3:7946","colony":"blue"}"#
        );
        assert_eq!(
            decode_member(
                MEMBERS,
                member_key("/aware", "blue", n).as_bytes(),
                json.as_bytes()
            ),
            Ok((n, rec.addr))
        );
    }

    #[test]
    fn hostile_entries_are_rejected_with_a_reason() {
        let key = b"/aware/blue/members/000000000000feed";
        let good = br#"{"node":"000000000000feed","addr":"10.1.2.3:7946","colony":"blue"}"#;
        for (k, v, says) in [
            (
                &b"/aware/red/members/000000000000feed"[..],
                &good[..],
                "is not",
            ),
            (&b"/aware/blue/members/feed"[..], &good[..], "is not"),
            (&b"/aware/blue/members/\xff"[..], &good[..], "UTF-8"),
            (
                &key[..],
                &br#"{"node":"000000000000beef","addr":"10.1.2.3:7946","colony":"blue"}"#[..],
                "names node",
            ),
            (
                &key[..],
                &br#"{"node":"000000000000feed","addr":"0.0.0.0:7946","colony":"blue"}"#[..],
                "not reachable",
            ),
            (
                &key[..],
                &br#"{"node":"000000000000feed","addr":"10.1.2.3:0","colony":"blue"}"#[..],
                "not reachable",
            ),
            (&key[..], &b"not json"[..], "record"),
        ] {
            let e = decode_member(MEMBERS, k, v).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        let big = vec![b' '; MAX_RECORD_BYTES + 1];
        let e = decode_member(MEMBERS, key, &big).unwrap_err();
        assert!(e.contains("exceeds"), "{e}");
    }

    #[test]
    fn config_validation() {
        let ok = EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            ..EtcdConfig::default()
        };
        ok.validate().expect("valid");
        let cases: Vec<(EtcdConfig, &str)> = vec![
            (EtcdConfig::default(), "no endpoints"),
            (
                EtcdConfig {
                    lease_ttl_s: 1,
                    ..ok.clone()
                },
                "lease_ttl_s",
            ),
            (
                EtcdConfig {
                    prefix: "aware".into(),
                    ..ok.clone()
                },
                "prefix",
            ),
            (
                EtcdConfig {
                    prefix: "/aware/".into(),
                    ..ok.clone()
                },
                "prefix",
            ),
            (
                EtcdConfig {
                    call_timeout_ms: 4_000,
                    lease_ttl_s: 3,
                    ..ok.clone()
                },
                "call_timeout_ms",
            ),
            (
                EtcdConfig {
                    call_timeout_ms: 10,
                    ..ok.clone()
                },
                "call_timeout_ms",
            ),
            (
                EtcdConfig {
                    endpoints: vec!["a b".into()],
                    ..ok.clone()
                },
                "not a URL",
            ),
            (
                EtcdConfig {
                    retry_max_ms: 1,
                    ..ok.clone()
                },
                "retry_max_ms",
            ),
        ];
        for (c, says) in cases {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
    }
}
