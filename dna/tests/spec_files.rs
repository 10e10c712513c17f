//! Data-driven tests of the colony-spec language: every malformed spec under
//! `tests/spec_errors/` against its exact expected errors, every example colony and template
//! against snapshots, and a robustness sweep (truncations and byte flips never panic).
//!
//! Regenerate expectations with `UPDATE_EXPECT=1 cargo test -p dna --test spec_files`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What `aware` would print for this spec: parse errors, else errors against `NAME.nodes`.
fn render(dir: &Path, name: &str) -> String {
    let file = format!("{name}.yaml");
    let text = std::fs::read_to_string(dir.join(&file)).unwrap();
    let result = dna::spec::parse(&text, &file).and_then(|doc| {
        let nodes_file = format!("{name}.nodes");
        match std::fs::read_to_string(dir.join(&nodes_file)) {
            Ok(nodes) => doc.check_nodes(&dna::spec::parse_nodes(&nodes, &nodes_file)?),
            Err(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => "OK\n".to_owned(),
        Err(e) => format!("{e}\n"),
    }
}

#[test]
fn malformed_specs_report_exact_errors() {
    let dir = root().join("dna/tests/spec_errors");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "yaml").then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    assert!(names.len() >= 20, "only {} error cases", names.len());
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for name in &names {
        let actual = render(&dir, name);
        let expected_path = dir.join(format!("{name}.expected"));
        if update {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual == "OK\n" {
            failures.push(format!("{name}: parsed without errors"));
        } else if actual != expected {
            failures.push(format!(
                "{name}:\n--- expected\n{expected}--- actual\n{actual}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn example(name: &str) -> String {
    let path = root().join("examples/colonies").join(name);
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn every_example_colony_parses_and_fits_the_rack() {
    let rack = std::fs::read_to_string(root().join("examples/nodes/rack.yaml")).unwrap();
    let nodes = dna::spec::parse_nodes(&rack, "rack.yaml").unwrap();
    assert_eq!(nodes.len(), 12);
    assert!(nodes.windows(2).all(|w| w[0].node < w[1].node));
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("examples/colonies")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let doc = dna::spec::parse(&text, &file).unwrap_or_else(|e| panic!("{e}"));
        doc.check_nodes(&nodes).unwrap_or_else(|e| panic!("{e}"));
        seen += 1;
    }
    assert!(seen >= 5);
}

#[test]
fn templates_match_their_example_files() {
    for name in dna::spec::TEMPLATES {
        assert_eq!(
            dna::spec::template(name),
            Some(example(&format!("{name}.yaml")).as_str())
        );
    }
    assert_eq!(dna::spec::template("nope"), None);
}

fn summary_of(text: &str) -> String {
    dna::spec::parse(text, "t.yaml")
        .unwrap_or_else(|e| panic!("{e}"))
        .summary()
}

#[test]
fn template_web_tier() {
    expect_test::expect_file!["snapshots/web-tier.txt"]
        .assert_eq(&summary_of("colony: w\ntemplate: web-tier\n"));
}

#[test]
fn template_database_cluster() {
    expect_test::expect_file!["snapshots/database-cluster.txt"]
        .assert_eq(&summary_of("colony: d\ntemplate: database-cluster\n"));
}

#[test]
fn template_compute_pool() {
    expect_test::expect_file!["snapshots/compute-pool.txt"]
        .assert_eq(&summary_of("colony: c\ntemplate: compute-pool\n"));
}

#[test]
fn template_ai_stack() {
    expect_test::expect_file!["snapshots/ai-stack.txt"]
        .assert_eq(&summary_of("colony: a\ntemplate: ai-stack\n"));
}

#[test]
fn shop_scales_the_web_tier() {
    expect_test::expect_file!["snapshots/shop.txt"].assert_eq(&summary_of(&example("shop.yaml")));
}

#[test]
fn overrides_merge_per_key() {
    let text = "\
colony: shop
template: web-tier
roles:
  front-end:
    mode: global
    needs: {memory: 384Mi}
    workload: {image: nginx:1.28}
  cache:
    workload: {image: redis:7}
";
    let doc = dna::spec::parse(text, "t.yaml").unwrap();
    let spec = doc.spec();
    let fe = spec.role("front-end").unwrap();
    assert_eq!(
        fe.count,
        swarm_core::spec::Count::Global,
        "mode replaces replicas"
    );
    assert_eq!(fe.needs.memory_mib, 384);
    assert_eq!(fe.needs.cpu_millis, 500, "cpu kept from the template");
    assert_eq!(fe.workload.image, "nginx:1.28");
    assert_eq!(fe.workload.ports.len(), 2, "ports kept from the template");
    assert_eq!(fe.anti_affinity, ["front-end"]);
    let names: Vec<&str> = spec.roles.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["front-end", "middleware", "database", "storage", "cache"]
    );
}

#[test]
fn writable_volumes_make_a_role_stateful_and_wait_five_minutes() {
    use swarm_core::spec::OnEndpointsChange;
    let text = "\
colony: c
template: web-tier
roles:
  cache:
    stateful: true
    reschedule-after: 90s
    workload: {image: redis:7}
  scratch:
    stateful: false
    workload: {image: x, volumes: [\"tmp:/tmp\"]}
  app:
    depends-on: [database]
    on-endpoints-change: restart
    workload: {image: app:1}
";
    let doc = dna::spec::parse(text, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
    let spec = doc.spec();
    let of = |name: &str| {
        let r = spec.role(name).unwrap();
        (r.stateful, r.reschedule_after_ms, r.on_endpoints_change)
    };
    let ignore = OnEndpointsChange::Ignore;
    // A read-only mount is configuration, not state.
    assert_eq!(of("front-end"), (false, 0, ignore));
    assert_eq!(of("middleware"), (false, 0, ignore));
    assert_eq!(
        of("database"),
        (true, 300_000, ignore),
        "pgdata is writable"
    );
    assert_eq!(of("storage"), (true, 300_000, ignore));
    assert_eq!(of("cache"), (true, 90_000, ignore));
    assert_eq!(of("scratch"), (false, 0, ignore), "`stateful: false` wins");
    assert_eq!(of("app"), (false, 0, OnEndpointsChange::Restart));
}

#[test]
fn arch_aliases_and_docker_env_names_are_accepted_and_normalised() {
    let text = "\
colony: rack
roles:
  search:
    needs: {arch: [x86_64, aarch64, armv7l, ppc64le, 386, i686, amd64]}
    workload:
      image: elasticsearch:8.15.0
      env: {discovery.type: single-node, 9LIVES: cat, MY-KEY: x}
";
    let doc = dna::spec::parse(text, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
    let role = doc.spec().role("search").unwrap().clone();
    assert_eq!(role.needs.arch, ["amd64", "arm64", "arm", "ppc64le", "386"]);
    let names: Vec<&str> = role.workload.env.keys().map(String::as_str).collect();
    assert_eq!(names, ["9LIVES", "MY-KEY", "discovery.type"]);
    // A node written with a `uname -m` name matches a spec written with Docker's.
    let nodes =
        dna::spec::parse_nodes("- {id: 1, cpu: 4, memory: 8Gi, arch: aarch64}\n", "n").unwrap();
    assert_eq!(nodes[0].caps.arch, "arm64");
    let pinned = "colony: c\nroles:\n  a:\n    needs: {arch: arm64}\n    workload: {image: x}\n";
    dna::spec::parse(pinned, "p.yaml")
        .unwrap()
        .check_nodes(&nodes)
        .unwrap();
}

fn mutations_never_panic(text: &str) {
    for cut in 0..=text.len() {
        if let Some(prefix) = text.get(..cut) {
            let _ = dna::spec::parse(prefix, "t.yaml");
            let _ = dna::spec::parse_nodes(prefix, "n.yaml");
        }
    }
    let bytes = text.as_bytes();
    let replacements = [
        b' ', b'\t', b':', b'-', b'[', b'{', b'"', b'\n', b'#', b'&', b'*', b'9',
    ];
    // Deterministic xorshift so the sweep is reproducible.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..1500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = bytes.to_vec();
        let i = usize::try_from(x % b.len() as u64).unwrap();
        b[i] = replacements[usize::try_from((x >> 32) % replacements.len() as u64).unwrap()];
        if let Ok(s) = std::str::from_utf8(&b) {
            if let Ok(doc) = dna::spec::parse(s, "t.yaml") {
                let _ = doc.check_nodes(&[]);
                let _ = doc.summary();
            }
            let _ = dna::spec::parse_nodes(s, "n.yaml");
        }
    }
}

#[test]
fn hostile_mutations_never_panic() {
    mutations_never_panic(&example("ai-stack.yaml"));
    mutations_never_panic(&example("web-tier.yaml"));
    mutations_never_panic(
        &std::fs::read_to_string(root().join("examples/nodes/rack.yaml")).unwrap(),
    );
}

#[test]
fn a_spec_knows_the_template_it_starts_from() {
    let doc = dna::spec::parse("colony: shop\ntemplate: web-tier\n", "shop.yaml").unwrap();
    assert_eq!(doc.template(), Some("web-tier"));
    let own = "colony: x\nroles:\n  web:\n    workload: {image: nginx}\n";
    assert_eq!(dna::spec::parse(own, "x.yaml").unwrap().template(), None);
}
