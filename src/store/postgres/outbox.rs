//! The outbox and the one-time tokens: [`OutboxStore`] on Postgres (migration 009).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Connection;
use uuid::Uuid;

use super::PgStore;
use crate::store::StoreResult;
use crate::store::outbox::{
    Attempt, OneTimeToken, OutboxMessage, OutboxState, OutboxStore, OutboxSummary, TokenEffect,
    TokenPurpose, TokenUse,
};

macro_rules! outbox_columns {
    () => {
        "id, kind, recipient, template, body, state, attempts, created_at, next_attempt_at, \
         leased_until, sent_at, last_error"
    };
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: Uuid,
    kind: String,
    recipient: String,
    template: String,
    body: Option<String>,
    state: String,
    attempts: i32,
    created_at: DateTime<Utc>,
    next_attempt_at: DateTime<Utc>,
    leased_until: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

impl From<OutboxRow> for OutboxMessage {
    fn from(r: OutboxRow) -> Self {
        Self {
            id: r.id,
            kind: r.kind,
            recipient: r.recipient,
            template: r.template,
            body: r.body,
            state: OutboxState::parse(&r.state),
            attempts: r.attempts.max(0) as u32,
            created_at: r.created_at,
            next_attempt_at: r.next_attempt_at,
            leased_until: r.leased_until,
            sent_at: r.sent_at,
            last_error: r.last_error,
        }
    }
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    token_hash: String,
    user_id: String,
    purpose: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn enqueue(
        &self,
        messages: &[OutboxMessage],
        token: Option<&OneTimeToken>,
    ) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let mut tx = begin_retrying!(self, conn);
        if let Some(token) = token {
            // One token per user and purpose: the new one replaces the old in the same commit.
            sqlx::query(
                "INSERT INTO one_time_tokens (token_hash, user_id, purpose, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (user_id, purpose) DO UPDATE SET token_hash = EXCLUDED.token_hash, \
                 created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at",
            )
            .bind(&token.token_hash)
            .bind(&token.user_id)
            .bind(token.purpose.as_str())
            .bind(token.created_at)
            .bind(token.expires_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(e))?;
        }
        for m in messages {
            sqlx::query(concat!(
                "INSERT INTO outbox (",
                outbox_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (id) DO NOTHING"
            ))
            .bind(m.id)
            .bind(&m.kind)
            .bind(&m.recipient)
            .bind(&m.template)
            .bind(&m.body)
            .bind(m.state.as_str())
            .bind(m.attempts as i32)
            .bind(m.created_at)
            .bind(m.next_attempt_at)
            .bind(m.leased_until)
            .bind(m.sent_at)
            .bind(&m.last_error)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(e))?;
        }
        tx.commit().await.map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn claim_due(
        &self,
        kind: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: usize,
    ) -> StoreResult<Vec<OutboxMessage>> {
        let mut conn = self.conn().await?;
        // SKIP LOCKED: a row another instance is claiming right now is passed over, and the
        // lease keeps it from everyone until that instance records the attempt (or dies and the
        // lease runs out).
        let rows: Vec<OutboxRow> = sqlx::query_as(concat!(
            "UPDATE outbox SET leased_until = $3 WHERE id IN (\
               SELECT id FROM outbox WHERE kind = $1 AND state = 'pending' \
               AND next_attempt_at <= $2 AND (leased_until IS NULL OR leased_until <= $2) \
               ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING ",
            outbox_columns!()
        ))
        .bind(kind)
        .bind(now)
        .bind(now + lease)
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        let mut messages: Vec<OutboxMessage> = rows.into_iter().map(Into::into).collect();
        messages.sort_by_key(|m| m.next_attempt_at);
        Ok(messages)
    }

    async fn record_attempts(
        &self,
        attempts: &[(Uuid, Attempt)],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let sent: Vec<Uuid> = attempts
            .iter()
            .filter(|(_, a)| matches!(a, Attempt::Sent))
            .map(|(id, _)| *id)
            .collect();
        let mut conn = self.conn().await?;
        let mut tx = begin_retrying!(self, conn);
        // The delivered ones in one statement: one commit for the batch.
        if !sent.is_empty() {
            sqlx::query(
                "UPDATE outbox SET state = 'sent', body = NULL, sent_at = $2, \
                 attempts = attempts + 1, leased_until = NULL, last_error = NULL \
                 WHERE id = ANY($1) AND state = 'pending'",
            )
            .bind(&sent)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(e))?;
        }
        for (id, attempt) in attempts {
            let query = match attempt {
                Attempt::Sent => continue,
                Attempt::Retry { error, retry_at } => sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, leased_until = NULL, \
                     next_attempt_at = $2, last_error = $3 WHERE id = $1 AND state = 'pending'",
                )
                .bind(id)
                .bind(*retry_at)
                .bind(error),
                Attempt::Dead { error } => sqlx::query(
                    "UPDATE outbox SET state = 'dead', attempts = attempts + 1, \
                     leased_until = NULL, last_error = $2 WHERE id = $1 AND state = 'pending'",
                )
                .bind(id)
                .bind(error),
            };
            query.execute(&mut *tx).await.map_err(|e| self.fail(e))?;
        }
        tx.commit().await.map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn outbox_summary(&self, kind: &str) -> StoreResult<OutboxSummary> {
        let (pending, dead, oldest): (i64, i64, Option<DateTime<Utc>>) =
            read_retrying!(self, |conn| sqlx::query_as(
                "SELECT count(*) FILTER (WHERE state = 'pending'), \
                 count(*) FILTER (WHERE state = 'dead'), \
                 min(created_at) FILTER (WHERE state = 'pending') \
                 FROM outbox WHERE kind = $1 AND state <> 'sent'"
            )
            .bind(kind)
            .fetch_one(&mut *conn))?;
        Ok(OutboxSummary {
            pending: pending.max(0) as u64,
            dead: dead.max(0) as u64,
            oldest_pending_at: oldest,
        })
    }

    async fn outbox_messages(&self, limit: usize) -> StoreResult<Vec<OutboxMessage>> {
        let rows: Vec<OutboxRow> = read_retrying!(self, |conn| {
            sqlx::query_as(
            "SELECT id, kind, recipient, template, NULL::text AS body, state, attempts, created_at, \
             next_attempt_at, leased_until, sent_at, last_error \
             FROM outbox WHERE state <> 'sent' ORDER BY created_at LIMIT $1"
        )
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        })?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn delete_finished_mail(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let mut conn = self.conn().await?;
        let sent = sqlx::query("DELETE FROM outbox WHERE state = 'sent' AND sent_at < $1")
            .bind(before)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        let tokens = sqlx::query("DELETE FROM one_time_tokens WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(sent.rows_affected() + tokens.rows_affected())
    }

    async fn one_time_token(&self, token_hash: &str) -> StoreResult<Option<OneTimeToken>> {
        let row: Option<TokenRow> = read_retrying!(self, |conn| sqlx::query_as(
            "SELECT token_hash, user_id, purpose, created_at, expires_at \
             FROM one_time_tokens WHERE token_hash = $1"
        )
        .bind(token_hash)
        .fetch_optional(&mut *conn))?;
        Ok(row.and_then(|r| {
            Some(OneTimeToken {
                purpose: TokenPurpose::parse(&r.purpose)?,
                token_hash: r.token_hash,
                user_id: r.user_id,
                created_at: r.created_at,
                expires_at: r.expires_at,
            })
        }))
    }

    async fn use_one_time_token(
        &self,
        token_hash: &str,
        effect: &TokenEffect,
        now: DateTime<Utc>,
    ) -> StoreResult<TokenUse> {
        let mut conn = self.conn().await?;
        let mut tx = begin_retrying!(self, conn);
        // The DELETE consumes the token: of concurrent uses, one deletes the row and the others
        // find none once it commits.
        let found: Option<(String, DateTime<Utc>)> = sqlx::query_as(
            "DELETE FROM one_time_tokens WHERE token_hash = $1 AND purpose = $2 \
             RETURNING user_id, expires_at",
        )
        .bind(token_hash)
        .bind(effect.purpose().as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| self.fail(e))?;
        let outcome = match found {
            None => TokenUse::Unknown,
            Some((_, expires_at)) if expires_at <= now => TokenUse::Expired,
            Some((user_id, _)) => {
                let done = match effect {
                    TokenEffect::VerifyEmail => sqlx::query(
                        "UPDATE users SET email_verified = TRUE, updated_at = now() WHERE id = $1",
                    )
                    .bind(&user_id),
                    TokenEffect::ResetPassword { password_hash } => sqlx::query(
                        "UPDATE users SET password_hash = $2, email_verified = TRUE, \
                         updated_at = now() WHERE id = $1",
                    )
                    .bind(&user_id)
                    .bind(password_hash),
                }
                .execute(&mut *tx)
                .await
                .map_err(|e| self.fail(e))?;
                if done.rows_affected() == 0 {
                    TokenUse::Unknown
                } else {
                    TokenUse::Applied { user_id }
                }
            }
        };
        tx.commit().await.map_err(|e| self.fail(e))?;
        if let TokenUse::Applied { user_id } = &outcome {
            self.changed_here(user_id);
        }
        Ok(outcome)
    }
}
