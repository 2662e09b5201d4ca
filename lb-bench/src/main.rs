//! `lb-bench`: the benchmark behind `cargo xtask bench` (see the `lb_bench` library).
//!
//! `lb-bench [--quick] [--rounds N] [--out DIR]`: builds a namespace lab,
//! measures direct, bare DR, lbd, nftables and `HAProxy` side by side plus the
//! XDP, control-plane, health and HA figures, and writes `DIR/BENCHMARKS.md`,
//! `DIR/bench/results.svg` and `DIR/bench/results.json` (DIR: the workspace).
//! Needs root. Exit 0 when every system served every request, 1 when some
//! did not (the report is written anyway), 2 on a usage error, 3 when the
//! bench could not run.

use std::{path::PathBuf, process::ExitCode};

use lb_bench::{install_signal_handlers, run_bench, Options};

const USAGE: &str = "usage: lb-bench [--quick] [--rounds N] [--out DIR]";

fn parse() -> Result<Options, String> {
    let mut quick = false;
    let mut rounds = None;
    let mut out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--rounds" => {
                let n: usize = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=50).contains(n))
                    .ok_or("--rounds takes a number from 1 to 50")?;
                rounds = Some(n);
            }
            "--out" => {
                out = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--out takes a directory")?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mut opts = Options::new(quick, out);
    if let Some(n) = rounds {
        opts.rounds = n;
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let opts = match parse() {
        Ok(opts) => opts,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("lb-bench: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    install_signal_handlers();
    match run_bench(&opts) {
        Ok(outcome) => {
            println!("report: {}", outcome.report.display());
            println!("chart:  {}", outcome.chart.display());
            println!("data:   {}", outcome.json.display());
            if outcome.problems.is_empty() {
                println!("every system served every request");
                ExitCode::SUCCESS
            } else {
                for p in &outcome.problems {
                    eprintln!("lb-bench: {p}");
                }
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("lb-bench: {e:#}");
            ExitCode::from(3)
        }
    }
}
