//! `cargo xtask package`: `target/debian/lbd_VERSION_amd64.deb`, assembled
//! from the release build and `packaging/debian/` and built with
//! `dpkg-deb` (no `debian/` source tree, so nothing but cargo builds lbd).
//!
//! Contents: `/usr/sbin/lbd` (the XDP object embedded), `/usr/bin/lbctl`,
//! the systemd unit, the Epic example as the conffile `/etc/lbd/lbd.yaml`
//! (not run until edited: the unit's `ExecCondition` compares it with the
//! copy in `/usr/share/lbd`), man pages and bash and zsh completions
//! generated from the clap definitions (`lb-docs`), the copyright file, a
//! changelog and lintian's overrides (each explained), and the maintainer
//! scripts (an upgrade re-executes a
//! running lbd with SIGUSR2 instead of restarting it).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{root, sh};

/// The package's version: the workspace's.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Who answers for the package.
const MAINTAINER: &str = "lbd maintainers <lbd-maintainers@example.org>";

/// Where the package is written.
#[must_use]
pub fn deb_path() -> PathBuf {
    root()
        .join("target/debian")
        .join(format!("lbd_{VERSION}_amd64.deb"))
}

/// Builds the package from the release binaries (`cargo xtask build` first).
pub fn run() -> Result<()> {
    let root = root();
    let release = root.join("target/release");
    for binary in ["lbd", "lbctl", "lb-docs"] {
        if !release.join(binary).is_file() {
            bail!(
                "no {binary} in {}: run `cargo xtask build` first",
                release.display()
            );
        }
    }
    let stage = root.join(format!("target/debian/lbd_{VERSION}_amd64"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    let assets = root.join("packaging/debian");

    install(&release.join("lbd"), &stage.join("usr/sbin/lbd"), 0o755)?;
    install(&release.join("lbctl"), &stage.join("usr/bin/lbctl"), 0o755)?;
    for binary in ["usr/sbin/lbd", "usr/bin/lbctl"] {
        sh(Command::new("strip")
            .args([
                "--strip-unneeded",
                "--remove-section=.comment",
                "--remove-section=.note",
            ])
            .arg(stage.join(binary)))?;
    }
    install(
        &assets.join("lbd.service"),
        &stage.join("lib/systemd/system/lbd.service"),
        0o644,
    )?;
    let example = root.join("examples/epic.yaml");
    install(&example, &stage.join("etc/lbd/lbd.yaml"), 0o644)?;
    install(
        &example,
        &stage.join("usr/share/lbd/lbd.yaml.example"),
        0o644,
    )?;
    install(
        &assets.join("copyright"),
        &stage.join("usr/share/doc/lbd/copyright"),
        0o644,
    )?;
    install(
        &assets.join("lintian-overrides"),
        &stage.join("usr/share/lintian/overrides/lbd"),
        0o644,
    )?;

    // Man pages and completions, from the clap definitions.
    let generated = stage.with_extension("docs");
    if generated.exists() {
        fs::remove_dir_all(&generated)?;
    }
    sh(Command::new(release.join("lb-docs")).arg(&generated))?;
    for page in ["lbd.8", "lbctl.8"] {
        let to = stage.join("usr/share/man/man8").join(page);
        install(&generated.join("man").join(page), &to, 0o644)?;
        gzip(&to)?;
    }
    for (file, to) in [
        ("lbd.bash", "usr/share/bash-completion/completions/lbd"),
        ("lbctl.bash", "usr/share/bash-completion/completions/lbctl"),
        ("_lbd", "usr/share/zsh/vendor-completions/_lbd"),
        ("_lbctl", "usr/share/zsh/vendor-completions/_lbctl"),
    ] {
        install(
            &generated.join("completions").join(file),
            &stage.join(to),
            0o644,
        )?;
    }
    fs::remove_dir_all(&generated)?;

    // A native package (no Debian revision): `changelog`, not `changelog.Debian`.
    let changelog = stage.join("usr/share/doc/lbd/changelog");
    write(
        &changelog,
        &format!(
            "lbd ({VERSION}) unstable; urgency=medium\n\n  * lbd {VERSION}: see README.md for what it does.\n\n -- {MAINTAINER}  {}\n",
            rfc2822_now()?
        ),
        0o644,
    )?;
    gzip(&changelog)?;

    let debian = stage.join("DEBIAN");
    for script in ["postinst", "prerm", "postrm"] {
        install(&assets.join(script), &debian.join(script), 0o755)?;
    }
    write(&debian.join("conffiles"), "/etc/lbd/lbd.yaml\n", 0o644)?;
    write(
        &debian.join("control"),
        &control(installed_kib(&stage)?),
        0o644,
    )?;

    let deb = deb_path();
    sh(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    eprintln!("package: {}", deb.display());
    Ok(())
}

/// The control file.
fn control(installed_kib: u64) -> String {
    format!(
        "Package: lbd\n\
         Version: {VERSION}\n\
         Section: net\n\
         Priority: optional\n\
         Architecture: amd64\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         Depends: libc6 (>= 2.34), libgcc-s1 (>= 4.2), nftables\n\
         Description: XDP layer-4 load balancer for clinical systems\n \
         lbd forwards virtual-service traffic to real servers in XDP (direct\n \
         routing), keeping each client on one server by its source address for\n \
         hours, with health checks, drain and halt for maintenance, an HA pair\n \
         (VRRPv3, replicated configuration and sessions) and HTTP-to-HTTPS\n \
         redirect services. lbctl controls it. Built for Epic EHR\n \
         (Hyperspace, MyChart) and systems like it.\n"
    )
}

/// Copies `from` to `to` (creating its directories) with `mode`.
fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        mkdirs(dir)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Writes `text` to `to` (creating its directories) with `mode`.
fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        mkdirs(dir)?;
    }
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Creates `dir` and its parents, each 0755 (whatever the umask).
fn mkdirs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.ends_with("target/debian") || d == Path::new("/") {
            break;
        }
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
        at = d.parent();
    }
    Ok(())
}

/// Compresses `path` in place with `gzip -9n` (no name or time stamp inside).
fn gzip(path: &Path) -> Result<()> {
    sh(Command::new("gzip").args(["-9nf"]).arg(path))
}

/// The size of the installed files, in KiB (the control file's field).
fn installed_kib(stage: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                if entry.file_name() != "DEBIAN" {
                    walk(&entry.path(), total)?;
                }
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(stage, &mut total)?;
    Ok(total)
}

/// Now, as a changelog trailer wants it (`date -R`).
fn rfc2822_now() -> Result<String> {
    let out = Command::new("date")
        .arg("-R")
        .output()
        .context("running date -R")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
