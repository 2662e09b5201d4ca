//! `cargo xtask setup`: everything a fresh machine needs, installed once.
//!
//! - Debian packages: LLVM 22 (bpf-linker links against the same LLVM as
//!   rustc), and the labs' tools (iproute2, ethtool, curl, python3, and
//!   keepalived as the VRRP peer of the interoperability tests, Chromium
//!   and ChromeDriver for the web console's browser tests).
//! - nightly's `rust-src`, since the XDP program builds `core` itself.
//! - bpf-linker 0.13 built against LLVM 22 (its default feature wants 23).

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{sh, succeeds};

/// Debian packages the build, the tests and the demo need.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "ethtool",
    "curl",
    "python3",
    "keepalived",
    "nftables",
    "nginx",
    "haproxy",
    "wrk",
    "gcc",
    // ps, pgrep and sysctl for the labs
    "procps",
    // the Debian package: built, checked, installed into a throwaway root
    "binutils",
    "lintian",
    "systemd",
    // the web console's browser tests: headless Chromium over WebDriver
    "chromium",
    "chromium-driver",
    // a font, so the screenshots show text (Chromium only recommends one)
    "fonts-dejavu-core",
];

pub fn run() -> Result<()> {
    apt()?;
    rust_src()?;
    bpf_linker()
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    sh(Command::new("apt-get").arg("update").arg("-q"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("installing Debian packages (setup needs root)")
}

fn rust_src() -> Result<()> {
    let has = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"));
    if has {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    let version = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if version.contains("0.13") && succeeds("bpf-linker", &["--version"]) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker 0.13 against LLVM 22 (about a minute)");
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    sh(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            "^0.13",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .env("PATH", path))
}
