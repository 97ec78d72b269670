//! Operations: `/health` and its probes as docs/API.md describes them, the `flux-auth` binary as
//! pm2, systemd and Docker run it (a real child process: signals, exit codes, CLI commands), and
//! the shipped `.env.example` and `config/default.toml`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flux_auth::config::Settings;
use reqwest::{Client, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::helpers::*;

/// The shutdown deadline this service promises (SHUTDOWN_TIMEOUT_MS 1.2 s plus the flush, inside
/// pm2's default kill timeout of 1.6 s), with slack for a loaded CI machine.
const STOP_BOUND: Duration = Duration::from_secs(3);
/// Upper bound for `/health` to show the first flush.
const PATIENCE: Duration = Duration::from_secs(30);

// ---- /health ------------------------------------------------------------------------------------

/// `/health`, polled until the security log has flushed at least once (the start event), so that
/// `lastFlushAt` is a timestamp rather than null.
async fn health_after_first_flush(client: &Client, base: &str) -> Value {
    eventually("the security log's first flush", PATIENCE, || async {
        let response = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        let body: Value = response.json().await.unwrap();
        body["checks"]["securityLog"]["lastFlushAt"]
            .is_string()
            .then_some(body)
    })
    .await
}

fn sorted_keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn assert_timestamp(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    assert!(text.ends_with('Z'), "{text} is not UTC");
    chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"));
}

/// The shape of docs/API.md's Health section, whatever the backend.
fn assert_health_shape(body: &Value, port: u16, pid: u32) {
    assert_eq!(
        sorted_keys(body),
        [
            "checks",
            "pid",
            "port",
            "service",
            "status",
            "timestamp",
            "uptime",
            "version"
        ],
        "{body}"
    );
    assert!(
        matches!(body["status"].as_str(), Some("ok" | "degraded")),
        "{body}"
    );
    assert_eq!(body["service"], "auth-service");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["port"], port, "the port actually listened on");
    assert!(body["uptime"].is_u64(), "{body}");
    assert_timestamp(&body["timestamp"]);
    assert_eq!(body["pid"], pid);

    let checks = &body["checks"];
    assert_eq!(
        sorted_keys(checks),
        [
            "alerts",
            "database",
            "mail",
            "oauth",
            "redis",
            "securityLog",
            "storageType"
        ],
        "{checks}"
    );
    assert!(
        matches!(
            checks["database"].as_str(),
            Some("ok" | "error" | "not_configured")
        ),
        "{checks}"
    );
    assert!(
        matches!(checks["storageType"].as_str(), Some("postgresql" | "file")),
        "{checks}"
    );
    assert!(
        matches!(
            checks["redis"].as_str(),
            Some("ok" | "error" | "not_configured")
        ),
        "{checks}"
    );
    assert!(
        matches!(
            checks["oauth"].as_str(),
            Some("configured" | "not_configured")
        ),
        "{checks}"
    );
    let log = &checks["securityLog"];
    for key in ["sink", "queued", "spooled", "lastFlushAt"] {
        assert!(log.get(key).is_some(), "securityLog.{key} missing: {log}");
    }
    assert!(
        matches!(log["sink"].as_str(), Some("postgresql" | "file")),
        "{log}"
    );
    assert!(log["queued"].is_u64(), "{log}");
    assert!(log["spooled"].is_u64(), "{log}");
    assert_timestamp(&log["lastFlushAt"]);
    let alerts = &checks["alerts"];
    for key in [
        "receivers",
        "pending",
        "oldestPendingAgeSecs",
        "dead",
        "sent",
    ] {
        assert!(alerts[key].is_u64(), "alerts.{key}: {alerts}");
    }
}

#[tokio::test]
async fn health_on_the_file_store_has_the_api_md_shape() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let body = health_after_first_flush(&app.client, &app.address).await;
    assert_health_shape(&body, app.port, std::process::id());
    assert_eq!(body["status"], "ok", "{body}");
    let checks = &body["checks"];
    assert_eq!(checks["database"], "not_configured");
    assert_eq!(checks["storageType"], "file");
    assert_eq!(checks["redis"], "not_configured");
    assert_eq!(checks["oauth"], "not_configured");
    assert_eq!(checks["securityLog"]["sink"], "file");
    assert_eq!(checks["securityLog"]["spooled"], 0);
    assert!(!body.to_string().contains(JWT_SECRET));
}

#[tokio::test]
async fn health_on_postgres_says_database_ok_and_shows_no_connection_string() {
    // A distinctive password in DATABASE_URL (Postgres here trusts local connections, so it is
    // sent nowhere that checks it); if the URL already carries one, that one is the canary.
    let Some(app) = TestApp::builder(Backend::Postgres)
        .settings(|s| {
            let raw = s.database_url.as_ref().unwrap().expose_secret().to_owned();
            let mut url = reqwest::Url::parse(&raw).unwrap();
            if url.password().is_none() {
                url.set_password(Some("Canary-Pw-9c41e7d2")).unwrap();
            }
            s.database_url = Some(SecretString::from(url.to_string()));
        })
        .try_spawn()
        .await
    else {
        return;
    };
    let url = app.settings.database_url.as_ref().unwrap().expose_secret();
    let url = reqwest::Url::parse(url).unwrap();
    let canary = url.password().unwrap().to_owned();
    let db_name = app.db.as_ref().unwrap().name.clone();

    let body = health_after_first_flush(&app.client, &app.address).await;
    assert_health_shape(&body, app.port, std::process::id());
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["storageType"], "postgresql");
    assert_eq!(body["checks"]["securityLog"]["sink"], "postgresql");

    let text = body.to_string();
    for secret in [
        canary.as_str(),
        "postgres://",
        "postgresql://",
        db_name.as_str(),
        JWT_SECRET,
    ] {
        assert!(!text.contains(secret), "/health shows {secret:?}: {text}");
    }
    let ready = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(!ready.text().await.unwrap().contains(&canary));
}

#[tokio::test]
async fn liveness_and_readiness_answer_200_on_a_working_store() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let live = app
            .client
            .get(app.url("/health/live"))
            .send()
            .await
            .unwrap();
        assert_eq!(live.status(), StatusCode::OK, "{backend:?}");
        assert_eq!(live.json::<Value>().await.unwrap()["status"], "alive");
        let ready = app
            .client
            .get(app.url("/health/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::OK, "{backend:?}");
        assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
    }
}

// ---- the binary ---------------------------------------------------------------------------------

/// The CLI in `dir`, nothing inherited, with `dir/data` as its data folder.
fn flux_auth(dir: &Path) -> Command {
    let mut command = flux_auth_command(dir);
    command.env("DATA_DIR", dir.join("data"));
    command
}

/// `flux-auth` serving as pm2 or systemd runs it: the bare binary, on a port and in a folder of
/// its own.
async fn start_service() -> FluxAuth {
    Launch::in_temp_dir()
        .env("JWT_SECRET", JWT_SECRET)
        .start()
        .await
}

/// Serves real traffic, then stops on `signal`: exit 0, inside the deadline, with the request's
/// events and `service_stopped` flushed to the spool (the security log of a service without a
/// database).
async fn stops_cleanly_on(signal: &str) {
    let mut service = start_service().await;
    let client = Client::new();
    let email = unique_email();
    let signup = client
        .post(service.url("/api/auth/signup"))
        .header("user-agent", UA)
        .json(&json!({ "email": email, "password": PASSWORD, "name": "Ops Test" }))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), StatusCode::CREATED, "{}", service.logs());
    let pid = service.pid;

    // `client` keeps its connection open: an idle keep-alive connection must not hold the drain.
    let (status, took) = service.stop(signal).await;
    eprintln!("SIG{signal}: flux-auth exited with {status} {took:?} after the signal");
    assert_eq!(status.code(), Some(0), "{}", service.logs());
    assert!(
        took < STOP_BOUND,
        "SIG{signal} took {took:?}\n{}",
        service.logs()
    );
    let logs = service.logs();
    assert!(
        logs.contains(&format!("\"signal\":\"SIG{signal}\"")),
        "the shutdown log names the signal\n{logs}"
    );

    let mut events = events_from_files(&service.dir().join("data").join("security-events"));
    events.sort_by_key(|e| e.created_at);
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types.first(), Some(&"service_started"), "{types:?}");
    assert_eq!(types.last(), Some(&"service_stopped"), "{types:?}");
    assert!(types.contains(&"signup_success"), "{types:?}");
    let stopped = events.last().unwrap();
    assert_eq!(stopped.metadata["pid"], pid);
    assert_eq!(
        types.iter().filter(|t| **t == "service_stopped").count(),
        1,
        "{types:?}"
    );
}

#[tokio::test]
async fn sigterm_drains_records_service_stopped_and_exits_0() {
    stops_cleanly_on("TERM").await;
}

#[tokio::test]
async fn sigint_as_pm2_sends_it_drains_records_service_stopped_and_exits_0() {
    stops_cleanly_on("INT").await;
}

#[tokio::test]
async fn healthcheck_exits_0_against_a_running_instance_and_1_against_a_closed_port() {
    let mut service = start_service().await;
    let scratch = tempfile::tempdir().unwrap();

    let mut check = flux_auth(scratch.path());
    check.args(["healthcheck", "--port", &service.port.to_string()]);
    let ran = run(check).await;
    assert_eq!(ran.code(), Some(0), "{}", ran.stderr);

    // Docker's HEALTHCHECK runs it bare: the port comes from PORT, as for the service.
    let mut check = flux_auth(scratch.path());
    check
        .env("PORT", service.port.to_string())
        .arg("healthcheck");
    let ran = run(check).await;
    assert_eq!(ran.code(), Some(0), "{}", ran.stderr);

    let closed = free_port();
    let mut check = flux_auth(scratch.path());
    check.args(["healthcheck", "--port", &closed.to_string()]);
    let ran = run(check).await;
    assert_eq!(ran.code(), Some(1), "{}", ran.stderr);
    assert!(ran.stderr.contains(&closed.to_string()), "{}", ran.stderr);

    let (status, _) = service.stop("TERM").await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn check_config_rejects_weak_secrets_with_exit_78_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    for weak in [
        "short-and-weak",
        "your-super-secret-jwt-key-change-this-in-production",
    ] {
        let mut command = flux_auth(dir.path());
        command.env("JWT_SECRET", weak).arg("check-config");
        let ran = run(command).await;
        assert_eq!(ran.code(), Some(78), "{weak}: {}{}", ran.stdout, ran.stderr);
        assert!(ran.stderr.contains("JWT_SECRET"), "{}", ran.stderr);
        assert!(
            ran.stderr.contains("flux-auth gen-secret"),
            "says how to fix it: {}",
            ran.stderr
        );
        assert!(
            !ran.stderr.contains(weak),
            "echoes the secret: {}",
            ran.stderr
        );
    }

    // A value of the wrong type is a configuration error too, and names the setting.
    let mut command = flux_auth(dir.path());
    command.env("PORT", "three-thousand").arg("check-config");
    let ran = run(command).await;
    assert_eq!(ran.code(), Some(78), "{}", ran.stderr);
    assert!(ran.stderr.contains("PORT"), "{}", ran.stderr);
}

#[tokio::test]
async fn gen_secret_prints_a_64_character_secret_that_check_config_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = flux_auth(dir.path());
    command.arg("gen-secret");
    let first = run(command).await;
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    let secret = first.stdout.trim().to_owned();
    assert_eq!(secret.len(), 64, "{secret:?}");
    assert!(
        secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "base64url: {secret:?}"
    );

    let mut command = flux_auth(dir.path());
    command.arg("gen-secret");
    assert_ne!(
        run(command).await.stdout.trim(),
        secret,
        "a new one each time"
    );

    let mut command = flux_auth(dir.path());
    command
        .env("NODE_ENV", "production")
        .env("JWT_SECRET", &secret)
        .arg("check-config");
    let ran = run(command).await;
    assert_eq!(ran.code(), Some(0), "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("configuration OK"), "{}", ran.stdout);
}

#[tokio::test]
async fn production_without_jwt_secret_refuses_to_start_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = flux_auth(dir.path());
    // The bare binary, as pm2 and systemd run it; were it to start anyway, PROCESS_PATIENCE ends
    // the test.
    command
        .env("NODE_ENV", "production")
        .env("HOST", "127.0.0.1")
        .env("PORT", free_port().to_string());
    let ran = run(command).await;
    assert_eq!(ran.code(), Some(78), "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("JWT_SECRET"), "{}", ran.stderr);
    assert!(
        !dir.path().join("data").join(".jwt-secret").exists(),
        "no development secret is generated in production"
    );
}

#[tokio::test]
async fn help_lists_every_command_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = flux_auth(dir.path());
    command.arg("--help");
    let ran = run(command).await;
    assert_eq!(ran.code(), Some(0), "{}", ran.stderr);
    let commands = [
        "serve",
        "migrate",
        "check-config",
        "gen-secret",
        "import-users",
        "users",
        "healthcheck",
    ];
    for name in commands {
        assert!(
            ran.stdout.lines().any(|l| l.trim_start().starts_with(name)),
            "--help does not list {name}:\n{}",
            ran.stdout
        );
    }
    for args in commands.iter().map(|c| vec![*c, "--help"]).chain([
        vec!["users", "set-type", "--help"],
        vec!["users", "email-collisions", "--help"],
        vec!["users", "linked-with-password", "--help"],
        vec!["users", "revoke-password", "--help"],
    ]) {
        let mut command = flux_auth(dir.path());
        command.args(&args);
        let ran = run(command).await;
        assert_eq!(ran.code(), Some(0), "{args:?}: {}", ran.stderr);
        assert!(ran.stdout.contains("Usage:"), "{args:?}: {}", ran.stdout);
    }

    let mut command = flux_auth(dir.path());
    command.arg("--version");
    let ran = run(command).await;
    assert_eq!(ran.code(), Some(0));
    assert!(
        ran.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        ran.stdout
    );

    let mut command = flux_auth(dir.path());
    command.arg("no-such-command");
    let ran = run(command).await;
    assert_eq!(ran.code(), Some(2), "{}", ran.stderr);
}

// ---- shipped configuration files ----------------------------------------------------------------

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn env_example_documents_every_setting() {
    let text = std::fs::read_to_string(repo_file(".env.example")).unwrap();
    let assigned: Vec<&str> = text
        .lines()
        .map(|l| l.trim_start_matches('#').trim_start())
        .filter_map(|l| l.split_once('=').map(|(name, _)| name))
        .collect();
    let extra = [
        "REDIS_HOST",
        "REDIS_PORT",
        "REDIS_PASSWORD",
        "CONFIG_FILE",
        "RUST_LOG",
    ];
    for name in Settings::env_names().chain(extra.iter().map(|s| (*s).to_owned())) {
        assert!(
            assigned.contains(&name.as_str()),
            ".env.example does not document {name}"
        );
    }
}

#[tokio::test]
async fn env_example_copied_to_dot_env_is_a_valid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo_file(".env.example"), dir.path().join(".env")).unwrap();
    let mut command = flux_auth(dir.path());
    command.arg("check-config");
    let ran = run(command).await;
    assert_eq!(ran.code(), Some(0), "{}{}", ran.stdout, ran.stderr);

    // Its `JWT_SECRET=` (empty: not set) must not hide JWT_SECRET_FILE, which production uses.
    let secret_file = dir.path().join("jwt_secret");
    std::fs::write(&secret_file, format!("{JWT_SECRET}\n")).unwrap();
    let mut command = flux_auth(dir.path());
    command
        .env("NODE_ENV", "production")
        .env("JWT_SECRET_FILE", &secret_file)
        .arg("check-config");
    let ran = run(command).await;
    assert_eq!(ran.code(), Some(0), "{}{}", ran.stdout, ran.stderr);
}

/// Every setting but the secrets has its line in config/default.toml (commented out when it has
/// no default): the file documents them all, and the secrets come from the environment only.
#[test]
fn default_toml_names_every_setting_but_the_secrets() {
    let text = std::fs::read_to_string(repo_file("config/default.toml")).unwrap();
    let assigned: Vec<&str> = text
        .lines()
        .map(|l| l.trim_start_matches('#').trim_start())
        .filter_map(|l| l.split_once(" =").map(|(name, _)| name))
        .collect();
    for (key, kind) in Settings::keys() {
        let secret = kind == flux_auth::config::Kind::Secret;
        assert_eq!(
            assigned.contains(&key),
            !secret,
            "config/default.toml {} {key}",
            if secret {
                "names the secret"
            } else {
                "does not name"
            }
        );
    }
}

#[test]
fn default_toml_parses_and_holds_the_compiled_defaults() {
    let path = repo_file("config/default.toml");
    let env = HashMap::from([("CONFIG_FILE".to_owned(), path.display().to_string())]);
    let from_file = Settings::from_env(env).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        format!("{from_file:?}"),
        format!("{:?}", Settings::default()),
        "config/default.toml and Settings::default() disagree"
    );
}
