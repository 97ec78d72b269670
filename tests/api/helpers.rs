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

/// Settings for a test: port 0 on loopback, its own folder, a fixed strong secret. Rate limits
/// are off (every test client is 127.0.0.1); the limits tests turn them on, with Redis under a key
/// prefix of their own.
pub fn test_settings(dir: &std::path::Path) -> Settings {
    Settings {
        host: "127.0.0.1".parse().unwrap(),
        port: 0,
        jwt_secret: Some(SecretString::from(JWT_SECRET)),
        data_dir: dir.join("data"),
        security_log_dir: Some(dir.join("events")),
        rate_limits: flux_auth::config::Switch::Off,
        redis_key_prefix: format!("flux-test-{}:", uuid::Uuid::new_v4().simple()),
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
    clock: flux_auth::clock::Clock,
    /// The running app's state, for tests that call library functions (cleanup) directly.
    pub state: flux_auth::app::AppState,
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A change to the settings before the app starts.
type SettingsTweak = Box<dyn FnOnce(&mut Settings)>;

pub struct TestAppBuilder {
    backend: Backend,
    tweak: Vec<SettingsTweak>,
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
        let clock = app.state().clock.clone();
        let state = app.state().clone();
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
            clock,
            state,
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

    /// The app's clock: tests move it forward instead of sleeping through lockouts.
    pub fn clock(&self) -> flux_auth::clock::Clock {
        self.clock.clone()
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

// ---- Tokens, refresh rotation and sessions (tokens.rs, refresh.rs, sessions.rs) ----

/// Unpadded base64url of a JSON value: one segment of a hand-built JWT.
pub fn b64url_json(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

/// The claims of a JWT the server issued, read without verifying it.
pub fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The session (refresh-token family) of an access token: its `sid` claim.
pub fn session_of(access_token: &str) -> uuid::Uuid {
    jwt_claims(access_token)["sid"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("sid claim")
}

/// Hex SHA-256: the only stored form of a refresh token.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

pub fn count_of(events: &[SecurityEvent], event_type: &str) -> usize {
    events
        .iter()
        .filter(|e| e.event_type.as_str() == event_type)
        .count()
}

/// Every file under `dir`, concatenated (lossy UTF-8): for "this never reaches the disk" checks.
pub fn files_text(dir: &std::path::Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            text.push_str(&files_text(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    text
}

/// A session as stored, whichever the backend.
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub id: uuid::Uuid,
    pub user_id: String,
    pub fingerprint: String,
    pub revoked_reason: Option<String>,
}

/// A refresh token as stored: its id, family and hash, and whether it was rotated.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub id: uuid::Uuid,
    pub session_id: uuid::Uuid,
    pub token_hash: String,
    pub rotated: bool,
}

/// When a session was created, last used, and ends (absolutely).
#[derive(Debug, Clone, Copy)]
pub struct SessionTimes {
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub last_used_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl TestApp {
    /// Logs in with `PASSWORD` and returns the AuthResponse body.
    pub async fn logged_in(&self, email: &str) -> Value {
        let response = self.login(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Stops this app and starts another on the same data folder, events folder and database,
    /// with `tweak` applied to a copy of the settings. The new app reads its store afresh.
    pub async fn restart_with(mut self, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        self.stop().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        let db = self.db.take();
        let mut settings = self.settings.clone();
        tweak(&mut settings);
        TestApp::start(settings, dir, db, self.backend).await
    }

    /// Edits the JSON-file store while no app is running, then starts a new app on it.
    async fn edit_data_file(self, file: &str, edit: impl FnOnce(&mut Value)) -> TestApp {
        assert_eq!(self.backend, Backend::File);
        let mut app = self;
        app.stop().await;
        if file == "sessions.json" {
            // Fold the journal into sessions.json first, so that the edit is the whole state.
            flux_auth::store::json_file::compact_sessions(&app.data_dir()).unwrap();
        }
        let path = app.data_dir().join(file);
        let mut value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut value);
        std::fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
        app.restart_with(|_| {}).await
    }

    /// Rewrites the times of stored sessions: SQL on Postgres; on files the app is stopped,
    /// `sessions.json` edited and a new app started on the same folder. Use the returned app.
    pub async fn with_session_times(self, edits: &[(uuid::Uuid, SessionTimes)]) -> TestApp {
        if self.backend == Backend::Postgres {
            let pool = self.db.as_ref().unwrap().pool().await;
            for (id, t) in edits {
                let done = sqlx::query(
                    "UPDATE auth_sessions SET created_at = $2, last_used_at = $3, expires_at = $4 WHERE id = $1",
                )
                .bind(id)
                .bind(t.created_at)
                .bind(t.last_used_at)
                .bind(t.expires_at)
                .execute(&pool)
                .await
                .unwrap();
                assert_eq!(done.rows_affected(), 1, "session {id}");
            }
            pool.close().await;
            return self;
        }
        self.edit_data_file("sessions.json", |file| {
            for (id, t) in edits {
                let session = file["sessions"]
                    .as_array_mut()
                    .unwrap()
                    .iter_mut()
                    .find(|s| s["id"] == id.to_string())
                    .unwrap_or_else(|| panic!("session {id}"));
                session["createdAt"] = t.created_at.to_rfc3339().into();
                session["lastUsedAt"] = t.last_used_at.to_rfc3339().into();
                session["expiresAt"] = t.expires_at.to_rfc3339().into();
            }
        })
        .await
    }

    /// Deletes a user from the store behind the service's back (an operator removing an account).
    pub async fn delete_user(self, id: &str) -> TestApp {
        if self.backend == Backend::Postgres {
            let done = change_users_by_sql(&self, "DELETE FROM users WHERE id = $1", id).await;
            assert_eq!(done, 1);
            return self;
        }
        self.edit_data_file("users.json", |file| {
            let users = file["users"].as_array_mut().unwrap();
            let before = users.len();
            users.retain(|u| u["id"] != id);
            assert_eq!(users.len(), before - 1);
        })
        .await
    }

    pub async fn stored_sessions(&self) -> Vec<StoredSession> {
        match self.backend {
            Backend::Postgres => {
                let pool = self.db.as_ref().unwrap().pool().await;
                let rows: Vec<(uuid::Uuid, String, String, Option<String>)> = sqlx::query_as(
                    "SELECT id, user_id, fingerprint, revoked_reason FROM auth_sessions",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                pool.close().await;
                rows.into_iter()
                    .map(|(id, user_id, fingerprint, revoked_reason)| StoredSession {
                        id,
                        user_id,
                        fingerprint,
                        revoked_reason,
                    })
                    .collect()
            }
            Backend::File => self.sessions_file()["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| StoredSession {
                    id: s["id"].as_str().unwrap().parse().unwrap(),
                    user_id: s["userId"].as_str().unwrap().to_owned(),
                    fingerprint: s["fingerprint"].as_str().unwrap().to_owned(),
                    revoked_reason: s["revokedReason"].as_str().map(str::to_owned),
                })
                .collect(),
        }
    }

    pub async fn stored_refresh_tokens(&self) -> Vec<StoredToken> {
        match self.backend {
            Backend::Postgres => {
                let pool = self.db.as_ref().unwrap().pool().await;
                let rows: Vec<(uuid::Uuid, uuid::Uuid, String, bool)> = sqlx::query_as(
                    "SELECT id, session_id, token_hash, rotated_at IS NOT NULL FROM refresh_tokens",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                pool.close().await;
                rows.into_iter()
                    .map(|(id, session_id, token_hash, rotated)| StoredToken {
                        id,
                        session_id,
                        token_hash,
                        rotated,
                    })
                    .collect()
            }
            Backend::File => self.sessions_file()["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| StoredToken {
                    id: t["id"].as_str().unwrap().parse().unwrap(),
                    session_id: t["sessionId"].as_str().unwrap().parse().unwrap(),
                    token_hash: t["tokenHash"].as_str().unwrap().to_owned(),
                    rotated: !t["rotatedAt"].is_null(),
                })
                .collect(),
        }
    }

    /// Every row of the service's tables as text (empty on the file store, whose data is files).
    pub async fn stored_text(&self) -> String {
        let Some(db) = &self.db else {
            return String::new();
        };
        let pool = db.pool().await;
        let mut text = String::new();
        for table in [
            "users",
            "auth_sessions",
            "refresh_tokens",
            "security_events",
        ] {
            let sql = format!("SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM {table} t");
            let rows: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .unwrap_or_default();
            text.push_str(&rows);
        }
        pool.close().await;
        text
    }

    /// The file store's sessions as `{"sessions":[...],"tokens":[...]}`: sessions.json with
    /// sessions.journal applied.
    fn sessions_file(&self) -> Value {
        flux_auth::store::json_file::read_sessions(&self.data_dir()).unwrap()
    }
}

/// The Redis for tests: `TEST_REDIS_URL` or the local default. Absent: fails under `CI`, else the
/// test announces that it was skipped.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub async fn redis_available() -> bool {
    let ping = async {
        let client = redis::Client::open(redis_url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(3), ping).await {
        Ok(Ok(_)) => true,
        outcome => {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "Redis is required in CI but did not answer at {}: {outcome:?}",
                    redis_url()
                );
            }
            eprintln!(
                "!!! SKIPPED: Redis not reachable at {} ({outcome:?}); start it to run this test",
                redis_url()
            );
            false
        }
    }
}

/// A direct connection to the test Redis, for looking at the keys the app wrote.
pub async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Grants admin as an operator would: the CLI on the file store, SQL on Postgres.
pub async fn make_admin(app: &TestApp, email: &str) {
    set_user_type(app, email, "admin").await;
}

/// Changes a user's type as an operator would: the CLI on the file store, SQL on Postgres.
pub async fn set_user_type(app: &TestApp, email: &str, user_type: &'static str) {
    if app.backend == Backend::Postgres {
        let sql = format!("UPDATE users SET user_type = '{user_type}' WHERE email = $1");
        change_users_by_sql(app, &sql, email).await;
        return;
    }
    let data_dir = app.data_dir();
    let email = email.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_flux-auth"))
            .args(["users", "set-type", &email, user_type])
            .env("CONFIG_FILE", "/dev/null")
            .env("DATA_DIR", &data_dir)
            .env("SECURITY_LOG_DIR", data_dir.join("cli-events"))
            .env("JWT_SECRET", JWT_SECRET)
            .env_remove("DATABASE_URL")
            .env_remove("SECURITY_LOG_DATABASE_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `sql` (one `$1`, bound to `value`) on the app's database behind its back, as an operator
/// would, and returns the rows it touched. When the app keeps users in memory, first waits until
/// it follows Postgres's announcements of user changes, and after the change until it has heard
/// everything committed before it: Postgres delivers notifications in commit order, so once a
/// heartbeat the app sent after the change has come back, so has the change's announcement.
pub async fn change_users_by_sql(app: &TestApp, sql: &str, value: &str) -> u64 {
    let cached = metric(app, "flux_auth_user_cache_following")
        .await
        .is_some();
    if cached {
        user_cache_following(app, 1.0).await;
    }
    let pool = app.db.as_ref().expect("a Postgres app").pool().await;
    let done = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(value)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    if cached {
        user_cache_caught_up(app).await;
    }
    done.rows_affected()
}

/// Waits until the app has heard every user change committed before this call (see
/// [`change_users_by_sql`]).
pub async fn user_cache_caught_up(app: &TestApp) {
    let sent = metric(app, "flux_auth_user_cache_heartbeats_sent_total")
        .await
        .expect("the app keeps users in memory");
    eventually(
        "a heartbeat sent after the change to come back",
        MIRROR_PATIENCE,
        || async {
            (metric(app, "flux_auth_user_cache_heartbeat_heard").await >= Some(sent + 1.0))
                .then_some(())
        },
    )
    .await;
}

/// Waits until `flux_auth_user_cache_following` is `expected` (1: users served from memory).
pub async fn user_cache_following(app: &TestApp, expected: f64) {
    eventually("the user cache's feed state", MIRROR_PATIENCE, || async {
        (metric(app, "flux_auth_user_cache_following").await == Some(expected)).then_some(())
    })
    .await;
}

/// How long a test waits for something carried by pub/sub or `LISTEN`: generous for a loaded CI
/// machine; the real figure is one delivery, or a second's heartbeat.
pub const MIRROR_PATIENCE: Duration = Duration::from_secs(10);

/// Polls `probe` until it yields a value; fails the test after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of an unlabelled metric in `/metrics`, if the service exposes it.
pub async fn metric(app: &TestApp, name: &str) -> Option<f64> {
    metric_at(&app.client, &app.url("/metrics"), name).await
}

/// The value of an unlabelled metric in the exposition at `url`, if it is there.
pub async fn metric_at(client: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = client.get(url).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}
