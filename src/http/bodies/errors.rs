//! The error responses many routes share, for the OpenAPI document: each is an `ErrorBody`, the
//! one shape `crate::error::ApiError` answers with.

use utoipa::IntoResponses;

use crate::error::ErrorBody;

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
