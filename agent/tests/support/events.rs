//! Waiting on a runtime's event stream: the runtime tests and the workload tests wait for a
//! replica's state this way instead of polling.

use aware_agent::runtime::{Observed, ReplicaKey, RuntimeEvent};
use std::time::Duration;
use tokio::sync::broadcast;

/// Waits up to `deadline` for a `Changed` event of `key` that satisfies `pred` (`what` names it
/// in the failure). A lagged receiver skips ahead; a closed channel fails at once.
pub async fn wait_for(
    deadline: Duration,
    rx: &mut broadcast::Receiver<RuntimeEvent>,
    key: &ReplicaKey,
    what: &str,
    pred: impl Fn(&Observed) -> bool,
) -> Observed {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(RuntimeEvent::Changed(o)) if &o.key == key && pred(&o) => return o,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    };
    tokio::time::timeout(deadline, wait)
        .await
        .unwrap_or_else(|_| panic!("no event `{what}` for {key} within {deadline:?}"))
}
