//! Two-factor sign-in as the stores keep it: the record (ciphertexts and hashes only) and the
//! trait both stores answer.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StoreResult;

/// The length of a TOTP time step: a step is the number of these since the Unix epoch, as
/// `last_step` and [`TwoFactorStore::accept_totp_step`] count them.
pub const TOTP_STEP_SECS: u64 = 30;

/// A user's two-factor sign-in as stored. Secrets are ciphertexts (`auth::two_factor::cipher`);
/// backup codes are hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TwoFactorRecord {
    /// The active secret; `None` while setup waits for its first code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A secret shown by setup, not yet confirmed by a code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_at: Option<DateTime<Utc>>,
    /// The last TOTP time step accepted; only a later one is accepted next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step: Option<i64>,
    #[serde(default)]
    pub backup_codes: Vec<String>,
}

impl TwoFactorRecord {
    pub fn enabled(&self) -> bool {
        self.secret.is_some()
    }
}

/// Two-factor sign-in. Each check that a code may be used once (a time step, a backup code) is
/// made and recorded in one atomic step, so two requests, on any instance, cannot both pass.
#[async_trait]
pub trait TwoFactorStore: Send + Sync {
    async fn two_factor(&self, user_id: &str) -> StoreResult<Option<TwoFactorRecord>>;
    /// Stores a pending secret (replacing an earlier pending one); false when two-factor is on
    /// already, and `NotFound` when the user is gone.
    async fn set_pending_two_factor(&self, user_id: &str, pending: &str) -> StoreResult<bool>;
    /// Makes `pending` the active secret, with `step` as its last used step and the backup codes'
    /// hashes; false when `pending` is no longer the user's pending secret, or two-factor is on.
    async fn enable_two_factor(
        &self,
        user_id: &str,
        pending: &str,
        step: i64,
        backup_codes: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Turns two-factor off (its secrets and codes deleted); false when it was not on.
    async fn disable_two_factor(&self, user_id: &str) -> StoreResult<bool>;
    /// Records `step` as used when it is later than the last one used; false otherwise (a
    /// replayed code) or when two-factor is off.
    async fn accept_totp_step(&self, user_id: &str, step: i64) -> StoreResult<bool>;
    /// Removes the backup code with this hash; false when the user has no such code (left).
    async fn use_backup_code(&self, user_id: &str, hash: &str) -> StoreResult<bool>;
}
