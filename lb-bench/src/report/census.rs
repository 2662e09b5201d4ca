//! The report's section on lbd's own CPU at a million active clients and
//! the snapshot of them to a peer (`scenario::census`).

use std::fmt::Write as _;

use super::Target;
use crate::run::Findings;

/// lbd's CPU, alone and as the master of a pair, and the snapshot's time.
pub(super) fn census_section(out: &mut String, found: &Findings, targets: &mut Vec<Target>) {
    let _ = writeln!(out, "### lbd at a million active clients\n");
    match &found.census {
        Ok(c) => {
            let _ = writeln!(
                out,
                "{} live entries written into lbd's affinity table (in {:.1} s, by the bench); \
                 `lbctl status` counted them all {:.1} s after the last was written (entries \
                 written from outside the data path are counted at lbd's next walk of the table, \
                 every 5 s; the data path announces its own at once).\n",
                c.entries, c.fill_s, c.single_counted_s
            );
            let _ = writeln!(out, "| | lbd's CPU, % of one core |");
            let _ = writeln!(out, "| --- | ---: |");
            let _ = writeln!(
                out,
                "| single node, {} s | {:.1} |",
                crate::scenario::census::MEASURE_S,
                c.single_cpu_pct
            );
            let _ = writeln!(
                out,
                "| master of a pair, during the snapshot to a starting backup ({:.1} s until the backup held every entry) | {:.1} |",
                c.snapshot_s, c.snapshot_master_cpu_pct
            );
            let _ = writeln!(
                out,
                "| master of a pair, after the snapshot, over 65 s, every client seen again at its start (so each is sent again within it) | {:.1} |\n",
                c.master_cpu_pct
            );
            for (what, value) in [
                (
                    "lbd's CPU at 1M active clients, single node (% of a core)",
                    c.single_cpu_pct,
                ),
                (
                    "lbd's CPU at 1M active clients, master of a pair (% of a core)",
                    c.master_cpu_pct,
                ),
            ] {
                targets.push(Target {
                    what: what.into(),
                    value: Some(value),
                    bound: 5.0,
                    at_least: false,
                });
            }
        }
        Err(e) => {
            let _ = writeln!(out, "Not measured: {e}\n");
            if !e.starts_with("skipped") {
                targets.push(Target {
                    what: "lbd's CPU at 1M active clients, single node (% of a core)".into(),
                    value: None,
                    bound: 5.0,
                    at_least: false,
                });
            }
        }
    }
}
