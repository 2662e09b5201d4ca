//! The web console in a lab: its configuration, its users (added with
//! `lbctl user add` as an operator would), HTTPS requests with curl from the
//! client's namespace, and headless Chromium driven over WebDriver.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    lab::{self, DrLab, LabError},
    lbd::Lbd,
    paths,
};

/// The console's port in the labs.
pub const PORT: u16 = 8443;

/// The `web:` lines under `node:` for a console on `address`, its users
/// in [`users_file`].
#[must_use]
pub fn web_yaml(lab: &DrLab, address: Ipv4Addr, session_timeout_s: u32) -> String {
    format!(
        "  web:\n    listen: {address}:{PORT}\n    users_file: {}\n    session_timeout_s: {session_timeout_s}\n",
        users_file(lab, address).display()
    )
}

/// Where the console users of the load balancer at `address` are.
#[must_use]
pub fn users_file(lab: &DrLab, address: Ipv4Addr) -> PathBuf {
    lab.dir().join(format!("users-{address}"))
}

/// `config` (from [`crate::lbd::lab_config`]) with a console on the load
/// balancer's address.
#[must_use]
pub fn with_console(lab: &DrLab, config: &str, session_timeout_s: u32) -> String {
    with_console_at(config, &web_yaml(lab, lab.lb_address(), session_timeout_s))
}

/// `config` with the `web:` lines `web` (from [`web_yaml`]) under `node:`.
#[must_use]
pub fn with_console_at(config: &str, web: &str) -> String {
    let at = config
        .find("\ncluster:\n")
        .or_else(|| config.find("\nservices:\n"));
    match at {
        Some(i) => format!("{}\n{}{}", &config[..i], web, &config[i + 1..]),
        None => config.to_owned(),
    }
}

/// `lbctl user add NAME --role ROLE` through lbd, the password on stdin.
///
/// # Errors
/// When lbctl fails (its message included).
pub fn add_user(lbd: &Lbd, name: &str, role: &str, password: &str) -> Result<String, LabError> {
    let lbctl = paths::lbctl();
    let socket = lbd.socket.display().to_string();
    lab::run_with_input(
        &[
            &lbctl.display().to_string(),
            "--socket",
            &socket,
            "user",
            "add",
            name,
            "--role",
            role,
        ],
        Some(&format!("{password}\n")),
    )
}

/// One HTTP answer: status, header lines, body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code (0 when curl got none).
    pub status: u16,
    /// The header block, as received.
    pub headers: String,
    /// The body.
    pub body: String,
}

impl Answer {
    /// A header's value (case-insensitive name), the first if repeated.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// The session token the answer sets, if any.
    #[must_use]
    pub fn session_cookie(&self) -> Option<String> {
        let set = self.header("set-cookie")?;
        let value = set.split(';').next()?.trim().strip_prefix("lbd_session=")?;
        (!value.is_empty()).then(|| value.to_owned())
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// When it is not JSON.
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// A request to the console from the client's namespace, with curl:
/// `method` `path`, the session cookie if given, extra headers, a body.
///
/// # Panics
/// When curl cannot be run at all.
#[must_use]
pub fn request(
    lab: &DrLab,
    method: &str,
    path: &str,
    session: Option<&str>,
    headers: &[&str],
    body: Option<&str>,
) -> Answer {
    request_at(lab, lab.lb_address(), method, path, session, headers, body)
}

/// [`request`] to the console of the load balancer at `address`.
///
/// # Panics
/// When curl cannot be run at all.
#[must_use]
pub fn request_at(
    lab: &DrLab,
    address: Ipv4Addr,
    method: &str,
    path: &str,
    session: Option<&str>,
    headers: &[&str],
    body: Option<&str>,
) -> Answer {
    let url = format!("https://{address}:{PORT}{path}");
    let mut cmd: Vec<String> = ["curl", "-sk", "-i", "--max-time", "10", "-X", method]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    if let Some(token) = session {
        cmd.push("-b".into());
        cmd.push(format!("lbd_session={token}"));
    }
    for h in headers {
        cmd.push("-H".into());
        cmd.push((*h).to_owned());
    }
    if let Some(b) = body {
        cmd.push("--data-binary".into());
        cmd.push(b.to_owned());
    }
    cmd.push(url);
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let out = lab::run_in(lab.client_ns(), &args).unwrap_or_else(|e| panic!("{e}"));
    parse(&out)
}

/// Splits curl's `-i` output.
fn parse(out: &str) -> Answer {
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        headers: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Signs in with the form, as a browser does; the answer carries the
/// cookie when it worked.
#[must_use]
pub fn sign_in(lab: &DrLab, user: &str, password: &str) -> Answer {
    sign_in_at(lab, lab.lb_address(), user, password)
}

/// [`sign_in`] to the console of the load balancer at `address`.
#[must_use]
pub fn sign_in_at(lab: &DrLab, address: Ipv4Addr, user: &str, password: &str) -> Answer {
    request_at(
        lab,
        address,
        "POST",
        "/login",
        None,
        &["Content-Type: application/x-www-form-urlencoded"],
        Some(&format!("user={user}&password={password}")),
    )
}

/// Waits until the console accepts TLS connections from the client.
///
/// # Errors
/// [`LabError::Wait`] when it does not within `timeout`.
pub fn wait_listening(lab: &DrLab, timeout: Duration) -> Result<(), LabError> {
    lab::wait_for_tcp(
        lab.client_ns(),
        SocketAddrV4::new(lab.lb_address(), PORT),
        timeout,
    )
}

/// Where a test writes what a person would look at (screenshots):
/// `target/test-output/NAME`.
///
/// # Panics
/// When the folder cannot be made.
#[must_use]
pub fn output_dir(name: &str) -> PathBuf {
    let dir = paths::target_dir().join("test-output").join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// The width and height in a PNG's header.
#[must_use]
pub fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" {
        return None;
    }
    let word = |at: usize| png.get(at..at + 4)?.try_into().ok().map(u32::from_be_bytes);
    Some((word(16)?, word(20)?))
}

/// Chromium's command-line flags for a headless run as root on a machine
/// without network (no background connections), with `profile` as its
/// fresh profile and the lab's self-signed certificate accepted.
#[must_use]
pub fn chromium_args(profile: &Path) -> Vec<String> {
    [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--ignore-certificate-errors",
        "--window-size=1280,1000",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(std::iter::once(format!(
        "--user-data-dir={}",
        profile.display()
    )))
    .collect()
}
