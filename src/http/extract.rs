//! Extractors: JSON bodies with our error shape, the request context (client, request id, route)
//! and the authenticated caller. A handler's signature says what it needs.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::header::{self, HeaderMap};
use axum::http::request::Parts;
use ipnet::IpNet;
use serde::de::DeserializeOwned;

use crate::auth::service::Authenticated;
use crate::domain::ClientInfo;
use crate::error::ApiError;
use crate::http::middleware::RequestId;
use crate::security_log::event::RequestContext;
use crate::state::AppState;

/// A JSON body: 415 without a JSON content type, 413 over the body limit, 400 when malformed,
/// with a duplicate key, or with a value of the wrong type. Error text never echoes the input.
pub struct JsonBody<T>(pub T);

/// Like [`JsonBody`], but an empty body (the frontend's bodiless logout POST) is `None`.
pub struct OptionalJsonBody<T>(pub Option<T>);

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

async fn read_body(req: Request, state: &AppState) -> Result<(HeaderMap, Bytes), ApiError> {
    let headers = req.headers().clone();
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest {
                code: "INVALID_BODY",
                message: "Request body could not be read".into(),
            }
        }
    })?;
    Ok((headers, bytes))
}

/// The body fields a 400 may name.
const BODY_FIELDS: [&str; 8] = [
    "email",
    "password",
    "name",
    "userType",
    "refreshToken",
    "credential",
    "avatar",
    "settings",
];

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would accept a struct written as an array (`["a@b.c","pw"]`); bodies are objects.
    if bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[')
    {
        return Err(ApiError::BadRequest {
            code: "INVALID_BODY",
            message: "Request body must be a JSON object".into(),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // serde's messages do not name the field of a wrong type (`invalid type: integer `123``);
    // the path to the failure does.
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        body_error(e.inner(), BODY_FIELDS.into_iter().find(|f| *f == path))
    })?;
    de.end().map_err(|e| body_error(&e, None))?;
    Ok(value)
}

fn body_error(e: &serde_json::Error, field_at_path: Option<&'static str>) -> ApiError {
    use serde_json::error::Category;
    if e.classify() != Category::Data {
        return ApiError::BadRequest {
            code: "INVALID_JSON",
            message: "Request body is not valid JSON".into(),
        };
    }
    // Keep the field's name, drop the rest of serde's text (it can quote the input). A duplicate
    // is reported before its value is read, so its name is in the text, not the path.
    let text = e.to_string();
    let duplicate = text.starts_with("duplicate field");
    let field = field_at_path.or_else(|| {
        BODY_FIELDS
            .into_iter()
            .find(|f| duplicate && text.contains(&format!("`{f}`")))
    });
    let message = match (duplicate, field) {
        (true, _) => "Request body has a duplicate field".to_owned(),
        (false, Some(f)) => format!("{f} has the wrong type"),
        (false, None) => "Request body has a field of the wrong type".to_owned(),
    };
    match field {
        Some(f) => ApiError::Validation { field: f, message },
        None => ApiError::BadRequest {
            code: "INVALID_BODY",
            message,
        },
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let (_, bytes) = read_body(req, state).await?;
        Ok(Self(parse_json(&bytes)?))
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (headers, bytes) = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        if !is_json(&headers) {
            return Err(ApiError::UnsupportedMediaType);
        }
        Ok(Self(Some(parse_json(&bytes)?)))
    }
}

/// The client's address: the socket peer, unless that peer is a trusted proxy, in which case
/// `X-Forwarded-For` is read from the right, skipping further trusted proxies. The left-most
/// entries are whatever the client chose to send and are never trusted.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = canonical(peer);
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else {
            return client;
        };
        for hop in value.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    let ip = canonical(ip);
                    client = ip;
                    if !is_trusted(&ip) {
                        return ip;
                    }
                }
                Err(_) => return client,
            }
        }
    }
    client
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName, max: usize) -> Option<String> {
    headers
        .get(name)
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(max)
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
}

impl FromRequestParts<AppState> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(ctx) = parts.extensions.get::<RequestContext>() {
            return Ok(ctx.clone());
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let ip = client_ip(peer, &parts.headers, &state.settings.trusted_proxies);
        // Capped generously here; events cut further, to 512 characters, with a marker.
        let user_agent = header_text(&parts.headers, header::USER_AGENT, 2048);
        let accept_language = header_text(&parts.headers, header::ACCEPT_LANGUAGE, 256);
        let ctx = RequestContext {
            request_id: parts
                .extensions
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default(),
            route: parts
                .extensions
                .get::<MatchedPath>()
                .map(|p| {
                    super::canonical_path(p.as_str())
                        .unwrap_or(p.as_str())
                        .to_owned()
                })
                .unwrap_or_else(|| parts.uri.path().chars().take(200).collect()),
            method: parts.method.to_string(),
            client: ClientInfo::new(ip, user_agent, accept_language),
        };
        parts.extensions.insert(ctx.clone());
        Ok(ctx)
    }
}

/// The raw bearer token of the `Authorization` header. Only the header is read: a token in the
/// query string is never accepted.
pub struct BearerToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(ApiError::missing_token)?;
        let value = value.to_str().map_err(|_| ApiError::unauthorized())?;
        let (scheme, token) = value
            .trim()
            .split_once(' ')
            .ok_or_else(ApiError::unauthorized)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
            return Err(ApiError::unauthorized());
        }
        Ok(Self(token.to_owned()))
    }
}

/// The authenticated caller: a valid, unrevoked access token whose user still exists.
pub struct AuthUser(pub Authenticated);

/// An authenticated caller whose (stored, current) user type is `admin`; others get 403.
pub struct AdminUser(pub Authenticated);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let AuthUser(auth) = AuthUser::from_request_parts(parts, state).await?;
        if auth.user.user_type != crate::domain::UserType::Admin {
            return Err(ApiError::Forbidden);
        }
        Ok(Self(auth))
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let BearerToken(token) = BearerToken::from_request_parts(parts, state).await?;
        match state.auth.authenticate(&token).await {
            Ok(auth) if auth.legacy => {
                let ctx = RequestContext::from_request_parts(parts, state).await?;
                state.auth.note_legacy_use(&auth, &ctx).await;
                Ok(Self(auth))
            }
            Ok(auth) => Ok(Self(auth)),
            Err(refused) => {
                let ctx = RequestContext::from_request_parts(parts, state).await?;
                Err(state.auth.refuse(refused, &ctx).await.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_read_from_the_right_and_only_from_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 1.2.3.4, 10.0.0.2".parse().unwrap(),
        );
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &headers, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("9.9.9.9".parse().unwrap(), &headers, &trusted),
            "9.9.9.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &HeaderMap::new(), &trusted),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
