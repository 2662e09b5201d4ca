//! Administrative changes made with `lbctl` (drain, halt, online, weight),
//! kept under `node.state_dir` so they survive restarts and reloads.
//!
//! An `lbctl` state always wins over `state:` in the file. A weight set with
//! `lbctl` holds until the file's own weight for that server changes: the
//! latest change wins. Every change carries its wall-clock time, so the two
//! nodes of a pair can merge their changes the same way.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{AdminState, Config, ServiceKind},
    sync::AdminChange,
};

/// Errors reading or writing the store.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The file could not be read or written.
    #[error("{path}: {source} (check node.state_dir: it must be a writable directory)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file is not what lbd wrote.
    #[error("{path}: unreadable admin state ({detail}); move it away to start without the saved drain/halt/weight changes")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// One server's administrative changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// State set with lbctl ("online", "drain", "halt").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Weight set with lbctl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
    /// The file's weight when the lbctl weight was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_weight: Option<u16>,
    /// Unix milliseconds of the latest change.
    pub changed_ms: u64,
}

/// The store: service name -> server name -> changes.
#[derive(Debug)]
pub struct AdminStore {
    path: PathBuf,
    entries: BTreeMap<String, BTreeMap<String, Override>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl AdminStore {
    /// Loads `STATE_DIR/admin.json` (absent: empty).
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn load(state_dir: &Path) -> Result<Self, AdminError> {
        let path = state_dir.join("admin.json");
        let entries = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| AdminError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(AdminError::Io { path, source }),
        };
        Ok(Self { path, entries })
    }

    /// An empty store that saves to `path` (tests).
    #[must_use]
    pub fn empty(path: PathBuf) -> Self {
        Self {
            path,
            entries: BTreeMap::new(),
        }
    }

    fn save(&self) -> Result<(), AdminError> {
        let io_error = |source| AdminError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io_error)?;
        }
        let text =
            serde_json::to_string_pretty(&self.entries).map_err(|e| AdminError::Corrupt {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
        crate::state_file::write_atomically(&self.path, text.as_bytes()).map_err(io_error)
    }

    /// Records a state change and saves it. Nothing changes if saving fails.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub fn set_state(
        &mut self,
        service: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), AdminError> {
        self.set_state_at(service, server, state, now_ms())
    }

    /// [`AdminStore::set_state`] with the change's time given (the pair's
    /// coordinator tests run on a fake clock).
    ///
    /// # Errors
    /// When the store cannot be written.
    pub fn set_state_at(
        &mut self,
        service: &str,
        server: &str,
        state: AdminState,
        changed_ms: u64,
    ) -> Result<(), AdminError> {
        self.change(service, server, changed_ms, |o| {
            o.state = Some(state.to_string());
        })
    }

    /// Records a weight change (with the file's weight at that time) and saves it.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub fn set_weight(
        &mut self,
        service: &str,
        server: &str,
        weight: u16,
        file_weight: u16,
    ) -> Result<(), AdminError> {
        self.change(service, server, now_ms(), |o| {
            o.weight = Some(weight);
            o.file_weight = Some(file_weight);
        })
    }

    fn change(
        &mut self,
        service: &str,
        server: &str,
        changed_ms: u64,
        f: impl FnOnce(&mut Override),
    ) -> Result<(), AdminError> {
        let before = self.entries.clone();
        let entry = self
            .entries
            .entry(service.to_owned())
            .or_default()
            .entry(server.to_owned())
            .or_default();
        f(entry);
        entry.changed_ms = changed_ms;
        if let Err(e) = self.save() {
            self.entries = before;
            return Err(e);
        }
        Ok(())
    }

    /// The changes recorded for one server.
    #[must_use]
    pub fn get(&self, service: &str, server: &str) -> Option<&Override> {
        self.entries.get(service).and_then(|s| s.get(server))
    }

    /// Every recorded change (for replication).
    #[must_use]
    pub fn entries(&self) -> &BTreeMap<String, BTreeMap<String, Override>> {
        &self.entries
    }

    /// Every recorded change, as the sync channel carries them.
    #[must_use]
    pub fn changes(&self) -> Vec<AdminChange> {
        self.entries
            .iter()
            .flat_map(|(service, servers)| {
                servers.iter().map(move |(server, o)| AdminChange {
                    service: service.clone(),
                    server: server.clone(),
                    state: o.state.clone(),
                    weight: o.weight,
                    file_weight: o.file_weight,
                    changed_ms: o.changed_ms,
                })
            })
            .collect()
    }

    /// The recorded change of one server, as the sync channel carries it.
    #[must_use]
    pub fn recorded(&self, service: &str, server: &str) -> Option<AdminChange> {
        self.changes()
            .into_iter()
            .find(|c| c.service == service && c.server == server)
    }

    /// Takes a change made on the peer if it is newer than ours (the latest
    /// change wins) and saves it. Returns whether it was taken.
    ///
    /// # Errors
    /// When the store cannot be written (nothing changes then).
    pub fn merge(&mut self, change: &AdminChange) -> Result<bool, AdminError> {
        let ours = self
            .get(&change.service, &change.server)
            .map_or(0, |o| o.changed_ms);
        if change.changed_ms <= ours {
            return Ok(false);
        }
        let before = self.entries.clone();
        self.entries
            .entry(change.service.clone())
            .or_default()
            .insert(
                change.server.clone(),
                Override {
                    state: change.state.clone(),
                    weight: change.weight,
                    file_weight: change.file_weight,
                    changed_ms: change.changed_ms,
                },
            );
        if let Err(e) = self.save() {
            self.entries = before;
            return Err(e);
        }
        Ok(true)
    }

    /// `config` with the recorded changes applied: lbctl states win; an lbctl
    /// weight wins until the file's weight differs from the one it replaced.
    /// Changes for servers no longer in `config` are dropped (and saved).
    #[must_use]
    pub fn effective(&mut self, config: &Config) -> Config {
        let mut out = config.clone();
        let mut kept: BTreeMap<String, BTreeMap<String, Override>> = BTreeMap::new();
        for service in &mut out.services {
            let ServiceKind::Forward(forward) = &mut service.kind else {
                continue;
            };
            for rs in &mut forward.real_servers {
                let Some(o) = self.get(&service.name, &rs.name).cloned() else {
                    continue;
                };
                let mut o = o;
                if let Some(state) = o.state.as_deref().and_then(|s| s.parse().ok()) {
                    rs.state = state;
                }
                match (o.weight, o.file_weight) {
                    (Some(w), Some(file)) if file == rs.weight => rs.weight = w,
                    _ => {
                        o.weight = None;
                        o.file_weight = None;
                    }
                }
                if o.state.is_some() || o.weight.is_some() {
                    kept.entry(service.name.clone())
                        .or_default()
                        .insert(rs.name.clone(), o);
                }
            }
        }
        if kept != self.entries {
            self.entries = kept;
            if let Err(e) = self.save() {
                log::warn!("{e}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(weight: u16, state: &str) -> Config {
        let yaml = format!(
            "node: {{ name: a, interface: eth0 }}\nservices:\n  - name: web\n    vip: 198.18.0.100\n    port: 80\n    real_servers:\n      - {{ name: rs1, address: 198.18.0.21, weight: {weight}, state: {state} }}\n      - {{ name: rs2, address: 198.18.0.22 }}\n"
        );
        Config::from_yaml(&yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn rs1(c: &Config) -> crate::config::RealServer {
        match &c.services[0].kind {
            ServiceKind::Forward(f) => f.real_servers[0].clone(),
            ServiceKind::Redirect(_) => panic!("forward"),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lbd-admin-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn states_survive_a_restart_and_win_over_the_file() {
        let d = dir("states");
        let mut store = AdminStore::load(&d).unwrap_or_else(|e| panic!("{e}"));
        store
            .set_state("web", "rs1", AdminState::Drain)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut again = AdminStore::load(&d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            rs1(&again.effective(&config(100, "online"))).state,
            AdminState::Drain
        );
        assert_eq!(
            rs1(&again.effective(&config(100, "halt"))).state,
            AdminState::Drain
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_lbctl_weight_holds_until_the_file_changes_it() {
        let d = dir("weights");
        let mut store = AdminStore::load(&d).unwrap_or_else(|e| panic!("{e}"));
        store
            .set_weight("web", "rs1", 10, 100)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rs1(&store.effective(&config(100, "online"))).weight, 10);
        assert_eq!(rs1(&store.effective(&config(300, "online"))).weight, 300);
        assert!(
            store.get("web", "rs1").is_none(),
            "the superseded change is dropped"
        );
        assert_eq!(rs1(&store.effective(&config(100, "online"))).weight, 100);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_latest_change_wins_between_peers() {
        let d = dir("merge");
        let mut store = AdminStore::load(&d).unwrap_or_else(|e| panic!("{e}"));
        store
            .set_state("web", "rs1", AdminState::Drain)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut older = store
            .recorded("web", "rs1")
            .unwrap_or_else(|| panic!("recorded"));
        older.state = Some("halt".into());
        older.changed_ms -= 1;
        assert!(!store.merge(&older).unwrap_or_else(|e| panic!("{e}")));
        let mut newer = older.clone();
        newer.changed_ms += 10;
        assert!(store.merge(&newer).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(
            store
                .get("web", "rs1")
                .and_then(|o| o.state.clone())
                .as_deref(),
            Some("halt")
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_file_is_reported_not_ignored() {
        let d = dir("corrupt");
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(d.join("admin.json"), "{not json").unwrap_or_else(|e| panic!("{e}"));
        let err = AdminStore::load(&d).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("move it away"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
