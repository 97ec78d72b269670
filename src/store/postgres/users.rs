//! Users: [`UserStore`] on Postgres, reads by id through the store's cache.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::rows::{self, INSERT_USER, INSERT_USER_IF_ABSENT, UserRow};
use super::{PgStore, email_keys};
use crate::domain::{Email, UserRecord, UserType};
use crate::store::{
    EmailCollision, ImportOutcome, ProfileChange, StoreError, StoreResult, UserStore,
};

impl PgStore {
    /// [`UserStore::user_by_id`] from the database, kept in the cache if nothing changed meanwhile.
    pub(super) async fn read_user_by_id(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        let ticket = self.users.as_ref().and_then(|users| users.ticket());
        let row: Option<UserRow> = read_retrying!(self, |conn| sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *conn))?;
        let user = row.map(UserRecord::from);
        if let (Some(users), Some(ticket), Some(user)) = (&self.users, ticket, &user) {
            users.keep(ticket, user);
        }
        Ok(user)
    }
}

#[async_trait]
impl UserStore for PgStore {
    async fn insert_user(&self, user: &UserRecord) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        rows::insert_user(user, INSERT_USER)
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
        self.user_updated(user_id, done.rows_affected())
    }

    async fn remove_password(&self, user_id: &str) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done =
            sqlx::query("UPDATE users SET password_hash = NULL, updated_at = now() WHERE id = $1")
                .bind(user_id)
                .execute(&mut *conn)
                .await
                .map_err(|e| self.fail(e))?;
        self.user_updated(user_id, done.rows_affected())
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
        let done = rows::insert_user(user, INSERT_USER_IF_ABSENT)
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

    async fn update_profile(
        &self,
        user_id: &str,
        change: &ProfileChange,
        at: DateTime<Utc>,
    ) -> StoreResult<UserRecord> {
        let mut conn = self.conn().await?;
        let row: Option<UserRow> = sqlx::query_as(concat!(
            "UPDATE users SET name = COALESCE($2, name), \
             avatar = CASE WHEN $3 THEN $4 ELSE avatar END, updated_at = $5 \
             WHERE id = $1 RETURNING ",
            user_columns!()
        ))
        .bind(user_id)
        .bind(&change.name)
        .bind(change.avatar.is_some())
        .bind(change.avatar.clone().flatten())
        .bind(at)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        self.changed_here(user_id);
        row.map(UserRecord::from).ok_or(StoreError::NotFound)
    }

    async fn user_settings(&self, user_id: &str) -> StoreResult<Option<serde_json::Value>> {
        let row: Option<(Option<serde_json::Value>,)> = read_retrying!(self, |conn| {
            sqlx::query_as("SELECT settings FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(&mut *conn)
        })?;
        row.map(|(settings,)| settings).ok_or(StoreError::NotFound)
    }

    async fn set_user_settings(
        &self,
        user_id: &str,
        settings: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done = sqlx::query("UPDATE users SET settings = $2, updated_at = $3 WHERE id = $1")
            .bind(user_id)
            .bind(settings)
            .bind(at)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        self.user_updated(user_id, done.rows_affected())
    }
}
