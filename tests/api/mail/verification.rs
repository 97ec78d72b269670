//! Signup mails a verification link; the link verifies the address once.

use reqwest::StatusCode;

use super::app_with_sink;
use crate::helpers::{BACKENDS, assert_error, unique_email};

#[tokio::test]
async fn signup_mails_a_link_whose_token_verifies_the_address() {
    for backend in BACKENDS {
        let Some((app, sink)) = app_with_sink(backend).await else {
            continue;
        };
        let email = unique_email();
        let body = app.signed_up(&email).await;
        assert_eq!(body["emailVerified"], false, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(body["user"]["emailVerified"], false);
        let mail = sink.wait_for(&email, 1).await.remove(0);
        assert_eq!(mail.subject(), "Verify your FluxStudio email");
        assert!(mail.data.contains("/verify-email?token="), "{}", mail.data);
        let token = mail.token().expect("a token in the link");
        assert_eq!(token.len(), 64);

        let verified = app.verify(&token).await;
        assert_eq!(verified.status(), StatusCode::OK);
        let verified: serde_json::Value = verified.json().await.unwrap();
        assert_eq!(verified["verified"], true);
        let me: serde_json::Value = app
            .me(body["accessToken"].as_str().unwrap())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(me["emailVerified"], true, "{backend:?}");

        // Single use: the same link again is refused.
        assert_error(
            app.verify(&token).await,
            StatusCode::BAD_REQUEST,
            "AUTH_INVALID_VERIFICATION_TOKEN",
        )
        .await;
        let sent = app.events_of("email_verification_sent").await;
        assert_eq!(sent[0].metadata["reason"], "signup", "{backend:?}");
        let done = app.events_of("email_verified").await;
        assert_eq!(done.len(), 1, "{backend:?}");
        let events = serde_json::to_string(&app.events().await).unwrap();
        assert!(
            !events.contains(&token),
            "a token in the events ({backend:?})"
        );
    }
}

#[tokio::test]
async fn an_expired_verification_link_is_refused_as_expired() {
    for backend in BACKENDS {
        let Some((app, sink)) = app_with_sink(backend).await else {
            continue;
        };
        let email = unique_email();
        app.signed_up(&email).await;
        let token = sink.wait_for(&email, 1).await[0].token().unwrap();
        app.clock()
            .advance(std::time::Duration::from_secs(25 * 3600));
        assert_error(
            app.verify(&token).await,
            StatusCode::BAD_REQUEST,
            "AUTH_VERIFICATION_EXPIRED",
        )
        .await;
    }
}

#[tokio::test]
async fn resend_answers_alike_for_every_address_and_mails_only_the_unverified() {
    for backend in BACKENDS {
        let Some((app, sink)) = app_with_sink(backend).await else {
            continue;
        };
        let email = unique_email();
        app.signed_up(&email).await;
        sink.wait_for(&email, 1).await;
        let unknown = unique_email();
        let a = app
            .post_json(
                "/api/auth/resend-verification",
                &serde_json::json!({ "email": email }),
            )
            .await;
        let b = app
            .post_json(
                "/api/auth/resend-verification",
                &serde_json::json!({ "email": unknown }),
            )
            .await;
        assert_eq!(a.status(), StatusCode::OK);
        assert_eq!(b.status(), StatusCode::OK);
        let (a, b): (serde_json::Value, serde_json::Value) =
            (a.json().await.unwrap(), b.json().await.unwrap());
        assert_eq!(a, b, "one body for every address");
        // Rate limits are off in tests: the second mail goes, with a new link; the first dies.
        let mails = sink.wait_for(&email, 2).await;
        let (first, second) = (mails[0].token().unwrap(), mails[1].token().unwrap());
        assert_ne!(first, second);
        assert_error(
            app.verify(&first).await,
            StatusCode::BAD_REQUEST,
            "AUTH_INVALID_VERIFICATION_TOKEN",
        )
        .await;
        assert_eq!(app.verify(&second).await.status(), StatusCode::OK);
        assert!(sink.to(&unknown).is_empty());
    }
}

#[tokio::test]
async fn required_verification_refuses_the_password_login_after_the_password_check() {
    for backend in BACKENDS {
        let Some((app, sink)) = super::app_with_sink_and(backend, move |s| {
            s.require_email_verification = true;
        })
        .await
        else {
            continue;
        };
        let email = unique_email();
        app.signed_up(&email).await;
        // A wrong password learns nothing: the usual 401.
        assert_error(
            app.login(&email, "not the password at all").await,
            StatusCode::UNAUTHORIZED,
            "AUTH_INVALID_CREDENTIALS",
        )
        .await;
        assert_error(
            app.login(&email, crate::helpers::PASSWORD).await,
            StatusCode::FORBIDDEN,
            "AUTH_EMAIL_NOT_VERIFIED",
        )
        .await;
        let token = sink.wait_for(&email, 1).await[0].token().unwrap();
        assert_eq!(app.verify(&token).await.status(), StatusCode::OK);
        assert_eq!(
            app.login(&email, crate::helpers::PASSWORD).await.status(),
            StatusCode::OK
        );
    }
}
