//! The control plane's promises to the operator (issue 12): read-only
//! commands change nothing, a dry run does not undo a drain, and every
//! administrative change lands in the audit log.
//!
//! Needs root. Every lab has its own names and is torn down when dropped.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::SocketAddrV4,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use lb_tests::{
    lab::{DrLab, DrLabOptions},
    lbd::{lab_config, lbctl_ok, web_service, Lbd},
    paths,
    wait::wait_until,
};

const READY: Duration = Duration::from_secs(20);
const RELOAD: Duration = Duration::from_secs(5);

fn lab() -> DrLab {
    paths::require_root("namespace tests");
    paths::require_lbd();
    DrLab::start(DrLabOptions::default()).unwrap_or_else(|e| panic!("lab: {e}"))
}

/// Every file under `dir` with its contents (as text, to be read in a
/// failure) and modification time.
fn snapshot(dir: &Path) -> BTreeMap<String, (String, Option<SystemTime>)> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_file() {
            let modified = fs::metadata(&path).and_then(|m| m.modified()).ok();
            let bytes = fs::read(&path).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            out.insert(path.display().to_string(), (text, modified));
        }
    }
    out
}

/// The contract's "Dry runs are dry" and "Audit", and issue 12's scenario:
/// drain a server, `lbctl plan` a file without it, SIGHUP the original
/// file, restart: the server stays drained and `admin.json` does not change
/// by a byte.
/// `lbctl plan` of a file whose one service is renamed: the new name's
/// clients all arrive, the old name's all leave, and the plan says it is
/// removed.
fn plan_of_a_renamed_service(lab: &DrLab, lbd: &Lbd) {
    let renamed = lab.dir().join("renamed.yaml");
    let portal = web_service(lab, 3, 300).replacen("name: web", "name: portal", 1);
    fs::write(&renamed, lab_config(lab, &portal)).unwrap_or_else(|e| panic!("{e}"));
    let out = lbctl_ok(lbd, &["plan", &renamed.display().to_string(), "--json"]);
    let plan: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plan["services"],
        serde_json::json!([
            {"name": "portal", "moved_share": 1.0, "removed": false},
            {"name": "web", "moved_share": 1.0, "removed": true},
        ]),
        "{plan}"
    );
}

#[test]
fn dry_runs_change_nothing_and_a_drain_survives_plan_reload_and_restart() {
    let mut lab = lab();
    let config = lab_config(&lab, &web_service(&lab, 3, 300));
    let mut lbd = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    let state_dir = lab.dir().join("state");
    let rs3 = lab.real_name(2);

    lbctl_ok(&lbd, &["drain", "web", &rs3]);
    assert_eq!(lbd.admin_state(&rs3).as_deref(), Some("drain"));
    let audit = lbd.audit_lines();
    assert_eq!(audit.len(), 1, "one change, one line: {audit:?}");
    assert_eq!(audit[0]["who"], "root", "the lbctl caller: {}", audit[0]);
    assert_eq!(audit[0]["via"], "lbctl");
    assert_eq!(audit[0]["what"], format!("drain web/{rs3}"));
    assert_eq!(audit[0]["before"]["admin_state"], "online");
    assert_eq!(audit[0]["after"]["admin_state"], "drain");
    assert!(audit[0]["time"].is_string());

    let admin = fs::read(state_dir.join("admin.json")).unwrap_or_else(|e| panic!("{e}"));
    let without_rs3 = lab.dir().join("without-rs3.yaml");
    fs::write(&without_rs3, lab_config(&lab, &web_service(&lab, 2, 300)))
        .unwrap_or_else(|e| panic!("{e}"));
    let plan_file = without_rs3.display().to_string();
    let config_file = lab.dir().join("lbd.yaml");
    let config_bytes = fs::read(&config_file).unwrap_or_else(|e| panic!("{e}"));

    // Every read-only command, one at a time: no file in the state
    // directory changes, not even its time.
    let before = snapshot(&state_dir);
    let read_only: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["status", "--json"],
        vec!["affinity", "web", "198.18.1.9"],
        vec!["ha"],
        vec!["ha", "--json"],
        vec!["plan", &plan_file],
        vec!["plan", &plan_file, "--json"],
    ];
    for args in &read_only {
        lbctl_ok(&lbd, args);
        assert_eq!(
            snapshot(&state_dir),
            before,
            "lbctl {args:?} changed a file"
        );
    }
    plan_of_a_renamed_service(&lab, &lbd);
    assert_eq!(snapshot(&state_dir), before, "lbctl plan changed a file");

    let check = std::process::Command::new(paths::lbd())
        .args(["--config", &plan_file, "--check"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(check.status.success(), "{check:?}");
    assert_eq!(snapshot(&state_dir), before, "lbd --check changed a file");
    assert_eq!(
        fs::read(&config_file).unwrap_or_default(),
        config_bytes,
        "the configuration file is untouched"
    );
    assert_eq!(lbd.admin_state(&rs3).as_deref(), Some("drain"));

    // The original file again, by SIGHUP.
    let reloads = |lbd: &Lbd| lbd.log_text().matches("configuration reloaded").count();
    let seen = reloads(&lbd);
    lbd.signal(&lab, libc::SIGHUP)
        .unwrap_or_else(|e| panic!("{e}"));
    let () = wait_until("the SIGHUP to be handled", RELOAD, || {
        if reloads(&lbd) > seen {
            Ok(())
        } else {
            Err("not reloaded yet".to_owned())
        }
    });
    assert_eq!(lbd.admin_state(&rs3).as_deref(), Some("drain"));
    assert_eq!(
        fs::read(state_dir.join("admin.json")).unwrap_or_default(),
        admin,
        "admin.json unchanged by the plan and the reload"
    );

    // And after a restart.
    assert!(lbd.stop(&mut lab).unwrap_or_else(|e| panic!("{e}")));
    let again = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("{e}"));
    again
        .wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.admin_state(&rs3).as_deref(), Some("drain"));
    assert_eq!(
        fs::read(state_dir.join("admin.json")).unwrap_or_default(),
        admin,
        "admin.json unchanged by the restart"
    );
    lbctl_ok(&again, &["online", "web", &rs3]);
    let audit = lbd.audit_lines();
    assert_eq!(
        audit.len(),
        2,
        "the dry runs, reload and restart added no line: {audit:?}"
    );
    assert_eq!(audit[1]["what"], format!("online web/{rs3}"));
    assert_eq!(audit[1]["before"]["admin_state"], "drain");
}

/// Port of the redirect service of the connection test.
const REDIRECT_PORT: u16 = 8081;
/// Connections held to each of the redirect, metrics and console ports.
const HELD_PER_PORT: usize = 1500;
/// How long they are held.
const HOLD: Duration = Duration::from_secs(20);

/// The contract's "Bounded resources" and issue 12's scenario: 4,500
/// connections held open from the client's 256 addresses to a redirect port,
/// the metrics port and the web console's port (issue 15) for 20 s. lbd
/// starts with the open-file limit systemd gives a service (1024). Every real server stays up (tcp checks
/// every 300 ms), `lbctl status` answers, forwarding goes on, and a new
/// redirect and the console's sign-in page are answered once the
/// connections are gone.
#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn held_connections_take_nothing_from_checks_control_or_forwarding() {
    let mut lab = lab();
    let (vip, lb) = (lab.vip(), lab.lb_address());
    let mut services = format!(
        "  - name: web\n    vip: {vip}\n    port: {}\n    persistence: {{ timeout_s: 300 }}\n    \
         health_check: {{ type: tcp, interval_ms: 300, timeout_ms: 250, rise: 1, fall: 2 }}\n    \
         real_servers:\n",
        lab.http_port()
    );
    for i in 0..3 {
        let _ = writeln!(
            services,
            "      - {{ name: {}, address: {} }}",
            lab.real_name(i),
            lab.real_address(i)
        );
    }
    let _ = writeln!(
        services,
        "  - name: to-https\n    vip: {vip}\n    port: {REDIRECT_PORT}\n    \
         redirect: {{ code: 301, scheme: https }}"
    );
    let config = lb_tests::console::with_console(
        &lab,
        &lab_config(&lab, &services).replace(
            "metrics_listen: 127.0.0.1:9100",
            &format!("metrics_listen: {lb}:9100"),
        ),
        900,
    );
    let lbd = Lbd::start_wrapped(&mut lab, &config, &["prlimit", "--nofile=1024:"])
        .unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));

    let redirect = SocketAddrV4::new(vip, REDIRECT_PORT);
    let metrics = SocketAddrV4::new(lb, 9100);
    let console = SocketAddrV4::new(lb, lb_tests::console::PORT);
    let targets = vec![redirect, metrics, console];
    let ports = targets.len();
    let holder = lb_tests::hold::hold_connections(&lab, targets, HELD_PER_PORT, HOLD);
    // Let the connections pile up first.
    std::thread::sleep(Duration::from_secs(3));
    let holding = Instant::now();
    let mut rounds = 0;
    while holding.elapsed() < HOLD.saturating_sub(Duration::from_secs(4)) {
        let status = lbd
            .status()
            .unwrap_or_else(|| panic!("`lbctl status` does not answer:\n{}", lbd.log_text()));
        for server in status["services"][0]["real_servers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(
                server["health"],
                "up",
                "{} went down under held connections:\n{}",
                server["name"],
                lbd.log_text()
            );
        }
        let report = lab
            .run_clients_with(
                &lab.client_sources()[..16],
                1,
                Duration::from_secs(10),
                Duration::from_secs(2),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            report.failures().is_empty(),
            "forwarding: {}",
            report.summary()
        );
        rounds += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(rounds >= 3, "checked {rounds} times in {HOLD:?}");
    let made = holder
        .join()
        .unwrap_or_else(|_| panic!("the connection holder panicked"));
    eprintln!("{made} connections made to the redirect, metrics and console ports");
    assert!(
        made >= ports * HELD_PER_PORT / 2,
        "only {made} connections were made"
    );

    let answered = wait_until(
        "a new redirect to be answered",
        Duration::from_secs(10),
        || {
            lb_tests::lab::run_in(
                lab.client_ns(),
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "2",
                    &format!("http://{vip}:{REDIRECT_PORT}/x"),
                ],
            )
            .map_err(|e| e.to_string())
            .and_then(|code| {
                if code.trim() == "301" {
                    Ok(code)
                } else {
                    Err(format!("answered {code:?}"))
                }
            })
        },
    );
    assert_eq!(answered.trim(), "301");
    let page = wait_until(
        "the console's sign-in page",
        Duration::from_secs(10),
        || {
            let a = lb_tests::console::request(&lab, "GET", "/login", None, &[], None);
            if a.status == 200 {
                Ok(a)
            } else {
                Err(format!("{a:?}"))
            }
        },
    );
    assert!(page.body.contains("sign-in"), "{}", page.body);
}

/// Issue 12, "Durable and atomic": `lbctl apply` is all or nothing. A file
/// that cannot be applied here (its redirect port is taken by another
/// program) is refused with the reason, the file lbd runs from is left as
/// it was byte for byte, and nothing else changes; once the port is free,
/// the same file applies and is saved.
#[test]
fn an_apply_that_fails_changes_neither_the_service_nor_the_file() {
    let mut lab = lab();
    let config = lab_config(&lab, &web_service(&lab, 3, 300));
    let lbd = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    let taken = lb_tests::lab::in_netns(lab.lb_ns(), || {
        std::net::TcpListener::bind(("0.0.0.0", REDIRECT_PORT))
    })
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("{e}"));

    let bigger = lab_config(
        &lab,
        &format!(
            "{}  - name: to-https\n    vip: {}\n    port: {REDIRECT_PORT}\n    \
             redirect: {{ code: 301, scheme: https }}\n",
            web_service(&lab, 3, 300),
            lab.vip()
        ),
    );
    let file = lab.dir().join("bigger.yaml");
    fs::write(&file, &bigger).unwrap_or_else(|e| panic!("{e}"));
    let running = fs::read_to_string(&lbd.config).unwrap_or_else(|e| panic!("{e}"));
    let out = lbd.lbctl(&["apply", &file.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "refused: {stderr}");
    assert!(stderr.contains("nothing changed"), "{stderr}");
    assert_eq!(
        fs::read_to_string(&lbd.config).unwrap_or_default(),
        running,
        "the file lbd runs from is unchanged"
    );
    let services = |lbd: &Lbd| {
        lbd.status()
            .and_then(|s| s["services"].as_array().map(Vec::len))
    };
    assert_eq!(services(&lbd), Some(1), "nothing applied");

    drop(taken);
    lbctl_ok(&lbd, &["apply", &file.display().to_string()]);
    assert_eq!(services(&lbd), Some(2));
    assert_eq!(
        fs::read_to_string(&lbd.config).unwrap_or_default(),
        bigger,
        "saved once applied"
    );
}

/// `lbd --check` refuses a cluster key other users can read, at the place
/// of the key naming it (`FILE:LINE:COLUMN: cluster.sync.key_file: ...`,
/// as every configuration error), and accepts it once it is mode 0600.
#[test]
fn a_readable_cluster_key_is_refused_at_its_place_in_the_file() {
    use std::os::unix::fs::PermissionsExt as _;
    paths::require_lbd();
    let dir = std::env::temp_dir().join(format!("lbd-key-check-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let key = dir.join("cluster.key");
    fs::write(&key, "k".repeat(40)).unwrap_or_else(|e| panic!("{e}"));
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap_or_else(|e| panic!("{e}"));
    let config = dir.join("lbd.yaml");
    fs::write(
        &config,
        format!(
            "node:\n  name: lb1\n  interface: eth9\ncluster:\n  vrid: 51\n  priority: 150\n  \
             peer: 198.18.0.12\n  role: primary\n  sync:\n    listen: 198.18.0.11:7946\n    \
             peer: 198.18.0.12:7946\n    key_file: {}\nservices: []\n",
            key.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let check = || {
        std::process::Command::new(paths::lbd())
            .args(["--config", &config.display().to_string(), "--check"])
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let refused = check();
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    let expected = format!("{}:12:15: cluster.sync.key_file: ", config.display());
    let _ = fs::set_permissions(&key, fs::Permissions::from_mode(0o600));
    let accepted = check();
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&expected) && stderr.contains("chmod 600"),
        "{expected}...: {stderr}"
    );
    assert!(accepted.status.success(), "{accepted:?}");
}
