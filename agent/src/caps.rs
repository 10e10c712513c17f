//! Capability detection on this node (cores, memory, the disk capacity of the data directory's
//! filesystem, GPUs, arch, hostname) and the operator's capability config file that adds
//! labels, overrides detected values and reserves resources for the host itself.
//!
//! Disk is a capacity like memory: the filesystem's *size*, less the operator's reserve, not the
//! space free right now. The planner subtracts each replica's `needs.disk` from it; measuring
//! free space as well would count a database's filled volume twice and evict it as it grows.
//!
//! Detection reads the real machine through `sysinfo`, but every path it looks at (the device
//! directory, the data directory, the `nvidia-smi` binary) comes from [`DetectEnv`], so tests can
//! point it at a fake root.

use crate::yaml_pos::KeyPositions;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use swarm_core::Capabilities;

/// Where the agent keeps its state by default; disk capacity is measured here.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/aware";

/// The paths detection looks at.
#[derive(Clone, Debug)]
pub struct DetectEnv {
    /// The device directory, normally `/dev`.
    pub dev_dir: PathBuf,
    /// The agent's data directory; disk capacity is that of the filesystem holding its nearest
    /// existing ancestor.
    pub data_dir: PathBuf,
    /// The `nvidia-smi` binary, when there is one.
    pub nvidia_smi: Option<PathBuf>,
}

impl DetectEnv {
    /// The real machine: `/dev`, the given data directory and `nvidia-smi` from `PATH`.
    pub fn host(data_dir: Option<&Path>) -> DetectEnv {
        DetectEnv {
            dev_dir: PathBuf::from("/dev"),
            data_dir: data_dir.map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), Path::to_path_buf),
            nvidia_smi: find_in_path("nvidia-smi"),
        }
    }
}

/// Detect what this node offers. Never fails: what cannot be measured reads as 0.
pub fn detect(env: &DetectEnv) -> Capabilities {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let mut memory = sys.total_memory();
    if let Some(limits) = sys.cgroup_limits() {
        // Inside a memory-limited container the cgroup, not the host, is what we can use.
        if limits.total_memory > 0 {
            memory = memory.min(limits.total_memory);
        }
    }
    // `available_parallelism` honours CPU affinity and cgroup quotas.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let cpu_millis = u32::try_from(cores)
        .unwrap_or(u32::MAX)
        .saturating_mul(1000);

    let mut labels = BTreeMap::new();
    if let Some(host) = sysinfo::System::host_name() {
        labels.insert("hostname".to_owned(), host);
    }

    Capabilities {
        cpu_millis,
        memory_mib: memory / MIB,
        disk_mib: disk_size(&env.data_dir) / MIB,
        gpus: count_gpus(env),
        arch: oci_arch(std::env::consts::ARCH, cfg!(target_endian = "little")),
        labels,
    }
}

const MIB: u64 = 1024 * 1024;

/// This machine's architecture in the colony's vocabulary (Docker/OCI names,
/// `swarm_core::caps::ARCHES`), from Rust's `std::env::consts::ARCH` and the byte order:
/// `x86_64` → `amd64`, `aarch64` → `arm64`, `arm` → `arm`, `powerpc64` (little-endian) →
/// `ppc64le`, `x86` → `386`. An architecture outside the vocabulary keeps Rust's name.
pub fn oci_arch(rust_arch: &str, little_endian: bool) -> String {
    let name = match (rust_arch, little_endian) {
        ("x86_64", _) => "amd64",
        ("aarch64", true) => "arm64",
        ("arm", true) => "arm",
        ("powerpc64", true) => "ppc64le",
        ("s390x", _) => "s390x",
        ("riscv64", _) => "riscv64",
        ("x86", _) => "386",
        (other, _) => other,
    };
    name.to_owned()
}

/// GPUs: the lines of `nvidia-smi -L` when that binary exists and runs, otherwise the
/// `nvidiaN` device files.
pub fn count_gpus(env: &DetectEnv) -> u16 {
    if let Some(smi) = &env.nvidia_smi
        && let Some(n) = nvidia_smi_gpus(smi)
    {
        return n;
    }
    count_nvidia_devices(&env.dev_dir)
}

/// Count `nvidia[0-9]+` entries in a device directory (`nvidiactl`, `nvidia-uvm` are not GPUs).
pub fn count_nvidia_devices(dev_dir: &Path) -> u16 {
    let Ok(entries) = std::fs::read_dir(dev_dir) else {
        return 0;
    };
    let n = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_str().is_some_and(|name| {
                name.strip_prefix("nvidia")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .count();
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// How long `nvidia-smi -L` may take before it is killed and the device files decide instead
/// (a wedged driver can hang it for minutes).
pub const NVIDIA_SMI_TIMEOUT_MS: u64 = 5_000;
/// The most output of `nvidia-smi -L` read (one line per GPU and MIG device).
const NVIDIA_SMI_MAX_OUTPUT_BYTES: u64 = 1 << 20;
/// How often a running `nvidia-smi` is polled for its exit.
const NVIDIA_SMI_POLL_MS: u64 = 10;

/// `nvidia-smi -L` prints one `GPU N: ...` line per GPU (MIG devices are indented under them).
fn nvidia_smi_gpus(smi: &Path) -> Option<u16> {
    nvidia_smi_gpus_within(smi, std::time::Duration::from_millis(NVIDIA_SMI_TIMEOUT_MS))
}

/// Run `smi -L` for at most `timeout`: spawn it, poll for its exit, kill it when time is up.
/// `None` when it cannot run, fails, or times out. Its output is read on a thread, so a child
/// that fills the pipe cannot block, and a grandchild holding the pipe open cannot hold us.
// The agent owns the clock: a real process gets a real deadline.
#[allow(clippy::disallowed_methods)]
pub fn nvidia_smi_gpus_within(smi: &Path, timeout: std::time::Duration) -> Option<u16> {
    use std::io::Read as _;
    use std::process::{Command, Stdio};
    let deadline = std::time::Instant::now() + timeout;
    let mut child = Command::new(smi)
        .arg("-L")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let read = stdout
            .take(NVIDIA_SMI_MAX_OUTPUT_BYTES)
            .read_to_string(&mut text);
        // The receiver may be gone after a timeout; nothing to do then.
        let _ = tx.send(read.map(|_| text));
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(NVIDIA_SMI_POLL_MS));
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    if !status.success() {
        return None;
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let text = rx.recv_timeout(left).ok()?.ok()?;
    Some(count_smi_lines(&text))
}

/// Count the GPU lines in `nvidia-smi -L` output.
pub fn count_smi_lines(text: &str) -> u16 {
    let n = text.lines().filter(|l| l.starts_with("GPU ")).count();
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The nearest ancestor of `path` (itself included) that exists.
pub fn nearest_existing(path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(path).ok()?;
    abs.ancestors().find(|p| p.exists()).map(Path::to_path_buf)
}

/// The size in bytes of the filesystem holding `data_dir` (or its nearest existing ancestor):
/// the mounted disk whose mount point is the longest prefix of that directory. Its size, not
/// what is free on it (see the module doc).
pub fn disk_size(data_dir: &Path) -> u64 {
    let Some(dir) = nearest_existing(data_dir) else {
        return 0;
    };
    let dir = dir.canonicalize().unwrap_or(dir);
    let disks = sysinfo::Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().components().count())
        .map_or(0, sysinfo::Disk::total_space)
}

/// The operator's capability config file, with quantities converted.
///
/// ```yaml
/// labels: {zone: a}
/// cpu: 8            # overrides what was detected
/// memory: 16Gi
/// disk: 200Gi
/// gpus: 1
/// reserve: {cpu: 500m, memory: 1Gi, disk: 20Gi}   # kept for the host itself
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapsConfig {
    pub labels: BTreeMap<String, String>,
    /// Millicores.
    pub cpu: Option<u32>,
    /// MiB.
    pub memory: Option<u64>,
    /// MiB.
    pub disk: Option<u64>,
    pub gpus: Option<u16>,
    pub reserve: Reserve,
}

/// Resources subtracted from what the node offers, for the host's own processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reserve {
    /// Millicores.
    pub cpu: Option<u32>,
    /// MiB.
    pub memory: Option<u64>,
    /// MiB, taken off the data filesystem's size (logs, images, the agent's own state).
    pub disk: Option<u64>,
}

/// The file as written; quantities stay text until [`parse_config`] converts them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    cpu: Option<RawQuantity>,
    memory: Option<RawQuantity>,
    disk: Option<RawQuantity>,
    gpus: Option<u16>,
    #[serde(default)]
    reserve: RawReserve,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReserve {
    cpu: Option<RawQuantity>,
    memory: Option<RawQuantity>,
    disk: Option<RawQuantity>,
}

/// A quantity as written in YAML: `2`, `0.5` or `"500m"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawQuantity {
    Int(u64),
    Float(f64),
    Text(String),
}

impl RawQuantity {
    fn text(&self) -> String {
        match self {
            RawQuantity::Int(n) => n.to_string(),
            RawQuantity::Float(f) => f.to_string(),
            RawQuantity::Text(s) => s.clone(),
        }
    }
}

/// A capability config file that could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{col}: {message}")]
    Invalid {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
}

/// Parse a capability config. `file` is only used in error messages.
pub fn parse_config(text: &str, file: &str) -> Result<CapsConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(CapsConfig::default());
    }
    let raw: RawConfig = serde_norway::from_str(text).map_err(|e| {
        let (line, col) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            col,
            message: strip_location(&e.to_string()),
        }
    })?;
    // serde_norway gives no position for errors raised after a value is read, so quantity
    // errors are placed with the key index instead.
    let positions = KeyPositions::index(text);
    let quantity =
        |q: &Option<RawQuantity>, path: &[&str], parse: &dyn Fn(&str) -> Result<u64, String>| {
            let Some(q) = q else { return Ok(None) };
            parse(&q.text()).map(Some).map_err(|message| {
                let (line, col) = positions.get(path).unwrap_or((1, 1));
                ConfigError::Invalid {
                    file: file.to_owned(),
                    line,
                    col,
                    message: format!("{}: {message}", path.join(".")),
                }
            })
        };
    let cpu = |s: &str| dna::spec::quantity::cpu_millis(s).map(u64::from);
    let mib = |s: &str| dna::spec::quantity::mib(s);
    let millis = |v: Option<u64>| v.map(|m| u32::try_from(m).unwrap_or(u32::MAX));
    Ok(CapsConfig {
        cpu: millis(quantity(&raw.cpu, &["cpu"], &cpu)?),
        memory: quantity(&raw.memory, &["memory"], &mib)?,
        disk: quantity(&raw.disk, &["disk"], &mib)?,
        gpus: raw.gpus,
        reserve: Reserve {
            cpu: millis(quantity(&raw.reserve.cpu, &["reserve", "cpu"], &cpu)?),
            memory: quantity(&raw.reserve.memory, &["reserve", "memory"], &mib)?,
            disk: quantity(&raw.reserve.disk, &["reserve", "disk"], &mib)?,
        },
        labels: raw.labels,
    })
}

/// Read and parse a capability config file.
pub fn load_config(path: &Path) -> Result<CapsConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse_config(&text, &file)
}

/// serde_norway appends " at line L column C" to its messages; we print the position up front.
pub(crate) fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_owned(),
        _ => msg.to_owned(),
    }
}

/// Apply a config to detected capabilities: overrides replace, labels are added (the config
/// wins on a clash), and the reserve is taken off (never below zero).
pub fn merge(mut caps: Capabilities, config: &CapsConfig) -> Capabilities {
    if let Some(cpu) = config.cpu {
        caps.cpu_millis = cpu;
    }
    if let Some(memory) = config.memory {
        caps.memory_mib = memory;
    }
    if let Some(disk) = config.disk {
        caps.disk_mib = disk;
    }
    if let Some(gpus) = config.gpus {
        caps.gpus = gpus;
    }
    caps.labels
        .extend(config.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    caps.cpu_millis = caps
        .cpu_millis
        .saturating_sub(config.reserve.cpu.unwrap_or(0));
    caps.memory_mib = caps
        .memory_mib
        .saturating_sub(config.reserve.memory.unwrap_or(0));
    caps.disk_mib = caps
        .disk_mib
        .saturating_sub(config.reserve.disk.unwrap_or(0));
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_arch_names_map_to_the_oci_vocabulary() {
        let table = [
            ("x86_64", true, "amd64"),
            ("aarch64", true, "arm64"),
            ("arm", true, "arm"),
            ("powerpc64", true, "ppc64le"),
            ("s390x", false, "s390x"),
            ("riscv64", true, "riscv64"),
            ("x86", true, "386"),
            // Outside the vocabulary: Rust's name, never a wrong guess.
            ("powerpc64", false, "powerpc64"),
            ("aarch64", false, "aarch64"),
            ("loongarch64", true, "loongarch64"),
        ];
        for (rust, little, want) in table {
            assert_eq!(oci_arch(rust, little), want, "{rust} little={little}");
        }
        // Every name in the vocabulary is reachable and canonical.
        for (rust, little, want) in &table[..7] {
            assert!(swarm_core::caps::ARCHES.contains(want), "{rust} {little}");
            assert_eq!(swarm_core::caps::canonical_arch(want), Some(*want));
        }
        // This machine's arch is in the vocabulary (the CI machines are).
        let here = oci_arch(std::env::consts::ARCH, cfg!(target_endian = "little"));
        assert!(swarm_core::caps::ARCHES.contains(&here.as_str()), "{here}");
    }

    #[test]
    fn smi_lines_count_gpus_not_mig_devices() {
        let out = "GPU 0: NVIDIA A100 (UUID: GPU-1)\n  MIG 1g.5gb Device 0: (UUID: MIG-1)\nGPU 1: NVIDIA A100 (UUID: GPU-2)\n";
        assert_eq!(count_smi_lines(out), 2);
        assert_eq!(count_smi_lines(""), 0);
    }

    #[test]
    fn strip_location_keeps_message() {
        assert_eq!(
            strip_location("labels: invalid type: found x at line 2 column 3"),
            "labels: invalid type: found x"
        );
        assert_eq!(strip_location("plain"), "plain");
    }

    #[test]
    fn config_errors_carry_file_line_col() {
        let err = parse_config("labels:\n  zone: a\nbogus: 1\n", "node.yaml").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("node.yaml:3:1: "), "{text}");
        assert!(text.contains("bogus"), "{text}");

        let err = parse_config("labels: [a, b]\n", "node.yaml").unwrap_err();
        assert!(err.to_string().starts_with("node.yaml:1:9: "), "{err}");

        let err = parse_config("gpus: -1\n", "node.yaml").unwrap_err();
        assert!(err.to_string().starts_with("node.yaml:1:7: "), "{err}");

        let err = parse_config("labels: {zone: [\n", "node.yaml").unwrap_err();
        assert!(err.to_string().starts_with("node.yaml:"), "{err}");
    }

    #[test]
    fn labels_and_gpus_merge_without_quantities() {
        let config = parse_config("labels: {zone: a, hostname: edge-1}\ngpus: 4\n", "c").unwrap();
        let mut detected = Capabilities::default();
        detected
            .labels
            .insert("hostname".to_owned(), "box".to_owned());
        let merged = merge(detected, &config);
        assert_eq!(merged.gpus, 4);
        assert_eq!(merged.labels["zone"], "a");
        assert_eq!(merged.labels["hostname"], "edge-1");
        assert_eq!(merged.cpu_millis, Capabilities::default().cpu_millis);
    }

    #[test]
    fn reserve_never_goes_below_zero() {
        let config = CapsConfig {
            reserve: Reserve {
                cpu: Some(500),
                memory: Some(1 << 40),
                disk: Some(1 << 40),
            },
            ..CapsConfig::default()
        };
        let merged = merge(Capabilities::default(), &config);
        assert_eq!(merged.cpu_millis, 3500);
        assert_eq!(merged.memory_mib, 0);
        assert_eq!(merged.disk_mib, 0);
    }

    #[test]
    fn quantities_in_config() {
        let config = parse_config(
            "cpu: 8\nmemory: 16Gi\ndisk: 200Gi\nreserve: {cpu: 500m, memory: 1Gi, disk: 20Gi}\n",
            "c",
        )
        .unwrap();
        let merged = merge(Capabilities::default(), &config);
        assert_eq!(merged.cpu_millis, 7500);
        assert_eq!(merged.memory_mib, 15 * 1024);
        assert_eq!(merged.disk_mib, 180 * 1024);

        let err = parse_config("labels: {}\nreserve:\n  memory: lots\n", "c").unwrap_err();
        assert!(
            err.to_string().starts_with("c:3:3: reserve.memory: "),
            "{err}"
        );
    }
}
