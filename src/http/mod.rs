//! The axum edge: every route in one place, and the layer stack around them.

pub mod account;
pub mod admin;
pub mod admin_users;
pub mod auth;
pub mod bodies;
pub mod debug;
pub mod events;
pub mod extract;
pub mod google;
pub mod health;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod profile;
pub mod sessions;
pub mod two_factor;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::routing::{self, MethodRouter};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;

use crate::state::AppState;

/// One public route: the method and path the OpenAPI document must list, the other paths it is
/// also served at ([`aliases_of`]), and its handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub aliases: Vec<String>,
    handler: MethodRouter<AppState>,
}

impl Route {
    fn get<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Self {
        Self::new(Method::GET, path, routing::get(handler))
    }

    fn post<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Self {
        Self::new(Method::POST, path, routing::post(handler))
    }

    fn put<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Self {
        Self::new(Method::PUT, path, routing::put(handler))
    }

    fn patch<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Self {
        Self::new(Method::PATCH, path, routing::patch(handler))
    }

    fn delete<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Self {
        Self::new(Method::DELETE, path, routing::delete(handler))
    }

    fn new(method: Method, path: &'static str, handler: MethodRouter<AppState>) -> Self {
        Self {
            method,
            path,
            aliases: aliases_of(path),
            handler,
        }
    }
}

/// The route that hands out a CSRF token, for old clients.
pub const CSRF_PATH: &str = "/api/csrf-token";

/// Prefixes served twice: FluxStudio's own server mounts its auth routers at both, and its web
/// app's development proxy forwards `/auth` and `/2fa` unchanged. (Canonical prefix, alias.)
const ALIAS_PREFIXES: [(&str, &str); 2] = [("/api/auth/", "/auth/"), ("/api/2fa/", "/2fa/")];

/// The other paths the route at `path` is also served at: every `/api/auth/*` at `/auth/*`, every
/// `/api/2fa/*` at `/2fa/*`, and the CSRF route at the two other paths clients fetch it from.
pub fn aliases_of(path: &str) -> Vec<String> {
    if path == CSRF_PATH {
        return vec!["/csrf-token".to_owned(), "/api/auth/csrf-token".to_owned()];
    }
    ALIAS_PREFIXES
        .iter()
        .filter_map(|(canonical, alias)| {
            path.strip_prefix(canonical)
                .map(|rest| format!("{alias}{rest}"))
        })
        .collect()
}

/// The path a matched route is documented under: itself, or for an alias its route's path. Metrics
/// labels, log lines and events carry this, so an alias adds no label value of its own.
pub fn canonical_path(matched: &str) -> Option<&'static str> {
    static BY_PATH: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    BY_PATH
        .get_or_init(|| {
            let mut by_path = HashMap::new();
            for route in routes() {
                by_path.insert(route.path.to_owned(), route.path);
                for alias in route.aliases {
                    by_path.insert(alias, route.path);
                }
            }
            by_path
        })
        .get(matched)
        .copied()
}

/// Where Prometheus scrapes (on its own listener instead when `METRICS_ADDR` is set).
pub const METRICS_PATH: &str = "/metrics";

/// Every public route, in one list: `router` serves these (and their aliases), and the operability
/// test checks that `/openapi.json` documents exactly these, each naming its aliases.
pub fn routes() -> Vec<Route> {
    vec![
        Route::get(METRICS_PATH, metrics::metrics),
        Route::get("/openapi.json", openapi::openapi),
        Route::post("/api/auth/signup", auth::signup),
        Route::post("/api/auth/login", auth::login),
        Route::get("/api/auth/me", auth::me),
        Route::patch("/api/auth/me", profile::update_me),
        Route::get("/api/auth/settings", profile::settings),
        Route::put("/api/auth/settings", profile::put_settings),
        Route::post("/api/auth/refresh", auth::refresh),
        Route::post("/api/auth/logout", auth::logout),
        Route::post("/api/auth/logout-all", auth::logout_all),
        Route::get("/api/auth/sessions", sessions::list),
        Route::delete("/api/auth/sessions", sessions::revoke_others),
        Route::delete("/api/auth/sessions/{id}", sessions::revoke),
        Route::get("/api/auth/token-info", auth::token_info),
        Route::post("/api/auth/verify-email", account::verify_email),
        Route::post(
            "/api/auth/resend-verification",
            account::resend_verification,
        ),
        Route::post("/api/auth/forgot-password", account::forgot_password),
        Route::post("/api/auth/reset-password", account::reset_password),
        Route::post("/api/auth/change-password", account::change_password),
        Route::post("/api/auth/google", google::sign_in),
        Route::get("/api/auth/google/authorize", google::authorize),
        Route::get("/api/auth/google/callback", google::callback),
        Route::post("/api/auth/google/callback", google::gis_callback),
        Route::post("/api/auth/apple", google::apple),
        Route::post("/api/2fa/setup", two_factor::setup),
        Route::post("/api/2fa/verify-setup", two_factor::verify_setup),
        Route::post("/api/2fa/disable", two_factor::disable),
        Route::post("/api/2fa/verify", two_factor::verify),
        Route::get(CSRF_PATH, auth::csrf_token),
        Route::get("/api/auth/security-events", events::own),
        Route::get("/api/admin/security/events", events::list),
        Route::get("/api/admin/security/events/stats", events::stats),
        Route::get("/api/admin/security/events/export", events::export),
        Route::get("/api/admin/security/events/stream", events::stream),
        Route::get("/api/admin/security/users/{id}/timeline", events::timeline),
        Route::get("/api/admin/security/blocked", admin::blocked),
        Route::delete("/api/admin/security/blocked/{key}", admin::unblock),
        Route::get("/api/admin/security/users", admin_users::search),
        Route::delete(
            "/api/admin/security/users/{id}/sessions",
            admin_users::revoke_all,
        ),
        Route::delete(
            "/api/admin/security/users/{id}/sessions/{sid}",
            admin_users::revoke_session,
        ),
        Route::delete(
            "/api/admin/security/users/{id}/2fa",
            admin_users::disable_two_factor,
        ),
        Route::get("/health", health::health),
        Route::get("/health/live", health::live),
        Route::get("/health/ready", health::ready),
    ]
}

pub fn router(state: AppState) -> Router {
    let settings = &state.settings;
    let mut api = Router::new();
    for route in routes() {
        if route.path == METRICS_PATH && settings.metrics_addr.is_some() {
            continue;
        }
        // Two methods on one path (the Google callback) merge into one method router; an alias
        // gets the same handler, so limits, events and answers are the route's own.
        for alias in &route.aliases {
            api = api.route(alias, route.handler.clone());
        }
        api = api.route(route.path, route.handler);
    }
    if settings.debug_panic_route {
        api = api.route(debug::PANIC_PATH, routing::get(debug::panic));
    }
    let api = api
        // The dashboard's page and scripts: not API routes, so not in `routes()` or the document.
        .merge(crate::dashboard::routes())
        .fallback(middleware::not_found)
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes));

    // Outermost first: error tracking's per-request hub (when on), the request middleware
    // (request id and span, early refusals, error envelope, security headers, log line), then
    // CORS, the timeout so that its 408 gets enveloped too, and innermost a handler's panic
    // answered 500 (enveloped and logged like any) instead of a dropped connection. The
    // middleware passes its own refusals through the same CORS layer.
    let cors = cors(&state);
    let edge = middleware::Edge {
        state: state.clone(),
        cors: std::sync::Arc::new(cors.clone()),
    };
    let settings = state.settings.clone();
    let router = api
        .layer(CatchPanicLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(settings.request_timeout_ms),
        ))
        .layer(cors)
        .layer(axum::middleware::from_fn_with_state(
            edge,
            middleware::request_context,
        ))
        .with_state(state);
    crate::telemetry::error_tracking::around(router, &settings)
}

/// Exact origins from `CORS_ORIGINS` (in development, the usual local frontends when unset).
/// Credentials are allowed, so `*` is never used; `Vary: Origin` is set by the layer.
fn cors(state: &AppState) -> CorsLayer {
    let settings = &state.settings;
    let mut origins = settings.cors_origins.clone();
    if origins.is_empty() && !settings.is_production() {
        origins = vec![
            "http://localhost:3000".into(),
            "http://localhost:5173".into(),
        ];
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::HeaderName::from_static("x-request-id"),
            header::HeaderName::from_static("x-csrf-token"),
        ])
        .expose_headers([
            header::HeaderName::from_static("x-request-id"),
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600))
}
