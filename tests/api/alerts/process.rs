//! The binary: an alert pending when the service is killed (SIGKILL) is delivered after the
//! restart; `flux-auth alerts test` prints each webhook's answer; a bad alert configuration is
//! refused at start and by `check-config`, with what to do.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::ATTACKER;
use crate::helpers::*;

/// The binary's metric `name`, once it reads `value` or more.
async fn binary_metric_reaches(
    client: &reqwest::Client,
    service: &FluxAuth,
    name: &str,
    value: f64,
) {
    eventually(
        &format!("{name} ≥ {value}"),
        Duration::from_secs(15),
        || async {
            let seen = metric_at(client, &service.url("/metrics"), name).await;
            seen.is_some_and(|v| v >= value).then_some(())
        },
    )
    .await;
}

/// Waits until the binary serves logins (its database connected and migrated).
async fn ready(client: &reqwest::Client, service: &FluxAuth) {
    eventually("/health/ready", Duration::from_secs(15), || async {
        let r = client.get(service.url("/health/ready")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_alert_pending_when_the_service_is_killed_is_delivered_after_the_restart() {
    for backend in BACKENDS {
        let db = match backend {
            Backend::File => None,
            Backend::Postgres if postgres_available().await => Some(TestDb::create().await),
            Backend::Postgres => continue,
        };
        let receiver = WebhookReceiver::start().await;
        let work = tempfile::tempdir().unwrap();
        let launch = |name: &str| {
            let launch = Launch::new(work.path())
                .named(name)
                .envs(receiver.env())
                .env("RATE_LIMITS", "off")
                .env("TRUSTED_PROXIES", "127.0.0.1/32")
                .env("ANOMALY_CREDENTIAL_STUFFING_THRESHOLD", "3")
                .env("ALERT_POLL_MS", "50")
                // A retry a second after the first refusal: the kill lands between attempts.
                .env("ALERT_RETRY_BASE_MS", "1000");
            match &db {
                Some(db) => launch.env("DATABASE_URL", &db.url),
                None => launch.env("STORAGE", "file"),
            }
        };
        receiver.fail_next(usize::MAX / 2);
        let mut service = launch("first").start().await;
        let client = reqwest::Client::new();
        ready(&client, &service).await;
        for i in 0..3 {
            let r = client
                .post(service.url("/api/auth/login"))
                .header("x-forwarded-for", ATTACKER)
                .json(&json!({ "email": format!("victim-{i}@victims.test"), "password": "guess" }))
                .send()
                .await
                .unwrap();
            let status = r.status();
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{}",
                r.text().await.unwrap()
            );
        }
        // Tried, refused, and the refusal recorded: the alert waits in the store.
        binary_metric_reaches(&client, &service, "flux_auth_alerts_retried_total", 1.0).await;
        service.kill_9();
        service.exit("SIGKILL").await;
        let first_logs = service.logs();
        let refused = receiver.requests();
        assert!(!refused.is_empty() && refused.iter().all(|r| !r.accepted));

        receiver.fail_next(0);
        let service = launch("second").start().await;
        let got = receiver.wait_for(1).await;
        assert!(got[0].verified, "{backend:?}");
        assert_eq!(got[0].body["eventType"], "credential_stuffing_suspected");
        assert_eq!(got[0].alert_id, refused[0].alert_id, "the same alert");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(receiver.accepted().len(), 1, "{backend:?}: delivered once");
        let logs = format!("{first_logs}{}", service.logs());
        assert!(!logs.contains(&receiver.secret), "the secret in the logs");
    }
}

#[tokio::test]
async fn alerts_test_posts_a_signed_test_alert_and_prints_each_answer() {
    let receiver = WebhookReceiver::start().await;
    let work = tempfile::tempdir().unwrap();
    let urls = format!("{},slack+{}", receiver.url(), receiver.url());
    let envs = [
        ("ALERT_WEBHOOK_URLS", urls.as_str()),
        ("ALERT_WEBHOOK_SECRET", receiver.secret.as_str()),
        ("PUBLIC_URL", "https://auth.example.test"),
    ];
    let out = run_cli(work.path(), &envs, &["alerts", "test"]).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        stdout
            .matches("HTTP 200 accepted; answered: ok: alert received")
            .count(),
        2,
        "{stdout}"
    );
    assert!(
        stdout.contains("127.0.0.1#") && stdout.contains("(slack)"),
        "{stdout}"
    );
    assert!(!stdout.contains(&receiver.secret));
    let got = receiver.requests();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r.verified));
    assert_eq!(got[0].body["kind"], "test");
    assert_eq!(
        got[0].body["dashboardUrl"],
        "https://auth.example.test/admin"
    );
    assert!(got[1].body["text"].as_str().unwrap().contains("test alert"));

    // A receiver that fails: its answer is printed, and the command fails.
    receiver.fail_next(1);
    let envs = [
        ("ALERT_WEBHOOK_URLS", receiver.url()),
        ("ALERT_WEBHOOK_SECRET", receiver.secret.clone()),
    ];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run_cli(work.path(), &envs, &["alerts", "test"]).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("HTTP 500 failed (would be retried); answered: receiver down"),
        "{stdout}"
    );

    let help = run_cli(work.path(), &[], &["alerts", "test", "--help"]).await;
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).contains("signed test alert"));
}

#[tokio::test]
async fn a_bad_alert_configuration_is_refused_with_what_to_do() {
    let work = tempfile::tempdir().unwrap();
    let strong = random_secret();
    let many: Vec<String> = (0..11)
        .map(|i| format!("https://h{i}.example.com/x"))
        .collect();
    let many = many.join(",");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("ALERT_WEBHOOK_URLS", "https://siem.example.com/in")],
            "ALERT_WEBHOOK_SECRET is required with ALERT_WEBHOOK_URLS",
        ),
        (
            vec![
                ("ALERT_WEBHOOK_URLS", "https://siem.example.com/in"),
                ("ALERT_WEBHOOK_SECRET", "short-secret"),
            ],
            "ALERT_WEBHOOK_SECRET is 12 bytes; it must be at least 32",
        ),
        (
            vec![
                ("ALERT_WEBHOOK_URLS", "not a url"),
                ("ALERT_WEBHOOK_SECRET", &strong),
            ],
            "ALERT_WEBHOOK_URLS entry 1 is not a URL",
        ),
        (
            vec![
                ("ALERT_WEBHOOK_URLS", &many),
                ("ALERT_WEBHOOK_SECRET", &strong),
            ],
            "ALERT_WEBHOOK_URLS names 11 webhooks; at most 10",
        ),
        (
            vec![("ALERT_MIN_SEVERITY", "severe")],
            "ALERT_MIN_SEVERITY must be info, low, warning, high or critical",
        ),
        (
            vec![
                ("NODE_ENV", "production"),
                ("JWT_SECRET", JWT_SECRET),
                ("ALERT_WEBHOOK_URLS", "http://siem.example.com/in"),
                ("ALERT_WEBHOOK_SECRET", &strong),
            ],
            "ALERT_WEBHOOK_URLS entry 1 (siem.example.com) must use https in production",
        ),
    ];
    for (envs, expected) in cases {
        for command in [&["check-config"][..], &["alerts", "test"], &[]] {
            let out = run_cli(work.path(), &envs, command).await;
            let stderr = text(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(78),
                "{command:?} {envs:?}: {stderr}"
            );
            assert!(
                stderr.contains(expected),
                "{command:?}: {expected}\n{stderr}"
            );
            assert!(!stderr.contains("short-secret") && !stderr.contains(&strong));
        }
    }
}
