//! The outbox: at least once and never twice at a time, through SMTP outages, a killed service
//! and several instances on one database; dead messages reported; no body kept after delivery.

use std::collections::HashMap;
use std::time::Duration;

use flux_auth::mail::Template;
use reqwest::StatusCode;
use serde_json::json;

use super::{NEW_PASSWORD, app_with_sink};
use crate::helpers::{
    BACKENDS, Backend, Launch, PASSWORD, SmtpSink, TestApp, eventually, metric, unique_email,
};

#[tokio::test]
async fn mail_queued_during_an_smtp_outage_is_delivered_once_it_returns() {
    for backend in BACKENDS {
        let Some((app, sink)) = app_with_sink(backend).await else {
            continue;
        };
        sink.refuse(true);
        let emails: Vec<String> = (0..5).map(|_| unique_email()).collect();
        for email in &emails {
            app.signed_up(email).await;
        }
        // Every message has been tried and refused at least twice (retried with back-off).
        eventually(
            "retries during the outage",
            Duration::from_secs(20),
            || async {
                let outbox = app.outbox().await;
                (outbox.len() == 5 && outbox.iter().all(|m| m.attempts >= 2)).then_some(())
            },
        )
        .await;
        assert!(sink.received().is_empty());
        let health = app.health().await;
        assert_eq!(health["checks"]["mail"]["pending"], 5, "{health}");
        sink.refuse(false);
        for email in &emails {
            sink.wait_for(email, 1).await;
        }
        eventually("an empty outbox", Duration::from_secs(10), || async {
            app.outbox().await.is_empty().then_some(())
        })
        .await;
        for email in &emails {
            assert_eq!(sink.to(email).len(), 1, "delivered once ({backend:?})");
        }
        let retried = metric(&app, "flux_auth_mail_retried_total").await;
        assert!(retried.unwrap_or(0.0) >= 5.0, "{retried:?}");
        assert_eq!(metric(&app, "flux_auth_mail_sent_total").await, Some(5.0));
        // The level is the outbox as the sender last saw it: it reads 0 at its next look.
        eventually(
            "the pending level at 0",
            Duration::from_secs(10),
            || async { (metric(&app, "flux_auth_mail_pending").await == Some(0.0)).then_some(()) },
        )
        .await;
    }
}

#[tokio::test]
async fn a_message_undelivered_for_the_whole_period_is_dead_and_reported() {
    for backend in BACKENDS {
        let Some((app, sink)) = super::app_with_sink_and(backend, move |s| {
            s.mail_retry_for_secs = 1;
        })
        .await
        else {
            continue;
        };
        sink.refuse(true);
        let email = unique_email();
        app.signed_up(&email).await;
        let failed = app.events_of("email_send_failed").await;
        assert_eq!(failed[0].metadata["email"], email.as_str());
        assert_eq!(failed[0].metadata["reason"], "verify_email");
        let dead = eventually(
            "a dead message in health",
            Duration::from_secs(10),
            || async {
                let health = app.health().await;
                (health["checks"]["mail"]["dead"] == 1).then_some(health)
            },
        )
        .await;
        assert_eq!(dead["checks"]["mail"]["pending"], 0, "{dead}");
        let listed = app.outbox().await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state.as_str(), "dead");
        assert!(listed[0].last_error.is_some());
        // Nothing is sent once dead, even when SMTP is back.
        sink.refuse(false);
        app.signed_up(&unique_email()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(sink.to(&email).is_empty(), "{backend:?}");
    }
}

#[tokio::test]
async fn two_instances_on_one_postgres_deliver_each_message_once() {
    let Some((first, sink)) = app_with_sink(Backend::Postgres).await else {
        return;
    };
    let mut settings = first.settings.clone();
    let dir = tempfile::tempdir().unwrap();
    settings.data_dir = dir.path().join("data");
    settings.security_log_dir = Some(dir.path().join("events"));
    let second = TestApp::start(settings, dir, None, Backend::Postgres).await;
    let recipients: Vec<String> = (0..60)
        .map(|i| format!("many-{i}-{}", unique_email()))
        .collect();
    for (i, to) in recipients.iter().enumerate() {
        let app = if i % 2 == 0 { &first } else { &second };
        app.state
            .auth
            .mail
            .send(to, "Many", &Template::PasswordChanged, None)
            .await
            .unwrap();
    }
    eventually("every message", Duration::from_secs(30), || async {
        (sink.received().len() >= recipients.len()).then_some(())
    })
    .await;
    // Give a double delivery the time to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in sink.received() {
        for to in m.to {
            *counts.entry(to).or_default() += 1;
        }
    }
    for to in &recipients {
        assert_eq!(counts.get(to), Some(&1), "{to} got {:?}", counts.get(to));
    }
    let sent = [&first, &second]
        .iter()
        .map(|a| {
            a.state
                .auth
                .mail
                .stats
                .sent
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .collect::<Vec<_>>();
    assert_eq!(
        sent.iter().sum::<u64>(),
        recipients.len() as u64,
        "{sent:?}"
    );
}

#[tokio::test]
async fn delivered_mail_keeps_no_body_and_no_token() {
    for backend in BACKENDS {
        let Some((app, sink)) = app_with_sink(backend).await else {
            continue;
        };
        let email = unique_email();
        app.signed_up(&email).await;
        app.forgot(&email).await;
        let mails = sink.wait_for(&email, 2).await;
        let tokens: Vec<String> = mails.iter().filter_map(|m| m.token()).collect();
        assert_eq!(tokens.len(), 2);
        eventually("an empty outbox", Duration::from_secs(10), || async {
            app.outbox().await.is_empty().then_some(())
        })
        .await;
        if let Some(db) = &app.db {
            let pool = db.pool().await;
            let rows: Vec<(String, Option<String>)> =
                sqlx::query_as("SELECT state, body FROM outbox")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            assert_eq!(rows.len(), 2);
            assert!(
                rows.iter()
                    .all(|(state, body)| state == "sent" && body.is_none())
            );
            let text: String = sqlx::query_scalar(
                "SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM outbox t",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            for token in &tokens {
                assert!(!text.contains(token.as_str()));
            }
            pool.close().await;
        }
    }
}

#[tokio::test]
async fn a_killed_service_delivers_its_pending_mail_after_restart_and_logs_no_secret() {
    let sink = SmtpSink::start().await;
    let work = tempfile::tempdir().unwrap();
    let launch = |name: &str| {
        Launch::new(work.path())
            .named(name)
            .env("JWT_SECRET", crate::helpers::JWT_SECRET)
            .env("STORAGE", "file")
            .env("RATE_LIMITS", "off")
            .env("SMTP_HOST", "127.0.0.1")
            .env("SMTP_PORT", sink.port.to_string())
            .env("SMTP_PASS", "canary-smtp-secret-0d1e")
            .env("SMTP_USER", "sink")
            .env("MAIL_POLL_MS", "50")
            .env("MAIL_RETRY_BASE_MS", "100")
    };
    sink.refuse(true);
    let mut service = launch("first").start().await;
    let client = reqwest::Client::new();
    let email = unique_email();
    let signup = client
        .post(service.url("/api/auth/signup"))
        .json(&json!({ "email": email, "password": PASSWORD, "name": "Canary" }))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), StatusCode::CREATED);
    let forgot = client
        .post(service.url("/api/auth/forgot-password"))
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert_eq!(forgot.status(), StatusCode::OK);
    eventually("two messages queued", Duration::from_secs(10), || async {
        let health: serde_json::Value = client
            .get(service.url("/health"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (health["checks"]["mail"]["pending"] == 2).then_some(())
    })
    .await;
    service.kill_9();
    service.exit("SIGKILL").await;
    let first_logs = service.logs();

    sink.refuse(false);
    let service = launch("second").start().await;
    let mails = sink.wait_for(&email, 2).await;
    let tokens: Vec<String> = mails.iter().filter_map(|m| m.token()).collect();
    assert_eq!(tokens.len(), 2, "a verification and a reset link");
    let reset_token = mails
        .iter()
        .find(|m| m.subject() == "Reset your FluxStudio password")
        .and_then(|m| m.token())
        .expect("the reset mail");
    let reset = client
        .post(service.url("/api/auth/reset-password"))
        .json(&json!({ "token": reset_token, "password": NEW_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), StatusCode::OK);
    sink.wait_for(&email, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.to(&email).len(), 3, "each message once");
    let logs = format!("{first_logs}{}", service.logs());
    for canary in [PASSWORD, NEW_PASSWORD, "canary-smtp-secret-0d1e"]
        .into_iter()
        .chain(tokens.iter().map(String::as_str))
    {
        assert!(!logs.contains(canary), "{canary} in the logs");
    }
}
