//! `TestApp`: the real flux-auth on port 0 with its own data folder and, for Postgres, its own
//! database (created here, dropped when the test ends). One method per endpoint.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use flux_auth::app::App;
use flux_auth::config::{Settings, StorageKind};
use flux_auth::security_log::SecurityEvent;
use reqwest::{Client, Response, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const JWT_SECRET: &str = "test-secret-5f0c1f2e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
pub const PASSWORD: &str = "violet tractor hums at dawn";
pub const UA: &str =
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    File,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::File, Backend::Postgres];

/// The server URL for tests: `TEST_DATABASE_URL` or the local default. Under `CI` a missing server
/// fails the test; elsewhere the test says loudly that it was skipped.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub async fn postgres_available() -> bool {
    match PgConnection::connect(&postgres_admin_url()).await {
        Ok(conn) => {
            let _ = conn.close().await;
            true
        }
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "Postgres is required in CI but did not answer at {}: {e}",
                    postgres_admin_url()
                );
            }
            eprintln!(
                "!!! SKIPPED: Postgres not reachable at {} ({e}); start it to run this test",
                postgres_admin_url()
            );
            false
        }
    }
}

/// A database of its own, dropped (with its connections) when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("flux_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&postgres_admin_url())
            .await
            .expect("connect to postgres");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let base = postgres_admin_url();
        let url = match base.rsplit_once('/') {
            Some((prefix, _)) => format!("{prefix}/{name}"),
            None => panic!("TEST_DATABASE_URL must end in /<database>"),
        };
        Self { name, url }
    }

    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async; a short-lived thread with its own runtime does the cleanup.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&postgres_admin_url()).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Settings for a test: port 0 on loopback, its own folder, a fixed strong secret.
pub fn test_settings(dir: &std::path::Path) -> Settings {
    Settings {
        host: "127.0.0.1".parse().unwrap(),
        port: 0,
        jwt_secret: Some(SecretString::from(JWT_SECRET)),
        data_dir: dir.join("data"),
        security_log_dir: Some(dir.join("events")),
        ..Settings::default()
    }
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub client: Client,
    pub dir: tempfile::TempDir,
    pub db: Option<TestDb>,
    pub backend: Backend,
    pub settings: Settings,
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

pub struct TestAppBuilder {
    backend: Backend,
    tweak: Vec<Box<dyn FnOnce(&mut Settings)>>,
    events_in_postgres: bool,
}

impl TestAppBuilder {
    pub fn settings(mut self, f: impl FnOnce(&mut Settings) + 'static) -> Self {
        self.tweak.push(Box::new(f));
        self
    }

    /// Users in JSON files with security events in Postgres: the old production setup.
    pub fn events_in_postgres(mut self) -> Self {
        self.events_in_postgres = true;
        self
    }

    /// `None` when the test needs Postgres and it is absent outside CI (the skip is announced).
    pub async fn try_spawn(self) -> Option<TestApp> {
        let needs_pg = self.backend == Backend::Postgres || self.events_in_postgres;
        if needs_pg && !postgres_available().await {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = test_settings(dir.path());
        let db = if needs_pg {
            Some(TestDb::create().await)
        } else {
            None
        };
        if let Some(db) = &db {
            match self.backend {
                Backend::Postgres => {
                    settings.storage = Some(StorageKind::Postgres);
                    settings.database_url = Some(SecretString::from(db.url.clone()));
                }
                Backend::File => {
                    settings.storage = Some(StorageKind::File);
                    settings.security_log_database_url = Some(SecretString::from(db.url.clone()));
                }
            }
        }
        for f in self.tweak {
            f(&mut settings);
        }
        Some(TestApp::start(settings, dir, db, self.backend).await)
    }

    pub async fn spawn(self) -> TestApp {
        self.try_spawn().await.expect("postgres unavailable")
    }
}

impl TestApp {
    pub fn builder(backend: Backend) -> TestAppBuilder {
        TestAppBuilder {
            backend,
            tweak: Vec::new(),
            events_in_postgres: false,
        }
    }

    /// The app on `backend`; `None` (announced) when that needs Postgres and it is absent outside CI.
    pub async fn try_spawn(backend: Backend) -> Option<TestApp> {
        Self::builder(backend).try_spawn().await
    }

    pub async fn start(
        settings: Settings,
        dir: tempfile::TempDir,
        db: Option<TestDb>,
        backend: Backend,
    ) -> TestApp {
        let app = App::build(settings.clone()).await.expect("app builds");
        let port = app.port();
        if settings.database_url.is_some() || settings.security_log_database_url.is_some() {
            wait_until_ready(app.state()).await;
        }
        let stop = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            client: Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            dir,
            db,
            backend,
            settings,
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the server and waits for it to drain (every recorded event is then on disk or in
    /// the database).
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.settings.data_dir.clone()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .header("user-agent", UA)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json_auth(&self, path: &str, token: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .header("user-agent", UA)
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .header("user-agent", UA)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn signup(&self, email: &str, password: &str, name: &str) -> Response {
        self.post_json(
            "/api/auth/signup",
            &json!({ "email": email, "password": password, "name": name }),
        )
        .await
    }

    /// Signs a user up and returns the AuthResponse body.
    pub async fn signed_up(&self, email: &str) -> Value {
        let response = self.signup(email, PASSWORD, "Test User").await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_json(
            "/api/auth/login",
            &json!({ "email": email, "password": password }),
        )
        .await
    }

    pub async fn me(&self, token: &str) -> Response {
        self.get_auth("/api/auth/me", token).await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post_json(
            "/api/auth/refresh",
            &json!({ "refreshToken": refresh_token }),
        )
        .await
    }

    pub async fn logout(&self, token: &str) -> Response {
        self.client
            .post(self.url("/api/auth/logout"))
            .header("user-agent", UA)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Every security event recorded so far, oldest first, waiting until `ready` holds for them
    /// (the writer flushes within milliseconds; this polls, bounded at 10 s).
    pub async fn events_where(
        &self,
        ready: impl Fn(&[SecurityEvent]) -> bool,
    ) -> Vec<SecurityEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events().await;
            if ready(&events) || tokio::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until an event of `event_type` has been recorded, and returns all of that type.
    pub async fn events_of(&self, event_type: &str) -> Vec<SecurityEvent> {
        self.events_where(|evs| evs.iter().any(|e| e.event_type.as_str() == event_type))
            .await
            .into_iter()
            .filter(|e| e.event_type.as_str() == event_type)
            .collect()
    }

    /// The events in the sink: the Postgres table when the log has a database, else the files.
    pub async fn events(&self) -> Vec<SecurityEvent> {
        let mut events = match (
            &self.db,
            self.settings.security_log_database_url().is_some(),
        ) {
            (Some(db), true) => events_from_postgres(db).await,
            _ => events_from_files(&self.settings.security_log_dir()),
        };
        events.sort_by_key(|e| e.id);
        events
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn wait_until_ready(state: &flux_auth::app::AppState) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        let store_ok = state.auth.store.ping().await.is_ok();
        let log_ok = state.security_db.as_ref().is_none_or(|db| db.is_ready());
        if store_ok && log_ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("test database did not become ready");
}

pub fn events_from_files(dir: &std::path::Path) -> Vec<SecurityEvent> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut events = Vec::new();
    for entry in entries.flatten() {
        if let Ok(read) = flux_auth::security_log::spool::read_file(&entry.path()) {
            events.extend(read.events);
        }
    }
    events
}

pub async fn events_from_postgres(db: &TestDb) -> Vec<SecurityEvent> {
    let pool = db.pool().await;
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT json_build_object('id', id, 'event_type', event_type, 'severity', severity, 'user_id', user_id, \
         'token_id', token_id, 'ip_address', ip_address, 'user_agent', user_agent, 'metadata', metadata, \
         'created_at', created_at)::jsonb FROM security_events",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_default();
    pool.close().await;
    rows.into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

/// Asserts the Error shape of API.md and returns the body.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "unexpected status");
    let content_type = response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["message"], body["error"], "{body}");
    assert!(
        body["requestId"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    body
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}
