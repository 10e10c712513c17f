//! `aware-agent`: the node agent's command line. `run` starts a colony node (configured by a TOML
//! file, `AWARE_*` variables and flags, see `aware_agent::config`); `status`, `apply`,
//! `endpoints` and `keys` talk to a running agent over its mutual-TLS QUIC control plane with the
//! admin certificate; `ca init` and `token create` make the colony's credentials; `demo` starts a
//! local colony of `run` processes; `spec ...` and `caps` are offline tooling. The work itself
//! lives in the library; this file only parses arguments and prints.
//!
//! Exit codes: 0 success, 1 a file could not be read or has errors (or the agent stopped on an
//! error), 2 a usage error (clap).

use anyhow::Context as _;
use aware_agent::commands;
use aware_agent::config::{ConfigArgs, LogFormat, Settings};
use aware_agent::control::{ControlRequest, ControlResponse};
use aware_agent::control_plane;
use aware_agent::discovery::seeds::SeedSpec;
use aware_agent::net::control as netctl;
use clap::{Parser, Subcommand};
use std::io::Write as _;
use std::net::SocketAddr;
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
    /// Run the node agent until SIGINT or SIGTERM. Its workloads keep running when it stops,
    /// for the next agent on this data directory to adopt (see --stop-workloads).
    Run {
        /// Stop this node's workloads when the agent stops (the node leaves the colony).
        #[arg(long, env = "AWARE_STOP_WORKLOADS")]
        stop_workloads: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print the endpoints (ip:port) of a role, as its dependents get them.
    Endpoints {
        role: String,
        /// Print JSON: {"role": ..., "endpoints": [...]}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Ask a running agent for its view of the colony.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Check a colony spec, hand it to the queen (through the agent) and print the committed plan.
    Apply {
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Start a local colony of real agents on loopback and show what it does.
    Demo(aware_agent::demo::DemoArgs),
    /// Built-in demo workloads, run as a replica's `command` by the process runtime.
    #[command(subcommand)]
    Workload(aware_agent::workload::WorkloadCommand),
    /// The colony CA.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The gossip keyring of every live member (Serf's model: install everywhere, then use,
    /// then remove the old key).
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// Flags of every `keys` operation that talks to agents.
#[derive(clap::Args)]
struct KeysArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the colony CA, the admin certificate and a gossip keyring in DIR.
    Init {
        /// Directory to create (refuses to overwrite a CA).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Colony name.
        #[arg(long, env = "AWARE_COLONY")]
        colony: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a join token signed by the CA.
    Create {
        /// Directory holding ca.crt and ca.key.
        #[arg(long, env = "AWARE_CA_DIR", value_name = "DIR")]
        ca_dir: PathBuf,
        /// Lifetime, e.g. 1h, 30m.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random gossip key (base64).
    Generate,
    /// Key ids on every live member, the primary first.
    List {
        #[command(flatten)]
        args: KeysArgs,
    },
    /// Install a key (base64) on every live member: it opens from now on.
    Install {
        key: String,
        #[command(flatten)]
        args: KeysArgs,
    },
    /// Make an installed key (id, 8 hex digits) the one that seals, on every live member.
    Use {
        key_id: String,
        #[command(flatten)]
        args: KeysArgs,
    },
    /// Remove a key (not the primary) from every live member.
    Remove {
        key_id: String,
        #[command(flatten)]
        args: KeysArgs,
    },
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("AWARE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn serve(settings: Settings, stop_workloads: bool) -> anyhow::Result<()> {
    let caps_config = match &settings.caps_config {
        Some(path) => aware_agent::caps::load_config(path)?,
        None => aware_agent::caps::CapsConfig::default(),
    };
    let dir = settings.data_dir.clone();
    let detected = tokio::task::spawn_blocking(move || {
        aware_agent::caps::detect(&aware_agent::caps::DetectEnv::host(Some(&dir)))
    })
    .await?;
    let caps = aware_agent::caps::merge(detected, &caps_config);
    // Literal seeds go to the node at once. Host names go to discovery, which resolves them
    // again while the agent runs (a record that appears late or changes is still found); they
    // are also resolved once here, because a node joining with a token sends its CSR through
    // its seeds before it runs, and a node that cannot sign forwards joins to them.
    let mut seed_addrs = Vec::new();
    let mut seed_names = Vec::new();
    for seed in &settings.seeds {
        match seed {
            SeedSpec::Addr(a) => seed_addrs.push(*a),
            SeedSpec::Name { host, port } => seed_names.push((host.clone(), *port)),
        }
    }
    seed_addrs.extend(resolve_seed_names(&seed_names, settings.advertise).await);
    let mut builder = aware_agent::AgentBuilder::new(settings.colony.clone())
        .data_dir(settings.data_dir.clone())
        .bind(settings.bind)
        .advertise(settings.advertise)
        .seeds(seed_addrs)
        .capabilities(caps)
        .bootstrap_expect(settings.bootstrap_expect)
        .queen_affinity(settings.queen_affinity)
        .runtime_choice(settings.runtime.into())
        .stop_workloads_on_shutdown(stop_workloads);
    if let Some(dir) = &settings.ca_dir {
        builder = builder.ca_dir(dir);
    }
    if let Some(token) = &settings.join_token {
        builder = builder.join_token(token.clone());
    }
    if let Some(file) = &settings.keyring_file {
        builder = builder.keyring_file(file);
    }
    if settings.mdns || !settings.etcd.is_empty() || !seed_names.is_empty() {
        let mut discovery = aware_agent::discovery::DiscoveryConfig::default();
        discovery.mdns.enabled = settings.mdns;
        discovery.seeds = seed_names
            .iter()
            .map(|(host, port)| format!("{host}:{port}"))
            .collect();
        if !settings.etcd.is_empty() {
            discovery.etcd = Some(aware_agent::discovery::EtcdConfig {
                endpoints: settings.etcd.clone(),
                tls: settings.etcd_tls.clone(),
                ..aware_agent::discovery::EtcdConfig::default()
            });
        }
        builder = builder.discovery(discovery);
    }
    // Subscribed before the start, so the metrics miss no early event.
    let metric_events = builder.subscribe();
    let agent = builder.start().await?;
    tracing::info!(addr = %agent.handle().local_addr(), "gossip and mutual-TLS QUIC control plane on one UDP port");
    let _metrics = serve_metrics(&settings, &agent, metric_events).await?;
    let stop = aware_agent::embed::stop_signal().context("cannot watch SIGTERM and SIGINT")?;
    agent.run_until(stop).await?;
    Ok(())
}

/// The addresses of seed host names in `advertise`'s address family, all looked up at once
/// (each bounded by `RESOLVE_TIMEOUT_MS`, so a broken resolver delays the start by at most that,
/// however many names); a name that does not resolve is logged and skipped (discovery keeps
/// retrying it).
async fn resolve_seed_names(names: &[(String, u16)], advertise: SocketAddr) -> Vec<SocketAddr> {
    let mut lookups = tokio::task::JoinSet::new();
    for (host, port) in names.iter().cloned() {
        lookups.spawn(async move {
            let found = aware_agent::discovery::seeds::resolve_like(&host, port, advertise).await;
            (host, port, found)
        });
    }
    let mut out = Vec::new();
    while let Some(done) = lookups.join_next().await {
        match done {
            Ok((_, _, Ok(addrs))) => out.extend(addrs),
            Ok((host, port, Err(why))) => {
                tracing::debug!(seed = %format!("{host}:{port}"), %why, "seed name does not resolve yet (discovery retries it)")
            }
            Err(e) => tracing::warn!(error = %e, "seed name lookup failed"),
        }
    }
    out
}

/// Serves `/metrics` where `metrics_bind` says. A default address that is taken (another agent
/// on this machine) only warns; a configured one that cannot be bound stops the agent.
async fn serve_metrics(
    settings: &Settings,
    agent: &aware_agent::Agent,
    events: tokio::sync::broadcast::Receiver<aware_agent::AgentEvent>,
) -> anyhow::Result<Option<aware_agent::metrics::MetricsServer>> {
    let Some(bind) = settings.metrics_bind else {
        return Ok(None);
    };
    let prometheus = aware_agent::metrics::install_recorder()?;
    match aware_agent::metrics::serve(bind, prometheus, agent.handle(), events).await {
        Ok(server) => {
            tracing::info!(addr = %server.addr(), "metrics endpoint listening on /metrics");
            Ok(Some(server))
        }
        Err(e) if !settings.metrics_bind_explicit => {
            tracing::warn!("{e}; no metrics (set metrics_bind to choose an address, or off)");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// `run`: exit 0 after a clean shutdown, 1 if the agent could not start or stopped on an error.
fn run(args: &ConfigArgs, stop_workloads: bool) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        let _ = writeln!(std::io::stderr(), "aware-agent: {e}");
        ExitCode::FAILURE
    };
    if let Err(e) = aware_agent::demo::die_with_parent() {
        return fail(&aware_agent::error_line(&e));
    }
    let settings = match args.resolve() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    init_logs(settings.log_format);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&aware_agent::error_line(&e)),
    };
    match rt.block_on(serve(settings, stop_workloads)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %aware_agent::error_line(&e), "agent stopped");
            fail(&aware_agent::error_line(&e))
        }
    }
}

fn ask(args: &ConfigArgs, request: ControlRequest) -> anyhow::Result<ControlResponse> {
    let client = args.resolve_client()?;
    let rt = runtime()?;
    Ok(rt.block_on(control_plane::admin_request(
        &client.admin_dir,
        client.addr,
        request,
    ))?)
}

fn ca_init(dir: &std::path::Path, colony: &str) -> anyhow::Result<commands::Output> {
    let init = aware_agent::trust::init_local_colony(dir, colony)?;
    Ok(commands::Output {
        stdout: format!(
            "colony CA for {colony:?} in {}\nCA fingerprint (sha256): {}\n\
             files: ca.crt, ca.key (keep secret), admin.crt, admin.key, keyring (keep secret)\n",
            dir.display(),
            init.ca.fingerprint_hex()
        ),
        stderr: String::new(),
    })
}

fn token_create(
    ca_dir: &std::path::Path,
    ttl: std::time::Duration,
) -> anyhow::Result<commands::Output> {
    let token = aware_agent::pki::token_create(ca_dir, ttl)?;
    Ok(commands::Output {
        stdout: format!("{token}\n"),
        stderr: String::new(),
    })
}

/// `keys`: the operation on the agent named by the flags and on every member it sees up.
fn keys(op: KeysCommand) -> anyhow::Result<commands::Output> {
    let (request, args) = match op {
        KeysCommand::Generate => {
            let key = aware_agent::net::gossip::generate_key()?;
            return Ok(commands::Output {
                stdout: format!("{}\n", key.to_base64()),
                stderr: String::new(),
            });
        }
        KeysCommand::List { args } => (netctl::ControlRequest::KeyringList, args),
        KeysCommand::Install { key, args } => {
            (netctl::ControlRequest::KeyringInstall { key }, args)
        }
        KeysCommand::Use { key_id, args } => (netctl::ControlRequest::KeyringUse { key_id }, args),
        KeysCommand::Remove { key_id, args } => {
            (netctl::ControlRequest::KeyringRemove { key_id }, args)
        }
    };
    let json = args.json;
    let client = args.config.resolve_client()?;
    let rt = runtime()?;
    let results = rt.block_on(aware_agent::control_plane::keyring_everywhere(
        &client.admin_dir,
        client.addr,
        &request,
    ))?;
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    let stdout = if json {
        json_line(&results)?
    } else {
        results.iter().map(|r| format!("{r}\n")).collect()
    };
    if failed > 0 {
        anyhow::bail!("{stdout}{failed} of {} members failed", results.len());
    }
    Ok(commands::Output {
        stdout,
        stderr: String::new(),
    })
}

fn json_line(value: &impl serde::Serialize) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text)
}

fn status(args: &ConfigArgs, json: bool) -> Result<commands::Output, anyhow::Error> {
    match ask(args, ControlRequest::Status)? {
        ControlResponse::Status(mut s) => {
            if !json {
                colony_replicas(args, &mut s);
            }
            Ok(commands::Output {
                stdout: if json { json_line(&s)? } else { s.render() },
                stderr: String::new(),
            })
        }
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

/// A worker knows only its own replicas' states: for the human rendering, take the
/// colony-wide rows from the queen it names (best effort; the worker's own rows stay when she
/// does not answer). `--json` prints the asked agent's own view (`workloads.scope` says which).
fn colony_replicas(args: &ConfigArgs, s: &mut aware_agent::Status) {
    use aware_agent::workloads::ReplicaScope;
    let Some(w) = &mut s.workloads else { return };
    let Some(addr) = s.queen.and_then(|q| q.addr) else {
        return;
    };
    if w.scope == ReplicaScope::Colony || addr == s.addr {
        return;
    }
    let Ok(client) = args.resolve_client() else {
        return;
    };
    let Ok(rt) = runtime() else { return };
    let answer = rt.block_on(control_plane::admin_request(
        &client.admin_dir,
        addr,
        ControlRequest::Status,
    ));
    if let Ok(ControlResponse::Status(q)) = answer
        && let Some(qw) = q.workloads
        && qw.scope == ReplicaScope::Colony
    {
        w.replicas = qw.replicas;
        w.scope = ReplicaScope::Colony;
    }
}

fn endpoints(args: &ConfigArgs, role: &str, json: bool) -> anyhow::Result<commands::Output> {
    match ask(
        args,
        ControlRequest::Endpoints {
            role: role.to_owned(),
        },
    )? {
        ControlResponse::Endpoints { role, endpoints } => Ok(commands::Output {
            stdout: if json {
                json_line(&serde_json::json!({ "role": role, "endpoints": endpoints }))?
            } else {
                endpoints.iter().map(|e| format!("{e}\n")).collect()
            },
            stderr: String::new(),
        }),
        ControlResponse::Failed(e) => anyhow::bail!("{e}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

fn apply(
    args: &ConfigArgs,
    file: &std::path::Path,
    json: bool,
) -> anyhow::Result<commands::Output> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("{name}: cannot read"))?;
    // The same checks, with the same FILE:LINE:COL errors, as `spec check`.
    let spec = aware_agent::dna::spec::parse(&text, &name)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_spec();
    match ask(args, ControlRequest::ApplySpec { spec })? {
        ControlResponse::Applied(plan) => Ok(commands::Output {
            stdout: if json {
                json_line(&plan)?
            } else {
                plan.render()
            },
            stderr: String::new(),
        }),
        ControlResponse::ApplyFailed(e) => anyhow::bail!("{e}"),
        ControlResponse::Failed(e) => anyhow::bail!("{e}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

fn main() -> ExitCode {
    let result: anyhow::Result<commands::Output> = match Cli::parse().command {
        Command::Spec(SpecCommand::Check { file, nodes }) => {
            commands::spec_check(&file, nodes.as_deref()).map_err(Into::into)
        }
        Command::Spec(SpecCommand::Plan { file, nodes, json }) => {
            commands::spec_plan(&file, &nodes, json).map_err(Into::into)
        }
        Command::Spec(SpecCommand::ImportCompose { file }) => {
            commands::import_compose(&file).map_err(Into::into)
        }
        Command::Caps {
            config,
            data_dir,
            json,
        } => commands::caps(config.as_deref(), Some(&data_dir), json).map_err(Into::into),
        Command::Run {
            config,
            stop_workloads,
        } => return run(&config, stop_workloads),
        Command::Endpoints { role, json, config } => endpoints(&config, &role, json),
        Command::Demo(args) => return aware_agent::demo::run(args),
        Command::Workload(command) => return aware_agent::workload::run(command),
        Command::Status { json, config } => status(&config, json),
        Command::Apply { file, json, config } => apply(&config, &file, json),
        Command::Ca(CaCommand::Init { dir, colony }) => ca_init(&dir, &colony),
        Command::Token(TokenCommand::Create { ca_dir, ttl }) => token_create(&ca_dir, ttl.into()),
        Command::Keys(op) => keys(op),
    };
    let written = match &result {
        Ok(out) => emit(std::io::stderr().lock(), &out.stderr)
            .and_then(|()| emit(std::io::stdout().lock(), &out.stdout)),
        Err(e) => emit(
            std::io::stderr().lock(),
            &format!("{}\n", aware_agent::error_line(e)),
        ),
    };
    match (result, written) {
        (Ok(_), Ok(())) => ExitCode::SUCCESS,
        (_, Err(e)) => {
            let _ = writeln!(
                std::io::stderr(),
                "aware-agent: {}",
                aware_agent::error_line(&e)
            );
            ExitCode::FAILURE
        }
        (Err(_), Ok(())) => ExitCode::FAILURE,
    }
}
