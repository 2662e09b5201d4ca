//! The generated part of `BENCHMARKS.md`: the machine, the traffic table,
//! the ratios, the per-packet cost, the control plane, failover and HA, and
//! the targets met or missed.

use std::fmt::Write as _;

use lb_tests::flood::SPOOFED_SOURCES;

use super::{fmt2, fmt_rate, Target};
use crate::{
    options::{System, Workload},
    run::Findings,
    scenario::{flood::RealTraffic, traffic::RunResult},
    stats::{as_f64, median, paired, ratio, summarise},
};

#[expect(clippy::too_many_lines, reason = "one report, top to bottom")]
pub(super) fn markdown(found: &Findings) -> (String, Vec<Target>) {
    let summ = |sys, w| summarise(&found.runs, sys, w);
    let mut out = String::new();
    let mach = &found.machine;
    let _ = writeln!(
        out,
        "Measured {} by `cargo xtask bench{}` in {:.0} s.\n",
        mach.date,
        if found.opts.quick { " --quick" } else { "" },
        found.elapsed.as_secs_f64()
    );
    if found.opts.quick {
        out.push_str("> **Quick mode**: one short run of each system. These numbers only show that the harness works; \
                      compare systems with a full run.\n\n");
    }
    let _ = writeln!(out, "### The machine\n");
    let _ = writeln!(out, "| | |\n| --- | --- |");
    let _ = writeln!(out, "| CPUs | {} x {} |", mach.nproc, mach.cpu);
    let _ = writeln!(out, "| memory | {} |", mach.memory);
    let _ = writeln!(out, "| kernel | {} |", mach.kernel);
    let _ = writeln!(
        out,
        "| load average (1, 5, 15 min) | before {}; after {} |",
        mach.load_before, mach.load_after
    );
    for (tool, version) in &mach.tools {
        let _ = writeln!(out, "| {tool} | {version} |");
    }
    let _ = writeln!(
        out,
        "| rounds | {} (each system once per round, A B C D E A B C D E ...) |",
        found.opts.rounds
    );
    let _ = writeln!(
        out,
        "| run length | keep-alive {} s, new connections {} s, one connection {} s |\n",
        found.opts.load_duration(Workload::KeepAlive),
        found.opts.load_duration(Workload::NewConnections),
        found.opts.load_duration(Workload::SingleConnection)
    );

    let _ = writeln!(
        out,
        "### Traffic: medians over {} rounds\n",
        found.opts.rounds
    );
    let _ = writeln!(
        out,
        "| system | keep-alive req/s | p50 / p99 µs | new conn/s | p50 / p99 µs | p50 µs, 1 conn | LB CPU s / M req (keep-alive) | machine CPU s / M req | requests | failed |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for sys in System::ALL {
        let ka = summ(sys, Workload::KeepAlive);
        let nc = summ(sys, Workload::NewConnections);
        let one = summ(sys, Workload::SingleConnection);
        let lb_cpu = match sys {
            System::Direct => "none".to_string(),
            System::Nftables => "n/m (softirq)".to_string(),
            System::BareDr => format!("{} (XDP)", fmt2(ka.xdp_cpu_per_m)),
            System::Lbd | System::LbdSnat | System::LbdNat => format!(
                "{} (XDP {} + lbd {})",
                fmt2(ka.lb_cpu_per_m),
                fmt2(ka.xdp_cpu_per_m),
                fmt2(ka.process_cpu_per_m)
            ),
            System::Haproxy => format!("{} (process)", fmt2(ka.process_cpu_per_m)),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} / {:.0} | {} | {:.0} / {:.0} | {:.0} | {} | {} | {} | {} |",
            sys.name(),
            fmt_rate(ka.rate),
            ka.p50_us.unwrap_or(f64::NAN),
            ka.p99_us.unwrap_or(f64::NAN),
            fmt_rate(nc.rate),
            nc.p50_us.unwrap_or(f64::NAN),
            nc.p99_us.unwrap_or(f64::NAN),
            one.p50_us.unwrap_or(f64::NAN),
            lb_cpu,
            fmt2(ka.machine_cpu_per_m),
            ka.requests + nc.requests + one.requests,
            ka.errors + nc.errors + one.errors,
        );
    }
    out.push('\n');

    let lbd = |w| summ(System::Lbd, w);
    let mut targets = Vec::new();
    let _ = writeln!(out, "### Ratios\n");
    let _ = writeln!(
        out,
        "Each cell: the ratio of the medians above, then (in brackets) the median over rounds of the \
         ratio within each round (runs seconds apart compared with each other: a check against drifting \
         background load). The targets use the first, as issue 6 defines them.\n"
    );
    let _ = writeln!(
        out,
        "| lbd / ... | keep-alive req/s | new conn/s | p50 latency, 1 conn |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: |");
    let rate = |r: &RunResult| r.rate();
    let p50 = |r: &RunResult| r.p50_us;
    for other in [
        System::BareDr,
        System::Direct,
        System::Nftables,
        System::Haproxy,
    ] {
        let o = |w| summ(other, w);
        let cell = |of_medians: Option<f64>, within: Option<f64>| {
            format!("{} ({})", fmt2(of_medians), fmt2(within))
        };
        let ka = ratio(lbd(Workload::KeepAlive).rate, o(Workload::KeepAlive).rate);
        let nc = ratio(
            lbd(Workload::NewConnections).rate,
            o(Workload::NewConnections).rate,
        );
        let lat = ratio(
            lbd(Workload::SingleConnection).p50_us,
            o(Workload::SingleConnection).p50_us,
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            other.name(),
            cell(
                ka,
                paired(&found.runs, System::Lbd, other, Workload::KeepAlive, rate)
            ),
            cell(
                nc,
                paired(
                    &found.runs,
                    System::Lbd,
                    other,
                    Workload::NewConnections,
                    rate
                )
            ),
            cell(
                lat,
                paired(
                    &found.runs,
                    System::Lbd,
                    other,
                    Workload::SingleConnection,
                    p50
                )
            ),
        );
        match other {
            System::BareDr => {
                targets.push(Target {
                    what: "keep-alive req/s: lbd / bare DR".into(),
                    value: ka,
                    bound: 0.95,
                    at_least: true,
                });
                targets.push(Target {
                    what: "new conn/s: lbd / bare DR".into(),
                    value: nc,
                    bound: 0.95,
                    at_least: true,
                });
                targets.push(Target {
                    what: "p50 latency, 1 conn: lbd / bare DR".into(),
                    value: lat,
                    bound: 1.05,
                    at_least: false,
                });
            }
            System::Nftables => targets.push(Target {
                what: "new conn/s: lbd / nftables".into(),
                value: nc,
                bound: 1.3,
                at_least: true,
            }),
            System::Haproxy => targets.push(Target {
                what: "new conn/s: lbd / HAProxy".into(),
                value: nc,
                bound: 1.75,
                at_least: true,
            }),
            System::Direct | System::Lbd | System::LbdSnat | System::LbdNat => {}
        }
    }
    out.push('\n');
    let (nat, nat_targets) = nat_ratios(found);
    out.push_str(&nat);
    targets.extend(nat_targets);
    let _ = writeln!(out, "Per-run rates (req/s, in round order):\n");
    for sys in System::ALL {
        let rates = |w| {
            summ(sys, w)
                .rates
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "- {}: keep-alive {}; new connections {}; one connection {}",
            sys.name(),
            rates(Workload::KeepAlive),
            rates(Workload::NewConnections),
            rates(Workload::SingleConnection)
        );
    }
    let loads: Vec<String> = found
        .runs
        .iter()
        .filter(|(_, r)| r.workload == Workload::SingleConnection)
        .map(|(_, r)| {
            r.load_after
                .map_or_else(|| "?".into(), |l| format!("{l:.1}"))
        })
        .collect();
    let _ = writeln!(
        out,
        "\nThe machine's 1-minute load average after each system's turn, in run order: {}.",
        loads.join(", ")
    );
    let failed: Vec<String> = found
        .runs
        .iter()
        .filter(|(_, r)| r.errors > 0)
        .map(|(round, r)| {
            format!(
                "round {} {} {}: {}",
                round + 1,
                r.system.name(),
                r.workload.key(),
                r.error_detail
            )
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\nRuns with failed requests (wrk's counts):\n");
        for line in failed {
            let _ = writeln!(out, "- {line}");
        }
    }
    let _ = writeln!(
        out,
        "\nWhere 8 probe clients landed before each system's first run: {}\n",
        found
            .probes
            .iter()
            .map(|(sys, share)| format!("{} {share:?}", sys.name()))
            .collect::<Vec<_>>()
            .join("; ")
    );

    let _ = writeln!(
        out,
        "### Per-packet cost in the kernel (`BPF_PROG_TEST_RUN`)\n"
    );
    match &found.costs {
        Ok(costs) => {
            let _ = writeln!(
                out,
                "| program, frame | repeat | ns / packet (median) | x floor (median of the rounds' ratios) | x bare DR (same) |"
            );
            let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: |");
            for ctl in costs {
                let bare = if ctl.bare_ratio.is_nan() {
                    "-".to_owned()
                } else {
                    format!("{:.2}", ctl.bare_ratio)
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} | {:.2} | {bare} |",
                    ctl.what, ctl.repeat, ctl.ns, ctl.ratio
                );
            }
            let find = |name: &str| costs.iter().find(|ctl| ctl.name == name);
            if let Some(hit) = find("lbd hit") {
                targets.push(Target {
                    what: "XDP persistence hit (flow cache) / bare DR".into(),
                    value: Some(hit.bare_ratio),
                    bound: 1.3,
                    at_least: false,
                });
            }
            if let Some(table) = find("lbd table hit") {
                targets.push(Target {
                    what: "XDP persistence hit from AFFINITY / bare DR".into(),
                    value: Some(table.bare_ratio),
                    bound: 2.5,
                    at_least: false,
                });
            }
            if let Some(ack) = find("lbd new ACK (single)") {
                targets.push(Target {
                    what: "XDP new client's handshake ACK (insert) / XDP_TX floor, single-shot"
                        .into(),
                    value: Some(ack.ratio),
                    bound: 5.0,
                    at_least: false,
                });
            }
            if let Some(miss) = find("lbd miss (single)") {
                targets.push(Target {
                    what:
                        "XDP new client, first frame an ACK, cold table / XDP_TX floor, single-shot"
                            .into(),
                    value: Some(miss.ratio),
                    bound: 5.0,
                    at_least: false,
                });
            }
            if let Some(snat) = find("lbd SNAT established (single)") {
                targets.push(Target {
                    what: "XDP established SNAT frame / XDP_TX floor, single-shot".into(),
                    value: Some(snat.ratio),
                    bound: 3.0,
                    at_least: false,
                });
            }
        }
        Err(e) => {
            let _ = writeln!(out, "Not measured: {e}");
        }
    }
    out.push('\n');

    let ctl = &found.control;
    let _ = writeln!(out, "### Control plane\n");
    let _ = writeln!(out, "| configuration | Maglev tables (pure) | parse + validate | apply into the maps | re-apply, one server fewer per service |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: |");
    for row in &ctl.apply {
        let (services, servers, parse) = (row.services, row.servers, row.parse_ms);
        let mag = ctl
            .maglev
            .iter()
            .find(|(s, r, _)| *s == services && *r == servers)
            .map_or(f64::NAN, |x| x.2);
        let (apply, reapply) = match &row.result {
            Ok((first, again)) => (format!("{first:.0} ms"), format!("{again:.0} ms")),
            Err(e) => (e.replace('|', "/"), "-".into()),
        };
        let _ = writeln!(
            out,
            "| {services} services x {servers} servers | {mag:.0} ms | {parse:.0} ms | {apply} | {reapply} |"
        );
    }
    if let (Some(d), Some(w)) = (median(&ctl.drain_ms), median(&ctl.lbctl_ms)) {
        let _ = writeln!(
            out,
            "\n`lbctl drain` / `online` to the data path's ring switch: median {d:.1} ms over {} calls (all: {}); lbctl's own run time {w:.1} ms.",
            ctl.drain_ms.len(),
            ctl.drain_ms.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", ")
        );
    }
    if !ctl.memlock.is_empty() {
        let total: u64 = ctl.memlock.iter().map(|(_, b)| b).sum();
        let _ = writeln!(
            out,
            "\nMaps with {} persistence entries written ({:.1} s to write them one by one from user space; the first still counted: {}): {:.1} MiB locked in all, {}.",
            ctl.affinity_fill.0,
            ctl.affinity_fill.1 / 1000.0,
            if ctl.first_entry_kept { "yes" } else { "**no**" },
            as_f64(total) / 1_048_576.0,
            ctl.memlock
                .iter()
                .filter(|(_, b)| *b >= 1 << 20)
                .map(|(n, b)| format!("{n} {:.1} MiB", as_f64(*b) / 1_048_576.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for e in &found.control_errors {
        let _ = writeln!(out, "\nNot measured: {e}");
    }
    out.push('\n');

    let _ = writeln!(out, "### A real server dies\n");
    match &found.health {
        Ok(h) => {
            let _ = writeln!(
                out,
                "nginx of {} killed (`SIGKILL`) with {} of 48 probe clients on it; health check `{}`.\n\
                 First client answered by another server after {}, all of them after {} (expected {}).",
                h.victim,
                h.clients,
                h.settings,
                h.first_moved_ms.map_or_else(|| "never (20 s)".into(), |v| format!("{v:.0} ms")),
                h.all_moved_ms.map_or_else(|| "never (20 s)".into(), |v| format!("{v:.0} ms")),
                h.expected
            );
        }
        Err(e) => {
            let _ = writeln!(out, "Not measured: {e}");
        }
    }
    out.push('\n');

    flood_section(&mut out, found, &mut targets);
    super::census::census_section(&mut out, found, &mut targets);

    ha_section(&mut out, found, &mut targets);

    let _ = writeln!(out, "### Targets (issue 6)\n");
    let _ = writeln!(out, "| target | measured | bound | |");
    let _ = writeln!(out, "| --- | ---: | ---: | --- |");
    for t in &targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} {} | {} |",
            t.what,
            fmt2(t.value),
            if t.at_least { ">=" } else { "<=" },
            t.bound,
            t.verdict()
        );
    }
    let _ = writeln!(out, "\n![Ratios and per-packet cost](bench/results.svg)\n");
    (out, targets)
}

/// The flood of spoofed sources: real traffic without and during it, side
/// by side, and what it did to the real clients.
fn flood_section(out: &mut String, found: &Findings, targets: &mut Vec<Target>) {
    let _ = writeln!(out, "### A flood of spoofed sources\n");
    match &found.flood {
        Ok(f) => {
            let cell = |t: &RealTraffic| {
                format!(
                    "{} ({} requests, {} failed)",
                    fmt_rate(t.rate()),
                    t.requests,
                    t.errors
                )
            };
            let _ = writeln!(
                out,
                "| real traffic: new conn/s, 64 connections from 256 clients | without the flood | during the flood | during / without |"
            );
            let _ = writeln!(out, "| --- | ---: | ---: | ---: |");
            let _ = writeln!(
                out,
                "| lbd, {} services with persistence | {} | {} | {} |\n",
                f.services,
                cell(&f.without),
                cell(&f.during),
                fmt2(f.ratio())
            );
            let _ = writeln!(
                out,
                "The flood: TCP SYN and ACK from {} spoofed sources to all {} services, {} frames in {:.1} s \
                 ({:.0} frames/s{}; {} passes over the sources, {} retries when the lab's queues were full). \
                 Over that time the data path forwarded {} frames (flood and real traffic) and did not \
                 remember the source of {} frames for a full quota, of {} for a full table and of {} bare \
                 SYNs; {} clients were remembered afterwards.\n",
                SPOOFED_SOURCES,
                f.services,
                f.flood.frames,
                f.flood.elapsed.as_secs_f64(),
                f.flood.rate(),
                f.cap
                    .map_or_else(|| ", as fast as the lab takes them".into(), |c| format!(", capped at {c}/s")),
                f.flood.passes_completed,
                f.flood.retries,
                f.forwarded,
                f.quota_full,
                f.table_full,
                f.syn_unremembered,
                f.entries_after
            );
            let _ = writeln!(
                out,
                "Real clients: {} placed before the flood, {} of them on rs3, drained before the flood \
                 (they stay there only by their table entries); afterwards {} answered by another server, \
                 {} no longer in the table.",
                f.clients, f.on_drained, f.moved, f.forgotten
            );
            targets.push(Target {
                what: "real clients moved by a flood of spoofed sources".into(),
                value: Some(as_f64(f.moved as u64)),
                bound: 0.0,
                at_least: false,
            });
            targets.push(Target {
                what: "new conn/s of real clients: during a flood / without".into(),
                value: f.ratio(),
                bound: 0.9,
                at_least: true,
            });
        }
        Err(e) => {
            let _ = writeln!(out, "Not measured: {e}");
            if !e.starts_with("skipped") {
                targets.push(Target {
                    what: "real clients moved by a flood of spoofed sources".into(),
                    value: None,
                    bound: 0.0,
                    at_least: false,
                });
            }
        }
    }
    out.push('\n');
}

/// Crashes, restarts and upgrades (issue 13): the stall, failed requests
/// and moved clients per event.
fn ha_section(out: &mut String, found: &Findings, targets: &mut Vec<Target>) {
    use crate::scenario::ha::Event;
    let _ = writeln!(
        out,
        "### Crashes, restarts and upgrades: the traffic stall\n"
    );
    let _ = writeln!(out, "| event | advertisements | traffic stall | expected takeover | failed attempts | answers after, on another server than before |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for h in &found.ha {
        let adverts = if h.event.pair() {
            format!("{} ms", h.advert_ms)
        } else {
            "-".into()
        };
        let target = |what: &str, value: Option<f64>, bound: f64| Target {
            what: format!("{} {what}", h.event.describe()),
            value,
            bound,
            at_least: false,
        };
        match &h.result {
            Ok(m) => {
                let failures = match m.failure_window_ms {
                    Some((a, b)) => format!(
                        "{} on {} sources, from {a:.0} to {b:.0} ms after the event (first: {})",
                        m.failed_attempts,
                        m.failing_sources,
                        m.first_error.replace('|', "/")
                    ),
                    None => "none".into(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {adverts} | {:.0} ms{} | {} | {failures} | {} of {} ({} sources) |",
                    h.event.describe(),
                    m.stall_ms,
                    if m.recovered {
                        ""
                    } else {
                        " (no answer after the event)"
                    },
                    if m.expected_ms > 0.0 {
                        format!("{:.0} ms", m.expected_ms)
                    } else {
                        "none".into()
                    },
                    m.moved_after,
                    m.answered_after,
                    m.sources
                );
                if h.event == Event::MasterNodeDown {
                    if h.advert_ms == 100 {
                        targets.push(target(
                            "(100 ms adverts): stall (s)",
                            Some(m.stall_ms / 1000.0),
                            0.5,
                        ));
                    }
                } else {
                    targets.push(target(
                        &format!("{adverts}: failed requests"),
                        Some(as_f64(m.failed_attempts as u64)),
                        0.0,
                    ));
                }
                targets.push(target(
                    &format!("{adverts}: clients on another server"),
                    Some(as_f64(m.moved_after as u64)),
                    0.0,
                ));
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "| {} | {adverts} | not measured | | | {} |",
                    h.event.describe(),
                    e.lines().next().unwrap_or_default().replace('|', "/")
                );
                targets.push(target(&format!("{adverts}: measured"), None, 0.0));
            }
        }
    }
    out.push('\n');
}

/// NAT and SNAT beside the kernel's NAT (nftables DNAT and masquerade,
/// conntrack) and `HAProxy`, with issue 14's targets.
fn nat_ratios(found: &Findings) -> (String, Vec<Target>) {
    let summ = |sys, w| summarise(&found.runs, sys, w);
    let mut out = String::new();
    let mut targets = Vec::new();
    let _ = writeln!(out, "### NAT and SNAT\n");
    let _ = writeln!(
        out,
        "lbd translating (SNAT from the load balancer's own address, as masquerade does; NAT with the \
         servers routing the clients through it) beside the kernel's own NAT and `HAProxy`, same cells \
         as above.\n"
    );
    let _ = writeln!(
        out,
        "| ... / ... | keep-alive req/s | new conn/s | p50 latency, 1 conn |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: |");
    let rate: fn(&RunResult) -> f64 = RunResult::rate;
    let p50: fn(&RunResult) -> f64 = |r| r.p50_us;
    for (ours, other) in [
        (System::LbdSnat, System::Nftables),
        (System::LbdSnat, System::Haproxy),
        (System::LbdNat, System::Nftables),
        (System::LbdNat, System::Haproxy),
    ] {
        let cell = |w: Workload, pick: fn(&RunResult) -> f64| {
            let (a, b) = (summ(ours, w), summ(other, w));
            let of_medians = if w == Workload::SingleConnection {
                ratio(a.p50_us, b.p50_us)
            } else {
                ratio(a.rate, b.rate)
            };
            (
                of_medians,
                format!(
                    "{} ({})",
                    fmt2(of_medians),
                    fmt2(paired(&found.runs, ours, other, w, pick))
                ),
            )
        };
        let (ka, ka_cell) = cell(Workload::KeepAlive, rate);
        let (nc, nc_cell) = cell(Workload::NewConnections, rate);
        let (_, lat_cell) = cell(Workload::SingleConnection, p50);
        let _ = writeln!(
            out,
            "| {} / {} | {ka_cell} | {nc_cell} | {lat_cell} |",
            ours.name(),
            other.name()
        );
        let mut target = |what: &str, value, bound| {
            targets.push(Target {
                what: format!("{what}: {} / {}", ours.name(), other.name()),
                value,
                bound,
                at_least: true,
            });
        };
        match other {
            System::Nftables => {
                target("new conn/s", nc, 1.3);
                target("keep-alive req/s", ka, 1.1);
            }
            System::Haproxy => target("new conn/s", nc, 1.75),
            _ => {}
        }
    }
    out.push('\n');
    (out, targets)
}
