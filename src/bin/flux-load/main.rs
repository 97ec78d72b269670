//! flux-load: the load harness of BENCHMARKS.md. It starts the release `flux-auth` itself (file
//! store, Postgres, or both), prepares users and tokens, and measures requests/s and latency
//! percentiles of /me, /refresh, /login, /signup and /health at fixed concurrencies, with the
//! server's peak RSS and CPU, next to two ceilings measured in the same run: a bare axum + JWT
//! handler and the argon2id hash time. Results go to a table, Markdown and JSON.
//!
//! Only loopback addresses are ever contacted; every loop is bounded in time and count.

mod baseline;
mod http;
mod measure;
mod outage;
mod report;
mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper::StatusCode;

use http::{Call, Conn, once};
use measure::{Job, Latency, PASSWORD, ProcStats, Window, closed_loop, observe, paced, rss_mb};
use report::{Report, Row};
use server::{BenchDb, Server, ServerLogs, ServerSpec, StoreKind};

#[derive(Parser)]
#[command(
    name = "flux-load",
    version,
    about = "Load harness for flux-auth: throughput, latency and memory against same-run ceilings",
    long_about = "Starts the release flux-auth binary on a free loopback port (RATE_LIMITS=off, \
MAX_CONNECTIONS_PER_IP=0), \
prepares users and tokens, and measures GET /api/auth/me, POST /api/auth/refresh, \
POST /api/auth/login, POST /api/auth/signup and GET /health at each concurrency for a fixed \
duration: requests/s, p50/p99/p99.9 latency, errors, and the server's peak RSS and CPU. In the \
same run it measures a bare axum handler that verifies an HS256 token (the HTTP+JWT ceiling) and \
the argon2id hash time (the login ceiling: cores / hash time), the p99 of /me during a login \
flood, idle RSS, start-to-ready time, and the cost of rate limits (on vs off). Prints a table and \
writes <out>/results.md and <out>/results.json.\n\n\
Build first: cargo build --release --bins\n\
Run:         target/release/flux-load --store both",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the bare axum + JWT baseline on 127.0.0.1:<port> until killed (the harness starts
    /// this itself, as a separate process shaped like flux-auth).
    BaselineServer {
        #[arg(long)]
        port: u16,
        /// Also serve /me-redis (one MGET per request) against this Redis.
        #[arg(long)]
        redis_url: Option<String>,
        /// Also serve /me-pg (one SELECT of the user per request) against this database.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Measure how argon2id's hash rate scales from one thread to one per core at several memory
    /// costs (the login ceiling, cores / hash time, assumes perfect scaling), and print a table.
    /// The smallest cost stays in each core's own cache: the control.
    HashScaling {
        /// Memory costs in KiB (the service's default is 19456).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "64,1024,4096,8192,12288,19456,32768,65536"
        )]
        memory_kib: Vec<u32>,
        /// Passes over the memory (the service's default is 2).
        #[arg(long, default_value_t = 2)]
        iterations: u32,
        /// Rounds over all memory costs, in alternating order.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measurement (one thread, then all cores, per cost and round).
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// Requests answered before, during and after a database outage on STORAGE=postgres: the
    /// service reaches Postgres through a relay of this process's, which stops listening (as a
    /// stopped Postgres does) for the middle phase. Clients send refreshes, /me and logins
    /// throughout; per phase: answered per second, statuses, p50/p99 of 503s and of successes,
    /// unanswered requests. Writes <out>/outage.json.
    Outage {
        /// The flux-auth binary to start.
        #[arg(long, default_value = "target/release/flux-auth")]
        server: PathBuf,
        /// Admin URL of the Postgres server (a database is created and dropped there).
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres_url: String,
        /// Concurrent clients, each one keep-alive connection.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds of each phase: before, during and after the outage.
        #[arg(long, default_value_t = 10.0)]
        phase_secs: f64,
        /// A request unanswered after this many seconds counts as unanswered.
        #[arg(long, default_value_t = 20.0)]
        client_timeout_secs: f64,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Extra environment for the server, KEY=VALUE (repeatable).
        #[arg(long = "server-env", value_parser = parse_env_pair)]
        server_env: Vec<(String, String)>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stores {
    File,
    Postgres,
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Scenario {
    Health,
    Me,
    Refresh,
    Login,
    /// Login with an email that has no account (401): the dummy-hash path.
    LoginUnknown,
    Signup,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::Me => "me",
            Self::Refresh => "refresh",
            Self::Login => "login",
            Self::LoginUnknown => "login-unknown",
            Self::Signup => "signup",
        }
    }
}

#[derive(Args, Clone)]
struct RunArgs {
    /// The flux-auth binary to start.
    #[arg(long, default_value = "target/release/flux-auth")]
    server: PathBuf,
    /// Which user store to measure.
    #[arg(long, value_enum, default_value = "both")]
    store: Stores,
    /// Seconds measured per point (after the warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up before each point, not counted.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Concurrencies (connections, each with one request in flight).
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    concurrency: Vec<usize>,
    /// Scenarios to run, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "health,me,refresh,login,login-unknown,signup"
    )]
    scenarios: Vec<Scenario>,
    /// Skip the mixed run (/me probed at a fixed rate during a login flood at the highest
    /// concurrency).
    #[arg(long)]
    no_mixed: bool,
    /// Skip the rate-limit cost run (login with an unknown user and refresh, limits on vs off).
    #[arg(long)]
    no_rate_limit_cost: bool,
    /// Seconds per point of the rate-limit cost run.
    #[arg(long, default_value_t = 5)]
    rate_limit_duration: u64,
    /// Admin URL of the Postgres server (a database is created and dropped per run).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Redis for the service (revocations; rate limits in the cost run). Used when it answers.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Run the service without Redis (in-process revocations).
    #[arg(long)]
    no_redis: bool,
    /// Where results.md, results.json and the servers' data folders go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Write the servers' logs here (one file per server) instead of discarding them. A long
    /// run logs hundreds of megabytes: one line per request.
    #[arg(long)]
    server_logs: Option<PathBuf>,
    /// Read the servers' logs through a pipe and discard them, as pm2 or a container runtime
    /// reads a service's stdout (instead of the servers writing them to /dev/null).
    #[arg(long, conflicts_with = "server_logs")]
    server_logs_pipe: bool,
    /// Extra environment for the servers under test, KEY=VALUE (repeatable), e.g. RUST_LOG=warn
    /// to see what the per-request log line costs.
    #[arg(long = "server-env", value_parser = parse_env_pair)]
    server_env: Vec<(String, String)>,
    /// Upper bound on requests per worker and point.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: u64,
}

fn parse_env_pair(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not KEY=VALUE"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::BaselineServer {
            port,
            redis_url,
            database_url,
        }) => baseline::serve(port, redis_url, database_url),
        Some(Command::HashScaling {
            memory_kib,
            iterations,
            rounds,
            seconds,
        }) => hash_scaling(&memory_kib, iterations, rounds, seconds),
        Some(Command::Outage {
            server,
            postgres_url,
            clients,
            phase_secs,
            client_timeout_secs,
            out,
            server_env,
        }) => server
            .canonicalize()
            .with_context(|| format!("{} not found: build it first", server.display()))
            .and_then(|server| {
                let args = outage::OutageArgs {
                    server,
                    postgres_url,
                    clients,
                    phase: Duration::from_secs_f64(phase_secs.clamp(0.0, 600.0)),
                    client_timeout: Duration::from_secs_f64(client_timeout_secs.clamp(0.1, 600.0)),
                    out,
                    env: server_env,
                };
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(outage::run(args)))
            }),
        // The client runs on one thread: it shares the machine with the server, and a
        // single-threaded client takes at most one core's worth from it.
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run(cli.run))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flux-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Tokens of one account, from its signup.
#[derive(Clone)]
struct Account {
    user_id: String,
    email: String,
    access: String,
    refresh: String,
}

/// The address worker `i` claims to be, when the server trusts loopback as a proxy: a
/// documentation range (RFC 5737), never contacted.
fn client_address(i: usize) -> String {
    format!("198.51.100.{}", i % 250 + 1)
}

async fn signup(addr: SocketAddr, email: &str, client: Option<&str>) -> anyhow::Result<Account> {
    let body = serde_json::json!({ "email": email, "password": PASSWORD, "name": "Load Tester" });
    let call = Call::post("/api/auth/signup", &body).with_client(client);
    let (status, body) = once(addr, &call).await?;
    anyhow::ensure!(
        status == StatusCode::CREATED,
        "signup of {email} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .with_context(|| format!("signup answer has no {name}"))
    };
    let user_id = value
        .get("user")
        .and_then(|u| u.get("id"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .context("signup answer has no user.id")?;
    Ok(Account {
        user_id,
        email: email.to_owned(),
        access: field("accessToken")?,
        refresh: field("refreshToken")?,
    })
}

/// Signs up `count` accounts, four at a time (each costs one argon2 hash).
async fn accounts(
    addr: SocketAddr,
    tag: &str,
    count: usize,
    client_per_account: bool,
) -> anyhow::Result<Vec<Account>> {
    let mut out = Vec::with_capacity(count);
    let indices: Vec<usize> = (0..count).collect();
    for chunk in indices.chunks(4) {
        let batch = futures::future::join_all(chunk.iter().map(|&i| async move {
            let client = client_per_account.then(|| client_address(i));
            signup(addr, &format!("{tag}-{i}@bench.example"), client.as_deref()).await
        }))
        .await;
        for account in batch {
            out.push(account?);
        }
    }
    Ok(out)
}

fn machine_load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Everything one run of one store needs to build its jobs.
struct Fixture {
    addr: SocketAddr,
    /// One account per worker at the highest concurrency: /me tokens and refresh chains.
    sessions: Vec<Account>,
    /// Accounts that only log in (logins evict old sessions; these keep /me's sessions alive).
    logins: Vec<Account>,
    /// Each worker as its own client address (the rate-limit run).
    per_worker_clients: bool,
    run_tag: String,
}

impl Fixture {
    fn client(&self, i: usize) -> Option<String> {
        self.per_worker_clients.then(|| client_address(i))
    }

    fn jobs(&mut self, scenario: Scenario, concurrency: usize) -> Vec<Job> {
        (0..concurrency)
            .map(|i| {
                let client = self.client(i);
                let fixed = |call: Call, expect| Job::Fixed {
                    call: call.with_client(client.as_deref()),
                    expect,
                };
                match scenario {
                    Scenario::Health => fixed(Call::get("/health"), StatusCode::OK),
                    Scenario::Me => fixed(
                        Call::get("/api/auth/me").bearer(&self.sessions[i % self.sessions.len()].access),
                        StatusCode::OK,
                    ),
                    Scenario::Refresh => Job::Refresh {
                        token: self.sessions[i % self.sessions.len()].refresh.clone(),
                        client: client.clone(),
                    },
                    Scenario::Login => {
                        let account = &self.logins[i % self.logins.len()];
                        fixed(
                            Call::post(
                                "/api/auth/login",
                                &serde_json::json!({ "email": account.email, "password": PASSWORD }),
                            ),
                            StatusCode::OK,
                        )
                    }
                    Scenario::LoginUnknown => fixed(
                        Call::post(
                            "/api/auth/login",
                            &serde_json::json!({
                                "email": format!("nobody-{i}@bench.example"),
                                "password": PASSWORD,
                            }),
                        ),
                        StatusCode::UNAUTHORIZED,
                    ),
                    Scenario::Signup => Job::Signup {
                        tag: format!("{}-c{concurrency}-w{i}", self.run_tag),
                        n: 0,
                    },
                }
            })
            .collect()
    }

    /// Refresh chains moved on during a run; keep them for the next one.
    fn keep_chains(&mut self, jobs: &[Job]) {
        for (i, job) in jobs.iter().enumerate() {
            if let (Job::Refresh { token, .. }, Some(account)) = (job, self.sessions.get_mut(i)) {
                account.refresh.clone_from(token);
            }
        }
    }
}

/// The baseline server of one store's run.
struct Baseline {
    child: tokio::process::Child,
    addr: SocketAddr,
    pid: u32,
    token: String,
    /// (path, row name): the bare handler and the I/O floors it can serve.
    variants: Vec<(&'static str, &'static str)>,
}

struct Harness {
    args: RunArgs,
    window: Window,
    redis: Option<String>,
    work_dir: PathBuf,
    report: Report,
}

impl Harness {
    fn logs(&self, name: &str) -> ServerLogs {
        match &self.args.server_logs {
            Some(dir) => ServerLogs::File(dir.join(format!("{name}.log"))),
            None if self.args.server_logs_pipe => ServerLogs::Pipe,
            None => ServerLogs::Discard,
        }
    }

    async fn measure(
        &self,
        pid: Option<u32>,
        addr: SocketAddr,
        jobs: Vec<Job>,
    ) -> (Vec<Job>, Latency, ProcStats) {
        let ((jobs, latency), stats) = observe(pid, closed_loop(addr, jobs, self.window)).await;
        (jobs, latency, stats)
    }

    async fn baseline_points(&mut self, baseline: &Baseline, store: &str, concurrency: usize) {
        for (path, row) in &baseline.variants {
            let call = Call::get(path).bearer(&baseline.token);
            let jobs = (0..concurrency)
                .map(|_| Job::Fixed {
                    call: call.clone(),
                    expect: StatusCode::OK,
                })
                .collect();
            let (_, latency, stats) = self.measure(Some(baseline.pid), baseline.addr, jobs).await;
            self.push(store, row, concurrency, latency, stats);
        }
    }

    fn push(
        &mut self,
        store: &str,
        scenario: &str,
        concurrency: usize,
        latency: Latency,
        stats: ProcStats,
    ) {
        let row = Row {
            store: store.to_owned(),
            scenario: scenario.to_owned(),
            concurrency,
            latency,
            proc: stats,
            argon2: None,
        };
        report::print_row(&row);
        self.report.rows.push(row);
    }

    async fn run_store(&mut self, store: StoreKind) -> anyhow::Result<()> {
        let db = match store {
            StoreKind::Postgres => Some(BenchDb::create(&self.args.postgres_url).await?),
            StoreKind::File => None,
        };
        let result = self
            .run_store_with(store, db.as_ref().map(|d| d.url.as_str()))
            .await;
        if let Some(db) = db {
            db.drop_now().await;
        }
        result
    }

    async fn run_store_with(
        &mut self,
        store: StoreKind,
        database_url: Option<&str>,
    ) -> anyhow::Result<()> {
        let name = store.name();
        let logs = self.logs(name);
        let server = Server::start(&ServerSpec {
            binary: &self.args.server,
            store,
            database_url,
            redis_url: self.redis.as_deref(),
            env: self.args.server_env.clone(),
            work_dir: &self.work_dir,
            logs,
        })
        .await?;
        let result = self.run_scenarios(store, &server, database_url).await;
        server.stop().await;
        result
    }

    async fn run_scenarios(
        &mut self,
        store: StoreKind,
        server: &Server,
        database_url: Option<&str>,
    ) -> anyhow::Result<()> {
        let name = store.name();
        let start_ms = server.start_to_ready.as_secs_f64() * 1000.0;
        // Let the start settle (the first health probes, the Redis link) before reading RSS.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_start = rss_mb(server.pid).unwrap_or(0.0);
        println!(
            "[{name}] pid {}, start to ready {start_ms:.0} ms, idle RSS {idle_start:.1} MB",
            server.pid
        );
        let max_c = self.args.concurrency.iter().copied().max().unwrap_or(1);
        let prepared = Instant::now();
        let run_tag = format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut fixture = Fixture {
            addr: server.addr,
            sessions: accounts(server.addr, &format!("{run_tag}-session"), max_c, false).await?,
            logins: accounts(server.addr, &format!("{run_tag}-login"), 8, false).await?,
            per_worker_clients: false,
            run_tag,
        };
        println!(
            "[{name}] {} accounts signed up in {:.1} s",
            max_c + 8,
            prepared.elapsed().as_secs_f64()
        );
        if self.redis.is_some() && !revocations_mirrored(server.addr).await {
            eprintln!(
                "flux-load: warning: [{name}] the server does not report revocations_mirrored 1; its /me asks Redis per request"
            );
        }
        if database_url.is_some()
            && !metric_reaches(
                server.addr,
                "flux_auth_user_cache_following",
                1.0,
                Duration::from_secs(5),
            )
            .await
        {
            eprintln!(
                "flux-load: warning: [{name}] the server does not report user_cache_following 1; its /me reads every user from Postgres"
            );
        }
        let sub = fixture
            .sessions
            .first()
            .map(|a| a.user_id.clone())
            .unwrap_or_default();
        let mut baseline =
            start_baseline(&self.work_dir, self.redis.as_deref(), database_url, &sub).await?;
        let result = self
            .scenarios(name, server, &mut fixture, &baseline, max_c)
            .await;
        let _ = baseline.child.kill().await;
        result?;
        // Idle as in production: the hashing threads unmap their argon2 memory after 10 s
        // without a hash.
        let quiet = Instant::now();
        let released = metric_reaches(
            server.addr,
            "flux_auth_password_hash_memory_bytes",
            0.0,
            Duration::from_secs(20),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_end = rss_mb(server.pid).unwrap_or(0.0);
        println!(
            "[{name}] idle RSS after the run {idle_end:.1} MB ({:.0} s after the last request{})",
            quiet.elapsed().as_secs_f64(),
            if released {
                ""
            } else {
                "; argon2 memory not given back within 20 s"
            }
        );
        if prepared.elapsed() > Duration::from_secs(14 * 60) {
            eprintln!(
                "flux-load: warning: the run outlived the access tokens' 15 minutes; /me may show 401s"
            );
        }
        self.report.stores.push(report::StoreSummary {
            store: name.to_owned(),
            start_to_ready_ms: start_ms,
            idle_rss_mb: idle_start,
            idle_rss_after_mb: idle_end,
        });
        Ok(())
    }

    async fn scenarios(
        &mut self,
        name: &str,
        server: &Server,
        fixture: &mut Fixture,
        baseline: &Baseline,
        max_c: usize,
    ) -> anyhow::Result<()> {
        let scenarios = self.args.scenarios.clone();
        let concurrencies = self.args.concurrency.clone();
        for scenario in scenarios {
            for &c in &concurrencies {
                if scenario == Scenario::Me {
                    // The ceilings right before the point they are compared with: same load.
                    self.baseline_points(baseline, name, c).await;
                }
                // The login ceiling too: a shared machine's hash time moves by a quarter within
                // minutes, so the one measured at the start says little about a point run later.
                let ceiling = if matches!(scenario, Scenario::Login | Scenario::Signup) {
                    let argon = argon2_now().await?;
                    println!(
                        "[{name}] argon2id right before: {:.1} ms per hash, ceiling {:.1}/s; {} threads at once {:.1}/s",
                        argon.hash_ms,
                        argon.ceiling_per_sec,
                        argon.cores,
                        argon.measured_parallel_per_sec
                    );
                    Some(argon)
                } else {
                    None
                };
                let jobs = fixture.jobs(scenario, c);
                let (jobs, latency, stats) =
                    self.measure(Some(server.pid), fixture.addr, jobs).await;
                fixture.keep_chains(&jobs);
                self.push(name, scenario.name(), c, latency, stats);
                if let (Some(argon), Some(row)) = (ceiling, self.report.rows.last_mut()) {
                    row.argon2 = Some(argon);
                }
            }
        }
        if !self.args.no_mixed {
            self.mixed(name, server, fixture, max_c).await;
        }
        Ok(())
    }

    /// A login flood at concurrency `c` with /me probed at a fixed rate on the side.
    async fn mixed(&mut self, name: &str, server: &Server, fixture: &Fixture, c: usize) {
        let mut flood_fixture = Fixture {
            addr: fixture.addr,
            sessions: fixture.sessions.clone(),
            logins: fixture.logins.clone(),
            per_worker_clients: false,
            run_tag: fixture.run_tag.clone(),
        };
        let logins = flood_fixture.jobs(Scenario::Login, c);
        // Four probes, each one /me every 10 ms: 400 requests/s, a light but steady load.
        let probes = flood_fixture.jobs(Scenario::Me, 4);
        let window = self.window;
        let addr = fixture.addr;
        let work = async move {
            tokio::join!(
                closed_loop(addr, logins, window),
                paced(addr, probes, Duration::from_millis(10), window),
            )
        };
        let (((_, flood), (_, probe)), stats) = observe(Some(server.pid), work).await;
        self.push(
            name,
            &format!("mixed: login c={c}"),
            c,
            flood,
            stats.clone(),
        );
        self.push(name, "mixed: me probe 400/s", 4, probe, stats);
    }

    /// Login with an unknown user and refresh, with rate limits off and on (Redis), on two
    /// servers side by side, points alternating so machine load hits both alike.
    async fn rate_limit_cost(&mut self, store: StoreKind) -> anyhow::Result<()> {
        let Some(redis) = self.redis.clone() else {
            println!("rate-limit cost: skipped (no Redis)");
            return Ok(());
        };
        let db_off = match store {
            StoreKind::Postgres => Some(BenchDb::create(&self.args.postgres_url).await?),
            StoreKind::File => None,
        };
        let db_on = match store {
            StoreKind::Postgres => Some(BenchDb::create(&self.args.postgres_url).await?),
            StoreKind::File => None,
        };
        let result = self
            .rate_limit_cost_with(
                store,
                &redis,
                db_off.as_ref().map(|d| d.url.as_str()),
                db_on.as_ref().map(|d| d.url.as_str()),
            )
            .await;
        for db in [db_off, db_on].into_iter().flatten() {
            db.drop_now().await;
        }
        result
    }

    async fn rate_limit_cost_with(
        &mut self,
        store: StoreKind,
        redis: &str,
        db_off: Option<&str>,
        db_on: Option<&str>,
    ) -> anyhow::Result<()> {
        // Loopback is the trusted proxy and each worker another client address: limits count
        // per address, as they would for real clients. Limits high enough never to refuse.
        let mut common = self.args.server_env.clone();
        common.push(("TRUSTED_PROXIES".to_owned(), "127.0.0.0/8".to_owned()));
        let mut on = common.clone();
        on.push(("RATE_LIMITS".into(), "on".into()));
        for key in [
            "LOGIN_LIMIT_PER_IP",
            "LOGIN_LIMIT_PER_ACCOUNT",
            "SIGNUP_LIMIT_PER_IP",
            "REFRESH_LIMIT_PER_IP",
            "REFRESH_LIMIT_PER_SESSION",
            "IP_FAILURE_THRESHOLD",
        ] {
            on.push((key.into(), "1000000000".into()));
        }
        common.push(("RATE_LIMITS".into(), "off".into()));
        let (log_off, log_on) = (self.logs("rate-limits-off"), self.logs("rate-limits-on"));
        let spec = |env, database_url, logs| ServerSpec {
            binary: &self.args.server,
            store,
            database_url,
            redis_url: Some(redis),
            env,
            work_dir: &self.work_dir,
            logs,
        };
        let off = Server::start(&spec(common, db_off, log_off)).await?;
        let on = match Server::start(&spec(on, db_on, log_on)).await {
            Ok(server) => server,
            Err(e) => {
                off.stop().await;
                return Err(e);
            }
        };
        let result = self.rate_limit_points(store, &off, &on).await;
        off.stop().await;
        on.stop().await;
        result
    }

    async fn rate_limit_points(
        &mut self,
        store: StoreKind,
        off: &Server,
        on: &Server,
    ) -> anyhow::Result<()> {
        let max_c = self.args.concurrency.iter().copied().max().unwrap_or(1);
        let mut fixtures = Vec::new();
        for server in [off, on] {
            let run_tag = format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            fixtures.push(Fixture {
                addr: server.addr,
                sessions: accounts(server.addr, &format!("{run_tag}-rl"), max_c, true).await?,
                logins: Vec::new(),
                per_worker_clients: true,
                run_tag,
            });
        }
        let window = Window {
            duration: Duration::from_secs(self.args.rate_limit_duration),
            ..self.window
        };
        let concurrencies = self.args.concurrency.clone();
        for scenario in [Scenario::LoginUnknown, Scenario::Refresh] {
            for &c in &concurrencies {
                for ((label, server), fixture) in [("off", off), ("on", on)]
                    .into_iter()
                    .zip(fixtures.iter_mut())
                {
                    let jobs = fixture.jobs(scenario, c);
                    let ((jobs, latency), stats) =
                        observe(Some(server.pid), closed_loop(server.addr, jobs, window)).await;
                    fixture.keep_chains(&jobs);
                    self.push(
                        &format!("{} limits {label}", store.name()),
                        scenario.name(),
                        c,
                        latency,
                        stats,
                    );
                }
            }
        }
        Ok(())
    }
}

/// Whether the server checks revocations in its in-memory copy (it subscribes to Redis's channel
/// a moment after start); waits up to 5 s for it.
async fn revocations_mirrored(addr: SocketAddr) -> bool {
    metric_reaches(
        addr,
        "flux_auth_revocations_mirrored",
        1.0,
        Duration::from_secs(5),
    )
    .await
}

/// Whether the server's `/metrics` shows `name` at `value` within `patience`.
async fn metric_reaches(addr: SocketAddr, name: &str, value: f64, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    let prefix = format!("{name} ");
    while Instant::now() < deadline {
        if let Ok((_, body)) = http::once(addr, &Call::get("/metrics")).await
            && String::from_utf8_lossy(&body)
                .lines()
                .filter_map(|line| line.strip_prefix(prefix.as_str()))
                .any(|v| v.trim().parse::<f64>() == Ok(value))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn redis_answers(url: &str) -> bool {
    let Some(host_port) = url.strip_prefix("redis://").map(|rest| {
        rest.rsplit('@')
            .next()
            .unwrap_or(rest)
            .trim_end_matches('/')
    }) else {
        return false;
    };
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(host_port)
        )
        .await,
        Ok(Ok(_))
    )
}

async fn postgres_answers(url: &str) -> bool {
    use sqlx::Connection;
    match sqlx::PgConnection::connect(url).await {
        Ok(conn) => {
            let _ = conn.close().await;
            true
        }
        Err(_) => false,
    }
}

/// `flux-load hash-scaling`: the table of [`baseline::scaling`], as Markdown on stdout.
fn hash_scaling(
    memory_kib: &[u32],
    iterations: u32,
    rounds: usize,
    seconds: f64,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !memory_kib.is_empty() && rounds > 0 && seconds > 0.0,
        "give at least one memory cost, one round and a positive duration"
    );
    let (cores, points) = baseline::scaling(memory_kib, iterations, rounds, seconds)?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "\nargon2id t={iterations} p=1, {cores} cores, {rounds} rounds (median; every round in brackets)\n"
    );
    println!(
        "| memory | one thread, hashes/s | {cores} threads at once, hashes/s | scaling ({cores} threads ÷ {cores} × one) |"
    );
    println!("|---|---|---|---|");
    for p in &points {
        let efficiencies = p.efficiencies(cores);
        let listed: Vec<String> = efficiencies.iter().map(|x| format!("{x:.2}")).collect();
        println!(
            "| {} KiB | {:.1} | {:.1} | **{:.2}** [{}] |",
            p.memory_kib,
            median(p.one_thread_per_sec.clone()),
            median(p.all_cores_per_sec.clone()),
            median(efficiencies),
            listed.join(", ")
        );
    }
    Ok(())
}

/// The argon2id baseline for the service's default cost, timed now on blocking threads.
async fn argon2_now() -> anyhow::Result<baseline::Argon2Baseline> {
    let defaults = flux_auth::config::Settings::default();
    tokio::task::spawn_blocking(move || {
        baseline::argon2(
            defaults.argon2_memory_kib,
            defaults.argon2_iterations,
            defaults.argon2_parallelism,
        )
    })
    .await?
}

async fn start_baseline(
    work_dir: &Path,
    redis: Option<&str>,
    database_url: Option<&str>,
    sub: &str,
) -> anyhow::Result<Baseline> {
    let port = server::free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .args(["baseline-server", "--port", &port.to_string()])
        .current_dir(work_dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut variants = vec![("/me", "baseline-jwt")];
    if let Some(url) = redis {
        command.args(["--redis-url", url]);
        variants.push(("/me-redis", "baseline-jwt+redis"));
    }
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
        variants.push(("/me-pg", "baseline-jwt+pg"));
    }
    let child = command.spawn().context("starting the baseline server")?;
    let pid = child.id().context("the baseline server exited")?;
    let started = Instant::now();
    loop {
        if let Ok(mut conn) = Conn::open(addr).await
            && conn.send(&Call::get("/health")).await.is_ok()
        {
            return Ok(Baseline {
                child,
                addr,
                pid,
                token: baseline::token(sub)?,
                variants,
            });
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the baseline server did not answer within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    // The server runs in a folder of its own, so a relative path must be resolved here.
    args.server = args.server.canonicalize().with_context(|| {
        format!(
            "{} not found: build it first with `cargo build --release --bin flux-auth`",
            args.server.display()
        )
    })?;
    anyhow::ensure!(
        !args.concurrency.is_empty() && args.concurrency.iter().all(|&c| (1..=1024).contains(&c)),
        "concurrency must be between 1 and 1024"
    );
    std::fs::create_dir_all(&args.out)?;
    if let Some(dir) = &args.server_logs {
        std::fs::create_dir_all(dir)?;
    }
    let work_dir = args.out.join("work");
    std::fs::create_dir_all(&work_dir)?;
    let mut report = Report::new(
        std::env::args().collect::<Vec<_>>().join(" "),
        machine_load(),
    );
    println!(
        "flux-load: {} cores, {}, load average {}",
        report.machine.nproc, report.machine.cpu_model, report.load_average_start
    );
    let redis = if args.no_redis || !redis_answers(&args.redis_url).await {
        println!("Redis: not used");
        None
    } else {
        println!("Redis: {}", args.redis_url);
        Some(args.redis_url.clone())
    };
    report.redis = redis.is_some();
    let mut stores = match args.store {
        Stores::File => vec![StoreKind::File],
        Stores::Postgres => vec![StoreKind::Postgres],
        Stores::Both => vec![StoreKind::File, StoreKind::Postgres],
    };
    let postgres = postgres_answers(&args.postgres_url).await;
    if !postgres && stores.contains(&StoreKind::Postgres) {
        println!(
            "Postgres: not answering at {}; skipping that store",
            args.postgres_url
        );
        stores.retain(|s| *s != StoreKind::Postgres);
    }
    // argon2 first, while nothing else of ours runs.
    let argon = argon2_now().await?;
    println!(
        "argon2id m={} t={} p={}: {:.1} ms per hash; ceiling {:.1}/s ({} cores); measured with {} threads at once {:.1}/s",
        argon.memory_kib,
        argon.iterations,
        argon.parallelism,
        argon.hash_ms,
        argon.ceiling_per_sec,
        argon.cores,
        argon.cores,
        argon.measured_parallel_per_sec
    );
    report.argon2 = Some(argon);
    let window = Window {
        warmup: Duration::from_secs(args.warmup),
        duration: Duration::from_secs(args.duration),
        max_requests_per_worker: args.max_requests,
    };
    report.duration_secs = args.duration;
    report.print_header();
    let mut harness = Harness {
        window,
        redis,
        work_dir: work_dir.clone(),
        report,
        args: args.clone(),
    };
    let mut failure = None;
    for store in &stores {
        if let Err(e) = harness.run_store(*store).await {
            eprintln!("flux-load: the {} run failed: {e:#}", store.name());
            failure.get_or_insert(e);
        }
    }
    if !args.no_rate_limit_cost {
        let store = if postgres {
            StoreKind::Postgres
        } else {
            StoreKind::File
        };
        if let Err(e) = harness.rate_limit_cost(store).await {
            eprintln!("flux-load: the rate-limit cost run failed: {e:#}");
            failure.get_or_insert(e);
        }
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    let mut report = harness.report;
    report.load_average_end = machine_load();
    let md = report.markdown();
    std::fs::write(args.out.join("results.md"), &md)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("\n{}", report.targets_text());
    println!(
        "wrote {} and {}",
        args.out.join("results.md").display(),
        args.out.join("results.json").display()
    );
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
