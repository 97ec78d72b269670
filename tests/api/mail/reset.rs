//! Forgot-password and reset-password.

use reqwest::StatusCode;
use serde_json::Value;

use super::{NEW_PASSWORD, OLD_PASSWORD, app_with_sink};
use crate::helpers::{BACKENDS, assert_error, unique_email};

#[tokio::test]
async fn a_reset_sets_the_new_password_and_ends_every_session_and_token() {
    for backend in BACKENDS {
        let Some((app, sink)) = app_with_sink(backend).await else {
            continue;
        };
        let email = unique_email();
        let first = app.signed_up(&email).await;
        let second = app.logged_in(&email).await;
        let answer = app.forgot(&email).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let mails = sink
            .wait_for(&email, 2)
            .await
            .into_iter()
            .filter(|m| m.subject() == "Reset your FluxStudio password")
            .collect::<Vec<_>>();
        assert_eq!(mails.len(), 1, "{backend:?}");
        assert!(mails[0].data.contains("/reset-password?token="));
        let token = mails[0].token().unwrap();

        let reset = app.reset(&token, NEW_PASSWORD).await;
        assert_eq!(reset.status(), StatusCode::OK, "{backend:?}");
        assert_error(
            app.login(&email, OLD_PASSWORD).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_INVALID_CREDENTIALS",
        )
        .await;
        assert_eq!(
            app.login(&email, NEW_PASSWORD).await.status(),
            StatusCode::OK
        );
        for old in [&first, &second] {
            let access = old["accessToken"].as_str().unwrap();
            assert_eq!(
                app.me(access).await.status(),
                StatusCode::UNAUTHORIZED,
                "{backend:?}"
            );
            let refresh = old["refreshToken"].as_str().unwrap();
            assert_eq!(
                app.refresh(refresh).await.status(),
                StatusCode::UNAUTHORIZED
            );
        }
        // Used once: the link is dead now.
        assert_error(
            app.reset(&token, "another fine passphrase 42").await,
            StatusCode::BAD_REQUEST,
            "AUTH_INVALID_RESET_TOKEN",
        )
        .await;
        // The change is announced to the owner.
        let notices = sink.wait_for(&email, 3).await;
        assert!(
            notices
                .iter()
                .any(|m| m.subject() == "Your FluxStudio password was changed")
        );
        let completed = app.events_of("password_reset_completed").await;
        assert_eq!(completed.len(), 1);
        let events = serde_json::to_string(&app.events().await).unwrap();
        assert!(!events.contains(&token) && !events.contains(NEW_PASSWORD));
    }
}

#[tokio::test]
async fn an_unknown_email_gets_the_same_answer_and_no_mail() {
    for backend in BACKENDS {
        let Some((app, sink)) = app_with_sink(backend).await else {
            continue;
        };
        let known = unique_email();
        app.signed_up(&known).await;
        sink.wait_for(&known, 1).await;
        let unknown = unique_email();
        let a = app.forgot(&known).await;
        let b = app.forgot(&unknown).await;
        assert_eq!(a.status(), b.status());
        let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
        assert_eq!(a, b, "one body for every address");
        sink.wait_for(&known, 2).await;
        let requested = app
            .events_where(|e| {
                e.iter()
                    .filter(|e| e.event_type.as_str() == "password_reset_requested")
                    .count()
                    == 2
            })
            .await;
        assert!(requested.iter().any(|e| {
            e.metadata
                .get("reason")
                .is_some_and(|r| r == "unknown_email")
        }));
        assert!(sink.to(&unknown).is_empty(), "{backend:?}");
    }
}

#[tokio::test]
async fn a_second_request_kills_the_first_link_and_altered_or_expired_links_are_refused() {
    for backend in BACKENDS {
        let Some((app, sink)) = app_with_sink(backend).await else {
            continue;
        };
        let email = unique_email();
        app.signed_up(&email).await;
        app.forgot(&email).await;
        let first = sink.wait_for(&email, 2).await[1].token().unwrap();
        app.forgot(&email).await;
        let second = sink.wait_for(&email, 3).await[2].token().unwrap();
        assert_ne!(first, second);
        assert_error(
            app.reset(&first, NEW_PASSWORD).await,
            StatusCode::BAD_REQUEST,
            "AUTH_INVALID_RESET_TOKEN",
        )
        .await;
        let mut altered = second.clone();
        altered.replace_range(0..1, if &second[0..1] == "a" { "b" } else { "a" });
        assert_error(
            app.reset(&altered, NEW_PASSWORD).await,
            StatusCode::BAD_REQUEST,
            "AUTH_INVALID_RESET_TOKEN",
        )
        .await;
        app.clock().advance(std::time::Duration::from_secs(3601));
        assert_error(
            app.reset(&second, NEW_PASSWORD).await,
            StatusCode::BAD_REQUEST,
            "AUTH_INVALID_RESET_TOKEN",
        )
        .await;
        assert_eq!(
            app.login(&email, OLD_PASSWORD).await.status(),
            StatusCode::OK
        );
    }
}
