//! The `import-users` and `users set-type` commands: an import of the old `users.json` into
//! Postgres that can run twice and whose users log in, and a type change that reaches the file
//! store's `users.json` and refuses unknown emails or types.

use flux_auth::config::StorageKind;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::fixtures::*;
use crate::helpers::*;

#[tokio::test]
async fn import_users_is_idempotent_and_imported_users_log_in() {
    if !postgres_available().await {
        return;
    }
    let db = TestDb::create().await;
    let work = tempfile::tempdir().unwrap();
    let mut old = old_users_json(&legacy_bcrypt(PASSWORD));
    old["users"].as_array_mut().unwrap().insert(
        1,
        json!({ "id": "1760390055555", "email": "not-an-email", "name": "Broken" }),
    );
    let file = work.path().join("old-users.json");
    std::fs::write(&file, serde_json::to_vec(&old).unwrap()).unwrap();
    let envs = [("DATABASE_URL", db.url.as_str())];
    let path = file.to_str().unwrap();

    let first = run_cli(work.path(), &envs, &["import-users", path]).await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains("4 users read: 3 imported, 0 already present, 1 invalid"),
        "{}",
        text(&first.stdout)
    );
    let second = run_cli(work.path(), &envs, &["import-users", path]).await;
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).contains("4 users read: 0 imported, 3 already present, 1 invalid"),
        "{}",
        text(&second.stdout)
    );

    let pool = db.pool().await;
    let rows: Vec<(String, String, String, Option<String>)> =
        sqlx::query_as("SELECT id, email, user_type, password_hash FROM users ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    let summary: Vec<(&str, &str, &str, bool)> = rows
        .iter()
        .map(|(id, email, user_type, hash)| {
            (
                id.as_str(),
                email.as_str(),
                user_type.as_str(),
                hash.as_deref().is_some_and(|h| h.starts_with("$2")),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("1760390026607", "ann@example.com", "designer", true),
            ("1760390099000", "bob@example.com", "client", true),
            ("1760390111222", "carol@example.com", "client", false),
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.storage = Some(StorageKind::Postgres);
    settings.database_url = Some(SecretString::from(db.url.clone()));
    let mut app = TestApp::start(settings, dir, Some(db), Backend::Postgres).await;
    for (email, id) in [
        ("ann@example.com", "1760390026607"),
        ("bob@example.com", "1760390099000"),
    ] {
        let response = app.login(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK, "{email}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["user"]["id"], id);
    }
    let wrong = app
        .login("ann@example.com", "not the password at all")
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn users_set_type_changes_users_json_and_refuses_unknown_emails() {
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let users_path = data_dir.join("users.json");
    let original = old_users_json(&legacy_bcrypt(PASSWORD));
    std::fs::write(&users_path, serde_json::to_vec_pretty(&original).unwrap()).unwrap();
    let envs = [("DATA_DIR", data_dir.to_str().unwrap())];

    let done = run_cli(
        work.path(),
        &envs,
        &["users", "set-type", "Ann@Example.com", "admin"],
    )
    .await;
    assert!(done.status.success(), "{}", text(&done.stderr));
    assert!(
        text(&done.stdout).contains("ann@example.com is now admin"),
        "{}",
        text(&done.stdout)
    );
    let written = read_json(&users_path);
    let ann = user_in(&written, "1760390026607");
    assert_eq!(ann["userType"], "admin");
    assert_eq!(ann["preferences"], original["users"][0]["preferences"]);
    assert_eq!(ann["password"], original["users"][0]["password"]);
    assert_eq!(user_in(&written, "1760390111222"), &original["users"][2]);
    let changed: Vec<_> = events_from_files(&data_dir.join("security-events"))
        .into_iter()
        .filter(|e| e.event_type.as_str() == "user_type_changed")
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].user_id.as_deref(), Some("1760390026607"));

    let before = std::fs::read(&users_path).unwrap();
    let unknown = run_cli(
        work.path(),
        &envs,
        &["users", "set-type", "nobody@example.com", "admin"],
    )
    .await;
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains("no user with email nobody@example.com"),
        "{}",
        text(&unknown.stderr)
    );
    let bad_type = run_cli(
        work.path(),
        &envs,
        &["users", "set-type", "ann@example.com", "root"],
    )
    .await;
    assert!(!bad_type.status.success());
    assert!(
        text(&bad_type.stderr).contains("admin"),
        "{}",
        text(&bad_type.stderr)
    );
    assert_eq!(
        std::fs::read(&users_path).unwrap(),
        before,
        "failures change nothing"
    );
}
