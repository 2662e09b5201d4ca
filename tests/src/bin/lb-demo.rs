//! `cargo xtask demo`: the load balancer in a network-namespace lab, shown live.
//!
//! Builds a lab (clients, the load balancer running `lbd`, three real servers
//! answering HTTP with their names), then shows which server each client
//! lands on and that it stays there, what `lbctl status` reports, and what a
//! drain does. Ends by itself after `--duration` seconds or on Ctrl-C, and
//! leaves nothing behind.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_tests::{
    lab::{ClientReport, DrLab, DrLabOptions},
    lbd::{lab_config, web_service, Lbd},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Clients shown on screen (the lab has more; all of them send).
const SHOWN: usize = 8;

fn main() -> ExitCode {
    let duration = std::env::args()
        .skip_while(|a| a != "--duration")
        .nth(1)
        .and_then(|d| d.parse().ok())
        .unwrap_or(20_u64);
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

fn show_round(report: &ClientReport, sources: &[Ipv4Addr]) -> String {
    sources
        .iter()
        .map(|s| {
            let server = report
                .servers_of(*s)
                .first()
                .cloned()
                .flatten()
                .unwrap_or_else(|| "--".into());
            format!("{:>3}->{server}", s.octets()[3])
        })
        .collect::<Vec<_>>()
        .join("  ")
}

fn demo(duration: Duration) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the demo creates network namespaces: run it as root".into());
    }
    let started = Instant::now();
    step("building the lab: a switch, a client with 256 addresses, the load balancer, 3 real servers");
    let mut lab = DrLab::start(DrLabOptions::default()).map_err(|e| e.to_string())?;
    println!(
        "VIP {}:{}  load balancer {} ({})  real servers {}",
        lab.vip(),
        lab.http_port(),
        lab.lb_address(),
        lab.lb_ns(),
        (0..3)
            .map(|i| format!("{}={}", lab.real_name(i), lab.real_address(i)))
            .collect::<Vec<_>>()
            .join(" ")
    );

    step("starting lbd (XDP direct routing, source-IP persistence 300 s)");
    let config = lab_config(&lab, &web_service(&lab, 3, 300));
    let lbd = Lbd::start(&mut lab, &config).map_err(|e| e.to_string())?;
    lbd.wait_ready(&mut lab, Duration::from_secs(20))
        .map_err(|e| e.to_string())?;
    print!(
        "{}",
        String::from_utf8_lossy(&lbd.lbctl(&["status"]).stdout)
    );

    let shown: Vec<Ipv4Addr> = lab.client_sources()[..SHOWN].to_vec();
    step(&format!("every client asks the VIP for a page, round after round (shown: {SHOWN} of 256; client -> server)"));
    let mut first: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut moved = 0;
    let mut rounds = 0;
    let drain_at = duration / 2;
    let mut drained = false;
    while started.elapsed() < duration && !STOP.load(Ordering::SeqCst) {
        if !drained && started.elapsed() >= drain_at {
            drained = true;
            step("lbctl drain web rs1: rs1 takes no new clients; its clients stay until their persistence expires");
            let out = lbd.lbctl(&["drain", "web", "rs1"]);
            print!("{}", String::from_utf8_lossy(&out.stdout));
            let new_client: Ipv4Addr = "198.18.2.200".parse().map_err(|_| "address")?;
            let out = lbd.lbctl(&["affinity", "web", &new_client.to_string()]);
            print!(
                "a client never seen before: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let report = lab
            .run_clients(1, Duration::from_secs(20))
            .map_err(|e| e.to_string())?;
        rounds += 1;
        for source in report.sources() {
            if let Some(Some(server)) = report.servers_of(source).first() {
                if first.entry(source).or_insert_with(|| server.clone()) != server {
                    moved += 1;
                }
            }
        }
        println!(
            "round {rounds:>2}  {}   ({} of 256 answered)",
            show_round(&report, &shown),
            report.answered()
        );
        std::thread::sleep(Duration::from_millis(1500));
    }

    step("lbctl status after the rounds");
    print!(
        "{}",
        String::from_utf8_lossy(&lbd.lbctl(&["status"]).stdout)
    );
    let mut per_server: BTreeMap<&str, usize> = BTreeMap::new();
    for server in first.values() {
        *per_server.entry(server.as_str()).or_default() += 1;
    }
    println!("clients per server: {per_server:?}");
    println!("clients that changed server during the demo: {moved} (persistence keeps them put)");

    step("stopping lbd and removing the lab");
    let mut lbd = lbd;
    lbd.stop(&mut lab).map_err(|e| e.to_string())?;
    drop(lab);
    if moved > 0 {
        return Err(format!("{moved} clients changed server"));
    }
    Ok(())
}
