//! Bad input to the account routes: a clear 4xx JSON error, nothing stored, no mail.

use reqwest::StatusCode;
use serde_json::json;

use super::app_with_sink;
use crate::helpers::{BACKENDS, assert_error, unique_email};

const EMAIL_ROUTES: [&str; 2] = ["/api/auth/forgot-password", "/api/auth/resend-verification"];

#[tokio::test]
async fn email_routes_refuse_a_missing_or_malformed_address() {
    for backend in BACKENDS {
        let Some((app, sink)) = app_with_sink(backend).await else {
            continue;
        };
        for route in EMAIL_ROUTES {
            for body in [
                json!({}),
                json!({ "email": "" }),
                json!({ "email": "not-an-address" }),
                json!({ "email": 42 }),
                json!({ "email": "a\r\nBcc: x@example.com" }),
            ] {
                let response = app.post_json(route, &body).await;
                let status = response.status();
                assert!(
                    status == StatusCode::BAD_REQUEST,
                    "{route} {body}: {status}"
                );
                let error: serde_json::Value = response.json().await.unwrap();
                assert_eq!(error["success"], false);
            }
            let raw = app
                .client
                .post(app.url(route))
                .header("content-type", "application/json")
                .body("{not json")
                .send()
                .await
                .unwrap();
            assert_eq!(raw.status(), StatusCode::BAD_REQUEST, "{route}");
        }
        assert!(app.outbox().await.is_empty());
        assert!(sink.received().is_empty());
    }
}

#[tokio::test]
async fn token_routes_refuse_missing_unknown_and_oversized_tokens() {
    for backend in BACKENDS {
        let Some((app, _sink)) = app_with_sink(backend).await else {
            continue;
        };
        let body = assert_error(
            app.post_json("/api/auth/verify-email", &json!({})).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(body["field"], "token");
        for token in ["0".repeat(64), "x".repeat(10_000), "é".into()] {
            assert_error(
                app.verify(&token).await,
                StatusCode::BAD_REQUEST,
                "AUTH_INVALID_VERIFICATION_TOKEN",
            )
            .await;
            assert_error(
                app.reset(&token, "a perfectly good passphrase").await,
                StatusCode::BAD_REQUEST,
                "AUTH_INVALID_RESET_TOKEN",
            )
            .await;
        }
        let body = assert_error(
            app.post_json("/api/auth/reset-password", &json!({ "token": "abc" }))
                .await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(body["field"], "password");
        let body = assert_error(
            app.post_json("/api/auth/change-password", &json!({ "token": 1 }))
                .await,
            StatusCode::UNAUTHORIZED,
            "AUTH_TOKEN_MISSING",
        )
        .await;
        assert_eq!(body["success"], false);
    }
}

#[tokio::test]
async fn a_weak_new_password_is_refused_and_the_link_still_works() {
    for backend in BACKENDS {
        let Some((app, sink)) = app_with_sink(backend).await else {
            continue;
        };
        let email = unique_email();
        app.signed_up(&email).await;
        app.forgot(&email).await;
        let token = sink.wait_for(&email, 2).await[1].token().unwrap();
        let body = assert_error(
            app.reset(&token, "short").await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(body["field"], "password");
        assert_eq!(
            app.reset(&token, super::NEW_PASSWORD).await.status(),
            StatusCode::OK,
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn the_mail_limits_hold_per_address_and_stay_silent_per_account() {
    for backend in BACKENDS {
        if !crate::helpers::redis_available().await {
            return;
        }
        let Some((app, sink)) = super::app_with_sink_and(backend, move |s| {
            s.rate_limits = flux_auth::config::Switch::On;
            s.redis_url = Some(secrecy::SecretString::from(crate::helpers::redis_url()));
        })
        .await
        else {
            continue;
        };
        let email = unique_email();
        app.signed_up(&email).await;
        sink.wait_for(&email, 1).await;
        for _ in 0..5 {
            assert_eq!(app.forgot(&email).await.status(), StatusCode::OK);
        }
        assert_error(
            app.forgot(&email).await,
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
        )
        .await;
        // Three reset mails an hour for the account; the other two requests were answered alike.
        let requested = app
            .events_where(|e| {
                e.iter()
                    .filter(|e| e.event_type.as_str() == "password_reset_requested")
                    .count()
                    == 5
            })
            .await;
        let limited = requested
            .iter()
            .filter(|e| {
                e.metadata
                    .get("reason")
                    .is_some_and(|r| r == "account_limit")
            })
            .count();
        assert_eq!(limited, 2, "{backend:?}");
        let resets = sink.wait_for(&email, 4).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(sink.to(&email).len(), 4, "{resets:?}");
    }
}
