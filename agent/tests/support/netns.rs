//! Hosts in network namespaces on one private LAN: real interfaces, real multicast, real packet
//! loss on demand, and the machine's own network untouched. Needs root (CI runs as root).
//!
//! Layout of a [`Lan`] of N hosts:
//!
//! ```text
//!   netns <name>-br:  bridge br0 ── ports p0 … p(N-1)
//!   netns <name>-hI:  lo, eth0 = 10.77.0.(I+1)/24   (veth; its peer is pI in <name>-br)
//! ```
//!
//! Every link is created directly inside its namespace (`ip link add eth0 netns … type veth peer
//! name pI netns …`), so nothing ever appears in the host's namespace. Names are
//! `awt<pid>x<seq>`, unique per test process and per `Lan`, so parallel tests do not collide;
//! `Lan::new` first deletes namespaces left behind by test processes that no longer run.
//! Dropping the `Lan` deletes its namespaces (kill the processes you started in it first, e.g.
//! by dropping their [`NsChild`]).
//!
//! Failure injection is done on the bridge with nftables (`table bridge aware`, hook forward),
//! so links stay up (like a failure somewhere in the network, not an unplugged cable):
//! [`Lan::cut`] / [`Lan::restore`] isolate one host, [`Lan::partition`] separates two sets,
//! [`Lan::heal`] removes every rule.
//!
//! Running code inside a host: [`Host::command`] wraps a program in `ip netns exec`; the
//! environment passes through, and [`Host::set_hosts_file`] gives the host its own `/etc/hosts`. [`Host::boot_command`] first brings `eth0` up and gives it its
//! address, then `exec`s the program: a machine that starts its agent the moment its interface
//! comes up.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Every namespace this harness creates starts with this.
pub const NAME_ROOT: &str = "awt";
/// Hosts get 10.77.0.(I+1)/24.
pub const SUBNET: [u8; 3] = [10, 77, 0];
/// A LAN holds at most this many hosts (one /24, minus network, broadcast and spare).
pub const MAX_HOSTS: usize = 250;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Why netns tests cannot run here, if they cannot (not root, no `ip`, no `nft`).
pub fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("network-namespace tests need root".into());
    }
    for tool in ["ip", "nft"] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Some(format!("network-namespace tests need the `{tool}` tool"));
        }
    }
    None
}

/// Runs a command, panicking with its stderr if it fails. For harness plumbing only.
fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Deletes namespaces whose creating test process is gone (`awt<pid>x…` with no such pid).
pub fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NAME_ROOT) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('x') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// One host of a [`Lan`].
#[derive(Debug, Clone)]
pub struct Host {
    pub index: usize,
    /// The namespace's name.
    pub netns: String,
    /// eth0's address.
    pub addr: Ipv4Addr,
    /// The bridge port that leads to this host.
    port: String,
}

impl Host {
    /// `program` inside this host (`ip netns exec <netns> <program>`); add args, env, stdio.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec"]).arg(&self.netns).arg(program);
        c
    }

    /// Brings eth0 up, adds its address, then `exec`s `program` (add args to the result): the
    /// program starts the instant the interface is usable, as an agent does at boot.
    pub fn boot_command(&self, program: impl AsRef<OsStr>) -> Command {
        let script = format!(
            "ip link set eth0 up && ip addr add {}/24 dev eth0 && exec \"$0\" \"$@\"",
            self.addr
        );
        let mut c = self.command("sh");
        c.arg("-c").arg(script).arg(program);
        c
    }

    /// Runs a command inside the host and returns its output, panicking if it fails.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.netns];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// eth0 up with its address (what `Lan::new` does for every host).
    pub fn bring_up(&self) {
        let cidr = format!("{}/24", self.addr);
        sh(&["ip", "-n", &self.netns, "addr", "add", &cidr, "dev", "eth0"]);
        sh(&["ip", "-n", &self.netns, "link", "set", "eth0", "up"]);
    }

    /// eth0 down with no address (a machine before its network is configured).
    pub fn bring_down(&self) {
        sh(&["ip", "-n", &self.netns, "addr", "flush", "dev", "eth0"]);
        sh(&["ip", "-n", &self.netns, "link", "set", "eth0", "down"]);
    }

    /// Gives processes started in this host their own `/etc/hosts` (`ip netns exec` bind-mounts
    /// `/etc/netns/<netns>/hosts` over it) and a `resolv.conf` that asks no real DNS server.
    /// Rewritten in place, so running processes see changes at their next lookup. Removed with
    /// the `Lan`.
    pub fn set_hosts_file(&self, content: &str) {
        let dir = format!("/etc/netns/{}", self.netns);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let path = format!("{dir}/hosts");
        // Truncate and write the same inode: a bind mount follows the inode, not the name.
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        f.write_all(content.as_bytes())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        // Names missing from that file must not reach a real DNS server: point the resolver at
        // the host's own loopback, where nothing listens.
        let resolv = format!("{dir}/resolv.conf");
        if !std::path::Path::new(&resolv).exists() {
            std::fs::write(
                &resolv,
                "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            )
            .unwrap_or_else(|e| panic!("{resolv}: {e}"));
        }
    }

    pub fn sock_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.addr, port))
    }
}

/// A process running inside a host; killed (and reaped) when dropped.
#[derive(Debug)]
pub struct NsChild(pub Child);

impl Drop for NsChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the bridge currently drops.
#[derive(Debug, Default)]
struct Rules {
    cut: BTreeSet<usize>,
    partitions: Vec<(Vec<usize>, Vec<usize>)>,
}

/// A bridge and its hosts; see the module doc.
#[derive(Debug)]
pub struct Lan {
    name: String,
    bridge_ns: String,
    hosts: Vec<Host>,
    rules: Mutex<Rules>,
}

impl Lan {
    /// `n` hosts with eth0 up and addressed.
    pub fn new(n: usize) -> Lan {
        let lan = Lan::new_down(n);
        for h in &lan.hosts {
            h.bring_up();
        }
        lan
    }

    /// `n` hosts whose eth0 is down and has no address (see [`Host::boot_command`]).
    pub fn new_down(n: usize) -> Lan {
        assert!((1..=MAX_HOSTS).contains(&n), "1..={MAX_HOSTS} hosts");
        if let Some(why) = unavailable() {
            panic!("{why}");
        }
        sweep_stale();
        let name = format!(
            "{NAME_ROOT}{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let bridge_ns = format!("{name}-br");
        // Build the Lan first so that Drop cleans up whatever got created if a step fails.
        let mut lan = Lan {
            name: name.clone(),
            bridge_ns: bridge_ns.clone(),
            hosts: Vec::new(),
            rules: Mutex::new(Rules::default()),
        };
        sh(&["ip", "netns", "add", &bridge_ns]);
        sh(&[
            "ip", "-n", &bridge_ns, "link", "add", "br0", "type", "bridge",
        ]);
        sh(&["ip", "-n", &bridge_ns, "link", "set", "br0", "up"]);
        for i in 0..n {
            let host = Host {
                index: i,
                netns: format!("{name}-h{i}"),
                addr: Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], (i + 1) as u8),
                port: format!("p{i}"),
            };
            sh(&["ip", "netns", "add", &host.netns]);
            lan.hosts.push(host.clone());
            sh(&[
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                &host.netns,
                "type",
                "veth",
                "peer",
                "name",
                &host.port,
                "netns",
                &bridge_ns,
            ]);
            sh(&[
                "ip", "-n", &bridge_ns, "link", "set", &host.port, "master", "br0", "up",
            ]);
            sh(&["ip", "-n", &host.netns, "link", "set", "lo", "up"]);
        }
        lan.nft(
            "add table bridge aware\n\
             add chain bridge aware cuts { type filter hook forward priority 0; policy accept; }\n",
        );
        lan
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Isolates host `i`: the bridge drops everything to and from it.
    pub fn cut(&self, i: usize) {
        self.edit(|r| {
            r.cut.insert(i);
        });
    }

    /// Undoes [`Lan::cut`] for host `i`.
    pub fn restore(&self, i: usize) {
        self.edit(|r| {
            r.cut.remove(&i);
        });
    }

    /// Drops everything between hosts in `a` and hosts in `b` (both ways); each side still
    /// talks within itself and to hosts in neither set.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        self.edit(|r| r.partitions.push((a.to_vec(), b.to_vec())));
    }

    /// Removes every cut and partition.
    pub fn heal(&self) {
        self.edit(|r| *r = Rules::default());
    }

    fn edit(&self, f: impl FnOnce(&mut Rules)) {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut rules);
        let port = |i: &usize| format!("\"{}\"", self.hosts[*i].port);
        let set = |v: &[usize]| v.iter().map(port).collect::<Vec<_>>().join(", ");
        let mut script = String::from("flush chain bridge aware cuts\n");
        for i in &rules.cut {
            script += &format!("add rule bridge aware cuts iifname {} drop\n", port(i));
            script += &format!("add rule bridge aware cuts oifname {} drop\n", port(i));
        }
        for (a, b) in &rules.partitions {
            if a.is_empty() || b.is_empty() {
                continue;
            }
            let (sa, sb) = (set(a), set(b));
            script +=
                &format!("add rule bridge aware cuts iifname {{ {sa} }} oifname {{ {sb} }} drop\n");
            script +=
                &format!("add rule bridge aware cuts iifname {{ {sb} }} oifname {{ {sa} }} drop\n");
        }
        self.nft(&script);
    }

    fn nft(&self, script: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.bridge_ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nft: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .unwrap_or_else(|e| panic!("nft stdin: {e}"));
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("nft: {e}"));
        assert!(
            out.status.success(),
            "nft failed on\n{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.netns]).status();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", h.netns));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.bridge_ns])
            .status();
    }
}
