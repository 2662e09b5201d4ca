//! Starting over a data path an earlier lbd left running on the interface
//! (it crashed, or re-executed): the program and maps are taken over, the
//! control plane rebuilt from them, and the health checks start from the
//! health the data path shows, so no client moves and no server flaps. A
//! data path left on an interface the configuration no longer names is
//! detached (`STATE_DIR/interface` records the interface in use).

use std::path::{Path, PathBuf};

use anyhow::bail;
use rtnetlink::Handle;

use super::{attach_mode, Daemon};
use crate::{
    admin::AdminStore,
    balancer::{Balancer, Health},
    config::Config,
    dataplane::{self, EbpfMaps, Found, Program, TakenOver},
    neighbour, state_file,
};

/// `STATE_DIR/interface`: the interface lbd's data path is attached to.
fn record(state_dir: &Path) -> PathBuf {
    state_dir.join("interface")
}

/// Detaches the data path an earlier lbd left on another interface than
/// `interface` (the configuration moved), if that interface still has it.
pub(super) async fn retire_elsewhere(handle: &Handle, state_dir: &Path, interface: &str) {
    let Ok(text) = std::fs::read_to_string(record(state_dir)) else {
        return;
    };
    let old = text.trim();
    if old.is_empty() || old == interface {
        return;
    }
    let Ok(found) = neighbour::interface(handle, old).await else {
        return;
    };
    match dataplane::retire(handle, found.index, old).await {
        Ok(true) => log::warn!(
            "detached the data path an earlier lbd left on {old}: the configuration now names {interface}"
        ),
        Ok(false) => {}
        Err(error) => log::error!(
            "the data path an earlier lbd left on {old} stays attached: {error}; \
             `ip link set dev {old} xdp off` detaches it"
        ),
    }
}

/// Records `interface` as the one lbd's data path is attached to.
pub(super) fn record_interface(state_dir: &Path, interface: &str) {
    if let Err(error) = state_file::write_atomically(&record(state_dir), interface.as_bytes()) {
        log::warn!(
            "cannot record the interface in {}: {error} (a later start on another interface \
             would not detach this one's data path)",
            record(state_dir).display()
        );
    }
}

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

/// Whether a program attached at `hook` is what `mode` asks for.
fn fits(hook: dataplane::Hook, mode: crate::config::XdpMode) -> bool {
    use crate::config::XdpMode;
    match mode {
        XdpMode::Auto => true,
        XdpMode::Native => hook == dataplane::Hook::Driver,
        XdpMode::Generic => hook == dataplane::Hook::Generic,
    }
}

impl Daemon {
    /// Attaches the program: in place of the running one, if it was loaded
    /// over one (in one step), else afresh.
    pub(super) async fn attach(&mut self, config: &Config) -> anyhow::Result<()> {
        let replacing = self.program.predecessor().map(|p| p.same_program);
        let hook = self
            .program
            .attach(
                &self.handle,
                self.ifindex,
                &config.node.interface,
                attach_mode(config.node.xdp_mode),
            )
            .await?;
        self.attach_mode = hook.name();
        if replacing.is_some() && !fits(hook, config.node.xdp_mode) {
            log::warn!(
                "node.xdp_mode is {:?} but the running data path is attached in {} mode, \
                 where it stays (a take-over never detaches it); to change the mode, stop lbd \
                 cleanly and start it again (forwarding stops for that moment)",
                config.node.xdp_mode,
                hook.name()
            );
        }
        record_interface(&config.node.state_dir, &config.node.interface);
        match replacing {
            Some(true) => log::info!("the running XDP program handed over to this lbd's copy of it (the same program), in one step"),
            Some(false) => log::info!("the running XDP program replaced by this lbd's, in one step"),
            None => {}
        }
        Ok(())
    }
}
