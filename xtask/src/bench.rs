//! `cargo xtask bench`: runs `target/release/lb-bench` (the `lb-bench` crate,
//! built by `cargo xtask build`), which compares lbd with direct, a bare XDP
//! forwarder, nftables and `HAProxy` in a network-namespace lab and writes
//! `BENCHMARKS.md`, `bench/results.svg` and `bench/results.json` in the
//! workspace (issue 6). Needs root.

use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::{root, sh};

pub fn run(quick: bool, rounds: Option<usize>) -> Result<()> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let mut bench = Command::new(target.join("release/lb-bench"));
    if quick {
        bench.arg("--quick");
    }
    if let Some(rounds) = rounds {
        bench.args(["--rounds", &rounds.to_string()]);
    }
    bench.arg("--out").arg(root());
    sh(&mut bench)
}
