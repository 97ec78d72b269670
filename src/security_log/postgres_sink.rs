//! Batched, idempotent inserts of security events: one statement per batch through `UNNEST`, and
//! `ON CONFLICT (id) DO NOTHING` so a replayed or retried batch never duplicates a row.

use super::event::SecurityEvent;
use crate::db::Database;

#[derive(Clone)]
pub struct PgSink {
    pub db: Database,
}

impl PgSink {
    pub async fn insert(&self, events: &[&SecurityEvent]) -> Result<u64, sqlx::Error> {
        let n = events.len();
        let mut ids = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut severities = Vec::with_capacity(n);
        let mut users = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut ips = Vec::with_capacity(n);
        let mut agents = Vec::with_capacity(n);
        let mut metadata = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        for e in events {
            ids.push(e.id);
            types.push(e.event_type.as_str());
            severities.push(e.severity.as_str());
            users.push(e.user_id.as_deref());
            tokens.push(e.token_id);
            ips.push(e.ip_address.as_deref());
            agents.push(e.user_agent.as_deref());
            metadata.push(super::event::metadata_json(e));
            times.push(e.created_at);
        }
        // Acquired once the arrays are built, so the connection is held only for the statement;
        // timed into `db_pool_acquire_wait_seconds{pool="security_log"}`.
        let mut conn = self.db.acquire().await?;
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} \
               (id, event_type, severity, user_id, token_id, ip_address, user_agent, metadata, created_at) \
             SELECT id, event_type, severity, user_id, token_id, ip_address, user_agent, metadata::jsonb, created_at \
             FROM UNNEST($1::uuid[], $2::varchar[], $3::varchar[], $4::varchar[], $5::uuid[], $6::varchar[], \
                         $7::text[], $8::text[], $9::timestamptz[]) \
               AS e(id, event_type, severity, user_id, token_id, ip_address, user_agent, metadata, created_at) \
             ON CONFLICT (id) DO NOTHING",
            self.db.schemas().security_events()
        )))
        .bind(&ids)
        .bind(&types)
        .bind(&severities)
        .bind(&users)
        .bind(&tokens)
        .bind(&ips)
        .bind(&agents)
        .bind(&metadata)
        .bind(&times)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected())
    }
}
