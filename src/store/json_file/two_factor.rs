//! Two-factor sign-in on the file store: the record lives in the user's own entry of
//! `users.json` (`"twoFactor": {...}`, the same fields as Postgres's `two_factor` row), so it is
//! written in the same durable step as the user, and deleted with it. Every check and change runs
//! inside one `update_users`, under the store's writer: a backup code is accepted once.
//!
//! The last accepted time step is the exception: each sign-in with a code moves it, and
//! `users.json` is rewritten whole at each commit, so it is a record of the sessions' journal
//! (one short line) on top of the step the entry got when two-factor was turned on. The check and
//! the record are one step under the journal's writer, so a step is accepted once.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::FileStore;
use crate::domain::UserRecord;
use crate::store::{StoreError, StoreResult, TwoFactorRecord, TwoFactorStore};

const TWO_FACTOR_KEY: &str = "twoFactor";

fn stored(user: &UserRecord) -> Option<TwoFactorRecord> {
    user.extra
        .get(TWO_FACTOR_KEY)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

fn store_back(user: &mut UserRecord, record: Option<&TwoFactorRecord>) -> StoreResult<()> {
    // The user's own flag (what `User.twoFactorEnabled` answers) moves in the same write.
    user.two_factor_enabled = record.is_some_and(TwoFactorRecord::enabled);
    match record {
        Some(record) => {
            let value = serde_json::to_value(record).map_err(|e| {
                StoreError::Other(anyhow::anyhow!("serialising two-factor state: {e}"))
            })?;
            user.extra.insert(TWO_FACTOR_KEY.to_owned(), value);
        }
        None => {
            user.extra.remove(TWO_FACTOR_KEY);
        }
    }
    Ok(())
}

impl FileStore {
    /// The record as the user's entry holds it (its `last_step` is the one set when two-factor
    /// was turned on; later ones are in the journal).
    async fn two_factor_in_users_file(
        &self,
        user_id: &str,
    ) -> StoreResult<Option<TwoFactorRecord>> {
        Ok(self.users().await?.by_id(user_id).and_then(stored))
    }

    /// Applies `change` to the user's record (`None`: none yet) and writes back what it returns
    /// in its first place, when it returns `Some`; the answer is the second.
    async fn change_two_factor(
        &self,
        user_id: &str,
        change: impl FnOnce(Option<TwoFactorRecord>) -> (Option<Option<TwoFactorRecord>>, bool),
    ) -> StoreResult<bool> {
        self.update_users(|users| {
            let user = users.by_id_mut(user_id).ok_or(StoreError::NotFound)?;
            let (write, answer) = change(stored(user));
            if let Some(record) = write {
                store_back(user, record.as_ref())?;
            }
            Ok(answer)
        })
        .await
    }
}

#[async_trait]
impl TwoFactorStore for FileStore {
    async fn two_factor(&self, user_id: &str) -> StoreResult<Option<TwoFactorRecord>> {
        let Some(mut record) = self.two_factor_in_users_file(user_id).await? else {
            return Ok(None);
        };
        let journal = self.sessions.read().totp_step(user_id);
        record.last_step = record.last_step.max(journal);
        Ok(Some(record))
    }

    async fn set_pending_two_factor(&self, user_id: &str, pending: &str) -> StoreResult<bool> {
        self.change_two_factor(user_id, |record| {
            let mut record = record.unwrap_or(TwoFactorRecord {
                secret: None,
                pending_secret: None,
                enabled_at: None,
                last_step: None,
                backup_codes: Vec::new(),
            });
            if record.enabled() {
                return (None, false);
            }
            record.pending_secret = Some(pending.to_owned());
            (Some(Some(record)), true)
        })
        .await
    }

    async fn enable_two_factor(
        &self,
        user_id: &str,
        pending: &str,
        step: i64,
        backup_codes: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.change_two_factor(user_id, |record| match record {
            Some(mut r) if !r.enabled() && r.pending_secret.as_deref() == Some(pending) => {
                r.secret = r.pending_secret.take();
                r.enabled_at = Some(now);
                r.last_step = Some(step);
                r.backup_codes = backup_codes.to_vec();
                (Some(Some(r)), true)
            }
            _ => (None, false),
        })
        .await
    }

    async fn disable_two_factor(&self, user_id: &str) -> StoreResult<bool> {
        let was_on = match self
            .change_two_factor(user_id, |record| match record {
                Some(r) => (Some(None), r.enabled()),
                None => (None, false),
            })
            .await
        {
            Err(StoreError::NotFound) => return Ok(false),
            other => other?,
        };
        // The old secret's last step goes with it, as Postgres deletes the row: a secret set up
        // later starts from its own step.
        if self.sessions.read().totp_step(user_id).is_some() {
            self.update_sessions(|tx| {
                tx.drop_totp_step(user_id);
                Ok(())
            })
            .await?;
        }
        Ok(was_on)
    }

    async fn accept_totp_step(&self, user_id: &str, step: i64) -> StoreResult<bool> {
        let Some(record) = self.two_factor_in_users_file(user_id).await? else {
            return Ok(false);
        };
        if !record.enabled() || record.last_step.is_some_and(|last| last >= step) {
            return Ok(false);
        }
        self.update_sessions(|tx| {
            if tx
                .state()
                .totp_step(user_id)
                .is_some_and(|last| last >= step)
            {
                return Ok(false);
            }
            tx.put_totp_step(user_id, step);
            Ok(true)
        })
        .await
    }

    async fn use_backup_code(&self, user_id: &str, hash: &str) -> StoreResult<bool> {
        self.change_two_factor(user_id, |record| match record {
            Some(mut r) if r.enabled() && r.backup_codes.iter().any(|c| c == hash) => {
                r.backup_codes.retain(|c| c != hash);
                (Some(Some(r)), true)
            }
            _ => (None, false),
        })
        .await
    }
}
