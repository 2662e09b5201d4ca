//! The audit log: every administrative change, appended to
//! `STATE_DIR/audit.log` as one JSON object a line, and logged.
//!
//! A line says when (UTC, RFC 3339), who (the Unix user of the `lbctl`
//! caller, taken from the control socket's peer credentials; the peer node;
//! or lbd itself on a reload), by which way (`lbctl`, `peer`, `reload`),
//! what, and the state before and after. Lines are appended with one
//! `write` each to a file opened with `O_APPEND` and synced, so a crash
//! leaves at most a torn last line, never a lost earlier one.

use std::{
    fs::OpenOptions,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::Serialize;
use serde_json::Value;

/// Who made a change, and by which way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// An `lbctl` caller: its Unix user name (or `uid N` without one).
    Lbctl(String),
    /// The peer node of the pair, by its name.
    Peer(String),
    /// A user signed in to the web console, by their console user name.
    Web(String),
    /// lbd itself, applying its configuration file (SIGHUP or start).
    Reload,
}

impl Actor {
    /// The `lbctl` caller with Unix user id `uid`.
    #[must_use]
    pub fn lbctl_user(uid: u32) -> Self {
        Self::Lbctl(user_name(uid).unwrap_or_else(|| format!("uid {uid}")))
    }

    fn who(&self) -> &str {
        match self {
            Self::Lbctl(user) | Self::Web(user) => user,
            Self::Peer(node) => node,
            Self::Reload => "lbd",
        }
    }

    fn via(&self) -> &'static str {
        match self {
            Self::Lbctl(_) => "lbctl",
            Self::Peer(_) => "peer",
            Self::Web(_) => "web",
            Self::Reload => "reload",
        }
    }
}

/// One line of the log.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    who: &'a str,
    via: &'a str,
    what: &'a str,
    before: &'a Value,
    after: &'a Value,
}

/// `STATE_DIR/audit.log`.
#[derive(Clone, Debug)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The log under `state_dir` (created on the first change).
    #[must_use]
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("audit.log"),
        }
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one change and logs it. A failure to write is logged as an
    /// error (the change itself has been made and stands).
    pub fn record(&self, actor: &Actor, what: &str, before: &Value, after: &Value) {
        log::info!(
            "audit: {} ({}): {what}: {before} -> {after}",
            actor.who(),
            actor.via()
        );
        if let Err(error) = self.append(actor, what, before, after) {
            log::error!(
                "audit: could not append to {}: {error} (check node.state_dir: it must be a writable directory)",
                self.path.display()
            );
        }
    }

    /// The last `n` changes, newest first, as written (a torn or unreadable
    /// line is skipped). Reads the file's tail only.
    #[must_use]
    pub fn tail(&self, n: usize) -> Vec<Value> {
        use std::io::{Read as _, Seek as _, SeekFrom};
        /// Enough bytes for the last changes of any sensible `n`.
        const TAIL_BYTES: u64 = 256 * 1024;
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let len = file.metadata().map_or(0, |m| m.len());
        let start = len.saturating_sub(TAIL_BYTES);
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        let text = String::from_utf8_lossy(&bytes);
        let lines = text.lines().skip(usize::from(start > 0));
        let mut out: Vec<Value> = lines.filter_map(|l| serde_json::from_str(l).ok()).collect();
        out.reverse();
        out.truncate(n);
        out
    }

    fn append(&self, actor: &Actor, what: &str, before: &Value, after: &Value) -> io::Result<()> {
        let line = Line {
            time: now_rfc3339(),
            who: actor.who(),
            via: actor.via(),
            what,
            before,
            after,
        };
        let mut bytes = serde_json::to_vec(&line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(&bytes)?;
        file.sync_data()
    }
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// The name of Unix user `uid`, from the system's user database.
fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_is_one_json_line_with_who_what_before_and_after() {
        let dir = std::env::temp_dir().join(format!("lbd-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = AuditLog::new(&dir);
        log.record(
            &Actor::lbctl_user(0),
            "drain web/rs1",
            &serde_json::json!({"admin_state": "online"}),
            &serde_json::json!({"admin_state": "drain"}),
        );
        log.record(
            &Actor::Peer("lb2".into()),
            "halt web/rs2",
            &Value::Null,
            &serde_json::json!({"admin_state": "halt"}),
        );
        let text = std::fs::read_to_string(log.path()).unwrap_or_else(|e| panic!("{e}"));
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["who"], "root");
        assert_eq!(lines[0]["via"], "lbctl");
        assert_eq!(lines[0]["what"], "drain web/rs1");
        assert_eq!(lines[0]["before"]["admin_state"], "online");
        assert_eq!(lines[0]["after"]["admin_state"], "drain");
        assert!(
            lines[0]["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{}",
            lines[0]["time"]
        );
        assert_eq!(lines[1]["who"], "lb2");
        assert_eq!(lines[1]["via"], "peer");
        log.record(
            &Actor::Web("alice".into()),
            "online web/rs2",
            &Value::Null,
            &Value::Null,
        );
        let tail = log.tail(2);
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[0]["who"], "alice");
        assert_eq!(tail[0]["via"], "web");
        assert_eq!(tail[1]["what"], "halt web/rs2");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
