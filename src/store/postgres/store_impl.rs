//! [`Store`] on Postgres.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::held::Held;
use super::rows::{SessionRow, UserRow};
use super::sessions::{create_session, others_kept, session_by_id, session_by_token_hash};
use super::user_cache::UserCache;
use super::{PgStore, email_keys};
use crate::db::{Database, is_connection_error};
use crate::domain::{Email, UserRecord, UserType};
use crate::store::{
    EmailCollision, IdentityRecord, ImportOutcome, NewSession, RotateOutcome, RotateRequest,
    Rotation, SessionRecord, Store, StoreError, StoreResult,
};

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgresql"
    }

    fn database(&self) -> Option<Database> {
        Some(self.db.clone())
    }

    fn user_cache(&self) -> Option<Arc<UserCache>> {
        self.users.clone()
    }

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

    async fn ping(&self) -> StoreResult<()> {
        read_retrying!(self, |conn| sqlx::query("SELECT 1").execute(&mut *conn))?;
        Ok(())
    }

    async fn insert_user(&self, user: &UserRecord) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        sqlx::query(
            "INSERT INTO users (id, email, name, user_type, password_hash, google_id, email_verified, avatar, \
             created_at, last_login, email_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.name)
        .bind(user.user_type.as_str())
        .bind(&user.password_hash)
        .bind(&user.google_id)
        .bind(user.email_verified)
        .bind(&user.avatar)
        .bind(user.created_at)
        .bind(user.last_login)
        .bind(Email::key_of(&user.email))
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn user_by_email(&self, email: &Email) -> StoreResult<Option<UserRecord>> {
        let row: Option<UserRow> = read_retrying!(self, |conn| sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE ",
            by_email!()
        ))
        .bind(email.key())
        .bind(email.as_str())
        .fetch_optional(&mut *conn))?;
        Ok(row.map(UserRecord::from))
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        if let Some(users) = &self.users {
            if let Some(user) = users.get(id) {
                return Ok(Some(user));
            }
            // The database is known to be unreachable: a user read less than the cache's time
            // to live ago rather than a 503 (see user_cache).
            if self.db.is_unreachable()
                && let Some(user) = users.get_during_outage(id)
            {
                return Ok(Some(user));
            }
        }
        // Boxed on its own: the read's state (sqlx's futures) is large, and a hit should not pay
        // for moving it into this method's box on every call.
        Box::pin(self.read_user_by_id(id)).await
    }

    async fn set_password_hash(&self, user_id: &str, hash: &str) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done =
            sqlx::query("UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1")
                .bind(user_id)
                .bind(hash)
                .execute(&mut *conn)
                .await
                .map_err(|e| self.fail(e))?;
        self.changed_here(user_id);
        if done.rows_affected() == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    async fn remove_password(&self, user_id: &str) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done =
            sqlx::query("UPDATE users SET password_hash = NULL, updated_at = now() WHERE id = $1")
                .bind(user_id)
                .execute(&mut *conn)
                .await
                .map_err(|e| self.fail(e))?;
        self.changed_here(user_id);
        if done.rows_affected() == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    async fn set_last_login(&self, user_id: &str, at: DateTime<Utc>) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        sqlx::query("UPDATE users SET last_login = $2 WHERE id = $1")
            .bind(user_id)
            .bind(at)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        self.changed_here(user_id);
        Ok(())
    }

    async fn set_user_type(&self, email: &Email, user_type: UserType) -> StoreResult<UserRecord> {
        let mut conn = self.conn().await?;
        let row: Option<UserRow> = sqlx::query_as(concat!(
            "UPDATE users SET user_type = $3, updated_at = now() WHERE id = (SELECT id FROM users WHERE ",
            by_email!(),
            ") RETURNING ",
            user_columns!()
        ))
        .bind(email.key())
        .bind(email.as_str())
        .bind(user_type.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        let user = row.map(UserRecord::from).ok_or(StoreError::NotFound)?;
        self.changed_here(&user.id);
        Ok(user)
    }

    async fn import_user(&self, user: &UserRecord) -> StoreResult<ImportOutcome> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(
            "INSERT INTO users (id, email, name, user_type, password_hash, google_id, email_verified, avatar, \
             created_at, last_login, email_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.name)
        .bind(user.user_type.as_str())
        .bind(&user.password_hash)
        .bind(&user.google_id)
        .bind(user.email_verified)
        .bind(&user.avatar)
        .bind(user.created_at)
        .bind(user.last_login)
        .bind(Email::key_of(&user.email))
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(if done.rows_affected() == 1 {
            ImportOutcome::Inserted
        } else {
            ImportOutcome::Skipped
        })
    }

    async fn email_collisions(&self) -> StoreResult<Vec<EmailCollision>> {
        let mut conn = self.conn().await?;
        email_keys::collisions(&mut conn)
            .await
            .map_err(|e| self.fail(e))
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

    async fn user_by_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<UserRecord>> {
        self.pg_user_by_identity(issuer, subject).await
    }

    async fn identities_of(&self, user_id: &str) -> StoreResult<Vec<IdentityRecord>> {
        self.pg_identities_of(user_id).await
    }

    async fn insert_user_with_identity(
        &self,
        user: &UserRecord,
        identity: &IdentityRecord,
    ) -> StoreResult<()> {
        self.pg_insert_user_with_identity(user, identity).await
    }

    async fn link_identity(&self, identity: &IdentityRecord) -> StoreResult<()> {
        self.pg_link_identity(identity).await
    }

    async fn linked_with_password(&self) -> StoreResult<Vec<UserRecord>> {
        self.pg_linked_with_password().await
    }

    async fn touch_identity(
        &self,
        issuer: &str,
        subject: &str,
        email: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.pg_touch_identity(issuer, subject, email, at).await
    }
}
