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
//!
//! A member of a pair also hands over its part of the pair
//! ([`crate::ha::handover`]): a master goes on as master, its relay
//! ([`super::relay`]) advertising while the new lbd starts.

use std::{
    ffi::OsString,
    os::{
        fd::{BorrowedFd, RawFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::Command,
};

use super::{relay::Relay, Daemon};
use crate::{
    ha::{handover::HandoverError, Handover, HANDOVER_ENV, RELAY_ENV},
    inherit,
};

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

/// Asks the file at `exec`'s path whether it accepts `config`; why not.
fn check(exec: &Exec, config: &Path) -> Result<(), String> {
    let check = Command::new(&exec.path)
        .arg("--config")
        .arg(config)
        .arg("--check")
        .output();
    match check {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{} --check refused the configuration ({}): {}",
            exec.path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(error) => Err(format!("cannot run {}: {error}", exec.path.display())),
    }
}

/// Executes `exec`, handing over `listeners` (name, descriptor) and `env`.
/// Returns only if it could not: why.
fn execute(exec: &Exec, listeners: &[(String, RawFd)], env: &[(&str, String)]) -> String {
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
        .envs(env.iter().map(|(k, v)| (k, v)))
        .exec();
    fds(true);
    format!("executing {}: {error}", exec.path.display())
}

/// What the lbd this one re-executed handed over of the pair.
#[derive(Debug, Default)]
pub struct HandedOver {
    /// The pair member's state.
    pub handover: Option<Handover>,
    /// The advertisement relay to stop once this lbd advertises.
    pub relay: Option<u32>,
    /// Whether this lbd was started by a re-execution (see
    /// [`was_reexecuted`]); the web console then takes its sessions over.
    pub reexecuted: bool,
}

/// Reads what the lbd this one re-executed handed over, and why the
/// hand-over could not be read if it could not (the relay is stopped all
/// the same). Forgets both, so children do not inherit them; call at
/// start, before any thread.
#[must_use]
pub fn handed_over() -> (HandedOver, Option<HandoverError>) {
    let read = std::env::var(HANDOVER_ENV)
        .ok()
        .map(|v| Handover::from_env(&v));
    let relay = std::env::var(RELAY_ENV).ok().and_then(|v| v.parse().ok());
    // SAFETY: called at start, before lbd starts any thread.
    unsafe {
        std::env::remove_var(HANDOVER_ENV);
        std::env::remove_var(RELAY_ENV);
    }
    let (handover, error) = match read {
        None => (None, None),
        Some(Ok(handover)) => (Some(handover), None),
        Some(Err(error)) => (None, Some(error)),
    };
    (
        HandedOver {
            handover,
            relay,
            reexecuted: false,
        },
        error,
    )
}

impl HandedOver {
    /// Stops the relay, now that this lbd advertises (or will not).
    pub(super) fn stop_relay(&mut self) {
        if let Some(relay) = self.relay.take().and_then(Relay::adopt) {
            relay.stop();
        }
    }
}

impl Daemon {
    /// Keeps the control, metrics and web console listeners' descriptors for
    /// a SIGUSR2 to hand over, and closes what the previous lbd handed over that this
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
        if let Some(fd) = self.web.listener {
            self.listeners
                .push((crate::web::server::INHERITED.to_owned(), fd));
        }
        let dropped = crate::inherit::drop_untaken();
        if !dropped.is_empty() {
            log::info!("closed listeners the previous lbd handed over that this configuration has not: {dropped:?}");
        }
    }

    /// Executes lbd with `listeners` and, in a pair, this member's
    /// hand-over and a master's relay (started last, as close to the exec
    /// as can be); why not.
    fn execute_with_handover(&self, listeners: &[(String, RawFd)]) -> String {
        let (handover, relay) = self.hand_over_ha().unzip();
        let relay = relay.flatten();
        let mut env = Vec::new();
        if let Some(handover) = handover {
            env.push((HANDOVER_ENV, handover.to_env()));
        }
        if let Some(relay) = relay {
            env.push((RELAY_ENV, relay.pid().to_string()));
        }
        let why = execute(&self.exec, listeners, &env);
        if let Some(relay) = relay {
            relay.stop();
        }
        why
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
        let why = match check(&self.exec, &self.config_path) {
            Err(why) => why,
            Ok(()) => {
                self.hand_over_sessions();
                // The next lbd would neither time out nor reap them.
                let ended = crate::health::end_running_checks();
                if ended > 0 {
                    log::info!("SIGUSR2: {ended} exec health checks in progress ended; the next lbd checks again");
                }
                let why = self.execute_with_handover(&listeners);
                crate::health::resume_checks();
                self.forget_handed_over_sessions();
                why
            }
        };
        self.redirects.resume();
        log::error!("SIGUSR2: not re-executed, this lbd carries on: {why}");
    }
}
