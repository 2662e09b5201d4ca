//! The Epic deployment end to end: Hyperspace and MyChart, each with HTTPS
//! passed through to real servers that speak real TLS, and each with its
//! HTTP-to-HTTPS redirect answered by lbd. Needs root.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use lb_tests::{
    lab::{run_in, DrLab, DrLabOptions},
    lbd::{lab_config, Lbd},
    paths,
    wait::{wait_until, SLACK},
};

const HYPERSPACE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const MYCHART: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);
/// Client sources of the lab: enough for the spread over Hyperspace's two
/// servers to mean something.
const SOURCES: usize = 300;
/// The share of the sources each of Hyperspace's two servers must get: the
/// Maglev ring splits new clients evenly by weight (equal here), and 300
/// sources put 35 % five standard deviations below an even split.
const SHARE: std::ops::RangeInclusive<f64> = 0.35..=0.65;

/// The Epic example adapted to the lab: rs1 and rs2 serve Hyperspace, rs3 MyChart.
fn services(lab: &DrLab) -> String {
    let hc = "    health_check: { type: https, port: 443, host: NAME, tls_verify: false, interval_ms: 500, timeout_ms: 400, rise: 1, fall: 2 }\n";
    format!(
        "  - name: hyperspace\n    vip: {HYPERSPACE}\n    port: 443\n    persistence: {{ timeout_s: 28800 }}\n{}    real_servers:\n      - {{ name: rs1, address: {} }}\n      - {{ name: rs2, address: {} }}\n\
         \x20 - name: hyperspace-redirect\n    vip: {HYPERSPACE}\n    port: 80\n    redirect: {{ code: 301, scheme: https }}\n\
         \x20 - name: mychart\n    vip: {MYCHART}\n    port: 443\n{}    real_servers:\n      - {{ name: rs3, address: {} }}\n\
         \x20 - name: mychart-redirect\n    vip: {MYCHART}\n    port: 80\n    redirect: {{ code: 302, scheme: https }}\n",
        hc.replace("NAME", "hyperspace.example.org"),
        lab.real_address(0),
        lab.real_address(1),
        hc.replace("NAME", "mychart.example.org"),
        lab.real_address(2),
    )
}

fn epic_lab() -> (DrLab, Lbd) {
    paths::require_root("namespace tests");
    paths::require_lbd();
    let mut lab = DrLab::start(DrLabOptions {
        real_servers: 3,
        client_sources: SOURCES,
        vip: HYPERSPACE,
        tls_port: Some(443),
        tls_names: vec![
            "hyperspace.example.org".into(),
            "mychart.example.org".into(),
        ],
        extra_vips: vec![MYCHART],
        ..DrLabOptions::default()
    })
    .unwrap_or_else(|e| panic!("lab: {e}"));
    let config = lab_config(&lab, &services(&lab));
    let lbd = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(&mut lab, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    (lab, lbd)
}

/// curl in the client namespace; returns stdout+stderr (with -v, headers).
fn curl(lab: &DrLab, args: &[&str]) -> String {
    let mut cmd = vec!["curl", "-sS", "--max-time", "5"];
    cmd.extend_from_slice(args);
    match run_in(lab.client_ns(), &cmd) {
        Ok(out) => out,
        Err(e) => panic!("curl {args:?}: {e}"),
    }
}

fn curl_verbose(lab: &DrLab, args: &[&str]) -> String {
    let mut cmd = vec!["sh", "-c"];
    let line = format!("curl -sS -v --max-time 5 {} 2>&1", args.join(" "));
    cmd.push(&line);
    run_in(lab.client_ns(), &cmd).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// Sends raw bytes to VIP:80 from the client and returns what comes back.
fn raw_http(lab: &DrLab, vip: Ipv4Addr, request: &str) -> String {
    let script = format!(
        "import socket,sys\ns=socket.create_connection(('{vip}',80),timeout=5)\ns.sendall({request:?}.encode())\n\
         data=b''\ntry:\n    while b'\\r\\n\\r\\n' not in data:\n        chunk=s.recv(4096)\n        if not chunk: break\n        data+=chunk\n\
         except Exception as e:\n    print('ERROR',e)\nsys.stdout.write(data.decode('latin-1'))\n"
    );
    run_in(lab.client_ns(), &["python3", "-c", &script]).unwrap_or_else(|e| panic!("{e}"))
}

/// One HTTPS request (unverified: the spread is the point here) from each
/// of `sources` to `vip`:443 with SNI `host`, 16 at a time; the first body
/// line (the answering server) or the error, by source.
fn https_from_each(
    lab: &DrLab,
    vip: Ipv4Addr,
    host: &str,
    sources: &[Ipv4Addr],
) -> BTreeMap<Ipv4Addr, String> {
    const SCRIPT: &str = r#"
import json, socket, ssl, sys
from concurrent.futures import ThreadPoolExecutor
vip, host, sources = sys.argv[1], sys.argv[2], sys.argv[3:]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
def ask(source):
    try:
        with socket.create_connection((vip, 443), timeout=5, source_address=(source, 0)) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(b"GET / HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
                data = b""
                while True:
                    try:
                        chunk = tls.recv(4096)
                    except (ssl.SSLError, ConnectionError):
                        break
                    if not chunk:
                        break
                    data += chunk
        body = data.partition(b"\r\n\r\n")[2].decode("utf-8", "replace").strip()
        return source, body.splitlines()[0] if body else "error: empty body"
    except Exception as e:
        return source, f"error: {type(e).__name__}: {e}"
with ThreadPoolExecutor(16) as pool:
    print(json.dumps(dict(pool.map(ask, sources))))
"#;
    let sources: Vec<String> = sources.iter().map(ToString::to_string).collect();
    let vip = vip.to_string();
    let mut cmd = vec!["python3", "-c", SCRIPT, vip.as_str(), host];
    cmd.extend(sources.iter().map(String::as_str));
    let out = run_in(lab.client_ns(), &cmd).unwrap_or_else(|e| panic!("{e}"));
    let answers: BTreeMap<String, String> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    answers
        .into_iter()
        .map(|(source, server)| {
            let parsed: Ipv4Addr = source.parse().unwrap_or_else(|e| panic!("{source:?}: {e}"));
            (parsed, server)
        })
        .collect()
}

/// curl with a Host header gets `code` and `Location: location`.
fn assert_redirect(lab: &DrLab, host: &str, url: &str, code: u16, location: &str) {
    let header = format!("'Host: {host}'");
    let out = curl_verbose(lab, &["-H", &header, url]);
    assert!(out.contains(&format!("< HTTP/1.1 {code}")), "{out}");
    assert!(
        out.to_lowercase()
            .contains(&format!("< location: {location}")),
        "{out}"
    );
}

#[test]
fn redirects_answer_with_the_right_location() {
    let (lab, _lbd) = epic_lab();
    assert_redirect(
        &lab,
        "hyperspace.example.org",
        "'http://198.18.0.100/path?q=1'",
        301,
        "https://hyperspace.example.org/path?q=1",
    );
    assert_redirect(
        &lab,
        "mychart.example.org:80",
        "http://198.18.0.101/login",
        302,
        "https://mychart.example.org/login",
    );

    let head = curl_verbose(
        &lab,
        &[
            "-I",
            "-H",
            "'Host: hyperspace.example.org'",
            "http://198.18.0.100/",
        ],
    );
    assert!(head.contains("< HTTP/1.1 301"), "{head}");

    let bad = raw_http(&lab, HYPERSPACE, "GARBAGE\r\n\r\n");
    assert!(
        bad.starts_with("HTTP/1.1 400"),
        "a malformed request gets a real 400: {bad:?}"
    );
    let http10 = raw_http(&lab, HYPERSPACE, "GET /x HTTP/1.0\r\n\r\n");
    assert!(
        http10
            .to_lowercase()
            .contains("location: https://198.18.0.100/x"),
        "{http10:?}"
    );
}

#[test]
fn https_passes_through_to_the_real_servers_and_stays_on_one_server() {
    let (lab, _lbd) = epic_lab();
    let (cert, _) = lab.certificate();
    let cert = cert.display().to_string();
    let resolve_hs = format!("hyperspace.example.org:443:{HYPERSPACE}");
    let resolve_mc = format!("mychart.example.org:443:{MYCHART}");
    for source in lab.client_sources().iter().take(8) {
        let source = source.to_string();
        let mut seen = Vec::new();
        for _ in 0..4 {
            // --cacert: the handshake verifies the real server's certificate.
            let body = curl(
                &lab,
                &[
                    "--cacert",
                    &cert,
                    "--interface",
                    &source,
                    "--resolve",
                    &resolve_hs,
                    "https://hyperspace.example.org/",
                ],
            );
            seen.push(body.trim().to_owned());
        }
        assert!(
            seen.iter().all(|s| s == &seen[0]),
            "{source} moved between servers: {seen:?}"
        );
        assert!(
            seen[0] == "rs1" || seen[0] == "rs2",
            "Hyperspace answered by {seen:?}"
        );

        let body = curl(
            &lab,
            &[
                "--cacert",
                &cert,
                "--interface",
                &source,
                "--resolve",
                &resolve_mc,
                "https://mychart.example.org/",
            ],
        );
        assert_eq!(body.trim(), "rs3", "MyChart and Hyperspace do not mix");
    }
    // New clients spread over both Hyperspace servers.
    let answers = https_from_each(
        &lab,
        HYPERSPACE,
        "hyperspace.example.org",
        lab.client_sources(),
    );
    let mut share: BTreeMap<&str, usize> = BTreeMap::new();
    for server in answers.values() {
        *share.entry(server.as_str()).or_insert(0) += 1;
    }
    assert_eq!(
        share.keys().copied().collect::<Vec<_>>(),
        ["rs1", "rs2"],
        "every source answered, by rs1 or rs2: {share:?}"
    );
    let as_f64 = |n: usize| f64::from(u32::try_from(n).unwrap_or(u32::MAX));
    for (server, count) in &share {
        let fraction = as_f64(*count) / as_f64(SOURCES);
        assert!(
            SHARE.contains(&fraction),
            "{server} has {fraction:.2} of {SOURCES} sources, outside {SHARE:?}: {share:?}"
        );
    }

    // Following the redirect lands on HTTPS through the VIP.
    let resolve_80 = format!("hyperspace.example.org:80:{HYPERSPACE}");
    let body = curl(
        &lab,
        &[
            "-L",
            "--cacert",
            &cert,
            "--resolve",
            &resolve_80,
            "--resolve",
            &resolve_hs,
            "http://hyperspace.example.org/",
        ],
    );
    assert!(body.trim() == "rs1" || body.trim() == "rs2", "{body}");
}

#[test]
fn slow_clients_do_not_stop_the_redirect_service() {
    let (lab, _lbd) = epic_lab();
    // 300 connections that send half a request and then nothing, held open
    // for 8 s (bounded), while a normal request is made.
    let script = format!(
        "import socket,time\nsocks=[]\nfor i in range(300):\n    s=socket.create_connection(('{HYPERSPACE}',80),timeout=5)\n    \
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: slow\\r\\n')\n    socks.append(s)\nprint('open',len(socks),flush=True)\ntime.sleep(8)\n"
    );
    let mut lab = lab;
    let log = lab.log_path("slow-clients.log");
    let ns = lab.client_ns().to_owned();
    let handle = lab
        .spawn_in(&ns, &["python3", "-u", "-c", &script], &log)
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = wait_until("300 slow connections open", SLACK * 5, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("open 300") {
            Ok(text)
        } else {
            Err(format!("its output: {text:?}"))
        }
    });
    let started = std::time::Instant::now();
    let out = curl_verbose(
        &lab,
        &[
            "-H",
            "'Host: hyperspace.example.org'",
            "http://198.18.0.100/ok",
        ],
    );
    assert!(out.contains("< HTTP/1.1 301"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered while 300 slow clients wait"
    );
    let _ = lab.kill(handle);
}
