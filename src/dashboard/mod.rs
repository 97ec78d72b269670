//! The admin security dashboard at `/admin`: a static page and its scripts, compiled into the
//! binary so it works with no network beyond this service. The page signs in through the API and
//! does everything else through the admin API; nothing here needs a token.

mod assets;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;
use crate::state::AppState;

/// Only this origin, for everything; no inline script or style, no framing, no plugins. The
/// global security-headers layer keeps a CSP that a response already has.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(index))
        .route("/admin/", get(index))
        .route("/admin/{file}", get(asset))
}

async fn index() -> Response {
    serve(&assets::INDEX)
}

async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let asset = assets::find(&file).ok_or(ApiError::NotFound {
        code: "NOT_FOUND",
        message: "Route not found",
    })?;
    Ok(serve(asset))
}

fn serve(asset: &assets::Asset) -> Response {
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
}
