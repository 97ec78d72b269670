//! Bad input to the caller's own account routes (`PATCH /api/auth/me`, `GET`/`PUT
//! /api/auth/settings`, `DELETE /api/auth/sessions`): each refusal is a 4xx in the Error shape
//! naming what is wrong, nothing is stored half-way, and no event claims a change; on both stores.

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

async fn send(app: &TestApp, method: Method, path: &str, token: &str, body: &str) -> Response {
    app.client
        .request(method, app.url(path))
        .header("user-agent", UA)
        .header("content-type", "application/json")
        .bearer_auth(token)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn json_of(response: Response) -> Value {
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[tokio::test]
async fn bad_profile_updates_are_400_with_the_field_and_change_nothing() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let signed_up = app.signed_up(&unique_email()).await;
        let token = signed_up["accessToken"].as_str().unwrap();
        let before = json_of(app.me(token).await).await;
        let long_avatar = format!("https://cdn.example.com/{}", "a".repeat(2048));
        let cases: Vec<(Value, &str)> = vec![
            (json!({ "name": "" }), "name"),
            (json!({ "name": "   " }), "name"),
            (json!({ "name": "x".repeat(101) }), "name"),
            (json!({ "name": "bidi\u{202E}name" }), "name"),
            (json!({ "name": 5 }), "name"),
            (json!({ "name": null }), "name"),
            (json!({ "name": ["Ada"] }), "name"),
            (
                json!({ "avatar": "http://cdn.example.com/a.png" }),
                "avatar",
            ),
            (json!({ "avatar": "javascript:alert(1)" }), "avatar"),
            (json!({ "avatar": "" }), "avatar"),
            (json!({ "avatar": long_avatar }), "avatar"),
            (json!({ "avatar": 7 }), "avatar"),
            // A good name beside a bad avatar: neither is stored.
            (
                json!({ "name": "Half Way", "avatar": "ftp://x/y" }),
                "avatar",
            ),
        ];
        for (body, field) in cases {
            let response = send(
                &app,
                Method::PATCH,
                "/api/auth/me",
                token,
                &body.to_string(),
            )
            .await;
            let error = assert_error(response, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
            assert_eq!(error["field"], field, "{backend:?} {body}");
        }
        for (body, code) in [
            ("{\"name\":", "INVALID_JSON"),
            ("[]", "INVALID_BODY"),
            ("\"Ada\"", "INVALID_BODY"),
        ] {
            let response = send(&app, Method::PATCH, "/auth/me", token, body).await;
            assert_error(response, StatusCode::BAD_REQUEST, code).await;
        }
        let no_token = app
            .client
            .patch(app.url("/api/auth/me"))
            .json(&json!({ "name": "Nobody" }))
            .send()
            .await
            .unwrap();
        assert_error(no_token, StatusCode::UNAUTHORIZED, "AUTH_TOKEN_MISSING").await;
        assert_error(
            send(
                &app,
                Method::PATCH,
                "/auth/me",
                "not-a-token",
                "{\"name\":\"X\"}",
            )
            .await,
            StatusCode::UNAUTHORIZED,
            "AUTH_TOKEN_INVALID",
        )
        .await;

        assert_eq!(json_of(app.me(token).await).await, before, "{backend:?}");
        // Nothing sent: nothing written, no event.
        let same = json_of(send(&app, Method::PATCH, "/api/auth/me", token, "{}").await).await;
        assert_eq!(same, before);
        app.logout(token).await;
        let events = app.events_where(|e| count_of(e, "logout") == 1).await;
        assert_eq!(count_of(&events, "profile_updated"), 0, "{backend:?}");
    }
}

#[tokio::test]
async fn bad_settings_are_refused_whole_and_unknown_keys_dropped() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let token = app.signed_up(&unique_email()).await["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        let defaults = json_of(app.get_auth("/api/auth/settings", &token).await).await;
        // Five levels of objects and arrays in one category, one more than is kept.
        let deep = json!({ "settings": {
            "notifications": { "quietHours": { "a": { "b": { "c": [1] } } } },
        }});
        let big = json!({ "settings": { "appearance": { "note": "x".repeat(4096) } } });
        let cases: Vec<(String, StatusCode, &str)> = vec![
            ("{}".into(), StatusCode::BAD_REQUEST, "AUTH_INVALID_SETTINGS"),
            (json!({ "settings": null }).to_string(), StatusCode::BAD_REQUEST, "AUTH_INVALID_SETTINGS"),
            (json!({ "settings": "dark" }).to_string(), StatusCode::BAD_REQUEST, "AUTH_INVALID_SETTINGS"),
            (json!({ "settings": [1] }).to_string(), StatusCode::BAD_REQUEST, "AUTH_INVALID_SETTINGS"),
            (
                // A good category beside a bad one: neither is stored.
                json!({ "settings": { "performance": { "autoSave": false }, "appearance": "dark" } })
                    .to_string(),
                StatusCode::BAD_REQUEST,
                "AUTH_INVALID_SETTINGS",
            ),
            (deep.to_string(), StatusCode::BAD_REQUEST, "AUTH_INVALID_SETTINGS"),
            (big.to_string(), StatusCode::PAYLOAD_TOO_LARGE, "AUTH_SETTINGS_TOO_LARGE"),
            ("{\"settings\":".into(), StatusCode::BAD_REQUEST, "INVALID_JSON"),
            ("[]".into(), StatusCode::BAD_REQUEST, "INVALID_BODY"),
        ];
        for (body, status, code) in cases {
            let response = send(&app, Method::PUT, "/api/auth/settings", &token, &body).await;
            assert_error(response, status, code).await;
        }
        let wrong_type = app
            .client
            .put(app.url("/api/auth/settings"))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body("{\"settings\":{}}")
            .send()
            .await
            .unwrap();
        assert_error(
            wrong_type,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        )
        .await;
        let after = json_of(app.get_auth("/auth/settings", &token).await).await;
        assert_eq!(after, defaults, "{backend:?}: nothing stored half-way");

        // Unknown top-level keys are dropped; a category not sent is kept as it was.
        let body = json!({ "settings": { "appearance": { "darkMode": true }, "isAdmin": true } });
        let saved = json_of(
            send(
                &app,
                Method::PUT,
                "/auth/settings",
                &token,
                &body.to_string(),
            )
            .await,
        )
        .await;
        assert!(saved["settings"].get("isAdmin").is_none(), "{saved}");
        let body = json!({ "settings": { "performance": { "autoSave": false } } });
        send(
            &app,
            Method::PUT,
            "/api/auth/settings",
            &token,
            &body.to_string(),
        )
        .await;
        let shown = json_of(app.get_auth("/api/auth/settings", &token).await).await;
        assert_eq!(shown["settings"]["appearance"]["darkMode"], true, "{shown}");
        assert_eq!(
            shown["settings"]["performance"]["autoSave"], false,
            "{shown}"
        );
        assert_eq!(
            shown["settings"]["appearance"]["language"], "en",
            "defaults merged per category: {shown}"
        );
        assert!(shown["settings"].get("isAdmin").is_none());
    }
}

#[tokio::test]
async fn account_routes_refuse_a_missing_or_bad_token() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        for (method, path) in [
            (Method::GET, "/api/auth/settings"),
            (Method::PUT, "/auth/settings"),
            (Method::GET, "/auth/sessions"),
            (Method::DELETE, "/api/auth/sessions"),
            (Method::DELETE, "/auth/sessions"),
        ] {
            let response = app
                .client
                .request(method.clone(), app.url(path))
                .send()
                .await
                .unwrap();
            assert_error(response, StatusCode::UNAUTHORIZED, "AUTH_TOKEN_MISSING").await;
            let response = send(&app, method, path, "not-a-token", "{}").await;
            assert_error(response, StatusCode::UNAUTHORIZED, "AUTH_TOKEN_INVALID").await;
        }
        // Alone, the caller revokes nothing and keeps working.
        let token = app.signed_up(&unique_email()).await["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        let revoked =
            json_of(send(&app, Method::DELETE, "/api/auth/sessions", &token, "").await).await;
        assert_eq!(revoked, json!({ "success": true, "revoked": 0 }));
        assert_eq!(app.me(&token).await.status(), StatusCode::OK);
    }
}
