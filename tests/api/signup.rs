//! Signup: the AuthResponse shape, what is stored, the events, and the password rules (A1–A7).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn signup_returns_auth_response_and_stores_an_argon2id_user_on_both_stores() {
    for backend in BACKENDS {
        let Some(mut app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let response = app
            .post_json(
                "/api/auth/signup",
                &json!({ "email": "  Ann.Lee@Example.COM ", "password": PASSWORD, "name": " Ann <b>Lee</b> ",
                         "userType": "designer", "role": "admin", "emailVerified": true, "id": "chosen" }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["success"], true);
        assert_eq!(body["token"], body["accessToken"]);
        assert_eq!(body["tokenType"], "Bearer");
        assert_eq!(body["expiresIn"], 900);
        assert!(body["expiresAt"].as_i64().unwrap() > chrono::Utc::now().timestamp_millis());
        assert_eq!(body["refreshToken"].as_str().unwrap().len(), 54);
        let user = &body["user"];
        assert_eq!(user["email"], "ann.lee@example.com");
        assert_eq!(
            user["name"], "Ann <b>Lee</b>",
            "stored as sent, not HTML-escaped"
        );
        assert_eq!(user["userType"], "designer");
        assert_eq!(user["emailVerified"], false);
        assert_ne!(user["id"], "chosen");
        assert_eq!(user["role"], "designer", "the role sent is ignored");
        for secret_key in ["password", "passwordHash", "googleId"] {
            assert!(user.get(secret_key).is_none(), "{secret_key} leaked");
        }

        let me: Value = app
            .me(body["accessToken"].as_str().unwrap())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(&me, user, "/me returns the same bare user");

        let hash = stored_password_hash(&app, "ann.lee@example.com").await;
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );

        let events = app
            .events_where(|e| {
                e.iter()
                    .filter(|e| e.event_type.as_str() == "token_generated")
                    .count()
                    == 1
            })
            .await;
        let types: Vec<&str> = events
            .iter()
            .map(|e| e.event_type.as_str())
            .filter(|t| *t != "service_started")
            .collect();
        assert_eq!(
            types,
            [
                "signup_success",
                "email_verification_sent",
                "token_generated"
            ],
            "{backend:?}"
        );
        let signup = &events
            .iter()
            .find(|e| e.event_type.as_str() == "signup_success")
            .unwrap();
        assert_eq!(signup.user_id.as_deref(), user["id"].as_str());
        assert_eq!(signup.ip_address.as_deref(), Some("127.0.0.1"));
        assert_eq!(signup.user_agent.as_deref(), Some(UA));
        assert_eq!(signup.metadata["email"], "ann.lee@example.com");
        assert_eq!(signup.metadata["route"], "/api/auth/signup");
        assert!(
            signup.metadata["requestId"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
        assert_eq!(signup.metadata["deviceName"], "Chrome on macOS");
        assert_eq!(
            signup.metadata["deviceFingerprint"].as_str().unwrap().len(),
            64
        );
        app.stop().await;
    }
}

pub async fn stored_password_hash(app: &TestApp, email: &str) -> String {
    match app.backend {
        Backend::Postgres => {
            let pool = app.db.as_ref().unwrap().pool().await;
            sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
                .bind(email)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
        Backend::File => {
            let file: Value =
                serde_json::from_slice(&std::fs::read(app.data_dir().join("users.json")).unwrap())
                    .unwrap();
            file["users"]
                .as_array()
                .unwrap()
                .iter()
                .find(|u| u["email"] == email)
                .map(|u| u["password"].as_str().unwrap().to_owned())
                .unwrap()
        }
    }
}

#[tokio::test]
async fn a1_a4_password_rules_are_enforced_without_composition_rules() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    for (password, why) in [
        ("short12", "7 characters"),
        ("ééééééé", "7 code points, 14 bytes"),
        ("password", "common"),
        ("123456789", "common"),
        ("iloveyou123", "common"),
    ] {
        let body = assert_error(
            app.signup(&unique_email(), password, "N").await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(body["field"], "password", "{why}");
        let message = body["message"].as_str().unwrap().to_lowercase();
        for rule in ["upper", "digit", "symbol", "special"] {
            assert!(!message.contains(rule), "composition rule in {message:?}");
        }
    }
    let email = unique_email();
    let body = assert_error(
        app.signup(&email, &email, "N").await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(body["field"], "password");
    // Eight code points, passphrases with spaces, emoji and non-Latin text are fine.
    for password in [
        "kx8#pQ2z",
        "Zürich straße 🚲 ünd daß",
        "東京タワーの夜景がきれい",
        &"a quiet violet lake ".repeat(6)[..120],
    ] {
        assert_eq!(
            app.signup(&unique_email(), password, "N").await.status(),
            StatusCode::CREATED,
            "{password}"
        );
    }
}

#[tokio::test]
async fn a4_breached_passwords_are_refused_with_a_common_breached_reason() {
    let mut app = TestApp::try_spawn(Backend::File).await.unwrap();
    let email = unique_email();
    for password in ["Welcome@123", "Summer2024!", "correcthorsebatterystaple"] {
        let body = assert_error(
            app.signup(&email, password, "N").await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(body["field"], "password", "{password}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("common") && message.contains("breached"),
            "{password}: {message}"
        );
    }
    assert_eq!(
        app.login(&email, "Welcome@123").await.status(),
        StatusCode::UNAUTHORIZED,
        "no account was created"
    );
    app.stop().await;
    let refused = app.events_of("signup_failed").await;
    assert_eq!(refused.len(), 3);
    assert!(
        refused
            .iter()
            .all(|e| e.metadata["reason"] == "weak_password")
    );
}

#[tokio::test]
async fn a2_long_unicode_passwords_are_neither_truncated_nor_case_folded() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let email = unique_email();
    let password = "ünïcödé pässwörd 🚀 with spaces and more text to pass seventy-two bytes easily";
    assert!(password.len() > 72);
    assert_eq!(
        app.signup(&email, password, "U").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(app.login(&email, password).await.status(), StatusCode::OK);
    let first_72: String = String::from_utf8_lossy(&password.as_bytes()[..72]).into_owned();
    assert_eq!(
        app.login(&email, &first_72).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&email, &password.to_uppercase()).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a3_a_huge_password_is_refused_before_hashing() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    // 10,000 characters fit in the body limit: refused by the length rule.
    let body = assert_error(
        app.signup(&unique_email(), &"x".repeat(10_000), "N").await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(body["field"], "password");
    // A megabyte does not: refused by the body limit before it is even parsed.
    assert_error(
        app.signup(&unique_email(), &"x".repeat(1 << 20), "N").await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
    let users = std::fs::read(app.data_dir().join("users.json")).unwrap_or_default();
    assert!(users.is_empty() || !String::from_utf8_lossy(&users).contains("xxxxxxxx"));
}

#[tokio::test]
async fn a5_same_password_gets_different_salts() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    app.signed_up("one@example.com").await;
    app.signed_up("two@example.com").await;
    let a = stored_password_hash(&app, "one@example.com").await;
    let b = stored_password_hash(&app, "two@example.com").await;
    assert_ne!(a, b);
    let salt = a.split('$').nth(4).unwrap();
    assert!(salt.len() >= 22, "salt of at least 16 bytes: {salt}");
}

#[tokio::test]
async fn a7_email_case_is_one_account_and_duplicates_are_409_with_nothing_stored() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        app.signed_up("alice@x.com").await;
        assert_error(
            app.signup("Alice@X.com", PASSWORD, "Other").await,
            StatusCode::CONFLICT,
            "AUTH_EMAIL_EXISTS",
        )
        .await;
        assert_eq!(
            app.login("ALICE@x.COM", PASSWORD).await.status(),
            StatusCode::OK
        );
        let failed = app.events_of("signup_failed").await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].metadata["reason"], "email_exists");
    }
}

#[tokio::test]
async fn concurrent_signups_of_one_email_create_exactly_one_account() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let email = unique_email();
        let attempts = (0..8).map(|i| {
            let app = &app;
            let email = email.clone();
            async move {
                app.signup(&email, PASSWORD, &format!("N{i}"))
                    .await
                    .status()
            }
        });
        let statuses = futures::future::join_all(attempts).await;
        let created = statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        let conflicts = statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count();
        assert_eq!((created, conflicts), (1, 7), "{backend:?}: {statuses:?}");
    }
}

#[tokio::test]
async fn admin_is_never_self_assigned_and_user_type_is_validated() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    for user_type in ["admin", "root", "ADMIN"] {
        let response = app
            .post_json("/api/auth/signup", &json!({ "email": unique_email(), "password": PASSWORD, "name": "N", "userType": user_type }))
            .await;
        let body = assert_error(response, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert_eq!(body["field"], "userType");
    }
    let users: Value = serde_json::from_slice(
        &std::fs::read(app.data_dir().join("users.json"))
            .unwrap_or_else(|_| b"{\"users\":[]}".to_vec()),
    )
    .unwrap();
    assert_eq!(
        users["users"].as_array().unwrap().len(),
        0,
        "nothing stored half-way"
    );
}
