//! `GET /openapi.json`: the OpenAPI 3.1 document of every public route, derived by utoipa from the
//! handlers' `#[utoipa::path]` annotations and the body types' `ToSchema`. The operability test
//! checks that each route of [`super::routes`] is in it, and nothing else, and that its schemas
//! match the bodies the service sends.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, admin_users, auth, events, google, health, metrics, sessions, two_factor};
use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flux-auth",
        description = "FluxStudio's authentication service. Every 4xx/5xx body is an Error \
            (`success: false`, `message`, `error`, `code`, `requestId`, and `field` or \
            `retryAfter` where they apply); each response says which codes it can carry. Any \
            route also answers 404 `NOT_FOUND` (unknown path), 405 `METHOD_NOT_ALLOWED`, 408 \
            `REQUEST_TIMEOUT`, 431 `HEADERS_TOO_LARGE` and 500 `INTERNAL_ERROR`. Every response \
            carries `X-Request-Id`: the caller's when it is well formed (1 to 64 of \
            `A-Za-z0-9-_.:`), else a new one."
    ),
    paths(
        auth::signup,
        auth::login,
        auth::me,
        auth::refresh,
        auth::logout,
        auth::logout_all,
        auth::token_info,
        auth::csrf_token,
        google::apple,
        two_factor::setup,
        two_factor::verify_setup,
        two_factor::disable,
        two_factor::verify,
        sessions::list,
        sessions::revoke,
        google::sign_in,
        google::authorize,
        google::callback,
        google::gis_callback,
        events::own,
        events::list,
        events::stats,
        events::export,
        events::stream,
        events::timeline,
        admin::blocked,
        admin::unblock,
        admin_users::search,
        admin_users::revoke_session,
        admin_users::revoke_all,
        admin_users::disable_two_factor,
        health::health,
        health::live,
        health::ready,
        metrics::metrics,
        openapi,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Signup, login, tokens and the caller's account"),
        (name = "sessions", description = "The caller's sessions"),
        (name = "google", description = "Google sign-in and Sign in with Apple"),
        (name = "two-factor", description = "Two-factor sign-in (TOTP and backup codes)"),
        (name = "admin", description = "Security events and locks; `userType` admin only"),
        (name = "health", description = "Health, liveness and readiness probes"),
        (name = "ops", description = "Metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The `bearer` scheme that authenticated routes name: an access token from signup, login or
/// refresh, in `Authorization: Bearer`.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".to_owned());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

// Built per request rather than held in the state: it is asked for rarely and costs well under a
// millisecond. (A `//` comment: a doc comment would become the operation's description.)
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object,
        content_type = "application/json")))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
