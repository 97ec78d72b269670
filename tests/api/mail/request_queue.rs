//! Forgot-password's lookups wait in a bounded queue after the answer: a burst past its bound is
//! answered alike, the requests it could not hold are dropped and counted, and the service stays
//! healthy and mails again once the burst is over.

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::helpers::{BACKENDS, Backend, eventually, metric, unique_email};

/// Requests in the burst: far over the queue's 16.
const BURST: usize = 200;

#[tokio::test]
async fn a_burst_over_the_queue_is_answered_alike_and_its_drops_are_counted() {
    for backend in BACKENDS {
        let Some((app, sink)) = super::app_with_sink_and(backend, move |s| {
            s.mail_request_queue = 16;
        })
        .await
        else {
            continue;
        };
        let known = unique_email();
        app.signed_up(&known).await;
        sink.wait_for(&known, 1).await;
        // On Postgres the lookups are held for sure: the first known address's token cannot be
        // written while the table is locked, so its worker stops there and the queue fills.
        let mut lock = match (&app.db, backend) {
            (Some(db), Backend::Postgres) => {
                let mut conn = PgConnection::connect(&db.url).await.unwrap();
                sqlx::raw_sql("BEGIN; LOCK TABLE one_time_tokens IN EXCLUSIVE MODE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                Some(conn)
            }
            _ => None,
        };
        let answers = join_all((0..BURST).map(|i| {
            let email = if i % 2 == 0 {
                known.clone()
            } else {
                unique_email()
            };
            let app = &app;
            async move {
                let answer = app
                    .post_json("/api/auth/forgot-password", &json!({ "email": email }))
                    .await;
                (answer.status(), answer.text().await.unwrap())
            }
        }))
        .await;
        assert!(
            answers.iter().all(|a| a == &answers[0]),
            "one answer for all ({backend:?}): {:?}",
            answers.iter().find(|a| *a != &answers[0])
        );
        assert_eq!(answers[0].0, reqwest::StatusCode::OK);
        let accepted = metric(&app, "flux_auth_mail_requests_accepted_total")
            .await
            .unwrap();
        let dropped = metric(&app, "flux_auth_mail_requests_dropped_total")
            .await
            .unwrap();
        assert_eq!(accepted + dropped, BURST as f64, "{backend:?}");
        if lock.is_some() {
            // Of the known address's 100, one is in its worker's hands and four wait.
            assert!(dropped >= 95.0, "dropped {dropped}");
            assert_eq!(
                metric(&app, "flux_auth_mail_requests_capacity").await,
                Some(16.0)
            );
        }
        if let Some(conn) = lock.as_mut() {
            sqlx::raw_sql("ROLLBACK").execute(conn).await.unwrap();
        }
        eventually("the queue emptied", Duration::from_secs(20), || async {
            (metric(&app, "flux_auth_mail_requests_waiting").await == Some(0.0)).then_some(())
        })
        .await;
        let health = app.health().await;
        assert_eq!(health["status"], "ok", "{health}");
        assert_eq!(
            health["checks"]["mail"]["requestsDropped"].as_f64(),
            Some(dropped),
            "{health}"
        );
        eventually("the outbox emptied", Duration::from_secs(20), || async {
            app.outbox().await.is_empty().then_some(())
        })
        .await;
        // Healthy after the burst: a new request is looked up and mailed.
        let before = sink.to(&known).len();
        assert_eq!(app.forgot(&known).await.status(), reqwest::StatusCode::OK);
        let mails = sink.wait_for(&known, before + 1).await;
        assert_eq!(
            mails.last().unwrap().subject(),
            "Reset your FluxStudio password",
            "{backend:?}"
        );
    }
}
