//! The caller's sessions: list them, revoke one, revoke all the others.

use axum::Json;
use axum::extract::{Path, State};
use uuid::Uuid;

use super::bodies::MessageBody;
use super::bodies::errors::{BearerErrors, Unavailable};
use super::bodies::sessions::{OthersRevoked, SessionList, SessionView};
use super::extract::AuthUser;
use crate::domain::{describe_user_agent, format_timestamp};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::security_log::event::RequestContext;
use crate::state::AppState;

#[utoipa::path(get, path = "/api/auth/sessions", tag = "sessions", operation_id = "list_sessions", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's live sessions", body = SessionList),
        BearerErrors, Unavailable,
    ))]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(auth): AuthUser,
) -> ApiResult<Json<SessionList>> {
    let idle = state.auth.policy.idle_ttl;
    let sessions: Vec<_> = state
        .auth
        .sessions(&auth)
        .await?
        .into_iter()
        .map(|s| {
            let agent = describe_user_agent(s.user_agent.as_deref().unwrap_or_default());
            let last_used_at = format_timestamp(s.last_used_at);
            SessionView {
                id: s.id,
                ip: s.ip_address.clone(),
                device_name: s.device_name,
                ip_address: s.ip_address,
                created_at: format_timestamp(s.created_at),
                last_active: last_used_at.clone(),
                last_used_at,
                expires_at: format_timestamp(s.expires_at.min(s.last_used_at + idle)),
                is_current: s.id == auth.claims.sid,
                device: agent.device,
                browser: agent.browser,
                os: agent.os,
                location: None,
            }
        })
        .collect();
    Ok(Json(SessionList {
        success: true,
        sessions,
    }))
}

#[utoipa::path(delete, path = "/api/auth/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "A session id from `GET /api/auth/sessions`")),
    responses(
        (status = 200, description = "The session is revoked", body = MessageBody),
        (status = 404, description = "`SESSION_NOT_FOUND`: not a live session of the caller", body = ErrorBody),
        BearerErrors, Unavailable,
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    ctx: RequestContext,
    AuthUser(auth): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<MessageBody>> {
    let not_found = || ApiError::NotFound {
        code: "SESSION_NOT_FOUND",
        message: "Session not found",
    };
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    state.auth.revoke_session(&auth, id, &ctx).await?;
    Ok(Json(MessageBody::ok("Session revoked successfully")))
}

#[utoipa::path(delete, path = "/api/auth/sessions", tag = "sessions", operation_id = "revoke_other_sessions",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every session of the caller but the caller's own is revoked, \
            and their access tokens stop working at once", body = OthersRevoked),
        BearerErrors, Unavailable,
    ))]
pub async fn revoke_others(
    State(state): State<AppState>,
    ctx: RequestContext,
    AuthUser(auth): AuthUser,
) -> ApiResult<Json<OthersRevoked>> {
    let revoked = state.auth.revoke_other_sessions(&auth, &ctx).await?;
    Ok(Json(OthersRevoked {
        success: true,
        revoked,
    }))
}
