//! flux-auth: FluxStudio's authentication service, as a library so tests start the real app.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

/// Alerts: rule firings and severe events posted, signed, to webhooks through the outbox.
pub mod alerts;
/// Anomaly rules over the security events: credential stuffing, bursts, token theft, new devices.
pub mod anomaly;
/// `Core` and `App`: build the state, bind, serve, drain.
pub mod app;
/// The service layer: passwords, tokens, revocation, the auth flows.
pub mod auth;
/// Scheduled deletion of ended sessions and expired security events.
pub mod cleanup;
/// The command line.
pub mod cli;
/// "Now", injectable so tests move time instead of sleeping.
pub mod clock;
/// Typed settings from defaults, `config/default.toml` and env.
pub mod config;
/// The admin security dashboard (`/admin`), embedded in the binary.
pub mod dashboard;
/// The Postgres database handle: pool, connection checks, circuit, migrations.
pub mod db;
/// Value types with no I/O.
pub mod domain;
/// Crash-safe file replacement and private folders.
pub mod durable_file;
/// `ApiError`: failures to status codes and the Error JSON.
pub mod error;
/// The axum edge: routes, extractors, middleware.
pub mod http;
/// Abuse protection (Redis).
pub mod limits;
/// Prometheus metrics.
/// Mail: templates, SMTP or `.eml` transport, and the outbox's sender.
pub mod mail;
pub mod metrics;
/// The shared Redis connection and its up/down state.
pub mod redis_link;
/// The security-event pipeline.
pub mod security_log;
/// The HTTP/1.1 server loop: head timeout, head size, connection cap, drain.
pub mod server;
/// SIGINT / SIGTERM.
pub mod shutdown;
/// `AppState`: what every handler shares.
pub mod state;
/// Users and sessions behind one trait: Postgres or JSON files.
pub mod store;
/// systemd readiness notifications.
pub mod systemd;
/// The tracing subscriber.
pub mod telemetry;
