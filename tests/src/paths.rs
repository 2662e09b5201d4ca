//! Where `cargo xtask build` puts what the tests run.

use std::path::PathBuf;

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
