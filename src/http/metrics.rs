//! `GET /metrics`: the Prometheus (OpenMetrics text) exposition, on the API port or, with
//! `METRICS_ADDR`, on a listener of its own that is not exposed with the API.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::AppState;

#[utoipa::path(get, path = "/metrics", tag = "ops",
    description = "Served here unless `METRICS_ADDR` is set; then only on that listener.",
    responses((status = 200, description = "Prometheus metrics, OpenMetrics text", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::text::encode(&mut text, &state.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// The router of the separate metrics listener.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}
