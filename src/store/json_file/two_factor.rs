//! Two-factor sign-in on the file store: the record lives in the user's own entry of
//! `users.json` (`"twoFactor": {...}`, the same fields as Postgres's `two_factor` row), so it is
//! written in the same durable step as the user, and deleted with it. Every check and change runs
//! inside one `update_users`, under the store's writer: a time step or a backup code is accepted
//! once.

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
        Ok(self.users().await?.by_id(user_id).and_then(stored))
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
        match self
            .change_two_factor(user_id, |record| match record {
                Some(r) => (Some(None), r.enabled()),
                None => (None, false),
            })
            .await
        {
            Err(StoreError::NotFound) => Ok(false),
            other => other,
        }
    }

    async fn accept_totp_step(&self, user_id: &str, step: i64) -> StoreResult<bool> {
        self.change_two_factor(user_id, |record| match record {
            Some(mut r) if r.enabled() && r.last_step.is_none_or(|last| last < step) => {
                r.last_step = Some(step);
                (Some(Some(r)), true)
            }
            _ => (None, false),
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
