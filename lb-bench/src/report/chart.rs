//! `bench/results.svg`: horizontal bar charts of the rates, the latency and
//! the per-packet cost, each system beside bare DR.

use std::fmt::Write as _;

use super::{fmt1, fmt2, fmt_rate};
use crate::{
    options::{System, Workload},
    run::Findings,
    stats::{ratio, summarise},
};

/// One horizontal bar chart panel of the SVG.
fn svg_panel(
    svg: &mut String,
    y0: f64,
    title: &str,
    rows: &[(String, f64, String)],
    highlight: &str,
) -> f64 {
    let (left, width) = (150.0, 480.0);
    let max = rows
        .iter()
        .map(|r| r.1)
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="{:.0}" font-size="15" font-weight="bold">{}</text>"#,
        y0 + 18.0,
        xml(title)
    );
    let mut y = y0 + 30.0;
    for (label, value, text) in rows {
        let w = if value.is_finite() {
            value / max * width
        } else {
            0.0
        };
        let color = if label == highlight {
            "#d9480f"
        } else {
            "#4c6ef5"
        };
        let _ = writeln!(
            svg,
            r#"<text x="{:.0}" y="{:.0}" font-size="12" text-anchor="end">{}</text><rect x="{left:.0}" y="{:.0}" width="{w:.1}" height="16" fill="{color}"/><text x="{:.0}" y="{:.0}" font-size="12">{}</text>"#,
            left - 6.0,
            y + 12.0,
            xml(label),
            y,
            left + w + 6.0,
            y + 12.0,
            xml(text)
        );
        y += 22.0;
    }
    y + 10.0
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub(super) fn chart(f: &Findings) -> String {
    let s = |sys, w| summarise(&f.runs, sys, w);
    let mut body = String::new();
    let mut y = 10.0;
    for (title, w) in [
        (
            "Keep-alive requests/s (median; x bare DR)",
            Workload::KeepAlive,
        ),
        (
            "New TCP connections/s (median; x bare DR)",
            Workload::NewConnections,
        ),
    ] {
        let base = s(System::BareDr, w).rate;
        let rows: Vec<(String, f64, String)> = System::ALL
            .iter()
            .map(|sys| {
                let v = s(*sys, w).rate;
                (
                    sys.name().to_string(),
                    v.unwrap_or(f64::NAN),
                    format!("{} ({})", fmt_rate(v), fmt2(ratio(v, base))),
                )
            })
            .collect();
        y = svg_panel(&mut body, y, title, &rows, "lbd");
    }
    let base = s(System::BareDr, Workload::SingleConnection).p50_us;
    let rows: Vec<(String, f64, String)> = System::ALL
        .iter()
        .map(|sys| {
            let v = s(*sys, Workload::SingleConnection).p50_us;
            (
                sys.name().to_string(),
                v.unwrap_or(f64::NAN),
                format!("{} µs ({})", fmt1(v), fmt2(ratio(v, base))),
            )
        })
        .collect();
    y = svg_panel(
        &mut body,
        y,
        "Latency p50, one connection (µs; x bare DR; lower is better)",
        &rows,
        "lbd",
    );
    if let Ok(costs) = &f.costs {
        let rows: Vec<(String, f64, String)> = costs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    c.ns,
                    format!("{:.1} ns ({:.2} x floor)", c.ns, c.ratio),
                )
            })
            .collect();
        y = svg_panel(
            &mut body,
            y,
            "XDP cost per packet (BPF_PROG_TEST_RUN, ns)",
            &rows,
            "lbd hit",
        );
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"820\" height=\"{:.0}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n",
        y + 10.0
    )
}
