//! The top level of the file and its `node:` and `cluster:` sections.

use std::path::PathBuf;

use super::defaults::defaults;
use super::diag::{wrong_type, Ctx};
use super::fields::{
    absolute_path, boolean, choice, ipv4, non_empty, ranged, socket_address, socket_address_v4,
    string, Fields,
};
use super::model::{
    Cluster, Config, Node, Role, Sync, Web, WebTls, XdpMode, DEFAULT_CONTROL_SOCKET,
    DEFAULT_METRICS_LISTEN, DEFAULT_SESSION_TIMEOUT_S, DEFAULT_STATE_DIR,
};
use super::services::services;
use super::yaml::{Entry, Pos, Yaml};

const ROOT_KEYS: &[&str] = &["node", "cluster", "defaults", "services"];
const NODE_KEYS: &[&str] = &[
    "name",
    "interface",
    "xdp_mode",
    "control_socket",
    "metrics_listen",
    "state_dir",
    "server_interfaces",
    "web",
];
const WEB_KEYS: &[&str] = &["listen", "tls", "users_file", "session_timeout_s"];
const TLS_KEYS: &[&str] = &["cert", "key"];
const CLUSTER_KEYS: &[&str] = &[
    "vrid",
    "priority",
    "advert_interval_ms",
    "preempt",
    "peer",
    "role",
    "sync",
];
const SYNC_KEYS: &[&str] = &["listen", "peer", "key_file"];

const XDP_MODES: &[(&str, XdpMode)] = &[
    ("native", XdpMode::Native),
    ("generic", XdpMode::Generic),
    ("auto", XdpMode::Auto),
];
const ROLES: &[(&str, Role)] = &[("primary", Role::Primary), ("secondary", Role::Secondary)];

pub(super) fn extract(ctx: &mut Ctx, root: Option<&Yaml>) -> Option<Config> {
    let Some(root) = root.filter(|r| !r.is_null()) else {
        ctx.error(
            Pos::START,
            "",
            "empty configuration; expected a mapping with at least node: and services:",
        );
        return None;
    };
    if !matches!(root, Yaml::Map { .. }) {
        wrong_type(
            ctx,
            "",
            root,
            "a mapping with node:, cluster:, defaults: and services: at the top level",
        );
        return None;
    }
    let f = Fields::open(ctx, root, "", root.pos(), ROOT_KEYS)?;
    let node = if let Some(e) = f.entry("node") {
        node(ctx, e)
    } else {
        f.missing(ctx, "node", "");
        None
    };
    let cluster = f.entry("cluster").and_then(|e| cluster(ctx, e));
    let defaults = f
        .entry("defaults")
        .map(|e| defaults(ctx, e))
        .unwrap_or_default();
    let services = if let Some(e) = f.entry("services") {
        services(ctx, e, &defaults)
    } else {
        f.missing(ctx, "services", " (write services: [] for none)");
        Vec::new()
    };
    Some(Config {
        node: node?,
        cluster,
        services,
    })
}

fn node(ctx: &mut Ctx, entry: &Entry) -> Option<Node> {
    let f = Fields::open(ctx, &entry.value, "node", entry.key.pos, NODE_KEYS)?;
    let name = f.req(ctx, "name", non_empty);
    let interface = f.req(ctx, "interface", interface_name);
    let server_interfaces = f.or(ctx, "server_interfaces", Vec::new(), |ctx, path, node| {
        let items = super::fields::list(ctx, path, node, "a list of interface names")?;
        let mut names: Vec<String> = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let path = format!("{path}[{i}]");
            match interface_name(ctx, &path, item) {
                Some(name) if names.contains(&name) => {
                    ctx.error(item.pos(), &path, format!("{name} is listed twice"));
                    ok = false;
                }
                Some(name) => names.push(name),
                None => ok = false,
            }
        }
        ok.then_some(names)
    });
    let xdp_mode = f.or(ctx, "xdp_mode", XdpMode::Auto, choice(XDP_MODES));
    let control_socket = f.or(
        ctx,
        "control_socket",
        PathBuf::from(DEFAULT_CONTROL_SOCKET),
        absolute_path,
    );
    let metrics_listen = f.or(
        ctx,
        "metrics_listen",
        DEFAULT_METRICS_LISTEN,
        socket_address,
    );
    let state_dir = f.or(
        ctx,
        "state_dir",
        PathBuf::from(DEFAULT_STATE_DIR),
        absolute_path,
    );
    let web = f.entry("web").map(|e| web(ctx, e));
    Some(Node {
        name: name?,
        interface: interface?,
        xdp_mode: xdp_mode?,
        control_socket: control_socket?,
        metrics_listen: metrics_listen?,
        state_dir: state_dir?,
        server_interfaces: server_interfaces?,
        web: match web {
            Some(w) => Some(w?),
            None => None,
        },
    })
}

fn web(ctx: &mut Ctx, entry: &Entry) -> Option<Web> {
    let f = Fields::open(ctx, &entry.value, "node.web", entry.key.pos, WEB_KEYS)?;
    let listen = f.req(ctx, "listen", socket_address);
    let users_file = f.req(ctx, "users_file", absolute_path);
    let session_timeout_s = f.or(
        ctx,
        "session_timeout_s",
        DEFAULT_SESSION_TIMEOUT_S,
        ranged::<u32>(5, 86_400),
    );
    let tls = f.entry("tls").map(|e| web_tls(ctx, e));
    Some(Web {
        listen: listen?,
        tls: match tls {
            Some(t) => Some(t?),
            None => None,
        },
        users_file: users_file?,
        session_timeout_s: session_timeout_s?,
    })
}

fn web_tls(ctx: &mut Ctx, entry: &Entry) -> Option<WebTls> {
    let f = Fields::open(ctx, &entry.value, "node.web.tls", entry.key.pos, TLS_KEYS)?;
    let cert = f.req(ctx, "cert", absolute_path);
    let key = f.req(ctx, "key", absolute_path);
    Some(WebTls {
        cert: cert?,
        key: key?,
    })
}

/// An interface name: 1 to 15 characters without '/' or spaces.
fn interface_name(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<String> {
    let s = string(ctx, path, node)?;
    if s.is_empty() || s.len() > 15 || s.contains('/') || s.chars().any(char::is_whitespace) {
        ctx.error(
            node.pos(),
            path,
            format!(
                "{s:?} is not an interface name; expected 1 to 15 characters without '/' or spaces"
            ),
        );
        return None;
    }
    Some(s)
}

fn cluster(ctx: &mut Ctx, entry: &Entry) -> Option<Cluster> {
    let f = Fields::open(ctx, &entry.value, "cluster", entry.key.pos, CLUSTER_KEYS)?;
    let vrid = f.req(ctx, "vrid", ranged::<u8>(1, 255));
    let priority = f.req(ctx, "priority", ranged::<u8>(1, 254));
    let advert_interval_ms = f.or(ctx, "advert_interval_ms", 1000, |ctx, path, node| {
        let v = ranged::<u32>(10, 40_950)(ctx, path, node)?;
        if v % 10 != 0 {
            ctx.error(
                node.pos(),
                path,
                format!("{v} is not a multiple of 10; VRRP counts the interval in centiseconds"),
            );
            return None;
        }
        Some(v)
    });
    let preempt = f.or(ctx, "preempt", true, boolean);
    let peer = f.opt(ctx, "peer", ipv4("VRRP peers"));
    let role = f.req(ctx, "role", choice(ROLES));
    let sync = f.entry("sync").and_then(|e| sync(ctx, e));
    Some(Cluster {
        vrid: vrid?,
        priority: priority?,
        advert_interval_ms: advert_interval_ms?,
        preempt: preempt?,
        peer,
        role: role?,
        sync,
    })
}

fn sync(ctx: &mut Ctx, entry: &Entry) -> Option<Sync> {
    let f = Fields::open(ctx, &entry.value, "cluster.sync", entry.key.pos, SYNC_KEYS)?;
    let listen = f.req(ctx, "listen", socket_address_v4);
    let peer = f.req(ctx, "peer", socket_address_v4);
    let key_file = f.req(ctx, "key_file", absolute_path);
    Some(Sync {
        listen: listen?,
        peer: peer?,
        key_file: key_file?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use crate::config::ConfigErrors;
    use std::net::SocketAddr;

    #[test]
    fn empty_and_non_mapping_documents() {
        for yaml in ["", "# nothing here\n", "---\n", "~\n"] {
            assert_only(yaml, (1, 1), "empty configuration");
        }
        assert_only("- node\n", (1, 1), "expected a mapping with node:");
        assert_only("\n\nlb1\n", (3, 1), "found string \"lb1\"");
    }

    #[test]
    fn node_values() {
        let yaml = "node:\n  name: lb1\n  interface: abcdefghijklmnop\n  xdp_mode: fast\n  control_socket: lbd.sock\n  metrics_listen: localhost\nservices: []\n";
        let e = errors(yaml);
        assert_eq!(e.len(), 4, "{}", ConfigErrors(e.clone()));
        assert_at(
            &e[0],
            (3, 14),
            "not an interface name; expected 1 to 15 characters",
        );
        assert_at(&e[1], (4, 13), "unknown value \"fast\"");
        assert_at(&e[2], (5, 19), "\"lbd.sock\" is not an absolute path");
        assert_at(&e[3], (6, 19), "\"localhost\" is not an address IP:PORT");
        let yaml = "node:\n  name: lb1\n  interface: eth0\n  xdp_mode: native\n  metrics_listen: \"[::1]:9100\"\nservices: []\n";
        let c = parse(yaml);
        assert_eq!(c.node.xdp_mode, XdpMode::Native);
        assert_eq!(
            c.node.metrics_listen,
            "[::1]:9100".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn cluster_ranges() {
        let cluster = |vrid: &str, priority: &str, advert: &str| {
            with_cluster(&format!(
                "  vrid: {vrid}\n  priority: {priority}\n  advert_interval_ms: {advert}\n  role: primary\n"
            ))
        };
        let yaml = cluster("0", "100", "1000");
        assert_only(
            &yaml,
            (5, 9),
            "cluster.vrid: 0 is out of range; expected 1..=255",
        );
        let yaml = cluster("1", "255", "1000");
        assert_only(
            &yaml,
            (6, 13),
            "cluster.priority: 255 is out of range; expected 1..=254",
        );
        let yaml = cluster("1", "100", "15");
        assert_only(
            &yaml,
            (7, 23),
            "cluster.advert_interval_ms: 15 is not a multiple of 10",
        );
        let yaml = cluster("1", "100", "40960");
        assert_only(&yaml, (7, 23), "40960 is out of range; expected 10..=40950");
        let yaml = cluster("1", "100", "99999999999999999999999");
        assert_only(&yaml, (7, 23), "99999999999999999999999 is out of range");
        let yaml = with_cluster("  vrid: 1\n  priority: 1\n  role: primary\n  peer: 224.0.0.18\n");
        assert_only(
            &yaml,
            loc(&yaml, "224", 0),
            "224.0.0.18 is not a unicast address",
        );
        let yaml = with_cluster(
            "  vrid: 1\n  priority: 1\n  role: boss\n  sync:\n    listen: \"[::1]:7946\"\n    peer: 198.18.0.12:7946\n    key_file: cluster.key\n",
        );
        let e = errors(&yaml);
        assert_eq!(e.len(), 3, "{}", ConfigErrors(e.clone()));
        assert_at(
            &e[0],
            loc(&yaml, "boss", 0),
            "unknown value \"boss\"; expected one of: primary, secondary",
        );
        assert_at(
            &e[1],
            loc(&yaml, "\"[::1]", 0),
            "cluster.sync.listen: IPv6 is not supported here",
        );
        assert_at(&e[2], loc(&yaml, "cluster.key", 0), "not an absolute path");
    }
}
