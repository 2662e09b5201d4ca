//! `cargo xtask demo` runs to the end with a short duration, exits 0, and
//! leaves no namespace, XDP program or process behind. Needs root.

use std::process::Command;

#[test]
fn the_demo_runs_to_the_end_and_leaves_nothing_behind() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the demo needs root");
    let demo = lb_tests::paths::bin_dir().join("lb-demo");
    let out = Command::new(&demo)
        .args(["--duration", "8"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", demo.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    for shown in [
        "redirects to HTTPS",
        "location: https://hyperspace.example.org/chart?id=42",
        "drain",
        "health check",
        "demo finished",
    ] {
        assert!(
            stdout.contains(shown),
            "the demo did not show {shown:?}:\n{stdout}"
        );
    }
    let tag = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("lab ")
                .and_then(|rest| rest.split_whitespace().next())
        })
        .unwrap_or_else(|| panic!("the demo did not name its lab:\n{stdout}"));
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains(tag),
        "namespaces of lab {tag} are left behind"
    );
    let processes = Command::new("pgrep")
        .args(["-f", tag])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        String::from_utf8_lossy(&processes.stdout).trim().is_empty(),
        "processes of lab {tag} are left behind"
    );
}
