//! Capability detection against a fake root: a fake `/dev` and a data directory that does not
//! exist yet (free disk comes from its nearest existing ancestor).
#![allow(clippy::unwrap_used)]

use aware_agent::caps::{self, DetectEnv};
use std::path::PathBuf;

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
        "free disk of the nearest existing ancestor: {detected:?}"
    );
    assert_eq!(detected.arch, std::env::consts::ARCH);
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
    std::fs::write(&file, "labels:\n  zone: a\nreserve:\n  disk: 1Gi\n").unwrap();
    let err = caps::load_config(&file).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}:4:3: ", file.display())),
        "{err}"
    );
    assert!(err.contains("disk"), "{err}");

    let err = caps::load_config(&root.join("absent.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.yaml: cannot read"), "{err}");
}
