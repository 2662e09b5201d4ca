//! Hostile traffic end to end (the contract's "Hostile traffic"): a flood of
//! spoofed client sources never takes persistence away from a remembered
//! client, in the flooded service or any other, and flooded services still
//! serve new clients; a real server that never answers ARP gets no client
//! and no client is lost to it.
//!
//! Needs root. Each test builds its own lab (client, load balancer running
//! the real `lbd`, three real servers answering HTTP with their own name)
//! and tears it down when it ends, also when it fails. Health checks are
//! `type: none` here: the tests are about the persistence table and the
//! MACs, and a check timing out on a saturated 2-core machine must not
//! move clients behind their back. The floods come from
//! [`lb_tests::flood`]: spoofed sources outside the lab's addresses, sent
//! from the client's namespace to the load balancer's MAC.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use lb_common::MAX_AFFINITY_ENTRIES;
use lb_tests::{
    flood::{flood, spoofed_source, FloodFrame, FloodReport, FloodSpec, SPOOFED_SOURCES},
    lab::{run_in, DrLab, DrLabOptions},
    lbd::{affinity, lab_config, lbctl_ok, Lbd},
    paths,
    wait::{try_wait_until, wait_until, SLACK},
};
use serde_json::Value;

/// How long lbd may take to answer with the real servers' MACs.
const READY: Duration = Duration::from_secs(20);
/// lbd counts active clients about once a second; counters shown are at
/// most that old (the contract).
const CENSUS_EVERY: Duration = Duration::from_secs(1);
/// Persistence timeout of every service: longer than any test.
const TIMEOUT_S: u32 = 3600;
/// Deadline of one client run.
const CLIENT_RUN: Duration = Duration::from_secs(30);
/// Per-connection timeout of the clients.
const CONN_TIMEOUT: Duration = Duration::from_secs(2);

/// The flooded services besides `web`, each on a VIP of its own.
const OTHER_SERVICES: u8 = 16;
/// Real clients of `web` remembered before the flood.
const REAL_CLIENTS: usize = 300;
/// Of those, the ones placed on rs3, which is then drained: the ring no
/// longer gives them their server, only their table entries do.
const DRAINED_CLIENTS: usize = 30;
/// New real clients after the flood.
const NEW_CLIENTS: usize = 10;
/// Lab sources never used as clients: asked about with `lbctl affinity`.
const UNUSED_SOURCES: usize = 30;
/// Real clients of each other service, remembered before the flood.
const OTHER_CLIENTS: usize = 2;
/// Bounds of the two floods (each ends sooner when its passes are sent).
const FLOOD_OTHERS_FOR: Duration = Duration::from_secs(45);
const FLOOD_WEB_FOR: Duration = Duration::from_secs(15);

/// The tests here take turns: a flood saturates the machine's CPUs, and a
/// test beside it would time out on the flood, not on the load balancer.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A lab with three real servers, `sources` client addresses and the VIPs
/// of `extra_vips` on the real servers too.
fn lab(sources: usize, extra_vips: Vec<Ipv4Addr>) -> DrLab {
    paths::require_root("namespace tests");
    paths::require_lbd();
    DrLab::start(DrLabOptions {
        real_servers: 3,
        client_sources: sources,
        extra_vips,
        ..DrLabOptions::default()
    })
    .unwrap_or_else(|e| panic!("lab: {e}"))
}

/// The VIP of other service `k` (0-based): 198.18.0.101 and on.
fn other_vip(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 101 + k)
}

/// The name of other service `k`.
fn other_name(k: u8) -> String {
    format!("other{:02}", k + 1)
}

/// A DR service on `vip`, the lab's HTTP port, health checks `none`, with
/// rs1..rs3 (`rs3_extra` appended to rs3's line, say `, state: drain`)
/// and `more` real-server lines.
fn service(lab: &DrLab, name: &str, vip: Ipv4Addr, rs3_extra: &str, more: &str) -> String {
    let mut s = format!(
        "  - name: {name}\n    vip: {vip}\n    port: {}\n    persistence: {{ timeout_s: {TIMEOUT_S} }}\n    \
         health_check: {{ type: none }}\n    real_servers:\n",
        lab.http_port()
    );
    for i in 0..lab.real_count() {
        let extra = if i == 2 { rs3_extra } else { "" };
        let _ = writeln!(
            s,
            "      - {{ name: {}, address: {}{extra} }}",
            lab.real_name(i),
            lab.real_address(i)
        );
    }
    s.push_str(more);
    s
}

fn status(lbd: &Lbd) -> Value {
    lbd.status()
        .unwrap_or_else(|| panic!("`lbctl status` does not answer"))
}

/// A data-path counter from `lbctl status` (`dataplane`, by reason name).
fn counter(status: &Value, name: &str) -> u64 {
    status["dataplane"][name].as_u64().unwrap_or_else(|| {
        panic!(
            "no counter {name} in `lbctl status`: {}",
            status["dataplane"]
        )
    })
}

fn service_of<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["services"]
        .as_array()
        .and_then(|list| list.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no service {name} in {status}"))
}

fn real_of<'a>(status: &'a Value, service: &str, server: &str) -> &'a Value {
    service_of(status, service)["real_servers"]
        .as_array()
        .and_then(|list| list.iter().find(|r| r["name"] == server))
        .unwrap_or_else(|| panic!("no real server {service}/{server} in {status}"))
}

/// Runs `rounds` rounds from `sources` to the lab's VIP, asserts every
/// request was answered and every source stayed on one server, and returns
/// that server by source.
fn sticky(
    lab: &DrLab,
    sources: &[Ipv4Addr],
    rounds: usize,
    what: &str,
) -> BTreeMap<Ipv4Addr, String> {
    let report = lab
        .run_clients_with(sources, rounds, CLIENT_RUN, CONN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: client run: {e}"));
    assert!(
        report.failures().is_empty() && report.sticky_sources().len() == sources.len(),
        "{what}: every request answered, always by the same server: {}",
        report.summary()
    );
    report.first_servers()
}

/// One HTTP request from `source` (an address of the client namespace) to
/// `vip` at the lab's port: the answering server's name.
fn fetch(lab: &DrLab, source: Ipv4Addr, vip: Ipv4Addr) -> String {
    let url = format!("http://{vip}:{}/", lab.http_port());
    let source = source.to_string();
    run_in(
        lab.client_ns(),
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "--interface",
            &source,
            &url,
        ],
    )
    .unwrap_or_else(|e| panic!("{source} asking {url}: {e}"))
    .trim()
    .to_owned()
}

/// Where `client` of `service` goes: asserts `lbctl affinity` answers from
/// the table, and returns the server.
fn remembered_server(lbd: &Lbd, service: &str, client: Ipv4Addr) -> String {
    let a = affinity(lbd, service, client);
    assert_eq!(
        a["source"], "table",
        "{service}: {client} is remembered: {a}"
    );
    a["server"]
        .as_str()
        .unwrap_or_else(|| panic!("{service}: {client} has no server: {a}"))
        .to_owned()
}

/// Sends `spec`, prints what it did, and returns that.
fn send(what: &str, spec: &FloodSpec) -> FloodReport {
    let report = flood(spec).unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!("{what}: {}", report.summary());
    report
}

/// 17 services with persistence share the table; 300 real clients of the
/// first one (`web`) are remembered, 30 of them on rs3 which is then
/// drained, so only their table entries keep them there; two real clients
/// of each other service are remembered too. Then more distinct (service,
/// source) pairs than the table holds: spoofed ACKs from 130,048 sources to
/// each of the 16 other services, twice, then SYNs and ACKs from the same
/// sources to `web`, twice. Afterwards every remembered client still goes
/// to its server, by its table entry (a table that evicts would have
/// dropped them, and rs3's clients would have moved); new clients are
/// served; and the data path says it refused to remember beyond a quota or
/// a full table (if it never had to, the flood was too small to prove
/// anything, and the test says so).
#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn a_flood_of_spoofed_sources_never_takes_a_remembered_client_away() {
    let _turn = one_at_a_time();
    let others: Vec<Ipv4Addr> = (0..OTHER_SERVICES).map(other_vip).collect();
    let sources_needed = REAL_CLIENTS + NEW_CLIENTS + UNUSED_SOURCES;
    let mut lab = lab(sources_needed, others.clone());
    let sources = lab.client_sources().to_vec();
    let (clients, rest) = sources.split_at(REAL_CLIENTS);
    let (newcomers, unused) = rest.split_at(NEW_CLIENTS);
    let (on_rs1_rs2, on_rs3) = clients.split_at(REAL_CLIENTS - DRAINED_CLIENTS);

    // rs3 starts drained: the first 270 clients go to rs1 and rs2.
    let mut services = service(&lab, "web", lab.vip(), ", state: drain", "");
    for k in 0..OTHER_SERVICES {
        services.push_str(&service(&lab, &other_name(k), other_vip(k), "", ""));
    }
    let config = lab_config(&lab, &services);
    let lbd = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("starting lbd: {e}"));
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("lbd not ready: {e}"));
    eprintln!(
        "quotas (max_clients) by service: {:?}",
        status(&lbd)["services"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|svc| svc["max_clients"].clone())
            .collect::<Vec<_>>()
    );

    // Place the clients: 270 on rs1 and rs2, then 30 on rs3 alone.
    let mut placed = sticky(&lab, on_rs1_rs2, 1, "clients while rs3 is drained");
    assert!(
        placed.values().all(|s| s != "rs3"),
        "the drained rs3 gets no new client: {placed:?}"
    );
    for (verb, server) in [("online", "rs3"), ("drain", "rs1"), ("drain", "rs2")] {
        lbctl_ok(&lbd, &[verb, "web", server]);
    }
    let on_drained = sticky(&lab, on_rs3, 1, "clients while only rs3 takes new ones");
    assert!(
        on_drained.values().all(|s| s == "rs3"),
        "every new client goes to rs3, the only online server: {on_drained:?}"
    );
    placed.extend(on_drained);
    for (verb, server) in [("online", "rs1"), ("online", "rs2"), ("drain", "rs3")] {
        lbctl_ok(&lbd, &[verb, "web", server]);
    }
    let s = status(&lbd);
    assert_eq!(real_of(&s, "web", "rs3")["admin_state"], "drain", "{s}");

    // Every client is in the table; rs3's 30 only there: the ring, which
    // places sources never seen, gives rs3 nobody now.
    for (client, server) in &placed {
        assert_eq!(
            &remembered_server(&lbd, "web", *client),
            server,
            "lbctl affinity agrees with where {client} was answered"
        );
    }
    for source in unused {
        let a = affinity(&lbd, "web", *source);
        assert_eq!(a["source"], "hash", "{source} was never a client: {a}");
        assert!(
            a["server"].is_string() && a["server"] != "rs3",
            "the ring gives no one the drained rs3: {a}"
        );
    }

    // Two real clients of every other service.
    let mut others_placed: BTreeMap<(u8, Ipv4Addr), String> = BTreeMap::new();
    for k in 0..OTHER_SERVICES {
        for source in &clients[..OTHER_CLIENTS] {
            let server = fetch(&lab, *source, other_vip(k));
            assert!(
                server.starts_with("rs"),
                "{} answered {server:?}",
                other_name(k)
            );
            assert_eq!(
                remembered_server(&lbd, &other_name(k), *source),
                server,
                "{}: {source}",
                other_name(k)
            );
            others_placed.insert((k, *source), server);
        }
    }

    // Read leniently here: a data path without these counters fails below,
    // after the clients have been checked.
    let before = status(&lbd);
    let so_far = |name: &str| before["dataplane"][name].as_u64().unwrap_or(0);
    let limits_before = so_far("flood_quota_full") + so_far("flood_table_full");
    let syn_before = so_far("flood_syn_unremembered");
    eprintln!(
        "before the flood: {} affinity entries",
        before["affinity_entries"]
    );

    // The flood: spoofed ACKs from every spoofed source to the 16 other
    // services, twice over (more pairs than the table holds), then SYNs
    // and ACKs from the same sources to web, twice over.
    let port = lab.http_port();
    let other_targets: Vec<SocketAddrV4> =
        others.iter().map(|v| SocketAddrV4::new(*v, port)).collect();
    let mut spec = FloodSpec::new(
        lab.client_ns(),
        "eth0",
        lab.client_mac(),
        lab.lb_mac(),
        &other_targets,
        &[FloodFrame::TcpAck],
    );
    spec.max_duration = FLOOD_OTHERS_FOR;
    assert!(
        spec.pairs() > u64::from(MAX_AFFINITY_ENTRIES),
        "{} pairs",
        spec.pairs()
    );
    let at_others = send("ACK flood of the 16 other services", &spec);
    assert!(
        at_others.pairs_reached > u64::from(MAX_AFFINITY_ENTRIES),
        "the flood was too small to prove anything: it reached {} (service, source) pairs, \
         fewer than the {MAX_AFFINITY_ENTRIES} the table holds ({})",
        at_others.pairs_reached,
        at_others.summary()
    );
    let mut spec = FloodSpec::new(
        lab.client_ns(),
        "eth0",
        lab.client_mac(),
        lab.lb_mac(),
        &[SocketAddrV4::new(lab.vip(), port)],
        &[FloodFrame::TcpSyn, FloodFrame::TcpAck],
    );
    spec.max_duration = FLOOD_WEB_FOR;
    let at_web = send("SYN and ACK flood of web", &spec);
    assert!(
        at_web.every_source_repeated(),
        "every one of the {SPOOFED_SOURCES} sources sent to web twice: {}",
        at_web.summary()
    );

    // Not one remembered client moved or was forgotten: by the table...
    let mut moved = Vec::new();
    let mut forgotten = Vec::new();
    for (client, server) in &placed {
        let a = affinity(&lbd, "web", *client);
        if a["server"] != server.as_str() {
            moved.push(format!("{client}: {server} -> {}", a["server"]));
        } else if a["source"] != "table" {
            forgotten.push(format!("{client}: {a}"));
        }
    }
    let on_rs3_moved = moved.iter().filter(|m| m.contains("rs3 ->")).count();
    assert!(
        moved.is_empty() && forgotten.is_empty(),
        "{} of {REAL_CLIENTS} clients moved ({on_rs3_moved} of rs3's {DRAINED_CLIENTS}), \
         {} forgotten: {moved:?} {forgotten:?}",
        moved.len(),
        forgotten.len()
    );
    // ... and by their own requests.
    let now = sticky(&lab, clients, 1, "the real clients after the flood");
    let moved: Vec<String> = placed
        .iter()
        .filter(|(c, s)| now.get(*c) != Some(*s))
        .map(|(c, s)| format!("{c}: {s} -> {:?}", now.get(c)))
        .collect();
    assert!(
        moved.is_empty(),
        "{} of {REAL_CLIENTS} clients answered by another server: {moved:?}",
        moved.len()
    );

    // The flooded web still serves new clients (from the ring).
    let served = sticky(&lab, newcomers, 2, "new clients after the flood");
    assert!(
        served.values().all(|s| s == "rs1" || s == "rs2"),
        "new clients get an online server: {served:?}"
    );
    eprintln!(
        "a new client after the flood: {}",
        affinity(&lbd, "web", newcomers[0])
    );

    // The other services' clients were not touched either.
    for ((k, source), server) in &others_placed {
        let name = other_name(*k);
        assert_eq!(
            &remembered_server(&lbd, &name, *source),
            server,
            "{name}: {source} keeps its server"
        );
        assert_eq!(
            &fetch(&lab, *source, other_vip(*k)),
            server,
            "{name}: {source} is answered by its server"
        );
    }

    // The flood reached the table's limits: else it proved nothing.
    let after = match try_wait_until(
        "flood_quota_full or flood_table_full to rise",
        CENSUS_EVERY + SLACK,
        || {
            let s = lbd
                .status()
                .ok_or_else(|| "`lbctl status` does not answer".to_owned())?;
            let limits = counter(&s, "flood_quota_full") + counter(&s, "flood_table_full");
            if limits > limits_before {
                Ok(s)
            } else {
                Err(format!("dataplane {}", s["dataplane"]))
            }
        },
    ) {
        Ok(s) => s,
        Err(e) => panic!(
            "the flood was too small: no client was refused for a full quota or table, so \
             nothing was proved ({e}); floods: {}; {}",
            at_others.summary(),
            at_web.summary()
        ),
    };
    eprintln!(
        "after the flood: {} affinity entries; dataplane {}",
        after["affinity_entries"], after["dataplane"]
    );
    assert!(
        counter(&after, "flood_syn_unremembered") > syn_before,
        "web's SYNs were served without being remembered: {}",
        after["dataplane"]
    );
    // CPUs checking a quota at the same moment may each add one client.
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| u64::try_from(n.get()).unwrap_or(u64::MAX));
    for svc in after["services"].as_array().into_iter().flatten() {
        let held = svc["remembered_clients"].as_u64();
        let max = svc["max_clients"].as_u64();
        assert!(
            matches!((held, max), (Some(h), Some(m)) if h <= m + cpus),
            "{}: remembered_clients {held:?} within max_clients {max:?}",
            svc["name"]
        );
    }
    let quotas: Vec<u64> = after["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|svc| svc["max_clients"].as_u64())
        .collect();
    assert!(
        quotas.len() == usize::from(OTHER_SERVICES) + 1
            && quotas.iter().sum::<u64>() <= u64::from(MAX_AFFINITY_ENTRIES),
        "every service has a quota, and together they fit in the table: {quotas:?}"
    );
    assert!(
        service_of(&after, "web")["remembered_clients"]
            .as_u64()
            .is_some_and(|n| n >= u64::try_from(REAL_CLIENTS).unwrap_or(u64::MAX)),
        "web still holds its real clients: {}",
        service_of(&after, "web")
    );
}

/// The value of the metric `name` with labels `server` and `service`
/// (whatever their order), from Prometheus text.
fn metric(text: &str, name: &str, service: &str, server: &str) -> Option<f64> {
    let server = format!("server=\"{server}\"");
    let service = format!("service=\"{service}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| l.contains(&server) && l.contains(&service))
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
}

/// A real server at an address nobody holds (it never answers ARP), with
/// health checks `none` so it counts as up: `lbctl status` and the metrics
/// say it is unresolved, 50 new clients are all answered (none is sent into
/// the void), and `lbctl affinity` never names it, for clients in the table
/// or sources the ring would place (with it in the ring, a quarter of them
/// would be its).
#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn a_real_server_that_never_answers_arp_gets_no_client_and_loses_none() {
    const CLIENTS: usize = 50;
    const HASH_PROBES: u32 = 200;
    const GHOST: &str = "ghost";
    let _turn = one_at_a_time();
    let ghost = Ipv4Addr::new(198, 18, 0, 90);
    let mut lab = lab(64, Vec::new());
    assert!(
        ghost != lab.vip()
            && ghost != lab.lb_address()
            && ghost != lab.client_address()
            && (0..lab.real_count()).all(|i| lab.real_address(i) != ghost),
        "{ghost} is no lab host"
    );
    let more = format!("      - {{ name: {GHOST}, address: {ghost} }}\n");
    let config = lab_config(&lab, &service(&lab, "web", lab.vip(), "", &more));
    let lbd = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("starting lbd: {e}"));
    let reals: Vec<String> = (0..lab.real_count()).map(|i| lab.real_name(i)).collect();
    let s = wait_until("rs1..rs3 resolved, the ghost not", READY, || {
        let s = lbd
            .status()
            .ok_or_else(|| "`lbctl status` does not answer".to_owned())?;
        let web = &s["services"][0]["real_servers"];
        let resolved = |name: &str| {
            web.as_array()
                .and_then(|list| list.iter().find(|r| r["name"] == name))
                .map(|r| r["resolved"].clone())
        };
        let ready = reals
            .iter()
            .all(|r| resolved(r.as_str()) == Some(Value::Bool(true)))
            && resolved(GHOST) == Some(Value::Bool(false));
        if ready {
            Ok(s)
        } else {
            Err(format!("real servers {web}"))
        }
    });
    let g = real_of(&s, "web", GHOST);
    assert!(g["mac"].is_null(), "{g}");
    assert_eq!(g["health"], "up", "checks `none`: it counts as up: {g}");
    let text = String::from_utf8_lossy(&lbctl_ok(&lbd, &["status"]).stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.contains(GHOST) && l.contains("unresolved")),
        "`lbctl status` says why the ghost gets nothing:\n{text}"
    );
    let () = wait_until(
        "lb_real_server_resolved: 0 for the ghost, 1 for the others",
        CENSUS_EVERY + SLACK,
        || {
            let text = run_in(
                lab.lb_ns(),
                &[
                    "curl",
                    "-sS",
                    "--max-time",
                    "3",
                    "http://127.0.0.1:9100/metrics",
                ],
            )
            .map_err(|e| e.to_string())?;
            let is = |server: &str, want: f64| {
                metric(&text, "lb_real_server_resolved", "web", server)
                    .is_some_and(|v| (v - want).abs() < 0.5)
            };
            if is(GHOST, 0.0) && reals.iter().all(|r| is(r.as_str(), 1.0)) {
                Ok(())
            } else {
                Err(text
                    .lines()
                    .filter(|l| l.starts_with("lb_real_server_resolved"))
                    .collect::<Vec<_>>()
                    .join("; "))
            }
        },
    );

    // New clients: every one answered, twice, by the same live server.
    let unresolved_before = counter(&s, "drop_real_unresolved");
    let sources = lab.client_sources().to_vec();
    let (clients, unused) = sources.split_at(CLIENTS);
    let served = sticky(&lab, clients, 2, "new clients beside an unresolved server");
    let after = status(&lbd);
    assert_eq!(
        counter(&after, "drop_real_unresolved"),
        unresolved_before,
        "no client frame was dropped for want of a MAC: {}",
        after["dataplane"]
    );
    for (client, server) in &served {
        assert_ne!(server, GHOST);
        assert_eq!(
            &remembered_server(&lbd, "web", *client),
            server,
            "{client} is remembered on the server that answered it"
        );
    }
    // Sources never seen: the ring never names the ghost.
    let probes = unused
        .iter()
        .copied()
        .chain((0..HASH_PROBES).map(spoofed_source));
    let mut named = Vec::new();
    let mut count = 0;
    for source in probes {
        let a = affinity(&lbd, "web", source);
        assert_eq!(a["source"], "hash", "{source} was never a client: {a}");
        assert!(a["server"].is_string(), "{source} gets a server: {a}");
        if a["server"] == GHOST {
            named.push(source);
        }
        count += 1;
    }
    assert!(
        named.is_empty(),
        "the ring gives the unresolved ghost {} of {count} new sources: {named:?}",
        named.len()
    );

    // It keeps no client: the others hold them all.
    let expected = u64::try_from(CLIENTS).unwrap_or(u64::MAX);
    let s = wait_until(
        "the census to count every client",
        CENSUS_EVERY + SLACK,
        || {
            let s = lbd
                .status()
                .ok_or_else(|| "`lbctl status` does not answer".to_owned())?;
            let held: u64 = reals
                .iter()
                .map(|r| {
                    real_of(&s, "web", r)["active_clients"]
                        .as_u64()
                        .unwrap_or(0)
                })
                .sum();
            if held == expected {
                Ok(s)
            } else {
                Err(format!("{held} active clients on rs1..rs3"))
            }
        },
    );
    assert_eq!(
        real_of(&s, "web", GHOST)["active_clients"].as_u64(),
        Some(0),
        "{}",
        real_of(&s, "web", GHOST)
    );
}
