//! `flux-load two-factor-cost`: the server CPU of one completed sign-in with two-factor on (POST
//! /api/auth/login answering `requires2FA` and a temp token, then POST /api/2fa/verify with a TOTP
//! code computed here from the secret) against one plain login, in alternating rounds on one
//! server, so load from elsewhere on the machine falls on both alike.
//!
//! CPU is the server process's utime + stime (/proc/<pid>/stat, every thread) over a round,
//! divided by the sign-ins the round completed; it is also split into the password-hashing
//! threads' share (`argon2-N`, /proc/<pid>/task/*/stat) and the rest. The hash's own time moves
//! by a tenth from minute to minute on a shared machine, which buries a 1 ms difference in the
//! total; the rest is what two-factor adds to. Each round signs every prepared user of its kind
//! in once. A TOTP time step is accepted once per user, so a two-factor round uses for each user
//! the current step or the next one (both accepted: one step either side), later than the one it
//! last used; when none is left the round waits, before it starts, for the clock's next step.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::StatusCode;

use crate::argon2_ceiling::{self, Cost};
use crate::fixture::{Account, accounts};
use crate::http::{Call, Conn, once};
use crate::measure::{PASSWORD, hashing_ticks, process_ticks};
use crate::probes::metric_now;
use crate::server::{BenchDb, Server, ServerLogs, ServerSpec, StoreKind};

/// A fixed AES-256 key (base64) for the run's server: two-factor needs one.
const TOTP_KEY: &str = "Zmx1eC1sb2FkIGJlbmNoIHRvdHAga2V5IDMyIGJ5dGU=";
const STEP_SECS: u64 = 30;
/// Every password hash waits for a worker first, so this histogram counts the hashes.
const HASHES: &str = "flux_auth_password_hash_wait_seconds_count";
/// Linux's USER_HZ: the unit of /proc/<pid>/stat's times.
const TICK_MS: f64 = 10.0;

pub struct TwoFactorArgs {
    pub server: PathBuf,
    pub stores: Vec<StoreKind>,
    pub postgres_url: String,
    pub redis_url: Option<String>,
    pub users: usize,
    pub rounds: usize,
    pub concurrency: usize,
    pub work_dir: PathBuf,
}

/// A user with two-factor on: its email, its secret, and the last time step a code of it was
/// accepted.
struct TwoFactorUser {
    email: String,
    secret: Vec<u8>,
    last_step: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    TwoFactor,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "login",
            Self::TwoFactor => "login+2fa",
        }
    }
}

/// One round: sign-ins completed, failed, the server's CPU over it (all of it, and the hashing
/// threads' share) and the wall time.
struct Round {
    kind: Kind,
    done: usize,
    failed: usize,
    cpu_ms: f64,
    hashing_ms: f64,
    /// Password hashes the server computed over the round (its hash-wait histogram's count).
    hashes: f64,
    wall: Duration,
}

impl Round {
    fn per_sign_in_ms(&self) -> f64 {
        self.cpu_ms / self.done.max(1) as f64
    }

    /// CPU per sign-in outside the hashing threads.
    fn other_per_sign_in_ms(&self) -> f64 {
        (self.cpu_ms - self.hashing_ms) / self.done.max(1) as f64
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn code_at_step(secret: &[u8], step: u64) -> anyhow::Result<String> {
    let totp = totp_rs::Builder::new()
        .with_secret(secret.to_vec())
        .build()
        .map_err(|e| anyhow::anyhow!("TOTP secret refused: {e:?}"))?;
    Ok(totp.generate(step * STEP_SECS).to_string())
}

fn body_field(body: &[u8], pointer: &str) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .pointer(pointer)?
        .as_str()
        .map(str::to_owned)
}

/// Turns two-factor on for `account`: setup, then verify-setup with the current code.
async fn enable(addr: SocketAddr, account: &Account) -> anyhow::Result<TwoFactorUser> {
    let setup = Call::post("/api/2fa/setup", &serde_json::json!({})).bearer(&account.access);
    let (status, body) = once(addr, &setup).await?;
    anyhow::ensure!(status == StatusCode::OK, "2fa setup answered {status}");
    let base32 = body_field(&body, "/secret").context("setup gave no secret")?;
    let secret = totp_rs::Secret::try_from_base32(&base32)
        .map_err(|e| anyhow::anyhow!("setup's secret is not base32: {e:?}"))?
        .as_bytes()
        .to_vec();
    let step = unix_secs() / STEP_SECS;
    let code = code_at_step(&secret, step)?;
    let verify = Call::post(
        "/api/2fa/verify-setup",
        &serde_json::json!({ "code": code }),
    )
    .bearer(&account.access);
    let (status, body) = once(addr, &verify).await?;
    anyhow::ensure!(
        status == StatusCode::OK,
        "2fa verify-setup answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(TwoFactorUser {
        email: account.email.clone(),
        secret,
        last_step: step,
    })
}

/// One sign-in of `kind`; true when it ended with an access token.
async fn sign_in(conn: &mut Conn, email: &str, code: Option<&str>) -> anyhow::Result<bool> {
    let login = Call::post(
        "/api/auth/login",
        &serde_json::json!({ "email": email, "password": PASSWORD }),
    );
    let (status, body) = conn.send(&login).await?;
    if status != StatusCode::OK {
        return Ok(false);
    }
    let Some(code) = code else {
        return Ok(body_field(&body, "/accessToken").is_some());
    };
    let Some(temp) = body_field(&body, "/tempToken") else {
        return Ok(false);
    };
    let verify = Call::post(
        "/api/2fa/verify",
        &serde_json::json!({ "tempToken": temp, "code": code }),
    );
    let (status, body) = conn.send(&verify).await?;
    Ok(status == StatusCode::OK && body_field(&body, "/accessToken").is_some())
}

/// Signs in every user of the round (email and, for two-factor, the code), `concurrency` at a
/// time on keep-alive connections, measuring the server's CPU over it.
async fn round(
    addr: SocketAddr,
    pid: u32,
    kind: Kind,
    work: Vec<(String, Option<String>)>,
    concurrency: usize,
) -> anyhow::Result<Round> {
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let mut conns = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        conns.push(Conn::open(addr).await?);
    }
    let t0 = process_ticks(pid).context("the server's /proc/<pid>/stat")?;
    let h0 = hashing_ticks(pid).context("the server's /proc/<pid>/task")?;
    let n0 = metric_now(addr, HASHES)
        .await
        .context("the server's hash count")?;
    let started = Instant::now();
    let workers = conns.into_iter().map(|mut conn| {
        let (work, next) = (work.clone(), next.clone());
        tokio::spawn(async move {
            let (mut done, mut failed) = (0, 0);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((email, code)) = work.get(i) else {
                    return (done, failed);
                };
                match sign_in(&mut conn, email, code.as_deref()).await {
                    Ok(true) => done += 1,
                    Ok(false) => failed += 1,
                    Err(_) => {
                        failed += 1;
                        if conn.reopen().await.is_err() {
                            return (done, failed);
                        }
                    }
                }
            }
        })
    });
    let (mut done, mut failed) = (0, 0);
    for worker in futures::future::join_all(workers).await {
        let (d, f) = worker.unwrap_or((0, 0));
        done += d;
        failed += f;
    }
    let wall = started.elapsed();
    let t1 = process_ticks(pid).context("the server's /proc/<pid>/stat")?;
    let h1 = hashing_ticks(pid).context("the server's /proc/<pid>/task")?;
    let n1 = metric_now(addr, HASHES)
        .await
        .context("the server's hash count")?;
    Ok(Round {
        kind,
        done,
        failed,
        cpu_ms: (t1 - t0) as f64 * TICK_MS,
        hashing_ms: h1.saturating_sub(h0) as f64 * TICK_MS,
        hashes: n1 - n0,
        wall,
    })
}

/// The codes of the next two-factor round, one per user, each of a step later than the one it
/// last used: the current step or the next. Waits for the clock's next step when a user has
/// used both.
async fn next_codes(users: &mut [TwoFactorUser]) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let newest = users.iter().map(|u| u.last_step).max().unwrap_or(0);
    while unix_secs() / STEP_SECS < newest {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = unix_secs() / STEP_SECS;
    users
        .iter_mut()
        .map(|user| {
            let step = now.max(user.last_step + 1);
            user.last_step = step;
            Ok((user.email.clone(), Some(code_at_step(&user.secret, step)?)))
        })
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

pub async fn run(args: TwoFactorArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=100_000).contains(&args.users)
            && (1..=100).contains(&args.rounds)
            && (1..=256).contains(&args.concurrency),
        "users 1..=100000, rounds 1..=100, concurrency 1..=256"
    );
    std::fs::create_dir_all(&args.work_dir)?;
    let argon = argon2_ceiling::now(Cost::of_servers(&[])?).await?;
    println!(
        "argon2id m={} t={} p={}: {:.1} ms per hash (one thread, this process)",
        argon.memory_kib, argon.iterations, argon.parallelism, argon.hash_ms
    );
    for &store in &args.stores {
        let db = match store {
            StoreKind::Postgres => Some(BenchDb::create(&args.postgres_url).await?),
            StoreKind::File => None,
        };
        let result = run_store(
            &args,
            store,
            db.as_ref().map(|d| d.url.as_str()),
            argon.hash_ms,
        )
        .await;
        if let Some(db) = db {
            db.drop_now().await;
        }
        result?;
    }
    Ok(())
}

async fn run_store(
    args: &TwoFactorArgs,
    store: StoreKind,
    database_url: Option<&str>,
    argon_hash_ms: f64,
) -> anyhow::Result<()> {
    let server = Server::start(&ServerSpec {
        binary: &args.server,
        store,
        database_url,
        redis_url: args.redis_url.as_deref(),
        env: vec![("TOTP_ENCRYPTION_KEY".into(), TOTP_KEY.into())],
        work_dir: &args.work_dir,
        logs: ServerLogs::Discard,
    })
    .await?;
    let result = rounds(args, store, &server, argon_hash_ms).await;
    server.stop().await;
    result
}

async fn rounds(
    args: &TwoFactorArgs,
    store: StoreKind,
    server: &Server,
    argon_hash_ms: f64,
) -> anyhow::Result<()> {
    let name = store.name();
    let tag = format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let prepared = Instant::now();
    let plain = accounts(server.addr, &format!("{tag}-plain"), args.users, false).await?;
    let enrolled = accounts(server.addr, &format!("{tag}-2fa"), args.users, false).await?;
    let mut users = Vec::with_capacity(enrolled.len());
    for account in &enrolled {
        users.push(enable(server.addr, account).await?);
    }
    println!(
        "[{name}] {} plain and {} two-factor users prepared in {:.1} s",
        plain.len(),
        users.len(),
        prepared.elapsed().as_secs_f64()
    );
    let plain_work: Vec<(String, Option<String>)> =
        plain.iter().map(|a| (a.email.clone(), None)).collect();
    let mut results: Vec<Round> = Vec::new();
    for r in 0..args.rounds {
        // ABBA order, so neither kind always runs first after the other.
        let order = if r % 2 == 0 {
            [Kind::Plain, Kind::TwoFactor]
        } else {
            [Kind::TwoFactor, Kind::Plain]
        };
        for kind in order {
            let work = match kind {
                Kind::Plain => plain_work.clone(),
                Kind::TwoFactor => next_codes(&mut users).await?,
            };
            let result = round(server.addr, server.pid, kind, work, args.concurrency).await?;
            println!(
                "[{name}] round {} {:<9} {} signed in, {} failed, {:.2} s, server CPU {:.0} ms: {:.2} ms per sign-in ({:.2} hashing, {:.2} other)",
                r + 1,
                kind.name(),
                result.done,
                result.failed,
                result.wall.as_secs_f64(),
                result.cpu_ms,
                result.per_sign_in_ms(),
                result.hashing_ms / result.done.max(1) as f64,
                result.other_per_sign_in_ms()
            );
            results.push(result);
        }
    }
    let of = |kind: Kind| -> Vec<&Round> { results.iter().filter(|r| r.kind == kind).collect() };
    let per_sign_in = |rounds: &[&Round], cpu: fn(&Round) -> f64| {
        let cpu: f64 = rounds.iter().map(|r| cpu(r)).sum();
        let done: usize = rounds.iter().map(|r| r.done).sum();
        cpu / done.max(1) as f64
    };
    let total = |rounds: &[&Round]| per_sign_in(rounds, |r| r.cpu_ms);
    let hashing = |rounds: &[&Round]| per_sign_in(rounds, |r| r.hashing_ms);
    let hashes = |rounds: &[&Round]| per_sign_in(rounds, |r| r.hashes);
    let other = |rounds: &[&Round]| per_sign_in(rounds, |r| r.cpu_ms - r.hashing_ms);
    let (plain_rounds, mfa_rounds) = (of(Kind::Plain), of(Kind::TwoFactor));
    let differences: Vec<f64> = plain_rounds
        .iter()
        .zip(&mfa_rounds)
        .map(|(p, m)| m.per_sign_in_ms() - p.per_sign_in_ms())
        .collect();
    let failed: usize = results.iter().map(|r| r.failed).sum();
    println!(
        "[{name}] server CPU per completed sign-in, all rounds: login {:.2} ms, login+2fa {:.2} ms, \
         extra {:.2} ms; median of the {} paired rounds' extra {:.2} ms; {} failed",
        total(&plain_rounds),
        total(&mfa_rounds),
        total(&mfa_rounds) - total(&plain_rounds),
        differences.len(),
        median(differences),
        failed
    );
    let other_differences: Vec<f64> = plain_rounds
        .iter()
        .zip(&mfa_rounds)
        .map(|(p, m)| m.other_per_sign_in_ms() - p.other_per_sign_in_ms())
        .collect();
    println!(
        "[{name}] password hashes per sign-in: login {:.2}, login+2fa {:.2}; \
         hashing threads per sign-in: login {:.2} ms, login+2fa {:.2} ms (one hash: {:.1} ms here); \
         the rest: login {:.2} ms, login+2fa {:.2} ms, extra {:.2} ms; median of the paired rounds' extra {:.2} ms",
        hashes(&plain_rounds),
        hashes(&mfa_rounds),
        hashing(&plain_rounds),
        hashing(&mfa_rounds),
        argon_hash_ms,
        other(&plain_rounds),
        other(&mfa_rounds),
        other(&mfa_rounds) - other(&plain_rounds),
        median(other_differences)
    );
    Ok(())
}
