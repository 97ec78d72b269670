//! The anomaly rules (docs/OPERATIONS.md, "Anomaly rules"): each fires exactly once per window
//! and key at its threshold and not one below it, records its own event, and takes its action
//! (an address's logins or signups refused, lifted from the dashboard's API). Counts live in real
//! Redis under each test's key prefix; `shared.rs` runs two instances on one Redis, and one whose
//! Redis is down.

mod drill_down;
mod shared;

use flux_auth::config::{Settings, Switch};
use reqwest::{Response, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::*;

/// Every rule off but the one a test turns on (so one test's traffic fires nothing else), limits
/// on and wide, Redis shared.
pub(crate) fn quiet(s: &mut Settings) {
    s.rate_limits = Switch::On;
    s.redis_url = Some(SecretString::from(redis_url()));
    s.login_limit_per_ip = 10_000;
    s.login_limit_per_account = 10_000;
    s.signup_limit_per_ip = 10_000;
    s.ip_failure_threshold = 10_000;
    s.lockout_threshold = 100;
    s.anomaly_credential_stuffing_threshold = 0;
    s.anomaly_account_targeted_threshold = 0;
    s.anomaly_login_failure_spike_floor = 0;
    s.anomaly_signup_burst_threshold = 0;
    s.anomaly_token_theft_threshold = 0;
    s.anomaly_new_device_login = Switch::Off;
}

pub(crate) async fn rules_app(
    backend: Backend,
    tweak: impl FnOnce(&mut Settings) + 'static,
) -> Option<TestApp> {
    if !redis_available().await {
        return None;
    }
    TestApp::builder(backend)
        .settings(move |s| {
            quiet(s);
            tweak(s);
        })
        .try_spawn()
        .await
}

/// Waits until the rules have evaluated every event the app recorded (their own too).
pub(crate) async fn settled(app: &TestApp) {
    let state = &app.state;
    eventually("the anomaly rules to catch up", MIRROR_PATIENCE, || async {
        let recorded = state
            .auth
            .events
            .stats()
            .recorded
            .load(std::sync::atomic::Ordering::Relaxed);
        (state.anomalies.evaluated() >= recorded).then_some(())
    })
    .await;
}

/// How many times `rule` fired in this app (its counter).
fn fired_count(app: &TestApp, rule: &str) -> usize {
    let rule = flux_auth::anomaly::Rule::ALL
        .into_iter()
        .find(|r| r.name() == rule)
        .expect("a rule's name");
    let labels = flux_auth::metrics::RuleLabels { rule: rule.name() };
    app.state.metrics.anomalies.get_or_create(&labels).get() as usize
}

/// The events of `rule` once the rules have caught up and the log has kept what they recorded.
pub(crate) async fn fired(app: &TestApp, rule: &str) -> Vec<Value> {
    settled(app).await;
    let expected = fired_count(app, rule);
    app.events_where(|evs| evs.iter().filter(|e| e.event_type.as_str() == rule).count() >= expected)
        .await
        .into_iter()
        .filter(|e| e.event_type.as_str() == rule)
        .map(|e| serde_json::to_value(e).unwrap())
        .collect()
}

/// A login from `ip` (the app believes `X-Forwarded-For` from loopback) with `user_agent`.
pub(crate) async fn login_from(
    app: &TestApp,
    ip: &str,
    user_agent: &str,
    email: &str,
    password: &str,
) -> Response {
    let mut request = app
        .client
        .post(app.url("/api/auth/login"))
        .header("user-agent", user_agent);
    if !ip.is_empty() {
        request = request.header("x-forwarded-for", ip);
    }
    request
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
}

fn trusting_loopback(s: &mut Settings) {
    s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}

#[tokio::test]
async fn credential_stuffing_fires_once_at_its_threshold_blocks_the_address_and_lifts_from_the_dashboard()
 {
    for backend in BACKENDS {
        let Some(app) = rules_app(backend, |s| {
            trusting_loopback(s);
            s.anomaly_credential_stuffing_threshold = 3;
        })
        .await
        else {
            return;
        };
        let admin_email = unique_email();
        let admin = app.signed_up(&admin_email).await;
        let admin_token = admin["accessToken"].as_str().unwrap().to_owned();
        make_admin(&app, &admin_email).await;
        let attacker = "203.0.113.7";
        // One account twice and another: two distinct accounts, below the threshold.
        for email in ["a@victims.test", "A@victims.test", "b@victims.test"] {
            let r = login_from(&app, attacker, UA, email, "guess-one-two").await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
        assert!(
            fired(&app, "credential_stuffing_suspected")
                .await
                .is_empty()
        );
        for email in ["c@victims.test", "d@victims.test", "e@victims.test"] {
            login_from(&app, attacker, UA, email, "guess-one-two").await;
        }
        let events = fired(&app, "credential_stuffing_suspected").await;
        assert_eq!(events.len(), 1, "{backend:?}: once per window: {events:?}");
        let event = &events[0];
        assert_eq!(event["severity"], "high");
        assert_eq!(event["ip_address"], attacker);
        assert_eq!(event["metadata"]["key"], attacker);
        assert_eq!(event["metadata"]["count"], 3);
        assert_eq!(event["metadata"]["action"], "ip_blocked");
        assert_eq!(event["metadata"]["blockedForSecs"], 3600);
        assert_eq!(
            metric(
                &app,
                "flux_auth_anomalies_total{rule=\"credential_stuffing_suspected\"}"
            )
            .await,
            Some(1.0)
        );

        // The address is refused, even with the right password; another address is not.
        let blocked = login_from(&app, attacker, UA, &admin_email, PASSWORD).await;
        assert_error(blocked, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
        let elsewhere = login_from(&app, "198.51.100.1", UA, &admin_email, PASSWORD).await;
        assert_eq!(elsewhere.status(), StatusCode::OK);

        // Listed and lifted as the dashboard does.
        let listing: Value = app
            .get_auth("/api/admin/security/blocked", &admin_token)
            .await
            .json()
            .await
            .unwrap();
        let entry = listing["blocked"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["subject"] == attacker)
            .cloned()
            .expect("the blocked address is listed");
        assert_eq!(entry["type"], "ip");
        let lifted = app
            .client
            .delete(app.url(&format!(
                "/api/admin/security/blocked/{}",
                entry["key"].as_str().unwrap()
            )))
            .bearer_auth(&admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(lifted.status(), StatusCode::OK);
        let after = login_from(&app, attacker, UA, &admin_email, PASSWORD).await;
        assert_eq!(after.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn account_targeted_fires_once_when_enough_addresses_fail_one_account() {
    let Some(app) = rules_app(Backend::File, |s| {
        trusting_loopback(s);
        s.anomaly_account_targeted_threshold = 3;
    })
    .await
    else {
        return;
    };
    let email = unique_email();
    let user = app.signed_up(&email).await;
    for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.1"] {
        login_from(&app, ip, UA, &email, "wrong-password-here").await;
    }
    assert!(fired(&app, "account_targeted").await.is_empty());
    for ip in ["192.0.2.3", "192.0.2.4"] {
        login_from(&app, ip, UA, &email, "wrong-password-here").await;
    }
    let events = fired(&app, "account_targeted").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["severity"], "warning");
    assert_eq!(events[0]["metadata"]["key"], email.to_lowercase());
    assert_eq!(events[0]["user_id"], user["user"]["id"]);
    assert_eq!(events[0]["ip_address"], "192.0.2.3");
    assert_eq!(events[0]["metadata"]["action"], "none");
}

#[tokio::test]
async fn a_login_failure_spike_fires_once_over_its_floor_and_its_trailing_average() {
    let Some(app) = rules_app(Backend::File, |s| {
        s.anomaly_login_failure_spike_floor = 3;
        s.anomaly_login_failure_spike_factor = 5;
        s.anomaly_login_failure_spike_window_secs = 3600;
    })
    .await
    else {
        return;
    };
    // Into one window: the clock sits at the start of one.
    let clock = app.clock();
    let now = clock.now_ms();
    let window = 3_600_000;
    clock.advance(std::time::Duration::from_millis(
        (window - now.rem_euclid(window)) as u64,
    ));
    for _ in 0..2 {
        app.login(&unique_email(), "nobody-has-this").await;
    }
    assert!(fired(&app, "login_failure_spike").await.is_empty());
    for _ in 0..3 {
        app.login(&unique_email(), "nobody-has-this").await;
    }
    let events = fired(&app, "login_failure_spike").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["metadata"]["count"], 3);
    assert_eq!(events[0]["metadata"]["key"], "service");
    assert_eq!(events[0]["severity"], "high");
}

#[tokio::test]
async fn a_signup_burst_fires_once_and_refuses_the_address_signups_until_lifted() {
    let Some(app) = rules_app(Backend::File, |s| {
        s.anomaly_signup_burst_threshold = 3;
    })
    .await
    else {
        return;
    };
    let admin_email = unique_email();
    let admin = app.signed_up(&admin_email).await;
    let admin_token = admin["accessToken"].as_str().unwrap().to_owned();
    make_admin(&app, &admin_email).await;
    // The admin's own signup was the first; one more is two.
    app.signed_up(&unique_email()).await;
    assert!(fired(&app, "signup_burst").await.is_empty());
    app.signed_up(&unique_email()).await;
    let events = fired(&app, "signup_burst").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["metadata"]["action"], "signups_blocked");
    assert_eq!(events[0]["metadata"]["key"], "127.0.0.1");
    let refused = app.signup(&unique_email(), PASSWORD, "Bot").await;
    assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    assert_eq!(
        fired(&app, "signup_burst").await.len(),
        1,
        "not again within its window"
    );
    // Logins from the address are not refused by a signup block.
    assert_eq!(
        app.login(&admin_email, PASSWORD).await.status(),
        StatusCode::OK
    );
    let lifted = app
        .client
        .delete(app.url("/api/admin/security/blocked/signup:127.0.0.1"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), StatusCode::OK);
    assert_eq!(
        app.signup(&unique_email(), PASSWORD, "Human")
            .await
            .status(),
        StatusCode::CREATED
    );
}

/// A rotated refresh token presented again, on a session of its own.
async fn reuse_on_a_new_session(app: &TestApp, email: &str) {
    let body = app.logged_in(email).await;
    let first = body["refreshToken"].as_str().unwrap().to_owned();
    assert_eq!(app.refresh(&first).await.status(), StatusCode::OK);
    assert_eq!(app.refresh(&first).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn token_theft_fires_once_when_enough_sessions_see_their_tokens_reused() {
    for backend in BACKENDS {
        let Some(app) = rules_app(backend, |s| {
            s.anomaly_token_theft_threshold = 2;
            s.refresh_reuse_grace_secs = 0;
        })
        .await
        else {
            return;
        };
        let email = unique_email();
        app.signed_up(&email).await;
        reuse_on_a_new_session(&app, &email).await;
        app.events_of("token_reuse_detected").await;
        assert!(fired(&app, "token_theft_suspected").await.is_empty());
        reuse_on_a_new_session(&app, &email).await;
        reuse_on_a_new_session(&app, &email).await;
        let events = fired(&app, "token_theft_suspected").await;
        assert_eq!(events.len(), 1, "{backend:?}: {events:?}");
        assert_eq!(events[0]["severity"], "critical");
        assert_eq!(events[0]["metadata"]["count"], 2);
    }
}

#[tokio::test]
async fn a_sign_in_from_an_unseen_device_fires_once_per_device_on_both_stores() {
    for backend in BACKENDS {
        let Some(app) = rules_app(backend, |s| {
            s.anomaly_new_device_login = Switch::On;
            s.anomaly_known_devices_per_user = 2;
        })
        .await
        else {
            return;
        };
        let email = unique_email();
        let user = app.signed_up(&email).await;
        // The signup's device is known; so is its next sign-in.
        assert_eq!(
            login_from(&app, "", UA, &email, PASSWORD).await.status(),
            StatusCode::OK
        );
        assert!(fired(&app, "new_device_login").await.is_empty());
        let phone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Safari/604.1";
        for _ in 0..2 {
            assert_eq!(
                login_from(&app, "", phone, &email, PASSWORD).await.status(),
                StatusCode::OK
            );
        }
        let events = fired(&app, "new_device_login").await;
        assert_eq!(events.len(), 1, "{backend:?}: {events:?}");
        assert_eq!(events[0]["user_id"], user["user"]["id"]);
        assert_eq!(events[0]["severity"], "info");
        assert_eq!(events[0]["user_agent"], phone);
        // A third device pushes the oldest out (two are kept): the first one is new again.
        login_from(&app, "", "curl/8.0", &email, PASSWORD).await;
        login_from(&app, "", UA, &email, PASSWORD).await;
        assert_eq!(
            fired(&app, "new_device_login").await.len(),
            3,
            "{backend:?}"
        );
    }
}
