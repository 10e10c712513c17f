//! Docker Compose variable interpolation in one string: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+replacement}`,
//! `${VAR+replacement}` (defaults, messages and replacements nest: `${A:-${B:-x}}`), and `$$`
//! for a literal `$`. A `$` that starts none of these stays as it is, as in Compose.
//!
//! Hand-written: no maintained crate implements exactly Compose's grammar (`shellexpand` and
//! `envsubst` lack `?`, `+` or `$$`), and the grammar is small. The caller supplies the
//! variables (the process environment over the `.env` file, see `compose::load_variables`).

use std::collections::BTreeMap;

/// How deeply `${A:-${B:-...}}` may nest before the text is refused (it is user input).
pub const MAX_NESTING: usize = 32;

/// The result of interpolating one string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interpolated {
    pub text: String,
    /// Variables that were used without a value or a default: they became empty strings, as in
    /// Compose (which warns about each).
    pub unset: Vec<String>,
}

/// A string that cannot be interpolated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    /// `${VAR:?message}` or `${VAR?message}` without the value it requires.
    #[error("required variable {name} is missing a value: {message}")]
    Required { name: String, message: String },
    #[error("invalid interpolation `{text}`: {why}")]
    Invalid { text: String, why: &'static str },
}

/// Interpolate `text` with `vars`.
pub fn interpolate(
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Result<Interpolated, InterpolateError> {
    let mut out = Interpolated {
        text: String::with_capacity(text.len()),
        unset: Vec::new(),
    };
    expand(text, vars, 0, &mut out)?;
    Ok(out)
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Length of the variable name at the start of `s` (0 if there is none).
fn name_len(s: &str) -> usize {
    let b = s.as_bytes();
    if b.first().is_some_and(|&c| is_name_start(c)) {
        b.iter().take_while(|&&c| is_name_byte(c)).count()
    } else {
        0
    }
}

fn expand(
    s: &str,
    vars: &BTreeMap<String, String>,
    depth: usize,
    out: &mut Interpolated,
) -> Result<(), InterpolateError> {
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.text.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match after.as_bytes().first() {
            Some(b'$') => {
                out.text.push('$');
                rest = &after[1..];
            }
            Some(b'{') => {
                let body = &after[1..];
                let end = closing_brace(body).ok_or_else(|| InterpolateError::Invalid {
                    text: format!("${{{body}"),
                    why: "no closing `}`",
                })?;
                braced(&body[..end], vars, depth, out)?;
                rest = &body[end + 1..];
            }
            _ => {
                let n = name_len(after);
                if n == 0 {
                    out.text.push('$');
                } else {
                    lookup(&after[..n], vars, out);
                }
                rest = &after[n..];
            }
        }
    }
    out.text.push_str(rest);
    Ok(())
}

/// The index of the `}` closing a `${` whose body starts `body`, skipping nested `${...}` and
/// `$$`.
fn closing_brace(body: &str) -> Option<usize> {
    let b = body.as_bytes();
    let mut depth = 1usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'$') => i += 2,
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 2;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

fn lookup(name: &str, vars: &BTreeMap<String, String>, out: &mut Interpolated) {
    match vars.get(name) {
        Some(v) => out.text.push_str(v),
        None => {
            if !out.unset.iter().any(|u| u == name) {
                out.unset.push(name.to_owned());
            }
        }
    }
}

/// The inside of `${...}`: a name and an optional operator with its word.
fn braced(
    inner: &str,
    vars: &BTreeMap<String, String>,
    depth: usize,
    out: &mut Interpolated,
) -> Result<(), InterpolateError> {
    let invalid = |why| InterpolateError::Invalid {
        text: format!("${{{inner}}}"),
        why,
    };
    if depth >= MAX_NESTING {
        return Err(invalid("nested too deeply"));
    }
    let n = name_len(inner);
    if n == 0 {
        return Err(invalid("expected a variable name"));
    }
    let (name, op) = inner.split_at(n);
    let value = vars.get(name).map(String::as_str);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    // (operator, word after it)
    let (op, word) = if let Some(w) = op.strip_prefix(":-") {
        (":-", w)
    } else if let Some(w) = op.strip_prefix(":?") {
        (":?", w)
    } else if let Some(w) = op.strip_prefix(":+") {
        (":+", w)
    } else if let Some(w) = op.strip_prefix('-') {
        ("-", w)
    } else if let Some(w) = op.strip_prefix('?') {
        ("?", w)
    } else if let Some(w) = op.strip_prefix('+') {
        ("+", w)
    } else if op.is_empty() {
        ("", "")
    } else {
        return Err(invalid(
            "expected `}`, `:-`, `-`, `:?`, `?`, `:+` or `+` after the name",
        ));
    };
    let use_word = match op {
        "" => {
            lookup(name, vars, out);
            return Ok(());
        }
        ":-" => !set_nonempty,
        "-" => value.is_none(),
        ":+" => set_nonempty,
        "+" => value.is_some(),
        _ => {
            // `:?` and `?`: the value, or an error carrying the (interpolated) message.
            let missing = if op == ":?" {
                !set_nonempty
            } else {
                value.is_none()
            };
            if missing {
                let mut msg = Interpolated {
                    text: String::new(),
                    unset: Vec::new(),
                };
                expand(word, vars, depth + 1, &mut msg)?;
                return Err(InterpolateError::Required {
                    name: name.to_owned(),
                    message: msg.text,
                });
            }
            false
        }
    };
    if use_word {
        expand(word, vars, depth + 1, out)
    } else {
        // `+` forms without a value give nothing; the others give the value.
        if !op.contains('+') {
            out.text.push_str(value.unwrap_or_default());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [
            ("SET", "value"),
            ("EMPTY", ""),
            ("PORT", "8080"),
            ("B", "bee"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn ok(text: &str) -> String {
        interpolate(text, &vars()).unwrap().text
    }

    #[test]
    fn every_form_of_the_compose_grammar() {
        let cases = [
            ("plain text", "plain text"),
            ("$SET", "value"),
            ("${SET}", "value"),
            // A bare name stops at the first byte that cannot be in a name.
            ("x${SET}y$SET.z", "xvalueyvalue.z"),
            ("${SET:-d}|${EMPTY:-d}|${UNSET:-d}", "value|d|d"),
            ("${SET-d}|${EMPTY-d}|${UNSET-d}", "value||d"),
            ("${SET:+r}|${EMPTY:+r}|${UNSET:+r}", "r||"),
            ("${SET+r}|${EMPTY+r}|${UNSET+r}", "r|r|"),
            ("${SET:?m}|${EMPTY?m}", "value|"),
            ("$$SET $${SET} $$", "$SET ${SET} $"),
            (
                "cost: $5, 100%$, $-x, ${PORT}:80",
                "cost: $5, 100%$, $-x, 8080:80",
            ),
            (
                "${UNSET:-${B}}|${UNSET:-${NOPE:-deep}}|${UNSET:-a}b}",
                "bee|deep|ab}",
            ),
            ("${UNSET:-x:y/z}", "x:y/z"),
            ("${UNSET:-./data}/es:/data", "./data/es:/data"),
            ("héllo ${SET} wörld", "héllo value wörld"),
        ];
        for (text, want) in cases {
            assert_eq!(ok(text), want, "{text}");
        }
    }

    #[test]
    fn unset_variables_become_empty_and_are_reported_once() {
        let out = interpolate("$NOPE-${NOPE}-${ALSO}-${WITH:-d}", &vars()).unwrap();
        assert_eq!(out.text, "---d");
        assert_eq!(out.unset, ["NOPE", "ALSO"]);
        // A default that is not taken does not report what it mentions.
        let out = interpolate("${SET:-$NOPE}", &vars()).unwrap();
        assert_eq!((out.text.as_str(), out.unset.len()), ("value", 0));
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        let err = interpolate("${DB_PASSWORD:?set it in .env}", &vars()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "required variable DB_PASSWORD is missing a value: set it in .env"
        );
        let err = interpolate("${EMPTY:?needs ${PORT}}", &vars()).unwrap_err();
        assert_eq!(
            err,
            InterpolateError::Required {
                name: "EMPTY".into(),
                message: "needs 8080".into()
            }
        );
        assert!(interpolate("${UNSET?}", &vars()).is_err());
    }

    #[test]
    fn malformed_expressions_are_errors_not_panics() {
        for bad in [
            "${",
            "${SET",
            "${}",
            "${1X}",
            "${SET/a/b}",
            "${ SET}",
            "${SET:x}",
            "a ${B:-${C}",
        ] {
            let err = interpolate(bad, &vars()).unwrap_err();
            assert!(
                matches!(err, InterpolateError::Invalid { .. }),
                "{bad}: {err}"
            );
        }
        let deep = format!(
            "{}x{}",
            "${U:-".repeat(MAX_NESTING + 1),
            "}".repeat(MAX_NESTING + 1)
        );
        assert!(interpolate(&deep, &vars()).is_err());
        let ok_deep = format!(
            "{}x{}",
            "${U:-".repeat(MAX_NESTING - 1),
            "}".repeat(MAX_NESTING - 1)
        );
        assert_eq!(interpolate(&ok_deep, &vars()).unwrap().text, "x");
    }
}
