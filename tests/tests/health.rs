//! End to end in network namespaces: real-server health checks (`tcp`,
//! `http`, `https`, `exec`), maintenance with `lbctl` (`drain`, `halt`,
//! `online`, `weight`), the fallback server, admin states across a restart,
//! the Prometheus endpoint and `lbctl`'s errors.
//!
//! Needs root. Every test builds its own lab (client, load balancer running
//! the real `lbd` from `$LB_BIN_DIR`, real servers answering HTTP with their
//! own name) and tears it down when it ends. Checks run every 200 ms with
//! `rise: 2` and `fall: 2`, so a change of health shows within a second or
//! two; every wait is bounded, by a bound derived from these settings plus
//! [`SLACK`] for a loaded machine.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_tests::{
    lab::{run_in, ClientReport, DrLab, DrLabOptions},
    lbd::{affinity, lab_config, lbctl_ok, Lbd},
    paths,
    wait::{try_wait_until, wait_until, SLACK},
};
use serde_json::Value;

/// How long lbd may take to answer with every MAC resolved.
const READY: Duration = Duration::from_secs(20);
/// Health-check interval of every test service.
const INTERVAL_MS: u64 = 200;
/// Timeout of the tcp, http and https checks (the exec check's is
/// [`INTERVAL_MS`]): no check here lasts longer than one interval.
const TIMEOUT_MS: u64 = 150;
/// Consecutive passes that bring a server up.
const RISE: u64 = 2;
/// Consecutive failures that take a server down.
const FALL: u64 = 2;
/// Deadline of one client run.
const CLIENT_RUN: Duration = Duration::from_secs(20);
/// Per-connection timeout of the clients.
const CONN_TIMEOUT: Duration = Duration::from_secs(2);
/// lbd counts active clients once a second: counters shown are at most that
/// old (the contract).
const CENSUS_EVERY: Duration = Duration::from_secs(1);

/// How stale `lbctl status` counters (active clients) may be, plus slack.
fn counter_lag() -> Duration {
    CENSUS_EVERY + SLACK
}

/// The longest `checks` consecutive check results may take to show after a
/// server changes: the check under way then (one interval), then `checks`
/// checks, each lasting at most one interval before the next is due one
/// interval later; plus [`SLACK`].
fn health_bound(checks: u64) -> Duration {
    Duration::from_millis(INTERVAL_MS + checks * 2 * INTERVAL_MS) + SLACK
}

/// A server must show down within `fall` checks.
fn down_bound() -> Duration {
    health_bound(FALL)
}

/// A server must show up again within `rise` checks.
fn up_bound() -> Duration {
    health_bound(RISE)
}

/// How long a wait for a change of health may last: its bound, and as much
/// again, so that one beyond the bound is reported with how long it took.
fn patience(bound: Duration) -> Duration {
    bound * 2
}

/// A health check of `kind` with the fast test timings; `extra` holds more
/// flow-mapping entries (`, port: 443, ...`).
fn check(kind: &str, extra: &str) -> String {
    format!(
        "{{ type: {kind}, interval_ms: {INTERVAL_MS}, timeout_ms: {TIMEOUT_MS}, rise: {RISE}, fall: {FALL}{extra} }}"
    )
}

/// One real-server line of a service; `extra` holds more flow-mapping
/// entries (`, state: halt`).
fn real_line(lab: &DrLab, i: usize, extra: &str) -> String {
    format!(
        "      - {{ name: {}, address: {}{extra} }}\n",
        lab.real_name(i),
        lab.real_address(i)
    )
}

/// A forwarding service on the lab's VIP; `more` is inserted before
/// `real_servers` (say, a `fallback:` line) and `reals` are lines from
/// [`real_line`].
fn service(
    name: &str,
    vip: Ipv4Addr,
    port: u16,
    timeout_s: u32,
    check: &str,
    more: &str,
    reals: &str,
) -> String {
    format!(
        "  - name: {name}\n    vip: {vip}\n    port: {port}\n    \
         persistence: {{ timeout_s: {timeout_s} }}\n    health_check: {check}\n{more}    \
         real_servers:\n{reals}"
    )
}

/// Service `web` on VIP:80 with the first `n` real servers and `check`.
fn web(lab: &DrLab, n: usize, timeout_s: u32, check: &str) -> String {
    let reals: String = (0..n).map(|i| real_line(lab, i, "")).collect();
    service(
        "web",
        lab.vip(),
        lab.http_port(),
        timeout_s,
        check,
        "",
        &reals,
    )
}

fn lab_with(opts: DrLabOptions) -> DrLab {
    paths::require_root("namespace tests");
    paths::require_lbd();
    DrLab::start(opts).unwrap_or_else(|e| panic!("lab: {e}"))
}

/// A lab with `reals` real servers and `sources` client addresses.
fn lab(reals: usize, sources: usize) -> DrLab {
    lab_with(DrLabOptions {
        real_servers: reals,
        client_sources: sources,
        ..DrLabOptions::default()
    })
}

/// Starts lbd with `services` and waits until it is ready and every health
/// check has completed once.
fn start(lab: &mut DrLab, services: &str) -> Lbd {
    let config = lab_config(lab, services);
    let lbd = Lbd::start(lab, &config).unwrap_or_else(|e| panic!("starting lbd: {e}"));
    lbd.wait_ready(lab, READY)
        .unwrap_or_else(|e| panic!("lbd not ready: {e}\nconfiguration:\n{config}"));
    // The first checks start at once and last at most one interval.
    wait_status(
        &lbd,
        Duration::from_millis(2 * INTERVAL_MS) + SLACK,
        "every server checked once",
        |s| all_reals(s).iter().all(|r| !r["last_check"].is_null()),
    );
    lbd
}

/// The end of lbd's log, for failure messages (the lab only prints `*.log`).
fn log_tail(lbd: &Lbd) -> String {
    let log = std::fs::read_to_string(&lbd.log).unwrap_or_default();
    let start = log.len().saturating_sub(4000);
    let start = (start..log.len())
        .find(|&i| log.is_char_boundary(i))
        .unwrap_or(log.len());
    log[start..].to_owned()
}

fn status(lbd: &Lbd) -> Value {
    lbd.status()
        .unwrap_or_else(|| panic!("lbctl status failed; lbd log:\n{}", log_tail(lbd)))
}

/// Every real server of every service.
fn all_reals(status: &Value) -> Vec<&Value> {
    status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["real_servers"].as_array().into_iter().flatten())
        .collect()
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

fn health_of<'a>(status: &'a Value, service: &str, server: &str) -> &'a str {
    real_of(status, service, server)["health"]
        .as_str()
        .unwrap_or("?")
}

fn active_clients(status: &Value, service: &str, server: &str) -> u64 {
    real_of(status, service, server)["active_clients"]
        .as_u64()
        .unwrap_or_else(|| panic!("no active_clients for {server} in {status}"))
}

/// Polls `lbctl status` until `done` holds; returns that status and how long
/// it took. Panics after `limit` with the last status and lbd's log.
fn wait_status(
    lbd: &Lbd,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let started = Instant::now();
    let found = try_wait_until(what, limit, || {
        let s = lbd
            .status()
            .ok_or_else(|| "`lbctl status` does not answer".to_owned())?;
        if done(&s) {
            Ok(s)
        } else {
            Err(format!("status {s}"))
        }
    });
    match found {
        Ok(s) => (s, started.elapsed()),
        Err(e) => panic!("{e}\nlbd log:\n{}", log_tail(lbd)),
    }
}

fn clients(lab: &DrLab, sources: &[Ipv4Addr], rounds: usize) -> ClientReport {
    lab.run_clients_with(sources, rounds, CLIENT_RUN, CONN_TIMEOUT)
        .unwrap_or_else(|e| panic!("client run: {e}"))
}

/// Runs `rounds` rounds from `sources`, asserts every request was answered
/// and every source stayed on one server, and returns that server by source.
fn sticky_clients(
    lab: &DrLab,
    lbd: &Lbd,
    sources: &[Ipv4Addr],
    rounds: usize,
) -> BTreeMap<Ipv4Addr, String> {
    let report = clients(lab, sources, rounds);
    assert!(
        report.failures().is_empty() && report.sticky_sources().len() == sources.len(),
        "every request answered, always by the same server: {}\nlbd log:\n{}",
        report.summary(),
        log_tail(lbd)
    );
    report.first_servers()
}

/// How many of `sources` the Maglev hash gives `server` now (`lbctl
/// affinity`; for sources without an affinity entry). Tests use it to show
/// that a set of new sources would reach a server unless it is excluded.
fn hashed_to(lbd: &Lbd, sources: &[Ipv4Addr], server: &str) -> usize {
    sources
        .iter()
        .filter(|&&source| {
            let answer = affinity(lbd, "web", source);
            assert_eq!(answer["source"], "hash", "{source} is new: {answer}");
            answer["server"] == server
        })
        .count()
}

fn sources_of<'a>(
    map: &'a BTreeMap<Ipv4Addr, String>,
    server: &'a str,
) -> impl Iterator<Item = Ipv4Addr> + 'a {
    map.iter()
        .filter(move |(_, s)| *s == server)
        .map(|(a, _)| *a)
}

/// Stopping a server's HTTP listener takes it down within `fall` checks; its
/// clients move on their next request and nobody else moves; when it comes
/// back after `rise` checks it takes new clients only.
#[test]
fn a_failed_server_goes_down_in_time_and_returns_for_new_clients_only() {
    let mut lab = lab(3, 256);
    let services = web(&lab, 3, 300, &check("http", ", path: /"));
    let lbd = start(&mut lab, &services);
    let sources = lab.client_sources().to_vec();
    let (first, held_back) = sources.split_at(192);
    let before = sticky_clients(&lab, &lbd, first, 2);
    let victims: Vec<Ipv4Addr> = sources_of(&before, "rs2").collect();
    assert!(victims.len() >= 20, "rs2 has clients to lose: {before:?}");

    lab.stop_http(1);
    let (down, took) = wait_status(&lbd, patience(down_bound()), "rs2 down", |s| {
        health_of(s, "web", "rs2") == "down"
    });
    assert!(
        took <= down_bound(),
        "rs2 went down after {took:?}, more than {:?}",
        down_bound()
    );
    let rs2 = real_of(&down, "web", "rs2");
    assert_eq!(rs2["last_check"]["passed"], false, "{rs2}");
    assert!(
        rs2["last_check"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("refused")),
        "the failure says why: {rs2}"
    );
    for other in ["rs1", "rs3"] {
        assert_eq!(health_of(&down, "web", other), "up", "{down}");
    }

    let after = sticky_clients(&lab, &lbd, first, 2);
    for (source, server) in &before {
        let now = &after[source];
        if server == "rs2" {
            assert_ne!(now, "rs2", "{source} still reaches the failed rs2");
        } else {
            assert_eq!(now, server, "{source} moved although {server} stayed up");
        }
    }
    let moved = affinity(&lbd, "web", victims[0]);
    assert_eq!(moved["source"], "table", "{moved}");
    assert_eq!(
        moved["server"].as_str(),
        Some(after[&victims[0]].as_str()),
        "{moved}"
    );

    eprintln!("rs2 down {took:?} after its listener stopped");

    lab.start_http(1)
        .unwrap_or_else(|e| panic!("restarting rs2: {e}"));
    // One passing check is not enough: rs2 stays down until `rise` passes.
    let seen_pass_while_down = std::cell::Cell::new(false);
    let (_, took) = wait_status(&lbd, patience(up_bound()), "rs2 up again", |s| {
        let rs2 = real_of(s, "web", "rs2");
        if rs2["health"] == "down" && rs2["last_check"]["passed"] == true {
            seen_pass_while_down.set(true);
        }
        rs2["health"] == "up"
    });
    eprintln!("rs2 up {took:?} after its listener started");
    assert!(
        took <= up_bound(),
        "rs2 came back after {took:?}, more than {:?}",
        up_bound()
    );
    assert!(
        seen_pass_while_down.get(),
        "rs2 showed down with a passing last check (rise {RISE}) before coming up"
    );

    let again = sticky_clients(&lab, &lbd, first, 1);
    assert_eq!(again, after, "clients that moved stay where they are");
    let newcomers = sticky_clients(&lab, &lbd, held_back, 1);
    let on_rs2 = sources_of(&newcomers, "rs2").count();
    assert!(
        on_rs2 > 0,
        "new clients land on the returned rs2: {newcomers:?}"
    );
}

/// A drained server keeps the clients that keep sending, gets no new ones,
/// loses its clients once their persistence expires, and comes back to the
/// ring with `lbctl online`.
#[test]
fn a_drained_server_keeps_its_clients_until_they_expire() {
    // The shortest timeout the configuration accepts.
    const TIMEOUT_S: u64 = lb_common::MIN_AFFINITY_TIMEOUT_S as u64;
    let mut lab = lab(3, 256);
    let services = web(
        &lab,
        3,
        lb_common::MIN_AFFINITY_TIMEOUT_S,
        &check("tcp", ""),
    );
    let lbd = start(&mut lab, &services);
    let sources = lab.client_sources().to_vec();
    let (first, held_back) = sources.split_at(192);
    let would = hashed_to(&lbd, held_back, "rs2");
    assert!(
        would > 0,
        "some new sources would reach rs2 if it were online"
    );
    // From here on, every step must come within the persistence timeout.
    let before = sticky_clients(&lab, &lbd, first, 1);
    let drained: Vec<Ipv4Addr> = sources_of(&before, "rs2").collect();
    assert!(!drained.is_empty(), "rs2 has clients: {before:?}");

    let out = lbctl_ok(&lbd, &["drain", "web", "rs2"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("drain"));
    let s = status(&lbd);
    assert_eq!(real_of(&s, "web", "rs2")["admin_state"], "drain", "{s}");
    assert_eq!(health_of(&s, "web", "rs2"), "up", "{s}");

    let newcomers = sticky_clients(&lab, &lbd, held_back, 1);
    assert_eq!(
        sources_of(&newcomers, "rs2").count(),
        0,
        "new clients never get the drained rs2: {newcomers:?}"
    );

    // Keep sending, with pauses, for longer than the persistence timeout.
    let keep_going = Instant::now();
    loop {
        let now = sticky_clients(&lab, &lbd, first, 1);
        assert_eq!(
            now, before,
            "every client keeps its server while it keeps sending"
        );
        if keep_going.elapsed() >= Duration::from_secs(TIMEOUT_S + 2) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let stopped = Instant::now();
    let s = status(&lbd);
    assert!(
        active_clients(&s, "web", "rs2") > 0,
        "rs2 still has active clients: {s}"
    );

    // Expired at the timeout plus the data path's lag (never before the
    // timeout), and counted out within the census's lag.
    let (_, took) = wait_status(
        &lbd,
        Duration::from_secs(TIMEOUT_S)
            + Duration::from_nanos(lb_common::AFFINITY_LAG_NS)
            + counter_lag(),
        "rs2's active clients expire",
        |s| active_clients(s, "web", "rs2") == 0,
    );
    let after = stopped.elapsed();
    eprintln!("rs2's active clients reached 0 {after:?} after the traffic stopped");
    assert!(
        after >= Duration::from_secs(TIMEOUT_S - 1),
        "rs2's clients expired after {after:?} ({took:?} of polling), before the {TIMEOUT_S} s timeout"
    );

    lbctl_ok(&lbd, &["online", "web", "rs2"]);
    let s = status(&lbd);
    assert_eq!(real_of(&s, "web", "rs2")["admin_state"], "online", "{s}");
    let asked = affinity(&lbd, "web", drained[0]);
    assert_eq!(
        asked["server"], "rs2",
        "the hash gives rs2 its clients again: {asked}"
    );
    assert_eq!(asked["source"], "hash", "{asked}");
    let back = sticky_clients(&lab, &lbd, &drained, 1);
    assert!(
        back.values().all(|s| s == "rs2"),
        "rs2's expired clients return to it once online: {back:?}"
    );
}

/// A halted server loses its clients on their next request and sees no
/// traffic at all.
#[test]
fn a_halted_server_loses_its_clients_at_once() {
    let mut lab = lab(3, 128);
    let services = web(&lab, 3, 300, &check("tcp", ""));
    let lbd = start(&mut lab, &services);
    let sources = lab.client_sources().to_vec();
    let (first, held_back) = sources.split_at(96);
    let before = sticky_clients(&lab, &lbd, first, 1);
    assert!(
        sources_of(&before, "rs3").count() > 0,
        "rs3 has clients: {before:?}"
    );

    let would = hashed_to(&lbd, held_back, "rs3");
    assert!(
        would > 0,
        "some new sources would reach rs3 if it were online"
    );
    lbctl_ok(&lbd, &["halt", "web", "rs3"]);
    let halted = status(&lbd);
    assert_eq!(
        real_of(&halted, "web", "rs3")["admin_state"],
        "halt",
        "{halted}"
    );
    // Its entries no longer count once lbd has counted again.
    let (s, _) = wait_status(&lbd, counter_lag(), "rs3's clients no longer active", |s| {
        active_clients(s, "web", "rs3") == 0
    });
    let packets = real_of(&s, "web", "rs3")["packets"].as_u64();

    let after = sticky_clients(&lab, &lbd, first, 2);
    for (source, server) in &before {
        let now = &after[source];
        if server == "rs3" {
            assert_ne!(now, "rs3", "{source} still reaches the halted rs3");
        } else {
            assert_eq!(now, server, "{source} moved although {server} is online");
        }
    }
    let newcomers = sticky_clients(&lab, &lbd, held_back, 1);
    assert_eq!(sources_of(&newcomers, "rs3").count(), 0, "{newcomers:?}");
    let (s, _) = wait_status(&lbd, counter_lag(), "rs3 without active clients", |s| {
        active_clients(s, "web", "rs3") == 0
    });
    assert_eq!(
        real_of(&s, "web", "rs3")["packets"].as_u64(),
        packets,
        "nothing reaches rs3: {s}"
    );
}

/// With every real server down the fallback gets the traffic; as soon as
/// one server is back, everything goes to it (the fallback is never
/// remembered).
#[test]
fn the_fallback_serves_while_every_server_is_down() {
    let mut lab = lab(4, 64);
    let reals: String = (0..3).map(|i| real_line(&lab, i, "")).collect();
    let fallback = format!("    fallback: {{ address: {} }}\n", lab.real_address(3));
    let services = service(
        "web",
        lab.vip(),
        lab.http_port(),
        300,
        &check("http", ""),
        &fallback,
        &reals,
    );
    let lbd = start(&mut lab, &services);
    let sources = lab.client_sources().to_vec();
    let s = status(&lbd);
    assert_eq!(
        service_of(&s, "web")["fallback"]["address"],
        lab.real_address(3).to_string(),
        "{s}"
    );
    let normal = sticky_clients(&lab, &lbd, &sources, 1);
    assert!(
        !normal.values().any(|s| s == "rs4"),
        "the fallback is idle while servers are up: {normal:?}"
    );

    for i in 0..3 {
        lab.stop_http(i);
    }
    wait_status(&lbd, patience(down_bound()), "every server down", |s| {
        ["rs1", "rs2", "rs3"]
            .iter()
            .all(|r| health_of(s, "web", r) == "down")
    });
    let fallen = sticky_clients(&lab, &lbd, &sources, 2);
    assert!(
        fallen.values().all(|s| s == "rs4"),
        "everybody reaches the fallback: {fallen:?}"
    );
    let (s, _) = wait_status(&lbd, counter_lag(), "fallback packets counted", |s| {
        service_of(s, "web")["fallback"]["packets"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    assert!(
        service_of(&s, "web")["fallback"]["bytes"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{s}"
    );

    lab.start_http(1)
        .unwrap_or_else(|e| panic!("restarting rs2: {e}"));
    wait_status(&lbd, patience(up_bound()), "rs2 up again", |s| {
        health_of(s, "web", "rs2") == "up"
    });
    let back = sticky_clients(&lab, &lbd, &sources, 2);
    assert!(
        back.values().all(|s| s == "rs2"),
        "everybody leaves the fallback for rs2: {back:?}"
    );
}

/// An https check passes against the lab's self-signed certificate without
/// verification, and fails with a TLS reason with it.
#[test]
fn https_checks_pass_unverified_and_fail_verified_on_a_self_signed_certificate() {
    let mut lab = lab_with(DrLabOptions {
        client_sources: 16,
        tls_port: Some(443),
        ..DrLabOptions::default()
    });
    let reals: String = (0..3).map(|i| real_line(&lab, i, "")).collect();
    let lenient = check(
        "https",
        ", port: 443, host: lab.example.org, tls_verify: false",
    );
    let strict = check("https", ", host: lab.example.org, tls_verify: true");
    let services = service("web", lab.vip(), lab.http_port(), 300, &lenient, "", &reals)
        + &service("strict", lab.vip(), 443, 300, &strict, "", &reals);
    let lbd = start(&mut lab, &services);
    let (s, _) = wait_status(
        &lbd,
        patience(down_bound()),
        "the verified checks fail",
        |s| {
            ["rs1", "rs2", "rs3"]
                .iter()
                .all(|r| health_of(s, "strict", r) == "down")
        },
    );
    for r in ["rs1", "rs2", "rs3"] {
        let lenient = real_of(&s, "web", r);
        assert_eq!(lenient["health"], "up", "{lenient}");
        assert_eq!(lenient["last_check"]["passed"], true, "{lenient}");
        let strict = real_of(&s, "strict", r);
        assert_eq!(strict["last_check"]["passed"], false, "{strict}");
        let detail = strict["last_check"]["detail"].as_str().unwrap_or("");
        assert!(detail.contains("TLS"), "the failure names TLS: {strict}");
    }
    let served = sticky_clients(&lab, &lbd, lab.client_sources(), 1);
    assert_eq!(served.len(), 16, "{served:?}");
}

/// `expect_body` must match for an http check to pass.
#[test]
fn an_http_check_needs_its_expected_body() {
    let mut lab = lab(3, 16);
    let reals: String = (0..3).map(|i| real_line(&lab, i, "")).collect();
    let matching = check(
        "http",
        ", expect_status: \"200\", expect_body: \"^rs[0-9]+\\n$\"",
    );
    let failing = check("http", ", port: 80, expect_body: \"^maintenance\"");
    let services = service(
        "web",
        lab.vip(),
        lab.http_port(),
        300,
        &matching,
        "",
        &reals,
    ) + &service("picky", lab.vip(), 8080, 300, &failing, "", &reals);
    let lbd = start(&mut lab, &services);
    let (s, _) = wait_status(&lbd, patience(down_bound()), "the picky checks fail", |s| {
        ["rs1", "rs2", "rs3"]
            .iter()
            .all(|r| health_of(s, "picky", r) == "down")
    });
    for r in ["rs1", "rs2", "rs3"] {
        let good = real_of(&s, "web", r);
        assert_eq!(good["health"], "up", "{good}");
        assert_eq!(good["last_check"]["passed"], true, "{good}");
        let bad = real_of(&s, "picky", r);
        let detail = bad["last_check"]["detail"].as_str().unwrap_or("");
        assert!(
            detail.contains("body") && detail.contains("maintenance"),
            "the failure says why: {bad}"
        );
    }
}

/// An exec check sees `LB_SERVER_NAME`: a marker file for one server takes
/// only that server down, removing it brings the server back.
#[test]
fn an_exec_check_follows_its_program() {
    let mut lab = lab(3, 16);
    let dir = lab.dir().display().to_string();
    let exec = format!(
        "{{ type: exec, command: [\"/bin/sh\", \"-c\", \"test ! -e {dir}/down-$LB_SERVER_NAME\"], \
         interval_ms: {INTERVAL_MS}, timeout_ms: {INTERVAL_MS}, rise: {RISE}, fall: {FALL} }}"
    );
    let services = web(&lab, 3, 300, &exec);
    let lbd = start(&mut lab, &services);
    let s = status(&lbd);
    assert!(all_reals(&s).iter().all(|r| r["health"] == "up"), "{s}");

    let marker = lab.dir().join("down-rs2");
    std::fs::write(&marker, b"").unwrap_or_else(|e| panic!("{e}"));
    let (s, took) = wait_status(&lbd, patience(down_bound()), "rs2 down", |s| {
        health_of(s, "web", "rs2") == "down"
    });
    assert!(
        took <= down_bound(),
        "rs2 went down after {took:?}, more than {:?}",
        down_bound()
    );
    assert_eq!(
        real_of(&s, "web", "rs2")["last_check"]["passed"],
        false,
        "{s}"
    );
    assert_eq!(health_of(&s, "web", "rs1"), "up", "{s}");
    assert_eq!(health_of(&s, "web", "rs3"), "up", "{s}");
    let served = sticky_clients(&lab, &lbd, lab.client_sources(), 1);
    assert!(!served.values().any(|s| s == "rs2"), "{served:?}");

    std::fs::remove_file(&marker).unwrap_or_else(|e| panic!("{e}"));
    let (_, took) = wait_status(&lbd, patience(up_bound()), "rs2 up", |s| {
        health_of(s, "web", "rs2") == "up"
    });
    assert!(
        took <= up_bound(),
        "rs2 came back after {took:?}, more than {:?}",
        up_bound()
    );
}

/// States and weights set with lbctl survive a restart and win over
/// `state:` in the file.
#[test]
fn admin_states_survive_a_restart() {
    let mut lab = lab(3, 64);
    let reals = real_line(&lab, 0, ", state: online")
        + &real_line(&lab, 1, "")
        + &real_line(&lab, 2, ", state: halt");
    let services = service(
        "web",
        lab.vip(),
        lab.http_port(),
        300,
        &check("tcp", ""),
        "",
        &reals,
    );
    let mut lbd = start(&mut lab, &services);
    let s = status(&lbd);
    assert_eq!(
        real_of(&s, "web", "rs3")["admin_state"],
        "halt",
        "the file's state applies: {s}"
    );

    let would = hashed_to(&lbd, lab.client_sources(), "rs1");
    assert!(would > 0, "some sources would reach rs1 if it were online");
    lbctl_ok(&lbd, &["drain", "web", "rs1"]);
    lbctl_ok(&lbd, &["online", "web", "rs3"]);
    lbctl_ok(&lbd, &["weight", "web", "rs2", "50"]);
    let admin = std::fs::read_to_string(lbd.state_dir.join("admin.json")).unwrap_or_default();
    assert!(
        admin.contains("rs1") && admin.contains("drain"),
        "admin.json: {admin:?}"
    );
    assert!(
        lbd.stop(&mut lab).unwrap_or_else(|e| panic!("{e}")),
        "lbd exits 0 on SIGTERM"
    );

    let lbd = start(&mut lab, &services);
    let s = status(&lbd);
    assert_eq!(real_of(&s, "web", "rs1")["admin_state"], "drain", "{s}");
    assert_eq!(
        real_of(&s, "web", "rs3")["admin_state"],
        "online",
        "lbctl wins over the file: {s}"
    );
    assert_eq!(real_of(&s, "web", "rs2")["weight"], 50, "{s}");
    let served = sticky_clients(&lab, &lbd, lab.client_sources(), 1);
    assert!(
        !served.values().any(|s| s == "rs1"),
        "the drained rs1 gets no new clients: {served:?}"
    );
    assert!(
        served.values().any(|s| s == "rs3"),
        "rs3 is online: {served:?}"
    );
}

/// One sample of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the label set after `{` up to and including `}`; returns the
/// labels and the text after `}`.
fn parse_labels(inner: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut chars = inner.char_indices();
    while let Some((at, c)) = chars.next() {
        if c == '}' {
            return Ok((labels, &inner[at + 1..]));
        }
        let mut key = String::from(c);
        loop {
            match chars.next() {
                Some((_, '=')) => break,
                Some((_, c)) => key.push(c),
                None => return Err(format!("label {key:?} has no value")),
            }
        }
        if !key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!("bad label name {key:?}"));
        }
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {key} has no quoted value"));
        }
        let mut value = String::new();
        loop {
            match chars.next().map(|(_, c)| c) {
                Some('"') => break,
                Some('\\') => match chars.next().map(|(_, c)| c) {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some(c) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        }
        labels.insert(key, value);
        match chars.clone().next() {
            Some((_, ',')) => {
                chars.next();
            }
            Some((_, '}')) => {}
            other => return Err(format!("expected , or }} after a label, got {other:?}")),
        }
    }
    Err("unterminated label set".into())
}

/// Parses `name{label="value",...} value [timestamp]` (labels optional).
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("no metric name".into());
    }
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(inner) => parse_labels(inner)?,
        None => (BTreeMap::new(), &line[name_end..]),
    };
    if !rest.starts_with(' ') {
        return Err("no space before the value".into());
    }
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .ok_or("no value")?
        .parse::<f64>()
        .map_err(|e| format!("bad value: {e}"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|e| format!("bad timestamp: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing text".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `GET /metrics` from inside the load balancer's namespace, parsed; every
/// line must be a comment or a well-formed sample.
fn scrape(lab: &DrLab) -> Vec<Sample> {
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
    .unwrap_or_else(|e| panic!("scraping /metrics: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| parse_sample(l).unwrap_or_else(|e| panic!("bad metrics line {l:?}: {e}")))
        .collect()
}

/// The value of the sample `name` with exactly `labels`.
fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// Polls `/metrics` until `done` holds; panics after `limit` with the last
/// samples.
fn wait_metrics(
    lab: &DrLab,
    limit: Duration,
    what: &str,
    done: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    wait_until(what, limit, || {
        let samples = scrape(lab);
        if done(&samples) {
            Ok(samples)
        } else {
            Err(format!("{samples:?}"))
        }
    })
}

/// The contract's metrics for service `web` with rs1..rs3, all up, on a
/// single node.
fn assert_contract_metrics(samples: &[Sample]) {
    let web = [("service", "web")];
    for r in ["rs1", "rs2", "rs3"] {
        let labels = [("server", r), ("service", "web")];
        for name in [
            "lb_real_server_packets_total",
            "lb_real_server_up",
            "lb_real_server_active_clients",
        ] {
            assert!(
                metric(samples, name, &labels).is_some(),
                "no {name} for {r}: {samples:?}"
            );
        }
        assert_eq!(
            metric(samples, "lb_real_server_up", &labels),
            Some(1.0),
            "{r}"
        );
        assert!(
            metric(samples, "lb_health_check_duration_seconds_count", &labels).unwrap_or(0.0)
                >= 1.0,
            "health-check durations of {r}: {samples:?}"
        );
    }
    assert!(
        metric(samples, "lb_service_bytes_total", &web).is_some(),
        "{samples:?}"
    );
    assert!(
        metric(samples, "lb_affinity_entries", &[]).is_some(),
        "{samples:?}"
    );
    assert!(
        samples
            .iter()
            .any(|s| s.name == "lb_health_check_duration_seconds_bucket"),
        "a histogram: {samples:?}"
    );
    assert_eq!(
        metric(samples, "lb_ha_master", &[]),
        Some(1.0),
        "a single node is master"
    );
    assert_eq!(metric(samples, "lb_sync_connected", &[]), Some(0.0));
}

/// The Prometheus endpoint is well formed, carries the contract's metrics,
/// and follows traffic and health.
#[test]
fn metrics_are_well_formed_and_follow_traffic_and_health() {
    let mut lab = lab(3, 64);
    let services = web(&lab, 3, 300, &check("http", ""));
    let lbd = start(&mut lab, &services);
    let samples = scrape(&lab);
    assert_contract_metrics(&samples);
    let web = [("service", "web")];
    let packets = metric(&samples, "lb_service_packets_total", &web)
        .unwrap_or_else(|| panic!("no lb_service_packets_total: {samples:?}"));

    let served = sticky_clients(&lab, &lbd, lab.client_sources(), 1);
    // Each request is at least SYN, request and FIN from the client.
    let grown = packets + 3.0 * 64.0;
    let samples = wait_metrics(&lab, counter_lag(), "service packets grow", |s| {
        metric(s, "lb_service_packets_total", &web).unwrap_or(0.0) >= grown
    });
    let per_server: f64 = ["rs1", "rs2", "rs3"]
        .iter()
        .filter_map(|r| {
            metric(
                &samples,
                "lb_real_server_packets_total",
                &[("server", r), ("service", "web")],
            )
        })
        .sum();
    assert!(per_server >= 3.0 * 64.0, "real-server packets: {samples:?}");
    let _ = wait_metrics(&lab, counter_lag(), "active clients counted", |s| {
        let active: f64 = ["rs1", "rs2", "rs3"]
            .iter()
            .filter_map(|r| {
                metric(
                    s,
                    "lb_real_server_active_clients",
                    &[("server", r), ("service", "web")],
                )
            })
            .sum();
        (active - 64.0).abs() < 0.5 && metric(s, "lb_affinity_entries", &[]).unwrap_or(0.0) >= 64.0
    });
    assert_eq!(served.len(), 64);

    lab.stop_http(1);
    let samples = wait_metrics(&lab, patience(down_bound()), "rs2 down in metrics", |s| {
        metric(
            s,
            "lb_real_server_up",
            &[("server", "rs2"), ("service", "web")],
        ) == Some(0.0)
    });
    assert_eq!(
        metric(
            &samples,
            "lb_real_server_up",
            &[("server", "rs1"), ("service", "web")]
        ),
        Some(1.0)
    );
}

/// The exposition-format parser the metrics test relies on rejects what it
/// should.
#[test]
fn metrics_lines_are_parsed_strictly() {
    let ok = parse_sample(r#"lb_x_total{a="1",b="q\"\\"} 3"#).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((ok.name.as_str(), ok.value), ("lb_x_total", 3.0));
    assert_eq!(ok.labels.get("b").map(String::as_str), Some("q\"\\"));
    assert!(parse_sample("lb_up 1 1700000000000").is_ok());
    assert!(parse_sample("lb_bucket{le=\"+Inf\"} +Inf").is_ok());
    assert!(parse_sample("lb_x{} 1").is_ok());
    assert!(parse_sample("lb_x{a=\"1\",} 1").is_ok());
    for bad in [
        "lb_x{a=1} 3",
        "lb_x{a=\"1\" 3",
        "lb_x",
        "lb_x three",
        "{a=\"1\"} 3",
        "lb_x 1 2 3",
        "lb_x{a=\"1\"b=\"2\"} 3",
        "lb_x{a=\"1\"}3",
        "lb_x{1a=\"1\"} 3",
    ] {
        assert!(parse_sample(bad).is_err(), "{bad:?} must not parse");
    }
}

/// `lbctl`'s exit codes and one-line errors, and weight 0.
#[test]
fn lbctl_errors_and_weight_zero() {
    let mut lab = lab(3, 128);
    let services = web(&lab, 3, 300, &check("tcp", ""));
    let lbd = start(&mut lab, &services);

    for args in [
        ["drain", "nope", "rs1"].as_slice(),
        &["halt", "web", "nope"],
        &["online", "web", "rs9"],
        &["weight", "nope", "rs1", "5"],
        &["weight", "web", "nope", "5"],
        &["affinity", "nope", "198.18.1.1"],
    ] {
        let out = lbd.lbctl(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "lbctl {args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "lbctl {args:?}: one line on stderr: {stderr:?}"
        );
        assert!(out.stdout.is_empty(), "lbctl {args:?}: nothing on stdout");
    }
    let out = lbd.lbctl(&["weight", "web", "rs1", "abc"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        real_of(&status(&lbd), "web", "rs1")["weight"],
        100,
        "nothing changed"
    );

    let stale = lab.dir().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap_or_else(|e| panic!("{e}")));
    for socket in [stale, lab.dir().join("missing.sock")] {
        let out = std::process::Command::new(lb_tests::paths::lbctl())
            .arg("--socket")
            .arg(&socket)
            .arg("status")
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", socket.display());
        assert!(stderr.contains("is lbd running"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    }

    let sources = lab.client_sources().to_vec();
    let (first, held_back) = sources.split_at(64);
    let before = sticky_clients(&lab, &lbd, first, 1);
    assert!(sources_of(&before, "rs1").count() > 0, "{before:?}");
    let would = hashed_to(&lbd, held_back, "rs1");
    assert!(would > 0, "some new sources would reach rs1 at weight 100");
    lbctl_ok(&lbd, &["weight", "web", "rs1", "0"]);
    assert_eq!(real_of(&status(&lbd), "web", "rs1")["weight"], 0);
    let after = sticky_clients(&lab, &lbd, first, 1);
    assert_eq!(
        after, before,
        "existing clients keep their server, rs1 included"
    );
    let newcomers = sticky_clients(&lab, &lbd, held_back, 1);
    assert_eq!(
        sources_of(&newcomers, "rs1").count(),
        0,
        "weight 0 gets no new clients: {newcomers:?}"
    );
}
