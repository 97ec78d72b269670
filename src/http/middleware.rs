//! The request middleware, one layer: request ids and the request span, the refusals made before
//! the routes (head size, declared body size, a path that is not text), the error envelope (every
//! 4xx/5xx in the Error shape with the request id, including axum's own rejections), security
//! headers, metrics and the request's log line. One layer rather than one per concern: each
//! `from_fn` layer boxes the rest of the stack and its future on every request.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::{Layer, ServiceExt};
use tower_http::cors::CorsLayer;
use tracing::Instrument;

use crate::error::{ApiError, ErrorBody, ErrorMarker};
use crate::state::AppState;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of this request: the caller's `X-Request-Id` when it is well formed, else a new UUID.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn well_formed_request_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
    .then(|| s.to_owned())
}

/// Outermost layer: assigns the request id, opens the request span, refuses an oversized head or
/// declared body or a path that is not text (through the CORS layer), puts errors in the Error
/// shape, adds the security headers, and logs one line per request (method, route, status,
/// latency). Headers are not logged, so Authorization and Cookie never are.
///
/// The span holds only the request id: the JSON formatter writes a span's fields out when the span
/// opens and parses them back for every line logged inside it, so each field there is paid on
/// every request, while the lines that need more than the id (the request line) carry it
/// themselves.
pub async fn request_context(State(edge): State<Edge>, mut req: Request, next: Next) -> Response {
    let state = &edge.state;
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(well_formed_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = crate::metrics::method_label(req.method());
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let client_ip = super::extract::client_ip(peer, req.headers(), &state.settings.trusted_proxies);
    // An alias is labelled with its route's path: one label value per route, however called.
    let route_label = route
        .as_deref()
        .map(|matched| super::canonical_path(matched).unwrap_or(matched))
        .unwrap_or("unmatched");
    let span = tracing::info_span!("request", request_id = %id);
    crate::telemetry::error_tracking::tag_request(&id, route_label, method);
    let started = Instant::now();
    let response = match EarlyRefusal::of(&req, state.settings.body_limit_bytes) {
        Some(refusal) => refusal.through(&edge.cors, req).await,
        None => next.run(req).instrument(span.clone()).await,
    };
    if response.status().is_server_error() {
        crate::telemetry::error_tracking::tag_status(response.status().as_u16());
    }
    let mut response = span.in_scope(|| error_envelope(response, &id));
    security_headers(response.headers_mut(), state.settings.hsts);
    let status = response.status();
    let elapsed = started.elapsed().as_secs_f64();
    state
        .metrics
        .observe_request(route_label, method, status.as_u16(), elapsed);
    span.in_scope(|| {
        let latency_ms = elapsed * 1000.0;
        let status = status.as_u16();
        if status >= 500 {
            tracing::warn!(method, route = route_label, status, latency_ms, client_ip = %client_ip,
                "request failed");
        } else {
            tracing::info!(method, route = route_label, status, latency_ms, client_ip = %client_ip,
                "request");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    response
}

/// What [`request_context`] needs: the app's state, and the CORS layer the routes are behind, so
/// that the refusals it makes before the routes get the same CORS headers as any other answer (a
/// browser shows a cross-origin answer without them to its page as a network error, not as the
/// JSON error).
#[derive(Clone)]
pub struct Edge {
    pub state: AppState,
    pub cors: Arc<CorsLayer>,
}

/// A request refused before it reaches the routes.
#[derive(Clone, Copy, Debug)]
enum EarlyRefusal {
    /// Over [`MAX_HEADER_BYTES`]: 431.
    HeadTooLarge,
    /// `Content-Length` over the limit: 413 before the body is read, since waiting for bytes that
    /// will be refused anyway would hold the connection until the request timeout.
    DeclaredBodyTooLarge,
    /// A path or query that is not text: 400 `INVALID_PARAMETER`.
    TargetNotText,
}

impl EarlyRefusal {
    fn of(req: &Request, body_limit: usize) -> Option<Self> {
        if head_too_large(req) {
            Some(Self::HeadTooLarge)
        } else if declared_body_too_large(req, body_limit) {
            Some(Self::DeclaredBodyTooLarge)
        } else if !target_is_text(req.uri()) {
            Some(Self::TargetNotText)
        } else {
            None
        }
    }

    fn response(self) -> Response {
        match self {
            Self::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.into_response(),
            Self::DeclaredBodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE.into_response(),
            Self::TargetNotText => ApiError::BadRequest {
                code: "INVALID_PARAMETER",
                message: "The path or query has a NUL character or is not UTF-8".into(),
            }
            .into_response(),
        }
    }

    /// The refusal as `cors` passes it back for `req`, with the CORS headers its origin gets. (A
    /// preflight is answered by the CORS layer itself, as on any route.)
    async fn through(self, cors: &CorsLayer, req: Request) -> Response {
        let refuse = tower::service_fn(move |_: Request| {
            std::future::ready(Ok::<_, Infallible>(self.response()))
        });
        match cors.layer(refuse).oneshot(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// Puts every error response in the Error shape with its request id. Responses made by axum or
/// tower (404 fallback, 405, 408 timeout, 413, 431) have no marker and get a body from their
/// status.
fn error_envelope(response: Response, request_id: &str) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut error = match parts.extensions.remove::<ErrorMarker>() {
        Some(marker) => {
            if let Some(cause) = &marker.cause {
                tracing::error!(cause = %cause, status = status.as_u16(), "internal error");
            }
            drop(body);
            marker.body
        }
        None => {
            drop(body);
            body_for_status(status)
        }
    };
    error.request_id = Some(request_id.to_owned());
    let bytes = serde_json::to_vec(&error).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

fn body_for_status(status: StatusCode) -> ErrorBody {
    match status {
        StatusCode::NOT_FOUND => ErrorBody::new("NOT_FOUND", "Route not found"),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed.body(),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge.body(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType.body(),
        StatusCode::REQUEST_TIMEOUT => ErrorBody::new("REQUEST_TIMEOUT", "Request took too long"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            ErrorBody::new("HEADERS_TOO_LARGE", "Request headers are too large")
        }
        StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable { retry_after: 5 }.body(),
        s if s.is_server_error() => ApiError::Internal(anyhow::anyhow!("{s}")).body(),
        _ => ErrorBody::new("BAD_REQUEST", "Bad request"),
    }
}

/// The largest request head accepted (request target plus headers), as Node's default: ample for
/// any token this service issues (under 1 KiB) and ordinary cookies. A larger head is a 431 in the
/// Error shape; one over twice this is refused by hyper before it is read whole
/// ([`crate::server::HEAD_HARD_LIMIT`]).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Whether the request head is over [`MAX_HEADER_BYTES`] (answered 431, in the Error shape).
fn head_too_large(req: &Request) -> bool {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    target + headers > MAX_HEADER_BYTES
}

/// Whether `Content-Length` declares a body over the limit (answered 413 without reading it).
fn declared_body_too_large(req: &Request, limit: usize) -> bool {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|length| length > limit as u64)
}

/// Whether the path and query, percent-decoded, are UTF-8 without NUL: every parameter that can
/// reach a store (Postgres refuses 0x00 in text) is then valid text, on every route.
fn target_is_text(uri: &axum::http::Uri) -> bool {
    let path = uri.path().as_bytes();
    let query = uri.query().unwrap_or("").as_bytes();
    // Raw bytes in a URI are ASCII without NUL (hyper refuses others); only escapes can hide one.
    if !path.contains(&b'%') && !query.contains(&b'%') {
        return true;
    }
    // Query parameters are decoded one by one (`&` and `=` separate them), the path as a whole.
    std::iter::once(path)
        .chain(query.split(|b| *b == b'&'))
        .all(|part| {
            let decoded = percent_decode(part);
            !decoded.contains(&0) && std::str::from_utf8(&decoded).is_ok()
        })
}

/// `%XY` escapes decoded; a `%` not followed by two hex digits stays as it is.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Security headers on every response; `no-store` everywhere, since most responses carry tokens
/// or personal data and none benefits from caching.
fn security_headers(h: &mut axum::http::HeaderMap, hsts: bool) {
    // Room for these and the request id at once, instead of regrowing the map on the way.
    h.reserve(10);
    // axum's `Json` says `application/json`; docs/API.md (and J1) promise the charset too.
    if h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"application/json"))
    {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
}

/// The 404 for unknown routes.
pub async fn not_found() -> impl IntoResponse {
    ApiError::NotFound {
        code: "NOT_FOUND",
        message: "Route not found",
    }
}
