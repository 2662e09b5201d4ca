//! Issue 13: the Debian package, as `cargo xtask test` built it
//! (`cargo xtask package`): its contents and control data, lintian, the
//! unit checked by `systemd-analyze verify`, and an install, removal and
//! purge in a throwaway root (`dpkg --root`; maintainer scripts leave a
//! root that is not the running system alone, `DPKG_ROOT`).
//!
//! Needs root (dpkg writes the throwaway root as root).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use lb_tests::paths;

/// The package `cargo xtask package` writes.
fn deb() -> PathBuf {
    let dir = paths::target_dir().join("debian");
    let found = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask package`)", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("lbd_") && n.ends_with("_amd64.deb"))
        });
    found.unwrap_or_else(|| panic!("no lbd_*_amd64.deb in {}", dir.display()))
}

/// Runs `program args`, returning its stdout; panics with its stderr on failure.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throwaway root with an empty dpkg database, removed when dropped.
struct Root(PathBuf);

impl Root {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("lbd-pkg-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in [
            "var/lib/dpkg/info",
            "var/lib/dpkg/updates",
            "var/lib/dpkg/triggers",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(dir.join("var/lib/dpkg/status"), "").unwrap_or_else(|e| panic!("{e}"));
        Self(dir)
    }

    fn dpkg(&self, args: &[&str]) -> String {
        let root = format!("--root={}", self.0.display());
        let mut all = vec![
            root.as_str(),
            "--force-script-chrootless",
            "--force-depends",
            "--force-not-root",
        ];
        all.extend_from_slice(args);
        run("dpkg", &all)
    }

    fn has(&self, path: &str) -> bool {
        self.0.join(path.trim_start_matches('/')).exists()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const FILES: &[&str] = &[
    "./usr/sbin/lbd",
    "./usr/bin/lbctl",
    "./lib/systemd/system/lbd.service",
    "./etc/lbd/lbd.yaml",
    "./usr/share/lbd/lbd.yaml.example",
    "./usr/share/man/man8/lbd.8.gz",
    "./usr/share/man/man8/lbctl.8.gz",
    "./usr/share/bash-completion/completions/lbd",
    "./usr/share/bash-completion/completions/lbctl",
    "./usr/share/zsh/vendor-completions/_lbd",
    "./usr/share/zsh/vendor-completions/_lbctl",
    "./usr/share/doc/lbd/copyright",
    "./usr/share/doc/lbd/changelog.gz",
];

#[test]
fn the_package_holds_lbd_its_unit_docs_and_completions() {
    let deb = deb();
    let deb = deb.to_string_lossy();
    let contents = run("dpkg-deb", &["-c", &deb]);
    for file in FILES {
        assert!(
            contents.lines().any(|l| l.ends_with(file)),
            "{file} in the package:\n{contents}"
        );
    }
    assert!(
        contents.lines().all(|l| l.contains("root/root")),
        "every file is root's:\n{contents}"
    );
    let info = run("dpkg-deb", &["-I", &deb]);
    for field in [
        "Package: lbd",
        "Architecture: amd64",
        "Depends: libc6",
        "nftables",
        "postinst",
        "prerm",
        "postrm",
        "conffiles",
    ] {
        assert!(info.contains(field), "{field} in the control data:\n{info}");
    }
    let conffiles = run("dpkg-deb", &["--ctrl-tarfile", &deb]);
    assert!(!conffiles.is_empty(), "control archive readable");
    let listed = Command::new("sh")
        .args([
            "-c",
            &format!("dpkg-deb --ctrl-tarfile '{deb}' | tar -xO ./conffiles"),
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "/etc/lbd/lbd.yaml\n",
        "the configuration is a conffile"
    );
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let root = Root::new();
    root.dpkg(&["-i", &deb().to_string_lossy()]);
    let unit = root.0.join("lib/systemd/system/lbd.service");
    let text = std::fs::read_to_string(&unit).unwrap_or_else(|e| panic!("{e}"));
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=",
        "LimitMEMLOCK=infinity",
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "StateDirectory=lbd",
        "RuntimeDirectory=lbd",
    ] {
        assert!(text.contains(line), "{line} in the unit:\n{text}");
    }
    // The throwaway root holds only the package: give it what the unit
    // names from the base system (a shell, kill) and the system's units
    // (targets, slices), as on a Debian host.
    for tool in ["bin/sh", "bin/kill", "bin/cmp"] {
        let to = root.0.join(tool);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::copy(Path::new("/usr").join(tool), &to)
            .or_else(|_| std::fs::copy(Path::new("/").join(tool), &to))
            .unwrap_or_else(|e| panic!("copying /{tool}: {e}"));
    }
    for entry in std::fs::read_dir("/lib/systemd/system").unwrap_or_else(|e| panic!("{e}")) {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let to = root.0.join("lib/systemd/system").join(&name);
        if entry.path().is_file() && !to.exists() {
            let _ = std::fs::copy(entry.path(), to);
        }
    }
    let root_arg = format!("--root={}", root.0.display());
    let out = Command::new("systemd-analyze")
        .args([root_arg.as_str(), "--man=no", "verify", "lbd.service"])
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !said.contains("lbd.service"),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );
    for page in ["lbd", "lbctl"] {
        let gz = root.0.join(format!("usr/share/man/man8/{page}.8.gz"));
        let text = run("zcat", &[&gz.to_string_lossy()]);
        assert!(
            text.contains(&format!(".TH {page} 8")),
            "{page}(8) is a section-8 man page:\n{}",
            text.lines().take(5).collect::<Vec<_>>().join("\n")
        );
    }
}

#[test]
fn it_installs_upgrades_in_place_removes_and_purges_in_a_throwaway_root() {
    let root = Root::new();
    let deb = deb();
    let deb = deb.to_string_lossy();
    root.dpkg(&["-i", &deb]);
    for file in FILES {
        assert!(root.has(file), "{file} installed");
    }
    let lbd = root.0.join("usr/sbin/lbd");
    let version = run(&lbd.to_string_lossy(), &["--version"]);
    assert!(
        version.starts_with("lbd "),
        "lbd --version names lbd: {version}"
    );
    let lbctl = root.0.join("usr/bin/lbctl");
    let version = run(&lbctl.to_string_lossy(), &["--version"]);
    assert!(
        version.starts_with("lbctl "),
        "lbctl --version names lbctl: {version}"
    );
    let example = root.0.join("etc/lbd/lbd.yaml");
    run(
        &lbd.to_string_lossy(),
        &["--config", &example.to_string_lossy(), "--check"],
    );
    let status = root.dpkg(&["-s", "lbd"]);
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(status.contains("/etc/lbd/lbd.yaml"), "a conffile: {status}");

    // An edited conffile survives an upgrade (the same version again) and
    // a removal; a purge removes it and the state directory.
    std::fs::write(&example, "# edited\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(root.0.join("var/lib/lbd")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(root.0.join("var/lib/lbd/audit.log"), "{}\n").unwrap_or_else(|e| panic!("{e}"));
    root.dpkg(&["--force-confold", "-i", &deb]);
    assert_eq!(
        std::fs::read_to_string(&example).unwrap_or_default(),
        "# edited\n",
        "the edited configuration is kept"
    );
    root.dpkg(&["-r", "lbd"]);
    assert!(!root.has("/usr/sbin/lbd"), "removed");
    assert!(
        root.has("/etc/lbd/lbd.yaml"),
        "a removal keeps the configuration"
    );
    root.dpkg(&["-P", "lbd"]);
    assert!(
        !root.has("/etc/lbd/lbd.yaml"),
        "a purge removes the configuration"
    );
    assert!(!root.has("/var/lib/lbd"), "a purge removes the state");
}

#[test]
fn lintian_finds_no_error() {
    let deb = deb();
    let out = Command::new("lintian")
        .args(["--fail-on", "error", "--no-tag-display-limit"])
        .arg(&deb)
        .output()
        .unwrap_or_else(|e| panic!("lintian (installed by `cargo xtask setup`): {e}"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lintian:\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every warning left is one the README explains.
    let warnings: Vec<&str> = said.lines().filter(|l| l.starts_with("W:")).collect();
    let allowed = [
        // The XDP object is embedded in lbd as data; it is not a library.
        "embedded-library",
    ];
    let unexplained: Vec<&&str> = warnings
        .iter()
        .filter(|w| !allowed.iter().any(|a| w.contains(a)))
        .collect();
    assert!(
        unexplained.is_empty(),
        "unexplained lintian warnings:\n{said}"
    );
}
