//! Agent-side health probes: one tokio task per probed replica runs the spec's HTTP, TCP or exec
//! probe every `interval_ms` (each attempt bounded by `timeout_ms`) and feeds a
//! [`HealthTracker`], which turns results into [`Health`] with the spec's `retries` and
//! `start_period_ms`. The task reports only changes. Docker's own HEALTHCHECK is used instead for
//! a container's exec probe (see `docker.rs`).
//!
//! Semantics (those of Docker's HEALTHCHECK): the first probe runs one interval after the start
//! (at once for an adopted replica, so that a restarted agent learns its health quickly); a
//! success makes the replica healthy; failures during the start period do not count; after it,
//! `retries` consecutive failures (at least one) make it unhealthy. HTTP is healthy on a 2xx
//! answer.

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use swarm_core::spec::HealthCheck;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Shortest interval between two probes of one replica, whatever the spec says.
pub const MIN_PROBE_INTERVAL_MS: u32 = 50;
/// Shortest probe timeout.
pub const MIN_PROBE_TIMEOUT_MS: u32 = 10;

/// A replica's health as the probes see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

/// Turns probe results into [`Health`] (pure; time is an input).
#[derive(Clone, Debug)]
pub struct HealthTracker {
    start_period: Duration,
    retries: u32,
    failures: u32,
    health: Health,
}

impl HealthTracker {
    pub fn new(check: &HealthCheck) -> HealthTracker {
        HealthTracker {
            start_period: Duration::from_millis(u64::from(check.start_period_ms)),
            retries: check.retries.max(1),
            failures: 0,
            health: Health::Starting,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Records one probe result, `since_start` after the replica started. Returns the new
    /// health when it changed.
    pub fn record(&mut self, ok: bool, since_start: Duration) -> Option<Health> {
        let before = self.health;
        if ok {
            self.failures = 0;
            self.health = Health::Healthy;
        } else if since_start >= self.start_period || self.health != Health::Starting {
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.retries {
                self.health = Health::Unhealthy;
            }
        }
        (self.health != before).then_some(self.health)
    }
}

/// What a probe talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeTarget {
    Http {
        addr: SocketAddr,
        path: String,
    },
    Tcp {
        addr: SocketAddr,
    },
    /// A command run on the node (process runtime), with the replica's env and working dir.
    Exec {
        command: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: PathBuf,
    },
}

/// Runs one probe attempt, bounded by `timeout`. `Err` says why it failed.
pub async fn probe_once(target: &ProbeTarget, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, attempt(target)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn attempt(target: &ProbeTarget) -> Result<(), String> {
    match target {
        ProbeTarget::Tcp { addr } => TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("connect {addr}: {e}")),
        ProbeTarget::Http { addr, path } => http_get(*addr, path).await,
        ProbeTarget::Exec { command, env, cwd } => {
            let Some((program, args)) = command.split_first() else {
                return Err("empty exec probe".to_owned());
            };
            let status = tokio::process::Command::new(program)
                .args(args)
                .env_clear()
                .envs(env)
                .current_dir(cwd)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("cannot run `{program}`: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("`{program}` exited {status}"))
            }
        }
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http handshake with {addr}: {e}"))?;
    let request = hyper::Request::builder()
        .method(hyper::Method::GET)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, "aware-agent-probe")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad probe path `{path}`: {e}"))?;
    // The connection future must be driven while the request is in flight; the status line is
    // all a probe needs, so the body is never read and both are dropped afterwards.
    let mut conn = std::pin::pin!(conn);
    let mut exchange = std::pin::pin!(sender.send_request(request));
    let response = tokio::select! {
        biased;
        response = &mut exchange => response,
        closed = &mut conn => match closed {
            // The server may answer and close at once: the answer then waits in the exchange.
            Ok(()) => exchange.await,
            Err(e) => return Err(format!("GET {path} on {addr}: {e}")),
        },
    };
    let response = response.map_err(|e| format!("GET {path} on {addr}: {e}"))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("GET {path} on {addr}: HTTP {}", status.as_u16()))
    }
}

/// Starts a task probing `target` per `check` and calling `on_change` with every change of
/// health (the first report is the first change away from [`Health::Starting`]). `started` is
/// when the replica started (for the start period); `probe_now` runs the first probe at once.
/// The task runs until aborted (dropping the handle does not stop it: abort it).
pub fn spawn_prober<F>(
    target: ProbeTarget,
    check: &HealthCheck,
    started: Instant,
    probe_now: bool,
    mut on_change: F,
) -> JoinHandle<()>
where
    F: FnMut(Health) + Send + 'static,
{
    let interval = Duration::from_millis(u64::from(check.interval_ms.max(MIN_PROBE_INTERVAL_MS)));
    let timeout = Duration::from_millis(u64::from(check.timeout_ms.max(MIN_PROBE_TIMEOUT_MS)));
    let mut tracker = HealthTracker::new(check);
    tokio::spawn(async move {
        let first = if probe_now {
            Instant::now()
        } else {
            Instant::now() + interval
        };
        let mut ticks = tokio::time::interval_at(first, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let ok = probe_once(&target, timeout).await.is_ok();
            if let Some(health) = tracker.record(ok, started.elapsed()) {
                on_change(health);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_core::spec::Probe;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn check(retries: u32, start_period_ms: u32) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp { port: 1 },
            interval_ms: 10,
            timeout_ms: 10,
            retries,
            start_period_ms,
        }
    }

    #[test]
    fn tracker_follows_docker_semantics() {
        let s = Duration::from_secs;
        let mut t = HealthTracker::new(&check(2, 5_000));
        assert_eq!(
            t.record(false, s(1)),
            None,
            "failures in the start period do not count"
        );
        assert_eq!(t.record(false, s(2)), None);
        assert_eq!(t.record(true, s(3)), Some(Health::Healthy));
        assert_eq!(t.record(false, s(4)), None, "one failure of two allowed");
        assert_eq!(t.record(true, s(4)), None, "a success resets the streak");
        assert_eq!(t.record(false, s(6)), None);
        assert_eq!(t.record(false, s(7)), Some(Health::Unhealthy));
        assert_eq!(t.record(true, s(8)), Some(Health::Healthy));
    }

    #[test]
    fn zero_retries_means_the_first_failure_counts() {
        let mut t = HealthTracker::new(&check(0, 0));
        assert_eq!(t.record(false, Duration::ZERO), Some(Health::Unhealthy));
    }

    /// A one-shot HTTP server answering every connection with `status`.
    async fn http_server(status: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let body = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
                    let _ = s.write_all(body.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probe_wants_2xx() {
        let t = Duration::from_secs(2);
        let ok = http_server("200 OK").await;
        let missing = http_server("404 Not Found").await;
        assert_eq!(
            probe_once(
                &ProbeTarget::Http {
                    addr: ok,
                    path: "/h".into()
                },
                t
            )
            .await,
            Ok(())
        );
        let err = probe_once(
            &ProbeTarget::Http {
                addr: missing,
                path: "/".into(),
            },
            t,
        )
        .await
        .unwrap_err();
        assert!(err.contains("HTTP 404"), "{err}");
    }

    #[tokio::test]
    async fn tcp_probe_and_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let t = Duration::from_secs(2);
        assert_eq!(probe_once(&ProbeTarget::Tcp { addr }, t).await, Ok(()));
        drop(listener);
        assert!(probe_once(&ProbeTarget::Tcp { addr }, t).await.is_err());
        // A server that accepts but never answers: the HTTP probe times out.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let err = probe_once(
            &ProbeTarget::Http {
                addr,
                path: "/".into(),
            },
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(err.contains("no answer within 200 ms"), "{err}");
        drop(silent);
    }

    #[tokio::test]
    async fn exec_probe_uses_exit_status() {
        let cwd = std::env::temp_dir();
        let run = |cmd: &str| ProbeTarget::Exec {
            command: vec!["sh".into(), "-c".into(), cmd.into()],
            env: BTreeMap::from([("PATH".into(), "/usr/bin:/bin".into())]),
            cwd: cwd.clone(),
        };
        let t = Duration::from_secs(5);
        assert_eq!(probe_once(&run("exit 0"), t).await, Ok(()));
        assert!(
            probe_once(&run("exit 3"), t)
                .await
                .unwrap_err()
                .contains("exited")
        );
    }

    #[tokio::test]
    async fn prober_reports_changes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = spawn_prober(
            ProbeTarget::Tcp { addr },
            &check(1, 0),
            Instant::now(),
            true,
            move |h| {
                let _ = tx.send(h);
            },
        );
        assert_eq!(rx.recv().await, Some(Health::Healthy));
        drop(listener);
        assert_eq!(rx.recv().await, Some(Health::Unhealthy));
        task.abort();
    }
}
