//! Facts about the machine the figures come from (CPU, memory, kernel,
//! load, tool versions).

use std::{fs, process::Command, thread};

/// Facts about the machine the figures come from.
#[derive(Clone, Debug, Default)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) kernel: String,
    pub(crate) cpu: String,
    pub(crate) memory: String,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    pub(crate) date: String,
    pub(crate) tools: Vec<(String, String)>,
}

fn first_line(cmd: &[&str]) -> String {
    let Some((program, args)) = cmd.split_first() else {
        return String::new();
    };
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

pub(crate) fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_default();
    Machine {
        nproc: thread::available_parallelism().map_or(1, std::num::NonZero::get),
        kernel: first_line(&["uname", "-sr"]),
        cpu,
        memory,
        load_before: loadavg(),
        load_after: String::new(),
        date: first_line(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
        tools: vec![
            ("wrk".into(), first_line(&["wrk", "-v"])),
            ("nginx".into(), first_line(&["nginx", "-v"])),
            ("haproxy".into(), first_line(&["haproxy", "-v"])),
            ("nft".into(), first_line(&["nft", "--version"])),
        ],
    }
}
