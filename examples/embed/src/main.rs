//! Embedding AWARE: this program starts a three-node colony inside its own tokio runtime (the
//! same `AgentBuilder` a real application would use, one node per process in production),
//! watches the event stream until a queen is crowned, applies a small spec (first to a node
//! that may not be the queen, to show the `NotQueen` redirect), waits for each node's
//! assignments, prints the plan and shuts every node down cleanly.
//!
//! Run it: `cargo run --release -p aware-embed-example` (prints `embed: ok` on success).

use anyhow::{Context as _, bail};
use aware_agent::swarm_core::spec::ColonySpec;
use aware_agent::{Agent, AgentBuilder, AgentEvent, ApplyError};
use std::time::Duration;
use tokio::time::timeout;

const NODES: usize = 3;
const SPEC: &str = "\
colony: embedded
roles:
  web:
    replicas: 3
    needs: {cpu: 10m, memory: 16Mi}
    workload:
      image: busybox:1.36
";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("aware-embed-{}", std::process::id()));
    let result = colony(&root).await;
    let _ = std::fs::remove_dir_all(&root);
    result?;
    println!("embed: ok");
    Ok(())
}

async fn colony(root: &std::path::Path) -> anyhow::Result<()> {
    // A local colony's credentials: the CA, an admin certificate and the gossip keyring
    // (`aware-agent ca init`). Every node here holds the CA, so each issues its own
    // certificate; elsewhere a node would join with a token (`AgentBuilder::join_token`).
    let ca = root.join("ca");
    aware_agent::trust::init_local_colony(&ca, "embedded")?;
    // The first node binds a free port; the others use it as their seed.
    let mut agents: Vec<Agent> = Vec::new();
    let mut seed = None;
    let mut crowned = Vec::new();
    for i in 0..NODES {
        let builder = AgentBuilder::new("embedded")
            .ca_dir(&ca)
            .data_dir(root.join(format!("node{i}")))
            .bind("127.0.0.1:0".parse()?)
            .seeds(seed)
            .bootstrap_expect(NODES);
        // Subscribe before start so no event is missed.
        crowned.push(builder.subscribe());
        let agent = builder.start().await?;
        seed = seed.or(Some(agent.addr()));
        println!("node {i}: {} at {}", agent.id(), agent.addr());
        agents.push(agent);
    }

    // Wait for a crowning on any node's event stream.
    let queen_term = timeout(Duration::from_secs(20), async {
        loop {
            for rx in &mut crowned {
                while let Ok(ev) = rx.try_recv() {
                    if let AgentEvent::Crowned { term } = ev {
                        return term;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("no queen within 20 s")?;
    println!("a queen was crowned in term {queen_term}");

    let spec: ColonySpec = aware_agent::dna::spec::parse(SPEC, "embedded.yaml")
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_spec();
    // Ask node 0; if it is not the queen, follow the redirect it returns.
    let plan = match agents[0].apply_spec(spec.clone()).await {
        Ok(plan) => plan,
        Err(ApplyError::NotQueen {
            queen: Some(queen),
            addr,
        }) => {
            println!("node 0 is not the queen; she is {queen} at {addr:?}");
            let Some(q) = agents.iter().find(|a| a.id() == queen) else {
                bail!("the queen {queen} is not one of ours");
            };
            q.apply_spec(spec).await?
        }
        Err(e) => return Err(e.into()),
    };
    print!("{}", plan.render());

    // Every node learns its share of the committed plan.
    for (i, a) in agents.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = a.status().await?;
            if s.committed >= plan.version {
                println!("node {i} runs {} replica(s)", s.assignments.len());
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("node {i} did not commit {} in time", plan.version);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    for a in agents {
        a.shutdown().await?;
    }
    Ok(())
}
