//! Capability detection against a fake root: a fake `/dev`, a data directory that does not
//! exist yet (disk capacity comes from its nearest existing ancestor's filesystem), and fake
//! `nvidia-smi` scripts (one that answers, one that hangs and must be killed on time).
#![allow(clippy::unwrap_used)]
// Timing real `nvidia-smi` processes against their deadline needs the wall clock.
#![allow(clippy::disallowed_methods)]

use aware_agent::caps::{self, DetectEnv};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn fake_root(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("dev")).unwrap();
    root
}

#[test]
fn nvidia_device_files_count_as_gpus() {
    let root = fake_root("caps-gpus");
    for dev in [
        "nvidia0",
        "nvidia1",
        "nvidiactl",
        "nvidia-uvm",
        "nvidia-modeset",
        "null",
    ] {
        std::fs::write(root.join("dev").join(dev), b"").unwrap();
    }
    assert_eq!(caps::count_nvidia_devices(&root.join("dev")), 2);

    let env = DetectEnv {
        dev_dir: root.join("dev"),
        data_dir: root.join("var/lib/aware"),
        nvidia_smi: None,
    };
    let detected = caps::detect(&env);
    assert_eq!(detected.gpus, 2);
    assert!(detected.cpu_millis >= 1000, "{detected:?}");
    assert!(detected.memory_mib > 0, "{detected:?}");
    assert!(
        detected.disk_mib > 0,
        "disk of the nearest existing ancestor: {detected:?}"
    );
    assert_eq!(
        detected.arch,
        caps::oci_arch(std::env::consts::ARCH, cfg!(target_endian = "little"))
    );
    assert!(swarm_core::caps::ARCHES.contains(&detected.arch.as_str()));
}

#[test]
fn no_dev_dir_means_no_gpus() {
    let root = fake_root("caps-nodev");
    assert_eq!(caps::count_nvidia_devices(&root.join("missing")), 0);
    std::fs::write(root.join("dev/nvidia"), b"").unwrap();
    std::fs::write(root.join("dev/nvidiaX"), b"").unwrap();
    assert_eq!(caps::count_nvidia_devices(&root.join("dev")), 0);
}

#[test]
fn a_broken_nvidia_smi_falls_back_to_device_files() {
    let root = fake_root("caps-smi");
    std::fs::write(root.join("dev/nvidia0"), b"").unwrap();
    let env = DetectEnv {
        dev_dir: root.join("dev"),
        data_dir: root.clone(),
        // Not executable: running it fails, so the device files decide.
        nvidia_smi: Some(root.join("dev/nvidia0")),
    };
    assert_eq!(caps::count_gpus(&env), 1);
}

#[test]
fn data_dir_falls_back_to_nearest_existing_ancestor() {
    let root = fake_root("caps-data");
    let deep = root.join("a/b/c");
    assert_eq!(caps::nearest_existing(&deep).unwrap(), root);
    std::fs::create_dir_all(&deep).unwrap();
    assert_eq!(caps::nearest_existing(&deep).unwrap(), deep);
}

#[test]
fn config_file_errors_name_file_and_position() {
    let root = fake_root("caps-config");
    let file = root.join("node.yaml");
    std::fs::write(&file, "labels:\n  zone: a\nreserve:\n  swap: 1Gi\n").unwrap();
    let err = caps::load_config(&file).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}:4:3: ", file.display())),
        "{err}"
    );
    assert!(err.contains("swap"), "{err}");

    let err = caps::load_config(&root.join("absent.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.yaml: cannot read"), "{err}");
}

/// `df` (a real process) on the filesystem holding `dir`: (size, available) in bytes.
fn df(dir: &std::path::Path) -> (u64, u64) {
    let out = Command::new("df")
        .args(["-B1", "--output=size,avail"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let nums: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn disk_is_the_filesystem_size_not_the_free_space() {
    let root = fake_root("caps-disk");
    let size = caps::disk_size(&root.join("not/yet/there"));
    let (df_size, df_avail) = df(&root);
    assert_eq!(size, df_size, "the size df reports for {}", root.display());
    assert!(size >= df_avail);
    // The reserve comes off the capacity.
    let config = caps::parse_config("reserve: {disk: 1Gi}\n", "c").unwrap();
    let env = DetectEnv {
        dev_dir: root.join("dev"),
        data_dir: root.clone(),
        nvidia_smi: None,
    };
    let merged = caps::merge(caps::detect(&env), &config);
    assert_eq!(merged.disk_mib, (df_size >> 20).saturating_sub(1024));
}

/// Write an executable shell script.
fn script(path: &std::path::Path, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// All fake `nvidia-smi` runs live in one test: a script must be fully written before any
/// process forks, or exec fails with "text file busy".
#[test]
fn nvidia_smi_is_used_when_it_answers_and_killed_when_it_hangs() {
    let root = fake_root("caps-fake-smi");
    std::fs::write(root.join("dev/nvidia0"), b"").unwrap();
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let answers = root.join("answers");
    script(
        &answers,
        "echo 'GPU 0: NVIDIA A100 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA A100 (UUID: GPU-b)'\necho 'GPU 2: NVIDIA A100 (UUID: GPU-c)'",
    );
    let hangs = root.join("hangs");
    script(&hangs, "exec sleep 30");
    // A script whose child keeps the output pipe open after the script itself is killed.
    let holds_pipe = root.join("holds-pipe");
    script(&holds_pipe, "sleep 3\necho 'GPU 0: late'");
    script(&bin.join("nvidia-smi"), "exec sleep 30");

    let env = |smi: &std::path::Path| DetectEnv {
        dev_dir: root.join("dev"),
        data_dir: root.clone(),
        nvidia_smi: Some(smi.to_path_buf()),
    };
    assert_eq!(caps::count_gpus(&env(&answers)), 3, "nvidia-smi wins");

    for smi in [&hangs, &holds_pipe] {
        let started = Instant::now();
        assert_eq!(
            caps::nvidia_smi_gpus_within(smi, Duration::from_millis(300)),
            None
        );
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{}: {took:?}", smi.display());
    }

    // The real binary with the hanging fake first on PATH: the default timeout kills it and
    // the device files decide.
    let started = Instant::now();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_aware-agent"))
        .args(["caps", "--json", "--data-dir"])
        .arg(&root)
        .env("PATH", path)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    let timeout = Duration::from_millis(caps::NVIDIA_SMI_TIMEOUT_MS);
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(5),
        "took {took:?}"
    );
    let caps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // `aware-agent caps` looks at the real /dev, which on a GPU-less machine has no nvidiaN.
    let real_dev = caps::count_nvidia_devices(std::path::Path::new("/dev"));
    assert_eq!(caps["gpus"].as_u64(), Some(u64::from(real_dev)));
}
