//! Two-factor sign-in routes: setup, verify-setup and disable (the caller's own), and verify
//! (the second step of a sign-in). Thin: extract, call the service, shape the answer.

use axum::Json;
use axum::extract::State;

use super::bodies::MessageBody;
use super::bodies::auth::AuthResponse;
use super::bodies::errors::{BearerErrors, JsonBodyErrors, RateLimited, Unavailable};
use super::bodies::two_factor::{CodeRequest, SetupResponse, VerifyRequest, VerifySetupResponse};
use super::extract::{AuthUser, JsonBody};
use crate::error::{ApiResult, ErrorBody};
use crate::security_log::event::RequestContext;
use crate::state::AppState;

#[utoipa::path(post, path = "/api/2fa/setup", tag = "two-factor", security(("bearer" = [])),
    responses(
        (status = 200, description = "A pending secret; two-factor is on once verify-setup gets a code from it", body = SetupResponse),
        (status = 409, description = "`TWO_FACTOR_ALREADY_ENABLED`", body = ErrorBody),
        (status = 503, description = "`TWO_FACTOR_SERVICE_UNAVAILABLE`: TOTP_ENCRYPTION_KEY is not set", body = ErrorBody),
        BearerErrors,
    ))]
pub async fn setup(
    State(state): State<AppState>,
    ctx: RequestContext,
    AuthUser(caller): AuthUser,
) -> ApiResult<Json<SetupResponse>> {
    let enrolment = state.auth.two_factor_setup(&caller, &ctx).await?;
    Ok(Json(SetupResponse {
        success: true,
        secret: enrolment.secret_base32,
        otpauth_url: enrolment.otpauth_url,
        qr_code: enrolment.qr_data_url,
    }))
}

#[utoipa::path(post, path = "/api/2fa/verify-setup", tag = "two-factor", security(("bearer" = [])),
    request_body = CodeRequest,
    responses(
        (status = 200, description = "Two-factor is on; the backup codes are shown this once; `mfa_enabled`", body = VerifySetupResponse),
        (status = 400, description = "`TWO_FACTOR_INVALID_CODE`, `TWO_FACTOR_NOT_SET_UP`, `VALIDATION_ERROR` (`code` missing)", body = ErrorBody),
        (status = 409, description = "`TWO_FACTOR_ALREADY_ENABLED`", body = ErrorBody),
        (status = 503, description = "`TWO_FACTOR_SERVICE_UNAVAILABLE`", body = ErrorBody),
        BearerErrors, JsonBodyErrors,
    ))]
pub async fn verify_setup(
    State(state): State<AppState>,
    ctx: RequestContext,
    AuthUser(caller): AuthUser,
    JsonBody(body): JsonBody<CodeRequest>,
) -> ApiResult<Json<VerifySetupResponse>> {
    let backup_codes = state
        .auth
        .two_factor_verify_setup(&caller, body.code.as_deref(), &ctx)
        .await?;
    Ok(Json(VerifySetupResponse {
        success: true,
        message: "Two-factor authentication enabled",
        backup_codes,
    }))
}

#[utoipa::path(post, path = "/api/2fa/disable", tag = "two-factor", security(("bearer" = [])),
    request_body = CodeRequest,
    responses(
        (status = 200, description = "Two-factor is off; `mfa_disabled`", body = MessageBody),
        (status = 400, description = "`TWO_FACTOR_INVALID_CODE`, `TWO_FACTOR_NOT_ENABLED`, `VALIDATION_ERROR` (`code` missing)", body = ErrorBody),
        (status = 503, description = "`TWO_FACTOR_SERVICE_UNAVAILABLE`", body = ErrorBody),
        BearerErrors, JsonBodyErrors,
    ))]
pub async fn disable(
    State(state): State<AppState>,
    ctx: RequestContext,
    AuthUser(caller): AuthUser,
    JsonBody(body): JsonBody<CodeRequest>,
) -> ApiResult<Json<MessageBody>> {
    state
        .auth
        .two_factor_disable(&caller, body.code.as_deref(), &ctx)
        .await?;
    Ok(Json(MessageBody::ok("Two-factor authentication disabled")))
}

#[utoipa::path(post, path = "/api/2fa/verify", tag = "two-factor",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "Signed in: the session starts now", body = AuthResponse),
        (status = 400, description = "`TWO_FACTOR_INVALID_CODE` (wrong, replayed or used code; \
            counts toward the account's lockout), `VALIDATION_ERROR` (`tempToken` or `code` missing)", body = ErrorBody),
        (status = 401, description = "`TWO_FACTOR_TOKEN_EXPIRED`: the temp token is unknown, used, \
            expired, or dead after 5 wrong codes", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 503, description = "`TWO_FACTOR_SERVICE_UNAVAILABLE`", body = ErrorBody),
        JsonBodyErrors, RateLimited, Unavailable,
    ))]
pub async fn verify(
    State(state): State<AppState>,
    ctx: RequestContext,
    JsonBody(body): JsonBody<VerifyRequest>,
) -> ApiResult<Json<AuthResponse>> {
    let (success, is_new_user) = state
        .auth
        .two_factor_verify(body.temp_token.as_deref(), body.code.as_deref(), &ctx)
        .await?;
    Ok(Json(AuthResponse::new(
        &success,
        state.auth.access.ttl_secs(),
        is_new_user,
    )))
}
