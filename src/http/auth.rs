//! Handlers for signup, login, me, refresh, logout, logout-all, token-info and csrf-token.
//! Thin: extract, call the service, shape the response the frontends read.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;

use super::bodies::MessageBody;
use super::bodies::auth::{
    AuthResponse, CsrfToken, LoginRequest, LogoutAllBody, RefreshRequest, RefreshResponse,
    SignupRequest, TokenInfo,
};
use super::bodies::errors::{BearerErrors, JsonBodyErrors, RateLimited, Unavailable};
use super::bodies::two_factor::SignInResponse;
use super::extract::{AuthUser, BearerToken, JsonBody, OptionalJsonBody};
use crate::auth::service::SignIn;
use crate::domain::{UserView, format_timestamp};
use crate::error::{ApiResult, ErrorBody};
use crate::security_log::event::RequestContext;
use crate::state::AppState;

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
) -> ApiResult<(StatusCode, Json<AuthResponse>)> {
    let success = state.auth.signup(body.account(), &ctx).await?;
    Ok((
        StatusCode::CREATED,
        Json(AuthResponse::signed_up(
            &success,
            state.auth.access.ttl_secs(),
        )),
    ))
}

#[utoipa::path(post, path = "/api/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in (AuthResponse); or, for a user with two-factor \
            sign-in on, `{success, requires2FA: true, tempToken}` and no session: post the temp \
            token and a code to `/api/2fa/verify`", body = SignInResponse),
        (status = 401, body = ErrorBody, headers(("WWW-Authenticate" = String)),
            description = "`AUTH_INVALID_CREDENTIALS`, the same for an unknown email, a wrong \
                password, a Google-only account and a locked account"),
        JsonBodyErrors, RateLimited, Unavailable,
    ))]
pub async fn login(
    State(state): State<AppState>,
    ctx: RequestContext,
    JsonBody(body): JsonBody<LoginRequest>,
) -> ApiResult<Json<SignInResponse>> {
    Ok(Json(
        match state.auth.login(body.credentials(), &ctx).await? {
            SignIn::Session(success) => SignInResponse::Session(Box::new(AuthResponse::new(
                &success,
                state.auth.access.ttl_secs(),
                None,
            ))),
            SignIn::SecondFactor { temp_token } => SignInResponse::second_factor(temp_token),
        },
    ))
}

#[utoipa::path(get, path = "/api/auth/me", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller, bare", body = UserView),
        BearerErrors, Unavailable,
    ))]
pub async fn me(AuthUser(auth): AuthUser) -> Json<UserView> {
    Json(UserView::from(&auth.user))
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
) -> ApiResult<Json<RefreshResponse>> {
    let (_, tokens) = state
        .auth
        .refresh(body.refresh_token.as_deref(), &ctx)
        .await?;
    Ok(Json(RefreshResponse::new(
        &tokens,
        state.auth.access.ttl_secs(),
    )))
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
) -> ApiResult<Json<MessageBody>> {
    let refresh_token = body.and_then(|b| b.refresh_token);
    state
        .auth
        .logout(&token, refresh_token.as_deref(), &ctx)
        .await?;
    Ok(Json(MessageBody::ok("Logged out successfully")))
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
) -> ApiResult<Json<LogoutAllBody>> {
    let revoked = state.auth.logout_all(&auth, &ctx).await?;
    Ok(Json(LogoutAllBody {
        success: true,
        message: "Logged out from all devices",
        tokens_revoked: revoked,
    }))
}

#[utoipa::path(get, path = "/api/auth/token-info", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "What the caller's access token says", body = TokenInfo),
        BearerErrors, Unavailable,
    ))]
pub async fn token_info(
    State(state): State<AppState>,
    AuthUser(auth): AuthUser,
) -> Json<TokenInfo> {
    let c = &auth.claims;
    let now = state.clock.now().timestamp();
    let at = |secs: i64| chrono::DateTime::from_timestamp(secs, 0).map(format_timestamp);
    Json(TokenInfo {
        user_id: c.sub.clone(),
        email: auth.user.email.clone(),
        user_type: auth.user.user_type,
        session_id: c.sid,
        issued_at: at(c.iat),
        expires_at: at(c.exp),
        time_to_expiry: (c.exp - now).max(0),
    })
}

/// Kept so old clients that fetch a CSRF token first do not break. Tokens travel in headers and
/// bodies, never cookies, so no route checks it.
#[utoipa::path(get, path = "/api/csrf-token", tag = "auth",
    responses((status = 200, description = "A random token, for old clients", body = CsrfToken)))]
pub async fn csrf_token() -> Json<CsrfToken> {
    let bytes: [u8; 32] = crate::auth::os_random();
    Json(CsrfToken {
        csrf_token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    })
}
