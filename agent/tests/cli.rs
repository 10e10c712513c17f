//! The real `aware-agent` binary: exit codes (0 ok, 1 bad input, 2 usage) and error output that
//! names `FILE:LINE:COL`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn aware(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_aware-agent"))
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/compose")
        .join(name)
        .display()
        .to_string()
}

fn scratch(name: &str, text: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `FILE:LINE:COL: ` at the start of a line.
fn has_position(line: &str, file: &str) -> bool {
    let Some(rest) = line.strip_prefix(file).and_then(|r| r.strip_prefix(':')) else {
        return false;
    };
    let mut parts = rest.splitn(3, ':');
    let line_no = parts.next().unwrap_or_default();
    let col = parts.next().unwrap_or_default();
    !line_no.is_empty()
        && !col.is_empty()
        && line_no.bytes().all(|b| b.is_ascii_digit())
        && col.bytes().all(|b| b.is_ascii_digit())
        && parts.next().is_some_and(|m| m.starts_with(' '))
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(aware(&[]).code, 2);
    assert_eq!(aware(&["frobnicate"]).code, 2);
    assert_eq!(aware(&["spec", "check"]).code, 2);
    assert_eq!(
        aware(&["spec", "plan", "x.yaml"]).code,
        2,
        "--nodes is required"
    );
    assert_eq!(aware(&["caps", "--bogus"]).code, 2);
    assert_eq!(aware(&["--help"]).code, 0);
}

#[test]
fn run_without_a_colony_or_credentials_says_what_is_missing() {
    let r = aware(&["run"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no colony name"), "{}", r.stderr);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let r = aware(&[
        "run",
        "--colony",
        "c",
        "--bind",
        "127.0.0.1:0",
        "--advertise",
        "127.0.0.1:1",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("holds no node certificate"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--join-token"), "{}", r.stderr);
}

#[test]
fn missing_files_say_which_and_why() {
    for args in [
        &["spec", "check", "no-such-spec.yaml"][..],
        &[
            "spec",
            "plan",
            "no-such-spec.yaml",
            "--nodes",
            "no-such-nodes.yaml",
        ],
        &["spec", "import-compose", "no-such-spec.yaml"],
        &["caps", "--config", "no-such-spec.yaml"],
    ] {
        let r = aware(args);
        assert_eq!(r.code, 1, "{args:?}");
        assert!(
            r.stderr.starts_with("no-such-spec.yaml: cannot read: "),
            "{args:?}: {}",
            r.stderr
        );
        assert!(r.stdout.is_empty());
    }
}

#[test]
fn spec_errors_have_file_line_col() {
    let file = scratch("broken.spec.yaml", "colony: [unclosed\n");
    let r = aware(&["spec", "check", &file]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.is_empty());
    assert!(!r.stderr.is_empty());
    for line in r.stderr.lines() {
        assert!(has_position(line, &file), "{line}");
    }
}

#[test]
fn import_compose_prints_spec_and_positioned_warnings() {
    let file = example("web.compose.yaml");
    let r = aware(&["spec", "import-compose", &file]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with("colony: web\nroles:\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("service app: has only `build:`"),
        "{}",
        r.stderr
    );
    for line in r.stderr.lines() {
        assert!(has_position(line, &file), "{line}");
        assert!(line.contains(": warning: "), "{line}");
    }
}

#[test]
fn import_compose_fails_only_on_non_compose_input() {
    let not_yaml = scratch("not-yaml.compose.yaml", "services:\n  web: [\n");
    let r = aware(&["spec", "import-compose", &not_yaml]);
    assert_eq!(r.code, 1);
    assert!(
        has_position(r.stderr.lines().next().unwrap(), &not_yaml),
        "{}",
        r.stderr
    );

    let no_services = scratch("no-services.compose.yaml", "version: '3'\nvolumes: {}\n");
    let r = aware(&["spec", "import-compose", &no_services]);
    assert_eq!(r.code, 1);
    assert!(
        has_position(r.stderr.lines().next().unwrap(), &no_services),
        "{}",
        r.stderr
    );

    let odd = scratch(
        "odd.compose.yaml",
        "services:\n  a:\n    image: x\n    ports: [\"1-3\", 70000]\n    weird: {x: 1}\n",
    );
    let r = aware(&["spec", "import-compose", &odd]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 3, "{}", r.stderr);
}

#[test]
fn caps_prints_yaml_or_json_and_rejects_bad_config() {
    let config = scratch("caps-ok.yaml", "labels: {zone: a}\ngpus: 2\n");
    let r = aware(&["caps", "--config", &config, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(json["labels"]["zone"], "a");
    assert_eq!(json["gpus"], 2);
    assert_eq!(
        json["arch"],
        aware_agent::caps::oci_arch(std::env::consts::ARCH, cfg!(target_endian = "little"))
    );

    let r = aware(&["caps", "--config", &config]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("gpus: 2\n"), "{}", r.stdout);
    assert!(r.stdout.contains("  zone: a\n"), "{}", r.stdout);

    let bad = scratch("caps-bad.yaml", "labels: {zone: a}\ngpus: many\n");
    let r = aware(&["caps", "--config", &bad]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with(&format!("{bad}:2:7: ")),
        "{}",
        r.stderr
    );
}

#[test]
fn import_compose_interpolates_from_the_environment_over_dot_env() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-interpolate");
    std::fs::create_dir_all(&dir).unwrap();
    let compose = dir.join("compose.yaml");
    std::fs::write(
        &compose,
        "services:\n  web:\n    image: nginx:${TAG:-1.27}\n    volumes: [\"${DATA:-./data}:/data\"]\n",
    )
    .unwrap();
    std::fs::write(dir.join(".env"), "TAG=1.26\nDATA=/srv/from-dot-env\n").unwrap();
    let run = |tag: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aware-agent"));
        cmd.args(["spec", "import-compose"]).arg(&compose);
        cmd.env_remove("TAG").env_remove("DATA");
        if let Some(tag) = tag {
            cmd.env("TAG", tag);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let from_file = run(None);
    assert!(from_file.contains("image: nginx:1.26"), "{from_file}");
    assert!(from_file.contains("/srv/from-dot-env:/data"), "{from_file}");
    let from_env = run(Some("1.28"));
    assert!(from_env.contains("image: nginx:1.28"), "{from_env}");

    // A required variable that is missing is an error with its position (exit 1).
    std::fs::write(
        &compose,
        "services:\n  web:\n    image: nginx:${TAG:?pick a tag}\n",
    )
    .unwrap();
    std::fs::remove_file(dir.join(".env")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aware-agent"))
        .args(["spec", "import-compose"])
        .arg(&compose)
        .env_remove("TAG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let file = compose.display().to_string();
    assert!(
        stderr.starts_with(&format!(
            "{file}:3:5: required variable TAG is missing a value: pick a tag"
        )),
        "{stderr}"
    );
}
