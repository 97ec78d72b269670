//! Admin routes (`userType` admin): locked accounts and blocked addresses.

use axum::Json;
use axum::extract::{Path, State};

use super::bodies::MessageBody;
use super::bodies::admin::{BlockKind, BlockedEntry, BlockedList};
use super::bodies::errors::AdminErrors;
use super::extract::AdminUser;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};
use crate::state::AppState;

/// `GET /api/admin/security/blocked`: `{blocked:[{key, type, subject, expiresInSecs}]}`.
#[utoipa::path(get, path = "/api/admin/security/blocked", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "Locked accounts and blocked addresses", body = BlockedList),
        AdminErrors,
    ))]
pub async fn blocked(State(state): State<AppState>, AdminUser(_): AdminUser) -> Json<BlockedList> {
    let blocked = state
        .limits
        .blocked()
        .await
        .into_iter()
        .map(|b| BlockedEntry {
            key: format!("{}:{}", b.kind, b.subject),
            kind: BlockKind::of(b.kind),
            subject: b.subject,
            expires_in_secs: b.expires_in_secs,
        })
        .collect();
    Json(BlockedList {
        success: true,
        blocked,
    })
}

/// `DELETE /api/admin/security/blocked/{key}` with `key` = `account:<email>`, `ip:<address>` or
/// `signup:<address>`.
#[utoipa::path(delete, path = "/api/admin/security/blocked/{key}", tag = "admin", security(("bearer" = [])),
    params(("key" = String, Path, description = "`account:<email>`, `ip:<address>` or `signup:<address>`")),
    responses(
        (status = 200, description = "The lock is lifted", body = MessageBody),
        (status = 404, description = "`BLOCK_NOT_FOUND`: no such live lock", body = ErrorBody),
        AdminErrors,
    ))]
pub async fn unblock(
    State(state): State<AppState>,
    ctx: RequestContext,
    AdminUser(admin): AdminUser,
    Path(key): Path<String>,
) -> ApiResult<Json<MessageBody>> {
    let not_found = || ApiError::NotFound {
        code: "BLOCK_NOT_FOUND",
        message: "No such lock",
    };
    let (kind, subject) = key.split_once(':').ok_or_else(not_found)?;
    if !crate::limits::BLOCK_KINDS.contains(&kind) || subject.is_empty() || subject.len() > 300 {
        return Err(not_found());
    }
    let live = state
        .limits
        .blocked()
        .await
        .into_iter()
        .any(|b| b.kind == kind && b.subject == subject);
    if !live {
        return Err(not_found());
    }
    state.limits.unblock(kind, subject).await;
    state
        .auth
        .record_outcome(
            SecurityEvent::from_request(EventType::LockoutLifted, &ctx)
                .user(&admin.user.id)
                .with("lockType", kind)
                .with("subject", crate::security_log::sanitize(subject, 300)),
        )
        .await?;
    Ok(Json(MessageBody::ok("Lock lifted")))
}
