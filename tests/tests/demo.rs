//! `cargo xtask demo` runs to the end with a short duration, exits 0, shows
//! that the failed server's clients moved and no other client did, and
//! leaves no namespace, XDP program or process behind. Needs root.

use std::process::Command;

use lb_tests::paths;

/// `M/N` as (M, N).
fn fraction(text: &str) -> Option<(usize, usize)> {
    let (m, n) = text.trim().split_once('/')?;
    Some((m.parse().ok()?, n.parse().ok()?))
}

/// The demo's summary line `moved: failed-server clients M/N, others K/L`
/// as ((M, N), (K, L)).
fn moved_summary(stdout: &str) -> Option<((usize, usize), (usize, usize))> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("moved: failed-server clients "))?;
    let (failed, others) = line.split_once(", others ")?;
    Some((fraction(failed)?, fraction(others)?))
}

#[test]
fn the_summary_line_parses() {
    assert_eq!(
        moved_summary("x\nmoved: failed-server clients 2/2, others 0/7\ny"),
        Some(((2, 2), (0, 7)))
    );
    assert_eq!(
        moved_summary("moved: failed-server clients 2/x, others 0/7"),
        None
    );
    assert_eq!(moved_summary("demo finished"), None);
}

#[test]
fn the_demo_moves_only_the_failed_servers_clients_and_leaves_nothing_behind() {
    paths::require_root("the demo");
    let demo = paths::bin_dir().join("lb-demo");
    paths::require_file(&demo, paths::BUILD_HINT);
    let out = Command::new(&demo)
        .args(["--duration", "8"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", demo.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("location: https://hyperspace.example.org/chart?id=42"),
        "the redirect did not keep the path:\n{stdout}"
    );
    let ((failed_moved, failed), (others_moved, others)) =
        moved_summary(&stdout).unwrap_or_else(|| panic!("no `moved:` summary line:\n{stdout}"));
    assert!(
        failed > 0,
        "the failed server had no client to move:\n{stdout}"
    );
    assert_eq!(
        failed_moved, failed,
        "every client of the failed server moved:\n{stdout}"
    );
    assert!(others > 0, "there were other clients:\n{stdout}");
    assert_eq!(others_moved, 0, "no other client moved:\n{stdout}");
    assert!(
        stdout.contains("console: signed in as viewer (viewer)"),
        "the demo signs in to the web console:\n{stdout}"
    );
    assert!(
        stdout.contains("snat: answered 4/4"),
        "every client of the SNAT service was answered by the servers on another subnet:\n{stdout}"
    );

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
