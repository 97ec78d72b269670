//! External sign-in identities (Google, or any OpenID provider): who an ID token's (`iss`, `sub`)
//! is in this service. Keyed by that pair and never by email, which a provider may change or
//! reassign (OIDC Core §5.7).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Google's issuer, in the spelling identities are stored under (tokens may also say
/// `accounts.google.com`; the verifier maps both to this one).
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";

/// One provider identity linked to one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRecord {
    pub issuer: String,
    pub subject: String,
    pub user_id: String,
    /// The email the provider reported at the last sign-in: for audit only, never a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
}

impl IdentityRecord {
    /// The old service kept a Google user's `sub` in `google_id`; such a user has this identity.
    pub fn from_legacy_google_id(subject: &str, user_id: &str, created_at: DateTime<Utc>) -> Self {
        Self {
            issuer: GOOGLE_ISSUER.to_owned(),
            subject: subject.to_owned(),
            user_id: user_id.to_owned(),
            email: None,
            created_at,
            last_used_at: created_at,
        }
    }

    pub fn is_google(&self) -> bool {
        self.issuer == GOOGLE_ISSUER
    }
}
