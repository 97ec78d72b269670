//! `request`: what `SECURITY_LOG_DURABILITY=sync` costs per request, against async recording and
//! recording off, one request at a time and at a fixed rate.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use flux_auth::app::App;
use flux_auth::config::{Durability, Settings, StorageKind, Switch};
use flux_auth::domain::ClientInfo;
use flux_auth::security_log::event::{RequestContext, metadata_json};
use flux_auth::security_log::{EventType, SecurityEvent};
use secrecy::SecretString;
use sqlx::{Connection, PgConnection};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

use crate::scratch_db::{create_database, drop_database};
use crate::{UA, production_subscriber, runtime};

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

pub fn bench_request(c: &mut Criterion) {
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
