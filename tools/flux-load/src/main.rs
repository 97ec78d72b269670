//! flux-load: the load harness of BENCHMARKS.md. It starts the release `flux-auth` itself (file
//! store, Postgres, or both), prepares users and tokens, and measures requests/s and latency
//! percentiles of /me, /refresh, /login, /signup and /health at fixed concurrencies, with the
//! server's peak RSS and CPU, next to two ceilings measured in the same run: a bare axum + JWT
//! handler and the argon2id hash time. Results go to a table, Markdown and JSON.
//!
//! Only loopback addresses are ever contacted; every loop is bounded in time and count.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod alert_latency;
mod argon2_ceiling;
mod baseline;
mod cli;
mod fixture;
mod harness;
mod hash_memory;
mod http;
mod mail_drain;
mod measure;
mod outage;
mod probes;
mod report;
mod server;
mod smtp_sink;
mod two_factor;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use argon2_ceiling::Cost;
use cli::{Cli, Command, RunArgs};
use harness::Harness;
use measure::Window;
use probes::{postgres_answers, redis_answers};
use report::Report;
use server::StoreKind;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::SmtpSink { port }) => block_on(smtp_sink::serve(port)),
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
        Some(Command::TwoFactorCost {
            server,
            store,
            postgres_url,
            redis_url,
            users,
            rounds,
            concurrency,
            out,
        }) => built(&server).and_then(|server| {
            let args = two_factor::TwoFactorArgs {
                server,
                stores: store.kinds(),
                postgres_url,
                redis_url,
                users,
                rounds,
                concurrency,
                work_dir: out.join("work"),
            };
            println!("flux-load two-factor-cost: load average {}", machine_load());
            block_on(two_factor::run(args))
        }),
        Some(Command::Outage {
            server,
            postgres_url,
            clients,
            phase_secs,
            client_timeout_secs,
            out,
            server_env,
        }) => built(&server).and_then(|server| {
            let args = outage::OutageArgs {
                server,
                postgres_url,
                clients,
                phase: Duration::from_secs_f64(phase_secs.clamp(0.0, 600.0)),
                client_timeout: Duration::from_secs_f64(client_timeout_secs.clamp(0.1, 600.0)),
                out,
                env: server_env,
            };
            block_on(outage::run(args))
        }),
        Some(Command::AlertLatency {
            server,
            store,
            postgres_url,
            rounds,
            threshold,
        }) => built(&server).and_then(|server| {
            let stores = store.kinds();
            let args = alert_latency::AlertLatencyArgs {
                server,
                postgres_url,
                stores,
                rounds: rounds.min(10_000),
                threshold: threshold.min(10_000),
            };
            block_on(alert_latency::run(args))
        }),
        None => block_on(run(cli.run)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flux-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The binary at `server`, as an absolute path (the servers start in other folders).
fn built(server: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    server
        .canonicalize()
        .with_context(|| format!("{} not found: build it first", server.display()))
}

/// Runs `work` on a single-threaded runtime: the tool shares the machine with the server, and
/// one thread takes at most one core's worth from it.
fn block_on(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

fn machine_load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `flux-load hash-scaling`: the table of [`argon2_ceiling::scaling`], as Markdown on stdout.
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
    let (cores, points) = argon2_ceiling::scaling(memory_kib, iterations, rounds, seconds)?;
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
    let mut stores = args.store.kinds();
    let postgres = postgres_answers(&args.postgres_url).await;
    if !postgres && stores.contains(&StoreKind::Postgres) {
        println!(
            "Postgres: not answering at {}; skipping that store",
            args.postgres_url
        );
        stores.retain(|s| *s != StoreKind::Postgres);
    }
    // argon2 first, while nothing else of ours runs.
    let cost = Cost::of_servers(&args.server_env)?;
    let argon = argon2_ceiling::now(cost).await?;
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
        cost,
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
