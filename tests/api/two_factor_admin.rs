//! Two-factor sign-in turned off for someone else (an admin in the dashboard's user view, an
//! operator with the CLI), and what the service says without its key.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::two_factor::{app, at_least, enable, temp_token};

#[tokio::test]
async fn without_the_key_setup_answers_503_and_check_config_says_why() {
    let Some(app) = TestApp::try_spawn(Backend::File).await else {
        return;
    };
    let token = app.signed_up(&unique_email()).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_error(
        app.post_json_auth("/api/2fa/setup", &token, &json!({}))
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "TWO_FACTOR_SERVICE_UNAVAILABLE",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let output = run_cli_blocking(&[("DATA_DIR", data.clone())], &["check-config"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("TOTP_ENCRYPTION_KEY is unset"), "{stdout}");
    let output = run_cli_blocking(
        &[
            ("DATA_DIR", data.clone()),
            ("TOTP_ENCRYPTION_KEY", "too-short".to_owned()),
        ],
        &["check-config"],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("gen-totp-key"));
    let key = run_cli_blocking(&[("DATA_DIR", data.clone())], &["gen-totp-key"]);
    let key = String::from_utf8_lossy(&key.stdout).trim().to_owned();
    let output = run_cli_blocking(
        &[("DATA_DIR", data), ("TOTP_ENCRYPTION_KEY", key)],
        &["check-config"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("two-factor:   available"));
}

#[tokio::test]
async fn an_operator_turns_two_factor_off_with_the_cli() {
    for backend in BACKENDS {
        let Some(app) = app(backend).await else {
            continue;
        };
        let email = unique_email();
        let token = app.signed_up(&email).await["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        enable(&app, &token).await;
        temp_token(&app, &email).await;
        let mut envs = vec![
            ("DATA_DIR", app.data_dir().display().to_string()),
            (
                "SECURITY_LOG_DIR",
                app.data_dir().join("cli-events").display().to_string(),
            ),
        ];
        if let Some(db) = &app.db {
            envs.push(("DATABASE_URL", db.url.clone()));
        }
        let email_arg = email.to_uppercase();
        let output = tokio::task::spawn_blocking(move || {
            run_cli_blocking(&envs, &["users", "2fa-off", &email_arg])
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("turned off"));
        eventually_ok("the password alone to sign in", MIRROR_PATIENCE, || async {
            let body: Value = app.login(&email, PASSWORD).await.json().await.unwrap();
            when(body["accessToken"].is_string(), (), body)
        })
        .await;
    }
}

#[tokio::test]
async fn an_admin_sees_two_factor_and_turns_it_off_for_a_user() {
    for backend in BACKENDS {
        let Some(app) = app(backend).await else {
            continue;
        };
        let admin_email = unique_email();
        app.signed_up(&admin_email).await;
        make_admin(&app, &admin_email).await;
        let admin = app.logged_in(&admin_email).await["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        let email = unique_email();
        let user = app.signed_up(&email).await;
        let user_id = user["user"]["id"].as_str().unwrap().to_owned();
        let found = |token: String| {
            let app = &app;
            let email = email.clone();
            async move {
                app.client
                    .get(app.url("/api/admin/security/users"))
                    .query(&[("query", email.as_str())])
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
            }
        };
        let before: Value = found(admin.clone()).await.json().await.unwrap();
        assert_eq!(before["twoFactorEnabled"], false, "{before}");
        enable(&app, user["accessToken"].as_str().unwrap()).await;
        let after: Value = found(admin.clone()).await.json().await.unwrap();
        assert_eq!(after["twoFactorEnabled"], true, "{after}");

        let turn_off = |token: &str, id: &str| {
            app.client
                .delete(app.url(&format!("/api/admin/security/users/{id}/2fa")))
                .bearer_auth(token)
                .send()
        };
        // Not an admin: 403, and nothing changes.
        let own = user["accessToken"].as_str().unwrap();
        assert_error(
            turn_off(own, &user_id).await.unwrap(),
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
        )
        .await;
        assert_error(
            turn_off(&admin, "no-such-user").await.unwrap(),
            StatusCode::NOT_FOUND,
            "USER_NOT_FOUND",
        )
        .await;
        temp_token(&app, &email).await;
        assert_eq!(
            turn_off(&admin, &user_id).await.unwrap().status(),
            StatusCode::OK
        );
        assert!(app.logged_in(&email).await["accessToken"].is_string());
        assert_error(
            turn_off(&admin, &user_id).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "TWO_FACTOR_NOT_ENABLED",
        )
        .await;
        let disabled = at_least(&app, "mfa_disabled", 1).await;
        assert_eq!(disabled[0].metadata["by"], "admin");
        assert_eq!(disabled[0].user_id.as_deref(), Some(user_id.as_str()));
        assert!(disabled[0].metadata["adminId"].is_string());
    }
}
