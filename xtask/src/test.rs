//! `cargo xtask test`: every test, in release mode (the build's profile, so
//! nothing is compiled twice). The namespace and packet tests need root.

use std::process::Command;

use anyhow::Result;

use crate::sh;

pub fn run(extra: &[String]) -> Result<()> {
    sh(Command::new("cargo").args(["test", "--release"]).args(extra))
}
