//! What `flux-auth import-fluxstudio` carries beyond the account: `preferences` as the user's
//! settings, and two-factor sign-in (the base32 secret encrypted under `TOTP_ENCRYPTION_KEY`, the
//! plain backup codes hashed). Without the key, users with two-factor on are kept for later and a
//! run with it imports them; the imported user's authenticator and backup codes keep working.

use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::fluxstudio::*;
use crate::helpers::*;
use crate::two_factor::{TOTP_KEY, verify};

/// What the fixture's two-factor user has in FluxStudio.
const TESS: &str = "cm1x2y3z4totp00001";
const TESS_SECRET: &str = "JBSWY3DPEHPK3PXP";
const TESS_BACKUP_CODES: [&str; 2] = ["a1b2c3d4", "e5f6a7b8"];

async fn import(url: &str, key: Option<&str>) -> String {
    let work = tempfile::tempdir().unwrap();
    let mut envs = vec![("DATABASE_URL", url)];
    if let Some(key) = key {
        envs.push(("TOTP_ENCRYPTION_KEY", key));
    }
    let out = run_cli(work.path(), &envs, &["import-fluxstudio"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains(TESS_SECRET) && !stdout.contains(TESS_BACKUP_CODES[0]),
        "a secret in the report: {stdout}"
    );
    stdout
}

async fn two_factor_row(pool: &sqlx::PgPool) -> Option<(String, Vec<String>, bool)> {
    sqlx::query_as(
        "SELECT t.secret, t.backup_codes, u.two_factor_enabled FROM flux_auth.two_factor t \
         JOIN flux_auth.users u ON u.id = t.user_id WHERE t.user_id = $1",
    )
    .bind(TESS)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Bob's preferences have a category that is not an object and a key the settings do not know;
/// Carol's are over the settings' cap.
async fn unusual_preferences(pool: &sqlx::PgPool) {
    sqlx::query("UPDATE public.users SET preferences = $2 WHERE id = $1")
        .bind(USERS[1].id)
        .bind(json!({
            "notifications": "all",
            "performance": { "autoSave": false, "quality": "high" },
            "stripe": { "plan": "pro" },
        }))
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE public.users SET preferences = $2 WHERE id = $1")
        .bind(USERS[2].id)
        .bind(json!({ "appearance": { "note": "x".repeat(9000) } }))
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn two_factor_users_wait_for_the_key_then_sign_in_with_their_fluxstudio_codes() {
    let Some(db) = fluxstudio_db(Variant::Current).await else {
        return;
    };
    let pool = db.pool().await;
    unusual_preferences(&pool).await;

    // No key: the account with two-factor on is not imported, so it never signs in without it.
    let first = import(&db.url, None).await;
    assert!(
        first.contains(&format!("skipped users {TESS}: kept for later")),
        "{first}"
    );
    assert!(
        first.contains(
            "users: 8 read, imported 5, 0 already present, 2 skipped (1 email collisions), \
             1 kept for later"
        ),
        "{first}"
    );
    assert!(
        first.contains("two-factor: imported for 0 users"),
        "{first}"
    );
    assert!(
        first.contains("kept for later: 1 users with two-factor on"),
        "{first}"
    );
    assert!(
        first.contains(&format!(
            "skipped preferences {}: notifications not an object",
            USERS[1].id
        )),
        "{first}"
    );
    assert!(
        first.contains(&format!(
            "skipped preferences {}: over 4096 bytes",
            USERS[2].id
        )),
        "{first}"
    );
    assert!(
        first.contains("settings: imported for 4 users from their preferences (2 reported above)"),
        "{first}"
    );
    let tess_there: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM flux_auth.users WHERE id = $1)")
            .bind(TESS)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!tess_there, "imported without its second factor");

    // With the key: the account arrives with its two-factor, encrypted and hashed.
    let second = import(&db.url, Some(TOTP_KEY)).await;
    assert!(
        second.contains(
            "users: 8 read, imported 1, 5 already present, 2 skipped (1 email collisions), \
             0 kept for later"
        ),
        "{second}"
    );
    assert!(
        second.contains("two-factor: imported for 1 users"),
        "{second}"
    );
    let (secret, backup_codes, flag) = two_factor_row(&pool).await.expect("a two-factor row");
    assert!(flag, "users.two_factor_enabled");
    assert!(secret.starts_with("v1:") && !secret.contains(TESS_SECRET));
    assert_eq!(backup_codes.len(), 2);
    for code in TESS_BACKUP_CODES {
        assert!(
            !backup_codes.iter().any(|h| h.contains(code)),
            "a plain code"
        );
    }

    // A third run changes nothing.
    let third = import(&db.url, Some(TOTP_KEY)).await;
    assert!(
        third.contains("users: 8 read, imported 0, 6 already present"),
        "{third}"
    );
    assert!(
        third.contains("two-factor: imported for 0 users"),
        "{third}"
    );
    assert_eq!(two_factor_row(&pool).await.map(|r| r.1), Some(backup_codes));

    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.database_url = Some(SecretString::from(db.url.clone()));
    settings.totp_encryption_key = Some(SecretString::from(TOTP_KEY));
    let app = TestApp::start(settings, dir, None, Backend::Postgres).await;

    // The authenticator set up in FluxStudio gives the code.
    let secret = flux_auth::auth::two_factor::codes::secret_from_base32(TESS_SECRET).unwrap();
    let temp = second_step(&app).await;
    let code =
        flux_auth::auth::two_factor::codes::code_at(&secret, app.clock().now().timestamp() as u64)
            .unwrap();
    let signed_in = verify(&app, &temp, &code).await;
    assert_eq!(signed_in.status(), StatusCode::OK);
    let body: Value = signed_in.json().await.unwrap();
    assert_eq!(body["user"]["id"], TESS);
    assert_eq!(body["user"]["twoFactorEnabled"], true, "{body}");

    // A FluxStudio backup code works once, in any case.
    let temp = second_step(&app).await;
    let used = verify(&app, &temp, &TESS_BACKUP_CODES[0].to_uppercase()).await;
    assert_eq!(used.status(), StatusCode::OK);
    let temp = second_step(&app).await;
    let again = verify(&app, &temp, TESS_BACKUP_CODES[0]).await;
    assert_error(again, StatusCode::BAD_REQUEST, "TWO_FACTOR_INVALID_CODE").await;
    let other = verify(&app, &temp, TESS_BACKUP_CODES[1]).await;
    assert_eq!(other.status(), StatusCode::OK, "the temp token lives on");

    // Preferences arrive as settings, merged with the defaults; what could not be carried is not.
    for (email, password, expected) in [
        (
            "alice.smith@example.com",
            ALICE_PASSWORD,
            json!({ "theme": "dark", "darkMode": false, "language": "en" }),
        ),
        (
            "carol@example.com",
            BOB_PASSWORD,
            json!({ "darkMode": false, "language": "en" }),
        ),
    ] {
        let token = access_token(&app, email, password).await;
        let shown: Value = app
            .get_auth("/api/auth/settings", &token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(shown["settings"]["appearance"], expected, "{email}");
    }
    let token = access_token(&app, "bob@example.com", BOB_PASSWORD).await;
    let shown: Value = app
        .get_auth("/api/auth/settings", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        shown["settings"],
        json!({
            "notifications": { "push": true, "emailDigest": true },
            "appearance": { "darkMode": false, "language": "en" },
            "performance": { "autoSave": false, "quality": "high" },
        })
    );
    pool.close().await;
}

/// Tess's password login: its first step, which asks for the second.
async fn second_step(app: &TestApp) -> String {
    let response = app.login("tess@example.com", TOTP_PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["requires2FA"], true, "{body}");
    assert!(body.get("refreshToken").is_none(), "{body}");
    body["tempToken"].as_str().unwrap().to_owned()
}

async fn access_token(app: &TestApp, email: &str, password: &str) -> String {
    let response = app.login(email, password).await;
    assert_eq!(response.status(), StatusCode::OK, "{email}");
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}
