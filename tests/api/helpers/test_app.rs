//! `TestApp`: the real flux-auth on port 0 with its own data folder and, for Postgres, its own
//! database (created here, dropped when the test ends). One method per endpoint.

use std::path::PathBuf;
use std::time::Duration;

use flux_auth::app::App;
use flux_auth::config::{Settings, StorageKind};
use reqwest::{Client, Response, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{JWT_SECRET, PASSWORD, TestDb, UA, postgres_available};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    File,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::File, Backend::Postgres];

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
    pub state: flux_auth::state::AppState,
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

    /// The app on `backend`; `None` (announced) when that needs Postgres and it is absent outside
    /// CI.
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

    /// `GET /health`'s body (whatever its status: 503 when degraded is still a report).
    pub async fn health(&self) -> Value {
        self.client
            .get(self.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
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
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn wait_until_ready(state: &flux_auth::state::AppState) {
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
