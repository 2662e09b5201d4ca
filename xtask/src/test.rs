//! `cargo xtask test`: every test, in release mode (the build's profile, so
//! nothing is compiled twice). The namespace and packet tests need root.
//!
//! cargo prints one result line per test binary; this adds up all of them
//! and closes with one `tests: N passed, N failed` line.

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

pub fn run(extra: &[String]) -> Result<()> {
    let mut child = Command::new("cargo")
        .args(["test", "--release"])
        .args(extra)
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test's output")?;
            println!("{line}");
            tally(&line, &mut passed, &mut failed);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tally;

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
