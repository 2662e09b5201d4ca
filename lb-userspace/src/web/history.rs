//! The last hour of every real server, for the console's charts: a
//! fixed-size ring of samples per server (one every [`STEP`], [`POINTS`]
//! of them), and its health changes as marks. Kept in memory only; a
//! restart starts the charts empty. Sans-IO: the daemon feeds it the
//! counters and the time.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// Seconds between samples.
pub const STEP_S: u64 = 10;

/// Samples kept per server: one hour.
pub const POINTS: usize = 360;

/// Health changes kept per server.
const MARKS: usize = 64;

/// One sample.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Unix time, seconds.
    pub t: u64,
    /// Frames forwarded per second since the previous sample.
    pub packets_per_s: f64,
    /// Bytes forwarded per second since the previous sample.
    pub bytes_per_s: f64,
    /// Live persistence entries.
    pub active_clients: u64,
}

/// A health change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mark {
    /// Unix time, seconds.
    pub t: u64,
    /// `up` or `down`.
    pub health: &'static str,
    /// What the check saw.
    pub detail: String,
}

/// One server's chart data, as `/api/history` returns it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Series {
    /// Service name.
    pub service: String,
    /// Real-server name.
    pub server: String,
    /// Seconds between points.
    pub step_s: u64,
    /// Oldest first.
    pub points: Vec<Point>,
    /// Oldest first.
    pub marks: Vec<Mark>,
}

#[derive(Debug, Default)]
struct Ring {
    points: VecDeque<Point>,
    marks: VecDeque<Mark>,
    /// The last sample's time and cumulative counters.
    last: Option<(u64, u64, u64)>,
}

/// Every server's ring, by (service, server).
#[derive(Debug, Default)]
pub struct History {
    rings: BTreeMap<(String, String), Ring>,
}

/// Cumulative counters of one server at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Frames forwarded, ever.
    pub packets: u64,
    /// Bytes forwarded, ever.
    pub bytes: u64,
    /// Live persistence entries now.
    pub active_clients: u64,
}

impl History {
    /// Adds a sample at unix time `t`. Rates are the counters' growth since
    /// the previous sample; a counter that went down (the data path was
    /// loaded anew) counts as zero growth.
    pub fn record(&mut self, t: u64, service: &str, server: &str, c: Counters) {
        let ring = self
            .rings
            .entry((service.to_owned(), server.to_owned()))
            .or_default();
        if let Some((t0, p0, b0)) = ring.last {
            let dt = t.saturating_sub(t0);
            if dt > 0 {
                #[allow(clippy::cast_precision_loss)]
                let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / dt as f64;
                ring.points.push_back(Point {
                    t,
                    packets_per_s: rate(c.packets, p0),
                    bytes_per_s: rate(c.bytes, b0),
                    active_clients: c.active_clients,
                });
                while ring.points.len() > POINTS {
                    ring.points.pop_front();
                }
            }
        }
        ring.last = Some((t, c.packets, c.bytes));
    }

    /// Notes a health change at unix time `t`.
    pub fn mark(&mut self, t: u64, service: &str, server: &str, up: bool, detail: &str) {
        let ring = self
            .rings
            .entry((service.to_owned(), server.to_owned()))
            .or_default();
        ring.marks.push_back(Mark {
            t,
            health: if up { "up" } else { "down" },
            detail: detail.to_owned(),
        });
        while ring.marks.len() > MARKS {
            ring.marks.pop_front();
        }
        // Marks older than the charts' hour are of no use.
        let oldest = t.saturating_sub(STEP_S * POINTS as u64);
        while ring.marks.front().is_some_and(|m| m.t < oldest) {
            ring.marks.pop_front();
        }
    }

    /// Forgets servers `keep` says are gone from the configuration.
    pub fn retain(&mut self, keep: impl Fn(&str, &str) -> bool) {
        self.rings
            .retain(|(service, server), _| keep(service, server));
    }

    /// One server's series.
    #[must_use]
    pub fn series(&self, service: &str, server: &str) -> Option<Series> {
        let ring = self.rings.get(&(service.to_owned(), server.to_owned()))?;
        Some(Series {
            service: service.to_owned(),
            server: server.to_owned(),
            step_s: STEP_S,
            points: ring.points.iter().cloned().collect(),
            marks: ring.marks.iter().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(packets: u64, bytes: u64, active_clients: u64) -> Counters {
        Counters {
            packets,
            bytes,
            active_clients,
        }
    }

    #[test]
    fn rates_come_from_growth_and_the_ring_keeps_one_hour() {
        let mut h = History::default();
        h.record(1000, "web", "rs1", at(100, 1000, 5));
        h.record(1010, "web", "rs1", at(300, 6000, 7));
        h.record(1020, "web", "rs1", at(10, 100, 7));
        let s = h.series("web", "rs1").unwrap_or_else(|| panic!("a series"));
        assert_eq!(s.points.len(), 2, "the first sample only sets the base");
        assert_eq!(s.points[0].packets_per_s, 20.0);
        assert_eq!(s.points[0].bytes_per_s, 500.0);
        assert_eq!(s.points[0].active_clients, 7);
        assert_eq!(
            s.points[1].packets_per_s, 0.0,
            "a reset counter is no growth"
        );

        for i in 0..(POINTS as u64 + 50) {
            h.record(2000 + i * STEP_S, "web", "rs1", at(i, i, 1));
        }
        let s = h.series("web", "rs1").unwrap_or_else(|| panic!("a series"));
        assert_eq!(s.points.len(), POINTS);
        assert_eq!(
            s.points.last().map(|p| p.t),
            Some(2000 + (POINTS as u64 + 49) * STEP_S)
        );

        let now = 2000 + (POINTS as u64 + 49) * STEP_S;
        h.mark(now - 4000, "web", "rs1", false, "old");
        h.mark(now, "web", "rs1", false, "connect refused");
        let marks = h.series("web", "rs1").map(|s| s.marks).unwrap_or_default();
        assert_eq!(marks.len(), 1, "a mark older than the hour is dropped");
        assert_eq!(marks[0].health, "down");

        h.retain(|_, server| server != "rs1");
        assert!(h.series("web", "rs1").is_none());
    }
}
