//! One run against the service: per store, a server started, its accounts signed up, each
//! scenario measured at each concurrency beside the bare baseline and the argon2id ceiling, and
//! the cost of rate limits on two servers side by side.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::StatusCode;

use crate::argon2_ceiling::{self, Cost};
use crate::baseline;
use crate::cli::{RunArgs, Scenario};
use crate::fixture::{Fixture, accounts};
use crate::http::{Call, Conn};
use crate::mail_drain;
use crate::measure::{Job, Latency, ProcStats, Window, closed_loop, observe, paced, rss_mb};
use crate::probes::{metric_reaches, revocations_mirrored};
use crate::report::{self, Report, Row};
use crate::server::{self, BenchDb, Server, ServerLogs, ServerSpec, StoreKind};

/// How long the outbox's backlog is watched draining after the forgot-password points.
const MAIL_DRAIN_PATIENCE: Duration = Duration::from_secs(60);

/// The baseline server of one store's run.
struct Baseline {
    child: tokio::process::Child,
    addr: SocketAddr,
    pid: u32,
    token: String,
    /// (path, row name): the bare handler and the I/O floors it can serve.
    variants: Vec<(&'static str, &'static str)>,
}

/// A run in progress: its arguments and measuring window, the Redis the servers use, and the report
/// it fills.
pub struct Harness {
    pub args: RunArgs,
    pub window: Window,
    pub redis: Option<String>,
    pub work_dir: PathBuf,
    pub report: Report,
    /// The argon2id cost the servers hash with.
    pub cost: Cost,
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

    pub async fn run_store(&mut self, store: StoreKind) -> anyhow::Result<()> {
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
        let mail_drain = if self.args.scenarios.contains(&Scenario::ForgotKnown)
            || self.args.scenarios.contains(&Scenario::ForgotMixed)
        {
            let drain = mail_drain::measure(server.addr, server.pid, MAIL_DRAIN_PATIENCE).await;
            match &drain {
                Some(d) if d.delivered == 0.0 => println!(
                    "[{name}] outbox: nothing delivered after the load stopped ({:.0} waiting by the last count); the sink's per-second counts give the rate",
                    d.backlog
                ),
                Some(d) => println!("[{name}] outbox: {}", d.summary()),
                None => {
                    eprintln!("flux-load: warning: [{name}] no outbox metrics to measure delivery")
                }
            }
            drain
        } else {
            None
        };
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
            mail_drain,
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
                    let argon = argon2_ceiling::now(self.cost).await?;
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
                if scenario == Scenario::ForgotMixed {
                    self.forgot_mixed(name, server, fixture, c).await;
                    continue;
                }
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

    /// Forgot-password at concurrency `c`, the even connections for addresses with an account
    /// and the odd ones for addresses without, at the same time; one row for each kind.
    async fn forgot_mixed(&mut self, name: &str, server: &Server, fixture: &mut Fixture, c: usize) {
        let (known, unknown): (Vec<_>, Vec<_>) = fixture
            .jobs(Scenario::ForgotMixed, c)
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % 2 == 0);
        let strip = |jobs: Vec<(usize, Job)>| jobs.into_iter().map(|(_, j)| j).collect::<Vec<_>>();
        let (known, unknown) = (strip(known), strip(unknown));
        let (window, addr) = (self.window, fixture.addr);
        let work = async move {
            tokio::join!(
                closed_loop(addr, known, window),
                closed_loop(addr, unknown, window),
            )
        };
        let (((_, known), (_, unknown)), stats) = observe(Some(server.pid), work).await;
        self.push(name, "forgot-mixed: known", c, known, stats.clone());
        self.push(name, "forgot-mixed: unknown", c, unknown, stats);
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
    pub async fn rate_limit_cost(&mut self, store: StoreKind) -> anyhow::Result<()> {
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

/// Starts this binary's `baseline-server` on a free port, serving the variants the run's Redis and
/// database allow, and waits up to 10 s for it to answer.
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
