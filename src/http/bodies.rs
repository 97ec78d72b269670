//! Schemas, for the OpenAPI document, of the bodies that handlers build with `json!` and of the
//! error responses every route shares. Handlers do not use these types; the operability test
//! compares each documented schema with the body the service actually sends, so a handler that
//! changes its body without changing its schema here fails that test.

use utoipa::{IntoParams, IntoResponses, ToSchema};
use uuid::Uuid;

use crate::domain::UserType;
use crate::error::ErrorBody;
use crate::security_log::query::{EventView, Stats};

/// `{success, message}`: logout, session revocation, lifting a lock.
#[derive(ToSchema)]
pub struct MessageBody {
    pub success: bool,
    #[schema(example = "Logged out successfully")]
    pub message: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct LogoutAllBody {
    pub success: bool,
    #[schema(example = "Logged out from all devices")]
    pub message: String,
    /// Sessions ended by this call.
    pub tokens_revoked: u64,
}

#[derive(ToSchema)]
pub struct SessionList {
    pub success: bool,
    pub sessions: Vec<SessionView>,
}

/// A live session (refresh-token family) of the caller.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct SessionView {
    pub id: Uuid,
    pub device_name: String,
    pub ip_address: String,
    pub created_at: String,
    pub last_used_at: String,
    /// The earlier of the absolute end and the idle end (last use plus the idle lifetime).
    pub expires_at: String,
    /// The session of the access token that asked.
    pub is_current: bool,
}

/// What the caller's access token says.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct TokenInfo {
    pub user_id: String,
    pub email: String,
    pub user_type: UserType,
    pub session_id: Uuid,
    pub issued_at: String,
    pub expires_at: String,
    /// Seconds until `expiresAt`, never negative.
    pub time_to_expiry: i64,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct CsrfToken {
    /// Random, base64url; no route checks it (tokens travel in headers and bodies, not cookies).
    pub csrf_token: String,
}

/// One page of security events, newest first.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct EventsPage {
    pub success: bool,
    pub events: Vec<EventView>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct EventStats {
    pub success: bool,
    pub stats: Stats,
}

#[derive(ToSchema)]
pub struct BlockedList {
    pub success: bool,
    pub blocked: Vec<BlockedEntry>,
}

/// A locked account or a blocked address.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct BlockedEntry {
    /// `account:<email>` or `ip:<address>`: what `DELETE .../blocked/{key}` takes.
    pub key: String,
    #[schema(rename = "type")]
    pub kind: BlockKind,
    pub subject: String,
    pub expires_in_secs: u64,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum BlockKind {
    Account,
    Ip,
}

/// `GET /health`: `degraded` whenever a fallback is active or a dependency fails.
#[derive(ToSchema)]
pub struct Health {
    pub status: HealthStatus,
    #[schema(example = "auth-service")]
    pub service: String,
    pub version: String,
    /// The port actually listened on.
    pub port: u16,
    /// Seconds since start.
    pub uptime: u64,
    pub timestamp: String,
    pub pid: u32,
    pub checks: HealthChecks,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Degraded,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct HealthChecks {
    pub database: CheckState,
    pub storage_type: StorageType,
    pub redis: CheckState,
    pub oauth: Configured,
    pub security_log: SecurityLogHealth,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum CheckState {
    Ok,
    Error,
    NotConfigured,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum StorageType {
    Postgresql,
    File,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Configured {
    Configured,
    NotConfigured,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct SecurityLogHealth {
    pub sink: StorageType,
    /// The log as it is now: its sink answers, its spool takes writes and is under its cap, and
    /// no event waits in the spool. A loss in the past does not count here (see `lastDropAt`).
    pub healthy: bool,
    /// Events waiting in memory for the writer.
    pub queued: u64,
    /// Events in spool files waiting for the database.
    pub spooled: u64,
    /// Events lost since the start (expected 0).
    pub dropped: u64,
    /// When events were last made durable; null until the first flush.
    #[schema(required = true)]
    pub last_flush_at: Option<String>,
    /// When events were last lost; null if never since the start.
    #[schema(required = true)]
    pub last_drop_at: Option<String>,
}

#[derive(ToSchema)]
pub struct Liveness {
    #[schema(example = "alive")]
    pub status: String,
}

#[derive(ToSchema)]
pub struct Readiness {
    #[schema(example = "ready")]
    pub status: String,
}

/// `POST /api/auth/google`.
#[derive(ToSchema)]
pub struct GoogleSignInBody {
    /// A Google ID token from Google Identity Services.
    pub credential: String,
}

/// What Google Identity Services posts in redirect mode; `g_csrf_token` must equal the cookie of
/// the same name.
#[derive(ToSchema)]
pub struct GisCallbackForm {
    pub credential: String,
    pub g_csrf_token: String,
}

// ---- query parameters ---------------------------------------------------------------------------

/// Filters of the admin event routes; all optional, combined with "and".
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct EventFilterParams {
    /// An event type, e.g. `login_failed`.
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// `info`, `low`, `warning`, `high` or `critical`.
    pub severity: Option<String>,
    pub user_id: Option<String>,
    pub ip: Option<String>,
    /// ISO-8601 time, inclusive.
    pub from: Option<String>,
    /// ISO-8601 time, exclusive.
    pub to: Option<String>,
}

/// Cursor paging, newest first.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
    /// Events per page (100 by default).
    pub limit: Option<usize>,
}

/// The window of `GET /api/admin/security/events/stats` (the last 24 hours by default).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WindowParams {
    /// ISO-8601 time; `to` minus 24 hours by default.
    pub from: Option<String>,
    /// ISO-8601 time; now by default.
    pub to: Option<String>,
}

/// The format of `GET /api/admin/security/events/export`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// `ndjson` (the default) or `csv`.
    pub format: Option<String>,
}

/// The filter of `GET /api/admin/security/events/stream`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct StreamParams {
    /// Only events at least this severe (`info` by default).
    pub min_severity: Option<String>,
}

// ---- error responses shared by many routes ------------------------------------------------------

/// A JSON body that could not be accepted.
#[derive(IntoResponses)]
pub enum JsonBodyErrors {
    /// `VALIDATION_ERROR` (with `field`): a field is missing, empty, too long or invalid.
    /// `INVALID_JSON`: not JSON. `INVALID_BODY`: a duplicate field or a value of the wrong type.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `PAYLOAD_TOO_LARGE`: the body is over the limit (16 KiB by default).
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// `UNSUPPORTED_MEDIA_TYPE`: the Content-Type is not JSON.
    #[response(status = 415)]
    MediaType(ErrorBody),
}

/// A missing or unusable access token. Carries `WWW-Authenticate: Bearer`.
#[derive(IntoResponses)]
pub enum BearerErrors {
    /// `AUTH_TOKEN_MISSING`: no `Authorization: Bearer` header. `AUTH_TOKEN_INVALID`: a bad,
    /// revoked or foreign token, or its user is gone. `AUTH_TOKEN_EXPIRED`: past its `exp`.
    #[response(status = 401, headers(("WWW-Authenticate" = String)))]
    Unauthorized(ErrorBody),
}

/// Admin routes: a valid token of a user whose type is `admin`.
#[derive(IntoResponses)]
pub enum AdminErrors {
    /// `AUTH_TOKEN_MISSING`, `AUTH_TOKEN_INVALID` or `AUTH_TOKEN_EXPIRED`.
    #[response(status = 401, headers(("WWW-Authenticate" = String)))]
    Unauthorized(ErrorBody),
    /// `FORBIDDEN`: the caller is not an admin.
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// `RATE_LIMITED`, with `retryAfter` (seconds) in the body and the headers.
#[derive(IntoResponses)]
#[response(
    status = 429,
    headers(
        ("Retry-After" = u64, description = "Seconds to wait"),
        ("RateLimit-Limit" = u32),
        ("RateLimit-Remaining" = u32),
        ("RateLimit-Reset" = u64),
        ("RateLimit-Policy" = String),
    )
)]
pub struct RateLimited(pub ErrorBody);

/// `SERVICE_UNAVAILABLE`: the store (or the security log's database) does not answer; retry.
#[derive(IntoResponses)]
#[response(status = 503, headers(("Retry-After" = u64)))]
pub struct Unavailable(pub ErrorBody);
