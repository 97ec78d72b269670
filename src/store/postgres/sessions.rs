//! Sessions and their refresh tokens: [`SessionStore`] on Postgres (rotation in `rotation.rs`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::PgStore;
use super::held::Held;
use super::rows::SessionRow;
use crate::db::is_connection_error;
use crate::store::{
    NewSession, RotateOutcome, RotateRequest, Rotation, SessionRecord, SessionStore, StoreResult,
};

/// The statement behind [`SessionStore::create_session`].
async fn create_session(
    conn: &mut PgConnection,
    new: &NewSession,
    max_live: usize,
    idle_ttl: chrono::Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let (s, t) = (&new.session, &new.token);
    sqlx::query_scalar(
        "WITH session AS ( \
           INSERT INTO auth_sessions (id, user_id, device_name, ip_address, user_agent, fingerprint, \
             created_at, last_used_at, expires_at) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING RETURNING id), \
         token AS ( \
           INSERT INTO refresh_tokens (id, session_id, token_hash, created_at, rotated_at, replaced_by) \
           SELECT $10, id, $11, $12, $13, $14 FROM session), \
         login AS ( \
           UPDATE users SET last_login = $7 WHERE $15 AND id = $2), \
         evicted AS ( \
           UPDATE auth_sessions SET revoked_at = $7, revoked_reason = 'session_limit' WHERE id IN ( \
             SELECT id FROM auth_sessions WHERE user_id = $2 AND id <> $1 AND revoked_at IS NULL \
               AND expires_at > $7 AND last_used_at > $16 \
             ORDER BY created_at DESC, id DESC OFFSET $17) \
           RETURNING id) \
         SELECT id FROM evicted",
    )
    .bind(s.id)
    .bind(&s.user_id)
    .bind(&s.device_name)
    .bind(&s.ip_address)
    .bind(&s.user_agent)
    .bind(&s.fingerprint)
    .bind(s.created_at)
    .bind(s.last_used_at)
    .bind(s.expires_at)
    .bind(t.id)
    .bind(&t.token_hash)
    .bind(t.created_at)
    .bind(t.rotated_at)
    .bind(t.replaced_by)
    .bind(new.records_login)
    .bind(s.created_at - idle_ttl)
    .bind(others_kept(max_live))
    .fetch_all(conn)
    .await
}

/// How many of a user's other live sessions stay when one more must fit under `max_live` (an
/// `OFFSET`: `usize::MAX`, no cap, saturates instead of wrapping to a negative number).
fn others_kept(max_live: usize) -> i64 {
    i64::try_from(max_live.saturating_sub(1)).unwrap_or(i64::MAX)
}

async fn session_by_id(
    conn: &mut PgConnection,
    session_id: Uuid,
) -> Result<Option<SessionRecord>, sqlx::Error> {
    let row: Option<SessionRow> = sqlx::query_as(concat!(
        "SELECT ",
        session_columns!(),
        " FROM auth_sessions WHERE id = $1"
    ))
    .bind(session_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(SessionRecord::from))
}

async fn session_by_token_hash(
    conn: &mut PgConnection,
    token_hash: &str,
) -> Result<Option<(SessionRecord, Uuid)>, sqlx::Error> {
    let row: Option<(Uuid, Uuid)> = sqlx::query_as(
        // `::bpchar`: see ROTATION_READ.
        "SELECT session_id, id FROM refresh_tokens WHERE token_hash = $1::bpchar",
    )
    .bind(token_hash)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((session_id, token_id)) = row else {
        return Ok(None);
    };
    // On the same connection: one acquire, and never two connections held at once.
    Ok(session_by_id(conn, session_id)
        .await?
        .map(|s| (s, token_id)))
}

#[async_trait]
impl SessionStore for PgStore {
    async fn delete_ended_sessions(
        &self,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
        batch: usize,
    ) -> StoreResult<u64> {
        let cutoff = now - chrono::Duration::days(crate::store::ENDED_SESSION_RETENTION_DAYS);
        let mut conn = self.conn().await?;
        // SKIP LOCKED: never wait behind a refresh that holds a session row.
        let done = sqlx::query(
            "DELETE FROM auth_sessions WHERE id IN ( \
               SELECT id FROM auth_sessions \
               WHERE revoked_at < $1 OR expires_at < $1 OR last_used_at < $2 \
               LIMIT $3 FOR UPDATE SKIP LOCKED)",
        )
        .bind(cutoff)
        .bind(cutoff - idle_ttl)
        .bind(batch as i64)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected())
    }

    async fn create_session(
        &self,
        new: &NewSession,
        max_live: usize,
        idle_ttl: chrono::Duration,
    ) -> StoreResult<Vec<Uuid>> {
        // One statement, so one round trip and one commit per sign-in, `last_login` included.
        // Its parts see the same snapshot, so the eviction does not see the new session: it
        // keeps the newest `max_live - 1` others.
        //
        // The ids are the caller's, so the statement is idempotent: a repeat inserts nothing
        // (`ON CONFLICT`, and the token only with its new session) and revokes nothing more,
        // since the new session is excluded from the count. That makes it safe to repeat once
        // after a connection-level failure, when it may or may not have been applied (a pooled
        // connection that a restart of Postgres broke fails on first use).
        //
        // A sign-in that gives up midway must not store its session later: nobody has its token,
        // and it would count against (and evict from) the user's live sessions (see `Held`).
        let mut held = Held::default();
        let mut retried = false;
        let created = loop {
            let conn = held.hold(self.conn().await?);
            match create_session(conn, new, max_live, idle_ttl).await {
                Ok(evicted) => {
                    if new.records_login {
                        self.changed_here(&new.session.user_id);
                    }
                    break Ok(evicted);
                }
                Err(e) if !retried && is_connection_error(&e) => {
                    self.db.note_failure(&e);
                    retried = true;
                }
                Err(e) => break Err(self.fail(e)),
            }
        };
        held.release();
        created
    }

    async fn evict_sessions(
        &self,
        user_id: &str,
        keep: Uuid,
        max_live: usize,
        idle_ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Uuid>> {
        let mut conn = self.conn().await?;
        // `revoked_at IS NULL` again outside: a logout that ends one of them meanwhile keeps its
        // own reason.
        sqlx::query_scalar(
            "UPDATE auth_sessions SET revoked_at = $3, revoked_reason = 'session_limit' \
             WHERE revoked_at IS NULL AND id IN ( \
               SELECT id FROM auth_sessions WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL \
                 AND expires_at > $3 AND last_used_at > $4 \
               ORDER BY created_at DESC, id DESC OFFSET $5) \
             RETURNING id",
        )
        .bind(user_id)
        .bind(keep)
        .bind(now)
        .bind(now - idle_ttl)
        .bind(others_kept(max_live))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.fail(e))
    }

    async fn rotate_refresh_token(&self, request: &RotateRequest) -> StoreResult<RotateOutcome> {
        Ok(self.rotate(request).await?.outcome)
    }

    async fn rotate_refresh_token_with_user(
        &self,
        request: &RotateRequest,
    ) -> StoreResult<Rotation> {
        self.rotate(request).await
    }

    async fn session_by_token_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<(SessionRecord, Uuid)>> {
        read_retrying!(self, |conn| session_by_token_hash(&mut conn, token_hash))
    }

    async fn revoke_session(
        &self,
        user_id: &str,
        session_id: Uuid,
        now: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<bool> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $3, revoked_reason = $4 \
             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(now)
        .bind(reason)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_other_sessions(
        &self,
        user_id: &str,
        keep: Uuid,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
        reason: &str,
    ) -> StoreResult<Vec<Uuid>> {
        let mut conn = self.conn().await?;
        let ids: Vec<(Uuid,)> = sqlx::query_as(
            "UPDATE auth_sessions SET revoked_at = $3, revoked_reason = $5 \
             WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL \
               AND expires_at > $3 AND last_used_at > $4 RETURNING id",
        )
        .bind(user_id)
        .bind(keep)
        .bind(now)
        .bind(now - idle_ttl)
        .bind(reason)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    async fn revoke_all_sessions(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<u64> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $2, revoked_reason = $3 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(now)
        .bind(reason)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected())
    }

    async fn live_sessions(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
    ) -> StoreResult<Vec<SessionRecord>> {
        let rows: Vec<SessionRow> = read_retrying!(self, |conn| sqlx::query_as(concat!(
            "SELECT ",
            session_columns!(),
            " FROM auth_sessions WHERE user_id = $1 AND revoked_at IS NULL \
             AND expires_at > $2 AND last_used_at > $3 ORDER BY last_used_at DESC"
        ))
        .bind(user_id)
        .bind(now)
        .bind(now - idle_ttl)
        .fetch_all(&mut *conn))?;
        Ok(rows.into_iter().map(SessionRecord::from).collect())
    }

    async fn sessions_revoked_since(
        &self,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<(Uuid, DateTime<Utc>)>> {
        read_retrying!(self, |conn| sqlx::query_as(
            "SELECT id, revoked_at FROM auth_sessions WHERE revoked_at >= $1"
        )
        .bind(since)
        .fetch_all(&mut *conn))
    }

    async fn session(&self, session_id: Uuid) -> StoreResult<Option<SessionRecord>> {
        read_retrying!(self, |conn| session_by_id(&mut conn, session_id))
    }
}
