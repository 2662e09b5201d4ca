//! What a service inherits: the `defaults:` section and a service's own
//! `persistence:` and `health_check:`, read where they are written and merged
//! field by field.

use super::diag::{wrong_type, Ctx};
use super::fields::{boolean, choice, floored, list, non_empty, ranged, string, Fields, Set};
use super::model::{CheckKind, HealthCheck, Persistence};
use super::yaml::{is_digits, Entry, Pos, Scalar, Yaml};

const DEFAULTS_KEYS: &[&str] = &["persistence", "health_check"];
const PERSISTENCE_KEYS: &[&str] = &["timeout_s", "netmask", "max_clients"];

/// Why `timeout_s` has a floor: see `lb_common::affinity_expiry_ns`.
const SHORT_TIMEOUT: &str = "a client's last-seen time is refreshed every second and cached \
    decisions live up to 2.5 s, so timeouts are honoured to within 3.5 s (never early); \
    use 10 or more";
const CHECK_KEYS: &[&str] = &[
    "type",
    "port",
    "path",
    "host",
    "expect_status",
    "expect_body",
    "tls_verify",
    "command",
    "interval_ms",
    "timeout_ms",
    "rise",
    "fall",
];
const CHECK_KINDS: &[(&str, CheckKind)] = &[
    ("tcp", CheckKind::Tcp),
    ("http", CheckKind::Http),
    ("https", CheckKind::Https),
    ("exec", CheckKind::Exec),
    ("none", CheckKind::None),
];

/// The `defaults:` section, or one service's own settings, before merging.
#[derive(Default)]
pub(super) struct Defaults {
    pub(super) persistence: PersistenceSpec,
    pub(super) health_check: CheckSpec,
}

pub(super) fn defaults(ctx: &mut Ctx, entry: &Entry) -> Defaults {
    let Some(f) = Fields::open(ctx, &entry.value, "defaults", entry.key.pos, DEFAULTS_KEYS) else {
        return Defaults::default();
    };
    Defaults {
        persistence: f
            .entry("persistence")
            .map(|e| persistence(ctx, e, &f.path("persistence")))
            .unwrap_or_default(),
        health_check: f
            .entry("health_check")
            .map(|e| check(ctx, e, &f.path("health_check")))
            .unwrap_or_default(),
    }
}

#[derive(Default, Clone, Copy)]
pub(super) struct PersistenceSpec {
    timeout_s: Option<u32>,
    netmask: Option<u8>,
    max_clients: Option<u32>,
}

pub(super) fn persistence(ctx: &mut Ctx, entry: &Entry, path: &str) -> PersistenceSpec {
    let Some(f) = Fields::open(ctx, &entry.value, path, entry.key.pos, PERSISTENCE_KEYS) else {
        return PersistenceSpec::default();
    };
    PersistenceSpec {
        timeout_s: f.opt(
            ctx,
            "timeout_s",
            floored(
                1,
                604_800,
                i64::from(lb_common::MIN_AFFINITY_TIMEOUT_S),
                SHORT_TIMEOUT,
            ),
        ),
        netmask: f.opt(ctx, "netmask", ranged(8, 32)),
        max_clients: f.opt(
            ctx,
            "max_clients",
            ranged(1, i64::from(lb_common::MAX_AFFINITY_ENTRIES)),
        ),
    }
}

/// A health check as written in one place.
#[derive(Default)]
pub(super) struct CheckSpec {
    /// The `health_check` key and its path, if written.
    at: Option<(Pos, String)>,
    kind: Option<Set<CheckKind>>,
    port: Option<Set<u16>>,
    path: Option<Set<String>>,
    host: Option<Set<String>>,
    expect_status: Option<Set<(u16, u16)>>,
    expect_body: Option<Set<String>>,
    tls_verify: Option<Set<bool>>,
    command: Option<Set<Vec<String>>>,
    /// Whether `command` was written, valid or not.
    command_written: bool,
    interval_ms: Option<Set<u32>>,
    timeout_ms: Option<Set<u32>>,
    rise: Option<Set<u32>>,
    fall: Option<Set<u32>>,
}

pub(super) fn check(ctx: &mut Ctx, entry: &Entry, path: &str) -> CheckSpec {
    let mut spec = CheckSpec {
        at: Some((entry.key.pos, path.to_owned())),
        ..CheckSpec::default()
    };
    let Some(f) = Fields::open(ctx, &entry.value, path, entry.key.pos, CHECK_KEYS) else {
        return spec;
    };
    spec.kind = f.set(ctx, "type", choice(CHECK_KINDS));
    spec.port = f.set(ctx, "port", ranged(1, 65_535));
    spec.path = f.set(ctx, "path", |ctx, path, node| {
        let s = string(ctx, path, node)?;
        if !s.starts_with('/') || s.chars().any(char::is_whitespace) {
            ctx.error(
                node.pos(),
                path,
                format!("{s:?} is not a URL path; it must start with '/' and hold no spaces"),
            );
            return None;
        }
        Some(s)
    });
    spec.host = f.set(ctx, "host", |ctx, path, node| {
        let s = non_empty(ctx, path, node)?;
        if s.chars().any(char::is_whitespace) {
            ctx.error(
                node.pos(),
                path,
                format!("{s:?} is not a host name; remove the spaces"),
            );
            return None;
        }
        Some(s)
    });
    spec.expect_status = f.set(ctx, "expect_status", status_range);
    spec.expect_body = f.set(ctx, "expect_body", |ctx, path, node| {
        let s = string(ctx, path, node)?;
        if let Err(e) = regex::Regex::new(&s) {
            ctx.error(
                node.pos(),
                path,
                format!("invalid regular expression: {}", regex_message(&e)),
            );
            return None;
        }
        Some(s)
    });
    spec.tls_verify = f.set(ctx, "tls_verify", boolean);
    spec.command = f.set(ctx, "command", command);
    spec.command_written = f.entry("command").is_some();
    spec.interval_ms = f.set(ctx, "interval_ms", ranged(100, 3_600_000));
    spec.timeout_ms = f.set(ctx, "timeout_ms", ranged(10, 3_600_000));
    spec.rise = f.set(ctx, "rise", ranged(1, 100));
    spec.fall = f.set(ctx, "fall", ranged(1, 100));
    spec
}

/// The one-line core of a regex error (its `Display` spans several lines).
fn regex_message(error: &regex::Error) -> String {
    let full = error.to_string();
    full.lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map_or_else(
            || full.lines().map(str::trim).collect::<Vec<_>>().join(" "),
            str::to_owned,
        )
}

/// `"NNN"`, `"NNN-MMM"` or an integer, with 100 <= NNN <= MMM <= 599.
fn status_range(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<(u16, u16)> {
    const HELP: &str =
        "expected \"NNN\" or \"NNN-MMM\" with 100 <= NNN <= MMM <= 599, e.g. \"200-399\"";
    let parse = |s: &str| {
        if s.len() == 3 && is_digits(s) {
            s.parse::<u16>().ok()
        } else {
            None
        }
    };
    let (text, range) = match node.scalar() {
        Some(Scalar::Int(t)) => (t, parse(t).map(|v| (v, v))),
        Some(Scalar::Str(s)) => {
            let range = match s.split_once('-') {
                Some((lo, hi)) => parse(lo.trim()).zip(parse(hi.trim())),
                None => parse(s.trim()).map(|v| (v, v)),
            };
            (s, range)
        }
        _ => {
            wrong_type(ctx, path, node, "a status range such as \"200-399\"");
            return None;
        }
    };
    match range {
        Some((lo, hi)) if (100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi => {
            Some((lo, hi))
        }
        _ => {
            ctx.error(
                node.pos(),
                path,
                format!("{text:?} is not a valid status range; {HELP}"),
            );
            None
        }
    }
}

fn command(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<Vec<String>> {
    let items = list(
        ctx,
        path,
        node,
        "a list of strings, e.g. [\"/usr/local/bin/check\", \"--fast\"]",
    )?;
    if items.is_empty() {
        ctx.error(
            node.pos(),
            path,
            "must not be empty; give the program and its arguments",
        );
        return None;
    }
    let mut words = Vec::new();
    for (i, item) in items.iter().enumerate() {
        words.push(non_empty(ctx, &format!("{path}[{i}]"), item));
    }
    words.into_iter().collect()
}

pub(super) fn merge_persistence(own: PersistenceSpec, inherited: PersistenceSpec) -> Persistence {
    Persistence {
        timeout_s: own.timeout_s.or(inherited.timeout_s).unwrap_or(300),
        netmask: own.netmask.or(inherited.netmask).unwrap_or(32),
        max_clients: own.max_clients.or(inherited.max_clients),
    }
}

/// Merges a service's health check over the defaults, field by field.
pub(super) fn merge_check(
    ctx: &mut Ctx,
    own: &CheckSpec,
    inherited: &CheckSpec,
    service_port: u16,
) -> HealthCheck {
    /// The service's setting of a field, else the default's.
    macro_rules! pick {
        ($field:ident) => {
            own.$field.as_ref().or(inherited.$field.as_ref())
        };
    }
    macro_rules! value {
        ($field:ident) => {
            pick!($field).map(|s| s.value.clone())
        };
    }
    let kind = value!(kind).unwrap_or(CheckKind::Tcp);
    let command = value!(command);
    let command_written = own.command_written || inherited.command_written;
    if kind == CheckKind::Exec && !command_written {
        if let Some((pos, path)) = own.at.as_ref().or(inherited.at.as_ref()) {
            ctx.error(
                *pos,
                path,
                "type exec needs a command; add e.g. command: [\"/usr/local/bin/check\", \"--fast\"]",
            );
        }
    }
    let interval = pick!(interval_ms);
    let timeout = pick!(timeout_ms);
    let interval_ms = interval.map_or(2000, |s| s.value);
    let timeout_ms = timeout.map_or(1000, |s| s.value);
    if timeout_ms > interval_ms {
        match (timeout, interval) {
            (Some(t), _) => ctx.error(
                t.pos,
                &t.path,
                format!("{timeout_ms} is out of range; expected 10..={interval_ms} (at most interval_ms)"),
            ),
            (None, Some(i)) => ctx.error(
                i.pos,
                &i.path,
                format!("{interval_ms} is less than the default timeout_ms {timeout_ms}; set timeout_ms to at most {interval_ms}"),
            ),
            (None, None) => {}
        }
    }
    HealthCheck {
        kind,
        port: value!(port).unwrap_or(service_port),
        path: value!(path).unwrap_or_else(|| "/".to_owned()),
        host: value!(host),
        expect_status: value!(expect_status).unwrap_or((200, 399)),
        expect_body: value!(expect_body),
        tls_verify: value!(tls_verify).unwrap_or(false),
        command: command.unwrap_or_default(),
        interval_ms,
        timeout_ms,
        rise: value!(rise).unwrap_or(2),
        fall: value!(fall).unwrap_or(3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use crate::config::ServiceKind;

    #[test]
    fn defaults_merge_field_by_field() {
        let yaml = format!(
            "{NODE}defaults:
  persistence: {{ timeout_s: 600 }}
  health_check: {{ type: http, path: /health, interval_ms: 5000, rise: 4 }}
services:
  - {{ name: a, vip: 198.18.0.100, port: 80, real_servers: [{{ name: r, address: 198.18.0.21 }}] }}
  - name: b
    vip: 198.18.0.100
    port: 81
    persistence: {{ netmask: 24 }}
    health_check: {{ rise: 1, timeout_ms: 3000 }}
    real_servers: [{{ name: r, address: 198.18.0.21 }}]
  - name: c
    vip: 198.18.0.100
    port: 82
    health_check: {{ type: tcp, port: 8080 }}
    real_servers: [{{ name: r, address: 198.18.0.21 }}]
"
        );
        let c = parse(&yaml);
        let fwd = |name: &str| match &c.service(name).unwrap().kind {
            ServiceKind::Forward(f) => f.clone(),
            ServiceKind::Redirect(_) => panic!("redirect"),
        };
        let a = fwd("a");
        assert_eq!(
            a.persistence,
            Persistence {
                timeout_s: 600,
                netmask: 32,
                max_clients: None
            }
        );
        let hc = &a.health_check;
        assert_eq!(
            (hc.kind, hc.port, hc.path.as_str()),
            (CheckKind::Http, 80, "/health")
        );
        assert_eq!(
            (hc.interval_ms, hc.timeout_ms, hc.rise, hc.fall),
            (5000, 1000, 4, 3)
        );
        let b = fwd("b");
        assert_eq!(
            b.persistence,
            Persistence {
                timeout_s: 600,
                netmask: 24,
                max_clients: None
            }
        );
        let hc = &b.health_check;
        assert_eq!(
            (hc.kind, hc.port, hc.path.as_str()),
            (CheckKind::Http, 81, "/health")
        );
        assert_eq!(
            (hc.interval_ms, hc.timeout_ms, hc.rise, hc.fall),
            (5000, 3000, 1, 3)
        );
        let hc = fwd("c").health_check;
        assert_eq!(
            (hc.kind, hc.port, hc.interval_ms, hc.rise),
            (CheckKind::Tcp, 8080, 5000, 4)
        );
    }

    #[test]
    fn merged_timeout_points_where_it_was_written() {
        let yaml = format!(
            "{NODE}defaults:
  health_check: {{ timeout_ms: 1500 }}
services:
{WEB}    health_check: {{ interval_ms: 1000 }}
"
        );
        assert_only(
            &yaml,
            loc(&yaml, "1500", 0),
            "defaults.health_check.timeout_ms: 1500 is out of range; expected 10..=1000",
        );
        let yaml = with_services(&format!("{WEB}    health_check: {{ interval_ms: 500 }}\n"));
        assert_only(
            &yaml,
            loc(&yaml, "500", 0),
            "less than the default timeout_ms 1000",
        );
    }

    #[test]
    fn health_check_values() {
        let check = |body: &str| {
            with_services(&format!(
                "{WEB}    health_check: {{ type: http, {body} }}\n"
            ))
        };
        let yaml = check("expect_body: \"(unclosed\"");
        assert_only(
            &yaml,
            loc(&yaml, "\"(unclosed", 0),
            "expect_body: invalid regular expression: unclosed group",
        );
        for bad in ["\"abc\"", "\"399-200\"", "600", "\"20-30\"", "\"200-\""] {
            let yaml = check(&format!("expect_status: {bad}"));
            assert_only(
                &yaml,
                loc(&yaml, bad, 0),
                "is not a valid status range; expected \"NNN\" or \"NNN-MMM\"",
            );
        }
        for (good, range) in [
            ("200", (200, 200)),
            ("\"204\"", (204, 204)),
            ("\"200-299\"", (200, 299)),
        ] {
            let c = parse(&check(&format!("expect_status: {good}")));
            let ServiceKind::Forward(f) = &c.services[0].kind else {
                panic!()
            };
            assert_eq!(f.health_check.expect_status, range);
        }
        let yaml = check("path: health");
        assert_only(
            &yaml,
            loc(&yaml, "health }", 0),
            "is not a URL path; it must start with '/'",
        );
    }

    #[test]
    fn exec_check_needs_a_command() {
        let yaml = with_services(&format!("{WEB}    health_check: {{ type: exec }}\n"));
        assert_only(
            &yaml,
            loc(&yaml, "health_check", 0),
            "services[0].health_check: type exec needs a command",
        );
        let second = WEB.replace("web", "web2").replace("443", "80");
        let yaml =
            format!("{NODE}defaults:\n  health_check:\n    type: exec\nservices:\n{WEB}{second}");
        assert_only(
            &yaml,
            (5, 3),
            "defaults.health_check: type exec needs a command",
        );
        let yaml = with_services(&format!(
            "{WEB}    health_check: {{ type: exec, command: [] }}\n"
        ));
        assert_only(&yaml, loc(&yaml, "[]", 0), "command: must not be empty");
        let yaml = with_services(&format!(
            "{WEB}    health_check: {{ type: exec, command: [/bin/check, 5] }}\n"
        ));
        assert_only(
            &yaml,
            loc(&yaml, "5]", 0),
            "command[1]: expected a string, found integer 5",
        );
        let c = parse(&with_services(&format!(
            "{WEB}    health_check: {{ type: exec, command: [/bin/check, \"5\"] }}\n"
        )));
        let ServiceKind::Forward(f) = &c.services[0].kind else {
            panic!()
        };
        assert_eq!(
            (f.health_check.kind, f.health_check.command.clone()),
            (
                CheckKind::Exec,
                vec!["/bin/check".to_owned(), "5".to_owned()]
            )
        );
    }
}
