//! Against the real spec parser and planner: imported compose specs parse, `spec check` accepts
//! them, and `spec plan --json` accounts for every replica (placed or unplaced with a reason).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const NODES: &str = "\
- id: 1
  cpu: 4
  memory: 8Gi
  disk: 100Gi
  gpus: 0
  arch: x86_64
  labels: {zone: a}
- id: 2
  cpu: 8
  memory: 32Gi
  disk: 500Gi
  gpus: 1
  arch: x86_64
  labels: {zone: b}
- id: 3
  cpu: 2
  memory: 4Gi
  disk: 50Gi
  gpus: 0
  arch: aarch64
  labels: {zone: a}
";

fn aware(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aware-agent"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Write a file under a directory of the test's own: tests run in parallel and must not rewrite
/// a file another test is reading.
fn scratch(test: &str, name: &str, text: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("end-to-end")
        .join(test);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Import an example through the binary and save the spec next to the scratch files.
fn imported(test: &str, example: &str) -> (String, String) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/compose")
        .join(example);
    let (code, spec, stderr) = aware(&["spec", "import-compose", &file.display().to_string()]);
    assert_eq!(code, 0, "{stderr}");
    let name = example.replace(".compose.yaml", ".spec.yaml");
    (scratch(test, &name, &spec), spec)
}

fn repo_file(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .display()
        .to_string()
}

#[test]
fn spec_check_summarises_in_one_line() {
    let (code, stdout, stderr) =
        aware(&["spec", "check", &repo_file("examples/colonies/shop.yaml")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "shop: 4 roles, 6 replicas + 1 global role (template web-tier)\n"
    );

    let nodes = repo_file("examples/nodes/rack.yaml");
    let (code, stdout, stderr) = aware(&[
        "spec",
        "check",
        &repo_file("examples/colonies/ai-stack.yaml"),
        "--nodes",
        &nodes,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.ends_with("; checked against 12 nodes\n"), "{stdout}");
}

#[test]
fn spec_and_nodes_errors_are_all_reported_with_positions() {
    let spec = scratch(
        "errors",
        "bad.spec.yaml",
        "colony: shop\nroles:\n  web:\n    replicas: lots\n    workload: {image: nginx}\n",
    );
    let nodes = scratch("errors", "bad-nodes.yaml", "- {id: 1, cpu: 4}\n");
    let (code, stdout, stderr) = aware(&["spec", "check", &spec, "--nodes", &nodes]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(stderr.contains(&format!("{spec}:4:")), "{stderr}");
    assert!(stderr.contains(&format!("{nodes}:1:")), "{stderr}");

    // A request no node can meet is reported at the spec line that asks for it.
    let greedy = scratch(
        "errors",
        "greedy.spec.yaml",
        "colony: ml\nroles:\n  train:\n    replicas: 1\n    needs: {cpu: 1, memory: 1Gi, gpus: 3}\n    workload: {image: trainer, gpus: 3}\n",
    );
    let (code, _, stderr) = aware(&[
        "spec",
        "check",
        &greedy,
        "--nodes",
        &repo_file("examples/nodes/rack.yaml"),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.starts_with(&format!("{greedy}:5:")), "{stderr}");
}

#[test]
fn imported_specs_parse_and_check() {
    for example in ["ai-stack.compose.yaml", "web.compose.yaml"] {
        let (file, text) = imported("parse", example);
        let doc = dna::spec::parse(&text, &file);
        assert!(doc.is_ok(), "{example}:\n{}\n{text}", doc.unwrap_err());
        let nodes = scratch("parse", "nodes.yaml", NODES);
        let (code, stdout, stderr) = aware(&["spec", "check", &file, "--nodes", &nodes]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
    }
}

#[test]
fn plan_json_accounts_for_every_replica() {
    let (file, text) = imported("plan", "web.compose.yaml");
    let spec = dna::spec::parse(&text, &file).unwrap().into_spec();
    let nodes = scratch("plan", "nodes.yaml", NODES);
    let (code, stdout, stderr) = aware(&["spec", "plan", &file, "--nodes", &nodes, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();

    let mut seen = BTreeSet::new();
    for p in plan["placements"].as_array().unwrap() {
        assert!(p["node"].is_u64(), "{p}");
        assert!(p["fallback"].is_boolean(), "{p}");
        let key = (
            p["role"].as_str().unwrap().to_owned(),
            p["replica"].as_u64().unwrap(),
        );
        assert!(seen.insert(key), "placed twice: {p}");
    }
    for u in plan["unplaced"].as_array().unwrap() {
        assert!(!u["reason"].as_str().unwrap().is_empty(), "{u}");
        let key = (
            u["role"].as_str().unwrap().to_owned(),
            u["replica"].as_u64().unwrap(),
        );
        assert!(seen.insert(key), "placed and unplaced: {u}");
    }
    for role in &spec.roles {
        if let swarm_core::spec::Count::Replicas(n) = role.count {
            for replica in 0..u64::from(n) {
                assert!(
                    seen.contains(&(role.name.clone(), replica)),
                    "{} #{replica} neither placed nor unplaced:\n{stdout}",
                    role.name
                );
            }
        }
    }

    let (code, table, stderr) = aware(&["spec", "plan", &file, "--nodes", &nodes]);
    assert_eq!(code, 0, "{stderr}");
    assert!(table.starts_with("ROLE"), "{table}");
}

#[test]
fn plan_reports_unplaced_replicas_with_reasons() {
    let spec = scratch(
        "unplaced",
        "ml.spec.yaml",
        "colony: ml\nroles:\n  train:\n    replicas: 3\n    needs: {cpu: 1, memory: 1Gi, gpus: 2}\n    workload: {image: trainer, gpus: 2}\n  web:\n    replicas: 2\n    needs: {cpu: 1, memory: 1Gi}\n    workload: {image: nginx}\n",
    );
    let nodes = repo_file("examples/nodes/rack.yaml");
    let (code, stdout, stderr) = aware(&["spec", "plan", &spec, "--nodes", &nodes, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // Only node 11 has two GPUs.
    assert_eq!(plan["placements"].as_array().unwrap().len(), 3, "{stdout}");
    let unplaced = plan["unplaced"].as_array().unwrap();
    assert_eq!(unplaced.len(), 2, "{stdout}");
    assert!(unplaced.iter().all(|u| u["role"] == "train"), "{stdout}");

    let (code, table, _) = aware(&["spec", "plan", &spec, "--nodes", &nodes]);
    assert_eq!(code, 0);
    assert!(table.contains("\nunplaced (2):\n  train #"), "{table}");
}
