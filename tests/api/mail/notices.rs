//! Notices: mail that tells the owner something changed on their account, with nothing to act on.

use reqwest::StatusCode;
use serde_json::json;

use flux_auth::config::Switch;

use crate::anomaly::{fired, login_from, rules_app};
use crate::helpers::*;
use crate::two_factor::{code_now, enable, with_totp_key};

#[tokio::test]
async fn turning_two_factor_on_and_off_mails_the_owner_a_notice_on_both_stores() {
    for backend in BACKENDS {
        let Some((app, sink)) = super::app_with_sink_and(backend, move |s| {
            with_totp_key(s);
        })
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

#[tokio::test]
async fn a_sign_in_from_a_new_device_mails_the_owner_what_where_and_when_unless_switched_off() {
    for backend in BACKENDS {
        for notice in [Switch::On, Switch::Off] {
            let sink = SmtpSink::start().await;
            let configure = sink.clone();
            let Some(app) = rules_app(backend, move |s| {
                configure.configure(s);
                s.anomaly_new_device_login = Switch::On;
                s.new_device_notice = notice;
            })
            .await
            else {
                return;
            };
            let email = unique_email();
            app.signed_up(&email).await;
            sink.wait_for(&email, 1).await;
            // The first device a user signs in from is known, not new.
            let first = login_from(&app, "", UA, &email, PASSWORD).await;
            assert_eq!(first.status(), StatusCode::OK);
            let phone = "FluxStudioTestPhone/1.0";
            let signed_in = login_from(&app, "", phone, &email, PASSWORD).await;
            assert_eq!(signed_in.status(), StatusCode::OK);
            // The notice is queued before the rule's event is recorded.
            assert_eq!(fired(&app, "new_device_login").await.len(), 1);
            // A later message to the same address: by the time it arrives, so has the notice.
            let forgot = app
                .post_json("/api/auth/forgot-password", &json!({ "email": email }))
                .await;
            assert_eq!(forgot.status(), StatusCode::OK);
            let expected = if notice == Switch::On { 3 } else { 2 };
            let mail = sink.wait_for(&email, expected).await;
            let notices: Vec<_> = mail
                .iter()
                .filter(|m| m.subject() == "New sign-in to your FluxStudio account")
                .collect();
            if notice == Switch::Off {
                assert!(notices.is_empty(), "{backend:?}: switched off");
                continue;
            }
            assert_eq!(notices.len(), 1, "{backend:?}");
            let text = notices[0].text();
            assert!(text.contains(&format!("({phone})")), "{backend:?}: {text}");
            assert!(text.contains("Address: 127.0.0.1"), "{backend:?}: {text}");
            assert!(text.contains(" UTC"), "{backend:?}: {text}");
            assert!(
                notices[0].token().is_none(),
                "a notice carries no link to act on"
            );
        }
    }
}
