//! Criterion benchmarks for AWARE live in `benches/benches/`; see benches/README.md.
