//! `aware-agent`: the node agent's command line. The operator tooling works today (`spec check`,
//! `spec plan`, `spec import-compose`, `caps`); the networked agent (`run`) is not written yet
//! and points at the simulator, which runs the same colony code. The commands themselves live in
//! `aware_agent::commands`; this file only parses arguments and prints.
//!
//! Exit codes: 0 success, 1 a file could not be read or has errors, 2 a usage error (clap).

use anyhow::Context as _;
use aware_agent::commands;
use clap::{Parser, Subcommand};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "aware-agent",
    version,
    about = "AWARE node agent and colony tooling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check, plan or import colony specs.
    #[command(subcommand)]
    Spec(SpecCommand),
    /// Print this node's detected capabilities, merged with an operator config.
    Caps {
        /// Operator config (YAML): labels, overrides (cpu, memory, disk, gpus), reserve.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Data directory whose free disk is reported.
        #[arg(long, value_name = "DIR", default_value = aware_agent::caps::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Print JSON instead of YAML.
        #[arg(long)]
        json: bool,
    },
    /// Run the networked node agent (not implemented yet).
    Run,
}

#[derive(Subcommand)]
enum SpecCommand {
    /// Validate a spec; print a one-line summary or every error as FILE:LINE:COL.
    Check {
        file: PathBuf,
        /// Also check the spec against these nodes (requests no node could satisfy).
        #[arg(long, value_name = "NODES.yaml")]
        nodes: Option<PathBuf>,
    },
    /// Place every replica of a spec on a set of nodes.
    Plan {
        file: PathBuf,
        #[arg(long, value_name = "NODES.yaml")]
        nodes: PathBuf,
        /// Print JSON: {"placements": [...], "unplaced": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Convert a Docker Compose file to a colony spec (stdout); warnings go to stderr.
    ImportCompose { file: PathBuf },
}

/// Write to a stream; a closed pipe (`| head`) is not an error worth reporting.
fn emit(mut w: impl std::io::Write, text: &str) -> anyhow::Result<()> {
    match w.write_all(text.as_bytes()).and_then(|()| w.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write output")
        }
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Spec(SpecCommand::Check { file, nodes }) => {
            commands::spec_check(&file, nodes.as_deref())
        }
        Command::Spec(SpecCommand::Plan { file, nodes, json }) => {
            commands::spec_plan(&file, &nodes, json)
        }
        Command::Spec(SpecCommand::ImportCompose { file }) => commands::import_compose(&file),
        Command::Caps {
            config,
            data_dir,
            json,
        } => commands::caps(config.as_deref(), Some(&data_dir), json),
        Command::Run => {
            let _ = writeln!(
                std::io::stderr(),
                "aware-agent run: the networked agent is not implemented yet.\n\
                 Run a simulated colony (same colony code) with:\n  \
                 cargo run --release -p aware-sim -- run sim/scenarios/queen-crash.yaml"
            );
            return ExitCode::FAILURE;
        }
    };
    let written = match &result {
        Ok(out) => emit(std::io::stderr().lock(), &out.stderr)
            .and_then(|()| emit(std::io::stdout().lock(), &out.stdout)),
        Err(e) => emit(std::io::stderr().lock(), &format!("{e}\n")),
    };
    match (result, written) {
        (Ok(_), Ok(())) => ExitCode::SUCCESS,
        (_, Err(e)) => {
            let _ = writeln!(std::io::stderr(), "aware-agent: {e:#}");
            ExitCode::FAILURE
        }
        (Err(_), Ok(())) => ExitCode::FAILURE,
    }
}
