//! `/health` (what ops and pm2 dashboards read), `/health/live` and `/health/ready`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::bodies::{Health, Liveness, Readiness};
use crate::app::AppState;
use crate::domain::format_timestamp;
use crate::error::ErrorBody;

const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// `ok`, `error` or `not_configured` for the database the service depends on.
async fn database_check(state: &AppState) -> &'static str {
    let probe = if state.auth.store.kind() == "postgresql" {
        Some(
            tokio::time::timeout(PROBE_TIMEOUT, state.auth.store.ping())
                .await
                .map(|r| r.is_ok()),
        )
    } else if let Some(db) = &state.security_db {
        Some(
            tokio::time::timeout(PROBE_TIMEOUT, db.ping())
                .await
                .map(|r| r.is_ok() && db.is_ready()),
        )
    } else {
        None
    };
    match probe {
        None => "not_configured",
        Some(Ok(true)) => "ok",
        Some(_) => "error",
    }
}

#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "Always 200; `status` says ok or degraded", body = Health)))]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let database = database_check(&state).await;
    let redis = state.limits.health().await;
    let log = &state.auth.events;
    let stats = log.stats();
    let sink_down = log.sink() == "postgresql" && !stats.sink_healthy.load(Ordering::Relaxed);
    let spooled = stats.spool_backlog.load(Ordering::Relaxed).max(0);
    let log_trouble = sink_down
        || spooled > 0
        || stats.spool_over_cap.load(Ordering::Relaxed)
        || stats.spool_failing.load(Ordering::Relaxed);
    let degraded = database == "error" || redis == "error" || log_trouble;
    Json(json!({
        "status": if degraded { "degraded" } else { "ok" },
        "service": "auth-service",
        "version": env!("CARGO_PKG_VERSION"),
        "port": state.settings.port,
        "uptime": state.started.elapsed().as_secs(),
        "timestamp": format_timestamp(chrono::Utc::now()),
        "pid": std::process::id(),
        "checks": {
            "database": database,
            "storageType": state.auth.store.kind(),
            "redis": redis,
            "oauth": if state.settings.google_client_id.is_empty() { "not_configured" } else { "configured" },
            "securityLog": {
                "sink": log.sink(),
                "healthy": !log_trouble,
                "queued": log.queued(),
                "spooled": spooled,
                "dropped": stats.dropped.load(Ordering::Relaxed),
                "lastFlushAt": stats.last_flush().map(format_timestamp),
            }
        }
    }))
}

#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "The process runs", body = Liveness)))]
pub async fn live() -> impl IntoResponse {
    Json(json!({ "status": "alive" }))
}

/// 503 while logins cannot be served: the configured user store does not answer.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "Logins can be served", body = Readiness),
        (status = 503, description = "The user store does not answer: `SERVICE_UNAVAILABLE` \
            with `Retry-After`", body = ErrorBody),
    ))]
pub async fn ready(
    State(state): State<AppState>,
) -> Result<impl IntoResponse, crate::error::ApiError> {
    let store_ok = matches!(
        tokio::time::timeout(PROBE_TIMEOUT, state.auth.store.ping()).await,
        Ok(Ok(()))
    );
    if store_ok {
        Ok((StatusCode::OK, Json(json!({ "status": "ready" }))))
    } else {
        // The Error shape, SERVICE_UNAVAILABLE with Retry-After, like every other 503.
        Err(crate::error::ApiError::Unavailable { retry_after: 5 })
    }
}
