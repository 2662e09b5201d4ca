//! The control plane's promises to the operator (issue 12): read-only
//! commands change nothing, a dry run does not undo a drain, and every
//! administrative change lands in the audit log.
//!
//! Needs root. Every lab has its own names and is torn down when dropped.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    time::{Duration, SystemTime},
};

use lb_tests::{
    lab::{DrLab, DrLabOptions},
    lbd::{lab_config, lbctl_ok, web_service, Lbd},
    paths,
    wait::wait_until,
};
use serde_json::Value;

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

fn admin_state(lbd: &Lbd, server: &str) -> Option<String> {
    let status = lbd.status()?;
    status["services"][0]["real_servers"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == server)
        .and_then(|r| r["admin_state"].as_str().map(str::to_owned))
}

fn audit_lines(state_dir: &Path) -> Vec<Value> {
    fs::read_to_string(state_dir.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

/// The contract's "Dry runs are dry" and "Audit", and issue 12's scenario:
/// drain a server, `lbctl plan` a file without it, SIGHUP the original
/// file, restart: the server stays drained and `admin.json` does not change
/// by a byte.
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
    assert_eq!(admin_state(&lbd, &rs3).as_deref(), Some("drain"));
    let audit = audit_lines(&state_dir);
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
        assert_eq!(snapshot(&state_dir), before, "lbctl {args:?} changed a file");
    }
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
    assert_eq!(admin_state(&lbd, &rs3).as_deref(), Some("drain"));

    // The original file again, by SIGHUP.
    let reloads = |lbd: &Lbd| lbd.log_text().matches("configuration reloaded").count();
    let seen = reloads(&lbd);
    lbd.signal(&lab, libc::SIGHUP)
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = wait_until("the SIGHUP to be handled", RELOAD, || {
        if reloads(&lbd) > seen {
            Ok(())
        } else {
            Err("not reloaded yet".to_owned())
        }
    });
    assert_eq!(admin_state(&lbd, &rs3).as_deref(), Some("drain"));
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
    assert_eq!(admin_state(&again, &rs3).as_deref(), Some("drain"));
    assert_eq!(
        fs::read(state_dir.join("admin.json")).unwrap_or_default(),
        admin,
        "admin.json unchanged by the restart"
    );
    lbctl_ok(&again, &["online", "web", &rs3]);
    let audit = audit_lines(&state_dir);
    assert_eq!(
        audit.len(),
        2,
        "the dry runs, reload and restart added no line: {audit:?}"
    );
    assert_eq!(audit[1]["what"], format!("online web/{rs3}"));
    assert_eq!(audit[1]["before"]["admin_state"], "drain");
}
