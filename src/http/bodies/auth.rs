//! The bodies of the auth routes: what signup, login and refresh accept, and what they and
//! logout, token-info and csrf-token answer.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::service::{AuthSuccess, Credentials, IssuedTokens, NewAccount};
use crate::domain::{UserType, UserView};

/// Signup body. Every field is optional here so that a missing one is a 400 naming the field;
/// unknown fields (`role`, `id`, `emailVerified`...) are ignored and never stored. The `schema`
/// attributes give the OpenAPI document the contract: these fields are required.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(description = "Signup body; unknown fields are ignored.")]
pub struct SignupRequest {
    #[schema(value_type = String, required = true, max_length = 254, format = Email)]
    pub email: Option<String>,
    /// At least the configured minimum (8 by default) characters; not a common password.
    #[schema(value_type = String, required = true, max_length = 128)]
    pub password: Option<String>,
    #[schema(value_type = String, required = true, min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// `client` (the default) or `designer`; `admin` is never self-assigned.
    #[schema(value_type = Option<String>, example = "client")]
    pub user_type: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    #[schema(value_type = String, required = true)]
    pub email: Option<String>,
    #[schema(value_type = String, required = true)]
    pub password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshRequest {
    #[schema(value_type = String, required = true)]
    pub refresh_token: Option<String>,
}

impl SignupRequest {
    pub fn account(&self) -> NewAccount<'_> {
        NewAccount {
            email: self.email.as_deref(),
            password: self.password.as_deref(),
            name: self.name.as_deref(),
            user_type: self.user_type.as_deref(),
        }
    }
}

impl LoginRequest {
    pub fn credentials(&self) -> Credentials<'_> {
        Credentials {
            email: self.email.as_deref(),
            password: self.password.as_deref(),
        }
    }
}

/// AuthResponse of docs/API.md: `token` is the legacy alias of `accessToken`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthResponse {
    pub success: bool,
    /// The access token again, for old clients.
    pub token: String,
    /// A JWT (`typ: at+jwt`) for `Authorization: Bearer`.
    pub access_token: String,
    /// Opaque; rotated by every refresh.
    pub refresh_token: String,
    /// Access-token lifetime in seconds.
    #[schema(example = 900)]
    pub expires_in: i64,
    /// Access-token expiry, epoch milliseconds.
    pub expires_at: i64,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    pub user: UserView,
    /// Google sign-in only: whether this sign-in created the account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_new_user: Option<bool>,
    /// Signup only: false (a verification mail is on its way).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    /// Signup only: what to tell the user about the verification mail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'static str>,
}

impl AuthResponse {
    pub fn new(success: &AuthSuccess, ttl: i64, is_new_user: Option<bool>) -> Self {
        let t = &success.tokens;
        Self {
            success: true,
            token: t.access.token.clone(),
            access_token: t.access.token.clone(),
            refresh_token: t.refresh_token.clone(),
            expires_in: ttl,
            expires_at: t.access.expires_at.timestamp_millis(),
            token_type: "Bearer",
            user: UserView::from(&success.user),
            is_new_user,
            email_verified: None,
            message: None,
        }
    }

    /// Signup's answer: it adds `emailVerified` and `message`.
    pub fn signed_up(success: &AuthSuccess, ttl: i64) -> Self {
        Self {
            email_verified: Some(success.user.email_verified),
            message: Some("Account created. Check your email to verify your address"),
            ..Self::new(success, ttl, None)
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenData {
    pub access_token: String,
    pub token: String,
    pub refresh_token: String,
    pub expires_in: i64,
    pub expires_at: i64,
    pub token_type: &'static str,
}

impl TokenData {
    pub fn new(tokens: &IssuedTokens, ttl: i64) -> Self {
        Self {
            access_token: tokens.access.token.clone(),
            token: tokens.access.token.clone(),
            refresh_token: tokens.refresh_token.clone(),
            expires_in: ttl,
            expires_at: tokens.access.expires_at.timestamp_millis(),
            token_type: "Bearer",
        }
    }
}

/// RefreshResponse: flat fields for the October 2025 frontend and a `data` copy for the newer one.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshResponse {
    pub success: bool,
    #[serde(flatten)]
    pub tokens: TokenData,
    pub activity_extended: bool,
    pub data: TokenData,
}

impl RefreshResponse {
    pub fn new(tokens: &IssuedTokens, ttl: i64) -> Self {
        Self {
            success: true,
            tokens: TokenData::new(tokens, ttl),
            activity_extended: false,
            data: TokenData::new(tokens, ttl),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogoutAllBody {
    pub success: bool,
    #[schema(example = "Logged out from all devices")]
    pub message: &'static str,
    /// Sessions ended by this call.
    pub tokens_revoked: u64,
}

/// What the caller's access token says.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub user_id: String,
    pub email: String,
    pub user_type: UserType,
    pub session_id: Uuid,
    // `None` (sent as null) only for a time outside chrono's range, which no token this service
    // signs has: the document says `string`.
    #[schema(value_type = String, required = true)]
    pub issued_at: Option<String>,
    #[schema(value_type = String, required = true)]
    pub expires_at: Option<String>,
    /// Seconds until `expiresAt`, never negative.
    pub time_to_expiry: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CsrfToken {
    /// Random, base64url; no route checks it (tokens travel in headers and bodies, not cookies).
    pub csrf_token: String,
}
