//! Handlers for signup, login, me, refresh, logout, logout-all, token-info, csrf-token and apple.
//! Thin: extract, call the service, shape the response the frontends read.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use serde::Serialize;
use serde_json::json;

use super::bodies::{
    BearerErrors, CsrfToken, JsonBodyErrors, LogoutAllBody, MessageBody, RateLimited, TokenInfo,
    Unavailable,
};
use super::extract::{AuthUser, BearerToken, JsonBody, OptionalJsonBody};
use crate::auth::service::{
    AuthSuccess, IssuedTokens, LoginRequest, RefreshRequest, SignupRequest,
};
use crate::domain::{UserView, format_timestamp};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::security_log::event::RequestContext;
use crate::state::AppState;

/// AuthResponse of API.md: `token` is the legacy alias of `accessToken`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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

#[utoipa::path(post, path = "/api/auth/signup", tag = "auth",
    request_body = SignupRequest,
    responses(
        (status = 201, description = "Account created and signed in", body = AuthResponse),
        (status = 409, description = "`AUTH_EMAIL_EXISTS`", body = ErrorBody),
        JsonBodyErrors, RateLimited, Unavailable,
    ))]
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

#[utoipa::path(post, path = "/api/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = AuthResponse),
        (status = 401, body = ErrorBody, headers(("WWW-Authenticate" = String)),
            description = "`AUTH_INVALID_CREDENTIALS`, the same for an unknown email, a wrong \
                password, a Google-only account and a locked account"),
        JsonBodyErrors, RateLimited, Unavailable,
    ))]
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

#[utoipa::path(get, path = "/api/auth/me", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller, bare", body = UserView),
        BearerErrors, Unavailable,
    ))]
pub async fn me(AuthUser(auth): AuthUser) -> Json<UserView> {
    Json(UserView::from(&auth.user))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct RefreshResponse {
    success: bool,
    #[serde(flatten)]
    tokens: TokenData,
    activity_extended: bool,
    data: TokenData,
}

#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens; the refresh token sent is now rotated", body = RefreshResponse),
        (status = 401, body = ErrorBody, headers(("WWW-Authenticate" = String)),
            description = "`AUTH_REFRESH_INVALID` (unknown or revoked), `AUTH_REFRESH_EXPIRED` \
                (the session's idle or absolute lifetime is over), `AUTH_REFRESH_REUSED` (a rotated \
                token came back: the whole session is revoked)"),
        JsonBodyErrors, RateLimited, Unavailable,
    ))]
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

#[utoipa::path(post, path = "/api/auth/logout", tag = "auth", security(("bearer" = [])),
    request_body(content = Option<RefreshRequest>,
        description = "Optional: no body at all is accepted (the frontend's bodiless POST)"),
    responses(
        (status = 200, description = "This session's refresh tokens and the access token are revoked; idempotent", body = MessageBody),
        BearerErrors, JsonBodyErrors, Unavailable,
    ))]
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

#[utoipa::path(post, path = "/api/auth/logout-all", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every session of the user is revoked", body = LogoutAllBody),
        BearerErrors, Unavailable,
    ))]
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

#[utoipa::path(get, path = "/api/auth/token-info", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "What the caller's access token says", body = TokenInfo),
        BearerErrors, Unavailable,
    ))]
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
#[utoipa::path(get, path = "/api/csrf-token", tag = "auth",
    responses((status = 200, description = "A random token, for old clients", body = CsrfToken)))]
pub async fn csrf_token() -> impl IntoResponse {
    let bytes: [u8; 32] = crate::auth::os_random();
    Json(json!({ "csrfToken": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes) }))
}

#[utoipa::path(post, path = "/api/auth/apple", tag = "auth",
    responses((status = 501, description = "`NOT_IMPLEMENTED`", body = ErrorBody)))]
pub async fn apple() -> ApiError {
    ApiError::NotImplemented {
        message: "Apple Sign In not yet implemented",
    }
}
