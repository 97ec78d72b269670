//! What an operator does to an account from the command line: `flux-auth users revoke-password`
//! takes the password away from an account that a provider identity signs in to, and ends
//! everything that password opened. The remedy for an address someone else registered before its
//! owner entered the account through the provider (see docs/SECURITY.md, group E).

use super::AuthError;
use super::service::AuthService;
use crate::domain::UserRecord;
use crate::security_log::{EventType, SecurityEvent};

/// Why the sessions ended, as stored and as the event's `reason`.
pub const PASSWORD_REVOKED: &str = "password_revoked";

/// What [`AuthService::revoke_password`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordRevocation {
    Revoked {
        /// Whether there was a password to remove (false when run again).
        had_password: bool,
        /// The sessions that were live and are ended now.
        sessions_ended: u64,
    },
    /// Nothing changed: the account has no provider identity, so without its password nobody
    /// could sign in to it.
    NoOtherWayIn,
}

impl AuthService {
    /// Removes `user`'s password, ends every session and denies every access token issued to the
    /// user so far, and records `mass_token_revocation` (reason `password_revoked`, `by: cli`).
    /// Refused for an account without a provider identity. Safe to repeat.
    pub async fn revoke_password(
        &self,
        user: &UserRecord,
    ) -> Result<PasswordRevocation, AuthError> {
        if self.store.identities_of(&user.id).await?.is_empty() {
            return Ok(PasswordRevocation::NoOtherWayIn);
        }
        // The password first: once the sessions end, it can open no new one.
        self.store.remove_password(&user.id).await?;
        let now = self.clock.now();
        let sessions_ended = self
            .store
            .revoke_all_sessions(&user.id, now, PASSWORD_REVOKED)
            .await?;
        let until = now + chrono::Duration::seconds(self.access.ttl_secs() + 60);
        self.revocations
            .revoke_user_tokens_before(&user.id, now, until)
            .await?;
        let had_password = user.password_hash.is_some();
        self.record_outcome(
            SecurityEvent::new(EventType::MassTokenRevocation)
                .user(&user.id)
                .email(&user.email)
                .reason(PASSWORD_REVOKED)
                .with("by", "cli")
                .with("passwordRemoved", had_password)
                .with("tokensRevoked", sessions_ended),
        )
        .await?;
        Ok(PasswordRevocation::Revoked {
            had_password,
            sessions_ended,
        })
    }
}
