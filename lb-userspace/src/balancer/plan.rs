//! What a configuration change would do before it is applied: for each
//! service, the share of clients the new Maglev ring would move.

use super::{ring_for, Balancer, Health, RealState};
use crate::{
    config::{Config, ServiceKind},
    dataplane::Maps,
    maglev,
};

/// For each forwarding service of `next` that exists in `current`, the share
/// of client addresses whose real server would change (by the ring alone;
/// clients with live affinity entries keep theirs on a real apply).
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
    out
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
    }
}
