//! Starting over a data path an earlier lbd left running on the interface
//! (it crashed, or re-executed): the program and maps are taken over, the
//! control plane rebuilt from them, and the health checks start from the
//! health the data path shows, so no client moves and no server flaps.

use anyhow::bail;
use rtnetlink::Handle;

use crate::{
    admin::AdminStore,
    balancer::{Balancer, Health},
    config::Config,
    dataplane::{self, EbpfMaps, Found, Program, TakenOver},
};

/// Loads lbd's program, over the data path running on `ifindex` if there
/// is one. Returns it and whether a running data path was taken over.
///
/// # Errors
/// When another program is attached to the interface (lbd never replaces
/// it), or the program cannot be loaded.
pub(super) async fn load_data_path(
    handle: &Handle,
    ifindex: u32,
    interface: &str,
) -> anyhow::Result<(Program, bool)> {
    let running = match dataplane::find_running(handle, ifindex).await? {
        Found::Nothing => None,
        Found::Foreign { prog_id, name } => bail!(
            "{interface} has an XDP program attached that is not lbd's ({name:?}, id {prog_id}): \
             lbd neither replaces nor removes it; `ip link set dev {interface} xdp off` detaches it"
        ),
        Found::Ours(running) => Some(running),
    };
    let taking_over = running.is_some();
    let (program, taken) = Program::load_over(running)?;
    log_takeover(interface, &program, &taken);
    Ok((program, taking_over))
}

/// Rebuilds the control plane from the running data path for `config`
/// (with the recorded lbctl changes). Returns the health of every server
/// found, for the checks to start from.
///
/// # Errors
/// When the maps cannot be read or written.
pub(super) fn take_over(
    balancer: &mut Balancer<EbpfMaps>,
    admin: &AdminStore,
    config: &Config,
) -> anyhow::Result<Vec<((String, String), Health)>> {
    let report = balancer.take_over(&admin.effective(config))?;
    let down = if report.down.is_empty() {
        String::new()
    } else {
        format!(
            "; down there, and kept down until their checks pass: {:?}",
            report.down
        )
    };
    let removed = if report.removed == 0 {
        String::new()
    } else {
        format!(
            "; {} services the file no longer has removed",
            report.removed
        )
    };
    log::info!(
        "took over {} services and {} real servers from the running data path{down}{removed}",
        report.services,
        report.servers,
    );
    Ok(report.health)
}

/// Says what a start over a running data path took over, and what it lost.
fn log_takeover(interface: &str, program: &Program, taken: &TakenOver) {
    if program.predecessor().is_none() {
        return;
    }
    let layout = taken
        .layout
        .map_or_else(|| "unknown".to_owned(), |l| l.to_string());
    log::info!(
        "{interface}: taking over the data path an earlier lbd left running (layout {layout}): \
         maps kept with every entry: {}",
        taken.maps.join(", ")
    );
    if !taken.carried.is_empty() {
        log::warn!(
            "{interface}: the running data path has layout {layout}, this lbd {}: carried over \
             into the new layout: {}",
            lb_common::LAYOUT_VERSION,
            taken.carried.join(", ")
        );
    }
    if !taken.lost.is_empty() {
        log::warn!(
            "{interface}: maps of the running data path (layout {layout}) this lbd (layout {}) \
             cannot use or carry over: {}; they start empty (if the affinity table is among \
             them, clients whose server is not their ring choice may move)",
            lb_common::LAYOUT_VERSION,
            taken.lost.join(", ")
        );
    }
}
