//! `flux-load alert-latency`: the time from the N-th credential-stuffing attempt to a webhook
//! receiver getting the alert. A receiver of this process's (axum, loopback) notes when each
//! alert arrives; the release flux-auth posts its alerts there. Each round sends failed logins
//! for N distinct new accounts from a new address (`X-Forwarded-For`, loopback trusted), N being
//! the rule's threshold, and measures from the N-th request's answer (and from its sending) to
//! the alert's arrival. The stores' rounds alternate (A then B, then B then A), and a baseline in
//! the same rounds times a bare POST from this process to the receiver: the transport's own
//! share. Prints a Markdown table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::http::{Call, Conn};
use crate::server::{BenchDb, Server, ServerLogs, ServerSpec, StoreKind};

pub struct AlertLatencyArgs {
    pub server: PathBuf,
    pub postgres_url: String,
    pub stores: Vec<StoreKind>,
    pub rounds: usize,
    pub threshold: u32,
}

/// When each alert (by its `key`: the attacking address) arrived.
#[derive(Default)]
struct Arrivals {
    seen: Mutex<HashMap<String, Instant>>,
    notify: Notify,
}

async fn receive(State(arrivals): State<Arc<Arrivals>>, body: Bytes) -> &'static str {
    let at = Instant::now();
    let key = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["key"].as_str().map(str::to_owned));
    if let Some(key) = key {
        arrivals
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_insert(at);
        arrivals.notify.notify_waiters();
    }
    "ok"
}

impl Arrivals {
    /// When the alert about `key` arrived; `None` after 10 s.
    async fn wait(&self, key: &str) -> Option<Instant> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.notify.notified();
            if let Some(at) = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(key)
            {
                return Some(*at);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

/// The round's samples of one series, in milliseconds.
#[derive(Default)]
struct Series {
    from_answer: Vec<f64>,
    from_send: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn row(name: &str, samples: &[f64]) -> String {
    if samples.is_empty() {
        return format!("| {name} | 0 | – | – | – | – | – |");
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        sorted.len(),
        sorted[0],
        percentile(&sorted, 50.0),
        percentile(&sorted, 90.0),
        percentile(&sorted, 99.0),
        sorted[sorted.len() - 1]
    )
}

pub async fn run(args: AlertLatencyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rounds > 0 && args.threshold > 0 && !args.stores.is_empty(),
        "give at least one round, a threshold of 1 or more and a store"
    );
    let arrivals = Arc::new(Arrivals::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver: SocketAddr = listener.local_addr()?;
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(arrivals.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let work = std::env::temp_dir().join(format!("flux-load-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&work)?;
    let env = vec![
        (
            "ALERT_WEBHOOK_URLS".into(),
            format!("http://{receiver}/hook"),
        ),
        (
            "ALERT_WEBHOOK_SECRET".into(),
            "flux-load-alert-secret-3f9a1c7e5b2d8f4a6c0e1b9d7f5a3c1e".into(),
        ),
        ("TRUSTED_PROXIES".into(), "127.0.0.1/32".into()),
        (
            "ANOMALY_CREDENTIAL_STUFFING_THRESHOLD".into(),
            args.threshold.to_string(),
        ),
        // Only the stuffing rule: every round's failures would otherwise add up to a spike.
        ("ANOMALY_LOGIN_FAILURE_SPIKE_FLOOR".into(), "0".into()),
        ("ALERT_MAX_PER_MINUTE".into(), "10000".into()),
    ];
    let mut servers = Vec::new();
    let mut databases = Vec::new();
    for store in &args.stores {
        let db = match store {
            StoreKind::Postgres => Some(BenchDb::create(&args.postgres_url).await?),
            StoreKind::File => None,
        };
        let server = Server::start(&ServerSpec {
            binary: &args.server,
            store: *store,
            database_url: db.as_ref().map(|d| d.url.as_str()),
            redis_url: None,
            env: env.clone(),
            work_dir: &work,
            logs: ServerLogs::Discard,
        })
        .await?;
        servers.push((*store, server));
        databases.extend(db);
    }
    let mut series: Vec<Series> = servers.iter().map(|_| Series::default()).collect();
    let mut baseline = Vec::new();
    let mut missing = 0usize;
    for round in 0..args.rounds {
        let mut order: Vec<usize> = (0..servers.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (_, server) = &servers[i];
            let address = format!("10.{i}.{}.{}", round / 200, round % 200 + 1);
            let mut conn = Conn::open(server.addr).await?;
            let mut sent = Instant::now();
            let mut answered = Instant::now();
            for n in 0..args.threshold {
                let login = Call::post(
                    "/api/auth/login",
                    &json!({
                        "email": format!("victim-{round}-{n}-{}@bench.test", uuid::Uuid::new_v4().simple()),
                        "password": "not-the-password",
                    }),
                )
                .with_client(Some(&address));
                sent = Instant::now();
                conn.send(&login).await?;
                answered = Instant::now();
            }
            match arrivals.wait(&address).await {
                Some(at) => {
                    let ms = |from: Instant| at.saturating_duration_since(from).as_secs_f64() * 1e3;
                    series[i].from_answer.push(ms(answered));
                    series[i].from_send.push(ms(sent));
                }
                None => missing += 1,
            }
        }
        // The baseline: this process posts an alert-sized body to the receiver itself.
        let key = format!("baseline-{round}");
        let body = json!({ "key": key, "summary": "x".repeat(400) });
        let mut conn = Conn::open(receiver).await?;
        let sent = Instant::now();
        conn.send(&Call::post("/hook", &body)).await?;
        if let Some(at) = arrivals.wait(&key).await {
            baseline.push(at.saturating_duration_since(sent).as_secs_f64() * 1e3);
        }
    }
    for (_, server) in servers {
        server.stop().await;
    }
    for db in databases {
        db.drop_now().await;
    }
    let _ = std::fs::remove_dir_all(&work);

    println!(
        "\nalert latency: {} rounds, threshold {} (ms; the stores' rounds alternate)\n",
        args.rounds, args.threshold
    );
    println!("| series | n | min | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|---|");
    for (store, s) in args.stores.iter().zip(&series) {
        println!(
            "{}",
            row(
                &format!("{}: N-th answer → alert", store.name()),
                &s.from_answer
            )
        );
        println!(
            "{}",
            row(
                &format!("{}: N-th sent → alert", store.name()),
                &s.from_send
            )
        );
    }
    println!("{}", row("baseline: bare POST → receiver", &baseline));
    anyhow::ensure!(missing == 0, "{missing} alert(s) never arrived within 10 s");
    Ok(())
}
