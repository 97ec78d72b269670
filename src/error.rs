//! `ApiError`: the one mapping from a failure to a status code and the Error JSON of docs/API.md.
//!
//! Handlers and extractors return `ApiError`; the service layer returns `AuthError`, which converts
//! here. Internal causes are logged by the error-envelope middleware (inside the request span,
//! with the request id) and never reach a body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed on {field}: {message}")]
    Validation {
        field: &'static str,
        message: String,
    },
    #[error("bad request: {message}")]
    BadRequest { code: &'static str, message: String },
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("unauthorized: {code}")]
    Unauthorized {
        code: &'static str,
        message: &'static str,
    },
    #[error("forbidden")]
    Forbidden,
    /// 403 with its own code.
    #[error("refused: {code}")]
    Refused {
        code: &'static str,
        message: &'static str,
    },
    #[error("not found: {message}")]
    NotFound {
        code: &'static str,
        message: &'static str,
    },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("conflict: {code}")]
    Conflict {
        code: &'static str,
        message: &'static str,
    },
    #[error("payload too large")]
    PayloadTooLarge,
    /// What would be stored is over its bound (413), though the body itself was accepted.
    #[error("too large to store: {code}")]
    TooLargeToStore {
        code: &'static str,
        message: &'static str,
    },
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("rate limited for {retry_after}s")]
    RateLimited {
        retry_after: u64,
        limit: u32,
        window_secs: u64,
    },
    #[error("not implemented")]
    NotImplemented { message: &'static str },
    #[error("service unavailable")]
    Unavailable { retry_after: u64 },
    /// A feature that is not configured, or whose upstream (an OpenID provider) does not answer:
    /// 503 with a message that says which.
    #[error("feature unavailable: {code}")]
    FeatureUnavailable {
        code: &'static str,
        message: &'static str,
        retry_after: Option<u64>,
    },
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// The Error JSON of docs/API.md. `requestId` is filled in by the error-envelope middleware.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(title = "Error")]
pub struct ErrorBody {
    /// Always false.
    pub success: bool,
    /// What the frontend shows.
    #[schema(example = "Invalid email or password")]
    pub message: String,
    /// The same text as `message`, for clients that read this key.
    pub error: String,
    /// A stable machine code; each response below says which codes it can carry.
    #[schema(example = "AUTH_INVALID_CREDENTIALS")]
    pub code: &'static str,
    /// The body field at fault, on validation errors only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    /// Seconds to wait, on 429s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// The request id, also in the `X-Request-Id` response header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ErrorBody {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            success: false,
            error: message.clone(),
            message,
            code,
            field: None,
            retry_after: None,
            request_id: None,
        }
    }
}

/// Marks a response whose body is an [`ErrorBody`]; the envelope middleware adds the request id.
#[derive(Debug, Clone)]
pub struct ErrorMarker {
    pub body: ErrorBody,
    /// The internal cause of a 5xx, for the log only.
    pub cause: Option<String>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation { .. } | Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::InvalidCredentials | Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::Refused { .. } => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge | Self::TooLargeToStore { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::FeatureUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> ErrorBody {
        match self {
            Self::Validation { field, message } => ErrorBody {
                field: Some(field),
                ..ErrorBody::new("VALIDATION_ERROR", message.clone())
            },
            Self::BadRequest { code, message } => ErrorBody::new(code, message.clone()),
            Self::InvalidCredentials => {
                ErrorBody::new("AUTH_INVALID_CREDENTIALS", "Invalid email or password")
            }
            Self::Unauthorized { code, message } => ErrorBody::new(code, *message),
            Self::Forbidden => ErrorBody::new("FORBIDDEN", "You do not have permission to do this"),
            Self::Refused { code, message } => ErrorBody::new(code, *message),
            Self::NotFound { code, message } => ErrorBody::new(code, *message),
            Self::MethodNotAllowed => {
                ErrorBody::new("METHOD_NOT_ALLOWED", "Method not allowed on this route")
            }
            Self::Conflict { code, message } => ErrorBody::new(code, *message),
            Self::PayloadTooLarge => {
                ErrorBody::new("PAYLOAD_TOO_LARGE", "Request body is too large")
            }
            Self::TooLargeToStore { code, message } => ErrorBody::new(code, *message),
            Self::UnsupportedMediaType => ErrorBody::new(
                "UNSUPPORTED_MEDIA_TYPE",
                "Content-Type must be application/json",
            ),
            Self::RateLimited { retry_after, .. } => ErrorBody {
                retry_after: Some(*retry_after),
                ..ErrorBody::new("RATE_LIMITED", "Too many requests, please try again later")
            },
            Self::NotImplemented { message } => ErrorBody::new("NOT_IMPLEMENTED", *message),
            Self::Unavailable { .. } => ErrorBody::new(
                "SERVICE_UNAVAILABLE",
                "Service temporarily unavailable, please try again shortly",
            ),
            Self::FeatureUnavailable { code, message, .. } => ErrorBody::new(code, *message),
            Self::Internal(_) => {
                ErrorBody::new("INTERNAL_ERROR", "Something went wrong, please try again")
            }
        }
    }

    pub fn unauthorized() -> Self {
        Self::Unauthorized {
            code: "AUTH_TOKEN_INVALID",
            message: "Invalid or expired token",
        }
    }

    pub fn missing_token() -> Self {
        Self::Unauthorized {
            code: "AUTH_TOKEN_MISSING",
            message: "Access token required",
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::Validation {
            field: e.field,
            message: e.message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.body();
        let cause = match &self {
            Self::Internal(e) => Some(format!("{e:#}")),
            _ => None,
        };
        let mut response = (status, axum::Json(&body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::InvalidCredentials | Self::Unauthorized { .. } => {
                let value = match &self {
                    Self::Unauthorized {
                        code: "AUTH_TOKEN_INVALID" | "AUTH_TOKEN_EXPIRED",
                        ..
                    } => HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                    _ => HeaderValue::from_static("Bearer"),
                };
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
            Self::RateLimited {
                retry_after,
                limit,
                window_secs,
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
                // IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers).
                headers.insert("ratelimit-limit", HeaderValue::from(*limit));
                headers.insert("ratelimit-remaining", HeaderValue::from(0));
                headers.insert("ratelimit-reset", HeaderValue::from(*retry_after));
                if let Ok(policy) = HeaderValue::from_str(&format!("{limit};w={window_secs}")) {
                    headers.insert("ratelimit-policy", policy);
                }
            }
            Self::Unavailable { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Self::FeatureUnavailable {
                retry_after: Some(retry_after),
                ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        response
            .extensions_mut()
            .insert(ErrorMarker { body, cause });
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError as A;
        use crate::auth::tokens::TokenError;
        match e {
            A::Validation(v) => v.into(),
            A::EmailExists => Self::Conflict {
                code: "AUTH_EMAIL_EXISTS",
                message: "An account with this email already exists",
            },
            A::InvalidCredentials => Self::InvalidCredentials,
            A::AccessToken(TokenError::Expired) => Self::Unauthorized {
                code: "AUTH_TOKEN_EXPIRED",
                message: "Access token expired",
            },
            A::AccessToken(TokenError::Invalid(_)) => Self::unauthorized(),
            A::RefreshInvalid { expired: true } => Self::Unauthorized {
                code: "AUTH_REFRESH_EXPIRED",
                message: "Session expired, please sign in again",
            },
            A::RefreshInvalid { expired: false } => Self::Unauthorized {
                code: "AUTH_REFRESH_INVALID",
                message: "Invalid or expired refresh token",
            },
            A::RefreshReused => Self::Unauthorized {
                code: "AUTH_REFRESH_REUSED",
                message: "This session was ended for your security, please sign in again",
            },
            A::RateLimited(e) => Self::RateLimited {
                retry_after: e.retry_after_secs,
                limit: e.max,
                window_secs: e.window_secs,
            },
            A::SessionNotFound => Self::NotFound {
                code: "SESSION_NOT_FOUND",
                message: "Session not found",
            },
            A::InvalidSettings(why) => Self::BadRequest {
                code: "AUTH_INVALID_SETTINGS",
                message: format!("Invalid settings: {why}"),
            },
            A::SettingsTooLarge => Self::TooLargeToStore {
                code: "AUTH_SETTINGS_TOO_LARGE",
                message: "Settings are too large: at most 4 KiB are kept",
            },
            A::TokenRefused { code, message } => Self::BadRequest {
                code,
                message: message.into(),
            },
            A::WrongCurrentPassword => Self::BadRequest {
                code: "AUTH_INVALID_PASSWORD",
                message: "Current password is incorrect".into(),
            },
            A::NoPassword => Self::BadRequest {
                code: "AUTH_NO_PASSWORD",
                message: "This account has no password. Use \"Forgot password\" to set one".into(),
            },
            A::EmailNotVerified => Self::Refused {
                code: "AUTH_EMAIL_NOT_VERIFIED",
                message: "Please verify your email address first. \
                    We can send the link again (resend-verification)",
            },
            A::Unavailable(why) => {
                tracing::warn!(reason = %why, "store unavailable; answering 503");
                Self::Unavailable { retry_after: 5 }
            }
            A::TwoFactorUnavailable(why) => {
                tracing::warn!(
                    reason = why,
                    "two-factor sign-in unavailable; answering 503"
                );
                Self::FeatureUnavailable {
                    code: "TWO_FACTOR_SERVICE_UNAVAILABLE",
                    message: "Two-factor authentication is temporarily unavailable",
                    retry_after: None,
                }
            }
            A::TwoFactorAlreadyEnabled => Self::Conflict {
                code: "TWO_FACTOR_ALREADY_ENABLED",
                message: "Two-factor authentication is already enabled",
            },
            A::TwoFactorNotSetUp => Self::BadRequest {
                code: "TWO_FACTOR_NOT_SET_UP",
                message: "Start two-factor setup first".into(),
            },
            A::TwoFactorNotEnabled => Self::BadRequest {
                code: "TWO_FACTOR_NOT_ENABLED",
                message: "Two-factor authentication is not enabled".into(),
            },
            A::TwoFactorInvalidCode => Self::BadRequest {
                code: "TWO_FACTOR_INVALID_CODE",
                message: "Invalid verification code".into(),
            },
            A::TwoFactorTokenExpired => Self::Unauthorized {
                code: "TWO_FACTOR_TOKEN_EXPIRED",
                message: "Your sign-in has expired, please sign in again",
            },
            A::EventNotKept(e) => e.into(),
            A::Internal(e) => Self::Internal(e),
        }
    }
}

impl From<crate::security_log::NotKept> for ApiError {
    fn from(_: crate::security_log::NotKept) -> Self {
        tracing::warn!(
            "security event not kept (database and spool both refused it); answering 503"
        );
        Self::Unavailable { retry_after: 5 }
    }
}

impl From<crate::auth::oidc::GoogleError> for ApiError {
    fn from(e: crate::auth::oidc::GoogleError) -> Self {
        use crate::auth::oidc::{GoogleError as G, Rejection as R};
        let unauthorized = |code, message| Self::Unauthorized { code, message };
        match e {
            G::NotConfigured(message) => Self::FeatureUnavailable {
                code: "AUTH_GOOGLE_NOT_CONFIGURED",
                message,
                retry_after: None,
            },
            // The exact reason goes to the oauth_failed event; the client learns the class.
            G::Rejected(R::Expired) => unauthorized(
                "AUTH_GOOGLE_EXPIRED",
                "Google sign-in expired, please try again",
            ),
            G::Rejected(R::EmailNotVerified | R::EmailMissing) => unauthorized(
                "AUTH_GOOGLE_EMAIL_UNVERIFIED",
                "Your Google account has no verified email address",
            ),
            G::Rejected(R::HostedDomainMismatch) => unauthorized(
                "AUTH_GOOGLE_DOMAIN_NOT_ALLOWED",
                "Please sign in with your organisation's Google account",
            ),
            G::Rejected(_) => unauthorized("AUTH_GOOGLE_INVALID", "Invalid Google credential"),
            G::Denied => unauthorized(
                "AUTH_GOOGLE_DENIED",
                "Google sign-in was cancelled or refused",
            ),
            G::StateInvalid | G::StateUnbound => Self::BadRequest {
                code: "AUTH_OAUTH_STATE_INVALID",
                message: "This sign-in link has expired or was already used, please start again"
                    .into(),
            },
            G::MissingCode => Self::BadRequest {
                code: "AUTH_OAUTH_CODE_MISSING",
                message: "The sign-in response has no authorization code".into(),
            },
            G::Csrf(_) => Self::BadRequest {
                code: "AUTH_GOOGLE_CSRF",
                message: "Google sign-in could not be verified (g_csrf_token check failed)".into(),
            },
            G::AccountExists { .. } => Self::Conflict {
                code: "AUTH_ACCOUNT_EXISTS",
                message: "An account with this email already exists. Sign in with your password",
            },
            G::AccountUnverified { .. } => Self::Conflict {
                code: "AUTH_ACCOUNT_EXISTS_UNVERIFIED",
                message: "An account with this email already exists and its address is not verified, \
                    so Google sign-in cannot be linked to it",
            },
            G::ProviderUnavailable(_) => Self::FeatureUnavailable {
                code: "AUTH_PROVIDER_UNAVAILABLE",
                message: "Google sign-in is temporarily unavailable, please try again shortly",
                retry_after: Some(5),
            },
            G::Auth(e) => e.into(),
        }
    }
}
