//! The linking rule with verification: a Google sign-in that meets an unverified password
//! account with its address is refused (409) and mails the owner a link; once the owner verifies,
//! the same sign-in links to the account.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_oidc::{self, FakeProvider};
use crate::helpers::{BACKENDS, SmtpSink, TestApp, assert_error};

#[tokio::test]
async fn a_refused_provider_sign_in_mails_a_link_and_links_once_the_owner_verifies() {
    for backend in BACKENDS {
        let provider = FakeProvider::start().await;
        let sink = SmtpSink::start().await;
        let (issuer, configure) = (provider.issuer.clone(), sink.clone());
        let Some(app) = TestApp::builder(backend)
            .settings(move |s| {
                fake_oidc::configure(s, &issuer);
                configure.configure(s);
            })
            .try_spawn()
            .await
        else {
            continue;
        };
        let email = "owner@gmail.com";
        let account = app.signed_up(email).await;
        sink.wait_for(email, 1).await;

        let token = provider.id_token(&app, "sub-owner", email, json!({}));
        let refused = app
            .post_json("/api/auth/google", &json!({ "credential": token }))
            .await;
        assert_error(
            refused,
            StatusCode::CONFLICT,
            "AUTH_ACCOUNT_EXISTS_UNVERIFIED",
        )
        .await;
        let mails = sink.wait_for(email, 2).await;
        assert_eq!(mails[1].subject(), "Verify your FluxStudio email");
        let sent = app
            .events_where(|e| {
                e.iter().any(|e| {
                    e.metadata
                        .get("reason")
                        .is_some_and(|r| r == "provider_sign_in")
                })
            })
            .await;
        assert!(
            sent.iter()
                .any(|e| e.event_type.as_str() == "email_verification_sent"),
            "{backend:?}"
        );

        assert_eq!(
            app.verify(&mails[1].token().unwrap()).await.status(),
            StatusCode::OK
        );
        // Another token (the first one is spent: replays are refused).
        let token = provider.id_token(&app, "sub-owner", email, json!({ "jti": "second" }));
        let linked = app
            .post_json("/api/auth/google", &json!({ "credential": token }))
            .await;
        let status = linked.status();
        let linked: Value = linked.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{backend:?} {linked}");
        assert_eq!(linked["user"]["id"], account["user"]["id"]);
        assert_eq!(linked["isNewUser"], false);
    }
}
