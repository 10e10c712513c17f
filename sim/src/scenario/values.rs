//! Scalar values of the scenario format: durations (`parse_duration_us`, `format_duration`
//! and their deserializers, signed and positive variants), counts, probabilities, clock drifts
//! in ppm (`parse_ppm`), latency ranges and the `heal` flag. Each checks its value inside the deserializer so that an error
//! carries the position of the offending YAML node.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

use super::MICROS_PER_SEC;
use super::errors::quote;

pub(super) const MICROS_PER_MS: u64 = 1_000;
const MICROS_PER_MIN: u64 = 60 * MICROS_PER_SEC;
const MICROS_PER_HOUR: u64 = 60 * MICROS_PER_MIN;

/// Parses a duration such as `250us`, `5ms`, `1.5s`, `2m` or `1h` into
/// microseconds. A unit is required; `µs` is accepted for `us`. Fractions are
/// allowed as long as the result is a whole number of microseconds.
///
/// # Errors
///
/// A message (without position) for a missing or unknown unit, a malformed
/// number, a value that is not whole microseconds, or one that overflows `u64`.
pub fn parse_duration_us(s: &str) -> Result<u64, String> {
    const HINT: &str = "expected a number and a unit (us, ms, s, m, h), e.g. `30s` or `1.5s`";
    let text = s.trim();
    if text.is_empty() {
        return Err(format!("empty duration; {HINT}"));
    }
    let split = text
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_digit() || c == '.'))
        .map_or(text.len(), |(i, _)| i);
    let (number, unit) = (&text[..split], text[split..].trim_start());
    if number.is_empty() {
        return Err(format!("invalid duration {}: {HINT}", quote(text)));
    }
    let unit_us = match unit {
        "us" | "µs" | "μs" => 1,
        "ms" => MICROS_PER_MS,
        "s" => MICROS_PER_SEC,
        "m" => MICROS_PER_MIN,
        "h" => MICROS_PER_HOUR,
        "" => {
            return Err(format!(
                "duration {} has no unit; write e.g. `{number}s` or `{number}ms` (units: us, ms, s, m, h)",
                quote(text)
            ));
        }
        other => {
            return Err(format!(
                "unknown unit {} in duration {} (units: us, ms, s, m, h)",
                quote(other),
                quote(text)
            ));
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let malformed =
        whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty());
    if malformed {
        return Err(format!("invalid duration {}: {HINT}", quote(text)));
    }
    let too_large = || format!("duration {} is too large", quote(text));
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let mut total = whole.checked_mul(unit_us).ok_or_else(too_large)?;
    let fraction = fraction.trim_end_matches('0');
    if !fraction.is_empty() {
        let not_whole = || {
            format!(
                "duration {} is not a whole number of microseconds",
                quote(text)
            )
        };
        // unit_us < 10^10, so an exact fraction never has more than 10
        // significant digits; longer ones cannot be whole microseconds.
        if fraction.len() > 10 {
            return Err(not_whole());
        }
        let digits: u128 = fraction.parse().map_err(|_| not_whole())?;
        let scale = 10u128.pow(fraction.len() as u32);
        let scaled = digits * u128::from(unit_us);
        if !scaled.is_multiple_of(scale) {
            return Err(not_whole());
        }
        let extra = u64::try_from(scaled / scale).map_err(|_| too_large())?;
        total = total.checked_add(extra).ok_or_else(too_large)?;
    }
    Ok(total)
}

/// Formats microseconds for messages: whole seconds as `90s`, else `ms` or `us`.
pub(super) fn format_duration(us: u64) -> String {
    if us.is_multiple_of(MICROS_PER_SEC) {
        format!("{}s", us / MICROS_PER_SEC)
    } else if us.is_multiple_of(MICROS_PER_MS) {
        format!("{}ms", us / MICROS_PER_MS)
    } else {
        format!("{us}us")
    }
}

/// A positive count (`nodes`, `bootstrap_expect`) with an extra check.
pub(super) struct CountSeed<F>(pub(super) F);

impl<'de, F: FnOnce(usize) -> Result<(), String>> DeserializeSeed<'de> for CountSeed<F> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<F: FnOnce(usize) -> Result<(), String>> Visitor<'_> for CountSeed<F> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a positive whole number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        if v == 0 {
            return Err(E::custom("must be at least 1"));
        }
        let n = usize::try_from(v).map_err(|_| E::custom(format_args!("{v} is too large")))?;
        (self.0)(n).map_err(E::custom)?;
        Ok(n)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
        }
    }
}

/// A duration string with an extra check on its value.
pub(super) struct DurationSeed<F>(pub(super) F);

impl<'de, F: FnOnce(u64) -> Result<(), String>> DeserializeSeed<'de> for DurationSeed<F> {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<F: FnOnce(u64) -> Result<(), String>> Visitor<'_> for DurationSeed<F> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration such as `30s`, `250ms` or `1.5s`")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        let us = parse_duration_us(v).map_err(E::custom)?;
        (self.0)(us).map_err(E::custom)?;
        Ok(us)
    }
}

fn no_check<T>(_: T) -> Result<(), String> {
    Ok(())
}

/// A duration with no extra check.
pub(super) struct Duration(pub(super) u64);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        DurationSeed(no_check::<u64>)
            .deserialize(deserializer)
            .map(Duration)
    }
}

/// A duration that must be longer than zero.
pub(super) struct PositiveDuration(pub(super) u64);

impl<'de> Deserialize<'de> for PositiveDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        DurationSeed(|us: u64| {
            if us == 0 {
                Err("must be longer than 0s".to_owned())
            } else {
                Ok(())
            }
        })
        .deserialize(deserializer)
        .map(PositiveDuration)
    }
}

/// A duration with an optional sign, like `500ms` or `-200ms`.
pub(super) struct SignedDuration(pub(super) i64);

impl<'de> Deserialize<'de> for SignedDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(SignedDurationVisitor)
    }
}

struct SignedDurationVisitor;

impl Visitor<'_> for SignedDurationVisitor {
    type Value = SignedDuration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration with an optional sign, such as `500ms` or `-200ms`")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SignedDuration, E> {
        let text = v.trim();
        let (negative, magnitude) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let us = parse_duration_us(magnitude).map_err(E::custom)?;
        let us = i64::try_from(us)
            .map_err(|_| E::custom(format_args!("offset {} is too large", quote(text))))?;
        Ok(SignedDuration(if negative { -us } else { us }))
    }
}

/// Parses a clock drift such as `200ppm`, `-150ppm` or `+50ppm` into whole parts per million,
/// within ±[`MAX_DRIFT_PPM`](crate::clock::MAX_DRIFT_PPM).
///
/// # Errors
///
/// A message (without position) for a missing or other unit, a fraction, or a drift beyond the
/// bound.
pub fn parse_ppm(s: &str) -> Result<i64, String> {
    use crate::clock::MAX_DRIFT_PPM;
    const HINT: &str = "expected whole parts per million, e.g. `200ppm` or `-150ppm`";
    let text = s.trim();
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let split = rest
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_digit() || c == '.'))
        .map_or(rest.len(), |(i, _)| i);
    let (number, unit) = (&rest[..split], rest[split..].trim_start());
    if number.is_empty() {
        return Err(format!("invalid drift {}: {HINT}", quote(text)));
    }
    match unit {
        "ppm" => {}
        "" => {
            return Err(format!(
                "drift {} has no unit; write `{text}ppm` (drifts are in parts per million)",
                quote(text)
            ));
        }
        other => {
            return Err(format!(
                "unknown unit {} in drift {}; drifts are in ppm, e.g. `200ppm`",
                quote(other),
                quote(text)
            ));
        }
    }
    if number.contains('.') {
        return Err(format!(
            "drift {} is not a whole number of ppm",
            quote(text)
        ));
    }
    let magnitude: i64 = number
        .parse()
        .ok()
        .filter(|m| *m <= MAX_DRIFT_PPM)
        .ok_or_else(|| {
            format!(
                "drift {} is beyond ±{MAX_DRIFT_PPM}ppm (real clocks drift a few hundred ppm)",
                quote(text)
            )
        })?;
    Ok(if negative { -magnitude } else { magnitude })
}

/// A signed drift such as `150ppm` or `-150ppm`.
pub(super) struct Ppm(pub(super) i64);

impl<'de> Deserialize<'de> for Ppm {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(PpmVisitor { bound: false })
            .map(Ppm)
    }
}

/// A drift bound such as `200ppm` (no sign: the rate is drawn in `±bound`).
pub(super) struct PpmBound(pub(super) i64);

impl<'de> Deserialize<'de> for PpmBound {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(PpmVisitor { bound: true })
            .map(PpmBound)
    }
}

pub(super) struct PpmVisitor {
    /// A bound: no sign allowed.
    pub(super) bound: bool,
}

impl Visitor<'_> for PpmVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.bound {
            f.write_str("a drift bound such as `200ppm`")
        } else {
            f.write_str("a drift such as `150ppm` or `-150ppm`")
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        let ppm = parse_ppm(v).map_err(E::custom)?;
        let signed = v.trim().starts_with(['-', '+']);
        if self.bound && signed {
            return Err(E::custom(format_args!(
                "{} is a bound, not a rate: each node draws its rate in ±{}ppm; write `{}ppm` (to fix one node's rate, use a class such as {{nodes: 3, rate: {}}})",
                quote(v.trim()),
                ppm.abs(),
                ppm.abs(),
                v.trim()
            )));
        }
        Ok(ppm)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        Err(E::custom(format_args!(
            "drift {v} has no unit; write `{v}ppm` (drifts are in parts per million)"
        )))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Err(E::custom(format_args!(
            "drift {v} has no unit; write `{v}ppm` (drifts are in parts per million)"
        )))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        Err(E::custom(format_args!(
            "drift {v} has no unit and is not whole; drifts are whole ppm, e.g. `200ppm`"
        )))
    }
}

/// A probability in `[0, 1]`.
pub(super) struct Probability(pub(super) f64);

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UnitIntervalVisitor("probability"))
            .map(Probability)
    }
}

/// A load in `[0, 1]` (a fraction of the node's capacity).
pub(super) struct Load(pub(super) f64);

impl<'de> Deserialize<'de> for Load {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UnitIntervalVisitor("load"))
            .map(Load)
    }
}

/// A number in `[0, 1]`; the field says what it is in messages.
struct UnitIntervalVisitor(&'static str);

impl Visitor<'_> for UnitIntervalVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a {} between 0.0 and 1.0", self.0)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        if (0.0..=1.0).contains(&v) {
            Ok(v)
        } else {
            Err(E::custom(format_args!(
                "{v} is not a {}; expected a number between 0.0 and 1.0",
                self.0
            )))
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        match v {
            0 => Ok(0.0),
            1 => Ok(1.0),
            _ => Err(E::custom(format_args!(
                "{v} is not a {}; expected a number between 0.0 and 1.0",
                self.0
            ))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format_args!(
                "{v} is not a {}; expected a number between 0.0 and 1.0",
                self.0
            ))),
        }
    }
}

/// `latency: "1ms..5ms"` or a single `"3ms"`.
pub(super) struct Latency {
    pub(super) min_us: u64,
    pub(super) max_us: u64,
}

impl<'de> Deserialize<'de> for Latency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(LatencyVisitor)
    }
}

struct LatencyVisitor;

impl Visitor<'_> for LatencyVisitor {
    type Value = Latency;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a latency range such as \"1ms..5ms\" or a single latency such as \"3ms\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Latency, E> {
        let Some((min, max)) = v.split_once("..") else {
            let us = parse_duration_us(v).map_err(E::custom)?;
            return Ok(Latency {
                min_us: us,
                max_us: us,
            });
        };
        let max = max.strip_prefix('=').unwrap_or(max);
        let min_us = parse_duration_us(min).map_err(E::custom)?;
        let max_us = parse_duration_us(max).map_err(E::custom)?;
        if min_us > max_us {
            return Err(E::custom(format_args!(
                "latency range {} is reversed; write the smaller latency first",
                quote(v)
            )));
        }
        Ok(Latency { min_us, max_us })
    }
}

/// `heal: true` (the only value that makes sense).
pub(super) struct HealFlag;

impl<'de> Deserialize<'de> for HealFlag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HealVisitor)
    }
}

struct HealVisitor;

impl Visitor<'_> for HealVisitor {
    type Value = HealFlag;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`true`")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<HealFlag, E> {
        if v {
            Ok(HealFlag)
        } else {
            Err(E::custom(
                "only `true` makes sense (to keep a fault in place, leave the event out)",
            ))
        }
    }
}
