//! `lb-bench --quick` end to end, so the harness behind `cargo xtask bench`
//! cannot rot: every system (direct, bare DR, lbd, nftables, `HAProxy`) served
//! every request of every load, and the report, the chart and the data were
//! written. Never a speed: this machine is shared and noisy.
//!
//! Needs root, nginx, haproxy, wrk and nft (`cargo xtask setup`), and the XDP
//! objects and the `lb-bench` binary (`cargo xtask build`; found by
//! [`paths::lb_bench`]). Writes to a temporary directory, not to the
//! workspace's `BENCHMARKS.md`.

use std::{fs, path::PathBuf, process::Command};

use lb_tests::paths;
use serde_json::Value;

#[test]
fn quick_bench_serves_every_request_and_writes_the_report() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the bench needs root");
    let out = std::env::temp_dir().join(format!("lb-bench-quick-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    let bench = paths::lb_bench();
    let result = Command::new(&bench)
        .arg("--quick")
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (`cargo xtask build` builds it): {e}",
                bench.display()
            )
        });
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    let read = |p: PathBuf| {
        fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}\nlb-bench said:\n{stderr}", p.display()))
    };
    let report = read(out.join("BENCHMARKS.md"));
    let chart = read(out.join("bench/results.svg"));
    let data = read(out.join("bench/results.json"));
    let _ = fs::remove_dir_all(&out);
    assert!(
        result.status.success(),
        "lb-bench --quick failed ({}):\n{stderr}",
        result.status
    );

    let v: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("results.json: {e}"));
    assert_eq!(v["quick"], true);
    let systems = v["systems"]
        .as_array()
        .unwrap_or_else(|| panic!("no systems: {data}"));
    let names: Vec<&str> = systems
        .iter()
        .filter_map(|s| s["system"].as_str())
        .collect();
    assert_eq!(
        names,
        ["direct", "bare_dr", "lbd", "lbd_snat", "lbd_nat", "nftables", "haproxy"]
    );
    for system in systems {
        for load in ["keep_alive", "new_connections", "single_connection"] {
            let w = &system["workloads"][load];
            let what = format!("{} {load}: {w}", system["name"]);
            assert_eq!(w["runs"], 1, "{what}");
            assert!(
                w["requests"].as_u64().is_some_and(|n| n > 0),
                "no request served: {what}"
            );
            assert_eq!(w["errors"], 0, "failed requests: {what}");
        }
    }
    assert!(
        report.contains("<!-- lb-bench:begin")
            && report.contains("### Traffic")
            && report.contains("| lbd |")
            && report.contains("| lbd SNAT / nftables |"),
        "report without results:\n{report}"
    );
    assert!(
        chart.starts_with("<svg") && chart.contains("lbd"),
        "chart: {chart:.200}"
    );
}
