//! `cargo xtask test`: every test, in release mode (the build's profile, so
//! nothing is compiled twice). The namespace and packet tests need root.
//!
//! Every test binary runs even after one fails (`--no-fail-fast`). cargo
//! prints one result line per test binary; this adds up all of them, prints
//! every binary's failure report again together at the end, and closes with
//! one `tests: N passed, N failed` line.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::root;

/// Adds the counts of one `test result: ok. 5 passed; 0 failed; ...` line.
fn tally(line: &str, passed: &mut u64, failed: &mut u64) {
    let Some(rest) = line.trim().strip_prefix("test result: ") else {
        return;
    };
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(kind), Some(count)) = (words.next(), words.next()) else {
            continue;
        };
        let count: u64 = count.parse().unwrap_or(0);
        match kind {
            "passed" => *passed += count,
            "failed" => *failed += count,
            _ => {}
        }
    }
}

/// Collects the failure reports cargo's test harness prints: from a line
/// `failures:` to the `test result:` line that ends the binary's output.
#[derive(Default)]
struct Failures {
    inside: bool,
    lines: Vec<String>,
}

impl Failures {
    fn see(&mut self, line: &str) {
        if line == "failures:" && !self.inside {
            self.inside = true;
        }
        if self.inside {
            self.lines.push(line.to_owned());
            if line.starts_with("test result: ") {
                self.inside = false;
            }
        }
    }
}

pub fn run(extra: &[String]) -> Result<()> {
    let mut child = Command::new("cargo")
        .args(["test", "--release", "--no-fail-fast"])
        .args(extra)
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    let mut failures = Failures::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test's output")?;
            println!("{line}");
            tally(&line, &mut passed, &mut failed);
            failures.see(&line);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !failures.lines.is_empty() {
        println!("\n===== every failure, together =====");
        for line in &failures.lines {
            println!("{line}");
        }
    }
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{tally, Failures};

    #[test]
    fn failure_reports_are_collected() {
        let mut f = Failures::default();
        for line in [
            "test a ... ok",
            "failures:",
            "---- b stdout ----",
            "boom",
            "test result: FAILED. 1 passed; 1 failed",
            "test c ... ok",
        ] {
            f.see(line);
        }
        assert_eq!(f.lines.len(), 4);
        assert_eq!(f.lines[2], "boom");
    }

    #[test]
    fn result_lines_add_up() {
        let (mut p, mut f) = (0, 0);
        tally("test result: ok. 49 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.03s", &mut p, &mut f);
        tally(
            "test result: FAILED. 2 passed; 1 failed; 0 ignored",
            &mut p,
            &mut f,
        );
        tally("running 3 tests", &mut p, &mut f);
        assert_eq!((p, f), (51, 1));
    }
}
