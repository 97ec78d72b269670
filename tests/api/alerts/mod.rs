//! Alerts (docs/OPERATIONS.md, "Alerts") against a real webhook receiver on loopback that checks
//! every signature: a stuffing attack arrives signed, in JSON or Slack's shape; a receiver that
//! answers 500 for a while gets the alert once it is back, once; an alert given up on is an event
//! and shows in `/health`; one alert per key and window, however many sightings and instances.
//! `process.rs`: a killed service, the `alerts test` command and refused configurations.

mod process;

use std::time::Duration;

use flux_auth::config::Settings;
use reqwest::StatusCode;
use serde_json::Value;

use crate::anomaly::{login_from, quiet};
use crate::helpers::*;

const ATTACKER: &str = "203.0.113.7";

/// An app whose alerts go to `receiver`: every rule off but credential stuffing (3 accounts),
/// in-process windows (no Redis), `X-Forwarded-For` believed from loopback.
async fn alert_app(
    backend: Backend,
    receiver: &WebhookReceiver,
    tweak: impl FnOnce(&mut Settings) + 'static,
) -> Option<TestApp> {
    let receiver = receiver.clone();
    TestApp::builder(backend)
        .settings(move |s| {
            quiet(s);
            s.redis_url = None;
            s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            s.anomaly_credential_stuffing_threshold = 3;
            receiver.configure(s);
            tweak(s);
        })
        .try_spawn()
        .await
}

/// Failed logins for three accounts from `ip`: the stuffing rule's threshold.
async fn stuff(app: &TestApp, ip: &str) {
    for i in 0..3 {
        let email = format!("victim-{i}@victims.test");
        let r = login_from(app, ip, UA, &email, "guess-one-two").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
}

/// Gives a second delivery (a duplicate) the time to arrive before a test counts.
async fn let_duplicates_show() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn eventually_metric(app: &TestApp, name: &str, value: f64) {
    eventually(
        &format!("{name} at {value}"),
        Duration::from_secs(10),
        || async { (metric(app, name).await == Some(value)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_stuffing_attack_arrives_at_the_webhook_signed_with_what_the_rule_saw() {
    for backend in BACKENDS {
        let receiver = WebhookReceiver::start().await;
        let Some(app) = alert_app(backend, &receiver, |s| {
            s.public_url = Some("https://auth.example.test/".into());
        })
        .await
        else {
            continue;
        };
        stuff(&app, ATTACKER).await;
        let got = receiver.wait_for(1).await;
        let alert = &got[0];
        assert!(alert.verified, "{backend:?}: {alert:?}");
        let body = &alert.body;
        assert_eq!(body["kind"], "alert");
        assert_eq!(body["eventType"], "credential_stuffing_suspected");
        assert_eq!(body["rule"], "credential_stuffing_suspected");
        assert_eq!(body["severity"], "high");
        assert_eq!(body["key"], ATTACKER);
        assert_eq!(body["ip"], ATTACKER);
        assert_eq!(body["count"], 3);
        assert_eq!(body["threshold"], 3);
        assert_eq!(body["windowSecs"], 600);
        assert_eq!(body["action"], "ip_blocked");
        assert_eq!(body["dashboardUrl"], "https://auth.example.test/admin");
        for field in [
            "firstSeen",
            "lastSeen",
            "time",
            "instance",
            "summary",
            "eventId",
        ] {
            assert!(
                body[field].as_str().is_some_and(|v| !v.is_empty()),
                "{field}: {body}"
            );
        }
        assert_eq!(alert.alert_id.as_deref(), body["id"].as_str());
        // The signature covers the timestamp header's value and these exact bytes.
        let signature = alert.signature.clone().unwrap();
        let t = alert.timestamp.clone().unwrap();
        assert!(signature.starts_with(&format!("t={t},v1=")), "{signature}");
        let now: i64 = t.parse().unwrap();
        let tampered = serde_json::to_vec(&serde_json::json!({"kind": "alert"})).unwrap();
        assert!(!verify(&receiver.secret, &signature, &tampered, now));
        assert!(!verify(
            &receiver.secret,
            &signature,
            b"",
            now + REPLAY_WINDOW_SECS + 1
        ));

        // The address is blocked now: its further attempts are refused, and alert nothing.
        for i in 3..6 {
            let email = format!("victim-{i}@victims.test");
            let r = login_from(&app, ATTACKER, UA, &email, "guess").await;
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        }
        eventually_metric(&app, "flux_auth_alerts_sent_total", 1.0).await;
        let_duplicates_show().await;
        assert_eq!(receiver.requests().len(), 1, "{backend:?}");
        assert_eq!(
            metric(&app, "flux_auth_alerts_queued_total").await,
            Some(1.0)
        );
        let health = app.health().await;
        assert_eq!(health["checks"]["alerts"]["receivers"], 1, "{health}");
        assert_eq!(health["checks"]["alerts"]["sent"], 1, "{health}");
    }
}

#[tokio::test]
async fn a_slack_webhook_gets_slacks_shape_signed() {
    let receiver = WebhookReceiver::start().await;
    let url = format!("slack+{}", receiver.url());
    let configure = receiver.clone();
    let Some(app) = alert_app(Backend::File, &receiver, move |s| {
        configure.configure_url(s, &url);
    })
    .await
    else {
        return;
    };
    stuff(&app, ATTACKER).await;
    let got = receiver.wait_for(1).await;
    assert!(got[0].verified);
    let body = &got[0].body;
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("credential_stuffing_suspected"), "{text}");
    assert!(text.contains(ATTACKER), "{text}");
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "section");
    let fields = blocks[1]["fields"].as_array().unwrap();
    assert!(fields.len() <= 10);
    assert!(
        fields
            .iter()
            .any(|f| f["text"].as_str().unwrap().contains("ip_blocked")),
        "{body}"
    );
    assert!(
        body.get("eventType").is_none(),
        "Slack's shape only: {body}"
    );
}

#[tokio::test]
async fn a_receiver_answering_500_for_a_while_gets_the_alert_once_it_is_back() {
    for backend in BACKENDS {
        let receiver = WebhookReceiver::start().await;
        let Some(app) = alert_app(backend, &receiver, |_| {}).await else {
            continue;
        };
        receiver.fail_next(3);
        stuff(&app, ATTACKER).await;
        receiver.wait_for(1).await;
        eventually_metric(&app, "flux_auth_alerts_sent_total", 1.0).await;
        let_duplicates_show().await;
        let requests = receiver.requests();
        assert_eq!(
            requests.len(),
            4,
            "{backend:?}: three refusals, one delivery"
        );
        assert_eq!(receiver.accepted().len(), 1);
        // Each attempt is signed afresh, and carries the one alert's id.
        assert!(requests.iter().all(|r| r.verified));
        assert!(requests.iter().all(|r| r.alert_id == requests[0].alert_id));
        assert_eq!(
            metric(&app, "flux_auth_alerts_retried_total").await,
            Some(3.0)
        );
        assert_eq!(metric(&app, "flux_auth_alerts_dead_total").await, Some(0.0));
    }
}

#[tokio::test]
async fn an_alert_given_up_on_is_an_event_and_shows_in_health() {
    for backend in BACKENDS {
        let receiver = WebhookReceiver::start().await;
        let Some(app) = alert_app(backend, &receiver, |s| s.alert_retry_for_secs = 1).await else {
            continue;
        };
        receiver.fail_next(usize::MAX / 2);
        stuff(&app, ATTACKER).await;
        let failed = app.events_of("alert_delivery_failed").await;
        let event = &failed[0];
        assert_eq!(event.metadata["reason"], "credential_stuffing_suspected");
        let named = event.metadata["receiver"].as_str().unwrap();
        assert!(named.starts_with("127.0.0.1#"), "{named}");
        assert!(
            event.metadata["error"]
                .as_str()
                .unwrap()
                .contains("HTTP 500")
        );
        let health = eventually(
            "a dead alert in health",
            Duration::from_secs(10),
            || async {
                let health = app.health().await;
                (health["checks"]["alerts"]["dead"] == 1).then_some(health)
            },
        )
        .await;
        assert_eq!(health["checks"]["alerts"]["pending"], 0, "{health}");
        assert_eq!(metric(&app, "flux_auth_alerts_dead_total").await, Some(1.0));
        // A failed alert is not alerted itself.
        assert!(
            receiver
                .requests()
                .iter()
                .all(|r| r.body["eventType"] == "credential_stuffing_suspected"),
            "{backend:?}"
        );
    }
}

/// The login_failed alerts the receiver accepted about `ip`.
fn failures_about(receiver: &WebhookReceiver, ip: &str) -> Vec<Value> {
    receiver
        .accepted()
        .into_iter()
        .map(|d| d.body)
        .filter(|b| b["eventType"] == "login_failed" && b["key"] == ip)
        .collect()
}

#[tokio::test]
async fn one_alert_per_type_and_address_within_the_window() {
    for backend in BACKENDS {
        let receiver = WebhookReceiver::start().await;
        let Some(app) = alert_app(backend, &receiver, |s| {
            s.anomaly_credential_stuffing_threshold = 0;
            s.alert_min_severity = "warning".into();
            s.alert_dedup_window_secs = 86_400;
        })
        .await
        else {
            continue;
        };
        let (first, second) = ("198.51.100.20", "198.51.100.21");
        for _ in 0..4 {
            let r = login_from(&app, first, UA, "someone@victims.test", "wrong").await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
        login_from(&app, second, UA, "someone@victims.test", "wrong").await;
        eventually(
            "an alert about each address",
            Duration::from_secs(10),
            || async {
                (!failures_about(&receiver, first).is_empty()
                    && !failures_about(&receiver, second).is_empty())
                .then_some(())
            },
        )
        .await;
        let_duplicates_show().await;
        assert_eq!(failures_about(&receiver, first).len(), 1, "{backend:?}");
        assert_eq!(failures_about(&receiver, second).len(), 1, "{backend:?}");
        assert!(receiver.requests().iter().all(|r| r.verified));
    }
}

#[tokio::test]
async fn two_instances_on_one_postgres_deliver_one_alert_once() {
    let receiver = WebhookReceiver::start().await;
    // A day's window: both instances' firings fall in the same one.
    let Some(first) = alert_app(Backend::Postgres, &receiver, |s| {
        s.anomaly_credential_stuffing_window_secs = 86_400;
    })
    .await
    else {
        return;
    };
    let mut settings = first.settings.clone();
    let dir = tempfile::tempdir().unwrap();
    settings.data_dir = dir.path().join("data");
    settings.security_log_dir = Some(dir.path().join("events"));
    let second = TestApp::start(settings, dir, None, Backend::Postgres).await;
    // Without Redis each instance counts alone: the attack fires the rule on both.
    tokio::join!(stuff(&first, ATTACKER), stuff(&second, ATTACKER));
    // Both instances' events go to the one database.
    first
        .events_where(|evs| count_of(evs, "credential_stuffing_suspected") >= 2)
        .await;
    receiver.wait_for(1).await;
    let_duplicates_show().await;
    assert_eq!(receiver.requests().len(), 1, "{:?}", receiver.requests());
    let sent: u64 = [&first, &second]
        .iter()
        .map(|a| {
            a.state
                .alerts
                .stats
                .sent
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert_eq!(sent, 1);
}
