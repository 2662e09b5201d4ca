//! Large configurations: building every Maglev table (pure), parsing and
//! validating the YAML, applying it into freshly loaded maps and applying
//! it again with one server fewer per service.

use std::{fmt::Write as _, net::Ipv4Addr, time::Instant};

use anyhow::{anyhow, Result};
use lb_common::{MAGLEV_RING_SIZE, NO_REAL};
use lb_userspace::{balancer::Balancer, config::Config, dataplane::Program, maglev};

use crate::{scenario::packet::LB_MAC, stats::ms};

fn big_config(services: usize, servers: usize, drop_last: bool) -> String {
    let mut s = String::from("node: { name: bench, interface: eth0 }\nservices:\n");
    for i in 0..services {
        let _ = write!(
            s,
            "  - name: s{i}\n    vip: 10.200.0.1\n    port: {}\n    health_check: {{ type: none }}\n    real_servers:\n",
            1000 + i
        );
        let n = if drop_last { servers - 1 } else { servers };
        for r in 0..n {
            let _ = writeln!(
                s,
                "      - {{ name: r{r}, address: 10.{}.{}.{} }}",
                1 + i,
                r / 250,
                r % 250 + 1
            );
        }
    }
    s
}

pub(crate) fn maglev_build_ms(services: usize, servers: usize) -> f64 {
    let start = Instant::now();
    for i in 0..services {
        let backends: Vec<maglev::Backend> = (0..servers)
            .map(|r| maglev::Backend {
                id: u32::try_from(r + 1).unwrap_or(0),
                key: u32::from(Ipv4Addr::new(
                    10,
                    u8::try_from(1 + i).unwrap_or(0),
                    u8::try_from(r / 250).unwrap_or(0),
                    u8::try_from(r % 250 + 1).unwrap_or(0),
                )),
                weight: 100,
            })
            .collect();
        std::hint::black_box(maglev::build(&backends, MAGLEV_RING_SIZE, NO_REAL));
    }
    ms(start.elapsed())
}

/// Applying one configuration size.
#[derive(Clone, Debug)]
pub(crate) struct ApplyRow {
    pub(crate) services: usize,
    pub(crate) servers: usize,
    /// Parsing and validating the YAML.
    pub(crate) parse_ms: f64,
    /// First apply and re-apply (one server fewer per service), or why the
    /// configuration was refused.
    pub(crate) result: Result<(f64, f64), String>,
}

/// Applies a configuration of `services` x `servers` through the balancer
/// into freshly loaded maps; then one server fewer in every service.
pub(crate) fn apply_big(services: usize, servers: usize) -> Result<ApplyRow> {
    let yaml = big_config(services, servers, false);
    let start = Instant::now();
    let parsed = Config::from_yaml(&yaml, "big.yaml");
    let parse_ms = ms(start.elapsed());
    let row = |result| ApplyRow {
        services,
        servers,
        parse_ms,
        result,
    };
    let config = match parsed {
        Ok(c) => c,
        Err(e) => return Ok(row(Err(format!("refused by validation: {e}")))),
    };
    let smaller = Config::from_yaml(&big_config(services, servers, true), "big.yaml")
        .map_err(|e| anyhow!("{e}"))?;
    let mut program = Program::load_bytes(Program::object()).map_err(|e| anyhow!("{e}"))?;
    let maps = program.take_maps().map_err(|e| anyhow!("{e}"))?;
    let mut balancer = Balancer::new(maps, LB_MAC).map_err(|e| anyhow!("{e}"))?;
    let start = Instant::now();
    if let Err(e) = balancer.apply(&config) {
        return Ok(row(Err(format!("refused by the balancer: {e}"))));
    }
    let first = ms(start.elapsed());
    let start = Instant::now();
    if let Err(e) = balancer.apply(&smaller) {
        return Ok(row(Err(format!("re-apply refused: {e}"))));
    }
    Ok(row(Ok((first, ms(start.elapsed())))))
}
