//! Logout, logout-all and the session endpoints (D1, D2, D4) on both stores: what each revokes,
//! at once, and nothing more; the events each records.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

const PHONE_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 Mobile/15E148 Safari/604.1";

fn text<'a>(body: &'a Value, key: &str) -> &'a str {
    body[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {body}"))
}

async fn refresh_status(app: &TestApp, session: &Value) -> StatusCode {
    app.refresh(text(session, "refreshToken")).await.status()
}

async fn me_status(app: &TestApp, session: &Value) -> StatusCode {
    app.me(text(session, "accessToken")).await.status()
}

async fn delete_session(app: &TestApp, token: &str, id: &str) -> Response {
    app.client
        .delete(app.url(&format!("/api/auth/sessions/{id}")))
        .header("user-agent", UA)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Records an event after everything before it, so counts read after it are final.
async fn settle_events(app: &TestApp) -> Vec<flux_auth::security_log::SecurityEvent> {
    let before = count_of(&app.events().await, "token_verification_failed");
    assert_eq!(app.me("not.a.jwt").await.status(), StatusCode::UNAUTHORIZED);
    app.events_where(|e| count_of(e, "token_verification_failed") > before)
        .await
}

#[tokio::test]
async fn d1_logout_ends_the_refresh_token_and_the_access_token_at_once() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let session = app.signed_up(&unique_email()).await;
        let response = app.logout(text(&session, "accessToken")).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{backend:?}: bodiless POST"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({ "success": true, "message": "Logged out successfully" })
        );
        assert_error(
            app.refresh(text(&session, "refreshToken")).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_REFRESH_INVALID",
        )
        .await;
        assert_eq!(
            me_status(&app, &session).await,
            StatusCode::UNAUTHORIZED,
            "{backend:?}"
        );

        let sid = session_of(text(&session, "accessToken"));
        let stored = app
            .stored_sessions()
            .await
            .into_iter()
            .find(|s| s.id == sid)
            .unwrap();
        assert_eq!(stored.revoked_reason.as_deref(), Some("logout"));
        let events = settle_events(&app).await;
        assert_eq!(count_of(&events, "logout"), 1);
        let revoked: Vec<_> = events
            .iter()
            .filter(|e| e.event_type.as_str() == "token_revoked")
            .collect();
        assert_eq!(revoked.len(), 1, "{backend:?}");
        assert_eq!(revoked[0].metadata["reason"], "logout");
        assert_eq!(revoked[0].metadata["sessionId"], sid.to_string());
    }
}

#[tokio::test]
async fn logout_with_a_refresh_token_body_ends_that_session_of_the_same_user_only() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let email = unique_email();
        let first = app.signed_up(&email).await;
        let second = app.logged_in(&email).await;
        let third = app.logged_in(&email).await;
        let untouched = app.logged_in(&email).await;
        let stranger = app.signed_up(&unique_email()).await;
        for (caller, named) in [(&first, &stranger), (&third, &second)] {
            let response = app
                .post_json_auth(
                    "/api/auth/logout",
                    text(caller, "accessToken"),
                    &json!({ "refreshToken": text(named, "refreshToken") }),
                )
                .await;
            assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        }
        for ended in [&first, &second, &third] {
            assert_eq!(
                refresh_status(&app, ended).await,
                StatusCode::UNAUTHORIZED,
                "{backend:?}"
            );
            assert_eq!(
                me_status(&app, ended).await,
                StatusCode::UNAUTHORIZED,
                "{backend:?}"
            );
        }
        // Another user's refresh token in the body is ignored; other sessions live on.
        assert_eq!(me_status(&app, &stranger).await, StatusCode::OK);
        assert_eq!(
            refresh_status(&app, &stranger).await,
            StatusCode::OK,
            "{backend:?}"
        );
        assert_eq!(me_status(&app, &untouched).await, StatusCode::OK);
        assert_eq!(refresh_status(&app, &untouched).await, StatusCode::OK);
    }
}

#[tokio::test]
async fn d2_logout_twice_is_200_with_exactly_one_logout_event() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let session = app.signed_up(&unique_email()).await;
        let token = text(&session, "accessToken");
        assert_eq!(app.logout(token).await.status(), StatusCode::OK);
        // The frontend's variant: JSON content type, empty body.
        let again = app
            .client
            .post(app.url("/api/auth/logout"))
            .header("user-agent", UA)
            .header("content-type", "application/json")
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::OK, "{backend:?}");
        let body: Value = again.json().await.unwrap();
        assert_eq!(body["message"], "Logged out successfully");

        assert_error(
            app.logout("not.a.jwt").await,
            StatusCode::UNAUTHORIZED,
            "AUTH_TOKEN_INVALID",
        )
        .await;
        let missing = app
            .client
            .post(app.url("/api/auth/logout"))
            .send()
            .await
            .unwrap();
        assert_error(missing, StatusCode::UNAUTHORIZED, "AUTH_TOKEN_MISSING").await;

        let events = settle_events(&app).await;
        assert_eq!(count_of(&events, "logout"), 1, "{backend:?}");
        assert_eq!(count_of(&events, "token_revoked"), 1, "{backend:?}");
    }
}

#[tokio::test]
async fn logout_all_ends_every_session_and_every_earlier_access_token() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let email = unique_email();
        let mut sessions = vec![app.signed_up(&email).await];
        for _ in 0..2 {
            sessions.push(app.logged_in(&email).await);
        }
        // An access token minted by a refresh, before logout-all, dies too.
        let rotated = {
            let response = app.refresh(text(&sessions[2], "refreshToken")).await;
            response.json::<Value>().await.unwrap()
        };
        let response = app
            .post_json_auth(
                "/api/auth/logout-all",
                text(&sessions[1], "accessToken"),
                &json!({}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({ "success": true, "message": "Logged out from all devices", "tokensRevoked": 3 })
        );
        for session in sessions.iter().chain([&rotated]) {
            assert_eq!(
                refresh_status(&app, session).await,
                StatusCode::UNAUTHORIZED,
                "{backend:?}"
            );
            assert_eq!(
                me_status(&app, session).await,
                StatusCode::UNAUTHORIZED,
                "{backend:?}"
            );
        }
        let fresh = app.logged_in(&email).await;
        assert_eq!(
            me_status(&app, &fresh).await,
            StatusCode::OK,
            "{backend:?}: a later login works"
        );
        assert_eq!(refresh_status(&app, &fresh).await, StatusCode::OK);

        let mass = app.events_of("mass_token_revocation").await;
        assert_eq!(mass.len(), 1);
        assert_eq!(mass[0].metadata["tokensRevoked"], 3);
        assert_eq!(
            mass[0].user_id.as_deref(),
            sessions[0]["user"]["id"].as_str()
        );
        assert_eq!(mass[0].severity.as_str(), "warning");
    }
}

#[tokio::test]
async fn sessions_lists_live_sessions_with_exactly_one_current() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let email = unique_email();
        let mine = app.signed_up(&email).await;
        let phone: Value = app
            .client
            .post(app.url("/api/auth/login"))
            .header("user-agent", PHONE_UA)
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ended = app.logged_in(&email).await;
        assert_eq!(
            app.logout(text(&ended, "accessToken")).await.status(),
            StatusCode::OK
        );
        app.signed_up(&unique_email()).await; // someone else's session is never listed

        let response = app
            .get_auth("/api/auth/sessions", text(&mine, "accessToken"))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let body: Value = response.json().await.unwrap();
        let list = body["sessions"].as_array().unwrap();
        assert_eq!(list.len(), 2, "{backend:?}: {body}");
        let current: Vec<_> = list.iter().filter(|s| s["isCurrent"] == true).collect();
        assert_eq!(current.len(), 1);
        assert_eq!(
            current[0]["id"],
            session_of(text(&mine, "accessToken")).to_string()
        );
        assert_eq!(current[0]["deviceName"], "Chrome on macOS");
        let other = list.iter().find(|s| s["isCurrent"] == false).unwrap();
        assert_eq!(
            other["id"],
            session_of(text(&phone, "accessToken")).to_string()
        );
        assert_eq!(other["deviceName"], "Safari on iOS");
        for session in list {
            let keys: Vec<&str> = session
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            for key in [
                "id",
                "deviceName",
                "ipAddress",
                "createdAt",
                "lastUsedAt",
                "expiresAt",
                "isCurrent",
            ] {
                assert!(keys.contains(&key), "{key} missing in {session}");
            }
            for secret in ["fingerprint", "tokenHash", "userAgent", "refreshToken"] {
                assert!(!keys.contains(&secret), "{secret} listed in {session}");
            }
            assert_eq!(session["ipAddress"], "127.0.0.1");
            let time = |k: &str| {
                chrono::DateTime::parse_from_rfc3339(session[k].as_str().unwrap()).unwrap()
            };
            assert!(time("createdAt") <= time("lastUsedAt"));
            assert!(time("expiresAt") > chrono::Utc::now());
        }
    }
}

#[tokio::test]
async fn deleting_a_session_ends_that_session_only() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let email = unique_email();
        let mine = app.signed_up(&email).await;
        let other = app.logged_in(&email).await;
        let other_id = session_of(text(&other, "accessToken")).to_string();
        let response = delete_session(&app, text(&mine, "accessToken"), &other_id).await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({ "success": true, "message": "Session revoked successfully" })
        );
        assert_eq!(
            refresh_status(&app, &other).await,
            StatusCode::UNAUTHORIZED,
            "{backend:?}"
        );
        assert_eq!(
            me_status(&app, &other).await,
            StatusCode::UNAUTHORIZED,
            "{backend:?}"
        );
        assert_eq!(me_status(&app, &mine).await, StatusCode::OK);
        assert_eq!(refresh_status(&app, &mine).await, StatusCode::OK);
        // Already revoked: no longer the caller's live session.
        let again = delete_session(&app, text(&mine, "accessToken"), &other_id).await;
        assert_error(again, StatusCode::NOT_FOUND, "SESSION_NOT_FOUND").await;

        let revoked = app.events_of("token_revoked").await;
        assert_eq!(revoked.len(), 1, "{backend:?}");
        assert_eq!(revoked[0].metadata["reason"], "revoked_by_user");
        assert_eq!(revoked[0].metadata["sessionId"], other_id);
    }
}

#[tokio::test]
async fn deleting_an_unknown_malformed_or_foreign_session_is_404_and_revokes_nothing() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let mine = app.signed_up(&unique_email()).await;
        let theirs = app.signed_up(&unique_email()).await;
        let their_id = session_of(text(&theirs, "accessToken")).to_string();
        let unknown = uuid::Uuid::new_v4().to_string();
        for id in [
            unknown.as_str(),
            "not-a-uuid",
            "%27%20OR%201%3D1",
            their_id.as_str(),
        ] {
            let response = delete_session(&app, text(&mine, "accessToken"), id).await;
            assert_error(response, StatusCode::NOT_FOUND, "SESSION_NOT_FOUND").await;
        }
        for session in [&mine, &theirs] {
            assert_eq!(
                me_status(&app, session).await,
                StatusCode::OK,
                "{backend:?}"
            );
            assert_eq!(
                refresh_status(&app, session).await,
                StatusCode::OK,
                "{backend:?}"
            );
        }
        assert!(
            app.stored_sessions()
                .await
                .iter()
                .all(|s| s.revoked_reason.is_none())
        );
        let events = settle_events(&app).await;
        assert_eq!(count_of(&events, "token_revoked"), 0, "{backend:?}");
    }
}

#[tokio::test]
async fn d4_a_deleted_user_loses_access_and_refresh() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let session = app.signed_up(&unique_email()).await;
        let user_id = text(&session["user"], "id").to_owned();
        let app = app.delete_user(&user_id).await;
        assert_error(
            app.me(text(&session, "accessToken")).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_TOKEN_INVALID",
        )
        .await;
        assert_error(
            app.refresh(text(&session, "refreshToken")).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_REFRESH_INVALID",
        )
        .await;
        let sid = session_of(text(&session, "accessToken"));
        let stored = app
            .stored_sessions()
            .await
            .into_iter()
            .find(|s| s.id == sid)
            .unwrap();
        assert!(
            stored.revoked_reason.is_some(),
            "{backend:?}: the session is revoked"
        );
    }
}
