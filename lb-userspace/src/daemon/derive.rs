//! What the daemon derives from a configuration: the addresses it holds,
//! the health checks and redirect listeners it runs, the attach mode, and
//! the summary of a file the audit log records, the VIPs a starting lbd
//! keeps, and a secondary's kept services.

use std::{collections::BTreeSet, net::Ipv4Addr};

use super::{cluster, HandedOver};
use crate::{
    config::{Config, ServiceKind, XdpMode},
    dataplane::AttachMode,
    health::CheckTarget,
    redirect::RedirectSpec,
};

/// The attach mode of `node.xdp_mode`.
pub(super) fn attach_mode(mode: XdpMode) -> AttachMode {
    match mode {
        XdpMode::Native => AttachMode::Native,
        XdpMode::Generic => AttachMode::Generic,
        XdpMode::Auto => AttachMode::Auto,
    }
}

/// Every address lbd holds for the configuration: the VIPs (forwarding and
/// redirect services) and the SNAT addresses the file names (floating like
/// the VIPs, so a backup taking over receives the servers' replies; one the
/// host has already is left alone, see [`crate::vip::Vips::set`]).
pub(super) fn wanted_vips(config: &Config) -> BTreeSet<Ipv4Addr> {
    let snat = config.services.iter().filter_map(|s| match &s.kind {
        ServiceKind::Forward(f) if f.forwarding == crate::config::Forwarding::Snat => {
            f.snat_address
        }
        _ => None,
    });
    config.services.iter().map(|s| s.vip).chain(snat).collect()
}

/// Every (service, real server) with its health check.
pub(super) fn check_targets(config: &Config) -> Vec<CheckTarget> {
    let mut targets = Vec::new();
    for service in &config.services {
        let ServiceKind::Forward(forward) = &service.kind else {
            continue;
        };
        for rs in &forward.real_servers {
            targets.push(CheckTarget {
                service: service.name.clone(),
                server: rs.name.clone(),
                address: rs.address,
                check: forward.health_check.clone(),
            });
        }
    }
    targets
}

/// The redirect services of the configuration.
pub(super) fn redirect_specs(config: &Config) -> Vec<RedirectSpec> {
    config
        .services
        .iter()
        .filter_map(|s| match &s.kind {
            ServiceKind::Redirect(r) => Some(RedirectSpec {
                service: s.name.clone(),
                vip: s.vip,
                port: s.port,
                code: r.code,
                scheme: r.scheme.clone(),
                target_port: r.port,
            }),
            ServiceKind::Forward(_) => None,
        })
        .collect()
}

/// A configuration text as the audit log shows it: its SHA-256 and size
/// (the file itself is kept where it was applied from).
pub(super) fn config_summary(text: &str) -> serde_json::Value {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let hex = digest.iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    });
    serde_json::json!({"sha256": hex, "bytes": text.len()})
}

/// The VIPs a starting lbd keeps: a single node taking over a running data
/// path keeps its VIPs, and so does a master re-executed; any other member
/// of a pair starts as backup, without them.
pub(super) fn vips_to_keep(
    config: &Config,
    taking_over: bool,
    handed_over: &HandedOver,
) -> BTreeSet<Ipv4Addr> {
    let resumes_master = handed_over.handover.as_ref().is_some_and(|h| {
        config
            .cluster
            .as_ref()
            .is_some_and(|c| h.coordinator.master && h.coordinator.vrid == c.vrid)
    });
    if taking_over && (config.cluster.is_none() || resumes_master) {
        wanted_vips(config)
    } else {
        BTreeSet::new()
    }
}

/// On a secondary: the services of the primary's configuration it kept.
pub(super) fn secondary_services(config: &Config) -> Option<Vec<crate::config::Service>> {
    let cluster = config.cluster.as_ref()?;
    if cluster.role != crate::config::Role::Secondary {
        return None;
    }
    let path = cluster::replicated_path(&config.node.state_dir);
    let text = std::fs::read_to_string(&path).ok()?;
    match Config::from_yaml(&text, &path.display().to_string()) {
        Ok(primary) => Some(primary.services),
        Err(errors) => {
            log::warn!("ignoring the kept configuration of the primary: {errors}");
            None
        }
    }
}
