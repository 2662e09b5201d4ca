//! `lbctl`: the control tool for `lbd`. Exit 0 on success, 1 on an error
//! (one line on stderr), 2 on a usage error.

use std::{fmt::Write as _, path::Path, process::ExitCode, time::Duration};

use clap::Parser as _;
use lb_userspace::{
    cli::{
        lbctl::{Command, Lbctl as Args, UserCommand},
        user,
    },
    config::{AdminState, Config},
    control::{
        call,
        protocol::{
            AdminReport, AffinityReport, AffinitySource, ApplyReport, ConnectionsReport, HaRole,
            HaStatus, PlanReport, Response, ServiceType, StatusReport, UserReport,
        },
        ClientError, Request,
    },
};
use serde::Serialize;

fn read(file: &Path) -> Result<(String, String), String> {
    Config::read_text(file)
        .map(|text| (file.display().to_string(), text))
        .map_err(|e| e.to_string())
}

/// Whether `line` is a configuration error at its place in the file
/// (`FILE:LINE:COLUMN: message`): printed as it is, the same line
/// `lbd --check` prints, so that editors and scripts find the place.
fn positioned(line: &str) -> bool {
    let number =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    line.match_indices(": ").any(|(at, _)| {
        let mut parts = line[..at].rsplitn(3, ':');
        let (column, line, file) = (parts.next(), parts.next(), parts.next());
        number(column) && number(line) && file.is_some_and(|f| !f.is_empty())
    })
}

/// How long lbctl waits for lbd's answer.
const TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            // Configuration errors come one per line, each already positioned.
            for line in message.lines() {
                if positioned(line) {
                    eprintln!("{line}");
                } else {
                    eprintln!("lbctl: {line}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// Sends the command's request and renders its typed answer.
fn run(args: &Args) -> Result<String, String> {
    let json = args.json;
    let socket = &args.socket;
    let set = |service: &str, server: &str, state: AdminState| Request::SetState {
        service: service.to_owned(),
        server: server.to_owned(),
        state,
    };
    match &args.command {
        Command::Status => ask(socket, &Request::Status, json, status),
        Command::Drain { service, server } => ask(
            socket,
            &set(service, server, AdminState::Drain),
            json,
            admin,
        ),
        Command::Halt { service, server } => {
            ask(socket, &set(service, server, AdminState::Halt), json, admin)
        }
        Command::Online { service, server } => ask(
            socket,
            &set(service, server, AdminState::Online),
            json,
            admin,
        ),
        Command::Weight {
            service,
            server,
            weight,
        } => {
            let request = Request::Weight {
                service: service.clone(),
                server: server.clone(),
                weight: *weight,
            };
            ask(socket, &request, json, admin)
        }
        Command::Apply { file } => {
            let (file, text) = read(file)?;
            ask(socket, &Request::Apply { file, text }, json, applied)
        }
        Command::Plan { file } => {
            let (file, text) = read(file)?;
            ask(socket, &Request::Plan { file, text }, json, plan)
        }
        Command::Affinity { service, client } => {
            let request = Request::Affinity {
                service: service.clone(),
                client: *client,
            };
            ask(socket, &request, json, affinity)
        }
        Command::Ha => ask(socket, &Request::Ha, json, ha),
        Command::Connections { service, server } => {
            let request = Request::Connections {
                service: service.clone(),
                server: server.clone(),
            };
            ask(socket, &request, json, connections)
        }
        Command::User { action } => user_command(socket, action, json),
    }
}

/// An error reaching lbd, with the way to do without it.
fn with_users_file_hint(message: String) -> String {
    if message.starts_with("cannot reach lbd") {
        format!("{message}; or pass --users-file PATH to write the users file directly")
    } else {
        message
    }
}

/// `lbctl user add|del`: through lbd, or straight to `--users-file`.
fn user_command(
    socket: &std::path::Path,
    action: &UserCommand,
    json: bool,
) -> Result<String, String> {
    let direct = |report: Result<UserReport, String>| {
        let report = report?;
        if json {
            serde_json::to_string_pretty(&report)
                .map(|t| t + "\n")
                .map_err(|e| format!("cannot print the answer: {e}"))
        } else {
            Ok(user::report(&report))
        }
    };
    match action {
        UserCommand::Add {
            name,
            role,
            users_file,
        } => {
            let role = role.parse().map_err(|e| format!("{e}"))?;
            if !lb_userspace::web::users::valid_name(name) {
                return Err(format!(
                    "{name:?} is not a valid user name; use 1 to 64 of A-Z a-z 0-9 . _ -"
                ));
            }
            let hash = user::hash(&user::read_password(name)?)?;
            if let Some(path) = users_file {
                return direct(user::add_to_file(path, name, role, &hash));
            }
            let request = Request::UserAdd {
                name: name.clone(),
                role,
                hash,
            };
            ask(socket, &request, json, user::report).map_err(with_users_file_hint)
        }
        UserCommand::Del { name, users_file } => match users_file {
            Some(path) => direct(user::del_from_file(path, name)),
            None => ask(
                socket,
                &Request::UserDel { name: name.clone() },
                json,
                user::report,
            )
            .map_err(with_users_file_hint),
        },
    }
}

fn connections(c: &ConnectionsReport) -> String {
    let rows: Vec<Vec<String>> = c
        .connections
        .iter()
        .map(|e| {
            vec![
                e.client.clone(),
                e.server.clone(),
                e.state.clone(),
                format!("{:.0}", e.age_s),
            ]
        })
        .collect();
    table(&["CLIENT", "SERVER", "STATE", "AGE_S"], &rows)
}

/// One request, its typed reply printed as JSON or by `human`.
fn ask<T: Response + Serialize>(
    socket: &std::path::Path,
    request: &Request,
    json: bool,
    human: fn(&T) -> String,
) -> Result<String, String> {
    let answer: T = call(socket, request, TIMEOUT).map_err(|e| match e {
        ClientError::Refused(message) => message,
        other => other.to_string(),
    })?;
    if json {
        serde_json::to_string_pretty(&answer)
            .map(|text| text + "\n")
            .map_err(|e| format!("cannot print the answer: {e}"))
    } else {
        Ok(human(&answer))
    }
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
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

fn affinity(a: &AffinityReport) -> String {
    let age = a
        .age_s
        .map(|a| format!(", entry age {a:.1} s"))
        .unwrap_or_default();
    format!(
        "{} -> {} (from the {}{age})\n",
        a.client,
        or_dash(a.server.as_ref()),
        match a.source {
            AffinitySource::Table => "affinity table",
            AffinitySource::Hash => "Maglev hash",
        },
    )
}

fn plan(p: &PlanReport) -> String {
    let rows: Vec<Vec<String>> = p
        .services
        .iter()
        .map(|s| {
            let moved = format!("{:.1}%", s.moved_share * 100.0);
            let moved = if s.removed {
                moved + " (removed)"
            } else {
                moved
            };
            vec![s.name.clone(), moved]
        })
        .collect();
    table(&["SERVICE", "CLIENTS MOVED"], &rows)
}

fn applied(a: &ApplyReport) -> String {
    if a.note.is_empty() {
        "applied\n".into()
    } else {
        format!("applied ({})\n", a.note)
    }
}

fn admin(a: &AdminReport) -> String {
    let what = a
        .admin_state
        .map(|s| s.to_string())
        .or_else(|| a.weight.map(|w| w.to_string()))
        .unwrap_or_default();
    format!("{}/{}: {what}\n", a.service, a.server)
}

/// One or two lines on the HA state (`lbctl ha`, and the head of `status`).
fn ha(ha: &HaStatus) -> String {
    if ha.role == HaRole::Standalone {
        return "ha standalone (single node)\n".into();
    }
    let sync = &ha.sync;
    let sync_line = if sync.configured {
        format!(
            "sync {} to {} ({}): sent {}, received {}, lag {} ms",
            if sync.connected {
                "connected"
            } else {
                "NOT connected"
            },
            or_dash(sync.peer.as_ref()),
            or_dash(sync.peer_node.as_ref()),
            sync.sent,
            sync.received,
            or_dash(sync.lag_ms),
        )
    } else {
        "sync not configured".into()
    };
    let sync_line = match (sync.config_version, sync.peer_applied_version) {
        (Some(sent), applied) => {
            let answer = match (applied, &sync.peer_apply_error) {
                (None, _) => "no answer yet".to_owned(),
                (Some(v), Some(why)) => format!("configuration {v} NOT applied: {why}"),
                (Some(v), None) => format!("configuration {v} applied"),
            };
            format!("{sync_line}\nconfiguration {sent} sent; the secondary: {answer}")
        }
        (None, _) => sync_line,
    };
    let state = serde_json::to_value(ha.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_uppercase))
        .unwrap_or_default();
    let role = serde_json::to_value(ha.role)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!(
        "ha {state} ({role}), priority {}{}, peer {}, last advertisement {} ms ago from {}\n{sync_line}\n",
        or_dash(ha.priority),
        if ha.preempt_held {
            " (held until the peer's sessions arrive)"
        } else {
            ""
        },
        or_dash(ha.peer),
        or_dash(ha.last_advert_age_ms),
        or_dash(ha.last_advert_from),
    )
}

fn status(report: &StatusReport) -> String {
    let mut out = format!(
        "node {}  interface {} (XDP {})\n{}\n\n",
        report.node,
        report.interface,
        report.xdp_mode,
        ha(&report.ha).trim_end(),
    );
    for service in &report.services {
        let counters = if let (ServiceType::Redirect, Some(r)) = (&service.kind, &service.redirect)
        {
            format!(
                "redirect {} to {}, {} requests answered",
                r.code,
                r.scheme,
                service.requests.unwrap_or(0)
            )
        } else {
            let mut line = format!("packets {}  bytes {}", service.packets, service.bytes);
            if let (Some(held), Some(max)) = (service.remembered_clients, service.max_clients) {
                let _ = write!(line, "  remembered {held}/{max}");
                if held >= max {
                    line.push_str(" (full: new clients are not remembered)");
                }
            }
            line
        };
        let _ = writeln!(
            out,
            "{}  {}:{}/{}  {counters}",
            service.name, service.vip, service.port, service.protocol,
        );
        let rows: Vec<Vec<String>> = service
            .real_servers
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.address.to_string(),
                    if r.resolved {
                        r.health.as_str().to_owned()
                    } else {
                        // It gets no client whatever its check says.
                        format!("{} unresolved", r.health.as_str())
                    },
                    r.admin_state.to_string(),
                    r.weight.to_string(),
                    match r.active_connections {
                        Some(n) => format!("{} ({n} conns)", r.active_clients),
                        None => r.active_clients.to_string(),
                    },
                    r.packets.to_string(),
                    r.bytes.to_string(),
                ]
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

#[cfg(test)]
mod tests {
    use super::positioned;

    #[test]
    fn only_errors_at_a_place_in_a_file_are_printed_without_the_prefix() {
        assert!(positioned(
            "/etc/lbd/lbd.yaml:4:3: node: unknown key \"nmae\""
        ));
        assert!(positioned("a:b.yaml:12:1: services: expected a list"));
        assert!(!positioned(
            "/etc/lbd/lbd.yaml: cannot read the configuration: denied"
        ));
        assert!(!positioned(
            "no service named \"web\"; `lbctl status` lists them"
        ));
        assert!(!positioned(
            "applying failed: 198.18.0.1:80: address in use; nothing changed"
        ));
        assert!(!positioned(":4:3: no file"));
    }
}
