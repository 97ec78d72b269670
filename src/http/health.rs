//! `/health` (what ops and pm2 dashboards read), `/health/live` and `/health/ready`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::bodies::health::{
    AlertsHealth, CheckState, Configured, Health, HealthChecks, HealthStatus, Liveness, MailHealth,
    Readiness, SecurityLogHealth, StorageType,
};
use crate::domain::format_timestamp;
use crate::error::ErrorBody;
use crate::state::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Whether `ping` succeeds within [`PROBE_TIMEOUT`].
async fn answers<E>(ping: impl Future<Output = Result<(), E>>) -> bool {
    matches!(tokio::time::timeout(PROBE_TIMEOUT, ping).await, Ok(Ok(())))
}

/// Whether the user store answers.
async fn store_answers(state: &AppState) -> bool {
    state
        .probes
        .store
        .check(|| answers(state.auth.store.ping()))
        .await
}

/// Whether the security log writes to the user store's database (no database of its own).
fn log_shares_store_database(state: &AppState) -> bool {
    state.security_db.is_some()
        && state.settings.security_log_database_url.is_none()
        && state.auth.store.kind() == "postgresql"
}

/// What health's probes found: the user store (when it is Postgres) and the security log's
/// database (when it has one); `None` where nothing was probed.
struct Answers {
    store: Option<bool>,
    log_db: Option<bool>,
}

/// Probes the user store, and the security log's database when it is the one `database` reports
/// (a file store) or the log's writer has lost it (then it is the sink's state now).
async fn probe_databases(state: &AppState, sink_down: bool) -> Answers {
    let store = if state.auth.store.kind() == "postgresql" {
        Some(store_answers(state).await)
    } else {
        None
    };
    let log_db = match &state.security_db {
        None => None,
        Some(_) if log_shares_store_database(state) => store,
        Some(db) if store.is_none() || sink_down => Some(
            state
                .probes
                .security_db
                .check(|| async { answers(db.ping()).await && db.is_ready() })
                .await,
        ),
        Some(_) => None,
    };
    Answers { store, log_db }
}

#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "Always 200; `status` says ok or degraded", body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let log = &state.auth.events;
    let stats = log.stats();
    let sink_down = log.sink() == "postgresql" && !stats.sink_healthy.load(Ordering::Relaxed);
    let spool_failing = stats.spool_failing.load(Ordering::Relaxed);
    let found = probe_databases(&state, sink_down).await;
    // The database the service depends on.
    let database = match found.store.or(found.log_db) {
        Some(true) => CheckState::Ok,
        Some(false) => CheckState::Error,
        None => CheckState::NotConfigured,
    };
    let redis = CheckState::of(state.limits.health().await);
    if found.log_db == Some(true) && sink_down {
        // The writer may be waiting out its back-off: it need not.
        log.database_recovered();
    }
    // Everything here is the present: the sink as this request's probe found it (else as the
    // writer's last write found it), the spool as its last write or check found it. A loss in
    // the past is `dropped` and `lastDropAt`, and does not make the log unhealthy now.
    let sink_up = found.log_db.unwrap_or(!sink_down);
    let spooled = stats.spool_backlog.load(Ordering::Relaxed).max(0);
    let log_trouble =
        !sink_up || spooled > 0 || stats.spool_over_cap.load(Ordering::Relaxed) || spool_failing;
    let degraded = database == CheckState::Error || redis == CheckState::Error || log_trouble;
    Json(Health {
        status: if degraded {
            HealthStatus::Degraded
        } else {
            HealthStatus::Ok
        },
        service: "auth-service",
        version: env!("CARGO_PKG_VERSION"),
        port: state.settings.port,
        uptime: state.started.elapsed().as_secs(),
        timestamp: format_timestamp(state.clock.now()),
        pid: std::process::id(),
        checks: HealthChecks {
            database,
            storage_type: StorageType::of(state.auth.store.kind()),
            redis,
            oauth: if state.settings.google_client_id.is_empty() {
                Configured::NotConfigured
            } else {
                Configured::Configured
            },
            security_log: SecurityLogHealth {
                sink: StorageType::of(log.sink()),
                healthy: !log_trouble,
                queued: log.queued() as u64,
                spooled: spooled.unsigned_abs(),
                dropped: stats.dropped.load(Ordering::Relaxed),
                last_flush_at: stats.last_flush().map(format_timestamp),
                last_drop_at: stats.last_drop().map(format_timestamp),
            },
            mail: mail_health(&state),
            alerts: alerts_health(&state),
        },
    })
}

fn mail_health(state: &AppState) -> MailHealth {
    let outbox = &state.auth.mail;
    let stats = &outbox.stats;
    let requests = state.auth.mail_requests.levels();
    MailHealth {
        transport: outbox.transport,
        pending: stats.pending_now.load(Ordering::Relaxed),
        oldest_pending_age_secs: stats.oldest_pending_age_secs(state.clock.now()),
        dead: stats.dead_now.load(Ordering::Relaxed),
        sent: stats.sent.load(Ordering::Relaxed),
        requests_waiting: requests.waiting,
        requests_dropped: requests.dropped,
    }
}

fn alerts_health(state: &AppState) -> AlertsHealth {
    let alerts = &state.alerts;
    let stats = &alerts.stats;
    AlertsHealth {
        receivers: alerts.receivers(),
        pending: stats.pending_now.load(Ordering::Relaxed),
        oldest_pending_age_secs: alerts.oldest_pending_age_secs(),
        dead: stats.dead_now.load(Ordering::Relaxed),
        sent: stats.sent.load(Ordering::Relaxed),
    }
}

#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "The process runs", body = Liveness)))]
pub async fn live() -> Json<Liveness> {
    Json(Liveness { status: "alive" })
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
) -> Result<(StatusCode, Json<Readiness>), crate::error::ApiError> {
    if store_answers(&state).await {
        let log = &state.auth.events;
        if log_shares_store_database(&state) && !log.stats().sink_healthy.load(Ordering::Relaxed) {
            log.database_recovered();
        }
        Ok((StatusCode::OK, Json(Readiness { status: "ready" })))
    } else {
        // The Error shape, SERVICE_UNAVAILABLE with Retry-After, like every other 503.
        Err(crate::error::ApiError::Unavailable { retry_after: 5 })
    }
}
