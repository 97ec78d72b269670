//! One-time tokens (email verification, password reset): 256 random bits, hex in the link, only
//! their SHA-256 stored. The store consumes a token in the same step that applies it.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::store::outbox::{OneTimeToken, TokenPurpose};

/// How long a verification link works.
pub const VERIFY_EMAIL_TTL: chrono::Duration = chrono::Duration::hours(24);
/// How long a reset link works.
pub const RESET_PASSWORD_TTL: chrono::Duration = chrono::Duration::hours(1);

/// Longest token accepted from a request: anything longer is no token of ours and is not hashed.
pub const MAX_TOKEN_CHARS: usize = 128;

/// A new raw token (what the link carries) and its stored form.
pub fn issue(user_id: &str, purpose: TokenPurpose, now: DateTime<Utc>) -> (String, OneTimeToken) {
    let raw = hex::encode(super::os_random::<32>());
    let ttl = match purpose {
        TokenPurpose::VerifyEmail => VERIFY_EMAIL_TTL,
        TokenPurpose::ResetPassword => RESET_PASSWORD_TTL,
    };
    let stored = OneTimeToken {
        token_hash: hash(&raw),
        user_id: user_id.to_owned(),
        purpose,
        created_at: now,
        expires_at: now + ttl,
    };
    (raw, stored)
}

/// The stored form of a presented token: its hex SHA-256. The lookup is by this hash, so no
/// comparison of the secret itself happens anywhere.
pub fn hash(raw: &str) -> String {
    hex::encode(Sha256::digest(raw.trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_stored_only_as_their_hash() {
        let now = Utc::now();
        let (a, stored) = issue("u1", TokenPurpose::ResetPassword, now);
        let (b, _) = issue("u1", TokenPurpose::ResetPassword, now);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(stored.token_hash, hash(&a));
        assert!(!stored.token_hash.contains(&a));
        assert_eq!(stored.expires_at - now, RESET_PASSWORD_TTL);
    }
}
