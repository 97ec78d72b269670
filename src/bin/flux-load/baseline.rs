//! The two ceilings every run measures on the same machine: a bare axum handler that verifies an
//! HS256 bearer token and answers a small JSON (what HTTP + JWT alone cost), and the argon2id hash
//! time for the service's parameters (what a login must cost).

use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, Version};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::server::JWT_SECRET;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    sub: String,
    email: String,
    iss: String,
    aud: String,
    exp: i64,
}

/// A token the baseline server accepts, shaped like flux-auth's access tokens.
pub fn token() -> anyhow::Result<String> {
    let claims = Claims {
        sub: uuid::Uuid::new_v4().to_string(),
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
}

/// The baseline handler: bearer token, HS256 verify (issuer, audience, expiry), small JSON.
async fn me(
    State(keys): State<std::sync::Arc<Keys>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, StatusCode> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(StatusCode::UNAUTHORIZED)?;
    let data = jsonwebtoken::decode::<Claims>(token, &keys.key, &keys.validation)
        .map_err(|_| StatusCode::UNAUTHORIZED)?;
    Ok(Json(serde_json::json!({
        "id": data.claims.sub,
        "email": data.claims.email,
        "userType": "client",
    })))
}

/// Serves the baseline on 127.0.0.1:`port` until killed, on a runtime shaped like flux-auth's
/// (tokio's multi-threaded default: one worker per core).
pub fn serve(port: u16) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_issuer(&["flux-auth"]);
        validation.set_audience(&["fluxstudio"]);
        let keys = std::sync::Arc::new(Keys {
            key: DecodingKey::from_secret(JWT_SECRET.as_bytes()),
            validation,
        });
        let app = axum::Router::new()
            .route("/me", get(me))
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
    /// Hashes per second measured with one hashing thread per core at once (memory bandwidth and
    /// shared caches make this lower than the formula).
    pub measured_parallel_per_sec: f64,
}

fn hash_times(params: &Params, count: usize) -> anyhow::Result<Vec<Duration>> {
    // One buffer reused, as the service's workers do.
    let mut memory = vec![Block::default(); params.block_count()];
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
                &mut memory,
            )
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
        times.push(started.elapsed());
    }
    Ok(times)
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
    let per_thread = 10;
    let started = Instant::now();
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let params = params.clone();
            std::thread::spawn(move || hash_times(&params, per_thread + 1))
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("an argon2 timing thread failed"))??;
    }
    let parallel = (cores * (per_thread + 1)) as f64 / started.elapsed().as_secs_f64();
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
