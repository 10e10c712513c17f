//! Data-driven Compose import: every directory under `tests/compose_cases/` is converted with
//! its own `.env` and stand-in process environment, and the spec plus warnings (or the error)
//! must equal its `expected` file. See `tests/compose_cases/README.md`.
#![allow(clippy::unwrap_used)]

use aware_agent::compose::{self, Options};
use std::path::{Path, PathBuf};

fn render(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    let env: Vec<(String, String)> = std::fs::read_to_string(dir.join("environment"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // The file is named by its case, so positions read `CASE/compose.yaml:LINE:COL`.
    let file = format!("{name}/compose.yaml");
    let result = compose::load_variables(dir, env).and_then(|variables| {
        let options = Options {
            base_dir: Some(PathBuf::from("/srv/compose")),
            variables,
        };
        compose::convert(&text, &file, &options)
    });
    match result {
        Ok(out) => {
            let warnings: Vec<String> = out.warnings.iter().map(ToString::to_string).collect();
            format!("{}\n# stderr:\n{}\n", out.spec_yaml, warnings.join("\n"))
        }
        Err(e) => {
            // The .env path is absolute; keep the expectation independent of the checkout.
            let root = dir.parent().unwrap().display().to_string();
            format!("# error:\n{}\n", e.to_string().replace(&root, "CASES"))
        }
    }
}

#[test]
fn every_compose_case_converts_as_expected() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/compose_cases");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            e.file_type()
                .unwrap()
                .is_dir()
                .then(|| e.file_name().into_string().unwrap())
        })
        .collect();
    names.sort();
    assert!(names.len() >= 5, "{names:?}");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for name in &names {
        let dir = root.join(name);
        let actual = render(&dir, name);
        let expected_path = dir.join("expected");
        if update {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            failures.push(format!(
                "{name}:\n--- expected\n{expected}--- actual\n{actual}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every converted case that is not an error is a valid colony spec.
#[test]
fn converted_cases_pass_spec_check() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/compose_cases");
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let out = render(&dir, &name);
        if out.starts_with("# error:") {
            continue;
        }
        let spec = out.split("\n# stderr:").next().unwrap();
        dna::spec::parse(spec, &format!("{name}.spec.yaml")).unwrap_or_else(|e| panic!("{e}"));
    }
}
