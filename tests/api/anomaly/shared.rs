//! The rules' counts across instances: two instances on one Redis add up to one count and one
//! firing; with Redis unreachable each instance counts alone, in-process.

use flux_auth::config::Settings;
use reqwest::StatusCode;
use secrecy::SecretString;

use super::{fired, login_from, rules_app, settled};
use crate::helpers::*;

/// Another instance beside `first`: its settings, Redis and key prefix, its own port and folder.
async fn second_instance(first: &TestApp) -> TestApp {
    let mut settings = first.settings.clone();
    settings.port = 0;
    let dir = tempfile::tempdir().unwrap();
    settings.data_dir = dir.path().join("data");
    settings.security_log_dir = Some(dir.path().join("events"));
    TestApp::start(settings, dir, None, Backend::File).await
}

fn stuffing_at_four(s: &mut Settings) {
    s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    s.anomaly_credential_stuffing_threshold = 4;
}

async fn fail_accounts(app: &TestApp, ip: &str, accounts: &[&str]) {
    for account in accounts {
        let r = login_from(app, ip, UA, account, "guess-guess").await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{account}: {body}");
    }
}

#[tokio::test]
async fn two_instances_on_one_redis_add_up_their_counts_and_fire_once() {
    let Some(first) = rules_app(Backend::File, stuffing_at_four).await else {
        return;
    };
    let second = second_instance(&first).await;
    let ip = "203.0.113.40";
    fail_accounts(&first, ip, &["a@x.test", "b@x.test"]).await;
    fail_accounts(&second, ip, &["b@x.test", "c@x.test"]).await;
    settled(&first).await;
    let below = fired(&first, "credential_stuffing_suspected").await.len()
        + fired(&second, "credential_stuffing_suspected").await.len();
    assert_eq!(below, 0, "three distinct accounts across both");
    fail_accounts(&second, ip, &["d@x.test"]).await;
    let on_first = fired(&first, "credential_stuffing_suspected").await;
    let on_second = fired(&second, "credential_stuffing_suspected").await;
    assert_eq!(
        (on_first.len(), on_second.len()),
        (0, 1),
        "the fourth account, on the second, fired once for both"
    );
    // The block is in Redis: both instances refuse the address.
    for app in [&first, &second] {
        let r = login_from(app, ip, UA, "f@x.test", "guess-guess").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}

#[tokio::test]
async fn with_redis_unreachable_each_instance_counts_alone_in_process() {
    let Some(first) = rules_app(Backend::File, |s| {
        stuffing_at_four(s);
        // Nothing listens there.
        s.redis_url = Some(SecretString::from(format!(
            "redis://127.0.0.1:{}",
            free_port()
        )));
    })
    .await
    else {
        return;
    };
    let second = second_instance(&first).await;
    let ip = "203.0.113.41";
    fail_accounts(&first, ip, &["a@y.test", "b@y.test"]).await;
    fail_accounts(&second, ip, &["c@y.test", "d@y.test"]).await;
    assert!(
        fired(&first, "credential_stuffing_suspected")
            .await
            .is_empty()
    );
    assert!(
        fired(&second, "credential_stuffing_suspected")
            .await
            .is_empty()
    );
    fail_accounts(&first, ip, &["e@y.test", "f@y.test"]).await;
    let events = fired(&first, "credential_stuffing_suspected").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["metadata"]["action"], "ip_blocked");
    let r = login_from(&first, ip, UA, "h@y.test", "guess-guess").await;
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "blocked in-process"
    );
    assert!(
        fired(&second, "credential_stuffing_suspected")
            .await
            .is_empty()
    );
    assert_eq!(first.health().await["checks"]["redis"], "error");
}
