//! Typed values read from the YAML tree. Each reader takes a node and its
//! dotted path, and records an error in [`Ctx`] and returns `None` for a bad
//! value; [`Fields`] opens one mapping and checks its keys.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use super::diag::{describe, join, one_of, wrong_type, Ctx};
use super::yaml::{is_int, Entry, Pos, Scalar, Yaml};

/// The keys of one mapping, checked for unknown and duplicate keys.
pub(super) struct Fields<'a> {
    path: String,
    /// Where a missing key is reported.
    at: Pos,
    entries: Vec<&'a Entry>,
}

impl<'a> Fields<'a> {
    /// Opens `node` as a mapping with keys from `allowed`; null is an empty
    /// mapping. `None` (reported) when it is not a mapping.
    pub(super) fn open(
        ctx: &mut Ctx,
        node: &'a Yaml,
        path: &str,
        at: Pos,
        allowed: &[&str],
    ) -> Option<Self> {
        let all = match node {
            Yaml::Map { entries, .. } => entries.as_slice(),
            _ if node.is_null() => &[],
            _ => {
                wrong_type(ctx, path, node, "a mapping (key: value)");
                return None;
            }
        };
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        let mut entries = Vec::new();
        for entry in all {
            let Some(name) = entry.key.name.as_deref() else {
                continue;
            };
            if let Some(first) = seen.get(name) {
                ctx.error(
                    entry.key.pos,
                    path,
                    format!(
                        "duplicate key \"{name}\" (first set at line {}); remove one of them",
                        first.line
                    ),
                );
                continue;
            }
            seen.insert(name, entry.key.pos);
            if allowed.contains(&name) {
                entries.push(entry);
            } else {
                ctx.error(entry.key.pos, path, one_of("key", name, allowed));
            }
        }
        Some(Self {
            path: path.to_owned(),
            at,
            entries,
        })
    }

    pub(super) fn entry(&self, key: &str) -> Option<&'a Entry> {
        self.entries
            .iter()
            .copied()
            .find(|e| e.key.name.as_deref() == Some(key))
    }

    /// The value of `key`; `None` when absent or null.
    pub(super) fn value(&self, key: &str) -> Option<&'a Yaml> {
        self.entry(key).map(|e| &e.value).filter(|v| !v.is_null())
    }

    pub(super) fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Reports `key` as missing.
    pub(super) fn missing(&self, ctx: &mut Ctx, key: &str, hint: &str) {
        ctx.error(
            self.at,
            &self.path,
            format!("missing required key \"{key}\"{hint}"),
        );
    }

    /// An optional value: `None` when absent, null or invalid (reported).
    pub(super) fn opt<T>(
        &self,
        ctx: &mut Ctx,
        key: &str,
        get: impl FnOnce(&mut Ctx, &str, &'a Yaml) -> Option<T>,
    ) -> Option<T> {
        let node = self.value(key)?;
        get(ctx, &self.path(key), node)
    }

    /// A value with a default: `None` only when invalid (reported).
    pub(super) fn or<T>(
        &self,
        ctx: &mut Ctx,
        key: &str,
        default: T,
        get: impl FnOnce(&mut Ctx, &str, &'a Yaml) -> Option<T>,
    ) -> Option<T> {
        match self.value(key) {
            None => Some(default),
            Some(node) => get(ctx, &self.path(key), node),
        }
    }

    /// A required value: `None` when missing or invalid (reported).
    pub(super) fn req<T>(
        &self,
        ctx: &mut Ctx,
        key: &str,
        get: impl FnOnce(&mut Ctx, &str, &'a Yaml) -> Option<T>,
    ) -> Option<T> {
        match self.entry(key) {
            None => {
                self.missing(ctx, key, "");
                None
            }
            Some(e) if e.value.is_null() => {
                ctx.error(
                    e.key.pos,
                    &self.path(key),
                    "has no value; write one after the colon",
                );
                None
            }
            Some(e) => get(ctx, &self.path(key), &e.value),
        }
    }

    /// An optional value with where it was written.
    pub(super) fn set<T>(
        &self,
        ctx: &mut Ctx,
        key: &str,
        get: impl FnOnce(&mut Ctx, &str, &'a Yaml) -> Option<T>,
    ) -> Option<Set<T>> {
        let entry = self.entry(key).filter(|e| !e.value.is_null())?;
        let path = self.path(key);
        let value = get(ctx, &path, &entry.value)?;
        Some(Set {
            value,
            pos: entry.value.pos(),
            path,
        })
    }
}

/// A value and where it was written.
pub(super) struct Set<T> {
    pub(super) value: T,
    pub(super) pos: Pos,
    pub(super) path: String,
}

pub(super) type Get<T> = Box<dyn Fn(&mut Ctx, &str, &Yaml) -> Option<T>>;

pub(super) fn text<'a>(
    ctx: &mut Ctx,
    path: &str,
    node: &'a Yaml,
    expected: &str,
) -> Option<&'a str> {
    if let Some(Scalar::Str(s)) = node.scalar() {
        Some(s)
    } else {
        wrong_type(ctx, path, node, expected);
        None
    }
}

/// Any string; a number or boolean gets a hint to quote it.
pub(super) fn string(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<String> {
    match node.scalar() {
        Some(Scalar::Str(s)) => Some(s.to_owned()),
        Some(Scalar::Int(_) | Scalar::Float(_) | Scalar::Bool(_)) => {
            ctx.error(
                node.pos(),
                path,
                format!(
                    "expected a string, found {}; quote it to make it a string",
                    describe(node)
                ),
            );
            None
        }
        _ => {
            wrong_type(ctx, path, node, "a string");
            None
        }
    }
}

pub(super) fn non_empty(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<String> {
    let s = string(ctx, path, node)?;
    if s.trim().is_empty() {
        ctx.error(node.pos(), path, "must not be empty");
        return None;
    }
    Some(s)
}

/// A service or real server name: 1..=64 of `[A-Za-z0-9._-]`.
pub(super) fn valid_name(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<String> {
    let s = string(ctx, path, node)?;
    let valid = (1..=64).contains(&s.chars().count())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        ctx.error(
            node.pos(),
            path,
            format!("{s:?} is not a valid name; use 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'"),
        );
        return None;
    }
    Some(s)
}

fn integer(ctx: &mut Ctx, path: &str, node: &Yaml, lo: i64, hi: i64) -> Option<i64> {
    match node.scalar() {
        Some(Scalar::Int(t)) => match t.parse::<i64>() {
            Ok(v) if (lo..=hi).contains(&v) => Some(v),
            _ => {
                ctx.error(
                    node.pos(),
                    path,
                    format!("{t} is out of range; expected {lo}..={hi}"),
                );
                None
            }
        },
        Some(Scalar::Str(s)) if is_int(s.trim()) => {
            ctx.error(
                node.pos(),
                path,
                format!("expected an integer, found string {s:?}; remove the quotes"),
            );
            None
        }
        _ => {
            wrong_type(ctx, path, node, "an integer");
            None
        }
    }
}

/// An integer in `lo..=hi`, converted to `T`, and refused with `why` below
/// `floor` (a value the range allows but the product cannot honour).
pub(super) fn floored<T: TryFrom<i64> + 'static>(
    lo: i64,
    hi: i64,
    floor: i64,
    why: &'static str,
) -> Get<T> {
    Box::new(move |ctx, path, node| {
        let v = integer(ctx, path, node, lo, hi)?;
        if v < floor {
            ctx.error(node.pos(), path, format!("{v} is below {floor}: {why}"));
            return None;
        }
        T::try_from(v).ok()
    })
}

/// An integer in `lo..=hi`, converted to `T`.
pub(super) fn ranged<T: TryFrom<i64> + 'static>(lo: i64, hi: i64) -> Get<T> {
    Box::new(move |ctx, path, node| {
        integer(ctx, path, node, lo, hi).and_then(|v| T::try_from(v).ok())
    })
}

pub(super) fn boolean(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<bool> {
    if let Some(Scalar::Bool(b)) = node.scalar() {
        Some(b)
    } else {
        wrong_type(ctx, path, node, "true or false");
        None
    }
}

/// One of the names in `table`.
pub(super) fn choice<T: Copy + 'static>(table: &'static [(&'static str, T)]) -> Get<T> {
    Box::new(move |ctx, path, node| {
        let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
        let Some(Scalar::Str(s)) = node.scalar() else {
            wrong_type(ctx, path, node, &format!("one of: {}", names.join(", ")));
            return None;
        };
        let found = table.iter().find(|(n, _)| *n == s).map(|(_, v)| *v);
        if found.is_none() {
            ctx.error(node.pos(), path, one_of("value", s, &names));
        }
        found
    })
}

/// A unicast IPv4 address; `what` names it in plural for the IPv6 message.
pub(super) fn ipv4(what: &'static str) -> Get<Ipv4Addr> {
    Box::new(move |ctx, path, node| {
        let s = text(ctx, path, node, "an IPv4 address")?;
        let addr = match s.parse::<Ipv4Addr>() {
            Ok(addr) => addr,
            Err(_) if s.parse::<Ipv6Addr>().is_ok() => {
                ctx.error(
                    node.pos(),
                    path,
                    format!("IPv6 {what} are not supported yet; use an IPv4 address"),
                );
                return None;
            }
            Err(_) => {
                ctx.error(
                    node.pos(),
                    path,
                    format!("{s:?} is not an IPv4 address; expected e.g. 198.18.0.10"),
                );
                return None;
            }
        };
        if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
            ctx.error(
                node.pos(),
                path,
                format!("{addr} is not a unicast address; use a host address"),
            );
            return None;
        }
        Some(addr)
    })
}

pub(super) fn absolute_path(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<PathBuf> {
    let s = text(ctx, path, node, "an absolute path")?;
    if !Path::new(s).is_absolute() {
        ctx.error(
            node.pos(),
            path,
            format!("{s:?} is not an absolute path; write it from the root, e.g. /etc/lbd/..."),
        );
        return None;
    }
    Some(PathBuf::from(s))
}

pub(super) fn socket_address(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<SocketAddr> {
    let s = text(ctx, path, node, "an address IP:PORT")?;
    match s.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Some(addr),
        Ok(_) => {
            ctx.error(
                node.pos(),
                path,
                "port 0 is out of range; expected 1..=65535",
            );
            None
        }
        Err(_) => {
            ctx.error(
                node.pos(),
                path,
                format!("{s:?} is not an address IP:PORT; expected e.g. 127.0.0.1:9100"),
            );
            None
        }
    }
}

pub(super) fn socket_address_v4(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<SocketAddrV4> {
    match socket_address(ctx, path, node)? {
        SocketAddr::V4(addr) => Some(addr),
        SocketAddr::V6(_) => {
            ctx.error(
                node.pos(),
                path,
                "IPv6 is not supported here; expected IPv4:PORT, e.g. 198.18.0.11:7946",
            );
            None
        }
    }
}

pub(super) fn list<'a>(
    ctx: &mut Ctx,
    path: &str,
    node: &'a Yaml,
    expected: &str,
) -> Option<&'a [Yaml]> {
    if let Yaml::Seq { items, .. } = node {
        Some(items)
    } else {
        wrong_type(ctx, path, node, expected);
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn wrong_types() {
        let yaml = with_services(&WEB.replace("port: 443", "port: \"443\""));
        assert_only(
            &yaml,
            loc(&yaml, "\"443\"", 0),
            "services[0].port: expected an integer, found string \"443\"; remove the quotes",
        );
        let yaml = "node: 5\nservices: []\n";
        assert_only(
            yaml,
            (1, 7),
            "node: expected a mapping (key: value), found integer 5",
        );
        let yaml = with_services(&format!("{WEB}    persistence: [300, 32]\n"));
        assert_only(
            &yaml,
            loc(&yaml, "[300", 0),
            "services[0].persistence: expected a mapping (key: value), found a list",
        );
        let yaml = "node:\n  name: 12\n  interface: eth0\nservices: []\n";
        assert_only(
            yaml,
            (2, 9),
            "expected a string, found integer 12; quote it",
        );
        let yaml = with_cluster("  vrid: 1\n  priority: 1\n  role: primary\n  preempt: yes\n");
        assert_only(
            &yaml,
            loc(&yaml, "yes", 0),
            "cluster.preempt: expected true or false, found string \"yes\"",
        );
        let yaml = format!("{NODE}services:\n  name: web\n");
        assert_only(&yaml, (5, 3), "services: expected a list of services");
    }

    #[test]
    fn duplicate_keys() {
        let yaml = with_services(&format!("{WEB}    port: 444\n"));
        assert_only(
            &yaml,
            loc(&yaml, "port:", 1),
            "services[0]: duplicate key \"port\" (first set at line 7); remove one of them",
        );
    }

    #[test]
    fn missing_required_keys() {
        let yaml = "node:\n  name: lb1\nservices: []\n";
        assert_only(yaml, (1, 1), "node: missing required key \"interface\"");
        let yaml = format!("{NODE}services: []\ncluster:\n  vrid: 1\n  role: primary\n");
        assert_only(
            &yaml,
            loc(&yaml, "cluster", 0),
            "cluster: missing required key \"priority\"",
        );
        let yaml = with_services(&WEB.replace("    vip: 198.18.0.100\n", ""));
        assert_only(&yaml, (5, 5), "services[0]: missing required key \"vip\"");
        let yaml = with_services("  - { name: web, vip: 198.18.0.100, port: 443 }\n");
        assert_only(
            &yaml,
            (5, 5),
            "missing required key \"real_servers\"; a forwarding service needs",
        );
        assert_only(NODE, (1, 1), "missing required key \"services\"");
        let yaml = "node:\n  name:\n  interface: eth0\nservices: []\n";
        assert_only(yaml, (2, 3), "node.name: has no value");
    }

    #[test]
    fn ipv6_vip_is_not_supported_yet() {
        let yaml = with_services(&WEB.replace("198.18.0.100", "2001:db8::1"));
        assert_only(
            &yaml,
            (6, 10),
            "services[0].vip: IPv6 VIPs are not supported yet",
        );
        let yaml = with_services(&WEB.replace("198.18.0.100", "198.18.0.300"));
        assert_only(&yaml, (6, 10), "\"198.18.0.300\" is not an IPv4 address");
        let yaml = with_services(&WEB.replace("198.18.0.21", "fd00::21"));
        assert_only(&yaml, (10, 18), "IPv6 real servers are not supported yet");
    }

    #[test]
    fn names_are_checked() {
        let yaml = with_services(&WEB.replace("name: web", "name: \"web site\""));
        assert_only(
            &yaml,
            (5, 11),
            "\"web site\" is not a valid name; use 1 to 64 characters",
        );
        let long = "x".repeat(65);
        let yaml = with_services(&WEB.replace("name: r1", &format!("name: {long}")));
        assert_only(&yaml, (9, 15), "is not a valid name");
    }
}
