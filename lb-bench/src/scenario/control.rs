//! The control-plane figures gathered: Maglev tables and large
//! configurations ([`super::apply`]), the maps at many clients
//! ([`super::memory`]), and `lbctl drain` to the map change ([`super::drain`]).

use anyhow::Result;

use crate::{
    options::Options,
    scenario::{
        apply::{apply_big, maglev_build_ms, ApplyRow},
        memory::affinity_memory,
    },
    signal::check_stop,
};

/// The configuration sizes of the control-plane figures (services x servers).
const CONTROL_SIZES: [(usize, usize); 3] = [(64, 100), (40, 100), (64, 63)];
/// Affinity entries written for the memory figure (full run).
const AFFINITY_FILL: u32 = 1_000_000;

/// The control-plane figures.
#[derive(Clone, Debug, Default)]
pub(crate) struct ControlPlane {
    /// (services, servers, ms) for building every Maglev table, pure.
    pub(crate) maglev: Vec<(usize, usize, f64)>,
    /// One row per configuration size.
    pub(crate) apply: Vec<ApplyRow>,
    /// Milliseconds from `lbctl drain`/`online` start to the map change.
    pub(crate) drain_ms: Vec<f64>,
    /// lbctl's own wall time per call.
    pub(crate) lbctl_ms: Vec<f64>,
    /// Bytes locked per map of `lb_xdp` (name, bytes).
    pub(crate) memlock: Vec<(String, u64)>,
    /// Affinity entries written and how long it took.
    pub(crate) affinity_fill: (u32, f64),
    /// Whether the first of them still answers after the fill.
    pub(crate) first_entry_kept: bool,
}

/// Maglev tables, large configurations, and the maps at many clients.
pub(crate) fn control_plane(
    opts: &Options,
    control: &mut ControlPlane,
    errors: &mut Vec<String>,
) -> Result<()> {
    for (s, r) in CONTROL_SIZES {
        control.maglev.push((s, r, maglev_build_ms(s, r)));
        match apply_big(s, r) {
            Ok(row) => control.apply.push(row),
            Err(e) => errors.push(format!("{s} x {r}: {e:#}")),
        }
        check_stop()?;
    }
    match affinity_memory(if opts.quick { 100_000 } else { AFFINITY_FILL }) {
        Ok((memlock, fill, kept)) => {
            control.memlock = memlock;
            control.affinity_fill = fill;
            control.first_entry_kept = kept;
        }
        Err(e) => errors.push(format!("affinity memory: {e:#}")),
    }
    check_stop()
}
