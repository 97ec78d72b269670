//! The two ceilings every run measures on the same machine: a bare axum handler that verifies an
//! HS256 bearer token and answers a small JSON (what HTTP + JWT alone cost), and the argon2id hash
//! time for the service's parameters (what a login must cost).
//!
//! The baseline server also answers the same handler plus one Postgres SELECT of the user by id:
//! the round trip a /me on the Postgres store makes when its user is not in the service's memory
//! (a cache miss; every request until session 9), so what share of the bare ceiling a /me with
//! that I/O could reach on this machine, whatever the service does around it. And the handler plus one Redis MGET of three keys: what checking revocations in Redis on
//! every request would cost (flux-auth checks an in-memory copy kept current from Redis).

use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Params, Version};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::server::JWT_SECRET;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    sub: String,
    email: String,
    iss: String,
    aud: String,
    exp: i64,
}

/// A token the baseline server accepts, shaped like flux-auth's access tokens; `sub` is a user
/// id the Postgres variant finds.
pub fn token(sub: &str) -> anyhow::Result<String> {
    let claims = Claims {
        sub: sub.to_owned(),
        email: "baseline@bench.example".into(),
        iss: "flux-auth".into(),
        aud: "fluxstudio".into(),
        exp: chrono::Utc::now().timestamp() + 3600,
    };
    Ok(jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )?)
}

struct Keys {
    key: DecodingKey,
    validation: Validation,
    redis: Option<redis::aio::ConnectionManager>,
    db: Option<sqlx::PgPool>,
}

type Shared = std::sync::Arc<Keys>;

fn verified(keys: &Keys, headers: &HeaderMap) -> Result<Claims, StatusCode> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(StatusCode::UNAUTHORIZED)?;
    jsonwebtoken::decode::<Claims>(token, &keys.key, &keys.validation)
        .map(|data| data.claims)
        .map_err(|_| StatusCode::UNAUTHORIZED)
}

fn answer(claims: &Claims) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "id": claims.sub,
        "email": claims.email,
        "userType": "client",
    }))
}

/// The bare baseline: bearer token, HS256 verify (issuer, audience, expiry), small JSON.
async fn me(
    State(keys): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, StatusCode> {
    verified(&keys, &headers).map(|c| answer(&c))
}

/// One MGET of three keys, as flux-auth's shared revocation check does.
async fn redis_check(keys: &Keys, claims: &Claims) -> Result<(), StatusCode> {
    let mut conn = keys.redis.clone().ok_or(StatusCode::NOT_IMPLEMENTED)?;
    let names = [
        format!("flux-load-baseline:rv:jti:{}", claims.sub),
        format!("flux-load-baseline:rv:sid:{}", claims.sub),
        format!("flux-load-baseline:rv:user:{}", claims.sub),
    ];
    let _: Vec<Option<i64>> = redis::cmd("MGET")
        .arg(&names)
        .query_async(&mut conn)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(())
}

/// One SELECT of the user by id, as flux-auth's Postgres store does.
async fn pg_lookup(keys: &Keys, claims: &Claims) -> Result<(), StatusCode> {
    let db = keys.db.as_ref().ok_or(StatusCode::NOT_IMPLEMENTED)?;
    let row: Option<(String, String, String, String)> =
        sqlx::query_as("SELECT id, email, name, user_type FROM users WHERE id = $1")
            .bind(&claims.sub)
            .fetch_optional(db)
            .await
            .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    row.map(|_| ()).ok_or(StatusCode::NOT_FOUND)
}

async fn me_redis(State(keys): State<Shared>, headers: HeaderMap) -> axum::response::Response {
    match verified(&keys, &headers) {
        Ok(claims) => match redis_check(&keys, &claims).await {
            Ok(()) => answer(&claims).into_response(),
            Err(status) => status.into_response(),
        },
        Err(status) => status.into_response(),
    }
}

async fn me_pg(State(keys): State<Shared>, headers: HeaderMap) -> axum::response::Response {
    match verified(&keys, &headers) {
        Ok(claims) => match pg_lookup(&keys, &claims).await {
            Ok(()) => answer(&claims).into_response(),
            Err(status) => status.into_response(),
        },
        Err(status) => status.into_response(),
    }
}

/// Serves the baseline on 127.0.0.1:`port` until killed, on a runtime shaped like flux-auth's
/// (tokio's multi-threaded default: one worker per core). With Redis and Postgres URLs it also
/// serves `/me-redis` and `/me-pg`.
pub fn serve(
    port: u16,
    redis_url: Option<String>,
    database_url: Option<String>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_issuer(&["flux-auth"]);
        validation.set_audience(&["fluxstudio"]);
        let redis = match redis_url {
            Some(url) => Some(redis::aio::ConnectionManager::new(redis::Client::open(url)?).await?),
            None => None,
        };
        // Sized like flux-auth's pool (DATABASE_MAX_CONNECTIONS default).
        let db = match database_url {
            Some(url) => Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(10)
                    .connect(&url)
                    .await?,
            ),
            None => None,
        };
        let keys = std::sync::Arc::new(Keys {
            key: DecodingKey::from_secret(JWT_SECRET.as_bytes()),
            validation,
            redis,
            db,
        });
        let app = axum::Router::new()
            .route("/me", get(me))
            .route("/me-redis", get(me_redis))
            .route("/me-pg", get(me_pg))
            .route("/health", get(|| async { "ok" }))
            .with_state(keys);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Argon2Baseline {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Median time of one hash on one otherwise idle thread.
    pub hash_ms: f64,
    pub cores: usize,
    /// cores ÷ hash time: the most logins (or signups) per second this machine can do.
    pub ceiling_per_sec: f64,
    /// Hashes per second measured with one warm hashing thread per core at once (memory bandwidth
    /// and shared caches can make this lower than the formula).
    pub measured_parallel_per_sec: f64,
}

fn hash_times(params: &Params, count: usize) -> anyhow::Result<Vec<Duration>> {
    // One buffer reused, on the same (huge) pages as the service's workers use.
    let mut memory = flux_auth::auth::passwords::HashMemory::new(params.block_count())?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; 32];
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        argon
            .hash_password_into_with_memory(
                format!("password number {i}").as_bytes(),
                b"flux-load-salt-16",
                &mut out,
                memory.blocks(),
            )
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
        times.push(started.elapsed());
    }
    Ok(times)
}

/// Hashes per second of `threads` threads hashing at once, each `per_thread` times after one
/// hash that faults its buffer in (not counted; every thread's first hash runs before the clock
/// starts).
fn hash_rate(params: &Params, threads: usize, per_thread: usize) -> anyhow::Result<f64> {
    let start = std::sync::Barrier::new(threads + 1);
    let finish = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let warm = hash_times(params, 1);
                    start.wait();
                    let timed = warm.and_then(|_| hash_times(params, per_thread));
                    finish.wait();
                    timed
                })
            })
            .collect();
        start.wait();
        let started = Instant::now();
        finish.wait();
        let elapsed = started.elapsed();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("an argon2 timing thread failed"))??;
        }
        Ok((threads * per_thread) as f64 / elapsed.as_secs_f64())
    })
}

/// One memory cost of [`scaling`]: one thread's rate, all cores' rate, in each round.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingPoint {
    pub memory_kib: u32,
    pub one_thread_per_sec: Vec<f64>,
    pub all_cores_per_sec: Vec<f64>,
}

impl ScalingPoint {
    /// All cores' rate over `cores` times one thread's, per round: 1.0 is perfect scaling.
    pub fn efficiencies(&self, cores: usize) -> Vec<f64> {
        self.one_thread_per_sec
            .iter()
            .zip(&self.all_cores_per_sec)
            .map(|(one, all)| all / (one * cores as f64))
            .collect()
    }
}

/// How argon2id's hash rate scales from one thread to one per core, at each memory cost: the
/// login ceiling `cores ÷ hash time` assumes it scales perfectly. A cost small enough to stay in
/// each core's own cache is the control (the cores' compute alone). Each round measures one
/// thread, then all cores, for about `seconds` each; the order of the memory costs alternates
/// between rounds so that a drift of the machine's speed does not favour one of them.
pub fn scaling(
    memory_kib: &[u32],
    iterations: u32,
    rounds: usize,
    seconds: f64,
) -> anyhow::Result<(usize, Vec<ScalingPoint>)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut points: Vec<ScalingPoint> = memory_kib
        .iter()
        .map(|&m| ScalingPoint {
            memory_kib: m,
            one_thread_per_sec: Vec::new(),
            all_cores_per_sec: Vec::new(),
        })
        .collect();
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..points.len()).collect()
        } else {
            (0..points.len()).rev().collect()
        };
        for i in order {
            let point = &mut points[i];
            let params = Params::new(point.memory_kib, iterations, 1, Some(32))
                .map_err(|e| anyhow::anyhow!("argon2 m={} KiB: {e}", point.memory_kib))?;
            // Sized from one probe hash so each measurement takes about `seconds`.
            let probe = hash_times(&params, 2)?[1].as_secs_f64();
            let per_thread = ((seconds / probe) as usize).clamp(3, 100_000);
            let one = hash_rate(&params, 1, per_thread)?;
            let all = hash_rate(&params, cores, per_thread)?;
            eprintln!(
                "round {}/{rounds}: m={} KiB: one thread {one:.1}/s, {cores} threads {all:.1}/s, efficiency {:.2}",
                round + 1,
                point.memory_kib,
                all / (one * cores as f64)
            );
            point.one_thread_per_sec.push(one);
            point.all_cores_per_sec.push(all);
        }
    }
    Ok((cores, points))
}

/// Times the hash on one thread, then on one thread per core at once.
pub fn argon2(
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
) -> anyhow::Result<Argon2Baseline> {
    let params = Params::new(memory_kib, iterations, parallelism, Some(32))
        .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The first hash pays for faulting the buffer in; the service's workers keep theirs.
    let mut single = hash_times(&params, 21)?;
    single.remove(0);
    single.sort_unstable();
    let hash = single[single.len() / 2];
    // Until session 11 the threads' spawning and first hash (faulting 19 MiB in) were timed too,
    // which put this rate 10-30% below what warm hashing threads do.
    let parallel = hash_rate(&params, cores, 10)?;
    Ok(Argon2Baseline {
        memory_kib,
        iterations,
        parallelism,
        hash_ms: hash.as_secs_f64() * 1000.0,
        cores,
        ceiling_per_sec: cores as f64 / hash.as_secs_f64(),
        measured_parallel_per_sec: parallel,
    })
}
