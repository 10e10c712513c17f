//! `aware-sim`: run one simulated colony, or sweep a scenario over many seeds.

use anyhow::{Context, Result, bail};
use aware_sim::engine::{Options, Sim};
use aware_sim::report::Report;
use aware_sim::scenario::{NetworkSpec, Scenario, parse_duration_us};
use aware_sim::{plot, sweep};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "aware-sim",
    version,
    about = "Deterministic simulator for AWARE colonies: same seed, same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate one colony and print its report (a timeline, or JSON with --json; a picture with
    /// --svg).
    Run {
        #[command(flatten)]
        common: Common,
        /// RNG seed: the same seed replays the same run, event for event.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the timeline of crowns, crashes and partitions (default without --json).
        #[arg(long)]
        quiet: bool,
        /// Also draw the run to FILE (SVG): members known per node over time, a band per
        /// queen's reign, markers for crashes, partitions, heals and failovers.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Run a scenario for every seed in a range and aggregate the results (histograms with
    /// --svg). Shows a progress bar when stdout and stderr are both a terminal and not --json.
    Sweep {
        #[command(flatten)]
        common: Common,
        /// Seeds as `A..B` (exclusive) or `A..=B`.
        #[arg(long, default_value = "0..100")]
        seeds: String,
        /// Worker threads (each run is single-threaded and deterministic).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Also draw histograms to FILE (SVG): first queen, failover and membership-convergence
        /// times across the seeds, with p50 and p99 marked.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Scenario file (sim/scenarios/*.yaml). Without one: a LAN cold start (1–5 ms, 1% loss).
    scenario: Option<PathBuf>,
    /// Number of nodes (overrides the scenario's `nodes`).
    #[arg(long)]
    nodes: Option<usize>,
    /// Simulated time, e.g. `120s`, `10m`, `1h` (overrides the scenario's `duration`).
    #[arg(long)]
    duration: Option<String>,
    /// Give every node the full member list at boot instead of joining through seeds (the
    /// default from `PRELOAD_FROM_NODES` nodes on).
    #[arg(long, conflicts_with = "join")]
    preload: bool,
    /// Join through the seeds even in a colony of `PRELOAD_FROM_NODES` nodes or more.
    #[arg(long)]
    join: bool,
    /// Print JSON (and no progress bar).
    #[arg(long)]
    json: bool,
    /// Print diagnostics to stderr (messages by kind, ballots per second, stray nodes).
    #[arg(long)]
    debug: bool,
    /// A colony spec for the first queen (overrides the scenario's `spec`).
    #[arg(long)]
    spec: Option<PathBuf>,
}

/// From this many nodes on, runs preload membership unless `--join` asks otherwise: a join
/// wave of n nodes costs O(n²) packets and foca inserts each member with a linear search.
const PRELOAD_FROM_NODES: usize = 2000;

fn default_scenario() -> Scenario {
    Scenario {
        name: "lan-cold-start".to_owned(),
        nodes: None,
        duration_us: None,
        bootstrap_expect: None,
        start_spread_us: 1_000_000,
        network: NetworkSpec {
            latency_min_us: 1_000,
            latency_max_us: 5_000,
            loss: 0.01,
            duplicate: 0.0,
            reorder: 0.0,
        },
        events: Vec::new(),
        chaos: None,
        spec: None,
        capabilities: Vec::new(),
        drift: Vec::new(),
        replica_start_us: None,
    }
}

fn load(common: &Common) -> Result<(Scenario, Options)> {
    let scenario = match &common.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read scenario {}", path.display()))?;
            let file = path.display().to_string();
            Scenario::parse(&text, &file).map_err(|e| anyhow::anyhow!("{e}"))?
        }
        None => default_scenario(),
    };
    let nodes = common.nodes.or(scenario.nodes).unwrap_or(100);
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let file = common
        .scenario
        .as_ref()
        .map_or("(default scenario)".to_owned(), |p| p.display().to_string());
    scenario
        .validate(nodes, &file)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let duration_us = match &common.duration {
        Some(d) => parse_duration_us(d).map_err(|e| anyhow::anyhow!("--duration: {e}"))?,
        None => scenario.duration_us.unwrap_or(120_000_000),
    };
    // A scenario's `spec:` is relative to the scenario file.
    let spec_path = common.spec.clone().or_else(|| {
        let rel = scenario.spec.as_ref()?;
        let base = common.scenario.as_ref()?.parent()?;
        Some(base.join(rel))
    });
    let spec = match spec_path {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read colony spec {}", path.display()))?;
            let doc = dna::spec::parse(&text, &path.display().to_string())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Some(std::sync::Arc::new(doc.into_spec()))
        }
        None => None,
    };
    let opts = Options {
        nodes,
        seed: 0,
        duration_us,
        preload_membership: common.preload || (nodes >= PRELOAD_FROM_NODES && !common.join),
        debug: common.debug,
        timeline: false,
        spec,
    };
    Ok((scenario, opts))
}

fn parse_seeds(s: &str) -> Result<std::ops::Range<u64>> {
    let (a, b, inclusive) = if let Some((a, b)) = s.split_once("..=") {
        (a, b, true)
    } else if let Some((a, b)) = s.split_once("..") {
        (a, b, false)
    } else {
        bail!("--seeds {s:?}: expected A..B or A..=B");
    };
    let a: u64 = a
        .trim()
        .parse()
        .with_context(|| format!("--seeds {s:?}: bad start"))?;
    let b: u64 = b
        .trim()
        .parse()
        .with_context(|| format!("--seeds {s:?}: bad end"))?;
    let end = if inclusive { b.saturating_add(1) } else { b };
    if end <= a {
        bail!("--seeds {s:?} is empty");
    }
    Ok(a..end)
}

/// Peak resident memory of this process, from the kernel.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn replay_command(common: &Common, opts: &Options, seed: u64) -> String {
    let mut cmd = String::from("cargo run --release -p aware-sim -- run");
    if let Some(p) = &common.scenario {
        cmd.push_str(&format!(" {}", p.display()));
    }
    cmd.push_str(&format!(
        " --nodes {} --seed {seed} --duration {}s",
        opts.nodes,
        opts.duration_us / 1_000_000
    ));
    if common.preload {
        cmd.push_str(" --preload");
    }
    if common.join {
        cmd.push_str(" --join");
    }
    if let Some(spec) = &common.spec {
        cmd.push_str(&format!(" --spec {}", spec.display()));
    }
    cmd
}

fn write_svg(path: &std::path::Path, svg: &str) -> Result<()> {
    std::fs::write(path, svg).with_context(|| format!("cannot write picture {}", path.display()))
}

/// A progress bar on stderr, only for a person watching: hidden with --json or when stdout or
/// stderr is not a terminal (piped, redirected, CI).
fn progress_bar(runs: u64, json: bool) -> ProgressBar {
    let watched = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    if json || !watched {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(runs);
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40.cyan/blue} {pos}/{len} seeds  {elapsed_precise} elapsed, eta {eta}",
    ) {
        bar.set_style(style.progress_chars("█▉▊▋▌▍▎▏ "));
    }
    bar
}

#[allow(clippy::disallowed_methods)] // wall-clock time of the whole run, outside the simulation
fn wall_clock() -> std::time::Instant {
    std::time::Instant::now()
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aware-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            common,
            seed,
            quiet,
            svg,
        } => {
            let (scenario, mut opts) = load(&common)?;
            opts.seed = seed;
            opts.timeline = !common.json && !quiet;
            let started = wall_clock();
            let mut sim = Sim::new(&scenario, opts);
            if svg.is_some() {
                sim = sim.record_series();
            }
            let mut report: Report = sim.run();
            report.wall_s = started.elapsed().as_secs_f64();
            report.peak_rss_mb = peak_rss_mb();
            if let Some(path) = &svg {
                let title = plot::run_title(&scenario.name, &report);
                write_svg(path, &plot::run_svg(&report, &title)?)?;
            }
            if common.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.readable());
            }
            Ok(if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Sweep {
            common,
            seeds,
            threads,
            svg,
        } => {
            let (scenario, opts) = load(&common)?;
            let seeds = parse_seeds(&seeds)?;
            let bar = progress_bar(seeds.end - seeds.start, common.json);
            let started = wall_clock();
            let reports = sweep::run_seeds(&scenario, &opts, seeds, threads, |_| bar.inc(1));
            bar.finish_and_clear();
            let wall = started.elapsed().as_secs_f64();
            let summary =
                sweep::summarize(&reports, wall, |seed| replay_command(&common, &opts, seed));
            if let Some(path) = &svg {
                let title = plot::sweep_title(&scenario.name, &summary);
                let samples = sweep::Samples::of(&reports);
                write_svg(path, &plot::sweep_svg(&samples, &title)?)?;
            }
            if common.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                // Times to the millisecond, counts as they are; "-" where there is no sample.
                let p = |x: &aware_sim::report::Percentiles| {
                    let v = |v: Option<f64>| {
                        v.map_or_else(
                            || "-".to_owned(),
                            |v| format!("{}", (v * 1000.0).round() / 1000.0),
                        )
                    };
                    format!(
                        "p50 {} p99 {} max {} (n={})",
                        v(x.p50),
                        v(x.p99),
                        v(x.max),
                        x.samples
                    )
                };
                println!(
                    "{} runs of {} nodes in {:.1}s wall",
                    summary.runs, summary.nodes, summary.wall_s
                );
                println!("first queen (s):          {}", p(&summary.first_queen_s));
                println!("failover (s):             {}", p(&summary.failover_s));
                println!(
                    "membership converged (s): {}",
                    p(&summary.membership_converged_s)
                );
                println!(
                    "  after the last boot (s): {}",
                    p(&summary.converged_after_last_boot_s)
                );
                if summary.detect_first_s.samples > 0 {
                    println!(
                        "worker crash known by first survivor (s): {}",
                        p(&summary.detect_first_s)
                    );
                    println!(
                        "worker crash known by last survivor (s):  {}",
                        p(&summary.detect_last_s)
                    );
                }
                if summary.queen_detect_first_s.samples > 0 {
                    println!(
                        "queen crash known by first survivor (s):  {}",
                        p(&summary.queen_detect_first_s)
                    );
                    println!(
                        "queen crash known by last survivor (s):   {}",
                        p(&summary.queen_detect_last_s)
                    );
                }
                if summary.detections_incomplete > 0 {
                    println!(
                        "crashes some survivor never marked down: {}",
                        summary.detections_incomplete
                    );
                }
                println!("suspicions per run:       {}", p(&summary.suspicions));
                println!(
                    "false downs per run:      {} (total {})",
                    p(&summary.false_downs),
                    summary.false_downs_total
                );
                println!(
                    "gossip B/s per node (second half of each run): {}",
                    p(&summary.gossip_bytes_per_node_s)
                );
                if summary.roles_assigned_s.samples > 0 {
                    println!("roles assigned (s):       {}", p(&summary.roles_assigned_s));
                    println!("churn moves per run:      {}", p(&summary.churn_moves));
                }
                println!("hand-overs per run:       {}", p(&summary.handovers));
                println!("extra terms per run:      {}", p(&summary.extra_terms));
                println!(
                    "runs without a queen: {:?}; unfinished failovers: {}",
                    summary.no_queen, summary.failovers_unfinished
                );
                for x in summary.extra_term_runs.iter().take(10) {
                    println!(
                        "  extra terms in seed {}: queens crowned at {:?}\n    replay: {}",
                        x.seed, x.crowned_s, x.replay
                    );
                }
                println!("violations: {}", summary.violations.len());
                for v in summary.violations.iter().take(20) {
                    println!(
                        "  seed {}: {}\n    replay: {}",
                        v.seed, v.violation, v.replay
                    );
                }
            }
            Ok(if summary.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
