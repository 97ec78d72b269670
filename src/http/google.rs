//! Google sign-in routes and Sign in with Apple (`POST /api/auth/apple`, an identity token checked
//! the same way): `POST /api/auth/google` (an ID token from Google Identity Services),
//! `GET /api/auth/google/authorize` and `GET|POST /api/auth/google/callback`. Thin: extract,
//! call `auth::oidc`, shape the answer. Browser flows end with a 302 to `FRONTEND_URL` whose
//! tokens are in the URL fragment, which browsers never send to a server or in a Referer.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use url::Url;

use super::bodies::auth::AuthResponse;
use super::bodies::errors::{JsonBodyErrors, RateLimited};
use super::bodies::google::{AppleSignInBody, GisCallbackForm, GoogleSignInBody};
use super::bodies::two_factor::SignInResponse;
use super::extract::JsonBody;
use crate::auth::oidc::{CallbackParams, GoogleError, GoogleOutcome, GoogleSignIn};
use crate::auth::service::SignIn;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::security_log::event::RequestContext;
use crate::state::AppState;

fn google(state: &AppState) -> ApiResult<&GoogleSignIn> {
    state.google.as_deref().ok_or(ApiError::FeatureUnavailable {
        code: "AUTH_GOOGLE_NOT_CONFIGURED",
        message: "Google sign-in is not configured on this server (GOOGLE_CLIENT_ID is not set)",
        retry_after: None,
    })
}

#[utoipa::path(post, path = "/api/auth/google", tag = "google",
    request_body = GoogleSignInBody,
    responses(
        (status = 200, description = "Signed in; `isNewUser` says whether the account was \
            created. For a user with two-factor sign-in on: `{success, requires2FA: true, \
            tempToken}` and no session (see `/api/2fa/verify`)", body = SignInResponse),
        (status = 401, body = ErrorBody, headers(("WWW-Authenticate" = String)),
            description = "`AUTH_GOOGLE_INVALID`, `AUTH_GOOGLE_EXPIRED`, \
                `AUTH_GOOGLE_EMAIL_UNVERIFIED` or `AUTH_GOOGLE_DOMAIN_NOT_ALLOWED`"),
        (status = 409, description = "`AUTH_ACCOUNT_EXISTS`: a password account has this email \
            and Google is not authoritative for it; `AUTH_ACCOUNT_EXISTS_UNVERIFIED`: a password \
            account has this email and has not verified it", body = ErrorBody),
        (status = 503, description = "`AUTH_GOOGLE_NOT_CONFIGURED` or `AUTH_PROVIDER_UNAVAILABLE`", body = ErrorBody),
        JsonBodyErrors, RateLimited,
    ))]
pub async fn sign_in(
    State(state): State<AppState>,
    ctx: RequestContext,
    JsonBody(body): JsonBody<GoogleSignInBody>,
) -> ApiResult<Json<SignInResponse>> {
    let outcome = google(&state)?
        .sign_in(&state.auth, body.credential.as_deref(), &ctx)
        .await?;
    Ok(Json(match outcome.sign_in {
        SignIn::Session(success) => SignInResponse::Session(Box::new(AuthResponse::new(
            &success,
            state.auth.access.ttl_secs(),
            Some(outcome.is_new_user),
        ))),
        SignIn::SecondFactor { temp_token } => SignInResponse::second_factor(temp_token),
    }))
}

#[utoipa::path(post, path = "/api/auth/apple", tag = "google",
    request_body = AppleSignInBody,
    responses(
        (status = 200, description = "Signed in; `isNewUser` says whether the account was \
            created. For a user with two-factor sign-in on: `{success, requires2FA: true, \
            tempToken}` and no session (see `/api/2fa/verify`)", body = SignInResponse),
        (status = 401, body = ErrorBody, headers(("WWW-Authenticate" = String)),
            description = "`AUTH_APPLE_INVALID`: the identity token is not valid (signature, \
                issuer, audience, expiry, nonce, replay, no email)"),
        (status = 409, description = "`AUTH_ACCOUNT_EXISTS`: a password account has this email \
            and another Apple identity; `AUTH_ACCOUNT_EXISTS_UNVERIFIED`: a password account has \
            this email and has not verified it", body = ErrorBody),
        (status = 501, description = "`NOT_IMPLEMENTED`: APPLE_CLIENT_ID is not set", body = ErrorBody),
        (status = 503, description = "`AUTH_PROVIDER_UNAVAILABLE`", body = ErrorBody),
        JsonBodyErrors, RateLimited,
    ))]
pub async fn apple(
    State(state): State<AppState>,
    ctx: RequestContext,
    JsonBody(body): JsonBody<AppleSignInBody>,
) -> ApiResult<Json<SignInResponse>> {
    let apple = state.apple.as_deref().ok_or(ApiError::NotImplemented {
        message: "Sign in with Apple is not configured on this server (APPLE_CLIENT_ID is not set)",
    })?;
    let outcome = apple
        .apple_sign_in(
            &state.auth,
            body.identity_token.as_deref(),
            body.nonce.as_deref(),
            body.name(),
            &ctx,
        )
        .await
        .map_err(apple_error)?;
    Ok(Json(match outcome.sign_in {
        SignIn::Session(success) => SignInResponse::Session(Box::new(AuthResponse::new(
            &success,
            state.auth.access.ttl_secs(),
            Some(outcome.is_new_user),
        ))),
        SignIn::SecondFactor { temp_token } => SignInResponse::second_factor(temp_token),
    }))
}

/// Apple's refusals under Apple's code; the rest as for Google.
fn apple_error(e: GoogleError) -> ApiError {
    match e {
        GoogleError::Rejected(_) => ApiError::Unauthorized {
            code: "AUTH_APPLE_INVALID",
            message: "Invalid Apple identity token",
        },
        GoogleError::ProviderUnavailable(_) => ApiError::FeatureUnavailable {
            code: "AUTH_PROVIDER_UNAVAILABLE",
            message: "Sign in with Apple is temporarily unavailable, please try again shortly",
            retry_after: Some(5),
        },
        other => other.into(),
    }
}

#[utoipa::path(get, path = "/api/auth/google/authorize", tag = "google",
    responses(
        (status = 302, description = "To Google's consent page (state, nonce, PKCE S256); sets \
            the `__Host-oauth_binding` cookie that the callback requires",
            headers(("Location" = String), ("Set-Cookie" = String))),
        (status = 503, description = "`AUTH_GOOGLE_NOT_CONFIGURED` or `AUTH_PROVIDER_UNAVAILABLE`", body = ErrorBody),
    ))]
pub async fn authorize(State(state): State<AppState>, ctx: RequestContext) -> ApiResult<Response> {
    let started = google(&state)?.authorize(&state.auth, &ctx).await?;
    let mut response = found(started.url.as_str());
    let cookie = format!(
        "{BINDING_COOKIE}={}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Lax",
        started.binding,
        started.ttl.as_secs()
    );
    set_cookie(&mut response, &cookie);
    Ok(response)
}

/// The cookie that binds a code flow to the browser that started it (RFC 6749 §10.12). `__Host-`
/// makes browsers accept it only with `Secure`, `Path=/` and no `Domain`, so neither a sibling
/// subdomain nor a plain-HTTP page can plant one; `SameSite=Lax` still sends it on the provider's
/// top-level redirect back to the callback.
const BINDING_COOKIE: &str = "__Host-oauth_binding";

fn set_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

#[utoipa::path(get, path = "/api/auth/google/callback", tag = "google",
    params(
        ("state" = Option<String>, Query), ("code" = Option<String>, Query),
        ("error" = Option<String>, Query, description = "Set by Google when the user refused"),
    ),
    responses(
        (status = 302, description = "To `FRONTEND_URL`, with the AuthResponse fields in the URL \
            fragment (or `requires2FA=true&tempToken=…` for a user with two-factor sign-in on)",
            headers(("Location" = String))),
        (status = 400, description = "`AUTH_OAUTH_STATE_INVALID` (also when the browser lacks the \
            `__Host-oauth_binding` cookie of the flow it started), `AUTH_OAUTH_CODE_MISSING` or \
            `INVALID_BODY` (a repeated parameter)", body = ErrorBody),
        (status = 401, description = "`AUTH_GOOGLE_DENIED` or another `AUTH_GOOGLE_*` code", body = ErrorBody),
        (status = 409, description = "`AUTH_ACCOUNT_EXISTS` or `AUTH_ACCOUNT_EXISTS_UNVERIFIED`", body = ErrorBody),
        (status = 503, description = "`AUTH_GOOGLE_NOT_CONFIGURED` or `AUTH_PROVIDER_UNAVAILABLE`", body = ErrorBody),
    ))]
pub async fn callback(
    State(state): State<AppState>,
    ctx: RequestContext,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let google = google(&state)?;
    let mut fields = pairs(query.as_deref().unwrap_or_default().as_bytes())?;
    let params = CallbackParams {
        state: fields.remove("state"),
        code: fields.remove("code"),
        error: fields.remove("error"),
        binding: cookie(&headers, BINDING_COOKIE),
    };
    let outcome = google.callback(&state.auth, params, &ctx).await;
    let mut response = outcome
        .map_err(ApiError::from)
        .and_then(|outcome| to_frontend(&state, google, &outcome))
        .into_response();
    // The binding has served its one flow, whatever the outcome.
    set_cookie(
        &mut response,
        &format!("{BINDING_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax"),
    );
    Ok(response)
}

#[utoipa::path(post, path = "/api/auth/google/callback", tag = "google",
    request_body(content = GisCallbackForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 302, description = "To `FRONTEND_URL`, with the AuthResponse fields in the URL \
            fragment (or `requires2FA=true&tempToken=…` for a user with two-factor sign-in on)",
            headers(("Location" = String))),
        (status = 400, description = "`AUTH_GOOGLE_CSRF` (the form's `g_csrf_token` is not the \
            cookie's) or `INVALID_BODY`", body = ErrorBody),
        (status = 401, description = "An `AUTH_GOOGLE_*` code", body = ErrorBody),
        (status = 409, description = "`AUTH_ACCOUNT_EXISTS` or `AUTH_ACCOUNT_EXISTS_UNVERIFIED`", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: not a form", body = ErrorBody),
        (status = 503, description = "`AUTH_GOOGLE_NOT_CONFIGURED` or `AUTH_PROVIDER_UNAVAILABLE`", body = ErrorBody),
    ))]
/// GIS redirect mode: Google posts `credential` and `g_csrf_token` as a form, and has set the
/// `g_csrf_token` cookie to the same value.
pub async fn gis_callback(
    State(state): State<AppState>,
    ctx: RequestContext,
    FormBody(mut fields, headers): FormBody,
) -> ApiResult<Response> {
    let google = google(&state)?;
    let cookie = cookie(&headers, "g_csrf_token");
    let outcome = google
        .gis_callback(
            &state.auth,
            fields.remove("credential").as_deref(),
            fields.remove("g_csrf_token").as_deref(),
            cookie.as_deref(),
            &ctx,
        )
        .await?;
    to_frontend(&state, google, &outcome)
}

fn found(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => (StatusCode::FOUND, [(header::LOCATION, value)]).into_response(),
        Err(_) => ApiError::Internal(anyhow::anyhow!("redirect URL is not a header value"))
            .into_response(),
    }
}

/// 302 to `FRONTEND_URL#accessToken=…&refreshToken=…`: the AuthResponse fields, in the fragment;
/// or, for a user with two-factor sign-in on, `#requires2FA=true&tempToken=…`.
fn to_frontend(
    state: &AppState,
    google: &GoogleSignIn,
    outcome: &GoogleOutcome,
) -> ApiResult<Response> {
    let mut fragment = url::form_urlencoded::Serializer::new(String::new());
    match &outcome.sign_in {
        SignIn::Session(success) => {
            let body = AuthResponse::new(
                success,
                state.auth.access.ttl_secs(),
                Some(outcome.is_new_user),
            );
            fragment
                .append_pair("accessToken", &body.access_token)
                .append_pair("token", &body.token)
                .append_pair("refreshToken", &body.refresh_token)
                .append_pair("expiresIn", &body.expires_in.to_string())
                .append_pair("expiresAt", &body.expires_at.to_string())
                .append_pair("tokenType", body.token_type);
        }
        SignIn::SecondFactor { temp_token } => {
            fragment
                .append_pair("requires2FA", "true")
                .append_pair("tempToken", temp_token);
        }
    }
    let fragment = fragment
        .append_pair(
            "isNewUser",
            if outcome.is_new_user { "true" } else { "false" },
        )
        .finish();
    let mut url: Url = google.frontend_url()?.clone();
    url.set_fragment(Some(&fragment));
    Ok(found(url.as_str()))
}

/// Form or query pairs; a repeated name is refused rather than guessed at.
fn pairs(bytes: &[u8]) -> ApiResult<HashMap<String, String>> {
    let mut fields = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(bytes) {
        if fields
            .insert(name.into_owned(), value.into_owned())
            .is_some()
        {
            return Err(ApiError::BadRequest {
                code: "INVALID_BODY",
                message: "Request has a duplicate field".into(),
            });
        }
    }
    Ok(fields)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
}

/// An `application/x-www-form-urlencoded` body (415 otherwise, 413 over the body limit), with
/// the request headers.
pub struct FormBody(pub HashMap<String, String>, pub HeaderMap);

impl FromRequest<AppState> for FormBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                mime.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest {
                    code: "INVALID_BODY",
                    message: "Request body could not be read".into(),
                }
            }
        })?;
        Ok(Self(pairs(&bytes)?, headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "a=1; g_csrf_token=abc".parse().unwrap());
        headers.append(header::COOKIE, "x_g_csrf_token=no".parse().unwrap());
        assert_eq!(cookie(&headers, "g_csrf_token").as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "csrf"), None);
    }

    #[test]
    fn repeated_fields_are_refused() {
        assert!(pairs(b"state=a&state=b").is_err());
        assert_eq!(pairs(b"state=a%20b&code=c").unwrap()["state"], "a b");
    }
}
