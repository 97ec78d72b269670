//! What can go wrong in Google sign-in, and the reason each failure is recorded under.

use super::id_token::Rejection;
use crate::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum GoogleError {
    /// The route needs settings that are not there (named in the message).
    #[error("not configured: {0}")]
    NotConfigured(&'static str),
    /// The credential (or code) failed a check.
    #[error("rejected: {}", .0.reason())]
    Rejected(Rejection),
    /// The callback's `state` is unknown, expired or already used.
    #[error("state unknown, expired or used")]
    StateInvalid,
    /// The callback came without the cookie of the browser that started the flow, or with
    /// another one: answered as a bad state, recorded apart.
    #[error("state not bound to this browser")]
    StateUnbound,
    /// GIS redirect mode: the `g_csrf_token` cookie and field are missing or differ.
    #[error("g_csrf_token check failed: {0}")]
    Csrf(&'static str),
    /// The provider sent the browser back with an error (the user cancelled, say).
    #[error("provider returned an error")]
    Denied,
    /// A callback without `code`.
    #[error("callback without code")]
    MissingCode,
    /// An account has this email and Google is not authoritative for it, or the account is
    /// linked to another identity of this provider already.
    #[error("account exists")]
    AccountExists {
        user_id: String,
        email: String,
        reason: &'static str,
    },
    /// A password account has this email but has not verified it: whoever registered it may not
    /// own the address, so the identity is never linked to it and nothing of it is touched.
    #[error("account exists with an unverified email")]
    AccountUnverified { user_id: String, email: String },
    /// The provider's discovery, key or token endpoint did not answer usefully.
    #[error("provider unavailable: {0}")]
    ProviderUnavailable(String),
    /// Rate limits, the store, token issuing: the same failures as every other flow.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl From<Rejection> for GoogleError {
    fn from(r: Rejection) -> Self {
        Self::Rejected(r)
    }
}

impl GoogleError {
    /// The `reason` of the `oauth_failed` event; `None` for failures recorded elsewhere (a rate
    /// limit records `rate_limit_exceeded`) or that are not security outcomes (missing config).
    pub fn event_reason(&self) -> Option<&'static str> {
        Some(match self {
            Self::NotConfigured(_) => return None,
            Self::Rejected(r) => r.reason(),
            Self::StateInvalid => "state_invalid",
            Self::StateUnbound => "state_browser_mismatch",
            Self::Csrf(reason) => reason,
            Self::Denied => "provider_denied",
            Self::MissingCode => "code_missing",
            Self::AccountExists { reason, .. } => reason,
            Self::AccountUnverified { .. } => "account_exists_unverified",
            Self::ProviderUnavailable(_) => "provider_unavailable",
            // The log could not keep the request's event: it could not keep this one either.
            Self::Auth(AuthError::RateLimited(_) | AuthError::EventNotKept(_)) => return None,
            Self::Auth(AuthError::Validation(_)) => "invalid_request",
            Self::Auth(AuthError::Unavailable(_)) => "store_unavailable",
            Self::Auth(_) => "internal_error",
        })
    }
}
