//! `lbctl`: the control tool for `lbd`. Exit 0 on success, 1 on an error
//! (one line on stderr), 2 on a usage error.

use std::{fmt::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use lb_userspace::control::{call, Reply, Request};
use serde_json::Value;

/// Control a running lbd.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// lbd's control socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "/run/lbd/lbd.sock"
    )]
    socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Node, HA state, services, real servers and counters.
    Status,
    /// Send no new clients to a server; its clients stay until their persistence expires.
    Drain { service: String, server: String },
    /// Send nothing more to a server; its clients move at once.
    Halt { service: String, server: String },
    /// Return a server to service.
    Online { service: String, server: String },
    /// Change a server's weight (0..=65535).
    Weight {
        service: String,
        server: String,
        weight: u16,
    },
    /// Validate and apply a configuration file.
    Apply { file: PathBuf },
    /// Which real server a client goes to, and why.
    Affinity {
        service: String,
        client: std::net::Ipv4Addr,
    },
    /// Before applying: the share of clients each service would move.
    Plan { file: PathBuf },
    /// Role, VRRP state, peer, sync state.
    Ha,
}

fn read(file: &PathBuf) -> Result<(String, String), String> {
    std::fs::read_to_string(file)
        .map(|text| (file.display().to_string(), text))
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
}

fn request(command: &Command) -> Result<Request, String> {
    let set = |service: &str, server: &str, state: &str| Request::SetState {
        service: service.to_owned(),
        server: server.to_owned(),
        state: state.to_owned(),
    };
    Ok(match command {
        Command::Status => Request::Status,
        Command::Drain { service, server } => set(service, server, "drain"),
        Command::Halt { service, server } => set(service, server, "halt"),
        Command::Online { service, server } => set(service, server, "online"),
        Command::Weight {
            service,
            server,
            weight,
        } => Request::Weight {
            service: service.clone(),
            server: server.clone(),
            weight: *weight,
        },
        Command::Apply { file } => {
            let (file, text) = read(file)?;
            Request::Apply { file, text }
        }
        Command::Plan { file } => {
            let (file, text) = read(file)?;
            Request::Plan { file, text }
        }
        Command::Affinity { service, client } => Request::Affinity {
            service: service.clone(),
            client: client.to_string(),
        },
        Command::Ha => Request::Ha,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let request = match request(&args.command) {
        Ok(request) => request,
        Err(message) => {
            eprintln!("lbctl: {message}");
            return ExitCode::FAILURE;
        }
    };
    let reply = match call(&args.socket, &request, Duration::from_secs(30)) {
        Ok(reply) => reply,
        Err(error) => {
            eprintln!("lbctl: {error}");
            return ExitCode::FAILURE;
        }
    };
    let Reply { ok, result, error } = reply;
    if !ok {
        // Configuration errors come one per line, each already positioned.
        let message = error.unwrap_or_else(|| "lbd reported an unspecified error".into());
        for line in message.lines() {
            eprintln!("lbctl: {line}");
        }
        return ExitCode::FAILURE;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
    } else {
        print!("{}", human(&args.command, &result));
    }
    ExitCode::SUCCESS
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}  ");
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn human(command: &Command, result: &Value) -> String {
    match command {
        Command::Status => status(result),
        Command::Affinity { .. } => {
            let age = result["age_s"]
                .as_f64()
                .map(|a| format!(", entry age {a:.1} s"))
                .unwrap_or_default();
            format!(
                "{} -> {} (from the {}{age})\n",
                text(&result["client"]),
                text(&result["server"]),
                if result["source"] == "table" {
                    "affinity table"
                } else {
                    "Maglev hash"
                },
            )
        }
        Command::Plan { .. } => {
            let rows: Vec<Vec<String>> = result["services"]
                .as_array()
                .map(|services| {
                    services
                        .iter()
                        .map(|s| {
                            let share = s["moved_share"].as_f64().unwrap_or(0.0) * 100.0;
                            vec![text(&s["name"]), format!("{share:.1}%")]
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(&["SERVICE", "CLIENTS MOVED"], &rows)
        }
        Command::Ha => ha(result),
        Command::Apply { .. } => {
            let note = result["note"].as_str().filter(|n| !n.is_empty());
            format!(
                "applied{}\n",
                note.map(|n| format!(" ({n})")).unwrap_or_default()
            )
        }
        Command::Drain { .. }
        | Command::Halt { .. }
        | Command::Online { .. }
        | Command::Weight { .. } => {
            let what = result
                .get("admin_state")
                .or_else(|| result.get("weight"))
                .map(text)
                .unwrap_or_default();
            format!(
                "{}/{}: {what}\n",
                text(&result["service"]),
                text(&result["server"])
            )
        }
    }
}

/// One or two lines on the HA state (`lbctl ha`, and the head of `status`).
fn ha(ha: &Value) -> String {
    if ha["role"] == "standalone" {
        return "ha standalone (single node)\n".into();
    }
    let sync = &ha["sync"];
    let sync_line = if sync["configured"] == true {
        format!(
            "sync {} to {} ({}): sent {}, received {}, lag {} ms",
            if sync["connected"] == true {
                "connected"
            } else {
                "NOT connected"
            },
            text(&sync["peer"]),
            text(&sync["peer_node"]),
            text(&sync["sent"]),
            text(&sync["received"]),
            text(&sync["lag_ms"]),
        )
    } else {
        "sync not configured".into()
    };
    format!(
        "ha {} ({}), priority {}{}, peer {}, last advertisement {} ms ago from {}\n{sync_line}\n",
        text(&ha["state"]).to_uppercase(),
        text(&ha["role"]),
        text(&ha["priority"]),
        if ha["preempt_held"] == true {
            " (held until the peer's sessions arrive)"
        } else {
            ""
        },
        text(&ha["peer"]),
        text(&ha["last_advert_age_ms"]),
        text(&ha["last_advert_from"]),
    )
}

fn status(result: &Value) -> String {
    let mut out = format!(
        "node {}  interface {} (XDP {})\n{}\n\n",
        text(&result["node"]),
        text(&result["interface"]),
        text(&result["xdp_mode"]),
        ha(&result["ha"]).trim_end(),
    );
    let empty = Vec::new();
    for service in result["services"].as_array().unwrap_or(&empty) {
        let counters = if service["type"] == "redirect" {
            format!(
                "redirect {} to {}, {} requests answered",
                text(&service["redirect"]["code"]),
                text(&service["redirect"]["scheme"]),
                text(&service["requests"])
            )
        } else {
            format!(
                "packets {}  bytes {}",
                text(&service["packets"]),
                text(&service["bytes"])
            )
        };
        let _ = writeln!(
            out,
            "{}  {}:{}/{}  {counters}",
            text(&service["name"]),
            text(&service["vip"]),
            text(&service["port"]),
            text(&service["protocol"]),
        );
        let rows: Vec<Vec<String>> = service["real_servers"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|r| {
                [
                    "name",
                    "address",
                    "health",
                    "admin_state",
                    "weight",
                    "active_clients",
                    "packets",
                    "bytes",
                ]
                .iter()
                .map(|k| text(&r[*k]))
                .collect()
            })
            .collect();
        if !rows.is_empty() {
            let t = table(
                &[
                    "SERVER", "ADDRESS", "HEALTH", "STATE", "WEIGHT", "CLIENTS", "PACKETS", "BYTES",
                ],
                &rows,
            );
            for line in t.lines() {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push('\n');
    }
    out
}
