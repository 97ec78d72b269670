//! The axum edge: every route in one place, and the layer stack around them.

pub mod admin;
pub mod auth;
pub mod events;
pub mod extract;
pub mod google;
pub mod health;
pub mod metrics;
pub mod middleware;
pub mod sessions;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::routing::{delete, get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;

use crate::app::AppState;

pub fn router(state: AppState) -> Router {
    let settings = &state.settings;
    let mut api = Router::new();
    if settings.metrics_addr.is_none() {
        api = api.route("/metrics", get(metrics::metrics));
    }
    let api = api
        .route("/api/auth/signup", post(auth::signup))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/me", get(auth::me))
        .route("/api/auth/refresh", post(auth::refresh))
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/auth/logout-all", post(auth::logout_all))
        .route("/api/auth/sessions", get(sessions::list))
        .route("/api/auth/sessions/{id}", delete(sessions::revoke))
        .route("/api/auth/token-info", get(auth::token_info))
        .route("/api/auth/google", post(google::sign_in))
        .route("/api/auth/google/authorize", get(google::authorize))
        .route(
            "/api/auth/google/callback",
            get(google::callback).post(google::gis_callback),
        )
        .route("/api/auth/apple", post(auth::apple))
        .route("/api/csrf-token", get(auth::csrf_token))
        .route("/api/auth/security-events", get(events::own))
        .route("/api/admin/security/events", get(events::list))
        .route("/api/admin/security/events/stats", get(events::stats))
        .route("/api/admin/security/events/export", get(events::export))
        .route("/api/admin/security/events/stream", get(events::stream))
        .route(
            "/api/admin/security/users/{id}/timeline",
            get(events::timeline),
        )
        .route("/api/admin/security/blocked", get(admin::blocked))
        .route("/api/admin/security/blocked/{key}", delete(admin::unblock))
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .fallback(middleware::not_found)
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(axum::middleware::from_fn(middleware::header_limit));

    // Outermost first: request id and span, then CORS, security headers, the error envelope
    // (which needs the request id), and the timeout innermost so its 408 gets enveloped too.
    api.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        Duration::from_millis(settings.request_timeout_ms),
    ))
    .layer(axum::middleware::from_fn(middleware::error_envelope))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        middleware::security_headers,
    ))
    .layer(cors(&state))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        middleware::request_context,
    ))
    .with_state(state)
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
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
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
