//! Admin routes on another user's account (the dashboard's user view): find a user with their
//! live sessions, revoke one session or all of them, turn their two-factor sign-in off.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use uuid::Uuid;

use super::bodies::MessageBody;
use super::bodies::admin::{AdminSessionView, FoundUser, RevokedAll};
use super::bodies::errors::{AdminErrors, Unavailable};
use super::extract::AdminUser;
use crate::auth::service::DisabledBy;
use crate::domain::{UserView, format_timestamp};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::security_log::event::RequestContext;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// A user id, or an email address.
    pub query: Option<String>,
}

fn user_not_found() -> ApiError {
    ApiError::NotFound {
        code: "USER_NOT_FOUND",
        message: "No user with that id or email",
    }
}

/// `GET /api/admin/security/users?query=<email or id>`: `{user, sessions:[...]}`.
#[utoipa::path(get, path = "/api/admin/security/users", tag = "admin", security(("bearer" = [])),
    params(SearchQuery),
    responses(
        (status = 200, description = "The user and their live sessions", body = FoundUser),
        (status = 400, description = "`VALIDATION_ERROR`: no query", body = ErrorBody),
        (status = 404, description = "`USER_NOT_FOUND`: no user with that id or email", body = ErrorBody),
        AdminErrors, Unavailable,
    ))]
pub async fn search(
    State(state): State<AppState>,
    AdminUser(_): AdminUser,
    Query(q): Query<SearchQuery>,
) -> ApiResult<Json<FoundUser>> {
    let query = q.query.unwrap_or_default();
    if query.trim().is_empty() || query.len() > 300 {
        return Err(ApiError::Validation {
            field: "query",
            message: "query must be a user id or an email address".into(),
        });
    }
    let (user, sessions) = state
        .auth
        .find_user_for_admin(&query)
        .await?
        .ok_or_else(user_not_found)?;
    let idle = state.auth.policy.idle_ttl;
    let sessions = sessions
        .into_iter()
        .map(|s| AdminSessionView {
            id: s.id,
            device_name: s.device_name,
            ip_address: s.ip_address,
            user_agent: s.user_agent,
            created_at: format_timestamp(s.created_at),
            last_used_at: format_timestamp(s.last_used_at),
            expires_at: format_timestamp(s.expires_at.min(s.last_used_at + idle)),
        })
        .collect();
    Ok(Json(FoundUser {
        success: true,
        user: UserView::from(&user),
        two_factor_enabled: user.two_factor_enabled,
        sessions,
    }))
}

/// `DELETE /api/admin/security/users/{id}/sessions/{sid}`: recorded as `token_revoked` about the
/// user, with `by: admin` and the admin's id.
#[utoipa::path(delete, path = "/api/admin/security/users/{id}/sessions/{sid}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A user id"),
        ("sid" = String, Path, description = "One of the user's live sessions")),
    responses(
        (status = 200, description = "The session is revoked", body = MessageBody),
        (status = 404, description = "`SESSION_NOT_FOUND`: not a live session of that user", body = ErrorBody),
        AdminErrors, Unavailable,
    ))]
pub async fn revoke_session(
    State(state): State<AppState>,
    ctx: RequestContext,
    AdminUser(admin): AdminUser,
    Path((user_id, session_id)): Path<(String, String)>,
) -> ApiResult<Json<MessageBody>> {
    let session_id = Uuid::parse_str(&session_id).map_err(|_| ApiError::NotFound {
        code: "SESSION_NOT_FOUND",
        message: "Session not found",
    })?;
    state
        .auth
        .admin_revoke_session(&admin, &user_id, session_id, &ctx)
        .await?;
    Ok(Json(MessageBody::ok("Session revoked")))
}

/// `DELETE /api/admin/security/users/{id}/sessions`: recorded as `mass_token_revocation` about the
/// user, with `by: admin` and the admin's id.
#[utoipa::path(delete, path = "/api/admin/security/users/{id}/sessions", tag = "admin",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A user id")),
    responses(
        (status = 200, description = "Every session of the user is revoked", body = RevokedAll),
        (status = 404, description = "`USER_NOT_FOUND`: no such user", body = ErrorBody),
        AdminErrors, Unavailable,
    ))]
pub async fn revoke_all(
    State(state): State<AppState>,
    ctx: RequestContext,
    AdminUser(admin): AdminUser,
    Path(user_id): Path<String>,
) -> ApiResult<Json<RevokedAll>> {
    let revoked = state
        .auth
        .admin_revoke_all_sessions(&admin, &user_id, &ctx)
        .await?
        .ok_or_else(user_not_found)?;
    Ok(Json(RevokedAll {
        success: true,
        message: "All sessions revoked",
        sessions_revoked: revoked,
    }))
}

/// `DELETE /api/admin/security/users/{id}/2fa`: for a user who lost both the device and the
/// backup codes. Recorded as `mfa_disabled` with `by: admin` and the admin's id.
#[utoipa::path(delete, path = "/api/admin/security/users/{id}/2fa", tag = "admin",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A user id")),
    responses(
        (status = 200, description = "The user's two-factor sign-in is off; the password alone signs in", body = MessageBody),
        (status = 400, description = "`TWO_FACTOR_NOT_ENABLED`: it was not on", body = ErrorBody),
        (status = 404, description = "`USER_NOT_FOUND`: no such user", body = ErrorBody),
        AdminErrors, Unavailable,
    ))]
pub async fn disable_two_factor(
    State(state): State<AppState>,
    ctx: RequestContext,
    AdminUser(admin): AdminUser,
    Path(user_id): Path<String>,
) -> ApiResult<Json<MessageBody>> {
    let user = state
        .auth
        .store
        .user_by_id(&user_id)
        .await
        .map_err(crate::auth::AuthError::from)?
        .ok_or_else(user_not_found)?;
    if !state
        .auth
        .two_factor_disable_for(&user, DisabledBy::Admin, Some(&ctx), Some(&admin.user.id))
        .await?
    {
        return Err(crate::auth::AuthError::TwoFactorNotEnabled.into());
    }
    Ok(Json(MessageBody::ok("Two-factor authentication disabled")))
}
