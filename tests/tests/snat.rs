//! Issue 14: NAT and SNAT to real servers on a subnet of their own, behind
//! the load balancer's second interface (`eth1`, `node.server_interfaces`),
//! with no VIP and default ARP settings: servers that need no change.
//!
//! Needs root. Every lab has its own names and is torn down when dropped.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    time::Duration,
};

use lb_tests::{
    lab::{in_netns, run_in, DrLab, DrLabOptions, LB_SERVER_ADDR},
    lbd::{lab_config, lab_config_named, lbctl_ok, write_key, ClusterSpec, Lbd},
    paths,
    wait::wait_until,
};

const READY: Duration = Duration::from_secs(20);
/// Client sources of the spread test.
const SOURCES: usize = 300;
/// The shortest persistence timeout: the long-lived connection outlives it.
const TIMEOUT_S: u64 = 10;
/// The NAT service's port (its servers listen on the lab's HTTP port).
const NAT_PORT: u16 = 8080;

fn lab() -> DrLab {
    paths::require_root("namespace tests");
    paths::require_lbd();
    DrLab::start(DrLabOptions {
        real_servers: 3,
        client_sources: SOURCES,
        server_lan: true,
        ..DrLabOptions::default()
    })
    .unwrap_or_else(|e| panic!("lab: {e}"))
}

/// The lab with lbd serving [`config`], ready.
fn lab_with_lbd() -> (DrLab, Lbd) {
    let mut lab = lab();
    let yaml = config(&lab);
    let lbd = Lbd::start(&mut lab, &yaml).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    (lab, lbd)
}

/// A SNAT service on the lab's HTTP port (SNAT address: the address of
/// `eth1`, found by lbd) and a NAT service on [`NAT_PORT`].
fn config(lab: &DrLab) -> String {
    let reals: String = (0..3)
        .map(|i| {
            format!(
                "      - {{ name: {}, address: {}, port: {} }}\n",
                lab.real_name(i),
                lab.real_address(i),
                lab.http_port()
            )
        })
        .collect();
    let (vip, port) = (lab.vip(), lab.http_port());
    let check = "health_check: { type: tcp, interval_ms: 500, timeout_ms: 250 }";
    let web = format!(
        "  - name: web\n    vip: {vip}\n    port: {port}\n    forwarding: snat\n    \
         persistence: {{ timeout_s: {TIMEOUT_S} }}\n    {check}\n    real_servers:\n{reals}"
    );
    let app = format!(
        "  - name: app\n    vip: {vip}\n    port: {NAT_PORT}\n    forwarding: nat\n    \
         health_check: {{ type: tcp, port: {port}, interval_ms: 500, timeout_ms: 250 }}\n    \
         real_servers:\n{reals}"
    );
    let services = web + &app;
    lab_config(lab, &services).replace(
        "  metrics_listen:",
        "  server_interfaces: [eth1]\n  metrics_listen:",
    )
}

/// Issue 14: a reload that brings the first SNAT service turns routing on
/// for it (IPv4 forwarding, which the data path's routing lookups need),
/// as a start with it does.
#[test]
fn a_reload_that_adds_the_first_snat_service_serves_it() {
    let mut lab = lab();
    let full = config(&lab);
    let empty = format!(
        "{}services: []\n",
        &full[..full.find("services:").unwrap_or(0)]
    );
    let lbd = Lbd::start(&mut lab, &empty).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&lbd.config, &full).unwrap_or_else(|e| panic!("{e}"));
    lbd.signal(&lab, libc::SIGHUP)
        .unwrap_or_else(|e| panic!("{e}"));
    let () = wait_until("the reload", READY, || {
        if lbd.log_text().contains("SIGHUP: configuration reloaded") {
            Ok(())
        } else {
            Err(lbd.log_text())
        }
    });
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    let sources: Vec<Ipv4Addr> = lab.client_sources()[..16].to_vec();
    all_answered(&lab, &lbd, &sources, 1);
}

/// `rounds` of requests from `sources`, every one answered (else the
/// failure, lbd's log and its data-path counters).
fn all_answered(
    lab: &DrLab,
    lbd: &Lbd,
    sources: &[Ipv4Addr],
    rounds: usize,
) -> lb_tests::lab::ClientReport {
    let report = lab
        .run_clients_with(
            sources,
            rounds,
            Duration::from_secs(60),
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", lbd.log_text()));
    assert!(
        report.failures().is_empty(),
        "{}\n{}\ndata path: {}",
        report.summary(),
        lbd.log_text(),
        lbd.status().unwrap_or_default()["dataplane"]
    );
    report
}

/// One HTTP/1.1 request on `stream`: the body.
fn get(stream: &mut TcpStream, path: &str) -> Result<String, String> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: lab\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let mut buffer = [0_u8; 512];
    loop {
        let n = stream.read(&mut buffer).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed: {}", String::from_utf8_lossy(&answer)));
        }
        answer.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|l| l.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(body.trim().to_owned());
            }
        }
    }
}

/// A connection from `source` to `to`, kept open.
fn connect(source: Ipv4Addr, to: SocketAddrV4) -> Result<TcpStream, String> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .map_err(|e| e.to_string())?;
    socket
        .connect_timeout(&SocketAddr::from(to).into(), Duration::from_secs(3))
        .map_err(|e| format!("connecting from {source} to {to}: {e}"))?;
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

#[test]
fn snat_to_servers_on_another_subnet_is_sticky_and_spread() {
    let (lab, lbd) = lab_with_lbd();
    let sources: Vec<Ipv4Addr> = lab.client_sources().to_vec();
    let report = all_answered(&lab, &lbd, &sources, 2);
    assert_eq!(
        report.sticky_sources().len(),
        SOURCES,
        "{}",
        report.summary()
    );
    let shares = report.share_by_server();
    assert_eq!(shares.len(), 3, "every server has clients: {shares:?}");
    for (server, n) in &shares {
        let share = *n as f64 / SOURCES as f64;
        assert!(
            (0.20..=0.47).contains(&share),
            "{server} has {share:.2} of the clients: {shares:?}"
        );
    }
    let status = lbd.status().unwrap_or_default();
    assert!(
        status["dataplane"]["nat_conn_new"].as_u64().unwrap_or(0) >= SOURCES as u64,
        "connections tracked: {}",
        status["dataplane"]
    );
}

#[test]
fn a_long_lived_connection_keeps_its_server_and_nat_keeps_the_clients_address() {
    let (lab, lbd) = lab_with_lbd();
    let source = lab.client_sources()[7];
    let web = SocketAddrV4::new(lab.vip(), lab.http_port());
    let app = SocketAddrV4::new(lab.vip(), NAT_PORT);
    let client_ns = lab.client_ns().to_owned();

    // SNAT: the server sees the load balancer's address; NAT: the client's.
    let (web_peer, app_peer, mut stream) = in_netns(&client_ns, move || {
        let mut web_stream = connect(source, web)?;
        let web_peer = get(&mut web_stream, "/peer")?;
        let mut app_stream = connect(source, app)?;
        let app_peer = get(&mut app_stream, "/peer")?;
        Ok::<_, String>((web_peer, app_peer, web_stream))
    })
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("{e}\n{}", lbd.log_text()));
    let (server, seen) = web_peer
        .split_once(' ')
        .unwrap_or_else(|| panic!("answer {web_peer:?}"));
    assert_eq!(
        seen,
        LB_SERVER_ADDR.to_string(),
        "SNAT: the server sees {seen}"
    );
    assert!(
        app_peer.ends_with(&format!(" {source}")),
        "NAT: the server sees the client's address: {app_peer:?}"
    );
    let connections = lbctl_ok(&lbd, &["connections", "web", "--json"]);
    let listed = String::from_utf8_lossy(&connections.stdout).into_owned();
    assert!(
        listed.contains(&format!("\"{source}:")) && listed.contains(server),
        "lbctl connections lists it: {listed}"
    );

    // The handshake showed the client is real: remembered on its server,
    // which keeps it when drained, as with direct routing.
    lbctl_ok(&lbd, &["drain", "web", server]);
    let next = new_connection(&client_ns, source, web);
    assert_eq!(
        next, server,
        "the client's next connection keeps its drained server"
    );

    // Idle past the persistence timeout (the data path forgets a client
    // 3.5 s after it, at the latest): a new connection from the client is
    // a new client's, and avoids the drained server; its open connection
    // stays on its server.
    std::thread::sleep(Duration::from_secs(TIMEOUT_S + 5));
    let fresh = new_connection(&client_ns, source, web);
    assert_ne!(fresh, server, "a new connection avoids the drained server");
    let again = in_netns(&client_ns, move || {
        let answer = get(&mut stream, "/");
        (answer, stream)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        again.0.as_deref(),
        Ok(server),
        "the connection kept its drained server past the timeout\n{}",
        lbd.log_text()
    );
    // The open connection is counted on its server (every 5 s).
    let status = lbd.status().unwrap_or_default();
    let counted = status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == "web")
        .flat_map(|s| s["real_servers"].as_array().cloned().unwrap_or_default())
        .find(|r| r["name"] == server)
        .and_then(|r| r["active_connections"].as_u64());
    assert!(
        counted.is_some_and(|n| n >= 1),
        "lbctl status counts the connection on {server}: {counted:?}"
    );
}

/// One request on a new connection from `source` to `to`: the server's name.
fn new_connection(client_ns: &str, source: Ipv4Addr, to: SocketAddrV4) -> String {
    in_netns(client_ns, move || {
        let mut s = connect(source, to)?;
        get(&mut s, "/")
    })
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The pair's floating SNAT address: a free address of the lab's LAN.
const FLOATING_SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);
/// The pair's sync key.
const KEY: &[u8] = b"lab-cluster-key-0123456789abcdef-0123456789abcdef\n";

/// The pair's SNAT service: the lab's servers on the LAN (the same
/// segment as both load balancers) answer [`FLOATING_SNAT`].
fn pair_service(lab: &DrLab) -> String {
    let reals: String = (0..3)
        .map(|i| {
            format!(
                "      - {{ name: {}, address: {} }}\n",
                lab.real_name(i),
                lab.real_address(i)
            )
        })
        .collect();
    format!(
        "  - name: web\n    vip: {}\n    port: {}\n    forwarding: snat\n    snat_address: {FLOATING_SNAT}\n    \
         health_check: {{ type: tcp, interval_ms: 500, timeout_ms: 250 }}\n    real_servers:\n{reals}",
        lab.vip(),
        lab.http_port()
    )
}

/// Issue 14, in a pair: the master's tracked connections reach the backup
/// and the SNAT address floats with the VIP, so when the master dies
/// (`kill -9` of lbd and its link down) an open connection goes on through
/// the backup, and every client keeps its server.
#[test]
fn a_snat_connection_survives_the_masters_death() {
    paths::require_root("namespace tests");
    paths::require_lbd();
    let mut lab = DrLab::start(DrLabOptions {
        real_servers: 3,
        client_sources: 64,
        second_lb: true,
        ..DrLabOptions::default()
    })
    .unwrap_or_else(|e| panic!("lab: {e}"));
    let key1 = write_key(&lab, "lb1.key", KEY).unwrap_or_else(|e| panic!("{e}"));
    let key2 = write_key(&lab, "lb2.key", KEY).unwrap_or_else(|e| panic!("{e}"));
    let service = pair_service(&lab);
    let lb1_config = lab_config_named(
        &lab,
        "lb1",
        &ClusterSpec::primary(&lab, Some(&key1)).yaml(),
        &service,
    );
    let lb2_config = lab_config_named(
        &lab,
        "lb2",
        &ClusterSpec::secondary(&lab, Some(&key2)).yaml(),
        &service,
    );
    let (ns1, ns2) = (lab.lb_ns().to_owned(), lab.lb2_ns().to_owned());
    let mut lb1 =
        Lbd::start_named(&mut lab, &ns1, "lb1", &lb1_config).unwrap_or_else(|e| panic!("{e}"));
    lb1.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    lb1.wait_ha(&mut lab, READY, "lb1 master", |v| v["state"] == "master")
        .unwrap_or_else(|e| panic!("{e}"));
    let lb2 =
        Lbd::start_named(&mut lab, &ns2, "lb2", &lb2_config).unwrap_or_else(|e| panic!("{e}"));
    lb2.wait_ha(&mut lab, READY, "lb2 backup and synced", |v| {
        v["state"] == "backup" && v["sync"]["connected"] == true
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // Clients placed, and one connection kept open.
    let sources: Vec<Ipv4Addr> = lab.client_sources()[..32].to_vec();
    let report = all_answered(&lab, &lb1, &sources, 2);
    let before = report.first_servers();
    let source = lab.client_sources()[40];
    let web = SocketAddrV4::new(lab.vip(), lab.http_port());
    let client_ns = lab.client_ns().to_owned();
    let (peer, mut stream) = in_netns(&client_ns, move || {
        let mut stream = connect(source, web)?;
        let peer = get(&mut stream, "/peer")?;
        Ok::<_, String>((peer, stream))
    })
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("{e}\n{}", lb1.log_text()));
    let (server, seen) = peer
        .split_once(' ')
        .unwrap_or_else(|| panic!("answer {peer:?}"));
    assert_eq!(
        seen,
        FLOATING_SNAT.to_string(),
        "the servers see the floating SNAT address"
    );
    let server = server.to_owned();

    // The backup has the connection (the master streams its table).
    let listed = wait_until(
        "the connection at the backup",
        Duration::from_secs(10),
        || {
            let out = lbctl_ok(&lb2, &["connections", "web", "--json"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains(&format!("\"{source}:")) {
                Ok(text)
            } else {
                Err(text)
            }
        },
    );
    assert!(
        listed.contains(&server),
        "on its server at the backup: {listed}"
    );

    // The master dies: lbd killed, its link down.
    lb1.crash(&mut lab).unwrap_or_else(|e| panic!("{e}"));
    run_in(&ns1, &["ip", "link", "set", lab.lb_interface(), "down"])
        .unwrap_or_else(|e| panic!("{e}"));
    lb2.wait_ha(&mut lab, READY, "lb2 master", |v| v["state"] == "master")
        .unwrap_or_else(|e| panic!("{e}"));

    let again =
        in_netns(&client_ns, move || get(&mut stream, "/")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        again.as_deref(),
        Ok(server.as_str()),
        "the open connection goes on, on its server, through the new master\n{}",
        lb2.log_text()
    );
    let after = all_answered(&lab, &lb2, &sources, 1).first_servers();
    let moved: Vec<String> = before
        .iter()
        .filter(|(s, srv)| after.get(*s) != Some(*srv))
        .map(|(s, srv)| format!("{s}: {srv} -> {:?}", after.get(s)))
        .collect();
    assert!(moved.is_empty(), "clients moved at the failover: {moved:?}");
}
