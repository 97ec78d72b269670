//! Login: the AuthResponse, the events, one generic failure for every bad credential (B1, B5),
//! fresh sessions (B4), legacy bcrypt users from the old `users.json` (B6) and bad bodies.

use base64::Engine;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::signup::stored_password_hash;

/// A value that must never be written anywhere: the wrong password of the failure tests.
const CANARY: &str = "canary-7f3a9b2c-never-stored";

/// The app on `backend` with `users` (in the old `users.json` shape) already stored: written to
/// `users.json` before the file store opens it, or inserted into the migrated Postgres database.
async fn spawn_with_users(backend: Backend, users: Vec<Value>) -> Option<TestApp> {
    match backend {
        Backend::File => {
            let dir = tempfile::tempdir().unwrap();
            let settings = test_settings(dir.path());
            std::fs::create_dir_all(&settings.data_dir).unwrap();
            let file = serde_json::to_vec_pretty(&json!({ "users": users })).unwrap();
            std::fs::write(settings.data_dir.join("users.json"), file).unwrap();
            Some(TestApp::start(settings, dir, None, Backend::File).await)
        }
        Backend::Postgres => {
            let app = TestApp::try_spawn(Backend::Postgres).await?;
            let pool = app.db.as_ref().unwrap().pool().await;
            for u in &users {
                sqlx::query(
                    "INSERT INTO users (id, email, name, user_type, password_hash, google_id, email_verified) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(u["id"].as_str())
                .bind(u["email"].as_str())
                .bind(u["name"].as_str())
                .bind(u["userType"].as_str().unwrap_or("client"))
                .bind(u["password"].as_str())
                .bind(u["googleId"].as_str())
                .bind(u["emailVerified"].as_bool().unwrap_or(false))
                .execute(&pool)
                .await
                .unwrap();
            }
            pool.close().await;
            Some(app)
        }
    }
}

/// A user of the old service who only ever signed in with Google: no password hash at all.
fn google_only_user(email: &str) -> Value {
    json!({ "id": "1760390026001", "email": email, "name": "Gina Google", "userType": "client",
            "googleId": "google-sub-118240237", "emailVerified": true,
            "createdAt": "2025-10-13T21:13:46.001Z" })
}

/// A user imported from the old `users.json`: bcryptjs (`$2a$`, here cost 4) over the trimmed,
/// HTML-escaped password, as express-validator's `escape()` left it.
fn legacy_user(email: &str, raw_password: &str) -> Value {
    let escaped = flux_auth::auth::passwords::legacy_escape(raw_password.trim());
    let hash = bcrypt::hash_with_result(escaped, 4)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoA);
    json!({ "id": "1760390026607", "email": email, "name": "Lee Legacy", "userType": "designer",
            "password": hash, "createdAt": "2025-10-13T21:13:46.607Z" })
}

/// The claims of an access token, read without verifying it.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn request_id(response: &Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Every byte the app wrote under its folder (users, sessions, event spool), as text.
fn everything_written(app: &TestApp) -> String {
    fn walk(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    let mut out = String::new();
    walk(app.dir.path(), &mut out);
    walk(&app.data_dir(), &mut out);
    out
}

#[tokio::test]
async fn login_returns_auth_response_sets_last_login_and_records_events_on_both_stores() {
    for backend in BACKENDS {
        let Some(mut app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let signed_up = app.signed_up("lena@example.com").await;
        let user_id = signed_up["user"]["id"].as_str().unwrap().to_owned();

        let response = app.login("lena@example.com", PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let request_id = request_id(&response);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["success"], true);
        assert_eq!(body["token"], body["accessToken"]);
        assert_eq!(body["tokenType"], "Bearer");
        assert_eq!(body["expiresIn"], 900);
        assert_ne!(body["refreshToken"], signed_up["refreshToken"]);
        assert_eq!(body["refreshToken"].as_str().unwrap().len(), 54);
        let access = claims(body["accessToken"].as_str().unwrap());
        assert_eq!(access["sub"], user_id.as_str());
        assert_eq!(
            access["exp"].as_i64().unwrap() - access["iat"].as_i64().unwrap(),
            900
        );
        assert_eq!(
            body["expiresAt"].as_i64().unwrap() / 1000,
            access["exp"].as_i64().unwrap(),
            "expiresAt is the token's expiry in milliseconds"
        );
        let user = &body["user"];
        assert_eq!(user["id"], user_id.as_str());
        assert_eq!(user["email"], "lena@example.com");
        assert_eq!(user["createdAt"], signed_up["user"]["createdAt"]);
        for secret_key in ["password", "passwordHash", "googleId"] {
            assert!(user.get(secret_key).is_none(), "{secret_key} leaked");
        }
        let at = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
        assert!(at(&user["lastLogin"]) > at(&signed_up["user"]["lastLogin"]));
        let me: Value = app
            .me(body["accessToken"].as_str().unwrap())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(me["lastLogin"], user["lastLogin"], "lastLogin is stored");

        let events = app
            .events_where(|e| {
                e.iter()
                    .filter(|e| e.event_type.as_str() == "token_generated")
                    .count()
                    == 2
            })
            .await;
        let of_login: Vec<_> = events
            .iter()
            .filter(|e| e.metadata.get("requestId") == Some(&json!(request_id)))
            .collect();
        let types: Vec<&str> = of_login.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["login_success", "token_generated"], "{backend:?}");
        for event in of_login {
            assert_eq!(event.user_id.as_deref(), Some(user_id.as_str()));
            assert_eq!(event.ip_address.as_deref(), Some("127.0.0.1"));
            assert_eq!(event.user_agent.as_deref(), Some(UA));
            assert_eq!(event.metadata["route"], "/api/auth/login");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn b1_b5_unknown_email_wrong_password_and_google_only_get_one_identical_401() {
    for backend in BACKENDS {
        let Some(mut app) =
            spawn_with_users(backend, vec![google_only_user("gina@example.com")]).await
        else {
            continue;
        };
        let known = app.signed_up("known@example.com").await;
        let known_id = known["user"]["id"].as_str().unwrap();

        let mut answers = Vec::new();
        for (email, why) in [
            ("nobody@example.com", "unknown email"),
            ("known@example.com", "wrong password"),
            ("gina@example.com", "google-only account"),
        ] {
            let response = app.login(email, CANARY).await;
            let mut headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .filter(|(name, _)| !["date", "x-request-id"].contains(&name.as_str()))
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
                .collect();
            headers.sort();
            assert!(
                headers.iter().any(|(n, _)| n == "www-authenticate"),
                "{why}: {headers:?}"
            );
            let mut body = assert_error(
                response,
                StatusCode::UNAUTHORIZED,
                "AUTH_INVALID_CREDENTIALS",
            )
            .await;
            body.as_object_mut().unwrap().remove("requestId");
            answers.push((why, body, headers));
        }
        for (why, body, headers) in &answers[1..] {
            assert_eq!(body, &answers[0].1, "{backend:?}: {why} body differs");
            assert_eq!(headers, &answers[0].2, "{backend:?}: {why} headers differ");
        }

        let unknown = app.events_of("login_failed").await;
        assert_eq!(unknown.len(), 1, "{backend:?}");
        assert_eq!(unknown[0].metadata["reason"], "unknown_email");
        assert_eq!(unknown[0].metadata["email"], "nobody@example.com");
        assert_eq!(unknown[0].user_id, None);
        let attempts = app
            .events_where(|e| {
                e.iter()
                    .filter(|e| e.event_type.as_str() == "failed_login_attempt")
                    .count()
                    == 2
            })
            .await;
        let attempts: Vec<_> = attempts
            .iter()
            .filter(|e| e.event_type.as_str() == "failed_login_attempt")
            .map(|e| (e.user_id.as_deref(), e.metadata["reason"].as_str()))
            .collect();
        assert_eq!(
            attempts,
            [
                (Some(known_id), Some("wrong_password")),
                (Some("1760390026001"), Some("no_password_set")),
            ],
            "{backend:?}"
        );

        app.stop().await;
        let events = serde_json::to_string(&app.events().await).unwrap();
        for secret in [CANARY, PASSWORD] {
            assert!(!events.contains(secret), "{backend:?}: password in events");
            assert!(
                !everything_written(&app).contains(secret),
                "{backend:?}: password in a file"
            );
        }
    }
}

#[tokio::test]
async fn b4_every_login_gets_a_new_refresh_token_and_session() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        app.signed_up("twice@example.com").await;
        let mut seen = Vec::new();
        for _ in 0..2 {
            let response = app
                .post_json(
                    "/api/auth/login",
                    // Session values offered by the client are never adopted.
                    &json!({ "email": "twice@example.com", "password": PASSWORD,
                             "sid": "fixed-session", "refreshToken": "fixed-refresh-token" }),
                )
                .await;
            assert_eq!(response.status(), StatusCode::OK);
            let body: Value = response.json().await.unwrap();
            let sid = claims(body["accessToken"].as_str().unwrap())["sid"].clone();
            assert!(
                uuid::Uuid::parse_str(sid.as_str().unwrap()).is_ok(),
                "{sid}"
            );
            seen.push((body["refreshToken"].clone(), sid));
        }
        assert_ne!(seen[0].0, seen[1].0, "{backend:?}: same refresh token");
        assert_ne!(seen[0].1, seen[1].1, "{backend:?}: same session id");
    }
}

#[tokio::test]
async fn b6_legacy_bcrypt_users_log_in_with_the_raw_password_and_are_rehashed_on_both_stores() {
    let raw = r#"O'Brien <3 & "co" / 2019"#;
    for backend in BACKENDS {
        let Some(mut app) =
            spawn_with_users(backend, vec![legacy_user("lee@example.com", raw)]).await
        else {
            continue;
        };
        assert!(
            stored_password_hash(&app, "lee@example.com")
                .await
                .starts_with("$2a$04$")
        );

        assert_error(
            app.login("lee@example.com", "O'Brien <3 & co / 2019").await,
            StatusCode::UNAUTHORIZED,
            "AUTH_INVALID_CREDENTIALS",
        )
        .await;
        assert!(
            stored_password_hash(&app, "lee@example.com")
                .await
                .starts_with("$2a$"),
            "a failed login does not touch the hash"
        );

        let response = app.login("Lee@Example.com", raw).await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["user"]["id"], "1760390026607", "imported ids are kept");
        assert_eq!(body["user"]["userType"], "designer");

        let hash = stored_password_hash(&app, "lee@example.com").await;
        assert!(
            hash.starts_with("$argon2id-legacy$v=19$m=19456,t=2,p=1$"),
            "{backend:?}: {hash}"
        );
        let rehashed = app.events_of("password_rehashed").await;
        assert_eq!(rehashed.len(), 1, "{backend:?}");
        assert_eq!(rehashed[0].user_id.as_deref(), Some("1760390026607"));
        assert_eq!(rehashed[0].metadata["from"], "bcrypt");

        assert_eq!(
            app.login("lee@example.com", raw).await.status(),
            StatusCode::OK
        );
        assert_error(
            app.login(
                "lee@example.com",
                "O'Brien &lt;3 &amp; &quot;co&quot; &#x2F; 2019",
            )
            .await,
            StatusCode::UNAUTHORIZED,
            "AUTH_INVALID_CREDENTIALS",
        )
        .await;
        assert_eq!(
            stored_password_hash(&app, "lee@example.com").await,
            hash,
            "an argon2id hash at today's cost is not rehashed again"
        );
        app.stop().await;
        assert_eq!(app.events_of("password_rehashed").await.len(), 1);
        assert!(!everything_written(&app).contains(raw));
    }
}

#[tokio::test]
async fn a_legacy_password_logs_in_as_typed_and_trimmed_after_its_upgrade_on_both_stores() {
    let typed = "  open <sesame> & 'friends' ";
    let trimmed = typed.trim();
    for backend in BACKENDS {
        let Some(mut app) =
            spawn_with_users(backend, vec![legacy_user("sam@example.com", typed)]).await
        else {
            continue;
        };
        // The old service trimmed before hashing, so both forms logged in there.
        assert_eq!(
            app.login("sam@example.com", typed).await.status(),
            StatusCode::OK,
            "{backend:?}: the first login upgrades the hash"
        );
        for (form, what) in [
            (trimmed, "trimmed"),
            (typed, "as typed"),
            (trimmed, "trimmed again"),
        ] {
            assert_eq!(
                app.login("sam@example.com", form).await.status(),
                StatusCode::OK,
                "{backend:?}: {what}, after the upgrade"
            );
        }
        assert_error(
            app.login(
                "sam@example.com",
                "open &lt;sesame&gt; &amp; &#x27;friends&#x27;",
            )
            .await,
            StatusCode::UNAUTHORIZED,
            "AUTH_INVALID_CREDENTIALS",
        )
        .await;
        let upgraded = stored_password_hash(&app, "sam@example.com").await;
        assert!(upgraded.starts_with("$argon2id-legacy$"), "{upgraded}");

        // A password set here is exact: no trimming, no escaping.
        let padded = "  violet tractor hums at dusk ";
        assert_eq!(
            app.signup("new@example.com", padded, "New").await.status(),
            StatusCode::CREATED
        );
        assert_eq!(
            app.login("new@example.com", padded).await.status(),
            StatusCode::OK
        );
        assert_error(
            app.login("new@example.com", padded.trim()).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_INVALID_CREDENTIALS",
        )
        .await;
        app.stop().await;
        assert_eq!(
            app.events_of("password_rehashed").await.len(),
            1,
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn missing_or_empty_fields_are_400_naming_the_field_and_email_case_is_ignored() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        app.signed_up("case@example.com").await;
        for (body, field) in [
            (json!({}), "email"),
            (json!({ "password": PASSWORD }), "email"),
            (json!({ "email": "", "password": PASSWORD }), "email"),
            (json!({ "email": "   ", "password": PASSWORD }), "email"),
            (json!({ "email": null, "password": PASSWORD }), "email"),
            (json!({ "email": "case@example.com" }), "password"),
            (
                json!({ "email": "case@example.com", "password": "" }),
                "password",
            ),
            (
                json!({ "email": "case@example.com", "password": null }),
                "password",
            ),
        ] {
            let response = app.post_json("/api/auth/login", &body).await;
            let error = assert_error(response, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
            assert_eq!(error["field"], field, "{backend:?}: {body}");
        }
        for email in ["CASE@EXAMPLE.COM", "  Case@Example.Com  "] {
            let response = app.login(email, PASSWORD).await;
            assert_eq!(response.status(), StatusCode::OK, "{backend:?}: {email:?}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["user"]["email"], "case@example.com");
        }
    }
}
