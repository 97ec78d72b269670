//! Security-log benchmarks (BENCHMARKS.md, "Security log"). Run with
//! `cargo bench --bench security_log`; Postgres is `BENCH_DATABASE_URL`, else
//! `TEST_DATABASE_URL`, else postgres://postgres@127.0.0.1:5432/postgres (a scratch database is
//! created next to it and dropped at the end). Without Postgres the database benchmarks are
//! skipped, loudly.
//!
//! - `record`: the request-path cost of `SecurityLogger::record()` (async mode), with no log
//!   subscriber and with the production JSON subscriber installed (writing to a sink); and the
//!   cost of the event's JSON log line itself, which the writer task pays.
//! - `spool`: `Spool::append` of 500-event batches, each written and fdatasync'ed, on the disk
//!   under `target/tmp` (not a tmpfs); and the JSON serialisation of a batch alone.
//! - `postgres`: `PgSink::insert` (one `INSERT … SELECT FROM UNNEST … ON CONFLICT DO NOTHING` per
//!   batch of 500) into the real `security_events` table with its seven indexes, and `COPY … FROM
//!   STDIN (FORMAT csv)` of the same batches into the same table as the baseline; then both again,
//!   interleaved batch by batch on one growing table, as the sustained comparison.
//! - `request`: what `SECURITY_LOG_DURABILITY=sync` costs per request: `GET /api/auth/me` with a
//!   bad token (401 + one `token_verification_failed` event), one request at a time, async vs
//!   sync, in the same run; then both at a fixed 2,000 requests/s with p50/p99 latencies, against
//!   the same route with recording off, twice (the control: what two identical points differ by),
//!   and once more while the same rows go into the same table from another connection ("database
//!   busy": the database's part of recording, so `on / database busy` is the service's part).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod postgres;
mod record;
mod request;
mod scratch_db;
mod spool;

use std::net::IpAddr;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main};
use flux_auth::domain::ClientInfo;
use flux_auth::security_log::event::RequestContext;
use flux_auth::security_log::{EventType, SecurityEvent};
use tokio::runtime::Runtime;

/// The allocator the service ships with (src/main.rs): with glibc malloc, events allocated on a
/// request's worker and freed on the writer's would make arena contention part of what is
/// measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub const BATCH: usize = 500;
pub const UA: &str =
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";

pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A scratch folder on the real disk (`target/tmp`), so fsync costs what it costs.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An event as a login produces it: request context, user, email; ids and times fresh.
pub fn sample_event(i: usize) -> SecurityEvent {
    const TYPES: [EventType; 6] = [
        EventType::LoginSuccess,
        EventType::TokenGenerated,
        EventType::LoginFailed,
        EventType::FailedLoginAttempt,
        EventType::TokenRefreshed,
        EventType::TokenVerificationFailed,
    ];
    let ip: IpAddr = [10, 0, (i / 256 % 256) as u8, (i % 256) as u8].into();
    let ctx = RequestContext {
        request_id: uuid::Uuid::new_v4().to_string(),
        route: "/api/auth/login".into(),
        method: "POST".into(),
        client: ClientInfo::new(ip, Some(UA.into()), Some("en-GB,en;q=0.9".into())),
    };
    SecurityEvent::from_request(TYPES[i % TYPES.len()], &ctx)
        .user(format!("user-{}", i % 1000))
        .email(&format!("user-{}@example.com", i % 1000))
        .token(uuid::Uuid::now_v7())
}

pub fn batch_of(n: usize) -> Vec<SecurityEvent> {
    (0..n).map(sample_event).collect()
}

pub fn batch(start: usize) -> Vec<SecurityEvent> {
    (start..start + BATCH).map(sample_event).collect()
}

/// The service's JSON log subscriber and log writer thread (`telemetry::init`), writing to
/// nowhere: the formatting of every log line and its handover to the writer thread are paid, the
/// pipe to a log shipper is not. Lines are written while the returned output lives.
pub fn production_subscriber() -> (
    impl tracing::Subscriber + Send + Sync,
    flux_auth::telemetry::LogOutput,
) {
    let (writer, output) = flux_auth::telemetry::writer::start(
        std::io::sink(),
        flux_auth::config::LOG_BUFFER_LINES.default,
    )
    .unwrap();
    let subscriber = flux_auth::telemetry::json_subscriber(
        tracing_subscriber::EnvFilter::new(flux_auth::telemetry::DEFAULT_FILTER),
        writer,
    );
    (subscriber, output)
}

criterion_group!(
    benches,
    record::bench_record,
    spool::bench_spool,
    postgres::bench_postgres,
    request::bench_request
);
criterion_main!(benches);
