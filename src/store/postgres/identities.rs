//! Provider identities on Postgres: rows of `user_identities` (migration 003), plus the legacy
//! `users.google_id` column that users imported from the old service carry.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Connection, Postgres, Transaction};

use super::PgStore;
use super::rows::{self, INSERT_USER, UserRow};
use crate::domain::GOOGLE_ISSUER;
use crate::domain::UserRecord;
use crate::store::{IdentityRecord, IdentityStore, StoreError, StoreResult};

#[derive(sqlx::FromRow)]
struct IdentityRow {
    issuer: String,
    subject: String,
    user_id: String,
    email: Option<String>,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
}

impl From<IdentityRow> for IdentityRecord {
    fn from(r: IdentityRow) -> Self {
        Self {
            issuer: r.issuer,
            subject: r.subject,
            user_id: r.user_id,
            email: r.email,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
        }
    }
}

/// Any unique violation while linking means the identity (or, for Google, the legacy
/// `google_id`) belongs to someone already.
fn identity_conflict(e: StoreError) -> StoreError {
    match e {
        StoreError::Conflict("email") => StoreError::Conflict("email"),
        StoreError::Conflict(_) => StoreError::Conflict("identity"),
        other => other,
    }
}

/// Inserts the identity row. A row left behind by a deleted user is taken over; a row of a live
/// user is not (`Conflict("identity")`).
async fn insert_identity(
    store: &PgStore,
    tx: &mut Transaction<'_, Postgres>,
    identity: &IdentityRecord,
) -> StoreResult<()> {
    let done = sqlx::query(
        "INSERT INTO user_identities (issuer, subject, user_id, email, created_at, last_used_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (issuer, subject) DO UPDATE SET user_id = EXCLUDED.user_id, email = EXCLUDED.email, \
           created_at = EXCLUDED.created_at, last_used_at = EXCLUDED.last_used_at \
         WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = user_identities.user_id)",
    )
    .bind(&identity.issuer)
    .bind(&identity.subject)
    .bind(&identity.user_id)
    .bind(&identity.email)
    .bind(identity.created_at)
    .bind(identity.last_used_at)
    .execute(&mut **tx)
    .await
    .map_err(|e| identity_conflict(store.fail(e)))?;
    if done.rows_affected() == 0 {
        return Err(StoreError::Conflict("identity"));
    }
    Ok(())
}

/// The user an identity (`$1` issuer, `$2` subject) signs in as; `$3`: the issuer is Google's, so
/// a legacy `google_id` counts too. A linked row wins over a legacy google_id; rows of deleted
/// users match nothing.
const USER_BY_IDENTITY: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users WHERE id IN \
       (SELECT user_id FROM user_identities WHERE issuer = $1 AND subject = $2) \
     OR ($3 AND google_id = $2) \
     ORDER BY (google_id IS NOT DISTINCT FROM $2) LIMIT 1"
);

/// A user's legacy `google_id` (if any) and when the user was created.
type LegacyLink = (Option<String>, DateTime<Utc>);

#[async_trait]
impl IdentityStore for PgStore {
    async fn user_by_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<UserRecord>> {
        let row: Option<UserRow> = read_retrying!(self, |conn| {
            sqlx::query_as(USER_BY_IDENTITY)
                .bind(issuer)
                .bind(subject)
                .bind(issuer == GOOGLE_ISSUER)
                .fetch_optional(&mut *conn)
        })?;
        Ok(row.map(UserRecord::from))
    }

    async fn identities_of(&self, user_id: &str) -> StoreResult<Vec<IdentityRecord>> {
        let (rows, legacy): (Vec<IdentityRow>, Option<LegacyLink>) =
            read_retrying!(self, |conn| async {
                let rows = sqlx::query_as(
                    "SELECT issuer, subject, user_id, email, created_at, last_used_at \
                     FROM user_identities WHERE user_id = $1 ORDER BY created_at",
                )
                .bind(user_id)
                .fetch_all(&mut *conn)
                .await?;
                let legacy =
                    sqlx::query_as("SELECT google_id, created_at FROM users WHERE id = $1")
                        .bind(user_id)
                        .fetch_optional(&mut *conn)
                        .await?;
                Ok::<_, sqlx::Error>((rows, legacy))
            })?;
        let mut identities: Vec<IdentityRecord> =
            rows.into_iter().map(IdentityRecord::from).collect();
        if let Some((Some(google_id), created_at)) = legacy
            && !identities
                .iter()
                .any(|i| i.is_google() && i.subject == google_id)
        {
            identities.push(IdentityRecord::from_legacy_google_id(
                &google_id, user_id, created_at,
            ));
        }
        Ok(identities)
    }

    async fn insert_user_with_identity(
        &self,
        user: &UserRecord,
        identity: &IdentityRecord,
    ) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let mut tx = begin_retrying!(self, conn);
        rows::insert_user(user, INSERT_USER)
            .execute(&mut *tx)
            .await
            .map_err(|e| identity_conflict(self.fail(e)))?;
        insert_identity(self, &mut tx, identity).await?;
        tx.commit().await.map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn linked_with_password(&self) -> StoreResult<Vec<UserRecord>> {
        let rows: Vec<UserRow> = read_retrying!(self, |conn| {
            sqlx::query_as(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users u \
                 WHERE password_hash IS NOT NULL \
                   AND (google_id IS NOT NULL \
                        OR EXISTS (SELECT 1 FROM user_identities i WHERE i.user_id = u.id)) \
                 ORDER BY created_at, id"
            ))
            .fetch_all(&mut *conn)
        })?;
        Ok(rows.into_iter().map(UserRecord::from).collect())
    }

    async fn link_identity(&self, identity: &IdentityRecord) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let mut tx = begin_retrying!(self, conn);
        // Locks the user row, so two links to one user are made one after the other.
        let exists: Option<String> =
            sqlx::query_scalar("SELECT id FROM users WHERE id = $1 FOR UPDATE")
                .bind(&identity.user_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.fail(e))?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        insert_identity(self, &mut tx, identity).await?;
        if identity.is_google() {
            // Kept in step so the old service (and `import-users`) still know the link.
            sqlx::query(
                "UPDATE users SET google_id = $2, updated_at = now() WHERE id = $1 AND google_id IS NULL",
            )
            .bind(&identity.user_id)
            .bind(&identity.subject)
            .execute(&mut *tx)
            .await
            .map_err(|e| identity_conflict(self.fail(e)))?;
        }
        tx.commit().await.map_err(|e| self.fail(e))?;
        if identity.is_google() {
            self.changed_here(&identity.user_id);
        }
        Ok(())
    }

    async fn touch_identity(
        &self,
        issuer: &str,
        subject: &str,
        email: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(
            "UPDATE user_identities SET last_used_at = $3, email = COALESCE($4, email) \
             WHERE issuer = $1 AND subject = $2",
        )
        .bind(issuer)
        .bind(subject)
        .bind(at)
        .bind(email)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        if done.rows_affected() == 0 && issuer == GOOGLE_ISSUER {
            // A user linked only by the old service's google_id gets a proper row now.
            sqlx::query(
                "INSERT INTO user_identities (issuer, subject, user_id, email, created_at, last_used_at) \
                 SELECT $1, $2, id, $4, created_at, $3 FROM users WHERE google_id = $2 \
                 ON CONFLICT DO NOTHING",
            )
            .bind(issuer)
            .bind(subject)
            .bind(at)
            .bind(email)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }
}
