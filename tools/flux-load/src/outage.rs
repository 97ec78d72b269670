//! `flux-load outage`: how the service answers while its database is away. flux-auth runs on
//! Postgres through a TCP relay of this process's own; after a first phase the relay closes every
//! connection and stops listening (a connection is then refused, as when Postgres is stopped),
//! and after a second it listens again. The shared Postgres server itself is never touched.
//! Clients keep a mix of store-needing requests going throughout (a refresh chain and `/me` on
//! one account, logins on another, per client), and each phase reports requests answered per
//! second, status counts, p50/p99 latency of the 503s and of the successes, and the requests
//! that got no answer within the client's timeout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http::{Call, Conn};
use crate::server::{BenchDb, Server, ServerLogs, ServerSpec, StoreKind};

pub struct OutageArgs {
    pub server: PathBuf,
    pub postgres_url: String,
    pub clients: usize,
    pub phase: Duration,
    /// A request unanswered after this long counts as unanswered, and its client goes on.
    pub client_timeout: Duration,
    pub out: PathBuf,
    pub env: Vec<(String, String)>,
}

/// A relay from a loopback port to Postgres that can stop listening and listen again.
struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    accept: Option<JoinHandle<()>>,
    /// The relayed connections of the current listening period.
    live: CancellationToken,
}

impl Relay {
    async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let live = CancellationToken::new();
        let accept = Some(tokio::spawn(accept(listener, target, live.clone())));
        Ok(Self {
            addr,
            target,
            accept,
            live,
        })
    }

    /// Closes every relayed connection and the listening socket: new connections are refused.
    fn down(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.live.cancel();
    }

    /// Listens again on the same port.
    fn up(&mut self) -> anyhow::Result<()> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        // Connections the outage closed may linger in TIME_WAIT on this port.
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        let listener = socket.listen(1024)?;
        self.live = CancellationToken::new();
        self.accept = Some(tokio::spawn(accept(
            listener,
            self.target,
            self.live.clone(),
        )));
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.down();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, live: CancellationToken) {
    while let Ok((client, _)) = listener.accept().await {
        let live = live.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            tokio::select! {
                () = live.cancelled() => {
                    let _ = client.shutdown().await;
                }
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            }
        });
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Before,
    During,
    After,
}

/// One request: the phase it was sent in, what came back and how long it took.
struct Sample {
    phase: Phase,
    what: &'static str,
    /// `None`: no answer within the client's timeout, or the connection failed.
    status: Option<u16>,
    latency: Duration,
}

#[derive(Serialize, Default)]
struct PhaseReport {
    sent: u64,
    answered: u64,
    answered_per_sec: f64,
    /// Status code → count, and `unanswered` (timed out or the connection failed).
    statuses: BTreeMap<String, u64>,
    /// By request kind (`login`, `refresh`, `me`): status → count.
    by_kind: BTreeMap<String, BTreeMap<String, u64>>,
    unavailable_p50_ms: Option<f64>,
    unavailable_p99_ms: Option<f64>,
    success_p50_ms: Option<f64>,
    success_p99_ms: Option<f64>,
    unanswered: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1].as_secs_f64() * 1000.0)
}

fn summarise(samples: &[Sample], phase: Phase, length: Duration) -> PhaseReport {
    let mut report = PhaseReport::default();
    let mut unavailable = Vec::new();
    let mut successes = Vec::new();
    for s in samples.iter().filter(|s| s.phase == phase) {
        report.sent += 1;
        let key = s
            .status
            .map_or_else(|| "unanswered".to_owned(), |c| c.to_string());
        *report.statuses.entry(key.clone()).or_default() += 1;
        *report
            .by_kind
            .entry(s.what.to_owned())
            .or_default()
            .entry(key)
            .or_default() += 1;
        match s.status {
            None => report.unanswered += 1,
            Some(code) => {
                report.answered += 1;
                if code == 503 {
                    unavailable.push(s.latency);
                } else if (200..300).contains(&code) {
                    successes.push(s.latency);
                }
            }
        }
    }
    unavailable.sort_unstable();
    successes.sort_unstable();
    report.answered_per_sec = report.answered as f64 / length.as_secs_f64();
    report.unavailable_p50_ms = percentile(&unavailable, 0.50);
    report.unavailable_p99_ms = percentile(&unavailable, 0.99);
    report.success_p50_ms = percentile(&successes, 0.50);
    report.success_p99_ms = percentile(&successes, 0.99);
    report
}

/// What one client sends, in turn: a refresh of its chain, `/me`, a login of its other account.
struct Client {
    addr: SocketAddr,
    access: String,
    refresh: String,
    login: Call,
}

impl Client {
    async fn run(mut self, start: Instant, phase: Duration, timeout: Duration) -> Vec<Sample> {
        let mut samples = Vec::new();
        let mut conn = Conn::open(self.addr).await.ok();
        let end = start + phase * 3;
        let mut turn = 0usize;
        // Bounded by the three phases, and by a count in case the server answers impossibly fast.
        while Instant::now() < end && samples.len() < 1_000_000 {
            let (what, call) = match turn % 3 {
                0 => (
                    "refresh",
                    Call::post(
                        "/api/auth/refresh",
                        &serde_json::json!({ "refreshToken": self.refresh }),
                    ),
                ),
                1 => ("me", Call::get("/api/auth/me").bearer(&self.access)),
                _ => ("login", self.login.clone()),
            };
            turn += 1;
            let sent = Instant::now();
            let phase_now = match (sent - start).as_secs_f64() / phase.as_secs_f64() {
                x if x < 1.0 => Phase::Before,
                x if x < 2.0 => Phase::During,
                _ => Phase::After,
            };
            let answer = match conn.as_mut() {
                Some(c) => tokio::time::timeout(timeout, c.send(&call)).await.ok(),
                None => None,
            };
            let latency = sent.elapsed();
            let status = match answer {
                Some(Ok((status, body))) => {
                    if what == "refresh"
                        && status == StatusCode::OK
                        && let Some(next) = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["refreshToken"].as_str().map(str::to_owned))
                    {
                        self.refresh = next;
                    }
                    Some(status.as_u16())
                }
                _ => {
                    // Timed out or broken: a new connection for the next request.
                    conn = Conn::open(self.addr).await.ok();
                    None
                }
            };
            samples.push(Sample {
                phase: phase_now,
                what,
                status,
                latency,
            });
        }
        samples
    }
}

pub async fn run(args: OutageArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=256).contains(&args.clients),
        "clients must be between 1 and 256"
    );
    anyhow::ensure!(
        args.phase >= Duration::from_secs(1) && args.phase <= Duration::from_secs(600),
        "a phase lasts 1 to 600 seconds"
    );
    std::fs::create_dir_all(&args.out)?;
    let work_dir = args.out.join("work");
    std::fs::create_dir_all(&work_dir)?;
    let db = BenchDb::create(&args.postgres_url).await?;
    let target = postgres_target(&db.url).await?;
    let mut relay = Relay::start(target).await?;
    let url = relay_url(&db.url, relay.addr);
    let spec = ServerSpec {
        binary: &args.server,
        store: StoreKind::Postgres,
        database_url: Some(&url),
        redis_url: None,
        env: args.env.clone(),
        work_dir: &work_dir,
        logs: ServerLogs::File(args.out.join("outage-server.log")),
    };
    let server = Server::start(&spec).await?;
    let outcome = drive(&args, &server, &mut relay).await;
    server.stop().await;
    drop(relay);
    db.drop_now().await;
    outcome
}

async fn drive(args: &OutageArgs, server: &Server, relay: &mut Relay) -> anyhow::Result<()> {
    let tag = format!("outage-{}", uuid::Uuid::new_v4().simple());
    let chains =
        crate::fixture::accounts(server.addr, &format!("{tag}-chain"), args.clients, false).await?;
    let logins =
        crate::fixture::accounts(server.addr, &format!("{tag}-login"), args.clients, false).await?;
    // Read once so the service keeps each user in memory, as it would after real traffic.
    for account in &chains {
        let _ = crate::http::once(
            server.addr,
            &Call::get("/api/auth/me").bearer(&account.access),
        )
        .await;
    }
    println!(
        "outage: {} clients, {:?} before, during and after a database outage",
        args.clients, args.phase
    );
    let start = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = chains
        .into_iter()
        .zip(logins)
        .map(|(chain, login)| {
            let client = Client {
                addr: server.addr,
                access: chain.access,
                refresh: chain.refresh,
                login: Call::post(
                    "/api/auth/login",
                    &serde_json::json!({ "email": login.email, "password": crate::measure::PASSWORD }),
                ),
            };
            let (samples, phase, timeout) = (samples.clone(), args.phase, args.client_timeout);
            tokio::spawn(async move {
                let taken = client.run(start, phase, timeout).await;
                samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(taken);
            })
        })
        .collect();
    tokio::time::sleep_until((start + args.phase).into()).await;
    relay.down();
    println!("outage: database away at {:?}", start.elapsed());
    tokio::time::sleep_until((start + args.phase * 2).into()).await;
    relay.up()?;
    println!("outage: database back at {:?}", start.elapsed());
    for worker in workers {
        worker.await?;
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    let mut phases = BTreeMap::new();
    println!(
        "{:<7} {:>6} {:>9} {:>8} {:>10} {:>10} {:>10} {:>10}  statuses",
        "phase", "sent", "answered", "per s", "503 p50", "503 p99", "2xx p50", "2xx p99"
    );
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
    for phase in [Phase::Before, Phase::During, Phase::After] {
        let report = summarise(&samples, phase, args.phase);
        println!(
            "{:<7} {:>6} {:>9} {:>8.1} {:>10} {:>10} {:>10} {:>10}  {:?}",
            format!("{phase:?}").to_lowercase(),
            report.sent,
            report.answered,
            report.answered_per_sec,
            ms(report.unavailable_p50_ms),
            ms(report.unavailable_p99_ms),
            ms(report.success_p50_ms),
            ms(report.success_p99_ms),
            report.statuses,
        );
        phases.insert(phase, report);
    }
    let json = serde_json::json!({
        "clients": args.clients,
        "phase_secs": args.phase.as_secs_f64(),
        "client_timeout_secs": args.client_timeout.as_secs_f64(),
        "load_average": crate::machine_load(),
        "phases": phases,
    });
    let path = args.out.join("outage.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?)?;
    println!("outage: {}", path.display());
    Ok(())
}

/// The Postgres server's socket address, from the database URL.
async fn postgres_target(url: &str) -> anyhow::Result<SocketAddr> {
    let parsed = url::Url::parse(url)?;
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = parsed.port().unwrap_or(5432);
    tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host} has no address"))
}

/// `url` with its host and port replaced by the relay's.
fn relay_url(url: &str, relay: SocketAddr) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_ip_host(relay.ip());
            let _ = parsed.set_port(Some(relay.port()));
            parsed.to_string()
        }
        Err(_) => url.to_owned(),
    }
}
