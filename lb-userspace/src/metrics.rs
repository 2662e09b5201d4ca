//! Prometheus metrics at `node.metrics_listen`, path `/metrics`.
//!
//! Counters come from the data path's per-CPU maps and are read at scrape
//! time, so they are never older than the scrape; active clients come from
//! the last pass over the affinity table (at most about a second old). The
//! text is produced by the `prometheus` crate's encoder (the classic 0.0.4
//! text format every Prometheus and most parsers read). The HTTP side only
//! moves bytes: each scrape asks the daemon's loop for a rendering.

use std::{
    cell::RefCell, collections::BTreeSet, convert::Infallible, fmt::Write as _, net::SocketAddr,
    sync::Arc, time::Duration,
};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{
    core::Collector as _, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use crate::limits::{Caps, ConnectionGate};

/// The metrics listener's caps: scrapers are few (a Prometheus pair, an
/// operator's curl), so anything beyond is refused.
pub const CAPS: Caps = Caps {
    per_address: 8,
    total: 64,
};

/// Longest a scraper's connection stays open.
const MAX_CONNECTION_AGE: Duration = Duration::from_mins(2);

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listener could not be bound.
    #[error("cannot serve metrics on {address}: {source} (change node.metrics_listen)")]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A metric could not be registered or encoded (a bug).
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// One real server's numbers at scrape time.
#[derive(Clone, Debug, Default)]
pub struct RealSample {
    /// Real-server name.
    pub name: String,
    /// Frames forwarded to it.
    pub packets: u64,
    /// Bytes forwarded to it.
    pub bytes: u64,
    /// Clients first sent to it by the hash.
    pub new_clients: u64,
    /// Whether its health check passes.
    pub up: bool,
    /// Live affinity entries.
    pub active_clients: u64,
    /// NAT and SNAT: live tracked connections.
    pub active_connections: Option<u64>,
    /// Whether its MAC address is known (else it gets no client).
    pub resolved: bool,
}

/// One service's numbers at scrape time.
#[derive(Clone, Debug, Default)]
pub struct ServiceSample {
    /// Service name.
    pub name: String,
    /// Frames forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Its real servers.
    pub reals: Vec<RealSample>,
    /// Entries it holds in the affinity table (live or not yet swept).
    pub remembered_clients: u64,
    /// The most it may hold.
    pub max_clients: u64,
}

/// Everything a scrape shows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Forwarding services.
    pub services: Vec<ServiceSample>,
    /// Live entries in the affinity table.
    pub affinity_entries: u64,
    /// Whether this node holds the VIPs (always on a single node).
    pub ha_master: bool,
    /// Whether the sync channel to the peer is up.
    pub sync_connected: bool,
    /// The data path's decision counters, by name.
    pub reasons: Vec<(&'static str, u64)>,
}

/// Metrics kept between scrapes (histograms), and the renderer.
pub struct Metrics {
    health_duration: HistogramVec,
}

impl Metrics {
    /// New metrics.
    ///
    /// # Errors
    /// Never in practice (fixed, valid metric names).
    pub fn new() -> Result<Self, MetricsError> {
        let health_duration = HistogramVec::new(
            HistogramOpts::new(
                "lb_health_check_duration_seconds",
                "Time a real-server health check took",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["service", "server"],
        )?;
        Ok(Self { health_duration })
    }

    /// Records one health check's duration.
    pub fn observe_check(&self, service: &str, server: &str, duration: Duration) {
        self.health_duration
            .with_label_values(&[service, server])
            .observe(duration.as_secs_f64());
    }

    /// Forgets the checks of servers `snapshot` no longer has (removed by
    /// a reload or an apply), so that their histograms do not stay forever.
    fn forget_gone_checks(&self, snapshot: &Snapshot) {
        let current: BTreeSet<(&str, &str)> = snapshot
            .services
            .iter()
            .flat_map(|s| s.reals.iter().map(|r| (s.name.as_str(), r.name.as_str())))
            .collect();
        for family in self.health_duration.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                let (service, server) = (label("service"), label("server"));
                if !current.contains(&(service.as_str(), server.as_str())) {
                    let _ = self
                        .health_duration
                        .remove_label_values(&[&service, &server]);
                }
            }
        }
    }

    /// The text exposition of `snapshot` plus the kept histograms. Every
    /// family is named with its help and type even while it has no sample
    /// (no service yet, no check made yet), so a scrape always shows what
    /// lbd exports.
    ///
    /// # Errors
    /// Never in practice (fixed, valid metric names).
    #[expect(
        clippy::too_many_lines,
        reason = "one registration and one fill per metric, in contract order"
    )]
    pub fn render(&self, snapshot: &Snapshot) -> Result<String, MetricsError> {
        self.forget_gone_checks(snapshot);
        let registry = Registry::new();
        let declared: RefCell<Vec<(String, String, &str)>> = RefCell::new(Vec::new());
        let declare = |name: &str, help: &str, kind: &'static str| {
            declared
                .borrow_mut()
                .push((name.to_owned(), help.to_owned(), kind));
        };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
                declare(name, help, "counter");
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, MetricsError> {
                declare(name, help, "gauge");
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let service_packets = counter(
            "lb_service_packets_total",
            "Frames forwarded for a service",
            &["service"],
        )?;
        let service_bytes = counter(
            "lb_service_bytes_total",
            "Bytes forwarded for a service",
            &["service"],
        )?;
        let real_packets = counter(
            "lb_real_server_packets_total",
            "Frames forwarded to a real server",
            &["service", "server"],
        )?;
        let real_bytes = counter(
            "lb_real_server_bytes_total",
            "Bytes forwarded to a real server",
            &["service", "server"],
        )?;
        let real_new = counter(
            "lb_real_server_new_clients_total",
            "Clients given to a real server by the Maglev hash",
            &["service", "server"],
        )?;
        let real_up = gauge(
            "lb_real_server_up",
            "1 if the real server's health check passes",
            &["service", "server"],
        )?;
        let real_active = gauge(
            "lb_real_server_active_clients",
            "Clients with a live affinity entry for the real server",
            &["service", "server"],
        )?;
        let real_connections = gauge(
            "lb_real_server_active_connections",
            "NAT and SNAT: live tracked connections to the real server (counted every second, every 5 s on a table too large to count that often)",
            &["service", "server"],
        )?;
        let real_resolved = gauge(
            "lb_real_server_resolved",
            "1 if the real server's MAC address is known (an unresolved server gets no client)",
            &["service", "server"],
        )?;
        let remembered = gauge(
            "lb_service_remembered_clients",
            "Entries a service holds in the affinity table, live or not yet removed",
            &["service"],
        )?;
        let max_clients = gauge(
            "lb_service_max_clients",
            "The most entries a service may hold in the affinity table (new clients beyond are served from the ring, not remembered)",
            &["service"],
        )?;
        let dataplane = counter(
            "lb_dataplane_decisions_total",
            "Frames by what the XDP program did with them and why",
            &["reason"],
        )?;
        for s in &snapshot.services {
            service_packets
                .with_label_values(&[&s.name])
                .inc_by(s.packets);
            service_bytes.with_label_values(&[&s.name]).inc_by(s.bytes);
            remembered
                .with_label_values(&[&s.name])
                .set(i64::try_from(s.remembered_clients).unwrap_or(i64::MAX));
            max_clients
                .with_label_values(&[&s.name])
                .set(i64::try_from(s.max_clients).unwrap_or(i64::MAX));
            for r in &s.reals {
                let labels = [s.name.as_str(), r.name.as_str()];
                real_packets.with_label_values(&labels).inc_by(r.packets);
                real_bytes.with_label_values(&labels).inc_by(r.bytes);
                real_new.with_label_values(&labels).inc_by(r.new_clients);
                real_up.with_label_values(&labels).set(i64::from(r.up));
                real_resolved
                    .with_label_values(&labels)
                    .set(i64::from(r.resolved));
                real_active
                    .with_label_values(&labels)
                    .set(i64::try_from(r.active_clients).unwrap_or(i64::MAX));
                if let Some(n) = r.active_connections {
                    real_connections
                        .with_label_values(&labels)
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
        for (reason, count) in &snapshot.reasons {
            dataplane.with_label_values(&[reason]).inc_by(*count);
        }
        let single = |name: &str, help: &str, value: i64| -> Result<(), MetricsError> {
            let g = IntGauge::new(name, help)?;
            g.set(value);
            registry.register(Box::new(g))?;
            Ok(())
        };
        single(
            "lb_affinity_entries",
            "Live entries in the affinity (persistence) table",
            i64::try_from(snapshot.affinity_entries).unwrap_or(i64::MAX),
        )?;
        single(
            "lb_ha_master",
            "1 if this node holds the VIPs (always on a single node)",
            i64::from(snapshot.ha_master),
        )?;
        single(
            "lb_sync_connected",
            "1 if the sync channel to the peer is up",
            i64::from(snapshot.sync_connected),
        )?;
        registry.register(Box::new(self.health_duration.clone()))?;
        for desc in self.health_duration.desc() {
            declare(&desc.fq_name, &desc.help, "histogram");
        }

        let families = registry.gather();
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        let mut text = String::from_utf8_lossy(&out).into_owned();
        // The encoder leaves out a family without samples.
        for (name, help, kind) in declared.take() {
            if !families.iter().any(|f| f.name() == name) {
                let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
            }
        }
        Ok(text)
    }
}

/// A scrape waiting for the daemon's rendering.
pub type Scrape = oneshot::Sender<String>;

/// Binds the metrics listener (or takes it from the lbd this process was
/// before a re-execution, if it listens on `address`).
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, MetricsError> {
    if let Some(fd) = crate::inherit::take("metrics") {
        let listener = std::net::TcpListener::from(fd);
        if listener.local_addr().ok() == Some(address) && listener.set_nonblocking(true).is_ok() {
            if let Ok(listener) = TcpListener::from_std(listener) {
                return Ok(listener);
            }
        }
    }
    TcpListener::bind(address)
        .await
        .map_err(|source| MetricsError::Bind { address, source })
}

/// Serves `/metrics` forever, asking `scrapes` for each rendering.
pub async fn serve(
    listener: TcpListener,
    scrapes: mpsc::Sender<Scrape>,
    gate: Arc<ConnectionGate>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                log::warn!("metrics: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admission = match gate.admit(peer.ip()) {
            Ok(admission) => admission,
            Err(refusal) => {
                log::debug!("metrics: closing a connection from {peer}: {refusal}");
                continue;
            }
        };
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            let _admission = admission;
            let service = service_fn(move |request: Request<Incoming>| {
                let scrapes = scrapes.clone();
                async move { Ok::<_, Infallible>(respond(&request, &scrapes).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            // A scraper that keeps its connection also gives it back.
            let _ = tokio::time::timeout(MAX_CONNECTION_AGE, connection).await;
        });
    }
}

async fn respond(
    request: &Request<Incoming>,
    scrapes: &mpsc::Sender<Scrape>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "metrics are at /metrics\n".into());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    let (tx, rx) = oneshot::channel();
    if scrapes.send(tx).await.is_err() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "lbd is shutting down\n".into(),
        );
    }
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(text)) => {
            let mut response = reply(StatusCode::OK, text);
            if let Ok(value) = TextEncoder::new().format_type().parse() {
                response.headers_mut().insert(CONTENT_TYPE, value);
            }
            response
        }
        _ => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "lbd did not answer in time\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_contract_metrics_in_prometheus_text() {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        metrics.observe_check("web", "rs1", Duration::from_millis(3));
        let snapshot = Snapshot {
            services: vec![ServiceSample {
                name: "web".into(),
                packets: 10,
                bytes: 1000,
                reals: vec![RealSample {
                    name: "rs1".into(),
                    packets: 10,
                    bytes: 1000,
                    new_clients: 2,
                    up: true,
                    active_clients: 2,
                    active_connections: Some(4),
                    resolved: false,
                }],
                remembered_clients: 3,
                max_clients: 1_250_000,
            }],
            affinity_entries: 2,
            ha_master: true,
            sync_connected: false,
            reasons: vec![("forwarded", 10)],
        };
        let text = metrics.render(&snapshot).unwrap_or_else(|e| panic!("{e}"));
        for line in [
            "lb_service_packets_total{service=\"web\"} 10",
            "lb_service_bytes_total{service=\"web\"} 1000",
            "lb_real_server_packets_total{server=\"rs1\",service=\"web\"} 10",
            "lb_real_server_up{server=\"rs1\",service=\"web\"} 1",
            "lb_real_server_active_connections{server=\"rs1\",service=\"web\"} 4",
            "lb_real_server_active_clients{server=\"rs1\",service=\"web\"} 2",
            "lb_real_server_resolved{server=\"rs1\",service=\"web\"} 0",
            "lb_service_remembered_clients{service=\"web\"} 3",
            "lb_service_max_clients{service=\"web\"} 1250000",
            "lb_affinity_entries 2",
            "lb_ha_master 1",
            "lb_sync_connected 0",
            "lb_health_check_duration_seconds_count{server=\"rs1\",service=\"web\"} 1",
            "# TYPE lb_service_packets_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    /// The contract's metrics are named from the first scrape: before any
    /// service, real server or health check exists.
    #[test]
    fn every_family_is_named_before_it_has_a_sample() {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        let text = metrics
            .render(&Snapshot::default())
            .unwrap_or_else(|e| panic!("{e}"));
        for (name, kind) in [
            ("lb_service_packets_total", "counter"),
            ("lb_service_bytes_total", "counter"),
            ("lb_real_server_packets_total", "counter"),
            ("lb_real_server_up", "gauge"),
            ("lb_real_server_active_clients", "gauge"),
            ("lb_affinity_entries", "gauge"),
            ("lb_ha_master", "gauge"),
            ("lb_sync_connected", "gauge"),
            ("lb_health_check_duration_seconds", "histogram"),
        ] {
            let line = format!("# TYPE {name} {kind}");
            assert_eq!(
                text.lines().filter(|l| *l == line).count(),
                1,
                "{line:?} once in:\n{text}"
            );
        }
    }

    /// A server a reload removed leaves the health-check histogram.
    #[test]
    fn a_removed_servers_checks_are_forgotten() {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        metrics.observe_check("web", "rs1", Duration::from_millis(3));
        metrics.observe_check("web", "rs2", Duration::from_millis(3));
        let real = |name: &str| RealSample {
            name: name.into(),
            ..RealSample::default()
        };
        let snapshot = Snapshot {
            services: vec![ServiceSample {
                name: "web".into(),
                reals: vec![real("rs1")],
                ..ServiceSample::default()
            }],
            ..Snapshot::default()
        };
        let text = metrics.render(&snapshot).unwrap_or_else(|e| panic!("{e}"));
        let count = |server: &str| {
            format!(
                "lb_health_check_duration_seconds_count{{server=\"{server}\",service=\"web\"}} 1"
            )
        };
        assert!(text.lines().any(|l| l == count("rs1")), "{text}");
        assert!(!text.lines().any(|l| l == count("rs2")), "{text}");
    }
}
