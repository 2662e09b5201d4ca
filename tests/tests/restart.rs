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

/// A redirect service beside the web service, hammered through the re-exec.
const REDIRECT_PORT: u16 = 8081;
/// How long each SIGUSR2 round's load runs.
const USR2_WINDOW: Duration = Duration::from_secs(6);
/// What lbd logs when it starts re-executed (`lb-userspace/src/bin/lbd.rs`).
const REEXEC_LOGGED: &str = "re-executed (SIGUSR2)";

/// Connects to `addr` over and over until `until`, asking for `/`; returns
/// (answered with a redirect, refused, other failures).
fn hammer(addr: std::net::SocketAddr, until: Instant) -> (u64, u64, Vec<String>) {
    use std::io::{Read as _, Write as _};
    let (mut answered, mut refused, mut other) = (0, 0, Vec::new());
    while Instant::now() < until {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(mut stream) => {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream
                    .write_all(b"GET /x HTTP/1.1\r\nHost: mychart\r\nConnection: close\r\n\r\n");
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                if answer.starts_with(b"HTTP/1.1 301") {
                    answered += 1;
                } else {
                    other.push(format!("answer {:?}", String::from_utf8_lossy(&answer)));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            Err(e) => other.push(e.to_string()),
        }
    }
    (answered, refused, other)
}

/// Opens TCP connections to `addr` over and over until `until` (and closes
/// them at once), 20 a second: few enough that the listening queue holds
/// them all while no lbd accepts, during the re-execution on a loaded
/// machine; returns (connected, refused, other failures).
fn hammer_connect(addr: std::net::SocketAddr, until: Instant) -> (u64, u64, Vec<String>) {
    let (mut connected, mut refused, mut other) = (0, 0, Vec::new());
    while Instant::now() < until {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(_) => connected += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            Err(e) => other.push(e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (connected, refused, other)
}

/// Places the file at `from` at `to` as a package upgrade does: a new
/// file renamed over the old one (the running process keeps the old one).
fn replace_binary(from: &std::path::Path, to: &std::path::Path) {
    let staged = to.with_extension("dpkg-new");
    std::fs::copy(from, &staged).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
    std::fs::rename(&staged, to).unwrap_or_else(|e| panic!("renaming over {}: {e}", to.display()));
}

/// A lab whose lbd (a web service, a redirect service and the web console)
/// runs from a copy of the binary under the lab's directory, which the test
/// replaces.
fn lbd_from_a_copy() -> (DrLab, std::path::PathBuf, Lbd) {
    let mut lab = lab();
    let services = format!(
        "{}  - name: mychart-redirect\n    vip: {}\n    port: {REDIRECT_PORT}\n    redirect: {{ code: 301, scheme: https }}\n",
        web_service(&lab, 3, 600),
        lab.vip()
    );
    let config = lb_tests::console::with_console(&lab, &lab_config(&lab, &services), 900);
    let binary = lab.dir().join("sbin").join("lbd");
    std::fs::create_dir_all(lab.dir().join("sbin")).unwrap_or_else(|e| panic!("{e}"));
    replace_binary(&paths::lbd(), &binary);
    let lbd = Lbd::start_binary(&mut lab, &config, &binary).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    (lab, binary, lbd)
}

#[test]
fn sigusr2_under_load_keeps_the_pid_every_request_and_every_client() {
    let (mut lab, binary, mut lbd) = lbd_from_a_copy();
    let pid = lbd.pid(&lab).unwrap_or_else(|| panic!("lbd runs"));
    let sources: Vec<Ipv4Addr> = lab.client_sources()[..SOURCES].to_vec();
    let first = lab
        .run_clients_with(&sources, 2, Duration::from_secs(30), Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{e}"));
    let before = servers(&first, "before");
    let drained = before.values().next().cloned().unwrap_or_default();
    lbctl_ok(&lbd, &["drain", "web", &drained]);

    let redirect = std::net::SocketAddr::from((lab.vip(), REDIRECT_PORT));
    let console = std::net::SocketAddr::from((lab.lb_address(), lb_tests::console::PORT));
    // Someone is signed in to the console throughout.
    lb_tests::console::add_user(&lbd, "alice", "admin", "admin-password-1")
        .unwrap_or_else(|e| panic!("{e}"));
    let session = lb_tests::console::sign_in(&lab, "alice", "admin-password-1")
        .session_cookie()
        .unwrap_or_else(|| panic!("cannot sign in:\n{}", lbd.log_text()));
    let client_ns = lab.client_ns().to_owned();
    for round in 1..=ROUNDS {
        let load = lab
            .spawn_clients(&sources, 100_000, USR2_WINDOW, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{e}"));
        let until = Instant::now() + USR2_WINDOW;
        let ns = client_ns.clone();
        let hammering = std::thread::spawn(move || {
            lb_tests::lab::in_netns(&ns, move || hammer(redirect, until))
        });
        let ns = client_ns.clone();
        let knocking = std::thread::spawn(move || {
            lb_tests::lab::in_netns(&ns, move || hammer_connect(console, until))
        });
        std::thread::sleep(Duration::from_millis(500));
        replace_binary(&paths::lbd(), &binary);
        lbd.signal(&lab, libc::SIGUSR2)
            .unwrap_or_else(|e| panic!("{e}"));
        let () = lb_tests::wait::wait_until("lbd re-executed", READY, || {
            let log = lbd.log_text();
            if log.matches(REEXEC_LOGGED).count() >= round && lbd.status().is_some() {
                Ok(())
            } else {
                Err(format!(
                    "re-executions so far: {}",
                    log.matches(REEXEC_LOGGED).count()
                ))
            }
        });
        assert_eq!(lbd.pid(&lab), Some(pid), "round {round}: the same process");
        let report = load.wait().unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(
            servers(&report, &format!("round {round}, SIGUSR2")),
            before,
            "round {round}: clients moved"
        );
        let (answered, refused, other) = hammering
            .join()
            .unwrap_or_else(|_| panic!("the hammer panicked"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (refused, other.len()),
            (0, 0),
            "round {round}: redirect connections refused or failed ({answered} answered): {other:?}"
        );
        assert!(answered > 0, "round {round}: the redirect service answered");
        let (connected, refused, other) = knocking
            .join()
            .unwrap_or_else(|_| panic!("the console knocker panicked"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (refused, other.len()),
            (0, 0),
            "round {round}: web console connections refused or failed ({connected} made): {other:?}"
        );
        assert!(
            connected > 0,
            "round {round}: the console accepted connections"
        );
        let still =
            lb_tests::console::request(&lab, "GET", "/api/overview", Some(&session), &[], None);
        assert_eq!(
            still.status,
            200,
            "round {round}: the console's user is still signed in: {still:?}\n{}",
            lbd.log_text()
        );
        let log = lbd.log_text();
        assert!(
            !log.contains("health down"),
            "round {round}: no server flapped: {log}"
        );
        eprintln!("round {round}: {answered} redirects answered, none refused");
    }
    assert!(lbd.stop(&mut lab).unwrap_or_else(|e| panic!("{e}")));
}

/// What lbd logs when a SIGUSR2 could not re-execute it
/// (`lb-userspace/src/daemon/mod.rs`, `reexecute`).
const NOT_REEXECUTED: &str = "SIGUSR2: not re-executed, this lbd carries on";

/// A new file that cannot run the configuration (here: one that only
/// fails) never stops lbd: it says why and carries on, listeners included.
#[test]
fn a_sigusr2_that_cannot_execute_leaves_lbd_serving() {
    use std::os::unix::fs::PermissionsExt as _;
    let (lab, binary, lbd) = lbd_from_a_copy();
    let pid = lbd.pid(&lab);

    let broken = lab.dir().join("broken-lbd");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'this lbd is broken' >&2\nexit 3\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    replace_binary(&broken, &binary);
    lbd.signal(&lab, libc::SIGUSR2)
        .unwrap_or_else(|e| panic!("{e}"));
    let () = lb_tests::wait::wait_until("lbd to say it carries on", READY, || {
        let log = lbd.log_text();
        if log.contains(NOT_REEXECUTED) {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    });
    assert!(
        lbd.log_text().contains("this lbd is broken"),
        "the reason is logged: {}",
        lbd.log_text()
    );
    assert_eq!(lbd.pid(&lab), pid, "the same lbd runs");
    assert!(lbd.status().is_some(), "lbctl is answered");
    let redirect = std::net::SocketAddr::from((lab.vip(), REDIRECT_PORT));
    let until = Instant::now() + Duration::from_secs(1);
    let (answered, refused, other) =
        lb_tests::lab::in_netns(lab.client_ns(), move || hammer(redirect, until))
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        answered > 0 && refused == 0 && other.is_empty(),
        "the redirect service accepts again: {answered} answered, {refused} refused, {other:?}"
    );
    let report = lab
        .run_clients_with(
            &lab.client_sources()[..SOURCES],
            1,
            Duration::from_secs(30),
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.failures().is_empty(), "{}", report.summary());
}

/// An exec health check running when lbd executes itself is ended and
/// reaped first: the next lbd (the same process) would neither time it out
/// nor reap it, so without this it ran on, then stayed a zombie.
#[test]
fn exec_checks_running_at_a_sigusr2_are_ended_not_left_behind() {
    let mut lab = lab();
    let pids = lab.dir().join("check-pids");
    let check = format!(
        "    health_check: {{ type: exec, command: [\"/bin/sh\", \"-c\", \"echo $$ >> {}; exec sleep 50\"], \
         interval_ms: 60000, timeout_ms: 60000 }}\n",
        pids.display()
    );
    let services = web_service(&lab, 3, 600).replacen(
        "    real_servers:\n",
        &format!("{check}    real_servers:\n"),
        1,
    );
    let config = lab_config(&lab, &services);
    let lbd = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_answering(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    let started: Vec<u32> = lb_tests::wait::wait_until("three checks running", READY, || {
        let pids: Vec<u32> = std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.len() >= 3 {
            Ok(pids)
        } else {
            Err(format!("{pids:?}"))
        }
    });
    let gone = |pid: &u32| !std::path::Path::new(&format!("/proc/{pid}")).exists();
    assert!(!started.iter().any(gone), "the checks run: {started:?}");

    lbd.signal(&lab, libc::SIGUSR2)
        .unwrap_or_else(|e| panic!("{e}"));
    let () = lb_tests::wait::wait_until("lbd re-executed", READY, || {
        if lbd.log_text().contains(REEXEC_LOGGED) && lbd.status().is_some() {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    });
    let state = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or_else(
            |_| "gone".to_owned(),
            |s| s.split(") ").nth(1).unwrap_or("").chars().take(1).collect(),
        )
    };
    assert!(
        started.iter().all(gone),
        "the checks running at the SIGUSR2 are gone (not running, not zombies): {:?}\n{}",
        started.iter().map(|p| (p, state(p))).collect::<Vec<_>>(),
        lbd.log_text()
    );
}
