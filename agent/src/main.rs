//! `aware-agent`: the node agent. The network drivers are not written yet; this binary says so
//! and points at the simulator, which runs the same colony code today.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "aware-agent",
    version,
    about = "AWARE node agent (network drivers not yet implemented; use aware-sim)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    anyhow::bail!(
        "the networked agent is not implemented yet; run a simulated colony with: cargo run --release -p aware-sim -- run sim/scenarios/queen-crash.yaml"
    )
}
