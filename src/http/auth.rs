//! Handlers for signup, login, me, refresh, logout, logout-all, token-info, csrf-token and apple.
//! Thin: extract, call the service, shape the response the frontends read.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use serde::Serialize;
use serde_json::json;

use super::extract::{AuthUser, BearerToken, JsonBody, OptionalJsonBody};
use crate::app::AppState;
use crate::auth::service::{
    AuthSuccess, IssuedTokens, LoginRequest, RefreshRequest, SignupRequest,
};
use crate::domain::{UserView, format_timestamp};
use crate::error::{ApiError, ApiResult};
use crate::security_log::event::RequestContext;

/// AuthResponse of API.md: `token` is the legacy alias of `accessToken`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthResponse {
    pub success: bool,
    pub token: String,
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
    pub expires_at: i64,
    pub token_type: &'static str,
    pub user: UserView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_new_user: Option<bool>,
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
        }
    }
}

pub async fn signup(
    State(state): State<AppState>,
    ctx: RequestContext,
    JsonBody(body): JsonBody<SignupRequest>,
) -> ApiResult<impl IntoResponse> {
    let success = state.auth.signup(body, &ctx).await?;
    Ok((
        StatusCode::CREATED,
        Json(AuthResponse::new(
            &success,
            state.auth.access.ttl_secs(),
            None,
        )),
    ))
}

pub async fn login(
    State(state): State<AppState>,
    ctx: RequestContext,
    JsonBody(body): JsonBody<LoginRequest>,
) -> ApiResult<Json<AuthResponse>> {
    let success = state.auth.login(body, &ctx).await?;
    Ok(Json(AuthResponse::new(
        &success,
        state.auth.access.ttl_secs(),
        None,
    )))
}

pub async fn me(AuthUser(auth): AuthUser) -> Json<UserView> {
    Json(UserView::from(&auth.user))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenData {
    access_token: String,
    token: String,
    refresh_token: String,
    expires_in: i64,
    expires_at: i64,
    token_type: &'static str,
}

impl TokenData {
    fn new(tokens: &IssuedTokens, ttl: i64) -> Self {
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
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RefreshResponse {
    success: bool,
    #[serde(flatten)]
    tokens: TokenData,
    activity_extended: bool,
    data: TokenData,
}

pub async fn refresh(
    State(state): State<AppState>,
    ctx: RequestContext,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> ApiResult<impl IntoResponse> {
    let (_, tokens) = state.auth.refresh(body, &ctx).await?;
    let ttl = state.auth.access.ttl_secs();
    Ok(Json(RefreshResponse {
        success: true,
        tokens: TokenData::new(&tokens, ttl),
        activity_extended: false,
        data: TokenData::new(&tokens, ttl),
    }))
}

pub async fn logout(
    State(state): State<AppState>,
    ctx: RequestContext,
    BearerToken(token): BearerToken,
    OptionalJsonBody(body): OptionalJsonBody<RefreshRequest>,
) -> ApiResult<impl IntoResponse> {
    let refresh_token = body.and_then(|b| b.refresh_token);
    state
        .auth
        .logout(&token, refresh_token.as_deref(), &ctx)
        .await?;
    Ok(Json(
        json!({ "success": true, "message": "Logged out successfully" }),
    ))
}

pub async fn logout_all(
    State(state): State<AppState>,
    ctx: RequestContext,
    AuthUser(auth): AuthUser,
) -> ApiResult<impl IntoResponse> {
    let revoked = state.auth.logout_all(&auth, &ctx).await?;
    Ok(Json(
        json!({ "success": true, "message": "Logged out from all devices", "tokensRevoked": revoked }),
    ))
}

pub async fn token_info(AuthUser(auth): AuthUser) -> impl IntoResponse {
    let c = &auth.claims;
    let now = chrono::Utc::now().timestamp();
    let at = |secs: i64| chrono::DateTime::from_timestamp(secs, 0).map(format_timestamp);
    Json(json!({
        "userId": c.sub,
        "email": auth.user.email,
        "userType": auth.user.user_type,
        "sessionId": c.sid,
        "issuedAt": at(c.iat),
        "expiresAt": at(c.exp),
        "timeToExpiry": (c.exp - now).max(0),
    }))
}

/// Kept so old clients that fetch a CSRF token first do not break. Tokens travel in headers and
/// bodies, never cookies, so no route checks it.
pub async fn csrf_token() -> impl IntoResponse {
    let bytes: [u8; 32] = crate::auth::os_random();
    Json(json!({ "csrfToken": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes) }))
}

pub async fn apple() -> ApiError {
    ApiError::NotImplemented {
        message: "Apple Sign In not yet implemented",
    }
}
