//! Medians, ratios and unit conversions, and the per-system summaries of
//! the traffic runs built from them.

use std::time::Duration;

use crate::{
    options::{System, Workload},
    scenario::traffic::RunResult,
};

pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    })
}

#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
pub(crate) fn as_f64(n: u64) -> f64 {
    n as f64
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Medians of one system under one workload.
#[derive(Clone, Debug, Default)]
pub(crate) struct Summary {
    pub(crate) runs: usize,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) rate: Option<f64>,
    pub(crate) p50_us: Option<f64>,
    pub(crate) p99_us: Option<f64>,
    pub(crate) lb_cpu_per_m: Option<f64>,
    pub(crate) xdp_cpu_per_m: Option<f64>,
    pub(crate) process_cpu_per_m: Option<f64>,
    pub(crate) machine_cpu_per_m: Option<f64>,
    pub(crate) rates: Vec<f64>,
}

/// The median over rounds of `a`'s value over `b`'s in the same round:
/// runs next to each other, so slow changes of the machine's load cancel.
pub(crate) fn paired(
    runs: &[(usize, RunResult)],
    a: System,
    b: System,
    workload: Workload,
    value: fn(&RunResult) -> f64,
) -> Option<f64> {
    let find = |round: usize, system: System| {
        runs.iter()
            .find(|(r, x)| *r == round && x.system == system && x.workload == workload)
            .map(|(_, x)| value(x))
    };
    let rounds: std::collections::BTreeSet<usize> = runs.iter().map(|(r, _)| *r).collect();
    let ratios: Vec<f64> = rounds
        .into_iter()
        .filter_map(|round| ratio(find(round, a), find(round, b)))
        .collect();
    median(&ratios)
}

pub(crate) fn summarise(
    runs: &[(usize, RunResult)],
    system: System,
    workload: Workload,
) -> Summary {
    let mine: Vec<&RunResult> = runs
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r.system == system && r.workload == workload)
        .collect();
    let rates: Vec<f64> = mine.iter().map(|r| r.rate()).collect();
    // The median over runs of CPU seconds per million requests, where measured.
    let per_million = |cpu_s: fn(&RunResult) -> Option<f64>| {
        median(
            &mine
                .iter()
                .filter_map(|r| cpu_s(r).map(|c| r.per_million(c)))
                .collect::<Vec<_>>(),
        )
    };
    Summary {
        runs: mine.len(),
        requests: mine.iter().map(|r| r.requests).sum(),
        errors: mine.iter().map(|r| r.errors).sum(),
        rate: median(&rates),
        p50_us: median(&mine.iter().map(|r| r.p50_us).collect::<Vec<_>>()),
        p99_us: median(&mine.iter().map(|r| r.p99_us).collect::<Vec<_>>()),
        lb_cpu_per_m: per_million(|r| r.lb_cpu_s),
        xdp_cpu_per_m: per_million(|r| r.xdp_cpu_s),
        process_cpu_per_m: per_million(|r| r.process_cpu_s),
        machine_cpu_per_m: per_million(|r| Some(r.machine_cpu_s)),
        rates,
    }
}
