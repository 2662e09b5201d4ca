//! The scheduler: [`HealthMonitor`] runs every distinct check in its own
//! task, intervals running start to start, and sends each result through one
//! dispatcher. Identical checks of several services run once; which checks
//! exist, who uses them and their rise/fall state is kept by a pure registry.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::hysteresis::Hysteresis;
use super::probe::{probe, ProbeResult, ProbeSpec, ProbeTarget};
use crate::balancer::Health;
use crate::config::{CheckKind, HealthCheck};

/// When the next check starts: one interval after the previous one started
/// (intervals run start to start), or `now` if that time has passed because
/// the check took longer than the interval.
#[must_use]
pub fn next_start(started: Instant, now: Instant, interval: Duration) -> Instant {
    (started + interval).max(now)
}

/// One real server of one service, with its health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckTarget {
    /// Service name.
    pub service: String,
    /// Real-server name.
    pub server: String,
    /// Real-server address.
    pub address: Ipv4Addr,
    /// The service's health check.
    pub check: HealthCheck,
}

/// A completed check of one (service, server), or its current health when
/// it starts sharing a check that already ran or gets `type: none`.
///
/// Apply `health` on every event (it is idempotent); `changed` only says
/// whether this check flipped the health, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// Service name.
    pub service: String,
    /// Real-server name.
    pub server: String,
    /// Health after this check.
    pub health: Health,
    /// Whether this check flipped the health.
    pub changed: bool,
    /// The check's outcome.
    pub result: ProbeResult,
}

/// One (service, server) as [`HealthMonitor::snapshot`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHealth {
    /// Service name.
    pub service: String,
    /// Real-server name.
    pub server: String,
    /// Real-server address.
    pub address: Ipv4Addr,
    /// Type of check.
    pub kind: CheckKind,
    /// Current health (up until the first check completes).
    pub health: Health,
    /// The last completed check, if any.
    pub last: Option<ProbeResult>,
}

/// Identity of a distinct check: the address and every field that changes
/// what the probe does; fields the check's type ignores are left out, so
/// that, say, two tcp checks differing only in an inherited `path` are one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CheckKey {
    address: Ipv4Addr,
    kind: CheckKind,
    port: u16,
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<(u16, u16)>,
    expect_body: Option<String>,
    tls_verify: bool,
    command: Vec<String>,
    interval_ms: u32,
    timeout_ms: u32,
    rise: u32,
    fall: u32,
    /// An exec check's environment names its service and server, so each
    /// (service, server) has its own.
    owner: Option<(String, String)>,
}

impl CheckKey {
    fn new(target: &CheckTarget) -> Self {
        let check = &target.check;
        let http = matches!(check.kind, CheckKind::Http | CheckKind::Https);
        let exec = check.kind == CheckKind::Exec;
        Self {
            address: target.address,
            kind: check.kind,
            port: check.port,
            path: http.then(|| check.path.clone()),
            host: check.host.clone().filter(|_| http),
            expect_status: http.then_some(check.expect_status),
            expect_body: check.expect_body.clone().filter(|_| http),
            tls_verify: check.kind == CheckKind::Https && check.tls_verify,
            command: if exec {
                check.command.clone()
            } else {
                Vec::new()
            },
            interval_ms: check.interval_ms,
            timeout_ms: check.timeout_ms,
            rise: check.rise,
            fall: check.fall,
            owner: exec.then(|| (target.service.clone(), target.server.clone())),
        }
    }
}

/// A (service, server) pair.
type Subscriber = (String, String);

/// One running distinct check.
#[derive(Debug)]
struct Entry {
    key: CheckKey,
    hysteresis: Hysteresis,
    last: Option<ProbeResult>,
    subscribers: Vec<Subscriber>,
}

/// A check task to start.
#[derive(Debug)]
struct StartCheck {
    id: u64,
    check: HealthCheck,
    target: ProbeTarget,
}

/// What [`Registry::update`] asks of the monitor.
#[derive(Debug, Default)]
struct Plan {
    start: Vec<StartCheck>,
    stop: Vec<u64>,
    /// Subscribers whose current health must be told now.
    announce: Vec<Subscriber>,
}

/// Which checks exist, who uses them, and their rise/fall state: pure.
#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    ids: HashMap<CheckKey, u64>,
    /// `type: none` targets and their addresses.
    unchecked: BTreeMap<Subscriber, Ipv4Addr>,
    /// Health known before any check here (from a data path taken over):
    /// a new check of one of these starts from it, as an established one.
    assumed: BTreeMap<Subscriber, Health>,
}

impl Registry {
    /// Reconciles with a new target list.
    fn update(&mut self, targets: Vec<CheckTarget>) -> Plan {
        let mut wanted: Vec<(CheckKey, CheckTarget, Vec<Subscriber>)> = Vec::new();
        let mut index: HashMap<CheckKey, usize> = HashMap::new();
        let mut unchecked = BTreeMap::new();
        for target in targets {
            let subscriber = (target.service.clone(), target.server.clone());
            if target.check.kind == CheckKind::None {
                unchecked.insert(subscriber, target.address);
                continue;
            }
            let key = CheckKey::new(&target);
            if let Some(&i) = index.get(&key) {
                wanted[i].2.push(subscriber);
            } else {
                index.insert(key.clone(), wanted.len());
                wanted.push((key, target, vec![subscriber]));
            }
        }

        let mut plan = Plan::default();
        self.ids.retain(|key, id| {
            let keep = index.contains_key(key);
            if !keep {
                plan.stop.push(*id);
                self.entries.remove(id);
            }
            keep
        });
        for (key, target, subscribers) in wanted {
            if let Some(entry) = self.ids.get(&key).and_then(|id| self.entries.get_mut(id)) {
                if entry.last.is_some() {
                    plan.announce.extend(
                        subscribers
                            .iter()
                            .filter(|s| !entry.subscribers.contains(s))
                            .cloned(),
                    );
                }
                entry.subscribers = subscribers;
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.ids.insert(key.clone(), id);
            let assumed = subscribers
                .iter()
                .find_map(|s| self.assumed.get(s))
                .copied();
            let hysteresis = match assumed {
                Some(health) => {
                    Hysteresis::established(target.check.rise, target.check.fall, health)
                }
                None => Hysteresis::new(target.check.rise, target.check.fall),
            };
            self.entries.insert(
                id,
                Entry {
                    key,
                    hysteresis,
                    last: None,
                    subscribers,
                },
            );
            plan.start.push(StartCheck {
                id,
                check: target.check,
                target: ProbeTarget {
                    address: target.address,
                    service: target.service,
                    server: target.server,
                },
            });
        }
        plan.announce.extend(
            unchecked
                .keys()
                .filter(|s| !self.unchecked.contains_key(*s))
                .cloned(),
        );
        self.unchecked = unchecked;
        plan
    }

    /// Applies a completed check; results of stopped checks are dropped.
    fn record(&mut self, id: u64, result: ProbeResult) -> Vec<HealthEvent> {
        let Some(entry) = self.entries.get_mut(&id) else {
            return Vec::new();
        };
        if result.local_error {
            // Says nothing about the server: not counted, not shown as its
            // last check, and logged for the operator.
            log::warn!(
                "health check of {} not counted: {} (a problem on this machine, not the server's)",
                entry
                    .subscribers
                    .iter()
                    .map(|(service, server)| format!("{service}/{server}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                result.detail
            );
            return Vec::new();
        }
        let changed = entry.hysteresis.record(result.passed).is_some();
        let health = entry.hysteresis.health();
        let events = entry
            .subscribers
            .iter()
            .map(|(service, server)| HealthEvent {
                service: service.clone(),
                server: server.clone(),
                health,
                changed,
                result: result.clone(),
            })
            .collect();
        entry.last = Some(result);
        events
    }

    /// The current health of each subscriber that has one to tell.
    fn announce(&self, subscribers: &[Subscriber]) -> Vec<HealthEvent> {
        subscribers
            .iter()
            .filter_map(|subscriber| {
                let (health, result) = if self.unchecked.contains_key(subscriber) {
                    (Health::Up, unchecked_result())
                } else {
                    let entry = self
                        .entries
                        .values()
                        .find(|e| e.subscribers.contains(subscriber))?;
                    (entry.hysteresis.health(), entry.last.clone()?)
                };
                Some(HealthEvent {
                    service: subscriber.0.clone(),
                    server: subscriber.1.clone(),
                    health,
                    changed: false,
                    result,
                })
            })
            .collect()
    }

    fn snapshot(&self) -> Vec<ServerHealth> {
        let mut all: Vec<ServerHealth> = self
            .entries
            .values()
            .flat_map(|entry| {
                entry
                    .subscribers
                    .iter()
                    .map(|(service, server)| ServerHealth {
                        service: service.clone(),
                        server: server.clone(),
                        address: entry.key.address,
                        kind: entry.key.kind,
                        health: entry.hysteresis.health(),
                        last: entry.last.clone(),
                    })
            })
            .chain(
                self.unchecked
                    .iter()
                    .map(|((service, server), address)| ServerHealth {
                        service: service.clone(),
                        server: server.clone(),
                        address: *address,
                        kind: CheckKind::None,
                        health: Health::Up,
                        last: None,
                    }),
            )
            .collect();
        all.sort_by(|a, b| (&a.service, &a.server).cmp(&(&b.service, &b.server)));
        all
    }
}

fn unchecked_result() -> ProbeResult {
    ProbeResult {
        passed: true,
        local_error: false,
        latency: Duration::ZERO,
        detail: "no check (type none)".to_owned(),
    }
}

/// Messages to the dispatcher.
#[derive(Debug)]
enum Message {
    /// A check task completed a probe.
    Result { id: u64, result: ProbeResult },
    /// Tell these subscribers their current health.
    Announce(Vec<Subscriber>),
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the health checks and reports to one event channel.
///
/// Create and update it inside a Tokio runtime. Dropping it stops every
/// check.
#[derive(Debug)]
pub struct HealthMonitor {
    registry: Arc<Mutex<Registry>>,
    tasks: HashMap<u64, JoinHandle<()>>,
    inbox: mpsc::UnboundedSender<Message>,
    dispatcher: JoinHandle<()>,
}

impl HealthMonitor {
    /// A monitor with no checks that will send its events to `events`.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    #[must_use]
    pub fn new(events: mpsc::Sender<HealthEvent>) -> Self {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let (inbox, messages) = mpsc::unbounded_channel();
        let dispatcher = tokio::spawn(dispatch(Arc::clone(&registry), messages, events));
        Self {
            registry,
            tasks: HashMap::new(),
            inbox,
            dispatcher,
        }
    }

    /// Starts the checks of these (service, server) pairs from the health
    /// given, as checks that have run before (a data path taken over from
    /// an earlier lbd): a server that was down stays down until `rise`
    /// passes, one that was up goes down only after `fall` failures.
    /// Call before the first [`HealthMonitor::update`].
    pub fn assume(&mut self, known: impl IntoIterator<Item = ((String, String), Health)>) {
        lock(&self.registry).assumed.extend(known);
    }

    /// Makes the running checks those of `targets`: starts new checks, stops
    /// unused ones, keeps unchanged ones (and their rise/fall state).
    pub fn update(&mut self, targets: Vec<CheckTarget>) {
        let plan = lock(&self.registry).update(targets);
        for id in plan.stop {
            if let Some(task) = self.tasks.remove(&id) {
                task.abort();
            }
        }
        for start in plan.start {
            let spec = ProbeSpec::new(&start.check).map_err(|e| e.to_string());
            let interval = Duration::from_millis(u64::from(start.check.interval_ms.max(1)));
            let task = tokio::spawn(run_check(
                start.id,
                spec,
                start.target,
                interval,
                self.inbox.clone(),
            ));
            self.tasks.insert(start.id, task);
        }
        if !plan.announce.is_empty() {
            // Fails only once the dispatcher has stopped, when no one listens.
            let _ = self.inbox.send(Message::Announce(plan.announce));
        }
    }

    /// Every (service, server) with its health and last check, sorted.
    #[must_use]
    pub fn snapshot(&self) -> Vec<ServerHealth> {
        lock(&self.registry).snapshot()
    }

    /// Stops every check; no event is sent after this.
    pub fn shutdown(&mut self) {
        for (_, task) in self.tasks.drain() {
            task.abort();
        }
        self.dispatcher.abort();
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Applies results in the order they arrive and sends the events.
async fn dispatch(
    registry: Arc<Mutex<Registry>>,
    mut messages: mpsc::UnboundedReceiver<Message>,
    events: mpsc::Sender<HealthEvent>,
) {
    while let Some(message) = messages.recv().await {
        let out = {
            let mut registry = lock(&registry);
            match message {
                Message::Result { id, result } => registry.record(id, result),
                Message::Announce(subscribers) => registry.announce(&subscribers),
            }
        };
        for event in out {
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// One distinct check: probe, report, wait for the next interval start.
async fn run_check(
    id: u64,
    spec: Result<ProbeSpec, String>,
    target: ProbeTarget,
    interval: Duration,
    inbox: mpsc::UnboundedSender<Message>,
) {
    loop {
        let started = Instant::now();
        let result = match &spec {
            Ok(spec) => probe(spec, &target).await,
            Err(reason) => ProbeResult {
                passed: false,
                local_error: false,
                latency: Duration::ZERO,
                detail: format!("cannot run the check: {reason}"),
            },
        };
        if inbox.send(Message::Result { id, result }).is_err() {
            return;
        }
        tokio::time::sleep_until(next_start(started, Instant::now(), interval)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::TcpListener;
    use tokio::time::timeout;

    use super::*;
    use crate::health::testing::{check, exec, http, http_server, reply, Reply, LOCAL};

    #[test]
    fn intervals_run_start_to_start_and_a_long_check_is_followed_at_once() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(100);
        let ms = Duration::from_millis;
        assert_eq!(next_start(t0, t0 + ms(30), interval), t0 + ms(100));
        assert_eq!(next_start(t0, t0 + ms(100), interval), t0 + ms(100));
        assert_eq!(next_start(t0, t0 + ms(250), interval), t0 + ms(250));
    }

    // --- Registry (pure) ----------------------------------------------------

    fn tgt(service: &str, server: &str, address: [u8; 4], check: HealthCheck) -> CheckTarget {
        CheckTarget {
            service: service.to_owned(),
            server: server.to_owned(),
            address: address.into(),
            check,
        }
    }

    fn result(passed: bool) -> ProbeResult {
        ProbeResult {
            passed,
            local_error: false,
            latency: Duration::from_millis(1),
            detail: if passed {
                "connected"
            } else {
                "connect refused"
            }
            .to_owned(),
        }
    }

    fn sub(service: &str, server: &str) -> Subscriber {
        (service.to_owned(), server.to_owned())
    }

    #[test]
    fn identical_checks_of_two_services_run_once_and_report_to_both() {
        let mut r = Registry::default();
        let plan = r.update(vec![
            tgt("a", "a1", [10, 0, 0, 1], check(CheckKind::Tcp, 443)),
            tgt("b", "b1", [10, 0, 0, 1], check(CheckKind::Tcp, 443)),
            tgt("b", "b2", [10, 0, 0, 2], check(CheckKind::Tcp, 443)),
        ]);
        assert_eq!(plan.start.len(), 2);
        let shared = plan.start[0].id;
        let events = r.record(shared, result(false));
        let who: Vec<_> = events
            .iter()
            .map(|e| (e.service.as_str(), e.server.as_str(), e.health, e.changed))
            .collect();
        assert_eq!(
            who,
            [
                ("a", "a1", Health::Down, true),
                ("b", "b1", Health::Down, true)
            ]
        );
    }

    #[test]
    fn fields_a_check_type_ignores_do_not_split_it_but_the_others_do() {
        let mut r = Registry::default();
        let tcp_other_path = HealthCheck {
            path: "/other".to_owned(),
            expect_body: Some("x".to_owned()),
            ..check(CheckKind::Tcp, 80)
        };
        let plan = r.update(vec![
            tgt("a", "s", [10, 0, 0, 1], check(CheckKind::Tcp, 80)),
            tgt("b", "s", [10, 0, 0, 1], tcp_other_path),
        ]);
        assert_eq!(plan.start.len(), 1);

        let mut r = Registry::default();
        let variants = [
            HealthCheck {
                path: "/other".to_owned(),
                ..check(CheckKind::Http, 80)
            },
            HealthCheck {
                timeout_ms: 500,
                ..check(CheckKind::Http, 80)
            },
            HealthCheck {
                rise: 5,
                ..check(CheckKind::Http, 80)
            },
            HealthCheck {
                port: 81,
                ..check(CheckKind::Http, 80)
            },
            HealthCheck {
                host: Some("h".to_owned()),
                ..check(CheckKind::Http, 80)
            },
            check(CheckKind::Https, 80),
        ];
        let mut targets = vec![tgt("base", "s", [10, 0, 0, 1], check(CheckKind::Http, 80))];
        targets.extend(
            variants
                .into_iter()
                .enumerate()
                .map(|(i, c)| tgt(&format!("v{i}"), "s", [10, 0, 0, 1], c)),
        );
        assert_eq!(r.update(targets).start.len(), 7);
    }

    #[test]
    fn exec_checks_are_per_server_because_their_environment_names_it() {
        let mut r = Registry::default();
        let plan = r.update(vec![
            tgt("a", "s1", [10, 0, 0, 1], exec("true", 100)),
            tgt("b", "s2", [10, 0, 0, 1], exec("true", 100)),
        ]);
        let names: Vec<_> = plan
            .start
            .iter()
            .map(|s| (s.target.service.as_str(), s.target.server.as_str()))
            .collect();
        assert_eq!(names, [("a", "s1"), ("b", "s2")]);
    }

    /// Issue 12: a check that fails for a reason on this machine (here: out
    /// of file descriptors) says nothing about the server and never flips it.
    #[test]
    fn a_local_error_is_not_counted_and_never_takes_a_server_down() {
        let mut r = Registry::default();
        let targets = vec![tgt("a", "s", [10, 0, 0, 1], check(CheckKind::Tcp, 80))];
        let id = r.update(targets).start[0].id;
        let local = ProbeResult {
            passed: false,
            local_error: true,
            latency: Duration::ZERO,
            detail: "cannot connect from here: Too many open files (os error 24)".to_owned(),
        };
        for _ in 0..10 {
            assert!(r.record(id, local.clone()).is_empty(), "not counted");
        }
        // A real failure still counts: the first one takes it down at once.
        let events = r.record(id, result(false));
        assert_eq!((events[0].health, events[0].changed), (Health::Down, true));
    }

    #[test]
    fn an_unchanged_check_keeps_running_and_keeps_its_state() {
        let mut r = Registry::default();
        let targets = vec![tgt("a", "s", [10, 0, 0, 1], check(CheckKind::Tcp, 80))];
        let id = r.update(targets.clone()).start[0].id;
        r.record(id, result(false));
        let plan = r.update(targets);
        assert!(plan.start.is_empty() && plan.stop.is_empty() && plan.announce.is_empty());
        let events = r.record(id, result(true));
        assert_eq!((events[0].health, events[0].changed), (Health::Down, false));
    }

    #[test]
    fn a_changed_check_restarts_and_results_of_the_old_one_are_dropped() {
        let mut r = Registry::default();
        let old = r.update(vec![tgt(
            "a",
            "s",
            [10, 0, 0, 1],
            check(CheckKind::Tcp, 80),
        )]);
        let old_id = old.start[0].id;
        let plan = r.update(vec![tgt(
            "a",
            "s",
            [10, 0, 0, 1],
            HealthCheck {
                timeout_ms: 200,
                ..check(CheckKind::Tcp, 80)
            },
        )]);
        assert_eq!(plan.stop, [old_id]);
        assert_eq!(plan.start.len(), 1);
        assert_ne!(plan.start[0].id, old_id);
        assert!(r.record(old_id, result(false)).is_empty());

        let plan = r.update(Vec::new());
        assert_eq!(plan.stop.len(), 1);
        assert!(r.snapshot().is_empty());
    }

    #[test]
    fn a_server_joining_a_check_that_already_ran_is_told_its_health() {
        let mut r = Registry::default();
        let id = r
            .update(vec![tgt(
                "a",
                "s",
                [10, 0, 0, 1],
                check(CheckKind::Tcp, 80),
            )])
            .start[0]
            .id;
        r.record(id, result(false));
        let plan = r.update(vec![
            tgt("a", "s", [10, 0, 0, 1], check(CheckKind::Tcp, 80)),
            tgt("b", "t", [10, 0, 0, 1], check(CheckKind::Tcp, 80)),
        ]);
        assert!(plan.start.is_empty());
        assert_eq!(plan.announce, [sub("b", "t")]);
        let events = r.announce(&plan.announce);
        assert_eq!(events.len(), 1);
        assert_eq!(
            (
                events[0].server.as_str(),
                events[0].health,
                events[0].changed
            ),
            ("t", Health::Down, false)
        );
    }

    #[test]
    fn type_none_is_announced_up_once_and_shown_in_the_snapshot() {
        let mut r = Registry::default();
        let targets = vec![
            tgt("a", "s", [10, 0, 0, 1], check(CheckKind::None, 80)),
            tgt("a", "t", [10, 0, 0, 2], check(CheckKind::Tcp, 80)),
        ];
        let plan = r.update(targets.clone());
        assert_eq!(plan.start.len(), 1, "no task for type none");
        assert_eq!(plan.announce, [sub("a", "s")]);
        let events = r.announce(&plan.announce);
        assert_eq!(
            (events[0].health, events[0].result.passed),
            (Health::Up, true)
        );
        assert!(r.update(targets).announce.is_empty());
        let snapshot = r.snapshot();
        let rows: Vec<_> = snapshot
            .iter()
            .map(|s| (s.server.as_str(), s.kind, s.health, s.last.is_some()))
            .collect();
        assert_eq!(
            rows,
            [
                ("s", CheckKind::None, Health::Up, false),
                ("t", CheckKind::Tcp, Health::Up, false)
            ]
        );
    }

    // --- Monitor --------------------------------------------------------------

    /// A TCP listener that counts the connections it accepts.
    async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok(_conn) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        (port, count)
    }

    fn local(service: &str, server: &str, check: HealthCheck) -> CheckTarget {
        tgt(service, server, [127, 0, 0, 1], check)
    }

    #[tokio::test]
    async fn a_check_shared_by_two_services_runs_once_and_reports_to_both() {
        let (port, connections) = counting_listener().await;
        let (tx, mut rx) = mpsc::channel(64);
        let mut monitor = HealthMonitor::new(tx);
        let c = HealthCheck {
            interval_ms: 100,
            ..check(CheckKind::Tcp, port)
        };
        monitor.update(vec![local("a", "s1", c.clone()), local("b", "s9", c)]);
        let mut per_service: HashMap<String, usize> = HashMap::new();
        timeout(Duration::from_secs(5), async {
            while per_service.len() < 2 || per_service.values().any(|&n| n < 3) {
                let event = rx.recv().await.unwrap();
                assert!(event.result.passed && event.health == Health::Up && !event.changed);
                *per_service.entry(event.service).or_default() += 1;
            }
        })
        .await
        .expect("3 events for each service within 5 s");
        monitor.shutdown();
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(event) = rx.try_recv() {
            *per_service.entry(event.service).or_default() += 1;
        }
        // Each check reported to both services (the dispatcher may have been
        // stopped between the two events of the last one), and at most one
        // more check was in flight when the monitor stopped.
        let (a, b) = (per_service["a"], per_service["b"]);
        let checks = a.max(b);
        assert!(a.abs_diff(b) <= 1, "{a} events for a, {b} for b");
        let n = connections.load(Ordering::SeqCst);
        assert!(
            (checks..=checks + 1).contains(&n),
            "{n} connections for {checks} shared checks"
        );
        let snapshot = monitor.snapshot();
        assert_eq!(snapshot.len(), 2);
        assert!(snapshot
            .iter()
            .all(|s| s.last.as_ref().is_some_and(|r| r.passed)));
    }

    #[tokio::test]
    async fn a_slow_server_does_not_delay_the_checks_of_another() {
        let silent = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let (fast_port, _) = counting_listener().await;
        let (tx, mut rx) = mpsc::channel(64);
        let mut monitor = HealthMonitor::new(tx);
        monitor.update(vec![
            local(
                "a",
                "slow",
                HealthCheck {
                    interval_ms: 2000,
                    timeout_ms: 2000,
                    ..http(silent_port)
                },
            ),
            local(
                "a",
                "fast",
                HealthCheck {
                    interval_ms: 50,
                    ..check(CheckKind::Tcp, fast_port)
                },
            ),
        ]);
        let started = std::time::Instant::now();
        let mut fast = 0;
        while fast < 5 {
            let event = timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                event.server, "fast",
                "the slow check cannot have finished yet"
            );
            fast += 1;
        }
        assert!(
            started.elapsed() < Duration::from_millis(1800),
            "{:?}",
            started.elapsed()
        );
        holder.abort();
    }

    #[tokio::test]
    async fn a_check_longer_than_its_interval_is_never_run_twice_at_once() {
        let slow = Reply {
            delay: Duration::from_millis(150),
            ..reply(200, "OK")
        };
        let (port, _seen, most) = http_server(slow, None).await;
        let (tx, mut rx) = mpsc::channel(64);
        let mut monitor = HealthMonitor::new(tx);
        let c = HealthCheck {
            interval_ms: 30,
            ..http(port)
        };
        monitor.update(vec![local("a", "s", c)]);
        let mut arrivals = Vec::new();
        for _ in 0..3 {
            timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            arrivals.push(std::time::Instant::now());
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "two checks ran at once");
        for pair in arrivals.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(140),
                "{:?}",
                pair[1] - pair[0]
            );
        }
    }

    #[tokio::test]
    async fn a_failed_first_check_reports_down_and_none_reports_up() {
        let closed = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let (tx, mut rx) = mpsc::channel(64);
        let mut monitor = HealthMonitor::new(tx);
        monitor.update(vec![
            local("a", "dead", check(CheckKind::Tcp, port)),
            local("a", "free", check(CheckKind::None, port)),
        ]);
        let mut events = Vec::new();
        for _ in 0..2 {
            events.push(
                timeout(Duration::from_secs(5), rx.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        events.sort_by(|a, b| a.server.cmp(&b.server));
        assert_eq!(
            (
                events[0].server.as_str(),
                events[0].health,
                events[0].changed
            ),
            ("dead", Health::Down, true)
        );
        assert_eq!(events[0].result.detail, "connect refused");
        assert_eq!(
            (events[1].server.as_str(), events[1].health),
            ("free", Health::Up)
        );
        let health: Vec<_> = monitor.snapshot().iter().map(|s| s.health).collect();
        assert_eq!(health, [Health::Down, Health::Up]);
    }
}
