//! `bench/results.json`: every run and every figure, for other tools.

use serde_json::{json, Value};

use super::Target;
use crate::{
    options::{System, Workload},
    run::Findings,
    scenario::{flood::RealTraffic, traffic::RunResult},
    stats::summarise,
};

impl RunResult {
    fn json(&self, round: usize) -> Value {
        json!({
            "round": round, "system": self.system.key(), "workload": self.workload.key(),
            "requests": self.requests, "duration_s": self.duration_s, "rate": self.rate(),
            "errors": self.errors, "error_detail": self.error_detail,
            "p50_us": self.p50_us, "p99_us": self.p99_us,
            "machine_cpu_s": self.machine_cpu_s, "lb_cpu_s": self.lb_cpu_s,
            "xdp_cpu_s": self.xdp_cpu_s, "process_cpu_s": self.process_cpu_s,
            "syn_retransmits": self.syn_retransmits, "load_after": self.load_after,
        })
    }
}

pub(super) fn findings_json(f: &Findings, targets: &[Target]) -> Value {
    let systems: Vec<Value> = System::ALL
        .iter()
        .map(|sys| {
            let workloads: serde_json::Map<String, Value> = Workload::ALL
                .iter()
                .map(|w| {
                    let s = summarise(&f.runs, *sys, *w);
                    (
                        w.key().to_string(),
                        json!({"runs": s.runs, "requests": s.requests, "errors": s.errors,
                               "rate": s.rate, "p50_us": s.p50_us, "p99_us": s.p99_us,
                               "lb_cpu_s_per_m": s.lb_cpu_per_m, "xdp_cpu_s_per_m": s.xdp_cpu_per_m,
                               "process_cpu_s_per_m": s.process_cpu_per_m, "machine_cpu_s_per_m": s.machine_cpu_per_m}),
                    )
                })
                .collect();
            json!({"system": sys.key(), "name": sys.name(), "workloads": workloads})
        })
        .collect();
    json!({
        "quick": f.opts.quick,
        "rounds": f.opts.rounds,
        "machine": {"nproc": f.machine.nproc, "kernel": f.machine.kernel, "cpu": f.machine.cpu,
                    "load_before": f.machine.load_before, "load_after": f.machine.load_after, "date": f.machine.date},
        "systems": systems,
        "runs": f.runs.iter().map(|(round, r)| r.json(*round)).collect::<Vec<_>>(),
        "packet_cost": match &f.costs {
            Ok(c) => json!(c.iter().map(|c| json!({"name": c.name, "repeat": c.repeat, "ns": c.ns, "floor_ns": c.floor_ns, "ratio": c.ratio, "bare_ratio": if c.bare_ratio.is_nan() { None } else { Some(c.bare_ratio) }})).collect::<Vec<_>>()),
            Err(e) => json!({"error": e}),
        },
        "control": {
            "maglev_ms": f.control.maglev.iter().map(|(s, r, t)| json!({"services": s, "servers": r, "ms": t})).collect::<Vec<_>>(),
            "apply": f.control.apply.iter().map(|row| match &row.result {
                Ok((a, b)) => json!({"services": row.services, "servers": row.servers, "parse_ms": row.parse_ms, "apply_ms": a, "reapply_ms": b}),
                Err(e) => json!({"services": row.services, "servers": row.servers, "parse_ms": row.parse_ms, "error": e}),
            }).collect::<Vec<_>>(),
            "drain_to_map_ms": f.control.drain_ms,
            "lbctl_ms": f.control.lbctl_ms,
            "memlock": f.control.memlock.iter().map(|(n, b)| json!({"map": n, "bytes": b})).collect::<Vec<_>>(),
            "affinity_entries": f.control.affinity_fill.0,
            "errors": f.control_errors,
        },
        "health": match &f.health {
            Ok(h) => json!({"victim": h.victim, "clients": h.clients, "first_moved_ms": h.first_moved_ms, "all_moved_ms": h.all_moved_ms, "settings": h.settings}),
            Err(e) => json!({"error": e}),
        },
        "flood": flood_json(f),
        "census": match &f.census {
            Ok(c) => json!({"entries": c.entries, "fill_s": c.fill_s,
                            "single_cpu_pct": c.single_cpu_pct, "single_counted_s": c.single_counted_s,
                            "master_cpu_pct": c.master_cpu_pct, "snapshot_s": c.snapshot_s,
                            "snapshot_master_cpu_pct": c.snapshot_master_cpu_pct}),
            Err(e) => json!({"error": e}),
        },
        "ha": f.ha.iter().map(|h| match &h.result {
            Ok(m) => json!({"event": format!("{:?}", h.event), "advert_ms": h.advert_ms, "stall_ms": m.stall_ms, "recovered": m.recovered,
                            "failed_attempts": m.failed_attempts, "failing_sources": m.failing_sources,
                            "failure_window_ms": m.failure_window_ms, "first_error": m.first_error,
                            "moved_after": m.moved_after, "answered_after": m.answered_after}),
            Err(e) => json!({"event": format!("{:?}", h.event), "advert_ms": h.advert_ms, "error": e}),
        }).collect::<Vec<_>>(),
        "targets": targets.iter().map(|t| json!({"what": t.what, "value": t.value, "bound": t.bound, "at_least": t.at_least, "verdict": t.verdict()})).collect::<Vec<_>>(),
    })
}

/// The flood scenario's figures (see `scenario::flood`).
fn flood_json(f: &Findings) -> Value {
    let traffic = |t: &RealTraffic| json!({"requests": t.requests, "duration_s": t.duration_s, "errors": t.errors, "rate": t.rate()});
    match &f.flood {
        Ok(x) => json!({
            "seconds": x.seconds, "cap_pps": x.cap, "services": x.services,
            "frames": x.flood.frames, "flood_s": x.flood.elapsed.as_secs_f64(),
            "flood_pps": x.flood.rate(), "passes": x.flood.passes_completed,
            "retries": x.flood.retries, "forwarded": x.forwarded,
            "quota_full": x.quota_full, "table_full": x.table_full,
            "syn_unremembered": x.syn_unremembered, "entries_after": x.entries_after,
            "clients": x.clients, "on_drained": x.on_drained, "moved": x.moved,
            "forgotten": x.forgotten, "without": traffic(&x.without),
            "during": traffic(&x.during), "ratio": x.ratio(),
        }),
        Err(e) => json!({"error": e}),
    }
}
