//! End to end in network namespaces: a client with 256 source addresses, the
//! load balancer running the real `lbd`, and three real servers holding the
//! VIP on `lo`, each answering HTTP with its own name.
//!
//! Needs root. Every lab has its own names and is torn down when dropped.

use std::time::Duration;

use lb_tests::{
    lab::{DrLab, DrLabOptions},
    lbd::{lab_config, web_service, Lbd},
    paths,
    wait::{wait_until, SLACK},
};

const READY: Duration = Duration::from_secs(20);
/// lbd counts active clients once a second: counters shown are at most that
/// old (the contract).
const CENSUS_EVERY: Duration = Duration::from_secs(1);
/// How long a SIGHUP may take to be handled: read the file, apply it.
const RELOAD: Duration = Duration::from_secs(5);
/// What lbd logs when a SIGHUP finds an invalid file
/// (`lb-userspace/src/daemon/mod.rs`, `reload`).
const BAD_RELOAD_LOGGED: &str = "SIGHUP: the configuration is invalid; nothing changed";

fn lab() -> DrLab {
    paths::require_root("namespace tests");
    paths::require_lbd();
    DrLab::start(DrLabOptions::default()).unwrap_or_else(|e| panic!("lab: {e}"))
}

/// The number of real servers of the first service and the first one's
/// weight, from `lbctl status`.
fn servers_and_first_weight(status: &serde_json::Value) -> (Option<usize>, Option<u64>) {
    let reals = &status["services"][0]["real_servers"];
    (reals.as_array().map(Vec::len), reals[0]["weight"].as_u64())
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn every_source_sticks_to_one_server_and_a_removed_server_loses_only_its_own_clients() {
    let mut lab = lab();
    let config = lab_config(&lab, &web_service(&lab, 3, 300));
    let mut lbd = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("{e}"));
    let status = lbd
        .wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        status["services"][0]["real_servers"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );

    let report = lab
        .run_clients(5, Duration::from_mins(1))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        report.failures().is_empty(),
        "every request is answered: {}",
        report.summary()
    );
    let sticky = report.sticky_sources();
    assert_eq!(
        sticky.len(),
        256,
        "every source gets the same server 5 of 5 times: {}",
        report.summary()
    );
    let shares = report.share_by_server();
    assert_eq!(shares.len(), 3, "all three servers serve: {shares:?}");
    for (server, count) in &shares {
        let share = f64::from(u32::try_from(*count).unwrap_or(0)) / 256.0;
        assert!(
            (0.20..=0.47).contains(&share),
            "{server} has {share:.2} of the sources: {shares:?}"
        );
    }
    let before = report.first_servers();

    // The counters moved with the traffic, and active clients are counted
    // (by a pass over the affinity table about once a second).
    let service = wait_until(
        "one affinity entry per source",
        CENSUS_EVERY + SLACK,
        || {
            let status = lbd
                .status()
                .ok_or_else(|| "`lbctl status` does not answer".to_owned())?;
            let service = status["services"][0].clone();
            let active: u64 = service["real_servers"].as_array().map_or(0, |rs| {
                rs.iter().filter_map(|r| r["active_clients"].as_u64()).sum()
            });
            if active == 256 {
                Ok(service)
            } else {
                Err(format!("{active} active clients: {service}"))
            }
        },
    );
    assert!(
        service["packets"].as_u64().unwrap_or(0) >= 256 * 5 * 3,
        "{service}"
    );

    // Remove rs3 by SIGHUP: its clients move, every other client stays. The
    // same file sets rs1's weight to 0, so the ring sends every client to
    // rs2: rs1's clients stay on rs1 only by their affinity entries.
    let removed = lab.real_name(2);
    let kept_by_table = lab.real_name(0);
    assert!(
        before.values().any(|s| *s == kept_by_table),
        "{kept_by_table} has clients: {before:?}"
    );
    let first = format!("address: {} }}", lab.real_address(0));
    let reloaded = web_service(&lab, 2, 300).replace(
        &first,
        &format!("address: {}, weight: 0 }}", lab.real_address(0)),
    );
    assert!(reloaded.contains("weight: 0"), "{reloaded}");
    std::fs::write(&lbd.config, lab_config(&lab, &reloaded)).unwrap_or_else(|e| panic!("{e}"));
    lbd.signal(&lab, libc::SIGHUP)
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = wait_until("SIGHUP to apply the new file", RELOAD, || {
        let status = lbd
            .status()
            .ok_or_else(|| "`lbctl status` does not answer".to_owned())?;
        if servers_and_first_weight(&status) == (Some(2), Some(0)) {
            Ok(status)
        } else {
            Err(status["services"][0].to_string())
        }
    });
    let report = lab
        .run_clients(2, Duration::from_mins(1))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.failures().is_empty(), "{}", report.summary());
    assert_eq!(report.sticky_sources().len(), 256, "{}", report.summary());
    let after = report.first_servers();
    for (source, server) in &before {
        let now = &after[source];
        if *server == removed {
            assert_ne!(now, server, "{source} still reaches the removed server");
        } else {
            assert_eq!(now, server, "{source} moved although its server stayed");
        }
    }

    // A bad file on SIGHUP changes nothing: lbd handles the signal, says so
    // in its log, and keeps what it had.
    let logged_before = lbd.log_text().matches(BAD_RELOAD_LOGGED).count();
    std::fs::write(&lbd.config, "node: { name: x }\nservices: 3\n")
        .unwrap_or_else(|e| panic!("{e}"));
    lbd.signal(&lab, libc::SIGHUP)
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = wait_until("lbd to log the rejected SIGHUP", RELOAD, || {
        let log = lbd.log_text();
        if log.matches(BAD_RELOAD_LOGGED).count() > logged_before {
            Ok(log)
        } else {
            let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            Err(format!(
                "no {BAD_RELOAD_LOGGED:?} yet; last lines (newest first): {tail}"
            ))
        }
    });
    let status = lbd
        .status()
        .unwrap_or_else(|| panic!("lbd still answers after a bad reload"));
    assert_eq!(
        servers_and_first_weight(&status),
        (Some(2), Some(0)),
        "nothing changed: {}",
        status["services"][0]
    );

    // Stopping leaves nothing behind: no XDP program, no VIP, no socket.
    assert!(lbd.xdp_attached(&lab).unwrap_or_else(|e| panic!("{e}")));
    assert!(lbd
        .interface_addresses(&lab)
        .unwrap_or_default()
        .contains(&lab.vip()));
    assert!(
        lbd.stop(&mut lab).unwrap_or_else(|e| panic!("{e}")),
        "lbd exits 0 on SIGTERM"
    );
    assert!(
        !lbd.xdp_attached(&lab).unwrap_or_else(|e| panic!("{e}")),
        "XDP program detached"
    );
    assert!(
        !lbd.interface_addresses(&lab)
            .unwrap_or_default()
            .contains(&lab.vip()),
        "VIP removed"
    );
    assert!(!lbd.socket.exists(), "control socket removed");
    let tables = lb_tests::lab::run_in(lab.lb_ns(), &["nft", "list", "tables"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !tables.contains("lbd_"),
        "the guard table is removed: {tables}"
    );
    let record = std::fs::read_to_string(lbd.state_dir.join("vips")).unwrap_or_default();
    assert!(
        record.trim().is_empty(),
        "no VIP left in the record: {record:?}"
    );
}

#[test]
fn a_restart_after_a_crash_cleans_up_and_serves_again() {
    let mut lab = lab();
    let config = lab_config(&lab, &web_service(&lab, 3, 300));
    let lbd = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    lbd.signal(&lab, libc::SIGKILL)
        .unwrap_or_else(|e| panic!("{e}"));
    // The data path outlives lbd (issue 13): it goes on forwarding.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        lbd.xdp_attached(&lab).unwrap_or(false),
        "the XDP program stays attached after a crash"
    );
    assert!(
        lbd.interface_addresses(&lab)
            .unwrap_or_default()
            .contains(&lab.vip()),
        "the crash left the VIP behind (the next start removes it)"
    );
    // The guard table stays, so the kernel drops (instead of resetting) the
    // clients' packets until the VIP moves or lbd is back.
    let tables = lb_tests::lab::run_in(lab.lb_ns(), &["nft", "list", "tables"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        tables.contains("lbd_eth0"),
        "the guard outlives a crash: {tables}"
    );

    let mut again = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("{e}"));
    again
        .wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    let report = lab
        .run_clients(2, Duration::from_mins(1))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.failures().is_empty(), "{}", report.summary());
    assert_eq!(report.sticky_sources().len(), 256, "{}", report.summary());
    assert!(again.stop(&mut lab).unwrap_or_else(|e| panic!("{e}")));
    assert!(!again
        .interface_addresses(&lab)
        .unwrap_or_default()
        .contains(&lab.vip()));
}

#[test]
fn lbctl_reports_errors_in_one_line_with_exit_codes() {
    let mut lab = lab();
    let config = lab_config(&lab, &web_service(&lab, 3, 300));
    let lbd = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));

    let human = lbd.lbctl(&["status"]);
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("web") && text.contains("rs1") && text.contains("CLIENTS"),
        "{text}"
    );

    for (args, code, needle) in [
        (vec!["drain", "nope", "rs1"], 1, "no service named"),
        (vec!["drain", "web", "nope"], 1, "no real server named"),
        (vec!["weight", "web", "rs1", "70000"], 2, "70000"),
        (vec!["affinity", "web", "not-an-ip"], 2, "not-an-ip"),
        (vec!["frobnicate"], 2, "frobnicate"),
    ] {
        let out = lbd.lbctl(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "lbctl {args:?}: {stderr}");
        assert!(stderr.contains(needle), "lbctl {args:?}: {stderr}");
    }
    let out = lbd.lbctl(&["drain", "nope", "rs1"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);

    // A file with errors: one line per error, each `FILE:LINE:COLUMN:
    // message` as lbd --check prints it; a file that is not UTF-8 text:
    // the place of its first bad byte.
    let bad = lab.dir().join("bad.yaml");
    let text = lab_config(&lab, &web_service(&lab, 3, 0)) + "bogus: 1\n";
    std::fs::write(&bad, text).unwrap_or_else(|e| panic!("{e}"));
    let binary = lab.dir().join("binary.yaml");
    std::fs::write(&binary, b"node:\n  name: \xff\n").unwrap_or_else(|e| panic!("{e}"));
    let positioned = |line: &str, file: &std::path::Path| {
        let rest = line.strip_prefix(&format!("{}:", file.display()));
        rest.and_then(|r| r.split_once(": "))
            .is_some_and(|(at, _)| {
                let numbers: Vec<&str> = at.split(':').collect();
                numbers.len() == 2 && numbers.iter().all(|n| n.parse::<usize>().is_ok())
            })
    };
    for (command, file, errors) in [("apply", &bad, 2), ("plan", &bad, 2), ("apply", &binary, 1)] {
        let out = lbd.lbctl(&[command, &file.display().to_string()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "lbctl {command}: {stderr}");
        assert_eq!(stderr.lines().count(), errors, "lbctl {command}: {stderr}");
        assert!(
            stderr.lines().all(|line| positioned(line, file)),
            "lbctl {command}: every line FILE:LINE:COLUMN: message: {stderr}"
        );
    }

    let affinity = lbd.lbctl(&["affinity", "web", "198.18.1.9", "--json"]);
    assert!(affinity.status.success());
    let v: serde_json::Value = serde_json::from_slice(&affinity.stdout).unwrap_or_default();
    assert_eq!(v["source"], "hash");
    assert!(v["server"].is_string());

    let dead = std::process::Command::new(lb_tests::paths::lbctl())
        .args(["--socket", "/nonexistent/lbd.sock", "status"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dead.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dead.stderr).contains("is lbd running"));
}
