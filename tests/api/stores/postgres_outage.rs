//! Postgres away, through a `Forwarder` the test cuts: unreachable at start, the service serves
//! degraded and recovers by itself; cut under load, security events go to the spool and reach the
//! table once it is back.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flux_auth::app::App;
use flux_auth::config::{StorageKind, Switch};
use futures::future::join_all;
use reqwest::{Client, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::fixtures::*;
use crate::forwarder::{Forwarder, postgres_addr, via};
use crate::helpers::*;

/// The app served without waiting for its database (which `TestApp::start` does).
struct Served {
    address: String,
    client: Client,
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Served {
    fn run(app: App) -> Served {
        let stop = CancellationToken::new();
        let address = format!("http://127.0.0.1:{}", app.port());
        let handle = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
        Served {
            address,
            client: Client::new(),
            stop,
            handle: Some(handle),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    async fn health(&self) -> Value {
        let response = self.get("/health").await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("user-agent", UA)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    fn running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().expect("stopped cleanly");
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn assert_unavailable(response: reqwest::Response) {
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        retry_after
            .as_deref()
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s > 0)),
        "Retry-After: {retry_after:?}"
    );
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "SERVICE_UNAVAILABLE",
    )
    .await;
}

#[tokio::test]
async fn postgres_down_at_start_serves_degraded_and_recovers_by_itself() {
    if !postgres_available().await {
        return;
    }
    let forwarder = Forwarder::start(postgres_addr().await).await;
    forwarder.cut();
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.storage = Some(StorageKind::Postgres);
    settings.database_url = Some(SecretString::from(via(&db.url, forwarder.addr())));
    settings.database_connect_timeout_ms = 1000;
    let app = App::build(settings)
        .await
        .expect("starts with the database unreachable");
    let served = Served::run(app);

    let health = served.health().await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["checks"]["database"], "error", "{health}");
    assert_eq!(health["checks"]["storageType"], "postgresql", "{health}");
    assert!(
        !health.to_string().contains(&db.name),
        "no connection string in health"
    );
    assert_eq!(served.get("/health/live").await.status(), StatusCode::OK);
    assert_eq!(
        served.get("/health/ready").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let email = unique_email();
    let credentials = json!({ "email": email, "password": PASSWORD, "name": "Outage" });
    assert_unavailable(served.post("/api/auth/signup", &credentials).await).await;
    assert_unavailable(served.post("/api/auth/login", &credentials).await).await;

    forwarder.restore();
    eventually(
        "/health/ready to turn 200",
        Duration::from_secs(60),
        || async { (served.get("/health/ready").await.status() == StatusCode::OK).then_some(()) },
    )
    .await;
    let signup = served.post("/api/auth/signup", &credentials).await;
    assert_eq!(signup.status(), StatusCode::CREATED);
    let login = served.post("/api/auth/login", &credentials).await;
    assert_eq!(login.status(), StatusCode::OK);
    let health = eventually("/health to say ok", Duration::from_secs(60), || async {
        let health = served.health().await;
        (health["status"] == "ok").then_some(health)
    })
    .await;
    assert_eq!(health["checks"]["database"], "ok", "{health}");
    assert!(served.running(), "recovered without a restart");

    // The same once it is running: a cut answers 503 (never 500), and the service comes back.
    forwarder.cut();
    let another = json!({ "email": unique_email(), "password": PASSWORD, "name": "Outage" });
    assert_unavailable(served.post("/api/auth/signup", &another).await).await;
    assert_unavailable(served.post("/api/auth/login", &credentials).await).await;
    assert_eq!(
        served.get("/health/ready").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(served.health().await["status"], "degraded");
    forwarder.restore();
    eventually(
        "/health/ready to turn 200 again",
        Duration::from_secs(60),
        || async { (served.get("/health/ready").await.status() == StatusCode::OK).then_some(()) },
    )
    .await;
    let login = served.post("/api/auth/login", &credentials).await;
    assert_eq!(login.status(), StatusCode::OK);

    let pool = db.pool().await;
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = $1")
        .bind(&email)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(users, 1);
    served.stop().await;
}

/// `(event_type, severity, user_id, ip_address, requestId, created_at)` of the rows recorded for
/// the given request ids.
type EventRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
);

async fn rows_for(db: &TestDb, request_ids: &[String]) -> Vec<EventRow> {
    let pool = db.pool().await;
    let rows = sqlx::query_as(
        "SELECT event_type, severity, user_id, ip_address, metadata->>'requestId', created_at \
         FROM security_events WHERE metadata->>'requestId' = ANY($1) ORDER BY created_at, id",
    )
    .bind(request_ids)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

async fn post_with_id(
    app: &TestApp,
    path: &str,
    body: &Value,
    request_id: &str,
    expected: StatusCode,
) -> Value {
    let response = app
        .client
        .post(app.url(path))
        .header("user-agent", UA)
        .header("x-request-id", request_id)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, expected, "{path} {request_id}: {body}");
    body
}

#[tokio::test]
async fn events_reach_postgres_and_survive_a_database_outage_through_the_spool() {
    if !postgres_available().await {
        return;
    }
    let forwarder = Forwarder::start(postgres_addr().await).await;
    let through = forwarder.addr();
    let Some(mut app) = TestApp::builder(Backend::File)
        .events_in_postgres()
        .settings(move |s| {
            let direct = s
                .security_log_database_url
                .as_ref()
                .expect("events_in_postgres sets the log database")
                .expose_secret()
                .to_owned();
            s.security_log_database_url = Some(SecretString::from(via(&direct, through)));
            s.database_connect_timeout_ms = 1000;
            s.rate_limits = Switch::Off;
        })
        .try_spawn()
        .await
    else {
        return;
    };
    let db = app.db.take().expect("the events database");
    let started = Utc::now();
    let email = unique_email();
    let credentials = json!({ "email": email, "password": PASSWORD, "name": "Spool Test" });
    let signup = post_with_id(
        &app,
        "/api/auth/signup",
        &credentials,
        "stores-signup",
        StatusCode::CREATED,
    )
    .await;
    let user_id = signup["user"]["id"].as_str().unwrap().to_owned();
    let login = post_with_id(
        &app,
        "/api/auth/login",
        &credentials,
        "stores-login",
        StatusCode::OK,
    )
    .await;

    let ids = ["stores-signup".to_owned(), "stores-login".to_owned()];
    let rows = eventually("signup and login rows", Duration::from_secs(10), || async {
        let rows = rows_for(&db, &ids).await;
        (rows.len() >= 4).then_some(rows)
    })
    .await;
    let finished = Utc::now();
    for (event_type, request_id) in [
        ("signup_success", "stores-signup"),
        ("token_generated", "stores-signup"),
        ("login_success", "stores-login"),
        ("token_generated", "stores-login"),
    ] {
        let row = rows
            .iter()
            .find(|r| r.0 == event_type && r.4.as_deref() == Some(request_id))
            .unwrap_or_else(|| panic!("no {event_type} row for {request_id}: {rows:?}"));
        assert_eq!(row.1, "info", "{row:?}");
        assert_eq!(row.2.as_deref(), Some(user_id.as_str()), "{row:?}");
        assert_eq!(row.3.as_deref(), Some("127.0.0.1"), "{row:?}");
        assert!(
            row.5 >= started - secs(1) && row.5 <= finished + secs(1),
            "created_at {} is when it happened",
            row.5
        );
    }

    // The database goes away: logins carry on unchanged and their events go to the spool.
    forwarder.cut();
    let outage_ids: Vec<String> = (0..30).map(|i| format!("stores-outage-{i}")).collect();
    let logins = join_all(
        outage_ids
            .iter()
            .map(|id| post_with_id(&app, "/api/auth/login", &credentials, id, StatusCode::OK)),
    )
    .await;
    let keys = |v: &Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<String>>()
    };
    for body in &logins {
        assert_eq!(keys(body), keys(&login), "same AuthResponse shape");
        assert_eq!(body["user"]["id"], login["user"]["id"]);
        assert_eq!(body["user"]["email"], login["user"]["email"]);
    }
    let spool_dir = app.settings.security_log_dir();
    let spooled = eventually(
        "the outage's logins in the spool",
        Duration::from_secs(30),
        || async {
            let events = events_from_files(&spool_dir);
            let logged: HashSet<&str> = events
                .iter()
                .filter(|e| e.event_type.as_str() == "login_success")
                .filter_map(|e| e.metadata.get("requestId").and_then(Value::as_str))
                .collect();
            outage_ids
                .iter()
                .all(|id| logged.contains(id.as_str()))
                .then_some(events)
        },
    )
    .await;
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["checks"]["database"], "error", "{health}");
    assert!(
        health["checks"]["securityLog"]["spooled"]
            .as_i64()
            .is_some_and(|n| n > 0),
        "{health}"
    );

    // Back again: the spool drains by itself, every event once.
    forwarder.restore();
    let spooled_ids: Vec<Uuid> = spooled.iter().map(|e| e.id).collect();
    eventually("the spool to drain", Duration::from_secs(60), || async {
        let pool = db.pool().await;
        let present: i64 =
            sqlx::query_scalar("SELECT count(*) FROM security_events WHERE id = ANY($1)")
                .bind(&spooled_ids)
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        let health = app.client.get(app.url("/health")).send().await.unwrap();
        let health: Value = health.json().await.unwrap();
        (present == spooled_ids.len() as i64
            && health["checks"]["securityLog"]["spooled"] == 0
            && health["status"] == "ok")
            .then_some(())
    })
    .await;
    let rows = rows_for(&db, &outage_ids).await;
    for id in &outage_ids {
        let logged: Vec<&EventRow> = rows
            .iter()
            .filter(|r| r.0 == "login_success" && r.4.as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(logged.len(), 1, "login {id} recorded once: {logged:?}");
    }
    let pool = db.pool().await;
    let table_ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM security_events")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    let distinct: HashSet<&Uuid> = table_ids.iter().collect();
    assert_eq!(distinct.len(), table_ids.len(), "each event id once");
    assert!(
        events_from_files(&spool_dir).is_empty(),
        "replayed spool files are deleted"
    );
    app.stop().await;
}
