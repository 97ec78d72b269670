//! The security events a test's app recorded, read from its sink: the spool files, or the
//! Postgres table when the log has a database.

use std::time::Duration;

use flux_auth::security_log::SecurityEvent;
use serde_json::Value;

use super::{TestApp, TestDb};

impl TestApp {
    /// Every security event recorded so far, oldest first, waiting until `ready` holds for them
    /// (the writer flushes within milliseconds; this polls, bounded at 10 s).
    pub async fn events_where(
        &self,
        ready: impl Fn(&[SecurityEvent]) -> bool,
    ) -> Vec<SecurityEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events().await;
            if ready(&events) || tokio::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until an event of `event_type` has been recorded, and returns all of that type.
    pub async fn events_of(&self, event_type: &str) -> Vec<SecurityEvent> {
        self.events_where(|evs| evs.iter().any(|e| e.event_type.as_str() == event_type))
            .await
            .into_iter()
            .filter(|e| e.event_type.as_str() == event_type)
            .collect()
    }

    /// The events in the sink: the Postgres table when the log has a database, else the files.
    pub async fn events(&self) -> Vec<SecurityEvent> {
        let mut events = match (
            &self.db,
            self.settings.security_log_database_url().is_some(),
        ) {
            (Some(db), true) => events_from_postgres(db).await,
            _ => events_from_files(&self.settings.security_log_dir()),
        };
        events.sort_by_key(|e| e.id);
        events
    }
}

pub fn events_from_files(dir: &std::path::Path) -> Vec<SecurityEvent> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut events = Vec::new();
    for entry in entries.flatten() {
        if let Ok(read) = flux_auth::security_log::spool::read_file(&entry.path()) {
            events.extend(read.events);
        }
    }
    events
}

pub async fn events_from_postgres(db: &TestDb) -> Vec<SecurityEvent> {
    let pool = db.pool().await;
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT json_build_object('id', id, 'event_type', event_type, 'severity', severity, 'user_id', user_id, \
         'token_id', token_id, 'ip_address', ip_address, 'user_agent', user_agent, 'metadata', metadata, \
         'created_at', created_at)::jsonb FROM security_events",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_default();
    pool.close().await;
    rows.into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

pub fn count_of(events: &[SecurityEvent], event_type: &str) -> usize {
    events
        .iter()
        .filter(|e| e.event_type.as_str() == event_type)
        .count()
}
