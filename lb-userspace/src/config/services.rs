//! The `services:` list: each service with its redirect, or its forwarding
//! settings, fallback server and real servers.

use std::net::Ipv4Addr;

use lb_common::{MAX_AFFINITY_ENTRIES, MAX_REALS, MAX_REALS_PER_SERVICE, MAX_SERVICES};

use super::defaults::{check, merge_check, merge_persistence, persistence, Defaults};
use super::diag::Ctx;
use super::fields::{choice, ipv4, list, ranged, valid_name, Fields};
use super::model::{
    AdminState, Forward, Forwarding, Protocol, RealServer, Redirect, Service, ServiceKind,
};
use super::unique::{Registry, SeenReals};
use super::yaml::{Entry, Yaml};

const SERVICE_KEYS: &[&str] = &[
    "name",
    "vip",
    "port",
    "protocol",
    "forwarding",
    "snat_address",
    "persistence",
    "health_check",
    "fallback",
    "real_servers",
    "redirect",
];
const FALLBACK_KEYS: &[&str] = &["address"];
const REAL_KEYS: &[&str] = &["name", "address", "port", "weight", "state"];
const REDIRECT_KEYS: &[&str] = &["code", "scheme", "port"];
/// Keys a redirect service must not have.
const FORWARD_ONLY_KEYS: &[&str] = &[
    "real_servers",
    "persistence",
    "health_check",
    "fallback",
    "forwarding",
    "snat_address",
];

const FORWARDINGS: &[(&str, Forwarding)] = &[
    ("dr", Forwarding::Dr),
    ("nat", Forwarding::Nat),
    ("snat", Forwarding::Snat),
];
const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];
const ADMIN_STATES: &[(&str, AdminState)] = &[
    ("online", AdminState::Online),
    ("drain", AdminState::Drain),
    ("halt", AdminState::Halt),
];
const SCHEMES: &[(&str, &str)] = &[("http", "http"), ("https", "https")];

pub(super) fn services(ctx: &mut Ctx, entry: &Entry, defaults: &Defaults) -> Vec<Service> {
    let Some(items) = list(
        ctx,
        "services",
        &entry.value,
        "a list of services (write services: [] for none)",
    ) else {
        return Vec::new();
    };
    if u32::try_from(items.len()).map_or(true, |n| n > MAX_SERVICES) {
        ctx.error(
            entry.key.pos,
            "services",
            format!(
                "{} services; at most {MAX_SERVICES} are supported",
                items.len()
            ),
        );
    }
    let mut registry = Registry::default();
    let mut services = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(s) = service(
            ctx,
            item,
            &format!("services[{i}]"),
            defaults,
            &mut registry,
        ) {
            services.push(s);
        }
    }
    let reserved: u64 = services
        .iter()
        .filter_map(|s| match &s.kind {
            ServiceKind::Forward(f) => f.persistence.max_clients.map(u64::from),
            ServiceKind::Redirect(_) => None,
        })
        .sum();
    if reserved > u64::from(MAX_AFFINITY_ENTRIES) {
        ctx.error(
            entry.key.pos,
            "services",
            format!(
                "persistence.max_clients adds up to {reserved} over all services; the \
                 persistence table holds {MAX_AFFINITY_ENTRIES}: lower some of them"
            ),
        );
    }
    // Slot 0 of the data path's real-server array means "none".
    let capacity = MAX_REALS - 1;
    if u32::try_from(registry.reals).map_or(true, |n| n > capacity) {
        ctx.error(
            entry.key.pos,
            "services",
            format!(
                "{} real servers over all services; at most {capacity} are supported (fallback servers count too)",
                registry.reals
            ),
        );
    }
    services
}

fn service(
    ctx: &mut Ctx,
    node: &Yaml,
    path: &str,
    defaults: &Defaults,
    registry: &mut Registry,
) -> Option<Service> {
    let f = Fields::open(ctx, node, path, node.pos(), SERVICE_KEYS)?;
    let name = f.req(ctx, "name", valid_name);
    if let (Some(name), Some(e)) = (&name, f.entry("name")) {
        registry.service_name(ctx, name, e.value.pos(), &f.path("name"));
    }
    let vip = f.req(ctx, "vip", ipv4("VIPs"));
    let port = f.req(ctx, "port", ranged::<u16>(1, 65_535));
    let protocol = f.or(ctx, "protocol", Protocol::Tcp, choice(PROTOCOLS));
    let kind = match f.entry("redirect") {
        Some(e) => {
            for key in FORWARD_ONLY_KEYS {
                if let Some(extra) = f.entry(key) {
                    ctx.error(
                        extra.key.pos,
                        &f.path(key),
                        format!("a redirect service must not have {key}; remove it, or remove redirect: to forward traffic"),
                    );
                }
            }
            if protocol == Some(Protocol::Udp) {
                if let Some(p) = f.value("protocol") {
                    ctx.error(
                        p.pos(),
                        &f.path("protocol"),
                        "a redirect service answers over HTTP; its protocol must be tcp",
                    );
                }
            }
            redirect(ctx, e, &f.path("redirect")).map(ServiceKind::Redirect)
        }
        None => forward(ctx, &f, defaults, vip, port, registry).map(ServiceKind::Forward),
    };
    let protocol = if matches!(kind, Some(ServiceKind::Redirect(_))) {
        Some(Protocol::Tcp)
    } else {
        protocol
    };
    if let (Some(vip), Some(port), Some(protocol), Some(e)) = (vip, port, protocol, f.entry("vip"))
    {
        let label = name.clone().unwrap_or_else(|| path.to_owned());
        registry.endpoint(
            ctx,
            (vip, port, protocol),
            label,
            e.value.pos(),
            &f.path("vip"),
        );
    }
    Some(Service {
        name: name?,
        vip: vip?,
        port: port?,
        protocol: protocol?,
        kind: kind?,
    })
}

fn redirect(ctx: &mut Ctx, entry: &Entry, path: &str) -> Option<Redirect> {
    let f = Fields::open(ctx, &entry.value, path, entry.key.pos, REDIRECT_KEYS)?;
    let code = f.or(ctx, "code", 301, |ctx, path, node| {
        let code = ranged::<u16>(100, 599)(ctx, path, node)?;
        if !crate::redirect::REDIRECT_CODES.contains(&code) {
            ctx.error(
                node.pos(),
                path,
                format!(
                    "{code} is not a redirect status; expected one of: 301, 302, 303, 307, 308"
                ),
            );
            return None;
        }
        Some(code)
    });
    let scheme = f.or(ctx, "scheme", "https", choice(SCHEMES));
    let port = f.or(ctx, "port", None, |ctx, path, node| {
        ranged::<u16>(1, 65_535)(ctx, path, node).map(Some)
    });
    Some(Redirect {
        code: code?,
        scheme: scheme?.to_owned(),
        port: port?,
    })
}

fn forward(
    ctx: &mut Ctx,
    f: &Fields<'_>,
    defaults: &Defaults,
    vip: Option<Ipv4Addr>,
    port: Option<u16>,
    registry: &mut Registry,
) -> Option<Forward> {
    let forwarding = f.or(ctx, "forwarding", Forwarding::Dr, choice(FORWARDINGS));
    let snat_address = f.or(ctx, "snat_address", None, |ctx, path, node| {
        let address = ipv4("SNAT addresses")(ctx, path, node)?;
        if forwarding != Some(Forwarding::Snat) {
            ctx.error(
                node.pos(),
                path,
                "snat_address is for forwarding: snat only; remove it or set forwarding: snat"
                    .to_owned(),
            );
            return None;
        }
        Some(Some(address))
    });
    let persistence = f
        .entry("persistence")
        .map(|e| persistence(ctx, e, &f.path("persistence")))
        .unwrap_or_default();
    let own_check = f
        .entry("health_check")
        .map(|e| check(ctx, e, &f.path("health_check")))
        .unwrap_or_default();
    let health_check = merge_check(ctx, &own_check, &defaults.health_check, port.unwrap_or(0));
    let fallback = match f.entry("fallback") {
        None => Some(None),
        Some(e) => fallback(ctx, e, &f.path("fallback"), vip).map(Some),
    };
    let real_servers = real_servers(ctx, f, vip, port, forwarding, registry);
    Some(Forward {
        forwarding: forwarding?,
        snat_address: snat_address?,
        persistence: merge_persistence(persistence, defaults.persistence),
        health_check,
        fallback: fallback?,
        real_servers: real_servers?,
    })
}

fn fallback(ctx: &mut Ctx, entry: &Entry, path: &str, vip: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    let f = Fields::open(ctx, &entry.value, path, entry.key.pos, FALLBACK_KEYS)?;
    let address = f.req(ctx, "address", ipv4("fallback servers"))?;
    if Some(address) == vip {
        if let Some(node) = f.value("address") {
            ctx.error(
                node.pos(),
                &f.path("address"),
                format!("{address} is the service's VIP; use another server"),
            );
        }
        return None;
    }
    Some(address)
}

fn real_servers(
    ctx: &mut Ctx,
    f: &Fields<'_>,
    vip: Option<Ipv4Addr>,
    service_port: Option<u16>,
    forwarding: Option<Forwarding>,
    registry: &mut Registry,
) -> Option<Vec<RealServer>> {
    let Some(entry) = f.entry("real_servers") else {
        f.missing(
            ctx,
            "real_servers",
            "; a forwarding service needs at least one real server (or add redirect: to make it a redirect service)",
        );
        return None;
    };
    let path = f.path("real_servers");
    let items = list(ctx, &path, &entry.value, "a list of real servers")?;
    registry.reals += items.len();
    if items.is_empty() || u32::try_from(items.len()).map_or(true, |n| n > MAX_REALS_PER_SERVICE) {
        ctx.error(
            entry.key.pos,
            &path,
            format!(
                "{} real servers; expected 1..={MAX_REALS_PER_SERVICE}",
                items.len()
            ),
        );
    }
    let mut seen = SeenReals::default();
    let mut reals = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let Some(r) = Fields::open(ctx, item, &path, item.pos(), REAL_KEYS) else {
            reals.push(None);
            continue;
        };
        let name = r.req(ctx, "name", valid_name);
        if let (Some(n), Some(node)) = (&name, r.value("name")) {
            seen.name(ctx, n, node.pos(), &r.path("name"));
        }
        let address = r.req(ctx, "address", ipv4("real servers"));
        if let (Some(a), Some(node)) = (address, r.value("address")) {
            seen.address(ctx, a, vip, node.pos(), &r.path("address"));
        }
        let weight = r.or(ctx, "weight", 100, ranged::<u16>(0, 65_535));
        let state = r.or(ctx, "state", AdminState::Online, choice(ADMIN_STATES));
        let port = r.or(ctx, "port", None, |ctx, path, node| {
            let port = ranged::<u16>(1, 65_535)(ctx, path, node)?;
            if forwarding == Some(Forwarding::Dr) && service_port.is_some_and(|p| p != port) {
                ctx.error(
                    node.pos(),
                    path,
                    format!(
                        "port {port} differs from the service port; direct routing keeps the \
                         port (remove it, or set forwarding: nat or snat)"
                    ),
                );
                return None;
            }
            Some(Some(port))
        });
        reals.push(match (name, address, weight, state, port) {
            (Some(name), Some(address), Some(weight), Some(state), Some(port)) => {
                Some(RealServer {
                    name,
                    address,
                    weight,
                    state,
                    port,
                })
            }
            _ => None,
        });
    }
    reals.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use crate::config::ConfigErrors;
    use std::fmt::Write as _;

    #[test]
    fn service_and_real_server_ranges() {
        let yaml = with_services(&format!("{WEB}        weight: 70000\n"));
        assert_only(
            &yaml,
            loc(&yaml, "70000", 0),
            "services[0].real_servers[0].weight: 70000 is out of range; expected 0..=65535",
        );
        let yaml = with_services(&WEB.replace("port: 443", "port: 0"));
        assert_only(
            &yaml,
            (7, 11),
            "services[0].port: 0 is out of range; expected 1..=65535",
        );
        let yaml = with_services(&format!("{WEB}    persistence: {{ netmask: 7 }}\n"));
        assert_only(
            &yaml,
            loc(&yaml, "7 }", 0),
            "services[0].persistence.netmask: 7 is out of range; expected 8..=32",
        );
        let yaml = with_services(&format!("{WEB}    persistence: {{ timeout_s: 9 }}\n"));
        assert_only(
            &yaml,
            loc(&yaml, "9 }", 0),
            "services[0].persistence.timeout_s: 9 is below 10: a client's last-seen time is \
             refreshed every second and cached decisions live up to 2.5 s, so timeouts are \
             honoured to within 3.5 s (never early); use 10 or more",
        );
        let yaml = with_services(&format!("{WEB}    persistence: {{ max_clients: 0 }}\n"));
        assert_only(
            &yaml,
            loc(&yaml, "0 }", 0),
            "services[0].persistence.max_clients: 0 is out of range; expected 1..=1250000",
        );
        let yaml = with_services(&format!(
            "{WEB}    health_check: {{ interval_ms: 1000, timeout_ms: 2000 }}\n"
        ));
        assert_only(
            &yaml,
            loc(&yaml, "2000", 0),
            "services[0].health_check.timeout_ms: 2000 is out of range; expected 10..=1000",
        );
        let yaml = with_services(&format!("{WEB}        state: drained\n"));
        assert_only(
            &yaml,
            loc(&yaml, "drained", 0),
            "unknown value \"drained\"; did you mean \"drain\"?",
        );
        let yaml = with_services(&format!("{WEB}    forwarding: masquerade\n"));
        assert_only(
            &yaml,
            loc(&yaml, "masquerade", 0),
            "unknown value \"masquerade\"; expected one of: dr, nat, snat",
        );
    }

    #[test]
    fn nat_and_snat_settings() {
        let with_port = |yaml: String| {
            yaml.replace(
                "address: 198.18.0.21\n",
                "address: 198.18.0.21\n        port: 8443\n",
            )
        };
        let yaml = with_port(with_services(&format!(
            "{WEB}    forwarding: snat\n    snat_address: 198.18.0.11\n"
        )));
        let config = parse(&yaml);
        let ServiceKind::Forward(f) = &config.services[0].kind else {
            panic!("a forwarding service");
        };
        assert_eq!(f.forwarding, Forwarding::Snat);
        assert_eq!(f.snat_address, Some(Ipv4Addr::new(198, 18, 0, 11)));
        assert_eq!(f.real_servers[0].port, Some(8443));

        let yaml = with_services(&format!("{WEB}    snat_address: 198.18.0.11\n"));
        assert_only(
            &yaml,
            loc(&yaml, "198.18.0.11", 0),
            "snat_address is for forwarding: snat only; remove it or set forwarding: snat",
        );
        let yaml = with_port(with_services(WEB));
        assert_only(
            &yaml,
            loc(&yaml, "8443", 0),
            "port 8443 differs from the service port; direct routing keeps the port (remove it, or set forwarding: nat or snat)",
        );
    }

    #[test]
    fn redirect_must_not_have_forwarding_keys() {
        let yaml = with_services(&format!(
            "{WEB}    health_check: {{ type: tcp }}\n    protocol: udp\n    redirect: {{ code: 300, scheme: ftp, port: 0 }}\n"
        ));
        let e = errors(&yaml);
        assert_eq!(e.len(), 6, "{}", ConfigErrors(e.clone()));
        assert_at(
            &e[0],
            loc(&yaml, "real_servers", 0),
            "services[0].real_servers: a redirect service must not have real_servers",
        );
        assert_at(
            &e[1],
            loc(&yaml, "health_check", 0),
            "must not have health_check",
        );
        assert_at(&e[2], loc(&yaml, "udp", 0), "its protocol must be tcp");
        assert_at(&e[3], loc(&yaml, "300", 0), "300 is not a redirect status");
        assert_at(
            &e[4],
            loc(&yaml, "ftp", 0),
            "unknown value \"ftp\"; did you mean \"http\"? expected one of: http, https",
        );
        assert_at(
            &e[5],
            loc(&yaml, "0 }", 0),
            "redirect.port: 0 is out of range",
        );
        let c = parse(&with_services("  - { name: r, vip: 198.18.0.1, port: 80, redirect: { code: 307, scheme: http, port: 8080 } }\n"));
        assert_eq!(
            c.services[0].kind,
            ServiceKind::Redirect(Redirect {
                code: 307,
                scheme: "http".into(),
                port: Some(8080)
            })
        );
    }

    #[test]
    fn fallback_is_checked() {
        let yaml = with_services(&format!("{WEB}    fallback: {{ address: 198.18.0.100 }}\n"));
        assert_only(&yaml, loc(&yaml, "198.18.0.100", 1), "is the service's VIP");
        let yaml = with_services(&format!("{WEB}    fallback: {{ adress: 198.18.0.5 }}\n"));
        let e = errors(&yaml);
        assert_eq!(e.len(), 2, "{}", ConfigErrors(e.clone()));
        assert_at(
            &e[0],
            loc(&yaml, "fallback", 0),
            "missing required key \"address\"",
        );
        assert_at(&e[1], loc(&yaml, "adress", 0), "did you mean \"address\"?");
    }

    #[test]
    fn service_limits() {
        let mut body = String::new();
        for i in 0..=MAX_SERVICES {
            writeln!(
                body,
                "  - {{ name: s{i}, vip: 198.18.0.100, port: {}, real_servers: [{{ name: r, address: 198.18.1.1 }}] }}",
                i + 1
            ).unwrap();
        }
        assert_only(
            &with_services(&body),
            (4, 1),
            "257 services; at most 256 are supported",
        );
        let mut body =
            String::from("  - name: big\n    vip: 198.18.0.100\n    port: 80\n    real_servers:\n");
        for i in 0..=MAX_REALS_PER_SERVICE {
            writeln!(
                body,
                "      - {{ name: r{i}, address: 198.18.1.{} }}",
                i + 1
            )
            .unwrap();
        }
        assert_only(
            &with_services(&body),
            (8, 5),
            "164 real servers; expected 1..=163",
        );
        let mut body = String::new();
        for s in 0..103 {
            writeln!(
                body,
                "  - name: s{s}\n    vip: 198.18.0.100\n    port: {}\n    real_servers:",
                s + 1
            )
            .unwrap();
            for i in 0..160 {
                writeln!(
                    body,
                    "      - {{ name: r{i}, address: 198.18.1.{} }}",
                    i + 1
                )
                .unwrap();
            }
        }
        assert_only(
            &with_services(&body),
            (4, 1),
            "16480 real servers over all services; at most 16383",
        );
    }
}
