//! Resource quantities and durations as people write them: cpu `2`, `0.5`, `500m`; memory and
//! disk `512Mi`, `1Gi`, `2G`; durations `500ms`, `10s`, `2m`, `1h`.
//!
//! Parsing is exact (decimal digits, integer arithmetic, no floats), so `1e400Mi`, `NaN` or
//! `inf` are plain errors, and huge values report overflow instead of wrapping. Errors are short
//! sentences the caller embeds after the offending text (`invalid memory `512`: ...`).

/// A non-negative decimal number as digits: `value = mantissa / 10^scale`.
struct Decimal {
    mantissa: u128,
    scale: u32,
}

/// Parse `123`, `0.5`, `.5`, `5.` (digits only: no sign, exponent, separators or spaces).
fn decimal(s: &str) -> Result<Decimal, String> {
    if s.is_empty() {
        return Err("a number is required".to_owned());
    }
    if s.starts_with('-') {
        return Err("must not be negative".to_owned());
    }
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return Err("a number is required".to_owned());
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err("not a number (use digits with an optional decimal point)".to_owned());
    }
    let mut mantissa: u128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(b - b'0')))
            .ok_or_else(|| "too large".to_owned())?;
    }
    let scale = u32::try_from(frac.len()).map_err(|_| "too many decimals".to_owned())?;
    if scale > 30 {
        return Err("too many decimals".to_owned());
    }
    Ok(Decimal { mantissa, scale })
}

/// `ceil(d * mult / div)`, or `None` on overflow.
fn scaled_ceil(d: &Decimal, mult: u128, div: u128) -> Option<u128> {
    let num = d.mantissa.checked_mul(mult)?;
    let den = 10u128.checked_pow(d.scale)?.checked_mul(div)?;
    Some(num.div_ceil(den))
}

/// CPU in millicores from `"2"`, `"0.5"`, `"500m"`. Fractions of a millicore round up.
pub fn cpu_millis(s: &str) -> Result<u32, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("a cpu amount is required, e.g. `2`, `0.5` or `500m`".to_owned());
    }
    let (digits, mult, div) = match t.strip_suffix('m') {
        Some(d) => (d, 1, 1),
        None => (t, 1000, 1),
    };
    let d = decimal(digits).map_err(|e| format!("{e}; write cpu as `2`, `0.5` or `500m`"))?;
    let millis = scaled_ceil(&d, mult, div).ok_or_else(|| "too large".to_owned())?;
    u32::try_from(millis).map_err(|_| format!("too large (at most {} cores)", u32::MAX / 1000))
}

const KI: u128 = 1 << 10;
const UNITS: &[(&str, u128)] = &[
    ("Ki", KI),
    ("Mi", KI * KI),
    ("Gi", KI * KI * KI),
    ("Ti", KI * KI * KI * KI),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
];

/// Bytes-like quantity in MiB from `"512Mi"`, `"1Gi"`, `"2G"`, ... (a unit is required).
/// Binary units `Ki Mi Gi Ti`, decimal units `k M G T`; the result rounds up to whole MiB.
pub fn mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("a size is required, e.g. `512Mi` or `1Gi`".to_owned());
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if unit.is_empty() {
        return Err(format!(
            "a unit is required, e.g. `{t}Mi` (units: Ki Mi Gi Ti, or k M G T)"
        ));
    }
    if unit.starts_with(['e', 'E'])
        && unit[1..].starts_with(|c: char| c.is_ascii_digit() || c == '-')
    {
        return Err("exponent notation is not supported; write e.g. `512Mi` or `2Gi`".to_owned());
    }
    let Some(&(_, mult)) = UNITS.iter().find(|(u, _)| *u == unit) else {
        let hint = match unit.to_ascii_lowercase().trim_end_matches('b') {
            "k" | "ki" => " (did you mean `Ki`?)",
            "m" | "mi" => " (did you mean `Mi`?)",
            "g" | "gi" => " (did you mean `Gi`?)",
            "t" | "ti" => " (did you mean `Ti`?)",
            _ => "",
        };
        return Err(format!(
            "unknown unit `{unit}`{hint}; use Ki Mi Gi Ti (binary) or k M G T (decimal)"
        ));
    };
    let d = decimal(digits)?;
    let v = scaled_ceil(&d, mult, KI * KI).ok_or_else(|| "too large".to_owned())?;
    u64::try_from(v).map_err(|_| "too large".to_owned())
}

/// A duration in milliseconds from `"500ms"`, `"10s"`, `"2m"`, `"1h"` (whole numbers).
pub fn duration_ms(s: &str) -> Result<u32, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("a duration is required, e.g. `10s`".to_owned());
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let mult: u128 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(format!(
                "a unit is required, e.g. `{t}s` (units: ms, s, m, h)"
            ));
        }
        _ => return Err(format!("unknown unit `{unit}`; use ms, s, m or h")),
    };
    let d = decimal(digits)?;
    let v = scaled_ceil(&d, mult, 1).ok_or_else(|| "too large".to_owned())?;
    u32::try_from(v).map_err(|_| "too large (at most about 49 days)".to_owned())
}

/// Render MiB back the way a person would write it (`512Mi`, `8Gi`, `1.5Gi`).
pub fn fmt_mib(v: u64) -> String {
    if v >= 1024 * 1024 && v.is_multiple_of(1024 * 1024) {
        format!("{}Ti", v / (1024 * 1024))
    } else if v >= 1024 && v.is_multiple_of(1024) {
        format!("{}Gi", v / 1024)
    } else {
        format!("{v}Mi")
    }
}

/// Render millicores back the way a person would write it (`2`, `500m`).
pub fn fmt_cpu(m: u32) -> String {
    if m.is_multiple_of(1000) {
        format!("{}", m / 1000)
    } else {
        format!("{m}m")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(cpu_millis("2"), Ok(2000));
        assert_eq!(cpu_millis("0.5"), Ok(500));
        assert_eq!(cpu_millis(".25"), Ok(250));
        assert_eq!(cpu_millis("500m"), Ok(500));
        assert_eq!(cpu_millis(" 1.5 "), Ok(1500));
        assert_eq!(cpu_millis("0.0001"), Ok(1), "rounds up to a millicore");
        assert_eq!(cpu_millis("0"), Ok(0));
    }

    #[test]
    fn cpu_hostile() {
        for bad in [
            "", " ", "-1", "-500m", "1e3", "NaN", "inf", "1..2", ".", "m", "2 cores", "٣", "½",
            "1,5", "0x10", "+1", "1.5m5",
        ] {
            assert!(cpu_millis(bad).is_err(), "{bad:?} should fail");
        }
        assert!(cpu_millis("99999999999999999999999999999999999999999999").is_err());
        assert!(cpu_millis("4294968").is_err(), "overflows u32 millis");
        assert!(cpu_millis(&"9".repeat(10_000)).is_err());
        assert!(cpu_millis(&format!("0.{}", "1".repeat(100))).is_err());
    }

    #[test]
    fn memory_forms() {
        assert_eq!(mib("512Mi"), Ok(512));
        assert_eq!(mib("1Gi"), Ok(1024));
        assert_eq!(mib("1.5Gi"), Ok(1536));
        assert_eq!(mib("2Ti"), Ok(2 * 1024 * 1024));
        assert_eq!(mib("1Ki"), Ok(1), "rounds up");
        assert_eq!(mib("1G"), Ok(954), "1e9 bytes = 953.67 MiB, rounded up");
        assert_eq!(mib("1M"), Ok(1));
        assert_eq!(mib("1k"), Ok(1));
        assert_eq!(mib("0Mi"), Ok(0));
    }

    #[test]
    fn memory_hostile() {
        let e = mib("512").unwrap_err();
        assert!(e.contains("`512Mi`"), "{e}");
        assert!(mib("512MB").unwrap_err().contains("`Mi`"));
        assert!(mib("1gb").unwrap_err().contains("`Gi`"));
        for bad in [
            "", "Mi", "-1Mi", "-1", "1e400Mi", "NaNMi", "infGi", "1 Gi x", "١Gi", "1Gi🙂",
            "1.2.3Gi", "Gi1",
        ] {
            assert!(mib(bad).is_err(), "{bad:?} should fail");
        }
        assert!(mib(&format!("{}Ti", "9".repeat(40))).is_err());
        assert!(mib("99999999999999999999Ti").is_err(), "overflows u64 MiB");
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms("500ms"), Ok(500));
        assert_eq!(duration_ms("10s"), Ok(10_000));
        assert_eq!(duration_ms("2m"), Ok(120_000));
        assert_eq!(duration_ms("1h"), Ok(3_600_000));
        assert_eq!(duration_ms("0s"), Ok(0));
        assert!(duration_ms("10").unwrap_err().contains("`10s`"));
        for bad in [
            "", "s", "-1s", "1d", "1e9s", "10 s x", "NaNs", "⏱s", "2000h",
        ] {
            assert!(duration_ms(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for s in ["512Mi", "8Gi", "2Ti", "1536Mi"] {
            assert_eq!(fmt_mib(mib(s).unwrap()), s);
        }
        assert_eq!(fmt_cpu(cpu_millis("500m").unwrap()), "500m");
        assert_eq!(fmt_cpu(cpu_millis("4").unwrap()), "4");
    }
}
