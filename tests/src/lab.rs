//! Network-namespace lab for the direct-routing (DR) load balancer.
//!
//! [`DrLab`] builds one LAN out of namespaces: a "switch" namespace holding
//! the bridge `br0`, and host namespaces (load balancer, client, real
//! servers) each with a veth `eth0` whose peer is a port of `br0`. All hosts
//! share 198.18.0.0/22. The real servers hold the VIP on `lo`, never answer
//! ARP for it and run a small HTTP server that answers with their name. The
//! load balancer's namespace gets no VIP: the daemon under test adds it.
//! With [`DrLabOptions::second_lb`] a second load-balancer namespace joins
//! the LAN for HA pairs; [`DrLab::cut_lbs`] and [`DrLab::heal_lbs`] split
//! and rejoin the two.
//!
//! Client source addresses (198.18.1.0, 198.18.1.1, ...) are /32 addresses on
//! the client's `eth0`; the other hosts route 198.18.1.0/24 and 198.18.2.0/24
//! through the client's primary address 198.18.0.2, so replies reach the
//! client without one neighbour entry per source (the neighbour table limit
//! is shared by all namespaces).
//!
//! The generic helpers ([`Netns`], [`run`], [`run_in`], [`spawn_in`],
//! [`in_netns`], [`terminate_all`], [`unique_tag`]) are meant for reuse.
//! Everything a lab creates (namespaces, processes, its temporary directory)
//! is removed when it is dropped, also while unwinding from a panic.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::thread;
use std::time::Duration;

use crate::wait::{poll_until, try_wait_until, Probe, WaitError};

const HTTP_SERVER_PY: &str = include_str!("lab/http_server.py");
const CLIENT_PY: &str = include_str!("lab/client.py");

/// How long a process gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long a freshly started HTTP server may take to listen.
const HTTP_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-connection timeout used by [`DrLab::run_clients`].
const DEFAULT_CONN_TIMEOUT: Duration = Duration::from_secs(2);
/// Extra time granted to `client.py` beyond its own deadline.
const CLIENT_GRACE: Duration = Duration::from_secs(5);
/// Largest number of client source addresses a lab supports.
pub const MAX_CLIENT_SOURCES: usize = 510;
/// Largest number of real servers a lab supports.
pub const MAX_REAL_SERVERS: usize = 200;

const LAN_PREFIX: u8 = 22;
const LAN_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const LB_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The second load balancer's address (labs with [`DrLabOptions::second_lb`]).
const LB2_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const FIRST_REAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 21);
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 0);
/// Labs with [`DrLabOptions::server_lan`]: the real servers' own subnet,
/// behind the load balancer's `eth1` (its first address), with no VIP and
/// default ARP settings: servers NAT and SNAT reach unchanged.
const SERVER_LAN: Ipv4Addr = Ipv4Addr::new(198, 18, 8, 0);
const SERVER_LAN_PREFIX: u8 = 24;
/// The load balancer's address on the server LAN.
pub const LB_SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 8, 1);
/// The /24s holding client sources; other hosts route them via the client.
pub const SOURCE_NETS: [&str; 2] = ["198.18.1.0/24", "198.18.2.0/24"];

/// Everything that can go wrong while building or driving a lab.
#[derive(Debug)]
pub enum LabError {
    /// A command ran but did not exit successfully.
    Command {
        /// The command line.
        cmd: String,
        /// How it ended.
        status: String,
        /// Its (trimmed) standard error.
        stderr: String,
    },
    /// An OS-level operation (spawning, file access, setns) failed.
    Io {
        /// What was being attempted.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Something did not happen in time.
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        after: Duration,
    },
    /// Options or arguments that cannot work.
    Invalid(String),
    /// A bounded wait ended without what it awaited.
    Wait(WaitError),
    /// A helper produced output that could not be understood, or died.
    Output {
        /// Which output.
        what: String,
        /// What was wrong with it.
        detail: String,
    },
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabError::Command {
                cmd,
                status,
                stderr,
            } => {
                write!(f, "`{cmd}` failed ({status})")?;
                if stderr.is_empty() {
                    write!(f, " with no stderr output")
                } else {
                    write!(f, ": {stderr}")
                }
            }
            LabError::Io { what, source } => write!(f, "{what}: {source}"),
            LabError::Timeout { what, after } => write!(f, "{what}: timed out after {after:?}"),
            LabError::Invalid(msg) => write!(f, "invalid lab request: {msg}"),
            LabError::Wait(e) => write!(f, "{e}"),
            LabError::Output { what, detail } => write!(f, "{what}: {detail}"),
        }
    }
}

impl std::error::Error for LabError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LabError::Io { source, .. } => Some(source),
            LabError::Wait(e) => Some(e),
            _ => None,
        }
    }
}

impl From<WaitError> for LabError {
    fn from(e: WaitError) -> Self {
        LabError::Wait(e)
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// Writes a warning to stderr; never panics (used from `Drop`).
fn warn(msg: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr(), "lab: {msg}");
}

/// Renders a command line for messages, quoting words that need it.
fn display_cmd(cmd: &[&str]) -> String {
    cmd.iter()
        .map(|word| {
            if !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c))
            {
                (*word).to_string()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command to completion and returns its standard output.
///
/// # Errors
/// [`LabError::Io`] if it cannot be started, [`LabError::Command`] (with the
/// command line, exit status and stderr) if it exits unsuccessfully.
pub fn run(cmd: &[&str]) -> Result<String, LabError> {
    run_with_input(cmd, None)
}

/// Like [`run`], feeding `input` (if any) to the command's standard input.
///
/// # Errors
/// As [`run`].
pub fn run_with_input(cmd: &[&str], input: Option<&str>) -> Result<String, LabError> {
    let (program, args) = cmd
        .split_first()
        .ok_or_else(|| LabError::Invalid("empty command line".into()))?;
    let line = display_cmd(cmd);
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("cannot start `{line}`")))?;
    let stdin = child.stdin.take();
    let output = thread::scope(|scope| {
        if let (Some(mut pipe), Some(data)) = (stdin, input) {
            // A write error means the command died early; its status says why.
            scope.spawn(move || {
                let _ = pipe.write_all(data.as_bytes());
            });
        }
        child.wait_with_output()
    })
    .map_err(io_err(format!("cannot collect output of `{line}`")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LabError::Command {
            cmd: line,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

fn netns_exec<'a>(ns: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(cmd);
    full
}

/// Runs a command inside namespace `ns` (`ip netns exec NS ...`).
///
/// # Errors
/// As [`run`].
pub fn run_in(ns: &str, cmd: &[&str]) -> Result<String, LabError> {
    run(&netns_exec(ns, cmd))
}

/// Runs `ip -n NS -batch -` with `commands` (one `ip` command per line).
///
/// # Errors
/// As [`run`]; the batch stops at its first failing line.
pub fn ip_batch(ns: &str, commands: &str) -> Result<String, LabError> {
    run_with_input(&["ip", "-n", ns, "-batch", "-"], Some(commands))
}

/// Starts a command inside namespace `ns` with stdout and stderr appended to
/// `log` and stdin closed. The caller owns the returned child; see
/// [`DrLab::adopt`] to have a lab clean it up.
///
/// # Errors
/// [`LabError::Io`] if the log cannot be opened or the process not started.
pub fn spawn_in(ns: &str, cmd: &[&str], log: &Path) -> Result<Child, LabError> {
    let line = display_cmd(&netns_exec(ns, cmd));
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("cannot open log {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err(format!("cannot open log {}", log.display())))?;
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io_err(format!("cannot start `{line}`")))
}

/// Runs `f` on a helper thread that has joined network namespace `ns`, so
/// sockets it creates live there. The calling thread is not affected.
///
/// # Errors
/// [`LabError::Io`] if the namespace cannot be opened or joined.
///
/// # Panics
/// Re-raises a panic of `f`.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T, LabError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).map_err(io_err(format!("cannot open {path}")))?;
    let joined = thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: `file` is an open namespace file; setns only changes
                // the network namespace of this short-lived helper thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
    });
    match joined {
        Ok(result) => result.map_err(io_err(format!("cannot enter network namespace {ns}"))),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Polls until a TCP connection to `addr` from inside `ns` succeeds.
///
/// # Errors
/// [`LabError::Wait`] if nothing accepts within `timeout` (with the last
/// connection error) or the namespace cannot be entered.
pub fn wait_for_tcp(ns: &str, addr: SocketAddrV4, timeout: Duration) -> Result<(), LabError> {
    let what = format!("{addr} to accept in namespace {ns}");
    poll_until(&what, timeout, || tcp_probe(ns, addr)).map_err(LabError::from)
}

/// Per-attempt bound of [`probe_tcp`]: connecting inside the LAN is
/// immediate; a refused port answers at once.
const TCP_PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// One connection attempt to `addr` from inside `ns`: `Ok` when it was
/// accepted, else the error.
fn probe_tcp(ns: &str, addr: SocketAddrV4) -> Result<Result<(), String>, LabError> {
    in_netns(ns, move || {
        TcpStream::connect_timeout(&SocketAddr::V4(addr), TCP_PROBE_TIMEOUT)
            .map(drop)
            .map_err(|e| format!("connecting to {addr}: {e}"))
    })
}

/// [`probe_tcp`] as a [`Probe`]: a namespace that cannot be entered fails the wait.
fn tcp_probe(ns: &str, addr: SocketAddrV4) -> Probe<()> {
    match probe_tcp(ns, addr) {
        Ok(Ok(())) => Probe::Ready(()),
        Ok(Err(seen)) => Probe::Pending(seen),
        Err(e) => Probe::Failed(e.to_string()),
    }
}

fn send_signal(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain kill(2). Callers only signal children that have not
        // been reaped yet, so the pid cannot have been reused.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Stops processes: SIGTERM to all still running, up to `grace` for them to
/// exit, then SIGKILL for the rest; every child is reaped. Returns one exit
/// status (or error) per child, in order.
pub fn terminate_all(children: &mut [&mut Child], grace: Duration) -> Vec<io::Result<ExitStatus>> {
    let mut done: Vec<Option<io::Result<ExitStatus>>> = Vec::with_capacity(children.len());
    for child in children.iter_mut() {
        done.push(match child.try_wait() {
            Ok(Some(status)) => Some(Ok(status)),
            Ok(None) => {
                send_signal(child, libc::SIGTERM);
                None
            }
            Err(e) => Some(Err(e)),
        });
    }
    // Whoever is still running after `grace` gets SIGKILL below.
    let _ = try_wait_until("processes to exit after SIGTERM", grace, || {
        let mut pending = 0_usize;
        for (child, slot) in children.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match child.try_wait() {
                    Ok(Some(status)) => *slot = Some(Ok(status)),
                    Ok(None) => pending += 1,
                    Err(e) => *slot = Some(Err(e)),
                }
            }
        }
        if pending == 0 {
            Ok(())
        } else {
            Err(format!("{pending} still running"))
        }
    });
    for (child, slot) in children.iter_mut().zip(done.iter_mut()) {
        if slot.is_none() {
            *slot = Some(child.kill().and_then(|()| child.wait()));
        }
    }
    done.into_iter()
        .map(|slot| slot.unwrap_or_else(|| Err(io::Error::other("child was not reaped"))))
        .collect()
}

/// Stops one process like [`terminate_all`].
///
/// # Errors
/// The error of waiting for or killing the child.
pub fn terminate(child: &mut Child, grace: Duration) -> io::Result<ExitStatus> {
    terminate_all(&mut [child], grace)
        .pop()
        .unwrap_or_else(|| Err(io::Error::other("child was not reaped")))
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// A short name unique among live processes: `lt<pid>-<counter>`, both in
/// base 36 (at most 12 characters in practice). Use it to prefix namespace
/// and interface names so labs can run in parallel.
#[must_use]
pub fn unique_tag() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("lt{}-{}", base36(std::process::id()), base36(n))
}

/// The PID a lab name embeds, for names [`unique_tag`] makes: `TAG` (the
/// lab's directory is `lb-lab-TAG`) or `TAG-ROLE` (its namespaces, roles
/// `sw`, `lb`, `lb2`, `cl`, `rsN`). Anything else is not a lab's: `None`.
fn lab_name_pid(name: &str) -> Option<u32> {
    let (pid_text, rest) = name.strip_prefix("lt")?.split_once('-')?;
    let (counter, role) = match rest.split_once('-') {
        Some((counter, role)) => (counter, Some(role)),
        None => (rest, None),
    };
    let pid = u32::from_str_radix(pid_text, 36).ok()?;
    let counter_ok = u32::from_str_radix(counter, 36).is_ok_and(|n| base36(n) == counter);
    let role_ok = role.is_none_or(|role| {
        matches!(role, "sw" | "lb" | "lb2" | "cl")
            || role
                .strip_prefix("rs")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    (base36(pid) == pid_text && counter_ok && role_ok).then_some(pid)
}

/// Whether process `pid` exists (a zombie counts: its parent may reap it yet).
fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `name` is a lab's (see [`lab_name_pid`]) whose test process no
/// longer exists.
fn is_stale(name: &str) -> bool {
    lab_name_pid(name).is_some_and(|pid| pid != std::process::id() && !process_alive(pid))
}

/// Removes what labs of test processes that no longer exist (a killed
/// `cargo test`, a crash) left behind: their namespaces, killing what still
/// runs inside them (their lbd, HTTP servers, clients), and their temporary
/// directories. Lab names embed the PID of the process that made them (see
/// [`unique_tag`]); nothing named for a live process is touched. All of a
/// lab's links are inside its namespaces and go with them. Runs once per
/// process; problems are warnings.
pub fn sweep_stale_labs() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        match run(&["ip", "netns", "list"]) {
            Ok(list) => {
                for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
                    if is_stale(ns) {
                        sweep_namespace(ns);
                    }
                }
            }
            Err(e) => warn(format_args!(
                "cannot list namespaces to sweep stale labs: {e}"
            )),
        }
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let Some(tag) = name.to_str().and_then(|n| n.strip_prefix("lb-lab-")) else {
                continue;
            };
            if is_stale(tag) {
                let path = entry.path();
                match fs::remove_dir_all(&path) {
                    Ok(()) => warn(format_args!(
                        "removed {} left by a test process that is gone",
                        path.display()
                    )),
                    Err(e) => warn(format_args!("cannot remove stale {}: {e}", path.display())),
                }
            }
        }
    });
}

/// Kills what runs in the stale lab namespace `ns`, then deletes it.
fn sweep_namespace(ns: &str) {
    let me = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<libc::pid_t>().ok())
            .filter(|&pid| pid > 1 && pid != me)
        {
            // SAFETY: kill(2) of a process inside the namespace of a lab
            // whose test process is gone.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    match run(&["ip", "netns", "del", ns]) {
        Ok(_) => warn(format_args!(
            "removed namespace {ns} left by a test process that is gone"
        )),
        Err(e) => warn(format_args!("cannot remove stale namespace {ns}: {e}")),
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name`.
    ///
    /// # Errors
    /// [`LabError::Command`] if `ip netns add` fails (for instance, the name
    /// exists already).
    pub fn add(name: &str) -> Result<Netns, LabError> {
        run(&["ip", "netns", "add", name])?;
        Ok(Netns {
            name: name.to_string(),
        })
    }

    /// The namespace's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(&["ip", "netns", "del", &self.name]) {
            warn(format_args!("cannot delete namespace {}: {e}", self.name));
        }
    }
}

/// Settings for [`DrLab::start`].
#[derive(Clone, Debug)]
pub struct DrLabOptions {
    /// Number of real servers, `rs1`..`rsN` (1 to [`MAX_REAL_SERVERS`]).
    pub real_servers: usize,
    /// Number of client source addresses (1 to [`MAX_CLIENT_SOURCES`]).
    pub client_sources: usize,
    /// The virtual IP, inside 198.18.0.0/22 and clear of the lab's addresses.
    pub vip: Ipv4Addr,
    /// Port of the real servers' HTTP listeners.
    pub http_port: u16,
    /// Port of the real servers' HTTPS listeners, if any: they answer like
    /// the HTTP ones, with a certificate made for the lab (see [`DrLab::certificate`]).
    pub tls_port: Option<u16>,
    /// Names the lab certificate is valid for (besides the VIP).
    pub tls_names: Vec<String>,
    /// More VIPs every real server holds on `lo` (free host addresses of
    /// the LAN, like `vip`), for labs with several virtual services.
    pub extra_vips: Vec<Ipv4Addr>,
    /// XDP object with a do-nothing program in section "xdp".
    pub lab_pass_obj: PathBuf,
    /// A second load-balancer namespace `TAG-lb2` (198.18.0.11, switch port
    /// `lb2`) set up like the first, for HA pairs.
    pub second_lb: bool,
    /// The real servers on a subnet of their own (198.18.8.0/24, a second
    /// switch), reached through the load balancer's `eth1` (198.18.8.1,
    /// their default route), without the VIP and with default ARP
    /// settings: for NAT and SNAT.
    pub server_lan: bool,
    /// Without `server_lan`: the last this many real servers sit on the
    /// server subnet, the others on the LAN (direct routing beside NAT).
    pub server_lan_servers: usize,
}

impl Default for DrLabOptions {
    /// 3 real servers, 256 sources, VIP 198.18.0.100, port 80, and the
    /// `lab-pass` object from `$LB_LAB_PASS_OBJ` or the workspace target dir.
    fn default() -> Self {
        let lab_pass_obj = std::env::var_os("LB_LAB_PASS_OBJ").map_or_else(
            || {
                PathBuf::from(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../target/bpfel-unknown-none/release/lab-pass"
                ))
            },
            PathBuf::from,
        );
        DrLabOptions {
            real_servers: 3,
            client_sources: 256,
            vip: Ipv4Addr::new(198, 18, 0, 100),
            http_port: 80,
            tls_port: None,
            tls_names: vec!["lab.example.org".into()],
            extra_vips: Vec::new(),
            lab_pass_obj,
            second_lb: false,
            server_lan: false,
            server_lan_servers: 0,
        }
    }
}

/// Identifies a process tracked by a [`DrLab`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcHandle(u64);

#[derive(Debug)]
struct Tracked {
    handle: ProcHandle,
    child: Child,
}

fn offset(base: Ipv4Addr, n: usize) -> Ipv4Addr {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    Ipv4Addr::from(u32::from(base).saturating_add(n))
}

fn mac_for(addr: Ipv4Addr) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, addr.octets()[3]]
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The direct-routing lab: switch, load balancer, client and real servers.
#[derive(Debug)]
pub struct DrLab {
    tag: String,
    opts: DrLabOptions,
    dir: PathBuf,
    dir_created: bool,
    switch: String,
    lb: String,
    lb2: Option<String>,
    client: String,
    reals: Vec<String>,
    /// In creation order; deleted in reverse.
    namespaces: Vec<Netns>,
    sources: Vec<Ipv4Addr>,
    procs: Vec<Tracked>,
    next_handle: u64,
    http: Vec<Option<ProcHandle>>,
    client_runs: AtomicU32,
}

impl DrLab {
    /// Builds the topology, starts one HTTP server per real server and waits
    /// until all of them listen. Whatever was built is torn down again if
    /// this fails. The first lab of a process first removes what labs of
    /// test processes that no longer exist left behind (see
    /// [`sweep_stale_labs`]).
    ///
    /// # Errors
    /// [`LabError::Invalid`] for unusable options or without root, otherwise
    /// the error of the step that failed.
    pub fn start(opts: DrLabOptions) -> Result<DrLab, LabError> {
        validate(&opts)?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LabError::Invalid(
                "the lab creates network namespaces: run the tests as root \
                 (for instance `sudo -E cargo xtask test`)"
                    .into(),
            ));
        }
        sweep_stale_labs();
        let tag = unique_tag();
        let dir = std::env::temp_dir().join(format!("lb-lab-{tag}"));
        let mut lab = DrLab {
            switch: format!("{tag}-sw"),
            lb: format!("{tag}-lb"),
            lb2: opts.second_lb.then(|| format!("{tag}-lb2")),
            client: format!("{tag}-cl"),
            reals: (1..=opts.real_servers)
                .map(|i| format!("{tag}-rs{i}"))
                .collect(),
            sources: (0..opts.client_sources)
                .map(|i| offset(FIRST_SOURCE, i))
                .collect(),
            http: vec![None; opts.real_servers],
            tag,
            opts,
            dir,
            dir_created: false,
            namespaces: Vec::new(),
            procs: Vec::new(),
            next_handle: 0,
            client_runs: AtomicU32::new(0),
        };
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), LabError> {
        fs::create_dir(&self.dir)
            .map_err(io_err(format!("cannot create {}", self.dir.display())))?;
        self.dir_created = true;
        for (name, text) in [("http_server.py", HTTP_SERVER_PY), ("client.py", CLIENT_PY)] {
            let path = self.dir.join(name);
            fs::write(&path, text).map_err(io_err(format!("cannot write {}", path.display())))?;
        }
        if self.opts.tls_port.is_some() {
            self.write_certificate()?;
        }

        let switch = self.switch.clone();
        self.namespaces.push(Netns::add(&switch)?);
        run_in(
            &switch,
            &[
                "sysctl",
                "-q",
                "-e",
                "-w",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
        ip_batch(
            &switch,
            "link set lo up\nlink add br0 type bridge\nlink set br0 up\n\
             link add br1 type bridge\nlink set br1 up\n",
        )?;

        let mut hosts = vec![(self.lb.clone(), "lb".to_string(), LB_ADDR)];
        if let Some(lb2) = &self.lb2 {
            hosts.push((lb2.clone(), "lb2".to_string(), LB2_ADDR));
        }
        hosts.push((self.client.clone(), "cl".to_string(), CLIENT_ADDR));
        for (i, ns) in self.reals.iter().enumerate() {
            hosts.push((ns.clone(), self.real_name(i), self.real_address(i)));
        }
        for (ns, port, addr) in &hosts {
            self.namespaces.push(Netns::add(ns)?);
            self.setup_host(ns, port, *addr)?;
        }
        let mut ports = hosts
            .iter()
            .fold(String::new(), |mut batch, (ns, port, _)| {
                let on_server_lan = self
                    .reals
                    .iter()
                    .position(|r| r == ns)
                    .is_some_and(|i| self.on_server_lan(i));
                let bridge = if on_server_lan { "br1" } else { "br0" };
                let _ = writeln!(batch, "link set {port} master {bridge} up");
                batch
            });
        if self.has_server_lan() {
            ip_batch(
                &self.lb,
                &format!(
                    "link add eth1 address {mac} type veth peer name lbs netns {switch}\n\
                     addr add {LB_SERVER_ADDR}/{SERVER_LAN_PREFIX} dev eth1\n\
                     link set eth1 up\n",
                    mac = mac_string([0x02, 0, 0, 0, 8, 1]),
                ),
            )?;
            ports.push_str("link set lbs master br1 up\n");
        }
        ip_batch(&switch, &ports)?;

        // veth trap: XDP_TX frames of a load balancer only arrive if its
        // switch port runs XDP itself.
        let obj = self.opts.lab_pass_obj.to_string_lossy().into_owned();
        let lb_ports: &[&str] = if self.lb2.is_some() {
            &["lb", "lb2"]
        } else {
            &["lb"]
        };
        let server_port: &[&str] = if self.has_server_lan() { &["lbs"] } else { &[] };
        for port in lb_ports.iter().chain(server_port) {
            run(&[
                "ip", "-n", &switch, "link", "set", "dev", port, "xdpdrv", "obj", &obj, "sec",
                "xdp",
            ])?;
        }
        run_in(&self.client, &["ethtool", "-K", "eth0", "tx", "off"])?;
        // veth trap 2 for the servers too: with NAT or SNAT their replies
        // pass through the load balancer's XDP, which updates the checksum
        // in place, so it must be complete.
        for ns in &self.reals {
            run_in(ns, &["ethtool", "-K", "eth0", "tx", "off"])?;
        }

        for i in 0..self.reals.len() {
            self.spawn_http(i)?;
        }
        for i in 0..self.reals.len() {
            self.wait_http(i)?;
        }
        Ok(())
    }

    /// Sysctls, `eth0` (peer `port` on the switch), addresses and routes of
    /// one host namespace.
    fn setup_host(&self, ns: &str, port: &str, addr: Ipv4Addr) -> Result<(), LabError> {
        let is_lb = ns == self.lb || self.lb2.as_deref() == Some(ns);
        let is_real = !is_lb && ns != self.client;
        let on_server_lan = self
            .reals
            .iter()
            .position(|r| r == ns)
            .is_some_and(|i| self.on_server_lan(i));
        let mut sysctls = vec![
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ];
        if is_lb {
            sysctls.push("net.ipv4.ip_forward=0");
        }
        if is_real && !on_server_lan {
            // Set before eth0 exists, so eth0 inherits the defaults.
            sysctls.extend([
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.default.arp_ignore=1",
                "net.ipv4.conf.default.arp_announce=2",
                "net.ipv4.conf.lo.arp_ignore=1",
                "net.ipv4.conf.lo.arp_announce=2",
            ]);
        }
        let mut cmd = vec!["sysctl", "-q", "-e", "-w"];
        cmd.extend(sysctls);
        run_in(ns, &cmd)?;

        let prefix = if on_server_lan {
            SERVER_LAN_PREFIX
        } else {
            LAN_PREFIX
        };
        let mut batch = format!(
            "link set lo up\n\
             link add eth0 address {mac} type veth peer name {port} netns {switch}\n\
             addr add {addr}/{prefix} dev eth0\n\
             link set eth0 up\n",
            mac = mac_string(mac_for(addr)),
            switch = self.switch,
        );
        if on_server_lan {
            let _ = writeln!(batch, "route add default via {LB_SERVER_ADDR} dev eth0");
            ip_batch(ns, &batch)?;
            return Ok(());
        }
        if ns == self.client {
            for source in &self.sources {
                let _ = writeln!(batch, "addr add {source}/32 dev eth0");
            }
        } else {
            for net in SOURCE_NETS {
                let _ = writeln!(batch, "route add {net} via {CLIENT_ADDR} dev eth0 onlink");
            }
        }
        if is_real {
            for vip in std::iter::once(&self.opts.vip).chain(&self.opts.extra_vips) {
                let _ = writeln!(batch, "addr add {vip}/32 dev lo");
            }
        }
        ip_batch(ns, &batch)?;
        Ok(())
    }

    /// A self-signed certificate for the VIP and `tls_names`, written to
    /// `cert.pem` and `key.pem` in the lab directory.
    fn write_certificate(&self) -> Result<(), LabError> {
        let mut names = self.opts.tls_names.clone();
        names.push(self.opts.vip.to_string());
        names.extend(self.opts.extra_vips.iter().map(ToString::to_string));
        let cert = rcgen::generate_simple_self_signed(names)
            .map_err(|e| LabError::Invalid(format!("cannot make the lab certificate: {e}")))?;
        let (cert_path, key_path) = self.certificate();
        fs::write(&cert_path, cert.cert.pem())
            .map_err(io_err(format!("cannot write {}", cert_path.display())))?;
        fs::write(&key_path, cert.signing_key.serialize_pem())
            .map_err(io_err(format!("cannot write {}", key_path.display())))?;
        Ok(())
    }

    /// Paths of the lab's certificate and key (PEM), when `tls_port` is set.
    #[must_use]
    pub fn certificate(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("cert.pem"), self.dir.join("key.pem"))
    }

    fn spawn_http(&mut self, i: usize) -> Result<(), LabError> {
        let name = self.real_name(i);
        let script = self.dir.join("http_server.py");
        let script = script.to_string_lossy().into_owned();
        let port = self.opts.http_port.to_string();
        let ns = self.reals[i].clone();
        let log = self.log_path(&format!("{name}-http.log"));
        let (cert, key) = self.certificate();
        let (cert, key) = (
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        );
        let tls_port = self.opts.tls_port.map(|p| p.to_string());
        let mut cmd = vec!["python3", "-u", &script, &name, &port];
        if let Some(tls_port) = &tls_port {
            cmd.extend(["--tls", tls_port.as_str(), cert.as_str(), key.as_str()]);
        }
        let handle = self.spawn_in(&ns, &cmd, &log)?;
        self.http[i] = Some(handle);
        Ok(())
    }

    fn wait_http(&mut self, i: usize) -> Result<(), LabError> {
        let name = self.real_name(i);
        let addr = SocketAddrV4::new(self.real_address(i), self.opts.http_port);
        let handle =
            self.http[i].ok_or_else(|| LabError::Invalid(format!("{name} has no HTTP server")))?;
        let what = format!("the HTTP server of {name} to listen on {addr}");
        let ns = self.reals[i].clone();
        let log = self.log_path(&format!("{name}-http.log"));
        poll_until(&what, HTTP_START_TIMEOUT, || match self.try_wait(handle) {
            Ok(None) => tcp_probe(&ns, addr),
            Ok(Some(status)) => {
                let tail = log_tail(&log, 1000);
                Probe::Failed(format!("it exited ({status}): {tail}"))
            }
            Err(e) => Probe::Failed(e.to_string()),
        })
        .map_err(LabError::from)
    }

    /// The lab's unique tag; all its namespace names start with `TAG-`.
    #[must_use]
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The options the lab was started with.
    #[must_use]
    pub fn options(&self) -> &DrLabOptions {
        &self.opts
    }

    /// The lab's temporary directory (scripts, logs); removed on drop.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path for a log file named `name` in the lab's directory. Logs
    /// ending in `.log` are printed to stderr if the lab is dropped during a
    /// panic.
    #[must_use]
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Namespace of the load balancer.
    #[must_use]
    pub fn lb_ns(&self) -> &str {
        &self.lb
    }

    /// Namespace of the second load balancer (switch port `lb2`).
    ///
    /// # Panics
    /// If the lab was started without [`DrLabOptions::second_lb`].
    #[must_use]
    pub fn lb2_ns(&self) -> &str {
        self.lb2.as_deref().unwrap_or_else(|| {
            panic!(
                "lab {} has no second load balancer (set DrLabOptions::second_lb)",
                self.tag
            )
        })
    }

    /// The second load balancer's address, 198.18.0.11.
    #[must_use]
    pub fn lb2_address(&self) -> Ipv4Addr {
        LB2_ADDR
    }

    /// MAC of the second load balancer's `eth0`: 02:00:00:00:00:0b.
    #[must_use]
    pub fn lb2_mac(&self) -> [u8; 6] {
        mac_for(LB2_ADDR)
    }

    /// Split brain: each load balancer gets a blackhole route to the other's
    /// address, so neither sends it anything (unicast VRRP and sync are cut;
    /// clients and real servers are not). A socket bound to a device
    /// (`SO_BINDTODEVICE`, as VRRP speakers use) ignores a blackhole route:
    /// the kernel then assumes the destination is on-link. So each also gets
    /// an nftables table `lab_cut` dropping what arrives from the other.
    /// Undo with [`Self::heal_lbs`].
    ///
    /// # Errors
    /// [`LabError::Invalid`] without a second load balancer, else the error
    /// of `ip route add` or `nft` (for instance, when already cut).
    pub fn cut_lbs(&self) -> Result<(), LabError> {
        for (ns, other) in self.lb_pair()? {
            let dest = format!("{other}/32");
            run(&["ip", "-n", ns, "route", "add", "blackhole", &dest])?;
            let rules = format!(
                "table ip lab_cut {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
                 ip saddr {other} drop\n  }}\n}}\n"
            );
            run_with_input(&["ip", "netns", "exec", ns, "nft", "-f", "-"], Some(&rules))?;
        }
        Ok(())
    }

    /// Removes the blackhole routes and nftables tables of [`Self::cut_lbs`].
    ///
    /// # Errors
    /// [`LabError::Invalid`] without a second load balancer, else the error
    /// of `ip route del` or `nft` (for instance, when not cut).
    pub fn heal_lbs(&self) -> Result<(), LabError> {
        for (ns, other) in self.lb_pair()? {
            let dest = format!("{other}/32");
            run(&["ip", "-n", ns, "route", "del", "blackhole", &dest])?;
            run_in(ns, &["nft", "delete", "table", "ip", "lab_cut"])?;
        }
        Ok(())
    }

    /// Each load balancer's namespace with the other's address.
    fn lb_pair(&self) -> Result<[(&str, Ipv4Addr); 2], LabError> {
        let lb2 = self.lb2.as_deref().ok_or_else(|| {
            LabError::Invalid(format!("lab {} has no second load balancer", self.tag))
        })?;
        Ok([(self.lb.as_str(), LB2_ADDR), (lb2, LB_ADDR)])
    }

    /// Namespace of the client.
    #[must_use]
    pub fn client_ns(&self) -> &str {
        &self.client
    }

    /// Namespace of real server `i` (0-based).
    ///
    /// # Panics
    /// If `i` is not below the number of real servers.
    #[must_use]
    pub fn real_ns(&self, i: usize) -> &str {
        &self.reals[i]
    }

    /// Namespace of the switch (bridge `br0`; ports named `lb`, `lb2` (if
    /// any), `cl`, `rsN`).
    #[must_use]
    pub fn switch_ns(&self) -> &str {
        &self.switch
    }

    /// The load balancer's interface inside [`Self::lb_ns`].
    #[must_use]
    pub fn lb_interface(&self) -> &'static str {
        "eth0"
    }

    /// The load balancer's address, 198.18.0.10.
    #[must_use]
    pub fn lb_address(&self) -> Ipv4Addr {
        LB_ADDR
    }

    /// The client's primary address, 198.18.0.2.
    #[must_use]
    pub fn client_address(&self) -> Ipv4Addr {
        CLIENT_ADDR
    }

    /// The VIP.
    #[must_use]
    pub fn vip(&self) -> Ipv4Addr {
        self.opts.vip
    }

    /// The real servers' HTTP port.
    #[must_use]
    pub fn http_port(&self) -> u16 {
        self.opts.http_port
    }

    /// Number of real servers.
    #[must_use]
    pub fn real_count(&self) -> usize {
        self.reals.len()
    }

    /// Address of real server `i` (0-based): 198.18.0.21 + i.
    #[must_use]
    pub fn real_address(&self, i: usize) -> Ipv4Addr {
        if self.on_server_lan(i) {
            offset(offset(SERVER_LAN, 21), i)
        } else {
            offset(FIRST_REAL, i)
        }
    }

    /// Whether real server `i` sits on the server subnet.
    #[must_use]
    pub fn on_server_lan(&self, i: usize) -> bool {
        self.opts.server_lan
            || i + self.opts.server_lan_servers.min(self.opts.real_servers)
                >= self.opts.real_servers
    }

    /// Whether any real server sits on the server subnet (the load
    /// balancer then has `eth1` on it).
    #[must_use]
    pub fn has_server_lan(&self) -> bool {
        self.opts.server_lan || self.opts.server_lan_servers > 0
    }

    /// Name of real server `i` (0-based): "rs1", "rs2", ...
    #[must_use]
    pub fn real_name(&self, i: usize) -> String {
        format!("rs{}", i + 1)
    }

    /// MAC of the load balancer's `eth0`: 02:00:00:00:00:0a.
    #[must_use]
    pub fn lb_mac(&self) -> [u8; 6] {
        mac_for(LB_ADDR)
    }

    /// MAC of the client's `eth0`: 02:00:00:00:00:02.
    #[must_use]
    pub fn client_mac(&self) -> [u8; 6] {
        mac_for(CLIENT_ADDR)
    }

    /// MAC of real server `i`'s `eth0`: 02:00:00:00:00:xx, xx = last octet
    /// of its address.
    #[must_use]
    pub fn real_mac(&self, i: usize) -> [u8; 6] {
        mac_for(self.real_address(i))
    }

    /// The client's source addresses: 198.18.1.0, 198.18.1.1, ... (then
    /// 198.18.2.x beyond 256).
    #[must_use]
    pub fn client_sources(&self) -> &[Ipv4Addr] {
        &self.sources
    }

    /// Stops real server `i`'s HTTP listener (no-op if it is not running).
    /// Problems are logged to stderr.
    pub fn stop_http(&mut self, i: usize) {
        if let Some(handle) = self.http.get_mut(i).and_then(Option::take) {
            if let Err(e) = self.kill(handle) {
                warn(format_args!(
                    "stopping HTTP server of {}: {e}",
                    self.real_name(i)
                ));
            }
        }
    }

    /// (Re)starts real server `i`'s HTTP listener and waits until it
    /// listens; no-op if it is running.
    ///
    /// # Errors
    /// [`LabError::Invalid`] for a bad index, otherwise why it did not start.
    pub fn start_http(&mut self, i: usize) -> Result<(), LabError> {
        if i >= self.reals.len() {
            return Err(LabError::Invalid(format!(
                "no real server {i} (lab has {})",
                self.reals.len()
            )));
        }
        if let Some(handle) = self.http[i] {
            if self.try_wait(handle)?.is_none() {
                return Ok(());
            }
            self.forget(handle);
        }
        self.spawn_http(i)?;
        self.wait_http(i)
    }

    /// Starts a command in namespace `ns` (see [`spawn_in`]) and tracks it:
    /// it is stopped when the lab is dropped at the latest.
    ///
    /// # Errors
    /// As [`spawn_in`].
    pub fn spawn_in(&mut self, ns: &str, cmd: &[&str], log: &Path) -> Result<ProcHandle, LabError> {
        let child = spawn_in(ns, cmd, log)?;
        Ok(self.adopt(child))
    }

    /// Tracks a process spawned elsewhere; it is stopped when the lab is
    /// dropped at the latest.
    pub fn adopt(&mut self, child: Child) -> ProcHandle {
        let handle = ProcHandle(self.next_handle);
        self.next_handle += 1;
        self.procs.push(Tracked { handle, child });
        handle
    }

    /// Stops a tracked process (SIGTERM, SIGKILL after 2 s), reaps it and
    /// stops tracking it.
    ///
    /// # Errors
    /// [`LabError::Invalid`] for an unknown handle, [`LabError::Io`] if it
    /// could not be waited for.
    pub fn kill(&mut self, handle: ProcHandle) -> Result<ExitStatus, LabError> {
        let pos = self.position(handle)?;
        let mut tracked = self.procs.swap_remove(pos);
        let pid = tracked.child.id();
        terminate(&mut tracked.child, KILL_GRACE).map_err(io_err(format!("stopping process {pid}")))
    }

    /// Whether a tracked process has exited (and how), without blocking.
    ///
    /// # Errors
    /// [`LabError::Invalid`] for an unknown handle, [`LabError::Io`] if the
    /// status cannot be read.
    pub fn try_wait(&mut self, handle: ProcHandle) -> Result<Option<ExitStatus>, LabError> {
        let pos = self.position(handle)?;
        let child = &mut self.procs[pos].child;
        let pid = child.id();
        child
            .try_wait()
            .map_err(io_err(format!("checking process {pid}")))
    }

    /// PID of a tracked process.
    #[must_use]
    pub fn pid(&self, handle: ProcHandle) -> Option<u32> {
        self.procs
            .iter()
            .find(|t| t.handle == handle)
            .map(|t| t.child.id())
    }

    /// PIDs of all tracked processes (HTTP servers included).
    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|t| t.child.id()).collect()
    }

    /// Handle of real server `i`'s HTTP server, if it runs.
    #[must_use]
    pub fn http_handle(&self, i: usize) -> Option<ProcHandle> {
        self.http.get(i).copied().flatten()
    }

    fn position(&self, handle: ProcHandle) -> Result<usize, LabError> {
        self.procs
            .iter()
            .position(|t| t.handle == handle)
            .ok_or_else(|| LabError::Invalid(format!("unknown process handle {handle:?}")))
    }

    /// Drops an exited process from the tracking list.
    fn forget(&mut self, handle: ProcHandle) {
        self.procs.retain(|t| t.handle != handle);
    }

    /// Runs `client.py` in the client namespace: `rounds` rounds, each
    /// asking VIP:port once from every client source, within `timeout`
    /// overall (2 s per connection at most). Failed or unfinished neighbour
    /// entries for the VIP in the client are flushed first.
    ///
    /// # Errors
    /// As [`Self::run_clients_with`].
    pub fn run_clients(&self, rounds: usize, timeout: Duration) -> Result<ClientReport, LabError> {
        self.run_clients_with(
            &self.sources,
            rounds,
            timeout,
            DEFAULT_CONN_TIMEOUT.min(timeout),
        )
    }

    /// Like [`Self::run_clients`] for chosen `sources` (addresses of the
    /// client namespace) and per-connection timeout.
    ///
    /// # Errors
    /// [`LabError::Invalid`] for empty sources or zero rounds,
    /// [`LabError::Wait`] if the client overruns its deadline by 5 s (it
    /// is killed) or cannot be checked on, [`LabError::Output`] if it fails
    /// or prints something unparsable, [`LabError::Io`] for file or process
    /// problems.
    pub fn run_clients_with(
        &self,
        sources: &[Ipv4Addr],
        rounds: usize,
        timeout: Duration,
        conn_timeout: Duration,
    ) -> Result<ClientReport, LabError> {
        self.spawn_clients(sources, rounds, timeout, conn_timeout)?
            .wait()
    }

    /// Starts `client.py` as [`Self::run_clients_with`] does, without
    /// waiting: the caller goes on (kills lbd, restarts it) and collects
    /// the report with [`BackgroundClients::wait`].
    ///
    /// # Errors
    /// As [`Self::run_clients_with`], for what happens before the start.
    pub fn spawn_clients(
        &self,
        sources: &[Ipv4Addr],
        rounds: usize,
        timeout: Duration,
        conn_timeout: Duration,
    ) -> Result<BackgroundClients, LabError> {
        if sources.is_empty() || rounds == 0 {
            return Err(LabError::Invalid(
                "run_clients needs at least one source and one round".into(),
            ));
        }
        // A failed ARP resolution from an earlier run (say, before the VIP
        // existed) would turn this run's first attempts into EHOSTUNREACH.
        let vip = self.opts.vip.to_string();
        run(&[
            "ip",
            "-n",
            &self.client,
            "neigh",
            "flush",
            "to",
            &vip,
            "nud",
            "failed",
            "nud",
            "incomplete",
        ])?;
        let run_no = self.client_runs.fetch_add(1, Ordering::Relaxed);
        let sources_path = self.dir.join(format!("client-{run_no}.sources"));
        let out_path = self.dir.join(format!("client-{run_no}.out"));
        let err_path = self.dir.join(format!("client-{run_no}.log"));
        let list = sources.iter().fold(String::new(), |mut list, s| {
            let _ = writeln!(list, "{s}");
            list
        });
        fs::write(&sources_path, list)
            .map_err(io_err(format!("cannot write {}", sources_path.display())))?;
        let out = File::create(&out_path)
            .map_err(io_err(format!("cannot create {}", out_path.display())))?;
        let err = File::create(&err_path)
            .map_err(io_err(format!("cannot create {}", err_path.display())))?;

        let script = self.dir.join("client.py").to_string_lossy().into_owned();
        let args = [
            vip,
            self.opts.http_port.to_string(),
            rounds.to_string(),
            format!("{:.3}", timeout.as_secs_f64()),
            format!("{:.3}", conn_timeout.as_secs_f64()),
            sources_path.to_string_lossy().into_owned(),
        ];
        let child = Command::new("ip")
            .args(["netns", "exec", &self.client, "python3", &script])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io_err("cannot start client.py"))?;
        Ok(BackgroundClients {
            child,
            limit: timeout + CLIENT_GRACE,
            out_path,
            err_path,
        })
    }

    fn dump_logs(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|ext| ext == "log"))
            .collect();
        logs.sort();
        for log in logs {
            warn(format_args!(
                "lab {} log {}:\n{}",
                self.tag,
                log.display(),
                log_tail(&log, 4000)
            ));
        }
    }
}

impl Drop for DrLab {
    fn drop(&mut self) {
        let mut children: Vec<Tracked> = self.procs.drain(..).collect();
        let mut refs: Vec<&mut Child> = children.iter_mut().map(|t| &mut t.child).collect();
        for (result, pid) in terminate_all(&mut refs, KILL_GRACE)
            .into_iter()
            .zip(children.iter().map(|t| t.child.id()))
        {
            if let Err(e) = result {
                warn(format_args!("stopping process {pid}: {e}"));
            }
        }
        if thread::panicking() {
            self.dump_logs();
        }
        while let Some(ns) = self.namespaces.pop() {
            drop(ns);
        }
        if self.dir_created {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                warn(format_args!("cannot remove {}: {e}", self.dir.display()));
            }
        }
    }
}

/// The last `max` bytes of a file, for error messages.
fn log_tail(path: &Path, max: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).trim().to_string())
    };
    match read() {
        Ok(text) if text.is_empty() => "(empty log)".into(),
        Ok(text) => text,
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn validate(opts: &DrLabOptions) -> Result<(), LabError> {
    if !(1..=MAX_REAL_SERVERS).contains(&opts.real_servers) {
        return Err(LabError::Invalid(format!(
            "real_servers must be 1..={MAX_REAL_SERVERS}, not {}",
            opts.real_servers
        )));
    }
    if !(1..=MAX_CLIENT_SOURCES).contains(&opts.client_sources) {
        return Err(LabError::Invalid(format!(
            "client_sources must be 1..={MAX_CLIENT_SOURCES}, not {}",
            opts.client_sources
        )));
    }
    if opts.http_port == 0 {
        return Err(LabError::Invalid("http_port must not be 0".into()));
    }
    let vip = u32::from(opts.vip);
    let base = u32::from(LAN_BASE);
    let in_lan = vip > base && vip < base + (1 << (32 - LAN_PREFIX)) - 1;
    let in_sources = opts.vip.octets()[2] == 1 || opts.vip.octets()[2] == 2;
    let first_real = u32::from(FIRST_REAL);
    let last_real = u32::from(offset(FIRST_REAL, opts.real_servers - 1));
    let taken = opts.vip == CLIENT_ADDR
        || opts.vip == LB_ADDR
        || (opts.second_lb && opts.vip == LB2_ADDR)
        || (first_real..=last_real).contains(&vip);
    if !in_lan || in_sources || taken {
        return Err(LabError::Invalid(format!(
            "vip {} must be a free host address of {LAN_BASE}/{LAN_PREFIX} outside \
             198.18.1.0-198.18.2.255 (client sources)",
            opts.vip
        )));
    }
    if !opts.lab_pass_obj.is_file() {
        return Err(LabError::Invalid(format!(
            "lab_pass_obj {} is not a file (build it with `cargo xtask build-ebpf`)",
            opts.lab_pass_obj.display()
        )));
    }
    Ok(())
}

/// `client.py` running in the background ([`DrLab::spawn_clients`]); killed
/// if dropped unfinished.
pub struct BackgroundClients {
    child: Child,
    limit: Duration,
    out_path: PathBuf,
    err_path: PathBuf,
}

impl BackgroundClients {
    /// Waits for `client.py` to finish (its deadline, plus a grace) and
    /// reads its report.
    ///
    /// # Errors
    /// As [`DrLab::run_clients_with`].
    pub fn wait(mut self) -> Result<ClientReport, LabError> {
        let child = &mut self.child;
        let waited = poll_until("client.py to finish", self.limit, || {
            match child.try_wait() {
                Ok(Some(status)) => Probe::Ready(status),
                Ok(None) => Probe::Pending("still running".into()),
                Err(e) => Probe::Failed(format!("cannot check on it: {e}")),
            }
        });
        let status = match waited {
            Ok(status) => status,
            Err(e) => {
                if let Err(stop) = terminate(&mut self.child, KILL_GRACE) {
                    warn(format_args!("stopping client.py: {stop}"));
                }
                return Err(e.into());
            }
        };
        if !status.success() {
            return Err(LabError::Output {
                what: "client.py".into(),
                detail: format!("exited with {status}: {}", log_tail(&self.err_path, 2000)),
            });
        }
        let json = fs::read_to_string(&self.out_path)
            .map_err(io_err(format!("cannot read {}", self.out_path.display())))?;
        ClientReport::parse(&json)
    }
}

impl Drop for BackgroundClients {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = terminate(&mut self.child, KILL_GRACE);
        }
    }
}

/// One failed client attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFailure {
    /// The source address used.
    pub source: Ipv4Addr,
    /// The round (0-based).
    pub round: usize,
    /// What went wrong, as reported by `client.py`.
    pub error: String,
}

/// The outcome of [`DrLab::run_clients`].
#[derive(Clone, Debug)]
pub struct ClientReport {
    results: BTreeMap<Ipv4Addr, Vec<Option<String>>>,
    failures: Vec<ClientFailure>,
    rounds: usize,
    rounds_completed: usize,
    deadline_hit: bool,
    elapsed: Duration,
}

fn bad_output(detail: impl Into<String>) -> LabError {
    LabError::Output {
        what: "client.py output".into(),
        detail: detail.into(),
    }
}

fn parse_source(text: &str) -> Result<Ipv4Addr, LabError> {
    text.parse()
        .map_err(|_| bad_output(format!("bad source address {text:?}")))
}

fn json_usize(value: &serde_json::Value, key: &str) -> Result<usize, LabError> {
    value[key]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| bad_output(format!("missing or bad {key:?}")))
}

impl ClientReport {
    /// Parses the JSON object printed by `client.py`.
    ///
    /// # Errors
    /// [`LabError::Output`] if it is not what `client.py` prints.
    pub fn parse(json: &str) -> Result<ClientReport, LabError> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| bad_output(format!("not JSON ({e}): {json:.200}")))?;
        let mut results = BTreeMap::new();
        let map = value["results"]
            .as_object()
            .ok_or_else(|| bad_output("no \"results\" object"))?;
        for (source, answers) in map {
            let answers = answers
                .as_array()
                .ok_or_else(|| bad_output(format!("results of {source} are not a list")))?;
            let answers = answers
                .iter()
                .map(|a| match a {
                    serde_json::Value::Null => Ok(None),
                    serde_json::Value::String(s) => Ok(Some(s.clone())),
                    other => Err(bad_output(format!("bad answer {other} for {source}"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            results.insert(parse_source(source)?, answers);
        }
        let mut failures = Vec::new();
        if let Some(errors) = value["errors"].as_object() {
            for (source, list) in errors {
                let addr = parse_source(source)?;
                for entry in list.as_array().into_iter().flatten() {
                    let round = entry[0]
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| bad_output(format!("bad error entry {entry}")))?;
                    let error = entry[1].as_str().unwrap_or("unknown error").to_string();
                    failures.push(ClientFailure {
                        source: addr,
                        round,
                        error,
                    });
                }
            }
        }
        failures.sort_by_key(|f| (f.round, f.source));
        let elapsed = value["elapsed_s"]
            .as_f64()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or_else(|| bad_output("missing or bad \"elapsed_s\""))?;
        Ok(ClientReport {
            results,
            failures,
            rounds: json_usize(&value, "rounds")?,
            rounds_completed: json_usize(&value, "rounds_completed")?,
            deadline_hit: value["deadline_hit"].as_bool().unwrap_or(false),
            elapsed,
        })
    }

    /// Rounds requested.
    #[must_use]
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// Rounds that ran for every source before the deadline.
    #[must_use]
    pub fn rounds_completed(&self) -> usize {
        self.rounds_completed
    }

    /// Whether the deadline cut the run short.
    #[must_use]
    pub fn deadline_hit(&self) -> bool {
        self.deadline_hit
    }

    /// Wall-clock time the client took.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The sources that took part, in address order.
    pub fn sources(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.results.keys().copied()
    }

    /// Per round, the server that answered `source` (`None`: failed). Empty
    /// for an unknown source.
    #[must_use]
    pub fn servers_of(&self, source: Ipv4Addr) -> &[Option<String>] {
        self.results.get(&source).map_or(&[], Vec::as_slice)
    }

    /// Sources answered in every requested round, always by the same server.
    #[must_use]
    pub fn sticky_sources(&self) -> Vec<Ipv4Addr> {
        self.results
            .iter()
            .filter(|(_, answers)| {
                answers.len() == self.rounds
                    && answers.first().is_some_and(Option::is_some)
                    && answers.iter().all(|a| *a == answers[0])
            })
            .map(|(source, _)| *source)
            .collect()
    }

    /// Which server each source reached, from its first answer.
    #[must_use]
    pub fn first_servers(&self) -> BTreeMap<Ipv4Addr, String> {
        self.sources()
            .filter_map(|s| {
                self.servers_of(s)
                    .iter()
                    .flatten()
                    .next()
                    .map(|n| (s, n.clone()))
            })
            .collect()
    }

    /// Number of sources per server, counting each source once by its
    /// first successful answer.
    #[must_use]
    pub fn share_by_server(&self) -> BTreeMap<String, usize> {
        let mut share = BTreeMap::new();
        for answers in self.results.values() {
            if let Some(server) = answers.iter().flatten().next() {
                *share.entry(server.clone()).or_insert(0) += 1;
            }
        }
        share
    }

    /// Every failed attempt, by round then source.
    #[must_use]
    pub fn failures(&self) -> &[ClientFailure] {
        &self.failures
    }

    /// Number of attempts made (answered or failed).
    #[must_use]
    pub fn attempts(&self) -> usize {
        self.results.values().map(Vec::len).sum()
    }

    /// Number of answered attempts.
    #[must_use]
    pub fn answered(&self) -> usize {
        self.results.values().flatten().flatten().count()
    }

    /// A one-line summary for assertion messages.
    #[must_use]
    pub fn summary(&self) -> String {
        let first_failure = self
            .failures
            .first()
            .map(|f| {
                format!(
                    "; first failure: {} round {}: {}",
                    f.source, f.round, f.error
                )
            })
            .unwrap_or_default();
        format!(
            "{} sources, {}/{} rounds, {}/{} answered, share {:?}, {} sticky, {:.2?}{}{}",
            self.results.len(),
            self.rounds_completed,
            self.rounds,
            self.answered(),
            self.attempts(),
            self.share_by_server(),
            self.sticky_sources().len(),
            self.elapsed,
            if self.deadline_hit {
                ", deadline hit"
            } else {
                ""
            },
            first_failure,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// The lab-pass object to use. A lab test that cannot run fails,
    /// saying what is missing: it never passes without having run.
    fn lab_prerequisites() -> PathBuf {
        crate::paths::require_root("the lab's tests");
        let obj = DrLabOptions::default().lab_pass_obj;
        crate::paths::require_file(
            &obj,
            "run `cargo xtask build-ebpf` (or point LB_LAB_PASS_OBJ at the lab-pass object)",
        );
        obj
    }

    fn small_opts(obj: PathBuf) -> DrLabOptions {
        DrLabOptions {
            real_servers: 3,
            client_sources: 8,
            lab_pass_obj: obj,
            ..DrLabOptions::default()
        }
    }

    fn lab_namespaces(tag: &str) -> Vec<String> {
        let prefix = format!("{tag}-");
        run(&["ip", "netns", "list"])
            .expect("ip netns list")
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|name| name.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }

    fn process_exists(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    fn curl(lab: &DrLab, addr: Ipv4Addr) -> Result<String, LabError> {
        let url = format!("http://{addr}:{}/", lab.http_port());
        run_in(lab.client_ns(), &["curl", "-sS", "--max-time", "3", &url])
    }

    #[test]
    fn lab_names_name_their_process_and_nothing_else_is_a_lab() {
        let tag = unique_tag();
        let me = std::process::id();
        assert_eq!(lab_name_pid(&tag), Some(me), "{tag}");
        for role in ["sw", "lb", "lb2", "cl", "rs1", "rs12"] {
            assert_eq!(lab_name_pid(&format!("{tag}-{role}")), Some(me), "{role}");
        }
        assert!(!is_stale(&format!("{tag}-sw")), "this process is alive");
        for other in [
            "lt",
            "ltx",
            "lt-1-sw",
            "ltZZ-1-sw",
            "lt01-1-sw",
            "lt+1-1-sw",
            "lt1-01-sw",
            "lt1-1-eth0",
            "lt1-1-rs",
            "lt1-1-rsx",
            "xt1-1-sw",
        ] {
            assert_eq!(lab_name_pid(other), None, "{other}");
        }
    }

    #[test]
    fn tags_are_unique_and_short() {
        let a = unique_tag();
        let b = unique_tag();
        assert_ne!(a, b);
        assert!(a.starts_with("lt") && a.len() <= 12, "{a}");
        assert_eq!(base36(0), "0");
        assert_eq!(base36(36 * 36 - 1), "zz");
    }

    #[test]
    fn display_cmd_quotes_when_needed() {
        assert_eq!(display_cmd(&["ip", "a b", "it's"]), r"ip 'a b' 'it'\''s'");
    }

    #[test]
    fn options_are_validated() {
        let obj = PathBuf::from("/nonexistent/lab-pass");
        for opts in [
            DrLabOptions {
                real_servers: 0,
                ..small_opts(obj.clone())
            },
            DrLabOptions {
                client_sources: 511,
                ..small_opts(obj.clone())
            },
            DrLabOptions {
                vip: Ipv4Addr::new(198, 18, 0, 10),
                ..small_opts(obj.clone())
            },
            DrLabOptions {
                vip: Ipv4Addr::new(198, 18, 0, 22),
                ..small_opts(obj.clone())
            },
            DrLabOptions {
                vip: Ipv4Addr::new(198, 18, 1, 7),
                ..small_opts(obj.clone())
            },
            DrLabOptions {
                vip: Ipv4Addr::new(10, 0, 0, 1),
                ..small_opts(obj.clone())
            },
            small_opts(obj.clone()),
        ] {
            let err = DrLab::start(opts).expect_err("options must be rejected");
            assert!(matches!(err, LabError::Invalid(_)), "{err}");
        }
    }

    #[test]
    fn client_report_parses_and_summarises() {
        let json = r#"{"results": {"198.18.1.0": ["rs1", "rs1", "rs1"],
                                    "198.18.1.1": ["rs2", null, "rs2"],
                                    "198.18.1.2": ["rs2", "rs2", "rs2"],
                                    "198.18.1.3": [null, "rs3", "rs1"]},
                       "errors": {"198.18.1.1": [[1, "TimeoutError: timed out"]],
                                  "198.18.1.3": [[0, "ConnectionRefusedError: refused"]]},
                       "rounds": 3, "rounds_completed": 3, "deadline_hit": false,
                       "elapsed_s": 0.25}"#;
        let report = ClientReport::parse(json).expect("parse");
        let s0 = Ipv4Addr::new(198, 18, 1, 0);
        let s3 = Ipv4Addr::new(198, 18, 1, 3);
        assert_eq!(report.servers_of(s0), vec![Some("rs1".to_string()); 3]);
        assert!(report.servers_of(Ipv4Addr::new(1, 2, 3, 4)).is_empty());
        assert_eq!(
            report.sticky_sources(),
            vec![s0, Ipv4Addr::new(198, 18, 1, 2)]
        );
        let share = report.share_by_server();
        assert_eq!(share.get("rs1"), Some(&1));
        assert_eq!(share.get("rs2"), Some(&2));
        assert_eq!(share.get("rs3"), Some(&1));
        assert_eq!(report.failures().len(), 2);
        assert_eq!(report.failures()[0].source, s3);
        assert_eq!(report.failures()[0].round, 0);
        assert_eq!((report.answered(), report.attempts()), (10, 12));
        assert_eq!(report.elapsed(), Duration::from_millis(250));
        assert!(ClientReport::parse("not json").is_err());
        assert!(ClientReport::parse(r#"{"results": {"x": []}}"#).is_err());
    }

    #[test]
    fn lab_serves_real_servers_directly_and_cleans_up() {
        let obj = lab_prerequisites();
        let started = Instant::now();
        let mut lab = DrLab::start(small_opts(obj)).expect("start lab");
        eprintln!("lab {} started in {:?}", lab.tag(), started.elapsed());
        let tag = lab.tag().to_string();
        assert_eq!(lab_namespaces(&tag).len(), 6, "{:?}", lab_namespaces(&tag));
        assert_eq!(
            lab.client_sources(),
            &(0..8)
                .map(|i| Ipv4Addr::new(198, 18, 1, i))
                .collect::<Vec<_>>()[..]
        );

        for i in 0..lab.real_count() {
            let body = curl(&lab, lab.real_address(i)).expect("curl real server");
            assert_eq!(body, format!("{}\n", lab.real_name(i)));
        }

        let link = run(&["ip", "-n", lab.lb_ns(), "link", "show", "eth0"]).expect("ip link");
        assert!(link.contains("02:00:00:00:00:0a"), "{link}");
        let peer = run(&["ip", "-n", lab.switch_ns(), "link", "show", "lb"]).expect("ip link");
        assert!(
            peer.contains("xdp"),
            "no XDP on the lb's switch port: {peer}"
        );
        let vip_on_lo = run(&["ip", "-n", lab.real_ns(1), "addr", "show", "lo"]).expect("ip addr");
        assert!(vip_on_lo.contains("198.18.0.100/32"), "{vip_on_lo}");
        let arp = run_in(
            lab.real_ns(2),
            &[
                "sysctl",
                "-n",
                "net.ipv4.conf.eth0.arp_ignore",
                "net.ipv4.conf.eth0.arp_announce",
            ],
        )
        .expect("sysctl");
        assert_eq!(arp.split_whitespace().collect::<Vec<_>>(), ["1", "2"]);
        let offload = run_in(lab.client_ns(), &["ethtool", "-k", "eth0"]).expect("ethtool");
        assert!(offload.contains("tx-checksumming: off"), "{offload}");

        lab.stop_http(1);
        assert!(
            curl(&lab, lab.real_address(1)).is_err(),
            "rs2 still answers"
        );
        lab.start_http(1).expect("restart rs2");
        assert_eq!(curl(&lab, lab.real_address(1)).expect("curl rs2"), "rs2\n");

        let pids = lab.pids();
        assert_eq!(pids.len(), 3);
        let dir = lab.dir().to_path_buf();
        let dropped = Instant::now();
        drop(lab);
        eprintln!("lab {tag} dropped in {:?}", dropped.elapsed());
        assert!(
            lab_namespaces(&tag).is_empty(),
            "{:?}",
            lab_namespaces(&tag)
        );
        for pid in pids {
            assert!(!process_exists(pid), "process {pid} survived the lab");
        }
        assert!(!dir.exists(), "{} survived the lab", dir.display());
    }

    #[test]
    fn client_reports_answers_and_failures() {
        let obj = lab_prerequisites();
        let mut lab = DrLab::start(small_opts(obj)).expect("start lab");
        // No load balancer here: nothing owns the VIP, so every attempt fails.
        let report = lab
            .run_clients(1, Duration::from_secs(3))
            .expect("run clients");
        assert_eq!(report.answered(), 0, "{}", report.summary());
        assert_eq!(report.failures().len(), 8, "{}", report.summary());

        // Let the load balancer's host answer for the VIP itself.
        let vip = format!("{}/32", lab.vip());
        run(&["ip", "-n", lab.lb_ns(), "addr", "add", &vip, "dev", "eth0"]).expect("add VIP");
        let script = lab.dir().join("http_server.py");
        let port = lab.http_port().to_string();
        let child = spawn_in(
            lab.lb_ns(),
            &["python3", &script.to_string_lossy(), "lbself", &port],
            &lab.log_path("lbself.log"),
        )
        .expect("spawn");
        let handle = lab.adopt(child);
        wait_for_tcp(
            lab.lb_ns(),
            SocketAddrV4::new(lab.lb_address(), lab.http_port()),
            Duration::from_secs(10),
        )
        .expect("lbself listens");
        let report = lab
            .run_clients(3, Duration::from_secs(10))
            .expect("run clients");
        assert_eq!(report.sticky_sources().len(), 8, "{}", report.summary());
        assert_eq!(
            report.share_by_server().get("lbself"),
            Some(&8),
            "{}",
            report.summary()
        );
        assert!(report.failures().is_empty(), "{}", report.summary());
        eprintln!("{}", report.summary());
        assert!(lab.kill(handle).is_ok());
        assert!(
            lab.kill(handle).is_err(),
            "a killed process is no longer tracked"
        );
    }

    #[test]
    fn direct_routing_return_path_reaches_every_source() {
        let obj = lab_prerequisites();
        let started = Instant::now();
        let lab = DrLab::start(DrLabOptions {
            client_sources: MAX_CLIENT_SOURCES,
            ..small_opts(obj)
        })
        .expect("start lab");
        eprintln!(
            "lab {} with 510 sources started in {:?}",
            lab.tag(),
            started.elapsed()
        );
        assert_eq!(
            lab.client_sources().last(),
            Some(&Ipv4Addr::new(198, 18, 2, 253))
        );
        // Stand-in for the load balancer: the client sends VIP traffic
        // straight to rs2's MAC, rs2 answers from the VIP on its lo.
        let vip = lab.vip().to_string();
        let mac = mac_string(lab.real_mac(1));
        run(&[
            "ip",
            "-n",
            lab.client_ns(),
            "neigh",
            "replace",
            &vip,
            "lladdr",
            &mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])
        .expect("static neighbour");
        let report = lab
            .run_clients(5, Duration::from_secs(20))
            .expect("run clients");
        eprintln!("{}", report.summary());
        assert_eq!(
            report.sticky_sources().len(),
            MAX_CLIENT_SOURCES,
            "{}",
            report.summary()
        );
        assert_eq!(
            report.share_by_server().get("rs2"),
            Some(&MAX_CLIENT_SOURCES),
            "{}",
            report.summary()
        );
        let neighbours = run(&["ip", "-n", lab.real_ns(1), "neigh", "show"]).expect("ip neigh");
        assert!(
            neighbours.lines().count() <= 2,
            "rs2 neighbours: {neighbours}"
        );
    }

    #[test]
    fn failed_start_cleans_up() {
        lab_prerequisites();
        let bogus = std::env::temp_dir().join(format!("lab-bogus-{}.o", unique_tag()));
        fs::write(&bogus, b"not an ELF object").expect("write bogus object");
        let result = DrLab::start(small_opts(bogus.clone()));
        let _ = fs::remove_file(&bogus);
        let err = result.expect_err("a bogus XDP object must fail");
        let LabError::Command { cmd, .. } = &err else {
            panic!("unexpected error: {err}");
        };
        let switch = cmd.split_whitespace().nth(2).expect("ip -n SWITCH ...");
        let tag = switch.strip_suffix("-sw").expect("switch namespace name");
        assert!(lab_namespaces(tag).is_empty(), "{:?}", lab_namespaces(tag));
        assert!(!std::env::temp_dir().join(format!("lb-lab-{tag}")).exists());
    }

    #[test]
    fn panicking_test_still_cleans_up() {
        let obj = lab_prerequisites();
        let seen = std::sync::Mutex::new(None);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let lab = DrLab::start(small_opts(obj)).expect("start lab");
            if let Ok(mut seen) = seen.lock() {
                *seen = Some((lab.tag().to_string(), lab.pids()));
            }
            panic!("deliberate panic inside lab {}", lab.tag());
        }));
        assert!(outcome.is_err());
        let (tag, pids) = seen.into_inner().expect("lock").expect("lab had started");
        assert!(
            lab_namespaces(&tag).is_empty(),
            "{:?}",
            lab_namespaces(&tag)
        );
        for pid in pids {
            assert!(!process_exists(pid), "process {pid} survived the lab");
        }
    }
}
