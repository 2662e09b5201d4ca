//! `cargo xtask demo`: Epic behind lbd in a network-namespace lab, shown live.
//!
//! The lab: clients, the load balancer running `lbd` with `examples/epic.yaml`
//! adapted to the lab, three Hyperspace and two MyChart real servers speaking
//! real TLS with a generated certificate. The demo shows which server each
//! client lands on and that it stays there, a redirect followed to HTTPS, a
//! drain of one server and the failure of another, and what happens to the
//! clients. It ends by itself after `--duration` seconds (and the rounds
//! that show the failed server's clients moving), or on Ctrl-C, and always
//! removes the lab. Its last lines include one a test can parse:
//! `moved: failed-server clients M/N, others K/L`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_tests::{
    lab::{run_in, DrLab, DrLabOptions},
    lbd::{lab_config, Lbd},
    wait::{try_wait_until, SLACK},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

const HYPERSPACE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const MYCHART: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);
const HYPERSPACE_WEB: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 102);
/// Hyperspace clients shown (and sending); MyChart clients.
const CLINICIANS: usize = 6;
const PATIENTS: usize = 3;
/// The demo's health checks: quicker than the example's.
const HC_INTERVAL_MS: u64 = 500;
const HC_TIMEOUT_MS: u64 = 400;
const HC_RISE: u64 = 2;
const HC_FALL: u64 = 2;
/// Rounds shown after lbd has taken the failed server out, so that its
/// clients are seen to move (the demo runs past `--duration` for them).
const ROUNDS_AFTER_FAILURE: u32 = 2;

/// The lab's console viewer: user name and password.
const VIEWER: (&str, &str) = ("viewer", "lab-viewer-1");

/// The web console: a viewer added with `lbctl user add`, signed in from
/// the client's network, and its address and login printed.
fn console_step(lab: &DrLab, lbd: &Lbd) -> Result<(), String> {
    use lb_tests::console::{add_user, request, sign_in, PORT};
    step("the web console: a viewer added with `lbctl user add`, signed in over HTTPS");
    add_user(lbd, VIEWER.0, "viewer", VIEWER.1).map_err(|e| e.to_string())?;
    let session = sign_in(lab, VIEWER.0, VIEWER.1)
        .session_cookie()
        .ok_or("the viewer could not sign in to the console")?;
    let overview = request(lab, "GET", "/api/overview", Some(&session), &[], None).json();
    let problems = overview["problems"].as_array().map_or(0, Vec::len);
    let services = overview["status"]["services"]
        .as_array()
        .map_or(0, Vec::len);
    println!(
        "console: signed in as {} ({}): {services} services, {problems} problems",
        overview["user"].as_str().unwrap_or("?"),
        overview["role"].as_str().unwrap_or("?")
    );
    println!(
        "console: https://{}:{PORT}/ (self-signed; its fingerprint is in lbd's log), user {} password {}",
        lab.lb_address(),
        VIEWER.0,
        VIEWER.1
    );
    println!(
        "  from the clients' network: ip netns exec {} chromium --ignore-certificate-errors https://{}:{PORT}/",
        lab.client_ns(),
        lab.lb_address()
    );
    Ok(())
}

fn main() -> ExitCode {
    let duration = std::env::args()
        .skip_while(|a| a != "--duration")
        .nth(1)
        .and_then(|d| d.parse().ok())
        .unwrap_or(20_u64)
        .max(6);
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    match demo(Duration::from_secs(duration)) {
        Ok(()) => {
            println!("\ndemo finished: lab removed, nothing left behind");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("demo failed: {message}");
            ExitCode::FAILURE
        }
    }
}

fn step(text: &str) {
    println!("\n== {text}");
}

/// `examples/epic.yaml` with the lab's node section, the MyChart servers at
/// the lab's addresses, and quicker health checks.
fn epic_config(lab: &DrLab) -> Result<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/epic.yaml");
    let example = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let services = example
        .split_once("\nservices:\n")
        .map(|(_, s)| s)
        .ok_or("the example has no services section")?;
    let services = services
        .replace("198.18.0.31", &lab.real_address(3).to_string())
        .replace("198.18.0.32", &lab.real_address(4).to_string())
        .replace(
            "tls_verify: false",
            &format!(
                "tls_verify: false\n      interval_ms: {HC_INTERVAL_MS}\n      timeout_ms: {HC_TIMEOUT_MS}\n      \
                 rise: {HC_RISE}\n      fall: {HC_FALL}"
            ),
        )
        .replace("{ name: hs1,", &format!("{{ name: {},", lab.real_name(0)))
        .replace("{ name: hs2,", &format!("{{ name: {},", lab.real_name(1)))
        .replace("{ name: hs3,", &format!("{{ name: {},", lab.real_name(2)))
        .replace("{ name: mc1,", &format!("{{ name: {},", lab.real_name(3)))
        .replace("{ name: mc2,", &format!("{{ name: {},", lab.real_name(4)))
        .replace("198.19.8.21", &lab.real_address(5).to_string())
        .replace("198.19.8.22", &lab.real_address(6).to_string())
        .replace("{ name: hsw1,", &format!("{{ name: {},", lab.real_name(5)))
        .replace("{ name: hsw2,", &format!("{{ name: {},", lab.real_name(6)))
        .replace("port: 8443", "port: 443");
    let config = lb_tests::console::with_console(lab, &lab_config(lab, &services), 900);
    Ok(config.replace(
        "  metrics_listen:",
        "  server_interfaces: [eth1]\n  metrics_listen:",
    ))
}

/// One HTTPS request through a VIP from `source`; the answering server's name.
fn https(lab: &DrLab, source: Ipv4Addr, host: &str, vip: Ipv4Addr) -> String {
    let (cert, _) = lab.certificate();
    let resolve = format!("{host}:443:{vip}");
    let url = format!("https://{host}/");
    let out = run_in(
        lab.client_ns(),
        &[
            "curl",
            "-sS",
            "--max-time",
            "2",
            "--cacert",
            &cert.display().to_string(),
            "--interface",
            &source.to_string(),
            "--resolve",
            &resolve,
            &url,
        ],
    );
    out.map_or_else(|_| "--".to_owned(), |body| body.trim().to_owned())
}

/// The sources as right-aligned `.N` columns.
fn columns(sources: &[Ipv4Addr]) -> String {
    sources.iter().fold(String::new(), |mut out, s| {
        let _ = write!(out, "{:>7}", format!(".{}", s.octets()[3]));
        out
    })
}

/// The health `lbctl status` reports for `server` of `service`.
fn health_of(lbd: &Lbd, service: &str, server: &str) -> Result<String, String> {
    let status = lbd
        .status()
        .ok_or_else(|| "`lbctl status` does not answer".to_owned())?;
    status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == service)
        .flat_map(|s| s["real_servers"].as_array().into_iter().flatten())
        .find(|r| r["name"] == server)
        .and_then(|r| r["health"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("no health of {service}/{server} in {status}"))
}

/// Stops the web server of the Hyperspace server (not the drained first one)
/// with the most clinicians, and waits until lbd's health check takes it
/// out; returns its name.
fn fail_a_server(
    lab: &mut DrLab,
    lbd: &Lbd,
    home: &BTreeMap<Ipv4Addr, String>,
) -> Result<String, String> {
    let clients_of = |name: &str| home.values().filter(|s| *s == name).count();
    let victim = (1..=2)
        .max_by_key(|&i| (clients_of(&lab.real_name(i)), std::cmp::Reverse(i)))
        .unwrap_or(1);
    let name = lab.real_name(victim);
    step(&format!(
        "failure: {name}'s web server stops; the health check takes it out and its clinicians move"
    ));
    let started = Instant::now();
    lab.stop_http(victim);
    // `fall` failed checks, each at most an interval and a timeout apart,
    // after the check under way.
    let bound =
        Duration::from_millis(HC_INTERVAL_MS + HC_FALL * (HC_INTERVAL_MS + HC_TIMEOUT_MS)) + SLACK;
    try_wait_until(&format!("lbd to take {name} down"), bound, || {
        let health = health_of(lbd, "hyperspace", &name)?;
        if health == "down" {
            Ok(())
        } else {
            Err(format!("{name} is {health}"))
        }
    })
    .map_err(|e| e.to_string())?;
    println!(
        "health check: {name} down {:.1?} after its web server stopped",
        started.elapsed()
    );
    Ok(name)
}

/// The SNAT service: clients reach servers on another subnet that need no
/// change; lbd tracks each connection. Prints a line a test can parse:
/// `snat: answered N/M`.
fn snat_step(lab: &DrLab, lbd: &Lbd) {
    step(&format!(
        "Hyperspace web on Windows servers in {} (SNAT from 198.18.0.110: the servers are unchanged)",
        lab.real_address(5)
    ));
    let sources = &lab.client_sources()[CLINICIANS + PATIENTS..CLINICIANS + PATIENTS + 4];
    let answers: Vec<String> = sources
        .iter()
        .map(|s| https(lab, *s, "hyperspace.example.org", HYPERSPACE_WEB))
        .collect();
    for (source, server) in sources.iter().zip(&answers) {
        println!(".{} -> {server}", source.octets()[3]);
    }
    let answered = answers.iter().filter(|a| *a != "--").count();
    println!("snat: answered {answered}/{}", answers.len());
    println!("lbctl connections hyperspace-web (the connections lbd tracks, each on its server):");
    lbctl_print(lbd, &["connections", "hyperspace-web"]);
}

fn lbctl_print(lbd: &Lbd, args: &[&str]) {
    let out = lbd.lbctl(args);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}

#[expect(clippy::too_many_lines, reason = "a script, read top to bottom")]
fn demo(duration: Duration) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the demo creates network namespaces: run it as root".into());
    }
    let started = Instant::now();
    step("building the lab: clients, the load balancer, Hyperspace rs1-rs3 and MyChart rs4-rs5 (real TLS), \
          and rs6-rs7 as Windows web servers on a subnet of their own (no VIP, default ARP)");
    let mut lab = DrLab::start(DrLabOptions {
        real_servers: 7,
        server_lan_servers: 2,
        client_sources: 32,
        vip: HYPERSPACE,
        tls_port: Some(443),
        tls_names: vec![
            "hyperspace.example.org".into(),
            "mychart.example.org".into(),
        ],
        extra_vips: vec![MYCHART],
        ..DrLabOptions::default()
    })
    .map_err(|e| e.to_string())?;
    println!("lab {} (namespaces {}-*)", lab.tag(), lab.tag());
    println!("Hyperspace VIP {HYPERSPACE}, MyChart VIP {MYCHART}; certificate for both names generated for the lab");

    step("starting lbd with examples/epic.yaml adapted to the lab");
    let config = epic_config(&lab)?;
    let lbd = Lbd::start(&mut lab, &config).map_err(|e| e.to_string())?;
    lbd.wait_ready(&mut lab, Duration::from_secs(20))
        .map_err(|e| e.to_string())?;
    lbctl_print(&lbd, &["status"]);

    step("a clinician types http://hyperspace.example.org/chart?id=42: lbd redirects to HTTPS");
    let out = run_in(
        lab.client_ns(),
        &["sh", "-c", &format!(
            "curl -sS -o /dev/null -D - --max-time 3 --resolve hyperspace.example.org:80:{HYPERSPACE} 'http://hyperspace.example.org/chart?id=42' | head -n 3"
        )],
    )
    .map_err(|e| e.to_string())?;
    print!("{out}");
    let (cert, _) = lab.certificate();
    let followed = run_in(
        lab.client_ns(),
        &[
            "curl",
            "-sS",
            "-L",
            "--max-time",
            "3",
            "--cacert",
            &cert.display().to_string(),
            "--resolve",
            &format!("hyperspace.example.org:80:{HYPERSPACE}"),
            "--resolve",
            &format!("hyperspace.example.org:443:{HYPERSPACE}"),
            "http://hyperspace.example.org/chart?id=42",
        ],
    )
    .map_err(|e| e.to_string())?;
    println!(
        "curl -L follows it: TLS handshake with the real server's certificate, answered by {}",
        followed.trim()
    );

    snat_step(&lab, &lbd);
    console_step(&lab, &lbd)?;

    let clinicians: Vec<Ipv4Addr> = lab.client_sources()[..CLINICIANS].to_vec();
    let patients: Vec<Ipv4Addr> = lab.client_sources()[CLINICIANS..CLINICIANS + PATIENTS].to_vec();
    step("clinicians (Hyperspace) and patients (MyChart) working: client -> server, every 1.5 s");
    println!(
        "         {}   | {}",
        columns(&clinicians),
        columns(&patients),
    );
    let mut home: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut moves: Vec<String> = Vec::new();
    let mut moved: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let (drain_at, fail_at) = (duration / 3, duration * 2 / 3);
    let mut drained = false;
    // The failed server and where every client was when it failed.
    let mut failed: Option<(String, BTreeMap<Ipv4Addr, String>)> = None;
    let mut rounds_after_failure = 0;
    let mut round = 0;
    while !STOP.load(Ordering::SeqCst)
        && (started.elapsed() < duration || rounds_after_failure < ROUNDS_AFTER_FAILURE)
    {
        if !drained && started.elapsed() >= drain_at {
            drained = true;
            step("maintenance: lbctl drain hyperspace rs1 (no new clinicians; its clinicians stay until they log off)");
            lbctl_print(&lbd, &["drain", "hyperspace", "rs1"]);
            print!("a clinician never seen before would go to: ");
            lbctl_print(&lbd, &["affinity", "hyperspace", "198.18.2.250"]);
        }
        if failed.is_some() {
            rounds_after_failure += 1;
        } else if started.elapsed() >= fail_at {
            let victim = fail_a_server(&mut lab, &lbd, &home)?;
            failed = Some((victim, home.clone()));
        }
        round += 1;
        let mut row = Vec::new();
        for (source, host, vip) in clinicians
            .iter()
            .map(|s| (*s, "hyperspace.example.org", HYPERSPACE))
            .chain(
                patients
                    .iter()
                    .map(|s| (*s, "mychart.example.org", MYCHART)),
            )
        {
            let server = https(&lab, source, host, vip);
            if server != "--" {
                let previous = home.insert(source, server.clone());
                if let Some(previous) = previous.filter(|p| *p != server) {
                    moves.push(format!(".{}: {previous} -> {server}", source.octets()[3]));
                    moved.insert(source);
                }
            }
            row.push(format!("{server:>7}"));
        }
        let (h, m) = row.split_at(CLINICIANS);
        println!("round {round:>2} {}   | {}", h.concat(), m.concat());
        std::thread::sleep(Duration::from_millis(1500));
    }

    step("lbctl status at the end");
    lbctl_print(&lbd, &["status"]);
    if moves.is_empty() {
        println!("no client changed server");
    } else {
        println!("clients that changed server: {}", moves.join(", "));
    }
    let mut wrong = Vec::new();
    if let Some((victim, at_failure)) = &failed {
        let victims: BTreeSet<Ipv4Addr> = at_failure
            .iter()
            .filter(|(_, server)| *server == victim)
            .map(|(source, _)| *source)
            .collect();
        let victims_moved = victims
            .iter()
            .filter(|source| home.get(*source).is_some_and(|now| now != victim))
            .count();
        let others: Vec<Ipv4Addr> = home
            .keys()
            .filter(|source| !victims.contains(*source))
            .copied()
            .collect();
        wrong = others
            .iter()
            .filter(|source| moved.contains(*source))
            .map(|source| format!(".{}", source.octets()[3]))
            .collect();
        println!(
            "moved: failed-server clients {victims_moved}/{}, others {}/{}",
            victims.len(),
            wrong.len(),
            others.len()
        );
    }

    step("stopping lbd and removing the lab");
    let mut lbd = lbd;
    lbd.stop(&mut lab).map_err(|e| e.to_string())?;
    drop(lab);
    if !wrong.is_empty() {
        return Err(format!(
            "clients moved although their server was fine: {wrong:?}"
        ));
    }
    Ok(())
}
