//! `cargo xtask`: set up, build, test and demonstrate the load balancer.
//!
//! One module per subcommand; CI (`.ci/run`) runs `cargo xtask test`, the
//! same command a developer runs.

mod bench;
mod build;
mod demo;
mod package;
mod setup;
mod test;

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and demonstrate the XDP load balancer")]
struct Args {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs (apt packages, rust-src, bpf-linker); idempotent.
    Setup,
    /// Build the XDP program (lb-ebpf) for bpfel-unknown-none.
    BuildEbpf,
    /// Setup, then build the XDP program and every binary (release).
    Build,
    /// Setup, build, and run every test (unit, packet fixtures, namespaces).
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Setup, build, and make the Debian package
    /// (`target/debian/lbd_VERSION_amd64.deb`).
    Package,
    /// Setup, build, and run the network-namespace demo lab.
    Demo {
        /// How long the demo runs, in seconds.
        #[arg(long, default_value_t = 20)]
        duration: u64,
    },
    /// Setup, build, and benchmark lbd against direct, bare XDP, nftables and
    /// `HAProxy`; writes `BENCHMARKS.md` and `bench/` (about 10 minutes).
    Bench {
        /// One short run of everything: checks the harness (about a minute).
        #[arg(long)]
        quick: bool,
        /// Rounds of the traffic comparison (default 7, 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
    },
}

fn main() -> Result<()> {
    match Args::parse().command {
        Task::Setup => setup::run(),
        Task::BuildEbpf => build::ebpf(),
        Task::Build => {
            setup::run()?;
            build::all()
        }
        Task::Test { cargo_args } => {
            setup::run()?;
            build::all()?;
            // The package tests inspect and install the package.
            package::run()?;
            test::run(&cargo_args)
        }
        Task::Package => {
            setup::run()?;
            build::all()?;
            package::run()
        }
        Task::Demo { duration } => {
            setup::run()?;
            build::all()?;
            demo::run(duration)
        }
        Task::Bench { quick, rounds } => {
            setup::run()?;
            build::all()?;
            bench::run(quick, rounds)
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}

/// Runs a command in the workspace root, failing with its command line.
fn sh(command: &mut Command) -> Result<()> {
    let line = format!("{command:?}");
    let status = command
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {line}"))?;
    if !status.success() {
        bail!("{line} failed ({status})");
    }
    Ok(())
}

/// Whether `program` runs and exits 0 with these arguments.
fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
