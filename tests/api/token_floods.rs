//! A flood of bad bearer tokens from one address: past a threshold its refusals are summarised in
//! one event per window instead of one each, and past the per-address limit they are answered 429.
//! A valid token from the same address is neither counted nor refused. Events stay small whatever
//! the user agent.

use std::time::Duration;

use flux_auth::security_log::SecurityEvent;
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use serde_json::Value;

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
