//! The bare baseline server, the HTTP ceiling every run measures on the same machine: an axum
//! handler that verifies an HS256 bearer token and answers a small JSON (what HTTP + JWT alone
//! cost). The argon2id ceiling (what a login must cost) is in `argon2_ceiling`.
//!
//! The baseline server also answers the same handler plus one Postgres SELECT of the user by id:
//! the round trip a /me on the Postgres store makes when its user is not in the service's memory
//! (a user-cache miss), so what share of the bare ceiling a /me with that I/O could reach on this
//! machine, whatever the service does around it. And the handler plus one Redis MGET of three
//! keys: what checking revocations in Redis on every request would cost (flux-auth checks an
//! in-memory copy kept current from Redis).

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
                // flux-auth's tables are in its own schema (`flux_auth`); builds from before it
                // kept them in `public`: either answers.
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(10)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::Executor::execute(conn, "SET search_path = flux_auth, public")
                                .await
                                .map(drop)
                        })
                    })
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
