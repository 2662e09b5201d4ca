//! Rate-limited warnings for the sync link: a flood of refused
//! connections repeats a few lines, each logged at most once in
//! [`REFUSAL_LOG_EVERY`] with a count of those held back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The same line is logged at most once in this long (with a count of
/// those not logged).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs failures at warning level, each distinct line at most once in
/// [`REFUSAL_LOG_EVERY`]; repeats are counted and the count is logged with
/// the line's next warning. (Lines name addresses, never source ports, so
/// a flood of connections repeats a few lines.)
#[derive(Default)]
pub(super) struct Quiet {
    /// Line -> when it was last logged, and repeats since.
    lines: HashMap<String, (Instant, u64)>,
}

/// Distinct lines remembered; more clears the memory (then each is logged
/// once more).
const QUIET_LINES: usize = 64;

impl Quiet {
    pub(super) fn warn(&mut self, line: &str) {
        let now = Instant::now();
        if let Some((at, repeats)) = self.lines.get_mut(line) {
            if now.duration_since(*at) < REFUSAL_LOG_EVERY {
                *repeats += 1;
                log::debug!("{line}");
                return;
            }
            if *repeats > 0 {
                log::warn!("{line} (and {repeats} more like it before)");
            } else {
                log::warn!("{line}");
            }
            (*at, *repeats) = (now, 0);
            return;
        }
        if self.lines.len() >= QUIET_LINES {
            self.lines.clear();
        }
        log::warn!("{line}");
        self.lines.insert(line.to_owned(), (now, 0));
    }
}
