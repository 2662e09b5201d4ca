//! SIGUSR2: lbd executes the file now at the path it was started from (a
//! package upgrade put a new one there) in its own process, so its PID,
//! and systemd's tracking of it, stay. The data path is not touched: the
//! new lbd takes it over as after a crash (maps, ids, rings, health), and
//! its listeners (control socket, metrics, redirect services) are handed
//! over open ([`crate::inherit`]), so no client meets a closed port.
//!
//! A re-execution that cannot work never stops lbd: the new file is first
//! asked to validate the configuration (`--check`), and an `execve` the
//! kernel refuses leaves this lbd running and says why. A new binary that
//! exits during its start leaves the data path forwarding; the next start
//! (systemd restarts lbd) takes it over.

use std::{
    ffi::OsString,
    os::{
        fd::{BorrowedFd, RawFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::Command,
};

use super::Daemon;
use crate::inherit;

/// What lbd was started as: the file's path and the arguments.
#[derive(Clone, Debug)]
pub struct Exec {
    path: PathBuf,
    args: Vec<OsString>,
}

/// How long redirect connections get to finish their request before the
/// re-execution closes them.
pub(super) const HANDOVER_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

/// The environment variable that tells a starting lbd it was re-executed.
pub const REEXEC_ENV: &str = "LBD_REEXECUTED";

impl Exec {
    /// Records the running binary's path and arguments (at start: after a
    /// package upgrade replaced the file, the process's own link names the
    /// old, deleted one).
    #[must_use]
    pub fn at_start() -> Self {
        let path = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/sbin/lbd"));
        Self {
            path,
            args: std::env::args_os().skip(1).collect(),
        }
    }

    /// The path executed on SIGUSR2.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether this lbd was started by a re-execution (and forgets it, so its
/// children do not inherit the mark).
#[must_use]
pub fn was_reexecuted() -> bool {
    let marked = std::env::var_os(REEXEC_ENV).is_some();
    // SAFETY: called at start, before lbd starts any thread.
    unsafe { std::env::remove_var(REEXEC_ENV) };
    marked
}

/// Executes `exec` with `config`, handing over `listeners` (name,
/// descriptor). Returns only if it could not: why.
pub(super) fn reexecute(exec: &Exec, config: &Path, listeners: &[(String, RawFd)]) -> String {
    let check = Command::new(&exec.path)
        .arg("--config")
        .arg(config)
        .arg("--check")
        .output();
    match check {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return format!(
                "{} --check refused the configuration ({}): {}",
                exec.path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        }
        Err(error) => return format!("cannot run {}: {error}", exec.path.display()),
    }
    let fds = |on: bool| {
        for (_, fd) in listeners {
            // SAFETY: the daemon holds these listeners open while it runs.
            let borrowed = unsafe { BorrowedFd::borrow_raw(*fd) };
            inherit::set_cloexec(borrowed, on);
        }
    };
    fds(false);
    log::info!(
        "SIGUSR2: executing {} (same process); the data path keeps forwarding",
        exec.path.display()
    );
    let error = Command::new(&exec.path)
        .args(&exec.args)
        .env(inherit::LISTEN_FDS_ENV, inherit::env_value(listeners))
        .env(REEXEC_ENV, "1")
        .exec();
    fds(true);
    format!("executing {}: {error}", exec.path.display())
}

impl Daemon {
    /// Keeps the control and metrics listeners' descriptors for a SIGUSR2
    /// to hand over, and closes what the previous lbd handed over that this
    /// configuration does not use.
    pub(super) fn record_listeners(
        &mut self,
        control: &tokio::net::UnixListener,
        metrics: &tokio::net::TcpListener,
    ) {
        use std::os::fd::AsRawFd as _;
        self.listeners = vec![
            ("control".to_owned(), control.as_raw_fd()),
            ("metrics".to_owned(), metrics.as_raw_fd()),
        ];
        let dropped = crate::inherit::drop_untaken();
        if !dropped.is_empty() {
            log::info!("closed listeners the previous lbd handed over that this configuration has not: {dropped:?}");
        }
    }

    /// SIGUSR2: executes the binary at lbd's path in this process; returns
    /// only if that could not be done, having said why.
    pub(super) async fn reexecute(&mut self) {
        // Redirect connections end after their request; new ones wait in
        // the listening sockets' queues for the next lbd.
        let open = self.redirects.hand_over(HANDOVER_BOUND).await;
        if open > 0 {
            log::warn!(
                "SIGUSR2: {open} redirect connections still busy are closed by the re-execution"
            );
        }
        let mut listeners = self.listeners.clone();
        listeners.extend(self.redirects.listening());
        let why = reexecute(&self.exec, &self.config_path, &listeners);
        self.redirects.resume();
        log::error!("SIGUSR2: not re-executed, this lbd carries on: {why}");
    }
}
