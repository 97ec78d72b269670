//! Prometheus metrics (prometheus-client, one registry owned by the app state, no globals).
//!
//! Handles (`Metrics`) are cheap clones handed to the components that observe things as they
//! happen: HTTP requests, security events and auth outcomes, security-log batch latency, argon2
//! queue wait, database pool acquire wait, Redis errors. Levels that already live in the
//! components (queue depth, spool backlog, pool connections, memory) are read at scrape time by
//! [`StateCollector`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::db::Database;
use crate::db::circuit::ProbeOutcome;
use crate::security_log::{EventType, PipelineStats, SecurityEvent, SecurityLogger};

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

    /// Counts a recorded security event, and the auth outcome it stands for.
    pub fn observe_event(&self, event: &SecurityEvent) {
        self.security_events
            .get_or_create(&EventLabels {
                event_type: event.event_type.as_str(),
                severity: event.severity.as_str(),
            })
            .inc();
        let outcome = match event.event_type {
            EventType::SignupSuccess => "signup_success",
            EventType::SignupFailed => "signup_failure",
            EventType::LoginSuccess => "login_success",
            EventType::LoginFailed | EventType::FailedLoginAttempt => "login_failure",
            EventType::OauthSuccess => "google_success",
            EventType::OauthFailed => "google_failure",
            EventType::TokenRefreshed => "refresh",
            EventType::TokenReuseDetected => "refresh_reuse_detected",
            EventType::AccountLocked => "lockout",
            EventType::RateLimitExceeded => "rate_limited",
            _ => return,
        };
        self.auth_outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
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

    /// The registry to scrape: these handles plus the levels `collector` reads at scrape time.
    pub fn registry(&self, collector: StateCollector) -> Registry {
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
        r.register_collector(Box::new(collector));
        r
    }
}

/// Reads levels from the running components at scrape time.
pub struct StateCollector {
    pub events: SecurityLogger,
    pub stats: Arc<PipelineStats>,
    pub hashes: Arc<dyn Fn() -> crate::auth::passwords::HashLevels + Send + Sync>,
    pub pools: Vec<(&'static str, Database)>,
    pub redis_up: Option<Arc<crate::limits::RedisLink>>,
    pub revocations: Arc<dyn crate::auth::revocation::RevocationList>,
    pub limits: Arc<crate::limits::Limits>,
    pub user_cache: Option<Arc<crate::store::postgres::user_cache::UserCache>>,
    /// Log lines dropped because stdout could not keep up.
    pub log: crate::telemetry::LogDrops,
    pub started: Instant,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
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

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        gauge(
            &mut e,
            "security_log_queue_depth",
            "Events waiting in memory for the writer",
            self.events.queued() as f64,
        )?;
        gauge(
            &mut e,
            "security_log_spool_backlog_events",
            "Events in spool files waiting for the database",
            s.spool_backlog.load(Ordering::Relaxed).max(0) as f64,
        )?;
        let last = s
            .last_flush()
            .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
        gauge(
            &mut e,
            "security_log_last_flush_timestamp_seconds",
            "When events were last made durable",
            last,
        )?;
        let last_drop = s
            .last_drop()
            .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
        gauge(
            &mut e,
            "security_log_last_drop_timestamp_seconds",
            "When events were last lost (0: never since the start)",
            last_drop,
        )?;
        gauge(
            &mut e,
            "security_log_sink_up",
            "1 while the security log's sink accepts writes",
            f64::from(u8::from(s.sink_healthy.load(Ordering::Relaxed))),
        )?;
        gauge(
            &mut e,
            "security_log_spool_over_cap",
            "1 while the spool exceeds its size cap",
            f64::from(u8::from(s.spool_over_cap.load(Ordering::Relaxed))),
        )?;
        counter(
            &mut e,
            "log_lines_dropped",
            "Log lines dropped because stdout could not keep up",
            self.log.count(),
        )?;
        counter(
            &mut e,
            "security_log_events_written",
            "Events made durable in the sink",
            s.written.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "security_log_batches_written",
            "Batches written to the sink",
            s.batches.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "security_log_events_spooled",
            "Events written to the spool",
            s.spooled.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "security_log_events_replayed",
            "Spooled events replayed into the database",
            s.replayed.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "security_log_events_dropped",
            "Events lost (expected 0: only a failed disk loses events)",
            s.dropped.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "security_log_events_summarized",
            "Refused bearer tokens counted into a per-address summary event instead of recorded one by one",
            s.summarized.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "security_log_db_probes",
            "Times the security-log writer asked its database whether it answers again, after marking it down",
            s.db_probes.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut e,
            "security_log_probe_backoff_seconds",
            "How long the security-log writer waits after its last failed probe before the next (0 while its database takes writes)",
            s.probe_backoff_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        )?;
        counter(
            &mut e,
            "security_log_spool_bad_lines",
            "Spool lines skipped because they did not parse",
            s.bad_spool_lines.load(Ordering::Relaxed),
        )?;
        let hashes = (self.hashes)();
        gauge(
            &mut e,
            "password_hashes_in_flight",
            "Argon2 hashes being computed",
            hashes.in_flight as f64,
        )?;
        gauge(
            &mut e,
            "password_hashes_queued",
            "Argon2 hashes waiting for a worker",
            hashes.queued as f64,
        )?;
        gauge(
            &mut e,
            "password_hash_memory_bytes",
            "Argon2 memory held by the hashing threads (given back after 10 s without a hash)",
            hashes.memory_bytes as f64,
        )?;
        for (pool, db) in &self.pools {
            let size = db.pool.size() as f64;
            let idle = db.pool.num_idle() as f64;
            let name = format!("db_pool_{pool}_connections");
            gauge(&mut e, &name, "Open database connections", size)?;
            gauge(
                &mut e,
                &format!("db_pool_{pool}_idle"),
                "Idle database connections",
                idle,
            )?;
            if let Some(circuit) = db.circuit() {
                gauge(
                    &mut e,
                    &format!("db_{pool}_unreachable"),
                    "1 while the store's probe finds the database unreachable and store calls answer 503 at once",
                    f64::from(u8::from(circuit.is_open())),
                )?;
                counter(
                    &mut e,
                    &format!("db_{pool}_unreachable_episodes"),
                    "Times the store's probe found the database unreachable after it had been reachable",
                    circuit.times_opened(),
                )?;
                counter(
                    &mut e,
                    &format!("db_{pool}_failed_fast"),
                    "Store calls answered 503 at once, without waiting for a connection, because the database was known to be unreachable",
                    circuit.times_failed_fast(),
                )?;
                let name = format!("db_{pool}_probes");
                let mut probes = e.encode_descriptor(
                    &name,
                    "Probes of the database by what they found: answered (a connection answered), refused (the server refused a new connection with an error: reachable), unreachable",
                    None,
                    MetricType::Counter,
                )?;
                for outcome in ProbeOutcome::ALL {
                    ConstCounter::new(circuit.probes(outcome))
                        .encode(probes.encode_family(&[("outcome", outcome.as_str())])?)?;
                }
            }
        }
        if let Some(link) = &self.redis_up {
            gauge(
                &mut e,
                "redis_up",
                "1 while Redis answers",
                f64::from(u8::from(link.is_up())),
            )?;
            gauge(
                &mut e,
                "revocations_mirrored",
                "1 while revocation checks are answered from an in-memory copy kept current from Redis (0: Redis is asked per request)",
                f64::from(u8::from(self.revocations.mirrored())),
            )?;
            gauge(
                &mut e,
                "redis_pending_writes",
                "Revocations and lockouts made while Redis was unreachable, waiting to be copied to it",
                (self.revocations.waiting_for_redis() + self.limits.locks_waiting_for_redis())
                    as f64,
            )?;
        }
        if let Some(cache) = &self.user_cache {
            let stats = cache.stats();
            gauge(
                &mut e,
                "user_cache_following",
                "1 while Postgres's announcements of user changes are followed and users are served from memory (0: read from the database per request)",
                f64::from(u8::from(stats.following)),
            )?;
            gauge(
                &mut e,
                "user_cache_entries",
                "Users kept in memory",
                stats.entries as f64,
            )?;
            counter(
                &mut e,
                "user_cache_hits",
                "User lookups answered from memory",
                stats.hits,
            )?;
            counter(
                &mut e,
                "user_cache_misses",
                "User lookups read from the database while the cache was in use",
                stats.misses,
            )?;
            counter(
                &mut e,
                "user_cache_changes",
                "User changes announced by Postgres (every instance's, the CLI's, direct SQL)",
                stats.changes,
            )?;
            counter(
                &mut e,
                "user_cache_heartbeats_sent",
                "Heartbeats sent on the user change feed (one a second), numbered from 1",
                stats.heartbeats_sent,
            )?;
            gauge(
                &mut e,
                "user_cache_heartbeat_heard",
                "The number of the last heartbeat that came back: every user change committed before it was sent has been heard",
                stats.heartbeat_heard as f64,
            )?;
        }
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
        )?;
        Ok(())
    }
}
