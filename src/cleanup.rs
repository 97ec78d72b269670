//! Scheduled cleanup: sessions that ended long ago (with their refresh tokens) and security events
//! past their retention, in small batches, on both stores. Runs every `CLEANUP_INTERVAL_SECS`
//! and on demand (`flux-auth cleanup`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::security_log::retention::{self, Retention};
use crate::security_log::{EventType, SecurityEvent};
use crate::state::AppState;

const BATCH: usize = 500;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanupReport {
    pub sessions_deleted: u64,
    pub events_deleted: u64,
}

/// One pass. Failures are logged and leave the rest for the next pass.
pub async fn run_once(state: &AppState) -> CleanupReport {
    let now = state.clock.now();
    let mut report = CleanupReport::default();
    let idle = state.auth.policy.idle_ttl;
    loop {
        match state
            .auth
            .store
            .delete_ended_sessions(now, idle, BATCH)
            .await
        {
            Ok(n) => {
                report.sessions_deleted += n;
                if (n as usize) < BATCH {
                    break;
                }
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "session cleanup stopped; will retry next pass");
                break;
            }
        }
    }
    // Sent mail's records and expired one-time tokens (a sent message's body is gone already).
    let kept_since = now - chrono::Duration::days(crate::store::outbox::SENT_RETENTION_DAYS);
    match state.auth.store.delete_finished_mail(kept_since, now).await {
        Ok(n) => tracing::debug!(deleted = n, "outbox and one-time tokens cleaned"),
        Err(e) => tracing::warn!(error = %e, "outbox cleanup stopped; will retry next pass"),
    }
    let policy = Retention::from_settings(&state.settings);
    let events = match &state.security_db {
        Some(db) if db.is_ready() => retention::delete_from_postgres(db, policy, now, BATCH as i64)
            .await
            .map_err(|e| e.to_string()),
        Some(_) => Ok(0),
        None => {
            let spool = state.spool.clone();
            tokio::task::spawn_blocking(move || retention::prune_files(&spool, policy, now))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
        }
    };
    match events {
        Ok(n) => report.events_deleted = n,
        Err(e) => {
            tracing::warn!(error = %e, "security event retention stopped; will retry next pass")
        }
    }
    tracing::info!(
        sessions = report.sessions_deleted,
        events = report.events_deleted,
        "cleanup pass done"
    );
    if report != CleanupReport::default() {
        state
            .auth
            .events
            .record(
                SecurityEvent::new(EventType::TokenCleanup)
                    .with("sessionsDeleted", report.sessions_deleted)
                    .with("eventsDeleted", report.events_deleted),
            )
            .await;
    }
    report
}

/// Runs [`run_once`] every `every` (first a minute after start) until `stop`.
pub async fn schedule(state: AppState, every: Duration, stop: CancellationToken) {
    let mut wait = Duration::from_secs(60).min(every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        run_once(&state).await;
        wait = every;
    }
}
