//! One account per mailbox: every spelling of an address (Unicode forms, case, a full-width or
//! IDNA domain) is one account, on both stores; stored accounts that already share a mailbox are
//! reported, not a failed start or migration.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::stores::fixtures::legacy_bcrypt;

const COMPOSED: &str = "josé@x.com";
const DECOMPOSED: &str = "jose\u{301}@x.com";

async fn user_of(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body["user"].clone()
}

#[tokio::test]
async fn every_spelling_of_an_address_is_one_account_on_both_stores() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let jose = user_of(app.signup(COMPOSED, PASSWORD, "José").await).await;
        assert_eq!(jose["email"], COMPOSED, "kept as sent");
        for other in [
            DECOMPOSED,
            "JOSÉ@X.COM",
            "josé@ｘ.com",
            "jose\u{301}@Ｘ．ｃｏｍ",
        ] {
            assert_error(
                app.signup(other, PASSWORD, "Someone").await,
                StatusCode::CONFLICT,
                "AUTH_EMAIL_EXISTS",
            )
            .await;
            let user = user_of(app.login(other, PASSWORD).await).await;
            assert_eq!(user["id"], jose["id"], "{backend:?}: {other:?}");
            assert_eq!(user["email"], COMPOSED);
        }
        let body = assert_error(
            app.signup("\"josé\"@x.com", PASSWORD, "Quoted").await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(body["field"], "email");

        let ann = user_of(app.signup("ann@bücher.example", PASSWORD, "Ann").await).await;
        assert_error(
            app.signup("ann@xn--bcher-kva.example", PASSWORD, "Ann")
                .await,
            StatusCode::CONFLICT,
            "AUTH_EMAIL_EXISTS",
        )
        .await;
        let again = user_of(app.login("Ann@XN--BCHER-KVA.example", PASSWORD).await).await;
        assert_eq!(again["id"], ann["id"], "{backend:?}");
        assert_eq!(again["email"], "ann@bücher.example");
    }
}

#[tokio::test]
async fn a_wrong_password_under_any_spelling_counts_against_the_one_account() {
    let app = TestApp::builder(Backend::File)
        .settings(|s| {
            s.rate_limits = flux_auth::config::Switch::On;
            s.lockout_threshold = 3;
        })
        .try_spawn()
        .await
        .unwrap();
    app.signed_up(COMPOSED).await;
    for spelling in [DECOMPOSED, "JOSÉ@ｘ.com", "jose\u{301}@X.COM"] {
        assert_error(
            app.login(spelling, "not the password at all").await,
            StatusCode::UNAUTHORIZED,
            "AUTH_INVALID_CREDENTIALS",
        )
        .await;
    }
    // Three failures on one mailbox lock it, even for the right password under the first
    // spelling.
    assert_error(
        app.login(COMPOSED, PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID_CREDENTIALS",
    )
    .await;
}

/// Users stored before addresses were compared by key: two spellings of josé's mailbox, and a
/// quoted alice next to a plain one. The earlier of each pair holds the mailbox.
fn earlier_accounts() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("u-1", COMPOSED, "2025-01-01T00:00:00.000Z"),
        ("u-2", DECOMPOSED, "2025-02-01T00:00:00.000Z"),
        ("u-3", "\"alice\"@x.com", "2025-03-01T00:00:00.000Z"),
        ("u-4", "alice@x.com", "2025-04-01T00:00:00.000Z"),
    ]
}

fn assert_reported(output: &std::process::Output) {
    assert!(output.status.success(), "{}", text(&output.stderr));
    let listed = text(&output.stdout);
    assert!(
        listed.contains(&format!(
            "u-2 <{DECOMPOSED}> shares its mailbox with u-1 <{COMPOSED}>"
        )),
        "{listed}"
    );
    assert!(
        listed.contains("u-4 <alice@x.com> shares its mailbox with u-3 <\"alice\"@x.com>"),
        "{listed}"
    );
    assert!(listed.contains("2 account(s) share a mailbox"), "{listed}");
}

#[tokio::test]
async fn accounts_that_already_share_a_mailbox_are_reported_and_the_earlier_one_answers_in_users_json()
 {
    let hash = legacy_bcrypt(PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    std::fs::create_dir_all(&settings.data_dir).unwrap();
    let users: Vec<Value> = earlier_accounts()
        .into_iter()
        .map(|(id, email, created)| {
            json!({ "id": id, "email": email, "name": "Earlier", "password": hash, "createdAt": created })
        })
        .collect();
    let path = settings.data_dir.join("users.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&json!({ "users": users })).unwrap(),
    )
    .unwrap();

    let data_dir = settings.data_dir.to_str().unwrap().to_owned();
    let listed = run_cli(
        dir.path(),
        &[("DATA_DIR", data_dir.as_str())],
        &["users", "email-collisions"],
    )
    .await;
    assert_reported(&listed);

    let mut app = TestApp::start(settings, dir, None, Backend::File).await;
    for spelling in [COMPOSED, DECOMPOSED] {
        assert_eq!(
            user_of(app.login(spelling, PASSWORD).await).await["id"],
            "u-1"
        );
    }
    assert_eq!(
        user_of(app.login("alice@x.com", PASSWORD).await).await["id"],
        "u-3"
    );
    app.stop().await;
    // The file keeps every account, each address as it was.
    let file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let emails: Vec<&str> = file["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        emails,
        [COMPOSED, DECOMPOSED, "\"alice\"@x.com", "alice@x.com"]
    );
}

#[tokio::test]
async fn the_migration_keys_existing_rows_and_reports_those_that_share_a_mailbox_in_postgres() {
    let Some(app) = TestApp::try_spawn(Backend::Postgres).await else {
        return;
    };
    let db = app.db.as_ref().unwrap();
    let hash = legacy_bcrypt(PASSWORD);
    let pool = db.pool().await;
    // Rows as an earlier version (or an operator) wrote them: no key yet.
    for (id, email, created) in earlier_accounts() {
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, created_at) \
             VALUES ($1, $2, 'Earlier', $3, $4::timestamptz)",
        )
        .bind(id)
        .bind(email)
        .bind(&hash)
        .bind(created)
        .execute(&pool)
        .await
        .unwrap();
    }

    let work = tempfile::tempdir().unwrap();
    let envs = [("DATABASE_URL", db.url.as_str())];
    let migrated = run_cli(work.path(), &envs, &["migrate"]).await;
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    let warnings = text(&migrated.stdout) + &text(&migrated.stderr);
    assert!(
        warnings.contains("two accounts share one mailbox") && warnings.contains("u-2"),
        "{warnings}"
    );
    let keys: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, email_key FROM users ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(
        keys,
        [
            ("u-1".to_owned(), Some(COMPOSED.to_owned())),
            ("u-2".to_owned(), None),
            ("u-3".to_owned(), Some("alice@x.com".to_owned())),
            ("u-4".to_owned(), None),
        ]
    );
    assert_reported(&run_cli(work.path(), &envs, &["users", "email-collisions"]).await);

    for spelling in [COMPOSED, DECOMPOSED, "JOSÉ@ｘ.com"] {
        assert_eq!(
            user_of(app.login(spelling, PASSWORD).await).await["id"],
            "u-1"
        );
    }
    assert_eq!(
        user_of(app.login("alice@x.com", PASSWORD).await).await["id"],
        "u-3"
    );
    assert_error(
        app.signup(DECOMPOSED, PASSWORD, "Again").await,
        StatusCode::CONFLICT,
        "AUTH_EMAIL_EXISTS",
    )
    .await;
}

/// 14 × U+FDFA: 42 bytes, a valid local part under the old rules; 252 characters once folded,
/// so the address has no key today.
fn ligatures() -> String {
    format!("{}@x.com", "\u{FDFA}".repeat(14))
}

/// A full-width quote: accepted by the old rules, folds to '"'.
const FOLDS_TO_A_QUOTE: &str = "a\u{FF02}b@x.com";

fn assert_listed_without_key(output: &std::process::Output, ids: &[(&str, &str)]) {
    assert!(output.status.success(), "{}", text(&output.stderr));
    let listed = text(&output.stdout);
    for (id, email) in ids {
        assert!(
            listed.contains(&format!(
                "{id} <{email}> has no email key: the address is not valid today"
            )),
            "{listed}"
        );
    }
    assert!(
        listed.contains(&format!(
            "{} account(s) have an address without an email key",
            ids.len()
        )),
        "{listed}"
    );
}

#[tokio::test]
async fn addresses_that_fold_into_what_an_address_may_not_hold_are_refused_and_old_ones_reported_in_users_json()
 {
    let hash = legacy_bcrypt(PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    std::fs::create_dir_all(&settings.data_dir).unwrap();
    let ligatures = ligatures();
    let users = json!({ "users": [
        { "id": "u-1", "email": "alice@x.com", "name": "Alice", "password": hash },
        { "id": "u-2", "email": ligatures, "name": "Old", "password": hash },
        { "id": "u-3", "email": FOLDS_TO_A_QUOTE, "name": "Old", "password": hash },
    ]});
    std::fs::write(
        settings.data_dir.join("users.json"),
        serde_json::to_vec_pretty(&users).unwrap(),
    )
    .unwrap();

    let data_dir = settings.data_dir.to_str().unwrap().to_owned();
    let mut app = TestApp::start(settings, dir, None, Backend::File).await;
    assert_eq!(
        user_of(app.login("alice@x.com", PASSWORD).await).await["id"],
        "u-1"
    );
    for refused in [
        ligatures.as_str(),
        FOLDS_TO_A_QUOTE,
        "a\u{A8}b@x.com",
        "\"a\"@x.com",
    ] {
        assert_error(
            app.signup(refused, PASSWORD, "New").await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
    }
    app.stop().await;

    let listed = run_cli(
        app.dir.path(),
        &[("DATA_DIR", data_dir.as_str())],
        &["users", "email-collisions"],
    )
    .await;
    assert_listed_without_key(&listed, &[("u-2", &ligatures), ("u-3", FOLDS_TO_A_QUOTE)]);
}

#[tokio::test]
async fn an_old_row_that_cannot_be_keyed_never_keeps_an_upgraded_instance_from_ready_in_postgres() {
    if !postgres_available().await {
        return;
    }
    let db = TestDb::create().await;
    let pool = db.pool().await;
    // The database as the version before the canonical keys left it.
    flux_auth::db::MIGRATOR.run_to(5, &pool).await.unwrap();
    let hash = legacy_bcrypt(PASSWORD);
    let ligatures = ligatures();
    for (id, email) in [
        ("u-1", "alice@x.com"),
        ("u-2", ligatures.as_str()),
        ("u-3", "refused@x.com"),
        ("u-4", "bob@x.com"),
    ] {
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, created_at) \
             VALUES ($1, $2, 'Old', $3, now())",
        )
        .bind(id)
        .bind(email)
        .bind(&hash)
        .execute(&pool)
        .await
        .unwrap();
    }
    // A rule of the operator's own that one old row breaks: any write to that row fails.
    sqlx::query(
        "ALTER TABLE users ADD CONSTRAINT no_refused CHECK (email <> 'refused@x.com') NOT VALID",
    )
    .execute(&pool)
    .await
    .unwrap();

    // The service migrates in the background and must become ready (TestApp::start waits).
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.storage = Some(flux_auth::config::StorageKind::Postgres);
    settings.database_url = Some(secrecy::SecretString::from(db.url.clone()));
    let url = db.url.clone();
    let app = TestApp::start(settings, dir, Some(db), Backend::Postgres).await;

    let keys: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, email_key FROM users ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(
        keys,
        [
            ("u-1".to_owned(), Some("alice@x.com".to_owned())),
            ("u-2".to_owned(), None),
            ("u-3".to_owned(), None),
            ("u-4".to_owned(), Some("bob@x.com".to_owned())),
        ]
    );
    for (email, id) in [("alice@x.com", "u-1"), ("bob@x.com", "u-4")] {
        assert_eq!(user_of(app.login(email, PASSWORD).await).await["id"], id);
    }

    let work = tempfile::tempdir().unwrap();
    let envs = [("DATABASE_URL", url.as_str())];
    let migrated = run_cli(work.path(), &envs, &["migrate"]).await;
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    let warnings = text(&migrated.stdout) + &text(&migrated.stderr);
    assert!(
        warnings.contains("the database refused an account's email key")
            && warnings.contains("u-3"),
        "{warnings}"
    );
    assert!(
        warnings.contains("an account's address has no email key") && warnings.contains("u-2"),
        "{warnings}"
    );
    assert_listed_without_key(
        &run_cli(work.path(), &envs, &["users", "email-collisions"]).await,
        &[("u-2", &ligatures), ("u-3", "refused@x.com")],
    );
}
