//! Change-password: a wrong current password is a 400 that counts toward the lockout; success
//! ends the other sessions and keeps the caller's.

use reqwest::StatusCode;

use super::{NEW_PASSWORD, OLD_PASSWORD, app_with_sink};
use flux_auth::config::Switch;
use secrecy::SecretString;

use crate::helpers::{BACKENDS, assert_error, redis_available, redis_url, unique_email};

#[tokio::test]
async fn a_wrong_current_password_is_400_and_counts_toward_the_lockout() {
    for backend in BACKENDS {
        if !redis_available().await {
            return;
        }
        let Some((app, _sink)) = super::app_with_sink_and(backend, move |s| {
            s.rate_limits = Switch::On;
            s.redis_url = Some(SecretString::from(redis_url()));
            s.lockout_threshold = 3;
        })
        .await
        else {
            continue;
        };
        let email = unique_email();
        let caller = app.signed_up(&email).await;
        let access = caller["accessToken"].as_str().unwrap();
        for _ in 0..3 {
            let wrong = app
                .change_password(access, "not my password at all", NEW_PASSWORD)
                .await;
            // 400, not 401: the web app signs the user out on a 401.
            assert_error(wrong, StatusCode::BAD_REQUEST, "AUTH_INVALID_PASSWORD").await;
        }
        assert_eq!(app.me(access).await.status(), StatusCode::OK);
        let failed = app.events_of("change_password_failed").await;
        assert_eq!(failed[0].metadata["reason"], "wrong_password");
        assert!(
            !app.events_of("account_locked").await.is_empty(),
            "{backend:?}"
        );
        // Locked now: even the right password is refused, by login and by change-password.
        assert_error(
            app.login(&email, OLD_PASSWORD).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_INVALID_CREDENTIALS",
        )
        .await;
        assert_error(
            app.change_password(access, OLD_PASSWORD, NEW_PASSWORD)
                .await,
            StatusCode::BAD_REQUEST,
            "AUTH_INVALID_PASSWORD",
        )
        .await;
    }
}

#[tokio::test]
async fn a_change_ends_the_other_sessions_and_keeps_the_callers() {
    for backend in BACKENDS {
        let Some((app, sink)) = app_with_sink(backend).await else {
            continue;
        };
        let email = unique_email();
        let other = app.signed_up(&email).await;
        let caller = app.logged_in(&email).await;
        let access = caller["accessToken"].as_str().unwrap();
        let changed = app
            .change_password(access, OLD_PASSWORD, NEW_PASSWORD)
            .await;
        assert_eq!(changed.status(), StatusCode::OK, "{backend:?}");
        assert_eq!(app.me(access).await.status(), StatusCode::OK);
        let refreshed = app.refresh(caller["refreshToken"].as_str().unwrap()).await;
        assert_eq!(refreshed.status(), StatusCode::OK);
        assert_eq!(
            app.me(other["accessToken"].as_str().unwrap())
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            app.refresh(other["refreshToken"].as_str().unwrap())
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            app.login(&email, NEW_PASSWORD).await.status(),
            StatusCode::OK
        );
        let mails = sink.wait_for(&email, 2).await;
        assert!(
            mails
                .iter()
                .any(|m| m.subject() == "Your FluxStudio password was changed")
        );
        assert_eq!(app.events_of("password_changed").await.len(), 1);
    }
}

#[tokio::test]
async fn change_password_policy_errors_name_the_new_password() {
    for backend in BACKENDS {
        let Some((app, _sink)) = app_with_sink(backend).await else {
            continue;
        };
        let email = unique_email();
        let caller = app.signed_up(&email).await;
        let access = caller["accessToken"].as_str().unwrap();
        let body = assert_error(
            app.change_password(access, OLD_PASSWORD, "short").await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(body["field"], "newPassword");
        assert_eq!(
            app.login(&email, OLD_PASSWORD).await.status(),
            StatusCode::OK
        );
        let unauthenticated = app
            .post_json(
                "/api/auth/change-password",
                &serde_json::json!({ "currentPassword": OLD_PASSWORD, "newPassword": NEW_PASSWORD }),
            )
            .await;
        assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    }
}
