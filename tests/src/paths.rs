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

/// The release `lbd` binary.
#[must_use]
pub fn lbd() -> PathBuf {
    target_dir().join("release/lbd")
}

/// The release `lbctl` binary.
#[must_use]
pub fn lbctl() -> PathBuf {
    target_dir().join("release/lbctl")
}
