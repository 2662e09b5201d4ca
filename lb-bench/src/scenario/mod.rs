//! What the bench measures, one module per figure: the traffic comparison
//! and the systems it starts, the per-packet cost, the control plane (large
//! configurations, map memory, `lbctl drain`), a real server's death, a
//! flood of spoofed sources and the HA pair's failover.

pub(crate) mod apply;
pub(crate) mod census;
pub(crate) mod control;
pub(crate) mod drain;
pub(crate) mod flood;
pub(crate) mod ha;
pub(crate) mod health;
pub(crate) mod memory;
pub(crate) mod packet;
pub(crate) mod systems;
pub(crate) mod traffic;
