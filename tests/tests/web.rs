//! The web console (issue 15), as a hospital's operator meets it: users
//! added with `lbctl user add`, the console reached over HTTPS from the
//! client's network, and a real browser (Debian's headless Chromium, driven
//! over WebDriver with fantoccini) signing in and draining a server.
//!
//! Needs root, `lbd`, curl, chromium and chromedriver (`cargo xtask setup`
//! installs them). Every lab has its own names and is torn down when dropped.

use std::{
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{wd::Capabilities, Client, ClientBuilder, Locator};
use lb_tests::{
    console::{self, add_user, request, sign_in, with_console},
    lab::{DrLab, DrLabOptions},
    lbd::{lab_config, web_service, Lbd},
    paths,
};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(20);
const ADMIN_PASSWORD: &str = "admin-password-1";
const VIEWER_PASSWORD: &str = "viewer-password-1";

fn lab() -> DrLab {
    paths::require_root("namespace tests");
    paths::require_lbd();
    DrLab::start(DrLabOptions::default()).unwrap_or_else(|e| panic!("lab: {e}"))
}

/// A lab with lbd serving the console, `alice` (admin) and `victor`
/// (viewer) added through lbd, and some clients placed.
fn console_lab(session_timeout_s: u32) -> (DrLab, Lbd) {
    let mut lab = lab();
    let config = with_console(
        &lab,
        &lab_config(&lab, &web_service(&lab, 3, 300)),
        session_timeout_s,
    );
    let lbd = Lbd::start(&mut lab, &config).unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    add_user(&lbd, "alice", "admin", ADMIN_PASSWORD).unwrap_or_else(|e| panic!("{e}"));
    add_user(&lbd, "victor", "viewer", VIEWER_PASSWORD).unwrap_or_else(|e| panic!("{e}"));
    console::wait_listening(&lab, READY).unwrap_or_else(|e| panic!("{e}\n{}", lbd.log_text()));
    let report = lab
        .run_clients(1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.failures().is_empty(), "{}", report.summary());
    (lab, lbd)
}

fn change(lab: &DrLab, session: &str, csrf: Option<&str>, body: &Value) -> console::Answer {
    let token = csrf.map(|c| format!("X-CSRF-Token: {c}"));
    let mut headers = vec!["Content-Type: application/json"];
    if let Some(t) = &token {
        headers.push(t);
    }
    request(
        lab,
        "POST",
        "/api/change",
        Some(session),
        &headers,
        Some(&body.to_string()),
    )
}

/// Issue 15's HTTP-level tests: without a session only the sign-in page
/// and its style sheet; plain HTTP refused; a change needs the session's
/// CSRF token and an admin; a wrong password is refused and, after a few,
/// even the right one is held back; an idle session goes back to sign-in.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one operator's session, step by step"
)]
fn the_console_serves_nothing_before_sign_in_and_changes_only_for_an_admin_with_its_token() {
    let (lab, lbd) = console_lab(6);
    let rs2 = lab.real_name(1);

    // Plain HTTP on the console's port is refused, saying why.
    let plain = lb_tests::lab::run_in(
        lab.client_ns(),
        &[
            "curl",
            "-s",
            "-i",
            "--max-time",
            "5",
            &format!("http://{}:{}/", lab.lb_address(), console::PORT),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        plain.starts_with("HTTP/1.1 400") && plain.contains("HTTPS only"),
        "{plain}"
    );

    // No session: the sign-in page and its style sheet, nothing else.
    let page = request(&lab, "GET", "/", None, &[], None);
    assert_eq!(page.status, 303, "{page:?}");
    assert_eq!(page.header("location").as_deref(), Some("/login"));
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    for path in ["/api/overview", "/api/history?service=web&server=rs1"] {
        let a = request(&lab, "GET", path, None, &[], None);
        assert_eq!(a.status, 401, "{path}: {a:?}");
    }
    let script = request(&lab, "GET", "/assets/console.js", None, &[], None);
    assert_eq!(script.status, 303, "the console's script is not public");
    let forged = change(&lab, "0".repeat(64).as_str(), Some("x"), &json!({}));
    assert_eq!(forged.status, 401, "{forged:?}");
    let login = request(&lab, "GET", "/login", None, &[], None);
    assert_eq!(login.status, 200);
    assert!(login.body.contains("id=\"sign-in\""), "{}", login.body);
    assert!(
        login.body.contains(&lab.tag().to_string()),
        "the node's name is shown"
    );
    assert_eq!(
        request(&lab, "GET", "/assets/style.css", None, &[], None).status,
        200
    );

    // The admin signs in; the cookie is locked down.
    let signed = sign_in(&lab, "alice", ADMIN_PASSWORD);
    assert_eq!(signed.status, 303, "{signed:?}\n{}", lbd.log_text());
    let cookie = signed.header("set-cookie").unwrap_or_default();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Max-Age="] {
        assert!(cookie.contains(flag), "{flag} missing in {cookie}");
    }
    let alice = signed
        .session_cookie()
        .unwrap_or_else(|| panic!("no session: {signed:?}"));
    let overview = request(&lab, "GET", "/api/overview", Some(&alice), &[], None).json();
    assert_eq!(overview["user"], "alice");
    assert_eq!(overview["role"], "admin");
    assert_eq!(overview["status"]["services"][0]["name"], "web");
    let csrf = overview["csrf"].as_str().unwrap_or_default().to_owned();
    assert_eq!(csrf.len(), 64, "{overview}");

    // A change without the token, or with another, changes nothing.
    let drain = json!({"service": "web", "server": rs2, "action": "drain"});
    assert_eq!(change(&lab, &alice, None, &drain).status, 403);
    assert_eq!(
        change(&lab, &alice, Some(&"f".repeat(64)), &drain).status,
        403
    );
    assert_eq!(lbd.admin_state(&rs2).as_deref(), Some("online"));
    // The preview says what would happen.
    let preview = request(
        &lab,
        "GET",
        &format!("/api/preview?service=web&server={rs2}&action=drain"),
        Some(&alice),
        &[],
        None,
    )
    .json();
    let share = preview["moved_share"].as_f64().unwrap_or(-1.0);
    assert!(share > 0.0 && share < 1.0, "{preview}");
    assert!(
        preview["summary"]
            .as_str()
            .is_some_and(|s| s.contains("Draining it")),
        "{preview}"
    );
    // With it, the change is made, and audited with the console user.
    let done = change(&lab, &alice, Some(&csrf), &drain);
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(lbd.admin_state(&rs2).as_deref(), Some("drain"));
    let last = lbd.audit_lines().pop().unwrap_or_default();
    assert_eq!(last["who"], "alice", "{last}");
    assert_eq!(last["via"], "web", "{last}");
    assert_eq!(last["what"], format!("drain web/{rs2}"), "{last}");

    // A viewer sees everything and changes nothing, token or not.
    let victor = sign_in(&lab, "victor", VIEWER_PASSWORD)
        .session_cookie()
        .unwrap_or_else(|| panic!("victor cannot sign in"));
    let seen = request(&lab, "GET", "/api/overview", Some(&victor), &[], None).json();
    assert_eq!(seen["role"], "viewer");
    let his = seen["csrf"].as_str().unwrap_or_default().to_owned();
    let online = json!({"service": "web", "server": rs2, "action": "online"});
    let refused = change(&lab, &victor, Some(&his), &online);
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body.contains("viewer"), "{}", refused.body);
    assert_eq!(lbd.admin_state(&rs2).as_deref(), Some("drain"));

    // An idle session ends: back to sign-in.
    std::thread::sleep(Duration::from_secs(7));
    let expired = request(&lab, "GET", "/", Some(&alice), &[], None);
    assert_eq!(expired.status, 303, "{expired:?}");
    assert_eq!(expired.header("location").as_deref(), Some("/login"));
    assert_eq!(
        request(&lab, "GET", "/api/overview", Some(&alice), &[], None).status,
        401
    );

    // Wrong passwords are refused, and after five even the right one waits.
    for i in 0..5 {
        let wrong = sign_in(&lab, "victor", "not-his-password");
        assert_eq!(wrong.status, 401, "attempt {i}: {wrong:?}");
        assert!(wrong.session_cookie().is_none());
        assert!(
            wrong.body.contains("Wrong user name or password"),
            "{}",
            wrong.body
        );
    }
    let held = sign_in(&lab, "victor", VIEWER_PASSWORD);
    assert_eq!(held.status, 429, "{held:?}");
    assert!(held.session_cookie().is_none());
    assert!(held.body.contains("try again in"), "{}", held.body);
}

/// The console's listener is bounded like lbd's others (issue 15): 1,500
/// connections held open to it from the client's 256 addresses for 15 s,
/// with lbd limited to 1,200 open files in all, take nothing from the
/// control socket, the metrics listener, the health checks or forwarding;
/// once they are gone the console answers again.
#[test]
fn connections_held_to_the_console_take_nothing_from_control_checks_or_forwarding() {
    let mut lab = lab();
    let mut services = web_service(&lab, 3, 300);
    services = services.replace(
        "    real_servers:",
        "    health_check: { type: tcp, interval_ms: 300, timeout_ms: 250, rise: 1, fall: 2 }\n    real_servers:",
    );
    let lb = lab.lb_address();
    let config = with_console(&lab, &lab_config(&lab, &services), 900).replace(
        "metrics_listen: 127.0.0.1:9100",
        &format!("metrics_listen: {lb}:9100"),
    );
    let lbd = Lbd::start_wrapped(&mut lab, &config, &["prlimit", "--nofile=1200:1200"])
        .unwrap_or_else(|e| panic!("{e}"));
    lbd.wait_ready(&mut lab, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    console::wait_listening(&lab, READY).unwrap_or_else(|e| panic!("{e}\n{}", lbd.log_text()));

    let hold = Duration::from_secs(15);
    let target = std::net::SocketAddrV4::new(lab.lb_address(), console::PORT);
    let holder = lb_tests::hold::hold_connections(&lab, vec![target], 1500, hold);
    std::thread::sleep(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let mut rounds = 0;
    let pid = lbd.pid(&lab).unwrap_or_else(|| panic!("lbd's pid"));
    let mut most_fds = 0;
    while started.elapsed() < hold.saturating_sub(Duration::from_secs(5)) {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
        most_fds = most_fds.max(fds);
        let status = lbd
            .status()
            .unwrap_or_else(|| panic!("`lbctl status` does not answer:\n{}", lbd.log_text()));
        for server in status["services"][0]["real_servers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(server["health"], "up", "{server}\n{}", lbd.log_text());
        }
        let report = lab
            .run_clients_with(
                &lab.client_sources()[..16],
                1,
                Duration::from_secs(10),
                Duration::from_secs(2),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            report.failures().is_empty(),
            "forwarding: {}",
            report.summary()
        );
        let scrape = lb_tests::lab::run_in(
            lab.client_ns(),
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "3",
                &format!("http://{lb}:9100/metrics"),
            ],
        );
        assert_eq!(
            scrape.as_ref().map(|code| code.trim()).ok(),
            Some("200"),
            "a scrape of the metrics listener during the flood: {scrape:?}"
        );
        rounds += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(rounds >= 2, "checked {rounds} times");
    // The console's cap (128 connections) is all the flood may take.
    assert!(
        most_fds < 600,
        "lbd held {most_fds} descriptors during the flood: the console's listener is not bounded"
    );
    let made = holder
        .join()
        .unwrap_or_else(|_| panic!("the connection holder panicked"));
    eprintln!("{made} connections made to the console");
    assert!(made >= 500, "only {made} connections were made");
    let page = lb_tests::wait::wait_until(
        "the console's sign-in page",
        Duration::from_secs(15),
        || {
            let a = request(&lab, "GET", "/login", None, &[], None);
            if a.status == 200 {
                Ok(a)
            } else {
                Err(format!("{a:?}"))
            }
        },
    );
    assert!(page.body.contains("sign-in"), "{}", page.body);
}

/// ChromeDriver in the client's namespace, in a process group of its own
/// with the Chromium it starts: when dropped (the test passed or failed),
/// the whole group is ended, so no browser outlives its test.
struct Browser {
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let Ok(group) = i32::try_from(self.driver.id()) else {
            return;
        };
        // SAFETY: kill(2) on the process group this test started (its
        // leader is the driver, by `process_group(0)`).
        unsafe { libc::kill(-group, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: as above; whatever did not stop.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

const DRIVER_PORT: u16 = 9515;

fn start_browser(lab: &DrLab) -> Browser {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        paths::require_file(
            std::path::Path::new(tool),
            "run `cargo xtask setup` (apt: chromium chromium-driver)",
        );
    }
    let _ = lb_tests::lab::run_in(lab.client_ns(), &["ip", "link", "set", "lo", "up"]);
    let log = std::fs::File::create(lab.log_path("chromedriver")).unwrap_or_else(|e| panic!("{e}"));
    let err = log.try_clone().unwrap_or_else(|e| panic!("{e}"));
    let driver = Command::new("ip")
        .args(["netns", "exec", lab.client_ns(), "/usr/bin/chromedriver"])
        .arg(format!("--port={DRIVER_PORT}"))
        .env("HOME", lab.dir())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("chromedriver: {e}"));
    let browser = Browser { driver };
    lb_tests::lab::wait_for_tcp(
        lab.client_ns(),
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, DRIVER_PORT),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    browser
}

async fn connect(lab: &DrLab) -> Client {
    let profile = lab.dir().join("chromium-profile");
    let mut caps = Capabilities::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": "/usr/bin/chromium", "args": console::chromium_args(&profile)}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{DRIVER_PORT}"))
        .await
        .unwrap_or_else(|e| panic!("WebDriver session: {e}"))
}

/// Polls `probe` every 200 ms for up to 20 s.
async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    eventually_within(what, Duration::from_secs(20), probe).await
}

/// Polls `probe` every 200 ms for up to `limit`.
async fn eventually_within<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = tokio::time::Instant::now();
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(e) if started.elapsed() >= limit => {
                panic!("{what}: still not so after {limit:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn sign_in_with_browser(c: &Client, base: &str, user: &str, password: &str) {
    c.goto(&format!("{base}/"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = c.current_url().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(url.path(), "/login", "before sign-in only the sign-in page");
    let form = c
        .form(Locator::Id("sign-in"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    form.set_by_name("user", user)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    form.set_by_name("password", password)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.find(Locator::Id("sign-in-button"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("the overview to show the real servers", || async {
        c.find_all(Locator::Css("tr[data-server]"))
            .await
            .map_err(|e| e.to_string())
            .and_then(|rows| {
                if rows.len() == 3 {
                    Ok(())
                } else {
                    Err(format!("{} rows", rows.len()))
                }
            })
    })
    .await;
}

async fn cell_text(c: &Client, server: &str, cell: &str) -> Result<String, String> {
    let css = format!("tr[data-server=\"{server}\"] td{cell}");
    let e = c
        .find(Locator::Css(&css))
        .await
        .map_err(|e| e.to_string())?;
    e.text()
        .await
        .map(|t| t.trim().to_owned())
        .map_err(|e| e.to_string())
}

/// Issue 15's browser test: the viewer sees the overview without
/// maintenance buttons and a forged change is refused with 403, and the
/// page fits a tablet's width without spilling sideways; the admin
/// drains a server through the confirmation, sees it drained and the
/// change in the recent changes; `lbctl status` and the audit log agree;
/// a screenshot of the overview is written and its size checked.
#[test]
#[expect(clippy::too_many_lines, reason = "one browser session, step by step")]
fn a_browser_signs_in_and_an_admin_drains_a_server_through_the_confirmation() {
    let (lab, lbd) = console_lab(900);
    let rs3 = lab.real_name(2);
    let _browser = start_browser(&lab);
    // Traffic meanwhile, for the charts.
    let traffic = lab
        .spawn_clients(
            &lab.client_sources()[..64],
            20,
            Duration::from_secs(60),
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let base = format!("https://{}:{}", lab.lb_address(), console::PORT);
    let out = console::output_dir("web");
    let shot = out.join("console-overview.png");
    let _ = std::fs::remove_file(&shot);

    let png = lb_tests::lab::in_netns(lab.client_ns(), || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async {
            let c = connect(&lab).await;
            c.set_window_size(1280, 1000).await.unwrap_or_else(|e| panic!("{e}"));

            // The viewer: everything to see, no maintenance buttons.
            sign_in_with_browser(&c, &base, "victor", VIEWER_PASSWORD).await;
            let buttons = c.find_all(Locator::Css("button.action")).await.unwrap_or_default();
            assert!(buttons.is_empty(), "a viewer has {} maintenance buttons", buttons.len());
            assert_eq!(cell_text(&c, &rs3, ".health").await.ok().map(|t| t.starts_with("up")), Some(true));
            let status = c
                .execute_async(
                    "const done = arguments[arguments.length - 1];\
                     fetch('/api/overview').then(r => r.json()).then(o => fetch('/api/change', {\
                       method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': o.csrf},\
                       body: JSON.stringify({service: 'web', server: arguments[0], action: 'halt'})}))\
                     .then(r => done(r.status), e => done(String(e)));",
                    vec![json!(rs3)],
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(status, json!(403), "a viewer's forged change");
            // On a tablet (768 pixels wide) nothing spills sideways.
            c.set_window_size(768, 1024).await.unwrap_or_else(|e| panic!("{e}"));
            let spill = eventually("the page to fit a tablet's width", || async {
                let v = c
                    .execute(
                        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                        vec![],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                match v.as_i64() {
                    Some(n) if n <= 0 => Ok(n),
                    other => Err(format!("{other:?} pixels too wide")),
                }
            })
            .await;
            assert!(spill <= 0);
            let tablet = c.screenshot().await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(console::png_size(&tablet).map(|(w, _)| w), Some(768), "a tablet-wide page");
            c.set_window_size(1280, 1000).await.unwrap_or_else(|e| panic!("{e}"));
            c.find(Locator::Css("#sign-out button"))
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .click()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            eventually("sign-out to reach the sign-in page", || async {
                let url = c.current_url().await.map_err(|e| e.to_string())?;
                if url.path() == "/login" { Ok(()) } else { Err(url.to_string()) }
            })
            .await;

            // The admin drains rs3 through the confirmation.
            sign_in_with_browser(&c, &base, "alice", ADMIN_PASSWORD).await;
            let css = format!("tr[data-server=\"{rs3}\"] button.action[data-action=\"drain\"]");
            c.find(Locator::Css(&css))
                .await
                .unwrap_or_else(|e| panic!("no drain button: {e}"))
                .click()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let text = eventually("the confirmation's preview", || async {
                let t = c
                    .find(Locator::Id("confirm-text"))
                    .await
                    .map_err(|e| e.to_string())?
                    .text()
                    .await
                    .map_err(|e| e.to_string())?;
                if t.contains("Draining it") { Ok(t) } else { Err(t) }
            })
            .await;
            assert!(text.contains(&rs3) && text.contains('%'), "{text}");
            assert_eq!(cell_text(&c, &rs3, ".admin-state").await.ok().as_deref(), Some("online"));
            let yes = c.find(Locator::Id("confirm-yes")).await.unwrap_or_else(|e| panic!("{e}"));
            eventually("the confirm button to be enabled", || async {
                match yes.is_enabled().await {
                    Ok(true) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            yes.click().await.unwrap_or_else(|e| panic!("{e}"));
            eventually("the overview to show the server drained", || async {
                let t = cell_text(&c, &rs3, ".admin-state").await?;
                if t == "drain" { Ok(()) } else { Err(t) }
            })
            .await;
            eventually("the change in the recent changes", || async {
                let t = c
                    .find(Locator::Id("audit-list"))
                    .await
                    .map_err(|e| e.to_string())?
                    .text()
                    .await
                    .map_err(|e| e.to_string())?;
                if t.contains("alice") && t.contains(&format!("drain web/{rs3}")) { Ok(()) } else { Err(t) }
            })
            .await;
            // The charts have two samples or more (one every 10 s).
            eventually_within("the charts' first samples", Duration::from_secs(50), || async {
                let t = c
                    .find(Locator::Id("charts-body"))
                    .await
                    .map_err(|e| e.to_string())?
                    .text()
                    .await
                    .map_err(|e| e.to_string())?;
                let samples = t
                    .split(" samples, one every")
                    .next()
                    .and_then(|head| head.rsplit(' ').next())
                    .and_then(|n| n.parse::<u32>().ok());
                if samples.is_some_and(|n| n >= 2) { Ok(()) } else { Err(t) }
            })
            .await;
            // The whole page in one picture.
            c.set_window_size(1280, 1700).await.unwrap_or_else(|e| panic!("{e}"));
            tokio::time::sleep(Duration::from_millis(500)).await;
            let png = c.screenshot().await.unwrap_or_else(|e| panic!("{e}"));
            let _ = c.close().await;
            png
        })
    })
    .unwrap_or_else(|e| panic!("{e}"));

    let traffic = traffic.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(traffic.failures().is_empty(), "{}", traffic.summary());
    std::fs::write(&shot, &png).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    eprintln!("screenshot: {} ({} bytes)", shot.display(), png.len());
    let size = console::png_size(&png);
    assert!(
        size.is_some_and(|(w, h)| w >= 1000 && h >= 600),
        "the screenshot is {size:?}"
    );
    assert!(
        png.len() > 30_000,
        "a screenshot of {} bytes is blank",
        png.len()
    );

    assert_eq!(
        lbd.admin_state(&rs3).as_deref(),
        Some("drain"),
        "lbctl status agrees"
    );
    let audit = lbd.audit_lines();
    let drained = audit
        .iter()
        .find(|l| l["what"] == format!("drain web/{rs3}"))
        .unwrap_or_else(|| panic!("no drain in the audit log: {audit:?}"));
    assert_eq!(drained["who"], "alice");
    assert_eq!(drained["via"], "web");
    assert!(
        !audit.iter().any(|l| l["what"] == format!("halt web/{rs3}")),
        "the viewer's forged change is not in the log"
    );
}
