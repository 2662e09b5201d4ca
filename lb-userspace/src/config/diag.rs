//! Diagnostics: errors with their position, all those found in one pass, and
//! the "did you mean" hints for a misspelt key or value.

use std::fmt;

use super::yaml::{classify, Pos, Scalar, Yaml};

/// One configuration error, at a position in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.file, *.line, *.column, .message))]
pub struct ConfigError {
    /// File name as given by the caller.
    pub file: String,
    /// 1-based line; 0 when the error concerns the whole file.
    pub line: usize,
    /// 1-based column; 0 when the error concerns the whole file.
    pub column: usize,
    /// What is wrong and what to do.
    pub message: String,
}

fn render(file: &str, line: usize, column: usize, message: &str) -> String {
    if line == 0 {
        format!("{file}: {message}")
    } else {
        format!("{file}:{line}:{column}: {message}")
    }
}

/// All errors found in a configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join_lines(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn join_lines(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Errors found so far.
#[derive(Default)]
pub(super) struct Ctx {
    pub(super) errors: Vec<(Pos, String)>,
}

impl Ctx {
    /// Records `message` about `path` (a dotted key path; empty at top level).
    pub(super) fn error(&mut self, pos: Pos, path: &str, message: impl fmt::Display) {
        let text = if path.is_empty() {
            message.to_string()
        } else {
            format!("{path}: {message}")
        };
        self.errors.push((pos, text));
    }
}

/// Sorts errors by position, drops repeats and names the file.
pub(super) fn finish(file: &str, mut errors: Vec<(Pos, String)>) -> ConfigErrors {
    errors.sort_by_key(|(pos, _)| *pos);
    errors.dedup();
    ConfigErrors(
        errors
            .into_iter()
            .map(|(pos, message)| ConfigError {
                file: file.to_owned(),
                line: pos.line,
                column: pos.column,
                message,
            })
            .collect(),
    )
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The candidate `word` was most likely meant to be: one it begins (from 3
/// characters on), else the nearest within 2 edits by optimal string
/// alignment distance (an adjacent transposition is one edit).
fn suggest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    if word.len() >= 3 {
        if let Some(c) = candidates.iter().find(|c| c.starts_with(word)) {
            return Some(c);
        }
    }
    candidates
        .iter()
        .map(|c| (strsim::osa_distance(word, c), *c))
        .filter(|(d, _)| *d <= 2 && *d < word.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

pub(super) fn one_of(what: &str, word: &str, candidates: &[&str]) -> String {
    let hint = suggest(word, candidates)
        .map(|s| format!("did you mean \"{s}\"? "))
        .unwrap_or_default();
    format!(
        "unknown {what} \"{word}\"; {hint}expected one of: {}",
        candidates.join(", ")
    )
}

pub(super) fn describe(node: &Yaml) -> String {
    match node {
        Yaml::Seq { .. } => "a list".to_owned(),
        Yaml::Map { .. } => "a mapping".to_owned(),
        Yaml::Invalid(_) => "an alias".to_owned(),
        Yaml::Scalar { text, plain, .. } => match classify(text, *plain) {
            Scalar::Null => "nothing (null)".to_owned(),
            Scalar::Bool(b) => format!("boolean {b}"),
            Scalar::Int(t) => format!("integer {t}"),
            Scalar::Float(t) => format!("number {t}"),
            Scalar::Str(s) if s.chars().count() > 40 => {
                format!("string \"{}...\"", s.chars().take(40).collect::<String>())
            }
            Scalar::Str(s) => format!("string {s:?}"),
        },
    }
}

pub(super) fn wrong_type(ctx: &mut Ctx, path: &str, node: &Yaml, expected: &str) {
    if !matches!(node, Yaml::Invalid(_)) {
        ctx.error(
            node.pos(),
            path,
            format!("expected {expected}, found {}", describe(node)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn error_display() {
        let e = ConfigError {
            file: "f.yaml".into(),
            line: 3,
            column: 7,
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "f.yaml:3:7: bad");
        let whole = ConfigError {
            file: "f.yaml".into(),
            line: 0,
            column: 0,
            message: "cannot read".into(),
        };
        assert_eq!(whole.to_string(), "f.yaml: cannot read");
        assert_eq!(
            ConfigErrors(vec![e, whole]).to_string(),
            "f.yaml:3:7: bad\nf.yaml: cannot read"
        );
    }

    #[test]
    fn unknown_key_at_top_level() {
        let yaml = format!("{NODE}services: []\nnodes: {{}}\n");
        assert_only(
            &yaml,
            (5, 1),
            "unknown key \"nodes\"; did you mean \"node\"? expected one of: node, cluster, defaults, services",
        );
    }

    #[test]
    fn unknown_key_in_a_service() {
        let yaml = with_services(&format!("{WEB}    prot: udp\n"));
        assert_only(
            &yaml,
            loc(&yaml, "prot:", 0),
            "services[0]: unknown key \"prot\"; did you mean \"protocol\"? expected one of: name, vip, port, protocol,",
        );
    }

    #[test]
    fn unknown_key_in_a_real_server() {
        let yaml = with_services(&format!("{WEB}        wieght: 5\n"));
        assert_only(
            &yaml,
            loc(&yaml, "wieght", 0),
            "services[0].real_servers[0]: unknown key \"wieght\"; did you mean \"weight\"?",
        );
    }
}
