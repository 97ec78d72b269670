//! Two-factor sign-in: [`TwoFactorStore`] on Postgres (table `two_factor`, migration 010). Each
//! check that a code is used once is one conditional UPDATE: the row changes only when the code
//! is still usable, and the number of rows changed is the answer.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::PgStore;
use crate::store::{StoreResult, TwoFactorRecord, TwoFactorStore};

#[derive(sqlx::FromRow)]
struct TwoFactorRow {
    secret: Option<String>,
    pending_secret: Option<String>,
    enabled_at: Option<DateTime<Utc>>,
    last_step: Option<i64>,
    backup_codes: Vec<String>,
}

#[async_trait]
impl TwoFactorStore for PgStore {
    async fn two_factor(&self, user_id: &str) -> StoreResult<Option<TwoFactorRecord>> {
        let row: Option<TwoFactorRow> = read_retrying!(self, |conn| sqlx::query_as(
            "SELECT secret, pending_secret, enabled_at, last_step, backup_codes \
             FROM two_factor WHERE user_id = $1"
        )
        .bind(user_id)
        .fetch_optional(&mut *conn))?;
        Ok(row.map(|r| TwoFactorRecord {
            secret: r.secret,
            pending_secret: r.pending_secret,
            enabled_at: r.enabled_at,
            last_step: r.last_step,
            backup_codes: r.backup_codes,
        }))
    }

    async fn set_pending_two_factor(&self, user_id: &str, pending: &str) -> StoreResult<bool> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(
            "INSERT INTO two_factor (user_id, pending_secret) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE \
             SET pending_secret = EXCLUDED.pending_secret, updated_at = now() \
             WHERE two_factor.secret IS NULL",
        )
        .bind(user_id)
        .bind(pending)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn enable_two_factor(
        &self,
        user_id: &str,
        pending: &str,
        step: i64,
        backup_codes: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut conn = self.conn().await?;
        // The user's own flag (what `User.twoFactorEnabled` answers, and what the user cache's
        // change announcements carry to every instance) moves in the same statement.
        let done = sqlx::query(
            "WITH enabled AS (UPDATE two_factor SET secret = pending_secret, pending_secret = NULL, \
             enabled_at = $4, last_step = $3, backup_codes = $5, updated_at = now() \
             WHERE user_id = $1 AND secret IS NULL AND pending_secret = $2 RETURNING user_id) \
             UPDATE users SET two_factor_enabled = TRUE, updated_at = $4 \
             WHERE id IN (SELECT user_id FROM enabled)",
        )
        .bind(user_id)
        .bind(pending)
        .bind(step)
        .bind(now)
        .bind(backup_codes)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn disable_two_factor(&self, user_id: &str) -> StoreResult<bool> {
        let mut conn = self.conn().await?;
        let was_on: Option<bool> = sqlx::query_scalar(
            "WITH off AS (DELETE FROM two_factor WHERE user_id = $1 RETURNING secret IS NOT NULL AS was_on), \
             flag AS (UPDATE users SET two_factor_enabled = FALSE \
                      WHERE id = $1 AND two_factor_enabled) \
             SELECT was_on FROM off",
        )
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(was_on == Some(true))
    }

    async fn accept_totp_step(&self, user_id: &str, step: i64) -> StoreResult<bool> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(
            "UPDATE two_factor SET last_step = $2, updated_at = now() \
             WHERE user_id = $1 AND secret IS NOT NULL AND (last_step IS NULL OR last_step < $2)",
        )
        .bind(user_id)
        .bind(step)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn use_backup_code(&self, user_id: &str, hash: &str) -> StoreResult<bool> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(
            "UPDATE two_factor SET backup_codes = array_remove(backup_codes, $2), \
             updated_at = now() \
             WHERE user_id = $1 AND secret IS NOT NULL AND $2 = ANY (backup_codes)",
        )
        .bind(user_id)
        .bind(hash)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected() == 1)
    }
}
