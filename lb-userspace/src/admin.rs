//! Administrative changes made with `lbctl` (drain, halt, online, weight),
//! kept under `node.state_dir` so they survive restarts and reloads.
//!
//! An `lbctl` state always wins over `state:` in the file. A weight set with
//! `lbctl` holds until the file's own weight for that server changes: the
//! latest change wins.
//!
//! "Latest" is a hybrid logical clock, not a bare wall clock: every change
//! carries a stamp ([`Override::seq`]) that is its wall-clock millisecond or,
//! if that is not later, one more than any stamp this node has made or taken
//! from the peer; the node that made it breaks ties. A change made after
//! seeing another is therefore always the later one, whatever the two clocks
//! say: ten minutes of skew or an NTP step cannot make a node reject a newer
//! change, and both nodes order every pair of changes the same way. Only
//! changes made on both sides of a partition without seeing each other are
//! ordered by their clocks, as well as the clocks allow.
//!
//! Reading the store changes nothing: [`AdminStore::effective`] only
//! computes, and records are dropped only by [`AdminStore::adopt`], once a
//! configuration has been applied.

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
    /// Unix milliseconds of the latest change (for people; never compared).
    pub changed_ms: u64,
    /// The change's place in the pair's order (hybrid logical clock, in
    /// milliseconds: see the module's documentation).
    #[serde(default)]
    pub seq: u64,
    /// The node that made the change: the tie-break between equal `seq`.
    #[serde(default)]
    pub origin: String,
}

impl Override {
    /// The order in which changes to one server win: the later wins.
    fn order(&self) -> (u64, &str) {
        (self.seq, &self.origin)
    }
}

type Entries = BTreeMap<String, BTreeMap<String, Override>>;

/// `admin.json`: the logical clock and the records.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    /// The highest stamp this node has made or taken.
    clock: u64,
    /// Service name -> server name -> changes.
    servers: Entries,
}

/// The store: service name -> server name -> changes.
#[derive(Debug)]
pub struct AdminStore {
    path: PathBuf,
    /// This node's name, recorded as the origin of its changes.
    origin: String,
    clock: u64,
    entries: Entries,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl AdminStore {
    /// Loads `STATE_DIR/admin.json` (absent: empty) for node `origin`.
    /// A file of an earlier lbd (the records without the clock) is read too.
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed (an empty file, as
    /// a power loss can leave, included).
    pub fn load(state_dir: &Path, origin: &str) -> Result<Self, AdminError> {
        let path = state_dir.join("admin.json");
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => parse_store(&text).map_err(|detail| AdminError::Corrupt {
                path: path.clone(),
                detail,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => StoreFile::default(),
            Err(source) => return Err(AdminError::Io { path, source }),
        };
        let clock = file
            .servers
            .values()
            .flat_map(BTreeMap::values)
            .map(|o| o.seq)
            .fold(file.clock, u64::max);
        Ok(Self {
            path,
            origin: origin.to_owned(),
            clock,
            entries: file.servers,
        })
    }

    /// [`AdminStore::load`], but an unreadable file (as a power loss can
    /// leave) does not stop lbd: it is moved aside and the store starts
    /// empty, with a message saying so and what to do.
    ///
    /// # Errors
    /// When the file cannot be read, or cannot be moved aside.
    pub fn load_or_set_aside(
        state_dir: &Path,
        origin: &str,
    ) -> Result<(Self, Option<String>), AdminError> {
        match Self::load(state_dir, origin) {
            Ok(store) => Ok((store, None)),
            Err(AdminError::Corrupt { path, detail }) => {
                let aside = path.with_extension(format!("json.unreadable-{}", now_ms() / 1000));
                std::fs::rename(&path, &aside).map_err(|source| AdminError::Io {
                    path: path.clone(),
                    source,
                })?;
                let store = Self::load(state_dir, origin)?;
                Ok((
                    store,
                    Some(format!(
                        "{}: unreadable admin state ({detail}); moved to {} and started without \
                         the saved drain/halt/weight changes: check `lbctl status` and drain or \
                         halt again what should be (in a pair, the peer's changes come back \
                         with the sync link)",
                        path.display(),
                        aside.display()
                    )),
                ))
            }
            Err(error) => Err(error),
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
        let file = StoreFile {
            clock: self.clock,
            servers: self.entries.clone(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| AdminError::Corrupt {
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

    /// [`AdminStore::set_state`] with the change's wall-clock time given
    /// (the pair's coordinator tests run on a fake clock; the time is only
    /// recorded, never compared).
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
        let (before, clock) = (self.entries.clone(), self.clock);
        self.clock = changed_ms.max(self.clock + 1);
        let entry = self
            .entries
            .entry(service.to_owned())
            .or_default()
            .entry(server.to_owned())
            .or_default();
        f(entry);
        entry.changed_ms = changed_ms;
        entry.seq = self.clock;
        entry.origin.clone_from(&self.origin);
        if let Err(e) = self.save() {
            (self.entries, self.clock) = (before, clock);
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
                    seq: o.seq,
                    origin: o.origin.clone(),
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

    /// Takes a change made on the peer if it is later than ours in the
    /// pair's order (its stamp, then its node's name) and saves it; our
    /// clock moves up to its stamp, so our next change is later still. Returns whether it was taken.
    ///
    /// # Errors
    /// When the store cannot be written (nothing changes then).
    pub fn merge(&mut self, change: &AdminChange) -> Result<bool, AdminError> {
        let theirs = (change.seq, change.origin.as_str());
        if let Some(ours) = self.get(&change.service, &change.server) {
            if theirs <= ours.order() {
                return Ok(false);
            }
        }
        let (before, clock) = (self.entries.clone(), self.clock);
        self.clock = self.clock.max(change.seq);
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
                    seq: change.seq,
                    origin: change.origin.clone(),
                },
            );
        if let Err(e) = self.save() {
            (self.entries, self.clock) = (before, clock);
            return Err(e);
        }
        Ok(true)
    }

    /// `config` with the recorded changes applied: lbctl states win; an lbctl
    /// weight wins while the file's weight is the one it replaced. Changes
    /// nothing (`lbctl plan` and `lbd --check` use it too).
    #[must_use]
    pub fn effective(&self, config: &Config) -> Config {
        let mut out = config.clone();
        for service in &mut out.services {
            let ServiceKind::Forward(forward) = &mut service.kind else {
                continue;
            };
            for rs in &mut forward.real_servers {
                let Some(o) = self.get(&service.name, &rs.name) else {
                    continue;
                };
                if let Some(state) = o.state.as_deref().and_then(|s| s.parse().ok()) {
                    rs.state = state;
                }
                if let (Some(w), Some(file)) = (o.weight, o.file_weight) {
                    if file == rs.weight {
                        rs.weight = w;
                    }
                }
            }
        }
        out
    }

    /// After `config` has been applied: forgets lbctl weights the file has
    /// since changed (the file's change is the later one), and saves. States,
    /// and the records of servers the file no longer has, are kept: a server
    /// that comes back keeps its drain or halt. Returns the records dropped.
    ///
    /// # Errors
    /// When the store cannot be written (nothing changes then).
    pub fn adopt(&mut self, config: &Config) -> Result<Vec<(String, String)>, AdminError> {
        let before = self.entries.clone();
        let mut dropped = Vec::new();
        for service in &config.services {
            let ServiceKind::Forward(forward) = &service.kind else {
                continue;
            };
            let Some(servers) = self.entries.get_mut(&service.name) else {
                continue;
            };
            for rs in &forward.real_servers {
                let Some(o) = servers.get_mut(&rs.name) else {
                    continue;
                };
                if o.file_weight.is_some_and(|file| file != rs.weight) {
                    o.weight = None;
                    o.file_weight = None;
                    dropped.push((service.name.clone(), rs.name.clone()));
                    if o.state.is_none() {
                        servers.remove(&rs.name);
                    }
                }
            }
        }
        self.entries.retain(|_, servers| !servers.is_empty());
        if dropped.is_empty() {
            return Ok(dropped);
        }
        if let Err(e) = self.save() {
            self.entries = before;
            return Err(e);
        }
        Ok(dropped)
    }
}

/// `admin.json` as this lbd writes it, or as an earlier one did (the
/// records alone).
fn parse_store(text: &str) -> Result<StoreFile, String> {
    if text.trim().is_empty() {
        return Err("the file is empty (a power loss during a write can leave it so)".into());
    }
    match serde_json::from_str::<StoreFile>(text) {
        Ok(file) => Ok(file),
        // An earlier lbd's file: its wall-clock times become the stamps.
        Err(error) => serde_json::from_str::<Entries>(text)
            .map(|mut servers| {
                for o in servers.values_mut().flat_map(BTreeMap::values_mut) {
                    o.seq = o.changed_ms;
                }
                StoreFile { clock: 0, servers }
            })
            .map_err(|_| error.to_string()),
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
        let mut store = AdminStore::load(&d, "a").unwrap_or_else(|e| panic!("{e}"));
        store
            .set_state("web", "rs1", AdminState::Drain)
            .unwrap_or_else(|e| panic!("{e}"));
        let again = AdminStore::load(&d, "a").unwrap_or_else(|e| panic!("{e}"));
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
        let mut store = AdminStore::load(&d, "a").unwrap_or_else(|e| panic!("{e}"));
        store
            .set_weight("web", "rs1", 10, 100)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rs1(&store.effective(&config(100, "online"))).weight, 10);
        assert_eq!(rs1(&store.effective(&config(300, "online"))).weight, 300);
        assert!(store.get("web", "rs1").is_some(), "looking changes nothing");
        let dropped = store
            .adopt(&config(300, "online"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dropped, vec![("web".to_owned(), "rs1".to_owned())]);
        assert!(
            store.get("web", "rs1").is_none(),
            "the superseded change is dropped once the file is applied"
        );
        assert_eq!(rs1(&store.effective(&config(100, "online"))).weight, 100);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_latest_change_wins_between_peers() {
        let d = dir("merge");
        let mut store = AdminStore::load(&d, "a").unwrap_or_else(|e| panic!("{e}"));
        store
            .set_state("web", "rs1", AdminState::Drain)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut older = store
            .recorded("web", "rs1")
            .unwrap_or_else(|| panic!("recorded"));
        older.state = Some("halt".into());
        older.seq -= 1;
        older.origin = "b".into();
        // Ten minutes ahead on the wall clock, and still the older change.
        older.changed_ms += 600_000;
        assert!(!store.merge(&older).unwrap_or_else(|e| panic!("{e}")));
        let mut newer = older.clone();
        newer.seq += 1;
        // The same counter: the node's name decides ("b" after "a").
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
    fn a_change_made_after_taking_the_peers_wins_whatever_the_clocks_say() {
        let d = dir("lamport");
        let mut store = AdminStore::load(&d, "a").unwrap_or_else(|e| panic!("{e}"));
        // The peer's change, its clock ten minutes ahead of ours.
        let theirs = AdminChange {
            service: "web".into(),
            server: "rs1".into(),
            state: Some("halt".into()),
            weight: None,
            file_weight: None,
            changed_ms: 1_700_000_600_000,
            seq: 1_700_000_600_000,
            origin: "b".into(),
        };
        assert!(store.merge(&theirs).unwrap_or_else(|e| panic!("{e}")));
        // Ours, afterwards, by our clock ten minutes behind: it is later.
        store
            .set_state_at("web", "rs1", AdminState::Online, 1_700_000_000_000)
            .unwrap_or_else(|e| panic!("{e}"));
        let ours = store
            .recorded("web", "rs1")
            .unwrap_or_else(|| panic!("recorded"));
        assert!(ours.seq > theirs.seq, "{} after {}", ours.seq, theirs.seq);
        // The peer takes it; our own change does not come back from it.
        let mut peer = AdminStore::load(&dir("lamport-b"), "b").unwrap_or_else(|e| panic!("{e}"));
        assert!(peer.merge(&theirs).unwrap_or_else(|e| panic!("{e}")));
        assert!(peer.merge(&ours).unwrap_or_else(|e| panic!("{e}")));
        assert!(!store.merge(&theirs).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(
            peer.get("web", "rs1")
                .and_then(|o| o.state.clone())
                .as_deref(),
            Some("online")
        );
        // The clock survives a restart, also once the records are gone.
        let again = AdminStore::load(&d, "a").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.clock, ours.seq);
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(dir("lamport-b"));
    }

    #[test]
    fn effective_writes_nothing_and_keeps_the_records_of_servers_not_in_the_file() {
        let d = dir("dry");
        let mut store = AdminStore::load(&d, "a").unwrap_or_else(|e| panic!("{e}"));
        store
            .set_state("web", "gone", AdminState::Drain)
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .set_weight("web", "rs1", 10, 100)
            .unwrap_or_else(|e| panic!("{e}"));
        let saved = std::fs::read(d.join("admin.json")).unwrap_or_else(|e| panic!("{e}"));
        let _ = store.effective(&config(300, "online"));
        assert_eq!(
            std::fs::read(d.join("admin.json")).unwrap_or_else(|e| panic!("{e}")),
            saved
        );
        store
            .adopt(&config(100, "online"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(store.get("web", "gone").is_some(), "kept for its return");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_of_an_earlier_lbd_is_read() {
        let d = dir("old");
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            d.join("admin.json"),
            r#"{"web": {"rs1": {"state": "drain", "changed_ms": 5}}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let store = AdminStore::load(&d, "a").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            store
                .get("web", "rs1")
                .and_then(|o| o.state.clone())
                .as_deref(),
            Some("drain")
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_empty_file_is_reported_with_what_to_do() {
        let d = dir("empty");
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(d.join("admin.json"), "").unwrap_or_else(|e| panic!("{e}"));
        let err = AdminStore::load(&d, "a").map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        assert!(err.to_string().contains("move it away"), "{err}");
        // lbd itself goes on: the file is kept aside, the store is empty.
        let (store, warning) =
            AdminStore::load_or_set_aside(&d, "a").unwrap_or_else(|e| panic!("{e}"));
        assert!(store.entries().is_empty());
        let warning = warning.unwrap_or_else(|| panic!("a warning"));
        assert!(warning.contains("moved to"), "{warning}");
        assert!(!d.join("admin.json").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_file_is_reported_not_ignored() {
        let d = dir("corrupt");
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(d.join("admin.json"), "{not json").unwrap_or_else(|e| panic!("{e}"));
        let err = AdminStore::load(&d, "a").map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("move it away"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
