//! The HA pair end to end: two `lbd` (primary in `lb`, secondary in `lb2`)
//! speaking `VRRPv3` (RFC 5798) over unicast and replicating configuration,
//! admin states and sessions over `cluster.sync`; and `lbd` beside a real
//! keepalived peer.
//!
//! Needs root, `lbd`/`lbctl` (`LB_BIN_DIR`), the lab-pass XDP object and
//! keepalived. Every test builds its own lab and tears it down; lbd logs are
//! printed when a test fails.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::PathBuf,
    process::Output,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_tests::lab::{in_netns, run, DrLab, DrLabOptions, ProcHandle};
use lb_tests::lbd::{
    lab_config_named, web_service, write_key, ClusterSpec, Lbd, ADVERT_INTERVAL_MS, SYNC_PORT,
};
use lb_tests::paths;
use lb_tests::wait::{try_wait_until, wait_until, SLACK};
use serde_json::Value;

const READY: Duration = Duration::from_secs(20);
/// The advertisement interval of keepalived in these tests (`advert_int`
/// takes whole seconds) and of lbd beside it.
const KEEPALIVED_ADVERT_MS: u32 = 1000;
/// lbd streams new sessions to its peer once a second (with its census pass).
const SESSIONS_EVERY: Duration = Duration::from_secs(1);
/// Linux's smallest TCP retransmission timeout (`TCP_RTO_MIN`).
const TCP_RTO_MIN: Duration = Duration::from_millis(200);
/// How often keepalive.py asks (its `time.sleep(0.1)`).
const KEEPALIVE_EVERY: Duration = Duration::from_millis(100);
/// Client sources of the lab; the last one is kept for the long-lived connection.
const SOURCES: usize = 64;
/// Sources used for the short-lived request rounds.
const ROUND_SOURCES: usize = 48;
const KEY: &[u8] = b"lab-cluster-key-0123456789abcdef-0123456789abcdef\n";
const OTHER_KEY: &[u8] = b"another-cluster-key-fedcba9876543210-fedcba9876543210\n";

// ---------------------------------------------------------------- helpers

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// The advertisement interval of lbd pairs ([`ClusterSpec::primary`]).
fn advert() -> Duration {
    Duration::from_millis(u64::from(ADVERT_INTERVAL_MS))
}

/// The advertisement interval beside keepalived.
fn keepalived_advert() -> Duration {
    Duration::from_millis(u64::from(KEEPALIVED_ADVERT_MS))
}

/// RFC 5798 section 6.1: `Skew_Time` = ((256 - Priority) x
/// `Master_Adver_Interval`) / 256.
fn skew_time(interval: Duration, priority: u8) -> Duration {
    interval * (256 - u32::from(priority)) / 256
}

/// RFC 5798 section 6.1: `Master_Down_Interval` = 3 x `Master_Adver_Interval`
/// + `Skew_Time`: how long a backup of `priority` waits for a silent master.
fn master_down_interval(interval: Duration, priority: u8) -> Duration {
    interval * 3 + skew_time(interval, priority)
}

/// How long a session made on one node may take to be in the other's table.
fn session_sync() -> Duration {
    SESSIONS_EVERY + SLACK
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn epoch_s(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn ha_lab() -> DrLab {
    paths::require_root("namespace tests");
    paths::require_lbd();
    DrLab::start(DrLabOptions {
        real_servers: 4,
        client_sources: SOURCES,
        second_lb: true,
        ..DrLabOptions::default()
    })
    .unwrap_or_else(|e| panic!("lab: {e}"))
}

/// Whether namespace `ns` holds `addr` on eth0.
fn holds(ns: &str, addr: Ipv4Addr) -> bool {
    let out = run(&["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap_or_else(|e| panic!("{e}"));
    out.contains(&format!(" {addr}/"))
}

/// The client's neighbour entry for `addr` (`ip neigh show`), trimmed.
fn client_neigh(lab: &DrLab, addr: Ipv4Addr) -> String {
    run(&[
        "ip",
        "-n",
        lab.client_ns(),
        "neigh",
        "show",
        &addr.to_string(),
        "dev",
        "eth0",
    ])
    .unwrap_or_else(|e| panic!("{e}"))
    .trim()
    .to_string()
}

/// One HTTP/1.0 GET from the client's primary address; the first body line.
fn http_get(lab: &DrLab, timeout: Duration) -> Result<String, String> {
    let addr = SocketAddr::V4(SocketAddrV4::new(lab.vip(), lab.http_port()));
    in_netns(lab.client_ns(), move || -> Result<String, String> {
        let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let (_, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("malformed response {text:?}"))?;
        Ok(body.lines().next().unwrap_or_default().to_string())
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `Tcp: OutRsts` of namespace `ns` (TCP resets its kernel sent).
fn tcp_out_rsts(ns: &str) -> u64 {
    let snmp = lb_tests::lab::run_in(ns, &["cat", "/proc/net/snmp"]).unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutRsts")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// How long `check` took to hold, polled by [`try_wait_until`]; `None`
/// after `timeout` (the callers' assertions say what they saw).
fn poll(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    try_wait_until("a condition", timeout, || {
        if check() {
            Ok(start.elapsed())
        } else {
            Err("not yet".to_owned())
        }
    })
    .ok()
}

fn out_text(out: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Runs lbctl and requires exit 0.
fn lbctl_ok(lbd: &Lbd, args: &[&str]) -> String {
    let out = lbd.lbctl(args);
    assert!(out.status.success(), "lbctl {args:?}: {}", out_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `lbctl affinity web CLIENT --json` on `lbd`.
fn affinity(lbd: &Lbd, client: Ipv4Addr) -> Value {
    let out = lbd.lbctl(&["affinity", "web", &client.to_string(), "--json"]);
    if !out.status.success() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The real servers of service `web` in a status, by name.
fn web_servers(status: &Value) -> BTreeMap<String, Value> {
    status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == "web")
        .flat_map(|s| s["real_servers"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["name"].as_str().map(|n| (n.to_string(), r.clone())))
        .collect()
}

/// Sends request rounds from `sources`; every request must be answered, every
/// source by one server. Returns which.
fn sticky_round(lab: &DrLab, sources: &[Ipv4Addr], rounds: usize) -> BTreeMap<Ipv4Addr, String> {
    let report = lab
        .run_clients_with(
            sources,
            rounds,
            Duration::from_secs(30),
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.failures().is_empty(), "{}", report.summary());
    assert_eq!(
        report.sticky_sources().len(),
        sources.len(),
        "{}",
        report.summary()
    );
    report.first_servers()
}

/// Waits until `lbd` reports `"source":"table"` with the expected server for
/// every source; panics with the first mismatch after `timeout`.
fn wait_table(lbd: &Lbd, expected: &BTreeMap<Ipv4Addr, String>, timeout: Duration) -> Duration {
    let start = Instant::now();
    let mut pending: Vec<(Ipv4Addr, String)> =
        expected.iter().map(|(s, n)| (*s, n.clone())).collect();
    let what = format!(
        "{} sources in {}'s table with their server",
        expected.len(),
        lbd.ns()
    );
    wait_until(&what, timeout, || {
        let mut last = Value::Null;
        pending.retain(|(source, server)| {
            let a = affinity(lbd, *source);
            let done = a["source"] == "table" && a["server"] == server.as_str();
            if !done {
                last = a;
            }
            !done
        });
        match pending.first() {
            None => Ok(start.elapsed()),
            Some((source, server)) => Err(format!(
                "{} not yet; first: {source} expected {server}, `lbctl affinity` says {last}",
                pending.len()
            )),
        }
    })
}

// ---------------------------------------------------------------- the pair

/// Adds rs4 to `web` with `lbctl apply` on the primary (after `lbctl plan`
/// says some clients' hash changes) and waits until the secondary has it.
/// Sessions made before now stay on their servers only by table entry: a
/// node without the table would send some of them to rs4.
fn grow_to_rs4(pair: &Pair) {
    let key = pair.lab.dir().join("lb1.key");
    let file = pair.lab.dir().join("lb1-rs4.yaml");
    std::fs::write(&file, primary_config(&pair.lab, &key, 4)).unwrap_or_else(|e| panic!("{e}"));
    let file = file.display().to_string();
    let plan: Value = serde_json::from_str(&lbctl_ok(&pair.lb1, &["plan", &file, "--json"]))
        .unwrap_or_else(|e| panic!("lbctl plan --json: {e}"));
    let moved = plan["services"][0]["moved_share"].as_f64().unwrap_or(0.0);
    assert!(moved > 0.1, "adding rs4 moves hashed clients: {plan}");
    lbctl_ok(&pair.lb1, &["apply", &file]);
    let _ = wait_until("the secondary to get rs4", SLACK, || {
        let servers = pair
            .lb2
            .status()
            .map(|s| web_servers(&s))
            .ok_or_else(|| "lb2's `lbctl status` does not answer".to_owned())?;
        if servers.contains_key("rs4") {
            Ok(servers)
        } else {
            Err(format!(
                "lb2's servers of web: {:?}",
                servers.keys().collect::<Vec<_>>()
            ))
        }
    });
}

/// Two lbd in one lab. The lbds come first so they print their logs before
/// the lab (dropped last) removes them.
struct Pair {
    lb1: Lbd,
    lb2: Lbd,
    lab: DrLab,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Keys {
    Same,
    Different,
}

/// The primary's configuration: `web` with the first `n` real servers,
/// persistence 300 s. Pairs start with rs1..rs3 (the lab has rs4 spare).
fn primary_config(lab: &DrLab, key: &std::path::Path, n: usize) -> String {
    lab_config_named(
        lab,
        "lb1",
        &ClusterSpec::primary(lab, Some(key)).yaml(),
        &web_service(lab, n, 300),
    )
}

/// Starts the primary (lb1 in `lb`), waits until it is master, then the
/// secondary (lb2 in `lb2`, its own file listing `web` with rs1 only), and
/// waits until the pair has settled (see [`Pair::settle`]).
fn start_pair(key_choice: Keys) -> Pair {
    start_pair_with(key_choice, false)
}

/// Where [`start_pair_with`] puts lb1's copy of the lbd binary.
fn lb1_binary(lab: &DrLab) -> PathBuf {
    lab.dir().join("sbin").join("lbd")
}

/// [`start_pair`]; with `lb1_copy`, lb1 runs from a copy of the binary at
/// [`lb1_binary`] (which a test may replace).
fn start_pair_with(key_choice: Keys, lb1_copy: bool) -> Pair {
    let mut lab = ha_lab();
    let key1 = write_key(&lab, "lb1.key", KEY).unwrap_or_else(|e| panic!("{e}"));
    let key2 = match key_choice {
        Keys::Same => write_key(&lab, "lb2.key", KEY),
        Keys::Different => write_key(&lab, "lb2.key", OTHER_KEY),
    }
    .unwrap_or_else(|e| panic!("{e}"));
    let lb1_config = primary_config(&lab, &key1, 3);
    // The secondary serves the web console (to show it refuses what lbctl
    // refuses there).
    let lb2_config = lb_tests::console::with_console_at(
        &lab_config_named(
            &lab,
            "lb2",
            &ClusterSpec::secondary(&lab, Some(&key2)).yaml(),
            &web_service(&lab, 1, 300),
        ),
        &lb_tests::console::web_yaml(&lab, lab.lb2_address(), 900),
    );
    let ns1 = lab.lb_ns().to_string();
    let ns2 = lab.lb2_ns().to_string();
    let lb1 = if lb1_copy {
        let binary = lb1_binary(&lab);
        std::fs::create_dir_all(lab.dir().join("sbin")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(paths::lbd(), &binary).unwrap_or_else(|e| panic!("copying lbd: {e}"));
        Lbd::start_named_binary(&mut lab, &ns1, "lb1", &lb1_config, &binary)
    } else {
        Lbd::start_named(&mut lab, &ns1, "lb1", &lb1_config)
    }
    .unwrap_or_else(|e| panic!("{e}"));
    lb1.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    lb1.wait_ha(&mut lab, Duration::from_secs(12), "lb1 master", |v| {
        v["state"] == "master"
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let lb2 =
        Lbd::start_named(&mut lab, &ns2, "lb2", &lb2_config).unwrap_or_else(|e| panic!("{e}"));
    let mut pair = Pair { lb1, lb2, lab };
    pair.lb2
        .wait_answering(&mut pair.lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    pair.settle(key_choice == Keys::Same);
    pair
}

impl Pair {
    /// `kill -9` of lb1 (the master), then lb2 master within
    /// `Master_Down_Interval` plus [`SLACK`].
    fn kill_lb1_for_lb2(&mut self) -> Result<(), String> {
        let takeover =
            master_down_interval(advert(), ClusterSpec::secondary(&self.lab, None).priority);
        self.lb1.crash(&mut self.lab).map_err(|e| e.to_string())?;
        self.lb2
            .wait_ha(&mut self.lab, takeover + SLACK, "lb2 master", |v| {
                v["state"] == "master"
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Waits (up to 15 s) until lb1 is master with the VIP and lb2 backup
    /// without, for 1 s on end, and with `synced` also until both report
    /// sync connected; notes any flapping on the way.
    fn settle(&self, synced: bool) {
        let connected = |lbd: &Lbd| lbd.ha().is_some_and(|v| v["sync"]["connected"] == true);
        let steady = |s: &[Sample]| {
            s.len() >= 10
                && s[s.len() - 10..]
                    .iter()
                    .all(|x| x.s1 == "master" && x.s2 == "backup" && x.vip1 && !x.vip2)
        };
        let samples = self.sample_for(Duration::from_secs(15), |s| {
            steady(s) && (!synced || (connected(&self.lb1) && connected(&self.lb2)))
        });
        let table = show(&samples);
        assert!(
            steady(&samples),
            "the pair did not settle (lb1 master with the VIP, lb2 backup without):\n{table}"
        );
        assert!(
            !synced || (connected(&self.lb1) && connected(&self.lb2)),
            "sync not connected: lb1 {:?}, lb2 {:?}",
            self.lb1.ha(),
            self.lb2.ha()
        );
        if samples.iter().any(|x| x.s2 == "master" || x.s1 != "master") {
            eprintln!("note: the pair was unsettled while starting:\n{table}");
        }
    }

    fn sources(&self, range: std::ops::Range<usize>) -> Vec<Ipv4Addr> {
        self.lab.client_sources()[range].to_vec()
    }

    fn sample(&self, start: Instant) -> Sample {
        let ha1 = self.lb1.ha();
        let ha2 = self.lb2.ha();
        let state = |ha: &Option<Value>| {
            ha.as_ref()
                .and_then(|v| v["state"].as_str())
                .unwrap_or("-")
                .to_string()
        };
        Sample {
            at: start.elapsed(),
            s1: state(&ha1),
            s2: state(&ha2),
            vip1: holds(self.lab.lb_ns(), self.lab.vip()),
            vip2: holds(self.lab.lb2_ns(), self.lab.vip()),
            received1: ha1
                .as_ref()
                .and_then(|v| v["sync"]["received"].as_u64())
                .unwrap_or(0),
            priority1: ha1
                .as_ref()
                .and_then(|v| v["priority"].as_u64())
                .unwrap_or(0),
        }
    }

    /// Samples both nodes every 100 ms for `duration`, or until `stop`.
    fn sample_for(
        &self,
        duration: Duration,
        mut stop: impl FnMut(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let start = Instant::now();
        let mut samples = Vec::new();
        while start.elapsed() < duration {
            let tick = Instant::now();
            samples.push(self.sample(start));
            if stop(&samples) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed()));
        }
        samples
    }
}

/// What both nodes said at one moment.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    s1: String,
    s2: String,
    vip1: bool,
    vip2: bool,
    /// lb1's `sync.received`.
    received1: u64,
    /// lb1's advertised priority (`lbctl ha` `priority`).
    priority1: u64,
}

impl Sample {
    /// 1 or 2 when exactly that node says master, else 0.
    fn sole_master(&self) -> u8 {
        match (self.s1 == "master", self.s2 == "master") {
            (true, false) => 1,
            (false, true) => 2,
            _ => 0,
        }
    }
}

fn show(samples: &[Sample]) -> String {
    samples
        .iter()
        .map(|s| {
            format!(
                "{:>5}ms lb1={}{} lb2={}{} lb1.priority={} lb1.sync.received={}",
                ms(s.at),
                s.s1,
                if s.vip1 { "+VIP" } else { "" },
                s.s2,
                if s.vip2 { "+VIP" } else { "" },
                s.priority1,
                s.received1
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How often the sole master changed between samples (ignoring samples
/// without a sole master).
fn handovers(samples: &[Sample]) -> usize {
    let masters: Vec<u8> = samples
        .iter()
        .map(Sample::sole_master)
        .filter(|m| *m != 0)
        .collect();
    masters.windows(2).filter(|w| w[0] != w[1]).count()
}

// ---------------------------------------------------- long-lived connection

const KEEPALIVE_PY: &str = r#""""One keep-alive HTTP/1.1 connection, a GET every 100 ms.

Usage: keepalive.py VIP PORT SOURCE MAX_S OUT_FILE

Connects once from SOURCE, then asks GET / on the same connection every
100 ms until SIGTERM or MAX_S seconds, reading each full response (by
Content-Length). Any failure ends the run. Writes JSON to OUT_FILE:
{"answers": N, "servers": {NAME: N}, "times": [epoch_s...], "error": str|null,
 "error_at": epoch_s|null, "connected_at": epoch_s|null}
"""
import json
import signal
import socket
import sys
import time


class Stop(BaseException):
    pass


def stop(_signum, _frame):
    raise Stop()


def main():
    vip, port, source, max_s, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
    result = {"answers": 0, "servers": {}, "times": [], "error": None, "error_at": None, "connected_at": None}
    signal.signal(signal.SIGTERM, stop)
    deadline = time.monotonic() + max_s
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        sock.bind((source, 0))
        sock.connect((vip, port))
        result["connected_at"] = time.time()
        buf = b""
        while time.monotonic() < deadline:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
            while b"\r\n\r\n" not in buf:
                data = sock.recv(4096)
                if not data:
                    raise ConnectionError("the server closed the connection")
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(buf) < length:
                data = sock.recv(4096)
                if not data:
                    raise ConnectionError("the server closed the connection mid-body")
                buf += data
            body, buf = buf[:length], buf[length:]
            server = body.decode("utf-8", "replace").strip()
            result["answers"] += 1
            result["servers"][server] = result["servers"].get(server, 0) + 1
            result["times"].append(time.time())
            if result["answers"] == 1:
                print(f"first answer from {server}", flush=True)
            time.sleep(0.1)
    except Stop:
        pass
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["error_at"] = time.time()
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
"#;

/// A running keepalive.py.
struct KeepAlive {
    handle: ProcHandle,
    out: PathBuf,
}

/// What keepalive.py saw.
#[derive(Debug)]
struct KeepAliveReport {
    answers: u64,
    servers: BTreeMap<String, u64>,
    times: Vec<f64>,
    error: Option<String>,
    error_at: Option<f64>,
    raw: String,
}

impl KeepAliveReport {
    fn answers_after(&self, t: f64) -> usize {
        self.times.iter().filter(|x| **x > t).count()
    }

    /// The longest gap between answers after `t` (including from `t` to the
    /// first answer after it).
    fn max_gap_after(&self, t: f64) -> f64 {
        let mut prev = t;
        let mut gap = 0.0_f64;
        for x in self.times.iter().filter(|x| **x > t) {
            gap = gap.max(x - prev);
            prev = *x;
        }
        gap
    }
}

fn start_keepalive(lab: &mut DrLab, source: Ipv4Addr, max: Duration) -> KeepAlive {
    let script = lab.dir().join("keepalive.py");
    std::fs::write(&script, KEEPALIVE_PY).unwrap_or_else(|e| panic!("{e}"));
    let out = lab.dir().join("keepalive.json");
    let log = lab.log_path("keepalive.log");
    let ns = lab.client_ns().to_string();
    let handle = lab
        .spawn_in(
            &ns,
            &[
                "python3",
                "-u",
                &script.to_string_lossy(),
                &lab.vip().to_string(),
                &lab.http_port().to_string(),
                &source.to_string(),
                &max.as_secs().to_string(),
                &out.to_string_lossy(),
            ],
            &log,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = wait_until(
        "keepalive.py's first answer",
        Duration::from_secs(5),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("first answer") {
                Ok(text)
            } else {
                Err(format!("its log: {text:?}"))
            }
        },
    );
    KeepAlive { handle, out }
}

fn stop_keepalive(lab: &mut DrLab, KeepAlive { handle, out }: KeepAlive) -> KeepAliveReport {
    let _ = lab.kill(handle);
    let raw = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("keepalive.py wrote no result {}: {e}", out.display()));
    let v: Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
    KeepAliveReport {
        answers: v["answers"].as_u64().unwrap_or(0),
        servers: v["servers"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default(),
        times: v["times"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default(),
        error: v["error"].as_str().map(str::to_string),
        error_at: v["error_at"].as_f64(),
        raw: raw.chars().take(600).collect(),
    }
}

// ---------------------------------------------------------------- keepalived

/// keepalived (VRRP only) running in the foreground in a lab namespace.
struct Keepalived {
    handle: ProcHandle,
    log: PathBuf,
    conf: PathBuf,
}

impl Keepalived {
    /// Starts keepalived in `ns` as `name` with `VRRPv3`, VRID 51, `advert_int`
    /// [`KEEPALIVED_ADVERT_MS`], unicast between `own` and `peer`, the lab VIP
    /// /32 on eth0.
    ///
    /// # Panics
    /// When keepalived is not installed.
    fn start(
        lab: &mut DrLab,
        ns: &str,
        name: &str,
        (own, peer): (Ipv4Addr, Ipv4Addr),
        priority: u8,
        initial: &str,
    ) -> Keepalived {
        assert!(
            run(&["sh", "-c", "command -v keepalived"]).is_ok(),
            "keepalived is not installed: these tests run lbd beside it (apt-get install keepalived)"
        );
        let dir = lab.dir().to_path_buf();
        let conf = dir.join(format!("{name}.conf"));
        let text = format!(
            "global_defs {{\n  router_id {name}\n  vrrp_version 3\n}}\n\
             vrrp_instance VI_1 {{\n  state {initial}\n  interface eth0\n  virtual_router_id 51\n  \
             priority {priority}\n  advert_int {advert_s}\n  unicast_src_ip {own}\n  unicast_peer {{\n    {peer}\n  }}\n  \
             virtual_ipaddress {{\n    {vip}/32 dev eth0\n  }}\n}}\n",
            vip = lab.vip(),
            advert_s = KEEPALIVED_ADVERT_MS / 1000,
        );
        std::fs::write(&conf, text).unwrap_or_else(|e| panic!("{e}"));
        let log = lab.log_path(&format!("{name}.log"));
        let path = |suffix: &str| dir.join(format!("{name}{suffix}")).display().to_string();
        let handle = lab
            .spawn_in(
                ns,
                &[
                    "keepalived",
                    "-n",
                    "-l",
                    "-D",
                    "-G",
                    "-P",
                    "-f",
                    &conf.display().to_string(),
                    "-p",
                    &path(".pid"),
                    "-r",
                    &path("-vrrp.pid"),
                    "-c",
                    &path("-checkers.pid"),
                ],
                &log,
            )
            .unwrap_or_else(|e| panic!("cannot start keepalived: {e}"));
        Keepalived { handle, log, conf }
    }

    /// Rewrites the configuration with `vips` as its virtual addresses and
    /// reloads it (SIGHUP), as an operator adding a VIP would.
    fn reload_with(&self, lab: &DrLab, vips: &[Ipv4Addr]) {
        let text = std::fs::read_to_string(&self.conf).unwrap_or_else(|e| panic!("{e}"));
        let start = text
            .find("  virtual_ipaddress {")
            .unwrap_or_else(|| panic!("{text}"));
        let list = vips.iter().fold(String::new(), |mut list, vip| {
            let _ = writeln!(list, "    {vip}/32 dev eth0");
            list
        });
        let text = format!("{}  virtual_ipaddress {{\n{list}  }}\n}}\n", &text[..start]);
        std::fs::write(&self.conf, text).unwrap_or_else(|e| panic!("{e}"));
        let pid = lab
            .pid(self.handle)
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_else(|| panic!("keepalived is not running"));
        // SAFETY: kill(2) on a child the lab started and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How often keepalived's log says it entered `state` (MASTER, BACKUP).
    fn entered(&self, state: &str) -> usize {
        self.log_text()
            .matches(&format!("Entering {state} STATE"))
            .count()
    }

    /// How many state changes keepalived has logged.
    fn transitions(&self) -> usize {
        self.log_text().matches("Entering ").count()
    }

    /// Sends SIGTERM (keepalived then sends priority 0 and removes the VIP)
    /// without waiting for it to exit.
    fn sigterm(&self, lab: &DrLab) {
        let pid = lab
            .pid(self.handle)
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_else(|| panic!("keepalived is not running"));
        // SAFETY: kill(2) on a child the lab started and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    /// Stops keepalived with SIGTERM (it sends priority 0 and removes the VIP).
    fn stop(self, lab: &mut DrLab) {
        lab.kill(self.handle)
            .unwrap_or_else(|e| panic!("stopping keepalived: {e}"));
    }
}

// ------------------------------------------------------------------- tests

/// The lab and keepalived on their own: `lb2` is set up like `lb`, two
/// keepalived elect the higher priority, the VIP moves when it stops, and
/// `cut_lbs` makes a split brain that `heal_lbs` ends.
#[test]
fn lab_second_lb_and_two_keepalived_elect_one_master() {
    let mut lab = ha_lab();
    let (lb, lb2) = (lab.lb_ns().to_string(), lab.lb2_ns().to_string());
    let from_lb = (lab.lb_address(), lab.lb2_address());
    let from_lb2 = (lab.lb2_address(), lab.lb_address());
    let link = run(&["ip", "-n", &lb2, "link", "show", "eth0"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(link.contains(&mac(lab.lb2_mac())), "{link}");
    assert_eq!(mac(lab.lb2_mac()), "02:00:00:00:00:0b");
    assert!(holds(&lb2, lab.lb2_address()));
    let port = run(&["ip", "-n", lab.switch_ns(), "link", "show", "lb2"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(port.contains("xdp"), "no XDP on lb2's switch port: {port}");
    let sysctl = lb_tests::lab::run_in(
        &lb2,
        &[
            "sysctl",
            "-n",
            "net.ipv4.ip_forward",
            "net.ipv4.conf.all.rp_filter",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sysctl.split_whitespace().collect::<Vec<_>>(), ["0", "0"]);
    let routes = run(&["ip", "-n", &lb2, "route"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(routes.contains("198.18.1.0/24 via 198.18.0.2"), "{routes}");

    let ka1 = Keepalived::start(&mut lab, &lb, "ka1", from_lb, 150, "BACKUP");
    let ka2 = Keepalived::start(&mut lab, &lb2, "ka2", from_lb2, 100, "BACKUP");
    let vip = lab.vip();
    let elected = poll(Duration::from_secs(8), || {
        holds(&lb, vip) && ka2.entered("BACKUP") > 0
    });
    assert!(
        elected.is_some(),
        "keepalived in lb (priority 150) did not become master:\n{}\n{}",
        ka1.log_text(),
        ka2.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(holds(&lb, vip) && !holds(&lb2, vip));
    assert_eq!(ka2.entered("MASTER"), 0, "{}", ka2.log_text());

    lab.cut_lbs().unwrap_or_else(|e| panic!("{e}"));
    let split = poll(Duration::from_secs(6), || holds(&lb2, vip));
    assert!(
        split.is_some(),
        "cut_lbs did not split the pair:\n{}",
        ka2.log_text()
    );
    assert!(holds(&lb, vip), "both are masters during the split");
    lab.heal_lbs().unwrap_or_else(|e| panic!("{e}"));
    let healed = poll(Duration::from_secs(4), || !holds(&lb2, vip));
    assert!(
        healed.is_some(),
        "heal_lbs did not end the split:\n{}",
        ka2.log_text()
    );
    assert!(holds(&lb, vip));
    assert!(lab.heal_lbs().is_err(), "healing twice is an error");

    ka1.stop(&mut lab);
    let moved = poll(Duration::from_secs(3), || holds(&lb2, vip));
    assert!(
        moved.is_some(),
        "VIP did not move to lb2:\n{}",
        ka2.log_text()
    );
    eprintln!(
        "keepalived pair: elected in {elected:?}, split in {split:?}, healed in {healed:?}, \
         moved after SIGTERM in {moved:?}"
    );
}

/// Startup: the primary is master and alone holds the VIP, `lbctl ha` says so
/// on both nodes, the secondary takes the primary's services instead of its
/// own, and sessions made on the master show up on the backup as table entries.
#[test]
fn the_primary_is_master_alone_and_its_sessions_reach_the_backup() {
    let pair = start_pair(Keys::Same);
    assert!(
        holds(pair.lab.lb_ns(), pair.lab.vip()),
        "the master holds the VIP"
    );
    assert!(
        !holds(pair.lab.lb2_ns(), pair.lab.vip()),
        "the backup holds no VIP"
    );

    // Each node advertises priority 1 until the peer's session table has
    // arrived, then its own.
    let mut pair = pair;
    for (lbd, priority) in [(&pair.lb1, 150), (&pair.lb2, 100)] {
        lbd.wait_ha(
            &mut pair.lab,
            Duration::from_secs(3),
            "the configured priority",
            |v| v["priority"] == priority,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let lab = &pair.lab;
    let ha1 = pair.lb1.ha().unwrap_or_else(|| panic!("lbctl ha on lb1"));
    let ha2 = pair.lb2.ha().unwrap_or_else(|| panic!("lbctl ha on lb2"));
    assert_eq!(ha1["role"], "primary", "{ha1}");
    assert_eq!(ha1["state"], "master", "{ha1}");
    assert_eq!(ha1["peer"], lab.lb2_address().to_string(), "{ha1}");
    assert_eq!(ha1["priority"], 150, "{ha1}");
    assert_eq!(ha2["role"], "secondary", "{ha2}");
    assert_eq!(ha2["state"], "backup", "{ha2}");
    assert_eq!(ha2["peer"], lab.lb_address().to_string(), "{ha2}");
    assert_eq!(ha2["priority"], 100, "{ha2}");
    let age = ha2["last_advert_age_ms"].as_u64();
    assert!(
        age.is_some_and(|a| u128::from(a) <= ms(advert() * 3)),
        "the backup hears adverts every {:?}: {ha2}",
        advert()
    );
    for ha in [&ha1, &ha2] {
        assert_eq!(ha["sync"]["connected"], true, "{ha}");
        for key in ["sent", "received"] {
            assert!(ha["sync"][key].is_u64(), "{ha}");
        }
        assert!(
            ha["sync"]["lag_ms"].is_null() || ha["sync"]["lag_ms"].is_u64(),
            "{ha}"
        );
    }
    let st1 = pair.lb1.status().unwrap_or_else(|| panic!("status lb1"));
    let st2 = pair.lb2.status().unwrap_or_else(|| panic!("status lb2"));
    assert_eq!(st1["ha"]["state"], "master", "{}", st1["ha"]);
    assert_eq!(st2["ha"]["state"], "backup", "{}", st2["ha"]);

    // The secondary listed only rs1; the primary's three replace that.
    wait_for_primary_services(&pair);

    let sources = pair.sources(0..ROUND_SOURCES);
    let servers = sticky_round(lab, &sources, 3);
    let took = wait_table(&pair.lb2, &servers, session_sync());
    let ha1 = pair.lb1.ha().unwrap_or_default();
    let ha2 = pair.lb2.ha().unwrap_or_default();
    assert!(ha1["sync"]["sent"].as_u64().unwrap_or(0) > 0, "{ha1}");
    assert!(ha2["sync"]["received"].as_u64().unwrap_or(0) > 0, "{ha2}");
    for source in &sources[..4] {
        let a1 = affinity(&pair.lb1, *source);
        assert_eq!(a1["source"], "table", "{a1}");
        assert_eq!(a1["server"], affinity(&pair.lb2, *source)["server"]);
    }
    eprintln!(
        "{} sessions replicated to the backup within {took:?}",
        servers.len()
    );
}

/// Waits until the secondary has the primary's three servers of `web` (it
/// listed only rs1).
fn wait_for_primary_services(pair: &Pair) {
    let _ = wait_until(
        "the secondary to take the primary's services",
        SLACK,
        || {
            let servers = pair
                .lb2
                .status()
                .map(|s| web_servers(&s))
                .ok_or_else(|| "lb2's `lbctl status` does not answer".to_owned())?;
            if servers.len() == 3 {
                Ok(servers)
            } else {
                Err(format!(
                    "lb2's servers of web: {:?}",
                    servers.keys().collect::<Vec<_>>()
                ))
            }
        },
    );
}

/// After `kill` of lb1: when lb2 says master, when it holds the VIP, when
/// the client (a new source) is served again; each watched for up to
/// `limit` after the kill.
fn watch_takeover(
    pair: &Pair,
    kill: Instant,
    limit: Duration,
) -> (Option<Duration>, Option<Duration>, Option<Duration>) {
    let (mut master_at, mut vip_at) = (None, None);
    let _ = try_wait_until(
        "lb2 master with the VIP",
        limit.saturating_sub(kill.elapsed()),
        || {
            if master_at.is_none() && pair.lb2.ha_state().as_deref() == Some("master") {
                master_at = Some(kill.elapsed());
            }
            if vip_at.is_none() && holds(pair.lab.lb2_ns(), pair.lab.vip()) {
                vip_at = Some(kill.elapsed());
            }
            match (master_at, vip_at) {
                (Some(master), Some(vip)) => Ok((master, vip)),
                _ => Err(format!("master after {master_at:?}, VIP after {vip_at:?}")),
            }
        },
    );
    let serving_at = poll(limit.saturating_sub(kill.elapsed()), || {
        http_get(&pair.lab, Duration::from_millis(300)).is_ok()
    })
    .map(|_| kill.elapsed());
    (master_at, vip_at, serving_at)
}

/// A pair in its steady state carrying traffic: a long-lived connection
/// from the lab's last source (for up to `keepalive`), a round of short
/// requests from `ROUND_SOURCES` sources (`rounds` each), then rs4 added so
/// those clients stay on their servers only by their table entries. Returns
/// the pair, the round's sources, where each was answered, the same with
/// the long-lived connection's source, and its server.
fn pair_under_traffic(keepalive: Duration, rounds: usize) -> PairUnderTraffic {
    let mut pair = start_pair(Keys::Same);
    let sources = pair.sources(0..ROUND_SOURCES);
    let long_source = pair.lab.client_sources()[SOURCES - 1];
    let ka = start_keepalive(&mut pair.lab, long_source, keepalive);
    let before = sticky_round(&pair.lab, &sources, rounds);
    grow_to_rs4(&pair);
    let mut expected = before.clone();
    let long_server = affinity(&pair.lb1, long_source)["server"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !long_server.is_empty(),
        "the long-lived connection has an affinity entry"
    );
    expected.insert(long_source, long_server.clone());
    PairUnderTraffic {
        pair,
        sources,
        ka,
        before,
        expected,
        long_server,
    }
}

/// See [`pair_under_traffic`].
struct PairUnderTraffic {
    pair: Pair,
    sources: Vec<Ipv4Addr>,
    ka: KeepAlive,
    before: BTreeMap<Ipv4Addr, String>,
    expected: BTreeMap<Ipv4Addr, String>,
    long_server: String,
}

/// `kill -9` of the master: the backup takes the VIP within
/// `Master_Down_Interval` (3 x advert + skew) and clients resume within that
/// (each plus [`SLACK`]), every source keeps its real server (also those only
/// the replicated table keeps: rs4 was added after they came, so hashing
/// would move some), and a keep-alive connection lives on.
#[test]
fn killing_the_master_keeps_sessions_and_a_long_lived_connection() {
    let PairUnderTraffic {
        mut pair,
        sources,
        ka,
        before,
        expected,
        long_server,
    } = pair_under_traffic(Duration::from_secs(30), 2);
    let synced = wait_table(&pair.lb2, &expected, session_sync());

    let takeover = master_down_interval(advert(), ClusterSpec::secondary(&pair.lab, None).priority);
    let bound = takeover + SLACK;
    let rsts_before = tcp_out_rsts(pair.lab.lb_ns());
    let killed_at = SystemTime::now();
    let kill = Instant::now();
    pair.lb1
        .crash(&mut pair.lab)
        .unwrap_or_else(|e| panic!("{e}"));
    let (master_at, vip_at, serving_at) = watch_takeover(&pair, kill, bound + SLACK);
    let rsts = tcp_out_rsts(pair.lab.lb_ns()).saturating_sub(rsts_before);
    eprintln!(
        "after kill -9: backup master in {master_at:?}, VIP in {vip_at:?}, serving in \
         {serving_at:?} (table synced {synced:?} before)"
    );
    for (what, at) in [("state master", master_at), ("VIP on lb2", vip_at)] {
        assert!(
            at.is_some_and(|t| t <= bound),
            "{what} after {at:?}; expected Master_Down_Interval (3 x advert + skew) = \
             {takeover:?}, plus {SLACK:?}"
        );
    }
    assert!(
        serving_at.is_some_and(|t| t <= bound),
        "clients served again after {serving_at:?}; expected within Master_Down_Interval \
         {takeover:?} plus {SLACK:?}; client's neighbour entry: {}",
        client_neigh(&pair.lab, pair.lab.vip())
    );
    assert!(
        client_neigh(&pair.lab, pair.lab.vip()).contains(&mac(pair.lab.lb2_mac())),
        "gratuitous ARP moved the client to lb2: {}",
        client_neigh(&pair.lab, pair.lab.vip())
    );

    let after = sticky_round(&pair.lab, &sources, 2);
    let moved: Vec<_> = before
        .iter()
        .filter(|(s, server)| after.get(*s) != Some(*server))
        .map(|(s, server)| format!("{s}: {server} -> {:?}", after.get(s)))
        .collect();
    assert!(
        moved.is_empty(),
        "{} of {} sources changed server at failover: {moved:?}",
        moved.len(),
        before.len()
    );
    let st2 = pair.lb2.status().unwrap_or_else(|| panic!("status lb2"));
    assert_eq!(st2["ha"]["state"], "master");

    // Long enough after the takeover for at least 10 answers (one per
    // 100 ms) even on a loaded machine.
    std::thread::sleep(Duration::from_secs(3));
    let report = stop_keepalive(&mut pair.lab, ka);
    let t = epoch_s(killed_at);
    eprintln!(
        "long-lived connection: {} answers, {} after the kill, longest gap after it {:.3}s, \
         servers {:?}",
        report.answers,
        report.answers_after(t),
        report.max_gap_after(t),
        report.servers
    );
    assert!(
        report.error.is_none(),
        "the long-lived connection broke {:.3}s after the kill (lb2 master after {master_at:?}): \
         {:?}; the crashed node's kernel sent {rsts} TCP resets since the kill (its VIP stayed, \
         its XDP program went with lbd); {}",
        report.error_at.unwrap_or(t) - t,
        report.error,
        report.raw
    );
    assert_eq!(report.servers.len(), 1, "{:?}", report.servers);
    assert!(
        report.servers.contains_key(&long_server),
        "{:?}",
        report.servers
    );
    assert!(report.answers_after(t) >= 10, "{}", report.raw);
    // A request lost at the kill is retransmitted with exponential backoff
    // from TCP_RTO_MIN: the first retransmission after lb2 serves comes at
    // most about as long again after the kill.
    let gap_bound = bound * 2 + TCP_RTO_MIN + KEEPALIVE_EVERY;
    assert!(
        report.max_gap_after(t) < gap_bound.as_secs_f64(),
        "the longest gap after the kill is beyond {gap_bound:?}: {}",
        report.raw
    );
}

/// The returning primary (lb1) took over once, after its priority hold
/// ended, never holding the VIP unless master, and the pair ended settled.
fn check_return(samples: &[Sample]) {
    let table = show(samples);
    let first_master = samples.iter().position(|s| s.s1 == "master");
    let Some(first_master) = first_master else {
        panic!("the returning primary never became master:\n{table}");
    };
    assert!(
        samples[first_master].received1 > 0,
        "lb1 became master before it received anything over sync:\n{table}"
    );
    assert!(
        first_master > 0 && samples[first_master - 1].priority1 == 150,
        "lb1 preempted while its priority was still held:\n{table}"
    );
    assert!(
        samples[first_master].at < Duration::from_secs(12),
        "lb1 took too long to preempt:\n{table}"
    );
    assert!(
        handovers(samples) <= 1,
        "the master changed hands more than once:\n{table}"
    );
    let both = samples
        .windows(2)
        .filter(|w| w[0].sole_master() == 0 && w[1].sole_master() == 0)
        .filter(|w| w.iter().all(|s| s.s1 == "master" && s.s2 == "master"))
        .count();
    assert_eq!(
        both, 0,
        "both nodes were master for more than a moment:\n{table}"
    );
    // A sample reads states and addresses one after another, so one sample
    // can straddle a transition; two in a row cannot.
    let vip_without_master = samples
        .windows(2)
        .filter(|w| {
            w.iter()
                .all(|s| (s.s1 == "backup" || s.s1 == "init") && s.vip1)
        })
        .count();
    assert_eq!(
        vip_without_master, 0,
        "lb1 holds the VIP while not master:\n{table}"
    );
    let last = samples.last().unwrap_or_else(|| panic!("no samples"));
    assert_eq!(
        (last.s1.as_str(), last.s2.as_str(), last.vip1, last.vip2),
        ("master", "backup", true, false),
        "{table}"
    );
    eprintln!("returning primary:\n{table}");
}

/// The old master comes back: it does not preempt before it has the session
/// table, then takes over exactly once; the VIP is only ever on the master,
/// sessions stay put (also one made while it was away), a keep-alive
/// connection made through the secondary survives the handover back, and a
/// drain done on the secondary meanwhile reaches the primary.
#[test]
fn a_returning_primary_takes_over_once_after_it_has_the_sessions() {
    let mut pair = start_pair(Keys::Same);
    let sources = pair.sources(0..ROUND_SOURCES);
    let long_source = pair.lab.client_sources()[SOURCES - 1];
    let before = sticky_round(&pair.lab, &sources, 2);
    grow_to_rs4(&pair);
    let _ = wait_table(&pair.lb2, &before, session_sync());

    pair.kill_lb1_for_lb2().unwrap_or_else(|e| panic!("{e}"));
    // A connection made through lb2 while lb1 is away.
    let ka = start_keepalive(&mut pair.lab, long_source, Duration::from_secs(30));
    // Maintenance must not wait for a dead primary: the master secondary
    // takes admin changes while the primary is unreachable.
    let out = pair.lb2.lbctl(&["drain", "web", "rs3"]);
    assert!(
        out.status.success(),
        "drain on the secondary while it is master and the primary is down: {}",
        out_text(&out)
    );
    eprintln!(
        "the crashed lbd left the VIP on lb1: {}",
        holds(pair.lab.lb_ns(), pair.lab.vip())
    );

    let key = pair.lab.dir().join("lb1.key");
    let config = primary_config(&pair.lab, &key, 4);
    let ns1 = pair.lab.lb_ns().to_string();
    pair.lb1 =
        Lbd::start_named(&mut pair.lab, &ns1, "lb1", &config).unwrap_or_else(|e| panic!("{e}"));
    let samples = pair.sample_for(Duration::from_secs(14), |s| {
        // Stop 2 s after lb1 first says master.
        s.iter()
            .position(|x| x.s1 == "master")
            .is_some_and(|i| s.len() - i > 20)
    });
    check_return(&samples);

    let after = sticky_round(&pair.lab, &sources, 2);
    assert_eq!(after, before, "sessions moved when the primary came back");
    std::thread::sleep(Duration::from_millis(500));
    let report = stop_keepalive(&mut pair.lab, ka);
    assert!(
        report.error.is_none(),
        "the long-lived connection broke: {:?}; {}",
        report.error,
        report.raw
    );
    assert_eq!(report.servers.len(), 1, "{:?}", report.servers);
    let a = affinity(&pair.lb1, long_source);
    assert!(
        a["source"] == "table"
            && report
                .servers
                .contains_key(a["server"].as_str().unwrap_or("")),
        "the session made through lb2 is in lb1's table: {a}, answered by {:?}",
        report.servers
    );
    // The drain made on the secondary while lb1 was away reached lb1.
    let rs3 = pair
        .lb1
        .status()
        .map(|s| web_servers(&s).get("rs3").cloned().unwrap_or_default());
    assert!(
        rs3.as_ref().is_some_and(|r| r["admin_state"] == "drain"),
        "the secondary's drain of rs3 did not reach the returning primary: {rs3:?}"
    );
}

/// An admin of the secondary's web console drains rs1 there: the refusal's
/// message (the preview's and the change's, which must agree).
fn console_drain_on_lb2(pair: &Pair) -> String {
    use lb_tests::console::{add_user, request_at, sign_in_at};
    let (lab, at) = (&pair.lab, pair.lab.lb2_address());
    add_user(&pair.lb2, "alice", "admin", "admin-password-1").unwrap_or_else(|e| panic!("{e}"));
    let session = sign_in_at(lab, at, "alice", "admin-password-1")
        .session_cookie()
        .unwrap_or_else(|| panic!("cannot sign in to lb2's console:\n{}", pair.lb2.log_text()));
    let overview = request_at(lab, at, "GET", "/api/overview", Some(&session), &[], None).json();
    assert_eq!(overview["can_change"], false, "{overview}");
    let preview = request_at(
        lab,
        at,
        "GET",
        "/api/preview?service=web&server=rs1&action=drain",
        Some(&session),
        &[],
        None,
    )
    .json();
    let csrf = format!(
        "X-CSRF-Token: {}",
        overview["csrf"].as_str().unwrap_or_default()
    );
    let answer = request_at(
        lab,
        at,
        "POST",
        "/api/change",
        Some(&session),
        &["Content-Type: application/json", &csrf],
        Some(r#"{"service":"web","server":"rs1","action":"drain"}"#),
    );
    assert_eq!(answer.status, 409, "{answer:?}");
    let said = answer.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(preview["refused"], said, "{preview}");
    assert_eq!(overview["refusal"], said, "{overview}");
    said
}

/// `lbctl apply`, `drain` and `weight` on the primary reach the secondary
/// at once (within [`SLACK`]); the secondary refuses `apply` (naming the
/// primary) and, while the primary is reachable, `drain`.
#[test]
fn configuration_and_admin_changes_flow_from_the_primary_only() {
    let pair = start_pair(Keys::Same);
    let lab = &pair.lab;
    wait_for_primary_services(&pair);

    let wait_lb2 = |what: &str, accept: &dyn Fn(&BTreeMap<String, Value>) -> bool| {
        let took = poll(SLACK, || {
            pair.lb2.status().is_some_and(|s| accept(&web_servers(&s)))
        });
        assert!(
            took.is_some(),
            "{what} did not reach the secondary within {SLACK:?}: {:?}",
            pair.lb2.status().map(|s| web_servers(&s))
        );
        eprintln!("{what}: on the secondary after {took:?}");
    };

    // apply on the primary: web with rs1 and rs2 only.
    let key = lab.dir().join("lb1.key");
    let smaller = lab_config_named(
        lab,
        "lb1",
        &ClusterSpec::primary(lab, Some(&key)).yaml(),
        &web_service(lab, 2, 300),
    );
    let file = lab.dir().join("lb1-apply.yaml");
    std::fs::write(&file, &smaller).unwrap_or_else(|e| panic!("{e}"));
    lbctl_ok(&pair.lb1, &["apply", &file.display().to_string()]);
    assert_eq!(
        pair.lb1.status().map(|s| web_servers(&s).len()),
        Some(2),
        "apply changed the primary"
    );
    wait_lb2("apply", &|rs| rs.len() == 2 && !rs.contains_key("rs3"));
    // The secondary answered: `lbctl ha` on the primary shows it applied
    // the version sent.
    let answered = poll(SLACK, || {
        pair.lb1.ha().is_some_and(|v| {
            v["sync"]["config_version"].is_u64()
                && v["sync"]["peer_applied_version"] == v["sync"]["config_version"]
        })
    });
    assert!(
        answered.is_some(),
        "the primary knows the secondary applied its configuration: {:?}",
        pair.lb1.ha().map(|v| v["sync"].clone())
    );

    // The secondary's audit log: each configuration from the primary's
    // "before" is what the one before it left.
    let received: Vec<Value> = pair
        .lb2
        .audit_lines()
        .into_iter()
        .filter(|line| line["what"] == "configuration from the primary")
        .collect();
    assert!(received.len() >= 2, "pairing and apply: {received:?}");
    for pair_of_lines in received.windows(2) {
        assert_eq!(
            pair_of_lines[1]["before"], pair_of_lines[0]["after"],
            "a receipt's before is the previous one's after: {received:?}"
        );
        assert_ne!(
            pair_of_lines[1]["before"], pair_of_lines[1]["after"],
            "{received:?}"
        );
    }

    lbctl_ok(&pair.lb1, &["weight", "web", "rs1", "50"]);
    wait_lb2("weight", &|rs| {
        rs.get("rs1").is_some_and(|r| r["weight"] == 50)
    });

    // The secondary refuses apply, naming the primary.
    let key2 = lab.dir().join("lb2.key");
    let theirs = lab_config_named(
        lab,
        "lb2",
        &ClusterSpec::secondary(lab, Some(&key2)).yaml(),
        &web_service(lab, 3, 300),
    );
    let file2 = lab.dir().join("lb2-apply.yaml");
    std::fs::write(&file2, theirs).unwrap_or_else(|e| panic!("{e}"));
    let out = pair.lb2.lbctl(&["apply", &file2.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "apply on the secondary: {}",
        out_text(&out)
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(
        stderr.contains("primary")
            && (stderr.contains("lb1") || stderr.contains(&lab.lb_address().to_string())),
        "the message names the primary (lb1 / {}): {stderr:?}",
        lab.lb_address()
    );

    // drain on the secondary while the primary is reachable.
    let out = pair.lb2.lbctl(&["drain", "web", "rs1"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "drain on the secondary: {}",
        out_text(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1,
        "{}",
        out_text(&out)
    );
    // The secondary's web console refuses it too, with lbctl's words.
    let lbctl_said = String::from_utf8_lossy(&out.stderr)
        .trim()
        .trim_start_matches("lbctl: ")
        .to_owned();
    let console_said = console_drain_on_lb2(&pair);
    assert_eq!(
        console_said, lbctl_said,
        "the console and lbctl say the same"
    );
    std::thread::sleep(Duration::from_millis(500));
    for lbd in [&pair.lb1, &pair.lb2] {
        let rs = lbd.status().map(|s| web_servers(&s)).unwrap_or_default();
        assert_eq!(rs.len(), 2, "{}: {rs:?}", lbd.ns());
        assert_eq!(rs["rs1"]["admin_state"], "online", "{}: {rs:?}", lbd.ns());
    }

    // drain and online on the primary reach the secondary.
    lbctl_ok(&pair.lb1, &["drain", "web", "rs2"]);
    wait_lb2("drain", &|rs| {
        rs.get("rs2").is_some_and(|r| r["admin_state"] == "drain")
    });
    lbctl_ok(&pair.lb1, &["online", "web", "rs2"]);
    wait_lb2("online", &|rs| {
        rs.get("rs2").is_some_and(|r| r["admin_state"] == "online")
    });
}

/// A sync peer with another key is refused: never connected, "failed
/// authentication" logged, nothing replicated; VRRP still elects the primary.
#[test]
fn a_sync_peer_with_the_wrong_key_is_refused() {
    let pair = start_pair(Keys::Different);
    let lab = &pair.lab;
    let sources = pair.sources(0..16);
    let servers = sticky_round(lab, &sources, 1);
    assert!(servers.values().any(|s| s != "rs1"), "{servers:?}");

    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        for lbd in [&pair.lb1, &pair.lb2] {
            let ha = lbd.ha().unwrap_or_default();
            assert_eq!(ha["sync"]["connected"], false, "{}: {ha}", lbd.ns());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs = [pair.lb1.log_text(), pair.lb2.log_text()];
    let refused: Vec<_> = logs
        .iter()
        .map(|l| l.contains("failed authentication"))
        .collect();
    eprintln!("\"failed authentication\" in the logs of lb1, lb2: {refused:?}");
    assert!(
        refused.iter().any(|r| *r),
        "no lbd logged \"failed authentication\""
    );
    for lbd in [&pair.lb1, &pair.lb2] {
        let ha = lbd.ha().unwrap_or_default();
        assert_eq!(ha["sync"]["received"], 0, "{}: {ha}", lbd.ns());
    }
    let own = pair
        .lb2
        .status()
        .map(|s| web_servers(&s))
        .unwrap_or_default();
    assert_eq!(
        own.keys().collect::<Vec<_>>(),
        ["rs1"],
        "the secondary keeps its own services"
    );
    for source in &sources {
        let a = affinity(&pair.lb2, *source);
        assert_eq!(a["source"], "hash", "no session was replicated: {a}");
    }
    assert_eq!(pair.lb1.ha_state().as_deref(), Some("master"));
    assert_eq!(pair.lb2.ha_state().as_deref(), Some("backup"));
}

/// Split brain: with the nodes cut off from each other both become master;
/// healed, one master is left within a few advertisements and the client's
/// ARP entry for the VIP points at it.
#[test]
fn a_healed_split_brain_leaves_one_master_that_owns_the_clients_arp() {
    let pair = start_pair(Keys::Same);
    let lab = &pair.lab;
    let vip = lab.vip();
    assert_eq!(http_get(lab, Duration::from_secs(2)).map(|_| ()), Ok(()));

    let split_bound =
        master_down_interval(advert(), ClusterSpec::secondary(lab, None).priority) + SLACK;
    lab.cut_lbs().unwrap_or_else(|e| panic!("{e}"));
    let split = poll(split_bound, || {
        pair.lb2.ha_state().as_deref() == Some("master") && holds(lab.lb2_ns(), vip)
    });
    let s = pair.sample(Instant::now());
    assert!(
        split.is_some() && s.s1 == "master" && s.vip1,
        "cut off, both become master within Master_Down_Interval plus slack \
         ({split_bound:?}): {s:?}"
    );
    // The client talks to the VIP during the split; make sure its entry
    // points at the node that is about to step down.
    let _ = http_get(lab, Duration::from_secs(1));
    let during = client_neigh(lab, vip);
    if !during.contains(&mac(lab.lb2_mac())) {
        eprintln!("client's entry during the split was {during:?}; pointing it at lb2");
        run(&[
            "ip",
            "-n",
            lab.client_ns(),
            "neigh",
            "replace",
            &vip.to_string(),
            "lladdr",
            &mac(lab.lb2_mac()),
            "dev",
            "eth0",
            "nud",
            "reachable",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    }
    std::thread::sleep(Duration::from_millis(500));

    lab.heal_lbs().unwrap_or_else(|e| panic!("{e}"));
    let limit = advert() * 3 + SLACK;
    let one = poll(limit, || {
        let s = pair.sample(Instant::now());
        s.s1 == "master" && s.s2 == "backup" && s.vip1 && !s.vip2
    });
    let s = pair.sample(Instant::now());
    assert!(
        one.is_some(),
        "one master (lb1) within {limit:?} of healing: {s:?}"
    );
    let lb1_mac = mac(lab.lb_mac());
    let arp = poll(limit, || client_neigh(lab, vip).contains(&lb1_mac));
    assert!(
        arp.is_some(),
        "client's ARP entry for the VIP after healing: {:?} (lb1 is {lb1_mac})",
        client_neigh(lab, vip)
    );
    eprintln!("split after {split:?}; healed: one master after {one:?}, client ARP after {arp:?}");
    assert!(
        http_get(lab, Duration::from_secs(2)).is_ok(),
        "served after healing"
    );
    let stable = pair.sample_for(Duration::from_secs(2), |_| false);
    assert!(
        stable.iter().all(|s| s.sole_master() == 1),
        "{}",
        show(&stable)
    );
}

/// lbd as the primary on `lb` (no sync, keepalived's advertisement
/// interval), serving `web` and master: the start of the tests beside
/// keepalived. Returns its cluster section and lbd.
fn lbd_master_beside_keepalived(lab: &mut DrLab) -> (ClusterSpec, Lbd) {
    let cluster = ClusterSpec {
        advert_interval_ms: KEEPALIVED_ADVERT_MS,
        ..ClusterSpec::primary(lab, None)
    };
    let config = lab_config_named(lab, "lb1", &cluster.yaml(), &web_service(lab, 3, 300));
    let ns1 = lab.lb_ns().to_string();
    let lbd = Lbd::start_named(lab, &ns1, "lb1", &config).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(lab, READY).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ha(lab, Duration::from_secs(6), "lbd master", |v| {
        v["state"] == "master"
    })
    .unwrap_or_else(|e| panic!("{e}"));
    (cluster, lbd)
}

/// lbd (priority 150) is master beside keepalived (100); neither flaps; when
/// lbd is killed, keepalived takes the VIP.
#[test]
fn keepalived_takes_over_from_a_killed_lbd() {
    let mut lab = ha_lab();
    let (_, mut lbd) = lbd_master_beside_keepalived(&mut lab);
    let ns1 = lab.lb_ns().to_string();
    let ns2 = lab.lb2_ns().to_string();
    let from_lb2 = (lab.lb2_address(), lab.lb_address());
    let ka_priority = 100;
    let ka = Keepalived::start(
        &mut lab,
        &ns2,
        "keepalived",
        from_lb2,
        ka_priority,
        "BACKUP",
    );
    let vip = lab.vip();
    let backup = poll(Duration::from_secs(3), || ka.entered("BACKUP") > 0);
    assert!(backup.is_some(), "keepalived:\n{}", ka.log_text());
    let transitions = ka.transitions();
    let start = Instant::now();
    let mut states = Vec::new();
    while start.elapsed() < Duration::from_secs(5) {
        states.push((
            lbd.ha_state().unwrap_or_default(),
            holds(&ns1, vip),
            holds(&ns2, vip),
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        states
            .iter()
            .all(|s| *s == ("master".to_string(), true, false)),
        "lbd master with the VIP, keepalived backup without, throughout: {states:?}\n{}",
        ka.log_text()
    );
    assert_eq!(
        (ka.transitions(), ka.entered("MASTER")),
        (transitions, 0),
        "keepalived flapped:\n{}",
        ka.log_text()
    );

    // Master_Down_Interval at 1 s adverts, priority 100: 3 s + 0.61 s.
    let bound = master_down_interval(keepalived_advert(), ka_priority) + SLACK;
    lbd.crash(&mut lab).unwrap_or_else(|e| panic!("{e}"));
    let took = poll(bound + SLACK, || holds(&ns2, vip));
    eprintln!("keepalived took the VIP {took:?} after lbd was killed");
    assert!(
        took.is_some_and(|t| t < bound),
        "keepalived did not take over within {bound:?}: {took:?}\n{}",
        ka.log_text()
    );
    assert_eq!(ka.entered("MASTER"), 1, "{}", ka.log_text());
}

/// keepalived (priority 200) is master beside lbd (100); neither flaps; when
/// keepalived stops (priority 0), lbd takes over within the skew time, and
/// the client follows its gratuitous ARP.
#[test]
fn lbd_takes_over_quickly_from_a_stopping_keepalived() {
    let mut lab = ha_lab();
    let ns1 = lab.lb_ns().to_string();
    let ns2 = lab.lb2_ns().to_string();
    let vip = lab.vip();
    let from_lb2 = (lab.lb2_address(), lab.lb_address());
    let ka = Keepalived::start(&mut lab, &ns2, "keepalived", from_lb2, 200, "MASTER");
    let master = poll(Duration::from_secs(5), || holds(&ns2, vip));
    assert!(
        master.is_some(),
        "keepalived did not take the VIP:\n{}",
        ka.log_text()
    );

    let lbd_priority = 100;
    let cluster = ClusterSpec {
        advert_interval_ms: KEEPALIVED_ADVERT_MS,
        priority: lbd_priority,
        ..ClusterSpec::primary(&lab, None)
    };
    let config = lab_config_named(&lab, "lb1", &cluster.yaml(), &web_service(&lab, 3, 300));
    let lbd = Lbd::start_named(&mut lab, &ns1, "lb1", &config).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ha(
        &mut lab,
        Duration::from_secs(3),
        "lbd backup hearing keepalived",
        |v| v["state"] == "backup" && v["last_advert_age_ms"].is_u64(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let transitions = ka.transitions();
    let start = Instant::now();
    let mut states = Vec::new();
    while start.elapsed() < Duration::from_secs(5) {
        let ha = lbd.ha().unwrap_or_default();
        states.push((
            ha["state"].as_str().unwrap_or("-").to_string(),
            ha["last_advert_age_ms"].as_u64(),
            holds(&ns1, vip),
            holds(&ns2, vip),
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        states.iter().all(|(s, age, v1, v2)| s == "backup"
            && age.is_some_and(|a| u128::from(a) <= ms(keepalived_advert() + SLACK))
            && !v1
            && *v2),
        "lbd backup hearing keepalived, keepalived master, throughout: {states:?}\n{}",
        ka.log_text()
    );
    assert_eq!(
        ka.transitions(),
        transitions,
        "keepalived flapped:\n{}",
        ka.log_text()
    );

    // The client has the VIP at keepalived's MAC (nothing listens there).
    let _ = http_get(&lab, Duration::from_millis(500));
    assert!(
        client_neigh(&lab, vip).contains(&mac(lab.lb2_mac())),
        "{}",
        client_neigh(&lab, vip)
    );

    ka.sigterm(&lab);
    let took = poll(Duration::from_secs(5), || {
        lbd.ha_state().as_deref() == Some("master") && holds(&ns1, vip)
    });
    eprintln!("lbd master with the VIP {took:?} after SIGTERM to keepalived");
    let log = ka.log_text();
    ka.stop(&mut lab);
    assert!(log.contains("sent 0 priority"), "{log}");
    // Priority 0 from the master: the backup takes over after Skew_Time
    // (0.61 s at 1 s adverts, priority 100), not Master_Down_Interval (3.6 s):
    // the bound, Skew_Time plus slack, stays below the latter.
    let bound = skew_time(keepalived_advert(), lbd_priority) + SLACK;
    assert!(bound < master_down_interval(keepalived_advert(), lbd_priority));
    assert!(
        took.is_some_and(|t| t < bound),
        "lbd took over after {took:?}, not within {bound:?}\n{}",
        lbd.log_text()
    );
    let served = poll(SLACK, || http_get(&lab, Duration::from_millis(300)).is_ok());
    assert!(
        served.is_some(),
        "client not served through lbd; its entry: {}",
        client_neigh(&lab, vip)
    );
    assert!(client_neigh(&lab, vip).contains(&mac(lab.lb_mac())));
}

/// Opens a connection to `target` from namespace `ns` every 50 ms for
/// `duration`, sending nothing on even ones and a bogus sync frame header on
/// odd ones, and keeps each open for 2 s: a stranger on the peer's address
/// that does not hold the key. Returns the connections made.
fn sync_stranger(
    ns: &str,
    target: SocketAddrV4,
    duration: Duration,
) -> std::thread::JoinHandle<usize> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        in_netns(&ns, move || {
            let started = Instant::now();
            let mut open: std::collections::VecDeque<(Instant, std::net::TcpStream)> =
                std::collections::VecDeque::new();
            let mut made = 0;
            while started.elapsed() < duration {
                if let Ok(mut stream) =
                    std::net::TcpStream::connect_timeout(&target.into(), Duration::from_millis(200))
                {
                    if made % 2 == 1 {
                        let _ = stream.write_all(&[0, 0, 0, 60, 2, 1, 0, 0, 0, 0]);
                    }
                    made += 1;
                    open.push_back((Instant::now(), stream));
                }
                while open
                    .front()
                    .is_some_and(|(at, _)| at.elapsed() > Duration::from_secs(2))
                {
                    open.pop_front();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            made
        })
        .unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Issue 12, "Sync under attack": a process on each node's peer address
/// opens connections that never authenticate to that node's sync port, 20
/// a second for 10 s, first against the primary, then the secondary. The
/// pair stays paired throughout, and a drain on the primary reaches the
/// secondary within a second during the attack.
#[test]
fn strangers_on_the_peers_address_do_not_unpair_the_sync_channel() {
    let pair = start_pair(Keys::Same);
    wait_for_primary_services(&pair);
    let lab = &pair.lab;
    let attacks = [
        (
            lab.lb2_ns(),
            SocketAddrV4::new(lab.lb_address(), SYNC_PORT),
            "lb1",
        ),
        (
            lab.lb_ns(),
            SocketAddrV4::new(lab.lb2_address(), SYNC_PORT),
            "lb2",
        ),
    ];
    for (round, (ns, target, victim)) in attacks.into_iter().enumerate() {
        let attack = sync_stranger(ns, target, Duration::from_secs(10));
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        let state = if round == 0 { "drain" } else { "online" };
        lbctl_ok(&pair.lb1, &[state, "web", "rs2"]);
        let reached = poll(Duration::from_secs(1) + SLACK, || {
            pair.lb2.status().is_some_and(|s| {
                web_servers(&s)
                    .get("rs2")
                    .is_some_and(|r| r["admin_state"] == state)
            })
        });
        eprintln!("attack on {victim}: {state} of rs2 on the secondary after {reached:?}");
        assert!(
            reached.is_some_and(|t| t <= Duration::from_secs(1)),
            "attack on {victim}: the {state} reached the secondary after {reached:?} (at most 1 s)"
        );
        while started.elapsed() < Duration::from_secs(10) {
            for (name, lbd) in [("lb1", &pair.lb1), ("lb2", &pair.lb2)] {
                let ha = lbd.ha();
                assert!(
                    ha.as_ref().is_some_and(|v| v["sync"]["connected"] == true),
                    "attack on {victim}: {name} unpaired after {:?}: {ha:?}\n{}",
                    started.elapsed(),
                    lbd.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let made = attack
            .join()
            .unwrap_or_else(|_| panic!("the stranger panicked"));
        assert!(
            made >= 100,
            "attack on {victim}: only {made} connections made"
        );
        let log = if victim == "lb1" {
            pair.lb1.log_text()
        } else {
            pair.lb2.log_text()
        };
        let refusals = log.matches("sync connection from").count();
        assert!(
            refusals < made / 4,
            "attack on {victim}: {refusals} log lines for {made} connections (rate-limited?)"
        );
    }
}

/// The MACs that answer an ARP request for the VIP from the client.
fn vip_answerers(lab: &DrLab) -> Vec<String> {
    lb_tests::arp::who_answers(
        lab.client_ns(),
        "eth0",
        lab.client_mac(),
        lab.client_address(),
        lab.vip(),
        Duration::from_millis(600),
    )
    .unwrap_or_else(|e| panic!("asking who answers ARP for the VIP: {e}"))
    .into_iter()
    .map(mac)
    .collect()
}

/// The contract: "A node whose lbd died never answers ARP for the VIPs
/// once its peer is master." `kill -9` of the master leaves the VIP on its
/// interface, and (issue 13) its data path: its kernel never answers ARP
/// for the VIP, and its data path only until its ARP lease lapses, three
/// advertisement intervals after its last advertisement, before the peer
/// takes over; after that only the new master answers.
#[test]
fn a_killed_master_never_answers_arp_for_the_vips() {
    let mut pair = start_pair(Keys::Same);
    let (lb1_mac, lb2_mac) = (mac(pair.lab.lb_mac()), mac(pair.lab.lb2_mac()));
    assert_eq!(
        vip_answerers(&pair.lab),
        vec![lb1_mac.clone()],
        "the master answers, alone"
    );

    pair.lb1
        .crash(&mut pair.lab)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        holds(pair.lab.lb_ns(), pair.lab.vip()),
        "the dead master's kernel still holds the VIP (the case at hand)"
    );
    let lease = Duration::from_millis(3 * u64::from(lb_tests::lbd::ADVERT_INTERVAL_MS));
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut answered_by_lb2 = false;
    while started.elapsed() < Duration::from_secs(6) {
        // When this question started: answers may come any time in its window.
        let asked = started.elapsed();
        let answerers = vip_answerers(&pair.lab);
        assert!(
            !(answerers.contains(&lb1_mac) && (answered_by_lb2 || asked > lease)),
            "the dead master answered ARP for the VIP {asked:?} after the kill, its lease \
             lapsed or the peer master: {answerers:?}; before: {seen:?}"
        );
        answered_by_lb2 |= answerers.contains(&lb2_mac);
        seen.push((asked, answerers));
    }
    assert!(
        answered_by_lb2,
        "the new master answers ARP for the VIP: {seen:?}\n{}",
        pair.lb2.log_text()
    );
}

/// Issue 12: a VIP added by reload on both nodes of an lbd + keepalived pair
/// (keepalived reloaded with the same list) never makes two masters:
/// keepalived discards advertisements whose address list differs from its
/// own, so lbd's must list the VIPs it holds now, not those it started with.
#[test]
fn a_vip_added_by_reload_keeps_one_master_beside_keepalived() {
    let mut lab = ha_lab();
    let (cluster, lbd) = lbd_master_beside_keepalived(&mut lab);
    let ns1 = lab.lb_ns().to_string();
    let ns2 = lab.lb2_ns().to_string();
    let from_lb2 = (lab.lb2_address(), lab.lb_address());
    let ka = Keepalived::start(&mut lab, &ns2, "keepalived", from_lb2, 100, "BACKUP");
    let backup = poll(Duration::from_secs(3), || ka.entered("BACKUP") > 0);
    assert!(backup.is_some(), "keepalived:\n{}", ka.log_text());

    // Both reloaded with a second VIP, lbd first.
    let vip2 = Ipv4Addr::new(198, 18, 0, 120);
    let services = format!(
        "{}  - name: second\n    vip: {vip2}\n    port: 8080\n    redirect: {{ code: 301, scheme: https }}\n",
        web_service(&lab, 3, 300)
    );
    let reloaded = lab_config_named(&lab, "lb1", &cluster.yaml(), &services);
    std::fs::write(&lbd.config, reloaded).unwrap_or_else(|e| panic!("{e}"));
    lbd.signal(&lab, libc::SIGHUP)
        .unwrap_or_else(|e| panic!("{e}"));
    let took = poll(Duration::from_secs(5), || holds(&ns1, vip2));
    assert!(took.is_some(), "lbd took the new VIP:\n{}", lbd.log_text());
    ka.reload_with(&lab, &[lab.vip(), vip2]);

    // Three master-down intervals of keepalived (3.6 s each at 1 s adverts).
    let start = Instant::now();
    let mut states = Vec::new();
    while start.elapsed() < Duration::from_secs(12) {
        states.push((
            lbd.ha_state().unwrap_or_default(),
            holds(&ns2, lab.vip()) || holds(&ns2, vip2),
        ));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        states.iter().all(|s| *s == ("master".to_string(), false)),
        "lbd master, keepalived without a VIP, throughout: {states:?}\n{}",
        ka.log_text()
    );
    assert_eq!(ka.entered("MASTER"), 0, "{}", ka.log_text());
}

/// Issue 12: a VIP added by reload on the primary of an lbd pair reaches the
/// secondary with the replicated configuration; the pair never has two
/// masters, the master takes the new VIP and the backup does not.
#[test]
fn a_vip_added_by_reload_on_the_primary_keeps_one_master() {
    let pair = start_pair(Keys::Same);
    wait_for_primary_services(&pair);
    let lab = &pair.lab;
    let vip2 = Ipv4Addr::new(198, 18, 0, 120);
    let key = lab.dir().join("lb1.key");
    let services = format!(
        "{}  - name: second\n    vip: {vip2}\n    port: 8080\n    redirect: {{ code: 301, scheme: https }}\n",
        web_service(lab, 3, 300)
    );
    let reloaded = lab_config_named(
        lab,
        "lb1",
        &ClusterSpec::primary(lab, Some(&key)).yaml(),
        &services,
    );
    std::fs::write(&pair.lb1.config, reloaded).unwrap_or_else(|e| panic!("{e}"));
    pair.lb1
        .signal(lab, libc::SIGHUP)
        .unwrap_or_else(|e| panic!("{e}"));
    let samples = pair.sample_for(Duration::from_secs(8), |_| false);
    let table = show(&samples);
    assert!(
        samples
            .iter()
            .all(|s| s.sole_master() == 1 && s.vip1 && !s.vip2),
        "lb1 the only master, holding the VIP, throughout:\n{table}"
    );
    assert!(holds(lab.lb_ns(), vip2), "the master took the new VIP");
    assert!(!holds(lab.lb2_ns(), vip2), "the backup did not");
    let second = pair
        .lb2
        .status()
        .and_then(|s| s["services"].as_array().map(Vec::len));
    assert_eq!(
        second,
        Some(2),
        "the secondary has the primary's new service"
    );
}

/// Issue 12: 20 rounds of `kill -9` of the master under load, restarting it
/// each time (it takes over again once it has the sessions). A long-lived
/// TCP connection survives every round on one server, no client ever
/// changes server, and after each takeover the dead node never answers ARP
/// for the VIP.
#[test]
fn twenty_kills_of_the_master_under_load_move_no_client() {
    const ROUNDS: usize = 20;
    let PairUnderTraffic {
        mut pair,
        sources,
        ka,
        before,
        expected,
        long_server,
    } = pair_under_traffic(Duration::from_secs(600), 1);
    let lb1_mac = mac(pair.lab.lb_mac());
    let key = pair.lab.dir().join("lb1.key");
    let config = primary_config(&pair.lab, &key, 4);
    let ns1 = pair.lab.lb_ns().to_string();
    let started = Instant::now();
    for round in 1..=ROUNDS {
        let _ = wait_table(&pair.lb2, &expected, session_sync());
        pair.kill_lb1_for_lb2()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let answerers = vip_answerers(&pair.lab);
        assert!(
            !answerers.contains(&lb1_mac),
            "round {round}: the dead master answered ARP for the VIP after the takeover: {answerers:?}"
        );
        let during = sticky_round(&pair.lab, &sources, 1);
        assert_eq!(
            during, before,
            "round {round}: clients moved at the takeover"
        );
        pair.lb1 = Lbd::start_named(&mut pair.lab, &ns1, "lb1", &config)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        pair.lb1
            .wait_ha(
                &mut pair.lab,
                Duration::from_secs(20),
                "lb1 master again",
                |v| v["state"] == "master",
            )
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", pair.lb1.log_text()));
        pair.lb2
            .wait_ha(
                &mut pair.lab,
                Duration::from_secs(5),
                "lb2 backup again",
                |v| v["state"] == "backup",
            )
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let back = sticky_round(&pair.lab, &sources, 1);
        assert_eq!(
            back, before,
            "round {round}: clients moved when lb1 came back"
        );
        eprintln!("round {round} done at {:?}", started.elapsed());
    }
    let report = stop_keepalive(&mut pair.lab, ka);
    assert!(
        report.error.is_none(),
        "the long-lived connection broke: {:?}; {}",
        report.error,
        report.raw
    );
    assert_eq!(
        report.servers.keys().collect::<Vec<_>>(),
        vec![&long_server],
        "the long-lived connection stayed on its server"
    );
    assert!(
        report.answers >= 10 * ROUNDS as u64,
        "answers throughout: {}",
        report.raw
    );
}

/// Issue 12: VRRP never waits behind other work. The backup's `nft` takes
/// 3 s (a stand-in first on its PATH), and a reload makes its daemon wait for
/// it; at 100 ms advertisements (master down 0.36 s after the last one
/// heard) the backup never once becomes master meanwhile, and takes over at
/// once when the master is killed afterwards.
#[test]
fn a_backup_stalled_in_a_reload_never_takes_over() {
    let mut lab = ha_lab();
    let key1 = write_key(&lab, "lb1.key", KEY).unwrap_or_else(|e| panic!("{e}"));
    let key2 = write_key(&lab, "lb2.key", KEY).unwrap_or_else(|e| panic!("{e}"));
    let fast = |spec: ClusterSpec| ClusterSpec {
        advert_interval_ms: 100,
        ..spec
    };
    let c1 = lab_config_named(
        &lab,
        "lb1",
        &fast(ClusterSpec::primary(&lab, Some(&key1))).yaml(),
        &web_service(&lab, 3, 300),
    );
    let c2 = lab_config_named(
        &lab,
        "lb2",
        &fast(ClusterSpec::secondary(&lab, Some(&key2))).yaml(),
        &web_service(&lab, 3, 300),
    );
    // `nft` that takes 3 s once the stall file exists.
    let bin = lab.dir().join("slow-bin");
    std::fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("{e}"));
    let stall = lab.dir().join("stall-nft");
    let nft = bin.join("nft");
    std::fs::write(
        &nft,
        format!(
            "#!/bin/sh\nif [ -e {} ]; then sleep 3; fi\nexec /usr/sbin/nft \"$@\"\n",
            stall.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    let path = format!("PATH={}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());
    let (ns1, ns2) = (lab.lb_ns().to_string(), lab.lb2_ns().to_string());
    let mut lb1 = Lbd::start_named(&mut lab, &ns1, "lb1", &c1).unwrap_or_else(|e| panic!("{e}"));
    lb1.wait_ha(&mut lab, Duration::from_secs(15), "lb1 master", |v| {
        v["state"] == "master"
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let lb2 = Lbd::start_named_wrapped(&mut lab, &ns2, "lb2", &c2, &["env", &path])
        .unwrap_or_else(|e| panic!("{e}"));
    lb2.wait_ha(
        &mut lab,
        Duration::from_secs(15),
        "lb2 paired backup",
        |v| v["state"] == "backup" && v["sync"]["connected"] == true && v["priority"] == 100,
    )
    .unwrap_or_else(|e| panic!("{e}"));

    std::fs::write(&stall, "").unwrap_or_else(|e| panic!("{e}"));
    lb2.signal(&lab, libc::SIGHUP)
        .unwrap_or_else(|e| panic!("{e}"));
    let stalled = poll(Duration::from_secs(10), || {
        lb2.log_text().contains("configuration reloaded")
    });
    let log = lb2.log_text();
    assert!(
        stalled.is_some_and(|t| t >= Duration::from_secs(2)),
        "the reload waited for nft ({stalled:?}):\n{log}"
    );
    assert!(
        !log.contains("VRRP backup -> master"),
        "the backup became master while its daemon waited:\n{log}"
    );
    assert_eq!(lb1.ha_state().as_deref(), Some("master"));

    std::fs::remove_file(&stall).unwrap_or_else(|e| panic!("{e}"));
    lb1.crash(&mut lab).unwrap_or_else(|e| panic!("{e}"));
    lb2.wait_ha(&mut lab, Duration::from_secs(2), "lb2 master", |v| {
        v["state"] == "master"
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

/// What lbd logs when it starts re-executed (`lb-userspace/src/bin/lbd.rs`).
const REEXEC_LOGGED: &str = "re-executed (SIGUSR2)";
/// What a master logs when its session stream resumes with the same peer
/// process, and when it starts over (`daemon/cluster.rs`).
const STREAM_RESUMED: &str = "resuming the session stream to the same peer process";
const STREAM_RESTARTED: &str = "streaming the whole affinity table to the peer";

/// When each VRRP advertisement from `from` with a priority above 0
/// reached namespace `ns`, for `window`.
fn capture_adverts(ns: &str, from: Ipv4Addr, window: Duration) -> Vec<Instant> {
    in_netns(ns, move || {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(112)),
        )
        .unwrap_or_else(|e| panic!("raw VRRP socket: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap_or_else(|e| panic!("{e}"));
        let end = Instant::now() + window;
        let mut seen = Vec::new();
        let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        while Instant::now() < end {
            let Ok(n) = socket.recv(&mut buffer) else {
                continue;
            };
            // SAFETY: recv initialised the first n bytes.
            let packet: Vec<u8> = buffer[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            let header = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
            let source = packet
                .get(12..16)
                .map(|o| Ipv4Addr::new(o[0], o[1], o[2], o[3]));
            let priority = packet.get(header + 2).copied().unwrap_or(0);
            if source == Some(from) && priority > 0 {
                seen.push(Instant::now());
            }
        }
        seen
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// How long the "new binary" of [`sigusr2_on_the_master_keeps_it_master_without_an_advert_gap`]
/// takes to start: longer than the backup's `Master_Down_Interval`, as a
/// large configuration on a busy node may.
const SLOW_START: Duration = Duration::from_millis(900);

/// Issue 13: SIGUSR2 on the master of a pair, whose new binary (a script
/// that waits [`SLOW_START`], then executes lbd) starts slowly. The same
/// process goes on as master: the backup never takes over or holds the VIP, no gap between
/// two of the master's advertisements (captured at the backup) is longer
/// than one interval (a missed one would make two; the bound leaves half
/// an interval for this machine's scheduling), and the sync session comes
/// back as the same peer process: the stream resumes, no new snapshot,
/// and the backup keeps every session.
#[test]
fn sigusr2_on_the_master_keeps_it_master_without_an_advert_gap() {
    let pair = start_pair_with(Keys::Same, true);
    wait_for_primary_services(&pair);
    let sources = pair.sources(0..ROUND_SOURCES);
    let servers = sticky_round(&pair.lab, &sources, 3);
    wait_table(&pair.lb2, &servers, session_sync());
    let pid = pair
        .lb1
        .pid(&pair.lab)
        .unwrap_or_else(|| panic!("lb1 runs"));
    // Replaced as a package upgrade does: a new file renamed over the old.
    let binary = lb1_binary(&pair.lab);
    let staged = binary.with_extension("new");
    let script = format!(
        "#!/bin/sh\nsleep {}\nexec {} \"$@\"\n",
        SLOW_START.as_secs_f64(),
        paths::lbd().display()
    );
    std::fs::write(&staged, script).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&staged, &binary).unwrap_or_else(|e| panic!("{e}"));

    let (ns2, lb1_address) = (pair.lab.lb2_ns().to_owned(), pair.lab.lb_address());
    let window = Duration::from_secs(9);
    let capture = std::thread::spawn(move || capture_adverts(&ns2, lb1_address, window));
    std::thread::sleep(Duration::from_millis(1500));
    let signalled = Instant::now();
    pair.lb1
        .signal(&pair.lab, libc::SIGUSR2)
        .unwrap_or_else(|e| panic!("{e}"));
    let samples = pair.sample_for(Duration::from_secs(7), |_| false);
    let adverts = capture
        .join()
        .unwrap_or_else(|_| panic!("the capture panicked"));

    let log = pair.lb1.log_text();
    assert_eq!(
        log.matches(REEXEC_LOGGED).count(),
        1,
        "lb1 re-executed once:\n{log}"
    );
    assert_eq!(pair.lb1.pid(&pair.lab), Some(pid), "the same process");
    let table = show(&samples);
    // lbctl on lb1 waits while lb1 starts, so samples may miss a moment:
    // lb2's log says whether it ever became master.
    let lb2_log = pair.lb2.log_text();
    assert!(
        !lb2_log.contains("VRRP backup -> master")
            && samples.iter().all(|s| s.s2 != "master" && !s.vip2),
        "the backup took over during the re-execution:\n{table}\n{lb2_log}"
    );
    assert!(
        samples.last().is_some_and(|s| s.s1 == "master" && s.vip1),
        "lb1 is master with the VIP after it:\n{table}"
    );
    let gaps: Vec<Duration> = adverts
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .collect();
    let longest = gaps.iter().max().copied().unwrap_or_default();
    let around: Vec<u128> = adverts
        .iter()
        .map(|t| ms(t.saturating_duration_since(signalled)))
        .collect();
    assert!(
        adverts.len() >= 30 && adverts.first().is_some_and(|t| *t < signalled),
        "advertisements captured around the signal: {around:?}"
    );
    assert!(
        longest < advert() * 3 / 2,
        "an advertisement gap of {longest:?} (interval {:?}); ms since SIGUSR2: {around:?}",
        advert()
    );
    eprintln!(
        "{} advertisements, longest gap {longest:?} (interval {:?})",
        adverts.len(),
        advert()
    );

    let after = |log: &str| {
        log.rsplit_once(REEXEC_LOGGED)
            .map_or_else(String::new, |(_, a)| a.to_owned())
    };
    let _ = wait_until("the session stream resumed", SLACK * 2, || {
        let log = after(&pair.lb1.log_text());
        if log.contains(STREAM_RESUMED) {
            Ok(())
        } else {
            Err(format!("lb1's log since the re-execution:\n{log}"))
        }
    });
    let log = after(&pair.lb1.log_text());
    assert!(
        !log.contains(STREAM_RESTARTED),
        "a new snapshot after the re-execution:\n{log}"
    );
    wait_table(&pair.lb2, &servers, session_sync());
}

/// keepalived's FAULT: the master's interface loses its link. lbd says
/// `fault` (`lbctl ha`, `lbctl status`), gives the VIP up, and the backup
/// takes over; with the link back lb1 is a backup and then, as a returning
/// primary, master again (after the peer's sessions, or the preempt hold).
#[test]
fn a_master_whose_link_goes_down_is_in_fault_until_it_returns() {
    let pair = start_pair(Keys::Same);
    let lab = &pair.lab;
    wait_for_primary_services(&pair);
    let state = |lbd: &Lbd| lbd.ha_state().unwrap_or_default();
    assert_eq!(state(&pair.lb1), "master");
    let link = |how: &str| {
        run(&[
            "ip",
            "-n",
            lab.lb_ns(),
            "link",
            "set",
            "dev",
            lab.lb_interface(),
            how,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    };

    link("down");
    let fault = poll(SLACK, || state(&pair.lb1) == "fault");
    assert!(fault.is_some(), "lb1 says fault: {}", state(&pair.lb1));
    eprintln!("fault after {fault:?}");
    assert_eq!(
        pair.lb1.status().map(|s| s["ha"]["state"].clone()),
        Some(Value::from("fault")),
        "lbctl status says it too"
    );
    assert!(
        poll(SLACK, || !holds(lab.lb_ns(), lab.vip())).is_some(),
        "lb1 gave the VIP up"
    );
    assert!(
        poll(SLACK, || state(&pair.lb2) == "master"
            && holds(lab.lb2_ns(), lab.vip()))
        .is_some(),
        "lb2 took over: {}",
        state(&pair.lb2)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state(&pair.lb1), "fault", "for as long as the link is gone");

    link("up");
    let back = poll(Duration::from_secs(15) + SLACK, || {
        state(&pair.lb1) == "master" && state(&pair.lb2) == "backup"
    });
    assert!(
        back.is_some(),
        "lb1 master again, lb2 backup: {} / {}",
        state(&pair.lb1),
        state(&pair.lb2)
    );
    eprintln!("master again after {back:?}");
    assert!(poll(SLACK, || holds(lab.lb_ns(), lab.vip())).is_some());
}
