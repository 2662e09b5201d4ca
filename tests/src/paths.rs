//! Where `cargo xtask build` puts what the tests run, and the checks that a
//! test which needs root or a built artifact fails, saying how to fix it,
//! instead of passing without having run.

use std::path::{Path, PathBuf};

/// How to build `lbd`, `lbctl` and the lab binaries.
pub const BUILD_HINT: &str =
    "run `cargo xtask build` (it builds the XDP objects first), or point LB_BIN_DIR at them";

/// The cargo target directory (`$CARGO_TARGET_DIR`, else the workspace's).
#[must_use]
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")),
        PathBuf::from,
    )
}

/// Where `lbd` and `lbctl` are: `$LB_BIN_DIR`, else the release target dir.
#[must_use]
pub fn bin_dir() -> PathBuf {
    std::env::var_os("LB_BIN_DIR").map_or_else(|| target_dir().join("release"), PathBuf::from)
}

/// The release `lbd` binary.
#[must_use]
pub fn lbd() -> PathBuf {
    bin_dir().join("lbd")
}

/// The release `lbctl` binary.
#[must_use]
pub fn lbctl() -> PathBuf {
    bin_dir().join("lbctl")
}

/// The release `lb-bench` binary (the `lb-bench` crate, built by
/// `cargo xtask build`).
#[must_use]
pub fn lb_bench() -> PathBuf {
    bin_dir().join("lb-bench")
}

/// Panics unless this process runs as root: `what` (namespace tests, BPF
/// programs) cannot run otherwise, and must not pass without running.
///
/// # Panics
/// When not root.
#[track_caller]
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{what} need root: run the tests as root (for instance `sudo -E cargo xtask test`)"
    );
}

/// Panics unless `path` is a file, naming it and `how` to make it.
///
/// # Panics
/// When `path` is not a file.
#[track_caller]
pub fn require_file(path: &Path, how: &str) {
    assert!(path.is_file(), "{} is missing: {how}", path.display());
}

/// Panics unless `lbd` and `lbctl` are built.
///
/// # Panics
/// When either is missing.
#[track_caller]
pub fn require_lbd() {
    require_file(&lbd(), BUILD_HINT);
    require_file(&lbctl(), BUILD_HINT);
}
