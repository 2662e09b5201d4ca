//! The control socket's requests, answered from the daemon's state: status,
//! admin changes (recorded first, then applied, then replicated), apply,
//! affinity, plan and ha.

use serde_json::{json, Value};

use super::Daemon;
use crate::{
    audit::Actor,
    balancer,
    config::{AdminState, Config, ServiceKind},
    control::protocol::{
        AdminReport, AffinityReport, Answer, ApplyReport, PlanReport, PlanService, Request,
    },
    monotonic_ns, state_file,
};

impl Daemon {
    /// Answers one request from `actor` (an `lbctl` caller). Only the
    /// changing requests (drain, halt, online, weight, apply) change
    /// anything, and each lands in the audit log.
    pub(super) async fn handle_request(
        &mut self,
        request: Request,
        actor: &Actor,
    ) -> Result<Answer, String> {
        match request {
            Request::Status => self
                .status()
                .map(|s| Answer::Status(Box::new(s)))
                .map_err(|e| format!("{e:#}")),
            Request::SetState {
                service,
                server,
                state,
            } => self
                .set_state(&service, &server, state, actor)
                .map(Answer::Admin),
            Request::Weight {
                service,
                server,
                weight,
            } => self
                .set_weight(&service, &server, weight, actor)
                .map(Answer::Admin),
            Request::Apply { file, text } => self
                .apply_request(&file, &text, actor)
                .await
                .map(Answer::Apply),
            Request::Affinity { service, client } => {
                let a = self
                    .balancer
                    .affinity_of(&service, client, monotonic_ns())
                    .map_err(|e| e.to_string())?;
                Ok(Answer::Affinity(AffinityReport {
                    service,
                    client,
                    server: a.server,
                    source: a.source,
                    age_s: a.age_s,
                }))
            }
            Request::Connections { service, server } => self
                .connections(&service, server.as_deref())
                .map(Answer::Connections),
            Request::Plan { file, text } => {
                let next = Config::from_yaml(&text, &file).map_err(|e| e.to_string())?;
                let next = self.admin.effective(&next);
                let services = balancer::plan(&self.balancer, &next)
                    .into_iter()
                    .map(|(name, moved_share)| PlanService {
                        removed: !next
                            .services
                            .iter()
                            .any(|s| s.name == name && matches!(s.kind, ServiceKind::Forward(_))),
                        name,
                        moved_share,
                    })
                    .collect();
                Ok(Answer::Plan(PlanReport { services }))
            }
            Request::Ha => Ok(Answer::Ha(Box::new(self.ha_status()))),
            Request::UserAdd { name, role, hash } => self.user_add(&name, role, &hash, actor),
            Request::UserDel { name } => self.user_del(&name, actor),
        }
    }

    /// The file's weight for a server, if it exists.
    pub(super) fn file_weight(&self, service: &str, server: &str) -> Result<u16, String> {
        let Some(s) = self.config.service(service) else {
            return Err(balancer::BalancerError::UnknownService(service.to_owned()).to_string());
        };
        let ServiceKind::Forward(f) = &s.kind else {
            return Err(balancer::BalancerError::RedirectService(service.to_owned()).to_string());
        };
        f.real_servers
            .iter()
            .find(|r| r.name == server)
            .map(|r| r.weight)
            .ok_or_else(|| {
                balancer::BalancerError::UnknownServer {
                    service: service.to_owned(),
                    server: server.to_owned(),
                }
                .to_string()
            })
    }

    /// A real server's admin state and weight as they are now, for the
    /// audit log.
    fn server_now(&self, service: &str, server: &str) -> Value {
        self.balancer
            .service(service)
            .ok()
            .and_then(|s| s.reals.iter().find(|r| r.name == server))
            .map_or(
                Value::Null,
                |r| json!({"admin_state": r.admin.to_string(), "weight": r.weight}),
            )
    }

    /// `lbctl drain|halt|online`: recorded first (so it survives a restart),
    /// then applied.
    fn set_state(
        &mut self,
        service: &str,
        server: &str,
        admin: AdminState,
        actor: &Actor,
    ) -> Result<AdminReport, String> {
        self.file_weight(service, server)?;
        if let Some(why) = self.refuse_admin() {
            return Err(why);
        }
        let before = self.server_now(service, server);
        self.admin
            .set_state(service, server, admin)
            .map_err(|e| format!("{e}; nothing changed"))?;
        self.balancer
            .set_admin_state(service, server, admin)
            .map_err(|e| e.to_string())?;
        self.publish_census_key();
        self.replicate_admin(service, server);
        let after = self.server_now(service, server);
        self.audit.record(
            actor,
            &format!("{admin} {service}/{server}"),
            &before,
            &after,
        );
        Ok(AdminReport {
            service: service.to_owned(),
            server: server.to_owned(),
            admin_state: Some(admin),
            weight: None,
        })
    }

    /// `lbctl weight`: recorded first, then applied.
    fn set_weight(
        &mut self,
        service: &str,
        server: &str,
        weight: u16,
        actor: &Actor,
    ) -> Result<AdminReport, String> {
        let file_weight = self.file_weight(service, server)?;
        if let Some(why) = self.refuse_admin() {
            return Err(why);
        }
        let before = self.server_now(service, server);
        self.admin
            .set_weight(service, server, weight, file_weight)
            .map_err(|e| format!("{e}; nothing changed"))?;
        self.balancer
            .set_weight(service, server, weight)
            .map_err(|e| e.to_string())?;
        self.replicate_admin(service, server);
        let after = self.server_now(service, server);
        self.audit.record(
            actor,
            &format!("weight {service}/{server} {weight}"),
            &before,
            &after,
        );
        Ok(AdminReport {
            service: service.to_owned(),
            server: server.to_owned(),
            admin_state: None,
            weight: Some(weight),
        })
    }

    /// `lbctl apply`: validate, apply, then save over the file lbd was
    /// started with (so a restart or SIGHUP keeps it). All or nothing: if
    /// applying or saving fails, the configuration in force before is
    /// applied again and the file is left as it was.
    async fn apply_request(
        &mut self,
        file: &str,
        text: &str,
        actor: &Actor,
    ) -> Result<ApplyReport, String> {
        if let Some(why) = self.refuse_apply() {
            return Err(why);
        }
        let before = super::config_summary(&self.config_text);
        let next = Config::from_yaml(text, file).map_err(|e| e.to_string())?;
        let previous = self.config.clone();
        let note = match self.apply(next).await {
            Ok(note) => note,
            Err(error) => {
                self.restore(previous).await;
                return Err(format!("applying failed: {error:#}; nothing changed"));
            }
        };
        if let Err(error) = state_file::write_atomically(&self.config_path, text.as_bytes()) {
            self.restore(previous).await;
            return Err(format!(
                "cannot save the configuration to {}: {error}; the previous configuration is in force again",
                self.config_path.display()
            ));
        }
        text.clone_into(&mut self.config_text);
        self.replicate_config();
        log::info!("configuration applied from {file}{note}");
        self.audit.record(
            actor,
            &format!("apply {file}"),
            &before,
            &super::config_summary(text),
        );
        Ok(ApplyReport {
            applied: true,
            note: note.trim_start_matches("; ").to_owned(),
        })
    }
}
