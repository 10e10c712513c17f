//! The discovery probe: a child process that runs `agent::discovery::Discovery` and prints what
//! it finds as JSON lines (`PROBE {...}`) with wall-clock timestamps, so a test can start many
//! of them in different network namespaces and compare their clocks (one machine, one clock).
//!
//! The probe is the test binary itself: each test file that uses it declares
//!
//! ```ignore
//! #[test]
//! #[ignore = "helper process, started by the tests"]
//! fn probe_process() { support::probe::probe_main() }
//! ```
//!
//! and [`Probe::spawn`] re-runs the current executable with `--exact probe_process --ignored`
//! and the probe's settings in the `AWARE_PROBE` environment variable. Without that variable
//! `probe_main` returns at once. Closing the probe's stdin (dropping or [`Probe::stop`]) makes it
//! shut discovery down (mDNS goodbye, etcd revoke) and exit. Its log (tracing, to stderr) is
//! kept for assertions.

use super::netns::{Host, NsChild};
use aware_agent::discovery::{Discovery, DiscoveryConfig};
use aware_agent::swarm_core::id::NodeId;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const PROBE_ENV: &str = "AWARE_PROBE";
const LINE_TAG: &str = "PROBE ";

/// What a probe runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeSpec {
    pub colony: String,
    pub node: u64,
    pub addr: SocketAddr,
    pub config: DiscoveryConfig,
    /// `RUST_LOG`-style filter for the probe's log.
    pub log: String,
}

/// One line of a probe's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ProbeEvent {
    Start {
        t_us: u64,
    },
    Found {
        node: Option<String>,
        addr: SocketAddr,
        source: String,
        t_us: u64,
    },
    Stopped {
        t_us: u64,
    },
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn emit(e: &ProbeEvent) {
    println!(
        "{LINE_TAG}{}",
        serde_json::to_string(e).expect("probe event serializes")
    );
}

/// The probe's `main`; returns at once unless `AWARE_PROBE` is set.
pub fn probe_main() {
    let Ok(spec) = std::env::var(PROBE_ENV) else {
        return;
    };
    emit(&ProbeEvent::Start { t_us: now_us() });
    let spec: ProbeSpec = serde_json::from_str(&spec).expect("AWARE_PROBE holds a ProbeSpec");
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(&spec.log))
        .try_init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (d, mut rx) = Discovery::start(&spec.colony, NodeId(spec.node), spec.addr, spec.config)
            .expect("discovery starts");
        let (eof_tx, mut eof_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            let _ = eof_tx.send(());
        });
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Some(x) => emit(&ProbeEvent::Found {
                        node: x.node.map(|n| n.to_string()),
                        addr: x.addr,
                        source: x.source.to_string(),
                        t_us: now_us(),
                    }),
                    None => break,
                },
                _ = &mut eof_rx => break,
            }
        }
        d.shutdown().await;
    });
    emit(&ProbeEvent::Stopped { t_us: now_us() });
    // Skip libtest's own report: the parent reads only tagged lines anyway.
    std::process::exit(0);
}

/// A running probe and what it printed so far.
#[derive(Debug)]
pub struct Probe {
    pub spec: ProbeSpec,
    child: Option<NsChild>,
    events: mpsc::Receiver<ProbeEvent>,
    /// Everything seen so far, in order.
    pub seen: Vec<ProbeEvent>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Probe {
    /// Starts a probe: inside `host` if given (on the host's network otherwise — only for
    /// loopback-only tests such as etcd), optionally with eth0 brought up just before it
    /// (`boot`).
    pub fn spawn(spec: ProbeSpec, host: Option<&Host>, boot: bool) -> Probe {
        let exe = std::env::current_exe().expect("test executable path");
        let mut cmd = match (host, boot) {
            (Some(h), true) => h.boot_command(&exe),
            (Some(h), false) => h.command(&exe),
            (None, _) => Command::new(&exe),
        };
        cmd.args([
            "--exact",
            "probe_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            PROBE_ENV,
            serde_json::to_string(&spec).expect("spec serializes"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("probe spawns");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test probe_process ... " on the same line first.
                if let Some(at) = line.find(LINE_TAG)
                    && let Ok(e) = serde_json::from_str::<ProbeEvent>(&line[at + LINE_TAG.len()..])
                    && tx.send(e).is_err()
                {
                    break;
                }
            }
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        Probe {
            spec,
            child: Some(NsChild(child)),
            events,
            seen: Vec::new(),
            log,
        }
    }

    /// Takes in whatever the probe printed, waiting at most `wait` for the first new line.
    fn pump(&mut self, wait: Duration) {
        if let Ok(e) = self.events.recv_timeout(wait) {
            self.seen.push(e);
        }
        while let Ok(e) = self.events.try_recv() {
            self.seen.push(e);
        }
    }

    /// Polls until `pred(&seen)` holds or `deadline` passes; returns whether it held.
    pub fn wait_until(&mut self, deadline: Instant, pred: impl Fn(&[ProbeEvent]) -> bool) -> bool {
        loop {
            if pred(&self.seen) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.pump((deadline - now).min(Duration::from_millis(50)));
        }
    }

    /// Takes in what arrived without waiting.
    pub fn drain(&mut self) {
        self.pump(Duration::ZERO);
    }

    pub fn start_us(&self) -> Option<u64> {
        self.seen.iter().find_map(|e| match e {
            ProbeEvent::Start { t_us } => Some(*t_us),
            _ => None,
        })
    }

    /// `(node, addr, source, t_us)` of every peer found so far.
    pub fn found(&self) -> Vec<(Option<String>, SocketAddr, String, u64)> {
        self.seen
            .iter()
            .filter_map(|e| match e {
                ProbeEvent::Found {
                    node,
                    addr,
                    source,
                    t_us,
                } => Some((node.clone(), *addr, source.clone(), *t_us)),
                _ => None,
            })
            .collect()
    }

    /// The log lines (stderr) printed so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Closes stdin (the probe shuts discovery down and exits) and waits up to `wait` for the
    /// exit; true if it exited by itself. Kills it otherwise.
    pub fn stop(&mut self, wait: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        drop(c.0.stdin.take());
        let deadline = Instant::now() + wait;
        loop {
            match c.0.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => return false, // dropped: killed
            }
        }
        // Collect the last lines (the "stopped" event).
        let until = Instant::now() + Duration::from_secs(2);
        self.wait_until(until, |s| {
            s.iter().any(|e| matches!(e, ProbeEvent::Stopped { .. }))
        });
        true
    }

    /// SIGKILL: no goodbye, no revoke (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.0.kill();
            let _ = c.0.wait();
        }
    }
}
