//! Helpers for the configuration's tests: a minimal `node:`, one forwarding
//! service, and assertions on where errors are reported.

use super::{Config, ConfigError, ConfigErrors};

pub(super) const NODE: &str = "node:\n  name: lb1\n  interface: eth0\n";

/// One forwarding service; starts at line 5 after `with_services`.
pub(super) const WEB: &str = "  - name: web
    vip: 198.18.0.100
    port: 443
    real_servers:
      - name: r1
        address: 198.18.0.21
";

pub(super) fn with_services(body: &str) -> String {
    format!("{NODE}services:\n{body}")
}

pub(super) fn with_cluster(cluster: &str) -> String {
    format!("{NODE}cluster:\n{cluster}services: []\n")
}

pub(super) fn parse(yaml: &str) -> Config {
    Config::from_yaml(yaml, "t.yaml")
        .unwrap_or_else(|e| panic!("unexpected errors:\n{e}\nin:\n{yaml}"))
}

pub(super) fn errors(yaml: &str) -> Vec<ConfigError> {
    match Config::from_yaml(yaml, "t.yaml") {
        Ok(c) => panic!("expected errors, got {c:?}\nin:\n{yaml}"),
        Err(e) => e.0,
    }
}

/// 1-based line and column of the `nth` (from 0) occurrence of `needle`.
pub(super) fn loc(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let (index, _) = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} #{nth} not in the text"));
    let before = &text[..index];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Asserts that the only error is at `at` and its message contains `fragment`.
pub(super) fn assert_only(yaml: &str, at: (usize, usize), fragment: &str) {
    let errs = errors(yaml);
    assert_eq!(
        errs.len(),
        1,
        "expected one error, got:\n{}",
        ConfigErrors(errs.clone())
    );
    assert_at(&errs[0], at, fragment);
}

pub(super) fn assert_at(e: &ConfigError, at: (usize, usize), fragment: &str) {
    assert_eq!((e.line, e.column), at, "wrong position for: {e}");
    assert!(
        e.message.contains(fragment),
        "{e}\ndoes not contain {fragment:?}"
    );
    assert_eq!(e.file, "t.yaml");
}

/// Asserts that some error is at `at` with `fragment` in its message.
pub(super) fn assert_some(yaml: &str, at: (usize, usize), fragment: &str) {
    let errs = errors(yaml);
    assert!(
        errs.iter()
            .any(|e| (e.line, e.column) == at && e.message.contains(fragment)),
        "no error at {at:?} containing {fragment:?}; got:\n{}",
        ConfigErrors(errs.clone())
    );
}
