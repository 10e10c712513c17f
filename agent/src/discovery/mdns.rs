//! LAN discovery over mDNS/DNS-SD (the `mdns-sd` crate). Announces this node as
//! `<node-id>._aware._udp.local.` on its gossip port with TXT `v`, `node`, `colony` (and `addr`
//! when the node advertises a concrete IP), browses the same type, and reports peers of its own
//! colony. Other colonies on the LAN are ignored by their TXT `colony`.
//!
//! Boot-time behaviour: interfaces often come up (or get their address) after the agent starts.
//! mdns-sd rescans interfaces every `ip_check_interval` (whole seconds, 5 by default; we set 1),
//! and on a new interface it announces our service and re-sends the browse query there. To not
//! wait for that second, an interface watcher here polls the interface list (every
//! [`IF_POLL_MIN_MS`] after a change, backing off to [`IF_POLL_MAX_MS`] while nothing changes)
//! and makes the daemon rescan at once when it sees a change. If the daemon cannot be created
//! at all (no socket), it is retried with backoff; the failure is logged once.
//!
//! Start-up speed: mDNS rate-limits multicast answers to once per second per record, so a node
//! started within a second of its peers would wait ~1 s for their answers. At start and after
//! each interface change we also send one-shot "legacy unicast" queries
//! (`legacy_query`), which are answered at once by unicast.
//!
//! mDNS only finds peers. A goodbye or a vanished record is not a verdict on the peer: SWIM
//! judges liveness.

use super::backoff::Backoff;
use super::legacy_query::{Iface, LegacyQuerier, Record};
use super::{DiscoveryError, MAX_KNOWN_PEERS, Me, Sink, Source, parse_node_hex, sleep_or_stop};
use indexmap::IndexMap;
use mdns_sd::{IfKind, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use swarm_core::id::NodeId;
use tokio::sync::watch;

/// The DNS-SD service type (the name part must be at most 15 bytes).
pub const SERVICE_TYPE: &str = "_aware._udp.local.";
/// TXT format version; peers with another version are ignored.
pub const TXT_VERSION: &str = "1";
/// Interface polling right after a change (or at start).
pub const IF_POLL_MIN_MS: u64 = 20;
/// Interface polling while nothing changes.
pub const IF_POLL_MAX_MS: u64 = 250;
/// mdns-sd's own interface rescan period, in whole seconds (its minimum).
const DAEMON_IP_CHECK_S: u32 = 1;
/// Each forced rescan adds one (identical) interface selection inside mdns-sd, so they are
/// capped per daemon; past the cap the daemon's own 1 s rescan still runs.
pub const MAX_FORCED_RESCANS: u32 = 4_096;
/// When the one-shot legacy queries go out after the start and after each interface change
/// (ms after it); the repeats cover an interface that was not quite ready.
pub const LEGACY_QUERY_SCHEDULE_MS: [u64; 3] = [0, 150, 600];
/// How long to wait for the goodbye to go out, and for the daemon to stop.
const GOODBYE_TIMEOUT_MS: u64 = 1_000;
/// Retry pacing when the daemon cannot be created or dies.
const RETRY_MIN_MS: u64 = 100;
const RETRY_MAX_MS: u64 = 5_000;

/// mDNS settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MdnsConfig {
    pub enabled: bool,
    /// Interface names to use (e.g. `["eth0"]`); empty means every interface that is up.
    pub interfaces: Vec<String>,
}

impl Default for MdnsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interfaces: Vec::new(),
        }
    }
}

impl MdnsConfig {
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        for i in &self.interfaces {
            // IFNAMSIZ is 16 with the NUL.
            if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) {
                return Err(DiscoveryError::Config(format!(
                    "mdns.interfaces: {i:?} is not an interface name"
                )));
            }
        }
        Ok(())
    }
}

/// The instance's full DNS-SD name for a node.
pub fn instance_fullname(node: NodeId) -> String {
    format!("{node}.{SERVICE_TYPE}")
}

/// Runs mDNS until discovery stops, then sends the goodbye.
pub(crate) async fn run(me: Me, cfg: MdnsConfig, mut sink: Sink, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(RETRY_MIN_MS, RETRY_MAX_MS, me.node.0);
    let mut failing = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let started = start_daemon(&me, &cfg);
        let (daemon, events) = match started {
            Ok(x) => x,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "mDNS cannot start; retrying with backoff");
                    failing = true;
                }
                if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                    return;
                }
                continue;
            }
        };
        if failing {
            tracing::info!("mDNS started after earlier failures");
            failing = false;
        }
        backoff.reset();
        let end = serve(&me, &cfg, &daemon, events, &mut sink, &mut stop).await;
        match end {
            Served::Stopped => {
                goodbye(&daemon, &instance_fullname(me.node)).await;
                return;
            }
            Served::Failed(e) => {
                tracing::warn!(error = %e, "mDNS daemon failed; restarting it");
                if let Ok(rx) = daemon.shutdown() {
                    let _ = tokio::time::timeout(
                        Duration::from_millis(GOODBYE_TIMEOUT_MS),
                        rx.recv_async(),
                    )
                    .await;
                }
                if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// The interface selection: the configured interfaces (or all), in this node's address family
/// only. Re-applying it makes mdns-sd rescan the interfaces at once.
fn select_interfaces(daemon: &ServiceDaemon, cfg: &MdnsConfig, me: &Me) -> mdns_sd::Result<()> {
    if !cfg.interfaces.is_empty() {
        daemon.disable_interface(IfKind::All)?;
        let names: Vec<IfKind> = cfg
            .interfaces
            .iter()
            .map(|n| IfKind::Name(n.clone()))
            .collect();
        daemon.enable_interface(names)?;
    }
    rescan(daemon, me)
}

/// Disabling the other family is idempotent and makes the daemon list the interfaces again,
/// add new ones (announcing our service and querying on them) and drop vanished ones.
fn rescan(daemon: &ServiceDaemon, me: &Me) -> mdns_sd::Result<()> {
    daemon.disable_interface(if me.addr.is_ipv4() {
        IfKind::IPv6
    } else {
        IfKind::IPv4
    })
}

fn start_daemon(
    me: &Me,
    cfg: &MdnsConfig,
) -> mdns_sd::Result<(ServiceDaemon, mdns_sd::Receiver<ServiceEvent>)> {
    let daemon = ServiceDaemon::new()?;
    let configured = (|| {
        daemon.set_ip_check_interval(DAEMON_IP_CHECK_S)?;
        select_interfaces(&daemon, cfg, me)?;
        daemon.register(service_info(me)?)?;
        daemon.browse(SERVICE_TYPE)
    })();
    match configured {
        Ok(events) => Ok((daemon, events)),
        Err(e) => {
            let _ = daemon.shutdown();
            Err(e)
        }
    }
}

fn service_info(me: &Me) -> mdns_sd::Result<ServiceInfo> {
    let node = me.node.to_string();
    let mut props: Vec<(&str, String)> = vec![
        ("v", TXT_VERSION.to_string()),
        ("node", node.clone()),
        ("colony", me.colony.clone()),
    ];
    if !me.addr.ip().is_unspecified() {
        props.push(("addr", me.addr.to_string()));
    }
    let host = format!("aware-{node}.local.");
    let mut info = ServiceInfo::new(SERVICE_TYPE, &node, &host, (), me.addr.port(), &props[..])?
        .enable_addr_auto();
    // No name probing. Probing (RFC 6762 §8.1) exists to settle two devices wanting the same
    // name, and costs ~750 ms before the first announcement. Our instance and host names embed
    // the node id, 64 random bits chosen at first boot, so a clash means two nodes share an id,
    // which the colony already cannot tolerate (and mDNS renaming would not fix).
    info.set_requires_probe(false);
    Ok(info)
}

enum Served {
    Stopped,
    Failed(String),
}

/// A peer as last reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Peer {
    node: NodeId,
    addr: SocketAddr,
}

async fn serve(
    me: &Me,
    cfg: &MdnsConfig,
    daemon: &ServiceDaemon,
    mut events: mdns_sd::Receiver<ServiceEvent>,
    sink: &mut Sink,
    stop: &mut watch::Receiver<bool>,
) -> Served {
    // Keyed by instance full name (lower case), bounded; the oldest is forgotten first.
    let mut peers: IndexMap<String, Peer> = IndexMap::new();
    let mut watcher = IfWatcher::new(cfg);
    let mut forced_rescans: u32 = 0;
    let mut logged_no_interface = false;
    // A fresh id per daemon; answers must echo it.
    let query_id = (me.node.0 as u16) ^ (std::process::id() as u16);
    let mut querier = match LegacyQuerier::new(me.addr.is_ipv4(), SERVICE_TYPE, query_id) {
        Ok(q) => Some(q),
        Err(e) => {
            tracing::warn!(error = %e, "no legacy mDNS query socket; start-up discovery may take ~1 s longer");
            None
        }
    };
    let mut kicks = Kicks::start();
    loop {
        if *stop.borrow() {
            return Served::Stopped;
        }
        let poll = tokio::time::sleep(watcher.next_poll());
        let kick_at = kicks.next_at();
        tokio::select! {
            _ = super::stopped(stop) => return Served::Stopped,
            ev = events.recv_async() => match ev {
                Ok(ServiceEvent::ServiceResolved(r)) => {
                    let rec = record_of(&r);
                    if !report(me, &rec, &mut peers, sink).await {
                        return Served::Stopped;
                    }
                }
                Ok(ServiceEvent::ServiceRemoved(_, fullname)) => {
                    if let Some(p) = peers.shift_remove(&fullname.to_ascii_lowercase()) {
                        tracing::debug!(node = %p.node, addr = %p.addr, "mDNS goodbye or expiry");
                        if !sink.gone(Some(p.node), p.addr).await {
                            return Served::Stopped;
                        }
                    }
                }
                Ok(ServiceEvent::SearchStopped(_)) => {
                    events = match rebrowse(daemon, stop).await {
                        Ok(Some(ev)) => ev,
                        Ok(None) => return Served::Stopped,
                        Err(e) => return Served::Failed(e),
                    };
                }
                Ok(_) => {}
                // mdns-sd closes a subscription whose channel filled up, and everything when
                // its thread dies: browse again (that fails if the daemon is gone).
                Err(_) => {
                    events = match rebrowse(daemon, stop).await {
                        Ok(Some(ev)) => ev,
                        Ok(None) => return Served::Stopped,
                        Err(e) => return Served::Failed(e),
                    };
                }
            },
            got = recv_answer(querier.as_mut()) => {
                match got {
                    Ok(records) => {
                        for rec in records {
                            if !report(me, &rec, &mut peers, sink).await {
                                return Served::Stopped;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "legacy mDNS query socket failed; dropped");
                        querier = None;
                    }
                }
            }
            _ = tokio::time::sleep_until(kick_at.unwrap_or_else(far_future)), if kick_at.is_some() => {
                kicks.fired();
                if let Some(q) = &querier {
                    q.send(&watcher.usable);
                }
            }
            _ = poll => {
                if watcher.poll() {
                    kicks = Kicks::start();
                    tracing::debug!(interfaces = ?watcher.usable, "interfaces changed; mDNS rescans");
                    if watcher.usable.is_empty() {
                        if !logged_no_interface {
                            tracing::info!("no usable network interface yet; mDNS waits for one");
                            logged_no_interface = true;
                        }
                    } else {
                        logged_no_interface = false;
                    }
                    if forced_rescans < MAX_FORCED_RESCANS {
                        forced_rescans += 1;
                        if let Err(e) = rescan(daemon, me) {
                            return Served::Failed(e.to_string());
                        }
                    }
                }
            }
        }
    }
}

async fn rebrowse(
    daemon: &ServiceDaemon,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<mdns_sd::Receiver<ServiceEvent>>, String> {
    if sleep_or_stop(Duration::from_millis(RETRY_MIN_MS), stop).await {
        return Ok(None);
    }
    // Stop the old subscription first: mdns-sd keeps one querier per service type.
    let _ = daemon.stop_browse(SERVICE_TYPE);
    daemon
        .browse(SERVICE_TYPE)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Reports a peer if the record describes one of ours and it is new or moved. False means
/// discovery is stopping.
async fn report(
    me: &Me,
    rec: &Record,
    peers: &mut IndexMap<String, Peer>,
    sink: &mut Sink,
) -> bool {
    let key = rec.fullname.to_ascii_lowercase();
    let Some(found) = peer_of(me, rec, peers.get(&key).copied()) else {
        return true;
    };
    if peers.get(&key) == Some(&found) {
        return true;
    }
    peers.shift_remove(&key);
    while peers.len() >= MAX_KNOWN_PEERS {
        peers.shift_remove_index(0);
    }
    peers.insert(key, found);
    sink.seen(Some(found.node), found.addr, Source::Mdns).await
}

/// mdns-sd's view of an instance, in the form the legacy answers are read into.
fn record_of(r: &ResolvedService) -> Record {
    Record {
        fullname: r.fullname.clone(),
        port: r.port,
        txt: r
            .txt_properties
            .iter()
            .map(|p| (p.key().to_ascii_lowercase(), p.val_str().to_string()))
            .collect(),
        addrs: r.addresses.iter().map(ScopedIp::to_ip_addr).collect(),
    }
}

/// The peer a record describes, if it is one of ours: same TXT version and colony, a valid
/// node id that matches the instance name, not ourselves, and a usable address.
fn peer_of(me: &Me, r: &Record, previous: Option<Peer>) -> Option<Peer> {
    let prop = |k: &str| r.txt.get(k).map(String::as_str);
    if prop("v") != Some(TXT_VERSION) || prop("colony") != Some(me.colony.as_str()) {
        return None;
    }
    let node = parse_node_hex(prop("node")?)?;
    if node == me.node || !r.fullname.eq_ignore_ascii_case(&instance_fullname(node)) {
        return None;
    }
    // An explicit address (the node advertises a concrete IP) beats the interface addresses.
    let explicit = prop("addr")
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .filter(|a| usable(me, a.ip()) && a.port() != 0);
    let addr = match explicit {
        Some(a) => a,
        None => pick_addr(
            me,
            r.addrs.iter().copied(),
            r.port,
            previous.map(|p| p.addr),
        )?,
    };
    Some(Peer { node, addr })
}

/// The legacy query schedule: offsets from the last (re)start.
struct Kicks {
    from: tokio::time::Instant,
    next: usize,
}

impl Kicks {
    fn start() -> Self {
        Self {
            from: tokio::time::Instant::now(),
            next: 0,
        }
    }

    fn next_at(&self) -> Option<tokio::time::Instant> {
        LEGACY_QUERY_SCHEDULE_MS
            .get(self.next)
            .map(|ms| self.from + Duration::from_millis(*ms))
    }

    fn fired(&mut self) {
        self.next += 1;
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

/// The next legacy answer, or never when there is no querier.
async fn recv_answer(q: Option<&mut LegacyQuerier>) -> std::io::Result<Vec<Record>> {
    match q {
        Some(q) => q.recv().await,
        None => std::future::pending().await,
    }
}

/// An address this node's socket can use: same family, unicast, and not IPv6 link-local
/// (which would need a scope id the gossip layer does not carry).
fn usable(me: &Me, ip: IpAddr) -> bool {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_ipv4() != me.addr.is_ipv4() {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_broadcast(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// Chooses one address among a record's: keep the one reported before while it is still
/// there (so resolutions arriving in pieces do not make the address flap), else prefer
/// non-loopback, then the lowest (deterministic).
fn pick_addr(
    me: &Me,
    ips: impl Iterator<Item = IpAddr>,
    port: u16,
    previous: Option<SocketAddr>,
) -> Option<SocketAddr> {
    if port == 0 {
        return None;
    }
    let mut candidates: Vec<IpAddr> = ips.filter(|ip| usable(me, *ip)).collect();
    if let Some(p) = previous
        && p.port() == port
        && candidates.contains(&p.ip())
    {
        return Some(p);
    }
    candidates.sort_by_key(|ip| (ip.is_loopback(), *ip));
    candidates.first().map(|ip| SocketAddr::new(*ip, port))
}

/// Polls the list of usable interfaces: up, not loopback, and among the configured ones.
struct IfWatcher {
    names: Vec<String>,
    usable: Vec<Iface>,
    poll_ms: u64,
}

impl IfWatcher {
    fn new(cfg: &MdnsConfig) -> Self {
        let names = cfg.interfaces.clone();
        Self {
            usable: Self::snapshot(&names),
            names,
            poll_ms: IF_POLL_MIN_MS,
        }
    }

    fn snapshot(names: &[String]) -> Vec<Iface> {
        let mut v: Vec<Iface> = if_addrs::get_if_addrs()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| !i.is_loopback() && i.is_oper_up())
            .filter(|i| names.is_empty() || names.contains(&i.name))
            .map(|i| {
                let ip = i.ip();
                (i.name, ip, i.index.unwrap_or(0))
            })
            .collect();
        v.sort();
        v
    }

    fn next_poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }

    /// True if the interfaces changed since the last poll. Polls fast after a change.
    fn poll(&mut self) -> bool {
        let now = Self::snapshot(&self.names);
        let changed = now != self.usable;
        self.usable = now;
        self.poll_ms = if changed {
            IF_POLL_MIN_MS
        } else {
            (self.poll_ms * 2).min(IF_POLL_MAX_MS)
        };
        changed
    }
}

/// Unregisters (mdns-sd multicasts the goodbye: our records with TTL 0) and stops the daemon,
/// each bounded by [`GOODBYE_TIMEOUT_MS`].
async fn goodbye(daemon: &ServiceDaemon, fullname: &str) {
    let bound = Duration::from_millis(GOODBYE_TIMEOUT_MS);
    match daemon.unregister(fullname) {
        Ok(rx) => match tokio::time::timeout(bound, rx.recv_async()).await {
            Ok(Ok(status)) => tracing::debug!(?status, "mDNS goodbye sent"),
            _ => tracing::warn!("mDNS goodbye not confirmed in time"),
        },
        Err(e) => tracing::warn!(error = %e, "mDNS goodbye failed"),
    }
    if let Ok(rx) = daemon.shutdown() {
        let _ = tokio::time::timeout(bound, rx.recv_async()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(addr: &str) -> Me {
        Me {
            colony: "blue".into(),
            node: NodeId(1),
            addr: addr.parse().expect("addr"),
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn picks_a_stable_usable_address() {
        let m = me("0.0.0.0:7000");
        let set = ips(&["127.0.0.1", "10.0.0.9", "10.0.0.3", "fe80::1", "fd00::1"]);
        assert_eq!(
            pick_addr(&m, set.iter().copied(), 7000, None),
            Some("10.0.0.3:7000".parse().expect("addr"))
        );
        // The previous choice sticks while present.
        let prev: SocketAddr = "10.0.0.9:7000".parse().expect("addr");
        assert_eq!(
            pick_addr(&m, set.iter().copied(), 7000, Some(prev)),
            Some(prev)
        );
        // Loopback only as a last resort.
        assert_eq!(
            pick_addr(&m, ips(&["127.0.0.1"]).into_iter(), 7000, None),
            Some("127.0.0.1:7000".parse().expect("addr"))
        );
        // IPv6 node: only global/ULA IPv6, never link-local.
        let m6 = me("[::]:7000");
        assert_eq!(
            pick_addr(&m6, set.iter().copied(), 7000, None),
            Some("[fd00::1]:7000".parse().expect("addr"))
        );
        assert_eq!(
            pick_addr(&m6, ips(&["fe80::1", "10.0.0.1"]).into_iter(), 7000, None),
            None
        );
        assert_eq!(pick_addr(&m, set.iter().copied(), 0, None), None);
    }

    fn resolved(fullname: &str, props: &[(&str, &str)], addrs: &[&str]) -> Record {
        let mut info = ServiceInfo::new(
            SERVICE_TYPE,
            fullname.split('.').next().unwrap_or(""),
            "h.local.",
            addrs.join(",").as_str(),
            7000,
            props,
        )
        .expect("service info");
        info.set_requires_probe(false);
        record_of(&info.as_resolved_service())
    }

    #[test]
    fn reads_only_our_colony_and_well_formed_records() {
        let m = me("0.0.0.0:7000");
        let peer = NodeId(0xabc);
        let name = instance_fullname(peer);
        let good = [("v", "1"), ("node", "0000000000000abc"), ("colony", "blue")];
        let r = resolved(&name, &good, &["10.0.0.5"]);
        assert_eq!(
            peer_of(&m, &r, None),
            Some(Peer {
                node: peer,
                addr: "10.0.0.5:7000".parse().expect("addr")
            })
        );
        // An explicit TXT address wins.
        let with_addr = [
            ("v", "1"),
            ("node", "0000000000000abc"),
            ("colony", "blue"),
            ("addr", "192.168.1.5:7946"),
        ];
        let r = resolved(&name, &with_addr, &["10.0.0.5"]);
        assert_eq!(
            peer_of(&m, &r, None).map(|p| p.addr),
            Some("192.168.1.5:7946".parse().expect("addr"))
        );
        for bad in [
            vec![("v", "1"), ("node", "0000000000000abc"), ("colony", "red")],
            vec![("v", "2"), ("node", "0000000000000abc"), ("colony", "blue")],
            vec![("v", "1"), ("node", "0000000000000abd"), ("colony", "blue")],
            vec![("v", "1"), ("node", "xyz"), ("colony", "blue")],
            vec![("v", "1"), ("colony", "blue")],
            vec![("v", "1"), ("node", "0000000000000001"), ("colony", "blue")],
        ] {
            let fullname = if bad.iter().any(|(_, v)| *v == "0000000000000001") {
                instance_fullname(NodeId(1))
            } else {
                name.clone()
            };
            let r = resolved(&fullname, &bad, &["10.0.0.5"]);
            assert_eq!(peer_of(&m, &r, None), None, "{bad:?}");
        }
        // No usable address: nothing.
        let r = resolved(&name, &good, &["fe80::1"]);
        assert_eq!(peer_of(&m, &r, None), None);
    }

    #[test]
    fn txt_fits_and_the_type_is_valid() {
        let m = Me {
            colony: "c".repeat(super::super::MAX_COLONY_NAME_BYTES),
            node: NodeId(u64::MAX),
            addr: "[fd00:1:2:3:4:5:6:7]:65535".parse().expect("addr"),
        };
        let info = service_info(&m).expect("the longest colony and address fit");
        assert_eq!(info.get_fullname(), "ffffffffffffffff._aware._udp.local.");
        assert_eq!(
            info.get_property_val_str("addr"),
            Some("[fd00:1:2:3:4:5:6:7]:65535")
        );
        let unspec = service_info(&me("0.0.0.0:7000")).expect("info");
        assert_eq!(unspec.get_property_val_str("addr"), None);
    }
}
