//! What a configuration change would do before it is applied: for each
//! service, the share of clients the new Maglev ring would move.

use super::{ring_for, Balancer, BalancerError, Health, RealState};
use crate::{
    config::{AdminState, Config, ServiceKind},
    dataplane::Maps,
    maglev,
};

/// For each forwarding service of `next`, and each of `current` that `next`
/// no longer forwards, the share of client addresses whose real server
/// would change (by the ring alone; clients with live affinity entries keep
/// theirs on a real apply): all of them for a new or a removed service.
#[must_use]
pub fn plan<M: Maps>(current: &Balancer<M>, next: &Config) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for service in &next.services {
        let ServiceKind::Forward(forward) = &service.kind else {
            continue;
        };
        let Ok(state) = current.service(&service.name) else {
            out.push((service.name.clone(), 1.0));
            continue;
        };
        // Ring entries name servers by address here, so both rings compare.
        let by_address = |reals: &[RealState]| -> Vec<u32> {
            let keyed: Vec<RealState> = reals
                .iter()
                .map(|r| RealState {
                    index: u32::from(r.address),
                    ..r.clone()
                })
                .collect();
            ring_for(&keyed)
        };
        let before = by_address(&state.reals);
        let after_reals: Vec<RealState> = forward
            .real_servers
            .iter()
            .map(|rs| {
                let previous = state.reals.iter().find(|r| r.address == rs.address);
                RealState {
                    index: 0,
                    name: rs.name.clone(),
                    address: rs.address,
                    weight: rs.weight,
                    admin: previous.map_or(rs.state, |p| p.admin),
                    health: previous.map_or(Health::Up, |p| p.health),
                    // A server new to the service is planned as resolved:
                    // by the time clients reach it, it will have answered ARP
                    // (or lbd warns that it did not).
                    mac: previous.map_or(Some([0; 6]), |p| p.mac),
                    routed: forward.forwarding != crate::config::Forwarding::Dr,
                }
            })
            .collect();
        let after = by_address(&after_reals);
        out.push((service.name.clone(), maglev::moved_share(&before, &after)));
    }
    for gone in current.services() {
        if !out.iter().any(|(name, _)| *name == gone.config.name) {
            out.push((gone.config.name.clone(), 1.0));
        }
    }
    out
}

/// The share of `service`'s client addresses whose real server would
/// change if `server` took the admin state `admin` or the weight `weight`
/// (the console's confirmation), computed as [`plan`] computes it.
///
/// # Errors
/// When the service or the server does not exist.
pub fn plan_change<M: Maps>(
    current: &Balancer<M>,
    service: &str,
    server: &str,
    admin: Option<AdminState>,
    weight: Option<u16>,
) -> Result<f64, BalancerError> {
    let state = current.service(service)?;
    if !state.reals.iter().any(|r| r.name == server) {
        return Err(BalancerError::UnknownServer {
            service: service.to_owned(),
            server: server.to_owned(),
        });
    }
    let after: Vec<RealState> = state
        .reals
        .iter()
        .map(|r| {
            if r.name == server {
                RealState {
                    admin: admin.unwrap_or(r.admin),
                    weight: weight.unwrap_or(r.weight),
                    ..r.clone()
                }
            } else {
                r.clone()
            }
        })
        .collect();
    Ok(maglev::moved_share(
        &ring_for(&state.reals),
        &ring_for(&after),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{balancer, config, THREE};
    use super::*;

    #[test]
    fn plan_reports_the_moved_share() {
        let b = balancer(&THREE);
        let same = plan(&b, &config(&THREE));
        assert_eq!(same, vec![("web".to_owned(), 0.0)]);
        let fewer = plan(&b, &config(&THREE[..2]));
        let share = fewer[0].1;
        assert!(
            (0.30..0.40).contains(&share),
            "removing 1 of 3 moves about a third: {share}"
        );
        let mut none = config(&THREE);
        none.services.clear();
        assert_eq!(
            plan(&b, &none),
            vec![("web".to_owned(), 1.0)],
            "a removed service moves every client"
        );
    }

    #[test]
    fn a_change_of_one_server_moves_its_share() {
        let b = balancer(&THREE);
        let rs1 = THREE[0].0;
        let drain = plan_change(&b, "web", rs1, Some(AdminState::Drain), None);
        assert!(
            drain.as_ref().is_ok_and(|s| (0.30..0.40).contains(s)),
            "draining 1 of 3 moves about a third: {drain:?}"
        );
        assert_eq!(
            plan_change(&b, "web", rs1, Some(AdminState::Online), None).ok(),
            Some(0.0)
        );
        let half = plan_change(&b, "web", rs1, None, Some(50));
        assert!(
            half.as_ref().is_ok_and(|s| *s > 0.0 && *s < 0.34),
            "{half:?}"
        );
        assert!(plan_change(&b, "web", "nobody", None, None).is_err());
    }
}
