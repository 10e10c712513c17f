//! The driver contract on a real disk, in-process: when the state cannot be written, the agent
//! stops with an error naming the file, and nothing that step produced (the crowning of a
//! self-vote here) is reported or sent.
#![allow(clippy::unwrap_used)]

use aware_agent::persist::PersistError;
use aware_agent::transport::{Inbound, Transport, TransportStats};
use aware_agent::{AgentBuilder, AgentError, AgentEvent};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records what the driver sends; delivers nothing.
struct Recorder {
    sent: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Transport for Recorder {
    fn local_addr(&self) -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }
    fn send_datagram(&self, to: SocketAddr, _frame: Bytes) {
        self.sent.lock().unwrap().push(to);
    }
    fn send_stream(&self, to: SocketAddr, _frame: Bytes) {
        self.sent.lock().unwrap().push(to);
    }
    fn stats(&self) -> TransportStats {
        TransportStats::default()
    }
    fn close(&self) {}
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_write_stops_the_agent_before_anything_of_that_step_is_sent() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let sent = Arc::new(Mutex::new(Vec::new()));
    let (_keep_open, inbound) = tokio::sync::mpsc::channel::<Inbound>(8);
    let builder = AgentBuilder::new("solo")
        .passphrase("p")
        .data_dir(&dir)
        .bootstrap_expect(1)
        .transport(Box::new(Recorder { sent: sent.clone() }), inbound);
    let mut events = builder.subscribe();
    let agent = builder.start().await.unwrap();
    // The boot state is on disk; now take the disk away before the driver first runs (this
    // runtime has one thread: the driver cannot run until the test awaits).
    assert!(dir.join("state.bin").exists());
    std::fs::remove_dir_all(&dir).unwrap();

    // Alone with bootstrap_expect 1, the node votes for itself in term 1 and must persist that
    // vote before anything else: the write fails, and the agent stops.
    let handle = agent.handle();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        agent.run_until(std::future::pending()),
    )
    .await
    .unwrap()
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            &err,
            AgentError::Driver(aware_agent::driver::DriverError::Persist(
                PersistError::Io { .. }
            ))
        ),
        "{err:?}"
    );
    assert!(text.contains("state.bin"), "{text}");
    while let Ok(ev) = events.try_recv() {
        assert!(
            !matches!(ev, AgentEvent::Crowned { .. }),
            "crowned without a durable vote"
        );
    }
    assert!(
        sent.lock().unwrap().is_empty(),
        "sent {:?}",
        sent.lock().unwrap()
    );
    assert!(matches!(handle.status().await, Err(AgentError::Stopped)));
}
