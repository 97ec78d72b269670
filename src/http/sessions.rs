//! The caller's sessions: list them, revoke one.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde_json::json;
use uuid::Uuid;

use super::bodies::{BearerErrors, MessageBody, SessionList, Unavailable};
use super::extract::AuthUser;
use crate::domain::format_timestamp;
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
) -> ApiResult<impl IntoResponse> {
    let idle = state.auth.policy.idle_ttl;
    let sessions: Vec<_> = state
        .auth
        .sessions(&auth)
        .await?
        .into_iter()
        .map(|s| {
            json!({
                "id": s.id,
                "deviceName": s.device_name,
                "ipAddress": s.ip_address,
                "createdAt": format_timestamp(s.created_at),
                "lastUsedAt": format_timestamp(s.last_used_at),
                "expiresAt": format_timestamp(s.expires_at.min(s.last_used_at + idle)),
                "isCurrent": s.id == auth.claims.sid,
            })
        })
        .collect();
    Ok(Json(json!({ "success": true, "sessions": sessions })))
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
) -> ApiResult<impl IntoResponse> {
    let not_found = || ApiError::NotFound {
        code: "SESSION_NOT_FOUND",
        message: "Session not found",
    };
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    state.auth.revoke_session(&auth, id, &ctx).await?;
    Ok(Json(
        json!({ "success": true, "message": "Session revoked successfully" }),
    ))
}
