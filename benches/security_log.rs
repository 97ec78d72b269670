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

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flux_auth::app::App;
use flux_auth::config::{Durability, Settings, StorageKind, Switch};
use flux_auth::db::Database;
use flux_auth::domain::ClientInfo;
use flux_auth::metrics::Metrics;
use flux_auth::security_log::event::{RequestContext, metadata_json};
use flux_auth::security_log::logger::{Envelope, mirror};
use flux_auth::security_log::postgres_sink::PgSink;
use flux_auth::security_log::spool::Spool;
use flux_auth::security_log::writer::{SPOOL_BATCH_MAX, Writer};
use flux_auth::security_log::{EventType, PipelineStats, SecurityEvent, SecurityLogger};
use secrecy::SecretString;
use sqlx::{Connection, PgConnection};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The allocator the service ships with (src/main.rs): with glibc malloc, events allocated on a
/// request's worker and freed on the writer's made arena contention part of what was measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 500;
const UA: &str =
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A scratch folder on the real disk (`target/tmp`), so fsync costs what it costs.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An event as a login produces it: request context, user, email; ids and times fresh.
fn sample_event(i: usize) -> SecurityEvent {
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

fn batch_of(n: usize) -> Vec<SecurityEvent> {
    (0..n).map(sample_event).collect()
}

fn batch(start: usize) -> Vec<SecurityEvent> {
    (start..start + BATCH).map(sample_event).collect()
}

// ---- record() ---------------------------------------------------------------------------------

/// The service's JSON log subscriber and log writer thread (`telemetry::init`), writing to
/// nowhere: the formatting of every log line and its handover to the writer thread are paid, the
/// pipe to a log shipper is not. Lines are written while the returned output lives.
fn production_subscriber() -> (
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

fn bench_record(c: &mut Criterion) {
    let rt = runtime();
    let dir = scratch_dir("record");
    let spool = Arc::new(Spool::open(&dir).unwrap());
    let capacity = 8192;
    let (tx, mut rx) = mpsc::channel::<Envelope>(capacity);
    let logger = SecurityLogger::new(
        tx,
        spool,
        Arc::new(PipelineStats::default()),
        Durability::Async,
        capacity,
        "postgresql",
        Metrics::default(),
    )
    .unwrap();
    let templates: Vec<SecurityEvent> = (0..1024).map(sample_event).collect();
    // Times `iters` calls in chunks that fit the queue; the queue is emptied between chunks,
    // outside the timing, as the writer would.
    let mut run = |iters: u64| {
        let mut total = Duration::ZERO;
        let mut left = iters as usize;
        while left > 0 {
            let n = left.min(capacity / 2);
            let events: Vec<SecurityEvent> = (0..n)
                .map(|i| templates[i % templates.len()].clone())
                .collect();
            total += rt.block_on(async {
                let started = Instant::now();
                for event in events {
                    logger.record(event).await;
                }
                started.elapsed()
            });
            while rx.try_recv().is_ok() {}
            left -= n;
        }
        total
    };
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1));
    group.bench_function("async, no log subscriber", |b| b.iter_custom(&mut run));
    let (subscriber, _log) = production_subscriber();
    tracing::subscriber::with_default(subscriber, || {
        group.bench_function("async, JSON log subscriber installed", |b| {
            b.iter_custom(&mut run)
        });
        // What the writer pays per event for the log-line mirror.
        group.bench_function("the event's JSON log line (writer side)", |b| {
            let event = sample_event(0);
            b.iter(|| mirror(&event))
        });
    });
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

// ---- the spool --------------------------------------------------------------------------------

fn bench_spool(c: &mut Criterion) {
    let dir = scratch_dir("spool");
    let spool = Spool::open(&dir).unwrap();
    let events = batch(0);
    let mut group = c.benchmark_group("spool");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("serialise 500 to JSON lines (no I/O)", |b| {
        b.iter(|| {
            let mut buf = Vec::with_capacity(BATCH * 1024);
            for event in &events {
                serde_json::to_writer(&mut buf, event).unwrap();
                buf.push(b'\n');
            }
            buf
        })
    });
    let line_bytes: usize = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap().len() + 1)
        .sum();
    println!(
        "spool: a batch of {BATCH} is {line_bytes} bytes ({} per event)",
        line_bytes / BATCH
    );
    group.bench_function("append 500 + fdatasync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let started = Instant::now();
                spool.append(&events).unwrap();
                total += started.elapsed();
                // Keep the disk footprint small: start over every 200 batches (untimed).
                if i % 200 == 199 {
                    spool.seal();
                    for file in spool.all_files().unwrap() {
                        spool.remove(&file).unwrap();
                    }
                }
            }
            total
        })
    });
    let big = batch_of(SPOOL_BATCH_MAX);
    group.throughput(Throughput::Elements(SPOOL_BATCH_MAX as u64));
    group.bench_function(
        format!("append {SPOOL_BATCH_MAX} + fdatasync (the writer's spool batch cap)"),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let started = Instant::now();
                    spool.append(&big).unwrap();
                    total += started.elapsed();
                    if i % 25 == 24 {
                        spool.seal();
                        for file in spool.all_files().unwrap() {
                            spool.remove(&file).unwrap();
                        }
                    }
                }
                total
            })
        },
    );
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
    sustained_spool();
}

/// The real writer with the spool as its sink (no database): 200,000 events sent into its queue
/// as fast as the queue takes them, timed until the last one is durable (appended and fsynced).
fn sustained_spool() {
    const N: u64 = 200_000;
    let rt = runtime();
    for round in 1..=3 {
        let dir = scratch_dir("spool-sustained");
        let stats = Arc::new(PipelineStats::default());
        let (tx, rx) = mpsc::channel::<Envelope>(8192);
        let writer = Writer {
            rx,
            sink: None,
            spool: Arc::new(Spool::open(&dir).unwrap()),
            stats: stats.clone(),
            batch_size: BATCH,
            linger: Duration::from_millis(5),
            spool_max_bytes: u64::MAX,
            metrics: Metrics::default(),
            wake: Arc::default(),
        };
        let templates: Vec<SecurityEvent> = (0..1024).map(sample_event).collect();
        let elapsed = rt.block_on(async {
            let stop = CancellationToken::new();
            let handle = tokio::spawn(writer.run(stop.clone()));
            let started = Instant::now();
            for i in 0..N as usize {
                let event = templates[i % templates.len()].clone();
                tx.send(Envelope { event, ack: None }).await.unwrap();
            }
            while stats.written.load(Ordering::Relaxed) < N {
                tokio::task::yield_now().await;
            }
            let elapsed = started.elapsed();
            stop.cancel();
            handle.await.unwrap();
            elapsed
        });
        println!(
            "spool: sustained through the writer (round {round}): {N} events durable in {elapsed:?} = {:.0} events/s, {} fsynced appends",
            N as f64 / elapsed.as_secs_f64(),
            stats.batches.load(Ordering::Relaxed),
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

// ---- Postgres ---------------------------------------------------------------------------------

fn admin_url() -> String {
    std::env::var("BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A scratch database with the service's migrations, dropped by `drop_database`.
struct BenchDb {
    name: String,
    url: String,
    db: Database,
}

async fn create_database() -> Option<BenchDb> {
    let admin = admin_url();
    let mut conn = match PgConnection::connect(&admin).await {
        Ok(conn) => conn,
        Err(e) => {
            eprintln!("!!! SKIPPED the Postgres benchmarks: no Postgres at {admin} ({e})");
            return None;
        }
    };
    let name = format!("flux_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let db = Database::connect_lazy(&SecretString::from(url.clone()), 4, Duration::from_secs(5))
        .unwrap();
    db.migrate().await.unwrap();
    Some(BenchDb { name, url, db })
}

async fn drop_database(bench: BenchDb) {
    bench.db.pool.close().await;
    if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            bench.name
        )))
        .execute(&mut conn)
        .await;
    }
}

const COPY_SQL: &str = "COPY security_events \
    (id, event_type, severity, user_id, token_id, ip_address, user_agent, metadata, created_at) \
    FROM STDIN (FORMAT csv)";

fn csv_field(out: &mut String, value: Option<&str>) {
    if let Some(value) = value {
        out.push('"');
        for c in value.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    }
}

/// The batch as COPY's CSV (NULL is an unquoted empty field).
fn to_csv(events: &[SecurityEvent]) -> String {
    let mut out = String::with_capacity(events.len() * 700);
    for e in events {
        out.push_str(&e.id.to_string());
        out.push(',');
        out.push_str(e.event_type.as_str());
        out.push(',');
        out.push_str(e.severity.as_str());
        out.push(',');
        csv_field(&mut out, e.user_id.as_deref());
        out.push(',');
        if let Some(token) = e.token_id {
            out.push_str(&token.to_string());
        }
        out.push(',');
        csv_field(&mut out, e.ip_address.as_deref());
        out.push(',');
        csv_field(&mut out, e.user_agent.as_deref());
        out.push(',');
        csv_field(&mut out, Some(&metadata_json(e)));
        out.push(',');
        out.push_str(&e.created_at.to_rfc3339());
        out.push('\n');
    }
    out
}

async fn insert_unnest(sink: &PgSink, events: &[SecurityEvent]) {
    let refs: Vec<&SecurityEvent> = events.iter().collect();
    let n = sink.insert(&refs).await.unwrap();
    assert_eq!(n, events.len() as u64);
}

async fn insert_copy(db: &Database, events: &[SecurityEvent]) {
    let mut conn = db.pool.acquire().await.unwrap();
    let mut copy = conn.copy_in_raw(COPY_SQL).await.unwrap();
    copy.send(to_csv(events).into_bytes()).await.unwrap();
    let n = copy.finish().await.unwrap();
    assert_eq!(n, events.len() as u64);
}

async fn truncate(db: &Database) {
    sqlx::query("TRUNCATE security_events")
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn rows(db: &Database) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM security_events")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn bench_postgres(c: &mut Criterion) {
    let rt = runtime();
    let Some(bench) = rt.block_on(create_database()) else {
        return;
    };
    let sink = PgSink {
        db: bench.db.clone(),
    };
    let mut next = 0usize;
    let mut fresh = || {
        next += BATCH;
        batch(next)
    };
    let mut group = c.benchmark_group("postgres");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(10));

    rt.block_on(truncate(&bench.db));
    group.bench_function("PgSink::insert (UNNEST) 500", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let events = fresh();
                total += rt.block_on(async {
                    let started = Instant::now();
                    insert_unnest(&sink, &events).await;
                    started.elapsed()
                });
            }
            total
        })
    });
    let unnest_rows = rt.block_on(rows(&bench.db));

    rt.block_on(truncate(&bench.db));
    group.bench_function("COPY csv 500 (baseline)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let events = fresh();
                total += rt.block_on(async {
                    let started = Instant::now();
                    insert_copy(&bench.db, &events).await;
                    started.elapsed()
                });
            }
            total
        })
    });
    let copy_rows = rt.block_on(rows(&bench.db));
    group.finish();
    println!("postgres: the table held {unnest_rows} rows after UNNEST, {copy_rows} after COPY");

    // Sustained and interleaved: batch by batch on one growing table, so both see the same
    // table size, cache and background load.
    rt.block_on(async {
        truncate(&bench.db).await;
        let batches = 400;
        let (mut unnest, mut copy) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..batches {
            let events = fresh();
            let started = Instant::now();
            insert_unnest(&sink, &events).await;
            unnest += started.elapsed();
            let events = fresh();
            let started = Instant::now();
            insert_copy(&bench.db, &events).await;
            copy += started.elapsed();
        }
        let per_sec = |d: Duration| (batches * BATCH) as f64 / d.as_secs_f64();
        let (u, c) = (per_sec(unnest), per_sec(copy));
        println!(
            "postgres sustained, interleaved, {} events each into one table of {} rows: \
             UNNEST {u:.0} events/s, COPY {c:.0} events/s, UNNEST/COPY {:.0}%",
            batches * BATCH,
            rows(&bench.db).await,
            100.0 * u / c
        );
    });
    rt.block_on(drop_database(bench));
}

// ---- the request path: sync vs async ----------------------------------------------------------

/// flux-auth on a loopback port, on a runtime of its own, with its events in `events_url`.
struct Served {
    base: String,
    stop: CancellationToken,
    runtime: Runtime,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

fn serve(events_url: &str, durability: Durability) -> Served {
    let runtime = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let settings = Settings {
        host: "127.0.0.1".parse().unwrap(),
        port: 0,
        jwt_secret: Some(SecretString::from(
            "bench-secret-5f0c1f2e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
        )),
        data_dir: dir.path().join("data"),
        storage: Some(StorageKind::File),
        security_log_database_url: Some(SecretString::from(events_url.to_owned())),
        security_log_durability: durability,
        rate_limits: Switch::Off,
        // Every request comes from 127.0.0.1, on up to 256 pooled connections and more while
        // requests queue.
        max_connections_per_ip: 0,
        ..Settings::default()
    };
    let stop = CancellationToken::new();
    let (base, handle) = runtime.block_on(async {
        let app = App::build(settings).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let ready = app.state().security_db.clone().unwrap();
        while !ready.is_ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let handle = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
        (base, handle)
    });
    Served {
        base,
        stop,
        runtime,
        handle,
        _dir: dir,
    }
}

impl Served {
    fn shutdown(self) {
        self.stop.cancel();
        self.runtime.block_on(self.handle).unwrap().unwrap();
    }
}

/// `GET /me` answered 401. With a malformed bearer token the service records one
/// `token_verification_failed`; with no token at all it records nothing on the same route, the
/// same extractor and the same error path — the "recording off" side of the comparison.
async fn unauthorized_me(client: &reqwest::Client, base: &str, records_event: bool) {
    let mut request = client
        .get(format!("{base}/api/auth/me"))
        .header("user-agent", UA);
    if records_event {
        request = request.bearer_auth("not-a.real.token");
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    let _ = response.bytes().await.unwrap();
}

/// Rows into the same table from outside the service, while a recording-off point runs: the
/// database's part of recording without the service's. One connection on a thread of its own,
/// `rows` rows every `every` (the writer's shape at 2,000 events/s with the default linger: a
/// batch of 4-5 events about every 2.3 ms, from `pg_stat_database` during a run), each row the
/// size of the event a bad token records, sent once per batch with only the ids per row, so that
/// the client does next to nothing. Stops, and joins, when `stop` is set.
fn database_load(
    url: String,
    rows: usize,
    every: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let ctx = RequestContext {
        request_id: uuid::Uuid::new_v4().to_string(),
        route: "/api/auth/me".into(),
        method: "GET".into(),
        client: ClientInfo::new([127, 0, 0, 1].into(), Some(UA.into()), None),
    };
    let event = SecurityEvent::from_request(EventType::TokenVerificationFailed, &ctx)
        .reason("malformed")
        .with("tokenKind", "access");
    let metadata = metadata_json(&event);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            let start = Instant::now();
            let mut tick = 0u32;
            while !stop.load(Ordering::Relaxed) {
                tick += 1;
                if let Some(wait) = (start + every * tick).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                // Time-ordered ids, as the service makes them: random ones would spread the
                // primary key's inserts over its pages.
                let ids: Vec<uuid::Uuid> = (0..rows).map(|_| uuid::Uuid::now_v7()).collect();
                sqlx::query(
                    "INSERT INTO security_events \
                       (id, event_type, severity, user_id, token_id, ip_address, user_agent, metadata, created_at) \
                     SELECT id, $1, $2, NULL, NULL, $3, $4, $5::jsonb, now() \
                     FROM UNNEST($6::uuid[]) AS id ON CONFLICT (id) DO NOTHING",
                )
                .bind(event.event_type.as_str())
                .bind(event.severity.as_str())
                .bind(event.ip_address.as_deref())
                .bind(event.user_agent.as_deref())
                .bind(&metadata)
                .bind(&ids)
                .execute(&mut conn)
                .await
                .unwrap();
            }
            let _ = conn.close().await;
        });
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Requests at a fixed rate for `duration`, each timed from when it was due (so a stall counts
/// against every request it delays); returns the sorted latencies. The pacing runs on a thread
/// of its own sleeping with the OS's timer: tokio's timer ticks in milliseconds, so sleeping on it
/// would release the requests two at a time on the tick, up to 1 ms after they were due, and that
/// lateness (about 1 ms, next to a median of 1.2 ms) would count as latency.
async fn paced(
    client: &reqwest::Client,
    base: &str,
    records_event: bool,
    rate: u32,
    duration: Duration,
) -> Vec<Duration> {
    let interval = Duration::from_secs(1) / rate;
    let total = (duration.as_secs_f64() * f64::from(rate)) as u32;
    let (client, base) = (client.clone(), base.to_owned());
    let runtime = tokio::runtime::Handle::current();
    let tasks = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let due = start + interval * i;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let (client, base) = (client.clone(), base.clone());
            tasks.push(runtime.spawn(async move {
                unauthorized_me(&client, &base, records_event).await;
                due.elapsed()
            }));
        }
        tasks
    })
    .await
    .unwrap();
    let mut latencies = Vec::with_capacity(tasks.len());
    for task in tasks {
        latencies.push(task.await.unwrap());
    }
    latencies.sort();
    latencies
}

fn bench_request(c: &mut Criterion) {
    // As in production: every request formats its log line, and the writer every event's mirror
    // line. Global, so the server's runtimes see it; this group runs last.
    let (subscriber, _log) = production_subscriber();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let rt = runtime();
    let Some(bench) = rt.block_on(create_database()) else {
        return;
    };
    let servers = [
        ("async", serve(&bench.url, Durability::Async)),
        ("sync", serve(&bench.url, Durability::Sync)),
    ];
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(1));
    for (label, server) in &servers {
        group.bench_function(format!("GET /me bad token, {label}, one at a time"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        unauthorized_me(&client, &server.base, true).await;
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();

    // Open loop at 2,000 requests/s, 5 s per point. The on/off points alternate over twelve
    // rounds (`SECURITY_LOG_BENCH_ROUNDS`) so drift hits both sides alike; the sync points come
    // after them, because a sync run leaves Postgres busy with its aftermath (many small
    // commits: WAL, autovacuum), which must not land on whichever point happens to follow it.
    // "off": the same route and 401 without an event (no token).
    // "control" is the off point again, later in the same round: how far two identical points
    // drift apart on this machine, i.e. the resolution of the on/off ratio.
    let rate = 2000;
    // "database busy": the off point while the same rows go into the same table from another
    // connection (`database_load`): what the database's work costs the requests on shared cores,
    // with none of the service's part of recording.
    let points = [
        ("async, recording off", 0, false),
        ("async, recording on", 0, true),
        ("async, recording off (control)", 0, false),
        ("async, recording off, database busy", 0, false),
        ("sync, recording on", 1, true),
    ];
    // `cargo test --all-targets` runs this once without `--bench`: one short round checks that it
    // works without spending a minute of CI on numbers nobody reads.
    let measuring = std::env::args().any(|a| a == "--bench");
    let (rounds, sync_rounds, point) = if measuring {
        let rounds = std::env::var("SECURITY_LOG_BENCH_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(12);
        (rounds, 3, Duration::from_secs(5))
    } else {
        (1, 1, Duration::from_secs(1))
    };
    // The rounds go through the orders of the four async points of a 4x4 Latin square whose
    // every point follows every other once, so each point comes first, second, third and last
    // equally often, and after each of the others equally often; in one fixed order "off" would
    // always come first and "control" always right after "on" and its inserts.
    const ORDERS: [[usize; 4]; 4] = [[0, 1, 2, 3], [1, 3, 0, 2], [2, 0, 3, 1], [3, 2, 1, 0]];
    let schedule = (0..rounds)
        .flat_map(|round| ORDERS[round % ORDERS.len()].map(|i| (round, points[i])))
        .chain((0..sync_rounds).map(|round| (round, points[4])));
    let mut results: Vec<(&str, Vec<Duration>)> = Vec::new();
    for (round, (label, server, records_event)) in schedule {
        let base = &servers[server].1.base;
        let busy = label.ends_with("database busy").then(|| {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            // 5 rows each time, as often as makes `rate` rows a second (every 2.5 ms at 2,000).
            let every = Duration::from_secs(5) / rate;
            let load = database_load(bench.url.clone(), 5, every, stop.clone());
            (stop, load)
        });
        let latencies = rt.block_on(paced(&client, base, records_event, rate, point));
        if let Some((stop, load)) = busy {
            stop.store(true, Ordering::Relaxed);
            load.join().unwrap();
        }
        println!(
            "request: {rate}/s GET /me 401, {label} (round {}): n {} p50 {:?} p99 {:?} p99.9 {:?} max {:?}",
            round + 1,
            latencies.len(),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            percentile(&latencies, 0.999),
            latencies.last().unwrap(),
        );
        results.push((label, latencies));
    }
    let mut p99 = std::collections::HashMap::new();
    for (label, _, _) in points {
        let mut all: Vec<Duration> = results
            .iter()
            .filter(|(l, _)| *l == label)
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        all.sort();
        p99.insert(label, percentile(&all, 0.99));
        println!(
            "request: {rate}/s GET /me 401, {label}, all rounds: p50 {:?} p99 {:?} p99.9 {:?}",
            percentile(&all, 0.50),
            percentile(&all, 0.99),
            percentile(&all, 0.999),
        );
    }
    let (on, off) = (p99["async, recording on"], p99["async, recording off"]);
    let control = p99["async, recording off (control)"];
    let busy = p99["async, recording off, database busy"];
    // Both off points are the same measurement: together they are the better estimate of it.
    let mut both_off: Vec<Duration> = results
        .iter()
        .filter(|(l, _)| {
            matches!(
                *l,
                "async, recording off" | "async, recording off (control)"
            )
        })
        .flat_map(|(_, v)| v.iter().copied())
        .collect();
    both_off.sort();
    println!(
        "request: p99 recording on / off = {:.3} (target <= 1.10); control / off = {:.3} (the same point twice); on / both off points = {:.3}",
        on.as_secs_f64() / off.as_secs_f64(),
        control.as_secs_f64() / off.as_secs_f64(),
        on.as_secs_f64() / percentile(&both_off, 0.99).as_secs_f64()
    );
    println!(
        "request: p99 database busy / off = {:.3} (the database's work alone); on / database busy = {:.3} (the service's part)",
        busy.as_secs_f64() / off.as_secs_f64(),
        on.as_secs_f64() / busy.as_secs_f64(),
    );
    // Each round's pair side by side: one stalled 5 s window moves the pooled p99 by itself.
    let p99_of = |label: &str| -> Vec<f64> {
        results
            .iter()
            .filter(|(l, _)| *l == label)
            .map(|(_, v)| percentile(v, 0.99).as_secs_f64())
            .collect()
    };
    for (label, of) in [
        ("on / off", "async, recording on"),
        ("control / off", "async, recording off (control)"),
        ("database busy / off", "async, recording off, database busy"),
    ] {
        let mut ratios: Vec<f64> = p99_of(of)
            .iter()
            .zip(p99_of("async, recording off"))
            .map(|(a, off)| a / off)
            .collect();
        let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "request: p99 {label} per round: {}; median {:.3}",
            listed.join(" "),
            ratios[ratios.len() / 2]
        );
    }
    for (_, server) in servers {
        server.shutdown();
    }
    rt.block_on(drop_database(bench));
}

criterion_group!(
    benches,
    bench_record,
    bench_spool,
    bench_postgres,
    bench_request
);
criterion_main!(benches);
