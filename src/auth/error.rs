//! The error of the service layer: what a flow refuses or fails with. `crate::error::ApiError`
//! maps each to its status and body.

use super::passwords::HashError;
use super::tokens::TokenError;
use crate::domain::ValidationError;
use crate::limits::Exceeded;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0:?}")]
    Validation(ValidationError),
    #[error("email already registered")]
    EmailExists,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("access token rejected: {0}")]
    AccessToken(TokenError),
    #[error("refresh token rejected")]
    RefreshInvalid { expired: bool },
    #[error("refresh token reused")]
    RefreshReused,
    #[error("session not found")]
    SessionNotFound,
    /// Settings that are not of the accepted shape; the text says what is wrong.
    #[error("invalid settings: {0}")]
    InvalidSettings(String),
    #[error("settings too large")]
    SettingsTooLarge,
    /// A one-time token that cannot be used: 400 with `code`.
    #[error("one-time token refused: {code}")]
    TokenRefused {
        code: &'static str,
        message: &'static str,
    },
    /// Change-password's current password is wrong: 400, not 401 (the web app signs the user
    /// out on a 401).
    #[error("current password is wrong")]
    WrongCurrentPassword,
    /// Change-password on an account without a password.
    #[error("account has no password")]
    NoPassword,
    /// A password login to an unverified account while verification is required.
    #[error("email not verified")]
    EmailNotVerified,
    #[error("rate limited")]
    RateLimited(Exceeded),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Two-factor sign-in needs `TOTP_ENCRYPTION_KEY`, or a stored secret does not decrypt.
    #[error("two-factor sign-in unavailable: {0}")]
    TwoFactorUnavailable(&'static str),
    #[error("two-factor sign-in is on already")]
    TwoFactorAlreadyEnabled,
    #[error("two-factor sign-in is not set up")]
    TwoFactorNotSetUp,
    #[error("two-factor sign-in is not on")]
    TwoFactorNotEnabled,
    #[error("wrong two-factor code")]
    TwoFactorInvalidCode,
    /// The temp token is unknown, used, expired or dead after too many wrong codes.
    #[error("two-factor temp token not usable")]
    TwoFactorTokenExpired,
    /// Sync durability: the request's own event could not be kept, so it must not succeed.
    #[error(transparent)]
    EventNotKept(#[from] crate::security_log::NotKept),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => Self::Unavailable(why),
            StoreError::Conflict(what) => {
                Self::Internal(anyhow::anyhow!("unexpected conflict on {what}"))
            }
            StoreError::NotFound => Self::Internal(anyhow::anyhow!("record vanished")),
            StoreError::Other(e) => Self::Internal(e),
        }
    }
}

impl From<HashError> for AuthError {
    fn from(e: HashError) -> Self {
        Self::Internal(anyhow::Error::new(e))
    }
}

impl From<ValidationError> for AuthError {
    fn from(e: ValidationError) -> Self {
        Self::Validation(e)
    }
}
