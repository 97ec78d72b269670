//! Notices: mail that tells the owner something changed on their account, with nothing to act on.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;
use crate::two_factor::{code_now, enable, with_totp_key};

#[tokio::test]
async fn turning_two_factor_on_and_off_mails_the_owner_a_notice_on_both_stores() {
    for backend in BACKENDS {
        let sink = SmtpSink::start().await;
        let configure = sink.clone();
        let Some(app) = TestApp::builder(backend)
            .settings(move |s| {
                configure.configure(s);
                with_totp_key(s);
            })
            .try_spawn()
            .await
        else {
            continue;
        };
        let email = unique_email();
        let token = app.signed_up(&email).await["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        // The verification mail of the signup comes first.
        sink.wait_for(&email, 1).await;

        let (secret, _) = enable(&app, &token).await;
        let mail = sink.wait_for(&email, 2).await;
        assert_eq!(
            mail[1].subject(),
            "Two-factor sign-in was turned on",
            "{backend:?}"
        );
        assert!(
            mail[1].token().is_none(),
            "a notice carries no link to act on"
        );

        let off = app
            .post_json_auth(
                "/api/2fa/disable",
                &token,
                &json!({ "code": code_now(&app, &secret) }),
            )
            .await;
        assert_eq!(off.status(), StatusCode::OK);
        let mail = sink.wait_for(&email, 3).await;
        assert_eq!(
            mail[2].subject(),
            "Two-factor sign-in was turned off",
            "{backend:?}"
        );
    }
}
