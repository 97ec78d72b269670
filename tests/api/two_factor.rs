//! Two-factor sign-in (TOTP and backup codes): setup, verify-setup, disable, the second step of
//! a password login, replay across instances, the temp token refused as an access token, the
//! lockout, the secrets at rest, and bad input; on both stores. Codes are computed here from the
//! secret setup shows, at the app's clock.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::*;

/// A fixed AES-256 key (bytes 0..32, base64) for the apps of these tests.
pub const TOTP_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub fn with_totp_key(s: &mut flux_auth::config::Settings) {
    s.totp_encryption_key = Some(SecretString::from(TOTP_KEY));
}

pub async fn app(backend: Backend) -> Option<TestApp> {
    TestApp::builder(backend)
        .settings(with_totp_key)
        .try_spawn()
        .await
}

/// The secret's bytes from setup's base32.
pub fn secret_bytes(base32: &str) -> Vec<u8> {
    totp_rs::Secret::try_from_base32(base32)
        .expect("setup's secret is base32")
        .as_bytes()
        .to_vec()
}

/// The code an authenticator shows for `secret` at the app's clock (RFC 6238: SHA-1, 6 digits,
/// 30 s).
pub fn code_now(app: &TestApp, secret: &[u8]) -> String {
    let totp = totp_rs::Builder::new()
        .with_secret(secret.to_vec())
        .build()
        .expect("a valid TOTP secret");
    totp.generate(app.clock().now().timestamp() as u64)
        .to_string()
}

/// Moves the app's clock to the next 30 s time step, so that a new code is accepted.
pub fn next_step(app: &TestApp) {
    app.clock().advance(Duration::from_secs(30));
}

/// Turns two-factor on for the holder of `token`: the secret's bytes and the backup codes.
pub async fn enable(app: &TestApp, token: &str) -> (Vec<u8>, Vec<String>) {
    let setup = app
        .post_json_auth("/api/2fa/setup", token, &json!({}))
        .await;
    assert_eq!(setup.status(), StatusCode::OK);
    let setup: Value = setup.json().await.unwrap();
    let secret = secret_bytes(setup["secret"].as_str().unwrap());
    let done = app
        .post_json_auth(
            "/api/2fa/verify-setup",
            token,
            &json!({ "code": code_now(app, &secret) }),
        )
        .await;
    assert_eq!(done.status(), StatusCode::OK);
    let done: Value = done.json().await.unwrap();
    let codes = done["backupCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    next_step(app);
    (secret, codes)
}

/// A password login's first step for a user with two-factor on: its temp token.
pub async fn temp_token(app: &TestApp, email: &str) -> String {
    let response = app.login(email, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["requires2FA"], true, "{body}");
    assert!(body.get("accessToken").is_none(), "{body}");
    assert!(body.get("refreshToken").is_none(), "{body}");
    body["tempToken"].as_str().unwrap().to_owned()
}

pub async fn verify(app: &TestApp, temp_token: &str, code: &str) -> reqwest::Response {
    app.post_json(
        "/api/2fa/verify",
        &json!({ "tempToken": temp_token, "code": code }),
    )
    .await
}

/// The events of `event_type`, once there are at least `n` of them.
pub async fn at_least(
    app: &TestApp,
    event_type: &str,
    n: usize,
) -> Vec<flux_auth::security_log::SecurityEvent> {
    app.events_where(|e| count_of(e, event_type) >= n)
        .await
        .into_iter()
        .filter(|e| e.event_type.as_str() == event_type)
        .collect()
}

async fn live_sessions(app: &TestApp, token: &str) -> usize {
    let sessions: Value = app
        .get_auth("/api/auth/sessions", token)
        .await
        .json()
        .await
        .unwrap();
    sessions["sessions"].as_array().unwrap().len()
}

#[tokio::test]
async fn setup_verify_logout_login_and_the_second_step_on_both_stores() {
    for backend in BACKENDS {
        let Some(app) = app(backend).await else {
            continue;
        };
        let email = unique_email();
        let signed_up = app.signed_up(&email).await;
        let token = signed_up["accessToken"].as_str().unwrap();

        let setup = app
            .post_json_auth("/api/2fa/setup", token, &json!({}))
            .await;
        assert_eq!(setup.status(), StatusCode::OK);
        let setup: Value = setup.json().await.unwrap();
        assert_eq!(setup["success"], true);
        let url = setup["otpauthUrl"].as_str().unwrap();
        assert!(url.starts_with("otpauth://totp/FluxStudio:"), "{url}");
        assert!(url.contains(&format!("secret={}", setup["secret"].as_str().unwrap())));
        let qr = setup["qrCode"].as_str().unwrap();
        let png = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            qr.strip_prefix("data:image/png;base64,").unwrap(),
        )
        .unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        // Pending only: a login still signs in with the password alone.
        assert!(
            app.logged_in(&email).await["accessToken"].is_string(),
            "two-factor is on before verify-setup"
        );

        let secret = secret_bytes(setup["secret"].as_str().unwrap());
        let first_code = code_now(&app, &secret);
        let done = app
            .post_json_auth(
                "/api/2fa/verify-setup",
                token,
                &json!({ "code": first_code }),
            )
            .await;
        assert_eq!(done.status(), StatusCode::OK);
        let done: Value = done.json().await.unwrap();
        let backup = done["backupCodes"].as_array().unwrap();
        assert_eq!(backup.len(), 10);
        let enabled = app.events_of("mfa_enabled").await;
        assert_eq!(enabled.len(), 1);
        assert_eq!(
            enabled[0].user_id.as_deref(),
            signed_up["user"]["id"].as_str()
        );
        // Setup again once on: 409.
        assert_error(
            app.post_json_auth("/api/2fa/setup", token, &json!({}))
                .await,
            StatusCode::CONFLICT,
            "TWO_FACTOR_ALREADY_ENABLED",
        )
        .await;

        assert_eq!(app.logout(token).await.status(), StatusCode::OK);
        let temp = temp_token(&app, &email).await;

        // The code of the step verify-setup used is refused: a time step is accepted once.
        assert_error(
            verify(&app, &temp, &first_code).await,
            StatusCode::BAD_REQUEST,
            "TWO_FACTOR_INVALID_CODE",
        )
        .await;
        next_step(&app);
        let signed_in = verify(&app, &temp, &code_now(&app, &secret)).await;
        assert_eq!(signed_in.status(), StatusCode::OK);
        let signed_in: Value = signed_in.json().await.unwrap();
        let access = signed_in["accessToken"].as_str().unwrap();
        assert_eq!(signed_in["user"]["email"], email);
        assert_eq!(app.me(access).await.status(), StatusCode::OK);
        // The login while setup was pending, and this one: the first step started none.
        assert_eq!(live_sessions(&app, access).await, 2);
        // Refresh never asks for the second factor.
        let refreshed = app
            .refresh(signed_in["refreshToken"].as_str().unwrap())
            .await;
        assert_eq!(refreshed.status(), StatusCode::OK);
        // The temp token was used up.
        assert_error(
            verify(&app, &temp, &code_now(&app, &secret)).await,
            StatusCode::UNAUTHORIZED,
            "TWO_FACTOR_TOKEN_EXPIRED",
        )
        .await;

        // Signup's session is no login; the login while setup was pending, and this one.
        let successes = at_least(&app, "login_success", 2).await;
        let last = successes.last().unwrap();
        assert_eq!(last.metadata["secondFactor"], "totp", "{:?}", last.metadata);
        let failed = at_least(&app, "mfa_challenge_failed", 2).await;
        assert!(
            failed
                .iter()
                .any(|e| e.metadata["reason"] == "replayed_code")
        );
        assert!(
            failed
                .iter()
                .any(|e| e.metadata["reason"] == "token_invalid")
        );
        // Never a code, a secret or a token in an event.
        let all = serde_json::to_string(&app.events().await).unwrap();
        assert!(!all.contains(&first_code));
        assert!(!all.contains(&temp));
        assert!(!all.contains(setup["secret"].as_str().unwrap()));
    }
}

#[tokio::test]
async fn five_wrong_codes_kill_the_temp_token() {
    for backend in BACKENDS {
        let Some(app) = app(backend).await else {
            continue;
        };
        let email = unique_email();
        let token = app.signed_up(&email).await["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        let (secret, _) = enable(&app, &token).await;
        let temp = temp_token(&app, &email).await;
        let right = code_now(&app, &secret);
        let wrong = if right == "000000" {
            "111111"
        } else {
            "000000"
        };
        for _ in 0..5 {
            assert_error(
                verify(&app, &temp, wrong).await,
                StatusCode::BAD_REQUEST,
                "TWO_FACTOR_INVALID_CODE",
            )
            .await;
        }
        // Dead: even the right code cannot use it now.
        assert_error(
            verify(&app, &temp, &right).await,
            StatusCode::UNAUTHORIZED,
            "TWO_FACTOR_TOKEN_EXPIRED",
        )
        .await;
        let failed = at_least(&app, "mfa_challenge_failed", 6).await;
        let wrong_codes: Vec<_> = failed
            .iter()
            .filter(|e| e.metadata["reason"] == "wrong_code")
            .collect();
        assert_eq!(wrong_codes.len(), 5);
        assert_eq!(wrong_codes[4].metadata["tokenRevoked"], true);
        assert_eq!(wrong_codes[3].metadata["tokenRevoked"], false);
        // A new sign-in gets a new token, and the right code works with it.
        let temp = temp_token(&app, &email).await;
        assert_eq!(verify(&app, &temp, &right).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn wrong_codes_count_toward_the_account_lockout() {
    let Some(app) = TestApp::builder(Backend::File)
        .settings(|s| {
            with_totp_key(s);
            s.rate_limits = flux_auth::config::Switch::On;
            s.lockout_threshold = 3;
            s.login_limit_per_ip = 1000;
            s.login_limit_per_account = 1000;
        })
        .try_spawn()
        .await
    else {
        return;
    };
    let email = unique_email();
    let token = app.signed_up(&email).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let (secret, _) = enable(&app, &token).await;
    let temp = temp_token(&app, &email).await;
    let right = code_now(&app, &secret);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    for _ in 0..3 {
        verify(&app, &temp, wrong).await;
    }
    assert_eq!(at_least(&app, "account_locked", 1).await.len(), 1);
    // Locked: the right code is refused too, and so is the right password.
    assert_error(
        verify(&app, &temp, &right).await,
        StatusCode::BAD_REQUEST,
        "TWO_FACTOR_INVALID_CODE",
    )
    .await;
    assert_error(
        app.login(&email, PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID_CREDENTIALS",
    )
    .await;
    let failed = at_least(&app, "mfa_challenge_failed", 4).await;
    assert!(
        failed
            .iter()
            .any(|e| e.metadata["reason"] == "account_locked")
    );
    // A right password during the first step does not clear the count: the password is not the
    // whole sign-in.
    app.clock().advance(Duration::from_secs(31));
    let temp = temp_token(&app, &email).await;
    let code = code_now(&app, &secret);
    assert_eq!(verify(&app, &temp, &code).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_backup_code_signs_in_once_and_disable_turns_two_factor_off() {
    for backend in BACKENDS {
        let Some(app) = app(backend).await else {
            continue;
        };
        let email = unique_email();
        let token = app.signed_up(&email).await["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        let (secret, backup) = enable(&app, &token).await;
        let temp = temp_token(&app, &email).await;
        // Any spelling: upper case, no dashes.
        let spelled = backup[0].replace('-', "").to_uppercase();
        let signed_in = verify(&app, &temp, &spelled).await;
        assert_eq!(signed_in.status(), StatusCode::OK);
        let signed_in: Value = signed_in.json().await.unwrap();
        let used = app.events_of("mfa_backup_code_used").await;
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].metadata["remaining"], 9);
        let temp = temp_token(&app, &email).await;
        assert_error(
            verify(&app, &temp, &backup[0]).await,
            StatusCode::BAD_REQUEST,
            "TWO_FACTOR_INVALID_CODE",
        )
        .await;

        let access = signed_in["accessToken"].as_str().unwrap();
        let me: Value = app.me(access).await.json().await.unwrap();
        assert_eq!(me["twoFactorEnabled"], true, "{backend:?}: {me}");
        assert_error(
            app.post_json_auth("/api/2fa/disable", access, &json!({ "code": "12345x" }))
                .await,
            StatusCode::BAD_REQUEST,
            "TWO_FACTOR_INVALID_CODE",
        )
        .await;
        assert_error(
            app.post_json_auth("/api/2fa/disable", access, &json!({}))
                .await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
        let off = app
            .post_json_auth(
                "/api/2fa/disable",
                access,
                &json!({ "code": code_now(&app, &secret) }),
            )
            .await;
        assert_eq!(off.status(), StatusCode::OK);
        let me: Value = app.me(access).await.json().await.unwrap();
        assert_eq!(me["twoFactorEnabled"], false, "{backend:?}: {me}");
        let disabled = app.events_of("mfa_disabled").await;
        assert_eq!(disabled.len(), 1);
        assert_eq!(disabled[0].metadata["by"], "user");
        assert!(app.logged_in(&email).await["accessToken"].is_string());
        assert_error(
            app.post_json_auth("/api/2fa/disable", access, &json!({ "code": "123456" }))
                .await,
            StatusCode::BAD_REQUEST,
            "TWO_FACTOR_NOT_ENABLED",
        )
        .await;
    }
}

/// Every route that asks for an access token (it answers `AUTH_TOKEN_MISSING` without one)
/// refuses a temp token as one; and `/refresh` refuses it as a refresh token.
#[tokio::test]
async fn a_temp_token_is_refused_on_every_authenticated_route() {
    let Some(app) = app(Backend::File).await else {
        return;
    };
    let email = unique_email();
    let token = app.signed_up(&email).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    enable(&app, &token).await;
    make_admin(&app, &email).await;
    let temp = temp_token(&app, &email).await;
    let mut authenticated = 0;
    for route in flux_auth::http::routes() {
        let path = route
            .path
            .replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{sid}", &uuid::Uuid::new_v4().to_string())
            .replace("{key}", "ip:127.0.0.1");
        let request = |bearer: Option<&str>| {
            let mut r = app
                .client
                .request(route.method.clone(), app.url(&path))
                .header("user-agent", UA);
            if route.method != reqwest::Method::GET && route.method != reqwest::Method::DELETE {
                r = r.json(&json!({}));
            }
            if let Some(bearer) = bearer {
                r = r.bearer_auth(bearer);
            }
            r
        };
        let bare = request(None).send().await.unwrap();
        if bare.status() != StatusCode::UNAUTHORIZED {
            continue;
        }
        let bare: Value = bare.json().await.unwrap();
        if bare["code"] != "AUTH_TOKEN_MISSING" {
            continue;
        }
        authenticated += 1;
        let with_temp = request(Some(&temp)).send().await.unwrap();
        assert_error(with_temp, StatusCode::UNAUTHORIZED, "AUTH_TOKEN_INVALID").await;
    }
    assert!(
        authenticated >= 10,
        "only {authenticated} authenticated routes found"
    );
    assert_error(
        app.refresh(&temp).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REFRESH_INVALID",
    )
    .await;
}

/// Two instances on one Postgres: a code accepted by one is refused by the other.
#[tokio::test]
async fn two_instances_on_one_postgres_refuse_the_same_code_twice() {
    let Some(first) = app(Backend::Postgres).await else {
        return;
    };
    let mut settings = first.settings.clone();
    settings.port = 0;
    let second = TestApp::start(
        settings,
        tempfile::tempdir().unwrap(),
        None,
        Backend::Postgres,
    )
    .await;
    let email = unique_email();
    let token = first.signed_up(&email).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let (secret, _) = enable(&first, &token).await;
    next_step(&second);
    let on_first = temp_token(&first, &email).await;
    let on_second = temp_token(&second, &email).await;
    let code = code_now(&first, &secret);
    assert_eq!(code, code_now(&second, &secret), "the clocks are one step");
    assert_eq!(
        verify(&first, &on_first, &code).await.status(),
        StatusCode::OK
    );
    let replayed = assert_error(
        verify(&second, &on_second, &code).await,
        StatusCode::BAD_REQUEST,
        "TWO_FACTOR_INVALID_CODE",
    )
    .await;
    assert!(replayed["message"].is_string());
    // Both instances log to the one database, which the first reads.
    let failed = at_least(&first, "mfa_challenge_failed", 1).await;
    assert!(
        failed
            .iter()
            .any(|e| e.metadata["reason"] == "replayed_code"),
        "{failed:?}"
    );
}

/// The secret at rest is a ciphertext: it decrypts with the configured key and no other.
#[tokio::test]
async fn the_stored_secret_decrypts_only_with_the_key() {
    use flux_auth::auth::two_factor::SecretCipher;
    for backend in BACKENDS {
        let Some(app) = app(backend).await else {
            continue;
        };
        let email = unique_email();
        let signed_up = app.signed_up(&email).await;
        let user_id = signed_up["user"]["id"].as_str().unwrap().to_owned();
        let (secret, backup) = enable(&app, signed_up["accessToken"].as_str().unwrap()).await;
        let (stored, codes): (String, Vec<String>) = match backend {
            Backend::Postgres => {
                let pool = app.db.as_ref().unwrap().pool().await;
                let row: (String, Vec<String>) = sqlx::query_as(
                    "SELECT secret, backup_codes FROM two_factor WHERE user_id = $1",
                )
                .bind(&user_id)
                .fetch_one(&pool)
                .await
                .unwrap();
                pool.close().await;
                row
            }
            Backend::File => {
                let file: Value = serde_json::from_slice(
                    &std::fs::read(app.data_dir().join("users.json")).unwrap(),
                )
                .unwrap();
                let user = file["users"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|u| u["id"] == user_id.as_str())
                    .unwrap()
                    .clone();
                let two_factor = &user["twoFactor"];
                (
                    two_factor["secret"].as_str().unwrap().to_owned(),
                    serde_json::from_value(two_factor["backupCodes"].clone()).unwrap(),
                )
            }
        };
        let base32 = totp_rs::Secret::from(secret.clone()).to_base32();
        assert!(!stored.contains(&base32));
        for code in &backup {
            assert!(!codes.iter().any(|c| c.contains(&code.replace('-', ""))));
        }
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            SecretCipher::new(&key, None)
                .decrypt(&user_id, &stored)
                .unwrap(),
            secret
        );
        assert!(
            SecretCipher::new(&[7u8; 32], None)
                .decrypt(&user_id, &stored)
                .is_err()
        );
        // Rotation: the old key as the previous one still decrypts.
        assert!(
            SecretCipher::new(&[7u8; 32], Some(&key))
                .decrypt(&user_id, &stored)
                .is_ok()
        );
    }
}

#[tokio::test]
async fn bad_input_is_refused_with_a_clear_error_and_nothing_stored() {
    for backend in BACKENDS {
        let Some(app) = app(backend).await else {
            continue;
        };
        let email = unique_email();
        let token = app.signed_up(&email).await["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        // verify-setup before setup.
        assert_error(
            app.post_json_auth(
                "/api/2fa/verify-setup",
                &token,
                &json!({ "code": "123456" }),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "TWO_FACTOR_NOT_SET_UP",
        )
        .await;
        assert_eq!(
            app.post_json_auth("/api/2fa/setup", &token, &json!({}))
                .await
                .status(),
            StatusCode::OK
        );
        for (body, code) in [
            (json!({}), "VALIDATION_ERROR"),
            (json!({ "code": "" }), "VALIDATION_ERROR"),
            (json!({ "code": 123456 }), "INVALID_BODY"),
            (json!({ "code": "12345" }), "TWO_FACTOR_INVALID_CODE"),
            (
                json!({ "code": "x".repeat(10_000) }),
                "TWO_FACTOR_INVALID_CODE",
            ),
            (
                json!({ "code": "'; DROP TABLE users; --" }),
                "TWO_FACTOR_INVALID_CODE",
            ),
        ] {
            let body = assert_error(
                app.post_json_auth("/api/2fa/verify-setup", &token, &body)
                    .await,
                StatusCode::BAD_REQUEST,
                code,
            )
            .await;
            if code == "VALIDATION_ERROR" {
                assert_eq!(body["field"], "code");
            }
        }
        let not_json = app
            .client
            .post(app.url("/api/2fa/verify-setup"))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body("123456")
            .send()
            .await
            .unwrap();
        assert_error(
            not_json,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        )
        .await;
        // None of that turned two-factor on.
        assert!(app.logged_in(&email).await["accessToken"].is_string());

        for (body, status, code) in [
            (json!({}), StatusCode::BAD_REQUEST, "VALIDATION_ERROR"),
            (
                json!({ "code": "123456" }),
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
            ),
            (
                json!({ "tempToken": "x" }),
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
            ),
            (
                json!({ "tempToken": 5, "code": "1" }),
                StatusCode::BAD_REQUEST,
                "INVALID_BODY",
            ),
            (
                json!({ "tempToken": "made-up", "code": "123456" }),
                StatusCode::UNAUTHORIZED,
                "TWO_FACTOR_TOKEN_EXPIRED",
            ),
            (
                json!({ "tempToken": "t".repeat(5_000), "code": "123456" }),
                StatusCode::UNAUTHORIZED,
                "TWO_FACTOR_TOKEN_EXPIRED",
            ),
        ] {
            assert_error(app.post_json("/api/2fa/verify", &body).await, status, code).await;
        }
        // No token: the Bearer routes answer 401.
        for path in [
            "/api/2fa/setup",
            "/api/2fa/verify-setup",
            "/api/2fa/disable",
        ] {
            assert_error(
                app.post_json(path, &json!({ "code": "123456" })).await,
                StatusCode::UNAUTHORIZED,
                "AUTH_TOKEN_MISSING",
            )
            .await;
        }
        assert_eq!(count_of(&app.events().await, "mfa_enabled"), 0);
    }
}
