//! The web console's side of the daemon's loop: starting its listener,
//! answering its calls from the daemon's state, sampling the charts, and
//! `lbctl user`.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

use super::Daemon;
use crate::{
    audit::Actor,
    balancer,
    config::{AdminState, ServiceKind},
    control::protocol::{Answer, Request, UserReport},
    limits::ConnectionGate,
    web::{
        self,
        history::{Counters, History, STEP_S},
        overview::{self, Held},
        routes::Console,
        server,
        tls::Identity,
        users::{self, Role, Users},
        Action, Call, Overview, Preview,
    },
};

/// The changes the console shows.
const AUDIT_SHOWN: usize = 20;

/// The console's state in the daemon.
#[derive(Default)]
pub(super) struct WebState {
    /// The running console, if `node.web` is configured.
    console: Option<Arc<Console>>,
    /// The charts' data.
    history: History,
    /// The last sample's time and `flood_*` total.
    flood_seen: Option<(u64, u64)>,
    /// `flood_*` decisions per second over the last sample.
    flood_per_s: f64,
    /// Without a console, the calls' sender is kept here so the loop's
    /// receiver waits instead of ending.
    idle: Option<mpsc::Sender<Call>>,
    /// The console's listening socket, handed over on SIGUSR2.
    pub(super) listener: Option<std::os::fd::RawFd>,
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Daemon {
    /// Starts the console when `node.web` is configured: its certificate,
    /// its users file checked, its listener. Returns the calls it will make.
    pub(super) async fn start_web(
        &mut self,
    ) -> anyhow::Result<(mpsc::Receiver<Call>, Option<JoinHandle<()>>)> {
        let (tx, rx) = mpsc::channel(64);
        let Some(cfg) = self.config.node.web.clone() else {
            self.web.idle = Some(tx);
            return Ok((rx, None));
        };
        match Users::load(&cfg.users_file) {
            Ok(users) if users.all().is_empty() => log::warn!(
                "web console: no users yet in {}; add the first with: lbctl user add NAME --role admin",
                cfg.users_file.display()
            ),
            Ok(_) => {}
            Err(e) => anyhow::bail!("node.web.users_file: {e}"),
        }
        let identity = Identity::load(cfg.tls.as_ref(), &self.config.node.state_dir, cfg.listen)
            .context("node.web.tls")?;
        log::info!(
            "web console: https://{}/ (certificate {}, SHA-256 fingerprint {})",
            cfg.listen,
            identity.cert_path.display(),
            identity.fingerprint
        );
        let acceptor = TlsAcceptor::from(identity.server_config()?);
        let listener = server::bind(cfg.listen).await?;
        self.web.listener = Some(std::os::fd::AsRawFd::as_raw_fd(&listener));
        let console = Console::new(
            &self.config.node.name,
            cfg.users_file.clone(),
            Duration::from_secs(u64::from(cfg.session_timeout_s)),
            tx,
        );
        let gate = ConnectionGate::new(web::CAPS, Arc::clone(&self.budget));
        let task = tokio::spawn(server::serve(
            listener,
            acceptor,
            Arc::clone(&console),
            gate,
        ));
        self.take_over_sessions(&console);
        self.web.console = Some(console);
        Ok((rx, Some(task)))
    }

    /// The file a SIGUSR2 hands the console's sessions over in, so people
    /// stay signed in across an upgrade (mode 0600; read and removed by the
    /// next lbd at once).
    fn sessions_file(&self) -> std::path::PathBuf {
        self.config.node.state_dir.join("web-sessions.json")
    }

    /// Before a re-execution: the console's sessions, for the next lbd.
    pub(super) fn hand_over_sessions(&self) {
        let Some(console) = &self.web.console else {
            return;
        };
        let saved = console.export_sessions();
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::state_file::write_atomically(&self.sessions_file(), &bytes));
        if let Err(e) = written {
            log::warn!(
                "SIGUSR2: the web console's sessions cannot be handed over ({e}): people sign in again"
            );
        }
    }

    /// After a failed re-execution: the handed-over sessions are not needed.
    pub(super) fn forget_handed_over_sessions(&self) {
        let _ = std::fs::remove_file(self.sessions_file());
    }

    /// At start: the sessions a re-executed lbd handed over (a start that
    /// is not a re-execution begins with none, and removes a stale file).
    fn take_over_sessions(&self, console: &Console) {
        let path = self.sessions_file();
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let _ = std::fs::remove_file(&path);
        if !self.handed_over.reexecuted {
            return;
        }
        match serde_json::from_slice::<Vec<web::sessions::Saved>>(&bytes) {
            Ok(saved) => {
                log::info!("web console: {} sessions taken over", saved.len());
                console.import_sessions(saved);
            }
            Err(e) => log::warn!(
                "web console: the handed-over sessions are unreadable ({e}); people sign in again"
            ),
        }
    }

    /// Answers one of the console's calls.
    pub(super) async fn on_web_call(&mut self, call: Call) {
        match call {
            Call::Overview(reply) => {
                let _ = reply.send(self.overview());
            }
            Call::History {
                service,
                server,
                reply,
            } => {
                let _ = reply.send(self.web.history.series(&service, &server).or_else(|| {
                    self.file_weight(&service, &server)
                        .ok()
                        .map(|_| web::history::Series {
                            service,
                            server,
                            step_s: STEP_S,
                            points: Vec::new(),
                            marks: Vec::new(),
                        })
                }));
            }
            Call::Preview {
                service,
                server,
                action,
                weight,
                reply,
            } => {
                let _ = reply.send(self.preview(&service, &server, action, weight));
            }
            Call::Change {
                user,
                request,
                reply,
            } => {
                let changing = matches!(request, Request::SetState { .. } | Request::Weight { .. });
                let answer = if changing {
                    self.handle_request(request, &Actor::Web(user)).await
                } else {
                    Err("the console changes admin states and weights only".into())
                };
                let _ = reply.send(answer);
            }
        }
    }

    fn overview(&self) -> Overview {
        let status = match self.status() {
            Ok(s) => s,
            Err(e) => {
                log::error!("web console: status: {e:#}");
                return Overview {
                    status: self.empty_status(),
                    can_change: false,
                    refusal: Some(format!("{e:#}")),
                    problems: Vec::new(),
                    audit: Vec::new(),
                };
            }
        };
        let refusal = self.refuse_admin();
        Overview {
            problems: overview::problems(&status, self.web.flood_per_s),
            status,
            can_change: refusal.is_none(),
            refusal,
            audit: self.audit.tail(AUDIT_SHOWN),
        }
    }

    /// A status with nothing in it, for when the maps cannot be read.
    fn empty_status(&self) -> crate::control::protocol::StatusReport {
        crate::control::protocol::StatusReport {
            node: self.config.node.name.clone(),
            ha: self.ha_status(),
            interface: self.config.node.interface.clone(),
            xdp_mode: self.attach_mode.to_owned(),
            vips: Vec::new(),
            affinity_entries: 0,
            services: Vec::new(),
            dataplane: std::collections::BTreeMap::new(),
        }
    }

    /// What `action` on `service/server` would do: the clients it holds,
    /// and the share of new clients that would move, computed as
    /// `lbctl plan` computes it.
    fn preview(
        &self,
        service: &str,
        server: &str,
        action: Action,
        weight: Option<u16>,
    ) -> Result<Preview, String> {
        self.file_weight(service, server)?;
        let state = self.balancer.service(service).map_err(|e| e.to_string())?;
        let real = state
            .reals
            .iter()
            .find(|r| r.name == server)
            .ok_or_else(|| format!("no real server {server:?} in service {service:?}"))?;
        if action == Action::Weight && weight.is_none() {
            return Err("a weight preview needs weight=".into());
        }
        let held = Held {
            server: server.to_owned(),
            active_clients: self
                .census()
                .per_real
                .get(&real.index)
                .copied()
                .unwrap_or(0),
            active_connections: self.connections_of(state, real.index),
            weight: real.weight,
        };
        let (admin, new_weight) = match action {
            Action::Drain => (Some(AdminState::Drain), None),
            Action::Halt => (Some(AdminState::Halt), None),
            Action::Online => (Some(AdminState::Online), None),
            Action::Weight => (None, weight),
        };
        let moved_share = balancer::plan_change(&self.balancer, service, server, admin, new_weight)
            .map_err(|e| e.to_string())?;
        Ok(Preview {
            service: service.to_owned(),
            server: server.to_owned(),
            action,
            active_clients: held.active_clients,
            active_connections: held.active_connections,
            moved_share,
            summary: overview::summary(action, &held, weight, moved_share),
            refused: self.refuse_admin(),
        })
    }

    /// Every [`STEP_S`]: a sample of every real server for the charts, and
    /// the rate of `flood_*` decisions.
    pub(super) fn sample_history(&mut self) {
        let now = unix_now();
        let snapshot = self.snapshot();
        for service in &snapshot.services {
            for r in &service.reals {
                let c = Counters {
                    packets: r.packets,
                    bytes: r.bytes,
                    active_clients: r.active_clients,
                };
                self.web.history.record(now, &service.name, &r.name, c);
            }
        }
        let config = &self.config;
        self.web.history.retain(|service, server| {
            config.service(service).is_some_and(|s| match &s.kind {
                ServiceKind::Forward(f) => f.real_servers.iter().any(|r| r.name == server),
                ServiceKind::Redirect(_) => false,
            })
        });
        let flood: u64 = snapshot
            .reasons
            .iter()
            .filter(|(name, _)| name.starts_with("flood_"))
            .map(|(_, n)| n)
            .sum();
        self.web.flood_per_s = match self.web.flood_seen {
            #[allow(clippy::cast_precision_loss)]
            Some((t, n)) if now > t => flood.saturating_sub(n) as f64 / (now - t) as f64,
            _ => 0.0,
        };
        self.web.flood_seen = Some((now, flood));
    }

    /// Marks a health change on the server's chart.
    pub(super) fn mark_health(&mut self, service: &str, server: &str, up: bool, detail: &str) {
        self.web
            .history
            .mark(unix_now(), service, server, up, detail);
    }

    /// `lbctl user add`: written to `node.web.users_file` (audited; the
    /// user's sessions end, so a new role or password applies at once).
    pub(super) fn user_add(
        &mut self,
        name: &str,
        role: Role,
        hash: &str,
        actor: &Actor,
    ) -> Result<Answer, String> {
        let path = self.users_file()?;
        let before = users::add_to_file(&path, name, role, hash)
            .map_err(|e| format!("{e}; nothing changed"))?;
        self.end_sessions(name);
        self.audit.record(
            actor,
            &format!("user add {name}"),
            &before.map_or(serde_json::Value::Null, |r| serde_json::json!({"role": r})),
            &serde_json::json!({"role": role}),
        );
        Ok(Answer::User(UserReport::added(name, before, role, &path)))
    }

    /// `lbctl user del`.
    pub(super) fn user_del(&mut self, name: &str, actor: &Actor) -> Result<Answer, String> {
        let path = self.users_file()?;
        let gone =
            users::remove_from_file(&path, name).map_err(|e| format!("{e}; nothing changed"))?;
        self.end_sessions(name);
        self.audit.record(
            actor,
            &format!("user del {name}"),
            &serde_json::json!({"role": gone}),
            &serde_json::Value::Null,
        );
        Ok(Answer::User(UserReport::removed(name, &path)))
    }

    fn users_file(&self) -> Result<std::path::PathBuf, String> {
        self.config
            .node
            .web
            .as_ref()
            .map(|w| w.users_file.clone())
            .ok_or_else(|| {
                "this lbd has no web console (node.web is not configured); add node.web, or \
                 pass --users-file PATH to write a users file directly"
                    .to_owned()
            })
    }

    fn end_sessions(&self, name: &str) {
        if let Some(c) = &self.web.console {
            c.end_user(name);
        }
    }
}
