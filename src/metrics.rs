//! Prometheus metrics (prometheus-client, one registry owned by the app state, no globals).
//!
//! Handles (`Metrics`) are cheap clones handed to the components that observe things as they
//! happen: HTTP requests, security events and auth outcomes, security-log batch latency, argon2
//! queue wait, database pool acquire wait, Redis errors. Levels that already live in the
//! components (queue depth, spool backlog, pool connections) are read at scrape time by the
//! components' own collectors, which `app` registers; this module knows none of them, and gives
//! them [`gauge`] and [`counter`] to write their numbers with.

use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: &'static str,
}

/// Which listener a connection came in on: `api` (`PORT`) or `metrics` (`METRICS_ADDR`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

/// Why a connection was closed to stay under the connection cap, on which listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    pub listener: &'static str,
    pub reason: &'static str,
}

/// The `method` label: one of the methods the service knows, else `other`, so that a client
/// inventing method names cannot add label values (each is a series kept for the process's life).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event_type: &'static str,
    pub severity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: &'static str,
}

/// The user store's Postgres pool, as named in `pool="..."` and in `db_pool_users_*`.
pub const POOL_USERS: &str = "users";
/// The security log's Postgres pool (`db_pool_security_log_*`).
pub const POOL_SECURITY_LOG: &str = "security_log";

fn pool_wait_histogram() -> Histogram {
    // 10 us .. ~5.2 s: an idle connection is handed over after one ping (sub-millisecond
    // locally), a new one takes a connect (milliseconds), and the default acquire timeout is 3 s.
    Histogram::new(exponential_buckets(0.00001, 2.0, 20))
}

/// The handles one pool observes into on every acquire, cloned out of the families once (at
/// construction) so an acquire costs no label lookup. Unregistered ones (CLI commands, tools)
/// count into handles nobody scrapes.
#[derive(Clone, Debug)]
pub struct PoolMetrics {
    /// Seconds from asking the pool for a connection to getting one.
    pub wait_seconds: Histogram,
    /// Acquires that got no connection: pool timeout, pool closed, a new connection that could
    /// not open, or a wait its caller abandoned.
    pub errors: Counter,
}

impl PoolMetrics {
    /// Handles that belong to no registry.
    pub fn unregistered() -> Self {
        Self {
            wait_seconds: pool_wait_histogram(),
            errors: Counter::default(),
        }
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Clone)]
pub struct Metrics {
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
    pub security_events: Family<EventLabels, Counter>,
    pub auth_outcomes: Family<OutcomeLabels, Counter>,
    pub log_batch_seconds: Histogram,
    pub hash_wait_seconds: Histogram,
    pub db_pool_acquire_wait: Family<PoolLabels, Histogram>,
    pub db_pool_acquire_errors: Family<PoolLabels, Counter>,
    pub redis_errors: Counter,
    /// Connections open now, by listener.
    pub http_connections_open: Family<ListenerLabels, Gauge>,
    /// Connections closed to stay under the connection cap, by [`ShedLabels`].
    pub http_connections_shed: Family<ShedLabels, Counter>,
    /// Connections closed because no complete request head came in time, by listener.
    pub http_connections_timed_out: Family<ListenerLabels, Counter>,
    /// Accepts that failed for want of resources (file descriptors), by listener.
    pub http_accept_errors: Family<ListenerLabels, Counter>,
    /// Access re-checks made by open admin event streams.
    pub event_stream_rechecks: Counter,
    /// Anomaly rules that fired, by rule.
    pub anomalies: Family<RuleLabels, Counter>,
    /// Security events the anomaly rules did not see: they fell too far behind the log.
    pub anomaly_events_missed: Counter,
}

/// One listener's connection handles, cloned out of the families once (at the listener's start,
/// so its series are scraped from then on, at zero).
#[derive(Clone, Debug)]
pub struct ConnectionMetrics {
    pub open: Gauge,
    pub timed_out: Counter,
    pub accept_errors: Counter,
    /// Displaced at `MAX_CONNECTIONS` (`reason="idle"`).
    pub shed_idle: Counter,
    /// Refused at `MAX_CONNECTIONS`, every connection busy (`reason="refused"`).
    pub shed_refused: Counter,
    /// Displaced among one address's at `MAX_CONNECTIONS_PER_IP` (`reason="ip_idle"`).
    pub shed_ip_idle: Counter,
    /// Refused at `MAX_CONNECTIONS_PER_IP`, every connection of that address busy
    /// (`reason="ip_refused"`).
    pub shed_ip_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            security_events: Family::default(),
            auth_outcomes: Family::default(),
            log_batch_seconds: latency_histogram(),
            hash_wait_seconds: latency_histogram(),
            db_pool_acquire_wait: Family::new_with_constructor(pool_wait_histogram),
            db_pool_acquire_errors: Family::default(),
            redis_errors: Counter::default(),
            http_connections_open: Family::default(),
            http_connections_shed: Family::default(),
            http_connections_timed_out: Family::default(),
            http_accept_errors: Family::default(),
            event_stream_rechecks: Counter::default(),
            anomalies: Family::default(),
            anomaly_events_missed: Counter::default(),
        }
    }
}

impl Metrics {
    /// The handles of the pool `pool` (creating its series, so they are scraped from the start,
    /// at zero, before the first acquire).
    pub fn pool(&self, pool: &'static str) -> PoolMetrics {
        let labels = PoolLabels { pool };
        PoolMetrics {
            wait_seconds: self.db_pool_acquire_wait.get_or_create_owned(&labels),
            errors: self.db_pool_acquire_errors.get_or_create_owned(&labels),
        }
    }

    /// Counts a recorded security event by type and severity, and the auth outcome it stands
    /// for, if any (`security_log` says which).
    pub fn observe_event(
        &self,
        event_type: &'static str,
        severity: &'static str,
        outcome: Option<&'static str>,
    ) {
        self.security_events
            .get_or_create(&EventLabels {
                event_type,
                severity,
            })
            .inc();
        if let Some(outcome) = outcome {
            self.auth_outcomes
                .get_or_create(&OutcomeLabels { outcome })
                .inc();
        }
    }

    /// Counts a request. `route` is a matched route template or `unmatched`, `method` comes from
    /// [`method_label`] and `status` is one the service answered: every label has a small, fixed
    /// set of values whatever the clients send.
    pub fn observe_request(&self, route: &str, method: &'static str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                method,
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                method,
            })
            .observe(seconds);
    }

    /// The connection handles of the listener named `listener` (creating its series).
    pub fn connections(&self, listener: &'static str) -> ConnectionMetrics {
        let by_listener = ListenerLabels { listener };
        let shed = |reason| {
            self.http_connections_shed
                .get_or_create_owned(&ShedLabels { listener, reason })
        };
        ConnectionMetrics {
            open: self.http_connections_open.get_or_create_owned(&by_listener),
            timed_out: self
                .http_connections_timed_out
                .get_or_create_owned(&by_listener),
            accept_errors: self.http_accept_errors.get_or_create_owned(&by_listener),
            shed_idle: shed("idle"),
            shed_refused: shed("refused"),
            shed_ip_idle: shed("ip_idle"),
            shed_ip_refused: shed("ip_refused"),
        }
    }

    /// The registry to scrape: these handles, then `collectors`, the components' levels read at
    /// scrape time.
    pub fn registry(&self, collectors: Vec<Box<dyn Collector>>) -> Registry {
        let mut r = Registry::with_prefix("flux_auth");
        r.register(
            "http_requests",
            "HTTP requests by matched route, method and status",
            self.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            self.http_duration.clone(),
        );
        r.register(
            "security_events",
            "Security events recorded, by type and severity",
            self.security_events.clone(),
        );
        r.register(
            "auth_outcomes",
            "Auth outcomes: signups, logins, refreshes, reuse, lockouts, rate limits",
            self.auth_outcomes.clone(),
        );
        r.register(
            "security_log_batch_duration_seconds",
            "Time to write one batch of security events",
            self.log_batch_seconds.clone(),
        );
        r.register(
            "password_hash_wait_seconds",
            "Time a password hash waited for a worker",
            self.hash_wait_seconds.clone(),
        );
        r.register(
            "db_pool_acquire_wait_seconds",
            "Time a query waited for a connection from the database pool",
            self.db_pool_acquire_wait.clone(),
        );
        r.register(
            "db_pool_acquire_errors",
            "Database pool acquires that got no connection (timeout, closed, connect failed, abandoned)",
            self.db_pool_acquire_errors.clone(),
        );
        r.register(
            "redis_errors",
            "Redis operations that failed or timed out",
            self.redis_errors.clone(),
        );
        r.register(
            "http_connections_open",
            "HTTP connections open now, by listener (api: PORT; metrics: METRICS_ADDR)",
            self.http_connections_open.clone(),
        );
        r.register(
            "http_connections_shed",
            "HTTP connections closed to stay under MAX_CONNECTIONS: the one waiting longest for a request displaced by a new one (idle), or the new one when every connection was serving a request (refused); the same among one address's connections under MAX_CONNECTIONS_PER_IP (ip_idle, ip_refused)",
            self.http_connections_shed.clone(),
        );
        r.register(
            "http_connections_timed_out",
            "HTTP connections closed because no complete request head came within HEADER_READ_TIMEOUT_MS (slow clients and idle keep-alive connections)",
            self.http_connections_timed_out.clone(),
        );
        r.register(
            "http_accept_errors",
            "Connection accepts that failed for want of resources (file descriptors); retried after a pause",
            self.http_accept_errors.clone(),
        );
        r.register(
            "admin_event_stream_rechecks",
            "Access re-checks made by open admin event streams (each stream every EVENT_STREAM_RECHECK_MS)",
            self.event_stream_rechecks.clone(),
        );
        r.register(
            "anomalies",
            "Anomaly rules that fired (each once per window and key), by rule",
            self.anomalies.clone(),
        );
        r.register(
            "anomaly_events_missed",
            "Security events the anomaly rules skipped because they fell too far behind the log",
            self.anomaly_events_missed.clone(),
        );
        for collector in collectors {
            r.register_collector(collector);
        }
        r
    }
}

/// A gauge of one value, written under `name` (the registry's prefix before it).
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A counter of one value, written under `name` (the registry's prefix before it).
pub fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// The process's own levels: resident memory and uptime.
#[derive(Debug)]
pub struct ProcessCollector {
    pub started: Instant,
}

/// Resident set size from /proc (Linux); 0 elsewhere.
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .unwrap_or(0);
    pages * 4096
}

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        gauge(
            &mut e,
            "process_resident_memory_bytes",
            "Resident memory",
            resident_bytes() as f64,
        )?;
        gauge(
            &mut e,
            "process_uptime_seconds",
            "Seconds since start",
            self.started.elapsed().as_secs_f64(),
        )
    }
}
