//! `GET /openapi.json`: the OpenAPI 3.1 document of every public route, derived by utoipa from the
//! handlers' `#[utoipa::path]` annotations and the body types' `ToSchema`. The operability test
//! checks that each route of [`super::routes`] is in it, and nothing else, that each operation
//! names its route's aliases (`x-aliases`, and in its description), and that its schemas match the
//! bodies the service sends.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    account, admin, admin_users, auth, events, google, health, metrics, profile, sessions,
    two_factor,
};
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
            `A-Za-z0-9-_.:`), else a new one. Every `/api/auth/*` route is also served at \
            `/auth/*`, every `/api/2fa/*` route at `/2fa/*`, and `/api/csrf-token` at \
            `/csrf-token` and `/api/auth/csrf-token`: each operation lists its other paths in \
            `x-aliases`."
    ),
    paths(
        auth::signup,
        auth::login,
        auth::me,
        profile::update_me,
        profile::settings,
        profile::put_settings,
        auth::refresh,
        auth::logout,
        auth::logout_all,
        auth::token_info,
        auth::csrf_token,
        account::verify_email,
        account::resend_verification,
        account::forgot_password,
        account::reset_password,
        account::change_password,
        google::apple,
        two_factor::setup,
        two_factor::verify_setup,
        two_factor::disable,
        two_factor::verify,
        sessions::list,
        sessions::revoke,
        sessions::revoke_others,
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
    modifiers(&BearerAuth, &Aliases),
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

/// Names each route's aliases on its operations: `x-aliases` (a list of paths) and a sentence of
/// the description. The aliases come from the route table, so a new route under an aliased prefix
/// is documented with its alias without a word here.
struct Aliases;

impl Modify for Aliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use axum::http::Method;
        for route in super::routes() {
            if route.aliases.is_empty() {
                continue;
            }
            let Some(item) = openapi.paths.paths.get_mut(route.path) else {
                continue;
            };
            let operation = match route.method {
                Method::GET => item.get.as_mut(),
                Method::POST => item.post.as_mut(),
                Method::PUT => item.put.as_mut(),
                Method::PATCH => item.patch.as_mut(),
                Method::DELETE => item.delete.as_mut(),
                _ => None,
            };
            let Some(operation) = operation else {
                continue;
            };
            let listed: Vec<String> = route.aliases.iter().map(|a| format!("`{a}`")).collect();
            let also = format!("Also served at {}.", listed.join(" and "));
            operation.description = Some(match operation.description.take() {
                Some(text) if !text.is_empty() => format!("{text}\n\n{also}"),
                _ => also,
            });
            operation
                .extensions
                .get_or_insert_with(Default::default)
                .insert("x-aliases".to_owned(), serde_json::json!(route.aliases));
        }
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
