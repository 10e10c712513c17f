//! `ScenarioError` and what makes its messages readable: serde_norway errors turned into
//! `FILE:LINE:COL: message`, "did you mean" suggestions (`closest`, `edit_distance`) and
//! `quote` for user text in messages.

/// Why a scenario file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be parsed; `line` and `column` are 1-based.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        /// The file name as the caller gave it.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The file parsed but does not fit the colony it is run on.
    #[error("{file}: {message}")]
    Invalid {
        /// The file name as the caller gave it.
        file: String,
        /// What is wrong.
        message: String,
    },
}

/// Converts a serde_norway error into `FILE:LINE:COL: message`.
pub(super) fn yaml_error(err: &serde_norway::Error, text: &str, file: &str) -> ScenarioError {
    let location = err.location();
    let (line, column) = location
        .as_ref()
        .map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
    let mut message = err.to_string();
    // serde_norway appends the position in words; we print it as FILE:LINE:COL.
    let mut suffixes = vec![format!(" at line {line} column {column}")];
    if let Some(l) = &location {
        suffixes.push(format!(" at position {}", l.index()));
    }
    for suffix in suffixes {
        if let Some(stripped) = message.strip_suffix(suffix.as_str()) {
            message = stripped.to_owned();
            break;
        }
        if let Some(at) = message.find(suffix.as_str()) {
            message.replace_range(at..at + suffix.len(), "");
            break;
        }
    }
    let at_tab = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.chars().nth(column - 1))
        == Some('\t');
    if at_tab && !message.contains("tab") {
        message.push_str(" (a tab: YAML indents with spaces only)");
    }
    ScenarioError::Parse {
        file: file.to_owned(),
        line,
        column,
        message: suggest_field(&message).replace('\n', "\\n"),
    }
}

/// Rewrites serde's "unknown field `x`, expected one of ..." into
/// "unknown field `x`, did you mean `y`?" when one expected field is close.
fn suggest_field(message: &str) -> String {
    const MARK: &str = "unknown field `";
    let Some(start) = message.find(MARK) else {
        return message.to_owned();
    };
    let rest = &message[start + MARK.len()..];
    let Some(end) = rest.find('`') else {
        return message.to_owned();
    };
    let found = &rest[..end];
    let Some(expected) = rest[end + 1..].split_once("expected").map(|(_, e)| e) else {
        return message.to_owned();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match closest(found, candidates.iter().copied()) {
        Some(best) => format!(
            "{}unknown field `{found}`, did you mean `{best}`?",
            &message[..start]
        ),
        None => message.to_owned(),
    }
}

/// The candidate closest to `found`, if one is close enough to be a typo.
pub(super) fn closest<'a>(
    found: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let found = found.to_lowercase();
    let mut best: Option<((usize, bool), &'a str)> = None;
    for candidate in candidates {
        let distance = edit_distance(&found, candidate);
        let close = distance <= (candidate.chars().count() / 3).max(1)
            || (found.chars().count() >= 3 && candidate.starts_with(found.as_str()));
        // On equal distance, a candidate the typo is a prefix of wins (`gpu` → `gpus`).
        let rank = (distance, !candidate.starts_with(found.as_str()));
        if close && best.is_none_or(|(r, _)| rank < r) {
            best = Some((rank, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// User text in backticks, with control characters escaped so that messages
/// stay on one line.
pub(super) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('`');
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('`');
    out
}
