//! The `exec` check: runs a program with the server in its environment
//! (`LB_SERVER_ADDRESS`, `LB_SERVER_PORT`, `LB_SERVICE`, `LB_SERVER_NAME`)
//! and passes on exit status 0; on timeout its whole process group is killed.
//! Checks running when lbd executes itself (SIGUSR2) are ended first
//! ([`end_running_checks`]): the next lbd would neither time them out nor
//! reap them.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{is_local, timed_out, LocalError, Outcome, ProbeSpec, ProbeTarget};

/// At most this many bytes of an exec check's standard error are kept for
/// the failure reason.
const MAX_STDERR: usize = 4096;

/// Longest reason taken from an exec check's standard error, in characters.
const MAX_STDERR_LINE: usize = 200;

/// The exec checks running now.
struct Running {
    /// Each check's program (the leader of its process group), and whether
    /// [`end_running_checks`] ended it.
    groups: BTreeMap<i32, bool>,
    /// Set from [`end_running_checks`] to [`resume_checks`]: no check starts.
    ending: bool,
}

static RUNNING: Mutex<Running> = Mutex::new(Running {
    groups: BTreeMap::new(),
    ending: false,
});

fn running() -> MutexGuard<'static, Running> {
    RUNNING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Just before lbd executes itself: kills every exec check's process group
/// and reaps its program, and starts no other until [`resume_checks`].
/// A check so ended reports a local error (never counted) if lbd carries
/// on. Returns how many were ended.
#[must_use = "lbd logs how many checks it ended"]
pub fn end_running_checks() -> usize {
    let mut running = running();
    running.ending = true;
    for (group, ended) in &mut running.groups {
        *ended = true;
        // SAFETY: killpg(2) only sends a signal, to the group this check's
        // program leads.
        unsafe { libc::killpg(*group, libc::SIGKILL) };
    }
    // All killed first: they die together, each reap waits for no other.
    for group in running.groups.keys() {
        reap(*group);
    }
    running.groups.len()
}

/// lbd did not execute itself after all: checks start again.
pub fn resume_checks() {
    running().ending = false;
}

/// Reaps `pid`, killed a moment ago, waiting at most 100 ms for it to die
/// (it may have been reaped already: then there is nothing to do).
fn reap(pid: i32) {
    for _ in 0..100 {
        let mut status = 0;
        // SAFETY: waitpid(2) with WNOHANG writes the status and never blocks.
        match unsafe { libc::waitpid(pid, &raw mut status, libc::WNOHANG) } {
            0 => std::thread::sleep(Duration::from_millis(1)),
            _ => return,
        }
    }
}

/// Runs the exec check's program in its own process group; on timeout the
/// whole group is killed and the program reaped. The check is complete when
/// the program has exited and its standard error is closed.
pub(super) async fn exec_probe(
    command: &[String],
    check: &ProbeSpec,
    target: &ProbeTarget,
) -> Result<Outcome, LocalError> {
    let Some((program, args)) = command.split_first() else {
        return Ok(Err("no command configured".to_owned()));
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("LB_SERVER_ADDRESS", target.address.to_string())
        .env("LB_SERVER_PORT", check.port.to_string())
        .env("LB_SERVICE", &target.service)
        .env("LB_SERVER_NAME", &target.server)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // Started and listed at once, so that an ending re-execution finds it.
    let (spawned, mut group) = {
        let mut running = running();
        if running.ending {
            return Err(LocalError("lbd is executing itself (SIGUSR2)".to_owned()));
        }
        let spawned = command.spawn();
        let group = spawned
            .as_ref()
            .ok()
            .and_then(tokio::process::Child::id)
            .and_then(|pid| i32::try_from(pid).ok());
        if let Some(group) = group {
            running.groups.insert(group, false);
        }
        (spawned, GroupKiller(group))
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if is_local(&e) => return Err(LocalError(format!("cannot run {program} now: {e}"))),
        Err(e) => return Ok(Err(format!("cannot run {program}: {e}"))),
    };
    let stderr = child.stderr.take();
    let finished = tokio::time::timeout(check.timeout, async {
        tokio::join!(child.wait(), read_tail(stderr, MAX_STDERR))
    })
    .await;
    let Ok(done) = finished else {
        group.kill();
        // Kills the program if it still runs, and reaps it.
        let _ = child.kill().await;
        return Ok(Err(timed_out(check.timeout)));
    };
    if group.disarm() {
        return Err(LocalError(
            "ended when lbd executed itself (SIGUSR2)".to_owned(),
        ));
    }
    Ok(match done {
        (Ok(status), _) if status.success() => Ok("exit 0".to_owned()),
        (Ok(status), stderr) => Err(describe_exit(status, &stderr)),
        (Err(e), _) => Err(format!("waiting for {program}: {e}")),
    })
}

/// Kills an exec check's process group, at the latest when dropped (the
/// probe was cancelled), unless disarmed once the program has finished.
/// The program itself is then killed and reaped by tokio (`kill_on_drop`).
struct GroupKiller(Option<i32>);

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(group) = self.0.take() {
            running().groups.remove(&group);
            // SAFETY: killpg(2) only sends a signal; `group` is the process
            // group that this check's program leads (`process_group(0)`).
            unsafe { libc::killpg(group, libc::SIGKILL) };
        }
    }

    /// The program has finished: nothing to kill. Whether
    /// [`end_running_checks`] ended it.
    fn disarm(&mut self) -> bool {
        self.0
            .take()
            .and_then(|group| running().groups.remove(&group))
            .unwrap_or(false)
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `limit` bytes a reader gives until it closes.
async fn read_tail<R: AsyncRead + Unpin>(reader: Option<R>, limit: usize) -> Vec<u8> {
    let Some(mut reader) = reader else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0_u8; 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > limit {
                    kept.drain(..kept.len() - limit);
                }
            }
        }
    }
    kept
}

/// "exit 1" or "killed by signal 9", with the last line of standard error.
fn describe_exit(status: ExitStatus, stderr: &[u8]) -> String {
    let mut detail = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    };
    let text = String::from_utf8_lossy(stderr);
    if let Some(line) = text.lines().map(str::trim).rfind(|l| !l.is_empty()) {
        detail.push_str(": ");
        detail.extend(line.chars().take(MAX_STDERR_LINE));
    }
    detail
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::HealthCheck;
    use crate::health::testing::{exec, failed, passed, run};

    #[tokio::test]
    async fn exec_check_passes_on_exit_0_and_fails_otherwise() {
        passed(&run(&exec("true", 2000)).await, "exit 0");
        failed(&run(&exec("false", 2000)).await, "exit 1");
        failed(
            &run(&exec(
                "echo starting; echo 'db unreachable' >&2; exit 3",
                2000,
            ))
            .await,
            "exit 3: db unreachable",
        );
        let missing = HealthCheck {
            command: vec!["/nonexistent/check".to_owned()],
            ..exec("", 2000)
        };
        let r = run(&missing).await;
        assert!(
            r.detail.starts_with("cannot run /nonexistent/check: "),
            "{}",
            r.detail
        );
        let empty = HealthCheck {
            command: Vec::new(),
            ..exec("", 2000)
        };
        failed(&run(&empty).await, "no command configured");
    }

    #[tokio::test]
    async fn exec_check_gets_the_server_in_its_environment() {
        let script = r#"test "$LB_SERVER_ADDRESS" = 127.0.0.1 && test "$LB_SERVER_PORT" = 8080 &&
                        test "$LB_SERVICE" = svc && test "$LB_SERVER_NAME" = rs1"#;
        passed(&run(&exec(script, 2000)).await, "exit 0");
        failed(
            &run(&exec(r#"test "$LB_SERVER_ADDRESS" = 10.9.9.9"#, 2000)).await,
            "exit 1",
        );
    }

    fn gone_or_zombie(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn exec_check_past_its_timeout_is_killed_with_its_children_and_reaped() {
        let dir = std::env::temp_dir();
        let own = dir.join(format!("lbd-health-own-{}", std::process::id()));
        let kid = dir.join(format!("lbd-health-kid-{}", std::process::id()));
        let script = format!(
            "sleep 30 & echo $! > {kid}; echo $$ > {own}; wait",
            kid = kid.display(),
            own = own.display()
        );
        let started = std::time::Instant::now();
        let r = run(&exec(&script, 300)).await;
        failed(&r, "timed out after 300 ms");
        assert!(started.elapsed() < Duration::from_secs(5));
        let own_pid = std::fs::read_to_string(&own).unwrap();
        let kid_pid = std::fs::read_to_string(&kid).unwrap();
        // The program itself is our child: it must be killed and reaped.
        assert!(
            !std::path::Path::new(&format!("/proc/{}", own_pid.trim())).exists(),
            "the check's program is still there"
        );
        // Its child is adopted by init once killed, and reaped there.
        let mut killed = false;
        for _ in 0..50 {
            if gone_or_zombie(kid_pid.trim()) {
                killed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(killed, "the check's child survived the timeout");
        let _ = std::fs::remove_file(own);
        let _ = std::fs::remove_file(kid);
    }
}
