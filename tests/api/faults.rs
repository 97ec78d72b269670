//! The Postgres store under database faults: a statement stuck behind a lock, a rotation that
//! waited, the database refusing connections, a clock that runs ahead, a pooler in between, a
//! migration cut off. (Redis faults are in limits.rs.)

use std::time::Duration;

use flux_auth::db::Database;
use flux_auth::domain::{UserRecord, UserType};
use flux_auth::store::{
    self, NewSession, RotateOutcome, RotateRequest, SessionRecord, TokenRecord,
};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::forwarder::{Forwarder, postgres_addr, via};
use crate::helpers::*;
use crate::pooler::StrictPooler;

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

/// Asserts a 503 `SERVICE_UNAVAILABLE` that tells the client when to retry.
async fn assert_unavailable(response: reqwest::Response) {
    let retry_after: Option<u64> = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    assert!(
        retry_after.is_some_and(|s| s > 0),
        "Retry-After: {:?}",
        response.headers()
    );
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "SERVICE_UNAVAILABLE",
    )
    .await;
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
    assert_unavailable(stuck).await;
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

/// The store pool's acquire waits counted so far (every acquire that got a connection).
const ACQUIRE_WAITS: &str = "flux_auth_db_pool_acquire_wait_seconds_count{pool=\"users\"}";
/// The store pool's acquires that got none.
const ACQUIRE_ERRORS: &str = "flux_auth_db_pool_acquire_errors_total{pool=\"users\"}";

/// While Postgres refuses connections, every request that needs it is answered 503 with
/// Retry-After without waiting for the pool (once the store knows the database is gone, no
/// request asks the pool for a connection: each is refused at once, and counted as such),
/// `/health` and `/health/ready` answer, and `/me` still answers for a user read moments before
/// (from memory); all of it recovers by itself.
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
    // The first request meets the broken connections and makes the store probe the database,
    // which finds nothing listening.
    let first = client
        .post(app.url("/api/auth/login"))
        .header("user-agent", UA)
        .json(&credentials)
        .send()
        .await
        .expect("answered while the database is down");
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    eventually(
        "the store to know the database is gone",
        MIRROR_PATIENCE,
        || async {
            (metric(&app, "flux_auth_db_users_unreachable").await == Some(1.0)).then_some(())
        },
    )
    .await;
    let waits = metric(&app, ACQUIRE_WAITS).await.expect(ACQUIRE_WAITS);
    let acquire_errors = metric(&app, ACQUIRE_ERRORS).await.expect(ACQUIRE_ERRORS);
    let failed_fast = metric(&app, "flux_auth_db_users_failed_fast_total")
        .await
        .expect("failed-fast count");

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
        assert_unavailable(response).await;
    }
    assert_eq!(
        metric(&app, "flux_auth_db_users_unreachable").await,
        Some(1.0)
    );
    // Each of the sixteen was refused by the store at once; none waited for, or failed to get,
    // a connection.
    assert!(
        metric(&app, "flux_auth_db_users_failed_fast_total")
            .await
            .is_some_and(|n| n >= failed_fast + 16.0),
        "every request answered from the circuit"
    );
    assert_eq!(metric(&app, ACQUIRE_WAITS).await, Some(waits));
    assert_eq!(metric(&app, ACQUIRE_ERRORS).await, Some(acquire_errors));
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
    let health: Value = app.health().await;
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

/// A login role of its own for the service, so a test can refuse it new connections while the
/// connections it holds keep working. Dropped when the test ends (after the database it owns:
/// declare it before the app).
struct ServiceRole {
    name: String,
}

impl ServiceRole {
    async fn create() -> ServiceRole {
        let name = format!("flux_role_{}", uuid::Uuid::new_v4().simple());
        admin_sql(&format!("CREATE ROLE \"{name}\" LOGIN")).await;
        ServiceRole { name }
    }

    /// `url` connecting as this role.
    fn url(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).unwrap();
        url.set_username(&self.name).unwrap();
        url.to_string()
    }

    /// From now on Postgres refuses every new connection of the role ("too many connections
    /// for role", 53300); the open ones go on.
    async fn refuse_new_connections(&self) {
        admin_sql(&format!("ALTER ROLE \"{}\" CONNECTION LIMIT 0", self.name)).await;
    }
}

impl Drop for ServiceRole {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(admin_sql(&format!("DROP ROLE IF EXISTS \"{name}\"")));
        })
        .join();
    }
}

/// One statement on the server's admin database, as the superuser.
async fn admin_sql(sql: &str) {
    let mut conn = PgConnection::connect(&postgres_admin_url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
}

/// A Postgres that refuses the service new connections ("too many connections") still answers:
/// while the pool's connections work, a request that waits for one of them (the pool is busy)
/// makes the store probe the database, and the probe, refused in turn, takes that refusal as an
/// answer. The circuit stays closed, and the waiting request is served as soon as a connection is
/// free, like every request after it.
#[tokio::test]
async fn a_busy_pool_on_a_database_that_refuses_new_connections_keeps_serving() {
    if !postgres_available().await {
        return;
    }
    let role = ServiceRole::create().await;
    let db = TestDb::create().await;
    admin_sql(&format!(
        "ALTER DATABASE \"{}\" OWNER TO \"{}\"",
        db.name, role.name
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.storage = Some(flux_auth::config::StorageKind::Postgres);
    settings.database_url = Some(SecretString::from(role.url(&db.url)));
    // One connection, so that one request waiting for a lock makes the next wait for the pool.
    settings.database_max_connections = 1;
    settings.database_connect_timeout_ms = 30_000;
    settings.database_statement_timeout_ms = 10_000;
    settings.request_timeout_ms = 20_000;
    settings.user_cache_users = 0;
    let app = TestApp::start(settings, dir, Some(db), Backend::Postgres).await;
    let email = unique_email();
    let auth = app.signed_up(&email).await;
    let refresh = auth["refreshToken"].as_str().unwrap().to_owned();

    role.refuse_new_connections().await;
    let refused = PgConnection::connect(&role.url(&app.db.as_ref().unwrap().url))
        .await
        .expect_err("a new connection of the role is refused");
    assert_eq!(
        refused
            .as_database_error()
            .and_then(|e| e.code())
            .as_deref(),
        Some("53300"),
        "{refused}"
    );

    let locker = Locker::lock_users(&app).await;
    let holding = {
        let (client, url) = (app.client.clone(), app.url("/api/auth/refresh"));
        tokio::spawn(async move {
            client
                .post(url)
                .header("user-agent", UA)
                .json(&json!({ "refreshToken": refresh }))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    locker.wait_for_waiters(&app, 1).await;
    let waiting = {
        let (client, url) = (app.client.clone(), app.url("/api/auth/login"));
        let credentials = json!({ "email": email, "password": PASSWORD });
        tokio::spawn(async move {
            client
                .post(url)
                .header("user-agent", UA)
                .json(&credentials)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let probes = |outcome: &'static str| {
        let app = &app;
        async move {
            metric(
                app,
                &format!("flux_auth_db_users_probes_total{{outcome=\"{outcome}\"}}"),
            )
            .await
            .unwrap_or_default()
        }
    };
    eventually(
        "the store to probe the database",
        MIRROR_PATIENCE,
        || async {
            let run =
                probes("answered").await + probes("refused").await + probes("unreachable").await;
            (run > 0.0).then_some(())
        },
    )
    .await;
    locker.release().await;

    assert_eq!(holding.await.unwrap(), StatusCode::OK);
    assert_eq!(
        waiting.await.unwrap(),
        StatusCode::OK,
        "the request that waited for the pool"
    );
    for _ in 0..3 {
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
    }
    assert!(probes("refused").await >= 1.0, "the probe met the refusal");
    assert_eq!(probes("unreachable").await, 0.0);
    assert_eq!(
        metric(&app, "flux_auth_db_users_unreachable_episodes_total").await,
        Some(0.0)
    );
    assert_eq!(
        metric(&app, "flux_auth_db_users_failed_fast_total").await,
        Some(0.0)
    );
}

/// The grace window is measured from Postgres's clock, so a Postgres clock running ahead of the
/// instance's would lengthen it by as much. A rotation's time is capped at the latest moment its
/// request could write (its time plus the request timeout, by the instance's clock): with
/// Postgres an hour ahead, a rotated token that comes back after the grace window and the
/// request timeout is a replay, not a retry. (The instance's clock is the request's `now`.)
#[tokio::test]
async fn a_database_clock_running_ahead_lengthens_the_grace_window_by_the_request_timeout_at_most()
{
    if !postgres_available().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create().await;
    let mut settings = test_settings(dir.path());
    settings.storage = Some(flux_auth::config::StorageKind::Postgres);
    settings.database_url = Some(SecretString::from(db.url.clone()));
    settings.request_timeout_ms = 2000;
    settings.database_statement_timeout_ms = 1000;
    let store = store::open(&settings, &flux_auth::metrics::Metrics::default())
        .await
        .unwrap()
        .store;
    eventually("the store to be ready", MIRROR_PATIENCE, || {
        let store = store.clone();
        async move { store.ping().await.ok() }
    })
    .await;

    // The instance an hour behind Postgres (at whole milliseconds, as Postgres keeps them).
    let now = chrono::DateTime::from_timestamp_millis(
        (chrono::Utc::now() - chrono::Duration::hours(1)).timestamp_millis(),
    )
    .unwrap();
    let user_id = uuid::Uuid::new_v4().to_string();
    store
        .insert_user(&UserRecord {
            id: user_id.clone(),
            email: unique_email(),
            name: "Ann Lee".into(),
            user_type: UserType::Client,
            password_hash: None,
            google_id: None,
            email_verified: false,
            avatar: None,
            created_at: now,
            last_login: None,
            updated_at: now,
            two_factor_enabled: false,
            extra: serde_json::Map::new(),
        })
        .await
        .unwrap();
    let session_id = uuid::Uuid::now_v7();
    let presented = sha256_hex(&uuid::Uuid::new_v4().to_string());
    let fingerprint = "f".repeat(64);
    let session = NewSession {
        session: SessionRecord {
            id: session_id,
            user_id,
            device_name: "Test".into(),
            ip_address: "127.0.0.1".into(),
            user_agent: None,
            fingerprint: fingerprint.clone(),
            created_at: now,
            last_used_at: now,
            expires_at: now + chrono::Duration::days(30),
            revoked_at: None,
            revoked_reason: None,
        },
        token: TokenRecord {
            id: uuid::Uuid::now_v7(),
            session_id,
            token_hash: presented.clone(),
            created_at: now,
            rotated_at: None,
            replaced_by: None,
        },
        records_login: false,
    };
    store
        .create_session(&session, 10, chrono::Duration::days(7))
        .await
        .unwrap();
    let request = RotateRequest {
        presented_hash: presented.clone(),
        successor_id: uuid::Uuid::now_v7(),
        successor_hash: sha256_hex(&uuid::Uuid::new_v4().to_string()),
        now,
        grace: chrono::Duration::seconds(1),
        idle_ttl: chrono::Duration::days(7),
        fingerprint,
        ip_address: "127.0.0.1".into(),
        reject_on_fingerprint_mismatch: false,
    };
    assert!(matches!(
        store.rotate_refresh_token(&request).await.unwrap(),
        RotateOutcome::Rotated { .. }
    ));
    let pool = db.pool().await;
    let rotated_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT rotated_at FROM refresh_tokens WHERE token_hash = $1")
            .bind(&presented)
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(
        rotated_at,
        now + chrono::Duration::seconds(2),
        "the request's time plus the request timeout, not Postgres's clock"
    );

    // The grace window (1 s) and the request timeout (2 s) later, by the instance's clock.
    let replay = RotateRequest {
        now: now + chrono::Duration::seconds(4),
        ..request
    };
    assert!(matches!(
        store.rotate_refresh_token(&replay).await.unwrap(),
        RotateOutcome::ReuseDetected { .. }
    ));
}

/// Behind a pooler that takes only the startup parameters it tracks (PgBouncer's default, which
/// refuses `options` and `extra_float_digits`), the service connects through it, every pool of
/// it, and the statement timeout still ends a statement stuck behind a lock: it is set once
/// connected, not sent at startup.
#[tokio::test]
async fn behind_a_pooler_that_takes_only_the_startup_parameters_it_tracks_statements_still_time_out()
 {
    if !postgres_available().await {
        return;
    }
    let pooler = StrictPooler::start(postgres_addr().await).await;
    let addr = pooler.addr();
    let app = TestApp::builder(Backend::Postgres)
        .settings(move |s| {
            let url = s.database_url.as_ref().unwrap().expose_secret().to_owned();
            s.database_url = Some(SecretString::from(via(&url, addr)));
            s.request_timeout_ms = 4000;
            s.database_statement_timeout_ms = 1000;
        })
        .spawn()
        .await;
    let email = unique_email();
    let auth = app.signed_up(&email).await;
    let token = auth["refreshToken"].as_str().unwrap();
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);

    let locker = Locker::lock_users(&app).await;
    let stuck = app.refresh(token).await;
    assert_unavailable(stuck).await;
    locker.release().await;
    assert_eq!(app.refresh(token).await.status(), StatusCode::OK);
    let health: Value = app.health().await;
    assert_eq!(health["checks"]["database"], "ok", "{health}");
    assert_eq!(health["checks"]["securityLog"]["healthy"], true, "{health}");
}

/// A migration that fails because its connection was ended under it reports that failure, not
/// whatever a later statement on the dead connection would say.
#[tokio::test]
async fn a_migration_cut_off_midway_reports_its_own_error() {
    if !postgres_available().await {
        return;
    }
    let db = TestDb::create().await;
    let database = Database::connect_lazy(
        &SecretString::from(db.url.clone()),
        &flux_auth::db::Schemas::default(),
        2,
        Duration::from_secs(5),
    )
    .unwrap();
    database.migrate().await.unwrap();
    // A second run waits behind the test's lock on the migrations' own table...
    let mut locker = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let migrating = tokio::spawn(async move { database.migrate().await });
    // ...until its connection is ended under it.
    let pool = db.pool().await;
    let pid: i32 = eventually(
        "the migration to wait for the lock",
        MIRROR_PATIENCE,
        || async {
            sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 \
                 AND application_name = 'flux-auth' AND wait_event_type = 'Lock'",
            )
            .bind(&db.name)
            .fetch_optional(&pool)
            .await
            .unwrap()
        },
    )
    .await;
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&pool)
        .await
        .unwrap();
    let error = migrating
        .await
        .unwrap()
        .expect_err("the migration was cut off");
    let text = format!("{error:#}");
    assert!(
        text.contains("terminating connection due to administrator command"),
        "{text}"
    );
    sqlx::raw_sql("COMMIT").execute(&mut locker).await.unwrap();
    let _ = locker.close().await;
    pool.close().await;
}

/// The store's probe of an unreachable database, which retries until it answers, ends when the
/// service shuts down.
#[tokio::test]
async fn the_store_probe_ends_at_shutdown_while_the_database_is_unreachable() {
    if !postgres_available().await {
        return;
    }
    let forwarder = Forwarder::start(postgres_addr().await).await;
    let mut app = app_through(&forwarder).await.unwrap();
    let email = unique_email();
    app.signed_up(&email).await;
    let circuit = app
        .state
        .store_db
        .as_ref()
        .and_then(|db| db.circuit().cloned())
        .expect("the store's circuit");

    forwarder.refuse();
    assert_eq!(
        app.login(&email, PASSWORD).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    eventually("the circuit to open", MIRROR_PATIENCE, || async {
        circuit.is_open().then_some(())
    })
    .await;
    assert!(
        circuit.is_probing(),
        "it retries while the database is away"
    );
    app.stop().await;
    eventually("the probe to end", MIRROR_PATIENCE, || async {
        (!circuit.is_probing()).then_some(())
    })
    .await;
}
