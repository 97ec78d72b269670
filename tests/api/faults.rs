//! The Postgres store under database faults: a statement stuck behind a lock, a rotation that
//! waited, the database refusing connections. (Redis faults are in limits.rs.)

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::forwarder::{Forwarder, postgres_addr, via};
use crate::helpers::*;

/// A connection of the test's own that holds `users` locked (ACCESS EXCLUSIVE, the strongest:
/// every statement that reads the table waits) until [`Locker::release`].
struct Locker(PgConnection);

impl Locker {
    async fn lock_users(app: &TestApp) -> Locker {
        let mut conn = PgConnection::connect(&app.db.as_ref().unwrap().url)
            .await
            .unwrap();
        sqlx::raw_sql("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            .execute(&mut conn)
            .await
            .unwrap();
        Locker(conn)
    }

    /// Waits until `n` of the app's statements wait for the lock.
    async fn wait_for_waiters(&self, app: &TestApp, n: i64) {
        let db = app.db.as_ref().unwrap();
        let pool = db.pool().await;
        eventually(
            "statements waiting for the lock",
            MIRROR_PATIENCE,
            || async {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                 AND application_name = 'flux-auth' AND wait_event_type = 'Lock'",
                )
                .bind(&db.name)
                .fetch_one(&pool)
                .await
                .unwrap();
                (waiting >= n).then_some(())
            },
        )
        .await;
        pool.close().await;
    }

    async fn release(mut self) {
        sqlx::raw_sql("COMMIT").execute(&mut self.0).await.unwrap();
        let _ = self.0.close().await;
    }
}

fn retry_after(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A refresh stuck behind a lock on `users` is ended by the statement timeout, long before the
/// request's own timeout, and answered 503 with Retry-After; nothing of it is left to commit when
/// the lock goes, so the client's retry of the same token rotates it, and no reuse is detected.
/// (The file store has no lock a statement could wait on.)
#[tokio::test]
async fn a_refresh_stuck_behind_a_lock_answers_503_and_its_retry_is_not_taken_for_reuse() {
    let Some(app) = TestApp::builder(Backend::Postgres)
        .settings(|s| {
            s.request_timeout_ms = 4000;
            s.database_statement_timeout_ms = 1000;
            s.refresh_reuse_grace_secs = 1;
        })
        .try_spawn()
        .await
    else {
        return;
    };
    let auth = app.signed_up(&unique_email()).await;
    let token = auth["refreshToken"].as_str().unwrap();

    let locker = Locker::lock_users(&app).await;
    let stuck = app.refresh(token).await;
    assert!(
        retry_after(&stuck).is_some_and(|s| s > 0),
        "Retry-After: {:?}",
        stuck.headers()
    );
    assert_error(
        stuck,
        StatusCode::SERVICE_UNAVAILABLE,
        "SERVICE_UNAVAILABLE",
    )
    .await;
    locker.release().await;

    let retry = app.refresh(token).await;
    assert_eq!(
        retry.status(),
        StatusCode::OK,
        "the retry rotates the token"
    );
    let events = app
        .events_where(|e| count_of(e, "token_refreshed") == 1)
        .await;
    assert_eq!(count_of(&events, "token_reuse_detected"), 0);
    assert!(
        app.stored_sessions()
            .await
            .iter()
            .all(|s| s.revoked_reason.is_none()),
        "no session revoked"
    );
}

/// A rotation that waited behind a lock for longer than the grace window opens the window when it
/// writes, not when its request began: the client, which gave up waiting, retries the same token
/// just after the rotation committed, and gets the same successor rather than a reuse verdict.
#[tokio::test]
async fn a_rotation_delayed_by_a_lock_opens_the_grace_window_when_it_writes() {
    let Some(app) = TestApp::builder(Backend::Postgres)
        .settings(|s| s.refresh_reuse_grace_secs = 1)
        .try_spawn()
        .await
    else {
        return;
    };
    let auth = app.signed_up(&unique_email()).await;
    let token = auth["refreshToken"].as_str().unwrap().to_owned();

    let locker = Locker::lock_users(&app).await;
    let first = {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/api/auth/refresh"),
            token.clone(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .header("user-agent", UA)
                .json(&json!({ "refreshToken": token }))
                .send()
                .await
                .unwrap()
        })
    };
    locker.wait_for_waiters(&app, 1).await;
    // The scenario itself: the refresh waits longer than the grace window before it can write.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    locker.release().await;
    let first = first.await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();

    let retry = app.refresh(&token).await;
    assert_eq!(
        retry.status(),
        StatusCode::OK,
        "the retry is inside the grace window"
    );
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(
        first["refreshToken"], retry["refreshToken"],
        "one successor"
    );
    let events = app
        .events_where(|e| count_of(e, "token_refreshed") == 2)
        .await;
    assert_eq!(count_of(&events, "token_reuse_detected"), 0);
}

/// A Postgres app whose connections to the database go through `forwarder`, with a pool timeout
/// far longer than the test waits for any answer.
async fn app_through(forwarder: &Forwarder) -> Option<TestApp> {
    let addr = forwarder.addr();
    TestApp::builder(Backend::Postgres)
        .settings(move |s| {
            let url = s.database_url.as_ref().unwrap().expose_secret().to_owned();
            s.database_url = Some(SecretString::from(via(&url, addr)));
            s.database_connect_timeout_ms = 30_000;
        })
        .try_spawn()
        .await
}

/// A client that gives up well before the pool's 30 s: an answer must come from the service
/// knowing the database is down, not from the pool timing out.
fn impatient() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// While Postgres refuses connections, every request that needs it is answered 503 with
/// Retry-After without waiting for the pool, `/health` and `/health/ready` answer, and `/me`
/// still answers for a user read moments before (from memory); all of it recovers by itself.
#[tokio::test]
async fn while_the_database_refuses_connections_requests_fail_fast_and_kept_users_still_answer() {
    if !postgres_available().await {
        return;
    }
    let forwarder = Forwarder::start(postgres_addr().await).await;
    let app = app_through(&forwarder).await.unwrap();
    user_cache_following(&app, 1.0).await;
    let email = unique_email();
    let auth = app.signed_up(&email).await;
    let access = auth["accessToken"].as_str().unwrap().to_owned();
    let refresh = auth["refreshToken"].as_str().unwrap().to_owned();
    user_cache_caught_up(&app).await;
    assert_eq!(app.me(&access).await.status(), StatusCode::OK);

    forwarder.refuse();
    let client = impatient();
    let credentials = json!({ "email": email, "password": PASSWORD });
    let requests = (0..16).map(|i| {
        let request = if i % 2 == 0 {
            client.post(app.url("/api/auth/login")).json(&credentials)
        } else {
            client
                .post(app.url("/api/auth/refresh"))
                .json(&json!({ "refreshToken": refresh }))
        };
        request.header("user-agent", UA).send()
    });
    for response in futures::future::join_all(requests).await {
        let response = response.expect("answered while the database is down");
        assert!(retry_after(&response).is_some_and(|s| s > 0));
        assert_error(
            response,
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
        )
        .await;
    }
    assert_eq!(
        metric(&app, "flux_auth_db_users_unreachable").await,
        Some(1.0)
    );
    let health: Value = client
        .get(app.url("/health"))
        .send()
        .await
        .expect("health answers")
        .json()
        .await
        .unwrap();
    assert_eq!(health["checks"]["database"], "error", "{health}");
    let ready = client.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let me = client
        .get(app.url("/api/auth/me"))
        .bearer_auth(&access)
        .send()
        .await
        .expect("me answers");
    assert_eq!(me.status(), StatusCode::OK, "a kept user during the outage");
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["email"], email.as_str());

    forwarder.restore();
    eventually(
        "the database to be back",
        Duration::from_secs(30),
        || async { (app.login(&email, PASSWORD).await.status() == StatusCode::OK).then_some(()) },
    )
    .await;
    assert_eq!(
        metric(&app, "flux_auth_db_users_unreachable").await,
        Some(0.0)
    );
    let health: Value = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["checks"]["database"], "ok", "{health}");
}

/// Whether any of the app's statements waits for a lock now.
async fn waiting_for_a_lock(app: &TestApp) -> bool {
    let db = app.db.as_ref().unwrap();
    let pool = db.pool().await;
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
         AND application_name = 'flux-auth' AND wait_event_type = 'Lock'",
    )
    .bind(&db.name)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    waiting > 0
}

/// A refresh whose request times out (408) while its statement still waits for a lock leaves
/// nothing to commit: its connection is closed rather than returned to the pool, Postgres ends
/// the statement, and when the lock goes the token is still unrotated. The statement starts late
/// in its request here (the pool's one connection is busy with another refresh until that one's
/// statement times out), so the request's timeout comes before the statement's.
#[tokio::test]
async fn a_refresh_that_times_out_while_its_statement_waits_leaves_nothing_to_commit() {
    let Some(app) = TestApp::builder(Backend::Postgres)
        .settings(|s| {
            s.request_timeout_ms = 3000;
            s.database_statement_timeout_ms = 2500;
            s.database_max_connections = 1;
            s.database_connect_timeout_ms = 10_000;
            s.user_cache_users = 0;
        })
        .try_spawn()
        .await
    else {
        return;
    };
    let first = app.signed_up(&unique_email()).await;
    let second = app.signed_up(&unique_email()).await;
    let first_token = first["refreshToken"].as_str().unwrap().to_owned();
    let second_token = second["refreshToken"].as_str().unwrap().to_owned();
    // A refresh before the lock prepares the rotation's statement on the pool's one connection, so
    // that under the lock it is the rotation itself (Bind and Execute) that waits, not its first
    // Parse, which would leave nothing to commit whatever became of the connection.
    let warm = app.signed_up(&unique_email()).await;
    assert_eq!(
        app.refresh(warm["refreshToken"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );

    let locker = Locker::lock_users(&app).await;
    let send = |token: String| {
        let (client, url) = (app.client.clone(), app.url("/api/auth/refresh"));
        tokio::spawn(async move {
            client
                .post(url)
                .header("user-agent", UA)
                .json(&json!({ "refreshToken": token }))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let holding = send(first_token);
    locker.wait_for_waiters(&app, 1).await;
    let late = send(second_token.clone());
    assert_eq!(holding.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(late.await.unwrap(), StatusCode::REQUEST_TIMEOUT);
    // The abandoned statement is ended by Postgres within a fraction of a second. The lock is
    // released after a second at most either way: one still waiting then would commit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while waiting_for_a_lock(&app).await && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    locker.release().await;
    eventually(
        "no refresh statement left running",
        MIRROR_PATIENCE,
        || async {
            let db = app.db.as_ref().unwrap();
            let pool = db.pool().await;
            let running: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'flux-auth' AND state <> 'idle' \
             AND query LIKE '%refresh_tokens%'",
            )
            .bind(&db.name)
            .fetch_one(&pool)
            .await
            .unwrap();
            pool.close().await;
            (running == 0).then_some(())
        },
    )
    .await;
    let hash = sha256_hex(&second_token);
    let stored = app.stored_refresh_tokens().await;
    let token = stored.iter().find(|t| t.token_hash == hash).unwrap();
    assert!(
        !token.rotated,
        "the timed-out refresh committed after its 408"
    );
    assert_eq!(app.refresh(&second_token).await.status(), StatusCode::OK);
}
