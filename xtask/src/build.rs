//! `cargo xtask build-ebpf` and `cargo xtask build`.

use std::process::Command;

use anyhow::Result;

use crate::sh;

/// Builds the XDP objects into `target/bpfel-unknown-none/release/`.
pub fn ebpf() -> Result<()> {
    sh(Command::new("cargo")
        .args([
            "+nightly",
            "build",
            "--package",
            "lb-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        // The host toolchain's flags (if any) are not for the BPF target.
        // BTF (from the debug info) is needed for the census program's
        // callback: the kernel wants `func_info` for every subprogram a
        // `bpf_for_each_map_elem` calls.
        // Every function needs it, the compiler's `memcpy` and `memset`
        // included, so the whole build has debug info.
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", "-Clink-arg=--btf")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "2"))
}

/// Builds the XDP objects, then every binary and test in release mode (lbd
/// embeds the XDP object, so it is built second).
pub fn all() -> Result<()> {
    ebpf()?;
    sh(Command::new("cargo").args(["build", "--release", "--all-targets"]))
}
