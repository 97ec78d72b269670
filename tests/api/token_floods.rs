//! A flood of bad bearer tokens from one address: past a threshold its refusals are summarised in
//! one event per window instead of one each, and past the per-address limit they are answered 429.
//! A valid token from the same address is neither counted nor refused, and neither is one the
//! service signed that is expired or revoked: its holder gets the 401 that makes a client refresh.
//! Refusals that name a user are recorded with it, however much junk came first. Events stay small
//! whatever the user agent.

use std::time::Duration;

use flux_auth::security_log::SecurityEvent;
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

use crate::helpers::*;

const CANARY: &str = "flood-canary-token-7c1e0b";
const THRESHOLD: u32 = 5;
/// Per minute: one more refusal is allowed every 6 s, far longer than the flood takes.
const LIMIT: u32 = 10;
const FLOOD: usize = 100;

/// A 2 KB user agent of characters the log escapes (NEL, a C1 control, 2 bytes each on the wire):
/// escaped one by one it would be 6 KB in every event.
fn hostile_user_agent() -> HeaderValue {
    HeaderValue::from_bytes("\u{85}".repeat(1024).as_bytes()).unwrap()
}

async fn me_with(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    app.client
        .get(app.url("/api/auth/me"))
        .header("user-agent", hostile_user_agent())
        .header("x-request-id", id)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

fn is_summary(e: &SecurityEvent) -> bool {
    e.metadata.get("summary") == Some(&Value::Bool(true))
}

/// On the file store with in-process limits, and on Postgres with the limits in Redis.
#[tokio::test]
async fn a_bad_token_flood_is_summarised_and_limited_per_address_on_both_stores() {
    for backend in BACKENDS {
        let redis = backend == Backend::Postgres;
        if redis && !redis_available().await {
            return;
        }
        let Some(app) = TestApp::builder(backend)
            .settings(move |s| {
                s.rate_limits = flux_auth::config::Switch::On;
                if redis {
                    s.redis_url = Some(redis_url().into());
                }
                s.token_failure_log_threshold = THRESHOLD;
                s.token_failure_log_window_secs = 60;
                s.bearer_failure_limit_per_ip = LIMIT;
            })
            .try_spawn()
            .await
        else {
            return;
        };
        let valid = app.signed_up(&unique_email()).await["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        // Valid tokens first: if they were counted, the limit would be reached sooner below.
        for i in 0..50 {
            let response = me_with(&app, &valid, &format!("valid-{i}")).await;
            assert_eq!(response.status(), StatusCode::OK);
        }

        let mut statuses = Vec::new();
        for i in 0..FLOOD {
            let response = me_with(&app, CANARY, &format!("flood-{i}")).await;
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                assert!(response.headers().contains_key("retry-after"));
                let body = assert_error(response, status, "RATE_LIMITED").await;
                assert!(body["retryAfter"].as_u64() >= Some(1), "{body}");
            }
            statuses.push(status);
            // Over the limit, a valid token from the same address still works.
            if i == FLOOD - 1 {
                assert_eq!(
                    me_with(&app, &valid, "valid-late").await.status(),
                    StatusCode::OK
                );
            }
        }
        let refused = statuses
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count();
        assert_eq!(refused, LIMIT as usize, "{backend:?}: 401 up to the limit");
        assert!(
            statuses[LIMIT as usize..]
                .iter()
                .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
            "{backend:?}: then 429"
        );

        // The window ends: one summary stands for everything past the threshold.
        app.clock().advance(Duration::from_secs(61));
        let events = app.events_where(|e| e.iter().any(is_summary)).await;
        let of_flood: Vec<&SecurityEvent> = events
            .iter()
            .filter(|e| {
                e.metadata
                    .get("requestId")
                    .and_then(Value::as_str)
                    .is_some_and(|id| id.starts_with("flood-"))
            })
            .collect();
        assert_eq!(
            of_flood.len(),
            THRESHOLD as usize,
            "{backend:?}: one by one up to the threshold"
        );
        let summaries: Vec<&SecurityEvent> = events.iter().filter(|e| is_summary(e)).collect();
        assert_eq!(summaries.len(), 1, "{backend:?}");
        let summary = summaries[0];
        assert_eq!(summary.event_type.as_str(), "token_verification_failed");
        assert_eq!(summary.ip_address.as_deref(), Some("127.0.0.1"));
        let m = &summary.metadata;
        let counted = FLOOD - THRESHOLD as usize;
        assert_eq!(m["count"], counted, "{m:?}");
        assert_eq!(
            m["reasons"]["rate_limited"],
            FLOOD - LIMIT as usize,
            "{m:?}"
        );
        let first = m["firstAt"].as_str().unwrap();
        let last = m["lastAt"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(first).unwrap()
                <= chrono::DateTime::parse_from_rfc3339(last).unwrap()
        );
        assert_eq!(summary.user_agent, None);

        // No token material anywhere, and the user agent bounded in every event.
        let text = serde_json::to_string(&events).unwrap();
        assert!(
            !text.contains(CANARY),
            "{backend:?}: the token reached an event"
        );
        for event in &events {
            let ua = event.user_agent.as_deref().unwrap_or_default();
            assert!(
                ua.chars().count() <= 512 + "…[truncated]".chars().count(),
                "{} characters",
                ua.chars().count()
            );
        }
    }
}

/// `token` as the service would have issued it 20 minutes ago: its claims and header, signed with
/// the service's key, expired 5 minutes ago.
fn expired_copy(token: &str) -> String {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let mut claims = jwt_claims(token);
    let now = chrono::Utc::now().timestamp();
    claims["iat"] = json!(now - 1200);
    claims["exp"] = json!(now - 300);
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// An address over its limit of refused tokens (one client behind a shared NAT address sending
/// junk): a neighbour whose access token expired still gets 401 `AUTH_TOKEN_EXPIRED`, however
/// often it presents it, refreshes, and goes on; a revoked token gets its 401 too. Junk from the
/// address is still answered 429. On the file store with in-process limits, and on Postgres with
/// the limits in Redis.
#[tokio::test]
async fn an_expired_token_from_an_address_over_the_limit_gets_401_and_its_client_refreshes_on_both_stores()
 {
    for backend in BACKENDS {
        let redis = backend == Backend::Postgres;
        if redis && !redis_available().await {
            return;
        }
        let Some(app) = TestApp::builder(backend)
            .settings(move |s| {
                s.rate_limits = flux_auth::config::Switch::On;
                if redis {
                    s.redis_url = Some(redis_url().into());
                }
                s.bearer_failure_limit_per_ip = LIMIT;
            })
            .try_spawn()
            .await
        else {
            return;
        };
        let signed_up = app.signed_up(&unique_email()).await;
        let access = signed_up["accessToken"].as_str().unwrap().to_owned();
        let refresh = signed_up["refreshToken"].as_str().unwrap().to_owned();
        let expired = expired_copy(&access);

        // The junk puts the address over its limit.
        for i in 0..=LIMIT {
            let response = me_with(&app, CANARY, &format!("junk-{i}")).await;
            let expected = if i < LIMIT {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::TOO_MANY_REQUESTS
            };
            assert_eq!(response.status(), expected, "{backend:?}: junk {i}");
        }

        // More often than the limit: an expired token is never counted nor refused by it.
        for _ in 0..2 * LIMIT {
            let response = app.me(&expired).await;
            assert_error(response, StatusCode::UNAUTHORIZED, "AUTH_TOKEN_EXPIRED").await;
        }
        let refreshed = app.refresh(&refresh).await;
        assert_eq!(refreshed.status(), StatusCode::OK, "{backend:?}");
        let refreshed: Value = refreshed.json().await.unwrap();
        let fresh = refreshed["accessToken"].as_str().unwrap().to_owned();
        assert_eq!(app.me(&fresh).await.status(), StatusCode::OK, "{backend:?}");

        // A revoked token (logged out) is one the service signed too: 401, not 429.
        assert_eq!(app.logout(&fresh).await.status(), StatusCode::OK);
        for _ in 0..LIMIT {
            assert_error(
                app.me(&fresh).await,
                StatusCode::UNAUTHORIZED,
                "AUTH_TOKEN_INVALID",
            )
            .await;
        }

        // The junk is still limited.
        let response = me_with(&app, CANARY, "junk-late").await;
        assert_eq!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "{backend:?}"
        );
    }
}

async fn refresh_as(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/auth/refresh"))
        .header("user-agent", UA)
        .header("x-request-id", id)
        .json(&json!({ "refreshToken": token }))
        .send()
        .await
        .unwrap()
}

fn of_requests<'a>(events: &'a [SecurityEvent], prefix: &str) -> Vec<&'a SecurityEvent> {
    events
        .iter()
        .filter(|e| {
            e.metadata
                .get("requestId")
                .and_then(Value::as_str)
                .is_some_and(|id| id.starts_with(prefix))
        })
        .collect()
}

/// Junk past the threshold first, then replays of a signed-out user's access and refresh tokens
/// (what a thief holding them would send): the first replay of each is recorded on its own with
/// the user and session, and the summary counts the rest under that user and session, not as
/// anonymous reasons.
#[tokio::test]
async fn replays_of_revoked_tokens_after_a_junk_flood_are_recorded_with_their_user_on_both_stores()
{
    for backend in BACKENDS {
        let Some(app) = TestApp::builder(backend)
            .settings(move |s| {
                s.token_failure_log_threshold = THRESHOLD;
                s.token_failure_log_window_secs = 60;
            })
            .try_spawn()
            .await
        else {
            return;
        };
        let signed_up = app.signed_up(&unique_email()).await;
        let user_id = signed_up["user"]["id"].as_str().unwrap().to_owned();
        let access = signed_up["accessToken"].as_str().unwrap().to_owned();
        let refresh = signed_up["refreshToken"].as_str().unwrap().to_owned();
        let session = session_of(&access).to_string();
        assert_eq!(app.logout(&access).await.status(), StatusCode::OK);

        for i in 0..4 * THRESHOLD {
            let response = me_with(&app, CANARY, &format!("junk-{i}")).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        for i in 0..4 {
            let response = me_with(&app, &access, &format!("replay-access-{i}")).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        for i in 0..3 {
            let response = refresh_as(&app, &refresh, &format!("replay-refresh-{i}")).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }

        app.clock().advance(Duration::from_secs(61));
        let events = app.events_where(|e| e.iter().any(is_summary)).await;
        for (prefix, kind) in [("replay-access-", "access"), ("replay-refresh-", "refresh")] {
            let recorded = of_requests(&events, prefix);
            assert_eq!(recorded.len(), 1, "{backend:?} {prefix}: {recorded:?}");
            let event = recorded[0];
            assert_eq!(event.event_type.as_str(), "token_verification_failed");
            assert_eq!(event.metadata["tokenKind"], kind);
            assert_eq!(
                event.user_id.as_deref(),
                Some(user_id.as_str()),
                "{event:?}"
            );
            assert_eq!(event.metadata["sessionId"], session.as_str(), "{event:?}");
        }
        let summaries: Vec<&SecurityEvent> = events.iter().filter(|e| is_summary(e)).collect();
        assert_eq!(summaries.len(), 1, "{backend:?}");
        let m = &summaries[0].metadata;
        let named = m["named"].as_array().unwrap();
        let mut repeats: Vec<u64> = named
            .iter()
            .map(|n| {
                assert_eq!(n["userId"], user_id.as_str(), "{m:?}");
                assert_eq!(n["sessionId"], session.as_str(), "{m:?}");
                n["count"].as_u64().unwrap()
            })
            .collect();
        repeats.sort_unstable();
        assert_eq!(repeats, [2, 3], "{backend:?}: {m:?}");
        assert_eq!(m["count"], 3 * THRESHOLD as u64 + 5, "{m:?}");
    }
}
