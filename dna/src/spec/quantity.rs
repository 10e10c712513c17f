//! Resource quantities as people write them: cpu `2`, `0.5`, `500m`; memory and disk `512Mi`, `1Gi`.
//!
//! STUB (owner: spec helper).

/// CPU in millicores from `"2"`, `"0.5"`, `"500m"`.
pub fn cpu_millis(s: &str) -> Result<u32, String> {
    Err(format!("cannot parse cpu {s:?} yet"))
}

/// Bytes-like quantity in MiB from `"512Mi"`, `"1Gi"`, `"2G"`, ... (a unit is required).
pub fn mib(s: &str) -> Result<u64, String> {
    Err(format!("cannot parse quantity {s:?} yet"))
}
