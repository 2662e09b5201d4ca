//! Issue 13: the data path outlives lbd. A `kill -9` of lbd leaves the XDP
//! program attached to the interface with its maps, so forwarding goes on
//! with its last state; the next lbd takes the running data path over
//! (maps, ids, rings, counters) and moves no client, not even the clients
//! of a drained server, which are not their ring choice.
//!
//! Needs root. Every lab has its own names and is torn down when dropped.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_tests::{
    lab::{ClientReport, DrLab, DrLabOptions},
    lbd::{lab_config, lbctl_ok, web_service, Lbd},
    paths,
};

const READY: Duration = Duration::from_secs(20);
/// Client sources under load.
const SOURCES: usize = 64;
/// Kill-and-restart rounds.
const ROUNDS: usize = 10;
/// How long the load runs from just before the kill (the kill, 5 s of a
/// dead lbd, the restart, and traffic after it).
const LOAD_WINDOW: Duration = Duration::from_secs(10);
/// Without lbd for this long after the kill: not one request may fail.
const DEAD_FOR: Duration = Duration::from_secs(5);
/// What lbd logs when it takes over a running data path
/// (`lb-userspace/src/daemon/mod.rs`, `log_takeover`).
const TAKEOVER_LOGGED: &str = "taking over the data path an earlier lbd left running";

fn lab() -> DrLab {
    paths::require_root("namespace tests");
    paths::require_lbd();
    DrLab::start(DrLabOptions::default()).unwrap_or_else(|e| panic!("lab: {e}"))
}

/// The server of each source, asserting that every request was answered
/// and each source stayed on one server (a load cut short by its deadline
/// has fewer answers for some sources: they count as they are; requests
/// of the round its deadline cut, started with too little time left, are
/// not failures of the load balancer).
fn servers(report: &ClientReport, what: &str) -> BTreeMap<Ipv4Addr, String> {
    let whole = report.rounds_completed() - usize::from(report.deadline_hit());
    let failed: Vec<_> = report
        .failures()
        .iter()
        .filter(|f| f.round < whole)
        .collect();
    assert!(
        failed.is_empty(),
        "{what}: failed requests: {failed:?}; {}",
        report.summary()
    );
    let mut servers = BTreeMap::new();
    for source in report.sources() {
        let answers = report.servers_of(source);
        let answers = &answers[..answers.len().min(whole)];
        let first = answers.first().cloned().flatten();
        assert!(
            first.is_some() && answers.iter().all(|a| *a == answers[0]),
            "{what}: {source} moved: {answers:?}"
        );
        servers.insert(source, first.unwrap_or_default());
    }
    servers
}

/// The packets the service `web` has forwarded, by `lbctl status`.
fn packets(lbd: &Lbd) -> u64 {
    lbd.status()
        .and_then(|s| s["services"][0]["packets"].as_u64())
        .unwrap_or(0)
}

#[test]
fn kill_9_under_load_fails_no_request_and_the_next_lbd_moves_no_client() {
    let mut lab = lab();
    let config = lab_config(&lab, &web_service(&lab, 3, 600));
    let mut lbd = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    let sources: Vec<Ipv4Addr> = lab.client_sources()[..SOURCES].to_vec();
    let first = lab
        .run_clients_with(&sources, 2, Duration::from_secs(30), Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{e}"));
    let before = servers(&first, "before");

    // Drain the server with the most of them: its clients stay on it, and
    // none of them is its ring choice any more.
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    for server in before.values() {
        *held.entry(server.as_str()).or_default() += 1;
    }
    let (drained, count) = held
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(s, n)| ((*s).to_owned(), *n))
        .unwrap_or_default();
    assert!(count >= 10, "10 clients on one server to drain: {held:?}");
    lbctl_ok(&lbd, &["drain", "web", &drained]);
    let drained_ok = lab
        .run_clients_with(&sources, 1, Duration::from_secs(30), Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(servers(&drained_ok, "after the drain"), before);

    let started = Instant::now();
    for round in 1..=ROUNDS {
        let load = lab
            .spawn_clients(&sources, 100_000, LOAD_WINDOW, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_millis(300));
        let counted = packets(&lbd);
        lbd.crash(&mut lab).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            lbd.xdp_attached(&lab).unwrap_or(false),
            "round {round}: the XDP program went with lbd"
        );
        std::thread::sleep(DEAD_FOR);
        lbd = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("{e}"));
        lbd.wait_ready(&mut lab, READY)
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", lbd.log_text()));
        let report = load.wait().unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            report.rounds_completed() >= 10,
            "round {round}: the load ran through the kill and the restart: {}",
            report.summary()
        );
        assert_eq!(
            servers(&report, &format!("round {round}, kill -9 and restart")),
            before,
            "round {round}: clients moved"
        );
        assert!(
            lbd.log_text().contains(TAKEOVER_LOGGED),
            "round {round}: the new lbd took over the running data path: {}",
            lbd.log_text()
        );
        let after = packets(&lbd);
        assert!(
            after > counted,
            "round {round}: the counters go on ({counted} before the kill, {after} after)"
        );
        let status = lbd.status().unwrap_or_default();
        let server_health: Vec<(String, String)> = status["services"][0]["real_servers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or("?").to_owned(),
                    r["health"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect();
        assert!(
            server_health.iter().all(|(_, health)| health == "up"),
            "round {round}: every server up throughout: {server_health:?}"
        );
        eprintln!("round {round} done at {:?}", started.elapsed());
    }
    assert!(lbd.stop(&mut lab).unwrap_or_else(|e| panic!("{e}")));
    assert!(
        !lbd.xdp_attached(&lab).unwrap_or(true),
        "a clean stop detaches the data path"
    );
}

/// A crashed lbd's data path stays on its interface until an lbd takes it
/// over; if the configuration now names another interface, the next lbd
/// detaches it there (it would forward with a configuration nobody runs).
#[test]
fn a_data_path_left_on_an_interface_no_longer_configured_is_detached() {
    let mut lab = lab();
    let config = lab_config(&lab, &web_service(&lab, 3, 600));
    let mut lbd = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    lbd.crash(&mut lab).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        lbd.xdp_attached(&lab).unwrap_or(false),
        "the data path outlives the crash"
    );

    // The next configuration names another interface of the node.
    let other = "lbmoved0";
    lb_tests::lab::run_in(
        lab.lb_ns(),
        &[
            "ip", "link", "add", other, "type", "veth", "peer", "name", "lbmoved1",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    lb_tests::lab::run_in(lab.lb_ns(), &["ip", "link", "set", other, "up"])
        .unwrap_or_else(|e| panic!("{e}"));
    let moved = config
        .replace(
            &format!("interface: {}", lab.lb_interface()),
            &format!("interface: {other}"),
        )
        .replace("xdp_mode: native", "xdp_mode: generic");
    assert_ne!(moved, config);
    let mut again = Lbd::start(&mut lab, &moved).unwrap_or_else(|e| panic!("{e}"));
    again
        .wait_answering(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !lbd.xdp_attached(&lab).unwrap_or(true),
        "the data path on {} is detached: {}",
        lab.lb_interface(),
        again.log_text()
    );
    let shown = lb_tests::lab::run_in(lab.lb_ns(), &["ip", "-d", "link", "show", "dev", other])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(shown.contains("prog/xdp"), "lbd runs on {other}: {shown}");
    assert!(again.stop(&mut lab).unwrap_or_else(|e| panic!("{e}")));
}
