//! Snapshots of `examples/compose/*` converted to colony specs, warnings included, so any change
//! to the conversion shows up as a reviewable diff (`UPDATE_EXPECT=1 cargo test` to accept).
#![allow(clippy::unwrap_used)]

use aware_agent::compose::{self, Options};
use std::path::PathBuf;

fn convert(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/compose")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    // A fixed base directory keeps resolved relative binds independent of the checkout.
    let options = Options {
        base_dir: Some(PathBuf::from("/srv/compose")),
        ..Options::default()
    };
    let out = compose::convert(&text, name, &options).unwrap();
    let warnings: Vec<String> = out.warnings.iter().map(ToString::to_string).collect();
    format!("{}\n# stderr:\n{}\n", out.spec_yaml, warnings.join("\n"))
}

#[test]
fn ai_stack() {
    expect_test::expect_file!["snapshots/ai-stack.spec.yaml"]
        .assert_eq(&convert("ai-stack.compose.yaml"));
}

#[test]
fn web() {
    expect_test::expect_file!["snapshots/web.spec.yaml"].assert_eq(&convert("web.compose.yaml"));
}
