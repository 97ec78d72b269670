//! The admin user routes over plain HTTP: finding a user by email or id with their live sessions,
//! revoking one session or all of them (recorded with the admin), and the refusal a non-admin
//! gets.

use reqwest::StatusCode;
use serde_json::Value;

use super::dashboard_app;
use crate::helpers::*;

#[tokio::test]
async fn admin_user_routes_find_revoke_and_refuse_non_admins() {
    let app = dashboard_app().await;
    let admin_email = unique_email();
    let admin = app.signed_up(&admin_email).await;
    let admin_token = admin["accessToken"].as_str().unwrap().to_owned();
    let user_email = unique_email();
    let user = app.signed_up(&user_email).await;
    let user_id = user["user"]["id"].as_str().unwrap().to_owned();
    let user_token = user["accessToken"].as_str().unwrap().to_owned();
    let search = |token: &str, query: &str| {
        app.client
            .get(app.url("/api/admin/security/users"))
            .query(&[("query", query)])
            .bearer_auth(token.to_owned())
            .send()
    };

    for path in [
        format!("/api/admin/security/users?query={user_id}"),
        format!("/api/admin/security/users/{user_id}/sessions"),
    ] {
        let request = if path.ends_with("/sessions") {
            app.client.delete(app.url(&path))
        } else {
            app.client.get(app.url(&path))
        };
        assert_error(
            request.bearer_auth(&user_token).send().await.unwrap(),
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
        )
        .await;
    }
    make_admin(&app, &admin_email).await;

    // By email (any case) and by id: the same user with their live session.
    for query in [user_email.to_uppercase(), user_id.clone()] {
        let found: Value = search(&admin_token, &query)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(found["user"]["id"], user_id.as_str(), "{found}");
        let sessions = found["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0]["ipAddress"], "127.0.0.1");
        assert!(found["user"].get("passwordHash").is_none());
    }
    assert_error(
        search(&admin_token, "nobody@example.com").await.unwrap(),
        StatusCode::NOT_FOUND,
        "USER_NOT_FOUND",
    )
    .await;
    assert_error(
        search(&admin_token, "  ").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
    )
    .await;

    // A session id that is not the user's: 404, nothing revoked.
    let admin_sid = session_of(&admin_token);
    let wrong = app
        .client
        .delete(app.url(&format!(
            "/api/admin/security/users/{user_id}/sessions/{admin_sid}"
        )))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_error(wrong, StatusCode::NOT_FOUND, "SESSION_NOT_FOUND").await;

    // Revoke all: every session and access token of the user dies, recorded with the admin.
    let second = app.logged_in(&user_email).await;
    let all = app
        .client
        .delete(app.url(&format!("/api/admin/security/users/{user_id}/sessions")))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(all.status(), StatusCode::OK);
    let body: Value = all.json().await.unwrap();
    assert_eq!(body["sessionsRevoked"], 2);
    assert_eq!(app.me(&user_token).await.status(), StatusCode::UNAUTHORIZED);
    let refreshed = app.refresh(second["refreshToken"].as_str().unwrap()).await;
    assert_error(refreshed, StatusCode::UNAUTHORIZED, "AUTH_REFRESH_INVALID").await;
    assert_eq!(app.me(&admin_token).await.status(), StatusCode::OK);
    let mass = app.events_of("mass_token_revocation").await;
    assert_eq!(mass.len(), 1);
    assert_eq!(mass[0].user_id.as_deref(), Some(user_id.as_str()));
    assert_eq!(mass[0].metadata["by"], "admin");
    assert_eq!(mass[0].metadata["adminId"], admin["user"]["id"]);
    assert_eq!(mass[0].metadata["tokensRevoked"], 2);

    let gone = app
        .client
        .delete(app.url("/api/admin/security/users/no-such-user/sessions"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_error(gone, StatusCode::NOT_FOUND, "USER_NOT_FOUND").await;
}
