//! `cargo xtask demo`: runs the lab demo binary built by `cargo xtask build`.

use std::process::Command;

use anyhow::Result;

use crate::{root, sh};

pub fn run(duration: u64) -> Result<()> {
    let demo = root().join("target/release/lb-demo");
    sh(Command::new(demo).args(["--duration", &duration.to_string()]))
}
