//! Handlers for the account routes: verify-email, resend-verification, forgot-password,
//! reset-password and change-password. Thin: extract, call the service, answer.

use axum::Json;
use axum::extract::State;

use super::bodies::MessageBody;
use super::bodies::account::{
    ChangePasswordRequest, EmailRequest, ResetPasswordRequest, VerifiedBody, VerifyEmailRequest,
};
use super::bodies::errors::{BearerErrors, JsonBodyErrors, RateLimited, Unavailable};
use super::extract::{AuthUser, JsonBody};
use crate::auth::service::{FORGOT_MESSAGE, RESEND_MESSAGE};
use crate::error::{ApiResult, ErrorBody};
use crate::security_log::event::RequestContext;
use crate::state::AppState;

#[utoipa::path(post, path = "/api/auth/verify-email", tag = "auth",
    request_body = VerifyEmailRequest,
    responses(
        (status = 200, description = "The address is verified (`email_verified`)", body = VerifiedBody),
        (status = 400, body = ErrorBody, description = "`AUTH_INVALID_VERIFICATION_TOKEN` (unknown \
            or used), `AUTH_VERIFICATION_EXPIRED`, `VALIDATION_ERROR` (no token)"),
        JsonBodyErrors, RateLimited, Unavailable,
    ))]
pub async fn verify_email(
    State(state): State<AppState>,
    ctx: RequestContext,
    JsonBody(body): JsonBody<VerifyEmailRequest>,
) -> ApiResult<Json<VerifiedBody>> {
    state.auth.verify_email(body.token.as_deref(), &ctx).await?;
    Ok(Json(VerifiedBody {
        success: true,
        message: "Email verified",
        verified: true,
    }))
}

#[utoipa::path(post, path = "/api/auth/resend-verification", tag = "auth",
    request_body = EmailRequest,
    responses(
        (status = 200, body = MessageBody, description = "Always the same text, whether or not the \
            account exists or is verified; at most one mail a minute and three an hour per account"),
        (status = 400, body = ErrorBody, description = "`VALIDATION_ERROR`: not an email address"),
        JsonBodyErrors, RateLimited,
    ))]
pub async fn resend_verification(
    State(state): State<AppState>,
    ctx: RequestContext,
    JsonBody(body): JsonBody<EmailRequest>,
) -> ApiResult<Json<MessageBody>> {
    state
        .auth
        .resend_verification(body.email.as_deref(), &ctx)
        .await?;
    Ok(Json(MessageBody::ok(RESEND_MESSAGE)))
}

#[utoipa::path(post, path = "/api/auth/forgot-password", tag = "auth",
    request_body = EmailRequest,
    responses(
        (status = 200, body = MessageBody, description = "Always the same text, whether or not the \
            account exists; at most three mails an hour per account"),
        (status = 400, body = ErrorBody, description = "`VALIDATION_ERROR`: not an email address"),
        JsonBodyErrors, RateLimited,
    ))]
pub async fn forgot_password(
    State(state): State<AppState>,
    ctx: RequestContext,
    JsonBody(body): JsonBody<EmailRequest>,
) -> ApiResult<Json<MessageBody>> {
    state
        .auth
        .forgot_password(body.email.as_deref(), &ctx)
        .await?;
    Ok(Json(MessageBody::ok(FORGOT_MESSAGE)))
}

#[utoipa::path(post, path = "/api/auth/reset-password", tag = "auth",
    request_body = ResetPasswordRequest,
    responses(
        (status = 200, body = MessageBody, description = "New password set; every session and \
            access token of the account ended (`password_reset_completed`)"),
        (status = 400, body = ErrorBody, description = "`AUTH_INVALID_RESET_TOKEN` (unknown, used \
            or expired), `VALIDATION_ERROR` with `field: \"password\"` (policy)"),
        JsonBodyErrors, RateLimited, Unavailable,
    ))]
pub async fn reset_password(
    State(state): State<AppState>,
    ctx: RequestContext,
    JsonBody(body): JsonBody<ResetPasswordRequest>,
) -> ApiResult<Json<MessageBody>> {
    state.auth.reset_password(body.reset(), &ctx).await?;
    Ok(Json(MessageBody::ok(
        "Password reset. Sign in with your new password",
    )))
}

#[utoipa::path(post, path = "/api/auth/change-password", tag = "auth", security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 200, body = MessageBody, description = "Password changed; every other session \
            ended, the caller's kept (`password_changed`)"),
        (status = 400, body = ErrorBody, description = "`AUTH_INVALID_PASSWORD` (wrong current \
            password; counts toward the lockout), `AUTH_NO_PASSWORD`, `VALIDATION_ERROR` with \
            `field: \"newPassword\"` (policy)"),
        BearerErrors, JsonBodyErrors, RateLimited, Unavailable,
    ))]
pub async fn change_password(
    State(state): State<AppState>,
    ctx: RequestContext,
    AuthUser(auth): AuthUser,
    JsonBody(body): JsonBody<ChangePasswordRequest>,
) -> ApiResult<Json<MessageBody>> {
    state
        .auth
        .change_password(&auth, body.change(), &ctx)
        .await?;
    Ok(Json(MessageBody::ok("Password changed")))
}
