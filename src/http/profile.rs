//! The caller's own account: the profile update and the settings. Thin: extract, call the
//! service, shape the response.

use axum::Json;
use axum::extract::State;

use super::bodies::errors::{BearerErrors, JsonBodyErrors, Unavailable};
use super::bodies::profile::{ProfileUpdate, SettingsBody, SettingsSaved, SettingsUpdate};
use super::extract::{AuthUser, JsonBody};
use crate::domain::UserView;
use crate::error::{ApiResult, ErrorBody};
use crate::security_log::event::RequestContext;
use crate::state::AppState;

#[utoipa::path(patch, path = "/api/auth/me", tag = "auth", operation_id = "update_me",
    security(("bearer" = [])),
    request_body = ProfileUpdate,
    responses(
        (status = 200, description = "The caller as changed, bare", body = UserView),
        JsonBodyErrors, BearerErrors, Unavailable,
    ))]
pub async fn update_me(
    State(state): State<AppState>,
    ctx: RequestContext,
    AuthUser(auth): AuthUser,
    JsonBody(body): JsonBody<ProfileUpdate>,
) -> ApiResult<Json<UserView>> {
    let user = state.auth.update_profile(&auth, body.edit(), &ctx).await?;
    Ok(Json(UserView::from(&user)))
}

#[utoipa::path(get, path = "/api/auth/settings", tag = "auth", operation_id = "get_settings",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's settings, defaults merged per category", body = SettingsBody),
        BearerErrors, Unavailable,
    ))]
pub async fn settings(
    State(state): State<AppState>,
    AuthUser(auth): AuthUser,
) -> ApiResult<Json<SettingsBody>> {
    let settings = state.auth.settings(&auth).await?;
    Ok(Json(SettingsBody {
        success: true,
        settings,
    }))
}

#[utoipa::path(put, path = "/api/auth/settings", tag = "auth", operation_id = "put_settings",
    security(("bearer" = [])),
    request_body = SettingsUpdate,
    responses(
        (status = 200, description = "Saved; the settings as `GET` now shows them", body = SettingsSaved),
        (status = 400, description = "`AUTH_INVALID_SETTINGS`: `settings` is missing or not an \
            object, or a category is not an object or is nested too deep; also `INVALID_JSON`, \
            `INVALID_BODY`", body = ErrorBody),
        (status = 413, description = "`AUTH_SETTINGS_TOO_LARGE`: over 4 KiB would be stored; \
            `PAYLOAD_TOO_LARGE`: the body is over the limit", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: the Content-Type is not JSON", body = ErrorBody),
        BearerErrors, Unavailable,
    ))]
pub async fn put_settings(
    State(state): State<AppState>,
    AuthUser(auth): AuthUser,
    JsonBody(body): JsonBody<SettingsUpdate>,
) -> ApiResult<Json<SettingsSaved>> {
    let settings = state
        .auth
        .put_settings(&auth, body.settings.as_ref())
        .await?;
    Ok(Json(SettingsSaved {
        success: true,
        settings,
        message: "Settings saved",
    }))
}
