//! The security log when it cannot keep events: its database cut away (a `Forwarder`) and its
//! spool's disk full (a `SmallDisk`, so these tests run as root, as CI does). With sync durability
//! a request whose event is lost fails and what it granted is withdrawn; the writer goes back to
//! the database as soon as a health probe sees it answer; `/health` says what is true now, with the
//! last loss shown apart. And a sign-in records its success only once its session exists.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use flux_auth::config::{Durability, Settings};
use flux_auth::security_log::SecurityEvent;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::forwarder::{Forwarder, postgres_addr, via};
use crate::helpers::*;
use crate::small_disk::SmallDisk;

/// How long a test waits for the service to settle after the outage.
const PATIENCE: Duration = Duration::from_secs(30);

/// Where the security log's database is, relative to the user store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LogDatabase {
    /// The store's own database (Postgres store), both reached through the forwarder; on the file
    /// store the events database, through the forwarder.
    Shared,
    /// A database of its own through the forwarder, the store's reached directly: only the log
    /// loses its database.
    Own,
}

/// A running app whose security log's database is behind `forwarder` and whose spool is on
/// `disk`.
struct Outage {
    app: TestApp,
    forwarder: Forwarder,
    disk: SmallDisk,
    spool: PathBuf,
    /// The log's database when it has one of its own.
    log_db: Option<TestDb>,
    _root: tempfile::TempDir,
}

impl Outage {
    async fn start(
        backend: Backend,
        log: LogDatabase,
        tweak: impl FnOnce(&mut Settings) + 'static,
    ) -> Option<Outage> {
        if !postgres_available().await {
            return None;
        }
        let forwarder = Forwarder::start(postgres_addr().await).await;
        let root = tempfile::tempdir().unwrap();
        let spool = root.path().join("events");
        let disk = SmallDisk::mount(&spool, 256 * 1024)?;
        let log_db = match (backend, log) {
            (Backend::Postgres, LogDatabase::Own) => Some(TestDb::create().await),
            _ => None,
        };
        let own_url = log_db.as_ref().map(|db| via(&db.url, forwarder.addr()));
        let addr = forwarder.addr();
        let spool_dir = spool.clone();
        let builder = match backend {
            Backend::File => TestApp::builder(Backend::File).events_in_postgres(),
            Backend::Postgres => TestApp::builder(Backend::Postgres),
        };
        let app = builder
            .settings(move |s| {
                let relayed = |url: &Option<secrecy::SecretString>| {
                    use secrecy::ExposeSecret;
                    url.as_ref()
                        .map(|u| secrecy::SecretString::from(via(u.expose_secret(), addr)))
                };
                match (backend, own_url) {
                    (Backend::File, _) => {
                        s.security_log_database_url = relayed(&s.security_log_database_url);
                    }
                    (Backend::Postgres, None) => s.database_url = relayed(&s.database_url),
                    (Backend::Postgres, Some(url)) => {
                        s.security_log_database_url = Some(url.into());
                    }
                }
                s.security_log_dir = Some(spool_dir);
                s.database_connect_timeout_ms = 1000;
                // These tests count one event per refused token.
                s.token_failure_log_threshold = 0;
                tweak(s);
            })
            .spawn()
            .await;
        Some(Outage {
            app,
            forwarder,
            disk,
            spool,
            log_db,
            _root: root,
        })
    }

    /// The log loses its database, and its spool's disk fills up. Returns the filler to delete.
    fn break_log(&self) -> PathBuf {
        self.forwarder.cut();
        self.disk.fill()
    }

    /// Every event kept so far: in the log's table and in the spool, each once.
    async fn events(&self) -> Vec<SecurityEvent> {
        let mut events = match &self.log_db {
            Some(db) => events_from_postgres(db).await,
            None => self.app.events().await,
        };
        events.extend(events_from_files(&self.spool));
        let mut seen = HashSet::new();
        events.retain(|e| seen.insert(e.id));
        events
    }

    async fn health(&self) -> Value {
        let response = self.app.client.get(self.app.url("/health")).send().await;
        response.unwrap().json().await.unwrap()
    }

    async fn dropped(&self) -> f64 {
        metric(&self.app, "flux_auth_security_log_events_dropped_total")
            .await
            .unwrap()
    }

    /// Waits until `/health` says everything is ok again, and returns it.
    async fn recovered(&self) -> Value {
        eventually("health to say ok", PATIENCE, || async {
            let health = self.health().await;
            (health["status"] == "ok").then_some(health)
        })
        .await
    }
}

/// A request carrying `id` as its `X-Request-Id`, so its events can be told apart.
async fn post_as(app: &TestApp, id: &str, path: &str, body: &Value) -> Response {
    app.client
        .post(app.url(path))
        .header("user-agent", UA)
        .header("x-request-id", id)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn login_as(app: &TestApp, id: &str, email: &str, password: &str) -> Response {
    let body = json!({ "email": email, "password": password });
    post_as(app, id, "/api/auth/login", &body).await
}

/// `count` requests with a bad bearer token, with request ids `{prefix}-{i}`.
async fn bad_tokens(app: &TestApp, prefix: &str, count: usize) {
    for i in 0..count {
        let response = app
            .client
            .get(app.url("/api/auth/me"))
            .header("user-agent", UA)
            .header("x-request-id", format!("{prefix}-{i}"))
            .bearer_auth("not-a.real.token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}

fn of_request<'a>(events: &'a [SecurityEvent], id: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e.metadata.get("requestId") == Some(&json!(id)))
        .map(|e| e.event_type.as_str())
        .collect()
}

fn with_prefix(events: &[SecurityEvent], prefix: &str) -> usize {
    events
        .iter()
        .filter(|e| {
            e.metadata
                .get("requestId")
                .and_then(Value::as_str)
                .is_some_and(|id| id.starts_with(prefix))
        })
        .count()
}

/// Sync durability, the log's database cut and its spool's disk full: a login (right or wrong
/// password) and a signup answer 503 instead of succeeding without their events. Nothing they
/// would have granted is left (no account, no usable session), no event says they succeeded, the
/// losses are counted, and once the log recovers the same login works.
#[tokio::test]
async fn sync_durability_fails_requests_whose_events_cannot_be_kept_on_both_stores() {
    for backend in BACKENDS {
        let Some(outage) = Outage::start(backend, LogDatabase::Own, |s| {
            s.security_log_durability = Durability::Sync;
        })
        .await
        else {
            return;
        };
        let app = &outage.app;
        let alice = unique_email();
        let alice_id = app.signed_up(&alice).await["user"]["id"]
            .as_str()
            .unwrap()
            .to_owned();

        let filler = outage.break_log();
        let login = login_as(app, "lost-login", &alice, PASSWORD).await;
        let body = assert_error(
            login,
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
        )
        .await;
        assert!(body.get("accessToken").is_none(), "{body}");
        // A wrong password gets the same answer: the status does not tell a right one.
        let wrong = login_as(app, "lost-wrong", &alice, "not the password at all").await;
        assert_error(
            wrong,
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
        )
        .await;
        let bob = unique_email();
        let signup = json!({ "email": bob, "password": PASSWORD, "name": "Bob" });
        let signup = post_as(app, "lost-signup", "/api/auth/signup", &signup).await;
        assert_error(
            signup,
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
        )
        .await;

        std::fs::remove_file(filler).unwrap();
        outage.forwarder.restore();
        let health = outage.recovered().await;
        assert!(
            health["checks"]["securityLog"]["lastDropAt"].is_string(),
            "{health}"
        );
        assert!(outage.dropped().await >= 3.0);

        // Bob's account was never created, and Alice's only live session is her signup's.
        assert_eq!(
            app.login(&bob, PASSWORD).await.status(),
            StatusCode::UNAUTHORIZED,
            "{backend:?}"
        );
        let sessions: Vec<StoredSession> = app
            .stored_sessions()
            .await
            .into_iter()
            .filter(|s| s.user_id == alice_id)
            .collect();
        let live = sessions
            .iter()
            .filter(|s| s.revoked_reason.is_none())
            .count();
        assert_eq!(live, 1, "{backend:?}: {sessions:?}");
        let events = outage.events().await;
        for (id, types) in [
            ("lost-login", ["login_success", "token_generated"]),
            ("lost-signup", ["signup_success", "token_generated"]),
        ] {
            let recorded = of_request(&events, id);
            assert!(
                types.iter().all(|t| !recorded.contains(t)),
                "{backend:?} {id}: {recorded:?}"
            );
        }
        assert_eq!(
            app.login(&alice, PASSWORD).await.status(),
            StatusCode::OK,
            "{backend:?}"
        );
    }
}

/// The log's database and spool both away, so events are lost; then the database comes back after
/// an outage long enough for the writer's back-off to have grown. Once `/health` has seen the
/// database answer, no further event is lost: the writer does not wait out its back-off.
#[tokio::test]
async fn the_writer_returns_to_the_database_once_health_sees_it_answer_on_both_stores() {
    for backend in BACKENDS {
        let Some(outage) = Outage::start(backend, LogDatabase::Shared, |_| {}).await else {
            return;
        };
        let app = &outage.app;
        let _filler = outage.break_log();
        bad_tokens(app, "during", 10).await;
        eventually("events to be lost", PATIENCE, || async {
            (outage.dropped().await > 0.0).then_some(())
        })
        .await;
        // The outage goes on: the writer's probes fail and its back-off doubles, to 4 s at least.
        eventually("the writer's back-off to grow", PATIENCE, || async {
            let backoff = metric(app, "flux_auth_security_log_probe_backoff_seconds").await;
            (backoff >= Some(4.0)).then_some(())
        })
        .await;

        outage.forwarder.restore();
        eventually("health to see the database", PATIENCE, || async {
            (outage.health().await["checks"]["database"] == "ok").then_some(())
        })
        .await;
        let lost_before = outage.dropped().await;
        bad_tokens(app, "after", 20).await;
        // Each event of these requests is either written or lost: wait until all are accounted.
        let (written, lost) = eventually("the later events", PATIENCE, || async {
            let written = with_prefix(&outage.events().await, "after-");
            let lost = (outage.dropped().await - lost_before) as usize;
            (written + lost >= 20).then_some((written, lost))
        })
        .await;
        assert_eq!((written, lost), (20, 0), "{backend:?}");
    }
}

/// The most probes the writer may make in `elapsed` once probes fail: one already under way, one
/// brought forward by a wake-up at once, then one per back-off wait (0.5 s doubling to 10 s), of
/// the schedule's own and of wake-ups'.
fn probes_allowed(elapsed: Duration) -> u32 {
    let (mut waits, mut waited, mut wait) = (0, Duration::ZERO, Duration::from_millis(500));
    while waited <= elapsed {
        waits += 1;
        waited += wait;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
    2 + 2 * waits
}

/// The log's database answers a ping but refuses every insert (as a read-only standby would; here
/// a trigger refuses them). `/health` sees it answer and wakes the writer, whose probe then fails
/// on the replay: a burst of health checks must not make one probe and replay each, since anyone
/// may call `/health`. The writer's back-off decides; once inserts work again the spool is
/// replayed and health is ok.
#[tokio::test]
async fn health_checks_while_the_log_database_refuses_inserts_do_not_each_cause_a_probe() {
    let Some(app) = TestApp::builder(Backend::Postgres)
        .settings(|s| s.token_failure_log_threshold = 0)
        .try_spawn()
        .await
    else {
        return;
    };
    let pool = app.db.as_ref().unwrap().pool().await;
    refuse_inserts(&pool, "security_events").await;
    bad_tokens(&app, "refused", 3).await;
    let probes = || async {
        metric(&app, "flux_auth_security_log_db_probes_total")
            .await
            .unwrap()
    };
    // The writer has found its inserts refused, and probed (and failed) since.
    eventually("the writer to probe in vain", PATIENCE, || async {
        let up = metric(&app, "flux_auth_security_log_sink_up").await;
        (up == Some(0.0) && probes().await > 0.0).then_some(())
    })
    .await;

    let before = probes().await;
    let started = std::time::Instant::now();
    const CHECKS: u32 = 100;
    for _ in 0..CHECKS {
        let health: Value = app.health().await;
        assert_eq!(health["checks"]["database"], "ok", "{health}");
        assert_eq!(health["status"], "degraded", "{health}");
    }
    let elapsed = started.elapsed();
    let made = (probes().await - before) as u32;
    assert!(
        made <= probes_allowed(elapsed),
        "{made} probes for {CHECKS} health checks in {elapsed:?}"
    );

    sqlx::raw_sql("DROP TRIGGER refuse_inserts ON security_events")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    eventually("the spool replayed", PATIENCE, || async {
        let health: Value = app.health().await;
        (health["status"] == "ok").then_some(())
    })
    .await;
    let events = app.events().await;
    assert_eq!(with_prefix(&events, "refused-"), 3);
}

/// After the outage (database back, disk freed, nothing waiting) `/health` is ok and the log
/// healthy at once, although events were lost: the loss is in `dropped` and `lastDropAt`.
#[tokio::test]
async fn health_is_the_present_with_the_last_loss_apart_on_both_stores() {
    for backend in BACKENDS {
        let Some(outage) = Outage::start(backend, LogDatabase::Shared, |_| {}).await else {
            return;
        };
        let app = &outage.app;
        let filler = outage.break_log();
        bad_tokens(app, "lost", 10).await;
        let health = eventually("the losses in health", PATIENCE, || async {
            let health = outage.health().await;
            (health["checks"]["securityLog"]["dropped"].as_u64() > Some(0)).then_some(health)
        })
        .await;
        assert_eq!(health["status"], "degraded", "{health}");
        assert_eq!(
            health["checks"]["securityLog"]["healthy"], false,
            "{health}"
        );

        std::fs::remove_file(filler).unwrap();
        outage.forwarder.restore();
        let health = outage.recovered().await;
        let log = &health["checks"]["securityLog"];
        assert_eq!(log["healthy"], true, "{backend:?}: {health}");
        assert!(log["dropped"].as_u64() > Some(0), "{health}");
        let last_drop = log["lastDropAt"].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(last_drop).is_ok(),
            "{health}"
        );
        // The log works: a new event is written, and health stays ok.
        bad_tokens(app, "later", 1).await;
        let events = eventually("the later event", PATIENCE, || async {
            let events = outage.events().await;
            (with_prefix(&events, "later-") == 1).then_some(events)
        })
        .await;
        assert_eq!(outage.health().await["status"], "ok");
        // And the log itself says how many events it lost, and when.
        let reports: Vec<&SecurityEvent> = events
            .iter()
            .filter(|e| e.event_type.as_str() == "security_events_dropped")
            .collect();
        let reported: u64 = reports
            .iter()
            .map(|e| e.metadata["count"].as_u64().unwrap())
            .sum();
        assert_eq!(
            Some(reported),
            outage.health().await["checks"]["securityLog"]["dropped"].as_u64(),
            "{backend:?}: {reports:?}"
        );
        assert!(reports.iter().all(|e| e.metadata["lastAt"].is_string()));
    }
}

/// A login whose session cannot be created (Postgres goes away while the password is hashed; the
/// file store's disk is full) answers 503 and records `login_failed` with the reason, never
/// `login_success`.
#[tokio::test]
async fn a_login_whose_session_cannot_be_created_records_a_failure_on_both_stores() {
    for backend in BACKENDS {
        let data = tempfile::tempdir().unwrap();
        let data_dir = data.path().join("data");
        let (app, forwarder, disk) = match backend {
            Backend::Postgres => {
                if !postgres_available().await {
                    return;
                }
                let forwarder = Forwarder::start(postgres_addr().await).await;
                let addr = forwarder.addr();
                let app = TestApp::builder(Backend::Postgres)
                    .settings(move |s| {
                        use secrecy::ExposeSecret;
                        let url = s.database_url.as_ref().unwrap().expose_secret();
                        s.database_url = Some(via(url, addr).into());
                        s.database_connect_timeout_ms = 1000;
                        // A hash long enough to cut the database while it runs.
                        s.argon2_iterations = 40;
                    })
                    .spawn()
                    .await;
                (app, Some(forwarder), None)
            }
            Backend::File => {
                let Some(disk) = SmallDisk::mount(&data_dir, 256 * 1024) else {
                    return;
                };
                let dir = data_dir.clone();
                let app = TestApp::builder(Backend::File)
                    .settings(move |s| s.data_dir = dir)
                    .spawn()
                    .await;
                (app, None, Some(disk))
            }
        };
        let email = unique_email();
        let user_id = app.signed_up(&email).await["user"]["id"]
            .as_str()
            .unwrap()
            .to_owned();

        let filler = disk.as_ref().map(SmallDisk::fill);
        let login = {
            let (client, url, email) = (
                app.client.clone(),
                app.url("/api/auth/login"),
                email.clone(),
            );
            tokio::spawn(async move {
                client
                    .post(url)
                    .header("x-request-id", "no-session")
                    .json(&json!({ "email": email, "password": PASSWORD }))
                    .send()
                    .await
                    .unwrap()
            })
        };
        if let Some(forwarder) = &forwarder {
            eventually("the password hash to start", PATIENCE, || async {
                (metric(&app, "flux_auth_password_hashes_in_flight").await == Some(1.0))
                    .then_some(())
            })
            .await;
            forwarder.cut();
        }
        let login = login.await.unwrap();
        assert_error(
            login,
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
        )
        .await;
        if let Some(forwarder) = &forwarder {
            forwarder.restore();
        }
        if let Some(filler) = filler {
            std::fs::remove_file(filler).unwrap();
        }

        // On Postgres the events went to the spool meanwhile: wait until they are replayed.
        let events = eventually("the login's events", PATIENCE, || async {
            let health: Value = app.health().await;
            let events = app.events().await;
            (health["checks"]["securityLog"]["spooled"] == 0
                && !of_request(&events, "no-session").is_empty())
            .then_some(events)
        })
        .await;
        assert_eq!(
            of_request(&events, "no-session"),
            ["login_failed"],
            "{backend:?}"
        );
        let failed = events
            .iter()
            .find(|e| e.metadata.get("requestId") == Some(&json!("no-session")))
            .unwrap();
        assert_eq!(failed.metadata["reason"], "store_unavailable");
        assert_eq!(failed.user_id.as_deref(), Some(user_id.as_str()));
        // Once the store's probe has found the database back, the same login succeeds.
        eventually("a login after the fault", PATIENCE, || async {
            (app.login(&email, PASSWORD).await.status() == StatusCode::OK).then_some(())
        })
        .await;
    }
}

/// Google sign-in records `oauth_success` only once the session exists: when the session cannot
/// be written (a trigger makes Postgres refuse it, after the account was found and touched) the
/// sign-in fails with `oauth_failed` and its reason, and nothing says it succeeded. On the file
/// store the account and the session are written to one disk, so the session alone cannot be made
/// to fail there; the order is the same code for both stores.
#[tokio::test]
async fn a_google_sign_in_whose_session_cannot_be_created_records_no_success() {
    if !postgres_available().await {
        return;
    }
    let provider = crate::fake_oidc::FakeProvider::start().await;
    let issuer = provider.issuer.clone();
    let app = TestApp::builder(Backend::Postgres)
        .settings(move |s| crate::fake_oidc::configure(s, &issuer))
        .spawn()
        .await;
    let first = provider.id_token(&app, "sub-zoe", "zoe@gmail.com", json!({}));
    let response = post_as(
        &app,
        "google-first",
        "/api/auth/google",
        &json!({ "credential": first }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    let pool = app.db.as_ref().unwrap().pool().await;
    refuse_inserts(&pool, "auth_sessions").await;
    pool.close().await;
    let second = provider.id_token(&app, "sub-zoe", "zoe@gmail.com", json!({ "jti": "second" }));
    let response = post_as(
        &app,
        "google-no-session",
        "/api/auth/google",
        &json!({ "credential": second }),
    )
    .await;
    assert_error(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL_ERROR",
    )
    .await;

    let events = app
        .events_where(|e| !of_request(e, "google-no-session").is_empty())
        .await;
    assert_eq!(of_request(&events, "google-no-session"), ["oauth_failed"]);
    let failed = events
        .iter()
        .find(|e| e.metadata.get("requestId") == Some(&json!("google-no-session")))
        .unwrap();
    assert_eq!(failed.metadata["reason"], "internal_error");
    assert_eq!(
        of_request(&events, "google-first"),
        ["signup_success", "oauth_success", "token_generated"]
    );
}

/// Sync durability and a cap of two sessions per user: while the log cannot keep events, each
/// login is answered 503 and its session withdrawn, and the user's two sessions stay as they were
/// however often the client retries (a sign-in that is withdrawn evicts no other device). Once
/// the log is back, a login that stands evicts the oldest session, once.
#[tokio::test]
async fn a_withdrawn_sign_in_evicts_no_other_session_on_both_stores() {
    for backend in BACKENDS {
        let Some(outage) = Outage::start(backend, LogDatabase::Own, |s| {
            s.security_log_durability = Durability::Sync;
            s.max_sessions_per_user = 2;
        })
        .await
        else {
            return;
        };
        let app = &outage.app;
        let email = unique_email();
        let first = app.signed_up(&email).await;
        let user_id = first["user"]["id"].as_str().unwrap().to_owned();
        let second = app.logged_in(&email).await;

        let filler = outage.break_log();
        for i in 0..3 {
            let login = login_as(app, &format!("withdrawn-{i}"), &email, PASSWORD).await;
            assert_error(
                login,
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
            )
            .await;
        }
        std::fs::remove_file(filler).unwrap();
        outage.forwarder.restore();
        outage.recovered().await;

        let reasons = || async {
            let mut reasons: Vec<String> = app
                .stored_sessions()
                .await
                .into_iter()
                .filter(|s| s.user_id == user_id)
                .map(|s| s.revoked_reason.unwrap_or_else(|| "live".into()))
                .collect();
            reasons.sort();
            reasons
        };
        assert_eq!(
            reasons().await,
            [
                "event_not_kept",
                "event_not_kept",
                "event_not_kept",
                "live",
                "live"
            ],
            "{backend:?}"
        );
        // Both devices are still signed in: their refresh tokens work.
        let mut refreshed = Vec::new();
        for body in [&first, &second] {
            let response = app.refresh(body["refreshToken"].as_str().unwrap()).await;
            assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
            refreshed.push(response.json::<Value>().await.unwrap());
        }

        // A login that stands evicts the oldest session (the signup's), and only it.
        app.logged_in(&email).await;
        assert_eq!(
            reasons().await,
            [
                "event_not_kept",
                "event_not_kept",
                "event_not_kept",
                "live",
                "live",
                "session_limit"
            ],
            "{backend:?}"
        );
        assert_eq!(
            app.refresh(refreshed[0]["refreshToken"].as_str().unwrap())
                .await
                .status(),
            StatusCode::UNAUTHORIZED,
            "{backend:?}: the signup's session was evicted"
        );
        assert_eq!(
            app.refresh(refreshed[1]["refreshToken"].as_str().unwrap())
                .await
                .status(),
            StatusCode::OK,
            "{backend:?}"
        );
    }
}

/// Makes every insert into `table` fail, as a database that refuses writes (a full disk, a
/// revoked grant) would, while reads and the connection itself keep working. Undone by
/// `DROP TRIGGER refuse_inserts ON <table>`.
async fn refuse_inserts(pool: &sqlx::PgPool, table: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE OR REPLACE FUNCTION refuse_inserts() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'inserts refused'; END $$; \
         CREATE TRIGGER refuse_inserts BEFORE INSERT ON {table} \
         FOR EACH STATEMENT EXECUTE FUNCTION refuse_inserts();"
    )))
    .execute(pool)
    .await
    .unwrap();
}
